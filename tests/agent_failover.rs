//! `walferry agent` with a witness on real PostgreSQL 15 clusters: a primary killed with
//! kill -9 is failed over to its standby and comes back as a standby of the new primary by
//! itself; with the witness down nothing fails over and writes continue.

mod common;
mod ha_support;

use std::time::{Duration, Instant};

use common::{PgCluster, StandbyOptions};
use ha_support::{eligible, epoch_of, lab_primary, node, primary_of, Lab};

fn count(cluster: &PgCluster) -> i64 {
    cluster
        .psql("SELECT count(*) FROM t")
        .parse()
        .expect("a count")
}

/// Starts the witness and the agents of `a` (primary) and `b` (standby), and waits until the
/// witness names a the primary at epoch 1 and b a promotable standby.
fn two_nodes(a: &PgCluster, b: &PgCluster) -> Lab {
    two_nodes_in(Lab::new(4.0), a, b)
}

fn two_nodes_in(mut lab: Lab, a: &PgCluster, b: &PgCluster) -> Lab {
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
    kill_9_of_the_primary(|| Lab::new(4.0));
}

/// The same with the failover state in etcd (the primary's liveness a lease).
#[test]
fn etcd_a_primary_killed_with_kill_9_is_failed_over_and_comes_back_as_a_standby() {
    kill_9_of_the_primary(|| Lab::new_etcd(4.0));
}

fn kill_9_of_the_primary(new_lab: impl FnOnce() -> Lab) {
    let mut a = lab_primary(&[]);
    a.psql("CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT now())");
    a.psql("INSERT INTO t (id) SELECT g FROM generate_series(1, 1000) g");
    let b = PgCluster::standby_of(&a, StandbyOptions::new());
    b.wait_for_replay(a.current_wal_lsn());
    let mut lab = two_nodes_in(new_lab(), &a, &b);

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

/// Regression: a primary killed with kill -9 whose last checkpoint is in an older WAL segment
/// than its end of WAL. pg_rewind first runs its crash recovery, whose checkpoint recycles that
/// segment, and then cannot find the last checkpoint before the divergence: the rewind can
/// never succeed, and with no repository the old primary stayed down, retried for ever. It is
/// rebuilt from the new primary with pg_basebackup, keeping its own configuration files.
#[test]
fn an_old_primary_pg_rewind_cannot_rejoin_is_rebuilt_from_the_new_primary_without_a_repository() {
    // PostgreSQL's default (the harness keeps 2 GB): a checkpoint removes the older segments.
    let mut a = lab_primary(&["wal_keep_size = 0".to_string()]);
    a.psql("CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT now())");
    a.psql("INSERT INTO t (id) SELECT g FROM generate_series(1, 1000) g");
    let b = PgCluster::standby_of(&a, StandbyOptions::new());
    let mut lab = two_nodes(&a, &b);
    a.psql("CHECKPOINT");
    a.psql("SELECT pg_switch_wal()");
    a.psql("INSERT INTO t (id) SELECT g FROM generate_series(1001, 2000) g");
    b.wait_for_replay(a.current_wal_lsn());
    a.kill9();
    common::wait_until("b to take writes", Duration::from_secs(30), || {
        b.try_psql("INSERT INTO t (id) VALUES (2001)").is_ok()
    });
    assert_eq!(count(&b), 2001);

    lab.wait_status(
        "a rebuilt and back as b's standby",
        Duration::from_secs(90),
        |s| {
            primary_of(s) == Some("b")
                && node(s, "a").is_some_and(|n| n["role"] == "standby" && n["health"] == "ok")
        },
    );
    let logs = lab.logs();
    assert!(logs.contains("WARN pg_rewind: "), "{logs}");
    assert!(
        logs.contains("rejoined as a standby (pg_basebackup)"),
        "{logs}"
    );
    assert_eq!(a.psql("SELECT pg_is_in_recovery()"), "t");
    b.psql("INSERT INTO t (id) VALUES (2002)");
    a.wait_for_replay(b.current_wal_lsn());
    assert_eq!(count(&a), 2002);
    // Its own settings survived the rebuild (the base backup brought b's), and nothing of
    // the rebuild is left beside its data directory.
    assert_eq!(a.psql("SHOW port"), a.port().to_string());
    let parent = a.data_dir().parent().unwrap();
    let beside: Vec<String> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains("walferry"))
        .collect();
    assert_eq!(beside, Vec::<String>::new(), "left beside PGDATA");
}

#[test]
fn with_the_witness_down_nothing_fails_over_and_writes_continue() {
    let a = lab_primary(&[]);
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

/// `walferry ARGS` as the postgres user (the owner of the lab's secret and repository).
fn walferry(args: &[&str]) -> std::process::Output {
    common::postgres_command(common::walferry_bin())
        .args(args)
        .output()
        .expect("run walferry")
}

fn switchover(lab: &Lab, to: &str) -> std::process::Output {
    let mut args = vec![
        "switchover".to_string(),
        "--to".into(),
        to.into(),
        "--wait".into(),
        "60".into(),
    ];
    args.extend(lab.coord_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    walferry(&args)
}

#[test]
fn a_switchover_and_back_loses_nothing_and_leaves_one_writer() {
    switchover_and_back(|| Lab::new(4.0));
}

#[test]
fn etcd_a_switchover_and_back_loses_nothing_and_leaves_one_writer() {
    switchover_and_back(|| Lab::new_etcd(4.0));
}

fn switchover_and_back(new_lab: impl FnOnce() -> Lab) {
    let a = lab_primary(&[]);
    a.psql("CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT now())");
    a.psql("INSERT INTO t (id) SELECT g FROM generate_series(1, 500) g");
    let b = PgCluster::standby_of(&a, StandbyOptions::new());
    let mut lab = two_nodes_in(new_lab(), &a, &b);

    let started = Instant::now();
    let out = switchover(&lab, "b");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.logs()
    );
    eprintln!("switchover to b: {took:?}\n{stdout}");
    assert!(stdout.contains("\"b\" is the primary"), "{stdout}");
    // Every row written before is on b, which takes writes; a follows it.
    assert_eq!(count(&b), 500);
    b.psql("INSERT INTO t (id) VALUES (501)");
    assert_eq!(a.psql("SELECT pg_is_in_recovery()"), "t");
    a.wait_for_replay(b.current_wal_lsn());
    assert_eq!(count(&a), 501);
    assert_eq!(b.timeline(), 2);

    // A switchover to the node that is already the primary is refused with the reason.
    let out = switchover(&lab, "b");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already the primary"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // And back: the original layout.
    let out = switchover(&lab, "a");
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        lab.logs()
    );
    a.psql("INSERT INTO t (id) VALUES (502)");
    assert_eq!(b.psql("SELECT pg_is_in_recovery()"), "t");
    b.wait_for_replay(a.current_wal_lsn());
    assert_eq!(count(&b), 502);
    lab.wait_status("a primary at epoch 3", Duration::from_secs(10), |s| {
        primary_of(s) == Some("a") && epoch_of(s) == 3
    });
}

/// The primary's data directory is deleted under it: its agent stops what is left of it, b
/// takes over at once, and a is rebuilt from the repository (backup + archive) and rejoins.
#[test]
fn a_primary_whose_pgdata_is_deleted_is_rebuilt_from_the_repository_and_rejoins() {
    let repo = common::tempdir();
    let push = format!(
        "archive_command = '{} archive-push --repo {} %p'",
        common::walferry_bin().display(),
        repo.path().display()
    );
    let a = lab_primary(&["archive_mode = on".to_string(), push]);
    a.psql("CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT now())");
    a.psql("INSERT INTO t (id) SELECT g FROM generate_series(1, 300) g");
    let out = walferry(&[
        "backup",
        "--repo",
        repo.path().to_str().unwrap(),
        "-d",
        &a.conninfo(common::roles::SUPERUSER),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = PgCluster::standby_of(&a, StandbyOptions::new());
    let mut lab = Lab::new(4.0);
    lab.agent("a", &a, &["--repo", repo.path().to_str().unwrap()]);
    lab.agent("b", &b, &["--repo", repo.path().to_str().unwrap()]);
    lab.wait_status("a primary, b eligible", Duration::from_secs(30), |s| {
        primary_of(s) == Some("a") && eligible(s, "b")
    });
    a.psql("INSERT INTO t (id) SELECT g FROM generate_series(301, 400) g");
    b.wait_for_replay(a.current_wal_lsn());

    let fault = Instant::now();
    std::fs::remove_dir_all(a.data_dir()).unwrap();
    common::wait_until("b to take writes", Duration::from_secs(30), || {
        b.try_psql("INSERT INTO t (id) VALUES (401)").is_ok()
    });
    eprintln!(
        "RTO after the primary's PGDATA was deleted: {:?}",
        fault.elapsed()
    );
    assert_eq!(count(&b), 401);
    lab.wait_status(
        "a rebuilt and back as a standby",
        Duration::from_secs(120),
        |s| {
            primary_of(s) == Some("b")
                && node(s, "a").is_some_and(|n| n["role"] == "standby" && n["health"] == "ok")
        },
    );
    b.psql("INSERT INTO t (id) VALUES (402)");
    a.wait_for_replay(b.current_wal_lsn());
    assert_eq!(count(&a), 402);
    assert!(
        lab.logs()
            .contains("rejoined as a standby (walferry restore --delta)"),
        "{}",
        lab.logs()
    );
}

/// A standby with priority 0 is never promoted by itself: when the primary's node dies (its
/// agent too), nothing fails over until an operator chooses it with `walferry failover`.
#[test]
fn an_operator_fails_over_to_a_node_the_rules_would_not_promote() {
    let mut a = lab_primary(&[]);
    a.psql("CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT now())");
    a.psql("INSERT INTO t (id) SELECT g FROM generate_series(1, 100) g");
    let b = PgCluster::standby_of(&a, StandbyOptions::new());
    let mut lab = Lab::new(4.0);
    lab.agent("a", &a, &[]);
    lab.agent("b", &b, &["--priority", "0"]);
    lab.wait_status("a primary, b known", Duration::from_secs(30), |s| {
        primary_of(s) == Some("a") && node(s, "b").is_some_and(|n| n["health"] == "ok")
    });
    b.wait_for_replay(a.current_wal_lsn());
    let failover = |lab: &Lab| {
        let mut args = vec![
            "failover".to_string(),
            "--to".into(),
            "b".into(),
            "--wait".into(),
            "30".into(),
        ];
        args.extend(lab.coord_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        walferry(&args)
    };
    // While the primary is alive, an operator's failover is refused: that is a switchover.
    let out = failover(&lab);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reported itself healthy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The node dies: its agent first, then its server.
    lab.agent_mut("a").kill();
    a.kill9();
    std::thread::sleep(Duration::from_secs(7));
    let status = lab.status().expect("status");
    assert_eq!(
        primary_of(&status),
        Some("a"),
        "priority 0: no automatic promote"
    );
    assert_eq!(b.psql("SELECT pg_is_in_recovery()"), "t");
    let out = failover(&lab);
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        lab.logs()
    );
    common::wait_until("b to take writes", Duration::from_secs(20), || {
        b.try_psql("INSERT INTO t (id) VALUES (101)").is_ok()
    });
    assert_eq!(count(&b), 101);
    lab.wait_status("b primary at epoch 2", Duration::from_secs(10), |s| {
        primary_of(s) == Some("b") && epoch_of(s) == 2
    });
}
