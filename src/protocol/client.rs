//! PLACEHOLDER API (being implemented): replication-mode client over TCP, Unix socket or TLS.

use bytes::Bytes;

use crate::conninfo::ConnParams;
use crate::wal::{Lsn, TimeLineId};

/// An ErrorResponse from the server, with the fields a caller decides on.
#[derive(Debug, Clone)]
pub struct ServerError {
    pub severity: String,
    /// SQLSTATE, e.g. `28P01` invalid password, `42704` undefined object, `58P01` file gone.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("could not connect to {target}: {source}")]
    Connect { target: String, source: std::io::Error },
    #[error("{0}")]
    Server(ServerError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Result of IDENTIFY_SYSTEM.
#[derive(Debug, Clone)]
pub struct SystemInfo {
    pub system_id: u64,
    pub timeline: TimeLineId,
    pub xlogpos: Lsn,
}

/// One message of the CopyBoth phase.
#[derive(Debug)]
pub enum CopyMessage {
    /// CopyData payload (starts with the replication tag 'w' / 'k').
    Data(Bytes),
    /// The server ended the copy (end of timeline or shutdown).
    Done,
}

pub struct ReplicationConn {}

impl ReplicationConn {
    pub async fn connect(_params: &ConnParams) -> Result<Self, ClientError> {
        unimplemented!()
    }
    pub async fn simple_query(&mut self, _sql: &str) -> Result<Vec<Vec<Option<String>>>, ClientError> {
        unimplemented!()
    }
    pub async fn identify_system(&mut self) -> Result<SystemInfo, ClientError> {
        unimplemented!()
    }
    pub async fn start_replication(
        &mut self,
        _slot: Option<&str>,
        _start: Lsn,
        _tli: TimeLineId,
    ) -> Result<(), ClientError> {
        unimplemented!()
    }
    pub async fn read_copy_message(&mut self) -> Result<CopyMessage, ClientError> {
        unimplemented!()
    }
    pub async fn send_copy_data(&mut self, _payload: &[u8]) -> Result<(), ClientError> {
        unimplemented!()
    }
    pub async fn finish_copy(&mut self) -> Result<Option<(TimeLineId, Lsn)>, ClientError> {
        unimplemented!()
    }
}
