//! PostgreSQL wire protocol.
//!
//! The byte layer does no I/O: `frame` splits tagged messages out of a buffer without
//! copying, `backend` and `frontend` decode and encode the messages of each direction
//! (both, because the relay will speak the server side), `replication` the payloads of the
//! CopyBoth stream (`'w' 'k' 'r' 'h'`). On top, `client` runs a physical replication
//! connection over tokio (`stream`: TCP, Unix socket or TLS; `tls`: libpq's sslmode rules).

pub mod backend;
pub mod client;
pub mod frame;
pub mod frontend;
pub mod replication;
mod stream;
pub mod target;
pub mod tls;

#[cfg(test)]
mod client_tests;

pub use backend::BackendMessage;
pub use client::{
    parse_size_setting, BackupTablespace, BaseBackupStart, ClientError, CopyMessage,
    ReplicationConn, ServerError, StreamItem, SystemInfo, WalStart,
};
pub use frame::ProtocolError;
pub use frontend::{FrontendMessage, StartupPacket};
pub use replication::{ReplicationMessage, StandbyMessage};
