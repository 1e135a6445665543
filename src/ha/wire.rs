//! The witness protocol's bytes, without I/O: line framing, the HMAC seal, and the messages.
//!
//! One message per line: `<MAC> <BODY>\n`, `MAC` the lowercase hex HMAC-SHA256 of a direction
//! tag and the body's exact bytes, `BODY` a JSON object (see the [`super`] module docs). The
//! direction tag keeps an answer from being replayed as a request or the other way round;
//! MAC-ing the bytes as sent (rather than a re-serialized form) leaves nothing to
//! canonicalize. A line whose MAC is `-` is an unauthenticated error from the other side: it
//! may be shown, never trusted.

use bytes::BytesMut;
use ring::hmac;
use serde::{Deserialize, Serialize};

use super::rules::Refusal;
use super::state::{lsn_text, tli_num, Health, Role};
use super::{Epoch, UnixMillis};
use crate::wal::{Lsn, TimeLineId};

/// Longest request line the witness reads; a status answer may be longer.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;
/// Longest answer line a client reads.
pub const MAX_ANSWER_LINE: usize = 4 * 1024 * 1024;

const REQUEST_TAG: &[u8] = b"walferry-witness-request\n";
const ANSWER_TAG: &[u8] = b"walferry-witness-answer\n";

/// Which way a message goes: part of what its MAC covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Request,
    Answer,
}

impl Direction {
    fn tag(self) -> &'static [u8] {
        match self {
            Direction::Request => REQUEST_TAG,
            Direction::Answer => ANSWER_TAG,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message longer than {max} bytes without a newline")]
    TooLong { max: usize },
    #[error("malformed message: expected \"<MAC> <JSON>\"")]
    NoMac,
    #[error("authentication failed: the message's MAC does not match (a different secret?)")]
    BadMac,
    #[error("malformed message body: {0}")]
    Json(String),
    #[error("the other side refused the message: {0}")]
    PeerRefused(String),
}

/// A request as sent: when, a fresh random nonce (replay protection), and what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestBody {
    pub sent_at_ms: UnixMillis,
    pub nonce: String,
    pub request: Request,
}

/// An answer: bound to its request by the nonce, and carrying the witness's epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerBody {
    pub in_reply_to: String,
    pub epoch: Epoch,
    pub answer: Answer,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// A node's agent says how its PostgreSQL is (every report interval).
    Report(Report),
    /// The whole state, for `walferry status`.
    Status,
    /// A standby asks to be promoted; it reports first, so the witness decides on its latest
    /// position.
    RequestPromote(PromoteRequest),
    /// A granted standby has promoted and is on `timeline`.
    AckPromoted(AckPromoted),
    /// An operator asks for a planned switchover to `to` (`walferry switchover`).
    Switchover(OperatorRequest),
    /// An operator forces a failover to `to` (`walferry failover`): the primary must be
    /// lost, but `to` need not be the standby the rules would pick.
    Failover(OperatorRequest),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRequest {
    pub to: String,
    #[serde(default)]
    pub allow_data_loss: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub node: String,
    pub role: Role,
    #[serde(with = "tli_num")]
    pub timeline: TimeLineId,
    /// The epoch the node acts on (0 before it first heard from the witness).
    pub epoch: Epoch,
    #[serde(with = "lsn_text")]
    pub flush_lsn: Lsn,
    #[serde(with = "lsn_text")]
    pub replay_lsn: Lsn,
    pub health: Health,
    /// A standby: whether it reaches the primary.
    #[serde(default)]
    pub primary_visible: bool,
    /// A primary: the highest LSN its synchronous standbys have acknowledged.
    #[serde(
        default,
        with = "opt_lsn_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub sync_acked_lsn: Option<Lsn>,
    #[serde(default = "default_priority")]
    pub priority: u32,
    #[serde(default)]
    pub synchronous: bool,
    /// PostgreSQL is not running (its postmaster is gone, or the agent stopped it): it cannot
    /// take writes, and the agent will not start it as a primary without the witness's
    /// consent. A primary reporting itself down may be failed over at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub down: bool,
    /// How the other nodes reach this node's PostgreSQL (libpq keywords: `host=… port=…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// A primary stopped cleanly (told to demote): the LSN of its shutdown checkpoint, the
    /// last WAL it wrote.
    #[serde(
        default,
        with = "opt_lsn_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub shutdown_lsn: Option<Lsn>,
    /// What the agent is failing to do (a rejoin that failed, and will be retried), for
    /// `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// The priority of a node that does not say: promotable, and neither preferred nor not.
pub const DEFAULT_PRIORITY: u32 = 100;

fn default_priority() -> u32 {
    DEFAULT_PRIORITY
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteRequest {
    pub node: String,
    /// The epoch the standby saw last: a grant is for exactly the next one.
    pub epoch: Epoch,
    /// Waive the synchronous-mode rule (an operator's `--allow-data-loss`).
    #[serde(default)]
    pub allow_data_loss: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckPromoted {
    pub node: String,
    pub epoch: Epoch,
    #[serde(with = "tli_num")]
    pub timeline: TimeLineId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Answer {
    Reported {
        primary: Option<String>,
        #[serde(with = "tli_num")]
        timeline: TimeLineId,
        directive: Directive,
        /// So that an agent can check its fence timeout against it.
        failover_timeout_ms: u64,
        /// The primary's `address`, as its agent last reported it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        primary_address: Option<String>,
    },
    /// Promote now; the answer's epoch is the new one.
    Granted {
        node: String,
    },
    Refused {
        reason: Refusal,
        message: String,
    },
    /// An operator's request is under way.
    Accepted {
        message: String,
    },
    Acked {
        node: String,
        #[serde(with = "tli_num")]
        timeline: TimeLineId,
    },
    Status(Box<StatusView>),
    Error {
        message: String,
        hint: Option<String>,
    },
}

/// What a reporting node must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Directive {
    /// Carry on in the role reported.
    Continue,
    /// You are a primary of a past epoch (or not the epoch's primary): take no writes, and
    /// rejoin as a standby of the answer's primary.
    Rejoin,
    /// A standby behind on the epoch: follow the answer's primary on its timeline.
    Follow,
    /// Your promote was granted (the answer's epoch) and you have not promoted yet: promote,
    /// then send `ack_promoted`.
    Promote,
    /// A planned switchover: stop PostgreSQL cleanly (fast shutdown) and stay down.
    Demote,
}

/// Everything `walferry status` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub epoch: Epoch,
    pub primary: Option<String>,
    #[serde(with = "tli_num")]
    pub timeline: TimeLineId,
    pub promotion_pending: Option<String>,
    #[serde(default)]
    pub switchover_pending: Option<String>,
    #[serde(with = "lsn_text")]
    pub sync_acked_lsn: Lsn,
    pub synchronous: bool,
    pub allow_data_loss: bool,
    pub failover_timeout_ms: u64,
    /// How long the primary has not reported itself healthy (as the rules count it).
    pub primary_silent_ms: u64,
    pub nodes: Vec<NodeView>,
    /// Standbys best first, each with whether it could be promoted now if the primary were
    /// lost (and why not).
    pub candidates: Vec<CandidateView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub role: Role,
    /// Not the epoch's primary, yet reporting itself primary: it has been told to rejoin.
    pub stale: bool,
    #[serde(with = "tli_num")]
    pub timeline: TimeLineId,
    pub epoch: Epoch,
    #[serde(with = "lsn_text")]
    pub flush_lsn: Lsn,
    #[serde(with = "lsn_text")]
    pub replay_lsn: Lsn,
    /// Bytes the node's replay is behind the primary's flush (standbys).
    pub lag_bytes: Option<u64>,
    pub health: Health,
    pub primary_visible: bool,
    pub priority: u32,
    pub synchronous: bool,
    pub last_report_ms_ago: u64,
    #[serde(default)]
    pub down: bool,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub problem: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateView {
    pub node: String,
    #[serde(with = "lsn_text")]
    pub flush_lsn: Lsn,
    pub priority: u32,
    pub eligible: bool,
    /// Why not, when not eligible; or what would still stop it (synchronous mode).
    pub note: Option<String>,
}

/// Take one line (without its `\n`) from the front of `buf`; `Ok(None)`: need more bytes.
pub fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, WireError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i <= max => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            Ok(Some(line))
        }
        Some(_) => Err(WireError::TooLong { max }),
        None if buf.len() > max => Err(WireError::TooLong { max }),
        None => Ok(None),
    }
}

/// `<MAC> <body>\n` for `body`.
pub fn seal(key: &hmac::Key, direction: Direction, body: &[u8]) -> Vec<u8> {
    let mac = mac(key, direction, body);
    let mut out = Vec::with_capacity(body.len() + 66);
    out.extend_from_slice(hex(mac.as_ref()).as_bytes());
    out.push(b' ');
    out.extend_from_slice(body);
    out.push(b'\n');
    out
}

/// The body of a sealed line, once its MAC is checked (in constant time).
pub fn open<'a>(
    key: &hmac::Key,
    direction: Direction,
    line: &'a [u8],
) -> Result<&'a [u8], WireError> {
    let space = line
        .iter()
        .position(|&b| b == b' ')
        .ok_or(WireError::NoMac)?;
    let (mac_hex, body) = (&line[..space], &line[space + 1..]);
    if mac_hex == b"-" {
        #[derive(Deserialize)]
        struct Refused {
            error: String,
        }
        let refused: Refused =
            serde_json::from_slice(body).map_err(|e| WireError::Json(e.to_string()))?;
        return Err(WireError::PeerRefused(refused.error));
    }
    let tag = unhex(mac_hex).ok_or(WireError::NoMac)?;
    // hmac::verify compares in constant time.
    let mut msg = Vec::with_capacity(direction.tag().len() + body.len());
    msg.extend_from_slice(direction.tag());
    msg.extend_from_slice(body);
    hmac::verify(key, &msg, &tag).map_err(|_| WireError::BadMac)?;
    Ok(body)
}

fn mac(key: &hmac::Key, direction: Direction, body: &[u8]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(direction.tag());
    ctx.update(body);
    ctx.sign()
}

/// The line the witness sends for a request it could not authenticate: no MAC, so it
/// proves nothing, and no state in it.
pub fn unauthenticated_error(message: &str) -> Vec<u8> {
    let mut out = b"- ".to_vec();
    out.extend_from_slice(
        serde_json::json!({ "error": message })
            .to_string()
            .as_bytes(),
    );
    out.push(b'\n');
    out
}

pub fn encode_request(key: &hmac::Key, body: &RequestBody) -> Vec<u8> {
    encode(key, Direction::Request, body)
}

pub fn decode_request(key: &hmac::Key, line: &[u8]) -> Result<RequestBody, WireError> {
    decode(key, Direction::Request, line)
}

pub fn encode_answer(key: &hmac::Key, body: &AnswerBody) -> Vec<u8> {
    encode(key, Direction::Answer, body)
}

pub fn decode_answer(key: &hmac::Key, line: &[u8]) -> Result<AnswerBody, WireError> {
    decode(key, Direction::Answer, line)
}

fn encode<T: Serialize>(key: &hmac::Key, direction: Direction, body: &T) -> Vec<u8> {
    // Serializing these types cannot fail: string keys only, no custom errors.
    let json = serde_json::to_vec(body).unwrap_or_default();
    seal(key, direction, &json)
}

fn decode<T: for<'de> Deserialize<'de>>(
    key: &hmac::Key,
    direction: Direction,
    line: &[u8],
) -> Result<T, WireError> {
    let body = open(key, direction, line)?;
    serde_json::from_slice(body).map_err(|e| WireError::Json(e.to_string()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    text.chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

pub(crate) mod opt_lsn_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::wal::Lsn;

    pub fn serialize<S: Serializer>(lsn: &Option<Lsn>, s: S) -> Result<S::Ok, S::Error> {
        match lsn {
            Some(lsn) => s.collect_str(lsn),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Lsn>, D::Error> {
        let text = Option::<std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.map(|t| t.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef0123456789abcdef")
    }

    fn report() -> RequestBody {
        RequestBody {
            sent_at_ms: UnixMillis(1_700_000_000_000),
            nonce: "00112233445566778899aabbccddeeff".into(),
            request: Request::Report(Report {
                node: "a".into(),
                role: Role::Primary,
                timeline: TimeLineId(1),
                epoch: Epoch(1),
                flush_lsn: Lsn(0x0300_0028),
                replay_lsn: Lsn(0x0300_0028),
                health: Health::Ok,
                primary_visible: false,
                sync_acked_lsn: Some(Lsn(0x0300_0000)),
                priority: 100,
                synchronous: false,
                down: false,
                address: None,
                shutdown_lsn: None,
                problem: None,
            }),
        }
    }

    #[test]
    fn a_request_round_trips() {
        let line = encode_request(&key(), &report());
        assert_eq!(line.last(), Some(&b'\n'));
        let back = decode_request(&key(), &line[..line.len() - 1]).unwrap();
        assert_eq!(back, report());
    }

    #[test]
    fn recorded_bytes_of_a_report() {
        let line = encode_request(&key(), &report());
        let text = String::from_utf8(line).unwrap();
        let (mac, body) = text.split_once(' ').unwrap();
        assert_eq!(mac.len(), 64);
        assert_eq!(
            body,
            "{\"sent_at_ms\":1700000000000,\"nonce\":\"00112233445566778899aabbccddeeff\",\
             \"request\":{\"type\":\"report\",\"node\":\"a\",\"role\":\"primary\",\"timeline\":1,\
             \"epoch\":1,\"flush_lsn\":\"0/3000028\",\"replay_lsn\":\"0/3000028\",\
             \"health\":\"ok\",\"primary_visible\":false,\"sync_acked_lsn\":\"0/3000000\",\
             \"priority\":100,\"synchronous\":false}}\n"
        );
        // A hand-written body (as a shell script would send it) with defaults left out.
        let body = br#"{"sent_at_ms":1,"nonce":"n","request":{"type":"request_promote","node":"b","epoch":2}}"#;
        let line = seal(&key(), Direction::Request, body);
        let back = decode_request(&key(), &line[..line.len() - 1]).unwrap();
        assert_eq!(
            back.request,
            Request::RequestPromote(PromoteRequest {
                node: "b".into(),
                epoch: Epoch(2),
                allow_data_loss: false
            })
        );
    }

    #[test]
    fn a_changed_body_a_wrong_key_or_the_wrong_direction_fails_the_mac() {
        let line = encode_request(&key(), &report());
        let line = &line[..line.len() - 1];
        let mut tampered = line.to_vec();
        let at = tampered.len() - 10;
        tampered[at] ^= 1;
        assert_eq!(decode_request(&key(), &tampered), Err(WireError::BadMac));
        let other = hmac::Key::new(hmac::HMAC_SHA256, b"another secret, not the same one");
        assert_eq!(decode_request(&other, line), Err(WireError::BadMac));
        assert_eq!(
            open(&key(), Direction::Answer, line).unwrap_err(),
            WireError::BadMac
        );
        for junk in [&b""[..], b"{}", b"zz {}", b"abc {}"] {
            assert!(decode_request(&key(), junk).is_err());
        }
    }

    #[test]
    fn an_unauthenticated_error_is_shown_but_carries_nothing() {
        let line = unauthenticated_error("authentication failed");
        assert_eq!(
            decode_answer(&key(), &line[..line.len() - 1]),
            Err(WireError::PeerRefused("authentication failed".into()))
        );
    }

    #[test]
    fn lines_are_framed_and_bounded() {
        let mut buf = BytesMut::from(&b"one\ntwo\nthr"[..]);
        assert_eq!(&take_line(&mut buf, 10).unwrap().unwrap()[..], b"one");
        assert_eq!(&take_line(&mut buf, 10).unwrap().unwrap()[..], b"two");
        assert_eq!(take_line(&mut buf, 10).unwrap(), None);
        assert_eq!(&buf[..], b"thr");
        let mut long = BytesMut::from(&[b'x'; 11][..]);
        assert_eq!(
            take_line(&mut long, 10),
            Err(WireError::TooLong { max: 10 })
        );
        let mut long_line = BytesMut::from(&b"xxxxxxxxxxx\n"[..]);
        assert!(take_line(&mut long_line, 10).is_err());
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(unhex(b"00abFF"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(unhex(b"0"), None);
        assert_eq!(unhex(b"zz"), None);
    }
}
