//! What interrupted backups leave behind, and when it is safe to call it garbage.
//!
//! A backup exists only once its `backup.json` does (see the module above). Until then its
//! files sit where nothing lists or restores them: in a local repository under
//! `backups/.<id>.partial/` (renamed to `<id>/` at the end), in object storage under
//! `backups/<id>/` (the catalog entry goes up last). A backup killed mid-way leaves them
//! there for good; one that is still running looks the same from outside, except that it
//! keeps writing. So the rule is age: an incomplete backup whose newest file (object) is
//! older than a grace period is garbage; a younger one may be running and is never touched.
//!
//! The grace must be longer than any quiet spell of a running backup: the checkpoint it
//! waits for at the start (a spread one takes up to `checkpoint_timeout`, 5 min by
//! default, or whatever the server is set to), a large file going up as a multipart
//! upload (the object appears only when it completes: 1 GiB at 1 MB/s is 18 min), the
//! wait for the WAL at the end. [`DEFAULT_GRACE`] is 6 hours, far beyond those; garbage
//! costs only room until the next `expire` after that.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::CATALOG_FILE;

/// How old the newest file of an incomplete backup must be before `expire` removes it.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(6 * 3600);

/// An incomplete backup: files under a backup's name, without its catalog entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncompleteBackup {
    /// The backup id (the start time its name carries).
    pub id: String,
    /// Where its files are, relative to `backups/`: `.<id>.partial` or `<id>`.
    pub dir: String,
    pub files: u64,
    pub bytes: u64,
    /// When its newest file (or, locally, directory) was last written.
    pub newest: SystemTime,
}

impl IncompleteBackup {
    /// How long ago its newest file was written (zero for a time in the future: a clock
    /// that disagrees is no reason to remove anything).
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.newest).unwrap_or(Duration::ZERO)
    }

    /// Whether it has been quiet for `grace` at `now`: no running backup is that quiet.
    pub fn stale(&self, grace: Duration, now: SystemTime) -> bool {
        self.newest <= now && self.age(now) >= grace
    }
}

/// The incomplete backups in a local `backups/` directory: every `.<id>.partial`
/// directory, and every `<id>` directory without a catalog entry (an `expire` of it that was
/// interrupted: the entry goes first).
pub fn scan_local(backups: &Path) -> std::io::Result<Vec<IncompleteBackup>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(backups)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let dir = entry.file_name().to_string_lossy().into_owned();
        let id = match dir
            .strip_prefix('.')
            .and_then(|d| d.strip_suffix(".partial"))
        {
            Some(id) => id.to_string(),
            None if dir.starts_with('.') => continue,
            None if entry.path().join(CATALOG_FILE).exists() => continue,
            None => dir.clone(),
        };
        let mut found = IncompleteBackup {
            id,
            dir,
            files: 0,
            bytes: 0,
            newest: entry.metadata()?.modified()?,
        };
        walk(&entry.path(), &mut found);
        out.push(found);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

fn walk(dir: &Path, into: &mut IncompleteBackup) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if let Ok(t) = meta.modified() {
            into.newest = into.newest.max(t);
        }
        if meta.is_dir() {
            walk(&entry.path(), into);
        } else {
            into.files += 1;
            into.bytes += meta.len();
        }
    }
}

/// The incomplete backups among the objects under `backups/` of a repository in object
/// storage, given as (name relative to `backups/`, size, last modified): the ids that have
/// objects but no `backup.json`.
pub fn from_objects<'a>(
    objects: impl IntoIterator<Item = (&'a str, u64, SystemTime)>,
) -> Vec<IncompleteBackup> {
    let mut by_id: std::collections::BTreeMap<&str, (bool, IncompleteBackup)> =
        std::collections::BTreeMap::new();
    for (name, size, modified) in objects {
        let Some((id, rest)) = name.split_once('/') else {
            continue;
        };
        let (complete, b) = by_id.entry(id).or_insert_with(|| {
            (
                false,
                IncompleteBackup {
                    id: id.to_string(),
                    dir: id.to_string(),
                    files: 0,
                    bytes: 0,
                    newest: SystemTime::UNIX_EPOCH,
                },
            )
        });
        *complete |= rest == CATALOG_FILE;
        b.files += 1;
        b.bytes += size;
        b.newest = b.newest.max(modified);
    }
    by_id
        .into_values()
        .filter(|(complete, _)| !complete)
        .map(|(_, b)| b)
        .collect()
}

/// `--incomplete-grace`: a number with a unit, `s`, `m`, `h` or `d` (`90m`, `6h`); `0`
/// alone is allowed.
pub fn parse_grace(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("invalid duration \"{text}\": a number and a unit, s, m, h or d (6h)");
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(bad)
}

/// `d` as the largest whole unit that fits (`6h`, `90m`, `45s`).
pub fn grace_text(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_grace("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_grace("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_grace("6h").unwrap(), DEFAULT_GRACE);
        assert_eq!(parse_grace("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_grace("6").is_err());
        assert!(parse_grace("h").is_err());
        assert!(parse_grace("-1h").is_err());
        assert_eq!(grace_text(DEFAULT_GRACE), "6h");
        assert_eq!(grace_text(Duration::from_secs(5400)), "90m");
    }

    #[test]
    fn ids_with_objects_but_no_catalog_entry_are_incomplete() {
        let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let found = from_objects([
            ("20261128T040000Z/backup.json", 10, t(100)),
            ("20261128T040000Z/data/base/1/1259", 8192, t(90)),
            ("20261128T050000Z/data/base/1/1259", 8192, t(200)),
            ("20261128T050000Z/data/base/1/1249", 100, t(250)),
            ("stray", 1, t(300)),
        ]);
        assert_eq!(
            found,
            [IncompleteBackup {
                id: "20261128T050000Z".into(),
                dir: "20261128T050000Z".into(),
                files: 2,
                bytes: 8292,
                newest: t(250),
            }]
        );
        let b = &found[0];
        assert!(b.stale(Duration::from_secs(50), t(300)));
        assert!(!b.stale(Duration::from_secs(51), t(300)));
        // Written "in the future" by a clock ahead of ours: never stale.
        assert!(!b.stale(Duration::ZERO, t(200)));
    }

    #[test]
    fn local_leftovers_are_partial_directories_and_directories_without_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let backups = dir.path();
        fs::create_dir_all(backups.join(".20261128T050000Z.partial/base/1")).unwrap();
        fs::write(
            backups.join(".20261128T050000Z.partial/base/1/1259"),
            [0u8; 100],
        )
        .unwrap();
        fs::create_dir(backups.join("20261128T040000Z")).unwrap();
        fs::write(backups.join("20261128T040000Z").join(CATALOG_FILE), b"{}").unwrap();
        fs::create_dir(backups.join("20261128T030000Z")).unwrap();
        fs::write(backups.join("20261128T030000Z/backup_manifest"), [0u8; 7]).unwrap();
        let found = scan_local(backups).unwrap();
        let summary: Vec<(&str, &str, u64, u64)> = found
            .iter()
            .map(|b| (b.id.as_str(), b.dir.as_str(), b.files, b.bytes))
            .collect();
        assert_eq!(
            summary,
            [
                ("20261128T030000Z", "20261128T030000Z", 1, 7),
                ("20261128T050000Z", ".20261128T050000Z.partial", 1, 100),
            ]
        );
        let now = SystemTime::now();
        assert!(found.iter().all(|b| !b.stale(Duration::from_secs(60), now)));
    }
}
