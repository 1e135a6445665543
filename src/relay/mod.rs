//! `walferry relay`: receive and archive WAL exactly as `walferry receive` does, and serve it
//! to downstream standbys speaking the walsender side of the replication protocol.
//!
//! One receiver ([`crate::receiver::receive_publishing`]) feeds everything: it publishes the
//! archive's durable, validated position on a watch and shares each checked piece of WAL in
//! a [`LiveTail`]. Every downstream connection is a task ([`session`]) that sends from the
//! tail while it keeps up and from the archive (its own [`crate::archive::ArchiveReader`])
//! when it fell behind, never past the published position. With `--sync-downstream N` the
//! receiver's acknowledgements upstream are held at the [`Quorum`]: the position that N
//! downstreams have reported flushed, so the primary sees relay and standbys as one
//! synchronous standby.
//!
//! With an `s3://` archive the relay's directory is the receiver's spool, which lets a
//! segment go once the store holds it. A downstream that asks for WAL the spool no longer
//! has is served from the store ([`StoreFill`]): its session fetches the segment's objects
//! into a directory of its own and reads them with an `ArchiveReader` as it reads the spool
//! (awaiting the download on its own task: other sessions and the receiver go on).

pub mod auth;
pub mod command;
mod session;
pub mod slots;
mod stream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use auth::AuthMethod;
pub use slots::{Slot, SlotError, Slots};

use crate::receiver::{
    receive_publishing, Feedback, LiveTail, Outcome, Position, Published, ReceiveError,
    ReceiveOptions, Upstream,
};
use crate::wal::Lsn;

/// Default size of the live tail: downstreams less than this far behind are served from
/// memory.
pub const DEFAULT_TAIL: usize = 64 << 20;

/// Everything `walferry relay` needs to run.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// How to receive and archive (as `walferry receive`).
    pub receive: ReceiveOptions,
    /// Addresses to accept downstream connections on.
    pub listen: Vec<SocketAddr>,
    pub auth: AuthMethod,
    /// `--tls-cert`, `--tls-key`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// With TLS configured: refuse connections that do not use it.
    pub tls_required: bool,
    /// Acknowledge upstream only what this many downstreams have flushed (0: do not wait).
    pub sync_downstream: usize,
    /// A downstream silent this long is disconnected (PostgreSQL's `wal_sender_timeout`).
    pub wal_sender_timeout: Duration,
    pub tail_capacity: usize,
}

/// Why the relay could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    #[error("could not listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error(transparent)]
    Slots(#[from] SlotError),
}

impl RelayError {
    pub fn hint(&self) -> Option<String> {
        match self {
            RelayError::Receive(e) => e.hint(),
            RelayError::Listen { .. } => Some(
                "another process may hold the port (PostgreSQL itself?); pick a free one with --listen".into(),
            ),
            RelayError::Tls(_) => Some(
                "--tls-cert takes a PEM certificate chain, --tls-key its PEM private key (PKCS#8, PKCS#1 or SEC1)".into(),
            ),
            RelayError::Slots(_) => None,
        }
    }
}

/// Where WAL that an `s3://` archive's spool no longer holds is fetched from: the store's
/// `wal/` prefix (through a client of the relay's own runtime), into a directory per
/// session under `dir`.
pub(crate) struct StoreFill {
    remote: crate::objstore::Remote,
    dir: PathBuf,
}

/// Under the spool: not a WAL name, so the receiver's and the uploader's scans pass it by.
const STORE_FILL_DIR: &str = ".walferry-store-fill";

/// What the sessions share.
pub(crate) struct Hub {
    dir: PathBuf,
    store: Option<StoreFill>,
    position: watch::Receiver<Position>,
    upstream: watch::Receiver<Option<Upstream>>,
    tail: Arc<LiveTail>,
    slots: Slots,
    auth: AuthMethod,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// `tls-server-end-point` channel-binding data of the certificate, for SCRAM-PLUS.
    tls_binding: Option<Vec<u8>>,
    tls_required: bool,
    quorum: Quorum,
    feedback: FeedbackHub,
    wal_sender_timeout: Duration,
    metrics: Option<Arc<crate::service::Metrics>>,
    next_pid: AtomicI32,
    secret: u64,
    shutdown: watch::Receiver<bool>,
}

impl Hub {
    /// The upstream as of its last connection (sessions start only once there is one).
    fn upstream(&self) -> Upstream {
        self.upstream
            .borrow()
            .clone()
            .expect("sessions are accepted only after the upstream identified itself")
    }

    fn next_pid(&self) -> i32 {
        self.next_pid.fetch_add(1, Ordering::Relaxed)
    }

    fn secret_key(&self, pid: i32) -> i32 {
        (self.secret ^ (pid as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) as i32
    }
}

/// The `--sync-downstream` quorum: the highest position that `need` downstreams have all
/// reported flushed. It only moves forward (an acknowledgement cannot be taken back); a
/// downstream that leaves stops counting.
pub(crate) struct Quorum {
    need: usize,
    reports: Mutex<HashMap<i32, Lsn>>,
    gate: watch::Sender<Lsn>,
}

impl Quorum {
    fn new(need: usize) -> Self {
        Quorum {
            need,
            reports: Mutex::new(HashMap::new()),
            gate: watch::channel(Lsn(0)).0,
        }
    }

    fn report(&self, pid: i32, flush: Lsn) {
        if self.need == 0 {
            return;
        }
        let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        reports.insert(pid, flush);
        if reports.len() < self.need {
            return;
        }
        let mut flushes: Vec<Lsn> = reports.values().copied().collect();
        flushes.sort_unstable_by(|a, b| b.cmp(a));
        let agreed = flushes[self.need - 1];
        self.gate.send_if_modified(|g| {
            let moved = agreed > *g;
            if moved {
                *g = agreed;
            }
            moved
        });
    }

    fn forget(&self, pid: i32) {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
    }
}

/// Hot-standby feedback of the downstreams, passed upstream as one: the oldest xmin (and
/// catalog xmin) any of them still needs, so that the primary's vacuum keeps the rows their
/// queries read, as a cascading PostgreSQL standby does. A downstream that leaves stops
/// holding anything back.
pub(crate) struct FeedbackHub {
    each: Mutex<HashMap<i32, Feedback>>,
    oldest: watch::Sender<Option<Feedback>>,
}

impl FeedbackHub {
    fn new() -> Self {
        FeedbackHub {
            each: Mutex::new(HashMap::new()),
            oldest: watch::channel(None).0,
        }
    }

    fn report(&self, pid: i32, f: Feedback) {
        let mut each = self.each.lock().unwrap_or_else(|p| p.into_inner());
        each.insert(pid, f);
        self.publish(&each);
    }

    fn forget(&self, pid: i32) {
        let mut each = self.each.lock().unwrap_or_else(|p| p.into_inner());
        if each.remove(&pid).is_some() {
            self.publish(&each);
        }
    }

    fn publish(&self, each: &HashMap<i32, Feedback>) {
        let oldest = oldest_feedback(each.values().copied());
        self.oldest.send_if_modified(|cur| {
            let changed = *cur != oldest;
            *cur = oldest;
            changed
        });
    }
}

/// The oldest of several feedbacks, each xid compared with its epoch; xid 0 is "none".
/// `None` when there is nothing to report at all (no downstream sent feedback).
fn oldest_feedback(all: impl Iterator<Item = Feedback>) -> Option<Feedback> {
    let full = |xid: u32, epoch: u32| (xid != 0).then(|| (u64::from(epoch) << 32) | u64::from(xid));
    let mut seen = false;
    let mut xmin: Option<u64> = None;
    let mut catalog: Option<u64> = None;
    for f in all {
        seen = true;
        if let Some(x) = full(f.xmin, f.xmin_epoch) {
            xmin = Some(xmin.map_or(x, |m| m.min(x)));
        }
        if let Some(x) = full(f.catalog_xmin, f.catalog_xmin_epoch) {
            catalog = Some(catalog.map_or(x, |m| m.min(x)));
        }
    }
    let split = |x: Option<u64>| x.map_or((0, 0), |x| (x as u32, (x >> 32) as u32));
    let ((xmin, xmin_epoch), (catalog_xmin, catalog_xmin_epoch)) = (split(xmin), split(catalog));
    seen.then_some(Feedback {
        xmin,
        xmin_epoch,
        catalog_xmin,
        catalog_xmin_epoch,
    })
}

/// Run the relay until a stop is requested or the receiver fails.
///
/// `bound` receives the addresses actually listened on (useful with port 0).
pub async fn run(
    opts: RelayOptions,
    mut shutdown: watch::Receiver<bool>,
    bound: Option<tokio::sync::oneshot::Sender<Vec<SocketAddr>>>,
) -> Result<Outcome, RelayError> {
    let dir = opts.receive.directory.clone();
    crate::archive::Archive::check_dir(&dir).map_err(ReceiveError::from)?;
    let slots = Slots::load(&dir)?;
    let (tls, tls_binding) = match &opts.tls {
        Some((cert, key)) => {
            let (acceptor, binding) = tls_acceptor(cert, key)?;
            (Some(acceptor), binding)
        }
        None => (None, None),
    };
    let mut listeners = Vec::new();
    for addr in &opts.listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| RelayError::Listen {
                addr: *addr,
                source,
            })?;
        listeners.push(l);
    }
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();

    let tail = Arc::new(LiveTail::new(opts.tail_capacity));
    let quorum = Quorum::new(opts.sync_downstream);
    let feedback = FeedbackHub::new();
    let mut receive = opts.receive.clone();
    receive.live_tail = Some(tail.clone());
    // Downstreams are served durable WAL only, so every write is made durable at once, on
    // the network task (`--synchronous`'s write policy): handing each batch to a writer
    // thread and its position back cost a median 10 ms of replay lag on a busy machine,
    // against 1 ms this way (scripts/bench-relay.sh).
    receive.synchronous = true;
    receive.flush_eagerly = true;
    if opts.sync_downstream > 0 {
        receive.ack_limit = Some(quorum.gate.subscribe());
    }
    receive.feedback = Some(feedback.oldest.subscribe());

    // One stop for everything: the caller's, or the receiver's end.
    let (stop_tx, stop_rx) = watch::channel(false);
    let published = Arc::new(Published::new());
    let store = match &opts.receive.upload_to {
        None => None,
        Some(remote) => {
            let fill = dir.join(STORE_FILL_DIR);
            // What sessions of an earlier run fetched is of no use now; but the directory
            // is only ours once the spool's lock is (the receiver takes it for good below:
            // another relay on this spool is refused there, and its files stay untouched).
            let probe = crate::archive::ArchiveLock::acquire(&dir).map_err(ReceiveError::from)?;
            let _ = std::fs::remove_dir_all(&fill);
            drop(probe);
            std::fs::create_dir_all(&fill).map_err(|e| {
                ReceiveError::Internal(format!(
                    "could not create directory \"{}\": {e}",
                    fill.display()
                ))
            })?;
            Some(StoreFill {
                remote: remote.fresh().map_err(ReceiveError::from)?,
                dir: fill,
            })
        }
    };
    let hub = Arc::new(Hub {
        dir: dir.clone(),
        store,
        position: published.position.subscribe(),
        upstream: published.upstream.subscribe(),
        tail,
        slots,
        auth: opts.auth.clone(),
        tls,
        tls_binding,
        tls_required: opts.tls_required,
        quorum,
        feedback,
        wal_sender_timeout: opts.wal_sender_timeout,
        metrics: opts.receive.metrics.clone(),
        next_pid: AtomicI32::new(std::process::id() as i32 * 1000 % 1_000_000_000 + 1),
        secret: random_u64(),
        shutdown: stop_rx.clone(),
    });

    let receiver = {
        let published = published.clone();
        let stop_rx = stop_rx.clone();
        tokio::spawn(async move { receive_publishing(&receive, stop_rx, &published).await })
    };
    let forward = {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            if shutdown.wait_for(|s| *s).await.is_ok() {
                stop_tx.send_replace(true);
            }
        })
    };

    // Serve once the upstream has identified itself (its system id and version are what
    // downstreams are told) and streaming has begun (the timeline and position they are
    // told); the upstream is published before the first position.
    let mut position = published.position.subscribe();
    let mut ready_stop = stop_rx.clone();
    let ready = tokio::select! {
        r = position.wait_for(|p| *p != Position::NONE) => r.is_ok(),
        _ = stopped(&mut ready_stop) => false,
        _ = wait_finished(&receiver) => false,
    };
    let mut accepters = Vec::new();
    if ready {
        for (l, addr) in listeners.into_iter().zip(&addrs) {
            tracing::info!("relay: accepting replication connections on {addr}");
            accepters.push(tokio::spawn(accept_loop(hub.clone(), l)));
        }
        if let Some(bound) = bound {
            let _ = bound.send(addrs);
        }
    }

    let result = match receiver.await {
        Ok(r) => r.map_err(RelayError::from),
        Err(e) => Err(RelayError::Receive(ReceiveError::Internal(format!(
            "receiver task failed: {e}"
        )))),
    };
    stop_tx.send_replace(true);
    forward.abort();
    for a in accepters {
        a.abort();
    }
    result
}

/// Resolves when a stop is requested (never, once nobody can request one).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves when `task` has finished (without taking its result).
async fn wait_finished<T>(task: &tokio::task::JoinHandle<T>) {
    while !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn accept_loop(hub: Arc<Hub>, listener: TcpListener) {
    let mut stop = hub.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(&mut stop) => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                tokio::spawn(session::serve(hub.clone(), tcp, peer));
            }
            Err(e) => {
                // Out of file descriptors and the like: say so, and do not spin.
                tracing::warn!("relay: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The TLS acceptor for `--tls-cert`/`--tls-key`, and the certificate's channel-binding
/// data (none for a key type SCRAM-PLUS cannot bind to).
fn tls_acceptor(
    cert: &Path,
    key: &Path,
) -> Result<(tokio_rustls::TlsAcceptor, Option<Vec<u8>>), RelayError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect())
        .map_err(|e| {
            RelayError::Tls(format!(
                "could not read certificate \"{}\": {e}",
                cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(RelayError::Tls(format!(
            "no certificate in \"{}\"",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        RelayError::Tls(format!(
            "could not read private key \"{}\": {e}",
            key.display()
        ))
    })?;
    let binding = match crate::auth::tls_server_end_point(&certs[0]) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!("relay: SCRAM-SHA-256-PLUS will not be offered: {e}");
            None
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RelayError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            RelayError::Tls(format!(
                "certificate and key do not make a usable pair: {e}"
            ))
        })?;
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), binding))
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    u64::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fb(xmin: u32, xmin_epoch: u32, catalog_xmin: u32) -> Feedback {
        Feedback {
            xmin,
            xmin_epoch,
            catalog_xmin,
            catalog_xmin_epoch: 0,
        }
    }

    #[test]
    fn the_oldest_xmin_wins_across_epochs_and_zero_means_none() {
        assert_eq!(oldest_feedback([].into_iter()), None);
        let got =
            oldest_feedback([fb(100, 1, 0), fb(4_000_000_000, 0, 7), fb(0, 0, 0)].into_iter());
        assert_eq!(got, Some(fb(4_000_000_000, 0, 7)));
        // Only "none" reports: something to send, holding nothing back.
        assert_eq!(
            oldest_feedback([fb(0, 0, 0)].into_iter()),
            Some(fb(0, 0, 0))
        );
    }

    #[test]
    fn the_quorum_is_the_nth_highest_flush_and_never_goes_back() {
        let q = Quorum::new(2);
        let gate = q.gate.subscribe();
        q.report(1, Lsn(500));
        assert_eq!(
            *gate.borrow(),
            Lsn(0),
            "one downstream is not a quorum of two"
        );
        q.report(2, Lsn(300));
        assert_eq!(*gate.borrow(), Lsn(300));
        q.report(3, Lsn(400));
        assert_eq!(*gate.borrow(), Lsn(400));
        q.forget(1);
        q.report(2, Lsn(350));
        assert_eq!(
            *gate.borrow(),
            Lsn(400),
            "an acknowledgement is never taken back"
        );
    }
}
