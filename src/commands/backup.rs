//! `walferry backup`: take a base backup into a repository (see `walferry::backup`).

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use walferry::archive::CompressionSpec;
use walferry::backup::{self, BackupOptions, Checkpoint, Phase, Progress};
use walferry::repo::Repo;

use super::receive::{connection_params, wait_for_stop_signal};
use super::remote_repo::{RemoteRepo, RepoArg};
use super::{current_thread_runtime, ConnArgs, Failure};

pub const AFTER_HELP: &str = "\
Takes a base backup with the replication protocol's BASE_BACKUP (PostgreSQL 15 or later), or
by reading the data directory itself (--pgdata, below), into REPO/backups/<id>/, <id> being
the start time in UTC (e.g. 20261127T195300Z), and prints the id on stdout. Each file of the
data directory and of every tablespace is stored on its own, compressed with -Z (none, lz4,
zstd[:LEVEL], gzip[:LEVEL]) in independent 1 MiB pieces on --jobs threads as the stream
arrives (one LZ4 frame of 1 MiB blocks, or a zstd frame or gzip member per MiB: lz4 -d, zstd
-d and gzip -d read them); the server's backup_manifest is kept as sent (pg_verifybackup
reads it), every stored file is checked against its size and CRC-32C there, and all are made
durable (one syncfs of the repository's file system, then each directory fsynced) before the
backup is kept.

With --pgdata DIR, walferry reads the files itself instead (as pgBackRest does with its
pg1-path): it opens an ordinary SQL session with -d (on -d's dbname, else postgres; the user
needs a superuser's rights or EXECUTE on pg_backup_start and pg_backup_stop), checks that
DIR's global/pg_control has that server's system identifier, runs pg_backup_start() there,
copies DIR and each tablespace that pg_tblspc/ links to with BASE_BACKUP's exclusions (no
WAL, no unlogged relation but its init fork, no temporary files or relations, no
postmaster.pid ...), runs pg_backup_stop() and writes its backup_label and a backup_manifest
in PostgreSQL's format (pg_verifybackup reads it) from the CRC-32C of each stored file. DIR
must be on this host and readable by walferry (run it as the data directory's owner, or a
member of its group on a cluster initialised with --allow-group-access). The server's
walsender then does no work for the backup: use it whenever walferry runs beside the
server; without it (walferry on another host), the files come over the replication
protocol. The SQL session must last the whole backup: if it ends (pg_terminate_backend, a
restart), PostgreSQL aborts the backup and walferry fails at once. --max-rate limits
walferry's reading then.

A backup restores only with the WAL from its start to its stop position. walferry does not put
WAL in the backup: run `walferry receive -D REPO/wal -d ...` for the same server. backup warns
when REPO/wal does not look fed, and at the end waits (--wal-timeout, default 60 s) until
REPO/wal holds the WAL up to the backup's stop position; if it does not, the backup is not
kept (exit 1). --no-wait-wal skips that check (backup.json then says \"wal_checked\": false).

A backup exists once its backup.json is written and its directory renamed into place: an
error or SIGINT/SIGTERM removes the incomplete directory; one left by a crash is removed by the
next backup. One backup at a time per repository.

On a terminal, a progress line shows bytes, rate and the time left (from the server's size
estimate); -v logs each step.

Examples:
  walferry backup --repo /srv/repo -d 'host=db1 user=replicator' -Z zstd
  walferry backup --repo /srv/repo -d 'host=db1 user=replicator' --checkpoint spread --max-rate 50M
  walferry backup --repo /srv/repo -d 'host=/run/postgresql user=postgres' -Z lz4 \
      --pgdata /var/lib/postgresql/15/main

Exit status: 0 when the backup is complete and kept, 1 on any failure (nothing kept), 2 on an
invalid command line.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Repository directory (must exist; its wal/ and backups/ are made when missing)
    #[arg(long = "repo", value_name = "REPO")]
    repo: String,

    /// Checkpoint to start from: fast (at once) or spread (as a scheduled one)
    #[arg(
        short = 'c',
        long = "checkpoint",
        value_name = "fast|spread",
        default_value = "fast"
    )]
    checkpoint: String,

    /// Compress each stored file: none, lz4, zstd[:LEVEL] or gzip[:LEVEL]
    #[arg(
        short = 'Z',
        long = "compress",
        value_name = "METHOD[:DETAIL]",
        default_value = "none"
    )]
    compress: String,

    /// Backup label (shown in backup_label and pg_stat_progress_basebackup)
    #[arg(
        short = 'l',
        long = "label",
        value_name = "LABEL",
        default_value = "walferry backup"
    )]
    label: String,

    /// Limit the server's transfer rate (with --pgdata: walferry's reading), in kB/s, or
    /// with a k or M suffix (32k to 1024M)
    #[arg(short = 'r', long = "max-rate", value_name = "RATE")]
    max_rate: Option<String>,

    /// Seconds to wait at the end for REPO/wal to hold the backup's WAL
    #[arg(long = "wal-timeout", value_name = "SECS", default_value = "60")]
    wal_timeout: u64,

    /// Do not wait for (nor check) the backup's WAL in REPO/wal
    #[arg(long = "no-wait-wal")]
    no_wait_wal: bool,

    /// Read the data files directly from DIR, which must be the data directory of the
    /// server -d connects to, on this host, readable by walferry: much less load on the
    /// server (like pgBackRest's pg1-path). Without it the files come over the replication
    /// protocol (BASE_BACKUP)
    #[arg(long = "pgdata", value_name = "DIR")]
    pgdata: Option<std::path::PathBuf>,

    /// Compression and write threads [default: the number of CPUs, at most 4]
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    jobs: Option<usize>,

    #[command(flatten)]
    conn: ConnArgs,
}

pub fn run(args: Args, verbose: u8) -> Result<(), Failure> {
    let usage = |m: String| Failure::usage(m, "backup");
    let checkpoint = match args.checkpoint.as_str() {
        "fast" => Checkpoint::Fast,
        "spread" => Checkpoint::Spread,
        other => {
            return Err(usage(format!(
                "invalid checkpoint argument \"{other}\", must be \"fast\" or \"spread\""
            )))
        }
    };
    let compression = args
        .compress
        .parse::<CompressionSpec>()
        .map_err(|e| usage(e.to_string()))?;
    let max_rate_kb = args
        .max_rate
        .as_deref()
        .map(parse_max_rate)
        .transpose()
        .map_err(usage)?;
    let threads = match args.jobs {
        Some(0) => return Err(usage("--jobs must be at least 1".into())),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
    };
    let (root, remote) = match RepoArg::open(&args.repo, "backup")? {
        RepoArg::Local(p) => (p, None),
        RepoArg::Remote(r) => {
            r.take_over_uploads();
            (r.cache.clone(), Some(r))
        }
    };
    let repo = Repo::open(&root).map_err(|e| Failure::new(e.to_string()))?;
    take(
        &repo,
        remote.as_deref(),
        args,
        checkpoint,
        compression,
        max_rate_kb,
        threads,
        verbose,
    )
}

/// Takes the backup into `repo`: the repository, or for one in object storage (`remote`)
/// its local copy, from which the complete backup is uploaded and then removed.
#[allow(clippy::too_many_arguments)]
fn take(
    repo: &Repo,
    remote: Option<&RemoteRepo>,
    args: Args,
    checkpoint: Checkpoint,
    compression: CompressionSpec,
    max_rate_kb: Option<u32>,
    threads: usize,
    verbose: u8,
) -> Result<(), Failure> {
    // In object storage, each file goes up as soon as it is stored, and leaves the disk.
    let (hand_over, handed) = match remote {
        Some(_) => {
            let (tx, rx) = tokio::sync::mpsc::channel(2 * threads);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let params = connection_params(&args.conn)?;
    let sql_dbname = params
        .dbname
        .clone()
        .filter(|d| !d.is_empty() && d != "replication")
        .unwrap_or_else(|| "postgres".into());
    let opts = BackupOptions {
        params,
        pgdata: args.pgdata,
        sql_dbname,
        label: args.label,
        checkpoint,
        compression,
        max_rate_kb,
        wal_timeout: (!args.no_wait_wal).then(|| Duration::from_secs(args.wal_timeout)),
        threads,
        hand_over,
    };
    let mut line = ProgressLine::new(std::io::stderr().is_terminal() && verbose == 0);
    let own_rt;
    let rt = match remote {
        Some(r) => r.runtime(),
        None => {
            own_rt = current_thread_runtime()?;
            &own_rt
        }
    };
    // The uploads run as a task of their own (on the store's multi-threaded runtime): the
    // backup's end joins its worker threads, which may be waiting to hand a file over.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let uploads = match (remote, handed) {
        (Some(r), Some(rx)) => Some(rt.spawn(upload_as_stored(
            r.remote.join(walferry::repo::BACKUPS_DIR),
            repo.backups_dir(),
            rx,
            done_rx,
        ))),
        _ => None,
    };
    let result = rt.block_on(async {
        let mut show = |p| line.show(p);
        // The checks of the WAL archive (is it fed, does it reach the stop position) read
        // the local copy, kept up with the store's newest WAL meanwhile.
        let follow = async {
            match remote {
                Some(r) => follow_remote_wal(r, repo).await,
                None => std::future::pending().await,
            }
        };
        let r = tokio::select! {
            r = backup::take(repo, &opts, &mut show) => Some(r),
            _ = wait_for_stop_signal() => None,
            e = follow => Some(Err(e)),
        };
        let _ = done_tx.send(());
        r
    });
    let streamed = match uploads {
        Some(task) => rt.block_on(task).unwrap_or_else(|e| {
            Err(walferry::objstore::RemoteError::local(
                "upload the files of",
                Path::new("the backup"),
                std::io::Error::other(e.to_string()),
            ))
        }),
        None => Ok(()),
    };
    line.clear();
    // An upload that failed stops the backup (its files can no longer be handed over):
    // then the upload's error is the one to report; when the backup failed first, its own.
    let backup_failed_first = matches!(
        &result,
        Some(Err(e)) if !matches!(
            e,
            backup::BackupError::Store(backup::store::StoreError::HandOverGone)
        )
    );
    if let (Some(remote), Err(e), false) = (remote, &streamed, backup_failed_first) {
        remove_partial_copies(repo);
        return Err(super::remote_repo::remote_failure(e).with_hint(format!(
            "the backup's files could not all be uploaded to {}; nothing was kept (the files \
             uploaded are not a backup without their backup.json): take it again",
            remote.url
        )));
    }
    match result {
        None => Err(Failure::new(
            "backup interrupted by a signal; nothing was kept",
        )),
        Some(Err(e)) => {
            if let Err(upload) = &streamed {
                remove_partial_copies(repo);
                tracing::info!("the uploads stopped too: {upload}");
            }
            // Every failure removes the partial backup: say so, so nobody goes looking.
            let mut f = Failure::new(format!("{e}; nothing was kept"));
            f.hint = e.hint();
            Err(f)
        }
        Some(Ok(info)) => {
            if let Some(remote) = remote {
                let uploaded = rt.block_on(upload_backup(remote, repo, &info.id));
                remote.drop_backup_copy(&info.id);
                let _ = std::fs::remove_dir_all(repo.backup_dir(&info.id));
                uploaded.map_err(|e| {
                    super::remote_repo::remote_failure(&e).with_hint(format!(
                        "backup {} was taken but is not in {}: nothing was kept (the files \
                         uploaded are not a backup without their backup.json); take it again",
                        info.id, remote.url
                    ))
                })?;
            }
            tracing::info!(
                "backup {} complete: {} files, {} bytes stored as {} ({}), WAL {} to {}",
                info.id,
                info.files,
                info.size,
                info.stored_size,
                info.compression,
                info.start_lsn,
                info.stop_lsn
            );
            println!("{}", info.id);
            Ok(())
        }
    }
}

/// Keeps the local copy's `wal/` holding the store's newest WAL (the history files and
/// the last few segments), once a second, until the backup ends. Returns only on an error.
async fn follow_remote_wal(remote: &RemoteRepo, repo: &Repo) -> backup::BackupError {
    use walferry::objstore::mirror;
    let wal = remote.remote.join(walferry::repo::WAL_DIR);
    let dir = repo.wal_dir();
    let mut floor: Option<String> = None;
    loop {
        let listed = match &floor {
            None => wal.list("").await,
            Some(f) => wal.list_from("", f, usize::MAX).await,
        };
        let objects = match listed {
            Ok(o) => o,
            Err(e) => return backup::BackupError::Stream(e.to_string()),
        };
        // Segments sort by timeline first; the newest is the highest log/segment part.
        let newest = objects
            .iter()
            .filter(|o| o.name.len() >= 24 && !o.name.contains(".history"))
            .map(|o| o.name[8..24].to_string())
            .max();
        let from = newest.map(|n| {
            let segno = u64::from_str_radix(&n, 16).unwrap_or(0).saturating_sub(2);
            format!("{segno:016X}")
        });
        let keep = |n: &str| {
            n.ends_with(".history")
                || (n.len() >= 24 && from.as_deref().is_some_and(|f| n[8..24] >= *f))
        };
        let wanted: Vec<_> = objects.into_iter().filter(|o| keep(&o.name)).collect();
        tracing::debug!("following {}: {wanted:?}", wal.url());
        if floor.is_none() {
            floor = wanted
                .iter()
                .filter(|o| !o.name.ends_with(".history"))
                .map(|o| o.name.clone())
                .min();
        }
        if let Err(e) = mirror::sync_objects(&wal, "", &dir, &wanted, &keep).await {
            return backup::BackupError::Stream(e.to_string());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Uploads each file of the backup being taken as its worker hands it over (stored and
/// fsynced), under `backups/<id>/`, four at a time, and removes it from the local copy, so
/// the disk holds only the files in flight. Ends once the backup has ended (`done`) and
/// what was handed over is up.
async fn upload_as_stored(
    backups: walferry::objstore::Remote,
    root: std::path::PathBuf,
    mut handed: tokio::sync::mpsc::Receiver<std::path::PathBuf>,
    mut done: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), walferry::objstore::RemoteError> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let upload = |path: std::path::PathBuf| {
        let backups = backups.clone();
        let key = stored_key(&root, &path);
        async move {
            let Some(key) = key else {
                return Ok(());
            };
            // A file handed over last may still be on its way when the backup is published
            // (`.<id>.partial/` renamed to `<id>/`): it is then not where it was, and
            // `upload_backup` sends what the published directory still holds.
            let moved = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
            match backups.put_file_new(&key, &path).await {
                Err(walferry::objstore::RemoteError::Local { source, .. }) if moved(&source) => {
                    return Ok(())
                }
                r => r?,
            };
            match std::fs::remove_file(&path) {
                Err(e) if moved(&e) => Ok(()),
                r => r.map_err(|e| walferry::objstore::RemoteError::local("remove", &path, e)),
            }
        }
    };
    let mut inflight = FuturesUnordered::new();
    let mut ended = false;
    loop {
        if inflight.len() >= 4 {
            if let Some(r) = inflight.next().await {
                r?;
            }
            continue;
        }
        tokio::select! {
            path = handed.recv() => match path {
                Some(p) => inflight.push(upload(p)),
                None => break,
            },
            Some(r) = inflight.next(), if !inflight.is_empty() => r?,
            _ = &mut done, if !ended => {
                // No more files come: take what is queued, then stop.
                ended = true;
                handed.close();
            }
        }
    }
    while let Some(r) = inflight.next().await {
        r?;
    }
    Ok(())
}

/// `backups/.<id>.partial/REL` in the local copy is `<id>/REL` in the store.
fn stored_key(backups_dir: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(backups_dir).ok()?;
    let mut parts = rel.components();
    let first = parts.next()?.as_os_str().to_str()?;
    let id = first.strip_prefix('.')?.strip_suffix(".partial")?;
    Some(format!("{id}/{}", parts.as_path().to_string_lossy()))
}

/// After a failed upload: the local copy's partial backups go (the store keeps no
/// catalog entry for them, so they are no backup there either).
fn remove_partial_copies(repo: &Repo) {
    if let Ok(entries) = std::fs::read_dir(repo.backups_dir()) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".partial") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Uploads backup `id` from the local copy: every file, then its `backup.json` last, so
/// that the backup exists in the store only once it is whole.
async fn upload_backup(
    remote: &RemoteRepo,
    repo: &Repo,
    id: &str,
) -> Result<(), walferry::objstore::RemoteError> {
    use futures_util::StreamExt;
    let root = repo.backup_dir(id);
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| walferry::objstore::RemoteError::local("read directory", &dir, e))?;
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(path),
                Ok(t) if t.is_file() => files.push(path),
                _ => {}
            }
        }
    }
    let catalog = root.join(walferry::repo::CATALOG_FILE);
    files.retain(|p| *p != catalog);
    let total = files.len();
    let started = std::time::Instant::now();
    let backups = remote.remote.join(walferry::repo::BACKUPS_DIR);
    let rel = |p: &Path| {
        format!(
            "{id}/{}",
            p.strip_prefix(&root).unwrap_or(p).to_string_lossy()
        )
    };
    let results: Vec<_> = futures_util::stream::iter(files.iter().map(|p| {
        let backups = backups.clone();
        let key = rel(p);
        async move { backups.put_file_new(&key, p).await }
    }))
    .buffer_unordered(4)
    .collect()
    .await;
    for r in results {
        r?;
    }
    backups.put_file_new(&rel(&catalog), &catalog).await?;
    tracing::info!(
        "backup {id}: {} files uploaded to {} in {:.1} s",
        total + 1,
        remote.url,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--max-rate` as pg_basebackup reads it: kB/s, or with a `k` or `M` suffix.
fn parse_max_rate(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let (num, mult) = match t.strip_suffix('M') {
        Some(n) => (n, 1024),
        None => (t.strip_suffix('k').unwrap_or(t), 1),
    };
    let bad = || format!("invalid transfer rate \"{text}\"");
    let n: u64 = num.trim().parse().map_err(|_| bad())?;
    let kb = n.checked_mul(mult).ok_or_else(bad)?;
    if !(32..=1_048_576).contains(&kb) {
        return Err(format!(
            "transfer rate \"{text}\" is out of range (32 kB/s to 1024 MB/s)"
        ));
    }
    Ok(kb as u32)
}

/// The progress line on a terminal: redrawn at most a few times a second.
struct ProgressLine {
    on: bool,
    started: Instant,
    last: Option<Instant>,
    drawn: bool,
}

impl ProgressLine {
    fn new(on: bool) -> Self {
        ProgressLine {
            on,
            started: Instant::now(),
            last: None,
            drawn: false,
        }
    }

    fn show(&mut self, p: Progress) {
        if !self.on
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        self.last = Some(Instant::now());
        let text = match p.phase {
            Phase::Checkpoint => "waiting for the server's checkpoint".to_string(),
            Phase::WaitingForWal => "waiting for the WAL archive to reach the backup's end".into(),
            Phase::Streaming => streaming_line(p, self.started.elapsed()),
        };
        let mut err = std::io::stderr();
        let _ = write!(err, "\r\x1b[K{text}");
        let _ = err.flush();
        self.drawn = true;
    }

    fn clear(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

fn streaming_line(p: Progress, elapsed: Duration) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = p.done as f64 / secs;
    let mut s = format!("{:.1} MiB", p.done as f64 / MIB);
    if let Some(total) = p.total.filter(|&t| t > 0) {
        let pct = (p.done as f64 * 100.0 / total as f64).min(100.0);
        s.push_str(&format!(" of {:.1} MiB ({pct:.0}%)", total as f64 / MIB));
        if rate > 0.0 && total > p.done {
            let eta = ((total - p.done) as f64 / rate) as u64;
            s.push_str(&format!(
                ", {:.1} MiB/s, ETA {}:{:02}",
                rate / MIB,
                eta / 60,
                eta % 60
            ));
            return s;
        }
    }
    s.push_str(&format!(", {:.1} MiB/s", rate / MIB));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_rate_as_pg_basebackup_reads_it() {
        assert_eq!(parse_max_rate("100"), Ok(100));
        assert_eq!(parse_max_rate("64k"), Ok(64));
        assert_eq!(parse_max_rate("50M"), Ok(51200));
        assert!(parse_max_rate("10").unwrap_err().contains("out of range"));
        assert!(parse_max_rate("2048M").is_err());
        assert!(parse_max_rate("fast").unwrap_err().contains("invalid"));
    }

    #[test]
    fn progress_line_has_rate_and_eta() {
        let p = Progress {
            done: 10 << 20,
            total: Some(40 << 20),
            phase: Phase::Streaming,
        };
        assert_eq!(
            streaming_line(p, Duration::from_secs(2)),
            "10.0 MiB of 40.0 MiB (25%), 5.0 MiB/s, ETA 0:06"
        );
    }
}
