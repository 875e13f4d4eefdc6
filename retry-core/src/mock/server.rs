//! A scripted PostgreSQL server, in process, for unit tests of unchanged sqlx code.
//!
//! [`MockServer::start`] listens on a random loopback port and speaks PostgreSQL's wire protocol,
//! so the function under test runs its real `sqlx::query(…)` calls on a real `PgPool` /
//! `&mut PgConnection`: only the server is scripted. The test says which statements to expect,
//! with which parameters, and what each returns (rows with their column types, a row count, or
//! an error with any SQLSTATE and fields); it can make BEGIN, the n-th statement, COMMIT or
//! ROLLBACK of the k-th transaction fail or lose its connection. Afterwards it reads the
//! recorded script of what arrived and checks that every expectation was met and nothing
//! unexpected came.
//!
//! ```
//! use sqlx::PgConnection;
//! use sqlx_retry_core::mock::{Fault, Phase};
//! use sqlx_retry_core::mock::server::{Expectation, MockServer, PgType, Rows};
//! use sqlx_retry_core::{transaction, Policy};
//!
//! // The function under test, as it ships: a plain `&mut PgConnection` and sqlx queries.
//! async fn credit(tx: &mut PgConnection, id: i64, amount: i64) -> Result<i64, sqlx::Error> {
//!     sqlx::query_scalar("UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance")
//!         .bind(amount)
//!         .bind(id)
//!         .fetch_one(&mut *tx)
//!         .await
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = MockServer::start().await?;
//! let sql = "UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance";
//! for _attempt in 0..2 {
//!     server.expect(
//!         Expectation::new(sql)
//!             .with_args((10_i64, 7_i64))
//!             .returns(Rows::new([("balance", PgType::Int8)]).row((110_i64,))),
//!     );
//! }
//! // The first COMMIT fails with a serialization failure.
//! server.fail(1, Phase::Commit, Fault::sqlstate("40001"));
//!
//! let pool = server.pool();
//! let balance = transaction(&pool, &Policy::default(), |tx| Box::pin(credit(tx, 7, 10))).await?;
//! assert_eq!(balance, 110);
//!
//! assert_eq!(
//!     server.script(),
//!     [
//!         "#1 BEGIN ISOLATION LEVEL SERIALIZABLE",
//!         "#1 UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance [10, 7]",
//!         "#1 COMMIT -> 40001",
//!         "#1 ROLLBACK (no transaction)",
//!         "#1 BEGIN ISOLATION LEVEL SERIALIZABLE",
//!         "#1 UPDATE accounts SET balance = balance + $1 WHERE id = $2 RETURNING balance [10, 7]",
//!         "#1 COMMIT",
//!     ]
//! );
//! server.expectations_were_met()?;
//! # Ok(()) }
//! ```
//!
//! # What arrives, and what the server answers
//!
//! - **Transaction control** (`BEGIN …`/`START TRANSACTION …`, `COMMIT`/`END`,
//!   `ROLLBACK`/`ABORT`, `SAVEPOINT`, `RELEASE`, `ROLLBACK TO`) needs no expectation: it is
//!   answered as PostgreSQL would and recorded, BEGIN with its isolation level and access mode.
//!   The k-th BEGIN the server receives starts **attempt k**, the number [`MockServer::fail`]
//!   refers to.
//! - **Every other statement** must match an expectation: the next one in order
//!   ([`expect`](MockServer::expect)), or a [`stub`](MockServer::stub) that matches any number
//!   of times. One that matches none is answered with an error (SQLSTATE `XX000`, the message
//!   says what was expected) and reported by
//!   [`expectations_were_met`](MockServer::expectations_were_met).
//! - Inside a transaction the server keeps PostgreSQL's states: after an error every statement
//!   fails with `25P02` until the transaction ends, and COMMIT of such a transaction answers
//!   `ROLLBACK`. A COMMIT or ROLLBACK outside a transaction gets PostgreSQL's warning.
//! - Connection setup, sqlx's pings and prepared-statement traffic (Parse, Describe, Close) are
//!   answered without expectations and not recorded. Statement descriptions give the parameter
//!   types sqlx sent and the column types of the expectation, so sqlx's type checks apply to
//!   the scripted rows exactly as to a real server's.
//!
//! # Tokio's paused clock
//!
//! The server works under `#[tokio::test(start_paused = true)]`: tokio polls for I/O before it
//! advances a paused clock, and a loopback write is readable at once, so the conversation never
//! waits on the clock while backoff sleeps cost no real time.
//!
//! # `query!` and `query_as!`
//!
//! At run time they are prepared statements like any other and work against the server. At
//! compile time they still need a real PostgreSQL's description of each statement (online
//! through `DATABASE_URL`, or the `.sqlx` cache `cargo sqlx prepare` writes): a server that the
//! test starts cannot answer the compiler.
//!
//! # What it cannot check
//!
//! A scripted server knows nothing of the SQL's meaning: whether the statement is valid, which
//! rows it would touch, what the constraints and the isolation level would do. It checks that
//! your code sends the statements and parameters you expect and handles the answers you script.
//! Test the SQL itself, and real conflicts, against a real PostgreSQL.

mod conn;
mod value;

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use tokio::task::AbortHandle;

use value::ValueList;
pub use value::{IntoValues, PgType, Value};

use crate::IsolationLevel;
use crate::mock::{Fault, Phase};

/// A scripted PostgreSQL server listening on a random loopback port. See the
/// [module documentation](self).
///
/// Dropping it stops the server; connections still open are closed.
pub struct MockServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    pool: PgPool,
}

impl MockServer {
    /// Starts a server on `127.0.0.1` at a port the system picks. Call it inside a tokio
    /// runtime: the server runs as tasks of that runtime (the current-thread runtime of
    /// `#[tokio::test]`, paused clock included, works).
    pub async fn start() -> std::io::Result<MockServer> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn(conn::accept(listener, Arc::clone(&shared)));
        lock(&shared.tasks).push(accept.abort_handle());
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(connect_options(addr));
        Ok(MockServer { shared, addr, pool })
    }

    /// A pool of at most **one** connection to this server, opened when first used; clones
    /// share it.
    ///
    /// One connection makes the recorded script deterministic: sqlx returns a connection to its
    /// pool in a background task, so with more connections the next attempt may or may not
    /// find the previous one back in time, and would run on a new connection at random. A
    /// lost connection is replaced by the next one (`#2`, …). For code that needs several
    /// connections at once, build a pool from [`connect_options`](Self::connect_options).
    pub fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// Options to connect to this server, for a pool or connection of your own.
    pub fn connect_options(&self) -> PgConnectOptions {
        connect_options(self.addr)
    }

    /// The server's URL: `postgres://mock@127.0.0.1:PORT/mock?sslmode=disable`.
    pub fn url(&self) -> String {
        format!(
            "postgres://mock@{}:{}/mock?sslmode=disable",
            self.addr.ip(),
            self.addr.port()
        )
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds `expectation` to the end of the ordered script: statements must arrive in the order
    /// of their `expect` calls (see [`in_any_order`](Self::in_any_order)).
    pub fn expect(&self, expectation: Expectation) -> &Self {
        self.state().ordered.push_back(expectation);
        self
    }

    /// Adds `expectation` as a stub: it answers every statement it matches, in any order and
    /// any number of times (exactly [`times`](Expectation::times) if set), after the ordered
    /// script was tried.
    pub fn stub(&self, expectation: Expectation) -> &Self {
        self.state().stubs.push(Stub {
            expectation,
            used: 0,
        });
        self
    }

    /// Lets the ordered expectations match in any order: each statement takes the first
    /// pending expectation it matches.
    pub fn in_any_order(&self) -> &Self {
        self.state().any_order = true;
        self
    }

    /// Scripts `fault` at `phase` of attempt `attempt` (the `attempt`-th BEGIN the server
    /// receives, from 1), as [`MockDb::fail`](crate::mock::MockDb::fail) does:
    ///
    /// - [`Fault::Sqlstate`]: the step fails with that SQLSTATE and PostgreSQL's message for it.
    ///   A `40001` at a statement reads as a row-write conflict (`file` = `nodeModifyTable.c`),
    ///   at COMMIT as a dependency cycle (`predicate.c`); use [`fail_with`](Self::fail_with) for
    ///   other fields.
    /// - [`Fault::ConnectionLost`]: the server closes the connection when the step arrives,
    ///   without applying it.
    /// - [`Fault::CommitReplyLost`]: at COMMIT, the server commits, then closes the connection
    ///   before replying (elsewhere, as `ConnectionLost`).
    ///
    /// [`Phase::Body`] is the first statement; a statement that meets a fault still takes its
    /// expectation.
    pub fn fail(&self, attempt: u32, phase: Phase, fault: Fault) -> &Self {
        let fault = match fault {
            Fault::Sqlstate(code) => ServerFault::Error(PgError::for_phase(code.as_str(), phase)),
            Fault::ConnectionLost => ServerFault::ConnectionLost,
            Fault::CommitReplyLost => ServerFault::CommitReplyLost,
        };
        self.state().faults.push((attempt, phase, fault));
        self
    }

    /// Scripts `error` at `phase` of attempt `attempt` (see [`fail`](Self::fail)).
    pub fn fail_with(&self, attempt: u32, phase: Phase, error: PgError) -> &Self {
        self.state()
            .faults
            .push((attempt, phase, ServerFault::Error(error)));
        self
    }

    /// Everything that arrived, in order.
    pub fn events(&self) -> Vec<Event> {
        self.state().events.clone()
    }

    /// The recorded script, one line per [`Event`] (see its `Display`):
    /// `#1 BEGIN ISOLATION LEVEL SERIALIZABLE`, `#1 SELECT … WHERE id = $1 [7]`,
    /// `#1 COMMIT -> 40001`, … where `#1` is the connection that sent it.
    pub fn script(&self) -> Vec<String> {
        self.state()
            .events
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// How many transactions were started (BEGINs received, failed ones included).
    pub fn attempts(&self) -> u32 {
        self.state().attempts
    }

    /// How many connections were opened to the server.
    pub fn connections(&self) -> u32 {
        self.state().connections
    }

    /// `Ok` when every ordered expectation was met, every stub with a
    /// [`times`](Expectation::times) count matched that often, every scripted fault struck and
    /// no statement came that matched no expectation; otherwise an error listing each problem.
    pub fn expectations_were_met(&self) -> Result<(), Unmet> {
        let state = self.state();
        let mut problems: Vec<String> = state.unexpected.clone();
        problems.extend(
            state
                .ordered
                .iter()
                .map(|e| format!("expected statement never arrived: {e}")),
        );
        for stub in &state.stubs {
            if let Some(times) = stub.expectation.times
                && stub.used != times
            {
                problems.push(format!(
                    "stub matched {} times, expected {times}: {}",
                    stub.used, stub.expectation
                ));
            }
        }
        problems.extend(state.faults.iter().map(|(attempt, phase, fault)| {
            format!("fault never struck: {fault} at {phase:?} of attempt {attempt}")
        }));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Unmet { problems })
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        for task in lock(&self.shared.tasks).drain(..) {
            task.abort();
        }
    }
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("script", &self.script())
            .finish_non_exhaustive()
    }
}

fn connect_options(addr: SocketAddr) -> PgConnectOptions {
    PgConnectOptions::new()
        .host(&addr.ip().to_string())
        .port(addr.port())
        .username("mock")
        .database("mock")
        .ssl_mode(PgSslMode::Disable)
}

/// What [`MockServer::expectations_were_met`] found wrong.
#[derive(Clone, PartialEq, Eq)]
pub struct Unmet {
    problems: Vec<String>,
}

impl Unmet {
    /// One line per problem.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the script was not met:")?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Unmet {}

// ---- expectations -------------------------------------------------------------------------------

/// How an expectation recognises a statement.
#[derive(Clone)]
enum SqlMatch {
    /// Equal once runs of whitespace are collapsed and a trailing `;` dropped.
    Exact(String),
    Regex(regex_lite::Regex),
}

impl SqlMatch {
    fn matches(&self, sql: &str) -> bool {
        match self {
            SqlMatch::Exact(expected) => *expected == normalize_sql(sql),
            SqlMatch::Regex(re) => re.is_match(sql),
        }
    }
}

/// Collapses whitespace and drops a trailing `;`, so that indentation in raw strings does not
/// matter.
pub(crate) fn normalize_sql(sql: &str) -> String {
    let joined = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    joined.trim_end_matches(';').trim_end().to_owned()
}

/// One expected statement and its answer.
///
/// ```
/// use sqlx_retry_core::mock::server::{Expectation, PgError, PgType, Rows};
///
/// let read = Expectation::new("SELECT id, name FROM users WHERE id = $1")
///     .with_args((7_i64,))
///     .returns(Rows::new([("id", PgType::Int8), ("name", PgType::Text)]).row((7_i64, "ada")));
/// let write = Expectation::new("UPDATE users SET name = $1 WHERE id = $2").affects(1);
/// let fails = Expectation::matching("^INSERT INTO users")
///     .unwrap()
///     .fails(PgError::new("23505").constraint("users_name_key"));
/// ```
#[derive(Clone)]
pub struct Expectation {
    sql: SqlMatch,
    args: Option<Vec<Value>>,
    reply: Reply,
    times: Option<u32>,
}

#[derive(Clone)]
enum Reply {
    Rows(Rows),
    Affected(u64),
    Error(PgError),
}

impl Expectation {
    /// Expects the statement `sql`, compared after collapsing whitespace and dropping a
    /// trailing `;`. Answers "0 rows affected" until told otherwise.
    pub fn new(sql: impl AsRef<str>) -> Expectation {
        Expectation {
            sql: SqlMatch::Exact(normalize_sql(sql.as_ref())),
            args: None,
            reply: Reply::Affected(0),
            times: None,
        }
    }

    /// Expects a statement matching the regular expression `pattern` (the `regex` crate's
    /// syntax; unanchored: use `^…$` to match the whole statement).
    pub fn matching(pattern: &str) -> Result<Expectation, InvalidPattern> {
        let re = regex_lite::Regex::new(pattern).map_err(|e| InvalidPattern(e.to_string()))?;
        Ok(Expectation {
            sql: SqlMatch::Regex(re),
            ..Expectation::new("")
        })
    }

    /// Only matches when the bound parameters are `args`, in order. Integers of any width
    /// compare by value (`1_i64` matches an `int4` 1); use [`Value::Null`] or `None::<T>` for
    /// `NULL`. Without it, parameters are recorded but not checked.
    pub fn with_args(mut self, args: impl IntoValues) -> Expectation {
        self.args = Some(args.into_values());
        self
    }

    /// Answers with `rows` (command tag `SELECT n`, or `UPDATE n` etc. for a statement with
    /// `RETURNING`).
    pub fn returns(mut self, rows: Rows) -> Expectation {
        self.reply = Reply::Rows(rows);
        self
    }

    /// Answers that `rows` rows were affected (`UPDATE rows`, `INSERT 0 rows`, …).
    pub fn affects(mut self, rows: u64) -> Expectation {
        self.reply = Reply::Affected(rows);
        self
    }

    /// Answers with `error`. Inside a transaction, the transaction is then aborted.
    pub fn fails(mut self, error: PgError) -> Expectation {
        self.reply = Reply::Error(error);
        self
    }

    /// Matches exactly `n` statements: in the ordered script, `n` consecutive ones; as a stub,
    /// [`expectations_were_met`](MockServer::expectations_were_met) checks the count.
    pub fn times(mut self, n: u32) -> Expectation {
        self.times = Some(n);
        self
    }

    fn matches(&self, sql: &str, params: &[Value]) -> bool {
        self.sql.matches(sql) && self.args_match(params)
    }

    fn args_match(&self, params: &[Value]) -> bool {
        self.args.as_ref().is_none_or(|args| {
            args.len() == params.len() && args.iter().zip(params).all(|(a, p)| a.matches(p))
        })
    }

    fn columns(&self) -> Option<&[Column]> {
        match &self.reply {
            Reply::Rows(rows) => Some(&rows.columns),
            _ => None,
        }
    }
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sql {
            SqlMatch::Exact(sql) => f.write_str(sql)?,
            SqlMatch::Regex(re) => write!(f, "/{}/", re.as_str())?,
        }
        if let Some(args) = &self.args {
            write!(f, " {}", ValueList(args))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A regular expression given to [`Expectation::matching`] did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPattern(String);

impl fmt::Display for InvalidPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid statement pattern: {}", self.0)
    }
}

impl std::error::Error for InvalidPattern {}

/// A column of a result: its name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    pub(crate) name: String,
    pub(crate) ty: PgType,
}

/// The rows a statement returns: columns with their types, then the rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    columns: Vec<Column>,
    rows: Vec<Vec<Value>>,
}

impl Rows {
    /// No rows yet, with these columns (name, type), in order.
    pub fn new<S: Into<String>>(columns: impl IntoIterator<Item = (S, PgType)>) -> Rows {
        Rows {
            columns: columns
                .into_iter()
                .map(|(name, ty)| Column {
                    name: name.into(),
                    ty,
                })
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row: one value per column (a tuple such as `(7_i64, "ada", None::<bool>)`). A
    /// row whose length or values do not fit the columns is answered with an error naming the
    /// column, as a test-script error, when the statement runs.
    pub fn row(mut self, values: impl IntoValues) -> Rows {
        self.rows.push(values.into_values());
        self
    }
}

/// A database error to answer with: SQLSTATE, message and the optional fields of PostgreSQL's
/// ErrorResponse. sqlx reads them into `PgDatabaseError` (`code()`, `message()`, `detail()`,
/// `file()`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    code: String,
    fields: Vec<(u8, String)>,
}

impl PgError {
    /// An `ERROR` with SQLSTATE `code` and PostgreSQL's usual message for it (a generic one for
    /// codes it does not know). A `code` that is not five ASCII letters or digits is replaced
    /// by `XX000`.
    pub fn new(code: &str) -> PgError {
        let valid = code.len() == 5 && code.bytes().all(|b| b.is_ascii_alphanumeric());
        let code = if valid {
            code.to_ascii_uppercase()
        } else {
            "XX000".into()
        };
        let (message, file) = match code.as_str() {
            "40001" => (
                "could not serialize access due to concurrent update",
                Some("nodeModifyTable.c"),
            ),
            "40P01" => ("deadlock detected", Some("deadlock.c")),
            "23505" => (
                "duplicate key value violates unique constraint",
                Some("nbtinsert.c"),
            ),
            "23503" => (
                "insert or update on table violates foreign key constraint",
                Some("ri_triggers.c"),
            ),
            "23514" => ("new row violates check constraint", Some("execMain.c")),
            "25P02" => (
                "current transaction is aborted, commands ignored until end of transaction block",
                Some("postgres.c"),
            ),
            "57014" => (
                "canceling statement due to statement timeout",
                Some("postgres.c"),
            ),
            "55P03" => ("could not obtain lock on row", Some("heapam.c")),
            _ => ("mock server error", None),
        };
        let mut error = PgError {
            code,
            fields: vec![(b'M', message.to_owned())],
        };
        if let Some(file) = file {
            error = error.file(file);
        }
        error
    }

    /// `40001` as a row write conflict: another transaction updated or locked the row since
    /// this one's snapshot (`file` = `nodeModifyTable.c`).
    pub fn row_write_conflict() -> PgError {
        PgError::new("40001")
    }

    /// `40001` as serializable snapshot isolation reports a dependency cycle (`file` =
    /// `predicate.c`, with its `Reason code:` detail).
    pub fn dependency_conflict() -> PgError {
        PgError::new("40001")
            .message("could not serialize access due to read/write dependencies among transactions")
            .detail("Reason code: Canceled on identification as a pivot, during commit attempt.")
            .hint("The transaction might succeed if retried.")
            .file("predicate.c")
    }

    /// The default error a [`Fault::Sqlstate`] produces at `phase`.
    fn for_phase(code: &str, phase: Phase) -> PgError {
        match (code, phase) {
            ("40001", Phase::Commit) => PgError::dependency_conflict(),
            _ => PgError::new(code),
        }
    }

    /// The SQLSTATE.
    pub fn code(&self) -> &str {
        &self.code
    }

    fn set(mut self, tag: u8, value: impl Into<String>) -> PgError {
        self.fields.retain(|(t, _)| *t != tag);
        self.fields.push((tag, value.into()));
        self
    }

    /// The primary message.
    pub fn message(self, message: impl Into<String>) -> PgError {
        self.set(b'M', message)
    }

    /// The `DETAIL` line.
    pub fn detail(self, detail: impl Into<String>) -> PgError {
        self.set(b'D', detail)
    }

    /// The `HINT` line.
    pub fn hint(self, hint: impl Into<String>) -> PgError {
        self.set(b'H', hint)
    }

    /// The server source file that raised it (classification reads it to tell a row write
    /// conflict from a dependency cycle: see `conflict_kind`).
    pub fn file(self, file: impl Into<String>) -> PgError {
        self.set(b'F', file)
    }

    /// The source line.
    pub fn line(self, line: u32) -> PgError {
        self.set(b'L', line.to_string())
    }

    /// The server routine that raised it.
    pub fn routine(self, routine: impl Into<String>) -> PgError {
        self.set(b'R', routine)
    }

    /// The schema it concerns.
    pub fn schema(self, schema: impl Into<String>) -> PgError {
        self.set(b's', schema)
    }

    /// The table it concerns.
    pub fn table(self, table: impl Into<String>) -> PgError {
        self.set(b't', table)
    }

    /// The column it concerns.
    pub fn column(self, column: impl Into<String>) -> PgError {
        self.set(b'c', column)
    }

    /// The constraint it concerns.
    pub fn constraint(self, constraint: impl Into<String>) -> PgError {
        self.set(b'n', constraint)
    }

    /// The ErrorResponse fields, severity and code first.
    pub(crate) fn wire_fields(&self) -> Vec<(u8, String)> {
        let mut fields = vec![
            (b'S', "ERROR".to_owned()),
            (b'V', "ERROR".to_owned()),
            (b'C', self.code.clone()),
        ];
        fields.extend(self.fields.iter().cloned());
        fields
    }
}

/// A fault scripted with [`MockServer::fail`].
#[derive(Debug, Clone)]
pub(crate) enum ServerFault {
    Error(PgError),
    ConnectionLost,
    CommitReplyLost,
}

impl fmt::Display for ServerFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerFault::Error(e) => f.write_str(&e.code),
            ServerFault::ConnectionLost => f.write_str("connection lost"),
            ServerFault::CommitReplyLost => f.write_str("committed, reply lost"),
        }
    }
}

// ---- the recorded script ------------------------------------------------------------------------

/// One thing that arrived at the server, with how it was answered.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Event {
    /// The connection that sent it, numbered from 1 in the order they were opened.
    pub conn: u32,
    /// The attempt (the k-th BEGIN) of the transaction it belongs to; `None` outside one.
    pub attempt: Option<u32>,
    /// What arrived.
    pub kind: EventKind,
    /// How it was answered.
    pub outcome: Outcome,
}

/// What arrived.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// A transaction start.
    Begin {
        /// The statement as sent, whitespace collapsed.
        sql: String,
        /// The isolation level it names, if any (`None`: the server default).
        isolation: Option<IsolationLevel>,
        /// `READ ONLY`.
        read_only: bool,
        /// `DEFERRABLE`.
        deferrable: bool,
    },
    /// A statement with its bound parameters (empty for the simple protocol).
    Statement {
        /// The statement as sent, whitespace collapsed.
        sql: String,
        /// The parameters, decoded by their type OIDs.
        params: Vec<Value>,
    },
    /// `COMMIT` (or `END`).
    Commit,
    /// `ROLLBACK` (or `ABORT`).
    Rollback,
    /// `SAVEPOINT`, `RELEASE` or `ROLLBACK TO`, as sent.
    Savepoint(String),
}

/// How the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Success.
    Ok,
    /// An error with this SQLSTATE.
    Error(String),
    /// The server closed the connection without applying it.
    ConnectionLost,
    /// COMMIT was applied, then the connection closed before the reply.
    CommitReplyLost,
    /// COMMIT or ROLLBACK outside a transaction: PostgreSQL's warning, nothing done.
    NoTransaction,
    /// COMMIT of a transaction aborted by an earlier error: rolled back instead, as
    /// PostgreSQL does (the reply's tag is `ROLLBACK`).
    RolledBack,
    /// It matched no expectation (answered with `XX000`).
    Unexpected,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} ", self.conn)?;
        match &self.kind {
            EventKind::Begin { sql, .. } => f.write_str(sql)?,
            EventKind::Statement { sql, params } => {
                f.write_str(sql)?;
                if !params.is_empty() {
                    write!(f, " {}", ValueList(params))?;
                }
            }
            EventKind::Commit => f.write_str("COMMIT")?,
            EventKind::Rollback => f.write_str("ROLLBACK")?,
            EventKind::Savepoint(sql) => f.write_str(sql)?,
        }
        match &self.outcome {
            Outcome::Ok => Ok(()),
            Outcome::Error(code) => write!(f, " -> {code}"),
            Outcome::ConnectionLost => f.write_str(" -> connection lost"),
            Outcome::CommitReplyLost => f.write_str(" -> committed, reply lost"),
            Outcome::NoTransaction => f.write_str(" (no transaction)"),
            Outcome::RolledBack => f.write_str(" -> ROLLBACK (transaction was aborted)"),
            Outcome::Unexpected => f.write_str(" -> unexpected"),
        }
    }
}

// ---- shared state -------------------------------------------------------------------------------

#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) tasks: Mutex<Vec<AbortHandle>>,
}

struct Stub {
    expectation: Expectation,
    used: u32,
}

#[derive(Default)]
pub(crate) struct State {
    ordered: VecDeque<Expectation>,
    stubs: Vec<Stub>,
    any_order: bool,
    faults: Vec<(u32, Phase, ServerFault)>,
    events: Vec<Event>,
    unexpected: Vec<String>,
    pub(crate) attempts: u32,
    pub(crate) connections: u32,
}

/// The answer chosen for a statement.
pub(crate) enum Answer {
    Rows(Rows),
    Affected(u64),
    Error(PgError),
    /// No expectation matched: the message for the client.
    Unexpected(String),
}

impl State {
    pub(crate) fn record(&mut self, event: Event) {
        self.events.push(event);
    }

    /// Takes the fault scripted for `phase` of `attempt`, if any.
    pub(crate) fn take_fault(&mut self, attempt: u32, phase: Phase) -> Option<ServerFault> {
        let i = self
            .faults
            .iter()
            .position(|(a, p, _)| *a == attempt && *p == phase)?;
        Some(self.faults.remove(i).2)
    }

    /// The columns a statement `sql` is described with: those of an expectation for the same
    /// text, preferring one that returns rows. `None` when no expectation has that text.
    pub(crate) fn describe(&self, sql: &str) -> Option<Option<Vec<Column>>> {
        let candidates = self
            .ordered
            .iter()
            .chain(self.stubs.iter().map(|s| &s.expectation))
            .filter(|e| e.sql.matches(sql));
        let mut found = None;
        for e in candidates {
            if let Some(columns) = e.columns() {
                return Some(Some(columns.to_vec()));
            }
            found = Some(None);
        }
        found
    }

    /// Finds and takes the expectation `sql` with `params` meets.
    pub(crate) fn answer(&mut self, sql: &str, params: &[Value]) -> Answer {
        let position = if self.any_order {
            self.ordered.iter().position(|e| e.matches(sql, params))
        } else {
            self.ordered
                .front()
                .filter(|e| e.matches(sql, params))
                .map(|_| 0)
        };
        if let Some(i) = position {
            let e = &mut self.ordered[i];
            let reply = e.reply.clone();
            match &mut e.times {
                Some(n) if *n > 1 => *n -= 1,
                _ => {
                    self.ordered.remove(i);
                }
            }
            return reply.into();
        }
        if let Some(stub) = self
            .stubs
            .iter_mut()
            .find(|s| s.expectation.matches(sql, params))
        {
            stub.used += 1;
            return stub.expectation.reply.clone().into();
        }
        let got = if params.is_empty() {
            normalize_sql(sql)
        } else {
            format!("{} {}", normalize_sql(sql), ValueList(params))
        };
        let wanted = match self.ordered.front() {
            Some(next) if !self.any_order => format!("the next expected statement is: {next}"),
            Some(_) => format!("{} expected statements are pending", self.ordered.len()),
            None => "no expected statement is pending".to_owned(),
        };
        let message = format!("unexpected statement: {got}; {wanted}");
        self.unexpected.push(message.clone());
        Answer::Unexpected(format!("sqlx-retry mock server: {message}"))
    }

    /// Notes a statement that could not even be prepared because no expectation has its text.
    pub(crate) fn unexpected_prepare(&mut self, sql: &str) -> String {
        let message = format!("unexpected statement: {}", normalize_sql(sql));
        self.unexpected.push(message.clone());
        format!("sqlx-retry mock server: {message}")
    }

    /// Notes a scripted answer that does not fit how the statement was described or typed.
    pub(crate) fn script_error(&mut self, message: String) -> String {
        self.unexpected.push(message.clone());
        format!("sqlx-retry mock server: {message}")
    }
}

impl From<Reply> for Answer {
    fn from(reply: Reply) -> Answer {
        match reply {
            Reply::Rows(rows) => Answer::Rows(rows),
            Reply::Affected(n) => Answer::Affected(n),
            Reply::Error(e) => Answer::Error(e),
        }
    }
}

impl Rows {
    pub(crate) fn columns(&self) -> &[Column] {
        &self.columns
    }

    pub(crate) fn rows(&self) -> &[Vec<Value>] {
        &self.rows
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock must not turn later reads into panics.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
