//! A failed ROLLBACK never replaces the original error.

use super::*;

// ---------------------------------------------------------------------------------------------
// 9. A failed ROLLBACK never replaces the original error.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn failed_rollback_keeps_the_original_error() {
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Body, Fault::sqlstate("23505"))
        .fail(1, Phase::Rollback, Fault::ConnectionLost);
    let err = bump(&db, 1).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::UNIQUE_VIOLATION), "{err}");
    assert_eq!(
        db.script(),
        [BEGIN, "bump -> 23505", "ROLLBACK -> connection lost"]
    );

    let db = MockDb::new(0_i64)
        .fail(1, Phase::Body, Fault::sqlstate("23505"))
        .fail(1, Phase::Rollback, Fault::sqlstate("08006"));
    let err = bump(&db, 1).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::UNIQUE_VIOLATION), "{err}");
    assert_eq!(db.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn failed_rollback_after_a_conflict_is_still_retried() {
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Body, Fault::sqlstate("40001"))
        .fail(1, Phase::Rollback, Fault::ConnectionLost);
    assert_eq!(bump(&db, 1).await.unwrap(), 1);
    assert_eq!(db.state(), 1);
    assert_eq!(
        script(&db),
        [
            BEGIN,
            "bump -> 40001",
            "ROLLBACK -> connection lost",
            SLEEP,
            BEGIN,
            "bump",
            "COMMIT"
        ]
    );
}
