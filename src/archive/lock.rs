//! One writer per archive directory: `receive` (and later `relay`) holds an exclusive
//! `flock(2)` on `DIR/.walferry.lock` for as long as it runs. The kernel releases the lock
//! when the process ends, however it ends (kill -9 included), so a stale lock file never
//! blocks a restart. The file holds the holder's pid, for the second process's error.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::ArchiveError;

/// Name of the lock file inside the archive directory (not a WAL name: pg_receivewal and
/// `inspect` ignore it).
pub const LOCK_FILE: &str = ".walferry.lock";

/// The held lock; dropping it releases the lock (the file stays).
#[derive(Debug)]
pub struct ArchiveLock {
    _file: File,
    path: PathBuf,
}

impl ArchiveLock {
    /// Take the directory's lock, or fail with [`ArchiveError::Locked`] naming the holder.
    pub fn acquire(dir: &Path) -> Result<Self, ArchiveError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| ArchiveError::io("open lock file", &path, e))?;
        // SAFETY: flock on a valid, open file descriptor; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(ArchiveError::Locked {
                    path: dir.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            return Err(ArchiveError::io("lock", &path, err));
        }
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{pid}"))
            .map_err(|e| ArchiveError::io("write", &path, e))?;
        Ok(ArchiveLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_directory_names_the_holder_and_a_released_one_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let held = ArchiveLock::acquire(dir.path()).unwrap();
        match ArchiveLock::acquire(dir.path()) {
            Err(ArchiveError::Locked { pid, path }) => {
                assert_eq!(pid, Some(std::process::id()));
                assert_eq!(path, dir.path());
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(held);
        // The file stays behind; the lock does not.
        assert!(dir.path().join(LOCK_FILE).exists());
        ArchiveLock::acquire(dir.path()).unwrap();
    }
}
