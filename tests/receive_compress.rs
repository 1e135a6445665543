//! `walferry receive -Z`: each compression method yields segments whose decompressed bytes
//! (decompressed by the system's gzip/lz4/zstd programs) are the server's WAL, and
//! pg_receivewal resumes a walferry gzip or lz4 directory.

mod common;
mod receive_support;

use common::{format_lsn, segment_name, tempdir, PgCluster};
use receive_support::*;

#[test]
fn each_compression_decompresses_to_the_servers_wal() {
    let pg = PgCluster::primary();
    let methods = [
        ("gzip", ".gz", [0x1f, 0x8b, 0x08, 0x00]),
        ("lz4", ".lz4", [0x04, 0x22, 0x4d, 0x18]),
        ("zstd", ".zst", [0x28, 0xb5, 0x2f, 0xfd]),
    ];
    let mut slot_lsn = 0;
    for (method, _, _) in methods {
        slot_lsn = pg.create_physical_slot(method);
    }
    emit_wal(&pg, 36);
    small_commit(&pg);
    let endpos = flush_lsn(&pg);
    let first = segment_name(1, slot_lsn);
    let last = segment_name(1, endpos);

    for (method, suffix, magic) in methods {
        let dir = tempdir();
        run_ok(walferry(&pg, dir.path()).args([
            "-S",
            method,
            "-Z",
            method,
            "-E",
            &format_lsn(endpos),
        ]));
        let segs = complete_segments(dir.path());
        assert!(segs.len() >= 2, "{method}: {:?}", list_dir(dir.path()));
        for (_, file) in &segs {
            assert!(file.ends_with(suffix), "{method}: {file}");
            // Really compressed: the format's magic number (hex WAL payload is hardly
            // compressible by lz4, so sizes prove nothing).
            let bytes = std::fs::read(dir.path().join(file)).unwrap();
            assert_eq!(bytes[..4], magic[..], "{method}: {file}");
        }
        assert_contiguous(dir.path(), 1, &first);
        assert_complete_segments_match(dir.path(), &pg);

        // The tail is a finished compressed stream holding the server's bytes to endpos.
        let partial = format!("{last}{suffix}.partial");
        assert_eq!(
            partial_segments(dir.path()),
            vec![partial.clone()],
            "{method}"
        );
        // Stopping at endpos closes the compressed stream properly.
        assert_decompresses_cleanly(&dir.path().join(&partial));
        for (_, file) in &segs {
            assert_decompresses_cleanly(&dir.path().join(file));
        }
        assert_partial_prefix(
            &dir.path().join(&partial),
            &pg.wal_segment_path(&last),
            segment_start_lsn(&last),
            endpos,
        );
    }
}

#[test]
fn pg_receivewal_resumes_a_walferry_gzip_or_lz4_directory() {
    let pg = PgCluster::primary();
    for (method, suffix) in [("gzip", ".gz"), ("lz4", ".lz4")] {
        let dir = tempdir();
        let slot_lsn = pg.create_physical_slot(method);
        emit_wal(&pg, 20);
        small_commit(&pg);
        let a = flush_lsn(&pg);
        run_ok(walferry(&pg, dir.path()).args(["-S", method, "-Z", method, "-E", &format_lsn(a)]));
        let walferry_segments = complete_segments(dir.path());
        let walferry_bytes: Vec<Vec<u8>> = walferry_segments
            .iter()
            .map(|(_, f)| std::fs::read(dir.path().join(f)).unwrap())
            .collect();
        let partial_seg = segment_name(1, a);
        assert_eq!(
            partial_segments(dir.path()),
            vec![format!("{partial_seg}{suffix}.partial")]
        );

        emit_wal(&pg, 20);
        small_commit(&pg);
        let b = flush_lsn(&pg);
        let out = run_to_endpos_ok(
            &pg,
            pg_receivewal(&pg, dir.path()).args([
                "-S",
                method,
                &format!("--compress={method}"),
                "-E",
                &format_lsn(b),
                "-v",
            ]),
        );
        // pg_receivewal restarted at walferry's .partial segment, not earlier.
        let restart = format!(
            "starting log streaming at {} (timeline 1)",
            format_lsn(segment_start_lsn(&partial_seg))
        );
        assert!(
            stderr_of(&out).contains(&restart),
            "{method}: {}",
            stderr_of(&out)
        );

        // walferry's complete files are untouched; the whole range has no gap and every
        // complete segment, whoever wrote it, is the server's.
        for ((_, f), bytes) in walferry_segments.iter().zip(&walferry_bytes) {
            assert_eq!(&std::fs::read(dir.path().join(f)).unwrap(), bytes, "{f}");
        }
        let n = assert_contiguous(dir.path(), 1, &segment_name(1, slot_lsn));
        assert_eq!(
            segno_of(&segment_name(1, slot_lsn)) + n as u64,
            segno_of(&segment_name(1, b))
        );
        assert_complete_segments_match(dir.path(), &pg);
        for (_, f) in complete_segments(dir.path()) {
            assert!(f.ends_with(suffix), "{f}");
        }
        pg.drop_slot(method);
    }
}
