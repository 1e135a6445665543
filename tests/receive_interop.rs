//! Either tool resumes the other's directory: pg_receivewal continues a walferry archive and
//! walferry continues a pg_receivewal one, with no gap and the server's bytes throughout.

mod common;
mod receive_support;

use common::{format_lsn, segment_name, tempdir, PgCluster};
use receive_support::*;

/// First run to A with `first`, then to B with `second`, in one directory on one slot.
/// Returns (dir, slot start, A, B, second's stderr).
fn relay(
    pg: &PgCluster,
    slot: &str,
    first: impl Fn(&std::path::Path, u64) -> std::process::Command,
    second: impl Fn(&std::path::Path, u64) -> std::process::Command,
) -> (tempfile::TempDir, u64, u64, u64, String) {
    let dir = tempdir();
    let slot_lsn = pg.create_physical_slot(slot);
    emit_wal(pg, 20);
    small_commit(pg);
    let a = flush_lsn(pg);
    run_to_endpos_ok(pg, &mut first(dir.path(), a));
    assert_eq!(
        partial_segments(dir.path()),
        vec![format!("{}.partial", segment_name(1, a))]
    );
    emit_wal(pg, 20);
    small_commit(pg);
    let b = flush_lsn(pg);
    let out = run_to_endpos_ok(pg, &mut second(dir.path(), b));
    (dir, slot_lsn, a, b, stderr_of(&out))
}

fn check_archive(pg: &PgCluster, dir: &std::path::Path, slot_lsn: u64, b: u64) {
    let first = segment_name(1, slot_lsn);
    let last = segment_name(1, b);
    let n = assert_contiguous(dir, 1, &first);
    assert_eq!(
        segno_of(&first) + n as u64,
        segno_of(&last),
        "{:?}",
        list_dir(dir)
    );
    assert_complete_segments_match(dir, pg);
    assert_eq!(partial_segments(dir), vec![format!("{last}.partial")]);
    assert_partial_prefix(
        &dir.join(format!("{last}.partial")),
        &pg.wal_segment_path(&last),
        segment_start_lsn(&last),
        b,
    );
}

#[test]
fn pg_receivewal_resumes_a_walferry_directory() {
    let pg = PgCluster::primary();
    let (dir, slot_lsn, a, b, stderr) = relay(
        &pg,
        "s",
        |d, a| {
            let mut c = walferry(&pg, d);
            c.args(["-S", "s", "-E", &format_lsn(a)]);
            c
        },
        |d, b| {
            let mut c = pg_receivewal(&pg, d);
            c.args(["-S", "s", "-E", &format_lsn(b), "-v"]);
            c
        },
    );
    // pg_receivewal accepted walferry's preallocated .partial and restarted at its start.
    let restart = format!(
        "starting log streaming at {} (timeline 1)",
        format_lsn(segment_start_lsn(&segment_name(1, a)))
    );
    assert!(stderr.contains(&restart), "{stderr}");
    check_archive(&pg, dir.path(), slot_lsn, b);
}

#[test]
fn walferry_resumes_a_pg_receivewal_directory() {
    let pg = PgCluster::primary();
    let (dir, slot_lsn, a, b, stderr) = relay(
        &pg,
        "s",
        |d, a| {
            let mut c = pg_receivewal(&pg, d);
            c.args(["-S", "s", "-E", &format_lsn(a)]);
            c
        },
        |d, b| {
            let mut c = walferry(&pg, d);
            c.args(["-S", "s", "-E", &format_lsn(b), "-v"]);
            c
        },
    );
    let restart = format!(
        "starting log streaming at {} (timeline 1)",
        format_lsn(segment_start_lsn(&segment_name(1, a)))
    );
    assert!(stderr.contains(&restart), "{stderr}");
    check_archive(&pg, dir.path(), slot_lsn, b);
}
