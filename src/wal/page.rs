//! WAL page headers: the 24-byte short header every 8 KiB page starts with and the 40-byte
//! long header of the first page of a segment (xlog_internal.h XLogPageHeaderData and
//! XLogLongPageHeaderData). Fields are in the server's byte order; walferry reads
//! little-endian, the order of every platform PostgreSQL is shipped on in practice.

use super::Lsn;

/// WAL page size (XLOG_BLCKSZ). PostgreSQL can be built with another, walferry cannot.
pub const XLOG_BLCKSZ: usize = 8192;
/// SizeOfXLogShortPHD.
pub const SHORT_PAGE_HEADER: usize = 24;
/// SizeOfXLogLongPHD.
pub const LONG_PAGE_HEADER: usize = 40;

/// The first record of the page continues a record from the previous page.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// The page has the long header (first page of a segment).
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// Only used by PostgreSQL < 9.5's archive tooling; still a legal bit.
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// The continuation expected here was lost and replaced by an OVERWRITE_CONTRECORD record.
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// XLP_ALL_FLAGS: any other bit makes the page invalid.
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// The WAL format versions walferry reads, named by the server release that writes them.
/// The page magic (XLOG_PAGE_MAGIC) changes whenever the WAL format does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalVersion {
    Pg15,
    Pg16,
    Pg17,
}

impl WalVersion {
    pub const ALL: [WalVersion; 3] = [WalVersion::Pg15, WalVersion::Pg16, WalVersion::Pg17];

    pub fn magic(self) -> u16 {
        match self {
            WalVersion::Pg15 => 0xD110,
            WalVersion::Pg16 => 0xD113,
            WalVersion::Pg17 => 0xD116,
        }
    }

    pub fn from_magic(magic: u16) -> Option<WalVersion> {
        WalVersion::ALL.into_iter().find(|v| v.magic() == magic)
    }

    /// The server major version, e.g. 15.
    pub fn major(self) -> u32 {
        match self {
            WalVersion::Pg15 => 15,
            WalVersion::Pg16 => 16,
            WalVersion::Pg17 => 17,
        }
    }
}

/// A decoded page header. `sysid`, `seg_size` and `blcksz` are only meaningful when
/// [`PageHeader::is_long`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    pub magic: u16,
    pub info: u16,
    pub tli: u32,
    pub pageaddr: Lsn,
    pub rem_len: u32,
    pub sysid: u64,
    pub seg_size: u32,
    pub blcksz: u32,
}

impl PageHeader {
    /// Parses the short header from the first 24 bytes and, when the long-header flag is set
    /// and 40 bytes are given, the long fields. `None` when `b` is shorter than 24 bytes or the
    /// long header is flagged but not all there.
    pub fn parse(b: &[u8]) -> Option<PageHeader> {
        if b.len() < SHORT_PAGE_HEADER {
            return None;
        }
        let info = le_u16(b, 2);
        let mut h = PageHeader {
            magic: le_u16(b, 0),
            info,
            tli: le_u32(b, 4),
            pageaddr: Lsn(le_u64(b, 8)),
            rem_len: le_u32(b, 16),
            sysid: 0,
            seg_size: 0,
            blcksz: 0,
        };
        if info & XLP_LONG_HEADER != 0 {
            if b.len() < LONG_PAGE_HEADER {
                return None;
            }
            h.sysid = le_u64(b, 24);
            h.seg_size = le_u32(b, 32);
            h.blcksz = le_u32(b, 36);
        }
        Some(h)
    }

    pub fn is_long(&self) -> bool {
        self.info & XLP_LONG_HEADER != 0
    }

    /// XLogPageHeaderSize: 40 with the long header, else 24.
    pub fn size(&self) -> usize {
        header_len(self.info)
    }

    /// Appends the header's bytes (24 or 40, by the long flag) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.magic.to_le_bytes());
        out.extend_from_slice(&self.info.to_le_bytes());
        out.extend_from_slice(&self.tli.to_le_bytes());
        out.extend_from_slice(&self.pageaddr.0.to_le_bytes());
        out.extend_from_slice(&self.rem_len.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        if self.is_long() {
            out.extend_from_slice(&self.sysid.to_le_bytes());
            out.extend_from_slice(&self.seg_size.to_le_bytes());
            out.extend_from_slice(&self.blcksz.to_le_bytes());
        }
    }
}

/// What the first bytes of a segment file say about where it comes from: the one reading of
/// a segment's long page header outside the decoder (the archive's system identifier check,
/// `inspect`'s listing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentHeader {
    /// A long page header of a known WAL version.
    Valid { sysid: u64, seg_size: u32 },
    /// All zeros (an unwritten `.partial`) or shorter than a long header.
    Empty,
    /// Something else: the decoder will say what.
    Invalid,
}

impl SegmentHeader {
    /// Reads the first [`LONG_PAGE_HEADER`] bytes of a segment.
    pub fn parse(b: &[u8]) -> SegmentHeader {
        let b = &b[..b.len().min(LONG_PAGE_HEADER)];
        if b.len() < LONG_PAGE_HEADER || b.iter().all(|&x| x == 0) {
            return SegmentHeader::Empty;
        }
        match PageHeader::parse(b) {
            Some(h) if WalVersion::from_magic(h.magic).is_some() && h.is_long() => {
                SegmentHeader::Valid {
                    sysid: h.sysid,
                    seg_size: h.seg_size,
                }
            }
            _ => SegmentHeader::Invalid,
        }
    }
}

/// Header length implied by the info bits (XLogPageHeaderSize).
pub fn header_len(info: u16) -> usize {
    if info & XLP_LONG_HEADER != 0 {
        LONG_PAGE_HEADER
    } else {
        SHORT_PAGE_HEADER
    }
}

/// IsValidWalSegSize: a power of two from 1 MiB to 1 GiB.
pub fn is_valid_seg_size(size: u64) -> bool {
    size.is_power_of_two() && (MIN_SEG_SIZE..=MAX_SEG_SIZE).contains(&size)
}

/// The segment sizes PostgreSQL allows (xlog_internal.h WalSegMinSize, WalSegMaxSize).
pub const MIN_SEG_SIZE: u64 = 1 << 20;
pub const MAX_SEG_SIZE: u64 = 1 << 30;

// Whole-slice conversions compile to one load with one bounds check.

#[inline(always)]
pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(a)
}

#[inline(always)]
pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

#[inline(always)]
pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_header_round_trips() {
        let h = PageHeader {
            magic: 0xD110,
            info: XLP_LONG_HEADER | XLP_FIRST_IS_CONTRECORD,
            tli: 3,
            pageaddr: Lsn(0x1_0300_0000),
            rem_len: 77,
            sysid: 7_300_000_000_000_000_001,
            seg_size: 16 << 20,
            blcksz: 8192,
        };
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(out.len(), LONG_PAGE_HEADER);
        assert_eq!(PageHeader::parse(&out), Some(h));
        assert_eq!(PageHeader::parse(&out[..39]), None);
        // Magic then info, little-endian, as a PostgreSQL 15 server on x86 writes them.
        assert_eq!(&out[..4], &[0x10, 0xD1, 0x03, 0x00]);
    }

    #[test]
    fn versions_by_magic() {
        assert_eq!(WalVersion::from_magic(0xD110), Some(WalVersion::Pg15));
        assert_eq!(WalVersion::from_magic(0xD113), Some(WalVersion::Pg16));
        assert_eq!(WalVersion::from_magic(0xD116), Some(WalVersion::Pg17));
        assert_eq!(WalVersion::from_magic(0xD10D), None); // PostgreSQL 14
        assert!(is_valid_seg_size(1 << 20) && is_valid_seg_size(16 << 20));
        assert!(!is_valid_seg_size(1 << 19) && !is_valid_seg_size(3 << 20));
        assert!(!is_valid_seg_size(2 << 30));
    }
}
