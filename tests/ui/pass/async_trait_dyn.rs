// `#[async_trait]` impls: the attribute recognises the boxed async block and retries its body,
// keeping the trait's signature, so the repository works behind `dyn Trait`.
use sqlx::{PgConnection, PgPool};
use sqlx_retry::serializable_retry;

#[async_trait::async_trait]
trait Accounts: Send + Sync {
    async fn deposit(&self, tx: &mut PgConnection, id: i64, amount: i64) -> Result<(), sqlx::Error>;
    async fn audit(&mut self, tx: &mut PgConnection) -> Result<i64, sqlx::Error>;
}

#[derive(Clone)]
struct PgAccounts {
    audits: u64,
}

#[async_trait::async_trait]
impl Accounts for PgAccounts {
    #[serializable_retry(max = 3)]
    async fn deposit(&self, tx: &mut PgConnection, id: i64, amount: i64) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE accounts SET balance = balance + $2 WHERE id = $1")
            .bind(id)
            .bind(amount)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    // `&mut self` is restored before a retry, as in any annotated method.
    #[serializable_retry]
    async fn audit(&mut self, tx: &mut PgConnection) -> Result<i64, sqlx::Error> {
        self.audits += 1;
        sqlx::query_scalar("SELECT count(*) FROM accounts")
            .fetch_one(&mut *tx)
            .await
    }
}

async fn through_dyn(accounts: &mut dyn Accounts, pool: &PgPool) -> Result<i64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    accounts.deposit(&mut conn, 1, 10).await?;
    accounts.audit(&mut conn).await
}

#[allow(dead_code)]
async fn call(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut accounts: Box<dyn Accounts> = Box::new(PgAccounts { audits: 0 });
    through_dyn(&mut *accounts, pool).await?;
    let pool = pool.clone();
    tokio::spawn(async move { through_dyn(&mut PgAccounts { audits: 0 }, &pool).await });
    Ok(())
}

fn main() {}
