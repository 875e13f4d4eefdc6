//! Concurrent random transfers at SERIALIZABLE on a real PostgreSQL.
//!
//! `cargo run --example bank` starts a throwaway cluster from the local PostgreSQL binaries, or
//! uses `DATABASE_URL` when set. 16 tasks transfer random amounts between 16 accounts for a few
//! seconds (`BANK_SECONDS`, default 3). The demo prints commits, retries by SQLSTATE (counted
//! from the `tracing` events the retry loop emits) and checks the invariants: the total balance
//! is unchanged and no balance is negative.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgConnection;
use sqlx_retry::{SqlState, serializable_retry};

const ACCOUNTS: i64 = 16;
const INITIAL: i64 = 1_000;
const TASKS: usize = 16;

/// Moves `amount` from `from` to `to` unless `from` would go negative. The whole body, including
/// the balance check that decides what to write, runs again on a serialization failure.
#[serializable_retry(max = 10, backoff(base = "2ms", cap = "100ms"))]
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let retries = sqlx_retry_testkit::global_retries();

    let seconds: u64 = std::env::var("BANK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let (pool, schema) = sqlx_retry_testkit::isolated_pool(TASKS as u32 + 4).await;
    println!(
        "database: {} (schema {})",
        sqlx_retry_testkit::postgres_url(),
        schema.schema()
    );
    sqlx::raw_sql(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 16) g;",
    )
    .execute(&pool)
    .await?;

    let attempts = &*Box::leak(Box::new(AtomicU64::new(0)));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let (mut committed, mut declined, mut exhausted, mut failed) = (0u64, 0u64, 0u64, 0u64);
            while Instant::now() < deadline {
                let from = fastrand::i64(1..=ACCOUNTS);
                let to = (from % ACCOUNTS) + 1;
                match transfer(&pool, from, to, fastrand::i64(1..=300), attempts).await {
                    Ok(true) => committed += 1,
                    Ok(false) => declined += 1,
                    // Every attempt conflicted: the last 40001 comes back as is.
                    Err(err)
                        if sqlx_retry::error::sqlstate(&err)
                            == Some(SqlState::SERIALIZATION_FAILURE) =>
                    {
                        exhausted += 1
                    }
                    Err(err) => {
                        failed += 1;
                        eprintln!("transfer failed: {err}");
                    }
                }
            }
            (committed, declined, exhausted, failed)
        }));
    }
    let (mut committed, mut declined, mut exhausted, mut failed) = (0, 0, 0, 0);
    for task in tasks {
        let (c, d, e, f) = task.await?;
        committed += c;
        declined += d;
        exhausted += e;
        failed += f;
    }

    let calls = committed + declined + exhausted + failed;
    let attempts = attempts.load(Ordering::Relaxed);
    // A lost connection has no SQLSTATE.
    let retries: BTreeMap<String, u64> = retries
        .by_sqlstate("transfer")
        .into_iter()
        .map(|(code, n)| {
            (
                if code.is_empty() {
                    "connection lost".into()
                } else {
                    code
                },
                n,
            )
        })
        .collect();
    let (total, negative): (i64, i64) = sqlx::query_as(
        "SELECT sum(balance)::bigint, count(*) FILTER (WHERE balance < 0) FROM accounts",
    )
    .fetch_one(&pool)
    .await?;

    println!("{TASKS} tasks, {seconds} s, {ACCOUNTS} accounts at SERIALIZABLE");
    println!(
        "calls: {calls} (committed transfers {committed}, declined for funds {declined}, \
         gave up after 10 attempts {exhausted}, other errors {failed})"
    );
    println!(
        "attempts: {attempts} ({:.3} per call)",
        attempts as f64 / calls.max(1) as f64
    );
    println!("retries by SQLSTATE: {retries:?}");
    println!(
        "invariant: total balance {total} (expected {}), negative balances {negative}",
        ACCOUNTS * INITIAL
    );
    schema.drop_schema().await?;
    if total != ACCOUNTS * INITIAL || negative != 0 || failed != 0 {
        return Err("invariant violated or calls failed".into());
    }
    println!("invariant held");
    Ok(())
}
