// Methods: `&self` and `&mut self` receivers, the transaction being the first typed parameter.
use sqlx::{PgConnection, PgPool};
use sqlx_retry::serializable_retry;

struct Service {
    fee: i64,
}

impl Service {
    #[serializable_retry]
    async fn transfer(
        &self,
        tx: &mut PgConnection,
        from: i64,
        amount: i64,
    ) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("UPDATE accounts SET balance = balance - $2 WHERE id = $1")
            .bind(from)
            .bind(amount + self.fee)
            .execute(&mut *tx)
            .await?;
        Ok(done.rows_affected())
    }
}

#[derive(Clone)]
struct Counter {
    calls: u64,
}

impl Counter {
    #[serializable_retry(max = 3)]
    async fn bump(&mut self, tx: &mut PgConnection, id: i64) -> Result<u64, sqlx::Error> {
        // Each attempt reborrows `self`, restored to its value from before the call on a retry.
        self.calls += 1;
        sqlx::query("UPDATE counters SET n = n + 1 WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Ok(self.calls)
    }
}

#[allow(dead_code)]
async fn use_them(pool: &PgPool) -> Result<(), sqlx::Error> {
    let service = Service { fee: 1 };
    service.transfer(pool, 1, 10).await?;
    service.transfer(pool, 2, 20).await?;
    let mut counter = Counter { calls: 0 };
    counter.bump(pool, 7).await?;
    counter.bump(pool, 7).await?;
    Ok(())
}

fn main() {}
