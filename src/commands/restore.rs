//! `walferry restore`: a data directory from a backup plus the archive, to any point.

use std::path::{Path, PathBuf};
use std::time::Instant;

use walferry::inspect::Options;
use walferry::objstore::stream::{RemoteBackup, IN_FLIGHT};
use walferry::repo::Repo;
use walferry::restore::layout::{lay_out, lay_out_from, LayoutOptions};
use walferry::restore::recovery::{self, Settings};
use walferry::restore::{self as plan_mod, parse_time, Target, TargetAction, TargetTimeline};
use walferry::wal::{Lsn, TimeLineId};

use super::remote_repo::{RemoteRepo, RepoArg};
use super::verify::inspect_dir;
use super::Failure;

pub const AFTER_HELP: &str = "\
Chooses the newest backup that is consistent before the target (for --target-name, the
restore point's position in the archive; for --target-time, the backups' end times), checks
that the archive holds the WAL from that backup's start to the target without a gap or a
damaged record, then lays out PGDATA (mode 0700, tablespaces where they were or where
--tablespace-mapping says), and appends to postgresql.auto.conf:
  restore_command = 'walferry archive-get --repo REPO %f %p'
  recovery_target_* (from the flags), recovery_target_timeline, recovery_target_action
and writes recovery.signal (standby.signal with --standby). Start PostgreSQL on it and it
replays the archive to the target. Without a target it recovers to the end of the archive and
promotes. Nothing slow starts before the checks pass: an unknown restore point lists the
names that exist, a time outside the archive gives its range.

Every file written is checked against the manifest's size and CRC-32C, and everything is
durable (one syncfs per file system at the end, directories fsynced) before restore reports
success.

A non-empty PGDATA is refused unless --delta: then files whose size and CRC-32C match the
backup's manifest are kept and only the others are written (a failed primary whose disk
survived is rebuilt fast), and files the backup does not have are removed. Every file in
place is read to check it (content, not modification times), in pieces on all --jobs threads.

Run it as the user PostgreSQL runs as (the files are created owned by the invoking user).
From an s3:// repository the backup's objects are streamed into PGDATA (--jobs or 32
downloads at once, whichever is more), the archive is checked on a copy in the cache
directory of only the WAL it can use (the segments from the start of the oldest backup it
may choose on, and the history files), and restore_command gets --cache naming that copy, so that recovery takes its
segments from there instead of downloading them again: the server must be able to read
it, which it can when restore ran as the server's user.

Examples:
  walferry restore --repo /srv/repo --pgdata /var/lib/postgresql/15/main
  walferry restore --repo /srv/repo --pgdata /srv/pitr --target-name before_migration \\
      --target-action pause
  walferry restore --repo /srv/repo --pgdata /srv/db1 --standby --delta \\
      --primary-conninfo 'host=db2 user=replicator'";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The repository (REPO/wal, REPO/backups)
    #[arg(long = "repo", value_name = "REPO")]
    repo: String,
    /// The data directory to lay out (created mode 0700)
    #[arg(short = 'D', long = "pgdata", value_name = "DIR")]
    pgdata: PathBuf,
    /// Backup to restore: an id from walferry list, or latest (the newest that fits the target)
    #[arg(long = "backup", value_name = "ID", default_value = "latest")]
    backup: String,
    /// Stop at this named restore point (pg_create_restore_point)
    #[arg(long = "target-name", value_name = "NAME", group = "target")]
    target_name: Option<String>,
    /// Stop at this time, with its zone: '2026-11-27 19:53:00+00'
    #[arg(long = "target-time", value_name = "TIME", group = "target")]
    target_time: Option<String>,
    /// Stop at this WAL position (X/X)
    #[arg(long = "target-lsn", value_name = "LSN", group = "target")]
    target_lsn: Option<String>,
    /// Stop at the commit of this transaction id
    #[arg(long = "target-xid", value_name = "XID", group = "target")]
    target_xid: Option<u32>,
    /// Stop as soon as the backup is consistent
    #[arg(long = "target-immediate", group = "target")]
    target_immediate: bool,
    /// Timeline to recover along: latest, current, or a number
    #[arg(long = "target-timeline", value_name = "TLI", default_value = "latest")]
    target_timeline: String,
    /// What to do at the target: promote, pause or shutdown
    #[arg(
        long = "target-action",
        value_name = "ACTION",
        default_value = "promote"
    )]
    target_action: String,
    /// Restore as a standby (standby.signal)
    #[arg(long = "standby")]
    standby: bool,
    /// With --standby: the primary to stream from once the archive is replayed
    #[arg(
        long = "primary-conninfo",
        value_name = "CONNINFO",
        requires = "standby"
    )]
    primary_conninfo: Option<String>,
    /// Keep files of a non-empty PGDATA that match the backup; write only the others
    #[arg(long = "delta")]
    delta: bool,
    /// Put tablespace OLDDIR (its location when backed up, or its oid) at NEWDIR
    #[arg(long = "tablespace-mapping", value_name = "OLDDIR=NEWDIR")]
    tablespace_mapping: Vec<String>,
    /// Threads that decompress and write (or, with --delta, check) files [default: the
    /// number of CPUs, at most 4]
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    jobs: Option<usize>,
    /// Print help
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

impl Args {
    fn target(&self) -> Result<Target, String> {
        Ok(if let Some(n) = &self.target_name {
            Target::Name(n.clone())
        } else if let Some(t) = &self.target_time {
            Target::Time(t.clone(), parse_time(t)?)
        } else if let Some(l) = &self.target_lsn {
            Target::Lsn(l.parse::<Lsn>().map_err(|e| e.to_string())?)
        } else if let Some(x) = self.target_xid {
            Target::Xid(x)
        } else if self.target_immediate {
            Target::Immediate
        } else {
            Target::Latest
        })
    }

    fn timeline(&self) -> Result<TargetTimeline, String> {
        match self.target_timeline.as_str() {
            "latest" => Ok(TargetTimeline::Latest),
            "current" => Ok(TargetTimeline::Current),
            n => match n.parse::<u32>() {
                Ok(n) if n > 0 => Ok(TargetTimeline::Id(TimeLineId(n))),
                _ => Err(format!(
                    "invalid --target-timeline \"{n}\": latest, current or a timeline number"
                )),
            },
        }
    }

    fn action(&self) -> Result<TargetAction, String> {
        match self.target_action.as_str() {
            "promote" => Ok(TargetAction::Promote),
            "pause" => Ok(TargetAction::Pause),
            "shutdown" => Ok(TargetAction::Shutdown),
            a => Err(format!(
                "invalid --target-action \"{a}\": promote, pause or shutdown"
            )),
        }
    }
}

/// A `.partial` segment that disappeared between listing and reading: completed by a live
/// receiver, not damage.
fn vanished_partial(p: &walferry::inspect::Problem) -> bool {
    p.file.as_deref().is_some_and(|f| f.ends_with(".partial"))
        && p.message.starts_with("could not open")
        && p.message.contains("No such file")
}

pub fn run(args: Args, verbose: u8) -> Result<(), Failure> {
    let usage = |m: String| Failure::usage(m, "restore");
    // The command line is checked before anything slow (again where it is used).
    args.target().map_err(usage)?;
    args.timeline().map_err(usage)?;
    args.action().map_err(usage)?;
    if args.jobs == Some(0) {
        return Err(usage("--jobs must be at least 1".into()));
    }
    let started = Instant::now();
    check_pgdata(&args.pgdata, args.delta)?;
    let remote = match RepoArg::open(&args.repo, "restore")? {
        RepoArg::Local(p) => {
            let p = absolute(&p)?;
            Repo::open(&p).map_err(|e| Failure::new(e.to_string()))?;
            return restore_from(&args, &p, &p.to_string_lossy(), None, verbose, started);
        }
        RepoArg::Remote(r) => r,
    };
    eprintln!(
        "walferry: reading {} through the local copy in \"{}\"",
        remote.url,
        remote.cache.display()
    );
    remote.sync_catalogs()?;
    // Only the WAL from the oldest backup this restore may choose on: nothing older can
    // be replayed (restore points, commit times and the checks all work on that range).
    let cache = remote.cache.clone();
    let catalog = Repo::open(&cache)
        .and_then(|r| r.list())
        .map_err(|e| Failure::new(e.to_string()))?;
    match oldest_candidate(&catalog, &args.backup) {
        Some(b) => {
            eprintln!(
                "walferry: copying the archive from backup {}'s start ({}) on",
                b.id, b.start_lsn
            );
            remote.sync_wal_from(b.start_lsn, b.wal_segment_size)?;
        }
        // No such backup: say which there are before anything slow.
        None if args.backup != "latest" => {
            Repo::open(&cache)
                .and_then(|r| r.find(&args.backup))
                .map_err(|e| Failure::new(e.to_string()))?;
        }
        None => {
            remote.sync_wal()?;
        }
    }
    restore_from(
        &args,
        &cache,
        &remote.remote.portable_url().full(),
        Some(&remote),
        verbose,
        started,
    )
}

/// The backup with the lowest start among those `wanted` (an id, or `latest`: any) may
/// choose: WAL before its start is of no use to the restore.
fn oldest_candidate<'a>(
    backups: &'a [walferry::repo::BackupInfo],
    wanted: &str,
) -> Option<&'a walferry::repo::BackupInfo> {
    backups
        .iter()
        .filter(|b| wanted == "latest" || b.id == wanted)
        .min_by_key(|b| b.start_lsn)
}

/// The restore proper, from the repository (or local copy of one) at `repo_path`;
/// `restore_command` reads `repo_arg`.
fn restore_from(
    args: &Args,
    repo_path: &Path,
    repo_arg: &str,
    remote: Option<&RemoteRepo>,
    verbose: u8,
    started: Instant,
) -> Result<(), Failure> {
    let usage = |m: String| Failure::usage(m, "restore");
    let target = args.target().map_err(usage)?;
    let timeline = args.timeline().map_err(usage)?;
    let action = args.action().map_err(usage)?;
    let repo = Repo::open(repo_path).map_err(|e| Failure::new(e.to_string()))?;

    let backups = repo.list().map_err(|e| Failure::new(e.to_string()))?;
    let find_xid = match target {
        Target::Xid(x) => Some(x),
        _ => None,
    };
    let options = Options {
        find_xid,
        ..Options::default()
    };
    let mut report = inspect_dir(
        &repo.wal_dir(),
        &options,
        "restore: checking the archive",
        verbose,
    )?;
    // A receiver or relay still archiving completes its .partial segment by renaming it: a
    // file listed a moment ago may be gone when read. Look again, a few times.
    for _ in 0..5 {
        if !report.problems.iter().any(vanished_partial) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        report = inspect_dir(
            &repo.wal_dir(),
            &options,
            "restore: checking the archive again",
            verbose,
        )?;
    }
    let plan = plan_mod::plan(&backups, &args.backup, &target, &report)
        .map_err(|e| Failure::new(e.to_string()))?;
    let backup = &plan.backup;
    eprintln!(
        "walferry: restoring backup {} (ended at {}, {}) into \"{}\"",
        backup.id,
        backup.stop_lsn,
        backup.stop_time,
        args.pgdata.display()
    );

    let tablespace_map = tablespace_map(&args.tablespace_mapping, backup)?;
    // A fresh restore that fails is undone, so that no half-written data directory is left
    // looking like one; a failed delta leaves the copy for the next --delta to finish.
    let existed = args.pgdata.exists();
    let fresh = !existed || std::fs::read_dir(&args.pgdata).is_ok_and(|mut d| d.next().is_none());
    let tablespaces_before = tablespace_dirs(backup, &tablespace_map);
    let mut opts = LayoutOptions {
        delta: args.delta,
        tablespace_map: tablespace_map.clone(),
        // More threads than CPUs only take turns.
        threads: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4))),
    };
    let stats = match remote {
        None => lay_out(&repo, backup, &args.pgdata, &opts),
        Some(remote) => {
            // Each worker streams its objects from the store into PGDATA; they wait on
            // round trips more than on the CPU, so more of them than --jobs.
            opts.threads = opts.threads.max(IN_FLIGHT);
            let source = RemoteBackup::new(
                &remote.remote,
                &backup.id,
                remote.runtime().handle().clone(),
            );
            let stats = lay_out_from(&source, backup, &args.pgdata, &opts);
            let (objects, bytes) = source.fetched();
            eprintln!(
                "walferry: streamed {objects} object(s), {bytes} bytes, of backup {} from {} \
                 into \"{}\"",
                backup.id,
                remote.url,
                args.pgdata.display()
            );
            stats
        }
    };
    let stats = stats.map_err(|e| {
        let failure = Failure::new(e.to_string());
        if fresh {
            let removed = std::fs::remove_dir_all(&args.pgdata).is_ok()
                && (!existed || std::fs::create_dir(&args.pgdata).is_ok());
            let tablespaces_removed =
                remove_new_tablespaces(backup, &tablespace_map, &tablespaces_before);
            failure.with_hint(if removed && tablespaces_removed {
                "nothing was kept: what the restore had written was removed".to_string()
            } else {
                format!(
                    "the data directory \"{}\" is incomplete: remove it before starting again",
                    args.pgdata.display()
                )
            })
        } else {
            failure.with_hint(format!(
                "the data directory \"{}\" is incomplete (no recovery settings were written, \
                 do not start it): run the same restore with --delta to finish it",
                args.pgdata.display()
            ))
        }
    })?;

    let exe = std::env::current_exe()
        .map_err(|e| Failure::new(format!("could not find the walferry program: {e}")))?;
    let settings = Settings {
        restore_command: match remote {
            // The archive checked above is in the cache: recovery takes its segments from
            // there rather than downloading them again.
            Some(r) => recovery::archive_get_command_cached(
                &exe,
                repo_arg,
                &absolute(&r.cache.join(walferry::repo::WAL_DIR))?,
            ),
            None => recovery::archive_get_command(&exe, repo_arg),
        },
        target: plan.target.clone(),
        timeline,
        action,
        standby: args.standby,
        primary_conninfo: args.primary_conninfo.clone(),
    };
    let signal = recovery::write(&args.pgdata, &settings).map_err(|e| {
        Failure::new(format!(
            "could not write the recovery settings into \"{}\": {e}",
            args.pgdata.display()
        ))
    })?;
    eprintln!(
        "walferry: {} files written ({} MB), {} kept ({} MB) in {:.1} s; {} written",
        stats.files_written,
        stats.bytes_written / 1_000_000,
        stats.files_kept,
        stats.bytes_kept / 1_000_000,
        started.elapsed().as_secs_f64(),
        signal.file_name().unwrap_or_default().to_string_lossy()
    );
    eprintln!(
        "walferry: start PostgreSQL on it (pg_ctl -D {} start): it replays the archive {}",
        args.pgdata.display(),
        match (&plan.target, plan.target_lsn) {
            (Target::Latest, _) if args.standby => "and then streams as a standby".to_string(),
            (Target::Latest, _) => "to its end and promotes".to_string(),
            (_, Some(lsn)) => format!("to the target (at {lsn}), then {action}s"),
            (_, None) => format!("to the target, then {action}s"),
        }
    );
    Ok(())
}

/// The tablespace version directories (`PG_15_*`) now present in the backup's tablespace
/// locations (mapped or original).
fn tablespace_dirs(backup: &walferry::repo::BackupInfo, map: &[(u32, PathBuf)]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for ts in &backup.tablespaces {
        let location = map
            .iter()
            .find(|(oid, _)| *oid == ts.oid)
            .map_or_else(|| PathBuf::from(&ts.location), |(_, p)| p.clone());
        let Ok(entries) = std::fs::read_dir(&location) else {
            continue;
        };
        out.extend(
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("PG_15_"))
                .map(|e| e.path()),
        );
    }
    out
}

/// After a failed fresh restore: remove the tablespace version directories it made (those
/// not in `before`); true when they are all gone.
fn remove_new_tablespaces(
    backup: &walferry::repo::BackupInfo,
    map: &[(u32, PathBuf)],
    before: &[PathBuf],
) -> bool {
    tablespace_dirs(backup, map)
        .into_iter()
        .filter(|d| !before.contains(d))
        .all(|d| std::fs::remove_dir_all(d).is_ok())
}

fn absolute(p: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(p)
        .map_err(|e| Failure::new(format!("invalid path \"{}\": {e}", p.display())))
}

/// A non-empty data directory is refused before anything slow, unless `delta`.
fn check_pgdata(pgdata: &Path, delta: bool) -> Result<(), Failure> {
    let Ok(mut entries) = std::fs::read_dir(pgdata) else {
        return Ok(());
    };
    if delta || entries.next().is_none() {
        return Ok(());
    }
    Err(Failure::new(format!(
        "data directory \"{}\" is not empty",
        pgdata.display()
    ))
    .with_hint(
        "restore into an empty or missing directory, or add --delta to keep the files that \
         match the backup and rewrite the rest (the server must be stopped)",
    ))
}

/// `--tablespace-mapping OLDDIR=NEWDIR`, OLDDIR a location the backup recorded or an oid.
fn tablespace_map(
    mappings: &[String],
    backup: &walferry::repo::BackupInfo,
) -> Result<Vec<(u32, PathBuf)>, Failure> {
    let mut out = Vec::new();
    for m in mappings {
        let (old, new) = m.split_once('=').ok_or_else(|| {
            Failure::usage(
                format!("invalid --tablespace-mapping \"{m}\": expected OLDDIR=NEWDIR"),
                "restore",
            )
        })?;
        let ts = backup
            .tablespaces
            .iter()
            .find(|t| t.location == old || t.oid.to_string() == old)
            .ok_or_else(|| {
                let known: Vec<String> = backup
                    .tablespaces
                    .iter()
                    .map(|t| format!("{} (oid {})", t.location, t.oid))
                    .collect();
                Failure::new(format!(
                    "backup {} has no tablespace \"{old}\"; it has: {}",
                    backup.id,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ))
            })?;
        out.push((ts.oid, absolute(Path::new(new))?));
    }
    Ok(out)
}
