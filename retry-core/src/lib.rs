//! The engine behind [`sqlx-retry`](https://docs.rs/sqlx-retry): SQLSTATE classification,
//! backoff policies, the retry loop and the mock transaction source.
//!
//! Depend on `sqlx-retry` instead; it re-exports everything here next to the
//! `#[serializable_retry]` attribute, with the same paths: the items everyone needs at the root,
//! the rest in [`error`], [`source`], `mock` (feature `mock`) and [`metrics`].
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod aborted;
#[cfg(any(feature = "backon", feature = "backoff"))]
mod adapters;
mod backends;
mod backoff;
#[cfg(feature = "postgres")]
pub mod cluster;
mod effects;
pub mod error;
mod fairness;
pub mod metrics;
#[cfg(feature = "mock")]
pub mod mock;
mod policy;
mod run;
#[cfg(any(test, feature = "mock"))]
mod simulated;
pub mod source;
mod sqlstate;

pub use backoff::Backoff;
#[cfg(feature = "postgres")]
pub use cluster::Cluster;
pub use effects::after_commit;
pub use error::conflict::ConflictKind;
pub use error::is_commit_unknown;
pub use policy::{IsolationLevel, Policy, PolicyBuilder, PolicyError, RetryInfo};
pub use run::{transaction, transaction_with};
pub use source::TransactionSource;
pub use sqlstate::SqlState;

#[doc(hidden)]
pub mod __private;
