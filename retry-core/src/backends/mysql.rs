//! MySQL and MariaDB (InnoDB).
//!
//! # Starting a transaction
//!
//! MySQL has no `BEGIN ISOLATION LEVEL …`: the level of the next transaction is set with
//! `SET TRANSACTION ISOLATION LEVEL …` (no `SESSION`/`GLOBAL`, so it applies to the next
//! transaction only), then `START TRANSACTION [READ ONLY]` starts it. Both go in **one** text
//! protocol message (sqlx connects with `CLIENT_MULTI_STATEMENTS`), so an attempt still costs one
//! round trip; sqlx's begin check reads the server status after the last statement, which is the
//! `START TRANSACTION`. If `SET TRANSACTION` fails the server does not run the rest.
//!
//! `deferrable` has no MySQL equivalent and is rejected with [`UnsupportedTxOption`].
//!
//! # What is retried
//!
//! | error | number, SQLSTATE | class |
//! |---|---|---|
//! | deadlock found (the server rolled the whole transaction back) | `1213`, `40001` | [`Class::Conflict`] (`40001`), by the generic SQLSTATE rule |
//! | lock wait timeout exceeded (`innodb_lock_wait_timeout`) | `1205`, `HY000` | [`Class::Conflict`] (`HY000`) |
//! | record has changed since last read (MariaDB `innodb_snapshot_isolation`) | `1020`, `HY000` | [`Class::Conflict`] (`HY000`) |
//! | connection killed (MariaDB) | `1927`, `70100` | [`Class::ConnectionLost`] |
//! | server shutdown in progress, other class `08` codes | `1053`, `08S01` | [`Class::ConnectionLost`], by the generic rule |
//! | client-side connection loss (`2006`, `2013`) | — | [`Class::ConnectionLost`] (sqlx reports an I/O error) |
//!
//! A lock wait timeout rolls back only the statement by default (`innodb_rollback_on_timeout` is
//! off), leaving the transaction open with its earlier writes. The retry loop always sends
//! ROLLBACK for a failed attempt before running the body again, so nothing of the failed attempt
//! survives. MySQL reports `1205` and `1020` with the catch-all SQLSTATE `HY000`; the decision to
//! retry is made on the error number, and `HY000` is what the retry hook and the tracing event
//! see (the number is in the error, via `MySqlDatabaseError::number`).

use sqlx::MySql;
use sqlx::error::DatabaseError;
use sqlx::mysql::MySqlDatabaseError;

use super::{Backend, UnsupportedTxOption};
use crate::error::Class;
use crate::policy::TxOptions;
use crate::{IsolationLevel, SqlState};

/// `ER_CHECKREAD`: "Record has changed since last read in table"; MariaDB raises it at
/// `REPEATABLE READ` with `innodb_snapshot_isolation=ON` (the default from 11.6.2).
const ER_CHECKREAD: u16 = 1020;
/// `ER_LOCK_WAIT_TIMEOUT`: "Lock wait timeout exceeded; try restarting transaction".
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
/// `ER_CONNECTION_KILLED` (MariaDB): the session was killed; the connection is gone.
const ER_CONNECTION_KILLED: u16 = 1927;

const DATABASE: &str = "MySQL/MariaDB";

impl Backend for MySql {
    /// `SET TRANSACTION ISOLATION LEVEL …; START TRANSACTION [READ ONLY]`, sent as one message.
    fn begin_statement(options: &TxOptions) -> Result<&'static str, sqlx::Error> {
        use IsolationLevel::*;
        if options.deferrable {
            return Err(UnsupportedTxOption::sqlx(
                DATABASE,
                "deferrable",
                "DEFERRABLE is PostgreSQL-only; a read-only transaction on InnoDB reads a \
                 consistent snapshot without it (use `read_only` alone)",
            ));
        }
        Ok(match (options.isolation, options.read_only) {
            (Serializable, false) => {
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; START TRANSACTION"
            }
            (Serializable, true) => {
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; START TRANSACTION READ ONLY"
            }
            (RepeatableRead, false) => {
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; START TRANSACTION"
            }
            (RepeatableRead, true) => {
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; START TRANSACTION READ ONLY"
            }
            (ReadCommitted, false) => {
                "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION"
            }
            (ReadCommitted, true) => {
                "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION READ ONLY"
            }
        })
    }
}

/// The MySQL-specific part of classification, by error number; `None` leaves the error to the
/// generic SQLSTATE rules (which retry `40001`, i.e. deadlock `1213`).
pub(crate) fn classify(db: &dyn DatabaseError) -> Option<Class> {
    let err = db.try_downcast_ref::<MySqlDatabaseError>()?;
    match err.number() {
        ER_LOCK_WAIT_TIMEOUT | ER_CHECKREAD => {
            let code = err.code().and_then(SqlState::new).unwrap_or(GENERAL_ERROR);
            Some(Class::Conflict(code))
        }
        ER_CONNECTION_KILLED => Some(Class::ConnectionLost),
        _ => None,
    }
}

/// `HY000`, MySQL's catch-all SQLSTATE.
const GENERAL_ERROR: SqlState = match SqlState::new("HY000") {
    Some(code) => code,
    None => unreachable!(),
};

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
    fn begin_sets_the_level_of_the_next_transaction_then_starts_it() {
        use IsolationLevel::*;
        let cases = [
            (
                o(Serializable, false, false),
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; START TRANSACTION",
            ),
            (
                o(Serializable, true, false),
                "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; START TRANSACTION READ ONLY",
            ),
            (
                o(RepeatableRead, false, false),
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; START TRANSACTION",
            ),
            (
                o(ReadCommitted, true, false),
                "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION READ ONLY",
            ),
        ];
        for (options, want) in cases {
            assert_eq!(MySql::begin_statement(&options).unwrap(), want);
        }
    }

    #[test]
    fn deferrable_is_a_configuration_error() {
        let err = MySql::begin_statement(&o(IsolationLevel::Serializable, true, true)).unwrap_err();
        let sqlx::Error::Configuration(inner) = &err else {
            panic!("expected a configuration error, got {err:?}");
        };
        let unsupported = inner.downcast_ref::<UnsupportedTxOption>().unwrap();
        assert_eq!(unsupported.option(), "deferrable");
        assert!(
            err.to_string().contains("DEFERRABLE is PostgreSQL-only"),
            "{err}"
        );
        assert_eq!(crate::error::classify_sqlx(&err, &[]), Class::Permanent);
    }
}
