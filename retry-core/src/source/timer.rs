//! The sleep between attempts on tokio's timer.

use std::future::Future;
use std::time::Duration;

/// The resolution of tokio's timer.
pub(crate) const TIMER_TICK: Duration = Duration::from_millis(1);

/// Waits about `delay` on tokio's timer: the default [`BeginTransaction::sleep`](super::BeginTransaction::sleep).
///
/// tokio's timer counts whole milliseconds. It rounds a deadline up to its next tick and wakes
/// the task on the turn after, so `tokio::time::sleep(d)` waits about `d` plus 1.1 ms (measured
/// on an idle runtime: 1.1 ms for zero, 2.1 ms for 1 ms, 2.6 ms for 1.5 ms). Backoff windows of a
/// few milliseconds would grow by a third or more, and "no backoff" would still wait. So this asks
/// the timer for one tick less than `delay`; a delay shorter than a tick becomes one tick's wait
/// with probability `delay / tick`, and no wait otherwise, which keeps the mean. A zero delay
/// returns at once.
///
/// A source of your own that overrides `sleep` (to record the delays, say) still waits with this.
pub fn timer_sleep(delay: Duration) -> impl Future<Output = ()> + Send + 'static {
    let asked = timer_request(delay, fastrand::u64(..TICK_NS));
    async move {
        if let Some(asked) = asked {
            tokio::time::sleep(asked).await;
        }
    }
}

/// [`TIMER_TICK`] in nanoseconds.
const TICK_NS: u64 = TIMER_TICK.as_nanos() as u64;

/// What [`timer_sleep`] asks tokio's timer for, given `coin`, uniform in `0..TICK_NS`: `None`
/// means no wait at all.
fn timer_request(delay: Duration, coin: u64) -> Option<Duration> {
    if delay >= TIMER_TICK {
        Some(delay - TIMER_TICK)
    } else if u128::from(coin) < delay.as_nanos() {
        // Any deadline before the next tick wakes on it: one tick's wait.
        Some(Duration::ZERO)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_timer_is_asked_for_a_tick_less_and_sub_tick_delays_keep_their_mean() {
        assert_eq!(timer_request(Duration::ZERO, 0), None);
        assert_eq!(timer_request(MS, 0), Some(Duration::ZERO));
        assert_eq!(timer_request(5 * MS, 999_999), Some(4 * MS));
        assert_eq!(timer_request(Duration::MAX, 7), Some(Duration::MAX - MS));
        // 300 µs: a tick's wait for 30 % of the coins, none for the rest.
        let waits = (0..TICK_NS)
            .step_by(1_000)
            .filter(|&coin| timer_request(Duration::from_micros(300), coin).is_some())
            .count();
        assert_eq!(waits, 300);
    }
}
