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

/// Reads row `id`, then writes what it read plus one.
#[serializable_retry]
async fn bump_row(tx: &mut PgConnection, id: i32) -> Result<(), sqlx::Error> {
    let v: i64 = sqlx::query_scalar("SELECT v FROM rows4 WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query("UPDATE rows4 SET v = $1 WHERE id = $2")
        .bind(v + 1)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// At SERIALIZABLE, while one call waits on a lock held outside the policy, the function keeps
/// committing and the waiting call commits once the lock is released. Other calls may run out of
/// attempts meanwhile (the README's "Priority turns and locks held elsewhere": a transaction left
/// open makes the others fail more often), but only with the serialization failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serializable_call_waiting_on_an_outside_lock_never_stops_the_function() {
    const HOLD: std::time::Duration = std::time::Duration::from_secs(2);
    let (pool, _schema) = sqlx_retry_testkit::isolated_pool(TASKS as u32 + 3).await;
    sqlx::raw_sql(
        "CREATE TABLE rows4 (id int PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO rows4 SELECT g, 0 FROM generate_series(1, 4) g;
         INSERT INTO rows4 VALUES (100, 0);",
    )
    .execute(&pool)
    .await
    .unwrap();

    // Calls on the four rows from TASKS tasks, counting what commits while the lock is held.
    let holding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (pool, holding, done) = (pool.clone(), holding.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let (mut committed, mut during, mut failed) = (0u64, 0u64, Vec::new());
            let mut i = t;
            while !done.load(Ordering::Relaxed) {
                i += 1;
                match bump_row(&pool, (i % 4) as i32 + 1).await {
                    Ok(()) => {
                        committed += 1;
                        if holding.load(Ordering::Relaxed) {
                            during += 1;
                        }
                    }
                    Err(err) => failed.push(
                        err.as_database_error()
                            .and_then(|e| e.code())
                            .map(|c| c.into_owned()),
                    ),
                }
            }
            (committed, during, failed)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // An outside transaction takes row 100; a call of the same function then waits on it.
    let mut outside = pool.begin().await.unwrap();
    sqlx::query("UPDATE rows4 SET v = v + 1 WHERE id = 100")
        .execute(&mut *outside)
        .await
        .unwrap();
    holding.store(true, Ordering::Relaxed);
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move { bump_row(&pool, 100).await }
    });
    tokio::time::sleep(HOLD).await;
    holding.store(false, Ordering::Relaxed);
    outside.commit().await.unwrap();
    let waited = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("the waiting call ended after the lock was released")
        .expect("task panicked");
    done.store(true, Ordering::Relaxed);

    let (mut committed, mut during, mut failed) = (0u64, 0u64, Vec::new());
    for task in tasks {
        let (c, d, f) = task.await.expect("task panicked");
        committed += c;
        during += d;
        failed.extend(f);
    }
    eprintln!(
        "{committed} calls committed, {during} of them while the lock was held; {} ran out of attempts",
        failed.len()
    );
    assert!(
        failed.iter().all(|code| code.as_deref() == Some("40001")),
        "only serialization failures: {failed:?}"
    );
    assert!(
        during > 0,
        "the policy's other calls kept committing while one waited"
    );
    // The waiting call saw the outside commit and retried: at SERIALIZABLE its first attempt
    // fails with 40001 once the lock is released.
    waited.expect("the waiting call committed after the lock was released");
    let rows: Vec<(i32, i64)> = sqlx::query_as("SELECT id, v FROM rows4 ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let hot: i64 = rows.iter().filter(|r| r.0 <= 4).map(|r| r.1).sum();
    assert_eq!(hot, committed as i64, "every committed call counted once");
    assert_eq!(
        rows.last(),
        Some(&(100, 2)),
        "the outside update and the waiting call's"
    );
}

/// [`bump_row`] at REPEATABLE READ, where a transaction left waiting does not make the others
/// fail more often (as SERIALIZABLE's conflict tracking does).
#[serializable_retry(isolation = "repeatable_read")]
async fn bump_row_rr(tx: &mut PgConnection, id: i32) -> Result<(), sqlx::Error> {
    let v: i64 = sqlx::query_scalar("SELECT v FROM rows4 WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query("UPDATE rows4 SET v = $1 WHERE id = $2")
        .bind(v + 1)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// An attempt waiting on a lock held outside the policy holds a priority turn back for one short
/// drain only: while it waits, no other call of the function takes anywhere near the second a
/// turn could once wait, and none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_on_an_outside_lock_does_not_hold_the_others_turns() {
    const HOLD: std::time::Duration = std::time::Duration::from_secs(2);
    let (pool, _schema) = sqlx_retry_testkit::isolated_pool(TASKS as u32 + 3).await;
    sqlx::raw_sql(
        "CREATE TABLE rows4 (id int PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO rows4 SELECT g, 0 FROM generate_series(1, 4) g;
         INSERT INTO rows4 VALUES (100, 0);",
    )
    .execute(&pool)
    .await
    .unwrap();

    let holding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (pool, holding, done) = (pool.clone(), holding.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let (mut during, mut slowest, mut failed) =
                (0u64, std::time::Duration::ZERO, Vec::new());
            let mut i = t;
            while !done.load(Ordering::Relaxed) {
                i += 1;
                let started = std::time::Instant::now();
                let held = holding.load(Ordering::Relaxed);
                let out = bump_row_rr(&pool, (i % 4) as i32 + 1).await;
                if held && holding.load(Ordering::Relaxed) {
                    during += 1;
                    slowest = slowest.max(started.elapsed());
                }
                if let Err(err) = out {
                    failed.push(err.to_string());
                }
            }
            (during, slowest, failed)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let mut outside = pool.begin().await.unwrap();
    sqlx::query("UPDATE rows4 SET v = v + 1 WHERE id = 100")
        .execute(&mut *outside)
        .await
        .unwrap();
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move { bump_row_rr(&pool, 100).await }
    });
    // The waiting call has begun and sits on the lock before the hold is measured.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    holding.store(true, Ordering::Relaxed);
    tokio::time::sleep(HOLD).await;
    holding.store(false, Ordering::Relaxed);
    outside.commit().await.unwrap();
    let waited = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("the waiting call ended after the lock was released")
        .expect("task panicked");
    done.store(true, Ordering::Relaxed);

    let (mut during, mut slowest, mut failed) = (0u64, std::time::Duration::ZERO, Vec::new());
    for task in tasks {
        let (d, s, f) = task.await.expect("task panicked");
        during += d;
        slowest = slowest.max(s);
        failed.extend(f);
    }
    eprintln!("{during} calls ran within the hold, the slowest in {slowest:?}");
    assert!(
        failed.is_empty(),
        "{} calls failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(during > 0, "calls ran while the lock was held");
    // A turn that waited for the stuck attempt would take up to a second (the line's bound).
    assert!(
        slowest < std::time::Duration::from_millis(500),
        "a call took {slowest:?} while another waited on an outside lock"
    );
    waited.expect("the waiting call committed after the lock was released");
}
