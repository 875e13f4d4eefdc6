use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

#[serializable_retry(backoff(linear, base = "5ms"))]
async fn f(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    Ok(())
}

fn main() {}
