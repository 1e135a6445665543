//! The failover rules of issue 10 as pure functions: the cluster state and the time in, a
//! decision out. No I/O and no clock inside (the time is an argument), so every rule is tested
//! as a state machine on a fake clock, and the witness and the agent apply the same code.
//!
//! Why each rule (the guarantees of pg_auto_failover and Patroni, without their outage):
//! - A promote needs the standby's view ("I lost the primary"), the witness's view ("its agent
//!   has not reported itself healthy for the failover timeout") and no other standby still
//!   streaming from it: a partition between one standby and the primary, or between the
//!   witness and the primary, is not a dead primary.
//! - The primary's agent fences itself when it has reached neither the witness nor a standby
//!   for the fence timeout, and `fence + report interval <= failover`: by the time the witness
//!   may grant a promote, an isolated old primary has stopped taking writes.
//! - Only the most advanced eligible standby is promoted (ties: higher priority, then smaller
//!   name, so that two standbys never both win); in synchronous mode it must hold every
//!   commit the primary reported as synchronously acknowledged (RPO 0).
//! - The epoch orders decisions: a grant is for exactly the next epoch, so two standbys that
//!   ask at once cannot both be granted, and a primary of an older epoch is told to rejoin.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::state::{lsn_text, tli_num, ClusterState, Health, NodeState, Role};
use super::wire::{AckPromoted, Answer, Directive, PromoteRequest, Report};
use super::{Epoch, UnixMillis};
use crate::wal::{Lsn, TimeLineId};

pub const DEFAULT_FAILOVER_TIMEOUT: Duration = Duration::from_secs(4);
pub const DEFAULT_FENCE_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_millis(500);

/// The witness's side of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// How long the primary must have been silent (or reporting itself failed) before a
    /// standby may be promoted; also how recent a standby's report must be to count.
    pub failover_timeout: Duration,
    /// Only a standby holding every synchronously acknowledged commit may be promoted.
    pub synchronous: bool,
    /// Waive the synchronous rule for every promote.
    pub allow_data_loss: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            failover_timeout: DEFAULT_FAILOVER_TIMEOUT,
            synchronous: false,
            allow_data_loss: false,
        }
    }
}

impl Policy {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.failover_timeout.is_zero() {
            return Err(ConfigError::Zero {
                name: "failover timeout",
            });
        }
        if self.failover_timeout < MIN_FAILOVER_TIMEOUT {
            return Err(ConfigError::FailoverTooShort {
                failover: self.failover_timeout,
            });
        }
        Ok(())
    }
}

/// Below this, clock granularity and scheduling delays are a fair share of the timeout.
pub const MIN_FAILOVER_TIMEOUT: Duration = Duration::from_millis(500);

/// An agent's side of the configuration, checked against the witness's failover timeout
/// (which the witness sends in every answer to a report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentTimeouts {
    pub report_interval: Duration,
    pub fence_timeout: Duration,
}

impl Default for AgentTimeouts {
    fn default() -> Self {
        AgentTimeouts {
            report_interval: DEFAULT_REPORT_INTERVAL,
            fence_timeout: DEFAULT_FENCE_TIMEOUT,
        }
    }
}

impl AgentTimeouts {
    pub fn validate(&self, failover_timeout: Duration) -> Result<(), ConfigError> {
        for (name, d) in [
            ("report interval", self.report_interval),
            ("fence timeout", self.fence_timeout),
            ("failover timeout", failover_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Zero { name });
            }
        }
        // One lost report must not fence a primary.
        if self.report_interval * 2 > self.fence_timeout {
            return Err(ConfigError::ReportTooSlow {
                interval: self.report_interval,
                fence: self.fence_timeout,
            });
        }
        // The agent checks once per interval, so it fences up to one interval after the
        // fence timeout; that must still be before the witness may grant a promote.
        if self.fence_timeout + self.report_interval > failover_timeout {
            return Err(ConfigError::FenceNotShorter {
                fence: self.fence_timeout,
                interval: self.report_interval,
                failover: failover_timeout,
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the {name} must be more than zero")]
    Zero { name: &'static str },
    #[error("a failover timeout of {failover:?} is too short (at least {MIN_FAILOVER_TIMEOUT:?})")]
    FailoverTooShort { failover: Duration },
    #[error("a report interval of {interval:?} is too slow for a fence timeout of {fence:?}: one lost report would fence the primary")]
    ReportTooSlow { interval: Duration, fence: Duration },
    #[error("the fence timeout ({fence:?}) plus one report interval ({interval:?}) must not exceed the failover timeout ({failover:?}): an isolated primary could still take writes after a standby is promoted")]
    FenceNotShorter {
        fence: Duration,
        interval: Duration,
        failover: Duration,
    },
}

impl ConfigError {
    pub fn hint(&self) -> &'static str {
        match self {
            ConfigError::Zero { .. } | ConfigError::FailoverTooShort { .. } => {
                "the defaults are: report every 0.5 s, fence after 3 s, fail over after 4 s"
            }
            ConfigError::ReportTooSlow { .. } => {
                "report at least twice per fence timeout (defaults: 0.5 s and 3 s)"
            }
            ConfigError::FenceNotShorter { .. } => {
                "shorten the fence timeout or lengthen the witness's --failover-timeout \
                 (defaults: fence 3 s, report 0.5 s, failover 4 s)"
            }
        }
    }
}

/// Whether a primary's agent must fence (stop PostgreSQL) now: it has reached neither the
/// witness nor any standby for the fence timeout. `None` is "never since the agent started":
/// an agent that has heard from no one does not let its primary run unfenced.
pub fn must_fence(
    now: UnixMillis,
    last_witness_contact: Option<UnixMillis>,
    last_standby_contact: Option<UnixMillis>,
    fence_timeout: Duration,
) -> bool {
    match last_witness_contact.max(last_standby_contact) {
        None => true,
        Some(last) => now.since(last) >= fence_timeout,
    }
}

/// Whether a primary's agent may let PostgreSQL take writes, given the witness's answer to
/// its report: only when the witness names it the primary of the epoch it acts on.
pub fn primary_may_take_writes(
    node: &str,
    own_epoch: Epoch,
    answer_epoch: Epoch,
    answer: &Answer,
) -> bool {
    matches!(
        answer,
        Answer::Reported { primary: Some(p), directive: Directive::Continue, .. }
            if p == node && own_epoch == answer_epoch
    )
}

/// How long the primary has not reported itself healthy, counted from the witness's own start
/// at the earliest: a witness that was down heard nothing, which says nothing.
pub fn primary_silence(state: &ClusterState, now: UnixMillis, started: UnixMillis) -> Duration {
    now.since(state.primary_heard.max(started))
}

/// Whether the epoch's primary's agent says, in a fresh report, that its PostgreSQL is down
/// (not running, and not to be started as a primary without the witness's consent): then
/// there is nothing to wait for, and a promote need not wait out the failover timeout.
pub fn primary_reported_down(state: &ClusterState, policy: &Policy, now: UnixMillis) -> bool {
    let Some(primary) = state.primary.as_deref() else {
        return false;
    };
    state.promotion.is_none()
        && state.nodes.get(primary).is_some_and(|p| {
            p.role == Role::Primary
                && p.down
                && p.health == Health::Failed
                && p.epoch == state.epoch
                && now.since(p.last_report) < policy.failover_timeout
        })
}

/// Why a standby cannot be promoted, whatever the primary does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Ineligible {
    #[error("it is the primary")]
    IsPrimary,
    #[error("it reports itself a primary, not a standby")]
    NotAStandby,
    #[error("its agent reports PostgreSQL failed")]
    Unhealthy,
    #[error("its agent has not reported for {silent_ms} ms")]
    Silent { silent_ms: u64 },
    #[error("it is at epoch {node_epoch}, the cluster at {epoch}")]
    EpochBehind { node_epoch: Epoch, epoch: Epoch },
    #[error("it is on timeline {node_timeline}, the primary on {timeline}")]
    OtherTimeline {
        #[serde(with = "tli_num")]
        node_timeline: TimeLineId,
        #[serde(with = "tli_num")]
        timeline: TimeLineId,
    },
    #[error("its priority is 0 (never promote)")]
    NeverPromote,
}

/// Whether `name` could be promoted, leaving aside the primary's state and the other
/// standbys.
pub fn eligibility(
    state: &ClusterState,
    policy: &Policy,
    now: UnixMillis,
    name: &str,
    node: &NodeState,
) -> Result<(), Ineligible> {
    if state.primary.as_deref() == Some(name) {
        return Err(Ineligible::IsPrimary);
    }
    if node.role != Role::Standby {
        return Err(Ineligible::NotAStandby);
    }
    if node.health != Health::Ok {
        return Err(Ineligible::Unhealthy);
    }
    let silent = now.since(node.last_report);
    if silent >= policy.failover_timeout {
        return Err(Ineligible::Silent {
            silent_ms: millis(silent),
        });
    }
    if node.epoch != state.epoch {
        return Err(Ineligible::EpochBehind {
            node_epoch: node.epoch,
            epoch: state.epoch,
        });
    }
    if node.timeline != state.timeline {
        return Err(Ineligible::OtherTimeline {
            node_timeline: node.timeline,
            timeline: state.timeline,
        });
    }
    if node.priority == 0 {
        return Err(Ineligible::NeverPromote);
    }
    Ok(())
}

/// A standby and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub name: &'a str,
    pub node: &'a NodeState,
    pub verdict: Result<(), Ineligible>,
}

/// Every node but the primary, best first: eligible ones before the others, then by flush
/// LSN (highest first), priority (highest first), name.
pub fn candidates<'a>(
    state: &'a ClusterState,
    policy: &Policy,
    now: UnixMillis,
) -> Vec<Candidate<'a>> {
    let mut all: Vec<Candidate<'a>> = state
        .nodes
        .iter()
        .filter(|(name, _)| state.primary.as_deref() != Some(name.as_str()))
        .map(|(name, node)| Candidate {
            name,
            node,
            verdict: eligibility(state, policy, now, name, node),
        })
        .collect();
    all.sort_by(|a, b| {
        (b.verdict.is_ok(), b.node.flush_lsn, b.node.priority)
            .cmp(&(a.verdict.is_ok(), a.node.flush_lsn, a.node.priority))
            .then_with(|| a.name.cmp(b.name))
    });
    all
}

/// Why a promote is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Refusal {
    #[error("no primary is known yet: nothing to fail over")]
    NoPrimary,
    #[error("node \"{node}\" has never reported; an agent reports before it asks")]
    UnknownNode { node: String },
    #[error("stale epoch: the request is for epoch {seen}, the cluster is at {current}")]
    StaleEpoch { seen: Epoch, current: Epoch },
    #[error("the request is for epoch {seen}, ahead of the witness's {current}: the witness's state is not this cluster's")]
    EpochAhead { seen: Epoch, current: Epoch },
    #[error("it is already the primary")]
    AlreadyPrimary,
    #[error("its latest report says it still reaches the primary")]
    SeesPrimary,
    #[error(
        "the primary reported itself healthy {silent_ms} ms ago (failover timeout {timeout_ms} ms)"
    )]
    PrimaryAlive { silent_ms: u64, timeout_ms: u64 },
    #[error("standby \"{node}\" still reaches the primary")]
    PrimarySeenBy { node: String },
    #[error("it cannot be promoted: {why}")]
    Ineligible { why: Ineligible },
    #[error("\"{best}\" is more advanced or preferred (flush {best_flush}, priority {best_priority}; this node: flush {flush}, priority {priority})")]
    NotMostAdvanced {
        best: String,
        #[serde(with = "lsn_text")]
        best_flush: Lsn,
        best_priority: u32,
        #[serde(with = "lsn_text")]
        flush: Lsn,
        priority: u32,
    },
    #[error("synchronous mode: it has flushed up to {flush}, but commits up to {acked} were acknowledged; promoting it would lose them (allow data loss to force it)")]
    MissingAckedCommits {
        #[serde(with = "lsn_text")]
        flush: Lsn,
        #[serde(with = "lsn_text")]
        acked: Lsn,
    },
    #[error("a switchover to \"{to}\" is in progress")]
    SwitchoverInProgress { to: String },
    #[error("a promote of \"{node}\" is pending")]
    PromotionPending { node: String },
    #[error("the primary \"{primary}\" is not healthy and reporting: a switchover needs it to stop cleanly (use walferry failover)")]
    PrimaryNotHealthy { primary: String },
    #[error("no promote of \"{node}\" is pending at epoch {epoch}")]
    NotGranted { node: String, epoch: Epoch },
    #[error("timeline {timeline} is not after the cluster's {current}")]
    TimelineNotAhead {
        #[serde(with = "tli_num")]
        timeline: TimeLineId,
        #[serde(with = "tli_num")]
        current: TimeLineId,
    },
}

/// Whether to grant `req` now: `Ok` means promote `req.node` for epoch `state.epoch + 1`.
pub fn decide_promote(
    state: &ClusterState,
    policy: &Policy,
    now: UnixMillis,
    started: UnixMillis,
    req: &PromoteRequest,
) -> Result<(), Refusal> {
    let Some(primary) = state.primary.as_deref() else {
        return Err(Refusal::NoPrimary);
    };
    let Some(node) = state.nodes.get(&req.node) else {
        return Err(Refusal::UnknownNode {
            node: req.node.clone(),
        });
    };
    check_epoch(req.epoch, state.epoch)?;
    if primary == req.node {
        return Err(Refusal::AlreadyPrimary);
    }
    if let Some(sw) = &state.switchover {
        return Err(Refusal::SwitchoverInProgress { to: sw.to.clone() });
    }
    if node.primary_visible {
        return Err(Refusal::SeesPrimary);
    }
    let silent = primary_silence(state, now, started);
    if silent < policy.failover_timeout && !primary_reported_down(state, policy, now) {
        return Err(Refusal::PrimaryAlive {
            silent_ms: millis(silent),
            timeout_ms: millis(policy.failover_timeout),
        });
    }
    if let Some((other, _)) = state.nodes.iter().find(|(name, n)| {
        name.as_str() != primary
            && n.role == Role::Standby
            && n.primary_visible
            && now.since(n.last_report) < policy.failover_timeout
    }) {
        return Err(Refusal::PrimarySeenBy {
            node: other.clone(),
        });
    }
    eligibility(state, policy, now, &req.node, node).map_err(|why| Refusal::Ineligible { why })?;
    let ranked = candidates(state, policy, now);
    // The requester is eligible, so the first candidate is.
    if let Some(best) = ranked.first().filter(|best| best.name != req.node) {
        return Err(Refusal::NotMostAdvanced {
            best: best.name.to_string(),
            best_flush: best.node.flush_lsn,
            best_priority: best.node.priority,
            flush: node.flush_lsn,
            priority: node.priority,
        });
    }
    let waived = policy.allow_data_loss || req.allow_data_loss;
    if policy.synchronous && !waived && node.flush_lsn < state.sync_acked_lsn {
        return Err(Refusal::MissingAckedCommits {
            flush: node.flush_lsn,
            acked: state.sync_acked_lsn,
        });
    }
    Ok(())
}

/// Whether to start a planned switchover to `to`: the primary is healthy and reporting (it
/// must stop cleanly), `to` is an eligible standby, and nothing else is under way.
pub fn decide_switchover(
    state: &ClusterState,
    policy: &Policy,
    now: UnixMillis,
    to: &str,
) -> Result<(), Refusal> {
    let primary = operator_checks(state, to)?;
    let fresh = state.nodes.get(primary).is_some_and(|p| {
        p.health == Health::Ok
            && p.role == Role::Primary
            && now.since(p.last_report) < policy.failover_timeout
    });
    if !fresh {
        return Err(Refusal::PrimaryNotHealthy {
            primary: primary.to_string(),
        });
    }
    let node = &state.nodes[to];
    eligibility(state, policy, now, to, node).map_err(|why| Refusal::Ineligible { why })
}

/// Whether an operator may force a failover to `to`: the primary must be lost exactly as for
/// an automatic promote (silent for the failover timeout, or reported down), but `to` need
/// not be the most advanced standby, nor see the primary lost itself, and may have priority 0
/// (never promoted automatically). In synchronous mode it
/// must hold every acknowledged commit unless data loss is allowed.
pub fn decide_forced_failover(
    state: &ClusterState,
    policy: &Policy,
    now: UnixMillis,
    started: UnixMillis,
    to: &str,
    allow_data_loss: bool,
) -> Result<(), Refusal> {
    let _ = operator_checks(state, to)?;
    let silent = primary_silence(state, now, started);
    if silent < policy.failover_timeout && !primary_reported_down(state, policy, now) {
        return Err(Refusal::PrimaryAlive {
            silent_ms: millis(silent),
            timeout_ms: millis(policy.failover_timeout),
        });
    }
    let node = &state.nodes[to];
    // Priority 0 means "never promote by itself": the operator may still choose it.
    match eligibility(state, policy, now, to, node) {
        Ok(()) | Err(Ineligible::NeverPromote) => {}
        Err(why) => return Err(Refusal::Ineligible { why }),
    }
    let waived = policy.allow_data_loss || allow_data_loss;
    if policy.synchronous && !waived && node.flush_lsn < state.sync_acked_lsn {
        return Err(Refusal::MissingAckedCommits {
            flush: node.flush_lsn,
            acked: state.sync_acked_lsn,
        });
    }
    Ok(())
}

/// What both operator requests need: a primary, a known node that is not it, and no other
/// change under way. The primary's name.
fn operator_checks<'a>(state: &'a ClusterState, to: &str) -> Result<&'a str, Refusal> {
    let Some(primary) = state.primary.as_deref() else {
        return Err(Refusal::NoPrimary);
    };
    if !state.nodes.contains_key(to) {
        return Err(Refusal::UnknownNode {
            node: to.to_string(),
        });
    }
    if primary == to {
        return Err(Refusal::AlreadyPrimary);
    }
    if let Some(p) = &state.promotion {
        return Err(Refusal::PromotionPending {
            node: p.node.clone(),
        });
    }
    if let Some(sw) = &state.switchover {
        return Err(Refusal::SwitchoverInProgress { to: sw.to.clone() });
    }
    Ok(primary)
}

fn check_epoch(seen: Epoch, current: Epoch) -> Result<(), Refusal> {
    if seen < current {
        Err(Refusal::StaleEpoch { seen, current })
    } else if seen > current {
        Err(Refusal::EpochAhead { seen, current })
    } else {
        Ok(())
    }
}

/// What a node that sent `report` must do (the state being the witness's before it).
pub fn directive(state: &ClusterState, report: &Report) -> Directive {
    let is_epoch_primary = state.primary.as_deref() == Some(report.node.as_str());
    let pending_for_it = state
        .promotion
        .as_ref()
        .is_some_and(|p| p.node == report.node);
    match report.role {
        // Bootstrap: the first primary to report becomes the primary of epoch 1.
        Role::Primary if state.primary.is_none() => Directive::Continue,
        Role::Primary
            if is_epoch_primary
                && report.epoch == state.epoch
                && state
                    .switchover
                    .as_ref()
                    .is_some_and(|sw| sw.from == report.node) =>
        {
            Directive::Demote
        }
        Role::Primary if is_epoch_primary && report.epoch == state.epoch => Directive::Continue,
        Role::Primary => Directive::Rejoin,
        // Granted, and (its answer lost?) not yet promoted: promote.
        Role::Standby if pending_for_it => Directive::Promote,
        Role::Standby if report.epoch < state.epoch => Directive::Follow,
        Role::Standby => Directive::Continue,
    }
}

/// Whether `ack` confirms the pending promote (or repeats a confirmed one).
pub fn check_ack(state: &ClusterState, ack: &AckPromoted) -> Result<(), Refusal> {
    check_epoch(ack.epoch, state.epoch)?;
    if state.primary.as_deref() != Some(ack.node.as_str()) {
        return Err(Refusal::NotGranted {
            node: ack.node.clone(),
            epoch: ack.epoch,
        });
    }
    match &state.promotion {
        Some(_) if ack.timeline > state.timeline => Ok(()),
        Some(_) => Err(Refusal::TimelineNotAhead {
            timeline: ack.timeline,
            current: state.timeline,
        }),
        // Confirmed already: the same answer again (the first one may have been lost).
        None if ack.timeline == state.timeline => Ok(()),
        None => Err(Refusal::NotGranted {
            node: ack.node.clone(),
            epoch: ack.epoch,
        }),
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
