//! PostgreSQL WAL knowledge in one place: positions, timelines, segment naming and
//! timeline history files, and the streaming WAL decoder that validates records as
//! PostgreSQL's reader does. Everything here is pure data and parsing: no I/O.

mod crc;
pub mod decoder;
mod error;
mod history;
mod lsn;
pub mod page;
pub mod record;
mod segment;
pub mod synth;

pub use decoder::{Feed, WalDecoder};
pub use error::WalError;
pub use history::{parse_history, tli_of_point_in_history, HistoryEntry, HistoryError};
pub use lsn::{Lsn, LsnParseError, TimeLineId};
pub use page::WalVersion;
pub use record::{
    rmgr_name, Checkpoint, EndOfRecovery, Record, RecordKind, RestorePoint, TimestampTz, XactEnd,
};
pub use segment::{
    history_file_name, parse_history_file_name, Compression, SegNo, SegmentName, WalFileName,
    DEFAULT_SEGMENT_SIZE,
};
