//! A physical replication connection, as pg_receivewal opens one: startup with
//! `replication=true`, authentication (trust, cleartext, md5, SCRAM-SHA-256 with channel
//! binding over TLS), TLS per `sslmode`, libpq's multi-host, `target_session_attrs` and
//! `connect_timeout` rules; then Simple Query commands
//! (`IDENTIFY_SYSTEM`, `TIMELINE_HISTORY`, slots) and the CopyBoth stream of
//! `START_REPLICATION`.
//!
//! The read side keeps everything in one `BytesMut`: a CopyData payload is split out of it
//! and frozen, and the only `.await` in [`ReplicationConn::read_copy_message`] is the socket
//! read, which makes it cancel-safe inside `tokio::select!`. For catch-up there is a second
//! way to read the stream ([`ReplicationConn::read_stream_item`] and
//! [`ReplicationConn::read_wal_into`]): headers through the buffer, WAL payloads straight
//! from the socket into the caller's (page-aligned) memory. A command interrupted half-way
//! leaves the connection in a state that the next command first drains up to ReadyForQuery.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

pub use super::backend::ServerError;
use super::backend::{Authentication, BackendMessage};
use super::frame::{frame_len, parse_frame, tag_name, ProtocolError};
use super::frontend;
use super::replication::{ReplicationMessage, XLOG_DATA_HEADER_LEN};
use super::stream::Stream;
use super::target::{self, Check, ServerState};
use super::tls::{self, TlsConfigError, TlsSetup};
use crate::conninfo::{
    self, ChannelBindingMode, ConnParams, Host, Keepalives, Password, PasswordPrompt, SessionKind,
    SslMode, TargetSessionAttrs,
};
use crate::wal::{Lsn, TimeLineId};

/// Largest server message accepted. Replication traffic is at most 128 KiB of WAL per
/// message; this only stops a confused peer from making us allocate gigabytes.
pub const MAX_SERVER_MESSAGE: usize = 64 << 20;
/// The read buffer grows in chunks of this size; each chunk serves several 128 KiB 'w'
/// messages before it has to be replaced.
const READ_CHUNK: usize = 1 << 20;
/// Never issue a read into less free space than this.
const MIN_READ: usize = 64 << 10;
/// libpq raises smaller connect_timeout values to 2 s.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

const PASSWORD_HINT: &str =
    "set PGPASSWORD, add the password to ~/.pgpass, or use -W to be asked for it";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP or Unix-socket connection could not be opened.
    #[error("could not connect to {target}: {source}")]
    Connect {
        target: String,
        source: std::io::Error,
    },
    #[error("could not translate host name \"{host}\" to address: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("connection to {target} timed out")]
    Timeout { target: String },
    /// Every host was tried; each attempt's error, in order.
    #[error("could not connect to any host:{}", .0.iter().map(|e| format!("\n  {e}")).collect::<String>())]
    AllHostsFailed(Vec<ClientError>),
    /// A server accepted the connection but is not the kind `target_session_attrs` wants;
    /// the connection was closed and the next host tried.
    #[error("{target}: {reason}")]
    WrongSessionKind {
        target: String,
        reason: &'static str,
    },
    /// No host was the kind `target_session_attrs` wants; each attempt's error, in order.
    #[error(
        "could not make a {}connection to any of the hosts (target_session_attrs={want}):{}",
        target::wanted(*.want),
        .errors.iter().map(|e| format!("\n  {e}")).collect::<String>()
    )]
    NoSuitableHost {
        want: TargetSessionAttrs,
        errors: Vec<ClientError>,
    },
    /// An ErrorResponse; `code` is the SQLSTATE callers decide on.
    #[error("{0}")]
    Server(ServerError),
    #[error("password authentication required but no password was supplied")]
    PasswordRequired,
    #[error("authentication method \"{0}\" requested by the server is not supported")]
    UnsupportedAuth(String),
    /// SCRAM exchange failed on our side (e.g. the server's proof did not verify).
    #[error("SCRAM authentication failed: {0}")]
    Auth(String),
    /// `channel_binding=require` could not be met, or the binding data not computed.
    #[error("{0}")]
    ChannelBinding(String),
    #[error("{}", .0.message)]
    TlsConfig(TlsConfigError),
    #[error("SSL connection to {target} failed: {message}")]
    Tls { target: String, message: String },
    #[error("{target} does not support SSL, but SSL was required")]
    SslNotSupported { target: String },
    #[error("replication slot \"{slot}\" is a {slot_type} slot, expected a physical one")]
    WrongSlotType { slot: String, slot_type: String },
    #[error("server closed the connection unexpectedly")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl From<ProtocolError> for ClientError {
    fn from(e: ProtocolError) -> Self {
        ClientError::Protocol(e.0)
    }
}

impl ClientError {
    /// Errors a reconnect cannot fix: authentication and configuration problems. Network
    /// trouble, timeouts, TLS handshake failures and protocol confusion may pass.
    /// What to do about it, printed by the caller on its own line.
    pub fn hint(&self) -> Option<String> {
        match self {
            ClientError::Server(e) => e.hint.clone(),
            ClientError::PasswordRequired => Some(PASSWORD_HINT.to_string()),
            ClientError::UnsupportedAuth(_) => Some(
                "allow scram-sha-256, md5, password or trust for replication connections from this host in pg_hba.conf".to_string(),
            ),
            ClientError::ChannelBinding(_) => Some(
                "channel_binding=require needs an SSL connection (sslmode=require or stricter) and scram-sha-256 authentication for this user in pg_hba.conf; use channel_binding=prefer to allow other methods".to_string(),
            ),
            ClientError::TlsConfig(e) => e.hint.clone(),
            ClientError::AllHostsFailed(all) => all.iter().find_map(ClientError::hint),
            ClientError::NoSuitableHost { want, errors } => errors
                .iter()
                .find_map(ClientError::hint)
                .or_else(|| Some(format!(
                    "none of the servers is a {}server now; during a failover, try again once it is over (a walferry that is already streaming keeps retrying by itself)",
                    target::wanted(*want)
                ))),
            _ => None,
        }
    }

    pub fn is_fatal(&self) -> bool {
        match self {
            ClientError::Server(e) => e.code.starts_with("28") || e.code == "42501",
            ClientError::PasswordRequired
            | ClientError::UnsupportedAuth(_)
            | ClientError::Auth(_)
            | ClientError::ChannelBinding(_)
            | ClientError::TlsConfig(_)
            | ClientError::SslNotSupported { .. }
            | ClientError::WrongSlotType { .. } => true,
            ClientError::AllHostsFailed(all) => all.iter().all(ClientError::is_fatal),
            // The kind of a server changes (promotion): trying again may find one.
            ClientError::NoSuitableHost { .. } | ClientError::WrongSessionKind { .. } => false,
            _ => false,
        }
    }

    /// The server's SQLSTATE, when this is a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ClientError::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// Result of IDENTIFY_SYSTEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    pub system_id: u64,
    pub timeline: TimeLineId,
    pub xlogpos: Lsn,
}

/// One message of the CopyBoth phase.
#[derive(Debug)]
pub enum CopyMessage {
    /// CopyData payload (starts with the replication tag 'w' / 'k'), a zero-copy slice of
    /// the read buffer.
    Data(Bytes),
    /// The server ended the copy (end of timeline or shutdown); call `finish_copy`.
    Done,
}

/// An item of the stream for [`ReplicationConn::read_stream_item`].
#[derive(Debug)]
pub enum StreamItem {
    Wal(WalStart),
    /// Anything but XLogData: a keepalive (as CopyData), or the end of the stream.
    Copy(CopyMessage),
}

/// The start of an XLogData message.
#[derive(Debug)]
pub struct WalStart {
    pub wal_start: Lsn,
    pub wal_end: Lsn,
    pub send_time: i64,
    /// The payload bytes that arrived with the header (possibly all of them).
    pub head: Bytes,
    /// Payload bytes still to read with [`ReplicationConn::read_wal_into`].
    pub rest: usize,
}

/// How much to read while waiting for the next message's header: enough for several small
/// messages, little enough that a catch-up payload mostly bypasses the buffer.
const HEADER_READ: usize = 4096;

/// Where the conversation with the server stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between commands: ReadyForQuery seen.
    Idle,
    /// A command was sent (or interrupted); read up to ReadyForQuery before the next one.
    Draining,
    /// Inside START_REPLICATION's CopyBoth, both directions open.
    CopyBoth,
    /// Inside BASE_BACKUP's CopyOut: the server sends, we only read.
    CopyOut,
    /// BASE_BACKUP's CopyOut ended: the end-position result set and ReadyForQuery follow.
    AfterCopyOut,
    /// The server sent CopyDone; we may still send CopyData until `finish_copy`.
    ServerCopyDone,
    /// The server ended the stream with CommandComplete and is going away (a walsender
    /// stopping with its server): nothing follows.
    ServerEnded,
    /// Framing was lost or the server hung up: nothing more can be done.
    Broken,
}

pub struct ReplicationConn {
    stream: Stream,
    /// Bytes received and not yet handed out; frames are split off the front.
    read_buf: BytesMut,
    /// Bytes to send; whatever a cancelled write left here goes out first next time.
    write_buf: BytesMut,
    state: State,
    /// Bytes of an XLogData payload that the caller still has to read
    /// ([`ReplicationConn::read_wal_into`]); nothing else can be read before.
    wal_rest: usize,
    parameters: HashMap<String, String>,
    backend_key: Option<(i32, i32)>,
}

impl std::fmt::Debug for ReplicationConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConn")
            .field("tls", &self.stream.is_tls())
            .field("state", &self.state)
            .field("buffered", &self.read_buf.len())
            .finish()
    }
}

/// One place to connect to.
struct Target<'a> {
    host: &'a Host,
    port: u16,
}

impl ReplicationConn {
    /// Open a physical replication connection: hosts in order, each address of each host,
    /// like libpq. Connection failures and timeouts move on to the next address; an error
    /// reported by a server (e.g. authentication failed) ends the search, as in libpq,
    /// except "cannot connect now" (starting up, shutting down), which moves on to the
    /// next host. A
    /// server that is not the kind `target_session_attrs` asks for is left for the next
    /// host; `prefer-standby` takes any server in a second pass when no standby was found.
    pub async fn connect(params: &ConnParams) -> Result<Self, ClientError> {
        let tls = tls::setup(params).map_err(ClientError::TlsConfig)?;
        let mut prompted: Option<Password> = None;
        if params.prompt == PasswordPrompt::Always && params.password.is_none() {
            prompted = Some(Password(conninfo::prompt_password("Password: ")?));
        }
        loop {
            let first = Self::connect_any(
                params,
                tls.as_ref(),
                prompted.as_ref(),
                params.target_session_attrs,
            )
            .await;
            let result = match first {
                Err(e @ ClientError::NoSuitableHost { .. })
                    if params.target_session_attrs == TargetSessionAttrs::PreferStandby =>
                {
                    tracing::debug!("{e}; trying again for any server (prefer-standby)");
                    Self::connect_any(
                        params,
                        tls.as_ref(),
                        prompted.as_ref(),
                        TargetSessionAttrs::Any,
                    )
                    .await
                }
                other => other,
            };
            match result {
                // Ask outside the connection attempt, as pg_receivewal does: the server's
                // authentication_timeout must not run while someone types.
                Err(ClientError::PasswordRequired)
                    if prompted.is_none()
                        && params.prompt == PasswordPrompt::IfNeeded
                        && std::io::stdin().is_terminal() =>
                {
                    prompted = Some(Password(conninfo::prompt_password("Password: ")?));
                }
                other => return other,
            }
        }
    }

    async fn connect_any(
        params: &ConnParams,
        tls: Option<&TlsSetup>,
        prompted: Option<&Password>,
        want: TargetSessionAttrs,
    ) -> Result<Self, ClientError> {
        let timeout = params
            .connect_timeout
            .filter(|t| !t.is_zero())
            .map(|t| t.max(MIN_CONNECT_TIMEOUT));
        let mut errors = Vec::new();
        let targets: Vec<Target<'_>> = params
            .hosts
            .iter()
            .enumerate()
            .map(|(i, host)| Target {
                host,
                port: params
                    .ports
                    .get(i)
                    .or(params.ports.first())
                    .copied()
                    .unwrap_or(5432),
            })
            .collect();
        if targets.is_empty() {
            return Err(ClientError::Protocol("no host to connect to".into()));
        }
        for target in &targets {
            let password = || {
                prompted
                    .cloned()
                    .or_else(|| conninfo::password_for(params, target.host, target.port))
            };
            match target.host {
                Host::Unix(dir) => {
                    let path = dir.join(format!(".s.PGSQL.{}", target.port));
                    let desc = format!("server on socket \"{}\"", path.display());
                    let attempt = async {
                        let conn =
                            Self::connect_unix(path, desc.clone(), params, &password).await?;
                        conn.settle(want, &desc).await
                    };
                    match with_timeout(timeout, &desc, attempt).await {
                        Ok(conn) => return Ok(conn),
                        Err(e) if ends_search(&e) => return Err(e),
                        Err(e) => errors.push(e),
                    }
                }
                Host::Tcp(name) => {
                    let lookup = tokio::net::lookup_host((name.as_str(), target.port));
                    let addrs: Vec<SocketAddr> = match with_timeout(timeout, name, async {
                        lookup.await.map_err(|source| ClientError::Resolve {
                            host: name.clone(),
                            source,
                        })
                    })
                    .await
                    {
                        Ok(a) => a.collect(),
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    };
                    for addr in addrs {
                        let desc =
                            format!("server at \"{name}\" ({}), port {}", addr.ip(), addr.port());
                        let attempt = async {
                            let conn = Self::connect_tcp(addr, name, &desc, params, tls, &password)
                                .await?;
                            conn.settle(want, &desc).await
                        };
                        match with_timeout(timeout, &desc, attempt).await {
                            Ok(conn) => return Ok(conn),
                            Err(e) if ends_search(&e) => return Err(e),
                            // As libpq: the server's kind (or state) is the host's, so
                            // its other addresses are skipped.
                            Err(e) if cannot_connect_now(&e) => {
                                tracing::debug!("{desc}: {e}");
                                errors.push(e);
                                break;
                            }
                            Err(e @ ClientError::WrongSessionKind { .. }) => {
                                tracing::debug!("{e}");
                                errors.push(e);
                                break;
                            }
                            Err(e) => {
                                tracing::debug!("{e}");
                                errors.push(e);
                            }
                        }
                    }
                }
            }
        }
        if want != TargetSessionAttrs::Any
            && errors
                .iter()
                .any(|e| matches!(e, ClientError::WrongSessionKind { .. }))
        {
            Err(ClientError::NoSuitableHost { want, errors })
        } else if errors.len() == 1 {
            Err(errors.remove(0))
        } else {
            Err(ClientError::AllHostsFailed(errors))
        }
    }

    /// Keep the connection if the server is the kind wanted; otherwise say goodbye and
    /// report why (libpq closes it politely too).
    async fn settle(mut self, want: TargetSessionAttrs, desc: &str) -> Result<Self, ClientError> {
        let mut state = ServerState::reported(|name| self.parameter(name));
        // At most two SHOWs are ever asked for; the bound guards against a loop.
        for _ in 0..4 {
            match target::check(want, &state) {
                Check::Accept => return Ok(self),
                Check::Reject(reason) => {
                    self.close().await;
                    return Err(ClientError::WrongSessionKind {
                        target: desc.to_string(),
                        reason,
                    });
                }
                Check::Show(setting) => {
                    let value = self.show(setting).await?;
                    state.learn(setting, &value);
                }
            }
        }
        Err(ClientError::Protocol(format!(
            "could not tell whether {desc} matches target_session_attrs={want}"
        )))
    }

    async fn connect_unix(
        path: PathBuf,
        desc: String,
        params: &ConnParams,
        password: &(dyn Fn() -> Option<Password> + Sync),
    ) -> Result<Self, ClientError> {
        // libpq never uses TLS on Unix sockets, whatever sslmode says.
        let sock = UnixStream::connect(&path)
            .await
            .map_err(|source| ClientError::Connect {
                target: desc,
                source,
            })?;
        Self::startup(Stream::Unix(sock), params, password).await
    }

    /// One address, with sslmode's fallbacks (each a fresh connection, as in libpq).
    async fn connect_tcp(
        addr: SocketAddr,
        host: &str,
        desc: &str,
        params: &ConnParams,
        tls: Option<&TlsSetup>,
        password: &(dyn Fn() -> Option<Password> + Sync),
    ) -> Result<Self, ClientError> {
        let Some(tls) = tls else {
            let tcp = tcp_connect(addr, desc, &params.keepalives).await?;
            return Self::startup(Stream::Tcp(tcp), params, password).await;
        };
        match params.sslmode {
            SslMode::Allow => {
                // Plaintext first; if the server turns that down, try again with TLS.
                let tcp = tcp_connect(addr, desc, &params.keepalives).await?;
                match Self::startup(Stream::Tcp(tcp), params, password).await {
                    Err(ClientError::Server(first)) => {
                        tracing::debug!("{desc}: {first}; retrying with SSL (sslmode=allow)");
                        let stream =
                            Self::open_tls(addr, host, desc, tls, true, &params.keepalives).await?;
                        Self::startup(stream, params, password).await
                    }
                    other => other,
                }
            }
            SslMode::Prefer => {
                // TLS if offered; if the handshake or the TLS session's startup fails,
                // once more without TLS.
                let first =
                    match Self::open_tls(addr, host, desc, tls, false, &params.keepalives).await {
                        Ok(stream) if stream.is_tls() => {
                            match Self::startup(stream, params, password).await {
                                Err(e @ ClientError::Server(_)) => e,
                                other => return other,
                            }
                        }
                        Ok(plain) => return Self::startup(plain, params, password).await,
                        Err(e @ ClientError::Tls { .. }) => e,
                        Err(e) => return Err(e),
                    };
                tracing::debug!("{first}; retrying without SSL (sslmode=prefer)");
                let tcp = tcp_connect(addr, desc, &params.keepalives).await?;
                Self::startup(Stream::Tcp(tcp), params, password).await
            }
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                let stream =
                    Self::open_tls(addr, host, desc, tls, true, &params.keepalives).await?;
                Self::startup(stream, params, password).await
            }
            SslMode::Disable => unreachable!("tls::setup returns no TLS for sslmode=disable"),
        }
    }

    /// Connect, send SSLRequest, and on 'S' do the handshake. On 'N' the plaintext stream
    /// is returned unless TLS is required.
    async fn open_tls(
        addr: SocketAddr,
        host: &str,
        desc: &str,
        tls: &TlsSetup,
        required: bool,
        keepalives: &Keepalives,
    ) -> Result<Stream, ClientError> {
        let mut tcp = tcp_connect(addr, desc, keepalives).await?;
        let mut req = BytesMut::new();
        frontend::ssl_request(&mut req);
        tcp.write_all(&req).await?;
        // Read exactly one byte: anything the server sent after 'S' but before the
        // handshake must not be taken as protected data (CVE-2021-23222).
        let answer = match tcp.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(ClientError::Closed)
            }
            Err(e) => return Err(e.into()),
        };
        match answer {
            b'S' => {
                let name = tls::server_name(host, addr.ip(), tls.verify)
                    .map_err(ClientError::TlsConfig)?;
                let connector = TlsConnector::from(Arc::clone(&tls.config));
                match connector.connect(name, tcp).await {
                    Ok(s) => Ok(Stream::Tls(Box::new(s))),
                    Err(e) => Err(ClientError::Tls {
                        target: desc.to_string(),
                        message: describe_tls_error(&e),
                    }),
                }
            }
            b'N' if required => Err(ClientError::SslNotSupported {
                target: desc.to_string(),
            }),
            b'N' => Ok(Stream::Tcp(tcp)),
            // A pre-7.0 server answers ErrorResponse to the unknown request code.
            other => Err(ClientError::Protocol(format!(
                "received invalid response to SSL negotiation: {}",
                tag_name(other)
            ))),
        }
    }

    /// StartupMessage, authentication, then everything up to the first ReadyForQuery.
    async fn startup(
        stream: Stream,
        params: &ConnParams,
        password: &(dyn Fn() -> Option<Password> + Sync),
    ) -> Result<Self, ClientError> {
        let mut conn = ReplicationConn {
            stream,
            read_buf: BytesMut::with_capacity(64 << 10),
            write_buf: BytesMut::with_capacity(1024),
            state: State::Draining,
            wal_rest: 0,
            parameters: HashMap::new(),
            backend_key: None,
        };
        let mut startup_params = vec![("user", params.user.as_str())];
        match &params.session {
            SessionKind::PhysicalReplication => {
                startup_params.extend([("database", "replication"), ("replication", "true")])
            }
            SessionKind::Sql { dbname } => startup_params.push(("database", dbname.as_str())),
        }
        startup_params.extend([
            ("application_name", params.application_name.as_str()),
            ("client_encoding", "UTF8"),
        ]);
        frontend::startup_message(&startup_params, &mut conn.write_buf)?;
        conn.flush_writes().await?;

        let need_password = || password().ok_or(ClientError::PasswordRequired);
        let binding_mode = params.channel_binding;
        let require_binding = binding_mode == ChannelBindingMode::Require;
        let mut scram: Option<(ScramSha256, bool)> = None;
        let mut bound = false;
        loop {
            match conn.next_message().await? {
                BackendMessage::Authentication(auth) => match auth {
                    Authentication::Ok => {
                        // A server that skips the end of SCRAM has not proved it knows the
                        // password (libpq checks this too).
                        if matches!(scram, Some((_, false))) {
                            return Err(ClientError::Auth(
                                "server reported success before completing the SCRAM exchange"
                                    .into(),
                            ));
                        }
                        // As libpq's check_expected_areq: trust (or anything but a
                        // finished SCRAM-PLUS) is not channel binding.
                        if require_binding && !bound {
                            return Err(ClientError::ChannelBinding(
                                "channel binding required, but server authenticated client without channel binding".into(),
                            ));
                        }
                    }
                    Authentication::CleartextPassword | Authentication::Md5Password { .. }
                        if require_binding =>
                    {
                        return Err(ClientError::ChannelBinding(
                            "channel binding required but not supported by server's authentication request".into(),
                        ));
                    }
                    Authentication::CleartextPassword => {
                        let pw = need_password()?;
                        frontend::password_message(pw.0.as_bytes(), &mut conn.write_buf)?;
                        conn.flush_writes().await?;
                    }
                    Authentication::Md5Password { salt } => {
                        let pw = need_password()?;
                        let hash = md5_hash(params.user.as_bytes(), pw.0.as_bytes(), salt);
                        frontend::password_message(hash.as_bytes(), &mut conn.write_buf)?;
                        conn.flush_writes().await?;
                    }
                    Authentication::Sasl { mechanisms } => {
                        let (mechanism, binding) =
                            choose_sasl(&mechanisms, binding_mode, conn.stream.peer_certificate())?;
                        bound = mechanism == SCRAM_SHA_256_PLUS;
                        let pw = need_password()?;
                        let s = ScramSha256::new(pw.0.as_bytes(), binding);
                        frontend::sasl_initial_response(
                            mechanism,
                            s.message(),
                            &mut conn.write_buf,
                        )?;
                        conn.flush_writes().await?;
                        scram = Some((s, false));
                    }
                    Authentication::SaslContinue(data) => {
                        let Some((s, _)) = scram.as_mut() else {
                            return Err(ClientError::Protocol(
                                "SASL continuation without a SASL exchange".into(),
                            ));
                        };
                        s.update(&data)
                            .map_err(|e| ClientError::Auth(e.to_string()))?;
                        frontend::sasl_response(s.message(), &mut conn.write_buf);
                        conn.flush_writes().await?;
                    }
                    Authentication::SaslFinal(data) => {
                        let Some((s, done)) = scram.as_mut() else {
                            return Err(ClientError::Protocol(
                                "SASL final message without a SASL exchange".into(),
                            ));
                        };
                        s.finish(&data)
                            .map_err(|e| ClientError::Auth(e.to_string()))?;
                        *done = true;
                    }
                    Authentication::KerberosV5 => {
                        return Err(ClientError::UnsupportedAuth("Kerberos V5".into()))
                    }
                    Authentication::Gss | Authentication::GssContinue(_) => {
                        return Err(ClientError::UnsupportedAuth("GSSAPI".into()))
                    }
                    Authentication::Sspi => {
                        return Err(ClientError::UnsupportedAuth("SSPI".into()))
                    }
                    Authentication::ScmCredential => {
                        return Err(ClientError::UnsupportedAuth("SCM credentials".into()))
                    }
                },
                BackendMessage::ParameterStatus { name, value } => {
                    conn.parameters.insert(name, value);
                }
                BackendMessage::BackendKeyData {
                    process_id,
                    secret_key,
                } => conn.backend_key = Some((process_id, secret_key)),
                BackendMessage::NoticeResponse(n) => log_notice(&n),
                // We ask for 3.0 without options, so there is nothing to downgrade.
                BackendMessage::NegotiateProtocolVersion { .. } => {}
                BackendMessage::ErrorResponse(e) => return Err(ClientError::Server(e)),
                BackendMessage::ReadyForQuery { .. } => {
                    conn.state = State::Idle;
                    return Ok(conn);
                }
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected message during startup: {}",
                        message_kind(&other)
                    )))
                }
            }
        }
    }

    /// A ParameterStatus value the server reported (`server_version`, `integer_datetimes`...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// `server_version` as PG_VERSION_NUM, e.g. 150004 for "15.4 (Debian 15.4-1)".
    pub fn server_version_num(&self) -> Option<u32> {
        self.parameter("server_version")
            .and_then(parse_server_version)
    }

    /// Process id and secret key for a CancelRequest.
    pub fn backend_key(&self) -> Option<(i32, i32)> {
        self.backend_key
    }

    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    // ---- I/O primitives: every await is a socket read or write ----

    async fn flush_writes(&mut self) -> Result<(), ClientError> {
        if let Err(e) = self.write_all_pending().await {
            self.state = State::Broken;
            return Err(e);
        }
        Ok(())
    }

    async fn write_all_pending(&mut self) -> Result<(), ClientError> {
        // write_all_buf advances the buffer as bytes go out, so a cancelled call leaves
        // exactly the unsent tail, and framing stays intact.
        self.stream.write_all_buf(&mut self.write_buf).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Read more bytes, making room first so a whole frame fits contiguously.
    async fn fill(&mut self) -> Result<(), ClientError> {
        let have = self.read_buf.len();
        let want = match frame_len(&self.read_buf, MAX_SERVER_MESSAGE) {
            Ok(Some(total)) if total > have => (total - have).max(MIN_READ),
            Ok(_) => MIN_READ,
            Err(e) => {
                self.state = State::Broken;
                return Err(e.into());
            }
        };
        if self.read_buf.capacity() - have < want {
            // When every frame handed out earlier is gone this reuses the allocation;
            // otherwise a fresh chunk (copying only the partial frame).
            self.read_buf.reserve(want.max(READ_CHUNK));
        }
        let read = self.stream.read_buf(&mut self.read_buf).await;
        self.bytes_read(read).map(drop)
    }

    /// Take in what the socket holds already, without waiting; true if anything arrived.
    /// The synchronous receive path asks before it fsyncs, so that WAL which is already
    /// here joins the group, as a walreceiver drains its socket before it flushes.
    pub fn fill_ready(&mut self) -> Result<bool, ClientError> {
        self.check_streaming("fill_ready")?;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let fill = std::pin::pin!(self.fill());
        // `fill` is one socket read: dropped while pending, it has taken nothing.
        match std::future::Future::poll(fill, &mut cx) {
            std::task::Poll::Ready(r) => r.map(|()| true),
            std::task::Poll::Pending => Ok(false),
        }
    }

    /// Read at most `max` bytes into the buffer (one socket read).
    async fn fill_at_most(&mut self, max: usize) -> Result<(), ClientError> {
        self.read_buf.reserve(max);
        let read = (&mut self.stream)
            .take(max as u64)
            .read_buf(&mut self.read_buf)
            .await;
        self.bytes_read(read).map(drop)
    }

    /// The outcome of one socket read: end of stream or an I/O error breaks the connection.
    fn bytes_read(&mut self, read: std::io::Result<usize>) -> Result<usize, ClientError> {
        match read {
            Ok(0) => {
                self.state = State::Broken;
                Err(ClientError::Closed)
            }
            Ok(n) => Ok(n),
            Err(e) => {
                self.state = State::Broken;
                Err(e.into())
            }
        }
    }

    async fn next_frame(&mut self) -> Result<super::frame::Frame, ClientError> {
        loop {
            match parse_frame(&mut self.read_buf, MAX_SERVER_MESSAGE) {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => self.fill().await?,
                Err(e) => {
                    self.state = State::Broken;
                    return Err(e.into());
                }
            }
        }
    }

    async fn next_message(&mut self) -> Result<BackendMessage, ClientError> {
        let frame = self.next_frame().await?;
        BackendMessage::decode(frame).map_err(|e| {
            self.state = State::Broken;
            e.into()
        })
    }

    /// Get to a state where a new command may be sent.
    async fn ready_for_command(&mut self) -> Result<(), ClientError> {
        match self.state {
            State::Idle => Ok(()),
            State::Draining => {
                loop {
                    match self.next_message().await? {
                        BackendMessage::ReadyForQuery { .. } => break,
                        BackendMessage::ParameterStatus { name, value } => {
                            self.parameters.insert(name, value);
                        }
                        BackendMessage::ErrorResponse(e) | BackendMessage::NoticeResponse(e) => {
                            log_notice(&e)
                        }
                        _ => {}
                    }
                }
                self.state = State::Idle;
                Ok(())
            }
            State::CopyBoth | State::ServerCopyDone | State::ServerEnded => {
                Err(ClientError::Protocol(
                    "a replication stream is in progress; call finish_copy first".into(),
                ))
            }
            State::CopyOut | State::AfterCopyOut => Err(ClientError::Protocol(
                "a base backup is in progress; call finish_base_backup first".into(),
            )),
            State::Broken => Err(ClientError::Protocol(
                "the connection is unusable after an earlier error".into(),
            )),
        }
    }

    async fn send_query(&mut self, sql: &str) -> Result<(), ClientError> {
        self.ready_for_command().await?;
        frontend::query(sql, &mut self.write_buf)?;
        self.state = State::Draining;
        self.flush_writes().await
    }

    // ---- Simple Query ----

    /// Run one command with the Simple Query protocol; rows of raw column values (the
    /// walsender sends everything in text format, except TIMELINE_HISTORY's file content,
    /// which is the file's bytes).
    pub async fn simple_query_raw(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<Bytes>>>, ClientError> {
        self.send_query(sql).await?;
        let mut rows = Vec::new();
        let mut error: Option<ServerError> = None;
        loop {
            let msg = match self.next_message().await {
                Ok(m) => m,
                // A FATAL error is followed by the server hanging up: report the error.
                Err(e) => return Err(error.map(ClientError::Server).unwrap_or(e)),
            };
            match msg {
                BackendMessage::RowDescription(_)
                | BackendMessage::CommandComplete { .. }
                | BackendMessage::EmptyQueryResponse => {}
                BackendMessage::DataRow(values) => rows.push(values),
                BackendMessage::ErrorResponse(e) => error = Some(e),
                BackendMessage::NoticeResponse(n) => log_notice(&n),
                BackendMessage::ParameterStatus { name, value } => {
                    self.parameters.insert(name, value);
                }
                BackendMessage::ReadyForQuery { .. } => {
                    self.state = State::Idle;
                    return match error {
                        Some(e) => Err(ClientError::Server(e)),
                        None => Ok(rows),
                    };
                }
                other => {
                    self.state = State::Broken;
                    return Err(ClientError::Protocol(format!(
                        "unexpected {} in reply to a simple query",
                        message_kind(&other)
                    )));
                }
            }
        }
    }

    /// For a session left idle while other work goes on (`backup --pgdata`'s, whose end
    /// would abort the server's backup): waits until the server ends it, and says how.
    /// Cancel-safe: dropped, it leaves the connection ready for the next command.
    pub async fn closed(&mut self) -> ClientError {
        loop {
            match self.next_message().await {
                Err(e) => return e,
                Ok(BackendMessage::ErrorResponse(e)) => {
                    self.state = State::Broken;
                    return ClientError::Server(e);
                }
                Ok(BackendMessage::ParameterStatus { name, value }) => {
                    self.parameters.insert(name, value);
                }
                Ok(BackendMessage::NoticeResponse(n)) => log_notice(&n),
                Ok(other) => {
                    self.state = State::Broken;
                    return ClientError::Protocol(format!(
                        "unexpected {} on an idle session",
                        message_kind(&other)
                    ));
                }
            }
        }
    }

    /// Run one command; rows of text columns, `None` for NULL.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ClientError> {
        let rows = self.simple_query_raw(sql).await?;
        rows.into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|v| v.map(|b| text(&b)).transpose())
                    .collect()
            })
            .collect()
    }

    /// IDENTIFY_SYSTEM: system identifier, current timeline and WAL flush position.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, ClientError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = single_row(&rows, 3, "IDENTIFY_SYSTEM")?;
        let system_id = column(row, 0, "systemid")?
            .parse::<u64>()
            .map_err(|_| bad_value("IDENTIFY_SYSTEM", "systemid", &row[0]))?;
        let timeline = parse_tli(column(row, 1, "timeline")?)
            .ok_or_else(|| bad_value("IDENTIFY_SYSTEM", "timeline", &row[1]))?;
        let xlogpos = column(row, 2, "xlogpos")?
            .parse::<Lsn>()
            .map_err(|_| bad_value("IDENTIFY_SYSTEM", "xlogpos", &row[2]))?;
        Ok(SystemInfo {
            system_id,
            timeline,
            xlogpos,
        })
    }

    /// TIMELINE_HISTORY n: the history file's name and content, byte for byte.
    pub async fn timeline_history(
        &mut self,
        tli: TimeLineId,
    ) -> Result<(String, Vec<u8>), ClientError> {
        let rows = self
            .simple_query_raw(&format!("TIMELINE_HISTORY {}", tli.0))
            .await?;
        let [row] = &rows[..] else {
            return Err(ClientError::Protocol(format!(
                "TIMELINE_HISTORY returned {} rows, expected 1",
                rows.len()
            )));
        };
        match &row[..] {
            [Some(name), Some(content)] => Ok((text(name)?, content.to_vec())),
            _ => Err(ClientError::Protocol(
                "TIMELINE_HISTORY returned an unexpected row".into(),
            )),
        }
    }

    /// `SHOW name`, e.g. `show("wal_segment_size")` -> `"16MB"`.
    pub async fn show(&mut self, name: &str) -> Result<String, ClientError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            return Err(ClientError::Protocol(format!(
                "invalid setting name {name:?}"
            )));
        }
        let rows = self.simple_query(&format!("SHOW {name}")).await?;
        let row = single_row(&rows, 1, "SHOW")?;
        Ok(column(row, 0, name)?.to_string())
    }

    /// READ_REPLICATION_SLOT (PostgreSQL 15+): `None` when the slot does not exist;
    /// `Some((Lsn::INVALID, TimeLineId(0)))` for a slot that has not reserved WAL yet.
    pub async fn read_replication_slot(
        &mut self,
        name: &str,
    ) -> Result<Option<(Lsn, TimeLineId)>, ClientError> {
        let rows = self
            .simple_query(&format!("READ_REPLICATION_SLOT {}", quote_ident(name)))
            .await?;
        let row = single_row(&rows, 3, "READ_REPLICATION_SLOT")?;
        let Some(slot_type) = &row[0] else {
            return Ok(None);
        };
        if slot_type != "physical" {
            return Err(ClientError::WrongSlotType {
                slot: name.to_string(),
                slot_type: slot_type.clone(),
            });
        }
        let lsn = match &row[1] {
            None => Lsn::INVALID,
            Some(s) => s
                .parse()
                .map_err(|_| bad_value("READ_REPLICATION_SLOT", "restart_lsn", &row[1]))?,
        };
        let tli = match &row[2] {
            None => TimeLineId(0),
            Some(s) => parse_tli(s)
                .ok_or_else(|| bad_value("READ_REPLICATION_SLOT", "restart_tli", &row[2]))?,
        };
        Ok(Some((lsn, tli)))
    }

    /// CREATE_REPLICATION_SLOT "name" PHYSICAL RESERVE_WAL. With `if_not_exists`, an
    /// existing slot (SQLSTATE 42710) is fine.
    pub async fn create_physical_slot(
        &mut self,
        name: &str,
        if_not_exists: bool,
    ) -> Result<(), ClientError> {
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} PHYSICAL RESERVE_WAL",
            quote_ident(name)
        );
        match self.simple_query(&sql).await {
            Ok(_) => Ok(()),
            Err(ClientError::Server(e)) if if_not_exists && e.code == "42710" => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// DROP_REPLICATION_SLOT "name".
    pub async fn drop_slot(&mut self, name: &str) -> Result<(), ClientError> {
        self.simple_query(&format!("DROP_REPLICATION_SLOT {}", quote_ident(name)))
            .await
            .map(drop)
    }

    // ---- Streaming ----

    /// START_REPLICATION [SLOT s] PHYSICAL X/X TIMELINE n, up to the CopyBothResponse.
    pub async fn start_replication(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        tli: TimeLineId,
    ) -> Result<(), ClientError> {
        let sql = start_replication_sql(slot, start, tli);
        self.send_query(&sql).await?;
        let mut error: Option<ServerError> = None;
        loop {
            let msg = match self.next_message().await {
                Ok(m) => m,
                Err(e) => return Err(error.map(ClientError::Server).unwrap_or(e)),
            };
            match msg {
                BackendMessage::CopyBothResponse(_) => {
                    self.state = State::CopyBoth;
                    return Ok(());
                }
                BackendMessage::ErrorResponse(e) => error = Some(e),
                BackendMessage::NoticeResponse(n) => log_notice(&n),
                BackendMessage::ParameterStatus { name, value } => {
                    self.parameters.insert(name, value);
                }
                BackendMessage::ReadyForQuery { .. } => {
                    return Err(self.ended_without(error, "START_REPLICATION", "starting a stream"))
                }
                // The end-of-timeline result of an immediately finished stream cannot come
                // before CopyBoth; anything else is a confused server.
                other => return Err(self.unexpected_reply(&other, "START_REPLICATION")),
            }
        }
    }

    /// A whole message is already in the read buffer: the next `read_copy_message` will not
    /// wait for the socket. The synchronous receive path reads while this holds and makes
    /// what it got durable once it stops (group commit without a second thread).
    pub fn has_buffered_frame(&self) -> bool {
        matches!(frame_len(&self.read_buf, MAX_SERVER_MESSAGE), Ok(Some(n)) if n <= self.read_buf.len())
    }

    /// The next CopyData payload of the stream, or `Done` when the server ended it.
    ///
    /// Cancel-safe: all state lives in the connection's read buffer and the only await is
    /// the socket read, so dropping the future (a `select!` timer won) loses nothing.
    pub async fn read_copy_message(&mut self) -> Result<CopyMessage, ClientError> {
        self.check_streaming("read_copy_message")?;
        loop {
            match self.buffered_copy_message()? {
                Some(msg) => return Ok(msg),
                None => self.fill().await?,
            }
        }
    }

    /// The next item of the stream, for a caller that takes WAL payloads straight from the
    /// socket into its own buffers: an XLogData message comes as its header and the part of
    /// its payload already received; the rest (`WalStart::rest`) must then be read with
    /// [`ReplicationConn::read_wal_into`] before anything else. Only small reads go through
    /// the connection's buffer, so during catch-up nearly every WAL byte is copied once, by
    /// the kernel, to where it is written from.
    ///
    /// Cancel-safe, as [`ReplicationConn::read_copy_message`].
    pub async fn read_stream_item(&mut self) -> Result<StreamItem, ClientError> {
        self.check_streaming("read_stream_item")?;
        loop {
            if let Some(start) = self.split_wal_start()? {
                return Ok(StreamItem::Wal(start));
            }
            if self.has_buffered_frame() {
                if let Some(msg) = self.buffered_copy_message()? {
                    return Ok(StreamItem::Copy(msg));
                }
                continue;
            }
            self.fill_at_most(HEADER_READ).await?;
        }
    }

    /// Read more of the current XLogData payload into `dst`; returns how many payload
    /// bytes arrived (at the start of `dst`). When `dst` has room past the payload's end,
    /// the same read also takes in up to [`HEADER_READ`] bytes of what follows (the next
    /// message's header): they are moved to the connection's buffer, and `dst` past the
    /// returned count holds nothing of value. One read per catch-up message instead of two.
    /// Cancel-safe: one socket read.
    pub async fn read_wal_into(&mut self, dst: &mut [u8]) -> Result<usize, ClientError> {
        if self.wal_rest == 0 {
            return Err(ClientError::Protocol(
                "read_wal_into called with no WAL payload pending".into(),
            ));
        }
        let want = dst.len().min(self.wal_rest);
        if want == 0 {
            return Ok(0);
        }
        let ahead = (dst.len() - want).min(HEADER_READ);
        let read = self.stream.read(&mut dst[..want + ahead]).await;
        let n = self.bytes_read(read)?;
        if n > want {
            self.read_buf.extend_from_slice(&dst[want..n]);
        }
        let n = n.min(want);
        self.wal_rest -= n;
        Ok(n)
    }

    fn check_streaming(&self, what: &str) -> Result<(), ClientError> {
        if self.state != State::CopyBoth {
            return Err(ClientError::Protocol(format!(
                "{what} called outside a replication stream"
            )));
        }
        if self.wal_rest != 0 {
            return Err(ClientError::Protocol(format!(
                "{what} called with {} bytes of a WAL payload still unread",
                self.wal_rest
            )));
        }
        Ok(())
    }

    /// If the buffer starts with a CopyData frame holding XLogData whose header is all
    /// here, take the header and whatever part of the payload is buffered.
    fn split_wal_start(&mut self) -> Result<Option<WalStart>, ClientError> {
        const FRAME_HEADER: usize = 5;
        let buf = &self.read_buf;
        if buf.len() < FRAME_HEADER + XLOG_DATA_HEADER_LEN
            || buf[0] != b'd'
            || buf[FRAME_HEADER] != b'w'
        {
            return Ok(None);
        }
        let frame_len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if !(4 + XLOG_DATA_HEADER_LEN..=MAX_SERVER_MESSAGE).contains(&frame_len) {
            // Let the ordinary path report it.
            return Ok(None);
        }
        let payload_len = frame_len - 4 - XLOG_DATA_HEADER_LEN;
        let _ = self.read_buf.split_to(FRAME_HEADER);
        let header = self.read_buf.split_to(XLOG_DATA_HEADER_LEN).freeze();
        let ReplicationMessage::XLogData {
            wal_start,
            wal_end,
            send_time,
            ..
        } = ReplicationMessage::parse(header).map_err(|e| {
            self.state = State::Broken;
            ClientError::from(e)
        })?
        else {
            unreachable!("tag checked above");
        };
        let head = self
            .read_buf
            .split_to(payload_len.min(self.read_buf.len()))
            .freeze();
        self.wal_rest = payload_len - head.len();
        Ok(Some(WalStart {
            wal_start,
            wal_end,
            send_time,
            rest: self.wal_rest,
            head,
        }))
    }

    /// The next message of the stream if a whole frame is buffered (notices and parameter
    /// changes are taken in passing); `None` when more must be read.
    fn buffered_copy_message(&mut self) -> Result<Option<CopyMessage>, ClientError> {
        loop {
            let frame = match parse_frame(&mut self.read_buf, MAX_SERVER_MESSAGE) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(None),
                Err(e) => {
                    self.state = State::Broken;
                    return Err(e.into());
                }
            };
            // CopyData is matched on the tag alone: the hot path does no decoding.
            if frame.tag == b'd' {
                return Ok(Some(CopyMessage::Data(frame.body)));
            }
            let msg = BackendMessage::decode(frame).map_err(|e| {
                self.state = State::Broken;
                ClientError::from(e)
            })?;
            match msg {
                BackendMessage::CopyDone => {
                    self.state = State::ServerCopyDone;
                    return Ok(Some(CopyMessage::Done));
                }
                BackendMessage::NoticeResponse(n) => log_notice(&n),
                BackendMessage::ParameterStatus { name, value } => {
                    self.parameters.insert(name, value);
                }
                BackendMessage::ErrorResponse(e) => {
                    // The server left COPY mode; ReadyForQuery follows unless it hangs up.
                    self.state = State::Draining;
                    return Err(ClientError::Server(e));
                }
                BackendMessage::CommandComplete { .. } => {
                    self.state = State::ServerEnded;
                    return Ok(Some(CopyMessage::Done));
                }
                other => {
                    self.state = State::Broken;
                    return Err(ClientError::Protocol(format!(
                        "unexpected {} during the replication stream",
                        message_kind(&other)
                    )));
                }
            }
        }
    }

    /// A command that ended (ReadyForQuery) before doing `what`: the server's error, if it
    /// sent one. The connection is idle again.
    fn ended_without(
        &mut self,
        error: Option<ServerError>,
        command: &str,
        what: &str,
    ) -> ClientError {
        self.state = State::Idle;
        match error {
            Some(e) => ClientError::Server(e),
            None => ClientError::Protocol(format!("{command} finished without {what}")),
        }
    }

    /// A message that has no place in the reply to `command`: the framing can no longer be
    /// trusted.
    fn unexpected_reply(&mut self, other: &BackendMessage, command: &str) -> ClientError {
        self.state = State::Broken;
        ClientError::Protocol(format!(
            "unexpected {} in reply to {command}",
            message_kind(other)
        ))
    }

    /// Send one CopyData message (e.g. an `'r'` status update) and flush it.
    pub async fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        if !matches!(self.state, State::CopyBoth | State::ServerCopyDone) {
            return Err(ClientError::Protocol(
                "send_copy_data called outside a replication stream".into(),
            ));
        }
        frontend::copy_data(payload, &mut self.write_buf);
        self.flush_writes().await
    }

    /// End the stream: answer the server's CopyDone with ours (or send ours first, then
    /// discard the server's remaining CopyData until its CopyDone), then read the
    /// end-of-timeline result. `Some((next_tli, next_tli_startpos))` when the server's
    /// timeline ended, `None` when the stream just stopped.
    pub async fn finish_copy(&mut self) -> Result<Option<(TimeLineId, Lsn)>, ClientError> {
        let mut server_done = match self.state {
            State::ServerEnded => {
                // Nothing to finish: the server is gone once its CommandComplete is out.
                self.state = State::Broken;
                return Ok(None);
            }
            State::ServerCopyDone => true,
            State::CopyBoth => false,
            _ => {
                return Err(ClientError::Protocol(
                    "finish_copy called outside a replication stream".into(),
                ))
            }
        };
        frontend::copy_done(&mut self.write_buf);
        self.flush_writes().await?;
        self.state = State::Draining;
        let mut result = None;
        let mut error: Option<ServerError> = None;
        loop {
            let msg = match self.next_message().await {
                Ok(m) => m,
                Err(e) => return Err(error.map(ClientError::Server).unwrap_or(e)),
            };
            match msg {
                BackendMessage::CopyData(_) if !server_done => {}
                BackendMessage::CopyDone if !server_done => server_done = true,
                BackendMessage::RowDescription(_) | BackendMessage::CommandComplete { .. } => {}
                BackendMessage::DataRow(values) => result = Some(parse_next_timeline(&values)?),
                BackendMessage::ErrorResponse(e) => error = Some(e),
                BackendMessage::NoticeResponse(n) => log_notice(&n),
                BackendMessage::ParameterStatus { name, value } => {
                    self.parameters.insert(name, value);
                }
                BackendMessage::ReadyForQuery { .. } => {
                    self.state = State::Idle;
                    return match error {
                        Some(e) => Err(ClientError::Server(e)),
                        None => Ok(result),
                    };
                }
                other => {
                    self.state = State::Broken;
                    return Err(ClientError::Protocol(format!(
                        "unexpected {} after the replication stream",
                        message_kind(&other)
                    )));
                }
            }
        }
    }

    // ---- Base backup ----

    /// Send a BASE_BACKUP command and read up to its CopyOutResponse: the start position
    /// and the tablespace list come first, each as a result set. What follows is read with
    /// [`ReplicationConn::read_copy_out`], then [`ReplicationConn::finish_base_backup`].
    pub async fn base_backup(&mut self, sql: &str) -> Result<BaseBackupStart, ClientError> {
        self.send_query(sql).await?;
        let mut sets: Vec<Vec<Vec<Option<Bytes>>>> = Vec::new();
        let mut error: Option<ServerError> = None;
        loop {
            let msg = match self.next_message().await {
                Ok(m) => m,
                Err(e) => return Err(error.map(ClientError::Server).unwrap_or(e)),
            };
            match msg {
                BackendMessage::RowDescription(_) => sets.push(Vec::new()),
                BackendMessage::DataRow(values) => match sets.last_mut() {
                    Some(set) => set.push(values),
                    None => {
                        self.state = State::Broken;
                        return Err(ClientError::Protocol(
                            "BASE_BACKUP sent a row before its description".into(),
                        ));
                    }
                },
                BackendMessage::CommandComplete { .. } => {}
                BackendMessage::CopyOutResponse(_) => {
                    self.state = State::CopyOut;
                    return parse_base_backup_start(&sets).inspect_err(|_| {
                        self.state = State::Broken;
                    });
                }
                BackendMessage::ErrorResponse(e) => error = Some(e),
                BackendMessage::NoticeResponse(n) => log_notice(&n),
                BackendMessage::ParameterStatus { name, value } => {
                    self.parameters.insert(name, value);
                }
                BackendMessage::ReadyForQuery { .. } => {
                    return Err(self.ended_without(error, "BASE_BACKUP", "sending the backup"))
                }
                other => return Err(self.unexpected_reply(&other, "BASE_BACKUP")),
            }
        }
    }

    /// The next CopyData payload of a base backup (its first byte says what it is), or
    /// `None` once the server sent CopyDone. At most one message is buffered beyond what
    /// the caller holds: a slow caller slows the server down through TCP.
    ///
    /// Cancel-safe, as [`ReplicationConn::read_copy_message`].
    pub async fn read_copy_out(&mut self) -> Result<Option<Bytes>, ClientError> {
        if self.state != State::CopyOut {
            return Err(ClientError::Protocol(
                "read_copy_out called outside a base backup".into(),
            ));
        }
        loop {
            let frame = match parse_frame(&mut self.read_buf, MAX_SERVER_MESSAGE) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    self.fill().await?;
                    continue;
                }
                Err(e) => {
                    self.state = State::Broken;
                    return Err(e.into());
                }
            };
            if frame.tag == b'd' {
                return Ok(Some(frame.body));
            }
            let msg = BackendMessage::decode(frame).map_err(|e| {
                self.state = State::Broken;
                ClientError::from(e)
            })?;
            match msg {
                BackendMessage::CopyDone => {
                    self.state = State::AfterCopyOut;
                    return Ok(None);
                }
                BackendMessage::NoticeResponse(n) => log_notice(&n),
                BackendMessage::ParameterStatus { name, value } => {
                    self.parameters.insert(name, value);
                }
                BackendMessage::ErrorResponse(e) => {
                    // The server left COPY mode; ReadyForQuery follows unless it hangs up.
                    self.state = State::Draining;
                    return Err(ClientError::Server(e));
                }
                other => {
                    self.state = State::Broken;
                    return Err(ClientError::Protocol(format!(
                        "unexpected {} during a base backup",
                        message_kind(&other)
                    )));
                }
            }
        }
    }

    /// After the CopyOut ended: the backup's end position and timeline (the server has
    /// made the backup consistent there), up to ReadyForQuery.
    pub async fn finish_base_backup(&mut self) -> Result<(Lsn, TimeLineId), ClientError> {
        if self.state != State::AfterCopyOut {
            return Err(ClientError::Protocol(
                "finish_base_backup called before the backup stream ended".into(),
            ));
        }
        self.state = State::Draining;
        let mut end = None;
        let mut error: Option<ServerError> = None;
        loop {
            let msg = match self.next_message().await {
                Ok(m) => m,
                Err(e) => return Err(error.map(ClientError::Server).unwrap_or(e)),
            };
            match msg {
                BackendMessage::RowDescription(_) | BackendMessage::CommandComplete { .. } => {}
                BackendMessage::DataRow(values) => end = Some(parse_position_row(&values)?),
                BackendMessage::ErrorResponse(e) => error = Some(e),
                BackendMessage::NoticeResponse(n) => log_notice(&n),
                BackendMessage::ParameterStatus { name, value } => {
                    self.parameters.insert(name, value);
                }
                BackendMessage::ReadyForQuery { .. } => {
                    self.state = State::Idle;
                    return match (error, end) {
                        (Some(e), _) => Err(ClientError::Server(e)),
                        (None, Some(end)) => Ok(end),
                        (None, None) => Err(ClientError::Protocol(
                            "BASE_BACKUP ended without its end position".into(),
                        )),
                    };
                }
                other => {
                    self.state = State::Broken;
                    return Err(ClientError::Protocol(format!(
                        "unexpected {} after a base backup",
                        message_kind(&other)
                    )));
                }
            }
        }
    }

    /// Say goodbye (Terminate) and close the socket. Best effort: the connection is going
    /// away either way, so errors are not reported.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.write_buf);
        if self.write_all_pending().await.is_ok() {
            let _ = self.stream.shutdown().await;
        }
    }
}

async fn with_timeout<T>(
    timeout: Option<Duration>,
    target: &str,
    fut: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match timeout {
        None => fut.await,
        Some(t) => tokio::time::timeout(t, fut).await.unwrap_or_else(|_| {
            Err(ClientError::Timeout {
                target: target.to_string(),
            })
        }),
    }
}

async fn tcp_connect(
    addr: SocketAddr,
    desc: &str,
    keepalives: &Keepalives,
) -> Result<TcpStream, ClientError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect {
            target: desc.to_string(),
            source,
        })?;
    // Small commands and status updates must not wait for Nagle.
    tcp.set_nodelay(true)?;
    set_keepalives(&tcp, keepalives)?;
    Ok(tcp)
}

/// Keepalive probes and the user timeout, as libpq sets them: a server that vanished
/// without closing the connection (host down, network cut) is noticed instead of waited
/// for forever.
pub(crate) fn set_keepalives(tcp: &TcpStream, k: &Keepalives) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = tcp.as_raw_fd();
    let set = |level: libc::c_int, name: libc::c_int, value: u32| -> std::io::Result<()> {
        let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fd` is an open socket owned by `tcp` for the duration of the call; the
        // option value is a c_int that outlives the call, and its size is passed with it.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX).max(1);
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, u32::from(k.enabled))?;
    if k.enabled {
        if let Some(idle) = k.idle {
            set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(idle))?;
        }
        if let Some(interval) = k.interval {
            set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs(interval))?;
        }
        if let Some(count) = k.count {
            set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count)?;
        }
    }
    if let Some(timeout) = k.user_timeout {
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms)?;
    }
    Ok(())
}

/// Errors after which libpq does not try the remaining hosts: the server was reached and
/// turned us down, or our own configuration is wrong.
fn ends_search(e: &ClientError) -> bool {
    if cannot_connect_now(e) {
        return false;
    }
    matches!(
        e,
        ClientError::Server(_)
            | ClientError::PasswordRequired
            | ClientError::UnsupportedAuth(_)
            | ClientError::Auth(_)
            | ClientError::ChannelBinding(_)
            | ClientError::TlsConfig(_)
    )
}

/// The server is starting up, shutting down or in recovery without hot standby (SQLSTATE
/// 57P03): as libpq, the next host is tried (this host's other addresses are not).
fn cannot_connect_now(e: &ClientError) -> bool {
    matches!(e, ClientError::Server(s) if s.code == "57P03")
}

/// The SASL mechanism and channel-binding flag, as libpq's pg_SASL_init and
/// fe-auth-scram.c pick them: SCRAM-SHA-256-PLUS with `tls-server-end-point` when the
/// connection uses TLS, binding is not disabled and the server offers it; otherwise plain
/// SCRAM-SHA-256, whose gs2 header says `y` ("I could bind, you did not offer it": a server
/// that did offer PLUS then knows someone stripped it) over TLS, and `n` without TLS or
/// with `channel_binding=disable`.
fn choose_sasl(
    mechanisms: &[String],
    mode: ChannelBindingMode,
    server_cert: Option<&[u8]>,
) -> Result<(&'static str, ChannelBinding), ClientError> {
    let offered = |m: &str| mechanisms.iter().any(|x| x == m);
    let can_bind = mode != ChannelBindingMode::Disable;
    if let (true, Some(cert)) = (can_bind && offered(SCRAM_SHA_256_PLUS), server_cert) {
        let hash = crate::auth::tls_server_end_point(cert).map_err(|e| {
            ClientError::ChannelBinding(format!("could not compute channel binding data: {e}"))
        })?;
        return Ok((
            SCRAM_SHA_256_PLUS,
            ChannelBinding::tls_server_end_point(hash),
        ));
    }
    if mode == ChannelBindingMode::Require {
        let why = if server_cert.is_none() {
            " (the connection does not use SSL)"
        } else {
            ""
        };
        return Err(ClientError::ChannelBinding(format!(
            "channel binding is required, but server did not offer an authentication method that supports channel binding{why}"
        )));
    }
    if !offered(SCRAM_SHA_256) {
        return Err(ClientError::UnsupportedAuth(format!(
            "SASL ({})",
            mechanisms.join(", ")
        )));
    }
    let binding = if can_bind && server_cert.is_some() {
        ChannelBinding::unrequested()
    } else {
        ChannelBinding::unsupported()
    };
    Ok((SCRAM_SHA_256, binding))
}

/// The handshake error in words; revocation outcomes spelled out, since rustls' own names
/// for them (`Revoked`, `UnknownRevocationStatus`) do not say which certificate or list.
fn describe_tls_error(e: &std::io::Error) -> String {
    use rustls::{CertificateError, Error};
    let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return e.to_string();
    };
    match inner {
        Error::InvalidCertificate(CertificateError::Revoked) => {
            "server certificate has been revoked (it is listed in the certificate revocation list, sslcrl/sslcrldir)".into()
        }
        Error::InvalidCertificate(CertificateError::UnknownRevocationStatus) => {
            "server certificate's revocation status is unknown: sslcrl/sslcrldir holds no certificate revocation list from its issuer".into()
        }
        Error::InvalidCertificate(CertificateError::ExpiredRevocationList
        | CertificateError::ExpiredRevocationListContext { .. }) => {
            "the certificate revocation list (sslcrl/sslcrldir) has expired; fetch a current one from the CA".into()
        }
        other => other.to_string(),
    }
}

fn log_notice(n: &ServerError) {
    tracing::info!(target: "walferry::server", "{n}");
}

fn message_kind(m: &BackendMessage) -> String {
    let name = match m {
        BackendMessage::Authentication(_) => "authentication request",
        BackendMessage::BackendKeyData { .. } => "BackendKeyData",
        BackendMessage::ParameterStatus { .. } => "ParameterStatus",
        BackendMessage::ReadyForQuery { .. } => "ReadyForQuery",
        BackendMessage::RowDescription(_) => "RowDescription",
        BackendMessage::DataRow(_) => "DataRow",
        BackendMessage::CommandComplete { .. } => "CommandComplete",
        BackendMessage::EmptyQueryResponse => "EmptyQueryResponse",
        BackendMessage::ErrorResponse(_) => "ErrorResponse",
        BackendMessage::NoticeResponse(_) => "NoticeResponse",
        BackendMessage::CopyInResponse(_) => "CopyInResponse",
        BackendMessage::CopyOutResponse(_) => "CopyOutResponse",
        BackendMessage::CopyBothResponse(_) => "CopyBothResponse",
        BackendMessage::CopyData(_) => "CopyData",
        BackendMessage::CopyDone => "CopyDone",
        BackendMessage::NegotiateProtocolVersion { .. } => "NegotiateProtocolVersion",
    };
    name.to_string()
}

fn text(b: &[u8]) -> Result<String, ClientError> {
    String::from_utf8(b.to_vec())
        .map_err(|_| ClientError::Protocol("server sent a value that is not UTF-8".into()))
}

fn single_row<'a>(
    rows: &'a [Vec<Option<String>>],
    min_columns: usize,
    command: &str,
) -> Result<&'a [Option<String>], ClientError> {
    match rows {
        [row] if row.len() >= min_columns => Ok(row),
        [row] => Err(ClientError::Protocol(format!(
            "{command} returned {} columns, expected at least {min_columns}",
            row.len()
        ))),
        _ => Err(ClientError::Protocol(format!(
            "{command} returned {} rows, expected 1",
            rows.len()
        ))),
    }
}

fn column<'a>(row: &'a [Option<String>], i: usize, name: &str) -> Result<&'a str, ClientError> {
    row.get(i)
        .and_then(|v| v.as_deref())
        .ok_or_else(|| ClientError::Protocol(format!("server returned NULL for {name}")))
}

fn bad_value(command: &str, column: &str, value: &Option<String>) -> ClientError {
    ClientError::Protocol(format!(
        "{command} returned an invalid {column}: {:?}",
        value.as_deref().unwrap_or("NULL")
    ))
}

fn parse_tli(s: &str) -> Option<TimeLineId> {
    s.parse::<u32>().ok().filter(|t| *t > 0).map(TimeLineId)
}

/// The one-row result after an ended timeline: (next_tli int8, next_tli_startpos text).
fn parse_next_timeline(values: &[Option<Bytes>]) -> Result<(TimeLineId, Lsn), ClientError> {
    let bad = || ClientError::Protocol("invalid end-of-timeline result".into());
    let [Some(tli), Some(pos)] = values else {
        return Err(bad());
    };
    let tli = parse_tli(&text(tli)?).ok_or_else(bad)?;
    let pos = text(pos)?.parse::<Lsn>().map_err(|_| bad())?;
    Ok((tli, pos))
}

/// What BASE_BACKUP says before its data: where the backup starts, and the tablespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupStart {
    pub start_lsn: Lsn,
    pub timeline: TimeLineId,
    pub tablespaces: Vec<BackupTablespace>,
}

/// One row of BASE_BACKUP's tablespace result set. The main data directory is the row
/// without oid and location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupTablespace {
    pub oid: Option<u32>,
    pub location: Option<String>,
    /// The server's size estimate in kB (with PROGRESS), else `None`.
    pub size_kb: Option<u64>,
}

fn parse_base_backup_start(
    sets: &[Vec<Vec<Option<Bytes>>>],
) -> Result<BaseBackupStart, ClientError> {
    let (Some([start_row]), Some(ts_rows)) = (sets.first().map(Vec::as_slice), sets.get(1)) else {
        return Err(ClientError::Protocol(
            "BASE_BACKUP did not send its start position and tablespace list".into(),
        ));
    };
    let (start_lsn, timeline) = parse_position_row(start_row)?;
    let bad = || ClientError::Protocol("BASE_BACKUP sent an invalid tablespace row".into());
    let mut tablespaces = Vec::with_capacity(ts_rows.len());
    for row in ts_rows {
        let field = |i: usize| -> Result<Option<String>, ClientError> {
            match row.get(i) {
                Some(Some(b)) => text(b).map(Some),
                Some(None) => Ok(None),
                None => Err(bad()),
            }
        };
        tablespaces.push(BackupTablespace {
            oid: field(0)?
                .map(|s| s.parse())
                .transpose()
                .map_err(|_| bad())?,
            location: field(1)?,
            size_kb: field(2)?
                .map(|s| s.parse())
                .transpose()
                .map_err(|_| bad())?,
        });
    }
    Ok(BaseBackupStart {
        start_lsn,
        timeline,
        tablespaces,
    })
}

/// A (recptr text, tli int8) row, as BASE_BACKUP sends its start and end positions.
fn parse_position_row(values: &[Option<Bytes>]) -> Result<(Lsn, TimeLineId), ClientError> {
    let bad = || ClientError::Protocol("BASE_BACKUP sent an invalid WAL position".into());
    let [Some(pos), Some(tli), ..] = values else {
        return Err(bad());
    };
    let pos = text(pos)?.parse::<Lsn>().map_err(|_| bad())?;
    let tli = parse_tli(&text(tli)?).ok_or_else(bad)?;
    Ok((pos, tli))
}

/// The START_REPLICATION command, as pg_receivewal spells it.
pub fn start_replication_sql(slot: Option<&str>, start: Lsn, tli: TimeLineId) -> String {
    match slot {
        Some(s) => format!(
            "START_REPLICATION SLOT {} PHYSICAL {start} TIMELINE {}",
            quote_ident(s),
            tli.0
        ),
        None => format!("START_REPLICATION PHYSICAL {start} TIMELINE {}", tli.0),
    }
}

/// Quote an identifier for the replication grammar: double quotes, inner quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A memory setting as SHOW prints it, e.g. `"16MB"` -> 16 MiB. Units are PostgreSQL's
/// (B, kB, MB, GB, TB; 1024-based); a bare number is bytes.
pub fn parse_size_setting(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `server_version` -> PG_VERSION_NUM: "15.4 (Debian ...)" -> 150004, "9.6.24" -> 90624,
/// "16beta1" -> 160000.
pub fn parse_server_version(v: &str) -> Option<u32> {
    let numeric: String = v
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = numeric.split('.').filter(|p| !p.is_empty());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    if major >= 10 {
        Some(major * 10000 + minor)
    } else {
        let rev: u32 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        Some(major * 10000 + minor * 100 + rev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_settings() {
        assert_eq!(parse_size_setting("16MB"), Some(16 << 20));
        assert_eq!(parse_size_setting("1GB"), Some(1 << 30));
        assert_eq!(parse_size_setting("64kB"), Some(64 << 10));
        assert_eq!(parse_size_setting("8192"), Some(8192));
        assert_eq!(parse_size_setting("2TB"), Some(2 << 40));
        for bad in ["", "MB", "16 mb", "16XB", "-1MB", "99999999999999999999TB"] {
            assert_eq!(parse_size_setting(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn server_versions() {
        assert_eq!(
            parse_server_version("15.4 (Debian 15.4-1.pgdg120+1)"),
            Some(150004)
        );
        assert_eq!(parse_server_version("15.10"), Some(150010));
        assert_eq!(parse_server_version("16beta1"), Some(160000));
        assert_eq!(parse_server_version("9.6.24"), Some(90624));
        assert_eq!(parse_server_version("devel"), None);
    }

    #[test]
    fn commands_are_spelled_like_pg_receivewal() {
        assert_eq!(
            start_replication_sql(Some("my\"slot"), Lsn(0x1_0300_0000), TimeLineId(3)),
            "START_REPLICATION SLOT \"my\"\"slot\" PHYSICAL 1/3000000 TIMELINE 3"
        );
        assert_eq!(
            start_replication_sql(None, Lsn(0), TimeLineId(1)),
            "START_REPLICATION PHYSICAL 0/0 TIMELINE 1"
        );
    }

    #[test]
    fn fatal_classification() {
        let server = |code: &str| {
            ClientError::Server(ServerError {
                severity: "FATAL".into(),
                code: code.into(),
                message: String::new(),
                detail: None,
                hint: None,
            })
        };
        assert!(server("28P01").is_fatal());
        assert!(!server("57P03").is_fatal());
        assert!(ClientError::PasswordRequired.is_fatal());
        assert!(!ClientError::Closed.is_fatal());
        assert!(
            !ClientError::AllHostsFailed(vec![ClientError::Closed, server("28000")]).is_fatal()
        );
        assert!(ClientError::AllHostsFailed(vec![server("28000")]).is_fatal());
        let msg = ClientError::PasswordRequired.to_string();
        assert!(msg.starts_with("password authentication required but no password was supplied"));
        let hint = ClientError::PasswordRequired.hint().unwrap();
        assert!(hint.contains("PGPASSWORD") && hint.contains("~/.pgpass") && hint.contains("-W"));
    }
}
