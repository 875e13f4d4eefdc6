use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

struct Order {
    id: i64,
}

#[serializable_retry]
async fn f(tx: &mut PgConnection, (n, order): (i64, Order)) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE orders SET n = $2 WHERE id = $1")
        .bind(order.id)
        .bind(n)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

// The caller compiles: the only error is the one above.
async fn caller(pool: &sqlx::PgPool, order: Order) {
    let _ = f(pool, (1, order)).await;
}

fn main() {}
