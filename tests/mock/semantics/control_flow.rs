//! `return` and `?` end the attempt, not the loop.

use super::*;

// ---------------------------------------------------------------------------------------------
// 12. `return` and `?` end the attempt, not the loop.
// ---------------------------------------------------------------------------------------------

#[serializable_retry(max = 3, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn two_steps(tx: &mut MockTx<i64>, stop_early: bool) -> Result<&'static str, sqlx::Error> {
    tx.execute("first")?;
    *tx.state_mut() += 1;
    if stop_early {
        return Ok("early");
    }
    tx.execute("second")?;
    *tx.state_mut() += 10;
    Ok("full")
}

#[tokio::test(start_paused = true)]
async fn early_return_commits_the_attempt() {
    let db = MockDb::new(0_i64);
    assert_eq!(two_steps(&db, true).await.unwrap(), "early");
    assert_eq!(db.script(), [BEGIN, "first", "COMMIT"]);
    assert_eq!(db.state(), 1);
}

#[tokio::test(start_paused = true)]
async fn question_mark_on_a_conflict_retries() {
    let db = MockDb::new(0_i64).fail(1, Phase::Statement(2), Fault::sqlstate("40001"));
    assert_eq!(two_steps(&db, false).await.unwrap(), "full");
    assert_eq!(
        script(&db),
        [
            BEGIN,
            "first",
            "second -> 40001",
            "ROLLBACK",
            SLEEP,
            BEGIN,
            "first",
            "second",
            "COMMIT"
        ]
    );
    assert_eq!(db.state(), 11, "the partial first attempt was rolled back");
}
