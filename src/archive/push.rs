//! Storing one file PostgreSQL's `archive_command` hands over (`walferry archive-push`):
//! a segment, the `.partial` of an old timeline's last segment (archived at promotion), a
//! `%08X.history` file or a `.backup` history file, into an archive directory.
//!
//! PostgreSQL recycles the file once the command succeeds, so success means durable: the
//! file is written under a temporary dot name (which no scan takes for WAL), fsynced,
//! renamed to its final name without ever replacing one (`renameat2(RENAME_NOREPLACE)`),
//! and the directory fsynced. PostgreSQL retries a failed command and may push a file again
//! after a crash: the same contents under a name already archived (in any compression) is
//! success, different contents an error naming both files, never an overwrite.
//!
//! A segment is checked before it is stored (page headers, records, CRC-32C, as
//! [`WalDecoder`] checks them; the record crossing its end is checked when the next
//! segment is read) and must come from the archive's database system. A `.partial` is
//! checked up to where its WAL ends: what follows the switch point of a promoted timeline
//! is whatever the recycled file held, which `archive-get` never serves.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{rename_noreplace, Archive, ArchiveError, CompressionSpec, SegmentReader};
use crate::wal::page::{is_valid_seg_size, SegmentHeader};
use crate::wal::{parse_history, Compression, SegmentName, WalDecoder, WalFileName};

use super::get::Wanted;

/// What happened to a pushed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// Stored under `name`, durably.
    Stored { name: String },
    /// The archive already held the same contents under `name`.
    AlreadyArchived { name: String },
}

/// Why a push failed. PostgreSQL keeps the file and retries.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(
        "\"{name}\" is not the name of a WAL segment (or its .partial), timeline history or \
         backup history file"
    )]
    BadName { name: String },
    #[error("refusing to archive \"{}\": {why}", path.display())]
    Invalid { path: PathBuf, why: String },
    #[error(
        "\"{}\" is already archived as \"{}\" with different contents; refusing to overwrite it",
        source_path.display(),
        archived.display()
    )]
    Conflict {
        source_path: PathBuf,
        archived: PathBuf,
    },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

impl PushError {
    fn invalid(path: &Path, why: impl Into<String>) -> Self {
        PushError::Invalid {
            path: path.to_path_buf(),
            why: why.into(),
        }
    }
}

/// Stores the file at `src` in the archive directory `dir`; segments compressed as
/// `compression` says (history and backup history files never are). See the module
/// documentation.
pub fn push(
    dir: &Path,
    src: &Path,
    compression: CompressionSpec,
    no_sync: bool,
) -> Result<Pushed, PushError> {
    let name = src
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let (base, partial) = match name.strip_suffix(".partial") {
        Some(base) => (base, true),
        None => (name.as_str(), false),
    };
    let bad_name = || PushError::BadName { name: name.clone() };
    let wanted = Wanted::parse(base).ok_or_else(bad_name)?;
    let bytes = fs::read(src).map_err(|e| ArchiveError::io("read", src, e))?;
    match wanted {
        Wanted::Segment(_) => {
            let (seg_size, sysid) = check_segment(src, base, &bytes, partial)?;
            let archive = Archive::open(dir, seg_size, compression, no_sync)?;
            archive.check_system_identifier(sysid)?;
            let segment = SegmentName::parse(base, seg_size).ok_or_else(bad_name)?;
            store_segment(&archive, src, segment, partial, &bytes)
        }
        Wanted::History(_) if !partial => {
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| PushError::invalid(src, "a history file is text"))?;
            parse_history(text).map_err(|e| PushError::invalid(src, e.to_string()))?;
            let archive =
                Archive::open(dir, crate::wal::DEFAULT_SEGMENT_SIZE, compression, no_sync)?;
            store_whole(
                &archive,
                src,
                &name,
                &bytes,
                CompressionSpec::None,
                &[&name],
            )
        }
        Wanted::BackupHistory(_) if !partial => {
            if !bytes.starts_with(b"START WAL LOCATION: ") {
                return Err(PushError::invalid(
                    src,
                    "a backup history file begins with \"START WAL LOCATION: \"",
                ));
            }
            let archive =
                Archive::open(dir, crate::wal::DEFAULT_SEGMENT_SIZE, compression, no_sync)?;
            store_whole(
                &archive,
                src,
                &name,
                &bytes,
                CompressionSpec::None,
                &[&name],
            )
        }
        _ => Err(bad_name()),
    }
}

/// Checks a segment (or `.partial`) about to be archived; returns its segment size and
/// database system identifier.
fn check_segment(
    src: &Path,
    base: &str,
    bytes: &[u8],
    partial: bool,
) -> Result<(u64, u64), PushError> {
    let (seg_size, sysid) = match SegmentHeader::parse(bytes) {
        SegmentHeader::Valid { seg_size, sysid } if is_valid_seg_size(u64::from(seg_size)) => {
            (u64::from(seg_size), sysid)
        }
        _ => {
            return Err(PushError::invalid(
                src,
                "it does not begin with the long page header of a WAL segment",
            ))
        }
    };
    if bytes.len() as u64 != seg_size {
        return Err(PushError::invalid(
            src,
            format!(
                "it holds {} bytes, but its header says segments are {seg_size} bytes",
                bytes.len()
            ),
        ));
    }
    let segment = SegmentName::parse(base, seg_size).ok_or_else(|| {
        PushError::invalid(
            src,
            format!("\"{base}\" is no segment name for {seg_size}-byte segments"),
        )
    })?;
    let start = segment.segno.start_lsn(seg_size);
    let mut dec = WalDecoder::new(start, segment.tli, seg_size, None)
        .map_err(|e| PushError::invalid(src, e.to_string()))?;
    let _ = dec.feed_with(bytes, |_| {});
    match (dec.error(), dec.end_of_wal()) {
        // A .partial's WAL ends where it ends; its first page must still be this segment's.
        (Some(e), _) if partial && !e.is_foreign() && e.lsn() > start => Ok((seg_size, sysid)),
        (_, Some(_)) if partial => Ok((seg_size, sysid)),
        (Some(e), _) => Err(PushError::invalid(
            src,
            format!("it fails validation at {}: {e}", e.lsn()),
        )),
        (None, Some(at)) => Err(PushError::invalid(
            src,
            format!(
                "its WAL stops at {at} inside a complete segment (zeros where a record or page \
                 header should be)"
            ),
        )),
        (None, None) => Ok((seg_size, sysid)),
    }
}

fn store_segment(
    archive: &Archive,
    src: &Path,
    segment: SegmentName,
    partial: bool,
    bytes: &[u8],
) -> Result<Pushed, PushError> {
    let seg_size = archive.seg_size();
    let names: Vec<String> = [
        Compression::None,
        Compression::Lz4,
        Compression::Zstd,
        Compression::Gzip,
    ]
    .into_iter()
    .map(|compression| {
        WalFileName {
            segment,
            compression,
            partial,
        }
        .file_name(seg_size)
    })
    .collect();
    let name = WalFileName {
        segment,
        compression: archive.compression().kind(),
        partial,
    }
    .file_name(seg_size);
    let others: Vec<&str> = names.iter().map(String::as_str).collect();
    store_whole(archive, src, &name, bytes, archive.compression(), &others)
}

/// Stores `bytes` as `name` unless one of `names` (the same file in any compression) is
/// there already: then the same contents is success and different contents a conflict.
fn store_whole(
    archive: &Archive,
    src: &Path,
    name: &str,
    bytes: &[u8],
    compression: CompressionSpec,
    names: &[&str],
) -> Result<Pushed, PushError> {
    if let Some(found) = existing(archive, src, bytes, names)? {
        return Ok(found);
    }
    let dest = archive.path_of(name);
    let tmp = archive.path_of(&format!(".{name}.{}.push.tmp", std::process::id()));
    let result =
        write_file(&tmp, bytes, compression, archive.no_sync()).and_then(
            |()| match rename_noreplace(&tmp, &dest) {
                Ok(()) => archive.sync_dir().map(|()| None),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Some(())),
                Err(e) => Err(ArchiveError::io("rename", &tmp, e)),
            },
        );
    let _ = fs::remove_file(&tmp);
    match result? {
        None => Ok(Pushed::Stored {
            name: name.to_string(),
        }),
        // Another push of the same file got there first.
        Some(()) => existing(archive, src, bytes, names)?.ok_or_else(|| {
            PushError::Archive(ArchiveError::io(
                "rename",
                &dest,
                io::Error::from(io::ErrorKind::AlreadyExists),
            ))
        }),
    }
}

/// The copy of the file already archived under one of `names`, compared with `bytes`.
fn existing(
    archive: &Archive,
    src: &Path,
    bytes: &[u8],
    names: &[&str],
) -> Result<Option<Pushed>, PushError> {
    for name in names {
        let path = archive.path_of(name);
        if !path.is_file() {
            continue;
        }
        let compression = WalFileName::parse(name, archive.seg_size())
            .map_or(Compression::None, |w| w.compression);
        let same = SegmentReader::read_all(&path, compression)
            .map(|have| have == bytes)
            .unwrap_or(false);
        if same {
            return Ok(Some(Pushed::AlreadyArchived {
                name: name.to_string(),
            }));
        }
        return Err(PushError::Conflict {
            source_path: src.to_path_buf(),
            archived: path,
        });
    }
    Ok(None)
}

/// Writes `bytes` to a new file `path`, compressed as `compression` says, and fsyncs it.
fn write_file(
    path: &Path,
    bytes: &[u8],
    compression: CompressionSpec,
    no_sync: bool,
) -> Result<(), ArchiveError> {
    let io_err = |e| ArchiveError::io("write", path, e);
    let file = File::create(path).map_err(|e| ArchiveError::io("create", path, e))?;
    let file = match compression {
        CompressionSpec::None => {
            let mut f = file;
            f.write_all(bytes).map_err(io_err)?;
            f
        }
        CompressionSpec::Gzip(level) => {
            let mut w = flate2::write::GzEncoder::new(file, flate2::Compression::new(level));
            w.write_all(bytes).map_err(io_err)?;
            w.finish().map_err(io_err)?
        }
        CompressionSpec::Lz4 => {
            let mut w = lz4_flex::frame::FrameEncoder::new(file);
            w.write_all(bytes).map_err(io_err)?;
            w.finish().map_err(|e| io_err(io::Error::other(e)))?
        }
        CompressionSpec::Zstd(level) => {
            let mut w = zstd::stream::write::Encoder::new(file, level).map_err(io_err)?;
            w.write_all(bytes).map_err(io_err)?;
            w.finish().map_err(io_err)?
        }
    };
    if !no_sync {
        file.sync_all()
            .map_err(|e| ArchiveError::io("fsync", path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::synth::WalBuilder;
    use crate::wal::{Lsn, SegNo, TimeLineId};

    const SEG: u64 = 1 << 20;
    const SYSID: u64 = 7_401_234_567_890_123_457;

    fn segment(sysid: u64) -> Vec<u8> {
        segment_of_records(sysid, 700)
    }

    /// Segment 3: records of `len` bytes, then an XLOG SWITCH.
    fn segment_of_records(sysid: u64, len: usize) -> Vec<u8> {
        let mut b = WalBuilder::new(Lsn(3 * SEG), TimeLineId(1), SEG, sysid);
        while b.end().0 + 2 * len as u64 + 100 < 4 * SEG {
            b.filler(len);
        }
        b.switch();
        b.into_bytes()
    }

    fn name() -> String {
        SegmentName::new(TimeLineId(1), SegNo(3)).file_name(SEG)
    }

    /// `bytes` as a pg_wal file named `name`.
    fn pg_wal(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn a_segment_is_stored_once_identical_repushes_succeed_and_different_ones_fail() {
        let archive = tempfile::tempdir().unwrap();
        let a = archive.path();
        let bytes = segment(SYSID);
        let (_w, src) = pg_wal(&name(), &bytes);
        let stored = push(a, &src, CompressionSpec::Zstd(3), false).unwrap();
        let zst = format!("{}.zst", name());
        assert_eq!(stored, Pushed::Stored { name: zst.clone() });
        assert_eq!(
            SegmentReader::read_all(&a.join(&zst), Compression::Zstd).unwrap(),
            bytes
        );
        // Again, and again uncompressed: the archived copy is compared decompressed.
        for spec in [CompressionSpec::Zstd(3), CompressionSpec::None] {
            assert_eq!(
                push(a, &src, spec, false).unwrap(),
                Pushed::AlreadyArchived { name: zst.clone() }
            );
        }
        let names: Vec<_> = fs::read_dir(a)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            names,
            std::slice::from_ref(&zst),
            "no temporary file left behind"
        );

        // Other WAL under the same name (another cluster's): refused, nothing replaced.
        let (_w2, other) = pg_wal(&name(), &segment(SYSID + 1));
        let err = push(a, &other, CompressionSpec::None, false).unwrap_err();
        assert!(
            matches!(err, PushError::Archive(ArchiveError::SystemMismatch { .. })),
            "{err}"
        );
        let (_w3, diverged) = pg_wal(&name(), &segment_of_records(SYSID, 900));
        match push(a, &diverged, CompressionSpec::None, false).unwrap_err() {
            PushError::Conflict {
                archived,
                source_path,
            } => {
                assert!(archived.ends_with(&zst));
                assert_eq!(source_path, diverged);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            SegmentReader::read_all(&a.join(&zst), Compression::Zstd).unwrap(),
            bytes
        );
    }

    #[test]
    fn damaged_or_misnamed_files_are_refused() {
        let archive = tempfile::tempdir().unwrap();
        let mut bytes = segment(SYSID);
        bytes[300_000] ^= 0x20;
        let (_w, src) = pg_wal(&name(), &bytes);
        let err = push(archive.path(), &src, CompressionSpec::None, false).unwrap_err();
        assert!(matches!(err, PushError::Invalid { .. }), "{err}");
        let (_w, short) = pg_wal(&name(), &segment(SYSID)[..8192]);
        assert!(matches!(
            push(archive.path(), &short, CompressionSpec::None, false),
            Err(PushError::Invalid { .. })
        ));
        let (_w, odd) = pg_wal("RECOVERYXLOG", &segment(SYSID));
        assert!(matches!(
            push(archive.path(), &odd, CompressionSpec::None, false),
            Err(PushError::BadName { .. })
        ));
        assert_eq!(fs::read_dir(archive.path()).unwrap().count(), 0);
    }

    #[test]
    fn history_backup_and_partial_files_are_stored_as_they_are() {
        let archive = tempfile::tempdir().unwrap();
        let a = archive.path();
        let (_w, h) = pg_wal(
            "00000002.history",
            b"1\t0/3000100\tno recovery target specified\n",
        );
        assert!(matches!(
            push(a, &h, CompressionSpec::Lz4, false).unwrap(),
            Pushed::Stored { name } if name == "00000002.history"
        ));
        assert!(matches!(
            push(a, &h, CompressionSpec::Lz4, false).unwrap(),
            Pushed::AlreadyArchived { .. }
        ));
        let (_w, bad) = pg_wal("00000003.history", b"nonsense\n");
        assert!(push(a, &bad, CompressionSpec::None, false).is_err());
        let backup = "000000010000000000000003.00000028.backup";
        let (_w, bk) = pg_wal(backup, b"START WAL LOCATION: 0/3000028 (file x)\n");
        push(a, &bk, CompressionSpec::None, false).unwrap();
        assert!(a.join(backup).is_file());

        // A promoted server's .partial: valid WAL, then what the recycled file held.
        let mut partial = segment(SYSID);
        partial[600_000..].iter_mut().for_each(|x| *x = 0x5a);
        let (_w, p) = pg_wal(&format!("{}.partial", name()), &partial);
        assert!(matches!(
            push(a, &p, CompressionSpec::Gzip(1), false).unwrap(),
            Pushed::Stored { name: n } if n == format!("{}.gz.partial", name())
        ));
    }
}
