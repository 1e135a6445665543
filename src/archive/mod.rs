//! The segment store: a directory of WAL segment files laid out the way pg_receivewal lays
//! them out, so either tool can resume the other's directory.
//!
//! Durability discipline (as Neon's `crashsafe::durable_rename`): a segment is written as
//! `NAME[.gz|.lz4|.zst].partial`, fsynced, renamed to its final name, and the directory is
//! fsynced. A segment's final name therefore always denotes a complete, durable segment.
//!
//! How an uncompressed `.partial` stays recognisable without pg_receivewal's zero
//! pre-padding: the file is created at its full segment size with `fallocate(2)`, which
//! reserves the blocks as *unwritten extents* (they read as zeros and cost no write). Its
//! size is the segment size, which is what pg_receivewal's resume checks for, and a full
//! disk is detected when the segment is created, before any WAL goes into it. On file
//! systems without `fallocate` the file is extended sparsely with `ftruncate`.
//! Both tools restart streaming at the start of a `.partial` segment, so the bytes beyond
//! the last write (zeros) are never trusted.

mod aligned;
mod compress;
pub mod get;
mod lock;
pub mod push;
mod reader;
mod scan;
mod segment_file;
pub mod spool;

pub use aligned::{AlignedBuf, DIRECT_ALIGN};
pub use compress::{decompressing, CompressSpecError, CompressionSpec, SegmentReader};
pub use lock::{ArchiveLock, LOCK_FILE};
pub use reader::{ArchiveReader, ReaderError, ReaderStats, SegmentSource};
pub use scan::{list_dir, ArchiveScan, DirFile, ScannedFile};
pub use segment_file::{SegmentWriter, Spare, SPARE_FILE};

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::wal::page::SegmentHeader;
use crate::wal::{history_file_name, Lsn, SegNo, SegmentName, TimeLineId};

/// Errors of the segment store. `path` always names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive disk is full while writing \"{path}\"")]
    DiskFull { path: PathBuf },
    #[error("could not {op} \"{path}\": {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("\"{path}\" already exists with different contents; refusing to overwrite it")]
    Conflict { path: PathBuf },
    #[error("archive directory \"{path}\" holds WAL of database system {found}, but the server is system {expected}; refusing to mix WAL of two database systems")]
    SystemMismatch {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error(
        "received WAL fails validation; it stays in \"{path}\" and was not acknowledged: {source}"
    )]
    InvalidWal {
        path: PathBuf,
        source: crate::wal::WalError,
    },
    #[error("archive directory \"{path}\" is in use by another walferry process{}; only one process may write an archive", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { path: PathBuf, pid: Option<u32> },
    #[error("WAL stream gap in \"{path}\": expected data at {expected}, got {got}")]
    Gap {
        path: PathBuf,
        expected: Lsn,
        got: Lsn,
    },
}

impl ArchiveError {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::StorageFull
            || source.raw_os_error() == Some(libc::ENOSPC)
            || source.raw_os_error() == Some(libc::EDQUOT)
        {
            return ArchiveError::DiskFull {
                path: path.to_path_buf(),
            };
        }
        ArchiveError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn is_disk_full(&self) -> bool {
        matches!(self, ArchiveError::DiskFull { .. })
    }
}

/// An archive directory of WAL segments.
#[derive(Debug, Clone)]
pub struct Archive {
    dir: PathBuf,
    seg_size: u64,
    compression: CompressionSpec,
    /// `--no-sync`: skip every fsync (tests, or a file system with its own guarantees).
    no_sync: bool,
    /// Write new uncompressed segments full of zeros before use instead of preallocating
    /// them (see [`Archive::zero_filled`]).
    zero_fill: bool,
}

impl Archive {
    /// Open an existing directory. It is not created: a typo in `-D` should be an error,
    /// as it is for pg_receivewal.
    pub fn open(
        dir: &Path,
        seg_size: u64,
        compression: CompressionSpec,
        no_sync: bool,
    ) -> Result<Self, ArchiveError> {
        Self::check_dir(dir)?;
        Ok(Archive {
            dir: dir.to_path_buf(),
            seg_size,
            compression,
            no_sync,
            zero_fill: false,
        })
    }

    /// `dir` exists and is a directory (checked before anything connects, so a typo in
    /// `-D` is reported at once instead of being retried).
    pub fn check_dir(dir: &Path) -> Result<(), ArchiveError> {
        is_dir(dir).map_err(|(op, e)| ArchiveError::io(op, dir, e))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn seg_size(&self) -> u64 {
        self.seg_size
    }

    pub fn compression(&self) -> CompressionSpec {
        self.compression
    }

    /// For `--synchronous`: fill each new uncompressed segment with zeros (one write, one
    /// fsync) before any WAL goes into it, as pg_receivewal does and as a standby's recycled
    /// segments are. Then every later fdatasync flushes data only; into preallocated
    /// (unwritten) extents each one would also commit an extent conversion to the file
    /// system journal, which is what a synchronous primary waits for on every commit.
    /// Catch-up (async) keeps the cheaper preallocation.
    pub fn zero_filled(mut self, on: bool) -> Self {
        self.zero_fill = on;
        self
    }

    pub fn zero_fill(&self) -> bool {
        self.zero_fill
    }

    pub fn no_sync(&self) -> bool {
        self.no_sync
    }

    pub fn path_of(&self, file_name: &str) -> PathBuf {
        self.dir.join(file_name)
    }

    /// List the WAL and history files in the directory.
    pub fn scan(&self) -> Result<ArchiveScan, ArchiveError> {
        ArchiveScan::read(&self.dir, self.seg_size)
    }

    /// Where streaming should start, as pg_receivewal's FindStreamingStart: after the newest
    /// complete segment, or at the start of the newest `.partial` one.
    pub fn streaming_start(&self) -> Result<Option<(Lsn, TimeLineId)>, ArchiveError> {
        Ok(self.scan()?.streaming_start(self.seg_size))
    }

    /// Give their final names to the full `.partial` segments at the end of the archive that
    /// can be proven whole and valid from the disk: uncompressed, not the newest file, and
    /// with the record crossing their end complete and valid in the next file (decoded with
    /// [`ArchiveReader`]). A stop inside that record leaves such segments behind; finishing
    /// them here spares streaming them again, which without a slot may no longer be possible
    /// (the server may have recycled them). Whatever cannot be proven is left for resume to
    /// stream again. Returns the names given.
    pub fn finish_proven_partials(&self) -> Result<Vec<String>, ArchiveError> {
        let scan = self.scan()?;
        let run = scan.partial_run();
        let Some((_newest, older)) = run.split_last() else {
            return Ok(Vec::new());
        };
        let mut reader = match ArchiveReader::open(&self.dir, self.seg_size) {
            Ok(r) => r,
            Err(_) => return Ok(Vec::new()),
        };
        let mut finished = Vec::new();
        for f in older {
            let seg = f.wal.segment;
            let start = seg.segno.start_lsn(self.seg_size);
            let end = seg.segno.next().start_lsn(self.seg_size);
            let path = self.dir.join(&f.name);
            let proven = f.wal.compression == crate::wal::Compression::None
                && f.len == self.seg_size
                && reader
                    .locate(seg.tli, &[], start)
                    .is_ok_and(|src| src.path == path && src.end == end);
            if !proven {
                break;
            }
            if !self.no_sync {
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| ArchiveError::io("fsync", &path, e))?;
            }
            let mut done = f.wal;
            done.partial = false;
            let name = done.file_name(self.seg_size);
            if self
                .durable_rename_noreplace(&path, &self.dir.join(&name))?
                .is_err()
            {
                break;
            }
            tracing::info!("finished segment {name}: whole and valid on disk");
            finished.push(name);
        }
        Ok(finished)
    }

    /// The database system identifier recorded in the newest readable segment's long page
    /// header, if the directory holds any WAL.
    pub fn system_identifier(&self) -> Result<Option<u64>, ArchiveError> {
        let scan = self.scan()?;
        for file in scan.segments_newest_first() {
            let path = self.dir.join(&file.name);
            let mut header = [0u8; 40];
            let read = SegmentReader::open(&path, file.wal.compression)
                .and_then(|mut r| read_up_to(&mut r, &mut header));
            match read {
                Ok(40) => match SegmentHeader::parse(&header) {
                    SegmentHeader::Valid { sysid, .. } => return Ok(Some(sysid)),
                    // A zero page is an unwritten (fallocated) .partial: look further back.
                    SegmentHeader::Empty | SegmentHeader::Invalid => continue,
                },
                Ok(_) => continue,
                // A .partial cut short by a crash (a compressed stream that ends inside its
                // header, or before its first block) tells nothing; it is streamed again.
                Err(_) if file.wal.partial => continue,
                Err(e) => return Err(ArchiveError::io("read", &path, e)),
            }
        }
        Ok(None)
    }

    /// Refuse to mix clusters: the directory's WAL must come from `expected`.
    pub fn check_system_identifier(&self, expected: u64) -> Result<(), ArchiveError> {
        match self.system_identifier()? {
            Some(found) if found != expected => Err(ArchiveError::SystemMismatch {
                path: self.dir.clone(),
                found,
                expected,
            }),
            _ => Ok(()),
        }
    }

    pub fn has_history(&self, tli: TimeLineId) -> bool {
        self.dir.join(history_file_name(tli)).exists()
    }

    /// Store a timeline history file durably. Storing identical contents again is a no-op;
    /// different contents under the same name are an error, never an overwrite.
    pub fn write_history(&self, tli: TimeLineId, content: &[u8]) -> Result<(), ArchiveError> {
        let name = history_file_name(tli);
        self.write_file_durably(&name, content)
    }

    /// Write a small whole file durably: `NAME.tmp`, fsync, rename, fsync the directory.
    pub fn write_file_durably(&self, name: &str, content: &[u8]) -> Result<(), ArchiveError> {
        let path = self.dir.join(name);
        match fs::read(&path) {
            Ok(existing) if existing == content => return Ok(()),
            Ok(_) => return Err(ArchiveError::Conflict { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ArchiveError::io("read", &path, e)),
        }
        let tmp = self.dir.join(format!("{name}.tmp"));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(|e| ArchiveError::io("create", &tmp, e))?;
            f.write_all(content)
                .map_err(|e| ArchiveError::io("write", &tmp, e))?;
            if !self.no_sync {
                f.sync_all()
                    .map_err(|e| ArchiveError::io("fsync", &tmp, e))?;
            }
            self.durable_rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Start writing a segment (as `.partial`).
    pub fn create_segment(&self, segment: SegmentName) -> Result<SegmentWriter, ArchiveError> {
        SegmentWriter::create(self, segment, 0, None)
    }

    /// As [`Archive::create_segment`], saying how long its first write is: one that will go
    /// by direct I/O (catch-up sized) preallocates the segment even when the archive
    /// zero-fills. Per-commit fsync latency does not matter for it, and 16 MiB of zeros
    /// written through the page cache (which the direct writes of the WAL then have the
    /// kernel invalidate) cost more CPU than the WAL itself. A segment that is zero-filled
    /// becomes `spare`'s file when one is ready, and `spare` starts on the next.
    pub fn create_segment_with(
        &self,
        segment: SegmentName,
        first_write: usize,
        spare: &mut Spare,
    ) -> Result<SegmentWriter, ArchiveError> {
        SegmentWriter::create(self, segment, first_write, Some(spare))
    }

    pub(crate) fn durable_rename(&self, from: &Path, to: &Path) -> Result<(), ArchiveError> {
        fs::rename(from, to).map_err(|e| ArchiveError::io("rename", from, e))?;
        self.sync_dir()
    }

    /// As [`Archive::durable_rename`], but never replacing `to`: an existing `to` is an
    /// `AlreadyExists` error (checked by the kernel in the same step, so no race).
    pub(crate) fn durable_rename_noreplace(
        &self,
        from: &Path,
        to: &Path,
    ) -> Result<Result<(), io::Error>, ArchiveError> {
        match rename_noreplace(from, to) {
            Ok(()) => self.sync_dir().map(Ok),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Err(e)),
            Err(e) => Err(ArchiveError::io("rename", from, e)),
        }
    }

    pub(crate) fn sync_dir(&self) -> Result<(), ArchiveError> {
        if self.no_sync {
            return Ok(());
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ArchiveError::io("fsync directory", &self.dir, e))
    }

    pub fn segment_start(&self, segno: SegNo) -> Lsn {
        segno.start_lsn(self.seg_size)
    }
}

/// The segment size in the long page header of the segment file at `path`, stored as
/// `compression`; `None` when it holds no valid header (yet).
pub fn seg_size_of_file(path: &Path, compression: crate::wal::Compression) -> Option<u64> {
    let mut head = [0u8; crate::wal::page::LONG_PAGE_HEADER];
    SegmentReader::open(path, compression)
        .ok()?
        .read_exact(&mut head)
        .ok()?;
    match SegmentHeader::parse(&head) {
        SegmentHeader::Valid { seg_size, .. }
            if crate::wal::page::is_valid_seg_size(u64::from(seg_size)) =>
        {
            Some(u64::from(seg_size))
        }
        _ => None,
    }
}

/// `dir` exists and is a directory; else what failed ("access directory", "use directory").
pub(crate) fn is_dir(dir: &Path) -> Result<(), (&'static str, io::Error)> {
    let meta = fs::metadata(dir).map_err(|e| ("access directory", e))?;
    if !meta.is_dir() {
        let e = io::Error::new(io::ErrorKind::NotADirectory, "not a directory");
        return Err(("use directory", e));
    }
    Ok(())
}

/// Read until `buf` is full, the reader ends, or an error; returns the bytes read and the
/// error (unlike [`read_up_to`], the bytes before an error are kept).
pub(crate) fn read_keeping_error(r: &mut impl Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (filled, Some(e)),
        }
    }
    (filled, None)
}

/// Read until `buf` is full or the reader ends; returns the bytes read.
pub(crate) fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    match read_keeping_error(r, buf) {
        (n, None) => Ok(n),
        (_, Some(e)) => Err(e),
    }
}

/// Rename without replacing an existing target: renameat2(RENAME_NOREPLACE), or where the
/// file system lacks it, link(2) (which never replaces either) and unlink of the old name.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (cf, ct) = (c(from)?, c(to)?);
    // SAFETY: both paths are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cf.as_ptr(),
            libc::AT_FDCWD,
            ct.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        _ => Err(err),
    }
}

/// Open for writing without truncating (an existing `.partial` keeps its durable bytes
/// until they are overwritten with the same WAL).
pub(crate) fn open_rw(path: &Path, truncate: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate)
        .open(path)
}

#[cfg(test)]
mod finish_proven_tests {
    use super::*;
    use crate::wal::synth::WalBuilder;

    const SEG: u64 = 1 << 20;
    const SYSID: u64 = 7_400_000_000_000_000_001;
    const SEG1: &str = "000000010000000000000001";
    const SEG2: &str = "000000010000000000000002";

    /// Segment 1 and 200 KB of segment 2; the end of the record crossing into segment 2.
    fn wal() -> (Vec<u8>, u64) {
        let mut b = WalBuilder::new(Lsn(SEG), TimeLineId(1), SEG, SYSID);
        let mut crossing_end = 0;
        while b.end().0 < 2 * SEG + 200_000 {
            let lsn = b.filler(3000);
            if lsn.0 < 2 * SEG && b.end().0 > 2 * SEG {
                crossing_end = b.end().0;
            }
        }
        (b.into_bytes(), crossing_end)
    }

    /// Lays out segment 1 whole as `.partial`, and segment 2's `.partial` with its first
    /// `seg2_len` bytes (zeros after, as preallocated).
    fn lay_out(dir: &Path, wal: &[u8], seg2_len: usize) {
        fs::write(dir.join(format!("{SEG1}.partial")), &wal[..SEG as usize]).unwrap();
        let mut two = wal[SEG as usize..SEG as usize + seg2_len].to_vec();
        two.resize(SEG as usize, 0);
        fs::write(dir.join(format!("{SEG2}.partial")), two).unwrap();
    }

    #[test]
    fn a_full_partial_whose_crossing_record_is_on_disk_is_finished_without_restreaming() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, crossing_end) = wal();
        lay_out(dir.path(), &wal, (crossing_end - 2 * SEG) as usize + 5000);
        let archive = Archive::open(dir.path(), SEG, CompressionSpec::None, false).unwrap();
        assert_eq!(
            archive.finish_proven_partials().unwrap(),
            vec![SEG1.to_string()]
        );
        assert_eq!(
            fs::read(dir.path().join(SEG1)).unwrap(),
            &wal[..SEG as usize]
        );
        assert!(!dir.path().join(format!("{SEG1}.partial")).exists());
        assert_eq!(
            archive.streaming_start().unwrap(),
            Some((Lsn(2 * SEG), TimeLineId(1)))
        );
    }

    #[test]
    fn a_full_partial_whose_crossing_record_is_cut_short_stays_for_restreaming() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, crossing_end) = wal();
        lay_out(dir.path(), &wal, ((crossing_end - 2 * SEG) / 2) as usize);
        let archive = Archive::open(dir.path(), SEG, CompressionSpec::None, false).unwrap();
        assert!(archive.finish_proven_partials().unwrap().is_empty());
        assert!(dir.path().join(format!("{SEG1}.partial")).exists());
        assert!(!dir.path().join(SEG1).exists());
        assert_eq!(
            archive.streaming_start().unwrap(),
            Some((Lsn(SEG), TimeLineId(1)))
        );
        // Damage in segment 1 is never finished either, whatever follows.
        let mut bad = wal.clone();
        bad[300_000] ^= 0x40;
        lay_out(dir.path(), &bad, (crossing_end - 2 * SEG) as usize + 5000);
        assert!(archive.finish_proven_partials().unwrap().is_empty());
        assert!(!dir.path().join(SEG1).exists());
    }
}
