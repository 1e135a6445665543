//! The streaming replication sub-protocol: the payloads of CopyData messages during
//! `START_REPLICATION ... PHYSICAL`. Server to client: `'w'` XLogData and `'k'` primary
//! keepalive ([`ReplicationMessage`]); client to server: `'r'` standby status update and
//! `'h'` hot-standby feedback ([`StandbyMessage`]). Both directions are here because the
//! relay speaks the walsender side. Pure bytes, no I/O; layouts as walsender.c
//! `XLogSendPhysical` / `WalSndKeepalive` and walreceiver.c `XLogWalRcvSendReply` /
//! `XLogWalRcvSendHSFeedback` write them. All integers big-endian.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

pub use super::frame::ProtocolError;
use super::frame::{tag_name, Reader};
use crate::wal::Lsn;

pub const XLOG_DATA_TAG: u8 = b'w';
pub const KEEPALIVE_TAG: u8 = b'k';
pub const STATUS_UPDATE_TAG: u8 = b'r';
pub const HOT_STANDBY_FEEDBACK_TAG: u8 = b'h';

/// Tag + dataStart + walEnd + sendTime: the WAL bytes of a `'w'` start at this offset.
pub const XLOG_DATA_HEADER_LEN: usize = 1 + 8 + 8 + 8;
/// Tag + walEnd + sendTime + replyRequested.
pub const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;
/// Tag + write + flush + apply + sendTime + replyRequested.
pub const STATUS_UPDATE_LEN: usize = 1 + 8 + 8 + 8 + 8 + 1;
/// Tag + sendTime + xmin + xmin epoch + catalog_xmin + catalog_xmin epoch.
pub const HOT_STANDBY_FEEDBACK_LEN: usize = 1 + 8 + 4 + 4 + 4 + 4;

/// A message from the walsender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// WAL bytes starting at `wal_start`; `wal_end` is the server's current end of WAL.
    /// `data` is a slice of the CopyData payload, never a copy.
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        send_time: i64,
        data: Bytes,
    },
    /// Sent when idle and before `wal_sender_timeout`; `reply_requested` asks for an
    /// immediate status update.
    Keepalive {
        wal_end: Lsn,
        send_time: i64,
        reply_requested: bool,
    },
}

impl ReplicationMessage {
    /// Decode one CopyData payload from the walsender.
    pub fn parse(payload: Bytes) -> Result<Self, ProtocolError> {
        let Some(&tag) = payload.first() else {
            return Err(ProtocolError::new("empty replication message"));
        };
        match tag {
            XLOG_DATA_TAG => {
                if payload.len() < XLOG_DATA_HEADER_LEN {
                    return Err(ProtocolError(format!(
                        "XLogData message too short: {} bytes, header alone is {XLOG_DATA_HEADER_LEN}",
                        payload.len()
                    )));
                }
                let data = payload.slice(XLOG_DATA_HEADER_LEN..);
                let h = &payload[1..XLOG_DATA_HEADER_LEN];
                Ok(ReplicationMessage::XLogData {
                    wal_start: Lsn(be_u64(&h[0..8])),
                    wal_end: Lsn(be_u64(&h[8..16])),
                    send_time: be_u64(&h[16..24]) as i64,
                    data,
                })
            }
            KEEPALIVE_TAG => {
                exact_len(&payload, KEEPALIVE_LEN, "keepalive")?;
                let mut r = Reader::new(payload.slice(1..), "keepalive");
                let wal_end = Lsn(r.u64()?);
                let send_time = r.i64()?;
                let reply_requested = r.u8()? != 0;
                Ok(ReplicationMessage::Keepalive {
                    wal_end,
                    send_time,
                    reply_requested,
                })
            }
            other => Err(ProtocolError(format!(
                "unexpected replication message type {}",
                tag_name(other)
            ))),
        }
    }

    /// Encode as a CopyData payload (appended to `out`).
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                send_time,
                data,
            } => encode_xlog_data(*wal_start, *wal_end, *send_time, data, out),
            ReplicationMessage::Keepalive {
                wal_end,
                send_time,
                reply_requested,
            } => encode_keepalive(*wal_end, *send_time, *reply_requested, out),
        }
    }
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_be_bytes(a)
}

fn exact_len(payload: &[u8], want: usize, what: &str) -> Result<(), ProtocolError> {
    if payload.len() != want {
        return Err(ProtocolError(format!(
            "{what} message has {} bytes, expected exactly {want}",
            payload.len()
        )));
    }
    Ok(())
}

/// Append the 25-byte `'w'` header only, so a relay can send the WAL bytes from their own
/// buffer (vectored write) instead of copying them behind the header.
pub fn encode_xlog_data_header(wal_start: Lsn, wal_end: Lsn, send_time: i64, out: &mut BytesMut) {
    out.reserve(XLOG_DATA_HEADER_LEN);
    out.put_u8(XLOG_DATA_TAG);
    out.put_u64(wal_start.0);
    out.put_u64(wal_end.0);
    out.put_i64(send_time);
}

/// Append a whole `'w'` payload: header then `data`.
pub fn encode_xlog_data(
    wal_start: Lsn,
    wal_end: Lsn,
    send_time: i64,
    data: &[u8],
    out: &mut BytesMut,
) {
    out.reserve(XLOG_DATA_HEADER_LEN + data.len());
    encode_xlog_data_header(wal_start, wal_end, send_time, out);
    out.put_slice(data);
}

/// Append a `'k'` keepalive payload.
pub fn encode_keepalive(wal_end: Lsn, send_time: i64, reply_requested: bool, out: &mut BytesMut) {
    out.reserve(KEEPALIVE_LEN);
    out.put_u8(KEEPALIVE_TAG);
    out.put_u64(wal_end.0);
    out.put_i64(send_time);
    out.put_u8(u8::from(reply_requested));
}

/// A standby's report of how far it got (`'r'`). Positions follow the durability stages:
/// `apply <= flush <= write` for a well-behaved standby (`pg_receivewal` sends flush = 0
/// unless it uses a slot or `--synchronous`, and apply = 0 always).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusUpdate {
    pub write: Lsn,
    pub flush: Lsn,
    pub apply: Lsn,
    pub send_time: i64,
    pub reply_requested: bool,
}

/// A hot standby's oldest running xmin (`'h'`), each xid with its epoch; zero means "none".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotStandbyFeedback {
    pub send_time: i64,
    pub xmin: u32,
    pub xmin_epoch: u32,
    pub catalog_xmin: u32,
    pub catalog_xmin_epoch: u32,
}

/// A message from the standby (client) side of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandbyMessage {
    StatusUpdate(StatusUpdate),
    HotStandbyFeedback(HotStandbyFeedback),
}

impl StandbyMessage {
    /// Decode one CopyData payload sent by a standby. Exact lengths are required, as
    /// walsender.c reads fixed fields and anything else means we are out of step.
    pub fn parse(payload: &[u8]) -> Result<Self, ProtocolError> {
        let Some(&tag) = payload.first() else {
            return Err(ProtocolError::new("empty standby message"));
        };
        match tag {
            STATUS_UPDATE_TAG => {
                exact_len(payload, STATUS_UPDATE_LEN, "standby status update")?;
                let mut r = Reader::new(
                    Bytes::copy_from_slice(&payload[1..]),
                    "standby status update",
                );
                Ok(StandbyMessage::StatusUpdate(StatusUpdate {
                    write: Lsn(r.u64()?),
                    flush: Lsn(r.u64()?),
                    apply: Lsn(r.u64()?),
                    send_time: r.i64()?,
                    reply_requested: r.u8()? != 0,
                }))
            }
            HOT_STANDBY_FEEDBACK_TAG => {
                exact_len(payload, HOT_STANDBY_FEEDBACK_LEN, "hot standby feedback")?;
                let mut r = Reader::new(
                    Bytes::copy_from_slice(&payload[1..]),
                    "hot standby feedback",
                );
                Ok(StandbyMessage::HotStandbyFeedback(HotStandbyFeedback {
                    send_time: r.i64()?,
                    xmin: r.u32()?,
                    xmin_epoch: r.u32()?,
                    catalog_xmin: r.u32()?,
                    catalog_xmin_epoch: r.u32()?,
                }))
            }
            other => Err(ProtocolError(format!(
                "unexpected standby message type {}",
                tag_name(other)
            ))),
        }
    }

    /// Encode as a CopyData payload (appended to `out`).
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            StandbyMessage::StatusUpdate(s) => encode_status_update(
                s.write,
                s.flush,
                s.apply,
                s.send_time,
                s.reply_requested,
                out,
            ),
            StandbyMessage::HotStandbyFeedback(h) => encode_hot_standby_feedback(h, out),
        }
    }
}

/// Append an `'r'` standby status update payload (34 bytes) to `out`.
pub fn encode_status_update(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    send_time: i64,
    reply_requested: bool,
    out: &mut BytesMut,
) {
    out.reserve(STATUS_UPDATE_LEN);
    out.put_u8(STATUS_UPDATE_TAG);
    out.put_u64(write.0);
    out.put_u64(flush.0);
    out.put_u64(apply.0);
    out.put_i64(send_time);
    out.put_u8(u8::from(reply_requested));
}

/// Append an `'h'` hot-standby feedback payload (25 bytes) to `out`.
pub fn encode_hot_standby_feedback(h: &HotStandbyFeedback, out: &mut BytesMut) {
    out.reserve(HOT_STANDBY_FEEDBACK_LEN);
    out.put_u8(HOT_STANDBY_FEEDBACK_TAG);
    out.put_i64(h.send_time);
    out.put_u32(h.xmin);
    out.put_u32(h.xmin_epoch);
    out.put_u32(h.catalog_xmin);
    out.put_u32(h.catalog_xmin_epoch);
}

/// Seconds from the Unix epoch to 2000-01-01 00:00:00 UTC (PostgreSQL's epoch).
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's TimestampTz epoch.
pub fn pg_now() -> i64 {
    to_pg_time(SystemTime::now())
}

/// A wall-clock time as a PostgreSQL TimestampTz (microseconds since 2000-01-01 UTC).
pub fn to_pg_time(t: SystemTime) -> i64 {
    let unix_us = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    };
    unix_us.saturating_sub(PG_EPOCH_UNIX_SECS * 1_000_000)
}

/// The wall-clock time of a PostgreSQL TimestampTz.
pub fn from_pg_time(t: i64) -> SystemTime {
    let unix_us = i128::from(t) + i128::from(PG_EPOCH_UNIX_SECS) * 1_000_000;
    let abs = std::time::Duration::from_micros(unix_us.unsigned_abs().min(u64::MAX as u128) as u64);
    if unix_us >= 0 {
        UNIX_EPOCH + abs
    } else {
        UNIX_EPOCH - abs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A 'w' as a PostgreSQL 15 walsender writes it: dataStart 0/3000028, walEnd 0/3000100,
    /// sendTime 0x0002_9A5C_1234_5678, then 4 WAL bytes.
    const RECORDED_XLOG_DATA: &[u8] = &[
        b'w', 0, 0, 0, 0, 0x03, 0x00, 0x00, 0x28, // dataStart
        0, 0, 0, 0, 0x03, 0x00, 0x01, 0x00, // walEnd
        0x00, 0x02, 0x9A, 0x5C, 0x12, 0x34, 0x56, 0x78, // sendTime
        0x10, 0xD1, 0x01, 0x00, // WAL bytes (page magic 0xD110, little-endian)
    ];

    const RECORDED_KEEPALIVE: &[u8] = &[
        b'k', 0, 0, 0, 1, 0x23, 0x45, 0x67, 0x89, // walEnd 1/23456789
        0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE, // sendTime -2
        1,    // replyRequested
    ];

    const RECORDED_STATUS_UPDATE: &[u8] = &[
        b'r', 0, 0, 0, 0, 0x05, 0x00, 0x00, 0x00, // write 0/5000000
        0, 0, 0, 0, 0x04, 0x00, 0x00, 0x00, // flush 0/4000000
        0, 0, 0, 0, 0, 0, 0, 0, // apply 0/0
        0, 0, 0, 0, 0, 0, 0x03, 0xE8, // sendTime 1000
        0,    // replyRequested
    ];

    const RECORDED_HS_FEEDBACK: &[u8] = &[
        b'h', 0, 0, 0, 0, 0, 0, 0, 0x2A, // sendTime 42
        0, 0, 0x02, 0xE4, // xmin 740
        0, 0, 0, 1, // epoch 1
        0, 0, 0, 0, // catalog_xmin 0
        0, 0, 0, 0, // epoch 0
    ];

    #[test]
    fn xlog_data_recorded_bytes() {
        let payload = Bytes::from_static(RECORDED_XLOG_DATA);
        let msg = ReplicationMessage::parse(payload.clone()).unwrap();
        let ReplicationMessage::XLogData {
            wal_start,
            wal_end,
            send_time,
            ref data,
        } = msg
        else {
            panic!("not XLogData: {msg:?}");
        };
        assert_eq!(wal_start, Lsn(0x0300_0028));
        assert_eq!(wal_end, Lsn(0x0300_0100));
        assert_eq!(send_time, 0x0002_9A5C_1234_5678);
        assert_eq!(&data[..], &[0x10, 0xD1, 0x01, 0x00]);
        // Zero-copy: the WAL bytes point into the payload.
        assert_eq!(data.as_ptr(), payload[XLOG_DATA_HEADER_LEN..].as_ptr());

        let mut out = BytesMut::new();
        msg.encode(&mut out);
        assert_eq!(&out[..], RECORDED_XLOG_DATA);
    }

    #[test]
    fn xlog_data_without_wal_bytes_is_valid() {
        let msg = ReplicationMessage::parse(Bytes::copy_from_slice(&RECORDED_XLOG_DATA[..25]));
        assert!(
            matches!(msg, Ok(ReplicationMessage::XLogData { ref data, .. }) if data.is_empty())
        );
        assert!(
            ReplicationMessage::parse(Bytes::copy_from_slice(&RECORDED_XLOG_DATA[..24])).is_err()
        );
    }

    #[test]
    fn keepalive_recorded_bytes() {
        let msg = ReplicationMessage::parse(Bytes::from_static(RECORDED_KEEPALIVE)).unwrap();
        assert_eq!(
            msg,
            ReplicationMessage::Keepalive {
                wal_end: Lsn(0x1_2345_6789),
                send_time: -2,
                reply_requested: true,
            }
        );
        let mut out = BytesMut::new();
        msg.encode(&mut out);
        assert_eq!(&out[..], RECORDED_KEEPALIVE);
    }

    #[test]
    fn keepalive_must_be_exactly_18_bytes() {
        for len in [1, 10, 17] {
            let short = Bytes::copy_from_slice(&RECORDED_KEEPALIVE[..len]);
            assert!(ReplicationMessage::parse(short).is_err(), "len {len}");
        }
        let mut long = RECORDED_KEEPALIVE.to_vec();
        long.push(0);
        assert!(ReplicationMessage::parse(Bytes::from(long)).is_err());
    }

    #[test]
    fn unknown_and_empty_messages_are_errors() {
        assert!(ReplicationMessage::parse(Bytes::new()).is_err());
        let err = ReplicationMessage::parse(Bytes::from_static(b"r\0\0")).unwrap_err();
        assert!(err.0.contains("'r'"), "{err}");
        assert!(StandbyMessage::parse(b"").is_err());
        assert!(StandbyMessage::parse(b"w").is_err());
    }

    #[test]
    fn status_update_recorded_bytes() {
        let mut out = BytesMut::new();
        encode_status_update(
            Lsn(0x500_0000),
            Lsn(0x400_0000),
            Lsn(0),
            1000,
            false,
            &mut out,
        );
        assert_eq!(&out[..], RECORDED_STATUS_UPDATE);
        assert_eq!(out.len(), STATUS_UPDATE_LEN);
        assert_eq!(
            StandbyMessage::parse(&out).unwrap(),
            StandbyMessage::StatusUpdate(StatusUpdate {
                write: Lsn(0x500_0000),
                flush: Lsn(0x400_0000),
                apply: Lsn(0),
                send_time: 1000,
                reply_requested: false,
            })
        );
    }

    #[test]
    fn hot_standby_feedback_recorded_bytes() {
        let h = HotStandbyFeedback {
            send_time: 42,
            xmin: 740,
            xmin_epoch: 1,
            catalog_xmin: 0,
            catalog_xmin_epoch: 0,
        };
        let mut out = BytesMut::new();
        encode_hot_standby_feedback(&h, &mut out);
        assert_eq!(&out[..], RECORDED_HS_FEEDBACK);
        assert_eq!(
            StandbyMessage::parse(RECORDED_HS_FEEDBACK).unwrap(),
            StandbyMessage::HotStandbyFeedback(h)
        );
    }

    #[test]
    fn standby_messages_need_exact_lengths() {
        assert!(StandbyMessage::parse(&RECORDED_STATUS_UPDATE[..33]).is_err());
        let mut long = RECORDED_STATUS_UPDATE.to_vec();
        long.push(1);
        assert!(StandbyMessage::parse(&long).is_err());
        assert!(StandbyMessage::parse(&RECORDED_HS_FEEDBACK[..24]).is_err());
    }

    #[test]
    fn round_trips() {
        let msgs = [
            ReplicationMessage::XLogData {
                wal_start: Lsn(u64::MAX - 7),
                wal_end: Lsn(1),
                send_time: i64::MIN,
                data: Bytes::from(vec![0xAB; 8192]),
            },
            ReplicationMessage::Keepalive {
                wal_end: Lsn(0),
                send_time: i64::MAX,
                reply_requested: false,
            },
        ];
        for m in msgs {
            let mut out = BytesMut::new();
            m.encode(&mut out);
            assert_eq!(ReplicationMessage::parse(out.freeze()).unwrap(), m);
        }
        let standby = [
            StandbyMessage::StatusUpdate(StatusUpdate {
                write: Lsn(3),
                flush: Lsn(2),
                apply: Lsn(1),
                send_time: -1,
                reply_requested: true,
            }),
            StandbyMessage::HotStandbyFeedback(HotStandbyFeedback {
                send_time: 7,
                xmin: u32::MAX,
                xmin_epoch: 2,
                catalog_xmin: 3,
                catalog_xmin_epoch: 4,
            }),
        ];
        for m in standby {
            let mut out = BytesMut::new();
            m.encode(&mut out);
            assert_eq!(StandbyMessage::parse(&out).unwrap(), m);
        }
    }

    #[test]
    fn split_header_encoding_matches_whole() {
        let mut a = BytesMut::new();
        encode_xlog_data(Lsn(1), Lsn(2), 3, b"wal", &mut a);
        let mut b = BytesMut::new();
        encode_xlog_data_header(Lsn(1), Lsn(2), 3, &mut b);
        b.extend_from_slice(b"wal");
        assert_eq!(a, b);
    }

    #[test]
    fn pg_epoch_conversions() {
        let y2k = UNIX_EPOCH + Duration::from_secs(946_684_800);
        assert_eq!(to_pg_time(y2k), 0);
        assert_eq!(to_pg_time(y2k + Duration::from_micros(1)), 1);
        assert_eq!(to_pg_time(UNIX_EPOCH), -946_684_800_000_000);
        assert_eq!(from_pg_time(-946_684_800_000_000), UNIX_EPOCH);
        assert_eq!(
            from_pg_time(123_456_789),
            y2k + Duration::from_micros(123_456_789)
        );
        // 2024-01-01 is 757_382_400 s after 2000-01-01; now is later than that.
        assert!(pg_now() > 757_382_400 * 1_000_000);
    }
}
