//! Running `walferry relay` in tests: a process listening on a free loopback port, fed by a
//! real primary, waited for until it accepts replication connections.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{self, client_command, free_port, walferry_bin, PgCluster, StandbyOptions};
use crate::receive_support::Proc;

pub struct Relay {
    pub proc: Proc,
    pub port: u16,
}

/// `walferry relay -D dir -d <primary> --listen 127.0.0.1:PORT -v` plus `extra`.
pub fn relay_command(pg: &PgCluster, dir: &Path, port: u16, extra: &[&str]) -> Command {
    let mut cmd = client_command(walferry_bin());
    cmd.arg("relay")
        .arg("-D")
        .arg(dir)
        .arg("-d")
        .arg(pg.conninfo(common::roles::SUPERUSER))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-v")
        .args(extra);
    cmd
}

impl Relay {
    pub fn start(pg: &PgCluster, dir: &Path, extra: &[&str]) -> Relay {
        Self::start_on(pg, dir, free_port(), extra)
    }

    pub fn start_on(pg: &PgCluster, dir: &Path, port: u16, extra: &[&str]) -> Relay {
        let mut proc = Proc::spawn(&mut relay_command(pg, dir, port, extra));
        common::wait_until("the relay to accept connections", common::TIMEOUT, || {
            assert!(proc.is_running(), "relay exited: {}", proc.stderr());
            TcpStream::connect_timeout(
                &format!("127.0.0.1:{port}").parse().unwrap(),
                Duration::from_millis(200),
            )
            .is_ok()
        });
        Relay { proc, port }
    }

    /// A libpq connection string to the relay.
    pub fn conninfo(&self, application_name: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres application_name={application_name}",
            self.port
        )
    }

    /// Stop with SIGTERM; the exit status must be 0.
    pub fn stop(mut self) -> String {
        self.proc.signal(libc::SIGTERM);
        let status = self.proc.wait();
        let err = self.proc.stderr();
        assert_eq!(status.code(), Some(0), "relay: {err}");
        err
    }
}

/// A standby of `pg` (base backup from it) whose walreceiver connects to `conninfo` (the
/// relay), retrying quickly after a lost connection.
pub fn standby_via(pg: &PgCluster, conninfo: String) -> PgCluster {
    PgCluster::standby_of(
        pg,
        StandbyOptions::new()
            .primary_conninfo(conninfo)
            .conf("wal_retrieve_retry_interval = '200ms'"),
    )
}
