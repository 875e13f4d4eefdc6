//! Priority turns: a call that keeps losing its conflicts gets an attempt with no competitor of
//! its own policy.
//!
//! Backoff spreads retries out, but it is blind to who has waited longest: under heavy contention
//! a call can lose attempt after attempt while newer calls commit, and run out of attempts. With
//! priority turns on (the default; see
//! [`PolicyBuilder::priority_after`](crate::PolicyBuilder::priority_after)),
//! every attempt of the policy holds a shared turn on a gate the policy's calls (and its clones)
//! share, taken before BEGIN and given back when the transaction has ended. A call whose
//! `after` first attempts failed asks for a turn alone: starving calls line up first come, first
//! served, without holding anyone back; the one at the head closes the gate (new attempts of the
//! policy wait), waits for the attempts already running to finish, and runs its attempt with no
//! new attempt beside it; then the gate opens and the next in line goes.
//!
//! The head waits for the running attempts at most [`DRAIN_FACTOR`] times the measured mean
//! length of a shared turn (at least [`MIN_DRAIN`], at most [`WAIT_LIMIT`]). An attempt that
//! outlasts that wait (it waits on a lock held outside the policy, or on a deadlock until
//! PostgreSQL's `deadlock_timeout`) is left out of the drains that follow, so it holds the policy
//! up once, for one short drain, however long it waits, instead of once per starving call.
//!
//! Taking a shared turn when nobody asks for priority is an uncontended mutex and two clock
//! readings, with no round trip.
//!
//! Deadlock freedom: a call waits for a turn only between attempts, when it has no transaction
//! of its own open, and never while it is nested in another attempt's body (that attempt would
//! hold a turn the waiter's priority may wait for) or joins a transaction that is already open
//! (its locks could be what the priority attempt waits on). Waits in line are also bounded
//! ([`WAIT_LIMIT`], and the call's time budget): a call that waited that long runs its attempt
//! without a turn, so a cycle through code outside the retry loop (a task that holds a
//! transaction of its own while it calls a retried function) costs a delay, never a hang. A
//! dropped call gives its turn back, or leaves the line, with its future.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, OwnedMutexGuard};

use crate::backoff::MeanDuration;

/// The longest a call waits for its turn before it runs its attempt without one.
pub(crate) const WAIT_LIMIT: Duration = Duration::from_secs(1);

/// How many times the measured length of a shared turn a priority call waits for the running
/// attempts to finish, before it leaves those still running out of its turn.
const DRAIN_FACTOR: u32 = 8;
/// The shortest drain wait.
const MIN_DRAIN: Duration = Duration::from_millis(2);

/// A policy's priority setting and the gate its calls share (clones of the policy share it).
#[derive(Clone)]
pub(crate) struct Priority {
    /// Failed attempts after which a call's next attempt runs alone.
    pub(crate) after: u32,
    gate: Arc<Gate>,
}

/// The gate: ordinary attempts pass while it is open; a priority call at the head of the line
/// closes it, waits (boundedly) for the attempts inside to finish, and runs its attempt.
struct Gate {
    state: Mutex<State>,
    /// Signalled when the gate opens.
    opened: Notify,
    /// Signalled when the last counted attempt of the current epoch ends.
    drained: Notify,
    /// Starving calls, first come first served; the holder is the head.
    line: Arc<tokio::sync::Mutex<()>>,
    /// Moving mean of how long a shared turn is held.
    held: MeanDuration,
}

#[derive(Default)]
struct State {
    closed: bool,
    /// Bumped when a drain runs out: the attempts of earlier epochs are no longer waited for.
    epoch: u64,
    /// Shared turns of the current epoch still held.
    running: u32,
}

impl Gate {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How long the head waits for the running attempts to finish.
    fn drain_limit(&self) -> Duration {
        self.held
            .get()
            .saturating_mul(DRAIN_FACTOR)
            .clamp(MIN_DRAIN, WAIT_LIMIT)
    }
}

/// A turn held for the length of one attempt.
#[derive(Debug)]
pub(crate) enum Turn {
    /// An ordinary attempt, alongside the policy's other ordinary attempts.
    #[allow(dead_code)] // held for its drop
    Shared(Shared),
    /// A priority attempt: no attempt of the policy starts meanwhile.
    #[allow(dead_code)] // held for its drop
    Alone(Alone),
}

/// A shared turn: counted in its epoch until dropped.
pub(crate) struct Shared {
    gate: Arc<Gate>,
    epoch: u64,
    since: Instant,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let held = self.since.elapsed();
        let mut state = self.gate.state();
        // A turn left out of the drains (it outlasted one) does not teach the drain its length.
        if state.epoch == self.epoch {
            self.gate.held.observe(held);
            state.running -= 1;
            if state.running == 0 && state.closed {
                drop(state);
                self.gate.drained.notify_waiters();
            }
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// A priority turn: the gate closed and the head of the line held, until dropped.
pub(crate) struct Alone {
    gate: Arc<Gate>,
    _line: OwnedMutexGuard<()>,
}

impl Drop for Alone {
    fn drop(&mut self) {
        self.gate.state().closed = false;
        self.gate.opened.notify_waiters();
    }
}

impl std::fmt::Debug for Alone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alone").finish_non_exhaustive()
    }
}

/// Waits until `ready` returns a value, checking it again each time `notify` is signalled (the
/// notification is armed before each check, so none is missed between the two).
async fn until<T>(notify: &Notify, mut ready: impl FnMut() -> Option<T>) -> T {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(value) = ready() {
            return value;
        }
        notified.await;
    }
}

impl Priority {
    pub(crate) fn new(after: u32) -> Self {
        Priority {
            after,
            gate: Arc::new(Gate {
                state: Mutex::new(State::default()),
                opened: Notify::new(),
                drained: Notify::new(),
                line: Arc::new(tokio::sync::Mutex::new(())),
                held: MeanDuration::new(Duration::ZERO),
            }),
        }
    }

    /// The turn for a call's next attempt, after `failed` failed attempts, waiting at most
    /// `limit`; `None` when the wait ran out (the attempt then runs without a turn).
    pub(crate) async fn turn(&self, failed: u32, limit: Duration) -> Option<Turn> {
        if failed >= self.after {
            return self.alone(limit).await.map(Turn::Alone);
        }
        if let Some(shared) = self.try_shared() {
            return Some(Turn::Shared(shared));
        }
        if limit.is_zero() {
            return None;
        }
        tokio::time::timeout(limit, until(&self.gate.opened, || self.try_shared()))
            .await
            .ok()
            .map(Turn::Shared)
    }

    fn try_shared(&self) -> Option<Shared> {
        let mut state = self.gate.state();
        if state.closed {
            return None;
        }
        state.running += 1;
        Some(Shared {
            gate: self.gate.clone(),
            epoch: state.epoch,
            since: Instant::now(),
        })
    }

    /// Waits its place in line (at most `limit`; the gate stays open meanwhile), closes the gate
    /// and waits a bounded time for the attempts inside to finish.
    async fn alone(&self, limit: Duration) -> Option<Alone> {
        let asked = tokio::time::Instant::now();
        let line = tokio::time::timeout(limit, self.gate.line.clone().lock_owned())
            .await
            .ok()?;
        // The drain counts against the same limit (the call's budget may be what set it).
        let drain = self
            .gate
            .drain_limit()
            .min(limit.saturating_sub(asked.elapsed()));
        self.gate.state().closed = true;
        let turn = Alone {
            gate: self.gate.clone(),
            _line: line,
        };
        let drained = tokio::time::timeout(
            drain,
            until(&self.gate.drained, || {
                (self.gate.state().running == 0).then_some(())
            }),
        )
        .await;
        if drained.is_err() {
            // Attempts that outlast the drain (a lock wait, a long transaction) no longer hold
            // up this turn or later ones.
            let mut state = self.gate.state();
            state.epoch += 1;
            state.running = 0;
        }
        Some(turn)
    }

    /// Whether a priority attempt holds the gate or waits for it.
    #[cfg(test)]
    pub(crate) fn busy(&self) -> bool {
        self.gate.state().closed
    }
}

impl std::fmt::Debug for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Priority")
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn shared_turns_coexist_and_priority_waits_for_them() {
        let p = Priority::new(3);
        let a = p.turn(0, WAIT_LIMIT).await.expect("free gate");
        let b = p.turn(2, WAIT_LIMIT).await.expect("free gate");
        assert!(matches!((&a, &b), (Turn::Shared(_), Turn::Shared(_))));
        // The starving call queues; a new ordinary attempt cannot pass it.
        let q = p.clone();
        let starving = tokio::spawn(async move { q.turn(3, WAIT_LIMIT).await });
        tokio::task::yield_now().await;
        assert!(p.busy());
        assert!(
            p.turn(0, Duration::ZERO).await.is_none(),
            "no zero-wait turn past a queued priority"
        );
        drop(a);
        drop(b);
        let alone = starving
            .await
            .unwrap()
            .expect("turn after the others finished");
        assert!(matches!(alone, Turn::Alone(_)));
        drop(alone);
        assert!(!p.busy());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_attempt_holds_a_priority_turn_back_only_for_the_drain() {
        let p = Priority::new(1);
        let stuck = p.turn(0, WAIT_LIMIT).await.expect("free gate");
        let started = tokio::time::Instant::now();
        let alone = p.turn(1, WAIT_LIMIT).await.expect("turn after the drain");
        assert!(matches!(alone, Turn::Alone(_)));
        assert_eq!(started.elapsed(), MIN_DRAIN);
        drop(alone);
        // The stuck attempt is left out of later drains: the next priority turn is immediate.
        let started = tokio::time::Instant::now();
        let again = p.turn(1, WAIT_LIMIT).await.expect("immediate turn");
        assert_eq!(started.elapsed(), Duration::ZERO);
        drop(again);
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(stuck);
        assert_eq!(
            p.gate.drain_limit(),
            MIN_DRAIN,
            "the stuck turn's 10 s were not measured"
        );
        assert!(!p.busy());
        assert!(p.turn(0, Duration::ZERO).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_counts_against_the_callers_limit() {
        let p = Priority::new(1);
        let _stuck = p.turn(0, WAIT_LIMIT).await.expect("free gate");
        let limit = MIN_DRAIN / 2;
        let started = tokio::time::Instant::now();
        let alone = p.turn(1, limit).await.expect("the line was free");
        assert!(matches!(alone, Turn::Alone(_)));
        assert_eq!(started.elapsed(), limit);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_in_line_is_bounded() {
        let p = Priority::new(1);
        let head = p.turn(1, WAIT_LIMIT).await.expect("free gate");
        let started = tokio::time::Instant::now();
        assert!(p.turn(1, Duration::from_millis(30)).await.is_none());
        assert_eq!(started.elapsed(), Duration::from_millis(30));
        drop(head);
        // The call that gave up left the line, and the gate is open again.
        assert!(p.turn(0, Duration::ZERO).await.is_some());
        assert!(p.turn(1, Duration::ZERO).await.is_some());
    }
}
