// `Result<impl Trait, E>`: the body defines the hidden type, as without the attribute.
use sqlx::{PgConnection, PgPool};
use sqlx_retry::serializable_retry;

#[serializable_retry]
async fn names(tx: &mut PgConnection) -> Result<impl Iterator<Item = String>, sqlx::Error> {
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM users")
        .fetch_all(&mut *tx)
        .await?;
    Ok(names.into_iter())
}

#[serializable_retry]
async fn shown(tx: &mut PgConnection) -> anyhow::Result<impl std::fmt::Display> {
    let n: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *tx).await?;
    Ok(n)
}

#[allow(dead_code)]
async fn call(pool: &PgPool) -> anyhow::Result<()> {
    for name in names(pool).await? {
        println!("{name}");
    }
    println!("{}", shown(pool).await?);
    Ok(())
}

fn main() {}
