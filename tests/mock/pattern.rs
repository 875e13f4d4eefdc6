//! # Unit-testing a service that uses `#[serializable_retry]`, without a database
//!
//! This file is the pattern the README links to. It is an ordinary integration test, so every
//! line of it compiles and runs (`cargo test --features mock --test mock -- pattern::`).
//!
//! The idea in four steps:
//!
//! 1. Put the database access behind a small **repository trait** (`Accounts` below) whose
//!    methods return `impl Future<Output = Result<_, sqlx::Error>> + Send`.
//! 2. Implement it for **`sqlx::PgConnection`** with real SQL. That is what runs in production.
//! 3. Implement it for **`sqlx_retry::mock::MockTx<YourState>`**: each method records a
//!    statement with `self.execute("…")?` (that is where scripted failures strike) and then reads
//!    or writes `self.state_mut()`, the transaction's private copy of your in-memory state.
//!    COMMIT publishes the copy; ROLLBACK throws it away, exactly like a table under a
//!    transaction.
//! 4. Write the **service function once**, generic over the trait, and annotate it. Production
//!    calls it with `&PgPool`; tests call it with `&MockDb<YourState>`.
//!
//! Then script failures (`MockDb::fail(attempt, phase, fault)`) and assert on the final state and
//! on the recorded script: BEGIN, each statement, COMMIT or ROLLBACK, and each backoff sleep.
//!
//! Enable the mock in your `Cargo.toml`:
//!
//! ```toml
//! [dev-dependencies]
//! sqlx-retry = { version = "0.1", features = ["mock"] }
//! tokio = { version = "1", features = ["macros", "rt", "time", "test-util"] }
//! ```
//!
//! and run the tests on tokio's paused clock (`#[tokio::test(start_paused = true)]`) so that the
//! backoff between attempts costs no real time.
#![cfg(feature = "mock")]

use std::collections::HashMap;
use std::future::Future;

use sqlx::PgConnection;
use sqlx_retry::error::sqlstate;
use sqlx_retry::mock::{Fault, MockDb, MockTx, Phase};
use sqlx_retry::{SqlState, serializable_retry};

// -------------------------------------------------------------------------------------------------
// Step 1: the repository trait.
//
// Methods take `&mut self` (the transaction's connection) and return `Send` futures, so the
// annotated function's future stays `Send` and can be spawned. The trait spells the `Send`
// bound out; the implementations below are plain `async fn`s, and the compiler checks that
// their futures are `Send`.
// -------------------------------------------------------------------------------------------------

/// What the service needs from the database.
pub trait Accounts {
    /// The balance of account `id`; `RowNotFound` if there is no such account.
    fn balance(&mut self, id: i64) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;

    /// Adds `delta` (possibly negative) to the balance of account `id`.
    fn add(&mut self, id: i64, delta: i64) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

// -------------------------------------------------------------------------------------------------
// Step 2: the production implementation, on a PostgreSQL connection.
//
// Inside an annotated function, `&mut PgConnection` is the connection of the attempt's
// transaction: these statements run between the attribute's BEGIN and COMMIT.
// -------------------------------------------------------------------------------------------------

impl Accounts for PgConnection {
    async fn balance(&mut self, id: i64) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_one(self)
            .await
    }

    async fn add(&mut self, id: i64, delta: i64) -> Result<(), sqlx::Error> {
        let done = sqlx::query("UPDATE accounts SET balance = balance + $2 WHERE id = $1")
            .bind(id)
            .bind(delta)
            .execute(self)
            .await?;
        if done.rows_affected() == 0 {
            return Err(sqlx::Error::RowNotFound);
        }
        Ok(())
    }
}

// -------------------------------------------------------------------------------------------------
// Step 3: the test implementation, on the mock transaction.
//
// The state is any `Clone + Send + 'static` type: here, the balances table as a map. Each method
// first calls `self.execute(label)?`. That records the label in the script and is the point where
// a fault scripted for this statement (by its position in the attempt, `Phase::Statement(n)`)
// is returned, just as a real statement would fail. Only then does it touch the state.
// -------------------------------------------------------------------------------------------------

/// The in-memory stand-in for the `accounts` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bank {
    /// Balance by account id.
    pub balances: HashMap<i64, i64>,
}

impl Bank {
    fn with(accounts: &[(i64, i64)]) -> Self {
        Bank {
            balances: accounts.iter().copied().collect(),
        }
    }
}

impl Accounts for MockTx<Bank> {
    async fn balance(&mut self, id: i64) -> Result<i64, sqlx::Error> {
        self.execute(&format!("balance({id})"))?;
        self.state()
            .balances
            .get(&id)
            .copied()
            .ok_or(sqlx::Error::RowNotFound)
    }

    async fn add(&mut self, id: i64, delta: i64) -> Result<(), sqlx::Error> {
        self.execute(&format!("add({id}, {delta})"))?;
        let balance = self
            .state_mut()
            .balances
            .get_mut(&id)
            .ok_or(sqlx::Error::RowNotFound)?;
        *balance += delta;
        Ok(())
    }
}

// -------------------------------------------------------------------------------------------------
// Step 4: the service, written once.
//
// The attribute turns the first parameter into "a source of transactions whose connection is
// `C`": `&PgPool` or `&mut PgConnection` give `C = PgConnection`, `&MockDb<Bank>` gives
// `C = MockTx<Bank>`. The body is the whole transaction; on a conflict it runs again from the
// top, on a fresh transaction.
// -------------------------------------------------------------------------------------------------

/// Moves `amount` from `from` to `to`. Returns `Ok(false)`, changing nothing, if `from` cannot
/// cover it.
#[serializable_retry(max = 5)]
pub async fn transfer<C: Accounts + Send>(
    tx: &mut C,
    from: i64,
    to: i64,
    amount: i64,
) -> Result<bool, sqlx::Error> {
    let balance = tx.balance(from).await?; // statement 1
    if balance < amount {
        return Ok(false); // ends this attempt: it commits, having written nothing
    }
    tx.add(from, -amount).await?; // statement 2
    tx.add(to, amount).await?; // statement 3
    Ok(true)
}

/// Production code calls the very same function with a pool (or a `&mut PgConnection`). This is
/// only compiled here, never run: it needs a database.
#[allow(dead_code)]
async fn in_production(pool: &sqlx::PgPool) -> Result<bool, sqlx::Error> {
    transfer(pool, 1, 2, 30).await
}

// -------------------------------------------------------------------------------------------------
// The tests.
// -------------------------------------------------------------------------------------------------

/// The backoff sleeps are random (exponential backoff with jitter), so compare scripts with the
/// durations masked; `MockDb::events()` gives the exact `MockEvent::Sleep(duration)` values if
/// you want to check them against bounds.
fn script(db: &MockDb<Bank>) -> Vec<String> {
    db.script()
        .into_iter()
        .map(|line| {
            if line.starts_with("sleep ") {
                "sleep …".to_owned()
            } else {
                line
            }
        })
        .collect()
}

/// A conflict at COMMIT: PostgreSQL aborts the transaction with `40001`, the attribute sleeps
/// and runs the whole body again, and the money moves exactly once.
#[tokio::test(start_paused = true)]
async fn a_conflict_at_commit_moves_the_money_exactly_once() {
    let db = MockDb::new(Bank::with(&[(1, 100), (2, 0)]))
        // On attempt 1, COMMIT fails with serialization_failure.
        .fail(1, Phase::Commit, Fault::sqlstate("40001"));

    assert!(transfer(&db, 1, 2, 30).await.unwrap());

    assert_eq!(db.state(), Bank::with(&[(1, 70), (2, 30)]));
    assert_eq!(
        script(&db),
        [
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "balance(1)",
            "add(1, -30)",
            "add(2, 30)",
            "COMMIT -> 40001", // the first attempt's writes are discarded...
            "sleep …",         // ...the loop backs off, holding no locks...
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "balance(1)", // ...and re-reads: the decision is made again on fresh data
            "add(1, -30)",
            "add(2, 30)",
            "COMMIT",
        ]
    );
}

/// `return Ok(false)` ends the attempt, not the loop: the transaction commits having written
/// nothing, and there is no retry.
#[tokio::test(start_paused = true)]
async fn insufficient_funds_returns_false_and_changes_nothing() {
    let db = MockDb::new(Bank::with(&[(1, 10), (2, 0)]));

    assert!(!transfer(&db, 1, 2, 30).await.unwrap());

    assert_eq!(db.state(), Bank::with(&[(1, 10), (2, 0)]));
    assert_eq!(
        db.script(),
        ["BEGIN ISOLATION LEVEL SERIALIZABLE", "balance(1)", "COMMIT"]
    );
}

/// A non-retryable failure in the middle of the body: the debit already happened inside the
/// transaction, and ROLLBACK undoes it. The caller gets the error after exactly one attempt.
#[tokio::test(start_paused = true)]
async fn a_failure_mid_body_rolls_back_the_partial_debit() {
    let db = MockDb::new(Bank::with(&[(1, 100), (2, 0)]))
        // Statement 3 (the credit) violates a CHECK constraint.
        .fail(1, Phase::Statement(3), Fault::sqlstate("23514"));

    let err = transfer(&db, 1, 2, 30).await.unwrap_err();

    assert_eq!(sqlstate(&err), SqlState::new("23514"));
    assert_eq!(
        db.state(),
        Bank::with(&[(1, 100), (2, 0)]),
        "the debit was rolled back"
    );
    assert_eq!(
        db.script(),
        [
            "BEGIN ISOLATION LEVEL SERIALIZABLE",
            "balance(1)",
            "add(1, -30)",
            "add(2, 30) -> 23514",
            "ROLLBACK",
        ]
    );
}

/// A deadlock in the middle of the body is retried from the top: the partial debit of
/// attempt 1 is rolled back, attempt 2 does the whole transfer.
#[tokio::test(start_paused = true)]
async fn a_deadlock_mid_body_reruns_the_whole_transfer() {
    let db = MockDb::new(Bank::with(&[(1, 100), (2, 0)])).fail(
        1,
        Phase::Statement(3),
        Fault::sqlstate("40P01"),
    );

    assert!(transfer(&db, 1, 2, 30).await.unwrap());

    assert_eq!(db.state(), Bank::with(&[(1, 70), (2, 30)]));
    assert_eq!(db.attempts(), 2);
}

/// Application errors are returned after one attempt too: here, a missing account.
#[tokio::test(start_paused = true)]
async fn a_missing_account_is_not_retried() {
    let db = MockDb::new(Bank::with(&[(1, 100)]));

    let err = transfer(&db, 1, 2, 30).await.unwrap_err();

    assert!(matches!(err, sqlx::Error::RowNotFound), "{err}");
    assert_eq!(db.state(), Bank::with(&[(1, 100)]));
    assert_eq!(db.attempts(), 1);
}

/// The function's future is `Send`, with the mock as with a pool: it can be spawned.
///
/// Note: the mock records one transaction at a time faithfully, but it does not isolate
/// *concurrent* transactions from each other; test concurrency against a real database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_can_be_spawned() {
    let db = MockDb::new(Bank::with(&[(1, 100), (2, 0)])).fail(
        1,
        Phase::Commit,
        Fault::sqlstate("40001"),
    );
    let task = tokio::spawn({
        let db = db.clone(); // clones share the same state and script
        async move { transfer(&db, 1, 2, 10).await }
    });
    assert!(task.await.unwrap().unwrap());
    assert_eq!(db.state(), Bank::with(&[(1, 90), (2, 10)]));
}
