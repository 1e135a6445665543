//! Timeline following: walferry streams from a standby that gets promoted while it runs,
//! stores the new timeline's history file, keeps the old timeline's last segment as
//! `.partial` and continues on the new timeline without a gap. A server already promoted
//! before walferry starts has its history files fetched at once.

mod common;
mod receive_support;

use std::path::PathBuf;
use std::time::Duration;

use common::{format_lsn, parse_lsn, segment_name, tempdir, PgCluster, StandbyOptions};
use receive_support::*;

fn wf_stat(pg: &PgCluster) -> Option<common::ReplicationStat> {
    pg.replication_stats()
        .into_iter()
        .find(|s| s.application_name == "walferry" && s.state == "streaming")
}

/// The switch point recorded in a `00000002.history` file's only line.
fn switchpoint(history: &str) -> u64 {
    let line = history
        .lines()
        .find(|l| l.starts_with("1\t"))
        .expect("line for timeline 1");
    parse_lsn(line.split('\t').nth(1).expect("switch point"))
}

/// The server-side file holding timeline 1's last segment after the promotion: the standby
/// renames it to `.partial` when archiving is on, otherwise it keeps its name.
fn old_timeline_segment(standby: &PgCluster, primary: &PgCluster, name: &str) -> PathBuf {
    for p in [
        standby.wal_segment_path(&format!("{name}.partial")),
        standby.wal_segment_path(name),
        primary.wal_segment_path(name),
    ] {
        if p.exists() {
            return p;
        }
    }
    panic!("no server copy of {name}");
}

fn history_of(pg: &PgCluster) -> String {
    std::fs::read_to_string(pg.wal_segment_path("00000002.history")).expect("server history file")
}

#[test]
fn follows_a_promotion_of_its_upstream_without_a_gap() {
    let primary = PgCluster::primary();
    let standby = PgCluster::standby_of(&primary, StandbyOptions::new());
    small_commit(&primary);
    standby.wait_for_replay(primary.current_wal_lsn());

    let dir = tempdir();
    let start = parse_lsn(&standby.psql("SELECT pg_last_wal_replay_lsn()"));
    let mut wf = Proc::spawn(walferry(&standby, dir.path()).args(["-s", "1", "-v"]));
    common::wait_until(
        "walferry to stream from the standby",
        Duration::from_secs(30),
        || wf_stat(&standby).is_some(),
    );

    // Timeline 1 WAL, through the standby, spanning a segment boundary.
    emit_wal(&primary, 20);
    small_commit(&primary);
    standby.wait_for_replay(primary.current_wal_lsn());

    standby.promote();
    assert_eq!(standby.timeline(), 2);
    let history = history_of(&standby);
    let switch = switchpoint(&history);

    // Timeline 2 WAL, again across a segment boundary.
    emit_wal(&standby, 20);
    small_commit(&standby);
    let target = flush_lsn(&standby);
    common::wait_until(
        "walferry to report writing the new timeline",
        Duration::from_secs(60),
        || {
            wf_stat(&standby)
                .and_then(|s| s.write_lsn)
                .is_some_and(|l| l >= target)
        },
    );
    wf.signal(libc::SIGTERM);
    let status = wf.wait();
    assert_eq!(status.code(), Some(0), "{}", wf.stderr());
    let log = wf.stderr();
    assert!(
        log.contains(&format!("switched to timeline 2 at {}", format_lsn(switch))),
        "{log}"
    );

    // The history file, byte for byte.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("00000002.history")).expect("history stored"),
        history
    );

    // Timeline 1: complete segments from the start, then the last one kept as .partial.
    let old_last = segment_name(1, switch);
    let n1 = assert_contiguous(dir.path(), 1, &segment_name(1, start));
    assert_eq!(
        segno_of(&segment_name(1, start)) + n1 as u64,
        segno_of(&old_last),
        "{:?}",
        list_dir(dir.path())
    );
    assert!(
        !dir.path().join(&old_last).exists(),
        "old timeline's last segment must stay .partial"
    );
    assert_partial_prefix(
        &dir.path().join(format!("{old_last}.partial")),
        &old_timeline_segment(&standby, &primary, &old_last),
        segment_start_lsn(&old_last),
        switch,
    );
    for (seg, file) in complete_segments(dir.path()) {
        if tli_of(&seg) == 1 {
            assert_same_segment(
                &file,
                &read_wal_file(&dir.path().join(&file)),
                &primary.wal_segment_path(&seg),
            );
        }
    }

    // Timeline 2: from the switch point's segment on, identical to the promoted server's.
    let new_first = segment_name(2, switch);
    let new_last = segment_name(2, target);
    let n2 = assert_contiguous(dir.path(), 2, &new_first);
    assert_eq!(segno_of(&new_first) + n2 as u64, segno_of(&new_last));
    for (seg, file) in complete_segments(dir.path()) {
        if tli_of(&seg) == 2 {
            assert_same_segment(
                &file,
                &read_wal_file(&dir.path().join(&file)),
                &standby.wal_segment_path(&seg),
            );
        }
    }
    assert_partial_prefix(
        &dir.path().join(format!("{new_last}.partial")),
        &standby.wal_segment_path(&new_last),
        segment_start_lsn(&new_last),
        target,
    );
    let partials = partial_segments(dir.path());
    assert_eq!(
        partials,
        vec![format!("{old_last}.partial"), format!("{new_last}.partial")]
    );
}

#[test]
fn fetches_missing_history_files_at_start() {
    let primary = PgCluster::primary();
    let standby = PgCluster::standby_of(&primary, StandbyOptions::new());
    small_commit(&primary);
    standby.wait_for_replay(primary.current_wal_lsn());
    standby.promote();
    small_commit(&standby);
    let endpos = flush_lsn(&standby);

    let dir = tempdir();
    run_ok(walferry(&standby, dir.path()).args(["-E", &format_lsn(endpos)]));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("00000002.history")).expect("history fetched"),
        history_of(&standby)
    );
    // Streaming ran on timeline 2.
    let seg = segment_name(2, endpos);
    assert_eq!(partial_segments(dir.path()), vec![format!("{seg}.partial")]);
    assert_partial_prefix(
        &dir.path().join(format!("{seg}.partial")),
        &standby.wal_segment_path(&seg),
        segment_start_lsn(&seg),
        endpos,
    );

    // A second timeline switch: the archive must end up with both history files even when
    // it starts against timeline 3 with only 00000002.history present.
    let standby2 = PgCluster::standby_of(&standby, StandbyOptions::new());
    small_commit(&standby);
    standby2.wait_for_replay(standby.current_wal_lsn());
    standby2.promote();
    assert_eq!(standby2.timeline(), 3);
    small_commit(&standby2);
    let endpos3 = flush_lsn(&standby2);
    let dir3 = tempdir();
    run_ok(walferry(&standby2, dir3.path()).args(["-E", &format_lsn(endpos3)]));
    for h in ["00000002.history", "00000003.history"] {
        assert_eq!(
            std::fs::read(dir3.path().join(h)).unwrap_or_else(|_| panic!("{h} fetched")),
            std::fs::read(standby2.wal_segment_path(h)).expect("server history"),
            "{h}"
        );
    }
}

#[test]
fn resumes_on_the_new_timeline_after_missing_the_promotion() {
    let primary = PgCluster::primary();
    let standby = PgCluster::standby_of(&primary, StandbyOptions::new());
    small_commit(&primary);
    standby.wait_for_replay(primary.current_wal_lsn());
    let start = parse_lsn(&standby.psql("SELECT pg_last_wal_replay_lsn()"));

    // walferry archives part of timeline 1 through the standby, then is not running while
    // more WAL arrives and the standby is promoted.
    let dir = tempdir();
    run_ok(walferry(&standby, dir.path()).args(["-E", &format_lsn(start)]));
    emit_wal(&primary, 18);
    standby.wait_for_replay(primary.current_wal_lsn());
    let a = parse_lsn(&standby.psql("SELECT pg_last_wal_replay_lsn()"));
    run_ok(walferry(&standby, dir.path()).args(["-E", &format_lsn(a)]));
    emit_wal(&primary, 5);
    small_commit(&primary);
    standby.wait_for_replay(primary.current_wal_lsn());
    standby.promote();
    let history = history_of(&standby);
    let switch = switchpoint(&history);
    emit_wal(&standby, 18);
    let target = flush_lsn(&standby);

    let out = run_ok(walferry(&standby, dir.path()).args(["-E", &format_lsn(target), "-v"]));
    let log = stderr_of(&out);
    assert!(
        log.contains(&format!("switched to timeline 2 at {}", format_lsn(switch))),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("00000002.history")).unwrap(),
        history
    );
    let old_last = segment_name(1, switch);
    let n1 = assert_contiguous(dir.path(), 1, &segment_name(1, start));
    assert_eq!(
        segno_of(&segment_name(1, start)) + n1 as u64,
        segno_of(&old_last)
    );
    assert_partial_prefix(
        &dir.path().join(format!("{old_last}.partial")),
        &old_timeline_segment(&standby, &primary, &old_last),
        segment_start_lsn(&old_last),
        switch,
    );
    let new_last = segment_name(2, target);
    let n2 = assert_contiguous(dir.path(), 2, &segment_name(2, switch));
    assert_eq!(
        segno_of(&segment_name(2, switch)) + n2 as u64,
        segno_of(&new_last)
    );
    for (seg, file) in complete_segments(dir.path()) {
        let server = if tli_of(&seg) == 1 {
            &primary
        } else {
            &standby
        };
        assert_same_segment(
            &file,
            &read_wal_file(&dir.path().join(&file)),
            &server.wal_segment_path(&seg),
        );
    }
    assert_partial_prefix(
        &dir.path().join(format!("{new_last}.partial")),
        &standby.wal_segment_path(&new_last),
        segment_start_lsn(&new_last),
        target,
    );
}
