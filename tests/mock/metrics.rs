//! The `metrics` feature: counters and the duration histogram, captured with metrics-util's
//! `DebuggingRecorder` installed for the current thread only.
#![cfg(all(feature = "metrics", feature = "mock"))]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use sqlx_retry::mock::{Fault, MockDb, MockTx, Phase};
use sqlx_retry::{Backoff, Policy, RetryInfo, serializable_retry, transaction};

/// Runs `fut` on a paused current-thread runtime with a fresh recorder and returns its output
/// and what was recorded, keyed `name{label=value,…}`.
fn recorded<F: Future>(fut: F) -> (F::Output, BTreeMap<String, Recorded>) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let out = metrics::with_local_recorder(&recorder, || rt.block_on(fut));
    let mut map = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let value = match value {
            DebugValue::Counter(n) => Recorded::Counter(n),
            DebugValue::Histogram(v) => Recorded::Histogram(v.into_iter().map(|f| f.0).collect()),
            DebugValue::Gauge(g) => Recorded::Gauge(g.0),
        };
        map.insert(name, value);
    }
    (out, map)
}

#[derive(Debug, Clone, PartialEq)]
enum Recorded {
    Counter(u64),
    Histogram(Vec<f64>),
    Gauge(f64),
}

fn counters(map: &BTreeMap<String, Recorded>) -> BTreeMap<String, u64> {
    map.iter()
        .filter_map(|(k, v)| match v {
            Recorded::Counter(n) => Some((k.clone(), *n)),
            _ => None,
        })
        .collect()
}

fn histogram(map: &BTreeMap<String, Recorded>, key: &str) -> Vec<f64> {
    match map.get(key) {
        Some(Recorded::Histogram(v)) => v.clone(),
        other => panic!("no histogram {key}: {other:?}"),
    }
}

#[serializable_retry(max = 3, backoff(base = "10ms", cap = "10ms"))]
async fn bump(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    tx.execute("UPDATE counter")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn retried_then_committed() {
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Commit, Fault::sqlstate("40001"))
        .fail(2, Phase::Body, Fault::sqlstate("40P01"));
    let (out, rec) = recorded(bump(&db));
    assert_eq!(out.unwrap(), 1);
    assert_eq!(
        counters(&rec),
        map(&[
            ("sqlx_retry_attempts_total{fn=bump}", 3),
            ("sqlx_retry_calls_total{fn=bump,outcome=committed}", 1),
            ("sqlx_retry_retries_total{fn=bump,sqlstate=40001}", 1),
            ("sqlx_retry_retries_total{fn=bump,sqlstate=40P01}", 1),
        ])
    );
    // One sample per call; the paused clock makes the duration the backoff exactly:
    // full jitter under a 10 ms ceiling, twice.
    let durations = histogram(&rec, "sqlx_retry_call_duration_seconds{fn=bump}");
    assert_eq!(durations.len(), 1);
    assert!((0.0..=0.020).contains(&durations[0]), "{durations:?}");
}

#[test]
fn exhausted() {
    let db = (1..=3).fold(MockDb::new(0_i64), |db, n| {
        db.fail(n, Phase::Commit, Fault::sqlstate("40001"))
    });
    let (out, rec) = recorded(bump(&db));
    assert!(out.is_err());
    assert_eq!(
        counters(&rec),
        map(&[
            ("sqlx_retry_attempts_total{fn=bump}", 3),
            ("sqlx_retry_calls_total{fn=bump,outcome=exhausted}", 1),
            ("sqlx_retry_exhausted_total{fn=bump}", 1),
            ("sqlx_retry_retries_total{fn=bump,sqlstate=40001}", 2),
        ])
    );
}

#[test]
fn commit_unknown_and_permanent_errors() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::CommitReplyLost);
    let (out, rec) = recorded(bump(&db));
    assert!(sqlx_retry::is_commit_unknown(&out.unwrap_err()));
    assert_eq!(
        counters(&rec),
        map(&[
            ("sqlx_retry_attempts_total{fn=bump}", 1),
            ("sqlx_retry_calls_total{fn=bump,outcome=commit_unknown}", 1),
            ("sqlx_retry_commit_unknown_total{fn=bump}", 1),
        ])
    );

    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("23505"));
    let (out, rec) = recorded(bump(&db));
    assert!(out.is_err());
    assert_eq!(
        counters(&rec),
        map(&[
            ("sqlx_retry_attempts_total{fn=bump}", 1),
            ("sqlx_retry_calls_total{fn=bump,outcome=error}", 1),
        ])
    );
}

#[serializable_retry(max = 3, backoff(base = "10ms", cap = "10ms"))]
async fn outer(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    bump(&mut *tx).await
}

#[test]
fn joined_calls_count_as_calls_not_attempts() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
    let (out, rec) = recorded(outer(&db));
    assert_eq!(out.unwrap(), 1);
    assert_eq!(
        counters(&rec),
        map(&[
            ("sqlx_retry_attempts_total{fn=outer}", 2),
            ("sqlx_retry_calls_total{fn=bump,outcome=joined}", 2),
            ("sqlx_retry_calls_total{fn=outer,outcome=committed}", 1),
            ("sqlx_retry_retries_total{fn=outer,sqlstate=40001}", 1),
        ])
    );
}

/// What the `on_retry` hook saw: name, attempt, SQLSTATE, delay.
type Seen = (&'static str, u32, String, Duration);

#[test]
fn closure_api_is_labelled_transaction_and_hook_gets_the_name() {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let policy = Policy::builder()
        .backoff(Backoff::fixed(Duration::from_millis(3)))
        .on_retry({
            let seen = Arc::clone(&seen);
            move |info: &RetryInfo| {
                let code = info.sqlstate.map(|c| c.to_string()).unwrap_or_default();
                seen.lock()
                    .unwrap()
                    .push((info.name, info.attempt, code, info.delay));
            }
        })
        .build()
        .unwrap();
    let db = MockDb::new(0_i64).fail(1, Phase::Begin, Fault::ConnectionLost);
    let (out, rec) = recorded(transaction(&db, &policy, |tx| {
        Box::pin(async move { tx.execute("SELECT 1") })
    }));
    out.unwrap();
    assert_eq!(
        counters(&rec),
        map(&[
            ("sqlx_retry_attempts_total{fn=transaction}", 2),
            (
                "sqlx_retry_calls_total{fn=transaction,outcome=committed}",
                1
            ),
            ("sqlx_retry_retries_total{fn=transaction,sqlstate=none}", 1),
        ])
    );
    assert_eq!(
        histogram(&rec, "sqlx_retry_call_duration_seconds{fn=transaction}"),
        [0.003]
    );
    assert_eq!(
        *seen.lock().unwrap(),
        [("transaction", 1, String::new(), Duration::from_millis(3))]
    );
}

#[test]
fn a_rerun_inside_the_savepoint_after_its_backoff_is_an_attempt_and_a_retry() {
    let policy = Policy::builder()
        .savepoint(Policy::DEFAULT_SAVEPOINT)
        .savepoint_backoff(Backoff::fixed(Duration::from_millis(2)))
        .build()
        .unwrap();
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("40001"));
    let (out, rec) = recorded(transaction(&db, &policy, |tx| {
        Box::pin(async move { tx.execute("SELECT 1") })
    }));
    out.unwrap();
    assert_eq!(db.attempts(), 1, "one transaction");
    assert_eq!(
        counters(&rec),
        map(&[
            ("sqlx_retry_attempts_total{fn=transaction}", 2),
            (
                "sqlx_retry_calls_total{fn=transaction,outcome=committed}",
                1
            ),
            ("sqlx_retry_retries_total{fn=transaction,sqlstate=40001}", 1),
        ])
    );
    assert_eq!(
        histogram(&rec, "sqlx_retry_call_duration_seconds{fn=transaction}"),
        [0.002]
    );
}

#[test]
fn describe_registers_without_a_recorder_panic() {
    let recorder = DebuggingRecorder::new();
    metrics::with_local_recorder(&recorder, sqlx_retry::metrics::describe);
}
