//! A transaction source without a database, for unit tests of annotated functions.
//!
//! [`MockDb`] holds in-memory state of your choosing. Each attempt's [`MockTx`] works on a copy
//! that COMMIT writes back and ROLLBACK discards, so the state behaves like a table under a
//! transaction. Failures are scripted per attempt and phase, and everything that happens is
//! recorded as a script you can compare exactly. Sleeps go through `tokio::time::sleep`, so on a
//! paused clock (`#[tokio::test(start_paused = true)]`) backoff costs no real time.
//!
//! ```
//! use sqlx_retry_core::mock::{Fault, MockDb, Phase};
//! use sqlx_retry_core::{transaction, Backoff, Policy};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
//! let policy = Policy::builder()
//!     .backoff(Backoff::fixed(Duration::from_millis(5)))
//!     .build()
//!     .unwrap();
//! let n = transaction(&db, &policy, |tx| {
//!     Box::pin(async move {
//!         tx.execute("increment")?;
//!         *tx.state_mut() += 1;
//!         Ok::<_, sqlx::Error>(*tx.state())
//!     })
//! })
//! .await
//! .unwrap();
//! assert_eq!(n, 1);
//! assert_eq!(db.state(), 1); // applied once, not twice
//! assert_eq!(
//!     db.script(),
//!     [
//!         "BEGIN ISOLATION LEVEL SERIALIZABLE",
//!         "increment",
//!         "COMMIT -> 40001",
//!         "sleep 5ms",
//!         "BEGIN ISOLATION LEVEL SERIALIZABLE",
//!         "increment",
//!         "COMMIT",
//!     ]
//! );
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::SqlState;
use crate::source::{BeginTransaction, Joined, OpenTransaction, Savepoint, TxOptions};

pub use crate::simulated::SimulatedDbError;

#[cfg(feature = "mock-server")]
pub mod server;

/// When a scripted [`Fault`] strikes within an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// The BEGIN statement fails.
    Begin,
    /// The body's first statement ([`MockTx::execute`]) fails.
    Body,
    /// The body's n-th statement fails (1-based).
    Statement(u32),
    /// COMMIT fails.
    Commit,
    /// `RELEASE SAVEPOINT` fails (with a policy's savepoint protocol; CockroachDB commits
    /// there). A [`Fault::CommitReplyLost`] here applies the transaction, as CockroachDB's
    /// RELEASE would.
    Release,
    /// ROLLBACK fails (the error that caused the rollback must survive it).
    Rollback,
}

/// A scripted failure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The database reports this SQLSTATE; the transaction is rolled back by the server.
    Sqlstate(SqlState),
    /// The connection breaks before the statement reaches the server: nothing is applied.
    ConnectionLost,
    /// At COMMIT: the server commits, then the connection breaks before the reply arrives. The
    /// state *is* applied and the client sees an I/O error: the outcome-unknown case.
    CommitReplyLost,
}

impl Fault {
    /// A database error with `code`; an invalid code is reported as `XX000` (internal error).
    pub fn sqlstate(code: &str) -> Fault {
        Fault::Sqlstate(SqlState::new(code).unwrap_or(SqlState::INTERNAL_ERROR))
    }

    fn error(&self) -> sqlx::Error {
        match self {
            Fault::Sqlstate(code) => SimulatedDbError::sqlx(*code, "simulated failure"),
            Fault::ConnectionLost | Fault::CommitReplyLost => sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "simulated connection loss",
            )),
        }
    }

    fn label(&self) -> String {
        match self {
            Fault::Sqlstate(code) => code.to_string(),
            Fault::ConnectionLost => "connection lost".into(),
            Fault::CommitReplyLost => "committed, reply lost".into(),
        }
    }
}

/// One line of the recorded script.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MockEvent {
    /// A transaction started with this statement.
    Begin(&'static str),
    /// A statement ran in the body.
    Statement(String),
    /// COMMIT succeeded.
    Commit,
    /// ROLLBACK succeeded.
    Rollback,
    /// The loop slept between attempts.
    Sleep(Duration),
    /// A step failed: what was attempted and the fault.
    Failed {
        /// `BEGIN …`, the statement label, `COMMIT` or `ROLLBACK`.
        step: String,
        /// The fault's SQLSTATE or description.
        fault: String,
    },
}

impl fmt::Display for MockEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MockEvent::Begin(stmt) => f.write_str(stmt),
            MockEvent::Statement(label) => f.write_str(label),
            MockEvent::Commit => f.write_str("COMMIT"),
            MockEvent::Rollback => f.write_str("ROLLBACK"),
            MockEvent::Sleep(d) => write!(f, "sleep {d:?}"),
            MockEvent::Failed { step, fault } => write!(f, "{step} -> {fault}"),
        }
    }
}

struct Inner<S> {
    state: S,
    events: Vec<MockEvent>,
    faults: Vec<(u32, Phase, Fault)>,
    attempt: u32,
    reconnects: bool,
    /// Bumped by every COMMIT that wrote: a transaction that wrote commits only if no other one
    /// committed a write since its BEGIN (first committer wins, as at SERIALIZABLE).
    version: u64,
}

/// An in-memory transaction source. Pass `&MockDb<S>` where the annotated function expects its
/// transaction source. Cloning shares the same state and script.
pub struct MockDb<S = ()> {
    inner: Arc<Mutex<Inner<S>>>,
}

impl<S> Clone for MockDb<S> {
    fn clone(&self) -> Self {
        MockDb {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S> MockDb<S> {
    /// A mock database holding `state`.
    pub fn new(state: S) -> Self {
        MockDb {
            inner: Arc::new(Mutex::new(Inner {
                state,
                events: Vec::new(),
                faults: Vec::new(),
                attempt: 0,
                reconnects: true,
                version: 0,
            })),
        }
    }

    /// Scripts `fault` at `phase` of attempt `attempt` (1-based).
    #[must_use]
    pub fn fail(self, attempt: u32, phase: Phase, fault: Fault) -> Self {
        lock(&self.inner).faults.push((attempt, phase, fault));
        self
    }

    /// Behave like a single connection rather than a pool: after a lost connection no attempt can
    /// follow.
    #[must_use]
    pub fn single_connection(self) -> Self {
        lock(&self.inner).reconnects = false;
        self
    }

    /// The recorded script, one string per event (see [`MockEvent`]'s `Display`).
    pub fn script(&self) -> Vec<String> {
        lock(&self.inner)
            .events
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The recorded events.
    pub fn events(&self) -> Vec<MockEvent> {
        lock(&self.inner).events.clone()
    }

    /// How many transactions were started.
    pub fn attempts(&self) -> u32 {
        lock(&self.inner).attempt
    }

    /// Runs `f` on the committed state.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut lock(&self.inner).state)
    }

    /// A copy of the committed state.
    pub fn state(&self) -> S
    where
        S: Clone,
    {
        lock(&self.inner).state.clone()
    }
}

impl<S> fmt::Debug for MockDb<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockDb")
            .field("script", &self.script())
            .finish_non_exhaustive()
    }
}

fn lock<S>(inner: &Mutex<Inner<S>>) -> MutexGuard<'_, Inner<S>> {
    // A test that panicked while holding the lock must not turn later reads into panics.
    inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<S> Inner<S> {
    fn take_fault(&mut self, attempt: u32, phase: Phase) -> Option<Fault> {
        let i = self
            .faults
            .iter()
            .position(|(a, p, _)| *a == attempt && *p == phase)?;
        Some(self.faults.remove(i).2)
    }
}

/// One attempt's transaction on a [`MockDb`]: a working copy of the state plus a recorder.
/// Implement your repository trait for `MockTx<YourState>` to unit-test annotated functions.
///
/// It behaves like a PostgreSQL transaction under the retry loop: after a failed statement
/// every further statement fails with `25P02`, and a body that swallows the error and returns
/// `Ok` gets [`TransactionAborted`](crate::error::TransactionAborted) from COMMIT (script line
/// `COMMIT -> 25P02`), with nothing applied, as the loop reports it on PostgreSQL. It is retried
/// only when a joined call returned a conflict during the attempt, as on PostgreSQL. After a lost
/// connection everything fails with the I/O error. Two interleaved transactions that both write
/// conflict: the second COMMIT fails with `40001`.
pub struct MockTx<S> {
    db: Arc<Mutex<Inner<S>>>,
    state: S,
    attempt: u32,
    statements: u32,
    broken: bool,
    aborted: bool,
    wrote: bool,
    begin_version: u64,
    /// The state at the savepoint protocol's `SAVEPOINT`, while it is set.
    savepoint: Option<S>,
}

impl<S> MockTx<S> {
    /// Records a statement named `label`; fails if a fault is scripted for it.
    pub fn execute(&mut self, label: &str) -> Result<(), sqlx::Error> {
        self.statements += 1;
        let mut db = lock(&self.db);
        if self.broken {
            db.events.push(MockEvent::Failed {
                step: label.to_owned(),
                fault: Fault::ConnectionLost.label(),
            });
            return Err(Fault::ConnectionLost.error());
        }
        if self.aborted {
            db.events.push(MockEvent::Failed {
                step: label.to_owned(),
                fault: "25P02".into(),
            });
            return Err(SimulatedDbError::sqlx(
                SqlState::new("25P02").unwrap_or(SqlState::INTERNAL_ERROR),
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        let fault = db
            .take_fault(self.attempt, Phase::Statement(self.statements))
            .or_else(|| {
                (self.statements == 1)
                    .then(|| db.take_fault(self.attempt, Phase::Body))
                    .flatten()
            });
        match fault {
            Some(fault) => {
                db.events.push(MockEvent::Failed {
                    step: label.to_owned(),
                    fault: fault.label(),
                });
                match &fault {
                    Fault::Sqlstate(code)
                        if code.class() == "08" || code.as_str().starts_with("57P") =>
                    {
                        self.broken = true
                    }
                    Fault::Sqlstate(_) => self.aborted = true,
                    Fault::ConnectionLost | Fault::CommitReplyLost => self.broken = true,
                }
                Err(fault.error())
            }
            None => {
                db.events.push(MockEvent::Statement(label.to_owned()));
                Ok(())
            }
        }
    }

    /// This transaction's view of the state.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// This transaction's working copy: COMMIT keeps changes, ROLLBACK discards them.
    pub fn state_mut(&mut self) -> &mut S {
        self.wrote = true;
        &mut self.state
    }

    /// The attempt this transaction belongs to, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

impl<S: Clone> MockTx<S> {
    /// A statement of the savepoint protocol: `SAVEPOINT` keeps a copy of the working state,
    /// `ROLLBACK TO SAVEPOINT` restores it (and clears an abort, as on PostgreSQL), `RELEASE`
    /// fails like the server would: `25P02` in an aborted transaction, or a scripted
    /// [`Phase::Release`] fault.
    fn savepoint_step(&mut self, statement: Savepoint<'_>) -> Result<(), sqlx::Error> {
        let label = statement.to_string();
        let mut db = lock(&self.db);
        let fail = |db: &mut Inner<S>, fault: &str, err: sqlx::Error| {
            db.events.push(MockEvent::Failed {
                step: label.clone(),
                fault: fault.to_owned(),
            });
            Err(err)
        };
        if self.broken {
            let fault = Fault::ConnectionLost;
            return fail(&mut db, &fault.label(), fault.error());
        }
        match statement {
            Savepoint::Create(_) | Savepoint::Release(_) if self.aborted => {
                let err = SimulatedDbError::sqlx(
                    SqlState::new("25P02").unwrap_or(SqlState::INTERNAL_ERROR),
                    "current transaction is aborted, commands ignored until end of transaction block",
                );
                return fail(&mut db, "25P02", err);
            }
            Savepoint::Create(_) => self.savepoint = Some(self.state.clone()),
            Savepoint::RollbackTo(_) => match &self.savepoint {
                Some(saved) => {
                    self.state = saved.clone();
                    self.aborted = false;
                    self.statements = 0;
                }
                None => {
                    let err = SimulatedDbError::sqlx(
                        SqlState::new("3B001").unwrap_or(SqlState::INTERNAL_ERROR),
                        "savepoint does not exist",
                    );
                    return fail(&mut db, "3B001", err);
                }
            },
            Savepoint::Release(_) => {
                if let Some(fault) = db.take_fault(self.attempt, Phase::Release) {
                    match &fault {
                        Fault::CommitReplyLost => {
                            db.version += u64::from(self.wrote);
                            db.state = self.state.clone();
                            self.broken = true;
                        }
                        Fault::ConnectionLost => self.broken = true,
                        Fault::Sqlstate(code)
                            if code.class() == "08" || code.as_str().starts_with("57P") =>
                        {
                            self.broken = true
                        }
                        Fault::Sqlstate(_) => self.aborted = true,
                    }
                    return fail(&mut db, &fault.label(), fault.error());
                }
                self.savepoint = None;
            }
        }
        db.events.push(MockEvent::Statement(label));
        Ok(())
    }
}

impl<S: Clone + Send> OpenTransaction for MockTx<S> {
    type Conn = MockTx<S>;

    fn conn(&mut self) -> &mut MockTx<S> {
        self
    }

    fn savepoint(
        &mut self,
        statement: Savepoint<'_>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        std::future::ready(self.savepoint_step(statement))
    }

    /// The wait before a rerun inside the savepoint: recorded and slept as the source's
    /// [`sleep`](BeginTransaction::sleep) is.
    fn sleep(&mut self, delay: Duration) -> impl Future<Output = ()> + Send + 'static {
        lock(&self.db).events.push(MockEvent::Sleep(delay));
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
    }

    fn commit(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        let result = {
            let mut db = lock(&self.db);
            let conflict = self.wrote && db.version != self.begin_version;
            match db.take_fault(self.attempt, Phase::Commit) {
                _ if self.broken => {
                    db.events.push(MockEvent::Failed {
                        step: "COMMIT".into(),
                        fault: Fault::ConnectionLost.label(),
                    });
                    Err(Fault::ConnectionLost.error())
                }
                _ if self.aborted => {
                    // PostgreSQL answers this COMMIT with ROLLBACK, not an error; the loop's
                    // check before COMMIT turns that into `TransactionAborted`, and so does the
                    // mock: nothing is applied, and `Ok` is never returned for it.
                    db.events.push(MockEvent::Failed {
                        step: "COMMIT".into(),
                        fault: crate::aborted::IN_FAILED_SQL_TRANSACTION.into(),
                    });
                    Err(crate::error::TransactionAborted::sqlx(None))
                }
                Some(fault) => {
                    db.events.push(MockEvent::Failed {
                        step: "COMMIT".into(),
                        fault: fault.label(),
                    });
                    if fault == Fault::CommitReplyLost {
                        db.version += u64::from(self.wrote);
                        db.state = self.state;
                    }
                    Err(fault.error())
                }
                None if conflict => {
                    let fault = Fault::Sqlstate(SqlState::SERIALIZATION_FAILURE);
                    db.events.push(MockEvent::Failed {
                        step: "COMMIT".into(),
                        fault: fault.label(),
                    });
                    Err(fault.error())
                }
                None => {
                    db.events.push(MockEvent::Commit);
                    db.version += u64::from(self.wrote);
                    db.state = self.state;
                    Ok(())
                }
            }
        };
        std::future::ready(result)
    }

    fn rollback(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        let result = {
            let mut db = lock(&self.db);
            let fault = db.take_fault(self.attempt, Phase::Rollback);
            match fault {
                Some(fault) => {
                    db.events.push(MockEvent::Failed {
                        step: "ROLLBACK".into(),
                        fault: fault.label(),
                    });
                    Err(fault.error())
                }
                None if self.broken => {
                    db.events.push(MockEvent::Failed {
                        step: "ROLLBACK".into(),
                        fault: Fault::ConnectionLost.label(),
                    });
                    Err(Fault::ConnectionLost.error())
                }
                None => {
                    db.events.push(MockEvent::Rollback);
                    Ok(())
                }
            }
        };
        std::future::ready(result)
    }
}

impl<'s, S: Clone + Send + 'static> BeginTransaction<'s> for &MockDb<S> {
    type Conn = MockTx<S>;
    type Tx = MockTx<S>;

    fn begin(
        &'s mut self,
        options: TxOptions,
    ) -> impl Future<Output = Result<Self::Tx, sqlx::Error>> + Send + 's {
        let statement = crate::backends::postgres::begin_statement(&options);
        let result = {
            let mut db = lock(&self.inner);
            db.attempt += 1;
            let attempt = db.attempt;
            match db.take_fault(attempt, Phase::Begin) {
                Some(fault) => {
                    db.events.push(MockEvent::Failed {
                        step: statement.into(),
                        fault: fault.label(),
                    });
                    Err(fault.error())
                }
                None => {
                    db.events.push(MockEvent::Begin(statement));
                    Ok(MockTx {
                        db: Arc::clone(&self.inner),
                        state: db.state.clone(),
                        attempt,
                        statements: 0,
                        broken: false,
                        aborted: false,
                        wrote: false,
                        begin_version: db.version,
                        savepoint: None,
                    })
                }
            }
        };
        std::future::ready(result)
    }

    fn sleep(&mut self, delay: Duration) -> impl Future<Output = ()> + Send + 'static {
        lock(&self.inner).events.push(MockEvent::Sleep(delay));
        // Exact on tokio's paused clock, which has no tick to make up for; a zero delay does
        // not touch the timer at all.
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
    }

    fn reconnects(&self) -> bool {
        lock(&self.inner).reconnects
    }
}

/// The mock's transaction as the source (an annotated function called with the outer mock
/// function's `tx`): the call joins it, like a `&mut PgConnection` inside a transaction.
impl<'s, S: Clone + Send + 'static> BeginTransaction<'s> for &mut MockTx<S> {
    type Conn = MockTx<S>;
    type Tx = Joined<'s, MockTx<S>>;

    fn begin(
        &'s mut self,
        _options: TxOptions,
    ) -> impl Future<Output = Result<Self::Tx, sqlx::Error>> + Send + 's {
        let conn: &'s mut MockTx<S> = self;
        std::future::ready(Ok(Joined::new(conn)))
    }

    fn reconnects(&self) -> bool {
        false
    }
}
