//! What the cluster knows about one standby: whether it is down, and how far it lags.

use std::sync::Mutex;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::Row as _;
use tokio::time::Instant;

/// The column of a standby measurement: its replay lag in seconds (0 when it has replayed all the WAL it received, or is not in recovery at all; infinite
/// when it has WAL to replay but replayed no transaction since it started).
macro_rules! measure_columns {
    () => {
        "CASE WHEN NOT pg_is_in_recovery() THEN 0::float8 \
              WHEN pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0::float8 \
              ELSE coalesce(extract(epoch FROM clock_timestamp() \
                                    - pg_last_xact_replay_timestamp())::float8, \
                            'Infinity') END"
    };
}

/// The probe: one round trip on a standby connection, outside any transaction.
pub(crate) const PROBE: &str = concat!("SELECT ", measure_columns!());

/// A standby transaction's COMMIT, measuring the standby on the way (see `aborted.rs` for the
/// `SELECT …; COMMIT; BEGIN` shape: the `SELECT` fails with `25P02` in an aborted transaction).
pub(crate) const COMMIT_AND_MEASURE: &str = concat!(
    "SELECT ",
    measure_columns!(),
    " /* sqlx-retry: not aborted? */; COMMIT; BEGIN"
);

/// One standby.
pub(crate) struct Standby {
    pool: PgPool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Skipped until then.
    down_until: Option<Instant>,
    /// The last measurement.
    measured: Option<Measurement>,
}

#[derive(Clone, Copy)]
struct Measurement {
    at: Instant,
    lag: Duration,
}

/// Whether a standby's lag lets a call run on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LagVerdict {
    /// Its last measured lag plus the time since is within `max_lag`.
    Fresh,
    /// It lagged too much when measured, recently.
    Lagging,
    /// Not measured, or too long ago: measure before use.
    Unknown,
}

impl Standby {
    pub(crate) fn new(pool: PgPool) -> Standby {
        Standby {
            pool,
            state: Mutex::new(State::default()),
        }
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few plain values, consistent whatever a panicking holder did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the standby is skipped at `now`.
    pub(crate) fn is_down(&self, now: Instant) -> bool {
        self.state().down_until.is_some_and(|until| now < until)
    }

    /// Skip the standby for `period`; forget its measurement (after a restart it may show an
    /// older state than before).
    pub(crate) fn mark_down(&self, now: Instant, period: Duration) {
        let mut state = self.state();
        state.down_until = Some(now + period);
        state.measured = None;
    }

    /// The standby answered: it is up.
    pub(crate) fn mark_up(&self) {
        self.state().down_until = None;
    }

    /// Whether the standby's lag allows a call at `now`: its last measured lag plus the time
    /// since (as if replay had stopped right after the measurement) must be at most `max_lag`.
    /// A standby found lagging is measured again once `max_lag / 4` has passed.
    pub(crate) fn lag_verdict(&self, now: Instant, max_lag: Duration) -> LagVerdict {
        let Some(m) = self.state().measured else {
            return LagVerdict::Unknown;
        };
        let age = now.saturating_duration_since(m.at);
        if m.lag.saturating_add(age) <= max_lag {
            LagVerdict::Fresh
        } else if age >= (max_lag / 4).max(Duration::from_millis(1)) {
            LagVerdict::Unknown
        } else {
            LagVerdict::Lagging
        }
    }

    /// Records a measurement read from a row of [`PROBE`] or [`COMMIT_AND_MEASURE`].
    pub(crate) fn record(&self, row: &sqlx::postgres::PgRow) -> Result<(), sqlx::Error> {
        let lag: f64 = row.try_get(0)?;
        // Negative when the standby's clock is behind the primary's; infinite when unknown.
        let lag = Duration::try_from_secs_f64(lag.max(0.0)).unwrap_or(Duration::MAX);
        let measurement = Measurement {
            at: Instant::now(),
            lag,
        };
        let mut state = self.state();
        // Two measurements may finish out of order; keep the later one.
        if state.measured.is_none_or(|m| m.at <= measurement.at) {
            state.measured = Some(measurement);
        }
        Ok(())
    }
}
