//! Helpers shared by the `walferry receive` integration tests (`tests/receive_*.rs`): running
//! walferry and pg_receivewal as a DBA would, fast WAL generation, and byte-level comparison
//! of an archive directory with a server's `pg_wal`.
//!
//! Every wait is bounded; every walferry child is killed by its guard, also when a test
//! panics.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::common::{
    self, client_command, format_lsn, pg_bin, segment_name, walferry_bin, PgCluster,
    WAL_SEGMENT_SIZE,
};

/// Upper bound for one walferry or pg_receivewal run in these tests.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// `walferry receive -D dir -d "host=... port=... user=postgres"`, environment cleaned.
pub fn walferry(pg: &PgCluster, dir: &Path) -> Command {
    walferry_as(pg, dir, common::roles::SUPERUSER)
}

pub fn walferry_as(pg: &PgCluster, dir: &Path, user: &str) -> Command {
    let mut cmd = client_command(walferry_bin());
    cmd.arg("receive")
        .arg("-D")
        .arg(dir)
        .arg("-d")
        .arg(pg.conninfo(user));
    cmd
}

/// `walferry receive` without a directory (slot management, connection probes).
pub fn walferry_bare() -> Command {
    let mut cmd = client_command(walferry_bin());
    cmd.arg("receive");
    cmd
}

/// `pg_receivewal -D dir -d "host=... port=... user=postgres" --no-password`.
pub fn pg_receivewal(pg: &PgCluster, dir: &Path) -> Command {
    let mut cmd = client_command(pg_bin("pg_receivewal"));
    cmd.arg("-D")
        .arg(dir)
        .arg("-d")
        .arg(pg.conninfo(common::roles::SUPERUSER))
        .arg("--no-password");
    cmd
}

/// Runs pg_receivewal (or walferry) with `-E` to completion (bounded) and panics unless it
/// exits 0. pg_receivewal stops only once it has received WAL *beyond* its endpos, so small
/// commits are made until it exits (walferry stops as soon as the endpos itself is flushed).
pub fn run_to_endpos_ok(pg: &PgCluster, cmd: &mut Command) -> Output {
    let mut child = Proc::spawn(cmd);
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(s) = child.wait_timeout(Duration::from_millis(200)) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{cmd:?} did not finish within {RUN_TIMEOUT:?}\n--- stderr ---\n{}",
            child.stderr()
        );
        small_commit(pg);
    };
    assert!(
        status.success(),
        "{cmd:?} failed with {status}\n--- stderr ---\n{}",
        child.stderr()
    );
    Output {
        status,
        stdout: Vec::new(),
        stderr: child.stderr().into_bytes(),
    }
}

/// Runs `cmd` to completion within `timeout` (killing it after that) and returns its output.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = Proc::spawn(cmd);
    let status = child.wait_timeout(timeout).unwrap_or_else(|| {
        panic!(
            "{cmd:?} did not finish within {timeout:?}\n--- stderr ---\n{}",
            child.stderr()
        )
    });
    Output {
        status,
        stdout: Vec::new(),
        stderr: child.stderr().into_bytes(),
    }
}

/// Runs `cmd` (bounded) and panics with its stderr unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run_bounded(cmd, RUN_TIMEOUT);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A child process (walferry or pg_receivewal) whose stderr goes to a file the test can read
/// while it runs. Dropping the guard SIGKILLs and reaps it.
pub struct Proc {
    child: Child,
    stderr_file: tempfile::NamedTempFile,
    exited: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let stderr_file = tempfile::NamedTempFile::new().expect("stderr temp file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                stderr_file.reopen().expect("reopen stderr temp file"),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        Proc {
            child,
            stderr_file,
            exited: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        let mut s = String::new();
        let _ = fs::File::open(self.stderr_file.path()).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the exit (bounded by [`RUN_TIMEOUT`]); panics with stderr on a timeout.
    pub fn wait(&mut self) -> ExitStatus {
        match self.wait_timeout(RUN_TIMEOUT) {
            Some(s) => s,
            None => panic!(
                "process {} still running after {RUN_TIMEOUT:?}\n--- stderr ---\n{}",
                self.pid(),
                self.stderr()
            ),
        }
    }

    /// Waits for exit code 0; panics with stderr otherwise.
    pub fn wait_success(&mut self) {
        let status = self.wait();
        assert!(
            status.success(),
            "process exited with {status}\n--- stderr ---\n{}",
            self.stderr()
        );
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        let _ = self.child.kill();
        self.exited = Some(self.child.wait().expect("wait after kill"));
    }

    /// Resident set size in KiB (`VmRSS` of /proc/PID/status), while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        self.proc_status_kib("VmRSS:")
    }

    /// Peak resident set size so far in KiB (`VmHWM`), while it runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.proc_status_kib("VmHWM:")
    }

    fn proc_status_kib(&self, field: &str) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- stderr of child {} ----\n{}\n---- end ----",
                self.pid(),
                self.stderr()
            );
        }
    }
}

/// Writes at least `megabytes` MiB of WAL fast (non-transactional logical messages of
/// ~1 MiB of md5 hex each, which compresses about as well as real WAL) and returns
/// `pg_current_wal_flush_lsn()` after a commit has flushed it all.
pub fn emit_wal(pg: &PgCluster, megabytes: u64) -> u64 {
    let start = pg.current_wal_lsn();
    pg.psql(&format!(
        "WITH blob AS MATERIALIZED \
           (SELECT string_agg(md5(i::text), '') AS b FROM generate_series(1, 32768) i) \
         SELECT count(pg_logical_emit_message(false, 'walferry-test', g::text || b)) \
         FROM blob, generate_series(1, {megabytes}) g"
    ));
    // Non-transactional messages are not flushed by themselves; a commit flushes them.
    small_commit(pg);
    let end = flush_lsn(pg);
    assert!(
        end >= start + megabytes * 1024 * 1024,
        "emit_wal({megabytes}) wrote only {} bytes",
        end - start
    );
    end
}

/// `pg_current_wal_flush_lsn()`: what a walsender can send right now.
pub fn flush_lsn(pg: &PgCluster) -> u64 {
    pg.current_wal_flush_lsn()
}

/// A commit on the server (a tiny table insert) so the stream has a fresh record.
pub fn small_commit(pg: &PgCluster) {
    pg.psql("CREATE TABLE IF NOT EXISTS walferry_tick (t timestamptz); INSERT INTO walferry_tick VALUES (now());");
}

/// File names in `dir` with their sizes, sorted; without walferry's lock file.
pub fn list_dir(dir: &Path) -> BTreeMap<String, u64> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| {
            let e = e.ok()?;
            if e.file_name() == LOCK_FILE {
                return None;
            }
            let meta = e.metadata().ok()?;
            meta.is_file()
                .then(|| (e.file_name().to_string_lossy().into_owned(), meta.len()))
        })
        .collect()
}

/// walferry's lock file in an archive directory (see `walferry::archive::LOCK_FILE`).
pub const LOCK_FILE: &str = ".walferry.lock";

/// A WAL file name split into (24-digit segment, compression suffix, partial).
pub fn split_wal_name(name: &str) -> Option<(&str, &str, bool)> {
    let (rest, partial) = match name.strip_suffix(".partial") {
        Some(r) => (r, true),
        None => (name, false),
    };
    if rest.len() < 24 || !rest[..24].bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let suffix = &rest[24..];
    matches!(suffix, "" | ".gz" | ".lz4" | ".zst").then_some((&rest[..24], suffix, partial))
}

/// Complete segment files in `dir` as (segment name, file name), sorted by name.
pub fn complete_segments(dir: &Path) -> Vec<(String, String)> {
    list_dir(dir)
        .into_keys()
        .filter_map(|f| {
            let (seg, _, partial) = split_wal_name(&f)?;
            (!partial).then(|| (seg.to_string(), f.clone()))
        })
        .collect()
}

/// `.partial` files in `dir`, sorted.
pub fn partial_segments(dir: &Path) -> Vec<String> {
    list_dir(dir)
        .into_keys()
        .filter(|f| split_wal_name(f).is_some_and(|(_, _, p)| p))
        .collect()
}

/// Segment number of a 24-digit name (16 MiB segments).
pub fn segno_of(segment: &str) -> u64 {
    let log = u64::from_str_radix(&segment[8..16], 16).expect("hex");
    let seg = u64::from_str_radix(&segment[16..24], 16).expect("hex");
    log * (0x1_0000_0000 / WAL_SEGMENT_SIZE) + seg
}

pub fn tli_of(segment: &str) -> u32 {
    u32::from_str_radix(&segment[..8], 16).expect("hex")
}

/// The uncompressed bytes of a segment file, decompressed by the system's own gzip, lz4 and
/// zstd programs (not by walferry's code, which is what is under test). A compressed
/// `.partial` left by `kill -9` may end mid-stream: then whatever decodes is returned (the
/// callers compare those bytes with the server's, so a short read still fails them).
pub fn read_wal_file(path: &Path) -> Vec<u8> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let (_, suffix, partial) =
        split_wal_name(&name).unwrap_or_else(|| panic!("not a WAL file name: {name}"));
    let tool = match suffix {
        "" => return fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
        ".gz" => "gzip",
        ".lz4" => "lz4",
        ".zst" => "zstd",
        _ => unreachable!(),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    assert!(
        out.status.success() || partial,
        "{tool} -dc {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A compressed file decompresses without error (a cleanly closed stream, as walferry
/// leaves a `.partial` when it stops at `--endpos` or on a signal).
pub fn assert_decompresses_cleanly(path: &Path) {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let tool = match split_wal_name(&name).map(|(_, suffix, _)| suffix) {
        Some(".gz") => "gzip",
        Some(".lz4") => "lz4",
        Some(".zst") => "zstd",
        _ => return,
    };
    let out = Command::new(tool)
        .args(["-t"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} -t {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// First position where `a` and `b` differ (or the shorter length), for messages.
pub fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// Asserts that `ours` (a whole segment, decompressed) equals the server's file `reference`.
pub fn assert_same_segment(what: &str, ours: &[u8], reference: &Path) {
    let theirs =
        fs::read(reference).unwrap_or_else(|e| panic!("read {}: {e}", reference.display()));
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{what}: {} bytes, {} has {}",
        ours.len(),
        reference.display(),
        theirs.len()
    );
    if ours != theirs.as_slice() {
        panic!(
            "{what} differs from {} at byte {:#x}",
            reference.display(),
            first_difference(ours, &theirs)
        );
    }
}

/// Every complete segment in `dir` (any compression) is byte-identical to the file of that
/// name in `pg`'s pg_wal. Returns the segment names checked.
pub fn assert_complete_segments_match(dir: &Path, pg: &PgCluster) -> Vec<String> {
    let segs = complete_segments(dir);
    for (seg, file) in &segs {
        let ours = read_wal_file(&dir.join(file));
        assert_eq!(
            ours.len() as u64,
            WAL_SEGMENT_SIZE,
            "{file} is not a whole segment"
        );
        assert_same_segment(file, &ours, &pg.wal_segment_path(seg));
    }
    segs.into_iter().map(|(s, _)| s).collect()
}

/// The complete segments of one timeline in `dir` follow each other without a gap, from
/// `first` (a segment name) on; returns how many there are.
pub fn assert_contiguous(dir: &Path, tli: u32, first: &str) -> usize {
    let segs: Vec<u64> = complete_segments(dir)
        .iter()
        .filter(|(s, _)| tli_of(s) == tli)
        .map(|(s, _)| segno_of(s))
        .collect();
    assert!(
        !segs.is_empty(),
        "no complete segment of timeline {tli} in {}",
        dir.display()
    );
    assert_eq!(
        segs[0],
        segno_of(first),
        "first segment of timeline {tli} in {}: {:?}",
        dir.display(),
        list_dir(dir)
    );
    for pair in segs.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "gap after segment {:X} in {}: {:?}",
            pair[0],
            dir.display(),
            list_dir(dir)
        );
    }
    segs.len()
}

/// Asserts that `file` (a `.partial`, maybe compressed) holds the server's bytes of its
/// segment up to `end` (an LSN inside that segment or at its end).
pub fn assert_partial_prefix(file: &Path, reference: &Path, seg_start: u64, end: u64) {
    let ours = read_wal_file(file);
    let theirs =
        fs::read(reference).unwrap_or_else(|e| panic!("read {}: {e}", reference.display()));
    let n = (end - seg_start) as usize;
    assert!(
        ours.len() >= n,
        "{} holds {} bytes, expected at least {n} (up to {})",
        file.display(),
        ours.len(),
        format_lsn(end)
    );
    assert!(theirs.len() >= n, "{} too short", reference.display());
    if ours[..n] != theirs[..n] {
        panic!(
            "{} differs from {} at byte {:#x} (before {})",
            file.display(),
            reference.display(),
            first_difference(&ours[..n], &theirs[..n]),
            format_lsn(end)
        );
    }
}

/// Name of the segment that holds the byte just before `lsn` (the last byte written when a
/// stream ends at `lsn`).
pub fn segment_before(tli: u32, lsn: u64) -> String {
    segment_name(tli, lsn - 1)
}

/// Start LSN of a 24-digit segment name.
pub fn segment_start_lsn(segment: &str) -> u64 {
    segno_of(segment) * WAL_SEGMENT_SIZE
}

/// Polls until `dir` holds a file named `name`.
pub fn wait_for_file(dir: &Path, name: &str, timeout: Duration) {
    common::wait_until(&format!("{name} in {}", dir.display()), timeout, || {
        dir.join(name).exists()
    });
}

/// A scratch copy of an archive for pg_waldump: segments decompressed, `.partial` renamed to
/// the plain name (pg_waldump reads only plain names). A complete file wins over a partial.
pub fn waldump_copy(dir: &Path, into: &Path) {
    let mut chosen: BTreeMap<String, (bool, PathBuf)> = BTreeMap::new();
    for name in list_dir(dir).into_keys() {
        let Some((seg, _, partial)) = split_wal_name(&name) else {
            continue;
        };
        let entry = chosen
            .entry(seg.to_string())
            .or_insert((partial, dir.join(&name)));
        if entry.0 && !partial {
            *entry = (partial, dir.join(&name));
        }
    }
    for (seg, (_, path)) in chosen {
        // A compressed .partial decompresses short; pg_waldump wants whole segments.
        let mut bytes = read_wal_file(&path);
        bytes.resize(WAL_SEGMENT_SIZE as usize, 0);
        fs::write(into.join(seg), bytes).expect("write waldump copy");
    }
}

/// `pg_waldump -p dir -t tli -s start [extra]`: stdout and stderr.
pub fn pg_waldump(dir: &Path, tli: u32, start: u64, extra: &[&str]) -> (String, String, bool) {
    let out = client_command(pg_bin("pg_waldump"))
        .arg("-p")
        .arg(dir)
        .args(["-t", &tli.to_string(), "-s", &format_lsn(start)])
        .args(extra)
        .output()
        .expect("run pg_waldump");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// `walferry receive -D <fresh dir> -d <conninfo> -E <endpos> -w`, HOME an empty directory
/// (no ~/.postgresql files) unless `setup` says otherwise.
pub fn probe_to(endpos: u64, conninfo: &str, setup: impl FnOnce(&mut Command)) -> Output {
    let dir = common::tempdir();
    let home = common::tempdir();
    let mut cmd = walferry_bare();
    cmd.arg("-D")
        .arg(dir.path())
        .args(["-d", conninfo, "-E", &format_lsn(endpos), "-w"])
        .env("HOME", home.path());
    setup(&mut cmd);
    let out = run_bounded(&mut cmd, RUN_TIMEOUT);
    if out.status.success() {
        assert_eq!(
            partial_segments(dir.path()).len(),
            1,
            "{:?}",
            list_dir(dir.path())
        );
    }
    out
}

/// A probe against `pg` up to its current flush position.
pub fn probe(pg: &PgCluster, conninfo: &str, setup: impl FnOnce(&mut Command)) -> Output {
    small_commit(pg);
    probe_to(flush_lsn(pg), conninfo, setup)
}
