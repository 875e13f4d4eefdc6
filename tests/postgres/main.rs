//! Integration tests on a real PostgreSQL: isolation anomalies, the error matrix, nested calls,
//! `Ok` means committed, and the bank invariants.

mod bank;
mod commit;
mod errors;
mod isolation;
mod nested;
mod starvation;
