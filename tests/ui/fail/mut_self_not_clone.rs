// `&mut self` is restored before a retry, so `Self` must be `Clone`: one error, naming `#[keep]`.
use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

struct Service {
    calls: u64,
}

impl Service {
    #[serializable_retry]
    async fn f(&mut self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        self.calls += 1;
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        Ok(())
    }
}

// The caller compiles: the only error is the one above.
async fn caller(pool: &sqlx::PgPool, service: &mut Service) {
    let _ = service.f(pool).await;
}

fn main() {}
