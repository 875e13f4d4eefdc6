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

/// What kind of conflict a retried error reports, as far as the database says.
///
/// The retry loop hands it to the `on_retry` hook ([`RetryInfo::conflict`](crate::RetryInfo))
/// and puts it on its `retrying transaction` event (field `conflict`), so a service can see
/// whether its conflicts are contended rows or dependency cycles: the two call for different
/// backoff settings (the README's attribute section says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConflictKind {
    /// A write conflict on a row: the attempt updated, deleted or locked a row that a concurrent
    /// transaction changed and committed after the attempt's snapshot was taken (PostgreSQL's
    /// `40001` "could not serialize access due to concurrent update"). Typically the attempt
    /// waited on that transaction's row lock, so the winner has already committed and the row
    /// is free for the next attempt.
    RowWrite,
    /// A serialization failure found by PostgreSQL's serializable snapshot isolation: a cycle of
    /// read/write dependencies among concurrent transactions (`40001` whose detail begins with
    /// `Reason code:`). Some of the transactions involved may still be running.
    Dependency,
    /// `40P01` deadlock_detected.
    Deadlock,
    /// Anything else that is retried: a code from `retry_on`, another database's conflict, a
    /// hot standby's recovery conflict, or a `40001` that does not say where it came from.
    Other,
}

impl ConflictKind {
    /// The kind as the retry event's `conflict` field shows it: `row_write`, `dependency`,
    /// `deadlock` or `other`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ConflictKind::RowWrite => "row_write",
            ConflictKind::Dependency => "dependency",
            ConflictKind::Deadlock => "deadlock",
            ConflictKind::Other => "other",
        }
    }
}

/// The kind of conflict the first database error in `err`'s source chain reports, read the
/// same way as [`sqlstate`]; `None` when the chain holds no database error with a SQLSTATE.
/// Codes other than `40001` and `40P01` give [`ConflictKind::Other`]: whether they are retried
/// is [`classify`]'s business.
///
/// PostgreSQL reports both row write conflicts and dependency cycles as `40001`. They are told
/// apart by the source file the server names in the error (`predicate.c` holds serializable
/// snapshot isolation, and adds a `Reason code:` detail) rather than by the message, which is
/// translated. A `40001` from `postgres.c` is a hot standby's recovery conflict; one without a
/// source file (from another database, or built by hand) is [`ConflictKind::Other`].
///
/// ```
/// # use sqlx_retry_core::{conflict_kind, ConflictKind, SimulatedDbError, SqlState};
/// let deadlock = SimulatedDbError::sqlx(SqlState::DEADLOCK_DETECTED, "deadlock detected");
/// assert_eq!(conflict_kind(&deadlock), Some(ConflictKind::Deadlock));
/// let simulated = SimulatedDbError::sqlx(SqlState::SERIALIZATION_FAILURE, "conflict");
/// assert_eq!(conflict_kind(&simulated), Some(ConflictKind::Other));
/// assert_eq!(conflict_kind(&sqlx::Error::RowNotFound), None);
/// ```
pub fn conflict_kind(err: &(dyn StdError + 'static)) -> Option<ConflictKind> {
    find(err).and_then(found_conflict_kind)
}

/// The kind of conflict a found link reports, if it is a database error.
fn found_conflict_kind(found: Found<'_>) -> Option<ConflictKind> {
    match found {
        Found::Sqlx(sqlx::Error::Database(db)) => database_conflict_kind(db.as_ref()),
        Found::Database(db) => database_conflict_kind(db),
        _ => None,
    }
}

fn database_conflict_kind(db: &dyn DatabaseError) -> Option<ConflictKind> {
    let code = db.code().and_then(|c| SqlState::new(&c))?;
    if code == SqlState::DEADLOCK_DETECTED {
        return Some(ConflictKind::Deadlock);
    }
    if code != SqlState::SERIALIZATION_FAILURE {
        return Some(ConflictKind::Other);
    }
    #[cfg(feature = "postgres")]
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        let ssi = pg.detail().is_some_and(|d| d.starts_with("Reason code:"));
        return Some(match pg.file() {
            Some("predicate.c") => ConflictKind::Dependency,
            _ if ssi => ConflictKind::Dependency,
            Some("postgres.c") | None => ConflictKind::Other,
            Some(_) => ConflictKind::RowWrite,
        });
    }
    Some(ConflictKind::Other)
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
    chain(err).find_map(|e| e.downcast_ref::<sqlx::Error>())
}

/// Walks `err` and its sources. A `Box<dyn DatabaseError>` link (what `#[error(transparent)]`
/// wrappers of `sqlx::Error` expose) is followed into the concrete database error, whose own
/// source sqlx's box does not forward.
fn chain<'a>(
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
enum Found<'a> {
    Sqlx(&'a sqlx::Error),
    Database(&'a dyn DatabaseError),
    Io,
}

fn find<'a>(err: &'a (dyn StdError + 'static)) -> Option<Found<'a>> {
    chain(err).find_map(|e| {
        if let Some(sqlx) = e.downcast_ref::<sqlx::Error>() {
            Some(Found::Sqlx(sqlx))
        } else if let Some(db) = e.downcast_ref::<Box<dyn DatabaseError>>() {
            Some(Found::Database(db.as_ref()))
        } else if e.is::<std::io::Error>() {
            Some(Found::Io)
        } else {
            None
        }
    })
}

/// The SQLSTATE reported by the database for the first [`sqlx::Error`] in `err`'s source chain.
///
/// For MySQL/MariaDB and SQLite this is the code the driver reports (`40001` for a MySQL
/// deadlock; SQLite reports its extended result code, e.g. `517`, which is not a SQLSTATE and
/// yields `None`).
pub fn sqlstate(err: &(dyn StdError + 'static)) -> Option<SqlState> {
    let db = match find(err)? {
        Found::Sqlx(sqlx::Error::Database(db)) => db.as_ref(),
        Found::Database(db) => db,
        _ => return None,
    };
    db.code().and_then(|c| SqlState::new(&c))
}

/// Classifies an error found anywhere in a source chain. `retry_on` lists the extra SQLSTATEs the
/// caller opted into.
///
/// | error | class |
/// |---|---|
/// | `40001` serialization_failure, `40P01` deadlock_detected | [`Class::Conflict`] |
/// | codes in `retry_on` | [`Class::Conflict`] |
/// | MySQL/MariaDB lock wait timeout `1205` and `1020` record changed (SQLSTATE `HY000`); every SQLite `SQLITE_BUSY`/`SQLITE_LOCKED` code (reported as `40001`) | [`Class::Conflict`] |
/// | MariaDB `1927` connection killed | [`Class::ConnectionLost`] |
/// | I/O, TLS or protocol error; class `08`; `57P01`, `57P02`, `57P03`; `25P03`, `57P05` (session killed by a timeout) | [`Class::ConnectionLost`] |
/// | the commit-unknown error of [`is_commit_unknown`] | [`Class::Permanent`] |
/// | everything else, including `57014` statement timeout, `55P03` lock timeout, `23505`, no `sqlx::Error` in the chain | [`Class::Permanent`] |
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
        Some(Found::Io) => Class::ConnectionLost,
        None => Class::Permanent,
    };
    let kind = match class {
        Class::Conflict(_) => found.and_then(found_conflict_kind),
        _ => None,
    };
    (class, kind)
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
    // Backend-specific rules first: errors whose code alone does not say enough (MySQL's
    // catch-all `HY000`) or is not a SQLSTATE at all (SQLite's result codes).
    #[cfg(feature = "mysql")]
    if let Some(class) = crate::backends::mysql::classify(db) {
        return class;
    }
    #[cfg(feature = "sqlite")]
    if let Some(class) = crate::backends::sqlite::classify(db) {
        return class;
    }
    let Some(code) = db.code().and_then(|c| SqlState::new(&c)) else {
        return Class::Permanent;
    };
    // A lost connection stays a lost connection even if listed in `retry_on`: at COMMIT it means
    // the outcome is unknown, and only `idempotent` may retry that.
    if matches!(
        code.as_str(),
        "57P01" | "57P02" | "57P03" | "57P05" | "25P03"
    ) || code.class() == "08"
    {
        return Class::ConnectionLost;
    }
    if code == SqlState::SERIALIZATION_FAILURE
        || code == SqlState::DEADLOCK_DETECTED
        || retry_on.contains(&code)
    {
        return Class::Conflict(code);
    }
    Class::Permanent
}

/// Returns `true` if `err` (or an error in its source chain) says that the connection was lost
/// while COMMIT was in flight, so the transaction may or may not have committed.
///
/// The retry loop returns this error instead of retrying (unless the function is marked
/// `idempotent`), because running the transaction again could apply it twice. It is a
/// [`sqlx::Error::Database`] with SQLSTATE `40003` (statement_completion_unknown), so code that
/// matches on SQLSTATEs sees it too. The error that broke the connection is
/// [`CommitUnknown::cause`], reachable with [`find_commit_unknown`].
///
/// What to do with it: check in the database whether the work landed (e.g. by an idempotency
/// key), or make the transaction idempotent and opt into retrying with `idempotent`.
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

    /// Real SQLite errors (their type has no public constructor): every `SQLITE_BUSY` and
    /// `SQLITE_LOCKED` code is a conflict, everything else permanent.
    #[cfg(feature = "sqlite")]
    #[tokio::test]
    async fn sqlite_result_codes() {
        use sqlx::Connection as _;
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};

        let path = std::env::temp_dir().join(format!(
            "sqlx-retry-classify-{}-{:?}.db",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::ZERO);
        let result = async {
            let mut a = sqlx::SqliteConnection::connect_with(&options).await?;
            let mut b = sqlx::SqliteConnection::connect_with(&options).await?;
            let run = |sql: &'static str| sqlx::raw_sql(sql);
            run("CREATE TABLE t (id INTEGER PRIMARY KEY)")
                .execute(&mut a)
                .await?;
            let code = |e: &sqlx::Error| match e {
                sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
                _ => None,
            };
            let conflict = Class::Conflict(SqlState::SERIALIZATION_FAILURE);

            // SQLITE_BUSY (5): another connection holds the write lock.
            run("BEGIN IMMEDIATE").execute(&mut a).await?;
            let busy = run("BEGIN IMMEDIATE").execute(&mut b).await.unwrap_err();
            assert_eq!(code(&busy).as_deref(), Some("5"), "{busy}");
            assert_eq!(classify(&busy, &[]), conflict);
            assert_eq!(sqlstate(&busy), None);
            run("COMMIT").execute(&mut a).await?;

            // SQLITE_BUSY_SNAPSHOT (517): a read transaction whose snapshot is stale tries to write.
            run("BEGIN DEFERRED; SELECT count(*) FROM t")
                .execute(&mut a)
                .await?;
            run("INSERT INTO t VALUES (1)").execute(&mut b).await?;
            let snapshot = run("INSERT INTO t VALUES (2)")
                .execute(&mut a)
                .await
                .unwrap_err();
            assert_eq!(code(&snapshot).as_deref(), Some("517"), "{snapshot}");
            assert_eq!(classify(&snapshot, &[]), conflict);
            run("ROLLBACK").execute(&mut a).await?;

            // Everything else is permanent: a constraint (1555), a syntax error (1).
            let dup = run("INSERT INTO t VALUES (1)")
                .execute(&mut a)
                .await
                .unwrap_err();
            assert_eq!(code(&dup).as_deref(), Some("1555"), "{dup}");
            assert_eq!(
                classify(&dup, &[SqlState::UNIQUE_VIOLATION]),
                Class::Permanent
            );
            let syntax = run("SELEC 1").execute(&mut a).await.unwrap_err();
            assert_eq!(code(&syntax).as_deref(), Some("1"), "{syntax}");
            assert_eq!(classify(&syntax, &[]), Class::Permanent);
            a.close().await?;
            b.close().await
        }
        .await;
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
        result.unwrap();
    }
}
