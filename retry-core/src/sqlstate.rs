//! SQLSTATE codes as a validated value type.

use std::fmt;
use std::str::FromStr;

/// A five-character SQLSTATE code such as `40001`, validated on construction.
///
/// SQLSTATE codes are five characters, each a digit or an upper-case ASCII letter; the first two
/// characters are the class (`40` = transaction rollback, `08` = connection exception, …).
///
/// ```
/// use sqlx_retry_core::SqlState;
///
/// let code: SqlState = "40P01".parse().unwrap();
/// assert_eq!(code, SqlState::DEADLOCK_DETECTED);
/// assert_eq!(code.class(), "40");
/// assert!("4000".parse::<SqlState>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SqlState([u8; 5]);

impl SqlState {
    /// `40001` serialization_failure: the server aborted the transaction because it conflicts with
    /// a concurrent one. Retried by default.
    pub const SERIALIZATION_FAILURE: SqlState = SqlState(*b"40001");
    /// `40P01` deadlock_detected: the server broke a deadlock by aborting this transaction.
    /// Retried by default.
    pub const DEADLOCK_DETECTED: SqlState = SqlState(*b"40P01");
    /// `40003` statement_completion_unknown: the connection was lost while COMMIT was in flight,
    /// so the transaction may or may not have committed. Produced by this crate; see
    /// [`is_commit_unknown`](crate::is_commit_unknown).
    pub const STATEMENT_COMPLETION_UNKNOWN: SqlState = SqlState(*b"40003");
    /// `23505` unique_violation. Not retried unless listed in `retry_on`.
    pub const UNIQUE_VIOLATION: SqlState = SqlState(*b"23505");
    /// `23P01` exclusion_violation. Not retried unless listed in `retry_on`.
    pub const EXCLUSION_VIOLATION: SqlState = SqlState(*b"23P01");
    /// `55P03` lock_not_available (`lock_timeout`, `NOWAIT`). Not retried unless listed in
    /// `retry_on`.
    pub const LOCK_NOT_AVAILABLE: SqlState = SqlState(*b"55P03");
    /// `57014` query_canceled (`statement_timeout`, cancel request). Never retried by default:
    /// a statement that timed out once will usually time out again.
    pub const QUERY_CANCELED: SqlState = SqlState(*b"57014");
    /// `57P01` admin_shutdown: the backend was terminated. The transaction did not commit.
    pub const ADMIN_SHUTDOWN: SqlState = SqlState(*b"57P01");
    /// `57P02` crash_shutdown: the server is restarting after a backend crashed.
    pub const CRASH_SHUTDOWN: SqlState = SqlState(*b"57P02");
    /// `57P03` cannot_connect_now: the server is starting up or shutting down.
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState(*b"57P03");

    /// `XX000` internal_error.
    pub const INTERNAL_ERROR: SqlState = SqlState(*b"XX000");

    /// Parses a SQLSTATE at compile time or run time; `None` if `code` is not five characters
    /// from `0-9A-Z`.
    pub const fn new(code: &str) -> Option<SqlState> {
        let b = code.as_bytes();
        if b.len() != 5 {
            return None;
        }
        let mut i = 0;
        while i < 5 {
            if !(b[i].is_ascii_digit() || b[i].is_ascii_uppercase()) {
                return None;
            }
            i += 1;
        }
        Some(SqlState([b[0], b[1], b[2], b[3], b[4]]))
    }

    /// The code as a string, e.g. `"40001"`.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("?????")
    }

    /// The class: the first two characters (`"40"` for transaction rollback).
    pub fn class(&self) -> &str {
        &self.as_str()[..2]
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SqlState({})", self.as_str())
    }
}

/// The error returned when a string is not a valid SQLSTATE: by [`str::parse`] and, for a
/// `retry_on` code, by [`PolicyBuilder::build`](crate::PolicyBuilder::build).
///
/// ```
/// # use sqlx_retry_core::SqlState;
/// let err = "4000X1".parse::<SqlState>().unwrap_err();
/// assert_eq!(err.input(), "4000X1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSqlState(String);

impl InvalidSqlState {
    pub(crate) fn new(input: &str) -> Self {
        InvalidSqlState(input.to_owned())
    }

    /// The string that is not a SQLSTATE.
    pub fn input(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InvalidSqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a SQLSTATE: expected five characters from 0-9 and A-Z, such as `40001`",
            self.0
        )
    }
}

impl std::error::Error for InvalidSqlState {}

impl FromStr for SqlState {
    type Err = InvalidSqlState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SqlState::new(s).ok_or_else(|| InvalidSqlState::new(s))
    }
}

impl PartialEq<str> for SqlState {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for SqlState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_codes() {
        for code in ["40001", "40P01", "23505", "08006", "57P01", "HY000"] {
            assert_eq!(code.parse::<SqlState>().unwrap().as_str(), code);
        }
    }

    #[test]
    fn rejects_malformed_codes() {
        for code in ["", "4000", "400011", "40p01", "40 01", "4000é", "40_01"] {
            let err = code.parse::<SqlState>().unwrap_err();
            assert!(err.to_string().contains("five characters"), "{err}");
        }
    }

    #[test]
    fn class_is_first_two_characters() {
        assert_eq!(SqlState::ADMIN_SHUTDOWN.class(), "57");
        assert_eq!(SqlState::SERIALIZATION_FAILURE, "40001");
    }
}
