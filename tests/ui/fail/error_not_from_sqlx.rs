use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

#[derive(Debug, thiserror::Error)]
#[error("insufficient funds")]
struct InsufficientFunds;

#[serializable_retry]
async fn f(tx: &mut PgConnection) -> Result<(), InsufficientFunds> {
    let _ = tx;
    Err(InsufficientFunds)
}

// The caller compiles: the only error is the one above.
async fn caller(pool: &sqlx::PgPool) {
    let _ = f(pool).await;
}

fn main() {}
