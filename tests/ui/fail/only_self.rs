use sqlx_retry::serializable_retry;

struct Service;

impl Service {
    #[serializable_retry]
    async fn f(&self) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

// The caller compiles: the only error is the one above.
async fn caller(service: &Service) {
    let _ = service.f().await;
}

fn main() {}
