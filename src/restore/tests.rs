use super::*;
use crate::inspect::{Problem, Report, RestorePointInfo, TimelineInfo, XactPoint};

const T1: TimeLineId = TimeLineId(1);

fn ts(text: &str) -> TimestampTz {
    parse_time(text).unwrap()
}

fn backup(id: &str, start: u64, stop: u64, stop_time: &str) -> BackupInfo {
    BackupInfo {
        stop_time: stop_time.into(),
        ..BackupInfo::example(id, start, stop)
    }
}

/// An archive from 0/1000000 to 0/9000000 on timeline 1 with commits from 10:00 to 12:00
/// and restore points "a" at 0/3000000 and "b" at 0/7000000.
fn report() -> Report {
    Report {
        seg_size: 16 << 20,
        timelines: vec![TimelineInfo {
            timeline: T1,
            start_lsn: Lsn(0x100_0000),
            end_lsn: Lsn(0x900_0000),
            first_commit: Some(XactPoint {
                time: ts("2026-11-27 10:00:00Z"),
                lsn: Lsn(0x100_0100),
            }),
            last_commit: Some(XactPoint {
                time: ts("2026-11-27 12:00:00Z"),
                lsn: Lsn(0x8ff_0000),
            }),
            restore_points: 2,
        }],
        restore_points: ["a", "b"]
            .iter()
            .zip([0x300_0000u64, 0x700_0000])
            .map(|(n, l)| RestorePointInfo {
                name: n.to_string(),
                lsn: Lsn(l),
                time: ts("2026-11-27 11:00:00Z"),
                timeline: T1,
            })
            .collect(),
        ..Report::default()
    }
}

fn backups() -> Vec<BackupInfo> {
    vec![
        backup("b1", 0x100_0028, 0x110_0000, "2026-11-27T10:10:00Z"),
        backup("b2", 0x500_0028, 0x510_0000, "2026-11-27T11:30:00Z"),
    ]
}

#[test]
fn the_newest_backup_before_the_target_is_chosen() {
    let r = report();
    let pick = |t: Target| plan(&backups(), "latest", &t, &r).map(|p| p.backup.id);
    assert_eq!(pick(Target::Latest).unwrap(), "b2");
    assert_eq!(pick(Target::Immediate).unwrap(), "b2");
    assert_eq!(pick(Target::Name("a".into())).unwrap(), "b1");
    assert_eq!(pick(Target::Name("b".into())).unwrap(), "b2");
    assert_eq!(pick(Target::Lsn(Lsn(0x400_0000))).unwrap(), "b1");
    let t = "2026-11-27 11:00:00+00";
    assert_eq!(pick(Target::Time(t.into(), ts(t))).unwrap(), "b1");
    let t = "2026-11-27 13:45:00+02";
    assert_eq!(pick(Target::Time(t.into(), ts(t))).unwrap(), "b2");
}

#[test]
fn unknown_targets_say_what_exists() {
    let r = report();
    let e = plan(&backups(), "latest", &Target::Name("c".into()), &r).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no restore point named \"c\" in the archive; it has: a, b"
    );
    let t = "2026-11-27 09:00:00Z";
    let e = plan(&backups(), "latest", &Target::Time(t.into(), ts(t)), &r).unwrap_err();
    assert!(
        e.to_string()
            .contains("first commit at 2026-11-27T10:00:00"),
        "{e}"
    );
    let e = plan(&backups(), "latest", &Target::Lsn(Lsn(0xA00_0000)), &r).unwrap_err();
    assert!(e.to_string().contains("0/1000000 to 0/9000000"), "{e}");
    let e = plan(&backups(), "latest", &Target::Xid(7), &r).unwrap_err();
    assert!(matches!(e, PlanError::UnknownXid { xid: 7 }));
    let e = plan(&backups(), "latest", &Target::Lsn(Lsn(0x100_0000)), &r).unwrap_err();
    assert!(
        e.to_string()
            .contains("oldest ends at 0/1100000 (backup b1)"),
        "{e}"
    );
    assert!(matches!(
        plan(&[], "latest", &Target::Latest, &r),
        Err(PlanError::NoBackups)
    ));
}

#[test]
fn a_problem_between_the_backup_and_the_target_refuses_the_restore() {
    let mut r = report();
    r.problems.push(Problem::new(
        "000000010000000000000006",
        Some(Lsn(0x600_1000)),
        "incorrect resource manager data checksum",
    ));
    // After "a": restoring to "a" is fine, to "b" or the end is not.
    assert!(plan(&backups(), "latest", &Target::Name("a".into()), &r).is_ok());
    let e = plan(&backups(), "latest", &Target::Latest, &r).unwrap_err();
    assert!(
        e.to_string()
            .contains("000000010000000000000006 at 0/6001000: incorrect resource manager"),
        "{e}"
    );
    // Before the chosen backup's start: irrelevant to it.
    let mut r = report();
    r.problems.push(Problem::new(
        "000000010000000000000002",
        None,
        "segment missing",
    ));
    assert!(plan(&backups(), "latest", &Target::Latest, &r).is_ok());
    assert!(plan(&backups(), "latest", &Target::Name("a".into()), &r).is_err());
}

#[test]
fn an_archive_that_ends_before_the_backup_does_is_refused() {
    let mut r = report();
    r.timelines[0].end_lsn = Lsn(0x508_0000);
    let e = plan(&backups(), "b2", &Target::Latest, &r).unwrap_err();
    assert!(matches!(e, PlanError::ArchiveTooShort { .. }), "{e}");
}

#[test]
fn a_gap_that_begins_before_the_backup_and_reaches_past_its_start_is_found() {
    // Segments 3..5 missing: b2 starts in segment 5, so it cannot be replayed, though the
    // gap is named by its first missing segment, before b2's.
    let mut r = report();
    r.problems.push(Problem {
        until: Some(Lsn(0x600_0000)),
        ..Problem::new(
            "000000010000000000000003",
            Some(Lsn(0x300_0000)),
            "missing 3 segments",
        )
    });
    let e = plan(&backups(), "b2", &Target::Latest, &r).unwrap_err();
    assert!(matches!(e, PlanError::ArchiveDamaged { .. }), "{e}");
    // Ending at b2's segment: b2 has all it needs.
    r.problems[0].until = Some(Lsn(0x500_0000));
    assert!(plan(&backups(), "b2", &Target::Latest, &r).is_ok());
}

#[test]
fn an_archive_that_begins_after_the_backup_starts_is_refused() {
    // What a copy of the archive from b2's start on (restore from object storage) holds.
    let mut r = report();
    r.timelines[0].start_lsn = Lsn(0x500_0000);
    r.restore_points.retain(|p| p.lsn >= Lsn(0x500_0000));
    assert_eq!(
        plan(&backups(), "latest", &Target::Latest, &r)
            .unwrap()
            .backup
            .id,
        "b2"
    );
    let e = plan(&backups(), "b1", &Target::Latest, &r).unwrap_err();
    assert_eq!(
        e.to_string(),
        "backup b1 replays from 0/1000028, but the archive holds no WAL there (it holds \
         timeline 1 from 0/5000000 to 0/9000000)"
    );
    // A name only before the copy's start is unknown, and the names that can be reached
    // are listed.
    let e = plan(&backups(), "latest", &Target::Name("a".into()), &r).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no restore point named \"a\" in the archive; it has: b"
    );
}

#[test]
fn target_times_need_a_zone() {
    assert_eq!(
        ts("2026-11-27 19:53:00+00"),
        ts("2026-11-27T21:53:00+02:00")
    );
    assert_eq!(
        ts("2026-11-27 19:53:00.5Z").unix_micros() % 1_000_000,
        500_000
    );
    assert_eq!(ts("2026-11-27 19:53:00 UTC"), ts("2026-11-27 19:53:00Z"));
    assert_eq!(
        ts("2026-11-27 19:53:00Z").unix_micros(),
        1_795_809_180 * 1_000_000
    );
    for bad in [
        "2026-11-27 19:53:00",
        "yesterday",
        "2026-13-01 00:00:00Z",
        "2026-11-27 19:53Z",
    ] {
        assert!(parse_time(bad).is_err(), "{bad}");
    }
}
