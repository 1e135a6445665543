//! CPU-time clocks for benches on a shared machine, where wall time mostly measures how
//! often a thread was descheduled.

use std::time::Duration;

/// The CPU time of `clock` (`libc::CLOCK_THREAD_CPUTIME_ID`: this thread;
/// `libc::CLOCK_PROCESS_CPUTIME_ID`: every thread of the process, user + system).
pub fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `ts`, which outlives the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime({clock})");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
