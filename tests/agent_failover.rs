//! `walferry agent` with a witness on real PostgreSQL 15 clusters: a primary killed with
//! kill -9 is failed over to its standby and comes back as a standby of the new primary by
//! itself; with the witness down nothing fails over and writes continue.

mod common;
mod ha_support;

use std::time::{Duration, Instant};

use common::{PgCluster, StandbyOptions};
use ha_support::{eligible, epoch_of, node, primary_of, Lab, LAB_CONF};

fn lab_primary() -> PgCluster {
    let mut b = PgCluster::builder();
    for line in LAB_CONF {
        b = b.conf(line);
    }
    b.start()
}

fn count(cluster: &PgCluster) -> i64 {
    cluster
        .psql("SELECT count(*) FROM t")
        .parse()
        .expect("a count")
}

/// Starts the witness and the agents of `a` (primary) and `b` (standby), and waits until the
/// witness names a the primary at epoch 1 and b a promotable standby.
fn two_nodes(a: &PgCluster, b: &PgCluster) -> Lab {
    let mut lab = Lab::new(4.0);
    lab.agent("a", a, &[]);
    lab.agent("b", b, &[]);
    lab.wait_status(
        "a primary at epoch 1, b eligible",
        Duration::from_secs(30),
        |s| primary_of(s) == Some("a") && epoch_of(s) == 1 && eligible(s, "b"),
    );
    lab
}

#[test]
fn a_primary_killed_with_kill_9_is_failed_over_and_comes_back_as_a_standby() {
    let mut a = lab_primary();
    a.psql("CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT now())");
    a.psql("INSERT INTO t (id) SELECT g FROM generate_series(1, 1000) g");
    let b = PgCluster::standby_of(&a, StandbyOptions::new());
    b.wait_for_replay(a.current_wal_lsn());
    let mut lab = two_nodes(&a, &b);

    // The standby's agent manages its upstream and its reply interval.
    common::wait_until(
        "b's agent to set its primary_conninfo",
        Duration::from_secs(20),
        || {
            let conninfo = b.psql("SHOW primary_conninfo");
            conninfo.contains(&format!("port={}", a.port()))
                && conninfo.contains("application_name=b")
        },
    );
    assert_eq!(b.psql("SHOW wal_receiver_status_interval"), "1s");

    let acked = a.current_wal_lsn();
    b.wait_for_replay(acked);
    let fault = Instant::now();
    a.kill9();
    // RTO: from the kill to the first write the new primary acknowledges.
    let deadline = fault + Duration::from_secs(30);
    let rto = loop {
        if b.try_psql("INSERT INTO t (id) VALUES (1001)").is_ok() {
            break fault.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "no failover within 30 s\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("RTO after kill -9 of the primary: {rto:?}");
    assert!(rto < Duration::from_secs(15), "RTO {rto:?}");
    assert_eq!(
        count(&b),
        1001,
        "every acknowledged row is on the new primary"
    );
    assert_eq!(b.timeline(), 2);

    // The old primary rejoins as a standby of b by itself (pg_rewind) and catches up.
    lab.wait_status(
        "b primary at epoch 2, a back as its standby",
        Duration::from_secs(60),
        |s| {
            primary_of(s) == Some("b")
                && epoch_of(s) == 2
                && node(s, "a").is_some_and(|n| n["role"] == "standby" && n["health"] == "ok")
        },
    );
    assert_eq!(
        a.psql("SELECT pg_is_in_recovery()"),
        "t",
        "exactly one writer"
    );
    b.psql("INSERT INTO t (id) VALUES (1002)");
    a.wait_for_replay(b.current_wal_lsn());
    assert_eq!(count(&a), 1002);
    assert!(
        a.try_psql("INSERT INTO t (id) VALUES (5000)").is_err(),
        "the old primary must not take writes"
    );
    // Its own settings survived the rewind (it still listens on its own port).
    assert!(a.psql("SHOW port") == a.port().to_string());
    assert!(
        lab.logs().contains("rejoined as a standby (pg_rewind)"),
        "{}",
        lab.logs()
    );
}

#[test]
fn with_the_witness_down_nothing_fails_over_and_writes_continue() {
    let a = lab_primary();
    a.psql("CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT now())");
    let b = PgCluster::standby_of(&a, StandbyOptions::new());
    let mut lab = two_nodes(&a, &b);
    lab.kill_witness();
    // Three failover timeouts without the witness: the primary still reaches its standby, so
    // it does not fence, and the standby still reaches the primary, so it does not promote.
    let until = Instant::now() + Duration::from_secs(15);
    let mut id = 0;
    while Instant::now() < until {
        id += 1;
        a.psql(&format!("INSERT INTO t (id) VALUES ({id})"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(count(&a), id);
    assert_eq!(b.psql("SELECT pg_is_in_recovery()"), "t");
    lab.restart_witness();
    lab.wait_status(
        "the same primary at the same epoch",
        Duration::from_secs(20),
        |s| primary_of(s) == Some("a") && epoch_of(s) == 1 && eligible(s, "b"),
    );
}
