//! The limits of a call: attempts and the time budget.

use super::*;

// ---------------------------------------------------------------------------------------------
// 5. Exhaustion.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn exhaustion_returns_the_last_conflict_after_max_attempts() {
    let db = failing(1..=3, Phase::Commit, "40001");
    let err = bump3(&db).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::SERIALIZATION_FAILURE));
    assert_eq!(db.attempts(), 3);
    assert_eq!(db.state(), 0);
    assert_eq!(
        script(&db),
        [
            BEGIN,
            "bump",
            "COMMIT -> 40001",
            SLEEP,
            BEGIN,
            "bump",
            "COMMIT -> 40001",
            SLEEP,
            BEGIN,
            "bump",
            "COMMIT -> 40001",
        ]
    );
    assert_jittered(&db, ms(1), ms(4));
}

#[tokio::test(start_paused = true)]
async fn exhaustion_returns_the_last_error_not_the_first() {
    // 40P01, then 40001: the caller sees the last one.
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Body, Fault::sqlstate("40P01"))
        .fail(2, Phase::Body, Fault::sqlstate("40001"));
    let err = bump2(&db).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::SERIALIZATION_FAILURE));
}

// ---------------------------------------------------------------------------------------------
// 6. Time budget.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn time_budget_stops_early_within_the_budget() {
    // Jitter makes each run different: check many.
    for run in 0..200 {
        let db = failing(1..=100, Phase::Commit, "40001");
        let started = Instant::now();
        let err = bump_budgeted(&db).await.unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(
            sqlstate(&err),
            Some(SqlState::SERIALIZATION_FAILURE),
            "run {run}"
        );
        let attempts = db.attempts();
        // The first delay is at most 40ms < 50ms, so there is always a second attempt; the
        // budget ends the call long before `max = 100`.
        assert!(
            (2..100).contains(&attempts),
            "run {run}: {attempts} attempts"
        );
        assert!(elapsed <= ms(50), "run {run}: {elapsed:?}");
        let slept: Duration = sleeps(&db).iter().sum();
        assert!(
            slept <= elapsed,
            "run {run}: slept {slept:?} in {elapsed:?}"
        );
        assert_eq!(sleeps(&db).len() as u32, attempts - 1, "run {run}");
        assert_jittered(&db, ms(40), ms(40));
    }
}

#[tokio::test(start_paused = true)]
async fn time_budget_is_exact_with_a_fixed_backoff() {
    // 0ms: attempt 1; 20ms: attempt 2; 40ms: attempt 3; a third sleep would end at 60ms > 50ms.
    let policy = Policy::builder()
        .max_attempts(100)
        .budget(ms(50))
        .backoff(Backoff::fixed(ms(20)))
        .build()
        .unwrap();
    let db = failing(1..=100, Phase::Commit, "40001");
    let started = Instant::now();
    let err = sqlx_retry::transaction(&db, &policy, |tx| {
        Box::pin(async move {
            tx.execute("bump")?;
            Ok::<_, sqlx::Error>(())
        })
    })
    .await
    .unwrap_err();
    assert_eq!(started.elapsed(), ms(40));
    assert_eq!(sqlstate(&err), Some(SqlState::SERIALIZATION_FAILURE));
    assert_eq!(db.attempts(), 3);
    assert_eq!(sleeps(&db), [ms(20), ms(20)]);
}

#[tokio::test(start_paused = true)]
async fn time_budget_counts_the_timer_rounding_sleeps_up() {
    // tokio's timer fires on whole milliseconds: each 1.3 ms sleep lasts until the next tick.
    // At 8 ms a fifth sleep would be asked to end at 9.3 ms, inside the 9.5 ms budget, but would
    // really end at 10 ms; so the call gives up at 8 ms instead.
    let policy = Policy::builder()
        .max_attempts(100)
        .budget(Duration::from_micros(9_500))
        .backoff(Backoff::fixed(Duration::from_micros(1_300)))
        .build()
        .unwrap();
    let db = failing(1..=100, Phase::Commit, "40001");
    let started = Instant::now();
    sqlx_retry::transaction(&db, &policy, |tx| {
        Box::pin(async move {
            tx.execute("bump")?;
            Ok::<_, sqlx::Error>(())
        })
    })
    .await
    .unwrap_err();
    assert!(
        started.elapsed() <= Duration::from_micros(9_500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(db.attempts(), 5);
}
