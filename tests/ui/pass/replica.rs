//! A `replica` function takes every source: a cluster, a session, a pool, a connection.

use sqlx::PgConnection;
use sqlx_retry::{Cluster, serializable_retry};

#[serializable_retry(read_only, isolation = "repeatable_read", replica)]
async fn balance(tx: &mut PgConnection, id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await
}

#[serializable_retry(read_only, isolation = "read_committed", replica, max = 3)]
async fn count(tx: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM accounts")
        .fetch_one(&mut *tx)
        .await
}

fn assert_send<T: Send>(t: T) -> T {
    t
}

#[allow(dead_code)]
async fn callers(cluster: &Cluster, pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    balance(cluster, 1).await?;
    let session = cluster.session();
    assert_send(balance(&session, 1)).await?;
    tokio::spawn({
        let session = session.clone();
        async move { count(&session).await }
    });
    balance(pool, 1).await?;
    let mut conn = pool.acquire().await?;
    count(&mut *conn).await?;
    Ok(())
}

fn main() {}
