//! BENCHMARKS.md and the SVG chart.

use std::fmt::Write as _;
use std::time::Duration;

/// A strategy must beat the current default's goodput score by this factor to replace it: whole
/// runs of this benchmark on a 2-core machine differed by more than 10 % in goodput.
const NOISE: f64 = 1.10;

/// From how many times a lone client's round trip costs what one of two clients' does the
/// report calls the one-client figures the idle regime.
const LONE_CLIENT_PENALTY: f64 = 1.5;

/// The label of the library's default backoff (`Backoff::default()`) among the strategies.
pub const DEFAULT_STRATEGY: &str = "adaptive 5ms/500ms (default)";

use sqlx::PgConnection;

use crate::replicas::{self, MixRun, Replicas, Via};
use crate::workloads::{Conns, Imp, RunResult, Workload};
use crate::{Allocs, COMMIT_STEPS, CommitSteps, OVERHEAD_IMPS, OverheadRun, Plan, Profile, Res};

/// The server the run used.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// `SELECT version()`.
    pub version: String,
    /// `fsync`.
    pub fsync: String,
    /// `synchronous_commit`.
    pub synchronous_commit: String,
    /// `max_connections`.
    pub max_connections: i64,
    /// Whether it is the testkit's throwaway cluster.
    pub throwaway: bool,
}

impl ServerInfo {
    /// Asks the server.
    pub async fn query(c: &mut PgConnection, url: &str) -> Res<ServerInfo> {
        let version: String = sqlx::query_scalar("SELECT version()")
            .fetch_one(&mut *c)
            .await?;
        let fsync: String = sqlx::query_scalar("SHOW fsync").fetch_one(&mut *c).await?;
        let sc: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&mut *c)
            .await?;
        let mc: String = sqlx::query_scalar("SHOW max_connections")
            .fetch_one(&mut *c)
            .await?;
        Ok(ServerInfo {
            version,
            fsync,
            synchronous_commit: sc,
            max_connections: mc.parse().unwrap_or(0),
            throwaway: std::env::var_os("DATABASE_URL").is_none() && !url.is_empty(),
        })
    }
}

/// Everything one run measured.
pub struct Report {
    plan: Plan,
    server: ServerInfo,
    /// Section 0.
    pub profile: Profile,
    /// Setup: pgbench's `SELECT 1` by 1 and 2 clients.
    pub round_trip: Vec<(usize, RunResult)>,
    /// Section 1.
    pub overhead: Option<Vec<OverheadRun>>,
    /// Section 1 (d), when section 1 ran.
    pub commit_steps: Vec<CommitSteps>,
    /// Section 2, per workload.
    pub contention: Vec<Contention>,
    /// Section 3: strategy name, workload, result.
    pub strategies: Vec<(String, Workload, RunResult)>,
    /// Section 4: one point per workload and client count, in run order.
    pub scaling: Vec<ScalePoint>,
    /// Section 4's account of the gap to the hand-written loop, in run order.
    pub gap: Vec<GapPoint>,
    /// Section 5, when it ran.
    pub fairness: Option<crate::fairness::Fairness>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// `pgbench --version`, when found.
    pub pgbench: Option<String>,
    /// `/proc/loadavg` (1-minute) when each section started and at the end.
    pub load: Vec<(&'static str, f64)>,
    /// Section 6, or why it was skipped; `None` when it did not run.
    pub replicas: Option<Result<Replicas, String>>,
}

/// Section 2's figures for one workload, summed over rounds.
pub struct Contention {
    /// The workload.
    pub workload: Workload,
    /// Ours, each client holding its connection as pgbench's do, all rounds (`None` before the
    /// first).
    pub ours: Option<RunResult>,
    /// Ours through the pool, each call taking a connection, all rounds.
    pub pooled: Option<RunResult>,
    /// The hand-written loop without the library (immediate retry, held connections), all
    /// rounds.
    pub hand: Option<RunResult>,
    /// pgbench, all rounds (`None` without pgbench).
    pub theirs: Option<RunResult>,
    /// Ours with the savepoint protocol (`Policy::builder().savepoint(…)`, otherwise the
    /// defaults), held connections, all rounds; not shown while `None`.
    pub savepoint: Option<RunResult>,
    /// The same with a wait before the rerun inside the savepoint
    /// (`savepoint_backoff(SAVEPOINT_BACKOFF_INSIDE)`), all rounds; not shown while `None`.
    pub savepoint_inside: Option<RunResult>,
    /// Goodput ours / pgbench of each round.
    pub round_ratios: Vec<f64>,
    /// Write-skew invariant violations after the runs.
    pub violations: i64,
}

impl Contention {
    /// No rounds yet.
    pub fn new(workload: Workload) -> Contention {
        Contention {
            workload,
            ours: None,
            pooled: None,
            hand: None,
            theirs: None,
            savepoint: None,
            savepoint_inside: None,
            round_ratios: Vec::new(),
            violations: 0,
        }
    }

    /// Adds one round.
    pub fn add_round(
        &mut self,
        ours: RunResult,
        pooled: RunResult,
        hand: RunResult,
        theirs: Option<RunResult>,
    ) {
        if let Some(t) = &theirs {
            self.round_ratios.push(ours.tps() / t.tps().max(1e-9));
        }
        RunResult::accumulate(&mut self.ours, ours);
        RunResult::accumulate(&mut self.pooled, pooled);
        RunResult::accumulate(&mut self.hand, hand);
        if let Some(t) = theirs {
            RunResult::accumulate(&mut self.theirs, t);
        }
    }

    /// Adds a round of the savepoint protocol's run.
    pub fn add_savepoint_round(&mut self, run: RunResult) {
        RunResult::accumulate(&mut self.savepoint, run);
    }

    /// Adds a round of the savepoint protocol's run with a backoff inside the savepoint.
    pub fn add_savepoint_inside_round(&mut self, run: RunResult) {
        RunResult::accumulate(&mut self.savepoint_inside, run);
    }
}

/// An implementation of section 4, in the report's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalingImp {
    /// The attribute (default backoff), each client on the connection it holds.
    OursHeld,
    /// The hand-written immediate-retry loop ([`Imp::Hand`]) on held connections.
    HandHeld,
    /// The attribute through the pool, a connection per call.
    OursPooled,
    /// The hand-written loop through the pool, a connection per attempt.
    HandPooled,
    /// pgbench (its clients hold their connections).
    Pgbench,
}

/// Section 4's implementations, in the report's order.
pub const SCALING_IMPS: [ScalingImp; 5] = [
    ScalingImp::OursHeld,
    ScalingImp::HandHeld,
    ScalingImp::OursPooled,
    ScalingImp::HandPooled,
    ScalingImp::Pgbench,
];

impl ScalingImp {
    /// Its name in the report.
    pub fn label(self) -> &'static str {
        match self {
            ScalingImp::OursHeld => "sqlx-retry, held",
            ScalingImp::HandHeld => "hand-written, held",
            ScalingImp::OursPooled => "sqlx-retry, pooled",
            ScalingImp::HandPooled => "hand-written, pooled",
            ScalingImp::Pgbench => "pgbench",
        }
    }

    /// How our side runs it; `None` for pgbench.
    pub fn imp(self, max_tries: u32) -> Option<(Imp, Conns)> {
        match self {
            ScalingImp::OursHeld => Some((Imp::Attribute, Conns::Held)),
            ScalingImp::HandHeld => Some((Imp::Hand(max_tries), Conns::Held)),
            ScalingImp::OursPooled => Some((Imp::Attribute, Conns::Pooled)),
            ScalingImp::HandPooled => Some((Imp::Hand(max_tries), Conns::Pooled)),
            ScalingImp::Pgbench => None,
        }
    }
}

/// The runs of `N` implementations at one point, added up over rounds, with each round's
/// committed tx/s; implementation `i` is the `i`th of its section's list.
#[derive(Debug, Clone)]
pub struct Rounds<const N: usize> {
    /// Each implementation's runs, added up; `None` where it did not run.
    pub sums: [Option<RunResult>; N],
    /// Each implementation's committed tx/s in each round, in the rounds' order.
    pub tps: [Vec<f64>; N],
}

impl<const N: usize> Default for Rounds<N> {
    fn default() -> Self {
        Rounds {
            sums: std::array::from_fn(|_| None),
            tps: std::array::from_fn(|_| Vec::new()),
        }
    }
}

impl<const N: usize> Rounds<N> {
    /// Adds a round's run of implementation `i`.
    pub fn add(&mut self, i: usize, run: RunResult) {
        self.tps[i].push(run.tps());
        match &mut self.sums[i] {
            Some(sum) => sum.absorb(run),
            slot => *slot = Some(run),
        }
    }

    /// The runs of implementation `i`, added up.
    pub fn get(&self, i: usize) -> Option<&RunResult> {
        self.sums[i].as_ref()
    }

    /// Goodput of `a` over `b`, over the rounds added up; `None` unless both ran.
    fn ratio(&self, a: usize, b: usize) -> Option<f64> {
        let (a, b) = (self.get(a)?, self.get(b)?);
        (b.tps() > 0.0).then(|| a.tps() / b.tps())
    }

    /// Goodput of `a` over `b` in each round; empty unless both ran the same rounds.
    fn round_ratios(&self, a: usize, b: usize) -> Vec<f64> {
        let (a, b) = (&self.tps[a], &self.tps[b]);
        if a.len() != b.len() {
            return Vec::new();
        }
        a.iter()
            .zip(b)
            .map(|(a, b)| a / b.max(f64::MIN_POSITIVE))
            .collect()
    }

    /// The most rounds any implementation ran.
    fn rounds(&self) -> usize {
        self.tps.iter().map(Vec::len).max().unwrap_or(0)
    }
}

/// Section 4's figures for one workload and client count.
#[derive(Debug, Clone)]
pub struct ScalePoint {
    /// The workload.
    pub workload: Workload,
    /// Clients.
    pub clients: usize,
    /// The runs of each implementation, in [`SCALING_IMPS`] order.
    pub rounds: Rounds<5>,
    /// Round trips and retries per committed transaction of each implementation in a short run
    /// through a counting proxy; `None` where not counted.
    pub round_trips: [Option<(f64, f64)>; 5],
}

impl ScalePoint {
    /// No runs yet.
    pub fn new(workload: Workload, clients: usize) -> ScalePoint {
        ScalePoint {
            workload,
            clients,
            rounds: Rounds::default(),
            round_trips: [None; 5],
        }
    }

    /// Whether section 4 breaks the point of workload `w` with `clients` clients down (and
    /// counts its round trips): the hot row at 2 and 4 clients.
    pub fn broken_down(w: Workload, clients: usize) -> bool {
        w == Workload::Hot && matches!(clients, 2 | 4)
    }

    /// Adds a round's run of `which`.
    pub fn add(&mut self, which: ScalingImp, run: RunResult) {
        self.rounds.add(which as usize, run);
    }

    /// Ours and the hand-written loop on `held` or pooled connections: what the goals compare.
    fn ours_and_hand(held: bool) -> (ScalingImp, ScalingImp) {
        if held {
            (ScalingImp::OursHeld, ScalingImp::HandHeld)
        } else {
            (ScalingImp::OursPooled, ScalingImp::HandPooled)
        }
    }

    /// Goodput ours / hand-written in each round on `held` or pooled connections; empty unless
    /// both ran in more than one round.
    fn round_ratios(&self, held: bool) -> Vec<f64> {
        let (o, h) = Self::ours_and_hand(held);
        if self.rounds.rounds() < 2 {
            return Vec::new();
        }
        self.rounds.round_ratios(o as usize, h as usize)
    }

    /// The runs of `which`, added up over the rounds.
    pub fn get(&self, which: ScalingImp) -> Option<&RunResult> {
        self.rounds.get(which as usize)
    }

    /// Ours against the hand-written loop on `held` or pooled connections: goodput ours/hand,
    /// p99 ours − hand (ms), ours' failed transactions; `None` unless both ran.
    fn against_hand(&self, held: bool) -> Option<(f64, f64, u64)> {
        let (o, h) = Self::ours_and_hand(held);
        let (o, h) = (self.get(o)?, self.get(h)?);
        Some((
            o.tps() / h.tps().max(1e-9),
            o.pct_ms(0.99) - h.pct_ms(0.99),
            o.failed,
        ))
    }
}

/// The 1-minute load average, 0 when unknown.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// The logical CPUs this process may use, 0 when unknown.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

fn opt(r: Option<&RunResult>, f: impl Fn(&RunResult) -> String) -> String {
    r.map_or_else(|| "–".to_string(), f)
}

impl Report {
    /// An empty report for `plan` on `server`.
    pub fn new(plan: Plan, server: ServerInfo) -> Report {
        Report {
            plan,
            server,
            profile: Profile::default(),
            round_trip: Vec::new(),
            overhead: None,
            commit_steps: Vec::new(),
            contention: Vec::new(),
            strategies: Vec::new(),
            scaling: Vec::new(),
            gap: Vec::new(),
            fairness: None,
            elapsed: Duration::ZERO,
            pgbench: None,
            load: Vec::new(),
            replicas: None,
        }
    }

    /// Goodput score of strategy `n`: the geometric mean over the workloads of its goodput
    /// relative to the best strategy there; its mean retries per commit; whether it failed any.
    fn score(&self, n: &str) -> Option<(f64, f64, bool)> {
        let best_tps = |w: Workload| {
            self.strategies
                .iter()
                .filter(|(_, ww, _)| *ww == w)
                .map(|(_, _, r)| r.tps())
                .fold(0.0, f64::max)
        };
        let runs: Vec<_> = self
            .strategies
            .iter()
            .filter(|(nn, _, _)| nn == n)
            .collect();
        if runs.is_empty() {
            return None;
        }
        let mut score = 1.0;
        let mut retries = 0.0;
        for (_, w, r) in &runs {
            score *= r.tps() / best_tps(*w).max(1e-9);
            retries += r.retries_per_commit();
        }
        Some((
            score.powf(1.0 / runs.len() as f64),
            retries / runs.len() as f64,
            runs.iter().any(|(_, _, r)| r.failed > 0),
        ))
    }

    /// The default the data supports. A backoff exists to take load off the server, so the
    /// candidates are the strategies without failed transactions that at most halve the retries
    /// of retrying at once (`none`) on average; among them the best goodput score wins, and
    /// within 3 % of it the one with fewer retries.
    fn best_strategy(&self) -> Option<(String, f64, f64)> {
        let none = self.score("none").map_or(f64::INFINITY, |s| s.1);
        let mut cands: Vec<(String, f64, f64)> = crate::strategies()
            .iter()
            .filter_map(|(n, _)| self.score(n).map(|s| (n.to_string(), s)))
            .filter(|(n, s)| n != "none" && !s.2 && s.1 <= none * 0.5)
            .map(|(n, s)| (n, s.0, s.1))
            .collect();
        let top = cands.iter().map(|s| s.1).fold(0.0, f64::max);
        cands.retain(|s| s.1 >= top * 0.97);
        cands.into_iter().min_by(|a, b| a.2.total_cmp(&b.2))
    }

    /// The report: one function per section, in this order.
    pub fn markdown(&self, chart: &str) -> String {
        [
            self.title(),
            self.setup(),
            self.overhead_section(),
            self.profile_section(),
            self.contention_section(),
            self.strategies_section(),
            self.scaling_section(chart),
            crate::fairness::markdown(self.fairness.as_ref()),
            self.replicas_section(),
        ]
        .concat()
    }

    /// The title and how the report was made.
    fn title(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "# Benchmarks\n");
        let _ = writeln!(
            m,
            "Generated by `cargo run --release -p sqlx-retry-bench{}` in {:.0} s; every figure below \
             comes from this one run, and every comparison was measured side by side in it, on the \
             same server. Do not edit by hand: rerun the benchmark.\n",
            match self.plan.mode {
                "default" => "",
                "quick" => " -- --quick",
                _ => " -- --smoke",
            },
            self.elapsed.as_secs_f64()
        );
        m
    }

    /// Setup: the machine, the server, a round trip's cost, the load, the plan.
    fn setup(&self) -> String {
        let s = &self.server;
        let mut m = String::new();
        let _ = writeln!(m, "## Setup\n");
        let _ = writeln!(
            m,
            "- Machine: {} logical CPUs ({}); client (tokio, 2 worker threads by default on this \
             machine), pgbench and PostgreSQL share them, so CPU is part of every contended figure.",
            cpus(),
            cpu_model()
        );
        let _ = writeln!(
            m,
            "- Server: {}, {}. **`fsync={}`, `synchronous_commit={}`** (the testkit's throwaway \
             cluster runs with `fsync=off`, `synchronous_commit=off`, `full_page_writes=off`): \
             commits cost no disk flush, which makes the client side and the round trips look as \
             large as they can get. `max_connections={}`.",
            s.version.split(" on ").next().unwrap_or(&s.version),
            if s.throwaway {
                "throwaway cluster from `sqlx-retry-testkit` over TCP on 127.0.0.1"
            } else {
                "`DATABASE_URL`"
            },
            s.fsync,
            s.synchronous_commit,
            s.max_connections
        );
        m.push_str(&self.round_trip_note());
        let load: Vec<String> = self
            .load
            .iter()
            .map(|(at, l)| format!("{at} {l:.1}"))
            .collect();
        let _ = writeln!(
            m,
            "- 1-minute load average as each section started ({} CPUs): {}. It counts the \
             benchmark's own client, pgbench and server processes, so a contended section raises \
             what the next one starts with; a load well above the CPU count before the \
             uncontended sections means other processes competed for the CPUs.",
            cpus(),
            load.join(", ")
        );
        m.push_str(&self.plan_note());
        m
    }

    /// Setup: what one round trip costs here, from pgbench's `SELECT 1`; empty without it.
    fn round_trip_note(&self) -> String {
        if self.round_trip.is_empty() {
            return String::new();
        }
        let mut m = String::new();
        let cells: Vec<String> = self
            .round_trip
            .iter()
            .map(|(c, r)| {
                format!(
                    "{:.0} µs with {c} client{}",
                    round_trip_us(*c, r),
                    if *c == 1 { "" } else { "s" }
                )
            })
            .collect();
        let regime = match self.lone_client_penalty() {
            Some(penalty) if penalty >= LONE_CLIENT_PENALTY => format!(
                "A lone client pays {penalty:.1}× what a client pays while another keeps the \
                 CPUs busy; the likely cause is an idle virtual CPU waking for each message. \
                 Every one-client figure below (section 1, and the 1-client point of section 4) \
                 is in the idle regime, so the hot row's 1-client goodput is a floor here more \
                 than a ceiling."
            ),
            Some(penalty) => format!(
                "A lone client's round trip costs {penalty:.1}× what it costs while another \
                 client keeps the CPUs busy, so the one-client figures below are not inflated by \
                 idle CPUs waking."
            ),
            None => String::new(),
        };
        let _ = writeln!(
            m,
            "- One round trip on this machine (pgbench, `SELECT 1` outside a transaction, \
             each client on its own connection; time per statement per client): {}. {regime}",
            cells.join("; ")
        );
        m
    }

    /// How many times a lone client's round trip costs what one of two clients' does, from
    /// pgbench's `SELECT 1`; `None` without both runs.
    fn lone_client_penalty(&self) -> Option<f64> {
        let per_client_us = |clients: usize| {
            self.round_trip
                .iter()
                .find(|(c, _)| *c == clients)
                .map(|(c, r)| round_trip_us(*c, r))
        };
        Some(per_client_us(1)? / per_client_us(2)?.max(1e-9))
    }

    /// Setup: the mode and what each section runs.
    fn plan_note(&self) -> String {
        let p = &self.plan;
        let mut m = String::new();
        let _ = writeln!(
            m,
            "- Mode `{}`: overhead {} blocks × {} transactions per implementation; contention runs \
             {} × {:.1} s with {} clients; strategy runs {} × {:.1} s; scaling points {:.1} s (pgbench runs \
             whole seconds, at least 1). Contended runs, ours: pools of exactly as many connections as clients, \
             opened in advance, `test_before_acquire(false)`, at most {} attempts; in section 2 each \
             client holds one of them for the whole run, as a pgbench client holds its connection \
             (and a second run per round goes through the pool instead), in section 3 too, and \
             section 4 runs both ways. pgbench: `-M prepared -n -r -l \
             --failures-detailed --max-tries={}` (immediate retry), `-j 2`; {}.\n",
            p.mode,
            p.blocks,
            p.per_block,
            p.contention_rounds,
            p.contention.as_secs_f64(),
            p.contention_clients,
            p.strategy_rounds,
            p.strategy.as_secs_f64(),
            p.scaling.as_secs_f64(),
            p.max_tries,
            p.max_tries,
            self.pgbench.as_deref().unwrap_or("pgbench not found")
        );
        m
    }

    /// Section 1: overhead without contention, per connection source; empty without runs.
    fn overhead_section(&self) -> String {
        let Some(runs) = self.overhead.as_deref().filter(|r| !r.is_empty()) else {
            return String::new();
        };
        let mut m = String::new();
        let _ = writeln!(m, "## 1. Overhead without contention\n");
        let _ = writeln!(
            m,
            "One client, `UPDATE counters SET n = n + 1 WHERE id = 1` at SERIALIZABLE, {} \
             transactions per implementation and configuration, interleaved in blocks whose \
             order rotates (so drift hits all three alike). Ratio = ours / theirs; below 1 means \
             ours is faster. The goals are judged on the block ratio: the median over blocks \
             of ours' block time over theirs (each pair ran back to back), with a 95 % \
             bootstrap interval over blocks; the ratio of median latencies is shown beside it. \
             Round trips are counted at a TCP proxy in front of the server: simple queries and \
             Syncs, less the bare `ROLLBACK`s that sqlx sends without waiting for their answer.\n\n\
             The four configurations differ in the round trips sqlx's pool adds on its own, \
             which both sides pay alike: it pings every connection when it is returned \
             (`PoolConnection::return_to_pool` in sqlx-core 0.9, unconditionally), and with \
             `test_before_acquire(true)`, its default, once more before handing it out. The \
             release ping runs in a spawned task: the client waits for it only when the next \
             acquire needs that same connection (a one-connection pool); in a larger pool it \
             overlaps the next transaction on another connection and so changes the timing of \
             the round trips around it.\n",
            runs[0].n
        );
        for run in runs {
            m.push_str(&overhead_table(run));
        }
        m.push_str(&overhead_goals(runs));
        for steps in &self.commit_steps {
            m.push_str(&commit_steps_table(steps));
        }
        m
    }

    /// Where the time goes per attempt (section 0, the profile).
    fn profile_section(&self) -> String {
        let mut m = String::new();
        let pr = &self.profile;
        let _ = writeln!(m, "## Where the time goes per attempt\n");
        let _ = writeln!(
            m,
            "Measured in-process (no database) and, for the database phases, with a hand loop on \
             one connection:\n"
        );
        let _ = writeln!(m, "| what | cost |");
        let _ = writeln!(m, "|---|---:|");
        let _ = writeln!(
            m,
            "| attribute loop over the mock source (span, `Attempts`, 2 boxed futures, the after-commit registry, mock BEGIN/statement/COMMIT) | {:.0} ns/call |",
            pr.mock_attr_ns
        );
        let _ = writeln!(
            m,
            "| hand loop over the same mock source (BEGIN/statement/COMMIT only) | {:.0} ns/call |",
            pr.mock_hand_ns
        );
        let _ = writeln!(
            m,
            "| → the retry machinery itself | **{:.0} ns/call** |",
            pr.mock_attr_ns - pr.mock_hand_ns
        );
        let _ = writeln!(
            m,
            "| `info_span!` + `instrument`, no subscriber installed | {:.1} ns |",
            pr.span_ns
        );
        let _ = writeln!(
            m,
            "| a disabled `info!` retry event with fields, no subscriber | {:.1} ns |",
            pr.event_ns
        );
        let _ = writeln!(
            m,
            "| one `Box::pin` of a 256-byte future, awaited (the loop boxes 2 per attempt: `begin`, `finish`; the plain API a 3rd for the body) | {:.1} ns |",
            pr.box_ns
        );
        let _ = writeln!(
            m,
            "| pool acquire + `BEGIN ISOLATION LEVEL SERIALIZABLE` (1 round trip) | {:.1} µs |",
            pr.begin_us
        );
        let _ = writeln!(
            m,
            "| the `UPDATE` (1 round trip) | {:.1} µs |",
            pr.update_us
        );
        let _ = writeln!(
            m,
            "| `COMMIT` + return to the pool (1 round trip) | {:.1} µs |\n",
            pr.commit_us
        );
        let total_us = pr.begin_us + pr.update_us + pr.commit_us;
        let _ = writeln!(
            m,
            "The loop's own cost is {:.0} ns against {:.0} µs of database round trips per attempt \
             ({:.2} %): the attribute's overhead is noise, and what separates implementations is the \
             number of round trips.\n",
            pr.mock_attr_ns - pr.mock_hand_ns,
            total_us,
            (pr.mock_attr_ns - pr.mock_hand_ns) / (total_us * 1e3) * 100.0
        );
        if let Some(a) = &pr.allocs {
            m.push_str(&allocations(a));
        }
        m
    }

    /// Section 2: contention, ours against pgbench; empty without runs.
    fn contention_section(&self) -> String {
        if self.contention.is_empty() {
            return String::new();
        }
        let p = &self.plan;
        let mut m = String::new();
        let _ = writeln!(m, "## 2. Contention: ours vs pgbench, same SQL\n");
        let _ = writeln!(
            m,
            "{} clients. **Hot row**: `BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT v FROM hot WHERE \
         id = :id; UPDATE hot SET v = v + :d WHERE id = :id; COMMIT` over 4 rows, random id and \
         d; the freshly filled 4-row table is read by a sequential scan, whose predicate lock \
         covers the whole table, so any two concurrent writers can conflict. **Hot row, \
         index scan**: the same with `enable_seqscan = off` in both sides' sessions, the plan \
         a larger table gets: the predicate lock covers the row read, so only clients on the \
         same row conflict, and a conflict costs less. **Write skew**: 4 shifts × 8 doctors; count those on call for a random shift; a \
         random doctor of it goes off call if ≥ 2 are on call, else on call (keeps the workload \
         stationary). Ours = `#[serializable_retry(max = {})]` with the default backoff \
         (adaptive 5 ms/500 ms) and priority turns (after 2), each client on the connection it holds (`&mut PgConnection`), \
         as pgbench's clients do; \"sqlx-retry, pooled\" is the same through `&PgPool`, each call \
         taking a connection and giving it back. \"hand-written sqlx\" is the loop a user \
         writes without the library, on held connections: `begin_with(\"BEGIN ISOLATION \
         LEVEL SERIALIZABLE\")`, the same body, `commit()`, and on `40001`/`40P01` a retry at \
         once (sqlx sends the ROLLBACK ahead of the next BEGIN), as pgbench retries; it shows \
         what tokio and sqlx alone achieve here. Latency is per committed transaction, \
         retries and backoff included.\n",
            p.contention_clients, p.max_tries
        );
        m.push_str(&self.contention_table());
        m.push_str(&self.contention_goals());
        m
    }

    /// Section 2's table: each side on each workload, and how CPU time was read.
    fn contention_table(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "| workload | who | committed tx/s | failed tx | retries / committed tx | p50 ms | p99 ms | client CPU µs / committed tx | server CPU µs / committed tx |"
        );
        let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
        let cpu = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.0}"));
        for c in &self.contention {
            let savepoint = c
                .savepoint
                .as_ref()
                .map(|r| ("sqlx-retry, savepoint", Some(r)));
            let inside = c
                .savepoint_inside
                .as_ref()
                .map(|r| ("sqlx-retry, savepoint, backoff inside", Some(r)));
            for (who, r) in [
                Some(("sqlx-retry", c.ours.as_ref())),
                savepoint,
                inside,
                Some(("sqlx-retry, pooled", c.pooled.as_ref())),
                Some(("hand-written sqlx", c.hand.as_ref())),
                Some(("pgbench", c.theirs.as_ref())),
            ]
            .into_iter()
            .flatten()
            {
                let _ = writeln!(
                    m,
                    "| {} | {who} | {} | {} | {} | {} | {} | {} | {} |",
                    c.workload.name(),
                    opt(r, |r| format!("{:.0}", r.tps())),
                    opt(r, |r| r.failed.to_string()),
                    opt(r, |r| format!("{:.3}", r.retries_per_commit())),
                    opt(r, |r| format!("{:.2}", r.pct_ms(0.5))),
                    opt(r, |r| format!("{:.2}", r.pct_ms(0.99))),
                    opt(r, |r| cpu(r.cpu_us_per_commit().0)),
                    opt(r, |r| cpu(r.cpu_us_per_commit().1)),
                );
            }
        }
        if self.contention.iter().any(|c| c.savepoint.is_some()) {
            let _ = writeln!(
                m,
                "\n\"sqlx-retry, savepoint\" is ours with CockroachDB's savepoint protocol \
                 (`Policy::builder().savepoint(\"cockroach_restart\")`, the closure API, \
                 otherwise the same policy), on held connections: on a retryable error the body \
                 reruns at once inside the transaction after `ROLLBACK TO SAVEPOINT`, and falls \
                 back to ROLLBACK, the backoff and BEGIN when the rerun fails again, as a \
                 PostgreSQL serialization victim's does. Its retries count both."
            );
        }
        m.push_str(&self.savepoint_choice());
        let _ = writeln!(
            m,
            "\nCPU time is read from `/proc` around each run: the client column is our whole \
             process (tokio, sqlx, the loop) or pgbench's; the server column is the \
             postmaster with the backends it reaped, so it covers each side's connections \
             from start to exit. Both sides share the machine's {} CPUs with the server, so \
             where the CPUs are saturated, goodput is bounded by the CPU a committed \
             transaction costs on both sides together.",
            cpus()
        );
        let _ = writeln!(m);
        m
    }

    /// Section 2's savepoint rows side by side: the default (no wait before the rerun inside
    /// the savepoint) against a backoff there, per workload, and the default the code has; empty
    /// unless both were measured.
    fn savepoint_choice(&self) -> String {
        let pairs: Vec<(Workload, &RunResult, &RunResult)> = self
            .contention
            .iter()
            .filter_map(|c| {
                Some((
                    c.workload,
                    c.savepoint.as_ref()?,
                    c.savepoint_inside.as_ref()?,
                ))
            })
            .collect();
        if pairs.is_empty() {
            return String::new();
        }
        let better = |none: f64, inside: f64, higher_wins: bool| {
            if none == inside {
                "a tie"
            } else if (inside > none) == higher_wins {
                "backoff inside"
            } else {
                "none"
            }
        };
        let mut m = String::new();
        let _ = writeln!(
            m,
            "\n\"sqlx-retry, savepoint, backoff inside\" is the same with \
             `savepoint_backoff({:?})`: after `ROLLBACK TO SAVEPOINT` it sleeps before the rerun, \
             the transaction still open. The better of the two, no wait (\"none\") or the wait, \
             per workload:\n",
            crate::SAVEPOINT_BACKOFF_INSIDE
        );
        let mut wins = 0;
        for (w, none, inside) in &pairs {
            let (tps_none, tps_inside) = (none.tps(), inside.tps());
            let (p99_none, p99_inside) = (none.pct_ms(0.99), inside.pct_ms(0.99));
            if tps_inside > tps_none * NOISE {
                wins += 1;
            }
            let _ = writeln!(
                m,
                "- {}: goodput {tps_none:.0} vs {tps_inside:.0} tx/s (better: {}), p99 \
                 {p99_none:.2} vs {p99_inside:.2} ms (better: {}), retries per committed tx \
                 {:.3} vs {:.3}.",
                w.name(),
                better(tps_none, tps_inside, true),
                better(p99_none, p99_inside, false),
                none.retries_per_commit(),
                inside.retries_per_commit(),
            );
        }
        let _ = writeln!(
            m,
            "\nThe default, `Policy::DEFAULT_SAVEPOINT_BACKOFF`, is `{:?}`. The wait inside the \
             savepoint beat it on goodput by more than the noise ({:.0} %) on {wins} of {} \
             workloads.",
            sqlx_retry::Policy::DEFAULT_SAVEPOINT_BACKOFF,
            (NOISE - 1.0) * 100.0,
            pairs.len()
        );
        m
    }

    /// Section 2's goals, judged per workload.
    fn contention_goals(&self) -> String {
        let mut m = String::new();
        for c in &self.contention {
            let (Some(ours), Some(t)) = (&c.ours, &c.theirs) else {
                continue;
            };
            let tps = ours.tps() / t.tps().max(1e-9);
            let rr = ours.retries_per_commit() / t.retries_per_commit().max(1e-9);
            let rounds: Vec<String> = c.round_ratios.iter().map(|r| format!("{r:.2}")).collect();
            let _ = writeln!(
                m,
                "- {}: goodput ours/pgbench = **{tps:.2}** (goal ≥ 1: {}; by round: {}); failed \
             ours = {} (goal 0: {}); retries per commit ours/pgbench = **{rr:.2}** (goal ≤ \
             0.5: {}).{}{}",
                c.workload.name(),
                verdict(tps >= 1.0),
                rounds.join(", "),
                ours.failed,
                verdict(ours.failed == 0),
                verdict(rr <= 0.5),
                c.pooled.as_ref().map_or_else(String::new, |p| format!(
                    " Through the pool: goodput {:.2} of pgbench's, {} failed, retries per \
                     commit {:.2} of pgbench's.",
                    p.tps() / t.tps().max(1e-9),
                    p.failed,
                    p.retries_per_commit() / t.retries_per_commit().max(1e-9)
                )),
                if c.workload == Workload::Skew {
                    format!(
                        " Shifts left with nobody on call after the runs: {}.",
                        c.violations
                    )
                } else {
                    String::new()
                }
            );
        }
        let _ = writeln!(m);
        m
    }

    /// Section 3: backoff strategies and the choice of default; empty without runs.
    fn strategies_section(&self) -> String {
        if self.strategies.is_empty() {
            return String::new();
        }
        let p = &self.plan;
        let mut m = String::new();
        let _ = writeln!(m, "## 3. Backoff strategies\n");
        let _ = writeln!(
            m,
            "`sqlx_retry::transaction(&mut conn, &policy, …)`, each client on the connection it holds, with `Policy::builder().max_attempts({}).backoff(…)` (and the default priority turns), \
         {} clients, {} rounds of {:.1} s per strategy and workload (each round runs every \
         strategy once, in an order rotated per round; the figures add up over the rounds). \
         `adaptive` is `Backoff::adaptive(base, cap)`: full jitter whose \
         window is `unit · k · 2ⁿ⁻¹` (capped; the first retry uses *k* − 1, so a call alone in \
         retrying goes again at once), with *k* the number of calls of the policy retrying right \
         now and *unit* the measured attempt duration (≤ base).\n",
            p.max_tries,
            p.contention_clients,
            p.strategy_rounds,
            p.strategy.as_secs_f64()
        );
        m.push_str(&self.strategy_table());
        m.push_str(&self.strategy_scores());
        m.push_str(&self.default_choice());
        m
    }

    /// Section 3's table: each strategy on each workload.
    fn strategy_table(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "| strategy | workload | committed tx/s | failed | retries / committed tx | p50 ms | p99 ms |"
        );
        let _ = writeln!(m, "|---|---|---:|---:|---:|---:|---:|");
        for (name, w, r) in &self.strategies {
            let _ = writeln!(
                m,
                "| {name} | {} | {:.0} | {} | {:.3} | {:.2} | {:.2} |",
                w.name(),
                r.tps(),
                r.failed,
                r.retries_per_commit(),
                r.pct_ms(0.5),
                r.pct_ms(0.99)
            );
        }
        let _ = writeln!(m);
        m
    }

    /// Section 3's goodput score and retries of each strategy.
    fn strategy_scores(&self) -> String {
        let mut m = String::new();
        let mut scores = String::new();
        for (n, _) in crate::strategies() {
            if let Some((sc, rr, failed)) = self.score(n) {
                let _ = write!(
                    scores,
                    "{n}: goodput score {sc:.3}, {rr:.2} retries/commit{}; ",
                    if failed {
                        ", **failed transactions**"
                    } else {
                        ""
                    }
                );
            }
        }
        let _ = writeln!(
            m,
            "**Choice of default, from these figures.** Goodput score = geometric mean over the \
         workloads of the strategy's committed tx/s relative to the best strategy on that \
         workload; retries averaged over the workloads. {}\n",
            scores.trim_end_matches("; ")
        );
        m
    }

    /// Section 3's choice of default by the rule fixed before the run.
    fn default_choice(&self) -> String {
        let Some((best, score, retries)) = self.best_strategy() else {
            return "No strategy both avoided failures and halved the retries of `none`; the data \
                    gives no reason to change the default.\n\n"
                .to_string();
        };
        format!(
            "Rule (fixed before the run): a backoff exists to take load off the server, so the \
             candidates are the strategies with no failed transaction that at most halve the \
             retries of retrying at once (`none`); among them the best goodput score wins, and \
             within 3 % of it, fewer retries. Result: **{best}** (score {score:.3}, {retries:.2} \
             retries/commit). {} {}\n\n",
            self.default_verdict(&best, score),
            self.none_note(score),
        )
    }

    /// Whether the default stays or changes, given the rule's pick `best` and its `score`.
    fn default_verdict(&self, best: &str, score: f64) -> String {
        let default = DEFAULT_STRATEGY;
        let none_retries = self.score("none").map_or(f64::INFINITY, |n| n.1);
        match self.score(default) {
            _ if best == default => "The data supports keeping the current default.".to_string(),
            // The default changes only for a lead larger than the spread between whole runs of
            // this benchmark on this machine (goodput moved by more than 10 % between runs): a
            // smaller lead can reverse on the next run.
            Some((default_score, default_retries, false))
                if score < default_score * NOISE && default_retries <= none_retries * 0.5 =>
            {
                format!(
                    "The current default (score {default_score:.3}, {default_retries:.2} \
                     retries/commit) also meets the rule's conditions and {best} does not beat \
                     its goodput by more than the run-to-run spread ({:.0} %), so the default \
                     stays {default}; {best} remains available as an opt-in.",
                    (NOISE - 1.0) * 100.0
                )
            }
            _ => format!("The data says the default should change from {default} to **{best}**."),
        }
    }

    /// Why `none` is not the default when it scored above the pick's `score`; empty otherwise.
    fn none_note(&self, score: f64) -> String {
        match self.score("none") {
            Some((sc, rr, _)) if sc > score => format!(
                "Retrying at once (`none`) had the higher goodput score here ({sc:.3}) at {rr:.2} \
                 retries/commit: on this small machine the CPU the retries burn is cheap next to \
                 the time backoff leaves rows idle; it is still not a good default, because every \
                 retry is work the server does for nothing and the wasted work grows with clients \
                 (section 4)."
            ),
            _ => String::new(),
        }
    }

    /// Section 4: scaling on every contended workload, with the hot row's chart at `chart`;
    /// empty without runs.
    fn scaling_section(&self, chart: &str) -> String {
        if self.scaling.is_empty() {
            // `--only gap`: the account alone, under the section's heading.
            return if self.gap.is_empty() {
                String::new()
            } else {
                format!(
                    "## 4. Scaling\n\n{}",
                    gap_account(&self.gap, self.plan.max_tries)
                )
            };
        }
        let p = &self.plan;
        let mut m = String::new();
        let _ = writeln!(
            m,
            "## 4. Scaling
"
        );
        let _ = writeln!(
            m,
            "![goodput and p99 against clients, hot row]({chart})
"
        );
        let serial = self
            .scaling
            .iter()
            .find(|s| s.workload == Workload::Hot && s.clients == 1)
            .and_then(|s| s.get(ScalingImp::OursHeld))
            .map(RunResult::tps);
        let _ = writeln!(
            m,
            "{}. sqlx-retry = the attribute with the default backoff and priority turns; \
            hand-written = the loop a user writes without the library, retrying `40001` and \
            `40P01` at once up to {} attempts, as pgbench does. *Held*: each client holds one \
            connection for the whole run, as a pgbench client does; *pooled*: a pool of as many \
            connections as clients (`test_before_acquire(false)`), ours taking a connection per \
            call, the hand-written loop one per attempt (`pool.begin_with(…)`), and sqlx pings \
            each on its way back. \"Most attempts\" is the most any one call needed, failed \
            calls included (pgbench: its per-transaction log's retries + 1). The goals compare \
            ours with the hand-written loop on the same kind of connection: goodput ≥ 1.00×, \
            0 failed, p99 ≤ the hand-written p99. The hot row's serial ceiling, ours held with \
            1 client: {}{}.\n",
            rounds_phrase(p.scaling_rounds, p.scaling),
            p.max_tries,
            serial.map_or("–".into(), |t| format!("**{t:.0} tx/s**")),
            match self.lone_client_penalty() {
                Some(penalty) if penalty >= LONE_CLIENT_PENALTY => {
                    " (a lone client's round trips cost several times more here, see Setup, so \
                     goodput can rise above it)"
                }
                _ => "",
            }
        );
        for w in crate::workloads::CONTENDED {
            let points: Vec<&ScalePoint> =
                self.scaling.iter().filter(|s| s.workload == w).collect();
            if !points.is_empty() {
                m.push_str(&scaling_table(w, &points));
            }
        }
        m.push_str(&self.scaling_goals());
        m.push_str(&self.time_breakdown());
        m.push_str(&gap_account(&self.gap, self.plan.max_tries));
        m
    }

    /// Section 4's goals over all points, and the worst point of each.
    fn scaling_goals(&self) -> String {
        let mut m = String::new();
        let (mut n, mut tps_met, mut p99_met, mut failed_met) = (0, 0, 0, 0);
        let mut worst_tps: Option<(f64, String)> = None;
        let mut worst_p99: Option<(f64, String)> = None;
        for s in &self.scaling {
            for held in [true, false] {
                let Some((ratio, dp99, failed)) = s.against_hand(held) else {
                    continue;
                };
                let at = format!(
                    "{}, {} client{}, {}",
                    s.workload.name(),
                    s.clients,
                    if s.clients == 1 { "" } else { "s" },
                    if held { "held" } else { "pooled" }
                );
                n += 1;
                tps_met += usize::from(ratio >= 1.0);
                p99_met += usize::from(dp99 <= 0.0);
                failed_met += usize::from(failed == 0);
                if worst_tps.as_ref().is_none_or(|w| ratio < w.0) {
                    worst_tps = Some((ratio, at.clone()));
                }
                if worst_p99.as_ref().is_none_or(|w| dp99 > w.0) {
                    worst_p99 = Some((dp99, at));
                }
            }
        }
        let (Some(wt), Some(wp)) = (worst_tps, worst_p99) else {
            return m;
        };
        let _ = writeln!(
            m,
            "**Goals against the hand-written loop**, over {n} comparisons (each workload and \
            client count, held and pooled): goodput ≥ 1.00× met in **{tps_met} of {n}** (worst \
            {:.2}: {}); 0 failed met in **{failed_met} of {n}**; p99 ≤ the hand-written p99 met \
            in **{p99_met} of {n}** (worst {:+.2} ms: {}).\n",
            wt.0, wt.1, wp.0, wp.1
        );
        m
    }

    /// Section 4's account of where the time goes on the hot row at 2 and 4 clients; empty
    /// without those points.
    fn time_breakdown(&self) -> String {
        let points: Vec<&ScalePoint> = self
            .scaling
            .iter()
            .filter(|s| ScalePoint::broken_down(s.workload, s.clients))
            .collect();
        if points.is_empty() {
            return String::new();
        }
        let mut m = String::new();
        let _ = writeln!(
            m,
            "**Where the time goes at 2 and 4 clients** (hot row, the runs above):\n"
        );
        let _ = writeln!(
            m,
            "| clients | implementation | tx/s | retries / tx | client CPU µs / tx | server CPU µs / tx | client wake-ups / tx | client preemptions / tx | backend wake-ups / tx | backend preemptions / tx | round trips / tx, through a proxy (its retries / tx) |"
        );
        let _ = writeln!(m, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let order = [
            ScalingImp::Pgbench,
            ScalingImp::HandHeld,
            ScalingImp::OursHeld,
            ScalingImp::HandPooled,
            ScalingImp::OursPooled,
        ];
        let num = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
        };
        for s in &points {
            for which in order {
                let Some(r) = s.get(which) else { continue };
                let (cpu_c, cpu_s) = r.cpu_us_per_commit();
                let _ = writeln!(
                    m,
                    "| {} | {} | {:.0} | {:.3} | {} | {} | {} | {} | {} | {} | {} |",
                    s.clients,
                    which.label(),
                    r.tps(),
                    r.retries_per_commit(),
                    num(cpu_c, 0),
                    num(cpu_s, 0),
                    num(r.per_commit(|t| t.client.map(|c| c.voluntary)), 1),
                    num(r.per_commit(|t| t.client.map(|c| c.involuntary)), 1),
                    num(r.per_commit(|t| t.server.map(|c| c.voluntary)), 2),
                    num(r.per_commit(|t| t.server.map(|c| c.involuntary)), 2),
                    s.round_trips[which as usize]
                        .map_or("–".into(), |(t, r)| format!("{t:.2} ({r:.3})")),
                );
            }
        }
        let _ = writeln!(
            m,
            "\nClient CPU is our whole process (runtime, sqlx, the loop) or pgbench's, read from \
             `/proc` around the run; server CPU the postmaster with the backends it reaped, over \
             the connections' lives. Wake-ups and preemptions are the voluntary and involuntary \
             context switches of the client process's threads and of the run's backends \
             (`/proc/PID/task/*/status`); a backend wakes when its client's next message \
             arrives unless it came while the backend was still busy, and when a row lock it \
             waited for is released. Round trips (simple queries and Syncs, the pool's release \
             pings included) were counted in one more run of {:.1} s per implementation through \
             a counting proxy, whose hop slows every round trip, so its retries differ from the \
             run above; a committed attempt is 4 round trips on held connections (BEGIN, \
             SELECT, UPDATE, COMMIT), and a retry adds the failed attempt's and a ROLLBACK. \
             Ours are counted from the start to the end of the run; pgbench's while it runs, \
             from when all its clients are connected to the last reading (every 20 ms) before \
             it exits, and per transaction at its rate.\n",
            self.plan.scaling.min(Duration::from_secs(1)).as_secs_f64()
        );
        for s in &points {
            if let Some(line) = breakdown_sentence(s) {
                let _ = writeln!(m, "{line}\n");
            }
        }
        m
    }

    /// Section 6: read replicas; a note when the pair could not start, empty when not run.
    fn replicas_section(&self) -> String {
        let Some(result) = &self.replicas else {
            return String::new();
        };
        let mut m = String::new();
        let _ = writeln!(m, "## 6. Read replicas\n");
        let rep = match result {
            Ok(rep) => rep,
            Err(why) => {
                let _ = writeln!(
                    m,
                    "Not measured: the primary + standby pair did not start ({}). The section \
                     starts a pair of its own from the PostgreSQL binaries on this machine; a \
                     server given by `DATABASE_URL` can't be given a standby.\n",
                    why.trim_end_matches('.')
                );
                return m;
            }
        };
        let p = &self.plan;
        let _ = writeln!(
            m,
            "A primary and one hot standby of their own (PostgreSQL {}, the testkit's \
             `PgReplicaPair`: a `pg_basebackup` of the primary streaming its WAL, asynchronous, \
             `fsync=off`). {} clients; each call is, with probability {:.2}, a `replica` read \
             (`#[serializable_retry(read_only, isolation = \"repeatable_read\", replica)]`: one \
             account's balance by primary key, and `pg_is_in_recovery()` in the same query to \
             tell where it ran), else a transfer at the default isolation (SERIALIZABLE: read \
             both balances, update both) among {} accounts. A read right after the client's own \
             transfer reads the account it debited and counts as having missed the transfer \
             when it sees an older version of the row. Pools of {} connections per server; \
             `max_lag` {} ms. {} × {:.1} s per configuration, the order rotated per round, \
             figures summed over rounds. The standby runs and replays the primary's WAL in \
             every configuration: the `&PgPool` baseline is a primary whose standby takes none \
             of its reads.\n",
            rep.version,
            replicas::CLIENTS,
            replicas::READ_SHARE,
            replicas::ACCOUNTS,
            replicas::CLIENTS,
            rep.max_lag.as_millis(),
            p.replica_rounds,
            p.replicas.as_secs_f64(),
        );
        let _ = writeln!(
            m,
            "Both servers run on this machine's {} CPUs, beside the clients: a standby adds no \
             capacity here. It moves the reads' work to another server on the same CPUs, and \
             replaying the primary's WAL costs CPU of its own; on a machine of its own its CPU \
             would add to the primary's instead.\n",
            cpus()
        );
        let _ = writeln!(
            m,
            "| configuration | reads/s | transfers/s | reads p50 / p99 ms | transfers p50 / p99 ms | failed | retries (reads / transfers) | reads on the standby | reads after own transfer | of which missed it | their p50 / p99 ms |"
        );
        let _ = writeln!(m, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &rep.runs {
            let _ = writeln!(
                m,
                "| {} | {:.0} | {:.0} | {:.2} / {:.2} | {:.2} / {:.2} | {} | {} / {} | {:.1} % | {} | {} | {:.2} / {:.2} |",
                r.via.title(),
                r.reads_per_s(),
                r.writes_per_s(),
                r.reads.pct_ms(0.5),
                r.reads.pct_ms(0.99),
                r.writes.pct_ms(0.5),
                r.writes.pct_ms(0.99),
                r.reads.failed + r.writes.failed,
                r.reads.retries,
                r.writes.retries,
                r.standby_share() * 100.0,
                r.after_write.ok,
                r.stale,
                r.after_write.pct_ms(0.5),
                r.after_write.pct_ms(0.99),
            );
        }
        let _ = writeln!(m);
        m.push_str(&replica_cpu_table(&rep.runs));
        m.push_str(&replica_findings(rep, cpus()));
        m.push_str(&replica_micro(rep));
        m
    }
}

/// The variants of section 4's account of the gap to the hand-written loop, in the report's
/// order: ours with the default policy, and without what it adds to a retry loop, one thing at a
/// time, beside the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapImp {
    /// `Policy::builder().max_attempts(max)`: the default backoff and priority turns.
    Default,
    /// The same with a later turn, `.priority_after(LATER_TURN)`.
    LaterTurn,
    /// The default turns without backoff, `.backoff(Backoff::none())`: a call retries at once
    /// until its turn.
    TurnsNoBackoff,
    /// The same without priority turns.
    NoTurns,
    /// The same without priority turns or backoff: retries at once, as the loop does.
    NoTurnsNoBackoff,
    /// The hand-written loop, committing as ours does (the check, COMMIT and the empty
    /// transaction), so that `Ok` means committed.
    HandChecked,
    /// The hand-written loop.
    Hand,
}

/// The later turn of section 4's gap account and of §5 (a): a call's fourth attempt runs alone.
/// (The label of [`GapImp::LaterTurn`] names it.)
pub const LATER_TURN: u32 = 3;
const _: () = assert!(LATER_TURN == 3, "GapImp::LaterTurn's label says 3");

/// [`GapImp`]s in the report's order.
pub const GAP_IMPS: [GapImp; 7] = [
    GapImp::Default,
    GapImp::LaterTurn,
    GapImp::TurnsNoBackoff,
    GapImp::NoTurns,
    GapImp::NoTurnsNoBackoff,
    GapImp::HandChecked,
    GapImp::Hand,
];
// The gap account's text counts its variants in words ("running the seven once").
const _: () = assert!(GAP_IMPS.len() == 7, "the gap account's text says seven");

impl GapImp {
    /// Its name in the report.
    pub fn label(self) -> &'static str {
        match self {
            GapImp::Default => "sqlx-retry, default policy",
            GapImp::LaterTurn => "sqlx-retry, turns after 3",
            GapImp::TurnsNoBackoff => "sqlx-retry, turns, no backoff",
            GapImp::NoTurns => "sqlx-retry, no priority turns",
            GapImp::NoTurnsNoBackoff => "sqlx-retry, no turns, no backoff",
            GapImp::HandChecked => "hand-written, committing as ours does",
            GapImp::Hand => "hand-written",
        }
    }
}

/// One point of section 4's account of the gap: a workload, client count and way of taking
/// connections, every [`GapImp`] in rounds.
#[derive(Debug, Clone)]
pub struct GapPoint {
    /// The workload.
    pub workload: Workload,
    /// Clients.
    pub clients: usize,
    /// Whether every variant took its connections from a pool (else each client held one).
    pub pooled: bool,
    /// The runs of each variant, in [`GAP_IMPS`] order.
    pub rounds: Rounds<7>,
}

impl GapPoint {
    /// No runs yet.
    pub fn new(workload: Workload, clients: usize, pooled: bool) -> GapPoint {
        GapPoint {
            workload,
            clients,
            pooled,
            rounds: Rounds::default(),
        }
    }

    /// How the point's clients took their connections, as the report says it.
    pub fn conns(&self) -> &'static str {
        if self.pooled { "pooled" } else { "held" }
    }

    /// Adds a round's run of `which`.
    pub fn add(&mut self, which: GapImp, run: RunResult) {
        self.rounds.add(which as usize, run);
    }

    /// The runs of `which`, added up over the rounds.
    fn get(&self, which: GapImp) -> Option<&RunResult> {
        self.rounds.get(which as usize)
    }

    /// Goodput of `a` over `b`, over the rounds added up; `None` unless both ran.
    fn ratio(&self, a: GapImp, b: GapImp) -> Option<f64> {
        self.rounds.ratio(a as usize, b as usize)
    }
}

/// The lowest and the highest of `values`; `None` when there are none.
pub fn lo_hi(values: &[f64]) -> Option<(f64, f64)> {
    let first = *values.first()?;
    Some(
        values
            .iter()
            .fold((first, first), |(lo, hi), &v| (lo.min(v), hi.max(v))),
    )
}

/// The client counts of some points, as "2–8" (or one count).
fn clients_range(clients: impl Iterator<Item = usize> + Clone) -> String {
    let lo = clients.clone().min().unwrap_or(0);
    let hi = clients.max().unwrap_or(0);
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}–{hi}")
    }
}

/// The lowest and highest of `ratios`, as "0.91–1.04" (or one figure).
fn ratio_range(ratios: &[f64]) -> String {
    range(ratios, 2)
}

/// "0.12–0.34" (or one figure when both ends print alike, "–" for none), to `decimals` places.
fn range(values: &[f64], decimals: usize) -> String {
    match lo_hi(values) {
        None => "–".into(),
        Some((lo, hi)) if format!("{lo:.decimals$}") == format!("{hi:.decimals$}") => {
            format!("{lo:.decimals$}")
        }
        Some((lo, hi)) => format!("{lo:.decimals$}–{hi:.decimals$}"),
    }
}

/// Section 4's account of the gap to the hand-written loop; empty without its points.
fn gap_account(points: &[GapPoint], max: u32) -> String {
    if points.is_empty() {
        return String::new();
    }
    let mut m = String::new();
    let held: Vec<&GapPoint> = points.iter().filter(|p| !p.pooled).collect();
    let pooled: Vec<&GapPoint> = points.iter().filter(|p| p.pooled).collect();
    let at = |ps: &[&GapPoint]| clients_range(ps.iter().map(|p| p.clients));
    let wheres = match (held.is_empty(), pooled.is_empty()) {
        (false, false) => format!(
            "at {} clients on held connections and at {} through a pool",
            at(&held),
            join_and(&distinct_clients(&pooled))
        ),
        (false, true) => format!("at {} clients on held connections", at(&held)),
        _ => format!(
            "at {} clients through a pool",
            join_and(&distinct_clients(&pooled))
        ),
    };
    let rounds = points.iter().map(|p| p.rounds.rounds()).max().unwrap_or(0);
    let rounds = if rounds == 1 {
        "One round per point, running the seven once in an order rotated from point to point; \
         \"by round\" is the ratio to the loop"
            .to_owned()
    } else {
        format!(
            "{rounds} rounds per point, each running the seven once in an order rotated from \
             round to round and point to point; tx/s add up over the rounds, and \"by round\" is \
             each round's ratio to the loop"
        )
    };
    let _ = writeln!(
        m,
        "**What the gap to the hand-written loop is made of, {wheres}.** Runs of their own on \
         the same workloads, through `sqlx_retry::transaction` with \
         `Policy::builder().max_attempts({max})`: as built (the default backoff and priority \
         turns), with a later turn (`.priority_after({later})`: a call's fourth attempt, not its \
         third, runs alone; §5 (a) runs it at the default 5 attempts too), with the default \
         turns and `.backoff(Backoff::none())` (a call retries at once until its turn), with \
         `.priority_after(None)`, and with that and `.backoff(Backoff::none())` too, which \
         retries at once as the loop does; beside the hand-written loop, which takes \
         its connections the same way, as it is and ending each transaction as ours does \
         (`{commit}`, then the `Transaction` dropped): the check and the empty transaction of §1 (d), the per-transaction SQL that \
         makes `Ok` mean committed, which sqlx 0.9 leaves a loop no cheaper way to get. \
         {rounds}. \"this / hand\" is each variant's goodput over the plain loop's.\n",
        commit = crate::OURS_COMMIT_SQL,
        later = LATER_TURN,
    );
    let _ = writeln!(
        m,
        "| workload | clients | connections | implementation | tx/s | this / hand | by round | retries / tx | p99 ms | most attempts | failed |"
    );
    let _ = writeln!(m, "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for p in points {
        for which in GAP_IMPS {
            let Some(r) = p.get(which) else {
                continue;
            };
            let (vs, by_round) = if which == GapImp::Hand {
                (String::new(), String::new())
            } else {
                let each: Vec<String> = p
                    .rounds
                    .round_ratios(which as usize, GapImp::Hand as usize)
                    .iter()
                    .map(|t| format!("{t:.2}"))
                    .collect();
                (
                    p.ratio(which, GapImp::Hand)
                        .map_or("–".into(), |t| format!("{t:.2}")),
                    each.join(", "),
                )
            };
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {:.0} | {vs} | {by_round} | {:.3} | {:.2} | {} | {} |",
                p.workload.name(),
                p.clients,
                p.conns(),
                which.label(),
                r.tps(),
                r.retries_per_commit(),
                r.pct_ms(0.99),
                r.max_attempts.map_or("–".into(), |a| a.to_string()),
                r.failed,
            );
        }
    }
    let _ = writeln!(m);
    for (kind, ps) in [("On held connections", &held), ("Through a pool", &pooled)] {
        if !ps.is_empty() {
            let _ = writeln!(m, "{}", gap_summary(kind, ps));
        }
    }
    m
}

/// The distinct client counts of `points`, in the order they first appear.
fn distinct_clients(points: &[&GapPoint]) -> Vec<usize> {
    let mut seen = Vec::new();
    for p in points {
        if !seen.contains(&p.clients) {
            seen.push(p.clients);
        }
    }
    seen
}

/// Numbers as prose: "4", "4 and 16", "2, 4 and 8".
fn join_and(values: &[usize]) -> String {
    match values {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => {
            let rest: Vec<String> = rest.iter().map(|v| v.to_string()).collect();
            format!("{} and {last}", rest.join(", "))
        }
    }
}

/// The gap account's summary of `points`, all held or all pooled: each step's range of ratios and
/// the most attempts of each variant.
fn gap_summary(kind: &str, points: &[&GapPoint]) -> String {
    let step = |a: GapImp, b: GapImp| -> Vec<f64> {
        points.iter().filter_map(|p| p.ratio(a, b)).collect()
    };
    let attempts = |which: GapImp| {
        points
            .iter()
            .filter_map(|p| p.get(which)?.max_attempts)
            .max()
            .map_or("–".into(), |a| a.to_string())
    };
    let retries = |which: GapImp| {
        let each: Vec<f64> = points
            .iter()
            .filter_map(|p| Some(p.get(which)?.retries_per_commit()))
            .collect();
        range(&each, 3)
    };
    let tail_met = |which: GapImp| {
        let met = points
            .iter()
            .filter(|p| {
                let (Some(ours), Some(hand)) = (p.get(which), p.get(GapImp::Hand)) else {
                    return false;
                };
                ours.pct_ms(0.99) <= hand.pct_ms(0.99)
            })
            .count();
        format!("{met} of {}", points.len())
    };
    format!(
        "{kind}, over {}, goodput as a ratio: the default policy to the loop {}, and to the \
         loop committing as ours does {}; priority turns (the default to the same without \
         them) {}; a later turn (after {LATER_TURN}, to the default) {}; the backoff with turns \
         (the default to turns without backoff) {}; the backoff (without turns, to without \
         turns or backoff) {}; ours' loop itself (no turns, no backoff, to the loop committing \
         as ours does) {}; the per-transaction SQL (the loop committing as ours does, to the \
         plain loop) {}. p99 at or below the loop's: {} with the default policy, {} with turns \
         and no backoff. Retries per commit: {} with the default policy, {} with turns after \
         {LATER_TURN}, {} with turns and no backoff, {} without turns, {} without turns or \
         backoff, {} for the loop. The most attempts any call needed: {} with the default \
         policy, {} with turns after {LATER_TURN}, {} with turns and no backoff, {} without \
         turns, {} without turns or backoff (calls that need more than `max_attempts` fail; \
         the default is 5).\n",
        match points.len() {
            1 => "1 point".to_owned(),
            n => format!("{n} points"),
        },
        ratio_range(&step(GapImp::Default, GapImp::Hand)),
        ratio_range(&step(GapImp::Default, GapImp::HandChecked)),
        ratio_range(&step(GapImp::Default, GapImp::NoTurns)),
        ratio_range(&step(GapImp::LaterTurn, GapImp::Default)),
        ratio_range(&step(GapImp::Default, GapImp::TurnsNoBackoff)),
        ratio_range(&step(GapImp::NoTurns, GapImp::NoTurnsNoBackoff)),
        ratio_range(&step(GapImp::NoTurnsNoBackoff, GapImp::HandChecked)),
        ratio_range(&step(GapImp::HandChecked, GapImp::Hand)),
        tail_met(GapImp::Default),
        tail_met(GapImp::TurnsNoBackoff),
        retries(GapImp::Default),
        retries(GapImp::LaterTurn),
        retries(GapImp::TurnsNoBackoff),
        retries(GapImp::NoTurns),
        retries(GapImp::NoTurnsNoBackoff),
        retries(GapImp::Hand),
        attempts(GapImp::Default),
        attempts(GapImp::LaterTurn),
        attempts(GapImp::TurnsNoBackoff),
        attempts(GapImp::NoTurns),
        attempts(GapImp::NoTurnsNoBackoff),
    )
}

/// How section 4 runs each implementation at a point: "2 rounds of 3.0 s per implementation at
/// each workload and client count, …".
fn rounds_phrase(rounds: usize, each: Duration) -> String {
    // The text counts the implementations in words.
    const _: () = assert!(SCALING_IMPS.len() == 5, "section 4's text says five");
    let order = "each round runs the five implementations once, in an order rotated from round \
                 to round and from point to point";
    if rounds == 1 {
        format!(
            "{:.1} s per run, one run per implementation at each workload and client count; \
             {order}",
            each.as_secs_f64()
        )
    } else {
        format!(
            "{rounds} rounds of {:.1} s per implementation at each workload and client count; \
             {order}. The figures add up over the rounds; the goodput column gives each \
             round's ratio after the sum's",
            each.as_secs_f64()
        )
    }
}

/// Section 4's table of one workload.
fn scaling_table(w: Workload, points: &[&ScalePoint]) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "**{}**\n", w.name());
    let _ = writeln!(
        m,
        "| clients | implementation | tx/s | p99 ms | failed | retries / tx | most attempts | goodput ours / hand (goal ≥ 1.00) | p99 ours − hand (goal ≤ 0) |"
    );
    let _ = writeln!(m, "|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for s in points {
        for which in SCALING_IMPS {
            let Some(r) = s.get(which) else { continue };
            let held = which == ScalingImp::OursHeld;
            let vs_hand = match which {
                ScalingImp::OursHeld | ScalingImp::OursPooled => s.against_hand(held),
                _ => None,
            };
            let rounds = match which {
                ScalingImp::OursHeld | ScalingImp::OursPooled => s.round_ratios(held),
                _ => Vec::new(),
            };
            let rounds = if rounds.is_empty() {
                String::new()
            } else {
                let each: Vec<String> = rounds.iter().map(|t| format!("{t:.2}")).collect();
                format!(" ({})", each.join(", "))
            };
            let _ = writeln!(
                m,
                "| {} | {} | {:.0} | {:.2} | {} | {:.3} | {} | {} | {} |",
                s.clients,
                which.label(),
                r.tps(),
                r.pct_ms(0.99),
                r.failed,
                r.retries_per_commit(),
                r.max_attempts.map_or("–".into(), |a| a.to_string()),
                vs_hand.map_or(String::new(), |(t, _, _)| format!(
                    "{t:.2} {}{rounds}",
                    verdict(t >= 1.0)
                )),
                vs_hand.map_or(String::new(), |(_, d, _)| format!(
                    "{d:+.2} ms {}",
                    verdict(d <= 0.0)
                )),
            );
        }
    }
    let _ = writeln!(m);
    let tail: Vec<&&ScalePoint> = points.iter().filter(|s| s.clients >= 16).collect();
    if !tail.is_empty() {
        let cells: Vec<String> = SCALING_IMPS
            .iter()
            .filter_map(|&which| {
                let runs: Vec<&RunResult> = tail.iter().filter_map(|s| s.get(which)).collect();
                if runs.is_empty() {
                    return None;
                }
                let attempts = runs
                    .iter()
                    .map(|r| r.max_attempts)
                    .try_fold(0, |a, b| b.map(|b| a.max(b)));
                let p99 = runs.iter().map(|r| r.pct_ms(0.99)).fold(0.0, f64::max);
                Some(format!(
                    "{} {} attempts, p99 ≤ {p99:.2} ms",
                    which.label(),
                    attempts.map_or("–".into(), |a| a.to_string())
                ))
            })
            .collect();
        let range = clients_range(tail.iter().map(|s| s.clients));
        let _ = writeln!(
            m,
            "Tail and fairness at {range} clients, the most attempts any call needed and the \
            highest p99: {}.\n",
            cells.join("; ")
        );
    }
    m
}

/// One sentence on a point of section 4's time breakdown: client CPU and round trips of the
/// sqlx loops against pgbench's, and what the pool adds; `None` without pgbench's figures.
fn breakdown_sentence(s: &ScalePoint) -> Option<String> {
    let pg = s.get(ScalingImp::Pgbench)?;
    let cpu = |r: &RunResult| r.cpu_us_per_commit().0;
    let trips = |w: ScalingImp| s.round_trips[w as usize].map(|t| t.0);
    let switches = |r: &RunResult| r.per_commit(|t| t.client.map(|c| c.voluntary));
    let pg_cpu = cpu(pg)?;
    let mut parts = Vec::new();
    for which in [ScalingImp::HandHeld, ScalingImp::OursHeld] {
        let Some(r) = s.get(which) else { continue };
        let Some(c) = cpu(r) else { continue };
        parts.push(format!(
            "{} {:.2}× pgbench's client CPU per transaction ({c:.0} against {pg_cpu:.0} µs){}{}",
            which.label(),
            c / pg_cpu.max(1e-9),
            switches(r)
                .zip(switches(pg))
                .map_or(String::new(), |(a, b)| format!(
                    ", {:.2}× its client wake-ups",
                    a / b.max(1e-9)
                )),
            trips(which)
                .zip(trips(ScalingImp::Pgbench))
                .map_or(String::new(), |(a, b)| format!(
                    ", {a:.2} round trips per transaction against {b:.2}"
                )),
        ));
    }
    let mut pool = Vec::new();
    for (held, pooled) in [
        (ScalingImp::HandHeld, ScalingImp::HandPooled),
        (ScalingImp::OursHeld, ScalingImp::OursPooled),
    ] {
        let (Some(h), Some(p)) = (s.get(held), s.get(pooled)) else {
            continue;
        };
        let (Some(ch), Some(cp)) = (cpu(h), cpu(p)) else {
            continue;
        };
        pool.push(format!(
            "{} {:+.0} µs of client CPU{}",
            pooled.label(),
            cp - ch,
            trips(held)
                .zip(trips(pooled))
                .map_or(String::new(), |(a, b)| format!(
                    " and {:+.2} round trips",
                    b - a
                )),
        ));
    }
    let mut line = format!("At {} clients: {}.", s.clients, parts.join("; "));
    if !pool.is_empty() {
        let _ = write!(
            line,
            " The pool's acquire and release ping cost per transaction, against the same loop \
            on held connections: {}.",
            pool.join("; ")
        );
    }
    Some(line)
}

/// Section 6's CPU table: where the CPU time of each configuration went.
fn replica_cpu_table(runs: &[MixRun]) -> String {
    if runs
        .iter()
        .all(|r| r.cpu_primary.is_none() && r.cpu_standby.is_none())
    {
        return String::new();
    }
    let mut m = String::new();
    let _ = writeln!(
        m,
        "CPU time per second of the run (1000 ms/s = one CPU busy), read from `/proc` for the \
         benchmark process (the clients) and for every process of each server; the standby's \
         WAL replay (its startup process and WAL receiver) is also shown apart. Per call: both \
         servers' CPU over reads and transfers together.\n"
    );
    let _ = writeln!(
        m,
        "| configuration | clients ms/s | primary ms/s | standby ms/s | of which WAL replay ms/s | all ms/s | servers µs per call |"
    );
    let _ = writeln!(m, "|---|---:|---:|---:|---:|---:|---:|");
    let cell = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.0}"));
    for r in runs {
        let servers = (|| Some(r.cpu_primary? + r.cpu_standby?))();
        let all = (|| Some(servers? + r.cpu_client?))();
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.via.title(),
            cell(r.per_s_ms(r.cpu_client)),
            cell(r.per_s_ms(r.cpu_primary)),
            cell(r.per_s_ms(r.cpu_standby)),
            cell(r.per_s_ms(r.cpu_replay)),
            cell(r.per_s_ms(all)),
            cell(r.per_call_us(servers)),
        );
    }
    let _ = writeln!(m);
    m
}

/// How `x` compares with a baseline of 1: "1.08× (8 % more)", within 3 % "about the same".
fn times(x: f64) -> String {
    if (x - 1.0).abs() < 0.03 {
        format!("{x:.2}× (about the same)")
    } else if x > 1.0 {
        format!("{x:.2}× ({:.0} % more)", (x - 1.0) * 100.0)
    } else {
        format!("{x:.2}× ({:.0} % less)", (1.0 - x) * 100.0)
    }
}

/// Section 6's reading of the figures, from the data.
fn replica_findings(rep: &Replicas, cpus: usize) -> String {
    let find = |v: Via| rep.runs.iter().find(|r| r.via == v);
    let (Some(pool), Some(cluster), Some(session)) =
        (find(Via::Pool), find(Via::Cluster), find(Via::Session))
    else {
        return String::new();
    };
    let mut m = String::new();
    let calls = |r: &MixRun| r.reads_per_s() + r.writes_per_s();
    let base = calls(pool).max(1e-9);
    let _ = writeln!(
        m,
        "- **Throughput.** Calls per second (reads and transfers): `&cluster` {}, sessions {} \
         the `&PgPool` baseline's {:.0}; reads/s {} and {}, transfers/s {} and {}.",
        times(calls(cluster) / base),
        times(calls(session) / base),
        base,
        times(cluster.reads_per_s() / pool.reads_per_s().max(1e-9)),
        times(session.reads_per_s() / pool.reads_per_s().max(1e-9)),
        times(cluster.writes_per_s() / pool.writes_per_s().max(1e-9)),
        times(session.writes_per_s() / pool.writes_per_s().max(1e-9)),
    );
    let busy = |r: &MixRun| {
        let all = r.cpu_client? + r.cpu_primary? + r.cpu_standby?;
        r.per_s_ms(Some(all)).map(|ms| ms / 1000.0)
    };
    if let (Some(b0), Some(b1), Some(b2)) = (busy(pool), busy(cluster), busy(session)) {
        let ms = |r: &MixRun, d: Option<Duration>| r.per_s_ms(d).unwrap_or(0.0);
        let servers = |r: &MixRun| r.per_call_us((|| Some(r.cpu_primary? + r.cpu_standby?))());
        let _ = write!(
            m,
            "- **Where the CPU went.** The clients and both servers kept {b0:.2}, {b1:.2} and \
             {b2:.2} of the machine's {cpus} CPUs busy (baseline, `&cluster`, sessions). With \
             `&cluster` the primary used {:.0} ms/s against the baseline's {:.0}, the standby \
             {:.0} against {:.0}; the standby's WAL replay alone took {:.0} ms/s in the baseline \
             and {:.0} with `&cluster`. Both servers together spent {} µs of CPU per call with \
             `&cluster`, {} with sessions, against {} in the baseline",
            ms(cluster, cluster.cpu_primary),
            ms(pool, pool.cpu_primary),
            ms(cluster, cluster.cpu_standby),
            ms(pool, pool.cpu_standby),
            ms(pool, pool.cpu_replay),
            ms(cluster, cluster.cpu_replay),
            opt_us(servers(cluster)),
            opt_us(servers(session)),
            opt_us(servers(pool)),
        );
        let dearer = match (servers(cluster), servers(pool)) {
            (Some(c), Some(p)) => c > p * 1.05,
            _ => false,
        };
        let as_busy = (b1 - b0).abs() < 0.1;
        if dearer && as_busy {
            let _ = write!(
                m,
                ": with the CPUs as busy as in the baseline and each call costing the servers \
                 more, fewer calls fit in a second"
            );
        }
        let _ = writeln!(m, ".");
    }
    let rest = if cluster.on_standby == cluster.reads.ok && session.on_standby == session.reads.ok {
        "every one of them"
    } else {
        "the rest ran on the primary, where a `replica` call goes when the standby is not known \
         to be within `max_lag` or (through a session) has not replayed the client's last \
         transfer within `max_lag`"
    };
    let _ = writeln!(
        m,
        "- **Where the reads ran.** `&cluster` ran {} of its {} reads on the standby ({:.1} %), \
         the sessions {} of {} ({:.1} %): {rest}.",
        cluster.on_standby,
        cluster.reads.ok,
        cluster.standby_share() * 100.0,
        session.on_standby,
        session.reads.ok,
        session.standby_share() * 100.0,
    );
    let pct = |r: &MixRun| r.stale as f64 * 100.0 / r.after_write.ok.max(1) as f64;
    let _ = writeln!(
        m,
        "- **Read-your-writes.** Of the reads right after the client's own transfer, \
         `&cluster`'s missed that transfer {} times in {} ({:.1} %), the sessions' {} times in \
         {}, the baseline's {} times in {}. Those reads took {:.2} ms at the median \
         (p99 {:.2}) through sessions against {:.2} (p99 {:.2}) through `&cluster`: a \
         session's read waits until the standby has replayed the transfer (polling from 1 ms), \
         or runs on the primary.",
        cluster.stale,
        cluster.after_write.ok,
        pct(cluster),
        session.stale,
        session.after_write.ok,
        pool.stale,
        pool.after_write.ok,
        session.after_write.pct_ms(0.5),
        session.after_write.pct_ms(0.99),
        cluster.after_write.pct_ms(0.5),
        cluster.after_write.pct_ms(0.99),
    );
    let failed: u64 = rep
        .runs
        .iter()
        .map(|r| r.reads.failed + r.writes.failed)
        .sum();
    let _ = writeln!(
        m,
        "- **Correctness.** {} call{} returned an error; {}.\n",
        failed,
        if failed == 1 { "" } else { "s" },
        if rep.balance_kept {
            "after every run the balances still added up to what they started with"
        } else {
            "after some run the balances **no longer** added up to what they started with"
        },
    );
    m
}

fn opt_us(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |v| format!("{v:.0}"))
}

/// Section 6's per-call comparison of a session read with a plain `replica` read.
fn replica_micro(rep: &Replicas) -> String {
    if rep.micro.is_empty() {
        return String::new();
    }
    let mut m = String::new();
    let n = rep.micro.first().map_or(0, |r| r.n);
    let _ = writeln!(
        m,
        "**Per call, one client, no writes**: {n} reads of one account per variant, in blocks \
         whose order rotates, on the same pair after the runs above. The session has made one \
         transfer before, which the standby has replayed: each of its reads sends the replay \
         check. Ratio = the variant's block time over `&cluster`'s in the same block (median \
         over blocks, 95 % bootstrap interval). Round trips are counted at TCP proxies in \
         front of both servers, the two summed, including what the pool sends when the \
         connection goes back to it.\n"
    );
    let _ = writeln!(
        m,
        "| reads through | median µs | p99 µs | time / `&cluster`'s | 95 % interval | round trips per read | on the standby |"
    );
    let _ = writeln!(m, "|---|---:|---:|---:|---:|---:|---:|");
    for r in &rep.micro {
        let _ = writeln!(
            m,
            "| {} | {:.0} | {:.0} | {:.3} | {:.3}–{:.3} | {} | {} of {} |",
            r.micro.title(),
            r.median_us,
            r.p99_us,
            r.vs_cluster,
            r.vs_cluster_ci.0,
            r.vs_cluster_ci.1,
            r.round_trips.map_or("–".to_string(), |t| format!("{t:.2}")),
            r.on_standby,
            r.n,
        );
    }
    let _ = writeln!(m);
    let find = |v: replicas::Micro| rep.micro.iter().find(|r| r.micro == v);
    if let (Some(c), Some(s)) = (
        find(replicas::Micro::Cluster),
        find(replicas::Micro::Session),
    ) {
        let trips = match (c.round_trips, s.round_trips) {
            (Some(a), Some(b)) if (a - b).abs() < 0.05 => format!(
                "with the same {b:.2} round trips per read: the check rides in BEGIN's query"
            ),
            (Some(a), Some(b)) => format!("with {b:.2} round trips per read against {a:.2}"),
            _ => "round trips not counted".to_string(),
        };
        let d = s.median_us - c.median_us;
        let _ = writeln!(
            m,
            "A session read took {:.0} µs {} per call than a `&cluster` read at the median \
             ({:.0} against {:.0} µs; block ratio {:.3}), {trips}.\n",
            d.abs(),
            if d >= 0.0 { "more" } else { "less" },
            s.median_us,
            c.median_us,
            s.vs_cluster,
        );
    }
    m
}

/// Section 1's table and goals for one connection source.
fn overhead_table(run: &OverheadRun) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "**{}**\n", run.target.title());
    let _ = writeln!(
        m,
        "| implementation | median µs/tx | p99 µs/tx | ours/this (block ratio) | 95 % interval | ours/this (median latency) | round trips per tx |"
    );
    let _ = writeln!(m, "|---|---:|---:|---:|---:|---:|---:|");
    for (k, imp) in OVERHEAD_IMPS.iter().enumerate() {
        let _ = writeln!(
            m,
            "| {} | {:.1} | {:.1} | {:.3} | {} | {:.3} | {:.2} |",
            imp,
            run.median_us[k],
            run.p99_us[k],
            run.ratio(k),
            if k == 0 {
                "–".to_string()
            } else {
                format!("{:.3}–{:.3}", run.block_ci[k].0, run.block_ci[k].1)
            },
            run.latency_ratio(k),
            run.round_trips[k]
        );
    }
    let (ra, rb) = (run.ratio(1), run.ratio(2));
    let (ours, theirs) = run.target.critical_round_trips();
    let _ = writeln!(
        m,
        "\n(a) ours / `begin_with` = **{ra:.3}** (goal ≤ 1.02: {}); (b) ours / \
         `begin()` + `SET TRANSACTION` = **{rb:.3}** (goal ≤ 0.80: {}). Round trips the \
         client waits for: ours {ours}, `begin()` + `SET` {theirs}; {:.2} if every \
         round trip cost the same.\n",
        verdict(ra <= 1.02),
        verdict(rb <= 0.80),
        f64::from(ours) / f64::from(theirs),
    );
    m
}

/// Section 1's goals over all connection sources.
fn overhead_goals(runs: &[OverheadRun]) -> String {
    let mut m = String::new();
    let range = |k: usize| {
        let v: Vec<f64> = runs.iter().map(|r| r.ratio(k)).collect();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{lo:.3}–{hi:.3}")
    };
    let met = |k: usize, goal: f64| -> Vec<String> {
        runs.iter()
            .filter(|r| r.ratio(k) <= goal)
            .map(|r| r.target.title())
            .collect()
    };
    let (a_met, b_met) = (met(1, 1.02), met(2, 0.80));
    let _ = writeln!(
        m,
        "Over the {} configurations: (a) ranges {} and meets its goal in {} of them; (b) \
         ranges {} and meets its goal in {} of them{}.\n",
        runs.len(),
        range(1),
        a_met.len(),
        range(2),
        b_met.len(),
        if b_met.is_empty() {
            String::new()
        } else {
            format!(" ({})", b_met.join("; "))
        },
    );
    let conn = runs.iter().find(|r| r.target == crate::Target::Conn);
    if let Some(c) = conn {
        let _ = writeln!(
            m,
            "(c) Round trips per attempt: **{:.2}** on a `PgConnection`; the floor is 1 \
             statement + BEGIN + COMMIT = 3 ({}). Through a pool the proxy counts one more, \
             the pool's release ping, which the hand-written code pays alike.\n",
            c.round_trips[0],
            if c.round_trips[0] <= 3.0 + 1e-9 {
                "at the floor"
            } else {
                "**above the floor**"
            },
        );
    }
    m
}

/// Section 1 (d): what ours' COMMIT on a held connection is made of, step by step.
fn commit_steps_table(s: &CommitSteps) -> String {
    let mut m = String::new();
    if s.clients == 1 {
        let _ = writeln!(
            m,
            "(d) **Where (a) goes on a `PgConnection`.** The same transaction written by hand, \
             each step ending it with one more part of what ours sends to end an attempt, beside \
             ours; {} transactions each, in blocks whose order rotates. Ratios are to step 1, a \
             plain COMMIT as in the `begin_with` row above (median over blocks, with a 95 % \
             bootstrap interval). The connections of (d) update their row through the primary \
             key's index (`enable_seqscan = off`), so that clients on rows of their own never \
             conflict; that makes each transaction faster than in the tables above, and the \
             ratios, not the times, are what compare.\n",
            s.n
        );
    } else {
        let _ = writeln!(
            m,
            "**The same steps with {} clients at once**, each on a `PgConnection` and a row of \
             its own, {} transactions per client and step: the CPUs are busy here, as at the low \
             client counts of section 4, so what a step costs the server and the client shows \
             in full rather than hiding in a lone client's waits. A block ends when every client \
             has run its transactions.\n",
            s.clients, s.n
        );
    }
    let _ = writeln!(
        m,
        "| step | how the transaction ends | median µs/tx | this / plain COMMIT (block ratio) | 95 % interval |"
    );
    let _ = writeln!(m, "|---:|---|---:|---:|---:|");
    for k in (1..COMMIT_STEPS.len()).chain([0]) {
        let _ = writeln!(
            m,
            "| {} | {} | {:.1} | {:.3} | {} |",
            if k == 0 {
                "ours".to_string()
            } else {
                k.to_string()
            },
            COMMIT_STEPS[k],
            s.median_us[k],
            s.to_plain[k],
            if k == 1 {
                "–".to_string()
            } else {
                format!("{:.3}–{:.3}", s.to_plain_ci[k].0, s.to_plain_ci[k].1)
            },
        );
    }
    let pct = |r: f64| format!("{:+.1} %", r * 100.0);
    let _ = writeln!(
        m,
        "\nSo, with {} against a plain COMMIT: the empty transaction costs {}; the check on top \
         of it {} as the `SET LOCAL` ours sends, {} as the `SHOW` it sent before; and ours \
         against step 3, the same SQL written by hand, is {:.3} ({:.3}–{:.3}): that is the \
         loop's own share, which includes writing the empty transaction's ROLLBACK as the call \
         returns rather than ahead of the next BEGIN. Ours against a plain COMMIT: {:.3}.\n",
        if s.clients == 1 {
            "1 client".to_string()
        } else {
            format!("{} clients", s.clients)
        },
        pct(s.to_plain[2] - 1.0),
        pct(s.to_plain[3] - s.to_plain[2]),
        pct(s.to_plain[4] - s.to_plain[2]),
        s.ours_to_check,
        s.ours_to_check_ci.0,
        s.ours_to_check_ci.1,
        s.to_plain[0],
    );
    m
}

/// Heap allocations per transaction, ours against the hand-written code.
fn allocations(a: &Allocs) -> String {
    let mut m = String::new();
    let _ = writeln!(
        m,
        "Heap allocations per transaction, counted with `allocation-counter` (a counting \
         global allocator; the transactions run on a current-thread runtime so that the \
         connection's I/O and sqlx's release task are counted too):\n"
    );
    let _ = writeln!(
        m,
        "| source | `#[serializable_retry]` | hand `begin_with` | ours − hand |"
    );
    let _ = writeln!(m, "|---|---:|---:|---:|");
    for (what, [ours, hand]) in [
        ("one `PgConnection`", a.conn),
        ("a one-connection pool", a.pool),
        ("the mock source (no database)", a.mock),
    ] {
        let _ = writeln!(
            m,
            "| {what} | {ours:.1} | {hand:.1} | {:+.1} |",
            ours - hand
        );
    }
    let _ = writeln!(
        m,
        "\nThe loop allocates three times per attempt: the boxed `begin` and `finish` \
         futures (boxed to get around the compiler's higher-ranked `Send` check, see \
         `Attempts::begin`) and the attempt's after-commit \
         registry (an `Arc`); the tracing span and the policy allocate nothing without a \
         subscriber. A retry adds the per-call backoff state once. Against sqlx's own \
         allocations per transaction this is the difference in the table, and at a few \
         tens of nanoseconds each it is part of the loop cost above.\n"
    );
    m
}

/// Picks one series' result out of a scaling point.
type SeriesFn = Box<dyn Fn(&ScalePoint) -> Option<&RunResult>>;

/// The scaling chart: goodput and p99 against clients (log₂ axis), two panels.
pub fn chart(rep: &Report) -> String {
    let w = 980.0;
    let h = 400.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let series: [(&str, &str, SeriesFn); 3] = [
        (
            "sqlx-retry, held (default backoff)",
            "#1f77b4",
            Box::new(|s| s.get(ScalingImp::OursHeld)),
        ),
        (
            "hand-written, held (immediate retry)",
            "#2ca02c",
            Box::new(|s| s.get(ScalingImp::HandHeld)),
        ),
        (
            "pgbench (immediate retry)",
            "#d62728",
            Box::new(|s| s.get(ScalingImp::Pgbench)),
        ),
    ];
    // The hot row only: one chart, the tables cover the other workloads.
    let hot: Vec<&ScalePoint> = rep
        .scaling
        .iter()
        .filter(|s| s.workload == Workload::Hot)
        .collect();
    let xs: Vec<usize> = hot.iter().map(|s| s.clients).collect();
    let serial = hot
        .iter()
        .find(|s| s.clients == 1)
        .and_then(|s| s.get(ScalingImp::OursHeld))
        .map(RunResult::tps);
    for (panel, (title, unit, metric)) in [
        (
            "Goodput (committed tx/s)",
            "tx/s",
            (|r: &RunResult| r.tps()) as fn(&RunResult) -> f64,
        ),
        ("p99 latency (ms)", "ms", |r: &RunResult| r.pct_ms(0.99)),
    ]
    .into_iter()
    .enumerate()
    {
        let (x0, y0, pw, ph) = (70.0 + panel as f64 * 490.0, 40.0, 390.0, 290.0);
        let mut ymax: f64 = 0.0;
        for s in &hot {
            for (_, _, f) in &series {
                if let Some(r) = f(s) {
                    ymax = ymax.max(metric(r));
                }
            }
        }
        if panel == 0
            && let Some(sv) = serial
        {
            ymax = ymax.max(sv);
        }
        let ymax = nice(ymax.max(1e-9) * 1.1);
        let lx = |c: usize| -> f64 {
            let lo = (*xs.first().unwrap_or(&1) as f64).log2();
            let hi = (*xs.last().unwrap_or(&64) as f64).log2().max(lo + 1.0);
            x0 + ((c as f64).log2() - lo) / (hi - lo) * pw
        };
        let ly = |v: f64| y0 + ph - v / ymax * ph;
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">{title}</text>",
            x0 + pw / 2.0
        );
        let _ = writeln!(
            svg,
            "<line x1=\"{x0}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{}\" stroke=\"black\"/>",
            y0 + ph,
            x0 + pw,
            y0 + ph,
            y0 + ph
        );
        for i in 0..=5 {
            let v = ymax * i as f64 / 5.0;
            let y = ly(v);
            let _ = writeln!(
                svg,
                "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                x0 + pw,
                x0 - 6.0,
                y + 4.0,
                fmt_axis(v)
            );
        }
        for &c in &xs {
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{c}</text>",
                lx(c),
                y0 + ph + 16.0
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">clients (log scale)</text><text x=\"{}\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 {} {})\">{unit}</text>",
            x0 + pw / 2.0,
            y0 + ph + 34.0,
            x0 - 52.0,
            y0 + ph / 2.0,
            x0 - 52.0,
            y0 + ph / 2.0
        );
        if panel == 0
            && let Some(sv) = serial
        {
            let y = ly(sv);
            let _ = writeln!(
                svg,
                "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#888\" stroke-dasharray=\"5,4\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">serial ceiling (1 client)</text>",
                x0 + pw,
                x0 + pw - 4.0,
                y - 5.0
            );
        }
        for (name, color, f) in &series {
            let pts: Vec<String> = hot
                .iter()
                .filter_map(|s| f(s).map(|r| format!("{:.1},{:.1}", lx(s.clients), ly(metric(r)))))
                .collect();
            if pts.is_empty() {
                continue;
            }
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"><title>{name}</title></polyline>",
                pts.join(" ")
            );
            for p in &pts {
                let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(
                    svg,
                    "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{color}\"/>"
                );
            }
        }
    }
    for (i, (name, color, _)) in series.iter().enumerate() {
        let x = 80.0 + i as f64 * 300.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{x}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{color}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\">{name}</text>",
            h - 18.0,
            x + 24.0,
            h - 18.0,
            x + 30.0,
            h - 14.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn nice(v: f64) -> f64 {
    let mag = 10f64.powf(v.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * mag >= v {
            return step * mag;
        }
    }
    10.0 * mag
}

fn fmt_axis(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One client's time per round trip in pgbench's `SELECT 1` run with `clients` clients, in µs.
fn round_trip_us(clients: usize, r: &RunResult) -> f64 {
    clients as f64 * 1e6 / r.tps().max(1e-9)
}

#[cfg(test)]
mod tests {
    //! The report rendered from fixed data, against golden files in `bench/golden/`. The files
    //! hold `{CPUS}` and `{CPU_MODEL}` where the report names this machine's CPUs. After an
    //! intended change of the report, regenerate them with `BENCH_GOLDEN=overwrite cargo test -p
    //! sqlx-retry-bench` and read the diff.

    use super::*;
    use crate::Target;
    use crate::workloads::CONTENDED;

    /// A run of `tps` committed tx/s with `rpc` retries per commit and `failed` failures; its
    /// latencies spread from 0.1 to 10 ms over 100 transactions, scaled by `slow`.
    fn run(tps: f64, rpc: f64, failed: u64, slow: f64) -> RunResult {
        RunResult {
            committed: 1000,
            failed,
            retries: (rpc * 1000.0) as u64,
            elapsed: Duration::from_secs_f64(1000.0 / tps),
            lat_us: (1..=100).map(|i| f64::from(i) * 100.0 * slow).collect(),
            cpu_client: Some(Duration::from_millis(250)),
            cpu_server: Some(Duration::from_millis(400)),
            ..RunResult::default()
        }
    }

    /// pgbench's kind of run: its own tps, no CPU figure for the server.
    fn pgbench_run(tps: f64, rpc: f64) -> RunResult {
        RunResult {
            reported_tps: Some(tps),
            reported_lat_avg_ms: Some(2.5),
            cpu_server: None,
            ..run(tps * 0.9, rpc, 0, 1.3)
        }
    }

    impl RunResult {
        /// This run with `ms` of client CPU.
        fn with_cpu(self, ms: u64) -> RunResult {
            RunResult {
                cpu_client: Some(Duration::from_millis(ms)),
                ..self
            }
        }
    }

    /// `r` with its counters: context switches of client and server per committed transaction.
    fn counted(r: RunResult, client: (f64, f64), server: (f64, f64)) -> RunResult {
        let commits = r.tps() * r.elapsed.as_secs_f64();
        let n = |per_tx: f64| (per_tx * commits).round() as u64;
        let switches = |(v, i): (f64, f64)| crate::counters::Switches {
            voluntary: n(v),
            involuntary: n(i),
        };
        RunResult {
            counted: Some(crate::counters::Tally {
                client: Some(switches(client)),
                server: Some(switches(server)),
                over: r.elapsed,
            }),
            ..r
        }
    }

    /// A point of section 4: ours ahead of the hand-written loop on held connections, behind it
    /// through the pool from 16 clients on, with a failed call and a longer tail at 64.
    fn scale_point(w: Workload, clients: usize) -> ScalePoint {
        let k = clients as f64;
        let mut p = ScalePoint::new(w, clients);
        let attempts = |r: RunResult, a: u64| RunResult {
            max_attempts: Some(a),
            ..r
        };
        let many = clients >= 16;
        p.add(
            ScalingImp::OursHeld,
            attempts(
                counted(run(2000.0 + k, 0.05 * k, 0, 0.9), (6.0, 0.5), (4.1, 0.2)),
                1 + clients as u64 / 4,
            ),
        );
        p.add(
            ScalingImp::HandHeld,
            attempts(
                counted(run(1900.0, 0.1 * k, 0, 1.0), (5.5, 0.4), (4.3, 0.2)),
                2 + clients as u64 / 2,
            ),
        );
        p.add(
            ScalingImp::OursPooled,
            attempts(
                counted(
                    run(
                        if many { 1500.0 } else { 1800.0 },
                        0.04 * k,
                        u64::from(clients == 64),
                        if many { 1.3 } else { 1.0 },
                    ),
                    (9.0, 1.0),
                    (5.1, 0.3),
                )
                .with_cpu(300),
                1 + clients as u64 / 8,
            ),
        );
        p.add(
            ScalingImp::HandPooled,
            attempts(
                counted(run(1700.0, 0.1 * k, 0, 1.1), (8.5, 0.9), (5.4, 0.3)).with_cpu(320),
                3 + clients as u64,
            ),
        );
        p.round_trips = [
            Some((4.05, 0.01)),
            Some((4.62, 0.12)),
            Some((5.1, 0.02)),
            Some((6.25, 0.15)),
            Some((4.5, 0.1)),
        ];
        let pg = pgbench_run(2100.0, 0.09 * k);
        p.add(
            ScalingImp::Pgbench,
            attempts(
                RunResult {
                    cpu_client: Some(Duration::from_millis(100)),
                    ..counted(pg, (2.0, 0.1), (4.2, 0.1))
                },
                2 + clients as u64 / 2,
            ),
        );
        p
    }

    /// A point of section 4's account of the gap: the turns cost a little, the backoff without
    /// them a little, the rest more; two rounds, in the second of which the loop ran faster.
    /// The default's tail is longer than the loop's, and that of turns without backoff as long.
    fn gap_point(w: Workload, clients: usize, pooled: bool) -> GapPoint {
        let mut p = GapPoint::new(w, clients, pooled);
        let k = clients as f64;
        for (which, tps, rpc, attempts, slow) in [
            (GapImp::Default, 1800.0, 0.4, 3, 1.5),
            (GapImp::LaterTurn, 1850.0, 0.3, 4, 1.0),
            (GapImp::TurnsNoBackoff, 1750.0, 0.8, 3, 1.0),
            (GapImp::NoTurns, 1900.0, 0.1, 12, 1.0),
            (GapImp::NoTurnsNoBackoff, 1950.0, 0.7, 30, 1.0),
            (GapImp::HandChecked, 1900.0, 0.7, 40, 1.0),
            (GapImp::Hand, 2100.0, 0.7, 40, 1.0),
        ] {
            for round in 0..2 {
                // The loop ran faster in the second round.
                let faster = if which == GapImp::Hand { 100.0 } else { 0.0 };
                let r = run(tps + 10.0 * k + faster * f64::from(round), rpc, 0, slow);
                p.add(
                    which,
                    RunResult {
                        max_attempts: Some(attempts + clients as u64),
                        ..r
                    },
                );
            }
        }
        p
    }

    fn server() -> ServerInfo {
        ServerInfo {
            version: "PostgreSQL 17.6 (Debian 17.6-1) on x86_64-pc-linux-gnu".into(),
            fsync: "off".into(),
            synchronous_commit: "off".into(),
            max_connections: 200,
            throwaway: true,
        }
    }

    fn overhead_run(target: Target, b: f64, c: f64) -> OverheadRun {
        OverheadRun {
            target,
            median_us: [300.0, 300.0 / b, 300.0 / c],
            p99_us: [900.5, 870.25, 1100.0],
            block_ratio: [1.0, b, c],
            block_ci: [(1.0, 1.0), (b - 0.01, b + 0.02), (c - 0.03, c + 0.01)],
            round_trips: [3.0, 3.0, 4.0],
            n: 1000,
        }
    }

    /// Every section filled, with pgbench; the strategy data keep the default within the
    /// noise of a better one, and `none` has the best goodput.
    fn full() -> Report {
        let mut r = Report::new(Plan::new(true, false), server());
        r.elapsed = Duration::from_secs_f64(123.4);
        r.pgbench = Some("pgbench (PostgreSQL) 17.6".into());
        r.load = vec![
            ("profile", 0.5),
            ("overhead", 1.25),
            ("contention", 2.0),
            ("strategies", 3.75),
            ("scaling", 4.0),
            ("end", 3.5),
        ];
        r.round_trip = vec![
            (1, run(4000.0, 0.0, 0, 0.2)),
            (2, run(15000.0, 0.0, 0, 0.1)),
        ];
        r.profile = Profile {
            allocs: Some(Allocs {
                conn: [12.0, 10.5],
                pool: [20.25, 18.0],
                mock: [3.0, 0.0],
            }),
            mock_attr_ns: 950.0,
            mock_hand_ns: 400.0,
            span_ns: 12.34,
            event_ns: 1.5,
            box_ns: 25.0,
            begin_us: 110.0,
            update_us: 95.5,
            commit_us: 120.25,
        };
        r.commit_steps = vec![
            CommitSteps {
                clients: 1,
                median_us: [290.0, 250.0, 270.0, 280.0, 295.0],
                to_plain: [1.16, 1.0, 1.08, 1.12, 1.18],
                to_plain_ci: [
                    (1.15, 1.17),
                    (1.0, 1.0),
                    (1.07, 1.09),
                    (1.11, 1.13),
                    (1.16, 1.19),
                ],
                ours_to_check: 1.036,
                ours_to_check_ci: (1.03, 1.041),
                n: 1000,
            },
            CommitSteps {
                clients: 2,
                median_us: [330.0, 260.0, 290.0, 305.0, 320.0],
                to_plain: [1.30, 1.0, 1.11, 1.16, 1.22],
                to_plain_ci: [
                    (1.27, 1.33),
                    (1.0, 1.0),
                    (1.09, 1.13),
                    (1.14, 1.18),
                    (1.19, 1.25),
                ],
                ours_to_check: 1.12,
                ours_to_check_ci: (1.1, 1.14),
                n: 1000,
            },
        ];
        r.overhead = Some(vec![
            overhead_run(Target::ALL[0], 1.01, 0.78),
            overhead_run(Target::ALL[1], 1.03, 0.82),
            overhead_run(Target::ALL[2], 0.99, 0.79),
            overhead_run(Target::ALL[3], 1.0, 0.85),
        ]);
        for (i, w) in CONTENDED.into_iter().enumerate() {
            let k = i as f64;
            let mut c = Contention::new(w);
            c.add_round(
                run(2000.0 + k * 100.0, 0.4, 0, 1.0),
                run(1800.0, 0.5, 1, 1.1),
                run(2100.0, 1.2, 0, 0.9),
                Some(pgbench_run(1900.0, 1.0 + k)),
            );
            c.add_round(
                run(2200.0, 0.3, 0, 1.0),
                run(1700.0, 0.6, 0, 1.2),
                RunResult {
                    cpu_client: None,
                    ..run(2000.0, 1.1, 2, 0.8)
                },
                Some(pgbench_run(2000.0, 1.5)),
            );
            if w == Workload::Skew {
                c.hand = None;
            }
            r.contention.push(c);
        }
        // Goodput by strategy: `none` best, the fastest candidate within the noise of the
        // default.
        for (name, tps, rpc) in [
            ("none", 1000.0, 2.0),
            ("exponential full jitter 5ms/500ms", 980.0, 0.8),
            ("decorrelated jitter 5ms/500ms", 900.0, 0.4),
            (DEFAULT_STRATEGY, 950.0, 0.5),
            ("exponential full jitter 1ms/100ms", 990.0, 1.5),
        ] {
            for (j, w) in CONTENDED.into_iter().enumerate() {
                let wobble = 1.0 + j as f64 * 0.01;
                r.strategies
                    .push((name.to_string(), w, run(tps * wobble, rpc, 0, 1.0)));
            }
        }
        r.scaling = Vec::new();
        for (w, clients) in [
            (Workload::Hot, [1, 2, 4, 16, 64].as_slice()),
            (Workload::HotIndexed, &[1, 16]),
            (Workload::Skew, &[4, 64]),
        ] {
            for &c in clients {
                r.scaling.push(scale_point(w, c));
            }
        }
        // The hot row at 2 clients ran a second round, in which ours fell behind.
        r.plan.scaling_rounds = 2;
        let mut again = scale_point(Workload::Hot, 2);
        for which in [
            ScalingImp::OursHeld,
            ScalingImp::HandHeld,
            ScalingImp::OursPooled,
            ScalingImp::HandPooled,
        ] {
            let mut run = again.rounds.sums[which as usize].take().expect("a run");
            if matches!(which, ScalingImp::OursHeld | ScalingImp::OursPooled) {
                run.elapsed = run.elapsed.mul_f64(1.2);
            }
            r.scaling[1].add(which, run);
        }
        r.gap = [
            (Workload::Hot, 2, false),
            (Workload::Hot, 4, false),
            (Workload::HotIndexed, 2, false),
            (Workload::Hot, 16, true),
        ]
        .into_iter()
        .map(|(w, c, pooled)| gap_point(w, c, pooled))
        .collect();
        r.replicas = Some(Ok(replicas_data()));
        r
    }

    /// `ok` calls with `retries` retries and `failed` failures; latencies from 0.1 to 10 ms
    /// over 100 calls, scaled by `slow`.
    fn calls(ok: u64, failed: u64, retries: u64, slow: f64) -> replicas::Calls {
        replicas::Calls {
            ok,
            failed,
            retries,
            lat_us: (1..=100).map(|i| f64::from(i) * 100.0 * slow).collect(),
        }
    }

    /// A 10 s run through `via` of `reads` and `writes` calls, `standby` of the reads on the
    /// standby, `stale` of 300 reads after a transfer missing it, and CPU ms of (clients,
    /// primary, standby, replay).
    fn mix_run(
        via: Via,
        (reads, writes, standby, stale): (u64, u64, u64, u64),
        [client, primary, on_standby, replay]: [u64; 4],
        slow: f64,
    ) -> MixRun {
        let ms = |v: u64| Some(Duration::from_millis(v));
        MixRun {
            via,
            elapsed: Duration::from_secs(10),
            reads: calls(reads, 0, 2, slow),
            writes: calls(writes, u64::from(via == Via::Cluster), 40, slow * 2.0),
            on_standby: standby,
            after_write: calls(300, 0, 0, slow * 1.5),
            stale,
            cpu_client: ms(client),
            cpu_primary: ms(primary),
            cpu_standby: ms(on_standby),
            cpu_replay: ms(replay),
        }
    }

    /// Section 6: the cluster slower than the pool and dearer per call, most of its reads on
    /// the standby, some missing the client's transfer; sessions missing none.
    fn replicas_data() -> Replicas {
        let micro = |m: replicas::Micro, us: f64, ratio: f64, rt: Option<f64>| replicas::MicroRun {
            micro: m,
            median_us: us,
            p99_us: us * 3.0,
            vs_cluster: ratio,
            vs_cluster_ci: (ratio - 0.01, ratio + 0.02),
            round_trips: rt,
            on_standby: 2400,
            n: 2400,
        };
        Replicas {
            runs: vec![
                mix_run(
                    Via::Pool,
                    (80_000, 9_000, 0, 0),
                    [7000, 9500, 400, 300],
                    1.0,
                ),
                mix_run(
                    Via::Cluster,
                    (60_000, 6_500, 59_000, 120),
                    [5500, 3600, 8000, 310],
                    1.4,
                ),
                mix_run(
                    Via::Session,
                    (55_000, 6_200, 54_500, 0),
                    [5200, 3000, 8900, 290],
                    1.6,
                ),
            ],
            micro: vec![
                micro(replicas::Micro::StandbyPool, 410.0, 0.98, Some(5.0)),
                micro(replicas::Micro::Cluster, 420.0, 1.0, Some(5.0)),
                micro(replicas::Micro::Session, 445.5, 1.06, Some(5.0)),
            ],
            max_lag: Duration::from_secs(1),
            balance_kept: true,
            version: "17.6 (Debian 17.6-1)".into(),
        }
    }

    /// Smoke mode without pgbench or allocation counts; the default fails transactions, so the
    /// data say it should change, and no overhead goal (b) is met.
    fn without_pgbench() -> Report {
        let mut r = full();
        r.plan = Plan::new(false, true);
        r.pgbench = None;
        r.round_trip.clear();
        r.profile.allocs = None;
        r.overhead = Some(vec![
            overhead_run(Target::ALL[1], 1.05, 0.9),
            overhead_run(Target::ALL[3], 1.0, 0.95),
        ]);
        for c in &mut r.contention {
            c.theirs = None;
            c.round_ratios.clear();
            c.pooled = None;
            c.violations = 2;
        }
        for (name, _, run) in &mut r.strategies {
            if name == DEFAULT_STRATEGY {
                run.failed = 1;
            }
            if name == "none" {
                run.elapsed *= 3;
            }
        }
        for point in &mut r.scaling {
            point.rounds.sums[ScalingImp::Pgbench as usize] = None;
        }
        r.scaling.retain(|p| p.clients != 1);
        r.replicas = Some(Err("/usr/lib/postgresql/17/bin has no pg_basebackup".into()));
        r
    }

    /// The default mode; the default backoff wins; no overhead, contention or scaling section.
    fn default_wins() -> Report {
        let mut r = full();
        r.plan = Plan::new(false, false);
        r.overhead = None;
        r.contention.clear();
        r.scaling.clear();
        for (name, _, run) in &mut r.strategies {
            if name == DEFAULT_STRATEGY {
                run.elapsed /= 2;
            }
        }
        r
    }

    /// No strategy qualifies (all but `none` fail); an empty overhead list; `DATABASE_URL`;
    /// the replica section with the cluster matching the pool, all reads on the standby, no
    /// CPU figures, no round trips counted and a lost balance.
    fn no_candidate() -> Report {
        let mut r = full();
        if let Some(Ok(rep)) = &mut r.replicas {
            rep.runs[1].reads.ok = 80_000;
            rep.runs[1].writes.ok = 9_000;
            for run in &mut rep.runs {
                run.on_standby = if run.via == Via::Pool {
                    0
                } else {
                    run.reads.ok
                };
                run.cpu_primary = None;
                run.cpu_standby = None;
                run.cpu_replay = None;
                run.cpu_client = None;
            }
            for m in &mut rep.micro {
                m.round_trips = None;
            }
            rep.balance_kept = false;
        }
        r.overhead = Some(Vec::new());
        r.server.throwaway = false;
        for (name, _, run) in &mut r.strategies {
            if name != "none" {
                run.failed = 3;
            }
        }
        r
    }

    fn check(name: &str, report: &Report, chart: &str) {
        let cpus = cpus();
        let model = cpu_model();
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("golden")
            .join(format!("{name}.md"));
        let actual = report.markdown(chart);
        if std::env::var_os("BENCH_GOLDEN").is_some_and(|v| v == "overwrite") {
            let generic = actual
                .replace(
                    &format!("Machine: {cpus} logical CPUs ({model})"),
                    "Machine: {CPUS} logical CPUs ({CPU_MODEL})",
                )
                .replace(&format!("({cpus} CPUs)"), "({CPUS} CPUs)")
                .replace(&format!("machine's {cpus} CPUs"), "machine's {CPUS} CPUs");
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, generic).unwrap();
            return;
        }
        let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; write it with BENCH_GOLDEN=overwrite",
                path.display()
            )
        });
        let expected = golden
            .replace("{CPUS}", &cpus.to_string())
            .replace("{CPU_MODEL}", &model);
        if actual != expected {
            let line = actual
                .lines()
                .zip(expected.lines())
                .position(|(a, e)| a != e)
                .map_or(actual.lines().count().min(expected.lines().count()), |i| i);
            panic!(
                "BENCHMARKS.md of `{name}` differs from {} from line {}:\n  actual:   {:?}\n  expected: {:?}",
                path.display(),
                line + 1,
                actual.lines().nth(line),
                expected.lines().nth(line)
            );
        }
    }

    use std::path::Path;

    #[test]
    fn the_savepoint_row_is_shown_when_measured() {
        let mut r = full();
        assert!(!r.contention_table().contains("savepoint"));
        r.contention[0].add_savepoint_round(run(1800.0, 0.9, 0, 1.3));
        let table = r.contention_table();
        assert!(
            table.contains("| sqlx-retry, savepoint | 1800 |"),
            "{table}"
        );
        assert!(
            table.contains("CockroachDB's savepoint protocol"),
            "{table}"
        );
        assert!(!table.contains("backoff inside"), "{table}");
    }

    #[test]
    fn the_savepoint_choice_compares_both_variants_per_workload() {
        let mut r = full();
        let (hot, skew) = (r.contention[0].workload, r.contention[2].workload);
        // Hot row: the wait inside wins goodput beyond the noise and loses p99 (p99 of 1.3 ms
        // against 2.6 ms); write skew: no wait wins both.
        r.contention[0].add_savepoint_round(run(1800.0, 0.9, 0, 1.3));
        r.contention[0].add_savepoint_inside_round(run(2100.0, 0.5, 0, 2.6));
        r.contention[2].add_savepoint_round(run(2000.0, 0.9, 0, 1.0));
        r.contention[2].add_savepoint_inside_round(run(1900.0, 0.5, 0, 2.0));
        let table = r.contention_table();
        assert!(
            table.contains("| sqlx-retry, savepoint, backoff inside | 2100 |"),
            "{table}"
        );
        let hot_line = format!(
            "- {}: goodput 1800 vs 2100 tx/s (better: backoff inside), p99",
            hot.name()
        );
        assert!(table.contains(&hot_line), "{table}");
        let skew_line = format!(
            "- {}: goodput 2000 vs 1900 tx/s (better: none), p99",
            skew.name()
        );
        assert!(table.contains(&skew_line), "{table}");
        assert!(
            table.contains(&format!("{:?}", crate::SAVEPOINT_BACKOFF_INSIDE)),
            "{table}"
        );
        let default = format!(
            "is `{:?}`. The wait inside the savepoint beat it on goodput by more than the noise (10 %) on 1 of 2 workloads.",
            sqlx_retry::Policy::DEFAULT_SAVEPOINT_BACKOFF
        );
        assert!(table.contains(&default), "{table}");
        let p99s: Vec<&str> = table
            .lines()
            .filter(|l| l.starts_with("- ") && l.contains("vs"))
            .map(|l| l.split("p99 ").nth(1).unwrap_or_default())
            .collect();
        assert_eq!(p99s.len(), 2, "{table}");
        assert!(p99s[0].contains("(better: none)"), "{p99s:?}");
    }

    #[test]
    fn report_with_every_section_matches_golden() {
        check("full", &full(), "bench/chart.svg");
    }

    #[test]
    fn report_without_pgbench_matches_golden() {
        check("without-pgbench", &without_pgbench(), "chart.svg");
    }

    #[test]
    fn report_where_the_default_wins_matches_golden() {
        check("default-wins", &default_wins(), "bench/chart.svg");
    }

    #[test]
    fn report_without_a_candidate_strategy_matches_golden() {
        check("no-candidate", &no_candidate(), "chart.svg");
    }

    #[test]
    fn golden_reports_cover_each_choice_of_default() {
        // The scenarios above are only worth their files if they reach the report's branches.
        let choice = |r: &Report| r.best_strategy().map(|b| b.0);
        assert_eq!(
            choice(&full()).as_deref(),
            Some("exponential full jitter 5ms/500ms")
        );
        assert_eq!(choice(&default_wins()).as_deref(), Some(DEFAULT_STRATEGY));
        assert_eq!(choice(&no_candidate()), None);
        let full = full().markdown("c");
        assert!(full.contains("so the default stays"), "{full}");
        assert!(full.contains("Retrying at once (`none`) had the higher"));
        let changed = without_pgbench().markdown("c");
        assert!(changed.contains("the default should change"), "{changed}");
        assert!(
            default_wins()
                .markdown("c")
                .contains("keeping the current default")
        );
        assert!(
            no_candidate()
                .markdown("c")
                .contains("No strategy both avoided")
        );
    }

    #[test]
    fn golden_reports_cover_each_reading_of_the_replica_section() {
        let full = full().markdown("c");
        assert!(full.contains("fewer calls fit in a second"), "{full}");
        assert!(full.contains("the rest ran on the primary"), "{full}");
        assert!(full.contains("26 µs more per call"), "{full}");
        let other = no_candidate().markdown("c");
        assert!(other.contains("every one of them"), "{other}");
        assert!(other.contains("**no longer** added up"), "{other}");
        assert!(!other.contains("Where the CPU went"), "{other}");
        assert!(other.contains("round trips not counted"), "{other}");
        let skipped = without_pgbench().markdown("c");
        assert!(skipped.contains("Not measured: the primary + standby pair did not start"));
    }
}
