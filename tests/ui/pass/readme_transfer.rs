// The README example, called with a pool and with a single connection.
use sqlx::{Connection, PgConnection, PgPool};
use sqlx_retry::serializable_retry;

#[serializable_retry]
async fn transfer(
    tx: &mut PgConnection,
    from: i64,
    to: i64,
    amount: i64,
) -> Result<bool, sqlx::Error> {
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1")
        .bind(from)
        .fetch_one(&mut *tx)
        .await?;
    if balance < amount {
        return Ok(false);
    }
    sqlx::query("UPDATE accounts SET balance = balance - $2 WHERE id = $1")
        .bind(from)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE accounts SET balance = balance + $2 WHERE id = $1")
        .bind(to)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
    Ok(true)
}

#[allow(dead_code)]
async fn with_pool(pool: &PgPool) -> Result<bool, sqlx::Error> {
    transfer(pool, 1, 2, 100).await
}

#[allow(dead_code)]
async fn with_connection(url: &str) -> Result<bool, sqlx::Error> {
    let mut conn = PgConnection::connect(url).await?;
    let first = transfer(&mut conn, 1, 2, 100).await?;
    // The connection is only reborrowed: it can be used again.
    let second = transfer(&mut conn, 2, 1, 100).await?;
    Ok(first && second)
}

fn main() {}
