// `&mut` arguments: restored before a retry (`T: Clone`), kept with `#[keep]` (any `T`, unsized
// included), and `Option<&mut T>` reborrowed for each attempt.
use sqlx::{PgConnection, PgPool};
use sqlx_retry::serializable_retry;

#[serializable_retry]
async fn restored(tx: &mut PgConnection, out: &mut Vec<i64>) -> Result<(), sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *tx).await?;
    out.push(n);
    Ok(())
}

#[serializable_retry]
async fn kept(
    tx: &mut PgConnection,
    #[keep] attempts: &mut u32,
    #[keep] sink: &mut dyn std::io::Write,
    #[keep] bytes: &mut [u8],
) -> Result<(), sqlx::Error> {
    *attempts += 1;
    let _ = sink.write_all(b"attempt\n");
    bytes[0] = 1;
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    Ok(())
}

#[serializable_retry]
async fn optional(
    tx: &mut PgConnection,
    out: Option<&mut Vec<i64>>,
    #[keep] count: Option<&mut u32>,
) -> Result<(), sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *tx).await?;
    if let Some(out) = out {
        out.push(n);
    }
    if let Some(count) = count {
        *count += 1;
    }
    Ok(())
}

#[serializable_retry]
async fn pattern(tx: &mut PgConnection, mut out: &mut String) -> Result<(), sqlx::Error> {
    let more = String::new();
    out.push('x');
    out = &mut *out;
    out.push_str(&more);
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    Ok(())
}

#[allow(dead_code)]
async fn call(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut out = Vec::new();
    restored(pool, &mut out).await?;
    let mut attempts = 0;
    let mut sink = Vec::new();
    let mut bytes = [0u8; 4];
    kept(pool, &mut attempts, &mut sink, &mut bytes).await?;
    optional(pool, Some(&mut out), None).await?;
    optional(pool, None, Some(&mut attempts)).await?;
    let mut s = String::new();
    pattern(pool, &mut s).await?;
    Ok(())
}

fn main() {}
