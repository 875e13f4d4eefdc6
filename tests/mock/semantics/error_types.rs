//! Error types: the SQLSTATE is found through the source chain.

use super::*;

// ---------------------------------------------------------------------------------------------
// 4. Error types: the SQLSTATE is found through the source chain.
// ---------------------------------------------------------------------------------------------

#[serializable_retry(max = 2, backoff(exponential, base = "1ms", cap = "4ms"))]
pub(super) async fn with_anyhow(tx: &mut MockTx<i64>) -> anyhow::Result<i64> {
    tx.execute("bump").context("bumping the counter")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

#[serializable_retry(max = 2, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn with_from(tx: &mut MockTx<i64>) -> Result<i64, AppError> {
    tx.execute("bump")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

/// The repository layer's error: wraps `sqlx::Error`.
#[derive(Debug, thiserror::Error)]
pub(super) enum RepoError {
    #[error("repository failed")]
    Db(#[from] sqlx::Error),
}

/// The service layer's error: wraps the repository's, so `sqlx::Error` is two `source()`s deep.
#[derive(Debug, thiserror::Error)]
pub(super) enum ServiceError {
    #[error("transfer failed")]
    Repo(#[source] RepoError),
    #[allow(dead_code)]
    #[error("business rule")]
    Rule,
}

impl From<sqlx::Error> for ServiceError {
    fn from(err: sqlx::Error) -> Self {
        ServiceError::Repo(RepoError::Db(err))
    }
}

#[serializable_retry(max = 2, backoff(exponential, base = "1ms", cap = "4ms"))]
pub(super) async fn with_nested(tx: &mut MockTx<i64>) -> Result<i64, ServiceError> {
    tx.execute("bump")
        .map_err(RepoError::from)
        .map_err(ServiceError::Repo)?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

/// The most common way to wrap `sqlx::Error` in an application enum.
#[derive(Debug, thiserror::Error)]
enum TransparentError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

#[serializable_retry(max = 2, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn with_transparent(tx: &mut MockTx<i64>) -> Result<i64, TransparentError> {
    tx.execute("bump")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

#[serializable_retry(max = 2, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn with_boxed(tx: &mut MockTx<i64>) -> Result<i64, Box<dyn StdError + Send + Sync>> {
    tx.execute("bump")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

/// Checks one error type: a 40001 in the body on attempt 1 is retried; 40001 on both attempts
/// exhausts `max = 2` and the returned error still carries the SQLSTATE.
macro_rules! check_error_type {
    ($f:ident, $as_dyn:expr) => {{
        let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("40001"));
        assert_eq!($f(&db).await.unwrap(), 1, stringify!($f));
        assert_eq!(db.attempts(), 2, stringify!($f));
        assert_eq!(db.state(), 1, stringify!($f));

        let db = failing(1..=2, Phase::Body, "40001");
        let err = $f(&db).await.unwrap_err();
        assert_eq!(db.attempts(), 2, stringify!($f));
        let as_dyn: fn(&_) -> &(dyn StdError + 'static) = $as_dyn;
        assert_eq!(
            sqlstate(as_dyn(&err)),
            Some(SqlState::SERIALIZATION_FAILURE),
            stringify!($f)
        );
    }};
}

#[tokio::test(start_paused = true)]
async fn sqlx_error_is_classified() {
    check_error_type!(bump2, |e: &sqlx::Error| e);
}

#[tokio::test(start_paused = true)]
async fn anyhow_error_with_context_is_classified() {
    check_error_type!(with_anyhow, |e: &anyhow::Error| e.as_ref());
    // The context is kept on the returned error.
    let db = failing(1..=2, Phase::Body, "40001");
    let err = with_anyhow(&db).await.unwrap_err();
    assert_eq!(err.to_string(), "bumping the counter");
}

#[tokio::test(start_paused = true)]
async fn thiserror_from_is_classified() {
    check_error_type!(with_from, |e: &AppError| e);
}

#[tokio::test(start_paused = true)]
async fn thiserror_two_levels_deep_is_classified() {
    check_error_type!(with_nested, |e: &ServiceError| e);
    let db = failing(1..=2, Phase::Body, "40001");
    assert!(matches!(
        with_nested(&db).await.unwrap_err(),
        ServiceError::Repo(RepoError::Db(_))
    ));
}

#[tokio::test(start_paused = true)]
#[allow(clippy::borrowed_box)] // the body's error type is the box itself
async fn boxed_dyn_error_is_classified() {
    check_error_type!(with_boxed, |e: &Box<dyn StdError + Send + Sync>| &**e);
}

/// BUG (retry-core/src/classify.rs, `find_sqlx_error`): `#[error(transparent)]` forwards
/// `source()` to the wrapped `sqlx::Error`'s own source, the `Box<dyn DatabaseError>`, so the
/// chain never contains a `sqlx::Error` and a 40001 is classified `Permanent`.
#[tokio::test(start_paused = true)]
async fn thiserror_transparent_is_classified() {
    check_error_type!(with_transparent, |e: &TransparentError| e);
}
