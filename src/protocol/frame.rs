//! Message framing shared by both directions of the protocol: a tagged message is one tag
//! byte, an i32 length that counts itself but not the tag, then the body. This module splits
//! frames out of a read buffer without copying (the body is a frozen slice of the buffer),
//! offers a bounds-checked reader over a body, and a writer that fills the length in after
//! the body is encoded. No I/O here.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes that do not form a valid message: the connection cannot be trusted afterwards.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub String);

impl ProtocolError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        ProtocolError(msg.into())
    }
}

/// Tag byte plus the i32 length.
pub const HEADER_LEN: usize = 5;

/// Largest message body PostgreSQL itself will allocate (`MaxAllocSize`, 1 GB - 1).
pub const MAX_MESSAGE_LEN: usize = 0x3fff_ffff;

/// One tagged message with its header stripped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// Total length (header included) of the frame at the start of `buf`, once its header is
/// there; `Ok(None)` while fewer than 5 bytes are buffered. Lets a reader size its buffer
/// so a whole frame fits before it arrives.
pub fn frame_len(buf: &[u8], max_len: usize) -> Result<Option<usize>, ProtocolError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ProtocolError(format!(
            "invalid length {len} in message of type {}",
            tag_name(buf[0])
        )));
    }
    let body = len as usize - 4;
    if body > max_len {
        return Err(ProtocolError(format!(
            "message of type {} too long: {body} bytes (limit {max_len})",
            tag_name(buf[0])
        )));
    }
    Ok(Some(body + HEADER_LEN))
}

/// Split the first complete frame off `buf`. `Ok(None)` means "need more bytes" and leaves
/// `buf` untouched. The body shares `buf`'s allocation: no copy.
pub fn parse_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, ProtocolError> {
    let Some(total) = frame_len(buf, max_len)? else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    let tag = buf[0];
    let mut frame = buf.split_to(total);
    frame.advance(HEADER_LEN);
    Ok(Some(Frame {
        tag,
        body: frame.freeze(),
    }))
}

/// A printable name for a tag byte in error messages.
pub(crate) fn tag_name(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

/// Bounds-checked reads over a message body. Every read names what it wanted, so a short
/// message gives a useful error instead of a panic.
pub(crate) struct Reader {
    buf: Bytes,
    what: &'static str,
}

impl Reader {
    pub(crate) fn new(buf: Bytes, what: &'static str) -> Self {
        Reader { buf, what }
    }

    fn need(&self, n: usize) -> Result<(), ProtocolError> {
        if self.buf.len() < n {
            Err(ProtocolError(format!(
                "{} message truncated: needed {n} more bytes, {} left",
                self.what,
                self.buf.len()
            )))
        } else {
            Ok(())
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ProtocolError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn i16(&mut self) -> Result<i16, ProtocolError> {
        self.need(2)?;
        Ok(self.buf.get_i16())
    }

    pub(crate) fn i32(&mut self) -> Result<i32, ProtocolError> {
        self.need(4)?;
        Ok(self.buf.get_i32())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    pub(crate) fn u64(&mut self) -> Result<u64, ProtocolError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }

    pub(crate) fn i64(&mut self) -> Result<i64, ProtocolError> {
        self.need(8)?;
        Ok(self.buf.get_i64())
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<Bytes, ProtocolError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }

    /// A NUL-terminated string, without its terminator.
    pub(crate) fn cstr(&mut self) -> Result<Bytes, ProtocolError> {
        match self.buf.iter().position(|&b| b == 0) {
            Some(pos) => {
                let s = self.buf.split_to(pos);
                self.buf.advance(1);
                Ok(s)
            }
            None => Err(ProtocolError(format!(
                "{} message has a string without terminator",
                self.what
            ))),
        }
    }

    /// A NUL-terminated string decoded as UTF-8, invalid sequences replaced: server text
    /// before `client_encoding` applies may be in the server's encoding.
    pub(crate) fn cstring(&mut self) -> Result<String, ProtocolError> {
        Ok(String::from_utf8_lossy(&self.cstr()?).into_owned())
    }

    /// Leftover bytes after the last field mean we misread the message.
    pub(crate) fn finish(self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError(format!(
                "{} message has {} unexpected trailing bytes",
                self.what,
                self.buf.len()
            )))
        }
    }
}

/// Append one tagged message: tag, length placeholder, body from `body`, then the length.
pub(crate) fn write_frame(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    write_length_prefixed(out, body);
}

/// Append an i32 length (counting itself) followed by the body; used for tagged messages and
/// for the untagged startup packet.
pub(crate) fn write_length_prefixed(out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_i32(0);
    body(out);
    let len = out.len() - start;
    // A message longer than i32::MAX cannot be framed at all; encoders are only ever given
    // bounded inputs (SQL text, at most one WAL chunk), so this is an invariant, not input.
    let len = i32::try_from(len).expect("protocol message longer than i32::MAX");
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Append a NUL-terminated string; a NUL inside it would end the string early on the other
/// side and desynchronise the message, so it is refused.
pub(crate) fn put_cstr(out: &mut BytesMut, s: &[u8]) -> Result<(), ProtocolError> {
    if s.contains(&0) {
        return Err(ProtocolError::new("string contains a NUL byte"));
    }
    out.put_slice(s);
    out.put_u8(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_frames_and_waits_for_more() {
        let mut buf = BytesMut::from(&b"Z\0\0\0\x05Id\0\0\0\x07ab"[..]);
        let f = parse_frame(&mut buf, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(f.tag, b'Z');
        assert_eq!(&f.body[..], b"I");
        // Partial second frame: nothing consumed.
        assert_eq!(parse_frame(&mut buf, MAX_MESSAGE_LEN).unwrap(), None);
        assert_eq!(buf.len(), 7);
        buf.extend_from_slice(b"cZ");
        let f = parse_frame(&mut buf, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!((f.tag, &f.body[..]), (b'd', &b"abc"[..]));
        assert_eq!(&buf[..], b"Z");
        assert_eq!(parse_frame(&mut buf, MAX_MESSAGE_LEN).unwrap(), None);
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut buf = BytesMut::from(&b"Z\0\0\0\x03"[..]);
        assert!(parse_frame(&mut buf, MAX_MESSAGE_LEN).is_err());
        let mut buf = BytesMut::from(&b"Z\xff\xff\xff\xff"[..]);
        assert!(parse_frame(&mut buf, MAX_MESSAGE_LEN).is_err());
        let mut buf = BytesMut::from(&b"d\0\0\0\x0e"[..]);
        assert!(parse_frame(&mut buf, 9).is_err());
        assert_eq!(frame_len(b"d\0\0\0\x0d", 9).unwrap(), Some(14));
    }

    #[test]
    fn frame_body_shares_the_read_buffer() {
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(b"d\0\0\0\x08wxyz");
        let base = buf.as_ptr() as usize;
        let f = parse_frame(&mut buf, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(f.body.as_ptr() as usize, base + HEADER_LEN);
    }

    #[test]
    fn writer_fills_length() {
        let mut out = BytesMut::new();
        write_frame(&mut out, b'Q', |b| put_cstr(b, b"SELECT 1").unwrap());
        assert_eq!(&out[..], b"Q\0\0\0\x0dSELECT 1\0");
        assert!(put_cstr(&mut out, b"a\0b").is_err());
    }

    #[test]
    fn reader_reports_truncation_and_leftovers() {
        let mut r = Reader::new(Bytes::from_static(b"\0\x01ab\0x"), "test");
        assert_eq!(r.i16().unwrap(), 1);
        assert_eq!(&r.cstr().unwrap()[..], b"ab");
        assert_eq!(r.remaining(), 1);
        assert!(r.i32().is_err());
        assert!(r.finish().is_err());
        let mut r = Reader::new(Bytes::from_static(b"abc"), "test");
        assert!(r.cstr().is_err());
    }
}
