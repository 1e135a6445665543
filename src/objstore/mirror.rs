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

/// Downloads in flight at once. A restore fetches every file of a backup (a thousand small
/// objects for a small cluster), each a round trip: with 4 in flight the restore of a
/// 100 MB backup from s3s-fs on loopback took 9 s, with 16 3.6 s, with 32 3.2 s (the
/// store's latency per request, not the bandwidth, sets the pace; more so on a real S3).
/// Each download streams into its file, so this bounds connections, not memory.
const PARALLEL: usize = 32;

/// walferry's cache directory: `WALFERRY_CACHE_DIR`, else `$XDG_CACHE_HOME/walferry`, else
/// `~/.cache/walferry`.
pub fn cache_base() -> PathBuf {
    std::env::var_os("WALFERRY_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("walferry")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/walferry")))
        .unwrap_or_else(|| std::env::temp_dir().join("walferry-cache"))
}

/// The cache directory for `remote`'s repository.
pub fn cache_dir(remote: &Remote) -> PathBuf {
    let url = remote.url();
    let mut dir = cache_base().join("s3").join(&url.bucket);
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
    let mut synced = Synced::default();
    let (fetched, fetched_bytes, _) = fetch_missing(remote, sub, dir, objects, None).await?;
    synced.kept = objects.len() as u64 - fetched;
    synced.fetched = fetched;
    synced.fetched_bytes = fetched_bytes;
    let names: std::collections::HashSet<&str> = objects.iter().map(|o| o.name.as_str()).collect();
    synced.removed = remove_extras(dir, dir, &names, want)?;
    Ok(synced)
}

/// Downloads into `dir` the `objects` (under `sub`) it lacks or holds at another size,
/// [`PARALLEL`] at a time; returns how many and their bytes, and the names of those copied
/// from `local` instead (see [`copy_local`]).
async fn fetch_missing(
    remote: &Remote,
    sub: &str,
    dir: &Path,
    objects: &[Object],
    local: Option<&Path>,
) -> Result<(u64, u64, Vec<String>), RemoteError> {
    make_dir(dir)?;
    let todo: Vec<&Object> = objects
        .iter()
        .filter(|o| {
            !std::fs::metadata(dir.join(&o.name)).is_ok_and(|m| m.is_file() && m.len() == o.size)
        })
        .collect();
    let sub = sub.trim_matches('/');
    type Got = Result<(u64, Option<String>), RemoteError>;
    let results: Vec<Got> = futures_util::stream::iter(todo.iter().map(|o| {
        let rel = match sub.is_empty() {
            true => o.name.clone(),
            false => format!("{sub}/{}", o.name),
        };
        let dest = dir.join(&o.name);
        async move {
            if let Some(parent) = dest.parent() {
                make_dir(parent)?;
            }
            if local.is_some_and(|l| copy_local(l, o, &dest)) {
                return Ok((0, Some(o.name.clone())));
            }
            remote.download(&rel, &dest).await.map(|n| (n, None))
        }
    }))
    .buffer_unordered(PARALLEL)
    .collect()
    .await;
    let mut bytes = 0;
    let mut copied = Vec::new();
    for r in results {
        let (n, local) = r?;
        bytes += n;
        copied.extend(local);
    }
    Ok((todo.len() as u64 - copied.len() as u64, bytes, copied))
}

/// Copies object `o` from `local`, a copy of the same part of the store (the cache a
/// restore filled), into `dest` (temporary name, fsync, rename), when `local` holds it as
/// a complete file of the object's size: complete segments and history files never change
/// under their names, so that is the object (and whoever reads it checks it as ever). A
/// `.partial` grows, so it is always downloaded. False when the copy cannot serve.
fn copy_local(local: &Path, o: &Object, dest: &Path) -> bool {
    if o.name.ends_with(".partial") {
        return false;
    }
    let src = local.join(&o.name);
    if !std::fs::metadata(&src).is_ok_and(|m| m.is_file() && m.len() == o.size) {
        return false;
    }
    let tmp = crate::archive::get::temp_beside(dest);
    let copied = std::fs::copy(&src, &tmp)
        .and_then(|n| match n == o.size {
            true => std::fs::File::open(&tmp)?.sync_all(),
            false => Err(std::io::Error::other("the copy changed size")),
        })
        .and_then(|()| std::fs::rename(&tmp, dest));
    match copied {
        Ok(()) => true,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!("\"{}\" not taken from the local copy: {e}", src.display());
            false
        }
    }
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
///
/// With `local` (a copy of the same archive, as `restore` leaves in the cache), the
/// complete objects it holds are copied from there rather than downloaded; their names are
/// returned, so that a caller who finds one damaged can fetch it from the store after all.
pub async fn fetch_window(
    remote: &Remote,
    dir: &Path,
    name: &str,
    ahead: &[String],
    local: Option<&Path>,
) -> Result<Vec<String>, RemoteError> {
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
    let (_, _, copied) = fetch_missing(remote, "", dir, &objects, local).await?;
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
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::{Duration, Instant};

    /// Requests in flight now and the most seen at once.
    #[derive(Default)]
    struct Inflight {
        now: usize,
        most: usize,
    }

    /// A stand-in S3 endpoint on 127.0.0.1 answering every GET with `body`, each answer
    /// held until `want` requests are in flight at once (or a second has passed), so that
    /// the most seen at once is how many the client keeps going.
    fn slow_store(body: &'static [u8], want: usize) -> (u16, Arc<(Mutex<Inflight>, Condvar)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new((Mutex::new(Inflight::default()), Condvar::new()));
        let seen = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || serve(conn, body, want, &shared));
            }
        });
        (port, seen)
    }

    fn serve(conn: TcpStream, body: &[u8], want: usize, shared: &(Mutex<Inflight>, Condvar)) {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut out = conn;
        loop {
            // A GET has no body: the request ends at the empty line.
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => {}
                }
            }
            let (lock, cvar) = shared;
            let mut f = lock.lock().unwrap();
            f.now += 1;
            f.most = f.most.max(f.now);
            cvar.notify_all();
            let until = Instant::now() + Duration::from_secs(1);
            while f.most < want && Instant::now() < until {
                f = cvar.wait_timeout(f, Duration::from_millis(50)).unwrap().0;
            }
            f.now -= 1;
            drop(f);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"e\"\r\n\
                 Last-Modified: Tue, 15 Nov 1994 12:45:26 GMT\r\n\r\n",
                body.len()
            );
            if out.write_all(head.as_bytes()).is_err() || out.write_all(body).is_err() {
                return;
            }
        }
    }

    #[test]
    fn a_sync_keeps_many_downloads_in_flight() {
        const BODY: &[u8] = b"one small file of a backup";
        // A few at a time leaves a restore waiting on round trips (see PARALLEL).
        const AT_LEAST: usize = 16;
        let (port, seen) = slow_store(BODY, AT_LEAST);
        let url = super::super::S3Url::parse(&format!(
            "s3://bucket/repo?endpoint=http://127.0.0.1:{port}"
        ))
        .unwrap();
        let settings = super::super::Settings {
            bucket: "bucket".into(),
            region: "us-east-1".into(),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            path_style: true,
            access_key_id: "id".into(),
            secret_access_key: "secret".into(),
            session_token: None,
            keys_from: "the test".into(),
        };
        let remote = Remote::with_settings(&url, &settings).unwrap();
        let objects: Vec<Object> = (0..2 * PARALLEL)
            .map(|i| Object {
                name: format!("base/1/{}", 16384 + i),
                size: BODY.len() as u64,
                modified: std::time::SystemTime::UNIX_EPOCH,
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let synced = super::super::runtime()
            .unwrap()
            .block_on(sync_objects(
                &remote,
                "backups/b",
                dir.path(),
                &objects,
                &|_| true,
            ))
            .unwrap();
        assert_eq!(synced.fetched, objects.len() as u64);
        for o in &objects {
            assert_eq!(std::fs::read(dir.path().join(&o.name)).unwrap(), BODY);
        }
        let most = seen.0.lock().unwrap().most;
        assert!(
            (AT_LEAST..=PARALLEL).contains(&most),
            "{most} downloads in flight at once"
        );
        // Had they gone a few at a time, each batch would have waited out the second.
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
