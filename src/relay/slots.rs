//! Replication slots that downstreams create on the relay.
//!
//! A slot remembers how far its downstream has flushed, so that a later cleanup of the
//! archive keeps what that standby still needs, and so `READ_REPLICATION_SLOT` (which
//! `pg_receivewal --slot` asks on startup) has an answer. Permanent slots live in one JSON
//! file in the archive directory, replaced atomically (written aside, fsynced, renamed,
//! directory fsynced) on every create and drop, and at most once a second while their
//! positions move; a crash loses at most that second of progress, which only makes a slot
//! keep more WAL. Those once-a-second saves run on a blocking thread: the fsyncs must not
//! stall the relay's one runtime thread. Temporary slots exist in memory for the life of
//! their session.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::wal::{Lsn, TimeLineId};

/// The slot file's name in the archive directory.
pub const SLOTS_FILE: &str = ".walferry-slots.json";
const SAVE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    /// The oldest WAL the slot's downstream still needs (its last reported flush);
    /// invalid until it first streams, unless created with RESERVE_WAL.
    pub restart_lsn: Lsn,
    pub restart_tli: Option<TimeLineId>,
    pub temporary: bool,
    /// The session using it, if any (a slot serves one downstream at a time).
    pub active_pid: Option<i32>,
}

/// Why a slot operation was refused; each maps to PostgreSQL's error.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("replication slot \"{0}\" does not exist")]
    Missing(String),
    #[error("replication slot \"{0}\" already exists")]
    Exists(String),
    #[error("replication slot \"{name}\" is active for PID {pid}")]
    Active { name: String, pid: i32 },
    #[error(
        "replication slot name \"{0}\" is invalid: use only lower case letters, numbers and \
         the underscore character, at most 63 characters"
    )]
    BadName(String),
    #[error("could not save replication slots to \"{}\": {source}", path.display())]
    Save { path: PathBuf, source: io::Error },
    #[error("could not read replication slots from \"{}\": {reason}", path.display())]
    Load { path: PathBuf, reason: String },
}

impl SlotError {
    /// The SQLSTATE PostgreSQL uses for the same failure.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            SlotError::Missing(_) => "42704",
            SlotError::Exists(_) => "42710",
            SlotError::Active { .. } => "55006",
            SlotError::BadName(_) => "42602",
            SlotError::Save { .. } | SlotError::Load { .. } => "58030",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SlotFile {
    slots: Vec<SavedSlot>,
}

#[derive(Serialize, Deserialize)]
struct SavedSlot {
    name: String,
    restart_lsn: String,
    restart_tli: Option<u32>,
}

/// The relay's slots; see the module documentation.
#[derive(Debug)]
pub struct Slots {
    inner: Mutex<Inner>,
    file: Arc<FileWriter>,
}

#[derive(Debug)]
struct Inner {
    slots: BTreeMap<String, Slot>,
    saved_at: Instant,
    dirty: bool,
    /// Snapshots taken for saving, numbered from 1.
    snapshots: u64,
}

/// Writes snapshots of the slots to the slot file, one at a time; a snapshot older than
/// the one already written (a background save that finished late) is skipped.
#[derive(Debug)]
struct FileWriter {
    path: PathBuf,
    written: Mutex<u64>,
}

impl FileWriter {
    fn write(&self, snapshot: u64, text: &[u8]) -> Result<(), SlotError> {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if snapshot <= *written {
            return Ok(());
        }
        write_durably(&self.path, text).map_err(|source| SlotError::Save {
            path: self.path.clone(),
            source,
        })?;
        *written = snapshot;
        Ok(())
    }
}

impl Slots {
    /// The slots saved in archive directory `dir` (none when there is no slot file).
    pub fn load(dir: &Path) -> Result<Self, SlotError> {
        let path = dir.join(SLOTS_FILE);
        let mut slots = BTreeMap::new();
        match fs::read(&path) {
            Ok(bytes) => {
                let bad = |reason: String| SlotError::Load {
                    path: path.clone(),
                    reason,
                };
                let file: SlotFile =
                    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
                for s in file.slots {
                    let restart_lsn = s
                        .restart_lsn
                        .parse::<Lsn>()
                        .map_err(|e| bad(format!("slot \"{}\": {e}", s.name)))?;
                    slots.insert(
                        s.name.clone(),
                        Slot {
                            name: s.name,
                            restart_lsn,
                            restart_tli: s.restart_tli.map(TimeLineId),
                            temporary: false,
                            active_pid: None,
                        },
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(SlotError::Load {
                    path,
                    reason: e.to_string(),
                })
            }
        }
        Ok(Slots {
            inner: Mutex::new(Inner {
                slots,
                saved_at: Instant::now(),
                dirty: false,
                snapshots: 0,
            }),
            file: Arc::new(FileWriter {
                path,
                written: Mutex::new(0),
            }),
        })
    }

    pub fn get(&self, name: &str) -> Option<Slot> {
        self.lock().slots.get(name).cloned()
    }

    /// Every slot, by name.
    pub fn list(&self) -> Vec<Slot> {
        self.lock().slots.values().cloned().collect()
    }

    /// Create a slot; a temporary one is owned by session `pid` and dropped with it.
    pub fn create(
        &self,
        name: &str,
        temporary: bool,
        reserve: Option<(Lsn, TimeLineId)>,
        pid: i32,
    ) -> Result<Slot, SlotError> {
        check_name(name)?;
        let mut inner = self.lock();
        if inner.slots.contains_key(name) {
            return Err(SlotError::Exists(name.to_string()));
        }
        let slot = Slot {
            name: name.to_string(),
            restart_lsn: reserve.map_or(Lsn::INVALID, |r| r.0),
            restart_tli: reserve.map(|r| r.1),
            temporary,
            active_pid: temporary.then_some(pid),
        };
        inner.slots.insert(name.to_string(), slot.clone());
        if !temporary {
            self.save(&mut inner)?;
        }
        Ok(slot)
    }

    pub fn drop_slot(&self, name: &str, pid: i32) -> Result<(), SlotError> {
        let mut inner = self.lock();
        let slot = inner
            .slots
            .get(name)
            .ok_or_else(|| SlotError::Missing(name.to_string()))?;
        if let Some(active) = slot.active_pid.filter(|&a| a != pid) {
            return Err(SlotError::Active {
                name: name.to_string(),
                pid: active,
            });
        }
        let temporary = slot.temporary;
        inner.slots.remove(name);
        if !temporary {
            self.save(&mut inner)?;
        }
        Ok(())
    }

    /// Mark the slot in use by session `pid` (for START_REPLICATION).
    pub fn acquire(&self, name: &str, pid: i32) -> Result<Slot, SlotError> {
        let mut inner = self.lock();
        let slot = inner
            .slots
            .get_mut(name)
            .ok_or_else(|| SlotError::Missing(name.to_string()))?;
        match slot.active_pid {
            Some(active) if active != pid => Err(SlotError::Active {
                name: name.to_string(),
                pid: active,
            }),
            _ => {
                slot.active_pid = Some(pid);
                Ok(slot.clone())
            }
        }
    }

    /// The slot's downstream reported `flush` on `tli`: it no longer needs WAL before it.
    /// Saved to disk at most once a second (see the module documentation).
    pub fn advance(&self, name: &str, flush: Lsn, tli: TimeLineId) -> Result<(), SlotError> {
        let mut inner = self.lock();
        let Some(slot) = inner.slots.get_mut(name) else {
            return Ok(());
        };
        if flush <= slot.restart_lsn {
            return Ok(());
        }
        tracing::debug!("relay: slot \"{name}\" advances to {flush}");
        slot.restart_lsn = flush;
        slot.restart_tli = Some(tli);
        if slot.temporary {
            return Ok(());
        }
        inner.dirty = true;
        if inner.saved_at.elapsed() >= SAVE_EVERY {
            let (n, text) = snapshot(&mut inner);
            let file = self.file.clone();
            let save = move || {
                if let Err(e) = file.write(n, &text) {
                    tracing::error!("relay: {e}");
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(save)),
                Err(_) => save(),
            }
        }
        Ok(())
    }

    /// Session `pid` ended: its temporary slots go, the others become inactive, and moved
    /// positions are saved.
    pub fn release_all(&self, pid: i32) -> Result<(), SlotError> {
        let mut inner = self.lock();
        inner
            .slots
            .retain(|_, s| !(s.temporary && s.active_pid == Some(pid)));
        for slot in inner.slots.values_mut() {
            if slot.active_pid == Some(pid) {
                slot.active_pid = None;
            }
        }
        if inner.dirty {
            self.save(&mut inner)?;
        }
        Ok(())
    }

    /// Save now (a create or a drop is durable before it is answered).
    fn save(&self, inner: &mut Inner) -> Result<(), SlotError> {
        let (n, text) = snapshot(inner);
        self.file
            .write(n, &text)
            .inspect_err(|_| inner.dirty = true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The permanent slots as the slot file holds them, numbered; they count as saved.
fn snapshot(inner: &mut Inner) -> (u64, Vec<u8>) {
    let file = SlotFile {
        slots: inner
            .slots
            .values()
            .filter(|s| !s.temporary)
            .map(|s| SavedSlot {
                name: s.name.clone(),
                restart_lsn: s.restart_lsn.to_string(),
                restart_tli: s.restart_tli.map(|t| t.0),
            })
            .collect(),
    };
    inner.snapshots += 1;
    inner.saved_at = Instant::now();
    inner.dirty = false;
    (
        inner.snapshots,
        serde_json::to_vec_pretty(&file).expect("slots serialize"),
    )
}

/// As PostgreSQL's ReplicationSlotValidateName.
fn check_name(name: &str) -> Result<(), SlotError> {
    let ok = !name.is_empty()
        && name.len() < 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SlotError::BadName(name.to_string()))
    }
}

fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_slots_survive_a_restart_and_temporary_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let slots = Slots::load(dir.path()).unwrap();
        slots.create("keep", false, None, 1).unwrap();
        slots
            .create("temp", true, Some((Lsn(0x100), TimeLineId(1))), 1)
            .unwrap();
        slots.acquire("keep", 2).unwrap();
        slots.advance("keep", Lsn(0x5000), TimeLineId(2)).unwrap();
        slots.release_all(2).unwrap();
        assert!(slots.get("temp").is_some(), "owned by session 1");
        slots.release_all(1).unwrap();
        assert!(slots.get("temp").is_none());

        let again = Slots::load(dir.path()).unwrap();
        let keep = again.get("keep").unwrap();
        assert_eq!(keep.restart_lsn, Lsn(0x5000));
        assert_eq!(keep.restart_tli, Some(TimeLineId(2)));
        assert_eq!(keep.active_pid, None);
        assert_eq!(again.list().len(), 1);
    }

    #[tokio::test]
    async fn a_periodic_save_is_written_in_the_background_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let slots = Slots::load(dir.path()).unwrap();
        slots.create("s", false, None, 1).unwrap();
        slots.lock().saved_at -= SAVE_EVERY;
        slots.advance("s", Lsn(0x5000), TimeLineId(1)).unwrap();
        let saved = || {
            Slots::load(dir.path())
                .unwrap()
                .get("s")
                .unwrap()
                .restart_lsn
        };
        for _ in 0..500 {
            if saved() == Lsn(0x5000) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(saved(), Lsn(0x5000));
        // A snapshot older than the one written, finishing late, is skipped.
        slots.file.write(1, br#"{"slots": []}"#).unwrap();
        assert_eq!(saved(), Lsn(0x5000));
    }

    #[test]
    fn refusals_carry_postgresql_sqlstates() {
        let dir = tempfile::tempdir().unwrap();
        let slots = Slots::load(dir.path()).unwrap();
        slots.create("s", false, None, 1).unwrap();
        assert_eq!(
            slots.create("s", false, None, 1).unwrap_err().sqlstate(),
            "42710"
        );
        assert_eq!(slots.acquire("nope", 1).unwrap_err().sqlstate(), "42704");
        slots.acquire("s", 7).unwrap();
        let e = slots.acquire("s", 8).unwrap_err();
        assert_eq!(e.sqlstate(), "55006");
        assert!(e.to_string().contains("PID 7"), "{e}");
        assert_eq!(slots.drop_slot("s", 8).unwrap_err().sqlstate(), "55006");
        assert_eq!(
            slots
                .create("Bad-Name", false, None, 1)
                .unwrap_err()
                .sqlstate(),
            "42602"
        );
        slots.release_all(7).unwrap();
        slots.drop_slot("s", 8).unwrap();
        assert!(Slots::load(dir.path()).unwrap().list().is_empty());
    }

    #[test]
    fn a_damaged_slot_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SLOTS_FILE), b"{not json").unwrap();
        let e = Slots::load(dir.path()).unwrap_err();
        assert!(e.to_string().contains(SLOTS_FILE), "{e}");
    }
}
