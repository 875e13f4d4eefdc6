// `policy = PATH`: functions that contend on the same rows share one `static` policy, and so its
// priority turns and its adaptive backoff's estimate. A free function, a method, a trait impl
// with `keep_signature`, a generic function, and a path through a module.
use std::sync::LazyLock;

use sqlx::{PgConnection, PgPool};
use sqlx_retry::{Backoff, Policy, serializable_retry};

static ACCOUNTS: LazyLock<Policy> = LazyLock::new(|| {
    Policy::builder()
        .max_attempts(8)
        .backoff(Backoff::none())
        .build()
        .expect("a valid policy")
});

mod policies {
    pub static AUDIT: std::sync::LazyLock<sqlx_retry::Policy> =
        std::sync::LazyLock::new(sqlx_retry::Policy::default);
}

#[serializable_retry(policy = ACCOUNTS)]
async fn withdraw(tx: &mut PgConnection, id: i64, amount: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("UPDATE accounts SET balance = balance - $2 WHERE id = $1")
        .bind(id)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
    Ok(done.rows_affected())
}

struct Service;

impl Service {
    #[serializable_retry(policy = crate::ACCOUNTS, crate = "::sqlx_retry")]
    async fn deposit(&self, tx: &mut PgConnection, id: i64, amount: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE accounts SET balance = balance + $2 WHERE id = $1")
            .bind(id)
            .bind(amount)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

trait Audit {
    async fn note(&self, tx: &mut PgConnection, text: &str) -> Result<(), sqlx::Error>;
}

impl Audit for Service {
    #[serializable_retry(keep_signature, policy = policies::AUDIT)]
    async fn note(&self, tx: &mut PgConnection, text: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO audit (note) VALUES ($1)")
            .bind(text)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

#[serializable_retry(policy = self::ACCOUNTS)]
async fn set_balance<T: Into<i64> + Clone + Send + Sync>(
    tx: &mut PgConnection,
    id: i64,
    balance: T,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE accounts SET balance = $2 WHERE id = $1")
        .bind(id)
        .bind(balance.into())
        .execute(&mut *tx)
        .await?;
    Ok(())
}

async fn callers(pool: &PgPool, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    withdraw(pool, 1, 10).await?;
    Service.deposit(pool, 2, 10).await?;
    Service.note(conn, "moved 10").await?;
    set_balance(pool, 3, 0_i32).await?;
    Ok(())
}

fn main() {
    let _ = callers;
}
