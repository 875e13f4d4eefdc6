use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

#[serializable_retry]
async fn f(tx: &mut PgConnection) -> Result<(), String> {
    sqlx::query("SELECT 1")
        .execute(&mut *tx)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

// The caller compiles: the only error is the one above.
async fn caller(pool: &sqlx::PgPool) {
    let _ = f(pool).await;
}

fn main() {}
