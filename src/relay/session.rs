//! One downstream connection: the walsender side of the replication protocol.
//!
//! Startup (SSLRequest answered with TLS or 'N', the startup packet, authentication, the
//! ParameterStatus set a walreceiver and `pg_receivewal` read, BackendKeyData,
//! ReadyForQuery), then replication commands until the client leaves. `START_REPLICATION`
//! streams WAL in CopyBoth as walsender.c does: `'w'` messages of at most 128 KiB, never
//! past what the relay has validated and flushed on that timeline (with `--serve-unflushed`:
//! validated and written), keepalives that ask for a
//! reply when the downstream has been quiet for half of `wal_sender_timeout`, the
//! downstream's `'r'` reports used for its slot and the `--sync-downstream` quorum, and the
//! end-of-timeline handshake (CopyDone both ways, then the next timeline and where it
//! begins) for a timeline the relay has moved past.
//!
//! WAL comes from the live tail while the downstream keeps up, else from the archive, with
//! a reader of its own per session: a slow downstream costs disk reads, never memory or
//! anybody else's progress. A failed command gets an ErrorResponse with PostgreSQL's
//! SQLSTATE and the connection stays usable.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::command::{self, Command};
use super::slots::SlotError;
use super::Hub;
use crate::protocol::backend::{encode_result_set, ServerError, INT4_OID, INT8_OID, TEXT_OID};
use crate::protocol::{BackendMessage, FrontendMessage, StartupPacket};
use crate::wal::{history_file_name, Lsn, TimeLineId};

const BYTEA_OID: u32 = 17;
/// A downstream sends replication commands and 34-byte status messages: anything larger
/// than this is not one of them, and is not buffered.
const MAX_CLIENT_MESSAGE: usize = 1 << 20;
/// Time allowed from connecting to being logged in (PostgreSQL's authentication_timeout).
const LOGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Why a session ended early; logged, and sent to the client when it can still read.
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
    /// Sent to the client as a FATAL ErrorResponse, then the connection closes.
    #[error("{}", .0.message)]
    Fatal(ServerError),
    #[error("client went away")]
    Gone,
}

pub(super) fn error(code: &str, message: impl Into<String>) -> ServerError {
    ServerError {
        severity: "ERROR".into(),
        code: code.into(),
        message: message.into(),
        detail: None,
        hint: None,
    }
}

pub(super) fn fatal(code: &str, message: impl Into<String>) -> ServerError {
    ServerError {
        severity: "FATAL".into(),
        ..error(code, message)
    }
}

/// Serve one accepted TCP connection to the end.
pub(super) async fn serve(hub: Arc<Hub>, mut tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let mut buf = BytesMut::new();
    // Before the startup packet: SSLRequest and GSSENCRequest, each answered once.
    let startup = loop {
        let packet =
            match tokio::time::timeout(LOGIN_TIMEOUT, read_startup(&mut tcp, &mut buf)).await {
                Ok(Ok(Some(p))) => p,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    tracing::debug!("relay: connection from {peer}: {e}");
                    return;
                }
                Err(_) => {
                    tracing::info!(
                        "relay: {peer} sent no startup packet within {} s",
                        LOGIN_TIMEOUT.as_secs()
                    );
                    return;
                }
            };
        match packet {
            StartupPacket::SslRequest => match &hub.tls {
                Some(acceptor) => {
                    if !buf.is_empty() {
                        tracing::warn!("relay: {peer} sent unencrypted data after SSLRequest");
                        return;
                    }
                    if tcp.write_all(b"S").await.is_err() {
                        return;
                    }
                    match tokio::time::timeout(LOGIN_TIMEOUT, acceptor.accept(tcp))
                        .await
                        .unwrap_or_else(|_| {
                            Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "the handshake took too long",
                            ))
                        }) {
                        Ok(tls) => {
                            let conn = Conn::new(tls, peer, true);
                            return Session::start(hub, conn).await;
                        }
                        Err(e) => {
                            tracing::warn!("relay: TLS handshake with {peer} failed: {e}");
                            return;
                        }
                    }
                }
                None => {
                    if tcp.write_all(b"N").await.is_err() {
                        return;
                    }
                }
            },
            StartupPacket::GssEncRequest => {
                if tcp.write_all(b"N").await.is_err() {
                    return;
                }
            }
            // Nothing a relay session runs can be cancelled usefully; PostgreSQL also
            // closes a cancel connection without a reply.
            StartupPacket::CancelRequest { .. } => return,
            startup @ StartupPacket::Startup { .. } => break startup,
        }
    };
    let mut conn = Conn::new(tcp, peer, false);
    conn.rbuf = buf;
    conn.pending_startup = Some(startup);
    Session::start(hub, conn).await
}

async fn read_startup(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<Option<StartupPacket>, SessionError> {
    loop {
        if let Some(p) = StartupPacket::parse(buf).map_err(|e| SessionError::Protocol(e.0))? {
            return Ok(Some(p));
        }
        if tcp.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// A client connection with its buffers.
pub(super) struct Conn<S> {
    pub(super) stream: S,
    pub(super) peer: SocketAddr,
    tls: bool,
    rbuf: BytesMut,
    pub(super) wbuf: BytesMut,
    /// The startup packet, when it was read before TLS was decided.
    pending_startup: Option<StartupPacket>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(stream: S, peer: SocketAddr, tls: bool) -> Self {
        Conn {
            stream,
            peer,
            tls,
            rbuf: BytesMut::with_capacity(8192),
            wbuf: BytesMut::with_capacity(8192),
            pending_startup: None,
        }
    }

    pub(super) fn queue(&mut self, msg: BackendMessage) {
        msg.encode(&mut self.wbuf)
            .expect("relay messages are within protocol limits");
    }

    pub(super) async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all_buf(&mut self.wbuf).await?;
        }
        self.stream.flush().await?;
        Ok(())
    }

    /// The next message; `Gone` at end of stream.
    pub(super) async fn recv(&mut self) -> Result<FrontendMessage, SessionError> {
        loop {
            if let Some(m) = self.try_parse()? {
                return Ok(m);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(SessionError::Gone);
            }
        }
    }

    fn try_parse(&mut self) -> Result<Option<FrontendMessage>, SessionError> {
        FrontendMessage::parse(&mut self.rbuf, MAX_CLIENT_MESSAGE)
            .map_err(|e| SessionError::Protocol(e.0))
    }

    pub(super) async fn send_error(&mut self, e: ServerError) -> Result<(), SessionError> {
        self.queue(BackendMessage::ErrorResponse(e));
        self.queue(BackendMessage::ReadyForQuery { status: b'I' });
        self.flush().await
    }

    async fn send_fatal(&mut self, e: ServerError) {
        self.queue(BackendMessage::ErrorResponse(e));
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

pub(super) struct Session<S> {
    pub(super) hub: Arc<Hub>,
    pub(super) conn: Conn<S>,
    pid: i32,
    user: String,
    pub(super) application_name: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    async fn start(hub: Arc<Hub>, conn: Conn<S>) {
        let pid = hub.next_pid();
        let mut session = Session {
            hub,
            conn,
            pid,
            user: String::new(),
            application_name: String::new(),
        };
        let result = session.run().await;
        let peer = session.conn.peer;
        match result {
            Ok(()) | Err(SessionError::Gone) => {}
            Err(SessionError::Fatal(e)) => {
                tracing::warn!("relay: {peer}: {}", e.message);
                session.conn.send_fatal(e).await;
            }
            Err(SessionError::Protocol(e)) => {
                tracing::warn!("relay: {peer}: protocol violation: {e}");
                session.conn.send_fatal(fatal("08P01", e)).await;
            }
            Err(SessionError::Io(e)) => tracing::info!("relay: {peer}: connection lost: {e}"),
        }
        session.hub.quorum.forget(pid);
        session.hub.feedback.forget(pid);
        if let Err(e) = session.hub.slots.release_all(pid) {
            tracing::error!("relay: {e}");
        }
    }

    async fn run(&mut self) -> Result<(), SessionError> {
        // As PostgreSQL's authentication_timeout: a client that does not finish logging in
        // does not hold a connection for ever.
        match tokio::time::timeout(LOGIN_TIMEOUT, self.log_in()).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(SessionError::Fatal(fatal(
                    "08006",
                    format!(
                        "canceling authentication due to timeout ({} s)",
                        LOGIN_TIMEOUT.as_secs()
                    ),
                )))
            }
        }
        self.command_loop().await
    }

    /// Startup packet, authentication and the greeting.
    async fn log_in(&mut self) -> Result<(), SessionError> {
        let startup = match self.conn.pending_startup.take() {
            Some(p) => p,
            None => self.read_startup_tls().await?,
        };
        let StartupPacket::Startup { params, .. } = startup else {
            return Err(SessionError::Protocol(
                "expected a startup packet after the TLS handshake".into(),
            ));
        };
        self.accept_startup(&params)?;
        let tls = self.conn.tls;
        super::auth::authenticate(&self.hub, &mut self.conn, &self.user, tls).await?;
        self.greet()?;
        self.conn.flush().await?;
        tracing::info!(
            "relay: downstream \"{}\" connected from {} as \"{}\"{}",
            self.application_name,
            self.conn.peer,
            self.user,
            if self.conn.tls { " (TLS)" } else { "" }
        );
        Ok(())
    }

    async fn read_startup_tls(&mut self) -> Result<StartupPacket, SessionError> {
        loop {
            if let Some(p) = StartupPacket::parse(&mut self.conn.rbuf)
                .map_err(|e| SessionError::Protocol(e.0))?
            {
                return Ok(p);
            }
            if self.conn.stream.read_buf(&mut self.conn.rbuf).await? == 0 {
                return Err(SessionError::Gone);
            }
        }
    }

    fn accept_startup(&mut self, params: &[(String, String)]) -> Result<(), SessionError> {
        let get = |k: &str| {
            params
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.as_str())
        };
        self.user = match get("user") {
            Some(u) if !u.is_empty() => u.to_string(),
            _ => {
                return Err(SessionError::Fatal(fatal(
                    "28000",
                    "no PostgreSQL user name specified in startup packet",
                )))
            }
        };
        self.application_name = get("application_name").unwrap_or("").to_string();
        let replication = get("replication").unwrap_or("false").to_ascii_lowercase();
        if !matches!(
            replication.as_str(),
            "true" | "on" | "yes" | "1" | "database"
        ) {
            return Err(SessionError::Fatal(ServerError {
                hint: Some(
                    "connect with replication=true (as standbys, pg_receivewal and walferry do)"
                        .into(),
                ),
                ..fatal(
                    "28000",
                    "walferry relay accepts only replication connections",
                )
            }));
        }
        if self.hub.tls.is_some() && self.hub.tls_required && !self.conn.tls {
            return Err(SessionError::Fatal(ServerError {
                hint: Some("connect with sslmode=require (or verify-ca, verify-full)".into()),
                ..fatal(
                    "28000",
                    format!(
                        "walferry relay accepts only TLS connections; \"{}\" connected from {} without encryption",
                        self.user, self.conn.peer
                    ),
                )
            }));
        }
        Ok(())
    }

    fn greet(&mut self) -> Result<(), SessionError> {
        let upstream = self.hub.upstream();
        let app = self.application_name.clone();
        let params: [(&str, &str); 12] = [
            ("application_name", &app),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("default_transaction_read_only", "on"),
            ("in_hot_standby", "on"),
            ("integer_datetimes", "on"),
            ("IntervalStyle", "postgres"),
            ("is_superuser", "off"),
            ("server_encoding", "UTF8"),
            ("server_version", &upstream.server_version),
            ("standard_conforming_strings", "on"),
            ("TimeZone", "UTC"),
        ];
        for (name, value) in params {
            self.conn.queue(BackendMessage::ParameterStatus {
                name: name.into(),
                value: value.into(),
            });
        }
        self.conn.queue(BackendMessage::BackendKeyData {
            process_id: self.pid,
            secret_key: self.hub.secret_key(self.pid),
        });
        self.conn
            .queue(BackendMessage::ReadyForQuery { status: b'I' });
        Ok(())
    }

    async fn command_loop(&mut self) -> Result<(), SessionError> {
        let mut shutdown = self.hub.shutdown.clone();
        loop {
            let msg = tokio::select! {
                m = self.conn.recv() => m?,
                _ = super::stopped(&mut shutdown) => return Err(SessionError::Fatal(shutting_down())),
            };
            match msg {
                FrontendMessage::Query(q) => {
                    tracing::debug!("relay: {}: {q}", self.conn.peer);
                    match command::parse(&q) {
                        Ok(cmd) => self.execute(cmd).await?,
                        Err(e) => self.conn.send_error(error("42601", e.0)).await?,
                    }
                }
                FrontendMessage::Terminate => return Ok(()),
                FrontendMessage::Sync | FrontendMessage::Flush => {}
                other => {
                    return Err(SessionError::Fatal(fatal(
                        "08P01",
                        format!(
                            "unexpected message {} in a replication connection \
                             (only the simple query protocol is supported)",
                            message_name(&other)
                        ),
                    )))
                }
            }
        }
    }

    async fn execute(&mut self, cmd: Command) -> Result<(), SessionError> {
        let outcome = match cmd {
            Command::Empty => {
                self.conn.queue(BackendMessage::EmptyQueryResponse);
                Ok(())
            }
            Command::IdentifySystem => self.identify_system(),
            Command::TimelineHistory(tli) => self.timeline_history(tli),
            Command::Show(name) => self.show(&name),
            Command::ReadReplicationSlot(name) => self.read_slot(&name),
            Command::CreateSlot {
                name,
                temporary,
                reserve_wal,
            } => self.create_slot(&name, temporary, reserve_wal),
            Command::DropSlot { name, .. } => self
                .hub
                .slots
                .drop_slot(&name, self.pid)
                .map_err(slot_error)
                .map(|()| {
                    self.conn.queue(BackendMessage::CommandComplete {
                        tag: "DROP_REPLICATION_SLOT".into(),
                    })
                }),
            Command::StartReplication {
                slot,
                start,
                timeline,
            } => return self.start_replication(slot, start, timeline).await,
            Command::Unsupported(what) => Err(error(
                "0A000",
                format!("{what} is not supported by walferry relay"),
            )),
        };
        match outcome {
            Ok(()) => {
                self.conn
                    .queue(BackendMessage::ReadyForQuery { status: b'I' });
                self.conn.flush().await
            }
            Err(e) => self.conn.send_error(e).await,
        }
    }

    fn result(&mut self, columns: &[(&str, u32)], row: Vec<Option<&[u8]>>, tag: &str) {
        encode_result_set(columns, &[row], tag, &mut self.conn.wbuf)
            .expect("small result sets encode");
    }

    fn identify_system(&mut self) -> Result<(), ServerError> {
        let upstream = self.hub.upstream();
        let pos = *self.hub.position.borrow();
        let sysid = upstream.system_id.to_string();
        let tli = pos.timeline.0.to_string();
        let lsn = pos.servable.to_string();
        self.result(
            &[
                ("systemid", TEXT_OID),
                ("timeline", INT4_OID),
                ("xlogpos", TEXT_OID),
                ("dbname", TEXT_OID),
            ],
            vec![
                Some(sysid.as_bytes()),
                Some(tli.as_bytes()),
                Some(lsn.as_bytes()),
                None,
            ],
            "IDENTIFY_SYSTEM",
        );
        Ok(())
    }

    fn timeline_history(&mut self, tli: TimeLineId) -> Result<(), ServerError> {
        let name = history_file_name(tli);
        let content = std::fs::read(self.hub.dir.join(&name)).map_err(|e| {
            error(
                "58P01",
                format!("could not open file \"pg_wal/{name}\": {}", io_reason(&e)),
            )
        })?;
        self.result(
            &[("filename", TEXT_OID), ("content", BYTEA_OID)],
            vec![Some(name.as_bytes()), Some(&content)],
            "TIMELINE_HISTORY",
        );
        Ok(())
    }

    fn show(&mut self, name: &str) -> Result<(), ServerError> {
        let upstream = self.hub.upstream();
        let value = match name {
            "wal_segment_size" => format_size(upstream.seg_size),
            "data_directory_mode" => "0700".to_string(),
            "server_version" => upstream.server_version.clone(),
            "server_version_num" => {
                crate::protocol::client::parse_server_version(&upstream.server_version)
                    .map_or_else(String::new, |v| v.to_string())
            }
            "integer_datetimes" => "on".to_string(),
            "server_encoding" | "client_encoding" => "UTF8".to_string(),
            "transaction_read_only" | "default_transaction_read_only" | "in_hot_standby" => {
                "on".to_string()
            }
            _ => {
                return Err(error(
                    "42704",
                    format!("unrecognized configuration parameter \"{name}\""),
                ))
            }
        };
        self.result(&[(name, TEXT_OID)], vec![Some(value.as_bytes())], "SHOW");
        Ok(())
    }

    fn read_slot(&mut self, name: &str) -> Result<(), ServerError> {
        let columns = [
            ("slot_type", TEXT_OID),
            ("restart_lsn", TEXT_OID),
            ("restart_tli", INT8_OID),
        ];
        match self.hub.slots.get(name) {
            // PostgreSQL answers a row of NULLs for a slot that does not exist.
            None => self.result(&columns, vec![None, None, None], "READ_REPLICATION_SLOT"),
            Some(slot) => {
                let lsn = slot
                    .restart_lsn
                    .is_valid()
                    .then(|| slot.restart_lsn.to_string());
                let tli = slot.restart_tli.map(|t| t.0.to_string());
                self.result(
                    &columns,
                    vec![
                        Some(&b"physical"[..]),
                        lsn.as_deref().map(str::as_bytes),
                        tli.as_deref().map(str::as_bytes),
                    ],
                    "READ_REPLICATION_SLOT",
                )
            }
        }
        Ok(())
    }

    fn create_slot(
        &mut self,
        name: &str,
        temporary: bool,
        reserve: bool,
    ) -> Result<(), ServerError> {
        let pos = *self.hub.position.borrow();
        let reserve = reserve.then_some((pos.flushed, pos.timeline));
        let slot = self
            .hub
            .slots
            .create(name, temporary, reserve, self.pid)
            .map_err(slot_error)?;
        tracing::info!(
            "relay: \"{}\" created replication slot \"{name}\"",
            self.user
        );
        let point = slot.restart_lsn.to_string();
        self.result(
            &[
                ("slot_name", TEXT_OID),
                ("consistent_point", TEXT_OID),
                ("snapshot_name", TEXT_OID),
                ("output_plugin", TEXT_OID),
            ],
            vec![Some(name.as_bytes()), Some(point.as_bytes()), None, None],
            "CREATE_REPLICATION_SLOT",
        );
        Ok(())
    }

    async fn start_replication(
        &mut self,
        slot: Option<String>,
        start: Lsn,
        timeline: Option<TimeLineId>,
    ) -> Result<(), SessionError> {
        let begun = super::stream::Stream::begin(&self.hub, self.pid, slot, start, timeline);
        let begun = match begun {
            Ok(mut stream) => stream.fetch_start(&self.hub).await.map(|()| stream),
            Err(e) => Err(e),
        };
        match begun {
            Ok(stream) => {
                tracing::info!(
                    "relay: \"{}\" ({}) starts streaming at {start} on timeline {}",
                    self.application_name,
                    self.conn.peer,
                    stream.tli
                );
                let result = stream.run(self).await;
                // The slot stays acquired until the session ends, as in PostgreSQL.
                self.hub.quorum.forget(self.pid);
                result
            }
            Err(e) => self.conn.send_error(e).await,
        }
    }
}

/// The reply to a client while the relay stops.
pub(super) fn shutting_down() -> ServerError {
    fatal(
        "57P01",
        "terminating connection due to administrator command",
    )
}

pub(super) fn slot_error(e: SlotError) -> ServerError {
    error(e.sqlstate(), e.to_string())
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "No such file or directory".into(),
        _ => e.to_string(),
    }
}

/// A size as PostgreSQL's SHOW prints one in bytes (`16MB`, `1GB`).
fn format_size(bytes: u64) -> String {
    const GB: u64 = 1 << 30;
    const MB: u64 = 1 << 20;
    if bytes % GB == 0 {
        format!("{}GB", bytes / GB)
    } else if bytes % MB == 0 {
        format!("{}MB", bytes / MB)
    } else {
        format!("{}kB", bytes / 1024)
    }
}

pub(super) fn message_name(m: &FrontendMessage) -> &'static str {
    match m {
        FrontendMessage::Query(_) => "Query",
        FrontendMessage::CopyData(_) => "CopyData",
        FrontendMessage::CopyDone => "CopyDone",
        FrontendMessage::CopyFail(_) => "CopyFail",
        FrontendMessage::Terminate => "Terminate",
        FrontendMessage::Sync => "Sync",
        FrontendMessage::Flush => "Flush",
        _ => "message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_show_prints_them() {
        assert_eq!(format_size(16 << 20), "16MB");
        assert_eq!(format_size(1 << 30), "1GB");
        assert_eq!(format_size(64 << 20), "64MB");
    }
}
