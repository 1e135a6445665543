//! The walsender side of the protocol as clients see it: refusals with PostgreSQL's texts
//! (and a connection that stays usable after an ERROR), TLS, and `walferry receive` as a
//! downstream.

mod common;
mod receive_support;
mod relay_support;

use std::process::Output;

use common::{client_command, pg_bin, tempdir, PgCluster, StandbyOptions};
use receive_support::*;
use relay_support::Relay;

/// psql against the relay with `conninfo` extra settings, running each command in turn
/// (psql goes on after an error).
fn psql(relay: &Relay, extra: &str, commands: &[&str]) -> Output {
    let mut cmd = client_command(pg_bin("psql"));
    cmd.args(["-XAtq", "-d"])
        .arg(format!("{} {extra}", relay.conninfo("psql")));
    for c in commands {
        cmd.args(["-c", c]);
    }
    // psql gives up after PGCONNECT_TIMEOUT, and every command here answers at once.
    cmd.output().expect("run psql")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn refusals_carry_postgresqls_messages_and_the_connection_stays_usable() {
    let pg = PgCluster::primary();
    pg.create_physical_slot("relay");
    let dir = tempdir();
    let relay = Relay::start(&pg, dir.path(), &["-S", "relay"]);
    let sysid = pg.system_identifier().to_string();

    let out = psql(
        &relay,
        "replication=true",
        &[
            "BOGUS",
            "BASE_BACKUP",
            "START_REPLICATION SLOT nope 0/1000000",
            "START_REPLICATION 0/0",
            "START_REPLICATION 9/0",
            "TIMELINE_HISTORY 5",
            "SHOW shared_buffers",
            "DROP_REPLICATION_SLOT nope",
            "IDENTIFY_SYSTEM",
            "SHOW wal_segment_size",
            "SHOW data_directory_mode",
        ],
    );
    let err = text(&out.stderr);
    for expected in [
        "ERROR:  syntax error at or near \"BOGUS\"",
        "ERROR:  BASE_BACKUP is not supported by walferry relay",
        "ERROR:  replication slot \"nope\" does not exist",
        "ERROR:  requested WAL segment 000000010000000000000000 has already been removed",
        "ERROR:  requested starting point 9/0 is ahead of the WAL flush position of this server",
        "ERROR:  could not open file \"pg_wal/00000005.history\": No such file or directory",
        "ERROR:  unrecognized configuration parameter \"shared_buffers\"",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    // After all those errors, the same connection answers.
    let rows: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows[0].starts_with(&format!("{sysid}|1|")), "{rows:?}");
    assert_eq!(rows[1], "16MB");
    assert_eq!(rows[2], "0700");

    // A connection that is not a replication connection is refused at startup.
    let out = psql(&relay, "", &["SELECT 1"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("walferry relay accepts only replication connections"),
        "{}",
        text(&out.stderr)
    );
    relay.stop();
}

#[test]
fn tls_is_offered_and_required_when_configured() {
    let pg = PgCluster::builder().ssl(true).start();
    pg.create_physical_slot("relay");
    let ssl = pg.ssl_files().clone();
    let dir = tempdir();
    let cert = ssl.server_cert.to_str().unwrap();
    let key = ssl.server_key.to_str().unwrap();
    let relay = Relay::start(
        &pg,
        dir.path(),
        &["-S", "relay", "--tls-cert", cert, "--tls-key", key],
    );
    let out = psql(
        &relay,
        "replication=true sslmode=disable",
        &["IDENTIFY_SYSTEM"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("walferry relay accepts only TLS connections"),
        "{}",
        text(&out.stderr)
    );
    let verify = format!(
        "replication=true sslmode=verify-ca sslrootcert={}",
        ssl.ca_cert.display()
    );
    let out = psql(&relay, &verify, &["IDENTIFY_SYSTEM"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(&pg.system_identifier().to_string()));

    // walferry receive streams from the relay over TLS, byte-identical to the primary, from
    // the slot it created there (which reserves WAL at once).
    let downstream = tempdir();
    let relay_conn = format!("{} {verify}", relay.conninfo("wf"));
    let wf = |extra: &[&str]| {
        let mut cmd = client_command(common::walferry_bin());
        cmd.arg("receive")
            .arg("-d")
            .arg(&relay_conn)
            .args(["-S", "wf"])
            .args(extra);
        cmd
    };
    run_ok(&mut wf(&["--create-slot"]));
    emit_wal(&pg, 20);
    small_commit(&pg);
    let endpos = flush_lsn(&pg);
    run_ok(&mut wf(&[
        "-E",
        &common::format_lsn(endpos),
        "-D",
        downstream.path().to_str().unwrap(),
    ]));
    let got = assert_complete_segments_match(downstream.path(), &pg);
    assert!(!got.is_empty());
    relay.stop();
}

#[test]
fn a_bad_listen_address_or_tls_file_is_refused_clearly() {
    let pg = PgCluster::primary();
    let dir = tempdir();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let out = run_bounded(
        &mut relay_support::relay_command(&pg, dir.path(), port, &[]),
        RUN_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("could not listen on 127.0.0.1:{port}")),
        "{err}"
    );

    let out = run_bounded(
        &mut relay_support::relay_command(
            &pg,
            dir.path(),
            common::free_port(),
            &[
                "--tls-cert",
                "/nonexistent.crt",
                "--tls-key",
                "/nonexistent.key",
            ],
        ),
        RUN_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent.crt"),
        "{}",
        text(&out.stderr)
    );
}

/// An auth file with one user, made by `walferry auth-verifier` (mode 0600).
fn auth_file(dir: &std::path::Path, user: &str, password: &str) -> std::path::PathBuf {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Stdio;
    let mut child = client_command(common::walferry_bin())
        .args(["auth-verifier", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let line = text(&out.stdout);
    assert!(
        line.starts_with(&format!("{user} SCRAM-SHA-256$4096:")),
        "{line}"
    );
    assert!(!line.contains(password));
    let path = dir.join("relay.users");
    std::fs::write(&path, format!("# downstreams\n{line}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[test]
fn scram_checks_passwords_against_the_auth_file_with_and_without_tls() {
    let pg = PgCluster::builder().ssl(true).start();
    pg.create_physical_slot("relay");
    let ssl = pg.ssl_files().clone();
    let dir = tempdir();
    let secrets = tempdir();
    let users = auth_file(secrets.path(), "rep", "right pw");
    let relay = Relay::start(
        &pg,
        dir.path(),
        &[
            "-S",
            "relay",
            "--auth",
            "scram",
            "--auth-file",
            users.to_str().unwrap(),
            "--tls-cert",
            ssl.server_cert.to_str().unwrap(),
            "--tls-key",
            ssl.server_key.to_str().unwrap(),
            "--tls-optional",
        ],
    );
    let conn = |user: &str, password: &str, extra: &str| {
        format!(
            "host=127.0.0.1 port={} user={user} password='{password}' replication=true {extra}",
            relay.port
        )
    };
    let identify = |conninfo: String| {
        let out = client_command(pg_bin("psql"))
            .args(["-XAtq", "-d", &conninfo, "-c", "IDENTIFY_SYSTEM"])
            .output()
            .unwrap();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let sysid = pg.system_identifier().to_string();
    for extra in [
        "sslmode=disable",
        "sslmode=require channel_binding=require",
        "sslmode=require channel_binding=disable",
    ] {
        let (ok, out, err) = identify(conn("rep", "right pw", extra));
        assert!(ok && out.starts_with(&sysid), "{extra}: {err}");
    }
    for (user, password) in [("rep", "wrong"), ("nobody", "right pw")] {
        let (ok, _, err) = identify(conn(user, password, "sslmode=disable"));
        assert!(!ok);
        assert!(
            err.contains(&format!(
                "FATAL:  password authentication failed for user \"{user}\""
            )),
            "{err}"
        );
    }
    // Without TLS there is nothing to bind to: libpq's own refusal.
    let (ok, _, err) = identify(conn(
        "rep",
        "right pw",
        "sslmode=disable channel_binding=require",
    ));
    assert!(!ok);
    assert!(err.contains("channel binding"), "{err}");

    // A real standby authenticates the same way.
    let standby = PgCluster::standby_of(
        &pg,
        StandbyOptions::new().primary_conninfo(format!(
            "host=127.0.0.1 port={} user=rep password='right pw' application_name=s1 sslmode=require",
            relay.port
        )),
    );
    pg.psql("CREATE TABLE t AS SELECT 1 AS x");
    standby.wait_for_replay(pg.current_wal_lsn());
    assert_eq!(standby.psql("SELECT count(*) FROM t"), "1");
    relay.stop();
}

#[test]
fn a_group_readable_auth_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let pg = PgCluster::primary();
    let dir = tempdir();
    let secrets = tempdir();
    let users = auth_file(secrets.path(), "rep", "pw");
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = run_bounded(
        &mut relay_support::relay_command(
            &pg,
            dir.path(),
            common::free_port(),
            &["--auth", "scram", "--auth-file", users.to_str().unwrap()],
        ),
        RUN_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("chmod 0600"), "{err}");
    assert!(
        !err.contains("SCRAM-SHA-256$"),
        "never print a verifier: {err}"
    );
}

/// `relay --create-slot` manages the upstream's slot as `receive` does, without --listen.
#[test]
fn relay_creates_its_upstream_slot_without_listening() {
    let pg = PgCluster::primary();
    let mut cmd = client_command(common::walferry_bin());
    cmd.args(["relay", "-d", &pg.conninfo(common::roles::SUPERUSER)])
        .args(["-S", "relay_slot", "--create-slot"]);
    run_ok(&mut cmd);
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'relay_slot'"),
        "1"
    );
}
