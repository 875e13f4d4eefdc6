//! A primary with hot standbys: [`Cluster`] routes each call to a server, and a [`Session`]
//! makes sure a caller never misses its own writes.
//!
//! A call runs on a standby only when its policy says `replica` (the attribute's `replica`
//! flag, [`PolicyBuilder::replica`](crate::PolicyBuilder::replica)); every other call runs on the
//! primary.
//!
//! # Which standby, and when not
//!
//! A `replica` call through `&cluster` runs on the next standby, in turn, that is
//!
//! - **not down**: a standby whose pool gave no connection within
//!   [`standby_timeout`](ClusterBuilder::standby_timeout) (unless the pool was merely full),
//!   or that did not answer a probe or BEGIN within it, is skipped for
//!   [`down_period`](ClusterBuilder::down_period); the first call after that period tries it
//!   again. A BEGIN that fails on one connection skips the standby for that attempt only;
//! - **not lagging**: its replay lag, measured on the standby when it was last used (read with
//!   the COMMIT, no round trip of its own) or probed (one round trip, when the last measure is
//!   too old), plus the time since that measure, is at most [`max_lag`](ClusterBuilder::max_lag).
//!
//! When no standby qualifies, the call runs on the primary. Nothing of this reaches the caller
//! as an error: only errors of the call's own transaction do.
//!
//! The lag is measured on the standby as `clock_timestamp() - pg_last_xact_replay_timestamp()`
//! while it has received WAL it has not replayed, and 0 when it has replayed everything it
//! received. It compares two servers' clocks, and a standby cut off from its primary does not
//! know what it misses, so it is an estimate; sessions do not rely on it.
//!
//! # Sessions: read-your-writes
//!
//! A [`Session`] (from [`Cluster::session`]) remembers the WAL position of the last commit made
//! through it, read in the same query as the COMMIT (`pg_current_wal_insert_lsn()` *after*
//! COMMIT: a position read before COMMIT precedes the commit record). A `replica` call through
//! the session runs on a standby only if that standby has replayed past that position: the check
//! `pg_last_wal_replay_lsn() >= position` is sent in the same query as BEGIN, **before** BEGIN,
//! so that it bounds the transaction's snapshot from below (a check inside a `REPEATABLE READ`
//! transaction runs after its snapshot was taken, and replay may have moved on in between). When
//! the standby is behind, the call retries the check for at most `max_lag`, then runs on the
//! primary. So a call through a session sees every commit made through that session (or any of
//! its clones) before the call started. A session write whose COMMIT's outcome is unknown may
//! have committed at an unknown position: from then on the session reads on the primary.
//!
//! | round trips | write | `replica` read |
//! |---|---|---|
//! | `&PgPool` | BEGIN, body, COMMIT | BEGIN, body, COMMIT |
//! | `&cluster` | same | same (+1 probe when the standby's lag was last measured longer ago than `max_lag` allows) |
//! | `&session` | same: the position rides with COMMIT | same: the check rides with BEGIN; +1 per retry of the check while the standby is behind |
//!
//! ```no_run
//! use std::time::Duration;
//! use sqlx::PgConnection;
//! use sqlx_retry_core::{Cluster, IsolationLevel, Policy, transaction};
//!
//! # async fn demo(primary: sqlx::PgPool, standby: sqlx::PgPool) -> Result<(), sqlx::Error> {
//! let cluster = Cluster::builder(primary)
//!     .replica(standby)
//!     .max_lag(Duration::from_millis(500))
//!     .build();
//! let read = Policy::builder()
//!     .read_only(true)
//!     .isolation(IsolationLevel::RepeatableRead)
//!     .replica(true)
//!     .build()
//!     .expect("valid policy");
//!
//! let session = cluster.session();
//! transaction(&session, &Policy::default(), |tx: &mut PgConnection| {
//!     Box::pin(async move { sqlx::query("UPDATE t SET n = n + 1").execute(tx).await.map(drop) })
//! })
//! .await?;
//! // On a standby that has replayed the UPDATE, or on the primary.
//! let n: i64 = transaction(&session, &read, |tx: &mut PgConnection| {
//!     Box::pin(async move { sqlx::query_scalar("SELECT n FROM t").fetch_one(tx).await })
//! })
//! .await?;
//! # Ok(()) }
//! ```

mod lsn;
mod route;
mod standby;
mod tx;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::PgPool;

pub use tx::ClusterTransaction;

use standby::Standby;

/// A PostgreSQL primary and its hot standbys: pass `&cluster` (or a [`Session`]) where an
/// annotated function takes its transaction, as you would pass `&PgPool`.
///
/// A `replica` call (a `read_only` function at `repeatable_read` or `read_committed` marked
/// `replica`) runs on a standby that is up and not lagging past
/// [`max_lag`](ClusterBuilder::max_lag); every other call, and every call when no standby
/// qualifies, runs on the primary. See the [module](crate::cluster) for the rules, and
/// [`Session`] for read-your-writes. Cloning is cheap: clones share pools and standby state.
///
/// ```no_run
/// use std::time::Duration;
/// use sqlx_retry_core::Cluster;
///
/// # async fn demo() -> Result<(), sqlx::Error> {
/// let primary = sqlx::PgPool::connect("postgres://app@primary/app").await?;
/// let standby = sqlx::PgPool::connect_lazy("postgres://app@standby/app")?;
/// let cluster = Cluster::builder(primary)
///     .replica(standby)
///     .max_lag(Duration::from_millis(500))
///     .build();
/// let session = cluster.session();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    primary: PgPool,
    standbys: Vec<Standby>,
    max_lag: Duration,
    standby_timeout: Duration,
    down_period: Duration,
    /// Where the next `replica` call starts looking: the standbys take turns.
    next: AtomicUsize,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("standbys", &self.inner.standbys.len())
            .field("max_lag", &self.inner.max_lag)
            .field("standby_timeout", &self.inner.standby_timeout)
            .field("down_period", &self.inner.down_period)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A builder for a cluster whose primary is reached through `primary`.
    pub fn builder(primary: PgPool) -> ClusterBuilder {
        ClusterBuilder {
            primary,
            standbys: Vec::new(),
            max_lag: ClusterBuilder::DEFAULT_MAX_LAG,
            standby_timeout: ClusterBuilder::DEFAULT_STANDBY_TIMEOUT,
            down_period: ClusterBuilder::DEFAULT_DOWN_PERIOD,
        }
    }

    /// A new session: a handle that remembers the commits made through it, so that `replica`
    /// calls through it see them. Clones share that memory.
    pub fn session(&self) -> Session {
        Session {
            cluster: self.clone(),
            written: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The primary's pool.
    pub fn primary(&self) -> &PgPool {
        &self.inner.primary
    }

    /// The standbys' pools, in the order they were added.
    pub fn replicas(&self) -> impl ExactSizeIterator<Item = &PgPool> {
        self.inner.standbys.iter().map(Standby::pool)
    }
}

/// Builds a [`Cluster`]; see [`Cluster::builder`].
///
/// # Default
///
/// No standby (every call runs on the primary), `max_lag` 1 s, `standby_timeout` 250 ms,
/// `down_period` 1 s.
#[derive(Debug)]
#[must_use]
pub struct ClusterBuilder {
    primary: PgPool,
    standbys: Vec<PgPool>,
    max_lag: Duration,
    standby_timeout: Duration,
    down_period: Duration,
}

impl ClusterBuilder {
    /// The default [`max_lag`](Self::max_lag), 1 s.
    pub const DEFAULT_MAX_LAG: Duration = Duration::from_secs(1);
    /// The default [`standby_timeout`](Self::standby_timeout), 250 ms.
    pub const DEFAULT_STANDBY_TIMEOUT: Duration = Duration::from_millis(250);
    /// The default [`down_period`](Self::down_period), 1 s.
    pub const DEFAULT_DOWN_PERIOD: Duration = Duration::from_secs(1);

    /// Adds a hot standby of the primary, reached through `pool`. Call it once per standby.
    pub fn replica(mut self, pool: PgPool) -> Self {
        self.standbys.push(pool);
        self
    }

    /// The most a standby may lag for `replica` calls through the cluster to run on it, and
    /// the longest a `replica` call through a [`Session`] waits for a standby to replay the
    /// session's last commit before it runs on the primary.
    pub fn max_lag(mut self, max_lag: Duration) -> Self {
        self.max_lag = max_lag;
        self
    }

    /// How long a call waits for a standby: for a connection from its pool, and for each
    /// statement routing sends to it. A standby that does not answer in time is skipped (and,
    /// unless its pool was only busy, marked down).
    pub fn standby_timeout(mut self, timeout: Duration) -> Self {
        self.standby_timeout = timeout;
        self
    }

    /// How long a standby that failed is left alone before a call tries it again.
    pub fn down_period(mut self, period: Duration) -> Self {
        self.down_period = period;
        self
    }

    /// The cluster.
    pub fn build(self) -> Cluster {
        Cluster {
            inner: Arc::new(Inner {
                primary: self.primary,
                standbys: self.standbys.into_iter().map(Standby::new).collect(),
                max_lag: self.max_lag,
                standby_timeout: self.standby_timeout,
                down_period: self.down_period,
                next: AtomicUsize::new(0),
            }),
        }
    }
}

/// A caller's view of a [`Cluster`] that never misses its own writes: a `replica` call through a
/// session sees every commit made earlier through the session or its clones, running on a
/// standby that has replayed them, or else on the primary. See the [module](crate::cluster).
///
/// One per user, request chain or task that must read what it wrote; `Clone + Send + Sync`.
///
/// ```no_run
/// # use sqlx_retry_core::Cluster;
/// # async fn demo(cluster: Cluster) {
/// let session = cluster.session();
/// let for_task = session.clone(); // the same session
/// tokio::spawn(async move { let _ = &for_task; });
/// # }
/// ```
#[derive(Clone)]
pub struct Session {
    cluster: Cluster,
    /// The WAL position just past the last commit made through this session; 0 before any.
    written: Arc<AtomicU64>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field(
                "last_commit_lsn",
                &lsn::Lsn(self.written.load(Ordering::Acquire)),
            )
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The cluster this session reads and writes through.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The WAL position at or past the end of the last commit made through this session, as
    /// PostgreSQL writes it (`16/B374D848`); `None` before the first. After a write whose
    /// COMMIT's outcome is unknown (the connection broke while it was in flight) it is
    /// `FFFFFFFF/FFFFFFFF`, and the session's `replica` calls run on the primary from then on.
    pub fn last_commit_lsn(&self) -> Option<String> {
        match self.written.load(Ordering::Acquire) {
            0 => None,
            lsn => Some(lsn::Lsn(lsn).to_string()),
        }
    }
}
