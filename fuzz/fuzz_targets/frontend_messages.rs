//! Client-to-server bytes, as the relay will read them: the untagged startup packet, then
//! tagged frontend messages and the bodies of 'p' (password / SASL).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use walferry::protocol::frame::MAX_MESSAGE_LEN;
use walferry::protocol::frontend::{
    parse_password, parse_sasl_initial_response, FrontendMessage, StartupPacket,
};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    if let Ok(Some(StartupPacket::Startup { params, .. })) = StartupPacket::parse(&mut buf) {
        let pairs: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut out = BytesMut::new();
        // Lossy UTF-8 decoding never yields a NUL, so this must encode.
        walferry::protocol::frontend::startup_message(&pairs, &mut out).unwrap();
    }
    loop {
        match FrontendMessage::parse(&mut buf, MAX_MESSAGE_LEN) {
            Ok(Some(FrontendMessage::AuthResponse(body))) => {
                let _ = parse_password(body.clone());
                let _ = parse_sasl_initial_response(body);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
});
