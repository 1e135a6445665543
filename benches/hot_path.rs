//! The receive hot path without the socket: CopyData frames in a read buffer ->
//! frame split -> `ReplicationMessage::parse` -> bounded channel -> `WalWriter` ->
//! segment files (`.partial`, rename), exactly as `walferry receive` runs it.
//!
//! Two variants: `no_sync` isolates the CPU cost (the number to compare across commits),
//! `sync_per_segment` adds the fsyncs of async mode (one per 16 MiB segment + directory).

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use walferry::archive::{Archive, CompressionSpec};
use walferry::protocol::frame::parse_frame;
use walferry::protocol::replication::encode_xlog_data;
use walferry::protocol::ReplicationMessage;
use walferry::receiver::writer::{WalWriter, WriterCmd, WriterOptions};
use walferry::wal::{Lsn, TimeLineId};

const SEG: u64 = 16 << 20;
const WAL_BYTES: u64 = 4 * SEG;
/// What a catching-up walsender sends per message (walsender.c MAX_SEND_SIZE).
const MESSAGE: usize = 128 * 1024;

/// The wire bytes of `WAL_BYTES` of WAL in 128 KiB XLogData messages, as CopyData frames.
fn wire_stream() -> BytesMut {
    let wal: Vec<u8> = (0..MESSAGE).map(|i| (i * 31 % 251) as u8).collect();
    let mut out = BytesMut::with_capacity(WAL_BYTES as usize + 1024 * 64);
    let mut payload = BytesMut::with_capacity(MESSAGE + 64);
    let mut pos = 0u64;
    while pos < WAL_BYTES {
        payload.clear();
        encode_xlog_data(Lsn(pos), Lsn(pos + MESSAGE as u64), 0, &wal, &mut payload);
        out.put_u8(b'd');
        out.put_i32(payload.len() as i32 + 4);
        out.extend_from_slice(&payload);
        pos += MESSAGE as u64;
    }
    out
}

fn run_pipeline(wire: BytesMut, dir: &std::path::Path, no_sync: bool) -> Lsn {
    let archive = Archive::open(dir, SEG, CompressionSpec::None, no_sync).unwrap();
    let (writer, _progress) =
        WalWriter::new(archive, TimeLineId(1), Lsn(0), WriterOptions::default()).unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let handle = std::thread::spawn(move || writer.run(rx));
    let mut buf = wire;
    while let Some(frame) = parse_frame(&mut buf, 1 << 30).unwrap() {
        match ReplicationMessage::parse(frame.body).unwrap() {
            ReplicationMessage::XLogData {
                wal_start, data, ..
            } => {
                tx.blocking_send(WriterCmd::Wal {
                    start: wal_start,
                    data,
                })
                .unwrap();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(tx);
    handle.join().unwrap().unwrap().written
}

fn hot_path(c: &mut Criterion) {
    let wire = wire_stream();
    let root = tempfile::tempdir_in(
        std::env::var("WALFERRY_BENCH_DIR").unwrap_or_else(|_| "target".into()),
    )
    .unwrap();
    let mut group = c.benchmark_group("receive_hot_path");
    group.throughput(Throughput::Bytes(WAL_BYTES));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for (name, no_sync) in [("no_sync", true), ("sync_per_segment", false)] {
        let mut n = 0u32;
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    n += 1;
                    let dir = root.path().join(format!("{name}-{n}"));
                    std::fs::create_dir(&dir).unwrap();
                    (wire.clone(), dir)
                },
                |(wire, dir)| {
                    let end = run_pipeline(wire, &dir, no_sync);
                    assert_eq!(end, Lsn(WAL_BYTES));
                    std::fs::remove_dir_all(&dir).unwrap();
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
