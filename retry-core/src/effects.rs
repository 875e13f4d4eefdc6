//! After-commit effects: side effects that run once, after the COMMIT that succeeded.
//!
//! The body of a retried transaction runs once **per attempt**. Whatever it does outside the
//! database is not rolled back with the transaction: an email sent, a message published or a
//! cache entry written in attempt 1 stays sent, published or written when attempt 1 is rolled
//! back on a `40001`, and attempt 2 does it again. Even the last attempt can fail at COMMIT.
//! [`after_commit`] registers such an effect with the current attempt instead; the retry loop
//! runs it after that attempt's COMMIT succeeded and drops it when the attempt rolled back or its
//! COMMIT failed or had an unknown outcome.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use crate::{ConflictKind, SqlState};

/// A registered effect.
pub(crate) type Effect = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The effects registered by one attempt, and the first conflict a joined call of the attempt
/// returned (the cause of the abort when the body swallowed it; see
/// [`TransactionAborted`](crate::error::TransactionAborted)).
#[derive(Default)]
pub(crate) struct Registry {
    effects: Mutex<Vec<Effect>>,
    joined_conflict: Mutex<Option<(SqlState, Option<ConflictKind>)>>,
}

impl Registry {
    fn push(&self, effect: Effect) {
        lock(&self.effects).push(effect);
    }

    /// Records that a joined call of this attempt returned a conflict; the first one is kept.
    pub(crate) fn record_conflict(&self, code: SqlState, kind: Option<ConflictKind>) {
        lock(&self.joined_conflict).get_or_insert((code, kind));
    }

    /// The first conflict a joined call of this attempt returned.
    pub(crate) fn joined_conflict(&self) -> Option<(SqlState, Option<ConflictKind>)> {
        *lock(&self.joined_conflict)
    }

    /// Takes the registered effects, in registration order.
    pub(crate) fn take(&self) -> Vec<Effect> {
        std::mem::take(&mut *lock(&self.effects))
    }

    /// Moves everything registered here to `parent` (a joined call's effects go to the outer
    /// attempt).
    pub(crate) fn move_to(&self, parent: &Registry) {
        let effects = self.take();
        lock(&parent.effects).extend(effects);
        if let Some((code, kind)) = self.joined_conflict() {
            parent.record_conflict(code, kind);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

thread_local! {
    /// The registry of the attempt whose body is being polled on this thread.
    static CURRENT: RefCell<Option<Arc<Registry>>> = const { RefCell::new(None) };
}

/// The registry of the attempt being polled on this thread, if any.
pub(crate) fn current() -> Option<Arc<Registry>> {
    CURRENT.with(|current| current.borrow().clone())
}

/// Registers `effect` to run after the current attempt's COMMIT succeeds.
///
/// Call it from the body of a `#[serializable_retry]` function (or a [`transaction`] closure).
/// The effect runs **exactly once** per call that commits: after the COMMIT that succeeded, in
/// registration order, before the call returns its `Ok`. It never runs for an attempt that rolled
/// back (a retried conflict, an error), whose COMMIT failed, or whose COMMIT's outcome is
/// unknown. Sync code goes in an `async move { … }` block.
///
/// ```
/// # #[cfg(feature = "mock")] {
/// use sqlx_retry_core::mock::{Fault, MockDb, Phase};
/// use sqlx_retry_core::{after_commit, transaction, Policy};
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let sent = Arc::new(AtomicU32::new(0));
/// let db = MockDb::new(()).fail(1, Phase::Commit, Fault::sqlstate("40001"));
/// transaction(&db, &Policy::default(), |tx| {
///     let sent = Arc::clone(&sent);
///     Box::pin(async move {
///         tx.execute("INSERT INTO orders …")?;
///         // Not `send_email().await` here: attempt 1 is rolled back and would still have sent it.
///         after_commit(async move {
///             sent.fetch_add(1, Ordering::SeqCst); // send_email().await
///         })?;
///         Ok::<_, sqlx::Error>(())
///     })
/// })
/// .await
/// .unwrap();
/// assert_eq!(db.attempts(), 2);
/// assert_eq!(sent.load(Ordering::SeqCst), 1); // once, after attempt 2's COMMIT
/// # }
/// # }
/// ```
///
/// # Nested calls
///
/// In a call that joined an outer transaction (see
/// [`OpenTransaction::is_joined`](crate::source::OpenTransaction::is_joined)) the effects go to the
/// **outer** attempt and run after its COMMIT. If the joined call returns `Err`, the effects it
/// registered are dropped.
///
/// # Errors
///
/// [`NoTransaction`] when no retry loop's attempt is running on this task: outside a body, in a
/// task the body spawned, or in a call that joined a transaction opened by hand (a
/// `&mut sqlx::Transaction` source used outside any retried body), whose COMMIT the loop cannot
/// see. Running the effect immediately would run it even if the transaction later rolls back,
/// and dropping it silently would lose it, so the caller is told. `NoTransaction` converts into
/// `sqlx::Error`, so `?` works in bodies returning `sqlx::Error` or `anyhow::Error`.
///
/// # Delivery
///
/// The effect runs in the caller's task after COMMIT. If the process dies, or the call's future
/// is dropped, between COMMIT and the effect, the effect is lost. When it must not be lost, write
/// the message into an outbox table in the same transaction instead and deliver it from there.
///
/// [`transaction`]: crate::transaction
pub fn after_commit<F>(effect: F) -> Result<(), NoTransaction>
where
    F: Future<Output = ()> + Send + 'static,
{
    CURRENT.with(|current| match &*current.borrow() {
        Some(registry) => {
            registry.push(Box::pin(effect));
            Ok(())
        }
        None => Err(NoTransaction),
    })
}

/// [`after_commit`] was called where no attempt of a retry loop is running, so there is no
/// COMMIT to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct NoTransaction;

impl fmt::Display for NoTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "after_commit called outside a retried transaction: there is no COMMIT to run the effect after",
        )
    }
}

impl std::error::Error for NoTransaction {}

impl From<NoTransaction> for sqlx::Error {
    /// A [`sqlx::Error::Configuration`] whose source is the `NoTransaction`.
    fn from(err: NoTransaction) -> Self {
        sqlx::Error::Configuration(Box::new(err))
    }
}

pin_project_lite::pin_project! {
    /// An attempt's body with the attempt's after-commit registry installed while it is polled:
    /// what `Attempts::scope` returns.
    #[must_use = "futures do nothing unless polled"]
    pub struct Scoped<F> {
        registry: Option<Arc<Registry>>,
        #[pin]
        body: F,
    }
}

impl<F> Scoped<F> {
    pub(crate) fn new(registry: Option<Arc<Registry>>, body: F) -> Self {
        Scoped { registry, body }
    }
}

impl<F> fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped")
            .field("registry", &self.registry.is_some())
            .finish_non_exhaustive()
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _restore = Enter::install(this.registry.clone());
        this.body.poll(cx)
    }
}

/// Installs a registry for the duration of one poll and restores the previous one on drop (also
/// when the body panics).
struct Enter {
    previous: Option<Arc<Registry>>,
}

impl Enter {
    fn install(registry: Option<Arc<Registry>>) -> Enter {
        let previous = CURRENT.with(|current| current.replace(registry));
        Enter { previous }
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|current| *current.borrow_mut() = previous);
    }
}
