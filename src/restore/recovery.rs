//! The recovery settings of a restored data directory: appended to `postgresql.auto.conf`
//! (read last, so they win over the backed-up primary's own settings) under a marked block,
//! and the signal file (`recovery.signal` for targeted recovery, `standby.signal` for a
//! standby), each written durably.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{Target, TargetAction, TargetTimeline};

/// What recovery should do.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `restore_command`, e.g. `'/usr/bin/walferry' archive-get --repo '/srv/repo' %f %p`.
    pub restore_command: String,
    pub target: Target,
    pub timeline: TargetTimeline,
    pub action: TargetAction,
    /// Restore as a standby: `standby.signal`, and `primary_conninfo` when given.
    pub standby: bool,
    pub primary_conninfo: Option<String>,
}

/// The lines appended to `postgresql.auto.conf`.
pub fn conf_lines(s: &Settings) -> String {
    let mut out = String::from("\n# Added by walferry restore\n");
    let mut set = |key: &str, value: String| {
        out.push_str(&format!("{key} = {}\n", quote(&value)));
    };
    set("restore_command", s.restore_command.clone());
    match &s.target {
        Target::Latest => {}
        Target::Name(n) => set("recovery_target_name", n.clone()),
        Target::Time(t, _) => set("recovery_target_time", t.clone()),
        Target::Lsn(l) => set("recovery_target_lsn", l.to_string()),
        Target::Xid(x) => set("recovery_target_xid", x.to_string()),
        Target::Immediate => set("recovery_target", "immediate".into()),
    }
    set(
        "recovery_target_timeline",
        match s.timeline {
            TargetTimeline::Latest => "latest".into(),
            TargetTimeline::Current => "current".into(),
            TargetTimeline::Id(t) => t.0.to_string(),
        },
    );
    if s.target != Target::Latest && !s.standby {
        set("recovery_target_action", s.action.to_string());
    }
    if let Some(c) = &s.primary_conninfo {
        set("primary_conninfo", c.clone());
    }
    out
}

/// A value as postgresql.conf quotes strings: in single quotes, a quote doubled.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// A word for a shell command line (restore_command runs through `sh -c`).
/// The `restore_command` that fetches WAL from `repo` with the walferry at `exe`.
pub fn archive_get_command(exe: &std::path::Path, repo: &str) -> String {
    format!(
        "{} archive-get --repo {} %f %p",
        shell_word(&exe.to_string_lossy()),
        shell_word(repo)
    )
}

/// [`archive_get_command`] for a repository in object storage, with `cache` the local
/// copy of its archive that a restore fetched, for archive-get to take segments from.
pub fn archive_get_command_cached(exe: &std::path::Path, repo: &str, cache: &Path) -> String {
    format!(
        "{} archive-get --repo {} --cache {} %f %p",
        shell_word(&exe.to_string_lossy()),
        shell_word(repo),
        shell_word(&cache.to_string_lossy())
    )
}

pub fn shell_word(v: &str) -> String {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@%".contains(&b))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}

/// Append the settings to PGDATA's `postgresql.auto.conf` and write the signal file; an
/// earlier signal file from the backed-up server's copy is removed first.
pub fn write(pgdata: &Path, s: &Settings) -> io::Result<PathBuf> {
    let conf = pgdata.join("postgresql.auto.conf");
    let mut f = OpenOptions::new().append(true).create(true).open(&conf)?;
    f.write_all(conf_lines(s).as_bytes())?;
    f.sync_all()?;
    for old in ["recovery.signal", "standby.signal"] {
        match fs::remove_file(pgdata.join(old)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let signal = pgdata.join(if s.standby {
        "standby.signal"
    } else {
        "recovery.signal"
    });
    fs::File::create(&signal)?.sync_all()?;
    fs::File::open(pgdata)?.sync_all()?;
    Ok(signal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{Lsn, TimeLineId};

    fn settings(target: Target) -> Settings {
        Settings {
            restore_command: "walferry archive-get --repo '/srv/my repo' %f %p".into(),
            target,
            timeline: TargetTimeline::Latest,
            action: TargetAction::Promote,
            standby: false,
            primary_conninfo: None,
        }
    }

    #[test]
    fn each_target_becomes_its_setting() {
        let text = conf_lines(&settings(Target::Name("before it's gone".into())));
        assert!(
            text.contains("restore_command = 'walferry archive-get --repo ''/srv/my repo'' %f %p'"),
            "{text}"
        );
        assert!(
            text.contains("recovery_target_name = 'before it''s gone'"),
            "{text}"
        );
        assert!(
            text.contains("recovery_target_action = 'promote'"),
            "{text}"
        );
        assert!(conf_lines(&settings(Target::Lsn(Lsn(0x1_0000_0028))))
            .contains("recovery_target_lsn = '1/28'"));
        assert!(conf_lines(&settings(Target::Xid(745))).contains("recovery_target_xid = '745'"));
        assert!(conf_lines(&settings(Target::Immediate)).contains("recovery_target = 'immediate'"));
        let latest = conf_lines(&settings(Target::Latest));
        assert!(!latest.contains("recovery_target_action"), "{latest}");
        assert!(latest.contains("recovery_target_timeline = 'latest'"));
        let mut s = settings(Target::Latest);
        s.timeline = TargetTimeline::Id(TimeLineId(3));
        s.standby = true;
        s.primary_conninfo = Some("host=db2 user=rep".into());
        let text = conf_lines(&s);
        assert!(text.contains("recovery_target_timeline = '3'"));
        assert!(text.contains("primary_conninfo = 'host=db2 user=rep'"));
    }

    #[test]
    fn the_signal_file_matches_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("standby.signal"), b"").unwrap();
        let signal = write(dir.path(), &settings(Target::Immediate)).unwrap();
        assert_eq!(signal, dir.path().join("recovery.signal"));
        assert!(!dir.path().join("standby.signal").exists());
        let conf = fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        assert!(conf.contains("# Added by walferry restore"));
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("/srv/repo"), "/srv/repo");
        assert_eq!(shell_word("/srv/my repo"), "'/srv/my repo'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
    }
}
