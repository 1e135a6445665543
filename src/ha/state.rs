//! The cluster's authoritative state, as the witness keeps it, and its durable file
//! `DATA/witness.json`.
//!
//! The file is rewritten whole (temporary file, fsync, rename, fsync of the directory) before
//! the witness answers a request that changed it, so an answer is never about a state a crash
//! could lose. The epoch in it never goes back: [`StateStore::save`] refuses a state whose
//! epoch is lower than the one last written, and a damaged file stops the witness instead of
//! being replaced by an empty state (which would restart the epoch at 0). The data directory
//! is locked (`flock`) so that two witnesses never share it.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Epoch, UnixMillis};
use crate::archive::ArchiveLock;
use crate::repo::{make_private_dir, write_durably, RepoError};
use crate::wal::{Lsn, TimeLineId};

/// The state file's name inside the witness's data directory.
pub const STATE_FILE: &str = "witness.json";

/// The state file's format; a newer one is refused rather than misread.
pub const FORMAT_VERSION: u32 = 1;

/// What a node's agent says its PostgreSQL is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Standby,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        })
    }
}

/// Whether a node's PostgreSQL is up and doing its role, as its agent judges it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Ok,
    Failed,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Ok => "ok",
            Health::Failed => "failed",
        })
    }
}

/// One node, as of its agent's last report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub role: Role,
    #[serde(with = "tli_num")]
    pub timeline: TimeLineId,
    /// The epoch the node last said it acts on.
    pub epoch: Epoch,
    /// WAL flushed to the node's disk; `replay_lsn <= flush_lsn` on a standby.
    #[serde(with = "lsn_text")]
    pub flush_lsn: Lsn,
    #[serde(with = "lsn_text")]
    pub replay_lsn: Lsn,
    pub health: Health,
    /// A standby: whether it still reaches the primary (streams from it).
    pub primary_visible: bool,
    /// Promotion preference: higher wins a tie on LSN; 0 = never promote this node.
    pub priority: u32,
    /// Whether the node is a synchronous standby of the primary.
    pub synchronous: bool,
    pub last_report: UnixMillis,
    /// PostgreSQL is not running (see [`super::wire::Report::down`]).
    #[serde(default)]
    pub down: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// A promote the witness granted and the new primary has not yet confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub node: String,
    pub epoch: Epoch,
    pub previous_primary: String,
    pub granted_at: UnixMillis,
}

/// A planned switchover: the primary `from` stops cleanly (its agent is told to demote), and
/// once `to` has received everything up to `from`'s shutdown checkpoint (`final_lsn`, as
/// `from`'s agent reports it when down), `to` is promoted. Zero loss.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switchover {
    pub from: String,
    pub to: String,
    pub requested_at: UnixMillis,
    #[serde(
        default,
        with = "crate::ha::wire::opt_lsn_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub final_lsn: Option<Lsn>,
}

/// A change of primary, kept for `status` and for whoever audits a failover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub epoch: Epoch,
    pub primary: String,
    pub at: UnixMillis,
    pub what: String,
}

/// How many past decisions the state keeps.
pub const DECISIONS_KEPT: usize = 32;

/// The whole state. Invariant: `primary.is_some()` iff `epoch > 0`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub version: u32,
    pub epoch: Epoch,
    pub primary: Option<String>,
    /// The primary's timeline (the old one while a promotion is pending).
    #[serde(with = "tli_num")]
    pub timeline: TimeLineId,
    /// The last time the epoch's primary reported itself healthy as primary (or was granted).
    pub primary_heard: UnixMillis,
    /// The highest LSN the primary ever reported as acknowledged by its synchronous standbys:
    /// a commit up to here may have been confirmed to a client, so a standby that lacks it
    /// must not be promoted in synchronous mode.
    #[serde(with = "lsn_text")]
    pub sync_acked_lsn: Lsn,
    pub promotion: Option<Promotion>,
    /// A planned switchover an operator asked for, not yet promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<Switchover>,
    pub nodes: BTreeMap<String, NodeState>,
    pub decisions: Vec<Decision>,
}

impl Default for ClusterState {
    fn default() -> Self {
        ClusterState {
            version: FORMAT_VERSION,
            epoch: Epoch(0),
            primary: None,
            timeline: TimeLineId(0),
            primary_heard: UnixMillis(0),
            sync_acked_lsn: Lsn(0),
            promotion: None,
            switchover: None,
            nodes: BTreeMap::new(),
            decisions: Vec::new(),
        }
    }
}

impl ClusterState {
    pub fn record_decision(&mut self, at: UnixMillis, what: String) {
        if let Some(primary) = &self.primary {
            self.decisions.push(Decision {
                epoch: self.epoch,
                primary: primary.clone(),
                at,
                what,
            });
        }
        let excess = self.decisions.len().saturating_sub(DECISIONS_KEPT);
        self.decisions.drain(..excess);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("could not {op} \"{}\": {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the witness state file \"{}\" is damaged: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "the witness state file \"{}\" has format version {found}; this walferry reads version {FORMAT_VERSION}",
        path.display()
    )]
    Version { path: PathBuf, found: u32 },
    #[error("refusing to write epoch {new}: epoch {saved} is already saved, and the epoch never goes back")]
    EpochRegressed { saved: Epoch, new: Epoch },
    #[error("{0}")]
    Repo(#[from] RepoError),
    #[error("witness data directory \"{}\" is in use by another witness{}", path.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { path: PathBuf, pid: Option<u32> },
    #[error("could not lock the witness data directory: {0}")]
    Lock(crate::archive::ArchiveError),
}

impl StateError {
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            StateError::Corrupt { .. } | StateError::Version { .. } => Some(
                "restore the file from a backup; do not delete it: a fresh state restarts the \
                 epoch, and agents that know a higher epoch will be refused",
            ),
            StateError::Locked { .. } => Some("give each witness its own data directory"),
            _ => None,
        }
    }
}

/// The witness's data directory, locked for as long as this value lives.
#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
    saved_epoch: Epoch,
    _lock: ArchiveLock,
}

impl StateStore {
    /// Open (make, mode 0700, when missing) and lock `dir`, and read its state: the empty
    /// state when the directory holds none yet.
    pub fn open(dir: &Path) -> Result<(StateStore, ClusterState), StateError> {
        make_private_dir(dir)?;
        let lock = ArchiveLock::acquire(dir).map_err(|e| match e {
            crate::archive::ArchiveError::Locked { path, pid } => StateError::Locked { path, pid },
            other => StateError::Lock(other),
        })?;
        let path = dir.join(STATE_FILE);
        let state = match fs::read(&path) {
            Ok(bytes) => parse_state(&path, &bytes)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => ClusterState::default(),
            Err(source) => {
                return Err(StateError::Io {
                    op: "read",
                    path,
                    source,
                })
            }
        };
        let store = StateStore {
            dir: dir.to_path_buf(),
            saved_epoch: state.epoch,
            _lock: lock,
        };
        Ok((store, state))
    }

    /// Write `state` durably; refused if its epoch is lower than the one saved.
    pub fn save(&mut self, state: &ClusterState) -> Result<(), StateError> {
        if state.epoch < self.saved_epoch {
            return Err(StateError::EpochRegressed {
                saved: self.saved_epoch,
                new: state.epoch,
            });
        }
        let mut bytes = serde_json::to_vec_pretty(state).map_err(|e| StateError::Corrupt {
            path: self.path(),
            detail: e.to_string(),
        })?;
        bytes.push(b'\n');
        write_durably(&self.path(), &bytes)?;
        self.saved_epoch = state.epoch;
        Ok(())
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
}

fn parse_state(path: &Path, bytes: &[u8]) -> Result<ClusterState, StateError> {
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let corrupt = |e: serde_json::Error| StateError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let Version { version } = serde_json::from_slice(bytes).map_err(corrupt)?;
    if version != FORMAT_VERSION {
        return Err(StateError::Version {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let state: ClusterState = serde_json::from_slice(bytes).map_err(corrupt)?;
    if state.primary.is_some() != (state.epoch > Epoch(0)) {
        return Err(StateError::Corrupt {
            path: path.to_path_buf(),
            detail: format!(
                "epoch {} with {} primary",
                state.epoch,
                if state.primary.is_some() { "a" } else { "no" }
            ),
        });
    }
    Ok(state)
}

/// An [`Lsn`] as PostgreSQL prints it (`"0/16B3748"`), in JSON.
pub mod lsn_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::wal::Lsn;

    pub fn serialize<S: Serializer>(lsn: &Lsn, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(lsn)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A [`TimeLineId`] as a JSON number.
pub mod tli_num {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::wal::TimeLineId;

    pub fn serialize<S: Serializer>(tli: &TimeLineId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(tli.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TimeLineId, D::Error> {
        u32::deserialize(d).map(TimeLineId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClusterState {
        let mut s = ClusterState {
            epoch: Epoch(3),
            primary: Some("b".into()),
            timeline: TimeLineId(2),
            primary_heard: UnixMillis(1_000),
            sync_acked_lsn: Lsn(0x0300_0028),
            ..ClusterState::default()
        };
        s.nodes.insert(
            "b".into(),
            NodeState {
                role: Role::Primary,
                timeline: TimeLineId(2),
                epoch: Epoch(3),
                flush_lsn: Lsn(0x0300_0028),
                replay_lsn: Lsn(0x0300_0028),
                health: Health::Ok,
                primary_visible: true,
                priority: 100,
                synchronous: false,
                down: false,
                address: None,
                problem: None,
                last_report: UnixMillis(1_000),
            },
        );
        s.record_decision(UnixMillis(900), "promoted".into());
        s
    }

    #[test]
    fn the_state_survives_a_reopen_and_the_file_is_readable_json() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("w");
        let (mut store, empty) = StateStore::open(&data).unwrap();
        assert_eq!(empty, ClusterState::default());
        store.save(&sample()).unwrap();
        drop(store);
        let (_store, back) = StateStore::open(&data).unwrap();
        assert_eq!(back, sample());
        let text = fs::read_to_string(data.join(STATE_FILE)).unwrap();
        assert!(text.contains("\"sync_acked_lsn\": \"0/3000028\""), "{text}");
    }

    #[test]
    fn the_epoch_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = StateStore::open(dir.path()).unwrap();
        store.save(&sample()).unwrap();
        let older = ClusterState {
            epoch: Epoch(2),
            ..sample()
        };
        assert!(matches!(
            store.save(&older),
            Err(StateError::EpochRegressed {
                saved: Epoch(3),
                new: Epoch(2)
            })
        ));
        drop(store);
        // Nor across a reopen.
        let (mut store, _) = StateStore::open(dir.path()).unwrap();
        assert!(store.save(&older).is_err());
    }

    #[test]
    fn a_second_witness_on_the_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = StateStore::open(dir.path()).unwrap();
        let err = StateStore::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StateError::Locked { pid: Some(_), .. }),
            "{err}"
        );
        assert!(err.hint().is_some());
    }

    #[test]
    fn a_damaged_or_newer_file_stops_the_witness_instead_of_resetting_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        for (bytes, want_version) in [
            (&b"{\"version\":1,\"epoch\":"[..], false),
            (b"", false),
            (b"{\"version\":2}", true),
        ] {
            fs::write(&path, bytes).unwrap();
            let err = StateStore::open(dir.path()).unwrap_err();
            match err {
                StateError::Version { found: 2, .. } if want_version => {}
                StateError::Corrupt { .. } if !want_version => {}
                other => panic!("{other:?}"),
            }
        }
        // An epoch without a primary breaks the invariant.
        let mut bad = serde_json::to_value(ClusterState::default()).unwrap();
        bad["epoch"] = 4.into();
        fs::write(&path, bad.to_string()).unwrap();
        assert!(matches!(
            StateStore::open(dir.path()),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn only_the_last_decisions_are_kept() {
        let mut s = sample();
        for i in 0..100 {
            s.record_decision(UnixMillis(i), format!("d{i}"));
        }
        assert_eq!(s.decisions.len(), DECISIONS_KEPT);
        assert_eq!(s.decisions.last().unwrap().what, "d99");
    }
}
