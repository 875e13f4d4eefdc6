//! A database error with a chosen SQLSTATE: the errors the mock source reports, and a fixture
//! for unit tests of classification.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use sqlx::error::{DatabaseError, ErrorKind};

use crate::SqlState;

/// A database error with a given SQLSTATE, for tests and for the mock transaction source.
///
/// Use it to test your own error handling (a function that branches on
/// [`sqlstate`](crate::error::sqlstate), an `on_retry` hook) without a database.
///
/// ```
/// # use sqlx_retry_core::SqlState;
/// # use sqlx_retry_core::error::{classify, Class};
/// use sqlx_retry_core::mock::SimulatedDbError;
/// let err = SimulatedDbError::sqlx(SqlState::SERIALIZATION_FAILURE, "could not serialize access");
/// assert_eq!(classify(&err, &[]), Class::Conflict(SqlState::SERIALIZATION_FAILURE));
/// ```
///
/// To imitate another server's report in full, build one with [`new`](Self::new) and add the
/// fields PostgreSQL sends besides the message: classification reads them as it reads a real
/// PostgreSQL error's.
///
/// ```
/// # use sqlx_retry_core::{ConflictKind, SqlState};
/// # use sqlx_retry_core::error::conflict_kind;
/// use sqlx_retry_core::mock::SimulatedDbError;
/// let ssi = SimulatedDbError::new(SqlState::SERIALIZATION_FAILURE, "could not serialize access")
///     .detail("Reason code: Canceled on identification as a pivot, during write.")
///     .file("predicate.c")
///     .into_sqlx();
/// assert_eq!(conflict_kind(&ssi), Some(ConflictKind::Dependency));
/// ```
#[derive(Debug, Clone)]
pub struct SimulatedDbError {
    code: SqlState,
    message: String,
    detail: Option<String>,
    file: Option<String>,
}

impl SimulatedDbError {
    /// A [`sqlx::Error::Database`] carrying `code` and `message`.
    pub fn sqlx(code: SqlState, message: impl Into<String>) -> sqlx::Error {
        SimulatedDbError::new(code, message).into_sqlx()
    }

    /// An error carrying `code` and `message`, without detail or source file.
    pub fn new(code: SqlState, message: impl Into<String>) -> Self {
        SimulatedDbError {
            code,
            message: message.into(),
            detail: None,
            file: None,
        }
    }

    /// Adds the DETAIL field (PostgreSQL's `Reason code: …` for serializable snapshot isolation).
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds the source file the server names (PostgreSQL's `file` field, e.g. `predicate.c`).
    pub fn file(mut self, file: impl Into<String>) -> Self {
        self.file = Some(file.into());
        self
    }

    /// The error as a [`sqlx::Error::Database`].
    pub fn into_sqlx(self) -> sqlx::Error {
        sqlx::Error::Database(Box::new(self))
    }

    /// The DETAIL field, if set.
    pub(crate) fn detail_field(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The source file field, if set.
    pub(crate) fn file_field(&self) -> Option<&str> {
        self.file.as_deref()
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
