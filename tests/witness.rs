//! `walferry witness` as a process, talked to over TCP: a failover's grant survives a kill -9
//! and restart of the witness, `walferry status` shows it, and unauthenticated or replayed
//! requests are refused without changing anything. No PostgreSQL needed.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use walferry::ha::auth::Secret;
use walferry::ha::client::WitnessClient;
use walferry::ha::state::{Health, Role};
use walferry::ha::wire::{
    self, AckPromoted, Answer, Directive, PromoteRequest, Report, Request, RequestBody,
};
use walferry::ha::{wall_clock_now, Epoch};
use walferry::wal::{Lsn, TimeLineId};

const SECRET: &str = "a-shared-secret-for-the-witness-tests";

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_walferry"))
}

fn secret_file(dir: &Path, mode: u32) -> PathBuf {
    let path = dir.join(format!("secret-{mode:o}"));
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// A running witness; killed (-9) when dropped.
struct WitnessProc {
    child: Child,
    addr: String,
}

impl WitnessProc {
    fn start(listen: &str, data: &Path, secret: &Path) -> WitnessProc {
        let mut child = Command::new(bin())
            .args([
                "witness",
                "--listen",
                listen,
                "--failover-timeout",
                "0.5",
                "--data",
            ])
            .arg(data)
            .arg("--secret-file")
            .arg(secret)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        WitnessProc { child, addr }
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for WitnessProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn report(node: &str, role: Role, epoch: u64, tli: u32, sees_primary: bool) -> Request {
    Request::Report(Report {
        node: node.into(),
        role,
        timeline: TimeLineId(tli),
        epoch: Epoch(epoch),
        flush_lsn: Lsn(0x300_0000),
        replay_lsn: Lsn(0x300_0000),
        health: Health::Ok,
        primary_visible: sees_primary,
        sync_acked_lsn: None,
        priority: 100,
        synchronous: false,
        down: false,
        address: None,
        shutdown_lsn: None,
        problem: None,
    })
}

fn call(addr: &str, requests: Vec<Request>) -> Vec<(Epoch, Answer)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = WitnessClient::connect(
            addr,
            Secret::from_bytes(SECRET.as_bytes()),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        for r in requests {
            out.push(c.call(r).await.unwrap());
        }
        out
    })
}

fn status_json(addr: &str, secret: &Path) -> serde_json::Value {
    let out = Command::new(bin())
        .args(["status", "--json", "--witness", addr, "--secret-file"])
        .arg(secret)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_granted_epoch_survives_a_kill_9_and_restart_of_the_witness() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), 0o600);
    let data = dir.path().join("witness");
    let mut w = WitnessProc::start("127.0.0.1:0", &data, &secret);

    let answers = call(
        &w.addr,
        vec![
            report("a", Role::Primary, 0, 1, false),
            report("b", Role::Standby, 1, 1, true),
        ],
    );
    assert_eq!(answers[0].0, Epoch(1));
    assert!(matches!(
        answers[1].1,
        Answer::Reported {
            directive: Directive::Continue,
            ..
        }
    ));

    // The primary goes silent; b loses it; after the failover timeout (0.5 s) b is granted.
    let refused = call(
        &w.addr,
        vec![
            report("b", Role::Standby, 1, 1, false),
            Request::RequestPromote(PromoteRequest {
                node: "b".into(),
                epoch: Epoch(1),
                allow_data_loss: false,
            }),
        ],
    );
    assert!(
        matches!(refused[1].1, Answer::Refused { .. }),
        "{:?}",
        refused[1]
    );
    std::thread::sleep(Duration::from_millis(700));
    let granted = call(
        &w.addr,
        vec![
            report("b", Role::Standby, 1, 1, false),
            Request::RequestPromote(PromoteRequest {
                node: "b".into(),
                epoch: Epoch(1),
                allow_data_loss: false,
            }),
        ],
    );
    assert_eq!(granted[1], (Epoch(2), Answer::Granted { node: "b".into() }));

    // kill -9 right after the answer: it was durable before it was sent.
    let addr = w.addr.clone();
    w.kill9();
    let w = WitnessProc::start(&addr, &data, &secret);
    let status = status_json(&w.addr, &secret);
    assert_eq!(status["epoch"], 2);
    assert_eq!(status["primary"], "b");
    assert_eq!(status["promotion_pending"], "b");

    let after = call(
        &w.addr,
        vec![
            // The old primary comes back at epoch 1: it must rejoin, never take writes.
            report("a", Role::Primary, 1, 1, false),
            // b's promote: acknowledged on timeline 2.
            Request::AckPromoted(AckPromoted {
                node: "b".into(),
                epoch: Epoch(2),
                timeline: TimeLineId(2),
            }),
            // A late request for epoch 1 again: stale.
            Request::RequestPromote(PromoteRequest {
                node: "b".into(),
                epoch: Epoch(1),
                allow_data_loss: false,
            }),
        ],
    );
    assert!(
        matches!(&after[0], (Epoch(2), Answer::Reported { directive: Directive::Rejoin, primary: Some(p), .. }) if p == "b"),
        "{:?}",
        after[0]
    );
    assert!(matches!(after[1], (Epoch(2), Answer::Acked { .. })));
    assert!(matches!(after[2].1, Answer::Refused { .. }));

    let out = Command::new(bin())
        .args(["status", "--witness", &w.addr, "--secret-file"])
        .arg(&secret)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("epoch 2  primary b  timeline 2"), "{text}");
    assert!(text.contains("primary (stale)"), "{text}");
    assert!(text.contains("promotable if the primary is lost"), "{text}");
}

/// Send raw lines on one connection; the answer lines (the connection may be closed).
fn raw(addr: &str, lines: &[Vec<u8>]) -> Vec<String> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut out = Vec::new();
    for line in lines {
        if s.write_all(line).is_err() {
            break;
        }
        let mut answer = String::new();
        if reader.read_line(&mut answer).unwrap_or(0) == 0 {
            break;
        }
        out.push(answer);
    }
    out
}

fn sealed(key: &[u8], nonce: &str, request: Request) -> Vec<u8> {
    let body = RequestBody {
        sent_at_ms: wall_clock_now(),
        nonce: nonce.into(),
        request,
    };
    wire::encode_request(Secret::from_bytes(key).key(), &body)
}

#[test]
fn bad_macs_and_replays_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), 0o600);
    let w = WitnessProc::start("127.0.0.1:0", &dir.path().join("data"), &secret);
    let primary = || report("a", Role::Primary, 0, 1, false);

    // Wrong key: refused without a MAC, and the connection closed (the second line unread).
    let wrong = sealed(
        b"not-the-shared-secret-at-all",
        "00000000000000000000000000000001",
        primary(),
    );
    let answers = raw(&w.addr, &[wrong.clone(), wrong]);
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(
        answers[0].starts_with("- {\"error\":\"authentication failed"),
        "{answers:?}"
    );
    // Tampered body under a valid MAC; garbage; a missing MAC.
    let mut tampered = sealed(
        SECRET.as_bytes(),
        "00000000000000000000000000000002",
        primary(),
    );
    let at = tampered.len() - 5;
    tampered[at] = b'X';
    for line in [
        tampered,
        b"hello\n".to_vec(),
        b"{\"request\":{\"type\":\"status\"}}\n".to_vec(),
    ] {
        let answers = raw(&w.addr, &[line]);
        assert!(answers[0].starts_with("- "), "{answers:?}");
    }
    assert_eq!(
        status_json(&w.addr, &secret)["epoch"],
        0,
        "an unauthenticated request bootstrapped"
    );

    // A valid request is answered once; the same bytes again (a replay) are refused.
    let once = sealed(
        SECRET.as_bytes(),
        "00000000000000000000000000000003",
        primary(),
    );
    let answers = raw(&w.addr, std::slice::from_ref(&once));
    let body = wire::decode_answer(
        Secret::from_bytes(SECRET.as_bytes()).key(),
        answers[0].trim_end().as_bytes(),
    )
    .unwrap();
    assert_eq!(body.epoch, Epoch(1));
    let again = raw(&w.addr, &[once]);
    assert!(
        again[0].starts_with("- {\"error\":\"replayed request"),
        "{again:?}"
    );
    // A stale timestamp.
    let old = RequestBody {
        sent_at_ms: walferry::ha::UnixMillis(wall_clock_now().0 - 60_000),
        nonce: "00000000000000000000000000000004".into(),
        request: report("x", Role::Primary, 0, 1, false),
    };
    let line = wire::encode_request(Secret::from_bytes(SECRET.as_bytes()).key(), &old);
    assert!(raw(&w.addr, &[line])[0].starts_with("- {\"error\":\"stale request"));
    let status = status_json(&w.addr, &secret);
    assert_eq!(status["epoch"], 1);
    assert_eq!(status["nodes"].as_array().unwrap().len(), 1);

    // The client side: a wrong secret cannot read the status.
    let other = dir.path().join("other");
    std::fs::write(&other, "another-secret-of-enough-length\n").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(bin())
        .args(["status", "--witness", &w.addr, "--secret-file"])
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("authentication failed"), "{err}");
    assert!(
        err.contains("hint: the witness and this node must use the same secret file"),
        "{err}"
    );
}

#[test]
fn a_secret_file_readable_by_others_or_a_bad_timeout_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let open = secret_file(dir.path(), 0o644);
    let out = Command::new(bin())
        .args(["witness", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("d"))
        .arg("--secret-file")
        .arg(&open)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("group or world access (mode 0644)"), "{err}");
    assert!(err.contains("hint: chmod 600 the file"), "{err}");

    let ok = secret_file(dir.path(), 0o600);
    for (flags, want) in [
        (
            &["--failover-timeout", "0"][..],
            "invalid --failover-timeout",
        ),
        (&["--failover-timeout", "0.1"][..], "too short"),
        (
            &["--allow-data-loss"][..],
            "only applies with --synchronous",
        ),
    ] {
        let out = Command::new(bin())
            .args(["witness", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("d"))
            .arg("--secret-file")
            .arg(&ok)
            .args(flags)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(want),
            "{flags:?}"
        );
    }
}
