// Error types: anyhow, a thiserror enum wrapping `sqlx::Error`, a boxed error.
use sqlx::{PgConnection, PgPool};
use sqlx_retry::serializable_retry;

#[serializable_retry]
async fn with_anyhow(tx: &mut PgConnection, id: i64) -> anyhow::Result<i64> {
    let n: i64 = sqlx::query_scalar("SELECT n FROM counters WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    if n < 0 {
        anyhow::bail!("negative counter {id}");
    }
    Ok(n)
}

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("insufficient funds in {0}")]
    Insufficient(i64),
}

#[serializable_retry]
async fn with_thiserror(tx: &mut PgConnection, id: i64) -> Result<i64, AppError> {
    let n: i64 = sqlx::query_scalar("SELECT n FROM counters WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    if n < 0 {
        return Err(AppError::Insufficient(id));
    }
    Ok(n)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[serializable_retry]
async fn with_box(tx: &mut PgConnection, id: i64) -> Result<i64, BoxError> {
    let n: i64 = sqlx::query_scalar("SELECT n FROM counters WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    if n < 0 {
        return Err("negative".into());
    }
    Ok(n)
}

#[serializable_retry]
async fn with_box_written_out(
    tx: &mut PgConnection,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    Ok(())
}

#[allow(dead_code)]
async fn call(pool: &PgPool) -> anyhow::Result<()> {
    with_anyhow(pool, 1).await?;
    with_thiserror(pool, 1).await?;
    with_box(pool, 1).await.map_err(|e| anyhow::anyhow!(e))?;
    with_box_written_out(pool)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    Ok(())
}

fn main() {}
