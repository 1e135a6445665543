//! Taking a base backup into a repository, in one of two ways that share everything but
//! where the files come from: BASE_BACKUP on a replication connection (below), or the
//! data directory read by walferry itself ([`local`], `--pgdata`). BASE_BACKUP's
//! tar archives split into files as they stream ([`tar`]), each file stored compressed on
//! its own ([`store`]), the server's manifest kept verbatim and every stored file checked
//! against it ([`manifest`]), then — the backup being useless without its WAL — a bounded
//! wait until the repository's WAL archive reaches the backup's stop position ([`wal`]).
//!
//! The backup is written into `backups/.<id>.partial/` and exists only once
//! [`Repo::publish`] renames it: an error, a cancelled future (SIGINT) or a crash leaves no
//! backup. The first two remove the partial directory at once; a crash's leftover is
//! removed by the next backup, which holds the repository's backup lock while it runs.

pub mod local;
pub mod manifest;
pub mod pgdata;
pub mod store;
pub mod tar;
pub mod wal;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::archive::{ArchiveError, ArchiveLock, CompressionSpec};
use crate::conninfo::ConnParams;
use crate::protocol::client::{parse_size_setting, BaseBackupStart};
use crate::protocol::{ClientError, ReplicationConn};
use crate::repo::{self, BackupInfo, Repo, RepoError, Tablespace, MANIFEST_FILE};
use crate::wal::{Lsn, TimeLineId};

use self::manifest::{Manifest, ManifestError};
use self::store::{Store, StoreError};
use self::tar::{TarError, TarEvent, TarStream};

/// How BASE_BACKUP's checkpoint is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpoint {
    /// At once, at full I/O speed.
    Fast,
    /// Spread over checkpoint_completion_target, as a scheduled one.
    Spread,
}

/// What `walferry backup` asks for.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub params: ConnParams,
    pub label: String,
    pub checkpoint: Checkpoint,
    pub compression: CompressionSpec,
    /// The server's transfer limit in kB/s (BASE_BACKUP MAX_RATE, 32..=1048576).
    pub max_rate_kb: Option<u32>,
    /// Wait this long for the archive to reach the stop position; `None`: do not check.
    pub wal_timeout: Option<Duration>,
    /// Compression and write threads.
    pub threads: usize,
    /// Read the files from this data directory (of the server `params` reaches, on this
    /// host) between `pg_backup_start()` and `pg_backup_stop()` on an SQL session, instead
    /// of receiving them with BASE_BACKUP.
    pub pgdata: Option<PathBuf>,
    /// The database of that SQL session.
    pub sql_dbname: String,
    /// Each stored file, once durable, is handed over here by path (a repository in
    /// object storage uploads and removes it while the backup goes on).
    pub hand_over: Option<tokio::sync::mpsc::Sender<PathBuf>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Repo(#[from] RepoError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("{0}")]
    Lock(ArchiveError),
    #[error("archive \"{archive}\" of the backup stream: {source}")]
    Tar { archive: String, source: TarError },
    #[error("server version {0} is not supported: walferry backup needs PostgreSQL 15 or later")]
    ServerVersion(String),
    #[error("unexpected base backup stream: {0}")]
    Stream(String),
    #[error("a backup named {0} exists already (one backup per second)")]
    Exists(String),
    #[error("could not {op} \"{}\": {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{0}")]
    PgData(#[from] pgdata::PgDataError),
    #[error("\"{}\" is not a PostgreSQL data directory (it has no global/pg_control)", .0.display())]
    NotADataDir(PathBuf),
    #[error(
        "\"{}\" is the data directory of database system {dir_id}, but the server -d \
         connects to is database system {server_id}",
        dir.display()
    )]
    WrongCluster {
        dir: PathBuf,
        dir_id: u64,
        server_id: u64,
    },
    #[error("could not {what}: {source}")]
    Session {
        what: &'static str,
        source: Box<ClientError>,
    },
    #[error(
        "the SQL session holding the backup open ended during the backup (PostgreSQL \
         aborts a backup whose session ends): {0}"
    )]
    SessionLost(ClientError),
    #[error(
        "backup not kept: after {waited:?} the WAL archive \"{}\" still lacks the WAL up to \
         the backup's stop position {stop_lsn} on timeline {tli} ({why})",
        wal_dir.display()
    )]
    WalTimeout {
        wal_dir: PathBuf,
        stop_lsn: Lsn,
        tli: TimeLineId,
        waited: Duration,
        why: String,
    },
}

impl BackupError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            BackupError::Client(e) => e.hint(),
            BackupError::WalTimeout { wal_dir, .. } => Some(format!(
                "a backup restores only with its WAL: run `walferry receive -D {} -d ...` for \
                 this server (it streams the current segment as .partial, no WAL switch is \
                 needed), then take the backup again; --wal-timeout waits longer, and \
                 --no-wait-wal keeps a backup whose WAL you archive by other means",
                wal_dir.display()
            )),
            BackupError::Lock(_) => Some(
                "another walferry backup is running on this repository; wait for it to end".into(),
            ),
            BackupError::Exists(_) => Some("try again in a second".into()),
            BackupError::WrongCluster { .. } => Some(
                "--pgdata must be the data directory of the server -d connects to, on this host \
                 (SHOW data_directory on that server names it)"
                    .into(),
            ),
            BackupError::NotADataDir(_) => Some(
                "--pgdata must be the data directory of the server -d connects to (SHOW \
                 data_directory on that server names it)"
                    .into(),
            ),
            BackupError::Session { source, .. } if source.sqlstate() == Some("42501") => Some(
                "the user of -d needs the right to run pg_backup_start() and pg_backup_stop(): \
                 GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), \
                 pg_backup_stop(boolean) TO that user (or use a superuser)"
                    .into(),
            ),
            BackupError::Session { source, .. } => source.hint(),
            BackupError::SessionLost(_) => Some(
                "the session was ended (pg_terminate_backend, a server restart, a lost \
                 connection, idle_session_timeout): take the backup again"
                    .into(),
            ),
            BackupError::Io {
                op: "read the data directory" | "read",
                source,
                ..
            }
            | BackupError::PgData(pgdata::PgDataError::Io { source, .. })
                if source.kind() == io::ErrorKind::PermissionDenied =>
            {
                Some("walferry reads the data directory itself with --pgdata: run it as the user that owns the data directory (postgres), or as one in its group on a cluster initialised with --allow-group-access".into())
            }
            BackupError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                Some("the repository's disk is full: free space there (walferry expire --keep N removes old backups), then take the backup again".into())
            }
            _ => None,
        }
    }
}

/// Where a backup stands, for a progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes the server has sent (its own count, from the stream's progress messages), or
    /// with `--pgdata` the bytes read.
    pub done: u64,
    /// The server's estimate of the total, from the tablespace sizes (with `--pgdata`: the
    /// sizes of the files listed).
    pub total: Option<u64>,
    pub phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the server's checkpoint.
    Checkpoint,
    Streaming,
    /// Waiting for the WAL archive to reach the stop position.
    WaitingForWal,
}

/// Removes the partial backup directory unless the backup was published.
struct PartialDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for PartialDir {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(
                        "could not remove the incomplete backup \"{}\": {e}",
                        self.path.display()
                    );
                }
            }
        }
    }
}

/// Take a backup into `repo`; see the module documentation. Cancel-safe in the sense that
/// dropping the future leaves no backup and no partial directory.
pub async fn take(
    repo: &Repo,
    opts: &BackupOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<BackupInfo, BackupError> {
    let _lock = ArchiveLock::acquire(&repo.backups_dir()).map_err(BackupError::Lock)?;
    remove_leftovers(repo)?;

    let mut conn = ReplicationConn::connect(&opts.params).await?;
    let server_version = conn.parameter("server_version").unwrap_or("").to_string();
    let Some(version_num) = conn.server_version_num().filter(|&v| v >= 150000) else {
        return Err(BackupError::ServerVersion(server_version));
    };
    let system = conn.identify_system().await?;
    let seg_text = conn.show("wal_segment_size").await?;
    let seg_size = parse_size_setting(&seg_text)
        .ok_or_else(|| BackupError::Stream(format!("invalid wal_segment_size {seg_text:?}")))?;
    if opts.wal_timeout.is_some() {
        if let Some(why) =
            wal::archive_warning(&repo.wal_dir(), system.system_id, system.xlogpos, seg_size)
        {
            tracing::warn!(
                "nothing seems to archive this server's WAL into the repository: {why}. \
                 The backup will wait for its WAL; run `walferry receive -D {} -d ...` for this \
                 server",
                repo.wal_dir().display()
            );
        }
    }
    let session = match &opts.pgdata {
        Some(dir) => Some(local::open_session(opts, dir, system.system_id).await?),
        None => None,
    };

    // Ids are start times to the second: a backup right after another waits for its own.
    let mut start_secs = unix_now();
    if repo.backup_dir(&repo::backup_id(start_secs)).exists() {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        start_secs = unix_now();
    }
    let id = repo::backup_id(start_secs);
    if repo.backup_dir(&id).exists() {
        return Err(BackupError::Exists(id));
    }
    let partial = repo.partial_backup_dir(&id);
    repo::make_private_dir(&partial)?;
    let mut guard = PartialDir {
        path: partial.clone(),
        keep: false,
    };

    progress(Progress {
        done: 0,
        total: None,
        phase: Phase::Checkpoint,
    });
    tracing::info!(
        "starting base backup {id} (checkpoint: {:?}, files {})",
        opts.checkpoint,
        match &opts.pgdata {
            Some(dir) => format!("read from \"{}\"", dir.display()),
            None => "sent by the server".into(),
        }
    );
    let taken = match (session, &opts.pgdata) {
        (Some(session), Some(dir)) => {
            local::take(
                session,
                &mut conn,
                dir,
                version_num,
                &partial,
                opts,
                progress,
            )
            .await?
        }
        _ => via_protocol(&mut conn, &partial, opts, progress).await?,
    };
    conn.close().await;
    tracing::info!(
        "backup {id} ended at {} on timeline {}",
        taken.stop_lsn,
        taken.stop_tli
    );

    let manifest = Manifest::parse(&taken.manifest)?;
    taken.summary.check_against(&manifest)?;

    if let Some(timeout) = opts.wal_timeout {
        progress(Progress {
            done: taken.summary.size,
            total: Some(taken.summary.size),
            phase: Phase::WaitingForWal,
        });
        wait_for_wal(repo, seg_size, taken.stop_tli, taken.stop_lsn, timeout).await?;
        tracing::info!(
            "the WAL archive holds the backup's WAL up to {}",
            taken.stop_lsn
        );
    }

    let info = BackupInfo {
        id,
        label: opts.label.clone(),
        system_id: system.system_id.to_string(),
        server_version,
        wal_segment_size: seg_size,
        start_lsn: taken.start_lsn,
        start_timeline: taken.start_tli.0,
        stop_lsn: taken.stop_lsn,
        stop_timeline: taken.stop_tli.0,
        start_time: rfc3339(start_secs),
        stop_time: rfc3339(unix_now()),
        size: taken.summary.size,
        stored_size: taken.summary.stored_size,
        files: taken.summary.files(),
        compression: opts.compression.to_string(),
        tablespaces: taken.tablespaces,
        wal_checked: opts.wal_timeout.is_some(),
        contents: taken.summary.contents,
        method: if opts.pgdata.is_some() {
            "pgdata"
        } else {
            "protocol"
        }
        .into(),
    };
    repo.publish(&partial, &info)?;
    guard.keep = true;
    Ok(info)
}

/// What either way of taking a backup yields: where it starts and ends, what was stored,
/// and its manifest (as written to `backup_manifest` in the partial directory).
struct Taken {
    start_lsn: Lsn,
    start_tli: TimeLineId,
    stop_lsn: Lsn,
    stop_tli: TimeLineId,
    summary: store::Summary,
    manifest: Vec<u8>,
    tablespaces: Vec<Tablespace>,
}

/// BASE_BACKUP on the replication connection: the server sends every file.
async fn via_protocol(
    conn: &mut ReplicationConn,
    partial: &Path,
    opts: &BackupOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Taken, BackupError> {
    let start = conn
        .base_backup(&base_backup_sql(
            &opts.label,
            opts.checkpoint,
            opts.max_rate_kb,
        ))
        .await?;
    tracing::info!(
        "backup starts at {} on timeline {}",
        start.start_lsn,
        start.timeline
    );
    let (summary, manifest) = stream(conn, partial, &start, opts, progress).await?;
    let (stop_lsn, stop_tli) = conn.finish_base_backup().await?;
    Ok(Taken {
        start_lsn: start.start_lsn,
        start_tli: start.timeline,
        stop_lsn,
        stop_tli,
        summary,
        manifest,
        tablespaces: start
            .tablespaces
            .iter()
            .filter_map(|t| {
                Some(Tablespace {
                    oid: t.oid?,
                    location: t.location.clone()?,
                })
            })
            .collect(),
    })
}

/// Where the stream's bytes go.
enum Target {
    Nothing,
    Archive { name: String, tar: Box<TarStream> },
    Manifest(fs::File),
}

/// Read the CopyOut stream to its end: archives into `store`, the manifest into
/// `backup_manifest` (fsynced), progress reported as it comes.
async fn stream(
    conn: &mut ReplicationConn,
    dir: &Path,
    start: &BaseBackupStart,
    opts: &BackupOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(store::Summary, Vec<u8>), BackupError> {
    let total: Option<u64> = start
        .tablespaces
        .iter()
        .map(|t| t.size_kb.map(|kb| kb * 1024))
        .sum();
    let mut store =
        Store::handing_over(dir, opts.compression, opts.threads, opts.hand_over.clone());
    let manifest_path = dir.join(MANIFEST_FILE);
    let mut target = Target::Nothing;
    while let Some(msg) = conn.read_copy_out().await? {
        let Some((&tag, body)) = msg.split_first() else {
            return Err(BackupError::Stream("empty CopyData message".into()));
        };
        match tag {
            b'n' => {
                end_archive(&target)?;
                let (name, location) = two_cstrings(body)?;
                let oid = archive_oid(start, &name, &location)?;
                tracing::info!("receiving archive {name}");
                store.begin_archive(oid);
                target = Target::Archive {
                    name,
                    tar: Box::new(TarStream::new()),
                };
            }
            b'm' => {
                end_archive(&target)?;
                let f = fs::File::create(&manifest_path).map_err(|source| BackupError::Io {
                    op: "create",
                    path: manifest_path.clone(),
                    source,
                })?;
                target = Target::Manifest(f);
            }
            b'd' => match &mut target {
                Target::Archive { name, tar } => {
                    let mut input = body;
                    loop {
                        let event = tar.next(&mut input).map_err(|source| BackupError::Tar {
                            archive: name.clone(),
                            source,
                        })?;
                        match event {
                            None => break,
                            Some(TarEvent::Entry(e)) => store.entry(e).await?,
                            Some(TarEvent::Data(d)) => store.data(d).await?,
                            Some(TarEvent::End) => store.end().await?,
                        }
                    }
                }
                Target::Manifest(f) => f.write_all(body).map_err(|source| BackupError::Io {
                    op: "write",
                    path: manifest_path.clone(),
                    source,
                })?,
                Target::Nothing => {
                    return Err(BackupError::Stream("data before any archive began".into()))
                }
            },
            b'p' => {
                let done: [u8; 8] = body
                    .try_into()
                    .map_err(|_| BackupError::Stream("invalid progress message".into()))?;
                progress(Progress {
                    done: u64::from_be_bytes(done),
                    total,
                    phase: Phase::Streaming,
                });
            }
            other => {
                return Err(BackupError::Stream(format!(
                    "unknown message type {:?}",
                    other as char
                )))
            }
        }
    }
    end_archive(&target)?;
    let Target::Manifest(f) = target else {
        return Err(BackupError::Stream(
            "the stream ended without a backup manifest".into(),
        ));
    };
    f.sync_all().map_err(|source| BackupError::Io {
        op: "fsync",
        path: manifest_path.clone(),
        source,
    })?;
    drop(f);
    let summary = store.finish()?;
    let bytes = fs::read(&manifest_path).map_err(|source| BackupError::Io {
        op: "read",
        path: manifest_path.clone(),
        source,
    })?;
    Ok((summary, bytes))
}

fn end_archive(target: &Target) -> Result<(), BackupError> {
    if let Target::Archive { name, tar } = target {
        tar.finish().map_err(|source| BackupError::Tar {
            archive: name.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The tablespace an archive holds: the row of the tablespace list with its location
/// (the main directory's archive has none).
fn archive_oid(
    start: &BaseBackupStart,
    name: &str,
    location: &str,
) -> Result<Option<u32>, BackupError> {
    if location.is_empty() {
        return Ok(None);
    }
    start
        .tablespaces
        .iter()
        .find(|t| t.location.as_deref() == Some(location))
        .and_then(|t| t.oid)
        .map(Some)
        .ok_or_else(|| {
            BackupError::Stream(format!(
                "archive {name} is for tablespace location {location:?}, which the tablespace \
                 list does not name"
            ))
        })
}

fn two_cstrings(body: &[u8]) -> Result<(String, String), BackupError> {
    let bad = || BackupError::Stream("invalid new-archive message".into());
    let mut parts = body.split(|&b| b == 0);
    let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
        return Err(bad());
    };
    let text = |s: &[u8]| String::from_utf8(s.to_vec()).map_err(|_| bad());
    Ok((text(a)?, text(b)?))
}

/// The BASE_BACKUP command (PostgreSQL 15's option-list syntax).
pub fn base_backup_sql(label: &str, checkpoint: Checkpoint, max_rate_kb: Option<u32>) -> String {
    let checkpoint = match checkpoint {
        Checkpoint::Fast => "fast",
        Checkpoint::Spread => "spread",
    };
    let mut sql = format!(
        "BASE_BACKUP ( LABEL '{}', PROGRESS, CHECKPOINT '{checkpoint}', WAIT true, \
         MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C'",
        label.replace('\'', "''")
    );
    if let Some(rate) = max_rate_kb {
        sql.push_str(&format!(", MAX_RATE {rate}"));
    }
    sql.push_str(" )");
    sql
}

async fn wait_for_wal(
    repo: &Repo,
    seg_size: u64,
    tli: TimeLineId,
    stop_lsn: Lsn,
    timeout: Duration,
) -> Result<(), BackupError> {
    let started = Instant::now();
    loop {
        let why = match wal::wal_reaches(&repo.wal_dir(), seg_size, tli, stop_lsn) {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if started.elapsed() >= timeout {
            return Err(BackupError::WalTimeout {
                wal_dir: repo.wal_dir(),
                stop_lsn,
                tli,
                waited: timeout,
                why,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Remove what crashed backups left (`.<id>.partial`); the backup lock is held, so none is
/// being written.
fn remove_leftovers(repo: &Repo) -> Result<(), BackupError> {
    let dir = repo.backups_dir();
    let entries = fs::read_dir(&dir).map_err(|source| BackupError::Io {
        op: "read directory",
        path: dir.clone(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".partial") {
            tracing::info!("removing incomplete backup {name} left by an interrupted run");
            let path = entry.path();
            fs::remove_dir_all(&path).map_err(|source| BackupError::Io {
                op: "remove",
                path,
                source,
            })?;
        }
    }
    Ok(())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn rfc3339(unix_secs: i64) -> String {
    let (y, mo, d, h, mi, s) = crate::inspect::time::utc_parts(unix_secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_backup_command_quotes_the_label() {
        assert_eq!(
            base_backup_sql("it's nightly", Checkpoint::Fast, Some(1024)),
            "BASE_BACKUP ( LABEL 'it''s nightly', PROGRESS, CHECKPOINT 'fast', WAIT true, \
             MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', MAX_RATE 1024 )"
        );
    }

    #[test]
    fn archives_are_matched_to_tablespaces_by_location() {
        use crate::protocol::BackupTablespace;
        let start = BaseBackupStart {
            start_lsn: Lsn(0),
            timeline: TimeLineId(1),
            tablespaces: vec![
                BackupTablespace {
                    oid: Some(16389),
                    location: Some("/srv/ts".into()),
                    size_kb: Some(10),
                },
                BackupTablespace {
                    oid: None,
                    location: None,
                    size_kb: Some(20),
                },
            ],
        };
        assert_eq!(archive_oid(&start, "base.tar", "").unwrap(), None);
        assert_eq!(
            archive_oid(&start, "16389.tar", "/srv/ts").unwrap(),
            Some(16389)
        );
        assert!(archive_oid(&start, "1.tar", "/elsewhere").is_err());
        assert_eq!(
            two_cstrings(b"base.tar\0\0").unwrap(),
            ("base.tar".into(), String::new())
        );
        assert_eq!(rfc3339(1_795_809_180), "2026-11-27T19:53:00Z");
    }
}
