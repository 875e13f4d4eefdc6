//! Priority turns are on by default: with the attribute's defaults (5 attempts, the adaptive
//! backoff, priority after 2 failed attempts), calls that all read and write the same row at
//! SERIALIZABLE never run out of attempts. Without the turns the same calls did, a few in a
//! hundred at 4 clients (BENCHMARKS.md §5 measures both).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};
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

/// Reads row `id` of `rows4`, then writes what it read plus one.
async fn bump_in(tx: &mut PgConnection, id: i32) -> Result<(), sqlx::Error> {
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

#[serializable_retry]
async fn bump_row(tx: &mut PgConnection, id: i32) -> Result<(), sqlx::Error> {
    bump_in(tx, id).await
}

/// At REPEATABLE READ, where a transaction left waiting does not make the others fail more
/// often (as SERIALIZABLE's conflict tracking does).
#[serializable_retry(isolation = "repeatable_read")]
async fn bump_row_rr(tx: &mut PgConnection, id: i32) -> Result<(), sqlx::Error> {
    bump_in(tx, id).await
}

/// What the calls of one function did while another call of it waited on an outside lock.
#[derive(Default)]
struct Held {
    /// Calls that began and ended while the lock was held.
    during: u64,
    /// The longest of those.
    slowest: Duration,
    /// The SQLSTATE of every call that failed, over the whole run.
    failed: Vec<Option<String>>,
}

/// Runs `call` on rows 1–4 from [`TASKS`] tasks while an outside transaction takes row 100 and
/// holds it for 2 s, during which another call of the same function waits on that row. Checks
/// that the waiting call committed after the release and that the rows count every committed
/// call once.
async fn while_a_call_waits_on_an_outside_lock<F, Fut>(call: F) -> Held
where
    F: Fn(PgPool, i32) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), sqlx::Error>> + Send + 'static,
{
    let (pool, _schema) = sqlx_retry_testkit::isolated_pool(TASKS as u32 + 3).await;
    sqlx::raw_sql(
        "CREATE TABLE rows4 (id int PRIMARY KEY, v bigint NOT NULL);
         INSERT INTO rows4 SELECT g, 0 FROM generate_series(1, 4) g;
         INSERT INTO rows4 VALUES (100, 0);",
    )
    .execute(&pool)
    .await
    .unwrap();

    let holding = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (pool, holding, done, call) =
            (pool.clone(), holding.clone(), done.clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            let mut committed = 0i64;
            let mut held = Held::default();
            let mut i = t;
            while !done.load(Ordering::Relaxed) {
                i += 1;
                let started = Instant::now();
                let began_held = holding.load(Ordering::Relaxed);
                let out = call(pool.clone(), (i % 4) as i32 + 1).await;
                if began_held && holding.load(Ordering::Relaxed) {
                    held.during += 1;
                    held.slowest = held.slowest.max(started.elapsed());
                }
                match out {
                    Ok(()) => committed += 1,
                    Err(err) => held.failed.push(
                        err.as_database_error()
                            .and_then(|e| e.code())
                            .map(|c| c.into_owned()),
                    ),
                }
            }
            (committed, held)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut outside = pool.begin().await.unwrap();
    sqlx::query("UPDATE rows4 SET v = v + 1 WHERE id = 100")
        .execute(&mut *outside)
        .await
        .unwrap();
    let waiting = tokio::spawn(call(pool.clone(), 100));
    // The waiting call has begun and sits on the lock before the hold is measured.
    tokio::time::sleep(Duration::from_millis(100)).await;
    holding.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    holding.store(false, Ordering::Relaxed);
    outside.commit().await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting call ended after the lock was released")
        .expect("task panicked");
    done.store(true, Ordering::Relaxed);

    let mut committed = 0i64;
    let mut all = Held::default();
    for task in tasks {
        let (c, held) = task.await.expect("task panicked");
        committed += c;
        all.during += held.during;
        all.slowest = all.slowest.max(held.slowest);
        all.failed.extend(held.failed);
    }
    eprintln!(
        "{committed} calls committed; {} ran within the hold, the slowest in {:?}; {} failed",
        all.during,
        all.slowest,
        all.failed.len()
    );
    // At SERIALIZABLE the waiting call's first attempt fails with 40001 once the lock is
    // released (it saw the outside commit); it is retried.
    waited.expect("the waiting call committed after the lock was released");
    let rows: Vec<(i32, i64)> = sqlx::query_as("SELECT id, v FROM rows4 ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let hot: i64 = rows.iter().filter(|r| r.0 <= 4).map(|r| r.1).sum();
    assert_eq!(hot, committed, "every committed call counted once");
    assert_eq!(
        rows.last(),
        Some(&(100, 2)),
        "the outside update and the waiting call's"
    );
    all
}

/// An attempt waiting on a lock held outside the policy holds a priority turn back for one short
/// drain only: while it waits, no other call of the function takes anywhere near the second a
/// turn could once wait, and none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_on_an_outside_lock_does_not_hold_the_others_turns() {
    let held =
        while_a_call_waits_on_an_outside_lock(
            |pool, id| async move { bump_row_rr(&pool, id).await },
        )
        .await;
    assert!(held.failed.is_empty(), "calls failed: {:?}", held.failed);
    assert!(held.during > 0, "calls ran while the lock was held");
    // A turn that waited for the stuck attempt would take up to a second (the line's bound).
    assert!(
        held.slowest < Duration::from_millis(500),
        "a call took {:?} while another waited on an outside lock",
        held.slowest
    );
}

/// At SERIALIZABLE, while one call waits on a lock held outside the policy, the function keeps
/// committing and the waiting call commits once the lock is released. Other calls may run out of
/// attempts meanwhile (the README's "Priority turns and locks held elsewhere": a transaction left
/// open makes the others fail more often), but only with the serialization failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serializable_call_waiting_on_an_outside_lock_never_stops_the_function() {
    let held =
        while_a_call_waits_on_an_outside_lock(|pool, id| async move { bump_row(&pool, id).await })
            .await;
    assert!(held.during > 0, "calls ran while the lock was held");
    assert!(
        held.failed
            .iter()
            .all(|code| code.as_deref() == Some("40001")),
        "only serialization failures: {:?}",
        held.failed
    );
}
