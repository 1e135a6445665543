//! In-stream WAL validation for the receive loop: every byte runs through a
//! [`WalDecoder`] on the network task, as it arrives and while it is still in the CPU's
//! cache, before it goes to the archive writer. The writer is told how far the WAL is
//! checked and reports nothing beyond that as flushed, nor renames a segment past it.

use std::sync::Arc;

use bytes::Bytes;

use super::tail::LiveTail;
use crate::archive::{Archive, ArchiveError};
use crate::wal::{Lsn, SegmentName, TimeLineId, WalDecoder, WalError};

pub struct Validator {
    decoder: Option<WalDecoder>,
    /// Where checked WAL is shared with a relay's downstream sessions.
    tail: Option<Arc<LiveTail>>,
    archive: Archive,
    tli: TimeLineId,
    /// End of the WAL fed so far (what is checked when validation is off).
    fed: Lsn,
}

impl Validator {
    /// A validator for WAL from `start` on `tli` (`enabled` false: a pass-through that
    /// vouches for everything it is fed, `--no-validate`).
    pub fn new(
        archive: &Archive,
        tli: TimeLineId,
        start: Lsn,
        system_id: Option<u64>,
        enabled: bool,
    ) -> Result<Self, ArchiveError> {
        let decoder = if enabled {
            let decoder =
                WalDecoder::new(start, tli, archive.seg_size(), system_id).map_err(|source| {
                    ArchiveError::InvalidWal {
                        path: archive.dir().to_path_buf(),
                        source,
                    }
                })?;
            Some(decoder)
        } else {
            None
        };
        Ok(Validator {
            decoder,
            tail: None,
            archive: archive.clone(),
            tli,
            fed: start,
        })
    }

    /// Share every checked byte with `tail` from now on (which restarts at this stream's start).
    pub fn with_tail(mut self, tail: Option<Arc<LiveTail>>) -> Self {
        if let Some(tail) = &tail {
            tail.restart(self.tli, self.fed);
        }
        self.tail = tail;
        self
    }

    /// Check the next `data` of the stream. A failure names the record's LSN and the
    /// `.partial` segment file it would have gone to.
    ///
    /// WAL that decodes as "ended" (a zero record length, an all-zero page) is invalid here:
    /// a walsender never sends past the server's flushed end, so such bytes are damage, and
    /// a decoder in its ended state would otherwise take every later byte unchecked while
    /// the acknowledged position froze.
    pub fn check(&mut self, data: &[u8]) -> Result<(), ArchiveError> {
        self.verify(data)?;
        if let Some(tail) = &self.tail {
            tail.push(data);
        }
        Ok(())
    }

    /// As [`Validator::check`], for WAL in an immutable buffer: the tail keeps a reference
    /// to it rather than a copy.
    pub fn check_shared(&mut self, data: &Bytes) -> Result<(), ArchiveError> {
        self.verify(data)?;
        if let Some(tail) = &self.tail {
            tail.push_shared(data.clone());
        }
        Ok(())
    }

    fn verify(&mut self, data: &[u8]) -> Result<(), ArchiveError> {
        self.fed = Lsn(self.fed.0 + data.len() as u64);
        let Some(decoder) = &mut self.decoder else {
            return Ok(());
        };
        let fed = decoder.feed_with(data, |_| {});
        let ended = decoder.end_of_wal();
        match (fed, ended) {
            (Err(source), _) => Err(self.invalid(source)),
            (Ok(()), Some(lsn)) => Err(self.invalid(WalError::UnexpectedEnd { lsn })),
            (Ok(()), None) => Ok(()),
        }
    }

    fn invalid(&self, source: WalError) -> ArchiveError {
        let seg_size = self.archive.seg_size();
        let segment = SegmentName::new(self.tli, source.lsn().segno(seg_size));
        ArchiveError::InvalidWal {
            path: self
                .archive
                .path_of(&format!("{}.partial", segment.file_name(seg_size))),
            source,
        }
    }

    /// The end of the WAL checked so far: the end of the last complete record whose CRC
    /// matched (everything fed, without validation).
    pub fn checked_end(&self) -> Lsn {
        match &self.decoder {
            Some(d) => d.valid_end(),
            None => self.fed,
        }
    }
}
