//! Objects read as they arrive, by threads that are not the runtime's: a restore's layout
//! workers (plain threads that decompress, check and write) stream each stored file of a
//! backup from the store straight into the data directory, holding one chunk of the
//! response body at a time, so neither memory nor the cache directory ever holds a copy.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::ObjectStoreExt;
use tokio::runtime::Handle;

use super::{Remote, RemoteError};
use crate::restore::layout::BackupSource;

/// Stored files of one backup laid out at once. Each is a round trip before its first
/// byte, so a restore from a store waits on latency more than on bandwidth (the same
/// reason `mirror` keeps 32 downloads in flight); a thread each, as the layout runs them.
pub const IN_FLIGHT: usize = 32;

/// An object's body as a blocking [`Read`], driven on `handle`'s runtime (which must be
/// the one `remote`'s client belongs to, and multi-threaded: its I/O runs while the
/// reading thread waits).
pub struct ObjectReader<'a> {
    handle: Handle,
    body: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
    remote: &'a Remote,
    rel: String,
    counted: Option<&'a AtomicU64>,
}

impl<'a> ObjectReader<'a> {
    /// Starts the GET of `rel`; its body is read as the reader is.
    pub fn open(handle: &Handle, remote: &'a Remote, rel: &str) -> Result<Self, RemoteError> {
        let got = handle
            .block_on(remote.store.get(&remote.key(rel)))
            .map_err(|e| remote.err("read", rel, e))?;
        Ok(ObjectReader {
            handle: handle.clone(),
            body: got.into_stream(),
            chunk: Bytes::new(),
            remote,
            rel: rel.to_string(),
            counted: None,
        })
    }
}

impl Read for ObjectReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.handle.block_on(self.body.next()) {
                None => return Ok(0),
                Some(Ok(chunk)) => {
                    if let Some(c) = self.counted {
                        c.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                    self.chunk = chunk;
                }
                Some(Err(e)) => {
                    return Err(io::Error::other(self.remote.err("read", &self.rel, e)));
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// A backup in the store (`backups/<id>/` of a repository) as a [`BackupSource`]: each
/// stored file is GET as the layout opens it; nothing is written anywhere else.
pub struct RemoteBackup {
    /// The store's client, at `backups/<id>`.
    remote: Remote,
    handle: Handle,
    fetched_bytes: AtomicU64,
    fetched_objects: AtomicU64,
}

impl RemoteBackup {
    /// Backup `id` of the repository `repo` (the client at the repository's root); every
    /// request runs on `handle`'s runtime, which must be `repo`'s client's.
    pub fn new(repo: &Remote, id: &str, handle: Handle) -> RemoteBackup {
        RemoteBackup {
            remote: repo.join(&format!("{}/{id}", crate::repo::BACKUPS_DIR)),
            handle,
            fetched_bytes: AtomicU64::new(0),
            fetched_objects: AtomicU64::new(0),
        }
    }

    /// Objects opened and bytes of them received so far.
    pub fn fetched(&self) -> (u64, u64) {
        (
            self.fetched_objects.load(Ordering::Relaxed),
            self.fetched_bytes.load(Ordering::Relaxed),
        )
    }
}

fn rel_of(rel: &Path) -> String {
    rel.to_string_lossy().into_owned()
}

impl BackupSource for RemoteBackup {
    fn open(&self, rel: &Path) -> io::Result<Box<dyn Read + Send + '_>> {
        let mut reader =
            ObjectReader::open(&self.handle, &self.remote, &rel_of(rel)).map_err(|e| {
                match e.is_not_found() {
                    true => io::Error::new(io::ErrorKind::NotFound, e.to_string()),
                    false => io::Error::other(e.to_string()),
                }
            })?;
        reader.counted = Some(&self.fetched_bytes);
        self.fetched_objects.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(reader))
    }

    fn name(&self, rel: &Path) -> PathBuf {
        PathBuf::from(self.remote.describe(&rel_of(rel)))
    }
}
