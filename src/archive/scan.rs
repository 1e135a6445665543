//! Reading an archive directory: which segments and history files it holds, and where
//! streaming resumes (as pg_receivewal's FindStreamingStart).

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::ArchiveError;
use crate::wal::{parse_history_file_name, Compression, Lsn, TimeLineId, WalFileName};

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
        let entries = fs::read_dir(dir).map_err(|e| ArchiveError::io("read directory", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ArchiveError::io("read directory", dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if let Some(tli) = parse_history_file_name(&name) {
                scan.histories.push(tli);
                continue;
            }
            let Some(wal) = WalFileName::parse(&name, seg_size) else {
                continue;
            };
            let meta = entry
                .metadata()
                .map_err(|e| ArchiveError::io("stat", &entry.path(), e))?;
            if !meta.is_file() {
                continue;
            }
            if !wal.partial && !complete_size_ok(&entry.path(), &wal, meta.len(), seg_size) {
                tracing::warn!(
                    "segment file \"{name}\" has the wrong size for a complete segment; ignoring it"
                );
                continue;
            }
            scan.segments.push(ScannedFile {
                name,
                wal,
                len: meta.len(),
            });
        }
        scan.segments.sort_by_key(|f| order_key(&f.wal));
        scan.histories.sort();
        Ok(scan)
    }

    /// Newest first, by (segment number, timeline), complete before partial.
    pub fn segments_newest_first(&self) -> impl Iterator<Item = &ScannedFile> {
        self.segments.iter().rev()
    }

    pub fn streaming_start(&self, seg_size: u64) -> Option<(Lsn, TimeLineId)> {
        let newest = self.segments.last()?;
        let seg = newest.wal.segment;
        let segno = if newest.wal.partial {
            seg.segno
        } else {
            seg.segno.next()
        };
        Some((segno.start_lsn(seg_size), seg.tli))
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

/// pg_receivewal's sanity checks for a complete segment: an uncompressed file must be
/// exactly one segment long; a gzip file's trailer must say so (ISIZE, modulo 2^32); an
/// lz4 or zstd file must decompress to it (pg_receivewal 15 decompresses .lz4 files too).
fn complete_size_ok(path: &Path, wal: &WalFileName, len: u64, seg_size: u64) -> bool {
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
        Compression::Lz4 | Compression::Zstd => {
            super::compress::uncompressed_len(path, wal.compression).is_ok_and(|n| n == seg_size)
        }
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
