//! The traits a transaction source implements, and the one callers of annotated functions see.

use std::future::Future;
use std::time::Duration;

use sqlx::Transaction;

use super::timer_sleep;
use crate::backends::Backend;
use crate::policy::TxOptions;

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

    /// Fails when the server has already aborted the transaction, so that COMMIT (which
    /// PostgreSQL would answer with `ROLLBACK`, not an error) is not sent: the retry loop calls it
    /// before [`commit`](Self::commit) and treats its error as the attempt's (see
    /// [`TransactionAborted`](crate::error::TransactionAborted)). The default does nothing; on
    /// PostgreSQL a `sqlx::Transaction` sends one statement, while the transactions of this
    /// crate's pool and connection sources check within their COMMIT instead.
    fn check_not_aborted(&mut self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        std::future::ready(Ok(()))
    }

    /// Sends COMMIT.
    fn commit(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Sends a statement of the savepoint protocol (see
    /// [`PolicyBuilder::savepoint`](crate::PolicyBuilder::savepoint)). The default fails with
    /// [`UnsupportedTxOption`](crate::error::UnsupportedTxOption): a source of your own supports
    /// the protocol by sending `statement`'s text (its `Display`) as one statement.
    fn savepoint(
        &mut self,
        statement: Savepoint<'_>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        let _ = statement;
        std::future::ready(Err(crate::error::UnsupportedTxOption::sqlx(
            "this transaction source",
            "savepoint",
            "its transactions do not implement `OpenTransaction::savepoint`",
        )))
    }

    /// Sends COMMIT after the savepoint protocol's `RELEASE SAVEPOINT` succeeded, which already
    /// proved the transaction not aborted, and after which CockroachDB accepts nothing but
    /// COMMIT. The default is [`commit`](Self::commit).
    fn commit_released(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send
    where
        Self: Sized,
    {
        self.commit()
    }

    /// Sends ROLLBACK.
    fn rollback(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Ends the transaction after a serialization failure (`40001`), before the loop begins the
    /// next attempt on the same source. The default is [`rollback`](Self::rollback).
    ///
    /// The transactions of this crate's PostgreSQL sources send the ROLLBACK and return without
    /// waiting for its answer, which the connection reads at its next use, as a hand-written loop
    /// that drops sqlx's `Transaction` does: the next BEGIN then costs one round trip for both.
    /// The ROLLBACK is on the wire before this returns, so the failed transaction's locks are
    /// not held through the backoff. After a deadlock (`40P01`) the loop still waits for the
    /// ROLLBACK: the victim's retry would otherwise take the contested rows before the woken
    /// winner could, and the two would deadlock again.
    fn rollback_before_retry(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send
    where
        Self: Sized,
    {
        self.rollback()
    }

    /// Waits before the savepoint protocol reruns the body inside this transaction (see
    /// [`PolicyBuilder::savepoint_backoff`](crate::PolicyBuilder::savepoint_backoff)): the
    /// counterpart of [`BeginTransaction::sleep`] for the wait that happens while the transaction
    /// is open. The default is the same timer; the mock's transaction records the sleep in its
    /// script.
    fn sleep(&mut self, delay: Duration) -> impl Future<Output = ()> + Send + 'static {
        timer_sleep(delay)
    }

    /// Whether this "transaction" is a transaction that was already open when the call started
    /// (see [`Joined`](super::Joined)). The retry loop then runs the body exactly once, sends no COMMIT or
    /// ROLLBACK of its own (both are no-ops here) and returns the body's result as is, every
    /// error included, so that the loop that owns the outer transaction decides about retrying.
    /// The default is `false`.
    fn is_joined(&self) -> bool {
        false
    }
}

/// Something the retry loop can start transactions on, for a borrow of lifetime `'s`: implement
/// this for a new kind of source.
///
/// The lifetime is a parameter of the trait (as in sqlx's `Acquire<'c>`) rather than of an
/// associated type so that futures holding a transaction stay provably `Send` when spawned.
///
/// Implemented for `&Pool<DB>` (each attempt takes a connection from the pool, so an attempt
/// whose connection broke is retried on a fresh one), for `&mut PgConnection` (each attempt is a
/// transaction on that connection; a broken connection ends the call; a connection already
/// inside a transaction is [joined](super::Joined)), for `&mut Transaction<'_, DB>` (always
/// joined), and for the mock source (`&MockDb`, and `&mut MockTx` which joins).
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

    /// Waits between attempts. The default waits on tokio's timer, with its millisecond of lag
    /// taken off (see [`timer_sleep`]). On tokio's paused clock it spends no real time, and the
    /// clock moves on a tick less than `delay`; the mock source's sleep is exact.
    fn sleep(&mut self, delay: Duration) -> impl Future<Output = ()> + Send + 'static {
        timer_sleep(delay)
    }

    /// Whether a later attempt gets a fresh connection after this one's broke. A pool does; a
    /// single connection does not, so a lost connection is final for it.
    fn reconnects(&self) -> bool;

    /// Whether [`begin`](Self::begin) will join a transaction that is already open (see
    /// [`Joined`](super::Joined)) rather than start one. The retry loop asks before BEGIN, so that
    /// a call inside someone else's transaction never waits for a
    /// [priority turn](crate::PolicyBuilder::priority_after) while that transaction holds its
    /// locks. The default is `false`; a source that joins returns `true` here.
    fn joins(&self) -> bool {
        false
    }
}

/// What callers pass in place of an annotated function's transaction parameter: a source of
/// transactions whose connection type is `Conn`.
///
/// `#[serializable_retry]` turns `tx: &mut PgConnection` into `tx: impl TransactionSource<PgConnection>`,
/// which `&PgPool`, `&mut PgConnection` and (for a function generic over its connection) the mock
/// source satisfy. Implemented for every [`BeginTransaction`] source; implement that trait, not
/// this one.
pub trait TransactionSource<Conn: ?Sized>: for<'s> BeginTransaction<'s, Conn = Conn> {}

impl<S, Conn: ?Sized> TransactionSource<Conn> for S where
    S: for<'s> BeginTransaction<'s, Conn = Conn>
{
}

/// A statement of the savepoint protocol, on a name checked as a plain SQL identifier: what
/// [`OpenTransaction::savepoint`] sends. Its `Display` is the SQL text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Savepoint<'a> {
    /// `SAVEPOINT name`, right after BEGIN.
    Create(&'a str),
    /// `ROLLBACK TO SAVEPOINT name`, before the body runs again in the same transaction.
    RollbackTo(&'a str),
    /// `RELEASE SAVEPOINT name`, before COMMIT (CockroachDB commits here).
    Release(&'a str),
}

impl std::fmt::Display for Savepoint<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Savepoint::Create(name) => write!(f, "SAVEPOINT {name}"),
            Savepoint::RollbackTo(name) => write!(f, "ROLLBACK TO SAVEPOINT {name}"),
            Savepoint::Release(name) => write!(f, "RELEASE SAVEPOINT {name}"),
        }
    }
}

impl<DB: Backend> OpenTransaction for Transaction<'_, DB> {
    type Conn = DB::Connection;

    fn conn(&mut self) -> &mut DB::Connection {
        self
    }

    fn check_not_aborted(&mut self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        DB::check_not_aborted(self)
    }

    fn commit(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        Transaction::commit(self)
    }

    fn savepoint(
        &mut self,
        statement: Savepoint<'_>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        DB::savepoint_statement(self, statement)
    }

    fn rollback(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        Transaction::rollback(self)
    }
}
