//! Which errors are worth running the transaction again for.
//!
//! The body's error can be any type: `sqlx::Error`, `anyhow::Error`, or an application enum that
//! wraps `sqlx::Error`. Classification walks the [`source()`](std::error::Error::source) chain
//! until it finds a [`sqlx::Error`] and reads the SQLSTATE from it, so wrapping never hides a
//! serialization failure.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use sqlx::error::{DatabaseError, ErrorKind};

use crate::SqlState;

/// What a failed attempt means for the retry loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Class {
    /// The database aborted the transaction because of a conflict with a concurrent one
    /// (`40001`, `40P01`, or a code listed in `retry_on`). Running the whole transaction again
    /// is the documented remedy.
    Conflict(SqlState),
    /// The connection broke (I/O error, `57P01` backend terminated, class `08`, …). Before COMMIT
    /// this means the transaction did not commit; during COMMIT the outcome is unknown.
    ConnectionLost,
    /// Anything else: a constraint violation, a syntax error, an application error, a timeout.
    /// Returned to the caller after one attempt.
    Permanent,
}

impl Class {
    /// The SQLSTATE of a conflict, if this is one.
    pub fn sqlstate(&self) -> Option<SqlState> {
        match self {
            Class::Conflict(code) => Some(*code),
            _ => None,
        }
    }
}

/// Finds the first [`sqlx::Error`] in `err`'s [`source()`](std::error::Error::source) chain,
/// starting with `err` itself.
///
/// ```
/// # use sqlx_retry_core::find_sqlx_error;
/// #[derive(Debug, thiserror::Error)]
/// enum AppError {
///     #[error("database")]
///     Db(#[from] sqlx::Error),
/// }
/// let err = AppError::from(sqlx::Error::RowNotFound);
/// assert!(matches!(find_sqlx_error(&err), Some(sqlx::Error::RowNotFound)));
/// ```
pub fn find_sqlx_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a sqlx::Error> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<sqlx::Error>() {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// The SQLSTATE reported by the database for the first [`sqlx::Error`] in `err`'s source chain.
///
/// For MySQL/MariaDB and SQLite this is the code the driver reports (`40001` for a MySQL
/// deadlock; SQLite reports its extended result code, e.g. `517`, which is not a SQLSTATE and
/// yields `None`).
pub fn sqlstate(err: &(dyn StdError + 'static)) -> Option<SqlState> {
    match find_sqlx_error(err)? {
        sqlx::Error::Database(db) => db.code().and_then(|c| SqlState::new(&c)),
        _ => None,
    }
}

/// Classifies an error found anywhere in a source chain. `retry_on` lists the extra SQLSTATEs the
/// caller opted into.
///
/// | error | class |
/// |---|---|
/// | `40001` serialization_failure, `40P01` deadlock_detected | [`Class::Conflict`] |
/// | codes in `retry_on` | [`Class::Conflict`] |
/// | I/O, TLS or protocol error; class `08`; `57P01`, `57P02`, `57P03`; `25P03`, `57P05` (session killed by a timeout) | [`Class::ConnectionLost`] |
/// | the commit-unknown error of [`is_commit_unknown`] | [`Class::Permanent`] |
/// | everything else, including `57014` statement timeout, `55P03` lock timeout, `23505`, no `sqlx::Error` in the chain | [`Class::Permanent`] |
pub fn classify(err: &(dyn StdError + 'static), retry_on: &[SqlState]) -> Class {
    match find_sqlx_error(err) {
        Some(e) => classify_sqlx(e, retry_on),
        None => Class::Permanent,
    }
}

/// [`classify`] for a [`sqlx::Error`] in hand.
pub fn classify_sqlx(err: &sqlx::Error, retry_on: &[SqlState]) -> Class {
    match err {
        sqlx::Error::Database(db) => classify_database(db.as_ref(), retry_on),
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => {
            Class::ConnectionLost
        }
        _ => Class::Permanent,
    }
}

fn classify_database(db: &dyn DatabaseError, retry_on: &[SqlState]) -> Class {
    if db.as_error().is::<CommitUnknown>() {
        return Class::Permanent;
    }
    let Some(code) = db.code().and_then(|c| SqlState::new(&c)) else {
        return Class::Permanent;
    };
    if code == SqlState::SERIALIZATION_FAILURE
        || code == SqlState::DEADLOCK_DETECTED
        || retry_on.contains(&code)
    {
        return Class::Conflict(code);
    }
    match code.as_str() {
        "57P01" | "57P02" | "57P03" | "57P05" | "25P03" => Class::ConnectionLost,
        _ if code.class() == "08" => Class::ConnectionLost,
        _ => Class::Permanent,
    }
}

/// Returns `true` if `err` (or an error in its source chain) says that the connection was lost
/// while COMMIT was in flight, so the transaction may or may not have committed.
///
/// The retry loop returns this error instead of retrying (unless the function is marked
/// `idempotent`), because running the transaction again could apply it twice. It is a
/// [`sqlx::Error::Database`] with SQLSTATE `40003` (statement_completion_unknown), so code that
/// matches on SQLSTATEs sees it too; its [`source()`](std::error::Error::source) is the I/O error
/// that broke the connection.
///
/// What to do with it: check in the database whether the work landed (e.g. by an idempotency
/// key), or make the transaction idempotent and opt into retrying with `idempotent`.
pub fn is_commit_unknown(err: &(dyn StdError + 'static)) -> bool {
    match find_sqlx_error(err) {
        Some(sqlx::Error::Database(db)) => db.as_error().is::<CommitUnknown>(),
        _ => false,
    }
}

/// The error behind [`is_commit_unknown`]: the connection broke while COMMIT was in flight.
#[derive(Debug)]
pub struct CommitUnknown {
    cause: sqlx::Error,
}

impl CommitUnknown {
    /// Wraps the error that broke the connection during COMMIT into a [`sqlx::Error`] with
    /// SQLSTATE `40003`.
    pub fn into_sqlx_error(cause: sqlx::Error) -> sqlx::Error {
        sqlx::Error::Database(Box::new(CommitUnknown { cause }))
    }

    /// The error that broke the connection.
    pub fn cause(&self) -> &sqlx::Error {
        &self.cause
    }
}

impl fmt::Display for CommitUnknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connection lost while COMMIT was in flight; the transaction may or may not have committed: {}",
            self.cause
        )
    }
}

impl StdError for CommitUnknown {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.cause)
    }
}

impl DatabaseError for CommitUnknown {
    fn message(&self) -> &str {
        "connection lost while COMMIT was in flight; the transaction may or may not have committed"
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed("40003"))
    }

    fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

/// A database error with a given SQLSTATE, for tests and for the mock transaction source.
///
/// ```
/// # use sqlx_retry_core::{classify, Class, SqlState, SimulatedDbError};
/// let err = SimulatedDbError::sqlx(SqlState::SERIALIZATION_FAILURE, "could not serialize access");
/// assert_eq!(classify(&err, &[]), Class::Conflict(SqlState::SERIALIZATION_FAILURE));
/// ```
#[derive(Debug, Clone)]
pub struct SimulatedDbError {
    code: SqlState,
    message: String,
}

impl SimulatedDbError {
    /// A [`sqlx::Error::Database`] carrying `code` and `message`.
    pub fn sqlx(code: SqlState, message: impl Into<String>) -> sqlx::Error {
        sqlx::Error::Database(Box::new(SimulatedDbError {
            code,
            message: message.into(),
        }))
    }
}

impl fmt::Display for SimulatedDbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)
    }
}

impl StdError for SimulatedDbError {}

impl DatabaseError for SimulatedDbError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self.code.as_str()))
    }

    fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        match self.code.as_str() {
            "23505" => ErrorKind::UniqueViolation,
            "23503" => ErrorKind::ForeignKeyViolation,
            "23502" => ErrorKind::NotNullViolation,
            "23514" => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(code: &str) -> sqlx::Error {
        SimulatedDbError::sqlx(SqlState::new(code).unwrap(), "simulated")
    }

    fn io() -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ))
    }

    #[test]
    fn classification_table() {
        let conflict = |c: &str| Class::Conflict(SqlState::new(c).unwrap());
        let table: Vec<(sqlx::Error, Class)> = vec![
            (db("40001"), conflict("40001")),
            (db("40P01"), conflict("40P01")),
            (db("40002"), Class::Permanent), // integrity constraint violation at commit
            (db("23505"), Class::Permanent),
            (db("23503"), Class::Permanent),
            (db("23P01"), Class::Permanent),
            (db("22012"), Class::Permanent),
            (db("42601"), Class::Permanent),
            (db("57014"), Class::Permanent),
            (db("55P03"), Class::Permanent),
            (db("25P02"), Class::Permanent),
            (db("57P01"), Class::ConnectionLost),
            (db("57P02"), Class::ConnectionLost),
            (db("57P03"), Class::ConnectionLost),
            (db("08006"), Class::ConnectionLost),
            (db("08003"), Class::ConnectionLost),
            (db("25P03"), Class::ConnectionLost),
            (io(), Class::ConnectionLost),
            (sqlx::Error::Protocol("bad".into()), Class::ConnectionLost),
            (sqlx::Error::RowNotFound, Class::Permanent),
            (sqlx::Error::PoolTimedOut, Class::Permanent),
            (sqlx::Error::PoolClosed, Class::Permanent),
            (CommitUnknown::into_sqlx_error(io()), Class::Permanent),
        ];
        for (err, want) in table {
            assert_eq!(classify(&err, &[]), want, "{err}");
        }
    }

    #[test]
    fn retry_on_opts_in_extra_codes() {
        let extra = [SqlState::UNIQUE_VIOLATION, SqlState::LOCK_NOT_AVAILABLE];
        assert_eq!(
            classify(&db("23505"), &extra),
            Class::Conflict(SqlState::UNIQUE_VIOLATION)
        );
        assert_eq!(
            classify(&db("55P03"), &extra),
            Class::Conflict(SqlState::LOCK_NOT_AVAILABLE)
        );
        assert_eq!(classify(&db("23503"), &extra), Class::Permanent);
    }

    #[derive(Debug, thiserror::Error)]
    enum AppError {
        #[error("storage failed")]
        Storage(#[source] Inner),
        #[error("business rule")]
        Rule,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("repository")]
    struct Inner(#[from] sqlx::Error);

    #[test]
    fn finds_sqlstate_through_wrapped_errors() {
        let nested = AppError::Storage(Inner(db("40001")));
        assert_eq!(
            classify(&nested, &[]),
            Class::Conflict(SqlState::SERIALIZATION_FAILURE)
        );
        assert_eq!(sqlstate(&nested), Some(SqlState::SERIALIZATION_FAILURE));
        assert_eq!(classify(&AppError::Rule, &[]), Class::Permanent);

        let any = anyhow::Error::from(db("40P01")).context("transfer failed");
        let as_dyn: &(dyn StdError + 'static) = any.as_ref();
        assert_eq!(
            classify(as_dyn, &[]),
            Class::Conflict(SqlState::DEADLOCK_DETECTED)
        );
    }

    #[test]
    fn commit_unknown_is_detectable_and_keeps_its_cause() {
        let err = CommitUnknown::into_sqlx_error(io());
        assert!(is_commit_unknown(&err));
        assert_eq!(sqlstate(&err), Some(SqlState::STATEMENT_COMPLETION_UNKNOWN));
        let wrapped = AppError::Storage(Inner(err));
        assert!(is_commit_unknown(&wrapped));
        // The I/O error is reachable through the chain.
        let mut chain = Some(&wrapped as &(dyn StdError + 'static));
        let mut saw_io = false;
        while let Some(e) = chain {
            saw_io |= e.to_string().contains("reset");
            chain = e.source();
        }
        assert!(saw_io);
        assert!(!is_commit_unknown(&db("40001")));
    }
}
