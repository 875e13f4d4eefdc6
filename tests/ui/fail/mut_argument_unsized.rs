// An unsized `&mut` argument cannot be cloned to restore it: one error on the type, naming
// `#[keep]`.
use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

#[serializable_retry]
async fn f(tx: &mut PgConnection, sink: &mut dyn std::io::Write) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    let _ = sink.write_all(b"done\n");
    Ok(())
}

// The caller compiles: the only error is the one above.
async fn caller(pool: &sqlx::PgPool, sink: &mut Vec<u8>) {
    let _ = f(pool, sink).await;
}

fn main() {}
