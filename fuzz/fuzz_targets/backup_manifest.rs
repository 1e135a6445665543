//! A backup_manifest as the server sends it (JSON, paths possibly hex-encoded): the reader
//! accepts or refuses it and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walferry::backup::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let _ = Manifest::parse(data);
});
