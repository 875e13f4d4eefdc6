//! The retry loop: begin, run the body, commit; on a conflict roll back, back off and run the
//! whole body again.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use crate::backoff::Delays;
use crate::effects::{self, Registry, Scoped};
use crate::error::{Class, CommitUnknown, classify_conflict, event_message};
use crate::metrics::{self, Outcome};
use crate::source::{BeginTransaction, OpenTransaction, TransactionSource};
use crate::{ConflictKind, Policy, RetryInfo, SqlState};

/// Whether a COMMIT's error is the server's own `40003` statement_completion_unknown (CockroachDB's
/// "result is ambiguous"), as opposed to an error of this crate's that carries the same code.
fn is_completion_unknown(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("40003") && !db.as_error().is::<CommitUnknown>())
}

/// A boxed, `Send` future borrowing for `'a`: what a [`transaction`] body returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The state of one call of the retry loop. The attribute expands to a loop over these steps;
/// [`transaction`] runs the same loop for a closure.
///
/// ```text
/// loop {
///     let Some(mut tx) = attempts.begin(&mut source).await? else { continue };  // sleeps the backoff first
///     let out = attempts.scope(body(tx.conn())).await;  // after_commit() registers with this attempt
///     if let Some(result) = attempts.finish(tx, out, chain).await { return result }  // commit or roll back
/// }
/// ```
///
/// When the source's transaction is [joined](crate::source::Joined) (an annotated function called with
/// an outer function's `tx`, or with a `&mut sqlx::Transaction`), the loop makes exactly one
/// attempt: `finish` always returns `Some(out)` unchanged, sends no COMMIT or ROLLBACK and never
/// sleeps, and the after-commit effects go to the outer attempt.
///
/// With the `metrics` feature each call updates the counters and histogram listed in
/// [`metrics`](crate::metrics), labelled `fn = name`.
pub struct Attempts<'p> {
    policy: &'p Policy,
    name: &'static str,
    attempt: u32,
    reconnects: bool,
    started: Instant,
    delays: Option<Delays>,
    pending: Option<std::time::Duration>,
    /// The current attempt joined an outer transaction.
    joined: bool,
    /// A retryable failure ran out of attempts, backoff or time.
    exhausted: bool,
    /// The current attempt's after-commit effects.
    effects: Option<Arc<Registry>>,
    /// For a joined attempt: the outer attempt's effects, where ours go on success.
    outer_effects: Option<Arc<Registry>>,
}

impl std::fmt::Debug for Attempts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempts")
            .field("name", &self.name)
            .field("attempt", &self.attempt)
            .field("joined", &self.joined)
            .finish_non_exhaustive()
    }
}

/// tokio's timer fires on whole milliseconds, so a sleep can end up to this much later than
/// asked; the time budget counts it so that no sleep ends past the budget.
const TIMER_SLACK: Duration = crate::source::TIMER_TICK;

impl<'p> Attempts<'p> {
    /// A new call of the loop for the function `name` under `policy`. `name` labels the tracing
    /// events, the metrics and [`RetryInfo::name`].
    pub fn new(policy: &'p Policy, name: &'static str) -> Self {
        Attempts {
            policy,
            name,
            attempt: 0,
            reconnects: false,
            started: Instant::now(),
            delays: None,
            pending: None,
            joined: false,
            exhausted: false,
            effects: None,
            outer_effects: None,
        }
    }

    /// The attempts started so far.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether the current attempt joined a transaction that was already open (see
    /// [`Joined`](crate::source::Joined)).
    pub fn is_joined(&self) -> bool {
        self.joined
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
            Ok(tx) => {
                self.joined = tx.is_joined();
                if !self.joined {
                    metrics::attempt(self.name);
                }
                Ok(Some(tx))
            }
            Err(err) => {
                metrics::attempt(self.name);
                let (class, kind) = classify_conflict(&err, &self.policy.retry_on);
                if self.is_retryable(class)
                    && self.schedule_retry(class.sqlstate(), kind, &event_message(&err))
                {
                    Ok(None)
                } else {
                    self.end(if self.exhausted {
                        Outcome::Exhausted
                    } else {
                        Outcome::Error
                    });
                    Err(err)
                }
            }
        }
    }

    /// Runs the attempt's `body` with a fresh after-commit registry installed, so that
    /// [`after_commit`](crate::after_commit) called while the body is polled registers with this
    /// attempt. Call it after [`begin`](Self::begin); [`finish`](Self::finish) then runs or drops
    /// what was registered.
    ///
    /// In a joined attempt the registry is handed to the outer attempt on success; when there is
    /// no outer attempt (a `&mut Transaction` source outside any retried body), no registry is
    /// installed and `after_commit` reports [`NoTransaction`](crate::error::NoTransaction).
    pub fn scope<F: Future>(&mut self, body: F) -> Scoped<F> {
        let registry = if self.joined {
            self.outer_effects = effects::current();
            self.outer_effects
                .as_ref()
                .map(|_| Arc::new(Registry::default()))
        } else {
            Some(Arc::new(Registry::default()))
        };
        self.effects = registry.clone();
        Scoped::new(registry, body)
    }

    /// Ends the attempt: commits when the body returned `Ok`, rolls back otherwise, and decides
    /// whether to run the body again.
    ///
    /// Returns `Some(result)` when the call is over, `None` when the caller should loop. `chain`
    /// exposes the body's error as a `dyn Error` so the SQLSTATE can be found in its source chain.
    ///
    /// - A body error is classified *before* ROLLBACK, and a failed ROLLBACK is logged but never
    ///   replaces it.
    /// - Before COMMIT, [`OpenTransaction::check_not_aborted`]: a transaction the server has
    ///   already aborted (the body ignored a failed statement's error) is rolled back, not
    ///   committed, and the attempt ends with
    ///   [`TransactionAborted`](crate::error::TransactionAborted): retried like a conflict when a joined
    ///   call returned one during the attempt, else classified as `25P02`.
    /// - A COMMIT that fails with a conflict (`40001` at commit under SERIALIZABLE) is retried.
    /// - A COMMIT whose connection broke, or that the server answered with `40003`
    ///   statement_completion_unknown, has an unknown outcome: the commit-unknown error
    ///   ([`is_commit_unknown`](crate::is_commit_unknown)) is returned, and retried only when the
    ///   policy is `idempotent` and the source reconnects (a pool).
    /// - After a successful COMMIT the effects registered with
    ///   [`after_commit`](crate::after_commit) during this attempt run, in order, before
    ///   `Some(Ok(_))` is returned. Any other ending drops them.
    /// - A joined attempt returns `Some(out)` as is: no classification, no retry.
    ///
    /// The future is boxed for the same reason as [`begin`](Self::begin)'s.
    pub fn finish<'a, X, T, E, Chain>(
        &'a mut self,
        tx: X,
        out: Result<T, E>,
        chain: Chain,
    ) -> BoxFuture<'a, Option<Result<T, E>>>
    where
        X: OpenTransaction + 'a,
        T: Send + 'a,
        E: From<sqlx::Error> + Send + 'a,
        Chain: FnOnce(&E) -> Option<&(dyn StdError + 'static)> + Send + 'a,
    {
        Box::pin(self.finish_inner(tx, out, chain))
    }

    async fn finish_inner<X, T, E, Chain>(
        &mut self,
        tx: X,
        out: Result<T, E>,
        chain: Chain,
    ) -> Option<Result<T, E>>
    where
        X: OpenTransaction,
        E: From<sqlx::Error>,
        Chain: FnOnce(&E) -> Option<&(dyn StdError + 'static)>,
    {
        let effects = self.effects.take();
        if self.joined {
            return Some(self.finish_joined(tx, out, effects, chain).await);
        }
        let mut tx = tx;
        if out.is_ok()
            && let Err(err) = tx.check_not_aborted().await
        {
            // COMMIT was not sent: the attempt ends like one whose body failed with `err`.
            let (class, kind) = self.classify_end(&err, effects.as_deref());
            if let Err(rollback) = tx.rollback().await {
                tracing::warn!(
                    attempt = self.attempt,
                    error = %rollback,
                    "ROLLBACK failed; returning or retrying on the error that caused it"
                );
            }
            return if self.is_retryable(class)
                && self.schedule_retry(class.sqlstate(), kind, &event_message(&err))
            {
                None
            } else {
                self.end(if self.exhausted {
                    Outcome::Exhausted
                } else {
                    Outcome::Error
                });
                Some(Err(E::from(err)))
            };
        }
        match out {
            Ok(value) => match tx.commit().await {
                Ok(()) => {
                    if let Some(effects) = effects {
                        let effects = effects.take();
                        if !effects.is_empty() {
                            tracing::debug!(count = effects.len(), "running after-commit effects");
                        }
                        for effect in effects {
                            effect.await;
                        }
                    }
                    self.end(Outcome::Committed);
                    Some(Ok(value))
                }
                Err(err) => match self.classify_end(&err, effects.as_deref()) {
                    (Class::Conflict(code), kind) => {
                        if self.schedule_retry(Some(code), kind, &event_message(&err)) {
                            None
                        } else {
                            self.end(Outcome::Exhausted);
                            Some(Err(E::from(err)))
                        }
                    }
                    (Class::ConnectionLost, _) => self.commit_unknown(err),
                    (Class::Permanent, _) if is_completion_unknown(&err) => {
                        self.commit_unknown(err)
                    }
                    (Class::Permanent, _) => {
                        self.end(Outcome::Error);
                        Some(Err(E::from(err)))
                    }
                },
            },
            Err(err) => {
                let cause = chain(&err);
                let (class, kind) = match cause {
                    Some(e) => classify_conflict(e, &self.policy.retry_on),
                    None => (Class::Permanent, None),
                };
                // The retry event's text is read now: the chain borrows `err` and is not `Send`
                // across the ROLLBACK. Without a chain the class is `Permanent`.
                let message = cause
                    .filter(|_| self.is_retryable(class))
                    .map(event_message);
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(
                        attempt = self.attempt,
                        error = %rollback,
                        "ROLLBACK failed; returning or retrying on the error that caused it"
                    );
                }
                if let Some(message) = message
                    && self.schedule_retry(class.sqlstate(), kind, &message)
                {
                    None
                } else {
                    self.end(if self.exhausted {
                        Outcome::Exhausted
                    } else {
                        Outcome::Error
                    });
                    Some(Err(err))
                }
            }
        }
    }

    /// COMMIT ended without an outcome: the connection broke while it was in flight, or the
    /// server answered `40003`. The commit-unknown error is returned, or retried when the policy
    /// is `idempotent` and the source gets a fresh connection for the next attempt (the same rule
    /// for both causes, so that one policy means one behaviour whichever way the outcome was
    /// lost).
    fn commit_unknown<T, E: From<sqlx::Error>>(
        &mut self,
        err: sqlx::Error,
    ) -> Option<Result<T, E>> {
        tracing::warn!(
            attempt = self.attempt,
            error = %err,
            "COMMIT ended without an outcome; the transaction may or may not have committed"
        );
        metrics::commit_unknown(self.name);
        let unknown = CommitUnknown::into_sqlx_error(err);
        if self.policy.idempotent
            && self.reconnects
            && self.schedule_retry(None, None, &event_message(&unknown))
        {
            None
        } else {
            self.end(if self.exhausted {
                Outcome::Exhausted
            } else {
                Outcome::CommitUnknown
            });
            Some(Err(E::from(unknown)))
        }
    }

    /// Classifies the error that ended an attempt at its end (the check before COMMIT, or
    /// COMMIT): a [`TransactionAborted`](crate::error::TransactionAborted) whose cause is known, a
    /// conflict a joined call returned during the attempt, is retried like that conflict.
    fn classify_end(
        &self,
        err: &sqlx::Error,
        effects: Option<&Registry>,
    ) -> (Class, Option<ConflictKind>) {
        if crate::aborted::is_aborted(err)
            && let Some((code, kind)) = effects.and_then(Registry::joined_conflict)
        {
            return (Class::Conflict(code), kind);
        }
        classify_conflict(err, &self.policy.retry_on)
    }

    /// A joined attempt ends the call with the body's result: the outer loop owns the
    /// transaction, its COMMIT and its retries. A conflict it returns is recorded with the outer
    /// attempt, whose COMMIT will find the transaction aborted if the outer body ignored it.
    async fn finish_joined<X, T, E, C>(
        &mut self,
        tx: X,
        out: Result<T, E>,
        effects: Option<Arc<Registry>>,
        chain: C,
    ) -> Result<T, E>
    where
        X: OpenTransaction,
        E: From<sqlx::Error>,
        C: FnOnce(&E) -> Option<&(dyn StdError + 'static)>,
    {
        let result = match out {
            Ok(value) => match tx.commit().await {
                Ok(()) => {
                    if let (Some(ours), Some(outer)) = (effects, self.outer_effects.take()) {
                        ours.move_to(&outer);
                    }
                    Ok(value)
                }
                Err(err) => Err(E::from(err)),
            },
            Err(err) => {
                if let (Some(outer), Some(e)) = (self.outer_effects.take(), chain(&err))
                    && let (Class::Conflict(code), kind) =
                        classify_conflict(e, &self.policy.retry_on)
                {
                    outer.record_conflict(code, kind);
                }
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(error = %rollback, "ending a joined transaction failed");
                }
                Err(err)
            }
        };
        self.end(Outcome::Joined);
        result
    }

    /// Records the end of the call.
    fn end(&self, outcome: Outcome) {
        metrics::call(self.name, outcome, self.started.elapsed());
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
    ///
    /// The event names the cause by its SQLSTATE, `message` (from [`event_message`], in field
    /// `error`) and the conflict kind, at every phase alike; never by the error's `Debug`, which
    /// carries PostgreSQL's DETAIL and with it row data ("Key (email)=(…) already exists").
    fn schedule_retry(
        &mut self,
        sqlstate: Option<SqlState>,
        kind: Option<ConflictKind>,
        message: &str,
    ) -> bool {
        let code = sqlstate.as_ref().map(SqlState::as_str).unwrap_or("");
        if self.attempt >= self.policy.max_attempts {
            tracing::warn!(
                attempts = self.attempt,
                sqlstate = code,
                "giving up: all {} attempts failed",
                self.policy.max_attempts
            );
            return self.give_up();
        }
        let policy = self.policy;
        let delays = self
            .delays
            .get_or_insert_with(|| Delays::new(policy.backoff.clone(), fastrand::Rng::new()));
        let Some(delay) = delays.next() else {
            tracing::warn!(
                attempts = self.attempt,
                sqlstate = code,
                "giving up: backoff ended"
            );
            return self.give_up();
        };
        if let Some(budget) = policy.budget
            && self
                .started
                .elapsed()
                .saturating_add(delay)
                .saturating_add(TIMER_SLACK)
                >= budget
        {
            tracing::warn!(
                attempts = self.attempt,
                sqlstate = code,
                budget_ms = budget.as_millis() as u64,
                "giving up: time budget spent"
            );
            return self.give_up();
        }
        tracing::info!(
            attempt = self.attempt,
            sqlstate = code,
            conflict = kind.as_ref().map_or("", ConflictKind::as_str),
            delay_ms = delay.as_secs_f64() * 1e3,
            error = message,
            "retrying transaction"
        );
        metrics::retry(self.name, sqlstate.as_ref());
        if let Some(hook) = &policy.on_retry {
            hook(&RetryInfo {
                name: self.name,
                attempt: self.attempt,
                sqlstate,
                conflict: kind,
                delay,
            });
        }
        self.pending = Some(delay);
        true
    }

    /// A retryable failure that gets no further attempt.
    fn give_up(&mut self) -> bool {
        self.exhausted = true;
        metrics::exhausted(self.name);
        false
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
pub async fn transaction<S, Conn, T, E, F>(source: S, policy: &Policy, body: F) -> Result<T, E>
where
    S: TransactionSource<Conn>,
    Conn: ?Sized,
    T: Send,
    E: StdError + From<sqlx::Error> + Send + 'static,
    F: for<'c> FnMut(&'c mut Conn) -> BoxFuture<'c, Result<T, E>>,
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
pub async fn transaction_with<S, Conn, T, E, F, Chain>(
    mut source: S,
    policy: &Policy,
    chain: Chain,
    mut body: F,
) -> Result<T, E>
where
    S: TransactionSource<Conn>,
    Conn: ?Sized,
    T: Send,
    E: From<sqlx::Error> + Send,
    F: for<'c> FnMut(&'c mut Conn) -> BoxFuture<'c, Result<T, E>>,
    Chain: Fn(&E) -> Option<&(dyn StdError + 'static)> + Sync,
{
    let span = tracing::info_span!("transaction");
    async move {
        let mut attempts = Attempts::new(policy, "transaction");
        loop {
            let Some(mut tx) = attempts.begin(&mut source).await? else {
                continue;
            };
            let out = attempts.scope(body(tx.conn())).await;
            if let Some(result) = attempts.finish(tx, out, &chain).await {
                return result;
            }
        }
    }
    .instrument(span)
    .await
}
