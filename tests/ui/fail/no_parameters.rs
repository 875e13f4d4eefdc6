use sqlx_retry::serializable_retry;

#[serializable_retry]
async fn f() -> Result<(), sqlx::Error> {
    Ok(())
}

fn main() {}
