//! The prefetch spool of `archive-get`: segments recovery will ask for next, fetched,
//! checked and decompressed ahead of time by a background worker, so that the call for
//! one is a rename.
//!
//! The spool holds only complete segments of the archive, under their own names, each
//! written as a dot-named temporary file, fsynced and renamed (so a file with a segment
//! name is whole even after a crash). A complete segment never changes in the archive (a
//! different one under the same name is refused), so a spooled copy stays right for as long
//! as it is kept; a `.partial`'s end-of-timeline answer can change and is never spooled.
//! The spool remembers which archive it was filled from (`source`), and is emptied when
//! `archive-get` is pointed at another one.
//!
//! One worker at a time fills it (an exclusive `flock(2)` on `.lock`). It works towards the
//! window after the segment recovery asked for last (`wanted`, rewritten by each call), and
//! reads that again after each segment, so a running worker follows recovery forward.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::get::{next_segment, GetError, Getter};
use crate::wal::page::is_valid_seg_size;
use crate::wal::SegmentName;

const LOCK: &str = ".lock";
const WANTED: &str = "wanted";
const SOURCE: &str = "source";

/// A spool directory; see the module documentation.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// The worker's lock, released when dropped (or when the process ends, however it ends).
#[derive(Debug)]
pub struct SpoolLock {
    _file: File,
}

/// What a worker run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filled {
    /// Segments written into the spool.
    pub spooled: Vec<String>,
    /// Why it stopped early, when not because the window was full: the archive has no
    /// complete segment yet, or an error the foreground call will meet again.
    pub stopped: Option<String>,
}

impl Spool {
    /// The spool in `dir`, made (owner-only) when missing; its parent must exist.
    pub fn open(dir: &Path) -> io::Result<Spool> {
        use std::os::unix::fs::DirBuilderExt;
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(e),
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Empties the spool when it was filled from another archive than `source`, and records
    /// `source` as its archive.
    pub fn adopt(&self, source: &Path) -> io::Result<()> {
        let source = fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
        let text = source.to_string_lossy().into_owned();
        let marker = self.dir.join(SOURCE);
        match fs::read_to_string(&marker) {
            Ok(had) if had == text => return Ok(()),
            Ok(_) => self.clear()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.clear()?,
            Err(e) => return Err(e),
        }
        self.write_small(SOURCE, text.as_bytes())
    }

    /// Moves the spooled segment `name` to `dest`; false when it is not spooled.
    pub fn take(&self, name: &str, dest: &Path) -> io::Result<bool> {
        match fs::rename(self.dir.join(name), dest) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Records `name` as the segment recovery asked for last, and removes spooled segments
    /// before it (recovery has gone past them).
    pub fn want(&self, name: &str, seg_size: u64) -> io::Result<()> {
        if let Some(at) = SegmentName::parse(name, seg_size) {
            for file in self.segments(seg_size)? {
                if SegmentName::parse(&file, seg_size).is_some_and(|s| s.segno <= at.segno) {
                    let _ = fs::remove_file(self.dir.join(&file));
                }
            }
        }
        self.write_small(WANTED, format!("{name} {seg_size}\n").as_bytes())
    }

    /// The segment recovery asked for last, with the segment size.
    pub fn wanted(&self) -> Option<(String, u64)> {
        let text = fs::read_to_string(self.dir.join(WANTED)).ok()?;
        let (name, size) = text.trim().split_once(' ')?;
        let size: u64 = size.parse().ok()?;
        (is_valid_seg_size(size) && SegmentName::parse(name, size).is_some())
            .then(|| (name.to_string(), size))
    }

    /// The segments of the window of `n` after `name` that are not spooled, in order.
    pub fn missing(&self, name: &str, seg_size: u64, n: u64) -> Vec<String> {
        (1..=n)
            .filter_map(|k| next_segment(name, seg_size, k))
            .filter(|s| !self.dir.join(s).exists())
            .collect()
    }

    /// The spooled segment names.
    pub fn segments(&self, seg_size: u64) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if SegmentName::parse(&name, seg_size).is_some() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Takes the worker lock, waiting up to `wait` for a worker that is finishing; `None`
    /// when another worker keeps it.
    pub fn lock(&self, wait: Duration) -> io::Result<Option<SpoolLock>> {
        let path = self.dir.join(LOCK);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let deadline = Instant::now() + wait;
        loop {
            // SAFETY: flock on a valid, open file descriptor; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(Some(SpoolLock { _file: file }));
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(err);
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The worker: while the window of `n` segments after the wanted one has gaps, fetches
    /// the first missing one (complete segments only, checked) into the spool. Call with the
    /// lock held.
    pub fn fill(&self, getter: &Getter, n: u64, _lock: &SpoolLock) -> Filled {
        self.remove_temporaries();
        let mut out = Filled::default();
        while let Some((want, seg_size)) = self.wanted() {
            let Some(next) = self.missing(&want, seg_size, n).into_iter().next() else {
                return out;
            };
            let fetched = match getter.fetch_segment(&next, true) {
                Ok(f) => f,
                Err(e) => {
                    out.stopped = Some(match e {
                        GetError::NotFound { .. } => format!("{next} is not in the archive yet"),
                        e => e.to_string(),
                    });
                    return out;
                }
            };
            if let Err(e) = self.store(&next, &fetched.bytes) {
                out.stopped = Some(format!("could not spool {next}: {e}"));
                return out;
            }
            out.spooled.push(next);
        }
        out
    }

    fn store(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let result = File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
            .and_then(|()| fs::rename(&tmp, self.dir.join(name)))
            .and_then(|()| File::open(&self.dir).and_then(|d| d.sync_all()));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn write_small(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let result = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, self.dir.join(name)));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Everything but the lock file.
    fn clear(&self) -> io::Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_name() != LOCK && entry.file_type()?.is_file() {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Temporary files a killed worker left (only the lock holder writes them).
    fn remove_temporaries(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") && name.len() == 24 + 5 {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::synth::WalBuilder;
    use crate::wal::{Lsn, SegNo, TimeLineId};

    const SEG: u64 = 1 << 20;

    fn name(segno: u64) -> String {
        SegmentName::new(TimeLineId(1), SegNo(segno)).file_name(SEG)
    }

    #[test]
    fn the_worker_fills_the_window_after_the_wanted_segment_with_complete_segments_only() {
        let mut b = WalBuilder::new(Lsn(2 * SEG), TimeLineId(1), SEG, 1);
        while b.end().0 < 6 * SEG + 5000 {
            b.filler(3000);
        }
        let archive = tempfile::tempdir().unwrap();
        for segno in 2..=5 {
            let from = ((segno - 2) * SEG) as usize;
            fs::write(
                archive.path().join(name(segno)),
                &b.bytes()[from..from + SEG as usize],
            )
            .unwrap();
        }
        let mut last = b.bytes()[4 * SEG as usize..].to_vec();
        last.resize(SEG as usize, 0);
        fs::write(archive.path().join(format!("{}.partial", name(6))), last).unwrap();

        let pg_wal = tempfile::tempdir().unwrap();
        let spool = Spool::open(&pg_wal.path().join("walferry-spool")).unwrap();
        spool.adopt(archive.path()).unwrap();
        spool.want(&name(2), SEG).unwrap();
        assert_eq!(spool.wanted(), Some((name(2), SEG)));
        assert_eq!(spool.missing(&name(2), SEG, 3), [name(3), name(4), name(5)]);

        let getter = Getter::new(archive.path(), None).unwrap();
        let lock = spool.lock(Duration::ZERO).unwrap().unwrap();
        assert!(
            spool.lock(Duration::ZERO).unwrap().is_none(),
            "one worker at a time"
        );
        let filled = spool.fill(&getter, 8, &lock);
        // Segment 6 is a .partial: never spooled.
        assert_eq!(filled.spooled, [name(3), name(4), name(5)]);
        assert!(filled.stopped.unwrap().contains(&name(6)));
        assert_eq!(spool.segments(SEG).unwrap(), [name(3), name(4), name(5)]);

        let dest = pg_wal.path().join("RECOVERYXLOG");
        assert!(spool.take(&name(3), &dest).unwrap());
        assert_eq!(
            fs::read(&dest).unwrap(),
            &b.bytes()[SEG as usize..2 * SEG as usize]
        );
        assert!(!spool.take(&name(3), &dest).unwrap());
        // Recovery asked for 4 (not from the spool): 4 and earlier go.
        spool.want(&name(4), SEG).unwrap();
        assert_eq!(spool.segments(SEG).unwrap(), [name(5)]);

        // Pointed at another archive: emptied.
        let other = tempfile::tempdir().unwrap();
        spool.adopt(other.path()).unwrap();
        assert!(spool.segments(SEG).unwrap().is_empty());
    }
}
