use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

#[serializable_retry(isolation = "repeatable_read", replica)]
async fn f(tx: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT 1").fetch_one(&mut *tx).await
}

// The caller compiles: the only error is the one above.
async fn caller(cluster: &sqlx_retry::Cluster) {
    let _ = f(cluster).await;
}

fn main() {}
