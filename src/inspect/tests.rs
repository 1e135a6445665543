//! Archive checks on hand-built WAL (`wal::synth`) in 1 MiB segments: gaps, history
//! consistency, `.partial` handling, foreign and damaged files, compressed segments, every
//! single-byte flip of a segment, and the JSON documents.

use std::io::Write;
use std::path::Path;

use super::*;
use crate::wal::synth::WalBuilder;
use crate::wal::{SegNo, SegmentName, TimestampTz};

const SEG: u64 = 1 << 20;
const SYSID: u64 = 7_312_345_678_901_234_567;
const T0: i64 = 800_000_000_000_000;

fn name(tli: u32, segno: u64) -> String {
    SegmentName::new(TimeLineId(tli), SegNo(segno)).file_name(SEG)
}

/// Fillers of varied sizes (some crossing pages and segments) until the stream reaches `lsn`.
fn fill_until(b: &mut WalBuilder, lsn: u64, xid: &mut u32) {
    let sizes = [60usize, 300, 2500, 9000, 130, 26, 700, 40_000, 5000];
    let mut i = 0;
    while b.end().0 < lsn {
        if i % 7 == 3 {
            *xid += 1;
            b.commit(*xid, T0 + i64::from(*xid) * 1_000_000);
        } else {
            b.filler(sizes[i % sizes.len()]);
        }
        i += 1;
    }
}

/// Writes the stream `b` (which starts at a segment start) as segment files of timeline
/// `tli`: complete ones, then the rest as a zero-padded `.partial` (unless `complete_only`).
fn write_segments(dir: &Path, tli: u32, b: &WalBuilder, complete_only: bool) -> Vec<String> {
    let bytes = b.bytes();
    let first = b.start().0 / SEG;
    let mut names = Vec::new();
    for (i, seg) in bytes.chunks(SEG as usize).enumerate() {
        let segno = first + i as u64;
        if seg.len() as u64 == SEG {
            std::fs::write(dir.join(name(tli, segno)), seg).unwrap();
            names.push(name(tli, segno));
        } else if !complete_only {
            let mut full = seg.to_vec();
            full.resize(SEG as usize, 0);
            let n = format!("{}.partial", name(tli, segno));
            std::fs::write(dir.join(&n), full).unwrap();
            names.push(n);
        }
    }
    names
}

fn check(dir: &Path) -> Report {
    inspect(dir, &Options::default(), &mut |_| {}).unwrap()
}

fn assert_clean(r: &Report) {
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
}

/// The only problem, which must name `file`.
fn only_problem<'a>(r: &'a Report, file: &str) -> &'a Problem {
    assert_eq!(r.problems.len(), 1, "{:#?}", r.problems);
    let p = &r.problems[0];
    assert_eq!(p.file.as_deref(), Some(file), "{p:#?}");
    p
}

struct Timeline1 {
    dir: tempfile::TempDir,
    b: WalBuilder,
    rp_a: Lsn,
    rp_long: Lsn,
    files: Vec<String>,
}

/// Timeline 1 from segment 2 to the middle of segment 6 (a .partial), restore points "a"
/// and a 63-byte name, commits throughout.
fn timeline1() -> Timeline1 {
    let dir = tempfile::tempdir().unwrap();
    let mut b = WalBuilder::new(Lsn(2 * SEG), TimeLineId(1), SEG, SYSID);
    let mut xid = 1000;
    b.checkpoint(false, Lsn(2 * SEG), 1, 1, 1_700_000_000);
    fill_until(&mut b, 2 * SEG + 300_000, &mut xid);
    let rp_a = b.restore_point(b"a", T0 + 5);
    fill_until(&mut b, 4 * SEG + 8000, &mut xid);
    let rp_long = b.restore_point(&[b'z'; 63], T0 + 6);
    fill_until(&mut b, 6 * SEG + 200_000, &mut xid);
    b.commit(xid + 1, T0 + 999_000_000);
    let files = write_segments(dir.path(), 1, &b, false);
    Timeline1 {
        dir,
        b,
        rp_a,
        rp_long,
        files,
    }
}

#[test]
fn a_clean_archive_and_its_catalogue() {
    let t = timeline1();
    let r = check(t.dir.path());
    assert_clean(&r);
    assert_eq!(
        r.seg_size, SEG,
        "segment size read from the first long header"
    );
    assert_eq!(r.system_id, Some(SYSID));
    assert_eq!(r.segments, 5);
    assert_eq!(t.files.last().unwrap(), &format!("{}.partial", name(1, 6)));
    let names: Vec<(&str, Lsn, u32)> = r
        .restore_points
        .iter()
        .map(|p| (p.name.as_str(), p.lsn, p.timeline.0))
        .collect();
    let long = "z".repeat(63);
    assert_eq!(names, vec![("a", t.rp_a, 1), (long.as_str(), t.rp_long, 1)]);
    assert_eq!(r.restore_points[0].time, TimestampTz(T0 + 5));
    assert_eq!(r.timelines.len(), 1);
    let tl = &r.timelines[0];
    assert_eq!(tl.start_lsn, Lsn(2 * SEG));
    assert_eq!(tl.end_lsn, t.b.end(), "up to the end of the last record");
    assert_eq!(tl.restore_points, 2);
    let first = tl.first_commit.unwrap();
    let last = tl.last_commit.unwrap();
    assert_eq!(first.time, TimestampTz(T0 + 1001 * 1_000_000));
    assert_eq!(last.lsn, t.b.prev());
    assert_eq!(last.time, TimestampTz(T0 + 999_000_000));
    assert_eq!(r.lsn_range(), Some((Lsn(2 * SEG), t.b.end())));
    assert_eq!(r.decoded_bytes, 5 * SEG);
}

#[test]
fn a_missing_segment_is_a_gap_and_decoding_resumes_after_it() {
    let t = timeline1();
    std::fs::remove_file(t.dir.path().join(name(1, 4))).unwrap();
    let r = check(t.dir.path());
    let p = only_problem(&r, &name(1, 4));
    assert_eq!(p.lsn, Some(Lsn(4 * SEG)));
    assert!(
        p.message
            .starts_with("missing segment: timeline 1 has no WAL from 0/400000 to 0/500000"),
        "{p}"
    );
    // The restore point in segment 4 is gone with it; the one before is still listed.
    assert_eq!(r.restore_points.len(), 1);

    std::fs::remove_file(t.dir.path().join(name(1, 3))).unwrap();
    let r = check(t.dir.path());
    let p = only_problem(&r, &name(1, 3));
    assert!(
        p.message.starts_with(&format!(
            "missing 2 segments {}..{}",
            name(1, 3),
            name(1, 4)
        )),
        "{p}"
    );
}

#[test]
fn damaged_files_are_each_reported_by_name() {
    let t = timeline1();
    let d = t.dir.path();
    // Truncated complete segment.
    let f3 = d.join(name(1, 3));
    let bytes = std::fs::read(&f3).unwrap();
    std::fs::write(&f3, &bytes[..500_000]).unwrap();
    // Wrong magic on segment 5's first page.
    let f5 = d.join(name(1, 5));
    let mut b5 = std::fs::read(&f5).unwrap();
    b5[0] ^= 0x40;
    std::fs::write(&f5, &b5).unwrap();
    let r = check(d);
    assert_eq!(r.problems.len(), 2, "{:#?}", r.problems);
    assert_eq!(r.problems[0].file.as_deref(), Some(name(1, 3).as_str()));
    assert!(
        r.problems[0].message.contains("500000 bytes long"),
        "{}",
        r.problems[0]
    );
    assert_eq!(r.problems[1].file.as_deref(), Some(name(1, 5).as_str()));
    assert_eq!(r.problems[1].lsn, Some(Lsn(5 * SEG)));
    assert!(
        r.problems[1].message.contains("invalid magic number"),
        "{}",
        r.problems[1]
    );
}

#[test]
fn a_segment_of_another_cluster_is_foreign() {
    let t = timeline1();
    let mut other = WalBuilder::new(Lsn(4 * SEG), TimeLineId(1), SEG, SYSID + 1);
    let mut xid = 1;
    fill_until(&mut other, 5 * SEG, &mut xid);
    std::fs::write(
        t.dir.path().join(name(1, 4)),
        &other.bytes()[..SEG as usize],
    )
    .unwrap();
    let r = check(t.dir.path());
    let p = only_problem(&r, &name(1, 4));
    assert!(p.message.contains("another database system"), "{p}");
    assert!(p.message.contains(&(SYSID + 1).to_string()), "{p}");
    assert_eq!(r.system_id, Some(SYSID), "the majority");
}

#[test]
fn a_segment_of_another_segment_size_is_reported() {
    let t = timeline1();
    // Read as 2 MiB segments, the 1 MiB files are wrong-sized and their names out of range
    // for odd numbers.
    let opts = Options {
        seg_size: Some(2 * SEG),
        ..Options::default()
    };
    let r = inspect(t.dir.path(), &opts, &mut |_| {}).unwrap();
    assert!(!r.problems.is_empty());
    assert!(inspect(
        t.dir.path(),
        &Options {
            seg_size: Some(3 * SEG),
            ..Options::default()
        },
        &mut |_| {}
    )
    .is_err());
}

#[test]
fn partial_segments() {
    let t = timeline1();
    let d = t.dir.path();
    let partial = d.join(format!("{}.partial", name(1, 6)));
    let clean = std::fs::read(&partial).unwrap();
    let end = (t.b.end().0 - 6 * SEG) as usize;

    // Garbage after the end of the WAL of the timeline's newest .partial: a torn write after
    // a crash; its valid WAL ends there (a note, not damage).
    let mut bad = clean.clone();
    bad[end + 70_000] = 1;
    std::fs::write(&partial, &bad).unwrap();
    let r = check(d);
    assert_clean(&r);
    assert_eq!(r.notes.len(), 1, "{:#?}", r.notes);
    assert_eq!(r.notes[0].lsn, Some(t.b.end()));
    assert!(r.notes[0].message.contains("ends here"), "{}", r.notes[0]);

    // The same garbage in a .partial that is not the newest of its timeline is damage.
    let next = d.join(format!("{}.partial", name(1, 7)));
    std::fs::write(&next, vec![0u8; SEG as usize]).unwrap();
    let r = check(d);
    assert!(
        r.problems.iter().any(|p| p.file.as_deref()
            == Some(format!("{}.partial", name(1, 6)).as_str())
            && p.lsn == Some(Lsn(6 * SEG + end as u64 + 70_000))
            && p.message.contains("after the end of the WAL")),
        "{:#?}",
        r.problems
    );
    std::fs::remove_file(&next).unwrap();
    std::fs::write(&partial, &clean).unwrap();

    // A shorter .partial (as pg_receivewal leaves when not zero-padding) is fine.
    std::fs::write(&partial, &clean[..end + 100]).unwrap();
    assert_clean(&check(d));

    // A .partial followed by the next segment: the WAL between is missing.
    std::fs::write(&partial, &clean).unwrap();
    std::fs::write(d.join(name(1, 7)), vec![0u8; SEG as usize]).unwrap();
    let r = check(d);
    assert!(
        r.problems.iter().any(|p| p.file.as_deref()
            == Some(format!("{}.partial", name(1, 6)).as_str())
            && p.lsn == Some(t.b.end())
            && p.message.contains("is missing")),
        "{:#?}",
        r.problems
    );
    std::fs::remove_file(d.join(name(1, 7))).unwrap();

    // A complete segment in which the WAL stops is not complete.
    std::fs::rename(&partial, d.join(name(1, 6))).unwrap();
    let p = only_problem(&check(d), &name(1, 6)).clone();
    assert_eq!(p.lsn, Some(t.b.end()));
    assert!(p.message.contains("inside a complete segment"), "{p}");

    // A .partial as long as a segment that holds WAL to its end goes on like a complete one.
    std::fs::rename(
        d.join(name(1, 5)),
        d.join(format!("{}.partial", name(1, 5))),
    )
    .unwrap();
    std::fs::rename(d.join(name(1, 6)), &partial).unwrap();
    assert_clean(&check(d));
}

/// A record cut short (torn) at the end of the newest `.partial` of a timeline is where its
/// valid WAL ends: a note with that LSN, not damage. The same cut in a complete segment, or
/// in a `.partial` that is not the newest, is damage.
#[test]
fn a_record_cut_short_is_the_end_only_in_the_newest_partial() {
    let mut t = timeline1();
    let last = t.b.filler(6000);
    let d = t.dir.path();
    write_segments(d, 1, &t.b, false);
    let partial = d.join(format!("{}.partial", name(1, 6)));
    let clean = std::fs::read(&partial).unwrap();
    assert_clean(&check(d));
    let at = (last.0 - 6 * SEG) as usize;
    // Cut the last record short: a sector of it was never written (reads as zeros) when a
    // crash interrupted the write; a later page of the same write landed.
    let mut torn = clean.clone();
    let sector = (at + 1).next_multiple_of(512);
    assert!(
        sector < (t.b.end().0 - 6 * SEG) as usize,
        "the last record is too short"
    );
    torn[sector..sector + 512].fill(0);
    let after_end = (t.b.end().0 - 6 * SEG) as usize + 9000;
    torn[after_end] = 0x5a;
    std::fs::write(&partial, &torn).unwrap();
    let r = check(d);
    assert_clean(&r);
    assert_eq!(r.notes.len(), 1, "{:#?}", r.notes);
    assert_eq!(
        r.notes[0].file.as_deref(),
        Some(format!("{}.partial", name(1, 6)).as_str())
    );
    // The valid WAL ends where the cut record starts.
    assert_eq!(r.notes[0].lsn, Some(last));
    let range = r
        .timelines
        .iter()
        .find(|tl| tl.timeline == TimeLineId(1))
        .unwrap();
    assert_eq!(range.end_lsn, last);

    // A changed byte in that record is not a cut: damage, even in the newest .partial.
    let mut flipped = clean.clone();
    flipped[at + 30] ^= 0x01;
    std::fs::write(&partial, &flipped).unwrap();
    let p = only_problem(&check(d), &format!("{}.partial", name(1, 6))).clone();
    assert_eq!(p.lsn, Some(last));

    // The same tear in a complete segment is damage.
    std::fs::write(&partial, &clean).unwrap();
    let seg5 = d.join(name(1, 5));
    let mut five = std::fs::read(&seg5).unwrap();
    for b in &mut five[SEG as usize / 2 + 100..SEG as usize / 2 + 110] {
        *b ^= 0xff;
    }
    std::fs::write(&seg5, &five).unwrap();
    let r = check(d);
    assert!(!r.problems.is_empty(), "a torn complete segment passed");
    assert!(
        r.problems
            .iter()
            .all(|p| p.file.as_deref() == Some(name(1, 5).as_str())),
        "{:#?}",
        r.problems
    );
}

/// Regression: a stop inside the record crossing a segment end used to leave a full segment
/// as `.partial` behind a newer `.partial`; once later segments are complete it is a hole
/// that recovery cannot cross (it never asks for `.partial` names). Laid out by hand.
#[test]
fn a_partial_with_complete_segments_after_it_is_a_problem() {
    let t = timeline1();
    let d = t.dir.path();
    let four = d.join(name(1, 4));
    let four_partial = d.join(format!("{}.partial", name(1, 4)));
    let five = d.join(name(1, 5));
    let five_partial = d.join(format!("{}.partial", name(1, 5)));

    // The window itself: 4 full as .partial, 5 as .partial (the newest), 6 not yet there.
    let six = d.join(format!("{}.partial", name(1, 6)));
    let six_bytes = std::fs::read(&six).unwrap();
    std::fs::remove_file(&six).unwrap();
    std::fs::rename(&four, &four_partial).unwrap();
    let five_bytes = std::fs::read(&five).unwrap();
    std::fs::remove_file(&five).unwrap();
    std::fs::write(&five_partial, &five_bytes[..100_000]).unwrap();
    let r = check(d);
    assert_clean(&r);
    assert!(
        r.notes.iter().any(|n| n.file.as_deref()
            == Some(format!("{}.partial", name(1, 4)).as_str())
            && n.message.contains("not renamed yet")),
        "{:#?}",
        r.notes
    );

    // Later segments complete: segment 4 is stranded, though whole and valid.
    std::fs::remove_file(&five_partial).unwrap();
    std::fs::write(&five, &five_bytes).unwrap();
    std::fs::write(&six, &six_bytes).unwrap();
    let r = check(d);
    let p = only_problem(&r, &format!("{}.partial", name(1, 4)));
    assert_eq!(p.lsn, Some(Lsn(4 * SEG)));
    assert!(
        p.message.contains("recovery never asks for .partial"),
        "{p}"
    );
    assert!(
        p.message.contains(&format!("rename it to {}", name(1, 4))),
        "{p}"
    );

    // Stranded and short: the missing WAL is named.
    let four_bytes = std::fs::read(&four_partial).unwrap();
    std::fs::write(&four_partial, &four_bytes[..300_000]).unwrap();
    let r = check(d);
    assert!(
        r.problems.iter().any(|p| p.file.as_deref()
            == Some(format!("{}.partial", name(1, 4)).as_str())
            && p.message.contains("recovery never asks")
            && p.message.contains("is missing")),
        "{:#?}",
        r.problems
    );
}

/// A record that spans two files and is damaged in the first: the problem is under the file
/// where the record starts and says where it was found.
#[test]
fn a_record_spanning_files_is_checked_whole() {
    let t = timeline1();
    let d = t.dir.path();
    // The record in progress at the end of segment 3.
    let bytes = t.b.bytes();
    let seg3_end = (4 * SEG - 2 * SEG) as usize;
    let f3 = d.join(name(1, 3));
    let mut b3 = std::fs::read(&f3).unwrap();
    // Flip a byte 100 bytes before segment 4, inside a record continuing into segment 4.
    let cont = crate::wal::page::le_u32(&bytes[seg3_end..], 16);
    assert!(cont > 200, "a record spans segments 3 and 4");
    b3[SEG as usize - 100] ^= 0x01;
    std::fs::write(&f3, &b3).unwrap();
    let r = check(d);
    let p = only_problem(&r, &name(1, 3));
    assert!(p.lsn.unwrap().0 <= 4 * SEG - 100, "{p}");
    assert!(p.message.contains("checksum"), "{p}");
    assert!(
        p.message
            .contains(&format!("found while reading {}", name(1, 4))),
        "{p}"
    );
}

/// Every single-byte change of a complete segment decoded from its predecessor is found,
/// under that segment's name (or, for a record that began in the previous file, that file)
/// at an LSN at or before the changed byte.
#[test]
fn every_flipped_byte_of_a_segment_is_found() {
    let t = timeline1();
    let d = t.dir.path();
    let target = d.join(name(1, 4));
    let clean = std::fs::read(&target).unwrap();
    let mut positions: Vec<usize> = (0..SEG as usize).step_by(4093).collect();
    // Page header bytes of a few pages, the long header, and the last bytes.
    for page in [0usize, 8192, 5 * 8192, 127 * 8192] {
        positions.extend(page..page + 40);
    }
    positions.extend(SEG as usize - 8..SEG as usize);
    for (i, &pos) in positions.iter().enumerate() {
        let mask = [0xFFu8, 0x01, 0x80, 0x10, 0x40][i % 5];
        if pos % 8192 == 2 && mask == 0x04 {
            continue; // XLP_BKP_REMOVABLE: legitimately either way
        }
        let mut bad = clean.clone();
        bad[pos] ^= mask;
        std::fs::write(&target, &bad).unwrap();
        let r = check(d);
        let at = 4 * SEG + pos as u64;
        assert!(
            !r.problems.is_empty(),
            "flip at {} (offset {pos}) not found",
            Lsn(at)
        );
        let p = &r.problems[0];
        let file = p.file.as_deref().unwrap();
        assert!(
            file == name(1, 4) || p.message.contains(&name(1, 4)),
            "flip at {}: {p}",
            Lsn(at)
        );
        assert!(p.lsn.unwrap().0 <= at, "flip at {}: {p}", Lsn(at));
    }
    std::fs::write(&target, &clean).unwrap();
    assert_clean(&check(d));
}

#[test]
fn zeros_after_an_xlog_switch_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = WalBuilder::new(Lsn(2 * SEG), TimeLineId(1), SEG, SYSID);
    let mut xid = 1;
    fill_until(&mut b, 2 * SEG + 100_000, &mut xid);
    let sw = b.switch();
    fill_until(&mut b, 3 * SEG + 50_000, &mut xid);
    write_segments(dir.path(), 1, &b, false);
    assert_clean(&check(dir.path()));
    let f = dir.path().join(name(1, 2));
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[600_000] = 7;
    std::fs::write(&f, &bytes).unwrap();
    let r = check(dir.path());
    let p = only_problem(&r, &name(1, 2));
    assert_eq!(p.lsn, Some(Lsn(2 * SEG + 600_000)));
    assert!(
        p.message.contains(&format!("XLOG SWITCH record at {sw}")),
        "{p}"
    );
}

struct Promoted {
    dir: tempfile::TempDir,
    switch: Lsn,
    rp_before: Lsn,
    rp_after: Lsn,
    end: Lsn,
}

/// Timeline 1 up to a switch point in segment 4, timeline 2 from there to segment 6, laid
/// out as a promoted server and walferry leave it: timeline 1's last segment a .partial up
/// to the switch point, timeline 2's first segment a copy of timeline 1 up to it, then new
/// WAL (page headers carry the new timeline from the page after the switch point on).
fn promoted() -> Promoted {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut b = WalBuilder::new(Lsn(2 * SEG), TimeLineId(1), SEG, SYSID);
    let mut xid = 1;
    fill_until(&mut b, 4 * SEG + 100_000, &mut xid);
    let rp_before = b.restore_point(b"before", T0);
    let switch = b.end();
    let tl1 = write_segments(d, 1, &b, false);
    assert_eq!(tl1.last().unwrap(), &format!("{}.partial", name(1, 4)));
    b.set_timeline(TimeLineId(2));
    b.end_of_recovery(T0 + 1, 2, 1);
    let rp_after = b.restore_point(b"after", T0 + 2);
    fill_until(&mut b, 6 * SEG + 5000, &mut xid);
    let all = b.bytes();
    let from = (4 * SEG - 2 * SEG) as usize;
    for (i, seg) in all[from..].chunks(SEG as usize).enumerate() {
        let segno = 4 + i as u64;
        let mut s = seg.to_vec();
        let n = if s.len() as u64 == SEG {
            name(2, segno)
        } else {
            s.resize(SEG as usize, 0);
            format!("{}.partial", name(2, segno))
        };
        std::fs::write(d.join(n), s).unwrap();
    }
    std::fs::write(
        d.join("00000002.history"),
        format!("1\t{switch}\tno recovery target specified\n"),
    )
    .unwrap();
    Promoted {
        dir,
        switch,
        rp_before,
        rp_after,
        end: b.end(),
    }
}

#[test]
fn a_promotion_verifies_clean_and_credits_each_timeline() {
    let p = promoted();
    let r = check(p.dir.path());
    assert_clean(&r);
    assert_eq!(r.segments, 3 + 3);
    let rps: Vec<(&str, Lsn, u32)> = r
        .restore_points
        .iter()
        .map(|x| (x.name.as_str(), x.lsn, x.timeline.0))
        .collect();
    assert_eq!(
        rps,
        vec![("before", p.rp_before, 1), ("after", p.rp_after, 2)],
        "the copy of timeline 1 in timeline 2's first segment is not counted twice"
    );
    assert_eq!(r.timelines.len(), 2);
    assert_eq!(r.timelines[0].start_lsn, Lsn(2 * SEG));
    assert_eq!(r.timelines[0].end_lsn, p.switch);
    assert_eq!(r.timelines[1].start_lsn, p.switch);
    assert_eq!(r.timelines[1].end_lsn, p.end);
    assert_eq!(r.timelines[0].restore_points, 1);
    assert_eq!(r.timelines[1].restore_points, 1);
}

#[test]
fn history_files_must_agree_with_the_segments_and_each_other() {
    let p = promoted();
    let d = p.dir.path();

    // Timeline 2 without its history file.
    let h2 = std::fs::read(d.join("00000002.history")).unwrap();
    std::fs::remove_file(d.join("00000002.history")).unwrap();
    let r = check(d);
    let x = only_problem(&r, "00000002.history");
    assert!(x.message.contains("no history file"), "{x}");
    std::fs::write(d.join("00000002.history"), &h2).unwrap();

    // A segment of timeline 1 wholly past the switch point.
    std::fs::write(d.join(name(1, 5)), vec![0u8; SEG as usize]).unwrap();
    let r = check(d);
    assert!(
        r.problems
            .iter()
            .any(|x| x.file.as_deref() == Some(name(1, 5).as_str())
                && x.message.contains("past the end of timeline 1")),
        "{:#?}",
        r.problems
    );
    std::fs::remove_file(d.join(name(1, 5))).unwrap();

    // Timeline 1's .partial holding WAL past the switch point (the old primary went on).
    let part = d.join(format!("{}.partial", name(1, 4)));
    let clean = std::fs::read(&part).unwrap();
    // Append one commit record at the switch point, with the right prev-link and CRC.
    let rec = commit_record_bytes(p.rp_before, 77, T0 + 50);
    assert!(
        p.switch.0 % 8192 + rec.len() as u64 <= 8192,
        "fits in the page"
    );
    let mut longer = clean.clone();
    let at = (p.switch.0 - 4 * SEG) as usize;
    longer[at..at + rec.len()].copy_from_slice(&rec);
    std::fs::write(&part, &longer).unwrap();
    let r = check(d);
    let x = only_problem(&r, &format!("{}.partial", name(1, 4)));
    assert_eq!(x.lsn, Some(p.switch));
    assert!(x.message.contains("past its end"), "{x}");
    std::fs::write(&part, &clean).unwrap();

    // Timeline 3 whose parent 2's history is missing, and one that disagrees with it.
    std::fs::write(
        d.join("00000003.history"),
        format!("1\t{}\tx\n2\t0/600100\ty\n", p.switch),
    )
    .unwrap();
    assert_clean(&check(d));
    std::fs::write(
        d.join("00000003.history"),
        "1\t0/400010\tx\n2\t0/600100\ty\n",
    )
    .unwrap();
    let r = check(d);
    let x = only_problem(&r, "00000003.history");
    assert!(x.message.contains("disagrees"), "{x}");
    std::fs::remove_file(d.join("00000002.history")).unwrap();
    let r = check(d);
    assert!(
        r.problems
            .iter()
            .any(|x| x.file.as_deref() == Some("00000003.history")
                && x.message.contains("00000002.history is missing")),
        "{:#?}",
        r.problems
    );
    std::fs::write(d.join("00000002.history"), &h2).unwrap();
    std::fs::remove_file(d.join("00000003.history")).unwrap();

    // Unparsable history.
    std::fs::write(d.join("00000004.history"), "garbage\n").unwrap();
    let r = check(d);
    let x = only_problem(&r, "00000004.history");
    assert!(x.message.contains("cannot parse"), "{x}");
    std::fs::remove_file(d.join("00000004.history")).unwrap();

    // A gap between timeline 1's last segment and timeline 2's first.
    std::fs::remove_file(d.join(name(1, 3))).unwrap();
    std::fs::remove_file(d.join(format!("{}.partial", name(1, 4)))).unwrap();
    let r = check(d);
    let x = only_problem(&r, &name(1, 3));
    assert!(
        x.message
            .contains("timeline 1 has no WAL from 0/300000 to 0/400000"),
        "{x}"
    );
}

/// A commit record (xid, time) whose xl_prev is `prev`, laid out within one page.
fn commit_record_bytes(prev: Lsn, xid: u32, time: i64) -> Vec<u8> {
    use crate::wal::record::{record_crc, RecordHeader, RECORD_HEADER, RM_XACT_ID};
    let body = crate::wal::synth::main_data_body(&time.to_le_bytes());
    let mut h = RecordHeader {
        tot_len: (RECORD_HEADER + body.len()) as u32,
        xid,
        prev,
        info: 0,
        rmid: RM_XACT_ID,
        crc: 0,
    };
    let mut hdr = Vec::new();
    h.encode(&mut hdr);
    h.crc = record_crc(&body, &hdr);
    let mut out = Vec::new();
    h.encode(&mut out);
    out.extend_from_slice(&body);
    out
}

#[test]
fn compressed_segments() {
    let t = timeline1();
    let d = t.dir.path();
    for (i, f) in t.files.iter().enumerate() {
        let bytes = std::fs::read(d.join(f)).unwrap();
        std::fs::remove_file(d.join(f)).unwrap();
        let (base, partial) = match f.strip_suffix(".partial") {
            Some(b) => (b, ".partial"),
            None => (f.as_str(), ""),
        };
        let data: &[u8] = if partial.is_empty() {
            &bytes
        } else {
            // Compressed .partial files hold only what was written.
            &bytes[..(t.b.end().0 % SEG) as usize]
        };
        let (ext, out) = match i % 3 {
            0 => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                (".gz", e.finish().unwrap())
            }
            1 => {
                let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
                e.write_all(data).unwrap();
                (".lz4", e.finish().unwrap())
            }
            _ => (".zst", zstd::encode_all(data, 1).unwrap()),
        };
        std::fs::write(d.join(format!("{base}{ext}{partial}")), out).unwrap();
    }
    let r = check(d);
    assert_clean(&r);
    assert_eq!(r.restore_points.len(), 2);

    // A compressed .partial cut short (a crash mid-write) ends there; a damaged complete
    // file is a problem.
    let mut names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let partial = names
        .iter()
        .find(|n| n.ends_with(".partial"))
        .unwrap()
        .clone();
    let bytes = std::fs::read(d.join(&partial)).unwrap();
    std::fs::write(d.join(&partial), &bytes[..bytes.len() / 2]).unwrap();
    let r = check(d);
    assert_clean(&r);
    let victim = names.iter().find(|n| n.ends_with(".gz")).unwrap().clone();
    let mut bytes = std::fs::read(d.join(&victim)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(d.join(&victim), &bytes).unwrap();
    let r = check(d);
    let p = only_problem(&r, &victim);
    assert!(p.lsn.is_some(), "{p}");
}

#[test]
fn an_empty_directory_is_a_problem() {
    let dir = tempfile::tempdir().unwrap();
    let r = check(dir.path());
    assert_eq!(r.problems.len(), 1);
    assert_eq!(r.problems[0].file, None);
    assert!(inspect(&dir.path().join("nope"), &Options::default(), &mut |_| {}).is_err());
}

#[test]
fn json_documents() {
    let t = timeline1();
    std::fs::remove_file(t.dir.path().join(name(1, 4))).unwrap();
    let r = check(t.dir.path());
    let v: serde_json::Value = serde_json::from_str(&json::to_string(&json::verify(&r))).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["segments"], 4);
    assert!(v["records"].as_u64().unwrap() > 100);
    let p = &v["problems"][0];
    assert_eq!(p["file"], name(1, 4));
    assert_eq!(p["lsn"], "0/400000");
    assert!(p["message"].as_str().unwrap().contains("missing segment"));
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["notes", "ok", "problems", "records", "segments"]);
    assert_eq!(v["notes"], serde_json::json!([]));

    let v: serde_json::Value =
        serde_json::from_str(&json::to_string(&json::restore_points(&r.restore_points))).unwrap();
    assert_eq!(
        v,
        serde_json::json!([{
            "name": "a",
            "lsn": t.rp_a.to_string(),
            "time": time::iso8601(TimestampTz(T0 + 5)),
            "timeline": 1
        }])
    );

    let v: serde_json::Value =
        serde_json::from_str(&json::to_string(&json::wal_info(&r.timelines))).unwrap();
    let tl = &v[0];
    let mut keys: Vec<&str> = tl.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "end_lsn",
            "first_commit_lsn",
            "first_commit_time",
            "last_commit_lsn",
            "last_commit_time",
            "restore_points",
            "start_lsn",
            "timeline"
        ]
    );
    assert_eq!(tl["timeline"], 1);
    assert_eq!(tl["start_lsn"], "0/200000");
    assert_eq!(tl["end_lsn"], t.b.end().to_string());
    assert_eq!(tl["restore_points"], 1);
    assert!(tl["first_commit_time"].as_str().unwrap().ends_with('Z'));

    // No commits: nulls.
    let none = vec![TimelineInfo {
        timeline: TimeLineId(3),
        start_lsn: Lsn(0),
        end_lsn: Lsn(8),
        first_commit: None,
        last_commit: None,
        restore_points: 0,
    }];
    let v: serde_json::Value =
        serde_json::from_str(&json::to_string(&json::wal_info(&none))).unwrap();
    assert_eq!(v[0]["first_commit_time"], serde_json::Value::Null);
    assert_eq!(v[0]["last_commit_lsn"], serde_json::Value::Null);
}

#[test]
fn record_data_end_skips_page_headers() {
    use super::check::data_end;
    assert_eq!(data_end(SEG + 8000, 100, SEG), SEG + 8100);
    assert_eq!(data_end(SEG + 8000, 300, SEG), SEG + 8192 + 24 + 108);
    assert_eq!(data_end(SEG + 8000, 192, SEG), SEG + 8192);
    assert_eq!(data_end(2 * SEG - 100, 200, SEG), 2 * SEG + 40 + 100);
    assert_eq!(data_end(SEG + 40, 50, SEG), SEG + 90);
}

/// A compressed `.partial` cut short by a crash (in any of the three formats) ends where its
/// stream ends; that is not a problem.
#[test]
fn a_cut_short_compressed_partial_is_its_end() {
    let t = timeline1();
    let d = t.dir.path();
    let partial = format!("{}.partial", name(1, 6));
    let written = &std::fs::read(d.join(&partial)).unwrap()[..(t.b.end().0 % SEG) as usize];
    std::fs::remove_file(d.join(&partial)).unwrap();
    let compressed: [(&str, Vec<u8>); 3] = [
        (".gz", {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(written).unwrap();
            e.finish().unwrap()
        }),
        (".lz4", {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(written).unwrap();
            e.finish().unwrap()
        }),
        (".zst", zstd::encode_all(written, 1).unwrap()),
    ];
    for (ext, bytes) in compressed {
        let f = d.join(format!("{}{ext}.partial", name(1, 6)));
        for cut in [bytes.len(), bytes.len() * 2 / 3, bytes.len() / 3, 5] {
            std::fs::write(&f, &bytes[..cut]).unwrap();
            let r = check(d);
            assert_clean(&r);
            if cut == bytes.len() {
                assert_eq!(r.timelines[0].end_lsn, t.b.end(), "{ext}");
            }
        }
        std::fs::remove_file(&f).unwrap();
    }
}
