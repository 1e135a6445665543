//! PLACEHOLDER API (being implemented): replication messages inside CopyBoth.
use bytes::{Bytes, BytesMut};

use crate::wal::Lsn;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    XLogData { wal_start: Lsn, wal_end: Lsn, send_time: i64, data: Bytes },
    Keepalive { wal_end: Lsn, send_time: i64, reply_requested: bool },
}

impl ReplicationMessage {
    pub fn parse(_payload: Bytes) -> Result<Self, ProtocolError> {
        unimplemented!()
    }
}

pub fn encode_status_update(
    _write: Lsn,
    _flush: Lsn,
    _apply: Lsn,
    _send_time: i64,
    _reply_requested: bool,
    _out: &mut BytesMut,
) {
    unimplemented!()
}

/// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's TimestampTz epoch.
pub fn pg_now() -> i64 {
    unimplemented!()
}
