//! The retry policy: how many attempts, which transaction, which errors, how long to wait.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::fairness::Priority;
use crate::sqlstate::InvalidSqlState;
use crate::{Backoff, ConflictKind, SqlState};

/// The isolation level a transaction starts with: set it with
/// [`PolicyBuilder::isolation`] (or the attribute's `isolation = "…"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum IsolationLevel {
    /// `SERIALIZABLE`: the outcome equals some serial order; conflicts abort with `40001`.
    #[default]
    Serializable,
    /// `REPEATABLE READ`: one snapshot for the whole transaction; a concurrent update of a row this
    /// transaction updates aborts it with `40001`. Write skew is possible.
    RepeatableRead,
    /// `READ COMMITTED`: each statement sees what committed before it began. Deadlocks (`40P01`)
    /// are still retried.
    ReadCommitted,
}

impl IsolationLevel {
    /// The SQL spelling, e.g. `"SERIALIZABLE"`.
    pub const fn as_sql(self) -> &'static str {
        match self {
            IsolationLevel::Serializable => "SERIALIZABLE",
            IsolationLevel::RepeatableRead => "REPEATABLE READ",
            IsolationLevel::ReadCommitted => "READ COMMITTED",
        }
    }
}

/// How each attempt's transaction starts: isolation level and access mode, from the
/// [`Policy`]. A source of your own receives it in
/// [`BeginTransaction::begin`](crate::source::BeginTransaction::begin).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TxOptions {
    /// The isolation level.
    pub isolation: IsolationLevel,
    /// `READ ONLY`.
    pub read_only: bool,
    /// `DEFERRABLE` (PostgreSQL): only with `read_only` at `Serializable`; the transaction waits
    /// for a safe snapshot and then can never fail with a serialization error.
    pub deferrable: bool,
    /// The transaction may run on a hot standby: only with `read_only`, at `RepeatableRead` or
    /// `ReadCommitted`. A [`Cluster`](crate::Cluster) source runs it on a standby; every other
    /// source ignores it.
    pub replica: bool,
}

/// What the `on_retry` hook is told before each retry: read it in a hook set with
/// [`PolicyBuilder::on_retry`].
///
/// ```
/// use sqlx_retry_core::Policy;
///
/// let policy = Policy::builder()
///     .on_retry(|info| {
///         let code = info.sqlstate.map(|c| c.to_string()).unwrap_or_default();
///         let (name, attempt, delay) = (info.name, info.attempt, info.delay);
///         eprintln!("{name}: attempt {attempt} failed ({code}); retrying in {delay:?}");
///     })
///     .build()?;
/// # Ok::<(), sqlx_retry_core::PolicyError>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RetryInfo {
    /// The name of the annotated function (or `"transaction"` for the plain API).
    pub name: &'static str,
    /// The attempt that failed, starting at 1.
    pub attempt: u32,
    /// The SQLSTATE that caused the retry, if the failure had one (a lost connection has none).
    pub sqlstate: Option<SqlState>,
    /// What kind of conflict it was, when the error says (see [`ConflictKind`]).
    pub conflict: Option<ConflictKind>,
    /// How long the loop sleeps before the next attempt.
    pub delay: Duration,
}

/// A callback run before each retry: what [`PolicyBuilder::on_retry`] stores.
pub(crate) type RetryHook = Arc<dyn Fn(&RetryInfo) + Send + Sync>;

/// How a transaction is retried: pass one to [`transaction`](crate::transaction). Built with
/// [`Policy::builder`] (see [`PolicyBuilder`] for an example); the attribute builds one from its
/// arguments at compile time, one per function, or runs under a `static` one that several
/// functions name with `#[serializable_retry(policy = NAME)]`.
///
/// The priority turns and the adaptive backoff's count of retrying calls belong to the policy
/// (its clones share them): calls under one policy take turns with each other, and calls under
/// different policies do not.
///
/// # Default
///
/// 5 attempts, `SERIALIZABLE` read-write, [`Backoff::default`] (adaptive full jitter, 5 ms base,
/// 500 ms cap), no time budget, only `40001` and `40P01` retried, a COMMIT with unknown outcome not
/// retried, no savepoint protocol (and, when it is turned on, no wait before a rerun inside the
/// savepoint: [`Policy::DEFAULT_SAVEPOINT_BACKOFF`]).
#[derive(Clone)]
pub struct Policy {
    pub(crate) max_attempts: u32,
    pub(crate) options: TxOptions,
    pub(crate) backoff: Backoff,
    pub(crate) budget: Option<Duration>,
    pub(crate) retry_on: Cow<'static, [SqlState]>,
    pub(crate) idempotent: bool,
    pub(crate) on_retry: Option<RetryHook>,
    pub(crate) savepoint: Option<Cow<'static, str>>,
    pub(crate) savepoint_backoff: Backoff,
    pub(crate) priority: Option<Priority>,
}

impl Policy {
    /// The default number of attempts, 5.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

    /// The savepoint name CockroachDB's retry protocol uses, and the default of
    /// [`PolicyBuilder::savepoint`]: `cockroach_restart`.
    pub const DEFAULT_SAVEPOINT: &'static str = "cockroach_restart";

    /// The default of [`PolicyBuilder::savepoint_backoff`], the wait before a rerun inside the
    /// savepoint: [`Backoff::none()`], a rerun at once, as cockroach-go does. Chosen with the
    /// benchmark (BENCHMARKS.md, section 2, which sets an exponential 5 ms/500 ms wait there
    /// against it on PostgreSQL): the wait, taken while the transaction is open, showed no steady
    /// gain, and a PostgreSQL serialization failure's victim fails its rerun anyway.
    pub const DEFAULT_SAVEPOINT_BACKOFF: Backoff = Backoff::none();

    /// The default of [`PolicyBuilder::priority_after`]: a call whose first 2 attempts failed
    /// runs its third with no other attempt of its policy beside it. Chosen with the benchmark
    /// (BENCHMARKS.md §5 (a)): at the default [`max_attempts`](Self::DEFAULT_MAX_ATTEMPTS) the
    /// backoff alone let calls run out of attempts on each of its three workloads at 4, 16 and
    /// 64 clients, and with priority turns none did.
    pub const DEFAULT_PRIORITY_AFTER: u32 = 2;

    /// A builder starting from the defaults.
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder {
            policy: Policy::default(),
            retry_on: Vec::new(),
            error: None,
        }
    }

    /// Total attempts, at least 1.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// How each attempt's transaction starts.
    pub fn options(&self) -> &TxOptions {
        &self.options
    }

    /// The backoff between attempts.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The total time budget, if any (see [`PolicyBuilder::budget`]).
    pub fn budget(&self) -> Option<Duration> {
        self.budget
    }

    /// SQLSTATEs retried in addition to `40001` and `40P01`.
    pub fn retry_on(&self) -> &[SqlState] {
        &self.retry_on
    }

    /// Whether a COMMIT with unknown outcome is retried.
    pub fn idempotent(&self) -> bool {
        self.idempotent
    }

    /// The savepoint of the savepoint protocol, when it is on (see [`PolicyBuilder::savepoint`]).
    pub fn savepoint(&self) -> Option<&str> {
        self.savepoint.as_deref()
    }

    /// The wait before a rerun inside the savepoint (see [`PolicyBuilder::savepoint_backoff`]).
    pub fn savepoint_backoff(&self) -> &Backoff {
        &self.savepoint_backoff
    }

    /// The failed attempts after which a call's next attempt runs with no other attempt of this
    /// policy beside it, when priority turns are on (see [`PolicyBuilder::priority_after`]).
    pub fn priority_after(&self) -> Option<u32> {
        self.priority.as_ref().map(|p| p.after)
    }

    /// The policy of an annotated function: what
    /// [`__private::attribute_policy`](crate::__private::attribute_policy) builds.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_attribute(
        max_attempts: u32,
        isolation: IsolationLevel,
        read_only: bool,
        deferrable: bool,
        backoff: Backoff,
        budget: Option<Duration>,
        retry_on: &'static [SqlState],
        idempotent: bool,
        priority_after: Option<u32>,
    ) -> Policy {
        Policy {
            max_attempts,
            options: TxOptions {
                isolation,
                read_only,
                deferrable,
                replica: false,
            },
            backoff,
            budget,
            retry_on: Cow::Borrowed(retry_on),
            idempotent,
            on_retry: None,
            savepoint: None,
            savepoint_backoff: Policy::DEFAULT_SAVEPOINT_BACKOFF,
            priority: priority_after.map(Priority::new),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: Policy::DEFAULT_MAX_ATTEMPTS,
            options: TxOptions::default(),
            backoff: Backoff::default(),
            budget: None,
            retry_on: Cow::Borrowed(&[]),
            idempotent: false,
            on_retry: None,
            savepoint: None,
            savepoint_backoff: Policy::DEFAULT_SAVEPOINT_BACKOFF,
            priority: Some(Priority::new(Policy::DEFAULT_PRIORITY_AFTER)),
        }
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("max_attempts", &self.max_attempts)
            .field("options", &self.options)
            .field("backoff", &self.backoff)
            .field("budget", &self.budget)
            .field("retry_on", &self.retry_on)
            .field("idempotent", &self.idempotent)
            .field("on_retry", &self.on_retry.as_ref().map(|_| ".."))
            .field("savepoint", &self.savepoint)
            .field("savepoint_backoff", &self.savepoint_backoff)
            .field("priority_after", &self.priority_after())
            .finish()
    }
}

/// Builds a [`Policy`]; every setting is checked in [`build`](PolicyBuilder::build), which
/// returns an error instead of panicking.
///
/// ```
/// use std::time::Duration;
/// use sqlx_retry_core::{Backoff, IsolationLevel, Policy};
///
/// let policy = Policy::builder()
///     .max_attempts(8)
///     .isolation(IsolationLevel::RepeatableRead)
///     .backoff(Backoff::exponential(Duration::from_millis(2), Duration::from_millis(200)))
///     .budget(Duration::from_secs(2))
///     .retry_on(["55P03"])
///     .build()?;
/// assert_eq!(policy.max_attempts(), 8);
/// # Ok::<(), sqlx_retry_core::PolicyError>(())
/// ```
///
/// # Default
///
/// See [`Policy`].
#[derive(Debug, Clone)]
#[must_use]
pub struct PolicyBuilder {
    policy: Policy,
    retry_on: Vec<SqlState>,
    error: Option<PolicyError>,
}

impl PolicyBuilder {
    /// Total attempts including the first; must be at least 1.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.policy.max_attempts = n;
        self
    }

    /// The isolation level.
    pub fn isolation(mut self, level: IsolationLevel) -> Self {
        self.policy.options.isolation = level;
        self
    }

    /// Start the transaction `READ ONLY`.
    pub fn read_only(mut self, yes: bool) -> Self {
        self.policy.options.read_only = yes;
        self
    }

    /// Start the transaction `DEFERRABLE`; needs `read_only` and `Serializable`.
    pub fn deferrable(mut self, yes: bool) -> Self {
        self.policy.options.deferrable = yes;
        self
    }

    /// Let the transaction run on a hot standby when the source is a [`Cluster`](crate::Cluster)
    /// or one of its [`Session`](crate::cluster::Session)s; other sources ignore it. Needs
    /// `read_only` and an isolation level a standby accepts (`RepeatableRead` or
    /// `ReadCommitted`): standbys refuse writes (`25006`) and `SERIALIZABLE` (`0A000`).
    pub fn replica(mut self, yes: bool) -> Self {
        self.policy.options.replica = yes;
        self
    }

    /// The wait between attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.policy.backoff = backoff;
        self
    }

    /// The total time budget: no retry starts whose backoff would end past it, counting the
    /// up to 1 ms by which tokio's millisecond timer can lengthen a sleep. A running attempt is
    /// not interrupted (use `statement_timeout` for that), so a call ends at the latest one
    /// attempt's duration after the budget.
    pub fn budget(mut self, budget: Duration) -> Self {
        self.policy.budget = Some(budget);
        self
    }

    /// Also retry these SQLSTATEs (e.g. `23505` when the transaction generates a key that may
    /// collide, `55P03` for `lock_timeout`). Malformed codes make [`build`](Self::build) fail.
    pub fn retry_on<I, S>(mut self, codes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for code in codes {
            match SqlState::new(code.as_ref()) {
                Some(code) => self.retry_on.push(code),
                None => {
                    self.error
                        .get_or_insert(PolicyError::InvalidSqlState(InvalidSqlState::new(
                            code.as_ref(),
                        )));
                }
            }
        }
        self
    }

    /// Retry even when the COMMIT's outcome is unknown. Only for transactions that are safe to
    /// apply twice (e.g. guarded by an idempotency key).
    pub fn idempotent(mut self, yes: bool) -> Self {
        self.policy.idempotent = yes;
        self
    }

    /// Runs each transaction under the savepoint protocol of CockroachDB, with the savepoint
    /// `name` ([`Policy::DEFAULT_SAVEPOINT`], `cockroach_restart`, is the one CockroachDB knows):
    ///
    /// ```text
    /// BEGIN …; SAVEPOINT name; body; RELEASE SAVEPOINT name; COMMIT
    /// ```
    ///
    /// On a retryable error in the body (or at `RELEASE`, where CockroachDB commits) the loop
    /// sends `ROLLBACK TO SAVEPOINT name` and runs the body again **in the same transaction**,
    /// by default at once (see [`savepoint_backoff`](Self::savepoint_backoff)): CockroachDB keeps
    /// the transaction's place in line (its priority rises with each restart), and a backoff
    /// there would hold the transaction open while it waits. If that
    /// rerun fails with a retryable error again, or `ROLLBACK TO SAVEPOINT` itself fails, the
    /// loop falls back to a full restart: ROLLBACK, the backoff, BEGIN. So on PostgreSQL, where a
    /// transaction chosen as a serialization failure's victim stays doomed after `ROLLBACK TO
    /// SAVEPOINT`, the mode costs one quick rerun and never spins. Every run of the body counts
    /// towards [`max_attempts`](Self::max_attempts).
    ///
    /// `name` is spliced into SQL text, so it must be a plain SQL identifier:
    /// `[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes, not a reserved word; anything else makes
    /// [`build`](Self::build) fail with [`PolicyError::InvalidSavepoint`]. A joined call (see
    /// [`Joined`](crate::source::Joined)) runs no protocol of its own.
    ///
    /// ```
    /// use sqlx_retry_core::{Policy, PolicyError};
    ///
    /// let policy = Policy::builder().savepoint(Policy::DEFAULT_SAVEPOINT).build()?;
    /// assert_eq!(policy.savepoint(), Some("cockroach_restart"));
    /// assert!(matches!(
    ///     Policy::builder().savepoint("x; DROP TABLE users").build(),
    ///     Err(PolicyError::InvalidSavepoint(_))
    /// ));
    /// # Ok::<(), PolicyError>(())
    /// ```
    pub fn savepoint(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        let name = name.into();
        match check_savepoint_name(&name) {
            Ok(()) => self.policy.savepoint = Some(name),
            Err(()) => {
                self.error
                    .get_or_insert(PolicyError::InvalidSavepoint(name.into_owned()));
            }
        }
        self
    }

    /// The wait before a rerun inside the savepoint (see [`savepoint`](Self::savepoint)); the
    /// wait before a full restart stays [`backoff`](Self::backoff). Default:
    /// [`Policy::DEFAULT_SAVEPOINT_BACKOFF`], no wait, as cockroach-go does.
    ///
    /// The loop sleeps after `ROLLBACK TO SAVEPOINT` and before the rerun, so **the transaction
    /// stays open while it sleeps**, on its connection. On PostgreSQL the rollback to the
    /// savepoint has released the row and table locks the body took, but the transaction keeps
    /// its snapshot and its predicate locks; on CockroachDB it keeps its intents and the priority
    /// its restart earned. A transaction queued behind it may wait as long as it sleeps.
    ///
    /// The delays count as any other: retry *n* inside the savepoint gets the *n*-th delay of
    /// this backoff (one sequence per call, apart from the main backoff's), the time
    /// [`budget`](Self::budget) includes them, and [`RetryInfo::delay`], the retry event and
    /// the metrics report them. When a custom sequence ([`Backoff::from_fn`]) ends, a retryable
    /// error restarts the transaction instead of rerunning inside the savepoint. Without the
    /// savepoint protocol this setting does nothing.
    ///
    /// ```
    /// use std::time::Duration;
    /// use sqlx_retry_core::{Backoff, Policy};
    ///
    /// let policy = Policy::builder()
    ///     .savepoint(Policy::DEFAULT_SAVEPOINT)
    ///     .savepoint_backoff(Backoff::exponential(Duration::from_millis(1), Duration::from_millis(20)))
    ///     .build()?;
    /// assert_eq!(policy.savepoint_backoff().max_delay(), Some(Duration::from_millis(20)));
    /// assert_eq!(Policy::default().savepoint_backoff().max_delay(), Some(Duration::ZERO));
    /// # Ok::<(), sqlx_retry_core::PolicyError>(())
    /// ```
    pub fn savepoint_backoff(mut self, backoff: Backoff) -> Self {
        self.policy.savepoint_backoff = backoff;
        self
    }

    /// Priority turns against starvation: a call whose first `after` attempts failed runs its
    /// next attempt with no other attempt of this policy beside it. On by default, after
    /// [`Policy::DEFAULT_PRIORITY_AFTER`] (2) failed attempts; `None` turns them off (the
    /// attribute: `priority_after = none`).
    ///
    /// Every attempt of the policy (and of its clones, which share the state, like the adaptive
    /// backoff's) takes a shared turn before BEGIN and gives it back when its transaction ends.
    /// A call that has failed `after` times asks for a turn alone instead: starving calls line
    /// up in the order they asked, without holding anyone back; at the head of the line a call
    /// stops the policy's new attempts until it is done, and the ones already running finish
    /// first. So a call that keeps losing meets, in its priority attempt, only transactions
    /// from other code or other processes, and its own policy's attempts that outlasted a drain
    /// (below) or ran without a turn after waiting their longest. With no call starving, a
    /// shared turn costs an uncontended lock and never a round trip.
    ///
    /// A call waits only between attempts, when it holds no transaction, and never while it is
    /// nested in another attempt's body or joins an open transaction; and at most one second, or
    /// what is left of its [`budget`](Self::budget): after that it runs its attempt without a
    /// turn. A dropped call gives its turn back. `after` must be at least 1; an `after` of
    /// [`max_attempts`](Self::max_attempts) or more never grants priority.
    ///
    /// An attempt that waits on a lock, including one held outside the policy (another process,
    /// a session idle in its transaction, a deadlock until PostgreSQL's `deadlock_timeout` ends
    /// it), holds a priority call back only for a short drain: a few times the measured length
    /// of an attempt. After that the priority attempt runs beside it, and later ones no longer
    /// wait for it.
    ///
    /// Why it is on by default: backoff spreads retries out but does not know who has waited
    /// longest, so under contention a call can lose attempt after attempt while newer calls
    /// commit, and at a small `max_attempts` run out of them. BENCHMARKS.md §5 measures both
    /// at the default of 5 attempts; turn them off only where your own figures say so.
    ///
    /// ```
    /// use sqlx_retry_core::Policy;
    ///
    /// assert_eq!(Policy::default().priority_after(), Some(Policy::DEFAULT_PRIORITY_AFTER));
    /// let policy = Policy::builder().max_attempts(10).priority_after(3).build()?;
    /// assert_eq!(policy.priority_after(), Some(3));
    /// let off = Policy::builder().priority_after(None).build()?;
    /// assert_eq!(off.priority_after(), None);
    /// # Ok::<(), sqlx_retry_core::PolicyError>(())
    /// ```
    pub fn priority_after(mut self, after: impl Into<Option<u32>>) -> Self {
        match after.into() {
            Some(0) => {
                self.error.get_or_insert(PolicyError::ZeroPriorityAfter);
            }
            Some(after) => self.policy.priority = Some(Priority::new(after)),
            None => self.policy.priority = None,
        }
        self
    }

    /// Call `hook` before each retry (after the rollback, before the sleep).
    pub fn on_retry(mut self, hook: impl Fn(&RetryInfo) + Send + Sync + 'static) -> Self {
        self.policy.on_retry = Some(Arc::new(hook));
        self
    }

    /// Checks the settings and returns the policy.
    pub fn build(self) -> Result<Policy, PolicyError> {
        if let Some(err) = self.error {
            return Err(err);
        }
        let mut policy = self.policy;
        if policy.max_attempts == 0 {
            return Err(PolicyError::ZeroAttempts);
        }
        let o = policy.options;
        if o.deferrable && !(o.read_only && o.isolation == IsolationLevel::Serializable) {
            return Err(PolicyError::Deferrable);
        }
        if o.replica && !o.read_only {
            return Err(PolicyError::ReplicaNeedsReadOnly);
        }
        if o.replica && o.isolation == IsolationLevel::Serializable {
            return Err(PolicyError::ReplicaSerializable);
        }
        if policy.budget == Some(Duration::ZERO) {
            return Err(PolicyError::ZeroBudget);
        }
        policy.backoff.validate()?;
        policy.savepoint_backoff.validate()?;
        if !self.retry_on.is_empty() {
            policy.retry_on = Cow::Owned(self.retry_on);
        }
        Ok(policy)
    }
}

/// A [`Policy`] setting that cannot work: what [`PolicyBuilder::build`] returns instead of
/// panicking.
///
/// ```
/// use sqlx_retry_core::{Policy, PolicyError};
///
/// assert_eq!(Policy::builder().max_attempts(0).build().unwrap_err(), PolicyError::ZeroAttempts);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// `max_attempts` was 0; at least one attempt is needed.
    ZeroAttempts,
    /// A `retry_on` code is not a SQLSTATE.
    InvalidSqlState(InvalidSqlState),
    /// `deferrable` without `read_only` at `Serializable`.
    Deferrable,
    /// A backoff base or cap of zero.
    ZeroBackoff,
    /// A backoff base larger than its cap.
    InvertedBackoff {
        /// The base delay.
        base: Duration,
        /// The cap.
        cap: Duration,
    },
    /// A time budget of zero would allow no attempt.
    ZeroBudget,
    /// A savepoint name that is not a plain SQL identifier (see [`PolicyBuilder::savepoint`]).
    InvalidSavepoint(String),
    /// `replica` without `read_only`: a standby refuses writes (SQLSTATE `25006`).
    ReplicaNeedsReadOnly,
    /// `priority_after(0)`: every attempt would run alone (see [`PolicyBuilder::priority_after`]).
    ZeroPriorityAfter,
    /// `replica` at `Serializable`: a standby refuses `SERIALIZABLE` transactions (SQLSTATE
    /// `0A000`); use `RepeatableRead` (`isolation = "repeatable_read"`).
    ReplicaSerializable,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::ZeroAttempts => f.write_str("max_attempts must be at least 1"),
            PolicyError::InvalidSqlState(err) => err.fmt(f),
            PolicyError::Deferrable => {
                f.write_str("deferrable needs read_only and the serializable isolation level")
            }
            PolicyError::ZeroBackoff => {
                f.write_str("backoff base and cap must be greater than zero")
            }
            PolicyError::InvertedBackoff { base, cap } => {
                write!(f, "backoff base {base:?} is larger than its cap {cap:?}")
            }
            PolicyError::ZeroBudget => f.write_str("the time budget must be greater than zero"),
            PolicyError::InvalidSavepoint(name) => write!(
                f,
                "savepoint name {name:?} is not a plain SQL identifier: expected \
                 [A-Za-z_][A-Za-z0-9_]*, at most 63 bytes, not a reserved word"
            ),
            PolicyError::ZeroPriorityAfter => f.write_str(
                "priority_after must be at least 1: priority goes to calls whose attempts failed",
            ),
            PolicyError::ReplicaNeedsReadOnly => {
                f.write_str("replica needs read_only: a standby refuses writes (SQLSTATE 25006)")
            }
            PolicyError::ReplicaSerializable => f.write_str(
                "replica cannot be serializable: standbys refuse SERIALIZABLE (SQLSTATE 0A000); \
                 use isolation = \"repeatable_read\" (IsolationLevel::RepeatableRead)",
            ),
        }
    }
}

impl std::error::Error for PolicyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PolicyError::InvalidSqlState(err) => Some(err),
            _ => None,
        }
    }
}

/// PostgreSQL's keywords that cannot name a savepoint (its "reserved" and "reserved (can be
/// function or type)" keywords): `SAVEPOINT select` is a syntax error. The attribute keeps the
/// same list for its compile-time check (`tests/mock/savepoint.rs` fails when the two differ).
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// Whether `name` may be spliced into `SAVEPOINT name` as is: `[A-Za-z_][A-Za-z0-9_]*`, at most
/// 63 bytes (PostgreSQL's identifier limit, beyond which it truncates), not a reserved word.
pub(crate) fn check_savepoint_name(name: &str) -> Result<(), ()> {
    let bytes = name.as_bytes();
    let plain = matches!(bytes.first(), Some(b'A'..=b'Z' | b'a'..=b'z' | b'_'))
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    if plain && !RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
        Ok(())
    } else {
        Err(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn savepoint_names_are_plain_identifiers() {
        for ok in ["cockroach_restart", "_x", "A1", &"a".repeat(63)] {
            assert_eq!(check_savepoint_name(ok), Ok(()), "{ok}");
            let policy = Policy::builder().savepoint(ok.to_owned()).build().unwrap();
            assert_eq!(policy.savepoint(), Some(ok));
        }
        for bad in [
            "",
            "1a",
            "a-b",
            "a b",
            "a;b",
            "x; DROP TABLE users",
            "\"q\"",
            "é",
            "a\0",
            &"a".repeat(64),
            "select",
            "SELECT",
            "user",
            "to",
        ] {
            assert_eq!(check_savepoint_name(bad), Err(()), "{bad}");
            let err = Policy::builder()
                .savepoint(bad.to_owned())
                .build()
                .unwrap_err();
            assert_eq!(err, PolicyError::InvalidSavepoint(bad.to_owned()));
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn builder_rejects_bad_input_without_panicking() {
        let ms = Duration::from_millis;
        let cases: Vec<(PolicyBuilder, PolicyError)> = vec![
            (Policy::builder().max_attempts(0), PolicyError::ZeroAttempts),
            (
                Policy::builder().retry_on(["40001", "4000X1"]),
                PolicyError::InvalidSqlState(InvalidSqlState::new("4000X1")),
            ),
            (Policy::builder().deferrable(true), PolicyError::Deferrable),
            (
                Policy::builder()
                    .read_only(true)
                    .deferrable(true)
                    .isolation(IsolationLevel::RepeatableRead),
                PolicyError::Deferrable,
            ),
            (
                Policy::builder().backoff(Backoff::exponential(ms(0), ms(10))),
                PolicyError::ZeroBackoff,
            ),
            (
                Policy::builder().backoff(Backoff::exponential(ms(20), ms(10))),
                PolicyError::InvertedBackoff {
                    base: ms(20),
                    cap: ms(10),
                },
            ),
            (
                Policy::builder().savepoint_backoff(Backoff::exponential(ms(20), ms(10))),
                PolicyError::InvertedBackoff {
                    base: ms(20),
                    cap: ms(10),
                },
            ),
            (
                Policy::builder().budget(Duration::ZERO),
                PolicyError::ZeroBudget,
            ),
            (
                Policy::builder()
                    .replica(true)
                    .isolation(IsolationLevel::RepeatableRead),
                PolicyError::ReplicaNeedsReadOnly,
            ),
            (
                Policy::builder().replica(true).read_only(true),
                PolicyError::ReplicaSerializable,
            ),
        ];
        for (builder, want) in cases {
            let got = builder.build().unwrap_err();
            assert_eq!(got, want);
            assert!(!got.to_string().is_empty());
        }
        let ok = Policy::builder()
            .read_only(true)
            .deferrable(true)
            .retry_on(["23505"])
            .build()
            .unwrap();
        assert_eq!(ok.retry_on(), &[SqlState::UNIQUE_VIOLATION]);
        for isolation in [
            IsolationLevel::RepeatableRead,
            IsolationLevel::ReadCommitted,
        ] {
            let replica = Policy::builder()
                .read_only(true)
                .isolation(isolation)
                .replica(true)
                .build()
                .unwrap();
            assert!(replica.options().replica);
        }
        assert!(
            PolicyError::ReplicaSerializable
                .to_string()
                .contains("isolation = \"repeatable_read\"")
        );
    }
}
