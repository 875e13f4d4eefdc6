//! PostgreSQL.
//!
//! # Starting a transaction
//!
//! One statement, one round trip: `BEGIN ISOLATION LEVEL … [READ ONLY] [DEFERRABLE]`. The mock
//! source records the same statement, so its scripts read like PostgreSQL's.
//!
//! # What is retried
//!
//! | SQLSTATE | meaning | class |
//! |---|---|---|
//! | `40001` serialization_failure, `40P01` deadlock_detected | the server aborted the transaction for a conflict | [`Class::Conflict`] |
//! | codes in `retry_on` | the caller's opt-in | [`Class::Conflict`] |
//! | class `08`; `57P01`, `57P02`, `57P03` (shutdown, crash, start-up); `25P03`, `57P05` (session killed by an idle timeout) | the connection is gone | [`Class::ConnectionLost`], even when listed in `retry_on` |
//! | `40003` statement_completion_unknown | the server cannot tell whether the statement completed | [`Class::Permanent`], even when listed in `retry_on`; at COMMIT (or the savepoint protocol's `RELEASE`) the retry loop turns it into the commit-unknown error |
//! | everything else | | [`Class::Permanent`] |
//!
//! These rules read only the SQLSTATE, so they also decide for database errors that the MySQL
//! and SQLite modules leave alone: MySQL's deadlock (`40001`) and class `08` codes, and the mock's
//! simulated errors.
//!
//! # Conflict kinds
//!
//! PostgreSQL reports both row write conflicts and dependency cycles as `40001`. They are told
//! apart by the source file the server names in the error (its `file` field) rather than by the
//! message, which is translated: `predicate.c` holds serializable snapshot isolation (and adds a
//! `Reason code:` detail), `postgres.c` raises a hot standby's recovery conflicts
//! ([`ConflictKind::Recovery`]), and any other file is a write conflict on a row (`heapam.c`,
//! `nodeModifyTable.c`, …). CockroachDB's and YugabyteDB's `40001`s name their cause in the
//! message instead, which is read first (see `distributed.rs`).

use sqlx::error::DatabaseError;

use crate::error::Class;
use crate::policy::TxOptions;
use crate::{ConflictKind, IsolationLevel, SqlState};

/// The single statement that starts a transaction with `options`, e.g.
/// `BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE`.
#[cfg_attr(not(any(feature = "postgres", feature = "mock")), allow(dead_code))]
pub(crate) const fn begin_statement(options: &TxOptions) -> &'static str {
    use IsolationLevel::*;
    match (options.isolation, options.read_only, options.deferrable) {
        (Serializable, true, true) => "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
        (Serializable, true, false) => "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
        (Serializable, false, _) => "BEGIN ISOLATION LEVEL SERIALIZABLE",
        (RepeatableRead, true, _) => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        (RepeatableRead, false, _) => "BEGIN ISOLATION LEVEL REPEATABLE READ",
        (ReadCommitted, true, _) => "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY",
        (ReadCommitted, false, _) => "BEGIN ISOLATION LEVEL READ COMMITTED",
    }
}

#[cfg(feature = "postgres")]
impl super::Backend for sqlx::Postgres {
    const ROLLBACK_UNAWAITED: bool = true;

    fn begin_statement(options: &TxOptions) -> Result<&'static str, sqlx::Error> {
        Ok(begin_statement(options))
    }

    /// One simple query in its own round trip: `SET LOCAL sqlx_retry.not_aborted = 'on'` fails
    /// with `25P02` in an aborted transaction, reported as
    /// [`TransactionAborted`](crate::error::TransactionAborted).
    fn check_not_aborted(
        conn: &mut sqlx::PgConnection,
    ) -> impl std::future::Future<Output = Result<(), sqlx::Error>> + Send + '_ {
        crate::aborted::postgres_check(conn)
    }

    fn savepoint_statement(
        conn: &mut sqlx::PgConnection,
        statement: crate::source::Savepoint<'_>,
    ) -> impl std::future::Future<Output = Result<(), sqlx::Error>> + Send {
        // The name was checked as a plain identifier when the policy was built.
        let sql = sqlx::AssertSqlSafe(statement.to_string());
        async move { sqlx::raw_sql(sql).execute(conn).await.map(drop) }
    }

    /// `SET LOCAL sqlx_retry.not_aborted = 'on'; COMMIT; BEGIN` as one simple query: no round
    /// trip more than COMMIT alone (see `aborted.rs`).
    fn commit_pooled(
        conn: &mut sqlx::PgConnection,
    ) -> impl std::future::Future<Output = Result<bool, sqlx::Error>> + Send + '_ {
        crate::aborted::postgres_commit_pooled(conn)
    }
}

/// The class of a database error with SQLSTATE `code`.
pub(crate) fn classify(code: SqlState, retry_on: &[SqlState]) -> Class {
    // A lost connection stays a lost connection even if listed in `retry_on`: at COMMIT it means
    // the outcome is unknown, and only `idempotent` may retry that.
    if is_connection_lost(code) {
        return Class::ConnectionLost;
    }
    // An outcome the server could not determine is never a conflict: rerunning after it may
    // apply the transaction twice. At COMMIT the loop reports it as commit-unknown.
    if code == SqlState::STATEMENT_COMPLETION_UNKNOWN {
        return Class::Permanent;
    }
    if code == SqlState::SERIALIZATION_FAILURE
        || code == SqlState::DEADLOCK_DETECTED
        || retry_on.contains(&code)
    {
        return Class::Conflict(code);
    }
    Class::Permanent
}

/// Class `08` connection exceptions, the server shutting down, crashed or starting up, and the
/// session killed by `idle_in_transaction_session_timeout` (`25P03`) or `idle_session_timeout`
/// (`57P05`).
fn is_connection_lost(code: SqlState) -> bool {
    code.class() == "08"
        || matches!(
            code.as_str(),
            "57P01" | "57P02" | "57P03" | "57P05" | "25P03"
        )
}

/// The kind of conflict a database error reports; `None` without a SQLSTATE.
pub(crate) fn conflict_kind(db: &dyn DatabaseError) -> Option<ConflictKind> {
    let code = db.code().and_then(|c| SqlState::new(&c))?;
    if code == SqlState::DEADLOCK_DETECTED {
        return Some(ConflictKind::Deadlock);
    }
    if code != SqlState::SERIALIZATION_FAILURE {
        return Some(ConflictKind::Other);
    }
    if let Some(kind) = super::distributed::conflict_kind(db.message()) {
        return Some(kind);
    }
    let (detail, file) = detail_and_file(db);
    let ssi = detail.is_some_and(|d| d.starts_with("Reason code:"));
    Some(match file {
        Some("predicate.c") => ConflictKind::Dependency,
        _ if ssi => ConflictKind::Dependency,
        Some("postgres.c") => ConflictKind::Recovery,
        None => ConflictKind::Other,
        Some(_) => ConflictKind::RowWrite,
    })
}

/// The DETAIL and source file fields of a PostgreSQL error (or of a simulated one); `None` for
/// errors that carry neither.
fn detail_and_file(db: &dyn DatabaseError) -> (Option<&str>, Option<&str>) {
    #[cfg(feature = "postgres")]
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        return (pg.detail(), pg.file());
    }
    #[cfg(any(test, feature = "mock"))]
    if let Some(sim) = db
        .as_error()
        .downcast_ref::<crate::simulated::SimulatedDbError>()
    {
        return (sim.detail_field(), sim.file_field());
    }
    let _ = db;
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_statements_are_single_statements() {
        let o = |isolation, read_only, deferrable| TxOptions {
            isolation,
            read_only,
            deferrable,
            ..TxOptions::default()
        };
        use IsolationLevel::*;
        assert_eq!(
            begin_statement(&o(Serializable, false, false)),
            "BEGIN ISOLATION LEVEL SERIALIZABLE"
        );
        assert_eq!(
            begin_statement(&o(Serializable, true, true)),
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE"
        );
        assert_eq!(
            begin_statement(&o(RepeatableRead, true, false)),
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
        );
        assert_eq!(
            begin_statement(&o(ReadCommitted, false, false)),
            "BEGIN ISOLATION LEVEL READ COMMITTED"
        );
    }
}
