//! The databases: for each, how its transactions start and which of its errors mean "run the
//! transaction again", one module per database. Shared code dispatches here: the sources ask
//! [`Backend::begin_statement`], classification asks [`classify`] and [`conflict_kind`].
//!
//! PostgreSQL's module is always compiled (the mock starts its transactions with PostgreSQL's
//! statements, and its SQLSTATE rules are the rules for any database error another backend does
//! not claim); its sources need the `postgres` feature. MySQL/MariaDB and SQLite are behind the
//! `mysql` and `sqlite` features.

use std::fmt;
use std::future::Future;

use sqlx::Database;
use sqlx::error::DatabaseError;

use crate::error::Class;
use crate::policy::TxOptions;
use crate::{ConflictKind, SqlState};

pub(crate) mod distributed;
#[cfg(feature = "mysql")]
pub(crate) mod mysql;
pub(crate) mod postgres;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;

/// A database whose transactions the retry loop knows how to start: `sqlx::Postgres`,
/// `sqlx::MySql` and `sqlx::Sqlite`, with their features.
///
/// Sealed: it is public only because the pool source (`&Pool<DB>`) names it in its bounds, and
/// it lives in a private module, so it cannot be implemented outside this crate. To start
/// transactions some other way, implement
/// [`BeginTransaction`](crate::source::BeginTransaction) for your own source instead.
pub trait Backend: Database {
    /// The statement that starts a transaction with `options`, or an error naming the option the
    /// database does not support.
    fn begin_statement(options: &TxOptions) -> Result<&'static str, sqlx::Error>;

    /// Whether a ROLLBACK before a retry may go out without the caller waiting for its answer:
    /// sqlx queues it, it is written at once, and the connection's next use (the next attempt's
    /// BEGIN, or the pool's release ping) reads the answer. PostgreSQL only: its protocol answers
    /// in order and the tests cover it there.
    const ROLLBACK_UNAWAITED: bool = false;

    /// Fails when the transaction open on `conn` was aborted by the server, so that no COMMIT is
    /// sent for it (see [`OpenTransaction::check_not_aborted`]). The default does nothing: MySQL
    /// and SQLite keep a transaction usable after a failed statement.
    ///
    /// [`OpenTransaction::check_not_aborted`]: crate::source::OpenTransaction::check_not_aborted
    fn check_not_aborted(
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_ {
        let _ = conn;
        std::future::ready(Ok(()))
    }

    /// Sends one statement of the savepoint protocol (see
    /// [`PolicyBuilder::savepoint`](crate::PolicyBuilder::savepoint)) on `conn`, as a simple
    /// query. The default fails with [`UnsupportedTxOption`]: the protocol is for PostgreSQL and
    /// the distributed engines on its wire protocol (CockroachDB, YugabyteDB).
    fn savepoint_statement(
        conn: &mut Self::Connection,
        statement: crate::source::Savepoint<'_>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        let _ = (conn, statement);
        std::future::ready(Err(UnsupportedTxOption::sqlx(
            "this database",
            "savepoint",
            "the savepoint protocol is supported on PostgreSQL and engines on its wire protocol",
        )))
    }

    /// Commits the transaction open on a pooled `conn`, unless the server aborted it: the
    /// [`PoolTransaction`](crate::source::PoolTransaction)'s COMMIT. `Ok(true)` means that an
    /// empty transaction was left open on the connection, for the ROLLBACK that the pool's release
    /// ping flushes together with its Sync, in no round trip of its own. The default is
    /// [`check_not_aborted`](Self::check_not_aborted) then COMMIT, `Ok(false)`.
    fn commit_pooled(
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + '_ {
        async move {
            Self::check_not_aborted(conn).await?;
            <Self::TransactionManager as sqlx_core::transaction::TransactionManager>::commit(conn)
                .await?;
            Ok(false)
        }
    }
}

/// The class of a database error: the backend whose error it is decides; PostgreSQL's SQLSTATE
/// rules decide for everything else that carries a SQLSTATE.
pub(crate) fn classify(db: &dyn DatabaseError, retry_on: &[SqlState]) -> Class {
    // Backend-specific rules first: errors whose code alone does not say enough (MySQL's
    // catch-all `HY000`) or is not a SQLSTATE at all (SQLite's result codes).
    #[cfg(feature = "mysql")]
    if let Some(class) = mysql::classify(db) {
        return class;
    }
    #[cfg(feature = "sqlite")]
    if let Some(class) = sqlite::classify(db) {
        return class;
    }
    match db.code().and_then(|c| SqlState::new(&c)) {
        Some(code) => postgres::classify(code, retry_on),
        None => Class::Permanent,
    }
}

/// The kind of conflict a database error reports; `None` without a SQLSTATE. PostgreSQL (by its
/// source file field), CockroachDB and YugabyteDB (by their messages) tell kinds apart; other
/// databases' conflicts are [`ConflictKind::Other`] or, for `40P01`, [`ConflictKind::Deadlock`].
pub(crate) fn conflict_kind(db: &dyn DatabaseError) -> Option<ConflictKind> {
    postgres::conflict_kind(db)
}

/// A transaction option the database cannot honour, e.g. `deferrable` on MySQL or
/// `isolation = "read_committed"` on SQLite.
///
/// Starting such a transaction fails before anything is sent to the server, with a
/// [`sqlx::Error::Configuration`] whose source is this error; the call is not retried.
///
/// ```
/// # use sqlx_retry_core::error::UnsupportedTxOption;
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
