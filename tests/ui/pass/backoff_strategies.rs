use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

#[serializable_retry(backoff(adaptive, base = "1ms", cap = "50ms"))]
async fn adaptive(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    Ok(())
}

#[serializable_retry(backoff(exponential, base = "1ms", cap = "50ms"))]
async fn exponential(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    Ok(())
}

#[serializable_retry(backoff(decorrelated, cap = "50ms"))]
async fn decorrelated(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    Ok(())
}

#[serializable_retry(backoff(none))]
async fn immediately(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    Ok(())
}

#[allow(dead_code)]
async fn callers(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    adaptive(&pool).await?;
    exponential(&pool).await?;
    decorrelated(&pool).await?;
    immediately(&pool).await
}

fn main() {}
