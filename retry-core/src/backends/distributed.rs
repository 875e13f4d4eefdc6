//! CockroachDB and YugabyteDB: distributed SQL engines on PostgreSQL's wire protocol, whose
//! errors reach sqlx as PostgreSQL errors. Their SQLSTATEs follow PostgreSQL's (so
//! [`postgres::classify`](super::postgres::classify) decides what is retried); what they add is
//! the cause of a `40001`, told in the message, which this module reads into a [`ConflictKind`].
//!
//! # CockroachDB
//!
//! Every retry error is `40001` with a message beginning `restart transaction`, naming its cause
//! (CockroachDB docs, "Transaction Retry Error Reference", `transaction-retry-error-reference.md`,
//! v21.2 to v24.3, each example quoted as the page gives it):
//!
//! | message (as the docs show it) | kind | the docs' category |
//! |---|---|---|
//! | `TransactionRetryWithProtoRefreshError: ... RETRY_WRITE_TOO_OLD ...` | [`ConflictKind::WriteTooOld`] | serialization error |
//! | `restart transaction: TransactionRetryWithProtoRefreshError: TransactionRetryError: retry txn (RETRY_SERIALIZABLE - failed preemptive refresh due to …` | [`ConflictKind::ReadRefresh`] | serialization error |
//! | `TransactionRetryWithProtoRefreshError: ReadWithinUncertaintyIntervalError: read at time … encountered previous write with future timestamp … within uncertainty interval …` | [`ConflictKind::Uncertainty`] | serialization error |
//! | `TransactionRetryWithProtoRefreshError: ... RETRY_ASYNC_WRITE_FAILURE ...` | [`ConflictKind::AsyncWriteFailure`] | internal state error |
//! | `TransactionRetryWithProtoRefreshError: TransactionRetryError: transaction deadline exceeded ...` (`RETRY_COMMIT_DEADLINE_EXCEEDED`) | [`ConflictKind::CommitDeadline`] | internal state error |
//! | `TransactionRetryWithProtoRefreshError:TransactionAbortedError(ABORT_REASON_…) ...` | [`ConflictKind::Aborted`] | internal state error |
//! | any other `restart transaction: …` (e.g. `injected by inject_retry_errors_enabled session variable`) | [`ConflictKind::Other`] | |
//!
//! All of them are retried: the docs' action for each is "retry the transaction", with one
//! caveat for `RETRY_COMMIT_DEADLINE_EXCEEDED` (a transaction pushed past its deadline "is quite
//! likely to fail again on retry"), which the policy's `max_attempts` and `budget` bound. The
//! internal state errors mean the cluster itself may need attention; their kinds let a service
//! count them apart (`on_retry`, the `conflict` field of the retry event).
//!
//! `40003` statement_completion_unknown, "result is ambiguous", comes at COMMIT or at `RELEASE
//! SAVEPOINT cockroach_restart`: the retry loop treats it as a COMMIT whose outcome is unknown
//! (see [`is_commit_unknown`](crate::is_commit_unknown)).
//!
//! # YugabyteDB
//!
//! YugabyteDB's docs ("Transaction error codes in YSQL", `transactions-errorcodes-ysql.md`, and
//! "Transaction retries in YSQL", `transactions-retries-ysql.md`) call `40001` (`could not
//! serialize access due to concurrent update (...)`) and `40P01` (`deadlock detected (...)`)
//! retriable, and `25001`, `25006`, `25P02`, `2D000`, `3B001` and class `42` not: which is how
//! PostgreSQL's rules already classify them. Its clock-skew error ("Read Restart error",
//! `read-restart-error.md`) is `40001` with the message `Restart read required at: { read: { … }
//! local_limit: … }`, read as [`ConflictKind::Uncertainty`].

use crate::ConflictKind;

/// The kind of conflict a `40001`'s message names, when it is CockroachDB's or YugabyteDB's;
/// `None` for any other message (PostgreSQL's, translated or not).
pub(crate) fn conflict_kind(message: &str) -> Option<ConflictKind> {
    // CockroachDB names the cause by an upper-case reason code or a Go error type; none of these
    // tokens occurs in a PostgreSQL message.
    const COCKROACH: &[(&str, ConflictKind)] = &[
        ("RETRY_WRITE_TOO_OLD", ConflictKind::WriteTooOld),
        ("WriteTooOldError", ConflictKind::WriteTooOld),
        ("RETRY_SERIALIZABLE", ConflictKind::ReadRefresh),
        ("ReadWithinUncertaintyInterval", ConflictKind::Uncertainty),
        ("RETRY_ASYNC_WRITE_FAILURE", ConflictKind::AsyncWriteFailure),
        (
            "RETRY_COMMIT_DEADLINE_EXCEEDED",
            ConflictKind::CommitDeadline,
        ),
        (
            "transaction deadline exceeded",
            ConflictKind::CommitDeadline,
        ),
        ("ABORT_REASON_", ConflictKind::Aborted),
        ("TransactionAbortedError", ConflictKind::Aborted),
    ];
    if let Some((_, kind)) = COCKROACH.iter().find(|(token, _)| message.contains(token)) {
        return Some(*kind);
    }
    if message.starts_with("restart transaction")
        || message.contains("TransactionRetryWithProtoRefreshError")
    {
        return Some(ConflictKind::Other);
    }
    if message.contains("Restart read required") {
        return Some(ConflictKind::Uncertainty);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages as the engines' docs print them (see the module's documentation).
    #[test]
    fn documented_messages_name_their_kind() {
        let cases = [
            (
                "restart transaction: TransactionRetryWithProtoRefreshError: TransactionRetryError: \
                 retry txn (RETRY_WRITE_TOO_OLD - WriteTooOld flag converted to WriteTooOldError)",
                ConflictKind::WriteTooOld,
            ),
            (
                "restart transaction: TransactionRetryWithProtoRefreshError: TransactionRetryError: \
                 retry txn (RETRY_SERIALIZABLE  - failed preemptive refresh due to conflicting \
                 locks on /Table/106/1/918951292305080321/0 [reason=wait_policy])",
                ConflictKind::ReadRefresh,
            ),
            (
                "restart transaction: TransactionRetryWithProtoRefreshError: \
                 ReadWithinUncertaintyIntervalError: read at time 1591009232.376925064,0 \
                 encountered previous write with future timestamp 1591009232.493830170,0 within \
                 uncertainty interval `t <= 1591009232.587671686,0`",
                ConflictKind::Uncertainty,
            ),
            (
                "restart transaction: TransactionRetryWithProtoRefreshError: TransactionRetryError: \
                 retry txn (RETRY_ASYNC_WRITE_FAILURE)",
                ConflictKind::AsyncWriteFailure,
            ),
            (
                "restart transaction: TransactionRetryWithProtoRefreshError: TransactionRetryError: \
                 transaction deadline exceeded",
                ConflictKind::CommitDeadline,
            ),
            (
                "restart transaction: TransactionRetryWithProtoRefreshError:\
                 TransactionAbortedError(ABORT_REASON_ABORTED_RECORD_FOUND)",
                ConflictKind::Aborted,
            ),
            (
                "restart transaction: TransactionRetryWithProtoRefreshError: injected by \
                 `inject_retry_errors_enabled` session variable",
                ConflictKind::Other,
            ),
            (
                "Restart read required at: { read: { physical: 1656351408684482 } local_limit: { \
                 physical: 1656351408684482 } global_limit: <min> in_txn_limit: <max> serial_no: 0 }",
                ConflictKind::Uncertainty,
            ),
            (
                "Query error: Restart read required at: { read: { physical: 1656351408684482 } }",
                ConflictKind::Uncertainty,
            ),
        ];
        for (message, kind) in cases {
            assert_eq!(conflict_kind(message), Some(kind), "{message}");
        }
    }

    #[test]
    fn postgres_messages_are_left_to_postgres_rules() {
        for message in [
            "could not serialize access due to concurrent update",
            "could not serialize access due to read/write dependencies among transactions",
            "canceling statement due to conflict with recovery",
            "",
        ] {
            assert_eq!(conflict_kind(message), None, "{message}");
        }
    }
}
