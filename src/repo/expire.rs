//! `expire`: remove old backups and the WAL only they needed.
//!
//! What is kept, and how it is known:
//! - the newest `keep` backups (by start position), whole;
//! - every WAL segment from the segment holding the oldest kept backup's start LSN on, on
//!   every timeline (a kept backup replays from its start, through any later timeline);
//! - every segment at or after the position of any replication slot that downstreams made
//!   on a relay writing this archive (`wal/.walferry-slots.json`): they may still read it;
//!   a slot that has no position yet holds everything, so no WAL is removed then;
//! - every `.partial` file and each timeline's newest segment (a running receiver or relay
//!   resumes from them), and every `.history` file (tiny, and recovery needs the chain).
//!
//! A backup is removed by deleting its `backup.json` first (from then on it is not a
//! backup, whatever happens next), then its files.
//!
//! What interrupted backups left (`super::incomplete`) goes once its newest file is older
//! than the grace period, and never while a backup holds the repository's backup lock
//! (the one running then is the only one that can have left a young directory: a backup
//! removes older leftovers when it starts).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::incomplete::{scan_local, IncompleteBackup};
use super::{Repo, RepoError, CATALOG_FILE};
use crate::archive::{ArchiveError, ArchiveLock};
use crate::relay::slots::{Slots, SLOTS_FILE};
use crate::wal::{Lsn, WalFileName};

/// What an expire run removed (or, dry, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expired {
    pub backups: Vec<String>,
    pub wal_files: Vec<String>,
    pub bytes: u64,
    /// WAL before this position is no longer needed (`None`: nothing may be removed).
    pub wal_horizon: Option<Lsn>,
    /// Why WAL was held back further than the oldest kept backup, if it was.
    pub held_by: Option<String>,
    /// Leftovers of interrupted backups removed (quiet for the grace period).
    pub incomplete: Vec<IncompleteBackup>,
    /// Incomplete backups kept: written to within the grace period, or while a backup runs.
    pub incomplete_kept: Vec<IncompleteBackup>,
}

/// Keep the newest `keep` backups (at least one) and the WAL they need, and incomplete
/// backups written to within `grace`; remove the rest unless `dry_run`.
pub fn expire(
    repo: &Repo,
    keep: usize,
    dry_run: bool,
    grace: std::time::Duration,
) -> Result<Expired, RepoError> {
    assert!(keep >= 1, "the caller refuses --keep 0");
    let backups = repo.list()?;
    let mut out = Expired::default();
    let cut = backups.len().saturating_sub(keep);
    let (old, kept) = backups.split_at(cut);
    for b in old {
        let dir = repo.backup_dir(&b.id);
        out.bytes += dir_size(&dir);
        if !dry_run {
            remove_backup(&dir)?;
        }
        out.backups.push(b.id.clone());
    }
    expire_incomplete(repo, dry_run, grace, &mut out)?;

    let Some(oldest_kept) = kept.first() else {
        return Ok(out);
    };
    let mut horizon = oldest_kept.start_lsn;
    let wal = repo.wal_dir();
    if wal.join(SLOTS_FILE).exists() {
        let slots = Slots::load(&wal).map_err(|e| RepoError::BadCatalog {
            path: wal.join(SLOTS_FILE),
            reason: e.to_string(),
        })?;
        for s in slots.list() {
            if !s.restart_lsn.is_valid() {
                out.held_by = Some(format!(
                    "relay slot \"{}\" has no position yet, so every segment is kept",
                    s.name
                ));
                return Ok(out);
            }
            if s.restart_lsn < horizon {
                horizon = s.restart_lsn;
                out.held_by = Some(format!("relay slot \"{}\" at {}", s.name, s.restart_lsn));
            }
        }
    }
    out.wal_horizon = Some(horizon);
    let seg_size = oldest_kept.wal_segment_size;
    let mut files = wal_files(&wal, seg_size)?;
    // Each timeline's newest segment stays (a receiver resumes after it).
    files.sort_by_key(|(n, _)| (n.segment.tli, n.segment.segno));
    let newest: std::collections::HashMap<_, _> = files
        .iter()
        .map(|(n, _)| (n.segment.tli, n.segment.segno))
        .collect();
    for (name, path) in files {
        let seg = name.segment;
        let seg_end = Lsn(seg.segno.start_lsn(seg_size).0 + seg_size);
        if name.partial || newest.get(&seg.tli) == Some(&seg.segno) || seg_end > horizon {
            continue;
        }
        out.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if !dry_run {
            fs::remove_file(&path).map_err(|e| RepoError::io("remove", &path, e))?;
        }
        out.wal_files
            .push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    if !dry_run && !out.wal_files.is_empty() {
        super::sync_dir(&wal)?;
    }
    Ok(out)
}

fn wal_files(dir: &Path, seg_size: u64) -> Result<Vec<(WalFileName, PathBuf)>, RepoError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| RepoError::io("read directory", dir, e))? {
        let entry = entry.map_err(|e| RepoError::io("read directory", dir, e))?;
        let name = entry.file_name();
        if let Some(parsed) = name.to_str().and_then(|n| WalFileName::parse(n, seg_size)) {
            out.push((parsed, entry.path()));
        }
    }
    Ok(out)
}

fn remove_backup(dir: &Path) -> Result<(), RepoError> {
    let catalog = dir.join(CATALOG_FILE);
    fs::remove_file(&catalog).map_err(|e| RepoError::io("remove", &catalog, e))?;
    super::sync_dir(dir)?;
    fs::remove_dir_all(dir).map_err(|e| RepoError::io("remove", dir, e))
}

/// Removes (unless `dry_run`) the incomplete backups quiet for `grace`, holding the backup
/// lock meanwhile so that no backup starts among them; with the lock held by a backup, none.
fn expire_incomplete(
    repo: &Repo,
    dry_run: bool,
    grace: std::time::Duration,
    out: &mut Expired,
) -> Result<(), RepoError> {
    let dir = repo.backups_dir();
    let found = scan_local(&dir).map_err(|e| RepoError::io("read directory", &dir, e))?;
    if found.is_empty() {
        return Ok(());
    }
    let _lock = match ArchiveLock::acquire(&dir) {
        Ok(lock) => Some(lock),
        Err(ArchiveError::Locked { .. }) => {
            out.incomplete_kept = found;
            return Ok(());
        }
        Err(e) => return Err(RepoError::io("lock", &dir, io::Error::other(e.to_string()))),
    };
    let now = std::time::SystemTime::now();
    for b in found {
        if !b.stale(grace, now) {
            out.incomplete_kept.push(b);
            continue;
        }
        if !dry_run {
            let path = dir.join(&b.dir);
            match fs::remove_dir_all(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(RepoError::io("remove", &path, e))
                }
                _ => {}
            }
        }
        out.bytes += b.bytes;
        out.incomplete.push(b);
    }
    Ok(())
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::{make_private_dir, BackupInfo};
    use std::time::Duration;

    fn publish(repo: &Repo, id: &str, start: u64) {
        let partial = repo.partial_backup_dir(id);
        make_private_dir(&partial).unwrap();
        fs::write(partial.join("data"), vec![0u8; 1000]).unwrap();
        let info = BackupInfo::example(id, start, start + 0x100);
        repo.publish(&partial, &info).unwrap();
    }

    fn segments(repo: &Repo, names: &[&str]) {
        for n in names {
            fs::write(repo.wal_dir().join(n), b"x").unwrap();
        }
    }

    fn wal_left(repo: &Repo) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(repo.wal_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn old_backups_and_the_wal_only_they_need_go() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(dir.path()).unwrap();
        publish(&repo, "b1", 0x100_0028);
        publish(&repo, "b2", 0x300_0028);
        segments(
            &repo,
            &[
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000003",
                "000000010000000000000004.partial",
                "00000002.history",
            ],
        );
        make_private_dir(&repo.partial_backup_dir("b3")).unwrap();

        let dry = expire(&repo, 1, true, Duration::ZERO).unwrap();
        assert_eq!(dry.backups, ["b1"]);
        assert_eq!(dry.wal_files.len(), 2);
        assert_eq!(repo.list().unwrap().len(), 2, "a dry run removes nothing");

        let done = expire(&repo, 1, false, Duration::ZERO).unwrap();
        assert_eq!(
            done,
            Expired {
                bytes: done.bytes,
                ..dry
            }
        );
        assert_eq!(
            repo.list()
                .unwrap()
                .iter()
                .map(|b| b.id.as_str())
                .collect::<Vec<_>>(),
            ["b2"]
        );
        assert_eq!(
            wal_left(&repo),
            [
                "000000010000000000000003",
                "000000010000000000000004.partial",
                "00000002.history"
            ]
        );
        assert!(!repo.partial_backup_dir("b3").exists());
    }

    #[test]
    fn an_incomplete_backup_goes_only_once_quiet_for_the_grace_and_never_while_one_runs() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(dir.path()).unwrap();
        publish(&repo, "b1", 0x100_0028);
        let partial = repo.partial_backup_dir("b2");
        make_private_dir(&partial).unwrap();
        fs::write(partial.join("data"), vec![0u8; 300]).unwrap();

        // Just written: within an hour's grace it may be a backup still running.
        let young = expire(&repo, 1, false, Duration::from_secs(3600)).unwrap();
        assert!(young.incomplete.is_empty());
        assert_eq!(young.incomplete_kept.len(), 1);
        assert!(partial.exists());

        // A backup holding the lock: nothing of it is touched, whatever the grace.
        let running = ArchiveLock::acquire(&repo.backups_dir()).unwrap();
        let held = expire(&repo, 1, false, Duration::ZERO).unwrap();
        assert!(held.incomplete.is_empty());
        assert!(partial.exists());
        drop(running);

        let dry = expire(&repo, 1, true, Duration::ZERO).unwrap();
        assert_eq!(dry.incomplete.len(), 1);
        assert!(partial.exists(), "a dry run removes nothing");
        let done = expire(&repo, 1, false, Duration::ZERO).unwrap();
        assert_eq!(
            (done.incomplete[0].id.as_str(), done.incomplete[0].bytes),
            ("b2", 300)
        );
        assert!(!partial.exists());
        assert_eq!(repo.list().unwrap().len(), 1, "the complete backup stays");
    }

    #[test]
    fn a_relay_slot_holds_wal_back() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::open(dir.path()).unwrap();
        publish(&repo, "b1", 0x100_0028);
        publish(&repo, "b2", 0x300_0028);
        segments(
            &repo,
            &[
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000003",
            ],
        );
        let slots = Slots::load(&repo.wal_dir()).unwrap();
        slots.create("standby", false, None, 1).unwrap();
        let held = expire(&repo, 1, true, Duration::ZERO).unwrap();
        assert!(held.wal_files.is_empty());
        assert!(held.held_by.unwrap().contains("no position"));

        slots.acquire("standby", 1).unwrap();
        slots
            .advance("standby", Lsn(0x200_0010), crate::wal::TimeLineId(1))
            .unwrap();
        slots.release_all(1).unwrap();
        let held = expire(&repo, 1, false, Duration::ZERO).unwrap();
        assert_eq!(held.wal_files, ["000000010000000000000001"]);
        assert!(held.held_by.unwrap().contains("standby"));
    }
}
