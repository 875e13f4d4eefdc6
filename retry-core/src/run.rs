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
use crate::fairness::{Turn, WAIT_LIMIT};
use crate::metrics::{self, Outcome};
use crate::source::{BeginTransaction, OpenTransaction, Savepoint, TransactionSource};
use crate::{ConflictKind, Policy, RetryInfo, SqlState};

/// Whether a COMMIT's error is the server's own `40003` statement_completion_unknown (CockroachDB's
/// "result is ambiguous"), as opposed to an error of this crate's that carries the same code.
fn is_completion_unknown(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("40003") && !db.as_error().is::<CommitUnknown>())
}

/// ROLLBACK, whose failure is logged and never replaces the error that caused it.
async fn rollback_quietly<X: OpenTransaction>(tx: X, attempt: u32) {
    log_rollback(tx.rollback().await, attempt);
}

/// Ends the transaction of an attempt that failed with an error of class `class`, as
/// [`rollback_quietly`] does; after a serialization failure without waiting for the ROLLBACK's
/// answer (see [`OpenTransaction::rollback_before_retry`]).
async fn end_failed<X: OpenTransaction>(tx: X, class: Class, attempt: u32) {
    let ended = match class {
        Class::Conflict(SqlState::SERIALIZATION_FAILURE) => tx.rollback_before_retry().await,
        _ => tx.rollback().await,
    };
    log_rollback(ended, attempt);
}

/// Logs a failed ROLLBACK, whose error never replaces the one that caused it.
fn log_rollback(ended: Result<(), sqlx::Error>, attempt: u32) {
    if let Err(rollback) = ended {
        tracing::warn!(
            attempt,
            error = %rollback,
            "ROLLBACK failed; returning or retrying on the error that caused it"
        );
    }
}

/// The step after an attempt that ended without the savepoint protocol's rerun.
fn next<X, T, E>(ended: Option<Result<T, E>>) -> Next<X, T, E> {
    match ended {
        Some(result) => Next::Return(result),
        None => Next::Begin,
    }
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
/// Under a policy's savepoint protocol ([`PolicyBuilder::savepoint`](crate::PolicyBuilder::savepoint))
/// the body may run again on the same transaction: end the attempt with
/// [`end_attempt`](Self::end_attempt), whose [`Next::Rerun`] hands the transaction back (the
/// attribute and [`transaction`] do).
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
    /// The delays before reruns inside the savepoint, apart from the restarts' `delays`.
    savepoint_delays: Option<Delays>,
    pending: Option<std::time::Duration>,
    /// The current attempt joined an outer transaction.
    joined: bool,
    /// A retryable failure ran out of attempts, backoff or time.
    exhausted: bool,
    /// The current attempt's after-commit effects.
    effects: Option<Arc<Registry>>,
    /// For a joined attempt: the outer attempt's effects, where ours go on success.
    outer_effects: Option<Arc<Registry>>,
    /// The current transaction runs the savepoint protocol: its savepoint is set.
    in_savepoint: bool,
    /// The current run of the body is a rerun inside the savepoint.
    reran: bool,
    /// The current attempt's turn under the policy's priority turns (see
    /// [`PolicyBuilder::priority_after`](crate::PolicyBuilder::priority_after)).
    turn: Option<Turn>,
}

/// What the caller does after [`Attempts::end_attempt`].
#[derive(Debug)]
pub enum Next<X, T, E> {
    /// The call is over: return this.
    Return(Result<T, E>),
    /// Start the next attempt with [`Attempts::begin`] (which sleeps its backoff first).
    Begin,
    /// Savepoint protocol: the transaction was rolled back to its savepoint (and the policy's
    /// [`savepoint_backoff`](crate::PolicyBuilder::savepoint_backoff) slept); run the body again
    /// on it, at once, in the same transaction.
    Rerun(X),
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
            savepoint_delays: None,
            pending: None,
            joined: false,
            exhausted: false,
            effects: None,
            outer_effects: None,
            in_savepoint: false,
            reran: false,
            turn: None,
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
        self.turn = None;
        if let Some(delay) = self.pending.take() {
            source.sleep(delay).await;
        }
        if let Some(priority) = &self.policy.priority
            && !source.joins()
            && effects::current().is_none()
        {
            let limit = match self.policy.budget {
                Some(budget) => budget
                    .saturating_sub(self.started.elapsed())
                    .min(WAIT_LIMIT),
                None => WAIT_LIMIT,
            };
            self.turn = priority.turn(self.attempt, limit).await;
        }
        self.attempt += 1;
        self.reconnects = source.reconnects();
        self.in_savepoint = false;
        self.reran = false;
        match source.begin(self.policy.options).await {
            Ok(mut tx) => {
                self.joined = tx.is_joined();
                if !self.joined {
                    metrics::attempt(self.name);
                }
                let policy = self.policy;
                if let (Some(name), false) = (policy.savepoint.as_deref(), self.joined) {
                    if let Err(err) = tx.savepoint(Savepoint::Create(name)).await {
                        // Ends like a failed BEGIN, once the transaction is rolled back.
                        let (class, kind) = classify_conflict(&err, &policy.retry_on);
                        if let Err(rollback) = tx.rollback().await {
                            tracing::warn!(error = %rollback, "ROLLBACK after a failed SAVEPOINT failed");
                        }
                        return if self.is_retryable(class)
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
                        };
                    }
                    self.in_savepoint = true;
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
    ///
    /// Under a policy's savepoint protocol this runs `RELEASE SAVEPOINT` before COMMIT, but
    /// never reruns the body in place (it cannot hand the transaction back): a retryable error
    /// restarts the transaction. [`end_attempt`](Self::end_attempt) does both.
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
        Box::pin(async move {
            match self.finish_inner(tx, out, chain, false).await {
                Next::Return(result) => Some(result),
                Next::Begin | Next::Rerun(_) => None,
            }
        })
    }

    /// [`finish`](Self::finish), and under a policy's savepoint protocol
    /// ([`PolicyBuilder::savepoint`](crate::PolicyBuilder::savepoint)) the rerun in place: on a
    /// retryable error it may roll the transaction back to its savepoint and hand it back as
    /// [`Next::Rerun`], for the caller to run the body on again without a new BEGIN.
    ///
    /// ```text
    /// loop {
    ///     let Some(mut tx) = attempts.begin(&mut source).await? else { continue };
    ///     loop {
    ///         let out = attempts.scope(body(tx.conn())).await;
    ///         match attempts.end_attempt(tx, out, chain).await {
    ///             Next::Return(result) => return result,
    ///             Next::Begin => break,
    ///             Next::Rerun(again) => tx = again,
    ///         }
    ///     }
    /// }
    /// ```
    pub fn end_attempt<'a, X, T, E, Chain>(
        &'a mut self,
        tx: X,
        out: Result<T, E>,
        chain: Chain,
    ) -> BoxFuture<'a, Next<X, T, E>>
    where
        X: OpenTransaction + 'a,
        T: Send + 'a,
        E: From<sqlx::Error> + Send + 'a,
        Chain: FnOnce(&E) -> Option<&(dyn StdError + 'static)> + Send + 'a,
    {
        Box::pin(self.finish_inner(tx, out, chain, true))
    }

    async fn finish_inner<X, T, E, Chain>(
        &mut self,
        tx: X,
        out: Result<T, E>,
        chain: Chain,
        may_rerun: bool,
    ) -> Next<X, T, E>
    where
        X: OpenTransaction,
        E: From<sqlx::Error>,
        Chain: FnOnce(&E) -> Option<&(dyn StdError + 'static)>,
    {
        let effects = self.effects.take();
        if self.joined {
            return Next::Return(self.finish_joined(tx, out, effects, chain).await);
        }
        if self.in_savepoint {
            return self
                .finish_savepoint(tx, out, chain, effects, may_rerun)
                .await;
        }
        next(self.finish_plain(tx, out, chain, effects).await)
    }

    /// The end of an attempt without the savepoint protocol.
    async fn finish_plain<X, T, E, Chain>(
        &mut self,
        tx: X,
        out: Result<T, E>,
        chain: Chain,
        effects: Option<Arc<Registry>>,
    ) -> Option<Result<T, E>>
    where
        X: OpenTransaction,
        E: From<sqlx::Error>,
        Chain: FnOnce(&E) -> Option<&(dyn StdError + 'static)>,
    {
        let mut tx = tx;
        if out.is_ok()
            && let Err(err) = tx.check_not_aborted().await
        {
            // COMMIT was not sent: the attempt ends like one whose body failed with `err`.
            let (class, kind) = self.classify_end(&err, effects.as_deref());
            end_failed(tx, class, self.attempt).await;
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
            Ok(value) => {
                let committed = tx.commit().await;
                self.after_commit(committed, value, effects).await
            }
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
                end_failed(tx, class, self.attempt).await;
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

    /// What COMMIT's result means for the call: on success the after-commit effects run and the
    /// call returns `value`; a conflict restarts; a lost outcome is commit-unknown.
    async fn after_commit<T, E: From<sqlx::Error>>(
        &mut self,
        committed: Result<(), sqlx::Error>,
        value: T,
        effects: Option<Arc<Registry>>,
    ) -> Option<Result<T, E>> {
        // The transaction is over: the effects run without holding up the policy's other calls.
        self.turn = None;
        match committed {
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
                (Class::Permanent, _) if is_completion_unknown(&err) => self.commit_unknown(err),
                (Class::Permanent, _) => {
                    self.end(Outcome::Error);
                    Some(Err(E::from(err)))
                }
            },
        }
    }

    /// The end of an attempt under the savepoint protocol: `RELEASE SAVEPOINT` then COMMIT on
    /// success; on a retryable error a rerun in place or a full restart (see
    /// [`rerun_or_restart`](Self::rerun_or_restart)).
    ///
    /// `RELEASE` stands in for the check before COMMIT: in an aborted transaction it fails with
    /// `25P02`, reported as [`TransactionAborted`](crate::error::TransactionAborted). CockroachDB
    /// commits at `RELEASE SAVEPOINT cockroach_restart`, so a connection lost during it, or a
    /// `40003` in answer, is the commit-unknown outcome, as at COMMIT.
    async fn finish_savepoint<X, T, E, Chain>(
        &mut self,
        mut tx: X,
        out: Result<T, E>,
        chain: Chain,
        effects: Option<Arc<Registry>>,
        may_rerun: bool,
    ) -> Next<X, T, E>
    where
        X: OpenTransaction,
        E: From<sqlx::Error>,
        Chain: FnOnce(&E) -> Option<&(dyn StdError + 'static)>,
    {
        let name = self.policy.savepoint.as_deref().unwrap_or_default();
        match out {
            Ok(value) => match tx.savepoint(Savepoint::Release(name)).await {
                Ok(()) => {
                    let committed = tx.commit_released().await;
                    next(self.after_commit(committed, value, effects).await)
                }
                Err(err) => {
                    let err = if crate::aborted::is_in_failed_transaction(&err) {
                        crate::aborted::TransactionAborted::sqlx(Some(err))
                    } else {
                        err
                    };
                    let (class, kind) = self.classify_end(&err, effects.as_deref());
                    if let Class::Conflict(code) = class {
                        let message = event_message(&err);
                        return self
                            .rerun_or_restart(tx, code, kind, &message, may_rerun, E::from(err))
                            .await;
                    }
                    rollback_quietly(tx, self.attempt).await;
                    if class == Class::ConnectionLost || is_completion_unknown(&err) {
                        return next(self.commit_unknown(err));
                    }
                    self.end(Outcome::Error);
                    Next::Return(Err(E::from(err)))
                }
            },
            Err(err) => {
                let cause = chain(&err);
                let (class, kind) = match cause {
                    Some(e) => classify_conflict(e, &self.policy.retry_on),
                    None => (Class::Permanent, None),
                };
                let message = cause
                    .filter(|_| self.is_retryable(class))
                    .map(event_message);
                match (class, message) {
                    (Class::Conflict(code), Some(message)) => {
                        self.rerun_or_restart(tx, code, kind, &message, may_rerun, err)
                            .await
                    }
                    (_, message) => {
                        rollback_quietly(tx, self.attempt).await;
                        if let Some(message) = message
                            && self.schedule_retry(class.sqlstate(), kind, &message)
                        {
                            Next::Begin
                        } else {
                            self.end(if self.exhausted {
                                Outcome::Exhausted
                            } else {
                                Outcome::Error
                            });
                            Next::Return(Err(err))
                        }
                    }
                }
            }
        }
    }

    /// A conflict under the savepoint protocol. The first in a transaction is rerun in place:
    /// `ROLLBACK TO SAVEPOINT`, the policy's savepoint backoff (none by default: the
    /// transaction stays open, and on CockroachDB keeps its place in line, while it waits), the
    /// body again. A conflict in that rerun, a failed `ROLLBACK TO SAVEPOINT`, or a custom
    /// savepoint backoff that has ended, restarts the transaction with ROLLBACK and the backoff:
    /// a PostgreSQL transaction chosen as a serialization failure's victim stays doomed after
    /// `ROLLBACK TO SAVEPOINT`, and must not spin there.
    async fn rerun_or_restart<X: OpenTransaction, T, E>(
        &mut self,
        mut tx: X,
        code: SqlState,
        kind: Option<ConflictKind>,
        message: &str,
        may_rerun: bool,
        err: E,
    ) -> Next<X, T, E> {
        let name = self.policy.savepoint.as_deref().unwrap_or_default();
        let in_place = if may_rerun && !self.reran {
            self.next_savepoint_delay()
        } else {
            None
        };
        if let Some(delay) = in_place {
            match tx.savepoint(Savepoint::RollbackTo(name)).await {
                Ok(()) => {
                    return if self.schedule(Some(code), kind, message, Some(delay)) {
                        if !delay.is_zero() {
                            tx.sleep(delay).await;
                        }
                        self.reran = true;
                        self.attempt += 1;
                        metrics::attempt(self.name);
                        Next::Rerun(tx)
                    } else {
                        rollback_quietly(tx, self.attempt).await;
                        self.end(Outcome::Exhausted);
                        Next::Return(Err(err))
                    };
                }
                Err(failed) => tracing::warn!(
                    attempt = self.attempt,
                    error = %failed,
                    "ROLLBACK TO SAVEPOINT failed; restarting the transaction"
                ),
            }
        }
        rollback_quietly(tx, self.attempt).await;
        if self.schedule_retry(Some(code), kind, message) {
            Next::Begin
        } else {
            self.end(Outcome::Exhausted);
            Next::Return(Err(err))
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

    /// Records the end of the call, and gives its turn back.
    fn end(&mut self, outcome: Outcome) {
        self.turn = None;
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
        self.schedule(sqlstate, kind, message, None)
    }

    /// The delay before the next rerun inside the savepoint, from the policy's savepoint
    /// backoff; `None` when a custom sequence has ended (the loop then restarts instead).
    fn next_savepoint_delay(&mut self) -> Option<Duration> {
        let backoff = &self.policy.savepoint_backoff;
        self.savepoint_delays
            .get_or_insert_with(|| Delays::new(backoff.clone(), fastrand::Rng::new()))
            .next()
    }

    /// [`schedule_retry`](Self::schedule_retry), or for a rerun inside the savepoint
    /// (`in_place`: its delay, already drawn from the savepoint backoff) the same checks and
    /// reports with that delay, which the caller sleeps, and no step of the main backoff.
    fn schedule(
        &mut self,
        sqlstate: Option<SqlState>,
        kind: Option<ConflictKind>,
        message: &str,
        in_place: Option<Duration>,
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
        let delays = self.delays.get_or_insert_with(|| {
            Delays::after_attempt(
                policy.backoff.clone(),
                fastrand::Rng::new(),
                self.started.into_std(),
            )
        });
        let next_delay = match in_place {
            Some(delay) => Some(delay),
            None => delays.next(),
        };
        let Some(delay) = next_delay else {
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
            in_place = in_place.is_some(),
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
        if in_place.is_none() {
            self.pending = Some(delay);
            self.turn = None;
        }
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
            loop {
                let out = attempts.scope(body(tx.conn())).await;
                match attempts.end_attempt(tx, out, &chain).await {
                    Next::Return(result) => return result,
                    Next::Begin => break,
                    Next::Rerun(again) => tx = again,
                }
            }
        }
    }
    .instrument(span)
    .await
}
