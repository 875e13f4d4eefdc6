use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

struct Order {
    id: i64,
}

#[serializable_retry]
async fn f(tx: &mut PgConnection, order: Order) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM orders WHERE id = $1")
        .bind(order.id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

// The caller compiles: the only error is the one above.
async fn caller(pool: &sqlx::PgPool, order: Order) {
    let _ = f(pool, order).await;
}

fn main() {}
