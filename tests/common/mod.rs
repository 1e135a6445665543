//! Integration-test harness: real PostgreSQL 15 clusters, each in its own temp dir on a free
//! loopback port, started and torn down by the tests themselves.
//!
//! Every `tests/*.rs` that needs a server declares `mod common;` and builds a [`PgCluster`]
//! (`PgCluster::primary()`, `PgCluster::builder()...start()`, `PgCluster::standby_of(..)`).
//! PostgreSQL refuses to run as root, so when the tests run as root every server-side program
//! (initdb, pg_ctl, postgres, pg_basebackup, psql over the socket) runs as the `postgres` system
//! user and the temp dirs are handed to it; as any other user everything runs as that user.
//! Client programs under test (walferry, pg_receivewal, psql over TCP) run as the test's own
//! user with the caller's `PG*` variables removed, so nothing from the environment leaks in.
//!
//! Clean-up is the harness's job, not the test's: `Drop` stops the server (immediate mode, then
//! SIGKILL) and removes the temp dir, also while a test panics, and then prints the tail of the
//! server log. `pg_ctl` detaches the postmaster, which would leave it to PID 1 (which may never
//! reap it); the test process therefore makes itself a child subreaper so it can reap the
//! postmasters it started. A test process killed outright (a runner timeout) cannot clean up,
//! so the first cluster of every test process stops and removes clusters whose owning process
//! is gone. Set `WALFERRY_KEEP_TEST_DIRS=1` to keep the dirs of failed tests for inspection.

#![allow(dead_code)]

pub mod prerequisite;

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Once, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// Where Debian's postgresql-15 installs its programs; `WALFERRY_PG_BIN` overrides.
pub const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The only address servers listen on.
pub const HOST: &str = "127.0.0.1";
/// Default bound for every wait in the harness (server start, replay, polling helpers).
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// PostgreSQL's default (and our clusters') WAL segment size.
pub const WAL_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// Prefix of cluster dirs; the orphan sweep only ever looks at dirs with this prefix.
const CLUSTER_DIR_PREFIX: &str = "walferry-pg-";
/// File in a cluster dir naming the pid of the test process that owns it.
const OWNER_FILE: &str = "owner.pid";

/// Login roles every primary has (standbys inherit them). Each role with a password uses
/// [`password`]`(role)`; the TCP lines of pg_hba.conf give each role its own method.
pub mod roles {
    /// Superuser; `trust` over the socket and over TCP.
    pub const SUPERUSER: &str = "postgres";
    /// `trust` over TCP (still has a password, which trust ignores).
    pub const TRUST: &str = "walferry_trust";
    /// Password stored as an md5 hash, `md5` method over TCP.
    pub const MD5: &str = "walferry_md5";
    /// Password stored as a SCRAM-SHA-256 verifier, `scram-sha-256` method over TCP.
    pub const SCRAM: &str = "walferry_scram";
    /// Clear-text `password` method over TCP (verifier stored as SCRAM).
    pub const PASSWORD: &str = "walferry_pw";
    /// Only over TLS (`hostssl`, scram-sha-256); rejected otherwise, so always on a cluster
    /// without ssl.
    pub const SSL_ONLY: &str = "walferry_sslonly";
    /// Only without TLS (`hostnossl`, scram-sha-256); rejected over TLS.
    pub const NO_SSL: &str = "walferry_nossl";
    /// Every role created by the harness, superuser first.
    pub const ALL: [&str; 7] = [SUPERUSER, TRUST, MD5, SCRAM, PASSWORD, SSL_ONLY, NO_SSL];
}

/// The password of a harness role (also set for `postgres` and the trust role).
pub fn password(user: &str) -> String {
    format!("{user}-secret")
}

// ---------------------------------------------------------------------------------------------
// Programs and processes
// ---------------------------------------------------------------------------------------------

/// Path of a PostgreSQL program (`pg_receivewal`, `pg_waldump`, `psql`, ...).
pub fn pg_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("WALFERRY_PG_BIN").unwrap_or_else(|| PG_BIN_DIR.into());
    PathBuf::from(dir).join(name)
}

/// The walferry binary built for this test run.
pub fn walferry_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_walferry"))
}

/// A `Command` for a PostgreSQL program that must not run as root: as `postgres` when the test
/// runs as root, otherwise as the current user. Environment is cleaned as in [`client_command`].
pub fn pg_command(name: &str) -> Command {
    postgres_command(pg_bin(name))
}

/// `program` run as PostgreSQL's programs are (see [`pg_command`]): e.g. walferry where it
/// must own what it writes as the server's user does (`restore`, a repository).
pub fn postgres_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = client_command(program);
    if let Some((uid, gid)) = postgres_ids() {
        // std drops root's supplementary groups itself when uid is set by root.
        cmd.uid(uid).gid(gid);
        // postgres may not be allowed into the test's cwd or root's home.
        cmd.current_dir(std::env::temp_dir());
        cmd.env("HOME", std::env::temp_dir());
    }
    cmd
}

/// A `Command` for a client program run as the test's own user, with every `PG*` variable of
/// the caller removed (PGHOST, PGPASSWORD, ... would silently change what a test connects to),
/// no password file, messages in English and a bounded connect time.
pub fn client_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("LC_ALL", "C")
        .env("PGPASSFILE", "/nonexistent/walferry-test-pgpass")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to completion; panics with its output if it cannot start or exits non-zero.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// `psql` over TCP (or any conninfo) as the test's user: `-X -A -t -q -c sql`, `dbname=postgres`
/// added unless the conninfo names one, `PGPASSWORD` set when `password` is given. Returns the
/// raw output so tests can assert on exit code and stderr (exit 2 = could not connect).
pub fn psql_conn(conninfo: &str, password: Option<&str>, sql: &str) -> Output {
    let conninfo = if conninfo.contains("dbname=") {
        conninfo.to_string()
    } else {
        format!("{conninfo} dbname=postgres")
    };
    let mut cmd = client_command(pg_bin("psql"));
    cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(&conninfo)
        .arg("-c")
        .arg(sql);
    if let Some(pw) = password {
        cmd.env("PGPASSWORD", pw);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run psql: {e}"))
}

/// uid/gid of the `postgres` user when we are root (and so must switch to it), else `None`.
pub fn postgres_ids() -> Option<(u32, u32)> {
    static IDS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *IDS.get_or_init(|| {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = CString::new("postgres").expect("no NUL in a literal");
        // SAFETY: passwd is plain old data; all-zero is a valid value to be overwritten.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: getpwnam_r (the thread-safe form) writes only into `pwd`, `buf` (whose real
        // length we pass) and `result`; all three outlive the call.
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() {
            panic!(
                "running as root but there is no `postgres` user (postgres refuses to run as \
                 root)\nHINT: run scripts/setup.sh to install postgresql-15"
            );
        }
        Some((pwd.pw_uid, pwd.pw_gid))
    })
}

/// Hands `path` to the `postgres` user when running as root (no-op otherwise).
pub fn chown_to_postgres(path: &Path) {
    if let Some((uid, gid)) = postgres_ids() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("cannot chown {}: {e}", path.display()));
    }
}

/// A fresh temp dir (e.g. a WAL archive) that `postgres` may write too. Removed on drop.
pub fn tempdir() -> TempDir {
    process_setup();
    let dir = tempfile::Builder::new()
        .prefix("walferry-test-")
        .tempdir()
        .expect("cannot create a temp dir");
    chown_to_postgres(dir.path());
    dir
}

/// A loopback TCP port that was free a moment ago. Another process may take it before we bind
/// it; [`PgCluster::start`] retries with a new port when the postmaster cannot bind.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((HOST, 0)).expect("cannot bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        sleep(Duration::from_millis(50));
    }
}

/// Parses PostgreSQL's `X/X` LSN text.
pub fn parse_lsn(text: &str) -> u64 {
    let text = text.trim();
    let (hi, lo) = text
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {text:?}"));
    let hi = u64::from_str_radix(hi, 16).unwrap_or_else(|_| panic!("not an LSN: {text:?}"));
    let lo = u64::from_str_radix(lo, 16).unwrap_or_else(|_| panic!("not an LSN: {text:?}"));
    (hi << 32) | lo
}

/// Formats an LSN as PostgreSQL does (`%X/%X`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// Name of the 16 MiB segment holding `lsn` on timeline `tli` (as xlog_internal.h XLogFileName).
pub fn segment_name(tli: u32, lsn: u64) -> String {
    let segno = lsn / WAL_SEGMENT_SIZE;
    let per_xlogid = 0x1_0000_0000 / WAL_SEGMENT_SIZE;
    format!(
        "{tli:08X}{:08X}{:08X}",
        segno / per_xlogid,
        segno % per_xlogid
    )
}

/// Whether `pid` is a live process. Reaps it first if it is our (possibly adopted) child, and
/// counts a zombie as dead: a zombie has released its sockets, shared memory and files.
pub fn pid_alive(pid: i32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid writes only `status`; WNOHANG never blocks; it reaps `pid` only if that
    // is our child and has exited, which is what we want.
    let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if reaped == pid {
        return false;
    }
    match proc_stat(pid) {
        Some((state, _)) => state != 'Z' && state != 'X',
        None => false,
    }
}

/// (state, ppid) from /proc/<pid>/stat.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Pids of the live direct children of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| matches!(proc_stat(p), Some((s, pp)) if pp == pid && s != 'Z'))
        .collect()
}

/// SIGKILLs `pid` and its children (a postmaster and its backends) and waits until all are
/// gone. Returns whether they all died within the timeout.
fn kill_tree(pid: i32, timeout: Duration) -> bool {
    let mut pids = children_of(pid);
    pids.push(pid);
    for &p in &pids {
        // SAFETY: kill only sends a signal; a pid that already exited yields ESRCH.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    wait_dead(&pids, timeout)
}

fn wait_dead(pids: &[i32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|&p| !pid_alive(p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(20));
    }
}

/// Once per test process: become a child subreaper (so the postmasters `pg_ctl` detaches are
/// ours to reap) and sweep clusters left behind by test processes that died without cleaning up.
fn process_setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory of ours.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
        sweep_orphaned_clusters();
    });
}

/// Stops and removes cluster dirs whose owner test process no longer exists. Dirs without an
/// owner file are being created right now by someone else and are left alone.
fn sweep_orphaned_clusters() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(CLUSTER_DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let Some(owner) = fs::read_to_string(dir.join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            continue;
        };
        if pid_alive(owner) {
            continue;
        }
        if let Some(pm) = read_postmaster_pid(&dir.join("data")) {
            if pid_alive(pm) && is_postgres(pm) {
                kill_tree(pm, Duration::from_secs(5));
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

fn is_postgres(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim() == "postgres" || c.trim() == "postmaster")
        .unwrap_or(false)
}

fn read_postmaster_pid(data_dir: &Path) -> Option<i32> {
    fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Writes `content` to `path` and hands the file to `postgres`.
fn write_file(path: &Path, content: &str) {
    fs::write(path, content).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    chown_to_postgres(path);
}

fn append_file(path: &Path, content: &str) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    f.write_all(content.as_bytes())
        .unwrap_or_else(|e| panic!("cannot append to {}: {e}", path.display()));
}

/// Quotes a value for postgresql.conf.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn sql_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

// ---------------------------------------------------------------------------------------------
// TLS material
// ---------------------------------------------------------------------------------------------

/// A throwaway CA and a server certificate for `localhost` / 127.0.0.1, made with the openssl
/// CLI (EC P-256, which rustls and libpq both accept).
#[derive(Clone, Debug)]
pub struct SslFiles {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl SslFiles {
    fn generate(dir: &Path) -> SslFiles {
        fs::create_dir_all(dir).expect("create ssl dir");
        chown_to_postgres(dir);
        let files = SslFiles {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        };
        // Own configs so the system openssl.cnf (absent or odd) plays no part.
        fs::write(
            dir.join("ca.cnf"),
            "[req]\nprompt = no\ndistinguished_name = dn\nx509_extensions = v3_ca\n\
             [dn]\nCN = walferry test CA\n\
             [v3_ca]\nbasicConstraints = critical,CA:TRUE\n\
             keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n",
        )
        .expect("write ca.cnf");
        run(openssl(dir)
            .args([
                "req", "-x509", "-new", "-nodes", "-config", "ca.cnf", "-days", "30",
            ])
            .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-keyout", "ca.key", "-out", "ca.crt"]));
        files.issue("server", "localhost", true);
        fs::set_permissions(&files.server_key, fs::Permissions::from_mode(0o600))
            .expect("chmod server.key");
        for f in [&files.ca_cert, &files.server_cert, &files.server_key] {
            chown_to_postgres(f);
        }
        files
    }

    /// Signs a new key + certificate `<stem>.crt`/`<stem>.key` with CN `cn`; a server cert
    /// gets SAN DNS:localhost, IP:127.0.0.1.
    fn issue(&self, stem: &str, cn: &str, server: bool) -> (PathBuf, PathBuf) {
        let dir = &self.dir;
        fs::write(
            dir.join(format!("{stem}.cnf")),
            format!("[req]\nprompt = no\ndistinguished_name = dn\n[dn]\nCN = {cn}\n"),
        )
        .expect("write req config");
        let ext = if server {
            "basicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost,IP:127.0.0.1\n\
             subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid,issuer\n"
        } else {
            "basicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\n\
             extendedKeyUsage = clientAuth\nsubjectKeyIdentifier = hash\n\
             authorityKeyIdentifier = keyid,issuer\n"
        };
        fs::write(dir.join(format!("{stem}.ext")), ext).expect("write ext config");
        let (key, csr, crt) = (
            format!("{stem}.key"),
            format!("{stem}.csr"),
            format!("{stem}.crt"),
        );
        run(openssl(dir)
            .args(["req", "-new", "-nodes", "-config", &format!("{stem}.cnf")])
            .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-keyout", &key, "-out", &csr]));
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(1);
        run(openssl(dir)
            .args([
                "x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key",
            ])
            .args(["-set_serial", &serial.to_string(), "-days", "30"])
            .args(["-extfile", &format!("{stem}.ext"), "-out", &crt]));
        (dir.join(crt), dir.join(key))
    }
}

fn openssl(dir: &Path) -> Command {
    let mut cmd = client_command("openssl");
    cmd.current_dir(dir);
    cmd
}

// ---------------------------------------------------------------------------------------------
// Clusters
// ---------------------------------------------------------------------------------------------

/// Options for a new primary; see [`PgCluster::builder`].
#[derive(Clone, Debug)]
pub struct PgClusterBuilder {
    fsync: bool,
    conf: Vec<String>,
    ssl: bool,
    auth: String,
    hba: Vec<String>,
    port: Option<u16>,
}

impl Default for PgClusterBuilder {
    fn default() -> Self {
        PgClusterBuilder {
            fsync: false,
            conf: Vec::new(),
            ssl: false,
            auth: "trust".to_string(),
            hba: Vec::new(),
            port: None,
        }
    }
}

impl PgClusterBuilder {
    /// `fsync` (and initdb/basebackup syncing); off by default for speed.
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }

    /// An extra postgresql.conf line, e.g. `"wal_sender_timeout = '2s'"`; later lines win.
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.conf.push(line.into());
        self
    }

    /// TLS with a throwaway CA ([`PgCluster::ca_cert_path`]) and a cert for localhost/127.0.0.1.
    pub fn ssl(mut self, on: bool) -> Self {
        self.ssl = on;
        self
    }

    /// Method of the catch-all TCP lines `host all|replication all 127.0.0.1/32 METHOD` that
    /// apply to roles without their own line (roles a test creates itself). Default `trust`.
    pub fn auth(mut self, method: impl Into<String>) -> Self {
        self.auth = method.into();
        self
    }

    /// An extra pg_hba.conf line placed before all harness TCP lines (first match wins).
    pub fn hba(mut self, line: impl Into<String>) -> Self {
        self.hba.push(line.into());
        self
    }

    /// First choice of port instead of a random free one. Like a random one, it is replaced by
    /// a free port if the first start cannot bind it: read the outcome from `port()`.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// initdb and configure, but do not start (roles are created by the first `start()`).
    pub fn init(self) -> PgCluster {
        PgCluster::init(self)
    }

    /// initdb, configure, start and create the harness roles.
    pub fn start(self) -> PgCluster {
        let mut cluster = self.init();
        cluster.start();
        cluster
    }
}

/// Options for [`PgCluster::standby_of`].
#[derive(Clone, Debug, Default)]
pub struct StandbyOptions {
    /// Physical slot created by pg_basebackup (`-C -S`) and used as `primary_slot_name`.
    pub slot: Option<String>,
    /// Replaces the `primary_conninfo` that `pg_basebackup -R` writes (e.g. a walferry relay).
    pub primary_conninfo: Option<String>,
    /// Extra postgresql.conf lines (after the primary's own extra lines).
    pub conf: Vec<String>,
    /// Leave the standby stopped.
    pub no_start: bool,
    /// Not a streaming standby but a restore from the archive: `pg_basebackup -X none`
    /// (the WAL comes from the archive) without `-R`, this `restore_command` and
    /// `recovery.signal` (archive recovery to the end of the archive, then promotion).
    pub restore_command: Option<String>,
}

impl StandbyOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn slot(mut self, name: impl Into<String>) -> Self {
        self.slot = Some(name.into());
        self
    }
    pub fn primary_conninfo(mut self, conninfo: impl Into<String>) -> Self {
        self.primary_conninfo = Some(conninfo.into());
        self
    }
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.conf.push(line.into());
        self
    }
    pub fn no_start(mut self) -> Self {
        self.no_start = true;
        self
    }
    pub fn restore_command(mut self, command: impl Into<String>) -> Self {
        self.restore_command = Some(command.into());
        self
    }
}

/// One row of `pg_stat_replication`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationStat {
    pub pid: i32,
    pub application_name: String,
    pub state: String,
    pub sent_lsn: Option<u64>,
    pub write_lsn: Option<u64>,
    pub flush_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    pub sync_state: String,
}

/// A PostgreSQL 15 cluster in its own temp dir:
/// `<root>/data` (PGDATA), `<root>/server.log`, `<root>/ssl/`, and the unix socket in `<root>`.
pub struct PgCluster {
    root: Option<TempDir>,
    root_path: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    port: u16,
    fsync: bool,
    /// Extra postgresql.conf lines, rendered into walferry.conf after the harness settings.
    extra_conf: Vec<String>,
    ssl: Option<SslFiles>,
    /// Postmaster pid while running (as far as we know).
    pid: Option<i32>,
    /// A port may be swapped for a free one only before anything could have recorded it.
    started_once: bool,
    needs_roles: bool,
}

impl PgCluster {
    /// A running primary with default options.
    pub fn primary() -> PgCluster {
        PgCluster::builder().start()
    }

    pub fn builder() -> PgClusterBuilder {
        PgClusterBuilder::default()
    }

    fn new_root() -> (TempDir, PathBuf) {
        process_setup();
        let root = tempfile::Builder::new()
            .prefix(CLUSTER_DIR_PREFIX)
            .tempdir()
            .expect("cannot create a cluster temp dir");
        let path = root.path().to_path_buf();
        fs::write(path.join(OWNER_FILE), std::process::id().to_string()).expect("owner file");
        chown_to_postgres(&path);
        (root, path)
    }

    fn init(opts: PgClusterBuilder) -> PgCluster {
        let (root, root_path) = Self::new_root();
        let data_dir = root_path.join("data");
        let mut initdb = pg_command("initdb");
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-instructions");
        if !opts.fsync {
            initdb.arg("--no-sync");
        }
        run(&mut initdb);
        let ssl = opts.ssl.then(|| SslFiles::generate(&root_path.join("ssl")));
        let cluster = PgCluster {
            root: Some(root),
            log_path: root_path.join("server.log"),
            root_path,
            data_dir,
            port: opts.port.unwrap_or_else(free_port),
            fsync: opts.fsync,
            extra_conf: opts.conf,
            ssl,
            pid: None,
            started_once: false,
            needs_roles: true,
        };
        append_file(
            &cluster.data_dir.join("postgresql.conf"),
            "\n# test harness settings (rewritten by tests/common)\ninclude 'walferry.conf'\n",
        );
        cluster.write_conf();
        write_file(
            &cluster.data_dir.join("pg_hba.conf"),
            &render_hba(&opts.hba, &opts.auth, opts.ssl),
        );
        cluster
    }

    /// Renders `walferry.conf` from the cluster's state: harness settings, then extra lines.
    fn write_conf(&self) {
        let mut conf = format!(
            "listen_addresses = '{HOST}'\n\
             port = {port}\n\
             unix_socket_directories = {sock}\n\
             wal_level = replica\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             wal_keep_size = '2GB'\n\
             max_wal_size = '1GB'\n\
             shared_buffers = '32MB'\n\
             max_connections = 40\n\
             fsync = {fsync}\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] %q%u@%d/%a '\n\
             log_connections = on\n\
             log_disconnections = on\n\
             log_replication_commands = on\n\
             log_min_messages = info\n",
            port = self.port,
            sock = conf_quote(&self.root_path.to_string_lossy()),
            fsync = if self.fsync { "on" } else { "off" },
        );
        if let Some(ssl) = &self.ssl {
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = {}\nssl_key_file = {}\nssl_ca_file = {}\n",
                conf_quote(&ssl.server_cert.to_string_lossy()),
                conf_quote(&ssl.server_key.to_string_lossy()),
                conf_quote(&ssl.ca_cert.to_string_lossy()),
            ));
        }
        for line in &self.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        write_file(&self.data_dir.join("walferry.conf"), &conf);
    }

    /// Starts the server (`pg_ctl -w start`). A first start that cannot bind its port moves to
    /// another free port; a later one retries the same port for a short while.
    pub fn start(&mut self) {
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    /// [`PgCluster::start`], returning pg_ctl's complaint and the new server log lines when
    /// the server does not come up (a recovery that aborts, for instance).
    pub fn try_start(&mut self) -> Result<(), String> {
        assert!(
            self.pid.is_none(),
            "cluster on port {} is already running",
            self.port
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            let log_offset = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
            let out = pg_command("pg_ctl")
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log_path)
                .args(["-w", "-t", "120", "start"])
                .output()
                .expect("cannot run pg_ctl");
            if out.status.success() {
                break;
            }
            let log = self.server_log();
            let new_log = log.get(log_offset as usize..).unwrap_or(&log);
            let bind_failed = new_log.contains("could not bind")
                || new_log.contains("could not create any TCP/IP sockets");
            // pg_ctl may give up while a postmaster lingers; never leave one behind.
            if let Some(pm) = read_postmaster_pid(&self.data_dir) {
                if pid_alive(pm) {
                    kill_tree(pm, Duration::from_secs(10));
                }
            }
            if bind_failed && attempt < 8 {
                if !self.started_once {
                    self.port = free_port();
                    self.write_conf();
                } else {
                    sleep(Duration::from_millis(250));
                }
                continue;
            }
            return Err(format!(
                "pg_ctl start failed ({}) for {}:\n{}{}\n--- server log ---\n{}",
                out.status,
                self.data_dir.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                new_log
            ));
        }
        self.pid = read_postmaster_pid(&self.data_dir);
        assert!(
            self.pid.is_some(),
            "server started but postmaster.pid is unreadable"
        );
        self.started_once = true;
        if self.needs_roles {
            self.create_roles();
            self.needs_roles = false;
        }
        Ok(())
    }

    fn create_roles(&self) {
        let mut sql = String::new();
        let with_password = |role: &str, encryption: &str| {
            format!(
                "SET password_encryption = '{encryption}';\n\
                 CREATE ROLE {role} LOGIN REPLICATION PASSWORD {};\n",
                sql_quote(&password(role))
            )
        };
        sql.push_str(&with_password(roles::MD5, "md5"));
        for role in [
            roles::SCRAM,
            roles::PASSWORD,
            roles::TRUST,
            roles::SSL_ONLY,
            roles::NO_SSL,
        ] {
            sql.push_str(&with_password(role, "scram-sha-256"));
        }
        sql.push_str(&format!(
            "ALTER ROLE postgres PASSWORD {};\n",
            sql_quote(&password(roles::SUPERUSER))
        ));
        self.psql(&sql);
    }

    /// Fast shutdown (`pg_ctl -m fast -w stop`); waits until the postmaster is gone.
    pub fn stop(&mut self) {
        self.stop_mode("fast");
    }

    /// Shutdown in `smart`, `fast` or `immediate` mode.
    pub fn stop_mode(&mut self, mode: &str) {
        let pid = self
            .pid
            .take()
            .or_else(|| read_postmaster_pid(&self.data_dir));
        run(pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t", "120", "stop"]));
        if let Some(pid) = pid {
            assert!(
                wait_dead(&[pid], TIMEOUT),
                "postmaster {pid} still alive after pg_ctl stop"
            );
        }
    }

    /// `stop()` then `start()`.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Crash: SIGKILL the postmaster and all its children at once, like a power cut of the
    /// server processes (the next `start()` runs crash recovery).
    pub fn kill9(&mut self) {
        let pid = self
            .pid
            .take()
            .or_else(|| read_postmaster_pid(&self.data_dir))
            .expect("kill9: cluster is not running");
        assert!(kill_tree(pid, TIMEOUT), "postmaster {pid} survived SIGKILL");
        // A zombie nobody reaps still answers kill(pid, 0), which the next postmaster would
        // take for a live owner of the lock file.
        if proc_stat(pid).is_some() {
            let _ = fs::remove_file(self.data_dir.join("postmaster.pid"));
        }
    }

    /// Re-reads the configuration (`pg_ctl reload`).
    pub fn reload(&self) {
        run(pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("reload"));
    }

    /// Adds a postgresql.conf line (effective after `reload()` or `restart()`).
    pub fn append_conf(&mut self, line: impl Into<String>) {
        self.extra_conf.push(line.into());
        self.write_conf();
    }

    /// Puts a line first in pg_hba.conf (effective after `reload()`).
    pub fn add_hba_line(&self, line: &str) {
        let path = self.data_dir.join("pg_hba.conf");
        let old = fs::read_to_string(&path).expect("read pg_hba.conf");
        write_file(&path, &format!("{line}\n{old}"));
    }

    pub fn is_running(&self) -> bool {
        self.pid.is_some_and(pid_alive)
    }

    /// Postmaster pid while running.
    pub fn pid(&self) -> Option<i32> {
        self.pid
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        HOST
    }

    /// Directory of the unix socket (also the cluster's root temp dir).
    pub fn socket_dir(&self) -> &Path {
        &self.root_path
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `host=127.0.0.1 port=N user=U` (no dbname, no password).
    pub fn conninfo(&self, user: &str) -> String {
        format!("host={HOST} port={} user={user}", self.port)
    }

    /// `conninfo(user)` plus the role's harness password.
    pub fn conninfo_with_password(&self, user: &str) -> String {
        format!("{} password={}", self.conninfo(user), password(user))
    }

    /// Path of the throwaway CA certificate (for `sslrootcert`). Panics unless built with ssl.
    pub fn ca_cert_path(&self) -> &Path {
        &self.ssl_files().ca_cert
    }

    /// All TLS files. Panics unless built with ssl.
    pub fn ssl_files(&self) -> &SslFiles {
        self.ssl
            .as_ref()
            .expect("cluster was built without ssl: use PgCluster::builder().ssl(true)")
    }

    /// A client certificate and key (mode 0600, owned by the test's user) for CN `cn`, signed
    /// by the cluster's CA, for `sslcert`/`sslkey` and `cert` authentication.
    pub fn client_cert(&self, cn: &str) -> (PathBuf, PathBuf) {
        let (crt, key) = self.ssl_files().issue(&format!("client-{cn}"), cn, false);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod client key");
        (crt, key)
    }

    /// Runs SQL as `postgres` over the unix socket (`psql -X -A -t -q`, ON_ERROR_STOP, the
    /// script on stdin so each statement is its own transaction) and returns stdout without
    /// the trailing newline. Panics with psql's stderr on failure.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| {
            panic!(
                "psql failed on port {}:\n{e}\n--- sql ---\n{sql}",
                self.port
            )
        })
    }

    /// As [`psql`](Self::psql), but returns psql's stderr as the error.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let mut child = pg_command("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.root_path)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run psql");
        let mut stdin = child.stdin.take().expect("psql stdin");
        let write_result = stdin.write_all(sql.as_bytes());
        drop(stdin);
        let out = child.wait_with_output().expect("wait for psql");
        if !out.status.success() || write_result.is_err() {
            return Err(format!(
                "psql exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        Ok(stdout.trim_end_matches('\n').to_string())
    }

    /// `pg_current_wal_lsn()` (the write position) as a number.
    pub fn current_wal_lsn(&self) -> u64 {
        parse_lsn(&self.current_wal_lsn_str())
    }

    /// `pg_current_wal_lsn()` as PostgreSQL prints it, `X/X`.
    pub fn current_wal_lsn_str(&self) -> String {
        self.psql("SELECT pg_current_wal_lsn()")
    }

    /// `pg_current_wal_flush_lsn()`: what a walsender may send.
    pub fn current_wal_flush_lsn(&self) -> u64 {
        parse_lsn(&self.psql("SELECT pg_current_wal_flush_lsn()"))
    }

    /// `pg_switch_wal()`; returns the name of the segment it closed (the current one when
    /// nothing was written since the last switch: then nothing is closed).
    pub fn switch_wal(&self) -> String {
        self.psql("SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// Timeline of the current write position (primaries and promoted standbys).
    pub fn timeline(&self) -> u32 {
        let name = self.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
        u32::from_str_radix(&name[..8], 16).expect("timeline from walfile name")
    }

    /// `pg_is_in_recovery()`.
    pub fn is_in_recovery(&self) -> bool {
        self.psql("SELECT pg_is_in_recovery()") == "t"
    }

    /// Database system identifier (`pg_control_system()`).
    pub fn system_identifier(&self) -> u64 {
        self.psql("SELECT system_identifier FROM pg_control_system()")
            .parse()
            .expect("system_identifier")
    }

    /// `<data>/pg_wal/<name>`.
    pub fn wal_segment_path(&self, name: &str) -> PathBuf {
        self.data_dir.join("pg_wal").join(name)
    }

    /// Creates a physical slot that reserves WAL at once; returns its restart LSN.
    pub fn create_physical_slot(&self, name: &str) -> u64 {
        parse_lsn(&self.psql(&format!(
            "SELECT lsn FROM pg_create_physical_replication_slot({}, true)",
            sql_quote(name)
        )))
    }

    pub fn drop_slot(&self, name: &str) {
        self.psql(&format!(
            "SELECT pg_drop_replication_slot({})",
            sql_quote(name)
        ));
    }

    /// `restart_lsn` of a slot; `None` if the slot does not exist or has none.
    pub fn slot_restart_lsn(&self, name: &str) -> Option<u64> {
        let out = self.psql(&format!(
            "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = {}",
            sql_quote(name)
        ));
        (!out.is_empty()).then(|| parse_lsn(&out))
    }

    /// The rows of `pg_stat_replication`, by pid.
    pub fn replication_stats(&self) -> Vec<ReplicationStat> {
        let out = self.psql(
            "SELECT pid, application_name, state, sent_lsn, write_lsn, flush_lsn, replay_lsn, \
             sync_state FROM pg_stat_replication ORDER BY pid",
        );
        let lsn = |s: &str| (!s.is_empty()).then(|| parse_lsn(s));
        out.lines()
            .filter(|l| !l.is_empty())
            .map(|line| {
                let f: Vec<&str> = line.split('|').collect();
                assert_eq!(f.len(), 8, "unexpected pg_stat_replication row {line:?}");
                ReplicationStat {
                    pid: f[0].parse().expect("pid"),
                    application_name: f[1].to_string(),
                    state: f[2].to_string(),
                    sent_lsn: lsn(f[3]),
                    write_lsn: lsn(f[4]),
                    flush_lsn: lsn(f[5]),
                    replay_lsn: lsn(f[6]),
                    sync_state: f[7].to_string(),
                }
            })
            .collect()
    }

    /// Promotes a standby (`pg_ctl promote -w`: returns once it accepts writes).
    pub fn promote(&self) {
        run(pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", "120", "promote"]));
    }

    /// Writes at least `megabytes` MiB of WAL (1000-row inserts into `walferry_filler`, one
    /// commit each) and returns `pg_current_wal_lsn()` afterwards.
    pub fn generate_wal(&self, megabytes: u64) -> u64 {
        self.psql(&format!(
            "CREATE TABLE IF NOT EXISTS walferry_filler (id bigserial PRIMARY KEY, pad text);\n\
             DO $$\n\
             DECLARE start_lsn pg_lsn := pg_current_wal_insert_lsn();\n\
             BEGIN\n\
               WHILE pg_current_wal_insert_lsn() - start_lsn < {bytes} LOOP\n\
                 INSERT INTO walferry_filler (pad)\n\
                   SELECT repeat('x', 1000) FROM generate_series(1, 1000);\n\
                 COMMIT;\n\
               END LOOP;\n\
             END $$;",
            bytes = megabytes * 1024 * 1024
        ));
        self.current_wal_lsn()
    }

    /// The server log so far (`<root>/server.log`).
    pub fn server_log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn server_log_path(&self) -> &Path {
        &self.log_path
    }

    /// A cluster of `primary`'s configuration (its extra settings plus `conf`) on a new port,
    /// whose data directory `data_dir` (in `root`) was made from `primary` (a base backup, a
    /// restore); its walferry.conf is written, the server not started.
    fn adopt(
        primary: &PgCluster,
        root: TempDir,
        root_path: PathBuf,
        data_dir: PathBuf,
        conf: &[String],
    ) -> PgCluster {
        // The base backup carries the primary's walferry.conf; ours is rewritten below. TLS
        // files are copied so the standby does not depend on the primary's temp dir.
        let ssl = primary.ssl.as_ref().map(|p| {
            let dir = root_path.join("ssl");
            fs::create_dir_all(&dir).expect("create ssl dir");
            chown_to_postgres(&dir);
            let copy = |src: &Path| {
                let dst = dir.join(src.file_name().expect("file name"));
                fs::copy(src, &dst).expect("copy ssl file");
                chown_to_postgres(&dst);
                dst
            };
            SslFiles {
                ca_cert: copy(&p.ca_cert),
                ca_key: copy(&p.ca_key),
                server_cert: copy(&p.server_cert),
                server_key: copy(&p.server_key),
                dir,
            }
        });
        let mut extra_conf = primary.extra_conf.clone();
        extra_conf.extend(conf.iter().cloned());
        let standby = PgCluster {
            root: Some(root),
            log_path: root_path.join("server.log"),
            root_path,
            data_dir,
            port: free_port(),
            fsync: primary.fsync,
            extra_conf,
            ssl,
            pid: None,
            started_once: false,
            needs_roles: false,
        };
        standby.write_conf();
        standby
    }

    /// A cluster whose data directory `fill` lays out at the path it is given (which must
    /// end up owned by the postgres user, e.g. `walferry restore` run as postgres), set up as
    /// `primary` is, on a new port; not started.
    pub fn restored_from(primary: &PgCluster, fill: impl FnOnce(&Path)) -> PgCluster {
        let (root, root_path) = Self::new_root();
        let data_dir = root_path.join("data");
        fill(&data_dir);
        Self::adopt(primary, root, root_path, data_dir, &[])
    }

    /// A streaming standby of `primary`: `pg_basebackup -R -X stream -c fast` (as postgres)
    /// into a new temp dir, its own port and socket, started unless `opts.no_start`.
    pub fn standby_of(primary: &PgCluster, opts: StandbyOptions) -> PgCluster {
        let (root, root_path) = Self::new_root();
        let data_dir = root_path.join("data");
        let mut basebackup = pg_command("pg_basebackup");
        basebackup
            .arg("-D")
            .arg(&data_dir)
            .args([
                "-h",
                HOST,
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-c", "fast"]);
        if opts.restore_command.is_some() {
            basebackup.args(["-X", "none"]);
        } else {
            basebackup.args(["-R", "-X", "stream"]);
        }
        if !primary.fsync {
            basebackup.arg("--no-sync");
        }
        if let Some(slot) = &opts.slot {
            basebackup.args(["-C", "-S", slot]);
        }
        run(&mut basebackup);
        let mut standby = Self::adopt(primary, root, root_path, data_dir, &opts.conf);
        if let Some(conninfo) = &opts.primary_conninfo {
            // postgresql.auto.conf is read last and its last setting wins.
            append_file(
                &standby.data_dir.join("postgresql.auto.conf"),
                &format!("primary_conninfo = {}\n", conf_quote(conninfo)),
            );
        }
        if let Some(command) = &opts.restore_command {
            append_file(
                &standby.data_dir.join("postgresql.auto.conf"),
                &format!("restore_command = {}\n", conf_quote(command)),
            );
            write_file(&standby.data_dir.join("recovery.signal"), "");
        }
        if !opts.no_start {
            standby.start();
        }
        standby
    }

    /// Waits (up to [`TIMEOUT`]) until this standby has replayed `lsn`.
    pub fn wait_for_replay(&self, lsn: u64) {
        let sql = format!(
            "SELECT pg_last_wal_replay_lsn() >= '{}'::pg_lsn",
            format_lsn(lsn)
        );
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if self.psql(&sql) == "t" {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "standby on port {} did not replay {} within {TIMEOUT:?} (replayed: {})",
                    self.port,
                    format_lsn(lsn),
                    self.psql("SELECT pg_last_wal_replay_lsn()")
                );
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server without panicking, whatever state it is in.
    fn shutdown_quietly(&mut self) {
        let pid = self
            .pid
            .take()
            .or_else(|| read_postmaster_pid(&self.data_dir));
        let Some(pid) = pid else { return };
        if !pid_alive(pid) {
            return;
        }
        let _ = pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "-t", "10", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !wait_dead(&[pid], Duration::from_secs(5)) {
            kill_tree(pid, Duration::from_secs(10));
        }
    }
}

/// pg_hba.conf: socket trust; the test's own lines; then one line per harness role (for both
/// ordinary and replication connections) so trust, password, md5 and scram work side by side;
/// then the catch-all lines with `auth`.
fn render_hba(extra: &[String], auth: &str, ssl: bool) -> String {
    let mut hba = String::from(
        "# TYPE  DATABASE  USER  ADDRESS  METHOD  (written by tests/common)\n\
         local   all          all                    trust\n\
         local   replication  all                    trust\n",
    );
    for line in extra {
        hba.push_str(line);
        hba.push('\n');
    }
    let mut per_role = vec![
        ("host", roles::SUPERUSER, "trust"),
        ("host", roles::TRUST, "trust"),
        ("host", roles::MD5, "md5"),
        ("host", roles::SCRAM, "scram-sha-256"),
        ("host", roles::PASSWORD, "password"),
        ("hostnossl", roles::NO_SSL, "scram-sha-256"),
    ];
    if ssl {
        // Without ssl=on a hostssl line can never match (and the server warns about it).
        per_role.push(("hostssl", roles::SSL_ONLY, "scram-sha-256"));
    }
    // Whatever the TLS-restricted roles' own lines did not admit, the catch-all must not.
    per_role.push(("host", roles::SSL_ONLY, "reject"));
    per_role.push(("host", roles::NO_SSL, "reject"));
    for (kind, role, method) in per_role {
        for db in ["all", "replication"] {
            hba.push_str(&format!("{kind:9} {db:12} {role:17} {HOST}/32 {method}\n"));
        }
    }
    for db in ["all", "replication"] {
        hba.push_str(&format!(
            "host      {db:12} all               {HOST}/32 {auth}\n"
        ));
    }
    hba
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            let log = self.server_log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            eprintln!(
                "---- server log of cluster on port {} ({}), last {} lines ----\n{}\n---- end of server log ----",
                self.port,
                self.log_path.display(),
                tail.len(),
                tail.join("\n")
            );
        }
        self.shutdown_quietly();
        if panicking && std::env::var_os("WALFERRY_KEEP_TEST_DIRS").is_some() {
            if let Some(root) = self.root.take() {
                // Without an owner file the orphan sweep leaves the dir alone.
                let _ = fs::remove_file(self.root_path.join(OWNER_FILE));
                eprintln!("kept cluster dir {}", root.keep().display());
            }
        }
    }
}

/// Status code and body of `GET path` over a plain TCP connection.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// A tmpfs mounted on a fresh temp dir; unmounted on drop (also while panicking).
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` when this environment does not let us mount and the `tmpfs` prerequisite is
    /// allowed to be missing (otherwise that panics).
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempdir();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        let failure = match out {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "mount failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Some(format!("cannot run mount: {e}")),
        };
        if let Some(failure) = failure {
            prerequisite::missing(
                "tmpfs",
                &format!(
                    "cannot mount a tmpfs for a full disk (needs root or CAP_SYS_ADMIN): {failure}"
                ),
            );
            return None;
        }
        // Writable by the postgres user too (for tests that run walferry as postgres).
        chown_to_postgres(dir.path());
        Some(Tmpfs {
            path: dir.path().to_path_buf(),
            _dir: dir,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something (a killed child) may still hold it: detach it lazily.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// A seeded xorshift generator: random-but-replayable schedules (the seed is printed).
pub struct Rng(u64, u64);

impl Rng {
    pub fn from_env_or_time(var: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        eprintln!("random schedule seed: {var}={seed}");
        Rng(seed, seed)
    }

    /// The seed the schedule started from (to quote in a failure).
    pub fn seed(&self) -> u64 {
        self.1
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}
