//! `backup --pgdata`: the files of a backup read from the data directory itself, as
//! pgBackRest does, instead of through the server's walsender. The server is only told
//! where the backup starts and ends (`pg_backup_start()` / `pg_backup_stop()` on an SQL
//! session of its own, see [`super::take`]); between the two, this module lists the data
//! directory and its tablespaces with the exclusion rules of PostgreSQL's BASE_BACKUP
//! (basebackup.c sendDir and its exclude lists), so a backup holds the same files either
//! way, and feeds each file to the [`Store`] as the tar stream's members are fed: the same
//! stored layout, the same catalog, the same restore.
//!
//! Files change while they are read; that is what the WAL from the backup's start replays
//! over. As sendFile does, a file is read up to the size `fstat` gave when it was opened:
//! growth after that is left out, a file that shrinks meanwhile is padded with zeros to that
//! size, and one that vanished between the listing and the read is left out.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::store::{Store, StoreError, CHUNK};
use super::tar::{EntryKind, TarEntry};

/// Directories whose contents the server recreates or does not need at start (their
/// names anywhere in the tree): kept as empty directories, for their permissions.
const EXCLUDED_DIR_CONTENTS: [&str; 7] = [
    "pg_stat_tmp",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
];

/// Files never copied, anywhere in the tree: the server's own state of this run, and a
/// backup_label / tablespace_map / backup_manifest a restored cluster may still hold
/// (the backup's own are written from `pg_backup_stop()`'s answer).
const EXCLUDED_FILES: [&str; 7] = [
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postmaster.pid",
    "postmaster.opts",
];

/// Excluded by prefix: the relation cache init file and its temporary copies.
const EXCLUDED_FILE_PREFIX: &str = "pg_internal.init";
/// Temporary files and directories of sorts and hashes (PG_TEMP_FILE_PREFIX).
const TEMP_FILE_PREFIX: &str = "pgsql_tmp";
/// Copied after every other file of the main directory, as BASE_BACKUP does.
const CONTROL_FILE: &str = "global/pg_control";

/// One thing of a data directory to put in the backup, in the order it is put there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Dir { rel: String, mode: u32 },
    File { rel: String, size: u64 },
    Symlink { rel: String, target: String },
}

/// The items of one archive: the main data directory (`oid` `None`) or a tablespace,
/// paths relative to `root` (a tablespace's location: its items are `PG_15_.../...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    pub oid: Option<u32>,
    pub root: PathBuf,
    pub items: Vec<Item>,
}

/// What a backup of a data directory will copy: tablespaces first, the main directory
/// last (its last file is pg_control), and the byte count for progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub archives: Vec<Archive>,
    pub total: u64,
}

impl Listing {
    /// `(oid, location)` of each tablespace.
    pub fn tablespaces(&self) -> Vec<(u32, String)> {
        self.archives
            .iter()
            .filter_map(|a| Some((a.oid?, a.root.to_string_lossy().into_owned())))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PgDataError {
    #[error("could not {op} \"{}\": {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("\"{}\" is not UTF-8; walferry backs up only file names that are", path.display())]
    NotUtf8 { path: PathBuf },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PgDataError + 'a {
    move |source| PgDataError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// List `pgdata` and the tablespaces its `pg_tblspc/` links to. `version_dir_prefix` is
/// `PG_<major>_`: of a tablespace, only the directory of this server's version is copied
/// (sendTablespace's TABLESPACE_VERSION_DIRECTORY).
pub fn list(pgdata: &Path, version_dir_prefix: &str) -> Result<Listing, PgDataError> {
    let mut main = Vec::new();
    let mut links = Vec::new();
    walk(pgdata, "", &Rules::Main, &mut main, &mut links)?;
    let control = pgdata.join(CONTROL_FILE);
    let meta = fs::metadata(&control).map_err(io_err("stat", &control))?;
    main.push(Item::File {
        rel: CONTROL_FILE.into(),
        size: meta.len(),
    });
    let mut archives = Vec::new();
    for (oid, location) in links {
        let Some(version_dir) = version_dir(&location, version_dir_prefix)? else {
            tracing::warn!(
                "tablespace {oid} at \"{}\" has no {version_dir_prefix}* directory; it is \
                 left out",
                location.display()
            );
            continue;
        };
        let version_path = location.join(&version_dir);
        let meta = match fs::metadata(&version_path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // dropped meanwhile
            Err(e) => return Err(io_err("stat", &version_path)(e)),
        };
        let mut items = vec![Item::Dir {
            rel: version_dir.clone(),
            mode: meta.mode() & 0o7777,
        }];
        walk(
            &version_path,
            &version_dir,
            &Rules::Tablespace {
                version_dir: &version_dir,
            },
            &mut items,
            &mut Vec::new(),
        )?;
        archives.push(Archive {
            oid: Some(oid),
            root: location,
            items,
        });
    }
    archives.push(Archive {
        oid: None,
        root: pgdata.to_path_buf(),
        items: main,
    });
    let total = archives
        .iter()
        .flat_map(|a| &a.items)
        .map(|i| match i {
            Item::File { size, .. } => *size,
            _ => 0,
        })
        .sum();
    Ok(Listing { archives, total })
}

/// The `PG_<major>_<catversion>` directory of a tablespace location.
fn version_dir(location: &Path, prefix: &str) -> Result<Option<String>, PgDataError> {
    let entries = match fs::read_dir(location) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read directory", location)(e)),
    };
    let mut found: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    found.sort();
    Ok(found.pop())
}

/// Where in the tree a directory being walked is.
enum Rules<'a> {
    Main,
    Tablespace { version_dir: &'a str },
}

/// Walk `dir` (whose path in the archive is `rel`, "" for the root) into `items`; symbolic
/// links in the main directory's `pg_tblspc/` are tablespaces, collected into `links`.
fn walk(
    dir: &Path,
    rel: &str,
    rules: &Rules<'_>,
    items: &mut Vec<Item>,
    links: &mut Vec<(u32, PathBuf)>,
) -> Result<(), PgDataError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        // A directory dropped (a database, a tablespace) since it was listed.
        Err(e) if e.kind() == io::ErrorKind::NotFound && !rel.is_empty() => return Ok(()),
        Err(e) => return Err(io_err("read directory", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let name = entry.file_name();
        let name = name
            .into_string()
            .map_err(|_| PgDataError::NotUtf8 { path: entry.path() })?;
        names.push(name);
    }
    // Sorted, so a backup lists its files in a stable order (and tests can tell).
    names.sort();
    let db_dir = is_db_dir(rel, rules);
    let present: HashSet<&str> = if db_dir {
        names.iter().map(String::as_str).collect()
    } else {
        HashSet::new()
    };
    for name in &names {
        if excluded_by_name(name) || (db_dir && excluded_relation(name, &present)) {
            continue;
        }
        let child_rel = join(rel, name);
        if matches!(rules, Rules::Main) && child_rel == CONTROL_FILE {
            continue;
        }
        let path = dir.join(name);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("stat", &path)(e)),
        };
        let mode = meta.permissions().mode() & 0o7777;
        // A symbolic link stands for a directory here (convert_link_to_directory).
        let dir_mode = if meta.file_type().is_symlink() {
            0o700
        } else {
            mode
        };
        if EXCLUDED_DIR_CONTENTS.contains(&name.as_str()) {
            items.push(Item::Dir {
                rel: child_rel,
                mode: dir_mode,
            });
            continue;
        }
        if matches!(rules, Rules::Main) && child_rel == "pg_wal" {
            // The WAL comes from the archive: pg_wal is kept empty but for archive_status.
            items.push(Item::Dir {
                rel: child_rel,
                mode: dir_mode,
            });
            items.push(Item::Dir {
                rel: "pg_wal/archive_status".into(),
                mode: dir_mode,
            });
            continue;
        }
        let ft = meta.file_type();
        if matches!(rules, Rules::Main) && rel == "pg_tblspc" && ft.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err("read symbolic link", &path))?;
            let target_text = target
                .to_str()
                .ok_or_else(|| PgDataError::NotUtf8 {
                    path: target.clone(),
                })?
                .to_string();
            match name.parse::<u32>() {
                Ok(oid) => links.push((oid, target)),
                Err(_) => tracing::warn!(
                    "\"{}\" is not a tablespace link (its name is no OID); only the link is \
                     copied",
                    path.display()
                ),
            }
            items.push(Item::Symlink {
                rel: child_rel,
                target: target_text,
            });
        } else if ft.is_dir() {
            items.push(Item::Dir {
                rel: child_rel.clone(),
                mode,
            });
            walk(&path, &child_rel, rules, items, links)?;
        } else if ft.is_file() {
            items.push(Item::File {
                rel: child_rel,
                size: meta.len(),
            });
        } else {
            tracing::warn!("skipping special file \"{}\"", path.display());
        }
    }
    Ok(())
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

/// Excluded wherever it is, by its name alone.
fn excluded_by_name(name: &str) -> bool {
    name.starts_with(TEMP_FILE_PREFIX)
        || name.starts_with(EXCLUDED_FILE_PREFIX)
        || EXCLUDED_FILES.contains(&name)
}

/// A database directory (holding relation files): `base/<digits>`, or `<digits>` in a
/// tablespace's version directory.
fn is_db_dir(rel: &str, rules: &Rules<'_>) -> bool {
    let Some((parent, last)) = rel.rsplit_once('/') else {
        return false;
    };
    if !last.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    match rules {
        Rules::Main => parent == "base",
        Rules::Tablespace { version_dir } => parent == *version_dir,
    }
}

/// In a database directory: a temporary relation's file, or a fork of an unlogged
/// relation other than its init fork (the init fork becomes the main fork at the end of
/// recovery).
fn excluded_relation(name: &str, present: &HashSet<&str>) -> bool {
    if is_temp_relation(name) {
        return true;
    }
    match relation_file(name) {
        Some((node, fork)) if fork != "init" => present.contains(format!("{node}_init").as_str()),
        _ => false,
    }
}

/// `<digits>[_<fork>][.<segment>]`, as relation files are named: the relfilenode and
/// the fork ("" for the main fork).
fn relation_file(name: &str) -> Option<(&str, &str)> {
    let digits = name.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let (node, rest) = name.split_at(digits);
    let (fork, rest) = match rest.strip_prefix('_') {
        Some(r) => {
            let fork = ["fsm", "vm", "init"]
                .into_iter()
                .find(|f| r.starts_with(f))?;
            (fork, &r[fork.len()..])
        }
        None => ("", rest),
    };
    match rest.strip_prefix('.') {
        None if rest.is_empty() => Some((node, fork)),
        Some(seg) if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) => {
            Some((node, fork))
        }
        _ => None,
    }
}

/// `t<digits>_<relation file name>`: a temporary relation's file (looks_like_temp_rel_name).
fn is_temp_relation(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0
        && rest[digits..]
            .strip_prefix('_')
            .is_some_and(|r| relation_file(r).is_some())
}

/// What was copied of a file: its path in the backup and modification time (for the
/// manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub rel: String,
    pub mtime: i64,
}

/// How fast to read, and where reading stands.
pub struct Reader<'a> {
    /// Bytes per second; `None`: as fast as the disk allows.
    pub max_rate: Option<u64>,
    pub started: std::time::Instant,
    pub done: u64,
    /// Called after each chunk with the bytes read so far.
    pub progress: &'a mut (dyn FnMut(u64) + Send),
}

/// Either side of copying one file can fail.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{0}")]
    Read(#[from] PgDataError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Put every item of `archive` into `store`, reading files in chunks of the store's size.
/// `copied` gets each file stored. Files gone since the listing are left out.
pub async fn copy_archive(
    archive: &Archive,
    store: &mut Store,
    reader: &mut Reader<'_>,
    copied: &mut Vec<Copied>,
) -> Result<(), CopyError> {
    store.begin_archive(archive.oid);
    let prefix = archive
        .oid
        .map_or_else(String::new, |oid| format!("pg_tblspc/{oid}/"));
    for item in &archive.items {
        match item {
            Item::Dir { rel, mode } => {
                store
                    .entry(entry(rel, EntryKind::Directory, *mode, 0))
                    .await?
            }
            Item::Symlink { rel, target } => {
                store
                    .entry(entry(
                        rel,
                        EntryKind::Symlink {
                            target: target.clone(),
                        },
                        0o777,
                        0,
                    ))
                    .await?
            }
            Item::File { rel, .. } => {
                let path = archive.root.join(rel);
                if let Some(mtime) = copy_file(&path, rel, store, reader).await? {
                    copied.push(Copied {
                        rel: format!("{prefix}{rel}"),
                        mtime,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Copy one file; its modification time, or `None` when it is gone.
async fn copy_file(
    path: &Path,
    rel: &str,
    store: &mut Store,
    reader: &mut Reader<'_>,
) -> Result<Option<i64>, CopyError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::debug!("\"{}\" is gone since it was listed", path.display());
            return Ok(None);
        }
        Err(e) => return Err(io_err("open", path)(e).into()),
    };
    let meta = f.metadata().map_err(io_err("stat", path))?;
    let size = meta.len();
    store
        .entry(entry(
            rel,
            EntryKind::File { size },
            meta.mode() & 0o7777,
            meta.mtime().max(0) as u64,
        ))
        .await?;
    let mut left = size;
    let mut eof = false;
    while left > 0 {
        let want = left.min(CHUNK as u64) as usize;
        let mut buf = store.buffer();
        buf.resize(want, 0);
        let mut got = 0;
        while !eof && got < want {
            match f.read(&mut buf[got..]) {
                Ok(0) => eof = true,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("read", path)(e).into()),
            }
        }
        // Shrunk while read: the rest stays zeros, as WAL replay expects of a truncation.
        buf[got..].fill(0);
        left -= want as u64;
        store.data_owned(buf).await?;
        reader.done += want as u64;
        (reader.progress)(reader.done);
        throttle(reader).await;
    }
    store.end().await?;
    Ok(Some(meta.mtime()))
}

/// Sleep as long as reading is ahead of `max_rate`.
async fn throttle(reader: &Reader<'_>) {
    let Some(rate) = reader.max_rate.filter(|&r| r > 0) else {
        return;
    };
    let due = std::time::Duration::from_secs_f64(reader.done as f64 / rate as f64);
    let elapsed = reader.started.elapsed();
    if due > elapsed {
        tokio::time::sleep(due - elapsed).await;
    }
}

fn entry(rel: &str, kind: EntryKind, mode: u32, mtime: u64) -> TarEntry {
    TarEntry {
        path: rel.to_string(),
        kind,
        mode,
        mtime,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn relation_file_names() {
        assert_eq!(relation_file("16384"), Some(("16384", "")));
        assert_eq!(relation_file("16384.12"), Some(("16384", "")));
        assert_eq!(relation_file("16384_fsm"), Some(("16384", "fsm")));
        assert_eq!(relation_file("16384_vm.3"), Some(("16384", "vm")));
        assert_eq!(relation_file("16384_init"), Some(("16384", "init")));
        assert_eq!(relation_file("16384_foo"), None);
        assert_eq!(relation_file("16384."), None);
        assert_eq!(relation_file("PG_VERSION"), None);
        assert_eq!(relation_file("pg_filenode.map"), None);
        assert!(is_temp_relation("t3_16390"));
        assert!(is_temp_relation("t3_16390_fsm.1"));
        assert!(!is_temp_relation("t_16390"));
        assert!(!is_temp_relation("t3_"));
        assert!(!is_temp_relation("16390"));
        assert!(excluded_by_name("pg_internal.init"));
        assert!(excluded_by_name("pg_internal.init.1234"));
        assert!(excluded_by_name("pgsql_tmp1234.0"));
        assert!(excluded_by_name("postmaster.pid"));
        assert!(!excluded_by_name("postmaster.pid.old"));
        assert!(!excluded_by_name("postgresql.auto.conf"));
    }

    fn touch(path: &Path, bytes: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    /// A data directory with everything the rules look at: what is copied, in order.
    #[test]
    fn listing_applies_basebackup_rules() {
        let dir = tempfile::tempdir().unwrap();
        let pg = dir.path().join("data");
        let ts = dir.path().join("ts");
        for f in [
            "PG_VERSION",
            "global/pg_control",
            "global/1262",
            "global/pg_internal.init",
            "base/5/16384",
            "base/5/16384_fsm",
            "base/5/16390",
            "base/5/16390.1",
            "base/5/16390_vm",
            "base/5/16390_init",
            "base/5/t3_16400",
            "base/5/pg_internal.init.77",
            "base/pgsql_tmp/pgsql_tmp1.0",
            "pg_wal/000000010000000000000001",
            "pg_wal/archive_status/000000010000000000000001.done",
            "pg_stat_tmp/global.stat",
            "pg_replslot/s/state",
            "pg_subtrans/0000",
            "pg_xact/0000",
            "postmaster.pid",
            "postmaster.opts",
            "backup_label",
            "tablespace_map",
            "backup_manifest",
            "postgresql.auto.conf",
            "postgresql.auto.conf.tmp",
            "current_logfiles.tmp",
        ] {
            touch(&pg.join(f), b"x");
        }
        for d in ["pg_notify", "pg_tblspc"] {
            fs::create_dir_all(pg.join(d)).unwrap();
        }
        touch(&ts.join("PG_15_202209061/5/16500"), b"yy");
        touch(&ts.join("PG_15_202209061/5/16501_init"), b"");
        touch(&ts.join("PG_15_202209061/5/16501"), b"zz");
        touch(&ts.join("PG_14_202107181/5/1"), b"old");
        symlink(&ts, pg.join("pg_tblspc/16499")).unwrap();

        let listing = list(&pg, "PG_15_").unwrap();
        let names = |a: &Archive| {
            a.items
                .iter()
                .map(|i| match i {
                    Item::Dir { rel, .. } => format!("{rel}/"),
                    Item::File { rel, .. } => rel.clone(),
                    Item::Symlink { rel, target } => format!("{rel} -> {target}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(listing.archives.len(), 2);
        assert_eq!(listing.archives[0].oid, Some(16499));
        assert_eq!(
            names(&listing.archives[0]),
            [
                "PG_15_202209061/",
                "PG_15_202209061/5/",
                "PG_15_202209061/5/16500",
                "PG_15_202209061/5/16501_init",
            ]
        );
        assert_eq!(listing.archives[1].oid, None);
        assert_eq!(
            names(&listing.archives[1]),
            [
                "PG_VERSION",
                "base/",
                "base/5/",
                "base/5/16384",
                "base/5/16384_fsm",
                "base/5/16390_init",
                "global/",
                "global/1262",
                "pg_notify/",
                "pg_replslot/",
                "pg_stat_tmp/",
                "pg_subtrans/",
                "pg_tblspc/",
                &format!("pg_tblspc/16499 -> {}", ts.display()),
                "pg_wal/",
                "pg_wal/archive_status/",
                "pg_xact/",
                "pg_xact/0000",
                "postgresql.auto.conf",
                "global/pg_control",
            ]
        );
        assert_eq!(
            listing.tablespaces(),
            [(16499, ts.to_string_lossy().into_owned())]
        );
        assert_eq!(listing.total, 2 + 8);
    }

    #[tokio::test]
    async fn files_are_read_to_the_size_they_had_when_opened() {
        use crate::archive::CompressionSpec;
        let dir = tempfile::tempdir().unwrap();
        let pg = dir.path().join("data");
        let big: Vec<u8> = (0..CHUNK * 2 + 5).map(|i| (i % 253) as u8).collect();
        touch(&pg.join("global/pg_control"), b"control");
        touch(&pg.join("base/1/1"), &big);
        touch(&pg.join("base/1/2"), b"gone");
        touch(&dir.path().join("ts/PG_15_1/5/9"), b"spaced");
        fs::create_dir(pg.join("pg_tblspc")).unwrap();
        symlink(dir.path().join("ts"), pg.join("pg_tblspc/7")).unwrap();
        let listing = list(&pg, "PG_15_").unwrap();
        fs::remove_file(pg.join("base/1/2")).unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let mut store = Store::new(&out, CompressionSpec::None, 2);
        let mut seen = 0;
        let mut progress = |d| seen = d;
        let mut reader = Reader {
            max_rate: None,
            started: std::time::Instant::now(),
            done: 0,
            progress: &mut progress,
        };
        let mut copied = Vec::new();
        for archive in &listing.archives {
            copy_archive(archive, &mut store, &mut reader, &mut copied)
                .await
                .unwrap();
        }
        let summary = store.finish().unwrap();
        assert_eq!(
            copied.iter().map(|c| c.rel.as_str()).collect::<Vec<_>>(),
            ["pg_tblspc/7/PG_15_1/5/9", "base/1/1", "global/pg_control"]
        );
        assert_eq!(
            summary.stored("pg_tblspc/7/PG_15_1/5/9"),
            Some((6, crc32c::crc32c(b"spaced")))
        );
        assert_eq!(
            summary.stored("base/1/1"),
            Some((big.len() as u64, crc32c::crc32c(&big)))
        );
        assert_eq!(seen, big.len() as u64 + 7 + 6);
        assert_eq!(fs::read(out.join("data/base/1/1")).unwrap(), big);
    }
}
