//! Section 6: a read-mostly workload on a primary + hot standby pair (the testkit's
//! [`PgReplicaPair`]), through `&PgPool` of the primary, through `&cluster`, and through a
//! session per client; then what a session's read costs per call beside a plain `replica` read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection, PgPool};
use sqlx_retry::cluster::ClusterBuilder;
use sqlx_retry::cluster::Session;
use sqlx_retry::{Cluster, serializable_retry};
use sqlx_retry_testkit::{PgProxy, PgReplicaPair};

use crate::cpu;
use crate::{Plan, Res, bootstrap_median_ci, bump_counter, median_f};

/// Client tasks of the mixed workload.
pub const CLIENTS: usize = 16;
/// Accounts in the table.
pub const ACCOUNTS: i32 = 1000;
/// The share of calls that are `replica` reads; the rest are transfers.
pub const READ_SHARE: f64 = 0.9;
/// Every account's balance at the start.
const INITIAL_BALANCE: i64 = 1000;

/// How the clients of the mixed workload reach the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `&PgPool` of the primary: every call runs there.
    Pool,
    /// `&cluster`: `replica` reads on the standby (when it is up and within `max_lag`).
    Cluster,
    /// `&session`, one per client task: reads on the standby once it has replayed the client's
    /// own last transfer.
    Session,
}

impl Via {
    /// The configurations, in report order.
    pub const ALL: [Via; 3] = [Via::Pool, Via::Cluster, Via::Session];

    /// The row's name in the report.
    pub fn title(self) -> &'static str {
        match self {
            Via::Pool => "`&PgPool` of the primary",
            Via::Cluster => "`&cluster` (primary + standby)",
            Via::Session => "`&session`, one per client",
        }
    }
}

/// Calls of one kind: those that returned `Ok`, those that returned an error, the retries,
/// and the latency of each `Ok` call.
#[derive(Debug, Clone, Default)]
pub struct Calls {
    /// Calls that returned `Ok`.
    pub ok: u64,
    /// Calls that returned an error.
    pub failed: u64,
    /// Attempts beyond the first.
    pub retries: u64,
    /// Latency of each `Ok` call, µs, sorted.
    pub lat_us: Vec<f64>,
}

impl Calls {
    fn absorb(&mut self, other: Calls) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.retries += other.retries;
        self.lat_us.extend(other.lat_us);
        self.lat_us.sort_by(f64::total_cmp);
    }

    /// A latency percentile, ms; 0 without calls.
    pub fn pct_ms(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        let i = ((self.lat_us.len() as f64 * p) as usize).min(self.lat_us.len() - 1);
        self.lat_us[i] / 1e3
    }
}

/// One configuration's figures on the mixed workload, summed over rounds.
#[derive(Debug, Clone)]
pub struct MixRun {
    /// The configuration.
    pub via: Via,
    /// Wall time of the runs.
    pub elapsed: Duration,
    /// The `replica` reads.
    pub reads: Calls,
    /// The transfers.
    pub writes: Calls,
    /// Reads that ran on the standby (`pg_is_in_recovery()` in the read's own query).
    pub on_standby: u64,
    /// The reads that came right after the same client's own transfer (they read the account it
    /// debited); a subset of `reads`.
    pub after_write: Calls,
    /// Of those, the reads that missed that transfer (they saw an older version of the row).
    pub stale: u64,
    /// CPU time of the benchmark process (the clients).
    pub cpu_client: Option<Duration>,
    /// CPU time of the primary, all its processes.
    pub cpu_primary: Option<Duration>,
    /// CPU time of the standby, all its processes.
    pub cpu_standby: Option<Duration>,
    /// Of the standby's, its WAL replay (startup process and WAL receiver).
    pub cpu_replay: Option<Duration>,
}

impl MixRun {
    fn empty(via: Via) -> MixRun {
        MixRun {
            via,
            elapsed: Duration::ZERO,
            reads: Calls::default(),
            writes: Calls::default(),
            on_standby: 0,
            after_write: Calls::default(),
            stale: 0,
            cpu_client: Some(Duration::ZERO),
            cpu_primary: Some(Duration::ZERO),
            cpu_standby: Some(Duration::ZERO),
            cpu_replay: Some(Duration::ZERO),
        }
    }

    fn absorb(&mut self, other: MixRun) {
        let add = |a: Option<Duration>, b: Option<Duration>| Some(a? + b?);
        self.elapsed += other.elapsed;
        self.reads.absorb(other.reads);
        self.writes.absorb(other.writes);
        self.on_standby += other.on_standby;
        self.after_write.absorb(other.after_write);
        self.stale += other.stale;
        self.cpu_client = add(self.cpu_client, other.cpu_client);
        self.cpu_primary = add(self.cpu_primary, other.cpu_primary);
        self.cpu_standby = add(self.cpu_standby, other.cpu_standby);
        self.cpu_replay = add(self.cpu_replay, other.cpu_replay);
    }

    fn secs(&self) -> f64 {
        self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Reads that returned `Ok`, per second.
    pub fn reads_per_s(&self) -> f64 {
        self.reads.ok as f64 / self.secs()
    }

    /// Transfers that returned `Ok`, per second.
    pub fn writes_per_s(&self) -> f64 {
        self.writes.ok as f64 / self.secs()
    }

    /// The share of the reads that ran on the standby, 0..=1.
    pub fn standby_share(&self) -> f64 {
        self.on_standby as f64 / self.reads.ok.max(1) as f64
    }

    /// `d` in ms per second of the run: the share of one CPU it took, × 1000.
    pub fn per_s_ms(&self, d: Option<Duration>) -> Option<f64> {
        d.map(|d| d.as_secs_f64() * 1e3 / self.secs())
    }

    /// `d` in µs per call (reads and transfers).
    pub fn per_call_us(&self, d: Option<Duration>) -> Option<f64> {
        let calls = (self.reads.ok + self.writes.ok).max(1) as f64;
        d.map(|d| d.as_secs_f64() * 1e6 / calls)
    }
}

/// How the micro-measurement's reads reach the standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Micro {
    /// The standby's own `&PgPool`: no routing at all.
    StandbyPool,
    /// `&cluster`.
    Cluster,
    /// `&session` that has written once (the standby has replayed it): every read sends the
    /// replay check with its BEGIN.
    Session,
}

impl Micro {
    /// The variants, in report order.
    pub const ALL: [Micro; 3] = [Micro::StandbyPool, Micro::Cluster, Micro::Session];

    /// The row's name in the report.
    pub fn title(self) -> &'static str {
        match self {
            Micro::StandbyPool => "`&PgPool` of the standby (no routing)",
            Micro::Cluster => "`&cluster`",
            Micro::Session => "`&session` after one write",
        }
    }
}

/// The micro-measurement's figures for one variant.
#[derive(Debug, Clone)]
pub struct MicroRun {
    /// The variant.
    pub micro: Micro,
    /// Median µs per read.
    pub median_us: f64,
    /// p99 µs per read.
    pub p99_us: f64,
    /// The median over blocks of (block time of this variant / block time of `&cluster`).
    pub vs_cluster: f64,
    /// 95 % bootstrap interval of `vs_cluster`.
    pub vs_cluster_ci: (f64, f64),
    /// Round trips per read, both servers together, counted at TCP proxies.
    pub round_trips: Option<f64>,
    /// Reads that ran on the standby, of `n`.
    pub on_standby: usize,
    /// Reads timed.
    pub n: usize,
}

/// Section 6's figures.
#[derive(Debug, Clone)]
pub struct Replicas {
    /// The mixed workload, per configuration in [`Via::ALL`] order, summed over rounds.
    pub runs: Vec<MixRun>,
    /// The micro-measurement, per variant in [`Micro::ALL`] order.
    pub micro: Vec<MicroRun>,
    /// The cluster's `max_lag`.
    pub max_lag: Duration,
    /// Whether the balances still summed to what they started with after every run.
    pub balance_kept: bool,
    /// The PostgreSQL version of the pair.
    pub version: String,
}

/// Runs section 6 on a private pair, started here and stopped at the end. A pair that can't
/// start (no PostgreSQL server programs, say) fails the run and says how to get them.
pub async fn run(plan: &Plan) -> Res<Replicas> {
    let pair = match tokio::task::spawn_blocking(PgReplicaPair::start).await? {
        Ok(pair) => pair,
        Err(e) => {
            return Err(format!(
                "section 6 needs a primary + standby pair, which did not start: {e}\n\
                 It runs PostgreSQL's server programs from /usr/lib/postgresql/*/bin (Debian: \
                 `apt-get install postgresql`); leave the section out with `--only`."
            )
            .into());
        }
    };
    let result = on_pair(plan, &pair).await;
    // Stopping the pair blocks (pg_ctl).
    tokio::task::spawn_blocking(move || drop(pair)).await?;
    result
}

async fn on_pair(plan: &Plan, pair: &PgReplicaPair) -> Res<Replicas> {
    let schema = pair.isolated_schema().await;
    let (p_opts, s_opts) = (schema.primary_options(), schema.standby_options());
    let mut admin = PgConnection::connect_with(&p_opts).await?;
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut admin)
        .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, v bigint NOT NULL);
         INSERT INTO accounts SELECT g, {INITIAL_BALANCE}, 0 FROM generate_series(1, {ACCOUNTS}) g;
         ANALYZE accounts;"
    )))
    .execute(&mut admin)
    .await?;
    pair.wait_for_replay().await?;
    let primary_cpu = cpu::Server::find(&mut admin).await;
    let mut standby_admin = PgConnection::connect_with(&s_opts).await?;
    let standby_cpu = cpu::Server::find(&mut standby_admin).await;
    standby_admin.close().await?;

    let primary = crate::workloads::pool(p_opts.clone(), CLIENTS as u32, false).await?;
    let standby = crate::workloads::pool(s_opts.clone(), CLIENTS as u32, false).await?;
    let max_lag = ClusterBuilder::DEFAULT_MAX_LAG;
    let cluster = Cluster::builder(primary.clone())
        .replica(standby.clone())
        .max_lag(max_lag)
        .build();
    let meters = Meters {
        primary: primary_cpu,
        standby: standby_cpu,
    };

    // Warm-up: statement caches of every connection, the cluster's first lag measure.
    for via in Via::ALL {
        mix(via, &primary, &cluster, Duration::from_millis(150), meters).await;
    }
    let mut runs: Vec<MixRun> = Via::ALL.into_iter().map(MixRun::empty).collect();
    let mut balance_kept = true;
    for round in 0..plan.replica_rounds {
        for k in 0..Via::ALL.len() {
            let i = (k + round) % Via::ALL.len();
            let via = Via::ALL[i];
            // Each run starts from a vacuumed table that the standby has replayed.
            sqlx::query("VACUUM accounts").execute(&mut admin).await?;
            pair.wait_for_replay().await?;
            let r = mix(via, &primary, &cluster, plan.replicas, meters).await;
            eprintln!("  round {} {:?}: {}", round + 1, via, summary(&r));
            runs[i].absorb(r);
            let total: i64 = sqlx::query_scalar("SELECT sum(balance)::int8 FROM accounts")
                .fetch_one(&mut admin)
                .await?;
            balance_kept &= total == INITIAL_BALANCE * i64::from(ACCOUNTS);
        }
    }
    pair.wait_for_replay().await?;
    let micro = micro(plan, pair, &schema, &standby, &cluster).await?;
    primary.close().await;
    standby.close().await;
    admin.close().await?;
    Ok(Replicas {
        runs,
        micro,
        max_lag,
        balance_kept,
        version,
    })
}

fn summary(r: &MixRun) -> String {
    format!(
        "{:.0} reads/s ({:.0} % on the standby, p99 {:.2} ms), {:.0} transfers/s (p99 {:.2} ms), \
         {} failed, {} retries, {} of {} reads after the client's transfer missed it",
        r.reads_per_s(),
        r.standby_share() * 100.0,
        r.reads.pct_ms(0.99),
        r.writes_per_s(),
        r.writes.pct_ms(0.99),
        r.reads.failed + r.writes.failed,
        r.reads.retries + r.writes.retries,
        r.stale,
        r.after_write.ok,
    )
}

// ---------------------------------------------------------------------------------------------
// The calls
// ---------------------------------------------------------------------------------------------

/// Account `id`'s balance and row version, and whether the read ran on a standby (in the same
/// query, so it costs no round trip). May run on a standby.
#[serializable_retry(read_only, isolation = "repeatable_read", replica)]
async fn balance(
    tx: &mut PgConnection,
    id: i32,
    attempts: &AtomicU64,
) -> Result<(i64, i64, bool), sqlx::Error> {
    bump_counter(attempts);
    sqlx::query_as("SELECT balance, v, pg_is_in_recovery() FROM accounts WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await
}

/// Moves up to `amount` from `from` to `to` (no more than `from` holds): reads both balances,
/// updates both (the lower id first); returns the version it wrote to `from`. The default
/// policy: SERIALIZABLE, on the primary.
#[serializable_retry]
async fn transfer(
    tx: &mut PgConnection,
    from: i32,
    to: i32,
    amount: i64,
    attempts: &AtomicU64,
) -> Result<i64, sqlx::Error> {
    bump_counter(attempts);
    let rows: Vec<(i32, i64)> =
        sqlx::query_as("SELECT id, balance FROM accounts WHERE id IN ($1, $2)")
            .bind(from)
            .bind(to)
            .fetch_all(&mut *tx)
            .await?;
    let held = rows.iter().find(|r| r.0 == from).map_or(0, |r| r.1);
    let amount = amount.min(held.max(0));
    let mut from_v = 0;
    let mut moves = [(from, -amount), (to, amount)];
    moves.sort_by_key(|m| m.0);
    for (id, delta) in moves {
        let v: i64 = sqlx::query_scalar(
            "UPDATE accounts SET balance = balance + $2, v = v + 1 WHERE id = $1 RETURNING v",
        )
        .bind(id)
        .bind(delta)
        .fetch_one(&mut *tx)
        .await?;
        if id == from {
            from_v = v;
        }
    }
    Ok(from_v)
}

/// Where one client task sends its calls.
enum Target {
    Pool(PgPool),
    Cluster(Cluster),
    Session(Session),
}

impl Target {
    async fn read(&self, id: i32, attempts: &AtomicU64) -> Result<(i64, i64, bool), sqlx::Error> {
        match self {
            Target::Pool(p) => balance(p, id, attempts).await,
            Target::Cluster(c) => balance(c, id, attempts).await,
            Target::Session(s) => balance(s, id, attempts).await,
        }
    }

    async fn transfer(
        &self,
        from: i32,
        to: i32,
        amount: i64,
        attempts: &AtomicU64,
    ) -> Result<i64, sqlx::Error> {
        match self {
            Target::Pool(p) => transfer(p, from, to, amount, attempts).await,
            Target::Cluster(c) => transfer(c, from, to, amount, attempts).await,
            Target::Session(s) => transfer(s, from, to, amount, attempts).await,
        }
    }
}

/// The servers' CPU meters, where readable.
#[derive(Clone, Copy)]
struct Meters {
    primary: Option<cpu::Server>,
    standby: Option<cpu::Server>,
}

/// What one client task counted.
#[derive(Default)]
struct ClientCount {
    reads: Calls,
    writes: Calls,
    on_standby: u64,
    after_write: Calls,
    stale: u64,
}

/// Runs the mixed workload through `via` for `dur` with [`CLIENTS`] tasks.
async fn mix(via: Via, primary: &PgPool, cluster: &Cluster, dur: Duration, m: Meters) -> MixRun {
    let read_attempts = Arc::new(AtomicU64::new(0));
    let write_attempts = Arc::new(AtomicU64::new(0));
    let client0 = cpu::own();
    let (primary0, standby0) = (
        m.primary.and_then(|s| s.tree()),
        m.standby.and_then(|s| s.tree()),
    );
    let start = Instant::now();
    let deadline = start + dur;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let target = match via {
            Via::Pool => Target::Pool(primary.clone()),
            Via::Cluster => Target::Cluster(cluster.clone()),
            Via::Session => Target::Session(cluster.session()),
        };
        let (ra, wa) = (read_attempts.clone(), write_attempts.clone());
        set.spawn(async move { client(target, deadline, &ra, &wa).await });
    }
    let mut r = MixRun::empty(via);
    while let Some(c) = set.join_next().await {
        let c = c.expect("benchmark task panicked");
        r.reads.absorb(c.reads);
        r.writes.absorb(c.writes);
        r.on_standby += c.on_standby;
        r.after_write.absorb(c.after_write);
        r.stale += c.stale;
    }
    r.elapsed = start.elapsed();
    let delta = |a: Option<Duration>, b: Option<Duration>| Some(b?.saturating_sub(a?));
    r.cpu_client = delta(client0, cpu::own());
    let (primary1, standby1) = (
        m.primary.and_then(|s| s.tree()),
        m.standby.and_then(|s| s.tree()),
    );
    r.cpu_primary = delta(primary0.map(|t| t.total), primary1.map(|t| t.total));
    let standby = standby0.zip(standby1).map(|(a, b)| b.since(&a));
    r.cpu_standby = standby.map(|t| t.total);
    r.cpu_replay = standby.map(|t| t.replay);
    r.reads.retries = read_attempts
        .load(Ordering::Relaxed)
        .saturating_sub(r.reads.ok + r.reads.failed);
    r.writes.retries = write_attempts
        .load(Ordering::Relaxed)
        .saturating_sub(r.writes.ok + r.writes.failed);
    r
}

/// One client task: until `deadline`, a read with probability [`READ_SHARE`], else a transfer.
/// A read right after the task's own transfer reads the account it debited, and checks that it
/// sees the version the transfer wrote.
async fn client(
    target: Target,
    deadline: Instant,
    read_attempts: &AtomicU64,
    write_attempts: &AtomicU64,
) -> ClientCount {
    let mut c = ClientCount::default();
    // The account and version of the task's last transfer, until the next read.
    let mut written: Option<(i32, i64)> = None;
    let mut reported = false;
    while Instant::now() < deadline {
        let t = Instant::now();
        if fastrand::f64() < READ_SHARE {
            let id = written.map_or_else(|| fastrand::i32(1..=ACCOUNTS), |w| w.0);
            match target.read(id, read_attempts).await {
                Ok((_, v, on_standby)) => {
                    let us = t.elapsed().as_secs_f64() * 1e6;
                    c.reads.ok += 1;
                    c.reads.lat_us.push(us);
                    c.on_standby += u64::from(on_standby);
                    if let Some((_, wrote)) = written {
                        c.after_write.ok += 1;
                        c.after_write.lat_us.push(us);
                        c.stale += u64::from(v < wrote);
                    }
                }
                Err(e) => {
                    c.reads.failed += 1;
                    report_once(&mut reported, &e);
                }
            }
            written = None;
        } else {
            let from = fastrand::i32(1..=ACCOUNTS);
            let to = (from + fastrand::i32(1..ACCOUNTS) - 1) % ACCOUNTS + 1;
            match target
                .transfer(from, to, fastrand::i64(1..=10), write_attempts)
                .await
            {
                Ok(v) => {
                    c.writes.ok += 1;
                    c.writes.lat_us.push(t.elapsed().as_secs_f64() * 1e6);
                    written = Some((from, v));
                }
                Err(e) => {
                    c.writes.failed += 1;
                    report_once(&mut reported, &e);
                }
            }
        }
    }
    c
}

fn report_once(reported: &mut bool, e: &sqlx::Error) {
    if !*reported {
        *reported = true;
        eprintln!("    a call failed: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// The micro-measurement
// ---------------------------------------------------------------------------------------------

/// One read of the micro-measurement through `m`; whether it ran on the standby.
async fn micro_read(
    m: Micro,
    standby: &PgPool,
    cluster: &Cluster,
    session: &Session,
    attempts: &AtomicU64,
) -> Result<bool, sqlx::Error> {
    let id = fastrand::i32(1..=ACCOUNTS);
    let (_, _, on_standby) = match m {
        Micro::StandbyPool => balance(standby, id, attempts).await?,
        Micro::Cluster => balance(cluster, id, attempts).await?,
        Micro::Session => balance(session, id, attempts).await?,
    };
    Ok(on_standby)
}

/// A session of `cluster` that has made one transfer, which the standby has replayed.
async fn written_session(cluster: &Cluster, pair: &PgReplicaPair) -> Res<Session> {
    let session = cluster.session();
    transfer(&session, 1, 2, 1, &AtomicU64::new(0)).await?;
    pair.wait_for_replay().await?;
    Ok(session)
}

/// One client, no writes: µs per read of each [`Micro`] variant, in blocks whose order rotates,
/// then round trips per read through counting proxies in front of both servers.
async fn micro(
    plan: &Plan,
    pair: &PgReplicaPair,
    schema: &sqlx_retry_testkit::ReplicaSchema<'_>,
    standby: &PgPool,
    cluster: &Cluster,
) -> Res<Vec<MicroRun>> {
    let session = written_session(cluster, pair).await?;
    let attempts = AtomicU64::new(0);
    for m in Micro::ALL {
        for _ in 0..50 {
            micro_read(m, standby, cluster, &session, &attempts).await?;
        }
    }
    let mut lat: [Vec<f64>; 3] = Default::default();
    let mut ratios: [Vec<f64>; 3] = Default::default();
    let mut on_standby = [0_usize; 3];
    for block in 0..plan.replica_micro_blocks {
        let mut totals = [0.0_f64; 3];
        for k in crate::ORDERS[block % crate::ORDERS.len()] {
            let t_block = Instant::now();
            for _ in 0..plan.replica_micro_per_block {
                let t = Instant::now();
                let there =
                    micro_read(Micro::ALL[k], standby, cluster, &session, &attempts).await?;
                lat[k].push(t.elapsed().as_secs_f64() * 1e6);
                on_standby[k] += usize::from(there);
            }
            totals[k] = t_block.elapsed().as_secs_f64();
        }
        for k in 0..3 {
            ratios[k].push(totals[k] / totals[1].max(1e-12));
        }
    }
    let round_trips = count_round_trips(pair, schema.schema()).await;
    let mut out = Vec::new();
    for (k, m) in Micro::ALL.into_iter().enumerate() {
        let n = lat[k].len();
        let median_us = median_f(&mut lat[k]);
        out.push(MicroRun {
            micro: m,
            median_us,
            p99_us: lat[k][(n * 99 / 100).min(n.saturating_sub(1))],
            vs_cluster: median_f(&mut ratios[k].clone()),
            vs_cluster_ci: bootstrap_median_ci(&ratios[k]),
            round_trips: round_trips.as_ref().ok().map(|r| r[k]),
            on_standby: on_standby[k],
            n,
        });
    }
    if let Err(e) = round_trips {
        eprintln!("  round trips not counted: {e}");
    }
    Ok(out)
}

/// Round trips per read of each [`Micro`] variant, both servers together, through proxies.
async fn count_round_trips(pair: &PgReplicaPair, schema: &str) -> Res<[f64; 3]> {
    let p_proxy = PgProxy::try_start(pair.primary_options()).await?;
    let s_proxy = PgProxy::try_start(pair.standby_options()).await?;
    let primary = crate::workloads::pool(p_proxy.schema_options(schema), 2, false).await?;
    let standby = crate::workloads::pool(s_proxy.schema_options(schema), 2, false).await?;
    let cluster = Cluster::builder(primary.clone())
        .replica(standby.clone())
        .build();
    let session = written_session(&cluster, pair).await?;
    let attempts = AtomicU64::new(0);
    let mut out = [0.0; 3];
    let stats = |p: &PgProxy, s: &PgProxy| p.stats().round_trips + s.stats().round_trips;
    for (k, m) in Micro::ALL.into_iter().enumerate() {
        for _ in 0..10 {
            micro_read(m, &standby, &cluster, &session, &attempts).await?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let n = 200;
        let before = stats(&p_proxy, &s_proxy);
        for _ in 0..n {
            micro_read(m, &standby, &cluster, &session, &attempts).await?;
        }
        // Let the pool's release ping of the last read land before counting.
        tokio::time::sleep(Duration::from_millis(20)).await;
        out[k] = (stats(&p_proxy, &s_proxy) - before) as f64 / f64::from(n);
    }
    primary.close().await;
    standby.close().await;
    Ok(out)
}
