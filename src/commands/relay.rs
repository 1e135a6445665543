//! `walferry relay`: `receive`, plus serving the stream to downstream standbys.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use walferry::auth::AuthFile;
use walferry::relay::{self, AuthMethod, RelayOptions};

use super::receive::{self, conclude, receive_failure, wait_for_stop_signal, Plan};
use super::Failure;

pub const AFTER_HELP: &str = "\
walferry relay receives and archives WAL exactly as walferry receive does (same flags, start
point, validation, durability, compression, timeline following and reconnects), and serves
it to downstream PostgreSQL standbys, pg_receivewal and walferry receive, which connect to
--listen as they would to a primary (primary_conninfo = 'host=RELAY port=PORT ...').

Downstreams are served only WAL that the relay has validated and made durable in its
archive (with --serve-unflushed: validated and written, before the relay's own fsync; see
below): from memory while they keep up (the newest 64 MiB), from the archive's segment files
when they fall behind, so a standby that was down for hours catches up without a
restore_command (from an s3:// archive, from the store once the spool has let it go).
Slots that downstreams create (CREATE_REPLICATION_SLOT) are kept in DIR/.walferry-slots.json
across restarts, with each one's restart_lsn.

Acknowledgement upstream (what the primary waits for when the relay's application_name is
in synchronous_standby_names; whether it waits is the primary's choice, async by default):
  default             each write is made durable in the archive as it arrives (downstreams
                      are served durable WAL only) and its flush reported at once, as
                      walferry receive --synchronous does; --synchronous is implied
  --sync-downstream N flush reported only once WAL is durable in the archive AND N
                      downstreams have reported it flushed (RPO 0 on N+1 copies)
  --synchronous-remote (with -D s3://... --spool DIR) flush reported only once the store
                      holds it; with --sync-downstream N, the lower of the two: held by
                      the store and flushed by N downstreams

With -D s3://BUCKET/.../wal --spool DIR the archive is the store and DIR its spool (as for
walferry receive): a downstream that asks for WAL the spool has let go (uploaded) is served
from the store, each segment fetched for that session into DIR/.walferry-store-fill/.

--serve-unflushed sends each piece of WAL downstream as soon as it is validated and written,
while the relay's fsync of it is still running, instead of after: the relay's fsync no
longer adds to its standbys' replication lag. What the relay reports upstream as flushed is
unchanged. Everything a primary sends it has already flushed itself, so a standby can never
get WAL the primary might lose; what it can get is WAL the relay's archive loses if the
relay's host crashes in that instant (the relay streams it again from its slot). A standby
that is then ahead of the restarted relay is refused until the relay has it again, and
retries (as a walreceiver does every wal_retrieve_retry_interval).

Authentication of downstreams: --auth trust accepts anyone who can connect (use it on
loopback or a trusted network). --auth scram checks SCRAM-SHA-256 (and SCRAM-SHA-256-PLUS,
channel binding, over TLS) against the verifiers in --auth-file: one `user verifier` per
line, the verifier as pg_authid stores it (SELECT rolname, rolpassword FROM pg_authid) or
as `walferry auth-verifier USER` prints it; the file must be mode 0600 or stricter and owned
by the user walferry runs as. Plaintext passwords are never read, stored or logged.

Examples:
  walferry relay -D /archive -d 'host=db1 user=replicator' -S relay --listen 0.0.0.0:5433
  walferry relay -D /archive -d 'host=db1,db2 target_session_attrs=read-write' \\
      --listen 127.0.0.1:5433 --synchronous -v

Exit status: 0 on SIGINT/SIGTERM (everything received is flushed first), 1 on an error the
receiver cannot retry (as walferry receive), 2 on an invalid command line.";

#[derive(clap::Args, Debug)]
pub struct RelayArgs {
    #[command(flatten)]
    receive: receive::Args,

    /// Accept replication connections on HOST:PORT (repeat for several addresses)
    // Not `required` for clap: it may come from --config.
    #[arg(
        long = "listen",
        value_name = "HOST:PORT",
        help_heading = "Relay options"
    )]
    listen: Vec<String>,

    /// How downstreams authenticate: trust, or scram (SCRAM-SHA-256 against --auth-file)
    #[arg(
        long = "auth",
        value_name = "METHOD",
        default_value = "trust",
        help_heading = "Relay options"
    )]
    auth: String,

    /// With --auth scram: the file of `user SCRAM-SHA-256$...` lines (mode 0600)
    #[arg(
        long = "auth-file",
        value_name = "FILE",
        help_heading = "Relay options"
    )]
    auth_file: Option<PathBuf>,

    /// Answer SSLRequest with TLS using this PEM certificate chain (needs --tls-key)
    #[arg(
        long = "tls-cert",
        value_name = "FILE",
        requires = "tls_key",
        help_heading = "Relay options"
    )]
    tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert
    #[arg(
        long = "tls-key",
        value_name = "FILE",
        requires = "tls_cert",
        help_heading = "Relay options"
    )]
    tls_key: Option<PathBuf>,

    /// With TLS configured, also accept unencrypted connections (refused by default)
    #[arg(
        long = "tls-optional",
        requires = "tls_cert",
        help_heading = "Relay options"
    )]
    tls_optional: bool,

    /// Acknowledge upstream only WAL that N downstreams have also flushed
    #[arg(
        long = "sync-downstream",
        value_name = "N",
        default_value = "0",
        help_heading = "Relay options"
    )]
    sync_downstream: usize,

    /// Serve WAL downstream once validated and written, before the relay's fsync of it
    #[arg(long = "serve-unflushed", help_heading = "Relay options")]
    serve_unflushed: bool,

    /// Disconnect a downstream silent for this many seconds (0 never)
    #[arg(
        long = "wal-sender-timeout",
        value_name = "SECS",
        default_value = "60",
        help_heading = "Relay options"
    )]
    wal_sender_timeout: u64,
}

pub fn run(args: RelayArgs) -> Result<(), Failure> {
    let usage = |m: String| Failure::usage(m, "relay");
    // --create-slot/--drop-slot act on the upstream and need no --listen.
    let slot_action = args.receive.slot_action();
    if args.listen.is_empty() && !slot_action {
        return Err(usage(
            "no --listen address: where should downstream standbys connect?".into(),
        ));
    }
    let listen = resolve_listen(&args.listen).map_err(usage)?;
    let auth = match (args.auth.as_str(), &args.auth_file) {
        ("trust", None) => AuthMethod::Trust,
        ("trust", Some(_)) => return Err(usage("--auth-file needs --auth scram".into())),
        ("scram", Some(path)) => {
            let file = AuthFile::load(path).map_err(|e| {
                let f = Failure::new(e.to_string());
                match e.hint() {
                    Some(h) => f.with_hint(h),
                    None => f,
                }
            })?;
            AuthMethod::Scram(Arc::new(file))
        }
        ("scram", None) => {
            return Err(usage(
                "--auth scram needs --auth-file FILE (lines of: user SCRAM-SHA-256$...)".into(),
            ))
        }
        (other, _) => {
            return Err(usage(format!(
                "invalid --auth \"{other}\": use trust or scram"
            )))
        }
    };
    let (plan, service) = Plan::from_args(args.receive, "relay")?;
    // One thread for the upstream stream and every downstream session, as a walreceiver
    // and the walsenders it wakes share a machine: WAL made durable is handed to the
    // sessions waiting for it on the same thread, with no cross-thread wake-up (on two
    // workers that hand-off was 0.3 ms median, 1.1 ms p90, under pgbench). Disk reads
    // for downstreams run on blocking threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("could not start the async runtime: {e}")))?;
    let Some(mut receive) = plan.run_slot_action(&rt)? else {
        return Ok(());
    };
    receive.serve_unflushed = args.serve_unflushed;
    let mut opts = RelayOptions {
        receive,
        listen,
        auth,
        tls: args.tls_cert.zip(args.tls_key),
        tls_required: !args.tls_optional,
        sync_downstream: args.sync_downstream,
        wal_sender_timeout: if args.wal_sender_timeout == 0 {
            Duration::from_secs(u64::from(u32::MAX))
        } else {
            Duration::from_secs(args.wal_sender_timeout)
        },
        tail_capacity: relay::DEFAULT_TAIL,
    };
    rt.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Bound before the first connection: a taken port is reported at once.
        opts.receive.metrics = service.start_metrics(stop_rx.clone()).await?;
        let metrics = opts.receive.metrics.clone();
        tokio::spawn(async move {
            wait_for_stop_signal().await;
            let _ = stop_tx.send(true);
        });
        let spooled = opts.receive.upload_to.is_some();
        let result = relay::run(opts, stop_rx, None).await;
        conclude(metrics.as_deref(), result, |e| match e {
            relay::RelayError::Receive(e) => receive_failure(&e, spooled),
            e => {
                let failure = Failure::new(e.to_string());
                match e.hint() {
                    Some(h) => failure.with_hint(h),
                    None => failure,
                }
            }
        })
    })
}

/// `--listen` values: HOST:PORT, `[v6]:PORT`, or a name that resolves (every address).
fn resolve_listen(values: &[String]) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for v in values {
        let addrs: Vec<SocketAddr> = v
            .to_socket_addrs()
            .map_err(|e| format!("invalid --listen \"{v}\": {e} (expected HOST:PORT)"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("--listen \"{v}\" resolves to no address"));
        }
        for a in addrs {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    Ok(out)
}
