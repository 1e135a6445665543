//! PostgreSQL wire protocol: the frontend (client) side used for replication connections,
//! and the replication sub-protocol messages carried inside CopyBoth.
//!
//! `replication` is pure bytes (no I/O); `client` runs it over tokio sockets.

pub mod client;
pub mod replication;

pub use client::{ClientError, CopyMessage, ReplicationConn, ServerError, SystemInfo};
pub use replication::{ProtocolError, ReplicationMessage};
