use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

#[derive(Debug)]
struct AppError(sqlx::Error);

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError(e)
    }
}

#[serializable_retry]
async fn f(tx: &mut PgConnection) -> Result<(), AppError> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    Ok(())
}

// The caller compiles: the only error is the one above.
async fn caller(pool: &sqlx::PgPool) {
    let _ = f(pool).await;
}

fn main() {}
