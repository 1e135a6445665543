//! `walferry restore-points` and `walferry wal-info` on an archive that `walferry receive`
//! made from a real PostgreSQL 15 workload: restore points with names of 1 and 63 bytes and
//! commits around them. The LSNs listed are the starts of the RESTORE_POINT records, as
//! pg_waldump prints them (`pg_create_restore_point` returns the record's end); the commit
//! range matches pg_waldump's first and last COMMIT; a damaged segment is reported after
//! the listing of what could be read, with exit 1.

mod common;
mod receive_support;

use std::fs;
use std::path::Path;
use std::process::Output;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{client_command, format_lsn, parse_lsn, tempdir, walferry_bin, PgCluster};
use receive_support::*;
use walferry::inspect::time::iso8601;
use walferry::wal::TimestampTz;

fn walferry_cmd(cmd: &str, dir: &Path, extra: &[&str]) -> Output {
    client_command(walferry_bin())
        .arg(cmd)
        .arg("-D")
        .arg(dir)
        .args(extra)
        .output()
        .expect("run walferry")
}

fn now_iso() -> String {
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    iso8601(TimestampTz(us - 946_684_800_000_000))
}

/// (lsn, rest of line) of every pg_waldump line whose description contains `what`.
fn waldump_lines(dump: &str, what: &str) -> Vec<(u64, String)> {
    dump.lines()
        .filter(|l| l.contains(what))
        .map(|l| {
            let lsn = l
                .split("lsn: ")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .unwrap_or_else(|| panic!("no lsn in {l:?}"));
            (parse_lsn(lsn), l.to_string())
        })
        .collect()
}

#[test]
fn restore_points_match_pg_waldump() {
    let pg = PgCluster::primary();
    let slot_lsn = pg.create_physical_slot("wf");
    let long_name = "n".repeat(31) + &"0123456789abcdef".repeat(2);
    assert_eq!(long_name.len(), 63);

    small_commit(&pg);
    let before = now_iso();
    let end_a = parse_lsn(&pg.psql("SELECT pg_create_restore_point('a')"));
    small_commit(&pg);
    emit_wal(&pg, 18); // the second one lands in a later segment
    small_commit(&pg);
    let end_long = parse_lsn(&pg.psql(&format!("SELECT pg_create_restore_point('{long_name}')")));
    let after = now_iso();
    small_commit(&pg);
    small_commit(&pg);
    let endpos = flush_lsn(&pg);
    let dir = tempdir();
    run_ok(walferry(&pg, dir.path()).args(["-S", "wf", "-E", &format_lsn(endpos)]));

    // pg_waldump's view of the same archive.
    let dump_dir = tempdir();
    waldump_copy(dir.path(), dump_dir.path());
    let start = slot_lsn - slot_lsn % common::WAL_SEGMENT_SIZE;
    let (dump, _, _) = pg_waldump(dump_dir.path(), 1, start, &[]);
    let rps = waldump_lines(&dump, "RESTORE_POINT");
    assert_eq!(rps.len(), 2, "{dump}");
    assert!(rps[0].1.ends_with("RESTORE_POINT a"), "{}", rps[0].1);
    assert!(
        rps[1].1.ends_with(&format!("RESTORE_POINT {long_name}")),
        "{}",
        rps[1].1
    );
    // pg_create_restore_point returns the end of its record, not its start.
    assert!(rps[0].0 < end_a && rps[1].0 < end_long);

    let out = walferry_cmd("restore-points", dir.path(), &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = doc.as_array().expect("an array");
    assert_eq!(list.len(), 2, "{doc}");
    for (p, (lsn, _), name) in [
        (&list[0], &rps[0], "a"),
        (&list[1], &rps[1], long_name.as_str()),
    ] {
        let mut keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["lsn", "name", "time", "timeline"]);
        assert_eq!(p["name"], name);
        assert_eq!(
            p["lsn"],
            format_lsn(*lsn),
            "the record's start, as pg_waldump"
        );
        assert_eq!(p["timeline"], 1);
        let time = p["time"].as_str().unwrap();
        assert!(
            before.as_str() <= time && time <= after.as_str(),
            "{time} not within {before}..{after}"
        );
        assert_eq!(time.len(), "2026-11-22T04:30:00.123456Z".len(), "{time}");
    }

    // The human table and the recoverable range.
    let out = walferry_cmd("restore-points", dir.path(), &[]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{text}");
    assert!(
        lines[0].contains("LSN") && lines[0].ends_with("TIMELINE"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("a ") && lines[1].contains(&format_lsn(rps[0].0)),
        "{text}"
    );
    assert!(lines[2].starts_with(&long_name), "{text}");
    assert!(
        text.contains("Recoverable range:\n  timeline 1: WAL "),
        "{text}"
    );

    // wal-info: the commit range is pg_waldump's first and last COMMIT.
    let commits = waldump_lines(&dump, "desc: COMMIT ");
    assert!(commits.len() >= 5, "{dump}");
    let out = walferry_cmd("wal-info", dir.path(), &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tl = &doc[0];
    assert_eq!(doc.as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(tl["timeline"], 1);
    assert_eq!(tl["restore_points"], 2);
    assert_eq!(tl["start_lsn"], format_lsn(start));
    assert!(parse_lsn(tl["end_lsn"].as_str().unwrap()) >= endpos, "{tl}");
    assert_eq!(tl["first_commit_lsn"], format_lsn(commits[0].0), "{tl}");
    assert_eq!(
        tl["last_commit_lsn"],
        format_lsn(commits.last().unwrap().0),
        "{tl}"
    );
    // pg_waldump prints the commit time in the server's zone ("COMMIT 2026-11-22
    // 04:30:00.123456 UTC" with the harness's UTC servers); compare the digits.
    let last_line = &commits.last().unwrap().1;
    let t = tl["last_commit_time"].as_str().unwrap();
    let pg_style = format!("{} {}", &t[..10], &t[11..26]);
    assert!(last_line.contains(&pg_style), "{pg_style} in {last_line}");

    // Damage in the segment of the second restore point: the first is still listed, the
    // problem goes to stderr, exit 1.
    let seg = common::segment_name(1, rps[1].0);
    let path = dir.path().join(format!("{seg}.partial"));
    let path = if path.exists() {
        path
    } else {
        dir.path().join(&seg)
    };
    let mut bytes = fs::read(&path).unwrap();
    let at = (rps[1].0 % common::WAL_SEGMENT_SIZE) as usize + 40;
    bytes[at] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let out = walferry_cmd("restore-points", dir.path(), &["--json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc.as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc[0]["name"], "a");
    let err = stderr_of(&out);
    assert!(
        err.contains("walferry: problem: ") && err.contains(&seg),
        "{err}"
    );
    assert!(
        err.contains("the listing covers only the WAL that could be read"),
        "{err}"
    );
}
