//! Local copies of parts of a repository in object storage, for the commands that read a
//! repository through its files (`verify`, `restore-points`, `wal-info`, `list`, `restore`):
//! they run unchanged on the copy, with every check they make on a local repository.
//!
//! The copy lives in a cache directory (`WALFERRY_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/walferry`, else `~/.cache/walferry`, one directory per bucket and
//! prefix), so a second run fetches only what is new: complete segments and backup files
//! never change under their names, so a cached file of the right size is the object; a
//! `.partial` is fetched again when its size differs. Files the store no longer has are
//! removed from the copy.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;

use super::{Object, Remote, RemoteError};

/// Downloads in flight at once.
const PARALLEL: usize = 4;

/// The cache directory for `remote`'s repository.
pub fn cache_dir(remote: &Remote) -> PathBuf {
    let base = std::env::var_os("WALFERRY_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("walferry")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/walferry")))
        .unwrap_or_else(|| std::env::temp_dir().join("walferry-cache"));
    let url = remote.url();
    let mut dir = base.join("s3").join(&url.bucket);
    for part in url.prefix.split('/').filter(|p| !p.is_empty()) {
        dir.push(part);
    }
    dir
}

/// What a sync did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Synced {
    pub fetched: u64,
    pub fetched_bytes: u64,
    pub kept: u64,
    pub removed: u64,
}

/// Makes `dir` hold the objects under `sub` of `remote` that `want` accepts (by name
/// relative to `sub`): missing or resized ones are downloaded, files under `dir` that the
/// store does not have (and `want` accepts) are removed.
pub async fn sync(
    remote: &Remote,
    sub: &str,
    dir: &Path,
    want: impl Fn(&str) -> bool,
) -> Result<Synced, RemoteError> {
    let objects: Vec<Object> = remote
        .list(sub)
        .await?
        .into_iter()
        .filter(|o| want(&o.name))
        .collect();
    sync_objects(remote, sub, dir, &objects, &want).await
}

/// [`sync`] for a listing already made.
pub async fn sync_objects(
    remote: &Remote,
    sub: &str,
    dir: &Path,
    objects: &[Object],
    want: &dyn Fn(&str) -> bool,
) -> Result<Synced, RemoteError> {
    make_dir(dir)?;
    let mut synced = Synced::default();
    let mut todo = Vec::new();
    for o in objects {
        let local = dir.join(&o.name);
        match std::fs::metadata(&local) {
            Ok(m) if m.is_file() && m.len() == o.size => synced.kept += 1,
            _ => todo.push(o.clone()),
        }
    }
    let sub = sub.trim_matches('/');
    let results: Vec<Result<u64, RemoteError>> = futures_util::stream::iter(todo.iter().map(|o| {
        let rel = match sub.is_empty() {
            true => o.name.clone(),
            false => format!("{sub}/{}", o.name),
        };
        let dest = dir.join(&o.name);
        async move {
            if let Some(parent) = dest.parent() {
                make_dir(parent)?;
            }
            remote.download(&rel, &dest).await
        }
    }))
    .buffer_unordered(PARALLEL)
    .collect()
    .await;
    for r in results {
        synced.fetched_bytes += r?;
        synced.fetched += 1;
    }
    let names: std::collections::HashSet<&str> = objects.iter().map(|o| o.name.as_str()).collect();
    synced.removed = remove_extras(dir, dir, &names, want)?;
    Ok(synced)
}

fn make_dir(dir: &Path) -> Result<(), RemoteError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| RemoteError::local("create directory", dir, e))
}

fn remove_extras(
    root: &Path,
    dir: &Path,
    keep: &std::collections::HashSet<&str>,
    want: &dyn Fn(&str) -> bool,
) -> Result<u64, RemoteError> {
    let mut removed = 0;
    let entries =
        std::fs::read_dir(dir).map_err(|e| RemoteError::local("read directory", dir, e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let rel = rel.to_string_lossy().into_owned();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            removed += remove_extras(root, &path, keep, want)?;
        } else if kind.is_file() && want(&rel) && !keep.contains(rel.as_str()) {
            std::fs::remove_file(&path).map_err(|e| RemoteError::local("remove", &path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// For `archive-get` from object storage: makes `dir` hold what answering for file `name`
/// of the archive `remote` (its `wal/` prefix) reads, so that the getter checks it as it
/// checks a local archive: every stored form of `name` and, for a segment, of the segments
/// in `ahead` (the next one, whose start completes the record crossing into it, and those
/// to prefetch). When the segment is there only as a `.partial`, also every history file and
/// a later complete segment of its timeline, if the store has one (which makes the
/// `.partial` a hole rather than the end of the timeline). Segments before `name` are
/// removed from `dir`: it is a window, not a copy of the archive.
pub async fn fetch_window(
    remote: &Remote,
    dir: &Path,
    name: &str,
    ahead: &[String],
) -> Result<(), RemoteError> {
    use crate::wal::page::MIN_SEG_SIZE;
    use crate::wal::{parse_history_file_name, WalFileName};

    make_dir(dir)?;
    let mut objects = remote.list_starting("", name).await?;
    let segment = WalFileName::parse(name, MIN_SEG_SIZE).filter(|w| !w.partial);
    if segment.is_some() {
        let complete = objects.iter().any(|o| {
            WalFileName::parse(&o.name, MIN_SEG_SIZE).is_some_and(|w| !w.partial)
                && o.name.len() >= 24
                && o.name[..24] == name[..24]
        });
        for next in ahead {
            objects.extend(remote.list_starting("", next).await?);
        }
        if !complete {
            let tli = &name[..8];
            let later = remote.list_from("", &format!("{name}~"), 1000).await?;
            objects.extend(
                later
                    .iter()
                    .filter(|o| {
                        o.name.starts_with(tli)
                            && WalFileName::parse(&o.name, MIN_SEG_SIZE).is_some_and(|w| !w.partial)
                    })
                    .take(1)
                    .cloned(),
            );
            let all = remote.list("").await?;
            objects.extend(
                all.into_iter()
                    .filter(|o| parse_history_file_name(&o.name).is_some()),
            );
        }
    }
    objects.sort_by(|a, b| a.name.cmp(&b.name));
    objects.dedup_by(|a, b| a.name == b.name);
    let fetch: Vec<Object> = objects
        .into_iter()
        .filter(|o| {
            !std::fs::metadata(dir.join(&o.name)).is_ok_and(|m| m.is_file() && m.len() == o.size)
        })
        .collect();
    let results: Vec<Result<u64, RemoteError>> = futures_util::stream::iter(
        fetch
            .iter()
            .map(|o| async move { remote.download(&o.name, &dir.join(&o.name)).await }),
    )
    .buffer_unordered(PARALLEL)
    .collect()
    .await;
    for r in results {
        r?;
    }
    if segment.is_some() {
        // Older segments were served already; keep the window small.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                if WalFileName::parse(&file, MIN_SEG_SIZE).is_some()
                    && file.len() >= 24
                    && file[8..24] < name[8..24]
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
    Ok(())
}
