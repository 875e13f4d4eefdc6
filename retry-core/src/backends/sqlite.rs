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

use super::UnsupportedTxOption;
use crate::{Backend, Class, IsolationLevel, SqlState, TxOptions};

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
            assert_eq!(crate::classify_sqlx(&err, &[]), Class::Permanent);
        }
    }
}
