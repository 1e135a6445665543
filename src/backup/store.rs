//! Writing a backup's files into its (partial) directory as the stream delivers them.
//!
//! Each data-directory file becomes one file of its own under the backup directory
//! ([`crate::repo::stored_file_path`]), compressed on its own, so a restore can decompress
//! files in parallel and a delta restore can skip the ones it keeps. The stream cuts each
//! file into chunks of [`CHUNK`] bytes; any of the worker threads compresses any chunk, so
//! both keep busy on a 1 GiB relation segment rather than one compressing it while the
//! other waits for the next file. Each chunk is compressed on its own into a piece of the
//! file's compressed stream — an LZ4 block of one LZ4 frame with independent blocks, a zstd
//! frame, a gzip member — and whichever worker finishes a chunk writes the chunks that are
//! next in order, so the stored file is the standard format any decoder reads (zstd and gzip
//! readers go on across frames and members, as `zstd -d` and `gzip -d` do). The workers
//! take chunks from one bounded channel, so memory stays near
//! `workers * (QUEUE_DEPTH + 2) * CHUNK` however large the files are, and a slow disk slows
//! the stream (and through TCP the server) rather than filling memory. Each worker also
//! computes its chunk's CRC-32C, combined in order into the file's, which
//! [`Summary::check_against`] compares with the server's manifest: what we stored is what
//! the server read.
//!
//! Directories are made by the stream's task (tar lists a directory before its contents).
//! Durability: each finished file's writeback is started at once (`sync_file_range`), and
//! [`Store::finish`] makes the whole backup directory durable with one `syncfs(2)` of its
//! file system, then fsyncs every directory, before the caller may publish the backup — one
//! flush instead of one per file (a backup has about a thousand). A store handing its files
//! over (to an upload that removes them) fsyncs each file before it hands it over.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::manifest::{format_crc32c, Manifest};
use super::tar::{EntryKind, TarEntry};
use crate::archive::CompressionSpec;
use crate::repo::{stored_dir_path, stored_file_path, Contents, DirEntry, FileEntry, SymlinkEntry};

/// Bytes compressed as one piece (an LZ4 block, a zstd frame, a gzip member). 1 MiB: the
/// LZ4 frame's block size, and large enough that independent pieces cost zstd level 1
/// about 1% of ratio on relation files.
pub const CHUNK: usize = 1 << 20;
/// Chunks queued per worker before the stream waits.
const QUEUE_DEPTH: usize = 4;
/// Spare chunk buffers kept for reuse (a fresh 1 MiB buffer costs its page faults).
const SPARE_BUFFERS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("could not {op} \"{}\": {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("a compression worker stopped unexpectedly")]
    WorkerGone,
    #[error("the upload of the stored files stopped")]
    HandOverGone,
    #[error(
        "stored file \"{path}\" does not match the server's manifest ({detail}); the backup \
         is not kept"
    )]
    ManifestMismatch { path: String, detail: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What was learned about a file once stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    size: u64,
    crc32c: u32,
    stored_size: u64,
}

/// One chunk of a file for a worker; `seq` counts the file's chunks from 0, the last one
/// (maybe empty) has `last`.
struct Job {
    file: Arc<OutFile>,
    seq: u64,
    data: Vec<u8>,
    last: bool,
}

/// A file being stored, shared by the workers compressing its chunks.
struct OutFile {
    rel: String,
    dest: PathBuf,
    state: Mutex<OutState>,
}

#[derive(Default)]
struct OutState {
    /// `None` once the last chunk is written.
    file: Option<File>,
    /// The chunk to be written next.
    next: u64,
    /// Chunks compressed ahead of their turn.
    pending: BTreeMap<u64, Piece>,
    size: u64,
    crc: u32,
    stored_size: u64,
}

/// A compressed chunk, ready to be written.
struct Piece {
    bytes: Vec<u8>,
    /// Uncompressed length and CRC-32C.
    len: usize,
    crc: u32,
    last: bool,
}

/// State shared with the workers: their results, the first error one of them hit, spare
/// buffers.
#[derive(Default)]
struct Shared {
    stored: Mutex<HashMap<String, Stored>>,
    error: Mutex<Option<StoreError>>,
    failed: AtomicBool,
    spare: Mutex<Vec<Vec<u8>>>,
    done: Option<mpsc::Sender<PathBuf>>,
}

impl Shared {
    fn fail(&self, e: StoreError) {
        self.error.lock().expect("not poisoned").get_or_insert(e);
        self.failed.store(true, Ordering::Release);
    }

    fn buffer(&self) -> Vec<u8> {
        self.spare
            .lock()
            .expect("not poisoned")
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(CHUNK))
    }

    fn recycle(&self, mut buf: Vec<u8>) {
        if buf.capacity() < CHUNK {
            return;
        }
        buf.clear();
        let mut spare = self.spare.lock().expect("not poisoned");
        if spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
    }
}

/// A file being received: the bytes not yet handed over, and its chunks so far.
struct Current {
    file: Arc<OutFile>,
    buf: Vec<u8>,
    seq: u64,
}

/// See the module documentation.
pub struct Store {
    root: PathBuf,
    /// `root`, opened before anything is written into it, for [`crate::repo::sync_filesystem`].
    root_fd: Option<File>,
    compression: CompressionSpec,
    /// `None` once closed: the workers end when they have drained the queue.
    tx: Option<mpsc::Sender<Job>>,
    handles: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    current: Option<Current>,
    contents: Contents,
    /// Every directory made under `root` (fsynced at the end).
    dirs: BTreeSet<PathBuf>,
    /// Path prefix of the archive being received: "" or `pg_tblspc/<oid>/`.
    prefix: String,
}

/// The outcome of a stored backup.
#[derive(Debug)]
pub struct Summary {
    pub contents: Contents,
    pub size: u64,
    pub stored_size: u64,
    stored: HashMap<String, Stored>,
}

impl Store {
    /// A store writing into `root` (which exists) with `threads` workers.
    pub fn new(root: &Path, compression: CompressionSpec, threads: usize) -> Store {
        Store::handing_over(root, compression, threads, None)
    }

    /// As [`Store::new`], and each file, once stored and fsynced, is handed over by its
    /// path to `done` (e.g. for upload to an object store, which removes it). The channel
    /// is bounded: a slow taker slows the workers and so the stream.
    pub fn handing_over(
        root: &Path,
        compression: CompressionSpec,
        threads: usize,
        done: Option<mpsc::Sender<PathBuf>>,
    ) -> Store {
        let shared = Arc::new(Shared {
            done,
            ..Shared::default()
        });
        let threads = threads.max(1);
        let (tx, rx) = mpsc::channel(threads * QUEUE_DEPTH);
        let rx = Arc::new(Mutex::new(rx));
        let handles = (0..threads)
            .map(|i| {
                let rx = rx.clone();
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("backup-store-{i}"))
                    .spawn(move || worker(&rx, compression, &shared))
                    .expect("spawning a thread")
            })
            .collect();
        let mut dirs = BTreeSet::new();
        dirs.insert(root.to_path_buf());
        Store {
            root: root.to_path_buf(),
            root_fd: File::open(root).ok(),
            compression,
            tx: Some(tx),
            handles,
            shared,
            current: None,
            contents: Contents::default(),
            dirs,
            prefix: String::new(),
        }
    }

    /// The members that follow belong to tablespace `oid`'s archive (`None`: the main data
    /// directory's).
    pub fn begin_archive(&mut self, oid: Option<u32>) {
        self.prefix = oid.map_or_else(String::new, |oid| format!("pg_tblspc/{oid}/"));
    }

    /// A member's header.
    pub async fn entry(&mut self, entry: TarEntry) -> Result<(), StoreError> {
        let rel = format!("{}{}", self.prefix, entry.path);
        match entry.kind {
            EntryKind::Directory => {
                self.make_dirs(&stored_dir_path(&rel))?;
                self.contents.directories.push(DirEntry {
                    path: rel,
                    mode: entry.mode,
                });
            }
            EntryKind::Symlink { target } => self
                .contents
                .symlinks
                .push(SymlinkEntry { path: rel, target }),
            EntryKind::File { size } => {
                let stored = stored_file_path(&rel, self.compression.kind());
                if let Some(parent) = stored.parent() {
                    self.make_dirs(parent)?;
                }
                // Created here, by one thread: workers creating files side by side in one
                // directory contend for its lock.
                let dest = self.root.join(stored);
                let created = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&dest)
                    .map_err(io_err("create", &dest))?;
                let file = Arc::new(OutFile {
                    rel: rel.clone(),
                    dest,
                    state: Mutex::new(OutState {
                        file: Some(created),
                        ..OutState::default()
                    }),
                });
                self.contents.files.push(FileEntry {
                    path: rel,
                    mode: entry.mode,
                    size,
                });
                self.current = Some(Current {
                    file,
                    buf: self.shared.buffer(),
                    seq: 0,
                });
            }
        }
        Ok(())
    }

    /// Data of the current file.
    pub async fn data(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        while !data.is_empty() {
            let Some(cur) = self.current.as_mut() else {
                return Ok(()); // data of a directory or link: nothing to keep
            };
            let n = (CHUNK - cur.buf.len()).min(data.len());
            cur.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if cur.buf.len() == CHUNK {
                let job = Job {
                    file: cur.file.clone(),
                    seq: cur.seq,
                    data: std::mem::replace(&mut cur.buf, self.shared.buffer()),
                    last: false,
                };
                cur.seq += 1;
                self.send(job).await?;
            }
        }
        Ok(())
    }

    /// A buffer of [`CHUNK`] bytes' capacity for [`Store::data_owned`] (a spare one when
    /// there is).
    pub fn buffer(&self) -> Vec<u8> {
        self.shared.buffer()
    }

    /// Data of the current file, handed over: a whole chunk read into a buffer from
    /// [`Store::buffer`] goes to a worker as it is, without the copy [`Store::data`] makes.
    pub async fn data_owned(&mut self, data: Vec<u8>) -> Result<(), StoreError> {
        match self.current.as_mut() {
            Some(cur) if cur.buf.is_empty() && data.len() == CHUNK => {
                let job = Job {
                    file: cur.file.clone(),
                    seq: cur.seq,
                    data,
                    last: false,
                };
                cur.seq += 1;
                self.send(job).await
            }
            _ => {
                self.data(&data).await?;
                self.shared.recycle(data);
                Ok(())
            }
        }
    }

    /// The end of the current member.
    pub async fn end(&mut self) -> Result<(), StoreError> {
        if let Some(cur) = self.current.take() {
            self.send(Job {
                file: cur.file,
                seq: cur.seq,
                data: cur.buf,
                last: true,
            })
            .await?;
        }
        Ok(())
    }

    /// Wait for the workers, make everything durable, and sum up. Nothing may be pending.
    pub fn finish(mut self) -> Result<Summary, StoreError> {
        self.join_workers();
        if let Some(e) = self.shared.error.lock().expect("not poisoned").take() {
            return Err(e);
        }
        if self.shared.done.is_none() {
            let sync = match &self.root_fd {
                Some(fd) => crate::repo::sync_filesystem(fd),
                None => File::open(&self.root).and_then(|fd| crate::repo::sync_filesystem(&fd)),
            };
            sync.map_err(io_err("sync the file system of", &self.root))?;
        }
        // Children before parents: a directory's entry is durable once it is.
        for dir in self.dirs.iter().rev() {
            crate::repo::sync_dir(dir).map_err(|e| StoreError::Io {
                op: "fsync directory",
                path: dir.clone(),
                source: io::Error::other(e.to_string()),
            })?;
        }
        let stored = std::mem::take(&mut *self.shared.stored.lock().expect("not poisoned"));
        let size = stored.values().map(|s| s.size).sum();
        let stored_size = stored.values().map(|s| s.stored_size).sum();
        Ok(Summary {
            contents: std::mem::take(&mut self.contents),
            size,
            stored_size,
            stored,
        })
    }

    async fn send(&mut self, job: Job) -> Result<(), StoreError> {
        let sent = !self.shared.failed.load(Ordering::Acquire)
            && match &self.tx {
                Some(tx) => tx.send(job).await.is_ok(),
                None => false,
            };
        if !sent {
            // A worker stopped on an error: report that one.
            self.join_workers();
            return Err(self
                .shared
                .error
                .lock()
                .expect("not poisoned")
                .take()
                .unwrap_or(StoreError::WorkerGone));
        }
        Ok(())
    }

    fn make_dirs(&mut self, rel: &Path) -> Result<(), StoreError> {
        let mut path = self.root.clone();
        for part in rel.components() {
            path.push(part);
            if self.dirs.contains(&path) {
                continue;
            }
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
                Err(e) => return Err(io_err("create directory", &path)(e)),
            }
            self.dirs.insert(path.clone());
        }
        Ok(())
    }

    fn join_workers(&mut self) {
        self.tx = None;
        for h in self.handles.drain(..) {
            if h.join().is_err() {
                self.shared.fail(StoreError::WorkerGone);
            }
        }
    }
}

/// Dropping a store (an error, a cancelled backup) stops its workers before the caller
/// removes the directory they write into.
impl Drop for Store {
    fn drop(&mut self) {
        self.shared.failed.store(true, Ordering::Release);
        self.join_workers();
    }
}

impl Summary {
    /// Every file the manifest lists was stored with its size and CRC-32C, and nothing
    /// else was.
    pub fn check_against(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let mismatch = |path: &str, detail: String| StoreError::ManifestMismatch {
            path: path.to_string(),
            detail,
        };
        for (path, want) in &manifest.files {
            let Some(got) = self.stored.get(path) else {
                return Err(mismatch(path, "the stream did not contain it".into()));
            };
            if got.size != want.size {
                return Err(mismatch(
                    path,
                    format!("{} bytes stored, the manifest says {}", got.size, want.size),
                ));
            }
            if let Some(crc) = want.crc32c.filter(|&c| c != got.crc32c) {
                return Err(mismatch(
                    path,
                    format!(
                        "CRC-32C {} stored, the manifest says {}",
                        format_crc32c(got.crc32c),
                        format_crc32c(crc)
                    ),
                ));
            }
        }
        if let Some(extra) = self
            .stored
            .keys()
            .find(|p| !manifest.files.contains_key(*p))
        {
            return Err(mismatch(extra, "the manifest does not list it".into()));
        }
        Ok(())
    }

    pub fn files(&self) -> u64 {
        self.stored.len() as u64
    }

    /// The size and CRC-32C of a file as stored.
    pub fn stored(&self, path: &str) -> Option<(u64, u32)> {
        self.stored.get(path).map(|s| (s.size, s.crc32c))
    }
}

/// A worker's compressor: each chunk becomes a self-contained piece of the file's stream.
enum Codec {
    Plain,
    Gzip(u32),
    /// With a scratch buffer of the largest block's bound.
    Lz4(Vec<u8>),
    Zstd(Box<zstd::bulk::Compressor<'static>>),
}

/// The frame header every stored LZ4 file starts with: independent blocks of at most
/// 1 MiB, no checksums (as lz4_flex's `FrameEncoder` writes with that block size). Taken
/// from an empty frame, which is this header and the 4-byte end mark.
fn lz4_header() -> &'static [u8] {
    static HEADER: OnceLock<Vec<u8>> = OnceLock::new();
    HEADER.get_or_init(|| {
        let info = lz4_flex::frame::FrameInfo::new()
            .block_size(lz4_flex::frame::BlockSize::Max1MB)
            .block_mode(lz4_flex::frame::BlockMode::Independent);
        let mut empty = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new())
            .finish()
            .expect("writing into a Vec");
        empty.truncate(empty.len() - LZ4_END_MARK.len());
        empty
    })
}

const LZ4_END_MARK: [u8; 4] = [0; 4];
/// Block size flag: the block is stored uncompressed.
const LZ4_UNCOMPRESSED: u32 = 1 << 31;

impl Codec {
    fn new(compression: CompressionSpec) -> io::Result<Codec> {
        Ok(match compression {
            CompressionSpec::None => Codec::Plain,
            CompressionSpec::Gzip(level) => Codec::Gzip(level),
            CompressionSpec::Lz4 => {
                Codec::Lz4(vec![0; lz4_flex::block::get_maximum_output_size(CHUNK)])
            }
            CompressionSpec::Zstd(level) => {
                Codec::Zstd(Box::new(zstd::bulk::Compressor::new(level)?))
            }
        })
    }

    /// Chunk `data` of a file as the bytes to write (`data` itself when stored plain,
    /// else a buffer from `shared`, `data` going back to it).
    fn encode(
        &mut self,
        data: Vec<u8>,
        first: bool,
        last: bool,
        shared: &Shared,
    ) -> io::Result<Vec<u8>> {
        if let Codec::Plain = self {
            return Ok(data);
        }
        let mut out = shared.buffer();
        match self {
            Codec::Plain => unreachable!("returned above"),
            Codec::Lz4(scratch) => {
                if first {
                    out.extend_from_slice(lz4_header());
                }
                if !data.is_empty() {
                    let n =
                        lz4_flex::block::compress_into(&data, scratch).map_err(io::Error::other)?;
                    if n < data.len() {
                        out.extend_from_slice(&(n as u32).to_le_bytes());
                        out.extend_from_slice(&scratch[..n]);
                    } else {
                        let flagged = data.len() as u32 | LZ4_UNCOMPRESSED;
                        out.extend_from_slice(&flagged.to_le_bytes());
                        out.extend_from_slice(&data);
                    }
                }
                if last {
                    out.extend_from_slice(&LZ4_END_MARK);
                }
            }
            // A frame per chunk; an empty file still gets one.
            Codec::Zstd(c) => {
                if first || !data.is_empty() {
                    out.reserve(zstd::zstd_safe::compress_bound(data.len()));
                    c.compress_to_buffer(&data, &mut out)?;
                }
            }
            Codec::Gzip(level) => {
                if first || !data.is_empty() {
                    let mut e =
                        flate2::write::GzEncoder::new(out, flate2::Compression::new(*level));
                    e.write_all(&data)?;
                    out = e.finish()?;
                }
            }
        }
        shared.recycle(data);
        Ok(out)
    }
}

fn worker(rx: &Mutex<mpsc::Receiver<Job>>, compression: CompressionSpec, shared: &Shared) {
    let mut codec = match Codec::new(compression) {
        Ok(c) => Some(c),
        Err(e) => {
            shared.fail(io_err("start compression for", Path::new("the backup"))(e));
            None
        }
    };
    loop {
        // One worker waits on the channel, the others on the lock.
        let job = rx.lock().expect("not poisoned").blocking_recv();
        let Some(job) = job else { break };
        // After an error the queue is drained without work, so the stream never waits.
        let Some(codec) = codec
            .as_mut()
            .filter(|_| !shared.failed.load(Ordering::Acquire))
        else {
            continue;
        };
        if let Err(e) = run_job(job, codec, shared) {
            shared.fail(e);
        }
    }
}

fn run_job(job: Job, codec: &mut Codec, shared: &Shared) -> Result<(), StoreError> {
    let file = &job.file;
    let piece = Piece {
        len: job.data.len(),
        crc: crc32c::crc32c(&job.data),
        last: job.last,
        bytes: codec
            .encode(job.data, job.seq == 0, job.last, shared)
            .map_err(io_err("compress", &file.dest))?,
    };
    let mut st = file.state.lock().expect("not poisoned");
    st.pending.insert(job.seq, piece);
    // Whoever holds the lock writes every chunk that is next in order.
    loop {
        let next = st.next;
        let Some(piece) = st.pending.remove(&next) else {
            return Ok(());
        };
        st.next += 1;
        let Some(f) = st.file.as_mut() else {
            return Err(StoreError::WorkerGone); // written after its last chunk
        };
        f.write_all(&piece.bytes)
            .map_err(io_err("write", &file.dest))?;
        st.stored_size += piece.bytes.len() as u64;
        st.crc = crc32c::crc32c_combine(st.crc, piece.crc, piece.len);
        st.size += piece.len as u64;
        shared.recycle(piece.bytes);
        if piece.last {
            return close(file, &mut st, shared);
        }
    }
}

/// The file's last chunk is written: start its writeback (or fsync it, when it is handed
/// over), record it, hand it over.
fn close(file: &OutFile, st: &mut OutState, shared: &Shared) -> Result<(), StoreError> {
    let Some(f) = st.file.take() else {
        return Err(StoreError::WorkerGone);
    };
    if shared.done.is_some() {
        f.sync_all().map_err(io_err("fsync", &file.dest))?;
    } else {
        crate::repo::start_writeback(&f, 0, 0);
    }
    drop(f);
    shared.stored.lock().expect("not poisoned").insert(
        file.rel.clone(),
        Stored {
            size: st.size,
            crc32c: st.crc,
            stored_size: st.stored_size,
        },
    );
    if let Some(done) = &shared.done {
        done.blocking_send(file.dest.clone())
            .map_err(|_| StoreError::HandOverGone)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::SegmentReader;
    use crate::backup::manifest::ManifestFile;
    use crate::wal::Compression;

    fn entry(path: &str, kind: EntryKind) -> TarEntry {
        TarEntry {
            path: path.into(),
            kind,
            mode: 0o600,
            mtime: 0,
        }
    }

    #[tokio::test]
    async fn files_are_stored_compressed_one_by_one_and_checked() {
        for compression in [
            CompressionSpec::None,
            CompressionSpec::Lz4,
            CompressionSpec::Zstd(3),
            CompressionSpec::Gzip(1),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = Store::new(dir.path(), compression, 2);
            let big: Vec<u8> = (0..CHUNK * 2 + 77).map(|i| (i % 251) as u8).collect();
            store.begin_archive(None);
            store
                .entry(entry("base", EntryKind::Directory))
                .await
                .unwrap();
            store
                .entry(entry(
                    "base/1",
                    EntryKind::File {
                        size: big.len() as u64,
                    },
                ))
                .await
                .unwrap();
            for piece in big.chunks(10_000) {
                store.data(piece).await.unwrap();
            }
            store.end().await.unwrap();
            store.begin_archive(Some(16389));
            store
                .entry(entry("PG_15/5/16390", EntryKind::File { size: 3 }))
                .await
                .unwrap();
            store.data(b"abc").await.unwrap();
            store.end().await.unwrap();
            let summary = store.finish().unwrap();
            assert_eq!(summary.size, big.len() as u64 + 3);
            assert_eq!(summary.files(), 2);

            let kind = compression.kind();
            let read = |rel: &str| {
                SegmentReader::read_all(&dir.path().join(stored_file_path(rel, kind)), kind)
                    .unwrap()
            };
            assert_eq!(read("base/1"), big);
            assert_eq!(read("pg_tblspc/16389/PG_15/5/16390"), b"abc");
            if kind != Compression::None {
                assert!(summary.stored_size < summary.size, "{compression}");
            }

            let mut manifest = Manifest::default();
            manifest.files.insert(
                "base/1".into(),
                ManifestFile {
                    size: big.len() as u64,
                    crc32c: Some(crc32c::crc32c(&big)),
                },
            );
            manifest.files.insert(
                "pg_tblspc/16389/PG_15/5/16390".into(),
                ManifestFile {
                    size: 3,
                    crc32c: Some(crc32c::crc32c(b"abc")),
                },
            );
            summary.check_against(&manifest).unwrap();
            manifest.files.get_mut("base/1").unwrap().crc32c.replace(1);
            let e = summary.check_against(&manifest).unwrap_err().to_string();
            assert!(e.contains("\"base/1\"") && e.contains("CRC-32C"), "{e}");
            manifest.files.remove("base/1");
            let e = summary.check_against(&manifest).unwrap_err().to_string();
            assert!(e.contains("does not list it"), "{e}");
        }
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_created_stops_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::new(dir.path(), CompressionSpec::None, 1);
        store
            .entry(entry("a", EntryKind::File { size: 1 }))
            .await
            .unwrap();
        store.end().await.unwrap();
        // The same file again: create_new refuses it.
        let e = store
            .entry(entry("a", EntryKind::File { size: 1 }))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("could not create"), "{e}");
    }

    /// Empty files, files of exactly one chunk (whose last chunk is empty) and of many
    /// chunks decode to their bytes with every compression, and with the reference tools
    /// where they are installed (each piece is a standard block, frame or member).
    #[tokio::test]
    async fn chunked_files_are_standard_streams() {
        let sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5];
        for compression in [
            CompressionSpec::None,
            CompressionSpec::Lz4,
            CompressionSpec::Zstd(1),
            CompressionSpec::Gzip(1),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut store = Store::new(dir.path(), compression, 3);
            let mut want = Vec::new();
            for (i, &size) in sizes.iter().enumerate() {
                // Half compressible, half not: LZ4 stores some blocks uncompressed.
                let mut x = i as u32 + 1;
                let data: Vec<u8> = (0..size)
                    .map(|j| {
                        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        if (j / 4096) % 2 == 0 {
                            (j % 7) as u8
                        } else {
                            (x >> 16) as u8
                        }
                    })
                    .collect();
                let name = format!("f{i}");
                store
                    .entry(entry(&name, EntryKind::File { size: size as u64 }))
                    .await
                    .unwrap();
                for piece in data.chunks(100_000) {
                    store.data(piece).await.unwrap();
                }
                store.end().await.unwrap();
                want.push((name, data));
            }
            let summary = store.finish().unwrap();
            let kind = compression.kind();
            for (name, data) in &want {
                let path = dir.path().join(stored_file_path(name, kind));
                assert_eq!(
                    &SegmentReader::read_all(&path, kind).unwrap(),
                    data,
                    "{compression} {name}"
                );
                let got = &summary.stored[name.as_str()];
                assert_eq!(got.crc32c, crc32c::crc32c(data), "{compression} {name}");
                assert_eq!(got.size, data.len() as u64);
                assert_eq!(got.stored_size, fs::metadata(&path).unwrap().len());
                let tool = match kind {
                    Compression::Lz4 => "lz4",
                    Compression::Zstd => "zstd",
                    Compression::Gzip => "gzip",
                    Compression::None => continue,
                };
                if let Ok(out) = std::process::Command::new(tool)
                    .args(["-d", "-c"])
                    .arg(&path)
                    .output()
                {
                    assert!(out.status.success(), "{tool} -d {name}");
                    assert_eq!(&out.stdout, data, "{tool} -d {name}");
                }
            }
        }
    }
}
