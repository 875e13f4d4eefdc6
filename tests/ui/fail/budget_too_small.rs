// A budget that can never allow a retry.
use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

#[serializable_retry(budget = "1ns")]
async fn f(tx: &mut PgConnection, n: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT $1").bind(n).fetch_one(&mut *tx).await
}

// The caller compiles: the only error is the one above.
async fn caller(pool: &sqlx::PgPool) {
    let _ = f(pool, 1).await;
}

fn main() {}
