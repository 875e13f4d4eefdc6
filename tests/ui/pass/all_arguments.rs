// Every attribute argument at once.
use sqlx::{PgConnection, PgPool};
use sqlx_retry::serializable_retry;

#[serializable_retry(
    max = 7,
    isolation = "serializable",
    read_only,
    deferrable,
    backoff(base = "2ms", cap = "1.5s"),
    budget = "2s",
    retry_on = ["23505", "55P03"],
    idempotent,
    priority_after = 3,
    crate = "::sqlx_retry",
)]
async fn report(tx: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM accounts")
        .fetch_one(&mut *tx)
        .await
}

#[serializable_retry(
    isolation = "repeatable_read",
    read_only,
    backoff(cap = "10ms"),
    priority_after = none
)]
async fn repeatable(tx: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT 1").fetch_one(&mut *tx).await
}

#[serializable_retry(isolation = "read_committed", backoff(base = "250us"), budget = "1m")]
async fn committed(tx: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT 1").fetch_one(&mut *tx).await
}

#[serializable_retry()]
async fn empty_parens(tx: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT 1").fetch_one(&mut *tx).await
}

#[allow(dead_code)]
async fn call(pool: &PgPool) -> Result<i64, sqlx::Error> {
    Ok(report(pool).await?
        + repeatable(pool).await?
        + committed(pool).await?
        + empty_parens(pool).await?)
}

fn main() {}
