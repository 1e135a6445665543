//! `walferry receive` against a real PostgreSQL 15 primary: the archive holds exactly the
//! server's WAL (byte for byte, the same files pg_receivewal writes for the same range), the
//! `.partial` tail holds the server's bytes up to where streaming stopped, and a stop by
//! signal leaves everything received durable with exit 0.

mod common;
mod receive_support;

use std::time::Duration;

use common::{format_lsn, segment_name, tempdir, PgCluster, WAL_SEGMENT_SIZE};
use receive_support::*;

#[test]
fn segments_match_primary_and_pg_receivewal_on_the_same_range() {
    let pg = PgCluster::primary();
    // Two slots reserve the same WAL, so both tools start at the same segment.
    let slot_lsn = pg.create_physical_slot("wf");
    pg.create_physical_slot("prw");
    emit_wal(&pg, 40);
    small_commit(&pg);
    let endpos = flush_lsn(&pg);
    assert_ne!(
        endpos % WAL_SEGMENT_SIZE,
        0,
        "endpos must fall inside a segment"
    );

    let wf = tempdir();
    let prw = tempdir();
    let out = run_ok(walferry(&pg, wf.path()).args(["-S", "wf", "-E", &format_lsn(endpos)]));
    assert_eq!(
        stderr_of(&out),
        "",
        "walferry without -v prints nothing on success"
    );
    run_to_endpos_ok(
        &pg,
        pg_receivewal(&pg, prw.path()).args(["-S", "prw", "-E", &format_lsn(endpos)]),
    );

    // Exactly the segments from the slot's segment up to the one holding endpos, which
    // stays .partial; nothing else (no temp files).
    let first = segment_name(1, slot_lsn);
    let last = segment_name(1, endpos);
    let n = assert_contiguous(wf.path(), 1, &first);
    assert_eq!(
        segno_of(&first) + n as u64,
        segno_of(&last),
        "complete segments end right before the endpos segment"
    );
    assert!(n >= 2, "40 MiB of WAL spans at least two complete segments");
    let mut expected: Vec<String> = complete_segments(wf.path())
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    expected.push(format!("{last}.partial"));
    let files: Vec<String> = list_dir(wf.path()).into_keys().collect();
    assert_eq!(files, expected);

    // Byte-identical to the primary's pg_wal and to pg_receivewal's files.
    assert_complete_segments_match(wf.path(), &pg);
    assert_eq!(
        complete_segments(wf.path()),
        complete_segments(prw.path()),
        "same complete segments as pg_receivewal"
    );
    for (seg, file) in complete_segments(wf.path()) {
        assert_same_segment(
            &file,
            &read_wal_file(&wf.path().join(&file)),
            &prw.path().join(&seg),
        );
    }

    // The tail: the server's bytes up to endpos, in a file pg_receivewal would resume
    // (uncompressed .partial files are a whole segment long).
    let partial = wf.path().join(format!("{last}.partial"));
    assert_eq!(
        std::fs::metadata(&partial).unwrap().len(),
        WAL_SEGMENT_SIZE,
        ".partial is preallocated to the segment size"
    );
    let seg_start = segment_start_lsn(&last);
    assert_partial_prefix(&partial, &pg.wal_segment_path(&last), seg_start, endpos);
    assert_partial_prefix(
        &partial,
        &prw.path().join(format!("{last}.partial")),
        seg_start,
        endpos,
    );

    // walferry reported its flush position on the slot: the server may recycle up to it.
    common::wait_until(
        "the slot's restart_lsn to reach endpos",
        Duration::from_secs(10),
        || pg.slot_restart_lsn("wf").is_some_and(|l| l >= endpos),
    );
}

#[test]
fn endpos_already_in_the_archive_exits_at_once() {
    let pg = PgCluster::primary();
    let slot_lsn = pg.create_physical_slot("wf");
    emit_wal(&pg, 20);
    let endpos = flush_lsn(&pg);
    let dir = tempdir();
    run_ok(walferry(&pg, dir.path()).args(["-S", "wf", "-E", &format_lsn(endpos)]));
    let before = list_dir(dir.path());

    // A second run with an endpos behind the resume point has nothing to do.
    let out = run_ok(walferry(&pg, dir.path()).args(["-E", &format_lsn(slot_lsn), "-v"]));
    assert!(
        !stderr_of(&out).contains("starting log streaming"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(list_dir(dir.path()), before);
}

#[test]
fn sigterm_and_sigint_stop_with_everything_received_durable() {
    let pg = PgCluster::primary();
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let dir = tempdir();
        let start = pg.current_wal_lsn();
        let mut wf = Proc::spawn(walferry(&pg, dir.path()).args(["-s", "1", "-v"]));
        common::wait_until("walferry to stream", Duration::from_secs(30), || {
            wf_stat(&pg).is_some()
        });
        emit_wal(&pg, 20);
        small_commit(&pg);
        let target = flush_lsn(&pg);
        // Once the server has seen walferry write up to target, stop it.
        common::wait_until(
            "walferry to report writing everything",
            Duration::from_secs(30),
            || {
                wf_stat(&pg)
                    .and_then(|s| s.write_lsn)
                    .is_some_and(|l| l >= target)
            },
        );
        wf.signal(signal);
        let status = wf
            .wait_timeout(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("walferry did not stop on {name}:\n{}", wf.stderr()));
        assert_eq!(status.code(), Some(0), "{name}: {}", wf.stderr());

        let first = segment_name(1, start);
        let last = segment_name(1, target);
        assert_contiguous(dir.path(), 1, &first);
        assert_complete_segments_match(dir.path(), &pg);
        assert_eq!(
            partial_segments(dir.path()),
            vec![format!("{last}.partial")]
        );
        assert_partial_prefix(
            &dir.path().join(format!("{last}.partial")),
            &pg.wal_segment_path(&last),
            segment_start_lsn(&last),
            target,
        );
    }
}

/// walferry's row in pg_stat_replication (application_name defaults to `walferry`).
fn wf_stat(pg: &PgCluster) -> Option<common::ReplicationStat> {
    pg.replication_stats()
        .into_iter()
        .find(|s| s.application_name == "walferry" && s.state == "streaming")
}

#[test]
fn endpos_at_a_segment_boundary_leaves_complete_segments_only() {
    let pg = PgCluster::primary();
    let slot_lsn = pg.create_physical_slot("wf");
    emit_wal(&pg, 20);
    pg.switch_wal();
    let endpos = flush_lsn(&pg);
    assert_eq!(
        endpos % WAL_SEGMENT_SIZE,
        0,
        "after a switch the flush point is a boundary"
    );
    let dir = tempdir();
    run_ok(walferry(&pg, dir.path()).args(["-S", "wf", "-E", &format_lsn(endpos)]));
    let first = segment_name(1, slot_lsn);
    let n = assert_contiguous(dir.path(), 1, &first);
    assert_eq!(segno_of(&first) + n as u64, endpos / WAL_SEGMENT_SIZE);
    assert_complete_segments_match(dir.path(), &pg);
    assert_eq!(partial_segments(dir.path()), Vec::<String>::new());

    // Resuming from there starts at the next segment, which pg_receivewal agrees on.
    small_commit(&pg);
    let next = flush_lsn(&pg);
    let out = run_ok(walferry(&pg, dir.path()).args(["-S", "wf", "-E", &format_lsn(next), "-v"]));
    assert!(
        stderr_of(&out).contains(&format!("starting log streaming at {}", format_lsn(endpos))),
        "{}",
        stderr_of(&out)
    );
}

/// Waits until walferry streams, lets the stream sit idle for `idle`, and checks that the
/// same walsender still serves it (the server did not drop it for not answering).
fn stays_connected_while_idle(pg: &PgCluster, wf: &mut Proc, idle: Duration) {
    common::wait_until("walferry to stream", Duration::from_secs(30), || {
        wf_stat(pg).is_some()
    });
    let pid = wf_stat(pg).unwrap().pid;
    std::thread::sleep(idle);
    assert!(wf.is_running(), "{}", wf.stderr());
    assert_eq!(
        wf_stat(pg).map(|s| s.pid),
        Some(pid),
        "the server dropped walferry:\n{}",
        wf.stderr()
    );
}

#[test]
fn an_idle_stream_survives_a_short_wal_sender_timeout() {
    // The walsender drops a standby that does not answer within wal_sender_timeout; it asks
    // for a reply at half of it. walferry (default 10 s status interval) must answer.
    let pg = PgCluster::builder()
        .conf("wal_sender_timeout = '2s'")
        .start();
    let dir = tempdir();
    let mut wf = Proc::spawn(walferry(&pg, dir.path()).args(["-v"]));
    stays_connected_while_idle(&pg, &mut wf, Duration::from_secs(7));
    assert!(!wf.stderr().contains("reconnecting"), "{}", wf.stderr());
    assert!(!pg
        .server_log()
        .contains("terminating walsender process due to replication timeout"));
}

#[test]
fn status_interval_zero_still_answers_the_server_and_reports_segment_ends() {
    // -s 0 turns off periodic status updates (as pg_receivewal), not the replies the
    // walsender asks for, nor the flush reports at segment ends.
    let pg = PgCluster::builder()
        .conf("wal_sender_timeout = '2s'")
        .start();
    let dir = tempdir();
    let mut wf = Proc::spawn(walferry(&pg, dir.path()).args(["-s", "0", "-v"]));
    stays_connected_while_idle(&pg, &mut wf, Duration::from_secs(5));
    // WAL across a segment end: the flush reported reaches that segment's end.
    let before = flush_lsn(&pg);
    emit_wal(&pg, 20);
    let boundary = (before / WAL_SEGMENT_SIZE + 1) * WAL_SEGMENT_SIZE;
    common::wait_until(
        "the flush position to pass a segment end",
        Duration::from_secs(30),
        || {
            wf_stat(&pg)
                .and_then(|s| s.flush_lsn)
                .is_some_and(|f| f >= boundary)
        },
    );
    assert!(dir.path().join(segment_name(1, before)).exists());
    drop(wf);
    // And with --endpos, -s 0 still exits once the end position is flushed.
    let endpos = flush_lsn(&pg);
    run_ok(walferry(&pg, dir.path()).args(["-s", "0", "-E", &format_lsn(endpos)]));
}
