//! The two write policies of the receive loop. The loop itself ([`super::Session`]'s
//! `drive`) is one state machine for both modes: stop requests, keepalives and their reply
//! requests, the status ticker, `--endpos`, CopyDone, and reporting what became durable. A
//! policy decides only how WAL reaches the disk and when it is durable:
//!
//! - [`Inline`] (`--synchronous`): the network task reads whole messages, checks them,
//!   writes them, and fsyncs as soon as no whole message is left buffered, so every commit
//!   the primary waits for costs one fsync and no thread hand-off (as a walreceiver).
//! - [`Batched`] (the default): payloads go from the socket straight into page-aligned
//!   batches, checked there, and a writer thread writes and fsyncs them (see [`Batches`]).

use std::time::Duration;

use tokio::sync::watch;

use super::flusher::Flusher;
use super::validate::Validator;
use super::writer::{Progress, SyncNeed, WalWriter, WriterCmd};
use super::{blocking, stop_requested, Batches, Position, ReceiveError};
use crate::archive::{AlignedBuf, ArchiveError};
use crate::protocol::{CopyMessage, ReplicationConn, ReplicationMessage, StreamItem, WalStart};
use crate::wal::{Lsn, TimeLineId};

/// A message at least this long means the walsender is catching up and more follows at
/// once: the batch waits up to [`LINGER`] for it instead of going to the writer half-empty.
const CATCH_UP_MESSAGE: usize = 64 * 1024;
const LINGER: Duration = Duration::from_millis(1);

/// What the server (or the policy's own machinery) had for the loop.
pub(super) enum Next {
    /// An XLogData message: its header and the part of its payload already read.
    Wal(WalStart),
    Keepalive {
        reply_requested: bool,
    },
    /// The server ended the stream (end of timeline or shutdown).
    Done,
    /// Something of the policy's own happened (the writer published, a batch was shipped).
    Woken,
}

/// How WAL reaches the disk; see the module documentation.
pub(super) trait WritePolicy {
    /// Progress to report before waiting for the next event, if any.
    async fn settle(
        &mut self,
        conn: &mut ReplicationConn,
    ) -> Result<Option<Progress>, ReceiveError>;
    /// The next event. Cancel-safe: it runs in a `select!` against stop and the ticker.
    async fn next(&mut self, conn: &mut ReplicationConn) -> Result<Next, ReceiveError>;
    /// Take the whole of the message's WAL (not cancelled). False if a stop was requested
    /// while the rest of its payload was being read (a stalled server must not hold it up).
    async fn take(
        &mut self,
        conn: &mut ReplicationConn,
        wal: WalStart,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, ReceiveError>;
    /// Make what was received durable (now, or as soon as the writer can) and return the
    /// progress to report meanwhile.
    async fn flush(&mut self) -> Result<Progress, ReceiveError>;
    /// Hand what was received to the disk side (before stopping, at CopyDone).
    async fn ship(&mut self) -> Result<(), ReceiveError>;
    /// Close the files (an incomplete segment stays `.partial`); the last progress.
    async fn finish(self) -> Result<Progress, ReceiveError>;
    /// End of the WAL checked valid so far (for metrics).
    fn checked(&self) -> Lsn;
}

/// `--synchronous`: the network task drives the writer itself. The checked WAL of the
/// messages read in one go is gathered and written once, durably, when no whole message is
/// left buffered: one system call per group commit where the file system allows
/// (`pwritev2(RWF_DSYNC)`), instead of a write per message and an fdatasync.
pub(super) struct Inline {
    writer: WalWriter,
    validator: Validator,
    /// `serve_unflushed`: see [`Early`].
    early: Option<Early>,
    /// Checked WAL not written yet, from `pending_start`, at its segment offset's phase so
    /// that its whole pages go to a direct write as they are (no bounce copy).
    pending: AlignedBuf,
    pending_start: Lsn,
    /// WAL written but not yet durable (a large group written early).
    dirty: bool,
}

/// `serve_unflushed`: where written WAL is published as servable before its fsync, the
/// stream's timeline, and the thread that fsyncs while the network task goes on (see
/// [`super::flusher`]).
struct Early {
    position: watch::Sender<Position>,
    tli: TimeLineId,
    flusher: Flusher,
}

/// Gathered WAL beyond this is written at once (catch-up in `--synchronous` mode), made
/// durable with the rest of the group.
const GATHER_MAX: usize = 1 << 20;
/// Room past [`GATHER_MAX`] in the gathering buffer: the message that crosses it (a
/// walsender sends at most 128 KiB of WAL in one), and its first page's phase.
const PENDING_SLACK: usize = 256 * 1024;

impl Inline {
    pub fn new(
        writer: WalWriter,
        validator: Validator,
        early: Option<(watch::Sender<Position>, TimeLineId)>,
    ) -> Result<Self, ReceiveError> {
        let early = match early {
            Some((position, tli)) => Some(Early {
                position,
                tli,
                flusher: Flusher::spawn(writer.progress().flushed).map_err(|e| {
                    ReceiveError::Internal(format!("cannot start the flush thread: {e}"))
                })?,
            }),
            None => None,
        };
        Ok(Inline {
            writer,
            validator,
            early,
            pending: AlignedBuf::new(GATHER_MAX + PENDING_SLACK),
            pending_start: Lsn::INVALID,
            dirty: false,
        })
    }

    /// Write what is gathered, to be made durable with the rest of the group.
    fn write_pending(&mut self) -> Result<(), ReceiveError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let checked = self.validator.checked_end();
        let (writer, pending, start) = (&mut self.writer, &self.pending, self.pending_start);
        blocking(|| writer.write_chunk(start, pending.as_slice(), checked))?;
        self.pending.reset(0);
        self.dirty = true;
        Ok(())
    }

    /// `serve_unflushed`: write what is pending, publish it as servable, and have the
    /// flusher make it durable; the progress now (its `flushed` moves once the flusher is
    /// done).
    fn write_early(&mut self) -> Result<Progress, ReceiveError> {
        let Inline {
            writer,
            validator,
            early:
                Some(Early {
                    position,
                    tli,
                    flusher,
                }),
            pending,
            pending_start,
            dirty,
        } = self
        else {
            unreachable!("write_early without serve_unflushed");
        };
        let checked = validator.checked_end();
        let need = blocking(|| {
            if !pending.is_empty() {
                writer.write_chunk(*pending_start, pending.as_slice(), checked)?;
            }
            let written = writer.progress().written.min(checked);
            position.send_if_modified(|pos| {
                let raise = pos.timeline == *tli && written > pos.servable;
                if raise {
                    pos.servable = written;
                }
                raise
            });
            writer.sync_request()
        })?;
        pending.reset(0);
        *dirty = false;
        match need {
            SyncNeed::Nothing => Ok(writer.progress()),
            SyncNeed::Request(req) => {
                flusher.request(req);
                Ok(writer.progress())
            }
            SyncNeed::Inline => Ok(blocking(|| writer.flush())?),
        }
    }
}

impl WritePolicy for Inline {
    async fn settle(
        &mut self,
        conn: &mut ReplicationConn,
    ) -> Result<Option<Progress>, ReceiveError> {
        // What the flusher made durable since (serve_unflushed).
        let mut news = None;
        if let Some(early) = &self.early {
            let before = self.writer.progress();
            let p = self.writer.note_synced(early.flusher.durable());
            news = (p != before).then_some(p);
        }
        // Once no whole message is left, in the buffer or in the socket: WAL that arrived
        // during the last sync is written with it (group commit). A group that has grown
        // past GATHER_MAX (catch-up) is made durable without looking further.
        if (self.dirty || !self.pending.is_empty()) && !conn.has_buffered_frame() {
            if !self.dirty && conn.fill_ready()? && conn.has_buffered_frame() {
                return Ok(news);
            }
            return self.flush().await.map(Some);
        }
        Ok(news)
    }

    async fn next(&mut self, conn: &mut ReplicationConn) -> Result<Next, ReceiveError> {
        let message = match &mut self.early {
            Some(early) => tokio::select! {
                biased;
                changed = early.flusher.changed() => {
                    changed?;
                    return Ok(Next::Woken);
                }
                m = conn.read_copy_message() => m?,
            },
            None => conn.read_copy_message().await?,
        };
        Ok(match message {
            CopyMessage::Data(payload) => match ReplicationMessage::parse(payload)? {
                ReplicationMessage::XLogData {
                    wal_start,
                    wal_end,
                    send_time,
                    data,
                } => Next::Wal(WalStart {
                    wal_start,
                    wal_end,
                    send_time,
                    head: data,
                    rest: 0,
                }),
                ReplicationMessage::Keepalive {
                    reply_requested, ..
                } => Next::Keepalive { reply_requested },
            },
            CopyMessage::Done => Next::Done,
        })
    }

    async fn take(
        &mut self,
        _conn: &mut ReplicationConn,
        wal: WalStart,
        _shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, ReceiveError> {
        if let Err(e) = self.validator.check_shared(&wal.head) {
            // What was checked before the bad message still goes to its `.partial`.
            let _ = self.flush().await;
            return Err(e.into());
        }
        if wal.head.len() > self.pending.spare() {
            self.write_pending()?;
        }
        if wal.head.len() > self.pending.spare() {
            // Larger than the whole buffer (no PostgreSQL walsender sends that much in
            // one message): written from where it is.
            let checked = self.validator.checked_end();
            let writer = &mut self.writer;
            blocking(|| writer.write_chunk(wal.wal_start, &wal.head, checked))?;
            self.dirty = true;
            return Ok(true);
        }
        if self.pending.is_empty() {
            self.pending_start = wal.wal_start;
            self.pending.reset(wal.wal_start.0);
        }
        self.pending.extend_from_slice(&wal.head);
        if self.pending.len() >= GATHER_MAX {
            self.write_pending()?;
        }
        Ok(true)
    }

    async fn flush(&mut self) -> Result<Progress, ReceiveError> {
        if self.early.is_some() {
            return self.write_early();
        }
        let checked = self.validator.checked_end();
        let (writer, pending, start) = (&mut self.writer, &self.pending, self.pending_start);
        let p = if pending.is_empty() {
            blocking(|| writer.flush())?
        } else {
            blocking(|| writer.write_durable(start, pending.as_slice(), checked))?
        };
        self.pending.reset(0);
        self.dirty = false;
        Ok(p)
    }

    async fn ship(&mut self) -> Result<(), ReceiveError> {
        if !self.pending.is_empty() {
            self.flush().await?;
        }
        Ok(())
    }

    async fn finish(self) -> Result<Progress, ReceiveError> {
        // The flusher stops first; the writer's close makes everything durable.
        drop(self.early);
        let writer = self.writer;
        Ok(blocking(|| writer.close())?)
    }

    fn checked(&self) -> Lsn {
        self.validator.checked_end()
    }
}

/// Async mode: batches to a writer thread, which publishes its progress on a watch.
pub(super) struct Batched {
    pub batches: Batches,
    pub progress: watch::Receiver<Progress>,
    pub handle: tokio::task::JoinHandle<Result<Progress, ArchiveError>>,
    /// When the batch being filled goes to the writer if nothing else arrives first.
    pub linger: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Batched {
    pub fn new(
        batches: Batches,
        progress: watch::Receiver<Progress>,
        handle: tokio::task::JoinHandle<Result<Progress, ArchiveError>>,
    ) -> Self {
        Batched {
            batches,
            progress,
            handle,
            linger: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

impl WritePolicy for Batched {
    async fn settle(
        &mut self,
        _conn: &mut ReplicationConn,
    ) -> Result<Option<Progress>, ReceiveError> {
        Ok(Some(*self.progress.borrow_and_update()))
    }

    async fn next(&mut self, conn: &mut ReplicationConn) -> Result<Next, ReceiveError> {
        let pending = self.batches.pending();
        tokio::select! {
            biased;
            changed = self.progress.changed() => match changed {
                Ok(()) => Ok(Next::Woken),
                // The writer is gone: its error is returned by `finish`.
                Err(_) => Err(ReceiveError::Internal("archive writer stopped".into())),
            },
            item = conn.read_stream_item() => Ok(match item? {
                StreamItem::Wal(w) => Next::Wal(w),
                StreamItem::Copy(CopyMessage::Data(payload)) => {
                    match ReplicationMessage::parse(payload)? {
                        ReplicationMessage::XLogData { .. } => {
                            return Err(ReceiveError::Protocol("malformed XLogData message".into()))
                        }
                        ReplicationMessage::Keepalive { reply_requested, .. } => {
                            Next::Keepalive { reply_requested }
                        }
                    }
                }
                StreamItem::Copy(CopyMessage::Done) => Next::Done,
            }),
            () = &mut self.linger, if pending => {
                self.batches.ship().await?;
                Ok(Next::Woken)
            }
        }
    }

    async fn take(
        &mut self,
        conn: &mut ReplicationConn,
        wal: WalStart,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, ReceiveError> {
        let len = wal.head.len() + wal.rest;
        self.batches.add(&wal.head).await?;
        let mut rest = wal.rest;
        while rest > 0 {
            // All the room: the read may also take in the next message's header.
            let room = self.batches.room().await?;
            let n = tokio::select! {
                biased;
                n = conn.read_wal_into(room) => n?,
                _ = stop_requested(shutdown) => return Ok(false),
            };
            self.batches.commit(n).await?;
            rest -= n;
        }
        let wait = if len >= CATCH_UP_MESSAGE {
            LINGER
        } else {
            Duration::ZERO
        };
        self.linger
            .as_mut()
            .reset(tokio::time::Instant::now() + wait);
        Ok(true)
    }

    async fn flush(&mut self) -> Result<Progress, ReceiveError> {
        // Copy out first: the watch's read lock must not be held across an await (the
        // writer would block publishing meanwhile).
        let p = *self.progress.borrow();
        self.batches.ship().await?;
        self.batches.send(WriterCmd::Flush).await?;
        // The new flush position is reported as soon as the writer publishes it.
        Ok(p)
    }

    async fn ship(&mut self) -> Result<(), ReceiveError> {
        self.batches.ship().await
    }

    async fn finish(self) -> Result<Progress, ReceiveError> {
        drop(self.batches);
        match self.handle.await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(e.into()),
            Err(join) => Err(ReceiveError::Internal(format!(
                "archive writer failed: {join}"
            ))),
        }
    }

    fn checked(&self) -> Lsn {
        self.batches.validator.checked_end()
    }
}
