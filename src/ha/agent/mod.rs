//! `walferry agent`: one per database node. It watches the local PostgreSQL, reports to the
//! witness every report interval, and carries out what the rules decide: promote (only with
//! the witness's grant), fence (a primary cut off from the witness and every standby stops
//! its PostgreSQL), re-point (a standby follows the epoch's primary), rejoin (an old primary
//! becomes a standby of the new one: `pg_rewind`, else `walferry restore --delta --standby`
//! from the repository, else a fresh copy of the new primary with `pg_basebackup`).
//!
//! What the agent reports and what it means:
//! - `health: ok`: PostgreSQL answers SQL in its role, or the agent is restarting a fenced
//!   primary with the witness's consent (the witness counts that as hearing the primary, so it
//!   grants no promote for a failover timeout: a lease).
//! - `down: true`: the postmaster is gone (crashed, killed, or stopped by the agent), and the
//!   agent will not start it as a primary without that consent. The witness may then fail
//!   over at once.
//! - A standby's `primary_visible`: the agent's own connection to the primary (kept open, one
//!   query per report) works. It is independent of where the standby streams from (the
//!   primary, or a relay that outlives it). A server that answers with an error is visible.
//!
//! Agents never order each other: everything goes through the witness, whose answers are
//! sealed (HMAC) and bound to the request's nonce. The primary's agent learns of the standbys
//! from its own server (walsender replies, and the standby agents' probe connections).

pub mod clone;
pub mod hang;
pub mod postgres;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use self::postgres::{quote_literal, set_auto_conf, LocalPg, Observed, PROBE_PREFIX};
use super::coordinator::{Coordination, Coordinator, CoordinatorConfig};
use super::rules::{must_fence, AgentTimeouts};
use super::state::{Health, Role};
use super::wire::{AckPromoted, Answer, Directive, PromoteRequest, Report, Request};
use super::{wall_clock_now, Epoch, UnixMillis};
use crate::wal::TimeLineId;

/// Everything the agent is told (see `walferry agent --help` and config/agent.toml).
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: String,
    pub pgdata: PathBuf,
    pub bindir: PathBuf,
    /// How the agent reaches its own server (a superuser: it promotes and runs ALTER SYSTEM).
    pub local_conninfo: String,
    /// How the other nodes reach this server (`host=… port=…`).
    pub address: String,
    /// Added to a primary's address to stream from it (and to probe it and pg_rewind from
    /// it): `user=… [passfile=…] [sslmode=…]`.
    pub replication_conninfo: String,
    /// Stream from here (a `walferry relay`) instead of from the primary.
    pub upstream: Option<String>,
    /// The witness, or etcd.
    pub coordinator: CoordinatorConfig,
    /// The repository for a rejoin that pg_rewind cannot do.
    pub repo: Option<PathBuf>,
    pub priority: u32,
    /// Set on this node's server when it becomes the primary.
    pub synchronous_standby_names: Option<String>,
    pub log_file: PathBuf,
    pub state_file: PathBuf,
    pub timeouts: AgentTimeouts,
    /// This program, for `walferry restore` in a rejoin.
    pub walferry: PathBuf,
}

/// What the agent keeps across restarts: the epoch it acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Persisted {
    epoch: Epoch,
}

/// Bounds on the slow steps.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);
const START_TIMEOUT: Duration = Duration::from_secs(120);
const REWIND_TIMEOUT: Duration = Duration::from_secs(600);
const RESTORE_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
const CLONE_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// How long a standby's feed from a relay may take to catch up before it promotes.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed starts of a standby before it is rebuilt.
const START_ATTEMPTS: u32 = 3;
/// Between attempts of a rejoin that failed: the first wait, doubled after every failure up
/// to the longest (a primary that is down, or a disk that is full, is not hammered).
const REJOIN_RETRY: Duration = Duration::from_secs(5);
const REJOIN_RETRY_MAX: Duration = Duration::from_secs(120);

/// How long to wait after the `failures`-th failed rejoin or rebuild in a row.
fn rejoin_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (REJOIN_RETRY * 2u32.pow(doublings)).min(REJOIN_RETRY_MAX)
}

pub struct Agent {
    cfg: AgentConfig,
    pg: LocalPg,
    coord: Coordinator,
    epoch: Epoch,
    /// Last answer from the witness, and when.
    last_witness: Option<UnixMillis>,
    last_standby: Option<UnixMillis>,
    failover_timeout: Duration,
    primary: Option<String>,
    primary_address: Option<String>,
    /// A kept connection to the primary (standbys): `primary_visible`.
    probe: Option<(String, Client)>,
    timeline: Option<TimeLineId>,
    /// Since when the local server has been down while this node is the primary.
    down_since: Option<Instant>,
    /// The next report asks to restart a fenced/crashed primary (see the module docs).
    resuming: bool,
    /// Whether the local primary has stopped answering (see [`hang`]).
    hang: hang::HangWatch,
    problem: Option<String>,
    next_rejoin: Option<Instant>,
    /// Failed rejoins or rebuilds in a row (the backoff).
    rejoin_failures: u32,
    status_interval_set: bool,
    last_refusal: Option<String>,
    started: UnixMillis,
    start_failures: u32,
    /// A standby's highest flushed position on its timeline (see `keep_flush_monotonic`).
    flush_high: Option<(TimeLineId, crate::wal::Lsn)>,
}

impl Agent {
    pub fn new(cfg: AgentConfig) -> Result<Agent, String> {
        let persisted: Persisted = match std::fs::read(&cfg.state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "the agent's state file {} is damaged ({e}); it holds the epoch this node \
                     acts on: remove it only if this node's PostgreSQL is a standby",
                    cfg.state_file.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => {
                return Err(format!(
                    "could not read the agent's state file {}: {e}",
                    cfg.state_file.display()
                ))
            }
        };
        let query_timeout = (cfg.timeouts.fence_timeout / 3)
            .clamp(Duration::from_millis(300), Duration::from_secs(2));
        let pg = LocalPg::new(
            cfg.pgdata.clone(),
            cfg.bindir.clone(),
            cfg.local_conninfo.clone(),
            cfg.log_file.clone(),
            query_timeout,
        );
        Ok(Agent {
            pg,
            coord: Coordinator::new(&cfg.coordinator)?,
            epoch: persisted.epoch,
            last_witness: None,
            last_standby: None,
            failover_timeout: super::rules::DEFAULT_FAILOVER_TIMEOUT,
            primary: None,
            primary_address: None,
            probe: None,
            timeline: None,
            down_since: None,
            resuming: false,
            hang: hang::HangWatch::default(),
            problem: None,
            next_rejoin: None,
            rejoin_failures: 0,
            status_interval_set: false,
            last_refusal: None,
            started: wall_clock_now(),
            start_failures: 0,
            flush_high: None,
            cfg,
        })
    }

    fn save_epoch(&mut self, epoch: Epoch) {
        if epoch == self.epoch {
            return;
        }
        let bytes = serde_json::to_vec(&Persisted { epoch }).unwrap_or_default();
        match crate::repo::write_durably(&self.cfg.state_file, &bytes) {
            Ok(()) => self.epoch = epoch,
            Err(e) => tracing::error!("cannot save the epoch {epoch}: {e}"),
        }
    }

    /// Run until `stop` resolves.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        tracing::info!(
            "agent {}: PGDATA {}, {}, epoch {}",
            self.cfg.node,
            self.cfg.pgdata.display(),
            self.cfg.coordinator,
            self.epoch
        );
        if let Err(e) = clone::clean_leftovers(&self.cfg.pgdata) {
            tracing::warn!("cannot remove what an interrupted rebuild left beside PGDATA: {e}");
        }
        loop {
            let started = Instant::now();
            let fast = self.tick().await;
            let period = if fast {
                // A standby that has lost the primary asks for a promote again soon: the
                // witness may grant it as soon as the old primary reports itself stopped.
                self.cfg
                    .timeouts
                    .report_interval
                    .min(Duration::from_millis(100))
            } else {
                self.cfg.timeouts.report_interval
            };
            // A steady cadence: the time the round took counts against the pause.
            let pause = period
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(20));
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!("agent {}: stopped", self.cfg.node);
    }

    /// One round: look, report, act. True when the next round should come soon (a standby
    /// that has lost the primary).
    async fn tick(&mut self) -> bool {
        let hold = self.cfg.timeouts.fence_timeout;
        let look = self
            .hang
            .next_look(Instant::now(), self.pg.query_timeout, hold);
        let mut seen = self.pg.observe_within(look).await;
        match (seen.role, seen.timeline) {
            // A standby's timeline only moves forward; when its walreceiver is gone (the
            // primary died) the control file may still name an older one.
            (Role::Standby, Some(t)) => self.timeline = self.timeline.max(Some(t)),
            (Role::Primary, Some(t)) => self.timeline = Some(t),
            (_, None) => {}
        }
        seen.timeline = self.timeline;
        self.keep_flush_monotonic(&mut seen);
        // A primary that lost its data directory, or hangs for the fence timeout, is
        // stopped: it cannot be trusted with writes, and "down" lets the witness fail over
        // at once.
        if seen.running && seen.role == Role::Primary {
            let was_suspected = self.hang.suspected();
            let hung_too_long =
                self.hang
                    .look(seen.no_answer, seen.looked_at, Instant::now(), hold);
            match seen.no_answer {
                Some(how) if !was_suspected => tracing::warn!(
                    "the local primary does not answer ({}): stopped if it still does not after {hold:?}",
                    match how {
                        hang::NoAnswer::Frozen => "its postmaster is stopped by a signal",
                        hang::NoAnswer::Silent => "nor does it answer a new connection",
                    }
                ),
                None if was_suspected => tracing::info!("the local primary answers again"),
                _ => {}
            }
            if !seen.pgdata_present || hung_too_long {
                tracing::error!(
                    "the local primary {}: stopping it",
                    if seen.pgdata_present {
                        "does not answer"
                    } else {
                        "lost its data directory"
                    }
                );
                self.stop_server().await;
                self.hang = hang::HangWatch::default();
                seen = self.pg.observe().await;
            }
        } else {
            self.hang = hang::HangWatch::default();
        }
        if let (Role::Primary, Some(ago)) = (seen.role, seen.standby_heard_ms_ago) {
            let heard = UnixMillis(wall_clock_now().0.saturating_sub(ago));
            self.last_standby = self.last_standby.max(Some(heard));
        }
        if seen.running && seen.role == Role::Primary && self.fence_due() {
            self.fence().await;
            return false;
        }
        let probed = self.primary_address.is_some();
        let visible = if seen.role == Role::Standby {
            self.probe_primary().await
        } else {
            false
        };
        if seen.role == Role::Primary && !seen.running {
            self.down_since.get_or_insert_with(Instant::now);
        } else {
            self.down_since = None;
        }
        let answer = self.report(&seen, visible).await;
        if let Some((epoch, answer)) = answer {
            // Before the first answer the primary's address is unknown: not a lost primary.
            self.act(&seen, visible || !probed, epoch, answer).await;
        }
        // Checked again after the report: a failed call took time, a fresh answer counts.
        if seen.running && seen.role == Role::Primary && self.fence_due() {
            self.fence().await;
        }
        seen.role == Role::Standby && !visible
    }

    /// A standby's `pg_last_wal_receive_lsn()` goes back when its walreceiver restarts (to the
    /// start of the segment it asks for): WAL it flushed before is still on its disk, so the
    /// highest position seen on this timeline is what it holds. Reported lower, the witness
    /// would think it lacks acknowledged commits and refuse to promote it.
    fn keep_flush_monotonic(&mut self, seen: &mut Observed) {
        if seen.role != Role::Standby || !seen.answering {
            self.flush_high = None;
            return;
        }
        match self.flush_high {
            Some((tli, high)) if Some(tli) == seen.timeline && high > seen.flush_lsn => {
                seen.flush_lsn = high;
            }
            _ => {}
        }
        if let Some(tli) = seen.timeline {
            self.flush_high = Some((tli, seen.flush_lsn));
        }
    }

    fn fence_due(&self) -> bool {
        // The agent's own start counts as a contact: a primary gets one fence timeout to
        // reach someone before it is fenced.
        must_fence(
            wall_clock_now(),
            self.last_witness.max(Some(self.started)),
            self.last_standby,
            self.cfg.timeouts.fence_timeout,
        )
    }

    /// How long a witness call may take: never past the moment this primary must fence.
    fn call_budget(&self) -> Duration {
        let limit = self
            .cfg
            .timeouts
            .report_interval
            .min(Duration::from_secs(2));
        match self
            .last_witness
            .max(self.last_standby)
            .max(Some(self.started))
        {
            Some(last) if self.primary.as_deref() == Some(self.cfg.node.as_str()) => {
                let deadline = last.plus(self.cfg.timeouts.fence_timeout);
                limit
                    .min(deadline.since(wall_clock_now()))
                    .max(Duration::from_millis(50))
            }
            _ => limit,
        }
    }

    async fn fence(&mut self) {
        tracing::error!(
            "fencing: this primary has reached neither the witness nor any standby for {:?}; \
             stopping PostgreSQL so that it takes no writes a promoted standby would not have",
            self.cfg.timeouts.fence_timeout
        );
        self.stop_server().await;
    }

    async fn stop_server(&mut self) {
        if let Err(e) = self.pg.stop_now().await {
            tracing::error!("could not stop the local server: {e}");
        }
    }

    /// Whether the primary's server answers (any answer, an error included).
    async fn probe_primary(&mut self) -> bool {
        let Some(address) = self.primary_address.clone() else {
            return false;
        };
        if self.primary.as_deref() == Some(self.cfg.node.as_str()) {
            return false;
        }
        let conninfo = format!(
            "{address} {} dbname=postgres",
            self.cfg.replication_conninfo
        );
        let timeout = self.pg.query_timeout;
        if let Some((addr, client)) = &self.probe {
            if *addr == conninfo && !client.is_closed() {
                match tokio::time::timeout(timeout, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => return true,
                    Ok(Err(e)) if e.as_db_error().is_some() => return true,
                    _ => {}
                }
            }
        }
        self.probe = None;
        let name = format!("{PROBE_PREFIX}{}", self.cfg.node);
        match tokio::time::timeout(timeout, postgres::connect(&conninfo, &name, timeout)).await {
            Ok(Ok(client)) => {
                self.probe = Some((conninfo, client));
                true
            }
            Ok(Err(e)) => e.as_db_error().is_some(),
            Err(_) => false,
        }
    }

    async fn call(&mut self, request: Request) -> Option<(Epoch, Answer)> {
        let budget = self.call_budget();
        match self.coord.call(request, budget).await {
            Ok(answer) => {
                self.last_witness = Some(wall_clock_now());
                Some(answer)
            }
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }

    async fn report(&mut self, seen: &Observed, visible: bool) -> Option<(Epoch, Answer)> {
        let healthy = seen.answering || self.resuming;
        let report = Report {
            node: self.cfg.node.clone(),
            role: seen.role,
            timeline: self.timeline.unwrap_or(TimeLineId(1)),
            epoch: self.epoch,
            flush_lsn: seen.flush_lsn,
            replay_lsn: seen.replay_lsn,
            health: if healthy { Health::Ok } else { Health::Failed },
            primary_visible: visible,
            sync_acked_lsn: seen.sync_acked_lsn,
            priority: self.cfg.priority,
            synchronous: false,
            down: !seen.running && !self.resuming,
            address: Some(self.cfg.address.clone()),
            shutdown_lsn: seen.shutdown_lsn.filter(|_| seen.role == Role::Primary),
            problem: self.problem.clone(),
        };
        self.call(Request::Report(report)).await
    }

    async fn act(&mut self, seen: &Observed, visible: bool, epoch: Epoch, answer: Answer) {
        let (primary, directive) = match answer {
            Answer::Reported {
                primary,
                directive,
                failover_timeout_ms,
                primary_address,
                ..
            } => {
                self.failover_timeout = Duration::from_millis(failover_timeout_ms);
                if let Err(e) = self.cfg.timeouts.validate(self.failover_timeout) {
                    // Never run with a fence that could come after a promote: shorten it.
                    let safe = self
                        .failover_timeout
                        .saturating_sub(self.cfg.timeouts.report_interval);
                    if safe < self.cfg.timeouts.fence_timeout && !safe.is_zero() {
                        tracing::error!(
                            "configuration: {e}; fencing after {safe:?} instead ({})",
                            e.hint()
                        );
                        self.cfg.timeouts.fence_timeout = safe;
                    } else {
                        self.problem = Some(format!("configuration: {e} ({})", e.hint()));
                    }
                }
                self.primary_address = primary_address;
                (primary, directive)
            }
            Answer::Error { message, hint } => {
                tracing::error!(
                    "the witness refused the report: {message}{}",
                    hint.map(|h| format!(" ({h})")).unwrap_or_default()
                );
                return;
            }
            other => {
                tracing::warn!("unexpected answer to a report: {other:?}");
                return;
            }
        };
        if self.primary != primary {
            tracing::info!(
                "the witness names {} the primary (epoch {epoch})",
                primary.as_deref().unwrap_or("no node")
            );
            self.probe = None;
            self.primary = primary.clone();
        }
        let me = primary.as_deref() == Some(self.cfg.node.as_str());
        match (seen.role, directive) {
            (Role::Primary, Directive::Continue) if me => {
                self.save_epoch(epoch);
                self.problem = None;
                self.keep_primary(seen).await;
            }
            (Role::Primary, Directive::Demote) if me => {
                if seen.running {
                    tracing::info!(
                        "switchover: stopping PostgreSQL cleanly so that the new primary gets all of its WAL"
                    );
                    if let Err(e) = self.pg.stop_clean(Duration::from_secs(60)).await {
                        self.problem = Some(format!("switchover: {e}"));
                        tracing::error!("switchover: {e}");
                    }
                }
            }
            (Role::Primary, _) => self.rejoin(epoch).await,
            (Role::Standby, Directive::Demote) => {}
            (Role::Standby, Directive::Promote) => self.promote(epoch).await,
            (Role::Standby, Directive::Follow | Directive::Continue) => {
                self.follow(seen).await;
                if seen.running {
                    self.save_epoch(epoch);
                }
                if !visible && seen.answering && primary.is_some() && !me {
                    self.ask_promote().await;
                }
            }
            (Role::Standby, Directive::Rejoin) => {}
        }
    }

    /// The epoch's primary: runs, or comes back (with the witness's consent).
    async fn keep_primary(&mut self, seen: &Observed) {
        if seen.running {
            if self.resuming {
                self.resuming = false;
            }
            return;
        }
        if self.resuming {
            // The witness answered a "healthy" report: no promote for a failover timeout.
            tracing::info!("the witness still names this node the primary: starting PostgreSQL");
            match self.pg.start(START_TIMEOUT).await {
                Ok(()) => self.set_sync_names().await,
                Err(e) => {
                    self.problem = Some(format!("restarting the primary: {e}"));
                    tracing::error!("{e}");
                }
            }
            self.resuming = false;
            return;
        }
        // Down (crash, fence): wait for a standby to take over; when none has for two
        // failover timeouts, ask to come back.
        if self
            .down_since
            .is_some_and(|t| t.elapsed() >= self.failover_timeout * 2)
            && seen.pgdata_present
        {
            self.resuming = true;
        }
    }

    async fn ask_promote(&mut self) {
        let request = Request::RequestPromote(PromoteRequest {
            node: self.cfg.node.clone(),
            epoch: self.epoch,
            allow_data_loss: false,
        });
        match self.call(request).await {
            Some((epoch, Answer::Granted { .. })) => {
                tracing::info!("the witness granted a promote for epoch {epoch}");
                self.promote(epoch).await;
            }
            Some((_, Answer::Refused { message, .. }))
                if self.last_refusal.as_deref() != Some(message.as_str()) =>
            {
                tracing::info!("promote refused: {message}");
                self.last_refusal = Some(message);
            }
            Some((_, Answer::Refused { .. })) => {}
            Some((_, other)) => tracing::warn!("unexpected answer to a promote request: {other:?}"),
            None => {}
        }
    }

    /// Granted: catch up from the relay if there is one, promote, acknowledge.
    async fn promote(&mut self, epoch: Epoch) {
        if let Some(upstream) = self.cfg.upstream.clone() {
            self.catch_up_from(&upstream).await;
        }
        tracing::info!("promoting the local server (epoch {epoch})");
        if let Err(e) = self
            .pg
            .execute("SELECT pg_promote(true, 60)", PROMOTE_TIMEOUT)
            .await
        {
            self.problem = Some(format!("promote: {e}"));
            tracing::error!("promote failed: {e}");
            return;
        }
        let timeline = match self
            .pg
            .execute(
                "SELECT pg_walfile_name(pg_current_wal_flush_lsn())",
                Duration::from_secs(5),
            )
            .await
        {
            Ok(rows) => rows
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .and_then(|name| u32::from_str_radix(name.get(..8)?, 16).ok())
                .map(TimeLineId),
            Err(e) => {
                tracing::error!("after the promote: {e}");
                None
            }
        };
        let Some(timeline) = timeline else {
            self.problem = Some("promoted, but its timeline could not be read".into());
            return;
        };
        self.timeline = Some(timeline);
        let ack = Request::AckPromoted(AckPromoted {
            node: self.cfg.node.clone(),
            epoch,
            timeline,
        });
        match self.call(ack).await {
            Some((_, Answer::Acked { .. })) => {
                tracing::info!("promoted: primary of epoch {epoch}, timeline {timeline}");
            }
            Some((_, other)) => tracing::warn!("the witness answered the promote: {other:?}"),
            // The next report (as primary, at the new epoch) confirms it just as well.
            None => {}
        }
        self.save_epoch(epoch);
        self.primary = Some(self.cfg.node.clone());
        self.probe = None;
        self.problem = None;
        self.set_sync_names().await;
        // Until a checkpoint, the control file still names the old timeline, and PostgreSQL
        // 15's pg_rewind on the old primary would find "no rewind required" and leave it
        // unable to follow.
        if let Err(e) = self.pg.execute("CHECKPOINT", PROMOTE_TIMEOUT).await {
            tracing::warn!("checkpoint after the promote: {e}");
        }
    }

    async fn set_sync_names(&mut self) {
        let Some(names) = self.cfg.synchronous_standby_names.clone() else {
            return;
        };
        let sql = [
            format!(
                "ALTER SYSTEM SET synchronous_standby_names = {}",
                quote_literal(&names)
            ),
            "SELECT pg_reload_conf()".to_string(),
        ];
        if let Err(e) = self.pg.execute_each(&sql, Duration::from_secs(10)).await {
            tracing::error!("could not set synchronous_standby_names: {e}");
        }
    }

    /// Wait (bounded) until the local standby has received all that `upstream` has flushed.
    async fn catch_up_from(&mut self, upstream: &str) {
        let params = match crate::conninfo::resolve(&crate::conninfo::ConnOptions {
            dbname: Some(upstream.to_string()),
            prompt: crate::conninfo::PasswordPrompt::Never,
            ..Default::default()
        }) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("upstream conninfo: {e}");
                return;
            }
        };
        let end = match tokio::time::timeout(Duration::from_secs(3), async {
            let mut conn = crate::protocol::client::ReplicationConn::connect(&params).await?;
            conn.identify_system().await
        })
        .await
        {
            Ok(Ok(info)) => info.xlogpos,
            Ok(Err(e)) => {
                tracing::warn!("cannot ask the upstream how far it has flushed: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!("the upstream did not say how far it has flushed within 3 s");
                return;
            }
        };
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            let seen = self.pg.observe().await;
            if seen.flush_lsn >= end {
                tracing::info!("caught up with the upstream at {end}");
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    "not caught up with the upstream after {CATCH_UP_TIMEOUT:?} (at {}, upstream {end})",
                    seen.flush_lsn
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The conninfo this node streams from now.
    fn desired_primary_conninfo(&self) -> Option<String> {
        let upstream = match &self.cfg.upstream {
            Some(u) => u.clone(),
            None => format!(
                "{} {}",
                self.primary_address.as_deref()?,
                self.cfg.replication_conninfo
            ),
        };
        Some(format!(
            "{} application_name={}",
            upstream.trim(),
            self.cfg.node
        ))
    }

    /// A standby: runs, streams from the epoch's primary (or the relay), replies often enough
    /// for the primary's fence check.
    async fn follow(&mut self, seen: &Observed) {
        if !seen.running {
            if seen.pgdata_present {
                tracing::info!("the local standby is not running: starting it");
                match self.pg.start(START_TIMEOUT).await {
                    Ok(()) => self.start_failures = 0,
                    Err(e) => {
                        self.problem = Some(format!("starting the standby: {e}"));
                        tracing::error!("{e}");
                        self.start_failures += 1;
                    }
                }
            }
            // A standby that will not start (a rewind gone wrong, damaged files) or has lost
            // its data directory is rebuilt (from the repository, else from the primary)
            // rather than retried for ever.
            if (self.start_failures >= START_ATTEMPTS || !seen.pgdata_present)
                && self.next_rejoin.is_none_or(|t| Instant::now() >= t)
            {
                tracing::warn!("the local standby cannot start: rebuilding it");
                match self.rebuild(true).await {
                    Ok(how) => {
                        tracing::info!("rebuilt as a standby ({how})");
                        self.problem = None;
                        self.start_failures = 0;
                        self.rejoin_done();
                    }
                    Err(e) => {
                        let wait = self.rejoin_failed();
                        tracing::error!("rebuild failed (retried in {wait:?}): {e}");
                        self.problem = Some(format!("rebuild failed: {e}"));
                    }
                }
            }
            return;
        }
        if !seen.answering {
            return;
        }
        let Some(desired) = self.desired_primary_conninfo() else {
            return;
        };
        let mut sql = Vec::new();
        if seen.primary_conninfo.as_deref() != Some(desired.as_str()) {
            tracing::info!("streaming from: {desired}");
            sql.push(format!(
                "ALTER SYSTEM SET primary_conninfo = {}",
                quote_literal(&desired)
            ));
        }
        if !self.status_interval_set && seen.status_interval_s.is_some_and(|s| s != 1) {
            sql.push("ALTER SYSTEM SET wal_receiver_status_interval = '1s'".to_string());
        }
        if sql.is_empty() {
            self.status_interval_set = true;
            return;
        }
        sql.push("SELECT pg_reload_conf()".to_string());
        match self.pg.execute_each(&sql, Duration::from_secs(10)).await {
            Ok(_) => self.status_interval_set = true,
            Err(e) => tracing::error!("re-pointing the standby: {e}"),
        }
    }

    /// This node's server says it is a primary, but the witness names another: stop it and
    /// make it a standby of the new primary.
    async fn rejoin(&mut self, epoch: Epoch) {
        if self.next_rejoin.is_some_and(|t| Instant::now() < t) {
            // Between attempts the server stays stopped: never a second primary.
            if self.pg.postmaster().is_some() {
                self.stop_server().await;
            }
            return;
        }
        tracing::warn!(
            "the witness names {} the primary at epoch {epoch}: this node rejoins as a standby",
            self.primary.as_deref().unwrap_or("another node")
        );
        self.stop_server().await;
        match self.rebuild(false).await {
            Ok(how) => {
                tracing::info!("rejoined as a standby ({how})");
                self.problem = None;
                self.rejoin_done();
                self.resuming = false;
                self.save_epoch(epoch);
            }
            Err(e) => {
                let wait = self.rejoin_failed();
                tracing::error!("rejoin failed (retried in {wait:?}): {e}");
                self.problem = Some(format!("rejoin failed: {e}"));
            }
        }
    }

    fn rejoin_done(&mut self) {
        self.next_rejoin = None;
        self.rejoin_failures = 0;
    }

    /// Counts a failed rejoin or rebuild; how long until the next attempt.
    fn rejoin_failed(&mut self) -> Duration {
        self.rejoin_failures = self.rejoin_failures.saturating_add(1);
        let wait = rejoin_backoff(self.rejoin_failures);
        self.next_rejoin = Some(Instant::now() + wait);
        wait
    }

    /// Make this node a standby of the epoch's primary and start it: `pg_rewind` (unless
    /// `skip_rewind`), else `walferry restore --delta --standby` from the repository, else a
    /// fresh copy of the primary (`pg_basebackup`). The node keeps its own `*.conf` files.
    async fn rebuild(&mut self, skip_rewind: bool) -> Result<&'static str, String> {
        let Some(address) = self.primary_address.clone() else {
            return Err("the witness does not know the new primary's address yet".into());
        };
        let source = format!(
            "{address} {} dbname=postgres",
            self.cfg.replication_conninfo
        );
        let conninfo = self
            .desired_primary_conninfo()
            .ok_or("no primary to follow")?;
        // pg_rewind, a restore and a base backup bring the source's configuration files; this
        // node keeps its own (port, paths, memory, ...).
        let own_conf = conf_files(&self.cfg.pgdata);
        // WAL the rewind or the recovery after it needs that the primary no longer holds
        // comes from the repository.
        let restore_command = self.cfg.repo.as_ref().map(|repo| {
            crate::restore::recovery::archive_get_command(
                &self.cfg.walferry,
                &repo.to_string_lossy(),
            )
        });
        let mut how = "pg_rewind";
        let rewound = if !self.pg.pgdata_present() {
            Err("the data directory is gone".to_string())
        } else if skip_rewind {
            Err("the standby does not start".to_string())
        } else {
            // A new primary still finishing its promotion is on the old timeline: pg_rewind
            // would find nothing to rewind, and this node, ahead of the fork, would start
            // as a standby that can never follow. Wait for it (retried, server stopped).
            source_is_primary(&source)
                .await
                .map_err(|e| format!("the new primary is not ready for pg_rewind: {e}"))?;
            checkpoint_source(&source).await;
            if let Some(command) = &restore_command {
                set_auto_conf(&self.cfg.pgdata, &[("restore_command", Some(command))])
                    .map_err(|e| format!("cannot write postgresql.auto.conf: {e}"))?;
            }
            match self
                .pg
                .rewind(&source, restore_command.is_some(), REWIND_TIMEOUT)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => {
                    tracing::warn!("pg_rewind: {e}");
                    Err(e.to_string())
                }
            }
        };
        let restored = match (rewound, self.cfg.repo.clone()) {
            (Ok(()), _) => Ok(()),
            (Err(why), Some(repo)) => {
                how = "walferry restore --delta";
                let mut cmd = std::process::Command::new(&self.cfg.walferry);
                cmd.arg("restore")
                    .arg("--repo")
                    .arg(&repo)
                    .arg("--pgdata")
                    .arg(&self.cfg.pgdata)
                    .args(["--delta", "--standby", "--primary-conninfo"])
                    .arg(&conninfo);
                postgres::run("walferry restore", cmd, RESTORE_TIMEOUT)
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        tracing::warn!("walferry restore: {e}");
                        format!("{why}; then {e}")
                    })
            }
            (Err(why), None) => Err(format!("{why}; and no repository is configured")),
        };
        match restored {
            Ok(()) => make_standby(
                &self.cfg.pgdata,
                &own_conf,
                &conninfo,
                restore_command.as_deref(),
            )?,
            // Never a dead end: the primary itself is a source that is always there. But a
            // rewind that failed because the new primary is not reachable or not yet out of
            // recovery is tried again, not answered with a full copy.
            Err(why) => {
                source_is_primary(&source)
                    .await
                    .map_err(|e| format!("{why}; and the new primary cannot be copied: {e}"))?;
                tracing::warn!("copying the primary with pg_basebackup instead");
                how = "pg_basebackup";
                self.clone_primary(&source, &own_conf, &conninfo, restore_command.as_deref())
                    .await
                    .map_err(|e| format!("{why}; then {e}"))?;
            }
        }
        self.pg
            .start(START_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        Ok(how)
    }

    /// A fresh copy of the primary at `source`, made a standby beside PGDATA and then swapped
    /// in for it (see [`clone`]); on failure PGDATA is as it was and nothing is left beside it.
    async fn clone_primary(
        &mut self,
        source: &str,
        own_conf: &[(PathBuf, Vec<u8>)],
        conninfo: &str,
        restore_command: Option<&str>,
    ) -> Result<(), String> {
        if let Some(pid) = self.pg.postmaster() {
            return Err(format!(
                "the local server (postmaster {pid}) still runs: its data directory is not replaced under it"
            ));
        }
        let pgdata = self.cfg.pgdata.clone();
        let tidy = |e: std::io::Error| format!("cannot clean up beside {}: {e}", pgdata.display());
        clone::clean_leftovers(&pgdata).map_err(tidy)?;
        let build = clone::build_dir(&pgdata);
        let made = async {
            clone::base_backup(&self.cfg.bindir, source, &build, CLONE_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            make_standby(&build, own_conf, conninfo, restore_command)?;
            clone::swap_in(&pgdata, &build).map_err(|e| {
                format!(
                    "cannot put the copy {} in place of {}: {e}",
                    build.display(),
                    pgdata.display()
                )
            })
        }
        .await;
        if made.is_err() {
            if let Err(e) = clone::clean_leftovers(&pgdata) {
                tracing::warn!("{}", tidy(e));
            }
        }
        made
    }
}

/// Make the data directory `dir` a standby following `conninfo`: this node's own
/// configuration files (`own_conf`, taken from PGDATA before anything replaced them) back,
/// `standby.signal`, and the recovery settings. Every file durable: a crash must not leave
/// a data directory that would start as a primary.
fn make_standby(
    dir: &std::path::Path,
    own_conf: &[(PathBuf, Vec<u8>)],
    conninfo: &str,
    restore_command: Option<&str>,
) -> Result<(), String> {
    for (path, bytes) in own_conf {
        let Some(name) = path.file_name() else {
            continue;
        };
        let path = dir.join(name);
        crate::repo::write_durably(&path, bytes)
            .map_err(|e| format!("cannot put back {}: {e}", path.display()))?;
    }
    crate::repo::write_durably(&dir.join("standby.signal"), b"")
        .map_err(|e| format!("cannot write standby.signal: {e}"))?;
    set_auto_conf(
        dir,
        &[
            ("primary_conninfo", Some(conninfo)),
            ("primary_slot_name", None),
            ("recovery_target_timeline", Some("latest")),
            ("restore_command", restore_command),
        ],
    )
    .map_err(|e| format!("cannot write postgresql.auto.conf: {e}"))
}

/// The configuration files at the top of `pgdata` (`*.conf`), with their content.
fn conf_files(pgdata: &std::path::Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(dir) = std::fs::read_dir(pgdata) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .filter_map(|p| std::fs::read(&p).ok().map(|bytes| (p, bytes)))
        .collect()
}

/// Ask the new primary for a checkpoint before pg_rewind reads its control file (PostgreSQL
/// 15 decides from it whether the timelines diverged). Best effort: a role without the right
/// (pg_checkpoint) only makes an early rewind less likely to find the divergence.
async fn checkpoint_source(source: &str) {
    let timeout = Duration::from_secs(60);
    match postgres::connect(source, "walferry-agent rejoin", Duration::from_secs(5)).await {
        Ok(client) => {
            match tokio::time::timeout(timeout, client.simple_query("CHECKPOINT")).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("CHECKPOINT on the new primary: {e}"),
                Err(_) => tracing::warn!("CHECKPOINT on the new primary took over {timeout:?}"),
            }
        }
        Err(e) => tracing::warn!("cannot connect to the new primary for a checkpoint: {e}"),
    }
}

/// Whether the server at `source` answers as a primary (out of recovery).
async fn source_is_primary(source: &str) -> Result<(), String> {
    let timeout = Duration::from_secs(5);
    let client = postgres::connect(source, "walferry-agent rejoin", timeout)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    match tokio::time::timeout(timeout, client.simple_query("SELECT pg_is_in_recovery()")).await {
        Ok(Ok(messages)) => {
            let in_recovery = messages.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|v| v == "t"),
                _ => None,
            });
            match in_recovery {
                Some(false) => Ok(()),
                Some(true) => Err("it is still in recovery".into()),
                None => Err("no answer to pg_is_in_recovery()".into()),
            }
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_rejoin_is_retried_ever_less_often_up_to_a_bound() {
        let waits: Vec<u64> = (1..=8).map(|n| rejoin_backoff(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 120, 120, 120]);
        assert_eq!(rejoin_backoff(u32::MAX), REJOIN_RETRY_MAX);
    }
}
