//! Self-tests of the integration harness (`tests/common`) against real PostgreSQL 15 servers:
//! if these fail, every other integration test's verdict is suspect.

mod common;

use std::path::Path;
use std::time::Instant;

use common::{password, psql_conn, roles, PgCluster, StandbyOptions};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn primary_starts_and_answers_sql() {
    let started = Instant::now();
    let pg = PgCluster::primary();
    eprintln!("primary started in {:?}", started.elapsed());

    assert!(pg.is_running());
    assert_eq!(pg.psql("SELECT 1 + 1"), "2");
    assert_eq!(pg.psql("SHOW server_version_num")[..2], *"15");
    assert_eq!(pg.psql("SHOW port"), pg.port().to_string());
    assert_eq!(pg.psql("SHOW wal_level"), "replica");
    assert_eq!(pg.psql("SHOW max_wal_senders"), "10");
    assert_eq!(pg.psql("SHOW max_replication_slots"), "10");
    assert_eq!(pg.psql("SHOW fsync"), "off");
    assert_eq!(pg.psql("SHOW listen_addresses"), "127.0.0.1");
    assert_eq!(
        pg.psql("SHOW unix_socket_directories"),
        pg.socket_dir().to_string_lossy()
    );
    assert_eq!(pg.psql("SHOW wal_segment_size"), "16MB");
    // Multi-statement scripts: each statement on its own, output rows joined by newlines.
    assert_eq!(
        pg.psql(
            "CREATE TABLE t (a int); INSERT INTO t VALUES (1), (2); SELECT a FROM t ORDER BY a;"
        ),
        "1\n2"
    );
    let err = pg.try_psql("SELECT * FROM no_such_table").unwrap_err();
    assert!(err.contains("does not exist"), "{err}");
    assert!(pg
        .server_log()
        .contains("database system is ready to accept connections"));
    assert_eq!(
        pg.conninfo("bob"),
        format!("host=127.0.0.1 port={} user=bob", pg.port())
    );
}

#[test]
fn wal_helpers_report_real_positions() {
    let pg = PgCluster::primary();
    let sysid = pg.system_identifier();
    assert!(sysid > 0);
    assert_eq!(
        pg.psql("SELECT system_identifier FROM pg_control_system()"),
        sysid.to_string()
    );
    assert_eq!(pg.timeline(), 1);

    let before = pg.current_wal_lsn();
    assert_eq!(common::parse_lsn(&pg.current_wal_lsn_str()), before);
    let after = pg.generate_wal(3);
    assert!(after >= before + 3 * 1024 * 1024, "{before:X} -> {after:X}");
    assert!(pg.current_wal_flush_lsn() <= pg.current_wal_lsn());

    let closed = pg.switch_wal();
    assert_eq!(closed, common::segment_name(1, after));
    assert_eq!(
        pg.psql(&format!(
            "SELECT pg_walfile_name('{}')",
            common::format_lsn(after)
        )),
        closed
    );
    let path = pg.wal_segment_path(&closed);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        common::WAL_SEGMENT_SIZE
    );
    // The next write goes to the next segment.
    pg.psql("CREATE TABLE after_switch (a int)");
    assert_ne!(common::segment_name(1, pg.current_wal_lsn()), closed);

    let slot_lsn = pg.create_physical_slot("harness_slot");
    assert!(slot_lsn > 0);
    assert_eq!(pg.slot_restart_lsn("harness_slot"), Some(slot_lsn));
    pg.drop_slot("harness_slot");
    assert_eq!(pg.slot_restart_lsn("harness_slot"), None);

    assert_eq!(common::format_lsn(0x1_0000_00A8), "1/A8");
    assert_eq!(common::parse_lsn("16/B374D848"), 0x16_B374_D848);
}

#[test]
fn each_role_authenticates_with_its_method_over_tcp() {
    let pg = PgCluster::primary();
    // The stored verifiers are of the kind each role's method needs.
    assert_eq!(
        pg.psql(&format!(
            "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = '{}'",
            roles::MD5
        )),
        "md5"
    );
    assert_eq!(
        pg.psql(&format!(
            "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = '{}'",
            roles::SCRAM
        )),
        "SCRAM-SHA-256$"
    );

    for role in [roles::MD5, roles::SCRAM, roles::PASSWORD] {
        let ok = psql_conn(
            &pg.conninfo(role),
            Some(&password(role)),
            "SELECT current_user",
        );
        assert!(ok.status.success(), "{role}: {}", stderr(&ok));
        assert_eq!(stdout(&ok), role);

        let bad = psql_conn(&pg.conninfo(role), Some("wrong"), "SELECT current_user");
        assert_eq!(bad.status.code(), Some(2), "{role} with a wrong password");
        assert!(
            stderr(&bad).contains(&format!(
                "password authentication failed for user \"{role}\""
            )),
            "{role}: {}",
            stderr(&bad)
        );

        let none = psql_conn(&pg.conninfo(role), None, "SELECT 1");
        assert_eq!(none.status.code(), Some(2), "{role} without a password");
        assert!(
            stderr(&none).contains("no password supplied"),
            "{}",
            stderr(&none)
        );
    }

    // The server logs which method it used: proves the per-role pg_hba lines matched.
    let log = pg.server_log();
    for (role, method) in [
        (roles::MD5, "md5"),
        (roles::SCRAM, "scram-sha-256"),
        (roles::PASSWORD, "password"),
    ] {
        assert!(
            log.contains(&format!(
                "connection authenticated: identity=\"{role}\" method={method}"
            )),
            "no authentication of {role} in the log"
        );
    }

    for role in [roles::TRUST, roles::SUPERUSER] {
        let ok = psql_conn(&pg.conninfo(role), Some("anything"), "SELECT current_user");
        assert!(ok.status.success(), "{role}: {}", stderr(&ok));
        assert_eq!(stdout(&ok), role);
    }

    // Replication connections use the `replication` lines.
    for role in [roles::MD5, roles::SCRAM, roles::TRUST] {
        let ident = psql_conn(
            &format!("{} replication=true", pg.conninfo(role)),
            Some(&password(role)),
            "IDENTIFY_SYSTEM",
        );
        assert!(ident.status.success(), "{role}: {}", stderr(&ident));
        let row = stdout(&ident);
        let sysid = row.split('|').next().unwrap();
        assert_eq!(sysid, pg.system_identifier().to_string(), "{row}");
    }
    let bad = psql_conn(
        &format!("{} replication=true", pg.conninfo(roles::SCRAM)),
        Some("wrong"),
        "IDENTIFY_SYSTEM",
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("password authentication failed"));

    // On a cluster without TLS the ssl-only role is always rejected.
    let sslonly = psql_conn(
        &pg.conninfo(roles::SSL_ONLY),
        Some(&password(roles::SSL_ONLY)),
        "SELECT 1",
    );
    assert_eq!(sslonly.status.code(), Some(2));
    assert!(
        stderr(&sslonly).contains("pg_hba.conf rejects connection"),
        "{}",
        stderr(&sslonly)
    );
    let nossl = psql_conn(
        &pg.conninfo(roles::NO_SSL),
        Some(&password(roles::NO_SSL)),
        "SELECT current_user",
    );
    assert!(nossl.status.success(), "{}", stderr(&nossl));
}

#[test]
fn catch_all_auth_method_applies_to_other_roles() {
    let pg = PgCluster::builder().auth("scram-sha-256").start();
    pg.psql("CREATE ROLE alice LOGIN PASSWORD 'alice-pw'");
    let ok = psql_conn(
        &pg.conninfo("alice"),
        Some("alice-pw"),
        "SELECT current_user",
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let bad = psql_conn(&pg.conninfo("alice"), Some("nope"), "SELECT 1");
    assert!(stderr(&bad).contains("password authentication failed for user \"alice\""));
    // Harness roles keep their own methods.
    let trust = psql_conn(&pg.conninfo(roles::TRUST), None, "SELECT 1");
    assert!(trust.status.success(), "{}", stderr(&trust));
}

#[test]
fn ssl_cluster_accepts_verify_full() {
    let pg = PgCluster::builder().ssl(true).start();
    assert_eq!(pg.psql("SHOW ssl"), "on");
    let ca = pg.ca_cert_path().to_string_lossy().into_owned();
    assert!(Path::new(&ca).exists());
    let check_ssl = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

    for host in ["host=localhost hostaddr=127.0.0.1", "host=127.0.0.1"] {
        let conninfo = format!(
            "{host} port={} user={} sslmode=verify-full sslrootcert={ca}",
            pg.port(),
            roles::SSL_ONLY
        );
        let out = psql_conn(&conninfo, Some(&password(roles::SSL_ONLY)), check_ssl);
        assert!(out.status.success(), "{host}: {}", stderr(&out));
        assert_eq!(stdout(&out), "t");
    }

    // The certificate names localhost and 127.0.0.1 only.
    let mismatch = psql_conn(
        &format!(
            "host=otherhost hostaddr=127.0.0.1 port={} user={} sslmode=verify-full sslrootcert={ca}",
            pg.port(),
            roles::SSL_ONLY
        ),
        Some(&password(roles::SSL_ONLY)),
        "SELECT 1",
    );
    assert_eq!(mismatch.status.code(), Some(2));
    assert!(
        stderr(&mismatch).contains("does not match host name \"otherhost\""),
        "{}",
        stderr(&mismatch)
    );

    // hostssl / hostnossl split.
    let plain_sslonly = psql_conn(
        &format!("{} sslmode=disable", pg.conninfo(roles::SSL_ONLY)),
        Some(&password(roles::SSL_ONLY)),
        "SELECT 1",
    );
    assert_eq!(plain_sslonly.status.code(), Some(2));
    assert!(
        stderr(&plain_sslonly).contains("pg_hba.conf rejects connection")
            && stderr(&plain_sslonly).contains("no encryption"),
        "{}",
        stderr(&plain_sslonly)
    );
    let ssl_nossl = psql_conn(
        &format!("{} sslmode=require", pg.conninfo(roles::NO_SSL)),
        Some(&password(roles::NO_SSL)),
        "SELECT 1",
    );
    assert_eq!(ssl_nossl.status.code(), Some(2));
    assert!(
        stderr(&ssl_nossl).contains("pg_hba.conf rejects connection"),
        "{}",
        stderr(&ssl_nossl)
    );
    let plain_nossl = psql_conn(
        &format!("{} sslmode=disable", pg.conninfo(roles::NO_SSL)),
        Some(&password(roles::NO_SSL)),
        check_ssl,
    );
    assert!(plain_nossl.status.success(), "{}", stderr(&plain_nossl));
    assert_eq!(stdout(&plain_nossl), "f");

    // A client certificate from the same CA is accepted for `cert` authentication.
    pg.psql("CREATE ROLE certuser LOGIN");
    pg.add_hba_line("hostssl all certuser 127.0.0.1/32 cert");
    pg.reload();
    let (crt, key) = pg.client_cert("certuser");
    let out = psql_conn(
        &format!(
            "{} sslmode=verify-full sslrootcert={ca} sslcert={} sslkey={}",
            pg.conninfo("certuser"),
            crt.display(),
            key.display()
        ),
        None,
        "SELECT current_user",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "certuser");
}

#[test]
fn standby_replays_primary_writes_and_promotes() {
    let primary = PgCluster::primary();
    primary.psql("CREATE TABLE replicated (v text); INSERT INTO replicated VALUES ('before')");
    let started = Instant::now();
    let standby = PgCluster::standby_of(&primary, StandbyOptions::new().slot("standby1"));
    eprintln!("standby created and started in {:?}", started.elapsed());
    assert_ne!(standby.port(), primary.port());
    assert!(standby.is_in_recovery());
    assert_eq!(standby.system_identifier(), primary.system_identifier());

    primary.psql("INSERT INTO replicated VALUES ('after')");
    let lsn = primary.current_wal_lsn();
    standby.wait_for_replay(lsn);
    assert_eq!(
        standby.psql("SELECT string_agg(v, ',' ORDER BY v) FROM replicated"),
        "after,before"
    );

    let stats = primary.replication_stats();
    assert_eq!(stats.len(), 1, "{stats:?}");
    assert_eq!(stats[0].state, "streaming");
    assert!(stats[0].sent_lsn.unwrap() >= lsn);
    assert!(primary.slot_restart_lsn("standby1").is_some());

    standby.promote();
    assert!(!standby.is_in_recovery());
    assert_eq!(standby.timeline(), 2);
    standby.psql("INSERT INTO replicated VALUES ('promoted')");
    assert!(
        std::fs::read_to_string(standby.wal_segment_path("00000002.history"))
            .unwrap()
            .starts_with("1\t")
    );
}

#[test]
fn standby_of_ssl_primary_outlives_it_and_takes_primary_conninfo() {
    let primary = PgCluster::builder()
        .ssl(true)
        .conf("wal_sender_timeout = '7s'")
        .start();
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} password={} sslmode=verify-full sslrootcert={} application_name=custom",
        primary.port(),
        roles::SCRAM,
        password(roles::SCRAM),
        primary.ca_cert_path().display()
    );
    let mut standby =
        PgCluster::standby_of(&primary, StandbyOptions::new().primary_conninfo(conninfo));
    // Extra conf lines of the primary are carried over; ssl files are the standby's own.
    assert_eq!(standby.psql("SHOW wal_sender_timeout"), "7s");
    assert_eq!(standby.psql("SHOW ssl"), "on");
    assert!(standby.ca_cert_path().starts_with(standby.socket_dir()));
    common::wait_until("standby streaming as 'custom'", common::TIMEOUT, || {
        primary
            .replication_stats()
            .iter()
            .any(|s| s.application_name == "custom" && s.state == "streaming")
    });
    drop(primary);
    standby.restart();
    assert!(standby.is_in_recovery());
}

#[test]
fn restart_and_kill9_keep_committed_data() {
    let mut pg = PgCluster::primary();
    pg.psql("CREATE TABLE durable (a int); INSERT INTO durable VALUES (42)");
    let first_pid = pg.pid().unwrap();
    pg.restart();
    assert_ne!(pg.pid().unwrap(), first_pid);
    assert!(!common::pid_alive(first_pid));
    assert_eq!(pg.psql("SELECT a FROM durable"), "42");

    pg.psql("INSERT INTO durable VALUES (43)");
    let pid = pg.pid().unwrap();
    let children = common::children_of(pid);
    assert!(!children.is_empty(), "postmaster has no children?");
    pg.kill9();
    assert!(!pg.is_running());
    assert!(!common::pid_alive(pid));
    assert!(children.iter().all(|&c| !common::pid_alive(c)));
    pg.start();
    assert_eq!(
        pg.psql("SELECT string_agg(a::text, ',' ORDER BY a) FROM durable"),
        "42,43"
    );
    assert!(pg.server_log().contains("database system was interrupted"));

    pg.stop();
    assert!(!pg.is_running());
    assert!(pg.try_psql("SELECT 1").is_err());
    pg.start();
    assert_eq!(pg.psql("SELECT count(*) FROM durable"), "2");
}

#[test]
fn drop_leaves_no_process_and_no_dir() {
    let pg = PgCluster::builder().fsync(true).start();
    assert_eq!(pg.psql("SHOW fsync"), "on");
    let pid = pg.pid().unwrap();
    let mut pids = common::children_of(pid);
    pids.push(pid);
    let root = pg.socket_dir().to_path_buf();
    assert!(root.exists());
    drop(pg);
    for p in &pids {
        assert!(!common::pid_alive(*p), "process {p} survived the drop");
        assert!(
            !Path::new(&format!("/proc/{p}")).exists(),
            "process {p} left a zombie"
        );
    }
    assert!(!root.exists(), "{} survived the drop", root.display());
}

#[test]
fn drop_during_panic_cleans_up() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let pg = PgCluster::primary();
        tx.send((pg.pid().unwrap(), pg.socket_dir().to_path_buf()))
            .unwrap();
        panic!("deliberate panic with a running cluster");
    })
    .join();
    assert!(result.is_err());
    let (pid, root) = rx.recv().unwrap();
    assert!(!common::pid_alive(pid));
    assert!(!root.exists());
}

#[test]
fn parallel_clusters_do_not_collide() {
    let clusters: Vec<PgCluster> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|_| s.spawn(PgCluster::primary)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ports: Vec<u16> = clusters.iter().map(|c| c.port()).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 3);
    let sysids: std::collections::HashSet<u64> =
        clusters.iter().map(|c| c.system_identifier()).collect();
    assert_eq!(sysids.len(), 3, "each cluster has its own initdb");
    for c in &clusters {
        assert_eq!(c.psql("SHOW port"), c.port().to_string());
    }
}

#[test]
fn tempdir_is_writable_by_postgres() {
    let dir = common::tempdir();
    let target = dir.path().join("written-by-postgres");
    let out = common::pg_command("pg_controldata")
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    // Any program run through pg_command can write there (as postgres when we are root).
    let status = {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(format!("echo ok > '{}'", target.display()));
        if let Some((uid, gid)) = common::postgres_ids() {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd.status().unwrap()
    };
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "ok\n");
    assert!(common::pg_bin("pg_receivewal").exists());
    assert!(common::walferry_bin().exists());
}

#[test]
fn first_start_moves_off_a_taken_port() {
    let squatter = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let pg = PgCluster::builder().port(taken).start();
    assert_ne!(pg.port(), taken);
    assert_eq!(pg.psql("SHOW port"), pg.port().to_string());
    assert!(pg
        .server_log()
        .contains("could not bind IPv4 address \"127.0.0.1\""));
    let ok = psql_conn(&pg.conninfo(roles::TRUST), None, "SELECT 1");
    assert!(ok.status.success(), "{}", stderr(&ok));
}
