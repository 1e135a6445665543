//! A thread that makes written WAL durable while the network task goes on: a relay's
//! `--serve-unflushed` sends WAL downstream once written, and its fsync then only delays
//! the acknowledgement upstream, not the WAL that arrives meanwhile. Without it the network
//! task waits out each fsync (on a busy ext4, now and then 10 ms and more) before it reads
//! the next message, and every downstream waits with it.
//!
//! The network task asks for "durable up to here, in this file" ([`Flusher::request`]);
//! requests that pile up during one fsync are merged into the newest (one later fdatasync
//! covers them all, as the file is the same or the earlier one was synced when it filled),
//! and the thread publishes how far it got on a watch. An fsync error stops the thread;
//! the network task takes the error from [`Flusher::failure`] when the watch closes.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::watch;

use crate::archive::ArchiveError;
use crate::wal::Lsn;

/// What the thread is asked for: the newest request, and whether to stop.
#[derive(Default)]
struct Requests {
    newest: Option<SyncRequest>,
    closed: bool,
    failure: Option<ArchiveError>,
}

/// Make `file` (at `path`, for errors) durable; the WAL it holds then reaches `upto`.
pub struct SyncRequest {
    pub file: Arc<File>,
    pub path: Arc<PathBuf>,
    pub upto: Lsn,
}

pub struct Flusher {
    shared: Arc<(Mutex<Requests>, Condvar)>,
    done: watch::Receiver<Lsn>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    /// Start the thread; `start` is what is durable already.
    pub fn spawn(start: Lsn) -> std::io::Result<Flusher> {
        Self::spawn_with(start, |req| req.file.sync_data())
    }

    /// As [`Flusher::spawn`], making a request durable with `sync` (tests slow it down).
    fn spawn_with(
        start: Lsn,
        sync: impl Fn(&SyncRequest) -> std::io::Result<()> + Send + 'static,
    ) -> std::io::Result<Flusher> {
        let shared = Arc::new((Mutex::new(Requests::default()), Condvar::new()));
        let (tx, done) = watch::channel(start);
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("walferry-flush".into())
            .spawn(move || run(&theirs, &tx, sync))?;
        Ok(Flusher {
            shared,
            done,
            thread: Some(thread),
        })
    }

    /// Ask for `req`; returns at once.
    pub fn request(&self, req: SyncRequest) {
        let (lock, wake) = &*self.shared;
        let mut r = lock.lock().unwrap_or_else(|p| p.into_inner());
        if r.newest.as_ref().is_none_or(|n| n.upto < req.upto) {
            r.newest = Some(req);
            wake.notify_one();
        }
    }

    /// Resolves when the thread has made more durable (see [`Flusher::durable`]), or with
    /// the thread's error. Cancel-safe.
    pub async fn changed(&mut self) -> Result<(), ArchiveError> {
        match self.done.changed().await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.failure()),
        }
    }

    /// How far the WAL is durable now.
    pub fn durable(&self) -> Lsn {
        *self.done.borrow()
    }

    /// The thread's error (after the watch closed).
    pub fn failure(&self) -> ArchiveError {
        let (lock, _) = &*self.shared;
        let mut r = lock.lock().unwrap_or_else(|p| p.into_inner());
        r.failure.take().unwrap_or_else(|| {
            ArchiveError::io(
                "fsync",
                std::path::Path::new("(flush thread)"),
                std::io::Error::other("the flush thread stopped"),
            )
        })
    }
}

impl Drop for Flusher {
    /// Stop the thread after the request it is on; what it had not started is synced by
    /// the writer's close, which follows.
    fn drop(&mut self) {
        {
            let (lock, wake) = &*self.shared;
            let mut r = lock.lock().unwrap_or_else(|p| p.into_inner());
            r.closed = true;
            r.newest = None;
            wake.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    shared: &(Mutex<Requests>, Condvar),
    done: &watch::Sender<Lsn>,
    sync: impl Fn(&SyncRequest) -> std::io::Result<()>,
) {
    let (lock, wake) = shared;
    loop {
        let req = {
            let mut r = lock.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if r.closed {
                    return;
                }
                if let Some(req) = r.newest.take() {
                    break req;
                }
                r = wake.wait(r).unwrap_or_else(|p| p.into_inner());
            }
        };
        if let Err(e) = sync(&req) {
            let mut r = lock.lock().unwrap_or_else(|p| p.into_inner());
            r.failure = Some(ArchiveError::io("fsync", &req.path, e));
            // Dropping `done` with the return tells the network task.
            return;
        }
        done.send_if_modified(|d| {
            let more = req.upto > *d;
            if more {
                *d = req.upto;
            }
            more
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_made_durable_and_published_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = Arc::new(File::create(&path).unwrap());
        let mut f = Flusher::spawn(Lsn(100)).unwrap();
        assert_eq!(f.durable(), Lsn(100));
        for upto in [200, 300, 250] {
            f.request(SyncRequest {
                file: file.clone(),
                path: Arc::new(path.clone()),
                upto: Lsn(upto),
            });
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while f.durable() < Lsn(300) {
            tokio::time::timeout_at(deadline, f.changed())
                .await
                .expect("the flusher published within 10 s")
                .unwrap();
        }
        // An older request never moves the published position back.
        assert_eq!(f.durable(), Lsn(300));
    }

    /// Requests made during one fsync are covered by one more, for the newest of them.
    #[tokio::test]
    async fn requests_that_arrive_during_an_fsync_are_merged_into_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = Arc::new(File::create(&path).unwrap());
        let (entered_tx, entered) = std::sync::mpsc::channel::<Lsn>();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let mut f = Flusher::spawn_with(Lsn(0), move |req| {
            entered_tx.send(req.upto).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
            Ok(())
        })
        .unwrap();
        let ask = |upto| {
            f.request(SyncRequest {
                file: file.clone(),
                path: Arc::new(path.clone()),
                upto: Lsn(upto),
            })
        };
        ask(100);
        let wait = std::time::Duration::from_secs(10);
        assert_eq!(entered.recv_timeout(wait).unwrap(), Lsn(100));
        // The thread is inside the first fsync: these wait for it, then go as one.
        ask(200);
        ask(300);
        ask(400);
        release.send(()).unwrap();
        assert_eq!(entered.recv_timeout(wait).unwrap(), Lsn(400));
        release.send(()).unwrap();
        let deadline = tokio::time::Instant::now() + wait;
        while f.durable() < Lsn(400) {
            tokio::time::timeout_at(deadline, f.changed())
                .await
                .expect("published within 10 s")
                .unwrap();
        }
        drop(f);
        // Two fsyncs in all.
        assert!(entered.try_recv().is_err());
    }

    #[tokio::test]
    async fn an_fsync_error_reaches_the_network_task() {
        // fdatasync of a directory opened read-only succeeds on most file systems; a pipe
        // refuses it (EINVAL), which is what a failing disk looks like to the thread.
        let (r, _w) = nix_pipe();
        let mut f = Flusher::spawn(Lsn(0)).unwrap();
        f.request(SyncRequest {
            file: Arc::new(r),
            path: Arc::new(PathBuf::from("/the/segment.partial")),
            upto: Lsn(10),
        });
        let err = tokio::time::timeout(std::time::Duration::from_secs(10), f.changed())
            .await
            .expect("the error arrived within 10 s")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("fsync"), "{text}");
        assert!(text.contains("/the/segment.partial"), "{text}");
        assert_eq!(f.durable(), Lsn(0));
    }

    fn nix_pipe() -> (File, File) {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }
}
