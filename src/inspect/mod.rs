//! Reading a whole archive directory back: `walferry verify` (is every byte of it what a
//! PostgreSQL server wrote, and is nothing missing?) and the WAL catalogue behind
//! `walferry restore-points` and `walferry wal-info` (named restore points, the commit range of
//! each timeline). One pass does both: [`inspect`] decodes every segment once and returns a
//! [`Report`] with the problems found and what the readable WAL holds.
//!
//! What is checked, per timeline:
//! - the files: a name valid for the segment size, an uncompressed complete segment exactly
//!   one segment long, a compressed one that decompresses to one, the same database system
//!   identifier as the rest of the archive (the majority; a tie goes to the first segment);
//! - continuity: no segment missing between two of one timeline, nor between a parent
//!   timeline's last segment and its child's first (the segment holding the switch point
//!   comes from the child: PostgreSQL copies the parent's WAL up to the switch point into it);
//! - history files: they parse, list a parent below their own timeline, agree with the
//!   parent's history file (which must be there), and a timeline with segments above 1 has
//!   one; no segment of a timeline lies wholly past the point where a child branched off (nor
//!   WAL past it in the segment holding it), and none wholly before the timeline began;
//! - the WAL itself, with [`crate::wal::WalDecoder`]: page headers, record headers, the
//!   xl_prev chain and every record's CRC-32C, decoded continuously across the consecutive
//!   segments of a timeline (a record that spans files is checked whole). At a gap, a bad
//!   file, or the first segment of a timeline a fresh decoder starts: its first record's
//!   xl_prev can only be checked to point backwards, and the tail of a record begun before
//!   the segment is skipped (as xlogreader.c XLogFindNextRecord does);
//! - the bytes PostgreSQL's reader skips but that a server always writes as zeros: the
//!   padding after each record up to 8-byte alignment, the 4 pad bytes of every page header
//!   and its `xlp_rem_len` on pages that do not continue a record, and the rest of a segment
//!   after an XLOG SWITCH (see xlog.c CopyXLogRecordToWAL: the remaining pages are zeroed,
//!   headers too). With these, any single changed byte of a complete segment that is decoded
//!   from its predecessor is found, except a flip of the XLP_BKP_REMOVABLE bit of a page
//!   header (0x0004 in `xlp_info`, which the server sets or clears depending on whether a
//!   base backup runs) and bytes of a record that began before the first segment of the
//!   archive (or of a run after a gap), which cannot be checked without its start;
//! - `.partial` segments: the WAL up to its end (a zero record length or an all-zero page
//!   header where WAL would go on) is checked like any other. The last file of a timeline,
//!   when it is a `.partial`, is the WAL being received: whatever stops its valid WAL there
//!   (zeros, a record cut short or torn by a crash mid-write, which `receive` streams again
//!   from the segment start) is its end, reported as a note with the LSN, not as damage.
//!   Any other `.partial` must hold only zeros after its end (walferry preallocates and
//!   pg_receivewal zero-pads the file), from the page boundary where the zeros began when
//!   the end cut a record in two, and a record cut short in it is damage. A `.partial` with a
//!   complete segment of its timeline after it is a problem even when it holds the whole
//!   segment: recovery never asks for `.partial` names, so it is a hole (a stop inside the
//!   record crossing a segment end used to leave one). A complete segment in which the WAL
//!   ends (zeros where a record should be) is a problem.
//!
//! The first segment of a new timeline begins with the parent's WAL up to the switch point,
//! copied by the promoted server (xlog.c XLogInitNewTimeline): those pages keep the parent's
//! timeline id in their headers, and so does the page holding the switch point (StartupXLOG
//! copies that page's valid part into the WAL buffers); pages after it carry the new id. The
//! decoder accepts pages of an ancestor timeline (never a later one, never going back), so
//! that segment is decoded from its start like any other. Its records below the switch point
//! are credited to the parent timeline in the catalogue (and counted once when the parent's
//! own `.partial` holds them too).

mod catalog;
mod check;
pub mod json;
mod layout;
pub mod time;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use catalog::{RestorePointInfo, TimelineInfo, XactPoint};
pub(crate) use check::cut_short_by_zeros;

use crate::wal::{Lsn, TimeLineId};

/// Uncompressed bytes decoded per read: large enough that the decoder's fast loop runs
/// undisturbed, small enough to stay in L2.
pub const CHUNK: usize = 1 << 20;

/// Something wrong with the archive, tied to a file and, where known, an LSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The segment or history file concerned (for a gap: the first missing segment); `None`
    /// for the directory as a whole.
    pub file: Option<String>,
    /// Where in the WAL: the record or page for decoding errors, the first missing byte for
    /// gaps.
    pub lsn: Option<Lsn>,
    /// For a gap: where the missing WAL ends (exclusive), so that a reader can tell whether
    /// a gap that begins before some position reaches past it.
    pub until: Option<Lsn>,
    pub message: String,
}

impl Problem {
    pub(crate) fn new(
        file: impl Into<String>,
        lsn: Option<Lsn>,
        message: impl Into<String>,
    ) -> Self {
        Problem {
            file: Some(file.into()),
            lsn,
            until: None,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    /// `<file> at <LSN>: <message>`, the form `walferry verify` prints after `PROBLEM`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.lsn) {
            (Some(file), Some(lsn)) => write!(f, "{file} at {lsn}: {}", self.message),
            (Some(file), None) => write!(f, "{file}: {}", self.message),
            (None, Some(lsn)) => write!(f, "at {lsn}: {}", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

/// How to read the archive.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The WAL segment size; `None` reads it from the first segment's long page header
    /// (xlp_seg_size), falling back to 16 MiB.
    pub seg_size: Option<u64>,
    /// Also find the commit of this transaction (`restore --target-xid`).
    pub find_xid: Option<u32>,
}

/// Where a long run is, after each segment file.
#[derive(Debug, Clone)]
pub struct Progress<'a> {
    pub file: &'a str,
    pub files_done: usize,
    pub files_total: usize,
    /// Bytes of the files (as stored, compressed or not) done and in all.
    pub stored_done: u64,
    pub stored_total: u64,
    /// Uncompressed WAL bytes decoded so far.
    pub decoded: u64,
}

/// What one pass over an archive found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub seg_size: u64,
    /// The system identifier most segments carry.
    pub system_id: Option<u64>,
    /// Segment files decoded (duplicates and foreign or wrong-sized files not counted).
    pub segments: usize,
    /// Records that passed every check (records in the copied start of a new timeline's
    /// first segment count again).
    pub records: u64,
    /// Uncompressed WAL bytes decoded.
    pub decoded_bytes: u64,
    /// Per timeline, ascending: the WAL range read and its commits.
    pub timelines: Vec<TimelineInfo>,
    /// Named restore points, by timeline then LSN.
    pub restore_points: Vec<RestorePointInfo>,
    /// Sorted by file, then LSN.
    pub problems: Vec<Problem>,
    /// Facts worth knowing that are not damage: where the WAL of a timeline's newest
    /// `.partial` ends when a record there was cut short, a full `.partial` not renamed yet.
    pub notes: Vec<Problem>,
    /// The commit of [`Options::find_xid`], and its timeline, when the archive holds it.
    pub xid_commit: Option<(TimeLineId, XactPoint)>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// The lowest start and highest end of the readable WAL over all timelines.
    pub fn lsn_range(&self) -> Option<(Lsn, Lsn)> {
        let start = self.timelines.iter().map(|t| t.start_lsn).min()?;
        let end = self.timelines.iter().map(|t| t.end_lsn).max()?;
        Some((start, end))
    }

    pub fn timeline_ids(&self) -> Vec<TimeLineId> {
        self.timelines.iter().map(|t| t.timeline).collect()
    }
}

/// Errors that stop the pass before any WAL is read (a missing or unreadable directory).
/// Everything wrong with the files inside is a [`Problem`] instead.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("could not read directory \"{path}\": {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid WAL segment size {0}: must be a power of two from 1 MiB to 1 GiB")]
    SegSize(u64),
}

/// Checks and catalogues the archive in `dir` in one pass; `progress` is called after each
/// segment file.
pub fn inspect(
    dir: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(&Progress<'_>),
) -> Result<Report, InspectError> {
    let listing = layout::list_dir(dir, opts.seg_size)?;
    let plan = layout::plan(listing);
    Ok(check::run(dir, plan, opts.find_xid, progress))
}
