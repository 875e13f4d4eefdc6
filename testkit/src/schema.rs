//! Per-test schemas so that parallel tests in one database don't see each other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};

use crate::process::random_u64;
use crate::proxy::PgProxy;
use crate::server::postgres_url;

/// Connect options for the test database ([`postgres_url`]).
///
/// # Panics
///
/// If no server can be provided (see [`postgres_url`]).
pub fn connect_options() -> PgConnectOptions {
    let url = postgres_url();
    url.parse()
        .unwrap_or_else(|e| panic!("invalid test database URL {url:?}: {e}"))
}

/// [`connect_options`] whose connections use `schema` as their `search_path`, so
/// unqualified table names resolve (and are created) in that schema.
pub fn schema_options(schema: &str) -> PgConnectOptions {
    with_search_path(connect_options(), schema)
}

/// Sets the `search_path` of every connection made with `options` to `schema`.
pub fn with_search_path(options: PgConnectOptions, schema: &str) -> PgConnectOptions {
    options.options([("search_path", schema)])
}

/// A unique schema in the test database, created by [`isolated_schema`] or
/// [`isolated_pool`].
///
/// The schema is *not* dropped automatically (the throwaway cluster is deleted
/// anyway); call [`Isolated::drop_schema`] to clean up on a shared server.
#[derive(Debug, Clone)]
pub struct Isolated {
    schema: String,
}

impl Isolated {
    /// The schema name, e.g. `t_1234_7_5f3a9c`.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Direct connect options with `search_path` set to this schema.
    pub fn connect_options(&self) -> PgConnectOptions {
        schema_options(&self.schema)
    }

    /// Connect options through `proxy` with `search_path` set to this schema.
    pub fn proxied_options(&self, proxy: &PgProxy) -> PgConnectOptions {
        proxy.schema_options(&self.schema)
    }

    /// Another pool of at most `max_connections` direct connections to this schema.
    ///
    /// # Panics
    ///
    /// If the pool can't connect.
    pub async fn pool(&self, max_connections: u32) -> PgPool {
        connect_pool(self.connect_options(), max_connections).await
    }

    /// A pool of at most `max_connections` connections to this schema through
    /// `proxy`, so its traffic can be counted and cut.
    ///
    /// # Panics
    ///
    /// If the pool can't connect.
    pub async fn pool_via(&self, proxy: &PgProxy, max_connections: u32) -> PgPool {
        connect_pool(self.proxied_options(proxy), max_connections).await
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(self) -> Result<(), sqlx::Error> {
        drop_schema(&self.schema).await
    }
}

/// Creates a new uniquely named, empty schema (`t_<pid>_<counter>_<random>`) in the
/// test database.
///
/// # Panics
///
/// If no database is available or the schema can't be created.
pub async fn isolated_schema() -> Isolated {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let schema = format!(
        "t_{}_{}_{:06x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        random_u64() & 0xff_ffff
    );
    let result = async {
        let mut conn = PgConnection::connect_with(&connect_options()).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA {}",
            quote_ident(&schema)
        )))
        .execute(&mut conn)
        .await?;
        conn.close().await
    }
    .await;
    if let Err(e) = result {
        panic!("sqlx-retry-testkit: could not create schema {schema}: {e}");
    }
    Isolated { schema }
}

/// A pool of at most `max_connections` connections whose `search_path` is a fresh
/// schema of its own (see [`isolated_schema`]), so parallel tests in one process do
/// not see each other's tables.
///
/// # Panics
///
/// If no database is available or the schema can't be created.
pub async fn isolated_pool(max_connections: u32) -> (PgPool, Isolated) {
    let isolated = isolated_schema().await;
    let pool = isolated.pool(max_connections).await;
    (pool, isolated)
}

/// Like [`isolated_pool`], but the pool connects through `proxy`.
///
/// # Panics
///
/// If no database is available or the schema can't be created.
pub async fn isolated_pool_via(proxy: &PgProxy, max_connections: u32) -> (PgPool, Isolated) {
    let isolated = isolated_schema().await;
    let pool = isolated.pool_via(proxy, max_connections).await;
    (pool, isolated)
}

/// Drops `schema` (if it exists) and everything in it from the test database.
pub async fn drop_schema(schema: &str) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect_with(&connect_options()).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        quote_ident(schema)
    )))
    .execute(&mut conn)
    .await?;
    conn.close().await
}

/// Quotes an SQL identifier: `a"b` becomes `"a""b"`.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

async fn connect_pool(options: PgConnectOptions, max_connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("sqlx-retry-testkit: could not connect a pool: {e}"))
}
