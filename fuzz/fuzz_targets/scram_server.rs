//! The server side of SCRAM-SHA-256(-PLUS): arbitrary client-first and client-final
//! messages, with and without channel binding, known and unknown users. Must never panic
//! and never accept an exchange (no input knows the password). The body is
//! `walferry::auth::fuzzing::scram_server`, which a unit test also runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = walferry::auth::fuzzing::scram_server(data);
});
