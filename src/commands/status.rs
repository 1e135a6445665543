//! `walferry status`: what the witness knows (nodes, roles, LSNs, lag, epoch, who can be
//! promoted), as a table or JSON.

use std::fmt::Write as _;
use std::time::Duration;

use walferry::ha::coordinator::{Coordination, Coordinator, CoordinatorConfig};
use walferry::ha::wire::{Answer, Request, StatusView};
use walferry::ha::Epoch;

use super::Failure;

pub const AFTER_HELP: &str = "\
Asks the witness (`walferry witness`) for the cluster's state, with the shared secret.

--json prints the witness's status answer as one JSON object: epoch, primary, timeline,
promotion_pending, switchover_pending, sync_acked_lsn, synchronous, failover_timeout_ms,
primary_silent_ms, nodes (name, role, stale, timeline, epoch, flush_lsn, replay_lsn,
lag_bytes, health, primary_visible, priority, synchronous, last_report_ms_ago, down, address,
problem) and candidates (node, flush_lsn, priority, eligible, note), best first.

Exit status:
  0  the witness answered
  1  the witness could not be reached or refused the request
  2  invalid command line";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub coord: super::coord_args::CoordArgs,

    /// Print JSON instead of a table
    #[arg(long = "json")]
    pub json: bool,

    /// Seconds to wait for the witness
    #[arg(long = "timeout", value_name = "SECONDS", default_value = "5")]
    pub timeout: u64,

    /// Print help
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let coord = args.coord.config("status")?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let runtime = super::current_thread_runtime()?;
    let view = runtime.block_on(status_view(&coord, timeout))?;
    if args.json {
        let text = serde_json::to_string_pretty(&view)
            .map_err(|e| Failure::new(format!("could not print the status: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", table(&view));
    }
    Ok(())
}

/// The status answer of the witness (or etcd).
pub async fn status_view(
    coord: &CoordinatorConfig,
    timeout: Duration,
) -> Result<Box<StatusView>, Failure> {
    match ask(coord, timeout, Request::Status).await? {
        (_, Answer::Status(view)) => Ok(view),
        (_, other) => Err(Failure::new(format!(
            "unexpected answer from the {coord}: {other:?}"
        ))),
    }
}

/// One request to the witness (or etcd); its errors (unreachable, refused with an error) as
/// failures.
pub async fn ask(
    coord: &CoordinatorConfig,
    timeout: Duration,
    request: Request,
) -> Result<(Epoch, Answer), Failure> {
    let mut coordinator = Coordinator::new(coord).map_err(Failure::new)?;
    match coordinator.call(request, timeout).await {
        Ok((_, Answer::Error { message, hint })) => {
            let f = Failure::new(format!("the {coord} refused: {message}"));
            Err(match hint {
                Some(h) => f.with_hint(h),
                None => f,
            })
        }
        Ok(answer) => Ok(answer),
        Err(e) => {
            let f = Failure::new(e.message);
            Err(match e.hint {
                Some(h) => f.with_hint(h),
                None => f,
            })
        }
    }
}

fn table(v: &StatusView) -> String {
    let mut out = String::new();
    let primary = v.primary.as_deref().unwrap_or("(none yet)");
    let _ = writeln!(
        out,
        "epoch {}  primary {}  timeline {}  primary silent {:.1} s (failover after {:.1} s){}",
        v.epoch,
        primary,
        v.timeline,
        v.primary_silent_ms as f64 / 1000.0,
        v.failover_timeout_ms as f64 / 1000.0,
        match (&v.promotion_pending, &v.switchover_pending) {
            (Some(n), _) => format!("  promotion of {n} pending"),
            (None, Some(n)) => format!("  switchover to {n} under way"),
            (None, None) => String::new(),
        }
    );
    if v.synchronous {
        let _ = writeln!(
            out,
            "synchronous mode: commits acknowledged up to {}{}",
            v.sync_acked_lsn,
            if v.allow_data_loss {
                " (data loss allowed)"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(
        out,
        "\n{:<16} {:<16} {:>3} {:>5} {:>18} {:>18} {:>12} {:<7} {:>4} {:>9}",
        "NODE", "ROLE", "TLI", "EPOCH", "FLUSH", "REPLAY", "LAG", "HEALTH", "PRIO", "REPORTED"
    );
    for n in &v.nodes {
        let mut role = n.role.to_string();
        if n.stale {
            role.push_str(" (stale)");
        } else if n.synchronous {
            role.push_str(" (sync)");
        }
        let lag = n
            .lag_bytes
            .map_or_else(|| "-".to_string(), |b| b.to_string());
        let _ = writeln!(
            out,
            "{:<16} {:<16} {:>3} {:>5} {:>18} {:>18} {:>12} {:<7} {:>4} {:>7.1} s",
            n.name,
            role,
            n.timeline,
            n.epoch,
            n.flush_lsn.to_string(),
            n.replay_lsn.to_string(),
            lag,
            n.health.to_string(),
            n.priority,
            n.last_report_ms_ago as f64 / 1000.0
        );
    }
    for n in &v.nodes {
        if n.down {
            let _ = writeln!(out, "{}: PostgreSQL is down", n.name);
        }
        if let Some(problem) = &n.problem {
            let _ = writeln!(out, "{}: {problem}", n.name);
        }
    }
    let _ = writeln!(out, "\npromotable if the primary is lost (best first):");
    if v.candidates.is_empty() {
        let _ = writeln!(out, "  none: no standby has reported");
    }
    for c in &v.candidates {
        let verdict = if c.eligible { "yes" } else { "no" };
        let _ = writeln!(
            out,
            "  {:<16} {:<3} flush {}, priority {}{}",
            c.node,
            verdict,
            c.flush_lsn,
            c.priority,
            c.note
                .as_ref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        );
    }
    out
}
