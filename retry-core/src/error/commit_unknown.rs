//! The error of a COMMIT whose outcome is unknown: the connection broke while it was in flight,
//! or the server itself answered that it cannot tell (`40003`).

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use sqlx::error::{DatabaseError, ErrorKind};

use super::chain::chain;

/// Returns `true` if `err` (or an error in its source chain) says that the transaction may or may
/// not have committed: the connection was lost while COMMIT was in flight, or the server answered
/// COMMIT (or, in savepoint mode, `RELEASE SAVEPOINT`) with `40003` statement_completion_unknown,
/// as CockroachDB does when it cannot tell whether its distributed commit landed ("result is
/// ambiguous").
///
/// The retry loop returns this error instead of retrying (unless the function is marked
/// `idempotent` and its source can reconnect, as a pool can), because running the transaction
/// again could apply it twice. It is a [`sqlx::Error::Database`] with SQLSTATE `40003`, so code
/// that matches on SQLSTATEs sees it too. The error that broke the connection, or the server's
/// own `40003`, is [`CommitUnknown::cause`], reachable with [`find_commit_unknown`].
///
/// A `40003` that a statement of the body returns is not this error: COMMIT was not sent, the
/// loop rolls back, and nothing committed. It is returned as is after one attempt.
///
/// What to do with it: check in the database whether the work landed (e.g. by an idempotency
/// key), or make the transaction idempotent and opt into retrying with `idempotent`.
///
/// ```no_run
/// # async fn place_order(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> { Ok(()) }
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// use sqlx_retry_core::is_commit_unknown;
///
/// match place_order(&pool).await {
///     Err(err) if is_commit_unknown(&err) => {
///         // Look the order up by its idempotency key before placing it again.
///     }
///     other => other?,
/// }
/// # Ok(()) }
/// ```
pub fn is_commit_unknown(err: &(dyn StdError + 'static)) -> bool {
    find_commit_unknown(err).is_some()
}

/// The [`CommitUnknown`] in `err`'s source chain, if any: [`CommitUnknown::cause`] is the error
/// that broke the connection.
pub fn find_commit_unknown<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a CommitUnknown> {
    chain(err).find_map(|e| match e.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Database(db)) => db.as_error().downcast_ref::<CommitUnknown>(),
        _ => e.downcast_ref::<CommitUnknown>(),
    })
}

/// The error behind [`is_commit_unknown`]: the connection broke while COMMIT was in flight, or
/// the server answered it with `40003`.
#[derive(Debug)]
pub struct CommitUnknown {
    cause: sqlx::Error,
}

impl CommitUnknown {
    /// Wraps the error that ended COMMIT without an outcome (the one that broke the connection, or
    /// the server's `40003`) into a [`sqlx::Error`] with SQLSTATE `40003`.
    pub fn into_sqlx_error(cause: sqlx::Error) -> sqlx::Error {
        sqlx::Error::Database(Box::new(CommitUnknown { cause }))
    }

    /// The error that broke the connection, or the server's `40003`.
    pub fn cause(&self) -> &sqlx::Error {
        &self.cause
    }

    /// Whether the server said so itself (a `40003` in answer to COMMIT), rather than the
    /// connection breaking.
    fn is_server_sent(&self) -> bool {
        matches!(&self.cause, sqlx::Error::Database(db) if db.code().as_deref() == Some("40003"))
    }
}

const LOST: &str =
    "connection lost while COMMIT was in flight; the transaction may or may not have committed";
const AMBIGUOUS: &str = "the server could not tell whether COMMIT completed; the transaction may or may not have committed";

impl fmt::Display for CommitUnknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.message(), self.cause)
    }
}

impl StdError for CommitUnknown {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.cause)
    }
}

impl DatabaseError for CommitUnknown {
    fn message(&self) -> &str {
        if self.is_server_sent() {
            AMBIGUOUS
        } else {
            LOST
        }
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
