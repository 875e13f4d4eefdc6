//! Reliability on a real PostgreSQL: stress invariants, faults injected by a proxy and by the
//! server, and cancellation at every await point.

mod cancel;
mod common;
mod faults;
mod stress;
