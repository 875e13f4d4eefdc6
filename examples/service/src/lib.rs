//! An axum service whose handlers call `#[serializable_retry]` functions: the path a sqlx user
//! walks from an HTTP request to a retried transaction and back to a status code.
//!
//! - [`bank`]: the service functions, each at the isolation level it needs, with sqlx's
//!   compile-checked queries.
//! - [`http`]: the routes and the mapping of errors to statuses.
//!
//! `cargo run -p sqlx-retry-example-service` starts it (see `src/main.rs`).

pub mod bank;
pub mod http;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The migrations in `migrations/`, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Installs the Prometheus recorder as the process's `metrics` recorder (once; later calls
/// return the same handle) and registers the descriptions of sqlx-retry's metrics.
///
/// # Panics
///
/// If another `metrics` recorder was installed first.
pub fn install_metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .install_recorder()
                .expect("no other metrics recorder is installed");
            sqlx_retry::metrics::describe();
            handle
        })
        .clone()
}
