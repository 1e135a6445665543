//! `walferry switchover` and `walferry failover`: an operator changes the primary through the
//! witness, and watches it happen.

use std::time::{Duration, Instant};

use walferry::ha::state::Role;
use walferry::ha::wire::{Answer, OperatorRequest, Request, StatusView};

use super::status::{ask, status_view};
use super::Failure;

pub const SWITCHOVER_AFTER_HELP: &str = "\
A planned change of primary with no loss: the witness tells the primary's agent to stop
PostgreSQL cleanly (its shutdown checkpoint is sent to the standbys), and once NODE has
received all of it, NODE is promoted for the next epoch; the old primary's agent then makes it a
standby of NODE (pg_rewind finds nothing to rewind). Clients using a multi-host conninfo with
target_session_attrs=read-write reach NODE. The witness gives up after 60 s if NODE does not
catch up (the old primary then comes back).

NODE must be a healthy standby that reports to the witness at the current epoch and
timeline, and the primary must be healthy and reporting (else use walferry failover).

Prints each step, and waits (--wait) until NODE is the primary and the old primary is back
as a standby.

Exit status:
  0  NODE is the primary (and, unless --no-wait, the old primary is its standby)
  1  refused (with the reason), or not done within --wait
  2  invalid command line";

pub const FAILOVER_AFTER_HELP: &str = "\
Forces the promotion of NODE when the primary is lost (its agent silent for the failover
timeout, or reporting PostgreSQL down) but the automatic rules will not pick NODE: because
another standby is more advanced or preferred, still reaches the primary, or NODE has
priority 0 (never promoted automatically). It is refused
while the primary is alive (use walferry switchover). In synchronous mode NODE must hold every
acknowledged commit unless --allow-data-loss is given.

Exit status:
  0  NODE is the primary
  1  refused (with the reason), or not done within --wait
  2  invalid command line";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The node to make the primary
    #[arg(long = "to", value_name = "NODE")]
    pub to: String,

    #[command(flatten)]
    pub coord: super::coord_args::CoordArgs,

    /// Seconds to wait for the change to complete
    #[arg(long = "wait", value_name = "SECONDS", default_value = "90")]
    pub wait: u64,

    /// Return once the witness accepted the request
    #[arg(long = "no-wait")]
    pub no_wait: bool,

    /// Print help
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

#[derive(clap::Args, Debug)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub common: Args,

    /// In synchronous mode, promote NODE even if it lacks acknowledged commits
    #[arg(long = "allow-data-loss")]
    pub allow_data_loss: bool,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub fn run_switchover(args: Args) -> Result<(), Failure> {
    run(args, false, false)
}

pub fn run_failover(args: FailoverArgs) -> Result<(), Failure> {
    run(args.common, true, args.allow_data_loss)
}

fn run(args: Args, forced: bool, allow_data_loss: bool) -> Result<(), Failure> {
    let command = if forced { "failover" } else { "switchover" };
    let coord = args.coord.config(command)?;
    let runtime = super::current_thread_runtime()?;
    runtime.block_on(async {
        let before = status_view(&coord, CALL_TIMEOUT).await?;
        let old = before.primary.clone();
        let request = OperatorRequest {
            to: args.to.clone(),
            allow_data_loss,
        };
        let request = if forced {
            Request::Failover(request)
        } else {
            Request::Switchover(request)
        };
        match ask(&coord, CALL_TIMEOUT, request).await? {
            (_, Answer::Accepted { message }) => println!("{message}"),
            (epoch, Answer::Granted { node }) => {
                println!("failover to \"{node}\" granted for epoch {epoch}")
            }
            (_, Answer::Refused { message, .. }) => {
                return Err(Failure::new(format!("refused: {message}"))
                    .with_hint("walferry status shows the nodes and who can be promoted"))
            }
            (_, other) => {
                return Err(Failure::new(format!(
                    "unexpected answer from the witness: {other:?}"
                )))
            }
        }
        if args.no_wait {
            return Ok(());
        }
        let started = Instant::now();
        let deadline = started + Duration::from_secs(args.wait.max(1));
        let mut promoted = false;
        let mut said = String::new();
        loop {
            if let Ok(view) = status_view(&coord, CALL_TIMEOUT).await {
                let step = progress(&view, &args.to, old.as_deref(), before.epoch.0);
                if step.text != said {
                    println!("{:>6.1} s  {}", started.elapsed().as_secs_f64(), step.text);
                    said = step.text.clone();
                }
                if step.promoted && !promoted {
                    promoted = true;
                    if forced {
                        return Ok(());
                    }
                }
                if step.done {
                    return Ok(());
                }
                let under_way =
                    view.switchover_pending.is_some() || view.promotion_pending.is_some();
                if !forced && !step.promoted && !under_way {
                    return Err(Failure::new(format!(
                        "the switchover to \"{}\" was abandoned: {}",
                        args.to, step.text
                    )));
                }
            }
            if Instant::now() >= deadline {
                return Err(
                    Failure::new(format!("not done within {} s: {said}", args.wait)).with_hint(
                        "walferry status shows where it stands; the agents' logs say why",
                    ),
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

struct Step {
    text: String,
    promoted: bool,
    done: bool,
}

fn progress(v: &StatusView, to: &str, old: Option<&str>, epoch_before: u64) -> Step {
    let promoted = v.primary.as_deref() == Some(to)
        && v.epoch.0 > epoch_before
        && v.promotion_pending.is_none();
    let old_back = old.is_none_or(|old| {
        v.nodes
            .iter()
            .any(|n| n.name == old && n.role == Role::Standby && n.epoch == v.epoch && !n.down)
    });
    let old_name = old.unwrap_or("the old primary");
    let text = if !promoted {
        match (&v.switchover_pending, &v.promotion_pending) {
            (_, Some(p)) => format!("\"{p}\" is promoting (epoch {})", v.epoch),
            (Some(_), None) => {
                let down = v
                    .nodes
                    .iter()
                    .any(|n| Some(n.name.as_str()) == old && n.down);
                if down {
                    format!("\"{old_name}\" stopped; \"{to}\" is receiving its last WAL")
                } else {
                    format!("\"{old_name}\" is stopping cleanly")
                }
            }
            (None, None) => v
                .candidates
                .iter()
                .find(|c| c.node == to)
                .and_then(|c| c.note.clone())
                .unwrap_or_else(|| "waiting for the witness".to_string()),
        }
    } else if !old_back {
        format!(
            "\"{to}\" is the primary (epoch {}, timeline {}); \"{old_name}\" is rejoining as its standby",
            v.epoch, v.timeline
        )
    } else {
        format!(
            "\"{to}\" is the primary (epoch {}, timeline {}); \"{old_name}\" follows it",
            v.epoch, v.timeline
        )
    };
    Step {
        text,
        promoted,
        done: promoted && old_back,
    }
}
