//! The bank test: 16 tasks of random concurrent transfers between 10 accounts at SERIALIZABLE on
//! a real PostgreSQL for a few seconds (`SQLX_RETRY_BANK_SECS`, default 3), through
//! `#[serializable_retry]`. The total balance must be unchanged, no balance negative, retries
//! must have happened, and every call must end `Ok` or with an exhausted 40001.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgConnection;
use sqlx_retry::{SqlState, serializable_retry};

const ACCOUNTS: i64 = 10;
const INITIAL: i64 = 1_000;
const TASKS: usize = 16;

/// Moves `amount` from `from` to `to` unless `from` would go negative. The balance check that
/// decides what to write runs again on every attempt. Rows are updated in id order so that the
/// transfers cannot deadlock each other: every conflict is a 40001.
#[serializable_retry(max = 20, backoff(base = "1ms", cap = "50ms"))]
async fn transfer(
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
    let mut moves = [(from, -amount), (to, amount)];
    moves.sort();
    for (id, delta) in moves {
        sqlx::query("UPDATE accounts SET balance = balance + $2 WHERE id = $1")
            .bind(id)
            .bind(delta)
            .execute(&mut *tx)
            .await?;
    }
    Ok(true)
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    committed: u64,
    declined: u64,
    exhausted: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_invariants_hold_under_concurrent_transfers() {
    let secs: u64 = std::env::var("SQLX_RETRY_BANK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let (pool, _schema) = sqlx_retry_testkit::isolated_pool(TASKS as u32 + 2).await;
    sqlx::raw_sql(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 10) g;",
    )
    .execute(&pool)
    .await
    .unwrap();

    let attempts: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for seed in 0..TASKS as u64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let from = rng.i64(1..=ACCOUNTS);
                let to = (from + rng.i64(1..ACCOUNTS) - 1) % ACCOUNTS + 1;
                assert_ne!(from, to);
                match transfer(&pool, from, to, rng.i64(1..=300), attempts).await {
                    Ok(true) => tally.committed += 1,
                    Ok(false) => tally.declined += 1,
                    // Every attempt conflicted: the last 40001 comes back as is.
                    Err(err)
                        if sqlx_retry::error::sqlstate(&err)
                            == Some(SqlState::SERIALIZATION_FAILURE) =>
                    {
                        tally.exhausted += 1
                    }
                    Err(err) => panic!("transfer failed with something else than 40001: {err}"),
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        let t = task.await.expect("task panicked");
        total.committed += t.committed;
        total.declined += t.declined;
        total.exhausted += t.exhausted;
    }
    let calls = total.committed + total.declined + total.exhausted;
    let attempts = attempts.load(Ordering::Relaxed);

    let (sum, negative): (i64, i64) = sqlx::query_as(
        "SELECT sum(balance)::bigint, count(*) FILTER (WHERE balance < 0) FROM accounts",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    eprintln!(
        "bank: {secs} s, {TASKS} tasks, {ACCOUNTS} accounts: {calls} calls ({total:?}), \
         {attempts} attempts ({:.3} per call), total balance {sum}",
        attempts as f64 / calls.max(1) as f64
    );
    assert_eq!(sum, ACCOUNTS * INITIAL, "total balance unchanged");
    assert_eq!(negative, 0, "no negative balance");
    assert!(calls > 0);
    assert!(
        attempts > calls,
        "retries observed: {attempts} attempts for {calls} calls"
    );
}
