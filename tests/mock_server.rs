//! The scripted PostgreSQL server (`sqlx_retry::mock_server`): unchanged `&mut PgConnection`
//! functions, real sqlx calls, every retry path of `#[serializable_retry]`.
//!
//! All tests run on tokio's paused clock: the backoff between attempts costs no real time while
//! the server and sqlx talk over a real loopback socket.
#![cfg(feature = "mock-server")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{Connection, PgConnection, Row};
use sqlx_retry::mock::{Fault, Phase};
use sqlx_retry::mock_server::{
    EventKind, Expectation, MockServer, Outcome, PgError, PgType, Rows, Value,
};
use sqlx_retry::{ConflictKind, IsolationLevel, after_commit, serializable_retry};

// -------------------------------------------------------------------------------------------------
// The README's function, unchanged.
// -------------------------------------------------------------------------------------------------

#[serializable_retry(max = 5)]
async fn transfer(
    tx: &mut PgConnection,
    from: i64,
    to: i64,
    amount: i64,
) -> Result<bool, sqlx::Error> {
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1")
        .bind(from)
        .fetch_one(&mut *tx)
        .await?;
    if balance < amount {
        return Ok(false);
    }
    sqlx::query("UPDATE accounts SET balance = balance - $1 WHERE id = $2")
        .bind(amount)
        .bind(from)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
        .bind(amount)
        .bind(to)
        .execute(&mut *tx)
        .await?;
    Ok(true)
}

const READ: &str = "SELECT balance FROM accounts WHERE id = $1";
const DEBIT: &str = "UPDATE accounts SET balance = balance - $1 WHERE id = $2";
const CREDIT: &str = "UPDATE accounts SET balance = balance + $1 WHERE id = $2";

/// Scripts one attempt of `transfer(1, 2, 30)` with account 1 holding `balance`.
fn expect_transfer(server: &MockServer, balance: i64) {
    server
        .expect(
            Expectation::new(READ)
                .with_args((1_i64,))
                .returns(Rows::new([("balance", PgType::Int8)]).row((balance,))),
        )
        .expect(Expectation::new(DEBIT).with_args((30_i64, 1_i64)).affects(1))
        .expect(Expectation::new(CREDIT).with_args((30_i64, 2_i64)).affects(1));
}

/// The script lines of one full attempt on connection `c`, before its COMMIT.
fn attempt_lines(c: u32) -> [String; 4] {
    [
        format!("#{c} BEGIN ISOLATION LEVEL SERIALIZABLE"),
        format!("#{c} {READ} [1]"),
        format!("#{c} {DEBIT} [30, 1]"),
        format!("#{c} {CREDIT} [30, 2]"),
    ]
}

fn lines(parts: &[&[String]]) -> Vec<String> {
    parts.iter().flat_map(|p| p.iter().cloned()).collect()
}

fn s(line: &str) -> String {
    line.to_owned()
}

async fn start() -> MockServer {
    MockServer::start()
        .await
        .expect("bind a loopback port for the mock server")
}

#[tokio::test(start_paused = true)]
async fn transfer_commits_on_attempt_2_after_a_40001_at_commit() {
    let server = start().await;
    expect_transfer(&server, 100);
    expect_transfer(&server, 100);
    server.fail(1, Phase::Commit, Fault::sqlstate("40001"));

    let moved = transfer(&server.pool(), 1, 2, 30).await.unwrap();

    assert!(moved);
    assert_eq!(
        server.script(),
        lines(&[
            &attempt_lines(1),
            &[s("#1 COMMIT -> 40001"), s("#1 ROLLBACK (no transaction)")],
            &attempt_lines(1),
            &[s("#1 COMMIT")],
        ])
    );
    server.expectations_were_met().unwrap();
}
