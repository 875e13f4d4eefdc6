//! Stress invariants at SERIALIZABLE through `#[serializable_retry]` on a real PostgreSQL, and
//! contention that never clears.
//!
//! Short by default (2 s per workload); `SQLX_RETRY_STRESS_SECS=60` for the long form. Run with
//! `--nocapture` to see the one-line summary of each workload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Tally, code_of, retries, stress_secs};
use sqlx::{PgConnection, PgPool};
use sqlx_retry::serializable_retry;

const TASKS: usize = 32;
const POOL: u32 = 36;

/// Runs `TASKS` tasks calling `call` until the deadline; each call's result is classified by
/// `judge` into the tally.
async fn run_workload<F, Fut>(secs: u64, tasks: usize, call: F) -> Tally
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), sqlx::Error>> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let call = call.clone();
        handles.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let started = Instant::now();
                let out = call(t as u64 * 1_000_000 + i).await;
                tally.latencies.push(started.elapsed());
                tally.calls += 1;
                i += 1;
                match out {
                    Ok(()) => tally.ok += 1,
                    // Every attempt conflicted: the last 40001 (or 40P01) comes back as is.
                    Err(e) if matches!(code_of(&e).as_deref(), Some("40001" | "40P01")) => {
                        tally.exhausted += 1;
                        if code_of(&e).as_deref() == Some("40P01") {
                            tally.exhausted_40p01 += 1;
                        }
                    }
                    Err(e) => tally.other.push(e.to_string()),
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for h in handles {
        all.merge(h.await.expect("task panicked"));
    }
    all
}

// ------------------------------------------------------------------------------------------
// Bank transfers
// ------------------------------------------------------------------------------------------

const ACCOUNTS: i64 = 16;
const INITIAL: i64 = 1_000;

#[serializable_retry(max = 10, backoff(base = "2ms", cap = "100ms"))]
async fn stress_transfer(
    tx: &mut PgConnection,
    from: i64,
    to: i64,
    amount: i64,
    attempts: &AtomicU64,
) -> Result<bool, sqlx::Error> {
    attempts.fetch_add(1, Ordering::Relaxed);
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1")
        .bind(from)
        .fetch_one(&mut *tx)
        .await?;
    if balance < amount {
        return Ok(false);
    }
    sqlx::query("UPDATE accounts SET balance = balance - $1 WHERE id = $2")
        .bind(amount)
        .bind(from)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
        .bind(amount)
        .bind(to)
        .execute(&mut *tx)
        .await?;
    Ok(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_bank_total_conserved_no_negative() {
    let counter = retries();
    let secs = stress_secs(2);
    let (pool, schema) = sqlx_retry_testkit::isolated_pool(POOL).await;
    sqlx::raw_sql(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 16) g;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let attempts: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let moved: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let p = pool.clone();
    let mut tally = run_workload(secs, TASKS, move |_| {
        let pool = p.clone();
        async move {
            let from = fastrand::i64(1..=ACCOUNTS);
            let mut to = fastrand::i64(1..=ACCOUNTS - 1);
            if to >= from {
                to += 1;
            }
            if stress_transfer(&pool, from, to, fastrand::i64(1..=300), attempts).await? {
                moved.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
    })
    .await;
    let (total, negative): (i64, i64) = sqlx::query_as(
        "SELECT sum(balance)::bigint, count(*) FILTER (WHERE balance < 0) FROM accounts",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let extra = format!(
        " moved={} declined={} total={total} negative={negative}",
        moved.load(Ordering::Relaxed),
        tally.ok - moved.load(Ordering::Relaxed)
    );
    println!(
        "{}",
        tally.summary(
            "bank",
            TASKS,
            secs,
            attempts,
            &counter.by_sqlstate("stress_transfer"),
            &extra
        )
    );
    assert!(
        tally.other.is_empty(),
        "unexpected errors: {:?}",
        tally.other
    );
    assert_eq!(total, ACCOUNTS * INITIAL, "total balance not conserved");
    assert_eq!(negative, 0, "negative balance");
    assert!(tally.ok > 0);
    schema.drop_schema().await.unwrap();
}

// ------------------------------------------------------------------------------------------
// On-call doctors: write skew
// ------------------------------------------------------------------------------------------

const SHIFTS: i64 = 6;
const DOCTORS: i64 = 4;

/// Goes off call only if at least two doctors of the shift are on call (the classic write skew:
/// at a weaker level two doctors could both go off call); otherwise goes back on call.
#[serializable_retry(max = 10, backoff(base = "2ms", cap = "100ms"))]
async fn stress_on_call(
    tx: &mut PgConnection,
    shift: i64,
    doctor: i64,
    go_off: bool,
    attempts: &AtomicU64,
) -> Result<(), sqlx::Error> {
    attempts.fetch_add(1, Ordering::Relaxed);
    if go_off {
        let on_call: i64 =
            sqlx::query_scalar("SELECT count(*) FROM doctors WHERE shift = $1 AND on_call")
                .bind(shift)
                .fetch_one(&mut *tx)
                .await?;
        if on_call >= 2 {
            sqlx::query("UPDATE doctors SET on_call = false WHERE shift = $1 AND doctor = $2")
                .bind(shift)
                .bind(doctor)
                .execute(&mut *tx)
                .await?;
        }
    } else {
        sqlx::query("UPDATE doctors SET on_call = true WHERE shift = $1 AND doctor = $2")
            .bind(shift)
            .bind(doctor)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_doctors_every_shift_keeps_one_on_call() {
    let counter = retries();
    let secs = stress_secs(2);
    let (pool, schema) = sqlx_retry_testkit::isolated_pool(POOL).await;
    sqlx::raw_sql(
        "CREATE TABLE doctors (shift bigint, doctor bigint, on_call bool NOT NULL,
                               PRIMARY KEY (shift, doctor));
         INSERT INTO doctors SELECT s, d, true FROM generate_series(1, 6) s, generate_series(1, 4) d;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let attempts: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let p = pool.clone();
    let mut tally = run_workload(secs, TASKS, move |_| {
        let pool = p.clone();
        async move {
            let shift = fastrand::i64(1..=SHIFTS);
            let doctor = fastrand::i64(1..=DOCTORS);
            // Mostly going off call, so shifts often sit at the edge of the invariant.
            stress_on_call(&pool, shift, doctor, fastrand::u8(0..10) < 7, attempts).await
        }
    })
    .await;
    let min_on_call: i64 = sqlx::query_scalar(
        "SELECT min(n) FROM (SELECT count(*) FILTER (WHERE on_call) AS n FROM doctors GROUP BY shift) s",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let shifts: i64 = sqlx::query_scalar("SELECT count(DISTINCT shift) FROM doctors")
        .fetch_one(&pool)
        .await
        .unwrap();
    let extra = format!(" shifts={shifts} min_on_call_per_shift={min_on_call}");
    println!(
        "{}",
        tally.summary(
            "doctors",
            TASKS,
            secs,
            attempts,
            &counter.by_sqlstate("stress_on_call"),
            &extra
        )
    );
    assert!(
        tally.other.is_empty(),
        "unexpected errors: {:?}",
        tally.other
    );
    assert_eq!(shifts, SHIFTS);
    assert!(min_on_call >= 1, "a shift was left with nobody on call");
    assert!(tally.ok > 0);
    schema.drop_schema().await.unwrap();
}

// ------------------------------------------------------------------------------------------
// Counter: final value == number of Ok increments
// ------------------------------------------------------------------------------------------

#[serializable_retry(max = 10, backoff(base = "2ms", cap = "100ms"))]
async fn stress_increment(tx: &mut PgConnection, attempts: &AtomicU64) -> Result<(), sqlx::Error> {
    attempts.fetch_add(1, Ordering::Relaxed);
    sqlx::query("UPDATE counter SET n = n + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_counter_equals_ok_count() {
    let counter = retries();
    let secs = stress_secs(2);
    let (pool, schema) = sqlx_retry_testkit::isolated_pool(POOL).await;
    sqlx::raw_sql(
        "CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL);
         INSERT INTO counter VALUES (1, 0);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let attempts: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let p = pool.clone();
    let mut tally = run_workload(secs, TASKS, move |_| {
        let pool = p.clone();
        async move { stress_increment(&pool, attempts).await }
    })
    .await;
    let n: i64 = sqlx::query_scalar("SELECT n FROM counter WHERE id = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    let extra = format!(" final_value={n}");
    println!(
        "{}",
        tally.summary(
            "counter",
            TASKS,
            secs,
            attempts,
            &counter.by_sqlstate("stress_increment"),
            &extra
        )
    );
    assert!(
        tally.other.is_empty(),
        "unexpected errors: {:?}",
        tally.other
    );
    assert_eq!(n as u64, tally.ok, "counter != number of Ok increments");
    assert!(tally.ok > 0);
    schema.drop_schema().await.unwrap();
}

// ------------------------------------------------------------------------------------------
// Contention that never clears
// ------------------------------------------------------------------------------------------

/// Always fails with a real `40001` raised by the server.
#[serializable_retry(max = 3, backoff(base = "1ms", cap = "5ms"))]
async fn always_conflicts(tx: &mut PgConnection, attempts: &AtomicU64) -> Result<(), sqlx::Error> {
    attempts.fetch_add(1, Ordering::Relaxed);
    sqlx::query("INSERT INTO log (note) VALUES ('attempt')")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql("DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40001'; END $$")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_clearing_conflict_gives_up_after_exactly_max_attempts() {
    let counter = retries();
    let (pool, schema) = sqlx_retry_testkit::isolated_pool(10).await;
    sqlx::raw_sql("CREATE TABLE log (id bigserial PRIMARY KEY, note text)")
        .execute(&pool)
        .await
        .unwrap();
    let mut handles = Vec::new();
    for _ in 0..8 {
        let pool = pool.clone();
        handles.push(tokio::spawn(async move {
            let attempts = AtomicU64::new(0);
            let err = always_conflicts(&pool, &attempts).await.unwrap_err();
            (code_of(&err), attempts.load(Ordering::Relaxed))
        }));
    }
    for h in handles {
        let (code, attempts) = h.await.unwrap();
        assert_eq!(
            code.as_deref(),
            Some("40001"),
            "the last 40001 is returned as is"
        );
        assert_eq!(attempts, 3, "exactly max = 3 attempts");
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM log")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0, "nothing of a failed attempt is committed");
    // 8 calls x 2 retries each.
    assert_eq!(
        counter.by_sqlstate("always_conflicts").get("40001"),
        Some(&16)
    );
    schema.drop_schema().await.unwrap();
}

/// Two statements in one transaction: both columns move together or not at all.
#[serializable_retry(max = 1)]
async fn hot_counter_once(tx: &mut PgConnection, attempts: &AtomicU64) -> Result<(), sqlx::Error> {
    attempts.fetch_add(1, Ordering::Relaxed);
    sqlx::query("UPDATE hot SET n = n + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE hot SET m = m + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_max_one_on_hot_counter_nothing_half_applied() {
    let counter = retries();
    let secs = stress_secs(2);
    let (pool, schema) = sqlx_retry_testkit::isolated_pool(POOL).await;
    sqlx::raw_sql(
        "CREATE TABLE hot (id int PRIMARY KEY, n bigint NOT NULL, m bigint NOT NULL);
         INSERT INTO hot VALUES (1, 0, 0);",
    )
    .execute(&pool)
    .await
    .unwrap();
    let attempts: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let p: PgPool = pool.clone();
    let mut tally = run_workload(secs, TASKS, move |_| {
        let pool = p.clone();
        async move { hot_counter_once(&pool, attempts).await }
    })
    .await;
    let (n, m): (i64, i64) = sqlx::query_as("SELECT n, m FROM hot WHERE id = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    let extra = format!(" n={n} m={m}");
    println!(
        "{}",
        tally.summary(
            "hot_counter_max1",
            TASKS,
            secs,
            attempts,
            &counter.by_sqlstate("hot_counter_once"),
            &extra
        )
    );
    assert!(
        tally.other.is_empty(),
        "unexpected errors: {:?}",
        tally.other
    );
    assert_eq!(n as u64, tally.ok, "counter != number of Ok calls");
    assert_eq!(n, m, "half-applied transaction");
    // max = 1: one attempt per call, never a retry.
    assert_eq!(attempts.load(Ordering::Relaxed), tally.calls);
    assert!(counter.by_sqlstate("hot_counter_once").is_empty());
    assert_eq!(tally.calls, tally.ok + tally.exhausted);
    schema.drop_schema().await.unwrap();
}
