//! The client against scripted fake servers on 127.0.0.1:0 (and a Unix socket): each test
//! plays the server side byte for byte with the `backend` encoders and `frontend` parsers.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::backend::{
    encode_result_set, Authentication, BackendMessage, CopyResponse, ServerError, INT8_OID,
    TEXT_OID,
};
use super::client::{ClientError, CopyMessage, ReplicationConn, StreamItem};
use super::frame::MAX_MESSAGE_LEN;
use super::frontend::{self, FrontendMessage, StartupPacket};
use super::replication::{encode_xlog_data, ReplicationMessage};
use crate::conninfo::{
    ChannelBindingMode, ConnParams, Host, Password, PasswordPrompt, SslMode, TargetSessionAttrs,
};
use crate::wal::{Lsn, TimeLineId};

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/protocol/testdata");

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The server end of one connection.
struct Fake {
    io: Box<dyn Io>,
    buf: BytesMut,
}

impl Fake {
    fn new(io: impl Io + 'static) -> Self {
        Fake {
            io: Box::new(io),
            buf: BytesMut::new(),
        }
    }

    async fn read_more(&mut self) -> bool {
        self.io.read_buf(&mut self.buf).await.unwrap() > 0
    }

    async fn startup(&mut self) -> StartupPacket {
        loop {
            if let Some(p) = StartupPacket::parse(&mut self.buf).unwrap() {
                return p;
            }
            assert!(self.read_more().await, "client hung up before startup");
        }
    }

    /// The next message, or `None` when the client closed the connection.
    async fn try_recv(&mut self) -> Option<FrontendMessage> {
        loop {
            if let Some(m) = FrontendMessage::parse(&mut self.buf, MAX_MESSAGE_LEN).unwrap() {
                return Some(m);
            }
            if !self.read_more().await {
                return None;
            }
        }
    }

    async fn recv(&mut self) -> FrontendMessage {
        self.try_recv().await.expect("client hung up")
    }

    async fn expect_query(&mut self) -> String {
        match self.recv().await {
            FrontendMessage::Query(q) => q,
            other => panic!("expected a query, got {other:?}"),
        }
    }

    async fn auth_response(&mut self) -> Bytes {
        match self.recv().await {
            FrontendMessage::AuthResponse(b) => b,
            other => panic!("expected an auth response, got {other:?}"),
        }
    }

    async fn send(&mut self, msgs: &[BackendMessage]) {
        let mut out = BytesMut::new();
        for m in msgs {
            m.encode(&mut out).unwrap();
        }
        self.send_raw(&out).await;
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// Everything a server sends after successful authentication.
    async fn ready(&mut self) {
        self.send(&[
            auth(Authentication::Ok),
            param("server_version", "15.4 (Debian 15.4-1.pgdg120+1)"),
            param("integer_datetimes", "on"),
            BackendMessage::BackendKeyData {
                process_id: 4242,
                secret_key: 99,
            },
            BackendMessage::ReadyForQuery { status: b'I' },
        ])
        .await;
    }

    /// Startup packet, then trust authentication.
    async fn trust(&mut self) -> Vec<(String, String)> {
        let StartupPacket::Startup { params, .. } = self.startup().await else {
            panic!("expected a startup packet");
        };
        self.ready().await;
        params
    }

    async fn answer_rows(
        &mut self,
        columns: &[(&str, u32)],
        rows: &[Vec<Option<&[u8]>>],
        tag: &str,
    ) {
        let mut out = BytesMut::new();
        encode_result_set(columns, rows, tag, &mut out).unwrap();
        BackendMessage::ReadyForQuery { status: b'I' }
            .encode(&mut out)
            .unwrap();
        self.send_raw(&out).await;
    }

    async fn answer_error(&mut self, code: &str, message: &str) {
        self.send(&[
            error("ERROR", code, message),
            BackendMessage::ReadyForQuery { status: b'I' },
        ])
        .await;
    }

    /// Wait for the client to go away (Terminate or EOF); true if Terminate was seen.
    /// End a replication stream with no next timeline: CopyDone, wait for the client's,
    /// then the command's completion.
    async fn end_stream(&mut self) {
        self.send(&[BackendMessage::CopyDone]).await;
        assert_eq!(self.recv().await, FrontendMessage::CopyDone);
        self.send(&[
            BackendMessage::CommandComplete {
                tag: "START_STREAMING".into(),
            },
            BackendMessage::ReadyForQuery { status: b'I' },
        ])
        .await;
    }

    async fn until_closed(&mut self) -> bool {
        let mut terminated = false;
        while let Some(m) = self.try_recv().await {
            terminated |= m == FrontendMessage::Terminate;
        }
        terminated
    }
}

fn auth(a: Authentication) -> BackendMessage {
    BackendMessage::Authentication(a)
}

fn param(name: &str, value: &str) -> BackendMessage {
    BackendMessage::ParameterStatus {
        name: name.into(),
        value: value.into(),
    }
}

fn error(severity: &str, code: &str, message: &str) -> BackendMessage {
    BackendMessage::ErrorResponse(ServerError {
        severity: severity.into(),
        code: code.into(),
        message: message.into(),
        detail: None,
        hint: None,
    })
}

fn params_for(hosts: Vec<Host>, ports: Vec<u16>) -> ConnParams {
    ConnParams {
        hosts,
        ports,
        user: "rep".into(),
        password: None,
        passfile: None,
        dbname: None,
        application_name: "walferry-test".into(),
        sslmode: SslMode::Disable,
        sslrootcert: None,
        sslcert: None,
        sslkey: None,
        sslpassword: None,
        sslcrl: None,
        sslcrldir: None,
        target_session_attrs: Default::default(),
        channel_binding: Default::default(),
        connect_timeout: Some(Duration::from_secs(5)),
        keepalives: Default::default(),
        prompt: PasswordPrompt::Never,
        session: Default::default(),
    }
}

fn params(port: u16) -> ConnParams {
    params_for(vec![Host::Tcp("127.0.0.1".into())], vec![port])
}

/// A listener on 127.0.0.1:0 and a task running `script` on it.
async fn serve<F, Fut>(script: F) -> (u16, JoinHandle<()>)
where
    F: FnOnce(TcpListener) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (port, tokio::spawn(script(listener)))
}

/// `serve` for the common case of one connection.
async fn serve_one<F, Fut>(script: F) -> (u16, JoinHandle<()>)
where
    F: FnOnce(Fake) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    serve(|l| async move {
        let (sock, _) = l.accept().await.unwrap();
        script(Fake::new(sock)).await
    })
    .await
}

async fn connect(p: &ConnParams) -> Result<ReplicationConn, ClientError> {
    tokio::time::timeout(Duration::from_secs(20), ReplicationConn::connect(p))
        .await
        .expect("connect hung")
}

fn server_error(e: ClientError) -> ServerError {
    match e {
        ClientError::Server(s) => s,
        other => panic!("expected a server error, got {other:?}"),
    }
}

// ---- startup and authentication ----

#[tokio::test]
async fn trust_startup_sends_replication_parameters() {
    let (port, server) = serve_one(|mut s| async move {
        let params = s.trust().await;
        assert_eq!(
            params,
            [
                ("user", "rep"),
                ("database", "replication"),
                ("replication", "true"),
                ("application_name", "walferry-test"),
                ("client_encoding", "UTF8"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(s.until_closed().await, "client did not send Terminate");
    })
    .await;
    let conn = connect(&params(port)).await.unwrap();
    assert_eq!(conn.server_version_num(), Some(150004));
    assert_eq!(conn.parameter("integer_datetimes"), Some("on"));
    assert_eq!(conn.backend_key(), Some((4242, 99)));
    assert!(!conn.is_tls());
    conn.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn startup_error_is_a_server_error_with_sqlstate() {
    let (port, server) = serve_one(|mut s| async move {
        s.startup().await;
        s.send(&[auth(Authentication::CleartextPassword)]).await;
        s.auth_response().await;
        s.send(&[error(
            "FATAL",
            "28P01",
            "password authentication failed for user \"rep\"",
        )])
        .await;
    })
    .await;
    let mut p = params(port);
    p.password = Some(Password("hunter2-secret".into()));
    let err = connect(&p).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("hunter2"), "password leaked: {text}");
    assert!(err.is_fatal());
    let e = server_error(err);
    assert_eq!(e.code, "28P01");
    assert_eq!(e.severity, "FATAL");
    server.await.unwrap();
}

#[tokio::test]
async fn cleartext_password() {
    let (port, server) = serve_one(|mut s| async move {
        s.startup().await;
        s.send(&[auth(Authentication::CleartextPassword)]).await;
        let body = s.auth_response().await;
        assert_eq!(&frontend::parse_password(body).unwrap()[..], b"pw");
        s.ready().await;
    })
    .await;
    let mut p = params(port);
    p.password = Some(Password("pw".into()));
    connect(&p).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn md5_password_is_hashed_with_user_and_salt() {
    let (port, server) = serve_one(|mut s| async move {
        s.startup().await;
        s.send(&[auth(Authentication::Md5Password { salt: [1, 2, 3, 4] })])
            .await;
        let body = s.auth_response().await;
        let want = postgres_protocol::authentication::md5_hash(b"rep", b"pw", [1, 2, 3, 4]);
        assert_eq!(
            &frontend::parse_password(body).unwrap()[..],
            want.as_bytes()
        );
        s.ready().await;
    })
    .await;
    let mut p = params(port);
    p.password = Some(Password("pw".into()));
    connect(&p).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn missing_password_fails_clearly_without_prompting() {
    let (port, server) = serve_one(|mut s| async move {
        s.startup().await;
        s.send(&[auth(Authentication::Md5Password { salt: [0; 4] })])
            .await;
        // The client gives up without answering.
        assert!(!s.until_closed().await);
    })
    .await;
    let err = connect(&params(port)).await.unwrap_err();
    assert!(matches!(err, ClientError::PasswordRequired), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("password authentication required but no password was supplied"));
    // The hint is separate, for its own `hint:` line.
    assert!(!msg.contains("HINT"), "{msg}");
    assert!(err.hint().unwrap().contains("PGPASSWORD"));
    server.await.unwrap();
}

#[tokio::test]
async fn gssapi_is_rejected_clearly() {
    let (port, server) = serve_one(|mut s| async move {
        s.startup().await;
        s.send(&[auth(Authentication::Gss)]).await;
        s.until_closed().await;
    })
    .await;
    let err = connect(&params(port)).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::UnsupportedAuth(m) if m == "GSSAPI"),
        "{err:?}"
    );
    assert!(err.is_fatal());
    server.await.unwrap();
}

/// Server side of SCRAM-SHA-256 (RFC 5802/7677), just enough to check the client's proof
/// and to sign the final message; built on rustls' own HMAC and SHA-256.
mod scram {
    use rustls::crypto::tls13::OkmBlock;

    fn suite() -> &'static rustls::Tls13CipherSuite {
        match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256 {
            rustls::SupportedCipherSuite::Tls13(s) => s,
            _ => unreachable!(),
        }
    }

    pub fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
        suite()
            .hkdf_provider
            .hmac_sign(&OkmBlock::new(key), msg)
            .as_ref()
            .to_vec()
    }

    pub fn sha256(data: &[u8]) -> Vec<u8> {
        suite().common.hash_provider.hash(data).as_ref().to_vec()
    }

    pub fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut first = salt.to_vec();
        first.extend_from_slice(&1u32.to_be_bytes());
        let mut u = hmac(password, &first);
        let mut out = u.clone();
        for _ in 1..iterations {
            u = hmac(password, &u);
            out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
        }
        out
    }

    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn b64(data: &[u8]) -> String {
        let mut s = String::new();
        for chunk in data.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    s.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }

    pub fn unb64(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in s.bytes().filter(|c| *c != b'=') {
            let v = B64.iter().position(|x| *x == c).expect("base64") as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }
}

/// How the fake SCRAM server ends the exchange.
#[derive(Clone, Copy, PartialEq)]
enum ScramEnding {
    Honest,
    WrongServerSignature,
    SkipFinal,
}

async fn scram_server(s: Fake, password: &'static str, ending: ScramEnding) {
    let offered = ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"];
    // 'n': no channel binding over plain TCP; never 'y' when the server offered -PLUS.
    scram_exchange(s, password, ending, &offered, "SCRAM-SHA-256", b"n,,").await
}

/// The server side of a SCRAM exchange offering `offered`; the client must pick
/// `expect_mechanism` and bind with `expect_binding` (gs2 header and channel-binding data,
/// as the client-final message's `c=` carries them).
async fn scram_exchange(
    mut s: Fake,
    password: &'static str,
    ending: ScramEnding,
    offered: &[&str],
    expect_mechanism: &str,
    expect_binding: &[u8],
) {
    s.startup().await;
    s.send(&[auth(Authentication::Sasl {
        mechanisms: offered.iter().map(|m| m.to_string()).collect(),
    })])
    .await;
    let (mech, data) = frontend::parse_sasl_initial_response(s.auth_response().await).unwrap();
    assert_eq!(mech, expect_mechanism);
    let client_first = String::from_utf8(data.unwrap().to_vec()).unwrap();
    let gs2_len = client_first.match_indices(',').nth(1).unwrap().0 + 1;
    let (gs2, client_first_bare) = client_first.split_at(gs2_len);
    assert!(
        expect_binding.starts_with(gs2.as_bytes()),
        "gs2 header {gs2}"
    );
    let client_nonce = client_first_bare.split("r=").nth(1).unwrap();
    let salt = b"walferry-salt";
    let iterations = 4096;
    let server_first = format!(
        "r={client_nonce}SRVNONCE,s={},i={iterations}",
        scram::b64(salt)
    );
    s.send(&[auth(Authentication::SaslContinue(Bytes::from(
        server_first.clone(),
    )))])
    .await;
    let client_final = String::from_utf8(s.auth_response().await.to_vec()).unwrap();
    let (without_proof, proof) = client_final.rsplit_once(",p=").unwrap();
    let expected_c = format!("c={},r=", scram::b64(expect_binding));
    assert!(without_proof.starts_with(&expected_c), "{without_proof}");
    let salted = scram::salted_password(password.as_bytes(), salt, iterations);
    let client_key = scram::hmac(&salted, b"Client Key");
    let stored_key = scram::sha256(&client_key);
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let client_signature = scram::hmac(&stored_key, auth_message.as_bytes());
    let recovered: Vec<u8> = scram::unb64(proof)
        .iter()
        .zip(&client_signature)
        .map(|(a, b)| a ^ b)
        .collect();
    if scram::sha256(&recovered) != stored_key {
        s.send(&[error(
            "FATAL",
            "28P01",
            "password authentication failed for user \"rep\"",
        )])
        .await;
        return;
    }
    let server_key = scram::hmac(&salted, b"Server Key");
    let mut server_signature = scram::hmac(&server_key, auth_message.as_bytes());
    match ending {
        ScramEnding::SkipFinal => {}
        ScramEnding::WrongServerSignature => {
            server_signature[0] ^= 1;
            let f = format!("v={}", scram::b64(&server_signature));
            s.send(&[auth(Authentication::SaslFinal(Bytes::from(f)))])
                .await;
        }
        ScramEnding::Honest => {
            let f = format!("v={}", scram::b64(&server_signature));
            s.send(&[auth(Authentication::SaslFinal(Bytes::from(f)))])
                .await;
        }
    }
    s.ready().await;
    s.until_closed().await;
}

#[tokio::test]
async fn scram_sha_256_full_exchange() {
    let (port, server) = serve_one(|s| scram_server(s, "correct horse", ScramEnding::Honest)).await;
    let mut p = params(port);
    p.password = Some(Password("correct horse".into()));
    let conn = connect(&p).await.unwrap();
    conn.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn scram_wrong_password_is_28p01() {
    let (port, server) = serve_one(|s| scram_server(s, "correct horse", ScramEnding::Honest)).await;
    let mut p = params(port);
    p.password = Some(Password("battery staple".into()));
    let e = server_error(connect(&p).await.unwrap_err());
    assert_eq!(e.code, "28P01");
    server.await.unwrap();
}

#[tokio::test]
async fn scram_server_must_prove_it_knows_the_password() {
    for ending in [ScramEnding::WrongServerSignature, ScramEnding::SkipFinal] {
        let (port, server) = serve_one(move |s| scram_server(s, "pw", ending)).await;
        let mut p = params(port);
        p.password = Some(Password("pw".into()));
        let err = connect(&p).await.unwrap_err();
        assert!(matches!(err, ClientError::Auth(_)), "{err:?}");
        assert!(err.is_fatal());
        server.abort();
    }
}

// ---- hosts, sockets, timeouts ----

#[tokio::test]
async fn tries_hosts_in_order_until_one_answers() {
    // A port nobody listens on, held for the whole test (bound, never listening: connections
    // to it are refused, and no other process can take it meanwhile).
    let dead = tokio::net::TcpSocket::new_v4().unwrap();
    dead.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    let (port, server) = serve_one(|mut s| async move {
        s.trust().await;
    })
    .await;
    let p = params_for(
        vec![Host::Tcp("127.0.0.1".into()), Host::Tcp("localhost".into())],
        vec![dead_port, port],
    );
    connect(&p).await.unwrap();
    server.await.unwrap();
    drop(dead);
}

#[tokio::test]
async fn server_error_stops_the_host_search() {
    let (port1, s1) = serve_one(|mut s| async move {
        s.startup().await;
        s.send(&[error("FATAL", "28000", "no pg_hba.conf entry")])
            .await;
    })
    .await;
    let (port2, s2) = serve(|l| async move {
        // Must never be reached.
        let accepted = tokio::time::timeout(Duration::from_millis(500), l.accept()).await;
        assert!(accepted.is_err(), "second host was tried");
    })
    .await;
    let p = params_for(
        vec![Host::Tcp("127.0.0.1".into()), Host::Tcp("127.0.0.1".into())],
        vec![port1, port2],
    );
    assert_eq!(server_error(connect(&p).await.unwrap_err()).code, "28000");
    s1.await.unwrap();
    s2.await.unwrap();
}

/// A server that answers the startup with "the database system is starting up" (57P03).
async fn starting_up_server() -> (u16, JoinHandle<()>) {
    serve_one(|mut s| async move {
        s.startup().await;
        s.send(&[error(
            "FATAL",
            "57P03",
            "the database system is starting up",
        )])
        .await;
    })
    .await
}

/// As libpq: "cannot connect now" (57P03: starting up, shutting down, not yet accepting
/// connections) moves on to the next host. After a failover the old primary, listed first,
/// is often starting up as a standby while the new one, listed second, takes writes.
#[tokio::test]
async fn a_server_not_accepting_connections_yet_is_skipped() {
    let (starting, s1) = starting_up_server().await;
    let (primary, s2) = reporting_server(false, false, 1).await;
    let conn = connect(&two_hosts(
        [starting, primary],
        TargetSessionAttrs::ReadWrite,
    ))
    .await
    .unwrap();
    assert_eq!(conn.parameter("in_hot_standby"), Some("off"));
    conn.close().await;
    s1.await.unwrap();
    s2.await.unwrap();

    // With no other host, it is the error, naming the server, and worth retrying.
    let (starting, s1) = starting_up_server().await;
    let err = connect(&params(starting)).await.unwrap_err();
    assert!(err.to_string().contains("starting up"), "{err}");
    assert!(!err.is_fatal(), "{err:?}");
    s1.await.unwrap();
}

#[tokio::test]
async fn all_hosts_failing_reports_each() {
    // Two ports that refuse connections, held for the whole test (bound, never listening).
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..2 {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        ports.push(s.local_addr().unwrap().port());
        held.push(s);
    }
    let p = params_for(
        vec![Host::Tcp("127.0.0.1".into()), Host::Tcp("127.0.0.1".into())],
        ports.clone(),
    );
    let err = connect(&p).await.unwrap_err();
    let ClientError::AllHostsFailed(all) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(all.len(), 2);
    let msg = err.to_string();
    for port in ports {
        assert!(msg.contains(&format!("port {port}")), "{msg}");
    }
    assert!(!err.is_fatal());
    drop(held);
}

#[tokio::test]
async fn unix_socket_path_is_dir_slash_s_pgsql_port() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".s.PGSQL.6543");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let mut s = Fake::new(sock);
        // No SSLRequest on a Unix socket, even with sslmode=require.
        assert!(matches!(s.startup().await, StartupPacket::Startup { .. }));
        s.ready().await;
    });
    let mut p = params_for(vec![Host::Unix(dir.path().to_path_buf())], vec![6543]);
    p.sslmode = SslMode::Require;
    connect(&p).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn connect_timeout_moves_on_and_reports() {
    // Accepts, then says nothing: only the timeout can end the attempt.
    let (port, server) = serve(|l| async move {
        let (_sock, _) = l.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
    })
    .await;
    let mut p = params(port);
    p.connect_timeout = Some(Duration::from_millis(100)); // raised to 2 s, as libpq does
    let started = std::time::Instant::now();
    let err = connect(&p).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(5),
        "{took:?}"
    );
    server.abort();
}

// ---- queries ----

#[tokio::test]
async fn identify_system_show_and_errors_in_between() {
    let (port, server) = serve_one(|mut s| async move {
        s.trust().await;
        assert_eq!(s.expect_query().await, "IDENTIFY_SYSTEM");
        s.answer_rows(
            &[
                ("systemid", TEXT_OID),
                ("timeline", INT8_OID),
                ("xlogpos", TEXT_OID),
                ("dbname", TEXT_OID),
            ],
            &[vec![
                Some(&b"7189539434585063213"[..]),
                Some(b"3"),
                Some(b"0/3000148"),
                None,
            ]],
            "IDENTIFY_SYSTEM",
        )
        .await;
        assert_eq!(s.expect_query().await, "SHOW wal_segment_size");
        s.send(&[BackendMessage::NoticeResponse(ServerError {
            severity: "NOTICE".into(),
            code: "00000".into(),
            message: "just saying".into(),
            detail: None,
            hint: None,
        })])
        .await;
        s.answer_rows(
            &[("wal_segment_size", TEXT_OID)],
            &[vec![Some(&b"16MB"[..])]],
            "SHOW",
        )
        .await;
        assert_eq!(s.expect_query().await, "READ_REPLICATION_SLOT \"nope\"");
        s.answer_rows(
            &[
                ("slot_type", TEXT_OID),
                ("restart_lsn", TEXT_OID),
                ("restart_tli", INT8_OID),
            ],
            &[vec![None, None, None]],
            "READ_REPLICATION_SLOT",
        )
        .await;
        assert_eq!(s.expect_query().await, "READ_REPLICATION_SLOT \"s1\"");
        s.answer_rows(
            &[
                ("slot_type", TEXT_OID),
                ("restart_lsn", TEXT_OID),
                ("restart_tli", INT8_OID),
            ],
            &[vec![Some(&b"physical"[..]), Some(b"0/5000000"), Some(b"2")]],
            "READ_REPLICATION_SLOT",
        )
        .await;
        assert_eq!(s.expect_query().await, "TIMELINE_HISTORY 2");
        s.answer_error("58P01", "could not open file \"pg_wal/00000002.history\"")
            .await;
        assert_eq!(s.expect_query().await, "TIMELINE_HISTORY 2");
        s.answer_rows(
            &[("filename", TEXT_OID), ("content", TEXT_OID)],
            &[vec![
                Some(&b"00000002.history"[..]),
                Some(b"1\t0/3000148\tno recovery target specified\n"),
            ]],
            "TIMELINE_HISTORY",
        )
        .await;
        assert_eq!(
            s.expect_query().await,
            "CREATE_REPLICATION_SLOT \"s1\" PHYSICAL RESERVE_WAL"
        );
        s.answer_error("42710", "replication slot \"s1\" already exists")
            .await;
        assert_eq!(
            s.expect_query().await,
            "CREATE_REPLICATION_SLOT \"s1\" PHYSICAL RESERVE_WAL"
        );
        s.answer_error("42710", "replication slot \"s1\" already exists")
            .await;
        assert_eq!(s.expect_query().await, "DROP_REPLICATION_SLOT \"s1\"");
        s.send(&[
            BackendMessage::CommandComplete {
                tag: "DROP_REPLICATION_SLOT".into(),
            },
            BackendMessage::ReadyForQuery { status: b'I' },
        ])
        .await;
        assert!(s.until_closed().await);
    })
    .await;
    let mut conn = connect(&params(port)).await.unwrap();
    let sys = conn.identify_system().await.unwrap();
    assert_eq!(sys.system_id, 7189539434585063213);
    assert_eq!(sys.timeline, TimeLineId(3));
    assert_eq!(sys.xlogpos, Lsn(0x300_0148));
    assert_eq!(conn.show("wal_segment_size").await.unwrap(), "16MB");
    assert!(conn.show("x; DROP").await.is_err());
    assert_eq!(conn.read_replication_slot("nope").await.unwrap(), None);
    assert_eq!(
        conn.read_replication_slot("s1").await.unwrap(),
        Some((Lsn(0x500_0000), TimeLineId(2)))
    );
    let e = server_error(conn.timeline_history(TimeLineId(2)).await.unwrap_err());
    assert_eq!(e.code, "58P01");
    // The connection is still usable after a command error.
    let (name, content) = conn.timeline_history(TimeLineId(2)).await.unwrap();
    assert_eq!(name, "00000002.history");
    assert_eq!(content, b"1\t0/3000148\tno recovery target specified\n");
    conn.create_physical_slot("s1", true).await.unwrap();
    let e = server_error(conn.create_physical_slot("s1", false).await.unwrap_err());
    assert_eq!(e.code, "42710");
    conn.drop_slot("s1").await.unwrap();
    conn.close().await;
    server.await.unwrap();
}

/// The keepalive settings reach the socket (read back with getsockopt).
#[tokio::test]
async fn keepalive_settings_are_set_on_the_socket() {
    use crate::conninfo::Keepalives;
    use std::os::fd::AsRawFd;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let get = |tcp: &tokio::net::TcpStream, level: libc::c_int, name: libc::c_int| {
        let mut value: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a live socket; `value` and `len` outlive the call and describe a c_int.
        let rc = unsafe {
            libc::getsockopt(
                tcp.as_raw_fd(),
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "getsockopt");
        value
    };
    let k = Keepalives {
        enabled: true,
        idle: Some(Duration::from_secs(31)),
        interval: Some(Duration::from_secs(7)),
        count: Some(4),
        user_timeout: Some(Duration::from_millis(12_000)),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    super::client::set_keepalives(&tcp, &k).unwrap();
    assert_eq!(get(&tcp, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
    assert_eq!(get(&tcp, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 31);
    assert_eq!(get(&tcp, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), 7);
    assert_eq!(get(&tcp, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 4);
    assert_eq!(get(&tcp, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT), 12_000);
    let off = Keepalives {
        enabled: false,
        ..Keepalives::default()
    };
    super::client::set_keepalives(&tcp, &off).unwrap();
    assert_eq!(get(&tcp, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
    drop(listener);
}

// ---- streaming ----

fn wal_message(start: u64, len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut payload = BytesMut::new();
    encode_xlog_data(Lsn(start), Lsn(start + len as u64), 77, &data, &mut payload);
    let mut frame = BytesMut::new();
    frontend::copy_data(&payload, &mut frame);
    frame.to_vec()
}

fn copy_both() -> BackendMessage {
    BackendMessage::CopyBothResponse(CopyResponse {
        format: 0,
        column_formats: vec![],
    })
}

#[tokio::test]
async fn stream_with_split_messages_then_end_of_timeline() {
    const WAL: usize = 128 * 1024;
    let (port, server) = serve_one(|mut s| async move {
        s.trust().await;
        assert_eq!(
            s.expect_query().await,
            "START_REPLICATION SLOT \"s\" PHYSICAL 0/3000000 TIMELINE 1"
        );
        s.send(&[copy_both()]).await;
        // A 128 KiB 'w' in pieces: inside the 5-byte header, inside the 25-byte
        // replication header, and in the middle of the WAL.
        let w = wal_message(0x300_0000, WAL);
        for piece in [&w[..3], &w[3..17], &w[17..40_000], &w[40_000..]] {
            s.send_raw(piece).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Chatter the client must skip, then a keepalive, then the end of the timeline.
        let mut ka = BytesMut::new();
        super::replication::encode_keepalive(Lsn(0x302_0000), 78, true, &mut ka);
        s.send(&[
            param("application_name", "x"),
            BackendMessage::NoticeResponse(ServerError {
                severity: "WARNING".into(),
                code: "01000".into(),
                message: "m".into(),
                detail: None,
                hint: None,
            }),
            BackendMessage::CopyData(ka.freeze()),
            BackendMessage::CopyDone,
        ])
        .await;
        // The client's status update, then its CopyDone.
        match s.recv().await {
            FrontendMessage::CopyData(b) => assert_eq!(b[0], b'r'),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.recv().await, FrontendMessage::CopyDone);
        let mut out = BytesMut::new();
        encode_result_set(
            &[("next_tli", INT8_OID), ("next_tli_startpos", TEXT_OID)],
            &[vec![Some(&b"2"[..]), Some(b"0/3020000")]],
            "SELECT",
            &mut out,
        )
        .unwrap();
        BackendMessage::CommandComplete {
            tag: "START_STREAMING".into(),
        }
        .encode(&mut out)
        .unwrap();
        BackendMessage::ReadyForQuery { status: b'I' }
            .encode(&mut out)
            .unwrap();
        s.send_raw(&out).await;
        assert!(s.until_closed().await);
    })
    .await;
    let mut conn = connect(&params(port)).await.unwrap();
    conn.start_replication(Some("s"), Lsn(0x300_0000), TimeLineId(1))
        .await
        .unwrap();
    let CopyMessage::Data(payload) = conn.read_copy_message().await.unwrap() else {
        panic!("expected data")
    };
    let ReplicationMessage::XLogData {
        wal_start, data, ..
    } = ReplicationMessage::parse(payload).unwrap()
    else {
        panic!("expected XLogData")
    };
    assert_eq!(wal_start, Lsn(0x300_0000));
    assert_eq!(data.len(), WAL);
    assert!(data.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    let CopyMessage::Data(payload) = conn.read_copy_message().await.unwrap() else {
        panic!("expected data")
    };
    assert!(matches!(
        ReplicationMessage::parse(payload).unwrap(),
        ReplicationMessage::Keepalive {
            reply_requested: true,
            ..
        }
    ));
    assert_eq!(conn.parameter("application_name"), Some("x"));
    assert!(matches!(
        conn.read_copy_message().await.unwrap(),
        CopyMessage::Done
    ));
    let mut reply = BytesMut::new();
    super::replication::encode_status_update(Lsn(1), Lsn(1), Lsn(0), 0, false, &mut reply);
    conn.send_copy_data(&reply).await.unwrap();
    assert_eq!(
        conn.finish_copy().await.unwrap(),
        Some((TimeLineId(2), Lsn(0x302_0000)))
    );
    conn.close().await;
    server.await.unwrap();
}

#[tokio::test]
async fn read_copy_message_is_cancel_safe() {
    let frames: Vec<Vec<u8>> = (0..4).map(|i| wal_message(i * 0x1000, 0x1000)).collect();
    let all: Vec<u8> = frames.concat();
    let (port, server) = serve_one(move |mut s| async move {
        s.trust().await;
        s.expect_query().await;
        s.send(&[copy_both()]).await;
        // Trickle: the client's timer fires many times in the middle of frames.
        for piece in all.chunks(777) {
            s.send_raw(piece).await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        s.end_stream().await;
    })
    .await;
    let mut conn = connect(&params(port)).await.unwrap();
    conn.start_replication(None, Lsn(0), TimeLineId(1))
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut timeouts = 0;
    loop {
        tokio::select! {
            m = conn.read_copy_message() => match m.unwrap() {
                CopyMessage::Data(b) => got.push(b),
                CopyMessage::Done => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(1)) => timeouts += 1,
        }
    }
    assert!(
        timeouts > 5,
        "the timer never interrupted a read ({timeouts})"
    );
    assert_eq!(got.len(), 4);
    for (i, payload) in got.iter().enumerate() {
        assert_eq!(&payload[..], &frames[i][5..], "message {i}");
    }
    assert_eq!(conn.finish_copy().await.unwrap(), None);
    server.await.unwrap();
}

/// A stopping PostgreSQL walsender ends the stream with CommandComplete ("COPY 0") and
/// exits, without CopyDone (walsender.c WalSndDone): that is the end of the stream, not a
/// protocol error, and finishing it reports no next timeline.
#[tokio::test]
async fn command_complete_in_the_stream_is_a_server_shutting_down() {
    let (port, server) = serve_one(move |mut s| async move {
        s.trust().await;
        s.expect_query().await;
        s.send(&[
            copy_both(),
            BackendMessage::CommandComplete {
                tag: "COPY 0".into(),
            },
        ])
        .await;
    })
    .await;
    let mut conn = connect(&params(port)).await.unwrap();
    conn.start_replication(None, Lsn(0), TimeLineId(1))
        .await
        .unwrap();
    assert!(matches!(
        conn.read_copy_message().await.unwrap(),
        CopyMessage::Done
    ));
    assert_eq!(conn.finish_copy().await.unwrap(), None);
    server.await.unwrap();
}

/// The zero-copy read path: XLogData headers from the connection's buffer, payloads into
/// the caller's memory in pieces, other messages in between; the server trickles bytes so
/// that every kind of boundary falls inside a read, and a timer cancels reads throughout.
#[tokio::test]
async fn read_stream_item_hands_wal_payloads_to_the_caller() {
    let sizes = [10usize, 5000, 128 * 1024, 3, 128 * 1024, 64];
    let mut starts = Vec::new();
    let mut wire = Vec::new();
    let mut lsn = 0x500_0000u64;
    for (i, &n) in sizes.iter().enumerate() {
        starts.push(lsn);
        wire.extend(wal_message(lsn, n));
        lsn += n as u64;
        if i == 2 {
            let mut ka = BytesMut::new();
            super::replication::encode_keepalive(Lsn(lsn), 5, false, &mut ka);
            let mut frame = BytesMut::new();
            frontend::copy_data(&ka, &mut frame);
            wire.extend_from_slice(&frame);
        }
    }
    let (port, server) = serve_one(move |mut s| async move {
        s.trust().await;
        s.expect_query().await;
        s.send(&[copy_both()]).await;
        for (k, piece) in wire.chunks(9_973).enumerate() {
            if k % 3 == 0 {
                for small in piece.chunks(17) {
                    s.send_raw(small).await;
                }
            } else {
                s.send_raw(piece).await;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        s.end_stream().await;
    })
    .await;
    let mut conn = connect(&params(port)).await.unwrap();
    conn.start_replication(None, Lsn(0x500_0000), TimeLineId(1))
        .await
        .unwrap();
    let mut wal: Vec<(Lsn, Vec<u8>)> = Vec::new();
    let mut keepalives = 0;
    let mut timeouts = 0;
    let tick = || tokio::time::sleep(Duration::from_micros(700));
    // Bounded: bytes lost between a payload and the next header would stall the stream.
    let stream = async {
        loop {
            let item = tokio::select! {
                item = conn.read_stream_item() => item.unwrap(),
                _ = tick() => { timeouts += 1; continue; }
            };
            match item {
                StreamItem::Wal(w) => {
                    let mut bytes = w.head.to_vec();
                    let mut rest = w.rest;
                    // Nothing else may be read while a payload is pending.
                    if rest > 0 {
                        assert!(matches!(
                            conn.read_copy_message().await,
                            Err(ClientError::Protocol(_))
                        ));
                    }
                    // Small reads, or room for the whole payload and what follows it (the
                    // read then takes in the next header too).
                    let mut dst = vec![0u8; if wal.len() % 2 == 0 { 1000 } else { 300_000 }];
                    while rest > 0 {
                        let n = tokio::select! {
                            n = conn.read_wal_into(&mut dst) => n.unwrap(),
                            _ = tick() => { timeouts += 1; continue; }
                        };
                        bytes.extend_from_slice(&dst[..n]);
                        rest -= n;
                    }
                    wal.push((w.wal_start, bytes));
                }
                StreamItem::Copy(CopyMessage::Data(payload)) => {
                    assert!(matches!(
                        ReplicationMessage::parse(payload).unwrap(),
                        ReplicationMessage::Keepalive { .. }
                    ));
                    assert_eq!(wal.len(), 3, "the keepalive comes after the third message");
                    keepalives += 1;
                }
                StreamItem::Copy(CopyMessage::Done) => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), stream)
        .await
        .expect("the stream stalled: bytes after a payload went missing");
    assert!(
        timeouts > 5,
        "the timer never interrupted a read ({timeouts})"
    );
    assert_eq!(keepalives, 1);
    assert_eq!(wal.len(), sizes.len());
    for (i, (start, bytes)) in wal.iter().enumerate() {
        assert_eq!(*start, Lsn(starts[i]), "message {i}");
        assert_eq!(bytes.len(), sizes[i], "message {i}");
        assert!(
            bytes.iter().enumerate().all(|(k, b)| *b == (k % 251) as u8),
            "message {i}: payload bytes differ"
        );
    }
    assert_eq!(conn.finish_copy().await.unwrap(), None);
    server.await.unwrap();
}

#[tokio::test]
async fn error_during_stream_then_connection_recovers() {
    let (port, server) = serve_one(|mut s| async move {
        s.trust().await;
        s.expect_query().await;
        s.send(&[copy_both()]).await;
        s.send_raw(&wal_message(0, 16)).await;
        s.send(&[
            error(
                "ERROR",
                "58P01",
                "requested WAL segment 000000010000000000000001 has already been removed",
            ),
            BackendMessage::ReadyForQuery { status: b'I' },
        ])
        .await;
        assert_eq!(s.expect_query().await, "SHOW wal_segment_size");
        s.answer_rows(
            &[("wal_segment_size", TEXT_OID)],
            &[vec![Some(&b"1GB"[..])]],
            "SHOW",
        )
        .await;
    })
    .await;
    let mut conn = connect(&params(port)).await.unwrap();
    conn.start_replication(None, Lsn(0), TimeLineId(1))
        .await
        .unwrap();
    assert!(matches!(
        conn.read_copy_message().await.unwrap(),
        CopyMessage::Data(_)
    ));
    let e = server_error(conn.read_copy_message().await.unwrap_err());
    assert_eq!(e.code, "58P01");
    assert_eq!(conn.show("wal_segment_size").await.unwrap(), "1GB");
    server.await.unwrap();
}

#[tokio::test]
async fn start_replication_error_is_a_server_error() {
    let (port, server) = serve_one(|mut s| async move {
        s.trust().await;
        s.expect_query().await;
        s.answer_error("42704", "replication slot \"gone\" does not exist")
            .await;
    })
    .await;
    let mut conn = connect(&params(port)).await.unwrap();
    let e = server_error(
        conn.start_replication(Some("gone"), Lsn(0), TimeLineId(1))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, "42704");
    server.await.unwrap();
}

#[tokio::test]
async fn client_initiated_end_of_stream_discards_the_tail() {
    let (port, server) = serve_one(|mut s| async move {
        s.trust().await;
        s.expect_query().await;
        s.send(&[copy_both()]).await;
        assert_eq!(s.recv().await, FrontendMessage::CopyDone);
        // Data already in flight, then the server's own CopyDone.
        s.send_raw(&wal_message(0, 100)).await;
        s.send(&[
            BackendMessage::CopyDone,
            BackendMessage::CommandComplete {
                tag: "START_STREAMING".into(),
            },
            BackendMessage::ReadyForQuery { status: b'I' },
        ])
        .await;
    })
    .await;
    let mut conn = connect(&params(port)).await.unwrap();
    conn.start_replication(None, Lsn(0), TimeLineId(1))
        .await
        .unwrap();
    assert_eq!(conn.finish_copy().await.unwrap(), None);
    server.await.unwrap();
}

#[tokio::test]
async fn server_hangup_mid_frame_is_reported() {
    let (port, server) = serve_one(|mut s| async move {
        s.trust().await;
        s.expect_query().await;
        s.send(&[copy_both()]).await;
        s.send_raw(&wal_message(0, 1000)[..500]).await;
    })
    .await;
    let mut conn = connect(&params(port)).await.unwrap();
    conn.start_replication(None, Lsn(0), TimeLineId(1))
        .await
        .unwrap();
    server.await.unwrap();
    assert!(matches!(
        conn.read_copy_message().await,
        Err(ClientError::Closed)
    ));
    // And the connection says so afterwards instead of hanging.
    assert!(conn.show("x").await.is_err());
}

#[tokio::test]
async fn garbage_from_server_is_a_protocol_error() {
    let (port, server) = serve_one(|mut s| async move {
        s.trust().await;
        s.expect_query().await;
        s.send(&[copy_both()]).await;
        s.send_raw(b"d\xff\xff\xff\xff").await;
    })
    .await;
    let mut conn = connect(&params(port)).await.unwrap();
    conn.start_replication(None, Lsn(0), TimeLineId(1))
        .await
        .unwrap();
    assert!(matches!(
        conn.read_copy_message().await,
        Err(ClientError::Protocol(_))
    ));
    server.await.unwrap();
}

#[tokio::test]
async fn malformed_message_mid_stream_breaks_the_connection() {
    let (port, server) = serve_one(|mut s| async move {
        s.trust().await;
        s.expect_query().await;
        s.send(&[copy_both()]).await;
        // An ErrorResponse without its terminating zero byte.
        s.send_raw(b"E\0\0\0\x0bSERROR\0").await;
        s.until_closed().await;
    })
    .await;
    let mut conn = connect(&params(port)).await.unwrap();
    conn.start_replication(None, Lsn(0), TimeLineId(1))
        .await
        .unwrap();
    assert!(matches!(
        conn.read_copy_message().await,
        Err(ClientError::Protocol(_))
    ));
    // Framing is lost: reading on must fail at once, not wait for bytes that will
    // never make sense.
    let later = tokio::time::timeout(Duration::from_secs(2), conn.read_copy_message()).await;
    assert!(
        matches!(later, Ok(Err(ClientError::Protocol(_)))),
        "{later:?}"
    );
    drop(conn);
    server.await.unwrap();
}

// ---- TLS ----

fn cert_path(name: &str) -> PathBuf {
    PathBuf::from(TESTDATA).join(name)
}

fn tls_acceptor(name: &str) -> tokio_rustls::TlsAcceptor {
    let certs = CertificateDer::pem_file_iter(cert_path(&format!("{name}.crt")))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(cert_path(&format!("{name}.key"))).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// SSLRequest -> 'S' -> handshake with certificate `name` -> trust startup.
async fn tls_server(sock: tokio::net::TcpStream, name: &'static str) {
    let mut s = Fake::new(sock);
    assert_eq!(s.startup().await, StartupPacket::SslRequest);
    s.send_raw(b"S").await;
    assert!(s.buf.is_empty());
    let Ok(tls) = tls_acceptor(name).accept(s.io).await else {
        return; // the client refused the certificate
    };
    let mut s = Fake::new(tls);
    s.trust().await;
    s.until_closed().await;
}

async fn tls_case(
    mode: SslMode,
    cert: &'static str,
    root: Option<&str>,
    host: &str,
) -> Result<ReplicationConn, ClientError> {
    let (port, _server) = serve(move |l| async move {
        let (sock, _) = l.accept().await.unwrap();
        tls_server(sock, cert).await
    })
    .await;
    let mut p = params_for(vec![Host::Tcp(host.into())], vec![port]);
    p.sslmode = mode;
    p.sslrootcert = root.map(cert_path);
    connect(&p).await
}

#[tokio::test]
async fn tls_modes_and_certificate_checks() {
    // require without a root certificate: anything goes.
    let conn = tls_case(SslMode::Require, "wrong-name", None, "127.0.0.1")
        .await
        .unwrap();
    assert!(conn.is_tls());
    // verify-full: chain and name (IP SAN and DNS SAN).
    assert!(
        tls_case(SslMode::VerifyFull, "server", Some("ca.crt"), "127.0.0.1")
            .await
            .unwrap()
            .is_tls()
    );
    assert!(
        tls_case(SslMode::VerifyFull, "server", Some("ca.crt"), "localhost")
            .await
            .unwrap()
            .is_tls()
    );
    let err = tls_case(
        SslMode::VerifyFull,
        "wrong-name",
        Some("ca.crt"),
        "127.0.0.1",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, ClientError::Tls { message, .. } if message.contains("not valid for name")),
        "{err:?}"
    );
    // verify-ca: chain only.
    assert!(
        tls_case(SslMode::VerifyCa, "wrong-name", Some("ca.crt"), "127.0.0.1")
            .await
            .unwrap()
            .is_tls()
    );
    let err = tls_case(
        SslMode::VerifyCa,
        "server",
        Some("other-ca.crt"),
        "127.0.0.1",
    )
    .await
    .unwrap_err();
    assert!(matches!(&err, ClientError::Tls { .. }), "{err:?}");
    // require with a root certificate behaves like verify-ca (libpq's rule).
    let err = tls_case(
        SslMode::Require,
        "server",
        Some("other-ca.crt"),
        "127.0.0.1",
    )
    .await
    .unwrap_err();
    assert!(matches!(&err, ClientError::Tls { .. }), "{err:?}");
    assert!(
        tls_case(SslMode::Require, "wrong-name", Some("ca.crt"), "127.0.0.1")
            .await
            .unwrap()
            .is_tls()
    );
}

#[tokio::test]
async fn verify_without_root_certificate_names_the_file() {
    let mut p = params(1);
    p.sslmode = SslMode::VerifyCa;
    p.sslrootcert = Some(PathBuf::from("/nonexistent/root.crt"));
    let err = connect(&p).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("root certificate file \"/nonexistent/root.crt\" does not exist"),
        "{msg}"
    );
    assert!(err.hint().is_some(), "{msg}");
    assert!(err.is_fatal());
}

#[tokio::test]
async fn ssl_refused_by_server() {
    async fn refusing(mut s: Fake) {
        assert_eq!(s.startup().await, StartupPacket::SslRequest);
        s.send_raw(b"N").await;
        // prefer carries on in plaintext on the same connection.
        if let Ok(StartupPacket::Startup { .. }) =
            tokio::time::timeout(Duration::from_secs(5), s.startup()).await
        {
            s.ready().await;
        }
    }
    let (port, server) = serve_one(refusing).await;
    let mut p = params(port);
    p.sslmode = SslMode::Require;
    let err = connect(&p).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("does not support SSL, but SSL was required"),
        "{err}"
    );
    server.abort();

    let (port, server) = serve_one(refusing).await;
    let mut p = params(port);
    p.sslmode = SslMode::Prefer;
    assert!(!connect(&p).await.unwrap().is_tls());
    server.await.unwrap();
}

#[tokio::test]
async fn prefer_retries_without_tls_after_a_failed_handshake() {
    let (port, server) = serve(|l| async move {
        // First connection: agree to TLS, then talk nonsense instead of a handshake.
        let (sock, _) = l.accept().await.unwrap();
        let mut s = Fake::new(sock);
        assert_eq!(s.startup().await, StartupPacket::SslRequest);
        s.send_raw(b"Snot a TLS record at all, sorry").await;
        drop(s);
        // Second connection: plain startup.
        let (sock, _) = l.accept().await.unwrap();
        let mut s = Fake::new(sock);
        assert!(matches!(s.startup().await, StartupPacket::Startup { .. }));
        s.ready().await;
    })
    .await;
    let mut p = params(port);
    p.sslmode = SslMode::Prefer;
    assert!(!connect(&p).await.unwrap().is_tls());
    server.await.unwrap();
}

#[tokio::test]
async fn allow_retries_with_tls_when_plaintext_is_rejected() {
    let (port, server) = serve(|l| async move {
        let (sock, _) = l.accept().await.unwrap();
        let mut s = Fake::new(sock);
        assert!(matches!(s.startup().await, StartupPacket::Startup { .. }));
        s.send(&[error(
            "FATAL",
            "28000",
            "no pg_hba.conf entry for host, no encryption",
        )])
        .await;
        drop(s);
        let (sock, _) = l.accept().await.unwrap();
        tls_server(sock, "server").await;
    })
    .await;
    let mut p = params(port);
    p.sslmode = SslMode::Allow;
    assert!(connect(&p).await.unwrap().is_tls());
    server.abort();
}

#[test]
fn connect_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let p = params(1);
    let fut = ReplicationConn::connect(&p);
    assert_send(&fut);
}

#[test]
fn stream_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    async fn all(c: &mut ReplicationConn) {
        let _ = c.read_copy_message().await;
        let _ = c.send_copy_data(b"x").await;
        let _ = c.finish_copy().await;
        let _ = c.identify_system().await;
    }
    fn check(c: &mut ReplicationConn) {
        assert_send(&all(c));
    }
    let _ = check;
}

// ---- target_session_attrs ----

/// A server that reports `in_hot_standby` and `default_transaction_read_only` as a
/// PostgreSQL 14+ server does, for `connections` connections in turn.
async fn reporting_server(
    hot_standby: bool,
    default_read_only: bool,
    connections: usize,
) -> (u16, JoinHandle<()>) {
    let on_off = |b: bool| if b { "on" } else { "off" };
    serve(move |l| async move {
        for _ in 0..connections {
            let (sock, _) = l.accept().await.unwrap();
            let mut s = Fake::new(sock);
            s.startup().await;
            s.send(&[
                auth(Authentication::Ok),
                param("server_version", "15.4"),
                param("in_hot_standby", on_off(hot_standby)),
                param("default_transaction_read_only", on_off(default_read_only)),
                BackendMessage::ReadyForQuery { status: b'I' },
            ])
            .await;
            // Rejected servers are told goodbye; the chosen one is closed by the test.
            assert!(matches!(
                s.try_recv().await,
                Some(FrontendMessage::Terminate) | None
            ));
        }
    })
    .await
}

fn two_hosts(ports: [u16; 2], want: TargetSessionAttrs) -> ConnParams {
    let mut p = params_for(
        vec![Host::Tcp("127.0.0.1".into()), Host::Tcp("127.0.0.1".into())],
        ports.to_vec(),
    );
    p.target_session_attrs = want;
    p
}

/// Each kind of session is found behind a server of the other kind: read-write and primary
/// skip a standby listed first, standby, read-only and prefer-standby skip a primary.
#[tokio::test]
async fn a_server_of_the_wrong_kind_is_skipped() {
    use TargetSessionAttrs::*;
    for (first_is_standby, wants, found) in [
        (true, &[ReadWrite, Primary][..], "off"),
        (false, &[Standby, ReadOnly, PreferStandby][..], "on"),
    ] {
        for &want in wants {
            let (first, s1) = reporting_server(first_is_standby, false, 1).await;
            let (second, s2) = reporting_server(!first_is_standby, false, 1).await;
            let conn = connect(&two_hosts([first, second], want)).await.unwrap();
            assert_eq!(conn.parameter("in_hot_standby"), Some(found), "{want}");
            conn.close().await;
            s1.await.unwrap();
            s2.await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_read_only_primary_is_a_primary_but_not_writable() {
    let (fenced, s1) = reporting_server(false, true, 2).await;
    let (standby, s2) = reporting_server(true, false, 1).await;
    let conn = connect(&two_hosts([standby, fenced], TargetSessionAttrs::Primary))
        .await
        .unwrap();
    assert_eq!(conn.parameter("default_transaction_read_only"), Some("on"));
    conn.close().await;
    let err = connect(&two_hosts([fenced, fenced], TargetSessionAttrs::ReadWrite))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NoSuitableHost { .. }), "{err:?}");
    s1.await.unwrap();
    s2.await.unwrap();
}

#[tokio::test]
async fn no_matching_host_names_each_host_and_why() {
    let (a, s1) = reporting_server(true, false, 1).await;
    let (b, s2) = reporting_server(true, false, 1).await;
    let err = connect(&two_hosts([a, b], TargetSessionAttrs::ReadWrite))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "could not make a writable connection to any of the hosts (target_session_attrs=read-write):"
        ),
        "{msg}"
    );
    for port in [a, b] {
        assert!(
            msg.contains(&format!("port {port}: session is read-only")),
            "{msg}"
        );
    }
    // Not final: after a failover one of them may be the primary.
    assert!(!err.is_fatal());
    assert!(err.hint().unwrap().contains("failover"), "{:?}", err.hint());
    s1.await.unwrap();
    s2.await.unwrap();

    let (a, s1) = reporting_server(false, false, 1).await;
    let mut p = two_hosts([a, a], TargetSessionAttrs::Standby);
    p.hosts.truncate(1);
    p.ports.truncate(1);
    let err = connect(&p).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("could not make a standby connection")
            && err
                .to_string()
                .contains("server is not in hot standby mode"),
        "{err}"
    );
    s1.await.unwrap();
}

#[tokio::test]
async fn prefer_standby_takes_any_server_in_a_second_pass() {
    // Two primaries: the first pass rejects both, the second takes the first.
    let (a, s1) = reporting_server(false, false, 2).await;
    let (b, s2) = reporting_server(false, false, 1).await;
    let conn = connect(&two_hosts([a, b], TargetSessionAttrs::PreferStandby))
        .await
        .unwrap();
    conn.close().await;
    s1.await.unwrap();
    s2.await.unwrap();
}

#[tokio::test]
async fn servers_without_the_reports_are_asked_with_show() {
    // A pre-14 server: no in_hot_standby / default_transaction_read_only reports.
    let (port, server) = serve_one(|mut s| async move {
        s.trust().await;
        assert_eq!(s.expect_query().await, "SHOW transaction_read_only");
        s.answer_rows(
            &[("transaction_read_only", TEXT_OID)],
            &[vec![Some(b"on")]],
            "SHOW",
        )
        .await;
        assert_eq!(s.expect_query().await, "SHOW default_transaction_read_only");
        s.answer_rows(
            &[("default_transaction_read_only", TEXT_OID)],
            &[vec![Some(b"off")]],
            "SHOW",
        )
        .await;
        s.until_closed().await;
    })
    .await;
    let mut p = params(port);
    p.target_session_attrs = TargetSessionAttrs::Standby;
    let conn = connect(&p).await.unwrap();
    conn.close().await;
    server.await.unwrap();
}

// ---- channel binding ----

/// SSLRequest -> 'S' -> handshake with the `server` certificate; the TLS side as a Fake.
async fn accept_tls(sock: tokio::net::TcpStream) -> Fake {
    let mut s = Fake::new(sock);
    assert_eq!(s.startup().await, StartupPacket::SslRequest);
    s.send_raw(b"S").await;
    let tls = tls_acceptor("server").accept(s.io).await.unwrap();
    Fake::new(tls)
}

/// `p=tls-server-end-point,,` and the SHA-256 of the test server certificate (ECDSA with
/// SHA-256), computed here with rustls' hash rather than the code under test.
fn server_end_point_binding() -> Vec<u8> {
    let cert = CertificateDer::pem_file_iter(cert_path("server.crt"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let mut b = b"p=tls-server-end-point,,".to_vec();
    b.extend(scram::sha256(&cert));
    b
}

async fn binding_case(
    mode: ChannelBindingMode,
    offered: &'static [&'static str],
    expect_mechanism: &'static str,
    expect_binding: Vec<u8>,
) -> Result<ReplicationConn, ClientError> {
    let (port, server) = serve(move |l| async move {
        let (sock, _) = l.accept().await.unwrap();
        let s = accept_tls(sock).await;
        let binding: &'static [u8] = Box::leak(expect_binding.into_boxed_slice());
        scram_exchange(
            s,
            "pw",
            ScramEnding::Honest,
            offered,
            expect_mechanism,
            binding,
        )
        .await;
    })
    .await;
    let mut p = params(port);
    p.sslmode = SslMode::Require;
    p.channel_binding = mode;
    p.password = Some(Password("pw".into()));
    let result = connect(&p).await;
    if result.is_err() {
        server.abort();
    } else {
        // The exchange was checked by the server script.
        assert!(!server.is_finished() || server.await.is_ok());
    }
    result
}

#[tokio::test]
async fn scram_plus_binds_to_the_server_certificate_over_tls() {
    for mode in [ChannelBindingMode::Prefer, ChannelBindingMode::Require] {
        let conn = binding_case(
            mode,
            &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"],
            "SCRAM-SHA-256-PLUS",
            server_end_point_binding(),
        )
        .await
        .unwrap();
        assert!(conn.is_tls());
        conn.close().await;
    }
    // disable: plain SCRAM, and 'n' (binding not wanted).
    binding_case(
        ChannelBindingMode::Disable,
        &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"],
        "SCRAM-SHA-256",
        b"n,,".to_vec(),
    )
    .await
    .unwrap()
    .close()
    .await;
    // prefer, PLUS not offered over TLS: 'y' tells the server we could have bound.
    binding_case(
        ChannelBindingMode::Prefer,
        &["SCRAM-SHA-256"],
        "SCRAM-SHA-256",
        b"y,,".to_vec(),
    )
    .await
    .unwrap()
    .close()
    .await;
}

#[tokio::test]
async fn channel_binding_require_refuses_what_cannot_bind() {
    // TLS, but the server does not offer SCRAM-SHA-256-PLUS.
    let err = binding_case(
        ChannelBindingMode::Require,
        &["SCRAM-SHA-256"],
        "SCRAM-SHA-256",
        b"y,,".to_vec(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::ChannelBinding(_)), "{err:?}");
    assert!(
        err.to_string().starts_with(
            "channel binding is required, but server did not offer an authentication method that supports channel binding"
        ),
        "{err}"
    );
    assert!(err.is_fatal());
    assert!(err.hint().unwrap().contains("sslmode=require"));

    // Without TLS: trust and md5 are refused, each with libpq's message, before any
    // password is sent.
    for (request, needle) in [
        (
            Authentication::Ok,
            "server authenticated client without channel binding",
        ),
        (
            Authentication::Md5Password { salt: [1; 4] },
            "not supported by server's authentication request",
        ),
        (
            Authentication::Sasl {
                mechanisms: vec!["SCRAM-SHA-256".into()],
            },
            "(the connection does not use SSL)",
        ),
    ] {
        let (port, server) = serve_one(move |mut s| async move {
            s.startup().await;
            s.send(&[auth(request)]).await;
            assert!(matches!(
                s.try_recv().await,
                None | Some(FrontendMessage::Terminate)
            ));
        })
        .await;
        let mut p = params(port);
        p.channel_binding = ChannelBindingMode::Require;
        p.password = Some(Password("pw".into()));
        let err = connect(&p).await.unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
        server.await.unwrap();
    }
}
