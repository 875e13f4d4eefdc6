//! Tests of the primary + standby pair and of pgbouncer themselves.

use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection};
use sqlx_retry_testkit::{PgBouncer, PgReplicaPair, PoolMode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_pair_replays_pauses_resumes_and_restarts_the_standby() {
    // A private pair: this test pauses replay and stops the standby.
    let pair = tokio::task::spawn_blocking(PgReplicaPair::start)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let schema = pair.isolated_schema().await;
    let primary = schema.primary_pool(2).await;
    let standby = schema.standby_pool(2).await;
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM t")
            .fetch_one(&standby)
            .await
            .expect("count on the standby")
    };

    sqlx::raw_sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        .execute(&primary)
        .await
        .unwrap();
    pair.wait_for_replay().await.unwrap();
    assert_eq!(count().await, 1);

    // The standby is read-only: a write fails with 25006.
    let write = sqlx::query("INSERT INTO t VALUES (2)")
        .execute(&standby)
        .await
        .unwrap_err();
    assert_eq!(
        write.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("25006"),
        "{write}"
    );

    // Paused replay: the standby keeps showing the old state, and waiting for it says why it
    // can't end.
    pair.pause_replay().await.unwrap();
    assert!(pair.replay_paused().await.unwrap());
    sqlx::query("INSERT INTO t VALUES (2)")
        .execute(&primary)
        .await
        .unwrap();
    let err = pair.wait_for_replay().await.unwrap_err();
    assert!(err.message().contains("paused"), "{err}");
    assert_eq!(count().await, 1);
    pair.resume_replay().await.unwrap();
    pair.wait_for_replay().await.unwrap();
    assert_eq!(count().await, 2);

    // A stopped standby refuses connections; started again, it catches up.
    tokio::task::block_in_place(|| pair.stop_standby()).unwrap();
    assert!(!pair.standby_is_up());
    let refused = PgConnection::connect_with(&schema.standby_options()).await;
    assert!(refused.is_err(), "connected to a stopped standby");
    sqlx::query("INSERT INTO t VALUES (3)")
        .execute(&primary)
        .await
        .unwrap();
    tokio::task::block_in_place(|| pair.start_standby()).unwrap();
    assert!(pair.standby_is_up());
    assert_eq!(count().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_pair_is_shared_and_caught_up() {
    let pair = tokio::task::spawn_blocking(PgReplicaPair::global)
        .await
        .unwrap();
    assert!(std::ptr::eq(pair, PgReplicaPair::global()));
    assert_ne!(pair.primary_port(), pair.standby_port());
    let mut standby = PgConnection::connect_with(&pair.standby_options())
        .await
        .unwrap();
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut standby)
        .await
        .unwrap();
    assert!(in_recovery);
    let mut primary = PgConnection::connect_with(&pair.primary_options())
        .await
        .unwrap();
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut primary)
        .await
        .unwrap();
    assert!(!in_recovery);
    pair.wait_for_replay().await.unwrap();
    let lag: bool = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
        .bind(pair.primary_lsn().await.unwrap())
        .fetch_one(&mut standby)
        .await
        .unwrap();
    assert!(lag, "wait_for_replay returned before the standby caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_pools_transactions_and_its_server_connections_can_be_killed() {
    let bouncer = tokio::task::spawn_blocking(PgBouncer::global)
        .await
        .unwrap();
    assert_eq!(bouncer.pool_mode(), PoolMode::Transaction);
    let db = bouncer.isolated_database().await;
    let pool = db.pool(4).await;

    // Through the pooler, to the isolated database upstream.
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .persistent(false)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name, db.name());

    // A transaction holds one server connection, `active` in SHOW SERVERS; killing it behind
    // the pooler breaks the client's transaction.
    let mut tx = pool.begin().await.unwrap();
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .persistent(false)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let servers = db.server_connections().await.unwrap();
    assert!(
        servers
            .iter()
            .any(|s| s.pid == backend && s.state == "active"),
        "{servers:?}"
    );
    let killed = db.kill_server_connections().await.unwrap();
    assert!(killed >= 1, "{killed}");
    let err = sqlx::query("SELECT 1")
        .persistent(false)
        .execute(&mut *tx)
        .await
        .unwrap_err();
    // pgbouncer relays the server's FATAL "terminating connection due to administrator command".
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("57P01"),
        "{err:?}"
    );
    drop(tx);

    // The pool recovers: pgbouncer opens a new server connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let again = sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
            .persistent(false)
            .fetch_one(&pool)
            .await;
        match again {
            Ok(pid) => {
                assert_ne!(pid, backend);
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(e) => panic!("pgbouncer did not recover: {e}\n{}", bouncer.log_tail(20)),
        }
    }
    let rows = bouncer.admin("SHOW POOLS").await.unwrap();
    assert!(
        rows.iter()
            .any(|r| r.get("database").cloned().flatten().as_deref() == Some(db.name())),
        "{rows:?}"
    );
}
