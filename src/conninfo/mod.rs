//! libpq-compatible connection options: conninfo strings (`key=value ...`), `postgres://`
//! URLs, the PG* environment variables, service files (`service=`/PGSERVICE), `~/.pgpass`
//! and the command-line flags (`-d -h -p -U -w -W`). The result is a resolved [`ConnParams`] that the protocol client
//! connects with. Passwords never appear in `Debug` output or in error messages.
//!
//! Resolution mirrors pg_receivewal's streamutil.c `GetConnection` feeding libpq: values from
//! the `-d` string, then `-h -p -U` over them, then the service's values for what is still
//! unset (as libpq's `conninfo_add_defaults`), then the environment, then libpq's defaults. [`resolve_with`] does this without touching the process (the
//! environment comes in as an [`Environment`]); [`resolve`] runs it on the real one.

mod parse;
mod pgpass;
mod prompt;
mod service;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use parse::redact;
pub use prompt::prompt_password;

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

impl SslMode {
    /// The libpq spelling (`verify-full`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// libpq's `target_session_attrs`: which kind of server a connection must reach. With a
/// multi-host list every host is tried in turn until one qualifies, so `read-write` (or
/// `primary`) follows a failover to whichever node is now the primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TargetSessionAttrs {
    #[default]
    Any,
    /// Not read-only: neither in hot standby nor `default_transaction_read_only`.
    ReadWrite,
    /// Read-only, for either reason.
    ReadOnly,
    /// Not in hot standby (a primary, even one made read-only).
    Primary,
    /// In hot standby.
    Standby,
    /// A standby if any host is one; otherwise a second pass accepts any server.
    PreferStandby,
}

impl TargetSessionAttrs {
    /// The libpq spelling (`read-write`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }

    fn parse(s: &str) -> Option<TargetSessionAttrs> {
        Some(match s {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            "primary" => TargetSessionAttrs::Primary,
            "standby" => TargetSessionAttrs::Standby,
            "prefer-standby" => TargetSessionAttrs::PreferStandby,
            _ => return None,
        })
    }
}

impl fmt::Display for TargetSessionAttrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// libpq's `channel_binding`: whether SCRAM binds the authentication to the TLS session
/// (`SCRAM-SHA-256-PLUS` with `tls-server-end-point`), which proves that no one in the
/// middle terminated TLS, even when the server certificate is not verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ChannelBindingMode {
    /// Never bind.
    Disable,
    /// Bind when the connection uses TLS and the server offers it.
    #[default]
    Prefer,
    /// Fail unless the server authenticates with channel binding.
    Require,
}

impl ChannelBindingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBindingMode::Disable => "disable",
            ChannelBindingMode::Prefer => "prefer",
            ChannelBindingMode::Require => "require",
        }
    }

    fn parse(s: &str) -> Option<ChannelBindingMode> {
        Some(match s {
            "disable" => ChannelBindingMode::Disable,
            "prefer" => ChannelBindingMode::Prefer,
            "require" => ChannelBindingMode::Require,
            _ => return None,
        })
    }
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
    /// One port per host: always as long as `hosts` (a single port given for several hosts
    /// is repeated for each).
    pub ports: Vec<u16>,
    pub user: String,
    pub password: Option<Password>,
    /// Password file to consult when the server asks for a password and none was given;
    /// `None` when the file is missing or not 0600 (a warning is logged for the latter), and
    /// when a password was given (libpq then never reads the file).
    pub passfile: Option<PathBuf>,
    /// The `dbname` of the `-d` string, for information: a physical replication connection
    /// sends `database=replication` whatever it says, as pg_receivewal does.
    pub dbname: Option<String>,
    pub application_name: String,
    pub sslmode: SslMode,
    /// The CA file from `sslrootcert`/`PGSSLROOTCERT`, else `~/.postgresql/root.crt` when it
    /// exists (libpq then verifies the server against it even with `sslmode=require`).
    pub sslrootcert: Option<PathBuf>,
    /// The client certificate (chain) from `sslcert`/`PGSSLCERT`, else
    /// `~/.postgresql/postgresql.crt` when it exists; sent when the server asks for one.
    pub sslcert: Option<PathBuf>,
    /// Its private key, `sslkey`/`PGSSLKEY`, else `~/.postgresql/postgresql.key`; only read
    /// when there is a certificate.
    pub sslkey: Option<PathBuf>,
    /// `sslpassword`: for encrypted keys, which walferry refuses with a clear error; kept so
    /// that the error can say it was given.
    pub sslpassword: Option<Password>,
    /// Certificate revocation list file (`sslcrl`/`PGSSLCRL`, else `~/.postgresql/root.crl`
    /// when it exists); checked whenever the server certificate is verified.
    pub sslcrl: Option<PathBuf>,
    /// A directory of CRL files (`sslcrldir`/`PGSSLCRLDIR`); every file in it is read.
    pub sslcrldir: Option<PathBuf>,
    /// Which kind of server the connection must reach (`target_session_attrs`).
    pub target_session_attrs: TargetSessionAttrs,
    /// SCRAM channel binding (`channel_binding`).
    pub channel_binding: ChannelBindingMode,
    /// `None`: wait forever. Values under 2 s are raised to 2 s, as libpq does.
    pub connect_timeout: Option<Duration>,
    /// TCP keepalives and user timeout (libpq's `keepalives*`, `tcp_user_timeout`).
    pub keepalives: Keepalives,
    pub prompt: PasswordPrompt,
    /// What the startup packet asks for: a physical replication session (every command
    /// of walferry's but `backup --pgdata`'s second session), or an ordinary SQL session.
    pub session: SessionKind,
}

/// The kind of session a connection opens.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum SessionKind {
    /// `replication=true`, `database=replication`, as pg_receivewal.
    #[default]
    PhysicalReplication,
    /// An ordinary session on database `dbname` (for SQL such as `pg_backup_start()`).
    Sql { dbname: String },
}

impl ConnParams {
    /// The same server, for an ordinary SQL session on `dbname`.
    pub fn sql_session(&self, dbname: &str) -> ConnParams {
        ConnParams {
            session: SessionKind::Sql {
                dbname: dbname.to_string(),
            },
            ..self.clone()
        }
    }

    /// The (host, port) pairs to try, in order.
    pub fn targets(&self) -> impl Iterator<Item = (&Host, u16)> + '_ {
        self.hosts.iter().zip(self.ports.iter().copied())
    }
}

/// What the command line said; `None` means "not given" (environment and defaults apply),
/// and so does an empty string, as in libpq.
#[derive(Clone, Default)]
pub struct ConnOptions {
    /// `-d/--dbname`: a conninfo string (`host=... port=...`) or a `postgres://` URL.
    pub dbname: Option<String>,
    pub host: Option<String>,
    pub port: Option<String>,
    pub user: Option<String>,
    pub prompt: PasswordPrompt,
}

/// Hand-written so that a password inside the `-d` string is not printed.
impl fmt::Debug for ConnOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnOptions")
            .field("dbname", &self.dbname.as_deref().map(redact))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("prompt", &self.prompt)
            .finish()
    }
}

/// Where a setting came from, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The `-d` value, a `key=value` string.
    ConnString,
    /// The `-d` value, a `postgres://` URL.
    Url,
    /// A command-line flag, e.g. `-p/--port`.
    Flag(&'static str),
    /// An environment variable, e.g. `PGPORT`.
    Env(&'static str),
    /// The section of the service named by `service=` or PGSERVICE.
    Service,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::ConnString => f.write_str("in the connection string"),
            Origin::Url => f.write_str("in the connection URL"),
            Origin::Flag(flag) => write!(f, "given with {flag}"),
            Origin::Env(var) => write!(f, "from {var}"),
            Origin::Service => f.write_str("in the service file"),
        }
    }
}

/// Why the connection options cannot be used. Messages never contain a password: values
/// that may be one (anything from a URL's user info or port, a token right after a
/// `password=` value) are left out of them.
#[derive(Debug, thiserror::Error)]
pub enum ConnInfoError {
    #[error(
        "missing \"=\" after {} in the connection string; write key=value pairs such as \"host=db1 port=5432\" (quote values with spaces: password='a b') or a postgres:// URL",
        quoted_or(.keyword, "a password value")
    )]
    MissingEquals { keyword: Option<String> },
    #[error(
        "unterminated quoted value in the connection string; close it with ' (write \\' for a quote inside)"
    )]
    UnterminatedQuote,
    #[error(
        "unknown connection option {} {origin}; use libpq option names (host, port, user, password, sslmode, ...) and quote values with spaces",
        quoted_or(.keyword, "after a password value")
    )]
    UnknownOption {
        keyword: Option<String>,
        origin: Origin,
    },
    #[error("connection option \"{keyword}\" is not supported; {hint}")]
    UnsupportedOption {
        keyword: &'static str,
        hint: &'static str,
    },
    #[error("invalid connection URL: {0}")]
    InvalidUrl(String),
    #[error(
        "invalid port{} {origin}; give a number from 1 to 65535{}",
        quoted_value(.value),
        if *.origin == Origin::Url { " (a password in a URL goes in user:password@host)" } else { "" }
    )]
    InvalidPort {
        /// `None` for a URL port, which may be a password that lost its `@`.
        value: Option<String>,
        origin: Origin,
    },
    #[error(
        "{ports} ports given for {hosts} hosts; give one port for all hosts or one per host (host=a,b port=5432,5433)"
    )]
    PortCountMismatch { hosts: usize, ports: usize },
    #[error(
        "invalid sslmode \"{value}\" {origin}; use disable, allow, prefer, require, verify-ca or verify-full"
    )]
    InvalidSslMode { value: String, origin: Origin },
    #[error("invalid connect_timeout \"{value}\" {origin}; give whole seconds (0 waits forever)")]
    InvalidConnectTimeout { value: String, origin: Origin },
    #[error("invalid {key} \"{value}\" {origin}; give a whole number (0 = the system default)")]
    InvalidNumber {
        key: &'static str,
        value: String,
        origin: Origin,
    },
    #[error("cannot determine the user name to connect as; give one with -U or PGUSER")]
    NoUser,
    #[error(
        "sslmode={mode} needs a root certificate to verify the server, and none is set; put the CA certificate in ~/.postgresql/root.crt or give sslrootcert (PGSSLROOTCERT), or use sslmode=require"
    )]
    MissingRootCert { mode: SslMode },
    #[error(
        "invalid target_session_attrs \"{value}\" {origin}; use any, read-write, read-only, primary, standby or prefer-standby"
    )]
    InvalidTargetSessionAttrs { value: String, origin: Origin },
    #[error("invalid channel_binding \"{value}\" {origin}; use disable, prefer or require")]
    InvalidChannelBinding { value: String, origin: Origin },
    #[error(
        "channel_binding=require needs an SSL connection, but sslmode=disable never uses one; use sslmode=require or stricter"
    )]
    ChannelBindingWithoutSsl,
    #[error("definition of service \"{name}\" not found; looked in {}", list_paths(.searched))]
    ServiceNotFound {
        name: String,
        searched: Vec<PathBuf>,
    },
    #[error("{problem} in service file \"{}\", line {line}", .path.display())]
    ServiceFileSyntax {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("could not read service file \"{}\": {source}", .path.display())]
    ServiceFileRead {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn list_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "no service file (none of PGSERVICEFILE, ~/.pg_service.conf, PGSYSCONFDIR/pg_service.conf exists)".into();
    }
    paths
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect::<Vec<_>>()
        .join(" and ")
}

fn quoted_or(value: &Option<String>, otherwise: &str) -> String {
    match value {
        Some(v) => format!("\"{v}\""),
        None => otherwise.to_string(),
    }
}

fn quoted_value(value: &Option<String>) -> String {
    match value {
        Some(v) => format!(" \"{v}\""),
        None => String::new(),
    }
}

/// libpq's compiled-in default port (`DEF_PGPORT`).
pub const DEFAULT_PORT: u16 = 5432;
/// Debian's libpq default socket directory; used as the default host when it exists.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// The default host when [`DEFAULT_SOCKET_DIR`] does not exist.
pub const DEFAULT_TCP_HOST: &str = "localhost";
/// `fallback_application_name`, as pg_receivewal passes its program name.
pub const DEFAULT_APPLICATION_NAME: &str = "walferry";
/// Where the system-wide `pg_service.conf` lives when PGSYSCONFDIR is unset: Debian's
/// libpq is built with this `SYSCONFDIR` (`pg_config --sysconfdir`).
pub const DEFAULT_SYSCONFDIR: &str = "/etc/postgresql-common";

/// The PG* variables read, and the keyword each one fills.
const ENV_VARS: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("port", "PGPORT"),
    ("user", "PGUSER"),
    ("password", "PGPASSWORD"),
    ("passfile", "PGPASSFILE"),
    ("application_name", "PGAPPNAME"),
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("sslcrl", "PGSSLCRL"),
    ("sslcrldir", "PGSSLCRLDIR"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
    ("channel_binding", "PGCHANNELBINDING"),
];

/// The outside world as resolution sees it; [`resolve`] fills it from the process.
pub struct Environment<'a> {
    /// Environment variable lookup (`std::env::var` in [`resolve`]).
    pub var: &'a dyn Fn(&str) -> Option<String>,
    /// Home directory, for `~/.pgpass` and `~/.postgresql/root.crt`.
    pub home: Option<&'a Path>,
    /// The OS user name (getpwuid of the effective uid); `$USER` is tried when `None`.
    pub os_user: Option<&'a str>,
    /// The default socket directory when it exists; `None` makes `localhost` the default host.
    pub default_socket_dir: Option<&'a Path>,
    /// Where `pg_service.conf` is looked for when PGSYSCONFDIR is unset.
    pub default_sysconfdir: &'a Path,
}

/// Resolve options against the process environment (PG* variables, ~/.pgpass location).
pub fn resolve(opts: &ConnOptions) -> Result<ConnParams, ConnInfoError> {
    let var = |name: &str| std::env::var(name).ok();
    let passwd = sys::passwd_entry();
    // As libpq's pqGetHomeDirectory (PostgreSQL 15+): $HOME, else the passwd entry.
    let home = var("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| passwd.as_ref().map(|p| p.home.clone()));
    let socket_dir = Path::new(DEFAULT_SOCKET_DIR);
    resolve_with(
        opts,
        &Environment {
            var: &var,
            home: home.as_deref(),
            os_user: passwd.as_ref().map(|p| p.name.as_str()),
            default_socket_dir: socket_dir.is_dir().then_some(socket_dir),
            default_sysconfdir: Path::new(DEFAULT_SYSCONFDIR),
        },
    )
}

/// One resolved keyword and where it came from.
struct Setting {
    value: String,
    origin: Origin,
}

/// The resolution itself, without reading the process environment; the file system is only
/// asked whether the password file and the default TLS files exist, and for the service
/// file when a service is named.
pub fn resolve_with(
    opts: &ConnOptions,
    env: &Environment<'_>,
) -> Result<ConnParams, ConnInfoError> {
    let mut settings: HashMap<&'static str, Setting> = HashMap::new();
    // Empty values count as not given at every level: pg_receivewal drops empty -d values
    // and flags before libpq sees them, and an empty PG* variable ends at libpq's default.
    let nonempty = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());

    if let Some(d) = nonempty(&opts.dbname) {
        let (pairs, origin) = parse::parse_dbname_option(&d)?;
        for (keyword, value) in pairs {
            if !value.is_empty() {
                settings.insert(keyword, Setting { value, origin });
            }
        }
    }
    for (keyword, flag, value) in [
        ("host", "-h/--host", &opts.host),
        ("port", "-p/--port", &opts.port),
        ("user", "-U/--username", &opts.user),
    ] {
        if let Some(value) = nonempty(value) {
            let origin = Origin::Flag(flag);
            settings.insert(keyword, Setting { value, origin });
        }
    }
    let service = match settings.get("service") {
        Some(s) => Some(s.value.clone()),
        None => (env.var)("PGSERVICE").filter(|v| !v.is_empty()),
    };
    if let Some(name) = service {
        for (keyword, value) in service::lookup(&name, &service::files(env))? {
            if !value.is_empty() {
                let origin = Origin::Service;
                settings.entry(keyword).or_insert(Setting { value, origin });
            }
        }
    }
    for &(keyword, var) in ENV_VARS {
        if !settings.contains_key(keyword) {
            if let Some(value) = (env.var)(var).filter(|v| !v.is_empty()) {
                let origin = Origin::Env(var);
                settings.insert(keyword, Setting { value, origin });
            }
        }
    }
    let get = |k: &str| settings.get(k);

    let default_host = || match env.default_socket_dir {
        Some(dir) => Host::Unix(dir.to_path_buf()),
        None => Host::Tcp(DEFAULT_TCP_HOST.to_string()),
    };
    // As libpq's connectOptions2: comma lists, an empty entry takes the default.
    let hosts: Vec<Host> = match get("host") {
        None => vec![default_host()],
        Some(s) => s
            .value
            .split(',')
            .map(|h| match h {
                "" => default_host(),
                h if h.starts_with('/') => Host::Unix(PathBuf::from(h)),
                h => Host::Tcp(h.to_string()),
            })
            .collect(),
    };
    let mut ports = match get("port") {
        None => vec![DEFAULT_PORT],
        Some(s) => s
            .value
            .split(',')
            .map(|p| parse_port(p, s.origin))
            .collect::<Result<Vec<_>, _>>()?,
    };
    if ports.len() == 1 {
        ports = vec![ports[0]; hosts.len()];
    } else if ports.len() != hosts.len() {
        return Err(ConnInfoError::PortCountMismatch {
            hosts: hosts.len(),
            ports: ports.len(),
        });
    }

    let user = match get("user") {
        Some(s) => s.value.clone(),
        None => env
            .os_user
            .map(str::to_string)
            .filter(|u| !u.is_empty())
            .or_else(|| (env.var)("USER").filter(|u| !u.is_empty()))
            .ok_or(ConnInfoError::NoUser)?,
    };
    let password = get("password").map(|s| Password(s.value.clone()));

    let passfile = if password.is_some() {
        None
    } else {
        get("passfile")
            .map(|s| PathBuf::from(&s.value))
            .or_else(|| env.home.map(|h| h.join(".pgpass")))
            .filter(|p| pgpass::check(p) == pgpass::FileState::Usable)
    };

    let application_name = get("application_name")
        .or_else(|| get("fallback_application_name"))
        .map_or(DEFAULT_APPLICATION_NAME.to_string(), |s| s.value.clone());

    let sslmode = match get("sslmode") {
        None => SslMode::default(),
        Some(s) => SslMode::parse(&s.value).ok_or_else(|| ConnInfoError::InvalidSslMode {
            value: s.value.clone(),
            origin: s.origin,
        })?,
    };
    let sslrootcert = match get("sslrootcert") {
        Some(s) => Some(PathBuf::from(&s.value)),
        None => env
            .home
            .map(|h| h.join(".postgresql").join("root.crt"))
            .filter(|p| p.exists()),
    };
    if matches!(sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && sslrootcert.is_none() {
        return Err(ConnInfoError::MissingRootCert { mode: sslmode });
    }
    // As libpq: files under ~/.postgresql are defaults; the certificate and the CRL only
    // when they exist, the key always (it is read only when there is a certificate).
    let in_dot_postgresql = |name: &str| env.home.map(|h| h.join(".postgresql").join(name));
    let path_or = |key: &str, default: Option<PathBuf>| match get(key) {
        Some(s) => Some(PathBuf::from(&s.value)),
        None => default,
    };
    let sslcert = path_or(
        "sslcert",
        in_dot_postgresql("postgresql.crt").filter(|p| p.exists()),
    );
    let sslkey = path_or("sslkey", in_dot_postgresql("postgresql.key"));
    let sslcrl = path_or(
        "sslcrl",
        in_dot_postgresql("root.crl").filter(|p| p.exists()),
    );
    let sslcrldir = path_or("sslcrldir", None);

    let target_session_attrs = match get("target_session_attrs") {
        None => TargetSessionAttrs::default(),
        Some(s) => TargetSessionAttrs::parse(&s.value).ok_or_else(|| {
            ConnInfoError::InvalidTargetSessionAttrs {
                value: s.value.clone(),
                origin: s.origin,
            }
        })?,
    };
    let channel_binding = match get("channel_binding") {
        None => ChannelBindingMode::default(),
        Some(s) => ChannelBindingMode::parse(&s.value).ok_or_else(|| {
            ConnInfoError::InvalidChannelBinding {
                value: s.value.clone(),
                origin: s.origin,
            }
        })?,
    };
    // libpq would find out at authentication time; the outcome is the same failure.
    if channel_binding == ChannelBindingMode::Require && sslmode == SslMode::Disable {
        return Err(ConnInfoError::ChannelBindingWithoutSsl);
    }

    let connect_timeout = match get("connect_timeout") {
        None => None,
        Some(s) => parse_connect_timeout(&s.value, s.origin)?,
    };

    let keepalives = parse_keepalives(|k| get(k).map(|s| (s.value.clone(), s.origin)))?;

    Ok(ConnParams {
        hosts,
        ports,
        user,
        password,
        passfile,
        dbname: get("dbname").map(|s| s.value.clone()),
        application_name,
        sslmode,
        sslrootcert,
        sslcert,
        sslkey,
        sslpassword: get("sslpassword").map(|s| Password(s.value.clone())),
        sslcrl,
        sslcrldir,
        target_session_attrs,
        channel_binding,
        connect_timeout,
        keepalives,
        prompt: opts.prompt,
        session: SessionKind::PhysicalReplication,
    })
}

/// One entry of a port list; empty means the default, as libpq's connectOptions2.
fn parse_port(p: &str, origin: Origin) -> Result<u16, ConnInfoError> {
    if p.is_empty() {
        return Ok(DEFAULT_PORT);
    }
    p.trim()
        .parse::<u16>()
        .ok()
        .filter(|n| *n != 0 && p.trim().bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| ConnInfoError::InvalidPort {
            value: (origin != Origin::Url).then(|| p.to_string()),
            origin,
        })
}

/// As libpq's pqConnectDBComplete: whole seconds, surrounding whitespace allowed; zero or
/// negative waits forever; 1 becomes 2, so that rounding cannot make it fail at once.
fn parse_connect_timeout(s: &str, origin: Origin) -> Result<Option<Duration>, ConnInfoError> {
    let secs: i64 = s
        .trim()
        .parse()
        .map_err(|_| ConnInfoError::InvalidConnectTimeout {
            value: s.to_string(),
            origin,
        })?;
    Ok(match secs {
        ..=0 => None,
        1 => Some(Duration::from_secs(2)),
        n => Some(Duration::from_secs(n.unsigned_abs())),
    })
}

/// TCP-level dead-peer detection, as libpq sets it on TCP connections: keepalive probes
/// are on unless `keepalives=0`; `None` leaves the operating system's setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalives {
    pub enabled: bool,
    /// Idle time before the first probe (`keepalives_idle`).
    pub idle: Option<Duration>,
    /// Time between probes (`keepalives_interval`).
    pub interval: Option<Duration>,
    /// Unanswered probes before the connection is dead (`keepalives_count`).
    pub count: Option<u32>,
    /// How long sent data may stay unacknowledged before the connection is dead
    /// (`tcp_user_timeout`, milliseconds in the conninfo).
    pub user_timeout: Option<Duration>,
}

impl Default for Keepalives {
    fn default() -> Self {
        Keepalives {
            enabled: true,
            idle: None,
            interval: None,
            count: None,
            user_timeout: None,
        }
    }
}

/// The keepalive settings: integers as libpq takes them; zero means the system default.
fn parse_keepalives(
    get: impl Fn(&str) -> Option<(String, Origin)>,
) -> Result<Keepalives, ConnInfoError> {
    let number = |key: &'static str| -> Result<Option<u32>, ConnInfoError> {
        let Some((value, origin)) = get(key) else {
            return Ok(None);
        };
        let n: u32 = value
            .trim()
            .parse()
            .map_err(|_| ConnInfoError::InvalidNumber {
                key,
                value: value.clone(),
                origin,
            })?;
        Ok(Some(n).filter(|&n| n > 0))
    };
    let enabled = match get("keepalives") {
        None => true,
        Some((value, origin)) => match value.trim().parse::<i64>() {
            Ok(n) => n != 0,
            Err(_) => {
                return Err(ConnInfoError::InvalidNumber {
                    key: "keepalives",
                    value,
                    origin,
                })
            }
        },
    };
    let secs = |n: Option<u32>| n.map(|n| Duration::from_secs(n.into()));
    Ok(Keepalives {
        enabled,
        idle: secs(number("keepalives_idle")?),
        interval: secs(number("keepalives_interval")?),
        count: number("keepalives_count")?,
        user_timeout: number("tcp_user_timeout")?.map(|ms| Duration::from_millis(ms.into())),
    })
}

/// The password for one connection attempt: the explicit one, else a matching ~/.pgpass
/// line (database field matched against `replication`).
pub fn password_for(params: &ConnParams, host: &Host, port: u16) -> Option<Password> {
    if let Some(p) = &params.password {
        return Some(p.clone());
    }
    let file = params.passfile.as_deref()?;
    pgpass::read_password(file, host, port, &params.user).map(Password)
}

/// The passwd entry of the effective user.
mod sys {
    use std::ffi::CStr;
    use std::path::PathBuf;

    pub(super) struct PasswdEntry {
        pub name: String,
        pub home: PathBuf,
    }

    /// getpwuid_r(geteuid()), growing the buffer on ERANGE; `None` when there is no entry
    /// (e.g. a container running under an arbitrary uid).
    pub(super) fn passwd_entry() -> Option<PasswdEntry> {
        let mut buf_len = 1024usize;
        loop {
            let mut buf = vec![0 as libc::c_char; buf_len];
            // SAFETY: an all-zero passwd is a valid value of this plain C struct.
            let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: every pointer is to live, writable memory of the stated size; on
            // success `result` points at `pwd`, whose strings point into `buf`.
            let rc = unsafe {
                libc::getpwuid_r(
                    libc::geteuid(),
                    &mut pwd,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut result,
                )
            };
            if rc == libc::ERANGE && buf_len < 1 << 20 {
                buf_len *= 4;
                continue;
            }
            if rc != 0 || result.is_null() || pwd.pw_name.is_null() || pwd.pw_dir.is_null() {
                return None;
            }
            // SAFETY: on success both are NUL-terminated strings inside `buf`, still alive.
            let (name, dir) = unsafe { (CStr::from_ptr(pwd.pw_name), CStr::from_ptr(pwd.pw_dir)) };
            return Some(PasswdEntry {
                name: name.to_str().ok()?.to_string(),
                home: PathBuf::from(dir.to_str().ok()?),
            });
        }
    }
}

#[cfg(test)]
mod tests;
