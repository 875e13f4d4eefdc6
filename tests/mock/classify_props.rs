//! Property tests of classification on arbitrary database errors: any SQLSTATE, message, detail
//! and source file. Classification never panics; a `40003` (statement_completion_unknown) or a
//! lost connection is never a conflict, whatever `retry_on` lists; the message and fields name
//! a conflict's kind but never change its class; and a `40003` at COMMIT ends the call as
//! commit-unknown after one attempt.
#![cfg(feature = "mock")]

use proptest::prelude::*;
use sqlx_retry::error::{Class, classify, conflict_kind};
use sqlx_retry::mock::{Fault, MockDb, Phase, SimulatedDbError};
use sqlx_retry::{Policy, SqlState, is_commit_unknown, transaction};

/// A SQLSTATE: five characters of `[0-9A-Z]`, weighted towards the codes that matter.
fn sqlstate() -> impl Strategy<Value = SqlState> {
    let known = prop::sample::select(vec![
        "40001", "40P01", "40003", "40002", "40000", "08006", "08003", "08000", "57P01", "57P02",
        "57P03", "57P05", "25P03", "25P02", "25001", "25006", "2D000", "3B001", "42601", "42P01",
        "23505", "55P03", "57014", "XX000",
    ]);
    prop_oneof![
        known.prop_map(|c| SqlState::new(c).expect("valid")),
        "[0-9A-Z]{5}".prop_map(|c| SqlState::new(&c).expect("valid")),
    ]
}

/// Text that may carry the markers the classifier looks for, or anything at all.
fn text() -> impl Strategy<Value = String> {
    let marker = prop::sample::select(vec![
        "restart transaction: ",
        "TransactionRetryWithProtoRefreshError: ",
        "RETRY_WRITE_TOO_OLD",
        "RETRY_SERIALIZABLE",
        "RETRY_ASYNC_WRITE_FAILURE",
        "ReadWithinUncertaintyIntervalError",
        "RETRY_COMMIT_DEADLINE_EXCEEDED",
        "transaction deadline exceeded",
        "TransactionAbortedError(ABORT_REASON_CLIENT_REJECT)",
        "Restart read required at: ",
        "result is ambiguous",
        "Reason code: ",
        "could not serialize access due to concurrent update",
        "canceling statement due to conflict with recovery",
    ]);
    prop_oneof![
        any::<String>(),
        (any::<String>(), marker, any::<String>()).prop_map(|(a, m, b)| format!("{a}{m}{b}")),
    ]
}

fn file() -> impl Strategy<Value = Option<String>> {
    let known = prop::sample::select(vec!["predicate.c", "postgres.c", "heapam.c", "conn.go"]);
    prop_oneof![
        Just(None),
        known.prop_map(|f| Some(f.to_owned())),
        any::<String>().prop_map(Some),
    ]
}

fn error(
    code: SqlState,
    message: String,
    detail: Option<String>,
    file: Option<String>,
) -> sqlx::Error {
    let mut err = SimulatedDbError::new(code, message);
    if let Some(detail) = detail {
        err = err.detail(detail);
    }
    if let Some(file) = file {
        err = err.file(file);
    }
    err.into_sqlx()
}

fn is_connection_code(code: SqlState) -> bool {
    code.as_str().starts_with("08")
        || matches!(
            code.as_str(),
            "57P01" | "57P02" | "57P03" | "57P05" | "25P03"
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn classification_never_panics_and_never_makes_40003_or_a_lost_connection_a_conflict(
        code in sqlstate(),
        message in text(),
        detail in prop::option::of(text()),
        file in file(),
        also_retry in prop::collection::vec(sqlstate(), 0..4),
        opt_in_own_code in any::<bool>(),
    ) {
        let err = error(code, message, detail, file);
        let mut retry_on = also_retry;
        if opt_in_own_code {
            retry_on.push(code);
        }
        let class = classify(&err, &retry_on);
        let kind = conflict_kind(&err);
        prop_assert!(kind.is_some(), "every error with a SQLSTATE has a kind");
        prop_assert!(!is_commit_unknown(&err), "only the loop makes a commit-unknown error");
        if code == SqlState::STATEMENT_COMPLETION_UNKNOWN {
            prop_assert_eq!(class, Class::Permanent);
        } else if is_connection_code(code) {
            prop_assert_eq!(class, Class::ConnectionLost);
        } else if code == SqlState::SERIALIZATION_FAILURE
            || code == SqlState::DEADLOCK_DETECTED
            || retry_on.contains(&code)
        {
            // The message names the kind; it never decides the class.
            prop_assert_eq!(class, Class::Conflict(code));
        } else {
            prop_assert_eq!(class, Class::Permanent);
        }
    }

    #[test]
    fn an_io_error_is_a_lost_connection_whatever_it_says(message in any::<String>()) {
        let err = sqlx::Error::Io(std::io::Error::other(message));
        prop_assert_eq!(classify(&err, &[SqlState::SERIALIZATION_FAILURE]), Class::ConnectionLost);
        prop_assert_eq!(conflict_kind(&err), None);
    }
}

/// Even listed in `retry_on`, a `40003` at COMMIT is the commit-unknown outcome: one attempt, or
/// with `idempotent` a retry on a fresh connection.
#[tokio::test(start_paused = true)]
async fn a_40003_at_commit_stays_commit_unknown_when_listed_in_retry_on() {
    for idempotent in [false, true] {
        let db = MockDb::new(0_i64).fail(1, Phase::Commit, Fault::sqlstate("40003"));
        let policy = Policy::builder()
            .retry_on(["40003"])
            .idempotent(idempotent)
            .build()
            .expect("policy");
        let out = transaction(&db, &policy, |tx| {
            Box::pin(async move {
                tx.execute("bump")?;
                *tx.state_mut() += 1;
                Ok::<_, sqlx::Error>(*tx.state())
            })
        })
        .await;
        if idempotent {
            assert_eq!(out.expect("retried on a fresh connection"), 1);
            assert_eq!(db.attempts(), 2);
        } else {
            let err = out.expect_err("commit-unknown");
            assert!(is_commit_unknown(&err), "{err}");
            assert_eq!(db.attempts(), 1);
        }
    }
}
