//! The commands' side of a repository in object storage: the URL checked and the store
//! reached once (wrong keys, a missing bucket: a clear error before anything slow), and the
//! local copy in the cache directory that the reading commands work on
//! (`walferry::objstore::mirror`).

use std::path::{Path, PathBuf};

use walferry::objstore::{mirror, Location, Object, Remote, RemoteError, S3Url};
use walferry::repo::incomplete::{self, IncompleteBackup};
use walferry::repo::{BACKUPS_DIR, CATALOG_FILE, WAL_DIR};
use walferry::wal::{Lsn, WalFileName};

use super::Failure;

pub fn remote_failure(e: &RemoteError) -> Failure {
    let failure = Failure::new(e.to_string());
    match e.hint() {
        Some(hint) => failure.with_hint(hint),
        None => failure,
    }
}

/// A `--repo` (or archive) argument: a local path, or a repository in object storage.
pub enum RepoArg {
    Local(PathBuf),
    Remote(Box<RemoteRepo>),
}

impl RepoArg {
    /// Parses `text`; for an `s3://` URL, reaches the store (one request).
    pub fn open(text: &str, command: &str) -> Result<RepoArg, Failure> {
        match Location::parse(text) {
            Err(e) => Err(Failure::usage(e.to_string(), command)),
            Ok(Location::Local(p)) => Ok(RepoArg::Local(p)),
            Ok(Location::S3(url)) => {
                RemoteRepo::connect(&url).map(|r| RepoArg::Remote(Box::new(r)))
            }
        }
    }
}

pub struct RemoteRepo {
    pub url: S3Url,
    pub remote: Remote,
    /// The local copy: a repository layout (`wal/`, `backups/`).
    pub cache: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl RemoteRepo {
    pub fn connect(url: &S3Url) -> Result<RemoteRepo, Failure> {
        let remote = Remote::new(url).map_err(|e| remote_failure(&e))?;
        // Multi-threaded: a backup's uploads go on while its stream's end blocks a thread.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Failure::new(format!("could not start a runtime: {e}")))?;
        rt.block_on(remote.check())
            .map_err(|e| remote_failure(&e))?;
        let cache = mirror::cache_dir(&remote);
        for dir in [cache.join(WAL_DIR), cache.join(BACKUPS_DIR)] {
            std::fs::create_dir_all(&dir).map_err(|e| {
                Failure::new(format!(
                    "could not create cache directory \"{}\": {e}",
                    dir.display()
                ))
                .with_hint("set WALFERRY_CACHE_DIR to a directory with room for the copy")
            })?;
        }
        Ok(RemoteRepo {
            url: url.clone(),
            remote,
            cache,
            rt,
        })
    }

    /// For a command that uploads, before its first upload: aborts the multipart uploads
    /// that processes now gone left open in this bucket (`walferry::objstore::journal`).
    pub fn take_over_uploads(&self) {
        self.rt
            .block_on(walferry::objstore::journal::take_over(&self.remote));
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The runtime every request to this store must run on (its client's connections
    /// belong to it).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    fn sync(
        &self,
        sub: &str,
        dir: &Path,
        want: impl Fn(&str) -> bool,
    ) -> Result<mirror::Synced, Failure> {
        let started = std::time::Instant::now();
        let synced = self
            .rt
            .block_on(mirror::sync(&self.remote, sub, dir, want))
            .map_err(|e| remote_failure(&e))?;
        if synced.fetched > 0 {
            tracing::info!(
                "fetched {} file(s), {} MB, of {}/{sub} into \"{}\" in {:.1} s ({} already there)",
                synced.fetched,
                synced.fetched_bytes / 1_000_000,
                self.url,
                dir.display(),
                started.elapsed().as_secs_f64(),
                synced.kept
            );
        }
        Ok(synced)
    }

    /// The WAL archive, copied into the cache; returns the copy's directory.
    pub fn sync_wal(&self) -> Result<PathBuf, Failure> {
        let dir = self.cache.join(WAL_DIR);
        self.sync(WAL_DIR, &dir, |_| true)?;
        Ok(dir)
    }

    /// Like [`Self::sync_wal`], but only the part of the archive a restore from a backup
    /// starting at `from` can use: segments (on every timeline) from the one holding `from`
    /// on, and every file that is not a segment (history files, `.backup` files). Segments
    /// before it are neither fetched nor left in the copy, so that what the restore checks
    /// is exactly what the copy holds from there on.
    pub fn sync_wal_from(&self, from: Lsn, seg_size: u64) -> Result<PathBuf, Failure> {
        let dir = self.cache.join(WAL_DIR);
        let floor = from.segno(seg_size);
        let started = std::time::Instant::now();
        let all = self
            .rt
            .block_on(self.remote.list(WAL_DIR))
            .map_err(|e| remote_failure(&e))?;
        let total = all.len();
        let usable: Vec<Object> = all
            .into_iter()
            .filter(|o| {
                WalFileName::parse(&o.name, seg_size).is_none_or(|w| w.segment.segno >= floor)
            })
            .collect();
        let synced = self
            .rt
            .block_on(mirror::sync_objects(
                &self.remote,
                WAL_DIR,
                &dir,
                &usable,
                &|_| true,
            ))
            .map_err(|e| remote_failure(&e))?;
        tracing::info!(
            "fetched {} file(s), {} MB, of {}/{WAL_DIR} into \"{}\" in {:.1} s ({} already \
             there); {} segment(s) before {from} left in the store",
            synced.fetched,
            synced.fetched_bytes / 1_000_000,
            self.url,
            dir.display(),
            started.elapsed().as_secs_f64(),
            synced.kept,
            total - usable.len()
        );
        Ok(dir)
    }

    /// The catalog entries (`backup.json`) of every backup.
    pub fn sync_catalogs(&self) -> Result<(), Failure> {
        let is_catalog =
            |n: &str| n.split('/').count() == 2 && n.ends_with(&format!("/{CATALOG_FILE}"));
        self.sync(BACKUPS_DIR, &self.cache.join(BACKUPS_DIR), is_catalog)
            .map(drop)
    }

    /// The backups whose objects are in the store without a `backup.json` (interrupted, or
    /// still being written).
    pub fn incomplete_backups(&self) -> Result<Vec<IncompleteBackup>, Failure> {
        let objects = self
            .rt
            .block_on(self.remote.list(BACKUPS_DIR))
            .map_err(|e| remote_failure(&e))?;
        Ok(incomplete::from_objects(
            objects
                .iter()
                .map(|o| (o.name.as_str(), o.size, o.modified)),
        ))
    }

    /// Deletes the objects of incomplete backup `id`; false (nothing deleted) when its
    /// `backup.json` appeared meanwhile: then it was running after all, and is complete.
    pub fn remove_incomplete(&self, id: &str) -> Result<bool, Failure> {
        let fail = |e: RemoteError| remote_failure(&e);
        let store = self.remote.join(BACKUPS_DIR);
        if self
            .rt
            .block_on(store.head(&format!("{id}/{CATALOG_FILE}")))
            .map_err(fail)?
            .is_some()
        {
            return Ok(false);
        }
        let objects = self.rt.block_on(store.list(id)).map_err(fail)?;
        for o in objects {
            self.rt
                .block_on(store.delete(&format!("{id}/{}", o.name)))
                .map_err(fail)?;
        }
        Ok(true)
    }

    /// Frees the cache of backup `id`'s files (its catalog entry stays).
    pub fn drop_backup_copy(&self, id: &str) {
        let dir = self.cache.join(BACKUPS_DIR).join(id);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name() == CATALOG_FILE {
                continue;
            }
            let path = entry.path();
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
        }
    }
}

/// For the commands that read an archive directory (`-D`): a local path as it is, an
/// `s3://` archive copied into the cache first (only what changed since the last copy).
pub fn archive_view(dir: &Path, command: &str) -> Result<PathBuf, Failure> {
    let Some(text) = dir.to_str().filter(|t| t.contains("://")) else {
        return Ok(dir.to_path_buf());
    };
    let url = match Location::parse(text) {
        Err(e) => return Err(Failure::usage(e.to_string(), command)),
        Ok(Location::Local(p)) => return Ok(p),
        Ok(Location::S3(url)) => url,
    };
    let remote = Remote::new(&url).map_err(|e| remote_failure(&e))?;
    let rt = walferry::objstore::runtime()
        .map_err(|e| Failure::new(format!("could not start a runtime: {e}")))?;
    rt.block_on(remote.check())
        .map_err(|e| remote_failure(&e))?;
    let cache = mirror::cache_dir(&remote);
    let synced = rt
        .block_on(mirror::sync(&remote, "", &cache, |_| true))
        .map_err(|e| remote_failure(&e))?;
    tracing::info!(
        "{url}: {} file(s) fetched ({} MB), {} cached already, in \"{}\"",
        synced.fetched,
        synced.fetched_bytes / 1_000_000,
        synced.kept,
        cache.display()
    );
    Ok(cache)
}
