// Returning the transaction's connection: it is committed before the caller gets it.
use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

#[serializable_retry]
async fn f(tx: &mut PgConnection) -> Result<&mut PgConnection, sqlx::Error> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    Ok(tx)
}

// The caller compiles: the only error is the one above.
async fn caller(pool: &sqlx::PgPool) {
    let _ = f(pool).await;
}

fn main() {}
