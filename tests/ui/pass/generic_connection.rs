// A function generic over its connection type.
use std::future::Future;

use sqlx::{PgConnection, PgPool};
use sqlx_retry::serializable_retry;

trait Repo {
    fn get(&mut self) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;
}

impl Repo for PgConnection {
    fn get(&mut self) -> impl Future<Output = Result<i64, sqlx::Error>> + Send {
        sqlx::query_scalar("SELECT n FROM counters WHERE id = 1").fetch_one(self)
    }
}

#[serializable_retry]
async fn twice<C: Repo + Send>(tx: &mut C, factor: i64) -> Result<i64, sqlx::Error> {
    let n = tx.get().await?;
    Ok(n * factor)
}

#[serializable_retry]
async fn twice_where<C>(tx: &mut C) -> Result<i64, sqlx::Error>
where
    C: Repo + Send,
{
    tx.get().await
}

#[allow(dead_code)]
async fn call(pool: &PgPool, conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    let a = twice(pool, 2).await?;
    let b = twice::<PgConnection>(&mut *conn, 3).await?;
    let c = twice_where(pool).await?;
    Ok(a + b + c)
}

fn main() {}
