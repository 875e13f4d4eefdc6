use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

#[serializable_retry(read_only, replica)]
async fn f(tx: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT 1").fetch_one(&mut *tx).await
}

#[serializable_retry(read_only, isolation = "serializable", replica)]
async fn g(tx: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT 1").fetch_one(&mut *tx).await
}

// The callers compile: the only errors are the two above.
async fn caller(cluster: &sqlx_retry::Cluster) {
    let _ = f(cluster).await;
    let _ = g(&cluster.session()).await;
}

fn main() {}
