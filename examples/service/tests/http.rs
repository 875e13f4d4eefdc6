//! The service over real HTTP on 127.0.0.1: concurrent clients, the status of each outcome, and
//! a client that leaves mid-transaction. The database is the testkit's (`DATABASE_URL`, or a
//! throwaway cluster).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use reqwest::StatusCode;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use sqlx_retry::serializable_retry;
use sqlx_retry_example_service::http::{AppState, router};
use sqlx_retry_example_service::{MIGRATOR, install_metrics};
use sqlx_retry_testkit::{Fault, Isolated, Matcher, PgProxy};
use tokio::net::TcpListener;

const CLIENTS: usize = 32;
const ACCOUNTS: i64 = 4;
const INITIAL: i64 = 1_000;
/// How long the clients post transfers, and how many each may post at most.
const LOAD: Duration = Duration::from_secs(3);
const MAX_REQUESTS_PER_CLIENT: usize = 400;

/// Held by the tests that call `transfer`: the load test compares the process-wide metrics of
/// `transfer` with the statuses it saw.
static TRANSFER_METRICS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Serves `app` on a free port of 127.0.0.1 and returns its base URL. The server task ends
/// with the test's runtime.
async fn serve(app: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A pool on a fresh schema of the test server, with the service's migrations applied, its
/// sessions named `application_name` in pg_stat_activity.
async fn service_pool(application_name: &str, max_connections: u32) -> (PgPool, Isolated) {
    let schema = sqlx_retry_testkit::isolated_schema().await;
    let options = schema.connect_options().application_name(application_name);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .unwrap();
    MIGRATOR.run(&pool).await.unwrap();
    (pool, schema)
}

async fn balances(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT balance FROM accounts ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The sum of `name{labels…}` samples whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_over_http_conserve_money_and_show_retries_by_sqlstate() {
    let _metrics = TRANSFER_METRICS.lock().await;
    let (pool, schema) = service_pool("service-http-load", 16).await;
    let base = serve(router(AppState {
        pool: pool.clone(),
        metrics: install_metrics(),
    }))
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    for _ in 0..ACCOUNTS {
        let response = client
            .post(format!("{base}/accounts"))
            .json(&serde_json::json!({ "balance": INITIAL }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }

    // Few accounts, many clients: most transfers touch an account another one is writing.
    let deadline = Instant::now() + LOAD;
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (client, base) = (client.clone(), base.clone());
        clients.push(tokio::spawn(async move {
            let mut seen: BTreeMap<(u16, String), u64> = BTreeMap::new();
            let mut n = 0;
            while Instant::now() < deadline && n < MAX_REQUESTS_PER_CLIENT {
                n += 1;
                let from = fastrand::i64(1..=ACCOUNTS);
                let to = from % ACCOUNTS + 1;
                let response = client
                    .post(format!("{base}/transfers"))
                    .header("idempotency-key", format!("client-{c}-{n}"))
                    .json(&serde_json::json!({ "from": from, "to": to, "amount": fastrand::i64(1..=300) }))
                    .send()
                    .await
                    .expect("the service answers every request");
                let status = response.status();
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    assert_eq!(response.headers()["retry-after"], "1", "503 without Retry-After");
                }
                let body: serde_json::Value = response.json().await.unwrap();
                let code = body["error"].as_str().unwrap_or("").to_owned();
                *seen.entry((status.as_u16(), code)).or_default() += 1;
            }
            seen
        }));
    }
    let mut seen: BTreeMap<(u16, String), u64> = BTreeMap::new();
    for client in clients {
        for (key, n) in client.await.unwrap() {
            *seen.entry(key).or_default() += n;
        }
    }
    let count =
        |status: u16, code: &str| seen.get(&(status, code.to_owned())).copied().unwrap_or(0);
    let requests: u64 = seen.values().sum();
    let (created, declined, gave_up) = (
        count(201, ""),
        count(409, "insufficient_funds"),
        count(503, "conflict"),
    );

    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let retries = |sqlstate: &str| {
        metric(
            &metrics,
            "sqlx_retry_retries_total",
            &[r#"fn="transfer""#, &format!(r#"sqlstate="{sqlstate}""#)],
        ) as u64
    };
    println!(
        "{CLIENTS} clients, {LOAD:?}, {ACCOUNTS} accounts: {requests} requests; by status: {seen:?}; \
         retries by SQLSTATE: 40001 {}, 40P01 {}",
        retries("40001"),
        retries("40P01")
    );

    // Every response is one the README documents for a transfer.
    assert_eq!(
        created + declined + gave_up,
        requests,
        "unexpected statuses: {seen:?}"
    );
    assert!(created > 0, "no transfer committed: {seen:?}");
    // The money is where the ledger says it is.
    let balances = balances(&pool).await;
    assert_eq!(
        balances.iter().sum::<i64>(),
        ACCOUNTS * INITIAL,
        "total not conserved: {balances:?}"
    );
    assert!(
        balances.iter().all(|b| *b >= 0),
        "negative balance: {balances:?}"
    );
    let ledger: Vec<i64> = sqlx::query_scalar(
        "SELECT ($1 - coalesce((SELECT sum(amount) FROM transfers WHERE from_account = a.id), 0)
                    + coalesce((SELECT sum(amount) FROM transfers WHERE to_account = a.id), 0))::bigint
         FROM accounts a ORDER BY id",
    )
    .bind(INITIAL)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        balances, ledger,
        "balances disagree with the committed transfers"
    );
    let transfers: i64 = sqlx::query_scalar("SELECT count(*) FROM transfers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        transfers as u64, created,
        "a 201 for each committed transfer, and no other"
    );

    // The metrics tell the same story as the responses.
    assert!(
        retries("40001") > 0,
        "no 40001 retry in /metrics:\n{metrics}"
    );
    let committed = metric(
        &metrics,
        "sqlx_retry_calls_total",
        &[r#"fn="transfer""#, r#"outcome="committed""#],
    );
    assert_eq!(committed as u64, created);
    let exhausted = metric(
        &metrics,
        "sqlx_retry_exhausted_total",
        &[r#"fn="transfer""#],
    );
    assert_eq!(
        exhausted as u64, gave_up,
        "each 503 is a call that spent its attempts"
    );
    pool.close().await;
    schema.drop_schema().await.unwrap();
}

/// What the handler of the slow route saw.
#[derive(Default)]
struct Probe {
    finished: AtomicBool,
    dropped: AtomicBool,
}

/// Sets `dropped` if the handler's future is dropped before it finished.
struct DropGuard(Arc<Probe>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.0.finished.load(Ordering::SeqCst) {
            self.0.dropped.store(true, Ordering::SeqCst);
        }
    }
}

/// A transfer that holds its transaction open on the server between the debit and the credit.
#[serializable_retry(max = 1)]
async fn slow_transfer(tx: &mut PgConnection, hold_secs: f64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE accounts SET balance = balance - 100 WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT pg_sleep($1)")
        .bind(hold_secs)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE accounts SET balance = balance + 100 WHERE id = 2")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn slow(State((pool, probe)): State<(PgPool, Arc<Probe>)>) -> &'static str {
    let _guard = DropGuard(probe.clone());
    slow_transfer(&pool, 3.0).await.unwrap();
    probe.finished.store(true, Ordering::SeqCst);
    "done"
}

/// Polls `check` every 50 ms until it holds or `limit` passes; returns whether it held.
async fn eventually<F: AsyncFnMut() -> bool>(limit: Duration, mut check: F) -> bool {
    let until = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_transaction_leaves_no_open_transaction_and_no_partial_commit()
 {
    const APP: &str = "service-http-disconnect";
    let (pool, schema) = service_pool(APP, 4).await;
    sqlx::query("INSERT INTO accounts (balance) VALUES (1000), (1000)")
        .execute(&pool)
        .await
        .unwrap();
    let probe = Arc::new(Probe::default());
    let slow_route = Router::new()
        .route("/slow-transfer", post(slow))
        .with_state((pool.clone(), probe.clone()));
    let base = serve(
        router(AppState {
            pool: pool.clone(),
            metrics: install_metrics(),
        })
        .merge(slow_route),
    )
    .await;
    // The monitor's own session is not named APP.
    let monitor = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(sqlx_retry_testkit::connect_options())
        .await
        .unwrap();
    let in_transaction = |state: &'static str| {
        let monitor = monitor.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = $1 AND xact_start IS NOT NULL AND state LIKE $2",
            )
            .bind(APP)
            .bind(state)
            .fetch_one(&monitor)
            .await
            .unwrap()
        }
    };

    // The client gives up after 1 s, while the server sleeps in the transaction, and its
    // connection is closed when reqwest drops the request.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let request = tokio::spawn(client.post(format!("{base}/slow-transfer")).send());
    assert!(
        eventually(Duration::from_secs(5), async || in_transaction("active")
            .await
            == 1)
        .await,
        "the slow transfer's transaction never showed up in pg_stat_activity"
    );
    let sent = request.await.unwrap();
    assert!(
        sent.is_err_and(|e| e.is_timeout()),
        "the client should have timed out"
    );

    // axum (hyper) notices the closed connection and drops the handler's future, inside
    // `slow_transfer`'s transaction.
    assert!(
        eventually(Duration::from_secs(5), async || probe
            .dropped
            .load(Ordering::SeqCst))
        .await,
        "the handler's future was not dropped when the client disconnected"
    );
    // sqlx rolls the dropped transaction back once the sleep ends; nothing stays open.
    assert!(
        eventually(Duration::from_secs(10), async || in_transaction("%").await
            == 0)
        .await,
        "a session of the service is still in a transaction: {} idle in transaction",
        in_transaction("idle in transaction%").await
    );
    assert!(!probe.finished.load(Ordering::SeqCst));
    assert_eq!(
        balances(&pool).await,
        [1000, 1000],
        "the debit without the credit was committed"
    );
    let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM transfers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(committed, 0);
    pool.close().await;
    schema.drop_schema().await.unwrap();
}

/// Sends `request` and returns its status, its `error` code (empty when there is none) and
/// whether it carried `Retry-After`.
async fn outcome(request: reqwest::RequestBuilder) -> (u16, String, bool) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let code = body["error"].as_str().unwrap_or("").to_owned();
    (status, code, retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_outcome_has_its_documented_status_and_an_unknown_commit_is_resolved_by_its_key() {
    let _metrics = TRANSFER_METRICS.lock().await;
    let schema = sqlx_retry_testkit::isolated_schema().await;
    let direct = schema.pool(2).await;
    MIGRATOR.run(&direct).await.unwrap();
    // The service reaches the database through a proxy that can cut a connection.
    let proxy = PgProxy::for_test_db().await;
    let base = serve(router(AppState {
        pool: schema.pool_via(&proxy, 4).await,
        metrics: install_metrics(),
    }))
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let post =
        |path: &str, body: serde_json::Value| client.post(format!("{base}{path}")).json(&body);
    let get = |path: &str| client.get(format!("{base}{path}"));
    let transfer = |key: &str, amount: i64| {
        post(
            "/transfers",
            serde_json::json!({ "from": 1, "to": 2, "amount": amount }),
        )
        .header("idempotency-key", key)
    };

    for _ in 0..2 {
        let (status, ..) = outcome(post("/accounts", serde_json::json!({ "balance": 100 }))).await;
        assert_eq!(status, 201);
    }
    assert_eq!(
        outcome(get("/accounts/99")).await,
        (404, "unknown_account".into(), false)
    );
    assert_eq!(
        outcome(get("/transfers/nothing")).await,
        (404, "unknown_transfer".into(), false)
    );
    let invalid = (422, "invalid_request".into(), false);
    assert_eq!(outcome(transfer("k", 0)).await, invalid);
    assert_eq!(
        outcome(post(
            "/transfers",
            serde_json::json!({ "from": 1, "to": 1, "amount": 5 })
        ))
        .await,
        invalid
    );
    assert_eq!(
        outcome(post("/transfers", serde_json::json!({ "from": 1 }))).await,
        invalid
    );
    assert_eq!(
        outcome(transfer("k", 101)).await,
        (409, "insufficient_funds".into(), false)
    );

    // The COMMIT reaches the server and commits, but its answer is lost with the connection.
    let cut = proxy.arm(Fault::CutAfterForwarding(Matcher::QueryContains("COMMIT")));
    assert_eq!(
        outcome(transfer("unknown", 30)).await,
        (500, "outcome_unknown".into(), false)
    );
    assert!(cut.fired());
    // The client resolves it with its key: the transfer is there, and repeating it is harmless.
    assert_eq!(outcome(get("/transfers/unknown")).await.0, 200);
    assert_eq!(
        outcome(transfer("unknown", 30)).await.0,
        200,
        "replayed, not applied again"
    );
    assert_eq!(balances(&direct).await, [70, 130], "moved once");
    assert_eq!(
        outcome(transfer("unknown", 31)).await,
        (422, "idempotency_key_reused".into(), false)
    );

    let metrics = outcome_text(get("/metrics")).await;
    assert!(
        metric(
            &metrics,
            "sqlx_retry_commit_unknown_total",
            &[r#"fn="transfer""#]
        ) >= 1.0
    );
    direct.close().await;
    schema.drop_schema().await.unwrap();
}

async fn outcome_text(request: reqwest::RequestBuilder) -> String {
    request.send().await.unwrap().text().await.unwrap()
}
