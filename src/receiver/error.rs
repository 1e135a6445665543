//! Receive errors: which ones a reconnect can fix, and what to tell the DBA.

use crate::archive::ArchiveError;
use crate::protocol::{ClientError, ProtocolError};
use crate::wal::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("replication slot \"{0}\" does not exist")]
    UnknownSlot(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("server closed the replication stream at {0}")]
    Disconnected(Lsn),
    #[error("{0}")]
    Internal(String),
    /// The object store of an `s3://` archive, before streaming starts (afterwards its
    /// trouble only delays uploads).
    #[error(transparent)]
    Remote(#[from] crate::objstore::RemoteError),
}

impl From<ProtocolError> for ReceiveError {
    fn from(e: ProtocolError) -> Self {
        ReceiveError::Protocol(e.to_string())
    }
}

/// SQLSTATEs that retrying will not fix.
const FATAL_SQLSTATES: &[&str] = &[
    "28P01", // invalid_password
    "28000", // invalid_authorization_specification (no pg_hba.conf entry, ...)
    "42501", // insufficient_privilege (role lacks REPLICATION)
    "42704", // undefined_object (replication slot does not exist)
    "58P01", // undefined_file (requested WAL segment has already been removed)
    "3D000", // invalid_catalog_name
];

impl ReceiveError {
    fn sqlstate(&self) -> Option<&str> {
        match self {
            ReceiveError::Client(ClientError::Server(e)) => Some(e.code.as_str()),
            _ => None,
        }
    }

    /// Errors that no reconnect can fix; the caller exits instead of retrying.
    pub fn is_fatal(&self) -> bool {
        match self {
            ReceiveError::Client(ClientError::Server(e)) => {
                FATAL_SQLSTATES.contains(&e.code.as_str())
            }
            ReceiveError::Client(c) => c.is_fatal(),
            ReceiveError::Archive(ArchiveError::DiskFull { .. }) => false,
            ReceiveError::Archive(ArchiveError::Io { .. }) => false,
            ReceiveError::Archive(_) => true,
            ReceiveError::UnknownSlot(_) => true,
            ReceiveError::Protocol(_) | ReceiveError::Disconnected(_) => false,
            ReceiveError::Internal(_) => true,
            ReceiveError::Remote(_) => true,
        }
    }

    /// A short fixed name for the error's kind: the `kind` label of `walferry_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ReceiveError::Client(c) => match c {
                ClientError::Server(_) => "server",
                ClientError::PasswordRequired
                | ClientError::UnsupportedAuth(_)
                | ClientError::Auth(_) => "auth",
                ClientError::TlsConfig(_)
                | ClientError::Tls { .. }
                | ClientError::SslNotSupported { .. } => "tls",
                ClientError::WrongSlotType { .. } => "slot",
                ClientError::Protocol(_) => "protocol",
                _ => "connection",
            },
            ReceiveError::Archive(ArchiveError::DiskFull { .. }) => "disk_full",
            ReceiveError::Archive(ArchiveError::InvalidWal { .. }) => "invalid_wal",
            ReceiveError::Archive(_) => "archive",
            ReceiveError::UnknownSlot(_) => "slot",
            ReceiveError::Protocol(_) => "protocol",
            ReceiveError::Disconnected(_) => "disconnected",
            ReceiveError::Internal(_) => "internal",
            ReceiveError::Remote(_) => "object_store",
        }
    }

    /// [`ReceiveError::hint`] for a receiver whose directory is the spool of an object
    /// store (`-D s3://... --spool DIR`), where a full disk means the uploads are behind.
    pub fn hint_for(&self, spooled: bool) -> Option<String> {
        match self {
            ReceiveError::Archive(ArchiveError::DiskFull { .. }) if spooled => Some(
                "the spool is full: a segment leaves it only once the object store has it, so check the uploads (errors above, walferry_upload_pending_bytes in /metrics) or give the spool more room; streaming resumes by itself once there is room".into(),
            ),
            _ => self.hint(),
        }
    }

    /// What the DBA can do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        if let Some(hint) = match self.sqlstate() {
            Some("28P01") => Some("check the password (PGPASSWORD, ~/.pgpass or -W) for this user"),
            Some("28000") => Some(
                "the server's pg_hba.conf must allow a replication connection for this user and host",
            ),
            Some("42501") => Some("the role needs the REPLICATION attribute: ALTER ROLE ... REPLICATION"),
            Some("42704") => Some("create the slot first with: walferry receive -S NAME --create-slot"),
            Some("58P01") => Some(
                "the server recycled WAL the archive still needs; use a replication slot (-S) so this cannot happen, and to start afresh move the archive's files aside",
            ),
            _ => None,
        } {
            return Some(hint.to_string());
        }
        match self {
            ReceiveError::Client(ClientError::Tls { message, .. })
                if message.contains("revocation list") =>
            {
                Some(
                    "a revoked or unlisted server certificate must be replaced on the server (ssl_cert_file); check that sslcrl/sslcrldir hold the current list of the CA that signed it".into(),
                )
            }
            ReceiveError::Client(ClientError::Tls { message, .. })
                if message.contains("certificate") =>
            {
                Some(
                    "the server's certificate must be signed by the CA in sslrootcert (or ~/.postgresql/root.crt) and, with sslmode=verify-full, name the host connected to".into(),
                )
            }
            ReceiveError::Client(
                ClientError::Connect { .. }
                | ClientError::Resolve { .. }
                | ClientError::Timeout { .. }
                | ClientError::AllHostsFailed(_),
            ) => Some(
                "check that the server is running and accepts TCP/IP connections on that host and port (-h/-p, or host/port in -d)".into(),
            ),
            ReceiveError::Client(c) => c.hint(),
            ReceiveError::Remote(r) => r.hint(),
            ReceiveError::UnknownSlot(_) => {
                Some("create the slot first with: walferry receive -S NAME --create-slot".into())
            }
            ReceiveError::Archive(ArchiveError::DiskFull { .. }) => Some(
                "free space on the archive's file system; streaming resumes by itself once there is room".into(),
            ),
            ReceiveError::Archive(ArchiveError::SystemMismatch { .. }) => Some(
                "each archive directory holds one database system; use a new directory for this server".into(),
            ),
            ReceiveError::Archive(ArchiveError::InvalidWal { .. }) => Some(
                "the server sent WAL that PostgreSQL's own reader would reject; nothing past the last valid record was acknowledged. Inspect the server's pg_wal with pg_waldump, and the kept .partial file".into(),
            ),
            ReceiveError::Archive(ArchiveError::Locked { pid, .. }) => Some(match pid {
                Some(pid) => format!("stop the process with pid {pid} first, or give this receiver its own directory"),
                None => "stop the other walferry process first, or give this receiver its own directory".into(),
            }),
            ReceiveError::Archive(ArchiveError::Conflict { .. }) => Some(
                "the archive holds a different segment under this name; inspect it before moving it aside".into(),
            ),
            _ => None,
        }
    }
}
