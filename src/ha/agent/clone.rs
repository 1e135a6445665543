//! The rejoin that cannot fail for good: a new standby copied from the primary with
//! `pg_basebackup`, for when `pg_rewind` cannot bring the old data directory back (WAL it
//! needs was recycled, the timelines diverged in a way it cannot undo) and no repository can
//! either. The copy is built in a fresh directory beside PGDATA, made a complete standby there
//! (the node's own `*.conf` files, `standby.signal`, `primary_conninfo`), and only then
//! swapped in: PGDATA is at every moment either the old directory or the finished new one.
//!
//! The names beside PGDATA (`.NAME.walferry-clone`, `.NAME.walferry-old`) are the agent's
//! own; whatever an interrupted attempt left there is cleaned up before the next one (and
//! when the agent starts).

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::postgres::{run, PgError};

/// Where the copy is built: beside PGDATA, on the same file system (the swap is a rename).
pub fn build_dir(pgdata: &Path) -> PathBuf {
    beside(pgdata, "walferry-clone")
}

/// Where the old directory goes when the file system cannot exchange two names at once.
fn old_dir(pgdata: &Path) -> PathBuf {
    beside(pgdata, "walferry-old")
}

fn beside(pgdata: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(pgdata.file_name().unwrap_or_else(|| "pgdata".as_ref()));
    name.push(".");
    name.push(suffix);
    pgdata.with_file_name(name)
}

/// `pg_basebackup` of the primary at `source` into `dir` (which must not exist): WAL
/// streamed alongside (`-X stream`), so the copy is consistent by itself, and a fast
/// checkpoint on the primary (a spread one would make the rebuild wait minutes for nothing).
pub async fn base_backup(
    bindir: &Path,
    source: &str,
    dir: &Path,
    timeout: Duration,
) -> Result<(), PgError> {
    let mut cmd = Command::new(bindir.join("pg_basebackup"));
    cmd.arg("-D")
        .arg(dir)
        .args(["-X", "stream", "--checkpoint=fast", "--no-password"])
        .arg(format!("--dbname={source}"));
    run("pg_basebackup", cmd, timeout).await.map(|_| ())
}

/// Remove what an interrupted rebuild left beside `pgdata`. A half-built copy goes; an old
/// directory goes once PGDATA is there again, and comes back as PGDATA when it is not (the
/// swap was cut between its two renames): never a node without a data directory because of us.
pub fn clean_leftovers(pgdata: &Path) -> io::Result<()> {
    let build = build_dir(pgdata);
    if build.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&build)?;
    }
    let old = old_dir(pgdata);
    if old.symlink_metadata().is_ok() {
        if pgdata.symlink_metadata().is_ok() {
            std::fs::remove_dir_all(&old)?;
        } else {
            std::fs::rename(&old, pgdata)?;
            sync_parent(pgdata)?;
        }
    }
    Ok(())
}

/// Put the finished copy at `new` in place of `pgdata` (which may be missing: a deleted data
/// directory), and remove the old one. With `renameat2(RENAME_EXCHANGE)` the two names
/// change places in one step; where the file system cannot do that, PGDATA is first renamed
/// aside, which [`clean_leftovers`] undoes if the second rename never happens.
pub fn swap_in(pgdata: &Path, new: &Path) -> io::Result<()> {
    if pgdata.symlink_metadata().is_err() {
        std::fs::rename(new, pgdata)?;
        return sync_parent(pgdata);
    }
    match exchange(new, pgdata) {
        Ok(()) => {
            sync_parent(pgdata)?;
            // `new` now names the old data directory.
            std::fs::remove_dir_all(new)
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
            let old = old_dir(pgdata);
            std::fs::rename(pgdata, &old)?;
            std::fs::rename(new, pgdata)?;
            sync_parent(pgdata)?;
            std::fs::remove_dir_all(&old)
        }
        Err(e) => Err(e),
    }
}

fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a path"))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two NUL-terminated paths that live across the call; AT_FDCWD as both dirfds.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    crate::repo::sync_dir(parent).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn data_dir(root: &Path, marker: &str) -> PathBuf {
        let dir = root.join("data");
        fs::create_dir_all(dir.join("global")).unwrap();
        fs::write(dir.join("global/marker"), marker).unwrap();
        dir
    }

    fn marker(dir: &Path) -> String {
        fs::read_to_string(dir.join("global/marker")).unwrap()
    }

    fn names(root: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_copy_is_built_beside_pgdata_under_a_hidden_name() {
        assert_eq!(
            build_dir(Path::new("/var/lib/postgresql/15/main")),
            Path::new("/var/lib/postgresql/15/.main.walferry-clone")
        );
        assert_eq!(
            old_dir(Path::new("/srv/pg/data")),
            Path::new("/srv/pg/.data.walferry-old")
        );
    }

    #[test]
    fn a_swap_puts_the_copy_in_place_and_removes_the_old_directory() {
        let root = tempfile::tempdir().unwrap();
        let pgdata = data_dir(root.path(), "old");
        let build = build_dir(&pgdata);
        fs::create_dir_all(build.join("global")).unwrap();
        fs::write(build.join("global/marker"), "new").unwrap();
        swap_in(&pgdata, &build).unwrap();
        assert_eq!(marker(&pgdata), "new");
        assert_eq!(names(root.path()), ["data"]);
    }

    #[test]
    fn a_swap_with_pgdata_gone_is_a_rename() {
        let root = tempfile::tempdir().unwrap();
        let pgdata = root.path().join("data");
        let build = build_dir(&pgdata);
        fs::create_dir_all(build.join("global")).unwrap();
        fs::write(build.join("global/marker"), "new").unwrap();
        swap_in(&pgdata, &build).unwrap();
        assert_eq!(marker(&pgdata), "new");
        assert_eq!(names(root.path()), ["data"]);
    }

    #[test]
    fn leftovers_of_an_interrupted_rebuild_are_removed_and_pgdata_is_never_left_missing() {
        let root = tempfile::tempdir().unwrap();
        let pgdata = data_dir(root.path(), "current");
        // A half-built copy, and an old directory whose removal was cut short.
        fs::create_dir_all(build_dir(&pgdata).join("base")).unwrap();
        fs::create_dir_all(old_dir(&pgdata).join("base")).unwrap();
        clean_leftovers(&pgdata).unwrap();
        assert_eq!(names(root.path()), ["data"]);
        assert_eq!(marker(&pgdata), "current");

        // Cut between the two renames of the fallback swap: PGDATA comes back.
        fs::rename(&pgdata, old_dir(&pgdata)).unwrap();
        clean_leftovers(&pgdata).unwrap();
        assert_eq!(names(root.path()), ["data"]);
        assert_eq!(marker(&pgdata), "current");

        // Nothing to do.
        clean_leftovers(&pgdata).unwrap();
        assert_eq!(names(root.path()), ["data"]);
    }
}
