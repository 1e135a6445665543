//! The CPU floor of a catch-up, for `scripts/bench-catchup.sh`: stream WAL from a server
//! and throw it away. It reads the way `walferry receive` does (headers through the
//! connection's buffer, payloads straight into one 1 MiB batch, one read per message) and
//! does nothing else: no validation, no file, no status replies. Whatever CPU this takes,
//! any receiver that gets the same bytes over the same socket takes at least as much, so
//! it is the floor under `receive`'s CPU ratio to pg_receivewal.
//!
//! Only for benchmarks:
//!
//! ```text
//! catchup_floor CONNINFO START_LSN END_LSN
//! ```

use walferry::protocol::client::{CopyMessage, StreamItem};
use walferry::wal::Lsn;

mod common;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("catchup_floor: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [conninfo, start, end] = args.as_slice() else {
        return Err("usage: catchup_floor CONNINFO START_LSN END_LSN".into());
    };
    let start: Lsn = start.parse().map_err(|e| format!("{e}"))?;
    let end: Lsn = end.parse().map_err(|e| format!("{e}"))?;
    let (mut conn, _) = common::stream_from(conninfo, Some(start)).await?;
    // The memory receive reads into (huge pages where the kernel gives them).
    let mut batch = walferry::archive::AlignedBuf::new(1 << 20);
    batch.reset(0);
    let buf = batch.spare_mut();
    let mut at = start;
    while at < end {
        match conn.read_stream_item().await.map_err(|e| e.to_string())? {
            StreamItem::Wal(w) => {
                let mut rest = w.rest;
                while rest > 0 {
                    let n = buf.len().min(rest);
                    rest -= conn
                        .read_wal_into(&mut buf[..n])
                        .await
                        .map_err(|e| e.to_string())?;
                }
                at = Lsn(w.wal_start.0 + (w.head.len() + w.rest) as u64);
            }
            StreamItem::Copy(CopyMessage::Done) => return Err("the server ended the stream".into()),
            StreamItem::Copy(_) => {}
        }
    }
    println!("{}", at);
    Ok(())
}
