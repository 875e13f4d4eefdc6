//! The retry loop's semantics, proven against the mock transaction source through
//! `#[serializable_retry]` (the way users call it) and through the plain `transaction` API.
//!
//! Every test runs on tokio's paused clock, so backoff costs no real time. The attribute's
//! backoff has jitter, so its sleeps are checked against bounds (the script shows them as
//! `sleep *`); exact sleeps are asserted through the plain API with `Backoff::fixed`.
#![cfg(feature = "mock")]

mod begin;
mod cancellation;
mod connection;
mod control_flow;
mod error_types;
mod events;
mod limits;
mod mut_arguments;
mod not_retried;
mod plain_api;
mod retried;
mod rollback;
mod send;

// Fixtures one section defines and others use too.
use error_types::{with_anyhow, with_nested};
use not_retried::AppError;

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
