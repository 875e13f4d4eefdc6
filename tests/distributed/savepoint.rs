//! The savepoint protocol on real PostgreSQL: the rerun happens in the same top-level
//! transaction, the statements sent are exactly the protocol's (logged at the testkit proxy), a
//! transaction still doomed after `ROLLBACK TO SAVEPOINT` falls back to a full restart, and
//! under contention at SERIALIZABLE the bank's invariants hold with no call exhausted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection, PgPool};
use sqlx_retry::error::TransactionAborted;
use sqlx_retry::{Backoff, ConflictKind, Policy, SqlState, transaction};
use sqlx_retry_testkit::{PgProxy, isolated_pool, isolated_pool_via};

use crate::{Retries, raise};

const WRITE_TOO_OLD: &str = "restart transaction: TransactionRetryWithProtoRefreshError: TransactionRetryError: retry txn (RETRY_WRITE_TOO_OLD - WriteTooOld flag converted to WriteTooOldError)";

fn builder() -> sqlx_retry::PolicyBuilder {
    Policy::builder()
        .savepoint(Policy::DEFAULT_SAVEPOINT)
        .backoff(Backoff::fixed(Duration::from_millis(1)))
}

/// Inserts row 1, noting each run's `txid_current()`; the runs numbered in `failing_runs` raise
/// CockroachDB's `RETRY_WRITE_TOO_OLD` after the insert.
async fn insert<S>(
    source: S,
    policy: &Policy,
    failing_runs: &'static [u32],
    txids: &Arc<std::sync::Mutex<Vec<i64>>>,
) -> Result<(), sqlx::Error>
where
    S: sqlx_retry::TransactionSource<PgConnection>,
{
    let runs = AtomicU32::new(0);
    transaction(source, policy, |tx| {
        let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
        let txids = Arc::clone(txids);
        Box::pin(async move {
            let txid: i64 = sqlx::query_scalar("SELECT txid_current()")
                .fetch_one(&mut *tx)
                .await?;
            txids.lock().unwrap().push(txid);
            sqlx::query("INSERT INTO items VALUES (1)")
                .execute(&mut *tx)
                .await?;
            if failing_runs.contains(&run) {
                sqlx::raw_sql(sqlx::AssertSqlSafe(raise("40001", WRITE_TOO_OLD)))
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        })
    })
    .await
}

async fn rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_conflict_in_the_body_reruns_it_in_the_same_transaction_with_exactly_the_protocol() {
    let proxy = PgProxy::for_test_db().await;
    let (pool, _schema) = isolated_pool_via(&proxy, 1).await;
    sqlx::raw_sql("CREATE TABLE items (id int PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let retries = Retries::default();
    let policy = retries.policy(builder());
    let txids = Arc::new(std::sync::Mutex::new(Vec::new()));
    proxy.record_statements();
    insert(&pool, &policy, &[1], &txids).await.unwrap();
    let sent = proxy.statements();

    let txids = txids.lock().unwrap().clone();
    assert_eq!(txids.len(), 2, "two runs");
    assert_eq!(
        txids[0], txids[1],
        "the rerun is in the same top-level transaction"
    );
    assert_eq!(rows(&pool).await, 1, "applied once");
    assert_eq!(
        retries.seen(),
        [(
            1,
            Some(SqlState::SERIALIZATION_FAILURE),
            Some(ConflictKind::WriteTooOld)
        )]
    );
    let raise = raise("40001", WRITE_TOO_OLD);
    assert_eq!(
        sent,
        [
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "SAVEPOINT cockroach_restart",
            "SELECT txid_current()",
            "INSERT INTO items VALUES (1)",
            raise.as_str(),
            "ROLLBACK TO SAVEPOINT cockroach_restart",
            "SELECT txid_current()",
            "INSERT INTO items VALUES (1)",
            "RELEASE SAVEPOINT cockroach_restart",
            "COMMIT",
        ]
    );
}

#[tokio::test]
async fn a_conflict_in_the_rerun_falls_back_to_a_full_restart() {
    let proxy = PgProxy::for_test_db().await;
    let (pool, _schema) = isolated_pool_via(&proxy, 1).await;
    sqlx::raw_sql("CREATE TABLE items (id int PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let txids = Arc::new(std::sync::Mutex::new(Vec::new()));
    proxy.record_statements();
    insert(&pool, &builder().build().unwrap(), &[1, 2], &txids)
        .await
        .unwrap();
    let sent = proxy.statements();
    let txids = txids.lock().unwrap().clone();
    assert_eq!(txids.len(), 3);
    assert_eq!(txids[0], txids[1], "first rerun in place");
    assert_ne!(txids[1], txids[2], "then a new transaction");
    assert_eq!(rows(&pool).await, 1);
    let control: Vec<&str> = sent
        .iter()
        .map(String::as_str)
        .filter(|s| !s.starts_with("SELECT") && !s.starts_with("INSERT") && !s.starts_with("DO"))
        .collect();
    assert_eq!(
        control,
        [
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "SAVEPOINT cockroach_restart",
            "ROLLBACK TO SAVEPOINT cockroach_restart",
            "ROLLBACK",
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "SAVEPOINT cockroach_restart",
            "RELEASE SAVEPOINT cockroach_restart",
            "COMMIT",
        ]
    );
}

#[tokio::test]
async fn on_a_held_connection_the_rerun_is_in_the_same_transaction_too() {
    let (pool, schema) = isolated_pool(1).await;
    sqlx::raw_sql("CREATE TABLE items (id int PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let mut conn = PgConnection::connect_with(&schema.connect_options())
        .await
        .unwrap();
    let txids = Arc::new(std::sync::Mutex::new(Vec::new()));
    insert(&mut conn, &builder().build().unwrap(), &[1], &txids)
        .await
        .unwrap();
    let txids = txids.lock().unwrap().clone();
    assert_eq!(txids.len(), 2);
    assert_eq!(txids[0], txids[1]);
    assert_eq!(rows(&pool).await, 1);
    assert!(!conn.is_in_transaction());
}

/// `Ok` means committed in savepoint mode too: `RELEASE SAVEPOINT` fails with `25P02` in a
/// transaction an ignored error aborted, and nothing is committed.
#[tokio::test]
async fn a_swallowed_error_is_caught_at_release() {
    let (pool, _schema) = isolated_pool(2).await;
    sqlx::raw_sql("CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1)")
        .execute(&pool)
        .await
        .unwrap();
    let err = transaction(&pool, &builder().build().unwrap(), |tx| {
        Box::pin(async move {
            sqlx::query("INSERT INTO items VALUES (2)")
                .execute(&mut *tx)
                .await?;
            let _duplicate = sqlx::query("INSERT INTO items VALUES (1)")
                .execute(&mut *tx)
                .await;
            Ok::<_, sqlx::Error>(())
        })
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&err, sqlx::Error::Database(db) if db.as_error().is::<TransactionAborted>()),
        "{err}"
    );
    assert_eq!(rows(&pool).await, 1, "row 2 was not committed");
}

const ACCOUNTS: i64 = 10;
const TASKS: usize = 8;

/// The bank's transfer with the savepoint protocol: conflicts are genuine PostgreSQL
/// serialization failures, whose victims stay doomed after `ROLLBACK TO SAVEPOINT`.
async fn transfer(
    pool: &PgPool,
    policy: &Policy,
    from: i64,
    to: i64,
    amount: i64,
) -> Result<bool, sqlx::Error> {
    transaction(pool, policy, |tx| {
        Box::pin(async move {
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
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn savepoint_mode_keeps_the_bank_invariants_and_never_exhausts() {
    let (pool, _schema) = isolated_pool(TASKS as u32 + 2).await;
    sqlx::raw_sql(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 10) g;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let in_place = Arc::new(AtomicU64::new(0));
    let restarts = Arc::new(AtomicU64::new(0));
    let policy = {
        let (in_place, restarts) = (Arc::clone(&in_place), Arc::clone(&restarts));
        Policy::builder()
            .savepoint(Policy::DEFAULT_SAVEPOINT)
            .max_attempts(40)
            .backoff(Backoff::exponential(
                Duration::from_millis(1),
                Duration::from_millis(50),
            ))
            .on_retry(move |info| {
                if info.delay.is_zero() {
                    in_place.fetch_add(1, Ordering::Relaxed);
                } else {
                    restarts.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build()
            .unwrap()
    };
    let policy = Arc::new(policy);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (pool, policy) = (pool.clone(), Arc::clone(&policy));
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(task as u64);
            let (mut committed, mut failed) = (0u64, Vec::new());
            while Instant::now() < deadline {
                let from = rng.i64(1..=ACCOUNTS);
                let to = (from % ACCOUNTS) + 1;
                match transfer(&pool, &policy, from, to, rng.i64(1..=100)).await {
                    Ok(_) => committed += 1,
                    Err(err) => failed.push(err.to_string()),
                }
            }
            (committed, failed)
        }));
    }
    let mut committed = 0;
    for task in tasks {
        let (n, failed) = task.await.unwrap();
        assert!(failed.is_empty(), "calls failed: {failed:?}");
        committed += n;
    }
    let (sum, negative): (i64, i64) = sqlx::query_as(
        "SELECT sum(balance)::bigint, count(*) FILTER (WHERE balance < 0) FROM accounts",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let (in_place, restarts) = (
        in_place.load(Ordering::Relaxed),
        restarts.load(Ordering::Relaxed),
    );
    eprintln!(
        "savepoint bank: {committed} calls, {in_place} reruns in place, {restarts} full restarts"
    );
    assert_eq!(sum, ACCOUNTS * 1000, "money was created or lost");
    assert_eq!(negative, 0);
    assert!(committed > 0);
    assert!(
        in_place + restarts > 0,
        "no contention: the test proved nothing"
    );
    // A PostgreSQL victim keeps its snapshot after ROLLBACK TO SAVEPOINT, so its rerun fails
    // again and falls back to a full restart: at least as many restarts as reruns in place (a
    // 40001 at COMMIT restarts at once).
    assert!(
        restarts >= in_place,
        "{in_place} reruns in place, {restarts} restarts"
    );
}

/// Inserts row 1; its first run raises CockroachDB's `RETRY_WRITE_TOO_OLD`. `seen` collects
/// every run's `txid_current()`, and is `#[keep]`: it records what failed runs saw.
#[sqlx_retry::serializable_retry(savepoint, max = 3)]
async fn insert_with_attribute(
    tx: &mut PgConnection,
    runs: &AtomicU32,
    #[keep] seen: &mut Vec<i64>,
    restored: &mut Vec<u32>,
) -> Result<(), sqlx::Error> {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    restored.push(run);
    seen.push(
        sqlx::query_scalar("SELECT txid_current()")
            .fetch_one(&mut *tx)
            .await?,
    );
    sqlx::query("INSERT INTO items VALUES (1)")
        .execute(&mut *tx)
        .await?;
    if run == 1 {
        sqlx::raw_sql(sqlx::AssertSqlSafe(raise("40001", WRITE_TOO_OLD)))
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn the_attribute_reruns_in_place_and_restores_mut_arguments() {
    let proxy = PgProxy::for_test_db().await;
    let (pool, _schema) = isolated_pool_via(&proxy, 1).await;
    sqlx::raw_sql("CREATE TABLE items (id int PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let runs = AtomicU32::new(0);
    let (mut seen, mut restored) = (Vec::new(), Vec::new());
    proxy.record_statements();
    insert_with_attribute(&pool, &runs, &mut seen, &mut restored)
        .await
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], seen[1], "same top-level transaction");
    assert_eq!(
        restored,
        [2],
        "the first run's push was undone before the rerun"
    );
    assert_eq!(rows(&pool).await, 1);
    let control: Vec<String> = proxy
        .statements()
        .into_iter()
        .filter(|s| !s.starts_with("SELECT") && !s.starts_with("INSERT") && !s.starts_with("DO"))
        .collect();
    assert_eq!(
        control,
        [
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "SAVEPOINT cockroach_restart",
            "ROLLBACK TO SAVEPOINT cockroach_restart",
            "RELEASE SAVEPOINT cockroach_restart",
            "COMMIT",
        ]
    );
}
