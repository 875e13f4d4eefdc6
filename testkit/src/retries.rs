//! The retry loop's "retrying transaction" events, captured: what the tests, the demo and the
//! example count retries with (the body cannot count them itself: a BEGIN that fails never
//! reaches it).
//!
//! [`global_retries`] installs a process-wide subscriber once and records every retry of the
//! process; [`with_retry_log`] records the retries of one future only, and [`with_event_log`]
//! the messages of all its events.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::instrument::WithSubscriber as _;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

/// One "retrying transaction" event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// The span the event was emitted in: the annotated function's name (`transaction` for the
    /// closure API).
    pub function: String,
    /// The attempt that failed, from 1.
    pub attempt: u64,
    /// The SQLSTATE the loop reports; empty for a lost connection.
    pub sqlstate: String,
    /// The conflict kind the loop reports; empty when the error names none.
    pub conflict: String,
    /// Every field of the event as ` name=value` text (values in `Debug` form), to check what an
    /// event does *not* carry.
    pub fields: String,
}

/// The retries seen by a subscriber this log is a layer of.
#[derive(Debug, Clone, Default)]
pub struct RetryLog(Arc<Mutex<Vec<Retry>>>);

impl RetryLog {
    /// Every retry recorded so far, in order.
    pub fn retries(&self) -> Vec<Retry> {
        self.lock().clone()
    }

    /// How often `function` retried, by SQLSTATE (`""` for a lost connection).
    pub fn by_sqlstate(&self, function: &str) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for retry in self.lock().iter().filter(|r| r.function == function) {
            *counts.entry(retry.sqlstate.clone()).or_default() += 1;
        }
        counts
    }

    /// How often any function retried, by SQLSTATE (`""` for a lost connection).
    pub fn all_by_sqlstate(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for retry in self.lock().iter() {
            *counts.entry(retry.sqlstate.clone()).or_default() += 1;
        }
        counts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Retry>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<S> tracing_subscriber::Layer<S> for RetryLog
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        #[derive(Default)]
        struct Fields {
            message: String,
            attempt: u64,
            sqlstate: String,
            conflict: String,
            all: String,
        }
        impl Visit for Fields {
            fn record_u64(&mut self, field: &Field, value: u64) {
                if field.name() == "attempt" {
                    self.attempt = value;
                }
                self.all += &format!(" {}={value}", field.name());
            }
            fn record_str(&mut self, field: &Field, value: &str) {
                match field.name() {
                    "sqlstate" => self.sqlstate = value.to_owned(),
                    "conflict" => self.conflict = value.to_owned(),
                    _ => {}
                }
                self.all += &format!(" {}={value:?}", field.name());
            }
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.message = format!("{value:?}");
                }
                self.all += &format!(" {}={value:?}", field.name());
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.message != "retrying transaction" {
            return;
        }
        let function = ctx
            .event_span(event)
            .map(|span| span.name().to_owned())
            .unwrap_or_default();
        self.lock().push(Retry {
            function,
            attempt: fields.attempt,
            sqlstate: fields.sqlstate,
            conflict: fields.conflict,
            fields: fields.all,
        });
    }
}

/// The process-wide retry log, installed as the global default subscriber on first use.
///
/// # Panics
///
/// When something else already installed a global subscriber.
pub fn global_retries() -> &'static RetryLog {
    static LOG: OnceLock<RetryLog> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = RetryLog::default();
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(log.clone()))
            .expect("the retry log is the process's only global subscriber");
        log
    })
}

/// Runs `future` with its retry events captured.
pub async fn with_retry_log<F: Future>(future: F) -> (F::Output, Vec<Retry>) {
    let log = RetryLog::default();
    let subscriber = tracing_subscriber::registry().with(log.clone());
    let out = future.with_subscriber(subscriber).await;
    (out, log.retries())
}

/// The messages of every event its subscriber sees.
#[derive(Clone, Default)]
struct MessageLog(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for MessageLog {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        struct Message(String);
        impl Visit for Message {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(message.0);
    }
}

/// Runs `future` with its events captured: its result and the messages of all its events.
pub async fn with_event_log<F: Future>(future: F) -> (F::Output, Vec<String>) {
    let log = MessageLog::default();
    let subscriber = tracing_subscriber::registry().with(log.clone());
    let out = future.with_subscriber(subscriber).await;
    let messages = log.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    (out, messages)
}
