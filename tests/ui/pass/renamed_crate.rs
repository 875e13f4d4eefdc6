// `crate = "…"` when the crate is reachable under another name only.
extern crate sqlx_retry as renamed;

use renamed::serializable_retry;
use sqlx::{PgConnection, PgPool};

#[serializable_retry(crate = "renamed", max = 2)]
async fn bump(tx: &mut PgConnection, id: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("UPDATE counters SET n = n + 1 WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(done.rows_affected())
}

mod inner {
    use sqlx::PgConnection;

    #[renamed::serializable_retry(crate = "::renamed")]
    pub async fn touch(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        Ok(())
    }
}

#[allow(dead_code)]
async fn call(pool: &PgPool) -> Result<u64, sqlx::Error> {
    inner::touch(pool).await?;
    bump(pool, 1).await
}

fn main() {}
