//! `walferry backup` against a real PostgreSQL 15 primary with a tablespace, and
//! `restore::layout::lay_out` on what it stored: every compression lays out a data
//! directory that `pg_verifybackup` accepts; a delta restore of an unchanged copy writes
//! nothing and one of a damaged copy rewrites exactly the damaged file; an interrupted or
//! killed backup is never listed; and a backup whose WAL nothing archives is not kept.

mod common;
mod receive_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{client_command, pg_bin, tempdir, wait_until, walferry_bin, PgCluster};
use receive_support::{run_bounded, stderr_of, Proc};
use walferry::repo::{BackupInfo, Repo};
use walferry::restore::layout::{lay_out, LayoutError, LayoutOptions, LayoutStats};

/// A primary with a table in the default tablespace and one in tablespace `ts`.
struct Setup {
    pg: PgCluster,
    ts_dir: tempfile::TempDir,
    repo_dir: tempfile::TempDir,
    repo: Repo,
}

fn setup() -> Setup {
    let pg = PgCluster::primary();
    let ts_dir = tempdir();
    pg.psql(&format!(
        "CREATE TABLESPACE ts LOCATION '{}'",
        ts_dir.path().display()
    ));
    pg.psql(
        "CREATE TABLE plain AS SELECT g, md5(g::text) AS h FROM generate_series(1, 20000) g;
         CREATE TABLE spaced TABLESPACE ts AS SELECT g, repeat('y', 200) AS pad \
           FROM generate_series(1, 5000) g;",
    );
    let repo_dir = tempfile::Builder::new()
        .prefix("walferry-repo-")
        .tempdir()
        .unwrap();
    let repo = Repo::open(repo_dir.path()).unwrap();
    Setup {
        pg,
        ts_dir,
        repo_dir,
        repo,
    }
}

fn backup_cmd(s: &Setup) -> Command {
    let mut cmd = client_command(walferry_bin());
    cmd.arg("backup")
        .arg("--repo")
        .arg(s.repo_dir.path())
        .arg("-d")
        .arg(s.pg.conninfo(common::roles::SUPERUSER));
    cmd
}

fn receiver(s: &Setup) -> Proc {
    let mut cmd = client_command(walferry_bin());
    cmd.arg("receive")
        .arg("-D")
        .arg(s.repo.wal_dir())
        .arg("-d")
        .arg(s.pg.conninfo(common::roles::SUPERUSER));
    let proc = Proc::spawn(&mut cmd);
    wait_until(
        "the receiver's first .partial",
        Duration::from_secs(30),
        || {
            std::fs::read_dir(s.repo.wal_dir())
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        },
    );
    proc
}

fn run_backup(cmd: &mut Command) -> (BackupId, Output) {
    // Bounded by the backup itself (connect timeout, --wal-timeout).
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "backup failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim()
        .to_string();
    (BackupId(id), out)
}

struct BackupId(String);

/// `pg_verifybackup -n -m MANIFEST PGDATA` (no WAL check: the WAL is in the repository).
fn verify(manifest: &Path, pgdata: &Path) {
    let out = client_command(pg_bin("pg_verifybackup"))
        .arg("-n")
        .arg("-m")
        .arg(manifest)
        .arg(pgdata)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup failed on {}:\n{}{}",
        pgdata.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn layout_opts(info: &BackupInfo, ts_target: &Path, delta: bool) -> LayoutOptions {
    LayoutOptions {
        delta,
        tablespace_map: vec![(info.tablespaces[0].oid, ts_target.to_path_buf())],
        threads: 2,
    }
}

#[test]
fn backups_in_each_compression_lay_out_and_pass_pg_verifybackup() {
    let s = setup();
    let mut recv = receiver(&s);
    let mut ids = Vec::new();
    for (z, ext) in [
        ("none", ""),
        ("lz4", ".lz4"),
        ("zstd:3", ".zst"),
        ("gzip:1", ".gz"),
    ] {
        let (id, out) = run_backup(backup_cmd(&s).args(["-Z", z]));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "",
            "quiet without -v and a terminal"
        );
        let dir = s.repo.backup_dir(&id.0);
        assert!(dir.join("backup_manifest").is_file());
        assert!(
            dir.join(format!("data/PG_VERSION{ext}")).is_file(),
            "{z}: each file stored on its own"
        );
        ids.push((id.0, z));
    }
    recv.kill9();

    let list = s.repo.list().unwrap();
    assert_eq!(
        list.iter().map(|b| b.id.clone()).collect::<Vec<_>>(),
        ids.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>()
    );
    let sysid =
        s.pg.psql("SELECT system_identifier FROM pg_control_system()");
    for info in &list {
        assert!(info.wal_checked);
        assert_eq!(info.method, "protocol");
        assert_eq!(info.system_id, sysid.trim());
        assert_eq!(info.tablespaces.len(), 1);
        assert_eq!(
            Path::new(&info.tablespaces[0].location),
            s.ts_dir.path(),
            "tablespace location as on the server"
        );
        assert!(info.start_lsn < info.stop_lsn);
        assert!(info
            .contents
            .symlinks
            .iter()
            .any(|l| l.path == format!("pg_tblspc/{}", info.tablespaces[0].oid)));
        assert!(info.files > 900, "{} files", info.files);
        if info.compression != "none" {
            assert!(
                info.stored_size * 2 < info.size,
                "{}: {} stored for {}",
                info.compression,
                info.stored_size,
                info.size
            );
        }

        let target = tempdir();
        let pgdata = target.path().join("pgdata");
        let ts = target.path().join("ts");
        let stats = lay_out(&s.repo, info, &pgdata, &layout_opts(info, &ts, false)).unwrap();
        assert_eq!(stats.files_written, info.files);
        assert_eq!(stats.bytes_written, info.size);
        assert_eq!(stats.files_kept, 0);
        verify(
            &s.repo.backup_dir(&info.id).join("backup_manifest"),
            &pgdata,
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&pgdata).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(
            std::fs::read_link(pgdata.join(format!("pg_tblspc/{}", info.tablespaces[0].oid)))
                .unwrap(),
            ts
        );
    }
}

fn relation_path(pg: &PgCluster, table: &str) -> String {
    pg.psql(&format!("SELECT pg_relation_filepath('{table}')"))
        .trim()
        .to_string()
}

#[test]
fn delta_keeps_unchanged_files_and_rewrites_damaged_and_removes_extra_ones() {
    let s = setup();
    let (id, _) = run_backup(backup_cmd(&s).args(["-Z", "lz4", "--no-wait-wal"]));
    let info = s.repo.find(&id.0).unwrap();
    assert!(!info.wal_checked, "--no-wait-wal is recorded");
    let manifest = s.repo.backup_dir(&info.id).join("backup_manifest");

    let target = tempdir();
    let pgdata = target.path().join("pgdata");
    let ts = target.path().join("ts");
    let first = lay_out(&s.repo, &info, &pgdata, &layout_opts(&info, &ts, false)).unwrap();

    // Not into a non-empty directory without --delta.
    let e = lay_out(&s.repo, &info, &pgdata, &layout_opts(&info, &ts, false)).unwrap_err();
    assert!(matches!(e, LayoutError::NotEmpty { .. }), "{e}");

    let unchanged = lay_out(&s.repo, &info, &pgdata, &layout_opts(&info, &ts, true)).unwrap();
    assert_eq!(
        unchanged,
        LayoutStats {
            files_written: 0,
            bytes_written: 0,
            files_kept: first.files_written,
            bytes_kept: first.bytes_written,
        }
    );
    verify(&manifest, &pgdata);

    // Damage: a block of the tablespace table changed in place, a file of the data
    // directory cut short, and files the backup does not hold in both places.
    let spaced = pgdata.join(relation_path(&s.pg, "spaced"));
    let mut bytes = std::fs::read(&spaced).unwrap();
    bytes[9000..9100].fill(0xAA);
    std::fs::write(&spaced, &bytes).unwrap();
    let plain = pgdata.join(relation_path(&s.pg, "plain"));
    let plain_len = std::fs::metadata(&plain).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&plain)
        .unwrap()
        .set_len(8192)
        .unwrap();
    let extra = plain.with_file_name("999999");
    std::fs::write(&extra, b"stale").unwrap();
    let ts_version_dir = std::fs::read_dir(&ts)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let ts_extra = ts_version_dir.join("stale");
    std::fs::write(&ts_extra, b"stale").unwrap();
    // Beside the version directory: not the backup's business, left alone.
    let ts_neighbour = ts.join("PG_99_neighbour");
    std::fs::write(&ts_neighbour, b"keep").unwrap();

    // A symbolic link where a file belongs is replaced, never written through.
    let outside = target.path().join("outside");
    std::fs::write(&outside, b"do not touch").unwrap();
    let version = pgdata.join("PG_VERSION");
    std::fs::remove_file(&version).unwrap();
    std::os::unix::fs::symlink(&outside, &version).unwrap();

    let repaired = lay_out(&s.repo, &info, &pgdata, &layout_opts(&info, &ts, true)).unwrap();
    assert_eq!(repaired.files_written, 3, "{repaired:?}");
    assert_eq!(repaired.bytes_written, bytes.len() as u64 + plain_len + 3);
    assert_eq!(repaired.files_kept, first.files_written - 3);
    assert_eq!(std::fs::read(&outside).unwrap(), b"do not touch");
    assert_eq!(std::fs::read(&version).unwrap(), b"15\n");
    assert!(!extra.exists() && !ts_extra.exists());
    assert!(ts_neighbour.exists());
    // pg_verifybackup would (rightly) report it as not in the backup.
    std::fs::remove_file(&ts_neighbour).unwrap();
    verify(&manifest, &pgdata);
}

fn partial_dirs(repo: &Repo) -> Vec<PathBuf> {
    std::fs::read_dir(repo.backups_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .map(|e| e.path())
        .collect()
}

/// Spawn a slowed-down backup and wait until it has stored some files.
fn slow_backup(s: &Setup) -> Proc {
    let proc = Proc::spawn(backup_cmd(s).args(["--max-rate", "512k", "--no-wait-wal"]));
    wait_until("the backup to store files", Duration::from_secs(60), || {
        partial_dirs(&s.repo)
            .first()
            .is_some_and(|p| p.join("data/base").is_dir())
    });
    proc
}

#[test]
fn an_interrupted_or_killed_backup_is_never_listed_and_leftovers_go() {
    let s = setup();

    let mut interrupted = slow_backup(&s);
    interrupted.signal(libc::SIGINT);
    let status = interrupted.wait();
    assert_eq!(status.code(), Some(1), "{}", interrupted.stderr());
    assert!(interrupted.stderr().contains("nothing was kept"));
    assert!(
        partial_dirs(&s.repo).is_empty(),
        "SIGINT removes the partial backup"
    );
    assert!(s.repo.list().unwrap().is_empty());

    let mut killed = slow_backup(&s);
    killed.kill9();
    assert_eq!(
        partial_dirs(&s.repo).len(),
        1,
        "a crash leaves its partial directory"
    );
    assert!(s.repo.list().unwrap().is_empty(), "but no backup");

    let (id, _) = run_backup(backup_cmd(&s).args(["--no-wait-wal"]));
    assert!(
        partial_dirs(&s.repo).is_empty(),
        "the next backup removes the leftover"
    );
    let list = s.repo.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, id.0);
}

#[test]
fn a_backup_whose_wal_nothing_archives_warns_and_is_not_kept() {
    let s = setup();
    let out = run_bounded(
        backup_cmd(&s).args(["--wal-timeout", "2"]),
        Duration::from_secs(120),
    );
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("nothing seems to archive this server's WAL"),
        "warned before the backup: {err}"
    );
    assert!(err.contains("backup not kept"), "{err}");
    assert!(
        err.contains(&format!(
            "walferry receive -D {}",
            s.repo.wal_dir().display()
        )),
        "says what to run: {err}"
    );
    assert!(s.repo.list().unwrap().is_empty());
    assert!(partial_dirs(&s.repo).is_empty());
}

/// The repository's disk fills during the backup: a clear error naming the cause, exit 1,
/// and no backup nor partial directory left.
#[test]
fn a_full_repository_disk_fails_the_backup_cleanly() {
    let Some(small) = common::Tmpfs::mount("6m") else {
        return;
    };
    let pg = PgCluster::primary();
    pg.psql("CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 200000) g");
    let repo = Repo::open(&small.path).unwrap();
    let mut cmd = client_command(walferry_bin());
    cmd.arg("backup")
        .arg("--repo")
        .arg(&small.path)
        .arg("-d")
        .arg(pg.conninfo(common::roles::SUPERUSER))
        .arg("--no-wait-wal");
    let out = run_bounded(&mut cmd, Duration::from_secs(120));
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("nothing was kept"), "{err}");
    assert!(repo.list().unwrap().is_empty());
    assert!(
        partial_dirs(&repo).is_empty(),
        "the partial backup was removed"
    );
}

/// `--pgdata` naming another cluster's directory: an error naming both system
/// identifiers, exit 1, nothing kept.
#[test]
fn a_pgdata_of_another_cluster_is_refused_naming_both_systems() {
    let s = setup();
    let other = PgCluster::primary();
    let out = run_bounded(
        backup_cmd(&s)
            .arg("--no-wait-wal")
            .arg("--pgdata")
            .arg(other.data_dir()),
        Duration::from_secs(120),
    );
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let ours = s.pg.system_identifier().to_string();
    let theirs = other.system_identifier().to_string();
    assert!(
        err.contains(&ours) && err.contains(&theirs),
        "names both system identifiers: {err}"
    );
    assert!(err.contains("hint: --pgdata must be"), "{err}");
    assert!(s.repo.list().unwrap().is_empty());
    assert!(partial_dirs(&s.repo).is_empty());

    // Not a data directory at all.
    let out = run_bounded(
        backup_cmd(&s)
            .arg("--no-wait-wal")
            .arg("--pgdata")
            .arg(s.ts_dir.path()),
        Duration::from_secs(120),
    );
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not a PostgreSQL data directory"), "{err}");
    assert!(s.repo.list().unwrap().is_empty());
}

/// The SQL session holding the backup open is terminated while the files are read: the
/// backup fails at once, clearly, and leaves nothing.
#[test]
fn a_pgdata_backup_whose_session_is_terminated_fails_cleanly() {
    let s = setup();
    let mut slow = Proc::spawn(
        backup_cmd(&s)
            .args(["--max-rate", "512k", "--no-wait-wal", "--pgdata"])
            .arg(s.pg.data_dir()),
    );
    let mut pid = String::new();
    wait_until(
        "the backup's session to start the backup",
        Duration::from_secs(60),
        || {
            pid = s.pg.psql(
                "SELECT pid FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND query LIKE 'SELECT pg_backup_start(%'",
            );
            !pid.is_empty()
                && partial_dirs(&s.repo)
                    .first()
                    .is_some_and(|p| p.join("data/base").is_dir())
        },
    );
    s.pg.psql(&format!("SELECT pg_terminate_backend({pid})"));
    let status = slow.wait();
    let err = slow.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("the SQL session holding the backup open ended"),
        "{err}"
    );
    assert!(err.contains("nothing was kept"), "{err}");
    assert!(s.repo.list().unwrap().is_empty());
    assert!(partial_dirs(&s.repo).is_empty());
    // The server's backup was aborted with the session: another can start.
    assert_eq!(
        s.pg.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_backup_start(%' AND state = 'active'"),
        "0"
    );
    let (id, _) = run_backup(
        backup_cmd(&s)
            .args(["--no-wait-wal", "--pgdata"])
            .arg(s.pg.data_dir()),
    );
    assert_eq!(s.repo.list().unwrap()[0].id, id.0);
}
