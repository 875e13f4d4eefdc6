//! Section 5: the tail, and whether any call runs out of attempts, with and without priority
//! turns (`PolicyBuilder::priority_after`), on the reliability suite's stress workloads.
//!
//! Every run goes through `sqlx_retry::transaction` on a pool. Two policies, each a table:
//! (a) the defaults, what `#[serializable_retry]` gets with no arguments (5 attempts, the default
//! backoff), from 4 clients up; (b) the stress tests' `#[serializable_retry(max = 10, backoff(base
//! = "2ms", cap = "100ms"))]` at 32 and 64 clients. Within a table the variants differ only in
//! `priority_after`, each with a policy of its own, and run in an order rotated per round.
//! (c) splits the clients between two functions on the same rows, at the defaults: each with a
//! policy of its own (what two annotated functions get from their arguments), or both under one
//! (`#[serializable_retry(policy = NAME)]`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{PgConnection, PgPool};
use sqlx_retry::{Backoff, Policy, transaction};

use crate::{Plan, Res, report, workloads};

/// Accounts of the bank workload.
const ACCOUNTS: i64 = 16;
/// Shifts and doctors per shift of the on-call workload.
const SHIFTS: i64 = 6;
const DOCTORS: i64 = 4;
/// One table of the section: a policy, the client counts and the `priority_after` variants.
#[derive(Debug, Clone)]
pub struct Block {
    /// Attempts per call.
    pub max: u32,
    /// `true`: the stress tests' `Backoff::adaptive(2 ms, 100 ms)`; `false`: the default.
    pub stress_backoff: bool,
    pub clients: Vec<usize>,
    pub variants: Vec<Variant>,
}

/// One row of a table: when priority turns start, and how many policies the clients call
/// through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Variant {
    /// `None`: priority turns off; else `priority_after`.
    pub after: Option<u32>,
    /// Client `i` calls through policy `i % policies`: with 2, two functions on the same rows,
    /// each with a policy of its own; with 1, one policy for all the clients.
    pub policies: usize,
}

impl Variant {
    /// The row's name in the report; in a table of split clients, with its policies.
    fn label(self, split: bool) -> String {
        let turns = self
            .after
            .map_or("off".to_string(), |k| format!("after {k}"));
        match (split, self.policies) {
            (false, _) => turns,
            (true, 1) => format!("{turns}, one policy for both"),
            (true, _) => format!("{turns}, a policy each"),
        }
    }

    /// One policy for all the clients.
    fn turns(after: Option<u32>) -> Variant {
        Variant { after, policies: 1 }
    }
}

impl Block {
    fn policy(&self, after: Option<u32>) -> Result<Policy, sqlx_retry::PolicyError> {
        let builder = Policy::builder()
            .max_attempts(self.max)
            .priority_after(after);
        let builder = if self.stress_backoff {
            builder.backoff(Backoff::adaptive(
                Duration::from_millis(2),
                Duration::from_millis(100),
            ))
        } else {
            builder
        };
        builder.build()
    }
}

/// The workloads, as in `tests/reliability/stress.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// Transfers between 16 accounts, locking the two rows in random order (so deadlocks too).
    Bank,
    /// One hot counter row.
    Counter,
    /// Doctors going off call if at least two of the shift are on call (write skew).
    Doctors,
}

impl Load {
    const ALL: [Load; 3] = [Load::Bank, Load::Counter, Load::Doctors];

    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Load::Bank => "bank transfers",
            Load::Counter => "hot counter",
            Load::Doctors => "doctors on call",
        }
    }
}

/// What one variant measured on one workload at one client count, summed over rounds.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub variant: Variant,
    /// Calls that committed.
    pub committed: u64,
    /// Calls that returned the conflict after all their attempts.
    pub exhausted: u64,
    /// Calls that failed otherwise.
    pub other: u64,
    /// Attempts of all calls.
    pub attempts: u64,
    /// The most attempts one call made.
    pub max_attempts: u32,
    /// Wall time of the runs.
    pub elapsed: Duration,
    /// Latency of every call (committed or not), µs, sorted.
    pub lat_us: Vec<f64>,
    /// Committed calls per second of each round, in the order they ran.
    pub round_tps: Vec<f64>,
}

impl Row {
    /// Adds one round's figures.
    fn absorb(&mut self, other: Row) {
        self.round_tps.push(other.tps());
        self.committed += other.committed;
        self.exhausted += other.exhausted;
        self.other += other.other;
        self.attempts += other.attempts;
        self.max_attempts = self.max_attempts.max(other.max_attempts);
        self.elapsed += other.elapsed;
        self.lat_us.extend(other.lat_us);
        self.lat_us.sort_by(f64::total_cmp);
    }

    /// Committed calls per second.
    pub fn tps(&self) -> f64 {
        self.committed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency percentile, ms.
    pub fn pct_ms(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        let i = ((self.lat_us.len() as f64 * p) as usize).min(self.lat_us.len() - 1);
        self.lat_us[i] / 1e3
    }

    fn calls(&self) -> u64 {
        self.committed + self.exhausted + self.other
    }

    fn attempts_per_call(&self) -> f64 {
        self.attempts as f64 / self.calls().max(1) as f64
    }

    /// The slowest call, ms.
    fn max_ms(&self) -> f64 {
        self.lat_us.last().copied().unwrap_or(0.0) / 1e3
    }

    fn summary(&self) -> String {
        format!(
            "{:.0} commits/s, exhausted {}, other {}, attempts/call {:.2}, max attempts {}, p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms",
            self.tps(),
            self.exhausted,
            self.other,
            self.attempts_per_call(),
            self.max_attempts,
            self.pct_ms(0.5),
            self.pct_ms(0.99),
            self.max_ms(),
        )
    }
}

/// The section's figures: per table, workload and client count, one row per variant.
#[derive(Debug, Clone, Default)]
pub struct Fairness {
    /// Seconds per run, and rounds.
    pub run: Duration,
    pub rounds: usize,
    pub blocks: Vec<Block>,
    /// The index of the block, the workload, the clients and the rows.
    pub results: Vec<(usize, Load, usize, Vec<Row>)>,
}

/// The plan of the section, from the bench's mode.
fn shape(plan: &Plan) -> (Duration, usize, Vec<Block>) {
    // The default turn, and the later ones that still leave a call a priority attempt.
    let defaults = |clients: Vec<usize>, later: &[u32]| Block {
        max: Policy::DEFAULT_MAX_ATTEMPTS,
        stress_backoff: false,
        clients,
        variants: [None, Some(Policy::DEFAULT_PRIORITY_AFTER)]
            .into_iter()
            .chain(later.iter().map(|&k| Some(k)))
            .map(Variant::turns)
            .collect(),
    };
    let stress = |clients: Vec<usize>, variants: Vec<Option<u32>>| Block {
        max: 10,
        stress_backoff: true,
        clients,
        variants: variants.into_iter().map(Variant::turns).collect(),
    };
    // Two functions on the same rows at the defaults: a policy each, or one for both.
    let split = |clients: Vec<usize>| Block {
        max: Policy::DEFAULT_MAX_ATTEMPTS,
        stress_backoff: false,
        clients,
        variants: [2, 1]
            .map(|policies| Variant {
                after: Some(Policy::DEFAULT_PRIORITY_AFTER),
                policies,
            })
            .to_vec(),
    };
    match plan.mode {
        "smoke" => (
            Duration::from_millis(300),
            1,
            vec![
                defaults(vec![4], &[]),
                stress(vec![32], vec![None, Some(2)]),
                split(vec![4]),
            ],
        ),
        "quick" => (
            Duration::from_secs(3),
            2,
            vec![
                defaults(vec![16], &[report::LATER_TURN]),
                stress(vec![32], vec![None, Some(2), Some(3)]),
                split(vec![16]),
            ],
        ),
        _ => (
            Duration::from_secs(5),
            2,
            vec![
                defaults(
                    vec![4, 16, 64],
                    &[report::LATER_TURN, Policy::DEFAULT_MAX_ATTEMPTS - 1],
                ),
                stress(vec![32, 64], vec![None, Some(2), Some(3), Some(5)]),
                split(vec![4, 16, 64]),
            ],
        ),
    }
}

/// Runs the section.
pub async fn section(plan: &Plan, opts: &PgConnectOptions, rep: &mut report::Report) -> Res<()> {
    eprintln!("[fairness]");
    rep.load.push(("fairness", report::loadavg()));
    let (run, rounds, blocks) = shape(plan);
    let mut out = Fairness {
        run,
        rounds,
        blocks: blocks.clone(),
        results: Vec::new(),
    };
    for (b, block) in blocks.iter().enumerate() {
        for &n in &block.clients {
            let variants = &block.variants;
            for load in Load::ALL {
                let mut rows: Vec<Row> = variants
                    .iter()
                    .map(|&variant| Row {
                        variant,
                        ..Row::default()
                    })
                    .collect();
                // The policies of each variant for the whole section, as annotated functions
                // have theirs.
                let policies: Vec<Vec<Arc<Policy>>> = variants
                    .iter()
                    .map(|v| {
                        (0..v.policies)
                            .map(|_| block.policy(v.after).map(Arc::new))
                            .collect::<Result<_, _>>()
                    })
                    .collect::<Result<_, _>>()?;
                for round in 0..rounds {
                    for k in 0..variants.len() {
                        let i = (k + round) % variants.len();
                        let r = run_load(opts, load, &policies[i], n, run).await?;
                        eprintln!(
                            "  round {} {} {n} clients, max {}, priority_after {:?}, {} policies: {}",
                            round + 1,
                            load.name(),
                            block.max,
                            variants[i].after,
                            variants[i].policies,
                            r.summary()
                        );
                        rows[i].absorb(r);
                    }
                }
                out.results.push((b, load, n, rows));
            }
        }
    }
    rep.fairness = Some(out);
    Ok(())
}

/// Recreates the workload's table.
async fn reset(pool: &PgPool, load: Load) -> Res<()> {
    let sql = match load {
        Load::Bank => {
            "DROP TABLE IF EXISTS fair_accounts;
             CREATE TABLE fair_accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO fair_accounts SELECT g, 1000 FROM generate_series(1, 16) g;
             ANALYZE fair_accounts;"
        }
        Load::Counter => {
            "DROP TABLE IF EXISTS fair_counter;
             CREATE TABLE fair_counter (id int PRIMARY KEY, n bigint NOT NULL);
             INSERT INTO fair_counter VALUES (1, 0);
             ANALYZE fair_counter;"
        }
        Load::Doctors => {
            "DROP TABLE IF EXISTS fair_doctors;
             CREATE TABLE fair_doctors (shift bigint, doctor bigint, on_call bool NOT NULL,
                                        PRIMARY KEY (shift, doctor));
             INSERT INTO fair_doctors SELECT s, d, true
               FROM generate_series(1, 6) s, generate_series(1, 4) d;
             ANALYZE fair_doctors;"
        }
    };
    sqlx::raw_sql(sql).execute(pool).await?;
    Ok(())
}

async fn bank(tx: &mut PgConnection, from: i64, to: i64, amount: i64) -> Result<(), sqlx::Error> {
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM fair_accounts WHERE id = $1")
        .bind(from)
        .fetch_one(&mut *tx)
        .await?;
    if balance < amount {
        return Ok(());
    }
    sqlx::query("UPDATE fair_accounts SET balance = balance - $1 WHERE id = $2")
        .bind(amount)
        .bind(from)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE fair_accounts SET balance = balance + $1 WHERE id = $2")
        .bind(amount)
        .bind(to)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn counter(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE fair_counter SET n = n + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn doctors(
    tx: &mut PgConnection,
    shift: i64,
    doctor: i64,
    go_off: bool,
) -> Result<(), sqlx::Error> {
    if go_off {
        let on_call: i64 =
            sqlx::query_scalar("SELECT count(*) FROM fair_doctors WHERE shift = $1 AND on_call")
                .bind(shift)
                .fetch_one(&mut *tx)
                .await?;
        if on_call < 2 {
            return Ok(());
        }
    }
    sqlx::query("UPDATE fair_doctors SET on_call = $3 WHERE shift = $1 AND doctor = $2")
        .bind(shift)
        .bind(doctor)
        .bind(!go_off)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// One call of `load` under `policy`; returns its result and its attempts.
async fn call(pool: &PgPool, load: Load, policy: &Policy) -> (Result<(), sqlx::Error>, u32) {
    let attempts = Arc::new(AtomicU32::new(0));
    let a = &attempts;
    let result = match load {
        Load::Bank => {
            let from = fastrand::i64(1..=ACCOUNTS);
            let mut to = fastrand::i64(1..ACCOUNTS);
            if to >= from {
                to += 1;
            }
            let amount = fastrand::i64(1..=300);
            transaction(pool, policy, |tx| {
                let a = a.clone();
                Box::pin(async move {
                    a.fetch_add(1, Ordering::Relaxed);
                    bank(tx, from, to, amount).await
                })
            })
            .await
        }
        Load::Counter => {
            transaction(pool, policy, |tx| {
                let a = a.clone();
                Box::pin(async move {
                    a.fetch_add(1, Ordering::Relaxed);
                    counter(tx).await
                })
            })
            .await
        }
        Load::Doctors => {
            let (shift, doctor) = (fastrand::i64(1..=SHIFTS), fastrand::i64(1..=DOCTORS));
            let go_off = fastrand::u8(0..10) < 7;
            transaction(pool, policy, |tx| {
                let a = a.clone();
                Box::pin(async move {
                    a.fetch_add(1, Ordering::Relaxed);
                    doctors(tx, shift, doctor, go_off).await
                })
            })
            .await
        }
    };
    (result, attempts.load(Ordering::Relaxed))
}

/// `clients` tasks calling `load` through a pool of `clients + 4` connections for `dur`, on a
/// fresh table; client `i` under `policies[i % policies.len()]`.
async fn run_load(
    opts: &PgConnectOptions,
    load: Load,
    policies: &[Arc<Policy>],
    clients: usize,
    dur: Duration,
) -> Res<Row> {
    let pool = workloads::pool(opts.clone(), clients as u32 + 4, false).await?;
    reset(&pool, load).await?;
    let deadline = Instant::now() + dur;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..clients {
        let (pool, policy) = (pool.clone(), policies[i % policies.len()].clone());
        set.spawn(async move {
            let mut row = Row::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                let (result, attempts) = call(&pool, load, &policy).await;
                row.lat_us.push(t.elapsed().as_secs_f64() * 1e6);
                row.attempts += u64::from(attempts);
                row.max_attempts = row.max_attempts.max(attempts);
                match result {
                    Ok(()) => row.committed += 1,
                    Err(e)
                        if sqlx_retry::error::sqlstate(&e)
                            .is_some_and(|c| matches!(c.as_str(), "40001" | "40P01")) =>
                    {
                        row.exhausted += 1
                    }
                    Err(e) => {
                        if row.other == 0 {
                            eprintln!("    a call failed: {e}");
                        }
                        row.other += 1;
                    }
                }
            }
            row
        });
    }
    let mut row = Row::default();
    while let Some(r) = set.join_next().await {
        // A task's row has no elapsed time of its own: the run's is set below.
        row.absorb(r?);
    }
    row.elapsed = started.elapsed();
    pool.close().await;
    Ok(row)
}

/// The section's Markdown; empty when the section did not run.
pub fn markdown(f: Option<&Fairness>) -> String {
    let Some(f) = f else {
        return String::new();
    };
    let mut m = String::new();
    let _ = writeln!(m, "## 5. Tail and fairness: priority turns\n");
    let _ = writeln!(
        m,
        "The reliability suite's stress workloads (bank transfers between 16 accounts, one hot \
         counter, doctors on call), each call through `sqlx_retry::transaction` on a pool, with \
         priority turns off and with `priority_after(k)` (a call whose first *k* attempts failed \
         runs its next attempt with no other attempt of its policy beside it; on by default, \
         after {}). Each variant has a policy of its own (two, in (c)'s \
         \"a policy each\"); {} round(s) of {:.1} s per variant, the \
         order rotated per round, figures summed over rounds; \"rounds\" gives the lowest and the \
         highest commits/s of a single round, to show how far one round can be from another. \
         Latency and the attempt counts cover every call, committed or not. \"Exhausted\": calls that got the conflict back \
         after all their attempts.\n",
        Policy::DEFAULT_PRIORITY_AFTER,
        f.rounds,
        f.run.as_secs_f64()
    );
    for (b, block) in f.blocks.iter().enumerate() {
        let letter = char::from(b'a' + (b as u8 % 26));
        let split = block.variants.iter().any(|v| v.policies > 1);
        let title = if split {
            format!(
                "the defaults, the clients split between two functions on the same rows \
                 ({} attempts, the default backoff, priority turns after {}): a policy each \
                 (what two annotated functions get from their own arguments, or the closure API \
                 given two policies), or one policy for both (`#[serializable_retry(policy = \
                 NAME)]` on each, or one `Policy` passed to both). Turns and the adaptive \
                 backoff's count of retrying calls belong to a policy",
                block.max,
                Policy::DEFAULT_PRIORITY_AFTER
            )
        } else if block.stress_backoff {
            format!(
                "the stress tests' policy, `max_attempts({})` and `Backoff::adaptive(2 ms, 100 ms)`",
                block.max
            )
        } else {
            format!(
                "the defaults, what `#[serializable_retry]` gets with no arguments: {} attempts \
                 and the default backoff",
                block.max
            )
        };
        let _ = writeln!(m, "**({letter}) With {title}.**\n");
        let _ = writeln!(
            m,
            "| workload | clients | priority turns | commits/s | rounds | exhausted | attempts/call | max attempts | p50 ms | p99 ms | max ms |"
        );
        let _ = writeln!(m, "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|");
        for (_, load, clients, rows) in f.results.iter().filter(|r| r.0 == b) {
            for r in rows {
                // Every row has at least one round.
                let (lo, hi) = report::lo_hi(&r.round_tps).unwrap_or((0.0, 0.0));
                let _ = writeln!(
                    m,
                    "| {} | {clients} | {} | {:.0} | {lo:.0}–{hi:.0} | {} | {:.2} | {} | {:.1} | {:.1} | {:.0} |",
                    load.name(),
                    r.variant.label(split),
                    r.tps(),
                    r.exhausted,
                    r.attempts_per_call(),
                    r.max_attempts,
                    r.pct_ms(0.5),
                    r.pct_ms(0.99),
                    r.max_ms(),
                );
            }
        }
        m.push('\n');
    }
    m
}
