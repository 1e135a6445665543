//! The disk side of the receive loop: turns WAL batches into segment files and publishes
//! how far it has written and made durable.
//!
//! In async mode a blocking thread runs [`WalWriter::run`], fed page-aligned batches
//! ([`AlignedBuf`]) over a bounded channel and handing each buffer back once written, so a
//! fixed pool of buffers is also the memory bound. Group commit falls out of the loop's
//! shape: after one batch it drains whatever else is already queued, then fsyncs once.
//! `--synchronous` mode drives the writer from the network task instead
//! ([`WalWriter::write_chunk`], [`WalWriter::flush`]).
//!
//! Validation happens before the writer (see [`super::validate`]); each write says how far
//! the WAL is checked. Nothing unchecked is reported as flushed: `flushed` is the lesser of
//! the fsynced end and the checked end. A full segment is fsynced at once but renamed to
//! its final name only when the checked end has passed it — after the record that crosses
//! into the next segment has been checked too. Bytes that fail leave their segment
//! `.partial`.

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::flusher::SyncRequest;
use crate::archive::{AlignedBuf, Archive, ArchiveError, SegmentWriter, Spare};
use crate::wal::{Lsn, SegmentName, TimeLineId};

/// Work for the writer.
#[derive(Debug)]
pub enum WriterCmd {
    /// WAL bytes starting at `start`, which must continue exactly where the last batch
    /// ended; the WAL is checked up to `checked`.
    Wal {
        start: Lsn,
        buf: AlignedBuf,
        checked: Lsn,
    },
    /// Make everything written so far durable and publish it (async mode's periodic flush,
    /// and `--endpos`).
    Flush,
}

/// How far the archive has got. Invariant: `flushed <= written`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// End of the WAL handed to the kernel.
    pub written: Lsn,
    /// End of the WAL known durable (fsynced, or "written" under `--no-sync`) and checked.
    pub flushed: Lsn,
}

/// How a writer behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriterOptions {
    /// `--synchronous`: fsync after every batch, not just at segment ends.
    pub synchronous: bool,
}

pub struct WalWriter {
    archive: Archive,
    tli: TimeLineId,
    opts: WriterOptions,
    current: Option<SegmentWriter>,
    /// Full, fsynced segments waiting for the checked end to pass their end before rename.
    pending: VecDeque<SegmentWriter>,
    /// End of the bytes known durable. Invariant: `synced <= progress.written`.
    synced: Lsn,
    /// End of the WAL known valid.
    checked: Lsn,
    progress: Progress,
    tx: watch::Sender<Progress>,
    /// The current segment's second descriptor, for [`WalWriter::sync_request`].
    sync_file: Option<(SegmentName, Arc<File>, Arc<PathBuf>)>,
    /// The next zero-filled segment, made ahead (see [`Spare`]).
    spare: Spare,
}

/// See [`WalWriter::sync_request`].
pub enum SyncNeed {
    /// Everything written is durable.
    Nothing,
    /// Another thread can do it.
    Request(SyncRequest),
    /// Only this writer can (a compressed segment): [`WalWriter::flush`].
    Inline,
}

impl WalWriter {
    /// A writer for one `START_REPLICATION` run on `tli`, starting at `start` (a segment
    /// boundary, as the receiver always starts).
    pub fn new(
        archive: Archive,
        tli: TimeLineId,
        start: Lsn,
        opts: WriterOptions,
    ) -> (Self, watch::Receiver<Progress>) {
        let progress = Progress {
            written: start,
            flushed: start,
        };
        let (tx, rx) = watch::channel(progress);
        let writer = WalWriter {
            spare: Spare::new(&archive),
            archive,
            tli,
            opts,
            current: None,
            pending: VecDeque::new(),
            synced: start,
            checked: start,
            progress,
            tx,
            sync_file: None,
        };
        (writer, rx)
    }

    /// Run until the channel closes, returning every buffer on `recycle` once written;
    /// then leave an incomplete segment durable as `.partial`. On error the current
    /// segment stays `.partial` and is never renamed.
    pub fn run(
        mut self,
        mut rx: mpsc::Receiver<WriterCmd>,
        recycle: mpsc::Sender<AlignedBuf>,
    ) -> Result<Progress, ArchiveError> {
        while let Some(cmd) = rx.blocking_recv() {
            let mut want_sync = self.apply(cmd, &recycle)?;
            while let Ok(cmd) = rx.try_recv() {
                want_sync |= self.apply(cmd, &recycle)?;
            }
            if want_sync || self.opts.synchronous {
                self.sync()?;
            }
            self.publish();
        }
        self.close()
    }

    /// Stop writing: full segments whose last record was never checked, and the open one,
    /// stay durable as `.partial` (resume streams them again; nothing unchecked gets a
    /// final name).
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

    /// Make everything written durable and return the new positions.
    pub fn flush(&mut self) -> Result<Progress, ArchiveError> {
        self.sync()?;
        Ok(self.progress)
    }

    /// What it takes to make the written WAL durable from another thread
    /// ([`super::flusher`]).
    pub fn sync_request(&mut self) -> Result<SyncNeed, ArchiveError> {
        if self.synced >= self.progress.written {
            return Ok(SyncNeed::Nothing);
        }
        let Some(segment) = &self.current else {
            // Only a full segment can be unsynced without being current, and those are
            // synced as they fill.
            return Ok(SyncNeed::Inline);
        };
        let name = segment.segment();
        if self.sync_file.as_ref().is_none_or(|(n, _, _)| *n != name) {
            self.sync_file = match segment.sync_handle()? {
                Some(f) => Some((
                    name,
                    Arc::new(f),
                    Arc::new(segment.partial_path().to_path_buf()),
                )),
                None => return Ok(SyncNeed::Inline),
            };
        }
        let (_, file, path) = self.sync_file.as_ref().expect("set above");
        Ok(SyncNeed::Request(SyncRequest {
            file: file.clone(),
            path: path.clone(),
            upto: self.progress.written,
        }))
    }

    /// Another thread made the WAL durable up to `upto` (what a [`WalWriter::sync_request`]
    /// asked for); returns the new positions.
    pub fn note_synced(&mut self, upto: Lsn) -> Progress {
        let upto = upto.min(self.progress.written);
        if upto > self.synced {
            if let Some(segment) = &mut self.current {
                let seg_size = self.archive.seg_size();
                if upto.segno(seg_size) == segment.segment().segno {
                    segment.note_synced(upto.segment_offset(seg_size));
                }
            }
            self.synced = upto;
            self.update_flushed();
        }
        self.progress
    }

    fn apply(
        &mut self,
        cmd: WriterCmd,
        recycle: &mpsc::Sender<AlignedBuf>,
    ) -> Result<bool, ArchiveError> {
        match cmd {
            WriterCmd::Wal {
                start,
                buf,
                checked,
            } => {
                let result = self.write_chunk(start, buf.as_slice(), checked);
                // The pool holds every buffer, so there is always room; a closed pool
                // means the network task is gone and the buffer is simply dropped.
                let _ = recycle.try_send(buf);
                result.map(|()| false)
            }
            WriterCmd::Flush => Ok(true),
        }
    }

    /// Write one chunk, the WAL being checked up to `checked` (for a caller that drives the
    /// writer itself; see [`WalWriter::run`]).
    pub fn write_chunk(
        &mut self,
        start: Lsn,
        data: &[u8],
        checked: Lsn,
    ) -> Result<(), ArchiveError> {
        self.write_at(start, data, checked, false)
    }

    /// As [`WalWriter::write_chunk`], and make everything written durable, with the write
    /// and its sync in one system call where the segment allows it
    /// ([`SegmentWriter::write_durable`]): `--synchronous`'s once-per-commit write.
    pub fn write_durable(
        &mut self,
        start: Lsn,
        data: &[u8],
        checked: Lsn,
    ) -> Result<Progress, ArchiveError> {
        self.write_at(start, data, checked, true)?;
        self.sync()?;
        Ok(self.progress)
    }

    fn write_at(
        &mut self,
        start: Lsn,
        mut data: &[u8],
        checked: Lsn,
        durable: bool,
    ) -> Result<(), ArchiveError> {
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
                    // A segment is always written from its start (streaming starts at a
                    // segment boundary), so every byte counted as written or synced was.
                    if offset != 0 {
                        return Err(ArchiveError::Gap {
                            path: self.archive.dir().to_path_buf(),
                            expected: Lsn(pos.0 - offset),
                            got: pos,
                        });
                    }
                    let name = SegmentName::new(self.tli, pos.segno(seg_size));
                    let first = data.len().min(seg_size as usize);
                    self.current.insert(self.archive.create_segment_with(
                        name,
                        first,
                        &mut self.spare,
                    )?)
                }
            };
            let n = data.len().min((seg_size - offset) as usize);
            if durable {
                segment.write_durable(&data[..n])?;
            } else {
                segment.write(&data[..n])?;
            }
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
        self.checked = self.checked.max(checked.min(pos));
        self.finish_checked()?;
        self.update_flushed();
        Ok(())
    }

    /// Rename the full segments that the checked end has passed.
    fn finish_checked(&mut self) -> Result<(), ArchiveError> {
        let seg_size = self.archive.seg_size();
        while let Some(segment) = self.pending.front() {
            let end = segment.segment().segno.next().start_lsn(seg_size);
            if end > self.checked {
                break;
            }
            let segment = self.pending.pop_front().expect("front exists");
            segment.finish()?;
            tracing::info!("finished segment at {end} (timeline {})", self.tli);
        }
        Ok(())
    }

    fn update_flushed(&mut self) {
        self.progress.flushed = self.synced.min(self.checked);
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
    use super::super::validate::Validator;
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

    /// Segment 1 complete with its bytes of `wal`, segment 2's `.partial` holding the rest.
    fn assert_two_segments_on_disk(dir: &std::path::Path, wal: &[u8]) {
        assert_eq!(std::fs::read(dir.join(SEG1)).unwrap(), &wal[..SEG as usize]);
        let tail = std::fs::read(dir.join("000000010000000000000002.partial")).unwrap();
        assert_eq!(&tail[..wal.len() - SEG as usize], &wal[SEG as usize..]);
    }

    /// A validating writer, as the synchronous receive path drives one.
    struct Checked {
        validator: Validator,
        writer: WalWriter,
    }

    impl Checked {
        fn new(dir: &std::path::Path) -> Self {
            let archive = Archive::open(dir, SEG, CompressionSpec::None, false).unwrap();
            let validator =
                Validator::new(&archive, TimeLineId(1), Lsn(SEG), Some(SYSID), true).unwrap();
            let opts = WriterOptions { synchronous: true };
            let writer = WalWriter::new(archive, TimeLineId(1), Lsn(SEG), opts).0;
            Checked { validator, writer }
        }

        fn feed(&mut self, start: Lsn, data: &[u8]) -> Result<(), ArchiveError> {
            self.validator.check(data)?;
            self.writer
                .write_chunk(start, data, self.validator.checked_end())?;
            self.writer.flush().map(|_| ())
        }
    }

    const SEG1: &str = "000000010000000000000001";

    #[test]
    fn a_full_segment_is_renamed_only_after_the_record_crossing_its_end_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, crossing) = two_segments();
        let mut w = Checked::new(dir.path());
        // Exactly segment 1: full, but its last record continues into segment 2.
        w.feed(Lsn(SEG), &wal[..SEG as usize]).unwrap();
        assert!(dir.path().join(format!("{SEG1}.partial")).exists());
        assert!(!dir.path().join(SEG1).exists());
        // Nothing past the last complete record is reported flushed.
        let flushed = w.writer.progress().flushed;
        assert!(flushed <= crossing, "{flushed}");
        // The rest completes the crossing record: now segment 1 gets its final name.
        w.feed(Lsn(2 * SEG), &wal[SEG as usize..]).unwrap();
        assert!(dir.path().join(SEG1).exists());
        assert!(!dir.path().join(format!("{SEG1}.partial")).exists());
        assert!(w.writer.progress().flushed > Lsn(2 * SEG));
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
        let mut w = Checked::new(dir.path());
        w.feed(Lsn(SEG), &wal[..SEG as usize]).unwrap();
        let err = w.feed(Lsn(2 * SEG), &wal[SEG as usize..]).unwrap_err();
        match &err {
            ArchiveError::InvalidWal { source, .. } => assert_eq!(source.lsn(), crossing),
            other => panic!("expected InvalidWal, got {other}"),
        }
        // The error names the segment the bad record starts in.
        assert!(
            err.to_string().contains(&format!("{SEG1}.partial")),
            "{err}"
        );
        assert!(
            !dir.path().join(SEG1).exists(),
            "damaged WAL got a final name"
        );
        assert!(w.writer.progress().flushed <= crossing);
        w.writer.close().unwrap();
        // A writer closed after the failure keeps segment 1 as .partial.
        assert!(dir.path().join(format!("{SEG1}.partial")).exists());
    }

    /// The async path: batches in aligned buffers over the channel, each buffer handed
    /// back once written.
    #[test]
    fn run_writes_batches_and_recycles_their_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = two_segments();
        let archive = Archive::open(dir.path(), SEG, CompressionSpec::None, false).unwrap();
        let (writer, progress) =
            WalWriter::new(archive, TimeLineId(1), Lsn(SEG), WriterOptions::default());
        let (tx, rx) = mpsc::channel(2);
        let (recycle, mut free) = mpsc::channel(2);
        let handle = std::thread::spawn(move || writer.run(rx, recycle));
        let mut bufs = vec![AlignedBuf::new(256 * 1024), AlignedBuf::new(256 * 1024)];
        let mut at = 0usize;
        while at < wal.len() {
            let mut buf = match bufs.pop() {
                Some(b) => b,
                None => free.blocking_recv().expect("a buffer comes back"),
            };
            let start = Lsn(SEG + at as u64);
            buf.reset(start.segment_offset(SEG));
            let n = buf.spare().min(wal.len() - at).min(200_000);
            buf.extend_from_slice(&wal[at..at + n]);
            at += n;
            let checked = Lsn(SEG + at as u64);
            tx.blocking_send(WriterCmd::Wal {
                start,
                buf,
                checked,
            })
            .unwrap();
        }
        drop(tx);
        let end = handle.join().unwrap().unwrap();
        assert_eq!(end.written, Lsn(SEG + wal.len() as u64));
        assert_eq!(progress.borrow().flushed, end.written);
        assert_two_segments_on_disk(dir.path(), &wal);
    }

    /// `--synchronous`'s gathered write: durable on return (one pwritev2 with RWF_DSYNC),
    /// across a segment end too, and acknowledged only up to the checked end.
    #[test]
    fn a_durable_write_is_flushed_on_return() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = two_segments();
        let archive = Archive::open(dir.path(), SEG, CompressionSpec::None, false)
            .unwrap()
            .zero_filled(true);
        let opts = WriterOptions { synchronous: true };
        let (mut w, _) = WalWriter::new(archive, TimeLineId(1), Lsn(SEG), opts);
        let small = 3000;
        let p = w
            .write_durable(Lsn(SEG), &wal[..small], Lsn(SEG + 2000))
            .unwrap();
        assert_eq!(p.written, Lsn(SEG + small as u64));
        assert_eq!(p.flushed, Lsn(SEG + 2000));
        let rest = &wal[small..];
        let end = Lsn(SEG + wal.len() as u64);
        let p = w.write_durable(Lsn(SEG + small as u64), rest, end).unwrap();
        assert_eq!(p.flushed, end);
        assert_two_segments_on_disk(dir.path(), &wal);
    }

    /// Bytes before a mid-segment start were never written: the writer refuses such a start
    /// instead of counting them as written and synced.
    #[test]
    fn a_segment_is_never_started_in_its_middle() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive::open(dir.path(), SEG, CompressionSpec::None, false).unwrap();
        let mid = Lsn(SEG + 8192);
        let (mut w, _) = WalWriter::new(archive, TimeLineId(1), mid, WriterOptions::default());
        let err = w.write_chunk(mid, &[1u8; 8192], mid).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Gap { expected, .. } if expected == Lsn(SEG)),
            "{err}"
        );
        assert_eq!(w.progress().flushed, mid);
    }

    #[test]
    fn without_validation_segments_are_renamed_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = two_segments();
        let archive = Archive::open(dir.path(), SEG, CompressionSpec::None, false).unwrap();
        let (mut w, _) = WalWriter::new(archive, TimeLineId(1), Lsn(SEG), WriterOptions::default());
        w.write_chunk(Lsn(SEG), &wal[..SEG as usize], Lsn(2 * SEG))
            .unwrap();
        assert!(dir.path().join(SEG1).exists());
    }
}
