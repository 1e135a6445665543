//! Rebuilding a data directory from a backup plus the archive: which backup, whether the
//! archive can take it to the target, and the recovery settings PostgreSQL needs.
//!
//! Everything here is decided before anything slow happens: the target is resolved against
//! what the archive really holds (a restore point's LSN, a transaction's commit, the range
//! of commit times), the newest backup that becomes consistent before the target is chosen,
//! and the WAL from that backup's start to the target must be there without a gap or a
//! damaged record, or the restore is refused with what is missing. `layout` then lays out
//! the files and `recovery` writes the settings and the signal file.

pub mod layout;
pub mod recovery;

use std::fmt;

use crate::inspect::{Report, RestorePointInfo};
use crate::repo::BackupInfo;
use crate::wal::{Lsn, TimeLineId, TimestampTz};

/// Where recovery stops (`recovery_target_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The end of the archive.
    Latest,
    Name(String),
    /// As given (PostgreSQL parses it again), and as understood here.
    Time(String, TimestampTz),
    Lsn(Lsn),
    Xid(u32),
    /// As soon as the backup is consistent.
    Immediate,
}

/// `recovery_target_timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetTimeline {
    Latest,
    Current,
    Id(TimeLineId),
}

/// `recovery_target_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetAction {
    Promote,
    Pause,
    Shutdown,
}

impl fmt::Display for TargetAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        })
    }
}

/// Why a restore cannot go ahead; each says what exists instead.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "no restore point named \"{name}\" in the archive; {}",
        list_names(known)
    )]
    UnknownName { name: String, known: Vec<String> },
    #[error("transaction {xid} has no commit record in the archive (it did not commit, or its WAL is not archived)")]
    UnknownXid { xid: u32 },
    #[error("target time {time} is outside the archive's commits: {range}")]
    TimeOutOfRange { time: String, range: String },
    #[error("target LSN {lsn} is outside the archive's WAL: {range}")]
    LsnOutOfRange { lsn: Lsn, range: String },
    #[error(
        "no backup becomes consistent before the target ({target}); the oldest ends at {oldest}"
    )]
    NoBackupBefore { target: String, oldest: String },
    #[error("the repository holds no backup")]
    NoBackups,
    #[error(
        "backup {id} cannot be restored to {target}: the archive's WAL from {from} on has problems:\n  {}",
        problems.join("\n  ")
    )]
    ArchiveDamaged {
        id: String,
        target: String,
        from: Lsn,
        problems: Vec<String>,
    },
    #[error("backup {id} needs WAL up to {stop} to be consistent, but the archive ends at {end}")]
    ArchiveTooShort { id: String, stop: Lsn, end: Lsn },
    #[error("backup {id} replays from {start}, but the archive holds no WAL there ({held})")]
    ArchiveMissesStart {
        id: String,
        start: Lsn,
        held: String,
    },
}

fn list_names(known: &[String]) -> String {
    if known.is_empty() {
        "it has none".to_string()
    } else {
        format!("it has: {}", known.join(", "))
    }
}

/// What `restore` will do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub backup: BackupInfo,
    /// The WAL position the target resolves to (`None`: the end of the archive, or
    /// immediate).
    pub target_lsn: Option<Lsn>,
    pub target: Target,
}

/// Choose the backup for `target` (`wanted`: a backup id, or `latest` for the newest that
/// fits) and check that the archive in `report` can take it there.
pub fn plan(
    backups: &[BackupInfo],
    wanted: &str,
    target: &Target,
    report: &Report,
) -> Result<Plan, PlanError> {
    let target_lsn = resolve(target, report)?;
    // A backup fits when it is consistent before the target: by position, or for a time
    // target by the time its end was reached.
    let fits = |b: &&BackupInfo| match target {
        Target::Time(_, time) => parse_time(&b.stop_time).is_ok_and(|stop| stop <= *time),
        _ => target_lsn.is_none_or(|t| b.stop_lsn <= t),
    };
    let backup = if wanted == "latest" {
        backups
            .iter()
            .rev()
            .find(fits)
            .ok_or_else(|| match backups.first() {
                None => PlanError::NoBackups,
                Some(oldest) => PlanError::NoBackupBefore {
                    target: describe(target, target_lsn),
                    oldest: format!("{} (backup {})", oldest.stop_lsn, oldest.id),
                },
            })?
    } else {
        // The caller found it already; an explicit choice that cannot reach the target is
        // still refused.
        let b = backups
            .iter()
            .find(|b| b.id == wanted)
            .ok_or(PlanError::NoBackups)?;
        if !fits(&b) {
            return Err(PlanError::NoBackupBefore {
                target: describe(target, target_lsn),
                oldest: format!("{} (backup {})", b.stop_lsn, b.id),
            });
        }
        b
    };
    check_archive(backup, target, target_lsn, report)?;
    Ok(Plan {
        backup: backup.clone(),
        target_lsn,
        target: target.clone(),
    })
}

/// The WAL position a target stands for, from what the archive holds.
fn resolve(target: &Target, report: &Report) -> Result<Option<Lsn>, PlanError> {
    match target {
        Target::Latest | Target::Immediate => Ok(None),
        Target::Name(name) => {
            // Recovery stops at the first restore point of that name it replays; the
            // newest backup before the last one is the one that can reach it.
            let found: Vec<&RestorePointInfo> = report
                .restore_points
                .iter()
                .filter(|r| &r.name == name)
                .collect();
            match found.iter().map(|r| r.lsn).max() {
                Some(lsn) => Ok(Some(lsn)),
                None => {
                    let mut known: Vec<String> = report
                        .restore_points
                        .iter()
                        .map(|r| r.name.clone())
                        .collect();
                    known.dedup();
                    Err(PlanError::UnknownName {
                        name: name.clone(),
                        known,
                    })
                }
            }
        }
        Target::Xid(xid) => match report.xid_commit {
            Some((_, commit)) => Ok(Some(commit.lsn)),
            None => Err(PlanError::UnknownXid { xid: *xid }),
        },
        Target::Lsn(lsn) => {
            let (start, end) = report.lsn_range().unwrap_or((Lsn(0), Lsn(0)));
            if *lsn < start || *lsn > end {
                return Err(PlanError::LsnOutOfRange {
                    lsn: *lsn,
                    range: format!("{start} to {end}"),
                });
            }
            Ok(Some(*lsn))
        }
        Target::Time(text, time) => {
            let commits: Vec<_> = report
                .timelines
                .iter()
                .flat_map(|t| [t.first_commit, t.last_commit])
                .flatten()
                .collect();
            let first = commits.iter().min_by_key(|c| c.time);
            let last = commits.iter().max_by_key(|c| c.time);
            match (first, last) {
                // Chosen by the backups' stop times; PostgreSQL finds the position.
                (Some(f), Some(l)) if *time >= f.time && *time <= l.time => Ok(None),
                (Some(f), Some(l)) => Err(PlanError::TimeOutOfRange {
                    time: text.clone(),
                    range: format!(
                        "first commit at {}, last at {}",
                        crate::inspect::time::iso8601(f.time),
                        crate::inspect::time::iso8601(l.time)
                    ),
                }),
                _ => Err(PlanError::TimeOutOfRange {
                    time: text.clone(),
                    range: "the archive holds no commit".into(),
                }),
            }
        }
    }
}

fn describe(target: &Target, lsn: Option<Lsn>) -> String {
    let what = match target {
        Target::Latest => "the end of the archive".to_string(),
        Target::Name(n) => format!("restore point \"{n}\""),
        Target::Time(t, _) => format!("time {t}"),
        Target::Lsn(l) => format!("LSN {l}"),
        Target::Xid(x) => format!("transaction {x}"),
        Target::Immediate => "consistency".to_string(),
    };
    match (target, lsn) {
        (Target::Lsn(_), _) | (_, None) => what,
        (_, Some(l)) => format!("{what} at {l}"),
    }
}

/// The archive must hold the backup's WAL (start to stop) and everything on to the target,
/// with no problem in that range.
fn check_archive(
    backup: &BackupInfo,
    target: &Target,
    target_lsn: Option<Lsn>,
    report: &Report,
) -> Result<(), PlanError> {
    let end = report.lsn_range().map_or(Lsn(0), |(_, e)| e);
    if end < backup.stop_lsn {
        return Err(PlanError::ArchiveTooShort {
            id: backup.id.clone(),
            stop: backup.stop_lsn,
            end,
        });
    }
    // Replay begins at the backup's start: WAL there must be in the archive (a gap that
    // begins before it is found below; an archive that begins after it has no gap to show).
    let from = backup.start_lsn;
    if !report
        .timelines
        .iter()
        .any(|t| t.start_lsn <= from && from <= t.end_lsn)
    {
        let held: Vec<String> = report
            .timelines
            .iter()
            .map(|t| {
                format!(
                    "timeline {} from {} to {}",
                    t.timeline, t.start_lsn, t.end_lsn
                )
            })
            .collect();
        return Err(PlanError::ArchiveMissesStart {
            id: backup.id.clone(),
            start: from,
            held: match held.is_empty() {
                true => "it holds none".into(),
                false => format!("it holds {}", held.join(", ")),
            },
        });
    }
    let seg_size = report.seg_size.max(1);
    let until = match target {
        Target::Immediate => Some(backup.stop_lsn),
        _ => target_lsn,
    };
    let relevant = |p: &&crate::inspect::Problem| {
        let at = p.lsn.or_else(|| {
            let file = p.file.as_deref()?;
            let name = crate::wal::WalFileName::parse(file, seg_size)?;
            Some(name.segment.segno.start_lsn(seg_size))
        });
        match at {
            // Where in the WAL is unknown: it may matter.
            None => true,
            Some(at) => {
                // A gap reaches to its end: one that begins before the backup's segment
                // may still take WAL the backup needs.
                let end = p.until.map_or(at.0 + seg_size, |u| u.0);
                end > from.0 - from.0 % seg_size && until.is_none_or(|u| at <= u)
            }
        }
    };
    let problems: Vec<String> = report
        .problems
        .iter()
        .filter(relevant)
        .map(|p| p.to_string())
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PlanError::ArchiveDamaged {
            id: backup.id.clone(),
            target: describe(target, target_lsn),
            from,
            problems,
        })
    }
}

/// `--target-time` text as PostgreSQL would read it, for choosing the backup: ISO 8601 with
/// a space or `T`, optional fraction, and a zone that must be given (`Z`, `UTC`, `+HH`,
/// `+HH:MM`, `+HHMM`): without one PostgreSQL would use the server's TimeZone, which the
/// tool cannot know.
pub fn parse_time(text: &str) -> Result<TimestampTz, String> {
    let bad = || {
        format!(
            "invalid target time \"{text}\": expected YYYY-MM-DD HH:MM:SS[.ffffff] with a time zone, \
             e.g. '2026-11-27 19:53:00+00'"
        )
    };
    let t = text.trim();
    let (date, rest) = t.split_at(t.find([' ', 'T']).ok_or_else(bad)?);
    let rest = rest[1..].trim_start();
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    if d.len() != 3 {
        return Err(bad());
    }
    let (y, mo, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let zone_at = rest
        .find(['Z', 'z', '+', '-', ' ', 'U'])
        .ok_or_else(|| format!("{}: the time zone is missing", bad()))?;
    let (clock, zone) = rest.split_at(zone_at);
    let zone = zone.trim();
    let c: Vec<&str> = clock.split(':').collect();
    if c.len() != 3 {
        return Err(bad());
    }
    let (h, mi) = (num(c[0])?, num(c[1])?);
    let (secs, frac) = match c[2].split_once('.') {
        Some((s, f)) => (num(s)?, f),
        None => (num(c[2])?, ""),
    };
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let micros = if frac.is_empty() {
        0
    } else {
        num(frac)? * 10i64.pow(6 - frac.len() as u32)
    };
    let offset_secs = match zone {
        "Z" | "z" | "UTC" | "utc" | "+00" | "-00" => 0,
        z if z.starts_with(['+', '-']) => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let digits: String = z[1..].chars().filter(|c| *c != ':').collect();
            let (hh, mm) = match digits.len() {
                2 => (num(&digits)?, 0),
                4 => (num(&digits[..2])?, num(&digits[2..])?),
                _ => return Err(bad()),
            };
            sign * (hh * 3600 + mm * 60)
        }
        _ => return Err(format!("{}: unknown time zone \"{zone}\"", bad())),
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) || h > 23 || mi > 59 || secs > 60 {
        return Err(bad());
    }
    let days = days_from_civil(y, mo as u32, day as u32);
    let unix = days * 86_400 + h * 3600 + mi * 60 + secs - offset_secs;
    Ok(TimestampTz::from_unix_micros(unix * 1_000_000 + micros))
}

/// Days from 1970-01-01 (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests;
