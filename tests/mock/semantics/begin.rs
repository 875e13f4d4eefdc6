//! BEGIN: its failures and its statements.

use super::*;

// ---------------------------------------------------------------------------------------------
// 10. BEGIN failures.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn connection_lost_at_begin_is_retried_and_counts_as_an_attempt() {
    let db = MockDb::new(0_i64).fail(1, Phase::Begin, Fault::ConnectionLost);
    assert_eq!(bump(&db, 1).await.unwrap(), 1);
    assert_eq!(
        script(&db),
        [
            &format!("{BEGIN} -> connection lost"),
            SLEEP,
            BEGIN,
            "bump",
            "COMMIT"
        ]
    );

    // With `max = 2`, the failed BEGIN uses up attempt 1: a conflict on attempt 2 is final.
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Begin, Fault::ConnectionLost)
        .fail(2, Phase::Commit, Fault::sqlstate("40001"));
    let err = bump2(&db).await.unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::SERIALIZATION_FAILURE));
    assert_eq!(db.attempts(), 2);
    assert_eq!(
        script(&db),
        [
            &format!("{BEGIN} -> connection lost"),
            SLEEP,
            BEGIN,
            "bump",
            "COMMIT -> 40001"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_begin_failure_is_returned() {
    let db = MockDb::new(0_i64).fail(1, Phase::Begin, Fault::sqlstate("42501"));
    let err = bump(&db, 1).await.unwrap_err();
    assert_eq!(sqlstate(&err), SqlState::new("42501"));
    assert_eq!(db.attempts(), 1);
    assert_eq!(db.script(), [format!("{BEGIN} -> 42501")]);

    let db = MockDb::new(0_i64)
        .single_connection()
        .fail(1, Phase::Begin, Fault::ConnectionLost);
    let err = bump(&db, 1).await.unwrap_err();
    assert!(matches!(err, sqlx::Error::Io(_)), "{err}");
    assert_eq!(db.attempts(), 1);

    // Through a wrapping error type too.
    let db = MockDb::new(0_i64).fail(1, Phase::Begin, Fault::sqlstate("42501"));
    let err = with_nested(&db).await.unwrap_err();
    assert_eq!(sqlstate(&err), SqlState::new("42501"));
}

// ---------------------------------------------------------------------------------------------
// 11. BEGIN statements.
// ---------------------------------------------------------------------------------------------

async fn read(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    tx.execute("read")?;
    Ok(*tx.state())
}

#[serializable_retry]
async fn default_tx(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    read(tx).await
}

#[serializable_retry(read_only)]
async fn read_only_tx(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    read(tx).await
}

#[serializable_retry(read_only, deferrable)]
async fn deferrable_tx(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    read(tx).await
}

#[serializable_retry(isolation = "serializable", read_only, deferrable)]
async fn explicit_deferrable_tx(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    read(tx).await
}

#[serializable_retry(
    isolation = "repeatable_read",
    backoff(exponential, base = "1ms", cap = "4ms")
)]
async fn repeatable_read_tx(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    read(tx).await
}

#[serializable_retry(isolation = "repeatable_read", read_only)]
async fn repeatable_read_only_tx(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    read(tx).await
}

#[serializable_retry(isolation = "read_committed")]
async fn read_committed_tx(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    read(tx).await
}

#[serializable_retry(isolation = "read_committed", read_only)]
async fn read_committed_read_only_tx(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    read(tx).await
}

#[tokio::test(start_paused = true)]
async fn begin_statements() {
    macro_rules! begins_with {
        ($f:ident, $stmt:expr) => {{
            let db = MockDb::new(0_i64);
            $f(&db).await.unwrap();
            assert_eq!(db.script(), [$stmt, "read", "COMMIT"], stringify!($f));
        }};
    }
    begins_with!(default_tx, "BEGIN ISOLATION LEVEL SERIALIZABLE");
    begins_with!(read_only_tx, "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY");
    begins_with!(
        deferrable_tx,
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE"
    );
    begins_with!(
        explicit_deferrable_tx,
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE"
    );
    begins_with!(repeatable_read_tx, "BEGIN ISOLATION LEVEL REPEATABLE READ");
    begins_with!(
        repeatable_read_only_tx,
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    );
    begins_with!(read_committed_tx, "BEGIN ISOLATION LEVEL READ COMMITTED");
    begins_with!(
        read_committed_read_only_tx,
        "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY"
    );
}

#[tokio::test(start_paused = true)]
async fn every_attempt_begins_with_the_same_statement() {
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("40001"));
    repeatable_read_tx(&db).await.unwrap();
    assert_eq!(
        script(&db),
        [
            "BEGIN ISOLATION LEVEL REPEATABLE READ",
            "read -> 40001",
            "ROLLBACK",
            SLEEP,
            "BEGIN ISOLATION LEVEL REPEATABLE READ",
            "read",
            "COMMIT"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn plain_api_begin_statements() {
    let policy = Policy::builder()
        .isolation(IsolationLevel::RepeatableRead)
        .read_only(true)
        .build()
        .unwrap();
    let db = MockDb::new(0_i64);
    sqlx_retry::transaction(&db, &policy, |tx| Box::pin(read(tx)))
        .await
        .unwrap();
    assert_eq!(
        db.script(),
        [
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
            "read",
            "COMMIT"
        ]
    );
}
