// A pool as the parameter type: one error on the type, saying to take the connection.
use sqlx::PgPool;
use sqlx_retry::serializable_retry;

#[serializable_retry]
async fn f(tx: &mut PgPool, n: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT $1").bind(n).fetch_one(&*tx).await
}

// The caller compiles: the only error is the one above.
async fn caller(pool: &sqlx::PgPool) {
    let _ = f(pool, 1).await;
}

fn main() {}
