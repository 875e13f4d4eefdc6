//! `Ok` means committed: what happens when the body returns `Ok` on a transaction the server has
//! already aborted.
//!
//! In PostgreSQL any failed statement aborts the whole transaction: later statements fail with
//! `25P02` and COMMIT completes *successfully* with the tag `ROLLBACK`. A body that swallows an
//! error (`.ok()`, `if let Err(e) = … { log }`) and returns `Ok` would therefore look committed
//! while nothing was. sqlx 0.9 shows neither the transaction status of its connection nor the
//! COMMIT's tag, so the loop's COMMIT is one simple query that checks first: `SET LOCAL
//! sqlx_retry.not_aborted = 'on'; COMMIT; BEGIN` (see [`check_sql!`]). In an aborted transaction
//! the `SET` fails with `25P02` and the server skips the rest; the transaction is rolled back and
//! the call gets [`TransactionAborted`]. Otherwise COMMIT commits and BEGIN opens an empty
//! transaction (no snapshot, no transaction id, no lock), which keeps sqlx's transaction depth true
//! to the server: the attempt's transaction is still open for sqlx, and ending it the usual way
//! queues a ROLLBACK. Sending COMMIT without the BEGIN would leave sqlx believing a transaction is
//! open, and its ROLLBACK would then draw a "there is no transaction in progress" warning for every
//! call.
//!
//! So the check costs no round trip of its own, and neither does that ROLLBACK: on a pooled
//! connection the pool's release ping flushes it together with its Sync; on a connection the
//! caller holds it is written to the socket as the call returns, without waiting for the answer,
//! which sqlx reads at the connection's next use
//! ([`HeldTransaction`](crate::source::HeldTransaction)). The empty transaction therefore never
//! outlives the call by more than the server's time to read one message: the session is idle,
//! not idle in transaction, between calls (which `idle_in_transaction_session_timeout` and
//! poolers would notice). Sources of your own can do the check in a statement of its own:
//! [`OpenTransaction::check_not_aborted`](crate::source::OpenTransaction::check_not_aborted).

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use sqlx::error::{DatabaseError, ErrorKind};

/// The check sent before COMMIT: it fails with `25P02` in an aborted transaction. (The mock
/// server recognises it by its text.)
///
/// It sets a custom setting of its own (`sqlx_retry.not_aborted`: a name with a dot, which
/// PostgreSQL accepts from any user as a placeholder that nothing reads) for the rest of the
/// transaction only (`LOCAL`): the body never sees it set, and after the transaction the session
/// knows the name with an empty value, as PostgreSQL leaves any placeholder (tested in
/// `tests/postgres/commit.rs`). It is a `SET`, which the server answers with its tag alone: no
/// planning, no executor, no row description and no row for the server to send and sqlx to decode.
/// BENCHMARKS.md §1 (d) measures it beside the `SHOW transaction_isolation` this crate sent before,
/// and beside a plain COMMIT, with 1 client and with 2.
///
/// PostgreSQL and YugabyteDB reject every statement but COMMIT and ROLLBACK in an aborted
/// transaction. CockroachDB also lets a few "observer" statements through (`SHOW TRANSACTION
/// STATUS`, `SHOW SYNTAX`, `SET TRACING`, …); a `SET` of a session variable is not one of them,
/// so it fails there too. CockroachDB accepts `SET LOCAL` from v21.2 and session variables with
/// a dot in their name from v22.1.
macro_rules! check_sql {
    () => {
        "SET LOCAL sqlx_retry.not_aborted = 'on'"
    };
}
pub(crate) use check_sql;

/// The check in a round trip of its own (see [`check_sql!`]).
pub(crate) const CHECK_SQL: &str = check_sql!();

/// The check, COMMIT and an empty transaction in one query: a pooled transaction's COMMIT.
pub(crate) const POOLED_COMMIT_SQL: &str = concat!(check_sql!(), "; COMMIT; BEGIN");

/// The SQLSTATE of a statement sent in an aborted transaction: in_failed_sql_transaction.
pub(crate) const IN_FAILED_SQL_TRANSACTION: &str = "25P02";

/// The body returned `Ok`, but the server had already aborted the transaction because of an
/// earlier statement whose error the body did not return (it was ignored, logged or turned into
/// a default). COMMIT was not sent, or was answered with `ROLLBACK`: **nothing was committed**.
///
/// It is a [`sqlx::Error::Database`] with SQLSTATE `25P02` (in_failed_sql_transaction), so code
/// that matches on SQLSTATEs sees it; its [`source`](StdError::source) is the server's own
/// `25P02` error when there is one.
///
/// Whether it is retried: the server does not say which error aborted the transaction. When a
/// joined call (an annotated function called with this body's `tx`) returned a conflict
/// (`40001`, `40P01`, a `retry_on` code) during the attempt, that conflict is taken as the cause
/// and the attempt is retried like one. Otherwise it is returned after one attempt, like any
/// permanent error, unless `retry_on` lists `25P02`. The remedy is in the body: return the error
/// (`?`), or run the statement that may fail inside a savepoint (`tx.begin()`), which keeps the
/// transaction usable when it fails.
///
/// ```
/// # use sqlx_retry_core::error::TransactionAborted;
/// fn lost_to_a_swallowed_error(err: &sqlx::Error) -> bool {
///     matches!(err, sqlx::Error::Database(db) if db.as_error().is::<TransactionAborted>())
/// }
/// ```
#[derive(Debug)]
pub struct TransactionAborted {
    source: Option<sqlx::Error>,
}

impl TransactionAborted {
    /// The error for an aborted transaction, with the server's own report if there is one.
    pub(crate) fn sqlx(source: Option<sqlx::Error>) -> sqlx::Error {
        sqlx::Error::Database(Box::new(TransactionAborted { source }))
    }
}

/// Whether `err` is a [`TransactionAborted`].
pub(crate) fn is_aborted(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.as_error().is::<TransactionAborted>())
}

/// Whether `err` is the server's report of a statement sent in an aborted transaction.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn is_in_failed_transaction(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some(IN_FAILED_SQL_TRANSACTION))
}

const MESSAGE: &str = "the transaction was aborted by an earlier statement whose error the body \
                       did not return; COMMIT was not sent and nothing was committed";

impl fmt::Display for TransactionAborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{MESSAGE} (SQLSTATE {IN_FAILED_SQL_TRANSACTION})")
    }
}

impl StdError for TransactionAborted {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

impl DatabaseError for TransactionAborted {
    fn message(&self) -> &str {
        MESSAGE
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(IN_FAILED_SQL_TRANSACTION))
    }

    fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

/// The PostgreSQL check: one simple query that succeeds in an open transaction and fails with
/// `25P02` in an aborted one. Its failure is reported as [`TransactionAborted`]; any other error
/// (the connection broke) as is: COMMIT was not sent either way.
#[cfg(feature = "postgres")]
pub(crate) async fn postgres_check(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    match sqlx::raw_sql(CHECK_SQL).execute(conn).await {
        Ok(_) => Ok(()),
        Err(err) if is_in_failed_transaction(&err) => Err(TransactionAborted::sqlx(Some(err))),
        Err(err) => Err(err),
    }
}

/// The pooled COMMIT on PostgreSQL: check, COMMIT and an empty transaction in one simple query
/// (see the module's documentation). `Ok(true)`: committed, and the empty transaction is open.
#[cfg(feature = "postgres")]
pub(crate) async fn postgres_commit_pooled(
    conn: &mut sqlx::PgConnection,
) -> Result<bool, sqlx::Error> {
    match sqlx::raw_sql(POOLED_COMMIT_SQL).execute(conn).await {
        Ok(_) => Ok(true),
        Err(err) if is_in_failed_transaction(&err) => Err(TransactionAborted::sqlx(Some(err))),
        Err(err) => Err(err),
    }
}

/// [`postgres_commit_pooled`] with a query of the caller's, e.g. `SET LOCAL sqlx_retry.not_aborted
/// = 'on'; COMMIT; BEGIN; SELECT pg_current_wal_insert_lsn()`: its rows are returned. The query
/// must begin with a statement that fails with `25P02` in an aborted transaction, and end the
/// transaction it commits with an empty one opened by `BEGIN`.
#[cfg(feature = "postgres")]
pub(crate) async fn postgres_commit_pooled_returning(
    conn: &mut sqlx::PgConnection,
    sql: &'static str,
) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
    match sqlx::raw_sql(sql).fetch_all(conn).await {
        Ok(rows) => Ok(rows),
        Err(err) if is_in_failed_transaction(&err) => Err(TransactionAborted::sqlx(Some(err))),
        Err(err) => Err(err),
    }
}
