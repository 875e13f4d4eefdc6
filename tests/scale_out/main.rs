//! The library on real scaled-out PostgreSQL setups, as it behaves today: through a
//! transaction-pooling pgbouncer, and on a hot standby (recovery conflicts, refused isolation
//! levels, writes). These tests are the regression suite for replica routing.

mod cluster;
mod pgbouncer;
mod sessions;
mod standby;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::instrument::WithSubscriber as _;
use tracing_subscriber::layer::{Context, SubscriberExt as _};

/// Held by every test of the shared primary + standby pair: some of them stop the standby or
/// pause its replay.
pub static PAIR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One "retrying transaction" event of the retry loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// The attempt that failed, from 1.
    pub attempt: u64,
    /// The SQLSTATE the loop reports (empty for a lost connection).
    pub sqlstate: String,
    /// The conflict kind the loop reports (empty when it is not a conflict).
    pub conflict: String,
}

/// The retry events of one call, and the messages of all its events, captured from its
/// tracing events.
#[derive(Clone, Default)]
pub struct RetryLog(Arc<Mutex<Vec<Retry>>>, Arc<Mutex<Vec<String>>>);

impl RetryLog {
    /// The retries seen so far.
    pub fn retries(&self) -> Vec<Retry> {
        self.0.lock().unwrap().clone()
    }

    /// The messages of every event seen so far.
    pub fn messages(&self) -> Vec<String> {
        self.1.lock().unwrap().clone()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RetryLog {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        #[derive(Default)]
        struct Fields {
            message: String,
            attempt: u64,
            sqlstate: String,
            conflict: String,
        }
        impl Visit for Fields {
            fn record_u64(&mut self, field: &Field, value: u64) {
                if field.name() == "attempt" {
                    self.attempt = value;
                }
            }
            fn record_str(&mut self, field: &Field, value: &str) {
                match field.name() {
                    "sqlstate" => self.sqlstate = value.to_owned(),
                    "conflict" => self.conflict = value.to_owned(),
                    _ => {}
                }
            }
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.message = format!("{value:?}");
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.1.lock().unwrap().push(fields.message.clone());
        if fields.message == "retrying transaction" {
            self.0.lock().unwrap().push(Retry {
                attempt: fields.attempt,
                sqlstate: fields.sqlstate,
                conflict: fields.conflict,
            });
        }
    }
}

/// Runs `future` with its retry events captured.
pub async fn with_retry_log<F: Future>(future: F) -> (F::Output, Vec<Retry>) {
    let log = RetryLog::default();
    let subscriber = tracing_subscriber::registry().with(log.clone());
    let out = future.with_subscriber(subscriber).await;
    (out, log.retries())
}

/// Runs `future` with its events captured: its result and the messages of its events.
pub async fn with_event_log<F: Future>(future: F) -> (F::Output, Vec<String>) {
    let log = RetryLog::default();
    let subscriber = tracing_subscriber::registry().with(log.clone());
    let out = future.with_subscriber(subscriber).await;
    (out, log.messages())
}

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
