//! What `walferry receive` does when things go wrong: clear one-line errors with a hint and
//! exit 1 for what retrying cannot fix (unknown slot, archive of another system, WAL gone
//! from the server, an unreachable server at start), slot management exit codes, and
//! reconnection across server restarts and crashes.

mod common;
mod receive_support;

use std::time::{Duration, Instant};

use common::{format_lsn, segment_name, tempdir, PgCluster};
use receive_support::*;

fn wf_stat(pg: &PgCluster) -> Option<common::ReplicationStat> {
    pg.replication_stats()
        .into_iter()
        .find(|s| s.application_name == "walferry" && s.state == "streaming")
}

#[track_caller]
fn assert_exit1(out: &std::process::Output, needles: &[&str]) {
    let err = stderr_of(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in:\n{err}");
    }
}

#[test]
fn unknown_slot_is_named_with_a_hint() {
    let pg = PgCluster::primary();
    let dir = tempdir();
    let out = run_bounded(
        walferry(&pg, dir.path()).args(["-S", "nope"]),
        Duration::from_secs(20),
    );
    assert_exit1(
        &out,
        &[
            "walferry: error: replication slot \"nope\" does not exist",
            "walferry: hint: ",
            "--create-slot",
        ],
    );
    assert!(list_dir(dir.path()).is_empty());
}

#[test]
fn create_and_drop_slot() {
    let pg = PgCluster::primary();
    let conninfo = pg.conninfo(common::roles::SUPERUSER);
    let slot_cmd = |args: &[&str]| {
        let mut c = walferry_bare();
        c.args(["-d", &conninfo, "-S", "arch"]).args(args);
        run_bounded(&mut c, Duration::from_secs(20))
    };

    let out = slot_cmd(&["--create-slot"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    // The slot reserves WAL at once.
    let restart = pg
        .slot_restart_lsn("arch")
        .expect("slot with a restart_lsn");
    assert!(restart > 0);
    assert_eq!(
        pg.psql("SELECT slot_type FROM pg_replication_slots WHERE slot_name = 'arch'"),
        "physical"
    );

    let out = slot_cmd(&["--create-slot"]);
    assert_exit1(
        &out,
        &[
            "walferry: error: ",
            "\"arch\" already exists",
            "--if-not-exists",
        ],
    );
    let out = slot_cmd(&["--create-slot", "--if-not-exists"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(pg.slot_restart_lsn("arch"), Some(restart));

    // The slot then drives where streaming starts: at its restart_lsn's segment.
    emit_wal(&pg, 20);
    let endpos = flush_lsn(&pg);
    let dir = tempdir();
    run_ok(walferry(&pg, dir.path()).args(["-S", "arch", "-E", &format_lsn(endpos)]));
    assert_contiguous(dir.path(), 1, &segment_name(1, restart));

    let out = slot_cmd(&["--drop-slot"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(pg.slot_restart_lsn("arch"), None);
    let out = slot_cmd(&["--drop-slot"]);
    assert_exit1(
        &out,
        &[
            "walferry: error: ",
            "\"arch\" does not exist",
            "nothing to drop",
        ],
    );

    // Usage errors exit 2.
    let out = run_bounded(
        walferry_bare().args(["-d", &conninfo, "--create-slot"]),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
}

#[test]
fn archive_of_another_database_system_is_refused() {
    let a = PgCluster::primary();
    let b = PgCluster::primary();
    assert_ne!(a.system_identifier(), b.system_identifier());
    let dir = tempdir();
    small_commit(&a);
    run_ok(walferry(&a, dir.path()).args(["-E", &format_lsn(flush_lsn(&a))]));
    let before = list_dir(dir.path());

    small_commit(&b);
    let out = run_bounded(
        walferry(&b, dir.path()).args(["-E", &format_lsn(flush_lsn(&b))]),
        Duration::from_secs(20),
    );
    assert_exit1(
        &out,
        &[
            &format!(
                "holds WAL of database system {}, but the server is system {}",
                a.system_identifier(),
                b.system_identifier()
            ),
            "refusing to mix",
            "walferry: hint: ",
        ],
    );
    // Nothing was touched.
    assert_eq!(list_dir(dir.path()), before);
}

#[test]
fn wal_already_removed_on_the_server_is_final_with_a_hint() {
    let pg = PgCluster::builder()
        .conf("wal_keep_size = 0")
        .conf("min_wal_size = '32MB'")
        .conf("max_wal_size = '64MB'")
        .start();
    let dir = tempdir();
    small_commit(&pg);
    let endpos = flush_lsn(&pg);
    run_ok(walferry(&pg, dir.path()).args(["-E", &format_lsn(endpos)]));
    let needed = segment_name(1, endpos);
    assert_eq!(
        partial_segments(dir.path()),
        vec![format!("{needed}.partial")]
    );

    // Without a slot or wal_keep_size, checkpoints recycle the segment walferry needs next.
    for _ in 0..4 {
        emit_wal(&pg, 16);
        pg.switch_wal();
        pg.psql("CHECKPOINT");
    }
    assert!(
        !pg.wal_segment_path(&needed).exists(),
        "{needed} is still in pg_wal"
    );

    let started = Instant::now();
    let out = run_bounded(&mut walferry(&pg, dir.path()), Duration::from_secs(30));
    assert_exit1(
        &out,
        &[
            &format!("requested WAL segment {needed} has already been removed"),
            "walferry: hint: ",
            "replication slot",
        ],
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn unreachable_server_at_start_is_final_with_or_without_no_loop() {
    let mut pg = PgCluster::primary();
    pg.stop();
    for extra in [&["-n"][..], &[][..]] {
        let dir = tempdir();
        let started = Instant::now();
        let out = run_bounded(
            walferry(&pg, dir.path()).args(extra),
            Duration::from_secs(30),
        );
        assert_exit1(
            &out,
            &["walferry: error: ", "could not connect", "walferry: hint: "],
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn no_loop_exits_when_the_server_goes_away() {
    let mut pg = PgCluster::primary();
    let dir = tempdir();
    let mut wf = Proc::spawn(walferry(&pg, dir.path()).args(["-n"]));
    common::wait_until("walferry to stream", Duration::from_secs(30), || {
        wf_stat(&pg).is_some()
    });
    pg.kill9();
    let status = wf
        .wait_timeout(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("walferry -n still running:\n{}", wf.stderr()));
    assert_eq!(status.code(), Some(1), "{}", wf.stderr());
    assert!(wf.stderr().contains("walferry: error: "), "{}", wf.stderr());
    pg.start();
}

#[test]
fn reconnects_across_server_restart_and_crash_and_catches_up() {
    let mut pg = PgCluster::primary();
    let start = pg.current_wal_lsn();
    let dir = tempdir();
    let mut wf = Proc::spawn(walferry(&pg, dir.path()).args(["-s", "1", "-v"]));
    common::wait_until("walferry to stream", Duration::from_secs(30), || {
        wf_stat(&pg).is_some()
    });
    emit_wal(&pg, 10);

    // A clean restart: the walsender waits for walferry's reply before it exits, so this
    // also shows walferry answers the shutdown promptly.
    let t = Instant::now();
    pg.restart();
    eprintln!("restart took {:?}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "restart took {:?}",
        t.elapsed()
    );
    emit_wal(&pg, 10);
    let target = flush_lsn(&pg);
    common::wait_until(
        "walferry to catch up after the restart",
        Duration::from_secs(60),
        || {
            wf_stat(&pg)
                .and_then(|s| s.write_lsn)
                .is_some_and(|l| l >= target)
        },
    );

    // A crash: walferry notices the lost connection and schedules a reconnect.
    let reconnects = wf.stderr().matches("reconnecting in").count();
    pg.kill9();
    common::wait_until(
        "walferry to notice the crash",
        Duration::from_secs(30),
        || wf.stderr().matches("reconnecting in").count() > reconnects || !wf.is_running(),
    );
    assert!(wf.is_running(), "walferry gave up: {}", wf.stderr());
    pg.start();
    emit_wal(&pg, 20);
    let target = flush_lsn(&pg);
    common::wait_until(
        "walferry to catch up after the crash",
        Duration::from_secs(60),
        || {
            wf_stat(&pg)
                .and_then(|s| s.write_lsn)
                .is_some_and(|l| l >= target)
        },
    );
    wf.signal(libc::SIGTERM);
    let status = wf.wait();
    assert_eq!(status.code(), Some(0), "{}", wf.stderr());
    assert!(wf.stderr().contains("reconnecting in"), "{}", wf.stderr());

    let last = segment_name(1, target);
    let n = assert_contiguous(dir.path(), 1, &segment_name(1, start));
    assert_eq!(
        segno_of(&segment_name(1, start)) + n as u64,
        segno_of(&last)
    );
    assert_complete_segments_match(dir.path(), &pg);
    assert_partial_prefix(
        &dir.path().join(format!("{last}.partial")),
        &pg.wal_segment_path(&last),
        segment_start_lsn(&last),
        target,
    );
}

#[test]
fn a_fast_shutdown_of_the_server_is_not_held_up_by_walferry() {
    // The walsender of a stopping server sends everything, asks for a reply and waits
    // until the standby's reported flush position (write, when flush is invalid) reaches
    // what it sent. walferry must answer with a flushed position promptly, not at its next
    // status interval (default 10 s).
    let mut pg = PgCluster::primary();
    let dir = tempdir();
    let wf = Proc::spawn(walferry(&pg, dir.path()).args(["-v"]));
    common::wait_until("walferry to stream", Duration::from_secs(30), || {
        wf_stat(&pg).is_some()
    });
    emit_wal(&pg, 2);
    small_commit(&pg);
    let target = flush_lsn(&pg);
    common::wait_until(
        "walferry to receive the WAL",
        Duration::from_secs(30),
        || {
            wf_stat(&pg)
                .and_then(|s| s.sent_lsn)
                .is_some_and(|l| l >= target)
        },
    );
    let t = Instant::now();
    pg.stop();
    let took = t.elapsed();
    eprintln!("fast shutdown took {took:?}");
    assert!(took < Duration::from_secs(4), "fast shutdown took {took:?}");
    pg.start();
    drop(wf);
}

#[test]
fn a_missing_archive_directory_is_final() {
    let pg = PgCluster::primary();
    let parent = tempdir();
    let missing = parent.path().join("no-such-dir");
    let started = Instant::now();
    let out = run_bounded(&mut walferry(&pg, &missing), Duration::from_secs(30));
    assert_exit1(&out, &["walferry: error: ", &missing.display().to_string()]);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!missing.exists(), "walferry must not create -D itself");

    // A file where the directory should be.
    let file = parent.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = run_bounded(&mut walferry(&pg, &file), Duration::from_secs(30));
    assert_exit1(&out, &["walferry: error: ", "not a directory"]);
}
