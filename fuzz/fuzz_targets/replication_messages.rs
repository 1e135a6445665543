//! CopyData payloads of the replication stream, both directions: 'w'/'k' from the
//! walsender, 'r'/'h' from a standby. Decoded messages must round-trip.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use walferry::protocol::replication::{ReplicationMessage, StandbyMessage};

fuzz_target!(|data: &[u8]| {
    let payload = Bytes::copy_from_slice(data);
    if let Ok(msg) = ReplicationMessage::parse(payload.clone()) {
        if let ReplicationMessage::XLogData { data: wal, .. } = &msg {
            // Zero-copy: the WAL bytes are the payload's tail.
            assert_eq!(wal.len() + 25, payload.len());
        }
        let mut out = BytesMut::new();
        msg.encode(&mut out);
        assert_eq!(out.len(), payload.len());
        assert_eq!(ReplicationMessage::parse(out.freeze()).unwrap(), msg);
    }
    if let Ok(msg) = StandbyMessage::parse(data) {
        let mut out = BytesMut::new();
        msg.encode(&mut out);
        assert_eq!(out.len(), data.len());
        assert_eq!(StandbyMessage::parse(&out).unwrap(), msg);
    }
});
