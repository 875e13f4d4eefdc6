//! Conflicts are retried: `40001` at COMMIT and `40P01` in the body.

use super::*;

// ---------------------------------------------------------------------------------------------
// 1. 40001 at COMMIT.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn conflict_at_commit_is_retried_without_a_rollback() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
    assert_eq!(bump(&db, 2).await.unwrap(), 2);
    assert_eq!(db.state(), 2, "applied once");
    // No ROLLBACK after the failed COMMIT: the server already ended the transaction.
    assert_eq!(
        script(&db),
        [
            BEGIN,
            "bump",
            "COMMIT -> 40001",
            SLEEP,
            BEGIN,
            "bump",
            "COMMIT"
        ]
    );
    assert_jittered(&db, ms(1), ms(4));
}

// ---------------------------------------------------------------------------------------------
// 2. 40P01 in the body.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn deadlock_in_the_body_rolls_back_and_reruns_the_whole_body() {
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("40P01"));
    let runs = AtomicU32::new(0);
    assert_eq!(bump_counted(&db, &runs).await.unwrap(), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the whole body ran twice");
    assert_eq!(db.state(), 1, "applied once");
    assert_eq!(
        script(&db),
        [
            BEGIN,
            "bump -> 40P01",
            "ROLLBACK",
            SLEEP,
            BEGIN,
            "bump",
            "COMMIT"
        ]
    );
    assert_jittered(&db, ms(1), ms(4));
}
