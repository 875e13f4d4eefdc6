//! The sources that hold one connection: `&mut PgConnection` (and MySQL's and SQLite's), and
//! `&mut sqlx::Transaction`.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};

use sqlx::{Database, Transaction};
use sqlx_core::transaction::TransactionManager;

#[allow(unused_imports)] // unused when no database feature is enabled
use super::MaybeJoined;
use super::{BeginTransaction, Joined, OpenTransaction, Savepoint};
use crate::backends::Backend;
use crate::policy::TxOptions;

/// The `&mut Connection` sources: each attempt is a transaction on that connection, and a broken
/// connection ends the call (it cannot be replaced). A connection that is already inside a
/// transaction (an annotated function called with the outer function's `tx`) joins it: see
/// [`Joined`].
macro_rules! connection_source {
    ($(#[$attr:meta])* $conn:ty, $db:ty) => {
        $(#[$attr])*
        impl<'s> BeginTransaction<'s> for &mut $conn {
            type Conn = $conn;
            type Tx = MaybeJoined<'s, $db>;

            fn begin(
                &'s mut self,
                options: TxOptions,
            ) -> impl Future<Output = Result<Self::Tx, sqlx::Error>> + Send + 's {
                let statement = <$db as Backend>::begin_statement(&options);
                let conn: &'s mut $conn = self;
                async move {
                    if sqlx::Connection::is_in_transaction(&*conn) {
                        Ok(MaybeJoined::Joined(Joined::new(conn)))
                    } else {
                        HeldTransaction::begin(conn, statement?)
                            .await
                            .map(MaybeJoined::Began)
                    }
                }
            }

            fn reconnects(&self) -> bool {
                false
            }

            fn joins(&self) -> bool {
                sqlx::Connection::is_in_transaction(&**self)
            }
        }
    };
}

connection_source!(
    #[cfg(feature = "postgres")]
    sqlx::PgConnection,
    sqlx::Postgres
);
connection_source!(
    #[cfg(feature = "mysql")]
    sqlx::MySqlConnection,
    sqlx::MySql
);
connection_source!(
    #[cfg(feature = "sqlite")]
    sqlx::SqliteConnection,
    sqlx::Sqlite
);

/// An open transaction as the source: the call joins it (see [`Joined`]). The body runs once on
/// it; nothing is sent to start or end a transaction, and the body's error is returned as is. The
/// caller commits or rolls back.
impl<'s, DB: Database> BeginTransaction<'s> for &mut Transaction<'_, DB> {
    type Conn = DB::Connection;
    type Tx = Joined<'s, DB::Connection>;

    fn begin(
        &'s mut self,
        _options: TxOptions,
    ) -> impl Future<Output = Result<Self::Tx, sqlx::Error>> + Send + 's {
        let conn: &'s mut DB::Connection = self;
        std::future::ready(Ok(Joined::new(conn)))
    }

    fn reconnects(&self) -> bool {
        false
    }

    fn joins(&self) -> bool {
        true
    }
}

/// An open transaction that an attempt began on a connection the caller holds (`&mut
/// PgConnection`, and MySQL's and SQLite's): the `Began` case of [`MaybeJoined`]. You meet it
/// only when driving a connection source by hand.
///
/// Dropped while open (the call was cancelled), it queues a ROLLBACK that goes out ahead of the
/// connection's next statement, as sqlx's `Transaction` does.
///
/// Its COMMIT on PostgreSQL is the check that the transaction is not aborted, COMMIT and an
/// empty transaction in one simple query (`SET LOCAL sqlx_retry.not_aborted = 'on'; COMMIT;
/// BEGIN`, see [`TransactionAborted`](crate::error::TransactionAborted)); the ROLLBACK that ends
/// the empty transaction is sent right away, without waiting for its answer, which the
/// connection reads at its next use. So the check costs no round trip, and the connection is idle
/// (not idle in transaction) as soon as the server has read that ROLLBACK.
pub struct HeldTransaction<'c, DB: Database> {
    conn: &'c mut DB::Connection,
    open: bool,
}

impl<'c, DB: Backend> HeldTransaction<'c, DB> {
    /// Starts a transaction with `statement` on `conn`.
    pub(crate) async fn begin(
        conn: &'c mut DB::Connection,
        statement: &'static str,
    ) -> Result<Self, sqlx::Error> {
        DB::TransactionManager::begin(conn, Some(sqlx::SqlStr::from_static(statement))).await?;
        Ok(HeldTransaction { conn, open: true })
    }
}

impl<DB: Database> HeldTransaction<'_, DB> {
    /// COMMIT or ROLLBACK went through: nothing to roll back on drop.
    fn ended(&mut self) {
        self.open = false;
    }

    /// Ends the transaction open on the connection with a ROLLBACK that is queued and put on
    /// the wire now, without waiting for its answer (see [`send_queued`]).
    fn send_rollback(&mut self) {
        self.ended();
        DB::TransactionManager::start_rollback(self.conn);
        send_queued(self.conn);
    }
}

impl<DB: Database> Drop for HeldTransaction<'_, DB> {
    fn drop(&mut self) {
        if self.open {
            DB::TransactionManager::start_rollback(self.conn);
        }
    }
}

impl<DB: Backend> OpenTransaction for HeldTransaction<'_, DB> {
    type Conn = DB::Connection;

    fn conn(&mut self) -> &mut DB::Connection {
        self.conn
    }

    /// Checks that the transaction is not aborted and commits, in one round trip on PostgreSQL.
    async fn commit(mut self) -> Result<(), sqlx::Error> {
        let left_open = DB::commit_pooled(self.conn).await?;
        self.ended();
        if left_open {
            // The empty transaction: its ROLLBACK goes out now.
            self.send_rollback();
        }
        Ok(())
    }

    fn savepoint(
        &mut self,
        statement: Savepoint<'_>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        DB::savepoint_statement(self.conn, statement)
    }

    /// A plain COMMIT: `RELEASE SAVEPOINT` already proved the transaction not aborted.
    async fn commit_released(mut self) -> Result<(), sqlx::Error> {
        DB::TransactionManager::commit(self.conn).await?;
        self.ended();
        Ok(())
    }

    async fn rollback(mut self) -> Result<(), sqlx::Error> {
        DB::TransactionManager::rollback(self.conn).await?;
        self.ended();
        Ok(())
    }

    /// On PostgreSQL, queues the ROLLBACK and puts it on the wire now; the next BEGIN reads its
    /// answer in the same round trip as its own.
    async fn rollback_before_retry(mut self) -> Result<(), sqlx::Error> {
        if !DB::ROLLBACK_UNAWAITED {
            return self.rollback().await;
        }
        self.send_rollback();
        Ok(())
    }
}

/// Writes what sqlx has queued on `conn` (a ROLLBACK) to the socket without waiting for the
/// answer: polls sqlx's flush once and drops it. sqlx's reads and writes are cancel-safe (a
/// message is consumed only once whole, and unwritten bytes stay in its buffer), so whatever was
/// not written, and the answer, are handled at the connection's next use, exactly as if nothing
/// had been sent early. (`Connection::flush` is public in sqlx 0.9 but hidden from its docs; the
/// workspace pins sqlx to 0.9, and the tests check the ROLLBACK's timing through a proxy.)
fn send_queued<C: sqlx::Connection>(conn: &mut C) {
    let mut flush = pin!(conn.flush());
    let _ = flush.as_mut().poll(&mut Context::from_waker(Waker::noop()));
}
