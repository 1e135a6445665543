//! One file per subcommand. Commands are thin: options -> library calls -> output.

pub mod agent;
pub mod archive_get;
pub mod archive_push;
pub mod auth_verifier;
pub mod backup;
pub mod config;
pub mod coord_args;
pub mod list;
pub mod receive;
pub mod relay;
pub mod remote_repo;
pub mod restore;
pub mod restore_points;
pub mod service;
pub mod status;
pub mod switchover;
pub mod verify;
pub mod witness;

use clap::Args;

use walferry::conninfo::{ConnOptions, PasswordPrompt};

/// A command's failure, as printed: `walferry: error: ...` then `walferry: hint: ...`, and
/// the exit status (1, or 2 for an invalid command line).
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub hint: Option<String>,
    pub exit_code: u8,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            hint: None,
            exit_code: 1,
        }
    }

    /// An invalid command line for `walferry COMMAND`: exit status 2, and the hint
    /// pg_receivewal gives.
    pub fn usage(message: impl Into<String>, command: &str) -> Self {
        Failure {
            exit_code: 2,
            ..Failure::new(message)
        }
        .with_hint(format!(
            "try \"walferry {command} --help\" for more information"
        ))
    }

    /// A failure that only sets the exit status (nothing printed): an answer such as
    /// archive-get's "not in the archive", which is no error.
    pub fn silent(exit_code: u8) -> Self {
        Failure {
            message: String::new(),
            hint: None,
            exit_code,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// libpq-style connection flags, with pg_receivewal's names. As with its getopt, a value
/// may start with '-', and of -w and -W the last one given wins.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Connection options")]
pub struct ConnArgs {
    /// Connection string (key=value ...) or postgres:// URL; keywords as libpq's
    /// (target_session_attrs, sslcert, sslcrl, channel_binding, service, ...)
    #[arg(
        short = 'd',
        long = "dbname",
        value_name = "CONNSTR",
        allow_hyphen_values = true
    )]
    pub dbname: Option<String>,
    /// Server host name or Unix-socket directory [env: PGHOST]
    #[arg(
        short = 'h',
        long = "host",
        value_name = "HOSTNAME",
        allow_hyphen_values = true
    )]
    pub host: Option<String>,
    /// Server port [env: PGPORT; default: 5432]
    #[arg(
        short = 'p',
        long = "port",
        value_name = "PORT",
        allow_hyphen_values = true
    )]
    pub port: Option<String>,
    /// Connect as this user [env: PGUSER; default: the OS user]
    #[arg(
        short = 'U',
        long = "username",
        value_name = "NAME",
        allow_hyphen_values = true
    )]
    pub username: Option<String>,
    /// Never prompt for a password
    #[arg(short = 'w', long = "no-password", overrides_with = "password")]
    pub no_password: bool,
    /// Prompt for a password (on the terminal) before connecting
    #[arg(short = 'W', long = "password", overrides_with = "no_password")]
    pub password: bool,
}

impl ConnArgs {
    pub fn options(&self) -> ConnOptions {
        ConnOptions {
            dbname: self.dbname.clone(),
            host: self.host.clone(),
            port: self.port.clone(),
            user: self.username.clone(),
            prompt: if self.no_password {
                PasswordPrompt::Never
            } else if self.password {
                PasswordPrompt::Always
            } else {
                PasswordPrompt::IfNeeded
            },
        }
    }
}

/// A `--NAME SECONDS` flag of `command`: more than 0, less than a day.
pub fn seconds_flag(name: &str, secs: f64, command: &str) -> Result<std::time::Duration, Failure> {
    if secs.is_finite() && secs > 0.0 && secs < 86_400.0 {
        Ok(std::time::Duration::from_secs_f64(secs))
    } else {
        Err(Failure::usage(
            format!("invalid --{name} {secs}: expected seconds, more than 0"),
            command,
        ))
    }
}

/// A single-threaded tokio runtime, for commands whose network work is one connection
/// (`receive`): blocking file work runs in place or on its own thread, and no worker ever
/// has to be woken to take over another's tasks.
pub fn current_thread_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("could not start the async runtime: {e}")))
}
