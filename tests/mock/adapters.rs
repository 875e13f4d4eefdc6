//! Backoff schedules from the `backon` and `backoff` crates, on the mock source and the paused
//! clock.
#![cfg(feature = "mock")]

use std::time::Duration;

use sqlx_retry::mock::{Fault, MockDb, MockTx, Phase};
use sqlx_retry::{Backoff, Policy, transaction};

const MS: Duration = Duration::from_millis(1);

/// A transaction that conflicts at COMMIT on each of the first `conflicts` attempts.
fn conflicting(conflicts: u32) -> MockDb<()> {
    (1..=conflicts).fold(MockDb::new(()), |db, n| {
        db.fail(n, Phase::Commit, Fault::sqlstate("40001"))
    })
}

async fn run(db: &MockDb<()>, policy: &Policy) -> Result<(), sqlx::Error> {
    transaction(db, policy, |tx: &mut MockTx<()>| {
        Box::pin(async move { tx.execute("work") })
    })
    .await
}

fn sleeps(db: &MockDb<()>) -> Vec<String> {
    db.script()
        .into_iter()
        .filter(|line| line.starts_with("sleep"))
        .collect()
}

#[cfg(feature = "backon")]
#[tokio::test(start_paused = true)]
async fn backon_max_times_ends_retrying() {
    use backon::ConstantBuilder;

    let builder = ConstantBuilder::default()
        .with_delay(7 * MS)
        .with_max_times(2);
    // `max_attempts` (10) is not what stops the loop: the builder's `max_times` is.
    let policy = Policy::builder()
        .max_attempts(10)
        .backoff(Backoff::from(builder))
        .build()
        .unwrap();
    let db = conflicting(10);
    let started = tokio::time::Instant::now();
    let err = run(&db, &policy).await.unwrap_err();
    assert_eq!(sqlx_retry::error::sqlstate(&err).unwrap().as_str(), "40001");
    assert_eq!(sleeps(&db), ["sleep 7ms", "sleep 7ms"]);
    assert_eq!(db.attempts(), 3, "first attempt plus max_times retries");
    assert_eq!(started.elapsed(), 14 * MS);

    // Each call gets a fresh schedule from a clone of the builder.
    let db = conflicting(2);
    run(&db, &policy).await.unwrap();
    assert_eq!(sleeps(&db), ["sleep 7ms", "sleep 7ms"]);
    assert_eq!(db.attempts(), 3);
}

#[cfg(feature = "backon")]
#[tokio::test(start_paused = true)]
async fn backon_exponential_delays_are_used_as_given() {
    use backon::BackoffBuilder as _;

    let builder = backon::ExponentialBuilder::default()
        .with_min_delay(2 * MS)
        .with_factor(3.0)
        .with_max_times(5);
    // backon computes in f32 seconds; whatever it yields is what the loop sleeps.
    let want: Vec<String> = builder
        .build()
        .take(3)
        .map(|d| format!("sleep {d:?}"))
        .collect();
    let policy = Policy::builder()
        .max_attempts(4)
        .backoff(Backoff::from_backon(builder))
        .build()
        .unwrap();
    let db = conflicting(3);
    run(&db, &policy).await.unwrap();
    assert_eq!(sleeps(&db), want);
}

#[cfg(feature = "backoff")]
#[tokio::test(start_paused = true)]
async fn backoff_crate_exponential_without_jitter() {
    let schedule = backoff::ExponentialBackoff {
        initial_interval: 5 * MS,
        randomization_factor: 0.0,
        multiplier: 2.0,
        max_interval: 15 * MS,
        max_elapsed_time: None,
        ..Default::default()
    };
    let policy = Policy::builder()
        .max_attempts(5)
        .backoff(Backoff::from_backoff(schedule))
        .build()
        .unwrap();
    let db = conflicting(4);
    run(&db, &policy).await.unwrap();
    assert_eq!(
        sleeps(&db),
        ["sleep 5ms", "sleep 10ms", "sleep 15ms", "sleep 15ms"]
    );

    // A second call starts the schedule over (clone + reset per call).
    let db = conflicting(2);
    run(&db, &policy).await.unwrap();
    assert_eq!(sleeps(&db), ["sleep 5ms", "sleep 10ms"]);
}
