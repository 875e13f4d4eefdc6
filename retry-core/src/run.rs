//! The retry loop: begin, run the body, commit; on a conflict roll back, back off and run the
//! whole body again.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;

use tokio::time::Instant;
use tracing::Instrument;

use crate::backoff::Delays;
use crate::classify::{Class, CommitUnknown, classify, classify_sqlx};
use crate::{BeginTransaction, OpenTransaction, Policy, RetryInfo, SqlState, TransactionSource};

/// A boxed, `Send` future borrowing for `'a`: what a [`transaction`] body returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The state of one call of the retry loop. The attribute expands to a loop over these steps;
/// [`transaction`] runs the same loop for a closure.
///
/// ```text
/// loop {
///     let Some(tx) = attempts.begin(&mut source).await? else { continue };  // sleeps the backoff first
///     let out = body(tx.conn()).await;
///     if let Some(result) = attempts.finish(tx, out, chain).await { return result }  // commit or roll back
/// }
/// ```
pub struct Attempts<'p> {
    policy: &'p Policy,
    name: &'static str,
    attempt: u32,
    reconnects: bool,
    started: Instant,
    delays: Option<Delays>,
    pending: Option<std::time::Duration>,
}

impl<'p> Attempts<'p> {
    /// A new call of the loop for the function `name` under `policy`.
    pub fn new(policy: &'p Policy, name: &'static str) -> Self {
        Attempts {
            policy,
            name,
            attempt: 0,
            reconnects: false,
            started: Instant::now(),
            delays: None,
            pending: None,
        }
    }

    /// The attempts started so far.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Sleeps the backoff scheduled by the previous attempt, then starts the next attempt's
    /// transaction.
    ///
    /// `Ok(None)` means BEGIN failed in a way worth another attempt (the connection broke and the
    /// source can supply a fresh one); the caller loops. `Err` is final.
    ///
    /// The future is boxed: a caller holding this generic future unboxed trips the compiler's
    /// higher-ranked `Send` check when the caller's own future is spawned. The allocation is
    /// negligible next to the BEGIN round trip.
    pub fn begin<'a, 's, S: BeginTransaction<'s>>(
        &'a mut self,
        source: &'s mut S,
    ) -> BoxFuture<'a, Result<Option<S::Tx>, sqlx::Error>>
    where
        's: 'a,
    {
        Box::pin(self.begin_inner(source))
    }

    async fn begin_inner<'s, S: BeginTransaction<'s>>(
        &mut self,
        source: &'s mut S,
    ) -> Result<Option<S::Tx>, sqlx::Error> {
        if let Some(delay) = self.pending.take() {
            source.sleep(delay).await;
        }
        self.attempt += 1;
        self.reconnects = source.reconnects();
        match source.begin(self.policy.options).await {
            Ok(tx) => Ok(Some(tx)),
            Err(err) => {
                let class = classify_sqlx(&err, &self.policy.retry_on);
                if self.is_retryable(class) && self.schedule_retry(class.sqlstate(), &err) {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Ends the attempt: commits when the body returned `Ok`, rolls back otherwise, and decides
    /// whether to run the body again.
    ///
    /// Returns `Some(result)` when the call is over, `None` when the caller should loop. `chain`
    /// exposes the body's error as a `dyn Error` so the SQLSTATE can be found in its source chain.
    ///
    /// - A body error is classified *before* ROLLBACK, and a failed ROLLBACK is logged but never
    ///   replaces it.
    /// - A COMMIT that fails with a conflict (`40001` at commit under SERIALIZABLE) is retried.
    /// - A COMMIT whose connection broke has an unknown outcome: the commit-unknown error
    ///   ([`is_commit_unknown`](crate::is_commit_unknown)) is returned, and retried only when the
    ///   policy is `idempotent`.
    ///
    /// The future is boxed for the same reason as [`begin`](Self::begin)'s.
    pub fn finish<'a, X, T, E, C>(
        &'a mut self,
        tx: X,
        out: Result<T, E>,
        chain: C,
    ) -> BoxFuture<'a, Option<Result<T, E>>>
    where
        X: OpenTransaction + 'a,
        T: Send + 'a,
        E: From<sqlx::Error> + Send + 'a,
        C: FnOnce(&E) -> Option<&(dyn StdError + 'static)> + Send + 'a,
    {
        Box::pin(self.finish_inner(tx, out, chain))
    }

    async fn finish_inner<X, T, E, C>(
        &mut self,
        tx: X,
        out: Result<T, E>,
        chain: C,
    ) -> Option<Result<T, E>>
    where
        X: OpenTransaction,
        E: From<sqlx::Error>,
        C: FnOnce(&E) -> Option<&(dyn StdError + 'static)>,
    {
        match out {
            Ok(value) => match tx.commit().await {
                Ok(()) => Some(Ok(value)),
                Err(err) => match classify_sqlx(&err, &self.policy.retry_on) {
                    Class::Conflict(code) => {
                        if self.schedule_retry(Some(code), &err) {
                            None
                        } else {
                            Some(Err(E::from(err)))
                        }
                    }
                    Class::ConnectionLost => {
                        tracing::warn!(
                            attempt = self.attempt,
                            error = %err,
                            "connection lost while COMMIT was in flight; the outcome is unknown"
                        );
                        let unknown = CommitUnknown::into_sqlx_error(err);
                        if self.policy.idempotent
                            && self.reconnects
                            && self.schedule_retry(None, &unknown)
                        {
                            None
                        } else {
                            Some(Err(E::from(unknown)))
                        }
                    }
                    Class::Permanent => Some(Err(E::from(err))),
                },
            },
            Err(err) => {
                let class = match chain(&err) {
                    Some(e) => classify(e, &self.policy.retry_on),
                    None => Class::Permanent,
                };
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(
                        attempt = self.attempt,
                        error = %rollback,
                        "ROLLBACK failed; returning or retrying on the error that caused it"
                    );
                }
                if self.is_retryable(class) && self.schedule_retry(class.sqlstate(), &class) {
                    None
                } else {
                    Some(Err(err))
                }
            }
        }
    }

    fn is_retryable(&self, class: Class) -> bool {
        match class {
            Class::Conflict(_) => true,
            Class::ConnectionLost => self.reconnects,
            Class::Permanent => false,
        }
    }

    /// Decides whether another attempt fits in the policy; if so records the delay to sleep
    /// before it and reports the retry.
    fn schedule_retry(&mut self, sqlstate: Option<SqlState>, cause: &dyn std::fmt::Debug) -> bool {
        let code = sqlstate.as_ref().map(SqlState::as_str).unwrap_or("");
        if self.attempt >= self.policy.max_attempts {
            tracing::warn!(
                attempts = self.attempt,
                sqlstate = code,
                "giving up: all {} attempts failed",
                self.policy.max_attempts
            );
            return false;
        }
        let policy = self.policy;
        let delays = self
            .delays
            .get_or_insert_with(|| Delays::new(policy.backoff.clone(), fastrand::Rng::new()));
        let Some(delay) = delays.next_delay() else {
            tracing::warn!(
                attempts = self.attempt,
                sqlstate = code,
                "giving up: backoff ended"
            );
            return false;
        };
        if let Some(budget) = policy.timeout
            && self.started.elapsed().saturating_add(delay) >= budget
        {
            tracing::warn!(
                attempts = self.attempt,
                sqlstate = code,
                budget_ms = budget.as_millis() as u64,
                "giving up: time budget spent"
            );
            return false;
        }
        tracing::info!(
            attempt = self.attempt,
            sqlstate = code,
            delay_ms = delay.as_secs_f64() * 1e3,
            cause = ?cause,
            "retrying transaction"
        );
        if let Some(hook) = &policy.on_retry {
            hook(&RetryInfo {
                name: self.name,
                attempt: self.attempt,
                sqlstate,
                delay,
            });
        }
        self.pending = Some(delay);
        true
    }
}

/// Runs `body` in a transaction from `source`, retrying the whole body under `policy`: the
/// closure form of `#[serializable_retry]`, for closures and code that cannot use an attribute.
///
/// The body receives the transaction's connection and returns a boxed future. It runs once per
/// attempt, so move owned copies of what it needs into each future.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// use sqlx_retry_core::{transaction, Policy};
///
/// let policy = Policy::builder().max_attempts(10).build().expect("valid policy");
/// let (from, to) = (1_i64, 2_i64);
/// let moved: u64 = transaction(&pool, &policy, |tx| {
///     Box::pin(async move {
///         let debit = sqlx::query("UPDATE accounts SET balance = balance - 10 WHERE id = $1")
///             .bind(from)
///             .execute(&mut *tx)
///             .await?;
///         sqlx::query("UPDATE accounts SET balance = balance + 10 WHERE id = $1")
///             .bind(to)
///             .execute(&mut *tx)
///             .await?;
///         Ok::<_, sqlx::Error>(debit.rows_affected())
///     })
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn transaction<S, C, T, E, F>(source: S, policy: &Policy, body: F) -> Result<T, E>
where
    S: TransactionSource<C>,
    C: ?Sized,
    T: Send,
    E: StdError + From<sqlx::Error> + Send + 'static,
    F: for<'c> FnMut(&'c mut C) -> BoxFuture<'c, Result<T, E>>,
{
    transaction_with(
        source,
        policy,
        |e: &E| Some(e as &(dyn StdError + 'static)),
        body,
    )
    .await
}

/// [`transaction`] for error types that are not `std::error::Error` themselves, such as
/// `anyhow::Error`: `chain` exposes the error as a `dyn Error` whose source chain is searched for
/// the SQLSTATE.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> anyhow::Result<()> {
/// use sqlx_retry_core::{transaction_with, Policy};
///
/// let n: i64 = transaction_with(&pool, &Policy::default(), |e: &anyhow::Error| Some(e.as_ref()), |tx| {
///     Box::pin(async move {
///         Ok(sqlx::query_scalar("SELECT count(*) FROM accounts").fetch_one(&mut *tx).await?)
///     })
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn transaction_with<S, Conn, T, E, F, C>(
    mut source: S,
    policy: &Policy,
    chain: C,
    mut body: F,
) -> Result<T, E>
where
    S: TransactionSource<Conn>,
    Conn: ?Sized,
    T: Send,
    E: From<sqlx::Error> + Send,
    F: for<'c> FnMut(&'c mut Conn) -> BoxFuture<'c, Result<T, E>>,
    C: Fn(&E) -> Option<&(dyn StdError + 'static)> + Sync,
{
    let span = tracing::info_span!("transaction");
    async move {
        let mut attempts = Attempts::new(policy, "transaction");
        loop {
            let Some(mut tx) = attempts.begin(&mut source).await? else {
                continue;
            };
            let out = body(tx.conn()).await;
            if let Some(result) = attempts.finish(tx, out, &chain).await {
                return result;
            }
        }
    }
    .instrument(span)
    .await
}
