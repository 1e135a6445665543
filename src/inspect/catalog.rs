//! The WAL catalogue: named restore points and, per timeline, the range of WAL read and its
//! first and last commit. Built from the records that passed every check, each credited to
//! the timeline it was written on (records at the start of a new timeline's first segment
//! below the switch point belong to the parent). Adding the same record twice (read from the
//! parent's `.partial` and from the child's copy) changes nothing.

use std::collections::BTreeMap;

use crate::wal::{Lsn, Record, RecordKind, TimeLineId, TimestampTz};

/// A named restore point (`pg_create_restore_point`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePointInfo {
    pub name: String,
    /// Start of the RESTORE_POINT record (what pg_waldump prints as `lsn:`). Recovery with
    /// `recovery_target_name` stops right after this record.
    pub lsn: Lsn,
    pub time: TimestampTz,
    pub timeline: TimeLineId,
}

/// A commit: its time and the start of its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XactPoint {
    pub time: TimestampTz,
    pub lsn: Lsn,
}

/// What the archive holds of one timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineInfo {
    pub timeline: TimeLineId,
    /// Lowest position of WAL read on this timeline (a segment start, or the switch point
    /// for a timeline whose parent's WAL comes first in its first segment).
    pub start_lsn: Lsn,
    /// End of the last valid record read on this timeline.
    pub end_lsn: Lsn,
    /// The commit with the lowest LSN, and the one with the highest.
    pub first_commit: Option<XactPoint>,
    pub last_commit: Option<XactPoint>,
    pub restore_points: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Catalog {
    restore_points: BTreeMap<(TimeLineId, Lsn), RestorePointInfo>,
    timelines: BTreeMap<TimeLineId, TimelineInfo>,
    find_xid: Option<u32>,
    xid_commit: Option<(TimeLineId, XactPoint)>,
}

impl Catalog {
    /// A catalogue that also notes the commit of transaction `xid`.
    pub(crate) fn finding(xid: Option<u32>) -> Self {
        Catalog {
            find_xid: xid,
            ..Catalog::default()
        }
    }

    /// A record that passed every check, written on `tli`.
    #[inline]
    pub(crate) fn record(&mut self, tli: TimeLineId, r: &Record) {
        match &r.kind {
            RecordKind::Commit(x) => {
                let p = XactPoint {
                    time: x.time,
                    lsn: r.lsn,
                };
                let t = self.timeline(tli);
                if t.first_commit.is_none_or(|f| p.lsn < f.lsn) {
                    t.first_commit = Some(p);
                }
                if t.last_commit.is_none_or(|l| p.lsn > l.lsn) {
                    t.last_commit = Some(p);
                }
                if self.find_xid == Some(r.xid) && self.xid_commit.is_none() {
                    self.xid_commit = Some((tli, p));
                }
            }
            RecordKind::RestorePoint(rp) => {
                self.restore_points
                    .entry((tli, r.lsn))
                    .or_insert_with(|| RestorePointInfo {
                        name: rp.name().into_owned(),
                        lsn: r.lsn,
                        time: rp.time,
                        timeline: tli,
                    });
            }
            _ => {}
        }
    }

    /// Valid WAL from `start` to `end` was read on `tli`.
    pub(crate) fn span(&mut self, tli: TimeLineId, start: Lsn, end: Lsn) {
        if end <= start {
            return;
        }
        let t = self.timeline(tli);
        if t.end_lsn <= t.start_lsn {
            // The placeholder of a timeline seen only through a commit so far.
            t.start_lsn = start;
            t.end_lsn = end;
        } else {
            t.start_lsn = t.start_lsn.min(start);
            t.end_lsn = t.end_lsn.max(end);
        }
    }

    fn timeline(&mut self, tli: TimeLineId) -> &mut TimelineInfo {
        self.timelines.entry(tli).or_insert(TimelineInfo {
            timeline: tli,
            start_lsn: Lsn(0),
            end_lsn: Lsn(0),
            first_commit: None,
            last_commit: None,
            restore_points: 0,
        })
    }

    #[allow(clippy::type_complexity)]
    pub(crate) fn finish(
        mut self,
    ) -> (
        Vec<TimelineInfo>,
        Vec<RestorePointInfo>,
        Option<(TimeLineId, XactPoint)>,
    ) {
        let tlis: Vec<TimeLineId> = self.restore_points.keys().map(|&(t, _)| t).collect();
        for tli in tlis {
            self.timeline(tli).restore_points += 1;
        }
        (
            self.timelines.into_values().collect(),
            self.restore_points.into_values().collect(),
            self.xid_commit,
        )
    }
}
