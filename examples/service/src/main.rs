//! `cargo run -p sqlx-retry-example-service`: the service on a throwaway PostgreSQL (or
//! `DATABASE_URL`), listening on `SERVICE_ADDR` (default `127.0.0.1:3000`). `RUST_LOG` filters
//! the logs (default `info`, which shows each retry).

use std::io::IsTerminal;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx_retry_example_service::http::{AppState, router};
use sqlx_retry_example_service::{MIGRATOR, bank, install_metrics};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::stdout().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let metrics = install_metrics();
    // Drains the histograms between scrapes, as the exporter asks when it runs no listener.
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });

    // `DATABASE_URL`, or a throwaway cluster removed when the process exits.
    let url = tokio::task::spawn_blocking(sqlx_retry_testkit::postgres_url).await?;
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await?;
    MIGRATOR.run(&pool).await?;
    let accounts: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
        .fetch_one(&pool)
        .await?;
    if accounts == 0 {
        for _ in 0..4 {
            bank::open_account(&pool, 1_000).await?;
        }
    }

    let addr = std::env::var("SERVICE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    println!("database: {}", redact(&url));
    println!("listening on http://{local}");
    println!(
        "try: curl -s -XPOST http://{local}/transfers -H 'content-type: application/json' \
         -d '{{\"from\":1,\"to\":2,\"amount\":10}}'; curl -s http://{local}/accounts/1; \
         curl -s http://{local}/metrics"
    );

    axum::serve(listener, router(AppState { pool, metrics }))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Where the database is, without user or password.
fn redact(url: &str) -> String {
    match url.parse::<PgConnectOptions>() {
        Ok(options) => format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("")
        ),
        Err(_) => "(unparsable DATABASE_URL)".to_owned(),
    }
}
