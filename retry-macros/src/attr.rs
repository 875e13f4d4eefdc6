//! The attribute's arguments: each key has its own small parser that records it once in a raw
//! [`Configuration`]; [`Configuration::build`] resolves the defaults and the cross-checks in one
//! place into the [`Config`] that expansion reads. Every error is spanned on the offending token.

use std::time::Duration;

use proc_macro2::Span;
use syn::parse::{ParseStream, Parser};
use syn::{Lit, LitStr, Token, bracketed, parenthesized};

mod kw {
    syn::custom_keyword!(max);
    syn::custom_keyword!(isolation);
    syn::custom_keyword!(read_only);
    syn::custom_keyword!(deferrable);
    syn::custom_keyword!(replica);
    syn::custom_keyword!(backoff);
    syn::custom_keyword!(base);
    syn::custom_keyword!(cap);
    syn::custom_keyword!(budget);
    syn::custom_keyword!(timeout);
    syn::custom_keyword!(retry_on);
    syn::custom_keyword!(idempotent);
    syn::custom_keyword!(keep_signature);
    syn::custom_keyword!(savepoint);
    syn::custom_keyword!(priority_after);
    syn::custom_keyword!(policy);
    syn::custom_keyword!(none);
}

const KEYS: [&str; 14] = [
    "policy",
    "max",
    "isolation",
    "read_only",
    "deferrable",
    "replica",
    "backoff",
    "budget",
    "retry_on",
    "idempotent",
    "savepoint",
    "priority_after",
    "keep_signature",
    "crate",
];

/// The savepoint name of a bare `savepoint`: CockroachDB's, the core crate's
/// `Policy::DEFAULT_SAVEPOINT`.
const DEFAULT_SAVEPOINT: &str = "cockroach_restart";

/// The backoff window when `backoff(…)` leaves `base` or `cap` out; the same values as the core
/// crate's `Backoff::DEFAULT_BASE` and `Backoff::DEFAULT_CAP`, which expansion names. Used here
/// only to check `base <= cap` at compile time.
const DEFAULT_BASE: Duration = Duration::from_millis(5);
const DEFAULT_CAP: Duration = Duration::from_millis(500);

/// The core crate's `Policy::DEFAULT_MAX_ATTEMPTS`, which expansion names when `max` is left
/// out. Used here only to check `priority_after` against it at compile time.
const DEFAULT_MAX: u32 = 5;

/// The smallest `budget`: tokio's timer counts whole milliseconds, so a shorter budget is spent
/// before any backoff sleep can end and no retry could ever start.
const MIN_BUDGET: Duration = Duration::from_millis(1);

/// The isolation levels the attribute accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    Serializable,
    RepeatableRead,
    ReadCommitted,
}

const ISOLATIONS: [(&str, Isolation); 3] = [
    ("serializable", Isolation::Serializable),
    ("repeatable_read", Isolation::RepeatableRead),
    ("read_committed", Isolation::ReadCommitted),
];

/// The backoff strategies the attribute names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Adaptive,
    Exponential,
    Decorrelated,
    None,
}

const STRATEGIES: [(&str, Strategy); 4] = [
    ("adaptive", Strategy::Adaptive),
    ("exponential", Strategy::Exponential),
    ("decorrelated", Strategy::Decorrelated),
    ("none", Strategy::None),
];

/// A value and the span of the key that set it.
#[derive(Debug, Clone)]
pub struct Set<T> {
    pub value: T,
    pub key: Span,
}

/// `backoff(strategy, base = "…", cap = "…")` as written.
#[derive(Debug, Clone, Default)]
pub struct RawBackoff {
    pub strategy: Option<Set<Strategy>>,
    pub base: Option<Set<Duration>>,
    pub cap: Option<Set<Duration>>,
}

/// The arguments as written, each key at most once.
#[derive(Debug, Default)]
pub struct Configuration {
    /// `policy = PATH`: a `static` the function shares with others.
    pub policy: Option<Set<syn::Path>>,
    pub max: Option<Set<u32>>,
    pub isolation: Option<Set<Isolation>>,
    pub read_only: Option<Set<()>>,
    pub deferrable: Option<Set<()>>,
    pub replica: Option<Set<()>>,
    pub backoff: Option<Set<RawBackoff>>,
    pub budget: Option<Set<Duration>>,
    pub retry_on: Option<Set<Vec<SqlStateCode>>>,
    pub idempotent: Option<Set<()>>,
    pub savepoint: Option<Set<String>>,
    /// `priority_after = N` (with the span of `N`) or `priority_after = none`.
    pub priority_after: Option<Set<Option<(u32, Span)>>>,
    pub keep_signature: Option<Set<()>>,
    pub krate: Option<Set<syn::Path>>,
}

/// A SQLSTATE checked at parse time: five characters from `0-9A-Z`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlStateCode(pub String);

/// The resolved backoff: `None` means the core crate's default backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffConfig {
    pub strategy: Strategy,
    /// `None`: the core crate's default (`Backoff::DEFAULT_BASE` / `DEFAULT_CAP`).
    pub base: Option<Duration>,
    pub cap: Option<Duration>,
}

/// Priority turns (`priority_after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Left out: the core crate's `Policy::DEFAULT_PRIORITY_AFTER`.
    Default,
    /// `priority_after = N`.
    After(u32),
    /// `priority_after = none`.
    Off,
}

/// The final configuration: defaults resolved, cross-checks done. Expansion reads only this.
#[derive(Debug, Clone)]
pub struct Config {
    /// `policy = PATH`: the function runs under that `static` policy, and every setting below
    /// up to `priority` is left at its default (the attribute refuses them beside `policy`).
    pub shared: Option<syn::Path>,
    /// `None`: the core crate's `Policy::DEFAULT_MAX_ATTEMPTS`.
    pub max: Option<u32>,
    pub isolation: Isolation,
    pub read_only: bool,
    pub deferrable: bool,
    /// May run on a hot standby (checked: `read_only`, not `serializable`).
    pub replica: bool,
    /// `None`: the core crate's `Backoff::default()`.
    pub backoff: Option<BackoffConfig>,
    pub budget: Option<Duration>,
    pub retry_on: Vec<SqlStateCode>,
    pub idempotent: bool,
    /// The savepoint protocol's name, when it is on.
    pub savepoint: Option<String>,
    pub priority: Priority,
    pub keep_signature: bool,
    pub krate: syn::Path,
}

impl Config {
    /// The defaults, with the crate path the user gave if it could be read: what the function is
    /// expanded with when an argument is wrong, so that callers still see the rewritten signature.
    pub fn fallback(raw: &Configuration) -> Config {
        Config {
            shared: None,
            max: None,
            isolation: Isolation::Serializable,
            read_only: false,
            deferrable: false,
            replica: false,
            backoff: None,
            budget: None,
            retry_on: Vec::new(),
            idempotent: false,
            savepoint: None,
            priority: Priority::Default,
            keep_signature: raw.keep_signature.is_some(),
            krate: krate(raw),
        }
    }
}

fn krate(raw: &Configuration) -> syn::Path {
    raw.krate
        .as_ref()
        .map_or_else(|| syn::parse_quote!(::sqlx_retry), |k| k.value.clone())
}

/// Parses the attribute's arguments. Always returns a configuration to expand with: the one
/// written, or the defaults and the error that prevented it.
pub fn parse(args: proc_macro2::TokenStream) -> (Config, Option<syn::Error>) {
    let mut raw = Configuration::default();
    let parsed = (|input: ParseStream<'_>| raw.parse_all(input)).parse2(args);
    match parsed.and_then(|()| raw.build()) {
        Ok(config) => (config, None),
        Err(err) => (Config::fallback(&raw), Some(err)),
    }
}

fn set_once<T>(slot: &mut Option<Set<T>>, key: Span, name: &str, value: T) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new(key, format!("`{name}` set twice")));
    }
    *slot = Some(Set { value, key });
    Ok(())
}

/// A key without a value (`read_only`): rejects `read_only = true`.
fn flag(input: ParseStream<'_>, name: &str) -> syn::Result<()> {
    if input.peek(Token![=]) {
        return Err(syn::Error::new(
            input.span(),
            format!("`{name}` is a flag: write `{name}` without a value"),
        ));
    }
    Ok(())
}

/// `= "…"` after `key`.
fn string_value(input: ParseStream<'_>, name: &str, example: &str) -> syn::Result<LitStr> {
    input.parse::<Token![=]>()?;
    if input.peek(LitStr) {
        return input.parse();
    }
    let found: proc_macro2::TokenTree = input.parse().map_err(|_| {
        syn::Error::new(
            input.span(),
            format!("`{name}` expects a string, such as `{name} = {example}`"),
        )
    })?;
    Err(syn::Error::new(
        found.span(),
        format!("`{name}` expects a string, such as `{name} = {example}`"),
    ))
}

impl Configuration {
    fn parse_all(&mut self, input: ParseStream<'_>) -> syn::Result<()> {
        while !input.is_empty() {
            self.parse_one(input)?;
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(())
    }

    fn parse_one(&mut self, input: ParseStream<'_>) -> syn::Result<()> {
        let lookahead = input.lookahead1();
        if lookahead.peek(kw::policy) {
            let key = input.parse::<kw::policy>()?.span;
            let path = parse_policy(input)?;
            set_once(&mut self.policy, key, "policy", path)
        } else if lookahead.peek(kw::max) {
            let key = input.parse::<kw::max>()?.span;
            let n = parse_max(input)?;
            set_once(&mut self.max, key, "max", n)
        } else if lookahead.peek(kw::isolation) {
            let key = input.parse::<kw::isolation>()?.span;
            let level = parse_isolation(input)?;
            set_once(&mut self.isolation, key, "isolation", level)
        } else if lookahead.peek(kw::read_only) {
            let key = input.parse::<kw::read_only>()?.span;
            flag(input, "read_only")?;
            set_once(&mut self.read_only, key, "read_only", ())
        } else if lookahead.peek(kw::deferrable) {
            let key = input.parse::<kw::deferrable>()?.span;
            flag(input, "deferrable")?;
            set_once(&mut self.deferrable, key, "deferrable", ())
        } else if lookahead.peek(kw::replica) {
            let key = input.parse::<kw::replica>()?.span;
            flag(input, "replica")?;
            set_once(&mut self.replica, key, "replica", ())
        } else if lookahead.peek(kw::idempotent) {
            let key = input.parse::<kw::idempotent>()?.span;
            flag(input, "idempotent")?;
            set_once(&mut self.idempotent, key, "idempotent", ())
        } else if lookahead.peek(kw::savepoint) {
            let key = input.parse::<kw::savepoint>()?.span;
            let name = parse_savepoint(input)?;
            set_once(&mut self.savepoint, key, "savepoint", name)
        } else if lookahead.peek(kw::priority_after) {
            let key = input.parse::<kw::priority_after>()?.span;
            let after = parse_priority_after(input)?;
            set_once(&mut self.priority_after, key, "priority_after", after)
        } else if lookahead.peek(kw::keep_signature) {
            let key = input.parse::<kw::keep_signature>()?.span;
            flag(input, "keep_signature")?;
            set_once(&mut self.keep_signature, key, "keep_signature", ())
        } else if lookahead.peek(kw::backoff) {
            let key = input.parse::<kw::backoff>()?.span;
            let value = parse_backoff(input, key)?;
            set_once(&mut self.backoff, key, "backoff", value)
        } else if lookahead.peek(kw::budget) {
            let key = input.parse::<kw::budget>()?.span;
            let budget = parse_budget(input)?;
            set_once(&mut self.budget, key, "budget", budget)
        } else if lookahead.peek(kw::timeout) {
            let key = input.parse::<kw::timeout>()?.span;
            Err(syn::Error::new(
                key,
                "`timeout` is renamed `budget`: it bounds the time in which retries may start, not the call; \
                 to put a deadline on the whole call, wrap it in `tokio::time::timeout(…)`",
            ))
        } else if lookahead.peek(kw::retry_on) {
            let key = input.parse::<kw::retry_on>()?.span;
            let codes = parse_retry_on(input)?;
            set_once(&mut self.retry_on, key, "retry_on", codes)
        } else if lookahead.peek(Token![crate]) {
            let key = input.parse::<Token![crate]>()?.span;
            let path = parse_crate(input)?;
            set_once(&mut self.krate, key, "crate", path)
        } else if input.peek(syn::Ident) {
            let ident: syn::Ident = input.parse()?;
            let name = ident.to_string();
            let hint = closest(&name, KEYS.iter().copied())
                .map(|k| format!("did you mean `{k}`? "))
                .unwrap_or_default();
            Err(syn::Error::new(
                ident.span(),
                format!(
                    "unknown argument `{name}`; {hint}expected {}",
                    list(KEYS.iter().copied())
                ),
            ))
        } else {
            Err(lookahead.error())
        }
    }

    /// Beside `policy = PATH`, the keys that set the policy are refused: the shared policy is
    /// built once, by its own builder, and every function that names it runs under it alone.
    fn check_shared(&self, policy: &Set<syn::Path>) -> syn::Result<()> {
        fn key<T>(slot: &Option<Set<T>>) -> Option<Span> {
            slot.as_ref().map(|s| s.key)
        }
        let policy_keys = [
            (key(&self.max), "max"),
            (key(&self.isolation), "isolation"),
            (key(&self.read_only), "read_only"),
            (key(&self.deferrable), "deferrable"),
            (key(&self.replica), "replica"),
            (key(&self.backoff), "backoff"),
            (key(&self.budget), "budget"),
            (key(&self.retry_on), "retry_on"),
            (key(&self.idempotent), "idempotent"),
            (key(&self.savepoint), "savepoint"),
            (key(&self.priority_after), "priority_after"),
        ];
        let Some((Some(span), name)) = policy_keys.into_iter().find(|(span, _)| span.is_some())
        else {
            return Ok(());
        };
        // The `PolicyBuilder` method that sets it has its name, but for `max`.
        let method = if name == "max" { "max_attempts" } else { name };
        let path = &policy.value;
        let path = quote::quote!(#path).to_string().replace(' ', "");
        Err(syn::Error::new(
            span,
            format!(
                "`{name}` cannot be set beside `policy = {path}`: the shared policy sets it for \
                 every function that names it; set it where `{path}` is built, with \
                 `PolicyBuilder::{method}`"
            ),
        ))
    }

    /// Resolves the defaults and checks the keys against each other.
    pub fn build(&self) -> syn::Result<Config> {
        if let Some(policy) = &self.policy {
            self.check_shared(policy)?;
        }
        let isolation = self
            .isolation
            .as_ref()
            .map_or(Isolation::Serializable, |s| s.value);
        if let Some(deferrable) = &self.deferrable
            && (self.read_only.is_none() || isolation != Isolation::Serializable)
        {
            return Err(syn::Error::new(
                deferrable.key,
                "`deferrable` needs `read_only` and `isolation = \"serializable\"`",
            ));
        }
        if let Some(replica) = &self.replica {
            if self.read_only.is_none() {
                return Err(syn::Error::new(
                    replica.key,
                    "`replica` needs `read_only`: a standby refuses writes (SQLSTATE 25006)",
                ));
            }
            if isolation == Isolation::Serializable {
                let fix = if self.isolation.is_some() {
                    "use"
                } else {
                    "add"
                };
                return Err(syn::Error::new(
                    replica.key,
                    format!(
                        "`replica` cannot run at `serializable`: standbys refuse SERIALIZABLE \
                         transactions (SQLSTATE 0A000); {fix} `isolation = \"repeatable_read\"`"
                    ),
                ));
            }
        }
        let backoff = match &self.backoff {
            None => None,
            Some(Set { value: raw, key }) => {
                let strategy = raw
                    .strategy
                    .as_ref()
                    .map_or(Strategy::Adaptive, |s| s.value);
                let base = raw.base.as_ref().map(|s| s.value);
                let cap = raw.cap.as_ref().map(|s| s.value);
                if strategy == Strategy::None && (base.is_some() || cap.is_some()) {
                    let at = raw
                        .base
                        .as_ref()
                        .or(raw.cap.as_ref())
                        .map_or(*key, |s| s.key);
                    return Err(syn::Error::new(
                        at,
                        "`none` retries at once and takes no `base` or `cap`",
                    ));
                }
                let (b, c) = (base.unwrap_or(DEFAULT_BASE), cap.unwrap_or(DEFAULT_CAP));
                if b > c {
                    let at = raw
                        .base
                        .as_ref()
                        .or(raw.cap.as_ref())
                        .map_or(*key, |s| s.key);
                    return Err(syn::Error::new(
                        at,
                        format!("backoff `base` ({b:?}) is larger than `cap` ({c:?})"),
                    ));
                }
                Some(BackoffConfig {
                    strategy,
                    base,
                    cap,
                })
            }
        };
        let max = self.max.as_ref().map(|s| s.value);
        let priority = match self.priority_after.as_ref().map(|s| s.value) {
            None => Priority::Default,
            Some(None) => Priority::Off,
            Some(Some((after, span))) => {
                let max = max.unwrap_or(DEFAULT_MAX);
                if after >= max {
                    let max_text = match self.max {
                        Some(_) => format!("`max = {max}`"),
                        None => format!("the default `max` of {max}"),
                    };
                    return Err(syn::Error::new(
                        span,
                        format!(
                            "`priority_after = {after}` never applies with {max_text}: a call \
                             whose first {after} attempts failed has no attempt left; use a \
                             number below `max`, or `priority_after = none` for no priority \
                             turns"
                        ),
                    ));
                }
                Priority::After(after)
            }
        };
        Ok(Config {
            shared: self.policy.as_ref().map(|s| s.value.clone()),
            max,
            isolation,
            read_only: self.read_only.is_some(),
            deferrable: self.deferrable.is_some(),
            replica: self.replica.is_some(),
            backoff,
            budget: self.budget.as_ref().map(|s| s.value),
            retry_on: self
                .retry_on
                .as_ref()
                .map(|s| s.value.clone())
                .unwrap_or_default(),
            idempotent: self.idempotent.is_some(),
            savepoint: self.savepoint.as_ref().map(|s| s.value.clone()),
            priority,
            keep_signature: self.keep_signature.is_some(),
            krate: krate(self),
        })
    }
}

/// `= PATH` after `policy`: the path of a `static` holding a `Policy` (a `LazyLock<Policy>`, for
/// one built with `Policy::builder()`).
fn parse_policy(input: ParseStream<'_>) -> syn::Result<syn::Path> {
    const EXPECTED: &str = "`policy` expects the path of a `static` that holds a `Policy`, such as \
                            `policy = ACCOUNTS` for `static ACCOUNTS: LazyLock<Policy>`";
    input.parse::<Token![=]>()?;
    if input.peek(syn::Ident)
        || input.peek(Token![::])
        || input.peek(Token![crate])
        || input.peek(Token![self])
        || input.peek(Token![super])
    {
        return input.parse::<syn::Path>();
    }
    let span = input
        .parse::<proc_macro2::TokenTree>()
        .map_or_else(|_| input.span(), |t| t.span());
    Err(syn::Error::new(span, EXPECTED))
}

/// Nothing (`savepoint`: CockroachDB's `cockroach_restart`) or `= "name"`, a plain SQL
/// identifier: it is spliced into `SAVEPOINT name`.
fn parse_savepoint(input: ParseStream<'_>) -> syn::Result<String> {
    if !input.peek(Token![=]) {
        return Ok(DEFAULT_SAVEPOINT.to_owned());
    }
    let lit = string_value(input, "savepoint", "\"cockroach_restart\"")?;
    let name = lit.value();
    if !is_plain_identifier(&name) {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "savepoint name {name:?} is not a plain SQL identifier: expected \
                 [A-Za-z_][A-Za-z0-9_]*, at most 63 bytes, not a reserved word (it is spliced into SQL)"
            ),
        ));
    }
    Ok(name)
}

/// PostgreSQL's keywords that cannot name a savepoint; the same list as the core crate's
/// `PolicyBuilder::savepoint` check (`tests/mock/savepoint.rs` fails when the two differ).
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// `[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes, not a reserved word: the same rule as the core
/// crate's `PolicyBuilder::savepoint`.
fn is_plain_identifier(name: &str) -> bool {
    let bytes = name.as_bytes();
    matches!(bytes.first(), Some(b'A'..=b'Z' | b'a'..=b'z' | b'_'))
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        && !RESERVED.contains(&name.to_ascii_lowercase().as_str())
}

/// `= N`: a plain integer literal, at least 1.
fn parse_max(input: ParseStream<'_>) -> syn::Result<u32> {
    input.parse::<Token![=]>()?;
    let expected = "`max` expects an integer, the total number of attempts, such as `max = 5`";
    let (n, _) = parse_count(
        input,
        "max",
        expected,
        "`max` must be at least 1: it counts every attempt, the first included",
    )?;
    Ok(n)
}

/// `= N` (at least 1) or `= none`: the value and the span of `N`, or `None` for `none`.
fn parse_priority_after(input: ParseStream<'_>) -> syn::Result<Option<(u32, Span)>> {
    input.parse::<Token![=]>()?;
    if input.peek(kw::none) {
        input.parse::<kw::none>()?;
        return Ok(None);
    }
    let expected = "`priority_after` expects the number of failed attempts after which a call's \
                    next attempt runs alone, such as `priority_after = 2`, or `none` for no \
                    priority turns";
    parse_count(
        input,
        "priority_after",
        expected,
        "`priority_after` must be at least 1: priority goes to calls whose attempts failed; \
         `priority_after = none` means no priority turns",
    )
    .map(Some)
}

/// A plain integer literal, at least 1, and its span; `name` is the key, for the messages.
fn parse_count(
    input: ParseStream<'_>,
    name: &str,
    expected: &str,
    zero: &str,
) -> syn::Result<(u32, Span)> {
    let lit = match input.parse::<Lit>() {
        Ok(lit) => lit,
        Err(_) => {
            let found: proc_macro2::TokenTree = input
                .parse()
                .map_err(|_| syn::Error::new(input.span(), expected))?;
            return Err(syn::Error::new(found.span(), expected));
        }
    };
    let Lit::Int(int) = lit else {
        return Err(syn::Error::new(lit.span(), expected));
    };
    if !int.suffix().is_empty() {
        return Err(syn::Error::new(
            int.span(),
            format!(
                "`{name}` takes a plain integer without a type suffix: write `{name} = {}`",
                int.base10_digits()
            ),
        ));
    }
    let n: u32 = int.base10_parse().map_err(|_| {
        syn::Error::new(
            int.span(),
            format!("`{name}` is too large: at most {}", u32::MAX),
        )
    })?;
    if n == 0 {
        return Err(syn::Error::new(int.span(), zero));
    }
    Ok((n, int.span()))
}

/// `= "serializable" | "repeatable_read" | "read_committed"`.
fn parse_isolation(input: ParseStream<'_>) -> syn::Result<Isolation> {
    let lit = string_value(input, "isolation", "\"serializable\"")?;
    let text = lit.value();
    if let Some((_, level)) = ISOLATIONS.iter().find(|(name, _)| *name == text) {
        return Ok(*level);
    }
    let names = ISOLATIONS.iter().map(|(name, _)| *name);
    let hint = closest(&text, names.clone())
        .map(|n| format!("did you mean `{n}`? "))
        .unwrap_or_default();
    Err(syn::Error::new(
        lit.span(),
        format!(
            "unknown isolation level `{text}`; {hint}expected {}",
            list(names)
        ),
    ))
}

/// `= "2s"`: at least [`MIN_BUDGET`].
fn parse_budget(input: ParseStream<'_>) -> syn::Result<Duration> {
    let lit = string_value(input, "budget", "\"2s\"")?;
    let budget = parse_duration(&lit)?;
    if budget < MIN_BUDGET {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "`budget` must be at least 1ms: no retry starts whose backoff would end past the budget, \
                 and the timer counts whole milliseconds, so a budget of {budget:?} never allows a retry"
            ),
        ));
    }
    Ok(budget)
}

/// `= ["23505", …]`: at least one code, each a SQLSTATE, none twice, none retried anyway.
fn parse_retry_on(input: ParseStream<'_>) -> syn::Result<Vec<SqlStateCode>> {
    input.parse::<Token![=]>()?;
    let content;
    let brackets = bracketed!(content in input);
    let codes = content.parse_terminated(|p| p.parse::<LitStr>(), Token![,])?;
    if codes.is_empty() {
        return Err(syn::Error::new(
            brackets.span.join(),
            "`retry_on` lists no code: name at least one SQLSTATE, such as `retry_on = [\"55P03\"]`, or remove it",
        ));
    }
    let mut list: Vec<SqlStateCode> = Vec::new();
    for lit in codes {
        let code = lit.value();
        if !is_sqlstate(&code) {
            return Err(syn::Error::new(
                lit.span(),
                format!(
                    "`{code}` is not a SQLSTATE: expected five characters from 0-9 and A-Z, such as \"23505\""
                ),
            ));
        }
        if code == "40001" || code == "40P01" {
            return Err(syn::Error::new(
                lit.span(),
                format!("`{code}` is always retried: remove it from `retry_on`"),
            ));
        }
        if list.iter().any(|c| c.0 == code) {
            return Err(syn::Error::new(
                lit.span(),
                format!("`{code}` is listed twice in `retry_on`"),
            ));
        }
        list.push(SqlStateCode(code));
    }
    Ok(list)
}

/// `= "::path"`.
fn parse_crate(input: ParseStream<'_>) -> syn::Result<syn::Path> {
    let lit = string_value(input, "crate", "\"::sqlx_retry\"")?;
    lit.parse().map_err(|_| {
        syn::Error::new(
            lit.span(),
            "`crate` must name a path, such as \"::my_sqlx_retry\"",
        )
    })
}

/// `(strategy, base = "…", cap = "…")` after `backoff`, each part at most once.
fn parse_backoff(input: ParseStream<'_>, key: Span) -> syn::Result<RawBackoff> {
    if !input.peek(syn::token::Paren) {
        return Err(syn::Error::new(
            key,
            "expected `backoff(base = \"5ms\", cap = \"500ms\")`, optionally starting with a strategy: `adaptive`, `exponential`, `decorrelated` or `none`",
        ));
    }
    let content;
    parenthesized!(content in input);
    let mut out = RawBackoff::default();
    while !content.is_empty() {
        let lookahead = content.lookahead1();
        if lookahead.peek(kw::base) {
            let k = content.parse::<kw::base>()?.span;
            let d = parse_window(&content, "base")?;
            set_once(&mut out.base, k, "base", d)?;
        } else if lookahead.peek(kw::cap) {
            let k = content.parse::<kw::cap>()?.span;
            let d = parse_window(&content, "cap")?;
            set_once(&mut out.cap, k, "cap", d)?;
        } else if content.peek(syn::Ident) && !content.peek2(Token![=]) {
            // A strategy name: `backoff(exponential, base = "5ms")`.
            let ident: syn::Ident = content.parse()?;
            let name = ident.to_string();
            let Some((_, strategy)) = STRATEGIES.iter().find(|(n, _)| *n == name) else {
                let names = STRATEGIES.iter().map(|(n, _)| *n);
                let hint = closest(&name, names.clone())
                    .map(|n| format!("did you mean `{n}`? "))
                    .unwrap_or_default();
                return Err(syn::Error::new(
                    ident.span(),
                    format!(
                        "unknown backoff strategy `{name}`; {hint}expected {}",
                        list(names)
                    ),
                ));
            };
            if out.base.is_some() || out.cap.is_some() {
                return Err(syn::Error::new(
                    ident.span(),
                    "the strategy comes first: `backoff(exponential, base = \"5ms\")`",
                ));
            }
            set_once(
                &mut out.strategy,
                ident.span(),
                "the backoff strategy",
                *strategy,
            )?;
        } else if content.peek(syn::Ident) {
            let ident: syn::Ident = content.parse()?;
            return Err(syn::Error::new(
                ident.span(),
                format!("unknown backoff argument `{ident}`; expected `base` or `cap`"),
            ));
        } else {
            return Err(lookahead.error());
        }
        if content.is_empty() {
            break;
        }
        content.parse::<Token![,]>()?;
    }
    Ok(out)
}

/// `= "5ms"` after `base` or `cap`: greater than zero.
fn parse_window(input: ParseStream<'_>, name: &str) -> syn::Result<Duration> {
    let lit = string_value(input, name, "\"5ms\"")?;
    let d = parse_duration(&lit)?;
    if d.is_zero() {
        return Err(syn::Error::new(
            lit.span(),
            format!("`{name}` must be greater than zero"),
        ));
    }
    Ok(d)
}

fn is_sqlstate(code: &str) -> bool {
    code.len() == 5
        && code
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

/// "`a`, `b` or `c`".
fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    match names.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The candidate closest to `word` (case-insensitive edit distance), if it is close enough to be
/// a slip of the keyboard or of spelling (`serialisable`, `Serializable`, `retries_on`).
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase().replace(['-', ' '], "_");
    candidates
        .map(|c| (edit_distance(&word, c), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Parses `"250us"`, `"5ms"`, `"1.5s"`, `"2m"` into a duration.
pub fn parse_duration(lit: &LitStr) -> syn::Result<Duration> {
    let text = lit.value();
    let malformed = || {
        syn::Error::new(
            lit.span(),
            format!(
                "malformed duration `{text}`; expected a number and a unit (ns, us, ms, s, m), such as \"5ms\" or \"2s\""
            ),
        )
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(malformed)?;
    let (number, unit) = text.split_at(split);
    let nanos_per_unit: f64 = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        _ => return Err(malformed()),
    };
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(malformed());
    }
    let value: f64 = number.parse().map_err(|_| malformed())?;
    let nanos = value * nanos_per_unit;
    if !nanos.is_finite() || nanos > u64::MAX as f64 {
        return Err(syn::Error::new(lit.span(), "duration too large"));
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(src: &str) -> syn::Result<Config> {
        let (config, err) = parse(src.parse().unwrap());
        match err {
            Some(err) => Err(err),
            None => Ok(config),
        }
    }

    fn err(src: &str) -> String {
        parse_str(src).unwrap_err().to_string()
    }

    #[test]
    fn accepts_every_argument() {
        let config = parse_str(
            r#"max = 7, isolation = "repeatable_read", read_only, backoff(base = "2ms", cap = "1.5s"),
               budget = "2s", retry_on = ["23505", "55P03"], idempotent, keep_signature, crate = "::renamed""#,
        )
        .unwrap();
        assert_eq!(config.max, Some(7));
        assert_eq!(config.isolation, Isolation::RepeatableRead);
        let backoff = config.backoff.unwrap();
        assert_eq!(backoff.strategy, Strategy::Adaptive);
        assert_eq!(backoff.base, Some(Duration::from_millis(2)));
        assert_eq!(backoff.cap, Some(Duration::from_millis(1500)));
        assert_eq!(config.budget, Some(Duration::from_secs(2)));
        let codes: Vec<_> = config.retry_on.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(codes, ["23505", "55P03"]);
        assert!(config.idempotent && config.keep_signature && config.read_only);
        assert!(parse_str("").is_ok());
        assert!(parse_str("max = 1,").is_ok());
    }

    #[test]
    fn priority_after_takes_a_count_below_max_or_none() {
        assert_eq!(parse_str("").unwrap().priority, Priority::Default);
        assert_eq!(
            parse_str("priority_after = 3").unwrap().priority,
            Priority::After(3)
        );
        assert_eq!(
            parse_str("max = 10, priority_after = 9").unwrap().priority,
            Priority::After(9)
        );
        assert_eq!(
            parse_str("priority_after = none").unwrap().priority,
            Priority::Off
        );
        assert!(err("priority_after = 0").contains("at least 1"));
        assert!(err("max = 3, priority_after = 3").contains("never applies with `max = 3`"));
        assert!(err("priority_after = 5").contains("the default `max` of 5"));
        assert!(err(r#"priority_after = "2""#).contains("`priority_after` expects"));
        assert!(err("priority_after = off").contains("`priority_after` expects"));
        assert!(err("priority_after = 2, priority_after = 3").contains("set twice"));
        assert!(err("priority_afte = 2").contains("did you mean `priority_after`?"));
    }

    #[test]
    fn policy_names_a_static_and_refuses_the_policy_settings_beside_it() {
        let path = |src: &str| {
            let shared = parse_str(src).unwrap().shared.expect("a shared policy");
            quote::quote!(#shared).to_string()
        };
        assert_eq!(path("policy = ACCOUNTS"), "ACCOUNTS");
        assert_eq!(
            path("policy = crate::db::ACCOUNTS"),
            "crate :: db :: ACCOUNTS"
        );
        assert_eq!(path("policy = self::ACCOUNTS"), "self :: ACCOUNTS");
        assert_eq!(path("policy = super::ACCOUNTS"), "super :: ACCOUNTS");
        assert_eq!(path("policy = ::db::ACCOUNTS"), ":: db :: ACCOUNTS");
        // What is not a policy setting stays allowed.
        assert_eq!(
            path(r#"keep_signature, policy = ACCOUNTS, crate = "::renamed""#),
            "ACCOUNTS"
        );
        assert!(parse_str("").unwrap().shared.is_none());
        for (key, setting, method) in [
            ("max", "max = 3", "max_attempts"),
            ("isolation", r#"isolation = "repeatable_read""#, "isolation"),
            ("read_only", "read_only", "read_only"),
            ("deferrable", "read_only, deferrable", "read_only"),
            ("replica", "replica", "replica"),
            ("backoff", "backoff(none)", "backoff"),
            ("budget", r#"budget = "1s""#, "budget"),
            ("retry_on", r#"retry_on = ["55P03"]"#, "retry_on"),
            ("idempotent", "idempotent", "idempotent"),
            ("savepoint", "savepoint", "savepoint"),
            ("priority_after", "priority_after = 3", "priority_after"),
        ] {
            let message = err(&format!("policy = db::ACCOUNTS, {setting}"));
            assert!(
                message.starts_with(&format!(
                    "`{}` cannot be set beside `policy = db::ACCOUNTS`",
                    setting.split([' ', ',', '(']).next().unwrap()
                )),
                "{key}: {message}"
            );
            assert!(
                message.contains(&format!("`PolicyBuilder::{method}`")),
                "{key}: {message}"
            );
        }
        assert!(err(r#"policy = "ACCOUNTS""#).contains("`policy` expects the path of a `static`"));
        assert!(err("policy = 5").contains("`policy` expects the path of a `static`"));
        assert!(err("policy").contains("expected `=`"));
        assert!(err("policy = A, policy = B").contains("`policy` set twice"));
        assert!(err("polcy = A").contains("did you mean `policy`?"));
    }

    #[test]
    fn an_error_still_gives_the_defaults_and_the_crate_path() {
        let (config, err) = parse(r#"crate = "::renamed", max = 0"#.parse().unwrap());
        assert!(err.unwrap().to_string().contains("at least 1"));
        assert_eq!(config.max, None);
        let path = &config.krate;
        assert_eq!(quote::quote!(#path).to_string(), ":: renamed");
    }

    #[test]
    fn rejects_misuse_with_a_message_that_says_what_is_valid() {
        assert!(err("max = 0").contains("at least 1"));
        assert!(err("max = 5u8").contains("without a type suffix: write `max = 5`"));
        assert!(err(r#"max = "5""#).contains("`max` expects an integer"));
        assert!(err("max = 2, max = 3").contains("`max` set twice"));
        assert!(err("retries = 3").contains("unknown argument `retries`"));
        assert!(err("retry_onn = []").contains("did you mean `retry_on`?"));
        let isolation = err(r#"isolation = "serialisable""#);
        assert!(
            isolation.contains("did you mean `serializable`?"),
            "{isolation}"
        );
        assert!(err(r#"isolation = "Read_Committed""#).contains("did you mean `read_committed`?"));
        assert!(err(r#"isolation = "snapshot""#).contains("expected `serializable`"));
        assert!(!err(r#"isolation = "snapshot""#).contains("did you mean"));
        assert!(err(r#"isolation = serializable"#).contains("expects a string"));
        assert!(err("deferrable").contains("needs `read_only`"));
        assert!(err(r#"read_only, deferrable, isolation = "read_committed""#).contains("needs"));
        assert!(parse_str("read_only, deferrable").is_ok());
        assert!(err("replica").contains("needs `read_only`"));
        assert!(err("read_only, replica").contains("add `isolation = \"repeatable_read\"`"));
        assert!(
            err(r#"read_only, replica, isolation = "serializable""#)
                .contains("use `isolation = \"repeatable_read\"`")
        );
        for level in ["repeatable_read", "read_committed"] {
            let config = parse_str(&format!(r#"read_only, isolation = "{level}", replica"#));
            assert!(config.is_ok_and(|c| c.replica), "{level}");
        }
        assert!(err(r#"retry_on = ["2350"]"#).contains("not a SQLSTATE"));
        assert!(err(r#"retry_on = []"#).contains("lists no code"));
        assert!(err(r#"retry_on = ["55P03", "55P03"]"#).contains("listed twice"));
        assert!(err(r#"retry_on = ["40001"]"#).contains("always retried"));
        assert!(err(r#"budget = "2 s""#).contains("malformed duration"));
        assert!(err(r#"budget = "2""#).contains("malformed duration"));
        assert!(err(r#"budget = "1ns""#).contains("at least 1ms"));
        assert!(err(r#"budget = "999us""#).contains("at least 1ms"));
        assert!(parse_str(r#"budget = "1ms""#).is_ok());
        assert!(err(r#"timeout = "2s""#).contains("renamed `budget`"));
        assert!(err(r#"backoff(base = "1s", cap = "10ms")"#).contains("larger than"));
        assert!(err(r#"backoff(cap = "1ms")"#).contains("larger than"));
        assert!(err(r#"backoff(floor = "1s")"#).contains("unknown backoff argument"));
        assert!(err(r#"backoff(base = "1ms", base = "2ms")"#).contains("`base` set twice"));
        assert!(err("read_only = true").contains("is a flag"));
    }

    #[test]
    fn savepoint_names() {
        assert_eq!(
            parse_str("savepoint").unwrap().savepoint.as_deref(),
            Some("cockroach_restart")
        );
        assert_eq!(
            parse_str(r#"savepoint = "my_restart""#)
                .unwrap()
                .savepoint
                .as_deref(),
            Some("my_restart")
        );
        assert_eq!(parse_str("max = 3").unwrap().savepoint, None);
        for bad in ["", "1a", "a b", "x; DROP TABLE t", "select", "é"] {
            let src = format!("savepoint = {bad:?}");
            assert!(err(&src).contains("not a plain SQL identifier"), "{src}");
        }
        assert!(
            err(&format!("savepoint = {:?}", "a".repeat(64)))
                .contains("not a plain SQL identifier")
        );
        assert!(is_plain_identifier(&"a".repeat(63)));
        assert!(err("savepoint = 5").contains("`savepoint` expects a string"));
        assert!(err("savepoint, savepoint").contains("`savepoint` set twice"));
    }

    #[test]
    fn backoff_strategies() {
        let strategy = |src: &str| parse_str(src).unwrap().backoff.unwrap().strategy;
        assert_eq!(strategy(r#"backoff(base = "1ms")"#), Strategy::Adaptive);
        assert_eq!(
            strategy(r#"backoff(exponential, base = "1ms", cap = "9ms")"#),
            Strategy::Exponential
        );
        assert_eq!(strategy("backoff(decorrelated)"), Strategy::Decorrelated);
        assert_eq!(strategy("backoff(none)"), Strategy::None);
        assert!(err("backoff(linear)").contains("unknown backoff strategy `linear`"));
        assert!(err("backoff(exponental)").contains("did you mean `exponential`?"));
        assert!(err(r#"backoff(none, cap = "1s")"#).contains("takes no `base` or `cap`"));
        assert!(err("backoff(none, exponential)").contains("set twice"));
    }

    #[test]
    fn durations() {
        let d = |s: &str| parse_duration(&LitStr::new(s, Span::call_site()));
        assert_eq!(d("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(d("5ms").unwrap(), Duration::from_millis(5));
        assert_eq!(d("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(d("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "ms", "5", "5 ms", "5MS", ".5s", "5.s", "1..2s", "-1s"] {
            assert!(d(bad).is_err(), "{bad}");
        }
    }
}
