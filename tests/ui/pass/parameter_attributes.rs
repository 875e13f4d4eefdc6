// Attributes on parameters keep working: `#[cfg]` removes the parameter and its per-attempt
// copy together; `#[allow]` still silences the lint on the user's binding; `#[keep]` is
// consumed by the attribute. Built with `-D warnings` semantics: `deny(warnings)` below.
#![deny(warnings)]

use sqlx::{PgConnection, PgPool};
use sqlx_retry::serializable_retry;

#[serializable_retry]
async fn with_cfg(
    tx: &mut PgConnection,
    id: i64,
    #[cfg(any())] debug: bool,
    #[cfg(all())] verbose: bool,
) -> Result<i64, sqlx::Error> {
    #[cfg(any())]
    let _ = debug;
    let _ = verbose;
    sqlx::query_scalar("SELECT $1").bind(id).fetch_one(&mut *tx).await
}

#[serializable_retry]
async fn with_allow(
    tx: &mut PgConnection,
    #[allow(unused_variables)] unused: i64,
    #[allow(unused_mut)] mut count: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT $1").bind(count).fetch_one(&mut *tx).await
}

#[serializable_retry]
async fn with_cfg_mut(
    tx: &mut PgConnection,
    #[cfg(any())] log: &mut Vec<String>,
    #[cfg(all())] seen: &mut Vec<i64>,
) -> Result<(), sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *tx).await?;
    seen.push(n);
    Ok(())
}

#[allow(dead_code)]
async fn call(pool: &PgPool) -> Result<(), sqlx::Error> {
    with_cfg(pool, 1, true).await?;
    with_allow(pool, 1, 2).await?;
    let mut seen = Vec::new();
    with_cfg_mut(pool, &mut seen).await?;
    Ok(())
}

fn main() {}
