//! Failover under network faults, through TCP proxies the tests black-hole (a link that goes
//! down ends in timeouts, not refusals): every link of node a (its server as the others reach
//! it, its agent's link to the witness) and of node b goes through one. Under a write load
//! from a client using `target_session_attrs=read-write`, in synchronous mode:
//! - the primary isolated: it fences itself before the standby is promoted, no acknowledged
//!   commit is lost, and it comes back as a standby;
//! - the primary frozen (SIGSTOP) past the failover timeout: its agent kills it after the
//!   fence timeout, the standby takes over (within 5 s), and the old primary never takes
//!   writes again;
//! - a 2 s blip of the primary's links: nothing fails over, nothing fences;
//! - the primary's server frozen for 2 s (shorter than the fence timeout): nothing happens;
//! - the standby isolated: nothing changes.

mod common;
mod ha_support;

use std::time::{Duration, Instant};

use common::{PgCluster, HOST};
use ha_support::{
    eligible, epoch_of, missing, node, primary_of, server_pids, writer_pair, Lab, Proxy, Writer,
};

struct Net {
    a_pg: Proxy,
    a_witness: Proxy,
    b_pg: Proxy,
    b_witness: Proxy,
}

impl Net {
    fn isolate_a(&self) {
        self.a_pg.block();
        self.a_witness.block();
    }

    fn heal_a(&self) {
        self.a_pg.unblock();
        self.a_witness.unblock();
    }
}

/// Primary a with b as its synchronous standby, a synchronous witness, both agents behind
/// proxies; steady (a primary at epoch 1, b a promotable sync standby).
fn sync_pair() -> (PgCluster, PgCluster, Net, Lab) {
    sync_pair_in(|| Lab::new_synchronous(4.0))
}

/// [`sync_pair`] in the lab `new_lab` makes (the witness's or etcd's links proxied).
fn sync_pair_in(new_lab: impl FnOnce() -> Lab) -> (PgCluster, PgCluster, Net, Lab) {
    let (a, b) = writer_pair();
    let mut lab = new_lab();
    let witness_port = lab.coordinator_port();
    let net = Net {
        a_pg: Proxy::start(a.port()),
        a_witness: Proxy::start(witness_port),
        b_pg: Proxy::start(b.port()),
        b_witness: Proxy::start(witness_port),
    };
    // No --synchronous-standby-names: a promoted b, alone, would wait for a sync partner
    // before acknowledging a commit (RPO 0 first), which these tests do not want.
    lab.agent_via("a", &a, net.a_pg.port, &net.a_witness.addr(), &[]);
    lab.agent_via("b", &b, net.b_pg.port, &net.b_witness.addr(), &[]);
    lab.wait_status("a primary, b eligible", Duration::from_secs(30), |s| {
        primary_of(s) == Some("a") && epoch_of(s) == 1 && eligible(s, "b")
    });
    // Only now: with no standby connected, the harness's own set-up would wait forever.
    a.psql("ALTER SYSTEM SET synchronous_standby_names = 'b'");
    a.psql("SELECT pg_reload_conf()");
    let sync_state = || {
        a.psql(
            "SELECT string_agg(application_name || ':' || sync_state || ':' || state, ',') \
             FROM pg_stat_replication",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while sync_state() != "b:sync:streaming" {
        assert!(
            Instant::now() < deadline,
            "b is not a's synchronous standby: {}",
            sync_state()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (a, b, net, lab)
}

fn writer_conninfo(a: &PgCluster, b: &PgCluster) -> String {
    format!(
        "host={HOST},{HOST} port={},{} user=postgres dbname=postgres \
         target_session_attrs=read-write connect_timeout=2",
        a.port(),
        b.port()
    )
}

fn writable(c: &PgCluster) -> bool {
    c.try_psql("SELECT NOT pg_is_in_recovery()").as_deref() == Ok("t")
}

/// The end of every fault: b is the primary, a follows it, and no acknowledged commit is
/// missing from either.
fn check_after_failover(a: &PgCluster, b: &PgCluster, lab: &mut Lab, acked: &[i64]) {
    lab.wait_status(
        "b primary, a back as its standby",
        Duration::from_secs(90),
        |s| {
            primary_of(s) == Some("b")
                && node(s, "a").is_some_and(|n| n["role"] == "standby" && n["health"] == "ok")
        },
    );
    assert!(writable(b));
    assert!(!writable(a), "two writers");
    assert_eq!(
        missing(b, 1, acked),
        Vec::<i64>::new(),
        "acknowledged commits lost"
    );
    b.psql("INSERT INTO t VALUES (2, 1)");
    a.wait_for_replay(b.current_wal_lsn());
    assert_eq!(missing(a, 1, acked), Vec::<i64>::new());
}

#[test]
fn an_isolated_primary_fences_itself_before_the_standby_is_promoted_and_loses_nothing() {
    isolated_primary(sync_pair());
}

/// The same with the state in etcd: the isolated primary's lease runs out.
#[test]
fn etcd_an_isolated_primary_fences_itself_before_the_standby_is_promoted_and_loses_nothing() {
    isolated_primary(sync_pair_in(|| Lab::new_etcd_synchronous(4.0)));
}

fn isolated_primary((a, b, net, mut lab): (PgCluster, PgCluster, Net, Lab)) {
    let writer = Writer::start(1, writer_conninfo(&a, &b));
    common::wait_until("some commits", Duration::from_secs(20), || {
        writer.count() >= 20
    });

    let fault = Instant::now();
    net.isolate_a();
    // a's agent reaches neither the witness nor b: it stops its server within the fence
    // timeout (3 s) plus a report interval.
    common::wait_until("a to fence itself", Duration::from_secs(10), || {
        !server_pids(&a).iter().any(|&p| common::pid_alive(p))
    });
    let fenced = fault.elapsed();
    common::wait_until("b to take writes", Duration::from_secs(30), || writable(&b));
    let promoted = fault.elapsed();
    eprintln!("isolated primary: fenced after {fenced:?}, b writable after {promoted:?}");
    assert!(
        fenced < promoted,
        "the old primary must stop before the new one takes writes"
    );
    let before_heal = writer.count();
    common::wait_until("writes to go on on b", Duration::from_secs(30), || {
        writer.count() > before_heal + 10
    });
    net.heal_a();
    let acked = writer.finish();
    check_after_failover(&a, &b, &mut lab, &acked);
}

#[test]
fn a_primary_frozen_past_the_failover_timeout_is_replaced_and_never_takes_writes_again() {
    let (a, b, _net, mut lab) = sync_pair();
    let writer = Writer::start(1, writer_conninfo(&a, &b));
    common::wait_until("some commits", Duration::from_secs(20), || {
        writer.count() >= 20
    });
    let frozen = server_pids(&a);
    for &p in &frozen {
        // SAFETY: kill(2) with pids of the test's own server.
        unsafe { libc::kill(p, libc::SIGSTOP) };
    }
    let fault = Instant::now();
    // Every process of the frozen server is gone (its agent killed it) before b takes
    // writes: it can never resume as a second writer.
    let mut killed = None;
    common::wait_until("b to take writes", Duration::from_secs(30), || {
        if killed.is_none() && !frozen.iter().any(|&p| common::pid_alive(p)) {
            killed = Some(fault.elapsed());
        }
        writable(&b)
    });
    let rto = fault.elapsed();
    eprintln!("frozen primary: killed after {killed:?}, b writable after {rto:?}");
    let killed = killed.expect("b took writes while the frozen old primary still existed");
    assert!(killed <= rto);
    // The fence timeout (3 s) from the first look that got no answer, which begins within a
    // report interval (0.5 s) of the freeze; then a promote. The margin is for a busy machine.
    assert!(
        rto < Duration::from_secs(5),
        "a frozen primary took {rto:?} to be replaced\n{}",
        lab.logs()
    );
    std::thread::sleep(Duration::from_secs(1));
    for &p in &frozen {
        // SAFETY: as above.
        unsafe { libc::kill(p, libc::SIGCONT) };
    }
    let acked = writer.finish();
    check_after_failover(&a, &b, &mut lab, &acked);
}

/// A stall of the primary's server shorter than the fence timeout (its agent runs on and
/// sees no answer): the agent holds off, the server resumes, nothing is stopped or failed
/// over, and no acknowledged commit is lost.
#[test]
fn a_primary_frozen_for_two_seconds_is_neither_stopped_nor_failed_over() {
    let (a, b, _net, mut lab) = sync_pair();
    let writer = Writer::start(1, writer_conninfo(&a, &b));
    common::wait_until("some commits", Duration::from_secs(20), || {
        writer.count() >= 10
    });
    let frozen = server_pids(&a);
    for &p in &frozen {
        // SAFETY: kill(2) with pids of the test's own server.
        unsafe { libc::kill(p, libc::SIGSTOP) };
    }
    std::thread::sleep(Duration::from_secs(2));
    for &p in &frozen {
        // SAFETY: as above.
        unsafe { libc::kill(p, libc::SIGCONT) };
    }
    let n = writer.count();
    common::wait_until("writes to go on", Duration::from_secs(20), || {
        writer.count() > n + 20
    });
    std::thread::sleep(Duration::from_secs(3));
    lab.wait_status(
        "a still the primary at epoch 1",
        Duration::from_secs(5),
        |s| primary_of(s) == Some("a") && epoch_of(s) == 1 && eligible(s, "b"),
    );
    let postmaster = *frozen.last().expect("a's postmaster");
    assert!(common::pid_alive(postmaster), "a was stopped");
    assert!(writable(&a) && !writable(&b));
    let acked = writer.finish();
    assert_eq!(missing(&a, 1, &acked), Vec::<i64>::new());
    let logs = lab.logs();
    assert!(
        logs.contains("the local primary does not answer (its postmaster is stopped")
            && logs.contains("the local primary answers again"),
        "the agent saw nothing of the stall\n{logs}"
    );
}

#[test]
fn a_two_second_blip_of_the_primarys_links_fails_nothing_over() {
    let (a, b, net, mut lab) = sync_pair();
    let writer = Writer::start(1, writer_conninfo(&a, &b));
    common::wait_until("some commits", Duration::from_secs(20), || {
        writer.count() >= 10
    });
    net.isolate_a();
    std::thread::sleep(Duration::from_secs(2));
    net.heal_a();
    let n = writer.count();
    common::wait_until("writes to go on", Duration::from_secs(20), || {
        writer.count() > n + 20
    });
    std::thread::sleep(Duration::from_secs(5));
    lab.wait_status(
        "a still the primary at epoch 1",
        Duration::from_secs(5),
        |s| primary_of(s) == Some("a") && epoch_of(s) == 1 && eligible(s, "b"),
    );
    assert!(writable(&a) && !writable(&b));
    let acked = writer.finish();
    assert_eq!(missing(&a, 1, &acked), Vec::<i64>::new());
    assert!(
        !lab.logs().contains("fencing"),
        "a 2 s blip must not fence the primary\n{}",
        lab.logs()
    );
}

#[test]
fn an_isolated_standby_changes_nothing() {
    let (a, b, net, mut lab) = sync_pair();
    // Asynchronous for this one: with its only synchronous standby cut off, the primary's
    // commits would wait (as PostgreSQL's synchronous replication wants).
    a.psql("ALTER SYSTEM SET synchronous_standby_names = ''");
    a.psql("SELECT pg_reload_conf()");
    let writer = Writer::start(1, writer_conninfo(&a, &b));
    net.b_pg.block();
    net.b_witness.block();
    std::thread::sleep(Duration::from_secs(10));
    let status = lab.status().expect("status");
    assert_eq!(primary_of(&status), Some("a"));
    assert_eq!(epoch_of(&status), 1);
    assert!(
        writable(&a),
        "the primary must not fence: it still reaches the witness"
    );
    net.b_pg.unblock();
    net.b_witness.unblock();
    lab.wait_status("b back and eligible", Duration::from_secs(20), |s| {
        eligible(s, "b")
    });
    let acked = writer.finish();
    assert!(acked.len() > 50, "writes went on: {}", acked.len());
    assert_eq!(missing(&a, 1, &acked), Vec::<i64>::new());
}
