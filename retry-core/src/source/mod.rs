//! Where transactions come from: the traits a transaction source implements, and the sources
//! this crate provides.
//!
//! Callers of an annotated function pass any [`TransactionSource`]: `&PgPool` (each attempt takes
//! a pooled connection), `&mut PgConnection` (each attempt is a transaction on that connection),
//! `&mut sqlx::Transaction` (the call [joins](Joined) it), the same for MySQL and SQLite, and the
//! mock (`&MockDb`, `&mut MockTx`). You need this module to write a source of your own (implement
//! [`BeginTransaction`] and [`OpenTransaction`]), or to drive a source by hand.
//!
//! ```
//! use sqlx_retry_core::source::{BeginTransaction, OpenTransaction, TxOptions};
//!
//! /// Starts one transaction on `source` and commits it empty.
//! async fn check<S: for<'s> BeginTransaction<'s>>(mut source: S) -> Result<(), sqlx::Error> {
//!     let tx = source.begin(TxOptions::default()).await?;
//!     tx.commit().await
//! }
//! ```

mod connection;
mod joined;
mod pool;
mod timer;
mod traits;

pub use connection::HeldTransaction;
pub use joined::{Joined, MaybeJoined};
pub use pool::PoolTransaction;
pub(crate) use timer::TIMER_TICK;
pub use timer::timer_sleep;
pub use traits::{BeginTransaction, OpenTransaction, Savepoint, TransactionSource};

pub use crate::policy::TxOptions;
pub use crate::run::BoxFuture;
