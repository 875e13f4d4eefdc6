//! `#[serializable_retry]` on MySQL/MariaDB (InnoDB) with genuinely concurrent transactions.
//!
//! The server is `MYSQL_DATABASE_URL` when set, otherwise a throwaway MariaDB started from the
//! local binaries (see `sqlx_retry_testkit::mysql_url`); every test gets its own database.
//! Interleavings are forced with `tokio::sync::Barrier`s that bodies wait on **on their first
//! attempt only**, so a retried attempt runs alone and the outcome is deterministic. Each test
//! drops its database when it passes (a failed one leaves it for inspection).
#![cfg(feature = "mysql")]

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::mysql::MySqlDatabaseError;
use sqlx::{Connection as _, Executor as _, MySqlConnection, MySqlPool};
use sqlx_retry::error::{Class, UnsupportedTxOption, classify};
use sqlx_retry::{SqlState, serializable_retry};
use sqlx_retry_testkit::{IsolatedMySql, isolated_mysql_database};
use tokio::sync::Barrier;

fn next_attempt(attempts: &AtomicU32) -> u32 {
    attempts.fetch_add(1, Ordering::SeqCst) + 1
}

/// `"<number>/<SQLSTATE>"` of a MySQL error, e.g. `"1213/40001"`.
fn mysql_code(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => match db.try_downcast_ref::<MySqlDatabaseError>() {
            Some(e) => format!("{}/{}", e.number(), e.code().unwrap_or("")),
            None => format!("?/{}", db.code().unwrap_or_default()),
        },
        other => format!("not a database error: {other}"),
    }
}

async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("test timed out: a barrier was never reached")
}

async fn setup(sql: &str) -> (MySqlPool, IsolatedMySql) {
    let db = isolated_mysql_database().await;
    let pool = db.pool(8).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&pool)
        .await
        .expect("setup SQL");
    (pool, db)
}

const ACCOUNTS: &str = "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) \
                        ENGINE=InnoDB; INSERT INTO accounts VALUES (1, 0), (2, 0);";

// ---------------------------------------------------------------------------------------------
// Deadlock (1213, SQLSTATE 40001)
// ---------------------------------------------------------------------------------------------

/// Adds 1 to both rows, `first` before `second`. Two calls with opposite orders deadlock once
/// both hold their first row.
#[serializable_retry(max = 5, backoff(base = "1ms", cap = "10ms"))]
async fn add_to_both(
    tx: &mut MySqlConnection,
    first: i32,
    second: i32,
    both_hold_first: &Barrier,
    attempts: &AtomicU32,
    codes: &Mutex<Vec<String>>,
) -> Result<(), sqlx::Error> {
    let attempt = next_attempt(attempts);
    for (i, id) in [first, second].into_iter().enumerate() {
        sqlx::query("UPDATE accounts SET balance = balance + 1 WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await
            .inspect_err(|e| codes.lock().unwrap().push(mysql_code(e)))?;
        if i == 0 && attempt == 1 {
            both_hold_first.wait().await;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deadlock_is_retried_and_both_transfers_apply_once() {
    let (pool, db) = setup(ACCOUNTS).await;
    let barrier = Barrier::new(2);
    let (a_attempts, b_attempts) = (AtomicU32::new(0), AtomicU32::new(0));
    let codes = Mutex::new(Vec::new());
    let (a, b) = within(async {
        tokio::join!(
            add_to_both(&pool, 1, 2, &barrier, &a_attempts, &codes),
            add_to_both(&pool, 2, 1, &barrier, &b_attempts, &codes),
        )
    })
    .await;
    a.unwrap();
    b.unwrap();
    assert_eq!(
        *codes.lock().unwrap(),
        ["1213/40001"],
        "one deadlock victim"
    );
    let total = a_attempts.load(Ordering::SeqCst) + b_attempts.load(Ordering::SeqCst);
    assert_eq!(total, 3, "the victim ran twice, the survivor once");
    let balances: Vec<i64> = sqlx::query_scalar("SELECT balance FROM accounts ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(balances, [2, 2], "each call applied exactly once");
    pool.close().await;
    db.drop_database().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Lock wait timeout (1205, SQLSTATE HY000): only the statement is rolled back by the server
// ---------------------------------------------------------------------------------------------

/// Logs the attempt (an earlier write in the same transaction), then updates a row another
/// connection holds locked; the first attempt times out after `innodb_lock_wait_timeout`.
#[serializable_retry(max = 3, backoff(base = "1ms", cap = "5ms"))]
async fn log_then_update(
    tx: &mut MySqlConnection,
    retry_started: &Barrier,
    released: &Barrier,
    attempts: &AtomicU32,
    codes: &Mutex<Vec<String>>,
) -> Result<(), sqlx::Error> {
    let attempt = next_attempt(attempts);
    if attempt == 2 {
        retry_started.wait().await;
        released.wait().await;
    }
    sqlx::query("INSERT INTO log (attempt) VALUES (?)")
        .bind(attempt)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE accounts SET balance = balance + 10 WHERE id = 1")
        .execute(&mut *tx)
        .await
        .inspect_err(|e| codes.lock().unwrap().push(mysql_code(e)))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_wait_timeout_rolls_back_the_whole_attempt_and_retries() {
    let (setup_pool, db) = setup(
        "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB;
         INSERT INTO accounts VALUES (1, 0);
         CREATE TABLE log (attempt INT NOT NULL) ENGINE=InnoDB;",
    )
    .await;
    setup_pool.close().await;
    let pool = db
        .pool_options(4)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET SESSION innodb_lock_wait_timeout = 1")
                    .await
                    .map(drop)
            })
        })
        .connect_with(db.connect_options())
        .await
        .unwrap();

    let mut holder = MySqlConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    let mut lock = holder.begin().await.unwrap();
    sqlx::query("SELECT balance FROM accounts WHERE id = 1 FOR UPDATE")
        .fetch_one(&mut *lock)
        .await
        .unwrap();

    let (retry_started, released) = (Barrier::new(2), Barrier::new(2));
    let attempts = AtomicU32::new(0);
    let codes = Mutex::new(Vec::new());
    let (result, ()) = within(async {
        tokio::join!(
            log_then_update(&pool, &retry_started, &released, &attempts, &codes),
            async {
                retry_started.wait().await;
                lock.rollback().await.unwrap();
                released.wait().await;
            }
        )
    })
    .await;
    result.unwrap();
    assert_eq!(*codes.lock().unwrap(), ["1205/HY000"]);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    // The first attempt's INSERT survived its failed UPDATE inside the transaction (InnoDB rolls
    // back only the statement on a lock wait timeout); the loop's ROLLBACK removed it.
    let logged: Vec<i32> = sqlx::query_scalar("SELECT attempt FROM log ORDER BY attempt")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(logged, [2], "nothing of the failed attempt persisted");
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(balance, 10, "applied once");
    pool.close().await;
    drop(holder);
    db.drop_database().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// The transaction the body runs in: isolation level and access mode
// ---------------------------------------------------------------------------------------------

/// The current transaction as InnoDB sees it: `(trx_isolation_level, trx_is_read_only)`.
///
/// `@@tx_isolation` / `@@transaction_isolation` show the *session* default, not the level that
/// `SET TRANSACTION` (no scope) set for this one transaction, so ask InnoDB. Its
/// `information_schema.innodb_trx` is a cache refreshed at most every 100 ms, hence the sleep.
async fn innodb_trx(tx: &mut MySqlConnection) -> Result<(String, i64), sqlx::Error> {
    let _: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query("DO SLEEP(0.25)").execute(&mut *tx).await?;
    sqlx::query_as(
        "SELECT trx_isolation_level, CAST(trx_is_read_only AS SIGNED) \
         FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = CONNECTION_ID()",
    )
    .fetch_one(&mut *tx)
    .await
}

#[serializable_retry]
async fn default_tx(tx: &mut MySqlConnection) -> Result<(String, i64), sqlx::Error> {
    innodb_trx(tx).await
}

#[serializable_retry(read_only)]
async fn serializable_read_only(tx: &mut MySqlConnection) -> Result<(String, i64), sqlx::Error> {
    innodb_trx(tx).await
}

#[serializable_retry(isolation = "repeatable_read")]
async fn repeatable_read(tx: &mut MySqlConnection) -> Result<(String, i64), sqlx::Error> {
    innodb_trx(tx).await
}

#[serializable_retry(isolation = "read_committed", read_only)]
async fn read_committed_read_only(tx: &mut MySqlConnection) -> Result<(String, i64), sqlx::Error> {
    innodb_trx(tx).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_runs_at_the_requested_level_and_access_mode() {
    let (pool, db) = setup(ACCOUNTS).await;
    let want = |level: &str, ro: i64| (level.to_owned(), ro);
    assert_eq!(default_tx(&pool).await.unwrap(), want("SERIALIZABLE", 0));
    assert_eq!(
        serializable_read_only(&pool).await.unwrap(),
        want("SERIALIZABLE", 1)
    );
    assert_eq!(
        repeatable_read(&pool).await.unwrap(),
        want("REPEATABLE READ", 0)
    );
    // `&mut MySqlConnection` as the source: each attempt is a transaction on that connection.
    let mut conn = MySqlConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    assert_eq!(
        read_committed_read_only(&mut conn).await.unwrap(),
        want("READ COMMITTED", 1)
    );
    // `SET TRANSACTION` without a scope applied to that one transaction only.
    assert_eq!(
        default_tx(&mut conn).await.unwrap(),
        want("SERIALIZABLE", 0)
    );
    let mut plain = conn.begin().await.unwrap();
    let session: (String, i64) = innodb_trx(&mut plain).await.unwrap();
    assert_eq!(session, want("REPEATABLE READ", 0), "the server default");
    plain.rollback().await.unwrap();
    pool.close().await;
    db.drop_database().await.unwrap();
}

#[serializable_retry(read_only, max = 5)]
async fn write_in_read_only(
    tx: &mut MySqlConnection,
    attempts: &AtomicU32,
) -> Result<(), sqlx::Error> {
    attempts.fetch_add(1, Ordering::SeqCst);
    sqlx::query("UPDATE accounts SET balance = 1 WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_write_in_a_read_only_transaction_fails_once() {
    let (pool, db) = setup(ACCOUNTS).await;
    let attempts = AtomicU32::new(0);
    let err = write_in_read_only(&pool, &attempts).await.unwrap_err();
    // ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
    assert_eq!(mysql_code(&err), "1792/25006", "{err}");
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "not retried");
    pool.close().await;
    db.drop_database().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Unsupported options and permanent errors
// ---------------------------------------------------------------------------------------------

#[serializable_retry(read_only, deferrable)]
async fn deferrable(tx: &mut MySqlConnection, ran: &AtomicU32) -> Result<(), sqlx::Error> {
    let _ = tx;
    ran.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn deferrable_is_an_error_before_anything_runs() {
    let (pool, db) = setup("SELECT 1").await;
    let ran = AtomicU32::new(0);
    let mut conn = MySqlConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    for err in [
        deferrable(&pool, &ran).await.unwrap_err(),
        deferrable(&mut conn, &ran).await.unwrap_err(),
    ] {
        let sqlx::Error::Configuration(inner) = &err else {
            panic!("expected a configuration error, got {err:?}");
        };
        let unsupported = inner.downcast_ref::<UnsupportedTxOption>().unwrap();
        assert_eq!(unsupported.option(), "deferrable");
        assert_eq!(unsupported.database(), "MySQL/MariaDB");
        assert!(
            err.to_string().contains("DEFERRABLE is PostgreSQL-only"),
            "{err}"
        );
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    // The connection is untouched and usable.
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    pool.close().await;
    db.drop_database().await.unwrap();
}

#[serializable_retry(max = 5, backoff(base = "1ms", cap = "2ms"))]
async fn insert_duplicate(
    tx: &mut MySqlConnection,
    attempts: &AtomicU32,
) -> Result<(), sqlx::Error> {
    attempts.fetch_add(1, Ordering::SeqCst);
    sqlx::query("INSERT INTO accounts VALUES (1, 0)")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[tokio::test]
async fn permanent_errors_are_returned_after_one_attempt() {
    let (pool, db) = setup(ACCOUNTS).await;
    let attempts = AtomicU32::new(0);
    let err = insert_duplicate(&pool, &attempts).await.unwrap_err();
    assert_eq!(mysql_code(&err), "1062/23000", "{err}");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(classify(&err, &[]), Class::Permanent);

    let syntax = sqlx::query("SELEC 1").execute(&pool).await.unwrap_err();
    assert_eq!(mysql_code(&syntax), "1064/42000");
    assert_eq!(classify(&syntax, &[]), Class::Permanent);
    // A SQLSTATE opted into with `retry_on` still works on MySQL.
    let extra = [SqlState::new("23000").unwrap()];
    assert_eq!(
        classify(&err, &extra),
        Class::Conflict(SqlState::new("23000").unwrap())
    );
    pool.close().await;
    db.drop_database().await.unwrap();
}
