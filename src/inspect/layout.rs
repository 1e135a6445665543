//! What the archive directory holds, before any WAL is decoded: the segment files by
//! timeline, the history files, and the problems that show from names, sizes, first page
//! headers and history contents alone (gaps, foreign segments, broken history chains).
//!
//! [`list_dir`] does the I/O; [`plan`] is pure, so the rules are unit-tested on listings
//! made up in memory.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::path::Path;

use super::{InspectError, Problem};
use crate::archive::{read_up_to, SegmentReader};
use crate::wal::page::LONG_PAGE_HEADER;
use crate::wal::{
    history_file_name, parse_history, parse_history_file_name, Compression, HistoryEntry, Lsn,
    SegNo, SegmentName, TimeLineId, WalFileName, DEFAULT_SEGMENT_SIZE,
};

/// Names are first read with the smallest segment size, as it accepts every "seg" half any
/// size would.
use crate::wal::page::MIN_SEG_SIZE;

/// What the first 40 bytes of a segment file say.
pub(crate) use crate::wal::page::SegmentHeader as Header;

/// A segment file in the directory.
#[derive(Debug, Clone)]
pub(crate) struct FileEntry {
    pub name: String,
    pub wal: WalFileName,
    /// Size as stored.
    pub len: u64,
    pub header: Header,
}

impl FileEntry {
    pub(crate) fn segno(&self) -> SegNo {
        self.wal.segment.segno
    }
}

/// A history file: its text, or why it could not be read.
#[derive(Debug, Clone)]
pub(crate) struct HistoryFile {
    pub tli: TimeLineId,
    pub text: Result<String, String>,
}

/// The directory's contents, as [`plan`] needs them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Listing {
    pub seg_size: u64,
    pub files: Vec<FileEntry>,
    pub histories: Vec<HistoryFile>,
    pub problems: Vec<Problem>,
}

/// Reads the directory: names, sizes, the first page header of every segment file, the
/// history files. The segment size is `seg_size` when given, else the one the first segment
/// (by name) with a valid long header records, else 16 MiB.
pub(crate) fn list_dir(dir: &Path, seg_size: Option<u64>) -> Result<Listing, InspectError> {
    if let Some(s) = seg_size {
        if !crate::wal::page::is_valid_seg_size(s) {
            return Err(InspectError::SegSize(s));
        }
    }
    let dir_err = |source| InspectError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    let mut names: Vec<(String, u64)> = Vec::new();
    let mut histories = Vec::new();
    for f in crate::archive::list_dir(dir).map_err(dir_err)? {
        if let Some(tli) = parse_history_file_name(&f.name) {
            let text = std::fs::read(dir.join(&f.name))
                .map_err(|e| format!("could not read: {e}"))
                .and_then(|b| {
                    String::from_utf8(b).map_err(|_| "history file is not valid text".to_string())
                });
            histories.push(HistoryFile { tli, text });
        } else {
            names.push((f.name, f.len));
        }
    }
    names.sort();
    histories.sort_by_key(|h| h.tli);

    let mut headers: HashMap<String, Header> = HashMap::new();
    let mut read_header = |name: &str| -> Header {
        *headers.entry(name.to_string()).or_insert_with(|| {
            let wal = WalFileName::parse(name, MIN_SEG_SIZE).expect("listed as WAL");
            first_bytes(&dir.join(name), wal.compression)
                .map(|b| Header::parse(&b))
                .unwrap_or(Header::Invalid)
        })
    };
    let seg_size = match seg_size {
        Some(s) => s,
        None => names
            .iter()
            .find_map(|(name, _)| match read_header(name) {
                Header::Valid { seg_size, .. }
                    if crate::wal::page::is_valid_seg_size(u64::from(seg_size)) =>
                {
                    Some(u64::from(seg_size))
                }
                _ => None,
            })
            .unwrap_or(DEFAULT_SEGMENT_SIZE),
    };

    let mut listing = Listing {
        seg_size,
        histories,
        ..Listing::default()
    };
    for (name, len) in names {
        match WalFileName::parse(&name, seg_size) {
            Some(wal) => {
                let header = read_header(&name);
                listing.files.push(FileEntry {
                    name,
                    wal,
                    len,
                    header,
                });
            }
            None => listing.problems.push(Problem::new(
                name,
                None,
                format!(
                    "not a valid segment file name for {} segments (the segment number is out of range)",
                    size_text(seg_size)
                ),
            )),
        }
    }
    Ok(listing)
}

/// The first 40 uncompressed bytes (fewer if the file is shorter).
fn first_bytes(path: &Path, compression: Compression) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; LONG_PAGE_HEADER];
    let n = match compression {
        Compression::None => read_up_to(&mut File::open(path)?, &mut buf)?,
        c => read_up_to(&mut SegmentReader::open(path, c)?, &mut buf)?,
    };
    buf.truncate(n);
    Ok(buf)
}

/// "16 MiB", "1 GiB".
pub(crate) fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// A segment file chosen for its place on a timeline.
#[derive(Debug, Clone)]
pub(crate) struct PlannedFile {
    pub entry: FileEntry,
    /// False for a file already reported as unusable (foreign, wrong size): it is not
    /// decoded, and decoding restarts after it.
    pub decode: bool,
    /// A `.partial` with a complete segment of its timeline after it: a hole for recovery,
    /// which never asks for `.partial` names.
    pub stranded: bool,
    /// The timeline's last file, a `.partial`: the WAL being received. A record cut short
    /// at its end (a crash or stop mid-write) is where its valid WAL ends, not damage.
    pub newest_partial: bool,
}

/// A timeline's segment files and what the history files say about it.
#[derive(Debug, Clone)]
pub(crate) struct TimelinePlan {
    pub tli: TimeLineId,
    /// Ascending segment numbers, one file each.
    pub files: Vec<PlannedFile>,
    /// Its ancestors with their switch points, from its own history file when that is
    /// sound (timeline 1 has none).
    pub ancestors: Vec<HistoryEntry>,
    /// Where a child timeline branched off it (the latest such point if several did), and
    /// that child.
    pub end: Option<(Lsn, TimeLineId)>,
}

impl TimelinePlan {
    /// The timeline the WAL at `lsn` was written on, as seen from this timeline's history:
    /// an ancestor below its switch point, else this one.
    pub(crate) fn timeline_at(&self, lsn: Lsn) -> TimeLineId {
        crate::wal::tli_of_point_in_history(&self.ancestors, self.tli, TimeLineId(0), lsn)
    }

    /// Where this timeline began: its parent's switch point.
    pub(crate) fn begins(&self) -> Option<Lsn> {
        self.ancestors.last().map(|e| e.switchpoint)
    }
}

/// What [`plan`] decided: the timelines to decode, and the problems found so far.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    pub seg_size: u64,
    pub sysid: Option<u64>,
    pub timelines: Vec<TimelinePlan>,
    pub problems: Vec<Problem>,
}

/// Applies every rule that needs no decoding; see the module documentation of
/// [`crate::inspect`].
pub(crate) fn plan(listing: Listing) -> Plan {
    let seg_size = listing.seg_size;
    let mut problems = listing.problems;
    let name_of = |tli: TimeLineId, segno: SegNo| SegmentName::new(tli, segno).file_name(seg_size);

    // One file per segment: a complete one over a .partial, then uncompressed first. The
    // others are leftovers (a .partial next to its completed segment) and not read.
    let mut by_segment: BTreeMap<(TimeLineId, SegNo), FileEntry> = BTreeMap::new();
    for f in listing.files {
        let key = (f.wal.segment.tli, f.segno());
        let rank = |f: &FileEntry| (f.wal.partial, compression_rank(f.wal.compression));
        match by_segment.get(&key) {
            Some(have) if rank(have) <= rank(&f) => {
                tracing::info!("{}: ignored, {} holds the same segment", f.name, have.name);
            }
            _ => {
                by_segment.insert(key, f);
            }
        }
    }
    if by_segment.is_empty() {
        problems.push(Problem {
            file: None,
            lsn: None,
            until: None,
            message: "the directory holds no WAL segment files".into(),
        });
    }

    // The archive's system: the identifier most segments carry; a tie goes to the first.
    let mut counts: Vec<(u64, usize)> = Vec::new();
    for f in by_segment.values() {
        if let Header::Valid { sysid, .. } = f.header {
            match counts.iter_mut().find(|(s, _)| *s == sysid) {
                Some((_, n)) => *n += 1,
                None => counts.push((sysid, 1)),
            }
        }
    }
    let best = counts.iter().map(|&(_, n)| n).max().unwrap_or(0);
    let sysid = counts.iter().find(|&&(_, n)| n == best).map(|&(s, _)| s);

    // Timelines and their files.
    let mut timelines: BTreeMap<TimeLineId, TimelinePlan> = BTreeMap::new();
    for ((tli, _), f) in by_segment {
        let mut decode = true;
        if let (Header::Valid { sysid: found, .. }, Some(expected)) = (f.header, sysid) {
            if found != expected {
                decode = false;
                problems.push(Problem::new(
                    &f.name,
                    Some(f.segno().start_lsn(seg_size)),
                    format!(
                        "segment is from another database system: its system identifier is \
                         {found}, the archive's is {expected}"
                    ),
                ));
            }
        }
        if decode && f.wal.compression == Compression::None && !f.wal.partial && f.len != seg_size {
            decode = false;
            problems.push(Problem::new(
                &f.name,
                Some(Lsn(f.segno().start_lsn(seg_size).0 + f.len.min(seg_size))),
                format!(
                    "complete segment file is {} bytes long, a segment is {seg_size}{}",
                    f.len,
                    if f.len < seg_size { " (truncated)" } else { "" }
                ),
            ));
        }
        timelines
            .entry(tli)
            .or_insert_with(|| TimelinePlan {
                tli,
                files: Vec::new(),
                ancestors: Vec::new(),
                end: None,
            })
            .files
            .push(PlannedFile {
                entry: f,
                decode,
                stranded: false,
                newest_partial: false,
            });
    }

    // History files: each must parse, name a parent below itself, and agree with the
    // parent's own history (which must exist for a parent above 1).
    let mut histories: BTreeMap<TimeLineId, Vec<HistoryEntry>> = BTreeMap::new();
    for h in &listing.histories {
        let file = history_file_name(h.tli);
        let parsed = match &h.text {
            Ok(text) => parse_history(text).map_err(|e| format!("cannot parse history file: {e}")),
            Err(e) => Err(e.clone()),
        };
        let entries = match parsed {
            Ok(entries) => entries,
            Err(e) => {
                problems.push(Problem::new(file, None, e));
                continue;
            }
        };
        if h.tli.0 == 1 {
            problems.push(Problem::new(
                file,
                None,
                "timeline 1 has no parent: a history file for it is not written by PostgreSQL",
            ));
            continue;
        }
        let Some(last) = entries.last() else {
            problems.push(Problem::new(
                file,
                None,
                format!(
                    "history file of timeline {} lists no parent timeline",
                    h.tli
                ),
            ));
            continue;
        };
        if last.tli >= h.tli {
            problems.push(Problem::new(
                file,
                None,
                format!(
                    "history file of timeline {} names timeline {} as its parent; a parent's id \
                     must be lower",
                    h.tli, last.tli
                ),
            ));
            continue;
        }
        if let Some(w) = entries
            .windows(2)
            .find(|w| w[1].switchpoint < w[0].switchpoint)
        {
            problems.push(Problem::new(
                file,
                Some(w[1].switchpoint),
                format!(
                    "switch points go backwards: timeline {} ends at {}, before timeline {} \
                     ended at {}",
                    w[1].tli, w[1].switchpoint, w[0].tli, w[0].switchpoint
                ),
            ));
            continue;
        }
        histories.insert(h.tli, entries);
    }
    let mut sound: BTreeMap<TimeLineId, Vec<HistoryEntry>> = BTreeMap::new();
    for (&tli, entries) in &histories {
        let file = history_file_name(tli);
        let parent = entries.last().expect("checked above").tli;
        if parent.0 > 1 {
            let parent_file = history_file_name(parent);
            match histories.get(&parent) {
                None => {
                    let why = if listing.histories.iter().any(|h| h.tli == parent) {
                        "is unusable (see its own problem)"
                    } else {
                        "is missing"
                    };
                    problems.push(Problem::new(
                        file,
                        None,
                        format!(
                            "the history of timeline {tli} is broken: its parent timeline \
                             {parent}'s history file {parent_file} {why}"
                        ),
                    ));
                    continue;
                }
                Some(pe) => {
                    let own = &entries[..entries.len() - 1];
                    let agree = own.len() == pe.len()
                        && own
                            .iter()
                            .zip(pe)
                            .all(|(a, b)| a.tli == b.tli && a.switchpoint == b.switchpoint);
                    if !agree {
                        problems.push(Problem::new(
                            file,
                            None,
                            format!(
                                "the history of timeline {tli} disagrees with its parent's \
                                 history file {parent_file} about the timelines before {parent}"
                            ),
                        ));
                        continue;
                    }
                }
            }
        }
        sound.insert(tli, entries.clone());
    }

    // Where each timeline ended: the latest point a child branched off it.
    let mut ends: BTreeMap<TimeLineId, (Lsn, TimeLineId)> = BTreeMap::new();
    for (&child, entries) in &sound {
        for e in entries {
            let cur = ends.entry(e.tli).or_insert((e.switchpoint, child));
            if e.switchpoint > cur.0 {
                *cur = (e.switchpoint, child);
            }
        }
    }

    for tl in timelines.values_mut() {
        let last_complete = tl.files.iter().rposition(|f| !f.entry.wal.partial);
        for (i, f) in tl.files.iter_mut().enumerate() {
            f.stranded = f.entry.wal.partial && last_complete.is_some_and(|c| c > i);
        }
        if let Some(last) = tl.files.last_mut() {
            last.newest_partial = last.entry.wal.partial;
        }
        tl.end = ends.get(&tl.tli).copied();
        match sound.get(&tl.tli) {
            Some(entries) => tl.ancestors = entries.clone(),
            None if tl.tli.0 > 1 && !listing.histories.iter().any(|h| h.tli == tl.tli) => {
                problems.push(Problem::new(
                    history_file_name(tl.tli),
                    None,
                    format!(
                        "timeline {} has segments in the archive but no history file",
                        tl.tli
                    ),
                ));
            }
            None => {}
        }

        // Gaps inside the timeline.
        for w in tl.files.windows(2) {
            let (a, b) = (w[0].entry.segno(), w[1].entry.segno());
            if b.0 > a.0 + 1 {
                problems.push(gap(
                    tl.tli,
                    SegNo(a.0 + 1),
                    SegNo(b.0 - 1),
                    seg_size,
                    &name_of,
                ));
            }
        }
        // Segments wholly past the timeline's end, or wholly before its beginning.
        if let Some((end, child)) = tl.end {
            for f in &tl.files {
                let start = f.entry.segno().start_lsn(seg_size);
                if start >= end {
                    problems.push(Problem::new(
                        &f.entry.name,
                        Some(start),
                        format!(
                            "segment lies past the end of timeline {} at {end}, where timeline \
                             {child} branched off (per {})",
                            tl.tli,
                            history_file_name(child)
                        ),
                    ));
                }
            }
        }
        if let Some(begins) = tl.begins() {
            for f in &tl.files {
                let start = f.entry.segno().start_lsn(seg_size);
                if start.0 + seg_size <= begins.0 {
                    problems.push(Problem::new(
                        &f.entry.name,
                        Some(start),
                        format!(
                            "segment lies before the start of timeline {} at {begins} (per {})",
                            tl.tli,
                            history_file_name(tl.tli)
                        ),
                    ));
                }
            }
        }
    }

    // Gaps between a parent's last segment and its child's first, when both are archived:
    // the parent's segments are needed up to the one before the switch point's, the child's
    // from that one on.
    let firsts_lasts: BTreeMap<TimeLineId, (SegNo, SegNo)> = timelines
        .iter()
        .filter_map(|(&t, tl)| {
            Some((
                t,
                (
                    tl.files.first()?.entry.segno(),
                    tl.files.last()?.entry.segno(),
                ),
            ))
        })
        .collect();
    for tl in timelines.values() {
        let (Some(parent), Some(begins)) = (tl.ancestors.last(), tl.begins()) else {
            continue;
        };
        let (Some(&(child_first, _)), Some(&(parent_first, parent_last))) =
            (firsts_lasts.get(&tl.tli), firsts_lasts.get(&parent.tli))
        else {
            continue;
        };
        let switch_seg = begins.segno(seg_size);
        if parent_last.0 + 1 < switch_seg.0 && parent_first < switch_seg {
            problems.push(gap(
                parent.tli,
                SegNo(parent_last.0 + 1),
                SegNo(switch_seg.0 - 1),
                seg_size,
                &name_of,
            ));
        }
        if child_first > switch_seg {
            problems.push(gap(
                tl.tli,
                switch_seg,
                SegNo(child_first.0 - 1),
                seg_size,
                &name_of,
            ));
        }
    }

    Plan {
        seg_size,
        sysid,
        timelines: timelines.into_values().collect(),
        problems,
    }
}

fn compression_rank(c: Compression) -> u8 {
    match c {
        Compression::None => 0,
        Compression::Gzip => 1,
        Compression::Lz4 => 2,
        Compression::Zstd => 3,
    }
}

/// Segments `first..=last` of `tli` are missing.
fn gap(
    tli: TimeLineId,
    first: SegNo,
    last: SegNo,
    seg_size: u64,
    name_of: &dyn Fn(TimeLineId, SegNo) -> String,
) -> Problem {
    let n = last.0 - first.0 + 1;
    let what = if n == 1 {
        "missing segment".to_string()
    } else {
        format!(
            "missing {n} segments {}..{}",
            name_of(tli, first),
            name_of(tli, last)
        )
    };
    Problem {
        until: Some(last.next().start_lsn(seg_size)),
        ..Problem::new(
            name_of(tli, first),
            Some(first.start_lsn(seg_size)),
            format!(
                "{what}: timeline {tli} has no WAL from {} to {}",
                first.start_lsn(seg_size),
                last.next().start_lsn(seg_size)
            ),
        )
    }
}
