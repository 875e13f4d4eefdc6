//! Unit-level tests without a database: the retry loop's semantics against the mock
//! transaction source, the mock pattern, the scripted wire server, backoff properties, adapters,
//! after-commit effects and metrics.

mod adapters;
mod backoff_props;
mod effects;
mod metrics;
mod pattern;
mod semantics;
mod server;
