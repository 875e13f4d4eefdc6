// The returned future is `Send`: it can be spawned, with a pool or with a connection opened
// inside the spawned task.
use sqlx::{Connection, PgConnection, PgPool};
use sqlx_retry::serializable_retry;

#[serializable_retry]
async fn transfer(
    tx: &mut PgConnection,
    from: i64,
    to: i64,
    amount: i64,
) -> Result<bool, sqlx::Error> {
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

#[serializable_retry]
async fn rename(tx: &mut PgConnection, id: i64, name: String) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET name = $2 WHERE id = $1")
        .bind(id)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

fn assert_send<T: Send>(_: T) {}

#[allow(dead_code)]
fn spawn_with_pool(pool: PgPool) {
    assert_send(tokio::spawn(async move { transfer(&pool, 1, 2, 3).await }));
}

#[allow(dead_code)]
fn spawn_with_connection(url: String) {
    assert_send(tokio::spawn(async move {
        let mut conn = PgConnection::connect(&url).await?;
        transfer(&mut conn, 1, 2, 3).await
    }));
}

#[allow(dead_code)]
fn spawn_with_owned_argument(pool: PgPool) {
    let name = String::from("ada");
    assert_send(tokio::spawn(async move { rename(&pool, 1, name).await }));
}

#[allow(dead_code)]
fn future_itself_is_send(pool: &PgPool, conn: &mut PgConnection) {
    assert_send(transfer(pool, 1, 2, 3));
    assert_send(transfer(conn, 1, 2, 3));
}

fn main() {}
