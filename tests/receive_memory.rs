//! Memory stays bounded: walferry's resident set stays under 32 MiB while it catches up on
//! ~200 MiB of WAL (the bounded channel between network and disk is the bound).

mod common;
mod receive_support;

use std::time::Duration;

use common::{format_lsn, segment_name, tempdir, PgCluster};
use receive_support::*;

const LIMIT_KIB: u64 = 32 * 1024;

#[test]
fn rss_stays_under_32_mib_during_a_200_mib_catch_up() {
    let pg = PgCluster::primary();
    let slot_lsn = pg.create_physical_slot("wf");
    emit_wal(&pg, 200);
    small_commit(&pg);
    let endpos = flush_lsn(&pg);

    let dir = tempdir();
    let mut wf =
        Proc::spawn(walferry(&pg, dir.path()).args(["-S", "wf", "-E", &format_lsn(endpos)]));
    // VmRSS now and then, and VmHWM (the peak so far, which catches what falls between
    // samples) until the very end.
    let mut samples = Vec::new();
    let mut peak = 0;
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(rss) = wf.rss_kib() {
            samples.push(rss);
        }
        if let Some(hwm) = wf.peak_rss_kib() {
            peak = peak.max(hwm);
        }
        if let Some(s) = wf.wait_timeout(Duration::from_millis(5)) {
            break s;
        }
        assert!(
            started.elapsed() < RUN_TIMEOUT,
            "catch-up did not finish:\n{}",
            wf.stderr()
        );
    };
    let took = started.elapsed();
    assert!(status.success(), "{}", wf.stderr());
    let max = samples.iter().copied().max().unwrap_or(0);
    eprintln!(
        "catch-up of {} MiB in {took:?}; VmRSS over {} samples: max {max} KiB; VmHWM {peak} KiB",
        (endpos - slot_lsn) >> 20,
        samples.len(),
    );
    // VmHWM is the peak over the whole run up to the last sample, so even a catch-up too
    // fast for many VmRSS samples is judged on its real peak.
    assert!(peak > 0, "walferry exited before its memory could be read");
    assert!(max < LIMIT_KIB, "VmRSS reached {max} KiB: {samples:?}");
    assert!(peak < LIMIT_KIB, "VmHWM reached {peak} KiB");

    let first = segment_name(1, slot_lsn);
    let n = assert_contiguous(dir.path(), 1, &first);
    assert!(n >= 12, "{n} segments");
    assert_complete_segments_match(dir.path(), &pg);
}
