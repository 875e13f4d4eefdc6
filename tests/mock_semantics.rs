//! The retry loop's semantics, proven against the mock transaction source through
//! `#[serializable_retry]` (the way users call it) and through the plain `transaction` API.
//!
//! Every test runs on tokio's paused clock, so backoff costs no real time. The attribute's
//! backoff has jitter, so its sleeps are checked against bounds (the script shows them as
//! `sleep *`); exact sleeps are asserted through the plain API with `Backoff::fixed`.
#![cfg(feature = "mock")]

use std::collections::{BTreeMap, HashMap};
use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use sqlx_retry::error::{CommitUnknown, sqlstate};
use sqlx_retry::mock::{Fault, MockDb, MockEvent, MockTx, Phase};
use sqlx_retry::{
    Backoff, ConflictKind, IsolationLevel, Policy, RetryInfo, SqlState, is_commit_unknown,
    serializable_retry,
};
use tokio::time::Instant;

const BEGIN: &str = "BEGIN ISOLATION LEVEL SERIALIZABLE";
const SLEEP: &str = "sleep *";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The recorded script with every sleep line replaced by `sleep *` (jittered delays are random;
/// [`sleeps`] gives the durations for bounds checks).
fn script(db: &MockDb<impl Sized>) -> Vec<String> {
    db.script()
        .into_iter()
        .map(|line| {
            if line.starts_with("sleep ") {
                SLEEP.to_owned()
            } else {
                line
            }
        })
        .collect()
}

/// The recorded sleeps, in order.
fn sleeps(db: &MockDb<impl Sized>) -> Vec<Duration> {
    db.events()
        .into_iter()
        .filter_map(|e| match e {
            MockEvent::Sleep(d) => Some(d),
            _ => None,
        })
        .collect()
}

/// Asserts each sleep is within full jitter's bound: before retry n, `[0, min(cap, base·2ⁿ⁻¹)]`.
fn assert_jittered(db: &MockDb<impl Sized>, base: Duration, cap: Duration) {
    for (i, d) in sleeps(db).into_iter().enumerate() {
        let ceiling = base.saturating_mul(1 << i.min(31)).min(cap);
        assert!(
            d <= ceiling,
            "sleep before retry {} was {d:?} > {ceiling:?}",
            i + 1
        );
    }
}

/// A mock database with `fault` at `phase` of every attempt in `attempts`.
fn failing(attempts: std::ops::RangeInclusive<u32>, phase: Phase, code: &str) -> MockDb<i64> {
    attempts.fold(MockDb::new(0_i64), |db, a| {
        db.fail(a, phase, Fault::sqlstate(code))
    })
}

// ---------------------------------------------------------------------------------------------
// The functions under test.
// ---------------------------------------------------------------------------------------------

/// One statement, one state change.
#[serializable_retry(max = 5, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn bump(tx: &mut MockTx<i64>, by: i64) -> Result<i64, sqlx::Error> {
    tx.execute("bump")?;
    *tx.state_mut() += by;
    Ok(*tx.state())
}

/// `bump` that counts how often its body runs.
#[serializable_retry(max = 5, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn bump_counted(tx: &mut MockTx<i64>, runs: &AtomicU32) -> Result<i64, sqlx::Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    tx.execute("bump")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

#[serializable_retry(max = 3, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn bump3(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    tx.execute("bump")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

#[serializable_retry(max = 2, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn bump2(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    tx.execute("bump")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

#[serializable_retry(max = 1)]
async fn bump_once(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    tx.execute("bump")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

#[serializable_retry(max = 5, retry_on = ["55P03"], backoff(exponential, base = "1ms", cap = "4ms"))]
async fn bump_lock_wait(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    tx.execute("SELECT ... FOR UPDATE")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

#[serializable_retry(max = 5, idempotent, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn bump_idempotent(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    tx.execute("bump")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

#[serializable_retry(
    max = 100,
    budget = "50ms",
    backoff(exponential, base = "40ms", cap = "40ms")
)]
async fn bump_budgeted(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    tx.execute("bump")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

// ---------------------------------------------------------------------------------------------
// 1. 40001 at COMMIT.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn conflict_at_commit_is_retried_without_a_rollback() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
    assert_eq!(bump(&db, 2).await.unwrap(), 2);
    assert_eq!(db.state(), 2, "applied once");
    // No ROLLBACK after the failed COMMIT: the server already ended the transaction.
    assert_eq!(
        script(&db),
        [
            BEGIN,
            "bump",
            "COMMIT -> 40001",
            SLEEP,
            BEGIN,
            "bump",
            "COMMIT"
        ]
    );
    assert_jittered(&db, ms(1), ms(4));
}

// ---------------------------------------------------------------------------------------------
// 2. 40P01 in the body.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn deadlock_in_the_body_rolls_back_and_reruns_the_whole_body() {
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("40P01"));
    let runs = AtomicU32::new(0);
    assert_eq!(bump_counted(&db, &runs).await.unwrap(), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the whole body ran twice");
    assert_eq!(db.state(), 1, "applied once");
    assert_eq!(
        script(&db),
        [
            BEGIN,
            "bump -> 40P01",
            "ROLLBACK",
            SLEEP,
            BEGIN,
            "bump",
            "COMMIT"
        ]
    );
    assert_jittered(&db, ms(1), ms(4));
}

// ---------------------------------------------------------------------------------------------
// 3. Not retried: exactly one attempt.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn permanent_sqlstates_get_exactly_one_attempt() {
    // foreign key, division by zero, syntax error, statement timeout, lock timeout, unique
    // violation, integrity violation at commit, aborted transaction.
    for code in [
        "23503", "22012", "42601", "57014", "55P03", "23505", "40002", "25P02",
    ] {
        // Only attempt 1 fails: a retry would succeed, so one attempt proves there was none.
        let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate(code));
        let err = bump(&db, 1).await.unwrap_err();
        assert_eq!(sqlstate(&err), SqlState::new(code), "{code}: {err}");
        assert_eq!(db.attempts(), 1, "{code}");
        assert_eq!(db.state(), 0, "{code}");
        assert_eq!(
            db.script(),
            [BEGIN, &format!("bump -> {code}"), "ROLLBACK"],
            "{code}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn permanent_sqlstate_at_commit_gets_exactly_one_attempt() {
    // A deferred foreign key checked at COMMIT.
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("23503"));
    let err = bump(&db, 1).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::new("23503").unwrap()));
    assert_eq!(db.script(), [BEGIN, "bump", "COMMIT -> 23503"]);
    assert_eq!(db.state(), 0);
}

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("database error")]
    Db(#[from] sqlx::Error),
}

#[serializable_retry(max = 5, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn refuse_first_attempt(tx: &mut MockTx<i64>) -> Result<i64, AppError> {
    tx.execute("check")?;
    if tx.attempt() == 1 {
        return Err(AppError::InsufficientFunds);
    }
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

#[serializable_retry(max = 5, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn not_found_first_attempt(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    tx.execute("SELECT")?;
    if tx.attempt() == 1 {
        return Err(sqlx::Error::RowNotFound);
    }
    Ok(*tx.state())
}

#[serializable_retry(max = 5, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn anyhow_first_attempt(tx: &mut MockTx<i64>) -> anyhow::Result<i64> {
    tx.execute("check")?;
    if tx.attempt() == 1 {
        anyhow::bail!("business rule violated");
    }
    Ok(*tx.state())
}

#[tokio::test(start_paused = true)]
async fn application_errors_get_exactly_one_attempt() {
    let db = MockDb::new(0_i64);
    let err = refuse_first_attempt(&db).await.unwrap_err();
    assert!(matches!(err, AppError::InsufficientFunds), "{err}");
    assert_eq!(db.script(), [BEGIN, "check", "ROLLBACK"]);
    assert_eq!(db.state(), 0);

    let db = MockDb::new(0_i64);
    let err = not_found_first_attempt(&db).await.unwrap_err();
    assert!(matches!(err, sqlx::Error::RowNotFound), "{err}");
    assert_eq!(db.script(), [BEGIN, "SELECT", "ROLLBACK"]);

    let db = MockDb::new(0_i64);
    let err = anyhow_first_attempt(&db).await.unwrap_err();
    assert_eq!(err.to_string(), "business rule violated");
    assert_eq!(db.script(), [BEGIN, "check", "ROLLBACK"]);
}

#[tokio::test(start_paused = true)]
async fn retry_on_opts_into_lock_timeouts() {
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("55P03"));
    assert_eq!(bump_lock_wait(&db).await.unwrap(), 1);
    assert_eq!(
        script(&db),
        [
            BEGIN,
            "SELECT ... FOR UPDATE -> 55P03",
            "ROLLBACK",
            SLEEP,
            BEGIN,
            "SELECT ... FOR UPDATE",
            "COMMIT"
        ]
    );
    assert_eq!(db.state(), 1);

    // The opt-in adds 55P03; it does not make other codes retryable.
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("57014"));
    let err = bump_lock_wait(&db).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::QUERY_CANCELED));
    assert_eq!(db.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn max_one_means_no_retry() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
    let err = bump_once(&db).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::SERIALIZATION_FAILURE));
    assert_eq!(db.script(), [BEGIN, "bump", "COMMIT -> 40001"]);
}

// ---------------------------------------------------------------------------------------------
// 4. Error types: the SQLSTATE is found through the source chain.
// ---------------------------------------------------------------------------------------------

#[serializable_retry(max = 2, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn with_anyhow(tx: &mut MockTx<i64>) -> anyhow::Result<i64> {
    tx.execute("bump").context("bumping the counter")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

#[serializable_retry(max = 2, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn with_from(tx: &mut MockTx<i64>) -> Result<i64, AppError> {
    tx.execute("bump")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

/// The repository layer's error: wraps `sqlx::Error`.
#[derive(Debug, thiserror::Error)]
enum RepoError {
    #[error("repository failed")]
    Db(#[from] sqlx::Error),
}

/// The service layer's error: wraps the repository's, so `sqlx::Error` is two `source()`s deep.
#[derive(Debug, thiserror::Error)]
enum ServiceError {
    #[error("transfer failed")]
    Repo(#[source] RepoError),
    #[allow(dead_code)]
    #[error("business rule")]
    Rule,
}

impl From<sqlx::Error> for ServiceError {
    fn from(err: sqlx::Error) -> Self {
        ServiceError::Repo(RepoError::Db(err))
    }
}

#[serializable_retry(max = 2, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn with_nested(tx: &mut MockTx<i64>) -> Result<i64, ServiceError> {
    tx.execute("bump")
        .map_err(RepoError::from)
        .map_err(ServiceError::Repo)?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

/// The most common way to wrap `sqlx::Error` in an application enum.
#[derive(Debug, thiserror::Error)]
enum TransparentError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

#[serializable_retry(max = 2, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn with_transparent(tx: &mut MockTx<i64>) -> Result<i64, TransparentError> {
    tx.execute("bump")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

#[serializable_retry(max = 2, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn with_boxed(tx: &mut MockTx<i64>) -> Result<i64, Box<dyn StdError + Send + Sync>> {
    tx.execute("bump")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

/// Checks one error type: a 40001 in the body on attempt 1 is retried; 40001 on both attempts
/// exhausts `max = 2` and the returned error still carries the SQLSTATE.
macro_rules! check_error_type {
    ($f:ident, $as_dyn:expr) => {{
        let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("40001"));
        assert_eq!($f(&db).await.unwrap(), 1, stringify!($f));
        assert_eq!(db.attempts(), 2, stringify!($f));
        assert_eq!(db.state(), 1, stringify!($f));

        let db = failing(1..=2, Phase::Body, "40001");
        let err = $f(&db).await.unwrap_err();
        assert_eq!(db.attempts(), 2, stringify!($f));
        let as_dyn: fn(&_) -> &(dyn StdError + 'static) = $as_dyn;
        assert_eq!(
            sqlstate(as_dyn(&err)),
            Some(SqlState::SERIALIZATION_FAILURE),
            stringify!($f)
        );
    }};
}

#[tokio::test(start_paused = true)]
async fn sqlx_error_is_classified() {
    check_error_type!(bump2, |e: &sqlx::Error| e);
}

#[tokio::test(start_paused = true)]
async fn anyhow_error_with_context_is_classified() {
    check_error_type!(with_anyhow, |e: &anyhow::Error| e.as_ref());
    // The context is kept on the returned error.
    let db = failing(1..=2, Phase::Body, "40001");
    let err = with_anyhow(&db).await.unwrap_err();
    assert_eq!(err.to_string(), "bumping the counter");
}

#[tokio::test(start_paused = true)]
async fn thiserror_from_is_classified() {
    check_error_type!(with_from, |e: &AppError| e);
}

#[tokio::test(start_paused = true)]
async fn thiserror_two_levels_deep_is_classified() {
    check_error_type!(with_nested, |e: &ServiceError| e);
    let db = failing(1..=2, Phase::Body, "40001");
    assert!(matches!(
        with_nested(&db).await.unwrap_err(),
        ServiceError::Repo(RepoError::Db(_))
    ));
}

#[tokio::test(start_paused = true)]
#[allow(clippy::borrowed_box)] // the body's error type is the box itself
async fn boxed_dyn_error_is_classified() {
    check_error_type!(with_boxed, |e: &Box<dyn StdError + Send + Sync>| &**e);
}

/// BUG (retry-core/src/classify.rs, `find_sqlx_error`): `#[error(transparent)]` forwards
/// `source()` to the wrapped `sqlx::Error`'s own source, the `Box<dyn DatabaseError>`, so the
/// chain never contains a `sqlx::Error` and a 40001 is classified `Permanent`.
#[tokio::test(start_paused = true)]
async fn thiserror_transparent_is_classified() {
    check_error_type!(with_transparent, |e: &TransparentError| e);
}

// ---------------------------------------------------------------------------------------------
// 5. Exhaustion.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn exhaustion_returns_the_last_conflict_after_max_attempts() {
    let db = failing(1..=3, Phase::Commit, "40001");
    let err = bump3(&db).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::SERIALIZATION_FAILURE));
    assert_eq!(db.attempts(), 3);
    assert_eq!(db.state(), 0);
    assert_eq!(
        script(&db),
        [
            BEGIN,
            "bump",
            "COMMIT -> 40001",
            SLEEP,
            BEGIN,
            "bump",
            "COMMIT -> 40001",
            SLEEP,
            BEGIN,
            "bump",
            "COMMIT -> 40001",
        ]
    );
    assert_jittered(&db, ms(1), ms(4));
}

#[tokio::test(start_paused = true)]
async fn exhaustion_returns_the_last_error_not_the_first() {
    // 40P01, then 40001: the caller sees the last one.
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Body, Fault::sqlstate("40P01"))
        .fail(2, Phase::Body, Fault::sqlstate("40001"));
    let err = bump2(&db).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::SERIALIZATION_FAILURE));
}

// ---------------------------------------------------------------------------------------------
// 6. Time budget.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn time_budget_stops_early_within_the_budget() {
    // Jitter makes each run different: check many.
    for run in 0..200 {
        let db = failing(1..=100, Phase::Commit, "40001");
        let started = Instant::now();
        let err = bump_budgeted(&db).await.unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(
            sqlstate(&err),
            Some(SqlState::SERIALIZATION_FAILURE),
            "run {run}"
        );
        let attempts = db.attempts();
        // The first delay is at most 40ms < 50ms, so there is always a second attempt; the
        // budget ends the call long before `max = 100`.
        assert!(
            (2..100).contains(&attempts),
            "run {run}: {attempts} attempts"
        );
        assert!(elapsed <= ms(50), "run {run}: {elapsed:?}");
        let slept: Duration = sleeps(&db).iter().sum();
        assert!(
            slept <= elapsed,
            "run {run}: slept {slept:?} in {elapsed:?}"
        );
        assert_eq!(sleeps(&db).len() as u32, attempts - 1, "run {run}");
        assert_jittered(&db, ms(40), ms(40));
    }
}

#[tokio::test(start_paused = true)]
async fn time_budget_is_exact_with_a_fixed_backoff() {
    // 0ms: attempt 1; 20ms: attempt 2; 40ms: attempt 3; a third sleep would end at 60ms > 50ms.
    let policy = Policy::builder()
        .max_attempts(100)
        .budget(ms(50))
        .backoff(Backoff::fixed(ms(20)))
        .build()
        .unwrap();
    let db = failing(1..=100, Phase::Commit, "40001");
    let started = Instant::now();
    let err = sqlx_retry::transaction(&db, &policy, |tx| {
        Box::pin(async move {
            tx.execute("bump")?;
            Ok::<_, sqlx::Error>(())
        })
    })
    .await
    .unwrap_err();
    assert_eq!(started.elapsed(), ms(40));
    assert_eq!(sqlstate(&err), Some(SqlState::SERIALIZATION_FAILURE));
    assert_eq!(db.attempts(), 3);
    assert_eq!(sleeps(&db), [ms(20), ms(20)]);
}

#[tokio::test(start_paused = true)]
async fn time_budget_counts_the_timer_rounding_sleeps_up() {
    // tokio's timer fires on whole milliseconds: each 1.3 ms sleep lasts until the next tick.
    // At 8 ms a fifth sleep would be asked to end at 9.3 ms, inside the 9.5 ms budget, but would
    // really end at 10 ms; so the call gives up at 8 ms instead.
    let policy = Policy::builder()
        .max_attempts(100)
        .budget(Duration::from_micros(9_500))
        .backoff(Backoff::fixed(Duration::from_micros(1_300)))
        .build()
        .unwrap();
    let db = failing(1..=100, Phase::Commit, "40001");
    let started = Instant::now();
    sqlx_retry::transaction(&db, &policy, |tx| {
        Box::pin(async move {
            tx.execute("bump")?;
            Ok::<_, sqlx::Error>(())
        })
    })
    .await
    .unwrap_err();
    assert!(
        started.elapsed() <= Duration::from_micros(9_500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(db.attempts(), 5);
}

// ---------------------------------------------------------------------------------------------
// 7. Connection lost in the body.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn connection_lost_in_the_body_is_retried_on_a_pool() {
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::ConnectionLost);
    assert_eq!(bump(&db, 1).await.unwrap(), 1);
    assert_eq!(db.state(), 1, "applied once");
    assert_eq!(
        script(&db),
        [
            BEGIN,
            "bump -> connection lost",
            "ROLLBACK -> connection lost",
            SLEEP,
            BEGIN,
            "bump",
            "COMMIT"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn connection_lost_in_the_body_is_final_on_a_single_connection() {
    let db = MockDb::new(0_i64)
        .single_connection()
        .fail(1, Phase::Body, Fault::ConnectionLost);
    let err = bump(&db, 1).await.unwrap_err();
    assert!(matches!(err, sqlx::Error::Io(_)), "{err}");
    assert_eq!(db.state(), 0);
    assert_eq!(
        db.script(),
        [
            BEGIN,
            "bump -> connection lost",
            "ROLLBACK -> connection lost"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn backend_terminated_is_a_lost_connection() {
    // 57P01 admin_shutdown: retried on a pool, final on a single connection.
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("57P01"));
    assert_eq!(bump(&db, 1).await.unwrap(), 1);
    assert_eq!(db.attempts(), 2);

    let db = MockDb::new(0_i64)
        .single_connection()
        .fail(1, Phase::Body, Fault::sqlstate("57P01"));
    let err = bump(&db, 1).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::ADMIN_SHUTDOWN));
    assert_eq!(db.attempts(), 1);
}

// ---------------------------------------------------------------------------------------------
// 8. COMMIT outcome unknown.
// ---------------------------------------------------------------------------------------------

fn assert_commit_unknown(err: &sqlx::Error) {
    assert!(is_commit_unknown(err), "{err}");
    assert_eq!(
        sqlstate(err),
        Some(SqlState::STATEMENT_COMPLETION_UNKNOWN),
        "{err}"
    );
    // The I/O error that broke the connection is kept as the `CommitUnknown`'s cause.
    let unknown = err
        .as_database_error()
        .and_then(|db| db.try_downcast_ref::<CommitUnknown>())
        .expect("a CommitUnknown");
    assert!(
        matches!(unknown.cause(), sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionReset),
        "{err}"
    );
}

/// BUG (retry-core/src/classify.rs, doc of `is_commit_unknown`, and README): "its `source()` is
/// the I/O error". It is not reachable by walking `source()` from the returned `sqlx::Error`:
/// `sqlx::Error::Database`'s source is the `Box<dyn DatabaseError>`, whose `Error` impl (in sqlx)
/// has no source, so the chain ends before `CommitUnknown`'s cause.
#[tokio::test(start_paused = true)]
async fn commit_unknown_cause_is_the_io_error() {
    // sqlx's `Box<dyn DatabaseError>` does not forward `source()`, so the cause is reached
    // through `find_commit_unknown`, as documented.
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::ConnectionLost);
    let err = bump(&db, 1).await.unwrap_err();
    assert!(is_commit_unknown(&err));
    let cause = sqlx_retry::error::find_commit_unknown(&err).map(|c| c.cause());
    match cause {
        Some(sqlx::Error::Io(io)) => assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset),
        other => panic!("expected the I/O error as the cause, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn commit_reply_lost_returns_commit_unknown_after_one_attempt() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::CommitReplyLost);
    let err = bump(&db, 1).await.unwrap_err();
    assert_commit_unknown(&err);
    assert_eq!(db.attempts(), 1);
    assert_eq!(db.state(), 1, "the commit landed: applied exactly once");
    assert_eq!(
        db.script(),
        [BEGIN, "bump", "COMMIT -> committed, reply lost"]
    );
}

#[tokio::test(start_paused = true)]
async fn connection_lost_at_commit_returns_commit_unknown_after_one_attempt() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::ConnectionLost);
    let err = bump(&db, 1).await.unwrap_err();
    assert_commit_unknown(&err);
    assert_eq!(db.attempts(), 1);
    assert_eq!(db.state(), 0, "the commit did not land");
    assert_eq!(db.script(), [BEGIN, "bump", "COMMIT -> connection lost"]);
}

#[tokio::test(start_paused = true)]
async fn idempotent_retries_a_commit_whose_connection_broke() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::ConnectionLost);
    assert_eq!(bump_idempotent(&db).await.unwrap(), 1);
    assert_eq!(db.state(), 1, "applied once");
    assert_eq!(
        script(&db),
        [
            BEGIN,
            "bump",
            "COMMIT -> connection lost",
            SLEEP,
            BEGIN,
            "bump",
            "COMMIT"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_sent_40003_at_commit_is_commit_unknown_after_one_attempt() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40003"));
    let err = bump(&db, 1).await.unwrap_err();
    assert!(is_commit_unknown(&err), "{err}");
    let cause = sqlx_retry::error::find_commit_unknown(&err).map(|c| sqlstate(c.cause()));
    assert_eq!(cause, Some(Some(SqlState::STATEMENT_COMPLETION_UNKNOWN)));
    assert_eq!(db.attempts(), 1);
    assert_eq!(db.script(), [BEGIN, "bump", "COMMIT -> 40003"]);
}

#[tokio::test(start_paused = true)]
async fn idempotent_retries_a_server_sent_40003_at_commit() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40003"));
    assert_eq!(bump_idempotent(&db).await.unwrap(), 1);
    assert_eq!(
        script(&db),
        [
            BEGIN,
            "bump",
            "COMMIT -> 40003",
            SLEEP,
            BEGIN,
            "bump",
            "COMMIT"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_40003_in_the_body_is_an_ordinary_error_even_when_idempotent() {
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("40003"));
    let err = bump_idempotent(&db).await.unwrap_err();
    assert!(!is_commit_unknown(&err), "{err}");
    assert_eq!(sqlstate(&err), Some(SqlState::STATEMENT_COMPLETION_UNKNOWN));
    assert_eq!(db.attempts(), 1);
    assert_eq!(db.state(), 0);
}

#[tokio::test(start_paused = true)]
async fn idempotent_means_the_transaction_may_be_applied_twice() {
    // The documented meaning of `idempotent`: when the first COMMIT landed but its reply was
    // lost, the retry applies the transaction again. Only for transactions safe to apply twice.
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::CommitReplyLost);
    assert_eq!(bump_idempotent(&db).await.unwrap(), 2);
    assert_eq!(db.state(), 2, "applied twice");
    assert_eq!(
        script(&db),
        [
            BEGIN,
            "bump",
            "COMMIT -> committed, reply lost",
            SLEEP,
            BEGIN,
            "bump",
            "COMMIT"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn idempotent_cannot_retry_on_a_single_connection() {
    let db = MockDb::new(0_i64)
        .single_connection()
        .fail(1, Phase::Commit, Fault::ConnectionLost);
    let err = bump_idempotent(&db).await.unwrap_err();
    assert_commit_unknown(&err);
    assert_eq!(db.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn commit_unknown_survives_a_wrapping_error_type() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::CommitReplyLost);
    let err = with_nested(&db).await.unwrap_err();
    assert!(is_commit_unknown(&err), "{err}");
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::CommitReplyLost);
    let err = with_anyhow(&db).await.unwrap_err();
    assert!(is_commit_unknown(err.as_ref()), "{err}");
}

// ---------------------------------------------------------------------------------------------
// 9. A failed ROLLBACK never replaces the original error.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn failed_rollback_keeps_the_original_error() {
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Body, Fault::sqlstate("23505"))
        .fail(1, Phase::Rollback, Fault::ConnectionLost);
    let err = bump(&db, 1).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::UNIQUE_VIOLATION), "{err}");
    assert_eq!(
        db.script(),
        [BEGIN, "bump -> 23505", "ROLLBACK -> connection lost"]
    );

    let db = MockDb::new(0_i64)
        .fail(1, Phase::Body, Fault::sqlstate("23505"))
        .fail(1, Phase::Rollback, Fault::sqlstate("08006"));
    let err = bump(&db, 1).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::UNIQUE_VIOLATION), "{err}");
    assert_eq!(db.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn failed_rollback_after_a_conflict_is_still_retried() {
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Body, Fault::sqlstate("40001"))
        .fail(1, Phase::Rollback, Fault::ConnectionLost);
    assert_eq!(bump(&db, 1).await.unwrap(), 1);
    assert_eq!(db.state(), 1);
    assert_eq!(
        script(&db),
        [
            BEGIN,
            "bump -> 40001",
            "ROLLBACK -> connection lost",
            SLEEP,
            BEGIN,
            "bump",
            "COMMIT"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// 10. BEGIN failures.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn connection_lost_at_begin_is_retried_and_counts_as_an_attempt() {
    let db = MockDb::new(0_i64).fail(1, Phase::Begin, Fault::ConnectionLost);
    assert_eq!(bump(&db, 1).await.unwrap(), 1);
    assert_eq!(
        script(&db),
        [
            &format!("{BEGIN} -> connection lost"),
            SLEEP,
            BEGIN,
            "bump",
            "COMMIT"
        ]
    );

    // With `max = 2`, the failed BEGIN uses up attempt 1: a conflict on attempt 2 is final.
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Begin, Fault::ConnectionLost)
        .fail(2, Phase::Commit, Fault::sqlstate("40001"));
    let err = bump2(&db).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::SERIALIZATION_FAILURE));
    assert_eq!(db.attempts(), 2);
    assert_eq!(
        script(&db),
        [
            &format!("{BEGIN} -> connection lost"),
            SLEEP,
            BEGIN,
            "bump",
            "COMMIT -> 40001"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_begin_failure_is_returned() {
    let db = MockDb::new(0_i64).fail(1, Phase::Begin, Fault::sqlstate("42501"));
    let err = bump(&db, 1).await.unwrap_err();
    assert_eq!(sqlstate(&err), SqlState::new("42501"));
    assert_eq!(db.attempts(), 1);
    assert_eq!(db.script(), [format!("{BEGIN} -> 42501")]);

    let db = MockDb::new(0_i64)
        .single_connection()
        .fail(1, Phase::Begin, Fault::ConnectionLost);
    let err = bump(&db, 1).await.unwrap_err();
    assert!(matches!(err, sqlx::Error::Io(_)), "{err}");
    assert_eq!(db.attempts(), 1);

    // Through a wrapping error type too.
    let db = MockDb::new(0_i64).fail(1, Phase::Begin, Fault::sqlstate("42501"));
    let err = with_nested(&db).await.unwrap_err();
    assert_eq!(sqlstate(&err), SqlState::new("42501"));
}

// ---------------------------------------------------------------------------------------------
// 11. BEGIN statements.
// ---------------------------------------------------------------------------------------------

async fn read(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    tx.execute("read")?;
    Ok(*tx.state())
}

#[serializable_retry]
async fn default_tx(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    read(tx).await
}

#[serializable_retry(read_only)]
async fn read_only_tx(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    read(tx).await
}

#[serializable_retry(read_only, deferrable)]
async fn deferrable_tx(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    read(tx).await
}

#[serializable_retry(isolation = "serializable", read_only, deferrable)]
async fn explicit_deferrable_tx(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    read(tx).await
}

#[serializable_retry(
    isolation = "repeatable_read",
    backoff(exponential, base = "1ms", cap = "4ms")
)]
async fn repeatable_read_tx(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    read(tx).await
}

#[serializable_retry(isolation = "repeatable_read", read_only)]
async fn repeatable_read_only_tx(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    read(tx).await
}

#[serializable_retry(isolation = "read_committed")]
async fn read_committed_tx(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    read(tx).await
}

#[serializable_retry(isolation = "read_committed", read_only)]
async fn read_committed_read_only_tx(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    read(tx).await
}

#[tokio::test(start_paused = true)]
async fn begin_statements() {
    macro_rules! begins_with {
        ($f:ident, $stmt:expr) => {{
            let db = MockDb::new(0_i64);
            $f(&db).await.unwrap();
            assert_eq!(db.script(), [$stmt, "read", "COMMIT"], stringify!($f));
        }};
    }
    begins_with!(default_tx, "BEGIN ISOLATION LEVEL SERIALIZABLE");
    begins_with!(read_only_tx, "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY");
    begins_with!(
        deferrable_tx,
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE"
    );
    begins_with!(
        explicit_deferrable_tx,
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE"
    );
    begins_with!(repeatable_read_tx, "BEGIN ISOLATION LEVEL REPEATABLE READ");
    begins_with!(
        repeatable_read_only_tx,
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    );
    begins_with!(read_committed_tx, "BEGIN ISOLATION LEVEL READ COMMITTED");
    begins_with!(
        read_committed_read_only_tx,
        "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY"
    );
}

#[tokio::test(start_paused = true)]
async fn every_attempt_begins_with_the_same_statement() {
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("40001"));
    repeatable_read_tx(&db).await.unwrap();
    assert_eq!(
        script(&db),
        [
            "BEGIN ISOLATION LEVEL REPEATABLE READ",
            "read -> 40001",
            "ROLLBACK",
            SLEEP,
            "BEGIN ISOLATION LEVEL REPEATABLE READ",
            "read",
            "COMMIT"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn plain_api_begin_statements() {
    let policy = Policy::builder()
        .isolation(IsolationLevel::RepeatableRead)
        .read_only(true)
        .build()
        .unwrap();
    let db = MockDb::new(0_i64);
    sqlx_retry::transaction(&db, &policy, |tx| Box::pin(read(tx)))
        .await
        .unwrap();
    assert_eq!(
        db.script(),
        [
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            "read",
            "COMMIT"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// 12. `return` and `?` end the attempt, not the loop.
// ---------------------------------------------------------------------------------------------

#[serializable_retry(max = 3, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn two_steps(tx: &mut MockTx<i64>, stop_early: bool) -> Result<&'static str, sqlx::Error> {
    tx.execute("first")?;
    *tx.state_mut() += 1;
    if stop_early {
        return Ok("early");
    }
    tx.execute("second")?;
    *tx.state_mut() += 10;
    Ok("full")
}

#[tokio::test(start_paused = true)]
async fn early_return_commits_the_attempt() {
    let db = MockDb::new(0_i64);
    assert_eq!(two_steps(&db, true).await.unwrap(), "early");
    assert_eq!(db.script(), [BEGIN, "first", "COMMIT"]);
    assert_eq!(db.state(), 1);
}

#[tokio::test(start_paused = true)]
async fn question_mark_on_a_conflict_retries() {
    let db = MockDb::new(0_i64).fail(1, Phase::Statement(2), Fault::sqlstate("40001"));
    assert_eq!(two_steps(&db, false).await.unwrap(), "full");
    assert_eq!(
        script(&db),
        [
            BEGIN,
            "first",
            "second -> 40001",
            "ROLLBACK",
            SLEEP,
            BEGIN,
            "first",
            "second",
            "COMMIT"
        ]
    );
    assert_eq!(db.state(), 11, "the partial first attempt was rolled back");
}

// ---------------------------------------------------------------------------------------------
// 13. tracing.
// ---------------------------------------------------------------------------------------------

/// An event as the capturing subscriber saw it.
#[derive(Debug, Clone)]
struct SeenEvent {
    level: tracing::Level,
    /// The innermost entered span's name.
    span: Option<&'static str>,
    fields: BTreeMap<&'static str, String>,
}

#[derive(Default)]
struct Seen {
    spans: Vec<&'static str>,
    events: Vec<SeenEvent>,
}

/// A minimal subscriber that records span names and event fields.
struct Capture {
    seen: Arc<Mutex<Seen>>,
    next_id: AtomicU64,
    names: Mutex<HashMap<u64, &'static str>>,
    stack: Mutex<Vec<u64>>,
}

impl Capture {
    fn new() -> (Self, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let capture = Capture {
            seen: Arc::clone(&seen),
            next_id: AtomicU64::new(1),
            names: Mutex::new(HashMap::new()),
            stack: Mutex::new(Vec::new()),
        };
        (capture, seen)
    }
}

struct Fields(BTreeMap<&'static str, String>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name(), value.to_string());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name(), value.to_string());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name(), value.to_string());
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let name = span.metadata().name();
        self.names.lock().unwrap().insert(id, name);
        self.seen.lock().unwrap().spans.push(name);
        tracing::span::Id::from_u64(id)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(BTreeMap::new());
        event.record(&mut fields);
        let span = self
            .stack
            .lock()
            .unwrap()
            .last()
            .and_then(|id| self.names.lock().unwrap().get(id).copied());
        self.seen.lock().unwrap().events.push(SeenEvent {
            level: *event.metadata().level(),
            span,
            fields: fields.0,
        });
    }

    fn enter(&self, span: &tracing::span::Id) {
        self.stack.lock().unwrap().push(span.into_u64());
    }

    fn exit(&self, span: &tracing::span::Id) {
        let mut stack = self.stack.lock().unwrap();
        if let Some(i) = stack.iter().rposition(|id| *id == span.into_u64()) {
            stack.remove(i);
        }
    }
}

/// Installs `capture` as this thread's subscriber.
///
/// tracing caches per callsite whether any subscriber is interested. While at most one
/// dispatcher exists, a callsite first hit on *another* test's thread (no subscriber) caches
/// "never", and this test's subscriber would see nothing. Two dispatchers that stay alive for
/// the whole run and answer "sometimes" make every callsite ask the current subscriber each time.
fn install(capture: Capture) -> tracing::subscriber::DefaultGuard {
    struct Keeper;
    impl tracing::Subscriber for Keeper {
        fn register_callsite(
            &self,
            _: &'static tracing::Metadata<'static>,
        ) -> tracing::subscriber::Interest {
            tracing::subscriber::Interest::sometimes()
        }
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            false
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, _: &tracing::Event<'_>) {}
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }
    static KEEPERS: std::sync::OnceLock<[tracing::Dispatch; 2]> = std::sync::OnceLock::new();
    KEEPERS.get_or_init(|| {
        [
            tracing::Dispatch::new(Keeper),
            tracing::Dispatch::new(Keeper),
        ]
    });
    let guard = tracing::subscriber::set_default(capture);
    tracing::callsite::rebuild_interest_cache();
    guard
}

fn retry_events(seen: &Seen) -> Vec<SeenEvent> {
    seen.events
        .iter()
        .filter(|e| e.fields.contains_key("delay_ms"))
        .cloned()
        .collect()
}

#[tokio::test(start_paused = true)]
async fn tracing_span_and_one_event_per_retry() {
    let (capture, seen) = Capture::new();
    let _guard = install(capture);

    let db = MockDb::new(0_i64)
        .fail(1, Phase::Commit, Fault::sqlstate("40001"))
        .fail(2, Phase::Body, Fault::sqlstate("40P01"));
    assert_eq!(bump(&db, 1).await.unwrap(), 1);

    let seen = seen.lock().unwrap();
    assert!(seen.spans.contains(&"bump"), "spans: {:?}", seen.spans);
    let retries = retry_events(&seen);
    assert_eq!(retries.len(), 2, "{retries:#?}");
    let slept = sleeps(&db);
    // A simulated 40001 names no source file, so it is `other`; a 40P01 is a deadlock anywhere.
    let expected = [("40001", "other"), ("40P01", "deadlock")];
    for (i, (event, (code, kind))) in retries.iter().zip(expected).enumerate() {
        assert_eq!(event.span, Some("bump"), "{event:?}");
        assert_eq!(event.fields["attempt"], (i + 1).to_string(), "{event:?}");
        assert_eq!(event.fields["sqlstate"], code, "{event:?}");
        assert_eq!(event.fields["conflict"], kind, "{event:?}");
        let delay_ms: f64 = event.fields["delay_ms"].parse().unwrap();
        assert_eq!(delay_ms, slept[i].as_secs_f64() * 1e3, "{event:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn tracing_reports_giving_up() {
    let (capture, seen) = Capture::new();
    let _guard = install(capture);

    let db = failing(1..=3, Phase::Commit, "40001");
    bump3(&db).await.unwrap_err();

    let seen = seen.lock().unwrap();
    assert_eq!(retry_events(&seen).len(), 2);
    let gave_up: Vec<_> = seen
        .events
        .iter()
        .filter(|e| {
            e.fields
                .get("message")
                .is_some_and(|m| m.contains("giving up"))
        })
        .collect();
    assert_eq!(gave_up.len(), 1, "{:#?}", seen.events);
    assert_eq!(gave_up[0].level, tracing::Level::WARN);
    assert_eq!(gave_up[0].fields["attempts"], "3");
    assert_eq!(gave_up[0].fields["sqlstate"], "40001");
    assert_eq!(gave_up[0].span, Some("bump3"));
}

// ---------------------------------------------------------------------------------------------
// 14. The plain API.
// ---------------------------------------------------------------------------------------------

/// The hook is told a conflict kind only for conflicts: a retried lost connection (`57P01`,
/// backend terminated) is not one, even though its error carries a SQLSTATE.
#[tokio::test(start_paused = true)]
async fn on_retry_hook_gets_a_conflict_kind_only_for_conflicts() {
    type Seen = Vec<(String, Option<ConflictKind>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let policy = Policy::builder()
        .backoff(Backoff::fixed(ms(1)))
        .on_retry({
            let seen = Arc::clone(&seen);
            move |info| {
                let code = info.sqlstate.map(|c| c.to_string()).unwrap_or_default();
                seen.lock().unwrap().push((code, info.conflict));
            }
        })
        .build()
        .unwrap();
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Begin, Fault::sqlstate("57P01"))
        .fail(2, Phase::Body, Fault::sqlstate("40P01"));
    sqlx_retry::transaction(&db, &policy, |tx| {
        Box::pin(async move { tx.execute("bump") })
    })
    .await
    .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (String::new(), None),
            ("40P01".to_owned(), Some(ConflictKind::Deadlock)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn plain_api_exact_script_and_on_retry_hook() {
    let calls: Arc<Mutex<Vec<(RetryInfo, Instant)>>> = Arc::default();
    let policy = Policy::builder()
        .max_attempts(4)
        .backoff(Backoff::fixed(ms(5)))
        .on_retry({
            let calls = Arc::clone(&calls);
            move |info| calls.lock().unwrap().push((info.clone(), Instant::now()))
        })
        .build()
        .unwrap();
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Commit, Fault::sqlstate("40001"))
        .fail(2, Phase::Body, Fault::sqlstate("40P01"));
    let started = Instant::now();
    let runs = AtomicU32::new(0);
    let runs = &runs;
    let n = sqlx_retry::transaction(&db, &policy, |tx| {
        runs.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tx.execute("bump")?;
            *tx.state_mut() += 1;
            Ok::<_, sqlx::Error>(*tx.state())
        })
    })
    .await
    .unwrap();
    assert_eq!(n, 1);
    assert_eq!(db.state(), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(
        db.script(),
        [
            BEGIN,
            "bump",
            "COMMIT -> 40001",
            "sleep 5ms",
            BEGIN,
            "bump -> 40P01",
            "ROLLBACK",
            "sleep 5ms",
            BEGIN,
            "bump",
            "COMMIT",
        ]
    );
    assert_eq!(started.elapsed(), ms(10));

    let calls = calls.lock().unwrap();
    let got: Vec<_> = calls
        .iter()
        .map(|(info, at)| {
            (
                info.name,
                info.attempt,
                info.sqlstate,
                info.delay,
                *at - started,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            // Called before the sleep: the first at 0ms, the second after one 5ms sleep.
            (
                "transaction",
                1,
                Some(SqlState::SERIALIZATION_FAILURE),
                ms(5),
                ms(0)
            ),
            (
                "transaction",
                2,
                Some(SqlState::DEADLOCK_DETECTED),
                ms(5),
                ms(5)
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn plain_api_exhaustion_is_exact() {
    let policy = Policy::builder()
        .max_attempts(3)
        .backoff(Backoff::fixed(ms(5)))
        .build()
        .unwrap();
    let db = failing(1..=3, Phase::Body, "40001");
    let err = sqlx_retry::transaction(&db, &policy, |tx| {
        Box::pin(async move {
            tx.execute("bump")?;
            Ok::<_, sqlx::Error>(())
        })
    })
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::SERIALIZATION_FAILURE));
    assert_eq!(
        db.script(),
        [
            BEGIN,
            "bump -> 40001",
            "ROLLBACK",
            "sleep 5ms",
            BEGIN,
            "bump -> 40001",
            "ROLLBACK",
            "sleep 5ms",
            BEGIN,
            "bump -> 40001",
            "ROLLBACK",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn plain_api_custom_backoff_that_ends_stops_retrying() {
    let policy = Policy::builder()
        .max_attempts(10)
        .backoff(Backoff::from_fn(|| [ms(1), ms(2)].into_iter()))
        .build()
        .unwrap();
    let db = failing(1..=10, Phase::Commit, "40001");
    let err = sqlx_retry::transaction(&db, &policy, |tx| {
        Box::pin(async move {
            tx.execute("bump")?;
            Ok::<_, sqlx::Error>(())
        })
    })
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::SERIALIZATION_FAILURE));
    assert_eq!(db.attempts(), 3);
    assert_eq!(sleeps(&db), [ms(1), ms(2)]);
}

#[tokio::test(start_paused = true)]
async fn plain_api_transaction_with_anyhow() {
    let policy = Policy::builder()
        .backoff(Backoff::fixed(ms(1)))
        .build()
        .unwrap();
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("40001"));
    let n = sqlx_retry::transaction_with(
        &db,
        &policy,
        |e: &anyhow::Error| Some(e.as_ref()),
        |tx| {
            Box::pin(async move {
                tx.execute("bump").context("bump")?;
                *tx.state_mut() += 1;
                Ok::<_, anyhow::Error>(*tx.state())
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    assert_eq!(db.attempts(), 2);
}

// ---------------------------------------------------------------------------------------------
// 15. The returned future is Send.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_future_is_send_and_spawnable() {
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Commit, Fault::sqlstate("40001"))
        .fail(2, Phase::Body, Fault::ConnectionLost);
    let handle = tokio::spawn({
        let db = db.clone();
        async move { bump(&db, 3).await }
    });
    assert_eq!(handle.await.unwrap().unwrap(), 3);
    assert_eq!(db.state(), 3);
    assert_eq!(db.attempts(), 3);

    // A wrapping error type and a generic helper in the body are Send too. (One task at a time:
    // the mock does not isolate concurrent transactions, see
    // `mock_detects_concurrent_write_conflicts`.)
    for _ in 0..4 {
        let db = db.clone();
        tokio::spawn(async move { with_nested(&db).await })
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(db.state(), 3 + 4);
}

// ---------------------------------------------------------------------------------------------
// Cancellation and mock fidelity.
// ---------------------------------------------------------------------------------------------

#[serializable_retry(max = 3)]
async fn slow_bump(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    tx.execute("bump")?;
    *tx.state_mut() += 1;
    tokio::time::sleep(ms(100)).await;
    Ok(*tx.state())
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_discards_the_attempt() {
    let db = MockDb::new(0_i64);
    let timed_out = tokio::time::timeout(ms(10), slow_bump(&db)).await;
    assert!(timed_out.is_err());
    assert_eq!(db.state(), 0, "the open transaction was not committed");
    assert_eq!(db.script(), [BEGIN, "bump"]);
}

/// Swallows the error of its first statement, as code that "tries an INSERT and falls back to
/// an UPDATE" without a savepoint does.
#[serializable_retry(max = 3, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn swallow_first_error(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    let _ignored = tx.execute("INSERT");
    tx.execute("UPDATE")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

/// BUG (retry-core/src/mock.rs, `MockTx::execute` / `commit`): `Fault::Sqlstate` is documented
/// as "the transaction is rolled back by the server", and in PostgreSQL any error aborts the
/// transaction: later statements fail with `25P02` (in_failed_sql_transaction) and COMMIT
/// rolls back. The mock keeps executing statements and COMMIT applies the working state, so a
/// body that swallows a database error passes against the mock and loses its write against
/// PostgreSQL.
#[tokio::test(start_paused = true)]
async fn mock_aborts_the_transaction_after_a_failed_statement() {
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("23505"));
    let result = swallow_first_error(&db).await;
    assert_eq!(db.state(), 0, "script: {:?}", db.script());
    let err = result.unwrap_err();
    assert_eq!(sqlstate(&err), SqlState::new("25P02"), "{err}");
}

/// BUG (retry-core/src/mock.rs, `MockTx::execute` / `commit`): after `Fault::ConnectionLost`
/// the mock marks the transaction broken but only ROLLBACK looks at that: later statements
/// succeed and COMMIT applies the state on a connection that is gone.
#[tokio::test(start_paused = true)]
async fn mock_fails_every_statement_after_the_connection_is_lost() {
    let db = MockDb::new(0_i64)
        .single_connection()
        .fail(1, Phase::Body, Fault::ConnectionLost);
    let result = swallow_first_error(&db).await;
    assert_eq!(db.state(), 0, "script: {:?}", db.script());
    let err = result.unwrap_err();
    assert!(matches!(err, sqlx::Error::Io(_)), "{err}");
}

/// Reads, yields to other tasks, then writes what it read plus one.
#[serializable_retry(max = 5, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn bump_yielding(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    tx.execute("read")?;
    let seen = *tx.state();
    tokio::task::yield_now().await;
    tx.execute("write")?;
    *tx.state_mut() = seen + 1;
    Ok(seen + 1)
}

/// BUG (retry-core/src/mock.rs, `OpenTransaction::commit for MockTx`): COMMIT writes the
/// transaction's copy back unconditionally, so two interleaved transactions lose an update
/// (last committer wins). Under SERIALIZABLE, PostgreSQL aborts one of them with `40001` and the
/// retry produces 2. The mock silently produces 1.
#[tokio::test(start_paused = true)]
async fn mock_detects_concurrent_write_conflicts() {
    let db = MockDb::new(0_i64);
    let (a, b) = tokio::join!(bump_yielding(&db), bump_yielding(&db));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(db.state(), 2, "lost update; script: {:?}", db.script());
    assert_eq!(a.max(b), 2);
}

/// `Backoff::none()` retries at once. tokio's timer rounds every deadline up to its next
/// millisecond tick, so even a zero-length `tokio::time::sleep` would wait about a millisecond
/// per retry. On the mock every step is ready at once, so a call that never touches the timer
/// finishes on its first poll.
#[tokio::test]
async fn no_backoff_retries_without_waiting_for_the_timer() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    let policy = Policy::builder()
        .max_attempts(4)
        .backoff(Backoff::none())
        .build()
        .unwrap();
    let db = failing(1..=3, Phase::Body, "40001");
    let call = sqlx_retry::transaction(&db, &policy, |tx| {
        Box::pin(async move {
            tx.execute("bump")?;
            Ok::<_, sqlx::Error>(())
        })
    });
    let polled = std::pin::pin!(call).poll(&mut Context::from_waker(Waker::noop()));
    assert!(
        matches!(polled, Poll::Ready(Ok(()))),
        "the call waited: {polled:?}"
    );
    assert_eq!(sleeps(&db), [Duration::ZERO; 3]);
}

// ---------------------------------------------------------------------------------------------
// `&mut` arguments across attempts: restored to their value from before the call when an
// attempt is retried, as the database's rows are; `#[keep]` opts out (accumulators).
// ---------------------------------------------------------------------------------------------

#[serializable_retry(max = 3, backoff(none))]
async fn push_one_two(tx: &mut MockTx<i64>, out: &mut Vec<i64>) -> Result<(), sqlx::Error> {
    out.push(1);
    tx.execute("step")?;
    out.push(2);
    Ok(())
}

#[serializable_retry(max = 3, backoff(none))]
async fn push_one_two_kept(
    tx: &mut MockTx<i64>,
    #[keep] out: &mut Vec<i64>,
) -> Result<(), sqlx::Error> {
    out.push(1);
    tx.execute("step")?;
    out.push(2);
    Ok(())
}

#[serializable_retry(max = 3, backoff(none))]
async fn push_one_two_optional(
    tx: &mut MockTx<i64>,
    out: Option<&mut Vec<i64>>,
) -> Result<(), sqlx::Error> {
    let out = out.expect("given");
    out.push(1);
    tx.execute("step")?;
    out.push(2);
    Ok(())
}

#[derive(Clone, Default)]
struct Recorder {
    seen: Vec<i64>,
}

impl Recorder {
    #[serializable_retry(max = 3, backoff(none))]
    async fn record(&mut self, tx: &mut MockTx<i64>) -> Result<(), sqlx::Error> {
        self.seen.push(1);
        tx.execute("step")?;
        self.seen.push(2);
        Ok(())
    }

    #[serializable_retry(max = 3, backoff(none))]
    async fn record_kept(#[keep] &mut self, tx: &mut MockTx<i64>) -> Result<(), sqlx::Error> {
        self.seen.push(1);
        tx.execute("step")?;
        self.seen.push(2);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_mut_argument_is_restored_before_a_retry() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
    let mut out = vec![0];
    push_one_two(&db, &mut out).await.unwrap();
    assert_eq!(out, [0, 1, 2], "what the failed attempt pushed was undone");
    assert_eq!(db.attempts(), 2);

    // A failure in the body, after the first push: restored too.
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("40P01"));
    let mut out = Vec::new();
    push_one_two(&db, &mut out).await.unwrap();
    assert_eq!(out, [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn keep_leaves_what_failed_attempts_wrote() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
    let mut out = Vec::new();
    push_one_two_kept(&db, &mut out).await.unwrap();
    assert_eq!(out, [1, 2, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn an_optional_mut_argument_is_reborrowed_and_restored() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
    let mut out = Vec::new();
    push_one_two_optional(&db, Some(&mut out)).await.unwrap();
    assert_eq!(out, [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn mut_self_is_restored_before_a_retry_unless_kept() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
    let mut recorder = Recorder::default();
    recorder.record(&db).await.unwrap();
    assert_eq!(recorder.seen, [1, 2]);

    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
    let mut recorder = Recorder::default();
    recorder.record_kept(&db).await.unwrap();
    assert_eq!(recorder.seen, [1, 2, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_fails_for_good_keeps_the_last_attempts_writes() {
    // Restored only before a retry: after the last attempt the argument shows what it did.
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Commit, Fault::sqlstate("40001"))
        .fail(2, Phase::Commit, Fault::sqlstate("40001"))
        .fail(3, Phase::Commit, Fault::sqlstate("40001"));
    let mut out = Vec::new();
    assert!(push_one_two(&db, &mut out).await.is_err());
    assert_eq!(out, [1, 2]);
}
