//! The server side of SCRAM (`walferry::auth`) against libpq's client, psql 15: a minimal
//! server on loopback that does what the relay's start-up will do (SSLRequest, startup
//! packet, AuthenticationSASL, the exchange, AuthenticationOk or an ErrorResponse), with
//! and without TLS. Over TLS with `channel_binding=require`, libpq hashes the certificate
//! it received itself, so a success shows that `tls_server_end_point` agrees with libpq.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use walferry::auth::{
    make_verifier, mechanisms, tls_server_end_point, AuthFile, ScramError, ScramServer,
};
use walferry::protocol::backend::{Authentication, BackendMessage, ServerError};
use walferry::protocol::frame::MAX_MESSAGE_LEN;
use walferry::protocol::frontend::{parse_sasl_initial_response, FrontendMessage, StartupPacket};

use common::{client_command, pg_bin, prerequisite, HOST};

const CERT: &str = "src/protocol/testdata/server.crt";
const KEY: &str = "src/protocol/testdata/server.key";

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// What the server saw: the user and mechanism, and how the exchange ended.
#[derive(Debug)]
struct Seen {
    user: String,
    mechanism: String,
    result: Result<(), ScramError>,
}

fn tls_config() -> (Arc<ServerConfig>, Vec<u8>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(root.join(CERT))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(root.join(KEY)).unwrap();
    let binding = tls_server_end_point(&certs[0]).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    (Arc::new(config), binding)
}

fn read_startup(s: &mut dyn Stream) -> StartupPacket {
    let mut buf = BytesMut::new();
    loop {
        if let Some(p) = StartupPacket::parse(&mut buf).unwrap() {
            return p;
        }
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "client closed during start-up");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The next message, or `None` when the client hung up.
fn read_message(s: &mut dyn Stream, buf: &mut BytesMut) -> Option<FrontendMessage> {
    loop {
        if let Some(m) = FrontendMessage::parse(buf, MAX_MESSAGE_LEN).unwrap() {
            return Some(m);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn send(s: &mut dyn Stream, messages: &[BackendMessage]) {
    let mut out = BytesMut::new();
    for m in messages {
        m.encode(&mut out).unwrap();
    }
    s.write_all(&out).unwrap();
    s.flush().unwrap();
}

fn auth(a: Authentication) -> BackendMessage {
    BackendMessage::Authentication(a)
}

/// Serves one connection as the relay will authenticate it.
fn serve(listener: TcpListener, file: AuthFile, tls: Option<(Arc<ServerConfig>, Vec<u8>)>) -> Seen {
    let (tcp, _) = listener.accept().unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut plain = tcp;
    let mut first = read_startup(&mut plain);
    let mut binding = None;
    let mut stream: Box<dyn Stream> = match (&first, tls) {
        (StartupPacket::SslRequest, Some((config, hash))) => {
            plain.write_all(b"S").unwrap();
            binding = Some(hash);
            let conn = ServerConnection::new(config).unwrap();
            Box::new(StreamOwned::new(conn, plain))
        }
        (StartupPacket::SslRequest, None) => {
            plain.write_all(b"N").unwrap();
            Box::new(plain)
        }
        _ => Box::new(plain),
    };
    if matches!(first, StartupPacket::SslRequest) {
        first = read_startup(&mut stream);
    }
    let StartupPacket::Startup { params, .. } = first else {
        panic!("expected a startup packet, got {first:?}");
    };
    let user = params.iter().find(|(k, _)| k == "user").unwrap().1.clone();

    let offered: Vec<String> = mechanisms(binding.is_some())
        .iter()
        .map(|m| m.to_string())
        .collect();
    send(
        &mut stream,
        &[auth(Authentication::Sasl {
            mechanisms: offered,
        })],
    );
    let mut buf = BytesMut::new();
    let mut seen = Seen {
        user: user.clone(),
        mechanism: String::new(),
        result: Ok(()),
    };
    let Some(FrontendMessage::AuthResponse(body)) = read_message(&mut stream, &mut buf) else {
        seen.result = Err(ScramError::Internal(
            "client gave up before SASLInitialResponse",
        ));
        return seen;
    };
    let (mechanism, data) = parse_sasl_initial_response(body).unwrap();
    seen.mechanism = mechanism.clone();

    let result = (|| {
        let mut scram = ScramServer::new(&user, file.verifier(&user), &mechanism, binding)?;
        let server_first = scram.client_first(&data.unwrap_or_default())?;
        send(
            &mut stream,
            &[auth(Authentication::SaslContinue(server_first.into()))],
        );
        let Some(FrontendMessage::AuthResponse(body)) = read_message(&mut stream, &mut buf) else {
            return Err(ScramError::Internal("client gave up before SASLResponse"));
        };
        let server_final = scram.client_final(&body)?;
        send(
            &mut stream,
            &[
                auth(Authentication::SaslFinal(server_final.into())),
                auth(Authentication::Ok),
                BackendMessage::ParameterStatus {
                    name: "server_version".into(),
                    value: "15.0".into(),
                },
                BackendMessage::ParameterStatus {
                    name: "client_encoding".into(),
                    value: "UTF8".into(),
                },
                BackendMessage::BackendKeyData {
                    process_id: 1,
                    secret_key: 2,
                },
                BackendMessage::ReadyForQuery { status: b'I' },
            ],
        );
        Ok(())
    })();
    match &result {
        Ok(()) => {
            // Until psql's Terminate (or hang-up).
            while let Some(m) = read_message(&mut stream, &mut buf) {
                if m == FrontendMessage::Terminate {
                    break;
                }
            }
        }
        Err(e) => send(
            &mut stream,
            &[BackendMessage::ErrorResponse(ServerError {
                severity: "FATAL".into(),
                code: e.sqlstate().into(),
                message: e.to_string(),
                detail: e.detail().map(str::to_string),
                hint: None,
            })],
        ),
    }
    seen.result = result;
    seen
}

/// psql against a one-connection server; returns what the server saw and psql's output.
fn connect(user: &str, password: &str, options: &str, tls: bool) -> (Seen, std::process::Output) {
    let psql = pg_bin("psql");
    assert!(psql.exists(), "no psql at {}", psql.display());
    let file = AuthFile::parse(
        Path::new("test-auth"),
        format!(
            "replicator {}\n\"with space\" {}\n",
            make_verifier("s3cret", b"0123456789abcdef", 4096),
            make_verifier("pass\u{AD}word", b"fedcba9876543210", 4096)
        )
        .as_bytes(),
    )
    .unwrap();
    let listener = TcpListener::bind((HOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = tls.then(tls_config);
    let server = thread::spawn(move || serve(listener, file, tls));
    let out = client_command(&psql)
        .args(["-X", "-A", "-t", "-d"])
        .arg(format!(
            "host={HOST} port={port} dbname=postgres user='{}' {options}",
            user.replace('\'', "\\'")
        ))
        .args(["-c", "\\echo connected"])
        .env("PGPASSWORD", password)
        .output()
        .unwrap();
    (server.join().unwrap(), out)
}

fn have_psql() -> bool {
    if pg_bin("psql").exists() {
        return true;
    }
    prerequisite::missing(
        "postgresql",
        "no psql (install postgresql-client-15 with scripts/setup.sh)",
    );
    false
}

fn assert_connected(seen: &Seen, out: &std::process::Output, mechanism: &str) {
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "connected",
        "psql failed: {seen:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    seen.result.as_ref().unwrap();
    assert_eq!(seen.mechanism, mechanism);
}

#[test]
fn libpq_logs_in_without_tls() {
    if !have_psql() {
        return;
    }
    let (seen, out) = connect("replicator", "s3cret", "sslmode=disable", false);
    assert_connected(&seen, &out, "SCRAM-SHA-256");
    // sslmode=prefer against a server that answers N to SSLRequest.
    let (seen, out) = connect("replicator", "s3cret", "sslmode=prefer", false);
    assert_connected(&seen, &out, "SCRAM-SHA-256");
    // A quoted user name with a space; SASLprep on both sides (soft hyphen dropped).
    let (seen, out) = connect("with space", "password", "sslmode=disable", false);
    assert_connected(&seen, &out, "SCRAM-SHA-256");
    assert_eq!(seen.user, "with space");
}

#[test]
fn libpq_sees_postgres_error_for_wrong_password_and_unknown_user() {
    if !have_psql() {
        return;
    }
    for (user, password) in [("replicator", "wrong"), ("nobody", "s3cret")] {
        let (seen, out) = connect(user, password, "sslmode=disable", false);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "FATAL:  password authentication failed for user \"{user}\""
            )),
            "{stderr}"
        );
        let err = seen.result.unwrap_err();
        assert!(err.is_auth_failure(), "{err:?}");
    }
}

#[test]
fn libpq_binds_the_channel_over_tls() {
    if !have_psql() {
        return;
    }
    for options in ["sslmode=require channel_binding=require", "sslmode=require"] {
        let (seen, out) = connect("replicator", "s3cret", options, true);
        assert_connected(&seen, &out, "SCRAM-SHA-256-PLUS");
    }
    // A client told not to bind uses plain SCRAM-SHA-256 ("n" gs2 header) over TLS.
    let (seen, out) = connect(
        "replicator",
        "s3cret",
        "sslmode=require channel_binding=disable",
        true,
    );
    assert_connected(&seen, &out, "SCRAM-SHA-256");
    // Wrong password over TLS with binding: still the plain password error.
    let (seen, out) = connect(
        "replicator",
        "nope",
        "sslmode=require channel_binding=require",
        true,
    );
    assert!(!out.status.success());
    assert!(seen.result.unwrap_err().is_auth_failure());
}

#[test]
fn libpq_refuses_to_go_on_without_binding_when_required() {
    if !have_psql() {
        return;
    }
    // No TLS, so no -PLUS offered: libpq gives up itself before sending a proof.
    let (seen, out) = connect(
        "replicator",
        "s3cret",
        "sslmode=disable channel_binding=require",
        false,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("channel binding"), "{stderr}");
    assert!(seen.result.is_err(), "{seen:?}");
}
