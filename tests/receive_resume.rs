//! `kill -9` of walferry at random points while WAL is being written, then resume: after
//! each kill no complete-named segment is damaged, and a final run to `--endpos` leaves an
//! archive without a gap whose every byte is the server's. The schedule is random but
//! replayable: the seed is printed (set WALFERRY_RESUME_SEED to repeat it).

mod common;
mod receive_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{format_lsn, segment_name, tempdir, PgCluster};
use receive_support::*;

fn kills_then_resume(compress: &str) {
    const KILLS: usize = 5;
    let pg = PgCluster::primary();
    let slot_lsn = pg.create_physical_slot("wf");
    let dir = tempdir();
    let mut rng = common::Rng::from_env_or_time("WALFERRY_RESUME_SEED");

    // Background WAL: 2 MiB commits with short pauses, bounded in count.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let conninfo = pg.conninfo(common::roles::SUPERUSER);
        std::thread::spawn(move || {
            for _ in 0..200 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let out = common::psql_conn(
                    &conninfo,
                    None,
                    "WITH blob AS MATERIALIZED (SELECT string_agg(md5(random()::text), '') AS b \
                       FROM generate_series(1, 32768)) \
                     SELECT count(pg_logical_emit_message(true, 'k', g::text || b)) \
                     FROM blob, generate_series(1, 2) g",
                );
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(Duration::from_millis(80));
            }
        })
    };

    let started = Instant::now();
    for kill in 0..KILLS {
        let mut wf = Proc::spawn(walferry(&pg, dir.path()).args(["-S", "wf", "-Z", compress]));
        // A random kill point, anywhere from start-up to streaming: the schedule under test,
        // not a wait for anything.
        let alive = Duration::from_millis(rng.range(300, 2000));
        std::thread::sleep(alive);
        assert!(wf.is_running(), "walferry exited early: {}", wf.stderr());
        wf.kill9();
        eprintln!(
            "kill {kill} after {alive:?}: {} complete segments",
            complete_segments(dir.path()).len()
        );
        // Whatever bears a complete name is the server's segment.
        assert_complete_segments_match(dir.path(), &pg);
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("WAL writer thread");
    eprintln!("kill phase took {:?}", started.elapsed());

    // However fast the machine wrote, the final run crosses a few segment boundaries too.
    let written = flush_lsn(&pg) - slot_lsn;
    if written < 4 * common::WAL_SEGMENT_SIZE {
        emit_wal(
            &pg,
            (4 * common::WAL_SEGMENT_SIZE - written) / (1 << 20) + 1,
        );
    }
    small_commit(&pg);
    let endpos = flush_lsn(&pg);
    run_ok(walferry(&pg, dir.path()).args(["-S", "wf", "-Z", compress, "-E", &format_lsn(endpos)]));

    let first = segment_name(1, slot_lsn);
    let last = segment_name(1, endpos);
    let n = assert_contiguous(dir.path(), 1, &first);
    assert_eq!(
        segno_of(&first) + n as u64,
        segno_of(&last),
        "{:?}",
        list_dir(dir.path())
    );
    assert!(n >= 3, "the test should span several segments, got {n}");
    assert_complete_segments_match(dir.path(), &pg);
    let partials = partial_segments(dir.path());
    assert_eq!(partials.len(), 1, "{partials:?}");
    assert!(partials[0].starts_with(&last), "{partials:?}");
    assert_partial_prefix(
        &dir.path().join(&partials[0]),
        &pg.wal_segment_path(&last),
        segment_start_lsn(&last),
        endpos,
    );
    // Nothing left over from the kills (temp files, stale partials).
    assert_eq!(
        list_dir(dir.path()).len(),
        n + 1,
        "{:?}",
        list_dir(dir.path())
    );
}

#[test]
fn resume_after_kill9_at_random_points_uncompressed() {
    kills_then_resume("none");
}

#[test]
fn resume_after_kill9_at_random_points_gzip() {
    kills_then_resume("gzip:1");
}

/// A kill right after a compressed segment was created leaves a `.partial` holding only
/// part of the stream's header, or nothing; resuming must restart that segment.
#[test]
fn a_compressed_partial_cut_short_by_a_kill_is_restarted() {
    let pg = PgCluster::primary();
    for (method, suffix) in [("gzip", ".gz"), ("lz4", ".lz4"), ("zstd", ".zst")] {
        // Nothing at all, and a stream that ends inside its header or first block.
        for cut in [0u64, 12] {
            let slot = format!("{method}_{cut}");
            let slot_lsn = pg.create_physical_slot(&slot);
            let dir = tempdir();
            emit_wal(&pg, 1);
            let a = flush_lsn(&pg);
            run_ok(walferry(&pg, dir.path()).args([
                "-S",
                &slot,
                "-Z",
                method,
                "-E",
                &format_lsn(a),
            ]));
            let partial = format!("{}{suffix}.partial", segment_name(1, a));
            assert_eq!(partial_segments(dir.path()), vec![partial.clone()]);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join(&partial))
                .unwrap();
            f.set_len(cut).unwrap();
            drop(f);

            small_commit(&pg);
            let b = flush_lsn(&pg);
            let out = run_bounded(
                walferry(&pg, dir.path()).args(["-S", &slot, "-Z", method, "-E", &format_lsn(b)]),
                std::time::Duration::from_secs(30),
            );
            assert!(
                out.status.success(),
                "{method}, .partial cut to {cut} bytes: {}",
                stderr_of(&out)
            );
            assert!(segment_name(1, slot_lsn) <= segment_name(1, a));
            assert_complete_segments_match(dir.path(), &pg);
            assert_partial_prefix(
                &dir.path().join(&partial),
                &pg.wal_segment_path(&segment_name(1, b)),
                segment_start_lsn(&segment_name(1, b)),
                b,
            );
            pg.drop_slot(&slot);
        }
    }
}
