//! Which errors are worth running the transaction again for: the [`Class`] of an error, decided
//! by the backend that reported it.

use std::error::Error as StdError;

use sqlx::error::DatabaseError;

use super::chain::{Found, find};
use super::commit_unknown::CommitUnknown;
use super::conflict::{ConflictKind, found_conflict_kind};
use crate::SqlState;

/// What a failed attempt means for the retry loop: what [`classify`] returns.
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

/// Classifies an error found anywhere in a source chain, as the retry loop does. `retry_on` lists
/// the extra SQLSTATEs the caller opted into.
///
/// | error | class |
/// |---|---|
/// | `40001` serialization_failure, `40P01` deadlock_detected | [`Class::Conflict`] |
/// | codes in `retry_on` | [`Class::Conflict`] |
/// | MySQL/MariaDB lock wait timeout `1205` and `1020` record changed (SQLSTATE `HY000`); every SQLite `SQLITE_BUSY`/`SQLITE_LOCKED` code (reported as `40001`) | [`Class::Conflict`] |
/// | MariaDB `1927` connection killed | [`Class::ConnectionLost`] |
/// | I/O, TLS or protocol error; class `08`; `57P01`, `57P02`, `57P03`; `25P03`, `57P05` (session killed by a timeout) | [`Class::ConnectionLost`] |
/// | the commit-unknown error of [`is_commit_unknown`](super::is_commit_unknown) | [`Class::Permanent`] |
/// | everything else, including `57014` statement timeout, `55P03` lock timeout, `23505`, no `sqlx::Error` in the chain | [`Class::Permanent`] |
///
/// ```
/// use sqlx_retry_core::error::{Class, classify};
///
/// let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
/// assert_eq!(classify(&sqlx::Error::Io(reset), &[]), Class::ConnectionLost);
/// assert_eq!(classify(&sqlx::Error::RowNotFound, &[]), Class::Permanent);
/// ```
pub fn classify(err: &(dyn StdError + 'static), retry_on: &[SqlState]) -> Class {
    classify_conflict(err, retry_on).0
}

/// [`classify`], and for a [`Class::Conflict`] its [`ConflictKind`], from one walk of the chain.
/// Anything but a conflict has no kind.
pub(crate) fn classify_conflict(
    err: &(dyn StdError + 'static),
    retry_on: &[SqlState],
) -> (Class, Option<ConflictKind>) {
    let found = find(err);
    let class = match found {
        Some(Found::Sqlx(e)) => classify_sqlx(e, retry_on),
        Some(Found::Database(db)) => classify_database(db, retry_on),
        Some(Found::Io(_)) => Class::ConnectionLost,
        None => Class::Permanent,
    };
    let kind = match class {
        Class::Conflict(_) => found.and_then(found_conflict_kind),
        _ => None,
    };
    (class, kind)
}

/// [`classify`] for a [`sqlx::Error`] in hand.
///
/// ```
/// use sqlx_retry_core::error::{Class, classify_sqlx};
///
/// assert_eq!(classify_sqlx(&sqlx::Error::PoolTimedOut, &[]), Class::Permanent);
/// ```
pub fn classify_sqlx(err: &sqlx::Error, retry_on: &[SqlState]) -> Class {
    match err {
        sqlx::Error::Database(db) => classify_database(db.as_ref(), retry_on),
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => {
            Class::ConnectionLost
        }
        _ => Class::Permanent,
    }
}

/// A database error: this crate's commit-unknown error is final; everything else is the
/// business of the backend that reported it.
fn classify_database(db: &dyn DatabaseError, retry_on: &[SqlState]) -> Class {
    if db.as_error().is::<CommitUnknown>() {
        return Class::Permanent;
    }
    crate::backends::classify(db, retry_on)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{CommitUnknown, find_commit_unknown, is_commit_unknown, sqlstate};
    use crate::simulated::SimulatedDbError;

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
    fn transparent_wrappers_keep_the_sqlstate() {
        #[derive(Debug, thiserror::Error)]
        #[error(transparent)]
        struct Transparent(#[from] sqlx::Error);
        let err = Transparent(db("40001"));
        assert_eq!(
            classify(&err, &[]),
            Class::Conflict(SqlState::SERIALIZATION_FAILURE)
        );
        assert_eq!(sqlstate(&err), Some(SqlState::SERIALIZATION_FAILURE));
        assert!(is_commit_unknown(&Transparent(
            CommitUnknown::into_sqlx_error(io())
        )));
        assert_eq!(classify(&Transparent(io()), &[]), Class::ConnectionLost);
    }

    #[test]
    fn retry_on_cannot_turn_a_lost_connection_into_a_conflict() {
        let extra = [SqlState::ADMIN_SHUTDOWN, SqlState::new("08006").unwrap()];
        assert_eq!(classify(&db("57P01"), &extra), Class::ConnectionLost);
        assert_eq!(classify(&db("08006"), &extra), Class::ConnectionLost);
    }

    #[test]
    fn statement_completion_unknown_is_never_a_conflict() {
        let extra = [SqlState::STATEMENT_COMPLETION_UNKNOWN];
        assert_eq!(classify(&db("40003"), &[]), Class::Permanent);
        assert_eq!(classify(&db("40003"), &extra), Class::Permanent);
        // A server's own 40003 is not this crate's commit-unknown error: only the loop, at
        // COMMIT, turns it into one.
        assert!(!is_commit_unknown(&db("40003")));
    }

    #[test]
    fn conflict_kinds_from_the_source_file_and_the_message() {
        let kind = |err: SimulatedDbError| classify_conflict(&err.into_sqlx(), &[]).1;
        let s = |message: &str| SimulatedDbError::new(SqlState::SERIALIZATION_FAILURE, message);
        assert_eq!(
            kind(s("could not serialize access due to concurrent update").file("heapam.c")),
            Some(ConflictKind::RowWrite)
        );
        assert_eq!(
            kind(
                s("could not serialize access")
                    .detail("Reason code: Canceled on conflict out to pivot 1, during read.")
            ),
            Some(ConflictKind::Dependency)
        );
        assert_eq!(
            kind(s("canceling statement due to conflict with recovery").file("postgres.c")),
            Some(ConflictKind::Recovery)
        );
        assert_eq!(kind(s("no file")), Some(ConflictKind::Other));
        // CockroachDB names a Go file; the message decides.
        assert_eq!(
            kind(
                s("restart transaction: TransactionRetryWithProtoRefreshError: TransactionRetryError: retry txn (RETRY_WRITE_TOO_OLD - WriteTooOld flag converted to WriteTooOldError)")
                    .file("replica_evaluate.go")
            ),
            Some(ConflictKind::WriteTooOld)
        );
        assert_eq!(
            kind(s("restart transaction: something new").file("txn_coord_sender.go")),
            Some(ConflictKind::Other)
        );
        // Not a conflict: no kind.
        assert_eq!(
            kind(SimulatedDbError::new(
                SqlState::STATEMENT_COMPLETION_UNKNOWN,
                "result is ambiguous"
            )),
            None
        );
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
        // The I/O error is reachable as the cause.
        let cause = find_commit_unknown(&wrapped).map(CommitUnknown::cause);
        assert!(matches!(cause, Some(sqlx::Error::Io(_))), "{cause:?}");
        assert!(!is_commit_unknown(&db("40001")));
    }
}
