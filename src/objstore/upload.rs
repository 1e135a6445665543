//! Shipping a receiver's WAL from its spool directory to the object store.
//!
//! `receive`/`relay` with an `s3://` archive write and fsync segments into a local spool
//! directory exactly as into a local archive (the flush position they report keeps its
//! meaning: durable on local disk), and this uploader, on a thread and runtime of its own so
//! that it never competes with the WAL hot path for the receiver's thread, copies each
//! completed segment and history file up: a few at a time, retried with backoff while the
//! store is away. A segment leaves the spool only once the store has confirmed it (the
//! object is there with the size sent; the payload's SHA-256 is signed into the request,
//! which the server checks). The newest complete segment and the history files stay, so the
//! spool alone always knows where streaming resumes.
//!
//! The receiver's `.partial` goes up too, every ten seconds while it changes and at a clean
//! stop (the only kind of object that is ever replaced), so a restore from the store reaches
//! WAL received seconds ago, and a backup's end (in the segment being written) is in the store
//! soon after the backup; it is deleted once the complete segment of that name is up.
//!
//! A spool that starts empty is seeded from the store ([`seed_spool`]): its history files
//! and its newest segment, so resuming after the spool is lost (a new host) neither leaves a
//! gap nor starts a second copy of WAL the store has.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use tokio::sync::watch;

use super::{Put, Remote, RemoteError};
use crate::archive::list_dir;
use crate::wal::page::MIN_SEG_SIZE;
use crate::wal::{parse_history_file_name, Lsn, WalFileName};

/// Uploads in flight at once.
const PARALLEL: usize = 4;
/// How often the spool is looked at when nothing wakes the uploader.
const PASS_EVERY: Duration = Duration::from_millis(500);
/// Longest wait between attempts while the store fails.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often the growing `.partial` goes up when it changed.
const PARTIAL_EVERY: Duration = Duration::from_secs(10);
/// How long a stop waits for the last uploads.
const DRAIN_FOR: Duration = Duration::from_secs(60);

/// What `/metrics` and the log tell about the uploads.
#[derive(Debug, Default)]
pub struct UploadStats {
    /// Complete files in the spool not yet confirmed by the store.
    pub pending_files: AtomicU64,
    pub pending_bytes: AtomicU64,
    /// Age in milliseconds of the oldest of them (0 when none).
    pub oldest_pending_ms: AtomicU64,
    pub uploaded_files: AtomicU64,
    pub uploaded_bytes: AtomicU64,
    pub failures: AtomicU64,
}

/// What the uploader follows of its receiver: the flushed position (how much of the
/// `.partial` is WAL worth sending), and with `--synchronous-remote` the acknowledgement
/// limit it moves once the store holds the WAL up to there.
pub struct Follow {
    pub position: watch::Receiver<crate::receiver::Position>,
    pub limit: Option<watch::Sender<Lsn>>,
}

/// A running uploader; [`Uploader::finish`] drains it.
pub struct Uploader {
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub stats: Arc<UploadStats>,
}

impl Uploader {
    /// Starts uploading the spool `spool` into `remote` (the archive's `wal/` prefix).
    pub fn spawn(remote: Remote, spool: PathBuf, follow: Follow) -> Result<Uploader, RemoteError> {
        let remote = remote.fresh()?;
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(UploadStats::default());
        let shared = stats.clone();
        let thread = std::thread::Builder::new()
            .name("walferry-upload".into())
            .spawn(move || {
                let rt = match super::runtime() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("the uploader could not start a runtime: {e}");
                        return;
                    }
                };
                rt.block_on(run(remote, spool, shared, stop_rx, follow));
            })
            .map_err(|e| RemoteError::local("start a thread for", Path::new("the uploader"), e))?;
        Ok(Uploader {
            stop,
            thread: Some(thread),
            stats,
        })
    }

    /// After the receiver has stopped: uploads what is left (up to a minute) and the
    /// `.partial`, then returns.
    pub fn finish(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct State {
    remote: Remote,
    spool: PathBuf,
    stats: Arc<UploadStats>,
    /// Names confirmed by the store in this run.
    done: HashSet<String>,
    /// `.partial` objects known in the store (uploaded at a stop, or found when seeding).
    remote_partials: HashSet<String>,
    backoff: Duration,
    retry_at: Option<Instant>,
    last_error: Option<String>,
    /// What was last uploaded of each `.partial` (name, length, and for whole files the
    /// modification time), and when the growing one went up last.
    partials_sent: std::collections::HashMap<String, (String, u64, Option<SystemTime>)>,
    partial_at: Instant,
}

async fn run(
    remote: Remote,
    spool: PathBuf,
    stats: Arc<UploadStats>,
    mut stop: watch::Receiver<bool>,
    mut follow: Follow,
) {
    super::journal::take_over(&remote).await;
    let remote_partials = match remote.list("").await {
        Ok(objects) => objects
            .into_iter()
            .filter(|o| o.name.ends_with(".partial"))
            .map(|o| o.name)
            .collect(),
        Err(_) => HashSet::new(),
    };
    let mut st = State {
        remote,
        spool,
        stats,
        done: HashSet::new(),
        remote_partials,
        backoff: Duration::from_millis(500),
        retry_at: None,
        last_error: None,
        partials_sent: Default::default(),
        partial_at: Instant::now(),
    };
    loop {
        let flushed = follow.position.borrow_and_update().flushed;
        let known = (flushed != Lsn::INVALID).then_some(flushed);
        if st.retry_at.is_none_or(|t| Instant::now() >= t) {
            let left = st.pass().await;
            match &follow.limit {
                // --synchronous-remote: acknowledge what the store holds, at once.
                Some(limit) if left == 0 && flushed > *limit.borrow() => {
                    let held = st.upload_partials(known).await;
                    if held {
                        let _ = limit.send(flushed);
                    }
                }
                Some(_) => {}
                None if st.partial_at.elapsed() >= PARTIAL_EVERY => {
                    st.partial_at = Instant::now();
                    st.upload_partials(known).await;
                }
                None => {}
            }
        }
        if *stop.borrow() {
            break;
        }
        let synchronous = follow.limit.is_some();
        tokio::select! {
            _ = tokio::time::sleep(PASS_EVERY) => {}
            _ = stop.changed() => {}
            r = follow.position.changed(), if synchronous => {
                if r.is_err() {
                    follow.limit = None;
                }
            }
        }
    }
    // Drain: the receiver has stopped, nothing new comes.
    let deadline = Instant::now() + DRAIN_FOR;
    loop {
        st.retry_at = None;
        if st.pass().await == 0 {
            let flushed = follow.position.borrow().flushed;
            st.upload_partials((flushed != Lsn::INVALID).then_some(flushed))
                .await;
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                "stopping with {} file(s) not yet in {}; they stay in the spool \"{}\" and are \
                 uploaded at the next start",
                st.stats.pending_files.load(Ordering::Relaxed),
                st.remote.url(),
                st.spool.display()
            );
            break;
        }
        tokio::time::sleep(st.backoff.min(Duration::from_secs(2))).await;
    }
}

/// A complete file of the spool to upload.
struct Pending {
    name: String,
    len: u64,
    age: Duration,
    /// A segment (removed from the spool once up), not a history file.
    segment: bool,
    /// Segment order key, to know the newest.
    key: (String, String),
}

impl State {
    /// Uploads every complete file not yet up; returns how many are still pending.
    async fn pass(&mut self) -> usize {
        let pending = match self.pending() {
            Ok(p) => p,
            Err(e) => {
                self.failed(format!(
                    "could not list the spool \"{}\": {e}",
                    self.spool.display()
                ));
                return usize::MAX;
            }
        };
        let newest_segment = pending
            .iter()
            .filter(|p| p.segment)
            .map(|p| p.key.clone())
            .max()
            .into_iter()
            .chain(self.newest_local_segment())
            .max();
        let todo: Vec<&Pending> = pending
            .iter()
            .filter(|p| !self.done.contains(&p.name))
            .collect();
        self.publish(&todo);
        if todo.is_empty() {
            // Confirmed earlier, kept while newest; remove those that no longer are.
            self.prune(&pending, newest_segment.as_ref());
            return 0;
        }
        let remote = self.remote.clone();
        let spool = self.spool.clone();
        let results: Vec<(String, u64, Result<Put, RemoteError>)> =
            futures_util::stream::iter(todo.iter().map(|p| {
                let remote = remote.clone();
                let path = spool.join(&p.name);
                let name = p.name.clone();
                let len = p.len;
                async move {
                    let r = remote.put_file_new(&name, &path).await;
                    (name, len, r)
                }
            }))
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let mut left = 0;
        for (name, len, result) in results {
            match result {
                Ok(put) => {
                    if put == Put::Stored {
                        self.stats.uploaded_bytes.fetch_add(len, Ordering::Relaxed);
                    }
                    self.stats.uploaded_files.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("{name}: in {}", self.remote.url());
                    self.done.insert(name.clone());
                    self.drop_remote_partials(&name).await;
                }
                Err(e) => {
                    left += 1;
                    self.failed(e.to_string());
                }
            }
        }
        if left == 0 {
            if let Some(e) = self.last_error.take() {
                tracing::info!(
                    "uploads to {} work again (last error: {e})",
                    self.remote.url()
                );
            }
            self.backoff = Duration::from_millis(500);
            self.retry_at = None;
        }
        self.prune(&pending, newest_segment.as_ref());
        let todo_left: Vec<&Pending> = pending
            .iter()
            .filter(|p| !self.done.contains(&p.name))
            .collect();
        self.publish(&todo_left);
        left
    }

    fn pending(&self) -> std::io::Result<Vec<Pending>> {
        let now = SystemTime::now();
        let mut out = Vec::new();
        for f in list_dir(&self.spool)? {
            let segment = match (
                parse_history_file_name(&f.name),
                WalFileName::parse(&f.name, MIN_SEG_SIZE),
            ) {
                (Some(_), _) => false,
                (None, Some(w)) if !w.partial => true,
                _ => continue,
            };
            let age = std::fs::metadata(self.spool.join(&f.name))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            out.push(Pending {
                key: order_key(&f.name),
                name: f.name,
                len: f.len,
                age,
                segment,
            });
        }
        Ok(out)
    }

    fn newest_local_segment(&self) -> Option<(String, String)> {
        list_dir(&self.spool)
            .ok()?
            .into_iter()
            .filter(|f| WalFileName::parse(&f.name, MIN_SEG_SIZE).is_some_and(|w| !w.partial))
            .map(|f| order_key(&f.name))
            .max()
    }

    /// Removes confirmed segments from the spool, except the newest complete one.
    fn prune(&mut self, pending: &[Pending], newest: Option<&(String, String)>) {
        for p in pending {
            if p.segment && self.done.contains(&p.name) && Some(&p.key) != newest {
                match std::fs::remove_file(self.spool.join(&p.name)) {
                    Ok(()) => {
                        self.done.remove(&p.name);
                    }
                    Err(e) => tracing::warn!(
                        "could not remove uploaded \"{}\" from the spool: {e}",
                        p.name
                    ),
                }
            }
        }
    }

    fn publish(&self, todo: &[&Pending]) {
        let s = &self.stats;
        s.pending_files.store(todo.len() as u64, Ordering::Relaxed);
        s.pending_bytes
            .store(todo.iter().map(|p| p.len).sum(), Ordering::Relaxed);
        let oldest = todo.iter().map(|p| p.age).max().unwrap_or_default();
        s.oldest_pending_ms
            .store(oldest.as_millis() as u64, Ordering::Relaxed);
    }

    fn failed(&mut self, message: String) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        if self.last_error.as_deref() != Some(message.as_str()) {
            tracing::warn!(
                "upload to {} failed (retrying; WAL waits in the spool): {message}",
                self.remote.url()
            );
        }
        self.last_error = Some(message);
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Once segment `name` is up, a `.partial` of it in the store is stale.
    async fn drop_remote_partials(&mut self, name: &str) {
        let stale: Vec<String> = self
            .remote_partials
            .iter()
            .filter(|p| p.len() >= 24 && name.len() >= 24 && p[..24] == name[..24])
            .cloned()
            .collect();
        for p in stale {
            match self.remote.delete(&p).await {
                Ok(()) => {
                    self.remote_partials.remove(&p);
                }
                Err(e) => tracing::warn!("could not delete the stale {p} from the store: {e}"),
            }
        }
    }

    /// Sends up the `.partial` files of the spool holding WAL before `upto` (the
    /// receiver's flushed position; `None`: all of them), each as far as it holds WAL that
    /// is flushed (a prefix; a compressed one whole), replacing the store's older copy.
    /// Unchanged files are not sent again. True when the store then holds every such file.
    async fn upload_partials(&mut self, upto: Option<Lsn>) -> bool {
        let Ok(files) = list_dir(&self.spool) else {
            return false;
        };
        let mut partials: Vec<(crate::archive::DirFile, WalFileName)> = files
            .into_iter()
            .filter_map(|f| {
                let w = WalFileName::parse(&f.name, MIN_SEG_SIZE).filter(|w| w.partial)?;
                Some((f, w))
            })
            .collect();
        partials.sort_by_key(|(f, _)| order_key(&f.name));
        let mut all = true;
        for (file, wal) in partials {
            let path = self.spool.join(&file.name);
            let compressed = wal.compression != crate::wal::Compression::None;
            let len = match (upto, compressed) {
                (Some(upto), false) => {
                    let Some(seg_size) = crate::archive::seg_size_of_file(&path, wal.compression)
                    else {
                        // No WAL in it yet: nothing flushed lives there.
                        continue;
                    };
                    let Some(seg) = WalFileName::parse(&file.name, seg_size) else {
                        continue;
                    };
                    let start = seg.segment.segno.start_lsn(seg_size);
                    if upto <= start {
                        continue;
                    }
                    (upto.0 - start.0).min(seg_size)
                }
                _ => file.len,
            };
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            let seen = (
                file.name.clone(),
                len,
                modified.filter(|_| compressed || upto.is_none()),
            );
            if self.partials_sent.get(&file.name) == Some(&seen) {
                continue;
            }
            let bytes = match read_prefix(&path, len) {
                Ok(b) => b,
                // Renamed complete meanwhile: the next pass uploads it under its name.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.failed(format!("could not read \"{}\": {e}", path.display()));
                    all = false;
                    continue;
                }
            };
            match self
                .remote
                .put_replace(&file.name, bytes::Bytes::from(bytes))
                .await
            {
                Ok(()) => {
                    tracing::debug!("{}: {len} bytes in {}", file.name, self.remote.url());
                    self.remote_partials.insert(file.name.clone());
                    self.partials_sent.insert(file.name, seen);
                }
                Err(e) => {
                    self.failed(e.to_string());
                    all = false;
                }
            }
        }
        all
    }
}

fn read_prefix(path: &Path, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(len as usize);
    std::fs::File::open(path)?.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Segment order as the receiver's scan: log/segment part, then timeline.
fn order_key(name: &str) -> (String, String) {
    match name.len() >= 24 {
        true => (name[8..24].to_string(), name[..8].to_string()),
        false => (String::new(), name.to_string()),
    }
}

/// When `spool` holds no segment: brings the store's history files and its newest segment
/// file into it (see the module documentation). Returns the names brought.
pub async fn seed_spool(remote: &Remote, spool: &Path) -> Result<Vec<String>, RemoteError> {
    let local = list_dir(spool).map_err(|e| RemoteError::local("read directory", spool, e))?;
    if local
        .iter()
        .any(|f| WalFileName::parse(&f.name, MIN_SEG_SIZE).is_some())
    {
        return Ok(Vec::new());
    }
    let objects = remote.list("").await?;
    let mut wanted: Vec<String> = objects
        .iter()
        .filter(|o| parse_history_file_name(&o.name).is_some())
        .map(|o| o.name.clone())
        .collect();
    // Complete over partial for the same segment, as the scan orders them.
    let newest = objects
        .iter()
        .filter_map(|o| {
            WalFileName::parse(&o.name, MIN_SEG_SIZE)
                .map(|w| ((order_key(&o.name), !w.partial), o.name.clone()))
        })
        .max();
    if let Some((_, name)) = newest {
        wanted.push(name);
    }
    for name in &wanted {
        remote.download(name, &spool.join(name)).await?;
    }
    if !wanted.is_empty() {
        std::fs::File::open(spool)
            .and_then(|d| d.sync_all())
            .map_err(|e| RemoteError::local("fsync directory", spool, e))?;
    }
    Ok(wanted)
}
