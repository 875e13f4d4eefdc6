// `retry_on` alone, with one code and with a trailing comma.
use sqlx::{PgConnection, PgPool};
use sqlx_retry::serializable_retry;

#[serializable_retry(retry_on = ["23505"])]
async fn insert(tx: &mut PgConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO t (id) VALUES ($1)")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[serializable_retry(retry_on = ["23505", "23P01", "55P03",])]
async fn insert_many(tx: &mut PgConnection, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO t (id) VALUES ($1)")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[allow(dead_code)]
async fn call(pool: &PgPool) -> Result<(), sqlx::Error> {
    insert(pool, 1).await?;
    insert_many(pool, 1).await
}

fn main() {}
