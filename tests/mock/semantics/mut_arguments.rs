//! `&mut` arguments across attempts: restored before a retry, unless `#[keep]`.

use super::*;

// ---------------------------------------------------------------------------------------------
// `&mut` arguments across attempts: restored to their value from before the call when an
// attempt is retried, as the database's rows are; `#[keep]` opts out (accumulators).
// ---------------------------------------------------------------------------------------------

#[serializable_retry(max = 3, backoff(none))]
async fn push_one_two(tx: &mut MockTx<i64>, out: &mut Vec<i64>) -> Result<(), sqlx::Error> {
    out.push(1);
    tx.execute("step")?;
    out.push(2);
    Ok(())
}

#[serializable_retry(max = 3, backoff(none))]
async fn push_one_two_kept(
    tx: &mut MockTx<i64>,
    #[keep] out: &mut Vec<i64>,
) -> Result<(), sqlx::Error> {
    out.push(1);
    tx.execute("step")?;
    out.push(2);
    Ok(())
}

#[serializable_retry(max = 3, backoff(none))]
async fn push_one_two_optional(
    tx: &mut MockTx<i64>,
    out: Option<&mut Vec<i64>>,
) -> Result<(), sqlx::Error> {
    let out = out.expect("given");
    out.push(1);
    tx.execute("step")?;
    out.push(2);
    Ok(())
}

#[derive(Clone, Default)]
struct Recorder {
    seen: Vec<i64>,
}

impl Recorder {
    #[serializable_retry(max = 3, backoff(none))]
    async fn record(&mut self, tx: &mut MockTx<i64>) -> Result<(), sqlx::Error> {
        self.seen.push(1);
        tx.execute("step")?;
        self.seen.push(2);
        Ok(())
    }

    #[serializable_retry(max = 3, backoff(none))]
    async fn record_kept(#[keep] &mut self, tx: &mut MockTx<i64>) -> Result<(), sqlx::Error> {
        self.seen.push(1);
        tx.execute("step")?;
        self.seen.push(2);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_mut_argument_is_restored_before_a_retry() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
    let mut out = vec![0];
    push_one_two(&db, &mut out).await.unwrap();
    assert_eq!(out, [0, 1, 2], "what the failed attempt pushed was undone");
    assert_eq!(db.attempts(), 2);

    // A failure in the body, after the first push: restored too.
    let db = MockDb::new(0_i64).fail(1, Phase::Body, Fault::sqlstate("40P01"));
    let mut out = Vec::new();
    push_one_two(&db, &mut out).await.unwrap();
    assert_eq!(out, [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn keep_leaves_what_failed_attempts_wrote() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
    let mut out = Vec::new();
    push_one_two_kept(&db, &mut out).await.unwrap();
    assert_eq!(out, [1, 2, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn an_optional_mut_argument_is_reborrowed_and_restored() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
    let mut out = Vec::new();
    push_one_two_optional(&db, Some(&mut out)).await.unwrap();
    assert_eq!(out, [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn mut_self_is_restored_before_a_retry_unless_kept() {
    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
    let mut recorder = Recorder::default();
    recorder.record(&db).await.unwrap();
    assert_eq!(recorder.seen, [1, 2]);

    let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40001"));
    let mut recorder = Recorder::default();
    recorder.record_kept(&db).await.unwrap();
    assert_eq!(recorder.seen, [1, 2, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_fails_for_good_keeps_the_last_attempts_writes() {
    // Restored only before a retry: after the last attempt the argument shows what it did.
    let db = MockDb::new(0_i64)
        .fail(1, Phase::Commit, Fault::sqlstate("40001"))
        .fail(2, Phase::Commit, Fault::sqlstate("40001"))
        .fail(3, Phase::Commit, Fault::sqlstate("40001"));
    let mut out = Vec::new();
    assert!(push_one_two(&db, &mut out).await.is_err());
    assert_eq!(out, [1, 2]);
}
