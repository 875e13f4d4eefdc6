//! Cancellation: the returned future is dropped at each await point (BEGIN, body, COMMIT,
//! backoff sleep). Afterwards no session of the test's pool is left idle in transaction, the pool
//! is whole and usable, and nothing of the cancelled work is committed (except for a COMMIT that
//! had already been sent: its outcome is the server's, as with a commit-unknown error).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::common::{eventually, idle_in_transaction, unique_app};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use sqlx_retry::{Backoff, Policy, serializable_retry, transaction};
use sqlx_retry_testkit::{Fault, Isolated, Matcher, PgProxy, isolated_schema};
use tokio::sync::Notify;

const POOL: u32 = 3;

struct Env {
    isolated: Isolated,
    proxy: PgProxy,
    pool: PgPool,
    direct: PgPool,
    app: String,
}

async fn env(prefix: &str) -> Env {
    let isolated = isolated_schema().await;
    let direct = isolated.pool(2).await;
    sqlx::raw_sql("CREATE TABLE items (id bigint PRIMARY KEY, v text NOT NULL)")
        .execute(&direct)
        .await
        .unwrap();
    let proxy = PgProxy::for_test_db().await;
    let app = unique_app(prefix);
    let pool = PgPoolOptions::new()
        .max_connections(POOL)
        .min_connections(POOL)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(isolated.proxied_options(&proxy).application_name(&app))
        .await
        .unwrap();
    // Wait for min_connections so that `size()` is stable.
    assert!(eventually(Duration::from_secs(10), || async { pool.size() == POOL }).await);
    Env {
        isolated,
        proxy,
        pool,
        direct,
        app,
    }
}

#[serializable_retry(max = 3, backoff(base = "1ms", cap = "5ms"))]
async fn insert_item(tx: &mut PgConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO items (id, v) VALUES ($1, 'x')")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[serializable_retry(max = 3, backoff(base = "1ms", cap = "5ms"))]
async fn insert_then_sleep(tx: &mut PgConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO items (id, v) VALUES ($1, 'x')")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_sleep(5) /* cancel-me */")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn rows(direct: &PgPool, id: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM items WHERE id = $1")
        .bind(id)
        .fetch_one(direct)
        .await
        .unwrap()
}

/// After a cancellation: no session idle in transaction, every connection back in the pool and
/// usable, and a later call succeeds.
async fn assert_clean_and_usable(env: &Env, settle: Duration, next_id: i64) {
    let pool = &env.pool;
    assert!(
        eventually(settle, || async { pool.num_idle() == pool.size() as usize }).await,
        "connections did not come back to the pool: size {} idle {}",
        pool.size(),
        pool.num_idle()
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            idle_in_transaction(&env.direct, &env.app).await == 0
        })
        .await,
        "a session of the pool is idle in transaction"
    );
    // Every pooled connection is usable: hold them all at once and run a statement on each.
    let mut held = Vec::new();
    for _ in 0..pool.size() {
        let mut conn = pool.acquire().await.unwrap();
        // SAVEPOINT succeeds only inside a transaction block.
        let in_tx = sqlx::raw_sql("SAVEPOINT reliability_probe")
            .execute(&mut *conn)
            .await
            .is_ok();
        assert!(!in_tx, "a pooled connection is inside a transaction");
        held.push(conn);
    }
    drop(held);
    insert_item(pool, next_id)
        .await
        .expect("a call after the cancellation succeeds");
    assert_eq!(rows(&env.direct, next_id).await, 1);
    assert!(
        eventually(Duration::from_secs(5), || async {
            pool.num_idle() == pool.size() as usize
        })
        .await
    );
    assert_eq!(idle_in_transaction(&env.direct, &env.app).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_inside_begin() {
    let env = env("cancel_begin").await;
    let delay = env.proxy.arm(Fault::DelayBeforeForwarding(
        Matcher::QueryStartsWith("BEGIN"),
        Duration::from_millis(500),
    ));
    let out = tokio::time::timeout(Duration::from_millis(100), insert_item(&env.pool, 1)).await;
    assert!(out.is_err(), "the call should still be waiting for BEGIN");
    assert!(delay.fired(), "BEGIN was sent and held by the proxy");
    // Let the held BEGIN reach the server before checking the session state.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_clean_and_usable(&env, Duration::from_secs(5), 2).await;
    assert_eq!(rows(&env.direct, 1).await, 0);
    let _ = &env.isolated;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_in_the_body() {
    let env = env("cancel_body").await;
    let mut call = Box::pin(insert_then_sleep(&env.pool, 1));
    // Drop the call once the server is inside pg_sleep(5).
    let direct = env.direct.clone();
    let app = env.app.clone();
    let sleeping = async move {
        eventually(Duration::from_secs(10), || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                 AND state = 'active' AND query LIKE '%cancel-me%'",
            )
            .bind(&app)
            .fetch_one(&direct)
            .await
            .unwrap();
            n == 1
        })
        .await
    };
    tokio::select! {
        out = &mut call => panic!("the call finished: {out:?}"),
        seen = sleeping => assert!(seen, "the body never reached pg_sleep"),
    }
    let _ = tokio::time::timeout(Duration::from_millis(200), &mut call).await;
    drop(call);
    // sqlx does not send a CancelRequest: the connection comes back after pg_sleep(5) ends
    // and the queued ROLLBACK ran.
    assert_clean_and_usable(&env, Duration::from_secs(10), 2).await;
    assert_eq!(
        rows(&env.direct, 1).await,
        0,
        "the cancelled INSERT was rolled back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_during_commit() {
    let env = env("cancel_commit").await;
    let delay = env.proxy.arm(Fault::DelayBeforeForwarding(
        Matcher::QueryContains("COMMIT"),
        Duration::from_millis(500),
    ));
    let mut call = Box::pin(insert_item(&env.pool, 1));
    tokio::select! {
        out = &mut call => panic!("the call finished: {out:?}"),
        fired = delay.wait_fired(Duration::from_secs(10)) => assert!(fired),
    }
    drop(call);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_clean_and_usable(&env, Duration::from_secs(5), 2).await;
    // The COMMIT had left the client: the server decides. Here it was forwarded, so it landed,
    // exactly once.
    assert_eq!(rows(&env.direct, 1).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_during_backoff_sleep() {
    let env = env("cancel_backoff").await;
    let in_backoff = Arc::new(Notify::new());
    let retries = Arc::new(AtomicU64::new(0));
    let (n, r) = (Arc::clone(&in_backoff), Arc::clone(&retries));
    let policy = Policy::builder()
        .max_attempts(3)
        .backoff(Backoff::fixed(Duration::from_secs(2)))
        .on_retry(move |_| {
            r.fetch_add(1, Ordering::Relaxed);
            n.notify_one();
        })
        .build()
        .unwrap();
    let body_runs = Arc::new(AtomicU64::new(0));
    let runs = Arc::clone(&body_runs);
    let mut call = Box::pin(transaction(&env.pool, &policy, move |tx| {
        let runs = Arc::clone(&runs);
        Box::pin(async move {
            runs.fetch_add(1, Ordering::Relaxed);
            sqlx::query("INSERT INTO items (id, v) VALUES (1, 'x')")
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql("DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40001'; END $$")
                .execute(&mut *tx)
                .await?;
            Ok::<_, sqlx::Error>(())
        })
    }));
    tokio::select! {
        out = &mut call => panic!("the call finished: {out:?}"),
        _ = in_backoff.notified() => {}
    }
    // Now sleeping the 2 s backoff; drop it 300 ms in.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut call)
            .await
            .is_err()
    );
    drop(call);
    assert_eq!(retries.load(Ordering::Relaxed), 1);
    assert_eq!(
        body_runs.load(Ordering::Relaxed),
        1,
        "no second attempt started"
    );
    assert_clean_and_usable(&env, Duration::from_secs(5), 2).await;
    assert_eq!(rows(&env.direct, 1).await, 0);
}
