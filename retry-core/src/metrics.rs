//! Counters and histograms through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`). Without the feature nothing is recorded; the names below are always available.
//!
//! Every metric carries the label `fn`: the annotated function's name, or `"transaction"` for
//! the closure API.
//!
//! The metrics, their kinds and labels are listed once, in the `sqlx-retry` crate documentation
//! ("Observability"); the constants below are their names.

use std::time::Duration;

use crate::SqlState;

/// How a call of the retry loop ended, for `sqlx_retry_calls_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// COMMIT succeeded.
    Committed,
    /// A non-retryable error (or a failed BEGIN on a source that cannot reconnect).
    Error,
    /// A retryable error, but no attempt was left.
    Exhausted,
    /// The COMMIT's outcome is unknown and the error was returned.
    CommitUnknown,
    /// The call joined an outer transaction and ran its body once.
    Joined,
}

impl Outcome {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::Error => "error",
            Outcome::Exhausted => "exhausted",
            Outcome::CommitUnknown => "commit_unknown",
            Outcome::Joined => "joined",
        }
    }
}

/// Name of the counter of started transactions.
pub const ATTEMPTS_TOTAL: &str = "sqlx_retry_attempts_total";
/// Name of the counter of scheduled retries (label `sqlstate`).
pub const RETRIES_TOTAL: &str = "sqlx_retry_retries_total";
/// Name of the counter of calls that gave up on a retryable error.
pub const EXHAUSTED_TOTAL: &str = "sqlx_retry_exhausted_total";
/// Name of the counter of COMMITs with unknown outcome.
pub const COMMIT_UNKNOWN_TOTAL: &str = "sqlx_retry_commit_unknown_total";
/// Name of the counter of finished calls (label `outcome`).
pub const CALLS_TOTAL: &str = "sqlx_retry_calls_total";
/// Name of the histogram of call durations in seconds.
pub const CALL_DURATION_SECONDS: &str = "sqlx_retry_call_duration_seconds";

/// Registers units and descriptions of the metrics above with the installed recorder (optional;
/// exporters such as Prometheus show them as `# HELP` lines).
///
/// ```
/// sqlx_retry_core::metrics::describe();
/// ```
#[cfg(feature = "metrics")]
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        ATTEMPTS_TOTAL,
        Unit::Count,
        "Transactions started by sqlx-retry, first attempts included"
    );
    describe_counter!(
        RETRIES_TOTAL,
        Unit::Count,
        "Retries scheduled by sqlx-retry, by the SQLSTATE that caused them"
    );
    describe_counter!(
        EXHAUSTED_TOTAL,
        Unit::Count,
        "Calls that gave up on a retryable error (attempts, backoff or time budget spent)"
    );
    describe_counter!(
        COMMIT_UNKNOWN_TOTAL,
        Unit::Count,
        "COMMITs whose connection broke while in flight (outcome unknown)"
    );
    describe_counter!(CALLS_TOTAL, Unit::Count, "Finished calls, by outcome");
    describe_histogram!(
        CALL_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of a retried call, backoff included"
    );
}

#[cfg(feature = "metrics")]
mod imp {
    use super::*;

    pub(crate) fn attempt(name: &'static str) {
        ::metrics::counter!(ATTEMPTS_TOTAL, "fn" => name).increment(1);
    }

    pub(crate) fn retry(name: &'static str, sqlstate: Option<&SqlState>) {
        let code = sqlstate.map_or_else(|| "none".to_owned(), |c| c.as_str().to_owned());
        ::metrics::counter!(RETRIES_TOTAL, "fn" => name, "sqlstate" => code).increment(1);
    }

    pub(crate) fn exhausted(name: &'static str) {
        ::metrics::counter!(EXHAUSTED_TOTAL, "fn" => name).increment(1);
    }

    pub(crate) fn commit_unknown(name: &'static str) {
        ::metrics::counter!(COMMIT_UNKNOWN_TOTAL, "fn" => name).increment(1);
    }

    pub(crate) fn call(name: &'static str, outcome: Outcome, elapsed: Duration) {
        ::metrics::counter!(CALLS_TOTAL, "fn" => name, "outcome" => outcome.label()).increment(1);
        ::metrics::histogram!(CALL_DURATION_SECONDS, "fn" => name).record(elapsed.as_secs_f64());
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    use super::*;

    #[inline(always)]
    pub(crate) fn attempt(_name: &'static str) {}

    #[inline(always)]
    pub(crate) fn retry(_name: &'static str, _sqlstate: Option<&SqlState>) {}

    #[inline(always)]
    pub(crate) fn exhausted(_name: &'static str) {}

    #[inline(always)]
    pub(crate) fn commit_unknown(_name: &'static str) {}

    #[inline(always)]
    pub(crate) fn call(_name: &'static str, _outcome: Outcome, _elapsed: Duration) {}
}

pub(crate) use imp::{attempt, call, commit_unknown, exhausted, retry};
