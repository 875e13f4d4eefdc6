use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

#[serializable_retry]
async fn f(tx: &mut PgConnection) {
    let _ = sqlx::query("SELECT 1").execute(&mut *tx).await;
}

// The caller compiles: the only error is the one above.
async fn caller(pool: &sqlx::PgPool) {
    f(pool).await;
}

fn main() {}
