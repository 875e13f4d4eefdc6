// A transaction as the parameter type: one error on the type, saying to take the connection.
use sqlx::Postgres;
use sqlx_retry::serializable_retry;

#[serializable_retry]
async fn f(tx: &mut sqlx::Transaction<'_, Postgres>, n: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT $1").bind(n).fetch_one(&mut **tx).await
}

// The callers compile: the only error is the one above.
async fn caller(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    let _ = f(pool, 1).await;
    let mut tx = pool.begin().await?;
    let _ = f(&mut tx, 1).await;
    Ok(())
}

fn main() {}
