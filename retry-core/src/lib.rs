//! The engine behind [`sqlx-retry`](https://docs.rs/sqlx-retry): SQLSTATE classification,
//! backoff policies, the retry loop and the mock transaction source.
//!
//! Depend on `sqlx-retry` instead; it re-exports everything here next to the
//! `#[serializable_retry]` attribute.
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod backoff;
mod classify;
#[cfg(feature = "mock")]
pub mod mock;
mod policy;
mod run;
mod source;
mod sqlstate;

pub use backoff::{Backoff, DelaysFactory};
pub use classify::{
    Class, CommitUnknown, SimulatedDbError, classify, classify_sqlx, find_sqlx_error,
    is_commit_unknown, sqlstate,
};
pub use policy::{
    IsolationLevel, Policy, PolicyBuilder, PolicyError, RetryHook, RetryInfo, TxOptions,
};
pub use run::{Attempts, BoxFuture, transaction, transaction_with};
pub use source::{Backend, BeginTransaction, OpenTransaction, TransactionSource};
pub use sqlstate::{InvalidSqlState, SqlState};

#[doc(hidden)]
pub mod __private;
