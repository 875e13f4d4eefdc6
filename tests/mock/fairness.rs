//! Priority turns (`PolicyBuilder::priority_after`) against the mock source: a call whose first
//! k attempts failed runs its next attempt with no other attempt of its policy beside it; the
//! calls it held back go on afterwards; a dropped call gives its turn back; the time budget
//! still ends the wait; nested calls never wait; annotated functions that name one `static`
//! policy (`policy = …`) share its turns, and functions with policies of their own do not.
//!
//! Every call has a mock database of its own (its faults are scripted per attempt), and they
//! share one policy, which is what the turns belong to. The tests run on tokio's paused clock
//! on one thread, and move the calls forward by yielding, so nothing depends on timing.
#![cfg(feature = "mock")]

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use sqlx_retry::mock::{Fault, MockDb, MockTx, Phase};
use sqlx_retry::{Backoff, Policy, serializable_retry};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::Instant;

type Log = Arc<Mutex<Vec<String>>>;

fn policy(after: Option<u32>) -> Arc<Policy> {
    Arc::new(
        Policy::builder()
            .max_attempts(5)
            .backoff(Backoff::none())
            .priority_after(after)
            .build()
            .unwrap(),
    )
}

/// A database whose first `failures` attempts conflict in the body.
fn db(failures: u32) -> MockDb<i64> {
    (1..=failures).fold(MockDb::new(0), |db, n| {
        db.fail(n, Phase::Body, Fault::sqlstate("40001"))
    })
}

/// One attempt's body, for `spawn_call` and the annotated functions below: logs `name<n>` when
/// attempt `n` starts and `name<n> end` when it ends, and waits for a permit of `hold` (if any)
/// in between.
async fn logged_bump(
    tx: &mut MockTx<i64>,
    name: &str,
    log: &Log,
    hold: Option<&Semaphore>,
) -> Result<(), sqlx::Error> {
    let attempt = tx.attempt();
    log.lock().unwrap().push(format!("{name}{attempt}"));
    if let Some(hold) = hold {
        hold.acquire().await.unwrap().forget();
    }
    tx.execute("bump")?;
    log.lock().unwrap().push(format!("{name}{attempt} end"));
    Ok(())
}

/// Spawns one call named `name` under `policy` on `db`, each attempt running `logged_bump`.
fn spawn_call(
    name: &'static str,
    policy: &Arc<Policy>,
    db: MockDb<i64>,
    log: &Log,
    hold: Option<Arc<Semaphore>>,
) -> JoinHandle<Result<(), sqlx::Error>> {
    let (policy, log) = (policy.clone(), log.clone());
    tokio::spawn(async move {
        sqlx_retry::transaction(&db, &policy, |tx| {
            let (log, hold) = (log.clone(), hold.clone());
            Box::pin(async move { logged_bump(tx, name, &log, hold.as_deref()).await })
        })
        .await
    })
}

/// Lets every spawned task run until it waits.
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

fn logged(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

/// B's attempt is running (held); A fails twice and asks for priority; C is a new call.
/// Returns the handles and the hold on B.
async fn starving_scene(
    policy: &Arc<Policy>,
    log: &Log,
) -> (Arc<Semaphore>, [JoinHandle<Result<(), sqlx::Error>>; 3]) {
    let hold = Arc::new(Semaphore::new(0));
    let b = spawn_call("B", policy, db(0), log, Some(hold.clone()));
    settle().await;
    let a = spawn_call("A", policy, db(2), log, None);
    settle().await;
    let c = spawn_call("C", policy, db(0), log, None);
    settle().await;
    (hold, [a, b, c])
}

#[tokio::test(start_paused = true)]
async fn a_call_after_k_failures_runs_alone_then_the_others_resume() {
    let policy = policy(Some(2));
    let log = Log::default();
    let started = Instant::now();
    let (hold, [a, b, c]) = starving_scene(&policy, &log).await;
    // A's third attempt waits for B's attempt to end; C, new, waits behind A.
    assert_eq!(logged(&log), ["B1", "A1", "A2"]);
    hold.add_permits(1);
    for h in [a, b, c] {
        h.await.unwrap().unwrap();
    }
    assert_eq!(
        logged(&log),
        ["B1", "A1", "A2", "B1 end", "A3", "A3 end", "C1", "C1 end"]
    );
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "nobody waited for a timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn without_priority_turns_nobody_waits() {
    let policy = policy(None);
    let log = Log::default();
    let (hold, [a, b, c]) = starving_scene(&policy, &log).await;
    assert_eq!(
        logged(&log),
        ["B1", "A1", "A2", "A3", "A3 end", "C1", "C1 end"]
    );
    hold.add_permits(1);
    for h in [a, b, c] {
        h.await.unwrap().unwrap();
    }
    assert_eq!(logged(&log).last().map(String::as_str), Some("B1 end"));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_leaves_the_queue() {
    let policy = policy(Some(2));
    let log = Log::default();
    let (hold, [a, b, c]) = starving_scene(&policy, &log).await;
    assert_eq!(logged(&log), ["B1", "A1", "A2"]);
    // A is cancelled while it waits for its turn: C passes at once, B still running.
    a.abort();
    settle().await;
    assert_eq!(logged(&log), ["B1", "A1", "A2", "C1", "C1 end"]);
    c.await.unwrap().unwrap();
    hold.add_permits(1);
    b.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_gives_its_priority_turn_back() {
    let policy = policy(Some(1));
    let log = Log::default();
    let started = Instant::now();
    // A fails once, then holds its priority attempt (held in the body); B, new, waits behind it.
    let hold = Arc::new(Semaphore::new(0));
    let a = {
        let (policy, log, hold) = (policy.clone(), log.clone(), hold.clone());
        tokio::spawn(async move {
            sqlx_retry::transaction(&db(1), &policy, |tx| {
                let (log, hold) = (log.clone(), hold.clone());
                Box::pin(async move {
                    let attempt = tx.attempt();
                    log.lock().unwrap().push(format!("A{attempt}"));
                    tx.execute("bump")?;
                    hold.acquire().await.unwrap().forget();
                    Ok::<_, sqlx::Error>(())
                })
            })
            .await
        })
    };
    settle().await;
    let b = spawn_call("B", &policy, db(0), &log, None);
    settle().await;
    assert_eq!(logged(&log), ["A1", "A2"]);
    a.abort();
    settle().await;
    assert_eq!(logged(&log), ["A1", "A2", "B1", "B1 end"]);
    b.await.unwrap().unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn the_budget_ends_the_wait_for_a_turn() {
    let budget = Duration::from_millis(50);
    let policy = Arc::new(
        Policy::builder()
            .max_attempts(5)
            .backoff(Backoff::none())
            .budget(budget)
            .priority_after(1)
            .build()
            .unwrap(),
    );
    let log = Log::default();
    let hold = Arc::new(Semaphore::new(0));
    let b = spawn_call("B", &policy, db(0), &log, Some(hold.clone()));
    settle().await;
    let started = Instant::now();
    // A fails once and asks for priority; B never ends its attempt, so A's wait runs out at its
    // budget and its attempt runs without the turn.
    spawn_call("A", &policy, db(1), &log, None)
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() <= budget, "{:?}", started.elapsed());
    assert_eq!(logged(&log), ["B1", "A1", "A2", "A2 end"]);
    hold.add_permits(1);
    b.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_call_nested_in_an_attempt_never_waits_for_a_turn() {
    let policy = policy(Some(1));
    let log = Log::default();
    let started = Instant::now();
    // B's attempt waits until A has asked for priority, then makes a call of the same policy.
    let hold = Arc::new(Semaphore::new(0));
    let b = {
        let (policy, log, hold) = (policy.clone(), log.clone(), hold.clone());
        tokio::spawn(async move {
            let inner_policy = policy.clone();
            sqlx_retry::transaction(&db(0), &policy, |tx| {
                let (log, hold, inner_policy) = (log.clone(), hold.clone(), inner_policy.clone());
                Box::pin(async move {
                    hold.acquire().await.unwrap().forget();
                    sqlx_retry::transaction(&db(0), &inner_policy, |inner| {
                        let log = log.clone();
                        Box::pin(async move {
                            log.lock().unwrap().push("nested".to_owned());
                            inner.execute("bump")
                        })
                    })
                    .await?;
                    tx.execute("bump")
                })
            })
            .await
        })
    };
    settle().await;
    let a = spawn_call("A", &policy, db(1), &log, None);
    settle().await;
    assert_eq!(logged(&log), ["A1"]);
    hold.add_permits(1);
    b.await.unwrap().unwrap();
    a.await.unwrap().unwrap();
    assert_eq!(logged(&log), ["A1", "nested", "A2", "A2 end"]);
    assert_eq!(started.elapsed(), Duration::ZERO, "the nested call waited");
}

/// `starving_scene` with two annotated functions, `withdraw` (logged as A) and `deposit` (B),
/// each written with the attribute arguments given: B's `deposit` attempt runs and is held, then
/// A's `withdraw` fails twice. Evaluates to the hold on B and both calls.
macro_rules! two_function_scene {
    ($log:expr, $($args:tt)*) => {{
        #[serializable_retry($($args)*)]
        async fn withdraw(tx: &mut MockTx<i64>, log: &Log) -> Result<(), sqlx::Error> {
            logged_bump(tx, "A", log, None).await
        }
        #[serializable_retry($($args)*)]
        async fn deposit(
            tx: &mut MockTx<i64>,
            log: &Log,
            hold: &Semaphore,
        ) -> Result<(), sqlx::Error> {
            logged_bump(tx, "B", log, Some(hold)).await
        }
        let log: &Log = $log;
        let hold = Arc::new(Semaphore::new(0));
        let b = {
            let (log, hold) = (log.clone(), hold.clone());
            tokio::spawn(async move { deposit(&db(0), &log, &hold).await })
        };
        settle().await;
        let a = {
            let log = log.clone();
            tokio::spawn(async move { withdraw(&db(2), &log).await })
        };
        settle().await;
        (hold, [a, b])
    }};
}

#[tokio::test(start_paused = true)]
async fn functions_that_name_one_policy_share_its_turns() {
    static ACCOUNTS: LazyLock<Policy> = LazyLock::new(|| {
        Policy::builder()
            .max_attempts(5)
            .backoff(Backoff::none())
            .build()
            .unwrap()
    });
    let log = Log::default();
    let started = Instant::now();
    let (hold, [a, b]) = two_function_scene!(&log, policy = ACCOUNTS);
    // A's third attempt, a `withdraw`, waits for B's `deposit` attempt to end.
    assert_eq!(logged(&log), ["B1", "A1", "A2"]);
    hold.add_permits(1);
    for h in [a, b] {
        h.await.unwrap().unwrap();
    }
    assert_eq!(logged(&log), ["B1", "A1", "A2", "B1 end", "A3", "A3 end"]);
    // Both ran under `ACCOUNTS`, which retries at once: A waited for B's attempt, not for a
    // backoff (the default policy's would have moved the paused clock).
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn functions_with_policies_of_their_own_do_not_share_turns() {
    // The same two functions, each with the same settings in a policy of its own.
    let log = Log::default();
    let started = Instant::now();
    let (hold, [a, b]) = two_function_scene!(&log, max = 5, backoff(none));
    // A's priority attempt runs beside B's: B's function has a turn queue of its own.
    assert_eq!(logged(&log), ["B1", "A1", "A2", "A3", "A3 end"]);
    hold.add_permits(1);
    for h in [a, b] {
        h.await.unwrap().unwrap();
    }
    assert_eq!(logged(&log).last().map(String::as_str), Some("B1 end"));
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[test]
fn priority_after_zero_is_refused() {
    assert_eq!(
        Policy::builder().priority_after(0).build().unwrap_err(),
        sqlx_retry::PolicyError::ZeroPriorityAfter
    );
    let p = Policy::builder().priority_after(3).build().unwrap();
    assert_eq!(p.priority_after(), Some(3));
    assert_eq!(p.clone().priority_after(), Some(3));
}

/// The value of `const NAME: TYPE = VALUE;` in `src`, as written.
fn constant<'a>(src: &'a str, decl: &str) -> &'a str {
    let start = src.find(decl).unwrap_or_else(|| panic!("no `{decl}`")) + decl.len();
    src[start..].split(';').next().unwrap().trim()
}

/// The attribute checks `priority_after` against `max` at compile time, and when `max` is left
/// out, against its own copy of the core's default (a proc-macro crate cannot read the core's
/// constants), as it checks a backoff window against its copies of the default base and cap.
/// The copies must be the core's values.
#[test]
fn the_attribute_checks_against_the_core_defaults() {
    let attr = include_str!("../../retry-macros/src/attr.rs");
    assert_eq!(
        constant(attr, "const DEFAULT_MAX: u32 ="),
        Policy::DEFAULT_MAX_ATTEMPTS.to_string()
    );
    let millis = |decl| {
        let value = constant(attr, decl);
        let n = value
            .strip_prefix("Duration::from_millis(")
            .and_then(|v| v.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{decl} {value}"));
        Duration::from_millis(n.parse().unwrap())
    };
    assert_eq!(
        millis("const DEFAULT_BASE: Duration ="),
        Backoff::DEFAULT_BASE
    );
    assert_eq!(
        millis("const DEFAULT_CAP: Duration ="),
        Backoff::DEFAULT_CAP
    );
}
