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

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.severity, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("could not connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
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
    pub async fn simple_query(
        &mut self,
        _sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ClientError> {
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
    pub async fn timeline_history(
        &mut self,
        _tli: TimeLineId,
    ) -> Result<(String, Vec<u8>), ClientError> {
        unimplemented!()
    }
    pub async fn show(&mut self, _name: &str) -> Result<String, ClientError> {
        unimplemented!()
    }
    /// `None` when the slot does not exist; `Some((Lsn::INVALID, _))` when it has no position.
    pub async fn read_replication_slot(
        &mut self,
        _name: &str,
    ) -> Result<Option<(Lsn, TimeLineId)>, ClientError> {
        unimplemented!()
    }
    pub async fn create_physical_slot(
        &mut self,
        _name: &str,
        _if_not_exists: bool,
    ) -> Result<(), ClientError> {
        unimplemented!()
    }
    pub async fn drop_slot(&mut self, _name: &str) -> Result<(), ClientError> {
        unimplemented!()
    }
    pub fn server_version_num(&self) -> Option<u32> {
        unimplemented!()
    }
    /// Best effort: sends Terminate and closes the socket.
    pub async fn close(self) {
        unimplemented!()
    }
}

impl ClientError {
    /// Errors a reconnect cannot fix (authentication, configuration).
    pub fn is_fatal(&self) -> bool {
        unimplemented!()
    }
}

/// `"16MB"` -> 16 MiB: a memory setting as SHOW prints it (units B, kB, MB, GB, TB, 1024-based).
pub fn parse_size_setting(_s: &str) -> Option<u64> {
    unimplemented!()
}
