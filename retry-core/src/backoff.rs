//! How long to wait before the next attempt.
//!
//! Conflicting transactions that retry at once tend to collide again. Waiting a random time
//! spreads them out; the waiting happens after ROLLBACK, so no locks are held while sleeping.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::PolicyError;

/// A factory for per-call delay sequences, for plugging in other backoff crates.
pub type DelaysFactory = dyn Fn() -> Box<dyn Iterator<Item = Duration> + Send> + Send + Sync;

/// The wait between attempts.
///
/// # Default
///
/// [`Backoff::exponential`] with full jitter, base 5 ms, cap 500 ms: before retry *n* the loop
/// sleeps a uniformly random time in `[0, min(cap, base · 2ⁿ⁻¹)]`.
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
    Custom(Arc<DelaysFactory>),
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
    pub fn validate(&self) -> Result<(), PolicyError> {
        match self.kind {
            Kind::Exponential { base, cap } | Kind::Decorrelated { base, cap } => {
                if base.is_zero() || cap.is_zero() {
                    Err(PolicyError::ZeroBackoff)
                } else if base > cap {
                    Err(PolicyError::InvertedBackoff { base, cap })
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// The largest delay this policy can produce, if bounded.
    pub fn max_delay(&self) -> Option<Duration> {
        match self.kind {
            Kind::None => Some(Duration::ZERO),
            Kind::Fixed(d) => Some(d),
            Kind::Exponential { cap, .. } | Kind::Decorrelated { cap, .. } => Some(cap),
            Kind::Custom(_) => None,
        }
    }

    /// The delays this policy would produce for one call, seeded for reproducibility. Useful for
    /// checking a policy; the retry loop seeds from the thread's generator.
    pub fn delays(&self, seed: u64) -> impl Iterator<Item = Duration> + Send + use<> {
        let mut state = Delays::new(self.clone(), fastrand::Rng::with_seed(seed));
        std::iter::from_fn(move || state.next_delay())
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::exponential(Backoff::DEFAULT_BASE, Backoff::DEFAULT_CAP)
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
            Kind::Custom(_) => f.write_str("Backoff::from_fn(..)"),
        }
    }
}

/// The per-call state of a [`Backoff`]: which retry comes next and the previous delay.
pub(crate) struct Delays {
    backoff: Backoff,
    rng: fastrand::Rng,
    retry: u32,
    previous: Duration,
    custom: Option<Box<dyn Iterator<Item = Duration> + Send>>,
}

impl Delays {
    pub(crate) fn new(backoff: Backoff, rng: fastrand::Rng) -> Self {
        Delays {
            backoff,
            rng,
            retry: 0,
            previous: Duration::ZERO,
            custom: None,
        }
    }

    /// The delay before the next retry, or `None` when a custom sequence has run out.
    pub(crate) fn next_delay(&mut self) -> Option<Duration> {
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
            Kind::Custom(make) => {
                let custom = self.custom.get_or_insert_with(|| make());
                custom.next()?
            }
        };
        self.previous = delay;
        Some(delay)
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
