//! Reading the error of a retried call: its SQLSTATE, whether the loop retries it, whether its
//! COMMIT's outcome is unknown, and the errors this crate itself returns.
//!
//! You need this module when you handle errors yourself: to branch on [`sqlstate`] or
//! [`conflict_kind`] after a call gave up, to ask [`classify`] what the loop would do with an
//! error, or to match on this crate's own errors ([`CommitUnknown`], [`UnsupportedTxOption`],
//! [`NoTransaction`], [`InvalidSqlState`]).
//!
//! The body's error can be any type: `sqlx::Error`, `anyhow::Error`, or an application enum that
//! wraps `sqlx::Error`. Every function here walks the
//! [`source()`](std::error::Error::source) chain until it finds a [`sqlx::Error`], so wrapping
//! never hides a serialization failure.
//!
//! ```
//! use sqlx_retry_core::error::{Class, classify, sqlstate};
//!
//! #[derive(Debug, thiserror::Error)]
//! enum AppError {
//!     #[error("storage failed")]
//!     Storage(#[from] sqlx::Error),
//! }
//! let err = AppError::from(sqlx::Error::RowNotFound);
//! assert_eq!(sqlstate(&err), None);
//! assert_eq!(classify(&err, &[]), Class::Permanent);
//! ```

mod chain;
mod classify;
mod commit_unknown;
pub(crate) mod conflict;

pub(crate) use chain::event_message;
pub use chain::{find_sqlx_error, sqlstate};
pub(crate) use classify::classify_conflict;
pub use classify::{Class, classify, classify_sqlx};
pub use commit_unknown::{CommitUnknown, find_commit_unknown, is_commit_unknown};
pub use conflict::conflict_kind;

pub use crate::aborted::TransactionAborted;
pub use crate::backends::UnsupportedTxOption;
pub use crate::effects::NoTransaction;
pub use crate::sqlstate::InvalidSqlState;
