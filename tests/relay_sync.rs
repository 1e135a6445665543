//! Acknowledgement upstream: with `--synchronous` a commit on the primary does not return
//! while the relay has not made it durable; with `--sync-downstream 1` also while no
//! downstream has flushed it. Checked by pausing the relay or the downstream's walreceiver
//! (SIGSTOP) and watching the commit wait, then complete after SIGCONT.

mod common;
mod receive_support;
mod relay_support;

use std::time::Duration;

use common::{client_command, pg_bin, tempdir, PgCluster, StandbyOptions};
use receive_support::*;
use relay_support::Relay;

/// `INSERT INTO t VALUES (id)` in its own psql process.
fn insert(pg: &PgCluster, id: u32) -> Proc {
    Proc::spawn(client_command(pg_bin("psql")).args([
        "-XAtq",
        "-d",
        &format!("{} dbname=postgres", pg.conninfo(common::roles::SUPERUSER)),
        "-c",
        &format!("INSERT INTO t VALUES ({id})"),
    ]))
}

fn make_relay_synchronous(pg: &PgCluster) {
    pg.psql("ALTER SYSTEM SET synchronous_standby_names = 'walferry'");
    pg.psql("SELECT pg_reload_conf()");
    common::wait_until(
        "the relay to be the synchronous standby",
        common::TIMEOUT,
        || {
            pg.replication_stats()
                .iter()
                .any(|s| s.application_name == "walferry" && s.sync_state == "sync")
        },
    );
}

/// The commit `p` waits for its synchronous standby, and keeps waiting.
fn assert_waits(pg: &PgCluster, p: &mut Proc) {
    common::wait_until("a commit waiting in SyncRep", common::TIMEOUT, || {
        pg.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'") == "1"
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(p.is_running(), "the commit returned: {}", p.stderr());
}

fn assert_completes(p: &mut Proc) {
    let status = p
        .wait_timeout(common::TIMEOUT)
        .expect("the commit completes");
    assert!(status.success(), "{}", p.stderr());
}

#[test]
fn a_commit_waits_while_the_synchronous_relay_is_paused() {
    let pg = PgCluster::primary();
    pg.create_physical_slot("relay");
    pg.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let dir = tempdir();
    let relay = Relay::start(&pg, dir.path(), &["-S", "relay", "--synchronous"]);
    make_relay_synchronous(&pg);
    assert_completes(&mut insert(&pg, 1));

    relay.proc.signal(libc::SIGSTOP);
    let mut commit = insert(&pg, 2);
    assert_waits(&pg, &mut commit);
    relay.proc.signal(libc::SIGCONT);
    assert_completes(&mut commit);
    assert_eq!(pg.psql("SELECT count(*) FROM t"), "2");
    pg.psql("ALTER SYSTEM RESET synchronous_standby_names");
    pg.psql("SELECT pg_reload_conf()");
    relay.stop();
}

#[test]
fn with_sync_downstream_a_commit_waits_for_the_downstream_too() {
    let pg = PgCluster::primary();
    pg.create_physical_slot("relay");
    pg.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let dir = tempdir();
    let relay = Relay::start(&pg, dir.path(), &["-S", "relay", "--sync-downstream", "1"]);
    let standby = PgCluster::standby_of(
        &pg,
        StandbyOptions::new().primary_conninfo(relay.conninfo("standby1")),
    );
    make_relay_synchronous(&pg);
    assert_completes(&mut insert(&pg, 1));

    // The relay keeps streaming; only the downstream's walreceiver is paused.
    let walreceiver: i32 = standby
        .psql("SELECT pid FROM pg_stat_wal_receiver")
        .parse()
        .expect("walreceiver pid");
    // SAFETY: signalling a process the test started (the standby's walreceiver).
    unsafe { libc::kill(walreceiver, libc::SIGSTOP) };
    let mut commit = insert(&pg, 2);
    assert_waits(&pg, &mut commit);
    unsafe { libc::kill(walreceiver, libc::SIGCONT) };
    assert_completes(&mut commit);
    standby.wait_for_replay(pg.current_wal_lsn());
    assert_eq!(standby.psql("SELECT count(*) FROM t"), "2");
    pg.psql("ALTER SYSTEM RESET synchronous_standby_names");
    pg.psql("SELECT pg_reload_conf()");
    relay.stop();
}
