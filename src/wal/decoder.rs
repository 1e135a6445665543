//! The streaming WAL decoder: WAL bytes in, in chunks of any size as they arrive in `'w'`
//! messages or file reads; validated records out. It checks what PostgreSQL's own reader
//! checks (xlogreader.c XLogReaderValidatePageHeader, ValidXLogRecordHeader, ValidXLogRecord):
//! page magic, flags, timeline, page address and the long header of each segment; record
//! length, resource manager, the xl_prev chain and the CRC-32C of every record.
//!
//! The hot path copies no WAL: a record that lies inside one page of the fed chunk is checked
//! in place (a fast loop takes them three at a time, their CRCs computed side by side), and
//! one that crosses a page or chunk boundary has its CRC computed piece by piece as the bytes
//! go by. Only the few record kinds whose contents walferry reads (checkpoints, restore
//! points, commits, ...) are reassembled when split, into a buffer the decoder reuses.
//!
//! Records come out of [`WalDecoder::feed`] (an iterator) or [`WalDecoder::feed_with`] (a
//! callback, which spares moving each record through the iterator: the faster of the two).
//!
//! Three outcomes are kept apart: "need more bytes" (the chunk is used up with a record still
//! incomplete), "end of the valid WAL" (a zero record length or an all-zero page where a
//! record or page should start, as in a zero-padded `.partial` file:
//! [`WalDecoder::end_of_wal`]), and "invalid" (a [`WalError`], after which the decoder stays
//! failed).

use super::crc;
use super::error::WalError;
use super::page::{
    header_len, is_valid_seg_size, le_u16, le_u32, le_u64, PageHeader, WalVersion,
    LONG_PAGE_HEADER, SHORT_PAGE_HEADER, XLOG_BLCKSZ, XLP_ALL_FLAGS, XLP_FIRST_IS_CONTRECORD,
    XLP_FIRST_IS_OVERWRITE_CONTRECORD,
};
use super::record::{
    decode_kind, is_switch, maxalign, rmgr_id_is_valid, wants_main_data, Record, RecordHeader,
    RecordKind, MAX_RECORD_LEN, RECORD_CRC_OFFSET, RECORD_HEADER, RM_XACT_ID, RM_XLOG_ID,
    XLOG_OVERWRITE_CONTRECORD, XLR_INFO_MASK,
};
use super::{Lsn, SegNo, SegmentName, TimeLineId};
use std::collections::VecDeque;

const BLCKSZ: u64 = XLOG_BLCKSZ as u64;
/// Records the fast loop checks per call: enough to amortise a call, few enough that the
/// batch stays in L1.
const BATCH: usize = 32;
/// Reassembly buffer capacity kept after a record: larger ones are let go.
const KEEP_BUF_MAX: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the first page header: whether it continues a record decides what follows.
    Start,
    /// Between records: the next byte (after alignment padding) starts a record.
    Between,
    /// Inside the record in `WalDecoder::rec`.
    InRecord,
    /// Skipping the tail of a record that began before the start point, `rem` bytes left
    /// (as xlogreader.c XLogFindNextRecord).
    Skip { rem: u32 },
    /// After an XLOG switch: zeros up to the segment end at `until`.
    SwitchPadding { until: u64 },
    /// The valid WAL ended (see `end_of_wal`); later bytes are counted, not read.
    Ended,
    /// A `WalError` was returned; nothing more is decoded.
    Failed,
}

/// A record being read in pieces.
struct Partial {
    lsn: u64,
    hdr: [u8; RECORD_HEADER],
    /// Bytes of the record seen so far, header included.
    got: u32,
    /// Valid once `got >= 4`.
    tot_len: u32,
    /// CRC-32C register (complemented) over the payload bytes seen so far.
    crc: u32,
    /// Collect the record in `WalDecoder::buf` because its main data is read.
    keep: bool,
}

/// A streaming, validating WAL decoder for one timeline. See the module documentation.
///
/// Positions, in stream order: `valid_end <= fed_end`. Every byte before `valid_end` belongs
/// to a complete record that passed every check (or to the padding after an XLOG switch);
/// bytes between the two are held by a record not yet complete.
pub struct WalDecoder {
    seg_size: u64,
    tli: TimeLineId,
    /// Expected, or learned from the first long page header.
    sysid: Option<u64>,
    /// Fixed by the first page's magic.
    version: Option<WalVersion>,
    start: u64,
    /// LSN of the next byte `feed` will consume.
    fed: u64,
    /// End (xlogreader's EndRecPtr) of the last complete valid record.
    valid_end: u64,
    /// Start of the last complete record: what the next record's xl_prev must be.
    prev: Option<u64>,
    /// Timeline of the last page header (pages may not go back in timeline).
    latest_page_tli: u32,
    state: State,
    /// Header of the page at `fed - page_have`, while it is being collected.
    page_hdr: [u8; LONG_PAGE_HEADER],
    page_have: usize,
    rec: Partial,
    /// Reassembly buffer of `keep` records, reused.
    buf: Vec<u8>,
    /// A record abandoned at an XLP_FIRST_IS_OVERWRITE_CONTRECORD page, until the
    /// OVERWRITE_CONTRECORD record that names it.
    overwritten: Option<u64>,
    end_of_wal: Option<Lsn>,
    error: Option<WalError>,
    /// The CPU has SSE 4.2 and PCLMULQDQ: the CRC kernels run inline.
    hw_crc: bool,
    /// Records checked by the fast loop, not yet returned by the iterator (reused). Records
    /// are moved out of it, not cloned: a clone would branch on the kind of every record.
    batch: VecDeque<Record>,
}

impl WalDecoder {
    /// A decoder for WAL of timeline `tli` starting at `start`, a page boundary (normally a
    /// segment start). When the first page begins with the tail of an earlier record, that
    /// tail is skipped and decoding begins with the first record that starts at or after
    /// `start`. Without `expected_sysid`, the first long page header fixes the system id.
    pub fn new(
        start: Lsn,
        tli: TimeLineId,
        seg_size: u64,
        expected_sysid: Option<u64>,
    ) -> Result<WalDecoder, WalError> {
        if !is_valid_seg_size(seg_size) {
            return Err(WalError::InvalidStart {
                lsn: start,
                why: format!(
                    "invalid WAL segment size {seg_size}: must be a power of two from 1 MiB to 1 GiB"
                ),
            });
        }
        if start.0 % BLCKSZ != 0 {
            return Err(WalError::InvalidStart {
                lsn: start,
                why: "not at a WAL page boundary (a multiple of 8192)".into(),
            });
        }
        Ok(WalDecoder {
            seg_size,
            tli,
            sysid: expected_sysid,
            version: None,
            start: start.0,
            fed: start.0,
            valid_end: start.0,
            prev: None,
            latest_page_tli: 0,
            state: State::Start,
            page_hdr: [0; LONG_PAGE_HEADER],
            page_have: 0,
            rec: Partial {
                lsn: 0,
                hdr: [0; RECORD_HEADER],
                got: 0,
                tot_len: 0,
                crc: !0,
                keep: false,
            },
            // Like xlogreader.c's readRecordBuf, sized for ordinary records up front.
            buf: Vec::with_capacity(2 * XLOG_BLCKSZ),
            overwritten: None,
            end_of_wal: None,
            error: None,
            hw_crc: crc::hw_available(),
            // The fast loop finishes its group of three after the batch says full.
            batch: VecDeque::with_capacity(BATCH + 2),
        })
    }

    /// Declares the start of the record before the first one to be decoded, so that the
    /// first record's xl_prev is checked exactly (without it, it need only point backwards,
    /// as xlogreader.c does after a random-access start).
    pub fn set_prev_record(&mut self, prev: Lsn) {
        if self.prev.is_none() && self.state == State::Start {
            self.prev = Some(prev.0);
        }
    }

    /// Decodes `data`, the WAL that follows everything fed so far (starting at
    /// [`WalDecoder::fed_end`]). The iterator yields each record completed by these bytes,
    /// or one error; it ends when the bytes are used up. Dropping it early still decodes
    /// (and validates) the rest of `data`, without returning the records.
    pub fn feed<'a>(&'a mut self, data: &'a [u8]) -> Feed<'a> {
        self.batch.clear();
        Feed {
            dec: self,
            data,
            off: 0,
            done: false,
        }
    }

    /// Like [`WalDecoder::feed`], handing each record to `f` by reference instead: the
    /// fastest way through a chunk (no record is moved through an iterator). Stops at the
    /// first error, which it returns (and returns again on every later call).
    pub fn feed_with(&mut self, data: &[u8], mut f: impl FnMut(&Record)) -> Result<(), WalError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        self.batch.clear();
        let mut off = 0;
        loop {
            off = self.fast(data, off, &mut |r| {
                f(&r);
                true
            });
            match self.step(data, &mut off) {
                Ok(Some(r)) => f(&r),
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.state = State::Failed;
                    self.error = Some(e.clone());
                    return Err(e);
                }
            }
        }
    }

    /// The position after the last byte fed.
    pub fn fed_end(&self) -> Lsn {
        Lsn(self.fed)
    }

    /// The end of the last complete, valid record (the padding after an XLOG switch counts
    /// as it arrives): what a receiver may report as validated.
    pub fn valid_end(&self) -> Lsn {
        Lsn(self.valid_end.min(self.fed))
    }

    /// Start of the last complete valid record.
    pub fn last_record(&self) -> Option<Lsn> {
        self.prev.map(Lsn)
    }

    /// Where the valid WAL ended, once the stream showed it: a zero record length at a record
    /// start, or an all-zero page header. For a record cut off by zeros this is the record's
    /// start. `None` while the WAL goes on.
    pub fn end_of_wal(&self) -> Option<Lsn> {
        self.end_of_wal
    }

    /// The error that stopped the decoder, if any.
    pub fn error(&self) -> Option<&WalError> {
        self.error.as_ref()
    }

    /// The database system identifier: expected, or read from the first long page header.
    pub fn system_id(&self) -> Option<u64> {
        self.sysid
    }

    /// The WAL format, known from the first page header.
    pub fn version(&self) -> Option<WalVersion> {
        self.version
    }

    pub fn timeline(&self) -> TimeLineId {
        self.tli
    }

    pub fn segment_size(&self) -> u64 {
        self.seg_size
    }

    pub fn start(&self) -> Lsn {
        Lsn(self.start)
    }

    /// The fast loop, for the common case: records that lie whole (with their alignment
    /// padding) inside one page of the chunk, following a record already checked. It checks
    /// them in place, three at a time, and hands them to `sink` until it returns false (then
    /// at the end of that group of three). It stops,
    /// leaving the decoder exactly after the last record appended, at anything else: a page
    /// boundary, a record crossing it or the chunk end, an XLOG switch or overwrite-contrecord
    /// record, and any record that fails a check; [`WalDecoder::step`] takes over from there
    /// (and reports the error, if it is one). Returns the new offset in `data`.
    #[inline(always)]
    fn fast_loop<const HW: bool, S: FnMut(Record) -> bool>(
        &mut self,
        data: &[u8],
        mut off: usize,
        sink: &mut S,
    ) -> usize {
        let Some(mut prev) = self.prev else {
            return off;
        };
        if self.state != State::Between {
            return off;
        }
        let mut fed = self.fed;
        let start = fed;
        let mut more = true;
        'chunk: while more {
            if fed & 7 != 0 || fed % BLCKSZ == 0 || off >= data.len() {
                break;
            }
            let rest = &data[off..];
            // The rest of this page, as far as the chunk has it.
            let page = &rest[..page_left(fed).min(rest.len())];
            // Up to three records that lie whole in it: their offsets, fixed-size headers
            // and payloads, each sliced once here so that nothing below is bounds-checked.
            let mut at = [0usize; 3];
            let mut hdr = [&[0u8; RECORD_HEADER]; 3];
            let mut body: [&[u8]; 3] = [&[]; 3];
            let mut n = 0;
            let mut pos = 0;
            while n < 3 {
                let Some(h) = page
                    .get(pos..)
                    .and_then(|r| r.first_chunk::<RECORD_HEADER>())
                else {
                    break;
                };
                let t = le_u32(h, 0) as usize;
                let (info, rmid) = (h[16], h[17]);
                let span = maxalign(t as u64) as usize;
                if t < RECORD_HEADER
                    || span > page.len() - pos
                    || !rmgr_id_is_valid(rmid)
                    || (rmid <= RM_XACT_ID && !fast_kind(rmid, info))
                {
                    break;
                }
                at[n] = pos;
                hdr[n] = h;
                body[n] = &page[pos + RECORD_HEADER..pos + t];
                n += 1;
                pos += span;
            }
            let crcs: [u32; 3] = match n {
                0 => break,
                1 => [fast_crc1::<HW>(body[0], hdr[0]), 0, 0],
                2 => {
                    let [a, b] = fast_crc2::<HW>([body[0], body[1]], [hdr[0], hdr[1]]);
                    [a, b, 0]
                }
                _ => fast_crc3::<HW>(body, hdr),
            };
            let group = at.iter().zip(&hdr).zip(&body).zip(&crcs).take(n);
            for (((&at, &h), body), &crc) in group {
                let lsn = fed + at as u64;
                let (tot_len, rmid, info) = (le_u32(h, 0), h[17], h[16]);
                let kind = if le_u64(h, 8) != prev || le_u32(h, 20) != crc {
                    None
                } else if rmid <= RM_XACT_ID {
                    let rec = &page[at..at + RECORD_HEADER + body.len()];
                    decode_kind(&RecordHeader::parse(h), rec).ok()
                } else {
                    Some(RecordKind::Other)
                };
                let Some(kind) = kind else {
                    fed = lsn;
                    off += at;
                    break 'chunk;
                };
                more &= sink(Record {
                    lsn: Lsn(lsn),
                    end: Lsn(lsn + maxalign(u64::from(tot_len))),
                    prev: Lsn(prev),
                    tot_len,
                    xid: le_u32(h, 4),
                    rmid,
                    info,
                    kind,
                });
                prev = lsn;
            }
            fed += pos as u64;
            off += pos;
        }
        if fed != start {
            self.fed = fed;
            self.valid_end = fed;
            self.prev = Some(prev);
        }
        off
    }

    /// [`WalDecoder::fast_loop`] with the CRC kernels compiled in.
    ///
    /// # Safety
    /// The CPU must support SSE 4.2 and PCLMULQDQ.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "sse4.2,pclmulqdq")]
    unsafe fn fast_loop_hw<S: FnMut(Record) -> bool>(
        &mut self,
        data: &[u8],
        off: usize,
        sink: &mut S,
    ) -> usize {
        self.fast_loop::<true, S>(data, off, sink)
    }

    /// Runs the fast loop from `off`, handing each record to `sink` until it returns false;
    /// returns the new offset.
    #[inline]
    fn fast<S: FnMut(Record) -> bool>(&mut self, data: &[u8], off: usize, sink: &mut S) -> usize {
        #[cfg(target_arch = "x86_64")]
        if self.hw_crc {
            // SAFETY: `hw_crc` says the CPU has the kernels' features (crc::hw_available).
            return unsafe { self.fast_loop_hw(data, off, sink) };
        }
        self.fast_loop::<false, S>(data, off, sink)
    }

    /// The CRC of a record (outside the fast loop).
    #[inline]
    fn record_crc(&self, payload: &[u8], header: &[u8; RECORD_HEADER]) -> u32 {
        #[cfg(target_arch = "x86_64")]
        if self.hw_crc {
            // SAFETY: `hw_crc` says the CPU has the kernels' features (crc::hw_available).
            return unsafe { record_crc_hw(payload, header) };
        }
        crc::record_portable(payload, header)
    }

    /// Continues the CRC register `reg` of a record read in pieces over `p`.
    #[inline]
    fn crc_append(&self, reg: u32, p: &[u8]) -> u32 {
        #[cfg(target_arch = "x86_64")]
        if self.hw_crc {
            // SAFETY: `hw_crc` says the CPU has the kernels' features (crc::hw_available).
            return unsafe { crc_append_hw(reg, p) };
        }
        crc::append_portable(reg, p)
    }

    /// Decodes from `data[*off..]` until a record is complete, an error, or the bytes run out.
    #[inline]
    fn step(&mut self, data: &[u8], off: &mut usize) -> Result<Option<Record>, WalError> {
        while *off < data.len() {
            match self.state {
                State::Between if self.page_have == 0 && self.fed % BLCKSZ != 0 => {
                    if let Some(r) = self.between(data, off)? {
                        return Ok(Some(r));
                    }
                    continue;
                }
                State::Ended => {
                    self.fed += (data.len() - *off) as u64;
                    *off = data.len();
                    return Ok(None);
                }
                State::Failed => return Ok(None),
                State::SwitchPadding { until } => {
                    let n = ((until - self.fed) as usize).min(data.len() - *off);
                    self.fed += n as u64;
                    *off += n;
                    if self.fed == until {
                        self.state = State::Between;
                    }
                    continue;
                }
                _ => {}
            }
            if self.page_have > 0 || self.fed % BLCKSZ == 0 {
                self.page_header(data, off)?;
                continue;
            }
            match self.state {
                State::InRecord => {
                    if let Some(r) = self.in_record(data, off)? {
                        return Ok(Some(r));
                    }
                }
                State::Skip { rem } => {
                    let n = (rem as usize)
                        .min(page_left(self.fed))
                        .min(data.len() - *off);
                    self.fed += n as u64;
                    *off += n;
                    let rem = rem - n as u32;
                    self.state = if rem == 0 {
                        State::Between
                    } else {
                        State::Skip { rem }
                    };
                }
                // Between at a page start is handled above; Start only at a page start.
                State::Between | State::Start => {
                    return Err(internal(self.fed, "record state at a page header"));
                }
                State::SwitchPadding { .. } | State::Ended | State::Failed => {}
            }
        }
        Ok(None)
    }

    /// Between records, inside a page past its header (the general path). Checks a record
    /// that lies whole in this page and chunk in place; otherwise starts collecting it.
    #[inline(always)]
    fn between(&mut self, data: &[u8], off: &mut usize) -> Result<Option<Record>, WalError> {
        let misalign = (self.fed & 7) as usize;
        if misalign != 0 {
            // Alignment padding after the last record (never crosses a page end).
            let n = (8 - misalign).min(data.len() - *off);
            self.fed += n as u64;
            *off += n;
            return Ok(None);
        }
        let rest = &data[*off..];
        let avail = page_left(self.fed).min(rest.len());
        if avail >= RECORD_HEADER {
            let tot_len = le_u32(rest, 0) as usize;
            if tot_len >= RECORD_HEADER && tot_len <= avail {
                let rec = &rest[..tot_len];
                let Some((hdr, payload)) = rec.split_first_chunk() else {
                    return Err(internal(self.fed, "record shorter than its header"));
                };
                let h = RecordHeader::parse(hdr);
                let lsn = self.fed;
                self.check_header(lsn, &h)?;
                let crc = self.record_crc(payload, hdr);
                if crc != h.crc {
                    return Err(checksum_error(lsn, h.crc, crc));
                }
                self.fed += tot_len as u64;
                *off += tot_len;
                let r = self.complete(lsn, &h, rec)?;
                self.skip_padding(data, off);
                return Ok(Some(r));
            }
        }
        self.rec.lsn = self.fed;
        self.rec.got = 0;
        self.rec.tot_len = 0;
        self.rec.crc = !0;
        self.rec.keep = false;
        self.state = State::InRecord;
        Ok(None)
    }

    /// Collects the next piece of a record that crosses a page or chunk boundary.
    fn in_record(&mut self, data: &[u8], off: &mut usize) -> Result<Option<Record>, WalError> {
        let rest = &data[*off..];
        let avail = page_left(self.fed).min(rest.len());
        let mut piece = &rest[..avail];
        let mut used = 0usize;
        let lsn = self.rec.lsn;
        if (self.rec.got as usize) < RECORD_HEADER {
            let got = self.rec.got as usize;
            let n = (RECORD_HEADER - got).min(piece.len());
            self.rec.hdr[got..got + n].copy_from_slice(&piece[..n]);
            self.rec.got += n as u32;
            piece = &piece[n..];
            used += n;
            if got < 4 && self.rec.got >= 4 {
                // xl_tot_len is always on the record's first page (records are 8-aligned).
                let tot_len = le_u32(&self.rec.hdr, 0);
                if tot_len == 0 {
                    self.fed += used as u64;
                    *off += used;
                    self.end(Lsn(lsn));
                    return Ok(None);
                }
                if (tot_len as usize) < RECORD_HEADER {
                    return Err(WalError::InvalidRecordLength {
                        lsn: Lsn(lsn),
                        len: tot_len,
                    });
                }
                if tot_len > MAX_RECORD_LEN {
                    return Err(WalError::RecordTooLong {
                        lsn: Lsn(lsn),
                        len: tot_len,
                    });
                }
                self.rec.tot_len = tot_len;
            }
            if self.rec.got as usize == RECORD_HEADER {
                let h = RecordHeader::parse(&self.rec.hdr);
                self.check_header(lsn, &h)?;
                self.rec.keep = wants_main_data(h.rmid, h.info);
                if self.rec.keep {
                    self.buf.clear();
                    self.buf.extend_from_slice(&self.rec.hdr);
                }
            }
        }
        if self.rec.got as usize >= RECORD_HEADER {
            let n = ((self.rec.tot_len - self.rec.got) as usize).min(piece.len());
            let p = &piece[..n];
            self.rec.crc = self.crc_append(self.rec.crc, p);
            if self.rec.keep {
                self.buf.extend_from_slice(p);
            }
            self.rec.got += n as u32;
            used += n;
        }
        self.fed += used as u64;
        *off += used;
        if self.rec.got as usize >= RECORD_HEADER && self.rec.got == self.rec.tot_len {
            let h = RecordHeader::parse(&self.rec.hdr);
            let crc = !self.crc_append(self.rec.crc, &self.rec.hdr[..RECORD_CRC_OFFSET]);
            if crc != h.crc {
                return Err(checksum_error(lsn, h.crc, crc));
            }
            let r = if self.rec.keep {
                let mut buf = std::mem::take(&mut self.buf);
                let r = self.complete(lsn, &h, &buf);
                if buf.capacity() > KEEP_BUF_MAX {
                    // A huge commit record passed: do not hold its size for good.
                    buf = Vec::new();
                }
                self.buf = buf;
                r?
            } else {
                let hdr = self.rec.hdr;
                self.complete(lsn, &h, &hdr)?
            };
            self.skip_padding(data, off);
            return Ok(Some(r));
        }
        Ok(None)
    }

    /// Bookkeeping for a record that passed every check and ends at `self.fed`. `whole` is
    /// the whole record when its main data is wanted (otherwise it is not looked at).
    #[inline(always)]
    fn complete(&mut self, lsn: u64, h: &RecordHeader, whole: &[u8]) -> Result<Record, WalError> {
        let mut end = maxalign(self.fed);
        let mut kind = RecordKind::Other;
        if h.rmid <= 1 {
            if is_switch(h.rmid, h.info) {
                // As XLogDecodeNextRecord: pretend the switch extends to the end of segment.
                kind = RecordKind::Switch;
                end = end.next_multiple_of(self.seg_size);
            } else if wants_main_data(h.rmid, h.info) {
                kind = decode_kind(h, whole).map_err(|what| WalError::InvalidRecordData {
                    lsn: Lsn(lsn),
                    what,
                })?;
                if let RecordKind::OverwriteContrecord { overwritten, .. } = kind {
                    // As xlogrecovery.c VerifyOverwriteContrecord.
                    if let Some(actual) = self.overwritten.take() {
                        if overwritten.0 != actual {
                            return Err(WalError::OverwriteMismatch {
                                lsn: Lsn(lsn),
                                named: overwritten,
                                actual: Lsn(actual),
                            });
                        }
                    }
                }
            }
        }
        self.state = if kind == RecordKind::Switch && self.fed < end {
            State::SwitchPadding { until: end }
        } else {
            State::Between
        };
        self.valid_end = end;
        self.prev = Some(lsn);
        Ok(Record {
            lsn: Lsn(lsn),
            end: Lsn(end),
            prev: h.prev,
            tot_len: h.tot_len,
            xid: h.xid,
            rmid: h.rmid,
            info: h.info,
            kind,
        })
    }

    /// Consumes the alignment padding after a record, as far as this chunk has it, so the
    /// next record can take the fast path.
    #[inline(always)]
    fn skip_padding(&mut self, data: &[u8], off: &mut usize) {
        if self.state == State::Between {
            let n = ((maxalign(self.fed) - self.fed) as usize).min(data.len() - *off);
            self.fed += n as u64;
            *off += n;
        }
    }

    /// ValidXLogRecordHeader, minus the length check done when the length was read.
    #[inline(always)]
    fn check_header(&self, lsn: u64, h: &RecordHeader) -> Result<(), WalError> {
        if !rmgr_id_is_valid(h.rmid) {
            return Err(WalError::InvalidRmgr {
                lsn: Lsn(lsn),
                rmid: h.rmid,
            });
        }
        let ok = match self.prev {
            Some(prev) => h.prev.0 == prev,
            // Random access: the prev-link can only be checked to point backwards.
            None => h.prev.0 < lsn,
        };
        if !ok {
            return Err(WalError::IncorrectPrevLink {
                lsn: Lsn(lsn),
                prev: h.prev,
                expected: self.prev.map(Lsn),
            });
        }
        Ok(())
    }

    /// Collects page header bytes at a page start; validates the header once complete and
    /// moves the record state past it.
    fn page_header(&mut self, data: &[u8], off: &mut usize) -> Result<(), WalError> {
        let page = self.fed - self.page_have as u64;
        loop {
            let want = if self.page_have < SHORT_PAGE_HEADER {
                SHORT_PAGE_HEADER
            } else {
                header_len(le_u16(&self.page_hdr, 2))
            };
            if self.page_have < want {
                let n = (want - self.page_have).min(data.len() - *off);
                self.page_hdr[self.page_have..self.page_have + n]
                    .copy_from_slice(&data[*off..*off + n]);
                self.page_have += n;
                self.fed += n as u64;
                *off += n;
                if self.page_have < want {
                    return Ok(());
                }
            }
            if self.page_have == SHORT_PAGE_HEADER {
                if self.page_hdr[..SHORT_PAGE_HEADER].iter().all(|&b| b == 0) {
                    // A zeroed page where WAL should go on: the end of what was written.
                    self.page_have = 0;
                    let at = if self.state == State::InRecord {
                        self.rec.lsn
                    } else {
                        page
                    };
                    self.end(Lsn(at));
                    return Ok(());
                }
                // Report a bad magic or flags before waiting for a long header's rest.
                self.check_magic_and_info(page)?;
                if header_len(le_u16(&self.page_hdr, 2)) > SHORT_PAGE_HEADER {
                    continue;
                }
            }
            break;
        }
        let len = self.page_have;
        self.page_have = 0;
        let h = match PageHeader::parse(&self.page_hdr[..len]) {
            Some(h) => h,
            None => return Err(internal(page, "incomplete page header")),
        };
        self.validate_page(page, &h)?;
        self.after_page_header(page, &h)
    }

    fn segment_of(&self, page: u64) -> String {
        SegmentName::new(self.tli, SegNo(page / self.seg_size)).file_name(self.seg_size)
    }

    fn check_magic_and_info(&mut self, page: u64) -> Result<(), WalError> {
        let magic = le_u16(&self.page_hdr, 0);
        let info = le_u16(&self.page_hdr, 2);
        let offset = (page % self.seg_size) as u32;
        match self.version {
            Some(v) if v.magic() == magic => {}
            Some(v) => {
                return Err(if WalVersion::from_magic(magic).is_some() {
                    WalError::MagicChanged {
                        lsn: Lsn(page),
                        magic,
                        first: v.magic(),
                        segment: self.segment_of(page),
                        offset,
                    }
                } else {
                    WalError::InvalidMagic {
                        lsn: Lsn(page),
                        magic,
                        segment: self.segment_of(page),
                        offset,
                    }
                });
            }
            None => match WalVersion::from_magic(magic) {
                Some(v) => self.version = Some(v),
                None => {
                    return Err(WalError::InvalidMagic {
                        lsn: Lsn(page),
                        magic,
                        segment: self.segment_of(page),
                        offset,
                    })
                }
            },
        }
        if info & !XLP_ALL_FLAGS != 0 {
            return Err(WalError::InvalidInfoBits {
                lsn: Lsn(page),
                info,
                segment: self.segment_of(page),
                offset,
            });
        }
        Ok(())
    }

    /// XLogReaderValidatePageHeader (magic and info bits were checked already).
    fn validate_page(&mut self, page: u64, h: &PageHeader) -> Result<(), WalError> {
        let offset = (page % self.seg_size) as u32;
        if h.is_long() {
            match self.sysid {
                Some(expected) if expected != h.sysid => {
                    return Err(WalError::SystemIdMismatch {
                        lsn: Lsn(page),
                        found: h.sysid,
                        expected,
                        segment: self.segment_of(page),
                    })
                }
                Some(_) => {}
                None => self.sysid = Some(h.sysid),
            }
            if u64::from(h.seg_size) != self.seg_size {
                return Err(WalError::SegmentSizeMismatch {
                    lsn: Lsn(page),
                    found: h.seg_size,
                    expected: self.seg_size,
                    segment: self.segment_of(page),
                });
            }
            if h.blcksz as usize != XLOG_BLCKSZ {
                return Err(WalError::BlockSizeMismatch {
                    lsn: Lsn(page),
                    found: h.blcksz,
                    segment: self.segment_of(page),
                });
            }
        } else if offset == 0 {
            return Err(WalError::MissingLongHeader {
                lsn: Lsn(page),
                info: h.info,
                segment: self.segment_of(page),
            });
        }
        if h.pageaddr.0 != page {
            return Err(WalError::UnexpectedPageAddr {
                lsn: Lsn(page),
                pageaddr: h.pageaddr,
                segment: self.segment_of(page),
                offset,
            });
        }
        // A segment on timeline N holds pages of N and of its ancestors (copied at the
        // switch), never of a later timeline, and timelines never go back along the WAL.
        if h.tli > self.tli.0 {
            return Err(WalError::FutureTimeline {
                lsn: Lsn(page),
                tli: h.tli,
                expected: self.tli.0,
                segment: self.segment_of(page),
                offset,
            });
        }
        if h.tli < self.latest_page_tli {
            return Err(WalError::OutOfSequenceTimeline {
                lsn: Lsn(page),
                tli: h.tli,
                after: self.latest_page_tli,
                segment: self.segment_of(page),
                offset,
            });
        }
        self.latest_page_tli = h.tli;
        Ok(())
    }

    /// What the page's continuation flags mean for the record state (the checks of
    /// XLogDecodeNextRecord's reassembly loop and of XLogFindNextRecord).
    fn after_page_header(&mut self, page: u64, h: &PageHeader) -> Result<(), WalError> {
        let cont = h.info & XLP_FIRST_IS_CONTRECORD != 0;
        let overwrite = h.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0;
        let invalid_rem = |lsn: u64, expected: u64| WalError::InvalidContrecordLength {
            lsn: Lsn(lsn),
            page: Lsn(page),
            rem_len: h.rem_len,
            expected,
        };
        match self.state {
            State::Start => {
                self.state = if overwrite || !cont {
                    State::Between
                } else if h.rem_len == 0 {
                    return Err(invalid_rem(page, 1));
                } else {
                    State::Skip { rem: h.rem_len }
                };
            }
            State::Between => {
                if cont {
                    return Err(WalError::UnexpectedContrecord {
                        lsn: Lsn(page + h.size() as u64),
                    });
                }
            }
            State::InRecord => {
                let left = self.rec.tot_len - self.rec.got;
                if overwrite {
                    // The rest of this record was lost and recovery wrote over it: forget it
                    // and read the page as new records (XLogDecodeNextRecord's restart).
                    self.overwritten = Some(self.rec.lsn);
                    self.state = State::Between;
                } else if !cont {
                    return Err(WalError::MissingContrecord {
                        lsn: Lsn(self.rec.lsn),
                        page: Lsn(page),
                    });
                } else if h.rem_len == 0 || h.rem_len != left {
                    return Err(invalid_rem(self.rec.lsn, u64::from(left)));
                }
            }
            State::Skip { rem } => {
                if overwrite {
                    self.state = State::Between;
                } else if !cont {
                    return Err(WalError::MissingContrecord {
                        lsn: Lsn(page),
                        page: Lsn(page),
                    });
                } else if h.rem_len != rem {
                    return Err(invalid_rem(page, u64::from(rem)));
                }
            }
            State::SwitchPadding { .. } | State::Ended | State::Failed => {}
        }
        Ok(())
    }

    fn end(&mut self, at: Lsn) {
        self.end_of_wal = Some(at);
        self.state = State::Ended;
    }
}

/// Bytes from `pos` to the end of its page.
#[inline(always)]
fn page_left(pos: u64) -> usize {
    (BLCKSZ - pos % BLCKSZ) as usize
}

/// Record kinds the fast loop may return: all but those that change the decoder's state.
#[inline(always)]
fn fast_kind(rmid: u8, info: u8) -> bool {
    !(is_switch(rmid, info)
        || (rmid == RM_XLOG_ID && info & !XLR_INFO_MASK == XLOG_OVERWRITE_CONTRECORD))
}

#[inline(always)]
fn fast_crc1<const HW: bool>(payload: &[u8], header: &[u8; RECORD_HEADER]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if HW {
        // SAFETY: HW is true only in `fast_loop_hw`, run where the kernels can run.
        return unsafe { crc::hw::record(payload, header) };
    }
    crc::record_portable(payload, header)
}

#[inline(always)]
fn fast_crc2<const HW: bool>(p: [&[u8]; 2], h: [&[u8; RECORD_HEADER]; 2]) -> [u32; 2] {
    #[cfg(target_arch = "x86_64")]
    if HW {
        // SAFETY: HW is true only in `fast_loop_hw`, run where the kernels can run.
        return unsafe { crc::hw::records2(p, h) };
    }
    [
        crc::record_portable(p[0], h[0]),
        crc::record_portable(p[1], h[1]),
    ]
}

#[inline(always)]
fn fast_crc3<const HW: bool>(p: [&[u8]; 3], h: [&[u8; RECORD_HEADER]; 3]) -> [u32; 3] {
    #[cfg(target_arch = "x86_64")]
    if HW {
        // SAFETY: HW is true only in `fast_loop_hw`, run where the kernels can run.
        return unsafe { crc::hw::records3(p, h) };
    }
    [
        crc::record_portable(p[0], h[0]),
        crc::record_portable(p[1], h[1]),
        crc::record_portable(p[2], h[2]),
    ]
}

/// # Safety
/// The CPU must support SSE 4.2 and PCLMULQDQ.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2,pclmulqdq")]
unsafe fn record_crc_hw(payload: &[u8], header: &[u8; RECORD_HEADER]) -> u32 {
    crc::hw::record(payload, header)
}

/// # Safety
/// The CPU must support SSE 4.2 and PCLMULQDQ.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2,pclmulqdq")]
unsafe fn crc_append_hw(reg: u32, p: &[u8]) -> u32 {
    crc::hw::append(reg, p)
}

#[cold]
#[inline(never)]
fn checksum_error(lsn: u64, stored: u32, computed: u32) -> WalError {
    WalError::Checksum {
        lsn: Lsn(lsn),
        stored,
        computed,
    }
}

#[cold]
fn internal(lsn: u64, what: &str) -> WalError {
    WalError::InvalidRecordData {
        lsn: Lsn(lsn),
        what: format!("internal decoder error: {what}"),
    }
}

/// The records completed by one chunk of WAL; see [`WalDecoder::feed`].
pub struct Feed<'a> {
    dec: &'a mut WalDecoder,
    data: &'a [u8],
    off: usize,
    done: bool,
}

impl Iterator for Feed<'_> {
    type Item = Result<Record, WalError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(r) = self.dec.batch.pop_front() {
            return Some(Ok(r));
        }
        self.refill()
    }
}

impl Feed<'_> {
    /// Runs the fast loop for a new batch; when it checks nothing, the general path.
    #[inline(never)]
    fn refill(&mut self) -> Option<Result<Record, WalError>> {
        if self.done {
            return None;
        }
        if self.dec.state == State::Failed {
            self.done = true;
            return self.dec.error.clone().map(Err);
        }
        let mut batch = std::mem::take(&mut self.dec.batch);
        batch.clear();
        self.off = self.dec.fast(self.data, self.off, &mut |r| {
            batch.push_back(r);
            batch.len() < BATCH
        });
        self.dec.batch = batch;
        if let Some(r) = self.dec.batch.pop_front() {
            return Some(Ok(r));
        }
        match self.dec.step(self.data, &mut self.off) {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                self.dec.state = State::Failed;
                self.dec.error = Some(e.clone());
                Some(Err(e))
            }
        }
    }
}

impl Drop for Feed<'_> {
    fn drop(&mut self) {
        // Keep the decoder's position in step with the bytes handed to it.
        while self.next().is_some() {}
    }
}

#[cfg(test)]
mod tests;
