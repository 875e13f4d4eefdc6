//! After-commit effects: registered by the body, run once after the COMMIT that succeeded, never
//! for an attempt that rolled back or whose COMMIT failed or had an unknown outcome.
#![cfg(feature = "mock")]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use sqlx_retry::error::NoTransaction;
use sqlx_retry::mock::{Fault, MockDb, MockTx, Phase};
use sqlx_retry::{Policy, after_commit, serializable_retry, transaction};

/// What the effects did, in order: `"<label> after attempt <n>"`.
type Log = Arc<Mutex<Vec<String>>>;

fn log() -> Log {
    Arc::new(Mutex::new(Vec::new()))
}

fn entries(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

/// Registers an effect that records `label` and the committed state when it runs.
fn record(log: &Log, db: &MockDb<i64>, label: &str) -> Result<(), NoTransaction> {
    let (log, db, label) = (Arc::clone(log), db.clone(), label.to_owned());
    after_commit(async move {
        // Runs after COMMIT: the committed state is visible.
        let line = format!("{label}: state {}, {} attempts", db.state(), db.attempts());
        log.lock().unwrap().push(line);
    })
}

#[serializable_retry(max = 3, backoff(base = "1ms", cap = "4ms"))]
async fn place_order(
    tx: &mut MockTx<i64>,
    db: &MockDb<i64>,
    log: &Log,
) -> Result<i64, sqlx::Error> {
    tx.execute("INSERT INTO orders")?;
    *tx.state_mut() += 1;
    record(log, db, "email")?;
    Ok(*tx.state())
}

#[tokio::test(start_paused = true)]
async fn effect_runs_once_after_the_commit_that_succeeded() {
    let log = log();
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
    assert_eq!(place_order(&db, &db, &log).await.unwrap(), 1);
    assert_eq!(db.attempts(), 2);
    // Registered twice (once per attempt); attempt 1's was dropped with its failed COMMIT.
    assert_eq!(entries(&log), ["email: state 1, 2 attempts"]);
}

#[tokio::test(start_paused = true)]
async fn effect_of_a_rolled_back_attempt_is_dropped() {
    let log = log();
    // Attempt 1 registers its effect, then its second statement conflicts.
    let db = MockDb::new(0_i64).fail(1, Phase::Statement(2), Fault::sqlstate("40P01"));
    let out = transaction(&db, &Policy::default(), |tx| {
        let (log, db) = (Arc::clone(&log), db.clone());
        Box::pin(async move {
            tx.execute("INSERT INTO orders")?;
            record(&log, &db, &format!("attempt {}", tx.attempt()))?;
            tx.execute("UPDATE stock")?;
            Ok::<_, sqlx::Error>(())
        })
    })
    .await;
    out.unwrap();
    assert_eq!(db.attempts(), 2);
    assert_eq!(entries(&log), ["attempt 2: state 0, 2 attempts"]);
}

#[tokio::test(start_paused = true)]
async fn non_retryable_error_never_runs_the_effect() {
    let log = log();
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("23503"));
    let err = place_order(&db, &db, &log).await.unwrap_err();
    assert_eq!(sqlx_retry::error::sqlstate(&err).unwrap().as_str(), "23503");
    assert_eq!(db.attempts(), 1);
    assert!(entries(&log).is_empty());

    // An error from the body itself: rolled back, effect dropped.
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("22012"));
    place_order(&db, &db, &log).await.unwrap_err();
    assert_eq!(db.attempts(), 1);
    assert!(entries(&log).is_empty());
}

#[tokio::test(start_paused = true)]
async fn commit_with_unknown_outcome_never_runs_the_effect() {
    let log = log();
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::CommitReplyLost);
    let err = place_order(&db, &db, &log).await.unwrap_err();
    assert!(sqlx_retry::is_commit_unknown(&err));
    // The server did commit, but the loop cannot know it: no effect.
    assert_eq!(db.state(), 1);
    assert!(entries(&log).is_empty());
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_never_run_the_effect() {
    let log = log();
    let db = (1..=3).fold(MockDb::new(0_i64), |db, n| {
        db.fail(n, Phase::Commit, Fault::sqlstate("40001"))
    });
    place_order(&db, &db, &log).await.unwrap_err();
    assert_eq!(db.attempts(), 3);
    assert!(entries(&log).is_empty());
}

#[serializable_retry(max = 3, backoff(base = "1ms", cap = "4ms"))]
async fn reserve(
    tx: &mut MockTx<i64>,
    db: &MockDb<i64>,
    log: &Log,
    runs: &AtomicU32,
) -> Result<(), sqlx::Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    tx.execute("UPDATE stock")?;
    record(log, db, "inner")?;
    Ok(())
}

#[serializable_retry(max = 3, backoff(base = "1ms", cap = "4ms"))]
async fn checkout(
    tx: &mut MockTx<i64>,
    db: &MockDb<i64>,
    log: &Log,
    runs: &AtomicU32,
) -> Result<(), sqlx::Error> {
    tx.execute("INSERT INTO orders")?;
    reserve(&mut *tx, db, log, runs).await?; // joins this transaction
    *tx.state_mut() += 1;
    record(log, db, "outer")?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn nested_effects_run_once_after_the_outer_commit() {
    let log = log();
    let runs = AtomicU32::new(0);
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
    checkout(&db, &db, &log, &runs).await.unwrap();
    assert_eq!(db.attempts(), 2);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "inner body once per outer attempt"
    );
    // No BEGIN/COMMIT of the inner call; its effect waited for the outer COMMIT.
    let script: Vec<String> = db
        .script()
        .into_iter()
        .filter(|line| !line.starts_with("sleep"))
        .collect();
    assert_eq!(
        script,
        [
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "INSERT INTO orders",
            "UPDATE stock",
            "COMMIT -> 40001",
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "INSERT INTO orders",
            "UPDATE stock",
            "COMMIT",
        ]
    );
    assert_eq!(
        entries(&log),
        ["inner: state 1, 2 attempts", "outer: state 1, 2 attempts"]
    );
}

#[tokio::test(start_paused = true)]
async fn effects_of_a_failed_joined_call_are_dropped() {
    let log = log();
    // The joined call registers its effect, then fails without a database error (the
    // transaction stays usable); the outer body ignores the failure and commits.
    let db = MockDb::new(0_i64);
    transaction(&db, &Policy::default(), |tx| {
        let (log, db) = (Arc::clone(&log), db.clone());
        Box::pin(async move {
            tx.execute("INSERT INTO orders")?;
            let inner = transaction(&mut *tx, &Policy::default(), |_joined| {
                let (log, db) = (Arc::clone(&log), db.clone());
                Box::pin(async move {
                    record(&log, &db, "inner")?;
                    Err::<(), _>(sqlx::Error::RowNotFound)
                })
            })
            .await;
            assert!(inner.is_err());
            record(&log, &db, "outer")?;
            Ok::<_, sqlx::Error>(())
        })
    })
    .await
    .unwrap();
    assert_eq!(entries(&log), ["outer: state 0, 1 attempts"]);
}

/// A joined call whose statement failed has aborted the transaction: the outer body that
/// swallows its error does not commit (COMMIT reports `25P02`), so no effect runs at all.
/// (Before COMMIT of an aborted transaction was checked, the outer call returned `Ok`.)
#[tokio::test(start_paused = true)]
async fn no_effect_runs_when_a_swallowed_joined_error_aborted_the_transaction() {
    let log = log();
    let runs = Arc::new(AtomicU32::new(0));
    let db = MockDb::new(0_i64).fail(1, Phase::Statement(2), Fault::sqlstate("23505"));
    let err = transaction(&db, &Policy::default(), |tx| {
        let (log, db, runs) = (Arc::clone(&log), db.clone(), Arc::clone(&runs));
        Box::pin(async move {
            tx.execute("INSERT INTO orders")?;
            let inner = reserve(&mut *tx, &db, &log, &runs).await;
            assert!(inner.is_err());
            record(&log, &db, "outer")?;
            Ok::<_, sqlx::Error>(())
        })
    })
    .await
    .unwrap_err();
    assert_eq!(sqlx_retry::error::sqlstate(&err).unwrap().as_str(), "25P02");
    assert_eq!(db.attempts(), 1, "a 23505 is not a conflict: not retried");
    assert!(entries(&log).is_empty());
}

#[tokio::test]
async fn after_commit_outside_a_transaction_is_an_error() {
    let err = after_commit(async {}).unwrap_err();
    assert_eq!(err, NoTransaction::default());
    let as_sqlx = sqlx::Error::from(err);
    assert!(as_sqlx.to_string().contains("after_commit"));
}

#[tokio::test(start_paused = true)]
async fn effects_run_in_registration_order() {
    let log = log();
    let db = MockDb::new(0_i64);
    transaction(&db, &Policy::default(), |tx| {
        let log = Arc::clone(&log);
        Box::pin(async move {
            tx.execute("work")?;
            for i in 0..3 {
                let log = Arc::clone(&log);
                after_commit(async move { log.lock().unwrap().push(format!("effect {i}")) })?;
            }
            Ok::<_, sqlx::Error>(())
        })
    })
    .await
    .unwrap();
    assert_eq!(entries(&log), ["effect 0", "effect 1", "effect 2"]);
}
