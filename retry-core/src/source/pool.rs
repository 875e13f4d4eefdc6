//! The pool source, `&Pool<DB>`: each attempt takes a connection from the pool, so an attempt
//! whose connection broke is retried on a fresh one.
//!
//! sqlx's own `Pool::begin_with` has a cancellation gap: its BEGIN counts as open only once the
//! server's reply arrived, so a call dropped while BEGIN is in flight returns the connection to
//! the pool *inside* the new transaction, and whatever runs next on it runs in that leftover
//! transaction. Here the connection is closed instead when BEGIN does not complete.

use std::future::Future;

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool, SqlStr};
use sqlx_core::transaction::TransactionManager;

use super::{BeginTransaction, OpenTransaction};
use crate::backends::Backend;
use crate::policy::TxOptions;

impl<'s, 'p, DB: Backend> BeginTransaction<'s> for &'p Pool<DB> {
    type Conn = DB::Connection;
    type Tx = PoolTransaction<DB>;

    fn begin(
        &'s mut self,
        options: TxOptions,
    ) -> impl Future<Output = Result<Self::Tx, sqlx::Error>> + Send + 's {
        let pool: &'p Pool<DB> = self;
        let statement = DB::begin_statement(&options);
        async move {
            let statement = sqlx::SqlSafeStr::into_sql_str(statement?);
            PoolTransaction::begin(pool, statement).await
        }
    }

    fn reconnects(&self) -> bool {
        true
    }
}

/// An open transaction on a connection taken from a pool, returned to the pool when the attempt
/// ends: the transaction type of the pool source. You meet it only when driving a
/// [`BeginTransaction`] source by hand.
///
/// Dropped while open (the call was cancelled), it queues a ROLLBACK that the pool flushes
/// before anyone else uses the connection, as sqlx's `Transaction` does.
pub struct PoolTransaction<DB: Database> {
    conn: PoolConnection<DB>,
    open: bool,
}

impl<DB: Database> PoolTransaction<DB> {
    /// Takes a connection from `pool` and starts a transaction on it with `statement`.
    pub(crate) async fn begin(pool: &Pool<DB>, statement: SqlStr) -> Result<Self, sqlx::Error> {
        let conn = pool.acquire().await?;
        PoolTransaction::begin_on(conn, statement, |_| false)
            .await
            .map_err(|(err, _)| err)
    }

    /// Starts a transaction with `statement` on `conn`, a connection taken from a pool.
    ///
    /// When BEGIN fails, the connection is closed (its state is unknown), unless `keep` says
    /// the error leaves it idle and usable: it is then handed back with the error.
    #[allow(clippy::type_complexity)]
    pub(crate) async fn begin_on(
        conn: PoolConnection<DB>,
        statement: SqlStr,
        keep: impl FnOnce(&sqlx::Error) -> bool,
    ) -> Result<Self, (sqlx::Error, Option<PoolConnection<DB>>)> {
        let mut guard = CloseUnlessBegun(Some(conn));
        let began = match guard.0.as_mut() {
            Some(conn) => DB::TransactionManager::begin(conn, Some(statement)).await,
            None => Err(sqlx::Error::PoolClosed),
        };
        match (began, guard.0.take()) {
            (Ok(()), Some(conn)) => Ok(PoolTransaction { conn, open: true }),
            (Ok(()), None) => Err((sqlx::Error::PoolClosed, None)),
            (Err(err), Some(conn)) if keep(&err) => Err((err, Some(conn))),
            (Err(err), conn) => {
                // Back in the guard, which closes it.
                guard.0 = conn;
                Err((err, None))
            }
        }
    }
}

#[cfg(feature = "postgres")]
impl PoolTransaction<sqlx::Postgres> {
    /// Commits with `sql`, a simple query that, like [`Backend::commit_pooled`]'s, checks that the
    /// transaction is not aborted (its first statement fails in an aborted one), commits and opens
    /// an empty transaction, and may read values along the way: its rows are returned.
    pub(crate) async fn commit_returning(
        mut self,
        sql: &'static str,
    ) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
        // The empty transaction stays open for sqlx: dropping `self` queues its ROLLBACK.
        crate::aborted::postgres_commit_pooled_returning(&mut self.conn, sql).await
    }
}

/// Closes the connection unless BEGIN completed: dropped mid-BEGIN (cancelled) or after a failed
/// BEGIN, the connection's state is unknown and must not go back to the pool.
struct CloseUnlessBegun<DB: Database>(Option<PoolConnection<DB>>);

impl<DB: Database> Drop for CloseUnlessBegun<DB> {
    fn drop(&mut self) {
        if let Some(conn) = &mut self.0 {
            conn.close_on_drop();
        }
    }
}

impl<DB: Backend> OpenTransaction for PoolTransaction<DB> {
    type Conn = DB::Connection;

    fn conn(&mut self) -> &mut DB::Connection {
        &mut self.conn
    }

    /// Checks that the transaction is not aborted and commits, in one round trip on PostgreSQL
    /// (see `aborted.rs`). When that leaves an empty transaction open, the transaction
    /// stays open for sqlx too, and dropping `self` queues its ROLLBACK for the release ping.
    async fn commit(mut self) -> Result<(), sqlx::Error> {
        if !DB::commit_pooled(&mut self.conn).await? {
            self.ended();
        }
        Ok(())
    }

    fn savepoint(
        &mut self,
        statement: super::Savepoint<'_>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        DB::savepoint_statement(&mut self.conn, statement)
    }

    /// A plain COMMIT: `RELEASE SAVEPOINT` already proved the transaction not aborted.
    async fn commit_released(mut self) -> Result<(), sqlx::Error> {
        DB::TransactionManager::commit(&mut self.conn).await?;
        self.ended();
        Ok(())
    }

    async fn rollback(mut self) -> Result<(), sqlx::Error> {
        DB::TransactionManager::rollback(&mut self.conn).await?;
        self.ended();
        Ok(())
    }

    /// On PostgreSQL, hands the connection back to the pool with the ROLLBACK queued: the pool's
    /// release ping sends it at once and reads both answers in one round trip, while the next
    /// attempt takes a connection.
    async fn rollback_before_retry(self) -> Result<(), sqlx::Error> {
        if !DB::ROLLBACK_UNAWAITED {
            return self.rollback().await;
        }
        // Dropped open: queues the ROLLBACK (see `Drop`), and the connection goes back.
        drop(self);
        Ok(())
    }
}

impl<DB: Database> PoolTransaction<DB> {
    /// COMMIT or ROLLBACK went through: nothing to roll back on drop.
    fn ended(&mut self) {
        self.open = false;
    }
}

impl<DB: Database> Drop for PoolTransaction<DB> {
    fn drop(&mut self) {
        if self.open {
            DB::TransactionManager::start_rollback(&mut self.conn);
        }
    }
}
