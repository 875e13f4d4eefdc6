use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

struct Service;

impl Service {
    #[serializable_retry]
    async fn f(self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        Ok(())
    }
}

// The caller compiles: the only error is the one above.
async fn caller(pool: &sqlx::PgPool) {
    let _ = Service.f(pool).await;
}

fn main() {}
