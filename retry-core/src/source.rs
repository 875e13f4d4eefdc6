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

/// Something the retry loop can start transactions on, for a borrow of lifetime `'s`: implement
/// this for a new kind of source.
///
/// The lifetime is a parameter of the trait (as in sqlx's `Acquire<'c>`) rather than of an
/// associated type so that futures holding a transaction stay provably `Send` when spawned.
///
/// Implemented for `&Pool<DB>` (each attempt takes a connection from the pool, so an attempt
/// whose connection broke is retried on a fresh one), for `&mut PgConnection` (each attempt is a
/// transaction on that connection; a broken connection ends the call), and for the mock source.
pub trait BeginTransaction<'s>: Send {
    /// The connection type the body receives as `&mut Self::Conn`.
    type Conn: ?Sized;

    /// An open transaction borrowed from this source for `'s`.
    type Tx: OpenTransaction<Conn = Self::Conn> + 's;

    /// Starts a transaction with `options` (one statement on PostgreSQL).
    fn begin(
        &'s mut self,
        options: TxOptions,
    ) -> impl Future<Output = Result<Self::Tx, sqlx::Error>> + Send + 's;

    /// Waits between attempts. The default is `tokio::time::sleep`, so tests on tokio's paused
    /// clock spend no real time.
    fn sleep(&mut self, delay: Duration) -> impl Future<Output = ()> + Send + 'static {
        tokio::time::sleep(delay)
    }

    /// Whether a later attempt gets a fresh connection after this one's broke. A pool does; a
    /// single connection does not, so a lost connection is final for it.
    fn reconnects(&self) -> bool;
}

/// What callers pass in place of an annotated function's transaction parameter: a source of
/// transactions whose connection type is `C`.
///
/// `#[serializable_retry]` turns `tx: &mut PgConnection` into `tx: impl TransactionSource<PgConnection>`,
/// which `&PgPool`, `&mut PgConnection` and (for a function generic over its connection) the mock
/// source satisfy. Implemented for every [`BeginTransaction`] source; implement that trait, not
/// this one.
pub trait TransactionSource<C: ?Sized>: for<'s> BeginTransaction<'s, Conn = C> {}

impl<S, C: ?Sized> TransactionSource<C> for S where S: for<'s> BeginTransaction<'s, Conn = C> {}

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

impl<'s, 'p, DB: Backend> BeginTransaction<'s> for &'p Pool<DB> {
    type Conn = DB::Connection;
    type Tx = Transaction<'static, DB>;

    fn begin(
        &'s mut self,
        options: TxOptions,
    ) -> impl Future<Output = Result<Self::Tx, sqlx::Error>> + Send + 's {
        let pool: &'p Pool<DB> = self;
        let statement = DB::begin_statement(&options);
        async move { pool.begin_with(statement?).await }
    }

    fn reconnects(&self) -> bool {
        true
    }
}

#[cfg(feature = "postgres")]
impl<'s> BeginTransaction<'s> for &mut sqlx::PgConnection {
    type Conn = sqlx::PgConnection;
    type Tx = Transaction<'s, sqlx::Postgres>;

    fn begin(
        &'s mut self,
        options: TxOptions,
    ) -> impl Future<Output = Result<Self::Tx, sqlx::Error>> + Send + 's {
        let statement = options.postgres_begin();
        sqlx::Connection::begin_with(&mut **self, statement)
    }

    fn reconnects(&self) -> bool {
        false
    }
}
