//! Values, column types and their wire encodings (binary, as sqlx asks for in prepared
//! statements, and text, for the simple protocol).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// A column or parameter type, with the OID sqlx checks against the Rust type it decodes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PgType {
    /// `bool`: Rust `bool`.
    Bool,
    /// `int2`: `i16`.
    Int2,
    /// `int4`: `i32`.
    Int4,
    /// `int8`: `i64`.
    Int8,
    /// `float4`: `f32`.
    Float4,
    /// `float8`: `f64`.
    Float8,
    /// `numeric`: `rust_decimal::Decimal`, `bigdecimal::BigDecimal`.
    Numeric,
    /// `text`: `String`, `&str`.
    Text,
    /// `varchar`: `String`, `&str`.
    Varchar,
    /// `bytea`: `Vec<u8>`.
    Bytea,
    /// `uuid`: `uuid::Uuid`.
    Uuid,
    /// `timestamptz`: `chrono::DateTime<Utc>`, `time::OffsetDateTime`.
    Timestamptz,
    /// `timestamp`: `chrono::NaiveDateTime`, `time::PrimitiveDateTime`.
    Timestamp,
    /// `date`: `chrono::NaiveDate`, `time::Date`.
    Date,
    /// `json`: `serde_json::Value`, `sqlx::types::Json<T>`.
    Json,
    /// `jsonb`: `serde_json::Value`, `sqlx::types::Json<T>`.
    Jsonb,
    /// `bool[]`: `Vec<bool>`.
    BoolArray,
    /// `int4[]`: `Vec<i32>`.
    Int4Array,
    /// `int8[]`: `Vec<i64>`.
    Int8Array,
    /// `float8[]`: `Vec<f64>`.
    Float8Array,
    /// `text[]`: `Vec<String>`.
    TextArray,
    /// `uuid[]`: `Vec<uuid::Uuid>`.
    UuidArray,
}

impl PgType {
    /// The type's OID in `pg_type`.
    pub const fn oid(self) -> u32 {
        match self {
            PgType::Bool => 16,
            PgType::Int2 => 21,
            PgType::Int4 => 23,
            PgType::Int8 => 20,
            PgType::Float4 => 700,
            PgType::Float8 => 701,
            PgType::Numeric => 1700,
            PgType::Text => 25,
            PgType::Varchar => 1043,
            PgType::Bytea => 17,
            PgType::Uuid => 2950,
            PgType::Timestamptz => 1184,
            PgType::Timestamp => 1114,
            PgType::Date => 1082,
            PgType::Json => 114,
            PgType::Jsonb => 3802,
            PgType::BoolArray => 1000,
            PgType::Int4Array => 1007,
            PgType::Int8Array => 1016,
            PgType::Float8Array => 1022,
            PgType::TextArray => 1009,
            PgType::UuidArray => 2951,
        }
    }

    /// The type with this OID, if the server knows it.
    pub fn from_oid(oid: u32) -> Option<PgType> {
        ALL.iter().copied().find(|t| t.oid() == oid)
    }

    /// The type's name, as PostgreSQL spells it.
    pub const fn name(self) -> &'static str {
        match self {
            PgType::Bool => "bool",
            PgType::Int2 => "int2",
            PgType::Int4 => "int4",
            PgType::Int8 => "int8",
            PgType::Float4 => "float4",
            PgType::Float8 => "float8",
            PgType::Numeric => "numeric",
            PgType::Text => "text",
            PgType::Varchar => "varchar",
            PgType::Bytea => "bytea",
            PgType::Uuid => "uuid",
            PgType::Timestamptz => "timestamptz",
            PgType::Timestamp => "timestamp",
            PgType::Date => "date",
            PgType::Json => "json",
            PgType::Jsonb => "jsonb",
            PgType::BoolArray => "bool[]",
            PgType::Int4Array => "int4[]",
            PgType::Int8Array => "int8[]",
            PgType::Float8Array => "float8[]",
            PgType::TextArray => "text[]",
            PgType::UuidArray => "uuid[]",
        }
    }

    /// The element type of an array type.
    pub const fn element(self) -> Option<PgType> {
        Some(match self {
            PgType::BoolArray => PgType::Bool,
            PgType::Int4Array => PgType::Int4,
            PgType::Int8Array => PgType::Int8,
            PgType::Float8Array => PgType::Float8,
            PgType::TextArray => PgType::Text,
            PgType::UuidArray => PgType::Uuid,
            _ => return None,
        })
    }

    /// `pg_type.typlen`: the size of a fixed-size type, -1 for variable-size ones.
    pub(crate) const fn size(self) -> i16 {
        match self {
            PgType::Bool => 1,
            PgType::Int2 => 2,
            PgType::Int4 | PgType::Float4 | PgType::Date => 4,
            PgType::Int8 | PgType::Float8 | PgType::Timestamptz | PgType::Timestamp => 8,
            PgType::Uuid => 16,
            _ => -1,
        }
    }
}

const ALL: [PgType; 22] = [
    PgType::Bool,
    PgType::Int2,
    PgType::Int4,
    PgType::Int8,
    PgType::Float4,
    PgType::Float8,
    PgType::Numeric,
    PgType::Text,
    PgType::Varchar,
    PgType::Bytea,
    PgType::Uuid,
    PgType::Timestamptz,
    PgType::Timestamp,
    PgType::Date,
    PgType::Json,
    PgType::Jsonb,
    PgType::BoolArray,
    PgType::Int4Array,
    PgType::Int8Array,
    PgType::Float8Array,
    PgType::TextArray,
    PgType::UuidArray,
];

impl fmt::Display for PgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A value in a scripted row, an expected parameter, or a parameter the server received.
///
/// Integers of any width compare equal to each other when checking parameters, as do the text
/// variants; the rest compare exactly.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// `bool`.
    Bool(bool),
    /// `int2`.
    Int2(i16),
    /// `int4`.
    Int4(i32),
    /// `int8`.
    Int8(i64),
    /// `float4`.
    Float4(f32),
    /// `float8`.
    Float8(f64),
    /// `numeric`, as a decimal string such as `"-12.50"` (`NaN` is not supported).
    Numeric(String),
    /// `text`, `varchar` and the other string types.
    Text(String),
    /// `bytea`.
    Bytea(Vec<u8>),
    /// `uuid`, as its 128 bits.
    Uuid(u128),
    /// `timestamptz`: microseconds since 1970-01-01 00:00:00 UTC.
    Timestamptz(i64),
    /// `timestamp` (without time zone): microseconds since 1970-01-01 00:00:00.
    Timestamp(i64),
    /// `date`: days since 1970-01-01.
    Date(i32),
    /// `json`, as its text.
    Json(String),
    /// `jsonb`, as its text.
    Jsonb(String),
    /// A one-dimensional array (`int8[]`, `text[]`, …) of these elements.
    Array(Vec<Value>),
    /// A parameter of a type the server does not decode: its OID and its bytes as sent.
    Other {
        /// The parameter's type OID.
        oid: u32,
        /// The raw bytes.
        bytes: Vec<u8>,
    },
}

impl Value {
    /// A `timestamptz` at `time`.
    pub fn timestamptz(time: SystemTime) -> Value {
        let micros = match time.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
            Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |m| -m),
        };
        Value::Timestamptz(micros)
    }

    /// Whether a received parameter `got` satisfies this expected value.
    pub(crate) fn matches(&self, got: &Value) -> bool {
        match (self.as_int(), got.as_int()) {
            (Some(a), Some(b)) => return a == b,
            (Some(_), None) | (None, Some(_)) => return false,
            (None, None) => {}
        }
        match (self, got) {
            (Value::Numeric(a), Value::Numeric(b)) => normalize_decimal(a) == normalize_decimal(b),
            (Value::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.matches(b))
            }
            _ => self == got,
        }
    }

    fn as_int(&self) -> Option<i64> {
        match *self {
            Value::Int2(v) => Some(v.into()),
            Value::Int4(v) => Some(v.into()),
            Value::Int8(v) => Some(v),
            _ => None,
        }
    }

    /// Encodes the value for a column of type `ty` in binary (`true`) or text format; `None` is
    /// SQL `NULL`. A value that does not fit the column is an `Err` naming both.
    pub(crate) fn encode(&self, ty: PgType, binary: bool) -> Result<Option<Vec<u8>>, String> {
        if matches!(self, Value::Null) {
            return Ok(None);
        }
        let mismatch = || format!("value {self} does not fit a column of type {ty}");
        let bytes = if binary {
            encode_binary(self, ty).ok_or_else(mismatch)?
        } else {
            encode_text(self, ty).ok_or_else(mismatch)?.into_bytes()
        };
        Ok(Some(bytes))
    }

    /// Decodes a parameter of type `oid` sent in binary (`true`) or text format.
    pub(crate) fn decode(oid: u32, bytes: Option<&[u8]>, binary: bool) -> Value {
        let Some(bytes) = bytes else {
            return Value::Null;
        };
        let decoded = match PgType::from_oid(oid) {
            Some(ty) if binary => decode_binary(ty, bytes),
            Some(ty) => std::str::from_utf8(bytes)
                .ok()
                .and_then(|s| decode_text(ty, s)),
            None => None,
        };
        decoded.unwrap_or_else(|| Value::Other {
            oid,
            bytes: bytes.to_vec(),
        })
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Int2(v) => write!(f, "{v}"),
            Value::Int4(v) => write!(f, "{v}"),
            Value::Int8(v) => write!(f, "{v}"),
            Value::Float4(v) => write!(f, "{v}"),
            Value::Float8(v) => write!(f, "{v}"),
            Value::Numeric(v) => f.write_str(v),
            Value::Text(v) | Value::Json(v) | Value::Jsonb(v) => write!(f, "'{v}'"),
            Value::Bytea(v) => write!(f, "'{}'", hex(v)),
            Value::Uuid(v) => write!(f, "'{}'", uuid_text(*v)),
            Value::Timestamptz(v) => write!(f, "'{}+00'", timestamp_text(*v)),
            Value::Timestamp(v) => write!(f, "'{}'", timestamp_text(*v)),
            Value::Date(v) => write!(f, "'{}'", date_text(*v)),
            Value::Array(items) => write!(f, "{}", ValueList(items)),
            Value::Other { oid, bytes } => write!(f, "<oid {oid}: {}>", hex(bytes)),
        }
    }
}

macro_rules! from_value {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::$variant(v.into())
            }
        }
    )*};
}

from_value! {
    bool => Bool,
    i16 => Int2,
    i32 => Int4,
    i64 => Int8,
    f32 => Float4,
    f64 => Float8,
    String => Text,
    &str => Text,
    Vec<u8> => Bytea,
    &[u8] => Bytea,
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

impl From<SystemTime> for Value {
    fn from(time: SystemTime) -> Value {
        Value::timestamptz(time)
    }
}

/// A list of values: a row to return or the parameters to expect. Implemented for tuples of up
/// to 12 values (`(1_i64, "alice", None::<i64>)`), arrays and vectors of [`Value`].
pub trait IntoValues {
    /// The values, in column or parameter order.
    fn into_values(self) -> Vec<Value>;
}

impl IntoValues for Vec<Value> {
    fn into_values(self) -> Vec<Value> {
        self
    }
}

impl<const N: usize> IntoValues for [Value; N] {
    fn into_values(self) -> Vec<Value> {
        self.into()
    }
}

impl IntoValues for () {
    fn into_values(self) -> Vec<Value> {
        Vec::new()
    }
}

macro_rules! tuple_values {
    ($($name:ident)+) => {
        impl<$($name: Into<Value>),+> IntoValues for ($($name,)+) {
            #[allow(non_snake_case)]
            fn into_values(self) -> Vec<Value> {
                let ($($name,)+) = self;
                vec![$($name.into()),+]
            }
        }
    };
}

tuple_values!(A);
tuple_values!(A B);
tuple_values!(A B C);
tuple_values!(A B C D);
tuple_values!(A B C D E);
tuple_values!(A B C D E F);
tuple_values!(A B C D E F G);
tuple_values!(A B C D E F G H);
tuple_values!(A B C D E F G H I);
tuple_values!(A B C D E F G H I J);
tuple_values!(A B C D E F G H I J K);
tuple_values!(A B C D E F G H I J K L);

// ---- binary format ------------------------------------------------------------------------------

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days between the Unix epoch and PostgreSQL's.
const PG_EPOCH_DAYS: i32 = 10_957;

fn encode_binary(value: &Value, ty: PgType) -> Option<Vec<u8>> {
    if let Some(element) = ty.element() {
        let Value::Array(items) = value else {
            return None;
        };
        let has_null = items.iter().any(|v| matches!(v, Value::Null));
        let mut out = Vec::new();
        out.extend_from_slice(&i32::from(!items.is_empty()).to_be_bytes());
        out.extend_from_slice(&i32::from(has_null).to_be_bytes());
        out.extend_from_slice(&element.oid().to_be_bytes());
        if !items.is_empty() {
            out.extend_from_slice(&i32::try_from(items.len()).ok()?.to_be_bytes());
            out.extend_from_slice(&1_i32.to_be_bytes());
        }
        for item in items {
            match item {
                Value::Null => out.extend_from_slice(&(-1_i32).to_be_bytes()),
                item => {
                    let bytes = encode_binary(item, element)?;
                    out.extend_from_slice(&i32::try_from(bytes.len()).ok()?.to_be_bytes());
                    out.extend_from_slice(&bytes);
                }
            }
        }
        return Some(out);
    }
    let int = value.as_int();
    Some(match (ty, value) {
        (PgType::Bool, Value::Bool(b)) => vec![u8::from(*b)],
        (PgType::Int2, _) => i16::try_from(int?).ok()?.to_be_bytes().to_vec(),
        (PgType::Int4, _) => i32::try_from(int?).ok()?.to_be_bytes().to_vec(),
        (PgType::Int8, _) => int?.to_be_bytes().to_vec(),
        (PgType::Float4, Value::Float4(v)) => v.to_be_bytes().to_vec(),
        (PgType::Float8, Value::Float8(v)) => v.to_be_bytes().to_vec(),
        (PgType::Float8, Value::Float4(v)) => f64::from(*v).to_be_bytes().to_vec(),
        (PgType::Numeric, Value::Numeric(s) | Value::Text(s)) => numeric_binary(s)?,
        (PgType::Numeric, _) if int.is_some() => numeric_binary(&int?.to_string())?,
        (PgType::Text | PgType::Varchar, Value::Text(s)) => s.clone().into_bytes(),
        (PgType::Bytea, Value::Bytea(b)) => b.clone(),
        (PgType::Uuid, Value::Uuid(u)) => u.to_be_bytes().to_vec(),
        (PgType::Timestamptz, Value::Timestamptz(t)) | (PgType::Timestamp, Value::Timestamp(t)) => {
            t.checked_sub(PG_EPOCH_MICROS)?.to_be_bytes().to_vec()
        }
        (PgType::Date, Value::Date(d)) => d.checked_sub(PG_EPOCH_DAYS)?.to_be_bytes().to_vec(),
        (PgType::Json, Value::Json(s) | Value::Text(s)) => s.clone().into_bytes(),
        (PgType::Jsonb, Value::Jsonb(s) | Value::Json(s) | Value::Text(s)) => {
            let mut bytes = vec![1];
            bytes.extend_from_slice(s.as_bytes());
            bytes
        }
        _ => return None,
    })
}

fn decode_binary(ty: PgType, b: &[u8]) -> Option<Value> {
    if let Some(element) = ty.element() {
        return decode_binary_array(element, b);
    }
    Some(match ty {
        PgType::Bool => Value::Bool(*b.first()? != 0),
        PgType::Int2 => Value::Int2(i16::from_be_bytes(b.try_into().ok()?)),
        PgType::Int4 => Value::Int4(i32::from_be_bytes(b.try_into().ok()?)),
        PgType::Int8 => Value::Int8(i64::from_be_bytes(b.try_into().ok()?)),
        PgType::Float4 => Value::Float4(f32::from_be_bytes(b.try_into().ok()?)),
        PgType::Float8 => Value::Float8(f64::from_be_bytes(b.try_into().ok()?)),
        PgType::Numeric => Value::Numeric(numeric_from_binary(b)?),
        PgType::Text | PgType::Varchar => Value::Text(String::from_utf8(b.to_vec()).ok()?),
        PgType::Bytea => Value::Bytea(b.to_vec()),
        PgType::Uuid => Value::Uuid(u128::from_be_bytes(b.try_into().ok()?)),
        PgType::Timestamptz => {
            Value::Timestamptz(i64::from_be_bytes(b.try_into().ok()?).checked_add(PG_EPOCH_MICROS)?)
        }
        PgType::Timestamp => {
            Value::Timestamp(i64::from_be_bytes(b.try_into().ok()?).checked_add(PG_EPOCH_MICROS)?)
        }
        PgType::Date => {
            Value::Date(i32::from_be_bytes(b.try_into().ok()?).checked_add(PG_EPOCH_DAYS)?)
        }
        PgType::Json => Value::Json(String::from_utf8(b.to_vec()).ok()?),
        PgType::Jsonb => match b.split_first()? {
            (1, rest) => Value::Jsonb(String::from_utf8(rest.to_vec()).ok()?),
            _ => return None,
        },
        _ => return None,
    })
}

/// A one-dimensional array in binary form: dimensions, null flag, element OID, then per
/// dimension its length and lower bound, then the elements, each length-prefixed.
fn decode_binary_array(element: PgType, b: &[u8]) -> Option<Value> {
    let mut r = Reader(b);
    let ndim = r.int()?;
    let _has_null = r.int()?;
    let _element_oid = r.int()?;
    let len = match ndim {
        0 => 0,
        1 => {
            let len = usize::try_from(r.int()?).ok()?;
            let _lower_bound = r.int()?;
            len
        }
        _ => return None,
    };
    let mut items = Vec::with_capacity(len.min(1024));
    for _ in 0..len {
        match usize::try_from(r.int()?) {
            Err(_) => items.push(Value::Null),
            Ok(n) => items.push(decode_binary(element, r.take(n)?)?),
        }
    }
    Some(Value::Array(items))
}

/// Reads big-endian fields off a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }

    fn int(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// `numeric`'s binary form: digit count, weight, sign, display scale, then base-10000 digits.
fn numeric_binary(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int_part, frac_part) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int_part)
        || !all_digits(frac_part)
        || (int_part.is_empty() && frac_part.is_empty())
    {
        return None;
    }
    let int_part = int_part.trim_start_matches('0');
    let dscale = u16::try_from(frac_part.len()).ok()?;
    let group = |s: &str| s.parse::<i16>().unwrap_or(0);
    let mut digits: Vec<i16> = Vec::new();
    let lead = int_part.len() % 4;
    if lead > 0 {
        digits.push(group(&int_part[..lead]));
    }
    for chunk in int_part.as_bytes()[lead..].chunks(4) {
        digits.push(group(std::str::from_utf8(chunk).ok()?));
    }
    let mut weight = i16::try_from(digits.len()).ok()? - 1;
    for chunk in frac_part.as_bytes().chunks(4) {
        let mut s = std::str::from_utf8(chunk).ok()?.to_owned();
        while s.len() < 4 {
            s.push('0');
        }
        digits.push(group(&s));
    }
    while digits.first() == Some(&0) {
        digits.remove(0);
        weight -= 1;
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    let sign: u16 = if negative && !digits.is_empty() {
        0x4000
    } else {
        0
    };
    let mut out = Vec::with_capacity(8 + 2 * digits.len());
    out.extend_from_slice(&i16::try_from(digits.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    Some(out)
}

fn numeric_from_binary(b: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<i16> { Some(i16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?])) };
    let ndigits = usize::try_from(word(0)?).ok()?;
    let weight = i32::from(word(2)?);
    let sign = word(4)? as u16;
    let dscale = usize::try_from(word(6)?).ok()?;
    if sign == 0xC000 {
        return Some("NaN".into());
    }
    let digits: Vec<i16> = (0..ndigits)
        .map(|i| word(8 + 2 * i))
        .collect::<Option<_>>()?;
    // digits[i] is worth 10000^(weight - i).
    let mut int_part = String::new();
    for e in (0..=weight.max(-1)).rev() {
        let i = usize::try_from(weight - e).ok()?;
        let d = digits.get(i).copied().unwrap_or(0);
        if int_part.is_empty() {
            if d != 0 {
                int_part = d.to_string();
            }
        } else {
            int_part.push_str(&format!("{d:04}"));
        }
    }
    if int_part.is_empty() {
        int_part.push('0');
    }
    let mut frac = String::new();
    let mut e = -1;
    while frac.len() < dscale {
        let d = usize::try_from(weight - e)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0);
        frac.push_str(&format!("{d:04}"));
        e -= 1;
    }
    frac.truncate(dscale);
    let mut s = if sign == 0x4000 {
        "-".to_owned()
    } else {
        String::new()
    };
    s.push_str(&int_part);
    if dscale > 0 {
        s.push('.');
        s.push_str(&frac);
    }
    Some(s)
}

/// `"-0012.500"` and `"-12.5"` alike: sign, integer digits without leading zeros, fraction
/// without trailing zeros.
fn normalize_decimal(s: &str) -> String {
    let s = s.trim();
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let zero = int.is_empty() && frac.is_empty();
    format!(
        "{}{}{}{}",
        if neg && !zero { "-" } else { "" },
        if int.is_empty() { "0" } else { int },
        if frac.is_empty() { "" } else { "." },
        frac
    )
}

// ---- text format --------------------------------------------------------------------------------

fn encode_text(value: &Value, ty: PgType) -> Option<String> {
    if let Some(element) = ty.element() {
        let Value::Array(items) = value else {
            return None;
        };
        let parts = items
            .iter()
            .map(|item| match item {
                Value::Null => Some("NULL".to_owned()),
                item => encode_text(item, element).map(|t| array_element_text(&t)),
            })
            .collect::<Option<Vec<_>>>()?;
        return Some(format!("{{{}}}", parts.join(",")));
    }
    let int = value.as_int();
    Some(match (ty, value) {
        (PgType::Bool, Value::Bool(b)) => if *b { "t" } else { "f" }.into(),
        (PgType::Int2 | PgType::Int4 | PgType::Int8 | PgType::Numeric, _) if int.is_some() => {
            encode_binary(value, ty)?; // range check
            int?.to_string()
        }
        (PgType::Float4, Value::Float4(v)) => v.to_string(),
        (PgType::Float8, Value::Float8(v)) => v.to_string(),
        (PgType::Numeric, Value::Numeric(s) | Value::Text(s)) => {
            numeric_from_binary(&numeric_binary(s)?)?
        }
        (PgType::Text | PgType::Varchar, Value::Text(s)) => s.clone(),
        (PgType::Json | PgType::Jsonb, Value::Json(s) | Value::Jsonb(s) | Value::Text(s)) => {
            s.clone()
        }
        (PgType::Bytea, Value::Bytea(b)) => format!("\\x{}", hex(b)),
        (PgType::Uuid, Value::Uuid(u)) => uuid_text(*u),
        (PgType::Timestamptz, Value::Timestamptz(t)) => format!("{}+00", timestamp_text(*t)),
        (PgType::Timestamp, Value::Timestamp(t)) => timestamp_text(*t),
        (PgType::Date, Value::Date(d)) => date_text(*d),
        _ => return None,
    })
}

fn decode_text(ty: PgType, s: &str) -> Option<Value> {
    Some(match ty {
        PgType::Bool => Value::Bool(matches!(s, "t" | "true" | "1" | "on" | "yes")),
        PgType::Int2 => Value::Int2(s.parse().ok()?),
        PgType::Int4 => Value::Int4(s.parse().ok()?),
        PgType::Int8 => Value::Int8(s.parse().ok()?),
        PgType::Float4 => Value::Float4(s.parse().ok()?),
        PgType::Float8 => Value::Float8(s.parse().ok()?),
        PgType::Numeric => Value::Numeric(s.to_owned()),
        PgType::Json => Value::Json(s.to_owned()),
        PgType::Jsonb => Value::Jsonb(s.to_owned()),
        PgType::Text | PgType::Varchar => Value::Text(s.to_owned()),
        _ => return None,
    })
}

/// Shared by `Display` for values and for parameter lists.
pub(crate) struct ValueList<'a>(pub(crate) &'a [Value]);

impl fmt::Display for ValueList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{v}")?;
        }
        f.write_str("]")
    }
}

/// An element of an array's text form, quoted when PostgreSQL would quote it.
fn array_element_text(text: &str) -> String {
    let plain = !text.is_empty()
        && !text.eq_ignore_ascii_case("NULL")
        && !text
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '{' | '}' | ',' | '"' | '\\'));
    if plain {
        return text.to_owned();
    }
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn uuid_text(u: u128) -> String {
    let h = format!("{u:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn date_text(days: i32) -> String {
    let (y, m, d) = civil(days.into());
    format!("{y:04}-{m:02}-{d:02}")
}

fn timestamp_text(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    if frac != 0 {
        let f = format!("{frac:06}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_round_trips_through_the_binary_form() {
        for (input, output) in [
            ("0", "0"),
            ("1", "1"),
            ("-12.50", "-12.50"),
            ("10000", "10000"),
            ("123456789.000123", "123456789.000123"),
            ("0.0001", "0.0001"),
            ("0.00001", "0.00001"),
            ("007.5", "7.5"),
            ("-0", "0"),
        ] {
            let bytes = numeric_binary(input).unwrap();
            assert_eq!(numeric_from_binary(&bytes).unwrap(), output, "{input}");
        }
        assert_eq!(numeric_binary("1e5"), None);
    }

    #[test]
    fn numeric_binary_matches_postgres_for_known_values() {
        // SELECT numeric_send(12345.678): ndigits 3, weight 1, sign 0, dscale 3, [1, 2345, 6780]
        assert_eq!(
            numeric_binary("12345.678").unwrap(),
            [0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1a, 0x7c]
        );
    }

    #[test]
    fn timestamps_and_dates_format_like_postgres() {
        assert_eq!(timestamp_text(0), "1970-01-01 00:00:00");
        assert_eq!(
            timestamp_text(1_700_000_000_123_000),
            "2023-11-14 22:13:20.123"
        );
        assert_eq!(date_text(-1), "1969-12-31");
        assert_eq!(date_text(19_723), "2024-01-01");
    }

    #[test]
    fn values_round_trip_through_both_formats() {
        for (value, ty) in [
            (Value::Int8(-5), PgType::Int8),
            (Value::Int4(7), PgType::Int4),
            (Value::Bool(true), PgType::Bool),
            (Value::Text("a b".into()), PgType::Text),
            (
                Value::Uuid(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
                PgType::Uuid,
            ),
            (
                Value::Timestamptz(1_700_000_000_000_000),
                PgType::Timestamptz,
            ),
            (Value::Jsonb("{\"a\":1}".into()), PgType::Jsonb),
            (Value::Numeric("3.14".into()), PgType::Numeric),
        ] {
            let binary = value.encode(ty, true).unwrap();
            assert_eq!(Value::decode(ty.oid(), binary.as_deref(), true), value);
        }
        assert!(Value::Int8(1 << 40).encode(PgType::Int4, true).is_err());
        assert!(Value::Text("x".into()).encode(PgType::Int8, true).is_err());
    }

    #[test]
    fn parameters_match_across_integer_widths_only() {
        assert!(Value::Int8(1).matches(&Value::Int4(1)));
        assert!(!Value::Int8(1).matches(&Value::Text("1".into())));
        assert!(Value::Numeric("1.50".into()).matches(&Value::Numeric("1.5".into())));
    }
}
