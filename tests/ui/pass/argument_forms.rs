// Argument forms: a tuple pattern, `mut`, `&mut Vec`, an owned `String` moved in the body,
// a shared reference.
use sqlx::{PgConnection, PgPool};
use sqlx_retry::serializable_retry;

#[serializable_retry]
async fn pattern(tx: &mut PgConnection, (a, b): (i64, i64)) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE t SET a = $1, b = $2")
        .bind(a)
        .bind(b)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[serializable_retry]
async fn mutable(tx: &mut PgConnection, mut n: i64) -> Result<i64, sqlx::Error> {
    n += 1;
    sqlx::query("SELECT $1").bind(n).execute(&mut *tx).await?;
    Ok(n)
}

#[serializable_retry]
async fn collect(tx: &mut PgConnection, out: &mut Vec<i64>) -> Result<(), sqlx::Error> {
    // Each attempt reborrows `out`; a real function would clear it first.
    out.clear();
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM t")
        .fetch_all(&mut *tx)
        .await?;
    out.extend(ids);
    Ok(())
}

#[serializable_retry]
async fn rename(tx: &mut PgConnection, id: i64, name: String) -> Result<(), sqlx::Error> {
    // `name` is moved into `bind`: each attempt has its own clone.
    sqlx::query("UPDATE users SET name = $2 WHERE id = $1")
        .bind(id)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[serializable_retry]
async fn by_ref(tx: &mut PgConnection, names: &[String], note: &str) -> Result<usize, sqlx::Error> {
    sqlx::query("SELECT $1")
        .bind(note)
        .execute(&mut *tx)
        .await?;
    Ok(names.len())
}

#[allow(dead_code)]
async fn call(pool: &PgPool) -> Result<(), sqlx::Error> {
    pattern(pool, (1, 2)).await?;
    mutable(pool, 1).await?;
    let mut out = Vec::new();
    collect(pool, &mut out).await?;
    out.push(1);
    let name = String::from("ada");
    rename(pool, 1, name.clone()).await?;
    rename(pool, 1, name).await?;
    by_ref(pool, &[String::from("a")], "note").await?;
    Ok(())
}

fn main() {}
