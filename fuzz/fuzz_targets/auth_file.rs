//! The relay's auth file: any bytes must parse or fail with an error naming the file, and
//! what parses must render back to a file with the same entries. The body is
//! `walferry::auth::fuzzing::auth_file`, which a unit test also runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    walferry::auth::fuzzing::auth_file(data);
});
