//! Fault injection at every phase of an attempt (fault-injecting proxy), server faults (a
//! terminated backend, a restart in the middle of a stress run) and timeouts on a real
//! PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{code_of, retries, stress_secs};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use sqlx_retry::error::Class;
use sqlx_retry::{Backoff, Policy, is_commit_unknown, serializable_retry, transaction};
use sqlx_retry_testkit::{Fault, Isolated, Matcher, PgProxy, PgServer, isolated_schema};
use tokio::sync::{Notify, mpsc};

async fn setup(isolated: &Isolated) -> PgPool {
    let direct = isolated.pool(2).await;
    sqlx::raw_sql(
        "CREATE TABLE items (id bigint PRIMARY KEY, v text NOT NULL);
         CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL);
         INSERT INTO counter VALUES (1, 0);",
    )
    .execute(&direct)
    .await
    .unwrap();
    direct
}

async fn counts(direct: &PgPool) -> (i64, i64) {
    sqlx::query_as("SELECT (SELECT count(*) FROM items), (SELECT n FROM counter WHERE id = 1)")
        .fetch_one(direct)
        .await
        .unwrap()
}

/// Inserts item `id` and bumps the counter: two statements, the last right before COMMIT.
#[serializable_retry(max = 3, backoff(base = "1ms", cap = "10ms"))]
async fn insert_and_bump(
    tx: &mut PgConnection,
    id: i64,
    attempts: &AtomicU64,
) -> Result<(), sqlx::Error> {
    attempts.fetch_add(1, Ordering::Relaxed);
    sqlx::query("INSERT INTO items (id, v) VALUES ($1, 'x')")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE counter SET n = n + 1 WHERE id = 1 /* last */")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// An idempotent upsert keyed by `id`: safe to apply twice, so it opts into `idempotent`.
#[serializable_retry(max = 3, backoff(base = "1ms", cap = "10ms"), idempotent)]
async fn upsert_idempotent(
    tx: &mut PgConnection,
    id: i64,
    attempts: &AtomicU64,
) -> Result<(), sqlx::Error> {
    attempts.fetch_add(1, Ordering::Relaxed);
    sqlx::query("INSERT INTO items (id, v) VALUES ($1, 'x') ON CONFLICT (id) DO NOTHING")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_during_begin_is_retried_on_a_new_connection_and_applied_once() {
    let isolated = isolated_schema().await;
    let direct = setup(&isolated).await;
    let proxy = PgProxy::for_test_db().await;
    let pool = isolated.pool_via(&proxy, 4).await;
    let retried = Arc::new(AtomicU64::new(0));
    let hook = Arc::clone(&retried);
    let policy = Policy::builder()
        .max_attempts(3)
        .backoff(Backoff::fixed(Duration::from_millis(5)))
        .on_retry(move |info| {
            assert!(info.sqlstate.is_none(), "a lost connection has no SQLSTATE");
            hook.fetch_add(1, Ordering::Relaxed);
        })
        .build()
        .unwrap();
    let connections_before = proxy.stats().connections;
    let cut = proxy.arm(Fault::CutBeforeForwarding(Matcher::QueryStartsWith(
        "BEGIN",
    )));
    let body_runs = Arc::new(AtomicU64::new(0));
    let runs = Arc::clone(&body_runs);
    transaction(&pool, &policy, move |tx| {
        let runs = Arc::clone(&runs);
        Box::pin(async move {
            runs.fetch_add(1, Ordering::Relaxed);
            sqlx::query("INSERT INTO items (id, v) VALUES (1, 'x')")
                .execute(&mut *tx)
                .await?;
            Ok::<_, sqlx::Error>(())
        })
    })
    .await
    .expect("BEGIN cut is retried");
    assert!(cut.fired());
    assert_eq!(
        retried.load(Ordering::Relaxed),
        1,
        "one retry after the cut"
    );
    assert_eq!(body_runs.load(Ordering::Relaxed), 1, "the body ran once");
    assert!(
        proxy.stats().connections > connections_before,
        "the retry used a new connection"
    );
    assert_eq!(counts(&direct).await.0, 1, "applied exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_at_first_body_statement_is_retried_and_applied_once() {
    let isolated = isolated_schema().await;
    let direct = setup(&isolated).await;
    let proxy = PgProxy::for_test_db().await;
    let pool = isolated.pool_via(&proxy, 4).await;
    let cut = proxy.arm(Fault::CutBeforeForwarding(Matcher::AnyExtendedQuery));
    let attempts = AtomicU64::new(0);
    insert_and_bump(&pool, 1, &attempts).await.unwrap();
    assert!(cut.fired());
    assert_eq!(attempts.load(Ordering::Relaxed), 2);
    assert_eq!(counts(&direct).await, (1, 1), "applied exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_at_last_statement_before_commit_is_retried_and_applied_once() {
    let isolated = isolated_schema().await;
    let direct = setup(&isolated).await;
    let proxy = PgProxy::for_test_db().await;
    let pool = isolated.pool_via(&proxy, 4).await;
    let cut = proxy.arm(Fault::CutBeforeForwarding(Matcher::ParseContains(
        "/* last */",
    )));
    let attempts = AtomicU64::new(0);
    insert_and_bump(&pool, 1, &attempts).await.unwrap();
    assert!(cut.fired());
    assert_eq!(attempts.load(Ordering::Relaxed), 2);
    assert_eq!(
        counts(&direct).await,
        (1, 1),
        "the first attempt's INSERT was not committed; applied exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_after_commit_forwarded_is_commit_unknown_not_retried_and_landed() {
    let isolated = isolated_schema().await;
    let direct = setup(&isolated).await;
    let proxy = PgProxy::for_test_db().await;
    let pool = isolated.pool_via(&proxy, 4).await;
    let cut = proxy.arm(Fault::CutAfterForwarding(Matcher::QueryContains("COMMIT")));
    let attempts = AtomicU64::new(0);
    let err = insert_and_bump(&pool, 1, &attempts).await.unwrap_err();
    assert!(cut.fired());
    assert!(is_commit_unknown(&err), "{err}");
    assert_eq!(code_of(&err).as_deref(), Some("40003"));
    assert_eq!(attempts.load(Ordering::Relaxed), 1, "not retried");
    assert_eq!(counts(&direct).await, (1, 1), "the COMMIT landed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_after_commit_forwarded_with_idempotent_is_retried_and_applied_once() {
    let isolated = isolated_schema().await;
    let direct = setup(&isolated).await;
    let proxy = PgProxy::for_test_db().await;
    let pool = isolated.pool_via(&proxy, 4).await;
    let cut = proxy.arm(Fault::CutAfterForwarding(Matcher::QueryContains("COMMIT")));
    let attempts = AtomicU64::new(0);
    upsert_idempotent(&pool, 7, &attempts).await.unwrap();
    assert!(cut.fired());
    assert_eq!(attempts.load(Ordering::Relaxed), 2, "retried once");
    assert_eq!(counts(&direct).await.0, 1, "the upsert is applied once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_before_commit_forwarded_is_commit_unknown_not_applied_not_retried() {
    let isolated = isolated_schema().await;
    let direct = setup(&isolated).await;
    let proxy = PgProxy::for_test_db().await;
    let pool = isolated.pool_via(&proxy, 4).await;
    let cut = proxy.arm(Fault::CutBeforeForwarding(Matcher::QueryContains("COMMIT")));
    let attempts = AtomicU64::new(0);
    let err = insert_and_bump(&pool, 1, &attempts).await.unwrap_err();
    assert!(cut.fired());
    // The client cannot tell "COMMIT never reached the server" from "the answer was lost".
    assert!(is_commit_unknown(&err), "{err}");
    assert_eq!(attempts.load(Ordering::Relaxed), 1, "not retried");
    assert_eq!(counts(&direct).await, (0, 0), "the COMMIT never arrived");
}

// ------------------------------------------------------------------------------------------
// Server faults
// ------------------------------------------------------------------------------------------

struct Terminate {
    pid: mpsc::UnboundedSender<i32>,
    killed: Notify,
}

#[serializable_retry(max = 3, backoff(base = "1ms", cap = "10ms"))]
async fn insert_terminated_once(
    tx: &mut PgConnection,
    attempts: &AtomicU64,
    ctl: &Terminate,
) -> Result<(), sqlx::Error> {
    let n = attempts.fetch_add(1, Ordering::Relaxed) + 1;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await?;
    if n == 1 {
        let killed = ctl.killed.notified();
        ctl.pid.send(pid).unwrap();
        killed.await;
    }
    sqlx::query("INSERT INTO items (id, v) VALUES (1, 'x')")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backend_mid_body_is_retried_and_applied_once() {
    let isolated = isolated_schema().await;
    let direct = setup(&isolated).await;
    let pool = isolated.pool(4).await;
    let (send, mut recv) = mpsc::unbounded_channel();
    let ctl = Arc::new(Terminate {
        pid: send,
        killed: Notify::new(),
    });
    let killer = {
        let ctl = Arc::clone(&ctl);
        let direct = direct.clone();
        tokio::spawn(async move {
            let pid = recv.recv().await.unwrap();
            let ok: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
                .bind(pid)
                .fetch_one(&direct)
                .await
                .unwrap();
            assert!(ok);
            ctl.killed.notify_one();
            pid
        })
    };
    let attempts = AtomicU64::new(0);
    insert_terminated_once(&pool, &attempts, &ctl)
        .await
        .expect("retried on a fresh connection");
    killer.await.unwrap();
    assert_eq!(attempts.load(Ordering::Relaxed), 2);
    assert_eq!(counts(&direct).await.0, 1, "applied exactly once");
}

#[serializable_retry(max = 10, backoff(base = "5ms", cap = "200ms"), budget = "5s")]
async fn restart_transfer(
    tx: &mut PgConnection,
    from: i64,
    to: i64,
    amount: i64,
) -> Result<bool, sqlx::Error> {
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

#[derive(Default, Debug)]
struct Kinds {
    ok: u64,
    ok_after_restart: u64,
    exhausted_40001: u64,
    connection: u64,
    commit_unknown: u64,
    other: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_stress_pool_recovers_and_invariants_hold() {
    let counter = retries();
    const TASKS: usize = 12;
    let secs = stress_secs(3).max(3);
    let server = Arc::new(
        tokio::task::spawn_blocking(PgServer::start_throwaway)
            .await
            .unwrap()
            .expect("a private throwaway cluster"),
    );
    let pool = PgPoolOptions::new()
        .max_connections(TASKS as u32 + 2)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(server.connect_options())
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
         INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 8) g;",
    )
    .execute(&pool)
    .await
    .unwrap();

    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let restarted_at: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let restarter = {
        let server = Arc::clone(&server);
        let restarted_at = Arc::clone(&restarted_at);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs) / 3).await;
            let began = Instant::now();
            tokio::task::spawn_blocking(move || server.restart())
                .await
                .unwrap()
                .expect("restart");
            restarted_at.set(Instant::now()).unwrap();
            Instant::now() - began
        })
    };
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let pool = pool.clone();
        let restarted_at = Arc::clone(&restarted_at);
        handles.push(tokio::spawn(async move {
            let mut k = Kinds::default();
            while Instant::now() < deadline {
                let from = fastrand::i64(1..=8);
                let to = from % 8 + 1;
                let called = Instant::now();
                match restart_transfer(&pool, from, to, fastrand::i64(1..=200)).await {
                    Ok(_) => {
                        k.ok += 1;
                        if restarted_at.get().is_some_and(|t| called > *t) {
                            k.ok_after_restart += 1;
                        }
                    }
                    Err(e) if is_commit_unknown(&e) => k.commit_unknown += 1,
                    Err(e) if code_of(&e).as_deref() == Some("40001") => k.exhausted_40001 += 1,
                    Err(e)
                        if sqlx_retry::error::classify_sqlx(&e, &[]) == Class::ConnectionLost =>
                    {
                        k.connection += 1
                    }
                    Err(e) => k.other.push(format!("{e:?}")),
                }
            }
            k
        }));
    }
    let mut all = Kinds::default();
    for h in handles {
        let k = h.await.unwrap();
        all.ok += k.ok;
        all.ok_after_restart += k.ok_after_restart;
        all.exhausted_40001 += k.exhausted_40001;
        all.connection += k.connection;
        all.commit_unknown += k.commit_unknown;
        all.other.extend(k.other);
    }
    let downtime = restarter.await.unwrap();
    let (total, negative): (i64, i64) = sqlx::query_as(
        "SELECT sum(balance)::bigint, count(*) FILTER (WHERE balance < 0) FROM accounts",
    )
    .fetch_one(&pool)
    .await
    .expect("the pool recovered");
    println!(
        "[reliability] restart: tasks={TASKS} secs={secs} restart_took={:.0}ms ok={} \
         ok_started_after_restart={} exhausted_40001={} connection_errors={} commit_unknown={} \
         other={} retries_by_sqlstate={:?} total={total} negative={negative}",
        downtime.as_secs_f64() * 1e3,
        all.ok,
        all.ok_after_restart,
        all.exhausted_40001,
        all.connection,
        all.commit_unknown,
        all.other.len(),
        counter.by_sqlstate("restart_transfer"),
    );
    assert!(
        all.other.is_empty(),
        "undocumented error kinds: {:?}",
        all.other
    );
    assert!(
        all.ok_after_restart > 0,
        "no call succeeded after the restart"
    );
    assert_eq!(total, 8_000, "total balance not conserved");
    assert_eq!(negative, 0);
    pool.close().await;
}

// ------------------------------------------------------------------------------------------
// Timeouts
// ------------------------------------------------------------------------------------------

#[serializable_retry(max = 5, backoff(base = "1ms", cap = "5ms"))]
async fn sleeps_past_statement_timeout(
    tx: &mut PgConnection,
    attempts: &AtomicU64,
) -> Result<(), sqlx::Error> {
    attempts.fetch_add(1, Ordering::Relaxed);
    sqlx::raw_sql("SET LOCAL statement_timeout = '50ms'")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_sleep(1)").execute(&mut *tx).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_is_not_retried() {
    let (pool, _schema) = sqlx_retry_testkit::isolated_pool(2).await;
    let attempts = AtomicU64::new(0);
    let started = Instant::now();
    let err = sleeps_past_statement_timeout(&pool, &attempts)
        .await
        .unwrap_err();
    assert_eq!(code_of(&err).as_deref(), Some("57014"));
    assert_eq!(attempts.load(Ordering::Relaxed), 1);
    assert!(started.elapsed() < Duration::from_millis(900));
}

struct LockHolder {
    release: mpsc::UnboundedSender<()>,
    released: Notify,
}

#[serializable_retry(max = 3, backoff(base = "1ms", cap = "5ms"))]
async fn update_locked_default(
    tx: &mut PgConnection,
    attempts: &AtomicU64,
) -> Result<(), sqlx::Error> {
    attempts.fetch_add(1, Ordering::Relaxed);
    sqlx::raw_sql("SET LOCAL lock_timeout = '50ms'")
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE counter SET n = n + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[serializable_retry(max = 3, backoff(base = "1ms", cap = "5ms"), retry_on = ["55P03"])]
async fn update_locked_retry_on(
    tx: &mut PgConnection,
    attempts: &AtomicU64,
    holder: &LockHolder,
) -> Result<(), sqlx::Error> {
    attempts.fetch_add(1, Ordering::Relaxed);
    sqlx::raw_sql("SET LOCAL lock_timeout = '50ms'")
        .execute(&mut *tx)
        .await?;
    let out = sqlx::query("UPDATE counter SET n = n + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await;
    if out.is_err() {
        // Let the lock go before the backoff, so that the next attempt finds the row free.
        let released = holder.released.notified();
        let _ = holder.release.send(());
        released.await;
    }
    out?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeout_not_retried_by_default_retried_with_retry_on() {
    let isolated = isolated_schema().await;
    let direct = setup(&isolated).await;
    let pool = isolated.pool(2).await;
    let mut lock_tx = direct.begin().await.unwrap();
    sqlx::query("SELECT n FROM counter WHERE id = 1 FOR UPDATE")
        .execute(&mut *lock_tx)
        .await
        .unwrap();

    let attempts = AtomicU64::new(0);
    let err = update_locked_default(&pool, &attempts).await.unwrap_err();
    assert_eq!(code_of(&err).as_deref(), Some("55P03"));
    assert_eq!(
        attempts.load(Ordering::Relaxed),
        1,
        "55P03 is not retried by default"
    );

    let (release, mut release_rx) = mpsc::unbounded_channel();
    let holder = Arc::new(LockHolder {
        release,
        released: Notify::new(),
    });
    let releaser = {
        let holder = Arc::clone(&holder);
        tokio::spawn(async move {
            release_rx.recv().await.unwrap();
            lock_tx.rollback().await.unwrap();
            holder.released.notify_one();
        })
    };
    let attempts = AtomicU64::new(0);
    update_locked_retry_on(&pool, &attempts, &holder)
        .await
        .expect("attempt 2 finds the row free");
    assert_eq!(attempts.load(Ordering::Relaxed), 2);
    releaser.await.unwrap();
    assert_eq!(counts(&direct).await.1, 1);
}

#[serializable_retry(max = 50, backoff(base = "20ms", cap = "100ms"), budget = "300ms")]
async fn always_40001_with_budget(
    tx: &mut PgConnection,
    attempts: &AtomicU64,
) -> Result<(), sqlx::Error> {
    attempts.fetch_add(1, Ordering::Relaxed);
    sqlx::raw_sql("DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40001'; END $$")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_budget_ends_the_call_within_budget_plus_one_attempt() {
    let (pool, _schema) = sqlx_retry_testkit::isolated_pool(2).await;
    // Warm the connection so that connecting is not part of the measurement.
    sqlx::query("SELECT 1").execute(&pool).await.unwrap();
    let attempts = AtomicU64::new(0);
    let started = Instant::now();
    let err = always_40001_with_budget(&pool, &attempts)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    let attempts = attempts.load(Ordering::Relaxed);
    assert_eq!(code_of(&err).as_deref(), Some("40001"));
    assert!(
        elapsed < Duration::from_millis(500),
        "budget 300ms, took {elapsed:?}"
    );
    assert!(attempts > 1 && attempts < 50, "attempts {attempts}");
}
