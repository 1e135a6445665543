//! `walferry receive --synchronous` as the primary's synchronous standby: the primary waits
//! for walferry's flush reports, and after `kill -9` of walferry every commit the primary
//! acknowledged is in the archive (found by pg_waldump, byte-identical to pg_wal).

mod common;
mod receive_support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{format_lsn, segment_name, tempdir, PgCluster, WAL_SEGMENT_SIZE};
use receive_support::*;

fn wf_stat(pg: &PgCluster) -> Option<common::ReplicationStat> {
    pg.replication_stats()
        .into_iter()
        .find(|s| s.application_name == "walferry" && s.state == "streaming")
}

/// Clients committing one-row inserts in a loop (autocommit); each acknowledged commit's
/// xid is recorded once the server has answered (that is, after the synchronous wait).
struct Burst {
    acked: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Burst {
    fn start(pg: &PgCluster, clients: usize) -> Burst {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let conninfo = format!("{} dbname=postgres", pg.conninfo(common::roles::SUPERUSER));
        let (a, s) = (acked.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut loops = Vec::new();
                for _ in 0..clients {
                    let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                        .await
                        .expect("burst client connects");
                    tokio::spawn(conn);
                    let (a, s) = (a.clone(), s.clone());
                    loops.push(tokio::spawn(async move {
                        while !s.load(Ordering::SeqCst) {
                            let Ok(msgs) = client
                                .simple_query(
                                    "INSERT INTO burst SELECT 1, string_agg(md5(random()::text), '') \
                                     FROM generate_series(1, 200) RETURNING txid_current()",
                                )
                                .await
                            else {
                                return;
                            };
                            for m in msgs {
                                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                                    let xid: u64 = r.get(0).expect("xid").parse().expect("xid");
                                    a.lock().unwrap().push(xid);
                                }
                            }
                        }
                    }));
                }
                for l in loops {
                    let _ = l.await;
                }
            });
        });
        Burst {
            acked,
            stop,
            thread: Some(thread),
        }
    }

    fn acked(&self) -> Vec<u64> {
        self.acked.lock().unwrap().clone()
    }

    fn wait_for(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.acked.lock().unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} commits acknowledged within {timeout:?}",
                self.acked.lock().unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops after the in-flight commits return (they need a synchronous standby).
    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().expect("burst thread");
        self.acked()
    }
}

impl Drop for Burst {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // On a failing test the thread may hang in a synchronous wait: leave it.
    }
}

/// xids of the COMMIT records pg_waldump finds in the archive from `start` on.
fn committed_xids(dir: &std::path::Path, start: u64) -> BTreeSet<u64> {
    let scratch = tempdir();
    waldump_copy(dir, scratch.path());
    let (out, err, _) = pg_waldump(
        scratch.path(),
        1,
        start - start % WAL_SEGMENT_SIZE,
        &["-r", "Transaction"],
    );
    // pg_waldump stops at the end of valid WAL with an error naming that position: a zero
    // record length, a header cut short, or (when the last record continues onto a page not
    // yet written) a page of zeros. Anything else (a bad CRC, a missing segment) is damage.
    assert!(
        err.is_empty()
            || err.contains("invalid record length")
            || err.contains("wanted 24, got 0")
            || err.contains("invalid magic number 0000"),
        "pg_waldump: {err}"
    );
    out.lines()
        .filter(|l| l.contains("desc: COMMIT"))
        .map(|l| {
            let tx = l.split("tx:").nth(1).expect("tx field");
            tx.split(',').next().unwrap().trim().parse().expect("xid")
        })
        .collect()
}

#[test]
fn acknowledged_commits_survive_kill9_of_the_synchronous_walferry() {
    sync_standby_kill9("none");
}

/// The same with a slow writer (gzip level 9 flushed at every acknowledgement): the queue
/// between network and disk fills, so an acknowledgement sent for WAL still in the queue
/// would show up as a lost commit.
#[test]
fn acknowledged_commits_survive_kill9_with_a_slow_compressing_writer() {
    sync_standby_kill9("gzip:9");
}

fn sync_standby_kill9(compress: &str) {
    let pg = PgCluster::primary();
    pg.psql("CREATE TABLE burst (id bigint, pad text)");
    let dir = tempdir();
    let start = pg.current_wal_lsn();
    let sync_args = ["--synchronous", "-v", "-Z", compress];
    let mut wf = Proc::spawn(walferry(&pg, dir.path()).args(sync_args));
    common::wait_until("walferry to stream", Duration::from_secs(30), || {
        wf_stat(&pg).is_some()
    });
    pg.psql("ALTER SYSTEM SET synchronous_standby_names = 'walferry'");
    pg.psql("SELECT pg_reload_conf()");
    common::wait_until(
        "walferry to be the sync standby",
        Duration::from_secs(30),
        || wf_stat(&pg).is_some_and(|s| s.sync_state == "sync"),
    );

    const CLIENTS: usize = 3;
    let burst = Burst::start(&pg, CLIENTS);
    let mut rng = common::Rng::from_env_or_time("WALFERRY_SYNC_SEED");
    burst.wait_for(200, Duration::from_secs(60));
    // A random kill point in the burst (the schedule under test, not a wait).
    std::thread::sleep(Duration::from_millis(rng.range(0, 400)));
    let reported = wf_stat(&pg)
        .and_then(|s| s.flush_lsn)
        .expect("walferry reports a flush position");
    wf.kill9();
    // Acknowledgements already on their way may still arrive until the walsender has read
    // walferry's last reply and exited, and every client has taken its answer and waits in
    // SyncRep with its next commit (a client records an acknowledgement before it sends its
    // next statement); none can come after that.
    common::wait_until(
        "the walsender to exit and every client to wait for walferry",
        Duration::from_secs(30),
        || {
            pg.replication_stats()
                .iter()
                .all(|s| s.application_name != "walferry")
                && pg.psql(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE wait_event = 'SyncRep' AND query LIKE 'INSERT INTO burst%'",
                ) == CLIENTS.to_string()
        },
    );
    let acked = burst.acked();
    eprintln!(
        "{} commits acknowledged; walferry's last reported flush {}",
        acked.len(),
        format_lsn(reported)
    );

    // The primary really waits for walferry: with it gone, commits hang in SyncRep.
    common::wait_until(
        "a commit waiting for walferry",
        Duration::from_secs(10),
        || pg.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'") != "0",
    );
    assert_eq!(
        burst.acked().len(),
        acked.len(),
        "a commit was acknowledged without walferry"
    );

    // Everything walferry reported flushed is in the archive, byte for byte...
    let last = segment_name(1, reported - 1);
    for (seg, file) in complete_segments(dir.path()) {
        if segno_of(&seg) <= segno_of(&last) {
            assert_same_segment(
                &file,
                &read_wal_file(&dir.path().join(&file)),
                &pg.wal_segment_path(&seg),
            );
        }
    }
    // The segment holding the last reported byte, complete or not (complete first).
    let tail = complete_segments(dir.path())
        .into_iter()
        .find(|(seg, _)| *seg == last)
        .map(|(_, file)| file)
        .or_else(|| {
            partial_segments(dir.path())
                .into_iter()
                .find(|f| f.starts_with(&last))
        })
        .map(|f| dir.path().join(f))
        .unwrap_or_else(|| panic!("no file for {last}: {:?}", list_dir(dir.path())));
    assert_partial_prefix(
        &tail,
        &pg.wal_segment_path(&last),
        segment_start_lsn(&last),
        reported,
    );
    assert_contiguous_or_single(dir.path(), &segment_name(1, start), &last);

    // ... and so is every acknowledged commit.
    let found = committed_xids(dir.path(), start);
    let missing: Vec<_> = acked.iter().filter(|x| !found.contains(x)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged commits are not in the archive, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );

    // A new walferry resumes the archive and releases the waiting commits.
    let mut wf = Proc::spawn(walferry(&pg, dir.path()).args(sync_args));
    burst.wait_for(acked.len() + 50, Duration::from_secs(60));
    let all = burst.finish();
    wf.signal(libc::SIGTERM);
    let status = wf.wait();
    assert_eq!(status.code(), Some(0), "{}", wf.stderr());
    pg.psql("ALTER SYSTEM RESET synchronous_standby_names");
    pg.psql("SELECT pg_reload_conf()");

    let found = committed_xids(dir.path(), start);
    assert!(
        all.iter().all(|x| found.contains(x)),
        "after resume, a commit is missing"
    );
    assert_complete_segments_match(dir.path(), &pg);
}

/// The archive's complete segments run without a gap from `first`, and the segment `last`
/// (complete or partial) follows them.
fn assert_contiguous_or_single(dir: &std::path::Path, first: &str, last: &str) {
    let complete = complete_segments(dir);
    let expected: Vec<u64> = (segno_of(first)..segno_of(last)).collect();
    let got: Vec<u64> = complete
        .iter()
        .map(|(s, _)| segno_of(s))
        .filter(|&n| n < segno_of(last))
        .collect();
    assert_eq!(got, expected, "{:?}", list_dir(dir));
}
