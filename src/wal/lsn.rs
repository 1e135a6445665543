//! Log sequence numbers and timeline ids.

use std::fmt;
use std::str::FromStr;

/// A WAL position, printed the way PostgreSQL prints it: `X/X` in upper-case hex.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);

    pub fn is_valid(self) -> bool {
        self.0 != 0
    }

    /// Byte offset of this position inside its segment.
    pub fn segment_offset(self, seg_size: u64) -> u64 {
        self.0 % seg_size
    }

    /// Start of the segment that contains this position.
    pub fn segment_start(self, seg_size: u64) -> Lsn {
        Lsn(self.0 - self.0 % seg_size)
    }

    pub fn segno(self, seg_size: u64) -> crate::wal::SegNo {
        crate::wal::SegNo(self.0 / seg_size)
    }

    pub fn checked_add(self, n: u64) -> Option<Lsn> {
        self.0.checked_add(n).map(Lsn)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 as u32)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected the form X/X with hexadecimal halves, e.g. 0/16B3748")]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// A timeline id; timeline 1 is the one `initdb` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeLineId(pub u32);

impl fmt::Display for TimeLineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        for (text, value) in [
            ("0/0", 0u64),
            ("0/16B3748", 0x16B3748),
            ("1/0", 1 << 32),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn, Lsn(value));
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("0/16b3748".parse::<Lsn>().unwrap(), Lsn(0x16B3748));
    }

    #[test]
    fn lsn_rejects_garbage() {
        for bad in ["", "0", "/1", "1/", "x/1", "123456789/0", "0/1/2", "-1/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn segment_arithmetic() {
        let seg = 16 << 20;
        let lsn = Lsn(0x0300_0028);
        assert_eq!(lsn.segment_start(seg), Lsn(0x0300_0000));
        assert_eq!(lsn.segment_offset(seg), 0x28);
        assert_eq!(lsn.segno(seg).0, 3);
    }
}
