//! `walferry verify` on archives that `walferry receive` made from real PostgreSQL 15
//! servers: clean ones verify clean (also across a promotion, and compressed), and damage is
//! reported under the damaged file's name with an LSN at or before the damage: single-byte
//! flips spread over a segment, a truncated segment, a wrong page magic, a segment of another
//! cluster, a missing segment, a damaged compressed file.

mod common;
mod receive_support;

use std::fs;
use std::path::Path;
use std::process::Output;

use common::{
    client_command, format_lsn, parse_lsn, segment_name, tempdir, walferry_bin, PgCluster,
    StandbyOptions, WAL_SEGMENT_SIZE,
};
use receive_support::*;

const SEG: u64 = WAL_SEGMENT_SIZE;

/// `walferry verify -D dir [extra]`, bounded.
fn verify(dir: &Path, extra: &[&str]) -> Output {
    let mut cmd = client_command(walferry_bin());
    cmd.arg("verify").arg("-D").arg(dir).args(extra);
    cmd.output().expect("run walferry verify")
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_clean(dir: &Path) -> String {
    let out = verify(dir, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify of a clean archive\n--- stdout ---\n{}\n--- stderr ---\n{}",
        stdout_of(&out),
        stderr_of(&out)
    );
    let text = stdout_of(&out);
    assert!(text.starts_with("ok: "), "{text}");
    text
}

/// The problems `verify --json` reports, as (file, lsn, message); panics unless it exits 1.
fn problems(dir: &Path) -> Vec<(String, Option<u64>, String)> {
    let out = verify(dir, &["--json"]);
    let text = stdout_of(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify of a damaged archive must exit 1\n{text}\n{}",
        stderr_of(&out)
    );
    let doc: serde_json::Value = serde_json::from_str(&text).expect("verify --json output");
    assert_eq!(doc["ok"], false, "{text}");
    doc["problems"]
        .as_array()
        .expect("problems array")
        .iter()
        .map(|p| {
            (
                p["file"].as_str().unwrap_or("").to_string(),
                p["lsn"].as_str().map(parse_lsn),
                p["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// A primary with a slot, ~`mb` MiB of WAL (logical messages and commits), archived by
/// `walferry receive -S wf -E <flush>` with `extra` flags. Returns the archive's last LSN.
fn archive(pg: &PgCluster, dir: &Path, slot: &str, mb: u64, extra: &[&str]) -> u64 {
    pg.create_physical_slot(slot);
    emit_wal(pg, mb);
    small_commit(pg);
    let endpos = flush_lsn(pg);
    run_ok(
        walferry(pg, dir)
            .args(["-S", slot, "-E", &format_lsn(endpos)])
            .args(extra),
    );
    endpos
}

/// Copies the named files of `from` into a new scratch dir.
fn copy_files(from: &Path, names: &[String]) -> tempfile::TempDir {
    let to = tempdir();
    for n in names {
        fs::copy(from.join(n), to.path().join(n)).expect("copy segment");
    }
    to
}

fn complete_names(dir: &Path) -> Vec<String> {
    complete_segments(dir).into_iter().map(|(_, f)| f).collect()
}

#[test]
fn a_real_archive_verifies_clean_and_damage_is_found() {
    let pg = PgCluster::primary();
    let dir = tempdir();
    let endpos = archive(&pg, dir.path(), "wf", 56, &[]);
    let text = assert_clean(dir.path());
    assert!(text.contains("on timeline 1,"), "{text}");
    assert!(
        text.contains(&format!("..{}", format_lsn(endpos))) || text.contains("LSN range"),
        "{text}"
    );

    let complete = complete_names(dir.path());
    assert!(complete.len() >= 3, "{complete:?}");

    // Single-byte flips spread over a complete segment that is decoded from its predecessor
    // (and whose records running into the next segment are checked there): each on a fresh
    // copy of the three files, each must be reported under that segment (or, for a record
    // that began in the previous segment, under that one, saying where it was found) at an
    // LSN at or before the flipped byte.
    let target = complete[1].clone();
    let trio = [complete[0].clone(), target.clone(), complete[2].clone()];
    let scratch = copy_files(dir.path(), &trio);
    assert_clean(scratch.path());
    let path = scratch.path().join(&target);
    let clean = fs::read(&path).unwrap();
    let start = segno_of(&target) * SEG;
    let mut positions: Vec<usize> = (0..36)
        .map(|i| i * (SEG as usize / 36) + i * 977 % 8192)
        .collect();
    // A page header's magic, its tli and its pageaddr, and the long header's system id.
    positions.extend([8192 * 7, 8192 * 9 + 5, 8192 * 11 + 9, 28]);
    for (i, &pos) in positions.iter().enumerate() {
        let mask = [0xFFu8, 0x01, 0x80, 0x20][i % 4];
        let mut bad = clean.clone();
        bad[pos] ^= mask;
        fs::write(&path, &bad).unwrap();
        let at = start + pos as u64;
        let found = problems(scratch.path());
        let (file, lsn, message) = &found[0];
        assert!(
            *file == target || message.contains(&target),
            "flip at {} (offset {pos}): {found:?}",
            format_lsn(at)
        );
        assert!(
            lsn.is_some_and(|l| l <= at),
            "flip at {}: {found:?}",
            format_lsn(at)
        );
    }
    fs::write(&path, &clean).unwrap();

    // The .partial: a flip in its written part, and one in the zeros after it.
    let partial = partial_segments(dir.path())
        .pop()
        .expect("a .partial at the end");
    let pscratch = copy_files(
        dir.path(),
        &[complete.last().unwrap().clone(), partial.clone()],
    );
    assert_clean(pscratch.path());
    let ppath = pscratch.path().join(&partial);
    let pclean = fs::read(&ppath).unwrap();
    let written = (endpos % SEG) as usize;
    // A changed byte in its written part is damage.
    let mut bad = pclean.clone();
    bad[written / 2] ^= 0x10;
    fs::write(&ppath, &bad).unwrap();
    let found = problems(pscratch.path());
    assert_eq!(found[0].0, partial, "{found:?}");
    assert!(found[0]
        .1
        .is_some_and(|l| l <= segno_of(&partial) * SEG + (written / 2) as u64));
    // Bytes after its end are what a crash mid-write can leave in the WAL being received
    // (part of a write landed): not damage, but the end is noted with its LSN.
    let mut bad = pclean.clone();
    bad[written + 5000] ^= 0x10;
    fs::write(&ppath, &bad).unwrap();
    let out = verify(pscratch.path(), &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout_of(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let note = &doc["notes"][0];
    assert_eq!(note["file"], partial.as_str(), "{doc}");
    assert_eq!(note["lsn"], format_lsn(endpos), "{doc}");
}

#[test]
fn truncated_foreign_missing_and_bad_magic_segments_are_named() {
    let pg = PgCluster::primary();
    let dir = tempdir();
    archive(&pg, dir.path(), "wf", 56, &[]);
    let complete = complete_names(dir.path());
    assert!(complete.len() >= 3, "{complete:?}");
    let all: Vec<String> = list_dir(dir.path()).into_keys().collect();

    // Truncated: a complete name, a shorter file.
    let s = copy_files(dir.path(), &all);
    let victim = &complete[1];
    let bytes = fs::read(s.path().join(victim)).unwrap();
    fs::write(s.path().join(victim), &bytes[..bytes.len() / 3]).unwrap();
    let found = problems(s.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(&found[0].0, victim);
    assert!(found[0].2.contains("truncated"), "{found:?}");

    // Wrong magic on a page in the middle of a segment.
    let s = copy_files(dir.path(), &all);
    let victim = &complete[2];
    let mut bytes = fs::read(s.path().join(victim)).unwrap();
    let page = 8192 * 100;
    bytes[page..page + 2].copy_from_slice(&0xD113u16.to_le_bytes());
    fs::write(s.path().join(victim), &bytes).unwrap();
    let found = problems(s.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(&found[0].0, victim);
    assert_eq!(found[0].1, Some(segno_of(victim) * SEG + page as u64));
    assert!(found[0].2.contains("magic"), "{found:?}");

    // A segment of another cluster under an archived segment's name.
    let other = PgCluster::primary();
    assert_ne!(other.system_identifier(), pg.system_identifier());
    let victim = &complete[0];
    while !other.wal_segment_path(victim).exists()
        || other.current_wal_lsn() / SEG <= segno_of(victim)
    {
        small_commit(&other);
        other.switch_wal();
    }
    let s = copy_files(dir.path(), &all);
    fs::copy(other.wal_segment_path(victim), s.path().join(victim)).unwrap();
    let found = problems(s.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(&found[0].0, victim);
    assert!(found[0].2.contains("another database system"), "{found:?}");
    assert!(
        found[0].2.contains(&other.system_identifier().to_string()),
        "{found:?}"
    );

    // A missing segment: a gap named by the missing file.
    let s = copy_files(dir.path(), &all);
    let victim = &complete[2];
    fs::remove_file(s.path().join(victim)).unwrap();
    let found = problems(s.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(&found[0].0, victim);
    assert_eq!(found[0].1, Some(segno_of(victim) * SEG));
    assert!(found[0].2.contains("missing segment"), "{found:?}");

    // Human output: one PROBLEM line naming the file and LSN, exit 1.
    let out = verify(s.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout_of(&out);
    assert_eq!(
        text,
        format!(
            "PROBLEM {victim} at {}: {}\n",
            format_lsn(segno_of(victim) * SEG),
            found[0].2
        )
    );
    assert!(
        stderr_of(&out).contains("walferry: error: found 1 problem"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn an_archive_across_a_promotion_verifies_clean() {
    let primary = PgCluster::primary();
    let standby = PgCluster::standby_of(&primary, StandbyOptions::new());
    small_commit(&primary);
    standby.wait_for_replay(primary.current_wal_lsn());
    let dir = tempdir();

    // Timeline 1 through the standby, across a segment boundary.
    emit_wal(&primary, 20);
    small_commit(&primary);
    primary.psql("SELECT pg_create_restore_point('before')");
    small_commit(&primary);
    standby.wait_for_replay(primary.current_wal_lsn());
    let a = parse_lsn(&standby.psql("SELECT pg_last_wal_replay_lsn()"));
    run_ok(walferry(&standby, dir.path()).args(["-E", &format_lsn(a)]));

    standby.promote();
    let history =
        fs::read_to_string(standby.wal_segment_path("00000002.history")).expect("history");
    let switch = parse_lsn(history.lines().next().unwrap().split('\t').nth(1).unwrap());
    standby.psql("SELECT pg_create_restore_point('after')");
    emit_wal(&standby, 20);
    small_commit(&standby);
    let target = flush_lsn(&standby);
    run_ok(walferry(&standby, dir.path()).args(["-E", &format_lsn(target)]));
    assert!(dir.path().join("00000002.history").exists());

    let text = assert_clean(dir.path());
    assert!(text.contains("on timelines 1, 2,"), "{text}");

    // What PostgreSQL writes at the start of the new timeline: its first segment is a copy
    // of timeline 1 up to the switch point, whose pages (and the page holding the switch
    // point) keep timeline 1 in their headers; the pages after it carry timeline 2.
    let first2 = segment_name(2, switch);
    let bytes = fs::read(dir.path().join(&first2)).unwrap_or_else(|_| {
        fs::read(dir.path().join(format!("{first2}.partial"))).expect("first segment of tli 2")
    });
    let tli_of_page = |lsn: u64| {
        let off = ((lsn % SEG) / 8192 * 8192) as usize;
        u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap())
    };
    assert_eq!(tli_of_page(switch - switch % SEG), 1, "copied first page");
    assert_eq!(tli_of_page(switch), 1, "the page holding the switch point");
    assert_eq!(tli_of_page(switch + 8192), 2, "the next page");

    // The catalogue credits each restore point to the timeline that wrote it, once.
    let out = client_command(walferry_bin())
        .args(["restore-points", "--json", "-D"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rps: Vec<(String, u64)> = doc
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["timeline"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rps,
        vec![("before".to_string(), 1), ("after".to_string(), 2)]
    );

    let out = client_command(walferry_bin())
        .args(["wal-info", "--json", "-D"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc[0]["timeline"], 1);
    assert_eq!(
        doc[0]["end_lsn"],
        format_lsn(switch),
        "timeline 1 ends at the switch point"
    );
    assert_eq!(doc[1]["timeline"], 2);
    assert_eq!(doc[1]["start_lsn"], format_lsn(switch));
    assert!(parse_lsn(doc[1]["end_lsn"].as_str().unwrap()) >= target);
}

#[test]
fn compressed_archives_verify_clean_and_damage_is_found() {
    let pg = PgCluster::primary();
    for (i, method) in ["gzip", "lz4", "zstd"].into_iter().enumerate() {
        let dir = tempdir();
        archive(&pg, dir.path(), &format!("wf{i}"), 20, &["-Z", method]);
        let text = assert_clean(dir.path());
        assert!(text.contains("timeline 1"), "{text}");
        let complete = complete_names(dir.path());
        let victim = complete
            .last()
            .expect("a complete compressed segment")
            .clone();
        let path = dir.path().join(&victim);
        let mut bytes = fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5A;
        fs::write(&path, &bytes).unwrap();
        let found = problems(dir.path());
        assert!(
            found.iter().any(|(f, l, _)| *f == victim && l.is_some()),
            "{method}: {found:?}"
        );
    }
}

/// After pg_switch_wal() the server zeroes the rest of the segment, page headers included
/// (xlog.c CopyXLogRecordToWAL): a clean archive with a switch verifies clean, and a byte
/// changed in those zeros is found.
#[test]
fn zeros_after_a_real_xlog_switch_are_checked() {
    let pg = PgCluster::primary();
    pg.create_physical_slot("wf");
    small_commit(&pg);
    let switched = pg.switch_wal();
    emit_wal(&pg, 2);
    small_commit(&pg);
    let endpos = flush_lsn(&pg);
    let dir = tempdir();
    run_ok(walferry(&pg, dir.path()).args(["-S", "wf", "-E", &format_lsn(endpos)]));
    assert!(
        dir.path().join(&switched).exists(),
        "{:?}",
        list_dir(dir.path())
    );
    assert_clean(dir.path());

    let path = dir.path().join(&switched);
    let mut bytes = fs::read(&path).unwrap();
    let pos = SEG as usize * 3 / 4 + 100;
    assert_eq!(bytes[pos], 0);
    bytes[pos] = 0x20;
    fs::write(&path, &bytes).unwrap();
    let found = problems(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, switched);
    assert_eq!(found[0].1, Some(segno_of(&switched) * SEG + pos as u64));
    assert!(
        found[0].2.contains("after the XLOG SWITCH record"),
        "{found:?}"
    );
}
