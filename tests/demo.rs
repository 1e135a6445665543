//! The README's first command, `bash scripts/demo.sh`, with its default fault (kill -9 of the
//! primary's processes): the whole lab on real PostgreSQL 15 clusters, its `--json` summary
//! asserted. The script itself bounds every wait; the test bounds the whole run too and, past
//! the bound, interrupts the script so that its trap still tears everything down.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Far above a normal run (under a minute on a loaded 2-core machine), far below a CI
/// job's limit.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// The steps of the story, in order.
const STEPS: [&str; 8] = [
    "lab",
    "clients",
    "fault",
    "failover",
    "rejoin",
    "switchover",
    "pitr",
    "check",
];

#[test]
fn the_demo_with_the_default_fault_loses_no_acknowledged_commit_and_every_step_is_ok() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = tempfile::tempdir().expect("a temp dir");
    let stdout_path = out_dir.path().join("stdout");
    let stderr_path = out_dir.path().join("stderr");
    let mut child = Command::new("bash")
        .arg(root.join("scripts/demo.sh"))
        .arg("--json")
        .env("WALFERRY_BIN", env!("CARGO_BIN_EXE_walferry"))
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("stdout file"))
        .stderr(File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("run bash scripts/demo.sh");

    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the demo") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let Some(status) = status else {
        // SIGINT: the script's trap stops and removes what it started; then it must go.
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let grace = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("wait").is_none() && Instant::now() < grace {
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the demo did not finish within {RUN_LIMIT:?}; its narration:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
    };
    let stdout = std::fs::read_to_string(&stdout_path).expect("read stdout");
    let stderr = std::fs::read_to_string(&stderr_path).expect("read stderr");

    let summary: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("stdout is not one JSON object ({e}):\n{stdout}\n---- stderr ----\n{stderr}")
    });
    let context = format!("summary: {summary:#}\n---- narration (stderr) ----\n{stderr}");
    if let Some(w) = summary["workarounds"].as_array().filter(|w| !w.is_empty()) {
        eprintln!("the demo worked around walferry bugs: {w:#?}");
    }
    assert_eq!(summary["ok"], Value::Bool(true), "{context}");
    assert!(status.success(), "exit status {status}; {context}");
    assert_eq!(summary["fault"], "kill9", "{context}");
    assert_eq!(summary["lost"], 0, "acknowledged commits lost; {context}");
    assert!(
        summary["acknowledged"].as_u64().is_some_and(|n| n > 0),
        "{context}"
    );
    assert!(
        summary["problems"].as_array().is_some_and(|p| p.is_empty()),
        "{context}"
    );
    let steps = summary["steps"].as_array().expect("steps");
    let names: Vec<&str> = steps.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, STEPS, "{context}");
    for step in steps {
        assert_eq!(step["ok"], Value::Bool(true), "step {step}; {context}");
        assert!(step["seconds"].as_f64().is_some(), "step {step}; {context}");
    }
    for rto in ["rto_failover_s", "rto_switchover_s"] {
        assert!(
            summary[rto].as_f64().is_some_and(|s| s > 0.0 && s < 60.0),
            "{rto}; {context}"
        );
    }
    assert!(
        summary["bytes_archived"].as_u64().is_some_and(|b| b > 0),
        "{context}"
    );
}
