//! The ceiling of a synchronous standby, for `scripts/bench-sync.sh`: stream WAL from a
//! server and report every byte flushed the moment it arrives. Without `--durable` it keeps
//! nothing at all, so a primary whose synchronous standby this is waits for nothing but the
//! round trip: no receiver that makes WAL durable can give its commits more TPS. With
//! `--durable FILE` it writes each message into FILE (preallocated, reused in a ring) and
//! fdatasyncs before replying: the least any durable receiver has to do per commit.
//!
//! Only for benchmarks:
//!
//! ```text
//! sync_floor CONNINFO [--durable FILE]
//! ```

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

use bytes::BytesMut;
use walferry::protocol::client::CopyMessage;
use walferry::protocol::replication::{encode_status_update, pg_now, ReplicationMessage};
use walferry::wal::Lsn;

mod common;

/// The ring FILE holds: large enough that writes never wait on one another's pages.
const RING: u64 = 64 << 20;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Started in the background by a script, SIGINT would be ignored: stop on it.
    let result = tokio::select! {
        r = run() => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    if let Err(e) = result {
        eprintln!("sync_floor: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (conninfo, durable) = match args.as_slice() {
        [c] => (c, None),
        [c, flag, file] if flag == "--durable" => (c, Some(ring_file(file)?)),
        _ => return Err("usage: sync_floor CONNINFO [--durable FILE]".into()),
    };
    let (mut conn, system) = common::stream_from(conninfo, None).await?;
    let mut received = system.xlogpos;
    let mut reply = BytesMut::new();
    loop {
        let payload = match conn.read_copy_message().await.map_err(|e| e.to_string())? {
            CopyMessage::Data(p) => p,
            CopyMessage::Done => return Err("the server ended the stream".into()),
        };
        let asked = match ReplicationMessage::parse(payload).map_err(|e| e.to_string())? {
            ReplicationMessage::XLogData {
                wal_start, data, ..
            } => {
                if let Some(f) = &durable {
                    f.write_all_at(&data, wal_start.0 % RING)
                        .map_err(|e| format!("write: {e}"))?;
                }
                received = Lsn(wal_start.0 + data.len() as u64);
                false
            }
            ReplicationMessage::Keepalive {
                reply_requested, ..
            } => reply_requested,
        };
        // Group commit as walreceiver does it: reply once nothing more is waiting.
        if conn.has_buffered_frame() && !asked {
            continue;
        }
        if let Some(f) = &durable {
            f.sync_data().map_err(|e| format!("fdatasync: {e}"))?;
        }
        reply.clear();
        encode_status_update(received, received, Lsn(0), pg_now(), false, &mut reply);
        conn.send_copy_data(&reply)
            .await
            .map_err(|e| e.to_string())?;
    }
}

/// FILE, created and filled with zeros so that a write never allocates (as WAL segments are).
fn ring_file(path: &str) -> Result<File, String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    let zeros = vec![0u8; 1 << 20];
    for off in (0..RING).step_by(zeros.len()) {
        f.write_all_at(&zeros, off)
            .map_err(|e| format!("{path}: {e}"))?;
    }
    f.sync_all().map_err(|e| format!("{path}: {e}"))?;
    Ok(f)
}
