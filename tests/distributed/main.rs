//! The distributed SQL dialect (CockroachDB, YugabyteDB) on real PostgreSQL. Neither engine can
//! be installed here, so what the SQL shares with PostgreSQL runs as is, and the engines' error
//! texts, quoted from their docs, are raised by PostgreSQL itself: `RAISE … USING ERRCODE`, in
//! the body or, from a deferred constraint trigger, at COMMIT.

mod commit_unknown;
mod injected;
mod savepoint;

use std::sync::{Arc, Mutex};

use sqlx_retry::{ConflictKind, Policy, PolicyBuilder, RetryInfo, SqlState};

/// One retry as the `on_retry` hook saw it: (attempt, SQLSTATE, kind).
pub type Seen = (u32, Option<SqlState>, Option<ConflictKind>);

/// What the `on_retry` hook saw.
#[derive(Clone, Default)]
pub struct Retries(Arc<Mutex<Vec<Seen>>>);

impl Retries {
    /// A policy from `builder` that records its retries here.
    pub fn policy(&self, builder: PolicyBuilder) -> Policy {
        let seen = Arc::clone(&self.0);
        builder
            .on_retry(move |info: &RetryInfo| {
                seen.lock()
                    .unwrap()
                    .push((info.attempt, info.sqlstate, info.conflict));
            })
            .build()
            .expect("valid policy")
    }

    /// The retries seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
}

/// `DO` block raising `code` with `message` (quotes doubled for SQL).
pub fn raise(code: &str, message: &str) -> String {
    format!(
        "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = '{}'; END $$",
        message.replace('\'', "''")
    )
}
