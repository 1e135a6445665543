//! `walferry restore-points` and `walferry wal-info`: what an archive offers as recovery
//! targets — named restore points, and per timeline the WAL range and its first and last
//! commit (see `walferry::inspect`).

use std::io::Write;

use walferry::inspect::time::iso8601;
use walferry::inspect::{json, Report, TimelineInfo, XactPoint};

use super::verify::inspect_dir;
use super::Failure;

pub const AFTER_HELP: &str = "\
Lists the named restore points (pg_create_restore_point) in the archive: name, the LSN where
the RESTORE_POINT record starts (as pg_waldump prints it), its time (ISO 8601, UTC) and
timeline; then, per timeline, the WAL range and the earliest and latest commit: the range a
point-in-time recovery can target. --json prints an array of {\"name\", \"lsn\", \"time\",
\"timeline\"} instead.

Only records that pass every check count. When the archive has problems (as `walferry
verify` reports them) they are printed on stderr, the listing covers the WAL that could be
read, and the exit status is 1.

Exit status: 0 on a clean archive, 1 when it has problems or cannot be read, 2 on an
invalid command line.";

pub const WAL_INFO_AFTER_HELP: &str = "\
Per timeline: the range of WAL in the archive, the first and last commit (time and LSN of
the commit record) and the number of named restore points. --json prints an array of
{\"timeline\", \"start_lsn\", \"end_lsn\", \"first_commit_time\", \"first_commit_lsn\",
\"last_commit_time\", \"last_commit_lsn\", \"restore_points\"}.

Only records that pass every check count. When the archive has problems (as `walferry
verify` reports them) they are printed on stderr, the listing covers the WAL that could be
read, and the exit status is 1.

Exit status: 0 on a clean archive, 1 when it has problems or cannot be read, 2 on an
invalid command line.";

/// The same flags as `verify`: -D, --json, --wal-segsize.
pub use super::verify::Args;

pub fn run(args: Args, verbose: u8) -> Result<(), Failure> {
    let dir = super::remote_repo::archive_view(&args.directory, "restore-points")?;
    let report = inspect_dir(&dir, &args.options(), "restore-points", verbose)?;
    let text = if args.json {
        format!(
            "{}\n",
            json::to_string(&json::restore_points(&report.restore_points))
        )
    } else {
        let mut s = restore_point_table(&report);
        s.push('\n');
        s.push_str(&range_footer(&report.timelines));
        s
    };
    finish(&args, &report, &text)
}

pub fn run_wal_info(args: Args, verbose: u8) -> Result<(), Failure> {
    let dir = super::remote_repo::archive_view(&args.directory, "wal-info")?;
    let report = inspect_dir(&dir, &args.options(), "wal-info", verbose)?;
    let text = if args.json {
        format!("{}\n", json::to_string(&json::wal_info(&report.timelines)))
    } else {
        timeline_table(&report.timelines)
    };
    finish(&args, &report, &text)
}

/// Prints the listing, then the archive's problems on stderr.
fn finish(args: &Args, report: &Report, text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Failure::new(format!("could not write the result: {e}")))?;
    if report.is_clean() {
        return Ok(());
    }
    for p in &report.problems {
        eprintln!("walferry: problem: {p}");
    }
    let n = report.problems.len();
    Err(Failure::new(format!(
        "the archive \"{}\" has {n} problem{} (listed above); the listing covers only the WAL \
         that could be read",
        args.directory.display(),
        if n == 1 { "" } else { "s" }
    ))
    .with_hint("run walferry verify for the full check"))
}

fn restore_point_table(report: &Report) -> String {
    if report.restore_points.is_empty() {
        return "no named restore points\n".into();
    }
    let rows: Vec<[String; 4]> = report
        .restore_points
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.lsn.to_string(),
                iso8601(p.time),
                p.timeline.to_string(),
            ]
        })
        .collect();
    table(["NAME", "LSN", "TIME", "TIMELINE"], &rows)
}

pub fn range_footer(timelines: &[TimelineInfo]) -> String {
    let mut s = String::from("Recoverable range:\n");
    if timelines.is_empty() {
        s.push_str("  no WAL could be read\n");
    }
    for t in timelines {
        let commits = match (t.first_commit, t.last_commit) {
            (Some(a), Some(b)) => format!("commits from {} to {}", commit(a), commit(b)),
            _ => "no commits".into(),
        };
        s.push_str(&format!(
            "  timeline {}: WAL {}..{}, {commits}\n",
            t.timeline, t.start_lsn, t.end_lsn
        ));
    }
    s
}

pub fn commit(c: XactPoint) -> String {
    format!("{} ({})", iso8601(c.time), c.lsn)
}

fn timeline_table(timelines: &[TimelineInfo]) -> String {
    if timelines.is_empty() {
        return "no WAL could be read\n".into();
    }
    let rows: Vec<[String; 6]> = timelines
        .iter()
        .map(|t| {
            [
                t.timeline.to_string(),
                t.start_lsn.to_string(),
                t.end_lsn.to_string(),
                t.first_commit.map(commit).unwrap_or_else(|| "-".into()),
                t.last_commit.map(commit).unwrap_or_else(|| "-".into()),
                t.restore_points.to_string(),
            ]
        })
        .collect();
    table(
        [
            "TIMELINE",
            "START",
            "END",
            "FIRST COMMIT",
            "LAST COMMIT",
            "RESTORE POINTS",
        ],
        &rows,
    )
}

/// Columns padded to their widest cell, two spaces apart; the last one is not padded.
pub fn table<const N: usize>(head: [&str; N], rows: &[[String; N]]) -> String {
    let mut width = head.map(|h| h.chars().count());
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut s = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            if i + 1 < N {
                l.push_str(&format!("{c:<w$}  ", w = width[i]));
            } else {
                l.push_str(c);
            }
        }
        s.push_str(l.trim_end());
        s.push('\n');
    };
    line(&mut head.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    s
}
