//! Replication lag in time, as PostgreSQL's walsender measures it for `pg_stat_replication`
//! (`write_lag`, `flush_lag`, `replay_lag`): when WAL up to an LSN is sent, the time is
//! noted; when the standby reports having written, flushed or replayed up to an LSN, the
//! lag is the time since the newest sample it has passed. Between samples the time is
//! interpolated, so that a stuck standby shows a growing lag before it passes the next one.
//!
//! Mirrors walsender.c `LagTrackerWrite` / `LagTrackerRead` and the lag part of
//! `ProcessStandbyReplyMessage`, with the same buffer size. Pure logic: times are
//! microseconds on a clock the caller chooses.

use crate::wal::Lsn;

/// walsender.c LAG_TRACKER_BUFFER_SIZE.
const BUFFER_SIZE: usize = 8192;

/// The three positions a standby reports, as walsender's read heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Write = 0,
    Flush = 1,
    Replay = 2,
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    lsn: Lsn,
    /// 0: none (as PostgreSQL's TimestampTz 0 in `last_read`).
    time: i64,
}

/// Lags in microseconds for write, flush and replay; `None` is PostgreSQL's NULL (not
/// known, or cleared once the standby has caught up).
pub type Lags = [Option<i64>; 3];

pub struct LagTracker {
    buffer: Box<[Sample]>,
    write_head: usize,
    read_heads: [usize; 3],
    last_read: [Sample; 3],
    last_lsn: Lsn,
    fully_applied_last_time: bool,
    lags: Lags,
}

impl Default for LagTracker {
    fn default() -> Self {
        LagTracker {
            buffer: vec![Sample::default(); BUFFER_SIZE].into_boxed_slice(),
            write_head: 0,
            read_heads: [0; 3],
            last_read: [Sample::default(); 3],
            last_lsn: Lsn::INVALID,
            fully_applied_last_time: false,
            lags: [None; 3],
        }
    }
}

impl LagTracker {
    /// WAL up to `lsn` was sent at `now` (walsender.c LagTrackerWrite).
    pub fn sent(&mut self, lsn: Lsn, now: i64) {
        // Only a new position is a sample.
        if lsn == self.last_lsn {
            return;
        }
        self.last_lsn = lsn;
        let mut new_head = (self.write_head + 1) % BUFFER_SIZE;
        // As PostgreSQL: when full, overwrite the newest sample (lowering the sample rate)
        // rather than one a reader still needs.
        if self.read_heads.contains(&new_head) {
            new_head = self.write_head;
            self.write_head = self.write_head.checked_sub(1).unwrap_or(BUFFER_SIZE - 1);
        }
        self.buffer[self.write_head] = Sample { lsn, time: now };
        self.write_head = new_head;
    }

    /// The standby reported its positions at `now`; `sent` is the end of what was sent to
    /// it. Returns the lags as pg_stat_replication would show them after this reply
    /// (ProcessStandbyReplyMessage).
    pub fn reply(&mut self, write: Lsn, flush: Lsn, replay: Lsn, sent: Lsn, now: i64) -> Lags {
        let measured = [
            self.read(Stage::Write, write, now),
            self.read(Stage::Flush, flush, now),
            self.read(Stage::Replay, replay, now),
        ];
        // Fully replayed in two replies in a row: the second came from the standby's
        // status interval; forget the lags rather than show stale ones.
        let mut clear = false;
        if replay == sent {
            clear = self.fully_applied_last_time;
            self.fully_applied_last_time = true;
        } else {
            self.fully_applied_last_time = false;
        }
        for (lag, new) in self.lags.iter_mut().zip(measured) {
            if new.is_some() || clear {
                *lag = new;
            }
        }
        self.lags
    }

    /// walsender.c LagTrackerRead: microseconds since the newest sample `lsn` has passed.
    fn read(&mut self, stage: Stage, lsn: Lsn, now: i64) -> Option<i64> {
        let head = stage as usize;
        let mut time = 0;
        while self.read_heads[head] != self.write_head
            && self.buffer[self.read_heads[head]].lsn <= lsn
        {
            let sample = self.buffer[self.read_heads[head]];
            time = sample.time;
            self.last_read[head] = sample;
            self.read_heads[head] = (self.read_heads[head] + 1) % BUFFER_SIZE;
        }
        // Everything sent was processed: a stale sample must not be interpolated from at
        // the start of the next burst.
        let drained = self.read_heads[head] == self.write_head;
        if drained {
            self.last_read[head].time = 0;
        }
        if time > now {
            return None;
        }
        if time == 0 {
            if drained {
                return None;
            }
            let next = self.buffer[self.read_heads[head]];
            let prev = self.last_read[head];
            if prev.time == 0 {
                // Only a future sample: the lag if it were reached now.
                time = next.time;
            } else {
                if lsn < prev.lsn || prev.time > next.time || next.lsn <= prev.lsn {
                    return None;
                }
                let fraction = (lsn.0 - prev.lsn.0) as f64 / (next.lsn.0 - prev.lsn.0) as f64;
                time = prev.time + ((next.time - prev.time) as f64 * fraction) as i64;
            }
        }
        Some(now - time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn lag_is_the_time_since_the_newest_sample_passed() {
        let mut t = LagTracker::default();
        t.sent(Lsn(100), 10 * S);
        t.sent(Lsn(200), 11 * S);
        // Written 200 at 11.5 s, flushed 100, replayed nothing yet: replay reaches no
        // sample, and only a future one is there (100 sent at 10 s).
        let lags = t.reply(Lsn(200), Lsn(100), Lsn(0), Lsn(200), 11 * S + S / 2);
        assert_eq!(lags, [Some(S / 2), Some(S + S / 2), Some(S + S / 2)]);
    }

    #[test]
    fn a_stuck_position_between_samples_is_interpolated() {
        let mut t = LagTracker::default();
        t.sent(Lsn(100), 10 * S);
        t.sent(Lsn(200), 20 * S);
        t.reply(Lsn(100), Lsn(100), Lsn(100), Lsn(200), 10 * S + 1000);
        // Halfway from 100 to 200: WAL there was sent at about 15 s.
        let lags = t.reply(Lsn(150), Lsn(150), Lsn(150), Lsn(200), 30 * S);
        assert_eq!(lags, [Some(15 * S); 3]);
    }

    #[test]
    fn lags_clear_after_two_fully_replayed_replies() {
        let mut t = LagTracker::default();
        t.sent(Lsn(100), 10 * S);
        let first = t.reply(Lsn(100), Lsn(100), Lsn(100), Lsn(100), 10 * S + 300);
        assert_eq!(first, [Some(300); 3]);
        // Nothing new passed: the last lags stay until the second caught-up reply.
        let kept = t.reply(Lsn(100), Lsn(100), Lsn(50), Lsn(100), 12 * S);
        assert_eq!(kept, [Some(300); 3]);
        let once = t.reply(Lsn(100), Lsn(100), Lsn(100), Lsn(100), 13 * S);
        assert_eq!(once, [Some(300); 3]);
        let cleared = t.reply(Lsn(100), Lsn(100), Lsn(100), Lsn(100), 14 * S);
        assert_eq!(cleared, [None; 3]);
    }

    #[test]
    fn a_full_buffer_overwrites_its_newest_sample() {
        let mut t = LagTracker::default();
        for i in 1..=(BUFFER_SIZE as u64 + 10) {
            t.sent(Lsn(i), i as i64);
        }
        // The oldest samples survive; the last slot holds the newest position.
        let lags = t.reply(Lsn(1), Lsn(1), Lsn(1), Lsn(u64::MAX), 1000);
        assert_eq!(lags, [Some(999); 3]);
        let end = BUFFER_SIZE as u64 + 10;
        let lags = t.reply(Lsn(end), Lsn(end), Lsn(end), Lsn(u64::MAX), 100_000);
        assert_eq!(lags, [Some(100_000 - end as i64); 3]);
    }

    #[test]
    fn the_same_position_twice_is_one_sample_and_time_backwards_is_unknown() {
        let mut t = LagTracker::default();
        t.sent(Lsn(100), 10 * S);
        t.sent(Lsn(100), 11 * S);
        assert_eq!(
            t.reply(Lsn(100), Lsn(100), Lsn(0), Lsn(100), 12 * S),
            [Some(2 * S), Some(2 * S), Some(2 * S)]
        );
        let mut t = LagTracker::default();
        t.sent(Lsn(100), 10 * S);
        assert_eq!(
            t.reply(Lsn(100), Lsn(100), Lsn(100), Lsn(100), 9 * S),
            [None; 3]
        );
    }
}
