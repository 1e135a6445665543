//! The `walferry` binary: parse the command line, run one command, map the outcome to an
//! exit code. All the work lives in the library; see `src/commands/` for each command.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{ArgAction, CommandFactory, Parser, Subcommand};

mod commands;

const EXIT_CODES: &str = "\
Exit status:
  0  success (for receive: --endpos reached, or stopped by SIGINT/SIGTERM)
  1  failure; the message says what happened and a hint line what to do
  2  invalid command line (or config file)
  archive-get has its own (see walferry archive-get --help): 1 means \"not in the archive\",
  255 aborts recovery";

#[derive(Parser)]
#[command(
    name = "walferry",
    version,
    about = "Native PostgreSQL physical WAL shipping: receive, relay, back up, rebuild, fail over.",
    after_help = EXIT_CODES,
    disable_help_flag = true,
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Print help (pg tools' -? works too)
    #[arg(short = '?', long = "help", action = ArgAction::Help, global = true)]
    help: Option<bool>,

    /// More output: -v reports progress (segments, timelines), -vv adds protocol detail
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Subcommand)]
enum Command {
    /// Stream WAL from a PostgreSQL server into an archive directory (like pg_receivewal)
    // As pg_receivewal's getopt_long: a repeated flag's last value wins, and a long flag may
    // be abbreviated while it stays unambiguous.
    #[command(
        after_help = commands::receive::AFTER_HELP,
        disable_help_flag = true,
        args_override_self = true,
        infer_long_args = true
    )]
    Receive(Box<commands::receive::Args>),
    /// Receive and archive WAL as `receive` does, and serve it to downstream standbys
    #[command(
        after_help = commands::relay::AFTER_HELP,
        disable_help_flag = true,
        args_override_self = true,
        infer_long_args = true
    )]
    Relay(Box<commands::relay::RelayArgs>),
    /// Take a base backup into a repository (REPO/backups/<id>), checked against its WAL in REPO/wal
    #[command(after_help = commands::backup::AFTER_HELP, disable_help_flag = true)]
    Backup(Box<commands::backup::Args>),
    /// Lay out a data directory from a backup plus the archive, to any point in time
    #[command(after_help = commands::restore::AFTER_HELP, disable_help_flag = true)]
    Restore(Box<commands::restore::Args>),
    /// List a repository's backups, the range each can be restored to, and its WAL
    #[command(after_help = commands::list::LIST_AFTER_HELP, disable_help_flag = true)]
    List(commands::list::ListArgs),
    /// Remove old backups and the WAL only they need
    #[command(after_help = commands::list::EXPIRE_AFTER_HELP, disable_help_flag = true)]
    Expire(commands::list::ExpireArgs),
    /// Print a SCRAM-SHA-256 verifier line for `relay --auth-file` from a password
    #[command(after_help = commands::auth_verifier::AFTER_HELP, disable_help_flag = true)]
    AuthVerifier(commands::auth_verifier::Args),
    /// Check a whole archive directory: gaps, history files, every page, record and CRC
    #[command(after_help = commands::verify::AFTER_HELP, disable_help_flag = true)]
    Verify(commands::verify::Args),
    /// List the named restore points in an archive, and the recoverable range per timeline
    #[command(after_help = commands::restore_points::AFTER_HELP, disable_help_flag = true)]
    RestorePoints(commands::restore_points::Args),
    /// Show per timeline the WAL range, first and last commit, and restore point count
    #[command(after_help = commands::restore_points::WAL_INFO_AFTER_HELP, disable_help_flag = true)]
    WalInfo(commands::restore_points::Args),
    /// Serve a file of a repository's WAL archive to PostgreSQL (its restore_command)
    #[command(after_help = commands::archive_get::AFTER_HELP, disable_help_flag = true)]
    ArchiveGet(commands::archive_get::Args),
    /// Store a WAL file in a repository's archive for PostgreSQL (its archive_command)
    #[command(after_help = commands::archive_push::AFTER_HELP, disable_help_flag = true)]
    ArchivePush(commands::archive_push::Args),
    /// Arbitrate failover: keep the cluster's state and epoch, grant or refuse promotions
    #[command(after_help = commands::witness::AFTER_HELP, disable_help_flag = true)]
    Witness(commands::witness::Args),
    /// Watch this node's PostgreSQL, report to the witness, promote, fence, re-point, rejoin
    #[command(after_help = commands::agent::AFTER_HELP, disable_help_flag = true)]
    Agent(Box<commands::agent::Args>),
    /// Planned change of primary with no loss: the primary stops cleanly, NODE takes over
    #[command(after_help = commands::switchover::SWITCHOVER_AFTER_HELP, disable_help_flag = true)]
    Switchover(commands::switchover::Args),
    /// Force the promotion of NODE when the primary is lost (operator's choice of node)
    #[command(after_help = commands::switchover::FAILOVER_AFTER_HELP, disable_help_flag = true)]
    Failover(commands::switchover::FailoverArgs),
    /// Show what the witness knows: nodes, roles, LSNs and lag, epoch, who can be promoted
    #[command(after_help = commands::status::AFTER_HELP, disable_help_flag = true)]
    Status(commands::status::Args),
}

fn main() -> ExitCode {
    let argv = match commands::config::expand_args(Cli::command(), std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(e) => {
            return report(commands::Failure {
                message: e.to_string(),
                hint: e.hint(),
                exit_code: 2,
            })
        }
    };
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => exit_on_parse_error(e, &argv),
    };
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Receive(args) => commands::receive::run(*args),
        Command::Relay(args) => commands::relay::run(*args),
        Command::Backup(args) => commands::backup::run(*args, cli.verbose),
        Command::AuthVerifier(args) => commands::auth_verifier::run(args),
        Command::Restore(args) => commands::restore::run(*args, cli.verbose),
        Command::List(args) => commands::list::run_list(args, cli.verbose),
        Command::Expire(args) => commands::list::run_expire(args),
        Command::Verify(args) => commands::verify::run(args, cli.verbose),
        Command::RestorePoints(args) => commands::restore_points::run(args, cli.verbose),
        Command::WalInfo(args) => commands::restore_points::run_wal_info(args, cli.verbose),
        Command::ArchiveGet(args) => commands::archive_get::run(args),
        Command::ArchivePush(args) => commands::archive_push::run(args),
        Command::Witness(args) => commands::witness::run(args),
        Command::Agent(args) => commands::agent::run(*args),
        Command::Switchover(args) => commands::switchover::run_switchover(args),
        Command::Failover(args) => commands::switchover::run_failover(args),
        Command::Status(args) => commands::status::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(failure),
    }
}

/// As clap's own exit, except for archive-get: there an invalid command line must abort
/// recovery (status 255), not read as "not in the archive" (clap's status 2).
fn exit_on_parse_error(e: clap::Error, argv: &[std::ffi::OsString]) -> ! {
    let archive_get = argv.iter().skip(1).any(|a| a == "archive-get");
    if archive_get && e.use_stderr() {
        let _ = e.print();
        std::process::exit(i32::from(commands::archive_get::EXIT_FATAL));
    }
    e.exit()
}

fn report(failure: commands::Failure) -> ExitCode {
    if failure.message.is_empty() {
        return ExitCode::from(failure.exit_code);
    }
    eprintln!("walferry: error: {}", failure.message);
    if let Some(hint) = failure.hint {
        eprintln!("walferry: hint: {hint}");
    }
    ExitCode::from(failure.exit_code)
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        2 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
