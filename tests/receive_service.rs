//! `walferry receive` run as a service against a real PostgreSQL 15 primary: flags read from
//! `--config FILE` (the command line winning, unknown keys refused), and the `--metrics`
//! endpoint: `/metrics` reports exactly what reached the archive, `/healthz` is 200 while
//! streaming and 503 with the reason once the server is gone while walferry retries.

mod common;
mod receive_support;

use std::path::Path;
use std::time::Duration;

use common::{format_lsn, free_port, segment_name, tempdir, wait_until, PgCluster};
use receive_support::*;

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("walferry.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn config_file_flags_are_used_and_the_command_line_wins() {
    let pg = PgCluster::primary();
    let slot_lsn = pg.create_physical_slot("wfconf");
    emit_wal(&pg, 20);
    small_commit(&pg);
    let endpos = flush_lsn(&pg);
    let dir = tempdir();
    let etc = tempdir();
    // Directory, connection, compression and end position come from the file; its slot
    // does not exist, so only the command line's -S lets the run succeed.
    let config = write_config(
        etc.path(),
        &format!(
            "# walferry receive\n\
             directory = {:?}\n\
             dbname = {:?}\n\
             slot = \"no_such_slot\"\n\
             compress = \"lz4\"\n\
             endpos = \"{}\"\n\
             no-loop = true\n",
            dir.path().to_str().unwrap(),
            pg.conninfo(common::roles::SUPERUSER),
            format_lsn(endpos),
        ),
    );
    let out = run_ok(
        walferry_bare()
            .arg("--config")
            .arg(&config)
            .args(["-S", "wfconf"]),
    );
    assert_eq!(stderr_of(&out), "");
    let complete = complete_segments(dir.path());
    assert_eq!(
        complete.len() as u64,
        segno_of(&segment_name(1, endpos)) - segno_of(&segment_name(1, slot_lsn)),
        "{complete:?}"
    );
    for (_, file) in &complete {
        assert!(file.ends_with(".lz4"), "compress from the file: {file}");
    }
    assert_eq!(
        partial_segments(dir.path()),
        [format!("{}.lz4.partial", segment_name(1, endpos))]
    );
    assert_complete_segments_match(dir.path(), &pg);
    // The slot that streamed (and was acknowledged to) is the command line's.
    let restart =
        pg.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'wfconf'");
    assert!(
        common::parse_lsn(&restart) > slot_lsn,
        "restart_lsn {restart} moved"
    );
}

#[test]
fn config_file_with_an_unknown_key_exits_2_naming_it() {
    let etc = tempdir();
    let config = write_config(etc.path(), "directory = \"/tmp\"\nsynchronus = true\n");
    let out = run_bounded(
        walferry_bare().arg("--config").arg(&config),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert_eq!(
        stderr_of(&out),
        format!(
            "walferry: error: unknown key \"synchronus\" in config file \"{}\"\n\
             walferry: hint: keys are the long flag names that \"walferry receive --help\" lists, without the dashes\n",
            config.display()
        )
    );
}

/// The value of an unlabelled series in a `/metrics` body.
fn metric(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

fn scrape(port: u16) -> String {
    match common::http_get(port, "/metrics") {
        Some((200, body)) => body,
        other => panic!("GET /metrics: {other:?}"),
    }
}

#[test]
fn metrics_report_the_archive_and_healthz_the_stream() {
    metrics_and_health(&[]);
}

#[test]
fn metrics_report_the_archive_and_healthz_the_stream_synchronous() {
    metrics_and_health(&["--synchronous"]);
}

/// One receiver with `extra` flags: healthy while streaming, metrics equal to the archive
/// once the server has stopped, unhealthy with the reason while it retries.
fn metrics_and_health(extra: &[&str]) {
    let mut pg = PgCluster::primary();
    let dir = tempdir();
    let port = free_port();
    let mut wf = Proc::spawn(
        walferry(&pg, dir.path())
            .args(["-s", "1", "--metrics", &format!("127.0.0.1:{port}")])
            .args(extra),
    );

    wait_until(
        "/healthz 200 while streaming",
        Duration::from_secs(30),
        || matches!(common::http_get(port, "/healthz"), Some((200, _))),
    );
    let (_, health) = common::http_get(port, "/healthz").unwrap();
    assert!(health.contains("\"status\":\"streaming\""), "{health}");

    emit_wal(&pg, 20);
    small_commit(&pg);
    let target = flush_lsn(&pg);
    wait_until(
        "flushed LSN to reach the server's",
        Duration::from_secs(60),
        || metric(&scrape(port), "walferry_flushed_lsn_bytes").is_some_and(|f| f >= target),
    );
    let body = scrape(port);
    assert_eq!(
        metric(&body, "walferry_upstream_connected"),
        Some(1),
        "{body}"
    );
    assert_eq!(metric(&body, "walferry_timeline"), Some(1));

    // The server goes away: walferry keeps retrying and says why it is unhealthy.
    pg.stop();
    wait_until(
        "/healthz 503 after the server stopped",
        Duration::from_secs(30),
        || matches!(common::http_get(port, "/healthz"), Some((503, body)) if body.contains("could not connect")),
    );
    let (_, health) = common::http_get(port, "/healthz").unwrap();
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "connecting", "{health}");
    assert!(health["since"].as_str().unwrap().ends_with('Z'), "{health}");
    assert!(wf.is_running(), "walferry keeps retrying:\n{}", wf.stderr());

    // Nothing can arrive any more: the metrics must describe the archive exactly.
    let body = scrape(port);
    let flushed = metric(&body, "walferry_flushed_lsn_bytes").unwrap();
    assert_eq!(
        metric(&body, "walferry_received_lsn_bytes"),
        Some(flushed),
        "{body}"
    );
    assert_eq!(
        metric(&body, "walferry_validated_lsn_bytes"),
        Some(flushed),
        "{body}"
    );
    assert!(flushed >= target);
    assert_eq!(
        metric(&body, "walferry_upstream_connected"),
        Some(0),
        "{body}"
    );
    assert!(
        metric(&body, "walferry_reconnects_total").unwrap() >= 1,
        "{body}"
    );
    assert!(
        body.contains("walferry_errors_total{kind=\"connection\"} "),
        "{body}"
    );

    let complete = complete_segments(dir.path());
    let first = &complete.first().expect("complete segments").0;
    assert_eq!(
        metric(&body, "walferry_archived_segments_total"),
        Some(complete.len() as u64),
        "{complete:?}"
    );
    assert_eq!(
        metric(&body, "walferry_archived_bytes_total"),
        Some(flushed - segment_start_lsn(first)),
        "bytes archived since the first segment's start"
    );
    assert_complete_segments_match(dir.path(), &pg);
    // The tail: the .partial holds the server's bytes up to the flushed LSN.
    let last = segment_name(1, flushed);
    assert_eq!(partial_segments(dir.path()), [format!("{last}.partial")]);
    assert_eq!(segno_of(&last), segno_of(first) + complete.len() as u64);
    assert_partial_prefix(
        &dir.path().join(format!("{last}.partial")),
        &pg.data_dir().join("pg_wal").join(&last),
        segment_start_lsn(&last),
        flushed,
    );

    wf.signal(libc::SIGTERM);
    wf.wait_success();
}

#[test]
fn a_metrics_port_in_use_is_a_startup_error() {
    let dir = tempdir();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    // Refused before any connection is tried (nothing listens on port 1).
    let out = run_bounded(
        walferry_bare().arg("-D").arg(dir.path()).args([
            "-d",
            "host=127.0.0.1 port=1",
            "--metrics",
            &addr.to_string(),
        ]),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).starts_with(&format!(
            "walferry: error: could not listen on {addr} for metrics: Address already in use"
        )),
        "{}",
        stderr_of(&out)
    );
    assert!(list_dir(dir.path()).is_empty(), "nothing received");
}
