//! Is the backup's WAL in the repository? A base backup restores only with the WAL from
//! its start to its stop position, and walferry does not copy WAL into the backup: it relies
//! on `walferry receive -D REPO/wal` streaming this cluster's WAL. So a backup looks at the
//! archive twice: before it starts, to warn when nothing seems to archive there, and at the
//! end, to wait (bounded) until the archive holds WAL up to the stop position. A receiver
//! streams the current segment as `.partial`, so no WAL switch is needed: the
//! [`ArchiveReader`] serves a `.partial` up to its valid end.

use std::path::Path;

use crate::archive::{Archive, ArchiveReader, CompressionSpec, ReaderError};
use crate::wal::{Lsn, TimeLineId};

/// Why the archive in `wal_dir` does not look fed by a receiver of system `system_id`,
/// whose WAL is now at `current` (IDENTIFY_SYSTEM); `None` when it does: its newest WAL is
/// this system's and reaches the current segment or the one before (a receiver keeps the
/// current segment as `.partial`).
pub fn archive_warning(
    wal_dir: &Path,
    system_id: u64,
    current: Lsn,
    seg_size: u64,
) -> Option<String> {
    let archive = match Archive::open(wal_dir, seg_size, CompressionSpec::None, true) {
        Ok(a) => a,
        Err(e) => return Some(format!("the WAL archive cannot be read: {e}")),
    };
    match archive.system_identifier() {
        Ok(Some(found)) if found != system_id => {
            return Some(format!(
                "the WAL archive \"{}\" holds WAL of another database system ({found}, this \
                 server is {system_id})",
                wal_dir.display()
            ))
        }
        Ok(Some(_)) => {}
        Ok(None) => {
            return Some(format!(
                "the WAL archive \"{}\" holds no WAL",
                wal_dir.display()
            ))
        }
        Err(e) => return Some(format!("the WAL archive cannot be read: {e}")),
    }
    let newest = archive
        .scan()
        .ok()
        .and_then(|s| s.segments.last().map(|f| f.wal.segment.segno.0));
    let current_segno = current.segno(seg_size).0;
    match newest {
        Some(n) if n + 1 >= current_segno => None,
        _ => Some(format!(
            "the newest WAL in the archive \"{}\" is older than the server's current segment \
             (nothing seems to be streaming into it)",
            wal_dir.display()
        )),
    }
}

/// Whether the archive holds timeline `tli`'s WAL up to `stop` (exclusive): the segment
/// holding the byte before `stop` is there, complete or `.partial` valid past `stop`.
/// `Err` carries why not, for the message when waiting gives up.
pub fn wal_reaches(
    wal_dir: &Path,
    seg_size: u64,
    tli: TimeLineId,
    stop: Lsn,
) -> Result<(), String> {
    let mut reader = ArchiveReader::open(wal_dir, seg_size).map_err(|e| e.to_string())?;
    let history = reader.history(tli).map_err(|e| e.to_string())?;
    let last = Lsn(stop.0.saturating_sub(1));
    match reader.locate(tli, &history, last) {
        Ok(src) if src.end >= stop => Ok(()),
        Ok(src) => Err(format!(
            "the archive's WAL ends at {} (in \"{}\")",
            src.end,
            src.path.display()
        )),
        Err(e @ (ReaderError::NotFound { .. } | ReaderError::PastValidEnd { .. })) => {
            Err(e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}
