//! `walferry verify`: check a whole archive directory (see `walferry::inspect`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use walferry::inspect::{self, json, Options, Progress, Report};

use super::Failure;

pub const AFTER_HELP: &str = "\
Checks, per timeline: no segment missing (also between a timeline and its parent), history
files that parse and agree with each other and with the segments, every segment from the
same database system, every page header, record header, xl_prev link and record CRC-32C
(decoded continuously across segments, so records spanning files are checked whole), and
the bytes PostgreSQL always writes as zeros (record alignment padding, page header padding,
the rest of a segment after an XLOG SWITCH, a .partial segment after its last record).
Compressed segments (.gz, .lz4, .zst) are decompressed on the fly.

The last file of a timeline, when it is a .partial, is the WAL being received: a record cut
short at its end (a crash or stop mid-write) marks where its valid WAL ends and is printed as
a NOTE with that LSN, not as a problem; the same cut anywhere else is damage. A .partial with
complete segments of its timeline after it is a problem even when it holds the whole
segment: recovery never asks for .partial files.

Output: one line per problem, `PROBLEM <file> at <LSN>: <what>`, or a line starting with
`ok:` when there is none, after any `NOTE <file> at <LSN>: <what>` lines. --json prints
{\"ok\", \"segments\", \"records\", \"problems\": [{\"file\", \"lsn\", \"message\"}], \"notes\": [...]}
instead. Progress goes to stderr when it is a terminal, or with -v.

Exit status: 0 when the archive is clean, 1 when any problem was found (or the directory
cannot be read), 2 on an invalid command line.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Archive directory (as written by walferry receive or pg_receivewal)
    #[arg(short = 'D', long = "directory", value_name = "DIR")]
    pub directory: PathBuf,

    /// Print the result as JSON
    #[arg(long = "json")]
    pub json: bool,

    /// WAL segment size (MB, or with a unit: 64MB, 1GB) [default: read from the first segment]
    #[arg(long = "wal-segsize", value_name = "SIZE", value_parser = parse_seg_size)]
    pub wal_segsize: Option<u64>,

    /// Print help
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

impl Args {
    /// How to read the archive, from --wal-segsize.
    pub fn options(&self) -> Options {
        Options {
            seg_size: self.wal_segsize,
            ..Options::default()
        }
    }
}

pub fn run(args: Args, verbose: u8) -> Result<(), Failure> {
    let dir = super::remote_repo::archive_view(&args.directory, "verify")?;
    let report = inspect_dir(&dir, &args.options(), "verify", verbose)?;
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        writeln!(out, "{}", json::to_string(&json::verify(&report)))
    } else {
        let notes = report.notes.iter().map(|n| format!("NOTE {n}"));
        let problems = report.problems.iter().map(|p| format!("PROBLEM {p}"));
        let last = report.is_clean().then(|| ok_line(&report));
        notes
            .chain(problems)
            .chain(last)
            .try_for_each(|line| writeln!(out, "{line}"))
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| Failure::new(format!("could not write the result: {e}")))?;
    if report.is_clean() {
        return Ok(());
    }
    let n = report.problems.len();
    Err(Failure::new(format!(
        "found {n} problem{} in \"{}\" ({} segment{} read, {} records checked)",
        plural(n),
        args.directory.display(),
        report.segments,
        plural(report.segments),
        report.records
    )))
}

fn ok_line(r: &Report) -> String {
    let tlis: Vec<String> = r.timeline_ids().iter().map(|t| t.to_string()).collect();
    let range = match r.lsn_range() {
        Some((a, b)) => format!("{a}..{b}"),
        None => "empty".into(),
    };
    format!(
        "ok: {} segment{} on timeline{} {}, LSN range {range}, {} records checked",
        r.segments,
        plural(r.segments),
        plural(tlis.len()),
        tlis.join(", "),
        r.records
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Runs the one pass over the archive, with progress on stderr when it is a terminal or
/// with -v, and the throughput at -v. Shared by verify, restore-points and wal-info.
pub fn inspect_dir(dir: &Path, opts: &Options, what: &str, verbose: u8) -> Result<Report, Failure> {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last = Instant::now();
    let mut shown = false;
    let mut progress = |p: &Progress<'_>| {
        if !(tty || verbose > 0)
            || last.elapsed() < Duration::from_millis(if tty { 100 } else { 2000 })
        {
            return;
        }
        last = Instant::now();
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let line = format!(
            "{what}: {}/{} segments, {} of {} MB, {:.0} MB/s of WAL",
            p.files_done,
            p.files_total,
            p.stored_done / 1_000_000,
            p.stored_total / 1_000_000,
            p.decoded as f64 / 1e6 / secs
        );
        if tty {
            eprint!("\r{line}\x1b[K");
            shown = true;
        } else {
            eprintln!("{line}");
        }
    };
    let result = inspect::inspect(dir, opts, &mut progress);
    if shown {
        eprint!("\r\x1b[K");
    }
    let report = result.map_err(|e| Failure::new(e.to_string()))?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        "{what}: read {} segments ({:.1} MB of WAL, {} records) in {secs:.2} s: {:.0} MB/s",
        report.segments,
        report.decoded_bytes as f64 / 1e6,
        report.records,
        report.decoded_bytes as f64 / 1e6 / secs.max(1e-6)
    );
    Ok(report)
}

/// `--wal-segsize`: a number of MB as initdb takes it, or with a unit (MB, MiB, GB, GiB; all
/// binary). Must be a power of two from 1 MB to 1 GB.
pub fn parse_seg_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let (num, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => lower.split_at(i),
        None => (lower.as_str(), ""),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid segment size {t:?}: expected e.g. 16, 64MB or 1GB"))?;
    let mult = match unit.trim() {
        "" | "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "invalid segment size {t:?}: the unit must be MB or GB"
            ))
        }
    };
    let size = n.saturating_mul(mult);
    if !walferry::wal::page::is_valid_seg_size(size) {
        return Err(format!(
            "invalid segment size {t:?}: must be a power of two from 1 MB to 1 GB"
        ));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_sizes_as_initdb_takes_them() {
        assert_eq!(parse_seg_size("16"), Ok(16 << 20));
        assert_eq!(parse_seg_size("64MB"), Ok(64 << 20));
        assert_eq!(parse_seg_size("1GB"), Ok(1 << 30));
        assert_eq!(parse_seg_size("1 GiB"), Ok(1 << 30));
        for bad in ["0", "3", "2048", "16kB", "x", "", "2GB"] {
            assert!(parse_seg_size(bad).is_err(), "{bad}");
        }
    }
}
