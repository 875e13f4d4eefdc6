use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

#[serializable_retry]
async fn f(tx: &PgConnection) -> Result<(), sqlx::Error> {
    let _ = tx;
    Ok(())
}

fn main() {}
