use std::sync::LazyLock;

use sqlx::PgConnection;
use sqlx_retry::{Policy, serializable_retry};

static ACCOUNTS: LazyLock<Policy> = LazyLock::new(Policy::default);
static NOT_A_POLICY: LazyLock<u32> = LazyLock::new(|| 5);

#[serializable_retry(policy = "ACCOUNTS")]
async fn f(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    Ok(())
}

// The caller compiles: the only error is the one above.
async fn caller(pool: &sqlx::PgPool) {
    let _ = f(pool).await;
}

fn main() {}
