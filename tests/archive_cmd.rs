//! `walferry archive-push` as a real PostgreSQL 15 primary's archive_command and `walferry
//! archive-get` as a restored cluster's restore_command: segments archived byte-identical,
//! a restore from a base backup plus the archive recovers every row, a damaged segment
//! aborts recovery with the file and LSN in the server log (never a silent early end), and
//! the exit statuses and prefetch spool as documented.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{client_command, tempdir, wait_until, PgCluster, StandbyOptions, TIMEOUT};

fn bin() -> String {
    common::walferry_bin().to_string_lossy().into_owned()
}

/// A primary that archives into `repo` with `walferry archive-push` (extra flags `push`).
fn archiving_primary(repo: &Path, push: &str) -> PgCluster {
    PgCluster::builder()
        .conf("archive_mode = on")
        .conf(format!(
            "archive_command = '{} archive-push --repo {} {push} %p'",
            bin(),
            repo.display()
        ))
        .start()
}

/// Waits until `segment` is archived; returns pg_stat_archiver's failed_count.
fn wait_archived(pg: &PgCluster, segment: &str) -> u64 {
    wait_until(&format!("{segment} archived"), TIMEOUT, || {
        pg.psql(&format!(
            "SELECT last_archived_wal >= '{segment}' FROM pg_stat_archiver"
        )) == "t"
    });
    pg.psql("SELECT failed_count FROM pg_stat_archiver")
        .parse()
        .unwrap()
}

fn restore_command(repo: &Path, extra: &str) -> String {
    format!(
        "{} archive-get --repo {} {extra} %f %p",
        bin(),
        repo.display()
    )
}

fn walferry(args: &[&str]) -> Output {
    client_command(common::walferry_bin())
        .args(args)
        .output()
        .expect("run walferry")
}

/// The complete segment names in `repo/wal`, sorted.
fn archived_segments(repo: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(repo.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 24)
        .collect();
    names.sort();
    names
}

#[test]
fn archive_push_archives_and_a_restore_from_the_archive_recovers_every_row() {
    let repo = tempdir();
    let pg = archiving_primary(repo.path(), "");
    pg.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)");
    let first = pg.switch_wal();
    assert_eq!(wait_archived(&pg, &first), 0);

    let mut restore = PgCluster::standby_of(
        &pg,
        StandbyOptions::new()
            .restore_command(restore_command(repo.path(), ""))
            .no_start(),
    );
    // WAL after the backup, only in the archive.
    pg.psql("INSERT INTO t SELECT generate_series(1001, 5000)");
    pg.generate_wal(40);
    pg.psql("INSERT INTO t SELECT generate_series(5001, 6000)");
    let last = pg.switch_wal();
    assert_eq!(wait_archived(&pg, &last), 0, "no archive_command failed");

    // Byte-identical to what the server wrote.
    let segments = archived_segments(repo.path());
    assert!(segments.len() >= 4, "{segments:?}");
    for name in &segments {
        let ours = fs::read(repo.path().join("wal").join(name)).unwrap();
        if let Ok(theirs) = fs::read(pg.wal_segment_path(name)) {
            assert!(ours == theirs, "{name} differs from pg_wal's");
        }
    }
    assert!(
        fs::read_dir(repo.path().join("wal")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".backup")),
        "the backup history file is archived"
    );

    restore.start();
    wait_until("the restore to finish recovery", TIMEOUT, || {
        !restore.is_in_recovery()
    });
    assert_eq!(restore.psql("SELECT count(*), max(id) FROM t"), "6000|6000");
    let log = restore.server_log();
    assert!(log.contains("archive recovery complete"), "{log}");
    assert!(
        log.contains(&format!("restored log file \"{last}\" from archive")),
        "{log}"
    );
    assert!(!log.contains("FATAL"), "{log}");
    // The promoted restore archives too: its timeline's history file arrives.
    assert_eq!(restore.timeline(), 2);
    wait_until("00000002.history archived", TIMEOUT, || {
        repo.path().join("wal/00000002.history").is_file()
    });
}

#[test]
fn a_damaged_segment_aborts_recovery_with_file_and_lsn_in_the_server_log() {
    let repo = tempdir();
    let pg = archiving_primary(repo.path(), "-Z lz4");
    pg.psql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)");
    let first = pg.switch_wal();
    wait_archived(&pg, &first);
    let mut restore = PgCluster::standby_of(
        &pg,
        StandbyOptions::new()
            .restore_command(restore_command(repo.path(), ""))
            .no_start(),
    );
    pg.generate_wal(48);
    pg.psql("INSERT INTO t SELECT generate_series(1001, 2000)");
    let last = pg.switch_wal();
    assert_eq!(wait_archived(&pg, &last), 0);

    // Damage one byte in the middle of a segment recovery needs after the backup.
    let names: Vec<String> = fs::read_dir(repo.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".lz4") && n.len() == 28)
        .collect();
    let mut names = names;
    names.sort();
    let victim = names[names.len() - 2].clone();
    let segment = victim.trim_end_matches(".lz4").to_string();
    let path = repo.path().join("wal").join(&victim);
    let mut bytes = lz4_decompress(&fs::read(&path).unwrap());
    bytes[9_000_000] ^= 0x08;
    fs::write(&path, lz4_compress(&bytes)).unwrap();

    // Recovery may reach consistency first (then pg_ctl sees the server up) or not.
    let _ = restore.try_start();
    wait_until("recovery to abort", TIMEOUT, || {
        restore.server_log().contains("restore_command")
            && restore.server_log().contains("exit code 255")
    });
    wait_until("the server to stop", TIMEOUT, || {
        restore.pid().is_none_or(|p| !common::pid_alive(p))
            && !restore.data_dir().join("postmaster.pid").exists()
    });
    let log = restore.server_log();
    assert!(
        log.contains(&format!("\"{}\" is damaged at 0/", path.display())),
        "{log}"
    );
    assert!(log.contains("FATAL"), "{log}");
    assert!(!log.contains("archive recovery complete"), "{log}");
    assert!(!log.contains("selected new timeline ID"), "{log}");
    assert!(
        !log.contains(&format!("restored log file \"{segment}\"")),
        "{log}"
    );
}

fn lz4_decompress(b: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    lz4_flex::frame::FrameDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn lz4_compress(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[test]
fn exit_statuses_prefetch_and_repeated_pushes() {
    let repo = tempdir();
    let pg = archiving_primary(repo.path(), "-Z zstd");
    pg.psql("CREATE TABLE t (id int)");
    pg.generate_wal(80);
    let last = pg.switch_wal();
    assert_eq!(wait_archived(&pg, &last), 0);
    let segments: Vec<String> = archived_names(repo.path(), ".zst");
    assert!(segments.len() >= 5, "{segments:?}");
    let repo_arg = repo.path().to_str().unwrap();
    let work = tempdir();
    let dest = work.path().join("RECOVERYXLOG");
    let dest_arg = dest.to_str().unwrap();
    let spool = work.path().join("spool");
    let spool_arg = spool.to_str().unwrap();

    // Not there: 1, nothing printed; bad input: 255, which aborts recovery.
    let out = walferry(&[
        "archive-get",
        "--repo",
        repo_arg,
        "0000000100000000000000FF",
        dest_arg,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    assert!(!dest.exists());
    let out = walferry(&[
        "archive-get",
        "--repo",
        repo_arg,
        "00000002.history",
        dest_arg,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    for args in [
        vec!["archive-get", "--repo", repo_arg, dest_arg, &segments[0]],
        vec![
            "archive-get",
            "--repo",
            "/nonexistent/repo",
            &segments[0],
            dest_arg,
        ],
        vec!["archive-get", "--repo", repo_arg, &segments[0]],
        vec![
            "archive-get",
            "--repo",
            repo_arg,
            "--prefetch",
            "x",
            &segments[0],
            dest_arg,
        ],
    ] {
        let out = walferry(&args);
        assert_eq!(out.status.code(), Some(255), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty());
    }

    // Served decompressed, identical to what the server wrote; the next ones prefetched.
    let (first, rest) = (&segments[0], &segments[1..5]);
    let out = walferry(&[
        "archive-get",
        "--repo",
        repo_arg,
        "--spool",
        spool_arg,
        "--prefetch",
        "4",
        first,
        dest_arg,
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(fs::read(&dest).unwrap() == fs::read(pg.wal_segment_path(first)).unwrap());
    wait_until("the spool to hold the next 4 segments", TIMEOUT, || {
        rest.iter().all(|s| spool.join(s).is_file())
    });
    let started = Instant::now();
    let out = walferry(&[
        "archive-get",
        "-v",
        "--repo",
        repo_arg,
        "--spool",
        spool_arg,
        "--prefetch",
        "4",
        &rest[0],
        dest_arg,
    ]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("served from the spool"),
        "{out:?}"
    );
    assert!(fs::read(&dest).unwrap() == fs::read(pg.wal_segment_path(&rest[0])).unwrap());
    assert!(!spool.join(&rest[0]).exists(), "taken from the spool");
    assert!(took < Duration::from_secs(5));

    // The same segment pushed again: success, said at -v; other WAL under its name: failure.
    let seg_path = pg.wal_segment_path(first);
    let out = walferry(&[
        "archive-push",
        "-v",
        "--repo",
        repo_arg,
        seg_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already archived"),
        "{out:?}"
    );
    // Another segment's bytes under this name fail their checks before anything else.
    let impostor: PathBuf = work.path().join(first);
    fs::copy(pg.wal_segment_path(&segments[1]), &impostor).unwrap();
    let out = walferry(&[
        "archive-push",
        "--repo",
        repo_arg,
        impostor.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unexpected pageaddr"), "{err}");
    // Two clusters promoted to the same timeline: the second history file is refused.
    let history = work.path().join("00000002.history");
    fs::write(&history, "1\t0/5000028\tno recovery target specified\n").unwrap();
    let push_history = || {
        walferry(&[
            "archive-push",
            "--repo",
            repo_arg,
            history.to_str().unwrap(),
        ])
    };
    assert_eq!(push_history().status.code(), Some(0));
    assert_eq!(push_history().status.code(), Some(0));
    fs::write(&history, "1\t0/6000028\tno recovery target specified\n").unwrap();
    let out = push_history();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(history.to_str().unwrap()) && err.contains("wal/00000002.history"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(repo.path().join("wal/00000002.history")).unwrap(),
        "1\t0/5000028\tno recovery target specified\n",
        "never overwritten"
    );
}

fn archived_names(repo: &Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(repo.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|n| n.strip_suffix(suffix).map(str::to_string))
        .filter(|n| n.len() == 24)
        .collect();
    names.sort();
    names
}
