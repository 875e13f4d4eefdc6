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

    /// Fails when the server has already aborted the transaction, so that COMMIT (which
    /// PostgreSQL would answer with `ROLLBACK`, not an error) is not sent: the retry loop calls it
    /// before [`commit`](Self::commit) and treats its error as the attempt's (see
    /// [`TransactionAborted`](crate::TransactionAborted)). The default does nothing; on
    /// PostgreSQL a `&mut PgConnection` source sends one statement, and a pooled transaction
    /// checks within its COMMIT instead ([`Backend::commit_pooled`]).
    fn check_not_aborted(&mut self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        std::future::ready(Ok(()))
    }

    /// Sends COMMIT.
    fn commit(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Sends ROLLBACK.
    fn rollback(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Whether this "transaction" is a transaction that was already open when the call started
    /// (see [`Joined`]). The retry loop then runs the body exactly once, sends no COMMIT or
    /// ROLLBACK of its own (both are no-ops here) and returns the body's result as is, every
    /// error included, so that the loop that owns the outer transaction decides about retrying.
    /// The default is `false`.
    fn is_joined(&self) -> bool {
        false
    }
}

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
pub struct Joined<'c, C: ?Sized>(&'c mut C);

impl<'c, C: ?Sized> Joined<'c, C> {
    /// Joins the transaction open on `conn`.
    pub fn new(conn: &'c mut C) -> Self {
        Joined(conn)
    }
}

impl<C: ?Sized> std::fmt::Debug for Joined<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Joined(..)")
    }
}

impl<C: ?Sized + Send> OpenTransaction for Joined<'_, C> {
    type Conn = C;

    fn conn(&mut self) -> &mut C {
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
/// already open on the connection (see [`Joined`]).
pub enum MaybeJoined<'c, DB: Database> {
    /// Started by this attempt; COMMIT and ROLLBACK are sent.
    Began(Transaction<'c, DB>),
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
            MaybeJoined::Began(tx) => tx,
            MaybeJoined::Joined(joined) => joined.conn(),
        }
    }

    async fn check_not_aborted(&mut self) -> Result<(), sqlx::Error> {
        match self {
            MaybeJoined::Began(tx) => DB::check_not_aborted(tx).await,
            MaybeJoined::Joined(_) => Ok(()),
        }
    }

    async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            MaybeJoined::Began(tx) => tx.commit().await,
            MaybeJoined::Joined(_) => Ok(()),
        }
    }

    async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            MaybeJoined::Began(tx) => tx.rollback().await,
            MaybeJoined::Joined(_) => Ok(()),
        }
    }

    fn is_joined(&self) -> bool {
        matches!(self, MaybeJoined::Joined(_))
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
/// transaction on that connection; a broken connection ends the call; a connection already inside
/// a transaction is [joined](Joined)), for `&mut Transaction<'_, DB>` (always joined), and for the
/// mock source (`&MockDb`, and `&mut MockTx` which joins).
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
}

/// The resolution of tokio's timer.
pub(crate) const TIMER_TICK: Duration = Duration::from_millis(1);

/// Waits about `delay` on tokio's timer: the default [`BeginTransaction::sleep`].
///
/// tokio's timer counts whole milliseconds. It rounds a deadline up to its next tick and wakes
/// the task on the turn after, so `tokio::time::sleep(d)` waits about `d` plus 1.1 ms (measured
/// on an idle runtime: 1.1 ms for zero, 2.1 ms for 1 ms, 2.6 ms for 1.5 ms). Backoff windows of a
/// few milliseconds would grow by a third or more, and "no backoff" would still wait. So this asks
/// the timer for one tick less than `delay`; a delay shorter than a tick becomes one tick's wait
/// with probability `delay / tick`, and no wait otherwise, which keeps the mean. A zero delay
/// returns at once.
pub fn timer_sleep(delay: Duration) -> impl Future<Output = ()> + Send + 'static {
    let asked = timer_request(delay, fastrand::u64(..TICK_NS));
    async move {
        if let Some(asked) = asked {
            tokio::time::sleep(asked).await;
        }
    }
}

/// [`TIMER_TICK`] in nanoseconds.
const TICK_NS: u64 = TIMER_TICK.as_nanos() as u64;

/// What [`timer_sleep`] asks tokio's timer for, given `coin`, uniform in `0..TICK_NS`: `None`
/// means no wait at all.
fn timer_request(delay: Duration, coin: u64) -> Option<Duration> {
    if delay >= TIMER_TICK {
        Some(delay - TIMER_TICK)
    } else if u128::from(coin) < delay.as_nanos() {
        // Any deadline before the next tick wakes on it: one tick's wait.
        Some(Duration::ZERO)
    } else {
        None
    }
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

    fn rollback(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        Transaction::rollback(self)
    }
}

/// A database whose transactions the retry loop knows how to start.
pub trait Backend: Database {
    /// The statement that starts a transaction with `options`, or an error naming the option the
    /// database does not support.
    fn begin_statement(options: &TxOptions) -> Result<&'static str, sqlx::Error>;

    /// Fails when the transaction open on `conn` was aborted by the server, so that no COMMIT is
    /// sent for it (see [`OpenTransaction::check_not_aborted`]). The default does nothing: MySQL
    /// and SQLite keep a transaction usable after a failed statement.
    fn check_not_aborted(
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_ {
        let _ = conn;
        std::future::ready(Ok(()))
    }

    /// Commits the transaction open on a pooled `conn`, unless the server aborted it: the
    /// [`PoolTransaction`](crate::PoolTransaction)'s COMMIT. `Ok(true)` means that an empty
    /// transaction was left open on the connection, for the ROLLBACK that the pool's release ping
    /// flushes together with its Sync, in no round trip of its own. The default is
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

#[cfg(feature = "postgres")]
impl Backend for sqlx::Postgres {
    fn begin_statement(options: &TxOptions) -> Result<&'static str, sqlx::Error> {
        Ok(options.postgres_begin())
    }

    /// One simple query in its own round trip: `SELECT 1` fails with `25P02` in an aborted
    /// transaction, reported as [`TransactionAborted`](crate::TransactionAborted).
    fn check_not_aborted(
        conn: &mut sqlx::PgConnection,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_ {
        crate::aborted::postgres_check(conn)
    }

    /// `SELECT 1; COMMIT; BEGIN` as one simple query: no round trip more than COMMIT alone (see
    /// `aborted.rs`).
    fn commit_pooled(
        conn: &mut sqlx::PgConnection,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + '_ {
        crate::aborted::postgres_commit_pooled(conn)
    }
}

impl<'s, 'p, DB: Backend> BeginTransaction<'s> for &'p Pool<DB> {
    type Conn = DB::Connection;
    type Tx = crate::pool::PoolTransaction<DB>;

    fn begin(
        &'s mut self,
        options: TxOptions,
    ) -> impl Future<Output = Result<Self::Tx, sqlx::Error>> + Send + 's {
        let pool: &'p Pool<DB> = self;
        let statement = DB::begin_statement(&options);
        async move {
            let statement = sqlx::SqlSafeStr::into_sql_str(statement?);
            crate::pool::PoolTransaction::begin(pool, statement).await
        }
    }

    fn reconnects(&self) -> bool {
        true
    }
}

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
                        sqlx::Connection::begin_with(conn, statement?)
                            .await
                            .map(MaybeJoined::Began)
                    }
                }
            }

            fn reconnects(&self) -> bool {
                false
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
}

/// The mock's transaction as the source (an annotated function called with the outer mock
/// function's `tx`): the call joins it, like a `&mut PgConnection` inside a transaction.
#[cfg(feature = "mock")]
impl<'s, S: Clone + Send + 'static> BeginTransaction<'s> for &mut crate::mock::MockTx<S> {
    type Conn = crate::mock::MockTx<S>;
    type Tx = Joined<'s, crate::mock::MockTx<S>>;

    fn begin(
        &'s mut self,
        _options: TxOptions,
    ) -> impl Future<Output = Result<Self::Tx, sqlx::Error>> + Send + 's {
        let conn: &'s mut crate::mock::MockTx<S> = self;
        std::future::ready(Ok(Joined::new(conn)))
    }

    fn reconnects(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_timer_is_asked_for_a_tick_less_and_sub_tick_delays_keep_their_mean() {
        assert_eq!(timer_request(Duration::ZERO, 0), None);
        assert_eq!(timer_request(MS, 0), Some(Duration::ZERO));
        assert_eq!(timer_request(5 * MS, 999_999), Some(4 * MS));
        assert_eq!(timer_request(Duration::MAX, 7), Some(Duration::MAX - MS));
        // 300 µs: a tick's wait for 30 % of the coins, none for the rest.
        let waits = (0..TICK_NS)
            .step_by(1_000)
            .filter(|&coin| timer_request(Duration::from_micros(300), coin).is_some())
            .count();
        assert_eq!(waits, 300);
    }
}
