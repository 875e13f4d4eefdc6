//! The plain API: `transaction` and `transaction_with`.

use super::*;

// ---------------------------------------------------------------------------------------------
// 14. The plain API.
// ---------------------------------------------------------------------------------------------

/// The hook is told a conflict kind only for conflicts: a retried lost connection (`57P01`,
/// backend terminated) is not one, even though its error carries a SQLSTATE.
#[tokio::test(start_paused = true)]
async fn on_retry_hook_gets_a_conflict_kind_only_for_conflicts() {
    type Seen = Vec<(String, Option<ConflictKind>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let policy = Policy::builder()
        .backoff(Backoff::fixed(ms(1)))
        .on_retry({
            let seen = Arc::clone(&seen);
            move |info| {
                let code = info.sqlstate.map(|c| c.to_string()).unwrap_or_default();
                seen.lock().unwrap().push((code, info.conflict));
            }
        })
        .build()
        .unwrap();
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Begin, Fault::sqlstate("57P01"))
        .fail(2, Phase::Body, Fault::sqlstate("40P01"));
    sqlx_retry::transaction(&db, &policy, |tx| {
        Box::pin(async move { tx.execute("bump") })
    })
    .await
    .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (String::new(), None),
            ("40P01".to_owned(), Some(ConflictKind::Deadlock)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn plain_api_exact_script_and_on_retry_hook() {
    let calls: Arc<Mutex<Vec<(RetryInfo, Instant)>>> = Arc::default();
    let policy = Policy::builder()
        .max_attempts(4)
        .backoff(Backoff::fixed(ms(5)))
        .on_retry({
            let calls = Arc::clone(&calls);
            move |info| calls.lock().unwrap().push((info.clone(), Instant::now()))
        })
        .build()
        .unwrap();
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Commit, Fault::sqlstate("40001"))
        .fail(2, Phase::Body, Fault::sqlstate("40P01"));
    let started = Instant::now();
    let runs = AtomicU32::new(0);
    let runs = &runs;
    let n = sqlx_retry::transaction(&db, &policy, |tx| {
        runs.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tx.execute("bump")?;
            *tx.state_mut() += 1;
            Ok::<_, sqlx::Error>(*tx.state())
        })
    })
    .await
    .unwrap();
    assert_eq!(n, 1);
    assert_eq!(db.state(), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(
        db.script(),
        [
            BEGIN,
            "bump",
            "COMMIT -> 40001",
            "sleep 5ms",
            BEGIN,
            "bump -> 40P01",
            "ROLLBACK",
            "sleep 5ms",
            BEGIN,
            "bump",
            "COMMIT",
        ]
    );
    assert_eq!(started.elapsed(), ms(10));

    let calls = calls.lock().unwrap();
    let got: Vec<_> = calls
        .iter()
        .map(|(info, at)| {
            (
                info.name,
                info.attempt,
                info.sqlstate,
                info.delay,
                *at - started,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            // Called before the sleep: the first at 0ms, the second after one 5ms sleep.
            (
                "transaction",
                1,
                Some(SqlState::SERIALIZATION_FAILURE),
                ms(5),
                ms(0)
            ),
            (
                "transaction",
                2,
                Some(SqlState::DEADLOCK_DETECTED),
                ms(5),
                ms(5)
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn plain_api_exhaustion_is_exact() {
    let policy = Policy::builder()
        .max_attempts(3)
        .backoff(Backoff::fixed(ms(5)))
        .build()
        .unwrap();
    let db = failing(1..=3, Phase::Body, "40001");
    let err = sqlx_retry::transaction(&db, &policy, |tx| {
        Box::pin(async move {
            tx.execute("bump")?;
            Ok::<_, sqlx::Error>(())
        })
    })
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::SERIALIZATION_FAILURE));
    assert_eq!(
        db.script(),
        [
            BEGIN,
            "bump -> 40001",
            "ROLLBACK",
            "sleep 5ms",
            BEGIN,
            "bump -> 40001",
            "ROLLBACK",
            "sleep 5ms",
            BEGIN,
            "bump -> 40001",
            "ROLLBACK",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn plain_api_custom_backoff_that_ends_stops_retrying() {
    let policy = Policy::builder()
        .max_attempts(10)
        .backoff(Backoff::from_fn(|| [ms(1), ms(2)].into_iter()))
        .build()
        .unwrap();
    let db = failing(1..=10, Phase::Commit, "40001");
    let err = sqlx_retry::transaction(&db, &policy, |tx| {
        Box::pin(async move {
            tx.execute("bump")?;
            Ok::<_, sqlx::Error>(())
        })
    })
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::SERIALIZATION_FAILURE));
    assert_eq!(db.attempts(), 3);
    assert_eq!(sleeps(&db), [ms(1), ms(2)]);
}

#[tokio::test(start_paused = true)]
async fn plain_api_transaction_with_anyhow() {
    let policy = Policy::builder()
        .backoff(Backoff::fixed(ms(1)))
        .build()
        .unwrap();
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("40001"));
    let n = sqlx_retry::transaction_with(
        &db,
        &policy,
        |e: &anyhow::Error| Some(e.as_ref()),
        |tx| {
            Box::pin(async move {
                tx.execute("bump").context("bump")?;
                *tx.state_mut() += 1;
                Ok::<_, anyhow::Error>(*tx.state())
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    assert_eq!(db.attempts(), 2);
}
