//! The streaming phase of `START_REPLICATION`; see the session module's documentation.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::session::{
    error, fatal, message_name, shutting_down, slot_error, Conn, Session, SessionError,
};
use super::Hub;
use crate::archive::{ArchiveReader, ReaderError};
use crate::protocol::backend::{encode_result_set, CopyResponse, ServerError, INT8_OID, TEXT_OID};
use crate::protocol::replication::{encode_keepalive, pg_now};
use crate::protocol::{BackendMessage, FrontendMessage, StandbyMessage};
use crate::receiver::Feedback;
use crate::wal::page::{PageHeader, SegmentHeader};
use crate::wal::{HistoryEntry, Lsn, SegmentName, TimeLineId};

/// At most this much WAL per `'w'` message (walsender.c MAX_SEND_SIZE).
const MAX_SEND: u64 = 128 * 1024;
const XLOG_BLCKSZ: u64 = 8192;

/// Where one START_REPLICATION streams from and to.
pub(super) struct Stream {
    pub tli: TimeLineId,
    pub slot: Option<String>,
    /// The session's pid (its BackendKeyData), for the quorum.
    pid: i32,
    sent: Lsn,
    /// The requested timeline's history (ancestors), for reading the archive.
    history: Arc<[HistoryEntry]>,
    /// For a timeline the relay has moved past: where it ends and the next one.
    end_of_timeline: Option<(Lsn, TimeLineId)>,
    reader: Reader,
    /// WAL fetched from the store for this session (an `s3://` archive's spool let it go).
    fill: Option<Fill>,
    /// `begin` found the start in neither the tail nor the spool, but there is a store.
    start_in_store: bool,
}

/// A session's copy of the store's segments it is reading: a window (each fetch drops the
/// segments before it), removed when the session ends.
struct Fill {
    dir: std::path::PathBuf,
    reader: Reader,
}

/// An archive reader whose reads run on a blocking thread: the relay's runtime has one
/// thread, which also carries the upstream stream and every other downstream, and a read
/// from a cold archive (or of a compressed segment, decoded as it is read) must not stall
/// them.
struct Reader {
    inner: Arc<Mutex<ArchiveReader>>,
    seg_size: u64,
}

impl Reader {
    fn new(reader: ArchiveReader) -> Self {
        Reader {
            seg_size: reader.seg_size(),
            inner: Arc::new(Mutex::new(reader)),
        }
    }

    fn get(&self) -> std::sync::MutexGuard<'_, ArchiveReader> {
        // A read that panicked is a bug the panic already reported; the reader's state
        // is only a cache of what it found.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Up to `want` bytes of what timeline `tli` (history `history`) sees at `lsn`.
    async fn read(
        &self,
        tli: TimeLineId,
        history: &Arc<[HistoryEntry]>,
        lsn: Lsn,
        want: usize,
    ) -> Result<Bytes, ReaderError> {
        let (inner, history) = (self.inner.clone(), history.clone());
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; want];
            let mut reader = inner.lock().unwrap_or_else(|e| e.into_inner());
            let n = reader.read_timeline(tli, &history, lsn, &mut buf)?;
            buf.truncate(n);
            Ok(Bytes::from(buf))
        });
        match read.await {
            Ok(result) => result,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Only a runtime shutting down cancels it.
                Err(e) => Err(ReaderError::Io {
                    op: "read",
                    path: self.get().dir().to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                }),
            },
        }
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn removed(tli: TimeLineId, lsn: Lsn, seg_size: u64) -> String {
    format!(
        "requested WAL segment {} has already been removed",
        SegmentName::new(tli, lsn.segno(seg_size)).file_name(seg_size)
    )
}

impl Stream {
    /// Check the request as walsender.c StartReplication does.
    pub fn begin(
        hub: &Hub,
        pid: i32,
        slot: Option<String>,
        start: Lsn,
        timeline: Option<TimeLineId>,
    ) -> Result<Stream, ServerError> {
        let pos = *hub.position.borrow();
        let seg_size = hub.upstream().seg_size;
        if let Some(name) = &slot {
            hub.slots.acquire(name, pid).map_err(slot_error)?;
        }
        let tli = timeline.unwrap_or(pos.timeline);
        let reader =
            ArchiveReader::open(&hub.dir, seg_size).map_err(|e| error("58030", e.to_string()))?;
        let cur_history = reader
            .history(pos.timeline)
            .map_err(|e| error("58P01", e.to_string()))?;
        let mut end_of_timeline = None;
        if tli != pos.timeline {
            let idx = cur_history
                .iter()
                .position(|h| h.tli == tli)
                .ok_or_else(|| {
                    error(
                        "XX000",
                        format!("requested timeline {tli} is not in this server's history"),
                    )
                })?;
            let switch = cur_history[idx].switchpoint;
            let next = cur_history.get(idx + 1).map_or(pos.timeline, |h| h.tli);
            if start > switch {
                return Err(ServerError {
                    detail: Some(format!(
                        "This server's history forked from timeline {tli} at {switch}."
                    )),
                    ..error(
                        "XX000",
                        format!(
                            "requested starting point {start} on timeline {tli} is not in this server's history"
                        ),
                    )
                });
            }
            end_of_timeline = Some((switch, next));
        } else if start > pos.servable {
            return Err(error(
                "XX000",
                format!(
                    "requested starting point {start} is ahead of the WAL flush position of this server {}",
                    pos.servable
                ),
            ));
        }
        let history = if tli == pos.timeline {
            cur_history
        } else {
            reader
                .history(tli)
                .map_err(|e| error("58P01", e.to_string()))?
        };
        let mut stream = Stream {
            tli,
            slot,
            pid,
            sent: start,
            history: history.into(),
            end_of_timeline,
            reader: Reader::new(reader),
            fill: None,
            start_in_store: false,
        };
        // WAL that neither the tail nor the archive holds cannot be served: say so
        // now, as PostgreSQL does, rather than inside the stream.
        // (With a store, whether it holds the WAL is asked in `fetch_start`.)
        let limit = stream.limit(pos.timeline, pos.servable);
        if start < limit && hub.tail.read(tli, start, 1).is_none() {
            let found = stream.reader.get().locate(tli, &stream.history, start);
            match found {
                Ok(_) => {}
                Err(ReaderError::NotFound { .. }) if hub.store.is_some() => {
                    stream.start_in_store = true;
                }
                Err(ReaderError::NotFound { .. }) => {
                    return Err(error("58P01", removed(tli, start, seg_size)))
                }
                Err(other) => return Err(error("58030", other.to_string())),
            }
        }
        Ok(stream)
    }

    /// When the start is only in the store: fetch it now, so that WAL the store does not
    /// hold either is refused before streaming begins, as PostgreSQL refuses it.
    pub async fn fetch_start(&mut self, hub: &Hub) -> Result<(), ServerError> {
        if !self.start_in_store {
            return Ok(());
        }
        self.read_store(hub, 1).await.map(drop)
    }

    /// How far WAL of this stream's timeline can be sent now.
    fn limit(&self, cur_tli: TimeLineId, servable: Lsn) -> Lsn {
        match self.end_of_timeline {
            Some((switch, _)) => switch,
            None if cur_tli == self.tli => servable,
            // The relay moved to a newer timeline while streaming: nothing more until
            // the stream is told where this one ended (see `run`).
            None => self.sent,
        }
    }

    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        session: &mut Session<S>,
    ) -> Result<(), SessionError> {
        let hub = session.hub.clone();
        // pg_stat_replication's view of this downstream, in /metrics.
        let mut metrics = hub
            .metrics
            .as_ref()
            .map(|m| m.downstream(&session.application_name, &session.conn.peer.to_string()));
        let conn = &mut session.conn;
        conn.queue(BackendMessage::CopyBothResponse(CopyResponse {
            format: 0,
            column_formats: vec![],
        }));
        conn.flush().await?;
        let mut position = hub.position.clone();
        let mut shutdown = hub.shutdown.clone();
        let timeout = hub.wal_sender_timeout;
        let mut last_reply = Instant::now();
        let mut ping_sent = false;
        let mut ticker = tokio::time::interval(Duration::from_millis(
            (timeout.as_millis() as u64 / 10).clamp(100, 1000),
        ));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut done_sending = false;
        let mut reply = Reply::default();
        loop {
            let pos = *position.borrow_and_update();
            if self.end_of_timeline.is_none() && pos.timeline != self.tli {
                self.learn_switch(pos.timeline)?;
            }
            let limit = self.limit(pos.timeline, pos.servable);
            // Send what there is, a bounded amount before looking at the client again.
            let mut budget = 8;
            while self.sent < limit && budget > 0 {
                self.send_wal(&hub, conn, limit).await?;
                if let Some(m) = &mut metrics {
                    m.sent(self.sent);
                }
                budget -= 1;
            }
            if !done_sending {
                if let Some((switch, _)) = self.end_of_timeline {
                    if self.sent >= switch {
                        conn.queue(BackendMessage::CopyDone);
                        conn.flush().await?;
                        done_sending = true;
                    }
                }
            }
            let more = self.sent < limit;
            tokio::select! {
                biased;
                _ = super::stopped(&mut shutdown) => return Err(SessionError::Fatal(shutting_down())),
                m = conn.recv() => {
                    match m? {
                        FrontendMessage::CopyData(body) => {
                            last_reply = Instant::now();
                            ping_sent = false;
                            if self.standby_message(&hub, &body, &mut reply, metrics.as_mut())? {
                                send_keepalive(conn, self.sent, false).await?;
                            }
                        }
                        FrontendMessage::CopyDone => {
                            if !done_sending {
                                conn.queue(BackendMessage::CopyDone);
                            }
                            return self.finish(conn).await;
                        }
                        FrontendMessage::Terminate => return Err(SessionError::Gone),
                        other => {
                            return Err(SessionError::Protocol(format!(
                                "unexpected message {} during streaming",
                                message_name(&other)
                            )))
                        }
                    }
                }
                _ = std::future::ready(()), if more => {}
                changed = position.changed(), if !done_sending => {
                    if changed.is_err() {
                        return Err(SessionError::Fatal(shutting_down()));
                    }
                }
                _ = ticker.tick() => {
                    let quiet = last_reply.elapsed();
                    if quiet >= timeout {
                        tracing::warn!(
                            "relay: terminating stream to {} due to replication timeout ({} s without a reply)",
                            conn.peer,
                            quiet.as_secs()
                        );
                        return Err(SessionError::Gone);
                    }
                    if quiet >= timeout / 2 && !ping_sent {
                        send_keepalive(conn, self.sent, true).await?;
                        ping_sent = true;
                    }
                }
            }
        }
    }

    /// The relay is on a newer timeline than this stream: find where ours ended.
    fn learn_switch(&mut self, cur: TimeLineId) -> Result<(), SessionError> {
        let history = self
            .reader
            .get()
            .history(cur)
            .map_err(|e| SessionError::Fatal(fatal("58P01", e.to_string())))?;
        let idx = history.iter().position(|h| h.tli == self.tli).ok_or_else(|| {
            SessionError::Fatal(fatal(
                "XX000",
                format!(
                    "the relay's upstream switched to timeline {cur}, which does not descend from timeline {}",
                    self.tli
                ),
            ))
        })?;
        let next = history.get(idx + 1).map_or(cur, |h| h.tli);
        self.end_of_timeline = Some((history[idx].switchpoint, next));
        Ok(())
    }

    async fn send_wal<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        hub: &Hub,
        conn: &mut Conn<S>,
        limit: Lsn,
    ) -> Result<(), SessionError> {
        let mut want = (limit.0 - self.sent.0).min(MAX_SEND);
        if self.sent.0 + want < limit.0 {
            // Not sending all there is: end at a page boundary, as walsender.c does.
            let end = (self.sent.0 + want) / XLOG_BLCKSZ * XLOG_BLCKSZ;
            if end > self.sent.0 {
                want = end - self.sent.0;
            }
        }
        let data = match hub.tail.read(self.tli, self.sent, want as usize) {
            Some(b) => b,
            None => match self
                .reader
                .read(self.tli, &self.history, self.sent, want as usize)
                .await
            {
                Ok(b) => b,
                Err(ReaderError::NotFound { .. }) if hub.store.is_some() => {
                    self.read_store(hub, want as usize).await.map_err(|e| {
                        SessionError::Fatal(ServerError {
                            severity: "FATAL".into(),
                            ..e
                        })
                    })?
                }
                Err(ReaderError::NotFound { .. }) => {
                    return Err(SessionError::Fatal(fatal(
                        "58P01",
                        removed(self.tli, self.sent, self.reader.seg_size),
                    )))
                }
                Err(other) => return Err(SessionError::Fatal(fatal("58030", other.to_string()))),
            },
        };
        let start = self.sent;
        let end = Lsn(start.0 + data.len() as u64);
        let mut header = [0u8; 30];
        let mut h = &mut header[..];
        h.put_u8(b'd');
        h.put_u32((4 + 25 + data.len()) as u32);
        h.put_u8(b'w');
        h.put_u64(start.0);
        h.put_u64(end.0);
        h.put_i64(pg_now());
        if !conn.wbuf.is_empty() {
            conn.stream.write_all_buf(&mut conn.wbuf).await?;
        }
        let mut msg = (&header[..]).chain(data);
        conn.stream.write_all_buf(&mut msg).await?;
        self.sent = end;
        Ok(())
    }

    /// Reads up to `want` bytes at `sent` from the store's copy of the WAL (the spool let it
    /// go), fetching the objects of its segment into this session's directory first when
    /// that lacks them. Each segment fetched is checked before it is served: its first page
    /// must be the long header of this system's segment at that position.
    async fn read_store(&mut self, hub: &Hub, want: usize) -> Result<Bytes, ServerError> {
        let store = hub.store.as_ref().expect("called only with a store");
        let seg_size = self.reader.seg_size;
        let (tli, sent) = (self.tli, self.sent);
        if self.fill.is_none() {
            let dir = store.dir.join(self.pid.to_string());
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).map_err(|e| {
                error(
                    "58030",
                    format!("could not create directory \"{}\": {e}", dir.display()),
                )
            })?;
            let reader =
                ArchiveReader::open(&dir, seg_size).map_err(|e| error("58030", e.to_string()))?;
            self.fill = Some(Fill {
                dir,
                reader: Reader::new(reader),
            });
        }
        let mut fetched = false;
        loop {
            let fill = self.fill.as_mut().expect("made above");
            let looked_for = match fill.reader.read(tli, &self.history, sent, want).await {
                Ok(data) => return Ok(data),
                Err(ReaderError::NotFound { looked_for, .. }) if !fetched => looked_for,
                Err(ReaderError::NotFound { .. }) => {
                    return Err(error("58P01", removed(tli, sent, seg_size)))
                }
                Err(other) => return Err(error("58030", other.to_string())),
            };
            fetched = true;
            let started = Instant::now();
            // On a blocking thread of this runtime (the store's client belongs to it): the
            // download's future is not Send, and this session's task must be.
            let (remote, dir, names) = (store.remote.clone(), fill.dir.clone(), looked_for.clone());
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                handle.block_on(async {
                    for name in &names {
                        crate::objstore::mirror::fetch_window(&remote, &dir, name, &[], None)
                            .await
                            .map_err(|e| {
                                format!("could not fetch WAL segment {name} from the store: {e}")
                            })?;
                    }
                    Ok::<(), String>(())
                })
            })
            .await
            .map_err(|e| error("58030", format!("the fetch from the store failed: {e}")))?
            .map_err(|m| error("58030", m))?;
            check_fetched(&fill.dir, &looked_for, hub.upstream().system_id, seg_size)
                .map_err(|m| error("XX001", m))?;
            // The reader's view of the directory changed under it.
            fill.reader = Reader::new(
                ArchiveReader::open(&fill.dir, seg_size)
                    .map_err(|e| error("58030", e.to_string()))?,
            );
            tracing::info!(
                "relay: fetched WAL segment {} from {} for a downstream at {sent} ({} ms)",
                looked_for.first().map_or("?", String::as_str),
                store.remote.url(),
                started.elapsed().as_millis()
            );
        }
    }

    /// Handle a `'r'` or `'h'`; true when the client asked for an immediate reply.
    fn standby_message(
        &mut self,
        hub: &Hub,
        body: &[u8],
        reply: &mut Reply,
        metrics: Option<&mut crate::service::DownstreamMetrics>,
    ) -> Result<bool, SessionError> {
        match StandbyMessage::parse(body).map_err(|e| SessionError::Protocol(e.0))? {
            StandbyMessage::StatusUpdate(u) => {
                if let Some(m) = metrics {
                    m.reply(u.write, u.flush, u.apply);
                }
                if u.flush > reply.flush {
                    reply.flush = u.flush;
                    if let Some(slot) = &self.slot {
                        if let Err(e) = hub.slots.advance(slot, u.flush, self.tli) {
                            tracing::error!("relay: {e}");
                        }
                    }
                    hub.quorum.report(self.pid, u.flush);
                }
                tracing::debug!(
                    "relay: standby reports write {} flush {} apply {}",
                    u.write,
                    u.flush,
                    u.apply
                );
                Ok(u.reply_requested)
            }
            StandbyMessage::HotStandbyFeedback(h) => {
                hub.feedback.report(
                    self.pid,
                    Feedback {
                        xmin: h.xmin,
                        xmin_epoch: h.xmin_epoch,
                        catalog_xmin: h.catalog_xmin,
                        catalog_xmin_epoch: h.catalog_xmin_epoch,
                    },
                );
                Ok(false)
            }
        }
    }

    /// Both sides sent CopyDone: for a historic timeline, tell the client where the
    /// next one begins; then end the command.
    async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        conn: &mut Conn<S>,
    ) -> Result<(), SessionError> {
        if let Some((switch, next)) = self.end_of_timeline {
            let tli = next.0.to_string();
            let lsn = switch.to_string();
            encode_result_set(
                &[("next_tli", INT8_OID), ("next_tli_startpos", TEXT_OID)],
                &[vec![Some(tli.as_bytes()), Some(lsn.as_bytes())]],
                "START_STREAMING",
                &mut conn.wbuf,
            )
            .expect("small result set");
        } else {
            conn.queue(BackendMessage::CommandComplete {
                tag: "START_STREAMING".into(),
            });
        }
        conn.queue(BackendMessage::ReadyForQuery { status: b'I' });
        conn.flush().await
    }
}

#[derive(Default)]
struct Reply {
    flush: Lsn,
}

async fn send_keepalive<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    sent: Lsn,
    reply_requested: bool,
) -> Result<(), SessionError> {
    let mut payload = BytesMut::with_capacity(18);
    encode_keepalive(sent, pg_now(), reply_requested, &mut payload);
    conn.queue(BackendMessage::CopyData(payload.freeze()));
    conn.flush().await
}

/// The uncompressed complete segments among `names` in `dir`, as fetched from the store,
/// must begin with the long page header of system `sysid`'s segment at their position (a
/// compressed or `.partial` one is checked by the reader as it is read: its length, and
/// downstreams decode what they get).
fn check_fetched(
    dir: &std::path::Path,
    names: &[String],
    sysid: u64,
    seg_size: u64,
) -> Result<(), String> {
    use std::io::Read;
    for name in names {
        let Some(wal) = crate::wal::WalFileName::parse(name, seg_size) else {
            continue;
        };
        let path = dir.join(name);
        let mut head = [0u8; 40];
        match std::fs::File::open(&path).and_then(|mut f| f.read_exact(&mut head)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("could not read \"{}\": {e}", path.display())),
        }
        let start = wal.segment.segno.start_lsn(seg_size);
        let ok = matches!(
            SegmentHeader::parse(&head),
            SegmentHeader::Valid { sysid: s, seg_size: z } if s == sysid && u64::from(z) == seg_size
        ) && PageHeader::parse(&head).is_some_and(|h| h.pageaddr == start);
        if !ok {
            return Err(format!(
                "WAL segment {name} fetched from the store is not this system's segment at \
                 {start}: run walferry verify on the archive"
            ));
        }
    }
    Ok(())
}
