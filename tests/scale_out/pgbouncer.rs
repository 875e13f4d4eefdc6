//! Through a real pgbouncer in `pool_mode = transaction`: one server connection per
//! transaction, handed to whichever client asks next.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::{Connection as _, PgConnection, PgPool};
use sqlx_retry::serializable_retry;
use sqlx_retry_testkit::{BouncedDatabase, PgBouncer};
use tokio::sync::{Barrier, Notify};

use crate::{code, with_retry_log};

const SETUP: &str = "CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL); \
                     INSERT INTO counters VALUES (1, 0); \
                     CREATE TABLE items (id int PRIMARY KEY)";

async fn database() -> (BouncedDatabase<'static>, PgPool) {
    let bouncer = tokio::task::spawn_blocking(PgBouncer::global)
        .await
        .expect("start pgbouncer");
    let db = bouncer.isolated_database().await;
    let direct = db.direct_pool(2).await;
    sqlx::raw_sql(SETUP).execute(&direct).await.expect("setup");
    (db, direct)
}

/// A client connection of its own to pgbouncer (a new client, with an empty statement cache).
async fn client(db: &BouncedDatabase<'_>) -> PgConnection {
    PgConnection::connect_with(&db.options())
        .await
        .expect("connect through pgbouncer")
}

/// The transaction's settings as the server sees them, read with an unnamed statement.
#[serializable_retry(read_only, isolation = "repeatable_read")]
async fn settings(
    tx: &mut PgConnection,
    runs: &AtomicU32,
) -> Result<(String, String), sqlx::Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    sqlx::query_as(
        "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')",
    )
    .persistent(false)
    .fetch_one(&mut *tx)
    .await
}

/// Adds one to the counter; on its first run waits for `barrier` between reading and writing,
/// so two calls read the same snapshot before either writes.
#[serializable_retry(max = 4)]
async fn bump_after(
    tx: &mut PgConnection,
    barrier: &Barrier,
    runs: &AtomicU32,
) -> Result<i32, sqlx::Error> {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    let n: i32 = sqlx::query_scalar("SELECT n FROM counters WHERE id = 1")
        .persistent(false)
        .fetch_one(&mut *tx)
        .await?;
    if run <= 2 {
        tokio::time::timeout(Duration::from_secs(5), barrier.wait())
            .await
            .expect("both calls read the counter");
    }
    sqlx::query("UPDATE counters SET n = $1 WHERE id = 1")
        .bind(n + 1)
        .persistent(false)
        .execute(&mut *tx)
        .await?;
    Ok(n + 1)
}

/// Inserts a row, then (on its first run) parks until `go` so its server connection can be
/// killed behind the pooler, then inserts a second row.
#[serializable_retry(max = 4)]
async fn insert_two(
    tx: &mut PgConnection,
    parked: &Notify,
    go: &Notify,
    runs: &AtomicU32,
    first_error: &Mutex<Option<String>>,
) -> Result<(), sqlx::Error> {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    sqlx::query("INSERT INTO items VALUES ($1)")
        .bind(1)
        .persistent(false)
        .execute(&mut *tx)
        .await?;
    if run == 1 {
        parked.notify_one();
        tokio::time::timeout(Duration::from_secs(5), go.notified())
            .await
            .expect("the test lets the first run go on");
    }
    let second = sqlx::query("INSERT INTO items VALUES ($1)")
        .bind(2)
        .persistent(false)
        .execute(&mut *tx)
        .await;
    if let (1, Err(e)) = (run, &second) {
        *first_error.lock().unwrap() = Some(format!("{:?} {e}", code(e)));
    }
    second.map(drop)
}

/// The same query with sqlx's default: a named (persistent) prepared statement, `sqlx_s_1` on
/// a fresh client connection.
#[serializable_retry(max = 4)]
async fn count_named(tx: &mut PgConnection, runs: &AtomicU32) -> Result<i64, sqlx::Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    sqlx::query_scalar("SELECT count(*) FROM items WHERE id > $1")
        .bind(0)
        .fetch_one(&mut *tx)
        .await
}

/// The same with an unnamed statement.
#[serializable_retry(max = 4)]
async fn count_unnamed(tx: &mut PgConnection, runs: &AtomicU32) -> Result<i64, sqlx::Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    sqlx::query_scalar("SELECT count(*) FROM items WHERE id > $1")
        .bind(0)
        .persistent(false)
        .fetch_one(&mut *tx)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_statement_begin_sets_the_transaction_through_transaction_pooling() {
    let (db, _direct) = database().await;
    let pool = db.pool(4).await;
    let runs = AtomicU32::new(0);
    for _ in 0..10 {
        let (isolation, read_only) = settings(&pool, &runs).await.expect("through pgbouncer");
        // Had BEGIN and the isolation level been separate round trips, a pooler could put them
        // on different server connections; one statement can't be split.
        assert_eq!(isolation, "repeatable read");
        assert_eq!(read_only, "on");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 10, "one attempt per call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serialization_failure_behind_pgbouncer_is_retried_and_commits() {
    let (db, direct) = database().await;
    let pool = db.pool(4).await;
    let barrier = Barrier::new(2);
    let runs = AtomicU32::new(0);
    let ((a, b), retries) = with_retry_log(async {
        tokio::join!(
            bump_after(&pool, &barrier, &runs),
            bump_after(&pool, &barrier, &runs)
        )
    })
    .await;
    let (a, b) = (a.expect("first call"), b.expect("second call"));
    // Both read 0; one wrote 1 and committed, the other got 40001 ("could not serialize access
    // due to concurrent update") once and, rerun, read 1 and wrote 2.
    assert_eq!((a.min(b), a.max(b)), (1, 2));
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert_eq!(retries[0].sqlstate, "40001");
    assert_eq!(retries[0].conflict, "row_write");
    let n: i32 = sqlx::query_scalar("SELECT n FROM counters WHERE id = 1")
        .fetch_one(&direct)
        .await
        .unwrap();
    assert_eq!(n, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_connection_killed_behind_pgbouncer_mid_transaction_is_retried_on_the_pool() {
    let (db, direct) = database().await;
    let pool = db.pool(4).await;
    let (parked, go, runs) = (Notify::new(), Notify::new(), AtomicU32::new(0));
    let first_error = Mutex::new(None);
    let call = with_retry_log(insert_two(&pool, &parked, &go, &runs, &first_error));
    let kill = async {
        tokio::time::timeout(Duration::from_secs(5), parked.notified())
            .await
            .expect("the first run parks");
        let killed = db.kill_server_connections().await.expect("kill");
        assert!(killed >= 1, "no server connection to kill");
        go.notify_one();
    };
    let ((result, retries), ()) = tokio::join!(call, kill);
    result.expect("retried on a fresh connection");
    // The first run's row died with its server connection (57P01 "terminating connection due
    // to administrator command", relayed by pgbouncer); the second run committed both rows.
    let first_error = first_error.lock().unwrap().take();
    eprintln!("first run's error: {first_error:?}; retries: {retries:?}");
    assert!(
        first_error
            .as_deref()
            .is_some_and(|e| e.starts_with("Some(\"57P01\")")),
        "{first_error:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // One retry, reported without a SQLSTATE: the loop classifies 57P01 as a lost connection
    // (not a conflict), retried because a pool can hand out another connection.
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert_eq!(
        (retries[0].sqlstate.as_str(), retries[0].conflict.as_str()),
        ("", "")
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(&direct)
        .await
        .unwrap();
    assert_eq!(rows, 2);
}

/// Two clients share one server connection in turn; a third holds it so the first gets
/// another. Returns what each of the three calls gave, and how many times each body ran.
///
/// 1. client A runs the query: prepared on server connection S;
/// 2. client B runs it on S (LIFO reuse of the one idle server connection);
/// 3. client C holds S in an open transaction; client A runs the query again, on a new server
///    connection T.
async fn interleave(db: &BouncedDatabase<'_>, named: bool) -> [(Result<i64, sqlx::Error>, u32); 3] {
    let (mut a, mut b, mut c) = (client(db).await, client(db).await, client(db).await);
    let run = async |conn: &mut PgConnection| {
        let runs = AtomicU32::new(0);
        let out = if named {
            count_named(&mut *conn, &runs).await
        } else {
            count_unnamed(&mut *conn, &runs).await
        };
        // A call that committed returns with the ROLLBACK of its empty transaction in flight
        // (see `source::HeldTransaction`); pgbouncer frees the server connection once it has
        // relayed the answer, which the ping waits for.
        conn.ping().await.expect("the client's connection answers");
        (out, runs.load(Ordering::SeqCst))
    };
    let first = run(&mut a).await;
    let second = run(&mut b).await;
    let servers = db.server_connections().await.expect("SHOW SERVERS");
    assert_eq!(
        servers.len(),
        1,
        "one server connection so far: {servers:?}"
    );
    let mut hold = c.begin().await.expect("C begins");
    sqlx::query("SELECT 1")
        .persistent(false)
        .execute(&mut *hold)
        .await
        .expect("C holds the server connection");
    let third = run(&mut a).await;
    hold.rollback().await.expect("C ends");
    [first, second, third]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_break_in_transaction_pooling_and_are_not_retried() {
    let (db, _direct) = database().await;
    let [first, second, third] = interleave(&db, true).await;
    assert_eq!(first.0.expect("A prepares sqlx_s_1 on S"), 0);
    assert_eq!(first.1, 1);

    // B's own sqlx_s_1 collides with A's on S: 42P05, after one attempt, not retried.
    let err = second.0.expect_err("B's statement name is taken on S");
    assert_eq!(code(&err).as_deref(), Some("42P05"), "{err}");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(second.1, 1, "42P05 is not retried");

    // A's cached sqlx_s_1 is missing on T: 26000, after one attempt, not retried.
    let err = third.0.expect_err("A's statement is not on T");
    assert_eq!(code(&err).as_deref(), Some("26000"), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert_eq!(third.1, 1, "26000 is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statements_work_in_transaction_pooling() {
    let (db, _direct) = database().await;
    let results = interleave(&db, false).await;
    for (i, (out, runs)) in results.into_iter().enumerate() {
        assert_eq!(out.unwrap_or_else(|e| panic!("call {i}: {e}")), 0);
        assert_eq!(runs, 1, "call {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statement_errors_are_returned_after_their_attempt_on_a_pool() {
    // Through a pool (the way most code calls): retries counted from the loop's own events.
    //
    // A pool of one client connection, so that which server connection it meets is up to
    // pgbouncer alone. With more, the pool opens a second connection whenever a call starts
    // before the last one's release ping is done; two client connections can then prepare
    // `sqlx_s_1` on two server connections, after which every call finds its statement
    // wherever it lands, and no call clashes at all (seen once in CI: 12 of 12 `Ok`).
    let (db, _direct) = database().await;
    let pool = db.pool(1).await;
    let mut hold = client(&db).await;
    let (outcomes, retries) = with_retry_log(async {
        let mut outcomes = Vec::new();
        for i in 0..12 {
            // Every third call runs while another client holds a server connection: the one
            // the pool's connection prepared its statement on, so the call gets another.
            let tx = if i % 3 == 2 {
                // The pool's connection has been handed back (its release ping done), so
                // pgbouncer gives `hold` the server connection it used last (LIFO).
                let idle = tokio::time::timeout(Duration::from_secs(2), async {
                    while pool.num_idle() < pool.size() as usize {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                });
                idle.await.expect("the pool's connection came back");
                let mut tx = hold.begin().await.expect("hold");
                sqlx::query("SELECT 1")
                    .persistent(false)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                Some(tx)
            } else {
                None
            };
            let runs = AtomicU32::new(0);
            let out = count_named(&pool, &runs).await;
            outcomes.push((out.map_err(|e| code(&e)), runs.load(Ordering::SeqCst)));
            if let Some(tx) = tx {
                tx.rollback().await.unwrap();
            }
        }
        outcomes
    })
    .await;
    eprintln!("outcomes through a pool: {outcomes:?}");
    assert_eq!(pool.size(), 1, "the pool kept to one connection");
    let mut seen = Vec::new();
    for (out, runs) in &outcomes {
        if let Err(code) = out {
            seen.push(code.clone());
            assert!(
                matches!(code.as_deref(), Some("42P05" | "26000")),
                "unexpected error {code:?}"
            );
            assert_eq!(*runs, 1, "{outcomes:?}");
        }
    }
    assert!(!seen.is_empty(), "no statement clash in {outcomes:?}");
    assert!(retries.is_empty(), "{retries:?}");
}
