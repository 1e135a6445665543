//! `walferry witness`: the failover arbiter (see `walferry::ha`).

use std::path::PathBuf;
use std::sync::Arc;

use walferry::ha::auth::Secret;
use walferry::ha::rules::Policy;
use walferry::ha::server::{self, WitnessService};
use walferry::ha::state::StateStore;
use walferry::ha::witness::Witness;
use walferry::ha::{Clock, SystemClock};

use super::Failure;

pub const AFTER_HELP: &str = "\
The witness keeps the cluster's state (which node is primary, its timeline, the epoch, each
node's last report) in DATA/witness.json, written and fsynced before any answer that depends on
it. It never acts on PostgreSQL: agents report to it, and it grants or refuses promotions.
A standby is granted a promote only when the primary has not reported itself healthy for the
failover timeout, no standby still reaches it, and the standby is the most advanced eligible
one (in --synchronous mode: holding every acknowledged commit).

Every request must be sealed with HMAC-SHA256 keyed by the secret in --secret-file (the same
file on every node; mode 0600), carry a fresh nonce and a timestamp within 30 s of the
witness's clock. Anything else is refused and changes nothing.

Run `walferry agent` on every database node; it reports to the witness, promotes, fences,
re-points and rejoins.

Prints \"listening on HOST:PORT\" once it accepts connections; runs until SIGINT/SIGTERM.

Exit status:
  0  stopped by SIGINT/SIGTERM
  1  failure (data directory, secret file, listen address); the message says what
  2  invalid command line";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on (port 0: any free port, printed at start)
    #[arg(long = "listen", value_name = "HOST:PORT")]
    pub listen: String,

    /// Directory of the witness's durable state (made, mode 0700, when missing)
    #[arg(long = "data", value_name = "DIR")]
    pub data: PathBuf,

    /// File holding the shared secret (mode 0600, at least 16 bytes)
    #[arg(long = "secret-file", value_name = "FILE")]
    pub secret_file: PathBuf,

    /// Seconds the primary must be silent (or report itself failed) before a promote
    #[arg(long = "failover-timeout", value_name = "SECONDS", default_value = "4")]
    pub failover_timeout: f64,

    /// Synchronous replication: promote only a standby holding every acknowledged commit
    #[arg(long = "synchronous")]
    pub synchronous: bool,

    /// With --synchronous: promote the most advanced standby even if it lacks acknowledged commits
    #[arg(long = "allow-data-loss")]
    pub allow_data_loss: bool,

    /// Print help
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let policy = policy(&args)?;
    let secret = Secret::load(&args.secret_file)
        .map_err(|e| Failure::new(e.to_string()).with_hint(e.hint()))?;
    let (store, state) = StateStore::open(&args.data).map_err(|e| {
        let f = Failure::new(e.to_string());
        match e.hint() {
            Some(h) => f.with_hint(h),
            None => f,
        }
    })?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    tracing::info!(
        "witness: epoch {}, primary {}",
        state.epoch,
        state.primary.as_deref().unwrap_or("(none yet)")
    );
    let witness = Witness::new(state, policy, clock.now());
    let service = WitnessService::new(witness, store, secret, clock);
    let runtime = super::current_thread_runtime()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| {
                Failure::new(format!("could not listen on {}: {e}", args.listen))
                    .with_hint("check --listen: HOST:PORT, free, and an address of this host")
            })?;
        let local = listener
            .local_addr()
            .map_or_else(|_| args.listen.clone(), |a| a.to_string());
        println!("listening on {local}");
        server::serve(listener, service, super::receive::wait_for_stop_signal())
            .await
            .map_err(|e| Failure::new(format!("witness failed: {e}")))
    })
}

fn policy(args: &Args) -> Result<Policy, Failure> {
    let failover_timeout =
        super::seconds_flag("failover-timeout", args.failover_timeout, "witness")?;
    if args.allow_data_loss && !args.synchronous {
        return Err(Failure::usage(
            "--allow-data-loss only applies with --synchronous",
            "witness",
        ));
    }
    let policy = Policy {
        failover_timeout,
        synchronous: args.synchronous,
        allow_data_loss: args.allow_data_loss,
    };
    policy
        .validate()
        .map_err(|e| Failure::usage(e.to_string(), "witness").with_hint(e.hint()))?;
    Ok(policy)
}
