//! `walferry receive`: pg_receivewal's job, with pg_receivewal's flags.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use walferry::archive::CompressionSpec;
use walferry::conninfo::{self, ConnParams, Password, PasswordPrompt};
use walferry::protocol::ReplicationConn;
use walferry::receiver::{self, Outcome, ReceiveError, ReceiveOptions};
use walferry::wal::Lsn;

use super::{current_thread_runtime, ConnArgs, Failure};

pub const AFTER_HELP: &str = "\
Streaming starts where pg_receivewal would start: after the newest complete segment in the
directory (a .partial segment is streamed again from its start), else at the slot's
restart_lsn, else at the server's current WAL position; always at a segment boundary.
A directory written by pg_receivewal can be resumed by walferry and vice versa.

Segments are written as NAME.partial, fsynced, renamed to NAME and the directory fsynced.
Uncompressed .partial files are preallocated to the full segment size (zero-filled with
--synchronous, so that each fsync writes only WAL).

Validation (unless --no-validate): every page and record header and every record's CRC-32C
is checked as PostgreSQL's own WAL reader would, as the WAL arrives. Nothing unchecked is
acknowledged or given a final segment name; WAL that fails stops walferry with an error
naming the LSN and the .partial file it stays in.

Acknowledgement: the flush position reported to the server is always the last fsynced,
checked one: at each segment end and every --status-interval. With --synchronous it is
reported as soon as each write is fsynced, so the primary can list walferry (its
application_name, default \"walferry\") in synchronous_standby_names.

Examples:
  walferry receive -D /archive -d 'host=db1 user=replicator' -S walferry --create-slot
  walferry receive -D /archive -d 'host=db1 user=replicator' -S walferry --synchronous -v

Failures: as with pg_receivewal, the first connection must succeed (a wrong host, port,
password or certificate is reported at once). After that, walferry reconnects with capped
backoff across server restarts, network loss and a full archive disk, unless --no-loop.

Exit status: 0 when --endpos is reached or on SIGINT/SIGTERM (everything received is
flushed first), 1 on an error that reconnecting cannot fix, on any error before the first
connection succeeded, or on any error with --no-loop; 2 on an invalid command line.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Archive directory to write WAL segments into (must exist)
    #[arg(short = 'D', long = "directory", value_name = "DIR", required_unless_present_any = ["create_slot", "drop_slot"])]
    directory: Option<PathBuf>,

    /// Use this physical replication slot (keeps the server from recycling WAL we still need)
    #[arg(short = 'S', long = "slot", value_name = "SLOTNAME")]
    slot: Option<String>,

    /// Create the slot named by --slot (reserving WAL at once), then exit
    #[arg(long = "create-slot", requires = "slot", conflicts_with = "drop_slot")]
    create_slot: bool,

    /// Drop the slot named by --slot, then exit
    #[arg(long = "drop-slot", requires = "slot")]
    drop_slot: bool,

    /// With --create-slot: do not fail if the slot already exists
    #[arg(long = "if-not-exists", requires = "create_slot")]
    if_not_exists: bool,

    /// Exit 0 once WAL up to this LSN (X/X) is written and flushed
    #[arg(short = 'E', long = "endpos", value_name = "LSN")]
    endpos: Option<Lsn>,

    /// Exit on connection loss instead of reconnecting
    #[arg(short = 'n', long = "no-loop")]
    no_loop: bool,

    /// Seconds between status updates to the server (0 disables periodic updates)
    #[arg(
        short = 's',
        long = "status-interval",
        value_name = "SECS",
        default_value_t = 10
    )]
    status_interval: u64,

    /// Fsync and report flush after every write: makes walferry usable as a synchronous standby
    #[arg(long = "synchronous", conflicts_with = "no_sync")]
    synchronous: bool,

    /// Do not fsync anything (fast, but a crash can lose acknowledged WAL)
    #[arg(long = "no-sync")]
    no_sync: bool,

    /// Do not check received WAL (page headers, record CRC-32C) before archiving it
    #[arg(long = "no-validate")]
    no_validate: bool,

    /// Compress segments: none, gzip[:LEVEL], lz4 or zstd[:LEVEL] (a bare 0-9 means gzip)
    #[arg(
        short = 'Z',
        long = "compress",
        value_name = "METHOD[:LEVEL]",
        default_value = "none"
    )]
    compress: CompressionSpec,

    #[command(flatten)]
    conn: ConnArgs,

    /// Print help
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let params = connection_params(&args.conn)?;
    let rt = current_thread_runtime()?;
    if args.create_slot || args.drop_slot {
        let slot = args.slot.as_deref().expect("clap requires --slot");
        return rt.block_on(manage_slot(
            &params,
            slot,
            args.create_slot,
            args.if_not_exists,
        ));
    }
    let directory = args.directory.expect("clap requires --directory");
    let mut opts = ReceiveOptions::new(params, directory);
    opts.slot = args.slot;
    opts.endpos = args.endpos;
    opts.no_loop = args.no_loop;
    opts.status_interval =
        (args.status_interval > 0).then(|| Duration::from_secs(args.status_interval));
    opts.synchronous = args.synchronous;
    opts.no_sync = args.no_sync;
    opts.compression = args.compress;
    opts.validate = !args.no_validate;

    rt.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_stop_signal().await;
            let _ = stop_tx.send(true);
        });
        match receiver::receive(&opts, stop_rx).await {
            Ok(Outcome::EndposReached(lsn)) => {
                tracing::info!("end position reached: WAL is flushed up to {lsn}");
                Ok(())
            }
            Ok(Outcome::Stopped(_)) => Ok(()),
            Err(e) => Err(receive_failure(&e)),
        }
    })
}

pub fn connection_params(conn: &ConnArgs) -> Result<ConnParams, Failure> {
    let mut params = conninfo::resolve(&conn.options()).map_err(|e| Failure::new(e.to_string()))?;
    if params.prompt == PasswordPrompt::Always && params.password.is_none() {
        let password = conninfo::prompt_password("Password: ")
            .map_err(|e| Failure::new(format!("could not read the password: {e}")))?;
        params.password = Some(Password(password));
    }
    Ok(params)
}

async fn manage_slot(
    params: &ConnParams,
    slot: &str,
    create: bool,
    if_not_exists: bool,
) -> Result<(), Failure> {
    let fail = |e: ReceiveError| receive_failure(&e);
    let mut conn = ReplicationConn::connect(params)
        .await
        .map_err(|e| fail(e.into()))?;
    let result = if create {
        tracing::info!("creating replication slot \"{slot}\"");
        conn.create_physical_slot(slot, if_not_exists).await
    } else {
        tracing::info!("dropping replication slot \"{slot}\"");
        conn.drop_slot(slot).await
    };
    conn.close().await;
    result.map_err(|e| {
        // The generic hints are about streaming; for slot management say what fits.
        let hint = match e.sqlstate() {
            Some("42710") => Some("add --if-not-exists to accept a slot that already exists"),
            Some("42704") => {
                Some("nothing to drop; SELECT slot_name FROM pg_replication_slots lists the slots")
            }
            _ => None,
        };
        match hint {
            Some(h) => Failure::new(e.to_string()).with_hint(h),
            None => fail(e.into()),
        }
    })
}

fn receive_failure(e: &ReceiveError) -> Failure {
    let failure = Failure::new(e.to_string());
    match e.hint() {
        Some(hint) => failure.with_hint(hint),
        None => failure,
    }
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers the default action (exit) still applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
