//! Laying out a backup's data directory: every directory with its mode, every file
//! decompressed (on several threads), the tablespace links pointing at their (possibly
//! remapped) locations, everything fsynced. Recovery settings are not this module's
//! business: the restore command adds them afterwards.
//!
//! With `delta`, an existing copy is brought up to the backup instead of being refused:
//! a file whose size and CRC-32C match the backup's manifest is kept, any other is
//! rewritten, and what the backup does not hold is removed — but only inside the data
//! directory and, in each tablespace location, inside the version directories
//! (`PG_15_...`) the backup holds, so nothing that merely shares a location is touched.
//! Every file written is checked against the manifest as it is decompressed: a damaged
//! backup fails the restore rather than producing a damaged data directory. A delta restore
//! checks the files in place first, in pieces on all threads (a 1 GiB relation segment
//! would otherwise keep one thread reading alone), and then writes those that differ.
//!
//! Durability: each written file's writeback starts as it is written (every 8 MiB, and when
//! it is closed: `sync_file_range`), and once everything is in place one `syncfs(2)` per
//! file system (the data directory's, each tablespace location's) waits for all of it, then
//! every directory is fsynced: a restore succeeds only once all it wrote is durable, with
//! one flush per file system instead of one per file. A file that lands on another file
//! system (through a link the DBA made, such as pg_wal on its own disk) is fsynced itself.
//!
//! The stored files are read through a [`BackupSource`]: the backup's directory in a local
//! repository ([`LocalBackup`], what [`lay_out`] uses), or a repository in object storage
//! whose objects each worker streams straight into the data directory
//! (`crate::objstore::stream::RemoteBackup`, through [`lay_out_from`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::archive::CompressionSpec;
use crate::backup::manifest::{format_crc32c, Manifest, ManifestError};
use crate::repo::{
    split_tablespace_path, stored_file_path, BackupInfo, FileEntry, Repo, MANIFEST_FILE,
};
use crate::wal::Compression;

#[derive(Debug, Clone, Default)]
pub struct LayoutOptions {
    /// Bring an existing copy up to the backup instead of refusing a non-empty directory.
    pub delta: bool,
    /// Tablespace oid -> where to put it instead of its original location.
    pub tablespace_map: Vec<(u32, PathBuf)>,
    /// Decompression threads (at least one).
    pub threads: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayoutStats {
    pub files_written: u64,
    pub bytes_written: u64,
    /// Files a delta restore found in place and kept.
    pub files_kept: u64,
    pub bytes_kept: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "directory \"{}\" exists and is not empty; restore into an empty or new directory, \
         or use --delta to bring an existing copy up to the backup",
        path.display()
    )]
    NotEmpty { path: PathBuf },
    #[error("could not {op} \"{}\": {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("backup {id}: {source}")]
    Manifest { id: String, source: ManifestError },
    #[error("backup {id} is damaged: {detail}")]
    Damaged { id: String, detail: String },
    #[error("backup {id} has compression {compression:?}, which walferry does not know")]
    Compression { id: String, compression: String },
    #[error("tablespace location \"{}\" must be an absolute path", path.display())]
    RelativeLocation { path: PathBuf },
    #[error("--tablespace-mapping names oid {oid}, but backup {id} has no such tablespace")]
    UnknownTablespace { id: String, oid: u32 },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayoutError + 'a {
    move |source| LayoutError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where each part of the backup goes.
struct Targets {
    pgdata: PathBuf,
    /// Tablespace oid -> its location on this machine.
    tablespaces: HashMap<u32, PathBuf>,
    /// The file systems (devices) of the data directory and the tablespace locations, which
    /// are synced whole at the end; a file written elsewhere (through a link the DBA made,
    /// such as pg_wal on its own disk) is fsynced on its own.
    synced_devs: HashSet<u64>,
}

impl Targets {
    /// The place of data-directory path `rel`: inside its tablespace's location for
    /// `pg_tblspc/<oid>/...`, else inside the data directory.
    fn place(&self, rel: &str) -> PathBuf {
        if let Some((oid, inner)) = split_tablespace_path(rel) {
            if let Some(loc) = self.tablespaces.get(&oid) {
                return loc.join(inner);
            }
        }
        self.pgdata.join(rel)
    }
}

/// Where the stored files of one backup are read from.
pub trait BackupSource: Sync {
    /// Stored file `rel` (relative to the backup's directory: `backup_manifest`,
    /// `data/base/1/1259.lz4`), read from its start.
    fn open(&self, rel: &Path) -> io::Result<Box<dyn Read + Send + '_>>;
    /// How messages name stored file `rel`.
    fn name(&self, rel: &Path) -> PathBuf;
}

/// A backup's directory in a local repository.
pub struct LocalBackup(pub PathBuf);

impl BackupSource for LocalBackup {
    fn open(&self, rel: &Path) -> io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(File::open(self.0.join(rel))?))
    }

    fn name(&self, rel: &Path) -> PathBuf {
        self.0.join(rel)
    }
}

/// Lay out `backup` from `repo` into `pgdata`; see the module documentation.
pub fn lay_out(
    repo: &Repo,
    backup: &BackupInfo,
    pgdata: &Path,
    opts: &LayoutOptions,
) -> Result<LayoutStats, LayoutError> {
    let source = LocalBackup(repo.backup_dir(&backup.id));
    lay_out_from(&source, backup, pgdata, opts)
}

/// [`lay_out`] with the backup's stored files read from `source`.
pub fn lay_out_from(
    source: &dyn BackupSource,
    backup: &BackupInfo,
    pgdata: &Path,
    opts: &LayoutOptions,
) -> Result<LayoutStats, LayoutError> {
    let id = backup.id.clone();
    let compression = backup
        .compression
        .parse::<CompressionSpec>()
        .map_err(|_| LayoutError::Compression {
            id: id.clone(),
            compression: backup.compression.clone(),
        })?
        .kind();
    let manifest_path = source.name(Path::new(MANIFEST_FILE));
    let mut manifest_bytes = Vec::new();
    source
        .open(Path::new(MANIFEST_FILE))
        .and_then(|mut r| r.read_to_end(&mut manifest_bytes))
        .map_err(io_err("read", &manifest_path))?;
    let manifest = Manifest::parse(&manifest_bytes).map_err(|source| LayoutError::Manifest {
        id: id.clone(),
        source,
    })?;
    let mut targets = targets(backup, pgdata, opts)?;

    let mut roots = vec![targets.pgdata.clone()];
    roots.extend(targets.tablespaces.values().cloned());
    // Opened before anything is written, so their syncfs reports any writeback error since.
    let mut root_fds = Vec::new();
    for root in &roots {
        prepare_root(root, opts.delta)?;
        let fd = File::open(root).map_err(io_err("open", root))?;
        let dev = fd.metadata().map_err(io_err("stat", root))?.dev();
        targets.synced_devs.insert(dev);
        root_fds.push((root, fd, dev));
    }
    let mut dirs: BTreeSet<PathBuf> = roots.iter().cloned().collect();
    for d in &backup.contents.directories {
        let path = targets.place(&d.path);
        make_dir(&path, d.mode)?;
        dirs.insert(path);
    }
    for link in &backup.contents.symlinks {
        let path = targets.pgdata.join(&link.path);
        // pg_tblspc/<oid> points at the tablespace's (possibly remapped) location.
        let target = link
            .path
            .strip_prefix("pg_tblspc/")
            .and_then(|oid| oid.parse::<u32>().ok())
            .and_then(|oid| targets.tablespaces.get(&oid).cloned())
            .unwrap_or_else(|| PathBuf::from(&link.target));
        make_symlink(&path, &target)?;
        if let Some(parent) = path.parent() {
            dirs.insert(parent.to_path_buf());
        }
    }

    let stats = write_files(source, backup, &manifest, &targets, compression, opts)?;
    for f in &backup.contents.files {
        if let Some(parent) = targets.place(&f.path).parent() {
            dirs.insert(parent.to_path_buf());
        }
    }

    if opts.delta {
        remove_extras(backup, &targets)?;
    }
    let mut synced = HashSet::new();
    for (root, fd, dev) in &root_fds {
        if synced.insert(*dev) {
            crate::repo::sync_filesystem(fd).map_err(io_err("sync the file system of", root))?;
        }
    }
    for dir in dirs.iter().rev() {
        sync_dir(dir)?;
    }
    for root in &roots {
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(stats)
}

fn targets(
    backup: &BackupInfo,
    pgdata: &Path,
    opts: &LayoutOptions,
) -> Result<Targets, LayoutError> {
    let mut tablespaces = HashMap::new();
    for t in &backup.tablespaces {
        tablespaces.insert(t.oid, PathBuf::from(&t.location));
    }
    for (oid, path) in &opts.tablespace_map {
        if !tablespaces.contains_key(oid) {
            return Err(LayoutError::UnknownTablespace {
                id: backup.id.clone(),
                oid: *oid,
            });
        }
        tablespaces.insert(*oid, path.clone());
    }
    for path in tablespaces.values() {
        if !path.is_absolute() {
            return Err(LayoutError::RelativeLocation { path: path.clone() });
        }
    }
    Ok(Targets {
        pgdata: pgdata.to_path_buf(),
        tablespaces,
        synced_devs: HashSet::new(),
    })
}

/// The data directory or a tablespace location: made (0700) when missing, refused when it
/// holds anything and this is not a delta restore.
fn prepare_root(root: &Path, delta: bool) -> Result<(), LayoutError> {
    match fs::read_dir(root) {
        Ok(mut entries) => {
            if !delta && entries.next().is_some() {
                return Err(LayoutError::NotEmpty {
                    path: root.to_path_buf(),
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(io_err("create directory", root))?;
        }
        Err(e) => return Err(io_err("read directory", root)(e)),
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o700)).map_err(io_err("chmod", root))
}

fn make_dir(path: &Path, mode: u32) -> Result<(), LayoutError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {}
        // A link to a directory (pg_wal on its own disk): the DBA's layout, kept; a delta
        // restore empties what it points to (see `prune`).
        Ok(m) if m.file_type().is_symlink() && path.is_dir() => return Ok(()),
        Ok(_) => {
            // A delta restore found a file or link where the backup has a directory.
            fs::remove_file(path).map_err(io_err("remove", path))?;
            fs::create_dir(path).map_err(io_err("create directory", path))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(path).map_err(io_err("create directory", path))?;
        }
        Err(e) => return Err(io_err("stat", path)(e)),
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io_err("chmod", path))
}

fn make_symlink(path: &Path, target: &Path) -> Result<(), LayoutError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            if fs::read_link(path).ok().as_deref() == Some(target) {
                return Ok(());
            }
            fs::remove_file(path).map_err(io_err("remove", path))?;
        }
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io_err("remove", path))?,
        Ok(_) => fs::remove_file(path).map_err(io_err("remove", path))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("stat", path)(e)),
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
    }
    std::os::unix::fs::symlink(target, path).map_err(io_err("create symbolic link", path))
}

/// Decompress every file on `opts.threads` threads, largest first (so one large file does
/// not start last and run alone); for a delta restore, only those that differ from the
/// backup (see [`unchanged_files`]).
fn write_files(
    source: &dyn BackupSource,
    backup: &BackupInfo,
    manifest: &Manifest,
    targets: &Targets,
    compression: Compression,
    opts: &LayoutOptions,
) -> Result<LayoutStats, LayoutError> {
    let mut order: Vec<&FileEntry> = backup.contents.files.iter().collect();
    let mut kept_stats = LayoutStats::default();
    if opts.delta {
        let kept = unchanged_files(&order, manifest, targets, opts.threads)?;
        for f in order.iter().filter(|f| kept.contains(f.path.as_str())) {
            let dest = targets.place(&f.path);
            fs::set_permissions(&dest, fs::Permissions::from_mode(f.mode & 0o7777))
                .map_err(io_err("chmod", &dest))?;
            kept_stats.files_kept += 1;
            kept_stats.bytes_kept += f.size;
        }
        order.retain(|f| !kept.contains(f.path.as_str()));
    }
    order.sort_by_key(|f| std::cmp::Reverse(f.size));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let total = Mutex::new(LayoutStats::default());
    let first_error: Mutex<Option<LayoutError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..opts.threads.max(1) {
            s.spawn(|| {
                let mut buf = vec![0u8; BUF_SIZE];
                let mut mine = LayoutStats::default();
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(f) = order.get(i) else { break };
                    let result =
                        restore_file(source, backup, manifest, targets, compression, f, &mut buf);
                    match result {
                        Ok(()) => {
                            mine.files_written += 1;
                            mine.bytes_written += f.size;
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_error.lock().expect("not poisoned").get_or_insert(e);
                        }
                    }
                }
                let mut t = total.lock().expect("not poisoned");
                t.files_written += mine.files_written;
                t.bytes_written += mine.bytes_written;
                t.files_kept += mine.files_kept;
                t.bytes_kept += mine.bytes_kept;
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("not poisoned") {
        return Err(e);
    }
    let mut total = total.into_inner().expect("not poisoned");
    total.files_kept = kept_stats.files_kept;
    total.bytes_kept = kept_stats.bytes_kept;
    Ok(total)
}

/// Put one file in place (its writeback started; [`lay_out`] waits for it at the end).
fn restore_file(
    source: &dyn BackupSource,
    backup: &BackupInfo,
    manifest: &Manifest,
    targets: &Targets,
    compression: Compression,
    f: &FileEntry,
    buf: &mut [u8],
) -> Result<(), LayoutError> {
    let dest = targets.place(&f.path);
    let expected = manifest.files.get(&f.path);
    let stored = stored_file_path(&f.path, compression);
    let src = source.name(&stored);
    let damaged = |detail: String| LayoutError::Damaged {
        id: backup.id.clone(),
        detail,
    };
    let mut reader = source
        .open(&stored)
        .and_then(|raw| crate::archive::decompressing(raw, compression))
        .map_err(io_err("open", &src))?;
    // Whatever a delta restore finds in the file's place that is not a regular file goes
    // first: opening a symbolic link for writing would write wherever it points.
    match fs::symlink_metadata(&dest) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&dest).map_err(io_err("remove", &dest))?,
        Ok(m) if !m.is_file() => fs::remove_file(&dest).map_err(io_err("remove", &dest))?,
        _ => {}
    }
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(f.mode & 0o7777)
        .open(&dest)
        .map_err(io_err("create", &dest))?;
    let mut size = 0u64;
    let mut crc = 0u32;
    loop {
        let n = reader
            .read(buf)
            .map_err(|e| damaged(format!("\"{}\" does not decompress: {e}", src.display())))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        size += n as u64;
        out.write_all(&buf[..n]).map_err(io_err("write", &dest))?;
        // Each WRITEBACK_STEP written goes to the disk while the next is decompressed.
        if size / WRITEBACK_STEP != (size - n as u64) / WRITEBACK_STEP {
            let end = size - size % WRITEBACK_STEP;
            crate::repo::start_writeback(&out, end - WRITEBACK_STEP, WRITEBACK_STEP);
        }
    }
    // Permissions as in the backup even when a delta restore reused the inode.
    out.set_permissions(fs::Permissions::from_mode(f.mode & 0o7777))
        .map_err(io_err("chmod", &dest))?;
    let dev = out.metadata().map_err(io_err("stat", &dest))?.dev();
    if targets.synced_devs.contains(&dev) {
        crate::repo::start_writeback(&out, 0, 0);
    } else {
        out.sync_all().map_err(io_err("fsync", &dest))?;
    }
    if size != f.size {
        return Err(damaged(format!(
            "\"{}\" holds {size} bytes, the backup recorded {}",
            src.display(),
            f.size
        )));
    }
    if let Some(want) = expected.and_then(|m| m.crc32c).filter(|&c| c != crc) {
        return Err(damaged(format!(
            "\"{}\" has CRC-32C {}, the manifest says {}",
            src.display(),
            format_crc32c(crc),
            format_crc32c(want)
        )));
    }
    Ok(())
}

/// Bytes read, decompressed and written at a time: small enough that what was just
/// decompressed is still in the CPU's cache when it is checksummed and copied out (1 MiB
/// was slower here).
const BUF_SIZE: usize = 256 << 10;
/// A file being written has its writeback started every this many bytes.
const WRITEBACK_STEP: u64 = 8 << 20;
/// A delta restore checks files in pieces of this size, any piece on any thread.
const PIECE: u64 = 16 << 20;

/// Delta: the files of `files` already in place as the backup has them — a regular file
/// with the manifest's size and CRC-32C (a file the manifest has no checksum for is
/// rewritten). Content is what counts, never a modification time. The files are read in
/// pieces of [`PIECE`] on `threads` threads and each file's CRC-32C combined from its
/// pieces' in order.
fn unchanged_files<'a>(
    files: &[&'a FileEntry],
    manifest: &Manifest,
    targets: &Targets,
    threads: usize,
) -> Result<HashSet<&'a str>, LayoutError> {
    struct Candidate<'a> {
        rel: &'a str,
        path: PathBuf,
        size: u64,
        crc: u32,
    }
    let mut candidates = Vec::new();
    for f in files {
        let Some(want) = manifest.files.get(&f.path) else {
            continue;
        };
        let Some(crc) = want.crc32c else { continue };
        let path = targets.place(&f.path);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.len() == want.size => candidates.push(Candidate {
                rel: &f.path,
                path,
                size: want.size,
                crc,
            }),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("stat", &path)(e)),
        }
    }
    // (candidate, offset, length); an empty file is one empty piece.
    let mut pieces = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        let mut off = 0;
        loop {
            let len = (c.size - off).min(PIECE);
            pieces.push((i, off, len));
            off += len;
            if off >= c.size {
                break;
            }
        }
    }
    // Each piece's CRC-32C, or SHORT for a file that ended early (changed meanwhile: it
    // does not match, and is rewritten).
    const SHORT: u64 = u64::MAX;
    let crcs: Vec<AtomicU64> = pieces.iter().map(|_| AtomicU64::new(SHORT)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<LayoutError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut buf = vec![0u8; BUF_SIZE];
                // The file of the previous piece, kept open for the next one.
                let mut open: Option<(usize, File)> = None;
                while !failed.load(Ordering::Relaxed) {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(i, off, len)) = pieces.get(k) else {
                        break;
                    };
                    let c = &candidates[i];
                    if open.as_ref().is_none_or(|(j, _)| *j != i) {
                        match File::open(&c.path) {
                            Ok(f) => open = Some((i, f)),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                let e = io_err("open", &c.path)(e);
                                first_error.lock().expect("not poisoned").get_or_insert(e);
                                break;
                            }
                        }
                    }
                    let (_, file) = open.as_ref().expect("opened above");
                    match piece_crc(file, off, len, &mut buf) {
                        Ok(Some(crc)) => crcs[k].store(u64::from(crc), Ordering::Relaxed),
                        Ok(None) => {}
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            let e = io_err("read", &c.path)(e);
                            first_error.lock().expect("not poisoned").get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("not poisoned") {
        return Err(e);
    }
    let mut got: Vec<Option<u32>> = vec![Some(0); candidates.len()];
    for (k, &(i, off, len)) in pieces.iter().enumerate() {
        let piece = crcs[k].load(Ordering::Relaxed);
        got[i] = match (got[i], u32::try_from(piece)) {
            (Some(_), Ok(crc)) if off == 0 => Some(crc),
            (Some(so_far), Ok(crc)) => Some(crc32c::crc32c_combine(so_far, crc, len as usize)),
            _ => None,
        };
    }
    Ok(candidates
        .iter()
        .zip(got)
        .filter(|(c, crc)| *crc == Some(c.crc))
        .map(|(c, _)| c.rel)
        .collect())
}

/// The CRC-32C of `len` bytes of `file` from `offset`; `None` when the file ends before
/// (it changed since it was looked at).
fn piece_crc(file: &File, offset: u64, len: u64, buf: &mut [u8]) -> io::Result<Option<u32>> {
    let mut crc = 0u32;
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        let n = file.read_at(&mut buf[..want], offset + done)?;
        if n == 0 {
            return Ok(None);
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        done += n as u64;
    }
    Ok(Some(crc))
}

/// Delta: remove what the backup does not hold, inside the data directory (not following
/// links) and inside the tablespace version directories the backup holds.
fn remove_extras(backup: &BackupInfo, targets: &Targets) -> Result<(), LayoutError> {
    let mut keep: HashSet<PathBuf> = HashSet::new();
    let mut ts_roots: BTreeSet<PathBuf> = BTreeSet::new();
    let entries = backup
        .contents
        .directories
        .iter()
        .map(|d| &d.path)
        .chain(backup.contents.files.iter().map(|f| &f.path))
        .chain(backup.contents.symlinks.iter().map(|l| &l.path));
    for rel in entries {
        let place = targets.place(rel);
        if let Some((oid, inner)) = split_tablespace_path(rel) {
            if let (Some(loc), Some(top)) = (targets.tablespaces.get(&oid), inner.split('/').next())
            {
                ts_roots.insert(loc.join(top));
            }
        }
        keep.insert(place);
    }
    prune(&targets.pgdata, &keep)?;
    for root in &ts_roots {
        if root.is_dir() {
            prune(root, &keep)?;
        }
    }
    Ok(())
}

/// Remove every entry below `dir` that is not in `keep`; follows no symbolic link but a kept
/// one to a directory that is not a tablespace (pg_wal on its own disk).
fn prune(dir: &Path, keep: &HashSet<PathBuf>) -> Result<(), LayoutError> {
    let entries = fs::read_dir(dir).map_err(io_err("read directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(io_err("stat", &path))?;
        if !keep.contains(&path) {
            tracing::info!(
                "delta: removing \"{}\", which the backup does not hold",
                path.display()
            );
            if ft.is_dir() {
                fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
            } else {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
            }
        } else if ft.is_dir() || (ft.is_symlink() && path.is_dir() && !is_tablespace_link(&path)) {
            // Into a kept link to a directory too (pg_wal elsewhere): its old content goes.
            prune(&path, keep)?;
        }
    }
    Ok(())
}

/// `pg_tblspc/<oid>`: a tablespace's link, whose target is pruned on its own terms.
fn is_tablespace_link(path: &Path) -> bool {
    path.parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "pg_tblspc")
}

fn sync_dir(dir: &Path) -> Result<(), LayoutError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::ManifestFile;

    /// Only files whose content matches are kept: same-size changes anywhere (here in a
    /// later piece of a file of several pieces) are found, whatever the modification time.
    #[test]
    fn delta_check_reads_every_piece_of_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..2 * PIECE as usize + 100)
            .map(|i| (i % 253) as u8)
            .collect();
        let mut changed = big.clone();
        changed[PIECE as usize + 7] ^= 1;
        // (name, as backed up, what is in place)
        type Case<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);
        let cases: [Case; 8] = [
            ("big", &big, Some(&big)),
            ("big_changed", &big, Some(&changed)),
            ("small", b"abc", Some(b"abc")),
            ("small_changed", b"abc", Some(b"abd")),
            ("empty", b"", Some(b"")),
            ("missing", b"abc", None),
            ("longer", b"abc", Some(b"abcd")),
            ("link", b"abc", None),
        ];
        let mut manifest = Manifest::default();
        let mut entries = Vec::new();
        for (name, backed_up, in_place) in cases {
            manifest.files.insert(
                name.into(),
                ManifestFile {
                    size: backed_up.len() as u64,
                    crc32c: Some(crc32c::crc32c(backed_up)),
                },
            );
            entries.push(FileEntry {
                path: name.into(),
                mode: 0o600,
                size: backed_up.len() as u64,
            });
            if let Some(bytes) = in_place {
                fs::write(dir.path().join(name), bytes).unwrap();
            }
        }
        fs::write(dir.path().join("target"), b"abc").unwrap();
        std::os::unix::fs::symlink(dir.path().join("target"), dir.path().join("link")).unwrap();
        let targets = Targets {
            pgdata: dir.path().to_path_buf(),
            tablespaces: HashMap::new(),
            synced_devs: HashSet::new(),
        };
        let files: Vec<&FileEntry> = entries.iter().collect();
        for threads in [1, 3] {
            let mut kept: Vec<&str> = unchanged_files(&files, &manifest, &targets, threads)
                .unwrap()
                .into_iter()
                .collect();
            kept.sort();
            assert_eq!(kept, ["big", "empty", "small"], "{threads} threads");
        }
    }
}
