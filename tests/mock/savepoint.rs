//! The savepoint protocol against the mock: the exact statements, the rerun in place, the fall
//! back to a full restart, and what `RELEASE SAVEPOINT` failing means.
#![cfg(feature = "mock")]

use std::time::Duration;

use sqlx_retry::error::{TransactionAborted, sqlstate};
use sqlx_retry::mock::{Fault, MockDb, MockTx, Phase};
use sqlx_retry::{Backoff, Policy, SqlState, is_commit_unknown, transaction};

const BEGIN: &str = "BEGIN ISOLATION LEVEL SERIALIZABLE";
const SAVEPOINT: &str = "SAVEPOINT cockroach_restart";
const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT cockroach_restart";
const RELEASE: &str = "RELEASE SAVEPOINT cockroach_restart";

fn policy(max: u32) -> Policy {
    Policy::builder()
        .max_attempts(max)
        .savepoint(Policy::DEFAULT_SAVEPOINT)
        .backoff(Backoff::fixed(Duration::from_millis(5)))
        .build()
        .unwrap()
}

async fn bump(db: &MockDb<i64>, policy: &Policy) -> Result<i64, sqlx::Error> {
    transaction(db, policy, |tx: &mut MockTx<i64>| {
        Box::pin(async move {
            tx.execute("bump")?;
            *tx.state_mut() += 1;
            Ok(*tx.state())
        })
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_conflict_in_the_body_reruns_it_in_the_same_transaction_without_sleeping() {
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("40001"));
    assert_eq!(bump(&db, &policy(5)).await.unwrap(), 1);
    assert_eq!(db.attempts(), 1, "one transaction");
    assert_eq!(
        db.script(),
        [
            BEGIN,
            SAVEPOINT,
            "bump -> 40001",
            ROLLBACK_TO,
            "bump",
            RELEASE,
            "COMMIT"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_conflict_in_the_rerun_falls_back_to_a_full_restart_with_backoff() {
    // A doomed transaction (PostgreSQL's serialization failure victim): the rerun fails too.
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Body, Fault::sqlstate("40001"))
        .fail(1, Phase::Body, Fault::sqlstate("40001"));
    assert_eq!(bump(&db, &policy(5)).await.unwrap(), 1);
    assert_eq!(db.attempts(), 2);
    assert_eq!(
        db.script(),
        [
            BEGIN,
            SAVEPOINT,
            "bump -> 40001",
            ROLLBACK_TO,
            "bump -> 40001",
            "ROLLBACK",
            "sleep 5ms",
            BEGIN,
            SAVEPOINT,
            "bump",
            RELEASE,
            "COMMIT"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn every_run_counts_towards_max_attempts() {
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Body, Fault::sqlstate("40001"))
        .fail(1, Phase::Body, Fault::sqlstate("40001"));
    let err = bump(&db, &policy(2)).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::SERIALIZATION_FAILURE));
    assert_eq!(
        db.script(),
        [
            BEGIN,
            SAVEPOINT,
            "bump -> 40001",
            ROLLBACK_TO,
            "bump -> 40001",
            "ROLLBACK"
        ]
    );
    assert_eq!(db.state(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_conflict_at_release_reruns_the_body_in_place() {
    let db = MockDb::new(0_i64).fail(1, Phase::Release, Fault::sqlstate("40001"));
    assert_eq!(bump(&db, &policy(5)).await.unwrap(), 1);
    assert_eq!(db.state(), 1, "applied once");
    assert_eq!(
        db.script(),
        [
            BEGIN,
            SAVEPOINT,
            "bump",
            "RELEASE SAVEPOINT cockroach_restart -> 40001",
            ROLLBACK_TO,
            "bump",
            RELEASE,
            "COMMIT"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_40003_at_release_is_commit_unknown_after_one_attempt() {
    let db = MockDb::new(0_i64).fail(1, Phase::Release, Fault::sqlstate("40003"));
    let err = bump(&db, &policy(5)).await.unwrap_err();
    assert!(is_commit_unknown(&err), "{err}");
    assert_eq!(
        db.script(),
        [
            BEGIN,
            SAVEPOINT,
            "bump",
            "RELEASE SAVEPOINT cockroach_restart -> 40003",
            "ROLLBACK"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_lost_during_release_is_commit_unknown() {
    // CockroachDB commits at RELEASE: its reply lost means the outcome is unknown.
    let db = MockDb::new(0_i64).fail(1, Phase::Release, Fault::CommitReplyLost);
    let err = bump(&db, &policy(5)).await.unwrap_err();
    assert!(is_commit_unknown(&err), "{err}");
    assert_eq!(db.attempts(), 1);
    assert_eq!(db.state(), 1, "the release landed");
}

#[tokio::test(start_paused = true)]
async fn a_swallowed_error_is_caught_by_release_and_nothing_commits() {
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("23505"));
    let err = transaction(&db, &policy(5), |tx: &mut MockTx<i64>| {
        Box::pin(async move {
            let _ignored = tx.execute("insert");
            *tx.state_mut() += 1;
            Ok::<_, sqlx::Error>(())
        })
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, sqlx::Error::Database(db) if db.as_error().is::<TransactionAborted>()),
        "{err}"
    );
    assert_eq!(db.state(), 0);
    assert_eq!(
        db.script(),
        [
            BEGIN,
            SAVEPOINT,
            "insert -> 23505",
            "RELEASE SAVEPOINT cockroach_restart -> 25P02",
            "ROLLBACK"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_in_the_body_is_returned_after_one_run() {
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("23505"));
    let err = bump(&db, &policy(5)).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::UNIQUE_VIOLATION));
    assert_eq!(db.script(), [BEGIN, SAVEPOINT, "bump -> 23505", "ROLLBACK"]);
}

/// The attribute's `savepoint = "name"`: the same protocol under another name, and a `&mut`
/// argument restored before the rerun in place.
#[sqlx_retry::serializable_retry(savepoint = "my_restart", max = 3)]
async fn bump_named(tx: &mut MockTx<i64>, runs: &mut Vec<u32>) -> Result<i64, sqlx::Error> {
    runs.push(tx.attempt());
    tx.execute("bump")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

#[tokio::test(start_paused = true)]
async fn the_attribute_names_its_savepoint_and_restores_mut_arguments_before_a_rerun() {
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("40P01"));
    let mut runs = Vec::new();
    assert_eq!(bump_named(&db, &mut runs).await.unwrap(), 1);
    assert_eq!(
        runs,
        [1],
        "the failed run's push was undone; the rerun is in transaction 1"
    );
    assert_eq!(
        db.script(),
        [
            BEGIN,
            "SAVEPOINT my_restart",
            "bump -> 40P01",
            "ROLLBACK TO SAVEPOINT my_restart",
            "bump",
            "RELEASE SAVEPOINT my_restart",
            "COMMIT"
        ]
    );
}
