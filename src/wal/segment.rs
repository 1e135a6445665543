//! Segment numbers and the file names PostgreSQL (and pg_receivewal) give WAL files.
//!
//! A segment file is named by 24 hex digits: timeline (8), then the segment number split
//! into "log" and "seg" halves of 4 GiB each (as xlog_internal.h XLogFileName).
//! pg_receivewal adds `.gz` / `.lz4` for compressed segments and `.partial` for the one
//! still being written; walferry adds `.zst` the same way.

use std::fmt;

use super::{Lsn, TimeLineId};

pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// Segment number: the LSN divided by the segment size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegNo(pub u64);

impl SegNo {
    pub fn start_lsn(self, seg_size: u64) -> Lsn {
        Lsn(self.0 * seg_size)
    }

    pub fn next(self) -> SegNo {
        SegNo(self.0 + 1)
    }
}

/// A segment on a timeline: what a 24-hex-digit name denotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    pub tli: TimeLineId,
    pub segno: SegNo,
}

impl SegmentName {
    pub fn new(tli: TimeLineId, segno: SegNo) -> Self {
        SegmentName { tli, segno }
    }

    /// The 24-digit file name, as xlog_internal.h XLogFileName.
    pub fn file_name(&self, seg_size: u64) -> String {
        let per_id = 0x1_0000_0000u64 / seg_size;
        format!(
            "{:08X}{:08X}{:08X}",
            self.tli.0,
            self.segno.0 / per_id,
            self.segno.0 % per_id
        )
    }

    /// Parse exactly 24 hex digits; `None` for anything else. As XLogFromFileName, a
    /// "seg" half that is out of range for the segment size is rejected.
    pub fn parse(name: &str, seg_size: u64) -> Option<Self> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per_id = 0x1_0000_0000u64 / seg_size;
        if seg >= per_id || tli == 0 {
            return None;
        }
        Some(SegmentName {
            tli: TimeLineId(tli),
            segno: SegNo(log * per_id + seg),
        })
    }
}

/// Compression of a segment file, named by its suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Lz4 => ".lz4",
            Compression::Zstd => ".zst",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// A WAL segment file name in an archive directory, with its decorations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WalFileName {
    pub segment: SegmentName,
    pub compression: Compression,
    pub partial: bool,
}

impl WalFileName {
    pub fn file_name(&self, seg_size: u64) -> String {
        format!(
            "{}{}{}",
            self.segment.file_name(seg_size),
            self.compression.suffix(),
            if self.partial { ".partial" } else { "" }
        )
    }

    /// Recognise `NAME[.gz|.lz4|.zst][.partial]`; anything else is not a WAL file.
    pub fn parse(name: &str, seg_size: u64) -> Option<Self> {
        let (rest, partial) = match name.strip_suffix(".partial") {
            Some(rest) => (rest, true),
            None => (name, false),
        };
        let (base, compression) = [Compression::Gzip, Compression::Lz4, Compression::Zstd]
            .into_iter()
            .find_map(|c| rest.strip_suffix(c.suffix()).map(|b| (b, c)))
            .unwrap_or((rest, Compression::None));
        Some(WalFileName {
            segment: SegmentName::parse(base, seg_size)?,
            compression,
            partial,
        })
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name(DEFAULT_SEGMENT_SIZE))
    }
}

/// `%08X.history`, as xlog_internal.h TLHistoryFileName.
pub fn history_file_name(tli: TimeLineId) -> String {
    format!("{:08X}.history", tli.0)
}

pub fn parse_history_file_name(name: &str) -> Option<TimeLineId> {
    let hex = name.strip_suffix(".history")?;
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok().map(TimeLineId)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = DEFAULT_SEGMENT_SIZE;

    #[test]
    fn names_match_postgres() {
        // 16 MiB segments: 256 per 4 GiB "log" id.
        let segno = SegNo(5 * 256 + 0x2A);
        let n = SegmentName::new(TimeLineId(3), segno);
        assert_eq!(n.file_name(SEG), "00000003000000050000002A");
        assert_eq!(SegmentName::parse("00000003000000050000002A", SEG), Some(n));
        // Segment numbers beyond 32 bits split into the "log" and "seg" halves.
        let far = SegmentName::new(TimeLineId(1), SegNo(0x1_0000_0003));
        assert_eq!(far.file_name(SEG), "000000010100000000000003");
        assert_eq!(SegmentName::parse(&far.file_name(SEG), SEG), Some(far));
        // A 1 GiB segment size has 4 segments per log id.
        let big = SegmentName::new(TimeLineId(1), SegNo(9));
        assert_eq!(big.file_name(1 << 30), "000000010000000200000001");
    }

    #[test]
    fn rejects_non_wal_names() {
        for bad in [
            "00000001000000000000000",
            "0000000100000000000000001",
            "00000001000000000000010G",
            "000000010000000000000100", // seg half out of range for 16 MiB
            "000000000000000000000001", // timeline 0
            "archive_status",
        ] {
            assert_eq!(SegmentName::parse(bad, SEG), None, "{bad}");
        }
    }

    #[test]
    fn decorated_names_round_trip() {
        for name in [
            "000000010000000000000001",
            "000000010000000000000001.partial",
            "000000010000000000000001.gz",
            "000000010000000000000001.gz.partial",
            "000000010000000000000001.lz4.partial",
            "000000010000000000000001.zst",
        ] {
            let parsed = WalFileName::parse(name, SEG).unwrap();
            assert_eq!(parsed.file_name(SEG), name);
        }
        assert_eq!(
            WalFileName::parse("000000010000000000000001.bz2", SEG),
            None
        );
        assert_eq!(
            WalFileName::parse("000000010000000000000001.partial.gz", SEG),
            None
        );
    }

    #[test]
    fn history_names() {
        assert_eq!(history_file_name(TimeLineId(0x1A)), "0000001A.history");
        assert_eq!(
            parse_history_file_name("0000001A.history"),
            Some(TimeLineId(0x1A))
        );
        assert_eq!(parse_history_file_name("1A.history"), None);
    }
}
