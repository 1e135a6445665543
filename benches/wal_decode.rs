//! Decode + validate throughput of `WalDecoder` on real PostgreSQL 15 WAL, fed in 128 KiB
//! chunks as a walsender sends it (walsender.c MAX_SEND_SIZE), through the iterator (`feed`)
//! and through the callback (`feed_with`, the receive hot path).
//!
//! Set-up builds the WAL once per workload: `initdb` a temp cluster, start it on a free
//! loopback port, run the workload, stop it and read the segments up to the end of the WAL.
//! Two workloads: a bulk insert of narrow rows (`create table t as select g, md5(g::text)
//! ...`, ~100-byte records) and inserts of 1000-byte rows (~1 KiB records, the shape
//! `scripts/bench-catchup.sh` streams). Without PostgreSQL programs (or
//! with `WALFERRY_BENCH_SYNTHETIC=1`) a synthetic stream of the same shape is used instead.
//! A CRC-32C pass over the same bytes (the `crc32c` crate over the same chunks) is measured
//! alongside as the reference, and after the criterion runs each workload's ratio of decode
//! throughput to CRC-alone throughput is printed, from passes of the two taken in turn (so
//! that a neighbour's load on a shared machine weighs on both alike).
//!
//! Times are the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not wall time:
//! the target is throughput on one core, and on a machine whose cores are shared with builds
//! and fuzzers, wall time mostly measures how often the thread was descheduled.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

use walferry::wal::synth::WalBuilder;
use walferry::wal::{Lsn, TimeLineId, WalDecoder};

#[path = "support/cpu.rs"]
mod cpu;
use cpu::cpu_time;
const SEG: u64 = 16 << 20;
const CHUNK: usize = 128 * 1024;
const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// WAL bytes from `start`, ending at the end of the valid WAL.
struct Wal {
    what: &'static str,
    start: Lsn,
    bytes: Vec<u8>,
}

fn pg_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("WALFERRY_PG_BIN").unwrap_or_else(|| PG_BIN_DIR.into());
    PathBuf::from(dir).join(name)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A PostgreSQL program, as `postgres` when we are root (postgres refuses root).
fn pg(name: &str, cwd: &Path) -> Command {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(name));
        c
    } else {
        Command::new(pg_bin(name))
    };
    cmd.current_dir(cwd).env("LC_ALL", "C");
    cmd
}

fn run(mut cmd: Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The real workloads: a name and the SQL that writes their WAL.
const WORKLOADS: [(&str, &str); 2] = [
    (
        "pg15_ctas_300k",
        "create table t as select g, md5(g::text) from generate_series(1,300000) g",
    ),
    (
        "pg15_insert_1k_rows",
        "create table f (id bigserial primary key, pad text); \
         insert into f (pad) select repeat('x', 1000) from generate_series(1,60000)",
    ),
];

fn real_wal(what: &'static str, sql: &str) -> Result<Wal, String> {
    if !pg_bin("initdb").exists() {
        return Err(format!("no initdb in {PG_BIN_DIR}"));
    }
    let tmp = tempfile::Builder::new()
        .prefix("walferry-bench-wal-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let dir = tmp.path();
    if is_root() {
        let mut chown = Command::new("chown");
        chown.arg("postgres:").arg(dir);
        run(chown)?;
    }
    let data = dir.join("data");
    let mut initdb = pg("initdb", dir);
    initdb
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
        .arg(&data);
    run(initdb)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port()
        .to_string();
    let opts = format!(
        "-p {port} -k {} -c listen_addresses='' -c wal_keep_size=1GB -c fsync=off",
        dir.display()
    );
    let mut start = pg("pg_ctl", dir);
    start
        .args(["-w", "-l"])
        .arg(dir.join("log"))
        .arg("-D")
        .arg(&data)
        .args(["-o", &opts, "start"]);
    run(start)?;
    let mut psql = pg("psql", dir);
    psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(dir)
        .args(["-p", &port, "-U", "postgres", "-d", "postgres", "-c"])
        .arg(sql);
    let workload = run(psql);
    let mut stop = pg("pg_ctl", dir);
    stop.args(["-w", "-m", "fast", "-D"]).arg(&data).arg("stop");
    run(stop)?;
    workload?;

    // Segment 2 on: the workload's WAL (segment 1 is mostly initdb's).
    let mut names: Vec<PathBuf> = std::fs::read_dir(data.join("pg_wal"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.len() == 24))
        .collect();
    names.sort();
    let mut bytes = Vec::new();
    let start = Lsn(2 * SEG);
    for name in names.iter().skip(1) {
        bytes.extend(std::fs::read(name).map_err(|e| e.to_string())?);
    }
    // Cut at the end of the valid WAL: the zeros after it are not work.
    let mut dec = WalDecoder::new(start, TimeLineId(1), SEG, None).map_err(|e| e.to_string())?;
    for r in dec.feed(&bytes) {
        r.map_err(|e| e.to_string())?;
    }
    let end = dec.end_of_wal().ok_or("the WAL does not end in zeros")?;
    bytes.truncate((end.0 - start.0) as usize);
    Ok(Wal { what, start, bytes })
}

/// 64 MiB shaped like the bulk insert: 92-byte heap inserts, a full-page-image-sized record
/// every 200, a commit every 5000.
fn synthetic_wal() -> Wal {
    let mut b = WalBuilder::new(Lsn(2 * SEG), TimeLineId(1), SEG, 7_300_000_000_000_000_001);
    let mut i = 0u64;
    while b.end().0 < 6 * SEG {
        i += 1;
        if i % 5000 == 0 {
            b.commit(700, 800_000_000_000_000 + i as i64);
        } else if i % 200 == 0 {
            b.filler(8200);
        } else {
            b.filler(92);
        }
    }
    Wal {
        what: "synthetic_92b",
        start: Lsn(2 * SEG),
        bytes: b.into_bytes(),
    }
}

/// Decodes the whole stream through the iterator (`feed`).
fn decode(wal: &Wal) -> u64 {
    let mut dec = WalDecoder::new(wal.start, TimeLineId(1), SEG, None).unwrap();
    let mut n = 0u64;
    for chunk in wal.bytes.chunks(CHUNK) {
        for r in dec.feed(chunk) {
            let r = r.unwrap();
            n += u64::from(r.rmid);
        }
    }
    assert_eq!(dec.valid_end().0, wal.start.0 + wal.bytes.len() as u64);
    n
}

/// Decodes the whole stream through the callback (`feed_with`).
fn decode_with(wal: &Wal) -> u64 {
    let mut dec = WalDecoder::new(wal.start, TimeLineId(1), SEG, None).unwrap();
    let mut n = 0u64;
    for chunk in wal.bytes.chunks(CHUNK) {
        dec.feed_with(chunk, |r| n += u64::from(r.rmid)).unwrap();
    }
    assert_eq!(dec.valid_end().0, wal.start.0 + wal.bytes.len() as u64);
    n
}

/// The CRC-32C of the stream as one pass of the `crc32c` crate over the chunks: the
/// reference the decoder is measured against.
fn crc_only(wal: &Wal) -> u64 {
    let mut crc = 0;
    for chunk in wal.bytes.chunks(CHUNK) {
        crc = crc32c::crc32c_append(crc, black_box(chunk));
    }
    u64::from(crc)
}

/// Throughput of decoding (callback and iterator) relative to CRC alone, each the median
/// over passes taken in turn with a CRC-alone pass.
fn ratios(wal: &Wal) -> (f64, f64) {
    const PASSES: usize = 31;
    let mut with = Vec::with_capacity(PASSES);
    let mut iter = Vec::with_capacity(PASSES);
    let mut crc = Vec::with_capacity(2 * PASSES);
    for _ in 0..PASSES {
        crc.push(on_cpu(1, || crc_only(wal)));
        with.push(on_cpu(1, || decode_with(wal)));
        crc.push(on_cpu(1, || crc_only(wal)));
        iter.push(on_cpu(1, || decode(wal)));
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64()
    };
    let crc = median(&mut crc);
    (crc / median(&mut with), crc / median(&mut iter))
}

/// Runs `f` `iters` times; returns the CPU time it took.
fn on_cpu(iters: u64, mut f: impl FnMut() -> u64) -> Duration {
    let start = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID);
    for _ in 0..iters {
        black_box(f());
    }
    cpu_time(libc::CLOCK_THREAD_CPUTIME_ID) - start
}

fn wal_decode(c: &mut Criterion) {
    let mut wals = Vec::new();
    if std::env::var_os("WALFERRY_BENCH_SYNTHETIC").is_none() {
        for (what, sql) in WORKLOADS {
            match real_wal(what, sql) {
                Ok(w) => wals.push(w),
                Err(e) => {
                    eprintln!("real WAL unavailable ({e}); synthetic WAL only");
                    break;
                }
            }
        }
    }
    wals.push(synthetic_wal());

    let mut group = c.benchmark_group("wal_decode");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    for wal in &wals {
        let mut dec = WalDecoder::new(wal.start, TimeLineId(1), SEG, None).unwrap();
        let records = dec.feed(&wal.bytes).count();
        eprintln!(
            "{}: {} bytes, {} records ({} bytes/record)",
            wal.what,
            wal.bytes.len(),
            records,
            wal.bytes.len() / records.max(1)
        );
        group.throughput(Throughput::Bytes(wal.bytes.len() as u64));
        group.bench_function(format!("{}/decode_128k_chunks", wal.what), |b| {
            b.iter_custom(|iters| on_cpu(iters, || decode(wal)))
        });
        group.bench_function(format!("{}/decode_with_128k_chunks", wal.what), |b| {
            b.iter_custom(|iters| on_cpu(iters, || decode_with(wal)))
        });
        group.bench_function(format!("{}/crc32c_only", wal.what), |b| {
            b.iter_custom(|iters| on_cpu(iters, || crc_only(wal)))
        });
    }
    group.finish();
    for wal in &wals {
        let (with, iter) = ratios(wal);
        eprintln!(
            "{}: decode / CRC-alone throughput: callback {with:.2}x, iterator {iter:.2}x",
            wal.what
        );
    }
}

criterion_group!(benches, wal_decode);
criterion_main!(benches);
