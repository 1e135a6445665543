//! Writing a backup's files into its (partial) directory as the stream delivers them.
//!
//! Each data-directory file becomes one file of its own under the backup directory
//! ([`crate::repo::stored_file_path`]), compressed on its own, so a restore can decompress
//! files in parallel and a delta restore can skip the ones it keeps. Compression and the
//! writes run on worker threads while the stream goes on: each file is handed whole to one
//! worker, in chunks through a bounded channel, so memory stays at
//! `workers * (QUEUE_DEPTH + 1) * CHUNK` however large the files are, and a slow disk slows
//! the stream (and through TCP the server) rather than filling memory. Each worker also
//! computes the file's CRC-32C, which [`Summary::check_against`] compares with the server's
//! manifest: what we stored is what the server read.
//!
//! Directories are made by the stream's task (tar lists a directory before its contents);
//! every file is fsynced by its worker, and every directory once all files are closed.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::manifest::{format_crc32c, Manifest};
use super::tar::{EntryKind, TarEntry};
use crate::archive::CompressionSpec;
use crate::repo::{stored_dir_path, stored_file_path, Contents, DirEntry, FileEntry, SymlinkEntry};

/// Bytes handed to a worker at a time.
const CHUNK: usize = 256 << 10;
/// Chunks queued per worker before the stream waits.
const QUEUE_DEPTH: usize = 4;

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

/// What a worker learned about a file it stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    size: u64,
    crc32c: u32,
    stored_size: u64,
}

enum Job {
    Open { rel: String, dest: PathBuf },
    Data(Vec<u8>),
    Close,
}

struct Worker {
    /// `None` once closed: the worker ends when it has drained its queue.
    tx: Option<mpsc::Sender<Job>>,
    handle: Option<JoinHandle<()>>,
}

/// State shared with the workers: their results, and the first error one of them hit.
#[derive(Default)]
struct Shared {
    stored: Mutex<HashMap<String, Stored>>,
    error: Mutex<Option<StoreError>>,
    done: Option<mpsc::Sender<PathBuf>>,
}

/// A file being received: the bytes not yet handed over, and to whom they go.
struct Current {
    buf: Vec<u8>,
    worker: usize,
}

/// See the module documentation.
pub struct Store {
    root: PathBuf,
    compression: CompressionSpec,
    workers: Vec<Worker>,
    next_worker: usize,
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
        let workers = (0..threads.max(1))
            .map(|i| {
                let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
                let shared = shared.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("backup-store-{i}"))
                    .spawn(move || worker(rx, compression, &shared))
                    .expect("spawning a thread");
                Worker {
                    tx: Some(tx),
                    handle: Some(handle),
                }
            })
            .collect();
        let mut dirs = BTreeSet::new();
        dirs.insert(root.to_path_buf());
        Store {
            root: root.to_path_buf(),
            compression,
            workers,
            next_worker: 0,
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
                let worker = self.next_worker;
                self.next_worker = (self.next_worker + 1) % self.workers.len();
                self.send(
                    worker,
                    Job::Open {
                        rel: rel.clone(),
                        dest: self.root.join(stored),
                    },
                )
                .await?;
                self.contents.files.push(FileEntry {
                    path: rel,
                    mode: entry.mode,
                    size,
                });
                self.current = Some(Current {
                    buf: Vec::with_capacity(CHUNK.min(size as usize)),
                    worker,
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
                let chunk = std::mem::replace(&mut cur.buf, Vec::with_capacity(CHUNK));
                let worker = cur.worker;
                self.send(worker, Job::Data(chunk)).await?;
            }
        }
        Ok(())
    }

    /// The end of the current member.
    pub async fn end(&mut self) -> Result<(), StoreError> {
        if let Some(cur) = self.current.take() {
            if !cur.buf.is_empty() {
                self.send(cur.worker, Job::Data(cur.buf)).await?;
            }
            self.send(cur.worker, Job::Close).await?;
        }
        Ok(())
    }

    /// Wait for the workers, fsync every directory, and sum up. Nothing may be pending.
    pub fn finish(mut self) -> Result<Summary, StoreError> {
        self.join_workers();
        if let Some(e) = self.shared.error.lock().expect("not poisoned").take() {
            return Err(e);
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

    async fn send(&mut self, worker: usize, job: Job) -> Result<(), StoreError> {
        let sent = match &self.workers[worker].tx {
            Some(tx) => tx.send(job).await.is_ok(),
            None => false,
        };
        if !sent {
            // The worker stopped on an error: report that one.
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
        for w in &mut self.workers {
            w.tx = None;
        }
        for w in &mut self.workers {
            if let Some(h) = w.handle.take() {
                if h.join().is_err() {
                    self.shared
                        .error
                        .lock()
                        .expect("not poisoned")
                        .get_or_insert(StoreError::WorkerGone);
                }
            }
        }
    }
}

/// Dropping a store (an error, a cancelled backup) stops its workers before the caller
/// removes the directory they write into.
impl Drop for Store {
    fn drop(&mut self) {
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
}

/// A file being written, through the chosen compression.
enum Sink {
    Plain(File),
    Gzip(flate2::write::GzEncoder<File>),
    Lz4(Box<lz4_flex::frame::FrameEncoder<File>>),
    Zstd(zstd::stream::write::Encoder<'static, File>),
}

impl Sink {
    fn new(file: File, compression: CompressionSpec) -> io::Result<Sink> {
        Ok(match compression {
            CompressionSpec::None => Sink::Plain(file),
            CompressionSpec::Gzip(level) => Sink::Gzip(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::new(level),
            )),
            CompressionSpec::Lz4 => Sink::Lz4(Box::new(lz4_flex::frame::FrameEncoder::new(file))),
            CompressionSpec::Zstd(level) => {
                Sink::Zstd(zstd::stream::write::Encoder::new(file, level)?)
            }
        })
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Sink::Plain(f) => f.write_all(data),
            Sink::Gzip(e) => e.write_all(data),
            Sink::Lz4(e) => e.write_all(data),
            Sink::Zstd(e) => e.write_all(data),
        }
    }

    /// End the compressed stream; the file, for its fsync.
    fn finish(self) -> io::Result<File> {
        match self {
            Sink::Plain(f) => Ok(f),
            Sink::Gzip(e) => e.finish(),
            Sink::Lz4(e) => e.finish().map_err(io::Error::other),
            Sink::Zstd(e) => e.finish(),
        }
    }
}

struct Open {
    rel: String,
    dest: PathBuf,
    sink: Sink,
    size: u64,
    crc: u32,
}

fn worker(mut rx: mpsc::Receiver<Job>, compression: CompressionSpec, shared: &Shared) {
    let mut open: Option<Open> = None;
    while let Some(job) = rx.blocking_recv() {
        if let Err(e) = run_job(job, &mut open, compression, shared) {
            shared.error.lock().expect("not poisoned").get_or_insert(e);
            return; // dropping `rx` makes the stream's next send fail
        }
    }
}

fn run_job(
    job: Job,
    open: &mut Option<Open>,
    compression: CompressionSpec,
    shared: &Shared,
) -> Result<(), StoreError> {
    match job {
        Job::Open { rel, dest } => {
            let file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dest)
                .map_err(io_err("create", &dest))?;
            let sink = Sink::new(file, compression).map_err(io_err("compress", &dest))?;
            *open = Some(Open {
                rel,
                dest,
                sink,
                size: 0,
                crc: 0,
            });
        }
        Job::Data(chunk) => {
            let Some(f) = open.as_mut() else {
                return Err(StoreError::WorkerGone);
            };
            f.crc = crc32c::crc32c_append(f.crc, &chunk);
            f.size += chunk.len() as u64;
            f.sink.write_all(&chunk).map_err(io_err("write", &f.dest))?;
        }
        Job::Close => {
            let Some(f) = open.take() else {
                return Err(StoreError::WorkerGone);
            };
            let file = f.sink.finish().map_err(io_err("write", &f.dest))?;
            file.sync_all().map_err(io_err("fsync", &f.dest))?;
            let stored_size = file.metadata().map_err(io_err("stat", &f.dest))?.len();
            shared.stored.lock().expect("not poisoned").insert(
                f.rel,
                Stored {
                    size: f.size,
                    crc32c: f.crc,
                    stored_size,
                },
            );
            if let Some(done) = &shared.done {
                done.blocking_send(f.dest)
                    .map_err(|_| StoreError::HandOverGone)?;
            }
        }
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
    async fn a_failing_worker_stops_the_stream_with_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::new(dir.path(), CompressionSpec::None, 1);
        store
            .entry(entry("a", EntryKind::File { size: 1 }))
            .await
            .unwrap();
        store.end().await.unwrap();
        // The same file again: create_new refuses it.
        store
            .entry(entry("a", EntryKind::File { size: 1 }))
            .await
            .unwrap();
        store.end().await.unwrap();
        let e = store.finish().unwrap_err().to_string();
        assert!(e.contains("could not create"), "{e}");
    }
}
