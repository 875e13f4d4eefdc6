//! Cancellation and mock fidelity.

use super::*;

// ---------------------------------------------------------------------------------------------
// Cancellation and mock fidelity.
// ---------------------------------------------------------------------------------------------

#[serializable_retry(max = 3)]
async fn slow_bump(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    tx.execute("bump")?;
    *tx.state_mut() += 1;
    tokio::time::sleep(ms(100)).await;
    Ok(*tx.state())
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_discards_the_attempt() {
    let db = MockDb::new(0_i64);
    let timed_out = tokio::time::timeout(ms(10), slow_bump(&db)).await;
    assert!(timed_out.is_err());
    assert_eq!(db.state(), 0, "the open transaction was not committed");
    assert_eq!(db.script(), [BEGIN, "bump"]);
}

/// Swallows the error of its first statement, as code that "tries an INSERT and falls back to
/// an UPDATE" without a savepoint does.
#[serializable_retry(max = 3, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn swallow_first_error(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    let _ignored = tx.execute("INSERT");
    tx.execute("UPDATE")?;
    *tx.state_mut() += 1;
    Ok(*tx.state())
}

/// BUG (retry-core/src/mock.rs, `MockTx::execute` / `commit`): `Fault::Sqlstate` is documented
/// as "the transaction is rolled back by the server", and in PostgreSQL any error aborts the
/// transaction: later statements fail with `25P02` (in_failed_sql_transaction) and COMMIT
/// rolls back. The mock keeps executing statements and COMMIT applies the working state, so a
/// body that swallows a database error passes against the mock and loses its write against
/// PostgreSQL.
#[tokio::test(start_paused = true)]
async fn mock_aborts_the_transaction_after_a_failed_statement() {
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("23505"));
    let result = swallow_first_error(&db).await;
    assert_eq!(db.state(), 0, "script: {:?}", db.script());
    let err = result.unwrap_err();
    assert_eq!(sqlstate(&err), SqlState::new("25P02"), "{err}");
}

/// BUG (retry-core/src/mock.rs, `MockTx::execute` / `commit`): after `Fault::ConnectionLost`
/// the mock marks the transaction broken but only ROLLBACK looks at that: later statements
/// succeed and COMMIT applies the state on a connection that is gone.
#[tokio::test(start_paused = true)]
async fn mock_fails_every_statement_after_the_connection_is_lost() {
    let db = MockDb::new(0_i64)
        .single_connection()
        .fail(1, Phase::Body, Fault::ConnectionLost);
    let result = swallow_first_error(&db).await;
    assert_eq!(db.state(), 0, "script: {:?}", db.script());
    let err = result.unwrap_err();
    assert!(matches!(err, sqlx::Error::Io(_)), "{err}");
}

/// Reads, yields to other tasks, then writes what it read plus one.
#[serializable_retry(max = 5, backoff(exponential, base = "1ms", cap = "4ms"))]
async fn bump_yielding(tx: &mut MockTx<i64>) -> Result<i64, sqlx::Error> {
    tx.execute("read")?;
    let seen = *tx.state();
    tokio::task::yield_now().await;
    tx.execute("write")?;
    *tx.state_mut() = seen + 1;
    Ok(seen + 1)
}

/// BUG (retry-core/src/mock.rs, `OpenTransaction::commit for MockTx`): COMMIT writes the
/// transaction's copy back unconditionally, so two interleaved transactions lose an update
/// (last committer wins). Under SERIALIZABLE, PostgreSQL aborts one of them with `40001` and the
/// retry produces 2. The mock silently produces 1.
#[tokio::test(start_paused = true)]
async fn mock_detects_concurrent_write_conflicts() {
    let db = MockDb::new(0_i64);
    let (a, b) = tokio::join!(bump_yielding(&db), bump_yielding(&db));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(db.state(), 2, "lost update; script: {:?}", db.script());
    assert_eq!(a.max(b), 2);
}

/// `Backoff::none()` retries at once. tokio's timer rounds every deadline up to its next
/// millisecond tick, so even a zero-length `tokio::time::sleep` would wait about a millisecond
/// per retry. On the mock every step is ready at once, so a call that never touches the timer
/// finishes on its first poll.
#[tokio::test]
async fn no_backoff_retries_without_waiting_for_the_timer() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    let policy = Policy::builder()
        .max_attempts(4)
        .backoff(Backoff::none())
        .build()
        .unwrap();
    let db = failing(1..=3, Phase::Body, "40001");
    let call = sqlx_retry::transaction(&db, &policy, |tx| {
        Box::pin(async move {
            tx.execute("bump")?;
            Ok::<_, sqlx::Error>(())
        })
    });
    let polled = std::pin::pin!(call).poll(&mut Context::from_waker(Waker::noop()));
    assert!(
        matches!(polled, Poll::Ready(Ok(()))),
        "the call waited: {polled:?}"
    );
    assert_eq!(sleeps(&db), [Duration::ZERO; 3]);
}
