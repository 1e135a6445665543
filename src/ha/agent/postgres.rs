//! The agent's hands on its local PostgreSQL: look at it (SQL over a kept connection, the
//! postmaster's pid, the data directory), and act on it (`pg_ctl`, `pg_promote()`,
//! `ALTER SYSTEM`, `pg_rewind`, `walferry restore`). Every step is bounded in time.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::hang::NoAnswer;
use crate::ha::state::Role;
use crate::wal::{Lsn, TimeLineId};

/// What the agent saw of its PostgreSQL in one look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The postmaster is alive.
    pub running: bool,
    /// It answered SQL.
    pub answering: bool,
    /// It runs but did not answer (see [`super::hang`]): the query on the kept connection
    /// timed out, and the postmaster is stopped by a signal or a fresh connection timed out
    /// too. A server that answers with an error ("starting up", say), or answers a fresh
    /// connection while the kept one is slow, is not in this state.
    pub no_answer: Option<NoAnswer>,
    /// When the look began.
    pub looked_at: Instant,
    /// The data directory is there (`global/pg_control`).
    pub pgdata_present: bool,
    pub role: Role,
    pub timeline: Option<TimeLineId>,
    pub flush_lsn: Lsn,
    pub replay_lsn: Lsn,
    /// A primary: the highest flush position of its synchronous standbys.
    pub sync_acked_lsn: Option<Lsn>,
    /// A primary: how long ago a standby was last heard from (a walsender's reply, or a
    /// standby's agent probing), by the server's clock.
    pub standby_heard_ms_ago: Option<u64>,
    /// Not running after a clean shutdown as a primary: its shutdown checkpoint's LSN.
    pub shutdown_lsn: Option<Lsn>,
    /// A standby: its current `primary_conninfo`.
    pub primary_conninfo: Option<String>,
    /// A standby: its `wal_receiver_status_interval`, in seconds.
    pub status_interval_s: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{what} did not finish within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("SQL on the local server: {0}")]
    Sql(String),
}

/// The local server and how to reach and run it.
pub struct LocalPg {
    pub pgdata: PathBuf,
    pub bindir: PathBuf,
    pub conninfo: String,
    pub log_file: PathBuf,
    pub query_timeout: Duration,
    client: Option<Client>,
    /// The postmaster's pid, kept: its pid file may be gone (PGDATA deleted) while it runs.
    last_pid: Option<i32>,
}

impl LocalPg {
    pub fn new(
        pgdata: PathBuf,
        bindir: PathBuf,
        conninfo: String,
        log_file: PathBuf,
        query_timeout: Duration,
    ) -> Self {
        LocalPg {
            pgdata,
            bindir,
            conninfo,
            log_file,
            query_timeout,
            client: None,
            last_pid: None,
        }
    }

    /// The postmaster's pid if it is alive.
    pub fn postmaster(&mut self) -> Option<i32> {
        if let Some(pid) = read_pid_file(&self.pgdata) {
            self.last_pid = Some(pid);
        }
        let pid = self.last_pid?;
        if is_postmaster(pid) {
            Some(pid)
        } else {
            self.last_pid = None;
            None
        }
    }

    pub fn pgdata_present(&self) -> bool {
        self.pgdata.join("global/pg_control").is_file()
    }

    fn standby_signal(&self) -> bool {
        self.pgdata.join("standby.signal").exists()
    }

    /// One look, its SQL bounded by the query timeout.
    pub async fn observe(&mut self) -> Observed {
        self.observe_within(self.query_timeout).await
    }

    /// One look, its SQL bounded by `timeout`.
    pub async fn observe_within(&mut self, timeout: Duration) -> Observed {
        let looked_at = Instant::now();
        let postmaster = self.postmaster();
        let running = postmaster.is_some();
        let mut seen = Observed {
            running,
            answering: false,
            no_answer: None,
            looked_at,
            pgdata_present: self.pgdata_present(),
            role: if self.standby_signal() {
                Role::Standby
            } else {
                Role::Primary
            },
            timeline: None,
            flush_lsn: Lsn(0),
            replay_lsn: Lsn(0),
            sync_acked_lsn: None,
            standby_heard_ms_ago: None,
            shutdown_lsn: None,
            primary_conninfo: None,
            status_interval_s: None,
        };
        if !running {
            self.client = None;
            if seen.pgdata_present {
                if let Some(control) = self.control_data().await {
                    seen.timeline = Some(control.timeline);
                    seen.flush_lsn = control.checkpoint;
                    seen.replay_lsn = control.checkpoint;
                    if control.state == "shut down" {
                        seen.shutdown_lsn = Some(control.checkpoint);
                    }
                }
            }
            return seen;
        }
        let timed_out = match tokio::time::timeout(timeout, self.look(&mut seen, timeout)).await {
            Ok(Ok(())) => {
                seen.answering = true;
                false
            }
            Ok(Err(LookError::Refused(e))) => {
                tracing::debug!("local server does not answer yet: {e}");
                self.client = None;
                false
            }
            Ok(Err(LookError::Broken(e))) => {
                tracing::debug!("local server: {e}");
                self.client = None;
                e.contains("timed out")
            }
            Err(_) => {
                self.client = None;
                true
            }
        };
        if timed_out {
            seen.no_answer = self.second_opinion(postmaster, timeout).await;
        }
        seen
    }

    /// After a look that timed out: whether the server is really not answering (see
    /// [`super::hang`]), or only slow on the kept connection.
    async fn second_opinion(
        &mut self,
        postmaster: Option<i32>,
        timeout: Duration,
    ) -> Option<NoAnswer> {
        if postmaster.is_some_and(is_stopped) {
            return Some(NoAnswer::Frozen);
        }
        let fresh = async {
            let client = connect(&self.conninfo, "walferry-agent", timeout).await?;
            client.simple_query("SELECT 1").await.map(|_| client)
        };
        match tokio::time::timeout(timeout, fresh).await {
            Ok(Ok(client)) => {
                tracing::debug!(
                    "the local server was slow on the agent's connection but answered a new one"
                );
                self.client = Some(client);
                None
            }
            // An error is an answer: alive (out of connection slots, shutting down, ...).
            Ok(Err(e)) if e.as_db_error().is_some() => None,
            Ok(Err(e)) if !e.to_string().contains("timed out") => None,
            Ok(Err(_)) | Err(_) => Some(NoAnswer::Silent),
        }
    }

    async fn look(&mut self, seen: &mut Observed, timeout: Duration) -> Result<(), LookError> {
        let client = self.client(timeout).await?;
        let row = first_row(
            client,
            "SELECT pg_is_in_recovery(), current_setting('primary_conninfo'), \
             current_setting('wal_receiver_status_interval')",
        )
        .await?;
        let in_recovery = row.first().and_then(|v| v.as_deref()) == Some("t");
        if in_recovery {
            seen.role = Role::Standby;
            seen.primary_conninfo = row.get(1).cloned().flatten();
            seen.status_interval_s = row
                .get(2)
                .and_then(|v| v.as_deref())
                .and_then(parse_seconds);
            let row = first_row(
                client,
                "SELECT pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), \
                 (SELECT received_tli FROM pg_stat_wal_receiver), \
                 (SELECT timeline_id FROM pg_control_checkpoint()), \
                 (SELECT min_recovery_end_timeline FROM pg_control_recovery())",
            )
            .await?;
            let replay = lsn_at(&row, 1).unwrap_or(Lsn(0));
            seen.replay_lsn = replay;
            seen.flush_lsn = lsn_at(&row, 0).unwrap_or(replay).max(replay);
            // The walreceiver's timeline while it streams; else the newest the control
            // file knows (a restartpoint's, or the minimum recovery point's).
            seen.timeline = [tli_at(&row, 2), tli_at(&row, 3), tli_at(&row, 4)]
                .into_iter()
                .flatten()
                .max();
        } else {
            seen.role = Role::Primary;
            let sql = format!(
                "SELECT pg_walfile_name(pg_current_wal_flush_lsn()), pg_current_wal_flush_lsn(), \
                 (SELECT max(flush_lsn) FROM pg_stat_replication \
                   WHERE sync_state IN ('sync', 'quorum')), \
                 (SELECT (extract(epoch FROM now() - max(t)) * 1000)::bigint FROM \
                   (SELECT reply_time AS t FROM pg_stat_replication \
                    UNION ALL SELECT state_change FROM pg_stat_activity \
                     WHERE application_name LIKE '{PROBE_PREFIX}%') AS heard)"
            );
            let row = first_row(client, &sql).await?;
            seen.timeline = row
                .first()
                .and_then(|v| v.as_deref())
                .and_then(|name| name.get(..8))
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .map(TimeLineId);
            seen.flush_lsn = lsn_at(&row, 1).unwrap_or(Lsn(0));
            seen.replay_lsn = seen.flush_lsn;
            seen.sync_acked_lsn = lsn_at(&row, 2);
            seen.standby_heard_ms_ago = row
                .get(3)
                .and_then(|v| v.as_deref())
                .and_then(|n| n.parse::<i64>().ok())
                .map(|ms| ms.max(0) as u64);
        }
        Ok(())
    }

    async fn client(&mut self, timeout: Duration) -> Result<&Client, LookError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let client = connect(&self.conninfo, "walferry-agent", timeout)
                .await
                .map_err(|e| match e.as_db_error() {
                    Some(db) => LookError::Refused(db.message().to_string()),
                    None => LookError::Broken(e.to_string()),
                })?;
            self.client = Some(client);
        }
        Ok(self.client.as_ref().expect("just set"))
    }

    /// Run SQL that changes something (promote, ALTER SYSTEM), bounded by `timeout`.
    pub async fn execute(&mut self, sql: &str, timeout: Duration) -> Result<Vec<Row>, PgError> {
        let client = match self.client(self.query_timeout).await {
            Ok(c) => c,
            Err(LookError::Refused(e) | LookError::Broken(e)) => return Err(PgError::Sql(e)),
        };
        match tokio::time::timeout(timeout, rows(client, sql)).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => {
                self.client = None;
                Err(PgError::Sql(e))
            }
            Err(_) => {
                self.client = None;
                Err(PgError::Timeout {
                    what: format!("SQL {sql:?}"),
                    timeout,
                })
            }
        }
    }

    /// [`LocalPg::execute`] for each statement in turn (ALTER SYSTEM cannot share a
    /// transaction); stops at the first failure.
    pub async fn execute_each(&mut self, sql: &[String], timeout: Duration) -> Result<(), PgError> {
        for statement in sql {
            self.execute(statement, timeout).await?;
        }
        Ok(())
    }

    /// `pg_ctl start -w`.
    pub async fn start(&mut self, timeout: Duration) -> Result<(), PgError> {
        self.forget_dead_postmaster().await;
        let mut cmd = Command::new(self.bindir.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.pgdata)
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-t"])
            .arg(timeout.as_secs().max(1).to_string())
            .arg("start");
        run("pg_ctl start", cmd, timeout + Duration::from_secs(5)).await?;
        Ok(())
    }

    /// Stop the server now, whatever state it is in: an immediate shutdown, then SIGKILL for
    /// whatever is left (a frozen server does not act on a shutdown signal, but dies of
    /// SIGKILL). Returns once no process of it is left.
    pub async fn stop_now(&mut self) -> Result<(), PgError> {
        self.client = None;
        let Some(pid) = self.postmaster() else {
            return Ok(());
        };
        let children = children_of(pid);
        // A stopped (frozen) process acts on no signal but SIGKILL: waiting for it to shut
        // down would only delay the failover.
        let frozen = is_stopped(pid) || children.iter().any(|&c| is_stopped(c));
        if frozen {
            tracing::warn!(
                "PostgreSQL (postmaster {pid}) is frozen (stopped by a signal): killing it"
            );
        } else if self.pgdata.join("postmaster.pid").is_file() {
            let mut cmd = Command::new(self.bindir.join("pg_ctl"));
            cmd.arg("-D")
                .arg(&self.pgdata)
                .args(["-m", "immediate", "-w", "-t", "2", "stop"]);
            let _ = run("pg_ctl stop", cmd, Duration::from_secs(4)).await;
        }
        // Those forked meanwhile too.
        let children: Vec<i32> = children.into_iter().chain(children_of(pid)).collect();
        if is_postmaster(pid) || children.iter().any(|&c| process_alive(c)) {
            if !frozen {
                tracing::warn!("PostgreSQL (postmaster {pid}) did not stop: killing it");
            }
            for p in children.iter().copied().chain([pid]) {
                // SAFETY: kill(2) with a pid we read and a constant signal.
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                }
            }
        }
        // Polled often: a failover waits for this.
        for _ in 0..500 {
            if !process_alive(pid) && !children.iter().any(|&c| process_alive(c)) {
                self.last_pid = None;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(PgError::Command {
            what: "stopping PostgreSQL".into(),
            detail: format!("postmaster {pid} or its children survived SIGKILL"),
        })
    }

    /// A dead postmaster that its parent has not reaped yet (a zombie) still answers
    /// kill(pid, 0), which the next postgres (a start, pg_rewind's single-user run) takes for
    /// a live owner of `postmaster.pid` and refuses to run. Give the parent a moment to reap
    /// it; then the pid file of the dead postmaster goes (only while it still names it).
    async fn forget_dead_postmaster(&self) {
        let Some(pid) = read_pid_file(&self.pgdata) else {
            return;
        };
        for _ in 0..20 {
            if !is_zombie(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if read_pid_file(&self.pgdata) == Some(pid) && is_zombie(pid) {
            tracing::info!("postmaster {pid} is dead but not reaped: removing its postmaster.pid");
            let _ = fs::remove_file(self.pgdata.join("postmaster.pid"));
        }
    }

    /// A clean stop (`pg_ctl stop -m fast`): sessions end, a shutdown checkpoint is written
    /// and the walsenders send it to the connected standbys before they exit.
    pub async fn stop_clean(&mut self, timeout: Duration) -> Result<(), PgError> {
        self.client = None;
        let mut cmd = Command::new(self.bindir.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "fast", "-w", "-t"])
            .arg(timeout.as_secs().max(1).to_string())
            .arg("stop");
        run("pg_ctl stop -m fast", cmd, timeout + Duration::from_secs(5)).await?;
        Ok(())
    }

    /// What `pg_controldata` says of the (stopped) cluster.
    pub async fn control_data(&self) -> Option<ControlData> {
        let mut cmd = Command::new(self.bindir.join("pg_controldata"));
        cmd.arg("-D").arg(&self.pgdata);
        let text = run("pg_controldata", cmd, Duration::from_secs(10))
            .await
            .ok()?;
        ControlData::parse(&text)
    }

    /// `pg_rewind` from the primary at `source`.
    /// With `restore_target_wal`, WAL missing from pg_wal comes from the `restore_command`.
    pub async fn rewind(
        &mut self,
        source: &str,
        restore_target_wal: bool,
        timeout: Duration,
    ) -> Result<String, PgError> {
        self.forget_dead_postmaster().await;
        let mut cmd = Command::new(self.bindir.join("pg_rewind"));
        cmd.arg("-D")
            .arg(&self.pgdata)
            .arg(format!("--source-server={source}"))
            .arg("--progress");
        if restore_target_wal {
            cmd.arg("--restore-target-wal");
        }
        run("pg_rewind", cmd, timeout).await
    }
}

/// The parts of `pg_controldata`'s output the agent uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlData {
    /// "shut down", "shut down in recovery", "in production", ...
    pub state: String,
    pub checkpoint: Lsn,
    pub timeline: TimeLineId,
}

impl ControlData {
    pub fn parse(text: &str) -> Option<ControlData> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim_start().strip_prefix(':'))
                .map(str::trim)
        };
        Some(ControlData {
            state: field("Database cluster state")?.to_string(),
            checkpoint: field("Latest checkpoint location")?.parse().ok()?,
            timeline: TimeLineId(field("Latest checkpoint's TimeLineID")?.parse().ok()?),
        })
    }
}

/// A row of text values.
pub type Row = Vec<Option<String>>;

enum LookError {
    /// The server answered with an error (starting up, shutting down, authentication).
    Refused(String),
    /// No answer: connection refused, reset, or timed out.
    Broken(String),
}

impl From<String> for LookError {
    fn from(e: String) -> Self {
        LookError::Broken(e)
    }
}

/// The prefix of the `application_name` of an agent's connection to the primary; the
/// primary's agent counts such connections as signs of life from a standby.
pub const PROBE_PREFIX: &str = "walferry-agent probe ";

/// Connect with libpq-style `conninfo`, bounded by `timeout`.
pub async fn connect(
    conninfo: &str,
    application_name: &str,
    timeout: Duration,
) -> Result<Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::from_str(conninfo)?;
    config.connect_timeout(timeout);
    config.application_name(application_name);
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn rows(client: &Client, sql: &str) -> Result<Vec<Row>, String> {
    let messages = client.simple_query(sql).await.map_err(|e| {
        e.as_db_error()
            .map_or_else(|| e.to_string(), |d| d.message().to_string())
    })?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).map(str::to_string))
                    .collect::<Row>(),
            ),
            _ => None,
        })
        .collect())
}

async fn first_row(client: &Client, sql: &str) -> Result<Row, LookError> {
    let rows = rows(client, sql).await.map_err(LookError::Broken)?;
    rows.into_iter()
        .next()
        .ok_or_else(|| LookError::Broken(format!("no row from {sql:?}")))
}

fn lsn_at(row: &Row, i: usize) -> Option<Lsn> {
    row.get(i)?.as_deref()?.parse().ok()
}

fn tli_at(row: &Row, i: usize) -> Option<TimeLineId> {
    row.get(i)?
        .as_deref()?
        .parse::<u32>()
        .ok()
        .filter(|&t| t > 0)
        .map(TimeLineId)
}

/// `wal_receiver_status_interval` as shown: "10s", "1min", "0".
fn parse_seconds(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let n: u64 = text[..split].parse().ok()?;
    match &text[split..] {
        "" | "s" => Some(n),
        "ms" => Some(n / 1000),
        "min" => Some(n * 60),
        "h" => Some(n * 3600),
        _ => None,
    }
}

/// Run `cmd` off the async threads, bounded by `timeout`; its output, or why it failed.
pub async fn run(what: &str, mut cmd: Command, timeout: Duration) -> Result<String, PgError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C");
    let child = cmd.spawn().map_err(|source| PgError::Io {
        what: format!("cannot run {what} ({:?})", cmd.get_program()),
        source,
    })?;
    let pid = child.id();
    let wait = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(Ok(out))) => out,
        Ok(Ok(Err(source))) => {
            return Err(PgError::Io {
                what: what.to_string(),
                source,
            })
        }
        Ok(Err(join)) => {
            return Err(PgError::Command {
                what: what.to_string(),
                detail: join.to_string(),
            })
        }
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            return Err(PgError::Timeout {
                what: what.to_string(),
                timeout,
            });
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(PgError::Command {
            what: format!("{what} ({})", output.status),
            detail: last_lines(&text, 6),
        })
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn read_pid_file(pgdata: &Path) -> Option<i32> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok().filter(|&p| p > 0)
}

/// Whether `pid` is alive and is a postgres process (not a reused pid).
fn is_postmaster(pid: i32) -> bool {
    process_alive(pid)
        && fs::read(format!("/proc/{pid}/comm"))
            .map(|c| c.starts_with(b"postgres"))
            .unwrap_or(false)
}

fn process_alive(pid: i32) -> bool {
    proc_state(pid).is_some_and(|s| s != "Z" && s != "X")
}

/// Whether `pid` is dead but not yet reaped by its parent.
fn is_zombie(pid: i32) -> bool {
    proc_state(pid).is_some_and(|s| s == "Z" || s == "X")
}

fn proc_state(pid: i32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next().map(str::to_string)
}

/// Whether `pid` is stopped by a signal (SIGSTOP, SIGTSTP; or traced): `/proc/PID/stat`
/// state `T` or `t`. Such a process runs no code until SIGCONT.
fn is_stopped(pid: i32) -> bool {
    proc_state(pid).is_some_and(|s| s == "T" || s == "t")
}

/// Processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| {
            fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Set (or with `None`, remove) settings in `PGDATA/postgresql.auto.conf` while the server
/// is down (when it runs, `ALTER SYSTEM` does this). Written to a temporary file, fsynced and
/// renamed.
pub fn set_auto_conf(pgdata: &Path, settings: &[(&str, Option<&str>)]) -> io::Result<()> {
    let path = pgdata.join("postgresql.auto.conf");
    let old = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut out = String::new();
    for line in old.lines() {
        let key = line
            .split(['=', ' ', '\t'])
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if settings.iter().any(|(k, _)| *k == key) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    for (key, value) in settings {
        if let Some(v) = value {
            out.push_str(&format!("{key} = '{}'\n", v.replace('\'', "''")));
        }
    }
    crate::repo::write_durably(&path, out.as_bytes()).map_err(io::Error::other)
}

/// A SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_data_fields_are_read_from_pg_controldata_output() {
        let text = "pg_control version number:            1300\n\
                    Database cluster state:               shut down\n\
                    Latest checkpoint location:           0/3000028\n\
                    Latest checkpoint's REDO location:    0/3000028\n\
                    Latest checkpoint's TimeLineID:       2\n\
                    Latest checkpoint's PrevTimeLineID:   1\n";
        assert_eq!(
            ControlData::parse(text),
            Some(ControlData {
                state: "shut down".into(),
                checkpoint: Lsn(0x0300_0028),
                timeline: TimeLineId(2),
            })
        );
        assert_eq!(
            ControlData::parse("Database cluster state: in production\n"),
            None
        );
    }

    #[test]
    fn status_interval_text_is_read_in_seconds() {
        assert_eq!(parse_seconds("10s"), Some(10));
        assert_eq!(parse_seconds("1min"), Some(60));
        assert_eq!(parse_seconds("0"), Some(0));
        assert_eq!(parse_seconds("500ms"), Some(0));
        assert_eq!(parse_seconds("x"), None);
    }

    #[test]
    fn auto_conf_settings_replace_their_old_lines_and_keep_the_others() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("postgresql.auto.conf"),
            "# Do not edit this file manually!\nprimary_conninfo = 'host=old'\n\
             work_mem = '8MB'\nPrimary_Conninfo='host=older'\nrestore_command = 'x'\n",
        )
        .unwrap();
        set_auto_conf(
            dir.path(),
            &[
                ("primary_conninfo", Some("host=new user='a b'")),
                ("restore_command", None),
            ],
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap(),
            "# Do not edit this file manually!\nwork_mem = '8MB'\n\
             primary_conninfo = 'host=new user=''a b'''\n"
        );
    }

    #[test]
    fn a_process_stopped_by_sigstop_is_seen_stopped_until_sigcont() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        assert!(!is_stopped(pid));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !is_stopped(pid) {
            assert!(Instant::now() < deadline, "never seen stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while is_stopped(pid) {
            assert!(Instant::now() < deadline, "still stopped after SIGCONT");
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(!is_stopped(i32::MAX));
    }

    #[test]
    fn a_pid_that_is_not_a_postgres_process_is_no_postmaster() {
        assert!(!is_postmaster(std::process::id() as i32));
        assert!(process_alive(std::process::id() as i32));
        assert!(!process_alive(i32::MAX));
    }
}
