//! A full archive disk (a small tmpfs the test mounts): walferry keeps running and says so
//! with a hint, no complete-named segment is damaged, and streaming resumes by itself once
//! space is freed, up to `--endpos`.

mod common;
mod receive_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{format_lsn, prerequisite, segment_name, tempdir, PgCluster, WAL_SEGMENT_SIZE};
use receive_support::*;

/// A tmpfs mounted on a fresh temp dir; unmounted on drop (also while panicking).
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` when this environment does not let us mount and the `tmpfs` prerequisite is
    /// allowed to be missing (otherwise that panics).
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempdir();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        let failure = match out {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "mount failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Some(format!("cannot run mount: {e}")),
        };
        if let Some(failure) = failure {
            prerequisite::missing(
                "tmpfs",
                &format!(
                    "cannot mount a tmpfs for the full archive disk (needs root or \
                     CAP_SYS_ADMIN): {failure}"
                ),
            );
            return None;
        }
        Some(Tmpfs {
            path: dir.path().to_path_buf(),
            _dir: dir,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something (a killed child) may still hold it: detach it lazily.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

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
