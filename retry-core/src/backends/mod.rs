//! MySQL/MariaDB and SQLite: how their transactions start, the connection sources, and the
//! errors that mean "run the transaction again".
//!
//! PostgreSQL lives in `source.rs`, next to the traits; everything here is behind the `mysql`
//! and `sqlite` features.

use std::fmt;

#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

/// A transaction option the database cannot honour, e.g. `deferrable` on MySQL or
/// `isolation = "read_committed"` on SQLite.
///
/// Starting such a transaction fails before anything is sent to the server, with a
/// [`sqlx::Error::Configuration`] whose source is this error; the call is not retried.
///
/// ```
/// # use sqlx_retry_core::UnsupportedTxOption;
/// # fn check(err: &sqlx::Error) -> Option<&UnsupportedTxOption> {
/// match err {
///     sqlx::Error::Configuration(e) => e.downcast_ref::<UnsupportedTxOption>(),
///     _ => None,
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedTxOption {
    database: &'static str,
    option: &'static str,
    reason: &'static str,
}

impl UnsupportedTxOption {
    #[allow(dead_code)] // unused when neither `mysql` nor `sqlite` is enabled
    pub(crate) fn sqlx(
        database: &'static str,
        option: &'static str,
        reason: &'static str,
    ) -> sqlx::Error {
        sqlx::Error::Configuration(Box::new(UnsupportedTxOption {
            database,
            option,
            reason,
        }))
    }

    /// The database, e.g. `"MySQL/MariaDB"`.
    pub fn database(&self) -> &'static str {
        self.database
    }

    /// The option as written in the attribute, e.g. `"deferrable"`.
    pub fn option(&self) -> &'static str {
        self.option
    }
}

impl fmt::Display for UnsupportedTxOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} does not support the transaction option `{}`: {}",
            self.database, self.option, self.reason
        )
    }
}

impl std::error::Error for UnsupportedTxOption {}
