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
        let mut guard = CloseUnlessBegun(Some(pool.acquire().await?));
        if let Some(conn) = guard.0.as_mut() {
            DB::TransactionManager::begin(conn, Some(statement)).await?;
        }
        match guard.0.take() {
            Some(conn) => Ok(PoolTransaction { conn, open: true }),
            None => Err(sqlx::Error::PoolClosed),
        }
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
    /// (`Backend::commit_pooled`). When that leaves an empty transaction open, the transaction
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
