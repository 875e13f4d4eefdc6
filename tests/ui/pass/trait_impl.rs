// Trait impls: `keep_signature` keeps `tx: &mut PgConnection` (the trait's signature) and runs
// the retried transaction on that connection; inside a caller's open transaction it joins it.
// Used through a generic and through the trait.
use sqlx::{PgConnection, PgPool};
use sqlx_retry::serializable_retry;

trait Accounts {
    async fn transfer(&self, tx: &mut PgConnection, from: i64, to: i64, amount: i64)
    -> Result<(), sqlx::Error>;
}

struct PgAccounts {
    fee: i64,
}

impl Accounts for PgAccounts {
    #[serializable_retry(keep_signature, max = 3)]
    async fn transfer(
        &self,
        tx: &mut PgConnection,
        from: i64,
        to: i64,
        amount: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE accounts SET balance = balance - $2 WHERE id = $1")
            .bind(from)
            .bind(amount + self.fee)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE accounts SET balance = balance + $2 WHERE id = $1")
            .bind(to)
            .bind(amount)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}

async fn pay<A: Accounts>(accounts: &A, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    accounts.transfer(conn, 1, 2, 10).await
}

// `keep_signature` on a free function too.
#[serializable_retry(keep_signature)]
async fn audit(tx: &mut PgConnection, note: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO audit (note) VALUES ($1)")
        .bind(note)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[allow(dead_code)]
async fn call(pool: &PgPool) -> Result<(), sqlx::Error> {
    let accounts = PgAccounts { fee: 1 };
    let mut conn = pool.acquire().await?;
    pay(&accounts, &mut conn).await?;
    audit(&mut conn, "paid").await?;
    // Inside an open transaction, the call joins it.
    let mut tx = pool.begin().await?;
    accounts.transfer(&mut tx, 2, 1, 5).await?;
    tx.commit().await
}

fn main() {}
