//! `backup --pgdata`: a backup whose files walferry reads from the data directory itself
//! ([`super::pgdata`]), the server only bracketing it with `pg_backup_start()` and
//! `pg_backup_stop()` on an ordinary SQL session, as pgBackRest does. The server's one
//! walsender then neither reads, checksums nor sends a byte: on a small machine the CPU it
//! would take goes to compressing, and the files are read with large reads straight from
//! the page cache.
//!
//! The SQL session must last from start to stop: PostgreSQL aborts a backup whose session
//! ends. While the files are copied the session is watched, and its end fails the backup
//! at once. The replication connection's checks (system identifier, WAL segment size, the
//! archive) are those of the protocol way (see [`super::take`]); the SQL session must reach
//! the same system, whose `global/pg_control` must be the one in the directory given.
//!
//! What the server would have put in base.tar itself is written here: the `backup_label`
//! `pg_backup_stop()` returns, and the manifest ([`super::manifest::write_manifest`]), from
//! the sizes and CRC-32Cs of the files as stored. No `tablespace_map` is written: the
//! tablespaces' symbolic links are in the backup as BASE_BACKUP sends them (without its
//! TABLESPACE_MAP option), and a map would make PostgreSQL relink the tablespaces to their
//! old locations at start, undoing a restore's `--tablespace-mapping`.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::manifest::{write_manifest, WrittenFile};
use super::pgdata::{self, Copied, CopyError, Reader};
use super::store::Store;
use super::{BackupError, BackupOptions, Checkpoint, Phase, Progress, Taken};
use crate::protocol::ReplicationConn;
use crate::repo::{Tablespace, MANIFEST_FILE};
use crate::wal::{Lsn, TimeLineId};

/// Check `dir` and open the SQL session: the directory must be a data directory this
/// process can read, of the system the replication connection reached (`system_id`).
pub(super) async fn open_session(
    opts: &BackupOptions,
    dir: &Path,
    system_id: u64,
) -> Result<ReplicationConn, BackupError> {
    fs::read_dir(dir).map_err(|source| BackupError::Io {
        op: "read the data directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let control = dir.join("global").join("pg_control");
    match fs::File::open(&control) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(BackupError::NotADataDir(dir.to_path_buf()))
        }
        Err(source) => {
            return Err(BackupError::Io {
                op: "read",
                path: control,
                source,
            })
        }
    }
    let dir_id = crate::archive::get::pg_control_system_id(dir)
        .ok_or_else(|| BackupError::NotADataDir(dir.to_path_buf()))?;

    let params = opts.params.sql_session(&opts.sql_dbname);
    let mut sql =
        ReplicationConn::connect(&params)
            .await
            .map_err(|source| BackupError::Session {
                what: "open the SQL session for pg_backup_start()",
                source: Box::new(source),
            })?;
    let rows = sql
        .simple_query("SELECT system_identifier FROM pg_control_system()")
        .await
        .map_err(|source| BackupError::Session {
            what: "read the server's system identifier",
            source: Box::new(source),
        })?;
    let server_id = first_value(&rows)
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            BackupError::Stream("pg_control_system() gave no system identifier".into())
        })?;
    if server_id != system_id {
        return Err(BackupError::Stream(format!(
            "the SQL session reached database system {server_id}, the replication \
             connection {system_id}: -d must name one server"
        )));
    }
    if dir_id != server_id {
        return Err(BackupError::WrongCluster {
            dir: dir.to_path_buf(),
            dir_id,
            server_id,
        });
    }
    Ok(sql)
}

/// Take the backup: start, copy, stop, then write `backup_label` and the manifest.
pub(super) async fn take(
    mut sql: ReplicationConn,
    conn: &mut ReplicationConn,
    dir: &Path,
    version_num: u32,
    partial: &Path,
    opts: &BackupOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Taken, BackupError> {
    let fast = opts.checkpoint == Checkpoint::Fast;
    let rows = sql
        .simple_query(&format!(
            "SELECT pg_backup_start({}, {fast})",
            quote_literal(&opts.label)
        ))
        .await
        .map_err(|source| BackupError::Session {
            what: "start the backup with pg_backup_start()",
            source: Box::new(source),
        })?;
    let start_lsn: Lsn = first_value(&rows)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| BackupError::Stream("pg_backup_start() gave no LSN".into()))?;
    tracing::info!(
        "backup starts at {start_lsn}; reading \"{}\"",
        dir.display()
    );

    let listing = pgdata::list(dir, &format!("PG_{}_", version_num / 10000))?;
    let total = listing.total;
    let mut store = Store::handing_over(
        partial,
        opts.compression,
        opts.threads,
        opts.hand_over.clone(),
    );
    let mut copied: Vec<Copied> = Vec::new();
    {
        let mut report = |done| {
            progress(Progress {
                done,
                total: Some(total),
                phase: Phase::Streaming,
            })
        };
        let mut reader = Reader {
            max_rate: opts.max_rate_kb.map(|kb| u64::from(kb) * 1024),
            started: Instant::now(),
            done: 0,
            progress: &mut report,
        };
        let copy = async {
            for archive in &listing.archives {
                pgdata::copy_archive(archive, &mut store, &mut reader, &mut copied).await?;
            }
            Ok::<(), CopyError>(())
        };
        tokio::select! {
            r = copy => r?,
            e = sql.closed() => return Err(BackupError::SessionLost(e)),
        }
    }

    let rows = sql
        .simple_query("SELECT lsn, labelfile FROM pg_backup_stop(false)")
        .await
        .map_err(BackupError::SessionLost)?;
    let (stop_lsn, label) = match rows.first().map(Vec::as_slice) {
        Some([Some(lsn), Some(label)]) => (lsn.parse::<Lsn>().ok(), label.clone()),
        _ => (None, String::new()),
    };
    let stop_lsn = stop_lsn
        .ok_or_else(|| BackupError::Stream("pg_backup_stop() gave no LSN and label".into()))?;
    sql.close().await;
    let start_tli = label_timeline(&label).ok_or_else(|| {
        BackupError::Stream(format!(
            "the backup_label from pg_backup_stop() names no timeline: {label:?}"
        ))
    })?;
    // The server's timeline now, as BASE_BACKUP reports it at its end.
    let stop_tli = conn.identify_system().await?.timeline;
    if stop_tli != start_tli {
        return Err(BackupError::Stream(format!(
            "the server moved from timeline {start_tli} to {stop_tli} during the backup; take \
             it again"
        )));
    }

    // backup_label, in the main directory, as BASE_BACKUP puts it first in base.tar.
    store.begin_archive(None);
    store
        .entry(super::tar::TarEntry {
            path: "backup_label".into(),
            kind: super::tar::EntryKind::File {
                size: label.len() as u64,
            },
            mode: 0o600,
            mtime: 0,
        })
        .await?;
    store.data(label.as_bytes()).await?;
    store.end().await?;
    copied.push(Copied {
        rel: "backup_label".into(),
        mtime: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    });
    let summary = store.finish()?;

    let mut files = Vec::with_capacity(copied.len());
    for c in copied {
        let (size, crc32c) = summary.stored(&c.rel).ok_or_else(|| {
            BackupError::Stream(format!("\"{}\" was copied but not stored", c.rel))
        })?;
        files.push(WrittenFile {
            path: c.rel,
            size,
            mtime: c.mtime,
            crc32c,
        });
    }
    let manifest = write_manifest(&files, start_tli, start_lsn, stop_lsn);
    let path = partial.join(MANIFEST_FILE);
    let io = |op| {
        let path = path.clone();
        move |source| BackupError::Io { op, path, source }
    };
    fs::write(&path, &manifest).map_err(io("write"))?;
    fs::File::open(&path)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync"))?;
    crate::repo::sync_dir(partial).map_err(|e| BackupError::Io {
        op: "fsync directory",
        path: partial.to_path_buf(),
        source: io::Error::other(e.to_string()),
    })?;

    Ok(Taken {
        start_lsn,
        start_tli,
        stop_lsn,
        stop_tli,
        summary,
        manifest,
        tablespaces: listing
            .tablespaces()
            .into_iter()
            .map(|(oid, location)| Tablespace { oid, location })
            .collect(),
    })
}

fn first_value(rows: &[Vec<Option<String>>]) -> Option<&str> {
    rows.first()?.first()?.as_deref()
}

/// An SQL string literal, whatever standard_conforming_strings says.
fn quote_literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// The `START TIMELINE: n` line of a backup_label.
fn label_timeline(label: &str) -> Option<TimeLineId> {
    label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE:"))
        .and_then(|t| t.trim().parse().ok())
        .map(TimeLineId)
}

impl From<CopyError> for BackupError {
    fn from(e: CopyError) -> Self {
        match e {
            CopyError::Read(e) => BackupError::PgData(e),
            CopyError::Store(e) => BackupError::Store(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_quoting_and_timeline() {
        assert_eq!(quote_literal(r"it's a\b"), r"E'it''s a\\b'");
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                     CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\n\
                     BACKUP FROM: primary\nSTART TIME: 2026-11-28 07:00:00 UTC\n\
                     LABEL: x\nSTART TIMELINE: 3\n";
        assert_eq!(label_timeline(label), Some(TimeLineId(3)));
        assert_eq!(label_timeline("LABEL: x\n"), None);
    }
}
