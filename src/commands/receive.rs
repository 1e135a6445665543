//! `walferry receive`: pg_receivewal's job, with pg_receivewal's flags.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use walferry::archive::CompressionSpec;
use walferry::conninfo::{self, ConnParams, Password, PasswordPrompt};
use walferry::objstore::Location;
use walferry::protocol::ReplicationConn;
use walferry::receiver::{self, Outcome, ReceiveError, ReceiveOptions};
use walferry::wal::Lsn;

use super::service::ServiceArgs;
use super::{current_thread_runtime, ConnArgs, Failure};

pub const AFTER_HELP: &str = "\
Streaming starts where pg_receivewal would start: after the newest complete segment in the
directory (a .partial segment is streamed again from its start), else at the slot's
restart_lsn, else at the server's current WAL position; always at a segment boundary.
When the directory ends in several .partial segments of one timeline (a stop inside the
record crossing a segment end), streaming starts at the oldest of them, after renaming
those that the WAL on disk proves whole and valid. A directory written
by pg_receivewal can be resumed by walferry and vice versa.

One process per directory: walferry holds a lock on DIR/.walferry.lock while it runs, and a
second receiver on the same directory exits 1 naming the first one's pid.

Segments are written as NAME.partial, fsynced, renamed to NAME and the directory fsynced.
Uncompressed .partial files are preallocated to the full segment size. With --synchronous
(and in a relay) a segment whose first write is small is zero-filled instead, so that each
per-commit fsync writes only WAL. A segment that begins with catch-up-sized writes is
preallocated.

Validation (unless --no-validate): every page and record header and every record's CRC-32C
is checked as PostgreSQL's own WAL reader would, as the WAL arrives. Nothing unchecked is
acknowledged or given a final segment name; WAL that fails stops walferry with an error
naming the LSN and the .partial file it stays in.

Acknowledgement: the flush position reported to the server is always the last fsynced,
checked one: at each segment end and every --status-interval. With --synchronous it is
reported as soon as each write is fsynced, so the primary can list walferry (its
application_name, default \"walferry\") in synchronous_standby_names.

Compression (-Z) is read and checked as pg_receivewal 15 reads it: gzip levels 1-9, lz4
levels 1-12, DETAIL either a level or level=N; what pg_receivewal refuses walferry refuses
with the same message. Two differences: zstd (.zst, levels -131072-22, workers=0 only) is
walferry's own, as pg_receivewal 15 refuses zstd; and an lz4 level is accepted but walferry
always writes LZ4's fast mode (pg_receivewal uses LZ4HC from level 3 on).

Connection (-d): libpq keywords and PG* variables, among them host=a,b port=1,2 (tried in
order), target_session_attrs=any|read-write|read-only|primary|standby|prefer-standby (a
server of the wrong kind is skipped; read-write follows a failover to the new primary),
sslmode, sslrootcert, sslcert/sslkey (client certificate; key file 0600), sslcrl/sslcrldir,
channel_binding=disable|prefer|require (SCRAM-SHA-256-PLUS over TLS), service (from
PGSERVICEFILE or ~/.pg_service.conf, then PGSYSCONFDIR/pg_service.conf), passfile,
connect_timeout, keepalives*, tcp_user_timeout, application_name. -W asks for the password
on the terminal before connecting (replacing PGPASSWORD or a password in -d); -w never asks.

Command line: as pg_receivewal's, a repeated flag's last value wins and a long flag may be
abbreviated while unambiguous. -E takes X/X with up to 8 hex digits each; pg_receivewal
(sscanf) also takes trailing text, 0x prefixes, minus signs and longer numbers there.

Object storage: -D s3://BUCKET/REPO/wal[?endpoint=URL&region=R&path_style=true&...] archives
into S3-compatible storage (the wal/ of repository s3://BUCKET/REPO, as -D REPO/wal locally) (settings and keys: see the README; keys come from
AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or an AWS credentials file, never from the command
line). Segments are written and fsynced into --spool DIR exactly as into a local archive
(the flush reported to the server means durable in the spool), and each completed segment
and history file is uploaded in the background (4 at a time, retried while the store is
away) and removed from the spool once the store has confirmed it. The store is checked
before streaming starts: wrong keys or a missing bucket exit 1 at once. An empty spool is
seeded from the store, so streaming resumes where the store's archive ends. On SIGINT or
SIGTERM the remaining uploads finish (up to a minute) and the last .partial is uploaded.
The segment being written goes up every 10 s while it grows (its flushed part). With
--synchronous-remote the flush reported to the server is what the store holds: each flush
uploads the flushed part of the current segment before it is acknowledged (RPO 0 off-host;
see the README for what it costs in TPS).

Examples:
  walferry receive -D /archive -d 'host=db1 user=replicator' -S walferry --create-slot
  walferry receive -D /archive -d 'host=db1 user=replicator' -S walferry --synchronous -v
  walferry receive -D /archive -d 'host=n1,n2 user=replicator target_session_attrs=read-write'

Failures: as with pg_receivewal, the first connection must succeed (a wrong host, port,
password or certificate is reported at once). After that, walferry reconnects with capped
backoff across server restarts, network loss and a full archive disk, unless --no-loop.

As a service: --config FILE reads flags from a TOML file whose keys are the long flag
names (slot = \"walferry\", synchronous = true); the command line wins over the file, and an
unknown key or bad value is refused naming the key and file (exit 2). --metrics HOST:PORT
serves Prometheus /metrics and /healthz (200 while streaming, else 503 with the reason as
JSON); the port is bound before connecting, so a taken one fails at once.

Exit status: 0 when --endpos is reached or on SIGINT/SIGTERM (everything received is
flushed first), 1 on an error that reconnecting cannot fix, on any error before the first
connection succeeded, or on any error with --no-loop; 2 on an invalid command line.";

/// The command line as clap hands it over. Values stay text here so that [`Args::check`]
/// can check them in pg_receivewal 15's order and refuse them in its words.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Archive directory to write WAL segments into (must exist)
    #[arg(
        short = 'D',
        long = "directory",
        value_name = "DIR",
        allow_hyphen_values = true
    )]
    directory: Option<OsString>,

    /// With -D s3://...: local directory where segments are written and fsynced before
    /// they are uploaded (must exist; one receiver per spool)
    #[arg(long = "spool", value_name = "DIR")]
    spool: Option<PathBuf>,

    /// Use this physical replication slot (keeps the server from recycling WAL we still need)
    #[arg(
        short = 'S',
        long = "slot",
        value_name = "SLOTNAME",
        allow_hyphen_values = true
    )]
    slot: Option<String>,

    /// Create the slot named by --slot (reserving WAL at once), then exit
    #[arg(long = "create-slot")]
    create_slot: bool,

    /// Drop the slot named by --slot, then exit
    #[arg(long = "drop-slot")]
    drop_slot: bool,

    /// With --create-slot: do not fail if the slot already exists
    #[arg(long = "if-not-exists")]
    if_not_exists: bool,

    /// Exit 0 once WAL up to this LSN (X/X) is written and flushed
    #[arg(
        short = 'E',
        long = "endpos",
        value_name = "LSN",
        allow_hyphen_values = true
    )]
    endpos: Option<String>,

    /// Exit on connection loss instead of reconnecting
    #[arg(short = 'n', long = "no-loop")]
    no_loop: bool,

    /// Seconds between status updates to the server (0 disables periodic updates)
    #[arg(
        short = 's',
        long = "status-interval",
        value_name = "SECS",
        default_value = "10",
        allow_hyphen_values = true
    )]
    status_interval: String,

    /// Fsync and report flush after every write: makes walferry usable as a synchronous standby
    // Every abbreviation pg_receivewal takes (`--sync`, ...) stays this flag's, although
    // --synchronous-remote shares the prefix.
    #[arg(
        long = "synchronous",
        aliases = ["syn", "sync", "synch", "synchr", "synchro", "synchron", "synchrono", "synchronou"]
    )]
    synchronous: bool,

    /// With -D s3://...: acknowledge WAL as flushed only once the object store holds it
    /// (implies --synchronous; RPO 0 off-host, at a cost in commit latency)
    #[arg(long = "synchronous-remote")]
    synchronous_remote: bool,

    /// Do not fsync anything (fast, but a crash can lose acknowledged WAL)
    #[arg(long = "no-sync")]
    no_sync: bool,

    /// Do not check received WAL (page headers, record CRC-32C) before archiving it
    #[arg(long = "no-validate")]
    no_validate: bool,

    /// Compress segments: none, gzip[:LEVEL], lz4[:LEVEL] or zstd[:LEVEL] (zstd: walferry only);
    /// a bare 1-9 means gzip, 0 none (see Compression below)
    #[arg(
        short = 'Z',
        long = "compress",
        value_name = "METHOD[:DETAIL]",
        default_value = "none",
        allow_hyphen_values = true
    )]
    compress: String,

    // pg_receivewal takes no operands; collected only to be refused in its words.
    #[arg(hide = true)]
    operands: Vec<OsString>,

    #[command(flatten)]
    conn: ConnArgs,

    #[command(flatten)]
    service: ServiceArgs,

    /// Print help
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// What a valid command line asks for.
enum Action {
    Stream {
        directory: PathBuf,
        upload_to: Option<walferry::objstore::S3Url>,
    },
    CreateSlot {
        slot: String,
    },
    DropSlot {
        slot: String,
    },
}

/// The values [`Args::check`] parsed; the flags it only checked are read from [`Args`].
struct Checked {
    action: Action,
    endpos: Option<Lsn>,
    status_interval: Option<Duration>,
    compression: CompressionSpec,
}

impl Args {
    /// `--create-slot` or `--drop-slot`: the run manages a slot and streams nothing.
    pub fn slot_action(&self) -> bool {
        self.create_slot || self.drop_slot
    }

    /// Checks the command line as pg_receivewal 15's main() does, in its order (-E and -s as
    /// they are parsed, then operands, slot actions, sync flags, the directory, -Z) and with
    /// its messages, so that what one refuses the other refuses too.
    fn check(&self, command: &str) -> Result<Checked, Failure> {
        let usage = |message: String| Failure::usage(message, command);
        let endpos = match &self.endpos {
            Some(text) => Some(
                text.parse::<Lsn>()
                    .map_err(|_| usage(format!("could not parse end position \"{text}\"")))?,
            ),
            None => None,
        };
        let status_interval = parse_status_interval(&self.status_interval).map_err(usage)?;
        if let Some(first) = self.operands.first() {
            return Err(usage(format!(
                "too many command-line arguments (first is \"{}\")",
                first.to_string_lossy()
            )));
        }
        if self.create_slot && self.drop_slot {
            return Err(usage(
                "cannot use --create-slot together with --drop-slot".into(),
            ));
        }
        let slot_flag = if self.create_slot {
            Some("--create-slot")
        } else if self.drop_slot {
            Some("--drop-slot")
        } else {
            None
        };
        if let (Some(flag), None) = (slot_flag, &self.slot) {
            return Err(usage(format!(
                "{flag} needs a slot to be specified using --slot"
            )));
        }
        if self.synchronous && self.no_sync {
            return Err(usage(
                "cannot use --synchronous together with --no-sync".into(),
            ));
        }
        let action = match (&self.slot, &self.directory) {
            (Some(slot), _) if self.create_slot => Action::CreateSlot { slot: slot.clone() },
            (Some(slot), _) if self.drop_slot => Action::DropSlot { slot: slot.clone() },
            (_, Some(directory)) => match directory.to_str().map(Location::parse) {
                Some(Err(e)) => return Err(usage(e.to_string())),
                Some(Ok(Location::S3(url))) => match &self.spool {
                    Some(spool) => Action::Stream {
                        directory: spool.clone(),
                        upload_to: Some(url),
                    },
                    None => {
                        return Err(usage(format!(
                            "an archive in object storage ({url}) needs --spool DIR, a local \
                             directory where segments are made durable before they are uploaded"
                        )))
                    }
                },
                _ if self.spool.is_some() => {
                    return Err(usage(
                        "--spool is for an archive in object storage (-D s3://...)".into(),
                    ))
                }
                _ => Action::Stream {
                    directory: PathBuf::from(directory),
                    upload_to: None,
                },
            },
            (_, None) => return Err(usage("no target directory specified".into())),
        };
        let compression = self
            .compress
            .parse::<CompressionSpec>()
            .map_err(|e| usage(e.to_string()))?;
        if self.synchronous_remote {
            if !matches!(
                &action,
                Action::Stream {
                    upload_to: Some(_),
                    ..
                }
            ) {
                return Err(usage(
                    "--synchronous-remote is for an archive in object storage (-D s3://...)".into(),
                ));
            }
            if self.no_sync {
                return Err(usage(
                    "cannot use --synchronous-remote together with --no-sync".into(),
                ));
            }
            if compression != CompressionSpec::None {
                return Err(usage(
                    "--synchronous-remote sends the segment being written as it grows, which \
                     only uncompressed segments allow: drop -Z"
                        .into(),
                ));
            }
        }
        if self.if_not_exists && !self.create_slot {
            // pg_receivewal ignores it silently; say so rather than do nothing unannounced.
            tracing::warn!("--if-not-exists has no effect without --create-slot");
        }
        Ok(Checked {
            action,
            endpos,
            status_interval,
            compression,
        })
    }
}

#[cfg(test)]
impl Args {
    /// Whether the line passes every check (for tests outside this module).
    pub(crate) fn check_ok(&self) -> bool {
        self.check("receive").is_ok()
    }
}

/// `-s/--status-interval` as pg_receivewal reads it (fe_utils option_parse_int over C
/// strtol): white space around the number is allowed and an empty value is 0; the range is
/// 0..INT_MAX/1000 seconds, so that the interval in milliseconds fits an int.
fn parse_status_interval(text: &str) -> Result<Option<Duration>, String> {
    const OPTION: &str = "-s/--status-interval";
    const MAX: u64 = i32::MAX as u64 / 1000;
    let number = text.trim_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (negative, digits) = match number.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) || (digits.is_empty() && !number.is_empty()) {
        return Err(format!("invalid value \"{text}\" for option {OPTION}"));
    }
    // Only digits are left; too many of them is out of range, as strtol's ERANGE is.
    let seconds = match digits {
        "" => 0,
        _ => digits.parse::<u64>().unwrap_or(u64::MAX),
    };
    if seconds > MAX || (negative && seconds > 0) {
        return Err(format!("{OPTION} must be in range 0..{MAX}"));
    }
    Ok((seconds > 0).then(|| Duration::from_secs(seconds)))
}

/// What a valid receive command line asks for (also `relay`'s, which takes the same flags).
pub enum Plan {
    Stream(ReceiveOptions),
    /// `--create-slot` / `--drop-slot` on the upstream, then exit.
    Slot {
        params: ConnParams,
        slot: String,
        create: bool,
        if_not_exists: bool,
    },
}

impl Plan {
    /// Check the flags (refusals name `walferry COMMAND --help`, and the config file when
    /// the flag came from one) and resolve the connection. The service flags (`--config`,
    /// `--metrics`) come back for the caller to start.
    pub fn from_args(args: Args, command: &str) -> Result<(Plan, ServiceArgs), Failure> {
        let checked = args.check(command).map_err(|f| args.service.annotate(f))?;
        let service = args.service.clone();
        let params = connection_params(&args.conn)?;
        let directory = match checked.action {
            Action::CreateSlot { slot } => {
                return Ok((
                    Plan::Slot {
                        params,
                        slot,
                        create: true,
                        if_not_exists: args.if_not_exists,
                    },
                    service,
                ))
            }
            Action::DropSlot { slot } => {
                return Ok((
                    Plan::Slot {
                        params,
                        slot,
                        create: false,
                        if_not_exists: false,
                    },
                    service,
                ))
            }
            Action::Stream {
                directory,
                upload_to,
            } => (directory, upload_to),
        };
        let (directory, upload_to) = directory;
        let mut opts = ReceiveOptions::new(params, directory);
        if let Some(url) = upload_to {
            let remote = walferry::objstore::Remote::new(&url)
                .map_err(|e| super::remote_repo::remote_failure(&e))?;
            opts.upload_to = Some(Box::new(remote));
        }
        opts.slot = args.slot;
        opts.endpos = checked.endpos;
        opts.no_loop = args.no_loop;
        opts.status_interval = checked.status_interval;
        opts.synchronous = args.synchronous || args.synchronous_remote;
        opts.synchronous_remote = args.synchronous_remote;
        opts.no_sync = args.no_sync;
        opts.compression = checked.compression;
        opts.validate = !args.no_validate;
        Ok((Plan::Stream(opts), service))
    }

    /// Run a slot action on `rt`; `None` for a stream (the caller's to run).
    pub fn run_slot_action(
        self,
        rt: &tokio::runtime::Runtime,
    ) -> Result<Option<ReceiveOptions>, Failure> {
        match self {
            Plan::Stream(opts) => Ok(Some(opts)),
            Plan::Slot {
                params,
                slot,
                create,
                if_not_exists,
            } => rt
                .block_on(manage_slot(&params, &slot, create, if_not_exists))
                .map(|()| None),
        }
    }
}

pub fn run(args: Args) -> Result<(), Failure> {
    let (plan, service) = Plan::from_args(args, "receive")?;
    let rt = current_thread_runtime()?;
    let Some(mut opts) = plan.run_slot_action(&rt)? else {
        return Ok(());
    };
    rt.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Bound before the first connection: a taken port is reported at once.
        opts.metrics = service.start_metrics(stop_rx.clone()).await?;
        tokio::spawn(async move {
            wait_for_stop_signal().await;
            let _ = stop_tx.send(true);
        });
        let result = receiver::receive(&opts, stop_rx).await;
        let spooled = opts.upload_to.is_some();
        conclude(opts.metrics.as_deref(), result, |e| {
            receive_failure(&e, spooled)
        })
    })
}

/// How a run ended, for `/healthz` (its last word) and as the command's result: `--endpos`
/// reached and a stop are success, an error becomes `failure(e)`.
pub fn conclude<E: std::fmt::Display>(
    metrics: Option<&walferry::service::Metrics>,
    result: Result<Outcome, E>,
    failure: impl FnOnce(E) -> Failure,
) -> Result<(), Failure> {
    if let Some(m) = metrics {
        m.set_stopped(match &result {
            Ok(Outcome::EndposReached(lsn)) => format!("end position reached at {lsn}"),
            Ok(Outcome::Stopped(_)) => "stop requested".into(),
            Err(e) => e.to_string(),
        });
    }
    match result {
        Ok(Outcome::EndposReached(lsn)) => {
            tracing::info!("end position reached: WAL is flushed up to {lsn}");
            Ok(())
        }
        Ok(Outcome::Stopped(_)) => Ok(()),
        Err(e) => Err(failure(e)),
    }
}

/// The resolved connection options. `-W` asks for the password here, once, before any
/// connection (as pg_receivewal's streamutil.c): the answer is used for every reconnect,
/// and it replaces a password from `-d` or PGPASSWORD, as pg_receivewal's does.
pub fn connection_params(conn: &ConnArgs) -> Result<ConnParams, Failure> {
    let mut params = conninfo::resolve(&conn.options()).map_err(|e| Failure::new(e.to_string()))?;
    if params.prompt == PasswordPrompt::Always {
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
    let fail = |e: ReceiveError| receive_failure(&e, false);
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

/// `spooled`: the archive directory is the spool of an object store.
pub fn receive_failure(e: &ReceiveError, spooled: bool) -> Failure {
    let failure = Failure::new(e.to_string());
    match e.hint_for(spooled) {
        Some(hint) => failure.with_hint(hint),
        None => failure,
    }
}

pub async fn wait_for_stop_signal() {
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    #[command(disable_help_flag = true)]
    struct Line {
        #[command(flatten)]
        args: Args,
    }

    fn check(line: &[&str]) -> Result<Checked, Failure> {
        let line = Line::try_parse_from(std::iter::once("receive").chain(line.iter().copied()))
            .expect("clap accepts the line");
        line.args.check("receive")
    }

    fn refusal(line: &[&str]) -> String {
        match check(line) {
            Ok(_) => panic!("{line:?} was accepted"),
            Err(failure) => {
                assert_eq!(failure.exit_code, 2, "{line:?}");
                failure.message
            }
        }
    }

    #[test]
    fn status_interval_reads_as_option_parse_int() {
        for (text, secs) in [
            ("10", 10),
            ("0", 0),
            ("-0", 0),
            ("", 0),
            ("  ", 0),
            (" 5\t", 5),
        ] {
            let want = (secs > 0).then(|| Duration::from_secs(secs));
            assert_eq!(parse_status_interval(text), Ok(want), "{text:?}");
        }
        assert_eq!(
            parse_status_interval("+2147483"),
            Ok(Some(Duration::from_secs(2147483)))
        );
        for bad in ["abc", "5x", "-", "+", "- 5", "5 5", "0x10"] {
            assert_eq!(
                parse_status_interval(bad),
                Err(format!(
                    "invalid value \"{bad}\" for option -s/--status-interval"
                ))
            );
        }
        for out in ["2147484", "-1", "99999999999999999999999"] {
            assert_eq!(
                parse_status_interval(out),
                Err("-s/--status-interval must be in range 0..2147483".into())
            );
        }
    }

    #[test]
    fn checks_come_in_pg_receivewal_order() {
        // Each line breaks two rules; the one pg_receivewal reports first is reported.
        let cases: [(&[&str], &str); 6] = [
            (&["-E", "x", "op"], "could not parse end position \"x\""),
            (
                &["op", "--create-slot", "--drop-slot"],
                "too many command-line arguments (first is \"op\")",
            ),
            (
                &["--create-slot", "--drop-slot", "--synchronous", "--no-sync"],
                "cannot use --create-slot together with --drop-slot",
            ),
            (
                &["--drop-slot", "--synchronous", "--no-sync"],
                "--drop-slot needs a slot to be specified using --slot",
            ),
            (
                &["--synchronous", "--no-sync", "-Z", "bad"],
                "cannot use --synchronous together with --no-sync",
            ),
            (&["-Z", "bad"], "no target directory specified"),
        ];
        for (line, want) in cases {
            assert_eq!(refusal(line), want, "{line:?}");
        }
    }

    #[test]
    fn slot_actions_need_no_directory() {
        let checked = check(&["--create-slot", "-S", "s", "-Z", "lz4"]).unwrap();
        assert!(matches!(checked.action, Action::CreateSlot { slot } if slot == "s"));
        let checked = check(&["--drop-slot", "-S", "s"]).unwrap();
        assert!(matches!(checked.action, Action::DropSlot { slot } if slot == "s"));
        let checked = check(&["-D", "d", "-S", "s", "-s", "0", "-E", "1/2"]).unwrap();
        assert!(
            matches!(checked.action, Action::Stream { directory, .. } if directory == std::path::Path::new("d"))
        );
        assert_eq!(checked.status_interval, None);
        assert_eq!(checked.endpos, Some(Lsn(0x1_0000_0002)));
    }
}
