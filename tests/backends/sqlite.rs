//! `#[serializable_retry]` on SQLite: real database files in WAL mode, several connections,
//! genuine lock conflicts.
//!
//! SQLite has one writer at a time. Read-write transactions start with `BEGIN IMMEDIATE`, so a
//! writer that finds the database locked fails at BEGIN with `SQLITE_BUSY` (5) once its
//! `busy_timeout` (zero here) runs out, and the retry loop starts the attempt again. A `read_only`
//! transaction starts with `BEGIN DEFERRED`; if it writes after another connection committed,
//! SQLite refuses the upgrade with `SQLITE_BUSY_SNAPSHOT` (517), which is retried too.
#![cfg(feature = "sqlite")]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection as _, SqliteConnection, SqlitePool};
use sqlx_retry::error::UnsupportedTxOption;
use sqlx_retry::serializable_retry;
use sqlx_retry_testkit::global_retries;
use tokio::sync::Barrier;

/// A database file in the temporary directory, deleted (with its WAL files) on drop.
struct TempDb {
    path: PathBuf,
}

impl TempDb {
    fn new() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "sqlx-retry-sqlite-{}-{}-{}.db",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            fastrand::u64(..)
        ));
        TempDb { path }
    }

    /// WAL mode, and a zero `busy_timeout`: a locked database is reported at once.
    fn options(&self) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(&self.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::ZERO)
    }

    /// A pool of `n` connections, all opened before it is returned.
    async fn pool(&self, n: u32, setup: &str) -> SqlitePool {
        let pool = SqlitePoolOptions::new()
            .max_connections(n)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(self.options())
            .await
            .expect("open the SQLite pool");
        sqlx::raw_sql(sqlx::AssertSqlSafe(setup.to_owned()))
            .execute(&pool)
            .await
            .expect("setup SQL");
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(pool.acquire().await.expect("open a connection"));
        }
        drop(held);
        pool
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut file = self.path.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Retries of `function` by SQLSTATE: BEGIN failures never reach the body, so the body cannot
/// count them itself.
fn retries_of(function: &str) -> BTreeMap<String, u64> {
    global_retries().by_sqlstate(function)
}

/// The extended result code of a SQLite error, e.g. `"517"`.
fn sqlite_code(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()).unwrap_or_default(),
        _ => String::new(),
    }
}

async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("test timed out")
}

// ---------------------------------------------------------------------------------------------
// Concurrent writers: SQLITE_BUSY at BEGIN IMMEDIATE
// ---------------------------------------------------------------------------------------------

/// Read-modify-write increment that holds the write lock across an await, so concurrent callers
/// find the database locked.
#[serializable_retry(max = 200, backoff(base = "1ms", cap = "10ms"))]
async fn sqlite_increment(
    tx: &mut SqliteConnection,
    bodies: &AtomicU32,
) -> Result<i64, sqlx::Error> {
    bodies.fetch_add(1, Ordering::SeqCst);
    let n: i64 = sqlx::query_scalar("SELECT n FROM counter WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    tokio::time::sleep(Duration::from_millis(1)).await;
    sqlx::query("UPDATE counter SET n = ? WHERE id = 1")
        .bind(n + 1)
        .execute(&mut *tx)
        .await?;
    Ok(n + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_busy_is_retried_and_every_increment_lands_once() {
    global_retries();
    const TASKS: usize = 8;
    const EACH: usize = 10;
    let db = TempDb::new();
    let pool = db
        .pool(
            TASKS as u32,
            "CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
             INSERT INTO counter VALUES (1, 0);",
        )
        .await;
    let bodies: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..EACH {
                    seen.push(sqlite_increment(&pool, bodies).await.expect("increment"));
                }
                seen
            })
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.extend(within(task).await.unwrap());
    }
    seen.sort_unstable();
    let total = (TASKS * EACH) as i64;
    // Every call saw a distinct value: the increments were serialized, none lost.
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    let n: i64 = sqlx::query_scalar("SELECT n FROM counter")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, total);
    // BUSY happens at BEGIN IMMEDIATE, before the body: each body that ran committed.
    assert_eq!(bodies.load(Ordering::SeqCst) as i64, total);
    let retried = retries_of("sqlite_increment");
    assert!(
        retried.get("40001").copied().unwrap_or(0) > 0,
        "expected SQLITE_BUSY retries (reported as 40001), got {retried:?}"
    );
    assert_eq!(retried.keys().collect::<Vec<_>>(), ["40001"], "{retried:?}");
}

// ---------------------------------------------------------------------------------------------
// A deferred transaction whose snapshot went stale: SQLITE_BUSY_SNAPSHOT (517) in the body
// ---------------------------------------------------------------------------------------------

/// `read_only` starts `BEGIN DEFERRED`; SQLite does not enforce read-only, so the write below
/// upgrades the transaction, which fails with 517 when another connection committed after the
/// read.
#[serializable_retry(read_only, max = 3, backoff(base = "1ms", cap = "5ms"))]
async fn deferred_read_then_write(
    tx: &mut SqliteConnection,
    read_done: &Barrier,
    other_committed: &Barrier,
    attempts: &AtomicU32,
    codes: &Mutex<Vec<String>>,
) -> Result<i64, sqlx::Error> {
    let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
    let n: i64 = sqlx::query_scalar("SELECT n FROM counter WHERE id = 1")
        .fetch_one(&mut *tx)
        .await?;
    if attempt == 1 {
        read_done.wait().await;
        other_committed.wait().await;
    }
    sqlx::query("UPDATE counter SET n = ? WHERE id = 1")
        .bind(n + 1)
        .execute(&mut *tx)
        .await
        .inspect_err(|e| codes.lock().unwrap().push(sqlite_code(e)))?;
    Ok(n + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_snapshot_write_is_retried_with_a_fresh_read() {
    let db = TempDb::new();
    let pool = db
        .pool(
            3,
            "CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL);
             INSERT INTO counter VALUES (1, 0);",
        )
        .await;
    let read_done = Barrier::new(2);
    let other_committed = Barrier::new(2);
    let attempts = AtomicU32::new(0);
    let codes = Mutex::new(Vec::new());
    let (got, ()) = within(async {
        tokio::join!(
            deferred_read_then_write(&pool, &read_done, &other_committed, &attempts, &codes),
            async {
                read_done.wait().await;
                sqlx::query("UPDATE counter SET n = n + 100 WHERE id = 1")
                    .execute(&pool)
                    .await
                    .expect("concurrent write");
                other_committed.wait().await;
            }
        )
    })
    .await;
    // The retry read 100 and wrote 101: the whole body ran again, not just the UPDATE.
    assert_eq!(got.unwrap(), 101);
    assert_eq!(*codes.lock().unwrap(), ["517"]);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    let n: i64 = sqlx::query_scalar("SELECT n FROM counter")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 101);
}

// ---------------------------------------------------------------------------------------------
// BEGIN IMMEDIATE on a single connection
// ---------------------------------------------------------------------------------------------

/// Checks, before writing anything, that this transaction already holds the write lock: another
/// connection cannot start a write transaction.
#[serializable_retry(max = 1)]
async fn holds_write_lock_from_begin(
    tx: &mut SqliteConnection,
    other: &Mutex<Option<SqliteConnection>>,
) -> Result<String, sqlx::Error> {
    let _: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *tx).await?;
    let mut conn = other.lock().unwrap().take().expect("the other connection");
    let code = match sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut conn).await {
        Ok(_) => "began".to_owned(),
        Err(e) => sqlite_code(&e),
    };
    *other.lock().unwrap() = Some(conn);
    Ok(code)
}

#[tokio::test]
async fn write_transactions_take_the_lock_at_begin_on_a_single_connection() {
    let db = TempDb::new();
    let mut conn = SqliteConnection::connect_with(&db.options()).await.unwrap();
    let other = Mutex::new(Some(
        SqliteConnection::connect_with(&db.options()).await.unwrap(),
    ));
    // The source is `&mut SqliteConnection`: each attempt is a transaction on it.
    let code = holds_write_lock_from_begin(&mut conn, &other)
        .await
        .unwrap();
    assert_eq!(
        code, "5",
        "the other connection should have got SQLITE_BUSY"
    );
    // The transaction committed and released the lock.
    let mut other = other.into_inner().unwrap().unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE; COMMIT")
        .execute(&mut other)
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Nested calls join the outer transaction
// ---------------------------------------------------------------------------------------------

#[serializable_retry(max = 3, backoff(base = "1ms", cap = "2ms"))]
async fn insert_row(tx: &mut SqliteConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO t VALUES (?)")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[serializable_retry(max = 3, backoff(base = "1ms", cap = "2ms"))]
async fn insert_two_then_fail(
    tx: &mut SqliteConnection,
    outer_attempts: &AtomicU32,
) -> Result<(), sqlx::Error> {
    outer_attempts.fetch_add(1, Ordering::SeqCst);
    // The inner annotated calls see a connection already in a transaction: they join it
    // instead of sending BEGIN (which SQLite would reject inside a transaction).
    insert_row(&mut *tx, 1).await?;
    insert_row(&mut *tx, 2).await?;
    // A permanent error: the outer transaction rolls back, taking the joined inserts with it.
    insert_row(&mut *tx, 1).await
}

#[tokio::test]
async fn nested_calls_join_the_outer_transaction_and_roll_back_with_it() {
    let db = TempDb::new();
    let pool = db.pool(2, "CREATE TABLE t (id INTEGER PRIMARY KEY);").await;
    let outer_attempts = AtomicU32::new(0);
    let err = insert_two_then_fail(&pool, &outer_attempts)
        .await
        .unwrap_err();
    assert_eq!(sqlite_code(&err), "1555", "{err}");
    assert_eq!(outer_attempts.load(Ordering::SeqCst), 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        rows, 0,
        "the joined inserts rolled back with the outer transaction"
    );
}

// ---------------------------------------------------------------------------------------------
// Permanent errors and unsupported options
// ---------------------------------------------------------------------------------------------

#[serializable_retry(max = 5, backoff(base = "1ms", cap = "2ms"))]
async fn insert_duplicate(
    tx: &mut SqliteConnection,
    attempts: &AtomicU32,
) -> Result<(), sqlx::Error> {
    attempts.fetch_add(1, Ordering::SeqCst);
    sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[tokio::test]
async fn constraint_violation_is_not_retried() {
    let db = TempDb::new();
    let pool = db
        .pool(
            2,
            "CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);",
        )
        .await;
    let attempts = AtomicU32::new(0);
    let err = insert_duplicate(&pool, &attempts).await.unwrap_err();
    assert_eq!(sqlite_code(&err), "1555", "{err}");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[serializable_retry(isolation = "read_committed")]
async fn at_read_committed(tx: &mut SqliteConnection, ran: &AtomicU32) -> Result<(), sqlx::Error> {
    let _ = tx;
    ran.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[serializable_retry(isolation = "repeatable_read", read_only)]
async fn at_repeatable_read(tx: &mut SqliteConnection, ran: &AtomicU32) -> Result<(), sqlx::Error> {
    let _ = tx;
    ran.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[serializable_retry(read_only, deferrable)]
async fn deferrable(tx: &mut SqliteConnection, ran: &AtomicU32) -> Result<(), sqlx::Error> {
    let _ = tx;
    ran.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

fn unsupported(err: &sqlx::Error) -> &UnsupportedTxOption {
    match err {
        sqlx::Error::Configuration(e) => e
            .downcast_ref::<UnsupportedTxOption>()
            .unwrap_or_else(|| panic!("not an UnsupportedTxOption: {err}")),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test]
async fn other_isolation_levels_and_deferrable_are_errors_before_anything_runs() {
    let db = TempDb::new();
    let pool = db.pool(1, "SELECT 1").await;
    let ran = AtomicU32::new(0);

    let err = at_read_committed(&pool, &ran).await.unwrap_err();
    assert_eq!(unsupported(&err).option(), "isolation = \"read_committed\"");
    assert!(err.to_string().contains("always SERIALIZABLE"), "{err}");

    let mut conn = SqliteConnection::connect_with(&db.options()).await.unwrap();
    let err = at_repeatable_read(&mut conn, &ran).await.unwrap_err();
    assert_eq!(
        unsupported(&err).option(),
        "isolation = \"repeatable_read\""
    );

    let err = deferrable(&pool, &ran).await.unwrap_err();
    assert_eq!(unsupported(&err).option(), "deferrable");
    assert_eq!(unsupported(&err).database(), "SQLite");

    assert_eq!(ran.load(Ordering::SeqCst), 0, "no body may run");
    // The connection is still usable and not inside a transaction.
    sqlx::raw_sql("BEGIN IMMEDIATE; COMMIT")
        .execute(&mut conn)
        .await
        .unwrap();
}
