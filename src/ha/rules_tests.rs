//! The rules as a state machine on a fake clock: the witness's decisions for every
//! combination the issue names, the agent-side functions, and a seeded random schedule of
//! partitions and crashes checked against "never two writers".

use std::time::Duration;

use super::*;
use crate::ha::state::{ClusterState, Health, Role};
use crate::ha::wire::{AckPromoted, Answer, Directive, PromoteRequest, Report, Request};
use crate::ha::witness::Witness;
use crate::ha::{Epoch, UnixMillis};
use crate::wal::{Lsn, TimeLineId};

const T0: UnixMillis = UnixMillis(1_700_000_000_000);
const FAILOVER: Duration = DEFAULT_FAILOVER_TIMEOUT;

/// A witness and a clock the test moves.
struct Sim {
    w: Witness,
    now: UnixMillis,
}

impl Sim {
    fn new(policy: Policy) -> Sim {
        Sim {
            w: Witness::new(ClusterState::default(), policy, T0),
            now: T0,
        }
    }

    /// Primary "a" (epoch 1, timeline 1) and standbys "b" and "c", all healthy and streaming.
    fn cluster(policy: Policy) -> Sim {
        let mut s = Sim::new(policy);
        s.primary("a", 0, 0x500_0000);
        s.primary("a", 1, 0x500_0000);
        s.standby("b", 1, 0x500_0000, true);
        s.standby("c", 1, 0x500_0000, true);
        assert_eq!(s.epoch(), Epoch(1));
        s
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now.plus(d);
    }

    fn send(&mut self, request: Request) -> (Epoch, Answer) {
        let out = self.w.decide(self.now, &request);
        if let Some(next) = out.next {
            assert!(next.epoch >= self.w.state().epoch, "the epoch went back");
            self.w.commit(next);
        }
        (out.epoch, out.answer)
    }

    fn report(&mut self, r: Report) -> Answer {
        self.send(Request::Report(r)).1
    }

    fn primary(&mut self, node: &str, epoch: u64, flush: u64) -> Answer {
        let mut r = report(node, Role::Primary, epoch, flush);
        r.sync_acked_lsn = Some(Lsn(flush));
        self.report(r)
    }

    fn standby(&mut self, node: &str, epoch: u64, flush: u64, sees_primary: bool) -> Answer {
        let mut r = report(node, Role::Standby, epoch, flush);
        r.primary_visible = sees_primary;
        self.report(r)
    }

    fn promote(&mut self, node: &str, epoch: u64) -> Result<Epoch, Refusal> {
        self.promote_with(node, epoch, false)
    }

    fn promote_with(&mut self, node: &str, epoch: u64, loss: bool) -> Result<Epoch, Refusal> {
        let before = self.w.state().clone();
        match self.send(Request::RequestPromote(PromoteRequest {
            node: node.into(),
            epoch: Epoch(epoch),
            allow_data_loss: loss,
        })) {
            (e, Answer::Granted { node: n }) => {
                assert_eq!(n, node);
                assert_eq!(e, before.epoch.next());
                Ok(e)
            }
            (e, Answer::Refused { reason, message }) => {
                assert_eq!(e, before.epoch);
                assert_eq!(message, reason.to_string());
                assert_eq!(self.w.state(), &before, "a refusal changed the state");
                Err(reason)
            }
            other => panic!("{other:?}"),
        }
    }

    fn epoch(&self) -> Epoch {
        self.w.state().epoch
    }
}

fn report(node: &str, role: Role, epoch: u64, flush: u64) -> Report {
    Report {
        node: node.into(),
        role,
        timeline: TimeLineId(1),
        epoch: Epoch(epoch),
        flush_lsn: Lsn(flush),
        replay_lsn: Lsn(flush),
        health: Health::Ok,
        primary_visible: false,
        sync_acked_lsn: None,
        priority: 100,
        synchronous: false,
        down: false,
        address: None,
        shutdown_lsn: None,
        problem: None,
    }
}

fn directive(a: &Answer) -> Directive {
    match a {
        Answer::Reported { directive, .. } => *directive,
        other => panic!("{other:?}"),
    }
}

/// Both standbys lose the primary, which goes silent for the failover timeout.
fn primary_lost(s: &mut Sim) {
    s.advance(FAILOVER);
    s.standby("b", 1, 0x500_0000, false);
    s.standby("c", 1, 0x500_0000, false);
}

#[test]
fn the_first_primary_to_report_bootstraps_epoch_1_and_a_second_one_must_rejoin() {
    let mut s = Sim::new(Policy::default());
    assert_eq!(s.epoch(), Epoch(0));
    assert_eq!(
        directive(&s.standby("b", 0, 0x100, false)),
        Directive::Continue
    );
    assert_eq!(s.epoch(), Epoch(0), "a standby does not bootstrap");
    assert_eq!(
        s.promote("b", 0),
        Err(Refusal::NoPrimary),
        "nothing to fail over"
    );
    assert_eq!(directive(&s.primary("a", 0, 0x100)), Directive::Continue);
    assert_eq!(s.epoch(), Epoch(1));
    assert_eq!(s.w.state().primary.as_deref(), Some("a"));
    assert_eq!(directive(&s.primary("x", 0, 0x200)), Directive::Rejoin);
    assert_eq!(directive(&s.primary("x", 1, 0x200)), Directive::Rejoin);
    assert_eq!(s.w.state().primary.as_deref(), Some("a"));
    assert_eq!(s.epoch(), Epoch(1));
    // A standby that has not seen epoch 1 learns it.
    assert_eq!(
        directive(&s.standby("b", 0, 0x100, true)),
        Directive::Follow
    );
    assert_eq!(
        directive(&s.standby("b", 1, 0x100, true)),
        Directive::Continue
    );
}

#[test]
fn no_promote_while_the_primary_reports() {
    let mut s = Sim::cluster(Policy::default());
    // The standbys have lost the primary, but the witness still hears it: a partition
    // between the standbys and the primary, not a dead primary.
    for _ in 0..20 {
        s.advance(Duration::from_secs(1));
        s.primary("a", 1, 0x500_0000);
        s.standby("b", 1, 0x500_0000, false);
        s.standby("c", 1, 0x500_0000, false);
        assert!(matches!(
            s.promote("b", 1),
            Err(Refusal::PrimaryAlive {
                silent_ms: 0,
                timeout_ms: 4000
            })
        ));
    }
}

#[test]
fn a_promote_waits_exactly_the_failover_timeout_of_silence() {
    let mut s = Sim::cluster(Policy::default());
    s.standby("b", 1, 0x500_0000, false);
    s.standby("c", 1, 0x500_0000, false);
    let last_heard = s.now;
    for ms in (0..4000).step_by(250).chain([3999]) {
        s.now = last_heard.plus(Duration::from_millis(ms));
        s.standby("b", 1, 0x500_0000, false);
        s.standby("c", 1, 0x500_0000, false);
        assert!(
            matches!(s.promote("b", 1), Err(Refusal::PrimaryAlive { .. })),
            "granted after {ms} ms"
        );
    }
    s.now = last_heard.plus(FAILOVER);
    s.standby("b", 1, 0x500_0000, false);
    s.standby("c", 1, 0x500_0000, false);
    assert_eq!(s.promote("b", 1), Ok(Epoch(2)));
}

#[test]
fn a_primary_reporting_itself_failed_counts_as_silent() {
    let mut s = Sim::cluster(Policy::default());
    let mut r = report("a", Role::Primary, 1, 0x500_0000);
    r.health = Health::Failed;
    for _ in 0..5 {
        s.advance(Duration::from_secs(1));
        assert_eq!(directive(&s.report(r.clone())), Directive::Continue);
        s.standby("b", 1, 0x500_0000, false);
        s.standby("c", 1, 0x500_0000, false);
    }
    assert_eq!(s.promote("b", 1), Ok(Epoch(2)));
}

#[test]
fn a_witness_restart_is_not_primary_silence() {
    let mut s = Sim::cluster(Policy::default());
    // The witness was down for a minute; a new one starts from the saved state.
    let restarted = s.now.plus(Duration::from_secs(60));
    s.w = Witness::new(s.w.state().clone(), Policy::default(), restarted);
    s.now = restarted;
    s.standby("b", 1, 0x500_0000, false);
    s.standby("c", 1, 0x500_0000, false);
    assert!(matches!(
        s.promote("b", 1),
        Err(Refusal::PrimaryAlive { silent_ms: 0, .. })
    ));
    s.advance(FAILOVER);
    s.standby("b", 1, 0x500_0000, false);
    s.standby("c", 1, 0x500_0000, false);
    assert_eq!(s.promote("b", 1), Ok(Epoch(2)));
}

#[test]
fn no_promote_for_a_standby_that_still_sees_the_primary_or_while_another_one_does() {
    let mut s = Sim::cluster(Policy::default());
    s.advance(FAILOVER);
    s.standby("b", 1, 0x500_0000, true);
    s.standby("c", 1, 0x500_0000, false);
    assert_eq!(s.promote("b", 1), Err(Refusal::SeesPrimary));
    // c lost the primary, but b still streams from it: the primary is alive behind a
    // partition, and (reaching a standby) it will not fence.
    assert_eq!(
        s.promote("c", 1),
        Err(Refusal::PrimarySeenBy { node: "b".into() })
    );
    // b's word counts only while b reports.
    s.advance(FAILOVER);
    s.standby("c", 1, 0x500_0000, false);
    assert_eq!(s.promote("c", 1), Ok(Epoch(2)));
}

#[test]
fn the_most_advanced_standby_wins() {
    let mut s = Sim::cluster(Policy::default());
    s.advance(FAILOVER);
    s.standby("b", 1, 0x500_0000, false);
    s.standby("c", 1, 0x4FF_FFFF, false);
    assert_eq!(
        s.promote("c", 1),
        Err(Refusal::NotMostAdvanced {
            best: "b".into(),
            best_flush: Lsn(0x500_0000),
            best_priority: 100,
            flush: Lsn(0x4FF_FFFF),
            priority: 100,
        })
    );
    assert_eq!(s.promote("b", 1), Ok(Epoch(2)));
}

#[test]
fn ties_go_to_the_higher_priority_then_the_smaller_name() {
    for (pb, pc, winner, loser) in [(50, 100, "c", "b"), (100, 50, "b", "c"), (70, 70, "b", "c")] {
        let mut s = Sim::cluster(Policy::default());
        s.advance(FAILOVER);
        for (node, priority) in [("b", pb), ("c", pc)] {
            let mut r = report(node, Role::Standby, 1, 0x500_0000);
            r.priority = priority;
            s.report(r);
        }
        assert!(
            matches!(s.promote(loser, 1), Err(Refusal::NotMostAdvanced { ref best, .. }) if best == winner)
        );
        assert_eq!(s.promote(winner, 1), Ok(Epoch(2)));
    }
    // A higher priority never beats more WAL.
    let mut s = Sim::cluster(Policy::default());
    s.advance(FAILOVER);
    let mut r = report("c", Role::Standby, 1, 0x400_0000);
    r.priority = 1000;
    s.report(r);
    s.standby("b", 1, 0x500_0000, false);
    assert!(matches!(
        s.promote("c", 1),
        Err(Refusal::NotMostAdvanced { .. })
    ));
}

#[test]
fn ineligible_standbys_are_refused_and_do_not_block_the_others() {
    type Spoil = fn(&mut Report);
    let cases: [(Spoil, Ineligible); 4] = [
        (|r| r.health = Health::Failed, Ineligible::Unhealthy),
        (|r| r.priority = 0, Ineligible::NeverPromote),
        (
            |r| r.timeline = TimeLineId(2),
            Ineligible::OtherTimeline {
                node_timeline: TimeLineId(2),
                timeline: TimeLineId(1),
            },
        ),
        (|r| r.role = Role::Primary, Ineligible::NotAStandby),
    ];
    for (spoil, why) in cases {
        let mut s = Sim::cluster(Policy::default());
        s.advance(FAILOVER);
        // c is ahead, but cannot be promoted: b, the best eligible one, is.
        let mut r = report("c", Role::Standby, 1, 0x600_0000);
        spoil(&mut r);
        s.report(r);
        s.standby("b", 1, 0x500_0000, false);
        if why != Ineligible::NotAStandby {
            assert_eq!(s.promote("c", 1), Err(Refusal::Ineligible { why }));
        }
        assert_eq!(s.promote("b", 1), Ok(Epoch(2)));
    }
    // A standby that stopped reporting (dead with the primary) neither wins nor blocks.
    let mut s = Sim::cluster(Policy::default());
    s.standby("c", 1, 0x600_0000, false);
    s.advance(FAILOVER);
    s.standby("b", 1, 0x500_0000, false);
    assert_eq!(s.promote("b", 1), Ok(Epoch(2)));
    // An unknown node must report first.
    assert_eq!(
        s.promote("zz", 2),
        Err(Refusal::UnknownNode { node: "zz".into() })
    );
}

#[test]
fn synchronous_mode_refuses_a_standby_lacking_acknowledged_commits_unless_data_loss_is_allowed() {
    let sync = Policy {
        synchronous: true,
        ..Policy::default()
    };
    let setup = |policy: Policy| {
        let mut s = Sim::cluster(policy);
        let mut r = report("a", Role::Primary, 1, 0x600_0000);
        r.sync_acked_lsn = Some(Lsn(0x580_0000));
        s.report(r);
        // An older primary report must not move the acknowledged position back.
        let mut r = report("a", Role::Primary, 1, 0x600_0000);
        r.sync_acked_lsn = Some(Lsn(0x100_0000));
        s.report(r);
        assert_eq!(s.w.state().sync_acked_lsn, Lsn(0x580_0000));
        s.advance(FAILOVER);
        // The synchronous standby (c) died with the primary; b is the best left.
        s.standby("b", 1, 0x57F_FFFF, false);
        s
    };
    let mut s = setup(sync.clone());
    assert_eq!(
        s.promote("b", 1),
        Err(Refusal::MissingAckedCommits {
            flush: Lsn(0x57F_FFFF),
            acked: Lsn(0x580_0000)
        })
    );
    let status = s.w.status(s.now);
    assert!(!status.candidates[0].eligible);
    assert!(status.candidates[0]
        .note
        .as_deref()
        .unwrap()
        .contains("0/5800000"));
    // The operator's --allow-data-loss on the request.
    assert_eq!(s.promote_with("b", 1, true), Ok(Epoch(2)));
    // The witness's own switch.
    let mut s = setup(Policy {
        allow_data_loss: true,
        ..sync.clone()
    });
    assert_eq!(s.promote("b", 1), Ok(Epoch(2)));
    // Without synchronous mode the rule does not apply.
    let mut s = setup(Policy::default());
    assert_eq!(s.promote("b", 1), Ok(Epoch(2)));
    // A standby holding exactly the acknowledged position is enough.
    let mut s = setup(sync);
    s.standby("b", 1, 0x580_0000, false);
    assert_eq!(s.promote("b", 1), Ok(Epoch(2)));
}

#[test]
fn a_stale_epoch_is_refused_so_two_standbys_asking_at_once_cannot_both_win() {
    let mut s = Sim::cluster(Policy::default());
    primary_lost(&mut s);
    assert_eq!(
        s.promote("b", 0),
        Err(Refusal::StaleEpoch {
            seen: Epoch(0),
            current: Epoch(1)
        })
    );
    assert_eq!(
        s.promote("b", 7),
        Err(Refusal::EpochAhead {
            seen: Epoch(7),
            current: Epoch(1)
        })
    );
    assert_eq!(s.promote("b", 1), Ok(Epoch(2)));
    // The same request again (a retry, or c racing with epoch 1): stale.
    for node in ["b", "c"] {
        assert_eq!(
            s.promote(node, 1),
            Err(Refusal::StaleEpoch {
                seen: Epoch(1),
                current: Epoch(2)
            })
        );
    }
    assert_eq!(s.promote("b", 2), Err(Refusal::AlreadyPrimary));
}

#[test]
fn the_old_primary_returning_with_a_stale_epoch_is_told_to_rejoin_and_changes_nothing() {
    let mut s = Sim::cluster(Policy::default());
    primary_lost(&mut s);
    assert_eq!(s.promote("b", 1), Ok(Epoch(2)));
    let before = s.w.state().clone();
    s.advance(Duration::from_secs(1));
    let mut r = report("a", Role::Primary, 1, 0x900_0000);
    r.sync_acked_lsn = Some(Lsn(0x900_0000));
    let answer = s.report(r);
    assert_eq!(directive(&answer), Directive::Rejoin);
    assert!(!primary_may_take_writes("a", Epoch(1), Epoch(2), &answer));
    match &answer {
        Answer::Reported { primary, .. } => assert_eq!(primary.as_deref(), Some("b")),
        other => panic!("{other:?}"),
    }
    let after = s.w.state();
    assert_eq!(after.primary_heard, before.primary_heard);
    assert_eq!(after.sync_acked_lsn, before.sync_acked_lsn);
    assert_eq!(after.epoch, Epoch(2));
    assert!(s
        .w
        .status(s.now)
        .nodes
        .iter()
        .any(|n| n.name == "a" && n.stale));
    // Even if it somehow learned the new epoch, it is not that epoch's primary.
    assert_eq!(directive(&s.primary("a", 2, 0x900_0000)), Directive::Rejoin);
    // Rejoined as a standby: told to follow the new primary.
    assert_eq!(
        directive(&s.standby("a", 1, 0x500_0000, true)),
        Directive::Follow
    );
}

#[test]
fn a_granted_standby_is_reminded_to_promote_and_its_ack_sets_the_new_timeline() {
    let mut s = Sim::cluster(Policy::default());
    primary_lost(&mut s);
    assert_eq!(s.promote("b", 1), Ok(Epoch(2)));
    // Its answer was lost: it reports as a standby at epoch 1.
    assert_eq!(
        directive(&s.standby("b", 1, 0x500_0000, false)),
        Directive::Promote
    );
    assert_eq!(
        directive(&s.standby("c", 1, 0x500_0000, false)),
        Directive::Follow
    );
    let ack = |node: &str, epoch: u64, tli: u32| {
        Request::AckPromoted(AckPromoted {
            node: node.into(),
            epoch: Epoch(epoch),
            timeline: TimeLineId(tli),
        })
    };
    for (req, want) in [
        (
            ack("c", 2, 2),
            Refusal::NotGranted {
                node: "c".into(),
                epoch: Epoch(2),
            },
        ),
        (
            ack("b", 1, 2),
            Refusal::StaleEpoch {
                seen: Epoch(1),
                current: Epoch(2),
            },
        ),
        (
            ack("b", 2, 1),
            Refusal::TimelineNotAhead {
                timeline: TimeLineId(1),
                current: TimeLineId(1),
            },
        ),
    ] {
        match s.send(req).1 {
            Answer::Refused { reason, .. } => assert_eq!(reason, want),
            other => panic!("{other:?}"),
        }
    }
    let (epoch, answer) = s.send(ack("b", 2, 2));
    assert_eq!(epoch, Epoch(2));
    assert!(matches!(
        answer,
        Answer::Acked {
            timeline: TimeLineId(2),
            ..
        }
    ));
    assert_eq!(s.w.state().timeline, TimeLineId(2));
    assert_eq!(s.w.state().promotion, None);
    // A repeated ack (the first answer lost) is answered the same, and changes nothing.
    let out = s.w.decide(s.now, &ack("b", 2, 2));
    assert!(matches!(out.answer, Answer::Acked { .. }));
    assert_eq!(out.next, None);
    // The new primary reports; it may take writes.
    let mut r = report("b", Role::Primary, 2, 0x500_1000);
    r.timeline = TimeLineId(2);
    let answer = s.report(r);
    assert!(primary_may_take_writes("b", Epoch(2), Epoch(2), &answer));
    assert!(!primary_may_take_writes("b", Epoch(1), Epoch(2), &answer));
    let what: Vec<_> =
        s.w.state()
            .decisions
            .iter()
            .map(|d| (d.epoch.0, d.primary.as_str()))
            .collect();
    assert_eq!(what, [(1, "a"), (2, "b"), (2, "b")]);
}

#[test]
fn a_report_on_the_new_timeline_confirms_a_promote_whose_ack_was_lost() {
    let mut s = Sim::cluster(Policy::default());
    primary_lost(&mut s);
    assert_eq!(s.promote("b", 1), Ok(Epoch(2)));
    let mut r = report("b", Role::Primary, 2, 0x500_1000);
    r.timeline = TimeLineId(2);
    assert_eq!(directive(&s.report(r)), Directive::Continue);
    assert_eq!(s.w.state().timeline, TimeLineId(2));
    assert_eq!(s.w.state().promotion, None);
}

#[test]
fn a_granted_standby_that_never_promotes_is_itself_failed_over() {
    let mut s = Sim::cluster(Policy::default());
    primary_lost(&mut s);
    assert_eq!(s.promote("b", 1), Ok(Epoch(2)));
    // b dies before promoting. c learns epoch 2 and, after a failover timeout, is granted 3.
    s.standby("c", 2, 0x500_0000, false);
    assert!(matches!(
        s.promote("c", 2),
        Err(Refusal::PrimaryAlive { .. })
    ));
    s.advance(FAILOVER);
    s.standby("c", 2, 0x500_0000, false);
    assert_eq!(s.promote("c", 2), Ok(Epoch(3)));
}

#[test]
fn a_report_from_an_epoch_ahead_of_the_witness_is_an_error_and_changes_nothing() {
    let s = Sim::cluster(Policy::default());
    let out = s.w.decide(
        s.now,
        &Request::Report(report("b", Role::Standby, 9, 0x500_0000)),
    );
    assert_eq!(out.next, None);
    assert!(matches!(out.answer, Answer::Error { ref message, .. } if message.contains("epoch 9")));
    let out = s.w.decide(
        s.now,
        &Request::Report(report("bad name", Role::Standby, 1, 1)),
    );
    assert_eq!(out.next, None);
    assert!(matches!(out.answer, Answer::Error { .. }));
}

#[test]
fn the_node_count_is_bounded() {
    let mut s = Sim::new(Policy::default());
    for i in 0..crate::ha::witness::MAX_NODES {
        s.standby(&format!("n{i}"), 0, 1, false);
    }
    let out = s.w.decide(
        s.now,
        &Request::Report(report("one-more", Role::Standby, 0, 1)),
    );
    assert!(matches!(out.answer, Answer::Error { .. }));
    // A known node still reports.
    let out =
        s.w.decide(s.now, &Request::Report(report("n0", Role::Standby, 0, 2)));
    assert!(out.next.is_some());
}

#[test]
fn status_shows_lag_candidates_and_silence() {
    let mut s = Sim::cluster(Policy::default());
    s.standby("b", 1, 0x4FF_0000, true);
    let mut r = report("c", Role::Standby, 1, 0x500_0000);
    r.replay_lsn = Lsn(0x4F0_0000);
    r.priority = 0;
    s.report(r);
    s.advance(Duration::from_millis(1500));
    let v = s.w.status(s.now);
    assert_eq!(
        (v.epoch, v.primary.as_deref(), v.timeline),
        (Epoch(1), Some("a"), TimeLineId(1))
    );
    assert_eq!(v.primary_silent_ms, 1500);
    let lag: Vec<_> = v
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.lag_bytes))
        .collect();
    assert_eq!(
        lag,
        [("a", None), ("b", Some(0x1_0000)), ("c", Some(0x10_0000))]
    );
    assert!(v.nodes.iter().all(|n| n.last_report_ms_ago == 1500));
    let c: Vec<_> = v
        .candidates
        .iter()
        .map(|c| (c.node.as_str(), c.eligible))
        .collect();
    assert_eq!(c, [("b", true), ("c", false)]);
    assert_eq!(
        v.candidates[1].note.as_deref(),
        Some("its priority is 0 (never promote)")
    );
}

#[test]
fn must_fence_only_when_neither_the_witness_nor_a_standby_was_reached_for_the_fence_timeout() {
    let fence = DEFAULT_FENCE_TIMEOUT;
    let now = T0.plus(Duration::from_secs(100));
    let ago = |ms: u64| Some(UnixMillis(now.0 - ms));
    assert!(
        must_fence(now, None, None, fence),
        "never heard from anyone"
    );
    for (witness, standby, want) in [
        (ago(0), ago(0), false),
        (ago(2999), None, false),
        (None, ago(2999), false),
        (ago(3000), None, true),
        (None, ago(3000), true),
        (ago(3000), ago(2999), false),
        (ago(2999), ago(3000), false),
        (ago(3000), ago(3000), true),
        (ago(60_000), ago(5000), true),
    ] {
        assert_eq!(
            must_fence(now, witness, standby, fence),
            want,
            "{witness:?} {standby:?}"
        );
    }
}

#[test]
fn timeouts_are_checked() {
    assert_eq!(Policy::default().validate(), Ok(()));
    assert_eq!(AgentTimeouts::default().validate(FAILOVER), Ok(()));
    let t = |report: u64, fence: u64| AgentTimeouts {
        report_interval: Duration::from_millis(report),
        fence_timeout: Duration::from_millis(fence),
    };
    let failover = Duration::from_millis(5000);
    assert_eq!(t(1000, 4000).validate(failover), Ok(()));
    assert!(matches!(
        t(1000, 4001).validate(failover),
        Err(ConfigError::FenceNotShorter { .. })
    ));
    assert!(matches!(
        t(1000, 5000).validate(failover),
        Err(ConfigError::FenceNotShorter { .. })
    ));
    assert!(matches!(
        t(1000, 6000).validate(failover),
        Err(ConfigError::FenceNotShorter { .. })
    ));
    assert!(matches!(
        t(1501, 3000).validate(failover),
        Err(ConfigError::ReportTooSlow { .. })
    ));
    assert!(matches!(
        t(0, 3000).validate(failover),
        Err(ConfigError::Zero { .. })
    ));
    assert!(matches!(
        t(1000, 3000).validate(Duration::ZERO),
        Err(ConfigError::Zero { .. })
    ));
    let short = Policy {
        failover_timeout: Duration::from_millis(499),
        ..Policy::default()
    };
    assert!(matches!(
        short.validate(),
        Err(ConfigError::FailoverTooShort { .. })
    ));
    for e in [
        t(1000, 5000).validate(failover).unwrap_err(),
        t(1501, 3000).validate(failover).unwrap_err(),
    ] {
        assert!(!e.hint().is_empty());
    }
}

/// The agents as the issue describes them, over a network whose links the test cuts: the
/// primary's agent fences per [`must_fence`]; a standby's agent asks for a promote when it
/// has lost the primary and promotes only on a grant. Time moves in 100 ms steps.
mod sim {
    use super::*;

    pub const NODES: [&str; 3] = ["a", "b", "c"];
    pub const STEP: Duration = Duration::from_millis(100);

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub enum Pg {
        /// Takes writes.
        Primary,
        /// Stopped by its agent: takes no writes.
        Fenced,
        Standby,
        /// Crashed (or its host is down): takes no writes, reports nothing.
        Down,
    }

    pub struct Node {
        pub pg: Pg,
        pub epoch: Epoch,
        pub flush: u64,
        pub last_witness: Option<UnixMillis>,
        pub last_standby: Option<UnixMillis>,
    }

    pub struct World {
        pub s: Sim,
        pub nodes: Vec<Node>,
        /// `cut[i][j]`: node i cannot reach node j (3 = the witness).
        pub cut: [[bool; 4]; 4],
        pub timeouts: AgentTimeouts,
    }

    impl World {
        pub fn new() -> World {
            let mut s = Sim::new(Policy::default());
            s.primary("a", 0, 0x100);
            let mut nodes: Vec<Node> = NODES
                .iter()
                .map(|_| Node {
                    pg: Pg::Standby,
                    epoch: Epoch(1),
                    flush: 0x100,
                    last_witness: Some(T0),
                    last_standby: Some(T0),
                })
                .collect();
            nodes[0].pg = Pg::Primary;
            World {
                s,
                nodes,
                cut: [[false; 4]; 4],
                timeouts: AgentTimeouts::default(),
            }
        }

        pub fn reach(&self, i: usize, j: usize) -> bool {
            !self.cut[i][j] && !self.cut[j][i]
        }

        /// One step: writes, replication, then every live agent's report cycle.
        pub fn step(&mut self) {
            self.s.advance(STEP);
            let now = self.s.now;
            for i in 0..NODES.len() {
                if self.nodes[i].pg == Pg::Primary {
                    self.nodes[i].flush += 0x10;
                }
            }
            for i in 0..NODES.len() {
                if self.nodes[i].pg != Pg::Standby {
                    continue;
                }
                if let Some(p) = self.upstream(i) {
                    self.nodes[i].flush = self.nodes[p].flush;
                    self.nodes[p].last_standby = Some(now);
                }
            }
            for i in 0..NODES.len() {
                self.agent(i, now);
            }
        }

        /// The primary a standby streams from: a reachable node whose PostgreSQL is primary.
        fn upstream(&self, i: usize) -> Option<usize> {
            (0..NODES.len())
                .find(|&p| p != i && self.nodes[p].pg == Pg::Primary && self.reach(i, p))
        }

        fn agent(&mut self, i: usize, now: UnixMillis) {
            let pg = self.nodes[i].pg;
            if pg == Pg::Down {
                return;
            }
            let witness = self.reach(i, 3);
            if pg == Pg::Primary || pg == Pg::Fenced {
                if witness {
                    let mut r = report(
                        NODES[i],
                        Role::Primary,
                        self.nodes[i].epoch.0,
                        self.nodes[i].flush,
                    );
                    if pg == Pg::Fenced {
                        r.health = Health::Failed;
                    }
                    let answer = self.s.report(r);
                    self.nodes[i].last_witness = Some(now);
                    match directive(&answer) {
                        Directive::Rejoin => self.nodes[i].pg = Pg::Standby,
                        _ if pg == Pg::Fenced
                            && primary_may_take_writes(
                                NODES[i],
                                self.nodes[i].epoch,
                                self.s.epoch(),
                                &answer,
                            ) =>
                        {
                            self.nodes[i].pg = Pg::Primary
                        }
                        _ => {}
                    }
                }
                let n = &self.nodes[i];
                if n.pg == Pg::Primary
                    && must_fence(
                        now,
                        n.last_witness,
                        n.last_standby,
                        self.timeouts.fence_timeout,
                    )
                {
                    self.nodes[i].pg = Pg::Fenced;
                }
                return;
            }
            // A standby.
            if !witness {
                return; // Sees no witness: can neither report nor ask, so never promotes.
            }
            let sees_primary = self.upstream(i).is_some();
            let answer = self.s.standby(
                NODES[i],
                self.nodes[i].epoch.0,
                self.nodes[i].flush,
                sees_primary,
            );
            if let Answer::Reported {
                directive: Directive::Follow | Directive::Promote,
                ..
            } = answer
            {
                self.nodes[i].epoch = self.s.epoch();
            }
            if !sees_primary {
                if let Ok(epoch) = self.s.promote(NODES[i], self.nodes[i].epoch.0) {
                    self.nodes[i].pg = Pg::Primary;
                    self.nodes[i].epoch = epoch;
                    self.nodes[i].last_witness = Some(now);
                    self.nodes[i].last_standby = None;
                }
            }
        }

        pub fn writers(&self) -> Vec<&'static str> {
            (0..NODES.len())
                .filter(|&i| self.nodes[i].pg == Pg::Primary)
                .map(|i| NODES[i])
                .collect()
        }

        pub fn run(&mut self, d: Duration) {
            for _ in 0..(d.as_millis() / STEP.as_millis()) {
                self.step();
                assert!(
                    self.writers().len() <= 1,
                    "two writers: {:?} at {:?}",
                    self.writers(),
                    self.s.now
                );
            }
        }
    }
}

use sim::{Pg, World};

#[test]
fn no_promote_when_the_standbys_see_neither_the_primary_nor_the_witness() {
    let mut w = World::new();
    w.run(Duration::from_secs(2));
    // b and c lose the primary and the witness; the primary keeps the witness.
    for s in [1, 2] {
        w.cut[s][0] = true;
        w.cut[s][3] = true;
    }
    w.run(Duration::from_secs(30));
    assert_eq!(w.writers(), ["a"]);
    assert_eq!(w.s.epoch(), Epoch(1));
}

#[test]
fn no_promote_when_the_witness_is_lost_but_the_primary_is_alive() {
    let mut w = World::new();
    w.run(Duration::from_secs(2));
    for i in 0..3 {
        w.cut[i][3] = true;
    }
    w.run(Duration::from_secs(30));
    // The primary still reaches its standbys: it does not fence, and writes go on.
    assert_eq!(w.writers(), ["a"]);
    assert_eq!(w.s.epoch(), Epoch(1));
}

#[test]
fn a_dead_primary_is_replaced_by_the_most_advanced_standby() {
    let mut w = World::new();
    w.run(Duration::from_secs(2));
    // c lags: it stopped receiving a moment before the primary died.
    w.cut[2][0] = true;
    w.run(Duration::from_millis(500));
    w.nodes[0].pg = Pg::Down;
    w.run(Duration::from_secs(10));
    assert_eq!(w.writers(), ["b"]);
    assert_eq!(w.s.epoch(), Epoch(2));
}

#[test]
fn an_isolated_primary_fences_before_a_standby_is_promoted_and_later_rejoins() {
    let mut w = World::new();
    w.run(Duration::from_secs(2));
    for j in 1..4 {
        w.cut[0][j] = true;
    }
    let cut_at = w.s.now;
    let mut fenced_at = None;
    let mut promoted_at = None;
    for _ in 0..100 {
        w.run(sim::STEP);
        if fenced_at.is_none() && w.nodes[0].pg == Pg::Fenced {
            fenced_at = Some(w.s.now);
        }
        if promoted_at.is_none() && w.s.epoch() == Epoch(2) {
            promoted_at = Some(w.s.now);
        }
    }
    let (fenced_at, promoted_at) = (fenced_at.unwrap(), promoted_at.unwrap());
    assert!(
        fenced_at < promoted_at,
        "fenced {fenced_at:?}, promoted {promoted_at:?}"
    );
    assert!(promoted_at.since(cut_at) <= FAILOVER + Duration::from_millis(200));
    // The partition heals: the old primary is told to rejoin, never to take writes.
    w.cut = [[false; 4]; 4];
    w.run(Duration::from_secs(5));
    assert_eq!(w.writers().len(), 1);
    assert_ne!(w.writers(), ["a"]);
    assert_eq!(w.nodes[0].pg, Pg::Standby);
}

#[test]
fn a_two_second_blip_neither_fences_nor_fails_over() {
    let mut w = World::new();
    w.run(Duration::from_secs(2));
    for j in 1..4 {
        w.cut[0][j] = true;
    }
    w.run(Duration::from_secs(2));
    w.cut = [[false; 4]; 4];
    w.run(Duration::from_secs(10));
    assert_eq!(w.writers(), ["a"]);
    assert_eq!(w.s.epoch(), Epoch(1));
}

/// Seeded random partitions and crashes; the seed is printed, and a failing one replays.
#[test]
fn random_partitions_and_crashes_never_make_two_writers() {
    let base: u64 = std::env::var("WALFERRY_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut failovers = 0;
    for trial in 0..40u64 {
        let seed = base.wrapping_add(trial);
        eprintln!("seed {seed}");
        let mut rng = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut w = World::new();
        for _ in 0..30 {
            match next(6) {
                0 => {
                    let (i, j) = (next(4) as usize, next(4) as usize);
                    w.cut[i][j] = true;
                }
                1 => w.cut = [[false; 4]; 4],
                2 => {
                    let i = next(3) as usize;
                    if w.nodes[i].pg != Pg::Down {
                        w.nodes[i].pg = Pg::Down;
                    }
                }
                3 => {
                    // A crashed node comes back as a standby (as its agent would restart it).
                    let i = next(3) as usize;
                    if w.nodes[i].pg == Pg::Down {
                        w.nodes[i].pg = Pg::Standby;
                    }
                }
                _ => {}
            }
            w.run(Duration::from_millis(100 * (1 + next(40))));
        }
        // Whatever happened, the epoch moved only forward and one writer at most remains.
        assert!(w.writers().len() <= 1, "seed {seed}");
        failovers += w.s.epoch().0 - 1;
    }
    // The schedule is not so gentle that nothing ever happens.
    assert!(failovers >= 5, "{failovers} failovers in 40 trials");
}

/// The primary's agent reports PostgreSQL down (its postmaster gone, after a crash or a
/// fence): the promote is granted at once; "failed" without "down" (PostgreSQL running but
/// not answering, which may still take writes) still waits out the failover timeout.
#[test]
fn a_primary_reported_down_is_failed_over_without_waiting_but_one_merely_failing_is_not() {
    let mut s = Sim::cluster(Policy::default());
    s.advance(Duration::from_millis(300));
    let mut failing = report("a", Role::Primary, 1, 0x500_0000);
    failing.health = Health::Failed;
    assert_eq!(directive(&s.report(failing.clone())), Directive::Continue);
    s.standby("b", 1, 0x500_0000, false);
    s.standby("c", 1, 0x500_0000, false);
    assert!(matches!(
        s.promote("b", 1),
        Err(Refusal::PrimaryAlive { .. })
    ));
    let mut down = failing.clone();
    down.down = true;
    s.report(down.clone());
    // A down report from an older epoch or a node that is not the primary proves nothing.
    assert!(primary_reported_down(s.w.state(), s.w.policy(), s.now));
    assert_eq!(s.promote("b", 1), Ok(Epoch(2)));
    assert!(
        !primary_reported_down(s.w.state(), s.w.policy(), s.now),
        "the new primary is not the one that was down"
    );

    // A down report older than the failover timeout is stale: the silence rule applies.
    let mut s = Sim::cluster(Policy::default());
    s.report(down);
    s.advance(FAILOVER);
    assert!(!primary_reported_down(s.w.state(), s.w.policy(), s.now));
}

fn operator(s: &mut Sim, request: Request) -> (Epoch, Answer) {
    let before = s.w.state().clone();
    let out = s.send(request);
    if matches!(out.1, Answer::Refused { .. }) {
        assert_eq!(s.w.state(), &before, "a refusal changed the state");
    }
    out
}

fn switchover_to(to: &str) -> Request {
    Request::Switchover(crate::ha::wire::OperatorRequest {
        to: to.into(),
        allow_data_loss: false,
    })
}

/// A planned switchover: the primary is told to demote, reports its shutdown LSN once down,
/// and the target is promoted only once it has received past it; nothing else may promote
/// meanwhile, and the old primary is then told to rejoin.
#[test]
fn a_switchover_promotes_the_target_only_after_it_received_the_old_primarys_last_wal() {
    let mut s = Sim::cluster(Policy::default());
    let (_, answer) = operator(&mut s, switchover_to("c"));
    assert!(matches!(answer, Answer::Accepted { .. }), "{answer:?}");
    assert_eq!(
        operator(&mut s, switchover_to("b")).1,
        Answer::Refused {
            reason: Refusal::SwitchoverInProgress { to: "c".into() },
            message: "a switchover to \"c\" is in progress".into()
        }
    );
    assert_eq!(directive(&s.primary("a", 1, 0x500_0000)), Directive::Demote);
    // Down, with its shutdown checkpoint at 0/5000100.
    let mut down = report("a", Role::Primary, 1, 0x500_0100);
    down.health = Health::Failed;
    down.down = true;
    down.shutdown_lsn = Some(Lsn(0x500_0100));
    assert_eq!(directive(&s.report(down.clone())), Directive::Demote);
    // Automatic promotes stay refused though the primary reports itself down.
    s.standby("b", 1, 0x500_0200, false);
    assert!(matches!(
        s.promote("b", 1),
        Err(Refusal::SwitchoverInProgress { .. })
    ));
    // The target at the checkpoint's start has not received the record yet.
    assert_eq!(
        directive(&s.standby("c", 1, 0x500_0100, false)),
        Directive::Continue
    );
    assert_eq!(s.epoch(), Epoch(1));
    assert_eq!(
        directive(&s.standby("c", 1, 0x500_0128, false)),
        Directive::Promote
    );
    assert_eq!(s.epoch(), Epoch(2));
    assert_eq!(s.w.state().primary.as_deref(), Some("c"));
    assert_eq!(s.w.state().switchover, None);
    assert_eq!(directive(&s.report(down)), Directive::Rejoin);
}

#[test]
fn a_switchover_needs_a_healthy_primary_and_an_eligible_target_and_is_abandoned_after_a_minute() {
    let mut s = Sim::cluster(Policy::default());
    let refused = |a: Answer| match a {
        Answer::Refused { reason, .. } => reason,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        refused(operator(&mut s, switchover_to("a")).1),
        Refusal::AlreadyPrimary
    );
    assert_eq!(
        refused(operator(&mut s, switchover_to("zz")).1),
        Refusal::UnknownNode { node: "zz".into() }
    );
    s.advance(FAILOVER);
    s.standby("b", 1, 0x500_0000, true);
    assert_eq!(
        refused(operator(&mut s, switchover_to("b")).1),
        Refusal::PrimaryNotHealthy {
            primary: "a".into()
        },
        "a silent primary cannot stop cleanly"
    );
    s.primary("a", 1, 0x500_0000);
    assert!(matches!(
        operator(&mut s, switchover_to("b")).1,
        Answer::Accepted { .. }
    ));
    s.advance(crate::ha::witness::SWITCHOVER_TIMEOUT);
    assert_eq!(directive(&s.primary("a", 1, 0x500_0000)), Directive::Demote);
    assert_eq!(s.w.state().switchover, None, "abandoned");
    assert_eq!(
        directive(&s.primary("a", 1, 0x500_0000)),
        Directive::Continue
    );
    assert_eq!(s.epoch(), Epoch(1));
}

/// An operator may pick a standby the rules would not (less advanced, or still seeing the
/// primary), but never while the primary is alive, and in synchronous mode never one that
/// lacks acknowledged commits unless data loss is allowed.
#[test]
fn a_forced_failover_overrides_the_choice_of_node_but_not_a_live_primary_or_lost_commits() {
    let policy = Policy {
        synchronous: true,
        ..Policy::default()
    };
    let mut s = Sim::cluster(policy);
    s.primary("a", 1, 0x600_0000);
    let failover = |to: &str, loss: bool| {
        Request::Failover(crate::ha::wire::OperatorRequest {
            to: to.into(),
            allow_data_loss: loss,
        })
    };
    let (_, a) = operator(&mut s, failover("c", false));
    assert!(
        matches!(
            a,
            Answer::Refused {
                reason: Refusal::PrimaryAlive { .. },
                ..
            }
        ),
        "{a:?}"
    );
    s.advance(FAILOVER);
    s.standby("b", 1, 0x600_0000, true);
    s.standby("c", 1, 0x500_0000, true);
    let (_, a) = operator(&mut s, failover("c", false));
    assert!(
        matches!(
            a,
            Answer::Refused {
                reason: Refusal::MissingAckedCommits { .. },
                ..
            }
        ),
        "{a:?}"
    );
    let (epoch, a) = operator(&mut s, failover("c", true));
    assert_eq!(a, Answer::Granted { node: "c".into() });
    assert_eq!(epoch, Epoch(2));
    assert_eq!(
        directive(&s.standby("c", 1, 0x500_0000, false)),
        Directive::Promote
    );
}
