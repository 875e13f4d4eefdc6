//! Walking an error's source chain to the first link that says something about the database.

use std::error::Error as StdError;

use sqlx::error::DatabaseError;

use crate::SqlState;

/// Walks `err` and its sources. A `Box<dyn DatabaseError>` link (what `#[error(transparent)]`
/// wrappers of `sqlx::Error` expose) is followed into the concrete database error, whose own
/// source sqlx's box does not forward.
pub(super) fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    let mut next = Some(err);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.downcast_ref::<Box<dyn DatabaseError>>() {
            Some(db) => Some(db.as_error() as &(dyn StdError + 'static)),
            None => current.source(),
        };
        Some(current)
    })
}

/// What classification looks for in a chain: the first link that says something about the
/// database.
#[derive(Clone, Copy)]
pub(super) enum Found<'a> {
    Sqlx(&'a sqlx::Error),
    Database(&'a dyn DatabaseError),
    Io(&'a std::io::Error),
}

impl<'a> Found<'a> {
    /// The database error, if the link is one.
    pub(super) fn database(self) -> Option<&'a dyn DatabaseError> {
        match self {
            Found::Sqlx(sqlx::Error::Database(db)) => Some(db.as_ref()),
            Found::Database(db) => Some(db),
            _ => None,
        }
    }
}

pub(super) fn find<'a>(err: &'a (dyn StdError + 'static)) -> Option<Found<'a>> {
    chain(err).find_map(|e| {
        if let Some(sqlx) = e.downcast_ref::<sqlx::Error>() {
            Some(Found::Sqlx(sqlx))
        } else if let Some(db) = e.downcast_ref::<Box<dyn DatabaseError>>() {
            Some(Found::Database(db.as_ref()))
        } else {
            e.downcast_ref::<std::io::Error>().map(Found::Io)
        }
    })
}

/// Finds the first [`sqlx::Error`] in `err`'s [`source()`](std::error::Error::source) chain,
/// starting with `err` itself.
///
/// ```
/// # use sqlx_retry_core::error::find_sqlx_error;
/// #[derive(Debug, thiserror::Error)]
/// enum AppError {
///     #[error("database")]
///     Db(#[from] sqlx::Error),
/// }
/// let err = AppError::from(sqlx::Error::RowNotFound);
/// assert!(matches!(find_sqlx_error(&err), Some(sqlx::Error::RowNotFound)));
/// ```
pub fn find_sqlx_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a sqlx::Error> {
    chain(err).find_map(|e| e.downcast_ref::<sqlx::Error>())
}

/// The SQLSTATE reported by the database for the first [`sqlx::Error`] in `err`'s source chain.
///
/// For MySQL/MariaDB and SQLite this is the code the driver reports (`40001` for a MySQL
/// deadlock; SQLite reports its extended result code, e.g. `517`, which is not a SQLSTATE and
/// yields `None`).
///
/// ```
/// # use sqlx_retry_core::error::sqlstate;
/// # fn handle(err: anyhow::Error) {
/// if sqlstate(err.as_ref()).is_some_and(|code| code == "23505") {
///     // a duplicate key: tell the user the name is taken
/// }
/// # }
/// ```
pub fn sqlstate(err: &(dyn StdError + 'static)) -> Option<SqlState> {
    find(err)?
        .database()?
        .code()
        .and_then(|c| SqlState::new(&c))
}

/// What the retry event says about the error that caused the retry: the database's own message
/// (PostgreSQL's primary message, never its DETAIL or HINT, which can quote row data), or for an
/// error without one (a lost connection) the text of the first sqlx or I/O error in the chain.
pub(crate) fn event_message(err: &(dyn StdError + 'static)) -> String {
    match find(err) {
        Some(Found::Sqlx(sqlx::Error::Database(db))) => db.message().to_owned(),
        Some(Found::Database(db)) => db.message().to_owned(),
        Some(Found::Sqlx(other)) => other.to_string(),
        Some(Found::Io(io)) => io.to_string(),
        None => String::new(),
    }
}
