//! `Ok` means committed: a body that swallows a failed statement's error and returns `Ok` on a
//! transaction PostgreSQL has aborted (where COMMIT would be answered with `ROLLBACK`) gets
//! `TransactionAborted` (SQLSTATE 25P02), with nothing committed, on a pool and on a held
//! connection. A conflict that a joined call returned and the outer body ignored is retried like
//! a conflict. What the check costs is counted at the proxy. The mock behaves the same way.
//!
//! Also here: what a call dropped mid-statement leaves on a held connection (documented beside
//! the README's advice to hold connections under contention).

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{Connection as _, PgConnection, PgPool};
use sqlx_retry::error::TransactionAborted;
use sqlx_retry::{SqlState, serializable_retry};
use sqlx_retry_testkit::{Isolated, PgProxy, isolated_pool};

fn next_attempt(attempts: &AtomicU32) -> u32 {
    attempts.fetch_add(1, Ordering::SeqCst) + 1
}

fn get(attempts: &AtomicU32) -> u32 {
    attempts.load(Ordering::SeqCst)
}

fn is_aborted(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.as_error().is::<TransactionAborted>())
}

fn assert_aborted(err: &sqlx::Error) {
    assert!(is_aborted(err), "{err:?}");
    assert_eq!(
        sqlx_retry::error::sqlstate(err),
        SqlState::new("25P02"),
        "{err}"
    );
    // The server's own report of the failed check is its source.
    let source = std::error::Error::source(err).expect("the server's 25P02");
    assert!(source.to_string().contains("aborted"), "{source}");
}

async fn setup() -> (PgPool, Isolated) {
    let (pool, schema) = isolated_pool(2).await;
    sqlx::raw_sql("CREATE TABLE items (id int PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    (pool, schema)
}

async fn rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn held(schema: &Isolated) -> PgConnection {
    PgConnection::connect_with(&schema.connect_options())
        .await
        .unwrap()
}

/// A held connection through a counting proxy of its own, for tests that count or delay what
/// the call sends.
async fn held_via_proxy(schema: &Isolated) -> (PgProxy, PgConnection) {
    let proxy = PgProxy::for_test_db().await;
    let conn = PgConnection::connect_with(&schema.proxied_options(&proxy))
        .await
        .unwrap();
    (proxy, conn)
}

/// After the call the held connection is neither inside a transaction for sqlx nor on the server
/// (SAVEPOINT succeeds only inside a transaction block).
async fn assert_outside_transaction(conn: &mut PgConnection) {
    assert!(!conn.is_in_transaction());
    let in_tx = sqlx::raw_sql("SAVEPOINT probe")
        .execute(&mut *conn)
        .await
        .is_ok();
    assert!(!in_tx, "the connection was left inside a transaction");
}

// ---------------------------------------------------------------------------------------------
// A swallowed error: not Ok, nothing committed
// ---------------------------------------------------------------------------------------------

/// Inserts a row, then runs `failing` and ignores its error.
#[serializable_retry(max = 3, backoff(base = "1ms", cap = "2ms"))]
async fn insert_then_swallow(
    tx: &mut PgConnection,
    failing: &'static str,
    attempts: &AtomicU32,
) -> Result<(), sqlx::Error> {
    next_attempt(attempts);
    sqlx::raw_sql("INSERT INTO items VALUES (1)")
        .execute(&mut *tx)
        .await?;
    let _ignored = sqlx::raw_sql(failing).execute(&mut *tx).await.ok();
    Ok(())
}

const DIVISION_BY_ZERO: &str = "SELECT 1/0";
const RAISE_40001: &str = "DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40001'; END $$";

#[tokio::test]
async fn swallowed_division_by_zero_is_not_ok_on_a_pool() {
    let (pool, _schema) = setup().await;
    let attempts = AtomicU32::new(0);
    let err = insert_then_swallow(&pool, DIVISION_BY_ZERO, &attempts)
        .await
        .unwrap_err();
    assert_aborted(&err);
    assert_eq!(
        get(&attempts),
        1,
        "a swallowed permanent error is not retried"
    );
    assert_eq!(rows(&pool).await, 0);
}

#[tokio::test]
async fn swallowed_division_by_zero_is_not_ok_on_a_held_connection() {
    let (pool, schema) = setup().await;
    let mut conn = held(&schema).await;
    let attempts = AtomicU32::new(0);
    let err = insert_then_swallow(&mut conn, DIVISION_BY_ZERO, &attempts)
        .await
        .unwrap_err();
    assert_aborted(&err);
    assert_eq!(get(&attempts), 1);
    assert_eq!(rows(&pool).await, 0);
    // The aborted transaction was rolled back at once, not left for the connection's next use.
    assert_outside_transaction(&mut conn).await;
}

/// The server does not say which error aborted the transaction, so a swallowed `40001` cannot be
/// told from a swallowed `22012`: it is reported the same way, after one attempt.
#[tokio::test]
async fn swallowed_serialization_failure_is_not_ok() {
    let (pool, schema) = setup().await;
    let attempts = AtomicU32::new(0);
    let err = insert_then_swallow(&pool, RAISE_40001, &attempts)
        .await
        .unwrap_err();
    assert_aborted(&err);
    assert_eq!(get(&attempts), 1);
    assert_eq!(rows(&pool).await, 0);

    let mut conn = held(&schema).await;
    let err = insert_then_swallow(&mut conn, RAISE_40001, &attempts)
        .await
        .unwrap_err();
    assert_aborted(&err);
    assert_eq!(get(&attempts), 2);
    assert_eq!(rows(&pool).await, 0);
    assert_outside_transaction(&mut conn).await;
}

/// Swallows a `40001` on the first attempt only; `retry_on = ["25P02"]` opts into retrying an
/// aborted transaction whatever its cause.
#[serializable_retry(max = 3, backoff(base = "1ms", cap = "2ms"), retry_on = ["25P02"])]
async fn swallow_once_retry_aborted(
    tx: &mut PgConnection,
    attempts: &AtomicU32,
) -> Result<(), sqlx::Error> {
    let attempt = next_attempt(attempts);
    sqlx::raw_sql("INSERT INTO items VALUES (1)")
        .execute(&mut *tx)
        .await?;
    if attempt == 1 {
        let _ignored = sqlx::raw_sql(RAISE_40001).execute(&mut *tx).await.ok();
    }
    Ok(())
}

#[tokio::test]
async fn retry_on_25p02_retries_an_aborted_transaction() {
    let (pool, schema) = setup().await;
    let attempts = AtomicU32::new(0);
    swallow_once_retry_aborted(&pool, &attempts).await.unwrap();
    assert_eq!(get(&attempts), 2);
    assert_eq!(rows(&pool).await, 1);

    sqlx::raw_sql("DELETE FROM items")
        .execute(&pool)
        .await
        .unwrap();
    let mut conn = held(&schema).await;
    let attempts = AtomicU32::new(0);
    swallow_once_retry_aborted(&mut conn, &attempts)
        .await
        .unwrap();
    assert_eq!(get(&attempts), 2);
    assert_eq!(rows(&pool).await, 1);
}

/// A savepoint is the way to survive a failed statement: the transaction stays usable and the
/// call commits.
#[serializable_retry(max = 3, backoff(base = "1ms", cap = "2ms"))]
async fn recover_with_a_savepoint(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql("INSERT INTO items VALUES (1)")
        .execute(&mut *tx)
        .await?;
    let mut savepoint = tx.begin().await?;
    let failed = sqlx::raw_sql(DIVISION_BY_ZERO)
        .execute(&mut *savepoint)
        .await;
    assert!(failed.is_err());
    savepoint.rollback().await?;
    sqlx::raw_sql("INSERT INTO items VALUES (2)")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[tokio::test]
async fn an_error_recovered_by_a_savepoint_still_commits() {
    let (pool, schema) = setup().await;
    recover_with_a_savepoint(&pool).await.unwrap();
    assert_eq!(rows(&pool).await, 2);
    sqlx::raw_sql("DELETE FROM items")
        .execute(&pool)
        .await
        .unwrap();
    let mut conn = held(&schema).await;
    recover_with_a_savepoint(&mut conn).await.unwrap();
    assert_eq!(rows(&pool).await, 2);
    assert_outside_transaction(&mut conn).await;
}

// ---------------------------------------------------------------------------------------------
// A joined call's conflict, logged and ignored by the outer body: retried like a conflict
// ---------------------------------------------------------------------------------------------

/// Joined by `outer_ignores_inner`: raises `40001` on the outer's first `fail_for` attempts.
#[serializable_retry(max = 3, backoff(base = "1ms", cap = "2ms"))]
async fn inner_audit(
    tx: &mut PgConnection,
    outer_attempt: u32,
    fail_for: u32,
) -> Result<(), sqlx::Error> {
    if outer_attempt <= fail_for {
        sqlx::raw_sql(RAISE_40001).execute(&mut *tx).await?;
    }
    sqlx::raw_sql("INSERT INTO items VALUES (100)")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[serializable_retry(max = 3, backoff(base = "1ms", cap = "2ms"))]
async fn outer_ignores_inner(
    tx: &mut PgConnection,
    fail_for: u32,
    attempts: &AtomicU32,
) -> Result<(), sqlx::Error> {
    let attempt = next_attempt(attempts);
    sqlx::raw_sql("INSERT INTO items VALUES (1)")
        .execute(&mut *tx)
        .await?;
    if let Err(e) = inner_audit(&mut *tx, attempt, fail_for).await {
        tracing::warn!(error = %e, "audit failed; carrying on");
    }
    Ok(())
}

#[tokio::test]
async fn joined_conflict_ignored_by_the_outer_body_is_retried() {
    let (pool, schema) = setup().await;
    let attempts = AtomicU32::new(0);
    outer_ignores_inner(&pool, 1, &attempts).await.unwrap();
    assert_eq!(get(&attempts), 2, "retried like the inner call's 40001");
    assert_eq!(rows(&pool).await, 2, "attempt 2 committed both rows");

    sqlx::raw_sql("DELETE FROM items")
        .execute(&pool)
        .await
        .unwrap();
    let mut conn = held(&schema).await;
    let attempts = AtomicU32::new(0);
    outer_ignores_inner(&mut conn, 1, &attempts).await.unwrap();
    assert_eq!(get(&attempts), 2);
    assert_eq!(rows(&pool).await, 2);
    assert_outside_transaction(&mut conn).await;
}

#[tokio::test]
async fn joined_conflict_on_every_attempt_is_exhausted_and_not_ok() {
    let (pool, _schema) = setup().await;
    let attempts = AtomicU32::new(0);
    let err = outer_ignores_inner(&pool, u32::MAX, &attempts)
        .await
        .unwrap_err();
    assert_aborted(&err);
    assert_eq!(get(&attempts), 3, "every attempt was made");
    assert_eq!(rows(&pool).await, 0);
}

// ---------------------------------------------------------------------------------------------
// What the check costs, counted at the proxy
// ---------------------------------------------------------------------------------------------

#[serializable_retry]
async fn one_statement(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql("SELECT 1").execute(&mut *tx).await?;
    Ok(())
}

/// A one-statement body costs three round trips, held connection or pool: BEGIN, the statement,
/// and the check with COMMIT in one simple query (`SET LOCAL …; COMMIT; BEGIN`). The ROLLBACK that
/// ends the empty transaction is a fourth simple query that nobody waits for (see
/// `on_a_held_connection_the_empty_transaction_ends_at_once`).
#[tokio::test]
async fn the_check_costs_no_round_trip() {
    let (_pool, schema) = setup().await;
    let (proxy, mut conn) = held_via_proxy(&schema).await;
    for _ in 0..2 {
        let before = settle(&proxy).await;
        one_statement(&mut conn).await.unwrap();
        let delta = settle(&proxy).await.since(&before);
        assert_eq!(
            (delta.simple_queries, delta.syncs, delta.rollbacks),
            (4, 0, 1),
            "{delta:?}"
        );
        assert_eq!(delta.round_trips - delta.rollbacks, 3, "{delta:?}");
    }
    assert_outside_transaction(&mut conn).await;
    conn.close().await.unwrap();

    // Through a pool the same query; the empty transaction's ROLLBACK is flushed after the call
    // by the pool's release ping, together with its Sync. (The pool's own pings are lone Syncs,
    // not counted here.)
    let pool = schema.pool_via(&proxy, 1).await;
    one_statement(&pool).await.unwrap(); // connects and warms up
    for _ in 0..2 {
        settle(&proxy).await;
        let before = proxy.stats();
        one_statement(&pool).await.unwrap();
        let delta = settle(&proxy).await.since(&before);
        assert_eq!((delta.simple_queries, delta.rollbacks), (4, 1), "{delta:?}");
    }
    // The connection is back in the pool, outside any transaction, and the server never sent a
    // notice such as "there is no transaction in progress": each ROLLBACK ended the empty
    // transaction.
    let mut conn = pool.acquire().await.unwrap();
    assert_outside_transaction(&mut conn).await;
    assert_eq!(proxy.stats().notices, 0);
    // The counter does see that warning: a stray ROLLBACK draws it.
    sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.unwrap();
    assert_eq!(proxy.stats().notices, 1);
}

/// On a held connection the empty transaction's ROLLBACK goes out with the call's end, and the
/// call does not wait for it: held 300 ms by the proxy, it does not delay the call. The session
/// is idle (not idle in transaction) as soon as the server has it, while the caller leaves the
/// connection alone; its next use reads the answer, and no notice was drawn.
#[tokio::test]
async fn on_a_held_connection_the_empty_transaction_ends_at_once() {
    let (pool, schema) = setup().await;
    let (proxy, mut conn) = held_via_proxy(&schema).await;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    one_statement(&mut conn).await.unwrap();
    settle(&proxy).await;
    let gate = proxy.arm(sqlx_retry_testkit::Fault::DelayBeforeForwarding(
        sqlx_retry_testkit::Matcher::QueryStartsWith("ROLLBACK"),
        std::time::Duration::from_millis(300),
    ));
    tokio::time::timeout(
        std::time::Duration::from_millis(250),
        one_statement(&mut conn),
    )
    .await
    .expect("the call does not wait for the empty transaction's ROLLBACK")
    .unwrap();
    assert!(gate.wait_fired(std::time::Duration::from_secs(5)).await);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (state, _) = session(&pool, pid).await;
        if state == "idle" {
            break;
        }
        assert_eq!(state, "idle in transaction", "{state}");
        assert!(
            std::time::Instant::now() < deadline,
            "the session stayed idle in transaction while the connection was not used"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    one_statement(&mut conn).await.unwrap();
    assert_outside_transaction(&mut conn).await;
    assert_eq!(proxy.stats().notices, 0);
}

/// Waits until the proxy has seen no message for 50 ms and returns its counters.
async fn settle(proxy: &PgProxy) -> sqlx_retry_testkit::ProxyStats {
    let mut last = proxy.stats();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let now = proxy.stats();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// On a pool the check and COMMIT are one query, and the empty transaction's ROLLBACK is sent
/// after the call: held 300 ms by the proxy, it does not delay the call.
#[tokio::test]
async fn on_a_pool_the_check_rides_with_commit() {
    let (_pool, schema) = setup().await;
    let proxy = PgProxy::for_test_db().await;
    let pool = schema.pool_via(&proxy, 1).await;
    one_statement(&pool).await.unwrap();
    settle(&proxy).await;
    let gate = proxy.arm(sqlx_retry_testkit::Fault::DelayBeforeForwarding(
        sqlx_retry_testkit::Matcher::QueryStartsWith("ROLLBACK"),
        std::time::Duration::from_millis(300),
    ));
    tokio::time::timeout(std::time::Duration::from_millis(250), one_statement(&pool))
        .await
        .expect("the call does not wait for the empty transaction's ROLLBACK")
        .unwrap();
    assert!(gate.wait_fired(std::time::Duration::from_secs(5)).await);
}

// ---------------------------------------------------------------------------------------------
// A call dropped mid-statement on a held connection
// ---------------------------------------------------------------------------------------------

#[serializable_retry]
async fn insert_then_sleep(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql("INSERT INTO items VALUES (7)")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql("SELECT pg_sleep(0.3)")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// `(state, locks held on items)` of the session `pid`.
async fn session(pool: &PgPool, pid: i32) -> (String, i64) {
    sqlx::query_as(
        "SELECT a.state, (SELECT count(*) FROM pg_locks l \
                          WHERE l.pid = a.pid AND l.relation = 'items'::regclass) \
         FROM pg_stat_activity a WHERE a.pid = $1",
    )
    .bind(pid)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// sqlx 0.9 has no cancel request: a call dropped mid-statement leaves the statement running,
/// then the session idle in transaction with its locks, until the connection is used again; its
/// first use sends the queued ROLLBACK before anything else.
#[tokio::test]
async fn a_dropped_call_holds_its_locks_until_the_held_connection_is_used_again() {
    let (pool, schema) = setup().await;
    let mut conn = held(&schema).await;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let dropped = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        insert_then_sleep(&mut conn),
    )
    .await;
    assert!(dropped.is_err(), "the call was dropped inside pg_sleep");
    let (state, locks) = session(&pool, pid).await;
    assert_eq!(state, "active", "the statement keeps running");
    assert!(locks > 0);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (state, locks) = session(&pool, pid).await;
    assert_eq!(state, "idle in transaction");
    assert!(locks > 0, "the row lock is held until the next use");
    // Any use of the connection sends the queued ROLLBACK first; a ping is the cheapest.
    conn.ping().await.unwrap();
    let (state, locks) = session(&pool, pid).await;
    assert_eq!((state.as_str(), locks), ("idle", 0));
    assert_eq!(rows(&pool).await, 0);
    assert_outside_transaction(&mut conn).await;
}

// ---------------------------------------------------------------------------------------------
// The mock reports the same
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "mock")]
mod mock {
    use sqlx_retry::mock::{Fault, MockDb, MockTx, Phase};
    use sqlx_retry::serializable_retry;

    use super::is_aborted;

    const BEGIN: &str = "BEGIN ISOLATION LEVEL SERIALIZABLE";

    #[serializable_retry(max = 3, backoff(base = "1ms", cap = "2ms"))]
    async fn swallow(tx: &mut MockTx<i64>) -> Result<(), sqlx::Error> {
        *tx.state_mut() += 1;
        let _ignored = tx.execute("SELECT 1/0");
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn commit_of_an_aborted_transaction_is_an_error() {
        let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("40001"));
        let err = swallow(&db).await.unwrap_err();
        assert!(is_aborted(&err), "{err:?}");
        assert_eq!(db.state(), 0, "nothing applied");
        assert_eq!(db.attempts(), 1, "the cause is unknown: not retried");
        assert_eq!(
            db.script(),
            [BEGIN, "SELECT 1/0 -> 40001", "COMMIT -> 25P02"]
        );
    }

    #[serializable_retry(max = 3, backoff(base = "1ms", cap = "2ms"))]
    async fn inner(tx: &mut MockTx<i64>) -> Result<(), sqlx::Error> {
        tx.execute("UPDATE")?;
        *tx.state_mut() += 10;
        Ok(())
    }

    #[serializable_retry(max = 3, backoff(base = "1ms", cap = "2ms"))]
    async fn outer(tx: &mut MockTx<i64>) -> Result<(), sqlx::Error> {
        *tx.state_mut() += 1;
        let _logged = inner(&mut *tx).await;
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_joined_conflict_ignored_by_the_outer_body_is_retried() {
        let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("40001"));
        outer(&db).await.unwrap();
        assert_eq!(db.state(), 11);
        assert_eq!(db.attempts(), 2);
        let script = db.script();
        assert_eq!(&script[..3], [BEGIN, "UPDATE -> 40001", "COMMIT -> 25P02"]);
        assert!(script[3].starts_with("sleep "), "{script:?}");
        assert_eq!(&script[4..], [BEGIN, "UPDATE", "COMMIT"]);
    }
}

// ---------------------------------------------------------------------------------------------
// The ROLLBACK before a retry
// ---------------------------------------------------------------------------------------------

/// How long after an attempt failed with `code` the loop decided to retry, while the proxy
/// holds every ROLLBACK for 300 ms. The body inserts a row on every attempt and fails the first
/// with `code`; the first attempt's row must be rolled back and the retry's committed.
async fn retry_decided_after<S: sqlx_retry::TransactionSource<PgConnection>>(
    pool: &PgPool,
    source: S,
    proxy: &PgProxy,
    code: &'static str,
) -> std::time::Duration {
    sqlx::raw_sql("DELETE FROM items")
        .execute(pool)
        .await
        .unwrap();
    let failed_at = std::sync::Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
    let decided_after = std::sync::Arc::new(std::sync::Mutex::new(None));
    let policy = sqlx_retry::Policy::builder()
        .backoff(sqlx_retry::Backoff::none())
        .on_retry({
            let failed_at = failed_at.clone();
            let decided_after = decided_after.clone();
            move |_| {
                let failed = failed_at.lock().unwrap().expect("the attempt failed first");
                *decided_after.lock().unwrap() = Some(failed.elapsed());
            }
        })
        .build()
        .unwrap();
    let gate = proxy.arm(sqlx_retry_testkit::Fault::DelayBeforeForwarding(
        sqlx_retry_testkit::Matcher::QueryStartsWith("ROLLBACK"),
        std::time::Duration::from_millis(300),
    ));
    let attempts = std::sync::Arc::new(AtomicU32::new(0));
    sqlx_retry::transaction(source, &policy, |tx| {
        let attempts = attempts.clone();
        let failed_at = failed_at.clone();
        Box::pin(async move {
            sqlx::raw_sql("INSERT INTO items VALUES (1)")
                .execute(&mut *tx)
                .await?;
            if next_attempt(&attempts) == 1 {
                let raise = format!(
                    "DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{code}'; END $$"
                );
                let err = sqlx::raw_sql(sqlx::AssertSqlSafe(raise))
                    .execute(&mut *tx)
                    .await
                    .unwrap_err();
                *failed_at.lock().unwrap() = Some(std::time::Instant::now());
                return Err(err);
            }
            Ok(())
        })
    })
    .await
    .unwrap();
    assert_eq!(get(&attempts), 2);
    assert_eq!(rows(pool).await, 1);
    assert!(gate.wait_fired(std::time::Duration::from_secs(5)).await);
    gate.disarm();
    decided_after.lock().unwrap().take().expect("one retry")
}

/// After a serialization failure the loop does not wait for the ROLLBACK's answer: it goes out
/// at once (held 300 ms by the proxy here) and the next BEGIN reads it, one round trip for both,
/// as in a hand-written loop that drops sqlx's `Transaction`. The first attempt's row is rolled
/// back, the retry's committed, no notice is drawn, and the connection is left outside any
/// transaction. After a deadlock the loop still waits for it.
#[tokio::test]
async fn after_a_serialization_failure_the_rollback_is_not_awaited() {
    let (pool, schema) = setup().await;
    let (proxy, mut conn) = held_via_proxy(&schema).await;
    let after = retry_decided_after(&pool, &mut conn, &proxy, "40001").await;
    assert!(
        after < std::time::Duration::from_millis(250),
        "held connection: the retry waited {after:?} for the ROLLBACK"
    );
    assert_outside_transaction(&mut conn).await;
    let after = retry_decided_after(&pool, &mut conn, &proxy, "40P01").await;
    assert!(
        after >= std::time::Duration::from_millis(300),
        "held connection: after a deadlock the ROLLBACK is awaited ({after:?})"
    );
    assert_outside_transaction(&mut conn).await;

    // Through a pool of one connection: the connection goes back with the ROLLBACK queued, and
    // the retry takes it again once the release ping has flushed it.
    let proxied = schema.pool_via(&proxy, 1).await;
    let after = retry_decided_after(&pool, &proxied, &proxy, "40001").await;
    assert!(
        after < std::time::Duration::from_millis(250),
        "pool: the retry waited {after:?} for the ROLLBACK"
    );
    let mut conn = proxied.acquire().await.unwrap();
    assert_outside_transaction(&mut conn).await;
    assert_eq!(proxy.stats().notices, 0);
}

// ---------------------------------------------------------------------------------------------
// The check's own setting stays inside the transaction it checks
// ---------------------------------------------------------------------------------------------

/// What the body sees of the check's setting, `sqlx_retry.not_aborted` (`None`: not set).
#[serializable_retry(max = 3, backoff(base = "1ms", cap = "2ms"))]
async fn read_check_setting(tx: &mut PgConnection) -> Result<Option<String>, sqlx::Error> {
    sqlx::raw_sql("INSERT INTO items VALUES (1)")
        .execute(&mut *tx)
        .await?;
    check_setting(tx).await
}

async fn check_setting(conn: &mut PgConnection) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT nullif(current_setting('sqlx_retry.not_aborted', true), '')")
        .fetch_one(conn)
        .await
}

#[tokio::test]
async fn the_check_is_set_for_its_transaction_only() {
    let (pool, schema) = setup().await;
    let mut conn = held(&schema).await;
    // The first call: the body runs before any check on this session.
    assert_eq!(read_check_setting(&mut conn).await.unwrap(), None);
    assert_eq!(rows(&pool).await, 1);
    // After a committed call, the session sees nothing set.
    assert_eq!(check_setting(&mut conn).await.unwrap(), None);
    // The next call's body does not see the last call's check either.
    sqlx::raw_sql("DELETE FROM items")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(read_check_setting(&mut conn).await.unwrap(), None);
    assert_eq!(check_setting(&mut conn).await.unwrap(), None);
    assert_outside_transaction(&mut conn).await;
    // The same through the pool, whose connections the checks ran on.
    sqlx::raw_sql("DELETE FROM items")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(read_check_setting(&pool).await.unwrap(), None);
    for _ in 0..2 {
        assert_eq!(
            check_setting(&mut pool.acquire().await.unwrap())
                .await
                .unwrap(),
            None
        );
    }
}
