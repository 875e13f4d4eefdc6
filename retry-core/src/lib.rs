//! The engine behind [`sqlx-retry`](https://docs.rs/sqlx-retry): SQLSTATE classification,
//! backoff policies, the retry loop and the mock transaction source.
//!
//! Depend on `sqlx-retry` instead; it re-exports everything here next to the
//! `#[serializable_retry]` attribute.
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod aborted;
#[cfg(any(feature = "backon", feature = "backoff"))]
mod adapters;
mod backends;
mod backoff;
mod classify;
mod effects;
pub mod metrics;
#[cfg(feature = "mock")]
pub mod mock;
mod policy;
mod pool;
mod run;
mod source;
mod sqlstate;

pub use aborted::TransactionAborted;
pub use backends::UnsupportedTxOption;
pub use backoff::{Backoff, DelaysFactory};
pub use classify::{
    Class, CommitUnknown, ConflictKind, SimulatedDbError, classify, classify_sqlx, conflict_kind,
    find_commit_unknown, find_sqlx_error, is_commit_unknown, sqlstate,
};
pub use effects::{NoTransaction, Scoped, after_commit};
pub use policy::{
    IsolationLevel, Policy, PolicyBuilder, PolicyError, RetryHook, RetryInfo, TxOptions,
};
pub use pool::PoolTransaction;
pub use run::{Attempts, BoxFuture, transaction, transaction_with};
pub use source::{
    Backend, BeginTransaction, Joined, MaybeJoined, OpenTransaction, TransactionSource, timer_sleep,
};
pub use sqlstate::{InvalidSqlState, SqlState};

#[doc(hidden)]
pub mod __private;
