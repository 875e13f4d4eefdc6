//! The scripted PostgreSQL server (`sqlx_retry::mock::server`): unchanged `&mut PgConnection`
//! functions, real sqlx calls, every retry path of `#[serializable_retry]`.
//!
//! All tests run on tokio's paused clock: the backoff between attempts costs no real time while
//! the server and sqlx talk over a real loopback socket.
#![cfg(feature = "mock-server")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{Connection, PgConnection, Row};
use sqlx_retry::mock::server::{
    EventKind, Expectation, MockServer, Outcome, PgError, PgType, Rows, Value,
};
use sqlx_retry::mock::{Fault, Phase};
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
        .expect(
            Expectation::new(DEBIT)
                .with_args((30_i64, 1_i64))
                .affects(1),
        )
        .expect(
            Expectation::new(CREDIT)
                .with_args((30_i64, 2_i64))
                .affects(1),
        );
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

// -------------------------------------------------------------------------------------------------
// Every retry path of the attribute.
// -------------------------------------------------------------------------------------------------

/// A 40001 at a statement: the attempt is rolled back and the whole body runs again.
#[tokio::test(start_paused = true)]
async fn a_40001_at_a_statement_reruns_the_whole_body() {
    let server = start().await;
    server.expect(
        Expectation::new(READ)
            .with_args((1_i64,))
            .returns(Rows::new([("balance", PgType::Int8)]).row((100_i64,))),
    );
    server.expect(Expectation::new(DEBIT).with_args((30_i64, 1_i64)));
    expect_transfer(&server, 100);
    server.fail(1, Phase::Statement(2), Fault::sqlstate("40001"));

    assert!(transfer(&server.pool(), 1, 2, 30).await.unwrap());

    let script = server.script();
    assert_eq!(
        script,
        lines(&[
            &attempt_lines(1)[..2],
            &[s(&format!("#1 {DEBIT} [30, 1] -> 40001")), s("#1 ROLLBACK")],
            &attempt_lines(1),
            &[s("#1 COMMIT")],
        ])
    );
    server.expectations_were_met().unwrap();
}

/// Deadlocks are retried too, at a statement and at COMMIT.
#[tokio::test(start_paused = true)]
async fn a_40p01_at_a_statement_or_at_commit_is_retried() {
    for phase in [Phase::Statement(3), Phase::Commit] {
        let server = start().await;
        for _ in 0..2 {
            expect_transfer(&server, 100);
        }
        server.fail(1, phase, Fault::sqlstate("40P01"));

        assert!(transfer(&server.pool(), 1, 2, 30).await.unwrap());

        assert_eq!(server.attempts(), 2, "{phase:?}");
        let failed: Vec<_> = server
            .events()
            .into_iter()
            .filter(|e| e.outcome != Outcome::Ok && e.outcome != Outcome::NoTransaction)
            .map(|e| (e.attempt, e.outcome))
            .collect();
        assert_eq!(
            failed,
            [(Some(1), Outcome::Error("40P01".into()))],
            "{phase:?}"
        );
        assert!(server.script().last().unwrap().ends_with("COMMIT"));
        server.expectations_were_met().unwrap();
    }
}

/// The error the caller sees carries the fields the server sent: classification tells a row
/// write conflict (a statement) from a dependency cycle (`predicate.c`, at COMMIT).
#[tokio::test(start_paused = true)]
async fn exhausted_attempts_return_the_last_40001_with_its_fields() {
    #[serializable_retry(max = 3)]
    async fn read(tx: &mut PgConnection) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1")
            .bind(1_i64)
            .fetch_one(&mut *tx)
            .await
    }

    let server = start().await;
    server.stub(
        Expectation::new(READ)
            .returns(Rows::new([("balance", PgType::Int8)]).row((5_i64,)))
            .times(3),
    );
    for attempt in 1..=3 {
        server.fail(attempt, Phase::Commit, Fault::sqlstate("40001"));
    }

    let err = read(&server.pool()).await.unwrap_err();

    assert_eq!(sqlx_retry::error::sqlstate(&err).unwrap().as_str(), "40001");
    assert_eq!(
        sqlx_retry::error::conflict_kind(&err),
        Some(ConflictKind::Dependency)
    );
    let db = err.as_database_error().unwrap();
    let pg = db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .unwrap();
    assert_eq!(pg.file(), Some("predicate.c"));
    assert!(pg.detail().unwrap().starts_with("Reason code:"));
    assert_eq!(server.attempts(), 3);
    let commits = server
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::Commit)
        .count();
    assert_eq!(commits, 3);
    server.expectations_were_met().unwrap();
}

/// A 40001 scripted with `fail_with` and any fields: here a row write conflict at COMMIT.
#[tokio::test(start_paused = true)]
async fn a_40001_at_a_statement_reads_as_a_row_write_conflict() {
    let server = start().await;
    server.expect(
        Expectation::new(READ)
            .with_args((1_i64,))
            .fails(PgError::row_write_conflict().table("accounts")),
    );
    let mut conn = PgConnection::connect_with(&server.connect_options())
        .await
        .unwrap();

    let err = sqlx::query_scalar::<_, i64>(READ)
        .bind(1_i64)
        .fetch_one(&mut conn)
        .await
        .unwrap_err();

    assert_eq!(
        sqlx_retry::error::conflict_kind(&err),
        Some(ConflictKind::RowWrite)
    );
    let db = err.as_database_error().unwrap();
    assert_eq!(db.table(), Some("accounts"));
    server.expectations_were_met().unwrap();
}

/// A non-retryable error is returned after one attempt, which is rolled back.
#[tokio::test(start_paused = true)]
async fn a_non_retryable_error_is_returned_after_one_attempt() {
    let server = start().await;
    server
        .expect(
            Expectation::new(READ)
                .returns(Rows::new([("balance", PgType::Int8)]).row((100_i64,))),
        )
        .expect(Expectation::new(DEBIT).fails(
            PgError::new("23514")
                .message("new row for relation \"accounts\" violates check constraint \"accounts_balance_check\"")
                .constraint("accounts_balance_check"),
        ));

    let err = transfer(&server.pool(), 1, 2, 30).await.unwrap_err();

    assert_eq!(sqlx_retry::error::sqlstate(&err).unwrap().as_str(), "23514");
    assert_eq!(
        err.as_database_error().unwrap().constraint(),
        Some("accounts_balance_check")
    );
    assert_eq!(
        server.script(),
        [
            s("#1 BEGIN ISOLATION LEVEL SERIALIZABLE"),
            format!("#1 {READ} [1]"),
            format!("#1 {DEBIT} [30, 1] -> 23514"),
            s("#1 ROLLBACK"),
        ]
    );
    server.expectations_were_met().unwrap();
}

/// A connection lost before COMMIT was sent: the transaction did not commit, so the pool's next
/// connection runs the whole body again.
#[tokio::test(start_paused = true)]
async fn a_connection_lost_before_commit_is_retried_on_a_new_connection() {
    let server = start().await;
    server.expect(
        Expectation::new(READ)
            .with_args((1_i64,))
            .returns(Rows::new([("balance", PgType::Int8)]).row((100_i64,))),
    );
    server.expect(Expectation::new(DEBIT).with_args((30_i64, 1_i64)));
    expect_transfer(&server, 100);
    server.fail(1, Phase::Statement(2), Fault::ConnectionLost);

    assert!(transfer(&server.pool(), 1, 2, 30).await.unwrap());

    assert_eq!(
        server.script(),
        lines(&[
            &attempt_lines(1)[..2],
            &[s(&format!("#1 {DEBIT} [30, 1] -> connection lost"))],
            &attempt_lines(2),
            &[s("#2 COMMIT")],
        ])
    );
    assert_eq!(server.connections(), 2);
    server.expectations_were_met().unwrap();
}

/// A connection lost while COMMIT was in flight: the outcome is unknown, so the call returns
/// the commit-unknown error and does not retry, whether or not the server had committed.
#[tokio::test(start_paused = true)]
async fn a_connection_lost_during_commit_is_commit_unknown_and_not_retried() {
    for (fault, outcome) in [
        (Fault::ConnectionLost, Outcome::ConnectionLost),
        (Fault::CommitReplyLost, Outcome::CommitReplyLost),
    ] {
        let server = start().await;
        expect_transfer(&server, 100);
        server.fail(1, Phase::Commit, fault.clone());

        let err = transfer(&server.pool(), 1, 2, 30).await.unwrap_err();

        assert!(sqlx_retry::is_commit_unknown(&err), "{fault:?}: {err}");
        assert_eq!(server.attempts(), 1, "{fault:?}");
        let last = server.events().pop().unwrap();
        assert_eq!((last.kind, last.outcome), (EventKind::Commit, outcome));
        server.expectations_were_met().unwrap();
    }
}

/// `idempotent` retries a COMMIT whose outcome is unknown.
#[tokio::test(start_paused = true)]
async fn an_idempotent_function_retries_a_commit_whose_reply_was_lost() {
    #[serializable_retry(idempotent)]
    async fn touch(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE sessions SET seen = now() WHERE id = $1")
            .bind(9_i64)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    let server = start().await;
    server.stub(Expectation::new("UPDATE sessions SET seen = now() WHERE id = $1").affects(1));
    server.fail(1, Phase::Commit, Fault::CommitReplyLost);

    touch(&server.pool()).await.unwrap();

    assert_eq!(
        server.script(),
        [
            "#1 BEGIN ISOLATION LEVEL SERIALIZABLE",
            "#1 UPDATE sessions SET seen = now() WHERE id = $1 [9]",
            "#1 COMMIT -> committed, reply lost",
            "#2 BEGIN ISOLATION LEVEL SERIALIZABLE",
            "#2 UPDATE sessions SET seen = now() WHERE id = $1 [9]",
            "#2 COMMIT",
        ]
    );
    server.expectations_were_met().unwrap();
}

/// A failed BEGIN on a broken connection is retried; a BEGIN refused with an error is not.
#[tokio::test(start_paused = true)]
async fn begin_faults() {
    let server = start().await;
    expect_transfer(&server, 100);
    server.fail(1, Phase::Begin, Fault::ConnectionLost);
    assert!(transfer(&server.pool(), 1, 2, 30).await.unwrap());
    assert_eq!(
        server.script()[..2],
        [
            "#1 BEGIN ISOLATION LEVEL SERIALIZABLE -> connection lost",
            "#2 BEGIN ISOLATION LEVEL SERIALIZABLE",
        ]
    );
    server.expectations_were_met().unwrap();

    let server = start().await;
    server.fail(1, Phase::Begin, Fault::sqlstate("53300"));
    let err = transfer(&server.pool(), 1, 2, 30).await.unwrap_err();
    assert_eq!(sqlx_retry::error::sqlstate(&err).unwrap().as_str(), "53300");
    assert_eq!(
        server.script(),
        ["#1 BEGIN ISOLATION LEVEL SERIALIZABLE -> 53300"]
    );
}

/// Effects registered with `after_commit` run once, after the COMMIT that succeeded, however
/// many attempts it took.
#[tokio::test(start_paused = true)]
async fn after_commit_effects_run_once() {
    #[serializable_retry]
    async fn place_order(
        tx: &mut PgConnection,
        customer: i64,
        sent: Arc<AtomicU32>,
    ) -> Result<i64, sqlx::Error> {
        let order: i64 =
            sqlx::query_scalar("INSERT INTO orders (customer) VALUES ($1) RETURNING id")
                .bind(customer)
                .fetch_one(&mut *tx)
                .await?;
        after_commit(async move {
            sent.fetch_add(1, Ordering::SeqCst);
        })?;
        Ok(order)
    }

    let server = start().await;
    for id in [41_i64, 42, 43] {
        server.expect(
            Expectation::new("INSERT INTO orders (customer) VALUES ($1) RETURNING id")
                .with_args((7_i64,))
                .returns(Rows::new([("id", PgType::Int8)]).row((id,))),
        );
    }
    server
        .fail(1, Phase::Commit, Fault::sqlstate("40001"))
        .fail(2, Phase::Statement(1), Fault::sqlstate("40P01"));
    let sent = Arc::new(AtomicU32::new(0));

    let order = place_order(&server.pool(), 7, Arc::clone(&sent))
        .await
        .unwrap();

    assert_eq!(order, 43);
    assert_eq!(sent.load(Ordering::SeqCst), 1);
    assert_eq!(server.attempts(), 3);
    server.expectations_were_met().unwrap();
}

// -------------------------------------------------------------------------------------------------
// The recorded script and the expectations.
// -------------------------------------------------------------------------------------------------

/// BEGIN is recorded with its isolation level and access mode.
#[tokio::test(start_paused = true)]
async fn begin_is_recorded_with_isolation_and_access_mode() {
    #[serializable_retry(read_only, deferrable)]
    async fn report(tx: &mut PgConnection) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT name FROM reports LIMIT 1")
            .fetch_one(&mut *tx)
            .await
    }

    let server = start().await;
    server.expect(
        Expectation::new("SELECT name FROM reports LIMIT 1")
            .returns(Rows::new([("name", PgType::Text)]).row((None::<String>,))),
    );

    assert_eq!(report(&server.pool()).await.unwrap(), None);

    let begin = server.events().remove(0);
    assert_eq!(begin.conn, 1);
    assert_eq!(begin.attempt, Some(1));
    assert_eq!(
        begin.kind,
        EventKind::Begin {
            sql: "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE".into(),
            isolation: Some(IsolationLevel::Serializable),
            read_only: true,
            deferrable: true,
        }
    );
}

/// A statement nobody expected, or with other parameters, is answered with an error and
/// reported; so is an expectation that never arrived.
#[tokio::test(start_paused = true)]
async fn unexpected_statements_and_unmet_expectations_are_reported() {
    let server = start().await;
    server
        .expect(
            Expectation::new(READ)
                .with_args((2_i64,))
                .returns(Rows::new([("balance", PgType::Int8)]).row((1_i64,))),
        )
        .expect(Expectation::new("DELETE FROM accounts"));

    let err = transfer(&server.pool(), 1, 2, 30).await.unwrap_err();

    assert_eq!(sqlx_retry::error::sqlstate(&err).unwrap().as_str(), "XX000");
    assert!(err.to_string().contains("unexpected statement"), "{err}");
    assert_eq!(server.attempts(), 1, "not retried");
    let unmet = server.expectations_were_met().unwrap_err();
    assert_eq!(unmet.problems().len(), 3, "{unmet}");
    assert!(
        unmet.problems()[0].contains(&format!("{READ} [1]")),
        "{unmet}"
    );
    assert!(unmet.problems()[1].contains("[2]"), "{unmet}");
    assert!(
        unmet.problems()[2].contains("DELETE FROM accounts"),
        "{unmet}"
    );

    // A fault that never struck is a script error too.
    let server = start().await;
    server.fail(2, Phase::Commit, Fault::sqlstate("40001"));
    let unmet = server.expectations_were_met().unwrap_err();
    assert!(unmet.problems()[0].contains("never struck"), "{unmet}");
}

/// Statements may be matched by pattern, and stubs answer any number of times.
#[tokio::test(start_paused = true)]
async fn patterns_and_stubs() {
    let server = start().await;
    server
        .stub(
            Expectation::matching(r"^SELECT balance FROM accounts")
                .unwrap()
                .returns(Rows::new([("balance", PgType::Int8)]).row((100_i64,))),
        )
        .stub(
            Expectation::matching("^UPDATE accounts")
                .unwrap()
                .affects(1),
        );
    server.fail(1, Phase::Commit, Fault::sqlstate("40001"));

    assert!(transfer(&server.pool(), 1, 2, 30).await.unwrap());
    assert_eq!(server.attempts(), 2);
    server.expectations_were_met().unwrap();

    assert!(Expectation::matching("(").is_err());
}

/// A transaction aborted by an error answers `25P02` until it ends, as PostgreSQL does. A body
/// that swallows the error and returns `Ok` gets `TransactionAborted`: the loop's check before
/// COMMIT fails, no COMMIT is sent and the transaction is rolled back.
#[tokio::test(start_paused = true)]
async fn an_aborted_transaction_rejects_statements_and_the_call_is_not_ok() {
    #[serializable_retry]
    async fn swallow(tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        let _ignored = sqlx::query("INSERT INTO audit (msg) VALUES ($1)")
            .bind("first")
            .execute(&mut *tx)
            .await;
        let second = sqlx::query("INSERT INTO audit (msg) VALUES ($1)")
            .bind("second")
            .execute(&mut *tx)
            .await;
        assert_eq!(
            sqlx_retry::error::sqlstate(&second.unwrap_err())
                .unwrap()
                .as_str(),
            "25P02"
        );
        Ok(())
    }

    let server = start().await;
    server.expect(
        Expectation::new("INSERT INTO audit (msg) VALUES ($1)").fails(PgError::new("23505")),
    );

    let err = swallow(&server.pool()).await.unwrap_err();
    assert!(
        matches!(&err, sqlx::Error::Database(db) if db.as_error().is::<sqlx_retry::error::TransactionAborted>()),
        "{err:?}"
    );

    // Through a pool the check rides with COMMIT; the transaction is rolled back by the ROLLBACK
    // the pool sends with its release ping, after the call returned.
    for _ in 0..1000 {
        if server.script().len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert_eq!(
        server.script(),
        [
            "#1 BEGIN ISOLATION LEVEL SERIALIZABLE",
            "#1 INSERT INTO audit (msg) VALUES ($1) ['first'] -> 23505",
            "#1 INSERT INTO audit (msg) VALUES ($1) ['second'] -> 25P02",
            "#1 ROLLBACK",
        ]
    );
    server.expectations_were_met().unwrap();
}

// -------------------------------------------------------------------------------------------------
// Types: what sqlx decodes from the scripted rows, and what it sends as parameters.
// -------------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn common_types_decode_as_sqlx_expects() {
    let server = start().await;
    let sql = "SELECT * FROM everything WHERE id = $1 AND name = $2 AND ok = $3";
    let rows = Rows::new([
        ("i8", PgType::Int8),
        ("i4", PgType::Int4),
        ("i2", PgType::Int2),
        ("t", PgType::Text),
        ("v", PgType::Varchar),
        ("b", PgType::Bool),
        ("n", PgType::Int8),
        ("f", PgType::Float8),
        ("bytes", PgType::Bytea),
    ]);
    server.stub(
        Expectation::new(sql)
            .with_args((1_i64, "ada", true))
            .returns(rows.row(vec![
                Value::Int8(-9_000_000_000),
                Value::Int4(7),
                Value::Int2(-3),
                Value::Text("héllo".into()),
                Value::Text("v".into()),
                Value::Bool(true),
                Value::Null,
                Value::Float8(2.5),
                Value::Bytea(vec![0, 255]),
            ])),
    );
    let pool = server.pool();

    let row = sqlx::query(sql)
        .bind(1_i64)
        .bind("ada")
        .bind(true)
        .fetch_one(&pool)
        .await
        .unwrap();

    assert_eq!(row.get::<i64, _>("i8"), -9_000_000_000);
    assert_eq!(row.get::<i32, _>("i4"), 7);
    assert_eq!(row.get::<i16, _>("i2"), -3);
    assert_eq!(row.get::<String, _>("t"), "héllo");
    assert_eq!(row.get::<String, _>("v"), "v");
    assert!(row.get::<bool, _>("b"));
    assert_eq!(row.get::<Option<i64>, _>("n"), None);
    assert_eq!(row.get::<f64, _>("f"), 2.5);
    assert_eq!(row.get::<Vec<u8>, _>("bytes"), [0, 255]);

    // sqlx's type check applies: an int8 column does not decode into i32, NULL not into i64.
    let err = row.try_get::<i32, _>("i8").unwrap_err();
    assert!(matches!(err, sqlx::Error::ColumnDecode { .. }), "{err}");
    assert!(row.try_get::<i64, _>("n").is_err());

    // The other types are described with their names and OIDs.
    let sql = "SELECT * FROM other_types";
    server.stub(
        Expectation::new(sql).returns(
            Rows::new([
                ("n", PgType::Numeric),
                ("u", PgType::Uuid),
                ("ts", PgType::Timestamptz),
                ("j", PgType::Jsonb),
                ("d", PgType::Date),
            ])
            .row(vec![
                Value::Numeric("12345.678".into()),
                Value::Uuid(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
                Value::Timestamptz(0),
                Value::Jsonb(r#"{"a":1}"#.into()),
                Value::Date(0),
            ]),
        ),
    );
    let row = sqlx::query(sql).fetch_one(&pool).await.unwrap();
    use sqlx::{TypeInfo, ValueRef};
    let names: Vec<String> = (0..5)
        .map(|i| row.try_get_raw(i).unwrap().type_info().name().to_owned())
        .collect();
    assert_eq!(names, ["NUMERIC", "UUID", "TIMESTAMPTZ", "JSONB", "DATE"]);
    server.expectations_were_met().unwrap();
}

/// A scripted row that does not fit its columns is an error for the client and a reported
/// script problem, never a panic.
#[tokio::test(start_paused = true)]
async fn rows_that_do_not_fit_their_columns_are_script_errors() {
    let server = start().await;
    server.expect(
        Expectation::new("SELECT 1")
            .returns(Rows::new([("n", PgType::Int4)]).row(("not a number",))),
    );

    let err = sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(&server.pool())
        .await
        .unwrap_err();

    assert!(err.to_string().contains("column n"), "{err}");
    assert!(server.expectations_were_met().is_err());
}

/// Statements without parameters sent through the simple protocol get text rows.
#[tokio::test(start_paused = true)]
async fn the_simple_protocol_works_too() {
    let server = start().await;
    server.expect(
        Expectation::new("SELECT id, name FROM users").returns(
            Rows::new([("id", PgType::Int8), ("name", PgType::Text)])
                .row((1_i64, "ada"))
                .row((2_i64, None::<&str>)),
        ),
    );
    let mut conn = PgConnection::connect(&server.url()).await.unwrap();

    let rows = sqlx::raw_sql("SELECT id, name FROM users")
        .fetch_all(&mut conn)
        .await
        .unwrap();

    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<i64, _>(0), 1);
    assert_eq!(rows[0].get::<String, _>(1), "ada");
    assert_eq!(rows[1].get::<Option<String>, _>(1), None);
    server.expectations_were_met().unwrap();
}

/// The scripted server's encodings are PostgreSQL's: the same values, read through sqlx from a
/// real PostgreSQL and from the scripted server, arrive as the same bytes, in the binary format
/// (prepared statements) and in the text format (simple protocol).
#[tokio::test]
async fn encodings_match_a_real_postgresql_byte_for_byte() {
    let cases: Vec<(&str, PgType, Value)> = vec![
        ("9000000000::int8", PgType::Int8, Value::Int8(9_000_000_000)),
        ("-7::int4", PgType::Int4, Value::Int4(-7)),
        ("3::int2", PgType::Int2, Value::Int2(3)),
        ("true", PgType::Bool, Value::Bool(true)),
        ("'héllo'::text", PgType::Text, Value::Text("héllo".into())),
        ("'v'::varchar", PgType::Varchar, Value::Text("v".into())),
        ("NULL::int8", PgType::Int8, Value::Null),
        ("2.5::float8", PgType::Float8, Value::Float8(2.5)),
        (
            "'\\x00ff'::bytea",
            PgType::Bytea,
            Value::Bytea(vec![0, 255]),
        ),
        (
            "12345.678::numeric",
            PgType::Numeric,
            Value::Numeric("12345.678".into()),
        ),
        (
            "-0.00012::numeric",
            PgType::Numeric,
            Value::Numeric("-0.00012".into()),
        ),
        (
            "100000::numeric",
            PgType::Numeric,
            Value::Numeric("100000".into()),
        ),
        ("0::numeric", PgType::Numeric, Value::Numeric("0".into())),
        (
            "'01234567-89ab-cdef-0123-456789abcdef'::uuid",
            PgType::Uuid,
            Value::Uuid(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        ),
        (
            "'2023-11-14 22:13:20.123+00'::timestamptz",
            PgType::Timestamptz,
            Value::Timestamptz(1_700_000_000_123_000),
        ),
        (
            "'1969-12-31 23:59:59'::timestamp",
            PgType::Timestamp,
            Value::Timestamp(-1_000_000),
        ),
        ("'2024-01-01'::date", PgType::Date, Value::Date(19_723)),
        (
            r#"'{"a": [1, null]}'::jsonb"#,
            PgType::Jsonb,
            Value::Jsonb(r#"{"a": [1, null]}"#.into()),
        ),
        (
            r#"'{"a":1}'::json"#,
            PgType::Json,
            Value::Json(r#"{"a":1}"#.into()),
        ),
        (
            "ARRAY[1, NULL, 3]::int8[]",
            PgType::Int8Array,
            Value::Array(vec![Value::Int8(1), Value::Null, Value::Int8(3)]),
        ),
        ("'{}'::int4[]", PgType::Int4Array, Value::Array(vec![])),
        (
            r#"ARRAY['a', 'b c', 'q"\', '', 'NULL']::text[]"#,
            PgType::TextArray,
            Value::Array(vec![
                Value::Text("a".into()),
                Value::Text("b c".into()),
                Value::Text("q\"\\".into()),
                Value::Text("".into()),
                Value::Text("NULL".into()),
            ]),
        ),
        (
            "ARRAY[true, false]",
            PgType::BoolArray,
            Value::Array(vec![Value::Bool(true), Value::Bool(false)]),
        ),
    ];
    let (real, _schema) = sqlx_retry_testkit::isolated_pool(1).await;
    let server = start().await;
    let mock = server.pool();

    for (expr, ty, value) in cases {
        let sql = format!("SELECT {expr} AS v");
        server.stub(Expectation::new(&sql).returns(Rows::new([("v", ty)]).row(vec![value])));
        let raw = |row: &sqlx::postgres::PgRow| -> (String, Option<Vec<u8>>) {
            use sqlx::{TypeInfo, ValueRef};
            let v = row.try_get_raw(0).unwrap();
            let name = v.type_info().name().to_owned();
            let bytes = (!v.is_null()).then(|| v.as_bytes().unwrap().to_vec());
            (name, bytes)
        };
        let binary_real = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(&real)
            .await
            .unwrap();
        let binary_mock = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(&mock)
            .await
            .unwrap();
        assert_eq!(raw(&binary_mock), raw(&binary_real), "binary: {expr}");
        let text_real = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(&real)
            .await
            .unwrap();
        let text_mock = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_one(&mock)
            .await
            .unwrap();
        assert_eq!(raw(&text_mock), raw(&text_real), "text: {expr}");
    }
    server.expectations_were_met().unwrap();
}

// -------------------------------------------------------------------------------------------------
// `query!` / `query_as!`: checked at compile time against a real PostgreSQL (or the `.sqlx`
// cache it produced), run against the scripted server. The statements need no table, so the
// macros also compile online against any PostgreSQL in `DATABASE_URL`.
// -------------------------------------------------------------------------------------------------

/// What `query_as!` fills.
#[derive(Debug, PartialEq)]
struct Account {
    id: i64,
    owner: String,
    closed: Option<bool>,
}

#[serializable_retry]
async fn open_account(tx: &mut PgConnection, id: i64, owner: &str) -> Result<Account, sqlx::Error> {
    let next = sqlx::query!(r#"SELECT $1::int8 + 1 AS "next!""#, id)
        .fetch_one(&mut *tx)
        .await?;
    sqlx::query_as!(
        Account,
        r#"SELECT $1::int8 AS "id!", $2::text AS "owner!", NULL::bool AS closed"#,
        next.next,
        owner
    )
    .fetch_one(&mut *tx)
    .await
}

#[tokio::test(start_paused = true)]
async fn query_macros_run_against_the_scripted_server() {
    let server = start().await;
    for _attempt in 1..=2 {
        server
            .expect(
                Expectation::new(r#"SELECT $1::int8 + 1 AS "next!""#)
                    .with_args((41_i64,))
                    .returns(Rows::new([("next!", PgType::Int8)]).row((42_i64,))),
            )
            .expect(
                Expectation::new(
                    r#"SELECT $1::int8 AS "id!", $2::text AS "owner!", NULL::bool AS closed"#,
                )
                .with_args((42_i64, "ada"))
                .returns(
                    Rows::new([
                        ("id!", PgType::Int8),
                        ("owner!", PgType::Text),
                        ("closed", PgType::Bool),
                    ])
                    .row((42_i64, "ada", None::<bool>)),
                ),
            );
    }
    server.fail(1, Phase::Commit, Fault::sqlstate("40001"));

    let account = open_account(&server.pool(), 41, "ada").await.unwrap();

    assert_eq!(
        account,
        Account {
            id: 42,
            owner: "ada".into(),
            closed: None
        }
    );
    assert_eq!(server.attempts(), 2);
    server.expectations_were_met().unwrap();
}

/// Array parameters (`= ANY($1)`) are decoded and checked; array columns decode into `Vec`s.
#[tokio::test(start_paused = true)]
async fn arrays_as_parameters_and_columns() {
    let server = start().await;
    let sql = "SELECT id, tags FROM items WHERE id = ANY($1)";
    server.expect(
        Expectation::new(sql)
            .with_args((Value::Array(vec![Value::Int8(1), Value::Int8(2)]),))
            .returns(
                Rows::new([("id", PgType::Int8), ("tags", PgType::TextArray)]).row((
                    1_i64,
                    Value::Array(vec![Value::Text("x".into()), Value::Null]),
                )),
            ),
    );

    let row = sqlx::query(sql)
        .bind(vec![1_i64, 2])
        .fetch_one(&server.pool())
        .await
        .unwrap();

    assert_eq!(
        row.get::<Vec<Option<String>>, _>("tags"),
        [Some("x".into()), None]
    );
    assert_eq!(server.script(), [format!("#1 {sql} [[1, 2]]")]);
    server.expectations_were_met().unwrap();
}

/// A ROLLBACK that fails (here: its connection is lost) never hides the error that caused it.
#[tokio::test(start_paused = true)]
async fn a_failed_rollback_does_not_hide_the_error() {
    let server = start().await;
    server
        .expect(
            Expectation::new(READ).returns(Rows::new([("balance", PgType::Int8)]).row((100_i64,))),
        )
        .expect(Expectation::new(DEBIT).fails(PgError::new("23514")));
    server.fail(1, Phase::Rollback, Fault::ConnectionLost);

    let err = transfer(&server.pool(), 1, 2, 30).await.unwrap_err();

    assert_eq!(sqlx_retry::error::sqlstate(&err).unwrap().as_str(), "23514");
    assert_eq!(
        server.script().last().unwrap(),
        "#1 ROLLBACK -> connection lost"
    );
    server.expectations_were_met().unwrap();
}

/// On a multi-threaded runtime, with the call spawned: the future is `Send` and the server
/// serves from any worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_call_on_a_multi_threaded_runtime() {
    let server = start().await;
    expect_transfer(&server, 100);
    expect_transfer(&server, 100);
    server.fail(1, Phase::Statement(3), Fault::sqlstate("40001"));
    let pool = server.pool();

    let moved = tokio::spawn(async move { transfer(&pool, 1, 2, 30).await })
        .await
        .unwrap()
        .unwrap();

    assert!(moved);
    assert_eq!(server.attempts(), 2);
    server.expectations_were_met().unwrap();
}
