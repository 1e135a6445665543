//! `walferry backup`: take a base backup into a repository (see `walferry::backup`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use walferry::archive::CompressionSpec;
use walferry::backup::{self, BackupOptions, Checkpoint, Phase, Progress};
use walferry::repo::Repo;

use super::receive::{connection_params, wait_for_stop_signal};
use super::{current_thread_runtime, ConnArgs, Failure};

pub const AFTER_HELP: &str = "\
Takes a base backup with the replication protocol's BASE_BACKUP (PostgreSQL 15 or later) into
REPO/backups/<id>/, <id> being the start time in UTC (e.g. 20261127T195300Z), and prints the
id on stdout. Each file of the data directory and of every tablespace is stored on its own,
compressed with -Z (none, lz4, zstd[:LEVEL], gzip[:LEVEL]) on --jobs threads as the stream
arrives; the server's backup_manifest is kept as sent (pg_verifybackup reads it), and every
stored file is checked against its size and CRC-32C there.

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

Exit status: 0 when the backup is complete and kept, 1 on any failure (nothing kept), 2 on an
invalid command line.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Repository directory (must exist; its wal/ and backups/ are made when missing)
    #[arg(long = "repo", value_name = "REPO")]
    repo: PathBuf,

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

    /// Limit the server's transfer rate, in kB/s, or with a k or M suffix (32k to 1024M)
    #[arg(short = 'r', long = "max-rate", value_name = "RATE")]
    max_rate: Option<String>,

    /// Seconds to wait at the end for REPO/wal to hold the backup's WAL
    #[arg(long = "wal-timeout", value_name = "SECS", default_value = "60")]
    wal_timeout: u64,

    /// Do not wait for (nor check) the backup's WAL in REPO/wal
    #[arg(long = "no-wait-wal")]
    no_wait_wal: bool,

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
    let repo = Repo::open(&args.repo).map_err(|e| Failure::new(e.to_string()))?;
    let opts = BackupOptions {
        params: connection_params(&args.conn)?,
        label: args.label,
        checkpoint,
        compression,
        max_rate_kb,
        wal_timeout: (!args.no_wait_wal).then(|| Duration::from_secs(args.wal_timeout)),
        threads,
    };
    let mut line = ProgressLine::new(std::io::stderr().is_terminal() && verbose == 0);
    let rt = current_thread_runtime()?;
    let result = rt.block_on(async {
        let mut show = |p| line.show(p);
        tokio::select! {
            r = backup::take(&repo, &opts, &mut show) => Some(r),
            _ = wait_for_stop_signal() => None,
        }
    });
    line.clear();
    match result {
        None => Err(Failure::new(
            "backup interrupted by a signal; nothing was kept",
        )),
        Some(Err(e)) => {
            // Every failure removes the partial backup: say so, so nobody goes looking.
            let mut f = Failure::new(format!("{e}; nothing was kept"));
            f.hint = e.hint();
            Err(f)
        }
        Some(Ok(info)) => {
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
