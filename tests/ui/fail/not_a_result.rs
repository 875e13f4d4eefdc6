// A return type that is not a `Result`: one error on it, none inside the library.
use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

#[serializable_retry]
async fn f(tx: &mut PgConnection, n: i64) -> Option<i64> {
    sqlx::query_scalar("SELECT $1").bind(n).fetch_one(&mut *tx).await.ok()
}

// The caller compiles: the only error is the one above.
async fn caller(pool: &sqlx::PgPool) {
    let _: Option<i64> = f(pool, 1).await;
}

fn main() {}
