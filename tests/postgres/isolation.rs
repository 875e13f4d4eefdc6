//! Hermitage-style anomalies (<https://github.com/ept/hermitage/blob/master/postgres.md>) provoked
//! with genuinely concurrent transactions on a real PostgreSQL, run through
//! `#[serializable_retry]`.
//!
//! Interleavings are forced with `tokio::sync::Barrier`s that the bodies wait on **on their first
//! attempt only**, so a retried attempt runs alone and the outcome is deterministic. Every test
//! gets its own schema from `sqlx_retry_testkit::isolated_pool`.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::{Connection as _, PgConnection, PgPool};
use sqlx_retry::{Backoff, ConflictKind, Policy, RetryInfo, serializable_retry, transaction};
use sqlx_retry_testkit::{PgProxy, isolated_pool};
use tokio::sync::Barrier;

/// Increments the attempt counter and returns this attempt's number (1-based).
fn next_attempt(attempts: &AtomicU32) -> u32 {
    attempts.fetch_add(1, Ordering::SeqCst) + 1
}

fn get(attempts: &AtomicU32) -> u32 {
    attempts.load(Ordering::SeqCst)
}

/// The SQLSTATE found in `err`'s source chain and the kind of conflict it reports, e.g.
/// `"40001 RowWrite"`.
fn code(err: &(dyn std::error::Error + 'static)) -> String {
    let code = sqlx_retry::error::sqlstate(err).map_or_else(String::new, |s| s.as_str().to_owned());
    match sqlx_retry::error::conflict_kind(err) {
        Some(kind) => format!("{code} {kind:?}"),
        None => code,
    }
}

/// Fails the test instead of hanging when an interleaving does not go as planned.
async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("test timed out: a barrier was never reached")
}

async fn setup(pool: &PgPool, sql: &'static str) {
    sqlx::raw_sql(sql).execute(pool).await.expect("setup SQL");
}

// ---------------------------------------------------------------------------------------------
// P4 lost update at REPEATABLE READ
// ---------------------------------------------------------------------------------------------

/// Read-modify-write increment: the value written is computed from the value read, so a lost
/// update would show up as a final value of v + 1.
#[serializable_retry(
    isolation = "repeatable_read",
    max = 5,
    backoff(base = "1ms", cap = "10ms")
)]
async fn rr_increment(
    tx: &mut PgConnection,
    id: i32,
    read_done: &Barrier,
    attempts: &AtomicU32,
    codes: &Mutex<Vec<String>>,
) -> Result<i32, sqlx::Error> {
    let attempt = next_attempt(attempts);
    let v: i32 = sqlx::query_scalar("SELECT value FROM test WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    if attempt == 1 {
        // Both transactions have read (and taken their snapshot) before either writes.
        read_done.wait().await;
    }
    sqlx::query("UPDATE test SET value = $2 WHERE id = $1")
        .bind(id)
        .bind(v + 1)
        .execute(&mut *tx)
        .await
        .inspect_err(|e| codes.lock().unwrap().push(code(e)))?;
    Ok(v + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn p4_lost_update_repeatable_read_is_retried() {
    let (pool, _schema) = isolated_pool(4).await;
    setup(
        &pool,
        "CREATE TABLE test (id int PRIMARY KEY, value int NOT NULL);
         INSERT INTO test VALUES (1, 10), (2, 20);",
    )
    .await;
    let read_done = Barrier::new(2);
    let (a1, a2) = (AtomicU32::new(0), AtomicU32::new(0));
    let codes = Mutex::new(Vec::new());
    let (r1, r2) = within(async {
        tokio::join!(
            rr_increment(&pool, 1, &read_done, &a1, &codes),
            rr_increment(&pool, 1, &read_done, &a2, &codes),
        )
    })
    .await;
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    // One committed 11 on its first attempt; the other's UPDATE waited for it, got 40001, and
    // its second attempt re-read 11 and wrote 12.
    let mut results = [r1, r2];
    results.sort();
    assert_eq!(results, [11, 12]);
    assert_eq!(
        get(&a1) + get(&a2),
        3,
        "attempts {} + {}",
        get(&a1),
        get(&a2)
    );
    // The loser waited on the winner's row lock: a row write conflict, not a dependency cycle.
    assert_eq!(*codes.lock().unwrap(), ["40001 RowWrite"]);
    let v: i32 = sqlx::query_scalar("SELECT value FROM test WHERE id = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(v, 12, "both increments applied");
    eprintln!("P4: attempts {} + {}", get(&a1), get(&a2));
}

// ---------------------------------------------------------------------------------------------
// G2-item write skew (doctors on call)
// ---------------------------------------------------------------------------------------------

const DOCTORS: &str = "CREATE TABLE doctors (id int PRIMARY KEY, on_call bool NOT NULL);
     INSERT INTO doctors VALUES (1, true), (2, true);";

/// Where attempt 1 of a write-skew transaction failed, as observed by the body.
#[derive(Default)]
struct Observed {
    /// SQLSTATEs of failed writes inside the body.
    write_errors: Mutex<Vec<String>>,
    /// Attempts whose body returned `Ok` (so a later failure was at COMMIT).
    bodies_ok: AtomicU32,
}

/// Goes off call if at least one other doctor stays on call. On attempt 1 both transactions read,
/// then both write, and only then either commits.
#[serializable_retry(max = 5, backoff(base = "1ms", cap = "10ms"))]
async fn go_off_call(
    tx: &mut PgConnection,
    me: i32,
    read_done: &Barrier,
    write_done: &Barrier,
    attempts: &AtomicU32,
    observed: &Observed,
) -> Result<bool, sqlx::Error> {
    go_off_call_body(tx, me, read_done, write_done, attempts, observed).await
}

/// The same transaction at REPEATABLE READ, which allows write skew.
#[serializable_retry(isolation = "repeatable_read", max = 5)]
async fn go_off_call_rr(
    tx: &mut PgConnection,
    me: i32,
    read_done: &Barrier,
    write_done: &Barrier,
    attempts: &AtomicU32,
    observed: &Observed,
) -> Result<bool, sqlx::Error> {
    go_off_call_body(tx, me, read_done, write_done, attempts, observed).await
}

async fn go_off_call_body(
    tx: &mut PgConnection,
    me: i32,
    read_done: &Barrier,
    write_done: &Barrier,
    attempts: &AtomicU32,
    observed: &Observed,
) -> Result<bool, sqlx::Error> {
    let attempt = next_attempt(attempts);
    let on_call: i64 = sqlx::query_scalar("SELECT count(*) FROM doctors WHERE on_call")
        .fetch_one(&mut *tx)
        .await?;
    if attempt == 1 {
        read_done.wait().await;
    }
    let wrote = if on_call >= 2 {
        let write = sqlx::query("UPDATE doctors SET on_call = false WHERE id = $1")
            .bind(me)
            .execute(&mut *tx)
            .await;
        if let Err(e) = &write {
            observed.write_errors.lock().unwrap().push(code(e));
        }
        Some(write)
    } else {
        None
    };
    if attempt == 1 {
        // Both have written (or failed to) before either commits. The write's error, if any, is
        // returned only after the barrier so the other transaction is never left waiting.
        write_done.wait().await;
    }
    if let Some(write) = wrote {
        write?;
    }
    observed.bodies_ok.fetch_add(1, Ordering::SeqCst);
    Ok(on_call >= 2)
}

async fn on_call(pool: &PgPool) -> Vec<i32> {
    sqlx::query_scalar("SELECT id FROM doctors WHERE on_call ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn g2_item_write_skew_serializable_is_retried() {
    let (pool, _schema) = isolated_pool(4).await;
    setup(&pool, DOCTORS).await;
    let (read_done, write_done) = (Barrier::new(2), Barrier::new(2));
    let (a1, a2) = (AtomicU32::new(0), AtomicU32::new(0));
    let observed = Observed::default();
    let (r1, r2) = within(async {
        tokio::join!(
            go_off_call(&pool, 1, &read_done, &write_done, &a1, &observed),
            go_off_call(&pool, 2, &read_done, &write_done, &a2, &observed),
        )
    })
    .await;
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    // Exactly one went off call; the retried one re-read a count of 1 and stayed on call.
    assert!(r1 ^ r2, "exactly one doctor went off call: {r1} {r2}");
    assert_eq!(get(&a1) + get(&a2), 3);
    assert_eq!(on_call(&pool).await.len(), 1, "a doctor is still on call");
    // PostgreSQL decides where the 40001 is raised: at the write, or at COMMIT.
    let write_errors = observed.write_errors.lock().unwrap().clone();
    let bodies_ok = observed.bodies_ok.load(Ordering::SeqCst);
    if write_errors.is_empty() {
        // Three bodies returned Ok, so one COMMIT failed: the 40001 came at COMMIT.
        assert_eq!(bodies_ok, 3);
        eprintln!(
            "G2-item serializable: 40001 at COMMIT; attempts {} + {}",
            get(&a1),
            get(&a2)
        );
    } else {
        assert_eq!(write_errors, ["40001 Dependency"]);
        assert_eq!(bodies_ok, 2);
        eprintln!(
            "G2-item serializable: 40001 at the UPDATE; attempts {} + {}",
            get(&a1),
            get(&a2)
        );
    }
}

/// The retry loop tells the `on_retry` hook what kind of conflict it retries, wherever
/// PostgreSQL raised it: at the write inside the body, or at COMMIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_hook_is_told_a_write_skew_is_a_dependency_cycle() {
    let (pool, _schema) = isolated_pool(4).await;
    setup(&pool, DOCTORS).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let policy = Policy::builder()
        .backoff(Backoff::fixed(Duration::from_millis(1)))
        .on_retry({
            let seen = Arc::clone(&seen);
            move |info: &RetryInfo| {
                let code = info.sqlstate.map(|c| c.to_string()).unwrap_or_default();
                seen.lock().unwrap().push((code, info.conflict));
            }
        })
        .build()
        .unwrap();
    let read_done = Arc::new(Barrier::new(2));
    let write_done = Arc::new(Barrier::new(2));
    let observed = Arc::new(Observed::default());
    let call = |me: i32| {
        let (read_done, write_done, observed) = (
            Arc::clone(&read_done),
            Arc::clone(&write_done),
            Arc::clone(&observed),
        );
        let attempts = Arc::new(AtomicU32::new(0));
        transaction(&pool, &policy, move |tx| {
            let (read_done, write_done, observed, attempts) = (
                Arc::clone(&read_done),
                Arc::clone(&write_done),
                Arc::clone(&observed),
                Arc::clone(&attempts),
            );
            Box::pin(async move {
                go_off_call_body(tx, me, &read_done, &write_done, &attempts, &observed).await
            })
        })
    };
    let (r1, r2) = within(async { tokio::join!(call(1), call(2)) }).await;
    assert!(
        r1.unwrap() ^ r2.unwrap(),
        "exactly one doctor went off call"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [("40001".to_owned(), Some(ConflictKind::Dependency))]
    );
}

/// The negative case: REPEATABLE READ (snapshot isolation) allows write skew. Both transactions
/// read two doctors on call from their snapshots, each takes a *different* doctor off call, so no
/// row is written twice and nothing conflicts: both commit on their first attempt and nobody is
/// left on call. Only SERIALIZABLE prevents this.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn g2_item_write_skew_repeatable_read_is_allowed() {
    let (pool, _schema) = isolated_pool(4).await;
    setup(&pool, DOCTORS).await;
    let (read_done, write_done) = (Barrier::new(2), Barrier::new(2));
    let (a1, a2) = (AtomicU32::new(0), AtomicU32::new(0));
    let observed = Observed::default();
    let (r1, r2) = within(async {
        tokio::join!(
            go_off_call_rr(&pool, 1, &read_done, &write_done, &a1, &observed),
            go_off_call_rr(&pool, 2, &read_done, &write_done, &a2, &observed),
        )
    })
    .await;
    assert!(r1.unwrap() && r2.unwrap());
    assert_eq!((get(&a1), get(&a2)), (1, 1), "nothing retried");
    assert!(observed.write_errors.lock().unwrap().is_empty());
    assert_eq!(
        on_call(&pool).await,
        Vec::<i32>::new(),
        "write skew is visible"
    );
}

// ---------------------------------------------------------------------------------------------
// G2 anti-dependency cycle on a predicate read
// ---------------------------------------------------------------------------------------------

/// Reads the rows matching `value % 3 = 0`, then inserts a row that matches that predicate (so
/// each insert is in the other transaction's read set).
#[serializable_retry(max = 5, backoff(base = "1ms", cap = "10ms"))]
async fn read_then_insert(
    tx: &mut PgConnection,
    id: i32,
    value: i32,
    read_done: &Barrier,
    write_done: &Barrier,
    attempts: &AtomicU32,
    seen: &Mutex<Vec<(u32, i64)>>,
) -> Result<(), sqlx::Error> {
    let attempt = next_attempt(attempts);
    let matching: i64 = sqlx::query_scalar("SELECT count(*) FROM test WHERE value % 3 = 0")
        .fetch_one(&mut *tx)
        .await?;
    seen.lock().unwrap().push((attempt, matching));
    if attempt == 1 {
        read_done.wait().await;
    }
    let insert = sqlx::query("INSERT INTO test (id, value) VALUES ($1, $2)")
        .bind(id)
        .bind(value)
        .execute(&mut *tx)
        .await;
    if attempt == 1 {
        write_done.wait().await;
    }
    insert?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn g2_predicate_read_then_insert_serializable_is_retried() {
    let (pool, _schema) = isolated_pool(4).await;
    setup(
        &pool,
        "CREATE TABLE test (id int PRIMARY KEY, value int NOT NULL);
         INSERT INTO test VALUES (1, 10), (2, 20);",
    )
    .await;
    let (read_done, write_done) = (Barrier::new(2), Barrier::new(2));
    let (a1, a2) = (AtomicU32::new(0), AtomicU32::new(0));
    let (s1, s2) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
    let (r1, r2) = within(async {
        tokio::join!(
            read_then_insert(&pool, 3, 30, &read_done, &write_done, &a1, &s1),
            read_then_insert(&pool, 4, 42, &read_done, &write_done, &a2, &s2),
        )
    })
    .await;
    r1.unwrap();
    r2.unwrap();
    assert_eq!(get(&a1) + get(&a2), 3, "one transaction retried once");
    // The retried attempt re-read and now saw the other's committed row.
    let (s1, s2) = (s1.into_inner().unwrap(), s2.into_inner().unwrap());
    let retried = if s1.len() == 2 { &s1 } else { &s2 };
    assert_eq!(*retried, [(1, 0), (2, 1)], "{s1:?} {s2:?}");
    let rows: Vec<(i32, i32)> = sqlx::query_as("SELECT id, value FROM test ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        rows,
        [(1, 10), (2, 20), (3, 30), (4, 42)],
        "each insert exactly once"
    );
}

// ---------------------------------------------------------------------------------------------
// Deadlock → 40P01
// ---------------------------------------------------------------------------------------------

/// Adds `by` to rows `first` then `second`, waiting on `between` after the first update on
/// attempt 1, so two calls in opposite order deadlock.
#[serializable_retry(
    isolation = "read_committed",
    max = 5,
    backoff(base = "1ms", cap = "10ms")
)]
async fn cross_update_rc(
    tx: &mut PgConnection,
    first: i32,
    second: i32,
    by: i32,
    between: &Barrier,
    attempts: &AtomicU32,
    codes: &Mutex<Vec<String>>,
) -> Result<(), sqlx::Error> {
    cross_update_body(tx, first, second, by, between, attempts, codes).await
}

#[serializable_retry(max = 5, backoff(base = "1ms", cap = "10ms"))]
async fn cross_update_ser(
    tx: &mut PgConnection,
    first: i32,
    second: i32,
    by: i32,
    between: &Barrier,
    attempts: &AtomicU32,
    codes: &Mutex<Vec<String>>,
) -> Result<(), sqlx::Error> {
    cross_update_body(tx, first, second, by, between, attempts, codes).await
}

async fn cross_update_body(
    tx: &mut PgConnection,
    first: i32,
    second: i32,
    by: i32,
    between: &Barrier,
    attempts: &AtomicU32,
    codes: &Mutex<Vec<String>>,
) -> Result<(), sqlx::Error> {
    let attempt = next_attempt(attempts);
    for (i, id) in [first, second].into_iter().enumerate() {
        if i == 1 && attempt == 1 {
            between.wait().await;
        }
        sqlx::query("UPDATE test SET value = value + $2 WHERE id = $1")
            .bind(id)
            .bind(by)
            .execute(&mut *tx)
            .await
            .inspect_err(|e| codes.lock().unwrap().push(code(e)))?;
    }
    Ok(())
}

async fn deadlock_case(serializable: bool) {
    let (pool, _schema) = isolated_pool(4).await;
    setup(
        &pool,
        "CREATE TABLE test (id int PRIMARY KEY, value int NOT NULL);
         INSERT INTO test VALUES (1, 0), (2, 0);",
    )
    .await;
    let between = Barrier::new(2);
    let (a1, a2) = (AtomicU32::new(0), AtomicU32::new(0));
    let codes = Mutex::new(Vec::new());
    let (r1, r2) = within(async {
        if serializable {
            tokio::join!(
                cross_update_ser(&pool, 1, 2, 1, &between, &a1, &codes),
                cross_update_ser(&pool, 2, 1, 100, &between, &a2, &codes),
            )
        } else {
            tokio::join!(
                cross_update_rc(&pool, 1, 2, 1, &between, &a1, &codes),
                cross_update_rc(&pool, 2, 1, 100, &between, &a2, &codes),
            )
        }
    })
    .await;
    r1.unwrap();
    r2.unwrap();
    // A deadlock victim first. Its retry can deadlock again: the victim's locks go at once,
    // and a retry that starts before the winner's backend has woken up and taken the row it
    // waited for takes that row first (PostgreSQL does not queue an UPDATE behind waiters on a
    // row that nobody holds), and the pair deadlock anew, with either as the victim. How often
    // depends on how busy the CPUs are. At SERIALIZABLE a retry may also take its snapshot before
    // the winner's COMMIT and then update a row the winner changed: a 40001 write conflict,
    // retried in turn. READ COMMITTED never has that (the UPDATE waits and applies to the new
    // version).
    let codes = codes.lock().unwrap().clone();
    assert_eq!(
        codes.first().map(String::as_str),
        Some("40P01 Deadlock"),
        "{codes:?}"
    );
    let allowed: &[&str] = if serializable {
        &["40P01 Deadlock", "40001 RowWrite"]
    } else {
        &["40P01 Deadlock"]
    };
    assert!(
        codes.iter().all(|c| allowed.contains(&c.as_str())),
        "{codes:?}"
    );
    // Every failed attempt was retried once: two calls, one attempt each, plus one per error.
    assert_eq!(get(&a1) + get(&a2), 2 + codes.len() as u32);
    let rows: Vec<(i32, i32)> = sqlx::query_as("SELECT id, value FROM test ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        rows,
        [(1, 101), (2, 101)],
        "both updates applied exactly once"
    );
    eprintln!(
        "deadlock (serializable={serializable}): attempts {} + {}",
        get(&a1),
        get(&a2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadlock_read_committed_is_retried() {
    deadlock_case(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadlock_serializable_is_retried() {
    deadlock_case(true).await;
}

// ---------------------------------------------------------------------------------------------
// The BEGIN statement
// ---------------------------------------------------------------------------------------------

type Settings = (String, String, String);

const SETTINGS: &str = "SELECT current_setting('transaction_isolation'), \
     current_setting('transaction_read_only'), current_setting('transaction_deferrable')";

async fn settings(tx: &mut PgConnection) -> Result<Settings, sqlx::Error> {
    sqlx::query_as(SETTINGS).fetch_one(&mut *tx).await
}

#[serializable_retry]
async fn settings_default(tx: &mut PgConnection) -> Result<Settings, sqlx::Error> {
    settings(tx).await
}

#[serializable_retry(isolation = "serializable")]
async fn settings_serializable(tx: &mut PgConnection) -> Result<Settings, sqlx::Error> {
    settings(tx).await
}

#[serializable_retry(isolation = "repeatable_read")]
async fn settings_repeatable_read(tx: &mut PgConnection) -> Result<Settings, sqlx::Error> {
    settings(tx).await
}

#[serializable_retry(isolation = "read_committed")]
async fn settings_read_committed(tx: &mut PgConnection) -> Result<Settings, sqlx::Error> {
    settings(tx).await
}

#[serializable_retry(read_only)]
async fn settings_read_only(tx: &mut PgConnection) -> Result<Settings, sqlx::Error> {
    settings(tx).await
}

#[serializable_retry(read_only, deferrable)]
async fn settings_read_only_deferrable(tx: &mut PgConnection) -> Result<Settings, sqlx::Error> {
    settings(tx).await
}

/// A body of exactly one simple-protocol statement, to count the statements of an attempt.
#[serializable_retry(read_only, deferrable)]
async fn one_simple_statement(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql("SELECT 1").execute(&mut *tx).await?;
    Ok(())
}

#[serializable_retry(isolation = "repeatable_read")]
async fn one_simple_statement_rr(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql("SELECT 1").execute(&mut *tx).await?;
    Ok(())
}

fn expect(isolation: &str, read_only: &str, deferrable: &str) -> Settings {
    (isolation.into(), read_only.into(), deferrable.into())
}

#[tokio::test]
async fn begin_sets_isolation_access_mode_and_deferrable() {
    let (pool, _schema) = isolated_pool(2).await;
    let off = "off";
    assert_eq!(
        settings_default(&pool).await.unwrap(),
        expect("serializable", off, off)
    );
    assert_eq!(
        settings_serializable(&pool).await.unwrap(),
        expect("serializable", off, off)
    );
    assert_eq!(
        settings_repeatable_read(&pool).await.unwrap(),
        expect("repeatable read", off, off)
    );
    assert_eq!(
        settings_read_committed(&pool).await.unwrap(),
        expect("read committed", off, off)
    );
    assert_eq!(
        settings_read_only(&pool).await.unwrap(),
        expect("serializable", "on", off)
    );
    assert_eq!(
        settings_read_only_deferrable(&pool).await.unwrap(),
        expect("serializable", "on", "on")
    );
}

/// The options are set by the BEGIN statement itself, not by a `SET TRANSACTION` after it: an
/// attempt whose body is one simple query waits for exactly three simple queries (BEGIN …, the
/// body's statement, the check that the transaction is not aborted with COMMIT), counted by the
/// proxy; the fourth is the ROLLBACK of the empty transaction left by that check, not waited for.
#[tokio::test]
async fn begin_is_one_statement() {
    let (_pool, schema) = isolated_pool(1).await;
    let proxy = PgProxy::for_test_db().await;
    let mut conn = PgConnection::connect_with(&schema.proxied_options(&proxy))
        .await
        .unwrap();
    for _ in 0..2 {
        // The ROLLBACK goes out at the call's end; the next message on the connection waits
        // for its answer, so by then the proxy has counted it.
        let before = proxy.stats();
        one_simple_statement(&mut conn).await.unwrap();
        conn.ping().await.unwrap();
        let delta = proxy.stats().since(&before);
        assert_eq!((delta.simple_queries, delta.rollbacks), (4, 1), "{delta:?}");
        assert_eq!(
            delta.round_trips - delta.rollbacks,
            4,
            "3 and the ping: {delta:?}"
        );

        let before = proxy.stats();
        one_simple_statement_rr(&mut conn).await.unwrap();
        conn.ping().await.unwrap();
        let delta = proxy.stats().since(&before);
        assert_eq!((delta.simple_queries, delta.rollbacks), (4, 1), "{delta:?}");
        assert_eq!(
            delta.round_trips - delta.rollbacks,
            4,
            "3 and the ping: {delta:?}"
        );
    }
    conn.close().await.unwrap();
}
