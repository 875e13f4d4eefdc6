//! The library on real scaled-out PostgreSQL setups, as it behaves today: through a
//! transaction-pooling pgbouncer, and on a hot standby (recovery conflicts, refused isolation
//! levels, writes). These tests are the regression suite for replica routing.

mod cluster;
mod pgbouncer;
mod sessions;
mod standby;

use std::time::{Duration, Instant};

pub use sqlx_retry_testkit::{Retry, with_event_log, with_retry_log};

/// Held by every test of the shared primary + standby pair: some of them stop the standby or
/// pause its replay.
pub static PAIR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The SQLSTATE of a `sqlx::Error`, if it is a database error.
pub fn code(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

/// Polls `check` every few milliseconds until it returns `true`, at most `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
