//! Unit-level tests without a database: the retry loop's semantics against the mock
//! transaction source, the savepoint protocol, the mock pattern, the scripted wire server,
//! classification and backoff properties, adapters, after-commit effects and metrics.

mod adapters;
mod backoff_props;
mod classify_props;
mod effects;
mod fairness;
mod metrics;
mod pattern;
mod savepoint;
mod semantics;
mod server;
