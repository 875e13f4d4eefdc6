//! Errors that are not conflicts: exactly one attempt.

use super::*;

// ---------------------------------------------------------------------------------------------
// 3. Not retried: exactly one attempt.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn permanent_sqlstates_get_exactly_one_attempt() {
    // foreign key, division by zero, syntax error, statement timeout, lock timeout, unique
    // violation, integrity violation at commit, aborted transaction.
    for code in [
        "23503", "22012", "42601", "57014", "55P03", "23505", "40002", "25P02",
    ] {
        // Only attempt 1 fails: a retry would succeed, so one attempt proves there was none.
        let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate(code));
        let err = bump(&db, 1).await.unwrap_err();
        assert_eq!(sqlstate(&err), SqlState::new(code), "{code}: {err}");
        assert_eq!(db.attempts(), 1, "{code}");
        assert_eq!(db.state(), 0, "{code}");
        assert_eq!(
            db.script(),
            [BEGIN, &format!("bump -> {code}"), "ROLLBACK"],
            "{code}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn permanent_sqlstate_at_commit_gets_exactly_one_attempt() {
    // A deferred foreign key checked at COMMIT.
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("23503"));
    let err = bump(&db, 1).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::new("23503").unwrap()));
    assert_eq!(db.script(), [BEGIN, "bump", "COMMIT -> 23503"]);
    assert_eq!(db.state(), 0);
}

#[derive(Debug, thiserror::Error)]
pub(super) enum AppError {
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("database error")]
    Db(#[from] sqlx::Error),
}

#[serializable_retry(max = 5, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn refuse_first_attempt(tx: &mut MockTx<i64>) -> Result<i64, AppError> {
    tx.execute("check")?;
    if tx.attempt() == 1 {
        return Err(AppError::InsufficientFunds);
    }
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

#[serializable_retry(max = 5, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn not_found_first_attempt(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    tx.execute("SELECT")?;
    if tx.attempt() == 1 {
        return Err(sqlx::Error::RowNotFound);
    }
    Ok(*tx.state())
}

#[serializable_retry(max = 5, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn anyhow_first_attempt(tx: &mut MockTx<i64>) -> anyhow::Result<i64> {
    tx.execute("check")?;
    if tx.attempt() == 1 {
        anyhow::bail!("business rule violated");
    }
    Ok(*tx.state())
}

#[tokio::test(start_paused = true)]
async fn application_errors_get_exactly_one_attempt() {
    let db = MockDb::new(0_i64);
    let err = refuse_first_attempt(&db).await.unwrap_err();
    assert!(matches!(err, AppError::InsufficientFunds), "{err}");
    assert_eq!(db.script(), [BEGIN, "check", "ROLLBACK"]);
    assert_eq!(db.state(), 0);

    let db = MockDb::new(0_i64);
    let err = not_found_first_attempt(&db).await.unwrap_err();
    assert!(matches!(err, sqlx::Error::RowNotFound), "{err}");
    assert_eq!(db.script(), [BEGIN, "SELECT", "ROLLBACK"]);

    let db = MockDb::new(0_i64);
    let err = anyhow_first_attempt(&db).await.unwrap_err();
    assert_eq!(err.to_string(), "business rule violated");
    assert_eq!(db.script(), [BEGIN, "check", "ROLLBACK"]);
}

#[tokio::test(start_paused = true)]
async fn retry_on_opts_into_lock_timeouts() {
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("55P03"));
    assert_eq!(bump_lock_wait(&db).await.unwrap(), 1);
    assert_eq!(
        script(&db),
        [
            BEGIN,
            "SELECT ... FOR UPDATE -> 55P03",
            "ROLLBACK",
            SLEEP,
            BEGIN,
            "SELECT ... FOR UPDATE",
            "COMMIT"
        ]
    );
    assert_eq!(db.state(), 1);

    // The opt-in adds 55P03; it does not make other codes retryable.
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("57014"));
    let err = bump_lock_wait(&db).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::QUERY_CANCELED));
    assert_eq!(db.attempts(), 1);
}

#[tokio::test(start_paused = true)]
async fn max_one_means_no_retry() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
    let err = bump_once(&db).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::SERIALIZATION_FAILURE));
    assert_eq!(db.script(), [BEGIN, "bump", "COMMIT -> 40001"]);
}
