//! Where transactions come from: a pool, a single connection, or the mock.

use std::future::Future;
use std::time::Duration;

use sqlx::{Database, Pool, Transaction};

use crate::TxOptions;

/// One attempt's open transaction.
///
/// Dropping it without calling [`commit`](Self::commit) or [`rollback`](Self::rollback) must roll
/// the transaction back (sqlx's [`Transaction`] queues a ROLLBACK on drop), so a cancelled call
/// never leaves a session idle in transaction.
pub trait OpenTransaction: Send {
    /// What the body works on: `PgConnection` for PostgreSQL sources.
    type Conn: ?Sized;

    /// The connection the body runs its statements on.
    fn conn(&mut self) -> &mut Self::Conn;

    /// Sends COMMIT.
    fn commit(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Sends ROLLBACK.
    fn rollback(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// Something the retry loop can start transactions on: what callers pass in place of the
/// annotated function's transaction parameter.
///
/// Implemented for `&Pool<DB>` (each attempt takes a connection from the pool, so an attempt
/// whose connection broke is retried on a fresh one), for `&mut PgConnection` (each attempt is a
/// transaction on that connection; a broken connection ends the call), and for the mock source.
pub trait TransactionSource: Send {
    /// The connection type the body receives as `&mut Self::Conn`.
    type Conn: ?Sized;

    /// An open transaction borrowed from this source.
    type Tx<'s>: OpenTransaction<Conn = Self::Conn>
    where
        Self: 's;

    /// Starts a transaction with `options` (one statement on PostgreSQL).
    fn begin(
        &mut self,
        options: &TxOptions,
    ) -> impl Future<Output = Result<Self::Tx<'_>, sqlx::Error>> + Send;

    /// Waits between attempts. The default is `tokio::time::sleep`, so tests on tokio's paused
    /// clock spend no real time.
    fn sleep(&mut self, delay: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(delay)
    }

    /// Whether a later attempt gets a fresh connection after this one's broke. A pool does; a
    /// single connection does not, so a lost connection is final for it.
    fn reconnects(&self) -> bool;
}

impl<DB: Database> OpenTransaction for Transaction<'_, DB> {
    type Conn = DB::Connection;

    fn conn(&mut self) -> &mut DB::Connection {
        self
    }

    fn commit(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        Transaction::commit(self)
    }

    fn rollback(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        Transaction::rollback(self)
    }
}

/// A database whose transactions the retry loop knows how to start.
pub trait Backend: Database {
    /// The statement that starts a transaction with `options`, or an error naming the option the
    /// database does not support.
    fn begin_statement(options: &TxOptions) -> Result<&'static str, sqlx::Error>;
}

#[cfg(feature = "postgres")]
impl Backend for sqlx::Postgres {
    fn begin_statement(options: &TxOptions) -> Result<&'static str, sqlx::Error> {
        Ok(options.postgres_begin())
    }
}

impl<'p, DB: Backend> TransactionSource for &'p Pool<DB> {
    type Conn = DB::Connection;
    type Tx<'s>
        = Transaction<'static, DB>
    where
        Self: 's;

    fn begin(
        &mut self,
        options: &TxOptions,
    ) -> impl Future<Output = Result<Self::Tx<'_>, sqlx::Error>> + Send {
        let pool: &'p Pool<DB> = self;
        let statement = DB::begin_statement(options);
        async move { pool.begin_with(statement?).await }
    }

    fn reconnects(&self) -> bool {
        true
    }
}

#[cfg(feature = "postgres")]
impl<'c> TransactionSource for &'c mut sqlx::PgConnection {
    type Conn = sqlx::PgConnection;
    type Tx<'s>
        = Transaction<'s, sqlx::Postgres>
    where
        Self: 's;

    fn begin(
        &mut self,
        options: &TxOptions,
    ) -> impl Future<Output = Result<Self::Tx<'_>, sqlx::Error>> + Send {
        let statement = options.postgres_begin();
        sqlx::Connection::begin_with(&mut **self, statement)
    }

    fn reconnects(&self) -> bool {
        false
    }
}
