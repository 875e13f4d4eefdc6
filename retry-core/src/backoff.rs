//! How long to wait before the next attempt.
//!
//! Conflicting transactions that retry at once tend to collide again. Waiting a random time
//! spreads them out; the waiting happens after ROLLBACK, so no locks are held while sleeping.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::PolicyError;

/// A moving mean of durations (weight 1/8 per sample), shared between threads: the adaptive
/// backoff's attempt length and the priority gate's turn length.
#[derive(Debug)]
pub(crate) struct MeanDuration(AtomicU64);

impl MeanDuration {
    pub(crate) fn new(start: Duration) -> Self {
        MeanDuration(AtomicU64::new(
            u64::try_from(start.as_nanos()).unwrap_or(u64::MAX),
        ))
    }

    pub(crate) fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }

    /// Folds one sample into the mean, with weight 1/8.
    pub(crate) fn observe(&self, sample: Duration) {
        let sample = u64::try_from(sample.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(old - old / 8 + sample / 8)
            });
    }
}

/// A factory for per-call delay sequences: what [`Backoff::from_fn`] stores.
pub(crate) type DelaysFactory = dyn Fn() -> Box<dyn Iterator<Item = Duration> + Send> + Send + Sync;

/// The wait between attempts: set it with
/// [`PolicyBuilder::backoff`](crate::PolicyBuilder::backoff) (or the attribute's `backoff(…)`).
///
/// ```
/// use std::time::Duration;
/// use sqlx_retry_core::Backoff;
///
/// let backoff = Backoff::exponential(Duration::from_millis(2), Duration::from_millis(100));
/// assert!(backoff.delays(7).take(10).all(|d| d <= Duration::from_millis(100)));
/// ```
///
/// # Default
///
/// [`Backoff::adaptive`] with base 5 ms and cap 500 ms: full jitter whose window grows with the
/// number of calls of the same policy that are retrying at the moment (see its docs). Chosen
/// from the benchmark in BENCHMARKS.md.
#[derive(Clone)]
pub struct Backoff {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    None,
    Fixed(Duration),
    Exponential { base: Duration, cap: Duration },
    Decorrelated { base: Duration, cap: Duration },
    Adaptive(Arc<Adaptive>),
    Custom(Arc<DelaysFactory>),
}

/// The state an adaptive backoff shares between all calls using the same policy (and its clones).
struct Adaptive {
    base: Duration,
    cap: Duration,
    /// Calls currently between a conflict and their end: the live per-call delay sequences.
    contenders: AtomicU32,
    /// Exponentially weighted mean of the measured attempt duration (time from the end of one
    /// backoff sleep to the next conflict), starting at `base`.
    attempt: MeanDuration,
}

impl Adaptive {
    /// The smallest unit the window is built from, so the window never collapses to zero.
    const MIN_UNIT: Duration = Duration::from_micros(50);

    fn unit(&self) -> Duration {
        let measured = self.attempt.get();
        measured.min(self.base).max(Self::MIN_UNIT.min(self.base))
    }

    /// The jitter window before retry `retry` (1-based).
    fn window(&self, retry: u32) -> Duration {
        let contenders = self.contenders.load(Ordering::Relaxed).max(1);
        // The first retry is spread over the *other* calls retrying: a call that is the only one
        // retrying goes again at once, as a hand-written loop would.
        let spread = if retry <= 1 {
            contenders - 1
        } else {
            contenders
        };
        let shift = (retry.saturating_sub(1)).min(31);
        self.unit()
            .saturating_mul(spread)
            .saturating_mul(1u32 << shift)
            .min(self.cap)
    }
}

impl Backoff {
    /// The default base delay, 5 ms.
    pub const DEFAULT_BASE: Duration = Duration::from_millis(5);
    /// The default cap, 500 ms.
    pub const DEFAULT_CAP: Duration = Duration::from_millis(500);

    /// Retry at once. Conflicting clients tend to collide again; useful mainly as a baseline.
    pub const fn none() -> Self {
        Backoff { kind: Kind::None }
    }

    /// The same delay before every retry, without jitter.
    pub const fn fixed(delay: Duration) -> Self {
        Backoff {
            kind: Kind::Fixed(delay),
        }
    }

    /// Exponential backoff with full jitter: before retry *n*, a uniformly random delay in
    /// `[0, min(cap, base · 2ⁿ⁻¹)]`. `base` must be positive and at most `cap`.
    pub const fn exponential(base: Duration, cap: Duration) -> Self {
        Backoff {
            kind: Kind::Exponential { base, cap },
        }
    }

    /// Decorrelated jitter: each delay is uniformly random in `[base, 3 · previous]`, capped at
    /// `cap`. `base` must be positive and at most `cap`.
    pub const fn decorrelated(base: Duration, cap: Duration) -> Self {
        Backoff {
            kind: Kind::Decorrelated { base, cap },
        }
    }

    /// Contention-aware full jitter: the jitter window grows with the number of callers that are
    /// retrying right now, and is measured in units of the observed attempt duration rather than
    /// a fixed base.
    ///
    /// Before retry *n* the loop sleeps a uniformly random time in
    /// `[0, min(cap, unit · k · 2ⁿ⁻¹)]`, except that the first retry uses *k* − 1, where
    ///
    /// - *k* ≥ 1 is the number of calls of this policy (and of its clones: the estimate is shared
    ///   through an `Arc`, process-wide per policy) that are currently retrying, i.e. have hit a
    ///   conflict and not yet finished. By Little's law it is the recent conflict rate times the
    ///   time a conflicting call takes to get through, so it rises and falls with contention
    ///   without any clock-driven decay, and falls back to 1 (plain full jitter) when only one
    ///   call conflicts;
    /// - *unit* is a moving average (weight 1/8) of the measured attempt duration (from the start
    ///   of the call, or the end of a backoff sleep, to the next conflict), clamped to
    ///   `[min(50 µs, base), base]`. It starts at `base`, so `base` is the pessimistic guess and
    ///   the upper bound of the unit.
    ///
    /// The idea: *k* conflicting clients need about *k* attempt durations to each get one
    /// conflict-free turn, so that is the window they are spread over; doubling per retry covers
    /// the cases the estimate gets wrong. A call's first retry is spread over the *other* calls
    /// retrying only: when it is the only one, the call that beat it has committed and nobody
    /// else is waiting, so it goes again at once, as a hand-written loop would; a sleep there
    /// would leave the database idle at low concurrency (BENCHMARKS.md §4). Delays always stay
    /// within `[0, cap]`. `base` must be positive and at most `cap`.
    ///
    /// Unlike the other constructors this one allocates its shared state, so build a policy once
    /// and reuse it (or clone it: clones share the estimate).
    pub fn adaptive(base: Duration, cap: Duration) -> Self {
        Backoff {
            kind: Kind::Adaptive(Arc::new(Adaptive {
                base,
                cap,
                contenders: AtomicU32::new(0),
                attempt: MeanDuration::new(base),
            })),
        }
    }

    /// For [`Backoff::adaptive`]: the number of calls currently retrying under this policy (the
    /// contention estimate that scales the jitter window). `None` for the other strategies.
    pub fn contenders(&self) -> Option<u32> {
        match &self.kind {
            Kind::Adaptive(state) => Some(state.contenders.load(Ordering::Relaxed)),
            _ => None,
        }
    }

    /// Delays from another source: `make` is called once per call that needs to retry and yields
    /// the delay before each retry; when its iterator ends, the loop stops retrying and returns
    /// the last error. This is how the `backon` and `backoff` adapters plug in.
    pub fn from_fn<F, I>(make: F) -> Self
    where
        F: Fn() -> I + Send + Sync + 'static,
        I: Iterator<Item = Duration> + Send + 'static,
    {
        Backoff {
            kind: Kind::Custom(Arc::new(move || Box::new(make()))),
        }
    }

    /// Checks the parameters; [`PolicyBuilder::build`](crate::PolicyBuilder::build) calls this.
    pub(crate) fn validate(&self) -> Result<(), PolicyError> {
        let (base, cap) = match &self.kind {
            Kind::Exponential { base, cap } | Kind::Decorrelated { base, cap } => (*base, *cap),
            Kind::Adaptive(state) => (state.base, state.cap),
            _ => return Ok(()),
        };
        if base.is_zero() || cap.is_zero() {
            Err(PolicyError::ZeroBackoff)
        } else if base > cap {
            Err(PolicyError::InvertedBackoff { base, cap })
        } else {
            Ok(())
        }
    }

    /// The largest delay this policy can produce, if bounded.
    pub fn max_delay(&self) -> Option<Duration> {
        match &self.kind {
            Kind::None => Some(Duration::ZERO),
            Kind::Fixed(d) => Some(*d),
            Kind::Exponential { cap, .. } | Kind::Decorrelated { cap, .. } => Some(*cap),
            Kind::Adaptive(state) => Some(state.cap),
            Kind::Custom(_) => None,
        }
    }

    /// The delays this policy would produce for one call, seeded for reproducibility. Useful for
    /// checking a policy; the retry loop seeds from the thread's generator.
    pub fn delays(&self, seed: u64) -> impl Iterator<Item = Duration> + Send + use<> {
        Delays::new(self.clone(), fastrand::Rng::with_seed(seed))
    }
}

impl Default for Backoff {
    /// [`Backoff::adaptive`] with base 5 ms and cap 500 ms: chosen from the benchmark (see
    /// BENCHMARKS.md), where it needed the fewest retries per commit and kept its goodput up as
    /// clients grew.
    fn default() -> Self {
        Backoff::adaptive(Backoff::DEFAULT_BASE, Backoff::DEFAULT_CAP)
    }
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::None => f.write_str("Backoff::none()"),
            Kind::Fixed(d) => write!(f, "Backoff::fixed({d:?})"),
            Kind::Exponential { base, cap } => write!(f, "Backoff::exponential({base:?}, {cap:?})"),
            Kind::Decorrelated { base, cap } => {
                write!(f, "Backoff::decorrelated({base:?}, {cap:?})")
            }
            Kind::Adaptive(state) => {
                write!(f, "Backoff::adaptive({:?}, {:?})", state.base, state.cap)
            }
            Kind::Custom(_) => f.write_str("Backoff::from_fn(..)"),
        }
    }
}

/// The delays of one call of the retry loop, one per retry: the per-call state of a [`Backoff`]
/// (which retry comes next, the previous delay). It ends when a custom sequence ends; the
/// built-in strategies never end.
pub(crate) struct Delays {
    backoff: Backoff,
    rng: fastrand::Rng,
    retry: u32,
    previous: Duration,
    custom: Option<Box<dyn Iterator<Item = Duration> + Send>>,
    /// Adaptive only: when the previous delay was handed out, to measure the attempt after it.
    handed_out: Option<Instant>,
}

impl Delays {
    /// The delays of a call whose first attempt started at `started` and has just failed: the
    /// adaptive backoff measures that attempt too.
    pub(crate) fn after_attempt(backoff: Backoff, rng: fastrand::Rng, started: Instant) -> Self {
        let mut delays = Delays::new(backoff, rng);
        delays.handed_out = Some(started);
        delays
    }

    pub(crate) fn new(backoff: Backoff, rng: fastrand::Rng) -> Self {
        if let Kind::Adaptive(state) = &backoff.kind {
            state.contenders.fetch_add(1, Ordering::Relaxed);
        }
        Delays {
            backoff,
            rng,
            retry: 0,
            previous: Duration::ZERO,
            custom: None,
            handed_out: None,
        }
    }
}

impl Iterator for Delays {
    type Item = Duration;

    /// The delay before the next retry, or `None` when a custom sequence has run out.
    fn next(&mut self) -> Option<Duration> {
        self.retry = self.retry.saturating_add(1);
        let delay = match &self.backoff.kind {
            Kind::None => Duration::ZERO,
            Kind::Fixed(d) => *d,
            Kind::Exponential { base, cap } => {
                let shift = (self.retry - 1).min(31);
                let ceiling = base.saturating_mul(1u32 << shift).min(*cap);
                uniform(&mut self.rng, Duration::ZERO, ceiling)
            }
            Kind::Decorrelated { base, cap } => {
                let previous = self.previous.max(*base);
                let upper = previous.saturating_mul(3).min(*cap).max(*base);
                uniform(&mut self.rng, *base, upper).min(*cap)
            }
            Kind::Adaptive(state) => {
                let now = Instant::now();
                if let Some(then) = self.handed_out {
                    state.attempt.observe(
                        now.saturating_duration_since(then)
                            .saturating_sub(self.previous),
                    );
                }
                self.handed_out = Some(now);
                uniform(&mut self.rng, Duration::ZERO, state.window(self.retry))
            }
            Kind::Custom(make) => {
                let custom = self.custom.get_or_insert_with(|| make());
                custom.next()?
            }
        };
        self.previous = delay;
        Some(delay)
    }
}

impl Drop for Delays {
    fn drop(&mut self) {
        if let Kind::Adaptive(state) = &self.backoff.kind {
            state.contenders.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A uniformly random duration in `[low, high]` at nanosecond resolution.
fn uniform(rng: &mut fastrand::Rng, low: Duration, high: Duration) -> Duration {
    if high <= low {
        return low;
    }
    let low_ns = u64::try_from(low.as_nanos()).unwrap_or(u64::MAX);
    let high_ns = u64::try_from(high.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.u64(low_ns..=high_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn exponential_full_jitter_stays_under_the_doubling_ceiling() {
        let backoff = Backoff::exponential(5 * MS, 500 * MS);
        for seed in 0..200 {
            for (i, d) in backoff.delays(seed).take(20).enumerate() {
                let ceiling = (5 * MS * 2u32.pow(i as u32)).min(500 * MS);
                assert!(d <= ceiling, "retry {} delay {d:?} > {ceiling:?}", i + 1);
            }
        }
    }

    #[test]
    fn full_jitter_actually_varies() {
        let backoff = Backoff::exponential(5 * MS, 500 * MS);
        let fifth: Vec<Duration> = (0..50).map(|s| backoff.delays(s).nth(4).unwrap()).collect();
        let distinct: std::collections::BTreeSet<_> = fifth.iter().collect();
        assert!(
            distinct.len() > 40,
            "jitter produced {} values",
            distinct.len()
        );
        // Mean of U[0, 80ms] is 40ms; allow a wide band.
        let mean = fifth.iter().sum::<Duration>() / fifth.len() as u32;
        assert!(mean > 20 * MS && mean < 60 * MS, "mean {mean:?}");
    }

    #[test]
    fn decorrelated_stays_within_base_and_cap() {
        let backoff = Backoff::decorrelated(2 * MS, 100 * MS);
        for seed in 0..200 {
            for d in backoff.delays(seed).take(30) {
                assert!((2 * MS..=100 * MS).contains(&d), "{d:?}");
            }
        }
    }

    #[test]
    fn huge_retry_numbers_do_not_overflow() {
        let backoff = Backoff::exponential(Duration::from_secs(1), Duration::MAX);
        let last = backoff.delays(1).nth(100).unwrap();
        assert!(last <= Duration::MAX);
        let fixed = Backoff::fixed(3 * MS);
        assert!(fixed.delays(0).take(5).all(|d| d == 3 * MS));
        assert!(Backoff::none().delays(0).take(5).all(|d| d.is_zero()));
    }

    #[test]
    fn custom_sequence_ends_retrying_when_exhausted() {
        let backoff = Backoff::from_fn(|| [MS, 2 * MS].into_iter());
        let got: Vec<_> = backoff.delays(0).collect();
        assert_eq!(got, vec![MS, 2 * MS]);
    }

    #[test]
    fn adaptive_stays_within_zero_and_cap_at_any_contention() {
        let backoff = Backoff::adaptive(5 * MS, 200 * MS);
        assert_eq!(backoff.max_delay(), Some(200 * MS));
        // Many calls retrying at once, each deep into its retries: the window saturates at cap.
        let mut sequences: Vec<_> = (0..1000).map(|s| backoff.delays(s)).collect();
        assert_eq!(backoff.contenders(), Some(1000));
        for seq in &mut sequences {
            let d = seq.next().unwrap();
            assert!(d <= 200 * MS, "{d:?}");
        }
        let deep: Vec<Duration> = sequences
            .iter_mut()
            .map(|seq| seq.nth(40).unwrap())
            .collect();
        assert!(deep.iter().all(|d| *d <= 200 * MS));
        // The window really reaches the cap: some delays land in its top tenth.
        assert!(deep.iter().any(|d| *d >= 180 * MS));
        drop(sequences);
        assert_eq!(
            backoff.contenders(),
            Some(0),
            "finished calls release their slot"
        );
    }

    #[test]
    fn adaptive_window_follows_contention_and_attempt_duration() {
        let state = Adaptive {
            base: 5 * MS,
            cap: 500 * MS,
            contenders: AtomicU32::new(0),
            attempt: MeanDuration::new(Duration::from_millis(5)),
        };
        // Alone: the first retry goes at once, later ones are plain full jitter with the base
        // as unit.
        assert_eq!(state.window(1), Duration::ZERO);
        assert_eq!(state.window(2), 10 * MS);
        assert_eq!(state.window(3), 20 * MS);
        // Eight calls retrying: the first retry is spread over the seven others, later ones
        // over all eight, still capped.
        state.contenders.store(8, Ordering::Relaxed);
        assert_eq!(state.window(1), 35 * MS);
        assert_eq!(state.window(2), 80 * MS);
        assert_eq!(state.window(10), 500 * MS);
        assert_eq!(state.window(u32::MAX), 500 * MS);
        // Short measured attempts shrink the unit, never below 50 µs, never above base.
        for _ in 0..200 {
            state.attempt.observe(Duration::ZERO);
        }
        assert_eq!(state.unit(), Duration::from_micros(50));
        for _ in 0..200 {
            state.attempt.observe(Duration::from_secs(10));
        }
        assert_eq!(state.unit(), 5 * MS);
        // A clone of the backoff shares the estimate.
        let a = Backoff::adaptive(MS, 10 * MS);
        let b = a.clone();
        let mut seq = a.delays(7);
        seq.next();
        assert_eq!(b.contenders(), Some(1));
        assert_eq!(Backoff::exponential(MS, 10 * MS).contenders(), None);
        assert_eq!(Backoff::default().contenders(), Some(0));
        // Validation as for the other jittered strategies.
        assert_eq!(
            Backoff::adaptive(Duration::ZERO, MS).validate(),
            Err(PolicyError::ZeroBackoff)
        );
        assert_eq!(
            Backoff::adaptive(2 * MS, MS).validate(),
            Err(PolicyError::InvertedBackoff {
                base: 2 * MS,
                cap: MS
            })
        );
    }

    #[test]
    fn validation_rejects_zero_and_inverted_ranges() {
        assert_eq!(
            Backoff::exponential(Duration::ZERO, MS).validate(),
            Err(PolicyError::ZeroBackoff)
        );
        assert_eq!(
            Backoff::decorrelated(10 * MS, MS).validate(),
            Err(PolicyError::InvertedBackoff {
                base: 10 * MS,
                cap: MS
            })
        );
        assert!(Backoff::default().validate().is_ok());
    }
}
