// `#[tracing::instrument]` above or below the attribute: the transaction parameter keeps its
// name, so `skip(tx)` finds it in both orders.
use sqlx::{PgConnection, PgPool};
use sqlx_retry::serializable_retry;

#[tracing::instrument(skip(tx))]
#[serializable_retry]
async fn above(tx: &mut PgConnection, id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT $1").bind(id).fetch_one(&mut *tx).await
}

#[serializable_retry]
#[tracing::instrument(skip(tx), err)]
async fn below(tx: &mut PgConnection, id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT $1").bind(id).fetch_one(&mut *tx).await
}

#[serializable_retry(max = 3)]
#[tracing::instrument(skip_all, fields(id))]
async fn below_skip_all(tx: &mut PgConnection, id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT $1").bind(id).fetch_one(&mut *tx).await
}

#[allow(dead_code)]
async fn call(pool: &PgPool) -> Result<(), sqlx::Error> {
    above(pool, 1).await?;
    below(pool, 1).await?;
    below_skip_all(pool, 1).await?;
    let pool = pool.clone();
    tokio::spawn(async move { below(&pool, 2).await });
    Ok(())
}

fn main() {}
