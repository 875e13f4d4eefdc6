//! `40003` statement_completion_unknown sent by the server at COMMIT (CockroachDB's "result is
//! ambiguous"): raised here by a deferred constraint trigger, which PostgreSQL fires during
//! COMMIT. It is the commit-unknown outcome, like a connection lost during COMMIT: one attempt,
//! or with `idempotent` a retry where the source reconnects (a pool).

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{Connection as _, PgConnection, PgPool};
use sqlx_retry::error::{find_commit_unknown, sqlstate};
use sqlx_retry::{Backoff, Policy, SqlState, is_commit_unknown, transaction};
use sqlx_retry_testkit::{Isolated, isolated_pool};

/// The message CockroachDB gives a `40003` (its docs and issues quote it as "result is
/// ambiguous (…)").
const AMBIGUOUS: &str = "result is ambiguous (error=rpc error: code = Unavailable)";

/// `items`, and a deferred trigger that answers the COMMIT of the first `fail_commits`
/// transactions inserting into it with `40003` (a sequence counts them: it is not rolled back).
async fn setup(fail_commits: i64) -> (PgPool, Isolated) {
    let (pool, schema) = isolated_pool(2).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE items (id int PRIMARY KEY);
         CREATE SEQUENCE commits;
         CREATE FUNCTION ambiguous_commit() RETURNS trigger LANGUAGE plpgsql AS $f$
         BEGIN
             IF nextval('commits') <= {fail_commits} THEN
                 RAISE EXCEPTION USING ERRCODE = '40003', MESSAGE = '{AMBIGUOUS}';
             END IF;
             RETURN NULL;
         END $f$;
         CREATE CONSTRAINT TRIGGER ambiguous_at_commit AFTER INSERT ON items
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ambiguous_commit();"
    )))
    .execute(&pool)
    .await
    .unwrap();
    (pool, schema)
}

fn policy(idempotent: bool) -> Policy {
    Policy::builder()
        .idempotent(idempotent)
        .backoff(Backoff::fixed(std::time::Duration::from_millis(1)))
        .build()
        .unwrap()
}

async fn insert<S>(source: S, policy: &Policy, runs: &AtomicU32) -> Result<(), sqlx::Error>
where
    S: sqlx_retry::TransactionSource<PgConnection>,
{
    transaction(source, policy, |tx| {
        runs.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            sqlx::query("INSERT INTO items VALUES (1)")
                .execute(&mut *tx)
                .await?;
            Ok(())
        })
    })
    .await
}

async fn rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM items")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn assert_server_commit_unknown(err: &sqlx::Error) {
    assert!(is_commit_unknown(err), "{err}");
    assert_eq!(sqlstate(err), Some(SqlState::STATEMENT_COMPLETION_UNKNOWN));
    let cause = find_commit_unknown(err).expect("a CommitUnknown").cause();
    assert_eq!(
        sqlstate(cause),
        Some(SqlState::STATEMENT_COMPLETION_UNKNOWN)
    );
    assert!(cause.to_string().contains("result is ambiguous"), "{cause}");
}

#[tokio::test]
async fn a_40003_at_commit_on_a_pool_is_commit_unknown_after_one_attempt() {
    let (pool, _schema) = setup(1).await;
    let runs = AtomicU32::new(0);
    let err = insert(&pool, &policy(false), &runs).await.unwrap_err();
    assert_server_commit_unknown(&err);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // PostgreSQL rolled the transaction back when its trigger failed.
    assert_eq!(rows(&pool).await, 0);
    // The pooled connection is usable afterwards.
    sqlx::query("SELECT 1").execute(&pool).await.unwrap();
}

#[tokio::test]
async fn a_40003_at_commit_on_a_held_connection_is_commit_unknown_after_one_attempt() {
    let (pool, schema) = setup(1).await;
    let mut conn = PgConnection::connect_with(&schema.connect_options())
        .await
        .unwrap();
    let runs = AtomicU32::new(0);
    // Even `idempotent` does not retry: a held connection is not replaced, and a lost COMMIT on
    // it is final too.
    let err = insert(&mut conn, &policy(true), &runs).await.unwrap_err();
    assert_server_commit_unknown(&err);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(rows(&pool).await, 0);
    assert!(!conn.is_in_transaction());
    sqlx::query("SELECT 1").execute(&mut conn).await.unwrap();
}

#[tokio::test]
async fn idempotent_retries_a_40003_at_commit_on_a_pool() {
    let (pool, _schema) = setup(1).await;
    let runs = AtomicU32::new(0);
    insert(&pool, &policy(true), &runs).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(rows(&pool).await, 1, "applied once");
}
