//! Priority turns: a call that keeps losing its conflicts gets an attempt with no competitor of
//! its own policy.
//!
//! Backoff spreads retries out, but it is blind to who has waited longest: under heavy contention
//! a call can lose attempt after attempt while newer calls commit, and run out of attempts. With
//! priority turns on (the default; see
//! [`PolicyBuilder::priority_after`](crate::PolicyBuilder::priority_after)),
//! every attempt of the policy holds a shared turn on a gate the policy's calls (and its clones)
//! share, taken before BEGIN and given back when the transaction has ended. A call whose
//! `after` first attempts failed asks for the gate alone: new attempts of the policy queue
//! behind it, the attempts already running finish, and its attempt runs by itself; then
//! everyone queued goes on. Starving calls take their turns first come, first served.
//!
//! The gate is tokio's fair (FIFO, write-preferring) read-write lock. Taking a shared turn when
//! nobody asks for priority is an atomic compare-and-swap, with no round trip.
//!
//! Deadlock freedom: a call waits for a turn only between attempts, when it has no transaction
//! of its own open, and never while it is nested in another attempt's body (that attempt would
//! hold a turn the waiter's priority may wait for) or joins a transaction that is already open
//! (its locks could be what the priority attempt waits on). Waits are also bounded
//! ([`WAIT_LIMIT`], and the call's time budget): a call that waited that long runs its attempt
//! without a turn, so a cycle through code outside the retry loop (a task that holds a
//! transaction of its own while it calls a retried function) costs a delay, never a hang. A
//! dropped call gives its turn back, or leaves the queue, with its future.
//!
//! The same bound is what an attempt waiting on a lock held elsewhere costs the others: it keeps
//! its shared turn while it waits, so each priority request meanwhile holds the policy's new
//! attempts back for up to [`WAIT_LIMIT`] (documented at `PolicyBuilder::priority_after`;
//! `tests/postgres/starvation.rs` runs it on a server).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// The longest a call waits for its turn before it runs its attempt without one.
pub(crate) const WAIT_LIMIT: Duration = Duration::from_secs(1);

/// A policy's priority setting and the gate its calls share (clones of the policy share it).
#[derive(Clone)]
pub(crate) struct Priority {
    /// Failed attempts after which a call's next attempt runs alone.
    pub(crate) after: u32,
    gate: Arc<RwLock<()>>,
}

/// A turn held for the length of one attempt.
#[derive(Debug)]
pub(crate) enum Turn {
    /// An ordinary attempt, alongside the policy's other ordinary attempts.
    #[allow(dead_code)] // held for its drop
    Shared(OwnedRwLockReadGuard<()>),
    /// A priority attempt: no other attempt of the policy runs meanwhile.
    #[allow(dead_code)] // held for its drop
    Alone(OwnedRwLockWriteGuard<()>),
}

impl Priority {
    pub(crate) fn new(after: u32) -> Self {
        Priority {
            after,
            gate: Arc::new(RwLock::new(())),
        }
    }

    /// The turn for a call's next attempt, after `failed` failed attempts, waiting at most
    /// `limit`; `None` when the wait ran out (the attempt then runs without a turn).
    pub(crate) async fn turn(&self, failed: u32, limit: Duration) -> Option<Turn> {
        if failed >= self.after {
            let alone = self.gate.clone().write_owned();
            return tokio::time::timeout(limit, alone)
                .await
                .ok()
                .map(Turn::Alone);
        }
        match self.gate.clone().try_read_owned() {
            Ok(shared) => Some(Turn::Shared(shared)),
            Err(_) if limit.is_zero() => None,
            Err(_) => tokio::time::timeout(limit, self.gate.clone().read_owned())
                .await
                .ok()
                .map(Turn::Shared),
        }
    }

    /// Whether a priority attempt holds the gate or waits for it.
    #[cfg(test)]
    pub(crate) fn busy(&self) -> bool {
        self.gate.try_read().is_err()
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
    async fn waits_are_bounded() {
        let p = Priority::new(1);
        let _held = p.turn(0, WAIT_LIMIT).await.expect("free gate");
        let started = tokio::time::Instant::now();
        assert!(p.turn(1, Duration::from_millis(30)).await.is_none());
        assert_eq!(started.elapsed(), Duration::from_millis(30));
        // The priority call that gave up left the queue: ordinary turns pass again.
        assert!(p.turn(0, Duration::ZERO).await.is_some());
    }
}
