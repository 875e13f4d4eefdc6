//! Sessions on a real primary + hot standby pair: a `replica` call through a session sees every
//! commit made earlier through it, whatever the standby's lag; through the plain cluster it can
//! miss them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgConnection;
use sqlx_retry::cluster::Session;
use sqlx_retry::{Cluster, Policy, serializable_retry, transaction};

use crate::PAIR;
use crate::cluster::{
    ResumeOnDrop, read_through, replica_read, setup, wait_until_standby, write_through,
};
use sqlx_retry_testkit::{Fault, Matcher, PgProxy, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_its_own_writes_while_replay_is_paused_and_the_cluster_does_not() {
    let _pair = PAIR.lock().await;
    let (pair, _schema, primary, standby) = setup().await;
    // Sessions wait at most 100 ms for the standby; the plain cluster tolerates 30 s of lag,
    // so that it keeps reading on the paused standby.
    let cluster = Cluster::builder(primary.clone())
        .replica(standby.clone())
        .max_lag(Duration::from_millis(100))
        .build();
    let tolerant = Cluster::builder(primary.clone())
        .replica(standby.clone())
        .max_lag(Duration::from_secs(30))
        .build();
    let session = cluster.session();
    assert_eq!(session.last_commit_lsn(), None);
    // Before the session wrote anything, its replica calls run on the standby.
    assert_eq!(
        read_through(&session, &replica_read(), 1).await.unwrap(),
        (true, 10)
    );

    pair.pause_replay().await.expect("pause replay");
    let _resume = ResumeOnDrop(pair);
    assert!(!write_through(&session, 1, 11).await.unwrap());
    assert!(session.last_commit_lsn().is_some());
    // The standby has not replayed the write: the plain cluster reads there and misses it.
    assert_eq!(
        read_through(&tolerant, &replica_read(), 1).await.unwrap(),
        (true, 10)
    );
    // The session (and any clone of it: the same session) waits for the standby at most
    // max_lag, then reads on the primary.
    let clone = session.clone();
    let started = Instant::now();
    assert_eq!(
        read_through(&clone, &replica_read(), 1).await.unwrap(),
        (false, 11)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Another session has written nothing: it reads on the standby.
    let other = tolerant.session();
    assert_eq!(
        read_through(&other, &replica_read(), 1).await.unwrap(),
        (true, 10)
    );

    // Once the standby has replayed the write, the session reads there again.
    pair.resume_replay().await.expect("resume replay");
    wait_until_standby(&session, 1, 11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_writes_record_a_position_past_their_commit() {
    let _pair = PAIR.lock().await;
    let (pair, _schema, primary, standby) = setup().await;
    let cluster = Cluster::builder(primary.clone()).replica(standby).build();
    let session = cluster.session();
    assert!(!write_through(&session, 2, 21).await.unwrap());
    let recorded = session.last_commit_lsn().expect("a position");
    // The primary's WAL has reached the recorded position.
    let reached: bool = sqlx::query_scalar("SELECT pg_current_wal_lsn() >= $1::text::pg_lsn")
        .bind(&recorded)
        .fetch_one(&primary)
        .await
        .unwrap();
    assert!(reached, "{recorded}");
    // A read-only call through the session records nothing.
    read_through(&session, &replica_read(), 2).await.unwrap();
    let ro = Policy::builder().read_only(true).build().unwrap();
    transaction(&session, &ro, |tx: &mut PgConnection| {
        Box::pin(async move { sqlx::query("SELECT 1").execute(&mut *tx).await.map(drop) })
    })
    .await
    .unwrap();
    assert_eq!(session.last_commit_lsn(), Some(recorded));
    pair.wait_for_replay().await.unwrap();
}

/// Where a stress task sends its calls.
#[derive(Clone)]
enum Via {
    Cluster(Cluster),
    Session(Session),
}

impl Via {
    async fn write(&self, id: i32, n: i32) {
        match self {
            Via::Cluster(c) => write_through(c, id, n).await,
            Via::Session(s) => write_through(s, id, n).await,
        }
        .expect("write");
    }

    async fn read(&self, id: i32) -> (bool, i32) {
        match self {
            Via::Cluster(c) => read_through(c, &replica_read(), id).await,
            Via::Session(s) => read_through(s, &replica_read(), id).await,
        }
        .expect("read")
    }
}

/// What a stress run saw.
#[derive(Debug, Default)]
struct Seen {
    reads: AtomicU64,
    stale: AtomicU64,
    on_standby: AtomicU64,
}

/// `TASKS` tasks, each bumping its own row (from 0; ids from `first_id`) and reading it back at
/// once, for `duration`.
async fn bump_and_read(first_id: i32, duration: Duration, via: impl Fn() -> Via) -> Seen {
    let seen = Arc::new(Seen::default());
    let deadline = Instant::now() + duration;
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let (via, seen) = (via(), seen.clone());
        handles.push(tokio::spawn(async move {
            let id = first_id + task;
            let mut n = 0;
            while Instant::now() < deadline {
                n += 1;
                via.write(id, n).await;
                let (on_standby, value) = via.read(id).await;
                seen.reads.fetch_add(1, Ordering::Relaxed);
                if on_standby {
                    seen.on_standby.fetch_add(1, Ordering::Relaxed);
                }
                if value < n {
                    seen.stale.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for handle in handles {
        handle.await.expect("a stress task failed");
    }
    Arc::into_inner(seen).unwrap_or_default()
}

const TASKS: i32 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_sessions_never_miss_their_writes_while_the_standby_lags_and_the_cluster_can() {
    let _pair = PAIR.lock().await;
    let (pair, _schema, primary, standby) = setup().await;
    // Rows 100.. for the sessions, 200.. for the plain cluster.
    sqlx::query(
        "INSERT INTO t SELECT g, 0 FROM generate_series(100, 99 + $1) g \
         UNION ALL SELECT g, 0 FROM generate_series(200, 199 + $1) g",
    )
    .bind(TASKS)
    .execute(&primary)
    .await
    .unwrap();
    pair.wait_for_replay().await.unwrap();
    let _resume = ResumeOnDrop(pair);

    // Sessions, while replay is paused and resumed in a loop.
    let cluster = Cluster::builder(primary.clone())
        .replica(standby.clone())
        .max_lag(Duration::from_millis(50))
        .build();
    let stop = Arc::new(AtomicBool::new(false));
    let lagger = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut pauses = 0;
            while !stop.load(Ordering::Relaxed) {
                pair.pause_replay().await.expect("pause replay");
                pauses += 1;
                tokio::time::sleep(Duration::from_millis(80)).await;
                pair.resume_replay().await.expect("resume replay");
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            pauses
        }
    });
    let seen = bump_and_read(100, Duration::from_secs(3), || {
        Via::Session(cluster.session())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let pauses = lagger.await.expect("the lagger");
    pair.resume_replay().await.unwrap();
    eprintln!("through sessions, {pauses} pauses of replay: {seen:?}");
    assert_eq!(seen.stale.load(Ordering::Relaxed), 0, "{seen:?}");
    assert!(pauses >= 5, "{pauses}");
    assert!(seen.reads.load(Ordering::Relaxed) >= 50, "{seen:?}");
    // The guarantee was exercised on the standby, not only by reading on the primary.
    assert!(seen.on_standby.load(Ordering::Relaxed) > 0, "{seen:?}");

    // The same workload through the plain cluster, replay paused: reads on the standby miss.
    pair.wait_for_replay().await.unwrap();
    let plain = Cluster::builder(primary.clone())
        .replica(standby.clone())
        .max_lag(Duration::from_secs(30))
        .build();
    pair.pause_replay().await.expect("pause replay");
    let seen = bump_and_read(200, Duration::from_millis(500), || {
        Via::Cluster(plain.clone())
    })
    .await;
    pair.resume_replay().await.unwrap();
    eprintln!("through the plain cluster, replay paused: {seen:?}");
    assert!(seen.stale.load(Ordering::Relaxed) >= 1, "{seen:?}");
}

/// Reads row `id` and says where it ran: may run on a standby.
#[serializable_retry(read_only, isolation = "repeatable_read", replica)]
async fn balance(tx: &mut PgConnection, id: i32) -> Result<(bool, i32), sqlx::Error> {
    crate::cluster::read_row(tx, id).await
}

/// Sets row `id` to `n`: runs on the primary.
#[serializable_retry]
async fn set(tx: &mut PgConnection, id: i32, n: i32) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE t SET n = $2 WHERE id = $1")
        .bind(id)
        .bind(n)
        .execute(&mut *tx)
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_replica_functions_route_through_a_cluster_and_a_session() {
    let _pair = PAIR.lock().await;
    let (pair, _schema, primary, standby) = setup().await;
    let cluster = Cluster::builder(primary.clone())
        .replica(standby.clone())
        .max_lag(Duration::from_millis(100))
        .build();
    set(&cluster, 1, 11).await.unwrap();
    pair.wait_for_replay().await.unwrap();
    assert_eq!(balance(&cluster, 1).await.unwrap(), (true, 11));

    pair.pause_replay().await.expect("pause replay");
    let _resume = ResumeOnDrop(pair);
    let session = cluster.session();
    set(&session, 1, 12).await.unwrap();
    assert_eq!(balance(&session, 1).await.unwrap(), (false, 12));
    // The same functions with a plain pool run on it.
    assert_eq!(balance(&standby, 1).await.unwrap(), (true, 11));
    assert_eq!(balance(&primary, 1).await.unwrap(), (false, 12));
    pair.resume_replay().await.expect("resume replay");
    wait_until_standby(&session, 1, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_does_not_wait_for_a_replica_that_is_not_in_recovery() {
    let _pair = PAIR.lock().await;
    let (_pair, _schema, primary, _standby) = setup().await;
    // A "replica" pool that reaches a primary (say, a promoted standby): it has no replay
    // position, so a session that wrote never waits max_lag (30 s here) for it.
    let cluster = Cluster::builder(primary.clone())
        .replica(primary.clone())
        .max_lag(Duration::from_secs(30))
        .build();
    let session = cluster.session();
    assert!(!write_through(&session, 3, 31).await.unwrap());
    let started = Instant::now();
    assert_eq!(
        read_through(&session, &replica_read(), 3).await.unwrap(),
        (false, 31)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_session_write_whose_commit_outcome_is_unknown_the_session_reads_on_the_primary() {
    let _pair = PAIR.lock().await;
    let (pair, schema, primary, standby) = setup().await;
    // The session's primary is reached through a proxy that cuts the COMMIT's reply after the
    // server committed: the session cannot learn the commit's position.
    let proxy = PgProxy::start(Upstream::from_options(&pair.primary_options()).unwrap()).await;
    let through_proxy = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(proxy.schema_options(schema.schema()))
        .await
        .expect("pool through the proxy");
    let cluster = Cluster::builder(through_proxy)
        .replica(standby.clone())
        .max_lag(Duration::from_secs(30))
        .build();
    let session = cluster.session();
    pair.pause_replay().await.expect("pause replay");
    let _resume = ResumeOnDrop(pair);
    let cut = proxy.arm(Fault::CutAfterForwarding(Matcher::QueryContains("COMMIT")));
    let err = write_through(&session, 1, 13)
        .await
        .expect_err("the reply was cut");
    assert!(cut.fired());
    assert!(sqlx_retry::is_commit_unknown(&err), "{err:?}");
    // It did commit, and the session's reads now run on the primary, where they see it.
    let n: i32 = sqlx::query_scalar("SELECT n FROM t WHERE id = 1")
        .fetch_one(&primary)
        .await
        .unwrap();
    assert_eq!(n, 13);
    assert_eq!(
        session.last_commit_lsn().as_deref(),
        Some("FFFFFFFF/FFFFFFFF")
    );
    assert_eq!(
        read_through(&session, &replica_read(), 1).await.unwrap(),
        (false, 13)
    );
    // The paused standby has not replayed it: the plain cluster misses it there.
    assert_eq!(
        read_through(&cluster, &replica_read(), 1).await.unwrap(),
        (true, 10)
    );
}

/// Round trips `proxy` forwarded during `call`, the pool's ping on release included.
async fn round_trips<T>(proxy: &PgProxy, call: impl std::future::Future<Output = T>) -> (T, u64) {
    let before = proxy.stats();
    let out = call.await;
    // The pool pings a connection it takes back after the call returned.
    tokio::time::sleep(Duration::from_millis(100)).await;
    (out, proxy.stats().since(&before).round_trips)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_adds_no_round_trip_to_a_write_or_to_a_read_on_a_standby_that_caught_up() {
    let _pair = PAIR.lock().await;
    let (pair, schema, _primary, _standby) = setup().await;
    let proxied = async |options: sqlx::postgres::PgConnectOptions| {
        let proxy = PgProxy::start(Upstream::from_options(&options).unwrap()).await;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_with(proxy.schema_options(schema.schema()))
            .await
            .expect("pool through a proxy");
        (proxy, pool)
    };
    let (to_primary, primary) = proxied(pair.primary_options()).await;
    let (to_standby, standby) = proxied(pair.standby_options()).await;
    let cluster = Cluster::builder(primary.clone())
        .replica(standby.clone())
        .max_lag(Duration::from_secs(30))
        .build();
    let session = cluster.session();
    // Warm up: each pool's connection open, the standby's lag measured.
    write_through(&primary, 1, 10).await.unwrap();
    read_through(&cluster, &replica_read(), 1).await.unwrap();

    let (on, pool_write) = round_trips(&to_primary, write_through(&primary, 1, 11)).await;
    assert!(!on.unwrap());
    let (on, session_write) = round_trips(&to_primary, write_through(&session, 1, 12)).await;
    assert!(!on.unwrap());
    assert_eq!(session_write, pool_write);

    pair.wait_for_replay().await.unwrap();
    let (read, pool_read) =
        round_trips(&to_standby, read_through(&standby, &replica_read(), 1)).await;
    assert_eq!(read.unwrap(), (true, 12));
    let (read, cluster_read) =
        round_trips(&to_standby, read_through(&cluster, &replica_read(), 1)).await;
    assert_eq!(read.unwrap(), (true, 12));
    let (read, session_read) =
        round_trips(&to_standby, read_through(&session, &replica_read(), 1)).await;
    assert_eq!(read.unwrap(), (true, 12));
    eprintln!(
        "round trips: write {pool_write} (pool) / {session_write} (session); replica read \
         {pool_read} (pool) / {cluster_read} (cluster) / {session_read} (session)"
    );
    assert_eq!(cluster_read, pool_read);
    assert_eq!(session_read, pool_read);
}
