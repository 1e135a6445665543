//! The receive hot path without the socket: CopyData frames in a read buffer -> frame
//! split -> `ReplicationMessage::parse` -> WAL validation -> page-aligned batches -> writer
//! thread -> segment files (`.partial`, rename), exactly as async `walferry receive` runs it.
//!
//! The WAL is synthetic but valid (`WalBuilder`: ~1 KiB records, the shape of
//! `scripts/bench-catchup.sh`), so validation does real work. Variants: `no_sync`,
//! `sync_per_segment` (the fsyncs of async mode: one per 16 MiB segment + directory) and
//! `no_sync_no_validate` (what validation costs). Each is measured twice: `wall` (bounded
//! by the disk, since segments are written with direct I/O) and `cpu`, the CPU time of the
//! process (network side and writer thread together) — the number to compare across
//! commits on a shared machine.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use walferry::archive::{Archive, CompressionSpec};
use walferry::protocol::frame::parse_frame;
use walferry::protocol::replication::encode_xlog_data;
use walferry::protocol::ReplicationMessage;
use walferry::receiver::validate::Validator;
use walferry::receiver::writer::{WalWriter, WriterOptions};
use walferry::receiver::Batches;
use walferry::wal::synth::WalBuilder;
use walferry::wal::{Lsn, TimeLineId};

#[path = "support/cpu.rs"]
mod cpu;
use cpu::cpu_time;
const SEG: u64 = 16 << 20;
const START: Lsn = Lsn(SEG);
const SYSID: u64 = 7_400_000_000_000_000_001;
/// What a catching-up walsender sends per message (walsender.c MAX_SEND_SIZE).
const MESSAGE: usize = 128 * 1024;

/// Four segments of valid WAL (1 KiB records, a commit every 50) as CopyData frames of
/// 128 KiB XLogData messages; and the end LSN.
fn wire_stream() -> (BytesMut, Lsn) {
    let mut b = WalBuilder::new(START, TimeLineId(1), SEG, SYSID);
    let mut i = 0u64;
    while b.end().0 < START.0 + 4 * SEG - 4096 {
        i += 1;
        if i % 50 == 0 {
            b.commit(700 + i as u32, 800_000_000_000_000 + i as i64);
        } else {
            b.filler(1050);
        }
    }
    let wal = b.into_bytes();
    let mut out = BytesMut::with_capacity(wal.len() + wal.len() / MESSAGE * 64 + 64);
    let mut payload = BytesMut::with_capacity(MESSAGE + 64);
    for (k, piece) in wal.chunks(MESSAGE).enumerate() {
        let at = START.0 + (k * MESSAGE) as u64;
        payload.clear();
        encode_xlog_data(
            Lsn(at),
            Lsn(at + piece.len() as u64),
            0,
            piece,
            &mut payload,
        );
        out.put_u8(b'd');
        out.put_i32(payload.len() as i32 + 4);
        out.extend_from_slice(&payload);
    }
    (out, Lsn(START.0 + wal.len() as u64))
}

fn run_pipeline(wire: BytesMut, dir: &std::path::Path, no_sync: bool, validate: bool) -> Lsn {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let archive = Archive::open(dir, SEG, CompressionSpec::None, no_sync).unwrap();
        let validator =
            Validator::new(&archive, TimeLineId(1), START, Some(SYSID), validate).unwrap();
        let (writer, _progress) =
            WalWriter::new(archive, TimeLineId(1), START, WriterOptions::default());
        let (mut batches, handle) = Batches::spawn(writer, validator, START, SEG);
        let mut buf = wire;
        while let Some(frame) = parse_frame(&mut buf, 1 << 30).unwrap() {
            match ReplicationMessage::parse(frame.body).unwrap() {
                ReplicationMessage::XLogData { data, .. } => batches.add(&data).await.unwrap(),
                other => panic!("unexpected {other:?}"),
            }
        }
        batches.ship().await.unwrap();
        drop(batches);
        handle.await.unwrap().unwrap().written
    })
}

fn hot_path(c: &mut Criterion) {
    let (wire, end) = wire_stream();
    let wal_bytes = end.0 - START.0;
    let root = tempfile::tempdir_in(
        std::env::var("WALFERRY_BENCH_DIR").unwrap_or_else(|_| "target".into()),
    )
    .unwrap();
    let mut group = c.benchmark_group("receive_hot_path");
    group.throughput(Throughput::Bytes(wal_bytes));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    let variants = [
        ("no_sync", true, true),
        ("sync_per_segment", false, true),
        ("no_sync_no_validate", true, false),
    ];
    let mut n = 0u32;
    let mut one_run = |name: &str, no_sync: bool, validate: bool| {
        n += 1;
        let dir = root.path().join(format!("{name}-{n}"));
        std::fs::create_dir(&dir).unwrap();
        let wire = wire.clone();
        let t0 = std::time::Instant::now();
        let cpu0 = cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID);
        let written = run_pipeline(wire, &dir, no_sync, validate);
        let took = (
            t0.elapsed(),
            cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu0,
        );
        assert_eq!(written, end);
        std::fs::remove_dir_all(&dir).unwrap();
        took
    };
    // Wall time: bounded by the disk (direct I/O waits for the device).
    for (name, no_sync, validate) in variants {
        group.bench_function(format!("{name}/wall"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| one_run(name, no_sync, validate).0).sum())
        });
    }
    // CPU time of both threads: what the catch-up CPU target is about.
    for (name, no_sync, validate) in variants {
        group.bench_function(format!("{name}/cpu"), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| one_run(name, no_sync, validate).1).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
