//! The newest WAL a receiver took, kept in memory for a relay's downstream sessions.
//!
//! A relay serves every downstream standby from the same stream. Reading back what was just
//! written would cost a disk read per downstream (the async writer uses direct I/O, so the
//! page cache does not hold it); instead the receiver copies each checked piece of WAL once
//! into an immutable [`Bytes`] chunk here, and every session sends slices of the same chunks.
//! The tail is bounded: the oldest chunks are dropped once it holds more than its capacity,
//! and a session that fell behind them reads the archive instead.
//!
//! The tail says nothing about durability. WAL enters it when it has been checked, before it
//! is written; sessions send only up to the servable position the receiver publishes
//! ([`super::Position`]: flushed, or written with `--serve-unflushed`), which is never past
//! what the tail holds on that timeline.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;

use crate::wal::{Lsn, TimeLineId};

/// See the module documentation.
#[derive(Debug)]
pub struct LiveTail {
    capacity: usize,
    inner: Mutex<Chunks>,
}

#[derive(Debug)]
struct Chunks {
    tli: TimeLineId,
    /// Contiguous: each chunk starts where the previous one ends.
    chunks: VecDeque<(Lsn, Bytes)>,
    /// Where the next chunk must start.
    end: Lsn,
    len: usize,
}

impl LiveTail {
    /// A tail holding at least the newest `capacity` bytes pushed (and a chunk more).
    pub fn new(capacity: usize) -> Self {
        LiveTail {
            capacity,
            inner: Mutex::new(Chunks {
                tli: TimeLineId(0),
                chunks: VecDeque::new(),
                end: Lsn::INVALID,
                len: 0,
            }),
        }
    }

    /// A new stream begins: WAL of `tli` from `start` follows. What the tail held is dropped
    /// (a reconnect restarts at a segment start, a timeline switch changes what WAL means).
    pub fn restart(&self, tli: TimeLineId, start: Lsn) {
        let mut c = self.lock();
        c.chunks.clear();
        c.len = 0;
        c.tli = tli;
        c.end = start;
    }

    /// The next WAL of the stream (continuing where the last push ended), copied.
    pub fn push(&self, data: &[u8]) {
        if !data.is_empty() {
            self.push_shared(Bytes::copy_from_slice(data));
        }
    }

    /// As [`LiveTail::push`], keeping a reference to `chunk` instead of a copy (WAL that
    /// already lives in an immutable buffer: a whole message from the connection).
    pub fn push_shared(&self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        let data = &chunk[..];
        let mut c = self.lock();
        let start = c.end;
        c.end = Lsn(start.0 + data.len() as u64);
        c.len += data.len();
        c.chunks.push_back((start, chunk));
        // Keep at least `capacity` bytes: drop the oldest chunk only if the rest hold them.
        while c.chunks.len() > 1 && c.len - c.chunks[0].1.len() >= self.capacity {
            let (_, old) = c.chunks.pop_front().expect("more than one chunk");
            c.len -= old.len();
        }
    }

    /// Up to `max` bytes of WAL of `tli` at `lsn`, without copying (a slice of one chunk);
    /// `None` when the tail does not hold that position (older, newer, or another timeline).
    pub fn read(&self, tli: TimeLineId, lsn: Lsn, max: usize) -> Option<Bytes> {
        let c = self.lock();
        if c.tli != tli || lsn >= c.end {
            return None;
        }
        let first = c.chunks.front()?.0;
        if lsn < first {
            return None;
        }
        // The last chunk starting at or before `lsn`.
        let i = c.chunks.partition_point(|(start, _)| *start <= lsn) - 1;
        let (start, chunk) = &c.chunks[i];
        let from = (lsn.0 - start.0) as usize;
        let to = chunk.len().min(from + max);
        Some(chunk.slice(from..to))
    }

    /// The timeline and the range of WAL held (for metrics and tests).
    pub fn range(&self) -> (TimeLineId, Lsn, Lsn) {
        let c = self.lock();
        let first = c.chunks.front().map_or(c.end, |(s, _)| *s);
        (c.tli, first, c.end)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Chunks> {
        // A panic elsewhere while holding the lock leaves the chunks consistent (every
        // update is a few infallible steps), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: TimeLineId = TimeLineId(1);

    #[test]
    fn reads_slices_of_the_chunks_at_any_position() {
        let tail = LiveTail::new(1 << 20);
        tail.restart(T1, Lsn(1000));
        tail.push(&[1; 100]);
        tail.push(&[2; 50]);
        assert_eq!(tail.read(T1, Lsn(1000), 1 << 20).unwrap().len(), 100);
        let b = tail.read(T1, Lsn(1090), 1 << 20).unwrap();
        assert_eq!(&b[..], &[1; 10]);
        let b = tail.read(T1, Lsn(1100), 20).unwrap();
        assert_eq!(&b[..], &[2; 20]);
        assert!(tail.read(T1, Lsn(1150), 10).is_none(), "nothing there yet");
        assert!(tail.read(T1, Lsn(999), 10).is_none(), "before the tail");
        assert!(tail.read(TimeLineId(2), Lsn(1000), 10).is_none());
        assert_eq!(tail.range(), (T1, Lsn(1000), Lsn(1150)));
    }

    #[test]
    fn a_shared_chunk_is_served_without_a_copy() {
        let tail = LiveTail::new(1 << 20);
        tail.restart(T1, Lsn(0));
        let message = Bytes::from(vec![7u8; 300]);
        tail.push_shared(message.slice(100..));
        let b = tail.read(T1, Lsn(50), 1000).unwrap();
        assert_eq!(b.len(), 150);
        assert_eq!(b.as_ptr(), message[150..].as_ptr(), "a copy was made");
    }

    #[test]
    fn drops_the_oldest_chunks_beyond_its_capacity() {
        let tail = LiveTail::new(250);
        tail.restart(T1, Lsn(0));
        for i in 0..5u8 {
            tail.push(&[i; 100]);
        }
        // 500 pushed, the newest 300 kept (whole chunks, at least the capacity).
        assert_eq!(tail.range(), (T1, Lsn(200), Lsn(500)));
        assert!(tail.read(T1, Lsn(150), 10).is_none());
        assert_eq!(&tail.read(T1, Lsn(450), 10).unwrap()[..], &[4; 10]);
    }

    #[test]
    fn a_restart_forgets_the_old_stream() {
        let tail = LiveTail::new(1 << 20);
        tail.restart(T1, Lsn(0));
        tail.push(&[1; 100]);
        tail.restart(TimeLineId(2), Lsn(64));
        assert!(tail.read(T1, Lsn(64), 10).is_none());
        assert!(tail.read(TimeLineId(2), Lsn(64), 10).is_none());
        tail.push(&[2; 10]);
        assert_eq!(
            &tail.read(TimeLineId(2), Lsn(64), 100).unwrap()[..],
            &[2; 10]
        );
    }
}
