//! `walferry relay` with real PostgreSQL 15 downstreams: standbys replicate through the relay
//! (and not from the primary), pg_receivewal streams byte-identical segments from it, and
//! the relay's archive is the one `receive` would write.

mod common;
mod receive_support;
mod relay_support;

use common::{format_lsn, tempdir, PgCluster, StandbyOptions, WAL_SEGMENT_SIZE};
use receive_support::*;
use relay_support::Relay;

/// The standby's walreceiver: the port it streams from and its status.
fn wal_receiver(standby: &PgCluster) -> (u16, String) {
    let out = standby.psql("SELECT sender_port, status FROM pg_stat_wal_receiver");
    let (port, status) = out.split_once('|').unwrap_or(("0", ""));
    (port.parse().unwrap_or(0), status.to_string())
}

#[test]
fn two_real_standbys_replicate_through_the_relay() {
    let pg = PgCluster::primary();
    pg.create_physical_slot("relay");
    let dir = tempdir();
    let metrics_port = common::free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let relay = Relay::start(&pg, dir.path(), &["-S", "relay", "--metrics", &metrics]);

    // standby1 keeps a slot on the relay; standby2 streams without one.
    relay_command(&relay, "CREATE_REPLICATION_SLOT standby1 PHYSICAL");
    let standbys: Vec<PgCluster> = ["standby1", "standby2"]
        .iter()
        .map(|name| {
            let mut opts = StandbyOptions::new().primary_conninfo(relay.conninfo(name));
            if *name == "standby1" {
                opts = opts.conf("primary_slot_name = 'standby1'");
            } else {
                opts = opts
                    .conf("hot_standby_feedback = on")
                    .conf("wal_receiver_status_interval = 1");
            }
            PgCluster::standby_of(&pg, opts)
        })
        .collect();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    pg.psql("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g");
    emit_wal(&pg, 20);
    let lsn = pg.current_wal_lsn();
    for s in &standbys {
        s.wait_for_replay(lsn);
        assert_eq!(s.psql("SELECT count(*) FROM t"), "20000");
        let (port, status) = wal_receiver(s);
        assert_eq!(port, relay.port, "the standby streams from the relay");
        assert_eq!(status, "streaming");
    }
    // The slot follows standby1's flush position (a walreceiver reports each flush).
    common::wait_until("the slot to advance", common::TIMEOUT, || {
        read_slot(&relay, "standby1")
            .flatten()
            .is_some_and(|l| l >= lsn)
    });
    // /metrics shows each downstream as pg_stat_replication would.
    common::wait_until("the downstream metrics", common::TIMEOUT, || {
        let (status, body) = common::http_get(metrics_port, "/metrics").unwrap_or_default();
        status == 200
            && ["standby1", "standby2"].iter().all(|name| {
                body.lines().any(|l| {
                    l.starts_with("walferry_downstream_flush_lsn_bytes{")
                        && l.contains(&format!("application_name=\"{name}\""))
                        && l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()) >= Some(lsn)
                })
            })
    });
    // standby2's hot-standby feedback reaches the primary through the relay: the relay's
    // slot there holds back vacuum for standby2's queries.
    common::wait_until("the feedback to reach the primary", common::TIMEOUT, || {
        pg.psql("SELECT xmin IS NOT NULL FROM pg_replication_slots WHERE slot_name = 'relay'")
            == "t"
    });
    // The primary serves one walsender: the relay's.
    let stats = pg.replication_stats();
    let names: Vec<&str> = stats.iter().map(|s| s.application_name.as_str()).collect();
    assert_eq!(names, ["walferry"], "{stats:?}");

    // The archive holds the primary's WAL, byte for byte.
    small_commit(&pg);
    pg.switch_wal();
    let relay_log = relay.stop();
    assert!(
        relay_log.contains("downstream \"standby1\""),
        "the relay logs its downstreams: {relay_log}"
    );
    let complete = assert_complete_segments_match(dir.path(), &pg);
    assert!(complete.len() >= 2, "{complete:?}");
}

#[test]
fn pg_receivewal_from_the_relay_gets_the_primarys_segments() {
    let pg = PgCluster::primary();
    pg.create_physical_slot("relay");
    let dir = tempdir();
    let relay = Relay::start(&pg, dir.path(), &["-S", "relay"]);

    // pg_receivewal, pointed at the relay, creates its slot there (reserving WAL from the
    // relay's flush position), then streams.
    let relay_conn = format!("host=127.0.0.1 port={} user=postgres", relay.port);
    let create = common::run(
        common::client_command(common::pg_bin("pg_receivewal")).args([
            "-d",
            &relay_conn,
            "-S",
            "prw",
            "--create-slot",
            "--no-password",
        ]),
    );
    assert!(
        create.status.success(),
        "{}",
        String::from_utf8_lossy(&create.stderr)
    );
    // As against PostgreSQL: pg_receivewal's slot does not reserve WAL until it streams.
    assert_eq!(read_slot(&relay, "prw"), Some(None));
    emit_wal(&pg, 40);
    small_commit(&pg);
    let endpos = flush_lsn(&pg);
    assert_ne!(endpos % WAL_SEGMENT_SIZE, 0);
    let downstream = tempdir();
    let mut prw = common::client_command(common::pg_bin("pg_receivewal"));
    prw.arg("-D")
        .arg(downstream.path())
        .args(["-d", &relay_conn, "-S", "prw", "--no-password", "-E"])
        .arg(format_lsn(endpos));
    run_to_endpos_ok(&pg, &mut prw);

    // Its complete segments are the primary's, from the relay's starting segment on.
    let got = assert_complete_segments_match(downstream.path(), &pg);
    assert!(!got.is_empty(), "{:?}", list_dir(downstream.path()));
    // ... and so is its .partial, up to the end position.
    let last = common::segment_name(1, endpos);
    assert_partial_prefix(
        &downstream.path().join(format!("{last}.partial")),
        &pg.wal_segment_path(&last),
        segment_start_lsn(&last),
        endpos,
    );
    // The relay kept the slot pg_receivewal created, with its position, across a restart.
    relay.stop();
    let slots = std::fs::read_to_string(dir.path().join(".walferry-slots.json")).unwrap();
    assert!(slots.contains("\"prw\""), "{slots}");
    let relay = Relay::start(&pg, dir.path(), &["-S", "relay"]);
    // pg_receivewal reports its flush position when it starts streaming (and every -s
    // seconds, not reached here): the slot holds that.
    let restart = read_slot(&relay, "prw").expect("kept").expect("advanced");
    assert_eq!(restart % WAL_SEGMENT_SIZE, 0, "{}", format_lsn(restart));
    assert!(restart < endpos, "{} ({slots})", format_lsn(restart));
    assert!(read_slot(&relay, "nope").is_none());
    relay.stop();
}

/// Run one replication command on the relay with psql; its output rows.
fn relay_command(relay: &Relay, command: &str) -> String {
    let out = common::run(common::client_command(common::pg_bin("psql")).args([
        "-XAtq",
        "-d",
        &format!("{} replication=true", relay.conninfo("psql")),
        "-c",
        command,
    ]));
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `READ_REPLICATION_SLOT name` on the relay, through psql: `None` for a slot that does not
/// exist (PostgreSQL's row of NULLs), else its restart LSN if it has one.
fn read_slot(relay: &Relay, name: &str) -> Option<Option<u64>> {
    let row = relay_command(relay, &format!("READ_REPLICATION_SLOT {name}"));
    let fields: Vec<&str> = row.split('|').collect();
    match fields.first() {
        Some(&"physical") => Some((!fields[1].is_empty()).then(|| common::parse_lsn(fields[1]))),
        _ => {
            assert_eq!(row, "||", "a missing slot reads as NULLs");
            None
        }
    }
}
