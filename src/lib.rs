//! walferry: native PostgreSQL physical WAL shipping.
//!
//! The library holds all the work; `src/main.rs` and `src/commands/` only turn options into
//! calls here. Data flows one way: socket -> frames -> WAL decoder (validates) -> archive
//! writer (fsync) -> ack; `inspect` reads an archive back (verify, restore points); `service`
//! tells monitoring how it goes (metrics, health).

pub mod archive;
pub mod auth;
pub mod backup;
pub mod conninfo;
pub mod ha;
pub mod inspect;
pub mod objstore;
pub mod protocol;
pub mod receiver;
pub mod relay;
pub mod repo;
pub mod restore;
pub mod service;
pub mod wal;
