//! The savepoint protocol against the mock: the exact statements, the rerun in place, the fall
//! back to a full restart, and what `RELEASE SAVEPOINT` failing means.
#![cfg(feature = "mock")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use sqlx_retry::error::{TransactionAborted, sqlstate};
use sqlx_retry::mock::{Fault, MockDb, MockTx, Phase};
use sqlx_retry::{Backoff, Policy, RetryInfo, SqlState, is_commit_unknown, transaction};

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

const MS: Duration = Duration::from_millis(1);

/// The attempt and delay of each retry, as the `on_retry` hook saw them.
type Delays = Arc<Mutex<Vec<(u32, Duration)>>>;

/// [`policy`] with `inside` as the savepoint backoff, a time budget when given, and the delay
/// of each retry as the `on_retry` hook reports it.
fn policy_inside(max: u32, inside: Backoff, budget: Option<Duration>) -> (Policy, Delays) {
    let seen: Delays = Arc::default();
    let hook = Arc::clone(&seen);
    let mut builder = Policy::builder()
        .max_attempts(max)
        .savepoint(Policy::DEFAULT_SAVEPOINT)
        .savepoint_backoff(inside)
        .backoff(Backoff::fixed(5 * MS))
        .on_retry(move |info: &RetryInfo| hook.lock().unwrap().push((info.attempt, info.delay)));
    if let Some(budget) = budget {
        builder = builder.budget(budget);
    }
    (builder.build().unwrap(), seen)
}

#[tokio::test(start_paused = true)]
async fn by_default_the_rerun_inside_the_savepoint_does_not_wait() {
    let policy = policy(5);
    assert_eq!(
        format!("{:?}", policy.savepoint_backoff()),
        format!("{:?}", Policy::DEFAULT_SAVEPOINT_BACKOFF)
    );
    assert_eq!(policy.savepoint_backoff().max_delay(), Some(Duration::ZERO));
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("40001"));
    let started = Instant::now();
    assert_eq!(bump(&db, &policy).await.unwrap(), 1);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(!db.script().iter().any(|s| s.starts_with("sleep")));
}

#[tokio::test(start_paused = true)]
async fn the_savepoint_backoff_sleeps_after_rollback_to_and_before_the_rerun() {
    let (policy, seen) = policy_inside(5, Backoff::fixed(3 * MS), None);
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("40001"));
    let started = Instant::now();
    assert_eq!(bump(&db, &policy).await.unwrap(), 1);
    assert_eq!(started.elapsed(), 3 * MS);
    assert_eq!(db.attempts(), 1, "one transaction");
    assert_eq!(
        db.script(),
        [
            BEGIN,
            SAVEPOINT,
            "bump -> 40001",
            ROLLBACK_TO,
            "sleep 3ms",
            "bump",
            RELEASE,
            "COMMIT"
        ]
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [(1, 3 * MS)],
        "the hook reports the wait"
    );
}

#[tokio::test(start_paused = true)]
async fn savepoint_delays_follow_their_own_sequence_and_its_end_restarts_instead() {
    // Transactions 1 and 2 are doomed (their rerun fails too), transaction 3 conflicts once:
    // the reruns take the savepoint sequence's delays in order, the restarts the main backoff's,
    // and once the custom sequence has ended a conflict restarts without a rerun in place.
    let inside = Backoff::from_fn(|| [3 * MS, 7 * MS].into_iter());
    let (policy, seen) = policy_inside(10, inside, None);
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Body, Fault::sqlstate("40001"))
        .fail(1, Phase::Body, Fault::sqlstate("40001"))
        .fail(2, Phase::Body, Fault::sqlstate("40001"))
        .fail(2, Phase::Body, Fault::sqlstate("40001"))
        .fail(3, Phase::Body, Fault::sqlstate("40001"));
    let started = Instant::now();
    assert_eq!(bump(&db, &policy).await.unwrap(), 1);
    assert_eq!(started.elapsed(), (3 + 5 + 7 + 5 + 5) * MS);
    assert_eq!(
        db.script(),
        [
            BEGIN,
            SAVEPOINT,
            "bump -> 40001",
            ROLLBACK_TO,
            "sleep 3ms",
            "bump -> 40001",
            "ROLLBACK",
            "sleep 5ms",
            BEGIN,
            SAVEPOINT,
            "bump -> 40001",
            ROLLBACK_TO,
            "sleep 7ms",
            "bump -> 40001",
            "ROLLBACK",
            "sleep 5ms",
            BEGIN,
            SAVEPOINT,
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
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (1, 3 * MS),
            (2, 5 * MS),
            (3, 7 * MS),
            (4, 5 * MS),
            (5, 5 * MS)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_time_budget_counts_the_sleep_inside_the_savepoint() {
    // 0 ms: run 1 conflicts; a 20 ms wait inside fits the 30 ms budget. 20 ms: the rerun
    // conflicts; the 5 ms restart fits. 25 ms: run 3 conflicts; another 20 ms wait inside would
    // end past the budget, so the call gives up.
    let (policy, seen) = policy_inside(10, Backoff::fixed(20 * MS), Some(30 * MS));
    let db = (0..3).fold(MockDb::new(0_i64), |db, n| {
        db.fail(1 + n / 2, Phase::Body, Fault::sqlstate("40001"))
    });
    let started = Instant::now();
    let err = bump(&db, &policy).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::SERIALIZATION_FAILURE));
    assert_eq!(started.elapsed(), 25 * MS);
    assert_eq!(
        db.script(),
        [
            BEGIN,
            SAVEPOINT,
            "bump -> 40001",
            ROLLBACK_TO,
            "sleep 20ms",
            "bump -> 40001",
            "ROLLBACK",
            "sleep 5ms",
            BEGIN,
            SAVEPOINT,
            "bump -> 40001",
            ROLLBACK_TO,
            "ROLLBACK"
        ]
    );
    assert_eq!(*seen.lock().unwrap(), [(1, 20 * MS), (2, 5 * MS)]);
    assert_eq!(db.state(), 0);
}

/// The words of the `RESERVED` list in `src`, the source of one of the two crates.
fn reserved_words(src: &str) -> Vec<&str> {
    let start = src
        .find("const RESERVED: &[&str] = &[")
        .expect("the source defines RESERVED");
    let list = &src[start..];
    let list = &list[..list.find("];").expect("RESERVED ends")];
    list.split('"').skip(1).step_by(2).collect()
}

/// The attribute checks a savepoint name at compile time (`sqlx-retry-macros`) and the builder at
/// run time (`sqlx-retry-core`); a proc-macro crate cannot call the core's check, so each keeps
/// PostgreSQL's reserved words. The two lists must be one list, and the builder must refuse
/// every word of it.
#[test]
fn the_attribute_and_the_builder_refuse_the_same_reserved_words() {
    let attribute = reserved_words(include_str!("../../retry-macros/src/attr.rs"));
    let builder = reserved_words(include_str!("../../retry-core/src/policy.rs"));
    assert!(builder.len() > 50, "only {} words read", builder.len());
    assert_eq!(attribute, builder);
    for word in builder {
        for name in [word.to_string(), word.to_ascii_uppercase()] {
            assert!(
                matches!(
                    Policy::builder().savepoint(name.clone()).build(),
                    Err(sqlx_retry::PolicyError::InvalidSavepoint(_))
                ),
                "the builder accepted the reserved word {name:?}"
            );
        }
    }
}
