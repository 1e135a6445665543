//! A repository: where the WAL archive and the base backups of one cluster live.
//!
//! ```text
//! REPO/
//!   wal/                      the WAL archive, as `walferry receive -D REPO/wal` writes it
//!                             (pg_receivewal-compatible segment names, .partial, .history)
//!   backups/
//!     <id>/                   one complete base backup; <id> is its start time in UTC,
//!       backup.json           e.g. 20261127T195300Z, so names sort by age
//!       backup_manifest       the server's manifest, as received (pg_verifybackup reads it)
//!       ...                   the backed-up files (see `backup::store`)
//!     .<id>.partial/          a backup being taken; renamed to <id> only once every file,
//!                             the manifest and backup.json are durable
//! ```
//!
//! A backup exists exactly when `backups/<id>/backup.json` does: an interrupted backup
//! leaves a `.partial` directory that nothing restores; `list` shows it as a problem, and
//! the next backup or `expire` (once it has been quiet for a grace period) removes it. This module knows the layout and the catalog entry; `backup` writes
//! backups and `restore` reads them.

pub mod expire;
pub mod incomplete;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::wal::{Compression, Lsn, TimeLineId};

pub const WAL_DIR: &str = "wal";
pub const BACKUPS_DIR: &str = "backups";
pub const CATALOG_FILE: &str = "backup.json";
pub const MANIFEST_FILE: &str = "backup_manifest";

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("repository \"{}\" does not exist or is not a directory", path.display())]
    Missing { path: PathBuf },
    #[error("could not {op} \"{}\": {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("backup catalog entry \"{}\" is damaged: {reason}", path.display())]
    BadCatalog { path: PathBuf, reason: String },
    #[error("no backup \"{id}\" in repository \"{}\" (backups: {})", repo.display(), if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    NoSuchBackup {
        repo: PathBuf,
        id: String,
        known: Vec<String>,
    },
    #[error("repository \"{}\" holds no backup yet", repo.display())]
    NoBackups { repo: PathBuf },
}

impl RepoError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        RepoError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One tablespace of a backup: its oid and where it lived on the backed-up server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    pub oid: u32,
    pub location: String,
}

/// The catalog entry of a complete backup (`backup.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub id: String,
    pub label: String,
    /// As a string: JSON readers that hold numbers in doubles would round it.
    pub system_id: String,
    pub server_version: String,
    pub wal_segment_size: u64,
    /// Where replay must begin (the backup's checkpoint redo), and its timeline.
    #[serde(with = "lsn_text")]
    pub start_lsn: Lsn,
    pub start_timeline: u32,
    /// Where the backup became consistent: restoring it needs the WAL up to here.
    #[serde(with = "lsn_text")]
    pub stop_lsn: Lsn,
    pub stop_timeline: u32,
    /// RFC 3339, UTC.
    pub start_time: String,
    pub stop_time: String,
    /// Bytes of the backed-up files as they are in a data directory, and as stored.
    pub size: u64,
    pub stored_size: u64,
    pub files: u64,
    /// `none`, `lz4[:N]`, `zstd[:N]` or `gzip[:N]`.
    pub compression: String,
    pub tablespaces: Vec<Tablespace>,
    /// Whether the backup checked that `wal/` held the WAL up to `stop_lsn` before it was
    /// published (`false` with `backup --no-wait-wal`).
    #[serde(default)]
    pub wal_checked: bool,
    /// What a data directory restored from this backup holds besides the files' bytes.
    #[serde(default)]
    pub contents: Contents,
    /// Where the files came from: `protocol` (BASE_BACKUP; every backup written before this
    /// field) or `pgdata` (read from the data directory, `backup --pgdata`).
    #[serde(default = "protocol_method")]
    pub method: String,
}

fn protocol_method() -> String {
    "protocol".into()
}

/// The entries of a backup, by path relative to the data directory, as the server sent
/// them; files of tablespace `oid` are under `pg_tblspc/<oid>/`. Where each file's bytes
/// are stored follows from its path ([`stored_file_path`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contents {
    /// Parents before children.
    pub directories: Vec<DirEntry>,
    pub files: Vec<FileEntry>,
    pub symlinks: Vec<SymlinkEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub path: String,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub mode: u32,
    pub size: u64,
}

/// A symbolic link; `pg_tblspc/<oid>` ones point at the tablespace's location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymlinkEntry {
    pub path: String,
    pub target: String,
}

/// Directory of the backup (under `backups/<id>/`) holding the main data directory's files.
pub const DATA_DIR: &str = "data";
/// Directory of the backup holding `tablespaces/<oid>/...`, each tablespace's files.
pub const TABLESPACES_DIR: &str = "tablespaces";

/// The tablespace a data-directory-relative path belongs to, and the path inside the
/// tablespace's location: `pg_tblspc/<oid>/<rest>`.
pub fn split_tablespace_path(path: &str) -> Option<(u32, &str)> {
    let rest = path.strip_prefix("pg_tblspc/")?;
    let (oid, inner) = rest.split_once('/')?;
    if inner.is_empty() || !oid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((oid.parse().ok()?, inner))
}

/// Where, relative to the backup's directory, the bytes of data-directory file `path` are
/// stored with `compression`: `data/<path>` or `tablespaces/<oid>/<rest>`, plus the
/// compression's extension (`.lz4`, `.zst`, `.gz`).
pub fn stored_file_path(path: &str, compression: Compression) -> PathBuf {
    let mut stored = stored_dir_path(path).into_os_string();
    stored.push(compression.suffix());
    PathBuf::from(stored)
}

/// Where, relative to the backup's directory, data-directory directory `path` is stored.
pub fn stored_dir_path(path: &str) -> PathBuf {
    match split_tablespace_path(path) {
        Some((oid, inner)) => Path::new(TABLESPACES_DIR).join(oid.to_string()).join(inner),
        None => Path::new(DATA_DIR).join(path),
    }
}

impl BackupInfo {
    /// A catalog entry for tests: backup `id` from `start` to `stop` on timeline 1.
    #[cfg(test)]
    pub(crate) fn example(id: &str, start: u64, stop: u64) -> BackupInfo {
        BackupInfo {
            id: id.into(),
            label: id.into(),
            system_id: "7300000000000000007".into(),
            server_version: "15.8".into(),
            wal_segment_size: 16 << 20,
            start_lsn: Lsn(start),
            start_timeline: 1,
            stop_lsn: Lsn(stop),
            stop_timeline: 1,
            start_time: "2026-11-27T19:53:00Z".into(),
            stop_time: "2026-11-27T19:53:00Z".into(),
            size: 1000,
            stored_size: 500,
            files: 3,
            compression: "lz4".into(),
            tablespaces: vec![],
            wal_checked: true,
            contents: Contents::default(),
            method: protocol_method(),
        }
    }

    pub fn start_timeline(&self) -> TimeLineId {
        TimeLineId(self.start_timeline)
    }
    pub fn stop_timeline(&self) -> TimeLineId {
        TimeLineId(self.stop_timeline)
    }
}

mod lsn_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::wal::Lsn;

    pub fn serialize<S: Serializer>(lsn: &Lsn, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(lsn)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Repo {
    root: PathBuf,
}

impl Repo {
    /// An existing repository (its `wal/` and `backups/` are made when missing).
    pub fn open(root: &Path) -> Result<Repo, RepoError> {
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            _ => {
                return Err(RepoError::Missing {
                    path: root.to_path_buf(),
                })
            }
        }
        let repo = Repo {
            root: root.to_path_buf(),
        };
        for dir in [repo.wal_dir(), repo.backups_dir()] {
            make_private_dir(&dir)?;
        }
        Ok(repo)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.root.join(WAL_DIR)
    }

    pub fn backups_dir(&self) -> PathBuf {
        self.root.join(BACKUPS_DIR)
    }

    /// Where the complete backup `id` lives.
    pub fn backup_dir(&self, id: &str) -> PathBuf {
        self.backups_dir().join(id)
    }

    /// Where backup `id` is written until it is complete.
    pub fn partial_backup_dir(&self, id: &str) -> PathBuf {
        self.backups_dir().join(format!(".{id}.partial"))
    }

    /// Every complete backup, oldest first (by start LSN, then id).
    pub fn list(&self) -> Result<Vec<BackupInfo>, RepoError> {
        let dir = self.backups_dir();
        let entries = fs::read_dir(&dir).map_err(|e| RepoError::io("read directory", &dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| RepoError::io("read directory", &dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') {
                continue;
            }
            let catalog = entry.path().join(CATALOG_FILE);
            match fs::read(&catalog) {
                Ok(bytes) => out.push(parse_catalog(&catalog, &bytes)?),
                // A directory without its entry is not a backup (nothing else writes here).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(RepoError::io("read", &catalog, e)),
            }
        }
        out.sort_by(|a, b| (a.start_lsn, &a.id).cmp(&(b.start_lsn, &b.id)));
        Ok(out)
    }

    /// Backup `id`, or the newest with `latest`.
    pub fn find(&self, id: &str) -> Result<BackupInfo, RepoError> {
        let all = self.list()?;
        if id == "latest" {
            return all.into_iter().last().ok_or_else(|| RepoError::NoBackups {
                repo: self.root.clone(),
            });
        }
        let known: Vec<String> = all.iter().map(|b| b.id.clone()).collect();
        all.into_iter()
            .find(|b| b.id == id)
            .ok_or_else(|| RepoError::NoSuchBackup {
                repo: self.root.clone(),
                id: id.to_string(),
                known,
            })
    }

    /// Write `info` as the catalog entry of the backup being taken in `partial`, then give
    /// the backup its final name: from here on it exists. Everything else in `partial` must
    /// already be durable.
    pub fn publish(&self, partial: &Path, info: &BackupInfo) -> Result<PathBuf, RepoError> {
        let catalog = partial.join(CATALOG_FILE);
        let text = serde_json::to_vec_pretty(info).expect("catalog entries serialize");
        write_durably(&catalog, &text)?;
        let dest = self.backup_dir(&info.id);
        fs::rename(partial, &dest).map_err(|e| RepoError::io("rename", partial, e))?;
        sync_dir(&self.backups_dir())?;
        Ok(dest)
    }
}

fn parse_catalog(path: &Path, bytes: &[u8]) -> Result<BackupInfo, RepoError> {
    serde_json::from_slice(bytes).map_err(|e| RepoError::BadCatalog {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A new backup's id: its start time in UTC, `YYYYMMDDTHHMMSSZ`.
pub fn backup_id(unix_secs: i64) -> String {
    let (y, mo, d, h, mi, s) = crate::inspect::time::utc_parts(unix_secs);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// `path` as a directory only its owner can enter (made when missing).
pub fn make_private_dir(path: &Path) -> Result<(), RepoError> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(RepoError::io("create directory", path, e)),
    }
}

/// Write `bytes` to `path` so that it is whole or absent after a crash: a temporary file,
/// fsynced, renamed over `path`, the directory fsynced.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(|e| RepoError::io("create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| RepoError::io("write", &tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| RepoError::io("rename", &tmp, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub fn sync_dir(dir: &Path) -> Result<(), RepoError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RepoError::io("fsync directory", dir, e))
}

/// Makes everything written to the file system holding `dir` durable: `syncfs(2)`, one
/// flush for a whole backup or restore where fsyncing each of its thousand files would
/// flush a thousand times. `dir` must have been opened before the writes it covers began:
/// Linux (5.8 and later) reports through it a writeback error of that file system since it
/// was opened, as fsync does for one file.
pub fn sync_filesystem(dir: &fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs on a valid, open file descriptor; no memory is passed.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Starts writing `len` bytes of `file` from `offset` back (0: to its end) without waiting
/// for them (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the final [`sync_filesystem`] finds most
/// of the data on its way and the disk works while the rest is produced. A hint:
/// durability comes from the sync afterwards, so a failure here is ignored.
pub fn start_writeback(file: &fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range on a valid, open file descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, start: u64) -> BackupInfo {
        BackupInfo {
            stop_time: "2026-11-27T19:54:00Z".into(),
            tablespaces: vec![Tablespace {
                oid: 16384,
                location: "/srv/ts".into(),
            }],
            ..BackupInfo::example(id, start, start + 100)
        }
    }

    #[test]
    fn only_published_backups_exist_and_latest_is_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(dir.path()).unwrap();
        assert!(repo.wal_dir().is_dir());
        assert!(matches!(
            repo.find("latest"),
            Err(RepoError::NoBackups { .. })
        ));
        for (id, start) in [
            ("20261127T100000Z", 0x300_0000),
            ("20261127T090000Z", 0x100_0000),
        ] {
            let partial = repo.partial_backup_dir(id);
            make_private_dir(&partial).unwrap();
            repo.publish(&partial, &info(id, start)).unwrap();
        }
        // Interrupted: no catalog entry, or still .partial.
        make_private_dir(&repo.partial_backup_dir("20261127T110000Z")).unwrap();
        make_private_dir(&repo.backup_dir("20261127T120000Z")).unwrap();

        let all = repo.list().unwrap();
        let ids: Vec<&str> = all.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["20261127T090000Z", "20261127T100000Z"]);
        assert_eq!(
            repo.find("latest").unwrap(),
            info("20261127T100000Z", 0x300_0000)
        );
        let e = repo.find("nope").unwrap_err().to_string();
        assert!(e.contains("20261127T090000Z, 20261127T100000Z"), "{e}");
        let text =
            fs::read_to_string(repo.backup_dir("20261127T090000Z").join(CATALOG_FILE)).unwrap();
        assert!(text.contains("\"start_lsn\": \"0/1000000\""), "{text}");
    }

    #[test]
    fn stored_paths_put_tablespace_files_apart() {
        assert_eq!(
            stored_file_path("base/1/1259", Compression::Lz4),
            Path::new("data/base/1/1259.lz4")
        );
        assert_eq!(
            stored_file_path("pg_tblspc/16389/PG_15_202209061/5/16390", Compression::None),
            Path::new("tablespaces/16389/PG_15_202209061/5/16390")
        );
        // The link itself, and odd names, belong to the main directory.
        assert_eq!(
            stored_dir_path("pg_tblspc/16389"),
            Path::new("data/pg_tblspc/16389")
        );
        assert_eq!(split_tablespace_path("pg_tblspc/x1/a"), None);
        assert_eq!(split_tablespace_path("pg_tblspc/7/a/b"), Some((7, "a/b")));
    }

    #[test]
    fn ids_are_the_utc_start_time() {
        assert_eq!(backup_id(1_795_809_180), "20261127T195300Z");
    }
}
