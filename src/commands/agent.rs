//! `walferry agent`: the failover agent of one database node (see `walferry::ha::agent`).

use std::path::PathBuf;

use walferry::ha::agent::{Agent, AgentConfig};
use walferry::ha::rules::{AgentTimeouts, DEFAULT_FAILOVER_TIMEOUT};
use walferry::ha::wire::DEFAULT_PRIORITY;

use super::Failure;

pub const AFTER_HELP: &str = "\
Run one agent on every database node, as the operating-system user that owns PGDATA
(postgres), usually from a config file:  walferry --config /etc/walferry/agent.toml agent
(every option is also a key there: node = \"db1\", fence-timeout = 3, ...; see
config/agent.toml).

Every report interval the agent looks at its PostgreSQL and reports to the witness; it
carries out what the witness's answer and the rules say:
  primary   keeps running while the witness names it the primary; fenced (stopped at once)
            when it has reached neither the witness nor any standby for --fence-timeout,
            or when it hangs that long (no answer on the agent's connection, and its
            postmaster stopped by a signal or no answer to a new connection either) or
            loses its data directory. A stopped primary is
            started again only when the witness still names it the primary after two
            failover timeouts (no standby could take over).
  standby   streams from the epoch's primary (or from --upstream, a walferry relay), and
            asks the witness for a promote when it cannot reach the primary; promotes only
            when granted (with --upstream it first receives all the relay has flushed).
  old primary  a node whose server is a primary the witness does not name is stopped and
            rejoins as a standby of the new primary: pg_rewind (needs wal_log_hints = on or
            data checksums), else walferry restore --delta --standby from --repo, else a
            fresh copy of the new primary (pg_basebackup into a directory beside PGDATA,
            swapped in once complete). A failed rejoin is shown in walferry status and
            retried (5 s, doubling up to 2 min); the server stays stopped.

The failover state lives in a walferry witness (--witness, --secret-file) or in etcd
(--etcd http://HOST:PORT, with --failover-timeout and --synchronous the same on every agent;
the primary's liveness is then an etcd lease).

The agent needs: a superuser connection to its own server (--local-conninfo), the other
nodes' agents need --address to reach this server, and --replication-conninfo must let this
node stream from the primary, connect to its database postgres and run pg_rewind (a superuser,
or a REPLICATION role with pg_rewind's function grants). The epoch the node acts on is kept in
--state-file (default: next to PGDATA).

Exit status:
  0  stopped by SIGINT/SIGTERM
  1  failure (secret file, state file, configuration); the message says what
  2  invalid command line";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Read flags from this TOML file: keys are long flag names (node = "db1",
    /// fence-timeout = 3); flags given on the command line win (see config/)
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// This node's name (as the witness and `walferry status` show it; also its
    /// application_name as a standby)
    #[arg(long = "node", value_name = "NAME")]
    pub node: Option<String>,

    /// The local server's data directory
    #[arg(short = 'D', long = "pgdata", value_name = "DIR")]
    pub pgdata: Option<PathBuf>,

    /// Where pg_ctl and pg_rewind are
    #[arg(
        long = "bindir",
        value_name = "DIR",
        default_value = "/usr/lib/postgresql/15/bin"
    )]
    pub bindir: PathBuf,

    /// How the agent connects to its own server (a superuser)
    #[arg(
        long = "local-conninfo",
        value_name = "CONNINFO",
        default_value = "host=/var/run/postgresql user=postgres dbname=postgres"
    )]
    pub local_conninfo: String,

    /// How the other nodes reach this server: 'host=db1 port=5432'
    #[arg(long = "address", value_name = "CONNINFO")]
    pub address: Option<String>,

    /// Added to the primary's address to stream from it, probe it and pg_rewind from it
    #[arg(
        long = "replication-conninfo",
        value_name = "CONNINFO",
        default_value = "user=postgres"
    )]
    pub replication_conninfo: String,

    /// As a standby, stream from here (a walferry relay) instead of from the primary
    #[arg(long = "upstream", value_name = "CONNINFO")]
    pub upstream: Option<String>,

    #[command(flatten)]
    pub coord: super::coord_args::CoordArgs,

    /// Repository to rebuild this node from when pg_rewind cannot (walferry restore --delta;
    /// without it, or when that fails, the node is copied from the primary with pg_basebackup)
    #[arg(long = "repo", value_name = "REPO")]
    pub repo: Option<PathBuf>,

    /// Promotion preference: higher wins a tie on WAL position; 0 never promotes this node
    #[arg(long = "priority", value_name = "N", default_value_t = DEFAULT_PRIORITY)]
    pub priority: u32,

    /// synchronous_standby_names to set when this node becomes the primary
    #[arg(long = "synchronous-standby-names", value_name = "LIST")]
    pub synchronous_standby_names: Option<String>,

    /// Server log when the agent starts PostgreSQL [default: PGDATA/../postgresql.log]
    #[arg(long = "log-file", value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Where the agent keeps the epoch it acts on [default: PGDATA/../walferry-agent-NODE.json]
    #[arg(long = "state-file", value_name = "FILE")]
    pub state_file: Option<PathBuf>,

    /// Seconds between reports to the witness
    #[arg(
        long = "report-interval",
        value_name = "SECONDS",
        default_value = "0.5"
    )]
    pub report_interval: f64,

    /// Seconds without the witness and without any standby after which a primary fences
    #[arg(long = "fence-timeout", value_name = "SECONDS", default_value = "3")]
    pub fence_timeout: f64,

    /// Print help
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// A flag the agent cannot run without (clap does not require it: it may come from --config).
fn required<T>(value: Option<T>, flag: &str) -> Result<T, Failure> {
    value.ok_or_else(|| {
        Failure::usage(
            format!("--{flag} is required (on the command line or in the --config file)"),
            "agent",
        )
    })
}

pub fn run(args: Args) -> Result<(), Failure> {
    let node = required(args.node, "node")?;
    let pgdata = required(args.pgdata, "pgdata")?;
    let address = required(args.address, "address")?;
    let coordinator = args.coord.config("agent")?;
    let timeouts = AgentTimeouts {
        report_interval: super::seconds_flag("report-interval", args.report_interval, "agent")?,
        fence_timeout: super::seconds_flag("fence-timeout", args.fence_timeout, "agent")?,
    };
    // Checked against the default failover timeout now, and against the witness's own in
    // every answer.
    timeouts
        .validate(DEFAULT_FAILOVER_TIMEOUT.max(timeouts.fence_timeout + timeouts.report_interval))
        .map_err(|e| Failure::usage(e.to_string(), "agent").with_hint(e.hint()))?;
    let parent = pgdata
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let walferry = std::env::current_exe()
        .map_err(|e| Failure::new(format!("cannot find this program's path: {e}")))?;
    let cfg = AgentConfig {
        state_file: args
            .state_file
            .unwrap_or_else(|| parent.join(format!("walferry-agent-{node}.json"))),
        log_file: args
            .log_file
            .unwrap_or_else(|| parent.join("postgresql.log")),
        node,
        pgdata,
        bindir: args.bindir,
        local_conninfo: args.local_conninfo,
        address,
        replication_conninfo: args.replication_conninfo,
        upstream: args.upstream,
        coordinator,
        repo: args.repo,
        priority: args.priority,
        synchronous_standby_names: args.synchronous_standby_names,
        timeouts,
        walferry,
    };
    let agent = Agent::new(cfg).map_err(Failure::new)?;
    let runtime = super::current_thread_runtime()?;
    runtime.block_on(agent.run(super::receive::wait_for_stop_signal()));
    Ok(())
}
