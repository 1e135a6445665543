//! What the benchmark examples share.

use walferry::conninfo::{self, ConnOptions};
use walferry::protocol::client::{ReplicationConn, SystemInfo};
use walferry::wal::Lsn;

/// A replication connection to CONNINFO (a libpq connection string), its system, and
/// START_REPLICATION at `start` (the server's current position when `None`) on its timeline.
pub async fn stream_from(
    conninfo: &str,
    start: Option<Lsn>,
) -> Result<(ReplicationConn, SystemInfo), String> {
    let params = conninfo::resolve(&ConnOptions {
        dbname: Some(conninfo.to_string()),
        ..ConnOptions::default()
    })
    .map_err(|e| e.to_string())?;
    let mut conn = ReplicationConn::connect(&params)
        .await
        .map_err(|e| e.to_string())?;
    let system = conn.identify_system().await.map_err(|e| e.to_string())?;
    conn.start_replication(None, start.unwrap_or(system.xlogpos), system.timeline)
        .await
        .map_err(|e| e.to_string())?;
    Ok((conn, system))
}
