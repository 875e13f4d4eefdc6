//! Priority turns are on by default: with the attribute's defaults (5 attempts, the adaptive
//! backoff, priority after 2 failed attempts), calls that all read and write the same row at
//! SERIALIZABLE never run out of attempts. Without the turns the same calls did, a few in a
//! hundred at 4 clients (BENCHMARKS.md §5 measures both).

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

const TASKS: usize = 4;
const CALLS: usize = 250;

/// Reads the one row, then writes what it read plus one: every two calls that overlap conflict.
#[serializable_retry]
async fn bump(tx: &mut PgConnection, attempts: &AtomicU64) -> Result<(), sqlx::Error> {
    attempts.fetch_add(1, Ordering::Relaxed);
    let v: i64 = sqlx::query_scalar("SELECT v FROM hot WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query("UPDATE hot SET v = $1 WHERE id = 1")
        .bind(v + 1)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_runs_out_of_its_default_attempts_on_one_hot_row() {
    let (pool, _schema) = sqlx_retry_testkit::isolated_pool(TASKS as u32 + 1).await;
    sqlx::raw_sql(
        "CREATE TABLE hot (id int PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO hot VALUES (1, 0);",
    )
    .execute(&pool)
    .await
    .unwrap();

    let attempts: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            let mut failed = Vec::new();
            for _ in 0..CALLS {
                if let Err(err) = bump(&mut *conn, attempts).await {
                    failed.push(err.to_string());
                }
            }
            failed
        }));
    }
    let mut failed = Vec::new();
    for task in tasks {
        failed.extend(task.await.expect("task panicked"));
    }
    let calls = (TASKS * CALLS) as u64;
    let attempts = attempts.load(Ordering::Relaxed);
    let v: i64 = sqlx::query_scalar("SELECT v FROM hot WHERE id = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    eprintln!(
        "hot row: {TASKS} tasks, {calls} calls, {attempts} attempts, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {calls} calls failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(v, calls as i64, "every call committed exactly once");
    assert!(
        attempts > calls,
        "conflicts happened: {attempts} attempts for {calls} calls"
    );
}
