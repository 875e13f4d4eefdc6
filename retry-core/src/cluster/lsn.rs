//! WAL positions.

use std::fmt;

/// A WAL position (`pg_lsn`) as a byte offset; SQL reads it as `(lsn - '0/0'::pg_lsn)::int8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Lsn(pub(crate) u64);

impl Lsn {
    /// From the `int8` SQL returns; a negative value (impossible) counts as the start.
    pub(crate) fn from_sql(value: i64) -> Lsn {
        Lsn(u64::try_from(value).unwrap_or(0))
    }
}

/// PostgreSQL's spelling, `16/B374D848`, which `'…'::pg_lsn` parses.
impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_are_written_as_postgresql_writes_them() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!(Lsn::from_sql(-5), Lsn(0));
        assert_eq!(Lsn::from_sql(0x0300_0148), Lsn(0x0300_0148));
    }
}
