//! `Cluster` on a real primary + hot standby pair: which server each call runs on, and what a
//! call meets when the standby is down, lagging, or refuses what the call does.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection, PgPool};
use sqlx_retry::{Cluster, IsolationLevel, Policy, transaction};
use sqlx_retry_testkit::{PgReplicaPair, ReplicaSchema};

use crate::{PAIR, code, wait_until, with_event_log, with_retry_log};

/// The pair, its replay running, with a schema holding `t (id, n)` = (1, 10), (2, 20), (3, 30)
/// replayed on the standby; pools on the primary and the standby.
pub async fn setup() -> (
    &'static PgReplicaPair,
    ReplicaSchema<'static>,
    PgPool,
    PgPool,
) {
    let pair = tokio::task::spawn_blocking(PgReplicaPair::global)
        .await
        .expect("start the pair");
    assert!(pair.standby_is_up(), "another test left the standby down");
    pair.resume_replay().await.expect("resume replay");
    let schema = pair.isolated_schema().await;
    let primary = schema.primary_pool(8).await;
    sqlx::raw_sql(
        "CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL); \
         INSERT INTO t VALUES (1, 10), (2, 20), (3, 30)",
    )
    .execute(&primary)
    .await
    .expect("setup on the primary");
    pair.wait_for_replay().await.expect("replayed");
    let standby = schema.standby_pool(8).await;
    (pair, schema, primary, standby)
}

/// Resumes the standby's replay when dropped, so that a failing test does not leave it paused
/// for the others.
pub struct ResumeOnDrop(pub &'static PgReplicaPair);

impl Drop for ResumeOnDrop {
    fn drop(&mut self) {
        let pair = self.0;
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(pair.resume_replay()))
        })
        .join();
    }
}

/// `read_only`, `REPEATABLE READ`, `replica`: may run on a standby.
pub fn replica_read() -> Policy {
    Policy::builder()
        .read_only(true)
        .isolation(IsolationLevel::RepeatableRead)
        .replica(true)
        .max_attempts(3)
        .build()
        .expect("valid policy")
}

/// Where a transaction runs and the value of row `id` there: `(on_standby, n)`.
pub async fn read_row(conn: &mut PgConnection, id: i32) -> Result<(bool, i32), sqlx::Error> {
    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut *conn)
        .await?;
    let n: i32 = sqlx::query_scalar("SELECT n FROM t WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    Ok((standby, n))
}

/// Runs `read_row(id)` under `policy` through `source`.
pub async fn read_through<S>(
    source: S,
    policy: &Policy,
    id: i32,
) -> Result<(bool, i32), sqlx::Error>
where
    S: sqlx_retry::TransactionSource<PgConnection>,
{
    transaction(source, policy, move |tx: &mut PgConnection| {
        Box::pin(read_row(tx, id))
    })
    .await
}

/// Sets row `id` to `n` under the default policy through `source`; says where it ran.
pub async fn write_through<S>(source: S, id: i32, n: i32) -> Result<bool, sqlx::Error>
where
    S: sqlx_retry::TransactionSource<PgConnection>,
{
    transaction(source, &Policy::default(), move |tx: &mut PgConnection| {
        Box::pin(async move {
            sqlx::query("UPDATE t SET n = $2 WHERE id = $1")
                .bind(id)
                .bind(n)
                .execute(&mut *tx)
                .await?;
            sqlx::query_scalar("SELECT pg_is_in_recovery()")
                .fetch_one(&mut *tx)
                .await
        })
    })
    .await
}

/// Waits until a replica call through `source` runs on the standby, checking that every call
/// sees `n` in row `id`.
pub async fn wait_until_standby<S>(source: S, id: i32, n: i32)
where
    S: sqlx_retry::TransactionSource<PgConnection> + Copy,
{
    wait_until(
        "a replica call to run on the standby",
        Duration::from_secs(10),
        async || {
            let (on_standby, seen) = read_through(source, &replica_read(), id).await.unwrap();
            assert_eq!(seen, n, "on_standby {on_standby}");
            on_standby
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_calls_run_on_the_standby_and_every_other_call_on_the_primary() {
    let _pair = PAIR.lock().await;
    let (_pair, _schema, primary, standby) = setup().await;
    let cluster = Cluster::builder(primary.clone())
        .replica(standby.clone())
        .max_lag(Duration::from_secs(5))
        .build();
    let read_only_on_primary = Policy::builder()
        .read_only(true)
        .isolation(IsolationLevel::RepeatableRead)
        .build()
        .unwrap();

    assert_eq!(
        read_through(&cluster, &replica_read(), 1).await.unwrap(),
        (true, 10)
    );
    assert_eq!(
        read_through(&cluster, &read_only_on_primary, 1)
            .await
            .unwrap(),
        (false, 10)
    );
    assert!(
        !write_through(&cluster, 1, 11).await.unwrap(),
        "writes run on the primary"
    );
    let session = cluster.session();
    assert!(!write_through(&session, 2, 21).await.unwrap());
    assert_eq!(
        read_through(&session, &read_only_on_primary, 2)
            .await
            .unwrap(),
        (false, 21)
    );

    // With a plain pool, a `replica` call runs on that pool, whichever server it reaches.
    assert_eq!(
        read_through(&primary, &replica_read(), 3).await.unwrap(),
        (false, 30)
    );
    assert_eq!(
        read_through(&standby, &replica_read(), 3).await.unwrap(),
        (true, 30)
    );
    let mut conn = primary.acquire().await.unwrap();
    assert_eq!(
        read_through(&mut *conn, &replica_read(), 3).await.unwrap(),
        (false, 30)
    );

    // A cluster without standbys runs everything on the primary.
    let alone = Cluster::builder(primary.clone()).build();
    assert_eq!(
        read_through(&alone, &replica_read(), 3).await.unwrap(),
        (false, 30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_is_down_is_skipped_with_no_error_and_tried_again_after_the_down_period() {
    let _pair = PAIR.lock().await;
    let (pair, schema, primary, _standby) = setup().await;
    // A pool that would wait 10 s for a connection to a server that is down.
    let standby = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(schema.standby_options())
        .await
        .expect("standby pool");
    let (standby_timeout, down_period) = (Duration::from_millis(300), Duration::from_millis(800));
    let cluster = Cluster::builder(primary.clone())
        .replica(standby)
        .max_lag(Duration::from_secs(5))
        .standby_timeout(standby_timeout)
        .down_period(down_period)
        .build();
    assert_eq!(
        read_through(&cluster, &replica_read(), 1).await.unwrap(),
        (true, 10)
    );

    tokio::task::block_in_place(|| pair.stop_standby()).expect("stop the standby");
    let started = Instant::now();
    let (first, events) = with_event_log(read_through(&cluster, &replica_read(), 1)).await;
    let waited = started.elapsed();
    let (second, events_within_period) =
        with_event_log(read_through(&cluster, &replica_read(), 1)).await;
    let restarted = tokio::task::block_in_place(|| pair.start_standby());

    // The call that found it down ran on the primary, after at most about standby_timeout
    // (far from the pool's 10 s), and marked it down.
    assert_eq!(first.expect("no error to the caller"), (false, 10));
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    let marked = |events: &[String]| {
        events
            .iter()
            .filter(|m| m.contains("standby unavailable"))
            .count()
    };
    assert_eq!(marked(&events), 1, "{events:?}");
    // Within the down period, calls do not try it.
    assert_eq!(second.unwrap(), (false, 10));
    assert_eq!(marked(&events_within_period), 0, "{events_within_period:?}");
    restarted.expect("start the standby");

    // After the down period, the next call tries it again, and runs on it.
    tokio::time::sleep(down_period).await;
    wait_until(
        "a replica call to run on the standby again",
        Duration::from_secs(10),
        async || read_through(&cluster, &replica_read(), 1).await.unwrap().0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_lagging_past_max_lag_sends_replica_calls_to_the_primary() {
    let _pair = PAIR.lock().await;
    let (pair, _schema, primary, standby) = setup().await;
    let max_lag = Duration::from_millis(150);
    let cluster = Cluster::builder(primary.clone())
        .replica(standby)
        .max_lag(max_lag)
        .build();
    assert_eq!(
        read_through(&cluster, &replica_read(), 1).await.unwrap(),
        (true, 10)
    );

    pair.pause_replay().await.expect("pause replay");
    let _resume = ResumeOnDrop(pair);
    assert!(!write_through(&cluster, 1, 11).await.unwrap());
    // The standby has WAL it does not replay: its lag grows past max_lag.
    tokio::time::sleep(max_lag * 3).await;
    for _ in 0..5 {
        assert_eq!(
            read_through(&cluster, &replica_read(), 1).await.unwrap(),
            (false, 11),
            "a lagging standby is skipped"
        );
    }

    pair.resume_replay().await.expect("resume replay");
    // Measured again at most max_lag / 4 after it was found lagging.
    wait_until_standby(&cluster, 1, 11).await;
}

/// Writes, though its policy says `read_only` and `replica`.
async fn insert(conn: &mut PgConnection, runs: &AtomicU32) -> Result<(), sqlx::Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    sqlx::query("INSERT INTO t VALUES (4, 40)")
        .execute(&mut *conn)
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_a_replica_call_fails_with_25006_and_is_not_retried() {
    let _pair = PAIR.lock().await;
    let (_pair, _schema, primary, standby) = setup().await;
    let cluster = Cluster::builder(primary.clone())
        .replica(standby)
        .max_lag(Duration::from_secs(5))
        .build();
    let runs = Arc::new(AtomicU32::new(0));
    let (result, retries) = with_retry_log(transaction(
        &cluster,
        &replica_read(),
        |tx: &mut PgConnection| {
            let runs = runs.clone();
            Box::pin(async move { insert(tx, &runs).await })
        },
    ))
    .await;
    let err = result.expect_err("a read-only transaction refuses writes");
    assert_eq!(code(&err).as_deref(), Some("25006"), "{err}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(retries.is_empty(), "{retries:?}");
}

/// Counts the rows, slowly on its first run, and says where it ran.
async fn count_slowly(
    conn: &mut PgConnection,
    runs: &AtomicU32,
    first_error: &Mutex<Option<String>>,
) -> Result<(bool, i64), sqlx::Error> {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    let sql = if run == 1 {
        "SELECT count(*) FROM t CROSS JOIN pg_sleep(5)"
    } else {
        "SELECT count(*) FROM t"
    };
    let out = sqlx::query_scalar(sql).fetch_one(&mut *conn).await;
    if let (1, Err(e)) = (run, &out) {
        *first_error.lock().unwrap() = Some(format!("{} {e}", code(e).unwrap_or_default()));
    }
    let n = out?;
    let on_standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut *conn)
        .await?;
    Ok((on_standby, n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_conflict_in_a_replica_call_is_retried_through_the_cluster() {
    let _pair = PAIR.lock().await;
    let (_pair, schema, primary, standby) = setup().await;
    let cluster = Cluster::builder(primary.clone())
        .replica(standby)
        .max_lag(Duration::from_secs(5))
        .build();
    let mut admin = PgConnection::connect_with(&schema.standby_options())
        .await
        .expect("connect to the standby");
    let (runs, first_error) = (Arc::new(AtomicU32::new(0)), Arc::new(Mutex::new(None)));
    let policy = replica_read();
    let call = with_retry_log(transaction(&cluster, &policy, |tx: &mut PgConnection| {
        let (runs, first_error) = (runs.clone(), first_error.clone());
        Box::pin(async move { count_slowly(tx, &runs, &first_error).await })
    }));
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
        sqlx::raw_sql("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; COMMIT")
            .execute(&primary)
            .await
            .expect("LOCK TABLE on the primary");
    };
    let ((result, retries), ()) = tokio::join!(call, conflict);
    assert_eq!(result.expect("the second run succeeds"), (true, 3));
    let first_error = first_error.lock().unwrap().take().unwrap_or_default();
    assert!(
        first_error.starts_with("40001 ")
            && first_error.contains("canceling statement due to conflict with recovery"),
        "{first_error}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert_eq!(retries[0].sqlstate, "40001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_skips_a_standby_that_is_down_for_another_standby() {
    let _pair = PAIR.lock().await;
    let (_pair, schema, primary, standby) = setup().await;
    // A second "standby" where nothing listens: a port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let nowhere = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(schema.standby_options().port(port));
    let cluster = Cluster::builder(primary.clone())
        .replica(nowhere)
        .replica(standby)
        .max_lag(Duration::from_secs(5))
        .standby_timeout(Duration::from_millis(200))
        .down_period(Duration::from_secs(60))
        .build();
    // Standbys take turns, so some of these calls try the dead one first: all of them run on
    // the live standby, and the dead one is marked down once.
    let (results, events) = with_event_log(async {
        let mut results = Vec::new();
        for _ in 0..6 {
            results.push(read_through(&cluster, &replica_read(), 2).await);
        }
        results
    })
    .await;
    for result in results {
        assert_eq!(result.expect("no error to the caller"), (true, 20));
    }
    let marked = events
        .iter()
        .filter(|m| m.contains("standby unavailable"))
        .count();
    assert_eq!(marked, 1, "{events:?}");
}
