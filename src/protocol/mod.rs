//! PostgreSQL wire protocol: the frontend (client) side used for replication connections,
//! and the replication sub-protocol messages carried inside CopyBoth.
//!
//! `frame`, `replication` are pure bytes (no I/O); `client` runs them over tokio sockets.

pub mod backend;
pub mod client;
pub mod frame;
pub mod frontend;
pub mod replication;

pub use client::{ClientError, CopyMessage, ReplicationConn, ServerError, SystemInfo};
pub use frame::ProtocolError;
pub use replication::{ReplicationMessage, StandbyMessage};
