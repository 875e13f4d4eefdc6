//! CockroachDB's and YugabyteDB's retry errors, their exact texts from the engines' docs raised
//! by PostgreSQL (`RAISE … USING ERRCODE, MESSAGE`): each is classified (the kind reaches
//! `RetryInfo`) and retried, or not, as the engines' docs say.
//!
//! Sources of the texts: CockroachDB "Transaction Retry Error Reference"
//! (`transaction-retry-error-reference.md`, v24.1); YugabyteDB "Transaction error codes in YSQL"
//! (`transactions-errorcodes-ysql.md`) and "Read Restart error" (`read-restart-error.md`).

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::PgPool;
use sqlx_retry::error::sqlstate;
use sqlx_retry::{Backoff, ConflictKind, Policy, SqlState, is_commit_unknown, transaction};
use sqlx_retry_testkit::isolated_pool;

use crate::{Retries, raise};

const COCKROACH: &[(&str, ConflictKind)] = &[
    (
        "restart transaction: TransactionRetryWithProtoRefreshError: TransactionRetryError: retry txn (RETRY_WRITE_TOO_OLD - WriteTooOld flag converted to WriteTooOldError)",
        ConflictKind::WriteTooOld,
    ),
    (
        "restart transaction: TransactionRetryWithProtoRefreshError: TransactionRetryError: retry txn (RETRY_SERIALIZABLE  - failed preemptive refresh due to conflicting locks on /Table/106/1/918951292305080321/0 [reason=wait_policy] - conflicting txn: meta={id=1b2bf263 key=/Table/106/1/918951292305080321/0 iso=Serializable pri=0.00065863 epo=0 ts=1700512205.521833000,2 min=1700512148.761403000,0 seq=1})",
        ConflictKind::ReadRefresh,
    ),
    (
        "restart transaction: TransactionRetryWithProtoRefreshError: TransactionRetryError: retry txn (RETRY_ASYNC_WRITE_FAILURE)",
        ConflictKind::AsyncWriteFailure,
    ),
    (
        "restart transaction: TransactionRetryWithProtoRefreshError: ReadWithinUncertaintyIntervalError: read at time 1591009232.376925064,0 encountered previous write with future timestamp 1591009232.493830170,0 within uncertainty interval `t <= 1591009232.587671686,0`; observed timestamps: [{1 1591009232.587671686,0} {5 1591009232.376925064,0}]",
        ConflictKind::Uncertainty,
    ),
    (
        "restart transaction: TransactionRetryWithProtoRefreshError: TransactionRetryError: transaction deadline exceeded",
        ConflictKind::CommitDeadline,
    ),
    (
        "restart transaction: TransactionRetryWithProtoRefreshError:TransactionAbortedError(ABORT_REASON_ABORTED_RECORD_FOUND)",
        ConflictKind::Aborted,
    ),
    (
        "restart transaction: TransactionRetryWithProtoRefreshError:TransactionAbortedError(ABORT_REASON_NEW_LEASE_PREVENTS_TXN)",
        ConflictKind::Aborted,
    ),
    (
        "restart transaction: TransactionRetryWithProtoRefreshError: injected by `inject_retry_errors_enabled` session variable",
        ConflictKind::Other,
    ),
];

/// YugabyteDB's retriable errors (`40001`, `40P01`) with the texts its docs print.
const YUGABYTE_RETRIED: &[(&str, &str, ConflictKind)] = &[
    (
        "40001",
        "Restart read required at: { read: { physical: 1656351408684482 } local_limit: { physical: 1656351408684482 } global_limit: <min> in_txn_limit: <max> serial_no: 0 }",
        ConflictKind::Uncertainty,
    ),
    // PostgreSQL's own text: the kind comes from the source file field, which a RAISE sets to
    // `pl_exec.c` (any file but `predicate.c` and `postgres.c` is a row write conflict).
    (
        "40001",
        "could not serialize access due to concurrent update (...)",
        ConflictKind::RowWrite,
    ),
    ("40P01", "deadlock detected (...)", ConflictKind::Deadlock),
];

/// YugabyteDB's non-retriable errors, with the texts its docs print.
const YUGABYTE_NOT_RETRIED: &[(&str, &str)] = &[
    ("25001", "there is already a transaction in progress"),
    ("25006", "cannot execute UPDATE in a read-only transaction"),
    (
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block",
    ),
    ("2D000", "invalid transaction termination"),
    ("3B001", "savepoint \"FIRST_SAVE\" does not exist"),
    ("42P01", "relation \"missing\" does not exist"),
    ("42601", "syntax error at or near \"SELEC\""),
];

fn builder() -> sqlx_retry::PolicyBuilder {
    Policy::builder()
        .max_attempts(3)
        .backoff(Backoff::fixed(std::time::Duration::from_millis(1)))
}

/// Runs a transaction whose first attempt's body executes `failing`; returns the result and
/// how often the body ran.
async fn fail_first_attempt(
    pool: &PgPool,
    policy: &Policy,
    failing: &str,
) -> (Result<(), sqlx::Error>, u32) {
    let runs = AtomicU32::new(0);
    let out = transaction(pool, policy, |tx| {
        let first = runs.fetch_add(1, Ordering::SeqCst) == 0;
        let failing = failing.to_owned();
        Box::pin(async move {
            if first {
                sqlx::raw_sql(sqlx::AssertSqlSafe(failing))
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        })
    })
    .await;
    (out, runs.load(Ordering::SeqCst))
}

#[tokio::test]
async fn cockroach_retry_errors_in_the_body_are_retried_with_their_kind() {
    let (pool, _schema) = isolated_pool(2).await;
    for (message, kind) in COCKROACH {
        let retries = Retries::default();
        let policy = retries.policy(builder());
        let (out, runs) = fail_first_attempt(&pool, &policy, &raise("40001", message)).await;
        out.unwrap_or_else(|e| panic!("{message}: {e}"));
        assert_eq!(runs, 2, "{message}");
        assert_eq!(
            retries.seen(),
            [(1, Some(SqlState::SERIALIZATION_FAILURE), Some(*kind))],
            "{message}"
        );
    }
}

#[tokio::test]
async fn yugabyte_retriable_errors_are_retried_with_their_kind() {
    let (pool, _schema) = isolated_pool(2).await;
    for (code, message, kind) in YUGABYTE_RETRIED {
        let retries = Retries::default();
        let policy = retries.policy(builder());
        let (out, runs) = fail_first_attempt(&pool, &policy, &raise(code, message)).await;
        out.unwrap_or_else(|e| panic!("{message}: {e}"));
        assert_eq!(runs, 2, "{message}");
        assert_eq!(
            retries.seen(),
            [(1, SqlState::new(code), Some(*kind))],
            "{message}"
        );
    }
}

#[tokio::test]
async fn yugabyte_non_retriable_errors_end_the_call_after_one_attempt() {
    let (pool, _schema) = isolated_pool(2).await;
    for (code, message) in YUGABYTE_NOT_RETRIED {
        let retries = Retries::default();
        let policy = retries.policy(builder());
        let (out, runs) = fail_first_attempt(&pool, &policy, &raise(code, message)).await;
        let err = out.expect_err(message);
        assert_eq!(sqlstate(&err), SqlState::new(code), "{err}");
        assert!(!is_commit_unknown(&err));
        assert_eq!(runs, 1, "{message}");
        assert!(retries.seen().is_empty(), "{message}");
    }
}

/// A `40003` in the body: the statement's outcome is unknown, but COMMIT was not sent and the
/// loop rolled back, so nothing committed. Not commit-unknown, not retried.
#[tokio::test]
async fn a_40003_in_the_body_is_an_ordinary_error() {
    let (pool, _schema) = isolated_pool(2).await;
    let retries = Retries::default();
    let policy = retries.policy(builder().idempotent(true));
    let (out, runs) =
        fail_first_attempt(&pool, &policy, &raise("40003", "result is ambiguous")).await;
    let err = out.unwrap_err();
    assert!(!is_commit_unknown(&err), "{err}");
    assert_eq!(sqlstate(&err), Some(SqlState::STATEMENT_COMPLETION_UNKNOWN));
    assert_eq!(runs, 1);
    assert!(retries.seen().is_empty());
}

/// CockroachDB reports a transaction's retry error at COMMIT too (`RETRY_SERIALIZABLE` "when it
/// tries to commit", `RETRY_COMMIT_DEADLINE_EXCEEDED`): raised here from a deferred trigger, the
/// first COMMIT fails with the text and the call is retried with its kind.
#[tokio::test]
async fn cockroach_retry_errors_at_commit_are_retried_with_their_kind() {
    let (pool, _schema) = isolated_pool(2).await;
    for (i, (message, kind)) in COCKROACH.iter().enumerate() {
        let table = format!("t{i}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {table} (id int);
             CREATE SEQUENCE {table}_commits;
             CREATE FUNCTION {table}_fail() RETURNS trigger LANGUAGE plpgsql AS $f$
             BEGIN
                 IF nextval('{table}_commits') = 1 THEN
                     RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = '{}';
                 END IF;
                 RETURN NULL;
             END $f$;
             CREATE CONSTRAINT TRIGGER {table}_at_commit AFTER INSERT ON {table}
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {table}_fail();",
            message.replace('\'', "''")
        )))
        .execute(&pool)
        .await
        .unwrap();
        let retries = Retries::default();
        let policy = retries.policy(builder());
        let runs = AtomicU32::new(0);
        let insert = format!("INSERT INTO {table} VALUES (1)");
        transaction(&pool, &policy, |tx| {
            runs.fetch_add(1, Ordering::SeqCst);
            let insert = insert.clone();
            Box::pin(async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(insert))
                    .execute(&mut *tx)
                    .await?;
                Ok::<_, sqlx::Error>(())
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{message}: {e}"));
        assert_eq!(runs.load(Ordering::SeqCst), 2, "{message}");
        assert_eq!(
            retries.seen(),
            [(1, Some(SqlState::SERIALIZATION_FAILURE), Some(*kind))],
            "{message}"
        );
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(n, 1, "applied once: {message}");
    }
}
