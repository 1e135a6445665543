//! `walferry archive-push`: PostgreSQL's `archive_command` (see `walferry::archive::push`).

use std::path::PathBuf;

use walferry::archive::push::{self, PushError, Pushed};
use walferry::archive::CompressionSpec;
use walferry::repo::Repo;

use super::remote_repo::RepoArg;

use super::Failure;

pub const AFTER_HELP: &str = "\
Use as PostgreSQL's archive_command (archive_mode = on):
  archive_command = 'walferry archive-push --repo /srv/repo %p'

Stores the file at %p (relative to the data directory, where the server runs the command) in
REPO/wal: a WAL segment (checked first: page headers, records, CRC-32C, the database system
of the archive), the .partial of an old timeline's last segment that a promoted server
archives, a %08X.history or a .backup history file. It is written under a temporary name,
fsynced, renamed (never over an existing file) and the directory fsynced: the command
succeeds only once the file is durable. Pushing a file the archive already holds with the
same contents (in any compression) succeeds, as PostgreSQL may push a file again after a
crash; different contents under the same name fail, naming both files.

Exit status:
  0  the file is durable in the archive (or was already there, identical; said at -v)
  1  failure: PostgreSQL keeps the file and retries; the message says why
  2  invalid command line";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Repository (the archive is its wal/ directory; made when missing)
    #[arg(long = "repo", value_name = "REPO")]
    pub repo: String,

    /// File to archive (%p)
    #[arg(value_name = "PATH")]
    pub path: PathBuf,

    /// Compress segments: none, gzip[:LEVEL], lz4[:LEVEL] or zstd[:LEVEL], as receive's -Z
    #[arg(
        short = 'Z',
        long = "compress",
        value_name = "METHOD[:DETAIL]",
        default_value = "none",
        allow_hyphen_values = true
    )]
    pub compress: String,

    /// Do not fsync (tests only: a crash can lose a file PostgreSQL was told is archived)
    #[arg(long = "no-sync")]
    pub no_sync: bool,

    /// Print help
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let compression: CompressionSpec =
        args.compress
            .parse()
            .map_err(|e: walferry::archive::CompressSpecError| {
                Failure::usage(e.to_string(), "archive-push")
            })?;
    let remote = match RepoArg::open(&args.repo, "archive-push")? {
        RepoArg::Local(p) => {
            let repo = Repo::open(&p).map_err(|e| {
                Failure::new(e.to_string())
                    .with_hint("create the repository directory, or fix --repo")
            })?;
            return push_into(&repo.wal_dir(), &args, compression);
        }
        RepoArg::Remote(r) => {
            r.take_over_uploads();
            r
        }
    };
    // Checked and compressed as into a local archive, in a directory of its own, then
    // uploaded under the same name (never over different contents).
    let staging = remote.cache.join(format!(".push.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)
        .map_err(|e| Failure::new(format!("could not create \"{}\": {e}", staging.display())))?;
    let result = push::push(&staging, &args.path, compression, true)
        .map_err(push_failure)
        .and_then(|pushed| {
            let (Pushed::Stored { name } | Pushed::AlreadyArchived { name }) = pushed;
            let wal = remote.remote.join(walferry::repo::WAL_DIR);
            let put = remote
                .block_on(wal.put_file_new(&name, &staging.join(&name)))
                .map_err(|e| {
                    let f = super::remote_repo::remote_failure(&e);
                    match e {
                        walferry::objstore::RemoteError::Conflict { .. } => f.with_hint(
                            "two clusters archive into one repository, or this cluster's WAL \
                             history diverged from the archived one; give each cluster its own \
                             repository",
                        ),
                        _ => f,
                    }
                })?;
            tracing::info!(
                "{} \"{}\" as {name} in {}",
                match put {
                    walferry::objstore::Put::Stored => "archived",
                    walferry::objstore::Put::AlreadyThere => "already archived (identical)",
                },
                args.path.display(),
                remote.url
            );
            Ok(())
        });
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn push_into(
    wal_dir: &std::path::Path,
    args: &Args,
    compression: CompressionSpec,
) -> Result<(), Failure> {
    match push::push(wal_dir, &args.path, compression, args.no_sync) {
        Ok(Pushed::Stored { name }) => {
            tracing::info!("archived \"{}\" as {name}", args.path.display());
            Ok(())
        }
        Ok(Pushed::AlreadyArchived { name }) => {
            tracing::info!(
                "\"{}\" is already archived as {name} with identical contents",
                args.path.display()
            );
            Ok(())
        }
        Err(e) => Err(push_failure(e)),
    }
}

fn push_failure(e: PushError) -> Failure {
    let hint = match &e {
        PushError::Conflict { .. } => Some(
            "two clusters archive into one repository, or this cluster's WAL history diverged \
             from the archived one; give each cluster its own repository",
        ),
        PushError::Invalid { .. } => Some(
            "the file in pg_wal is damaged; PostgreSQL retries until it is archived, so \
             investigate before it recycles the segment",
        ),
        PushError::Archive(a) if a.is_disk_full() => Some("free space in the repository"),
        _ => None,
    };
    let f = Failure::new(e.to_string());
    match hint {
        Some(h) => f.with_hint(h),
        None => f,
    }
}
