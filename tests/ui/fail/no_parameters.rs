use sqlx_retry::serializable_retry;

#[serializable_retry]
async fn f() -> Result<(), sqlx::Error> {
    Ok(())
}

// The caller compiles: the only error is the one above.
async fn caller() {
    let _ = f().await;
}

fn main() {}
