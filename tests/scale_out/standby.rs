//! On a hot standby streaming from a primary: recovery conflicts, the isolation level a
//! standby refuses, and writes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::time::Duration;

use sqlx::{Connection as _, PgConnection, PgPool};
use sqlx_retry::serializable_retry;
use sqlx_retry_testkit::{PgReplicaPair, ReplicaSchema};
use tokio::sync::Notify;

use crate::{PAIR, code, wait_until, with_retry_log};

/// A schema on the shared pair with a table `t` of three rows, replayed on the standby.
async fn setup() -> (ReplicaSchema<'static>, PgPool, PgPool) {
    let pair = tokio::task::spawn_blocking(PgReplicaPair::global)
        .await
        .expect("start the pair");
    assert!(pair.standby_is_up(), "another test left the standby down");
    let schema = pair.isolated_schema().await;
    let primary = schema.primary_pool(2).await;
    sqlx::raw_sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2), (3)")
        .execute(&primary)
        .await
        .expect("setup on the primary");
    pair.wait_for_replay().await.expect("replayed");
    let standby = schema.standby_pool(4).await;
    (schema, primary, standby)
}

/// An admin connection to the standby, in the test's schema.
async fn standby_admin(schema: &ReplicaSchema<'_>) -> PgConnection {
    PgConnection::connect_with(&schema.standby_options())
        .await
        .expect("connect to the standby")
}

/// Takes an ACCESS EXCLUSIVE lock on `t` on the primary and commits. The lock is WAL-logged:
/// replaying it, the standby waits `STANDBY_MAX_DELAY` for standby sessions holding a lock
/// on `t`, then cancels their statement (ERROR 40001), or ends their session (FATAL 40001)
/// when they sit idle in a transaction.
async fn lock_on_primary(primary: &PgPool) {
    sqlx::raw_sql("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; COMMIT")
        .execute(primary)
        .await
        .expect("LOCK TABLE on the primary");
}

/// Counts the rows; the first run does it slowly (5 s) so it holds its lock on `t` while the
/// primary's ACCESS EXCLUSIVE lock is replayed.
#[serializable_retry(read_only, isolation = "repeatable_read", max = 3)]
async fn count_slowly(
    tx: &mut PgConnection,
    runs: &AtomicU32,
    first_error: &Mutex<Option<String>>,
) -> Result<i64, sqlx::Error> {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    let sql = if run == 1 {
        "SELECT count(*) FROM t CROSS JOIN pg_sleep(5)"
    } else {
        "SELECT count(*) FROM t"
    };
    let out = sqlx::query_scalar(sql).fetch_one(&mut *tx).await;
    if let (1, Err(e)) = (run, &out) {
        *first_error.lock().unwrap() = Some(format!("{} {e}", code(e).unwrap_or_default()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_cancelled_by_a_recovery_conflict_is_retried_and_succeeds() {
    let _pair = PAIR.lock().await;
    let (schema, primary, standby) = setup().await;
    let mut admin = standby_admin(&schema).await;
    let (runs, first_error) = (AtomicU32::new(0), Mutex::new(None));
    let call = with_retry_log(count_slowly(&standby, &runs, &first_error));
    let conflict = async {
        wait_until(
            "the standby query to hold its lock on t",
            Duration::from_secs(5),
            async || {
                sqlx::query_scalar::<_, bool>(
                    "SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                     WHERE l.relation = 't'::regclass AND l.granted AND a.state = 'active' \
                       AND a.query LIKE '%pg_sleep%' AND a.pid <> pg_backend_pid()",
                )
                .fetch_one(&mut admin)
                .await
                .expect("pg_locks on the standby")
            },
        )
        .await;
        lock_on_primary(&primary).await;
    };
    let ((result, retries), ()) = tokio::join!(call, conflict);
    assert_eq!(result.expect("the second run succeeds"), 3);
    let first_error = first_error.lock().unwrap().take().unwrap_or_default();
    assert!(
        first_error.starts_with("40001 ")
            && first_error.contains("canceling statement due to conflict with recovery"),
        "{first_error}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert_eq!(retries[0].sqlstate, "40001");
    // A recovery conflict is raised in postgres.c, which names its kind.
    assert_eq!(retries[0].conflict, "recovery", "{retries:?}");
}

/// Counts the rows twice; on its first run parks idle in the transaction between the two, so
/// that replay ends the session (FATAL 40001) while it holds its lock on `t`.
#[serializable_retry(read_only, isolation = "repeatable_read", max = 4)]
async fn count_twice(
    tx: &mut PgConnection,
    parked: &Notify,
    go: &Notify,
    backend: &AtomicI32,
    runs: &AtomicU32,
    first_error: &Mutex<Option<String>>,
) -> Result<i64, sqlx::Error> {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut *tx)
        .await?;
    if run == 1 {
        backend.store(pid, Ordering::SeqCst);
        parked.notify_one();
        tokio::time::timeout(Duration::from_secs(5), go.notified())
            .await
            .expect("the test lets the first run go on");
    }
    let again = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM t")
        .fetch_one(&mut *tx)
        .await;
    if let (1, Err(e)) = (run, &again) {
        *first_error.lock().unwrap() = Some(format!("{} {e}", code(e).unwrap_or_default()));
    }
    assert_eq!(again?, n, "one snapshot");
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_by_a_recovery_conflict_is_retried_on_a_fresh_pooled_connection() {
    let _pair = PAIR.lock().await;
    let (schema, primary, standby) = setup().await;
    let mut admin = standby_admin(&schema).await;
    let (parked, go, backend) = (Notify::new(), Notify::new(), AtomicI32::new(0));
    let (runs, first_error) = (AtomicU32::new(0), Mutex::new(None));
    let call = with_retry_log(count_twice(
        &standby,
        &parked,
        &go,
        &backend,
        &runs,
        &first_error,
    ));
    let conflict = async {
        tokio::time::timeout(Duration::from_secs(5), parked.notified())
            .await
            .expect("the first run parks");
        let pid = backend.load(Ordering::SeqCst);
        let state = || {
            sqlx::query_scalar::<_, Option<String>>(
                "SELECT (SELECT state FROM pg_stat_activity WHERE pid = $1)",
            )
            .bind(pid)
        };
        let idle = state().fetch_one(&mut admin).await.expect("state");
        assert_eq!(idle.as_deref(), Some("idle in transaction"));
        lock_on_primary(&primary).await;
        wait_until(
            "the standby to end the idle session",
            Duration::from_secs(5),
            async || {
                state()
                    .fetch_one(&mut admin)
                    .await
                    .expect("state")
                    .is_none()
            },
        )
        .await;
        go.notify_one();
    };
    let ((result, retries), ()) = tokio::join!(call, conflict);
    let first_error = first_error.lock().unwrap().take().unwrap_or_default();
    eprintln!(
        "FATAL recovery conflict: result {result:?}, runs {}, first run's error {first_error:?}, \
         retries {retries:?}",
        runs.load(Ordering::SeqCst)
    );
    assert_eq!(result.expect("retried to success"), 3);
    assert!(
        first_error.starts_with("40001 ")
            && first_error.contains("terminating connection due to conflict with recovery"),
        "{first_error}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert_eq!(
        (retries[0].sqlstate.as_str(), retries[0].conflict.as_str()),
        ("40001", "recovery")
    );
}

/// Reads at the default level, SERIALIZABLE, which a standby refuses.
#[serializable_retry(read_only)]
async fn count_serializable(tx: &mut PgConnection, runs: &AtomicU32) -> Result<i64, sqlx::Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut *tx)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_on_a_standby_fails_with_0a000_and_is_not_retried() {
    let _pair = PAIR.lock().await;
    let (_schema, primary, standby) = setup().await;
    let runs = AtomicU32::new(0);
    let (result, retries) = with_retry_log(count_serializable(&standby, &runs)).await;
    let err = result.expect_err("a standby refuses SERIALIZABLE");
    assert_eq!(code(&err).as_deref(), Some("0A000"), "{err}");
    assert!(
        err.to_string()
            .contains("cannot use serializable mode in a hot standby"),
        "{err}"
    );
    // The one-statement BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY itself fails: the body
    // never runs, and nothing is retried.
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert!(retries.is_empty(), "{retries:?}");
    // The same function is fine on the primary.
    assert_eq!(count_serializable(&primary, &runs).await.unwrap(), 3);
}

/// Writes, declared read-only.
#[serializable_retry(read_only, isolation = "repeatable_read")]
async fn insert_read_only(tx: &mut PgConnection, runs: &AtomicU32) -> Result<(), sqlx::Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    sqlx::query("INSERT INTO t VALUES (4)")
        .execute(&mut *tx)
        .await
        .map(drop)
}

/// Writes, read-write (the standby makes every transaction read-only anyway).
#[serializable_retry(isolation = "repeatable_read")]
async fn insert_read_write(tx: &mut PgConnection, runs: &AtomicU32) -> Result<(), sqlx::Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    sqlx::query("INSERT INTO t VALUES (4)")
        .execute(&mut *tx)
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_standby_fails_with_25006_and_is_not_retried() {
    let _pair = PAIR.lock().await;
    let (_schema, _primary, standby) = setup().await;
    for read_only in [true, false] {
        let runs = AtomicU32::new(0);
        let (result, retries) = with_retry_log(async {
            if read_only {
                insert_read_only(&standby, &runs).await
            } else {
                insert_read_write(&standby, &runs).await
            }
        })
        .await;
        let err = result.expect_err("a standby refuses writes");
        assert_eq!(
            code(&err).as_deref(),
            Some("25006"),
            "read_only {read_only}: {err}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1, "read_only {read_only}");
        assert!(retries.is_empty(), "read_only {read_only}: {retries:?}");
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&standby)
        .await
        .unwrap();
    assert_eq!(rows, 3);
}

/// Counts the rows.
#[serializable_retry(read_only, isolation = "repeatable_read")]
async fn count(tx: &mut PgConnection, runs: &AtomicU32) -> Result<i64, sqlx::Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&mut *tx)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_a_pool_whose_standby_is_down_times_out_acquiring_and_is_not_retried() {
    let _pair = PAIR.lock().await;
    let (schema, _primary, _standby) = setup().await;
    let pair = PgReplicaPair::global();
    let acquire_timeout = Duration::from_millis(300);
    let standby = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(acquire_timeout)
        .connect_with(schema.standby_options())
        .await
        .expect("standby pool");
    let runs = AtomicU32::new(0);
    assert_eq!(count(&standby, &runs).await.unwrap(), 3);

    tokio::task::block_in_place(|| pair.stop_standby()).expect("stop the standby");
    let started = std::time::Instant::now();
    let (result, retries) = with_retry_log(count(&standby, &runs)).await;
    let waited = started.elapsed();
    let restarted = tokio::task::block_in_place(|| pair.start_standby());
    // Today: the pool's idle connection fails its ping, new ones are refused, and sqlx's pool
    // retries connecting until its acquire timeout; PoolTimedOut is not a lost connection to the
    // retry loop, so the call returns it after one attempt whose body never ran.
    let err = result.expect_err("the standby is down");
    assert!(matches!(err, sqlx::Error::PoolTimedOut), "{err:?}");
    assert!(retries.is_empty(), "{retries:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(waited >= acquire_timeout, "{waited:?}");
    restarted.expect("start the standby");

    // The same pool works again once the standby is back.
    assert_eq!(count(&standby, &runs).await.unwrap(), 3);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// Reads the backend's pid; on its first run parks idle in the transaction, then reads again.
#[serializable_retry(read_only, isolation = "repeatable_read", max = 4)]
async fn read_parked(
    tx: &mut PgConnection,
    parked: &Notify,
    go: &Notify,
    backend: &AtomicI32,
    runs: &AtomicU32,
) -> Result<i32, sqlx::Error> {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await?;
    if run == 1 {
        backend.store(pid, Ordering::SeqCst);
        parked.notify_one();
        tokio::time::timeout(Duration::from_secs(5), go.notified())
            .await
            .expect("the test lets the first run go on");
    }
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_because_its_database_was_dropped_57p04_is_not_retried() {
    let _pair = PAIR.lock().await;
    let pair = tokio::task::spawn_blocking(PgReplicaPair::global)
        .await
        .expect("start the pair");
    let name = format!("d_{}", std::process::id());
    let mut primary = PgConnection::connect_with(&pair.primary_options())
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut primary)
        .await
        .expect("CREATE DATABASE on the primary");
    pair.wait_for_replay().await.expect("replayed");
    let standby = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_millis(500))
        .connect_with(pair.standby_options().database(&name))
        .await
        .expect("standby pool on the new database");
    let mut admin = PgConnection::connect_with(&pair.standby_options())
        .await
        .unwrap();

    let (parked, go, backend, runs) = (
        Notify::new(),
        Notify::new(),
        AtomicI32::new(0),
        AtomicU32::new(0),
    );
    let call = with_retry_log(read_parked(&standby, &parked, &go, &backend, &runs));
    let drop_database = async {
        tokio::time::timeout(Duration::from_secs(5), parked.notified())
            .await
            .expect("the first run parks");
        let pid = backend.load(Ordering::SeqCst);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
            .execute(&mut primary)
            .await
            .expect("DROP DATABASE on the primary");
        wait_until(
            "the standby to end the session on the dropped database",
            Duration::from_secs(5),
            async || {
                sqlx::query_scalar::<_, bool>(
                    "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
                )
                .bind(pid)
                .fetch_one(&mut admin)
                .await
                .expect("pg_stat_activity on the standby")
            },
        )
        .await;
        go.notify_one();
    };
    let ((result, retries), ()) = tokio::join!(call, drop_database);
    let err = result.expect_err("the database is gone");
    assert_eq!(code(&err).as_deref(), Some("57P04"), "{err}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(retries.is_empty(), "{retries:?}");
}
