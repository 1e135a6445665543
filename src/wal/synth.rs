//! Synthetic WAL for tests, benches and fuzz seeds: pages and records laid out exactly as a
//! PostgreSQL server writes them (page headers, long headers at segment starts, records that
//! continue across pages with FIRST_IS_CONTRECORD and rem_len, 8-byte alignment, correct
//! CRCs, the xl_prev chain, zeros after an XLOG switch). Not used by walferry at run time.

use super::page::{
    PageHeader, WalVersion, XLOG_BLCKSZ, XLP_FIRST_IS_CONTRECORD,
    XLP_FIRST_IS_OVERWRITE_CONTRECORD, XLP_LONG_HEADER,
};
use super::record::{
    maxalign, record_crc, RecordHeader, RECORD_HEADER, RM_XACT_ID, RM_XLOG_ID,
    XLOG_CHECKPOINT_ONLINE, XLOG_CHECKPOINT_SHUTDOWN, XLOG_END_OF_RECOVERY,
    XLOG_OVERWRITE_CONTRECORD, XLOG_RESTORE_POINT, XLOG_SWITCH, XLOG_XACT_ABORT, XLOG_XACT_COMMIT,
    XLR_BLOCK_ID_DATA_LONG, XLR_BLOCK_ID_DATA_SHORT,
};
use super::{Lsn, TimeLineId};

const BLCKSZ: u64 = XLOG_BLCKSZ as u64;
/// The rmgr of filler records (Heap), which walferry does not look into.
pub const RM_HEAP_ID: u8 = 10;

/// Writes a WAL stream from a page boundary on. [`WalBuilder::bytes`] is the stream from
/// [`WalBuilder::start`] to [`WalBuilder::end`], the position where the next record would go.
pub struct WalBuilder {
    seg_size: u64,
    tli: u32,
    sysid: u64,
    magic: u16,
    start: u64,
    pos: u64,
    prev: u64,
    /// Flags added to the next page header written (e.g. OVERWRITE_CONTRECORD).
    next_page_flags: u16,
    out: Vec<u8>,
}

impl WalBuilder {
    /// A stream starting at `start` (a page boundary) on timeline `tli`, written by a
    /// PostgreSQL 15 server whose system identifier is `sysid`. The first record's xl_prev
    /// is 0 unless [`WalBuilder::set_prev`] says otherwise.
    pub fn new(start: Lsn, tli: TimeLineId, seg_size: u64, sysid: u64) -> WalBuilder {
        assert_eq!(start.0 % BLCKSZ, 0, "start must be a page boundary");
        WalBuilder {
            seg_size,
            tli: tli.0,
            sysid,
            magic: WalVersion::Pg15.magic(),
            start: start.0,
            pos: start.0,
            prev: 0,
            next_page_flags: 0,
            out: Vec::new(),
        }
    }

    pub fn version(mut self, v: WalVersion) -> WalBuilder {
        self.magic = v.magic();
        self
    }

    pub fn set_prev(&mut self, prev: Lsn) {
        self.prev = prev.0;
    }

    /// The timeline written into the page headers from the next page on.
    pub fn set_timeline(&mut self, tli: TimeLineId) {
        self.tli = tli.0;
    }

    pub fn start(&self) -> Lsn {
        Lsn(self.start)
    }

    pub fn end(&self) -> Lsn {
        Lsn(self.pos)
    }

    /// Start of the last record written.
    pub fn prev(&self) -> Lsn {
        Lsn(self.prev)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.out
    }

    pub fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }

    /// Offset in [`WalBuilder::bytes`] of the byte at `lsn`.
    pub fn offset_of(&self, lsn: Lsn) -> usize {
        (lsn.0 - self.start) as usize
    }

    /// A record with the given header fields and `body` (block headers and data, i.e. all
    /// after the 24-byte header). Returns its LSN.
    pub fn record(&mut self, rmid: u8, info: u8, xid: u32, body: &[u8]) -> Lsn {
        if self.pos % BLCKSZ == 0 {
            self.page_header(0);
        }
        let lsn = self.pos;
        let mut h = RecordHeader {
            tot_len: (RECORD_HEADER + body.len()) as u32,
            xid,
            prev: Lsn(self.prev),
            info,
            rmid,
            crc: 0,
        };
        let mut hdr = Vec::with_capacity(RECORD_HEADER);
        h.encode(&mut hdr);
        h.crc = record_crc(body, &hdr);
        hdr.clear();
        h.encode(&mut hdr);
        self.put(&hdr, body);
        self.prev = lsn;
        Lsn(lsn)
    }

    /// A record whose only fragment is `main` (XLR_BLOCK_ID_DATA_SHORT or _LONG).
    pub fn main_data_record(&mut self, rmid: u8, info: u8, xid: u32, main: &[u8]) -> Lsn {
        self.record(rmid, info, xid, &main_data_body(main))
    }

    /// A Heap record of exactly `tot_len` bytes (at least 26), filled with varied bytes.
    pub fn filler(&mut self, tot_len: usize) -> Lsn {
        assert!(tot_len >= RECORD_HEADER + 2);
        let short = tot_len - RECORD_HEADER - 2 < 256;
        let main_len = tot_len - RECORD_HEADER - if short { 2 } else { 5 };
        let mut body = Vec::with_capacity(tot_len);
        if short {
            body.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, main_len as u8]);
        } else {
            // A long header even for a short length is legal (DecodeXLogRecord accepts it).
            body.push(XLR_BLOCK_ID_DATA_LONG);
            body.extend_from_slice(&(main_len as u32).to_le_bytes());
        }
        let seed = self.pos;
        body.extend(
            (0..main_len)
                .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9).wrapping_add(seed) >> 3) as u8),
        );
        self.record(RM_HEAP_ID, 0x00, 700, &body)
    }

    pub fn switch(&mut self) -> Lsn {
        let lsn = self.record(RM_XLOG_ID, XLOG_SWITCH, 0, &[]);
        let seg_end = self.pos.next_multiple_of(self.seg_size);
        self.out
            .resize(self.out.len() + (seg_end - self.pos) as usize, 0);
        self.pos = seg_end;
        lsn
    }

    /// pg_create_restore_point: `name` is at most 63 bytes (MAXFNAMELEN - 1).
    pub fn restore_point(&mut self, name: &[u8], time: i64) -> Lsn {
        assert!(name.len() < 64);
        let mut main = time.to_le_bytes().to_vec();
        let mut raw = [0u8; 64];
        raw[..name.len()].copy_from_slice(name);
        main.extend_from_slice(&raw);
        self.main_data_record(RM_XLOG_ID, XLOG_RESTORE_POINT, 0, &main)
    }

    pub fn commit(&mut self, xid: u32, time: i64) -> Lsn {
        self.main_data_record(RM_XACT_ID, XLOG_XACT_COMMIT, xid, &time.to_le_bytes())
    }

    pub fn abort(&mut self, xid: u32, time: i64) -> Lsn {
        self.main_data_record(RM_XACT_ID, XLOG_XACT_ABORT, xid, &time.to_le_bytes())
    }

    /// A checkpoint record (sizeof(CheckPoint) = 88 bytes of main data).
    pub fn checkpoint(
        &mut self,
        shutdown: bool,
        redo: Lsn,
        tli: u32,
        prev_tli: u32,
        time: i64,
    ) -> Lsn {
        let mut main = vec![0u8; 88];
        main[0..8].copy_from_slice(&redo.0.to_le_bytes());
        main[8..12].copy_from_slice(&tli.to_le_bytes());
        main[12..16].copy_from_slice(&prev_tli.to_le_bytes());
        main[16] = 1;
        main[64..72].copy_from_slice(&time.to_le_bytes());
        let info = if shutdown {
            XLOG_CHECKPOINT_SHUTDOWN
        } else {
            XLOG_CHECKPOINT_ONLINE
        };
        self.main_data_record(RM_XLOG_ID, info, 0, &main)
    }

    pub fn end_of_recovery(&mut self, time: i64, tli: u32, prev_tli: u32) -> Lsn {
        let mut main = time.to_le_bytes().to_vec();
        main.extend_from_slice(&tli.to_le_bytes());
        main.extend_from_slice(&prev_tli.to_le_bytes());
        self.main_data_record(RM_XLOG_ID, XLOG_END_OF_RECOVERY, 0, &main)
    }

    /// Simulates a crash that lost the tail of a record: writes only the first `keep` bytes of
    /// a `tot_len`-byte record (which must cross into the next page), then, as recovery does,
    /// starts the next page with XLP_FIRST_IS_OVERWRITE_CONTRECORD and an
    /// XLOG_OVERWRITE_CONTRECORD record naming the lost one. Returns the lost record's LSN.
    pub fn lost_contrecord(&mut self, tot_len: usize, time: i64) -> Lsn {
        if self.pos % BLCKSZ == 0 {
            self.page_header(0);
        }
        let lsn = self.pos;
        let on_page = (BLCKSZ - self.pos % BLCKSZ) as usize;
        assert!(tot_len > on_page, "the record must cross a page boundary");
        let mut rec = Vec::new();
        RecordHeader {
            tot_len: tot_len as u32,
            xid: 1,
            prev: Lsn(self.prev),
            info: 0,
            rmid: RM_HEAP_ID,
            crc: 0xDEAD_BEEF,
        }
        .encode(&mut rec);
        rec.resize(on_page, 0x5A);
        self.out.extend_from_slice(&rec);
        self.pos += on_page as u64;
        self.next_page_flags = XLP_FIRST_IS_OVERWRITE_CONTRECORD;
        let mut main = lsn.to_le_bytes().to_vec();
        main.extend_from_slice(&time.to_le_bytes());
        // xl_prev of the overwrite record is the last record before the lost one.
        self.main_data_record(RM_XLOG_ID, XLOG_OVERWRITE_CONTRECORD, 0, &main);
        Lsn(lsn)
    }

    /// Zeros up to the next page boundary (what follows the last record in a WAL buffer).
    pub fn zero_to_page_end(&mut self) {
        let end = self.pos.next_multiple_of(BLCKSZ);
        self.out
            .resize(self.out.len() + (end - self.pos) as usize, 0);
        self.pos = end;
    }

    fn page_header(&mut self, rem_len: u32) {
        debug_assert_eq!(self.pos % BLCKSZ, 0);
        let long = self.pos % self.seg_size == 0;
        let mut info = if rem_len > 0 {
            XLP_FIRST_IS_CONTRECORD
        } else {
            0
        };
        if long {
            info |= XLP_LONG_HEADER;
        }
        info |= std::mem::take(&mut self.next_page_flags);
        let h = PageHeader {
            magic: self.magic,
            info,
            tli: self.tli,
            pageaddr: Lsn(self.pos),
            rem_len,
            sysid: self.sysid,
            seg_size: self.seg_size as u32,
            blcksz: XLOG_BLCKSZ as u32,
        };
        let before = self.out.len();
        h.encode(&mut self.out);
        self.pos += (self.out.len() - before) as u64;
    }

    /// Lays out `hdr` + `body` from `pos`, with a continuation page header at each page
    /// boundary, then pads to 8 bytes.
    fn put(&mut self, hdr: &[u8], body: &[u8]) {
        let total = hdr.len() + body.len();
        let mut written = 0usize;
        while written < total {
            if self.pos % BLCKSZ == 0 {
                self.page_header((total - written) as u32);
            }
            let n = ((BLCKSZ - self.pos % BLCKSZ) as usize).min(total - written);
            for (i, part) in [hdr, body].into_iter().enumerate() {
                let base = if i == 0 { 0 } else { hdr.len() };
                let lo = written.max(base);
                let hi = (written + n).min(base + part.len());
                if lo < hi {
                    self.out.extend_from_slice(&part[lo - base..hi - base]);
                }
            }
            self.pos += n as u64;
            written += n;
        }
        let pad = (maxalign(self.pos) - self.pos) as usize;
        self.out.resize(self.out.len() + pad, 0);
        self.pos += pad as u64;
    }
}

/// The record body of a record whose only fragment is `main`.
pub fn main_data_body(main: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(main.len() + 5);
    if main.len() < 256 {
        body.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, main.len() as u8]);
    } else {
        body.push(XLR_BLOCK_ID_DATA_LONG);
        body.extend_from_slice(&(main.len() as u32).to_le_bytes());
    }
    body.extend_from_slice(main);
    body
}
