//! A full archive disk (a small tmpfs the test mounts): walferry keeps running and says so
//! with a hint, no complete-named segment is damaged, and streaming resumes by itself once
//! space is freed, up to `--endpos`.

mod common;
mod receive_support;

use std::path::Path;
use std::time::Duration;

use common::{format_lsn, segment_name, tempdir, PgCluster, Tmpfs, WAL_SEGMENT_SIZE};
use receive_support::*;

fn move_out(from: &Path, name: &str, to: &Path) {
    std::fs::copy(from.join(name), to.join(name)).expect("copy segment out");
    std::fs::remove_file(from.join(name)).expect("remove segment");
}

#[test]
fn full_archive_disk_is_reported_and_streaming_resumes_when_space_returns() {
    let Some(mnt) = Tmpfs::mount("40m") else {
        return;
    };
    let pg = PgCluster::primary();
    let slot_lsn = pg.create_physical_slot("wf");
    emit_wal(&pg, 60);
    small_commit(&pg);
    let endpos = flush_lsn(&pg);
    let first = segment_name(1, slot_lsn);
    let last = segment_name(1, endpos);
    assert!(
        (endpos - slot_lsn) > 3 * WAL_SEGMENT_SIZE,
        "more WAL than fits"
    );

    let mut wf =
        Proc::spawn(walferry(&pg, &mnt.path).args(["-S", "wf", "-E", &format_lsn(endpos)]));
    common::wait_until(
        "walferry to report the full disk",
        Duration::from_secs(60),
        || wf.stderr().contains("disk is full"),
    );
    // It keeps retrying, backing off (a session that writes nothing does not reset the
    // backoff, so it does not hammer the server every half second).
    common::wait_until("walferry to back off", Duration::from_secs(20), || {
        wf.stderr().contains("reconnecting in 2.0 s")
    });
    assert!(
        wf.is_running(),
        "walferry exited on a full disk:\n{}",
        wf.stderr()
    );
    let log = wf.stderr();
    assert!(log.contains("archive disk is full while writing"), "{log}");
    assert!(
        log.contains("free space on the archive"),
        "no hint in:\n{log}"
    );

    // No complete-looking damaged segment: every complete name holds the server's bytes.
    let complete = assert_complete_segments_match(&mnt.path, &pg);
    assert!(!complete.is_empty(), "{:?}", list_dir(&mnt.path));
    for name in list_dir(&mnt.path).keys() {
        assert!(
            split_wal_name(name).is_some(),
            "unexpected file {name} on the full disk"
        );
    }

    // Free space as a DBA would: move complete segments elsewhere, again and again, until
    // walferry reaches endpos (bounded).
    let moved = tempdir();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let status = loop {
        for (seg, file) in complete_segments(&mnt.path) {
            assert_eq!(seg, file);
            move_out(&mnt.path, &file, moved.path());
        }
        if let Some(status) = wf.wait_timeout(Duration::from_millis(200)) {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "walferry did not reach endpos after space returned:\n{}",
            wf.stderr()
        );
    };
    assert_eq!(status.code(), Some(0), "{}", wf.stderr());

    // Together, the moved and the new segments are the server's WAL without a gap.
    for (_, file) in complete_segments(&mnt.path) {
        move_out(&mnt.path, &file, moved.path());
    }
    let n = assert_contiguous(moved.path(), 1, &first);
    assert_eq!(
        segno_of(&first) + n as u64,
        segno_of(&last),
        "{:?}",
        list_dir(moved.path())
    );
    assert_complete_segments_match(moved.path(), &pg);
    assert_eq!(partial_segments(&mnt.path), vec![format!("{last}.partial")]);
    assert_partial_prefix(
        &mnt.path.join(format!("{last}.partial")),
        &pg.wal_segment_path(&last),
        segment_start_lsn(&last),
        endpos,
    );
}
