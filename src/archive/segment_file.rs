//! One segment being written: `.partial` until complete, then durably renamed.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::aligned::DIRECT_ALIGN;
use super::{open_rw, Archive, ArchiveError, CompressionSpec};
use crate::wal::{Compression, SegmentName, WalFileName};

enum Sink {
    /// Positional writes into the preallocated file.
    Plain(PlainSink),
    Gzip(flate2::write::GzEncoder<File>),
    Lz4(lz4_flex::frame::FrameEncoder<File>),
    Zstd(zstd::stream::write::Encoder<'static, File>),
}

/// Writes one segment. Bytes must arrive in order; `written` is how many bytes of the
/// segment have been handed to the kernel (or encoder), `synced` how many are durable.
/// Invariant: `synced <= written <= seg_size`.
pub struct SegmentWriter {
    archive: Archive,
    segment: SegmentName,
    sink: Option<Sink>,
    partial_path: PathBuf,
    final_path: PathBuf,
    written: u64,
    synced: u64,
}

impl SegmentWriter {
    pub(super) fn create(
        archive: &Archive,
        segment: SegmentName,
        first_write: usize,
        spare: Option<&mut Spare>,
    ) -> Result<Self, ArchiveError> {
        let seg_size = archive.seg_size();
        let kind = archive.compression().kind();
        let final_name = WalFileName {
            segment,
            compression: kind,
            partial: false,
        };
        let partial_path = archive.path_of(&format!("{}.partial", final_name.file_name(seg_size)));
        let final_path = archive.path_of(&final_name.file_name(seg_size));

        // An uncompressed .partial is overwritten in place (its durable bytes stay valid
        // until replaced by the same WAL); a compressed one must restart its stream.
        let existed = partial_path.exists();
        // See Archive::create_segment_with.
        let zeroed = kind == Compression::None && archive.zero_fill() && first_write < DIRECT_MIN;
        let mut adopted = false;
        if let (true, false, Some(spare)) = (zeroed, existed, spare) {
            adopted = spare.adopt(&partial_path);
            // The segment after this one, made while this one fills.
            spare.prepare();
        }
        let file = open_rw(&partial_path, kind != Compression::None)
            .map_err(|e| ArchiveError::io("create", &partial_path, e))?;
        let sink = match archive.compression() {
            CompressionSpec::None => {
                let prepared = if adopted {
                    Ok(())
                } else if zeroed {
                    zero_fill(&file, seg_size)
                } else {
                    preallocate(&file, seg_size)
                };
                if let Err(e) = prepared {
                    // Leave no empty .partial of ours behind: resume starts at the newest
                    // .partial, and an empty one would skip an earlier segment that is
                    // still incomplete (it would never get its final name).
                    if !existed {
                        let _ = fs::remove_file(&partial_path);
                    }
                    return Err(ArchiveError::io("preallocate", &partial_path, e));
                }
                // A zero-filled segment's pages are in the page cache: WAL goes there too
                // (a direct write would have the kernel invalidate them first).
                Sink::Plain(PlainSink::new(file, &partial_path, !zeroed))
            }
            CompressionSpec::Gzip(level) => Sink::Gzip(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::new(level),
            )),
            CompressionSpec::Lz4 => Sink::Lz4(lz4_flex::frame::FrameEncoder::new(file)),
            CompressionSpec::Zstd(level) => Sink::Zstd(
                zstd::stream::write::Encoder::new(file, level)
                    .map_err(|e| ArchiveError::io("start zstd stream for", &partial_path, e))?,
            ),
        };
        if !archive.no_sync() {
            // The new directory entry must be durable before we acknowledge WAL in it.
            match &sink {
                Sink::Plain(p) => p.file.sync_all(),
                _ => Ok(()),
            }
            .map_err(|e| ArchiveError::io("fsync", &partial_path, e))?;
            archive.sync_dir()?;
        }
        Ok(SegmentWriter {
            archive: archive.clone(),
            segment,
            sink: Some(sink),
            partial_path,
            final_path,
            written: 0,
            synced: 0,
        })
    }

    pub fn segment(&self) -> SegmentName {
        self.segment
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn synced(&self) -> u64 {
        self.synced
    }

    pub fn is_full(&self) -> bool {
        self.written == self.archive.seg_size()
    }

    pub fn partial_path(&self) -> &std::path::Path {
        &self.partial_path
    }

    /// Append `data` at segment offset `self.written()`.
    pub fn write(&mut self, data: &[u8]) -> Result<(), ArchiveError> {
        let end = self.written + data.len() as u64;
        assert!(end <= self.archive.seg_size(), "write past segment end");
        let offset = self.written;
        let result = match self.sink.as_mut().expect("segment writer used after close") {
            Sink::Plain(p) => p.write_all_at(data, offset),
            Sink::Gzip(w) => w.write_all(data),
            Sink::Lz4(w) => w.write_all(data),
            Sink::Zstd(w) => w.write_all(data),
        };
        result.map_err(|e| ArchiveError::io("write", &self.partial_path, e))?;
        self.written = end;
        Ok(())
    }

    /// Append `data` at segment offset `self.written()` and make everything written so far
    /// durable, in one system call where it can: a small write to an uncompressed segment
    /// with nothing else pending goes out with `pwritev2(RWF_DSYNC)`, the write and its
    /// fdatasync in one (what `--synchronous` does once per commit). Otherwise, and where
    /// the kernel or file system lacks per-write sync, [`SegmentWriter::write`] then
    /// [`SegmentWriter::sync`].
    pub fn write_durable(&mut self, data: &[u8]) -> Result<(), ArchiveError> {
        let end = self.written + data.len() as u64;
        assert!(end <= self.archive.seg_size(), "write past segment end");
        let offset = self.written;
        let one_call = self.synced == self.written && !self.archive.no_sync();
        if let (true, Some(Sink::Plain(p))) = (one_call, self.sink.as_mut()) {
            if p.dsync && data.len() < DIRECT_MIN {
                match pwrite_dsync(&p.file, data, offset) {
                    Ok(()) => {
                        self.written = end;
                        self.synced = end;
                        return Ok(());
                    }
                    Err(e) if unsupported(&e) => p.dsync = false,
                    Err(e) => return Err(ArchiveError::io("write", &self.partial_path, e)),
                }
            }
        }
        self.write(data)?;
        self.sync()
    }

    /// A second descriptor of an uncompressed segment, for another thread to fdatasync
    /// (then [`SegmentWriter::note_synced`]); `None` for a compressed one, whose
    /// compressor holds bytes back, and under `--no-sync`.
    pub fn sync_handle(&self) -> Result<Option<File>, ArchiveError> {
        match self.sink.as_ref() {
            Some(Sink::Plain(p)) if !self.archive.no_sync() => {
                p.file.try_clone().map(Some).map_err(|e| {
                    ArchiveError::io("duplicate the descriptor of", &self.partial_path, e)
                })
            }
            _ => Ok(None),
        }
    }

    /// Another thread made the first `bytes` of the segment durable.
    pub fn note_synced(&mut self, bytes: u64) {
        self.synced = self.synced.max(bytes.min(self.written));
    }

    /// Make everything written so far durable (flushing the compressor first).
    pub fn sync(&mut self) -> Result<(), ArchiveError> {
        if self.synced == self.written {
            return Ok(());
        }
        let no_sync = self.archive.no_sync();
        let result = match self.sink.as_mut().expect("segment writer used after close") {
            Sink::Plain(p) => sync_data(&p.file, no_sync),
            Sink::Gzip(w) => w.flush().and_then(|_| sync_data(w.get_ref(), no_sync)),
            Sink::Lz4(w) => w.flush().and_then(|_| sync_data(w.get_ref(), no_sync)),
            Sink::Zstd(w) => w.flush().and_then(|_| sync_data(w.get_ref(), no_sync)),
        };
        result.map_err(|e| ArchiveError::io("fsync", &self.partial_path, e))?;
        self.synced = self.written;
        Ok(())
    }

    /// The segment is complete: end the compressed stream, fsync, rename to the final name
    /// and fsync the directory. An identical segment already there makes this a no-op; a
    /// different one is a conflict.
    pub fn finish(mut self) -> Result<(), ArchiveError> {
        assert!(self.is_full(), "finish() on an incomplete segment");
        // Every byte of an uncompressed segment that was made durable (fdatasync: its data
        // and what it takes to read them back; the size was set when it was created) needs
        // no fsync of its own: that would only commit its timestamps to the journal, one
        // more journal commit per segment while the primary waits.
        let durable = self.synced == self.written && matches!(self.sink, Some(Sink::Plain(_)));
        let file = self.end_stream()?;
        if !self.archive.no_sync() && !durable {
            file.sync_all()
                .map_err(|e| ArchiveError::io("fsync", &self.partial_path, e))?;
        }
        drop(file);
        // Never replace a complete segment (a check before a plain rename would race with
        // any other writer): the rename itself refuses an existing name.
        if self
            .archive
            .durable_rename_noreplace(&self.partial_path, &self.final_path)?
            .is_ok()
        {
            return Ok(());
        }
        if !same_contents(&self.partial_path, &self.final_path)? {
            return Err(ArchiveError::Conflict {
                path: self.final_path.clone(),
            });
        }
        fs::remove_file(&self.partial_path)
            .map_err(|e| ArchiveError::io("remove", &self.partial_path, e))?;
        self.archive.sync_dir()
    }

    /// Stop writing an incomplete segment: make it durable and leave it as `.partial`
    /// (end of timeline, shutdown, `--endpos`).
    pub fn close_partial(mut self) -> Result<(), ArchiveError> {
        let file = self.end_stream()?;
        if !self.archive.no_sync() {
            file.sync_all()
                .map_err(|e| ArchiveError::io("fsync", &self.partial_path, e))?;
        }
        Ok(())
    }

    fn end_stream(&mut self) -> Result<File, ArchiveError> {
        let sink = self.sink.take().expect("segment writer used after close");
        let result = match sink {
            Sink::Plain(p) => Ok(p.file),
            Sink::Gzip(w) => w.finish(),
            Sink::Lz4(w) => w.finish().map_err(io::Error::other),
            Sink::Zstd(w) => w.finish(),
        };
        result.map_err(|e| ArchiveError::io("finish compressed stream in", &self.partial_path, e))
    }
}

/// The least run of whole pages worth a direct write: catch-up sizes. A commit's few
/// kilobytes in `--synchronous` mode stay buffered, so that they cost one device round trip
/// (the fdatasync), not two.
/// The same size decides whether a new segment is zero-filled ([`Archive::create_segment_with`]).
const DIRECT_MIN: usize = 64 * 1024;
/// Bounce buffer size, for page runs that are not page-aligned in memory.
const BOUNCE_LEN: usize = 128 * 1024;

/// An uncompressed segment. The whole pages of a write of at least [`DIRECT_MIN`] bytes (all
/// of catch-up, where the walsender sends 128 KiB on 8 KiB page boundaries) are written with
/// `O_DIRECT`: that skips the copy into the page cache and its bookkeeping, most of the
/// receive path's CPU time (this archive is written once and read rarely). Batches from
/// [`AlignedBuf`](super::AlignedBuf) go straight from their memory; other data through an
/// aligned bounce buffer. Partial pages at either end, and small writes, use the ordinary
/// buffered descriptor. Both descriptors refer to one inode; the kernel keeps direct and
/// buffered writes coherent, and fsync on either makes both durable.
struct PlainSink {
    file: File,
    direct: Option<DirectWriter>,
    /// Per-write sync (`RWF_DSYNC`) works here; cleared at the first refusal.
    dsync: bool,
}

struct DirectWriter {
    file: File,
    /// Over-allocated so that an aligned window of `BOUNCE_LEN` fits inside; made on first use.
    bounce: Vec<u8>,
}

impl PlainSink {
    fn new(file: File, path: &std::path::Path, direct: bool) -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        // File systems without direct I/O (tmpfs on older kernels) refuse the open:
        // then every write is buffered.
        let direct = direct
            .then(|| {
                fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)
                    .ok()
            })
            .flatten()
            .map(|file| DirectWriter {
                file,
                bounce: Vec::new(),
            });
        PlainSink {
            file,
            direct,
            dsync: true,
        }
    }

    fn write_all_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        let align = DIRECT_ALIGN as u64;
        // Bytes up to the next page boundary, then whole pages, then the rest.
        let head = ((align - offset % align) % align) as usize;
        let pages = data.len().saturating_sub(head) / DIRECT_ALIGN * DIRECT_ALIGN;
        let Some(direct) = self.direct.as_mut().filter(|_| pages >= DIRECT_MIN) else {
            return self.file.write_all_at(data, offset);
        };
        let (first, rest) = data.split_at(head);
        let (middle, last) = rest.split_at(pages);
        let middle_at = offset + head as u64;
        self.file.write_all_at(first, offset)?;
        match direct.write_all_at(middle, middle_at) {
            Ok(()) => {}
            // The file system accepted O_DIRECT at open but not these writes: stop
            // trying and write buffered from now on.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.direct = None;
                self.file.write_all_at(middle, middle_at)?;
            }
            Err(e) => return Err(e),
        }
        self.file.write_all_at(last, middle_at + pages as u64)
    }
}

impl DirectWriter {
    /// `data` covers whole pages from the page-aligned `offset`.
    fn write_all_at(&mut self, data: &[u8], mut offset: u64) -> io::Result<()> {
        if data.as_ptr().align_offset(DIRECT_ALIGN) == 0 {
            return self.file.write_all_at(data, offset);
        }
        if self.bounce.is_empty() {
            self.bounce = vec![0u8; BOUNCE_LEN + DIRECT_ALIGN];
        }
        let start = self.bounce.as_ptr().align_offset(DIRECT_ALIGN);
        let window = &mut self.bounce[start..start + BOUNCE_LEN];
        for piece in data.chunks(BOUNCE_LEN) {
            window[..piece.len()].copy_from_slice(piece);
            self.file.write_all_at(&window[..piece.len()], offset)?;
            offset += piece.len() as u64;
        }
        Ok(())
    }
}

/// Compare two files in small chunks (memory stays bounded: segments can be 1 GiB).
fn same_contents(a: &std::path::Path, b: &std::path::Path) -> Result<bool, ArchiveError> {
    use std::io::Read;
    let open = |p: &std::path::Path| File::open(p).map_err(|e| ArchiveError::io("read", p, e));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let len = |f: &File, p| {
        f.metadata()
            .map(|m| m.len())
            .map_err(|e| ArchiveError::io("stat", p, e))
    };
    if len(&fa, a)? != len(&fb, b)? {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 256 * 1024], vec![0u8; 256 * 1024]);
    loop {
        let n = fa
            .read(&mut ba)
            .map_err(|e| ArchiveError::io("read", a, e))?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])
            .map_err(|e| ArchiveError::io("read", b, e))?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// `pwritev2(..., RWF_DSYNC)` until all of `data` is written: each call returns only once
/// its bytes are durable, as write + fdatasync would.
fn pwrite_dsync(f: &File, mut data: &[u8], mut offset: u64) -> io::Result<()> {
    while !data.is_empty() {
        let iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: one iovec over `data`, which outlives the call; a valid open descriptor.
        let n = unsafe {
            libc::pwritev2(
                f.as_raw_fd(),
                &iov,
                1,
                offset as libc::off_t,
                libc::RWF_DSYNC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        data = &data[n as usize..];
        offset += n as u64;
    }
    Ok(())
}

/// The kernel or file system cannot do per-write sync.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

fn sync_data(f: &File, no_sync: bool) -> io::Result<()> {
    if no_sync {
        Ok(())
    } else {
        f.sync_data()
    }
}

/// The spare segment's file name in the archive directory: not a WAL file name, so every
/// scan of the archive passes it by.
pub const SPARE_FILE: &str = ".walferry-spare-segment";

/// A zero-filled, durable, segment-sized file made ahead on a thread of its own, which the
/// next zero-filled segment of a live stream becomes by a rename: 16 MiB of zeros and
/// their fsync (20-25 ms on this project's test machine, under load) are then off the
/// path every commit waits on. Made again, in the background, each time one is used; a
/// file left by an earlier run is rewritten, not trusted.
pub struct Spare {
    path: PathBuf,
    seg_size: u64,
    no_sync: bool,
    job: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl Spare {
    pub fn new(archive: &Archive) -> Self {
        Spare {
            path: archive.path_of(SPARE_FILE),
            seg_size: archive.seg_size(),
            no_sync: archive.no_sync(),
            job: None,
        }
    }

    /// Start making a spare unless one is ready or being made.
    pub fn prepare(&mut self) {
        if self.job.is_some() {
            return;
        }
        let (path, size, no_sync) = (self.path.clone(), self.seg_size, self.no_sync);
        let made = std::thread::Builder::new()
            .name("walferry-spare".into())
            .spawn(move || {
                let file = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)?;
                zero_fill(&file, size)?;
                if !no_sync {
                    file.sync_all()?;
                }
                Ok(())
            });
        match made {
            Ok(job) => self.job = Some(job),
            Err(e) => tracing::warn!("could not start the thread that prepares segments: {e}"),
        }
    }

    /// Rename the spare (waiting for it if it is still being made) to `to`. False when
    /// there is none or it failed: the caller zero-fills `to` itself.
    fn adopt(&mut self, to: &Path) -> bool {
        let Some(job) = self.job.take() else {
            return false;
        };
        let made = job
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the thread panicked")));
        let adopted = made.and_then(|()| fs::rename(&self.path, to));
        if let Err(e) = &adopted {
            tracing::warn!(
                "could not prepare a segment ahead in \"{}\": {e}; zero-filling it in place",
                self.path.display()
            );
        }
        adopted.is_ok()
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        // Not left writing into a directory that may be going away.
        if let Some(job) = self.job.take() {
            let _ = job.join();
        }
    }
}

/// Write zeros from the file's current end to `size` (data that is already there stays).
fn zero_fill(f: &File, size: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = f.metadata()?.len();
    while at < size {
        let n = zeros.len().min((size - at) as usize);
        f.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Give the file its full size without writing it: unwritten extents where the file
/// system has them, a sparse extension elsewhere.
fn preallocate(f: &File, size: u64) -> io::Result<()> {
    // SAFETY: fallocate on a valid, open file descriptor; no memory is passed.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, size as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
            if f.metadata()?.len() < size {
                f.set_len(size)?;
            }
            Ok(())
        }
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{SegNo, TimeLineId};

    const SEG: u64 = 1 << 20;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    /// Aligned chunks go direct, unaligned ones buffered; the file must hold exactly the
    /// bytes written, in order, whichever path each chunk took.
    #[test]
    fn mixed_direct_and_buffered_writes_produce_the_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path(), SEG, CompressionSpec::None, false).unwrap();
        let name = SegmentName::new(TimeLineId(1), SegNo(3));
        let mut w = archive.create_segment(name).unwrap();
        let data = pattern(SEG as usize);
        // Aligned 128 KiB + 8 KiB pieces, then unaligned ones, then aligned again
        // after an unaligned run lands back on a boundary, then a large aligned one.
        let cuts = [
            0usize, 131072, 139264, 139300, 143360, 200000, 204800, 600000, 1048576,
        ];
        for pair in cuts.windows(2) {
            w.write(&data[pair[0]..pair[1]]).unwrap();
        }
        assert!(w.is_full());
        w.finish().unwrap();
        let written = std::fs::read(dir.path().join("000000010000000000000003")).unwrap();
        assert_eq!(written.len(), data.len());
        assert!(
            written == data,
            "segment contents differ from what was written"
        );
        assert!(!dir.path().join("000000010000000000000003.partial").exists());
    }

    /// Batches from an `AlignedBuf` starting anywhere in a page: buffered head and tail,
    /// direct pages straight from the batch's memory.
    #[test]
    fn aligned_batches_at_any_phase_produce_the_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path(), SEG, CompressionSpec::None, false).unwrap();
        let name = SegmentName::new(TimeLineId(1), SegNo(4));
        let mut w = archive.create_segment(name).unwrap();
        let data = pattern(SEG as usize);
        let mut batch = crate::archive::AlignedBuf::new(256 * 1024);
        let cuts = [0usize, 100_001, 300_000, 301_000, 450_000, 700_123, 1048576];
        for pair in cuts.windows(2) {
            let mut at = pair[0];
            while at < pair[1] {
                batch.reset(at as u64);
                let n = batch.spare().min(pair[1] - at);
                batch.extend_from_slice(&data[at..at + n]);
                w.write(batch.as_slice()).unwrap();
                at += n;
            }
        }
        assert!(w.is_full());
        w.finish().unwrap();
        let written = std::fs::read(dir.path().join("000000010000000000000004")).unwrap();
        assert!(
            written == data,
            "segment contents differ from what was written"
        );
    }

    #[test]
    fn partial_segment_keeps_its_full_size_and_written_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path(), SEG, CompressionSpec::None, false).unwrap();
        let mut w = archive
            .create_segment(SegmentName::new(TimeLineId(2), SegNo(1)))
            .unwrap();
        let data = pattern(270_000);
        w.write(&data[..131072]).unwrap();
        w.write(&data[131072..]).unwrap();
        w.sync().unwrap();
        w.close_partial().unwrap();
        let path = dir.path().join("000000020000000000000001.partial");
        let written = std::fs::read(&path).unwrap();
        // Full segment size (what pg_receivewal's resume requires), zeros past the data.
        assert_eq!(written.len() as u64, SEG);
        assert!(written[..data.len()] == data[..]);
        assert!(written[data.len()..].iter().all(|&b| b == 0));
    }
}

#[cfg(test)]
mod finish_tests {
    use super::*;
    use crate::wal::{SegNo, TimeLineId};

    const SEG: u64 = 1 << 20;

    fn write_full(archive: &Archive, fill: u8) -> Result<(), ArchiveError> {
        let mut w = archive.create_segment(SegmentName::new(TimeLineId(1), SegNo(5)))?;
        w.write(&vec![fill; SEG as usize])?;
        w.finish()
    }

    #[test]
    fn rearchiving_an_identical_segment_is_a_no_op_and_a_different_one_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path(), SEG, CompressionSpec::None, false).unwrap();
        write_full(&archive, 7).unwrap();
        write_full(&archive, 7).unwrap();
        let partial = dir.path().join("000000010000000000000005.partial");
        assert!(!partial.exists());
        let err = write_full(&archive, 8).unwrap_err();
        assert!(matches!(err, ArchiveError::Conflict { .. }), "{err}");
        // The archived segment is untouched; ours stays .partial for the DBA to inspect.
        let kept = std::fs::read(dir.path().join("000000010000000000000005")).unwrap();
        assert!(kept.iter().all(|&b| b == 7));
        assert!(partial.exists());
    }
}

#[cfg(test)]
mod noreplace_tests {
    use super::super::rename_noreplace;

    #[test]
    fn rename_noreplace_never_replaces_and_moves_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "new").unwrap();
        std::fs::write(&b, "old").unwrap();
        let err = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "old");
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "new");
        std::fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "new");
    }
}

#[cfg(test)]
mod zero_fill_tests {
    use super::*;
    use crate::wal::{SegNo, TimeLineId};

    const SEG: u64 = 1 << 20;

    fn zero_filling_archive() -> (tempfile::TempDir, Archive) {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path(), SEG, CompressionSpec::None, false)
            .unwrap()
            .zero_filled(true);
        (dir, archive)
    }

    #[test]
    fn zero_filled_segments_are_full_size_and_keep_bytes_already_there() {
        let (dir, archive) = zero_filling_archive();
        let name = SegmentName::new(TimeLineId(1), SegNo(2));
        let path = dir.path().join("000000010000000000000002.partial");
        // A .partial cut short by a crash, as resume finds it.
        std::fs::write(&path, vec![0xAB; 5000]).unwrap();
        let w = archive.create_segment(name).unwrap();
        w.close_partial().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, SEG);
        assert!(
            bytes[..5000].iter().all(|&b| b == 0xAB),
            "existing WAL was overwritten"
        );
        assert!(bytes[5000..].iter().all(|&b| b == 0));
        // Really written, not a hole: every block is allocated.
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&path).unwrap().blocks() * 512 >= SEG);
    }

    #[test]
    fn a_live_streams_next_segment_is_the_spare_made_ahead() {
        let (dir, archive) = zero_filling_archive();
        let spare_path = dir.path().join(SPARE_FILE);
        let mut spare = Spare::new(&archive);
        // A commit-sized first write: zero-filled in place, and the next one is started.
        let seg = |n| SegmentName::new(TimeLineId(1), SegNo(n));
        let mut first = archive
            .create_segment_with(seg(1), 100, &mut spare)
            .unwrap();
        first.write(&[0x11; 100]).unwrap();
        first.close_partial().unwrap();
        // The second becomes the spare: its inode, full size, all zeros, really written.
        for _ in 0..1000 {
            if spare.job.as_ref().unwrap().is_finished() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let made = std::fs::metadata(&spare_path).unwrap();
        use std::os::unix::fs::MetadataExt;
        let second = archive
            .create_segment_with(seg(2), 100, &mut spare)
            .unwrap();
        let path = second.partial_path().to_path_buf();
        second.close_partial().unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.ino(), made.ino(), "the spare was not used");
        assert_eq!(meta.len(), SEG);
        assert!(meta.blocks() * 512 >= SEG);
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));
        // And a third is being made.
        drop(spare);
        assert_eq!(std::fs::metadata(&spare_path).unwrap().len(), SEG);
        // A catch-up sized first write preallocates and leaves the spare alone.
        let mut spare = Spare::new(&archive);
        let bulk = archive
            .create_segment_with(seg(3), 1 << 17, &mut spare)
            .unwrap();
        bulk.close_partial().unwrap();
        assert!(spare.job.is_none());
    }

    #[test]
    fn an_existing_partial_is_not_replaced_by_the_spare() {
        let (dir, archive) = zero_filling_archive();
        let mut spare = Spare::new(&archive);
        spare.prepare();
        let path = dir.path().join("000000010000000000000002.partial");
        std::fs::write(&path, vec![0xAB; 5000]).unwrap();
        let name = SegmentName::new(TimeLineId(1), SegNo(2));
        let w = archive.create_segment_with(name, 100, &mut spare).unwrap();
        w.close_partial().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes[..5000].iter().all(|&b| b == 0xAB));
        assert!(
            spare.job.is_some(),
            "the spare is kept for the next segment"
        );
    }
}
