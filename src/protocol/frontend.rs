//! Messages the client sends: encoded by the replication client, decoded by the relay (and
//! by the fake servers in tests). The first packet of a connection is untagged (startup,
//! SSLRequest, CancelRequest: length then a 32-bit code) and has its own parser,
//! [`StartupPacket::parse`]; everything after it is a tagged [`FrontendMessage`]. No I/O.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::frame::{
    parse_frame, put_cstr, tag_name, write_frame, write_length_prefixed, Frame, ProtocolError,
    Reader,
};

/// Protocol 3.0, the only version PostgreSQL 15 speaks.
pub const PROTOCOL_VERSION_3_0: i32 = 3 << 16;
/// `1234.5679`: "please switch to TLS".
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
/// `1234.5680`: "please switch to GSSAPI encryption".
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
/// `1234.5678`: cancel a running query.
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// The postmaster refuses longer startup packets (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;

pub const QUERY_TAG: u8 = b'Q';
pub const PASSWORD_TAG: u8 = b'p';
pub const COPY_DATA_TAG: u8 = b'd';
pub const COPY_DONE_TAG: u8 = b'c';
pub const COPY_FAIL_TAG: u8 = b'f';
pub const TERMINATE_TAG: u8 = b'X';
pub const SYNC_TAG: u8 = b'S';
pub const FLUSH_TAG: u8 = b'H';

/// Append a StartupMessage (protocol 3.0) with the given parameters.
pub fn startup_message(params: &[(&str, &str)], out: &mut BytesMut) -> Result<(), ProtocolError> {
    let mut result = Ok(());
    write_length_prefixed(out, |b| {
        b.put_i32(PROTOCOL_VERSION_3_0);
        for (k, v) in params {
            result = result
                .clone()
                .and_then(|()| put_cstr(b, k.as_bytes()))
                .and_then(|()| put_cstr(b, v.as_bytes()));
        }
        b.put_u8(0);
    });
    result
}

pub fn ssl_request(out: &mut BytesMut) {
    out.put_i32(8);
    out.put_i32(SSL_REQUEST_CODE);
}

pub fn cancel_request(process_id: i32, secret_key: i32, out: &mut BytesMut) {
    out.put_i32(16);
    out.put_i32(CANCEL_REQUEST_CODE);
    out.put_i32(process_id);
    out.put_i32(secret_key);
}

/// PasswordMessage: a cleartext password or an md5 hash (`md5...`).
pub fn password_message(password: &[u8], out: &mut BytesMut) -> Result<(), ProtocolError> {
    let mut result = Ok(());
    write_frame(out, PASSWORD_TAG, |b| result = put_cstr(b, password));
    result
}

pub fn sasl_initial_response(
    mechanism: &str,
    data: &[u8],
    out: &mut BytesMut,
) -> Result<(), ProtocolError> {
    let mut result = Ok(());
    write_frame(out, PASSWORD_TAG, |b| {
        result = put_cstr(b, mechanism.as_bytes());
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
    result
}

pub fn sasl_response(data: &[u8], out: &mut BytesMut) {
    write_frame(out, PASSWORD_TAG, |b| b.put_slice(data));
}

/// A Simple Query.
pub fn query(sql: &str, out: &mut BytesMut) -> Result<(), ProtocolError> {
    let mut result = Ok(());
    write_frame(out, QUERY_TAG, |b| result = put_cstr(b, sql.as_bytes()));
    result
}

/// A CopyData message; the same bytes in both directions.
pub fn copy_data(data: &[u8], out: &mut BytesMut) {
    out.reserve(5 + data.len());
    copy_data_header(data.len(), out);
    out.put_slice(data);
}

/// Only the 5-byte CopyData header for a payload of `len` bytes, so a large payload can be
/// written from its own buffer (vectored write) instead of being copied behind it.
pub fn copy_data_header(len: usize, out: &mut BytesMut) {
    let len = i32::try_from(len + 4).expect("CopyData payload longer than i32::MAX");
    out.put_u8(COPY_DATA_TAG);
    out.put_i32(len);
}

pub fn copy_done(out: &mut BytesMut) {
    write_frame(out, COPY_DONE_TAG, |_| {});
}

pub fn copy_fail(message: &str, out: &mut BytesMut) -> Result<(), ProtocolError> {
    let mut result = Ok(());
    write_frame(out, COPY_FAIL_TAG, |b| {
        result = put_cstr(b, message.as_bytes())
    });
    result
}

pub fn terminate(out: &mut BytesMut) {
    write_frame(out, TERMINATE_TAG, |_| {});
}

/// The first packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    CancelRequest {
        process_id: i32,
        secret_key: i32,
    },
    Startup {
        /// Major version in the high 16 bits, minor in the low 16.
        protocol: i32,
        params: Vec<(String, String)>,
    },
}

impl StartupPacket {
    /// Split the first packet off `buf`; `Ok(None)` means "need more bytes".
    pub fn parse(buf: &mut BytesMut) -> Result<Option<Self>, ProtocolError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let len = usize::try_from(len).unwrap_or(0);
        if !(8..=MAX_STARTUP_PACKET_LEN).contains(&len) {
            return Err(ProtocolError::new("invalid length of startup packet"));
        }
        if buf.len() < len {
            return Ok(None);
        }
        let mut packet = buf.split_to(len);
        packet.advance(4);
        let mut r = Reader::new(packet.freeze(), "startup packet");
        let code = r.i32()?;
        let msg = match code {
            SSL_REQUEST_CODE => StartupPacket::SslRequest,
            GSSENC_REQUEST_CODE => StartupPacket::GssEncRequest,
            CANCEL_REQUEST_CODE => StartupPacket::CancelRequest {
                process_id: r.i32()?,
                secret_key: r.i32()?,
            },
            protocol if protocol >> 16 == 3 => {
                let mut params = Vec::new();
                loop {
                    let name = r.cstring()?;
                    if name.is_empty() {
                        break;
                    }
                    let value = r.cstring()?;
                    params.push((name, value));
                }
                StartupPacket::Startup { protocol, params }
            }
            other => {
                return Err(ProtocolError(format!(
                    "unsupported frontend protocol {}.{}",
                    other >> 16,
                    other & 0xffff
                )))
            }
        };
        r.finish()?;
        Ok(Some(msg))
    }
}

/// A tagged message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    Query(String),
    CopyData(Bytes),
    CopyDone,
    CopyFail(String),
    Terminate,
    Sync,
    Flush,
    /// `'p'`: PasswordMessage, SASLInitialResponse or SASLResponse; which one depends on the
    /// authentication request it answers, so the body is decoded by the caller with
    /// [`parse_password`] / [`parse_sasl_initial_response`] (or used raw for SASLResponse).
    AuthResponse(Bytes),
}

impl FrontendMessage {
    pub fn parse(buf: &mut BytesMut, max_len: usize) -> Result<Option<Self>, ProtocolError> {
        match parse_frame(buf, max_len)? {
            Some(frame) => Self::decode(frame).map(Some),
            None => Ok(None),
        }
    }

    pub fn decode(frame: Frame) -> Result<Self, ProtocolError> {
        let Frame { tag, body } = frame;
        let empty = |m: FrontendMessage| {
            if body.is_empty() {
                Ok(m)
            } else {
                Err(ProtocolError(format!(
                    "message of type {} has an unexpected body",
                    tag_name(tag)
                )))
            }
        };
        match tag {
            COPY_DATA_TAG => Ok(FrontendMessage::CopyData(body)),
            PASSWORD_TAG => Ok(FrontendMessage::AuthResponse(body)),
            QUERY_TAG | COPY_FAIL_TAG => {
                let mut r = Reader::new(body, "query");
                let text = r.cstring()?;
                r.finish()?;
                Ok(if tag == QUERY_TAG {
                    FrontendMessage::Query(text)
                } else {
                    FrontendMessage::CopyFail(text)
                })
            }
            COPY_DONE_TAG => empty(FrontendMessage::CopyDone),
            TERMINATE_TAG => empty(FrontendMessage::Terminate),
            SYNC_TAG => empty(FrontendMessage::Sync),
            FLUSH_TAG => empty(FrontendMessage::Flush),
            other => Err(ProtocolError(format!(
                "unexpected message type {} from client",
                tag_name(other)
            ))),
        }
    }
}

/// The body of a PasswordMessage: the password (or md5 hash) without its terminator.
pub fn parse_password(body: Bytes) -> Result<Bytes, ProtocolError> {
    let mut r = Reader::new(body, "password");
    let pw = r.cstr()?;
    r.finish()?;
    Ok(pw)
}

/// The body of a SASLInitialResponse: mechanism name and the initial client data (`None`
/// when the client sent length -1).
pub fn parse_sasl_initial_response(body: Bytes) -> Result<(String, Option<Bytes>), ProtocolError> {
    let mut r = Reader::new(body, "SASL initial response");
    let mechanism = r.cstring()?;
    let len = r.i32()?;
    let data = match len {
        -1 => None,
        n if n < 0 => {
            return Err(ProtocolError(format!(
                "SASL initial response has length {n}"
            )))
        }
        n => Some(r.bytes(n as usize)?),
    };
    r.finish()?;
    Ok((mechanism, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::MAX_MESSAGE_LEN;

    /// A replication startup packet as walferry (and libpq, modulo parameter order) sends it.
    const RECORDED_STARTUP: &[u8] = b"\0\0\0\x38\0\x03\0\0\
user\0rep\0database\0replication\0replication\0true\0\0";

    #[test]
    fn startup_recorded_bytes() {
        let mut out = BytesMut::new();
        startup_message(
            &[
                ("user", "rep"),
                ("database", "replication"),
                ("replication", "true"),
            ],
            &mut out,
        )
        .unwrap();
        assert_eq!(&out[..], RECORDED_STARTUP);
        let mut buf = BytesMut::from(RECORDED_STARTUP);
        assert_eq!(
            StartupPacket::parse(&mut buf).unwrap(),
            Some(StartupPacket::Startup {
                protocol: PROTOCOL_VERSION_3_0,
                params: vec![
                    ("user".into(), "rep".into()),
                    ("database".into(), "replication".into()),
                    ("replication".into(), "true".into()),
                ]
            })
        );
        assert!(buf.is_empty());
        assert!(startup_message(&[("user", "a\0b")], &mut BytesMut::new()).is_err());
    }

    #[test]
    fn ssl_and_cancel_requests() {
        let mut out = BytesMut::new();
        ssl_request(&mut out);
        assert_eq!(&out[..], b"\0\0\0\x08\x04\xd2\x16\x2f");
        cancel_request(7, -1, &mut out);
        assert_eq!(
            StartupPacket::parse(&mut out).unwrap(),
            Some(StartupPacket::SslRequest)
        );
        assert_eq!(
            StartupPacket::parse(&mut out).unwrap(),
            Some(StartupPacket::CancelRequest {
                process_id: 7,
                secret_key: -1
            })
        );
        let mut gss = BytesMut::from(&b"\0\0\0\x08\x04\xd2\x16\x30"[..]);
        assert_eq!(
            StartupPacket::parse(&mut gss).unwrap(),
            Some(StartupPacket::GssEncRequest)
        );
    }

    #[test]
    fn startup_packet_errors() {
        for bad in [
            &b"\0\0\0\x04"[..],                         // too short
            &b"\x7f\0\0\0"[..],                         // too long
            &b"\0\0\0\x08\0\x02\0\0"[..],               // protocol 2
            &b"\0\0\0\x0a\0\x03\0\0a\0"[..],            // name without value
            &b"\0\0\0\x0c\x04\xd2\x16\x2f\0\0\0\0"[..], // SSLRequest with trailing bytes
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(StartupPacket::parse(&mut buf).is_err(), "{bad:?}");
        }
        let mut partial = BytesMut::from(&RECORDED_STARTUP[..20]);
        assert_eq!(StartupPacket::parse(&mut partial).unwrap(), None);
    }

    #[test]
    fn tagged_messages_recorded_bytes() {
        let mut out = BytesMut::new();
        query("IDENTIFY_SYSTEM", &mut out).unwrap();
        assert_eq!(&out[..], b"Q\0\0\0\x14IDENTIFY_SYSTEM\0");
        out.clear();
        password_message(b"md5abc", &mut out).unwrap();
        assert_eq!(&out[..], b"p\0\0\0\x0bmd5abc\0");
        out.clear();
        sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=x", &mut out).unwrap();
        assert_eq!(&out[..], b"p\0\0\0\x1fSCRAM-SHA-256\0\0\0\0\x09n,,n=,r=x");
        out.clear();
        copy_data(b"r123", &mut out);
        copy_done(&mut out);
        terminate(&mut out);
        assert_eq!(&out[..], b"d\0\0\0\x08r123c\0\0\0\x04X\0\0\0\x04");
    }

    #[test]
    fn tagged_messages_round_trip() {
        let mut out = BytesMut::new();
        query("SHOW wal_segment_size", &mut out).unwrap();
        copy_data(b"h...", &mut out);
        copy_done(&mut out);
        copy_fail("stop", &mut out).unwrap();
        sasl_response(b"c=biws", &mut out);
        terminate(&mut out);
        let mut got = Vec::new();
        while let Some(m) = FrontendMessage::parse(&mut out, MAX_MESSAGE_LEN).unwrap() {
            got.push(m);
        }
        assert_eq!(
            got,
            vec![
                FrontendMessage::Query("SHOW wal_segment_size".into()),
                FrontendMessage::CopyData(Bytes::from_static(b"h...")),
                FrontendMessage::CopyDone,
                FrontendMessage::CopyFail("stop".into()),
                FrontendMessage::AuthResponse(Bytes::from_static(b"c=biws")),
                FrontendMessage::Terminate,
            ]
        );
    }

    #[test]
    fn auth_response_bodies() {
        let mut out = BytesMut::new();
        sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=x", &mut out).unwrap();
        password_message(b"secret", &mut out).unwrap();
        let Some(FrontendMessage::AuthResponse(b)) =
            FrontendMessage::parse(&mut out, MAX_MESSAGE_LEN).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            parse_sasl_initial_response(b).unwrap(),
            (
                "SCRAM-SHA-256".into(),
                Some(Bytes::from_static(b"n,,n=,r=x"))
            )
        );
        let Some(FrontendMessage::AuthResponse(b)) =
            FrontendMessage::parse(&mut out, MAX_MESSAGE_LEN).unwrap()
        else {
            panic!()
        };
        assert_eq!(&parse_password(b).unwrap()[..], b"secret");
        assert!(parse_password(Bytes::from_static(b"x\0y")).is_err());
        assert!(parse_sasl_initial_response(Bytes::from_static(b"M\0\0\0\0\x05ab")).is_err());
        assert_eq!(
            parse_sasl_initial_response(Bytes::from_static(b"M\0\xff\xff\xff\xff")).unwrap(),
            ("M".into(), None)
        );
    }

    #[test]
    fn frontend_errors() {
        for bad in [
            &b"c\0\0\0\x05x"[..],
            &b"Q\0\0\0\x07a\0b"[..],
            &b"?\0\0\0\x04"[..],
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(
                FrontendMessage::parse(&mut buf, MAX_MESSAGE_LEN).is_err(),
                "{bad:?}"
            );
        }
    }
}
