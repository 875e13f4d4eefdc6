//! The contended workloads, run by our loop and by pgbench with the same SQL.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use sqlx_retry::{Policy, TransactionSource, serializable_retry, transaction};
use sqlx_retry_testkit::PgProxy;

use crate::{Res, bump_counter, counters, cpu};

/// Hot rows in the hot-row workload.
pub const HOT_ROWS: i32 = 4;
/// Shifts and doctors per shift in the write-skew workload.
pub const SHIFTS: i32 = 4;
/// Doctors per shift.
pub const DOCTORS: i32 = 8;

/// A pool of `n` connections, all opened before it is returned.
pub async fn pool(opts: PgConnectOptions, n: u32, ping: bool) -> Res<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(n)
        .test_before_acquire(ping)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(opts)
        .await?;
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.acquire().await?);
    }
    drop(held);
    Ok(pool)
}

/// Creates the tables of all sections.
///
/// The contended tables are refilled before every run (see [`reset`]) and autovacuum leaves them
/// alone, so every run of either side starts from the same physical table and the planner's
/// choice cannot change in the middle of a run. That choice matters at SERIALIZABLE: a
/// sequential scan takes a predicate lock on the whole table, an index scan only on what it
/// read, and one run that drifted from the first kind to the second saw a third of the
/// conflicts.
pub async fn create_schema(c: &mut PgConnection) -> Res<()> {
    sqlx::raw_sql(
        "CREATE TABLE counters (id bigint PRIMARY KEY, n bigint NOT NULL);
         INSERT INTO counters VALUES (1, 0);
         CREATE TABLE hot (id int PRIMARY KEY, v bigint NOT NULL)
           WITH (autovacuum_enabled = false);
         CREATE TABLE doctors (shift int, doc int, on_call bool NOT NULL, PRIMARY KEY (shift, doc))
           WITH (autovacuum_enabled = false);",
    )
    .execute(&mut *c)
    .await?;
    Ok(())
}

/// Refills the contended tables from scratch (TRUNCATE, not UPDATE: no dead tuples, no pages
/// left from earlier runs) and analyzes them, so runs start alike.
///
/// Returns the server's CPU meter, when the server runs on this machine.
async fn reset(opts: &PgConnectOptions) -> Res<Option<cpu::Server>> {
    let mut c = <PgConnection as sqlx::Connection>::connect_with(opts).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "TRUNCATE hot, doctors;
         INSERT INTO hot SELECT g, 0 FROM generate_series(1, {HOT_ROWS}) g;
         INSERT INTO doctors SELECT s, d, true
           FROM generate_series(1, {SHIFTS}) s, generate_series(1, {DOCTORS}) d;
         ANALYZE hot;
         ANALYZE doctors;"
    )))
    .execute(&mut c)
    .await?;
    let server = cpu::Server::find(&mut c).await;
    sqlx::Connection::close(c).await?;
    Ok(server)
}

/// Shifts with nobody on call: the write-skew invariant; 0 when serializable did its job.
pub async fn skew_violations(c: &mut PgConnection) -> Res<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT shift FROM doctors GROUP BY shift
           HAVING count(*) FILTER (WHERE on_call) < 1) s",
    )
    .fetch_one(&mut *c)
    .await?)
}

/// The workloads of the contention and strategy sections, in report order.
pub const CONTENDED: [Workload; 3] = [Workload::Hot, Workload::HotIndexed, Workload::Skew];

/// The contended workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// SELECT then UPDATE of one of 4 rows.
    Hot,
    /// The same with sequential scans disabled (`enable_seqscan = off`, both sides): the SELECT
    /// takes a predicate lock on the row it read instead of the whole table, so only clients on
    /// the same row conflict. A larger table gets that plan on its own.
    HotIndexed,
    /// On-call doctors: count those on call for a shift, go off call if ≥ 2 remain.
    Skew,
    /// `SELECT 1` outside a transaction: one round trip, what the machine charges for it.
    Ping,
}

impl Workload {
    /// Server settings of this workload's sessions, for both sides.
    pub fn settings(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Workload::HotIndexed => &[("enable_seqscan", "off")],
            _ => &[],
        }
    }

    /// The name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Hot => "hot row",
            Workload::HotIndexed => "hot row, index scan",
            Workload::Skew => "write skew",
            Workload::Ping => "`SELECT 1`",
        }
    }

    /// The pgbench script: the same SQL as our bodies.
    pub fn script(self) -> String {
        match self {
            Workload::Hot | Workload::HotIndexed => format!(
                "\\set id random(1, {HOT_ROWS})\n\
                 \\set d random(1, 1000)\n\
                 BEGIN ISOLATION LEVEL SERIALIZABLE;\n\
                 SELECT v FROM hot WHERE id = :id;\n\
                 UPDATE hot SET v = v + :d WHERE id = :id;\n\
                 COMMIT;\n"
            ),
            Workload::Skew => format!(
                "\\set s random(1, {SHIFTS})\n\
                 \\set d random(1, {DOCTORS})\n\
                 BEGIN ISOLATION LEVEL SERIALIZABLE;\n\
                 SELECT count(*) AS n FROM doctors WHERE shift = :s AND on_call \\gset\n\
                 \\if :n >= 2\n\
                 UPDATE doctors SET on_call = false WHERE shift = :s AND doc = :d;\n\
                 \\else\n\
                 UPDATE doctors SET on_call = true WHERE shift = :s AND doc = :d;\n\
                 \\endif\n\
                 COMMIT;\n"
            ),
            Workload::Ping => "SELECT 1;\n".to_string(),
        }
    }
}

async fn hot_body(tx: &mut PgConnection, id: i32, d: i64) -> Result<(), sqlx::Error> {
    let _v: i64 = sqlx::query_scalar("SELECT v FROM hot WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query("UPDATE hot SET v = v + $2 WHERE id = $1")
        .bind(id)
        .bind(d)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn skew_body(tx: &mut PgConnection, shift: i32, doc: i32) -> Result<(), sqlx::Error> {
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) AS n FROM doctors WHERE shift = $1 AND on_call")
            .bind(shift)
            .fetch_one(&mut *tx)
            .await?;
    let sql = if n >= 2 {
        "UPDATE doctors SET on_call = false WHERE shift = $1 AND doc = $2"
    } else {
        "UPDATE doctors SET on_call = true WHERE shift = $1 AND doc = $2"
    };
    sqlx::query(sql)
        .bind(shift)
        .bind(doc)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[serializable_retry(max = 50)]
async fn hot_attr(
    tx: &mut PgConnection,
    id: i32,
    d: i64,
    attempts: &AtomicU64,
) -> Result<(), sqlx::Error> {
    bump_counter(attempts);
    hot_body(tx, id, d).await
}

#[serializable_retry(max = 50)]
async fn skew_attr(
    tx: &mut PgConnection,
    shift: i32,
    doc: i32,
    attempts: &AtomicU64,
) -> Result<(), sqlx::Error> {
    bump_counter(attempts);
    skew_body(tx, shift, doc).await
}

/// Which implementation runs on our side.
#[derive(Clone)]
pub enum Imp {
    /// `#[serializable_retry(max = 50)]`, default backoff.
    Attribute,
    /// `sqlx_retry::transaction` with this policy.
    Plain(Arc<Policy>),
    /// Not ours: the loop a user writes by hand without the library, as pgbench retries. It
    /// retries `40001` and `40P01` at once, up to this many attempts, and leaves the ROLLBACK to
    /// sqlx, which sends it ahead of the next BEGIN. Through the pool, each attempt takes a
    /// connection with `pool.begin_with(…)`.
    Hand(u32),
    /// The same loop, ending each transaction as ours does so that `Ok` means committed
    /// ([`crate::OURS_COMMIT_SQL`], then the `Transaction` dropped: its ROLLBACK of the empty
    /// transaction goes ahead of the next BEGIN, or with the pool's release ping). What the loop
    /// would cost if it gave ours' guarantee.
    HandChecked(u32),
}

/// One call of `imp` on `src`, a held connection or the pool: its result and the attempts it
/// took.
async fn one<S: TransactionSource<PgConnection>>(
    src: S,
    w: Workload,
    imp: &Imp,
) -> (Result<(), sqlx::Error>, u64) {
    // The attribute's body borrows a counter of this call; the closure API's body must be
    // `'static`, so it gets a shared one.
    let attempts = AtomicU64::new(0);
    let shared = || Arc::new(AtomicU64::new(0));
    let result = match (w, imp) {
        (Workload::Ping, _) => Err(sqlx::Error::Configuration(
            "`SELECT 1` is pgbench's round-trip probe, not a transaction of ours".into(),
        )),
        (_, Imp::Hand(_) | Imp::HandChecked(_)) => Err(sqlx::Error::Configuration(
            "the hand-written loop runs through `hand`".into(),
        )),
        (Workload::Hot | Workload::HotIndexed, Imp::Attribute) => {
            let (id, d) = (fastrand::i32(1..=HOT_ROWS), fastrand::i64(1..=1000));
            hot_attr(src, id, d, &attempts).await
        }
        (Workload::Skew, Imp::Attribute) => {
            let (s, d) = (fastrand::i32(1..=SHIFTS), fastrand::i32(1..=DOCTORS));
            skew_attr(src, s, d, &attempts).await
        }
        (Workload::Hot | Workload::HotIndexed, Imp::Plain(policy)) => {
            let (id, d) = (fastrand::i32(1..=HOT_ROWS), fastrand::i64(1..=1000));
            let n = shared();
            let r = transaction(src, policy, |tx| {
                let a = n.clone();
                Box::pin(async move {
                    bump_counter(&a);
                    hot_body(tx, id, d).await
                })
            })
            .await;
            attempts.store(n.load(Ordering::Relaxed), Ordering::Relaxed);
            r
        }
        (Workload::Skew, Imp::Plain(policy)) => {
            let (s, d) = (fastrand::i32(1..=SHIFTS), fastrand::i32(1..=DOCTORS));
            let n = shared();
            let r = transaction(src, policy, |tx| {
                let a = n.clone();
                Box::pin(async move {
                    bump_counter(&a);
                    skew_body(tx, s, d).await
                })
            })
            .await;
            attempts.store(n.load(Ordering::Relaxed), Ordering::Relaxed);
            r
        }
    };
    (result, attempts.into_inner())
}

/// One call of the hand-written loop ([`Imp::Hand`], or with `checked` [`Imp::HandChecked`]):
/// on `held` when given, else each attempt takes a connection from `pool`
/// (`pool.begin_with(…)`), as a user of the pool writes it. Its result and the attempts it took.
async fn hand(
    mut held: Option<&mut PgConnection>,
    pool: &PgPool,
    w: Workload,
    max: u32,
    checked: bool,
) -> (Result<(), sqlx::Error>, u64) {
    const BEGIN: &str = "BEGIN ISOLATION LEVEL SERIALIZABLE";
    let (row, value) = match w {
        Workload::Hot | Workload::HotIndexed => (fastrand::i32(1..=HOT_ROWS), 0),
        Workload::Skew => (fastrand::i32(1..=SHIFTS), fastrand::i32(1..=DOCTORS)),
        Workload::Ping => {
            let e = "`SELECT 1` is pgbench's round-trip probe, not a transaction";
            return (Err(sqlx::Error::Configuration(e.into())), 0);
        }
    };
    let d = fastrand::i64(1..=1000);
    let mut tries = 0;
    loop {
        tries += 1;
        let result = async {
            let mut tx = match held.as_deref_mut() {
                Some(conn) => conn.begin_with(BEGIN).await?,
                None => pool.begin_with(BEGIN).await?,
            };
            match w {
                Workload::Skew => skew_body(&mut tx, row, value).await?,
                _ => hot_body(&mut tx, row, d).await?,
            }
            if checked {
                sqlx::raw_sql(crate::OURS_COMMIT_SQL)
                    .execute(&mut *tx)
                    .await
                    .map(drop)
            } else {
                tx.commit().await
            }
        }
        .await;
        match result {
            Err(sqlx::Error::Database(e))
                if tries < max && matches!(e.code().as_deref(), Some("40001" | "40P01")) => {}
            other => return (other, u64::from(tries)),
        }
    }
}

/// What one contended run measured.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    /// Committed transactions.
    pub committed: u64,
    /// Transactions that gave up (an error returned to the caller).
    pub failed: u64,
    /// Retries (attempts beyond the first).
    pub retries: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latency of each committed transaction, µs, sorted.
    pub lat_us: Vec<f64>,
    /// pgbench's own tps (excluding connection time); `None` for ours.
    pub reported_tps: Option<f64>,
    /// pgbench's latency average (ms); `None` for ours.
    pub reported_lat_avg_ms: Option<f64>,
    /// CPU time of the client side: our process, or pgbench's; `None` where unreadable.
    pub cpu_client: Option<Duration>,
    /// CPU time of the server (postmaster and the backends it reaped); `None` where unreadable.
    pub cpu_server: Option<Duration>,
    /// The most attempts any one call needed, failed calls included (pgbench: the retries of
    /// its per-transaction log, plus one); `None` where unknown.
    pub max_attempts: Option<u64>,
    /// Context switches over the run (see [`counters`]); `None` where not counted.
    pub counted: Option<counters::Tally>,
    /// Round trips (simple queries and Syncs) of the run, counted by a proxy it went through;
    /// `None` without one.
    pub round_trips: Option<u64>,
}

impl RunResult {
    /// Adds another run of the same implementation and workload: counts and time add up,
    /// latencies pool together. A pgbench run counts with the time its own tps implies
    /// (connection time excluded), so the sum's tps is committed / summed time on both sides.
    pub fn absorb(&mut self, other: RunResult) {
        self.elapsed = self.measured_time();
        self.elapsed += other.measured_time();
        self.reported_tps = None;
        self.reported_lat_avg_ms = None;
        self.committed += other.committed;
        self.failed += other.failed;
        self.retries += other.retries;
        self.lat_us.extend(other.lat_us);
        self.lat_us.sort_by(f64::total_cmp);
        let add = |a: Option<Duration>, b: Option<Duration>| Some(a? + b?);
        self.cpu_client = add(self.cpu_client, other.cpu_client);
        self.cpu_server = add(self.cpu_server, other.cpu_server);
        self.max_attempts = self
            .max_attempts
            .zip(other.max_attempts)
            .map(|(a, b)| a.max(b));
        self.round_trips = self.round_trips.zip(other.round_trips).map(|(a, b)| a + b);
        self.counted = self.counted.zip(other.counted).map(|(mut a, b)| {
            a.absorb(b);
            a
        });
    }

    /// A counter of [`counters::Tally`] per committed transaction: the count over the
    /// counted stretch of the run, divided by the transactions committed in it at the run's
    /// rate.
    pub fn per_commit(&self, count: impl Fn(&counters::Tally) -> Option<u64>) -> Option<f64> {
        let t = self.counted.as_ref()?;
        let n = count(t)? as f64;
        let commits = self.tps() * t.over.as_secs_f64();
        (commits > 0.0).then(|| n / commits)
    }

    /// CPU µs per committed transaction: `(client, server)`.
    pub fn cpu_us_per_commit(&self) -> (Option<f64>, Option<f64>) {
        let per =
            |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e6 / self.committed.max(1) as f64);
        (per(self.cpu_client), per(self.cpu_server))
    }

    /// Adds `r` to the sum in `slot`, or makes it the sum.
    pub fn accumulate(slot: &mut Option<RunResult>, r: RunResult) {
        match slot {
            Some(sum) => sum.absorb(r),
            None => *slot = Some(r),
        }
    }

    /// The time the committed transactions took: pgbench's, from its own tps, else the wall time.
    fn measured_time(&self) -> Duration {
        match self.reported_tps {
            Some(tps) if tps > 0.0 => Duration::from_secs_f64(self.committed as f64 / tps),
            _ => self.elapsed,
        }
    }

    /// Round trips per committed transaction, where a proxy counted them.
    pub fn round_trips_per_commit(&self) -> Option<f64> {
        Some(self.round_trips? as f64 / self.committed.max(1) as f64)
    }

    /// Committed transactions per second.
    pub fn tps(&self) -> f64 {
        self.reported_tps
            .unwrap_or_else(|| self.committed as f64 / self.elapsed.as_secs_f64().max(1e-9))
    }

    /// Retries per committed transaction.
    pub fn retries_per_commit(&self) -> f64 {
        self.retries as f64 / (self.committed.max(1)) as f64
    }

    /// A latency percentile, ms.
    pub fn pct_ms(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        let i = ((self.lat_us.len() as f64 * p) as usize).min(self.lat_us.len() - 1);
        self.lat_us[i] / 1e3
    }

    /// One line for the progress output.
    pub fn summary(&self) -> String {
        format!(
            "{:.0} tx/s, {} failed, {:.3} retries/commit, p50 {:.2} ms, p99 {:.2} ms",
            self.tps(),
            self.failed,
            self.retries_per_commit(),
            self.pct_ms(0.50),
            self.pct_ms(0.99)
        )
    }
}

/// How our clients get their connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conns {
    /// Each client holds one connection for the whole run, as a pgbench client does, and the
    /// attribute runs on its `&mut PgConnection`.
    Held,
    /// Each call takes a connection from the pool and gives it back, and sqlx pings it on the
    /// way back.
    Pooled,
}

/// Runs `clients` tasks of workload `w` through `imp` for `dur` on a fresh pool of `clients`
/// connections (no ping on acquire), each task taking its connections as `conns` says.
pub async fn run_ours(
    opts: &PgConnectOptions,
    w: Workload,
    imp: &Imp,
    conns: Conns,
    clients: usize,
    dur: Duration,
) -> Res<RunResult> {
    run_ours_via(opts, w, imp, conns, clients, dur, None).await
}

/// [`run_ours`], with `opts` leading through `proxy` when given: the run then records the
/// round trips of its measured stretch ([`RunResult::round_trips`]).
pub async fn run_ours_via(
    opts: &PgConnectOptions,
    w: Workload,
    imp: &Imp,
    conns: Conns,
    clients: usize,
    dur: Duration,
    proxy: Option<&PgProxy>,
) -> Res<RunResult> {
    let server = reset(opts).await?;
    let pool = pool(
        opts.clone().options(w.settings().iter().copied()),
        clients as u32,
        false,
    )
    .await?;
    // A short warm-up fills the statement caches of every connection.
    run_tasks(&pool, w, imp, conns, clients, Duration::from_millis(100)).await;
    let backends = match server {
        Some(_) => backends_of(&pool, clients).await?,
        None => Vec::new(),
    };
    // The server's figure covers the pool's backends from their start to their exit, warm-up
    // and connection set-up included, as pgbench's covers its own connections.
    let mut meter = cpu::Meter::start(cpu::own, server);
    meter.watch(backends.clone());
    let reading = counters::Reading::take(std::process::id(), &backends);
    let proxied = proxy.map(PgProxy::stats);
    let start = Instant::now();
    let per_task = run_tasks(&pool, w, imp, conns, clients, dur).await;
    let elapsed = start.elapsed();
    if proxy.is_some() {
        // Let the pool's release pings of the last calls land.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let round_trips = proxy
        .zip(proxied)
        .map(|(p, before)| p.stats().since(&before).round_trips);
    let cpu_client = meter.client();
    let counted =
        counters::Reading::take(std::process::id(), &backends).since(&reading, server.is_some());
    pool.close().await;
    let mut r = RunResult {
        elapsed,
        cpu_client,
        cpu_server: meter.server(opts).await,
        max_attempts: Some(0),
        counted: Some(counted),
        round_trips,
        ..RunResult::default()
    };
    let mut attempts = 0;
    for t in per_task {
        r.committed += t.committed;
        r.failed += t.failed;
        r.lat_us.extend(t.lat_us);
        attempts += t.attempts;
        r.max_attempts = r.max_attempts.max(Some(t.max_attempts));
    }
    r.lat_us.sort_by(f64::total_cmp);
    r.retries = attempts.saturating_sub(r.committed + r.failed);
    Ok(r)
}

/// The backend process ids of the `n` connections of `pool`.
async fn backends_of(pool: &PgPool, n: usize) -> Res<Vec<u32>> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.acquire().await?);
    }
    let mut pids = Vec::new();
    for c in &mut held {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut **c)
            .await?;
        pids.extend(u32::try_from(pid).ok());
    }
    Ok(pids)
}

/// What one client task of a run did.
#[derive(Default)]
struct TaskResult {
    committed: u64,
    failed: u64,
    /// Latency of each committed call, µs.
    lat_us: Vec<f64>,
    /// Attempts of all calls.
    attempts: u64,
    /// The most attempts one call took.
    max_attempts: u64,
}

async fn run_tasks(
    pool: &PgPool,
    w: Workload,
    imp: &Imp,
    conns: Conns,
    clients: usize,
    dur: Duration,
) -> Vec<TaskResult> {
    let deadline = Instant::now() + dur;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (pool, imp) = (pool.clone(), imp.clone());
        set.spawn(async move {
            let mut t = TaskResult::default();
            let mut held = match conns {
                Conns::Held => Some(pool.acquire().await.expect("the pool was opened in full")),
                Conns::Pooled => None,
            };
            while Instant::now() < deadline {
                let start = Instant::now();
                let (result, attempts) = match (held.as_deref_mut(), &imp) {
                    (conn, Imp::Hand(max)) => hand(conn, &pool, w, *max, false).await,
                    (conn, Imp::HandChecked(max)) => hand(conn, &pool, w, *max, true).await,
                    (Some(conn), _) => one(conn, w, &imp).await,
                    (None, _) => one(&pool, w, &imp).await,
                };
                t.attempts += attempts;
                t.max_attempts = t.max_attempts.max(attempts);
                match result {
                    Ok(()) => {
                        t.committed += 1;
                        t.lat_us.push(start.elapsed().as_secs_f64() * 1e6);
                    }
                    Err(e) => {
                        t.failed += 1;
                        if t.failed == 1 {
                            eprintln!("    a transaction failed: {e}");
                        }
                    }
                }
            }
            t
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.expect("benchmark task panicked"));
    }
    out
}

/// The pgbench binary and how to reach the benchmark schema with it.
pub struct PgBench {
    bin: PathBuf,
    schema: String,
}

impl PgBench {
    /// Finds `pgbench` in `/usr/lib/postgresql/*/bin` (newest) or on `PATH`.
    pub fn find(_opts: &PgConnectOptions, schema: &str) -> Option<PgBench> {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin/pgbench"))
            .filter(|p| p.exists())
            .collect();
        found.sort_by_key(|p| {
            p.parent()
                .and_then(|b| b.parent())
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        });
        let bin = found.pop().or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("pgbench"))
                    .find(|p| p.exists())
            })
        })?;
        Some(PgBench {
            bin,
            schema: schema.to_owned(),
        })
    }

    /// The `pgbench --version` line.
    pub fn version(&self) -> String {
        std::process::Command::new(&self.bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// Runs workload `w` with `clients` clients for `dur` (whole seconds, at least 1).
    pub async fn run(
        &self,
        opts: &PgConnectOptions,
        w: Workload,
        clients: usize,
        dur: Duration,
        max_tries: u32,
    ) -> Res<RunResult> {
        self.run_via(opts, w, clients, dur, max_tries, None).await
    }

    /// [`PgBench::run`], with `opts` leading through `proxy` when given: the run then records
    /// pgbench's round trips, its connections' set-up included, and counts no context
    /// switches (their probe would go through the proxy too).
    pub async fn run_via(
        &self,
        opts: &PgConnectOptions,
        w: Workload,
        clients: usize,
        dur: Duration,
        max_tries: u32,
        proxy: Option<&PgProxy>,
    ) -> Res<RunResult> {
        let server = reset(opts).await?;
        let dir = std::env::temp_dir().join(format!(
            "sqlx-retry-pgbench-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir)?;
        let script = dir.join("script.sql");
        std::fs::write(&script, w.script())?;
        let secs = dur.as_secs_f64().round().max(1.0) as u64;
        let mut cmd = self.command(opts, w, clients, secs, max_tries, &dir);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut meter = cpu::Meter::start(cpu::children, server);
        let proxied = proxy.map(PgProxy::stats);
        let child = cmd.spawn()?;
        let pid = child.id();
        let out = child.wait_with_output();
        tokio::pin!(out);
        // pgbench's threads and backends are counted while it runs, from when all its clients
        // are connected to the last reading before it exits (every 20 ms): an exited process
        // can no longer be read.
        let mut asker = match (server, pid, proxy) {
            (Some(_), Some(_), None) => <PgConnection as Connection>::connect_with(opts).await.ok(),
            _ => None,
        };
        let (mut first, mut last, mut backends) = (None, None, Vec::new());
        let out = loop {
            tokio::select! {
                out = &mut out => break out?,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            let (Some(c), Some(pid)) = (asker.as_mut(), pid) else {
                continue;
            };
            if backends.len() < clients {
                backends = counters::pgbench_backends(c).await;
            }
            if backends.len() >= clients {
                let now = counters::Reading::take(pid, &backends);
                match &first {
                    None => first = Some(now),
                    Some(f) if now.covers(f) => last = Some(now),
                    // pgbench has begun to disconnect: keep the reading before.
                    Some(_) => {}
                }
            }
        };
        let round_trips = proxy
            .zip(proxied)
            .map(|(p, before)| p.stats().since(&before).round_trips);
        if let Some(c) = asker {
            let _ = c.close().await;
        }
        meter.watch(backends);
        let (cpu_client, cpu_server) = (meter.client(), meter.server(opts).await);
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if !out.status.success() {
            return Err(format!("pgbench failed ({}):\n{stdout}\n{stderr}", out.status).into());
        }
        let mut r = parse_summary(&stdout)
            .ok_or_else(|| format!("could not parse pgbench output:\n{stdout}\n{stderr}"))?;
        (r.lat_us, r.max_attempts) = latencies(&dir)?;
        r.elapsed = Duration::from_secs(secs);
        r.counted = first.zip(last).map(|(a, b)| b.since(&a, true));
        r.round_trips = round_trips;
        r.cpu_client = cpu_client;
        r.cpu_server = cpu_server;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(r)
    }

    /// The pgbench command of a run of workload `w`: `clients` clients for `secs` seconds, the
    /// script `dir/script.sql`, the per-transaction logs into `dir`.
    fn command(
        &self,
        opts: &PgConnectOptions,
        w: Workload,
        clients: usize,
        secs: u64,
        max_tries: u32,
        dir: &Path,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("-h")
            .arg(opts.get_host())
            .arg("-p")
            .arg(opts.get_port().to_string())
            .arg("-U")
            .arg(opts.get_username())
            .args(["-n", "-M", "prepared", "-r", "--failures-detailed", "-l"])
            .arg(format!("--log-prefix={}", dir.join("pgb").display()))
            .arg(format!("--max-tries={max_tries}"))
            .arg("-f")
            .arg(dir.join("script.sql"))
            .arg("-c")
            .arg(clients.to_string())
            .arg("-j")
            .arg(clients.min(2).to_string())
            .arg("-T")
            .arg(secs.to_string())
            .arg(opts.get_database().unwrap_or("postgres"))
            .env("PGOPTIONS", {
                let mut o = format!("-c search_path={}", self.schema);
                for (k, v) in w.settings() {
                    o.push_str(&format!(" -c {k}={v}"));
                }
                o
            })
            .current_dir(dir)
            .stdin(Stdio::null());
        cmd
    }
}

/// The latencies (µs, sorted) of the committed transactions in pgbench's per-transaction logs
/// in `dir`, and the most attempts any transaction took (`None` when the logs carry no
/// retries).
fn latencies(dir: &Path) -> Res<(Vec<f64>, Option<u64>)> {
    let mut lat_us = Vec::new();
    let mut max_attempts = None;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_log = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("pgb."));
        if !is_log {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            let (us, attempts) = parse_log_line(line);
            lat_us.extend(us);
            max_attempts = max_attempts.max(attempts);
        }
    }
    lat_us.sort_by(f64::total_cmp);
    Ok((lat_us, max_attempts))
}

/// One line of pgbench's per-transaction log (PostgreSQL 15+, no `--rate`):
/// `client tx_no latency_us script epoch epoch_us retries`, where a failed transaction has
/// `serialization`, `deadlock` or `failed` for its latency and `retries` is there when
/// `--max-tries` is not 1. Its latency (µs) when it committed, and its attempts.
fn parse_log_line(line: &str) -> (Option<f64>, Option<u64>) {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let latency = fields.get(2).and_then(|f| f.parse().ok());
    let attempts = match fields.len() {
        7 => fields[6].parse::<u64>().ok().map(|r| r + 1),
        _ => None,
    };
    (latency, attempts)
}

fn first_number(s: &str) -> Option<f64> {
    let s = s.trim_start();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    s[..end].parse().ok()
}

fn after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.trim().strip_prefix(key))
}

/// Parses pgbench's summary (PostgreSQL 15+ with `--max-tries` and `--failures-detailed`).
pub fn parse_summary(text: &str) -> Option<RunResult> {
    let processed = first_number(after(text, "number of transactions actually processed:")?)?;
    let failed = after(text, "number of failed transactions:")
        .and_then(first_number)
        .unwrap_or(0.0);
    let retries = after(text, "total number of retries:")
        .and_then(first_number)
        .unwrap_or(0.0);
    let lat = after(text, "latency average =").and_then(first_number);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps =") && l.contains("without initial connection time"))
        .and_then(|l| first_number(l.trim_start_matches("tps =")));
    Some(RunResult {
        committed: processed as u64,
        failed: failed as u64,
        retries: retries as u64,
        reported_tps: tps,
        reported_lat_avg_ms: lat,
        ..RunResult::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pgbench_15_summary() {
        let text = "transaction type: script.sql
scaling factor: 1
query mode: prepared
number of clients: 16
number of threads: 2
maximum number of tries: 50
duration: 10 s
number of transactions actually processed: 51234
number of failed transactions: 3 (0.006%)
number of serialization failures: 3 (0.006%)
number of deadlock failures: 0 (0.000%)
number of transactions retried: 4321 (8.4%)
total number of retries: 9876
latency average = 3.117 ms
initial connection time = 21.321 ms
tps = 5123.456789 (without initial connection time)
";
        let r = parse_summary(text).unwrap();
        assert_eq!((r.committed, r.failed, r.retries), (51234, 3, 9876));
        assert_eq!(r.reported_tps, Some(5123.456789));
        assert_eq!(r.reported_lat_avg_ms, Some(3.117));
    }

    #[test]
    fn pgbench_log_lines_give_latency_and_attempts() {
        assert_eq!(
            parse_log_line("3 117 2210 0 1700000000 123456 2"),
            (Some(2210.0), Some(3))
        );
        assert_eq!(
            parse_log_line("0 5 serialization 0 1700000000 123456 49"),
            (None, Some(50))
        );
        // Without retries (`--max-tries=1`).
        assert_eq!(
            parse_log_line("0 5 812 0 1700000000 123456"),
            (Some(812.0), None)
        );
    }

    #[test]
    fn summed_pgbench_runs_keep_their_own_time() {
        let run = |committed, tps| RunResult {
            committed,
            reported_tps: Some(tps),
            elapsed: Duration::from_secs(10),
            ..RunResult::default()
        };
        let mut sum = run(1000, 200.0);
        sum.absorb(run(3000, 300.0));
        // 5 s + 10 s for 4000 transactions, not 20 s of wall time.
        assert!((sum.tps() - 4000.0 / 15.0).abs() < 1e-6, "{}", sum.tps());
    }
}
