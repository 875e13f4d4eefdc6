//! The attribute's arguments, parsed into typed values and checked, each error spanned on the
//! offending token.

use std::time::Duration;

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::{LitInt, LitStr, Token, bracketed, parenthesized};

mod kw {
    syn::custom_keyword!(max);
    syn::custom_keyword!(isolation);
    syn::custom_keyword!(read_only);
    syn::custom_keyword!(deferrable);
    syn::custom_keyword!(backoff);
    syn::custom_keyword!(base);
    syn::custom_keyword!(cap);
    syn::custom_keyword!(timeout);
    syn::custom_keyword!(retry_on);
    syn::custom_keyword!(idempotent);
}

const KEYS: &str = "`max`, `isolation`, `read_only`, `deferrable`, `backoff`, `timeout`, `retry_on`, `idempotent` or `crate`";

/// The isolation levels the attribute accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    Serializable,
    RepeatableRead,
    ReadCommitted,
}

/// A value and the span of the key that set it.
#[derive(Debug, Clone)]
pub struct Set<T> {
    pub value: T,
    pub key: Span,
}

/// The parsed, validated arguments of `#[serializable_retry(...)]`.
#[derive(Debug, Default)]
pub struct Args {
    pub max: Option<Set<u32>>,
    pub isolation: Option<Set<Isolation>>,
    pub read_only: Option<Set<()>>,
    pub deferrable: Option<Set<()>>,
    pub backoff: Option<Set<BackoffArgs>>,
    pub timeout: Option<Set<Duration>>,
    pub retry_on: Option<Set<Vec<String>>>,
    pub idempotent: Option<Set<()>>,
    pub krate: Option<Set<syn::Path>>,
}

/// `backoff(base = "…", cap = "…")`.
#[derive(Debug, Clone, Default)]
pub struct BackoffArgs {
    pub strategy: Strategy,
    pub base: Option<Duration>,
    pub cap: Option<Duration>,
}

/// The backoff strategies the attribute names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    #[default]
    Adaptive,
    Exponential,
    Decorrelated,
    None,
}

impl Args {
    pub fn isolation(&self) -> Isolation {
        self.isolation
            .as_ref()
            .map_or(Isolation::Serializable, |s| s.value)
    }
}

fn set_once<T>(slot: &mut Option<Set<T>>, key: Span, name: &str, value: T) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new(key, format!("`{name}` set twice")));
    }
    *slot = Some(Set { value, key });
    Ok(())
}

fn flag(input: ParseStream<'_>, name: &str) -> syn::Result<()> {
    if input.peek(Token![=]) {
        return Err(syn::Error::new(
            input.span(),
            format!("`{name}` is a flag: write `{name}` without a value"),
        ));
    }
    Ok(())
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if lookahead.peek(kw::max) {
                let key = input.parse::<kw::max>()?.span;
                input.parse::<Token![=]>()?;
                let lit: LitInt = input.parse()?;
                let n: u32 = lit.base10_parse().map_err(|_| {
                    syn::Error::new(lit.span(), "`max` must be a whole number of attempts")
                })?;
                if n == 0 {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`max` must be at least 1: it counts every attempt, the first included",
                    ));
                }
                set_once(&mut args.max, key, "max", n)?;
            } else if lookahead.peek(kw::isolation) {
                let key = input.parse::<kw::isolation>()?.span;
                input.parse::<Token![=]>()?;
                let lit: LitStr = input.parse()?;
                let level = match lit.value().as_str() {
                    "serializable" => Isolation::Serializable,
                    "repeatable_read" => Isolation::RepeatableRead,
                    "read_committed" => Isolation::ReadCommitted,
                    other => {
                        return Err(syn::Error::new(
                            lit.span(),
                            format!(
                                "unknown isolation level `{other}`; expected `serializable`, `repeatable_read` or `read_committed`"
                            ),
                        ));
                    }
                };
                set_once(&mut args.isolation, key, "isolation", level)?;
            } else if lookahead.peek(kw::read_only) {
                let key = input.parse::<kw::read_only>()?.span;
                flag(input, "read_only")?;
                set_once(&mut args.read_only, key, "read_only", ())?;
            } else if lookahead.peek(kw::deferrable) {
                let key = input.parse::<kw::deferrable>()?.span;
                flag(input, "deferrable")?;
                set_once(&mut args.deferrable, key, "deferrable", ())?;
            } else if lookahead.peek(kw::idempotent) {
                let key = input.parse::<kw::idempotent>()?.span;
                flag(input, "idempotent")?;
                set_once(&mut args.idempotent, key, "idempotent", ())?;
            } else if lookahead.peek(kw::backoff) {
                let key = input.parse::<kw::backoff>()?.span;
                let value = parse_backoff(input, key)?;
                set_once(&mut args.backoff, key, "backoff", value)?;
            } else if lookahead.peek(kw::timeout) {
                let key = input.parse::<kw::timeout>()?.span;
                input.parse::<Token![=]>()?;
                let lit: LitStr = input.parse()?;
                let budget = parse_duration(&lit)?;
                if budget.is_zero() {
                    return Err(syn::Error::new(
                        lit.span(),
                        "`timeout` must be greater than zero",
                    ));
                }
                set_once(&mut args.timeout, key, "timeout", budget)?;
            } else if lookahead.peek(kw::retry_on) {
                let key = input.parse::<kw::retry_on>()?.span;
                input.parse::<Token![=]>()?;
                let content;
                bracketed!(content in input);
                let codes = content.parse_terminated(|p| p.parse::<LitStr>(), Token![,])?;
                let mut list = Vec::new();
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
                    list.push(code);
                }
                set_once(&mut args.retry_on, key, "retry_on", list)?;
            } else if lookahead.peek(Token![crate]) {
                let key = input.parse::<Token![crate]>()?.span;
                input.parse::<Token![=]>()?;
                let lit: LitStr = input.parse()?;
                let path: syn::Path = lit.parse().map_err(|_| {
                    syn::Error::new(
                        lit.span(),
                        "`crate` must name a path, such as \"::my_sqlx_retry\"",
                    )
                })?;
                set_once(&mut args.krate, key, "crate", path)?;
            } else if input.peek(syn::Ident) {
                let ident: syn::Ident = input.parse()?;
                return Err(syn::Error::new(
                    ident.span(),
                    format!("unknown argument `{ident}`; expected {KEYS}"),
                ));
            } else {
                return Err(lookahead.error());
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        args.validate()?;
        Ok(args)
    }
}

impl Args {
    fn validate(&self) -> syn::Result<()> {
        if let Some(deferrable) = &self.deferrable
            && (self.read_only.is_none() || self.isolation() != Isolation::Serializable)
        {
            return Err(syn::Error::new(
                deferrable.key,
                "`deferrable` needs `read_only` and `isolation = \"serializable\"`",
            ));
        }
        Ok(())
    }
}

fn parse_backoff(input: ParseStream<'_>, key: Span) -> syn::Result<BackoffArgs> {
    if !input.peek(syn::token::Paren) {
        return Err(syn::Error::new(
            key,
            "expected `backoff(base = \"5ms\", cap = \"500ms\")`, optionally starting with a strategy: `adaptive`, `exponential`, `decorrelated` or `none`",
        ));
    }
    let content;
    let parens = parenthesized!(content in input);
    let mut out = BackoffArgs::default();
    let mut base_span = None;
    // An optional leading strategy name: `backoff(exponential, base = "5ms")`.
    if content.peek(syn::Ident) && !content.peek2(Token![=]) {
        let ident: syn::Ident = content.parse()?;
        out.strategy = match ident.to_string().as_str() {
            "adaptive" => Strategy::Adaptive,
            "exponential" => Strategy::Exponential,
            "decorrelated" => Strategy::Decorrelated,
            "none" => Strategy::None,
            other => {
                return Err(syn::Error::new(
                    ident.span(),
                    format!(
                        "unknown backoff strategy `{other}`; expected `adaptive`, `exponential`, `decorrelated` or `none`"
                    ),
                ));
            }
        };
        if !content.is_empty() {
            content.parse::<Token![,]>()?;
            if out.strategy == Strategy::None && !content.is_empty() {
                return Err(syn::Error::new(
                    ident.span(),
                    "`none` retries at once and takes no `base` or `cap`",
                ));
            }
        }
    }
    while !content.is_empty() {
        let lookahead = content.lookahead1();
        if lookahead.peek(kw::base) {
            let k = content.parse::<kw::base>()?.span;
            content.parse::<Token![=]>()?;
            let lit: LitStr = content.parse()?;
            if out.base.is_some() {
                return Err(syn::Error::new(k, "`base` set twice"));
            }
            let d = parse_duration(&lit)?;
            if d.is_zero() {
                return Err(syn::Error::new(
                    lit.span(),
                    "`base` must be greater than zero",
                ));
            }
            out.base = Some(d);
            base_span = Some(lit.span());
        } else if lookahead.peek(kw::cap) {
            let k = content.parse::<kw::cap>()?.span;
            content.parse::<Token![=]>()?;
            let lit: LitStr = content.parse()?;
            if out.cap.is_some() {
                return Err(syn::Error::new(k, "`cap` set twice"));
            }
            let d = parse_duration(&lit)?;
            if d.is_zero() {
                return Err(syn::Error::new(
                    lit.span(),
                    "`cap` must be greater than zero",
                ));
            }
            out.cap = Some(d);
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
    let base = out.base.unwrap_or(Duration::from_millis(5));
    let cap = out.cap.unwrap_or(Duration::from_millis(500));
    if base > cap {
        return Err(syn::Error::new(
            base_span.unwrap_or(parens.span.join()),
            format!("backoff `base` ({base:?}) is larger than `cap` ({cap:?})"),
        ));
    }
    Ok(out)
}

fn is_sqlstate(code: &str) -> bool {
    code.len() == 5
        && code
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
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

    fn parse(src: &str) -> syn::Result<Args> {
        syn::parse_str::<Args>(src)
    }

    fn err(src: &str) -> String {
        parse(src).unwrap_err().to_string()
    }

    #[test]
    fn accepts_every_argument() {
        let args = parse(
            r#"max = 7, isolation = "repeatable_read", read_only, backoff(base = "2ms", cap = "1.5s"),
               timeout = "2s", retry_on = ["23505", "55P03"], idempotent, crate = "::renamed""#,
        )
        .unwrap();
        assert_eq!(args.max.as_ref().unwrap().value, 7);
        assert_eq!(args.isolation(), Isolation::RepeatableRead);
        let backoff = args.backoff.unwrap().value;
        assert_eq!(backoff.base, Some(Duration::from_millis(2)));
        assert_eq!(backoff.cap, Some(Duration::from_millis(1500)));
        assert_eq!(args.timeout.unwrap().value, Duration::from_secs(2));
        assert_eq!(args.retry_on.unwrap().value, ["23505", "55P03"]);
        assert!(parse("").is_ok());
        assert!(parse("max = 1,").is_ok());
    }

    #[test]
    fn rejects_misuse_with_a_message_that_says_what_is_valid() {
        assert!(err("max = 0").contains("at least 1"));
        assert!(err("max = 2, max = 3").contains("`max` set twice"));
        assert!(err("retries = 3").contains("unknown argument `retries`"));
        assert!(err(r#"isolation = "serialisable""#).contains("expected `serializable`"));
        assert!(err("deferrable").contains("needs `read_only`"));
        assert!(err(r#"read_only, deferrable, isolation = "read_committed""#).contains("needs"));
        assert!(parse("read_only, deferrable").is_ok());
        assert!(err(r#"retry_on = ["2350"]"#).contains("not a SQLSTATE"));
        assert!(err(r#"timeout = "2 s""#).contains("malformed duration"));
        assert!(err(r#"timeout = "2""#).contains("malformed duration"));
        assert!(err(r#"backoff(base = "1s", cap = "10ms")"#).contains("larger than"));
        assert!(err(r#"backoff(floor = "1s")"#).contains("unknown backoff argument"));
        assert!(err("read_only = true").contains("is a flag"));
    }

    #[test]
    fn backoff_strategies() {
        let strategy = |src: &str| parse(src).unwrap().backoff.unwrap().value.strategy;
        assert_eq!(strategy(r#"backoff(base = "1ms")"#), Strategy::Adaptive);
        assert_eq!(
            strategy(r#"backoff(exponential, base = "1ms", cap = "9ms")"#),
            Strategy::Exponential
        );
        assert_eq!(strategy("backoff(decorrelated)"), Strategy::Decorrelated);
        assert_eq!(strategy("backoff(none)"), Strategy::None);
        assert!(err("backoff(linear)").contains("unknown backoff strategy `linear`"));
        assert!(err(r#"backoff(none, cap = "1s")"#).contains("takes no `base` or `cap`"));
        assert!(err(r#"backoff(floor = "1s")"#).contains("unknown backoff argument"));
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
