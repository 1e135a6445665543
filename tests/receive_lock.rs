//! One writer per archive directory: a second `walferry receive` on a directory in use
//! exits 1 naming the first one's pid, and the lock dies with its holder (kill -9 included).

mod common;
mod receive_support;

use std::time::Duration;

use common::{tempdir, PgCluster};
use receive_support::*;

#[test]
fn a_second_receiver_on_one_directory_is_refused_until_the_first_dies() {
    let pg = PgCluster::primary();
    let dir = tempdir();
    let mut first = Proc::spawn(&mut walferry(&pg, dir.path()));
    // The first one is streaming once its .partial exists.
    common::wait_until(
        "the first receiver streams",
        Duration::from_secs(20),
        || !partial_segments(dir.path()).is_empty(),
    );
    let before = list_dir(dir.path());

    let out = run_bounded(&mut walferry(&pg, dir.path()), Duration::from_secs(20));
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is in use by another walferry process")
            && err.contains(&format!("(pid {})", first.pid())),
        "{err}"
    );
    assert!(err.contains("walferry: hint: "), "{err}");
    assert!(first.is_running(), "the first receiver was disturbed");
    // The refused one wrote nothing.
    let after = list_dir(dir.path());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );

    // kill -9: the kernel releases the lock; a new receiver starts and streams.
    first.kill9();
    let mut second = Proc::spawn(&mut walferry(&pg, dir.path()));
    let pid = second.pid().to_string();
    common::wait_until(
        "the second receiver takes the lock",
        Duration::from_secs(20),
        || std::fs::read_to_string(dir.path().join(LOCK_FILE)).is_ok_and(|p| p.trim() == pid),
    );
    assert!(second.is_running(), "{}", second.stderr());
    second.signal(libc::SIGTERM);
    assert!(second.wait().success(), "{}", second.stderr());
}
