//! Backoff schedules from other crates, as a [`Backoff`]: `backon` (feature `backon`) and
//! `backoff` (feature `backoff`).
//!
//! Both go through [`Backoff::from_fn`]: each call of the retry loop that needs to retry builds
//! a fresh schedule, takes one delay per retry, and stops retrying (returning the last error)
//! when the schedule ends. The policy's `max_attempts` and time budget still apply on top.

use crate::Backoff;

#[cfg(feature = "backon")]
impl Backoff {
    /// A [`backon`](https://docs.rs/backon) builder's schedule: each call that retries builds a
    /// fresh backoff from a clone of `builder`; its `max_times` ends retrying.
    ///
    /// ```
    /// use std::time::Duration;
    /// use backon::ConstantBuilder;
    /// use sqlx_retry_core::{Backoff, Policy};
    ///
    /// let backoff = Backoff::from_backon(
    ///     ConstantBuilder::default().with_delay(Duration::from_millis(7)).with_max_times(2),
    /// );
    /// assert_eq!(backoff.delays(0).collect::<Vec<_>>(), [Duration::from_millis(7); 2]);
    /// let policy = Policy::builder().backoff(backoff).build()?;
    /// # Ok::<(), sqlx_retry_core::PolicyError>(())
    /// ```
    ///
    /// `Backoff::from(builder)` and `builder.into()` do the same.
    pub fn from_backon<B>(builder: B) -> Backoff
    where
        B: backon::BackoffBuilder + Clone + 'static,
        B::Backoff: 'static,
    {
        Backoff::from_fn(move || builder.clone().build())
    }
}

#[cfg(feature = "backon")]
impl<B> From<B> for Backoff
where
    B: backon::BackoffBuilder + Clone + 'static,
    B::Backoff: 'static,
{
    /// See [`Backoff::from_backon`].
    fn from(builder: B) -> Backoff {
        Backoff::from_backon(builder)
    }
}

#[cfg(feature = "backoff")]
impl Backoff {
    /// The [`backoff`](https://docs.rs/backoff) crate's `ExponentialBackoff`: each call that
    /// retries clones `schedule`, resets it (restarting its `max_elapsed_time` clock) and takes
    /// `next_backoff()` before each retry; `None` ends retrying.
    ///
    /// **The `backoff` crate is unmaintained** ([RUSTSEC-2025-0012]), and so is its dependency
    /// `instant` ([RUSTSEC-2024-0384]). This adapter exists for code that already configures
    /// `ExponentialBackoff`s; it is behind the opt-in `backoff` feature. Prefer
    /// [`Backoff::exponential`] or [`Backoff::from_backon`] in new code.
    ///
    /// ```
    /// use std::time::Duration;
    /// use sqlx_retry_core::Backoff;
    ///
    /// let schedule = backoff::ExponentialBackoff {
    ///     initial_interval: Duration::from_millis(10),
    ///     randomization_factor: 0.0,
    ///     multiplier: 2.0,
    ///     max_interval: Duration::from_millis(30),
    ///     max_elapsed_time: None,
    ///     ..Default::default()
    /// };
    /// let delays: Vec<_> = Backoff::from_backoff(schedule).delays(0).take(3).collect();
    /// let ms = Duration::from_millis;
    /// assert_eq!(delays, [ms(10), ms(20), ms(30)]);
    /// ```
    ///
    /// [RUSTSEC-2025-0012]: https://rustsec.org/advisories/RUSTSEC-2025-0012
    /// [RUSTSEC-2024-0384]: https://rustsec.org/advisories/RUSTSEC-2024-0384
    pub fn from_backoff(schedule: backoff::ExponentialBackoff) -> Backoff {
        Backoff::from_fn(move || {
            let mut schedule = schedule.clone();
            backoff::backoff::Backoff::reset(&mut schedule);
            std::iter::from_fn(move || backoff::backoff::Backoff::next_backoff(&mut schedule))
        })
    }
}
