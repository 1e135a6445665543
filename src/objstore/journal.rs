//! The multipart uploads a process has open, written down so that a process that dies in
//! the middle of one (kill -9, a crash, a lost power supply) does not leave its parts in the
//! bucket for ever: S3 keeps, and bills, the parts of an upload that is neither completed
//! nor aborted.
//!
//! Each process that starts a multipart upload keeps a journal,
//! `<cache>/multipart/<bucket>/<pid>.journal` (`<cache>` as for the local copies, see
//! [`super::mirror::cache_base`]), locked with an exclusive `flock` for as long as the process
//! lives. Right after the store hands out an upload id, and before any part is sent, a line
//! `+ <id> <endpoint> <key>` is appended and fsynced; once the upload is completed or
//! aborted, `- <id>` (and the file is emptied when nothing is open). Every command that
//! uploads ([`take_over`]: the receiver's uploader, `backup`, `archive-push`) first looks at
//! the journals of the bucket: one whose lock it gets belongs to a process that is gone, and
//! each upload it lists as open is aborted ("no such upload" is success: it was completed or
//! aborted after all), then the journal is removed. A journal whose lock is held is never
//! touched.
//!
//! Not covered, which is why a lifecycle rule `AbortIncompleteMultipartUpload` on the bucket
//! is still worth having: an upload created an instant before a crash, before its line
//! reached the disk, and the uploads of a host that never comes back (or of a process that
//! uses another cache directory).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Kind, Remote, RemoteError};

const SUFFIX: &str = ".journal";

/// The journal directory of `remote`'s bucket.
pub fn dir_of(remote: &Remote) -> PathBuf {
    super::mirror::cache_base()
        .join("multipart")
        .join(&remote.settings.bucket)
}

/// The store an entry belongs to: its endpoint (`-` for AWS itself).
fn endpoint_of(remote: &Remote) -> String {
    remote
        .settings
        .endpoint
        .clone()
        .filter(|e| !e.is_empty() && !e.contains(char::is_whitespace))
        .unwrap_or_else(|| "-".into())
}

/// This process's open journals (one per bucket it has uploaded parts to).
static OURS: Mutex<Vec<Journal>> = Mutex::new(Vec::new());

struct Journal {
    dir: PathBuf,
    /// Locked for the life of the process (the lock goes with the last descriptor).
    file: File,
    open: HashSet<String>,
}

fn local<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RemoteError + 'a {
    move |e| RemoteError::local(op, path, e)
}

/// `flock(LOCK_EX | LOCK_NB)`: true when this descriptor now holds the lock.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock(2) on a descriptor this `File` owns and keeps open; no memory is shared.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(e),
    }
}

fn make_dir(dir: &Path) -> Result<(), RemoteError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(local("create directory", dir))
}

fn sync_dir(dir: &Path) -> Result<(), RemoteError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(local("fsync directory", dir))
}

/// A new journal in `dir`, locked before any other process can see it: made under a name
/// [`take_over`] ignores, locked, then linked to `<pid>.journal` (or `<pid>-N.journal` when
/// a dead process with the same pid left one that could not be cleaned yet).
fn create(dir: &Path) -> Result<File, RemoteError> {
    make_dir(dir)?;
    let pid = std::process::id();
    let tmp = dir.join(format!(".{pid}.new"));
    let _ = fs::remove_file(&tmp);
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&tmp)
        .map_err(local("create", &tmp))?;
    // Nobody else knows the file yet, so the lock is ours unless flock itself fails; a
    // journal that is not locked could be taken over while its uploads go on.
    if !try_lock(&file).map_err(local("lock", &tmp))? {
        let _ = fs::remove_file(&tmp);
        return Err(RemoteError::local(
            "lock",
            &tmp,
            io::Error::other("another process holds the lock of a file just made"),
        ));
    }
    let mut result = Err(io::Error::other("no free name"));
    for n in 0..100 {
        let name = match n {
            0 => format!("{pid}{SUFFIX}"),
            n => format!("{pid}-{n}{SUFFIX}"),
        };
        result = fs::hard_link(&tmp, dir.join(name));
        match &result {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            _ => break,
        }
    }
    let _ = fs::remove_file(&tmp);
    result.map_err(local("create", dir))?;
    sync_dir(dir)?;
    Ok(file)
}

fn append(file: &mut File, dir: &Path, line: &str) -> Result<(), RemoteError> {
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(local("write the multipart journal in", dir))
}

/// Writes down upload `id` of `key` (the object's full key in the bucket) as open. Called
/// after the store created the upload and before any part is sent; an error here must
/// abort the upload.
pub(super) fn record(remote: &Remote, key: &str, id: &str) -> Result<(), RemoteError> {
    if id.contains(char::is_whitespace) || key.contains('\n') {
        return Err(RemoteError::Store {
            op: "start an upload of",
            location: remote.describe(key),
            kind: Kind::Other,
            message: format!("the store answered an upload id walferry cannot journal: {id:?}"),
        });
    }
    let dir = dir_of(remote);
    let mut ours = OURS.lock().unwrap_or_else(|p| p.into_inner());
    let at = match ours.iter().position(|j| j.dir == dir) {
        Some(i) => i,
        None => {
            let file = create(&dir)?;
            ours.push(Journal {
                dir: dir.clone(),
                file,
                open: HashSet::new(),
            });
            ours.len() - 1
        }
    };
    let j = &mut ours[at];
    let line = format!("+ {id} {} {key}\n", endpoint_of(remote));
    append(&mut j.file, &dir, &line)?;
    j.open.insert(id.to_string());
    Ok(())
}

/// Upload `id` was completed or aborted: its entry goes (the whole file is emptied once
/// nothing is open, so the journal of a long-lived receiver does not grow).
pub(super) fn forget(remote: &Remote, id: &str) {
    let dir = dir_of(remote);
    let mut ours = OURS.lock().unwrap_or_else(|p| p.into_inner());
    let Some(j) = ours.iter_mut().find(|j| j.dir == dir) else {
        return;
    };
    j.open.remove(id);
    let result = if j.open.is_empty() {
        j.file
            .set_len(0)
            .and_then(|()| j.file.sync_data())
            .map_err(local("empty the multipart journal in", &dir))
    } else {
        append(&mut j.file, &dir, &format!("- {id}\n"))
    };
    if let Err(e) = result {
        // The entry stays: the next uploading command aborts an upload that is already
        // complete or gone, which the store answers with "no such upload".
        tracing::warn!("{e}");
    }
}

/// An upload a journal lists as open.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    id: String,
    endpoint: String,
    key: String,
}

/// The uploads `text` lists as open, in order. A line cut short by a crash is ignored (an
/// upload line that never reached the disk is the case the lifecycle rule covers).
fn parse(text: &[u8]) -> Vec<Entry> {
    let mut open: Vec<Entry> = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let mut parts = line.splitn(4, ' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("+"), Some(id), Some(endpoint), Some(key)) if !key.is_empty() => {
                open.push(Entry {
                    id: id.into(),
                    endpoint: endpoint.into(),
                    key: key.into(),
                })
            }
            (Some("-"), Some(id), None, None) => open.retain(|e| e.id != id),
            _ => {}
        }
    }
    open
}

/// What [`take_over`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TakenOver {
    /// Journals of dead processes read and removed.
    pub journals: usize,
    /// Uploads aborted (or found gone already).
    pub aborted: usize,
    /// Journals left for a later try (the store was unreachable, or they hold uploads of
    /// another endpoint with the same bucket name).
    pub kept: usize,
}

/// Aborts the multipart uploads that dead processes left open in `remote`'s bucket (see
/// the module documentation). Never fails the command: trouble is logged and the journal
/// kept for the next one.
pub async fn take_over(remote: &Remote) -> TakenOver {
    let dir = dir_of(remote);
    let mut done = TakenOver::default();
    let Ok(entries) = fs::read_dir(&dir) else {
        return done;
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(SUFFIX) && !n.starts_with('.'))
        })
        .collect();
    paths.sort();
    for path in paths {
        match take_one(remote, &path).await {
            Ok(None) => {}
            Ok(Some((aborted, removed))) => {
                done.aborted += aborted;
                match removed {
                    true => done.journals += 1,
                    false => done.kept += 1,
                }
            }
            Err(e) => {
                tracing::warn!("multipart journal \"{}\": {e}", path.display());
                done.kept += 1;
            }
        }
    }
    if done.journals > 0 {
        let _ = sync_dir(&dir);
    }
    if done.aborted > 0 || done.kept > 0 {
        tracing::info!(
            "aborted {} multipart upload(s) left open in {} by processes that are gone{}",
            done.aborted,
            remote.url(),
            match done.kept {
                0 => String::new(),
                n => format!(" ({n} journal(s) in \"{}\" kept for later)", dir.display()),
            }
        );
    }
    done
}

/// One journal: `None` when its owner lives (or it vanished), else how many uploads were
/// aborted and whether the journal was removed.
async fn take_one(remote: &Remote, path: &Path) -> Result<Option<(usize, bool)>, RemoteError> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RemoteError::local("open", path, e)),
    };
    if !try_lock(&file).map_err(local("lock", path))? {
        return Ok(None);
    }
    // Another command may have taken it over and removed it between our open and lock.
    let same = match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    };
    if !same {
        return Ok(None);
    }
    let mut text = Vec::new();
    (&file)
        .read_to_end(&mut text)
        .map_err(local("read", path))?;
    let mine = endpoint_of(remote);
    let mut aborted = 0;
    let mut left = false;
    for entry in parse(&text) {
        if entry.endpoint != mine {
            left = true;
            continue;
        }
        match remote.abort_upload(&entry.key, &entry.id).await {
            Ok(()) => {
                tracing::info!(
                    "aborted the multipart upload of \"{}\" left open by a process that is gone",
                    entry.key
                );
                aborted += 1;
            }
            Err(e) if matches!(e.kind(), Some(Kind::Unreachable | Kind::Other)) => {
                // Perhaps only for now: the journal stays for the next command.
                tracing::warn!("{e}");
                left = true;
            }
            Err(e) => {
                // A refusal will not change by asking again.
                tracing::warn!(
                    "{e}; the upload stays until the bucket's lifecycle rule \
                     (AbortIncompleteMultipartUpload) removes it"
                );
            }
        }
    }
    if left {
        return Ok(Some((aborted, false)));
    }
    fs::remove_file(path).map_err(local("remove", path))?;
    Ok(Some((aborted, true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_open_until_their_end_is_written() {
        let text = b"+ a1 http://h:1 repo/backups/x/data/base/1/16384\n\
                     + b2 http://h:1 repo/wal/000000010000000000000003\n\
                     - a1\n\
                     + c3 - key with spaces/ok\n\
                     + d4 http://h:1 cut-sh";
        let open = parse(text);
        let ids: Vec<&str> = open.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["b2", "c3", "d4"]);
        assert_eq!(open[1].key, "key with spaces/ok");
        assert_eq!(open[1].endpoint, "-");
        // A torn last line: with no key it is no entry at all.
        assert!(parse(b"+ e5 http://h:1").is_empty());
        assert!(parse(b"").is_empty());
    }

    #[test]
    fn a_held_journal_cannot_be_locked_again_and_a_released_one_can() {
        let dir = tempfile::tempdir().unwrap();
        let held = create(dir.path()).unwrap();
        let path = dir.path().join(format!("{}{SUFFIX}", std::process::id()));
        assert!(path.is_file());
        // flock belongs to the open file: another open of the same file, even in this
        // process, does not get it while the first holds it.
        let other = File::open(&path).unwrap();
        assert!(!try_lock(&other).unwrap());
        drop(held);
        assert!(try_lock(&other).unwrap());
        // A second journal of the same pid takes another name instead of replacing it.
        let _again = create(dir.path()).unwrap();
        assert!(dir
            .path()
            .join(format!("{}-1{SUFFIX}", std::process::id()))
            .is_file());
    }
}
