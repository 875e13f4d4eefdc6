//! Routing one attempt: which server starts its transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Postgres, SqlSafeStr as _};
use tokio::time::{Instant, timeout};

use super::Inner;
use super::lsn::Lsn;
use super::standby::{LagVerdict, PROBE, Standby};
use super::tx::{ClusterTransaction, OnCommit, UNKNOWN};
use crate::backends::postgres::begin_statement;
use crate::policy::TxOptions;
use crate::source::PoolTransaction;

/// How long a session's call waits before it asks a standby again whether it has replayed the
/// session's last commit: from the first value, doubling up to the second.
const CATCH_UP_POLL: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(16));

/// Marks the failing statement of a catch-up check, so that its error is told from others.
const BEHIND_MARK: &str = "sqlx-retry: standby behind";

/// What the check's error shows for a server that is not in recovery.
const NOT_IN_RECOVERY: &str = "not in recovery";

/// What trying one standby gave.
enum Tried {
    Began(ClusterTransaction),
    /// Not this standby, for this call.
    Skip,
}

impl Inner {
    /// Starts an attempt's transaction: on a standby for a `replica` call when one qualifies,
    /// else on the primary. `written` is the session's last commit position, if the call goes
    /// through a session.
    pub(crate) async fn begin(
        self: &Arc<Self>,
        options: TxOptions,
        written: Option<&Arc<AtomicU64>>,
    ) -> Result<ClusterTransaction, sqlx::Error> {
        if options.replica && !self.standbys.is_empty() {
            let target = written.map_or(0, |w| w.load(Ordering::Acquire));
            // A session whose last commit position is unknown reads on the primary.
            if target != UNKNOWN {
                let n = self.standbys.len();
                let first = self.next.fetch_add(1, Ordering::Relaxed);
                // A session's call waits for standbys to catch up at most max_lag in all.
                let deadline = Instant::now() + self.max_lag;
                for k in 0..n {
                    let i = (first + k) % n;
                    let tried = self.try_standby(i, options, Lsn(target), deadline).await;
                    if let Tried::Began(tx) = tried {
                        return Ok(tx);
                    }
                }
            }
            tracing::debug!("no standby qualifies; the replica call runs on the primary");
        }
        let on_commit = match written {
            Some(written) if !options.read_only => OnCommit::RecordLsn(Arc::clone(written)),
            _ => OnCommit::Nothing,
        };
        let statement = begin_statement(&options).into_sql_str();
        let tx = PoolTransaction::begin(&self.primary, statement).await?;
        Ok(ClusterTransaction::new(tx, on_commit))
    }

    /// Tries to start the transaction on standby `i`; with a `target` (a session's last commit),
    /// only once the standby has replayed past it, waiting for that until `deadline`.
    async fn try_standby(
        self: &Arc<Self>,
        i: usize,
        options: TxOptions,
        target: Lsn,
        deadline: Instant,
    ) -> Tried {
        let Some(standby) = self.standbys.get(i) else {
            return Tried::Skip;
        };
        let now = Instant::now();
        if standby.is_down(now) {
            return Tried::Skip;
        }
        let verdict = standby.lag_verdict(now, self.max_lag);
        if verdict == LagVerdict::Lagging {
            return Tried::Skip;
        }
        let Some(mut conn) = self.acquire(i, standby).await else {
            return Tried::Skip;
        };
        if verdict == LagVerdict::Unknown {
            let probe = timeout(
                self.standby_timeout,
                sqlx::raw_sql(PROBE).fetch_one(&mut *conn),
            )
            .await;
            match probe {
                Ok(Ok(row)) => {
                    let _ = standby.record(&row);
                }
                Ok(Err(err)) => {
                    tracing::debug!(standby = i, error = %err, "probing a standby failed; skipping it");
                    return Tried::Skip;
                }
                Err(_) => {
                    conn.close_on_drop();
                    self.mark_down(i, standby, "its probe timed out");
                    return Tried::Skip;
                }
            }
            if standby.lag_verdict(Instant::now(), self.max_lag) != LagVerdict::Fresh {
                tracing::debug!(standby = i, "the standby lags past max_lag; skipping it");
                return Tried::Skip;
            }
        }
        let plain = begin_statement(&options);
        let mut poll = CATCH_UP_POLL.0;
        loop {
            // A session's check runs before BEGIN, in the same query: replay only moves forward,
            // so a position it has replayed before the transaction's snapshot is in the snapshot.
            // It runs in an implicit transaction of its own, which COMMIT ends (SET LOCAL
            // silences that COMMIT's "no transaction in progress" warning). The failing branch
            // reads the replay position so that it is not folded into a constant.
            let statement = if target == Lsn(0) {
                plain.into_sql_str()
            } else {
                sqlx::AssertSqlSafe(format!(
                    "SET LOCAL client_min_messages = error; \
                     SELECT CASE WHEN pg_last_wal_replay_lsn() >= '{target}'::pg_lsn THEN 1 \
                     ELSE ('{BEHIND_MARK} ' || coalesce(pg_last_wal_replay_lsn()::text, '{NOT_IN_RECOVERY}') \
                           || ' < {target}')::int END; \
                     COMMIT; {plain}"
                ))
                .into_sql_str()
            };
            let began = timeout(
                self.standby_timeout,
                PoolTransaction::begin_on(conn, statement, is_behind),
            )
            .await;
            match began {
                Ok(Ok(tx)) => {
                    let on_commit = OnCommit::Measure(Arc::clone(self), i);
                    return Tried::Began(ClusterTransaction::new(tx, on_commit));
                }
                Ok(Err((err, Some(kept)))) => {
                    // Behind: the connection is idle and usable. A server that is not in
                    // recovery has no replay position: never wait for it.
                    let not_a_standby = err.to_string().contains(NOT_IN_RECOVERY);
                    if not_a_standby || Instant::now() + poll > deadline {
                        tracing::debug!(
                            standby = i,
                            %target,
                            "the standby has not replayed the session's last commit within \
                             max_lag; the call runs elsewhere"
                        );
                        return Tried::Skip;
                    }
                    tokio::time::sleep(poll).await;
                    poll = (poll * 2).min(CATCH_UP_POLL.1);
                    conn = kept;
                }
                Ok(Err((err, None))) => {
                    // The connection was closed; the next call's acquire tells whether the
                    // standby itself is down.
                    tracing::debug!(standby = i, error = %err, "BEGIN failed on a standby; skipping it");
                    return Tried::Skip;
                }
                Err(_) => {
                    // Dropped mid-BEGIN: the connection was closed.
                    self.mark_down(i, standby, "its BEGIN timed out");
                    return Tried::Skip;
                }
            }
        }
    }

    /// A connection to standby `i`, waiting at most `standby_timeout`. A failure marks the
    /// standby down, unless the pool only had no free connection.
    async fn acquire(&self, i: usize, standby: &Standby) -> Option<PoolConnection<Postgres>> {
        let pool = standby.pool();
        match timeout(self.standby_timeout, pool.acquire()).await {
            Ok(Ok(conn)) => {
                standby.mark_up();
                Some(conn)
            }
            Ok(Err(err)) => {
                self.mark_down(i, standby, &err.to_string());
                None
            }
            Err(_) => {
                let busy =
                    pool.size() >= pool.options().get_max_connections() && pool.num_idle() == 0;
                if busy {
                    tracing::debug!(
                        standby = i,
                        "the standby's pool has no free connection; skipping it"
                    );
                } else {
                    self.mark_down(i, standby, "no connection within standby_timeout");
                }
                None
            }
        }
    }

    fn mark_down(&self, i: usize, standby: &Standby, why: &str) {
        tracing::warn!(
            standby = i,
            why,
            down_ms = self.down_period.as_millis() as u64,
            "standby unavailable; calls skip it until the down period has passed"
        );
        standby.mark_down(Instant::now(), self.down_period);
    }
}

/// Whether a failed catch-up BEGIN failed on its check: the standby is behind, and the
/// connection is idle (the check's error ended the query before BEGIN).
fn is_behind(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("22P02") && db.message().contains(BEHIND_MARK))
}
