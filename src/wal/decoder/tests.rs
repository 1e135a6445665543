//! Decoder tests on hand-built WAL (`wal::synth`), 1 MiB segments so that records larger
//! than a segment stay small, and on real WAL from `initdb` checked against pg_waldump.

use super::*;
use crate::wal::page::{XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER};
use crate::wal::record::{RM_XACT_ID, XLOG_XACT_COMMIT_PREPARED, XLOG_XACT_HAS_INFO};
use crate::wal::synth::{main_data_body, WalBuilder};
use crate::wal::{TimestampTz, XactEnd};

mod real_wal;

const SEG: u64 = 1 << 20;
const SYSID: u64 = 7_312_345_678_901_234_567;
const T0: i64 = 800_000_000_000_000;

/// Segment 3 of timeline 1.
fn seg3() -> Lsn {
    Lsn(3 * SEG)
}

fn builder() -> WalBuilder {
    WalBuilder::new(seg3(), TimeLineId(1), SEG, SYSID)
}

fn decoder(start: Lsn) -> WalDecoder {
    WalDecoder::new(start, TimeLineId(1), SEG, None).unwrap()
}

/// Small deterministic PRNG (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Feeds `bytes` in chunks of the given sizes (the last chunk takes the rest) and collects
/// the records and the first error.
fn run_chunks(
    dec: &mut WalDecoder,
    bytes: &[u8],
    sizes: impl IntoIterator<Item = usize>,
) -> (Vec<Record>, Option<WalError>) {
    let mut recs = Vec::new();
    let mut off = 0;
    let mut sizes = sizes.into_iter();
    while off < bytes.len() {
        let n = sizes
            .next()
            .unwrap_or(bytes.len())
            .max(1)
            .min(bytes.len() - off);
        for item in dec.feed(&bytes[off..off + n]) {
            match item {
                Ok(r) => recs.push(r),
                Err(e) => return (recs, Some(e)),
            }
        }
        off += n;
    }
    (recs, None)
}

/// As [`run_chunks`], through the callback API.
fn run_chunks_with(
    dec: &mut WalDecoder,
    bytes: &[u8],
    sizes: impl IntoIterator<Item = usize>,
) -> (Vec<Record>, Option<WalError>) {
    let mut recs = Vec::new();
    let mut off = 0;
    let mut sizes = sizes.into_iter();
    while off < bytes.len() {
        let n = sizes
            .next()
            .unwrap_or(bytes.len())
            .max(1)
            .min(bytes.len() - off);
        if let Err(e) = dec.feed_with(&bytes[off..off + n], |r| recs.push(r.clone())) {
            return (recs, Some(e));
        }
        off += n;
    }
    (recs, None)
}

fn run(start: Lsn, bytes: &[u8]) -> (Vec<Record>, Option<WalError>, WalDecoder) {
    let mut dec = decoder(start);
    let (recs, err) = run_chunks(&mut dec, bytes, [bytes.len()]);
    (recs, err, dec)
}

fn decode_ok(b: &WalBuilder) -> (Vec<Record>, WalDecoder) {
    let (recs, err, dec) = run(b.start(), b.bytes());
    assert_eq!(err, None);
    (recs, dec)
}

fn lsns(recs: &[Record]) -> Vec<Lsn> {
    recs.iter().map(|r| r.lsn).collect()
}

/// Fills with records until the insert position is exactly `t` bytes into a page (`t` a
/// multiple of 8, at least 72).
fn fill_to_page_offset(b: &mut WalBuilder, t: u64) {
    loop {
        let off = b.end().0 % 8192;
        if off == t {
            return;
        }
        if off != 0 && t > off && t - off >= 32 {
            let dist = (t - off) as usize;
            b.filler(if dist > 4000 { 2000 } else { dist });
        } else {
            b.filler(5000); // on to the next page
        }
    }
}

fn assert_chain(recs: &[Record]) {
    for w in recs.windows(2) {
        assert_eq!(w[1].prev, w[0].lsn, "xl_prev of {}", w[1].lsn);
        assert!(
            w[1].lsn.0 >= w[0].end.0,
            "{} overlaps {}",
            w[1].lsn,
            w[0].lsn
        );
    }
}

#[test]
fn records_within_a_page() {
    let mut b = builder();
    let a = b.filler(50);
    let c = b.commit(701, T0);
    let r = b.restore_point(b"x", T0 + 1);
    let d = b.abort(702, T0 + 2);
    let (recs, dec) = decode_ok(&b);
    assert_eq!(lsns(&recs), vec![a, c, r, d]);
    assert_eq!(
        a,
        Lsn(3 * SEG + 40),
        "the first record follows the long page header"
    );
    assert_eq!(recs[0].end, Lsn(a.0 + 56));
    assert_eq!(recs[0].rmgr_name(), "Heap");
    assert_eq!(recs[0].kind, RecordKind::Other);
    assert_eq!(
        recs[1].kind,
        RecordKind::Commit(XactEnd {
            xid: 701,
            time: TimestampTz(T0),
            prepared: false
        })
    );
    assert_eq!(recs[1].xid, 701);
    match &recs[2].kind {
        RecordKind::RestorePoint(rp) => {
            assert_eq!((rp.name_bytes(), rp.time), (&b"x"[..], TimestampTz(T0 + 1)))
        }
        k => panic!("{k:?}"),
    }
    assert!(matches!(
        recs[3].kind,
        RecordKind::Abort(XactEnd { xid: 702, .. })
    ));
    assert_chain(&recs);
    assert_eq!(dec.valid_end(), b.end());
    assert_eq!(dec.fed_end(), b.end());
    assert_eq!(dec.last_record(), Some(d));
    assert_eq!(dec.system_id(), Some(SYSID));
    assert_eq!(dec.version(), Some(WalVersion::Pg15));
    assert_eq!(dec.end_of_wal(), None);
}

#[test]
fn records_spanning_pages() {
    let mut b = builder();
    b.filler(100);
    let big = b.filler(20_000); // crosses two page boundaries
    fill_to_page_offset(&mut b, 8192 - 40);
    let rp = b.restore_point(&[b'p'; 63], T0); // 98 bytes across a page boundary
    let after = b.commit(9, T0);
    let (recs, dec) = decode_ok(&b);
    let r = recs.iter().find(|r| r.lsn == big).unwrap();
    assert_eq!(r.tot_len, 20_000);
    // 20000 bytes with two short page headers on the way.
    assert_eq!(r.end, Lsn(maxalign(big.0 + 20_000 + 2 * 24)));
    let r = recs.iter().find(|r| r.lsn == rp).unwrap();
    assert_eq!(rp.0 % 8192, 8192 - 40);
    match &r.kind {
        RecordKind::RestorePoint(p) => assert_eq!(p.name(), "p".repeat(63)),
        k => panic!("{k:?}"),
    }
    assert_eq!(recs.last().unwrap().lsn, after);
    assert_chain(&recs);
    assert_eq!(dec.valid_end(), b.end());
}

#[test]
fn records_spanning_segments_and_larger_than_a_segment() {
    let mut b = builder();
    while b.end().0 < 4 * SEG - 5000 {
        b.filler(3000);
    }
    let cross = b.filler(10_000); // crosses into segment 4
    let huge = b.filler((2 * SEG + SEG / 2) as usize); // crosses into segments 5 and 6
    let commit = b.commit(77, T0);
    assert!(cross.0 < 4 * SEG && huge.0 + (2 * SEG) < b.end().0 && b.end().0 > 6 * SEG);
    let (recs, dec) = decode_ok(&b);
    assert_chain(&recs);
    let n = recs.len();
    assert_eq!(lsns(&recs[n - 3..]), vec![cross, huge, commit]);
    assert_eq!(recs[n - 2].tot_len as u64, 2 * SEG + SEG / 2);
    assert_eq!(recs[n - 1].end, b.end());
    assert_eq!(dec.valid_end(), b.end());
}

/// A stream that exercises every boundary case, for the chunking tests: a record header
/// split across pages, records across pages and into the next segment, a commit larger than
/// a page (reassembled), restore points of 1 and 63 bytes across a page boundary.
fn tricky_stream() -> WalBuilder {
    let mut b = WalBuilder::new(Lsn(4 * SEG - 3 * 8192), TimeLineId(1), SEG, SYSID);
    b.set_prev(Lsn(4 * SEG - 3 * 8192 - 200));
    b.filler(30);
    b.commit(5, T0);
    fill_to_page_offset(&mut b, 8184); // only 8 bytes of the next header fit
    b.filler(300);
    fill_to_page_offset(&mut b, 8192 - 48);
    b.restore_point(b"1", T0);
    b.restore_point(&[b'z'; 63], T0 + 5);
    // A COMMIT PREPARED with many invalidation messages: larger than a page.
    let mut main = T0.to_le_bytes().to_vec();
    main.extend_from_slice(&((1u32 << 3) | (1 << 4)).to_le_bytes());
    main.extend_from_slice(&600u32.to_le_bytes());
    main.extend((0..600 * 16).map(|i| i as u8));
    main.extend_from_slice(&4321u32.to_le_bytes());
    b.record(
        RM_XACT_ID,
        XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO,
        0,
        &main_data_body(&main),
    );
    b.filler(9000); // into the next segment
    b.checkpoint(false, Lsn(4 * SEG + 100), 1, 1, 1_700_000_000);
    b.end_of_recovery(T0 + 9, 1, 1);
    b
}

#[test]
fn every_chunking_of_a_stream_decodes_the_same() {
    let b = tricky_stream();
    let bytes = b.bytes();
    let (want, dec) = decode_ok(&b);
    assert!(
        want.iter().any(|r| r.lsn.0 % 8192 == 8184),
        "a header split across pages"
    );
    assert!(want.iter().any(|r| matches!(
        r.kind,
        RecordKind::Commit(XactEnd {
            xid: 4321,
            prepared: true,
            ..
        })
    )));
    assert!(want.iter().any(|r| matches!(r.kind, RecordKind::Checkpoint(c) if c.redo == Lsn(4 * SEG + 100) && !c.shutdown)));
    assert!(want
        .iter()
        .any(|r| matches!(r.kind, RecordKind::EndOfRecovery(e) if e.time == TimestampTz(T0 + 9))));
    assert_eq!(dec.valid_end(), b.end());

    // One byte at a time.
    let mut d = decoder(b.start());
    let (got, err) = run_chunks(&mut d, bytes, std::iter::repeat(1));
    assert_eq!((got, err), (want.clone(), None));
    assert_eq!(d.valid_end(), b.end());

    // Every split into two chunks (around the page boundaries, where it matters most, and
    // a stride elsewhere to bound the test's time).
    for cut in 1..bytes.len() {
        let near_page = [0usize, 8192, 16384, 24576]
            .iter()
            .any(|p| cut.abs_diff(*p) < 64);
        if !near_page && cut % 97 != 0 {
            continue;
        }
        let mut d = decoder(b.start());
        let (got, err) = run_chunks(&mut d, bytes, [cut]);
        assert_eq!((&got, &err), (&want, &None), "cut at {cut}");
    }

    // Random chunk sizes, fixed seeds.
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let sizes: Vec<usize> = (0..bytes.len())
            .map(|_| match rng.below(4) {
                0 => 1 + rng.below(8) as usize,
                1 => 1 + rng.below(100) as usize,
                2 => 1 + rng.below(9000) as usize,
                _ => 1 + rng.below(40_000) as usize,
            })
            .collect();
        let mut d = decoder(b.start());
        let (got, err) = run_chunks(&mut d, bytes, sizes.iter().copied());
        assert_eq!((&got, &err), (&want, &None), "seed {seed}");
        assert_eq!(d.valid_end(), b.end(), "seed {seed}");
        let mut d = decoder(b.start());
        let (got, err) = run_chunks_with(&mut d, bytes, sizes);
        assert_eq!((&got, &err), (&want, &None), "seed {seed}, callback");
        assert_eq!(d.valid_end(), b.end(), "seed {seed}, callback");
    }
    let mut d = decoder(b.start());
    let (got, err) = run_chunks_with(&mut d, bytes, std::iter::repeat(1));
    assert_eq!((got, err), (want.clone(), None), "byte by byte, callback");
}

#[test]
fn incomplete_record_needs_more_bytes() {
    let mut b = builder();
    let a = b.filler(100);
    let big = b.filler(5000);
    let bytes = b.bytes();
    let cut = b.offset_of(big) + 3000;
    let mut d = decoder(b.start());
    let (recs, err) = run_chunks(&mut d, &bytes[..cut], [cut]);
    assert_eq!((lsns(&recs), err), (vec![a], None));
    assert_eq!(
        d.valid_end(),
        big,
        "validated up to the end of the last whole record"
    );
    assert_eq!(d.fed_end(), Lsn(b.start().0 + cut as u64));
    assert_eq!(d.end_of_wal(), None);
    let recs: Vec<_> = d.feed(&bytes[cut..]).collect::<Result<_, _>>().unwrap();
    assert_eq!(lsns(&recs), vec![big]);
    assert_eq!(d.valid_end(), b.end());
}

#[test]
fn zeros_after_the_last_record_are_the_end_of_wal() {
    let mut b = builder();
    b.filler(100);
    let last = b.commit(3, T0);
    let end = b.end();
    b.zero_to_page_end();
    b.bytes_mut().extend_from_slice(&[0; 8192 * 2]); // pre-padded like a .partial file
    let (recs, dec) = decode_ok(&b);
    assert_eq!(recs.last().unwrap().lsn, last);
    assert_eq!(dec.end_of_wal(), Some(end));
    assert_eq!(dec.valid_end(), end);
    assert_eq!(dec.fed_end(), Lsn(b.start().0 + b.bytes().len() as u64));

    // The WAL ends exactly at a page boundary: the next page header is all zeros.
    let mut b = builder();
    fill_to_page_offset(&mut b, 8192 - 56);
    b.filler(56);
    assert_eq!(b.end().0 % 8192, 0);
    let end = b.end();
    b.bytes_mut().extend_from_slice(&[0; 8192]);
    let (_, dec) = decode_ok(&b);
    assert_eq!((dec.end_of_wal(), dec.valid_end()), (Some(end), end));

    // A record cut off by zeros: the end of WAL is where the incomplete record starts.
    let mut b = builder();
    let a = b.filler(100);
    let cut = b.filler(20_000);
    let keep = b.offset_of(Lsn(cut.0 + 8000));
    b.bytes_mut().truncate(keep);
    b.bytes_mut().resize(keep.next_multiple_of(8192) + 8192, 0);
    let (recs, dec) = decode_ok(&b);
    assert_eq!(lsns(&recs), vec![a]);
    assert_eq!(dec.end_of_wal(), Some(cut));
    assert_eq!(dec.valid_end(), cut);
}

#[test]
fn xlog_switch_skips_to_the_next_segment() {
    let mut b = builder();
    b.filler(100);
    let sw = b.switch();
    let next = b.filler(100);
    assert_eq!(next, Lsn(4 * SEG + 40));
    let (recs, dec) = decode_ok(&b);
    let s = recs.iter().find(|r| r.lsn == sw).unwrap();
    assert_eq!(
        (s.kind.clone(), s.end, s.tot_len),
        (RecordKind::Switch, Lsn(4 * SEG), 24)
    );
    assert_eq!(recs.last().unwrap().lsn, next);
    assert_eq!(recs.last().unwrap().prev, sw);
    assert_eq!(dec.valid_end(), b.end());

    // While the padding arrives, it counts as validated as far as it has come.
    let mut d = decoder(b.start());
    let upto = b.offset_of(Lsn(sw.0 + 5000));
    let (recs, err) = run_chunks(&mut d, &b.bytes()[..upto], [upto]);
    assert_eq!((recs.last().map(|r| r.lsn), err), (Some(sw), None));
    assert_eq!(d.valid_end(), Lsn(sw.0 + 5000));
}

#[test]
fn restore_point_names_of_1_and_63_bytes() {
    let name63: Vec<u8> = (0..63).map(|i| b'a' + (i % 26) as u8).collect();
    let mut b = builder();
    b.restore_point(b"r", T0);
    b.restore_point(&name63, T0 + 1);
    let (recs, _) = decode_ok(&b);
    let names: Vec<(String, TimestampTz)> = recs
        .iter()
        .map(|r| match &r.kind {
            RecordKind::RestorePoint(p) => (p.name().into_owned(), p.time),
            k => panic!("{k:?}"),
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("r".to_string(), TimestampTz(T0)),
            (String::from_utf8(name63).unwrap(), TimestampTz(T0 + 1))
        ]
    );
    assert_eq!(recs[0].tot_len, 24 + 2 + 72);
}

#[test]
fn starting_on_a_page_that_continues_a_record_skips_to_the_next_record() {
    let mut b = builder();
    b.filler(100);
    let long = b.filler(20_000); // from page 0 over pages 1 and 2
    let after = b.filler(200);
    let last = b.commit(8, T0);
    let (all, _) = decode_ok(&b);
    for page in [1u64, 2] {
        let start = Lsn(b.start().0 + page * 8192);
        let (recs, err, dec) = run(start, &b.bytes()[b.offset_of(start)..]);
        assert_eq!(err, None, "start at page {page}");
        assert_eq!(lsns(&recs), vec![after, last], "start at page {page}");
        assert_eq!(recs[0].prev, long);
        assert_eq!(&recs[..], &all[all.len() - 2..]);
        assert_eq!(dec.valid_end(), b.end());
    }
    // Declared prev-link: checked exactly.
    let start = Lsn(b.start().0 + 8192);
    let mut d = decoder(start);
    d.set_prev_record(Lsn(long.0 + 8));
    let (_, err) = run_chunks(&mut d, &b.bytes()[b.offset_of(start)..], [usize::MAX]);
    assert!(matches!(err, Some(WalError::IncorrectPrevLink { lsn, .. }) if lsn == after));
}

#[test]
fn wrong_magic() {
    let mut b = builder();
    b.filler(20_000);
    let mut bytes = b.bytes().to_vec();
    bytes[0] = 0;
    bytes[1] = 0;
    let (recs, err, _) = run(b.start(), &bytes);
    assert!(recs.is_empty());
    let err = err.unwrap();
    assert_eq!(
        err.to_string(),
        "invalid magic number 0000 in log segment 000000010000000000000003, offset 0"
    );
    assert_eq!(err.lsn(), b.start());

    // A later page of another PostgreSQL version.
    let mut bytes = b.bytes().to_vec();
    bytes[8192..8194].copy_from_slice(&WalVersion::Pg16.magic().to_le_bytes());
    let (recs, err, _) = run(b.start(), &bytes);
    assert!(recs.is_empty());
    let err = err.unwrap();
    assert!(
        matches!(
            err,
            WalError::MagicChanged {
                magic: 0xD113,
                first: 0xD110,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.lsn(), Lsn(b.start().0 + 8192));

    // PostgreSQL 16 and 17 WAL is read when it is so from the start.
    for v in [WalVersion::Pg16, WalVersion::Pg17] {
        let mut b = builder().version(v);
        b.filler(20_000);
        let (recs, dec) = decode_ok(&b);
        assert_eq!((recs.len(), dec.version()), (1, Some(v)));
    }
}

#[test]
fn wrong_pageaddr_and_info_bits() {
    let mut b = builder();
    b.filler(20_000);
    let page2 = Lsn(b.start().0 + 2 * 8192);
    let mut bytes = b.bytes().to_vec();
    let at = b.offset_of(page2);
    bytes[at + 8..at + 16].copy_from_slice(&(page2.0 - SEG).to_le_bytes()); // a recycled page
    let (_, err, _) = run(b.start(), &bytes);
    let err = err.unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "unexpected pageaddr {} in log segment 000000010000000000000003, offset 16384",
            Lsn(page2.0 - SEG)
        )
    );
    assert_eq!(err.lsn(), page2);

    let mut bytes = b.bytes().to_vec();
    bytes[at + 2] |= 0x10;
    let (_, err, _) = run(b.start(), &bytes);
    assert!(matches!(err, Some(WalError::InvalidInfoBits { info: 0x11, lsn, .. }) if lsn == page2));

    // The first page of a segment without the long header.
    let mut bytes = b.bytes().to_vec();
    bytes[2] &= !(XLP_LONG_HEADER as u8);
    let (_, err, _) = run(b.start(), &bytes);
    assert!(
        matches!(err, Some(WalError::MissingLongHeader { .. })),
        "{err:?}"
    );
}

#[test]
fn long_header_identifies_the_cluster() {
    let mut b = builder();
    b.filler(100);
    let mut d = WalDecoder::new(b.start(), TimeLineId(1), SEG, Some(SYSID + 1)).unwrap();
    let (_, err) = run_chunks(&mut d, b.bytes(), [usize::MAX]);
    let err = err.unwrap();
    assert!(matches!(
        err,
        WalError::SystemIdMismatch { found: SYSID, .. }
    ));
    assert!(err.is_foreign());

    let mut d = WalDecoder::new(b.start(), TimeLineId(1), 2 * SEG, None).unwrap();
    let (_, err) = run_chunks(&mut d, b.bytes(), [usize::MAX]);
    assert!(
        matches!(err, Some(WalError::SegmentSizeMismatch { found, expected, .. }) if found as u64 == SEG && expected == 2 * SEG)
    );

    let mut bytes = b.bytes().to_vec();
    bytes[36..40].copy_from_slice(&4096u32.to_le_bytes());
    let (_, err, _) = run(b.start(), &bytes);
    assert!(matches!(
        err,
        Some(WalError::BlockSizeMismatch { found: 4096, .. })
    ));

    // The system id learned from the first segment is required of the next.
    let mut b1 = builder();
    b1.switch();
    let mut b2 = WalBuilder::new(Lsn(4 * SEG), TimeLineId(1), SEG, SYSID + 7);
    b2.set_prev(b1.prev());
    b2.filler(100);
    let mut bytes = b1.bytes().to_vec();
    bytes.extend_from_slice(b2.bytes());
    let (recs, err, _) = run(b1.start(), &bytes);
    assert_eq!(recs.len(), 1);
    assert!(
        matches!(err, Some(WalError::SystemIdMismatch { found, expected: SYSID, lsn, .. }) if found == SYSID + 7 && lsn == Lsn(4 * SEG))
    );

    assert!(WalDecoder::new(Lsn(100), TimeLineId(1), SEG, None).is_err());
    assert!(WalDecoder::new(Lsn(0), TimeLineId(1), 3 << 20, None).is_err());
}

#[test]
fn timelines_may_only_move_forward_up_to_ours() {
    // Pages of timeline 1 then 2 in a segment of timeline 2 (a promotion inside it).
    let mut b = builder();
    b.filler(100);
    b.set_timeline(TimeLineId(2));
    b.filler(20_000);
    let mut d = WalDecoder::new(b.start(), TimeLineId(2), SEG, None).unwrap();
    let (recs, err) = run_chunks(&mut d, b.bytes(), [usize::MAX]);
    assert_eq!((recs.len(), err), (2, None));
    // ... but not read as timeline 1.
    let (_, err, _) = run(b.start(), b.bytes());
    assert!(
        matches!(err, Some(WalError::FutureTimeline { tli: 2, expected: 1, lsn, .. }) if lsn == Lsn(3 * SEG + 8192))
    );

    let mut b = WalBuilder::new(seg3(), TimeLineId(2), SEG, SYSID);
    b.filler(100);
    b.set_timeline(TimeLineId(1));
    b.filler(20_000);
    let mut d = WalDecoder::new(b.start(), TimeLineId(2), SEG, None).unwrap();
    let (_, err) = run_chunks(&mut d, b.bytes(), [usize::MAX]);
    let err = err.unwrap();
    assert_eq!(
        err.to_string(),
        "out-of-sequence timeline ID 1 (after 2) in log segment 000000020000000000000003, offset 8192"
    );
}

#[test]
fn broken_prev_link() {
    let mut b = builder();
    let a = b.filler(100);
    b.set_prev(Lsn(a.0 - 8));
    let bad = b.filler(100);
    let (recs, err, dec) = run(b.start(), b.bytes());
    assert_eq!(lsns(&recs), vec![a]);
    assert_eq!(
        err,
        Some(WalError::IncorrectPrevLink {
            lsn: bad,
            prev: Lsn(a.0 - 8),
            expected: Some(a)
        })
    );
    assert_eq!(
        err.unwrap().to_string(),
        format!(
            "record with incorrect prev-link {} at {}",
            Lsn(a.0 - 8),
            bad
        )
    );
    assert_eq!(dec.valid_end(), bad);
    // The first record read may not point forwards either.
    let mut b = builder();
    b.set_prev(Lsn(4 * SEG));
    b.filler(100);
    let (_, err, _) = run(b.start(), b.bytes());
    assert!(matches!(
        err,
        Some(WalError::IncorrectPrevLink { expected: None, .. })
    ));
}

/// Offsets in the stream of the bytes of the record at `lsn` (page headers excluded).
fn record_byte_offsets(b: &WalBuilder, lsn: Lsn, tot_len: u32) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = lsn.0;
    while out.len() < tot_len as usize {
        if pos % 8192 == 0 {
            pos += if pos % SEG == 0 { 40 } else { 24 };
        }
        out.push(b.offset_of(Lsn(pos)));
        pos += 1;
    }
    out
}

#[test]
fn a_flipped_byte_in_a_record_is_caught_at_that_record() {
    let mut b = builder();
    b.filler(100);
    let small = b.filler(120); // checked in place
    let spanning = b.filler(9000); // checked in pieces
    let rp = b.restore_point(b"flip", T0); // main data parsed in place
                                           // Enough WAL after the targets that a longer length runs into a page that disagrees.
    b.filler(20_000);
    let (recs, _) = decode_ok(&b);
    for target in [small, spanning, rp] {
        let rec = recs.iter().find(|r| r.lsn == target).unwrap();
        for (i, off) in record_byte_offsets(&b, target, rec.tot_len)
            .into_iter()
            .enumerate()
        {
            let mut bytes = b.bytes().to_vec();
            bytes[off] ^= 0x20;
            let runs = [
                (bytes.len(), false),
                (1000, false),
                (700, true),
                (1000, true),
            ];
            for (k, (chunk, callback)) in runs.into_iter().enumerate() {
                // The last run without the CRC kernels, whatever this CPU has.
                let mut d = if k == 3 {
                    portable_decoder(b.start())
                } else {
                    decoder(b.start())
                };
                let (got, err) = if callback {
                    run_chunks_with(&mut d, &bytes, std::iter::repeat(chunk))
                } else {
                    run_chunks(&mut d, &bytes, std::iter::repeat(chunk))
                };
                let err = err.unwrap_or_else(|| panic!("flip at byte {i} of {target} not caught"));
                assert_eq!(err.lsn(), target, "flip at byte {i} of {target}: {err}");
                assert!(got.iter().all(|r| r.lsn < target));
                match i {
                    0..=3 => {} // the length: a length, contrecord or checksum error
                    8..=15 => assert!(matches!(err, WalError::IncorrectPrevLink { .. }), "{err}"),
                    17 => assert!(matches!(err, WalError::InvalidRmgr { .. }), "{err}"),
                    _ => assert!(matches!(err, WalError::Checksum { .. }), "byte {i}: {err}"),
                }
            }
        }
    }
}

#[test]
fn a_flipped_byte_anywhere_is_caught_or_harmless() {
    // Every byte of a small stream: decoding never panics, and a flip either fails at or
    // before the record it is in, or is in a byte nobody checks (padding, rem_len of a page
    // that continues nothing, unused flag bits) and changes nothing.
    let b = tricky_stream();
    let (want, _) = decode_ok(&b);
    let mut step = 1;
    if cfg!(debug_assertions) {
        step = 7; // a stride keeps the unoptimised run short; release runs every byte
    }
    for off in (0..b.bytes().len()).step_by(step) {
        let mut bytes = b.bytes().to_vec();
        bytes[off] ^= 0x04;
        let (got, err, _) = run(b.start(), &bytes);
        let pos = b.start().0 + off as u64;
        assert!(
            want.starts_with(&got),
            "flip at {off} changed a record silently"
        );
        match err {
            Some(e) => assert!(
                e.lsn().0 <= pos,
                "flip at {off}: error {e} after the flipped byte"
            ),
            // A length made longer: the record waits for more bytes (and may swallow the
            // records after it).
            None if got.len() < want.len() => {
                assert!(want[got.len()].lsn.0 <= pos, "flip at {off}");
            }
            None => {}
        }
    }
}

#[test]
fn continuation_flags_must_match() {
    let mut b = builder();
    b.filler(100);
    let span = b.filler(9000);
    let page1 = b.offset_of(Lsn(b.start().0 + 8192));
    // No contrecord flag where the record continues.
    let mut bytes = b.bytes().to_vec();
    bytes[page1 + 2] &= !(XLP_FIRST_IS_CONTRECORD as u8);
    let (_, err, _) = run(b.start(), &bytes);
    assert_eq!(
        err,
        Some(WalError::MissingContrecord {
            lsn: span,
            page: Lsn(b.start().0 + 8192)
        })
    );
    // rem_len disagreeing with the record length.
    let mut bytes = b.bytes().to_vec();
    bytes[page1 + 16] ^= 1;
    let (_, err, _) = run(b.start(), &bytes);
    assert!(matches!(err, Some(WalError::InvalidContrecordLength { lsn, .. }) if lsn == span));
    // A contrecord flag where a record should start.
    let mut b = builder();
    fill_to_page_offset(&mut b, 8192 - 56);
    b.filler(56);
    let next = b.filler(100);
    let mut bytes = b.bytes().to_vec();
    bytes[8192 + 2] |= XLP_FIRST_IS_CONTRECORD as u8;
    let (_, err, _) = run(b.start(), &bytes);
    assert_eq!(err, Some(WalError::UnexpectedContrecord { lsn: next }));
}

#[test]
fn a_lost_contrecord_overwritten_by_recovery_is_skipped() {
    let mut b = builder();
    fill_to_page_offset(&mut b, 4000);
    let before = b.prev();
    let lost = b.lost_contrecord(9000, T0);
    let after = b.filler(100);
    let (recs, dec) = decode_ok(&b);
    let i = recs
        .iter()
        .position(|r| matches!(r.kind, RecordKind::OverwriteContrecord { .. }))
        .unwrap();
    assert_eq!(
        recs[i].lsn.0 % 8192,
        24,
        "right after the header of the overwriting page"
    );
    assert_eq!(recs[i].prev, before);
    assert_eq!(
        recs[i].kind,
        RecordKind::OverwriteContrecord {
            overwritten: lost,
            time: TimestampTz(T0)
        }
    );
    assert_eq!(recs.last().unwrap().lsn, after);
    assert_eq!(dec.valid_end(), b.end());
}

#[test]
fn resource_manager_ids() {
    let mut b = builder();
    let custom = b.main_data_record(200, 0, 0, b"ext");
    let bad = b.main_data_record(50, 0, 0, b"bad");
    let (recs, err, _) = run(b.start(), b.bytes());
    assert_eq!(lsns(&recs), vec![custom]);
    assert_eq!(recs[0].rmgr_name(), "custom200");
    assert_eq!(err, Some(WalError::InvalidRmgr { lsn: bad, rmid: 50 }));
}

#[test]
fn a_failed_decoder_stays_failed() {
    let mut b = builder();
    b.filler(100);
    let mut bytes = b.bytes().to_vec();
    bytes[0] ^= 1;
    let mut d = decoder(b.start());
    let first: Vec<_> = d.feed(&bytes).collect();
    assert_eq!(first.len(), 1);
    let again: Vec<_> = d.feed(&bytes).collect();
    assert_eq!(again, first);
    assert_eq!(
        d.feed_with(&bytes, |_| panic!("no record")),
        first[0].clone().map(|_| ())
    );
    assert_eq!(d.error(), first[0].as_ref().err());
    assert_eq!(d.valid_end(), b.start());
}

#[test]
fn dropping_the_iterator_still_consumes_the_chunk() {
    let mut b = builder();
    b.filler(100);
    b.filler(100);
    let mut d = decoder(b.start());
    drop(d.feed(b.bytes()));
    assert_eq!(d.fed_end(), b.end());
    assert_eq!(d.valid_end(), b.end());
}

/// Counts this thread's allocations, to hold the decoder to "no allocation in the steady
/// state". Other tests' threads are not counted.
mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static ALLOCS: Cell<u64> = const { Cell::new(0) };
    }

    pub struct Counting;

    // SAFETY: every call is passed on to the system allocator unchanged; the counter is a
    // const-initialised thread local, which does not allocate.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
            System.alloc(layout)
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
            System.realloc(ptr, layout, new_size)
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    pub fn allocations() -> u64 {
        ALLOCS.with(|c| c.get())
    }
}

#[test]
fn the_steady_state_does_not_allocate() {
    let mut b = builder();
    for i in 0..3000u32 {
        match i % 50 {
            0 => {
                b.commit(i, T0);
            }
            1 => {
                b.filler(9000);
            }
            _ => {
                b.filler(92);
            }
        }
    }
    // A commit that crosses pages, so it is reassembled.
    fill_to_page_offset(&mut b, 8192 - 16);
    b.commit(4, T0);
    b.filler(100);
    let bytes = b.bytes();
    let half = bytes.len() / 2;
    let mut d = decoder(b.start());
    let mut n = 0;
    // Warm-up: the first chunk sizes the reused buffers.
    d.feed_with(&bytes[..20_000], |_| n += 1).unwrap();
    for r in d.feed(&bytes[20_000..40_000]) {
        r.unwrap();
        n += 1;
    }
    let before = alloc_count::allocations();
    for chunk in bytes[40_000..half].chunks(128 * 1024) {
        for r in d.feed(chunk) {
            r.unwrap();
            n += 1;
        }
    }
    for chunk in bytes[half..].chunks(7777) {
        d.feed_with(chunk, |_| n += 1).unwrap();
    }
    assert_eq!(alloc_count::allocations() - before, 0);
    assert_eq!(d.valid_end(), b.end());
    assert!(n > 3000);
}

#[test]
fn a_commit_record_larger_than_a_segment() {
    let mut b = builder();
    b.filler(100);
    let mut main = T0.to_le_bytes().to_vec();
    main.extend_from_slice(&(1u32 << 1).to_le_bytes()); // XACT_XINFO_HAS_SUBXACTS
    let n = 300_000u32;
    main.extend_from_slice(&n.to_le_bytes());
    main.extend((0..n).flat_map(|x| (x + 1000).to_le_bytes()));
    let big = b.record(RM_XACT_ID, XLOG_XACT_HAS_INFO, 999, &main_data_body(&main));
    let after = b.commit(1000, T0 + 1);
    for chunk in [usize::MAX, 100_000, 4096] {
        let mut d = decoder(b.start());
        let (recs, err) = run_chunks(&mut d, b.bytes(), std::iter::repeat(chunk));
        assert_eq!(err, None);
        let r = recs.iter().find(|r| r.lsn == big).unwrap();
        assert!(r.tot_len as u64 > SEG);
        assert_eq!(
            r.kind,
            RecordKind::Commit(XactEnd {
                xid: 999,
                time: TimestampTz(T0),
                prepared: false
            })
        );
        assert_eq!(recs.last().unwrap().lsn, after);
    }
}

#[test]
fn random_damage_never_panics_and_both_apis_agree() {
    let b = tricky_stream();
    let (want, _) = decode_ok(&b);
    let rounds = if cfg!(debug_assertions) { 150 } else { 2000 };
    for seed in 1..=rounds as u64 {
        let mut rng = Rng(seed.wrapping_mul(0xD6E8_FEB8_6659_FD93) | 1);
        let mut bytes = b.bytes().to_vec();
        let mut first_damage = bytes.len();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len() as u64) as usize;
            first_damage = first_damage.min(at);
            match rng.below(4) {
                0 => bytes[at] ^= 1 << rng.below(8),
                1 => bytes[at] = rng.next() as u8,
                2 => {
                    let end = (at + 1 + rng.below(64) as usize).min(bytes.len());
                    bytes[at..end].fill(0);
                }
                _ => bytes.truncate(at.max(1)),
            }
            first_damage = first_damage.min(bytes.len());
        }
        let sizes: Vec<usize> = (0..bytes.len())
            .map(|_| {
                let max = if rng.below(2) == 0 { 30 } else { 20_000 };
                1 + rng.below(max) as usize
            })
            .collect();
        let mut d1 = decoder(b.start());
        let (got1, err1) = run_chunks(&mut d1, &bytes, sizes.iter().copied());
        let mut d2 = decoder(b.start());
        let (got2, err2) = run_chunks_with(&mut d2, &bytes, sizes);
        assert_eq!((&got1, &err1), (&got2, &err2), "seed {seed}");
        assert_eq!(d1.valid_end(), d2.valid_end(), "seed {seed}");
        assert!(d1.valid_end() <= d1.fed_end(), "seed {seed}");
        // Records wholly before the first damaged byte are decoded as before.
        let intact = want
            .iter()
            .take_while(|r| r.end.0 <= b.start().0 + first_damage as u64)
            .count();
        assert_eq!(
            &got1[..intact.min(got1.len())],
            &want[..intact.min(got1.len())],
            "seed {seed}"
        );
        if err1.is_none() && d1.end_of_wal().is_none() {
            assert!(
                got1.len() >= intact,
                "seed {seed}: intact records lost without an error"
            );
        }
    }
    // Garbage from the first byte.
    for seed in 1..=50u64 {
        let mut rng = Rng(seed);
        let junk: Vec<u8> = (0..20_000).map(|_| rng.next() as u8).collect();
        let (recs, err, _) = run(b.start(), &junk);
        assert!(recs.is_empty() && err.is_some(), "seed {seed}");
    }
}

/// A decoder that never uses the CRC kernels: the path of a CPU without SSE 4.2 and
/// PCLMULQDQ, tested on every machine.
fn portable_decoder(start: Lsn) -> WalDecoder {
    let mut d = decoder(start);
    d.hw_crc = false;
    d
}

/// Records of every length class next to each other: short ones side by side, a long one
/// next to short ones (the rest of a group split in lanes), page-crossing pieces short and
/// long, and records larger than a page.
fn mixed_lengths_stream(seed: u64) -> WalBuilder {
    let mut b = builder();
    let mut rng = Rng(seed);
    while b.end().0 < 3 * SEG + 120_000 {
        let len = match rng.below(8) {
            0..=2 => 26 + rng.below(150),
            3 => 64,
            4 => 1000 + rng.below(100),
            5 => 180 + rng.below(40), // around the lane split threshold
            6 => 2000 + rng.below(7000),
            _ => 8100 + rng.below(12_000),
        };
        b.filler(len as usize);
        if rng.below(40) == 0 {
            b.commit(900 + rng.below(100) as u32, T0);
        }
    }
    b
}

/// Records, error and positions of one decode, through the iterator or the callback.
fn outcome(
    mut d: WalDecoder,
    bytes: &[u8],
    chunk: usize,
    callback: bool,
) -> (Vec<Record>, Option<WalError>, Lsn, Option<Lsn>) {
    let sizes = std::iter::repeat(chunk);
    let (recs, err) = if callback {
        run_chunks_with(&mut d, bytes, sizes)
    } else {
        run_chunks(&mut d, bytes, sizes)
    };
    (recs, err, d.valid_end(), d.end_of_wal())
}

#[test]
fn the_crc_kernels_and_the_portable_path_agree() {
    for seed in [3u64, 77, 1234] {
        let b = mixed_lengths_stream(seed);
        let (want, _) = decode_ok(&b);
        let portable = outcome(
            portable_decoder(b.start()),
            b.bytes(),
            b.bytes().len(),
            false,
        );
        assert_eq!((&portable.0, &portable.1), (&want, &None), "seed {seed}");
        assert!(want.iter().any(|r| r.lsn.0 / 8192 != (r.end.0 - 1) / 8192));

        // Flipped bytes in every part of a record: the header fields, the first, middle and
        // last payload bytes, both sides of a page boundary inside a record, and a stride
        // over everything else. Both paths must fail at the same record with the same error.
        let mut offsets = Vec::new();
        for r in want.iter().step_by(5) {
            let rec = record_byte_offsets(&b, r.lsn, r.tot_len);
            let n = rec.len();
            offsets.extend([0, 3, 4, 8, 15, 16, 17, 20, 23, 24, n / 2, n - 1].map(|i| rec[i]));
            // A page boundary inside the record: the bytes before and after its header.
            if let Some(i) = rec.windows(2).position(|w| w[1] != w[0] + 1) {
                offsets.extend([rec[i], rec[i + 1]]);
            }
        }
        offsets.extend((0..b.bytes().len()).step_by(389));
        for off in offsets {
            let mut bytes = b.bytes().to_vec();
            bytes[off] ^= 0x10;
            for (chunk, callback) in [(bytes.len(), true), (8192, false), (1500, true)] {
                let hw = outcome(decoder(b.start()), &bytes, chunk, callback);
                let sw = outcome(portable_decoder(b.start()), &bytes, chunk, callback);
                assert_eq!(hw, sw, "seed {seed}, flip at {off}, chunks of {chunk}");
            }
        }
    }
}
