//! Server-to-client bytes: the frame splitter and every backend message decoder, including
//! CopyBothResponse ('W'). Whatever decodes must re-encode and decode to the same value.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use walferry::protocol::backend::{BackendMessage, ServerError};
use walferry::protocol::frame::{parse_frame, MAX_MESSAGE_LEN};

fuzz_target!(|data: &[u8]| {
    // As a stream of messages, the way the client reads its socket.
    let mut buf = BytesMut::from(data);
    loop {
        match BackendMessage::parse(&mut buf, MAX_MESSAGE_LEN) {
            Ok(Some(msg)) => {
                let mut out = BytesMut::new();
                if msg.encode(&mut out).is_ok() {
                    let again = BackendMessage::parse(&mut out, MAX_MESSAGE_LEN)
                        .expect("re-encoded message must decode")
                        .expect("re-encoded message must be complete");
                    assert_eq!(again, msg);
                    assert!(out.is_empty());
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    // Framing alone with a small limit, and the error-field decoder on raw bytes.
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = parse_frame(&mut buf, 1 << 16) {
        assert!(frame.body.len() <= 1 << 16);
    }
    let _ = ServerError::decode_fields(bytes::Bytes::copy_from_slice(data));
});
