//! The disk side of the receive loop: a blocking thread that turns WAL chunks into segment
//! files and publishes how far it has written and fsynced.
//!
//! Group commit falls out of the loop's shape: after one chunk it drains whatever else is
//! already queued, then fsyncs once; while that fsync runs, the network task keeps
//! queueing, so the next round covers everything that arrived meanwhile.

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::archive::{Archive, ArchiveError, SegmentWriter};
use crate::wal::{Lsn, SegmentName, TimeLineId};

/// Work for the writer.
#[derive(Debug)]
pub enum WriterCmd {
    /// WAL bytes starting at `start`; must continue exactly where the last chunk ended.
    Wal { start: Lsn, data: Bytes },
    /// Make everything written so far durable and publish it (async mode's periodic flush,
    /// and `--endpos`).
    Flush,
}

/// How far the archive has got. Invariant: `flushed <= written`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// End of the WAL handed to the kernel.
    pub written: Lsn,
    /// End of the WAL known durable (fsynced, or "written" under `--no-sync`).
    pub flushed: Lsn,
}

pub struct WalWriter {
    archive: Archive,
    tli: TimeLineId,
    /// `--synchronous`: fsync after every batch, not just at segment ends.
    synchronous: bool,
    current: Option<SegmentWriter>,
    progress: Progress,
    tx: watch::Sender<Progress>,
}

impl WalWriter {
    /// A writer for one `START_REPLICATION` run on `tli`, starting at `start`.
    pub fn new(
        archive: Archive,
        tli: TimeLineId,
        start: Lsn,
        synchronous: bool,
    ) -> (Self, watch::Receiver<Progress>) {
        let progress = Progress {
            written: start,
            flushed: start,
        };
        let (tx, rx) = watch::channel(progress);
        (
            WalWriter {
                archive,
                tli,
                synchronous,
                current: None,
                progress,
                tx,
            },
            rx,
        )
    }

    /// Run until the channel closes, then leave an incomplete segment durable as
    /// `.partial`. On error the current segment stays `.partial` and is never renamed.
    pub fn run(mut self, mut rx: mpsc::Receiver<WriterCmd>) -> Result<Progress, ArchiveError> {
        while let Some(cmd) = rx.blocking_recv() {
            let mut want_sync = self.apply(cmd)?;
            while let Ok(cmd) = rx.try_recv() {
                want_sync |= self.apply(cmd)?;
            }
            if want_sync || self.synchronous {
                self.sync()?;
            }
            self.publish();
        }
        if let Some(segment) = self.current.take() {
            segment.close_partial()?;
            self.progress.flushed = self.progress.written;
        }
        self.publish();
        Ok(self.progress)
    }

    fn apply(&mut self, cmd: WriterCmd) -> Result<bool, ArchiveError> {
        match cmd {
            WriterCmd::Wal { start, data } => {
                self.write_wal(start, &data)?;
                Ok(false)
            }
            WriterCmd::Flush => Ok(true),
        }
    }

    fn write_wal(&mut self, start: Lsn, mut data: &[u8]) -> Result<(), ArchiveError> {
        let seg_size = self.archive.seg_size();
        if start != self.progress.written {
            return Err(ArchiveError::Gap {
                path: self.archive.dir().to_path_buf(),
                expected: self.progress.written,
                got: start,
            });
        }
        let mut pos = start;
        while !data.is_empty() {
            let offset = pos.segment_offset(seg_size);
            let segment = match &mut self.current {
                Some(s) => s,
                None => {
                    let name = SegmentName::new(self.tli, pos.segno(seg_size));
                    let mut s = self.archive.create_segment(name)?;
                    if offset != 0 {
                        // Streaming always starts at a segment boundary; a mid-segment
                        // start can only be an uncompressed restart, written in place.
                        s.skip_to(offset)?;
                    }
                    self.current.insert(s)
                }
            };
            let n = data.len().min((seg_size - offset) as usize);
            segment.write(&data[..n])?;
            data = &data[n..];
            pos = Lsn(pos.0 + n as u64);
            self.progress.written = pos;
            if segment.is_full() {
                let segment = self.current.take().expect("current segment");
                let name = segment.segment();
                segment.finish()?;
                self.progress.flushed = pos;
                tracing::info!("finished segment at {pos} (timeline {})", self.tli);
                tracing::debug!("segment {} complete", name.file_name(seg_size));
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), ArchiveError> {
        if let Some(segment) = &mut self.current {
            segment.sync()?;
        }
        self.progress.flushed = self.progress.written;
        Ok(())
    }

    /// Store the new positions; wake the network task only when `flushed` moved, since
    /// that is the only change it reports at once (a new `written` rides along with the
    /// next report). Halves the cross-thread wake-ups during catch-up.
    fn publish(&self) {
        self.tx.send_if_modified(|p| {
            let notify = p.flushed != self.progress.flushed;
            *p = self.progress;
            notify
        });
    }
}
