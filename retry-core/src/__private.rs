//! Not public API; used by code that `#[serializable_retry]` generates. Nothing here follows
//! semver.

use std::error::Error as StdError;
use std::future::Future;

pub use tracing;

/// Fixes the output type of an attempt's `async` block so that `?` inside it knows which error
/// type to convert into.
#[inline(always)]
pub fn attempt<R, F: Future<Output = R>>(body: F) -> F {
    body
}

/// Converts a failed BEGIN into the function's error type. A function rather than an inline
/// `From::from` so that lints about the user's own code do not fire on generated code.
#[inline]
pub fn begin_failed<T, E: From<sqlx::Error>>(error: sqlx::Error) -> Result<T, E> {
    Err(E::from(error))
}

/// Wraps the body's error so that method resolution can pick how to view it as a `dyn Error`:
/// the error itself when it implements `Error` (`sqlx::Error`, thiserror enums), else its
/// `AsRef<dyn Error>` (`anyhow::Error`, `Box<dyn Error + Send + Sync>`).
pub struct Probe<'a, E>(pub &'a E);

/// First choice: `E: Error`.
pub trait ViaError<'a> {
    /// The error as a `dyn Error`.
    fn __sqlx_retry_chain(&self) -> Option<&'a (dyn StdError + 'static)>;
}

impl<'a, E: StdError + 'static> ViaError<'a> for &&&Probe<'a, E> {
    fn __sqlx_retry_chain(&self) -> Option<&'a (dyn StdError + 'static)> {
        Some(self.0)
    }
}

/// Second choice: `E: AsRef<dyn Error + Send + Sync>` (`anyhow::Error`, boxed errors).
pub trait ViaAsRefSendSync<'a> {
    /// The error as a `dyn Error`.
    fn __sqlx_retry_chain(&self) -> Option<&'a (dyn StdError + 'static)>;
}

impl<'a, E: AsRef<dyn StdError + Send + Sync + 'static>> ViaAsRefSendSync<'a> for &&Probe<'a, E> {
    fn __sqlx_retry_chain(&self) -> Option<&'a (dyn StdError + 'static)> {
        Some(self.0.as_ref())
    }
}

/// Third choice: `E: AsRef<dyn Error>`.
pub trait ViaAsRef<'a> {
    /// The error as a `dyn Error`.
    fn __sqlx_retry_chain(&self) -> Option<&'a (dyn StdError + 'static)>;
}

impl<'a, E: AsRef<dyn StdError + 'static>> ViaAsRef<'a> for &Probe<'a, E> {
    fn __sqlx_retry_chain(&self) -> Option<&'a (dyn StdError + 'static)> {
        Some(self.0.as_ref())
    }
}

/// Last resort: a compile error that says what the error type needs.
pub trait ViaNothing<'a> {
    /// Never callable: the bound explains the problem.
    fn __sqlx_retry_chain(&self) -> Option<&'a (dyn StdError + 'static)>
    where
        Self: Classifiable;
}

impl<'a, E> ViaNothing<'a> for Probe<'a, E> {
    fn __sqlx_retry_chain(&self) -> Option<&'a (dyn StdError + 'static)>
    where
        Self: Classifiable,
    {
        None
    }
}

/// The bound behind the last-resort compile error.
#[diagnostic::on_unimplemented(
    message = "`#[serializable_retry]` cannot find the SQLSTATE in this error type",
    label = "the function's error type",
    note = "the error type must implement `std::error::Error` (with `#[from] sqlx::Error` or a `#[source]` chain leading to it) or `AsRef<dyn std::error::Error>` like `anyhow::Error`"
)]
pub trait Classifiable {}

pub use crate::effects::Scoped;
pub use crate::run::{Attempts, Next};
pub use crate::source::OpenTransaction;
pub use crate::{Backoff, IsolationLevel, Policy, SqlState};

/// The policy of an annotated function, from its arguments as the attribute validated them at
/// compile time (so nothing here can fail). `priority_after` is at least 1.
#[allow(clippy::too_many_arguments)]
pub fn attribute_policy(
    max: u32,
    isolation: IsolationLevel,
    read_only: bool,
    deferrable: bool,
    backoff: Backoff,
    budget: Option<std::time::Duration>,
    retry_on: &'static [SqlState],
    idempotent: bool,
    priority_after: Option<u32>,
) -> Policy {
    Policy::from_attribute(
        max,
        isolation,
        read_only,
        deferrable,
        backoff,
        budget,
        retry_on,
        idempotent,
        priority_after,
    )
}

/// The policy of an annotated function with `savepoint` (or `savepoint = "name"`): `name` was
/// checked as a plain SQL identifier at compile time.
pub fn with_savepoint(mut policy: Policy, name: &'static str) -> Policy {
    policy.savepoint = Some(std::borrow::Cow::Borrowed(name));
    policy
}

/// The policy of an annotated function marked `replica`: `policy`, allowed on a hot standby.
/// The attribute has checked `read_only` and the isolation level.
pub const fn replica(mut policy: Policy) -> Policy {
    policy.options.replica = true;
    policy
}

/// A SQLSTATE the attribute has already checked. Used in a `const` item, so a code that is not
/// a SQLSTATE stops the build instead of being replaced by another one.
pub const fn sqlstate(code: &str) -> SqlState {
    match SqlState::new(code) {
        Some(code) => code,
        None => panic!("`#[serializable_retry]` emitted a malformed SQLSTATE"),
    }
}

/// The bound on a `&mut T` argument that is put back to its value from before the call when an
/// attempt fails and is retried.
#[diagnostic::on_unimplemented(
    message = "`#[serializable_retry]` restores `&mut` arguments when an attempt is retried, so `{Self}` must be `Clone`",
    label = "not `Clone`: cannot be restored before a retry",
    note = "mark the parameter `#[keep]` (the receiver `#[keep] &mut self`) to keep what failed attempts wrote, as an accumulator or a counter wants; or derive `Clone`"
)]
pub trait RestoreOnRetry {
    /// The value to restore.
    fn __sqlx_retry_save(&self) -> Self;
    /// Puts `saved` back.
    fn __sqlx_retry_restore(&mut self, saved: &Self);
}

impl<T: Clone> RestoreOnRetry for T {
    fn __sqlx_retry_save(&self) -> Self {
        self.clone()
    }
    fn __sqlx_retry_restore(&mut self, saved: &Self) {
        self.clone_from(saved);
    }
}

/// A `&mut` argument's value from before the call's first attempt.
pub struct Saved<T> {
    value: T,
    put_back: fn(&mut T, &T),
}

/// Saves a `&mut` argument's value; the only place that needs `T: Clone`, so a type that is not
/// is one error, on the parameter.
pub fn save<T: RestoreOnRetry>(value: &T) -> Saved<T> {
    Saved {
        value: value.__sqlx_retry_save(),
        put_back: <T as RestoreOnRetry>::__sqlx_retry_restore,
    }
}

impl<T> Saved<T> {
    /// Puts the saved value back before a retry.
    pub fn restore(&self, target: &mut T) {
        (self.put_back)(target, &self.value);
    }
}
