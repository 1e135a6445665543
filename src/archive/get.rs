//! Serving one file of an archive to PostgreSQL's `restore_command` (`walferry archive-get`):
//! a segment, a `%08X.history` file or a `.backup` history file, by the name recovery asks
//! for, decompressed and checked before it is handed over.
//!
//! What recovery does with the answer decides what may be answered. A file handed over is
//! replayed; "not there" ends archive recovery (or moves a standby to streaming) at that
//! point. So a segment is decoded whole first (page headers, record headers, xl_prev links,
//! CRC-32C, via [`WalDecoder`]), together with the start of the next segment's file when its
//! last record crosses into it; damage is an error of its own ([`GetError::is_not_found`] is
//! false), which the command turns into an exit status that aborts recovery, never into "not
//! there" (recovery would end early and promote, silently losing the WAL after the damage).
//!
//! Recovery never asks for a `.partial` name; it asks for the segment. When the archive holds
//! only `NAME.partial` (compressed or not), it is served, padded with zeros to the segment
//! size after its valid WAL (so recovery reads the valid records and then sees the end), in
//! exactly these cases:
//!
//! - it holds the whole segment (a receiver renames a full segment only once the record
//!   crossing its end is complete in the next file; the next file here shows it is): served
//!   whole, like a complete segment;
//! - a later timeline's history (the newest history file that names this one) says the
//!   timeline ended inside this segment, at switch point P, and the file's valid WAL reaches
//!   P: served up to P (a `.partial` PostgreSQL archives at promotion, or the receiver's
//!   last file of the old timeline). Whatever the file holds after P is not the promoted
//!   timeline's WAL. Valid WAL ending before P is WAL missing from the archive: an error;
//! - no later timeline names this one, and no complete segment of the timeline follows: it
//!   is the newest WAL of the newest timeline (the receiver is writing it, or its server
//!   died). Served up to its valid end, when what stops it is the end of the WAL (zeros, a
//!   compressed stream cut short, or a record cut short by zeros, as a crash mid-write
//!   leaves it). A record that fails its checks with data after it is damage.
//!
//! Any other `.partial` is a hole in the archive (a complete segment of its timeline follows
//! it, or a later timeline says its timeline went on past it): an error, not "not there".
//! A timeline that ended before the segment asked for (by a later timeline's history) has no
//! WAL for it: "not there", and recovery asks for the later timeline's segment instead.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::{list_dir, read_keeping_error, SegmentReader};
use crate::wal::page::{is_valid_seg_size, SegmentHeader, LONG_PAGE_HEADER};
use crate::wal::{
    history_file_name, parse_history, parse_history_file_name, Compression, HistoryError, Lsn,
    SegNo, SegmentName, TimeLineId, WalDecoder, WalFileName,
};

/// What a `%f` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// A WAL segment (24 hex digits; its segment number needs the segment size).
    Segment(String),
    /// A timeline history file, `%08X.history`.
    History(TimeLineId),
    /// A backup history file, `NAME.XXXXXXXX.backup`.
    BackupHistory(String),
}

impl Wanted {
    /// The kind of file `name` names, or `None` when it is no archive file name.
    pub fn parse(name: &str) -> Option<Wanted> {
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if hex(name, 24) {
            return Some(Wanted::Segment(name.to_string()));
        }
        if let Some(tli) = parse_history_file_name(name) {
            return Some(Wanted::History(tli));
        }
        let stem = name.strip_suffix(".backup")?;
        let (seg, off) = stem.split_once('.')?;
        (hex(seg, 24) && hex(off, 8)).then(|| Wanted::BackupHistory(name.to_string()))
    }
}

/// How a segment was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// A complete segment file.
    Complete,
    /// A `.partial` that holds the whole segment.
    WholePartial,
    /// A `.partial` at the end of its timeline: its WAL up to `end`, zeros after.
    EndOfTimeline { end: Lsn },
    /// A history or backup history file.
    Text,
}

/// A file ready to hand over.
#[derive(Debug)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// The archive file it came from.
    pub source: PathBuf,
    pub served: Served,
    /// The segment size, for segments.
    pub seg_size: Option<u64>,
}

/// Why a file cannot be served. Only [`GetError::NotFound`] means "not in the archive".
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("\"{name}\" is not in the archive \"{}\"{}", dir.display(), note.as_deref().map(|n| format!(": {n}")).unwrap_or_default())]
    NotFound {
        name: String,
        dir: PathBuf,
        note: Option<String>,
    },
    #[error(
        "\"{name}\" is not the name of a WAL segment, timeline history or backup history file"
    )]
    BadName { name: String },
    #[error("\"{}\" is damaged{}: {why}", path.display(), lsn.map(|l| format!(" at {l}")).unwrap_or_default())]
    Damaged {
        path: PathBuf,
        lsn: Option<Lsn>,
        why: String,
    },
    #[error(
        "WAL is missing from the archive: \"{}\" is a .partial whose valid WAL ends at \
         {valid_end}, but {why}",
        path.display()
    )]
    MissingWal {
        path: PathBuf,
        valid_end: Lsn,
        why: String,
    },
    #[error("invalid timeline history file \"{}\": {source}", path.display())]
    BadHistory { path: PathBuf, source: HistoryError },
    #[error("could not {op} \"{}\": {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl GetError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        GetError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    fn damaged(path: &Path, lsn: Option<Lsn>, why: impl Into<String>) -> Self {
        GetError::Damaged {
            path: path.to_path_buf(),
            lsn,
            why: why.into(),
        }
    }

    /// The file is simply not in the archive (recovery may end here).
    pub fn is_not_found(&self) -> bool {
        matches!(self, GetError::NotFound { .. })
    }

    /// The disk ran out of space (writing the destination).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, GetError::Io { source, .. }
            if source.kind() == io::ErrorKind::StorageFull
                || source.raw_os_error() == Some(libc::ENOSPC)
                || source.raw_os_error() == Some(libc::EDQUOT))
    }
}

/// The complete decorations of a segment name, cheapest to read first (as the reader's).
const COMPLETE: [Compression; 4] = [
    Compression::None,
    Compression::Lz4,
    Compression::Zstd,
    Compression::Gzip,
];

/// Read size when following a record into the next segment's file.
const CHUNK: usize = 64 * 1024;

/// Fetches files out of one archive directory; see the module documentation.
#[derive(Debug, Clone)]
pub struct Getter {
    dir: PathBuf,
    expected_sysid: Option<u64>,
}

impl Getter {
    /// A getter for the archive directory `dir` (REPO/wal). With `expected_sysid` (the
    /// restoring cluster's, from its pg_control), WAL of another system is refused as damage:
    /// recovery would otherwise take it for the end of the WAL.
    pub fn new(dir: &Path, expected_sysid: Option<u64>) -> Result<Getter, GetError> {
        super::is_dir(dir).map_err(|(op, e)| GetError::io(op, dir, e))?;
        Ok(Getter {
            dir: dir.to_path_buf(),
            expected_sysid,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file `name` (a `%f`), checked and ready to hand over.
    pub fn fetch(&self, name: &str) -> Result<Fetched, GetError> {
        match Wanted::parse(name) {
            Some(Wanted::Segment(seg)) => self.fetch_segment(&seg, false),
            Some(Wanted::History(tli)) => self.fetch_history(tli),
            Some(Wanted::BackupHistory(name)) => self.fetch_backup_history(&name),
            None => Err(GetError::BadName {
                name: name.to_string(),
            }),
        }
    }

    /// Segment `name`; with `complete_only`, a `.partial` is "not there" (prefetching must
    /// never keep an end-of-timeline answer that a later complete file would change).
    pub fn fetch_segment(&self, name: &str, complete_only: bool) -> Result<Fetched, GetError> {
        if let Some((path, compression)) = self.find(name, false)? {
            return self.complete(name, &path, compression);
        }
        let partial = if complete_only {
            None
        } else {
            self.find(name, true)?
        };
        match partial {
            Some((path, compression)) => self.partial(name, &path, compression),
            None => Err(self.not_found(name, None)),
        }
    }

    fn not_found(&self, name: &str, note: Option<String>) -> GetError {
        GetError::NotFound {
            name: name.to_string(),
            dir: self.dir.clone(),
            note,
        }
    }

    /// The first file of segment `name`, complete or `.partial`, in [`COMPLETE`] order.
    fn find(&self, name: &str, partial: bool) -> Result<Option<(PathBuf, Compression)>, GetError> {
        for compression in COMPLETE {
            let file = format!(
                "{name}{}{}",
                compression.suffix(),
                if partial { ".partial" } else { "" }
            );
            let path = self.dir.join(file);
            match fs::metadata(&path) {
                Ok(m) if m.is_file() => return Ok(Some((path, compression))),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(GetError::io("access", &path, e)),
            }
        }
        Ok(None)
    }

    fn complete(
        &self,
        name: &str,
        path: &Path,
        compression: Compression,
    ) -> Result<Fetched, GetError> {
        let bytes = match SegmentReader::read_all(path, compression) {
            Ok(b) => b,
            Err(e) if compression != Compression::None && e.kind() != io::ErrorKind::NotFound => {
                return Err(GetError::damaged(
                    path,
                    None,
                    format!("could not decompress it: {e}"),
                ))
            }
            Err(e) => return Err(GetError::io("read", path, e)),
        };
        let seg_size = seg_size_of(path, &bytes)?;
        if bytes.len() as u64 != seg_size {
            return Err(GetError::damaged(
                path,
                None,
                format!(
                    "it holds {} bytes of WAL, but a complete segment holds {seg_size}",
                    bytes.len()
                ),
            ));
        }
        let segment = segment_of(name, seg_size, path)?;
        let mut dec = self.decoder(segment, seg_size, path)?;
        let _ = dec.feed_with(&bytes, |_| {});
        if let Some(e) = dec.error() {
            return Err(GetError::damaged(path, Some(e.lsn()), e.to_string()));
        }
        if let Some(at) = dec.end_of_wal() {
            return Err(GetError::damaged(
                path,
                Some(at),
                format!(
                    "the WAL stops at {at} inside a complete segment (zeros where a record or \
                     page header should be)"
                ),
            ));
        }
        self.follow_crossing(&mut dec, segment, seg_size)?;
        Ok(Fetched {
            bytes,
            source: path.to_path_buf(),
            served: Served::Complete,
            seg_size: Some(seg_size),
        })
    }

    fn partial(
        &self,
        name: &str,
        path: &Path,
        compression: Compression,
    ) -> Result<Fetched, GetError> {
        let mut bytes = read_partial(path, compression)?;
        if let SegmentHeader::Empty = SegmentHeader::parse(&bytes) {
            return Err(self.not_found(
                name,
                Some(format!("\"{}\" holds no WAL yet", path.display())),
            ));
        }
        let seg_size = seg_size_of(path, &bytes)?;
        if bytes.len() as u64 > seg_size {
            return Err(GetError::damaged(
                path,
                None,
                format!("it holds {} bytes, more than a segment", bytes.len()),
            ));
        }
        let segment = segment_of(name, seg_size, path)?;
        let seg_start = segment.segno.start_lsn(seg_size);
        let seg_end = segment.segno.next().start_lsn(seg_size);
        let mut dec = self.decoder(segment, seg_size, path)?;
        let _ = dec.feed_with(&bytes, |_| {});
        if let Some(e) = dec.error().filter(|e| e.is_foreign()) {
            return Err(GetError::damaged(path, Some(e.lsn()), e.to_string()));
        }
        if bytes.len() as u64 == seg_size {
            self.follow_crossing(&mut dec, segment, seg_size)?;
        }
        let valid_end = dec.valid_end().clamp(seg_start, seg_end);
        if valid_end == seg_end {
            return Ok(Fetched {
                bytes,
                source: path.to_path_buf(),
                served: Served::WholePartial,
                seg_size: Some(seg_size),
            });
        }
        let stop = match (dec.error(), dec.end_of_wal()) {
            (Some(e), _) => format!("{e}"),
            (None, Some(at)) => format!("the WAL ends at {at}"),
            (None, None) => format!("the file ends at {}", dec.fed_end()),
        };
        let missing = |why: String| GetError::MissingWal {
            path: path.to_path_buf(),
            valid_end,
            why,
        };
        let end = match self.later_switchpoint(segment.tli)? {
            Some((_, switch)) if switch <= seg_start => {
                return Err(self.not_found(
                    name,
                    Some(format!(
                        "timeline {} ended at {switch}, before this segment",
                        segment.tli
                    )),
                ))
            }
            Some((later, switch)) if switch > seg_end => {
                return Err(missing(format!(
                    "timeline {} went on to {switch} (history of timeline {later}); \
                     here {stop}",
                    segment.tli
                )))
            }
            Some((later, switch)) if valid_end < switch => {
                return Err(missing(format!(
                    "timeline {} ended at {switch} (history of timeline {later}); here {stop}",
                    segment.tli
                )))
            }
            Some((_, switch)) => switch,
            None => {
                if let Some(next) = self.later_complete_segment(segment, seg_size)? {
                    return Err(missing(format!(
                        "the complete segment \"{next}\" of the same timeline follows it; \
                         here {stop}"
                    )));
                }
                if let Some(e) = dec.error() {
                    if !crate::inspect::cut_short_by_zeros(&bytes, seg_start.0, e.lsn(), seg_size) {
                        return Err(GetError::damaged(path, Some(e.lsn()), e.to_string()));
                    }
                }
                valid_end
            }
        };
        bytes.truncate(end.segment_offset(seg_size) as usize);
        bytes.resize(seg_size as usize, 0);
        Ok(Fetched {
            bytes,
            source: path.to_path_buf(),
            served: Served::EndOfTimeline { end },
            seg_size: Some(seg_size),
        })
    }

    fn decoder(
        &self,
        segment: SegmentName,
        seg_size: u64,
        path: &Path,
    ) -> Result<WalDecoder, GetError> {
        WalDecoder::new(
            segment.segno.start_lsn(seg_size),
            segment.tli,
            seg_size,
            self.expected_sysid,
        )
        .map_err(|e| GetError::damaged(path, None, e.to_string()))
    }

    /// When the last record of the segment `dec` decoded crosses its end, completes and
    /// checks it from the next segment's file, if the archive has one yet (else recovery
    /// checks it when it reads on). A continuation that fails its checks is damage, unless it
    /// is a `.partial` cut short by zeros (still being written).
    fn follow_crossing(
        &self,
        dec: &mut WalDecoder,
        segment: SegmentName,
        seg_size: u64,
    ) -> Result<(), GetError> {
        let seg_end = segment.segno.next().start_lsn(seg_size);
        if dec.error().is_some() || dec.end_of_wal().is_some() || dec.valid_end() >= seg_end {
            return Ok(());
        }
        let next = SegmentName::new(segment.tli, segment.segno.next()).file_name(seg_size);
        let (path, compression, partial) = match self.find(&next, false)? {
            Some((p, c)) => (p, c, false),
            None => match self.find(&next, true)? {
                Some((p, c)) => (p, c, true),
                None => return Ok(()),
            },
        };
        let mut reader =
            SegmentReader::open(&path, compression).map_err(|e| GetError::io("open", &path, e))?;
        let mut seen = Vec::new();
        let mut buf = vec![0u8; CHUNK];
        while dec.valid_end() < seg_end && dec.error().is_none() && dec.end_of_wal().is_none() {
            let (n, err) = read_keeping_error(&mut reader, &mut buf);
            let _ = dec.feed_with(&buf[..n], |_| {});
            seen.extend_from_slice(&buf[..n]);
            match err {
                None if n == buf.len() => {}
                None => break,
                Some(e) if partial && matches!(e.kind(), io::ErrorKind::UnexpectedEof) => break,
                Some(e) => {
                    return Err(GetError::damaged(
                        &path,
                        None,
                        format!("could not read it: {e}"),
                    ))
                }
            }
        }
        match dec.error() {
            Some(e)
                if !(partial
                    && crate::inspect::cut_short_by_zeros(&seen, seg_end.0, e.lsn(), seg_size)) =>
            {
                Err(GetError::damaged(
                    &path,
                    Some(e.lsn()),
                    format!("the record crossing into it from the previous segment: {e}"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The switch point where timeline `tli` ended, by the newest history file in the
    /// archive that names it, with that file's timeline.
    fn later_switchpoint(&self, tli: TimeLineId) -> Result<Option<(TimeLineId, Lsn)>, GetError> {
        let files =
            list_dir(&self.dir).map_err(|e| GetError::io("read directory", &self.dir, e))?;
        let mut later: Vec<TimeLineId> = files
            .iter()
            .filter_map(|f| parse_history_file_name(&f.name))
            .filter(|t| *t > tli)
            .collect();
        later.sort_unstable_by(|a, b| b.cmp(a));
        for t in later {
            let path = self.dir.join(history_file_name(t));
            let text = fs::read_to_string(&path).map_err(|e| GetError::io("read", &path, e))?;
            let history =
                parse_history(&text).map_err(|source| GetError::BadHistory { path, source })?;
            if let Some(entry) = history.iter().find(|e| e.tli == tli) {
                return Ok(Some((t, entry.switchpoint)));
            }
        }
        Ok(None)
    }

    /// The name of a complete segment of `segment`'s timeline after it, if any.
    fn later_complete_segment(
        &self,
        segment: SegmentName,
        seg_size: u64,
    ) -> Result<Option<String>, GetError> {
        let files =
            list_dir(&self.dir).map_err(|e| GetError::io("read directory", &self.dir, e))?;
        Ok(files.into_iter().map(|f| f.name).find(|n| {
            WalFileName::parse(n, seg_size).is_some_and(|w| {
                !w.partial && w.segment.tli == segment.tli && w.segment.segno > segment.segno
            })
        }))
    }

    fn fetch_history(&self, tli: TimeLineId) -> Result<Fetched, GetError> {
        let name = history_file_name(tli);
        let path = self.dir.join(&name);
        let bytes = self.read_text(&name, &path)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| GetError::damaged(&path, None, "it is not UTF-8 text"))?;
        parse_history(text).map_err(|source| GetError::BadHistory {
            path: path.clone(),
            source,
        })?;
        Ok(Fetched {
            bytes,
            source: path,
            served: Served::Text,
            seg_size: None,
        })
    }

    fn fetch_backup_history(&self, name: &str) -> Result<Fetched, GetError> {
        let path = self.dir.join(name);
        let bytes = self.read_text(name, &path)?;
        if !bytes.starts_with(b"START WAL LOCATION: ") {
            return Err(GetError::damaged(
                &path,
                None,
                "a backup history file begins with \"START WAL LOCATION: \"",
            ));
        }
        Ok(Fetched {
            bytes,
            source: path,
            served: Served::Text,
            seg_size: None,
        })
    }

    fn read_text(&self, name: &str, path: &Path) -> Result<Vec<u8>, GetError> {
        match fs::read(path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.not_found(name, None)),
            Err(e) => Err(GetError::io("read", path, e)),
        }
    }
}

/// The segment size a segment file's long page header declares.
fn seg_size_of(path: &Path, bytes: &[u8]) -> Result<u64, GetError> {
    match SegmentHeader::parse(bytes) {
        SegmentHeader::Valid { seg_size, .. } if is_valid_seg_size(u64::from(seg_size)) => {
            Ok(u64::from(seg_size))
        }
        SegmentHeader::Valid { seg_size, .. } => Err(GetError::damaged(
            path,
            None,
            format!("its first page header declares an invalid segment size {seg_size}"),
        )),
        _ => Err(GetError::damaged(
            path,
            None,
            format!(
                "its first {LONG_PAGE_HEADER} bytes are not the long page header of a WAL segment"
            ),
        )),
    }
}

fn segment_of(name: &str, seg_size: u64, path: &Path) -> Result<SegmentName, GetError> {
    SegmentName::parse(name, seg_size).ok_or_else(|| {
        GetError::damaged(
            path,
            None,
            format!("\"{name}\" is not a segment name for its segment size {seg_size}"),
        )
    })
}

/// The bytes of a `.partial`: all of an uncompressed one, and of a compressed one what
/// decompresses before its stream ends (a crash or a receiver still writing may cut it).
fn read_partial(path: &Path, compression: Compression) -> Result<Vec<u8>, GetError> {
    let mut reader =
        SegmentReader::open(path, compression).map_err(|e| GetError::io("open", path, e))?;
    let mut out = Vec::with_capacity(16 << 20);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let (n, err) = read_keeping_error(&mut reader, &mut buf);
        out.extend_from_slice(&buf[..n]);
        match err {
            None if n == buf.len() => {}
            None => return Ok(out),
            Some(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
                ) =>
            {
                return Ok(out)
            }
            Some(e) => return Err(GetError::io("read", path, e)),
        }
    }
}

/// The segment after `name` (same timeline), for a segment size.
pub fn next_segment(name: &str, seg_size: u64, k: u64) -> Option<String> {
    let s = SegmentName::parse(name, seg_size)?;
    Some(SegmentName::new(s.tli, SegNo(s.segno.0 + k)).file_name(seg_size))
}

/// Writes `bytes` to `dest` so that it appears whole or not at all: a temporary file
/// beside it (a dot name, which PostgreSQL ignores in pg_wal), renamed over `dest`. Not
/// fsynced: PostgreSQL fsyncs the restored files it keeps (xlogarchive.c
/// KeepFileRestoredFromArchive) and fetches the others again after a crash.
pub fn deliver(bytes: &[u8], dest: &Path) -> Result<(), GetError> {
    let tmp = temp_beside(dest);
    let result = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| GetError::io("write", &tmp, e))
        .and_then(|()| fs::rename(&tmp, dest).map_err(|e| GetError::io("rename", &tmp, e)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `DIR/.NAME.walferry.tmp` for `DIR/NAME`.
pub fn temp_beside(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.{}.walferry.tmp", std::process::id()))
}

/// The database system identifier in `datadir/global/pg_control` (its first field, in the
/// server's byte order, which is this host's), when the file is there.
pub fn pg_control_system_id(datadir: &Path) -> Option<u64> {
    let mut f = File::open(datadir.join("global").join("pg_control")).ok()?;
    let mut b = [0u8; 8];
    f.read_exact(&mut b).ok()?;
    Some(u64::from_ne_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::synth::WalBuilder;
    use crate::wal::SegNo;

    const SEG: u64 = 1 << 20;
    const SYSID: u64 = 7_401_234_567_890_123_456;

    fn name(tli: u32, segno: u64) -> String {
        SegmentName::new(TimeLineId(tli), SegNo(segno)).file_name(SEG)
    }

    /// Timeline 1 from segment 2 up to `end`, records of varied sizes (some cross pages
    /// and segments).
    fn wal(end: u64) -> WalBuilder {
        let mut b = WalBuilder::new(Lsn(2 * SEG), TimeLineId(1), SEG, SYSID);
        let sizes = [60usize, 300, 2500, 9000, 130, 26, 700, 40_000, 5000];
        let mut i = 0;
        while b.end().0 < end {
            b.filler(sizes[i % sizes.len()]);
            i += 1;
        }
        b
    }

    fn seg(b: &WalBuilder, segno: u64) -> &[u8] {
        let from = ((segno - 2) * SEG) as usize;
        &b.bytes()[from..(from + SEG as usize).min(b.bytes().len())]
    }

    /// Segments 2..=4 complete, 5 a zero-padded `.partial` (as a receiver leaves it).
    fn archive(b: &WalBuilder) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for segno in 2..=4 {
            fs::write(dir.path().join(name(1, segno)), seg(b, segno)).unwrap();
        }
        let mut last = seg(b, 5).to_vec();
        last.resize(SEG as usize, 0);
        fs::write(dir.path().join(format!("{}.partial", name(1, 5))), last).unwrap();
        dir
    }

    fn getter(dir: &Path) -> Getter {
        Getter::new(dir, Some(SYSID)).unwrap()
    }

    #[test]
    fn names_recovery_asks_for() {
        assert_eq!(
            Wanted::parse("000000010000000000000003"),
            Some(Wanted::Segment("000000010000000000000003".into()))
        );
        assert_eq!(
            Wanted::parse("0000000A.history"),
            Some(Wanted::History(TimeLineId(10)))
        );
        let backup = "000000010000000000000002.00000028.backup";
        assert_eq!(
            Wanted::parse(backup),
            Some(Wanted::BackupHistory(backup.into()))
        );
        for bad in [
            "pg_wal/RECOVERYXLOG",
            "000000010000000000000003.partial",
            "00000001.history.x",
            "",
        ] {
            assert_eq!(Wanted::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn complete_segments_are_served_checked_and_decompressed() {
        let b = wal(5 * SEG + 300_000);
        let dir = archive(&b);
        let g = getter(dir.path());
        let f = g.fetch(&name(1, 3)).unwrap();
        assert_eq!(f.served, Served::Complete);
        assert!(f.bytes == seg(&b, 3));
        assert_eq!(f.seg_size, Some(SEG));

        // Compressed: the same bytes.
        let path = dir.path().join(name(1, 3));
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        e.write_all(seg(&b, 3)).unwrap();
        fs::write(
            dir.path().join(format!("{}.zst", name(1, 3))),
            e.finish().unwrap(),
        )
        .unwrap();
        fs::remove_file(&path).unwrap();
        let f = g.fetch(&name(1, 3)).unwrap();
        assert!(f.bytes == seg(&b, 3));
        assert!(f.source.ends_with(format!("{}.zst", name(1, 3))));

        let err = g.fetch(&name(1, 9)).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(matches!(
            g.fetch("RECOVERYXLOG"),
            Err(GetError::BadName { .. })
        ));
    }

    #[test]
    fn a_damaged_segment_is_an_error_naming_file_and_lsn_never_not_found() {
        let b = wal(5 * SEG + 300_000);
        let dir = archive(&b);
        let mut bad = seg(&b, 3).to_vec();
        bad[500_000] ^= 0x10;
        fs::write(dir.path().join(name(1, 3)), &bad).unwrap();
        let err = getter(dir.path()).fetch(&name(1, 3)).unwrap_err();
        match &err {
            GetError::Damaged {
                path,
                lsn: Some(lsn),
                ..
            } => {
                assert!(path.ends_with(name(1, 3)));
                assert!(lsn.0 > 3 * SEG && lsn.0 <= 3 * SEG + 500_000, "{lsn}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!err.is_not_found());

        // Cut short, or zeros inside: damage too.
        fs::write(dir.path().join(name(1, 3)), &seg(&b, 3)[..SEG as usize / 2]).unwrap();
        assert!(matches!(
            getter(dir.path()).fetch(&name(1, 3)),
            Err(GetError::Damaged { .. })
        ));
        let mut zeroed = seg(&b, 3).to_vec();
        zeroed[700_000..].iter_mut().for_each(|x| *x = 0);
        fs::write(dir.path().join(name(1, 3)), &zeroed).unwrap();
        assert!(matches!(
            getter(dir.path()).fetch(&name(1, 3)),
            Err(GetError::Damaged { .. })
        ));

        // Another database system's WAL, refused by the restoring cluster's identifier.
        fs::write(dir.path().join(name(1, 3)), seg(&b, 3)).unwrap();
        let other = Getter::new(dir.path(), Some(SYSID + 1)).unwrap();
        let err = other.fetch(&name(1, 3)).unwrap_err().to_string();
        assert!(err.contains("different database system"), "{err}");
    }

    /// The record crossing from segment 3 into 4 is checked with segment 3.
    #[test]
    fn a_damaged_continuation_in_the_next_file_is_found_with_the_segment_before() {
        let b = wal(5 * SEG + 300_000);
        let dir = archive(&b);
        let four = seg(&b, 4);
        let rem = u32::from_le_bytes(four[16..20].try_into().unwrap()) as usize;
        assert!(rem > 100, "a record must cross into segment 4");
        let mut bad = four.to_vec();
        bad[LONG_PAGE_HEADER + rem / 2] ^= 0x01;
        fs::write(dir.path().join(name(1, 4)), &bad).unwrap();
        match getter(dir.path()).fetch(&name(1, 3)).unwrap_err() {
            GetError::Damaged { path, .. } => assert!(path.ends_with(name(1, 4))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_newest_partial_is_served_up_to_its_valid_end_then_zeros() {
        let b = wal(5 * SEG + 300_000);
        let dir = archive(&b);
        let f = getter(dir.path()).fetch(&name(1, 5)).unwrap();
        assert_eq!(f.served, Served::EndOfTimeline { end: b.end() });
        let valid = b.offset_of(b.end()) - 3 * SEG as usize;
        assert_eq!(f.bytes.len(), SEG as usize);
        assert!(f.bytes[..valid] == b.bytes()[3 * SEG as usize..]);
        assert!(f.bytes[valid..].iter().all(|&x| x == 0));

        // A record cut short by a crash (zeros where its tail should be) is its end.
        let mut torn = b.bytes()[3 * SEG as usize..].to_vec();
        let cut = torn.len() - 100;
        let last_start = b.offset_of(b.prev()) - 3 * SEG as usize;
        torn.truncate(cut.max(last_start + 30));
        torn.resize(SEG as usize, 0);
        fs::write(dir.path().join(format!("{}.partial", name(1, 5))), &torn).unwrap();
        let f = getter(dir.path()).fetch(&name(1, 5)).unwrap();
        assert!(matches!(f.served, Served::EndOfTimeline { end } if end == b.prev()));

        // A changed byte with valid WAL after it is damage, not the end.
        let mut bad = b.bytes()[3 * SEG as usize..].to_vec();
        bad[100_000] ^= 0x04;
        bad.resize(SEG as usize, 0);
        fs::write(dir.path().join(format!("{}.partial", name(1, 5))), &bad).unwrap();
        assert!(matches!(
            getter(dir.path()).fetch(&name(1, 5)),
            Err(GetError::Damaged { .. })
        ));
    }

    #[test]
    fn a_partial_with_a_complete_segment_after_it_is_missing_wal() {
        let b = wal(6 * SEG + 300_000);
        let dir = archive(&b);
        fs::write(dir.path().join(name(1, 6)), {
            let mut s = seg(&b, 6).to_vec();
            s.resize(SEG as usize, 0);
            s
        })
        .unwrap();
        let mut short = seg(&b, 5)[..400_000].to_vec();
        short.resize(SEG as usize, 0);
        fs::write(dir.path().join(format!("{}.partial", name(1, 5))), &short).unwrap();
        let err = getter(dir.path()).fetch(&name(1, 5)).unwrap_err();
        assert!(matches!(err, GetError::MissingWal { .. }), "{err}");
        assert!(err.to_string().contains(&name(1, 6)), "{err}");
    }

    #[test]
    fn an_old_timelines_partial_is_served_up_to_the_switch_point_of_the_later_history() {
        let b = wal(5 * SEG + 300_000);
        let dir = archive(&b);
        let d = dir.path();
        // The old timeline went on past the switch point (a server that kept writing).
        let mut full = seg(&b, 5).to_vec();
        full.resize(SEG as usize, 0);
        let switch = {
            // The end of some record well inside segment 5.
            let mut probe = wal(5 * SEG + 100_000);
            probe.filler(60);
            probe.end()
        };
        let history = |at: Lsn| format!("1\t{at}\tno recovery target specified\n");
        fs::write(d.join("00000002.history"), history(switch)).unwrap();
        let f = getter(d).fetch(&name(1, 5)).unwrap();
        assert_eq!(f.served, Served::EndOfTimeline { end: switch });
        let cut = (switch.0 - 5 * SEG) as usize;
        assert!(f.bytes[..cut] == full[..cut]);
        assert!(f.bytes[cut..].iter().all(|&x| x == 0));

        // Timeline 1 went on to segment 6 by the history: the .partial is a hole.
        fs::write(d.join("00000002.history"), history(Lsn(6 * SEG + 8192))).unwrap();
        assert!(matches!(
            getter(d).fetch(&name(1, 5)),
            Err(GetError::MissingWal { .. })
        ));
        // Timeline 1 ended before segment 5: it has no WAL there.
        fs::write(d.join("00000002.history"), history(Lsn(4 * SEG + 8192))).unwrap();
        assert!(getter(d).fetch(&name(1, 5)).unwrap_err().is_not_found());
    }

    #[test]
    fn history_and_backup_history_files_are_served_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let g = getter(d);
        assert!(g.fetch("00000002.history").unwrap_err().is_not_found());
        fs::write(d.join("00000002.history"), "1\t0/5000028\tbecause\n").unwrap();
        let f = g.fetch("00000002.history").unwrap();
        assert_eq!(f.bytes, b"1\t0/5000028\tbecause\n");
        fs::write(d.join("00000003.history"), "garbage\n").unwrap();
        assert!(matches!(
            g.fetch("00000003.history"),
            Err(GetError::BadHistory { .. })
        ));
        let backup = "000000010000000000000002.00000028.backup";
        fs::write(d.join(backup), "START WAL LOCATION: 0/2000028\n").unwrap();
        assert_eq!(g.fetch(backup).unwrap().served, Served::Text);
    }

    #[test]
    fn delivered_files_appear_whole() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        deliver(b"abc", &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"abc");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        let err = deliver(b"abc", &dir.path().join("nope/RECOVERYXLOG")).unwrap_err();
        assert!(!err.is_not_found());
    }
}
