//! Query strings a downstream sends the relay: the replication command parser must answer
//! every one with a command or an error, never a panic, and a parsed START_REPLICATION must
//! carry a valid timeline.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walferry::relay::command::{parse, Command};

fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data);
    if let Ok(Command::StartReplication {
        timeline: Some(tli),
        ..
    }) = parse(&query)
    {
        assert!(tli.0 > 0);
    }
});
