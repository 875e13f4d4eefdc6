//! SQLite.
//!
//! # Starting a transaction
//!
//! SQLite transactions are always serializable: there is one writer at a time, and a reader sees
//! one snapshot. What matters is *when* the write lock is taken:
//!
//! | options | statement | why |
//! |---|---|---|
//! | read-write (the default) | `BEGIN IMMEDIATE` | takes the write lock at BEGIN, so a busy database fails (or waits `busy_timeout`) before the body runs, and a read followed by a write can never fail half-way with `SQLITE_BUSY_SNAPSHOT` |
//! | `read_only` | `BEGIN DEFERRED` | takes no lock until the first read; readers never block a WAL writer. SQLite does not enforce read-only: a write in such a transaction tries to upgrade it and may fail with `SQLITE_BUSY`/`SQLITE_BUSY_SNAPSHOT`, which is retried |
//!
//! `isolation = "repeatable_read"` / `"read_committed"` and `deferrable` are rejected with
//! [`UnsupportedTxOption`] rather than silently run at another level.
//!
//! # What is retried
//!
//! SQLite has no SQLSTATEs; sqlx reports the extended result code (`SqliteError::code()`, e.g.
//! `"517"`). Every `SQLITE_BUSY` (5) and `SQLITE_LOCKED` (6) code, including the extended ones
//! (`SQLITE_BUSY_RECOVERY` 261, `SQLITE_BUSY_SNAPSHOT` 517, `SQLITE_BUSY_TIMEOUT` 773,
//! `SQLITE_LOCKED_SHAREDCACHE` 262, `SQLITE_LOCKED_VTAB` 518), is a [`Class::Conflict`] reported
//! as SQLSTATE `40001` (serialization_failure): another connection holds the lock or wrote after
//! this transaction's snapshot, and running the transaction again is the remedy. The exact code
//! stays in the error. Every other SQLite error is [`Class::Permanent`]; `retry_on` cannot name
//! SQLite codes.

use sqlx::Sqlite;
use sqlx::error::DatabaseError;
use sqlx::sqlite::SqliteError;

use super::{Backend, UnsupportedTxOption};
use crate::error::Class;
use crate::policy::TxOptions;
use crate::{IsolationLevel, SqlState};

/// `SQLITE_BUSY`: another connection holds a conflicting lock.
const SQLITE_BUSY: i32 = 5;
/// `SQLITE_LOCKED`: a conflict within the connection or its shared cache.
const SQLITE_LOCKED: i32 = 6;

const DATABASE: &str = "SQLite";

impl Backend for Sqlite {
    /// `BEGIN IMMEDIATE`, or `BEGIN DEFERRED` for `read_only`.
    fn begin_statement(options: &TxOptions) -> Result<&'static str, sqlx::Error> {
        if options.isolation != IsolationLevel::Serializable {
            return Err(UnsupportedTxOption::sqlx(
                DATABASE,
                match options.isolation {
                    IsolationLevel::RepeatableRead => "isolation = \"repeatable_read\"",
                    _ => "isolation = \"read_committed\"",
                },
                "SQLite transactions are always SERIALIZABLE; use isolation = \"serializable\" \
                 (the default)",
            ));
        }
        if options.deferrable {
            return Err(UnsupportedTxOption::sqlx(
                DATABASE,
                "deferrable",
                "DEFERRABLE is PostgreSQL-only; a `read_only` transaction on SQLite already \
                 reads one snapshot without taking the write lock",
            ));
        }
        Ok(if options.read_only {
            "BEGIN DEFERRED"
        } else {
            "BEGIN IMMEDIATE"
        })
    }
}

/// The SQLite part of classification: every SQLite error is decided here, by its primary result
/// code (the low byte of the extended code).
pub(crate) fn classify(db: &dyn DatabaseError) -> Option<Class> {
    let err = db.try_downcast_ref::<SqliteError>()?;
    let code: i32 = DatabaseError::code(err)?.parse().ok()?;
    Some(match code & 0xff {
        SQLITE_BUSY | SQLITE_LOCKED => Class::Conflict(SqlState::SERIALIZATION_FAILURE),
        _ => Class::Permanent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(isolation: IsolationLevel, read_only: bool, deferrable: bool) -> TxOptions {
        TxOptions {
            isolation,
            read_only,
            deferrable,
            ..TxOptions::default()
        }
    }

    #[test]
    fn writers_take_the_lock_at_begin() {
        use IsolationLevel::*;
        assert_eq!(
            Sqlite::begin_statement(&o(Serializable, false, false)).unwrap(),
            "BEGIN IMMEDIATE"
        );
        assert_eq!(
            Sqlite::begin_statement(&o(Serializable, true, false)).unwrap(),
            "BEGIN DEFERRED"
        );
    }

    #[test]
    fn other_levels_and_deferrable_are_configuration_errors() {
        use IsolationLevel::*;
        for (options, option) in [
            (
                o(RepeatableRead, false, false),
                "isolation = \"repeatable_read\"",
            ),
            (
                o(ReadCommitted, true, false),
                "isolation = \"read_committed\"",
            ),
            (o(Serializable, true, true), "deferrable"),
        ] {
            let err = Sqlite::begin_statement(&options).unwrap_err();
            let sqlx::Error::Configuration(inner) = &err else {
                panic!("expected a configuration error, got {err:?}");
            };
            let unsupported = inner.downcast_ref::<UnsupportedTxOption>().unwrap();
            assert_eq!(unsupported.option(), option);
            assert_eq!(unsupported.database(), "SQLite");
            assert_eq!(crate::error::classify_sqlx(&err, &[]), Class::Permanent);
        }
    }

    /// Real SQLite errors (their type has no public constructor): every `SQLITE_BUSY` and
    /// `SQLITE_LOCKED` code is a conflict, everything else permanent.
    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn sqlite_result_codes() {
        use crate::error::{classify, sqlstate};
        use sqlx::Connection as _;
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};

        let path = std::env::temp_dir().join(format!(
            "sqlx-retry-classify-{}-{:?}.db",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::ZERO);
        let result = async {
            let mut a = sqlx::SqliteConnection::connect_with(&options).await?;
            let mut b = sqlx::SqliteConnection::connect_with(&options).await?;
            let run = |sql: &'static str| sqlx::raw_sql(sql);
            run("CREATE TABLE t (id INTEGER PRIMARY KEY)")
                .execute(&mut a)
                .await?;
            let code = |e: &sqlx::Error| match e {
                sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
                _ => None,
            };
            let conflict = Class::Conflict(SqlState::SERIALIZATION_FAILURE);

            // SQLITE_BUSY (5): another connection holds the write lock.
            run("BEGIN IMMEDIATE").execute(&mut a).await?;
            let busy = run("BEGIN IMMEDIATE").execute(&mut b).await.unwrap_err();
            assert_eq!(code(&busy).as_deref(), Some("5"), "{busy}");
            assert_eq!(classify(&busy, &[]), conflict);
            assert_eq!(sqlstate(&busy), None);
            run("COMMIT").execute(&mut a).await?;

            // SQLITE_BUSY_SNAPSHOT (517): a read transaction whose snapshot is stale tries to write.
            run("BEGIN DEFERRED; SELECT count(*) FROM t")
                .execute(&mut a)
                .await?;
            run("INSERT INTO t VALUES (1)").execute(&mut b).await?;
            let snapshot = run("INSERT INTO t VALUES (2)")
                .execute(&mut a)
                .await
                .unwrap_err();
            assert_eq!(code(&snapshot).as_deref(), Some("517"), "{snapshot}");
            assert_eq!(classify(&snapshot, &[]), conflict);
            run("ROLLBACK").execute(&mut a).await?;

            // Everything else is permanent: a constraint (1555), a syntax error (1).
            let dup = run("INSERT INTO t VALUES (1)")
                .execute(&mut a)
                .await
                .unwrap_err();
            assert_eq!(code(&dup).as_deref(), Some("1555"), "{dup}");
            assert_eq!(
                classify(&dup, &[SqlState::UNIQUE_VIOLATION]),
                Class::Permanent
            );
            let syntax = run("SELEC 1").execute(&mut a).await.unwrap_err();
            assert_eq!(code(&syntax).as_deref(), Some("1"), "{syntax}");
            assert_eq!(classify(&syntax, &[]), Class::Permanent);
            a.close().await?;
            b.close().await
        }
        .await;
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
        result.unwrap();
    }
}
