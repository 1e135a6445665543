//! Repositories in S3-compatible object storage, end to end against a real S3 server
//! (`s3s-fs`, installed by scripts/setup.sh) on 127.0.0.1 and real PostgreSQL 15: a primary
//! whose data directory was deleted is rebuilt from a backup and the WAL streamed into the
//! store; the store stopped mid-stream costs nothing (the spool holds the WAL, uploads catch
//! up, no gap); wrong keys, a missing bucket and an unreachable store are clear errors; a
//! killed backup's objects are listed and expired; a relay serves WAL its spool let go from
//! the store; --synchronous-remote combines with the relay's --sync-downstream.

mod common;
mod receive_support;

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{postgres_command, tempdir, walferry_bin, PgCluster};
use receive_support::Proc;

const BUCKET: &str = "walferry";
const KEY_ID: &str = "walferry-test";
const SECRET: &str = "s3cr3t-walferry-test-key";

fn s3s_fs() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WALFERRY_S3S_FS") {
        return Some(PathBuf::from(p));
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("s3s-fs"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    cargo_home
        .map(|h| h.join("bin/s3s-fs"))
        .into_iter()
        .chain(on_path)
        .find(|p| p.is_file())
}

/// An s3s-fs server on 127.0.0.1 storing into a temporary directory, with one bucket.
struct S3Server {
    bin: PathBuf,
    root: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl S3Server {
    fn start() -> Option<S3Server> {
        let Some(bin) = s3s_fs() else {
            common::prerequisite::missing(
                "s3s-fs",
                "no s3s-fs in ~/.cargo/bin or WALFERRY_S3S_FS (scripts/setup.sh installs it)",
            );
            return None;
        };
        let root = tempdir();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let mut server = S3Server {
            bin,
            root,
            port: 0,
            child: None,
        };
        // s3s-fs takes its port on the command line: retry on a taken one.
        for _ in 0..5 {
            server.port = common::free_port();
            if server.spawn() {
                return Some(server);
            }
        }
        panic!("s3s-fs did not start");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", KEY_ID, "--secret-key", SECRET])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        assert!(self.spawn(), "s3s-fs restarts on port {}", self.port);
    }

    /// Every object under `prefix` of the bucket (recursively) and its size.
    fn sizes(&self, prefix: &str) -> Vec<(String, u64)> {
        let dir = self.root.path().join(BUCKET).join(prefix);
        walk(&dir)
            .into_iter()
            .map(|p| {
                let size = std::fs::metadata(&p).unwrap().len();
                (
                    p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned(),
                    size,
                )
            })
            .collect()
    }

    /// Objects under `prefix` of the bucket, as the server stores them (one file each).
    fn objects(&self, prefix: &str) -> Vec<String> {
        let dir = self.root.path().join(BUCKET).join(prefix);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The keys in an AWS credentials file only the postgres user may read, and the URL of
/// repository `repo` naming it (the URL holds no secret).
struct Lab {
    _dir: tempfile::TempDir,
    creds: PathBuf,
    cache: PathBuf,
    port: u16,
}

impl Lab {
    fn new(s3: &S3Server) -> Lab {
        let dir = tempdir();
        let creds = dir.path().join("s3.credentials");
        std::fs::write(
            &creds,
            format!("[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        common::chown_to_postgres(dir.path());
        common::chown_to_postgres(&creds);
        common::chown_to_postgres(&cache);
        Lab {
            creds,
            cache,
            port: s3.port,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "s3://{BUCKET}/{path}?endpoint=http://127.0.0.1:{}&credentials_file={}",
            self.port,
            self.creds.display()
        )
    }

    /// `walferry ARGS` as the postgres user, with no keys in its environment.
    fn walferry(&self, args: &[&str]) -> Command {
        let mut cmd = postgres_command(walferry_bin());
        cmd.args(args)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("WALFERRY_CACHE_DIR", &self.cache);
        cmd
    }
}

fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run walferry");
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p);
        }
    }
    files
}

fn spool_dir() -> tempfile::TempDir {
    let d = tempdir();
    common::chown_to_postgres(d.path());
    d
}

fn receiver(lab: &Lab, pg: &PgCluster, spool: &Path) -> Proc {
    Proc::spawn(&mut lab.walferry(&[
        "receive",
        "-D",
        &lab.url("repo/wal"),
        "--spool",
        spool.to_str().unwrap(),
        "-d",
        &pg.conninfo(common::roles::SUPERUSER),
        "-S",
        "wf",
        "--synchronous",
        "-v",
    ]))
}

fn segments(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .cloned()
        .collect()
}

fn assert_no_gap(names: &[String]) {
    let nums: Vec<u64> = segments(names)
        .iter()
        .map(|n| u64::from_str_radix(&n[8..], 16).unwrap())
        .collect();
    for w in nums.windows(2) {
        // 16 MiB segments: 256 per log file.
        let next = |n: u64| {
            if n & 0xff == 0xff {
                (n & !0xff) + 0x1_0000_0000
            } else {
                n + 1
            }
        };
        assert_eq!(next(w[0]), w[1], "no gap in the store's archive: {names:?}");
    }
}

#[test]
fn a_deleted_primary_is_rebuilt_from_a_repository_in_object_storage() {
    let Some(s3) = S3Server::start() else { return };
    let lab = Lab::new(&s3);
    let mut pg = PgCluster::primary();
    pg.create_physical_slot("wf");
    let spool = spool_dir();
    let mut rx = receiver(&lab, &pg, spool.path());
    pg.psql("ALTER SYSTEM SET synchronous_standby_names = 'walferry'");
    pg.psql("SELECT pg_reload_conf()");
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    pg.psql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g");
    // WAL before the backup's start, which no restore from it can use.
    for i in 0..3 {
        pg.psql(&format!("CREATE TABLE early_{i} (x int)"));
        pg.psql("SELECT pg_switch_wal()");
    }
    let repo = lab.url("repo");
    let conninfo = pg.conninfo(common::roles::SUPERUSER);
    let out = lab
        .walferry(&["backup", "--repo", &repo, "-d", &conninfo, "-Z", "lz4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "backup: {}\nreceiver: {}\nstore: {:?}",
        String::from_utf8_lossy(&out.stderr),
        rx.stderr(),
        s3.objects("repo/wal")
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let local_copy = lab.cache.join("s3/walferry/repo/backups");
    let left: Vec<_> = walk(&local_copy)
        .into_iter()
        .filter(|p| !p.ends_with(".walferry.lock"))
        .collect();
    assert!(
        left.is_empty(),
        "the backup left no file on local disk: {left:?}"
    );
    let backup_objects = s3.objects(&format!("repo/backups/{id}"));
    assert!(
        backup_objects.contains(&"backup.json".to_string())
            && backup_objects.contains(&"backup_manifest".to_string()),
        "the backup is in the store: {backup_objects:?}"
    );
    // Acknowledged after the backup (synchronous: durable in the spool first); a few
    // segments complete and go up while streaming, the last one at the stop.
    for i in 0..20 {
        pg.psql(&format!(
            "INSERT INTO t SELECT g, 'late' FROM generate_series({}, {}) g",
            1001 + i * 100,
            1000 + (i + 1) * 100
        ));
        if i % 4 == 0 {
            pg.psql("SELECT pg_switch_wal()");
        }
    }
    let expected = 3000;
    pg.kill9();
    std::fs::remove_dir_all(pg.data_dir()).unwrap();
    rx.signal(libc::SIGTERM);
    assert!(rx.wait().success(), "{}", rx.stderr());
    let wal = s3.objects("repo/wal");
    assert!(
        wal.iter().any(|n| n.ends_with(".partial")),
        "the last WAL went up at the stop: {wal:?}"
    );
    assert_no_gap(&wal);
    // Uploaded segments left the spool; the newest complete one stays for resuming.
    let spooled = segments(
        &std::fs::read_dir(spool.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        spooled.len(),
        1,
        "spool keeps one complete segment: {spooled:?}"
    );

    let listing = ok(&mut lab.walferry(&["list", "--repo", &repo]));
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains(&id), "{listing}");

    // The restore streams the backup from the store into PGDATA: the cache never holds
    // its files (only the catalog entry), and what it fetched is the backup once.
    let backup_copy = local_copy.join(&id);
    let mut restore_err = String::new();
    let mut restored = PgCluster::restored_from(&pg, |data| {
        let mut restore = Proc::spawn(&mut lab.walferry(&[
            "restore",
            "--repo",
            &repo,
            "--pgdata",
            data.to_str().unwrap(),
        ]));
        let mut cached = Vec::new();
        while restore.is_running() {
            cached.extend(
                walk(&backup_copy)
                    .into_iter()
                    .filter(|p| !p.ends_with("backup.json")),
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(restore.wait().success(), "restore: {}", restore.stderr());
        restore_err = restore.stderr();
        cached.extend(
            walk(&local_copy)
                .into_iter()
                .filter(|p| !p.ends_with("backup.json") && !p.ends_with(".walferry.lock")),
        );
        assert!(
            cached.is_empty(),
            "the backup's files never went through the cache: {cached:?}"
        );
    });
    let stored = s3.sizes(&format!("repo/backups/{id}"));
    let streamed: u64 = stored
        .iter()
        .filter(|(name, _)| name != "backup.json")
        .map(|(_, size)| size)
        .sum();
    assert!(
        restore_err.contains(&format!(
            "streamed {} object(s), {streamed} bytes, of backup {id}",
            stored.len() - 1
        )),
        "each stored file of the backup fetched once ({} objects, {streamed} bytes): \
         {restore_err}",
        stored.len() - 1
    );
    let auto = std::fs::read_to_string(restored.data_dir().join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains("archive-get --repo") && auto.contains("s3://walferry/repo?endpoint="),
        "restore_command reads the store: {auto}"
    );
    assert!(!auto.contains(SECRET), "no secret in restore_command");
    let wal_copy = lab.cache.join("s3/walferry/repo/wal");
    assert!(
        auto.contains(&format!("--cache {}", wal_copy.display())),
        "restore_command takes segments from the restore's copy of the archive: {auto}"
    );
    // Proof that recovery does not download again what the restore fetched: the store's
    // complete segments after the backup's start are replaced with other bytes of the
    // same size, which archive-get would refuse, and recovery still goes through. And the
    // other way round for the last complete one: its cached copy is spoilt, and archive-get
    // falls back to the store's (intact) object (and its neighbours', kept intact too).
    let label = std::fs::read_to_string(restored.data_dir().join("backup_label")).unwrap();
    let start_seg = label
        .split("(file ")
        .nth(1)
        .and_then(|r| r.get(..24))
        .unwrap()
        .to_string();
    // The restore fetched only the WAL from the backup's start on (`list` above had
    // copied all of it; the restore's copy is what it checked, no more).
    let before_start = |names: Vec<String>| -> Vec<String> {
        segments(&names)
            .into_iter()
            .filter(|n| n[8..] < start_seg[8..])
            .collect()
    };
    let stored_before = before_start(s3.objects("repo/wal"));
    assert!(
        stored_before.len() >= 3,
        "the store holds WAL from before the backup: {stored_before:?}"
    );
    let cached_names: Vec<String> = std::fs::read_dir(&wal_copy)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        before_start(cached_names.clone()),
        Vec::<String>::new(),
        "no segment before the backup's start {start_seg} in the restore's copy"
    );
    assert!(
        cached_names.contains(&start_seg),
        "the backup's start segment is: {cached_names:?}"
    );
    let wal_objects = s3.root.path().join(BUCKET).join("repo/wal");
    let complete = segments(&s3.objects("repo/wal"));
    let last = complete.last().unwrap().clone();
    spoil(&wal_copy.join(&last));
    let spoilt: Vec<String> = complete
        .iter()
        .filter(|n| **n > start_seg && **n < prev_segment(&last))
        .cloned()
        .collect();
    for name in &spoilt {
        spoil(&wal_objects.join(name));
    }
    assert!(
        !spoilt.is_empty(),
        "recovery needs several complete segments after the backup's: {complete:?}"
    );
    restored.start();
    common::wait_until("recovery to end", Duration::from_secs(90), || {
        restored.try_psql("SELECT pg_is_in_recovery()").as_deref() == Ok("f")
    });
    assert_eq!(
        restored.psql("SELECT count(*) FROM t"),
        expected.to_string(),
        "every acknowledged commit is back"
    );
    assert_eq!(
        restored.psql("SELECT count(*) FROM t WHERE v = md5(id::text)"),
        "1000"
    );
    restored.stop();

    // The reading commands work on the store as on a directory; the store's segments
    // spoilt above are damage to them (read into a cache of their own).
    let fresh_cache = spool_dir();
    let out = lab
        .walferry(&["verify", "-D", &lab.url("repo/wal")])
        .env("WALFERRY_CACHE_DIR", fresh_cache.path())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && said.contains(&spoilt[0]),
        "verify: {said}"
    );
}

/// Replaces the contents of `path` with other bytes of the same size.
fn spoil(path: &Path) {
    let len = std::fs::metadata(path).unwrap().len();
    std::fs::write(path, vec![0xA5u8; len as usize]).unwrap();
}

/// A primary with table `t`, a receiver into the store spooling in `spool`, a first
/// segment in the store; then the store stopped.
fn streaming_then_store_stopped(lab: &Lab, s3: &mut S3Server, spool: &Path) -> (PgCluster, Proc) {
    let pg = PgCluster::primary();
    pg.create_physical_slot("wf");
    let rx = receiver(lab, &pg, spool);
    pg.psql("CREATE TABLE t (id int)");
    pg.psql("SELECT pg_switch_wal()");
    common::wait_until(
        "a first segment in the store",
        Duration::from_secs(30),
        || !segments(&s3.objects("repo/wal")).is_empty(),
    );
    s3.stop();
    (pg, rx)
}

#[test]
fn the_store_stopped_mid_stream_costs_nothing() {
    let Some(mut s3) = S3Server::start() else {
        return;
    };
    let lab = Lab::new(&s3);
    let spool = spool_dir();
    let (pg, mut rx) = streaming_then_store_stopped(&lab, &mut s3, spool.path());
    for _ in 0..4 {
        pg.psql("INSERT INTO t SELECT generate_series(1, 1000)");
        pg.psql("SELECT pg_switch_wal()");
    }
    let end = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    // The receiver goes on into the spool while the store is away.
    common::wait_until("the spool to fill", Duration::from_secs(30), || {
        std::fs::read_dir(spool.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().len() == 24)
            .count()
            >= 4
    });
    assert!(
        rx.is_running(),
        "the receiver keeps streaming: {}",
        rx.stderr()
    );
    common::wait_until("the outage to be reported", Duration::from_secs(60), || {
        rx.stderr()
            .contains("upload to s3://walferry/repo/wal failed")
    });
    assert!(
        rx.is_running(),
        "the receiver keeps streaming: {}",
        rx.stderr()
    );
    s3.restart();
    common::wait_until("the uploads to catch up", Duration::from_secs(60), || {
        let wal = segments(&s3.objects("repo/wal"));
        wal.len() >= 5 && wal.last().is_some_and(|last| *last >= prev_segment(&end))
    });
    assert_no_gap(&s3.objects("repo/wal"));
    rx.signal(libc::SIGTERM);
    assert!(rx.wait().success(), "{}", rx.stderr());
    assert!(
        rx.stderr()
            .contains("uploads to s3://walferry/repo/wal work again"),
        "the recovery was reported: {}",
        rx.stderr()
    );
}

/// A spool on a small file system while the store is away: the receiver says the spool is
/// full and why, keeps running, and once the store is back the uploads empty the spool and
/// streaming goes on, with no gap in the store.
#[test]
fn a_full_spool_is_reported_and_streaming_resumes_once_the_store_is_back() {
    use receive_support::{emit_wal, flush_lsn, small_commit};
    let Some(mut s3) = S3Server::start() else {
        return;
    };
    // Room for four 16 MiB segments and a half: the newest complete one (kept to resume
    // from), two that wait for the store, the one being written; the next does not fit.
    let Some(spool) = common::Tmpfs::mount("72m") else {
        return;
    };
    common::chown_to_postgres(&spool.path);
    let lab = Lab::new(&s3);
    let (pg, mut rx) = streaming_then_store_stopped(&lab, &mut s3, &spool.path);
    emit_wal(&pg, 100);
    small_commit(&pg);
    let last = common::segment_name(1, flush_lsn(&pg));
    common::wait_until(
        "the full spool to be reported",
        Duration::from_secs(60),
        || rx.stderr().contains("disk is full"),
    );
    let log = rx.stderr();
    assert!(
        log.contains(
            "hint: the spool is full: a segment leaves it only once the object store has it"
        ),
        "{log}"
    );
    assert!(rx.is_running(), "the receiver keeps trying: {log}");
    s3.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while segments(&s3.objects("repo/wal"))
        .last()
        .is_none_or(|l| *l < prev_segment(&last))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the uploads did not catch up to {last}: store {:?}, receiver:\n{}",
            segments(&s3.objects("repo/wal")),
            rx.stderr()
                .lines()
                .filter(|l| !l.starts_with("hint: the spool is full"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_no_gap(&s3.objects("repo/wal"));
    rx.signal(libc::SIGTERM);
    assert!(rx.wait().success(), "{}", rx.stderr());
}

fn prev_segment(name: &str) -> String {
    let n = u64::from_str_radix(&name[8..], 16).unwrap();
    let p = if n & 0xff == 0 {
        ((n >> 32) - 1) << 32 | 0xff
    } else {
        n - 1
    };
    format!("{}{p:016X}", &name[..8])
}

#[test]
fn wrong_keys_a_missing_bucket_and_no_store_are_clear_errors() {
    let Some(s3) = S3Server::start() else { return };
    let lab = Lab::new(&s3);
    let pg = PgCluster::primary();
    let spool = spool_dir();
    let conninfo = pg.conninfo(common::roles::SUPERUSER);
    let receive = |url: &str| {
        let mut cmd = lab.walferry(&[
            "receive",
            "-D",
            url,
            "--spool",
            spool.path().to_str().unwrap(),
            "-d",
            &conninfo,
            "--no-loop",
        ]);
        receive_support::run_bounded(&mut cmd, Duration::from_secs(60))
    };

    let bad_creds = lab.creds.with_file_name("bad.credentials");
    std::fs::write(
        &bad_creds,
        format!("[default]\naws_access_key_id = {KEY_ID}\naws_secret_access_key = nope\n"),
    )
    .unwrap();
    std::fs::set_permissions(&bad_creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    common::chown_to_postgres(&bad_creds);
    let url = format!(
        "s3://{BUCKET}/repo/wal?endpoint=http://127.0.0.1:{}&credentials_file={}",
        s3.port,
        bad_creds.display()
    );
    let out = receive(&url);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refused the access keys"), "{err}");
    assert!(!err.contains("nope"), "the secret is not printed: {err}");

    let out = receive(
        &lab.url("repo/wal")
            .replace("s3://walferry/", "s3://no-such-bucket/"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("NoSuchBucket") && err.contains("create the bucket"),
        "{err}"
    );

    let dead = lab.url("repo/wal").replace(
        &format!(":{}", s3.port),
        &format!(":{}", common::free_port()),
    );
    let out = receive(&dead);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("object store is up"), "{err}");

    // A credentials file others can read is refused, as a .pgpass is.
    std::fs::set_permissions(&lab.creds, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = receive(&lab.url("repo/wal"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("chmod 600"), "{err}");

    // -D s3://... without --spool is a usage error.
    let out = lab
        .walferry(&["receive", "-D", &lab.url("repo/wal"), "-d", &conninfo])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --spool DIR"));
}

#[test]
fn synchronous_remote_acknowledges_only_what_the_store_holds() {
    let Some(s3) = S3Server::start() else { return };
    let lab = Lab::new(&s3);
    let pg = PgCluster::primary();
    pg.create_physical_slot("wf");
    let spool = spool_dir();
    let mut rx = Proc::spawn(&mut lab.walferry(&[
        "receive",
        "-D",
        &lab.url("repo/wal"),
        "--spool",
        spool.path().to_str().unwrap(),
        "-d",
        &pg.conninfo(common::roles::SUPERUSER),
        "-S",
        "wf",
        "--synchronous-remote",
    ]));
    pg.psql("ALTER SYSTEM SET synchronous_standby_names = 'walferry'");
    pg.psql("SELECT pg_reload_conf()");
    common::wait_until(
        "walferry to be the sync standby",
        Duration::from_secs(30),
        || pg.psql("SELECT sync_state FROM pg_stat_replication") == "sync",
    );
    pg.psql("CREATE TABLE t (id int)");
    for i in 0..30 {
        pg.psql(&format!("INSERT INTO t VALUES ({i})"));
    }
    // What the primary was told is durable; then the receiver dies without a word and its
    // spool is lost: the store alone must hold all of it.
    let flushed = common::parse_lsn(
        &pg.psql("SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'walferry'"),
    );
    rx.kill9();
    drop(spool);
    let seg_size = 16u64 << 20;
    let last = flushed - 1;
    let name = common::segment_name(1, last);
    let need = last % seg_size + 1;
    let dir = s3.root.path().join(BUCKET).join("repo/wal");
    let held = [name.clone(), format!("{name}.partial")]
        .iter()
        .filter_map(|n| std::fs::metadata(dir.join(n)).ok())
        .map(|m| m.len())
        .max()
        .unwrap_or(0);
    assert!(
        held >= need,
        "the store holds {held} bytes of {name}, the acknowledged flush {} needs {need}: {:?}",
        common::format_lsn(flushed),
        s3.objects("repo/wal")
    );
    // ... and what it holds is valid WAL up to there.
    let out = lab
        .walferry(&["wal-info", "-D", &lab.url("repo/wal")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A receiver into the store and a backup (uncompressed) of `pg` taken into it, its files
/// read from the data directory (`--pgdata`: the other way of `backup`, which hands its
/// files to the upload as the protocol's does); the receiver stopped cleanly. Returns the
/// backup id.
fn backup_into_store(lab: &Lab, pg: &PgCluster) -> String {
    pg.create_physical_slot("wf");
    let spool = spool_dir();
    let mut rx = receiver(lab, pg, spool.path());
    let out = lab
        .walferry(&[
            "backup",
            "--repo",
            &lab.url("repo"),
            "-d",
            &pg.conninfo(common::roles::SUPERUSER),
            "--pgdata",
            pg.data_dir().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "backup: {}\nreceiver: {}",
        String::from_utf8_lossy(&out.stderr),
        rx.stderr()
    );
    pg.psql("SELECT pg_switch_wal()");
    rx.signal(libc::SIGTERM);
    assert!(rx.wait().success(), "{}", rx.stderr());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_damaged_object_fails_the_restore_naming_it_and_delta_fetches_only_what_changed() {
    let Some(s3) = S3Server::start() else { return };
    let lab = Lab::new(&s3);
    let pg = PgCluster::primary();
    pg.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g");
    let id = backup_into_store(&lab, &pg);
    let repo = lab.url("repo");
    let root = tempdir();
    common::chown_to_postgres(root.path());
    let restore = |data: &Path, delta: bool| {
        let mut args = vec![
            "restore",
            "--repo",
            &repo,
            "--pgdata",
            data.to_str().unwrap(),
        ];
        if delta {
            args.push("--delta");
        }
        lab.walferry(&args).output().unwrap()
    };

    // A delta restore over a complete copy fetches only the files that differ from the
    // backup: the manifest, and postgresql.auto.conf, which the first restore appended to.
    let first = root.path().join("first");
    let out = restore(&first, false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = restore(&first, true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("streamed 2 object(s)"),
        "a kept file is not downloaded: {err}"
    );

    // The largest stored file of the backup replaced with other bytes of the same size.
    let stored = s3.sizes(&format!("repo/backups/{id}/data"));
    let (victim, size) = stored.iter().max_by_key(|(_, size)| *size).unwrap().clone();
    assert!(size > 8192, "{victim}: {size}");
    spoil(
        &s3.root
            .path()
            .join(BUCKET)
            .join(format!("repo/backups/{id}/data"))
            .join(&victim),
    );
    let second = root.path().join("second");
    let out = restore(&second, false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let object = format!("s3://walferry/repo/backups/{id}/data/{victim}");
    assert!(
        err.contains(&format!("backup {id} is damaged: \"{object}\" has CRC-32C")),
        "the error names the damaged object: {err}"
    );
    assert!(err.contains("nothing was kept"), "{err}");
    assert!(
        !second.exists(),
        "nothing that looks like a data directory is left: {:?}",
        walk(&second)
    );
    let cached: Vec<_> = walk(&lab.cache.join("s3/walferry/repo/backups"))
        .into_iter()
        .filter(|p| !p.ends_with("backup.json") && !p.ends_with(".walferry.lock"))
        .collect();
    assert!(cached.is_empty(), "nothing in the cache either: {cached:?}");
}

/// A TCP proxy on 127.0.0.1 to the store at `port` that passes at most `per_sec` bytes a
/// second (0: no limit, and it can be changed meanwhile) towards the store on each
/// connection: uploads through it take long enough to be interrupted when the test says
/// so. Returns its port.
fn slow_proxy(port: u16, per_sec: std::sync::Arc<std::sync::atomic::AtomicU64>) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    type Limit = Option<std::sync::Arc<std::sync::atomic::AtomicU64>>;
    let pipe = |mut from: TcpStream, mut to: TcpStream, limit: Limit| {
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 16 << 10];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        let rate = limit.as_ref().map_or(0, |l| l.load(Ordering::Relaxed));
                        if let Some(us) = (n as u64 * 1_000_000).checked_div(rate) {
                            std::thread::sleep(Duration::from_micros(us));
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    };
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(store) = TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            pipe(
                client.try_clone().unwrap(),
                store.try_clone().unwrap(),
                Some(per_sec.clone()),
            );
            pipe(store, client, None);
        }
    });
    proxy_port
}

#[test]
fn a_killed_backup_has_its_upload_aborted_and_its_objects_listed_then_expired() {
    let Some(s3) = S3Server::start() else { return };
    let lab = Lab::new(&s3);
    let pg = PgCluster::primary();
    // A table file of ~40 MiB: stored uncompressed, it goes up in three 16 MiB parts.
    pg.psql(
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) || md5((g + 1)::text) AS v \
         FROM generate_series(1, 420000) g",
    );
    let conninfo = pg.conninfo(common::roles::SUPERUSER);
    // Through the proxy the parts take seconds each: the journal's entry is seen long
    // before the upload could complete.
    let rate = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(4 << 20));
    let slow = lab.url("repo").replace(
        &format!(":{}", s3.port),
        &format!(":{}", slow_proxy(s3.port, rate.clone())),
    );
    let mut backup = Proc::spawn(&mut lab.walferry(&[
        "backup",
        "--repo",
        &slow,
        "-d",
        &conninfo,
        "--no-wait-wal",
    ]));
    let journals = lab.cache.join("multipart").join(BUCKET);
    let journal = backup.pid().to_string() + ".journal";
    let mut entry = String::new();
    common::wait_until(
        "a multipart upload in the journal",
        Duration::from_secs(120),
        || {
            assert!(backup.is_running(), "backup ended: {}", backup.stderr());
            entry = std::fs::read_to_string(journals.join(&journal)).unwrap_or_default();
            entry.starts_with("+ ")
        },
    );
    backup.kill9();
    let upload_id = entry.split(' ').nth(1).unwrap().to_string();
    assert!(
        entry.contains(" repo/backups/") && entry.contains("/data/base/"),
        "the entry names the object: {entry}"
    );
    // The store holds the unfinished upload (s3s-fs keeps one file per upload and part).
    let uploads = |s3: &S3Server| -> Vec<String> {
        std::fs::read_dir(s3.root.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(&upload_id))
            .collect()
    };
    assert!(
        uploads(&s3).contains(&format!(".upload-{upload_id}.json")),
        "the killed backup's upload is open in the store: {:?}",
        uploads(&s3)
    );

    // The next command that uploads (to the same endpoint: a journal names the store its
    // uploads went to) takes the dead process's journal over and aborts its upload. (A
    // second later: backup ids are start times to the second, and the killed backup's
    // objects stay in the store under its id.)
    rate.store(0, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(1100));
    let out = lab
        .walferry(&[
            "backup",
            "--repo",
            &slow,
            "-d",
            &conninfo,
            "--no-wait-wal",
            "-v",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        uploads(&s3).is_empty(),
        "the upload and its parts are gone from the store: {:?}\n{err}",
        uploads(&s3)
    );
    let left: Vec<_> = std::fs::read_dir(&journals)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        !journals.join(&journal).exists(),
        "the dead process's journal is gone: {left:?}"
    );

    // The killed backup's objects are still under its id, without a backup.json: list
    // shows it as a problem, expire keeps it within the grace (it could be running) and
    // removes it past it; the complete backup is untouched.
    let complete = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let killed = entry
        .split(" repo/backups/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap()
        .to_string();
    assert_ne!(killed, complete);
    let killed_objects = s3.sizes(&format!("repo/backups/{killed}"));
    assert!(
        !killed_objects.is_empty() && !killed_objects.iter().any(|(n, _)| n == "backup.json"),
        "the killed backup left objects and no catalog entry: {killed_objects:?}"
    );
    let complete_objects = s3.sizes(&format!("repo/backups/{complete}"));
    let repo = lab.url("repo");
    let listing = ok(&mut lab.walferry(&["list", "--repo", &repo]));
    let listing = String::from_utf8_lossy(&listing.stdout);
    let bytes: u64 = killed_objects.iter().map(|(_, size)| size).sum();
    assert!(
        listing.contains(&format!(
            "PROBLEM incomplete backup {killed}: {} file(s)",
            killed_objects.len()
        )),
        "{listing}"
    );
    let json = ok(&mut lab.walferry(&["list", "--repo", &repo, "--json"]));
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        json["incomplete_backups"][0]["id"],
        killed.as_str(),
        "{json}"
    );
    assert_eq!(json["incomplete_backups"][0]["bytes"], bytes, "{json}");
    assert_eq!(json["incomplete_backups"].as_array().unwrap().len(), 1);

    let kept = ok(&mut lab.walferry(&["expire", "--repo", &repo, "--keep", "5"]));
    let kept = String::from_utf8_lossy(&kept.stdout);
    assert!(
        kept.contains(&format!("kept incomplete backup {killed}")),
        "{kept}"
    );
    assert_eq!(s3.sizes(&format!("repo/backups/{killed}")), killed_objects);

    let gone = ok(&mut lab.walferry(&[
        "expire",
        "--repo",
        &repo,
        "--keep",
        "5",
        "--incomplete-grace",
        "0",
    ]));
    let gone = String::from_utf8_lossy(&gone.stdout);
    assert!(
        gone.contains(&format!("removed incomplete backup {killed}")),
        "{gone}"
    );
    assert!(
        s3.sizes(&format!("repo/backups/{killed}")).is_empty(),
        "the killed backup's objects are gone"
    );
    assert_eq!(
        s3.sizes(&format!("repo/backups/{complete}")),
        complete_objects,
        "the complete backup is untouched"
    );
    let listing = ok(&mut lab.walferry(&["list", "--repo", &repo]));
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains(&complete) && !listing.contains("incomplete backup"),
        "{listing}"
    );
}

/// `walferry relay -D s3://.../repo/wal --spool SPOOL -S wf` from `pg`, plus `extra`,
/// accepting connections; returns it and its port.
fn relay_into_store(lab: &Lab, pg: &PgCluster, spool: &Path, extra: &[&str]) -> (Proc, u16) {
    let port = common::free_port();
    let url = lab.url("repo/wal");
    let conninfo = pg.conninfo(common::roles::SUPERUSER);
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "relay",
        "-D",
        &url,
        "--spool",
        spool.to_str().unwrap(),
        "-d",
        &conninfo,
        "-S",
        "wf",
        "--listen",
        &listen,
        "-v",
    ];
    args.extend_from_slice(extra);
    let mut relay = Proc::spawn(&mut lab.walferry(&args));
    common::wait_until("the relay to accept connections", common::TIMEOUT, || {
        assert!(relay.is_running(), "relay exited: {}", relay.stderr());
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (relay, port)
}

#[test]
fn a_lagging_downstream_of_the_relay_gets_what_the_spool_let_go_from_the_store() {
    use receive_support::{emit_wal, flush_lsn, run_to_endpos_ok, small_commit};
    let Some(s3) = S3Server::start() else { return };
    let lab = Lab::new(&s3);
    let pg = PgCluster::primary();
    pg.create_physical_slot("wf");
    let spool = spool_dir();
    let (mut relay, port) = relay_into_store(&lab, &pg, spool.path(), &[]);
    // Several segments go through the relay into the store and leave the spool.
    for _ in 0..4 {
        emit_wal(&pg, 20);
        pg.psql("SELECT pg_switch_wal()");
    }
    small_commit(&pg);
    let spooled = || -> Vec<String> {
        segments(
            &std::fs::read_dir(spool.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
        )
    };
    let mut stored = Vec::new();
    common::wait_until(
        "segments uploaded and gone from the spool",
        Duration::from_secs(60),
        || {
            stored = segments(&s3.objects("repo/wal"));
            let here = spooled();
            stored.len() >= 5 && !here.contains(&stored[0]) && !here.contains(&stored[2])
        },
    );

    // A downstream that has the first segment and nothing after: pg_receivewal resumes
    // at the next one, which only the store holds now.
    let down = tempdir();
    let wal_objects = s3.root.path().join(BUCKET).join("repo/wal");
    std::fs::copy(wal_objects.join(&stored[0]), down.path().join(&stored[0])).unwrap();
    let endpos = flush_lsn(&pg);
    let mut prw = common::client_command(common::pg_bin("pg_receivewal"));
    prw.arg("-D").arg(down.path()).args([
        "-d",
        &format!("host=127.0.0.1 port={port} user=postgres"),
        "--no-password",
        "-E",
        &common::format_lsn(endpos),
    ]);
    run_to_endpos_ok(&pg, &mut prw);
    for name in &stored[1..stored.len() - 1] {
        let got = std::fs::read(down.path().join(name))
            .unwrap_or_else(|e| panic!("{name} reached the downstream: {e}"));
        assert!(
            got == std::fs::read(wal_objects.join(name)).unwrap(),
            "{name} is byte for byte the stored segment"
        );
    }
    let log = relay.stderr();
    assert!(
        log.contains(&format!("fetched WAL segment {}", stored[1])),
        "{log}"
    );
    // The session's copy went with it.
    common::wait_until("the session's fetched WAL removed", common::TIMEOUT, || {
        std::fs::read_dir(spool.path().join(".walferry-store-fill"))
            .unwrap()
            .next()
            .is_none()
    });

    // WAL the store does not hold either is refused before streaming, as PostgreSQL does.
    let gone = wal_objects.join(&stored[1]);
    std::fs::remove_file(&gone).unwrap();
    let again = tempdir();
    std::fs::copy(wal_objects.join(&stored[0]), again.path().join(&stored[0])).unwrap();
    let out = common::client_command(common::pg_bin("pg_receivewal"))
        .arg("-D")
        .arg(again.path())
        .args([
            "-d",
            &format!("host=127.0.0.1 port={port} user=postgres"),
            "--no-password",
            "-n",
            "-E",
            &common::format_lsn(endpos),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(&format!(
                "requested WAL segment {} has already been removed",
                stored[1]
            )),
        "{err}"
    );
    relay.signal(libc::SIGTERM);
    assert!(relay.wait().success(), "{}", relay.stderr());
}

#[test]
fn with_synchronous_remote_and_sync_downstream_a_commit_waits_for_the_store_and_the_downstream() {
    let Some(mut s3) = S3Server::start() else {
        return;
    };
    let lab = Lab::new(&s3);
    let pg = PgCluster::primary();
    pg.create_physical_slot("wf");
    pg.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let spool = spool_dir();
    let (mut relay, port) = relay_into_store(
        &lab,
        &pg,
        spool.path(),
        &["--synchronous-remote", "--sync-downstream", "1"],
    );
    // A downstream that reports each flush (pg_receivewal --synchronous).
    let down = tempdir();
    let mut downstream = Proc::spawn(
        common::client_command(common::pg_bin("pg_receivewal"))
            .arg("-D")
            .arg(down.path())
            .args([
                "-d",
                &format!("host=127.0.0.1 port={port} user=postgres application_name=down"),
                "--no-password",
                "--synchronous",
            ]),
    );
    pg.psql("ALTER SYSTEM SET synchronous_standby_names = 'walferry'");
    pg.psql("SELECT pg_reload_conf()");
    common::wait_until("the relay to be the sync standby", common::TIMEOUT, || {
        pg.psql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'walferry'")
            == "sync"
    });
    let insert = |id: u32| {
        Proc::spawn(common::client_command(common::pg_bin("psql")).args([
            "-XAtq",
            "-d",
            &format!("{} dbname=postgres", pg.conninfo(common::roles::SUPERUSER)),
            "-c",
            &format!("INSERT INTO t VALUES ({id})"),
        ]))
    };
    let completes = |p: &mut Proc| {
        let status = p
            .wait_timeout(common::TIMEOUT)
            .expect("the commit completes");
        assert!(status.success(), "{}", p.stderr());
    };
    let waits = |p: &mut Proc| {
        common::wait_until("a commit waiting in SyncRep", common::TIMEOUT, || {
            pg.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'") == "1"
        });
        std::thread::sleep(Duration::from_millis(1000));
        assert!(p.is_running(), "the commit returned: {}", p.stderr());
    };
    completes(&mut insert(1));

    // The store holds it, the downstream does not: the commit waits for the downstream.
    downstream.signal(libc::SIGSTOP);
    let mut commit = insert(2);
    waits(&mut commit);
    downstream.signal(libc::SIGCONT);
    completes(&mut commit);

    // The downstream has it, the store is away: the commit waits for the store.
    s3.stop();
    let mut commit = insert(3);
    waits(&mut commit);
    assert!(downstream.is_running(), "{}", downstream.stderr());
    s3.restart();
    completes(&mut commit);
    assert_eq!(pg.psql("SELECT count(*) FROM t"), "3");

    pg.psql("ALTER SYSTEM RESET synchronous_standby_names");
    pg.psql("SELECT pg_reload_conf()");
    downstream.signal(libc::SIGTERM);
    downstream.wait();
    relay.signal(libc::SIGTERM);
    assert!(relay.wait().success(), "{}", relay.stderr());
}
