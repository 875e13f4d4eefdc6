//! Benchmarks of `sqlx-retry` against hand-written sqlx and against `pgbench`, all measured side
//! by side in one run on one server; writes `BENCHMARKS.md` and `bench/chart.svg`.
//!
//! ```text
//! cargo run --release -p sqlx-retry-bench              # the full run (a few minutes)
//! cargo run --release -p sqlx-retry-bench -- --quick   # shorter sections, same report
//! cargo run --release -p sqlx-retry-bench -- --smoke   # ~1 s per section, writes to a temp dir
//! ```
//!
//! `--out DIR` writes the report and chart to `DIR` instead; `--only SECTION[,SECTION…]` runs only
//! some of `profile`, `overhead`, `contention`, `strategies`, `scaling`, `fairness`, `replicas`
//! (for working on one). The server is `DATABASE_URL` when set, otherwise a throwaway cluster from
//! the testkit.

mod counters;
mod cpu;
mod fairness;
mod replicas;
mod report;
mod workloads;

use std::error::Error;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection as _, PgConnection, PgPool};
use sqlx_retry::mock::{MockDb, MockTx};
use sqlx_retry::source::{BeginTransaction, OpenTransaction, TxOptions};
use sqlx_retry::{Backoff, Policy, serializable_retry};
use sqlx_retry_testkit::{PgProxy, isolated_schema};

use workloads::{Conns, Imp, PgBench, RunResult, Workload};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// How long each section runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `default`, `quick` or `smoke`.
    pub mode: &'static str,
    /// Blocks of the uncontended overhead comparison.
    pub blocks: usize,
    /// Transactions per implementation per block.
    pub per_block: usize,
    /// Iterations of the in-process (mock) loop measurement, per implementation.
    pub mock_iters: usize,
    /// Duration of each `SELECT 1` round-trip run (setup figures).
    pub round_trip: Duration,
    /// Duration of each contention run (ours and pgbench).
    pub contention: Duration,
    /// Rounds of the contention comparison: ours and pgbench once each per round, the order
    /// alternating; the figures add up over rounds.
    pub contention_rounds: usize,
    /// Duration of each backoff-strategy run.
    pub strategy: Duration,
    /// Rounds of the strategy comparison: each round runs every strategy once, in an order
    /// rotated per round, and the figures add up over rounds, so drift and one noisy stretch
    /// do not decide the ranking.
    pub strategy_rounds: usize,
    /// Duration of each run of the scaling section.
    pub scaling: Duration,
    /// Rounds of the scaling section: at each point every implementation runs once per round,
    /// in an order rotated from round to round and from point to point, and the figures add up
    /// over rounds, so that one noisy stretch does not decide a point's verdict.
    pub scaling_rounds: usize,
    /// Client counts of section 4's account of the gap to the hand-written loop (ours with
    /// and without priority turns and backoff, beside the loop), on held connections.
    pub gap_clients: Vec<usize>,
    /// Client counts of the same account through a pool.
    pub gap_pooled_clients: Vec<usize>,
    /// Client counts of the scaling section.
    pub clients: Vec<usize>,
    /// Clients of the contention and strategy sections.
    pub contention_clients: usize,
    /// Maximum attempts (ours) and `--max-tries` (pgbench).
    pub max_tries: u32,
    /// Duration of each run of the read-replica section's mixed workload.
    pub replicas: Duration,
    /// Rounds of the read-replica section: each runs every configuration once, in an order
    /// rotated per round; the figures add up over rounds.
    pub replica_rounds: usize,
    /// Blocks of the read-replica section's per-call comparison.
    pub replica_micro_blocks: usize,
    /// Reads per variant per block of that comparison.
    pub replica_micro_per_block: usize,
}

impl Plan {
    fn new(quick: bool, smoke: bool) -> Plan {
        if smoke {
            Plan {
                mode: "smoke",
                blocks: 2,
                per_block: 20,
                mock_iters: 2_000,
                round_trip: Duration::from_millis(300),
                contention: Duration::from_millis(300),
                contention_rounds: 1,
                strategy: Duration::from_millis(150),
                strategy_rounds: 1,
                scaling: Duration::from_millis(200),
                scaling_rounds: 1,
                gap_clients: vec![2],
                gap_pooled_clients: vec![2],
                clients: vec![1, 16],
                contention_clients: 16,
                max_tries: 50,
                replicas: Duration::from_millis(300),
                replica_rounds: 1,
                replica_micro_blocks: 2,
                replica_micro_per_block: 20,
            }
        } else if quick {
            Plan {
                mode: "quick",
                blocks: 10,
                per_block: 100,
                mock_iters: 50_000,
                round_trip: Duration::from_secs(1),
                contention: Duration::from_secs(2),
                contention_rounds: 1,
                strategy: Duration::from_secs(2),
                strategy_rounds: 1,
                scaling: Duration::from_secs(1),
                scaling_rounds: 1,
                gap_clients: vec![2, 4],
                gap_pooled_clients: vec![4],
                clients: vec![1, 2, 4, 16, 64],
                contention_clients: 16,
                max_tries: 50,
                replicas: Duration::from_millis(1500),
                replica_rounds: 2,
                replica_micro_blocks: 12,
                replica_micro_per_block: 50,
            }
        } else {
            Plan {
                mode: "default",
                blocks: 500,
                per_block: 20,
                mock_iters: 200_000,
                round_trip: Duration::from_secs(3),
                contention: Duration::from_secs(10),
                contention_rounds: 3,
                strategy: Duration::from_secs(6),
                strategy_rounds: 3,
                scaling: Duration::from_secs(3),
                scaling_rounds: 2,
                gap_clients: vec![2, 4, 8],
                gap_pooled_clients: vec![4, 16],
                clients: vec![1, 2, 4, 8, 16, 32, 64],
                contention_clients: 16,
                max_tries: 50,
                replicas: Duration::from_secs(5),
                replica_rounds: 3,
                replica_micro_blocks: 120,
                replica_micro_per_block: 20,
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("sqlx-retry-bench: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Res<()> {
    let Some(args) = Args::parse(std::env::args().skip(1))? else {
        return Ok(());
    };
    let plan = Plan::new(args.quick, args.smoke);
    let (md_path, svg_path, chart_link) = args.paths()?;
    if let Some(dir) = md_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let started = Instant::now();
    eprintln!("mode {}: report to {}", plan.mode, md_path.display());

    // The server.
    let url = tokio::task::spawn_blocking(sqlx_retry_testkit::postgres_url).await?;
    let iso = isolated_schema().await;
    let opts = iso.connect_options();
    let mut admin = PgConnection::connect_with(&opts).await?;
    let server = report::ServerInfo::query(&mut admin, &url).await?;
    let max_clients = *plan.clients.iter().max().unwrap_or(&16);
    if (server.max_connections as usize) < max_clients + 10 {
        return Err(format!(
            "max_connections = {} is too small for {max_clients} clients",
            server.max_connections
        )
        .into());
    }
    workloads::create_schema(&mut admin).await?;
    let pgbench = PgBench::find(&opts, iso.schema());
    if pgbench.is_none() {
        eprintln!("pgbench not found: the pgbench columns are left empty");
    }

    let mut rep = report::Report::new(plan.clone(), server);
    rep.pgbench = pgbench.as_ref().map(PgBench::version);
    if args.runs("profile") {
        profile_section(&plan, &opts, pgbench.as_ref(), &mut rep).await?;
    }
    if args.runs("overhead") {
        overhead_section(&plan, &opts, &iso, &mut rep).await?;
    }
    if args.runs("contention") {
        contention_section(&plan, &opts, pgbench.as_ref(), &mut admin, &mut rep).await?;
    }
    if args.runs("strategies") {
        strategies_section(&plan, &opts, &mut rep).await?;
    }
    if args.runs("scaling") {
        scaling_section(&plan, &opts, iso.schema(), pgbench.as_ref(), &mut rep).await?;
    }
    if args.runs("gap") {
        gap_section(&plan, &opts, &mut rep).await?;
    }
    if args.runs("fairness") {
        fairness::section(&plan, &opts, &mut rep).await?;
    }
    if args.runs("replicas") {
        replicas_section(&plan, &mut rep).await?;
    }
    rep.load.push(("end", report::loadavg()));
    rep.elapsed = started.elapsed();

    admin.close().await?;
    let _ = iso.drop_schema().await;
    std::fs::write(&svg_path, report::chart(&rep))?;
    std::fs::write(&md_path, rep.markdown(chart_link))?;
    eprintln!(
        "wrote {} and {} in {:.0?}",
        md_path.display(),
        svg_path.display(),
        started.elapsed()
    );
    Ok(())
}

/// The sections `--only` accepts, in the order they run.
const SECTIONS: [&str; 8] = [
    "profile",
    "overhead",
    "contention",
    "strategies",
    "scaling",
    "gap",
    "fairness",
    "replicas",
];

/// The command line.
struct Args {
    quick: bool,
    smoke: bool,
    /// `--out DIR`.
    out: Option<PathBuf>,
    /// `--only SECTION,…`; `None` runs them all.
    only: Option<Vec<String>>,
}

impl Args {
    /// Parses and checks the arguments; `None` when `--help` printed the usage.
    fn parse(args: impl IntoIterator<Item = String>) -> Res<Option<Args>> {
        let mut parsed = Args {
            quick: false,
            smoke: false,
            out: None,
            only: None,
        };
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => parsed.quick = true,
                "--smoke" => parsed.smoke = true,
                "--out" => {
                    parsed.out = Some(PathBuf::from(it.next().ok_or("--out needs a directory")?));
                }
                "--only" => {
                    let names = it.next().ok_or("--only needs section names")?;
                    parsed.only = Some(names.split(',').map(str::to_owned).collect());
                }
                "-h" | "--help" => {
                    println!(
                        "usage: sqlx-retry-bench [--quick] [--smoke] [--out DIR] [--only SECTION,…]"
                    );
                    return Ok(None);
                }
                other => return Err(format!("unknown argument {other:?}").into()),
            }
        }
        let mut names = parsed.only.iter().flatten();
        if let Some(bad) = names.find(|s| !SECTIONS.contains(&s.as_str())) {
            return Err(
                format!("unknown section {bad:?}; sections: {}", SECTIONS.join(", ")).into(),
            );
        }
        if parsed.only.is_some() && parsed.out.is_none() && !parsed.smoke {
            return Err("--only writes a partial report: give --out DIR".into());
        }
        Ok(Some(parsed))
    }

    /// Whether `section` runs.
    fn runs(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == section))
    }

    /// Where the report and the chart go, and the chart's path as the report links it: the
    /// repository's `BENCHMARKS.md` and `bench/chart.svg` for a full run, else `--out DIR` or a
    /// temporary directory (smoke).
    fn paths(&self) -> Res<(PathBuf, PathBuf, &'static str)> {
        let dir = match (&self.out, self.smoke) {
            (Some(dir), _) => dir.clone(),
            (None, true) => {
                std::env::temp_dir().join(format!("sqlx-retry-bench-{}", std::process::id()))
            }
            (None, false) => {
                let root = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .parent()
                    .ok_or("no workspace root")?;
                return Ok((
                    root.join("BENCHMARKS.md"),
                    root.join("bench").join("chart.svg"),
                    "bench/chart.svg",
                ));
            }
        };
        Ok((
            dir.join("BENCHMARKS.md"),
            dir.join("chart.svg"),
            "chart.svg",
        ))
    }
}

/// Section 0: in-process loop cost, tracing, boxing and the database phases, and what a round
/// trip costs on this machine.
async fn profile_section(
    plan: &Plan,
    opts: &PgConnectOptions,
    pgbench: Option<&PgBench>,
    rep: &mut report::Report,
) -> Res<()> {
    eprintln!("[profile]");
    rep.load.push(("profile", report::loadavg()));
    rep.profile = profile(plan, opts).await?;
    rep.round_trip = round_trip(plan, opts, pgbench).await?;
    Ok(())
}

/// Section 1: the uncontended overhead per connection source.
async fn overhead_section(
    plan: &Plan,
    opts: &PgConnectOptions,
    iso: &sqlx_retry_testkit::Isolated,
    rep: &mut report::Report,
) -> Res<()> {
    eprintln!("[overhead]");
    rep.load.push(("overhead", report::loadavg()));
    rep.overhead = Some(overhead(plan, opts, iso).await?);
    for clients in COMMIT_STEP_CLIENTS {
        eprintln!("  ours' COMMIT, step by step, {clients} client(s)");
        let steps = commit_steps(plan, opts, clients).await?;
        eprintln!(
            "    to a plain COMMIT: {:?}, ours / its hand-written equivalent {:.3}",
            steps.to_plain.map(|r| (r * 1000.0).round() / 1000.0),
            steps.ours_to_check
        );
        rep.commit_steps.push(steps);
    }
    Ok(())
}

/// The wait before a rerun inside the savepoint that section 2 sets against the default
/// ([`Policy::DEFAULT_SAVEPOINT_BACKOFF`]): exponential full jitter with the default backoff's
/// base and cap (5 ms, 500 ms). The same bounds as the adaptive default without its contention
/// estimate, which would learn from reruns a few hundred microseconds long: the row measures
/// where the wait happens, not what an estimate made of it.
const SAVEPOINT_BACKOFF_INSIDE: Backoff =
    Backoff::exponential(Backoff::DEFAULT_BASE, Backoff::DEFAULT_CAP);

/// Section 2: ours (the attribute, default backoff) against pgbench on every contended workload,
/// in rounds; then each workload's write-skew invariant.
async fn contention_section(
    plan: &Plan,
    opts: &PgConnectOptions,
    pgbench: Option<&PgBench>,
    admin: &mut PgConnection,
    rep: &mut report::Report,
) -> Res<()> {
    eprintln!("[contention]");
    rep.load.push(("contention", report::loadavg()));
    for w in workloads::CONTENDED {
        let mut c = report::Contention::new(w);
        for round in 0..plan.contention_rounds {
            let (ours, pooled, hand, theirs) =
                contention_round(plan, opts, pgbench, w, round).await?;
            c.add_round(ours, pooled, hand, theirs);
            // The savepoint protocol with no wait before the rerun inside the savepoint (the
            // default) and with one, in an order alternating by round.
            let mut savepoint = None;
            let mut inside = None;
            for at_once in [round % 2 == 0, round % 2 == 1] {
                let (label, builder) = if at_once {
                    ("savepoint", Policy::builder())
                } else {
                    (
                        "savepoint, backoff inside",
                        Policy::builder().savepoint_backoff(SAVEPOINT_BACKOFF_INSIDE),
                    )
                };
                let policy = builder
                    .max_attempts(plan.max_tries)
                    .savepoint(Policy::DEFAULT_SAVEPOINT)
                    .build()?;
                let run = workloads::run_ours(
                    opts,
                    w,
                    &Imp::Plain(Arc::new(policy)),
                    Conns::Held,
                    plan.contention_clients,
                    plan.contention,
                )
                .await?;
                eprintln!(
                    "  round {} {w:?} ours, {label}: {}",
                    round + 1,
                    run.summary()
                );
                if at_once {
                    savepoint = Some(run);
                } else {
                    inside = Some(run);
                }
            }
            if let (Some(savepoint), Some(inside)) = (savepoint, inside) {
                c.add_savepoint_round(savepoint);
                c.add_savepoint_inside_round(inside);
            }
        }
        c.violations = workloads::skew_violations(admin).await?;
        rep.contention.push(c);
    }
    Ok(())
}

/// One round of section 2 on workload `w`: ours on held connections and pgbench, in an order
/// that alternates by round so that neither side always runs first or on the same stretch of a
/// noisy host; then ours through the pool and the hand-written loop.
async fn contention_round(
    plan: &Plan,
    opts: &PgConnectOptions,
    pgbench: Option<&PgBench>,
    w: Workload,
    round: usize,
) -> Res<(RunResult, RunResult, RunResult, Option<RunResult>)> {
    let ours = |imp: Imp, conns: Conns| async move {
        workloads::run_ours(
            opts,
            w,
            &imp,
            conns,
            plan.contention_clients,
            plan.contention,
        )
        .await
    };
    let pgbench_first = round % 2 == 1;
    let mut theirs = None;
    if pgbench_first {
        theirs = run_pgbench(pgbench, opts, w, plan).await?;
    }
    let held = ours(Imp::Attribute, Conns::Held).await?;
    eprintln!("  round {} {w:?} ours: {}", round + 1, held.summary());
    if !pgbench_first {
        theirs = run_pgbench(pgbench, opts, w, plan).await?;
    }
    if let Some(t) = &theirs {
        eprintln!("  round {} {w:?} pgbench: {}", round + 1, t.summary());
    }
    let pooled = ours(Imp::Attribute, Conns::Pooled).await?;
    eprintln!(
        "  round {} {w:?} ours, pooled: {}",
        round + 1,
        pooled.summary()
    );
    let hand = ours(Imp::Hand(plan.max_tries), Conns::Held).await?;
    eprintln!(
        "  round {} {w:?} hand-written: {}",
        round + 1,
        hand.summary()
    );
    Ok((held, pooled, hand, theirs))
}

/// Section 3: every strategy on every contended workload through the plain API, in rotated rounds.
async fn strategies_section(
    plan: &Plan,
    opts: &PgConnectOptions,
    rep: &mut report::Report,
) -> Res<()> {
    eprintln!("[strategies]");
    rep.load.push(("strategies", report::loadavg()));
    let strategies = strategies();
    let mut totals: Vec<Vec<Option<workloads::RunResult>>> = strategies
        .iter()
        .map(|_| vec![None; workloads::CONTENDED.len()])
        .collect();
    for round in 0..plan.strategy_rounds {
        for k in 0..strategies.len() {
            let i = (k + round) % strategies.len();
            let (name, backoff) = &strategies[i];
            for (j, w) in workloads::CONTENDED.into_iter().enumerate() {
                let policy = Policy::builder()
                    .max_attempts(plan.max_tries)
                    .backoff(backoff.clone())
                    .build()?;
                let r = workloads::run_ours(
                    opts,
                    w,
                    &Imp::Plain(Arc::new(policy)),
                    Conns::Held,
                    plan.contention_clients,
                    plan.strategy,
                )
                .await?;
                eprintln!("  round {} {name} {w:?}: {}", round + 1, r.summary());
                RunResult::accumulate(&mut totals[i][j], r);
            }
        }
    }
    for ((name, _), results) in strategies.iter().zip(totals) {
        for (w, r) in workloads::CONTENDED.into_iter().zip(results) {
            if let Some(r) = r {
                rep.strategies.push((name.to_string(), w, r));
            }
        }
    }

    Ok(())
}

/// Section 4: every contended workload against the number of clients, ours and the
/// hand-written loop each on held connections and through the pool, and pgbench.
async fn scaling_section(
    plan: &Plan,
    opts: &PgConnectOptions,
    schema: &str,
    pgbench: Option<&PgBench>,
    rep: &mut report::Report,
) -> Res<()> {
    eprintln!("[scaling]");
    rep.load.push(("scaling", report::loadavg()));
    let proxy = PgProxy::start(opts.clone()).await;
    let proxied = proxy.schema_options(schema);
    let mut k = 0;
    for w in workloads::CONTENDED {
        for &c in &plan.clients {
            let mut point = report::ScalePoint::new(w, c);
            let n = report::SCALING_IMPS.len();
            for round in 0..plan.scaling_rounds {
                // The order rotates from round to round and from point to point, so that no
                // implementation always runs first, or right after the same one, on a host
                // whose load drifts.
                for i in 0..n {
                    let which = report::SCALING_IMPS[(k + round + i) % n];
                    let t = Instant::now();
                    let run = match (which.imp(plan.max_tries), pgbench) {
                        (Some((imp, conns)), _) => {
                            Some(workloads::run_ours(opts, w, &imp, conns, c, plan.scaling).await?)
                        }
                        (None, Some(pb)) => {
                            Some(pb.run(opts, w, c, plan.scaling, plan.max_tries).await?)
                        }
                        (None, None) => None,
                    };
                    if let Some(r) = run {
                        eprintln!(
                            "  round {} {w:?} {c:>2} clients, {}: {} ({:.1} s)",
                            round + 1,
                            which.label(),
                            r.summary(),
                            t.elapsed().as_secs_f64()
                        );
                        point.add(which, r);
                    }
                }
            }
            if report::ScalePoint::broken_down(w, c) {
                scaling_round_trips(plan, &proxied, &proxy, pgbench, &mut point, k).await?;
            }
            k += 1;
            rep.scaling.push(point);
        }
    }
    Ok(())
}

/// Section 4's account of the gap to the hand-written loop: on each contended workload, at
/// `plan.gap_clients` on held connections and at `plan.gap_pooled_clients` through a pool, ours
/// with the default policy, with a later turn, with turns and no backoff, without priority turns,
/// and without turns or backoff, beside the loop taking its connections the same way, plain and
/// committing as ours does, in rounds whose order rotates.
async fn gap_section(plan: &Plan, opts: &PgConnectOptions, rep: &mut report::Report) -> Res<()> {
    eprintln!("[scaling: the gap to the hand-written loop]");
    let base = || Policy::builder().max_attempts(plan.max_tries);
    // One policy per variant for the whole section, as a service builds its policies once.
    let imps = report::GAP_IMPS.map(|which| match which {
        report::GapImp::Default => base().build().map(|p| Imp::Plain(Arc::new(p))),
        report::GapImp::LaterTurn => base()
            .priority_after(report::LATER_TURN)
            .build()
            .map(|p| Imp::Plain(Arc::new(p))),
        report::GapImp::TurnsNoBackoff => base()
            .backoff(Backoff::none())
            .build()
            .map(|p| Imp::Plain(Arc::new(p))),
        report::GapImp::NoTurns => base()
            .priority_after(None)
            .build()
            .map(|p| Imp::Plain(Arc::new(p))),
        report::GapImp::NoTurnsNoBackoff => base()
            .priority_after(None)
            .backoff(Backoff::none())
            .build()
            .map(|p| Imp::Plain(Arc::new(p))),
        report::GapImp::HandChecked => Ok(Imp::HandChecked(plan.max_tries)),
        report::GapImp::Hand => Ok(Imp::Hand(plan.max_tries)),
    });
    let imps = imps.into_iter().collect::<Result<Vec<_>, _>>()?;
    let n = imps.len();
    let points = [
        (Conns::Held, &plan.gap_clients),
        (Conns::Pooled, &plan.gap_pooled_clients),
    ]
    .into_iter()
    .flat_map(|(conns, clients)| {
        workloads::CONTENDED
            .into_iter()
            .flat_map(move |w| clients.iter().map(move |&c| (conns, w, c)))
    });
    for (k, (conns, w, c)) in points.enumerate() {
        let mut point = report::GapPoint::new(w, c, conns == Conns::Pooled);
        for round in 0..plan.scaling_rounds {
            for i in 0..n {
                let j = (k + round + i) % n;
                let which = report::GAP_IMPS[j];
                let r = workloads::run_ours(opts, w, &imps[j], conns, c, plan.scaling).await?;
                eprintln!(
                    "  round {} {w:?} {c:>2} clients, {}, {}: {}",
                    round + 1,
                    point.conns(),
                    which.label(),
                    r.summary()
                );
                point.add(which, r);
            }
        }
        rep.gap.push(point);
    }
    Ok(())
}

/// Round trips per committed transaction of each implementation at `point`, in one more short
/// run of each through `proxy` (`opts` leads through it): the proxy counts what the clients
/// send, at the price of a hop that slows every round trip, so these runs count and time
/// nothing else.
async fn scaling_round_trips(
    plan: &Plan,
    opts: &PgConnectOptions,
    proxy: &PgProxy,
    pgbench: Option<&PgBench>,
    point: &mut report::ScalePoint,
    k: usize,
) -> Res<()> {
    let (w, c) = (point.workload, point.clients);
    let dur = plan.scaling.min(Duration::from_secs(1));
    for i in 0..report::SCALING_IMPS.len() {
        let which = report::SCALING_IMPS[(k + i) % report::SCALING_IMPS.len()];
        let run = match (which.imp(plan.max_tries), pgbench) {
            (Some((imp, conns)), _) => {
                Some(workloads::run_ours_via(opts, w, &imp, conns, c, dur, Some(proxy)).await?)
            }
            (None, Some(pb)) => Some(
                pb.run_via(opts, w, c, dur, plan.max_tries, Some(proxy))
                    .await?,
            ),
            (None, None) => None,
        };
        if let Some(r) = run {
            let per_tx = r.round_trips_per_commit();
            eprintln!(
                "  {w:?} {c:>2} clients, {}, through a proxy: {:.2} round trips per commit, {:.3} retries/commit",
                which.label(),
                per_tx.unwrap_or(0.0),
                r.retries_per_commit()
            );
            point.round_trips[which as usize] = per_tx.map(|t| (t, r.retries_per_commit()));
        }
    }
    Ok(())
}

/// Section 5: a read-mostly workload on a primary + hot standby pair of its own, through
/// `&PgPool`, `&cluster` and sessions, and a session read's cost per call; a note instead when
/// the pair can't start.
async fn replicas_section(plan: &Plan, rep: &mut report::Report) -> Res<()> {
    eprintln!("[replicas]");
    rep.load.push(("replicas", report::loadavg()));
    rep.replicas = Some(Ok(replicas::run(plan).await?));
    Ok(())
}

/// What one round trip costs on this machine: pgbench's `SELECT 1` outside a transaction by 1 and
/// by 2 clients (each on a connection of its own; a pool would add its pings). Per client count,
/// the run; empty without pgbench.
async fn round_trip(
    plan: &Plan,
    opts: &PgConnectOptions,
    pgbench: Option<&PgBench>,
) -> Res<Vec<(usize, RunResult)>> {
    let mut out = Vec::new();
    let Some(pb) = pgbench else {
        return Ok(out);
    };
    for clients in [1, 2] {
        let r = pb
            .run(
                opts,
                Workload::Ping,
                clients,
                plan.round_trip,
                plan.max_tries,
            )
            .await?;
        eprintln!("  SELECT 1, {clients} client(s): {:.0}/s", r.tps());
        out.push((clients, r));
    }
    Ok(out)
}

/// One pgbench run of section 2, or `None` without pgbench.
async fn run_pgbench(
    pgbench: Option<&PgBench>,
    opts: &PgConnectOptions,
    w: Workload,
    plan: &Plan,
) -> Res<Option<RunResult>> {
    match pgbench {
        Some(pb) => Ok(Some(
            pb.run(
                opts,
                w,
                plan.contention_clients,
                plan.contention,
                plan.max_tries,
            )
            .await?,
        )),
        None => Ok(None),
    }
}

/// The strategies compared in section 3, all with the default base and cap.
pub fn strategies() -> Vec<(&'static str, Backoff)> {
    let (b, c) = (Backoff::DEFAULT_BASE, Backoff::DEFAULT_CAP);
    vec![
        ("none", Backoff::none()),
        (
            "exponential full jitter 5ms/500ms",
            Backoff::exponential(b, c),
        ),
        ("decorrelated jitter 5ms/500ms", Backoff::decorrelated(b, c)),
        (crate::report::DEFAULT_STRATEGY, Backoff::adaptive(b, c)),
        (
            "exponential full jitter 1ms/100ms",
            Backoff::exponential(Duration::from_millis(1), Duration::from_millis(100)),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Section 0: profile
// ---------------------------------------------------------------------------------------------

#[serializable_retry(max = 5)]
async fn mock_attr(tx: &mut MockTx<i64>) -> Result<(), sqlx::Error> {
    tx.execute("UPDATE")?;
    Ok(())
}

async fn mock_hand(db: &MockDb<i64>) -> Result<(), sqlx::Error> {
    let mut src = db;
    let mut tx = src.begin(TxOptions::default()).await?;
    tx.conn().execute("UPDATE")?;
    tx.commit().await
}

/// In-process costs, in nanoseconds per iteration, and the DB phase medians in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Profile {
    /// Heap allocations per transaction (attribute, hand `begin_with`) on one connection, on
    /// a one-connection pool, and over the mock source.
    pub allocs: Option<Allocs>,
    /// Attribute over the mock source, ns per call.
    pub mock_attr_ns: f64,
    /// Hand loop over the mock source, ns per call.
    pub mock_hand_ns: f64,
    /// `info_span!` + `instrument` of a ready future, no subscriber, ns.
    pub span_ns: f64,
    /// A disabled `info!` event with fields, ns.
    pub event_ns: f64,
    /// `Box::pin` of a ready future of 256 bytes, awaited, ns.
    pub box_ns: f64,
    /// Median pool acquire + BEGIN, µs.
    pub begin_us: f64,
    /// Median UPDATE, µs.
    pub update_us: f64,
    /// Median COMMIT (and return to the pool), µs.
    pub commit_us: f64,
}

fn per_iter_ns(elapsed: Duration, n: usize) -> f64 {
    elapsed.as_nanos() as f64 / n as f64
}

/// Section 0's figures: the loop's cost in process, tracing and boxing, the database phases,
/// heap allocations.
async fn profile(plan: &Plan, opts: &PgConnectOptions) -> Res<Profile> {
    let (mock_attr_ns, mock_hand_ns) = mock_loops(plan.mock_iters).await?;
    let span_ns = span_cost(plan.mock_iters).await;
    let event_ns = event_cost(plan.mock_iters);
    let box_ns = box_cost(plan.mock_iters).await;
    let [begin_us, update_us, commit_us] =
        db_phases(opts, (plan.blocks * plan.per_block).max(50)).await?;
    let opts = opts.clone();
    let (n, mock_n) = (plan.per_block * 10, plan.mock_iters / 10);
    let allocs =
        tokio::task::spawn_blocking(move || count_allocations(opts, n.max(20), mock_n.max(20)))
            .await??;
    Ok(Profile {
        allocs: Some(allocs),
        mock_attr_ns,
        mock_hand_ns,
        span_ns,
        event_ns,
        box_ns,
        begin_us,
        update_us,
        commit_us,
    })
}

/// ns per call of the attribute and of the hand loop over the mock source, `iters` calls each,
/// interleaved in 10 blocks; a fresh MockDb per block keeps its event log short.
async fn mock_loops(iters: usize) -> Res<(f64, f64)> {
    let blocks = 10;
    let per = (iters / blocks).max(1);
    let (mut attr, mut hand) = (Vec::new(), Vec::new());
    for b in 0..blocks {
        for which in if b % 2 == 0 { [0, 1] } else { [1, 0] } {
            let db = MockDb::new(0_i64);
            let t = Instant::now();
            for _ in 0..per {
                if which == 0 {
                    mock_attr(&db).await?;
                } else {
                    mock_hand(&db).await?;
                }
            }
            let ns = per_iter_ns(t.elapsed(), per);
            if which == 0 {
                attr.push(ns)
            } else {
                hand.push(ns)
            }
        }
    }
    Ok((median_f(&mut attr), median_f(&mut hand)))
}

/// ns of an `info_span!` + `instrument` of a ready future, no subscriber, over `n` iterations.
async fn span_cost(n: usize) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        use tracing::Instrument as _;
        let span = tracing::info_span!("transaction");
        std::hint::black_box(async move { i }.instrument(span).await);
    }
    per_iter_ns(t.elapsed(), n)
}

/// ns of a disabled `info!` event with fields, over `n` iterations.
fn event_cost(n: usize) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        tracing::info!(
            attempt = i,
            sqlstate = "40001",
            delay_ms = 1.5,
            "retrying transaction"
        );
        std::hint::black_box(i);
    }
    per_iter_ns(t.elapsed(), n)
}

/// ns of a `Box::pin` of a 256-byte future, awaited, over `n` iterations.
async fn box_cost(n: usize) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        let payload = [i as u8; 256];
        let fut: Pin<Box<dyn Future<Output = u8> + Send>> =
            Box::pin(async move { std::hint::black_box(payload)[0] });
        std::hint::black_box(fut.await);
    }
    per_iter_ns(t.elapsed(), n)
}

/// Median µs of `[BEGIN, UPDATE, COMMIT]` over `iters` hand-written transactions on a
/// one-connection pool without ping, after 20 of warm-up.
async fn db_phases(opts: &PgConnectOptions, iters: usize) -> Res<[f64; 3]> {
    let pool = workloads::pool(opts.clone(), 1, false).await?;
    let (mut b, mut u, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..iters + 20 {
        let t0 = Instant::now();
        let mut tx = pool
            .begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE")
            .await?;
        let t1 = Instant::now();
        sqlx::query("UPDATE counters SET n = n + 1 WHERE id = $1")
            .bind(1_i64)
            .execute(&mut *tx)
            .await?;
        let t2 = Instant::now();
        tx.commit().await?;
        let t3 = Instant::now();
        if i >= 20 {
            b.push((t1 - t0).as_secs_f64() * 1e6);
            u.push((t2 - t1).as_secs_f64() * 1e6);
            c.push((t3 - t2).as_secs_f64() * 1e6);
        }
    }
    pool.close().await;
    Ok([median_f(&mut b), median_f(&mut u), median_f(&mut c)])
}

/// Heap allocations per transaction: `[ours, hand-written begin_with]` per source.
#[derive(Debug, Default, Clone, Copy)]
pub struct Allocs {
    /// On one `PgConnection`.
    pub conn: [f64; 2],
    /// Through a one-connection pool (sqlx's release task included).
    pub pool: [f64; 2],
    /// Over the mock source (the retry loop and the mock only).
    pub mock: [f64; 2],
}

/// Counts heap allocations per transaction with `allocation_counter`, which counts the current
/// thread's allocations: so the transactions run on a current-thread runtime of a thread of
/// their own, where the connection's I/O and sqlx's release task run too.
fn count_allocations(opts: PgConnectOptions, n: usize, mock_n: usize) -> Res<Allocs> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pool = Target::Pool {
        size: 1,
        ping: false,
    };
    Ok(Allocs {
        conn: count_db_allocations(&rt, Target::Conn, opts.clone(), n)?,
        pool: count_db_allocations(&rt, pool, opts, n)?,
        mock: count_mock_allocations(&rt, mock_n)?,
    })
}

/// Heap allocations per transaction of ours and of the hand-written `begin_with` on `target`,
/// `n` transactions each after 20 of warm-up (statement cache, buffers).
fn count_db_allocations(
    rt: &tokio::runtime::Runtime,
    target: Target,
    opts: PgConnectOptions,
    n: usize,
) -> Res<[f64; 2]> {
    let mut out = [0.0; 2];
    let mut h = rt.block_on(target.open(opts))?;
    for (which, count) in out.iter_mut().enumerate() {
        rt.block_on(async {
            for _ in 0..20 {
                bump(which, &mut h).await?;
            }
            Ok::<_, sqlx::Error>(())
        })?;
        *count = allocations_per_tx(n, || {
            rt.block_on(async {
                for _ in 0..n {
                    bump(which, &mut h).await?;
                }
                Ok(())
            })
        })?;
    }
    rt.block_on(h.close())?;
    Ok(out)
}

/// Heap allocations per call of the attribute and of the hand loop over the mock source.
fn count_mock_allocations(rt: &tokio::runtime::Runtime, n: usize) -> Res<[f64; 2]> {
    let db = MockDb::new(0_i64);
    let mut out = [0.0; 2];
    for (which, count) in out.iter_mut().enumerate() {
        *count = allocations_per_tx(n, || {
            rt.block_on(async {
                for _ in 0..n {
                    if which == 0 {
                        mock_attr(&db).await?;
                    } else {
                        mock_hand(&db).await?;
                    }
                }
                Ok(())
            })
        })?;
    }
    Ok(out)
}

/// The heap allocations of `run`, which runs `n` transactions, per transaction.
fn allocations_per_tx(n: usize, run: impl FnOnce() -> Res<()>) -> Res<f64> {
    let mut result = Ok(());
    let info = allocation_counter::measure(|| result = run());
    result?;
    Ok(info.count_total as f64 / n as f64)
}

/// The median of `v` (sorted in place); 0 when empty.
pub fn median_f(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

// ---------------------------------------------------------------------------------------------
// Section 1: uncontended overhead
// ---------------------------------------------------------------------------------------------

#[serializable_retry(max = 5)]
async fn bump_attr(tx: &mut PgConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE counters SET n = n + 1 WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Where section 1's transactions get their connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A pool of `size` connections, opened in advance; `ping` is `test_before_acquire`.
    Pool {
        /// `max_connections`.
        size: u32,
        /// `test_before_acquire`.
        ping: bool,
    },
    /// One `PgConnection`, no pool: `&mut conn` for ours, `conn.begin…()` for the hand-written.
    Conn,
}

impl Target {
    /// The configurations of section 1, in report order.
    pub const ALL: [Target; 4] = [
        Target::Conn,
        Target::Pool {
            size: 1,
            ping: false,
        },
        Target::Pool {
            size: 10,
            ping: false,
        },
        Target::Pool {
            size: 10,
            ping: true,
        },
    ];

    /// The heading of this configuration in the report.
    pub fn title(self) -> String {
        match self {
            Target::Pool { size, ping: false } => format!(
                "a pool of {size} connection{}, `test_before_acquire(false)`",
                if size == 1 { "" } else { "s" }
            ),
            Target::Pool { size, ping: true } => {
                format!(
                    "a pool of {size} connections, `test_before_acquire(true)` (sqlx's defaults)"
                )
            }
            Target::Conn => "one `PgConnection`, no pool".to_string(),
        }
    }

    /// Round trips per transaction the client waits for: (ours, `begin()` + `SET`).
    pub fn critical_round_trips(self) -> (u8, u8) {
        // BEGIN, UPDATE, COMMIT; the hand-written code adds SET TRANSACTION. A one-connection
        // pool makes the next acquire wait for the release ping; `test_before_acquire` pings
        // before every acquire.
        let pool_extra = match self {
            Target::Pool { size: 1, ping } => 1 + u8::from(ping),
            Target::Pool { ping, .. } => u8::from(ping),
            Target::Conn => 0,
        };
        (3 + pool_extra, 4 + pool_extra)
    }

    async fn open(self, opts: PgConnectOptions) -> Res<Handle> {
        Ok(match self {
            Target::Pool { size, ping } => Handle::Pool(workloads::pool(opts, size, ping).await?),
            Target::Conn => Handle::Conn(PgConnection::connect_with(&opts).await?),
        })
    }
}

/// An open [`Target`].
enum Handle {
    Pool(PgPool),
    Conn(PgConnection),
}

impl Handle {
    async fn close(self) -> Res<()> {
        match self {
            Handle::Pool(p) => p.close().await,
            Handle::Conn(c) => c.close().await?,
        }
        Ok(())
    }
}

const BUMP: &str = "UPDATE counters SET n = n + 1 WHERE id = $1";

/// The hand-written transaction: `begin_with(BEGIN ISOLATION LEVEL SERIALIZABLE)` when
/// `one_statement`, else `begin()` + `SET TRANSACTION ISOLATION LEVEL SERIALIZABLE`.
async fn bump_hand(h: &mut Handle, one_statement: bool) -> Result<(), sqlx::Error> {
    const BEGIN: &str = "BEGIN ISOLATION LEVEL SERIALIZABLE";
    let mut tx = match (h, one_statement) {
        (Handle::Pool(p), true) => p.begin_with(BEGIN).await?,
        (Handle::Pool(p), false) => p.begin().await?,
        (Handle::Conn(c), true) => c.begin_with(BEGIN).await?,
        (Handle::Conn(c), false) => c.begin().await?,
    };
    if !one_statement {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(BUMP).bind(1_i64).execute(&mut *tx).await?;
    tx.commit().await
}

/// The three implementations of section 1.
pub const OVERHEAD_IMPS: [&str; 3] = [
    "`#[serializable_retry]`",
    "hand: `begin_with(\"BEGIN ISOLATION LEVEL SERIALIZABLE\")`",
    "hand: `begin()` + `SET TRANSACTION ISOLATION LEVEL SERIALIZABLE`",
];

async fn bump(which: usize, h: &mut Handle) -> Result<(), sqlx::Error> {
    match (which, &mut *h) {
        (0, Handle::Pool(p)) => bump_attr(&*p, 1).await,
        (0, Handle::Conn(c)) => bump_attr(c, 1).await,
        (1, h) => bump_hand(h, true).await,
        (_, h) => bump_hand(h, false).await,
    }
}

/// A 95 % percentile-bootstrap interval of the median of `v` (1000 resamples).
pub fn bootstrap_median_ci(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mut medians: Vec<f64> = (0..1000)
        .map(|_| {
            let mut sample: Vec<f64> = (0..v.len())
                .map(|_| v[fastrand::usize(..v.len())])
                .collect();
            median_f(&mut sample)
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    (medians[25], medians[974])
}

/// Section 1's figures for one [`Target`].
#[derive(Debug, Clone)]
pub struct OverheadRun {
    /// Where the connections came from.
    pub target: Target,
    /// Median per-transaction latency per implementation, µs.
    pub median_us: [f64; 3],
    /// p99 per implementation, µs.
    pub p99_us: [f64; 3],
    /// Median over blocks of (block time of imp 0 / block time of imp k).
    pub block_ratio: [f64; 3],
    /// 95 % bootstrap interval of `block_ratio` (resampling blocks).
    pub block_ci: [(f64, f64); 3],
    /// Round trips per transaction through the proxy.
    pub round_trips: [f64; 3],
    /// Transactions per implementation.
    pub n: usize,
}

impl OverheadRun {
    /// Ours / implementation `k`: the median over blocks of the ratio of block times, the
    /// estimate the goals are judged on (each block pair ran back to back, so drift cancels).
    pub fn ratio(&self, k: usize) -> f64 {
        self.block_ratio[k]
    }

    /// Ours / implementation `k` by median per-transaction latency.
    pub fn latency_ratio(&self, k: usize) -> f64 {
        self.median_us[0] / self.median_us[k]
    }
}

/// The block orders of section 1: every implementation runs first, second and third equally
/// often, so drift and warm caches favour none of them.
const ORDERS: [[usize; 3]; 6] = [
    [0, 1, 2],
    [1, 2, 0],
    [2, 0, 1],
    [2, 1, 0],
    [0, 2, 1],
    [1, 0, 2],
];

/// Section 1's figures for every [`Target`]: latencies and block ratios on a direct connection,
/// round trips through a counting proxy.
async fn overhead(
    plan: &Plan,
    opts: &PgConnectOptions,
    iso: &sqlx_retry_testkit::Isolated,
) -> Res<Vec<OverheadRun>> {
    let proxy = PgProxy::start(opts.clone()).await;
    let mut out = Vec::new();
    for target in Target::ALL {
        eprintln!("  {}", target.title());
        let mut run = time_blocks(plan, opts, target).await?;
        run.round_trips = count_round_trips(&proxy, iso, target).await?;
        eprintln!(
            "    ours/begin_with {:.3}, ours/begin+SET {:.3}, round trips {:?}",
            run.ratio(1),
            run.ratio(2),
            run.round_trips
        );
        out.push(run);
    }
    Ok(out)
}

/// Times the three implementations on `target` in blocks whose order rotates ([`ORDERS`]): the
/// latencies and block ratios of section 1, without round trips.
async fn time_blocks(plan: &Plan, opts: &PgConnectOptions, target: Target) -> Res<OverheadRun> {
    let mut h = target.open(opts.clone()).await?;
    // Warm-up: statement caches, server caches.
    for which in 0..3 {
        for _ in 0..50 {
            bump(which, &mut h).await?;
        }
    }
    let mut lat: [Vec<f64>; 3] = Default::default();
    let mut ratios: [Vec<f64>; 3] = Default::default();
    for block in 0..plan.blocks {
        let mut totals = [0.0_f64; 3];
        for which in ORDERS[block % ORDERS.len()] {
            totals[which] = time_block(plan.per_block, &mut lat[which], async || {
                bump(which, &mut h).await
            })
            .await?;
        }
        for k in 0..3 {
            ratios[k].push(totals[0] / totals[k]);
        }
    }
    h.close().await?;
    let mut run = OverheadRun {
        target,
        median_us: [0.0; 3],
        p99_us: [0.0; 3],
        block_ratio: [0.0; 3],
        block_ci: [(0.0, 0.0); 3],
        round_trips: [0.0; 3],
        n: plan.blocks * plan.per_block,
    };
    for k in 0..3 {
        run.median_us[k] = median_f(&mut lat[k]);
        run.p99_us[k] = lat[k][(lat[k].len() * 99 / 100).min(lat[k].len() - 1)];
        run.block_ratio[k] = median_f(&mut ratios[k]);
        run.block_ci[k] = bootstrap_median_ci(&ratios[k]);
    }
    Ok(run)
}

/// Runs `n` transactions with `tx`, one after the other, and records each one's latency in µs in
/// `lat`: one block of section 1. Returns the block's time in seconds.
async fn time_block(
    n: usize,
    lat: &mut Vec<f64>,
    mut tx: impl AsyncFnMut() -> Result<(), sqlx::Error>,
) -> Result<f64, sqlx::Error> {
    let t_block = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        tx().await?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(t_block.elapsed().as_secs_f64())
}

/// Round trips per transaction of each implementation through `proxy`, counted with the same
/// kind of connection source as `target`.
async fn count_round_trips(
    proxy: &PgProxy,
    iso: &sqlx_retry_testkit::Isolated,
    target: Target,
) -> Res<[f64; 3]> {
    let mut round_trips = [0.0; 3];
    let mut ph = target.open(proxy.schema_options(iso.schema())).await?;
    for (which, per_tx) in round_trips.iter_mut().enumerate() {
        for _ in 0..10 {
            bump(which, &mut ph).await?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let n = 200;
        let before = proxy.stats();
        for _ in 0..n {
            bump(which, &mut ph).await?;
        }
        // Let the pool's release ping of the last transaction land before counting.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let delta = proxy.stats().since(&before);
        // A bare ROLLBACK is sent without waiting for its answer (see `ProxyStats::rollbacks`).
        *per_tx = (delta.round_trips - delta.rollbacks) as f64 / n as f64;
    }
    ph.close().await?;
    Ok(round_trips)
}

/// Section 1 (d) runs its steps with this many clients at once: one, where every round trip is
/// a lone client's, and two, where the CPUs are busy and what each step costs the server and the
/// client shows in full (as at the low client counts of section 4).
pub const COMMIT_STEP_CLIENTS: [usize; 2] = [1, 2];

/// Section 1 (d): what ours' COMMIT on a held connection is made of. Step 0 is ours; steps 1–4
/// are the same transaction written by hand, ended as [`COMMIT_STEP_ENDINGS`] says.
pub const COMMIT_STEPS: [&str; 5] = [
    "`#[serializable_retry]`: all of step 3, and the loop",
    "hand: `commit()`, a plain COMMIT",
    "hand: `COMMIT; BEGIN` in one query, then the `Transaction` dropped: the empty transaction \
     that keeps sqlx's transaction depth true (its ROLLBACK goes out ahead of the next BEGIN)",
    "hand: `SET LOCAL sqlx_retry.not_aborted = 'on'; COMMIT; BEGIN`, then dropped: step 2 and the \
     check, as ours sends it",
    "hand: `SHOW transaction_isolation; COMMIT; BEGIN`, then dropped: step 2 and the check as \
     the `SHOW` ours sent before",
];

/// What ours sends to commit on PostgreSQL, written out for the hand-written code that ends its
/// transactions the same way (§1 (d) step 3, and section 4's loop committing as ours does): the
/// check that the transaction is not aborted, COMMIT, and the empty transaction whose ROLLBACK
/// keeps sqlx's transaction depth true. A test reads the check from the library's source.
pub const OURS_COMMIT_SQL: &str = "SET LOCAL sqlx_retry.not_aborted = 'on'; COMMIT; BEGIN";

/// How hand-written steps 1–4 of [`COMMIT_STEPS`] end their transaction: `None` is sqlx's
/// `commit()`; otherwise one simple query on the open `Transaction`, which is then dropped, so
/// that sqlx queues the ROLLBACK of the empty transaction the query leaves.
const COMMIT_STEP_ENDINGS: [Option<&str>; 4] = [
    None,
    Some("COMMIT; BEGIN"),
    Some(OURS_COMMIT_SQL),
    Some("SHOW transaction_isolation; COMMIT; BEGIN"),
];

/// Section 1 (d)'s figures: `clients` `PgConnection`s side by side, each on a row of its own.
#[derive(Debug, Clone)]
pub struct CommitSteps {
    /// Clients running the steps at the same time.
    pub clients: usize,
    /// Median per-transaction latency per step, µs.
    pub median_us: [f64; 5],
    /// Median over blocks of (block time of step k / block time of step 1, the plain COMMIT).
    pub to_plain: [f64; 5],
    /// 95 % bootstrap interval of `to_plain`.
    pub to_plain_ci: [(f64, f64); 5],
    /// Median over blocks of (ours' block time / step 3's): what the loop adds to the SQL it
    /// sends.
    pub ours_to_check: f64,
    /// 95 % bootstrap interval of `ours_to_check`.
    pub ours_to_check_ci: (f64, f64),
    /// Transactions per step and client.
    pub n: usize,
}

async fn commit_step(which: usize, c: &mut PgConnection, id: i64) -> Result<(), sqlx::Error> {
    let Some(ending) = which.checked_sub(1) else {
        return bump_attr(c, id).await;
    };
    let mut tx = c.begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE").await?;
    sqlx::query(BUMP).bind(id).execute(&mut *tx).await?;
    match COMMIT_STEP_ENDINGS[ending] {
        None => tx.commit().await,
        Some(sql) => {
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            drop(tx);
            Ok(())
        }
    }
}

/// Times the steps of [`COMMIT_STEPS`] on `clients` connections at once, each updating a row of
/// its own through the primary key's index (so that they never conflict), in blocks whose order
/// rotates and turns round every 5 blocks, so that each step runs in each place, after each
/// other, equally often. A block of a step ends when every client has run its transactions.
async fn commit_steps(plan: &Plan, opts: &PgConnectOptions, clients: usize) -> Res<CommitSteps> {
    const N: usize = COMMIT_STEPS.len();
    let opts = opts.clone().options([("enable_seqscan", "off")]);
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(PgConnection::connect_with(&opts).await?);
    }
    sqlx::query(
        "INSERT INTO counters SELECT g, 0 FROM generate_series(1, $1) g ON CONFLICT DO NOTHING",
    )
    .bind(clients as i64)
    .execute(&mut conns[0])
    .await?;
    let mut lat: [Vec<f64>; N] = Default::default();
    let mut to_plain: [Vec<f64>; N] = Default::default();
    let mut ours_to_check = Vec::new();
    // Block -1 is the warm-up: statement caches, server caches.
    for block in -1..plan.blocks as isize {
        let rotation = block.max(0) as usize;
        let mut order: Vec<usize> = (0..N).map(|i| (i + rotation) % N).collect();
        if (rotation / N) % 2 == 1 {
            order.reverse();
        }
        let n = if block < 0 { 50 } else { plan.per_block };
        let mut totals = [0.0_f64; N];
        for which in order {
            let t_block = Instant::now();
            let tasks: Vec<_> = conns
                .drain(..)
                .enumerate()
                .map(|(k, mut c)| {
                    tokio::spawn(async move {
                        let mut lat = Vec::with_capacity(n);
                        let mut r = Ok(());
                        for _ in 0..n {
                            let t = Instant::now();
                            r = commit_step(which, &mut c, k as i64 + 1).await;
                            if r.is_err() {
                                break;
                            }
                            lat.push(t.elapsed().as_secs_f64() * 1e6);
                        }
                        (c, lat, r)
                    })
                })
                .collect();
            for task in tasks {
                let (c, block_lat, r) = task.await?;
                r?;
                conns.push(c);
                if block >= 0 {
                    lat[which].extend(block_lat);
                }
            }
            totals[which] = t_block.elapsed().as_secs_f64();
        }
        if block >= 0 {
            for k in 0..N {
                to_plain[k].push(totals[k] / totals[1]);
            }
            ours_to_check.push(totals[0] / totals[3]);
        }
    }
    for c in conns {
        c.close().await?;
    }
    let mut steps = CommitSteps {
        clients,
        median_us: [0.0; N],
        to_plain: [0.0; N],
        to_plain_ci: [(0.0, 0.0); N],
        ours_to_check_ci: bootstrap_median_ci(&ours_to_check),
        ours_to_check: median_f(&mut ours_to_check),
        n: plan.blocks * plan.per_block,
    };
    for k in 0..N {
        steps.median_us[k] = median_f(&mut lat[k]);
        steps.to_plain[k] = median_f(&mut to_plain[k]);
        steps.to_plain_ci[k] = bootstrap_median_ci(&to_plain[k]);
    }
    Ok(steps)
}

/// Counts the body's attempts (ours) for the retry figures.
pub fn bump_counter(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::{COMMIT_STEP_ENDINGS, COMMIT_STEPS};

    /// Step 3 of §1 (d) is "the check, as ours sends it": its SQL is written out here because the
    /// library keeps it crate-private (`check_sql!` in `retry-core/src/aborted.rs`), so this
    /// reads it from there and fails when the two part.
    #[test]
    fn step_3_sends_the_check_the_library_sends() {
        let aborted = include_str!("../../retry-core/src/aborted.rs");
        let body = aborted
            .split("macro_rules! check_sql {")
            .nth(1)
            .expect("check_sql! in aborted.rs");
        let check = body
            .split('"')
            .nth(1)
            .expect("a string literal in check_sql!");
        let pooled_commit = format!("{check}; COMMIT; BEGIN");
        assert_eq!(COMMIT_STEP_ENDINGS[2], Some(pooled_commit.as_str()));
        assert!(
            COMMIT_STEPS[3].contains(&pooled_commit),
            "{}",
            COMMIT_STEPS[3]
        );
    }
}
