//! Joining a transaction that was already open when the call started.

use std::future::Future;

use sqlx::Database;

use super::OpenTransaction;
use crate::backends::Backend;

/// A transaction that was already open when an annotated function was called: the call **joins**
/// it instead of starting a transaction of its own.
///
/// This happens when the source is an open transaction (`&mut sqlx::Transaction<'_, DB>`), or a
/// `&mut PgConnection` that is inside a transaction — typically an annotated function calling
/// another one with its own `tx` (`inner(&mut *tx, …)`; see the README's "Nested calls and outer
/// transactions").
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// use sqlx_retry_core::{transaction, Policy};
///
/// let mut tx = pool.begin().await?; // a transaction you manage
/// let n: i64 = transaction(&mut tx, &Policy::default(), |conn| {
///     // Runs once, in `tx`: no BEGIN, no COMMIT, no retry; any error is returned as is.
///     Box::pin(async move { sqlx::query_scalar("SELECT count(*) FROM accounts").fetch_one(conn).await })
/// })
/// .await?;
/// tx.commit().await?; // you commit (or roll back)
/// # Ok(()) }
/// ```
///
/// # Why the inner call does not retry
///
/// PostgreSQL aborts the **whole** transaction on a `40001`, so only the code that started it can
/// run it again; an inner retry would rerun the inner body on an aborted transaction, and a
/// savepoint does not help (the snapshot and the conflict belong to the outer transaction). Nested
/// loops would also multiply attempts (5 outer × 5 inner = 25 bodies) and sleep their backoff
/// while the outer transaction holds its locks and snapshot, making the conflicts they wait out
/// more likely. So a joined call makes exactly one attempt, never sleeps, and returns its error
/// unclassified; the outer loop rolls back, backs off holding nothing, and runs the whole outer
/// body again. After-commit effects registered by a joined call run after the outer COMMIT.
pub struct Joined<'c, Conn: ?Sized>(&'c mut Conn);

impl<'c, Conn: ?Sized> Joined<'c, Conn> {
    /// Joins the transaction open on `conn`.
    pub fn new(conn: &'c mut Conn) -> Self {
        Joined(conn)
    }
}

impl<Conn: ?Sized> std::fmt::Debug for Joined<'_, Conn> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Joined(..)")
    }
}

impl<Conn: ?Sized + Send> OpenTransaction for Joined<'_, Conn> {
    type Conn = Conn;

    fn conn(&mut self) -> &mut Conn {
        self.0
    }

    /// A no-op: the outer transaction commits.
    fn commit(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        std::future::ready(Ok(()))
    }

    /// A no-op: the outer transaction's owner rolls back.
    fn rollback(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        std::future::ready(Ok(()))
    }

    fn is_joined(&self) -> bool {
        true
    }
}

/// The transaction of a connection source: a transaction this attempt began, or the one that was
/// already open on the connection (see [`Joined`]). You meet it only when driving a
/// `&mut PgConnection` (or MySQL, SQLite) source by hand.
pub enum MaybeJoined<'c, DB: Database> {
    /// Started by this attempt; COMMIT and ROLLBACK are sent.
    Began(super::HeldTransaction<'c, DB>),
    /// Already open on the connection; COMMIT and ROLLBACK are no-ops.
    Joined(Joined<'c, DB::Connection>),
}

impl<DB: Database> std::fmt::Debug for MaybeJoined<'_, DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaybeJoined::Began(_) => f.write_str("MaybeJoined::Began(..)"),
            MaybeJoined::Joined(_) => f.write_str("MaybeJoined::Joined(..)"),
        }
    }
}

impl<DB: Backend> OpenTransaction for MaybeJoined<'_, DB> {
    type Conn = DB::Connection;

    fn conn(&mut self) -> &mut DB::Connection {
        match self {
            MaybeJoined::Began(tx) => tx.conn(),
            MaybeJoined::Joined(joined) => joined.conn(),
        }
    }

    async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            MaybeJoined::Began(tx) => tx.commit().await,
            MaybeJoined::Joined(_) => Ok(()),
        }
    }

    async fn commit_released(self) -> Result<(), sqlx::Error> {
        match self {
            MaybeJoined::Began(tx) => tx.commit_released().await,
            MaybeJoined::Joined(_) => Ok(()),
        }
    }

    async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            MaybeJoined::Began(tx) => tx.rollback().await,
            MaybeJoined::Joined(_) => Ok(()),
        }
    }

    async fn rollback_before_retry(self) -> Result<(), sqlx::Error> {
        match self {
            MaybeJoined::Began(tx) => tx.rollback_before_retry().await,
            MaybeJoined::Joined(_) => Ok(()),
        }
    }

    async fn savepoint(&mut self, statement: super::Savepoint<'_>) -> Result<(), sqlx::Error> {
        match self {
            MaybeJoined::Began(tx) => OpenTransaction::savepoint(tx, statement).await,
            MaybeJoined::Joined(joined) => joined.savepoint(statement).await,
        }
    }

    fn is_joined(&self) -> bool {
        matches!(self, MaybeJoined::Joined(_))
    }
}
