//! Property tests of `Backoff` and `Policy::builder` on arbitrary input: delays stay within
//! their bounds, the loop never sleeps past its time budget, bad settings are an error and never
//! a panic.
#![cfg(feature = "mock")]

use std::time::Duration;

use proptest::prelude::*;
use sqlx_retry::mock::{Fault, MockDb, MockEvent, Phase};
use sqlx_retry::{Backoff, Policy, transaction};

/// 1 µs ..= 10 s, in nanoseconds.
fn duration() -> impl Strategy<Value = Duration> {
    (1_000u64..=10_000_000_000).prop_map(Duration::from_nanos)
}

/// `base <= cap`, both in 1 µs ..= 10 s.
fn base_cap() -> impl Strategy<Value = (Duration, Duration)> {
    (duration(), duration()).prop_map(|(a, b)| if a <= b { (a, b) } else { (b, a) })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn exponential_delays_within_zero_cap_and_doubling_ceiling(
        (base, cap) in base_cap(),
        seed in any::<u64>(),
    ) {
        let backoff = Backoff::exponential(base, cap);
        prop_assert!(Policy::builder().backoff(backoff.clone()).build().is_ok());
        let delays: Vec<Duration> = backoff.delays(seed).take(64).collect();
        prop_assert_eq!(delays.len(), 64);
        for (i, d) in delays.iter().enumerate() {
            // Retry n = i + 1: delay <= min(cap, base * 2^(n-1)).
            let ceiling = base.saturating_mul(2u32.saturating_pow(i as u32)).min(cap);
            let ceiling = if i >= 32 { cap } else { ceiling };
            prop_assert!(*d <= cap, "retry {} delay {:?} > cap {:?}", i + 1, d, cap);
            prop_assert!(*d <= ceiling, "retry {} delay {:?} > {:?}", i + 1, d, ceiling);
        }
    }

    #[test]
    fn decorrelated_delays_within_base_cap(
        (base, cap) in base_cap(),
        seed in any::<u64>(),
    ) {
        let backoff = Backoff::decorrelated(base, cap);
        prop_assert!(Policy::builder().backoff(backoff.clone()).build().is_ok());
        for (i, d) in backoff.delays(seed).take(64).enumerate() {
            prop_assert!(
                base <= d && d <= cap,
                "retry {} delay {:?} outside [{:?}, {:?}]", i + 1, d, base, cap
            );
        }
    }

    /// Drives the real loop on the mock source (a 40001 on every attempt) on tokio's paused clock:
    /// the sum of the sleeps stays within the budget, and so does the whole call.
    #[test]
    fn loop_sleeps_within_time_budget(
        (base, cap) in base_cap(),
        decorrelated in any::<bool>(),
        budget in (1_000u64..=30_000_000_000).prop_map(Duration::from_nanos),
        max in 1u32..=40,
    ) {
        let backoff = if decorrelated {
            Backoff::decorrelated(base, cap)
        } else {
            Backoff::exponential(base, cap)
        };
        let policy = Policy::builder()
            .max_attempts(max)
            .backoff(backoff)
            .budget(budget)
            .build()
            .unwrap();
        let mut db = MockDb::new(0_i64);
        for attempt in 1..=max {
            db = db.fail(attempt, Phase::Body, Fault::sqlstate("40001"));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let (result, elapsed) = rt.block_on(async {
            let started = tokio::time::Instant::now();
            let result = transaction(&db, &policy, |tx| {
                Box::pin(async move {
                    tx.execute("UPDATE")?;
                    Ok::<_, sqlx::Error>(())
                })
            })
            .await;
            (result, started.elapsed())
        });
        let err = result.unwrap_err();
        prop_assert_eq!(sqlx_retry::error::sqlstate(&err).map(|c| c.as_str().to_owned()), Some("40001".to_owned()));
        let slept: Duration = db
            .events()
            .iter()
            .filter_map(|e| match e {
                MockEvent::Sleep(d) => Some(*d),
                _ => None,
            })
            .sum();
        let sleeps = db.events().iter().filter(|e| matches!(e, MockEvent::Sleep(_))).count();
        prop_assert!(slept <= budget, "slept {:?} > budget {:?}", slept, budget);
        prop_assert!(elapsed <= budget, "call took {:?} > budget {:?}", elapsed, budget);
        prop_assert!(db.attempts() <= max);
        prop_assert_eq!(sleeps as u32, db.attempts() - 1);
    }

    #[test]
    fn builder_never_panics_on_arbitrary_retry_on(codes in proptest::collection::vec(".{0,8}", 0..4)) {
        let valid = |c: &str| c.len() == 5 && c.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
        let result = std::panic::catch_unwind(|| Policy::builder().retry_on(&codes).build());
        prop_assert!(result.is_ok(), "build panicked");
        let built = result.unwrap();
        prop_assert_eq!(built.is_ok(), codes.iter().all(|c| valid(c)), "{:?}", codes);
    }

    #[test]
    fn builder_rejects_zero_or_inverted_backoff(
        a in 0u64..=10_000_000_000,
        b in 0u64..=10_000_000_000,
        decorrelated in any::<bool>(),
    ) {
        let (a, b) = (Duration::from_nanos(a), Duration::from_nanos(b));
        let backoff = if decorrelated { Backoff::decorrelated(a, b) } else { Backoff::exponential(a, b) };
        let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Policy::builder().backoff(backoff).build()));
        prop_assert!(built.is_ok(), "build panicked");
        let ok = !a.is_zero() && !b.is_zero() && a <= b;
        prop_assert_eq!(built.unwrap().is_ok(), ok);
    }
}

#[test]
fn builder_rejects_zero_attempts_without_panicking() {
    assert!(Policy::builder().max_attempts(0).build().is_err());
    assert!(Policy::builder().max_attempts(1).build().is_ok());
    assert!(Policy::builder().budget(Duration::ZERO).build().is_err());
}
