//! A failover lab for the agent tests: real PostgreSQL 15 clusters, a `walferry witness` and
//! one `walferry agent` per node, all run as the postgres user (the agent owns PGDATA's
//! server), torn down agents first so that no agent restarts a server the harness stops.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::common::{chown_to_postgres, postgres_command, tempdir, walferry_bin, PgCluster, HOST};

pub const SECRET: &str = "a-shared-secret-for-the-agent-tests";

/// The settings every lab cluster needs: pg_rewind works (wal_log_hints), standbys reply
/// every second (the primary's fence check counts them).
pub const LAB_CONF: [&str; 2] = ["wal_log_hints = on", "wal_receiver_status_interval = 1s"];

/// A running primary with [`LAB_CONF`] and `extra` settings.
pub fn lab_primary(extra: &[String]) -> PgCluster {
    let mut builder = PgCluster::builder();
    for line in LAB_CONF
        .iter()
        .map(|l| l.to_string())
        .chain(extra.iter().cloned())
    {
        builder = builder.conf(line);
    }
    builder.start()
}

/// A primary with [`LAB_CONF`], table `t(session, seq)` for a [`Writer`], and its streaming
/// standby.
pub fn writer_pair() -> (PgCluster, PgCluster) {
    let a = lab_primary(&[]);
    a.psql("CREATE TABLE t (session int, seq int, PRIMARY KEY (session, seq))");
    let b = PgCluster::standby_of(&a, crate::common::StandbyOptions::new());
    (a, b)
}

pub struct AgentProc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl AgentProc {
    pub fn log_text(&mut self) -> String {
        let exited = match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => format!("(exited: {status})\n"),
            _ => String::new(),
        };
        format!(
            "{exited}{}",
            fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct WitnessProc {
    child: Option<Child>,
    pub addr: String,
    pub data: PathBuf,
}

impl WitnessProc {
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for WitnessProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The witness, the agents and the lab's files (secret, agent state, logs). The clusters are
/// the test's own; declare the `Lab` after them so it is dropped first.
pub struct Lab {
    pub agents: Vec<AgentProc>,
    reaper: Reaper,
    pub witness: WitnessProc,
    pub secret: PathBuf,
    pub dir: TempDir,
    pub failover_timeout: f64,
    witness_options: Vec<String>,
    /// With an etcd backend: the etcd server the agents keep the state in (the witness then
    /// runs but nobody talks to it).
    pub etcd: Option<EtcdProc>,
}

/// A single-member etcd 3.4 on loopback ports, in the lab's directory; killed when dropped.
pub struct EtcdProc {
    child: Child,
    pub url: String,
}

impl Drop for EtcdProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Lab {
    pub fn new(failover_timeout: f64) -> Lab {
        Lab::with_witness_options(failover_timeout, &[])
    }

    /// A lab whose agents keep the failover state in etcd (with a lease for the primary's
    /// liveness) instead of the witness.
    pub fn new_etcd(failover_timeout: f64) -> Lab {
        Lab::etcd_with(Lab::new(failover_timeout))
    }

    /// [`Lab::new_etcd`] in synchronous mode.
    pub fn new_etcd_synchronous(failover_timeout: f64) -> Lab {
        Lab::etcd_with(Lab::new_synchronous(failover_timeout))
    }

    fn etcd_with(mut lab: Lab) -> Lab {
        let (client, peer) = (crate::common::free_port(), crate::common::free_port());
        let url = format!("http://{HOST}:{client}");
        let peer_url = format!("http://{HOST}:{peer}");
        let child = std::process::Command::new("etcd")
            .arg("--data-dir")
            .arg(lab.dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .arg(format!("--initial-cluster=default={peer_url}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start etcd (scripts/setup.sh installs etcd-server)");
        lab.etcd = Some(EtcdProc { child, url });
        let deadline = Instant::now() + Duration::from_secs(30);
        while lab.status().is_none() {
            assert!(Instant::now() < deadline, "etcd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        lab
    }

    /// The flags that point a walferry command at this lab's failover state.
    pub fn coord_args(&self) -> Vec<String> {
        self.coord_args_via(&format!("{HOST}:{}", self.coordinator_port()))
    }

    /// The port of the failover state's server: etcd's, or the witness's.
    pub fn coordinator_port(&self) -> u16 {
        match &self.etcd {
            Some(e) => e
                .url
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("etcd's port"),
            None => self.witness_port(),
        }
    }

    /// `coordinator`: the witness's or etcd's HOST:PORT (or a proxy's in front of it).
    fn coord_args_via(&self, coordinator: &str) -> Vec<String> {
        match &self.etcd {
            Some(_) => {
                let mut args = vec![
                    "--etcd".into(),
                    format!("http://{coordinator}"),
                    "--etcd-prefix".into(),
                    "/walferry-test".into(),
                    "--failover-timeout".into(),
                    self.failover_timeout.to_string(),
                ];
                if self.witness_options.iter().any(|o| o == "--synchronous") {
                    args.push("--synchronous".into());
                }
                args
            }
            None => vec![
                "--witness".into(),
                coordinator.to_string(),
                "--secret-file".into(),
                self.secret.to_string_lossy().into_owned(),
            ],
        }
    }

    /// A lab whose witness runs in `--synchronous` mode.
    pub fn new_synchronous(failover_timeout: f64) -> Lab {
        Lab::with_witness_options(failover_timeout, &["--synchronous"])
    }

    fn with_witness_options(failover_timeout: f64, options: &[&str]) -> Lab {
        let dir = tempdir();
        let secret = dir.path().join("secret");
        fs::write(&secret, format!("{SECRET}\n")).unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
        chown_to_postgres(&secret);
        let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        let witness = start_witness(
            dir.path(),
            &secret,
            failover_timeout,
            "127.0.0.1:0",
            &options,
        );
        Lab {
            etcd: None,
            witness_options: options,
            agents: Vec::new(),
            reaper: Reaper::start(),
            witness,
            secret,
            dir,
            failover_timeout,
        }
    }

    /// The witness's port (to put a [`Proxy`] in front of it).
    pub fn witness_port(&self) -> u16 {
        self.witness
            .addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the witness's port")
    }

    /// Stop the witness (kill -9); `restart_witness` brings it back on the same address.
    pub fn kill_witness(&mut self) {
        self.witness.kill();
    }

    pub fn restart_witness(&mut self) {
        let addr = self.witness.addr.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match try_start_witness(
                self.dir.path(),
                &self.secret,
                self.failover_timeout,
                &addr,
                &self.witness_options,
            ) {
                Some(w) => {
                    self.witness = w;
                    return;
                }
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                None => panic!("the witness did not come back on {addr}"),
            }
        }
    }

    /// Start `walferry -v agent` for `cluster` as node `name`, with `extra` options.
    pub fn agent(&mut self, name: &str, cluster: &PgCluster, extra: &[&str]) {
        let coordinator = format!("{HOST}:{}", self.coordinator_port());
        self.agent_via(name, cluster, cluster.port(), &coordinator, extra);
    }

    /// [`Lab::agent`], the other nodes reaching its server at `pg_port` and its agent reaching
    /// the witness at `witness` (both may be a [`Proxy`]).
    pub fn agent_via(
        &mut self,
        name: &str,
        cluster: &PgCluster,
        pg_port: u16,
        witness: &str,
        extra: &[&str],
    ) {
        let log = self.dir.path().join(format!("agent-{name}.log"));
        let log_file = fs::File::create(&log).unwrap();
        chown_to_postgres(&log);
        let mut cmd = postgres_command(walferry_bin());
        cmd.arg("-v")
            .arg("agent")
            .args(["--node", name, "-D"])
            .arg(cluster.data_dir())
            .arg("--local-conninfo")
            .arg(format!(
                "host={} port={} user=postgres dbname=postgres",
                cluster.socket_dir().display(),
                cluster.port()
            ))
            .arg("--address")
            .arg(format!("host={HOST} port={pg_port}"))
            .args(self.coord_args_via(witness))
            .arg("--state-file")
            .arg(self.dir.path().join(format!("agent-{name}.json")))
            .arg("--log-file")
            .arg(cluster.server_log_path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd.spawn().expect("cannot start walferry agent");
        self.agents.push(AgentProc {
            name: name.to_string(),
            child: Some(child),
            log,
        });
    }

    pub fn agent_mut(&mut self, name: &str) -> &mut AgentProc {
        self.agents
            .iter_mut()
            .find(|a| a.name == name)
            .expect("no such agent")
    }

    /// `walferry status --json`, parsed.
    pub fn status(&self) -> Option<Value> {
        let out = postgres_command(walferry_bin())
            .args(["status", "--json"])
            .args(self.coord_args())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Every agent's log, for a failure message.
    pub fn logs(&mut self) -> String {
        let mut text = String::new();
        for a in &mut self.agents {
            let log = a.log_text();
            text.push_str(&format!("---- agent {} ----\n{log}\n", a.name));
        }
        text
    }

    /// Waits until `cond` holds for the status (or panics with the status and the logs).
    pub fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Value) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Some(s) = self.status() {
                if cond(&s) {
                    return;
                }
                last = Some(s);
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last status: {}\n{}",
                    last.map(|s| s.to_string()).unwrap_or_default(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for a in &mut self.agents {
            a.kill();
        }
    }
}

fn start_witness(
    dir: &Path,
    secret: &Path,
    failover: f64,
    listen: &str,
    options: &[String],
) -> WitnessProc {
    try_start_witness(dir, secret, failover, listen, options).expect("the witness did not start")
}

fn try_start_witness(
    dir: &Path,
    secret: &Path,
    failover: f64,
    listen: &str,
    options: &[String],
) -> Option<WitnessProc> {
    let data = dir.join("witness");
    let mut child = postgres_command(walferry_bin())
        .args(["witness", "--listen", listen, "--failover-timeout"])
        .arg(failover.to_string())
        .arg("--data")
        .arg(&data)
        .arg("--secret-file")
        .arg(secret)
        .args(options)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    let Some(addr) = line.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    };
    Some(WitnessProc {
        addr: addr.to_string(),
        child: Some(child),
        data,
    })
}

/// Field helpers for the status JSON.
pub fn primary_of(s: &Value) -> Option<&str> {
    s["primary"].as_str()
}

pub fn epoch_of(s: &Value) -> u64 {
    s["epoch"].as_u64().unwrap_or(0)
}

pub fn node<'a>(s: &'a Value, name: &str) -> Option<&'a Value> {
    s["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"].as_str() == Some(name))
}

pub fn eligible(s: &Value, name: &str) -> bool {
    s["candidates"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["node"].as_str() == Some(name) && c["eligible"].as_bool() == Some(true))
    })
}

/// `psql -c sql` on `cluster`'s socket, `Err` if it fails (server down, read-only).
pub fn try_sql(cluster: &PgCluster, sql: &str) -> Result<String, String> {
    cluster.try_psql(sql)
}

/// The test process is the subreaper of the postmasters it started (see tests/common): when
/// an agent kills one, it stays a zombie until reaped here, and a zombie's pid still looks
/// alive to the next postmaster's lock-file check. Only postgres zombies that are our own
/// children are reaped, never a `Child` the tests wait for.
struct Reaper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reaper {
    fn start() -> Reaper {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                reap_postgres_zombies();
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Reaper {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn reap_postgres_zombies() {
    let me = std::process::id().to_string();
    let Ok(dir) = fs::read_dir("/proc") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (state, ppid) = (fields.next(), fields.next());
        if state == Some("Z") && ppid == Some(me.as_str()) && head.ends_with("(postgres") {
            let mut status = 0;
            // SAFETY: waitpid on one zombie child of ours; WNOHANG never blocks.
            unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        }
    }
}

/// A TCP forwarder the test can black-hole: while blocked, nothing passes in either direction
/// and new connections hang (no refusal), as when a network link goes down; connections
/// survive and resume when it is unblocked, as TCP would.
pub struct Proxy {
    pub port: u16,
    blocked: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub fn start(target_port: u16) -> Proxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind((HOST, 0)).expect("bind a proxy port");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let blocked = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (b, st) = (blocked.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (b, st) = (b.clone(), st.clone());
                        std::thread::spawn(move || forward(client, target_port, b, st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Proxy {
            port,
            blocked,
            stop,
        }
    }

    pub fn addr(&self) -> String {
        format!("{HOST}:{}", self.port)
    }

    pub fn block(&self) {
        self.blocked
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn unblock(&self) {
        self.blocked
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn forward(
    client: std::net::TcpStream,
    target_port: u16,
    blocked: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::Ordering;
    while blocked.load(Ordering::SeqCst) {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Ok(server) = std::net::TcpStream::connect((HOST, target_port)) else {
        return;
    };
    let _ = client.set_nonblocking(false);
    let pairs = [
        (client.try_clone(), server.try_clone()),
        (server.try_clone(), client.try_clone()),
    ];
    for pair in pairs {
        let (Ok(mut from), Ok(mut to)) = pair else {
            return;
        };
        let (blocked, stop) = (blocked.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if blocked.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                let n = match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue
                    }
                    Err(_) => break,
                };
                // Read just before a block: held until the link is back.
                while blocked.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    }
}

/// A client inserting rows `(session, seq)` into `t(session int, seq int)` in a loop through
/// `conninfo` (multi-host, `target_session_attrs=read-write`), recording every commit psql
/// reported as done.
pub struct Writer {
    pub acked: std::sync::Arc<std::sync::Mutex<Vec<i64>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(session: i64, conninfo: String) -> Writer {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, st) = (acked.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut seq = 0i64;
            while !st.load(Ordering::SeqCst) {
                seq += 1;
                let out = crate::common::psql_conn(
                    &conninfo,
                    None,
                    &format!("INSERT INTO t (session, seq) VALUES ({session}, {seq})"),
                );
                if out.status.success() {
                    a.lock().unwrap().push(seq);
                } else {
                    std::thread::sleep(Duration::from_millis(100));
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        Writer {
            acked,
            stop,
            thread: Some(thread),
        }
    }

    /// Stop writing; the acknowledged sequence numbers.
    pub fn finish(mut self) -> Vec<i64> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.acked.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The acknowledged `(session, seq)` rows missing from `cluster`.
pub fn missing(cluster: &PgCluster, session: i64, acked: &[i64]) -> Vec<i64> {
    let present: std::collections::HashSet<i64> = cluster
        .psql(&format!("SELECT seq FROM t WHERE session = {session}"))
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    acked
        .iter()
        .copied()
        .filter(|s| !present.contains(s))
        .collect()
}

/// Every pid of `cluster`'s server: the postmaster and its children.
pub fn server_pids(cluster: &PgCluster) -> Vec<i32> {
    // The pid file first: an agent may have restarted the server since the harness did.
    let from_file = fs::read_to_string(cluster.data_dir().join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse().ok());
    let Some(pm) = from_file.or_else(|| cluster.pid()) else {
        return Vec::new();
    };
    let mut pids = crate::common::children_of(pm);
    pids.push(pm);
    pids
}
