//! The returned future is `Send`.

use super::*;

// ---------------------------------------------------------------------------------------------
// 15. The returned future is Send.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_future_is_send_and_spawnable() {
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Commit, Fault::sqlstate("40001"))
        .fail(2, Phase::Body, Fault::ConnectionLost);
    let handle = tokio::spawn({
        let db = db.clone();
        async move { bump(&db, 3).await }
    });
    assert_eq!(handle.await.unwrap().unwrap(), 3);
    assert_eq!(db.state(), 3);
    assert_eq!(db.attempts(), 3);

    // A wrapping error type and a generic helper in the body are Send too. (One task at a time:
    // the mock does not isolate concurrent transactions, see
    // `mock_detects_concurrent_write_conflicts`.)
    for _ in 0..4 {
        let db = db.clone();
        tokio::spawn(async move { with_nested(&db).await })
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(db.state(), 3 + 4);
}
