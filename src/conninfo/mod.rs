//! libpq-compatible connection options: conninfo strings (`key=value ...`), `postgres://`
//! URLs, the PG* environment variables, `~/.pgpass` and the command-line flags
//! (`-d -h -p -U -w -W`). The result is a resolved [`ConnParams`] that the protocol client
//! connects with. Passwords never appear in `Debug` output or in error messages.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Where to connect: a TCP host name / address, or a Unix-socket directory (a host that
/// starts with `/`, as in libpq).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Tcp(String),
    Unix(PathBuf),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(h) => f.write_str(h),
            Host::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// libpq's `sslmode`. `allow` is accepted and treated as `prefer` is not: it first tries
/// without TLS, as libpq does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A password that does not print itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// How to ask for a password: `-w` never, `-W` before connecting, otherwise when the
/// server asks and a terminal is there (as libpq's clients do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PasswordPrompt {
    Never,
    Always,
    #[default]
    IfNeeded,
}

/// Fully resolved connection parameters.
#[derive(Clone, Debug)]
pub struct ConnParams {
    /// Tried in order, like libpq's multi-host lists.
    pub hosts: Vec<Host>,
    /// One port per host (a single port applies to every host).
    pub ports: Vec<u16>,
    pub user: String,
    pub password: Option<Password>,
    /// Password file to consult when the server asks for a password and none was given;
    /// `None` when the file is missing or not 0600 (a warning is logged for the latter).
    pub passfile: Option<PathBuf>,
    pub dbname: Option<String>,
    pub application_name: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub connect_timeout: Option<Duration>,
    pub prompt: PasswordPrompt,
}

// ---- PLACEHOLDER API below (being implemented by the conninfo work) ----

/// What the command line said; `None` means "not given" (environment and defaults apply).
#[derive(Clone, Debug, Default)]
pub struct ConnOptions {
    /// `-d/--dbname`: a conninfo string (`host=... port=...`) or a `postgres://` URL.
    pub dbname: Option<String>,
    pub host: Option<String>,
    pub port: Option<String>,
    pub user: Option<String>,
    pub prompt: PasswordPrompt,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnInfoError(pub String);

/// Resolve options against the process environment (PG* variables, ~/.pgpass location).
pub fn resolve(_opts: &ConnOptions) -> Result<ConnParams, ConnInfoError> {
    unimplemented!()
}

/// The password for one connection attempt: the explicit one, else a matching ~/.pgpass
/// line (database field matched against `replication`).
pub fn password_for(_params: &ConnParams, _host: &Host, _port: u16) -> Option<Password> {
    unimplemented!()
}
