//! Nested calls and outer transactions on a real PostgreSQL: an annotated function called with a
//! transaction that is already open joins it — one attempt, no BEGIN/COMMIT/ROLLBACK of its own,
//! its error returned as is — so a conflict is retried only by the loop that owns the
//! transaction.
//!
//! Transaction-control statements are counted at a fault-injecting proxy (a never-firing
//! predicate that counts what it sees). Conflicts are genuine: a concurrent transaction, forced
//! between the snapshot and the write with barriers on the first outer attempt only.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use sqlx_retry::serializable_retry;
use sqlx_retry_testkit::{FrontendMessage, Matcher, PgProxy, isolated_schema};
use tokio::sync::Barrier;

// ---------------------------------------------------------------------------------------------
// Counting transaction control at the proxy
// ---------------------------------------------------------------------------------------------

/// Per-test counters of BEGIN, COMMIT, ROLLBACK and SAVEPOINT statements (one row per test, so
/// parallel tests do not mix).
static CONTROL: [[AtomicU64; 4]; 3] = [const { [const { AtomicU64::new(0) }; 4] }; 3];

const KEYWORDS: [&str; 4] = ["BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT"];

/// A predicate that never matches and counts transaction-control statements for test `ID`.
fn count_control<const ID: usize>(msg: &FrontendMessage<'_>) -> bool {
    if let Some(sql) = msg.sql() {
        // A simple query may hold several statements (a pooled COMMIT is
        // `SET LOCAL sqlx_retry.not_aborted = 'on'; COMMIT; BEGIN`): count each.
        for statement in sql.split(';') {
            let statement = statement.trim_start().to_ascii_uppercase();
            for (i, keyword) in KEYWORDS.iter().enumerate() {
                if statement.starts_with(keyword) {
                    CONTROL[ID][i].fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
    false
}

/// `[BEGIN, COMMIT, ROLLBACK, SAVEPOINT]` counts seen so far by test `id`.
fn control(id: usize) -> [u64; 4] {
    std::array::from_fn(|i| CONTROL[id][i].load(Ordering::SeqCst))
}

/// A schema with two accounts of balance 100, a pool through a counting proxy, and a direct
/// pool for the interfering transaction.
async fn setup<const ID: usize>() -> (PgPool, PgPool, PgProxy) {
    let schema = isolated_schema().await;
    let direct = schema.pool(2).await;
    sqlx::raw_sql(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
         INSERT INTO accounts VALUES (1, 100), (2, 100);",
    )
    .execute(&direct)
    .await
    .expect("setup SQL");
    let proxy = PgProxy::for_test_db().await;
    let proxied = schema.pool_via(&proxy, 2).await;
    // Sanity: warm up, then start counting from zero.
    sqlx::query("SELECT 1").execute(&proxied).await.unwrap();
    let _counter = proxy.arm(sqlx_retry_testkit::Fault::DelayBeforeForwarding(
        Matcher::Predicate(count_control::<ID>),
        Duration::ZERO,
    ));
    (proxied, direct, proxy)
}

async fn balances(pool: &PgPool) -> Vec<(i32, i32)> {
    sqlx::query_as("SELECT id, balance FROM accounts ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Fails the test instead of hanging when an interleaving does not go as planned.
async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("test timed out: a barrier was never reached")
}

/// The SQLSTATE found in `err`'s source chain, or `""`.
fn code(err: &(dyn std::error::Error + 'static)) -> String {
    sqlx_retry::error::sqlstate(err).map_or_else(String::new, |s| s.as_str().to_owned())
}

// ---------------------------------------------------------------------------------------------
// The functions under test
// ---------------------------------------------------------------------------------------------

/// `Ctl::interfere_in` for no interference.
const NEVER: u32 = u32::MAX;

/// Shared state of one interleaving.
struct Ctl {
    outer_attempts: AtomicU32,
    inner_attempts: AtomicU32,
    /// Which outer attempt each inner attempt ran in.
    inner_in_outer: Mutex<Vec<u32>>,
    /// SQLSTATEs the inner body saw.
    inner_errors: Mutex<Vec<String>>,
    /// Interfere (once) when the inner body runs in this outer attempt.
    interfere_in: u32,
    go: Barrier,
    done: Barrier,
}

impl Ctl {
    fn new(interfere_in: u32) -> Ctl {
        Ctl {
            outer_attempts: AtomicU32::new(0),
            inner_attempts: AtomicU32::new(0),
            inner_in_outer: Mutex::new(Vec::new()),
            inner_errors: Mutex::new(Vec::new()),
            interfere_in,
            go: Barrier::new(2),
            done: Barrier::new(2),
        }
    }

    fn outer(&self) -> u32 {
        self.outer_attempts.load(Ordering::SeqCst)
    }

    fn inner(&self) -> u32 {
        self.inner_attempts.load(Ordering::SeqCst)
    }
}

/// The concurrent transaction: waits for `go`, commits an update of account 1, signals `done`.
fn interferer(direct: PgPool, ctl: &'static Ctl) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        within(ctl.go.wait()).await;
        sqlx::query("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
            .execute(&direct)
            .await
            .expect("interfering update");
        within(ctl.done.wait()).await;
    })
}

/// Debits account `id`. When called in the interfering outer attempt, a concurrent transaction
/// updates the same row first (after this transaction's snapshot was taken), so the UPDATE fails
/// with a genuine `40001`.
#[serializable_retry(max = 5, backoff(base = "1ms", cap = "5ms"))]
async fn debit(tx: &mut PgConnection, id: i32, amount: i32, ctl: &Ctl) -> Result<(), sqlx::Error> {
    ctl.inner_attempts.fetch_add(1, Ordering::SeqCst);
    ctl.inner_in_outer.lock().unwrap().push(ctl.outer());
    if ctl.outer() == ctl.interfere_in {
        within(ctl.go.wait()).await;
        within(ctl.done.wait()).await;
    }
    sqlx::query("UPDATE accounts SET balance = balance - $2 WHERE id = $1")
        .bind(id)
        .bind(amount)
        .execute(&mut *tx)
        .await
        .inspect_err(|e| ctl.inner_errors.lock().unwrap().push(code(e)))?;
    Ok(())
}

/// Reads (taking the snapshot), debits through the annotated `debit` with its own `tx`, credits.
#[serializable_retry(max = 5, backoff(base = "1ms", cap = "5ms"))]
async fn transfer(tx: &mut PgConnection, amount: i32, ctl: &Ctl) -> Result<i64, sqlx::Error> {
    ctl.outer_attempts.fetch_add(1, Ordering::SeqCst);
    let total: i64 = sqlx::query_scalar("SELECT sum(balance) FROM accounts")
        .fetch_one(&mut *tx)
        .await?;
    debit(&mut *tx, 1, amount, ctl).await?; // joins: no BEGIN, no loop of its own
    sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = 2")
        .bind(amount)
        .execute(&mut *tx)
        .await?;
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflict_in_nested_call_is_retried_only_by_the_outer_loop() {
    let (pool, direct, _proxy) = setup::<0>().await;
    let ctl: &'static Ctl = Box::leak(Box::new(Ctl::new(1)));
    let task = interferer(direct.clone(), ctl);

    let total = within(transfer(&pool, 10, ctl)).await.expect("transfer");
    task.await.unwrap();

    // The inner UPDATE hit a genuine 40001 in outer attempt 1; the inner call did not retry it.
    assert_eq!(*ctl.inner_errors.lock().unwrap(), ["40001"]);
    assert_eq!(ctl.outer(), 2, "the outer loop retried once");
    assert_eq!(ctl.inner(), 2, "the inner body ran once per outer attempt");
    assert_eq!(*ctl.inner_in_outer.lock().unwrap(), [1, 2]);
    // Only the outer loop sent transaction control: a BEGIN per outer attempt, no savepoints;
    // the pooled COMMIT opens an empty transaction (one more BEGIN) whose ROLLBACK goes with the
    // pool's release ping, sent by a task after the call returned.
    for _ in 0..200 {
        if control(0)[2] >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let [begins, commits, rollbacks, savepoints] = control(0);
    assert_eq!(
        begins,
        u64::from(ctl.outer()) + 1,
        "BEGINs = outer attempts + 1"
    );
    assert_eq!((commits, rollbacks, savepoints), (1, 2, 0));
    // Attempt 2 saw the interfering +1 and applied the transfer once.
    assert_eq!(total, 201);
    assert_eq!(balances(&direct).await, [(1, 91), (2, 110)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_transaction_as_source_is_joined() {
    let (pool, direct, _proxy) = setup::<1>().await;

    // Success: one body run inside the caller's transaction; the caller commits.
    let ctl = Ctl::new(NEVER);
    let mut tx = pool.begin().await.unwrap();
    debit(&mut tx, 1, 5, &ctl).await.unwrap();
    debit(&mut tx, 2, 5, &ctl).await.unwrap();
    assert_eq!(control(1), [1, 0, 0, 0], "only the caller's BEGIN");
    tx.commit().await.unwrap();
    assert_eq!(ctl.inner(), 2);
    assert_eq!(control(1), [1, 1, 0, 0]);
    assert_eq!(balances(&direct).await, [(1, 95), (2, 95)]);

    // A genuine 40001 inside: returned as is after one run; no ROLLBACK, no retry, no sleep.
    // (Called outside any annotated function, so "outer attempt" 0 interferes.)
    let ctl: &'static Ctl = Box::leak(Box::new(Ctl::new(0)));
    let task = interferer(direct.clone(), ctl);
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE")
        .await
        .unwrap();
    let _: i64 = sqlx::query_scalar("SELECT sum(balance) FROM accounts")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let err = within(debit(&mut tx, 1, 5, ctl)).await.unwrap_err();
    task.await.unwrap();
    assert_eq!(code(&err), "40001");
    assert_eq!(
        ctl.inner(),
        1,
        "no retry inside a transaction the caller owns"
    );
    assert_eq!(control(1), [2, 1, 0, 0], "the joined call sent no ROLLBACK");
    tx.rollback().await.unwrap();
    assert_eq!(control(1), [2, 1, 1, 0]);
    assert_eq!(balances(&direct).await, [(1, 96), (2, 95)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_outside_a_transaction_still_begins_its_own() {
    let (pool, direct, _proxy) = setup::<2>().await;
    let ctl = Ctl::new(NEVER);
    let mut conn = pool.acquire().await.unwrap();
    debit(&mut *conn, 1, 7, &ctl).await.unwrap();
    // BEGIN; the check with COMMIT and an empty transaction (`SET LOCAL …; COMMIT; BEGIN`); the
    // ROLLBACK that ends it, sent as the call returns without being waited for.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while control(2)[2] == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(control(2), [2, 1, 1, 0]);
    assert_eq!(balances(&direct).await, [(1, 93), (2, 100)]);
}

// ---------------------------------------------------------------------------------------------
// Trait impls: `keep_signature` and `#[async_trait]` keep `tx: &mut PgConnection`; each attempt
// begins on the caller's connection (retried there), or joins the transaction open on it.
// ---------------------------------------------------------------------------------------------

trait Ledger {
    fn add(
        &self,
        tx: &mut PgConnection,
        id: i32,
        amount: i32,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

#[async_trait::async_trait]
trait DynLedger: Send + Sync {
    async fn add_boxed(
        &self,
        tx: &mut PgConnection,
        id: i32,
        amount: i32,
    ) -> Result<(), sqlx::Error>;
}

/// Adds `amount`, then fails its first attempt with a 40001 raised by the server.
struct PgLedger {
    attempts: AtomicU32,
}

impl PgLedger {
    async fn add_then_fail_once(
        &self,
        tx: &mut PgConnection,
        id: i32,
        amount: i32,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE accounts SET balance = balance + $2 WHERE id = $1")
            .bind(id)
            .bind(amount)
            .execute(&mut *tx)
            .await?;
        if self.attempts.fetch_add(1, Ordering::SeqCst) == 0 {
            sqlx::raw_sql("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}

impl Ledger for PgLedger {
    #[serializable_retry(keep_signature, backoff(none))]
    async fn add(&self, tx: &mut PgConnection, id: i32, amount: i32) -> Result<(), sqlx::Error> {
        self.add_then_fail_once(tx, id, amount).await
    }
}

#[async_trait::async_trait]
impl DynLedger for PgLedger {
    #[serializable_retry(backoff(none))]
    async fn add_boxed(
        &self,
        tx: &mut PgConnection,
        id: i32,
        amount: i32,
    ) -> Result<(), sqlx::Error> {
        self.add_then_fail_once(tx, id, amount).await
    }
}

async fn add_generic<L: Ledger>(ledger: &L, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    ledger.add(conn, 1, 10).await
}

#[tokio::test]
async fn trait_impls_begin_and_retry_on_the_callers_connection() {
    let schema = isolated_schema().await;
    let pool = schema.pool(2).await;
    sqlx::raw_sql(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
         INSERT INTO accounts VALUES (1, 100), (2, 100);",
    )
    .execute(&pool)
    .await
    .expect("setup SQL");
    let ledger = PgLedger {
        attempts: AtomicU32::new(0),
    };
    let mut conn = pool.acquire().await.unwrap();

    // Through a generic: the first attempt rolled back, the second committed.
    within(add_generic(&ledger, &mut conn)).await.unwrap();
    assert_eq!(ledger.attempts.load(Ordering::SeqCst), 2);
    assert!(!sqlx::Connection::is_in_transaction(&*conn));
    assert_eq!(balances(&pool).await, [(1, 110), (2, 100)]);

    // Behind `dyn Trait` (`#[async_trait]`): the same.
    ledger.attempts.store(0, Ordering::SeqCst);
    let dyn_ledger: &dyn DynLedger = &ledger;
    within(dyn_ledger.add_boxed(&mut conn, 2, 5)).await.unwrap();
    assert_eq!(ledger.attempts.load(Ordering::SeqCst), 2);
    assert_eq!(balances(&pool).await, [(1, 110), (2, 105)]);

    // Inside the caller's open transaction: joined, one attempt, the 40001 is the caller's.
    ledger.attempts.store(0, Ordering::SeqCst);
    let mut tx = pool.begin().await.unwrap();
    let err = within(ledger.add(&mut tx, 1, 1)).await.unwrap_err();
    assert_eq!(code(&err), "40001");
    assert_eq!(ledger.attempts.load(Ordering::SeqCst), 1);
    tx.rollback().await.unwrap();
    assert_eq!(balances(&pool).await, [(1, 110), (2, 105)]);
}
