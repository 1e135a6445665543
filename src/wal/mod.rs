//! PostgreSQL WAL knowledge in one place: positions, timelines, segment naming and
//! timeline history files. Everything here is pure data and parsing: no I/O.

mod history;
mod lsn;
mod segment;

pub use history::{parse_history, HistoryEntry, HistoryError};
pub use lsn::{Lsn, LsnParseError, TimeLineId};
pub use segment::{
    history_file_name, parse_history_file_name, Compression, SegNo, SegmentName, WalFileName,
    DEFAULT_SEGMENT_SIZE,
};
