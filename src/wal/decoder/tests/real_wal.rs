//! Real PostgreSQL 15 WAL, judged by pg_waldump: the first segment `initdb` writes, then the
//! WAL of a short workload with restore points, prepared transactions, aborts and an XLOG
//! switch. Fails when the PostgreSQL programs are not installed, unless
//! `WALFERRY_TEST_ALLOW_MISSING=postgresql` says this machine cannot have them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use super::*;

// The integration tests' rule for a missing prerequisite, shared with them.
#[path = "../../../../tests/common/prerequisite.rs"]
mod prerequisite;

const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
const SEG16: u64 = 16 << 20;

fn pg_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("WALFERRY_PG_BIN").unwrap_or_else(|| PG_BIN_DIR.into());
    PathBuf::from(dir).join(name)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A PostgreSQL program run as `postgres` when we are root (postgres refuses root).
fn pg(name: &str, cwd: &Path) -> Command {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(name));
        c
    } else {
        Command::new(pg_bin(name))
    };
    cmd.current_dir(cwd).env("LC_ALL", "C").env("TZ", "UTC");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn ok(mut cmd: Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One line of pg_waldump output.
#[derive(Debug)]
struct Dumped {
    rmgr: String,
    tot_len: u32,
    xid: u32,
    lsn: Lsn,
    prev: Lsn,
    desc: String,
}

/// `rmgr: Heap        len (rec/tot):     92/    92, tx:        724, lsn: 0/030AA680, prev 0/030AA620, desc: INSERT ...`
fn parse_waldump(stdout: &str) -> Vec<Dumped> {
    let field = |line: &str, key: &str, end: &str| -> String {
        let from = line
            .find(key)
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            + key.len();
        let rest = &line[from..];
        rest[..rest.find(end).unwrap_or(rest.len())]
            .trim()
            .to_string()
    };
    stdout
        .lines()
        .filter(|l| l.starts_with("rmgr: "))
        .map(|l| Dumped {
            rmgr: field(l, "rmgr: ", " "),
            tot_len: field(l, "len (rec/tot):", ",")
                .split('/')
                .nth(1)
                .unwrap()
                .trim()
                .parse()
                .unwrap(),
            xid: field(l, "tx:", ",").parse().unwrap(),
            lsn: field(l, "lsn: ", ",").parse().unwrap(),
            prev: field(l, "prev ", ",").parse().unwrap(),
            desc: l[l.find("desc: ").unwrap() + 6..].to_string(),
        })
        .collect()
}

/// Decodes the files in order, fed in 128 KiB chunks like 'w' messages.
fn decode_files(files: &[PathBuf], start: Lsn) -> (Vec<Record>, WalDecoder) {
    let mut dec = WalDecoder::new(start, TimeLineId(1), SEG16, None).unwrap();
    let mut recs = Vec::new();
    for f in files {
        let bytes = std::fs::read(f).unwrap();
        assert_eq!(bytes.len() as u64, SEG16);
        for chunk in bytes.chunks(128 * 1024) {
            for r in dec.feed(chunk) {
                recs.push(r.unwrap_or_else(|e| panic!("{}: {e}", f.display())));
            }
        }
    }
    (recs, dec)
}

/// The LSN in pg_waldump's closing "invalid record length at X/X: wanted 24, got 0".
fn waldump_end(stderr: &str) -> Option<Lsn> {
    let at = stderr.find("invalid record length at ")? + "invalid record length at ".len();
    stderr[at..].split(':').next()?.parse().ok()
}

fn compare(recs: &[Record], dumped: &[Dumped]) {
    assert_eq!(recs.len(), dumped.len(), "number of records");
    for (r, d) in recs.iter().zip(dumped) {
        assert_eq!(
            (r.lsn, r.rmgr_name().as_ref(), r.tot_len, r.xid, r.prev),
            (d.lsn, d.rmgr.as_str(), d.tot_len, d.xid, d.prev),
            "record {d:?}"
        );
        let op = d.desc.split([' ', ';']).next().unwrap_or("");
        match &r.kind {
            RecordKind::Checkpoint(c) => {
                assert!(
                    d.desc.contains(&format!(
                        "redo {}; tli {}; prev tli {};",
                        c.redo, c.tli, c.prev_tli
                    )),
                    "{d:?}"
                );
                assert_eq!(
                    op,
                    if c.shutdown {
                        "CHECKPOINT_SHUTDOWN"
                    } else {
                        "CHECKPOINT_ONLINE"
                    }
                );
            }
            RecordKind::Switch => assert_eq!(op, "SWITCH"),
            RecordKind::RestorePoint(p) => {
                assert_eq!(d.desc, format!("RESTORE_POINT {}", p.name()))
            }
            RecordKind::Commit(x) => {
                assert!(op == "COMMIT" || op == "COMMIT_PREPARED", "{d:?}");
                assert_eq!(x.prepared, op == "COMMIT_PREPARED");
                if x.prepared {
                    assert!(
                        d.desc.starts_with(&format!("COMMIT_PREPARED {}: ", x.xid)),
                        "{d:?}"
                    );
                }
                assert_recent(x.time);
            }
            RecordKind::Abort(x) => {
                assert!(op == "ABORT" || op == "ABORT_PREPARED", "{d:?}");
                assert_eq!(x.prepared, op == "ABORT_PREPARED");
                if x.prepared {
                    assert!(
                        d.desc.starts_with(&format!("ABORT_PREPARED {}: ", x.xid)),
                        "{d:?}"
                    );
                }
                assert_recent(x.time);
            }
            RecordKind::EndOfRecovery(_) | RecordKind::OverwriteContrecord { .. } => {}
            RecordKind::Other => {
                assert!(
                    !matches!(
                        op,
                        "CHECKPOINT_SHUTDOWN" | "CHECKPOINT_ONLINE" | "SWITCH" | "RESTORE_POINT"
                    ) || d.rmgr != "XLOG",
                    "{d:?} decoded as Other"
                );
                assert!(
                    !(d.rmgr == "Transaction" && op.starts_with("COMMIT")),
                    "{d:?}"
                );
            }
        }
    }
}

fn assert_recent(t: TimestampTz) {
    let now = SystemTime::now();
    let t = t.to_system_time();
    let skew = now.duration_since(t).unwrap_or_else(|e| e.duration());
    assert!(
        skew < Duration::from_secs(3600),
        "time {t:?} is not about now"
    );
}

fn wal_files(pg_wal: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(pg_wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().len() == 24)
        .collect();
    files.sort();
    files
}

#[test]
fn real_wal_matches_pg_waldump() {
    if !pg_bin("initdb").exists() || !pg_bin("pg_waldump").exists() {
        prerequisite::missing(
            "postgresql",
            &format!(
                "no PostgreSQL 15 programs in {} (install postgresql-15 with scripts/setup.sh, \
                 or set WALFERRY_PG_BIN)",
                pg_bin("").display()
            ),
        );
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("walferry-decoder-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    if is_root() {
        let st = Command::new("chown")
            .arg("postgres:")
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let data = dir.join("data");
    let pg_wal = data.join("pg_wal");
    let mut initdb = pg("initdb", dir);
    initdb
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
        .arg(&data);
    ok(initdb);

    // 1. The first segment initdb writes.
    let first = pg_wal.join("000000010000000000000001");
    let (recs, dec) = decode_files(std::slice::from_ref(&first), Lsn(SEG16));
    let mut dump = pg("pg_waldump", dir);
    dump.arg("-p").arg(&pg_wal).arg("000000010000000000000001");
    let out = dump.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dumped = parse_waldump(&stdout);
    assert!(
        dumped.len() > 100,
        "pg_waldump printed {} records: {stderr}",
        dumped.len()
    );
    compare(&recs, &dumped);
    assert_eq!(dec.end_of_wal(), waldump_end(&stderr), "{stderr}");
    assert_eq!(dec.valid_end(), dec.end_of_wal().unwrap());
    let control = String::from_utf8(
        ok({
            let mut c = pg("pg_controldata", dir);
            c.arg(&data);
            c
        })
        .stdout,
    )
    .unwrap();
    let sysid: u64 = control
        .lines()
        .find_map(|l| l.strip_prefix("Database system identifier:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(dec.system_id(), Some(sysid));
    assert_eq!(dec.version(), Some(WalVersion::Pg15));

    // 2. A workload: restore points (1 and 63 bytes), commits, an abort, prepared
    // transactions, an XLOG switch, records across segments, a shutdown checkpoint.
    // No TCP (listen_addresses is empty) and the socket is in this test's own dir, so no
    // other server can hold this port: it only names the socket file.
    let port = "5432";
    let opts = format!(
        "-p {port} -k {} -c listen_addresses='' -c max_prepared_transactions=4 \
         -c wal_keep_size=1GB -c fsync=off",
        dir.display()
    );
    let mut start = pg("pg_ctl", dir);
    start
        .args(["-w", "-l"])
        .arg(dir.join("log"))
        .arg("-D")
        .arg(&data)
        .args(["-o", &opts, "start"]);
    ok(start);
    let name63 = "n".repeat(63);
    let sql = format!(
        "select pg_create_restore_point('a');
         select pg_create_restore_point('{name63}');
         create table t (g int, s text);
         insert into t select g, md5(g::text) from generate_series(1, 30000) g;
         begin; insert into t values (1, 'x'); rollback;
         begin; insert into t values (2, 'y'); prepare transaction 'p1';
         commit prepared 'p1';
         begin; insert into t values (3, 'z'); prepare transaction 'p2';
         rollback prepared 'p2';
         select pg_switch_wal();
         insert into t select g, repeat('w', 2000) from generate_series(1, 12000) g;
         checkpoint;"
    );
    // Statement by statement from stdin: one -c string would be a single transaction.
    let mut psql = pg("psql", dir);
    psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(dir)
        .args(["-p", port, "-U", "postgres", "-d", "postgres", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = psql.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(sql.as_bytes()).unwrap();
    }
    let psql_out = child.wait_with_output().unwrap();
    let mut stop = pg("pg_ctl", dir);
    stop.args(["-w", "-m", "fast", "-D"]).arg(&data).arg("stop");
    ok(stop);
    assert!(
        psql_out.status.success(),
        "{}",
        String::from_utf8_lossy(&psql_out.stderr)
    );

    let files = wal_files(&pg_wal);
    assert!(files.len() >= 3, "{files:?}");
    let (recs, dec) = decode_files(&files, Lsn(SEG16));
    let last = files
        .last()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let mut dump = pg("pg_waldump", dir);
    dump.arg("-p")
        .arg(&pg_wal)
        .arg("000000010000000000000001")
        .arg(&last);
    let out = dump.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dumped = parse_waldump(&stdout);
    compare(&recs, &dumped);
    assert_eq!(dec.end_of_wal(), waldump_end(&stderr), "{stderr}");

    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &recs {
        let k = match r.kind {
            RecordKind::Switch => "switch",
            RecordKind::RestorePoint(_) => "restore point",
            RecordKind::Commit(x) if x.prepared => "commit prepared",
            RecordKind::Abort(x) if x.prepared => "abort prepared",
            RecordKind::Abort(_) => "abort",
            RecordKind::Checkpoint(c) if c.shutdown => "shutdown checkpoint",
            _ => continue,
        };
        *kinds.entry(k).or_default() += 1;
    }
    for k in [
        "switch",
        "restore point",
        "commit prepared",
        "abort prepared",
        "abort",
        "shutdown checkpoint",
    ] {
        assert!(
            kinds.get(k).copied().unwrap_or(0) >= 1,
            "no {k} record: {kinds:?}"
        );
    }
    let names: Vec<String> = recs
        .iter()
        .filter_map(|r| match &r.kind {
            RecordKind::RestorePoint(p) => Some(p.name().into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(names, vec!["a".to_string(), name63]);
    assert!(
        recs.iter()
            .any(|r| r.lsn.0 / SEG16 != (r.end.0 - 1) / SEG16 && r.kind != RecordKind::Switch),
        "no record crosses a segment boundary"
    );
}
