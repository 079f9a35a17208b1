//! Log offsets: the `"<tx>_<op>"` positions clients hold between requests.
//!
//! `tx` is 0 for the initial snapshot and the commit LSN (as an integer) for
//! live changes, so every snapshot record sorts before every live one. `op` is
//! the record's position inside its transaction (or inside the snapshot).
//! `-1` means "before everything"; `<tx>_inf` means "after every op of `tx`",
//! which is how the end of the snapshot is named.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A position in a shape log, totally ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogOffset {
    /// Before the first record (`-1`).
    BeforeAll,
    /// Just after the record `(tx, op)`; `op == u64::MAX` is spelled `inf`.
    At { tx: u64, op: u64 },
}

impl LogOffset {
    /// The offset that ends the snapshot: after every snapshot op, before every live change.
    pub const SNAPSHOT_END: LogOffset = LogOffset::At { tx: 0, op: u64::MAX };

    /// Builds the offset of a record.
    pub const fn new(tx: u64, op: u64) -> Self {
        LogOffset::At { tx, op }
    }

    /// The `(tx, op)` sort key; `BeforeAll` sorts below every record.
    fn key(&self) -> Option<(u64, u64)> {
        match *self {
            LogOffset::BeforeAll => None,
            LogOffset::At { tx, op } => Some((tx, op)),
        }
    }

    /// True when a record at `(tx, op)` lies strictly after this offset.
    pub fn precedes_record(&self, tx: u64, op: u64) -> bool {
        match self.key() {
            None => true,
            Some(k) => k < (tx, op),
        }
    }
}

impl PartialOrd for LogOffset {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for LogOffset {
    fn cmp(&self, other: &Self) -> Ordering {
        // `None < Some(_)` gives BeforeAll its place below every record.
        self.key().cmp(&other.key())
    }
}

impl fmt::Display for LogOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LogOffset::BeforeAll => f.write_str("-1"),
            LogOffset::At { tx, op: u64::MAX } => write!(f, "{tx}_inf"),
            LogOffset::At { tx, op } => write!(f, "{tx}_{op}"),
        }
    }
}

/// Why an offset string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("offset {0:?} is not -1, now, or <tx>_<op> with decimal numbers")]
pub struct ParseOffsetError(pub String);

impl FromStr for LogOffset {
    type Err = ParseOffsetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseOffsetError(s.to_string());
        if s == "-1" {
            return Ok(LogOffset::BeforeAll);
        }
        let (tx, op) = s.split_once('_').ok_or_else(bad)?;
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(tx) {
            return Err(bad());
        }
        let tx: u64 = tx.parse().map_err(|_| bad())?;
        let op = if op == "inf" {
            u64::MAX
        } else if digits(op) {
            op.parse().map_err(|_| bad())?
        } else {
            return Err(bad());
        };
        Ok(LogOffset::At { tx, op })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_through_their_text_form() {
        for s in ["-1", "0_0", "0_17", "0_inf", "23658544_4", "18446744073709551615_0"] {
            let o: LogOffset = s.parse().unwrap();
            assert_eq!(o.to_string(), s);
        }
    }

    #[test]
    fn malformed_offsets_are_rejected() {
        for s in ["", "-2", "1", "_1", "1_", "a_1", "1_b", "1_2_3", " 1_2", "1_-2", "+1_2", "99999999999999999999_0"] {
            assert!(s.parse::<LogOffset>().is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn snapshot_sorts_before_live_and_before_all_sorts_first() {
        let before: LogOffset = "-1".parse().unwrap();
        let snap0 = LogOffset::new(0, 0);
        let snap_end = LogOffset::SNAPSHOT_END;
        let live = LogOffset::new(1, 0);
        assert!(before < snap0 && snap0 < snap_end && snap_end < live);
        assert!(before.precedes_record(0, 0));
        assert!(!snap_end.precedes_record(0, 5));
        assert!(snap_end.precedes_record(7, 0));
        assert!(!LogOffset::new(7, 3).precedes_record(7, 3));
        assert!(LogOffset::new(7, 3).precedes_record(7, 4));
    }
}
