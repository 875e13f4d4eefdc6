// A `&mut` argument is restored before a retry, so its type must be `Clone`: one error on the
// type, naming the opt-out `#[keep]`.
use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

struct Log {
    lines: Vec<String>,
}

#[serializable_retry]
async fn f(tx: &mut PgConnection, log: &mut Log) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    log.lines.push("selected".into());
    Ok(())
}

// The caller compiles: the only error is the one above.
async fn caller(pool: &sqlx::PgPool, log: &mut Log) {
    let _ = f(pool, log).await;
}

fn main() {}
