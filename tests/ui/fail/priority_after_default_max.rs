use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

#[serializable_retry(priority_after = 5)]
async fn f(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    Ok(())
}

// The caller compiles: the only error is the one above.
async fn caller(pool: &sqlx::PgPool) {
    let _ = f(pool).await;
}

fn main() {}
