use sqlx_retry::serializable_retry;

struct Service;

impl Service {
    #[serializable_retry]
    async fn f(&self) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

fn main() {}
