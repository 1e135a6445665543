//! The relay as the stable upstream of real standbys through failures: the relay killed
//! and restarted, a standby restarted after the primary recycled the WAL it needs, and a
//! timeline switch upstream passed through to the standbys.

mod common;
mod receive_support;
mod relay_support;

use common::{tempdir, PgCluster, StandbyOptions};
use receive_support::*;
use relay_support::{standby_via, Relay};

fn count(pg: &PgCluster) -> String {
    pg.psql("SELECT count(*) FROM t")
}

/// The standby's walreceiver: (sender port, status, received timeline).
fn wal_receiver(standby: &PgCluster) -> (u16, String, u32) {
    let out = standby.psql("SELECT sender_port, status, received_tli FROM pg_stat_wal_receiver");
    let f: Vec<&str> = out.split('|').collect();
    if f.len() != 3 {
        return (0, String::new(), 0);
    }
    (
        f[0].parse().unwrap_or(0),
        f[1].to_string(),
        f[2].parse().unwrap_or(0),
    )
}

#[test]
fn standbys_reconnect_and_catch_up_after_the_relay_is_killed() {
    relay_killed(&["-S", "relay"]);
}

/// As above with `--serve-unflushed`: the standby may hold WAL the killed relay had not
/// made durable; the restarted relay streams it again from its slot, refuses the standby
/// until it has, and then serves it on.
#[test]
fn a_relay_serving_unflushed_wal_is_killed_and_its_standby_catches_up() {
    relay_killed(&["-S", "relay", "--serve-unflushed"]);
}

fn relay_killed(flags: &[&str]) {
    let pg = PgCluster::primary();
    pg.create_physical_slot("relay");
    let dir = tempdir();
    let mut relay = Relay::start(&pg, dir.path(), flags);
    let port = relay.port;
    let standby = standby_via(&pg, relay.conninfo("standby1"));
    pg.psql("CREATE TABLE t (id int PRIMARY KEY)");
    pg.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    standby.wait_for_replay(pg.current_wal_lsn());

    relay.proc.kill9();
    // Written while the relay is down: the primary keeps it for the relay's slot.
    pg.psql("INSERT INTO t SELECT generate_series(1001, 5000)");
    emit_wal(&pg, 20);
    let relay = Relay::start_on(&pg, dir.path(), port, flags);
    pg.psql("INSERT INTO t SELECT generate_series(5001, 6000)");
    let lsn = pg.current_wal_lsn();
    standby.wait_for_replay(lsn);
    assert_eq!(count(&standby), "6000", "nothing lost, nothing doubled");
    assert_eq!(wal_receiver(&standby).0, relay.port);

    // The standby restarted: it comes back to the relay by itself.
    let mut standby = standby;
    standby.restart();
    pg.psql("INSERT INTO t SELECT generate_series(6001, 7000)");
    standby.wait_for_replay(pg.current_wal_lsn());
    assert_eq!(count(&standby), "7000");

    small_commit(&pg);
    pg.switch_wal();
    relay.stop();
    assert_complete_segments_match(dir.path(), &pg);
}

#[test]
fn a_standby_catches_up_from_the_relays_archive_after_the_primary_recycled_its_wal() {
    catch_up_from_the_relays_archive(&[]);
}

/// The same from zstd-compressed segments, decoded on the relay's blocking threads while
/// it goes on streaming.
#[test]
fn a_standby_catches_up_from_a_compressed_relay_archive() {
    let dir = catch_up_from_the_relays_archive(&["-Z", "zstd"]);
    let compressed = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".zst")
        })
        .count();
    assert!(compressed >= 3, "{compressed} .zst segments");
}

/// A standby made from a base backup and left down while the primary writes and then
/// recycles the WAL: it catches up from the relay's archive (started with `flags`).
/// Returns the archive directory.
fn catch_up_from_the_relays_archive(flags: &[&str]) -> tempfile::TempDir {
    let pg = PgCluster::builder()
        .conf("wal_keep_size = 0")
        .conf("max_wal_size = '64MB'")
        .conf("min_wal_size = '32MB'")
        .start();
    pg.create_physical_slot("relay");
    let dir = tempdir();
    let relay = Relay::start(&pg, dir.path(), &[&["-S", "relay"], flags].concat());
    // A base backup taken now, its standby left down while the primary moves on.
    let mut standby = PgCluster::standby_of(
        &pg,
        StandbyOptions::new()
            .primary_conninfo(relay.conninfo("late"))
            .no_start(),
    );
    let first_needed = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, pad text)");
    pg.psql("INSERT INTO t SELECT g, repeat('p', 500) FROM generate_series(1, 200000) g");
    emit_wal(&pg, 80);
    // The relay has archived everything, so its slot lets the primary recycle the WAL.
    let target = pg.current_wal_lsn();
    common::wait_until("the relay to confirm the WAL", common::TIMEOUT, || {
        pg.psql("SELECT confirmed_flush_lsn IS NULL AND restart_lsn >= pg_current_wal_lsn() - 16*1024*1024 FROM pg_replication_slots WHERE slot_name = 'relay'") == "t"
    });
    pg.psql("CHECKPOINT");
    pg.switch_wal();
    pg.psql("CHECKPOINT");
    let on_primary = pg.psql(&format!(
        "SELECT count(*) FROM pg_ls_waldir() WHERE name = '{first_needed}'"
    ));
    assert_eq!(on_primary, "0", "the primary recycled {first_needed}");

    // More than the relay's 64 MiB in-memory tail: served from the archive's files.
    standby.start();
    standby.wait_for_replay(target);
    assert_eq!(count(&standby), "200000");
    assert_eq!(wal_receiver(&standby).0, relay.port);
    relay.stop();
    dir
}

#[test]
fn standbys_follow_a_timeline_switch_upstream() {
    let pg = PgCluster::primary();
    pg.create_physical_slot("relay");
    // S1: a standby of the primary, promoted later; the relay moves to it.
    let s1 = PgCluster::standby_of(&pg, StandbyOptions::new().slot("s1"));
    let dir = tempdir();
    let relay = Relay::start(&pg, dir.path(), &["-S", "relay"]);
    let port = relay.port;
    let downstream = standby_via(&pg, relay.conninfo("downstream"));
    pg.psql("CREATE TABLE t (id int PRIMARY KEY)");
    pg.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    let lsn = pg.current_wal_lsn();
    downstream.wait_for_replay(lsn);
    s1.wait_for_replay(lsn);

    // Failover: the primary stops (cleanly: S1 has all of it), S1 is promoted.
    let mut pg = pg;
    pg.stop();
    relay.stop();
    s1.promote();
    s1.psql("INSERT INTO t SELECT generate_series(1001, 3000)");
    s1.create_physical_slot("relay");
    let relay = Relay::start_on(&s1, dir.path(), port, &["-S", "relay"]);
    s1.psql("INSERT INTO t SELECT generate_series(3001, 4000)");
    let lsn = s1.current_wal_lsn();
    downstream.wait_for_replay(lsn);
    assert_eq!(count(&downstream), "4000");
    let (sender, status, tli) = wal_receiver(&downstream);
    assert_eq!((sender, status.as_str(), tli), (relay.port, "streaming", 2));
    let log = relay.stop();
    assert!(log.contains("timeline 2"), "{log}");
}

/// `-d` lists both nodes with `target_session_attrs=read-write`: when the primary fails and
/// its standby is promoted, the running relay finds the new primary by itself, and its
/// downstream follows to the new timeline; nothing is reconfigured or restarted.
#[test]
fn a_running_relay_follows_a_failover_to_whichever_node_is_writable() {
    let pg = PgCluster::primary();
    pg.create_physical_slot("relay");
    let s1 = PgCluster::standby_of(&pg, StandbyOptions::new().slot("s1"));
    let dir = tempdir();
    let both = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres target_session_attrs=read-write",
        pg.port(),
        s1.port()
    );
    let mut cmd = relay_support::relay_command(&pg, dir.path(), common::free_port(), &[]);
    // The last -d wins, as with pg_receivewal's flags.
    cmd.args(["-d", &both, "-S", "relay"]);
    let port = cmd
        .get_args()
        .skip_while(|a| *a != "--listen")
        .nth(1)
        .and_then(|a| a.to_str()?.rsplit(':').next()?.parse::<u16>().ok())
        .unwrap();
    let mut proc = Proc::spawn(&mut cmd);
    common::wait_until("the relay to listen", common::TIMEOUT, || {
        assert!(proc.is_running(), "{}", proc.stderr());
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let downstream = standby_via(
        &pg,
        format!("host=127.0.0.1 port={port} user=postgres application_name=downstream"),
    );
    pg.psql("CREATE TABLE t (id int PRIMARY KEY)");
    pg.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    let lsn = pg.current_wal_lsn();
    downstream.wait_for_replay(lsn);
    s1.wait_for_replay(lsn);

    // The relay's slot exists on S1 before the failover (a standby keeps physical slots
    // through its promotion), so the relay never meets a new primary without it.
    s1.create_physical_slot("relay");
    let mut pg = pg;
    pg.stop();
    s1.promote();
    s1.psql("INSERT INTO t SELECT generate_series(1001, 2000)");
    let lsn = s1.current_wal_lsn();
    downstream.wait_for_replay(lsn);
    assert_eq!(count(&downstream), "2000");
    assert_eq!(
        wal_receiver(&downstream).2,
        2,
        "the downstream is on timeline 2"
    );
    assert!(
        proc.is_running(),
        "the relay rode through: {}",
        proc.stderr()
    );
    proc.signal(libc::SIGTERM);
    assert_eq!(proc.wait().code(), Some(0), "{}", proc.stderr());
    let log = proc.stderr();
    assert!(log.contains("timeline 2"), "{log}");
}
