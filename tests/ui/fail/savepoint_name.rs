use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

#[serializable_retry(savepoint = "restart; DROP TABLE accounts")]
async fn transfer(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    Ok(())
}

async fn caller(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
    transfer(&pool).await
}

fn main() {}
