//! The witness as a pure state machine: a request and the time in, an answer and (when the
//! request changed it) the next state out. The caller makes the next state durable and only
//! then commits it and sends the answer, so an answer never describes a state a crash could
//! lose, and a failed write changes nothing.

use super::rules::{self, Policy, Refusal};
use super::state::{ClusterState, NodeState, Promotion, Role, Switchover};
use super::wire::{
    AckPromoted, Answer, CandidateView, Directive, NodeView, OperatorRequest, PromoteRequest,
    Report, Request, StatusView,
};
use super::{Epoch, UnixMillis};

/// At most this many nodes: a mistyped node name must not grow the state without bound.
pub const MAX_NODES: usize = 64;

/// How long a switchover may take before the witness gives up on it.
pub const SWITCHOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The witness's decisions over its state.
#[derive(Debug, Clone)]
pub struct Witness {
    state: ClusterState,
    policy: Policy,
    /// When this witness process started: silence before it is not counted.
    started: UnixMillis,
}

/// The answer to one request, and the state to make durable before sending it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub epoch: Epoch,
    pub answer: Answer,
    pub next: Option<ClusterState>,
}

impl Witness {
    pub fn new(state: ClusterState, policy: Policy, started: UnixMillis) -> Self {
        Witness {
            state,
            policy,
            started,
        }
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Adopt a state [`Witness::decide`] returned, once it is durable.
    pub fn commit(&mut self, next: ClusterState) {
        self.state = next;
    }

    pub fn decide(&self, now: UnixMillis, request: &Request) -> Outcome {
        match request {
            Request::Report(r) => self.report(now, r),
            Request::Status => self.unchanged(Answer::Status(Box::new(self.status(now)))),
            Request::RequestPromote(r) => self.request_promote(now, r),
            Request::AckPromoted(a) => self.ack_promoted(now, a),
            Request::Switchover(o) => self.switchover(now, o),
            Request::Failover(o) => self.forced_failover(now, o),
        }
    }

    fn unchanged(&self, answer: Answer) -> Outcome {
        Outcome {
            epoch: self.state.epoch,
            answer,
            next: None,
        }
    }

    fn changed(&self, answer: Answer, next: ClusterState) -> Outcome {
        Outcome {
            epoch: next.epoch,
            answer,
            next: Some(next),
        }
    }

    fn error(&self, message: String, hint: Option<&str>) -> Outcome {
        self.unchanged(Answer::Error {
            message,
            hint: hint.map(str::to_string),
        })
    }

    fn report(&self, now: UnixMillis, r: &Report) -> Outcome {
        if let Err(message) = check_node_name(&r.node) {
            return self.error(message, None);
        }
        if r.epoch > self.state.epoch {
            return self.error(
                format!(
                    "node \"{}\" acts on epoch {}, but this witness is at epoch {}: its state is not this cluster's",
                    r.node, r.epoch, self.state.epoch
                ),
                Some("point the agents at the witness (and data directory) the cluster used; the epoch must never go back"),
            );
        }
        if !self.state.nodes.contains_key(&r.node) && self.state.nodes.len() >= MAX_NODES {
            return self.error(
                format!(
                    "the witness already tracks {MAX_NODES} nodes; \"{}\" is one too many",
                    r.node
                ),
                Some("check the node names in the agents' configuration"),
            );
        }
        let mut directive = rules::directive(&self.state, r);
        let mut next = self.state.clone();
        next.nodes.insert(
            r.node.clone(),
            NodeState {
                role: r.role,
                timeline: r.timeline,
                epoch: r.epoch,
                flush_lsn: r.flush_lsn,
                replay_lsn: r.replay_lsn,
                health: r.health,
                primary_visible: r.primary_visible,
                priority: r.priority,
                synchronous: r.synchronous,
                last_report: now,
                down: r.down,
                address: r.address.clone(),
                problem: r.problem.clone(),
            },
        );
        if r.role == Role::Primary && next.primary.is_none() {
            next.epoch = next.epoch.next();
            next.primary = Some(r.node.clone());
            next.timeline = r.timeline;
            next.primary_heard = now;
            next.record_decision(
                now,
                "bootstrap: the first node to report itself primary".into(),
            );
        } else if r.role == Role::Primary && directive == Directive::Continue {
            self.primary_reported(now, r, &mut next);
        }
        if self.switchover_progress(now, r, &mut next) {
            directive = Directive::Promote;
        }
        let answer = Answer::Reported {
            primary: next.primary.clone(),
            timeline: next.timeline,
            directive,
            failover_timeout_ms: rules::millis(self.policy.failover_timeout),
            primary_address: next
                .primary
                .as_ref()
                .and_then(|p| next.nodes.get(p))
                .and_then(|n| n.address.clone()),
        };
        self.changed(answer, next)
    }

    /// A switchover under way: note the old primary's shutdown LSN, promote the target once
    /// it has received past it (true: the reporting node is to promote now), or give up
    /// after [`SWITCHOVER_TIMEOUT`].
    fn switchover_progress(&self, now: UnixMillis, r: &Report, next: &mut ClusterState) -> bool {
        let Some(sw) = next.switchover.as_mut() else {
            return false;
        };
        if r.node == sw.from && r.role == Role::Primary && r.down {
            if let Some(lsn) = r.shutdown_lsn {
                sw.final_lsn = Some(lsn);
            }
        }
        let sw = sw.clone();
        let caught_up = sw.final_lsn.is_some_and(|last| r.flush_lsn > last);
        if r.node == sw.to
            && r.role == Role::Standby
            && r.health == super::state::Health::Ok
            && r.epoch == next.epoch
            && caught_up
        {
            next.switchover = None;
            self.grant(
                now,
                next,
                &sw.to,
                format!(
                    "switchover: \"{}\" stopped cleanly at {}, \"{}\" has received it all",
                    sw.from,
                    sw.final_lsn.unwrap_or_default(),
                    sw.to
                ),
            );
            return true;
        }
        if now.since(sw.requested_at) >= SWITCHOVER_TIMEOUT {
            next.switchover = None;
            next.record_decision(
                now,
                format!(
                    "switchover to \"{}\" abandoned after {} s ({})",
                    sw.to,
                    SWITCHOVER_TIMEOUT.as_secs(),
                    match sw.final_lsn {
                        None => "the primary did not stop cleanly".to_string(),
                        Some(l) => format!("the target did not receive WAL up to {l}"),
                    }
                ),
            );
        }
        false
    }

    /// Make `node` the primary of the next epoch, pending its acknowledgement.
    fn grant(&self, now: UnixMillis, next: &mut ClusterState, node: &str, what: String) {
        let previous = next.primary.replace(node.to_string()).unwrap_or_default();
        next.epoch = next.epoch.next();
        next.promotion = Some(Promotion {
            node: node.to_string(),
            epoch: next.epoch,
            previous_primary: previous,
            granted_at: now,
        });
        // The new primary gets a failover timeout of its own to promote and report.
        next.primary_heard = now;
        next.record_decision(now, what);
    }

    fn switchover(&self, now: UnixMillis, o: &OperatorRequest) -> Outcome {
        if let Err(reason) = rules::decide_switchover(&self.state, &self.policy, now, &o.to) {
            return self.refused(reason);
        }
        let from = self.state.primary.clone().unwrap_or_default();
        let mut next = self.state.clone();
        next.switchover = Some(Switchover {
            from: from.clone(),
            to: o.to.clone(),
            requested_at: now,
            final_lsn: None,
        });
        next.record_decision(now, format!("switchover to \"{}\" requested", o.to));
        self.changed(
            Answer::Accepted {
                message: format!(
                    "switchover from \"{from}\" to \"{}\": \"{from}\" stops cleanly, \"{}\" is \
                     promoted once it has received all of its WAL, \"{from}\" then follows it",
                    o.to, o.to
                ),
            },
            next,
        )
    }

    fn forced_failover(&self, now: UnixMillis, o: &OperatorRequest) -> Outcome {
        if let Err(reason) = rules::decide_forced_failover(
            &self.state,
            &self.policy,
            now,
            self.started,
            &o.to,
            o.allow_data_loss,
        ) {
            return self.refused(reason);
        }
        let mut next = self.state.clone();
        let previous = next.primary.clone().unwrap_or_default();
        self.grant(
            now,
            &mut next,
            &o.to,
            format!(
                "failover forced by an operator (\"{previous}\" lost{})",
                if o.allow_data_loss {
                    ", data loss allowed"
                } else {
                    ""
                }
            ),
        );
        self.changed(Answer::Granted { node: o.to.clone() }, next)
    }

    /// The epoch's primary reported, as primary, at the current epoch.
    fn primary_reported(&self, now: UnixMillis, r: &Report, next: &mut ClusterState) {
        if r.health == super::state::Health::Ok {
            next.primary_heard = now;
        }
        if let Some(acked) = r.sync_acked_lsn {
            next.sync_acked_lsn = next.sync_acked_lsn.max(acked);
        }
        if r.timeline > next.timeline {
            // Promoted and reporting before (or instead of) its ack_promoted.
            next.timeline = r.timeline;
            if next.promotion.take().is_some() {
                next.record_decision(now, format!("promoted, on timeline {}", r.timeline));
            }
        }
    }

    fn request_promote(&self, now: UnixMillis, r: &PromoteRequest) -> Outcome {
        match rules::decide_promote(&self.state, &self.policy, now, self.started, r) {
            Err(reason) => self.refused(reason),
            Ok(()) => {
                let mut next = self.state.clone();
                let previous = next.primary.clone().unwrap_or_default();
                let silent = rules::primary_silence(&self.state, now, self.started);
                self.grant(
                    now,
                    &mut next,
                    &r.node,
                    format!(
                        "promote granted (\"{previous}\" silent for {} ms{})",
                        rules::millis(silent),
                        if r.allow_data_loss {
                            ", data loss allowed"
                        } else {
                            ""
                        }
                    ),
                );
                self.changed(
                    Answer::Granted {
                        node: r.node.clone(),
                    },
                    next,
                )
            }
        }
    }

    fn ack_promoted(&self, now: UnixMillis, a: &AckPromoted) -> Outcome {
        if let Err(reason) = rules::check_ack(&self.state, a) {
            return self.refused(reason);
        }
        let answer = Answer::Acked {
            node: a.node.clone(),
            timeline: a.timeline,
        };
        if self.state.promotion.is_none() {
            return self.unchanged(answer);
        }
        let mut next = self.state.clone();
        next.timeline = a.timeline;
        next.promotion = None;
        next.primary_heard = now;
        if let Some(node) = next.nodes.get_mut(&a.node) {
            node.role = Role::Primary;
            node.timeline = a.timeline;
            node.epoch = a.epoch;
        }
        next.record_decision(now, format!("promoted, on timeline {}", a.timeline));
        self.changed(answer, next)
    }

    fn refused(&self, reason: Refusal) -> Outcome {
        self.unchanged(Answer::Refused {
            message: reason.to_string(),
            reason,
        })
    }

    /// What `walferry status` shows.
    pub fn status(&self, now: UnixMillis) -> StatusView {
        let state = &self.state;
        let primary_flush = state
            .primary
            .as_ref()
            .and_then(|p| state.nodes.get(p))
            .map(|n| n.flush_lsn);
        let nodes = state
            .nodes
            .iter()
            .map(|(name, n)| {
                let is_primary = state.primary.as_deref() == Some(name.as_str());
                NodeView {
                    name: name.clone(),
                    role: n.role,
                    stale: n.role == Role::Primary && (!is_primary || n.epoch < state.epoch),
                    timeline: n.timeline,
                    epoch: n.epoch,
                    flush_lsn: n.flush_lsn,
                    replay_lsn: n.replay_lsn,
                    lag_bytes: match primary_flush {
                        Some(p) if !is_primary => Some(p.0.saturating_sub(n.replay_lsn.0)),
                        _ => None,
                    },
                    health: n.health,
                    primary_visible: n.primary_visible,
                    priority: n.priority,
                    synchronous: n.synchronous,
                    last_report_ms_ago: rules::millis(now.since(n.last_report)),
                    down: n.down,
                    address: n.address.clone(),
                    problem: n.problem.clone(),
                }
            })
            .collect();
        let candidates = rules::candidates(state, &self.policy, now)
            .into_iter()
            .map(|c| {
                let lacks_acked = self.policy.synchronous
                    && !self.policy.allow_data_loss
                    && c.node.flush_lsn < state.sync_acked_lsn;
                CandidateView {
                    node: c.name.to_string(),
                    flush_lsn: c.node.flush_lsn,
                    priority: c.node.priority,
                    eligible: c.verdict.is_ok() && !lacks_acked,
                    note: match c.verdict {
                        Err(why) => Some(why.to_string()),
                        Ok(()) if lacks_acked => Some(format!(
                            "lacks commits acknowledged up to {}",
                            state.sync_acked_lsn
                        )),
                        Ok(()) => None,
                    },
                }
            })
            .collect();
        StatusView {
            epoch: state.epoch,
            primary: state.primary.clone(),
            timeline: state.timeline,
            promotion_pending: state.promotion.as_ref().map(|p| p.node.clone()),
            switchover_pending: state.switchover.as_ref().map(|sw| sw.to.clone()),
            sync_acked_lsn: state.sync_acked_lsn,
            synchronous: self.policy.synchronous,
            allow_data_loss: self.policy.allow_data_loss,
            failover_timeout_ms: rules::millis(self.policy.failover_timeout),
            primary_silent_ms: rules::millis(rules::primary_silence(state, now, self.started)),
            nodes,
            candidates,
        }
    }
}

/// Node names: what an `application_name` may be and a shell need not quote.
fn check_node_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid node name {name:?}: use 1 to 63 letters, digits, '_', '-' or '.'"
        ))
    }
}
