//! WAL records: the 24-byte header (xlogrecord.h XLogRecord), the CRC that covers them, the
//! walk over block headers to the main data (xlogreader.c DecodeXLogRecord), and the few
//! record kinds walferry reads: checkpoints, XLOG switch, restore points, end of recovery,
//! commits and aborts. Everything else is reported as a boundary only.

use std::borrow::Cow;
use std::time::SystemTime;

use super::page::{le_u16, le_u32, le_u64};
use super::{Lsn, TimeLineId};

/// SizeOfXLogRecord.
pub const RECORD_HEADER: usize = 24;
/// offsetof(XLogRecord, xl_crc): the header bytes the CRC covers (after the payload).
pub const RECORD_CRC_OFFSET: usize = 20;
/// Largest record walferry accepts (MaxAllocSize, which bounds what xlogreader can decode).
pub const MAX_RECORD_LEN: u32 = 0x3FFF_FFFF;

/// Resource managers walferry looks into (rmgrlist.h).
pub const RM_XLOG_ID: u8 = 0;
pub const RM_XACT_ID: u8 = 1;
/// RM_MAX_BUILTIN_ID of PostgreSQL 15, 16 and 17.
pub const RM_MAX_BUILTIN_ID: u8 = 21;
/// RM_MIN_CUSTOM_ID: 128..=255 are extension rmgrs (PostgreSQL 15+).
pub const RM_MIN_CUSTOM_ID: u8 = 128;

/// XLR_INFO_MASK: low info bits belong to the WAL machinery, the high ones to the rmgr.
pub const XLR_INFO_MASK: u8 = 0x0F;

/// XLOG rmgr info codes (pg_control.h).
pub const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
pub const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
pub const XLOG_SWITCH: u8 = 0x40;
pub const XLOG_RESTORE_POINT: u8 = 0x70;
pub const XLOG_END_OF_RECOVERY: u8 = 0x90;
pub const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;

/// XACT rmgr info codes (xact.h).
pub const XLOG_XACT_OPMASK: u8 = 0x70;
pub const XLOG_XACT_HAS_INFO: u8 = 0x80;
pub const XLOG_XACT_COMMIT: u8 = 0x00;
pub const XLOG_XACT_ABORT: u8 = 0x20;
pub const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
pub const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;

/// Block and data fragment ids (xlogrecord.h).
pub const XLR_MAX_BLOCK_ID: u8 = 32;
pub const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
pub const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
pub const XLR_BLOCK_ID_ORIGIN: u8 = 253;
pub const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_HAS_DATA: u8 = 0x20;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// BKPIMAGE_COMPRESS_PGLZ | _LZ4 | _ZSTD as of PostgreSQL 15.
const BKPIMAGE_COMPRESSED: u8 = 0x04 | 0x08 | 0x10;
const BLCKSZ: u16 = 8192;

/// MAXALIGN for the 8-byte alignment of every record start.
#[inline(always)]
pub const fn maxalign(x: u64) -> u64 {
    (x + 7) & !7
}

/// RmgrIdIsValid: a built-in rmgr or a custom one.
#[inline(always)]
pub fn rmgr_id_is_valid(rmid: u8) -> bool {
    rmid <= RM_MAX_BUILTIN_ID || rmid >= RM_MIN_CUSTOM_ID
}

/// The name pg_waldump prints for a built-in rmgr (rmgrlist.h); `None` for custom ones.
pub fn rmgr_name(rmid: u8) -> Option<&'static str> {
    const NAMES: [&str; 22] = [
        "XLOG",
        "Transaction",
        "Storage",
        "CLOG",
        "Database",
        "Tablespace",
        "MultiXact",
        "RelMap",
        "Standby",
        "Heap2",
        "Heap",
        "Btree",
        "Hash",
        "Gin",
        "Gist",
        "Sequence",
        "SPGist",
        "BRIN",
        "CommitTs",
        "ReplicationOrigin",
        "Generic",
        "LogicalMessage",
    ];
    NAMES.get(usize::from(rmid)).copied()
}

/// The fixed record header (XLogRecord).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub tot_len: u32,
    pub xid: u32,
    pub prev: Lsn,
    pub info: u8,
    pub rmid: u8,
    pub crc: u32,
}

impl RecordHeader {
    /// Reads the header from the first 24 bytes of `b` (which must have them).
    #[inline(always)]
    pub fn parse(b: &[u8]) -> RecordHeader {
        RecordHeader {
            tot_len: le_u32(b, 0),
            xid: le_u32(b, 4),
            prev: Lsn(le_u64(b, 8)),
            info: b[16],
            rmid: b[17],
            crc: le_u32(b, 20),
        }
    }

    /// Appends the header's 24 bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.tot_len.to_le_bytes());
        out.extend_from_slice(&self.xid.to_le_bytes());
        out.extend_from_slice(&self.prev.0.to_le_bytes());
        out.extend_from_slice(&[self.info, self.rmid, 0, 0]);
        out.extend_from_slice(&self.crc.to_le_bytes());
    }
}

/// CRC-32C of a record as xlogreader.c ValidXLogRecord computes it: the payload
/// (bytes `[24, tot_len)`) first, then the header up to the CRC field.
#[inline]
pub fn record_crc(payload: &[u8], header: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(payload), &header[..RECORD_CRC_OFFSET])
}

/// A PostgreSQL TimestampTz: microseconds since 2000-01-01 00:00:00 UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TimestampTz(pub i64);

impl TimestampTz {
    /// Seconds from the Unix epoch to PostgreSQL's.
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

    pub fn unix_micros(self) -> i64 {
        self.0.saturating_add(Self::PG_EPOCH_UNIX_SECS * 1_000_000)
    }

    pub fn from_unix_micros(us: i64) -> Self {
        TimestampTz(us.saturating_sub(Self::PG_EPOCH_UNIX_SECS * 1_000_000))
    }

    pub fn to_system_time(self) -> SystemTime {
        let us = self.unix_micros();
        let abs = std::time::Duration::from_micros(us.unsigned_abs());
        if us >= 0 {
            SystemTime::UNIX_EPOCH + abs
        } else {
            SystemTime::UNIX_EPOCH - abs
        }
    }
}

/// A decoded record: its place in the WAL, its header fields, and what walferry read from it.
/// Kept small (80 bytes): every record is moved through the iterator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Start of the record (what pg_waldump prints as `lsn:`).
    pub lsn: Lsn,
    /// Where the next record starts, as xlogreader.c's EndRecPtr: the end rounded up to 8
    /// bytes, and for an XLOG switch the start of the next segment.
    pub end: Lsn,
    pub prev: Lsn,
    pub tot_len: u32,
    pub xid: u32,
    pub rmid: u8,
    pub info: u8,
    pub kind: RecordKind,
}

impl Record {
    /// pg_waldump's name for the record's rmgr (`custom###` for extension rmgrs).
    pub fn rmgr_name(&self) -> Cow<'static, str> {
        match rmgr_name(self.rmid) {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(format!("custom{:03}", self.rmid)),
        }
    }
}

/// The record kinds walferry reads; everything else is `Other`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Other,
    /// XLOG_CHECKPOINT_SHUTDOWN or XLOG_CHECKPOINT_ONLINE.
    Checkpoint(Checkpoint),
    /// XLOG_SWITCH: the rest of the segment is padding.
    Switch,
    /// XLOG_RESTORE_POINT (pg_create_restore_point). Boxed: rare, and the name would
    /// otherwise make every record 40 bytes larger.
    RestorePoint(Box<RestorePoint>),
    /// XLOG_END_OF_RECOVERY, written by a promoted standby on its new timeline.
    EndOfRecovery(EndOfRecovery),
    /// XLOG_OVERWRITE_CONTRECORD: recovery replaced a record whose tail was lost.
    OverwriteContrecord {
        overwritten: Lsn,
        time: TimestampTz,
    },
    /// XLOG_XACT_COMMIT and XLOG_XACT_COMMIT_PREPARED.
    Commit(XactEnd),
    /// XLOG_XACT_ABORT and XLOG_XACT_ABORT_PREPARED.
    Abort(XactEnd),
}

/// The fields of CheckPoint (pg_control.h) walferry uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub shutdown: bool,
    pub redo: Lsn,
    pub tli: TimeLineId,
    pub prev_tli: TimeLineId,
    /// pg_time_t: seconds since the Unix epoch.
    pub time: i64,
}

/// xl_restore_point.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RestorePoint {
    pub time: TimestampTz,
    /// rp_name as stored: NUL-terminated within 64 bytes (MAXFNAMELEN).
    pub raw_name: [u8; 64],
}

impl RestorePoint {
    /// The name's bytes, up to the terminating NUL.
    pub fn name_bytes(&self) -> &[u8] {
        let len = self.raw_name.iter().position(|&b| b == 0).unwrap_or(64);
        &self.raw_name[..len]
    }

    /// The name as text (in the server encoding; lossy when that is not UTF-8).
    pub fn name(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.name_bytes())
    }
}

impl std::fmt::Debug for RestorePoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestorePoint")
            .field("time", &self.time)
            .field("name", &self.name())
            .finish()
    }
}

/// xl_end_of_recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndOfRecovery {
    pub time: TimestampTz,
    pub tli: TimeLineId,
    pub prev_tli: TimeLineId,
}

/// A transaction's commit or abort.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XactEnd {
    /// The transaction ended: the record's xl_xid, or for COMMIT/ABORT PREPARED the prepared
    /// transaction's xid (xl_xact_twophase) when the record carries it.
    pub xid: u32,
    pub time: TimestampTz,
    pub prepared: bool,
}

/// Whether a record of this rmgr/info is one whose main data walferry reads. Only these are
/// reassembled when they span chunks; all others are checked by CRC pieces without a copy.
#[inline(always)]
pub fn wants_main_data(rmid: u8, info: u8) -> bool {
    match rmid {
        RM_XLOG_ID => matches!(
            info & !XLR_INFO_MASK,
            XLOG_CHECKPOINT_SHUTDOWN
                | XLOG_CHECKPOINT_ONLINE
                | XLOG_RESTORE_POINT
                | XLOG_END_OF_RECOVERY
                | XLOG_OVERWRITE_CONTRECORD
        ),
        RM_XACT_ID => matches!(
            info & XLOG_XACT_OPMASK,
            XLOG_XACT_COMMIT
                | XLOG_XACT_ABORT
                | XLOG_XACT_COMMIT_PREPARED
                | XLOG_XACT_ABORT_PREPARED
        ),
        _ => false,
    }
}

/// Whether the record is an XLOG switch (xlogreader.c: rmid XLOG, info & ~XLR_INFO_MASK).
#[inline(always)]
pub fn is_switch(rmid: u8, info: u8) -> bool {
    rmid == RM_XLOG_ID && info & !XLR_INFO_MASK == XLOG_SWITCH
}

/// The main data of a whole record (header included), found by walking the block headers as
/// xlogreader.c DecodeXLogRecord does, with its cross-checks. The main data is the record's
/// last `main_data_len` bytes: block data comes before it.
pub fn main_data(rec: &[u8]) -> Result<&[u8], String> {
    /// The unread header bytes, as DecodeXLogRecord's `ptr` and `remaining`.
    struct Cursor<'a> {
        rest: &'a [u8],
    }
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            if self.rest.len() < n {
                return Err("record with invalid length".to_string());
            }
            let (head, tail) = self.rest.split_at(n);
            self.rest = tail;
            Ok(head)
        }
    }
    let mut cur = Cursor {
        rest: rec.get(RECORD_HEADER..).unwrap_or_default(),
    };
    let mut datatotal: u64 = 0;
    let mut main_len: u64 = 0;
    let mut max_block: i32 = -1;
    let mut have_rel = false;
    macro_rules! take {
        ($n:expr) => {
            cur.take($n)?
        };
    }
    macro_rules! remaining {
        () => {
            cur.rest.len() as u64
        };
    }

    while remaining!() > datatotal {
        let id = take!(1)[0];
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_len = u64::from(take!(1)[0]);
                datatotal += main_len;
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_len = u64::from(le_u32(take!(4), 0));
                datatotal += main_len;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => {
                take!(2);
            }
            XLR_BLOCK_ID_TOPLEVEL_XID => {
                take!(4);
            }
            id if id <= XLR_MAX_BLOCK_ID => {
                if i32::from(id) <= max_block {
                    return Err(format!("out-of-order block_id {id}"));
                }
                max_block = i32::from(id);
                let fork_flags = take!(1)[0];
                let data_len = le_u16(take!(2), 0);
                let has_data = fork_flags & BKPBLOCK_HAS_DATA != 0;
                if has_data && data_len == 0 {
                    return Err("BKPBLOCK_HAS_DATA set, but no data included".into());
                }
                if !has_data && data_len != 0 {
                    return Err(format!(
                        "BKPBLOCK_HAS_DATA not set, but data length is {data_len}"
                    ));
                }
                datatotal += u64::from(data_len);
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    let img = take!(5);
                    let bimg_len = le_u16(img, 0);
                    let hole_offset = le_u16(img, 2);
                    let bimg_info = img[4];
                    let compressed = bimg_info & BKPIMAGE_COMPRESSED != 0;
                    let hole_length = if compressed {
                        if bimg_info & BKPIMAGE_HAS_HOLE != 0 {
                            le_u16(take!(2), 0)
                        } else {
                            0
                        }
                    } else {
                        BLCKSZ.wrapping_sub(bimg_len)
                    };
                    datatotal += u64::from(bimg_len);
                    let has_hole = bimg_info & BKPIMAGE_HAS_HOLE != 0;
                    if has_hole && (hole_offset == 0 || hole_length == 0 || bimg_len == BLCKSZ) {
                        return Err("BKPIMAGE_HAS_HOLE set, but the hole is empty".into());
                    }
                    if !has_hole && (hole_offset != 0 || hole_length != 0) {
                        return Err("BKPIMAGE_HAS_HOLE not set, but there is a hole".into());
                    }
                    if compressed && bimg_len == BLCKSZ {
                        return Err(
                            "BKPIMAGE_COMPRESSED set, but block image length is 8192".into()
                        );
                    }
                    if !has_hole && !compressed && bimg_len != BLCKSZ {
                        return Err(format!(
                            "neither BKPIMAGE_HAS_HOLE nor BKPIMAGE_COMPRESSED set, but block \
                             image length is {bimg_len}"
                        ));
                    }
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    take!(12);
                    have_rel = true;
                } else if !have_rel {
                    return Err("BKPBLOCK_SAME_REL set but no previous rel".into());
                }
                take!(4);
            }
            id => return Err(format!("invalid block_id {id}")),
        }
    }
    if remaining!() != datatotal {
        return Err("record with invalid length".to_string());
    }
    // remaining == datatotal <= rec.len(), so this cannot underflow.
    Ok(&rec[rec.len() - main_len as usize..])
}

/// Reads what walferry needs from a whole, CRC-checked record whose header `h` says it is one
/// of the kinds of [`wants_main_data`] (or a switch). `Err` names what is malformed.
pub fn decode_kind(h: &RecordHeader, rec: &[u8]) -> Result<RecordKind, String> {
    if is_switch(h.rmid, h.info) {
        return Ok(RecordKind::Switch);
    }
    if !wants_main_data(h.rmid, h.info) {
        return Ok(RecordKind::Other);
    }
    let data = main_data(rec)?;
    let need = |n: usize, what: &str| {
        if data.len() < n {
            Err(format!(
                "{what} record has {} bytes of main data, expected at least {n}",
                data.len()
            ))
        } else {
            Ok(())
        }
    };
    let tli = |at| TimeLineId(le_u32(data, at));
    let ts = |at| TimestampTz(le_u64(data, at) as i64);
    if h.rmid == RM_XLOG_ID {
        return match h.info & !XLR_INFO_MASK {
            op @ (XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE) => {
                // sizeof(CheckPoint) is 88 in PostgreSQL 15 to 17; `time` is at 64.
                need(88, "checkpoint")?;
                Ok(RecordKind::Checkpoint(Checkpoint {
                    shutdown: op == XLOG_CHECKPOINT_SHUTDOWN,
                    redo: Lsn(le_u64(data, 0)),
                    tli: tli(8),
                    prev_tli: tli(12),
                    time: le_u64(data, 64) as i64,
                }))
            }
            XLOG_RESTORE_POINT => {
                need(72, "restore point")?;
                let mut raw_name = [0u8; 64];
                raw_name.copy_from_slice(&data[8..72]);
                Ok(RecordKind::RestorePoint(Box::new(RestorePoint {
                    time: ts(0),
                    raw_name,
                })))
            }
            XLOG_END_OF_RECOVERY => {
                need(16, "end-of-recovery")?;
                Ok(RecordKind::EndOfRecovery(EndOfRecovery {
                    time: ts(0),
                    tli: tli(8),
                    prev_tli: tli(12),
                }))
            }
            XLOG_OVERWRITE_CONTRECORD => {
                need(16, "overwrite contrecord")?;
                Ok(RecordKind::OverwriteContrecord {
                    overwritten: Lsn(le_u64(data, 0)),
                    time: ts(8),
                })
            }
            _ => Ok(RecordKind::Other),
        };
    }
    // XACT commit/abort: xl_xact_commit and xl_xact_abort both start with the time.
    need(8, "commit/abort")?;
    let op = h.info & XLOG_XACT_OPMASK;
    let prepared = matches!(op, XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_ABORT_PREPARED);
    let is_commit = matches!(op, XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED);
    let xid = if prepared {
        twophase_xid(h.info, is_commit, data).unwrap_or(h.xid)
    } else {
        h.xid
    };
    let end = XactEnd {
        xid,
        time: ts(0),
        prepared,
    };
    Ok(if is_commit {
        RecordKind::Commit(end)
    } else {
        RecordKind::Abort(end)
    })
}

/// The prepared transaction's xid from a COMMIT/ABORT PREPARED record, walking the optional
/// parts in the order of xactdesc.c ParseCommitRecord / ParseAbortRecord (PostgreSQL 15-17
/// layouts). `None` when the record has no xl_xact_twophase or the walk runs off the end.
fn twophase_xid(info: u8, is_commit: bool, data: &[u8]) -> Option<u32> {
    const HAS_DBINFO: u32 = 1 << 0;
    const HAS_SUBXACTS: u32 = 1 << 1;
    const HAS_RELFILELOCATORS: u32 = 1 << 2;
    const HAS_INVALS: u32 = 1 << 3;
    const HAS_TWOPHASE: u32 = 1 << 4;
    const HAS_DROPPED_STATS: u32 = 1 << 8;
    if info & XLOG_XACT_HAS_INFO == 0 {
        return None;
    }
    let u32_at = |at: usize| -> Option<u32> {
        let b = data.get(at..at.checked_add(4)?)?;
        Some(le_u32(b, 0))
    };
    let counted = |at: usize, item: usize| -> Option<usize> {
        let n = u32_at(at)? as usize;
        at.checked_add(4)?.checked_add(n.checked_mul(item)?)
    };
    let xinfo = u32_at(8)?;
    let mut at = 12;
    if xinfo & HAS_DBINFO != 0 {
        at += 8;
    }
    if xinfo & HAS_SUBXACTS != 0 {
        at = counted(at, 4)?;
    }
    if xinfo & HAS_RELFILELOCATORS != 0 {
        at = counted(at, 12)?;
    }
    if xinfo & HAS_DROPPED_STATS != 0 {
        at = counted(at, 12)?;
    }
    if is_commit && xinfo & HAS_INVALS != 0 {
        at = counted(at, 16)?;
    }
    if xinfo & HAS_TWOPHASE == 0 {
        return None;
    }
    u32_at(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_main(main: &[u8], prefix: &[u8]) -> Vec<u8> {
        let mut rec = vec![0u8; RECORD_HEADER];
        rec.extend_from_slice(prefix);
        if main.len() < 256 {
            rec.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, main.len() as u8]);
        } else {
            rec.push(XLR_BLOCK_ID_DATA_LONG);
            rec.extend_from_slice(&(main.len() as u32).to_le_bytes());
        }
        rec.extend_from_slice(main);
        rec
    }

    #[test]
    fn main_data_after_block_headers() {
        // Block 0 with 3 bytes of data and a relation, block 1 on the same relation with a
        // full-page image with a hole, an origin, then 300 bytes of main data.
        let mut hdrs = vec![0u8, BKPBLOCK_HAS_DATA, 3, 0];
        hdrs.extend_from_slice(&[1; 12]);
        hdrs.extend_from_slice(&7u32.to_le_bytes());
        hdrs.extend_from_slice(&[1, BKPBLOCK_HAS_IMAGE | BKPBLOCK_SAME_REL, 0, 0]);
        hdrs.extend_from_slice(&100u16.to_le_bytes()); // bimg_len
        hdrs.extend_from_slice(&40u16.to_le_bytes()); // hole_offset
        hdrs.push(BKPIMAGE_HAS_HOLE);
        hdrs.extend_from_slice(&8u32.to_le_bytes());
        hdrs.extend_from_slice(&[XLR_BLOCK_ID_ORIGIN, 9, 0]);
        let main: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let mut rec = vec![0u8; RECORD_HEADER];
        rec.extend_from_slice(&hdrs);
        rec.push(XLR_BLOCK_ID_DATA_LONG);
        rec.extend_from_slice(&300u32.to_le_bytes());
        rec.extend_from_slice(&[0xAA; 103]); // block data: 3 + image 100
        rec.extend_from_slice(&main);
        assert_eq!(main_data(&rec).unwrap(), &main[..]);
        // One byte short: the fragment lengths no longer add up.
        assert!(main_data(&rec[..rec.len() - 1]).is_err());
        // A record without fragments has no main data.
        assert_eq!(main_data(&[0u8; 24]).unwrap(), b"");
    }

    #[test]
    fn block_header_cross_checks() {
        let bad = |hdrs: &[u8]| {
            let mut rec = vec![0u8; RECORD_HEADER];
            rec.extend_from_slice(hdrs);
            rec.extend_from_slice(&[0; 16]);
            main_data(&rec).unwrap_err()
        };
        assert!(bad(&[0, BKPBLOCK_HAS_DATA, 0, 0]).contains("no data"));
        assert!(bad(&[0, 0, 1, 0]).contains("not set"));
        assert!(bad(&[0, BKPBLOCK_SAME_REL, 0, 0, 1, 0, 0, 0]).contains("no previous rel"));
        assert!(bad(&[40]).contains("invalid block_id 40"));
        let mut two = vec![1u8, 0, 0, 0];
        two.extend_from_slice(&[0; 16]);
        two.extend_from_slice(&[1, 0, 0, 0]);
        assert!(bad(&two).contains("out-of-order"));
    }

    #[test]
    fn commit_prepared_reads_the_twophase_xid() {
        let h = RecordHeader {
            tot_len: 0,
            xid: 0,
            prev: Lsn(0),
            info: XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO,
            rmid: RM_XACT_ID,
            crc: 0,
        };
        let mut main = 123_456i64.to_le_bytes().to_vec();
        let xinfo: u32 = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 4) | (1 << 8);
        main.extend_from_slice(&xinfo.to_le_bytes());
        main.extend_from_slice(&[5, 0, 0, 0, 6, 0, 0, 0]); // dbinfo
        main.extend_from_slice(&2u32.to_le_bytes()); // 2 subxacts
        main.extend_from_slice(&[0; 8]);
        main.extend_from_slice(&1u32.to_le_bytes()); // 1 dropped stats item
        main.extend_from_slice(&[0; 12]);
        main.extend_from_slice(&1u32.to_le_bytes()); // 1 inval message
        main.extend_from_slice(&[0; 16]);
        main.extend_from_slice(&4242u32.to_le_bytes()); // xl_xact_twophase
        let rec = with_main(&main, &[]);
        let kind = decode_kind(&h, &rec).unwrap();
        assert_eq!(
            kind,
            RecordKind::Commit(XactEnd {
                xid: 4242,
                time: TimestampTz(123_456),
                prepared: true
            })
        );
        // ABORT PREPARED has no invalidations: the xid comes right after the stats.
        let h = RecordHeader {
            info: XLOG_XACT_ABORT_PREPARED | XLOG_XACT_HAS_INFO,
            xid: 9,
            ..h
        };
        let mut main = 7i64.to_le_bytes().to_vec();
        main.extend_from_slice(&(1u32 << 4).to_le_bytes());
        main.extend_from_slice(&77u32.to_le_bytes());
        let rec = with_main(&main, &[]);
        assert_eq!(
            decode_kind(&h, &rec).unwrap(),
            RecordKind::Abort(XactEnd {
                xid: 77,
                time: TimestampTz(7),
                prepared: true
            })
        );
    }

    #[test]
    fn short_main_data_is_an_error() {
        let h = RecordHeader {
            tot_len: 0,
            xid: 0,
            prev: Lsn(0),
            info: XLOG_RESTORE_POINT,
            rmid: RM_XLOG_ID,
            crc: 0,
        };
        let rec = with_main(&[0; 71], &[]);
        assert!(decode_kind(&h, &rec).unwrap_err().contains("restore point"));
    }

    #[test]
    fn rmgr_ids_and_names() {
        assert_eq!(rmgr_name(0), Some("XLOG"));
        assert_eq!(rmgr_name(10), Some("Heap"));
        assert_eq!(rmgr_name(21), Some("LogicalMessage"));
        assert_eq!(rmgr_name(22), None);
        assert!(rmgr_id_is_valid(21) && rmgr_id_is_valid(128) && rmgr_id_is_valid(255));
        assert!(!rmgr_id_is_valid(22) && !rmgr_id_is_valid(127));
        assert_eq!(TimestampTz(0).unix_micros(), 946_684_800_000_000);
        assert!(std::mem::size_of::<Record>() <= 80);
    }
}
