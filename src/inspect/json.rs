//! The `--json` documents of `verify`, `restore-points` and `wal-info`. LSNs are PostgreSQL's
//! `X/X` text, times ISO 8601 in UTC with microseconds, absent values `null`.

use serde::Serialize;

use super::time::iso8601;
use super::{Problem, Report, RestorePointInfo, TimelineInfo};

/// `walferry verify --json`.
#[derive(Debug, Serialize)]
pub struct VerifyDoc<'a> {
    pub ok: bool,
    pub segments: usize,
    pub records: u64,
    pub problems: Vec<ProblemDoc<'a>>,
    /// Not damage: where the newest `.partial` of a timeline ends when a record there was
    /// cut short, a full `.partial` not renamed yet.
    pub notes: Vec<ProblemDoc<'a>>,
}

#[derive(Debug, Serialize)]
pub struct ProblemDoc<'a> {
    pub file: Option<&'a str>,
    pub lsn: Option<String>,
    pub message: &'a str,
}

/// One element of `walferry restore-points --json`.
#[derive(Debug, Serialize)]
pub struct RestorePointDoc<'a> {
    pub name: &'a str,
    pub lsn: String,
    pub time: String,
    pub timeline: u32,
}

/// One element of `walferry wal-info --json`.
#[derive(Debug, Serialize)]
pub struct TimelineDoc {
    pub timeline: u32,
    pub start_lsn: String,
    pub end_lsn: String,
    pub first_commit_time: Option<String>,
    pub first_commit_lsn: Option<String>,
    pub last_commit_time: Option<String>,
    pub last_commit_lsn: Option<String>,
    pub restore_points: usize,
}

pub fn verify(report: &Report) -> VerifyDoc<'_> {
    VerifyDoc {
        ok: report.is_clean(),
        segments: report.segments,
        records: report.records,
        problems: report.problems.iter().map(problem).collect(),
        notes: report.notes.iter().map(problem).collect(),
    }
}

pub fn problem(p: &Problem) -> ProblemDoc<'_> {
    ProblemDoc {
        file: p.file.as_deref(),
        lsn: p.lsn.map(|l| l.to_string()),
        message: &p.message,
    }
}

pub fn restore_points(points: &[RestorePointInfo]) -> Vec<RestorePointDoc<'_>> {
    points
        .iter()
        .map(|p| RestorePointDoc {
            name: &p.name,
            lsn: p.lsn.to_string(),
            time: iso8601(p.time),
            timeline: p.timeline.0,
        })
        .collect()
}

pub fn wal_info(timelines: &[TimelineInfo]) -> Vec<TimelineDoc> {
    timelines
        .iter()
        .map(|t| TimelineDoc {
            timeline: t.timeline.0,
            start_lsn: t.start_lsn.to_string(),
            end_lsn: t.end_lsn.to_string(),
            first_commit_time: t.first_commit.map(|c| iso8601(c.time)),
            first_commit_lsn: t.first_commit.map(|c| c.lsn.to_string()),
            last_commit_time: t.last_commit.map(|c| iso8601(c.time)),
            last_commit_lsn: t.last_commit.map(|c| c.lsn.to_string()),
            restore_points: t.restore_points,
        })
        .collect()
}

/// Pretty-printed JSON text of any of the documents above.
pub fn to_string<T: Serialize>(doc: &T) -> String {
    serde_json::to_string_pretty(doc).expect("documents of strings and numbers serialize")
}
