//! Why WAL bytes were rejected. Each error names the LSN where it happened; page errors also
//! name the segment (on the decoder's timeline) and the offset in it, in the words of
//! PostgreSQL 15's xlogreader.c so a message can be grepped in either code base. Callers add
//! the file they were reading.

use super::Lsn;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalError {
    #[error("invalid magic number {magic:04X} in log segment {segment}, offset {offset}")]
    InvalidMagic {
        lsn: Lsn,
        magic: u16,
        segment: String,
        offset: u32,
    },
    #[error(
        "invalid magic number {magic:04X} in log segment {segment}, offset {offset}: \
         the stream started with magic {first:04X} (another PostgreSQL version)"
    )]
    MagicChanged {
        lsn: Lsn,
        magic: u16,
        first: u16,
        segment: String,
        offset: u32,
    },
    #[error("invalid info bits {info:04X} in log segment {segment}, offset {offset}")]
    InvalidInfoBits {
        lsn: Lsn,
        info: u16,
        segment: String,
        offset: u32,
    },
    #[error(
        "invalid info bits {info:04X} in log segment {segment}, offset 0: \
         the first page of a segment must have the long header"
    )]
    MissingLongHeader {
        lsn: Lsn,
        info: u16,
        segment: String,
    },
    #[error(
        "WAL file is from different database system: WAL file database system identifier \
         is {found}, expected {expected} (log segment {segment})"
    )]
    SystemIdMismatch {
        lsn: Lsn,
        found: u64,
        expected: u64,
        segment: String,
    },
    #[error(
        "WAL file is from different database system: incorrect segment size {found} in page \
         header, expected {expected} (log segment {segment})"
    )]
    SegmentSizeMismatch {
        lsn: Lsn,
        found: u32,
        expected: u64,
        segment: String,
    },
    #[error(
        "WAL file is from different database system: incorrect XLOG_BLCKSZ {found} in page \
         header, expected 8192 (log segment {segment})"
    )]
    BlockSizeMismatch {
        lsn: Lsn,
        found: u32,
        segment: String,
    },
    #[error("unexpected pageaddr {pageaddr} in log segment {segment}, offset {offset}")]
    UnexpectedPageAddr {
        lsn: Lsn,
        pageaddr: Lsn,
        segment: String,
        offset: u32,
    },
    #[error(
        "out-of-sequence timeline ID {tli} (after {after}) in log segment {segment}, offset {offset}"
    )]
    OutOfSequenceTimeline {
        lsn: Lsn,
        tli: u32,
        after: u32,
        segment: String,
        offset: u32,
    },
    #[error(
        "unexpected timeline ID {tli} in log segment {segment}, offset {offset}: \
         reading timeline {expected}, which cannot contain pages of a later timeline"
    )]
    FutureTimeline {
        lsn: Lsn,
        tli: u32,
        expected: u32,
        segment: String,
        offset: u32,
    },
    #[error("contrecord is requested by {lsn}")]
    UnexpectedContrecord { lsn: Lsn },
    #[error("there is no contrecord flag at {lsn} (page {page})")]
    MissingContrecord { lsn: Lsn, page: Lsn },
    #[error("invalid contrecord length {rem_len} (expected {expected}) at {lsn} (page {page})")]
    InvalidContrecordLength {
        lsn: Lsn,
        page: Lsn,
        rem_len: u32,
        expected: u64,
    },
    #[error("invalid record length at {lsn}: wanted 24, got {len}")]
    InvalidRecordLength { lsn: Lsn, len: u32 },
    #[error("record length {len} at {lsn} too long")]
    RecordTooLong { lsn: Lsn, len: u32 },
    #[error("invalid resource manager ID {rmid} at {lsn}")]
    InvalidRmgr { lsn: Lsn, rmid: u8 },
    #[error("record with incorrect prev-link {prev} at {lsn}")]
    IncorrectPrevLink {
        lsn: Lsn,
        prev: Lsn,
        /// The previous record's start when known; `None` for the first record read.
        expected: Option<Lsn>,
    },
    #[error("incorrect resource manager data checksum in record at {lsn}")]
    Checksum {
        lsn: Lsn,
        stored: u32,
        computed: u32,
    },
    #[error("invalid record at {lsn}: {what}")]
    InvalidRecordData { lsn: Lsn, what: String },
    #[error(
        "overwrite contrecord record at {lsn} names {named} as overwritten, but the \
         incomplete record was at {actual}"
    )]
    OverwriteMismatch { lsn: Lsn, named: Lsn, actual: Lsn },
    #[error("cannot start decoding at {lsn}: {why}")]
    InvalidStart { lsn: Lsn, why: String },
    /// Zeros where a record or page header must start, in a stream that goes on: legitimate
    /// only at the end of a file (a zero-padded `.partial`), never inside streamed WAL,
    /// since a walsender sends nothing past the server's flushed end.
    #[error(
        "the WAL stops at {lsn} but the stream goes on: zeros where a record or page header \
         should start"
    )]
    UnexpectedEnd { lsn: Lsn },
}

impl WalError {
    /// Where in the WAL the problem is: the page for page errors, the record for record errors.
    pub fn lsn(&self) -> Lsn {
        use WalError::*;
        match self {
            InvalidMagic { lsn, .. }
            | MagicChanged { lsn, .. }
            | InvalidInfoBits { lsn, .. }
            | MissingLongHeader { lsn, .. }
            | SystemIdMismatch { lsn, .. }
            | SegmentSizeMismatch { lsn, .. }
            | BlockSizeMismatch { lsn, .. }
            | UnexpectedPageAddr { lsn, .. }
            | OutOfSequenceTimeline { lsn, .. }
            | FutureTimeline { lsn, .. }
            | UnexpectedContrecord { lsn }
            | MissingContrecord { lsn, .. }
            | InvalidContrecordLength { lsn, .. }
            | InvalidRecordLength { lsn, .. }
            | RecordTooLong { lsn, .. }
            | InvalidRmgr { lsn, .. }
            | IncorrectPrevLink { lsn, .. }
            | Checksum { lsn, .. }
            | InvalidRecordData { lsn, .. }
            | OverwriteMismatch { lsn, .. }
            | InvalidStart { lsn, .. }
            | UnexpectedEnd { lsn } => *lsn,
        }
    }

    /// True for errors that say the WAL belongs to another cluster or build rather than being
    /// damaged: a different system identifier, segment size, block size or format version.
    pub fn is_foreign(&self) -> bool {
        matches!(
            self,
            WalError::SystemIdMismatch { .. }
                | WalError::SegmentSizeMismatch { .. }
                | WalError::BlockSizeMismatch { .. }
                | WalError::MagicChanged { .. }
        )
    }
}
