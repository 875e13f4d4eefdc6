//! What kind of conflict a retried error reports.

use std::error::Error as StdError;

use super::chain::{Found, find};

/// What kind of conflict a retried error reports, as far as the database says.
///
/// The retry loop hands it to the `on_retry` hook ([`RetryInfo::conflict`](crate::RetryInfo))
/// and puts it on its `retrying transaction` event (field `conflict`), so a service can see
/// whether its conflicts are contended rows or dependency cycles: the two call for different
/// backoff settings (the README's attribute section says which). [`conflict_kind`] reads it off
/// an error after the call gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConflictKind {
    /// A write conflict on a row: the attempt updated, deleted or locked a row that a concurrent
    /// transaction changed and committed after the attempt's snapshot was taken (PostgreSQL's
    /// `40001` "could not serialize access due to concurrent update"). Typically the attempt
    /// waited on that transaction's row lock, so the winner has already committed and the row
    /// is free for the next attempt.
    RowWrite,
    /// A serialization failure found by PostgreSQL's serializable snapshot isolation: a cycle of
    /// read/write dependencies among concurrent transactions (`40001` whose detail begins with
    /// `Reason code:`). Some of the transactions involved may still be running.
    Dependency,
    /// `40P01` deadlock_detected.
    Deadlock,
    /// A PostgreSQL hot standby cancelled the query (or ended the session) because replaying
    /// the primary's changes needed what it held: `40001` "canceling statement due to conflict
    /// with recovery", raised in `postgres.c`. Nothing concurrent on the standby is to blame;
    /// the next attempt usually runs after replay moved on.
    Recovery,
    /// CockroachDB `RETRY_WRITE_TOO_OLD`: the attempt wrote a row that a transaction ordered
    /// after it had already written and committed (a write-write conflict).
    WriteTooOld,
    /// CockroachDB `RETRY_SERIALIZABLE`: the transaction's timestamp was pushed and its reads
    /// could not be refreshed to the new timestamp (a read/write conflict).
    ReadRefresh,
    /// A read met a write whose timestamp lies within the clock uncertainty window, so the
    /// engine cannot order the two: CockroachDB `ReadWithinUncertaintyIntervalError`,
    /// YugabyteDB `Restart read required`.
    Uncertainty,
    /// CockroachDB `RETRY_ASYNC_WRITE_FAILURE`: one of the transaction's writes failed to
    /// replicate (a lease transfer, a network partition). An internal state error in
    /// CockroachDB's terms: the cluster may need attention.
    AsyncWriteFailure,
    /// CockroachDB `RETRY_COMMIT_DEADLINE_EXCEEDED`: the transaction was pushed past its
    /// deadline, typically because it runs long; CockroachDB's docs warn that it is likely to
    /// fail again. An internal state error.
    CommitDeadline,
    /// CockroachDB `TransactionAbortedError(ABORT_REASON_…)`: another transaction, or the
    /// cluster, aborted this one (a higher-priority push, a coordinator thought dead, a new
    /// lease, a timestamp cache rejection). An internal state error.
    Aborted,
    /// Anything else that is retried: a code from `retry_on`, another database's conflict, or a
    /// `40001` that does not say where it came from.
    Other,
}

impl ConflictKind {
    /// The kind as the retry event's `conflict` field shows it: `row_write`, `dependency`,
    /// `deadlock`, `recovery`, `write_too_old`, `read_refresh`, `uncertainty`,
    /// `async_write_failure`, `commit_deadline`, `aborted` or `other`.
    ///
    /// ```
    /// # use sqlx_retry_core::ConflictKind;
    /// assert_eq!(ConflictKind::RowWrite.as_str(), "row_write");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            ConflictKind::RowWrite => "row_write",
            ConflictKind::Dependency => "dependency",
            ConflictKind::Deadlock => "deadlock",
            ConflictKind::Recovery => "recovery",
            ConflictKind::WriteTooOld => "write_too_old",
            ConflictKind::ReadRefresh => "read_refresh",
            ConflictKind::Uncertainty => "uncertainty",
            ConflictKind::AsyncWriteFailure => "async_write_failure",
            ConflictKind::CommitDeadline => "commit_deadline",
            ConflictKind::Aborted => "aborted",
            ConflictKind::Other => "other",
        }
    }
}

/// The kind of conflict the first database error in `err`'s source chain reports, read the
/// same way as [`sqlstate`](super::sqlstate); `None` when the chain holds no database error with
/// a SQLSTATE. Codes other than `40001` and `40P01` give [`ConflictKind::Other`]: whether they
/// are retried is [`classify`](super::classify)'s business.
///
/// PostgreSQL reports both row write conflicts and dependency cycles as `40001`. They are told
/// apart by the source file the server names in the error (`predicate.c` holds serializable
/// snapshot isolation, and adds a `Reason code:` detail) rather than by the message, which is
/// translated. A `40001` from `postgres.c` is a hot standby's recovery conflict
/// ([`ConflictKind::Recovery`]). CockroachDB and YugabyteDB name the cause of a `40001` in its
/// message (`… RETRY_WRITE_TOO_OLD …`, `Restart read required …`), which is read before the
/// source file. A `40001` that says neither (from another database, or built by hand) is
/// [`ConflictKind::Other`].
///
/// ```
/// # use sqlx_retry_core::ConflictKind;
/// # use sqlx_retry_core::error::conflict_kind;
/// # fn log_conflict(err: &sqlx::Error) {
/// match conflict_kind(err) {
///     Some(ConflictKind::Dependency) => { /* a read/write cycle: spread retries out more */ }
///     Some(kind) => println!("conflict: {}", kind.as_str()),
///     None => {}
/// }
/// # }
/// assert_eq!(conflict_kind(&sqlx::Error::RowNotFound), None);
/// # #[cfg(feature = "mock")] {
/// use sqlx_retry_core::mock::SimulatedDbError;
/// use sqlx_retry_core::SqlState;
/// let deadlock = SimulatedDbError::sqlx(SqlState::DEADLOCK_DETECTED, "deadlock detected");
/// assert_eq!(conflict_kind(&deadlock), Some(ConflictKind::Deadlock));
/// let simulated = SimulatedDbError::sqlx(SqlState::SERIALIZATION_FAILURE, "conflict");
/// assert_eq!(conflict_kind(&simulated), Some(ConflictKind::Other));
/// let cockroach = SimulatedDbError::sqlx(
///     SqlState::SERIALIZATION_FAILURE,
///     "restart transaction: TransactionRetryWithProtoRefreshError: ReadWithinUncertaintyIntervalError: …",
/// );
/// assert_eq!(conflict_kind(&cockroach), Some(ConflictKind::Uncertainty));
/// # }
/// ```
pub fn conflict_kind(err: &(dyn StdError + 'static)) -> Option<ConflictKind> {
    find(err).and_then(found_conflict_kind)
}

/// The kind of conflict a found link reports, if it is a database error: the backend that
/// reported it decides.
pub(super) fn found_conflict_kind(found: Found<'_>) -> Option<ConflictKind> {
    crate::backends::conflict_kind(found.database()?)
}
