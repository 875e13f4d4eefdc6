//! The attribute's expansion against the mock source.
use std::time::Duration;

use sqlx_retry::mock::{Fault, MockDb, MockTx, Phase};
use sqlx_retry::serializable_retry;

#[serializable_retry(max = 3, backoff(base = "1ms", cap = "4ms"))]
async fn bump(tx: &mut MockTx<i64>, by: i64) -> Result<i64, sqlx::Error> {
    tx.execute("bump")?;
    *tx.state_mut() += by;
    Ok(*tx.state())
}

#[tokio::test(start_paused = true)]
async fn retries_commit_conflict() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
    assert_eq!(bump(&db, 2).await.unwrap(), 2);
    assert_eq!(db.state(), 2);
    assert_eq!(db.attempts(), 2);
}

#[tokio::test]
async fn is_send() {
    let db = MockDb::new(0_i64);
    let h = tokio::spawn(async move { bump(&db, 1).await });
    assert_eq!(h.await.unwrap().unwrap(), 1);
    let _ = Duration::ZERO;
}
