//! Helpers shared by the reliability tests: retry counting by SQLSTATE (the testkit's retry
//! log), latency summaries and session checks.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx_retry_testkit::{RetryLog, global_retries};

/// The process-wide retry log: retries by function and SQLSTATE (`""` for a lost connection).
pub fn retries() -> &'static RetryLog {
    global_retries()
}

/// Duration of a stress run: `SQLX_RETRY_STRESS_SECS`, default `default_secs`.
pub fn stress_secs(default_secs: u64) -> u64 {
    std::env::var("SQLX_RETRY_STRESS_SECS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default_secs)
}

/// Per-call outcome counts and latencies of a stress workload.
#[derive(Default, Debug)]
pub struct Tally {
    pub calls: u64,
    pub ok: u64,
    pub exhausted: u64,
    pub exhausted_40p01: u64,
    pub other: Vec<String>,
    pub latencies: Vec<Duration>,
}

impl Tally {
    pub fn merge(&mut self, other: Tally) {
        self.calls += other.calls;
        self.ok += other.ok;
        self.exhausted += other.exhausted;
        self.exhausted_40p01 += other.exhausted_40p01;
        self.other.extend(other.other);
        self.latencies.extend(other.latencies);
    }

    /// The `q`-quantile (0..=1) of the call latencies.
    pub fn percentile(&mut self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
        self.latencies[i]
    }

    /// The one-line summary printed by each stress test.
    pub fn summary(
        &mut self,
        workload: &str,
        tasks: usize,
        secs: u64,
        attempts: &AtomicU64,
        retries: &BTreeMap<String, u64>,
        extra: &str,
    ) -> String {
        let p50 = self.percentile(0.50);
        let p99 = self.percentile(0.99);
        format!(
            "[reliability] {workload}: tasks={tasks} secs={secs} calls={} commits={} attempts={} \
             retries_by_sqlstate={retries:?} exhausted={} (40P01: {}) other_errors={} \
             p50={:.1}ms p99={:.1}ms{extra}",
            self.calls,
            self.ok,
            attempts.load(Ordering::Relaxed),
            self.exhausted,
            self.exhausted_40p01,
            self.other.len(),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
        )
    }
}

/// The SQLSTATE of an error (through its source chain) as a string.
pub fn code_of(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    sqlx_retry::error::sqlstate(err).map(|c| c.as_str().to_owned())
}

/// Polls `check` every 20 ms until it returns true or `limit` passes; returns the last result.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sessions of `application_name` in the state `idle in transaction…`.
pub async fn idle_in_transaction(direct: &PgPool, app: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' \
         AND datname = current_database() AND application_name = $1",
    )
    .bind(app)
    .fetch_one(direct)
    .await
    .expect("pg_stat_activity")
}

/// A unique application name for a test's pool.
pub fn unique_app(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
