//! The disk side of the receive loop: a blocking thread that validates WAL chunks, turns
//! them into segment files and publishes how far it has written and made durable.
//!
//! Group commit falls out of the loop's shape: after one chunk it drains whatever else is
//! already queued, then fsyncs once; while that fsync runs, the network task keeps
//! queueing, so the next round covers everything that arrived meanwhile.
//!
//! Validation (on by default) runs every chunk through a [`WalDecoder`] before it is
//! written. Nothing the decoder has not accepted is reported as flushed: `flushed` is the
//! lesser of the fsynced end and the decoder's valid end (the end of the last complete
//! record whose CRC matched). A full segment is fsynced at once but renamed to its final
//! name only when the valid end has passed it — after the record that crosses into the next
//! segment has been checked too. Bytes that fail leave their segment `.partial`.

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::archive::{Archive, ArchiveError, SegmentWriter};
use crate::wal::{Lsn, SegmentName, TimeLineId, WalDecoder};

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
    /// End of the WAL known durable (fsynced, or "written" under `--no-sync`) and, with
    /// validation, checked.
    pub flushed: Lsn,
}

/// How a writer behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriterOptions {
    /// `--synchronous`: fsync after every batch, not just at segment ends.
    pub synchronous: bool,
    /// Check every byte with the WAL decoder before it is written.
    pub validate: bool,
    /// The system identifier the WAL must carry (from IDENTIFY_SYSTEM).
    pub system_id: Option<u64>,
}

pub struct WalWriter {
    archive: Archive,
    tli: TimeLineId,
    opts: WriterOptions,
    decoder: Option<WalDecoder>,
    current: Option<SegmentWriter>,
    /// Full, fsynced segments waiting for the decoder to pass their end before rename.
    pending: VecDeque<SegmentWriter>,
    /// End of the bytes known durable. Invariant: `synced <= progress.written`.
    synced: Lsn,
    progress: Progress,
    tx: watch::Sender<Progress>,
}

impl WalWriter {
    /// A writer for one `START_REPLICATION` run on `tli`, starting at `start` (a segment
    /// boundary, as the receiver always starts).
    pub fn new(
        archive: Archive,
        tli: TimeLineId,
        start: Lsn,
        opts: WriterOptions,
    ) -> Result<(Self, watch::Receiver<Progress>), ArchiveError> {
        let decoder = if opts.validate {
            let decoder = WalDecoder::new(start, tli, archive.seg_size(), opts.system_id).map_err(
                |source| ArchiveError::InvalidWal {
                    path: archive.dir().to_path_buf(),
                    source,
                },
            )?;
            Some(decoder)
        } else {
            None
        };
        let progress = Progress {
            written: start,
            flushed: start,
        };
        let (tx, rx) = watch::channel(progress);
        Ok((
            WalWriter {
                archive,
                tli,
                opts,
                decoder,
                current: None,
                pending: VecDeque::new(),
                synced: start,
                progress,
                tx,
            },
            rx,
        ))
    }

    /// Run until the channel closes, then leave an incomplete segment durable as
    /// `.partial`. On error the current segment stays `.partial` and is never renamed.
    pub fn run(mut self, mut rx: mpsc::Receiver<WriterCmd>) -> Result<Progress, ArchiveError> {
        while let Some(cmd) = rx.blocking_recv() {
            let mut want_sync = self.apply(cmd)?;
            while let Ok(cmd) = rx.try_recv() {
                want_sync |= self.apply(cmd)?;
            }
            if want_sync || self.opts.synchronous {
                self.sync()?;
            }
            self.publish();
        }
        self.close()
    }

    /// Stop writing: full segments whose last record was never completed, and the open
    /// one, stay durable as `.partial` (resume streams them again; nothing unchecked gets
    /// a final name).
    pub fn close(mut self) -> Result<Progress, ArchiveError> {
        for segment in self.pending.drain(..).chain(self.current.take()) {
            segment.close_partial()?;
        }
        self.synced = self.progress.written;
        self.update_flushed();
        self.publish();
        Ok(self.progress)
    }

    /// Positions now (for a caller that drives the writer itself).
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// Write one chunk (for a caller that drives the writer itself; see [`WalWriter::run`]).
    pub fn write_chunk(&mut self, start: Lsn, data: &[u8]) -> Result<(), ArchiveError> {
        self.write_wal(start, data)
    }

    /// Make everything written durable and return the new positions.
    pub fn flush(&mut self) -> Result<Progress, ArchiveError> {
        self.sync()?;
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
        if let Some(decoder) = &mut self.decoder {
            if let Err(source) = decoder.feed_with(data, |_| {}) {
                let segment = SegmentName::new(self.tli, source.lsn().segno(seg_size));
                return Err(ArchiveError::InvalidWal {
                    path: self
                        .archive
                        .path_of(&format!("{}.partial", segment.file_name(seg_size))),
                    source,
                });
            }
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
                let mut segment = self.current.take().expect("current segment");
                segment.sync()?;
                self.synced = pos;
                self.pending.push_back(segment);
            }
        }
        self.finish_validated()?;
        self.update_flushed();
        Ok(())
    }

    /// Rename the full segments that the decoder has passed.
    fn finish_validated(&mut self) -> Result<(), ArchiveError> {
        let seg_size = self.archive.seg_size();
        let checked = self.checked_end();
        while let Some(segment) = self.pending.front() {
            let end = segment.segment().segno.next().start_lsn(seg_size);
            if end > checked {
                break;
            }
            let segment = self.pending.pop_front().expect("front exists");
            segment.finish()?;
            tracing::info!("finished segment at {end} (timeline {})", self.tli);
        }
        Ok(())
    }

    /// The end of the bytes the decoder vouches for (everything written, unvalidated).
    fn checked_end(&self) -> Lsn {
        match &self.decoder {
            Some(d) => d.valid_end(),
            None => self.progress.written,
        }
    }

    fn update_flushed(&mut self) {
        self.progress.flushed = self.synced.min(self.checked_end());
    }

    fn sync(&mut self) -> Result<(), ArchiveError> {
        if let Some(segment) = &mut self.current {
            segment.sync()?;
        }
        self.synced = self.progress.written;
        self.update_flushed();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::CompressionSpec;
    use crate::wal::synth::WalBuilder;

    const SEG: u64 = 1 << 20;
    const SYSID: u64 = 7_000_000_000_000_000_001;

    /// Two segments and a bit of WAL: 4 KiB filler records, one of them crossing from
    /// segment 1 into segment 2. Returns the bytes and the LSN of the crossing record.
    fn two_segments() -> (Vec<u8>, Lsn) {
        let mut b = WalBuilder::new(Lsn(SEG), TimeLineId(1), SEG, SYSID);
        let mut crossing = Lsn(0);
        while b.end().0 < 2 * SEG + 64 * 1024 {
            let lsn = b.filler(4000);
            if lsn.0 < 2 * SEG && b.end().0 > 2 * SEG {
                crossing = lsn;
            }
        }
        assert!(
            crossing.is_valid(),
            "no record crosses the segment boundary"
        );
        (b.into_bytes(), crossing)
    }

    fn writer(dir: &std::path::Path) -> WalWriter {
        let archive = Archive::open(dir, SEG, CompressionSpec::None, false).unwrap();
        let opts = WriterOptions {
            synchronous: true,
            validate: true,
            system_id: Some(SYSID),
        };
        WalWriter::new(archive, TimeLineId(1), Lsn(SEG), opts)
            .unwrap()
            .0
    }

    const SEG1: &str = "000000010000000000000001";

    #[test]
    fn a_full_segment_is_renamed_only_after_the_record_crossing_its_end_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, crossing) = two_segments();
        let mut w = writer(dir.path());
        // Exactly segment 1: full, but its last record continues into segment 2.
        w.write_wal(Lsn(SEG), &wal[..SEG as usize]).unwrap();
        w.sync().unwrap();
        assert!(dir.path().join(format!("{SEG1}.partial")).exists());
        assert!(!dir.path().join(SEG1).exists());
        // Nothing past the last complete record is reported flushed.
        assert!(w.progress.flushed <= crossing, "{}", w.progress.flushed);
        // The rest completes the crossing record: now segment 1 gets its final name.
        w.write_wal(Lsn(2 * SEG), &wal[SEG as usize..]).unwrap();
        w.sync().unwrap();
        assert!(dir.path().join(SEG1).exists());
        assert!(!dir.path().join(format!("{SEG1}.partial")).exists());
        assert!(w.progress.flushed > Lsn(2 * SEG));
        assert_eq!(
            std::fs::read(dir.path().join(SEG1)).unwrap(),
            &wal[..SEG as usize]
        );
    }

    #[test]
    fn a_corrupt_record_is_neither_acknowledged_nor_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, crossing) = two_segments();
        // Damage the crossing record's payload in segment 2 (after the page header).
        let at = (2 * SEG - SEG) as usize + 40 + 8;
        wal[at] ^= 0x20;
        let mut w = writer(dir.path());
        w.write_wal(Lsn(SEG), &wal[..SEG as usize]).unwrap();
        w.sync().unwrap();
        let err = w.write_wal(Lsn(2 * SEG), &wal[SEG as usize..]).unwrap_err();
        match &err {
            ArchiveError::InvalidWal { source, .. } => assert_eq!(source.lsn(), crossing),
            other => panic!("expected InvalidWal, got {other}"),
        }
        assert!(
            err.to_string().contains("000000010000000000000002.partial")
                || err.to_string().contains(SEG1)
        );
        assert!(
            !dir.path().join(SEG1).exists(),
            "damaged WAL got a final name"
        );
        assert!(w.progress.flushed <= crossing);
        drop(w);
        // A writer closed after the failure keeps segment 1 as .partial.
        assert!(dir.path().join(format!("{SEG1}.partial")).exists());
    }

    #[test]
    fn without_validation_segments_are_renamed_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = two_segments();
        let archive = Archive::open(dir.path(), SEG, CompressionSpec::None, false).unwrap();
        let (mut w, _) =
            WalWriter::new(archive, TimeLineId(1), Lsn(SEG), WriterOptions::default()).unwrap();
        w.write_wal(Lsn(SEG), &wal[..SEG as usize]).unwrap();
        assert!(dir.path().join(SEG1).exists());
    }
}
