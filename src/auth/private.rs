//! Opening a file that must be private to the user walferry runs as (an auth file, a shared
//! secret): a regular file, mode 0600 or stricter, owned by the effective user. The checks
//! are made on the opened file (fstat), so it cannot be swapped after them, and it is opened
//! with O_NONBLOCK so that a FIFO in its place cannot hang a start-up.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Why an opened file is not private.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotAFile,
    /// Group or other may access it: the permission bits.
    Permissions(u32),
    Owner {
        owner: u32,
        euid: u32,
    },
}

/// The opened file, or why it may not be used.
pub fn open_private(path: &Path) -> io::Result<Result<File, Refusal>> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Err(Refusal::NotAFile));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Ok(Err(Refusal::Permissions(mode)));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Ok(Err(Refusal::Owner {
            owner: meta.uid(),
            euid,
        }));
    }
    Ok(Ok(file))
}
