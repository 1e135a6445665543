//! Decoding every planned segment: the WAL checks of the decoder, the zero checks of the
//! bytes it skips, and the catalogue of what the valid records hold. See the documentation
//! of [`crate::inspect`] for the rules.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

use super::catalog::Catalog;
use super::layout::{Plan, PlannedFile, TimelinePlan};
use super::{Problem, Progress, Report, CHUNK};
use crate::archive::SegmentReader;
use crate::wal::page::{
    le_u16, le_u32, XLOG_BLCKSZ, XLP_FIRST_IS_CONTRECORD, XLP_FIRST_IS_OVERWRITE_CONTRECORD,
};
use crate::wal::record::maxalign;
use crate::wal::{Compression, Lsn, Record, RecordKind, SegNo, WalDecoder, WalError};

const BLCKSZ: u64 = XLOG_BLCKSZ as u64;
/// SizeOfXLogShortPHD and SizeOfXLogLongPHD.
const SHORT_PHD: u64 = 24;
const LONG_PHD: u64 = 40;
/// Chunks read ahead of the decoder.
const READ_AHEAD: usize = 4;

/// Decodes the planned files. Reading and decompressing run on a second thread, a few
/// chunks ahead of the decoder, in the order the decoder takes the files.
pub(crate) fn run(
    dir: &Path,
    plan: Plan,
    find_xid: Option<u32>,
    progress: &mut dyn FnMut(&Progress<'_>),
) -> Report {
    let jobs: Vec<(PathBuf, Compression)> = plan
        .timelines
        .iter()
        .flat_map(|t| &t.files)
        .filter(|f| f.decode)
        .map(|f| (dir.join(&f.entry.name), f.entry.wal.compression))
        .collect();
    let (tx, rx) = mpsc::sync_channel(READ_AHEAD);
    let (free_tx, free_rx) = mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(move || read_ahead(jobs, tx, free_rx));
        decode_all(plan, ReadAhead { rx, free: free_tx }, find_xid, progress)
    })
}

fn decode_all(
    plan: Plan,
    ahead: ReadAhead,
    find_xid: Option<u32>,
    progress: &mut dyn FnMut(&Progress<'_>),
) -> Report {
    let files_total = plan.timelines.iter().map(|t| t.files.len()).sum();
    let stored_total = plan
        .timelines
        .iter()
        .flat_map(|t| &t.files)
        .map(|f| f.entry.len)
        .sum();
    let mut eng = Engine {
        ahead,
        seg_size: plan.seg_size,
        sysid: plan.sysid,
        problems: plan.problems,
        notes: Vec::new(),
        catalog: Catalog::finding(find_xid),
        segments: 0,
        records: 0,
        decoded: 0,
        whole: Vec::new(),
        files_done: 0,
        files_total,
        stored_done: 0,
        stored_total,
        progress,
    };
    for tl in &plan.timelines {
        eng.timeline(tl);
    }
    let Engine {
        mut problems,
        mut notes,
        catalog,
        segments,
        records,
        decoded,
        ..
    } = eng;
    problems.sort_by(|a, b| (a.file.as_deref(), a.lsn).cmp(&(b.file.as_deref(), b.lsn)));
    notes.sort_by(|a, b| (a.file.as_deref(), a.lsn).cmp(&(b.file.as_deref(), b.lsn)));
    let (timelines, restore_points, xid_commit) = catalog.finish();
    Report {
        seg_size: plan.seg_size,
        system_id: plan.sysid,
        segments,
        records,
        decoded_bytes: decoded,
        timelines,
        restore_points,
        problems,
        notes,
        xid_commit,
    }
}

struct Engine<'a> {
    ahead: ReadAhead,
    seg_size: u64,
    sysid: Option<u64>,
    problems: Vec<Problem>,
    notes: Vec<Problem>,
    catalog: Catalog,
    segments: usize,
    records: u64,
    decoded: u64,
    /// A `.partial` file's whole contents, for the check of what follows its end.
    whole: Vec<u8>,
    files_done: usize,
    files_total: usize,
    stored_done: u64,
    stored_total: u64,
    progress: &'a mut dyn FnMut(&Progress<'_>),
}

/// Consecutive segments of one timeline decoded by one decoder.
struct Run {
    dec: WalDecoder,
    start: Lsn,
    /// The segment the next file must be to continue this run.
    next: SegNo,
    /// The files decoded so far, to name the one an error's LSN lies in.
    files: Vec<(SegNo, String)>,
}

/// How a file left its run.
enum Outcome {
    /// The WAL goes on into the next segment.
    Continue,
    /// A problem stopped decoding; the next file starts a new run.
    Stopped,
    /// A `.partial` whose WAL ends at this position.
    PartialEnd(Lsn),
}

impl Engine<'_> {
    fn timeline(&mut self, tl: &TimelinePlan) {
        let mut run: Option<Run> = None;
        let mut after_partial: Option<(String, SegNo, Lsn)> = None;
        let mut past_end_reported = false;
        for pf in &tl.files {
            let segno = pf.entry.segno();
            let start = segno.start_lsn(self.seg_size);
            if let Some((name, pseg, end)) = after_partial.take() {
                if segno.0 == pseg.0 + 1 && end < start {
                    self.problems.push(Problem::new(
                        name,
                        Some(end),
                        format!(
                            "the WAL of this .partial segment ends at {end}, but the next \
                             segment {} is archived: the WAL from {end} to {start} is missing",
                            pf.entry.name
                        ),
                    ));
                }
            }
            if !pf.decode {
                self.close(run.take(), tl);
                self.file_done(pf);
                continue;
            }
            if run.as_ref().is_none_or(|r| r.next != segno) {
                self.close(run.take(), tl);
                match WalDecoder::new(start, tl.tli, self.seg_size, self.sysid) {
                    Ok(dec) => {
                        run = Some(Run {
                            dec,
                            start,
                            next: segno,
                            files: Vec::new(),
                        })
                    }
                    Err(e) => {
                        self.problems.push(Problem::new(
                            &pf.entry.name,
                            Some(start),
                            e.to_string(),
                        ));
                        self.ahead.skip_file();
                        self.file_done(pf);
                        continue;
                    }
                }
            }
            let r = run.as_mut().expect("set above");
            r.files.push((segno, pf.entry.name.clone()));
            let outcome = self.file(r, tl, pf, &mut past_end_reported);
            if pf.stranded {
                self.stranded(tl, pf, &outcome);
            }
            match outcome {
                Outcome::Continue => r.next = segno.next(),
                Outcome::Stopped => self.close(run.take(), tl),
                Outcome::PartialEnd(end) => {
                    if !pf.stranded {
                        after_partial = Some((pf.entry.name.clone(), segno, end));
                    }
                    self.close(run.take(), tl);
                }
            }
            self.file_done(pf);
        }
        self.close(run, tl);
    }

    /// A `.partial` with complete segments of its timeline after it: recovery cannot cross
    /// it, whatever it holds.
    fn stranded(&mut self, tl: &TimelinePlan, pf: &PlannedFile, outcome: &Outcome) {
        let seg_start = pf.entry.segno().start_lsn(self.seg_size);
        let next = pf.entry.segno().next().start_lsn(self.seg_size);
        let (lsn, what) = match outcome {
            Outcome::Continue => {
                let mut final_name = pf.entry.wal;
                final_name.partial = false;
                (
                    seg_start,
                    format!(
                        "it holds the whole segment and its WAL is valid: rename it to {}",
                        final_name.file_name(self.seg_size)
                    ),
                )
            }
            Outcome::PartialEnd(end) => (
                *end,
                format!("its WAL ends at {end}: the WAL from {end} to {next} is missing"),
            ),
            // The decoding problem is reported already.
            Outcome::Stopped => (seg_start, "its WAL is damaged (see above)".into()),
        };
        self.problems.push(Problem::new(
            &pf.entry.name,
            Some(lsn),
            format!(
                "segment is still .partial but later segments of timeline {} are complete: \
                 recovery never asks for .partial files, so it cannot get past this one; {what}",
                tl.tli
            ),
        ));
    }

    fn file_done(&mut self, pf: &PlannedFile) {
        self.files_done += 1;
        self.stored_done += pf.entry.len;
        (self.progress)(&Progress {
            file: &pf.entry.name,
            files_done: self.files_done,
            files_total: self.files_total,
            stored_done: self.stored_done,
            stored_total: self.stored_total,
            decoded: self.decoded,
        });
    }

    /// Credits the valid WAL a run read to the timelines it was written on.
    fn close(&mut self, run: Option<Run>, tl: &TimelinePlan) {
        let Some(run) = run else { return };
        let end = run.dec.valid_end();
        let mut lo = run.start;
        for e in &tl.ancestors {
            if lo < e.switchpoint && lo < end {
                let hi = end.min(e.switchpoint);
                self.catalog.span(e.tli, lo, hi);
                lo = hi;
            }
        }
        if lo < end {
            self.catalog.span(tl.tli, lo, end);
        }
    }

    /// Decodes one file as the continuation of `run`.
    fn file(
        &mut self,
        run: &mut Run,
        tl: &TimelinePlan,
        pf: &PlannedFile,
        past_end_reported: &mut bool,
    ) -> Outcome {
        let seg_size = self.seg_size;
        let name = pf.entry.name.as_str();
        let partial = pf.entry.wal.partial;
        let base = pf.entry.segno().start_lsn(seg_size).0;
        self.segments += 1;
        self.whole.clear();
        let mut off = 0u64;
        // The first problem in bytes the decoder skips (one per file is enough).
        let mut strict: Option<Problem> = None;
        // After an XLOG SWITCH: the zeros still to check, [from, to), and the record.
        let mut switch_zeros: Option<(u64, u64, Lsn)> = None;
        loop {
            let Some(got) = self.ahead.next() else {
                self.problems.push(Problem::new(
                    name,
                    Some(Lsn(base + off)),
                    "could not read the file: the reading thread stopped",
                ));
                return Outcome::Stopped;
            };
            if got.open_failed {
                let e = got.err.expect("an open failure carries its error");
                self.problems
                    .push(Problem::new(name, None, format!("could not open: {e}")));
                return Outcome::Stopped;
            }
            let mut n = got.len as u64;
            let read_err = got.err;
            let last = got.last;
            let mut stop = last;
            if off + n > seg_size {
                self.problems.push(Problem::new(
                    name,
                    Some(Lsn(base + seg_size)),
                    "file holds more than one segment of WAL",
                ));
                n = seg_size - off;
                stop = true;
            }
            let buf = got.buf;
            if n > 0 {
                let c0 = base + off;
                let c1 = c0 + n;
                let chunk = &buf[..n as usize];
                let catalog = &mut self.catalog;
                let records = &mut self.records;
                let problems = &mut self.problems;
                let Run { dec, files, .. } = &mut *run;
                let fed = dec.feed_with(chunk, |r: &Record| {
                    *records += 1;
                    match &r.kind {
                        RecordKind::Other => {}
                        RecordKind::Commit(_) | RecordKind::RestorePoint(_) => {
                            catalog.record(tl.timeline_at(r.lsn), r)
                        }
                        RecordKind::Switch => {
                            let from = maxalign(data_end(r.lsn.0, r.tot_len, seg_size));
                            switch_zeros = Some((from, r.end.0, r.lsn));
                        }
                        _ => {}
                    }
                    // Alignment padding, never across a page or chunk end (both 8-aligned).
                    let e = data_end(r.lsn.0, r.tot_len, seg_size);
                    let pe = maxalign(e);
                    if pe > e && e >= c0 && pe <= c1 && strict.is_none() {
                        let pad = &chunk[(e - c0) as usize..(pe - c0) as usize];
                        if let Some(i) = pad.iter().position(|&b| b != 0) {
                            strict = Some(Problem::new(
                                name,
                                Some(Lsn(e + i as u64)),
                                format!(
                                    "non-zero byte {:#04x} in the alignment padding after the \
                                     record at {}",
                                    pad[i], r.lsn
                                ),
                            ));
                        }
                    }
                    if let Some((end, child)) = tl.end {
                        if !*past_end_reported
                            && r.lsn >= end
                            && end.0 % seg_size != 0
                            && r.lsn.segno(seg_size) == end.segno(seg_size)
                        {
                            *past_end_reported = true;
                            let file = file_of(files, r.lsn, seg_size).unwrap_or(name);
                            problems.push(Problem::new(
                                file,
                                Some(r.lsn),
                                format!(
                                    "timeline {} has WAL past its end at {end}, where timeline \
                                     {child} branched off (per {}): a record at {}",
                                    tl.tli,
                                    crate::wal::history_file_name(child),
                                    r.lsn
                                ),
                            ));
                        }
                    }
                });
                if let Err(e) = fed {
                    let cut = pf.newest_partial && {
                        self.whole.extend_from_slice(chunk);
                        cut_short_by_zeros(&self.whole, base, e.lsn(), seg_size)
                    };
                    if cut {
                        // The WAL being received: where it stops being valid is its end.
                        let end = dec.valid_end();
                        self.notes.push(cut_short(name, end, &e.to_string()));
                        self.problems.extend(strict);
                        self.decoded += off + n;
                        self.ahead.recycle(buf);
                        if !last {
                            self.ahead.skip_file();
                        }
                        return Outcome::PartialEnd(end);
                    }
                    self.problems
                        .push(decode_problem(&e, files, name, seg_size));
                    self.problems.extend(strict);
                    self.decoded += off + n;
                    self.ahead.recycle(buf);
                    if !last {
                        self.ahead.skip_file();
                    }
                    return Outcome::Stopped;
                }
                if strict.is_none() {
                    let limit = dec.end_of_wal().map_or(u64::MAX, |l| l.0);
                    strict = check_pages(chunk, c0, limit, name);
                }
                if let Some((from, to, rec)) = switch_zeros {
                    let lo = from.max(c0);
                    let hi = to.min(c1);
                    if lo < hi && strict.is_none() {
                        let zeros = &chunk[(lo - c0) as usize..(hi - c0) as usize];
                        if let Some(i) = zeros.iter().position(|&b| b != 0) {
                            strict = Some(Problem::new(
                                name,
                                Some(Lsn(lo + i as u64)),
                                format!(
                                    "non-zero byte {:#04x} in the zeros after the XLOG SWITCH \
                                     record at {rec}",
                                    zeros[i]
                                ),
                            ));
                        }
                    }
                    switch_zeros = (to > c1).then_some((c1, to, rec));
                }
                if partial {
                    self.whole.extend_from_slice(chunk);
                }
                off += n;
            }
            self.ahead.recycle(buf);
            if let Some(e) = read_err {
                // A compressed .partial cut short by a crash ends early; that is its end.
                if !(partial && e.kind() == io::ErrorKind::UnexpectedEof) {
                    self.problems.push(Problem::new(
                        name,
                        Some(Lsn(base + off)),
                        format!("could not read the file: {e}"),
                    ));
                    self.decoded += off;
                    self.problems.extend(strict);
                    return Outcome::Stopped;
                }
            }
            if stop {
                if !last {
                    self.ahead.skip_file();
                }
                break;
            }
        }
        self.decoded += off;
        self.problems.extend(strict);
        let dec = &run.dec;
        if !partial {
            if off != seg_size {
                self.problems.push(Problem::new(
                    name,
                    Some(Lsn(base + off)),
                    format!("file holds {off} bytes of WAL, a complete segment {seg_size}"),
                ));
                return Outcome::Stopped;
            }
            if let Some(at) = dec.end_of_wal() {
                self.problems.push(Problem::new(
                    name,
                    Some(at),
                    format!(
                        "the WAL stops at {at} inside a complete segment (zeros where a record \
                         or page header should be)"
                    ),
                ));
                return Outcome::Stopped;
            }
            return Outcome::Continue;
        }
        match dec.end_of_wal() {
            Some(at) if pf.newest_partial => {
                if nonzero_after_end(&self.whole, base, at.0).is_some() {
                    let why = format!("the record at {at} is cut short by zeros");
                    self.notes.push(cut_short(name, dec.valid_end(), &why));
                }
                Outcome::PartialEnd(dec.valid_end())
            }
            Some(at) => {
                if let Some(bad) = nonzero_after_end(&self.whole, base, at.0) {
                    self.problems.push(Problem::new(
                        name,
                        Some(Lsn(bad)),
                        format!(
                            "non-zero byte at {} after the end of the WAL at {at}: a .partial \
                             segment holds only zeros after its last record",
                            Lsn(bad)
                        ),
                    ));
                }
                Outcome::PartialEnd(dec.valid_end())
            }
            // A .partial that holds the whole segment (not renamed yet) goes on like a
            // complete one.
            None if off == seg_size => {
                if !pf.stranded && !pf.newest_partial {
                    let mut final_name = pf.entry.wal;
                    final_name.partial = false;
                    self.notes.push(Problem::new(
                        name,
                        Some(Lsn(base)),
                        format!(
                            "holds the whole segment but is not renamed yet (the record crossing \
                             its end is not complete in the next file): walferry receive streams \
                             it again and renames it to {} when it resumes",
                            final_name.file_name(seg_size)
                        ),
                    ));
                }
                Outcome::Continue
            }
            None => Outcome::PartialEnd(dec.valid_end()),
        }
    }
}

/// Sector size: the unit a crash leaves written or not.
const SECTOR: usize = 512;

/// Whether the record that failed at `lsn` is cut short by zeros in the file's contents
/// `whole` (starting at `base`): a 512-byte sector that begins inside the record's bytes in
/// this file is all zeros. That is how a write cut by a crash looks in a preallocated or
/// zero-padded file (sectors not written read as zeros), while a changed byte is damage.
/// A record begun in an earlier file is judged by its continuation here (xlp_rem_len of the
/// first page).
pub(crate) fn cut_short_by_zeros(whole: &[u8], base: u64, lsn: Lsn, seg_size: u64) -> bool {
    let (from, to) = if lsn.0 >= base {
        let off = (lsn.0 - base) as usize;
        if off + 4 > whole.len() {
            return true;
        }
        let tot_len = le_u32(whole, off);
        (off, data_end(lsn.0, tot_len, seg_size) - base)
    } else {
        if whole.len() < LONG_PHD as usize {
            return true;
        }
        let rem_len = le_u32(whole, 16);
        let first = base + LONG_PHD;
        (LONG_PHD as usize, data_end(first, rem_len, seg_size) - base)
    };
    let to = (to as usize).min(whole.len());
    let mut sector = (from + 1).next_multiple_of(SECTOR);
    while sector < to {
        let end = (sector + SECTOR).min(whole.len());
        if whole[sector..end].iter().all(|&b| b == 0) {
            return true;
        }
        sector += SECTOR;
    }
    false
}

/// The note for the newest `.partial` of a timeline whose valid WAL stops at `end`.
fn cut_short(file: &str, end: Lsn, why: &str) -> Problem {
    Problem::new(
        file,
        Some(end),
        format!(
            "the valid WAL received so far ends here ({why}): a crash or stop in the middle \
             of a write; walferry receive streams this segment again from its start"
        ),
    )
}

/// A chunk of a file's uncompressed bytes.
struct Chunk {
    buf: Vec<u8>,
    len: usize,
    /// The read error after these bytes, if any.
    err: Option<io::Error>,
    /// The file could not be opened (`err` says why; nothing else follows for it).
    open_failed: bool,
    /// The file's last chunk.
    last: bool,
}

/// The decoder's end of the read-ahead: chunks of each file in turn, buffers handed back.
struct ReadAhead {
    rx: Receiver<Chunk>,
    free: Sender<Vec<u8>>,
}

impl ReadAhead {
    fn next(&mut self) -> Option<Chunk> {
        self.rx.recv().ok()
    }

    fn recycle(&self, buf: Vec<u8>) {
        // The reader may be done; then the buffer is simply dropped.
        let _ = self.free.send(buf);
    }

    /// Drops the rest of the current file (decoding stopped early).
    fn skip_file(&mut self) {
        while let Some(c) = self.next() {
            let last = c.last;
            self.recycle(c.buf);
            if last {
                break;
            }
        }
    }
}

/// The reading thread: the files in order, each as chunks ending with one marked `last`.
/// Stops when the decoder is gone.
fn read_ahead(jobs: Vec<(PathBuf, Compression)>, tx: SyncSender<Chunk>, free: Receiver<Vec<u8>>) {
    for (path, compression) in jobs {
        let mut reader = match SegmentReader::open(&path, compression) {
            Ok(r) => r,
            Err(e) => {
                let c = Chunk {
                    buf: Vec::new(),
                    len: 0,
                    err: Some(e),
                    open_failed: true,
                    last: true,
                };
                if tx.send(c).is_err() {
                    return;
                }
                continue;
            }
        };
        loop {
            let mut buf = free.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
            let (len, err) = crate::archive::read_keeping_error(&mut reader, &mut buf);
            let last = err.is_some() || len < CHUNK;
            let c = Chunk {
                buf,
                len,
                err,
                open_failed: false,
                last,
            };
            if tx.send(c).is_err() {
                return;
            }
            if last {
                break;
            }
        }
    }
}

/// The file of a run that holds `lsn`.
fn file_of(files: &[(SegNo, String)], lsn: Lsn, seg_size: u64) -> Option<&str> {
    let segno = lsn.segno(seg_size);
    files
        .iter()
        .rev()
        .find(|(s, _)| *s == segno)
        .map(|(_, n)| n.as_str())
}

/// A decoder error, under the file its LSN lies in (a record's CRC fails where the record
/// ends, which can be a later file than where it starts).
fn decode_problem(
    e: &WalError,
    files: &[(SegNo, String)],
    current: &str,
    seg_size: u64,
) -> Problem {
    let lsn = e.lsn();
    let file = file_of(files, lsn, seg_size).unwrap_or(current);
    let mut message = e.to_string();
    if file != current {
        message.push_str(&format!(" (found while reading {current})"));
    }
    Problem::new(file, Some(lsn), message)
}

/// Where the bytes of a record of `tot_len` bytes starting at `lsn` end: after the page
/// headers it spans (the end before alignment padding).
#[inline(always)]
pub(crate) fn data_end(lsn: u64, tot_len: u32, seg_size: u64) -> u64 {
    let tot = u64::from(tot_len);
    if lsn % BLCKSZ + tot <= BLCKSZ {
        return lsn + tot;
    }
    let mut pos = lsn;
    let mut left = tot;
    loop {
        let room = BLCKSZ - pos % BLCKSZ;
        if left <= room {
            return pos + left;
        }
        left -= room;
        pos += room;
        pos += if pos % seg_size == 0 {
            LONG_PHD
        } else {
            SHORT_PHD
        };
    }
}

/// The page header fields the decoder does not look at, on the pages of `chunk` (which
/// starts at `c0`, a page boundary) below `limit`: the 4 pad bytes after xlp_rem_len, and
/// xlp_rem_len itself on a page that does not continue a record. A server writes zeros there
/// (xlog.c AdvanceXLInsertBuffer zeroes each new page).
fn check_pages(chunk: &[u8], c0: u64, limit: u64, file: &str) -> Option<Problem> {
    let mut at = 0usize;
    while at + SHORT_PHD as usize <= chunk.len() && c0 + (at as u64) < limit {
        let h = &chunk[at..at + SHORT_PHD as usize];
        let page = Lsn(c0 + at as u64);
        if let Some(i) = h[20..24].iter().position(|&b| b != 0) {
            return Some(Problem::new(
                file,
                Some(Lsn(page.0 + 20 + i as u64)),
                format!("non-zero pad byte in the header of the page at {page}"),
            ));
        }
        let info = le_u16(h, 2);
        let rem_len = le_u32(h, 16);
        if rem_len != 0 && info & (XLP_FIRST_IS_CONTRECORD | XLP_FIRST_IS_OVERWRITE_CONTRECORD) == 0
        {
            return Some(Problem::new(
                file,
                Some(Lsn(page.0 + 16)),
                format!(
                    "the page at {page} does not continue a record but its header has \
                     xlp_rem_len {rem_len}"
                ),
            ));
        }
        at += XLOG_BLCKSZ;
    }
    None
}

/// The first non-zero byte (its LSN) after the end of the WAL at `end` in a `.partial`'s
/// contents `whole` (starting at `base`). The zeros begin at `end` when a record length of
/// zero ended the WAL, else (a record cut off by an all-zero page) at the first page whose
/// header is all zeros; the bytes of the cut-off record before it are not looked at.
fn nonzero_after_end(whole: &[u8], base: u64, end: u64) -> Option<u64> {
    let at = (end - base) as usize;
    if at >= whole.len() {
        return None;
    }
    let zero = |s: &[u8]| s.iter().all(|&b| b == 0);
    let from = if zero(&whole[at..(at + 4).min(whole.len())]) {
        at
    } else {
        let mut p = at.next_multiple_of(XLOG_BLCKSZ);
        while p < whole.len() && !zero(&whole[p..(p + SHORT_PHD as usize).min(whole.len())]) {
            p += XLOG_BLCKSZ;
        }
        p.min(whole.len())
    };
    whole[from..]
        .iter()
        .position(|&b| b != 0)
        .map(|i| base + (from + i) as u64)
}
