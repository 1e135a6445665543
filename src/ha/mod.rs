//! High availability: the witness that arbitrates failover, and the decision rules it and the
//! (future) agent apply.
//!
//! A standby must never promote on its own say-so: a network that fails between it and the
//! primary looks, from the standby, exactly like a dead primary. The witness is the third
//! opinion. Every database node's agent reports to it; it keeps the cluster's authoritative
//! state (who is primary, on which timeline, at which *epoch*) durably in its data directory,
//! and it grants or refuses promotions. It never acts on PostgreSQL itself.
//!
//! The parts:
//! - [`state`]: the cluster state and its durable file (written and fsynced before any answer
//!   that depends on it; the epoch never goes back, across restarts included).
//! - [`rules`]: the decisions as pure functions of the state and the time: grant or refuse a
//!   promote, whether a primary must fence, what a returning node must do, and the timeout
//!   checks. No I/O inside, so tests drive them with a fake clock.
//! - [`witness`]: the witness as a pure state machine: a request and the time in, an answer
//!   and (maybe) a new state out.
//! - [`wire`]: the protocol bytes (framing, HMAC, messages) without I/O.
//! - [`server`] and [`client`]: the TCP service `walferry witness` runs, and the client that
//!   `walferry status` (and the agent) use.
//!
//! - [`agent`]: `walferry agent`, one per database node: watches PostgreSQL, reports, asks
//!   for promotes, promotes, fences, re-points and rejoins.
//!
//! # The rules
//!
//! - The epoch (term) starts at 0 with no primary. The first node that reports itself primary
//!   becomes the primary at epoch 1 (bootstrap). Every promote moves the epoch up by exactly
//!   one; nothing else changes it.
//! - A promote of standby S for epoch E+1 is granted only if: the witness is at epoch E and S
//!   asked at epoch E; S's latest report says it has lost the primary; no other fresh standby
//!   still sees the primary; the primary has not reported itself healthy for the failover
//!   timeout (counted from the witness's own start at the earliest, so a witness restart
//!   never reads as primary silence); S is eligible (a fresh, healthy standby at the current
//!   epoch and timeline, priority > 0) and the most advanced eligible standby (highest flush
//!   LSN, then highest priority, then smallest name); and, in synchronous mode, S's flush LSN
//!   is at least the highest LSN the primary ever reported as synchronously acknowledged,
//!   unless data loss is allowed (witness flag or the request). Otherwise it is refused, with
//!   the reason.
//! - Once granted, S is the primary of epoch E+1 (pending until it acknowledges its new
//!   timeline); the old primary is stale. Any node that reports itself primary at an older
//!   epoch, or that is not the epoch's primary, is told to rejoin as a standby: it must not
//!   take writes. A standby behind on the epoch is told to follow the new primary.
//! - A primary's agent that has reached neither the witness nor any standby for the fence
//!   timeout must fence (stop PostgreSQL). The fence timeout plus one report interval must
//!   not exceed the failover timeout, so the old primary has stopped before any promote.
//!
//! # The protocol
//!
//! TCP, one request and one answer per line (UTF-8, `\n`-terminated, at most 64 KiB for a
//! request), any number of requests per connection, answered in order:
//!
//! ```text
//! <MAC> <BODY>\n
//! ```
//!
//! `MAC` is 64 lowercase hex digits: HMAC-SHA256, keyed by the shared secret, of the
//! direction tag (`walferry-witness-request\n` or `walferry-witness-answer\n`) followed by the
//! exact bytes of `BODY`, a JSON object. A request body is
//! `{"sent_at_ms":…,"nonce":"<32 hex>","request":{"type":…,…}}`; an answer body is
//! `{"in_reply_to":"<nonce>","epoch":N,"answer":{"type":…,…}}`. The witness refuses a
//! request whose MAC is wrong, whose `sent_at_ms` is more than 30 s away from its clock or
//! earlier than its own start, or whose nonce it has already seen; such a request changes
//! nothing and gets the line `- {"error":"…"}` (`-` in place of a MAC: it proves nothing, and
//! the connection is closed). A client trusts an answer only if its MAC is right and
//! `in_reply_to` is its own nonce. See [`wire`] for the message types.

pub mod agent;
pub mod auth;
pub mod client;
pub mod coordinator;
pub mod etcd;
pub mod rules;
pub mod server;
pub mod state;
pub mod wire;
pub mod witness;

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The cluster's term: it moves up by one with every promote the witness grants, and every
/// decision carries it. A node acting on an older epoch is stale.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A wall-clock instant, milliseconds since the Unix epoch: persisted and sent on the wire.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// Time from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: UnixMillis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    pub fn plus(self, d: Duration) -> UnixMillis {
        UnixMillis(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }
}

/// Where the rules and the server get the time: injectable, so tests run on a fake clock.
pub trait Clock: Send + Sync {
    fn now(&self) -> UnixMillis;
}

/// The wall clock read once at start, then advanced by the monotonic clock: a step of the
/// system clock (NTP, an operator) while the witness runs cannot make a primary look silent.
#[derive(Debug, Clone)]
pub struct SystemClock {
    wall_at_start: UnixMillis,
    start: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        SystemClock {
            wall_at_start: wall_clock_now(),
            start: Instant::now(),
        }
    }
}

/// The system's wall clock now (a request's timestamp).
pub fn wall_clock_now() -> UnixMillis {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    UnixMillis(ms)
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        self.wall_at_start.plus(self.start.elapsed())
    }
}

/// A clock the test moves by hand.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    pub fn new(start: UnixMillis) -> Self {
        ManualClock(std::sync::atomic::AtomicU64::new(start.0))
    }

    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}
