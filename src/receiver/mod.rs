//! The replication loop behind `walferry receive`: choose the start point, stream WAL into
//! the archive, acknowledge it, follow timeline switches and reconnect after failures.
//!
//! Async mode runs two threads per stream. This task owns the connection: it reads WAL
//! payloads from the socket straight into page-aligned batches of up to [`BATCH_LEN`],
//! validates them there while they are hot in cache ([`validate::Validator`]), and sends
//! status updates. A blocking
//! [`writer::WalWriter`] owns the files and writes each batch with direct I/O straight from
//! its buffer. A pool of [`POOL`] buffers circulates between the two (the memory bound and
//! the back-pressure). The writer publishes `written`/`flushed` on a watch channel, and
//! this task reports `flush` to the server only from there, so nothing is acknowledged
//! before it is durable. `--synchronous` mode does it all on this task (see
//! [`Session::stream_inline`]).

mod error;
pub mod flusher;
mod policy;
pub mod tail;
pub mod validate;
pub mod writer;

pub use error::ReceiveError;
pub use tail::LiveTail;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{mpsc, watch};

use crate::archive::{AlignedBuf, Archive, ArchiveError, ArchiveLock, CompressionSpec};
use crate::conninfo::ConnParams;
use crate::protocol::client::parse_size_setting;
use crate::protocol::replication::{
    encode_hot_standby_feedback, encode_status_update, pg_now, HotStandbyFeedback,
};
use crate::protocol::ReplicationConn;
use crate::service::Metrics;
use crate::wal::{parse_history, tli_of_point_in_history, HistoryEntry, Lsn, TimeLineId};
use policy::{Batched, Inline, Next, WritePolicy};
use validate::Validator;
use writer::{Progress, WalWriter, WriterCmd, WriterOptions};

/// Size of a batch buffer: eight walsender messages, one large direct write.
pub const BATCH_LEN: usize = 1 << 20;
/// Batch buffers per stream: one filling, the rest queued or being written.
pub const POOL: usize = 4;

/// Everything `walferry receive` needs to run.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    pub conn: ConnParams,
    pub directory: PathBuf,
    pub slot: Option<String>,
    /// Stop (successfully) once WAL up to here is written and flushed.
    pub endpos: Option<Lsn>,
    /// Exit on connection loss instead of reconnecting.
    pub no_loop: bool,
    /// How often to send status updates; `None` disables periodic ones.
    pub status_interval: Option<Duration>,
    /// Fsync and report `flush` after every batch, so the primary can wait for walferry.
    pub synchronous: bool,
    /// Async mode: make each batch durable as soon as it is written rather than at segment
    /// ends and status updates (a relay serves its downstreams durable WAL only, so it must
    /// not sit in the page cache for seconds).
    pub flush_eagerly: bool,
    pub no_sync: bool,
    pub compression: CompressionSpec,
    /// Check every received byte as PostgreSQL's WAL reader would (page headers, record
    /// headers, CRC-32C) before it is written; nothing unchecked is acknowledged.
    pub validate: bool,
    /// Share each checked piece of WAL with a relay's downstream sessions.
    pub live_tail: Option<Arc<LiveTail>>,
    /// Never report WAL past this position as written or flushed (a relay's downstream
    /// quorum, `--sync-downstream`); a change re-reports at once.
    pub ack_limit: Option<watch::Receiver<Lsn>>,
    /// Hot-standby feedback to pass upstream (a relay's downstreams' oldest xmin); sent
    /// whenever it changes, `None` releasing what was sent before.
    pub feedback: Option<watch::Receiver<Option<Feedback>>>,
    /// Where to report positions, errors and health (`--metrics`).
    pub metrics: Option<Arc<Metrics>>,
    /// An `s3://` archive: `directory` is its spool, and completed files are uploaded here
    /// (the archive's `wal/` prefix) in the background (see [`crate::objstore::upload`]).
    pub upload_to: Option<Box<crate::objstore::Remote>>,
    /// With `upload_to`: acknowledge as flushed only what the object store holds
    /// (`--synchronous-remote`).
    pub synchronous_remote: bool,
    /// With `synchronous`: publish validated WAL as servable once written, before the
    /// fsync that makes it durable (a relay's `--serve-unflushed`). What is reported
    /// upstream as flushed does not change.
    pub serve_unflushed: bool,
}

impl ReceiveOptions {
    pub fn new(conn: ConnParams, directory: PathBuf) -> Self {
        ReceiveOptions {
            conn,
            directory,
            slot: None,
            endpos: None,
            no_loop: false,
            status_interval: Some(Duration::from_secs(10)),
            synchronous: false,
            flush_eagerly: false,
            no_sync: false,
            compression: CompressionSpec::None,
            validate: true,
            live_tail: None,
            ack_limit: None,
            feedback: None,
            metrics: None,
            upload_to: None,
            synchronous_remote: false,
            serve_unflushed: false,
        }
    }
}

/// How a receive run ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `--endpos` reached: WAL up to at least this position is durable.
    EndposReached(Lsn),
    /// Asked to stop (SIGINT/SIGTERM); everything received is durable.
    Stopped(Lsn),
}

/// Run until `--endpos`, a stop request, or an error that retrying cannot fix.
///
/// As pg_receivewal, the first connection must succeed: until one session has connected
/// and identified the server, every error is final, so a wrong host, port, certificate or
/// password is reported at once instead of being retried forever. After that, whatever a
/// reconnect can fix (server restarts, network loss, a full disk) is retried.
pub async fn receive(
    opts: &ReceiveOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<Outcome, ReceiveError> {
    receive_publishing(opts, shutdown, &Published::new()).await
}

/// What a receive run shares with other tasks (a relay's downstream sessions).
#[derive(Debug)]
pub struct Published {
    pub position: watch::Sender<Position>,
    /// The upstream server, as of the last connection.
    pub upstream: watch::Sender<Option<Upstream>>,
}

impl Published {
    pub fn new() -> Self {
        Published {
            position: watch::channel(Position::NONE).0,
            upstream: watch::channel(None).0,
        }
    }
}

impl Default for Published {
    fn default() -> Self {
        Self::new()
    }
}

/// The oldest transactions downstream hot standbys still need, as full (epoch, xid) pairs;
/// an xid of 0 means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Feedback {
    pub xmin: u32,
    pub xmin_epoch: u32,
    pub catalog_xmin: u32,
    pub catalog_xmin_epoch: u32,
}

/// The upstream server as it identified itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub system_id: u64,
    /// Its timeline when the connection began.
    pub timeline: TimeLineId,
    pub seg_size: u64,
    /// Its `server_version` ParameterStatus (e.g. "15.8 (Debian 15.8-0+deb12u1)").
    pub server_version: String,
}

/// What the archive holds for other tasks (a relay's downstream sessions): WAL of
/// `timeline` up to `flushed` is durable in the archive and validated. Published on every
/// advance and at every timeline switch (then `flushed` is where the new timeline's
/// streaming began).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub timeline: TimeLineId,
    pub flushed: Lsn,
    /// End of the WAL that may be served to downstreams now: `flushed`, or with
    /// [`ReceiveOptions::serve_unflushed`] the validated WAL as soon as it is written,
    /// before its fsync. Never behind `flushed` within a stream.
    pub servable: Lsn,
}

impl Position {
    /// Before the first stream started (timeline 0 does not exist).
    pub const NONE: Position = Position {
        timeline: TimeLineId(0),
        flushed: Lsn::INVALID,
        servable: Lsn::INVALID,
    };
}

/// As [`receive`], publishing the archive's [`Position`] as it advances and the upstream
/// server at each connection.
pub async fn receive_publishing(
    opts: &ReceiveOptions,
    shutdown: watch::Receiver<bool>,
    published: &Published,
) -> Result<Outcome, ReceiveError> {
    Archive::check_dir(&opts.directory)?;
    // Held until this returns: one writer per archive directory.
    let _lock = ArchiveLock::acquire(&opts.directory)?;
    // --synchronous-remote: the uploader holds back what is acknowledged until the store
    // has it; with a limit already (a relay's --sync-downstream quorum), the lower of the
    // two: held by the store and flushed by the downstreams.
    let mut limited;
    let (opts, limit) = match (&opts.upload_to, opts.synchronous_remote) {
        (Some(_), true) => {
            let (tx, rx) = watch::channel(Lsn::INVALID);
            limited = opts.clone();
            limited.ack_limit = Some(match &opts.ack_limit {
                None => rx,
                Some(other) => lower_of(rx, other.clone()),
            });
            (&limited, Some(tx))
        }
        _ => (opts, None),
    };
    let uploader = match &opts.upload_to {
        Some(remote) => {
            let follow = crate::objstore::upload::Follow {
                position: published.position.subscribe(),
                limit,
            };
            Some(start_uploads(remote, opts, follow).await?)
        }
        None => None,
    };
    let result = receive_sessions(opts, shutdown, published).await;
    if let Some(uploader) = uploader {
        uploader.finish();
    }
    result
}

/// A watch of the lower of `a` and `b`, kept up to date by a task that ends when either
/// sender or every receiver is gone. Both only move forward, so the lower one does too.
fn lower_of(mut a: watch::Receiver<Lsn>, mut b: watch::Receiver<Lsn>) -> watch::Receiver<Lsn> {
    let (tx, rx) = watch::channel((*a.borrow_and_update()).min(*b.borrow_and_update()));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = a.changed() => if r.is_err() { return },
                r = b.changed() => if r.is_err() { return },
                () = tx.closed() => return,
            }
            let low = (*a.borrow_and_update()).min(*b.borrow_and_update());
            tx.send_if_modified(|v| {
                let changed = *v != low;
                *v = low;
                changed
            });
        }
    });
    rx
}

/// Before the first session of an `s3://` archive: the store answers (wrong keys or a
/// missing bucket are reported now, not as a silent backlog), an empty spool is seeded
/// from it, and the uploader starts.
async fn start_uploads(
    remote: &crate::objstore::Remote,
    opts: &ReceiveOptions,
    follow: crate::objstore::upload::Follow,
) -> Result<crate::objstore::upload::Uploader, ReceiveError> {
    remote.check().await?;
    let seeded = crate::objstore::upload::seed_spool(remote, &opts.directory).await?;
    if !seeded.is_empty() {
        tracing::info!(
            "spool \"{}\" was empty: took {} from {} to resume where it ends",
            opts.directory.display(),
            seeded.join(", "),
            remote.url()
        );
    }
    let uploader =
        crate::objstore::upload::Uploader::spawn(remote.clone(), opts.directory.clone(), follow)?;
    if let Some(m) = &opts.metrics {
        m.set_upload_stats(uploader.stats.clone());
    }
    Ok(uploader)
}

async fn receive_sessions(
    opts: &ReceiveOptions,
    mut shutdown: watch::Receiver<bool>,
    published: &Published,
) -> Result<Outcome, ReceiveError> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let mut connected_once = false;
    loop {
        let mut session = Session {
            opts,
            published,
            shutdown: shutdown.clone(),
            connected: false,
            streamed: false,
        };
        let result = session.run().await;
        connected_once |= session.connected;
        if let Some(m) = &opts.metrics {
            report_session_end(m, &result);
        }
        match result {
            Ok(SessionEnd::Done(outcome)) => return Ok(outcome),
            Ok(SessionEnd::ServerClosed(pos)) if opts.no_loop => {
                return Err(ReceiveError::Disconnected(pos))
            }
            Ok(SessionEnd::ServerClosed(pos)) => {
                tracing::warn!("server ended streaming at {pos}; reconnecting");
            }
            Err(e) if e.is_fatal() || opts.no_loop || !connected_once => return Err(e),
            Err(e) => match e.hint_for(opts.upload_to.is_some()) {
                Some(hint) => tracing::warn!("{e}\nhint: {hint}"),
                None => tracing::warn!("{e}"),
            },
        }
        if session.streamed {
            backoff.reset();
        }
        let delay = backoff.next();
        if let Some(m) = &opts.metrics {
            m.receiver().reconnect();
        }
        tracing::warn!("reconnecting in {:.1} s", delay.as_secs_f64());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_requested(&mut shutdown) => return Ok(Outcome::Stopped(Lsn::INVALID)),
        }
    }
}

enum SessionEnd {
    Done(Outcome),
    ServerClosed(Lsn),
}

/// Tell the metrics how a session ended: disconnected, and why the stream is gone unless
/// the run is over (the caller reports its end).
fn report_session_end(m: &Metrics, result: &Result<SessionEnd, ReceiveError>) {
    m.receiver().connected(false);
    match result {
        Ok(SessionEnd::Done(_)) => {}
        Ok(SessionEnd::ServerClosed(pos)) => {
            m.set_connecting(&format!("server ended streaming at {pos}"))
        }
        Err(e) => {
            m.receiver().error(e.kind());
            m.set_connecting(&e.to_string());
        }
    }
}

enum StreamEnd {
    Done(Outcome),
    /// The server sent CopyDone (end of timeline or shutdown).
    CopyDone(Lsn),
}

impl StreamEnd {
    /// A stop reports what the closed writer made durable, not what was received.
    fn stopped_at(self, flushed: Lsn) -> Self {
        match self {
            StreamEnd::Done(Outcome::Stopped(_)) => StreamEnd::Done(Outcome::Stopped(flushed)),
            other => other,
        }
    }
}

struct Session<'a> {
    opts: &'a ReceiveOptions,
    published: &'a Published,
    shutdown: watch::Receiver<bool>,
    /// The server was reached and identified itself (later errors may be retried).
    connected: bool,
    /// The archive took WAL in this session (resets the reconnect backoff). Received is
    /// not enough: with a full disk every session receives a little and writes nothing,
    /// and that must back off like any other failure.
    streamed: bool,
}

impl Session<'_> {
    async fn run(&mut self) -> Result<SessionEnd, ReceiveError> {
        let opts = self.opts;
        let mut conn = ReplicationConn::connect(&opts.conn).await?;
        let system = conn.identify_system().await?;
        self.connected = true;
        if let Some(m) = &opts.metrics {
            m.receiver().connected(true);
        }
        let seg_text = conn.show("wal_segment_size").await?;
        let seg_size = server_seg_size(&seg_text)?;
        let archive = Archive::open(&opts.directory, seg_size, opts.compression, opts.no_sync)?
            .zero_filled(opts.synchronous);
        archive.check_system_identifier(system.system_id)?;
        self.published.upstream.send_replace(Some(Upstream {
            system_id: system.system_id,
            timeline: system.timeline,
            seg_size,
            server_version: conn.parameter("server_version").unwrap_or("").to_string(),
        }));

        let history = fetch_histories(&mut conn, &archive, system.timeline).await?;

        let slot_start = match &opts.slot {
            Some(slot) => match conn.read_replication_slot(slot).await? {
                Some(found) => Some(found),
                None => return Err(ReceiveError::UnknownSlot(slot.clone())),
            },
            None => None,
        };
        if opts.validate {
            archive.finish_proven_partials()?;
        }
        let (mut start, file_tli) = match archive.streaming_start()? {
            Some(found) => found,
            None => match slot_start {
                Some((lsn, tli)) if lsn.is_valid() => (lsn, tli),
                _ => (system.xlogpos, system.timeline),
            },
        };
        start = start.segment_start(seg_size);
        let mut tli = tli_of_point_in_history(&history, system.timeline, file_tli, start);

        loop {
            if let Some(endpos) = opts.endpos {
                if start >= endpos {
                    return Ok(SessionEnd::Done(Outcome::EndposReached(start)));
                }
            }
            tracing::info!("starting log streaming at {start} (timeline {tli})");
            conn.start_replication(opts.slot.as_deref(), start, tli)
                .await?;
            match self
                .stream(&mut conn, &archive, start, tli, system.system_id)
                .await?
            {
                StreamEnd::Done(outcome) => {
                    conn.close().await;
                    return Ok(SessionEnd::Done(outcome));
                }
                StreamEnd::CopyDone(pos) => match conn.finish_copy().await? {
                    Some((next_tli, next_start)) => {
                        if next_tli <= tli || next_start > pos {
                            return Err(ReceiveError::Protocol(format!(
                                "server switched from timeline {tli} at {pos} to timeline {next_tli} at {next_start}, which does not follow"
                            )));
                        }
                        fetch_history(&mut conn, &archive, next_tli).await?;
                        tracing::info!("switched to timeline {next_tli} at {next_start}");
                        tli = next_tli;
                        start = next_start.segment_start(seg_size);
                    }
                    None => return Ok(SessionEnd::ServerClosed(pos)),
                },
            }
        }
    }

    /// One START_REPLICATION run: stream until CopyDone, endpos, stop or error. The writer
    /// is always closed before returning, so its files are closed when the caller goes on.
    async fn stream(
        &mut self,
        conn: &mut ReplicationConn,
        archive: &Archive,
        start: Lsn,
        tli: TimeLineId,
        system_id: u64,
    ) -> Result<StreamEnd, ReceiveError> {
        let validator = Validator::new(archive, tli, start, Some(system_id), self.opts.validate)?
            .with_tail(self.opts.live_tail.clone());
        let writer_opts = WriterOptions {
            synchronous: self.opts.synchronous || self.opts.flush_eagerly,
        };
        let (writer, progress) = WalWriter::new(archive.clone(), tli, start, writer_opts);
        let seg_size = archive.seg_size();
        if self.opts.synchronous {
            let early = self
                .opts
                .serve_unflushed
                .then(|| (self.published.position.clone(), tli));
            let policy = Inline::new(writer, validator, early)?;
            return self.drive(conn, policy, start, tli, seg_size).await;
        }
        let (batches, handle) = Batches::spawn(writer, validator, start, seg_size);
        let policy = Batched::new(batches, progress, handle);
        self.drive(conn, policy, start, tli, seg_size).await
    }

    /// The stream's state machine, the same for both write policies: take WAL, answer
    /// keepalives, send status updates every `-s` seconds and whenever more became durable,
    /// stop at `--endpos`, on a stop request or at CopyDone. Then close the writer; its
    /// error, if any, explains a failure better than what the loop saw (a closed channel).
    async fn drive<P: WritePolicy>(
        &mut self,
        conn: &mut ReplicationConn,
        mut policy: P,
        start: Lsn,
        tli: TimeLineId,
        seg_size: u64,
    ) -> Result<StreamEnd, ReceiveError> {
        let result = self
            .drive_loop(conn, &mut policy, start, tli, seg_size)
            .await;
        let closed = policy.finish().await?;
        if let Some(m) = &self.opts.metrics {
            m.receiver().flushed(closed.flushed);
        }
        Ok(result?.stopped_at(closed.flushed))
    }

    async fn drive_loop<P: WritePolicy>(
        &mut self,
        conn: &mut ReplicationConn,
        policy: &mut P,
        start: Lsn,
        tli: TimeLineId,
        seg_size: u64,
    ) -> Result<StreamEnd, ReceiveError> {
        let opts = self.opts;
        let mut st = StreamState::new(start, seg_size, opts.ack_limit.clone());
        // What downstreams need is sent at the start of every stream (the upstream forgot
        // it with the last connection), then on every change.
        let mut feedback = opts.feedback.clone();
        if let Some(f) = &mut feedback {
            let current = *f.borrow_and_update();
            if let Some(current) = current {
                send_feedback(conn, current).await?;
            }
        }
        let mut ticker = status_ticker(opts);
        let mut endpos_flush_sent = false;
        let metrics = opts.metrics.as_deref();
        let publish = |flushed: Lsn| {
            if let Some(m) = metrics {
                m.receiver().flushed(flushed);
            }
            self.published.position.send_if_modified(|pos| {
                // What was servable stays so (written before its fsync).
                let servable = pos.servable.max(flushed);
                let new = Position {
                    timeline: tli,
                    flushed,
                    servable,
                };
                let changed = *pos != new;
                *pos = new;
                changed
            })
        };
        if let Some(m) = metrics {
            m.receiver().stream_started(tli, start, seg_size);
            m.set_streaming();
        }
        // A new stream restarts from what it made durable (a new timeline, or a reconnect
        // at a segment start).
        self.published.position.send_replace(Position {
            timeline: tli,
            flushed: start,
            servable: start,
        });
        publish(start);
        loop {
            let seen = *self.published.position.borrow();
            if let Some(p) = policy.settle(conn).await? {
                st.last = p;
                publish(p.flushed);
                self.streamed |= st.made_progress(p);
                if let Some(end) = st.report(conn, p, opts.endpos).await? {
                    return Ok(end);
                }
                if *self.published.position.borrow() != seen {
                    // Whoever waits for this WAL (a relay's downstream sessions, on this
                    // thread) sends it before the next message is taken in and written.
                    tokio::task::yield_now().await;
                }
            }
            let next = tokio::select! {
                biased;
                _ = stop_requested(&mut self.shutdown) => None,
                next = policy.next(conn) => Some(next?),
                _ = ticker.tick() => {
                    let p = policy.flush().await?;
                    st.status.send(conn, p, false).await?;
                    continue;
                }
                _ = feedback_moved(&mut feedback) => {
                    let f = feedback.as_mut().and_then(|f| *f.borrow_and_update()).unwrap_or_default();
                    send_feedback(conn, f).await?;
                    continue;
                }
                _ = st.status.limit_moved() => {
                    let p = st.last;
                    if let Some(end) = st.report(conn, p, opts.endpos).await? {
                        return Ok(end);
                    }
                    continue;
                }
            };
            match next {
                None => {
                    tracing::info!("stop requested; closing the archive at {}", st.received);
                    policy.ship().await?;
                    return Ok(StreamEnd::Done(Outcome::Stopped(st.received)));
                }
                Some(Next::Wal(w)) => {
                    let len = w.head.len() + w.rest;
                    if len == 0 {
                        continue;
                    }
                    st.accept(w.wal_start, len)?;
                    if !policy.take(conn, w, &mut self.shutdown).await? {
                        tracing::info!("stop requested; closing the archive at {}", st.received);
                        policy.ship().await?;
                        return Ok(StreamEnd::Done(Outcome::Stopped(st.received)));
                    }
                    if let Some(m) = metrics {
                        m.receiver().received(st.received, policy.checked());
                    }
                    if opts.endpos.is_some_and(|e| st.received >= e) && !endpos_flush_sent {
                        endpos_flush_sent = true;
                        let p = policy.flush().await?;
                        st.last = p;
                        publish(p.flushed);
                        if let Some(end) = st.report(conn, p, opts.endpos).await? {
                            return Ok(end);
                        }
                    }
                }
                Some(Next::Keepalive { reply_requested }) => {
                    if let Some(m) = metrics {
                        m.receiver().message();
                    }
                    if reply_requested {
                        // The server is waiting for us: a stopping walsender waits until the
                        // reported flush reaches what it sent. Make what we have durable; a
                        // policy that does so later reports it as soon as it is.
                        let p = policy.flush().await?;
                        st.status.send(conn, p, false).await?;
                    }
                }
                Some(Next::Done) => {
                    policy.ship().await?;
                    return Ok(StreamEnd::CopyDone(st.received));
                }
                Some(Next::Woken) => {}
            }
        }
    }
}

/// The network side of async mode's batching: fills page-aligned buffers from the pool
/// with checked WAL and sends them to the writer. A batch never crosses a segment end, so
/// a full segment reaches the writer (and gets its final name) without waiting.
pub struct Batches {
    tx: mpsc::Sender<WriterCmd>,
    free: mpsc::Receiver<AlignedBuf>,
    validator: Validator,
    /// The batch being filled, and where its WAL starts.
    current: Option<AlignedBuf>,
    start: Lsn,
    seg_size: u64,
}

impl Batches {
    /// Start `writer` on a blocking thread with a pool of [`POOL`] buffers; WAL from
    /// `start` goes through `validator` and then to the writer. Dropping the returned
    /// `Batches` ends the writer (after what was sent), whose handle returns its last
    /// positions.
    pub fn spawn(
        writer: WalWriter,
        validator: Validator,
        start: Lsn,
        seg_size: u64,
    ) -> (
        Self,
        tokio::task::JoinHandle<Result<Progress, ArchiveError>>,
    ) {
        let (tx, rx) = mpsc::channel(POOL);
        let (recycle, free) = mpsc::channel(POOL);
        for _ in 0..POOL {
            recycle
                .try_send(AlignedBuf::new(BATCH_LEN))
                .expect("the pool has room for all its buffers");
        }
        let handle = tokio::task::spawn_blocking(move || writer.run(rx, recycle));
        let batches = Batches {
            tx,
            free,
            validator,
            current: None,
            start,
            seg_size,
        };
        (batches, handle)
    }

    /// Whether a batch holds WAL not yet sent.
    pub(crate) fn pending(&self) -> bool {
        self.current.as_ref().is_some_and(|b| !b.is_empty())
    }

    /// Check `data` (the next WAL of the stream) and add it to the batch, shipping batches
    /// as they fill or reach a segment end. WAL that fails its check is not shipped.
    pub async fn add(&mut self, mut data: &[u8]) -> Result<(), ReceiveError> {
        while !data.is_empty() {
            let room = self.room().await?;
            let n = data.len().min(room.len());
            room[..n].copy_from_slice(&data[..n]);
            self.commit(n).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Where the next WAL bytes go: the free part of the batch, up to the segment end (a
    /// fresh buffer from the pool when none is being filled). Fill a prefix of it, then
    /// [`Batches::commit`] that many bytes.
    pub async fn room(&mut self) -> Result<&mut [u8], ReceiveError> {
        let seg_size = self.seg_size;
        if self.current.is_none() {
            let mut buf = self.free.recv().await.ok_or_else(writer_stopped)?;
            buf.reset(self.start.segment_offset(seg_size));
            self.current = Some(buf);
        }
        let buf = self.current.as_mut().expect("set above");
        let pos = Lsn(self.start.0 + buf.len() as u64);
        let segment_left = (seg_size - pos.segment_offset(seg_size)) as usize;
        let room = buf.spare_mut();
        let n = room.len().min(segment_left);
        Ok(&mut room[..n])
    }

    /// Take the first `n` bytes of [`Batches::room`] as the next WAL: check them, and ship
    /// the batch if it is full or reached a segment end.
    pub async fn commit(&mut self, n: usize) -> Result<(), ReceiveError> {
        let seg_size = self.seg_size;
        let buf = self.current.as_mut().expect("commit() after room()");
        let added = buf.commit(n);
        self.validator.check(added)?;
        let end = Lsn(self.start.0 + buf.len() as u64);
        if buf.spare() == 0 || end.segment_offset(seg_size) == 0 {
            self.ship().await?;
        }
        Ok(())
    }

    /// Send the batch being filled to the writer.
    pub async fn ship(&mut self) -> Result<(), ReceiveError> {
        let Some(buf) = self.current.take() else {
            return Ok(());
        };
        if buf.is_empty() {
            self.current = Some(buf);
            return Ok(());
        }
        let start = self.start;
        self.start = Lsn(start.0 + buf.len() as u64);
        let checked = self.validator.checked_end();
        self.send(WriterCmd::Wal {
            start,
            buf,
            checked,
        })
        .await
    }

    pub async fn send(&mut self, cmd: WriterCmd) -> Result<(), ReceiveError> {
        self.tx.send(cmd).await.map_err(|_| writer_stopped())
    }
}

fn writer_stopped() -> ReceiveError {
    ReceiveError::Internal("archive writer stopped".into())
}

/// Last status update sent, and the buffer to encode the next one.
#[derive(Default)]
struct Status {
    flushed: Lsn,
    buf: BytesMut,
    /// [`ReceiveOptions::ack_limit`].
    limit: Option<watch::Receiver<Lsn>>,
}

impl Status {
    /// `p` as it may be reported: not past the acknowledgement limit.
    fn clamp(&self, mut p: Progress) -> Progress {
        if let Some(limit) = &self.limit {
            let limit = *limit.borrow();
            p.written = p.written.min(limit);
            p.flushed = p.flushed.min(limit);
        }
        p
    }

    /// Resolves when the acknowledgement limit moves (never without one).
    async fn limit_moved(&mut self) {
        let moved = match &mut self.limit {
            Some(limit) => limit.changed().await.is_ok(),
            None => false,
        };
        if !moved {
            std::future::pending::<()>().await;
        }
    }

    async fn send(
        &mut self,
        conn: &mut ReplicationConn,
        p: Progress,
        reply_requested: bool,
    ) -> Result<(), ReceiveError> {
        let p = self.clamp(p);
        self.buf.clear();
        // `apply` stays invalid: walferry applies nothing (as pg_receivewal).
        encode_status_update(
            p.written,
            p.flushed,
            Lsn::INVALID,
            pg_now(),
            reply_requested,
            &mut self.buf,
        );
        conn.send_copy_data(&self.buf).await?;
        self.flushed = p.flushed;
        tracing::debug!("status: write {} flush {}", p.written, p.flushed);
        Ok(())
    }
}

/// What both pumps track during one START_REPLICATION run.
struct StreamState {
    start: Lsn,
    seg_size: u64,
    began: std::time::Instant,
    /// End of the WAL received so far (the next XLogData must start here).
    received: Lsn,
    /// The latest progress of the write policy.
    last: Progress,
    status: Status,
}

impl StreamState {
    fn new(start: Lsn, seg_size: u64, ack_limit: Option<watch::Receiver<Lsn>>) -> Self {
        StreamState {
            start,
            seg_size,
            began: std::time::Instant::now(),
            received: start,
            last: Progress {
                written: start,
                flushed: start,
            },
            status: Status {
                limit: ack_limit,
                ..Status::default()
            },
        }
    }

    /// Take note of `len` bytes of WAL at `wal_start`, which must continue the stream.
    fn accept(&mut self, wal_start: Lsn, len: usize) -> Result<(), ReceiveError> {
        if wal_start != self.received {
            return Err(ReceiveError::Protocol(format!(
                "server sent WAL at {wal_start}, expected {}",
                self.received
            )));
        }
        self.received = Lsn(self.received.0 + len as u64);
        Ok(())
    }

    /// Progress that justifies reconnecting at once after a failure: the resume point moved
    /// (flushed WAL left the starting segment, which therefore got its final name), or the
    /// session streamed durably for a good while. A retry that rewrites the same segment
    /// (full disk) is not progress and must back off.
    fn made_progress(&self, p: Progress) -> bool {
        p.flushed >= self.start.checked_add(self.seg_size).unwrap_or(self.start)
            || (p.flushed > self.start && self.began.elapsed() >= Duration::from_secs(60))
    }

    /// Report whatever became durable at once (what a synchronous primary waits for);
    /// `Some` once `--endpos` is flushed.
    async fn report(
        &mut self,
        conn: &mut ReplicationConn,
        p: Progress,
        endpos: Option<Lsn>,
    ) -> Result<Option<StreamEnd>, ReceiveError> {
        if let Some(endpos) = endpos {
            if p.flushed >= endpos {
                self.status.send(conn, p, true).await?;
                return Ok(Some(StreamEnd::Done(Outcome::EndposReached(p.flushed))));
            }
        }
        if self.status.clamp(p).flushed > self.status.flushed {
            self.status.send(conn, p, false).await?;
        }
        Ok(None)
    }
}

/// Resolves when the downstream feedback changes (never without a feed).
async fn feedback_moved(feedback: &mut Option<watch::Receiver<Option<Feedback>>>) {
    let moved = match feedback {
        Some(f) => f.changed().await.is_ok(),
        None => false,
    };
    if !moved {
        std::future::pending::<()>().await;
    }
}

async fn send_feedback(conn: &mut ReplicationConn, f: Feedback) -> Result<(), ReceiveError> {
    let mut buf = BytesMut::with_capacity(32);
    encode_hot_standby_feedback(
        &HotStandbyFeedback {
            send_time: pg_now(),
            xmin: f.xmin,
            xmin_epoch: f.xmin_epoch,
            catalog_xmin: f.catalog_xmin,
            catalog_xmin_epoch: f.catalog_xmin_epoch,
        },
        &mut buf,
    );
    conn.send_copy_data(&buf).await?;
    tracing::debug!("hot standby feedback: xmin {}:{}", f.xmin_epoch, f.xmin);
    Ok(())
}

/// Status updates every `-s` seconds (never with `-s 0`); the first one after a full interval.
fn status_ticker(opts: &ReceiveOptions) -> tokio::time::Interval {
    let interval = opts
        .status_interval
        .unwrap_or(Duration::from_secs(3600 * 24 * 365));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// Store every history file the server's timeline descends from, and return the server
/// timeline's history (empty on timeline 1).
async fn fetch_histories(
    conn: &mut ReplicationConn,
    archive: &Archive,
    server_tli: TimeLineId,
) -> Result<Vec<HistoryEntry>, ReceiveError> {
    if server_tli.0 <= 1 {
        return Ok(Vec::new());
    }
    let history = fetch_history(conn, archive, server_tli).await?;
    for entry in &history {
        if entry.tli.0 > 1 && !archive.has_history(entry.tli) {
            fetch_history(conn, archive, entry.tli).await?;
        }
    }
    Ok(history)
}

async fn fetch_history(
    conn: &mut ReplicationConn,
    archive: &Archive,
    tli: TimeLineId,
) -> Result<Vec<HistoryEntry>, ReceiveError> {
    let (_name, content) = conn.timeline_history(tli).await?;
    let text = String::from_utf8_lossy(&content);
    let entries = parse_history(&text).map_err(|e| {
        ReceiveError::Protocol(format!(
            "server sent a malformed history file for timeline {tli}: {e}"
        ))
    })?;
    archive.write_history(tli, &content)?;
    Ok(entries)
}

/// The server's `SHOW wal_segment_size`, checked as PostgreSQL's IsValidWalSegSize does: a
/// power of two from 1 MiB to 1 GiB.
fn server_seg_size(text: &str) -> Result<u64, ReceiveError> {
    parse_size_setting(text)
        .filter(|&s| crate::wal::page::is_valid_seg_size(s))
        .ok_or_else(|| {
            ReceiveError::Protocol(format!(
                "server reported an invalid wal_segment_size {text:?}: \
                 must be a power of two from 1 MB to 1 GB"
            ))
        })
}

/// Run disk work from async code: on the multi-threaded runtime the worker hands its other
/// tasks off first; on a current-thread runtime there is nobody to hand them to.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Resolves when a stop is requested; a dropped sender means "never".
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Capped exponential backoff between reconnect attempts.
struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    fn new(first: Duration, cap: Duration) -> Self {
        Backoff {
            first,
            cap,
            next: first,
        }
    }

    fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        d
    }

    fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod lower_of_tests {
    use super::*;

    #[tokio::test]
    async fn the_lower_of_two_limits_follows_both() {
        let (a_tx, a) = watch::channel(Lsn(0));
        let (b_tx, b) = watch::channel(Lsn(0));
        let mut low = lower_of(a, b);
        a_tx.send_replace(Lsn(300));
        // b still holds it back.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(*low.borrow_and_update(), Lsn(0));
        b_tx.send_replace(Lsn(200));
        low.changed().await.unwrap();
        assert_eq!(*low.borrow_and_update(), Lsn(200));
        b_tx.send_replace(Lsn(500));
        low.changed().await.unwrap();
        assert_eq!(*low.borrow_and_update(), Lsn(300));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_size_must_be_one_postgresql_allows() {
        assert_eq!(server_seg_size("16MB").unwrap(), 16 << 20);
        assert_eq!(server_seg_size("1MB").unwrap(), 1 << 20);
        assert_eq!(server_seg_size("1GB").unwrap(), 1 << 30);
        for bad in ["512kB", "2GB", "3MB", "0", "x"] {
            assert!(server_seg_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(2));
        let seen: Vec<_> = (0..4).map(|_| b.next().as_millis()).collect();
        assert_eq!(seen, vec![500, 1000, 2000, 2000]);
        b.reset();
        assert_eq!(b.next().as_millis(), 500);
    }
}

#[cfg(test)]
mod fake_walsender_tests;
