use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

#[serializable_retry]
fn f(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    let _ = tx;
    Ok(())
}

fn main() {}
