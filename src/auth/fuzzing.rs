//! The bodies of the fuzz targets `scram_server` and `auth_file` (fuzz/fuzz_targets/), kept
//! here so that a plain unit test runs them too: `cargo +nightly fuzz` is not on every
//! machine, CI included. Each must never panic, whatever the input; the assertions are the
//! properties that must hold.

use std::path::Path;
use std::sync::OnceLock;

use super::file::AuthFile;
use super::scram::{
    FailReason, ScramError, ScramServer, Verifier, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};

/// A real PostgreSQL 15 verifier (user `u`, password `p`), the same as in the unit tests.
const VERIFIER: &str = "SCRAM-SHA-256$4096:cutcscTshUHYsXVmFmZKWQ==$XKWXR9ZYhNyTmOovd3FbILKas4KnHXcgroqqIspxvzE=:9jBuZCm9fyZmcia63hsTqXoofjoA+jk85BT5YkIGxKY=";
const BINDING: [u8; 32] = [0x5A; 32];

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| Verifier::parse(VERIFIER).expect("test verifier parses"))
}

fn check_error(e: &ScramError, known_user: bool) {
    assert!(!e.to_string().is_empty());
    assert!(["08P01", "0A000", "28000", "28P01", "XX000"].contains(&e.sqlstate()));
    if let ScramError::AuthFailed { user, reason } = e {
        assert_eq!(user, "fuzz");
        let want = if known_user {
            FailReason::WrongProof
        } else {
            FailReason::NoVerifier
        };
        assert_eq!(*reason, want);
    }
}

/// `data`: one byte of flags (bit 0: SCRAM-SHA-256-PLUS offered, bit 1: the client picks
/// -PLUS, bit 2: the user has a verifier, bit 3: each `@` of client-final is replaced by
/// the nonce the server sent, so the fuzzer gets past the nonce check), then
/// client-first-message, a 0xFF byte, client-final-message. Returns the error that ended
/// the exchange (it always ends in one: no input knows the password).
pub fn scram_server(data: &[u8]) -> Option<ScramError> {
    let (&flags, rest) = data.split_first()?;
    let offered = flags & 1 != 0;
    let mechanism = if flags & 2 != 0 {
        SCRAM_SHA_256_PLUS
    } else {
        SCRAM_SHA_256
    };
    let known = flags & 4 != 0;
    let patch_nonce = flags & 8 != 0;
    let (first, last) = match rest.iter().position(|&b| b == 0xFF) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };

    let binding = offered.then(|| BINDING.to_vec());
    let mut server = match ScramServer::new("fuzz", known.then(verifier), mechanism, binding) {
        Ok(server) => server,
        Err(e) => {
            assert!(mechanism == SCRAM_SHA_256_PLUS && !offered);
            check_error(&e, known);
            return Some(e);
        }
    };
    match server.client_first(first) {
        Ok(server_first) => {
            assert!(server_first.starts_with(b"r="));
            assert!(server_first.windows(3).any(|w| w == b",i="));
        }
        Err(e) => {
            check_error(&e, known);
            assert!(
                !e.is_auth_failure(),
                "no password check before client-final"
            );
            assert!(
                server.client_final(last).is_err(),
                "a failed exchange stays failed"
            );
            return Some(e);
        }
    }
    let last = match (patch_nonce, server.nonce_for_tests()) {
        (true, Some(nonce)) => {
            let mut out = Vec::with_capacity(last.len() + nonce.len());
            for &b in last {
                if b == b'@' {
                    out.extend_from_slice(&nonce);
                } else {
                    out.push(b);
                }
            }
            out
        }
        _ => last.to_vec(),
    };
    let e = match server.client_final(&last) {
        Ok(_) => panic!("a client-final-message without the password was accepted"),
        Err(e) => e,
    };
    check_error(&e, known);
    assert!(
        matches!(server.client_final(&last), Err(ScramError::Internal(_))),
        "the exchange is over"
    );
    Some(e)
}

/// `data`: the contents of an auth file. What parses must render back to a file that
/// parses to the same entries; errors name the file.
pub fn auth_file(data: &[u8]) {
    let path = Path::new("fuzz.auth");
    match AuthFile::parse(path, data) {
        Ok(file) => {
            let mut rendered = String::new();
            for user in file.users() {
                let v = file.verifier(user).expect("listed user has a verifier");
                assert_eq!(Verifier::parse(&v.encode()).as_ref(), Ok(v));
                rendered.push_str(&format!(
                    "\"{}\"\t{}\n",
                    user.replace('"', "\"\""),
                    v.encode()
                ));
            }
            let again = AuthFile::parse(path, rendered.as_bytes()).expect("rendered file parses");
            assert_eq!(again.users(), file.users());
            for user in file.users() {
                assert_eq!(again.verifier(user), file.verifier(user));
            }
        }
        Err(e) => {
            assert!(e.to_string().starts_with("auth file \"fuzz.auth\""), "{e}");
            let _ = e.hint();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*, so a failing seed can be replayed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Random bytes, or pieces of the grammar glued together (which reach deeper).
    fn input(rng: &mut Rng, pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rng.below(12) {
            match rng.below(4) {
                0 => {
                    for _ in 0..rng.below(8) {
                        out.push(rng.next() as u8);
                    }
                }
                _ => out.extend_from_slice(pieces[rng.below(pieces.len())]),
            }
        }
        out
    }

    fn pick<'a>(rng: &mut Rng, choices: &[&'a [u8]]) -> &'a [u8] {
        choices[rng.below(choices.len())]
    }

    /// An exchange shaped like a real one, each part picked from right and wrong variants,
    /// then perhaps a few bytes changed.
    fn scram_input(rng: &mut Rng) -> Vec<u8> {
        use base64::Engine;
        let good_binding = format!(
            "c={}",
            base64::engine::general_purpose::STANDARD
                .encode([&b"p=tls-server-end-point,,"[..], &BINDING].concat())
        );
        let mut d = vec![rng.next() as u8];
        d.extend_from_slice(pick(
            rng,
            &[
                b"n,,",
                b"y,,",
                b"p=tls-server-end-point,,",
                b"p=tls-unique,,",
                b"n,a=x,",
                b"x,,",
                b"n",
                b"",
            ],
        ));
        d.extend_from_slice(pick(
            rng,
            &[
                b"n=,r=abc",
                b"n=someone,r=abc,x=1",
                b"m=x,n=,r=abc",
                b"n=,r=a\x01c",
                b"n=,r=",
                b"r=abc",
                b"n=,",
                b"n=,r=abc,1=2",
                b"n=,r=abc,",
            ],
        ));
        d.push(0xFF);
        d.extend_from_slice(pick(
            rng,
            &[
                b"c=biws",
                b"c=eSws",
                good_binding.as_bytes(),
                b"c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws",
                b"c=",
                b"x=1",
            ],
        ));
        d.extend_from_slice(pick(rng, &[b",r=@", b",r=@x", b",r=abc", b""]));
        d.extend_from_slice(pick(rng, &[b"", b",x=1", b",1=2"]));
        d.extend_from_slice(pick(
            rng,
            &[
                b",p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                b",p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,x=1",
                b",p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,",
                b",p=####",
                b",p=AAAA",
                b"",
            ],
        ));
        if rng.below(3) == 0 {
            for _ in 0..=rng.below(3) {
                let at = rng.below(d.len());
                match rng.below(3) {
                    0 => d[at] = rng.next() as u8,
                    1 => {
                        d.remove(at);
                    }
                    _ => d.insert(at, rng.next() as u8),
                }
            }
        }
        d
    }

    const SCRAM_PIECES: &[&[u8]] = &[
        b"n,,",
        b"y,,",
        b"p=tls-server-end-point,,",
        b"n=,",
        b"r=abc",
        b"r=@",
        b",",
        b"=",
        b"x=1,",
        b"\xFF",
        b"\xFFc=biws,",
        b"p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        b"\0",
    ];

    const FILE_PIECES: &[&[u8]] = &[
        b"user ",
        b"\"quoted name\" ",
        b"\"a\"\"b\"",
        b"\"",
        b"#",
        b" ",
        b"\t",
        b"\n",
        b"\r\n",
        b"md5",
        b"md50123456789abcdef0123456789abcdef",
        b"SCRAM-SHA-256$",
        b"4096:",
        b"cutcscTshUHYsXVmFmZKWQ==",
        b"$",
        b"XKWXR9ZYhNyTmOovd3FbILKas4KnHXcgroqqIspxvzE=:",
        b"9jBuZCm9fyZmcia63hsTqXoofjoA+jk85BT5YkIGxKY=",
        b"SCRAM-SHA-256$4096:cutcscTshUHYsXVmFmZKWQ==$XKWXR9ZYhNyTmOovd3FbILKas4KnHXcgroqqIspxvzE=:9jBuZCm9fyZmcia63hsTqXoofjoA+jk85BT5YkIGxKY=",
        b"\xC3",
    ];

    #[test]
    fn scram_server_survives_random_input() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut sqlstates = std::collections::BTreeMap::new();
        for i in 0..4000 {
            let data = if i % 4 == 0 {
                let mut data = vec![rng.next() as u8];
                data.extend(input(&mut rng, SCRAM_PIECES));
                data
            } else {
                scram_input(&mut rng)
            };
            let e = scram_server(&data).expect("an exchange without the password fails");
            *sqlstates.entry(e.sqlstate()).or_insert(0) += 1;
        }
        // The generator reaches every kind of failure, the password check included.
        for state in ["08P01", "0A000", "28000", "28P01"] {
            assert!(
                sqlstates.contains_key(state),
                "{state} never reached: {sqlstates:?}"
            );
        }
    }

    #[test]
    fn scram_server_reaches_the_proof_check() {
        // With the nonce patched in, a well-formed final message fails only on the proof.
        for flags in [0x08u8, 0x0C] {
            let mut data = vec![flags];
            data.extend_from_slice(b"n,,n=,r=abc\xFFc=biws,r=@,p=");
            data.extend_from_slice(b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
            let e = scram_server(&data).expect("always an error");
            assert!(e.is_auth_failure(), "{e:?}");
        }
    }

    #[test]
    fn auth_file_survives_random_input() {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        let mut parsed = 0;
        for _ in 0..4000 {
            let data = input(&mut rng, FILE_PIECES);
            if AuthFile::parse(Path::new("x"), &data).is_ok_and(|f| !f.is_empty()) {
                parsed += 1;
            }
            auth_file(&data);
        }
        assert!(parsed > 0, "the generator never made a valid file");
    }
}
