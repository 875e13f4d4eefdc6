//! Tests of the test harness itself: server, isolated schemas and the proxy.

use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection, PgPool};
use sqlx_retry_testkit::{
    Fault, FrontendMessage, Matcher, PgProxy, PgServer, connect_options, isolated_pool,
    isolated_schema, postgres_url,
};

async fn count_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(pool)
        .await
        .expect("count rows")
}

fn is_io_error(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Io(_))
}

#[tokio::test]
async fn postgres_url_gives_a_working_database() {
    let url = postgres_url();
    assert!(url.starts_with("postgres://"), "{url}");
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .expect("SELECT 1");
    assert_eq!(one, 1);
    conn.close().await.expect("close");
}

#[test]
fn postgres_url_is_cached_and_thread_safe() {
    let urls: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(postgres_url)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(urls.iter().all(|u| *u == urls[0]), "{urls:?}");
    assert_eq!(postgres_url(), urls[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_pools_use_separate_schemas() {
    let (pool_a, schema_a) = isolated_pool(2).await;
    let (pool_b, schema_b) = isolated_pool(2).await;
    assert_ne!(schema_a.schema(), schema_b.schema());

    for pool in [&pool_a, &pool_b] {
        sqlx::raw_sql("CREATE TABLE items (id int PRIMARY KEY)")
            .execute(pool)
            .await
            .expect("create table in own schema");
    }
    sqlx::raw_sql("INSERT INTO items VALUES (1), (2)")
        .execute(&pool_a)
        .await
        .unwrap();
    sqlx::raw_sql("INSERT INTO items VALUES (1)")
        .execute(&pool_b)
        .await
        .unwrap();
    assert_eq!(count_rows(&pool_a).await, 2);
    assert_eq!(count_rows(&pool_b).await, 1);

    let current: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&pool_a)
        .await
        .unwrap();
    assert_eq!(current, schema_a.schema());

    pool_a.close().await;
    pool_b.close().await;
    schema_a.drop_schema().await.expect("drop schema a");
    let mut conn = PgConnection::connect_with(&connect_options())
        .await
        .unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema_b.schema())
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(exists);
    schema_b.drop_schema().await.expect("drop schema b");
}

#[tokio::test]
async fn proxy_forwards_and_counts_round_trips() {
    let proxy = PgProxy::for_test_db().await;
    assert!(proxy.url().contains(&format!(":{}", proxy.addr().port())));
    assert!(proxy.url().contains("sslmode=disable"), "{}", proxy.url());

    // A plain connection (no pool pings) through the URL.
    let mut conn = PgConnection::connect(&proxy.url()).await.expect("connect");
    assert_eq!(proxy.active_connections(), 1);
    proxy.reset_stats();

    sqlx::raw_sql("SELECT 1").execute(&mut conn).await.unwrap();
    let stats = proxy.stats();
    assert_eq!(stats.round_trips, 1, "{stats:?}");
    assert_eq!(stats.simple_queries, 1, "{stats:?}");
    assert!(stats.bytes_to_server > 0 && stats.bytes_to_client > 0);

    // A prepared statement: the first execution may prepare it, later ones are one
    // Bind/Execute/Sync round trip each.
    let query = || sqlx::query_scalar::<_, i32>("SELECT $1::int + 1").bind(41);
    assert_eq!(query().fetch_one(&mut conn).await.unwrap(), 42);
    let before = proxy.stats();
    for _ in 0..3 {
        assert_eq!(query().fetch_one(&mut conn).await.unwrap(), 42);
    }
    let delta = proxy.stats().since(&before);
    assert_eq!(delta.round_trips, 3, "{delta:?}");
    assert_eq!(delta.syncs, 3, "{delta:?}");
    assert_eq!(delta.binds, 3, "{delta:?}");
    assert_eq!(delta.parses, 0, "{delta:?}");

    proxy.reset_stats();
    assert_eq!(proxy.stats().round_trips, 0);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn cut_before_forwarding_commit_loses_the_transaction() {
    let schema = isolated_schema().await;
    let direct = schema.pool(2).await;
    sqlx::raw_sql("CREATE TABLE items (id int PRIMARY KEY)")
        .execute(&direct)
        .await
        .unwrap();
    let proxy = PgProxy::for_test_db().await;
    let pool = schema.pool_via(&proxy, 2).await;

    let fault = proxy.arm(Fault::CutBeforeForwarding(Matcher::QueryStartsWith(
        "COMMIT",
    )));
    assert_eq!(proxy.armed(), 1);
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO items VALUES ($1)")
        .bind(1)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert!(!fault.fired());
    let error = tx.commit().await.expect_err("the COMMIT must fail");
    assert!(fault.fired());
    assert_eq!(proxy.fired(), 1);
    assert_eq!(proxy.armed(), 0);
    eprintln!("commit error (cut before): {error:?}");

    assert_eq!(count_rows(&direct).await, 0, "the server never saw COMMIT");
    // The pool recovers with a fresh connection.
    assert_eq!(count_rows(&pool).await, 0);
    pool.close().await;
    direct.close().await;
    schema.drop_schema().await.unwrap();
}

#[tokio::test]
async fn cut_after_forwarding_commit_keeps_the_transaction() {
    let schema = isolated_schema().await;
    let direct = schema.pool(2).await;
    sqlx::raw_sql("CREATE TABLE items (id int PRIMARY KEY)")
        .execute(&direct)
        .await
        .unwrap();
    let proxy = PgProxy::for_test_db().await;
    let pool = schema.pool_via(&proxy, 2).await;

    let fault = proxy.arm(Fault::CutAfterForwarding(Matcher::QueryStartsWith(
        "commit",
    )));
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO items VALUES ($1)")
        .bind(1)
        .execute(&mut *tx)
        .await
        .unwrap();
    let started = Instant::now();
    let error = tx.commit().await.expect_err("the COMMIT answer is lost");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "cut right after the answer, not after the grace period"
    );
    assert!(is_io_error(&error), "expected an I/O error, got {error:?}");
    assert!(fault.fired());

    assert_eq!(count_rows(&direct).await, 1, "the COMMIT landed");
    pool.close().await;
    direct.close().await;
    schema.drop_schema().await.unwrap();
}

#[tokio::test]
async fn any_extended_query_cuts_the_transaction_body() {
    let schema = isolated_schema().await;
    let direct = schema.pool(2).await;
    sqlx::raw_sql("CREATE TABLE items (id int PRIMARY KEY)")
        .execute(&direct)
        .await
        .unwrap();
    let proxy = PgProxy::for_test_db().await;
    let pool = schema.pool_via(&proxy, 1).await;
    let insert = |id: i32| sqlx::query("INSERT INTO items VALUES ($1)").bind(id);

    // Outside a transaction nothing matches …
    let fault = proxy.arm(Fault::CutBeforeForwarding(Matcher::AnyExtendedQuery));
    insert(1).execute(&pool).await.unwrap();
    assert!(!fault.fired());

    // … inside one the first statement does, even though it is already prepared.
    let mut tx = pool.begin().await.unwrap();
    let error = insert(2).execute(&mut *tx).await.expect_err("cut");
    assert!(is_io_error(&error), "{error:?}");
    assert!(fault.wait_fired(Duration::from_secs(1)).await);
    drop(tx);
    assert_eq!(count_rows(&direct).await, 1);
    pool.close().await;
    direct.close().await;
    schema.drop_schema().await.unwrap();
}

#[tokio::test]
async fn nth_query_delay_predicate_and_disarm() {
    let proxy = PgProxy::for_test_db().await;
    let mut conn = PgConnection::connect_with(&proxy.connect_options())
        .await
        .unwrap();

    // Disarmed faults never fire.
    let disarmed = proxy.arm(Fault::CutBeforeForwarding(Matcher::QueryContains("never")));
    assert!(disarmed.disarm());
    sqlx::raw_sql("SELECT 'never'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(!disarmed.fired());

    let delay = proxy.arm(Fault::DelayBeforeForwarding(
        Matcher::Predicate(|m: &FrontendMessage<'_>| m.sql() == Some("SELECT 'slow'")),
        Duration::from_millis(300),
    ));
    let started = Instant::now();
    sqlx::raw_sql("SELECT 'slow'")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(delay.fired());

    // Two statements so far on this connection; the 4th one is cut.
    let nth = proxy.arm(Fault::CutBeforeForwarding(Matcher::NthQueryOnConnection(4)));
    sqlx::raw_sql("SELECT 3").execute(&mut conn).await.unwrap();
    assert!(!nth.fired());
    let error = sqlx::raw_sql("SELECT 4")
        .execute(&mut conn)
        .await
        .expect_err("cut");
    assert!(nth.fired(), "{error:?}");
}

#[tokio::test]
async fn cut_all_and_reject_new_connections() {
    let proxy = PgProxy::for_test_db().await;
    let mut a = PgConnection::connect(&proxy.url()).await.unwrap();
    let mut b = PgConnection::connect(&proxy.url()).await.unwrap();
    assert_eq!(proxy.cut_all(), 2);
    for conn in [&mut a, &mut b] {
        let error = sqlx::raw_sql("SELECT 1")
            .execute(&mut *conn)
            .await
            .expect_err("connection was cut");
        assert!(is_io_error(&error), "{error:?}");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(proxy.active_connections(), 0);

    proxy.set_reject_new_connections(true);
    PgConnection::connect(&proxy.url())
        .await
        .expect_err("rejected");
    proxy.set_reject_new_connections(false);
    let mut c = PgConnection::connect(&proxy.url()).await.unwrap();
    sqlx::raw_sql("SELECT 1").execute(&mut c).await.unwrap();
}

#[tokio::test]
async fn dropping_the_proxy_closes_everything() {
    let proxy = PgProxy::for_test_db().await;
    let addr = proxy.addr();
    let mut conn = PgConnection::connect(&proxy.url()).await.unwrap();
    drop(proxy);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(sqlx::raw_sql("SELECT 1").execute(&mut conn).await.is_err());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn foreign_servers_cannot_be_restarted() {
    let server = PgServer::external("postgres://someone@db.invalid:5432/x").unwrap();
    assert!(!server.is_throwaway());
    assert_eq!(server.port(), 5432);
    let error = server.restart().expect_err("foreign server");
    assert!(error.to_string().contains("DATABASE_URL"), "{error}");
}

#[tokio::test]
async fn private_throwaway_server_restarts() {
    if std::env::var_os("DATABASE_URL").is_some() {
        // Only a foreign server is available (no local binaries expected).
        return;
    }
    let server = PgServer::start_throwaway().expect("throwaway server");
    let data_dir = server.data_dir().unwrap().to_owned();
    let mut before = PgConnection::connect(server.url()).await.unwrap();
    sqlx::raw_sql("CREATE TABLE kept (id int); INSERT INTO kept VALUES (7)")
        .execute(&mut before)
        .await
        .unwrap();

    server.restart().expect("restart");
    assert!(
        sqlx::raw_sql("SELECT 1")
            .execute(&mut before)
            .await
            .is_err(),
        "connections don't survive the restart"
    );
    let mut after = PgConnection::connect(server.url()).await.unwrap();
    let kept: i32 = sqlx::query_scalar("SELECT id FROM kept")
        .fetch_one(&mut after)
        .await
        .unwrap();
    assert_eq!(kept, 7);
    after.close().await.unwrap();

    drop(server);
    assert!(!data_dir.exists(), "dropping removes the cluster");
}
