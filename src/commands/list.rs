//! `walferry list` and `walferry expire`: what a repository holds, and pruning it.

use super::remote_repo::{RemoteRepo, RepoArg};
use std::path::PathBuf;

use serde::Serialize;

use walferry::inspect::time::iso8601;
use walferry::inspect::{json, Options, Report};
use walferry::repo::expire::expire;
use walferry::repo::incomplete::{self, IncompleteBackup};
use walferry::repo::{BackupInfo, Repo};
use walferry::wal::Lsn;

use super::restore_points::{range_footer, table};
use super::verify::inspect_dir;
use super::Failure;

pub const LIST_AFTER_HELP: &str = "\
Lists the backups of a repository (REPO/backups) with, for each, the range it can be
restored to: from the end of the backup (where it becomes consistent) to the end of the WAL
that follows it in the archive without a gap or damage. Then the archive (REPO/wal): the WAL
range and commits per timeline, its named restore points, and its problems. Reading the
archive decodes all of it (as walferry verify does).

An incomplete backup (files under a backup's name without its backup.json: a backup that
was interrupted, or one still running) is listed as a PROBLEM line with its file count,
bytes and when its newest file was written; walferry expire removes it once that is older
than --incomplete-grace.

--json prints {\"backups\": [...], \"incomplete_backups\": [...], \"timelines\": [...],
\"restore_points\": [...], \"problems\": [...]}; each backup has \"restorable_from\" and
\"restorable_to\" (LSNs); each incomplete one \"id\", \"files\", \"bytes\", \"newest\".";

pub const EXPIRE_AFTER_HELP: &str = "\
Keeps the newest --keep backups and removes older ones, then removes the WAL that only the
removed backups needed: segments that end before the oldest kept backup's start. WAL is
kept, whatever the backups, when a relay writing into REPO/wal has a replication slot that
still needs it (REPO/wal/.walferry-slots.json; a slot with no position yet keeps all WAL);
.partial files, each timeline's newest segment (a receiver resumes after it) and history
files are never removed. --dry-run lists what would go.

Incomplete backups (what an interrupted backup left: REPO/backups/.<id>.partial/ locally,
objects under backups/<id>/ without a backup.json in object storage) are removed once their
newest file is older than --incomplete-grace (default 6h). A backup that is still running
writes files all along, so its newest one is recent; the grace only has to outlast its
quiet spells (a spread checkpoint at its start, a large file whose object appears when its
multipart upload completes, the wait for WAL at its end). In a local repository nothing is
removed while a backup holds the repository's backup lock.";

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// The repository (REPO/wal, REPO/backups)
    #[arg(long = "repo", value_name = "REPO")]
    repo: PathBuf,
    /// Print JSON
    #[arg(long = "json")]
    json: bool,
    /// Print help
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

#[derive(clap::Args, Debug)]
pub struct ExpireArgs {
    /// The repository (REPO/wal, REPO/backups)
    #[arg(long = "repo", value_name = "REPO")]
    repo: PathBuf,
    /// How many of the newest backups to keep (at least 1)
    #[arg(long = "keep", value_name = "N")]
    keep: usize,
    /// Only say what would be removed
    #[arg(long = "dry-run")]
    dry_run: bool,
    /// Remove an incomplete backup once its newest file is this old (30m, 6h, 2d; 0)
    #[arg(
        long = "incomplete-grace",
        value_name = "DURATION",
        default_value = "6h",
        value_parser = incomplete::parse_grace
    )]
    incomplete_grace: std::time::Duration,
    /// Print help
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// Removes expired backups (catalog entry first, so that none is half listed) and WAL
/// files from a repository in object storage.
fn remove_remote(r: &RemoteRepo, backups: &[String], wal_files: &[String]) -> Result<(), Failure> {
    use walferry::repo::{BACKUPS_DIR, CATALOG_FILE, WAL_DIR};
    let fail = |e: walferry::objstore::RemoteError| super::remote_repo::remote_failure(&e);
    let store = r.remote.join(BACKUPS_DIR);
    for id in backups {
        r.block_on(store.delete(&format!("{id}/{CATALOG_FILE}")))
            .map_err(fail)?;
        let objects = r.block_on(store.list(id)).map_err(fail)?;
        for o in objects {
            r.block_on(store.delete(&format!("{id}/{}", o.name)))
                .map_err(fail)?;
        }
    }
    let wal = r.remote.join(WAL_DIR);
    for f in wal_files {
        r.block_on(wal.delete(f)).map_err(fail)?;
    }
    Ok(())
}

fn open(repo: &std::path::Path) -> Result<Repo, Failure> {
    Repo::open(repo).map_err(|e| {
        Failure::new(e.to_string()).with_hint(
            "a repository is a directory; walferry backup and walferry receive -D REPO/wal fill it",
        )
    })
}

#[derive(Serialize)]
struct BackupDoc<'a> {
    #[serde(flatten)]
    info: &'a BackupInfo,
    restorable_from: String,
    restorable_to: Option<String>,
}

/// Where WAL that `b` can replay ends: the end of its timeline's WAL, cut at the first
/// problem after the backup's start.
pub fn restorable_to(b: &BackupInfo, report: &Report) -> Option<Lsn> {
    let end = report
        .timelines
        .iter()
        .filter(|t| t.timeline.0 >= b.start_timeline)
        .map(|t| t.end_lsn)
        .max()?;
    let first_problem = report
        .problems
        .iter()
        .filter_map(|p| p.lsn)
        .filter(|l| *l >= b.start_lsn)
        .min();
    let to = first_problem.map_or(end, |p| p.min(end));
    (to >= b.stop_lsn).then_some(to)
}

pub fn run_list(args: ListArgs, verbose: u8) -> Result<(), Failure> {
    let (repo, unfinished) = match RepoArg::open(&args.repo.to_string_lossy(), "list")? {
        RepoArg::Local(p) => {
            let repo = open(&p)?;
            let dir = repo.backups_dir();
            let found = incomplete::scan_local(&dir).map_err(|e| {
                Failure::new(format!(
                    "could not read directory \"{}\": {e}",
                    dir.display()
                ))
            })?;
            (repo, found)
        }
        RepoArg::Remote(r) => {
            r.sync_catalogs()?;
            let found = r.incomplete_backups()?;
            r.sync_wal()?;
            (open(&r.cache)?, found)
        }
    };
    let backups = repo.list().map_err(|e| Failure::new(e.to_string()))?;
    let report = inspect_dir(&repo.wal_dir(), &Options::default(), "list", verbose)?;
    if args.json {
        let docs: Vec<BackupDoc<'_>> = backups
            .iter()
            .map(|b| BackupDoc {
                info: b,
                restorable_from: b.stop_lsn.to_string(),
                restorable_to: restorable_to(b, &report).map(|l| l.to_string()),
            })
            .collect();
        let doc = serde_json::json!({
            "backups": docs,
            "incomplete_backups": unfinished.iter().map(|b| serde_json::json!({
                "id": b.id,
                "files": b.files,
                "bytes": b.bytes,
                "newest": rfc3339(b.newest),
            })).collect::<Vec<_>>(),
            "timelines": json::wal_info(&report.timelines),
            "restore_points": json::restore_points(&report.restore_points),
            "problems": report.problems.iter().map(json::problem).collect::<Vec<_>>(),
        });
        println!("{}", json::to_string(&doc));
        return Ok(());
    }
    let mut out = String::new();
    if backups.is_empty() {
        out.push_str("no backups\n");
    } else {
        let rows: Vec<[String; 8]> = backups
            .iter()
            .map(|b| {
                [
                    b.id.clone(),
                    b.label.clone(),
                    b.stop_time.clone(),
                    format!("{}", b.start_timeline),
                    human(b.size),
                    format!("{} {}", human(b.stored_size), b.compression),
                    b.stop_lsn.to_string(),
                    restorable_to(b, &report)
                        .map_or("(WAL missing)".to_string(), |l| l.to_string()),
                ]
            })
            .collect();
        out.push_str(&table(
            [
                "BACKUP",
                "LABEL",
                "ENDED",
                "TLI",
                "SIZE",
                "STORED",
                "RESTORABLE FROM",
                "TO",
            ],
            &rows,
        ));
    }
    out.push('\n');
    out.push_str(&range_footer(&report.timelines));
    if !report.restore_points.is_empty() {
        out.push_str("Restore points:\n");
        for p in &report.restore_points {
            out.push_str(&format!(
                "  {} at {} ({}, timeline {})\n",
                p.name,
                p.lsn,
                iso8601(p.time),
                p.timeline
            ));
        }
    }
    let now = std::time::SystemTime::now();
    for b in &unfinished {
        out.push_str(&format!("PROBLEM {}\n", describe_incomplete(b, now)));
    }
    for p in &report.problems {
        out.push_str(&format!("PROBLEM {p}\n"));
    }
    print!("{out}");
    Ok(())
}

pub fn run_expire(args: ExpireArgs) -> Result<(), Failure> {
    if args.keep == 0 {
        return Err(Failure::usage(
            "--keep must be at least 1: expire never removes the last backup",
            "expire",
        ));
    }
    let (repo, remote) = match RepoArg::open(&args.repo.to_string_lossy(), "expire")? {
        RepoArg::Local(p) => (open(&p)?, None),
        RepoArg::Remote(r) => {
            r.sync_catalogs()?;
            r.sync_wal()?;
            (open(&r.cache)?, Some(r))
        }
    };
    let grace = args.incomplete_grace;
    // In object storage: what to remove is decided on the local copy, then removed from
    // the store (backups first: a backup without its WAL must not stay listed), then from
    // the copy.
    let mut done = expire(&repo, args.keep, args.dry_run || remote.is_some(), grace)
        .map_err(|e| Failure::new(e.to_string()))?;
    if let Some(r) = &remote {
        if !args.dry_run {
            remove_remote(r, &done.backups, &done.wal_files)?;
            expire(&repo, args.keep, false, grace).map_err(|e| Failure::new(e.to_string()))?;
        }
        // The store's incomplete backups, not the copy's (which holds only catalog entries
        // and what a backup on this host has yet to upload).
        let now = std::time::SystemTime::now();
        let (stale, young): (Vec<_>, Vec<_>) = r
            .incomplete_backups()?
            .into_iter()
            .partition(|b| b.stale(grace, now));
        done.incomplete.clear();
        done.incomplete_kept = young;
        for b in stale {
            if args.dry_run || r.remove_incomplete(&b.id)? {
                done.bytes += b.bytes;
                done.incomplete.push(b);
            }
        }
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for b in &done.backups {
        println!("{verb} backup {b}");
    }
    for f in &done.wal_files {
        println!("{verb} wal/{f}");
    }
    for b in &done.incomplete {
        println!(
            "{verb} incomplete backup {} ({} file(s), {})",
            b.id,
            b.files,
            human(b.bytes)
        );
    }
    let now = std::time::SystemTime::now();
    for b in &done.incomplete_kept {
        println!(
            "kept incomplete backup {}: its newest file was written {} ago, and it may \
             still be running (--incomplete-grace {})",
            b.id,
            incomplete::grace_text(std::time::Duration::from_secs(b.age(now).as_secs())),
            incomplete::grace_text(grace)
        );
    }
    if let Some(why) = &done.held_by {
        println!("WAL kept back: {why}");
    }
    println!(
        "{verb} {} backup(s) and {} WAL file(s), {}",
        done.backups.len(),
        done.wal_files.len(),
        human(done.bytes)
    );
    Ok(())
}

/// `incomplete backup ID: N file(s), SIZE, newest written TIME (AGE ago): ...`
fn describe_incomplete(b: &IncompleteBackup, now: std::time::SystemTime) -> String {
    format!(
        "incomplete backup {}: {} file(s), {}, newest written {} ({} ago): interrupted, or \
         still running; walferry expire removes it once that is older than \
         --incomplete-grace",
        b.id,
        b.files,
        human(b.bytes),
        rfc3339(b.newest),
        incomplete::grace_text(std::time::Duration::from_secs(b.age(now).as_secs()))
    )
}

/// RFC 3339 in UTC, to the second.
fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (y, mo, d, h, mi, s) = walferry::inspect::time::utc_parts(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
