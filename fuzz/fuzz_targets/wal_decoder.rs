//! The streaming WAL decoder on corrupted WAL, fed in arbitrary chunks.
//!
//! The base is valid synthetic WAL (records within and across pages, one larger than a
//! page, a restore point, a commit, an XLOG switch and the next segment). The fuzz input
//! says how much of it to keep and how to cut it into chunks, and its remaining bytes are
//! XORed onto the WAL: all-zero input is valid WAL, every mutation is a corruption. The
//! decoder must never panic, and its two APIs (iterator, callback) must agree exactly.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use walferry::wal::synth::WalBuilder;
use walferry::wal::{Lsn, TimeLineId, WalDecoder};

const SEG: u64 = 1 << 20;
const SYSID: u64 = 7_111_222_333_444_555_666;

fn base() -> &'static [u8] {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(|| {
        // Start near the end of a segment so the stream crosses into the next one.
        let start = Lsn(2 * SEG - 4 * 8192);
        let mut b = WalBuilder::new(start, TimeLineId(1), SEG, SYSID);
        b.filler(100);
        b.filler(9000);
        b.restore_point(b"fuzz", 1);
        b.commit(741, 2);
        while b.end().0 < 2 * SEG - 300 {
            b.filler(1500);
        }
        b.switch();
        b.filler(200);
        b.filler(20000);
        b.commit(742, 3);
        b.into_bytes()
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let base = base();
    let keep = (u16::from_le_bytes([data[0], data[1]]) as usize * base.len()) / 65535;
    // 61..24796 bytes; byte-by-byte feeding is covered by the unit tests and is too slow here.
    let chunk = 61 + data[2] as usize * 97;
    let mut wal = base[..keep].to_vec();
    for (w, x) in wal.iter_mut().zip(&data[3..]) {
        *w ^= x;
    }
    let start = Lsn(2 * SEG - 4 * 8192);

    let mut by_iter = WalDecoder::new(start, TimeLineId(1), SEG, Some(SYSID)).unwrap();
    let mut iter_out = Vec::new();
    let mut iter_err = None;
    'outer: for piece in wal.chunks(chunk) {
        for item in by_iter.feed(piece) {
            match item {
                Ok(r) => iter_out.push((r.lsn, r.end, r.kind)),
                Err(e) => {
                    iter_err = Some(e.to_string());
                    break 'outer;
                }
            }
        }
    }

    let mut by_callback = WalDecoder::new(start, TimeLineId(1), SEG, Some(SYSID)).unwrap();
    let mut cb_out = Vec::new();
    let mut cb_err = None;
    for piece in wal.chunks(chunk) {
        if let Err(e) = by_callback.feed_with(piece, |r| cb_out.push((r.lsn, r.end, r.kind.clone()))) {
            cb_err = Some(e.to_string());
            break;
        }
    }
    assert_eq!(iter_out, cb_out);
    assert_eq!(iter_err, cb_err);
    if iter_err.is_none() {
        assert_eq!(by_iter.valid_end(), by_callback.valid_end());
        assert!(by_iter.valid_end() <= Lsn(start.0 + wal.len() as u64));
    }
});
