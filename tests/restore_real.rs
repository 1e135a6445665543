//! `walferry restore` end to end against real PostgreSQL 15: a primary whose data directory
//! was deleted is rebuilt from a backup plus the archive walferry received (every
//! acknowledged commit back), point-in-time restores to each kind of target give exactly
//! the expected rows, and what cannot work is refused before anything is written.

mod common;
mod receive_support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{postgres_command, tempdir, walferry_bin, PgCluster};
use receive_support::Proc;

/// `walferry ARGS` as the postgres user (it owns the repository and the restored files).
fn walferry(args: &[&str]) -> Command {
    let mut cmd = postgres_command(walferry_bin());
    cmd.args(args);
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run walferry")
}

fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A receiver into REPO/wal (slot "wf", synchronous), running as postgres.
fn receiver(pg: &PgCluster, repo: &Path) -> Proc {
    let wal = repo.join("wal");
    std::fs::create_dir_all(&wal).unwrap();
    common::chown_to_postgres(&wal);
    Proc::spawn(&mut walferry(&[
        "receive",
        "-D",
        wal.to_str().unwrap(),
        "-d",
        &pg.conninfo(common::roles::SUPERUSER),
        "-S",
        "wf",
        "--synchronous",
    ]))
}

/// A primary whose synchronous standby is a receiver into a new repository's `wal/`: every
/// commit acknowledged is in the archive.
fn synchronously_archived_primary() -> (PgCluster, tempfile::TempDir, Proc) {
    let pg = PgCluster::primary();
    pg.create_physical_slot("wf");
    let repo = tempdir();
    let rx = receiver(&pg, repo.path());
    pg.psql("ALTER SYSTEM SET synchronous_standby_names = 'walferry'");
    pg.psql("SELECT pg_reload_conf()");
    (pg, repo, rx)
}

/// Once the receiver has flushed everything the primary wrote, stop it (cleanly).
fn stop_when_archived(pg: &PgCluster, rx: &mut Proc) {
    common::wait_until(
        "the receiver to have everything",
        Duration::from_secs(30),
        || pg.psql("SELECT flush_lsn >= pg_current_wal_lsn() FROM pg_stat_replication") == "t",
    );
    rx.signal(libc::SIGTERM);
    assert!(rx.wait().success(), "{}", rx.stderr());
}

fn backup(pg: &PgCluster, repo: &Path, extra: &[&str]) -> Output {
    let conninfo = pg.conninfo(common::roles::SUPERUSER);
    let mut args = vec!["backup", "--repo", repo.to_str().unwrap(), "-d", &conninfo];
    args.extend_from_slice(extra);
    ok(&mut walferry(&args))
}

/// Restore into a new cluster and start it; waits until recovery has ended (promoted).
fn restore_and_start(pg: &PgCluster, repo: &Path, extra: &[&str]) -> PgCluster {
    let mut restored = PgCluster::restored_from(pg, |data| {
        let mut args = vec![
            "restore",
            "--repo",
            repo.to_str().unwrap(),
            "--pgdata",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        ok(&mut walferry(&args));
    });
    restored.start();
    common::wait_until("recovery to end", Duration::from_secs(60), || {
        restored.try_psql("SELECT pg_is_in_recovery()").as_deref() == Ok("f")
    });
    restored
}

fn count(pg: &PgCluster) -> u64 {
    pg.psql("SELECT count(*) FROM t").parse().unwrap()
}

#[test]
fn a_deleted_primary_is_rebuilt_with_every_acknowledged_commit() {
    let (mut pg, repo, mut rx) = synchronously_archived_primary();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    pg.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g");
    backup(&pg, repo.path(), &["-Z", "lz4"]);
    // Acknowledged after the backup: only the archive has them once PGDATA is gone.
    for i in 0..20 {
        pg.psql(&format!(
            "INSERT INTO t SELECT g, 'late' FROM generate_series({}, {}) g",
            1001 + i * 100,
            1000 + (i + 1) * 100
        ));
    }
    let expected = 3000;
    pg.kill9();
    std::fs::remove_dir_all(pg.data_dir()).unwrap();
    rx.signal(libc::SIGTERM);
    assert!(rx.wait().success(), "{}", rx.stderr());

    let restored = restore_and_start(&pg, repo.path(), &[]);
    assert_eq!(
        count(&restored),
        expected,
        "every acknowledged commit is back"
    );
    assert_eq!(
        restored.psql("SELECT count(*) FROM t WHERE v = md5(id::text)"),
        "1000"
    );
}

#[test]
fn point_in_time_restores_stop_at_each_kind_of_target() {
    let pg = PgCluster::primary();
    pg.create_physical_slot("wf");
    let repo = tempdir();
    let mut rx = receiver(&pg, repo.path());
    pg.psql("CREATE TABLE t (id int PRIMARY KEY)");
    pg.psql("INSERT INTO t SELECT generate_series(1, 100)");
    backup(&pg, repo.path(), &[]);
    pg.psql("INSERT INTO t SELECT generate_series(101, 200)");
    pg.psql("SELECT pg_create_restore_point('after_200')");
    pg.psql("INSERT INTO t SELECT generate_series(201, 300)");
    let lsn_300 = pg.current_wal_lsn_str();
    let xid_400: String = pg.psql(
        "BEGIN; INSERT INTO t SELECT generate_series(301, 400); SELECT txid_current(); COMMIT;",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let time_400 =
        pg.psql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'");
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql("INSERT INTO t SELECT generate_series(401, 500)");
    pg.psql("SELECT pg_switch_wal()");
    stop_when_archived(&pg, &mut rx);

    let xid = xid_400.trim().lines().last().unwrap().to_string();
    for (target, expected) in [
        (vec!["--target-name", "after_200"], 200),
        (vec!["--target-lsn", &lsn_300], 300),
        (vec!["--target-xid", &xid], 400),
        (vec!["--target-time", &time_400], 400),
        (vec!["--target-immediate"], 100),
        (vec![], 500),
    ] {
        let restored = restore_and_start(&pg, repo.path(), &target);
        assert_eq!(count(&restored), expected, "{target:?}");
    }
}

#[test]
fn impossible_restores_are_refused_before_anything_is_written() {
    let pg = PgCluster::primary();
    pg.create_physical_slot("wf");
    let repo = tempdir();
    let mut rx = receiver(&pg, repo.path());
    pg.psql("CREATE TABLE t (id int)");
    backup(&pg, repo.path(), &[]);
    pg.psql("SELECT pg_create_restore_point('known')");
    pg.psql("INSERT INTO t VALUES (1)");
    stop_when_archived(&pg, &mut rx);

    let target = tempdir();
    let dest = target.path().join("data");
    let dest = dest.to_str().unwrap();
    let repo_s = repo.path().to_str().unwrap();
    let out = run(&mut walferry(&[
        "restore",
        "--repo",
        repo_s,
        "--pgdata",
        dest,
        "--target-name",
        "unknown",
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no restore point named \"unknown\" in the archive; it has: known"),
        "{}",
        stderr(&out)
    );
    assert!(!Path::new(dest).exists(), "nothing written");

    let out = run(&mut walferry(&[
        "restore",
        "--repo",
        repo_s,
        "--pgdata",
        dest,
        "--target-time",
        "2001-01-01 00:00:00+00",
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("outside the archive's commits: first commit at"),
        "{}",
        stderr(&out)
    );

    // A non-empty directory without --delta.
    let busy = target.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("PG_VERSION"), "15\n").unwrap();
    common::chown_to_postgres(&busy);
    let out = run(&mut walferry(&[
        "restore",
        "--repo",
        repo_s,
        "--pgdata",
        busy.to_str().unwrap(),
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));

    // A damaged segment after the backup: refused, naming it.
    let wal = repo.path().join("wal");
    let mut segs: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().len() == 24)
        .collect();
    segs.sort();
    let last = segs.last().unwrap().clone();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes[8192 * 3 + 100] ^= 0xff;
    std::fs::write(&last, &bytes).unwrap();
    let out = run(&mut walferry(&[
        "restore", "--repo", repo_s, "--pgdata", dest,
    ]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("has problems") && err.contains(last.file_name().unwrap().to_str().unwrap()),
        "{err}"
    );
    assert!(!Path::new(dest).exists());
}

/// The backup on timeline 1, the target on timeline 2 after a promote: the restore follows
/// the timeline switch. Then the old primary's data directory is turned into a standby of
/// the new primary with `--delta --standby`, and streams from it.
#[test]
fn restore_across_a_promotion_and_the_old_primary_rejoins_as_a_standby() {
    let mut pg = PgCluster::primary();
    pg.create_physical_slot("wf");
    let s1 = PgCluster::standby_of(&pg, common::StandbyOptions::new().slot("s1"));
    s1.create_physical_slot("wf");
    let repo = tempdir();
    // The receiver follows whichever node is writable.
    let wal = repo.path().join("wal");
    std::fs::create_dir_all(&wal).unwrap();
    common::chown_to_postgres(&wal);
    let both = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres target_session_attrs=read-write",
        pg.port(),
        s1.port()
    );
    let mut rx = Proc::spawn(&mut walferry(&[
        "receive",
        "-D",
        wal.to_str().unwrap(),
        "-d",
        &both,
        "-S",
        "wf",
    ]));
    pg.psql("CREATE TABLE t (id int PRIMARY KEY)");
    pg.psql("INSERT INTO t SELECT generate_series(1, 100)");
    backup(&pg, repo.path(), &["-Z", "zstd"]);
    pg.psql("INSERT INTO t SELECT generate_series(101, 200)");
    s1.wait_for_replay(pg.current_wal_lsn());

    pg.stop();
    s1.promote();
    s1.psql("INSERT INTO t SELECT generate_series(201, 300)");
    s1.psql("SELECT pg_switch_wal()");
    common::wait_until(
        "the receiver to follow to timeline 2",
        Duration::from_secs(60),
        || {
            s1.psql("SELECT flush_lsn >= pg_current_wal_lsn() FROM pg_stat_replication WHERE application_name = 'walferry'")
            == "t"
        },
    );

    let restored = restore_and_start(&pg, repo.path(), &[]);
    assert_eq!(count(&restored), 300);
    assert_eq!(
        restored.timeline(),
        3,
        "promoted at the end of timeline 2's WAL"
    );
    drop(restored);

    // The old primary (stopped, its files as they were) becomes a standby of S1. Its pg_wal
    // lives elsewhere, through a symbolic link (its own disk, say): the delta restore keeps
    // the link and empties what it points to.
    let wal_disk = tempdir();
    let moved = wal_disk.path().join("pg_wal");
    let pg_wal = pg.data_dir().join("pg_wal");
    common::run(std::process::Command::new("mv").arg(&pg_wal).arg(&moved));
    std::os::unix::fs::symlink(&moved, &pg_wal).unwrap();
    std::os::unix::fs::lchown(
        &pg_wal,
        Some(common::postgres_ids().map_or(0, |i| i.0)),
        None,
    )
    .unwrap();
    let stale = std::fs::read_dir(&moved).unwrap().count();
    assert!(stale > 0, "the old primary's WAL is there");
    let old_data = pg.data_dir().to_str().unwrap().to_string();
    let out = ok(&mut walferry(&[
        "restore",
        "--repo",
        repo.path().to_str().unwrap(),
        "--pgdata",
        &old_data,
        "--delta",
        "--standby",
        "--primary-conninfo",
        &format!(
            "host=127.0.0.1 port={} user=postgres application_name=old",
            s1.port()
        ),
    ]));
    assert!(stderr(&out).contains("kept"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_link(&pg_wal).unwrap(),
        moved,
        "pg_wal is still the link"
    );
    assert!(
        std::fs::read_dir(&moved)
            .unwrap()
            .filter_map(|e| e.ok())
            .all(|e| !e.file_name().to_string_lossy().starts_with("00000001")),
        "the old timeline's WAL was left in the linked pg_wal"
    );
    pg.start();
    s1.psql("INSERT INTO t SELECT generate_series(301, 400)");
    pg.wait_for_replay(s1.current_wal_lsn());
    assert_eq!(count(&pg), 400);
    assert_eq!(
        pg.psql("SELECT status FROM pg_stat_wal_receiver"),
        "streaming"
    );
    rx.signal(libc::SIGTERM);
    assert!(rx.wait().success(), "{}", rx.stderr());
}

/// `--target-action pause` leaves the server in recovery, paused at the target;
/// `shutdown` stops it there.
#[test]
fn target_actions_pause_and_shutdown() {
    let pg = PgCluster::primary();
    pg.create_physical_slot("wf");
    let repo = tempdir();
    let mut rx = receiver(&pg, repo.path());
    pg.psql("CREATE TABLE t (id int PRIMARY KEY)");
    backup(&pg, repo.path(), &[]);
    pg.psql("INSERT INTO t SELECT generate_series(1, 50)");
    pg.psql("SELECT pg_create_restore_point('p')");
    pg.psql("INSERT INTO t SELECT generate_series(51, 100)");
    stop_when_archived(&pg, &mut rx);

    let repo_s = repo.path().to_str().unwrap();
    let restore = |action: &str| {
        PgCluster::restored_from(&pg, |data| {
            ok(&mut walferry(&[
                "restore",
                "--repo",
                repo_s,
                "--pgdata",
                data.to_str().unwrap(),
                "--target-name",
                "p",
                "--target-action",
                action,
            ]));
        })
    };
    let mut paused = restore("pause");
    paused.start();
    common::wait_until(
        "replay to pause at the target",
        Duration::from_secs(60),
        || {
            paused
                .try_psql("SELECT pg_get_wal_replay_pause_state()")
                .as_deref()
                == Ok("paused")
        },
    );
    assert_eq!(paused.psql("SELECT pg_is_in_recovery()"), "t");
    assert_eq!(count(&paused), 50);
    drop(paused);

    let mut stopped = restore("shutdown");
    // The server reaches the target and shuts down: pg_ctl's wait fails or returns, and
    // the postmaster is gone soon after, having said why.
    let _ = stopped.try_start();
    common::wait_until(
        "the server to shut down at the target",
        Duration::from_secs(60),
        || stopped.server_log().contains("shutdown at recovery target"),
    );
}

/// The disk fills while the data directory is laid out: a clear error, and nothing left
/// that looks like a data directory.
#[test]
fn a_full_disk_during_restore_leaves_nothing_half_done() {
    let Some(small) = common::Tmpfs::mount("12m") else {
        return;
    };
    let pg = PgCluster::primary();
    pg.create_physical_slot("wf");
    let repo = tempdir();
    let mut rx = receiver(&pg, repo.path());
    pg.psql(
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 200000) g",
    );
    backup(&pg, repo.path(), &["-Z", "zstd"]);
    rx.signal(libc::SIGTERM);
    assert!(rx.wait().success());

    let dest = small.path.join("data");
    let out = run(&mut walferry(&[
        "restore",
        "--repo",
        repo.path().to_str().unwrap(),
        "--pgdata",
        dest.to_str().unwrap(),
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("nothing was kept"), "{err}");
    assert!(!dest.exists(), "the partial data directory was removed");
}

/// `pg_verifybackup -n -m MANIFEST PGDATA` (the WAL is in the repository, not in PGDATA).
fn verify_backup(manifest: &Path, pgdata: &Path) {
    let out = run(common::pg_command("pg_verifybackup")
        .arg("-n")
        .arg("-m")
        .arg(manifest)
        .arg(pgdata));
    assert!(
        out.status.success(),
        "pg_verifybackup: {}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}

/// `backup --pgdata` reads the data directory itself: of a primary with a tablespace, an
/// unlogged table, a temporary table in use and inserts running all along, the backup
/// holds neither WAL nor the unlogged table's data nor the temporary table's files, passes
/// pg_verifybackup once laid out, and the restored cluster has every acknowledged row.
#[test]
fn a_pgdata_backup_under_writes_restores_with_every_acknowledged_row() {
    let (mut pg, repo, mut rx) = synchronously_archived_primary();
    let ts = tempdir();
    common::chown_to_postgres(ts.path());
    pg.psql(&format!(
        "CREATE TABLESPACE ts LOCATION '{}'",
        ts.path().display()
    ));
    pg.psql(
        "CREATE TABLE t (id serial PRIMARY KEY, v text);
         INSERT INTO t (v) SELECT md5(g::text) FROM generate_series(1, 20000) g;
         CREATE TABLE spaced TABLESPACE ts AS SELECT g, repeat('y', 200) AS pad \
           FROM generate_series(1, 5000) g;
         CREATE UNLOGGED TABLE u AS SELECT g FROM generate_series(1, 10000) g;
         CHECKPOINT;",
    );
    let unlogged = pg.psql("SELECT pg_relation_filepath('u')");
    // A session holding a temporary table while the backup runs.
    let mut temp = Proc::spawn(common::pg_command("psql").args([
        "-X",
        "-d",
        &pg.conninfo(common::roles::SUPERUSER),
        "-c",
        "CREATE TEMP TABLE tt AS SELECT g FROM generate_series(1, 10000) g",
        "-c",
        "SELECT pg_sleep(120)",
    ]));
    let mut temp_file = String::new();
    common::wait_until(
        "the temporary table's file",
        Duration::from_secs(30),
        || {
            temp_file = pg.psql(
                "SELECT pg_relation_filepath(c.oid) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname = 'tt' AND n.nspname LIKE 'pg_temp%'",
            );
            !temp_file.is_empty()
        },
    );
    assert!(pg.data_dir().join(&temp_file).is_file());

    // Inserts, one row per transaction, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let conninfo = pg.conninfo(common::roles::SUPERUSER);
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = common::psql_conn(
                    &conninfo,
                    None,
                    "INSERT INTO t (v) SELECT 'during' FROM generate_series(1, 50)",
                );
                assert!(out.status.success(), "{}", stderr(&out));
                rounds += 1;
            }
            rounds
        })
    };
    let data = pg.data_dir().to_str().unwrap().to_string();
    let out = backup(
        &pg,
        repo.path(),
        &["-Z", "lz4", "-j", "2", "--pgdata", &data],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = writer.join().unwrap();
    assert!(rounds > 0);
    temp.kill9();
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();

    let repo_handle = walferry::repo::Repo::open(repo.path()).unwrap();
    let info = repo_handle
        .list()
        .unwrap()
        .into_iter()
        .find(|b| b.id == id)
        .expect("the backup is listed");
    let files: Vec<&str> = info
        .contents
        .files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert!(files.contains(&"backup_label"), "{files:?}");
    assert!(files.contains(&"global/pg_control"));
    assert!(files.contains(&format!("{unlogged}_init").as_str()));
    assert!(
        !files.contains(&unlogged.as_str()),
        "unlogged data left out"
    );
    assert!(
        !files.iter().any(|f| f.starts_with(&temp_file)),
        "temporary relation left out"
    );
    assert!(
        !files.iter().any(|f| f.starts_with("pg_wal/")),
        "pg_wal is empty in the backup: {:?}",
        files
            .iter()
            .filter(|f| f.starts_with("pg_wal/"))
            .collect::<Vec<_>>()
    );
    assert!(info
        .contents
        .directories
        .iter()
        .any(|d| d.path == "pg_wal/archive_status"));
    assert_eq!(info.tablespaces.len(), 1);
    assert_eq!(Path::new(&info.tablespaces[0].location), ts.path());
    let spaced = pg.psql("SELECT pg_relation_filepath('spaced')");
    assert!(
        files.contains(&spaced.as_str()),
        "{spaced} in {:?}",
        files
            .iter()
            .filter(|f| f.starts_with("pg_tblspc"))
            .collect::<Vec<_>>()
    );
    assert!(info.start_lsn < info.stop_lsn);
    assert_eq!(info.method, "pgdata");
    let stored_label =
        std::fs::read(repo_handle.backup_dir(&id).join("data/backup_label.lz4")).unwrap();
    let mut label = String::new();
    std::io::Read::read_to_string(
        &mut lz4_flex::frame::FrameDecoder::new(&stored_label[..]),
        &mut label,
    )
    .unwrap();
    assert!(label.contains("BACKUP METHOD: streamed"), "{label}");
    assert!(label.contains("START TIMELINE: 1"), "{label}");

    let expected: u64 = pg.psql("SELECT count(*) FROM t").parse().unwrap();
    assert_eq!(expected, 20000 + 50 * rounds as u64);
    stop_when_archived(&pg, &mut rx);
    pg.kill9();

    let new_ts = tempdir();
    common::chown_to_postgres(new_ts.path());
    let mapping = format!(
        "{}={}",
        ts.path().display(),
        new_ts.path().join("ts").display()
    );
    let mut restored = PgCluster::restored_from(&pg, |dir| {
        ok(&mut walferry(&[
            "restore",
            "--repo",
            repo.path().to_str().unwrap(),
            "--pgdata",
            dir.to_str().unwrap(),
            "--tablespace-mapping",
            &mapping,
        ]));
        verify_backup(&repo_handle.backup_dir(&id).join("backup_manifest"), dir);
    });
    restored.start();
    common::wait_until("recovery to end", Duration::from_secs(60), || {
        restored.try_psql("SELECT pg_is_in_recovery()").as_deref() == Ok("f")
    });
    assert_eq!(count(&restored), expected, "every acknowledged row");
    assert_eq!(
        restored.psql("SELECT count(*) FROM t WHERE v = 'during'"),
        (50 * rounds).to_string()
    );
    assert_eq!(restored.psql("SELECT count(*) FROM spaced"), "5000");
    assert_eq!(
        restored.psql("SELECT count(*) FROM u"),
        "0",
        "an unlogged table comes back empty"
    );
}
