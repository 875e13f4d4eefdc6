#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

/// Runs an async function's body in a transaction and retries the **whole body** when the
/// database aborts it because of a conflict.
///
/// The first parameter, `tx: &mut Conn`, is the transaction the body runs in. In the generated
/// function it is replaced by `impl` [`TransactionSource<Conn>`]: callers pass `&PgPool`,
/// `&mut PgConnection` or the mock source in its place. Name, visibility, other parameters,
/// generics, where-clause and return type are kept.
///
/// ```no_run
/// use sqlx::PgConnection;
/// use sqlx_retry::serializable_retry;
///
/// #[serializable_retry(max = 5)]
/// async fn bump(tx: &mut PgConnection, id: i64) -> Result<i64, sqlx::Error> {
///     sqlx::query_scalar("UPDATE counters SET n = n + 1 WHERE id = $1 RETURNING n")
///         .bind(id)
///         .fetch_one(&mut *tx)
///         .await
/// }
///
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// let n = bump(&pool, 7).await?;
/// # Ok(()) }
/// ```
///
/// # Arguments
///
/// All optional, each checked at compile time with an error on the offending token: `policy`,
/// `max`, `isolation`, `read_only`, `deferrable`, `replica`, `backoff(…)`, `budget`, `retry_on`,
/// `idempotent`, `savepoint`, `priority_after`, `keep_signature` and `crate`. Their meanings and
/// defaults are in one table, in the crate documentation's
/// [Attribute arguments](crate#attribute-arguments).
///
/// # One policy for several functions
///
/// Each annotated function has a policy of its own, built from its arguments on first use; its
/// priority turns and its adaptive backoff's count of retrying calls cover that function's calls
/// only. Functions that contend on the same rows can share one instead: build it once in a
/// `static`, and name it with `policy = …`. Its calls then take turns with each other's, and
/// the backoff counts them together. The policy's settings come from its builder (which also
/// takes what the attribute has no argument for, such as [`PolicyBuilder::on_retry`]), so the
/// policy's own arguments (`max`, `backoff`, …) are refused beside it.
///
/// ```no_run
/// use std::sync::LazyLock;
///
/// use sqlx::PgConnection;
/// use sqlx_retry::{Policy, serializable_retry};
///
/// static ACCOUNTS: LazyLock<Policy> = LazyLock::new(|| {
///     Policy::builder()
///         .max_attempts(8)
///         .build()
///         .expect("valid settings")
/// });
///
/// #[serializable_retry(policy = ACCOUNTS)]
/// async fn withdraw(tx: &mut PgConnection, id: i64, amount: i64) -> Result<(), sqlx::Error> {
///     sqlx::query("UPDATE accounts SET balance = balance - $2 WHERE id = $1")
///         .bind(id)
///         .bind(amount)
///         .execute(&mut *tx)
///         .await?;
///     Ok(())
/// }
///
/// #[serializable_retry(policy = ACCOUNTS)]
/// async fn deposit(tx: &mut PgConnection, id: i64, amount: i64) -> Result<(), sqlx::Error> {
///     sqlx::query("UPDATE accounts SET balance = balance + $2 WHERE id = $1")
///         .bind(id)
///         .bind(amount)
///         .execute(&mut *tx)
///         .await?;
///     Ok(())
/// }
/// ```
///
/// Durations are a number and a unit: `ns`, `us`, `ms`, `s` or `m` (`"250us"`, `"1.5s"`).
///
/// # Semantics
///
/// - Each attempt runs the whole body in a fresh transaction started by one statement
///   (`BEGIN ISOLATION LEVEL SERIALIZABLE`, …). `Ok` commits; `Err` rolls back.
/// - `return` and `?` in the body end the attempt, as they read.
/// - Retried: `40001` and `40P01` from any statement, COMMIT included; the codes in `retry_on`;
///   and, for a pool, an attempt whose connection broke before COMMIT was sent (it did not
///   commit; the next attempt takes a fresh connection). Everything else is returned after one
///   attempt. The SQLSTATE is found through the error's `source()` chain, so `sqlx::Error`,
///   `anyhow::Error` and your own error enums wrapping `sqlx::Error` all work.
/// - Before each retry: ROLLBACK (a failed ROLLBACK is logged and never replaces the original
///   error), then a backoff sleep holding no locks. A call whose first `priority_after` attempts
///   (2 by default) failed waits for the function's running attempts to end, and runs its next
///   attempt with no other attempt of the function beside it (a second at most, between attempts
///   only; see [`PolicyBuilder::priority_after`]).
/// - After `max` attempts or when the time budget is spent, the last error is returned as is.
/// - A connection lost while COMMIT was in flight returns the error detected by
///   [`is_commit_unknown`] (SQLSTATE `40003`), never retried unless `idempotent`.
/// - `Ok` means committed. On PostgreSQL a body that returns `Ok` after ignoring a failed
///   statement's error has an aborted transaction: COMMIT is not sent and the call returns
///   [`TransactionAborted`](error::TransactionAborted) (SQLSTATE `25P02`), retried only when a joined call returned a
///   conflict during the attempt or `retry_on` lists `25P02`. The check is a `SET LOCAL` of a
///   placeholder setting, sent with COMMIT in one query: it costs no round trip.
/// - A tracing span named after the function wraps the call; each retry emits an event with the
///   attempt number, SQLSTATE, the database's message (never its DETAIL, which can quote row
///   data), the conflict kind and delay. With the `metrics` feature the call updates the
///   [`metrics`] counters and histogram, labelled with the function's name.
/// - Called with a transaction that is already open (the outer function's `tx`, or a
///   `&mut sqlx::Transaction`), the function **joins** it: the body runs once, with no BEGIN,
///   COMMIT, ROLLBACK or retry, and its error is returned as is for the outer loop to handle
///   (see [`Joined`](source::Joined)).
/// - Side effects registered with [`after_commit`] run once, after the COMMIT that succeeded.
///
/// # Arguments are given to every attempt
///
/// The body runs once per attempt, so each attempt gets **its own clone** of every by-value
/// argument (a copy for `&T` and `Copy` types) and a fresh reborrow of every `&mut T` and
/// `Option<&mut T>` argument. An argument type that is not `Clone` is a compile error on that
/// argument: pass a reference instead.
///
/// A `&mut T` argument (and `Option<&mut T>`, and `&mut self`) is **restored** to its value from
/// before the call when an attempt fails and is retried, as the database's rows are: a `Vec`
/// that a failed attempt pushed to does not keep those items. This costs one clone per call and
/// needs `T: Clone` (a compile error on the parameter otherwise). Mark an accumulator or a
/// counter of attempts `#[keep]` (`#[keep] out: &mut Vec<T>`, `#[keep] &mut self`) to keep what
/// every attempt wrote; any `T` then works. After the last attempt fails, the argument holds what
/// that attempt left.
///
/// Receivers: `&self`, `self: &Arc<Self>`, `self: Arc<Self>` and `self: Box<Self>` are used by
/// reference in each attempt (moving out of `self` is a borrow error); `self` by value is
/// rejected. Attributes on parameters (`#[cfg(…)]`, `#[allow(…)]`) also apply to each attempt's
/// binding. The transaction parameter keeps its name, so `#[tracing::instrument(skip(tx))]`
/// works above or below this attribute.
///
/// # Trait implementations
///
/// The rewritten signature no longer matches a trait's (E0049). On an `async fn` of a trait
/// impl, write `#[serializable_retry(keep_signature)]`: `tx: &mut PgConnection` stays, and each
/// attempt begins a transaction on the connection the caller passes (or joins the transaction
/// already open on it, as any call does). Under `#[async_trait]` the signature is kept without
/// the flag, so the repository also works behind `dyn Trait`. The attribute does not go on the
/// trait's declaration.
///
/// # MySQL/MariaDB and SQLite
///
/// With the `mysql` / `sqlite` features, `tx: &mut MySqlConnection` and
/// `tx: &mut SqliteConnection` work the same way (callers pass `&MySqlPool` / `&SqlitePool` or a
/// `&mut` connection). What differs:
///
/// | | MySQL/MariaDB | SQLite |
/// |---|---|---|
/// | BEGIN | `SET TRANSACTION ISOLATION LEVEL …; START TRANSACTION [READ ONLY]`, one round trip | `BEGIN IMMEDIATE`; `BEGIN DEFERRED` for `read_only` (not enforced by SQLite) |
/// | retried | deadlock `1213` (`40001`), lock wait timeout `1205` and MariaDB's `1020` (reported as `HY000`) | every `SQLITE_BUSY`/`SQLITE_LOCKED` code (5, 6, 261, 262, 517, 773, …), reported as `40001` |
/// | rejected with [`UnsupportedTxOption`](error::UnsupportedTxOption) | `deferrable` | `deferrable`, any `isolation` but `"serializable"` |
///
/// A MySQL lock wait timeout rolls back only the failed statement; the loop's ROLLBACK before
/// the retry discards the rest of the attempt.
///
/// # The returned future
///
/// It is `Send` when the body is, so it can be given to `tokio::spawn`; a function that calls
/// itself is the exception (the compiler cannot prove the recursive future `Send`, E0275): recurse
/// in a helper returning a boxed `dyn Future + Send` instead. Dropping it at any await point rolls
/// the open transaction back (a ROLLBACK is queued and flushed before the connection is used
/// again), and a pooled connection goes back to the pool; a pooled connection whose BEGIN was
/// still in flight is closed instead, since its state is unknown. A statement in flight is not
/// cancelled (sqlx sends no cancel request): on a held `&mut PgConnection` it runs to its end and
/// the session keeps its locks, idle in transaction, until the connection's next use (see the
/// README beside the advice on dedicated connections).
pub use sqlx_retry_macros::serializable_retry;

pub use sqlx_retry_core::{
    Backoff, ConflictKind, IsolationLevel, Policy, PolicyBuilder, PolicyError, RetryInfo, SqlState,
    TransactionSource, after_commit, is_commit_unknown, transaction, transaction_with,
};

pub use sqlx_retry_core::{error, metrics, source};

#[cfg(feature = "postgres")]
pub use sqlx_retry_core::{Cluster, cluster};

#[cfg(feature = "mock")]
pub use sqlx_retry_core::mock;

#[doc(hidden)]
pub use sqlx_retry_core::__private;
