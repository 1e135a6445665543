//! How a downstream proves who it is: `--auth trust` (anyone who can connect) or
//! `--auth scram` (SCRAM-SHA-256 against the verifiers of an auth file, as PostgreSQL checks
//! them against pg_authid; SCRAM-SHA-256-PLUS with channel binding over TLS).
//!
//! A failure is the FATAL PostgreSQL sends, with its SQLSTATE: a wrong password and an
//! unknown user both read `password authentication failed for user "X"` (28P01); only the
//! relay's log says which it was.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::session::{Conn, SessionError};
use super::Hub;
use crate::auth::{mechanisms, AuthFile, ScramError, ScramServer};
use crate::protocol::backend::{Authentication, ServerError};
use crate::protocol::frontend::parse_sasl_initial_response;
use crate::protocol::{BackendMessage, FrontendMessage};

/// `--auth`.
#[derive(Debug, Clone)]
pub enum AuthMethod {
    Trust,
    Scram(Arc<AuthFile>),
}

/// Authenticate `user` on `conn`; on success AuthenticationOk is queued.
pub(super) async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    hub: &Hub,
    conn: &mut Conn<S>,
    user: &str,
    tls: bool,
) -> Result<(), SessionError> {
    if let AuthMethod::Scram(file) = &hub.auth {
        // Channel binding needs the certificate's hash; without one (an Ed25519 key),
        // only plain SCRAM-SHA-256 is offered, as PostgreSQL does.
        let binding = if tls { hub.tls_binding.clone() } else { None };
        scram(conn, file, user, binding)
            .await
            .map_err(|e| match e {
                Failure::Scram(e) => {
                    if let Some(detail) = e.log_detail() {
                        tracing::warn!("relay: {}: {e}: {detail}", conn.peer);
                    }
                    SessionError::Fatal(ServerError {
                        severity: "FATAL".into(),
                        code: e.sqlstate().into(),
                        message: e.to_string(),
                        detail: e.detail().map(str::to_string),
                        hint: None,
                    })
                }
                Failure::Session(e) => e,
            })?;
        tracing::debug!("relay: {}: \"{user}\" authenticated with SCRAM", conn.peer);
    }
    conn.queue(BackendMessage::Authentication(Authentication::Ok));
    Ok(())
}

enum Failure {
    Scram(ScramError),
    Session(SessionError),
}

impl From<ScramError> for Failure {
    fn from(e: ScramError) -> Self {
        Failure::Scram(e)
    }
}

impl From<SessionError> for Failure {
    fn from(e: SessionError) -> Self {
        Failure::Session(e)
    }
}

async fn scram<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    file: &AuthFile,
    user: &str,
    binding: Option<Vec<u8>>,
) -> Result<(), Failure> {
    conn.queue(BackendMessage::Authentication(Authentication::Sasl {
        mechanisms: mechanisms(binding.is_some())
            .iter()
            .map(|m| m.to_string())
            .collect(),
    }));
    conn.flush().await?;
    let body = auth_response(conn).await?;
    let (mechanism, data) =
        parse_sasl_initial_response(body).map_err(|e| SessionError::Protocol(e.0))?;
    let mut server = ScramServer::new(user, file.verifier(user), &mechanism, binding)?;
    let first = server.client_first(data.as_deref().unwrap_or_default())?;
    conn.queue(BackendMessage::Authentication(
        Authentication::SaslContinue(Bytes::from(first)),
    ));
    conn.flush().await?;
    let body = auth_response(conn).await?;
    let last = server.client_final(&body)?;
    conn.queue(BackendMessage::Authentication(Authentication::SaslFinal(
        Bytes::from(last),
    )));
    Ok(())
}

/// The next message, which must be a SASL response ('p').
async fn auth_response<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
) -> Result<Bytes, SessionError> {
    match conn.recv().await? {
        FrontendMessage::AuthResponse(body) => Ok(body),
        FrontendMessage::Terminate => Err(SessionError::Gone),
        _ => Err(SessionError::Protocol(
            "expected SASL response, got another message".into(),
        )),
    }
}
