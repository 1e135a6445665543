//! Reading an archive directory: which segments and history files it holds, and where
//! streaming resumes (as pg_receivewal's FindStreamingStart, and past it: see
//! [`ArchiveScan::streaming_start`]).

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::ArchiveError;
use crate::wal::{parse_history_file_name, Compression, Lsn, TimeLineId, WalFileName};

/// A regular file of an archive directory whose name is a WAL segment or history file name.
#[derive(Debug, Clone)]
pub struct DirFile {
    pub name: String,
    /// Size as stored (compressed or not).
    pub len: u64,
}

/// The one listing of an archive directory, for the receiver and `inspect` alike: the
/// regular files with WAL segment names (valid for some segment size) or history file names.
/// Symbolic links are followed (an archive may link segments in from elsewhere); anything
/// that is not a regular file, or vanishes while listed, is left out.
pub fn list_dir(dir: &Path) -> std::io::Result<Vec<DirFile>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let is_wal = parse_history_file_name(&name).is_some()
            || WalFileName::parse(&name, crate::wal::page::MIN_SEG_SIZE).is_some();
        if !is_wal {
            continue;
        }
        let Ok(meta) = fs::metadata(entry.path()) else {
            continue;
        };
        if meta.is_file() {
            files.push(DirFile {
                name,
                len: meta.len(),
            });
        }
    }
    Ok(files)
}

#[derive(Debug, Clone)]
pub struct ScannedFile {
    pub name: String,
    pub wal: WalFileName,
    pub len: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ArchiveScan {
    pub segments: Vec<ScannedFile>,
    pub histories: Vec<TimeLineId>,
}

impl ArchiveScan {
    pub fn read(dir: &Path, seg_size: u64) -> Result<Self, ArchiveError> {
        let mut scan = ArchiveScan::default();
        let files = list_dir(dir).map_err(|e| ArchiveError::io("read directory", dir, e))?;
        for DirFile { name, len } in files {
            if let Some(tli) = parse_history_file_name(&name) {
                scan.histories.push(tli);
                continue;
            }
            let Some(wal) = WalFileName::parse(&name, seg_size) else {
                continue;
            };
            if !wal.partial && !cheap_size_ok(&dir.join(&name), &wal, len, seg_size) {
                warn_wrong_size(&name);
                continue;
            }
            scan.segments.push(ScannedFile { name, wal, len });
        }
        scan.segments.sort_by_key(|f| order_key(&f.wal));
        scan.histories.sort();
        // An .lz4/.zst segment's length is known only by decompressing it: done for the
        // newest complete segment alone (the one resume depends on), not for the whole
        // archive at every reconnect; `verify` reads them all.
        while let Some(i) = scan.segments.iter().rposition(|f| !f.wal.partial) {
            let f = &scan.segments[i];
            let compressed = matches!(f.wal.compression, Compression::Lz4 | Compression::Zstd);
            if !compressed
                || super::compress::uncompressed_len(&dir.join(&f.name), f.wal.compression)
                    .is_ok_and(|n| n == seg_size)
            {
                break;
            }
            warn_wrong_size(&f.name);
            scan.segments.remove(i);
        }
        Ok(scan)
    }

    /// Newest first, by (segment number, timeline), complete before partial.
    pub fn segments_newest_first(&self) -> impl Iterator<Item = &ScannedFile> {
        self.segments.iter().rev()
    }

    /// Where streaming resumes: after the newest complete segment, or at the start of the
    /// newest `.partial` one, as pg_receivewal's FindStreamingStart — except that a run of
    /// `.partial` files of consecutive segments on the newest timeline resumes at the oldest
    /// of them. A full segment stays `.partial` until the record crossing its end has been
    /// checked, and the next segment's `.partial` exists by then; a stop in that window
    /// leaves both, and resuming at the newer one would strand the older one forever (a hole
    /// no restore can cross).
    pub fn streaming_start(&self, seg_size: u64) -> Option<(Lsn, TimeLineId)> {
        let newest = self.segments.last()?;
        let seg = newest.wal.segment;
        if !newest.wal.partial {
            return Some((seg.segno.next().start_lsn(seg_size), seg.tli));
        }
        let oldest = self.partial_run().first()?.wal.segment;
        Some((oldest.segno.start_lsn(seg_size), oldest.tli))
    }

    /// The `.partial` files of consecutive segments on the newest timeline that end the
    /// archive, oldest first (one segment may have several, compressed or not); empty when the
    /// newest file is complete.
    pub fn partial_run(&self) -> Vec<&ScannedFile> {
        let Some(newest) = self.segments.last().filter(|f| f.wal.partial) else {
            return Vec::new();
        };
        let tli = newest.wal.segment.tli;
        let on = |segno: crate::wal::SegNo| {
            self.segments
                .iter()
                .filter(move |f| f.wal.segment.tli == tli && f.wal.segment.segno == segno)
        };
        let mut segno = newest.wal.segment.segno;
        while segno.0 > 0 {
            let prev = crate::wal::SegNo(segno.0 - 1);
            let only_partial = on(prev).next().is_some() && on(prev).all(|f| f.wal.partial);
            if !only_partial {
                break;
            }
            segno = prev;
        }
        let mut run: Vec<&ScannedFile> = (segno.0..=newest.wal.segment.segno.0)
            .flat_map(|n| on(crate::wal::SegNo(n)))
            .collect();
        run.sort_by_key(|f| order_key(&f.wal));
        run
    }

    pub fn paths(&self, dir: &Path) -> Vec<PathBuf> {
        self.segments.iter().map(|f| dir.join(&f.name)).collect()
    }
}

/// Sort key: as FindStreamingStart picks its "high" file, a higher segment wins, then a
/// higher timeline, then a complete file over a partial one.
fn order_key(wal: &WalFileName) -> (u64, u32, bool) {
    (wal.segment.segno.0, wal.segment.tli.0, !wal.partial)
}

fn warn_wrong_size(name: &str) {
    tracing::warn!(
        "segment file \"{name}\" has the wrong size for a complete segment; ignoring it"
    );
}

/// pg_receivewal's sanity checks for a complete segment that cost no decompression: an
/// uncompressed file must be exactly one segment long; a gzip file's trailer must say so
/// (ISIZE, modulo 2^32). An lz4 or zstd file must decompress to one segment (pg_receivewal 15
/// decompresses .lz4 files too): see [`ArchiveScan::read`].
fn cheap_size_ok(path: &Path, wal: &WalFileName, len: u64, seg_size: u64) -> bool {
    match wal.compression {
        Compression::None => len == seg_size,
        Compression::Gzip => {
            let isize = (|| {
                let mut f = File::open(path).ok()?;
                f.seek(SeekFrom::End(-4)).ok()?;
                let mut b = [0u8; 4];
                f.read_exact(&mut b).ok()?;
                Some(u32::from_le_bytes(b))
            })();
            isize == Some(seg_size as u32)
        }
        Compression::Lz4 | Compression::Zstd => len > 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn touch(dir: &Path, name: &str, len: u64) {
        let f = File::create(dir.join(name)).unwrap();
        f.set_len(len).unwrap();
    }

    #[test]
    fn start_follows_find_streaming_start() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(ArchiveScan::read(d, SEG)
            .unwrap()
            .streaming_start(SEG)
            .is_none());

        touch(d, "000000010000000000000003", SEG);
        touch(d, "000000010000000000000002", SEG);
        let scan = ArchiveScan::read(d, SEG).unwrap();
        assert_eq!(
            scan.streaming_start(SEG),
            Some((Lsn(4 * SEG), TimeLineId(1)))
        );

        // A partial of the next segment restarts that segment.
        touch(d, "000000010000000000000004.partial", SEG);
        let scan = ArchiveScan::read(d, SEG).unwrap();
        assert_eq!(
            scan.streaming_start(SEG),
            Some((Lsn(4 * SEG), TimeLineId(1)))
        );

        // A newer timeline at the same segment wins.
        touch(d, "000000020000000000000004.gz.partial", 100);
        touch(d, "00000002.history", 10);
        let scan = ArchiveScan::read(d, SEG).unwrap();
        assert_eq!(
            scan.streaming_start(SEG),
            Some((Lsn(4 * SEG), TimeLineId(2)))
        );
        assert_eq!(scan.histories, vec![TimeLineId(2)]);
    }

    /// Regression: a full segment N waits as `.partial` until the record crossing into N+1
    /// is checked, and N+1's `.partial` exists by then. A stop in that window left both, and
    /// resume started at N+1: N was never streamed again nor renamed.
    #[test]
    fn a_run_of_partials_resumes_at_its_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        touch(d, "000000010000000000000002", SEG);
        touch(d, "000000010000000000000003.partial", SEG);
        touch(d, "000000010000000000000004.partial", SEG);
        let start = |d| ArchiveScan::read(d, SEG).unwrap().streaming_start(SEG);
        assert_eq!(start(d), Some((Lsn(3 * SEG), TimeLineId(1))));
        // Also when the run reaches the first file, and for compressed files.
        let dir2 = tempfile::tempdir().unwrap();
        let d2 = dir2.path();
        touch(d2, "000000010000000000000007.zst.partial", 50);
        touch(d2, "000000010000000000000008.zst.partial", 50);
        assert_eq!(start(d2), Some((Lsn(7 * SEG), TimeLineId(1))));
        // A .partial of another timeline (the parent's last segment) does not extend the run.
        let dir3 = tempfile::tempdir().unwrap();
        let d3 = dir3.path();
        touch(d3, "000000010000000000000005.partial", SEG);
        touch(d3, "000000020000000000000005", SEG);
        touch(d3, "000000020000000000000006.partial", SEG);
        assert_eq!(start(d3), Some((Lsn(6 * SEG), TimeLineId(2))));
        // A .partial beside its own completed segment is a leftover, not part of a run.
        touch(d, "000000010000000000000003", SEG);
        assert_eq!(start(d), Some((Lsn(4 * SEG), TimeLineId(1))));
    }

    #[test]
    fn symlinked_segments_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        touch(elsewhere.path(), "seg", SEG);
        std::os::unix::fs::symlink(
            elsewhere.path().join("seg"),
            dir.path().join("000000010000000000000009"),
        )
        .unwrap();
        let scan = ArchiveScan::read(dir.path(), SEG).unwrap();
        assert_eq!(scan.segments.len(), 1);
    }

    #[test]
    fn wrong_sized_complete_segments_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        touch(d, "000000010000000000000002", SEG);
        touch(d, "000000010000000000000003", 8192);
        touch(d, "not-wal", 1);
        let scan = ArchiveScan::read(d, SEG).unwrap();
        assert_eq!(scan.segments.len(), 1);
        assert_eq!(
            scan.streaming_start(SEG),
            Some((Lsn(3 * SEG), TimeLineId(1)))
        );
    }
}
