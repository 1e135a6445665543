//! Reading an archive by WAL position, for the relay (serving standbys that fell behind the
//! live stream) and for restore (`archive-get`): the bytes of timeline `tli` at `lsn`, from
//! whichever file holds that segment — complete or `.partial`, compressed or not — and, for a
//! timeline with a history, from an ancestor's segment below its switch point.
//!
//! Only validated WAL comes out. A complete segment was validated before it got its final
//! name, so it is served as it is. A `.partial` may still be growing (a receiver writes it)
//! or end in a record a crash cut short, so it is served only up to its valid end: the end
//! of the last complete record that passes [`WalDecoder`]'s checks, found by decoding the
//! file (from the previous segment on, when its first record began there) and remembered
//! until the file changes.
//!
//! A read never crosses a segment end (or the end of the valid WAL): callers loop, as
//! walsender.c XLogSendPhysical does page by page. The file last read stays open, so a
//! compressed segment read sequentially in chunks is decompressed once, not once per chunk.
//! One reader serves one sequential consumer; give each relay session its own.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{read_keeping_error, SegmentReader};
use crate::wal::page::{
    is_valid_seg_size, le_u16, LONG_PAGE_HEADER, SHORT_PAGE_HEADER, XLP_FIRST_IS_CONTRECORD,
};
use crate::wal::{
    history_file_name, parse_history, tli_of_point_in_history, Compression, HistoryEntry,
    HistoryError, Lsn, SegNo, SegmentName, TimeLineId, WalDecoder, WalFileName,
};

/// Errors of [`ArchiveReader`]. Each names the file or files involved.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("invalid WAL segment size {seg_size}: must be a power of two from 1 MiB to 1 GiB")]
    InvalidSegmentSize { seg_size: u64 },
    #[error(
        "WAL of timeline {tli} at {lsn} is not in the archive \"{}\": no segment file {} \
         (looked for each as is, .gz, .lz4, .zst and .partial)",
        dir.display(),
        looked_for.join(" or ")
    )]
    NotFound {
        dir: PathBuf,
        tli: TimeLineId,
        lsn: Lsn,
        /// The segment names tried, best first (without decorations).
        looked_for: Vec<String>,
    },
    #[error(
        "no valid WAL at {lsn} in \"{}\": its valid WAL ends at {valid_end} (the segment is \
         still being received, or a stop cut its last record short)",
        path.display()
    )]
    PastValidEnd {
        path: PathBuf,
        lsn: Lsn,
        valid_end: Lsn,
    },
    #[error(
        "\"{}\" holds {len} bytes of WAL, but a complete segment holds {seg_size}. \
         HINT: the file is damaged; run walferry verify on the archive",
        path.display()
    )]
    WrongLength {
        path: PathBuf,
        len: u64,
        seg_size: u64,
    },
    #[error("timeline {tli} has no history file \"{}\" in the archive", path.display())]
    NoHistory { tli: TimeLineId, path: PathBuf },
    #[error("invalid timeline history file \"{}\": {source}", path.display())]
    BadHistory { path: PathBuf, source: HistoryError },
    #[error("could not {op} \"{}\": {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl ReaderError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        ReaderError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The file a read is served from, and how far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSource {
    pub path: PathBuf,
    pub file: WalFileName,
    /// Where the WAL served from this file ends (exclusive): the segment end, the valid end of
    /// a `.partial`, or the switch point of the ancestor timeline whose file it is, whichever
    /// comes first.
    pub end: Lsn,
    key: FileKey,
}

/// Counters, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Files opened to read WAL out of them (a compressed one decompresses from its start).
    pub opens: u64,
    /// `.partial` files decoded to find their valid end.
    pub partial_scans: u64,
}

/// The decorations of a segment name, in the order they are tried: a complete file before a
/// `.partial`, and among each the cheapest to read first (they hold the same WAL).
const DECORATIONS: [(Compression, bool); 8] = [
    (Compression::None, false),
    (Compression::Lz4, false),
    (Compression::Zstd, false),
    (Compression::Gzip, false),
    (Compression::None, true),
    (Compression::Lz4, true),
    (Compression::Zstd, true),
    (Compression::Gzip, true),
];

/// A `.partial` changed less than this long before it was decoded may have changed again
/// within the same file time stamp (file systems keep coarse ones): its valid end is not
/// remembered, as git treats a "racily clean" index entry.
const RACY: Duration = Duration::from_secs(1);

/// Read size when decoding a `.partial`.
const SCAN_CHUNK: usize = 256 * 1024;

/// What tells one version of a file from another without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: Option<SystemTime>,
}

impl FileKey {
    fn of(meta: &fs::Metadata) -> Self {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.modified().ok(),
        }
    }

    fn same_file(&self, other: &FileKey) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }

    /// Whether `at` is far enough past the file's time stamp for the stamp to have changed
    /// with any later write.
    fn settled_at(&self, at: SystemTime) -> bool {
        self.mtime
            .and_then(|m| at.duration_since(m).ok())
            .is_some_and(|d| d >= RACY)
    }
}

/// A file found for a segment.
#[derive(Debug, Clone)]
struct Found {
    path: PathBuf,
    file: WalFileName,
    key: FileKey,
}

/// The valid end of a `.partial`, as decoded from the file `key` names.
#[derive(Debug, Clone)]
struct PartialEnd {
    key: FileKey,
    end: Lsn,
    /// The neighbouring segments' files consulted (see
    /// [`ArchiveReader::partial_valid_end`]), as they were then.
    neighbours: Vec<(SegmentName, Option<FileKey>)>,
}

/// The file last read, kept open.
struct OpenFile {
    path: PathBuf,
    key: FileKey,
    body: Body,
}

enum Body {
    /// Read by position.
    Plain(File),
    /// Decompressed as a stream, `pos` bytes of the segment consumed.
    Stream {
        reader: Box<SegmentReader>,
        pos: u64,
    },
}

/// Reads WAL out of an archive directory by position; see the module documentation.
pub struct ArchiveReader {
    dir: PathBuf,
    seg_size: u64,
    open: Option<OpenFile>,
    partial_ends: HashMap<PathBuf, PartialEnd>,
    stats: ReaderStats,
}

impl ArchiveReader {
    /// A reader of the archive in `dir`, whose segments are `seg_size` bytes.
    pub fn open(dir: &Path, seg_size: u64) -> Result<Self, ReaderError> {
        if !is_valid_seg_size(seg_size) {
            return Err(ReaderError::InvalidSegmentSize { seg_size });
        }
        super::is_dir(dir).map_err(|(op, e)| ReaderError::io(op, dir, e))?;
        Ok(ArchiveReader {
            dir: dir.to_path_buf(),
            seg_size,
            open: None,
            partial_ends: HashMap::new(),
            stats: ReaderStats::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn seg_size(&self) -> u64 {
        self.seg_size
    }

    pub fn stats(&self) -> ReaderStats {
        self.stats
    }

    /// The history of timeline `tli` from its `%08X.history` file (ancestors with their switch
    /// points, oldest first). Timeline 1 has none and needs no file.
    pub fn history(&self, tli: TimeLineId) -> Result<Vec<HistoryEntry>, ReaderError> {
        if tli.0 == 1 {
            return Ok(Vec::new());
        }
        let path = self.dir.join(history_file_name(tli));
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ReaderError::NoHistory { tli, path })
            }
            Err(e) => return Err(ReaderError::io("read", &path, e)),
        };
        parse_history(&text).map_err(|source| ReaderError::BadHistory { path, source })
    }

    /// Reads WAL of timeline `tli` at `lsn` from that timeline's own segment file into `buf`;
    /// returns how many bytes (at least one unless `buf` is empty), never past the segment end
    /// or a `.partial`'s valid end. See [`ArchiveReader::read_timeline`] for a timeline whose
    /// early segments its ancestors wrote.
    pub fn read(
        &mut self,
        tli: TimeLineId,
        lsn: Lsn,
        buf: &mut [u8],
    ) -> Result<usize, ReaderError> {
        self.read_timeline(tli, &[], lsn, buf)
    }

    /// Reads the WAL that timeline `tli`, whose history is `history` (see
    /// [`ArchiveReader::history`]), sees at `lsn`: as [`ArchiveReader::read`], from the file
    /// [`ArchiveReader::locate`] picks.
    pub fn read_timeline(
        &mut self,
        tli: TimeLineId,
        history: &[HistoryEntry],
        lsn: Lsn,
        buf: &mut [u8],
    ) -> Result<usize, ReaderError> {
        // A receiver renames, rewrites or restarts files under us: a file that vanished
        // between finding and opening it, or a `.partial` that no longer reads as it decoded,
        // is looked up afresh once.
        let mut retried = false;
        loop {
            let src = self.locate(tli, history, lsn)?;
            let want = (src.end.0 - lsn.0).min(buf.len() as u64) as usize;
            match self.read_file(&src, lsn, &mut buf[..want]) {
                Err(e) if !retried && self.worth_retry(&src, &e) => {
                    self.open = None;
                    self.partial_ends.remove(&src.path);
                    retried = true;
                }
                result => return result,
            }
        }
    }

    /// The file that holds the WAL timeline `tli` (with ancestors `history`) sees at `lsn`,
    /// and how far it serves it. As xlogrecovery.c XLogFileReadAnyTLI: the segment files of
    /// the timelines in the history are tried newest first, down to the timeline that was
    /// current at `lsn` (timeline.c tliOfPointInHistory); older ones wrote other WAL there.
    /// A file of an ancestor timeline serves only up to that timeline's switch point.
    ///
    /// Two departures: PostgreSQL 15 skips a timeline for segments before the one it began
    /// in, which only spares restore_command calls for files that should not exist; a stat
    /// is cheap, and such a file, when a receiver wrote one, holds the WAL that timeline sees.
    /// And a `.partial` whose valid WAL ends before `lsn` does not stop the search (recovery
    /// takes the first file found): an older timeline's file may hold the WAL.
    pub fn locate(
        &mut self,
        tli: TimeLineId,
        history: &[HistoryEntry],
        lsn: Lsn,
    ) -> Result<SegmentSource, ReaderError> {
        let seg_size = self.seg_size;
        let segno = lsn.segno(seg_size);
        let seg_end = segno.next().start_lsn(seg_size);
        let mut looked_for = Vec::new();
        let mut short = None;
        for (t, switchpoint) in timelines_holding(history, tli, lsn) {
            let segment = SegmentName::new(t, segno);
            looked_for.push(segment.file_name(seg_size));
            let Some(found) = self.find(segment)? else {
                continue;
            };
            let mut end = switchpoint.map_or(seg_end, |s| s.min(seg_end));
            if found.file.partial {
                end = end.min(self.partial_valid_end(&found)?);
            }
            if lsn < end {
                return Ok(SegmentSource {
                    path: found.path,
                    file: found.file,
                    end,
                    key: found.key,
                });
            }
            short.get_or_insert(ReaderError::PastValidEnd {
                path: found.path,
                lsn,
                valid_end: end,
            });
        }
        if let Some(e) = short {
            return Err(e);
        }
        // A complete file passed over for its size, when nothing else holds the segment.
        for name in &looked_for {
            let path = self.dir.join(name);
            if let Ok(meta) = fs::metadata(&path) {
                if meta.is_file() {
                    return Err(ReaderError::WrongLength {
                        path,
                        len: meta.len(),
                        seg_size,
                    });
                }
            }
        }
        Err(ReaderError::NotFound {
            dir: self.dir.clone(),
            tli,
            lsn,
            looked_for,
        })
    }

    /// The best file of `segment` in the archive, if any (see [`DECORATIONS`]). An
    /// uncompressed complete file of the wrong size is passed over, as the resume scan does
    /// (a `.partial` or compressed copy may hold the segment; [`ArchiveReader::locate`]
    /// names it when nothing does).
    fn find(&self, segment: SegmentName) -> Result<Option<Found>, ReaderError> {
        for (compression, partial) in DECORATIONS {
            let file = WalFileName {
                segment,
                compression,
                partial,
            };
            let path = self.dir.join(file.file_name(self.seg_size));
            let meta = match fs::metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ReaderError::io("access", &path, e)),
            };
            if !meta.is_file() {
                continue;
            }
            if compression == Compression::None && !partial && meta.len() != self.seg_size {
                continue;
            }
            return Ok(Some(Found {
                path,
                file,
                key: FileKey::of(&meta),
            }));
        }
        Ok(None)
    }

    /// Reads the bytes of `src` from `lsn` into all of `buf` (already bounded by `src.end`),
    /// or as many as the file holds.
    fn read_file(
        &mut self,
        src: &SegmentSource,
        lsn: Lsn,
        buf: &mut [u8],
    ) -> Result<usize, ReaderError> {
        let off = lsn.segment_offset(self.seg_size);
        // A plain file is read by position, so any version of the same file will do; a
        // decompressor that met the end of a file still being written may not go on, and
        // one past `off` would have to start over.
        let mut open = match self.open.take() {
            Some(o)
                if o.path == src.path
                    && match o.body {
                        Body::Plain(_) => o.key.same_file(&src.key),
                        Body::Stream { pos, .. } => o.key == src.key && pos <= off,
                    } =>
            {
                o
            }
            _ => self.open_file(src)?,
        };
        let read = match &mut open.body {
            Body::Plain(file) => read_at_up_to(file, buf, off),
            Body::Stream { reader, pos } => skip_then_fill(reader, pos, off, buf),
        };
        match read {
            Ok(0) if !buf.is_empty() => Err(ReaderError::WrongLength {
                path: src.path.clone(),
                len: match open.body {
                    Body::Plain(_) => src.key.len,
                    Body::Stream { pos, .. } => pos,
                },
                seg_size: self.seg_size,
            }),
            Ok(n) => {
                self.open = Some(open);
                Ok(n)
            }
            Err(e) => Err(ReaderError::io("read", &src.path, e)),
        }
    }

    fn open_file(&mut self, src: &SegmentSource) -> Result<OpenFile, ReaderError> {
        let open_err = |e| ReaderError::io("open", &src.path, e);
        let body = match src.file.compression {
            Compression::None => Body::Plain(File::open(&src.path).map_err(open_err)?),
            compression => Body::Stream {
                reader: Box::new(SegmentReader::open(&src.path, compression).map_err(open_err)?),
                pos: 0,
            },
        };
        self.stats.opens += 1;
        Ok(OpenFile {
            path: src.path.clone(),
            key: src.key,
            body,
        })
    }

    /// Whether a failed read may succeed when the file is looked up again: it vanished (a
    /// `.partial` renamed to its final name), or it is a `.partial` that changed since it was
    /// decoded (a compressed one restarts its stream when the receiver resumes).
    fn worth_retry(&self, src: &SegmentSource, e: &ReaderError) -> bool {
        match e {
            ReaderError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => true,
            ReaderError::Io { .. } | ReaderError::WrongLength { .. } => src.file.partial,
            _ => false,
        }
    }

    /// Where the valid WAL of the `.partial` `found` ends, decoded from its segment start
    /// unless known for this version of the file (and of the neighbours consulted).
    ///
    /// The neighbours: when the file's first page continues a record, decoding starts at the
    /// previous segment (same timeline), so that record's CRC is checked too; without that
    /// file the continuation is taken on the word of the page headers and the records after
    /// it, as xlogreader.c XLogFindNextRecord skips it. When the last record crosses the
    /// segment end, the next segment's file decides whether it is complete (a receiver
    /// renames a full segment only then).
    fn partial_valid_end(&mut self, found: &Found) -> Result<Lsn, ReaderError> {
        if let Some(known) = self.partial_ends.get(&found.path).cloned() {
            if known.key == found.key && self.unchanged(&known.neighbours)? {
                return Ok(known.end);
            }
        }
        let scan_started = SystemTime::now();
        self.stats.partial_scans += 1;
        let seg_size = self.seg_size;
        let segment = found.file.segment;
        let seg_start = segment.segno.start_lsn(seg_size);
        let seg_end = segment.segno.next().start_lsn(seg_size);
        let mut neighbours = Vec::new();
        let mut buf = vec![0u8; SCAN_CHUNK];
        let mut reader = open_stream(&found.path, found.file.compression)?;
        let (n, head_err) = read_keeping_error(&mut reader, &mut buf[..LONG_PAGE_HEADER]);
        let continues = n >= SHORT_PAGE_HEADER
            && le_u16(&buf, 2) & XLP_FIRST_IS_CONTRECORD != 0
            && segment.segno.0 > 0;
        let mut dec = None;
        if continues {
            let prev = SegmentName::new(segment.tli, SegNo(segment.segno.0 - 1));
            let file = self.find(prev)?;
            if let Some(f) = &file {
                let mut d = new_decoder(prev, seg_size, &f.path)?;
                let mut head = [0u8; LONG_PAGE_HEADER];
                head[..n].copy_from_slice(&buf[..n]);
                feed_until(
                    &mut d,
                    &mut open_stream(&f.path, f.file.compression)?,
                    &f.path,
                    &mut buf,
                    |_| false,
                )?;
                if d.fed_end() == seg_start && d.error().is_none() && d.end_of_wal().is_none() {
                    dec = Some(d);
                }
                buf[..n].copy_from_slice(&head[..n]);
            }
            neighbours.push((prev, file.map(|f| f.key)));
        }
        let mut dec = match dec {
            Some(d) => d,
            None => new_decoder(segment, seg_size, &found.path)?,
        };
        // An invalid record ends the valid WAL; the decoder keeps the error.
        let _ = dec.feed_with(&buf[..n], |_| {});
        match head_err {
            None if n == LONG_PAGE_HEADER => {
                feed_until(&mut dec, &mut reader, &found.path, &mut buf, |_| false)?;
            }
            None => {}
            Some(e) if ends_partial(&e) => {}
            Some(e) => return Err(ReaderError::io("read", &found.path, e)),
        }

        let crossing = dec.error().is_none()
            && dec.end_of_wal().is_none()
            && dec.fed_end() == seg_end
            && dec.valid_end() < seg_end;
        if crossing {
            let next = SegmentName::new(segment.tli, segment.segno.next());
            let file = self.find(next)?;
            if let Some(f) = &file {
                let mut reader = open_stream(&f.path, f.file.compression)?;
                feed_until(&mut dec, &mut reader, &f.path, &mut buf, |d| {
                    d.valid_end() >= seg_end
                })?;
            }
            neighbours.push((next, file.map(|f| f.key)));
        }
        let end = dec.valid_end().clamp(seg_start, seg_end);
        let settled = found.key.settled_at(scan_started)
            && neighbours
                .iter()
                .all(|(_, key)| key.is_none_or(|k| k.settled_at(scan_started)));
        if settled {
            // Few `.partial` files are read at once; a bound keeps a long-lived reader small.
            if self.partial_ends.len() >= 64 {
                self.partial_ends.clear();
            }
            self.partial_ends.insert(
                found.path.clone(),
                PartialEnd {
                    key: found.key,
                    end,
                    neighbours,
                },
            );
        }
        Ok(end)
    }

    /// Whether the files of these segments are as they were (or still absent).
    fn unchanged(&self, files: &[(SegmentName, Option<FileKey>)]) -> Result<bool, ReaderError> {
        for (segment, key) in files {
            if self.find(*segment)?.map(|f| f.key) != *key {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn open_stream(path: &Path, compression: Compression) -> Result<SegmentReader, ReaderError> {
    SegmentReader::open(path, compression).map_err(|e| ReaderError::io("open", path, e))
}

/// A decoder of `segment` from its start (a page boundary, of a segment size checked when
/// the reader was opened, so it cannot be refused).
fn new_decoder(
    segment: SegmentName,
    seg_size: u64,
    path: &Path,
) -> Result<WalDecoder, ReaderError> {
    WalDecoder::new(
        segment.segno.start_lsn(seg_size),
        segment.tli,
        seg_size,
        None,
    )
    .map_err(|e| ReaderError::io("decode", path, io::Error::other(e)))
}

/// A read error that ends a `.partial` rather than failing the read: a compressed stream
/// that stops inside a block or frame (the receiver is still writing it, or a crash cut it).
fn ends_partial(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
    )
}

/// The timelines whose segment file may hold the WAL timeline `tli` sees at `lsn`, newest
/// first, each with the switch point where its WAL stops being `tli`'s (none for `tli`):
/// `tli` and its ancestors down to the one current at `lsn`.
fn timelines_holding(
    history: &[HistoryEntry],
    tli: TimeLineId,
    lsn: Lsn,
) -> Vec<(TimeLineId, Option<Lsn>)> {
    let current = tli_of_point_in_history(history, tli, TimeLineId(1), lsn);
    let mut out = vec![(tli, None)];
    out.extend(
        history
            .iter()
            .rev()
            .filter(|e| e.tli < tli && e.tli >= current)
            .map(|e| (e.tli, Some(e.switchpoint))),
    );
    out
}

/// Feeds `r` to `dec` until `enough(dec)`, the decoder stops (invalid WAL or its end), or the
/// file ends (see [`ends_partial`]: what decompressed until then is all it holds).
fn feed_until(
    dec: &mut WalDecoder,
    r: &mut impl Read,
    path: &Path,
    buf: &mut [u8],
    enough: impl Fn(&WalDecoder) -> bool,
) -> Result<(), ReaderError> {
    loop {
        if enough(dec) || dec.error().is_some() || dec.end_of_wal().is_some() {
            return Ok(());
        }
        let (n, err) = read_keeping_error(r, buf);
        // An invalid record ends the valid WAL; the decoder keeps the error.
        let _ = dec.feed_with(&buf[..n], |_| {});
        match err {
            None if n == buf.len() => {}
            None => return Ok(()),
            Some(e) if ends_partial(&e) => return Ok(()),
            Some(e) => return Err(ReaderError::io("read", path, e)),
        }
    }
}

/// Decompresses up to `off` (the stream is at `pos`), then reads into `buf` as
/// [`read_keeping_error`] does; an error after some bytes waits for the next call.
fn skip_then_fill(
    reader: &mut SegmentReader,
    pos: &mut u64,
    off: u64,
    buf: &mut [u8],
) -> io::Result<usize> {
    *pos += io::copy(&mut Read::take(&mut *reader, off - *pos), &mut io::sink())?;
    if *pos < off {
        return Ok(0);
    }
    let (n, err) = read_keeping_error(reader, buf);
    *pos += n as u64;
    match err {
        Some(e) if n == 0 => Err(e),
        _ => Ok(n),
    }
}

/// `pread` until `buf` is full or the file ends.
fn read_at_up_to(file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], off + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::wal::page::le_u32;
    use crate::wal::synth::WalBuilder;

    const SEG: u64 = 1 << 20;
    const SYSID: u64 = 7_312_345_678_901_234_567;
    const CHUNK: usize = 128 * 1024;
    const KINDS: [Compression; 4] = [
        Compression::None,
        Compression::Gzip,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn name(tli: u32, segno: u64) -> String {
        SegmentName::new(TimeLineId(tli), SegNo(segno)).file_name(SEG)
    }

    /// Fillers of varied sizes (some crossing pages and segments) and commits until the
    /// stream reaches `lsn`; `seed` varies the sizes.
    fn fill_until(b: &mut WalBuilder, lsn: u64, seed: usize) {
        let sizes = [60usize, 300, 2500, 9000, 130, 26, 700, 40_000, 5000];
        let mut i = seed;
        while b.end().0 < lsn {
            if i % 7 == 3 {
                b.commit(1000 + i as u32, 800_000_000 + i as i64);
            } else {
                b.filler(sizes[i % sizes.len()]);
            }
            i += 1;
        }
    }

    /// `data` compressed. A `.partial` stream is left as a receiver leaves it: flushed at
    /// each sync (here every 64 KiB), not finished.
    fn compress(compression: Compression, data: &[u8], partial: bool) -> Vec<u8> {
        fn write<W: Write>(mut e: W, data: &[u8], partial: bool) -> W {
            for piece in data.chunks(64 * 1024) {
                e.write_all(piece).unwrap();
                if partial {
                    e.flush().unwrap();
                }
            }
            e
        }
        match compression {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                let e = write(e, data, partial);
                if partial {
                    e.get_ref().clone()
                } else {
                    e.finish().unwrap()
                }
            }
            Compression::Lz4 => {
                let e = write(
                    lz4_flex::frame::FrameEncoder::new(Vec::new()),
                    data,
                    partial,
                );
                if partial {
                    e.get_ref().clone()
                } else {
                    e.finish().unwrap()
                }
            }
            Compression::Zstd => {
                let e = write(
                    zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap(),
                    data,
                    partial,
                );
                if partial {
                    e.get_ref().clone()
                } else {
                    e.finish().unwrap()
                }
            }
        }
    }

    /// Gives `path` a time stamp an hour old, so its valid end may be remembered (see RACY).
    fn age(path: &Path, secs: u64) {
        let f = File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
    }

    /// Writes a segment's bytes under its name: `.partial` ones uncompressed are padded with
    /// zeros to the segment size (as a receiver's are), compressed ones hold what was written.
    fn put(
        dir: &Path,
        tli: u32,
        segno: u64,
        bytes: &[u8],
        compression: Compression,
        partial: bool,
    ) -> PathBuf {
        let file = WalFileName {
            segment: SegmentName::new(TimeLineId(tli), SegNo(segno)),
            compression,
            partial,
        };
        let mut data = bytes.to_vec();
        if partial && compression == Compression::None {
            data.resize(SEG as usize, 0);
        }
        let path = dir.join(file.file_name(SEG));
        fs::write(&path, compress(compression, &data, partial)).unwrap();
        age(&path, 3600);
        path
    }

    /// Lays the stream `b` (from a segment start) out as segments of timeline `tli`, the
    /// last one (not full) as a `.partial`; all in `compression`.
    fn lay_out(dir: &Path, tli: u32, b: &WalBuilder, compression: Compression) {
        let first = b.start().0 / SEG;
        for (i, seg) in b.bytes().chunks(SEG as usize).enumerate() {
            let partial = (seg.len() as u64) < SEG;
            put(dir, tli, first + i as u64, seg, compression, partial);
        }
    }

    /// Timeline 1 from segment 2 to the middle of segment 5.
    fn timeline1() -> WalBuilder {
        let mut b = WalBuilder::new(Lsn(2 * SEG), TimeLineId(1), SEG, SYSID);
        b.checkpoint(false, Lsn(2 * SEG), 1, 1, 1_700_000_000);
        fill_until(&mut b, 5 * SEG + 200_000, 0);
        b
    }

    /// Reads timeline `tli` sequentially from `from` in `chunk`-byte reads until the archive
    /// has no more; returns the bytes and the error that stopped it. Checks that no read
    /// crosses a segment end.
    fn read_all(
        r: &mut ArchiveReader,
        tli: u32,
        history: &[HistoryEntry],
        from: Lsn,
        chunk: usize,
    ) -> (Vec<u8>, ReaderError) {
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        let mut lsn = from;
        loop {
            match r.read_timeline(TimeLineId(tli), history, lsn, &mut buf) {
                Ok(n) => {
                    assert!(n > 0);
                    let seg_end = lsn.segno(SEG).next().start_lsn(SEG);
                    assert!(lsn.0 + n as u64 <= seg_end.0, "read crossed {seg_end}");
                    out.extend_from_slice(&buf[..n]);
                    lsn = Lsn(lsn.0 + n as u64);
                }
                Err(e) => return (out, e),
            }
        }
    }

    fn past_valid_end(e: &ReaderError) -> (Lsn, Lsn, &Path) {
        match e {
            ReaderError::PastValidEnd {
                path,
                lsn,
                valid_end,
            } => (*lsn, *valid_end, path),
            other => panic!("expected PastValidEnd, got {other:?}"),
        }
    }

    #[test]
    fn reader_serves_the_same_bytes_from_every_compression() {
        let b = timeline1();
        for compression in KINDS {
            let dir = tempfile::tempdir().unwrap();
            lay_out(dir.path(), 1, &b, compression);
            let mut r = ArchiveReader::open(dir.path(), SEG).unwrap();
            // An odd chunk size, so reads end anywhere in pages and records.
            let (got, err) = read_all(&mut r, 1, &[], b.start(), CHUNK - 1000);
            assert!(got == b.bytes(), "{compression:?}: bytes differ");
            let (lsn, end, path) = past_valid_end(&err);
            assert_eq!((lsn, end), (b.end(), b.end()), "{compression:?}");
            assert!(path.ends_with(format!("{}{}.partial", name(1, 5), compression.suffix())));
            // Each file opened once: sequential reads go on where the last one stopped.
            assert_eq!(r.stats().opens, 4, "{compression:?}");

            // Random access, backwards too.
            for at in [
                4 * SEG + 77_777,
                2 * SEG + 8,
                3 * SEG - 5,
                5 * SEG + 199_000,
            ] {
                let mut buf = vec![0u8; 3000];
                let n = r.read(TimeLineId(1), Lsn(at), &mut buf).unwrap();
                let want = (3000u64)
                    .min(at.next_multiple_of(SEG) - at)
                    .min(b.end().0 - at);
                assert_eq!(n as u64, want, "{compression:?} at {at:#x}");
                let off = b.offset_of(Lsn(at));
                assert!(
                    buf[..n] == b.bytes()[off..off + n],
                    "{compression:?} at {at:#x}"
                );
            }
        }
    }

    #[test]
    fn reader_decompresses_a_segment_read_in_chunks_once() {
        let b = timeline1();
        let seg3 = &b.bytes()[SEG as usize..2 * SEG as usize];
        for compression in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            let dir = tempfile::tempdir().unwrap();
            put(dir.path(), 1, 3, seg3, compression, false);
            let mut r = ArchiveReader::open(dir.path(), SEG).unwrap();
            let mut buf = vec![0u8; CHUNK];
            let mut got = Vec::new();
            while (got.len() as u64) < SEG {
                let n = r
                    .read(TimeLineId(1), Lsn(3 * SEG + got.len() as u64), &mut buf)
                    .unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got == seg3, "{compression:?}");
            assert_eq!(
                r.stats().opens,
                1,
                "{compression:?}: decompression restarted"
            );
            // Skipping ahead goes on with the same stream; going back starts it over.
            r.read(TimeLineId(1), Lsn(3 * SEG + 10), &mut buf).unwrap();
            r.read(TimeLineId(1), Lsn(3 * SEG + 500_000), &mut buf)
                .unwrap();
            r.read(TimeLineId(1), Lsn(3 * SEG + 900_000), &mut buf)
                .unwrap();
            assert_eq!(r.stats().opens, 2, "{compression:?}");
        }
    }

    /// A record cut short at the end of a `.partial` (a sector of it never written) is where
    /// its valid WAL ends; nothing after it is served, not even bytes that look like WAL.
    #[test]
    fn reader_serves_a_partial_only_up_to_its_valid_end() {
        let mut b = timeline1();
        let last = b.filler(6000);
        let at = b.offset_of(last) - 3 * SEG as usize;
        let mut seg5 = b.bytes()[3 * SEG as usize..].to_vec();
        let sector = (at + 1).next_multiple_of(512);
        seg5[sector..sector + 512].fill(0);
        for compression in KINDS {
            let dir = tempfile::tempdir().unwrap();
            let mut torn = seg5.clone();
            torn.resize(SEG as usize - 4096, 0);
            torn[at + 9000] = 0x5a;
            put(dir.path(), 1, 5, &torn, compression, true);
            let mut r = ArchiveReader::open(dir.path(), SEG).unwrap();
            let (got, err) = read_all(&mut r, 1, &[], Lsn(5 * SEG), CHUNK);
            assert!(
                got == b.bytes()[3 * SEG as usize..b.offset_of(last)],
                "{compression:?}"
            );
            assert_eq!(past_valid_end(&err).1, last, "{compression:?}");
            let mut buf = [0u8; 8];
            let err = r
                .read(TimeLineId(1), Lsn(last.0 + 16), &mut buf)
                .unwrap_err();
            assert_eq!(past_valid_end(&err).1, last);
            assert!(
                err.to_string().contains(&format!("ends at {last}")),
                "{err}"
            );
        }

        // A compressed .partial cut inside its stream (a receiver still writing it): the
        // records that decompress whole are served, and nothing past them.
        let whole = &b.bytes()[3 * SEG as usize..];
        for compression in [Compression::Gzip, Compression::Lz4, Compression::Zstd] {
            let dir = tempfile::tempdir().unwrap();
            let path = put(dir.path(), 1, 5, whole, compression, true);
            let bytes = fs::read(&path).unwrap();
            fs::write(&path, &bytes[..bytes.len() * 2 / 3]).unwrap();
            age(&path, 3600);
            let mut r = ArchiveReader::open(dir.path(), SEG).unwrap();
            let (got, err) = read_all(&mut r, 1, &[], Lsn(5 * SEG), CHUNK);
            let end = past_valid_end(&err).1;
            assert_eq!(end.0, 5 * SEG + got.len() as u64, "{compression:?}");
            assert!(
                got.len() > 4096 && got.len() < whole.len(),
                "{compression:?}: {}",
                got.len()
            );
            assert!(got == whole[..got.len()], "{compression:?}");
        }
    }

    #[test]
    fn reader_remembers_a_partials_valid_end_until_the_file_changes() {
        let mut b = timeline1();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let partial = put(
            d,
            1,
            5,
            &b.bytes()[3 * SEG as usize..],
            Compression::None,
            true,
        );
        let mut r = ArchiveReader::open(d, SEG).unwrap();
        let end = b.end();
        let mut buf = vec![0u8; 1000];
        for _ in 0..3 {
            r.read(TimeLineId(1), Lsn(5 * SEG), &mut buf).unwrap();
        }
        assert_eq!(r.stats().partial_scans, 1);

        // The receiver writes more: the file's time stamp moves, the end is found again.
        fill_until(&mut b, 5 * SEG + 300_000, 3);
        put(
            d,
            1,
            5,
            &b.bytes()[3 * SEG as usize..],
            Compression::None,
            true,
        );
        age(&partial, 1800);
        let n = r.read(TimeLineId(1), end, &mut buf).unwrap();
        assert_eq!(n, 1000);
        assert_eq!(r.stats().partial_scans, 2);
        let (got, err) = read_all(&mut r, 1, &[], Lsn(5 * SEG), CHUNK);
        assert!(got == b.bytes()[3 * SEG as usize..]);
        assert_eq!(past_valid_end(&err).1, b.end());
        assert_eq!(r.stats().partial_scans, 2);

        // Written just now: the time stamp may not move with the next write, so the end is
        // not remembered.
        File::options()
            .write(true)
            .open(&partial)
            .unwrap()
            .set_modified(SystemTime::now())
            .unwrap();
        r.read(TimeLineId(1), Lsn(5 * SEG), &mut buf).unwrap();
        r.read(TimeLineId(1), Lsn(5 * SEG), &mut buf).unwrap();
        assert_eq!(r.stats().partial_scans, 4);
    }

    /// The renamed complete segment wins over its leftover `.partial`, an uncompressed file
    /// over a compressed one, and a complete file of the wrong size is passed over.
    #[test]
    fn reader_prefers_complete_and_uncompressed_files() {
        let b = timeline1();
        let seg3 = &b.bytes()[SEG as usize..2 * SEG as usize];
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut r = ArchiveReader::open(d, SEG).unwrap();
        let at = Lsn(3 * SEG);
        let located = |r: &mut ArchiveReader| {
            let path = r.locate(TimeLineId(1), &[], at).unwrap().path;
            path.file_name().unwrap().to_str().unwrap().to_string()
        };
        put(d, 1, 3, &seg3[..500_000], Compression::Gzip, true);
        assert_eq!(located(&mut r), format!("{}.gz.partial", name(1, 3)));
        put(d, 1, 3, &seg3[..600_000], Compression::None, true);
        assert_eq!(located(&mut r), format!("{}.partial", name(1, 3)));
        put(d, 1, 3, seg3, Compression::Zstd, false);
        assert_eq!(located(&mut r), format!("{}.zst", name(1, 3)));
        fs::write(d.join(name(1, 3)), &seg3[..8192]).unwrap();
        assert_eq!(located(&mut r), format!("{}.zst", name(1, 3)));
        put(d, 1, 3, seg3, Compression::None, false);
        assert_eq!(located(&mut r), name(1, 3));
        let src = r.locate(TimeLineId(1), &[], Lsn(3 * SEG + 5)).unwrap();
        assert_eq!(src.end, Lsn(4 * SEG));
        assert!(!src.file.partial);
    }

    #[test]
    fn reader_names_what_it_looked_for() {
        let b = timeline1();
        let dir = tempfile::tempdir().unwrap();
        lay_out(dir.path(), 1, &b, Compression::None);
        let mut r = ArchiveReader::open(dir.path(), SEG).unwrap();
        let mut buf = [0u8; 16];
        let err = r
            .read(TimeLineId(1), Lsn(9 * SEG + 24), &mut buf)
            .unwrap_err();
        assert!(
            matches!(&err, ReaderError::NotFound { looked_for, lsn, .. }
                if looked_for == &[name(1, 9)] && *lsn == Lsn(9 * SEG + 24)),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&name(1, 9)) && msg.contains("0/900018"),
            "{msg}"
        );

        // A compressed complete segment that decompresses short is damage, named.
        let seg3 = &b.bytes()[SEG as usize..2 * SEG as usize];
        fs::remove_file(dir.path().join(name(1, 3))).unwrap();
        put(
            dir.path(),
            1,
            3,
            &seg3[..SEG as usize / 2],
            Compression::Zstd,
            false,
        );
        let err = r
            .read(TimeLineId(1), Lsn(3 * SEG + 600_000), &mut buf)
            .unwrap_err();
        match &err {
            ReaderError::WrongLength { path, len, .. } => {
                assert!(path.ends_with(format!("{}.zst", name(1, 3))));
                assert_eq!(*len, SEG / 2);
            }
            other => panic!("{other:?}"),
        }
        assert!(r.read(TimeLineId(1), Lsn(3 * SEG + 5), &mut buf).is_ok());
        // An uncompressed one of the wrong size, with no other file of its segment.
        fs::write(dir.path().join(name(1, 9)), [0u8; 8192]).unwrap();
        let err = r.read(TimeLineId(1), Lsn(9 * SEG), &mut buf).unwrap_err();
        assert!(
            matches!(&err, ReaderError::WrongLength { path, len: 8192, .. }
                if path.ends_with(name(1, 9))),
            "{err:?}"
        );

        assert!(matches!(
            ArchiveReader::open(dir.path(), 3 << 20),
            Err(ReaderError::InvalidSegmentSize { .. })
        ));
        assert!(matches!(
            ArchiveReader::open(&dir.path().join("nope"), SEG),
            Err(ReaderError::Io { .. })
        ));
    }

    /// Timeline 1 to a switch point in segment 4, timeline 2 from there to segment 6, as a
    /// promoted server and walferry leave it: timeline 1's last segment a `.partial` up to the
    /// switch point, timeline 2's first segment a copy of timeline 1 up to it, then new WAL.
    struct Promoted {
        dir: tempfile::TempDir,
        b: WalBuilder,
        switch: Lsn,
        history: Vec<HistoryEntry>,
    }

    /// Timeline 1 up to the switch point: the same bytes on every call.
    fn before_switch() -> WalBuilder {
        let mut b = WalBuilder::new(Lsn(2 * SEG), TimeLineId(1), SEG, SYSID);
        fill_until(&mut b, 4 * SEG + 100_000, 0);
        b.restore_point(b"before", 900_000_000);
        b
    }

    fn promoted() -> Promoted {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut b = before_switch();
        let switch = b.end();
        lay_out(d, 1, &b, Compression::None);
        b.set_timeline(TimeLineId(2));
        b.end_of_recovery(900_000_001, 2, 1);
        fill_until(&mut b, 6 * SEG + 5000, 5);
        let from = (2 * SEG) as usize;
        for (i, seg) in b.bytes()[from..].chunks(SEG as usize).enumerate() {
            let partial = (seg.len() as u64) < SEG;
            put(d, 2, 4 + i as u64, seg, Compression::None, partial);
        }
        let text = format!("1\t{switch}\tno recovery target specified\n");
        fs::write(d.join("00000002.history"), text).unwrap();
        let history = ArchiveReader::open(d, SEG)
            .unwrap()
            .history(TimeLineId(2))
            .unwrap();
        Promoted {
            dir,
            b,
            switch,
            history,
        }
    }

    #[test]
    fn reader_reads_a_timeline_through_its_history() {
        let p = promoted();
        let d = p.dir.path();
        let mut r = ArchiveReader::open(d, SEG).unwrap();
        assert_eq!(p.history.len(), 1);
        assert_eq!(p.history[0].switchpoint, p.switch);
        assert_eq!(r.history(TimeLineId(1)).unwrap(), vec![]);
        assert!(matches!(
            r.history(TimeLineId(3)),
            Err(ReaderError::NoHistory { .. })
        ));

        // Timeline 2 sees timeline 1's WAL below the switch point: its segments 2 and 3 come
        // from timeline 1's files, segment 4 on from its own.
        let file_of = |r: &mut ArchiveReader, lsn: u64| {
            let src = r.locate(TimeLineId(2), &p.history, Lsn(lsn)).unwrap();
            src.path.file_name().unwrap().to_str().unwrap().to_string()
        };
        assert_eq!(file_of(&mut r, 2 * SEG), name(1, 2));
        assert_eq!(file_of(&mut r, 3 * SEG + 9), name(1, 3));
        assert_eq!(file_of(&mut r, 4 * SEG), name(2, 4));
        // Segment 6, a .partial that holds only the end of a record begun in segment 5, is
        // checked from that record's start.
        let (got, err) = read_all(&mut r, 2, &p.history, Lsn(2 * SEG), CHUNK);
        assert!(
            got == p.b.bytes(),
            "{} of {} bytes: {err}",
            got.len(),
            p.b.bytes().len()
        );
        assert_eq!(past_valid_end(&err).1, p.b.end());

        // Without the history, only timeline 2's own files.
        let mut buf = [0u8; 64];
        let err = r.read(TimeLineId(2), Lsn(2 * SEG), &mut buf).unwrap_err();
        assert!(err.to_string().contains(&name(2, 2)), "{err}");

        // A copy of the segment under timeline 2's name (a receiver that streamed timeline 2
        // from there) holds the same WAL and is taken first.
        fs::copy(d.join(name(1, 2)), d.join(name(2, 2))).unwrap();
        assert_eq!(file_of(&mut r, 2 * SEG + 100), name(2, 2));

        // Neither timeline has segment 7.
        let err = r
            .read_timeline(TimeLineId(2), &p.history, Lsn(7 * SEG), &mut buf)
            .unwrap_err();
        assert!(
            matches!(&err, ReaderError::NotFound { looked_for, .. } if looked_for == &[name(2, 7)]),
            "{err:?}"
        );
        fs::remove_file(d.join(name(1, 3))).unwrap();
        let err = r
            .read_timeline(TimeLineId(2), &p.history, Lsn(3 * SEG), &mut buf)
            .unwrap_err();
        assert!(
            matches!(&err, ReaderError::NotFound { looked_for, .. }
                if looked_for == &[name(2, 3), name(1, 3)]),
            "{err:?}"
        );
    }

    /// The segment holding the switch point, missing on timeline 2: timeline 1's file serves
    /// it up to the switch point and no further, even where it goes on with WAL that
    /// timeline 2 never saw.
    #[test]
    fn reader_serves_an_ancestors_segment_only_up_to_the_switch_point() {
        let p = promoted();
        let d = p.dir.path();
        fs::remove_file(d.join(name(2, 4))).unwrap();
        let mut r = ArchiveReader::open(d, SEG).unwrap();
        let switch_off = p.b.offset_of(p.switch);
        let before = &p.b.bytes()[2 * SEG as usize..switch_off];

        let check = |r: &mut ArchiveReader, file: &str| {
            let src = r
                .locate(TimeLineId(2), &p.history, Lsn(4 * SEG + 50))
                .unwrap();
            assert!(src.path.ends_with(file), "{src:?}");
            assert_eq!(src.end, p.switch);
            let (got, err) = read_all(r, 2, &p.history, Lsn(4 * SEG), CHUNK);
            assert!(got == before);
            assert!(
                matches!(&err, ReaderError::NotFound { looked_for, lsn, .. }
                    if looked_for == &[name(2, 4)] && *lsn == p.switch),
                "{err:?}"
            );
        };
        // The old primary's .partial, whose valid WAL ends at the switch point anyway.
        check(&mut r, &format!("{}.partial", name(1, 4)));

        // The old primary went on writing timeline 1 past the switch point.
        let mut old = before_switch();
        assert_eq!(old.end(), p.switch);
        fill_until(&mut old, 5 * SEG + 10, 2);
        let seg4 = &old.bytes()[2 * SEG as usize..3 * SEG as usize];
        assert!(seg4[..switch_off - 2 * SEG as usize] == *before);
        put(d, 1, 4, seg4, Compression::Lz4, false);
        check(&mut r, &format!("{}.lz4", name(1, 4)));
    }

    /// Whether the page at `lsn` (a segment start) of `b` begins with the rest of a record.
    fn continues(b: &WalBuilder, lsn: u64) -> bool {
        let off = b.offset_of(Lsn(lsn));
        le_u16(b.bytes(), off + 2) & XLP_FIRST_IS_CONTRECORD != 0
    }

    /// A `.partial` that begins with the rest of a record is checked from that record's
    /// start in the previous segment: a damaged continuation is not served.
    #[test]
    fn reader_checks_a_partials_first_record_from_the_previous_segment() {
        let b = timeline1();
        assert!(
            continues(&b, 5 * SEG),
            "segment 5 must begin inside a record"
        );
        let seg5 = &b.bytes()[3 * SEG as usize..];
        let rem = le_u32(seg5, 16) as usize;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        lay_out(d, 1, &b, Compression::None);
        let mut damaged = seg5.to_vec();
        damaged[LONG_PAGE_HEADER + rem / 2] ^= 0x40;
        put(d, 1, 5, &damaged, Compression::None, true);
        let mut r = ArchiveReader::open(d, SEG).unwrap();
        let mut buf = [0u8; 100];
        let err = r.read(TimeLineId(1), Lsn(5 * SEG), &mut buf).unwrap_err();
        assert_eq!(past_valid_end(&err).1, Lsn(5 * SEG));
        // Without the previous segment the continuation cannot be checked; the records after
        // it vouch for it (a limit of reading one segment alone).
        let seg4 = d.join(name(1, 4));
        fs::rename(&seg4, d.join("elsewhere")).unwrap();
        assert_eq!(r.read(TimeLineId(1), Lsn(5 * SEG), &mut buf).unwrap(), 100);
        fs::rename(d.join("elsewhere"), &seg4).unwrap();

        put(d, 1, 5, seg5, Compression::Zstd, true);
        fs::remove_file(d.join(format!("{}.partial", name(1, 5)))).unwrap();
        let (got, _) = read_all(&mut r, 1, &[], Lsn(5 * SEG), CHUNK);
        assert!(got == seg5);
    }

    /// A full `.partial` not renamed yet because the record crossing its end is not complete:
    /// served to its last complete record, and whole once the next file completes that record.
    #[test]
    fn reader_serves_a_full_partial_whole_once_the_next_file_completes_its_last_record() {
        let b = timeline1();
        assert!(continues(&b, 4 * SEG), "a record must cross into segment 4");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let seg3 = &b.bytes()[SEG as usize..2 * SEG as usize];
        let seg4 = &b.bytes()[2 * SEG as usize..3 * SEG as usize];
        put(d, 1, 3, seg3, Compression::Gzip, true);
        let mut r = ArchiveReader::open(d, SEG).unwrap();
        let (got, err) = read_all(&mut r, 1, &[], Lsn(3 * SEG), CHUNK);
        let rem = le_u32(seg4, 16) as u64;
        let crossing_len = {
            // The crossing record starts where the valid WAL stops; its length is in it.
            let at = got.len();
            le_u32(seg3, at) as u64
        };
        assert!(got.len() < SEG as usize && crossing_len > rem);
        assert_eq!(past_valid_end(&err).1, Lsn(3 * SEG + got.len() as u64));
        assert!(got == seg3[..got.len()]);

        // The next segment arrives (a .partial holding only part of it is enough).
        put(d, 1, 4, &seg4[..200_000], Compression::None, true);
        let (got, err) = read_all(&mut r, 1, &[], Lsn(3 * SEG), CHUNK);
        assert!(got == b.bytes()[SEG as usize..SEG as usize + got.len()]);
        let end = past_valid_end(&err).1;
        assert_eq!(end.0, 3 * SEG + got.len() as u64);
        assert!(end.0 > 4 * SEG + rem && end.0 <= 4 * SEG + 200_000, "{end}");
        assert_eq!(
            r.stats().partial_scans,
            3,
            "segment 3 twice, then segment 4"
        );
    }

    #[test]
    fn reader_is_send() {
        fn send<T: Send>() {}
        send::<ArchiveReader>();
    }
}
