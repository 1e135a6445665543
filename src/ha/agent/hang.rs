//! When a running primary that does not answer is hung rather than busy, and when to stop it.
//!
//! A frozen primary (SIGSTOP, a stuck kernel, a VM paused) holds no writes anyone can use,
//! and while its agent keeps reporting, the witness waits out the whole failover timeout
//! before anything else may take over. Stopping it turns the silence into "down", on which the
//! witness fails over at once. Stopping a primary that is only busy would be a failover for
//! nothing, so one look that times out is never enough:
//! - a look counts as failed only with a second opinion: the query on the kept connection
//!   timed out AND either the postmaster is stopped by a signal (`/proc/PID/stat` state `T`:
//!   it runs no code at all, so it is not busy) or a fresh connection got no answer in time
//!   either (a loaded server still accepts a new session; a hung one does not);
//! - the server is stopped only after at least two failed looks in a row, the first of them
//!   begun at least the hold (the fence timeout) ago: a stall shorter than that is forgotten
//!   at the first answer, and a stall of the agent itself (frozen together with its server)
//!   is one late look, not two;
//! - a look never runs past the moment the hold ends, so the stop comes at the hold, not up
//!   to a query timeout later.
//!
//! The hold is the fence timeout, which with one report interval stays below the failover
//! timeout: the first failed look began at most a report interval after the last healthy
//! report the witness had, so the old primary is stopped before the witness could grant a
//! promote on its silence alone.

use std::time::{Duration, Instant};

/// Why a look at a running server got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoAnswer {
    /// The postmaster is stopped by a signal (state `T`/`t`).
    Frozen,
    /// Neither the kept connection nor a fresh one answered in time.
    Silent,
}

/// The state between looks: since when the server has failed every look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HangWatch {
    since: Option<Instant>,
    failed_looks: u32,
    last: Option<NoAnswer>,
}

/// Shortest look: a server that has just been resumed answers well within it.
pub const MIN_LOOK: Duration = Duration::from_millis(300);

impl HangWatch {
    /// One look, begun at `started`, ended at `now`: `None` if the server answered (or
    /// showed it is alive). True when it must be stopped now.
    pub fn look(
        &mut self,
        outcome: Option<NoAnswer>,
        started: Instant,
        now: Instant,
        hold: Duration,
    ) -> bool {
        if outcome.is_none() {
            *self = HangWatch::default();
            return false;
        }
        let since = *self.since.get_or_insert(started);
        self.failed_looks += 1;
        self.last = outcome;
        self.failed_looks >= 2 && now.saturating_duration_since(since) >= hold
    }

    /// Whether the server has failed the latest look.
    pub fn suspected(&self) -> bool {
        self.since.is_some()
    }

    /// How long the next look's query (and, if it times out, the fresh connection after it)
    /// may take: `normal`, but once the server is suspected no look runs past the end of the
    /// hold (a server that was silent, not frozen, takes both waits), and no wait is shorter
    /// than [`MIN_LOOK`].
    pub fn next_look(&self, now: Instant, normal: Duration, hold: Duration) -> Duration {
        match self.since {
            Some(since) => {
                let mut left = (since + hold).saturating_duration_since(now);
                if self.last == Some(NoAnswer::Silent) {
                    left /= 2;
                }
                left.clamp(MIN_LOOK.min(normal), normal)
            }
            None => normal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_secs(3);
    const LOOK: Duration = Duration::from_secs(1);

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// Drive looks the way the agent does: each starts 50 ms after the previous one ended
    /// and lasts as long as `next_look` allows when it gets no answer. `stall(t)`: if the
    /// server is stalled at `t`, until when and how it looks. The stop's time, if any, before
    /// `until_ms`.
    fn run(stall: impl Fn(u64) -> Option<(u64, NoAnswer)>, until_ms: u64) -> Option<u64> {
        let t0 = Instant::now();
        let mut watch = HangWatch::default();
        let mut start = 0;
        while start < until_ms {
            let allowed = watch.next_look(at(t0, start), LOOK, HOLD).as_millis() as u64;
            let (outcome, end) = match stall(start) {
                Some((until, how)) => {
                    // A frozen postmaster is seen at once; a silent server also gets a fresh
                    // connection, which must time out too.
                    let span = match how {
                        NoAnswer::Frozen => allowed,
                        NoAnswer::Silent => 2 * allowed,
                    };
                    if until < start + span {
                        // Resumed within the look: answered.
                        (None, until + 5)
                    } else {
                        (Some(how), start + span)
                    }
                }
                None => (None, start + 5),
            };
            if watch.look(outcome, at(t0, start), at(t0, end), HOLD) {
                return Some(end);
            }
            start = end + 50;
        }
        None
    }

    #[test]
    fn a_frozen_primary_is_stopped_when_the_hold_ends_not_a_look_later() {
        // Frozen from 200 ms on: the first look to fail begins at 220 ms (looks every 55 ms).
        let stop = run(
            |t| (t >= 200).then_some((u64::MAX, NoAnswer::Frozen)),
            20_000,
        );
        assert_eq!(stop, Some(220 + 3_000));
    }

    #[test]
    fn a_stall_shorter_than_the_hold_stops_nothing() {
        // 2.9 s stalls, with a moment of answers in between; and one that covers the
        // first look entirely but ends during the third.
        let stall = |t: u64| match t {
            200..=3_100 => Some((3_100, NoAnswer::Silent)),
            3_200..=6_100 => Some((6_100, NoAnswer::Frozen)),
            _ => None,
        };
        assert_eq!(run(stall, 20_000), None);
    }

    #[test]
    fn a_silent_server_is_stopped_at_the_hold_too() {
        let stall = |t: u64| {
            (1_000..=9_000)
                .contains(&t)
                .then_some((9_000, NoAnswer::Silent))
        };
        // First failed look at 1045 (looks every 55 ms while answered): 2 s (the query and
        // the fresh connection), then 0.95 s / 2 twice.
        assert_eq!(run(stall, 20_000), Some(1_045 + 3_000));
    }

    #[test]
    fn one_late_look_is_not_enough_however_long_it_took() {
        // The agent itself was frozen for 5 s during a look: the look ends 5 s after it
        // began, and the next one answers.
        let t0 = Instant::now();
        let mut watch = HangWatch::default();
        assert!(!watch.look(Some(NoAnswer::Frozen), t0, at(t0, 5_000), HOLD));
        assert!(watch.suspected());
        assert!(!watch.look(None, at(t0, 5_050), at(t0, 5_060), HOLD));
        assert!(!watch.suspected());
        // Two failed looks, the first begun 3 s before the end of the second: stop.
        assert!(!watch.look(Some(NoAnswer::Silent), at(t0, 6_000), at(t0, 7_000), HOLD));
        assert!(watch.look(Some(NoAnswer::Silent), at(t0, 7_050), at(t0, 9_000), HOLD));
    }

    #[test]
    fn looks_are_cut_to_the_end_of_the_hold_but_never_below_the_shortest() {
        let t0 = Instant::now();
        let mut watch = HangWatch::default();
        assert_eq!(watch.next_look(t0, LOOK, HOLD), LOOK);
        watch.look(Some(NoAnswer::Frozen), t0, at(t0, 1_000), HOLD);
        assert_eq!(watch.next_look(at(t0, 1_050), LOOK, HOLD), LOOK);
        assert_eq!(
            watch.next_look(at(t0, 2_400), LOOK, HOLD),
            Duration::from_millis(600)
        );
        assert_eq!(watch.next_look(at(t0, 2_900), LOOK, HOLD), MIN_LOOK);
        assert_eq!(watch.next_look(at(t0, 9_000), LOOK, HOLD), MIN_LOOK);
        // Silent: the time left is shared by the query and the fresh connection.
        watch.look(Some(NoAnswer::Silent), at(t0, 1_050), at(t0, 2_050), HOLD);
        assert_eq!(
            watch.next_look(at(t0, 1_800), LOOK, HOLD),
            Duration::from_millis(600)
        );
    }
}
