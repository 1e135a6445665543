use super::*;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

// Verifiers written by a real PostgreSQL 15.18: a throwaway cluster made once on a
// development machine (`initdb` as user postgres in a temp dir, `SET password_encryption =
// 'scram-sha-256'`, `CREATE ROLE u LOGIN PASSWORD 'p'` and so on, then `SELECT rolname,
// rolpassword FROM pg_authid`), then deleted.
/// Password `p`.
const PG_U: &str = "SCRAM-SHA-256$4096:cutcscTshUHYsXVmFmZKWQ==$XKWXR9ZYhNyTmOovd3FbILKas4KnHXcgroqqIspxvzE=:9jBuZCm9fyZmcia63hsTqXoofjoA+jk85BT5YkIGxKY=";
/// Password `E'pass\u00ADword'`: SASLprep maps the soft hyphen to nothing.
const PG_SOFT_HYPHEN: &str = "SCRAM-SHA-256$4096:QTfVzzzH0mFHuH3OUt6CHw==$647kZFtNN72vX/emR1kP7NItWynow5RggaUsBAvV9xg=:gpzzp/b+ruXrHFAdjDTHo0L6jF+cPnIJXyCumpVI3Mw=";
/// Password `E'bell\u0007pw'`: a control character, so the raw bytes are used.
const PG_BELL: &str = "SCRAM-SHA-256$4096:gkOU7zq3MO56d0Luy5MuwQ==$LUWkW4pLgO4KlMiEdTRuNkPUNFAMsle/KYlN2l4+LA4=:RGk503hhCIHqBqq63zbDBoRdEQnDxNKKwFqGAHJf9sI=";
/// Password `E'\u2168'` (ROMAN NUMERAL NINE): NFKC makes it `IX`.
const PG_ROMAN_NINE: &str = "SCRAM-SHA-256$4096:70m/J/M6rJdwJS+UsXk3CQ==$VFOxwanVlDy+8WVQklqeRvsVKgTLNa5Y63LtRZRkNSE=:poyybhUW4/R+/kEhE0IGxOpm0hBXvySaXEQdpWBrdiM=";

fn cert_hash() -> Vec<u8> {
    crate::auth::tls_server_end_point(include_bytes!("testdata/ec-sha256.der")).unwrap()
}

fn pg_u() -> Verifier {
    Verifier::parse(PG_U).unwrap()
}

/// Runs a whole exchange between postgres-protocol's client and our server; the client
/// checks the server signature too.
fn exchange(
    user: &str,
    verifier: Option<&Verifier>,
    password: &str,
    mechanism: &str,
    server_binding: Option<Vec<u8>>,
    client_binding: ChannelBinding,
) -> Result<(), ScramError> {
    let mut server = ScramServer::new(user, verifier, mechanism, server_binding)?;
    let mut client = ScramSha256::new(password.as_bytes(), client_binding);
    let server_first = server.client_first(client.message())?;
    client
        .update(&server_first)
        .expect("client accepts server-first");
    let server_final = server.client_final(client.message())?;
    client
        .finish(&server_final)
        .expect("client accepts the server signature");
    Ok(())
}

fn auth_failed(user: &str, reason: FailReason) -> ScramError {
    ScramError::AuthFailed {
        user: user.into(),
        reason,
    }
}

#[test]
fn postgres_protocol_client_logs_in() {
    let v = Verifier::from_password("secret", b"0123456789abcdef", 4096);
    exchange(
        "u",
        Some(&v),
        "secret",
        SCRAM_SHA_256,
        None,
        ChannelBinding::unrequested(),
    )
    .unwrap();
    exchange(
        "u",
        Some(&v),
        "secret",
        SCRAM_SHA_256,
        None,
        ChannelBinding::unsupported(),
    )
    .unwrap();
    // The real PostgreSQL verifier too.
    exchange(
        "u",
        Some(&pg_u()),
        "p",
        SCRAM_SHA_256,
        None,
        ChannelBinding::unrequested(),
    )
    .unwrap();
}

#[test]
fn wrong_password_fails_with_postgres_message() {
    let err = exchange(
        "u",
        Some(&pg_u()),
        "q",
        SCRAM_SHA_256,
        None,
        ChannelBinding::unrequested(),
    )
    .unwrap_err();
    assert_eq!(err, auth_failed("u", FailReason::WrongProof));
    assert_eq!(
        err.to_string(),
        "password authentication failed for user \"u\""
    );
    assert_eq!(err.sqlstate(), "28P01");
    assert_eq!(err.detail(), None);
    assert!(err.is_auth_failure());
    assert_eq!(
        err.log_detail().unwrap(),
        "Password does not match for user \"u\"."
    );
}

#[test]
fn channel_binding_logs_in_over_tls() {
    let v = pg_u();
    exchange(
        "u",
        Some(&v),
        "p",
        SCRAM_SHA_256_PLUS,
        Some(cert_hash()),
        ChannelBinding::tls_server_end_point(cert_hash()),
    )
    .unwrap();
    // A client that cannot bind at all ("n") may still use SCRAM-SHA-256 over TLS.
    exchange(
        "u",
        Some(&v),
        "p",
        SCRAM_SHA_256,
        Some(cert_hash()),
        ChannelBinding::unsupported(),
    )
    .unwrap();
}

#[test]
fn channel_binding_to_another_certificate_fails() {
    let other = crate::auth::tls_server_end_point(include_bytes!("testdata/ec-sha1.der")).unwrap();
    let err = exchange(
        "u",
        Some(&pg_u()),
        "p",
        SCRAM_SHA_256_PLUS,
        Some(cert_hash()),
        ChannelBinding::tls_server_end_point(other),
    )
    .unwrap_err();
    assert_eq!(err, ScramError::ChannelBindingMismatch);
    assert_eq!(err.sqlstate(), "28000");
    assert_eq!(err.to_string(), "SCRAM channel binding check failed");
}

#[test]
fn downgrade_is_refused() {
    // We offered -PLUS; the client says it can bind but thinks we cannot ("y"): the list
    // was tampered with on the way.
    let err = exchange(
        "u",
        Some(&pg_u()),
        "p",
        SCRAM_SHA_256,
        Some(cert_hash()),
        ChannelBinding::unrequested(),
    )
    .unwrap_err();
    assert_eq!(err.sqlstate(), "08P01");
    assert_eq!(err.to_string(), "SCRAM channel binding negotiation error");
    assert!(err
        .detail()
        .unwrap()
        .contains("this server does support channel binding"));
}

#[test]
fn plus_must_bind_and_only_plus_may_bind() {
    let v = pg_u();
    // -PLUS chosen, but the gs2 header says "n" or "y".
    for header in ["n,,n=,r=abc", "y,,n=,r=abc"] {
        let mut s = ScramServer::new("u", Some(&v), SCRAM_SHA_256_PLUS, Some(cert_hash())).unwrap();
        let err = s.client_first(header.as_bytes()).unwrap_err();
        assert_eq!(err.sqlstate(), "08P01", "{header}: {err:?}");
    }
    let mut s = ScramServer::new("u", Some(&v), SCRAM_SHA_256_PLUS, Some(cert_hash())).unwrap();
    let err = s.client_first(b"n,,n=,r=abc").unwrap_err();
    assert!(err
        .detail()
        .unwrap()
        .contains("does not include channel binding data"));
    // SCRAM-SHA-256 chosen, but the header asks for binding.
    let mut s = ScramServer::new("u", Some(&v), SCRAM_SHA_256, Some(cert_hash())).unwrap();
    let err = s
        .client_first(b"p=tls-server-end-point,,n=,r=abc")
        .unwrap_err();
    assert!(
        err.detail().unwrap().contains("without channel binding"),
        "{err:?}"
    );
    // Another binding type.
    let mut s = ScramServer::new("u", Some(&v), SCRAM_SHA_256_PLUS, Some(cert_hash())).unwrap();
    let err = s.client_first(b"p=tls-unique,,n=,r=abc").unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported SCRAM channel-binding type \"tls-unique\""
    );
    // -PLUS without TLS (not offered), or an unknown mechanism.
    for mechanism in [SCRAM_SHA_256_PLUS, "SCRAM-SHA-1", ""] {
        let err = ScramServer::new("u", Some(&v), mechanism, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "client selected an invalid SASL authentication mechanism"
        );
        assert_eq!(err.sqlstate(), "08P01");
    }
}

#[test]
fn mechanisms_offer_plus_first_only_with_binding() {
    assert_eq!(mechanisms(false), [SCRAM_SHA_256]);
    assert_eq!(mechanisms(true), [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
}

/// server-first split into (nonce, salt, iterations).
fn parse_server_first(msg: &[u8]) -> (String, Vec<u8>, u32) {
    let text = std::str::from_utf8(msg).unwrap();
    let parts: Vec<&str> = text.split(',').collect();
    assert_eq!(parts.len(), 3, "{text}");
    let nonce = parts[0].strip_prefix("r=").unwrap().to_string();
    let salt = STANDARD
        .decode(parts[1].strip_prefix("s=").unwrap())
        .unwrap();
    let iterations = parts[2].strip_prefix("i=").unwrap().parse().unwrap();
    (nonce, salt, iterations)
}

/// A hand-made client-final-message for `password`, with `extra` between the nonce and the
/// proof (for the cases postgres-protocol's client does not make).
fn client_final(
    password: &str,
    client_first_bare: &str,
    server_first: &[u8],
    cbind: &str,
    extra: &str,
) -> Vec<u8> {
    let (nonce, salt, iterations) = parse_server_first(server_first);
    let salted = salted_password(&saslprep(password), &salt, iterations);
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = sha256(&client_key);
    let without_proof = format!("c={cbind},r={nonce}{extra}");
    let auth_message = format!(
        "{client_first_bare},{},{without_proof}",
        std::str::from_utf8(server_first).unwrap()
    );
    let signature = hmac_sha256(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(signature)
        .map(|(k, s)| k ^ s)
        .collect();
    format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes()
}

#[test]
fn scram_user_name_and_extensions_are_ignored() {
    // The startup packet's user is "u"; the SCRAM message may name anyone.
    let v = pg_u();
    let bare = "n=somebody-else,r=clientnonce,x=extension";
    let mut s = ScramServer::new("u", Some(&v), SCRAM_SHA_256, None).unwrap();
    let first = s.client_first(format!("n,,{bare}").as_bytes()).unwrap();
    let last = client_final("p", bare, &first, "biws", ",y=ext");
    let reply = s.client_final(&last).unwrap();
    assert!(reply.starts_with(b"v="));
}

#[test]
fn unknown_user_runs_a_mock_exchange() {
    let first_of = |user: &str| {
        let mut s = ScramServer::new(user, None, SCRAM_SHA_256, None).unwrap();
        s.client_first(b"n,,n=,r=abc").unwrap()
    };
    let (nonce_a, salt_a, iterations) = parse_server_first(&first_of("ghost"));
    let (nonce_b, salt_b, _) = parse_server_first(&first_of("ghost"));
    let (_, salt_other, _) = parse_server_first(&first_of("spirit"));
    // Looks like a real user: a 16-byte salt, stable for the name, 4096 iterations.
    assert_eq!(iterations, DEFAULT_ITERATIONS);
    assert_eq!(salt_a.len(), DEFAULT_SALT_LEN);
    assert_eq!(salt_a, salt_b);
    assert_ne!(salt_a, salt_other);
    // Fresh server nonces: "abc" plus 24 base64 characters of 18 random bytes.
    assert_ne!(nonce_a, nonce_b);
    assert!(nonce_a.starts_with("abc") && nonce_a.len() == 3 + 24);

    // Whatever the password, it fails at the end, with the wrong-password error.
    let err = exchange(
        "ghost",
        None,
        "p",
        SCRAM_SHA_256,
        None,
        ChannelBinding::unrequested(),
    )
    .unwrap_err();
    assert_eq!(err, auth_failed("ghost", FailReason::NoVerifier));
    assert_eq!(
        err.to_string(),
        "password authentication failed for user \"ghost\""
    );
    assert_eq!(err.sqlstate(), "28P01");
    assert!(err
        .log_detail()
        .unwrap()
        .contains("no SCRAM-SHA-256 verifier"));
    // Even a proof made for the mock salt and all-zero keys does not get in.
    let mut s = ScramServer::new("ghost", None, SCRAM_SHA_256, None).unwrap();
    let first = s.client_first(b"n,,n=,r=abc").unwrap();
    let last = client_final("", "n=,r=abc", &first, "biws", "");
    assert_eq!(
        s.client_final(&last).unwrap_err(),
        auth_failed("ghost", FailReason::NoVerifier)
    );
    // And the mock exchange checks the messages like a real one.
    let mut s = ScramServer::new("ghost", None, SCRAM_SHA_256, None).unwrap();
    s.client_first(b"n,,n=,r=abc").unwrap();
    assert_eq!(
        s.client_final(b"c=biws,r=abcWRONG,p=AAAA")
            .unwrap_err()
            .sqlstate(),
        "08P01"
    );
}

/// A server past client-first ("n,,n=,r=abc") and its server-first.
fn started(flag: &str) -> (ScramServer, Vec<u8>) {
    let mut s = ScramServer::new("u", Some(&pg_u()), SCRAM_SHA_256, None).unwrap();
    let first = s
        .client_first(format!("{flag},,n=,r=abc").as_bytes())
        .unwrap();
    (s, first)
}

fn protocol_detail(err: &ScramError) -> String {
    assert_eq!(err.sqlstate(), "08P01", "{err:?}");
    format!("{err}: {}", err.detail().unwrap_or(""))
}

#[test]
fn tampered_client_first_is_a_protocol_violation() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "The message is empty."),
        (
            b"n,,n=,r=a\0bc",
            "Message length does not match input length.",
        ),
        (b"x,,n=,r=abc", "Unexpected channel-binding flag \"x\"."),
        (b"n;,n=,r=abc", "Comma expected, but found character \";\"."),
        (b"n", "Comma expected, but found character \"0x00\"."),
        (
            b"n,x,n=,r=abc",
            "Unexpected attribute \"x\" in client-first-message.",
        ),
        (b"n,,r=abc", "Expected attribute \"n\" but found \"r=abc\"."),
        (b"n,,n=", "Expected attribute \"r\" but found \"\"."),
        (b"n,,n=,r", "Expected character \"=\" for attribute \"r\"."),
        (b"n,,n=,r=a\x01c", "non-printable characters in SCRAM nonce"),
        (
            b"n,,n=,r=a\xC3\xA9c",
            "non-printable characters in SCRAM nonce",
        ),
        (
            b"n,,n=,r=abc,1=2",
            "Attribute expected, but found invalid character \"1\".",
        ),
        (
            b"n,,n=,r=abc,x",
            "Expected character \"=\" for attribute \"x\".",
        ),
    ];
    for (msg, want) in cases {
        let mut s = ScramServer::new("u", Some(&pg_u()), SCRAM_SHA_256, None).unwrap();
        let err = s.client_first(msg).unwrap_err();
        assert!(protocol_detail(&err).contains(want), "{msg:?}: {err:?}");
        // The exchange is over.
        assert!(s.client_final(b"c=biws,r=abc,p=AAAA").is_err());
    }
}

#[test]
fn authzid_and_mandatory_extensions_are_unsupported() {
    for (msg, want) in [
        (
            &b"n,a=admin,n=,r=abc"[..],
            "client uses authorization identity, but it is not supported",
        ),
        (
            b"n,,m=ext,n=,r=abc",
            "client requires an unsupported SCRAM extension",
        ),
    ] {
        let mut s = ScramServer::new("u", Some(&pg_u()), SCRAM_SHA_256, None).unwrap();
        let err = s.client_first(msg).unwrap_err();
        assert_eq!(err.to_string(), want);
        assert_eq!(err.sqlstate(), "0A000");
    }
}

#[test]
fn tampered_client_final_gives_the_right_error() {
    // The right message passes (the baseline of the cases below).
    let (mut s, first) = started("n");
    s.client_final(&client_final("p", "n=,r=abc", &first, "biws", ""))
        .unwrap();

    // Nonce: ours changed, cut, or extended.
    for bad in ["X", ""] {
        let (mut s, first) = started("n");
        let (nonce, _, _) = parse_server_first(&first);
        let tampered = format!("{}{bad}", &nonce[..nonce.len() - 1]);
        let msg = format!("c=biws,r={tampered},p={}", STANDARD.encode([0u8; 32]));
        let err = s.client_final(msg.as_bytes()).unwrap_err();
        assert_eq!(
            protocol_detail(&err),
            "invalid SCRAM response: Nonce does not match."
        );
    }
    let (mut s, first) = started("n");
    let (nonce, _, _) = parse_server_first(&first);
    let msg = format!("c=biws,r={nonce}x,p={}", STANDARD.encode([0u8; 32]));
    assert!(protocol_detail(&s.client_final(msg.as_bytes()).unwrap_err()).contains("Nonce"));

    // Channel binding attribute not matching the gs2 header of client-first.
    for (flag, cbind) in [
        ("n", "eSws"),
        ("y", "biws"),
        ("n", "cD10bHMtc2VydmVyLWVuZC1wb2ludCws"),
    ] {
        let (mut s, first) = started(flag);
        let err = s
            .client_final(&client_final("p", "n=,r=abc", &first, cbind, ""))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unexpected SCRAM channel-binding attribute in client-final-message"
        );
        assert_eq!(err.sqlstate(), "08P01");
    }

    // The proof: not base64, wrong length, missing, not last.
    let (_, first) = started("n");
    let (nonce, _, _) = parse_server_first(&first);
    let cases = [
        (
            format!("c=biws,r={nonce},p=!!!!"),
            "Malformed proof in client-final-message.",
        ),
        (
            format!("c=biws,r={nonce},p=AAAA"),
            "Malformed proof in client-final-message.",
        ),
        (
            format!("c=biws,r={nonce}"),
            "Attribute expected, but found end of string.",
        ),
        (
            format!("r={nonce},p=AAAA"),
            "Expected attribute \"c\" but found",
        ),
        (
            format!("c=biws,r={nonce},p={},x=1", STANDARD.encode([0u8; 32])),
            "Garbage found at the end of client-final-message.",
        ),
    ];
    for (msg, want) in cases {
        let (mut s, _) = started("n");
        // A fresh server has another nonce; these cases fail before the nonce check.
        let err = s.client_final(msg.as_bytes()).unwrap_err();
        assert!(protocol_detail(&err).contains(want), "{msg}: {err:?}");
    }

    // A right message with its proof changed in one bit is a wrong password.
    let (mut s, first) = started("n");
    let mut msg = client_final("p", "n=,r=abc", &first, "biws", "");
    let i = msg.len() - 3;
    msg[i] = if msg[i] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        s.client_final(&msg).unwrap_err(),
        auth_failed("u", FailReason::WrongProof)
    );
}

#[test]
fn messages_out_of_order_are_refused() {
    let mut s = ScramServer::new("u", Some(&pg_u()), SCRAM_SHA_256, None).unwrap();
    assert_eq!(s.client_final(b"c=biws").unwrap_err().sqlstate(), "XX000");
    let mut s = ScramServer::new("u", Some(&pg_u()), SCRAM_SHA_256, None).unwrap();
    s.client_first(b"n,,n=,r=abc").unwrap();
    assert_eq!(
        s.client_first(b"n,,n=,r=abc").unwrap_err().sqlstate(),
        "XX000"
    );
    assert_eq!(s.client_final(b"c=biws").unwrap_err().sqlstate(), "XX000");
}

#[test]
fn real_postgres_verifiers_verify_and_are_reproduced() {
    let cases = [
        (PG_U, "p", "p"),
        (PG_SOFT_HYPHEN, "pass\u{AD}word", "password"),
        (PG_BELL, "bell\u{7}pw", "bell\u{7}pw"),
        (PG_ROMAN_NINE, "\u{2168}", "IX"),
    ];
    for (line, password, prepared) in cases {
        let v = Verifier::parse(line).unwrap();
        assert_eq!(v.iterations(), 4096);
        assert_eq!(v.salt().len(), 16);
        assert_eq!(v.encode(), line);
        assert!(v.verify_password(password), "{password:?}");
        assert!(v.verify_password(prepared), "{prepared:?}");
        assert!(!v.verify_password("wrong"));
        // Same salt, same password: the same line PostgreSQL wrote.
        assert_eq!(
            make_verifier(password, v.salt(), 4096),
            line,
            "{password:?}"
        );
    }
    assert_eq!(saslprep("\u{2168}"), b"IX");
    assert_eq!(saslprep("a\u{A0}b"), b"a b"); // non-ASCII space mapped to space
    assert_eq!(saslprep("bell\u{7}"), b"bell\x07"); // prohibited: raw bytes
    assert_eq!(saslprep("\u{E000}x"), "\u{E000}x".as_bytes()); // private use: raw bytes
}

#[test]
fn random_salt_verifiers_have_postgres_defaults() {
    let a = make_verifier_random_salt("hunter2").unwrap();
    let b = make_verifier_random_salt("hunter2").unwrap();
    assert_ne!(a, b);
    let v = Verifier::parse(&a).unwrap();
    assert_eq!((v.iterations(), v.salt().len()), (4096, 16));
    assert!(v.verify_password("hunter2"));
    exchange(
        "u",
        Some(&v),
        "hunter2",
        SCRAM_SHA_256,
        None,
        ChannelBinding::unrequested(),
    )
    .unwrap();
}

#[test]
fn verifier_parse_errors_name_the_part_and_hide_the_secret() {
    let ok = PG_U;
    let (head, keys) = ok.rsplit_once('$').unwrap();
    let (stored, server) = keys.split_once(':').unwrap();
    let cases = [
        (
            "md5a3556571e93b0d20722ba62be61e8c2d".to_string(),
            VerifierError::NotScram,
        ),
        ("p".to_string(), VerifierError::NotScram),
        (
            "scram-sha-256$4096:c2FsdA==$a:b".to_string(),
            VerifierError::NotScram,
        ),
        (
            "SCRAM-SHA-256$4096:c2FsdA==".to_string(),
            VerifierError::Shape,
        ),
        (format!("{head}${stored}"), VerifierError::Shape),
        (format!("{ok}$x"), VerifierError::Shape),
        (format!("{ok}:x"), VerifierError::Shape),
        (ok.replace("$4096:", "$0:"), VerifierError::Iterations),
        (ok.replace("$4096:", "$-1:"), VerifierError::Iterations),
        (ok.replace("$4096:", "$ 4096:"), VerifierError::Iterations),
        (
            ok.replace("$4096:", "$2147483648:"),
            VerifierError::Iterations,
        ),
        (ok.replace("$4096:", "$:"), VerifierError::Iterations),
        (
            ok.replace("cutcscTshUHYsXVmFmZKWQ==", ""),
            VerifierError::Salt,
        ),
        (
            ok.replace("cutcscTshUHYsXVmFmZKWQ==", "cutcsc!"),
            VerifierError::Salt,
        ),
        (format!("{head}$AAAA:{server}"), VerifierError::StoredKey),
        (
            format!("{head}${stored}:{}", &server[1..]),
            VerifierError::ServerKey,
        ),
    ];
    for (text, want) in cases {
        assert_eq!(Verifier::parse(&text).unwrap_err(), want, "{text}");
        assert!(!want.to_string().contains(stored));
    }
    assert_eq!(ok.parse::<Verifier>().unwrap(), pg_u());
    // Debug shows no key material.
    let debug = format!("{:?}", pg_u());
    assert_eq!(debug, "Verifier { iterations: 4096, salt_len: 16, .. }");
    let server = ScramServer::new("u", Some(&pg_u()), SCRAM_SHA_256, None).unwrap();
    let debug = format!("{server:?}");
    assert!(
        !debug.contains(stored) && debug.contains("has_verifier: true"),
        "{debug}"
    );
}

#[test]
#[should_panic(expected = "iterations")]
fn zero_iterations_is_a_programming_error() {
    make_verifier("p", b"salt", 0);
}
