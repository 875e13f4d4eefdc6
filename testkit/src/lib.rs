//! Test harness for `sqlx-retry`: a PostgreSQL server for tests, per-test schemas and
//! a fault-injecting proxy.
//!
//! * [`postgres_url`] / [`PgServer`]: `$DATABASE_URL`, or a throwaway cluster started
//!   from the local PostgreSQL binaries, one per process, removed when the process
//!   exits. [`PgServer::restart`] / [`postgres_restart_fast`] simulate a crash.
//! * [`isolated_pool`]: a [`sqlx::PgPool`] whose `search_path` is a fresh schema, so
//!   parallel tests don't see each other's tables.
//! * [`PgProxy`]: forwards PostgreSQL traffic, counts round trips ([`ProxyStats`])
//!   and cuts connections right before or right after a chosen message
//!   ([`Fault`], [`Matcher`]), e.g. to lose the answer to a `COMMIT` that landed.
//! * [`mysql_url`] / [`MariaDbServer`]: `$MYSQL_DATABASE_URL`, or a throwaway MariaDB
//!   started from the local binaries, one per process, removed when the process exits;
//!   [`isolated_mysql_database`] / [`isolated_mysql_pool`]: a fresh database per test.
//! * [`PgReplicaPair`]: a throwaway primary + hot standby joined by streaming replication,
//!   one per process, with replay pause/resume/wait and a standby that can be stopped.
//! * [`PgBouncer`]: a real pgbouncer (transaction pooling by default) in front of the test
//!   server, with its admin console and a way to kill its server connections.
//! * [`global_retries`] / [`with_retry_log`]: the retry loop's "retrying transaction" events,
//!   captured for the whole process or for one future, to count retries by SQLSTATE.
//!
//! ```no_run
//! # async fn demo() -> Result<(), sqlx::Error> {
//! use sqlx_retry_testkit::{Fault, Matcher, PgProxy, isolated_schema};
//!
//! let schema = isolated_schema().await;
//! let proxy = PgProxy::for_test_db().await;
//! let pool = schema.pool_via(&proxy, 4).await;
//! sqlx::raw_sql("CREATE TABLE t (id int)").execute(&pool).await?;
//!
//! let cut = proxy.arm(Fault::CutBeforeForwarding(Matcher::QueryStartsWith("COMMIT")));
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO t VALUES (1)").execute(&mut *tx).await?;
//! assert!(tx.commit().await.is_err());
//! assert!(cut.fired());
//! # Ok(())
//! # }
//! ```

mod mariadb;
mod pgbouncer;
mod process;
mod proxy;
mod replica;
mod retries;
mod schema;
mod server;

pub use mariadb::{
    IsolatedMySql, MariaDbServer, isolated_mysql_database, isolated_mysql_pool,
    mysql_connect_options, mysql_url, quote_mysql_ident,
};
pub use pgbouncer::{BouncedDatabase, PgBouncer, PoolMode, ServerConnection};
pub use proxy::{
    CUT_AFTER_GRACE, Fault, FaultHandle, FrontendMessage, IntoUpstream, Matcher, PgProxy,
    ProxyStats, Upstream,
};
pub use replica::{PgReplicaPair, ReplicaSchema, STANDBY_MAX_DELAY};
pub use retries::{Retry, RetryLog, global_retries, with_event_log, with_retry_log};
pub use schema::{
    Isolated, connect_options, drop_schema, isolated_pool, isolated_pool_via, isolated_schema,
    quote_ident, schema_options, with_search_path,
};
pub use server::{PgServer, ServerError, postgres_restart_fast, postgres_url};
