//! libpq connection options of `walferry receive` against real servers:
//! `target_session_attrs` with a primary and a real standby (pg_basebackup -R), also
//! across a promotion; `channel_binding` (SCRAM-SHA-256-PLUS) over TLS; client
//! certificates for `cert` authentication; CRLs that revoke the server's certificate;
//! and `-W`, which asks the terminal before any connection is made.
//!
//! Each successful probe streams real WAL to `--endpos`, so it proves more than a login;
//! which server it streamed from is read from the servers' logs
//! (`log_replication_commands`), keyed by a per-probe `application_name`.

mod common;
mod receive_support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{password, roles, tempdir, PgCluster, StandbyOptions};
use receive_support::*;

#[track_caller]
fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: exit {}\n{}",
        out.status,
        stderr_of(out)
    );
}

#[track_caller]
fn assert_fails(what: &str, out: &Output, needle: &str) {
    let err = stderr_of(out);
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert!(err.contains("walferry: error: "), "{what}: {err}");
    assert!(
        err.contains(needle),
        "{what}: expected {needle:?} in:\n{err}"
    );
}

/// Whether `pg`'s log shows a START_REPLICATION from a session named `app`.
fn streamed_from(pg: &PgCluster, app: &str) -> bool {
    pg.server_log()
        .lines()
        .any(|l| l.contains(&format!("/{app} ")) && l.contains("START_REPLICATION"))
}

/// Whether `pg`'s log shows a session named `app` at all (authorized, maybe rejected after).
fn connected_to(pg: &PgCluster, app: &str) -> bool {
    pg.server_log().contains(&format!("application_name={app}"))
}

#[test]
fn target_session_attrs_picks_the_primary_or_the_standby_and_follows_a_promotion() {
    let mut primary = PgCluster::primary();
    let standby = PgCluster::standby_of(&primary, StandbyOptions::new());
    let user = roles::TRUST;
    let (standby_port, primary_port) = (standby.port(), primary.port());
    // The standby first, so that read-write has to skip it.
    let both = |attrs: &str, app: &str| {
        format!(
            "host={h},{h} port={standby_port},{primary_port} user={user} target_session_attrs={attrs} application_name={app}",
            h = common::HOST,
        )
    };
    small_commit(&primary);
    let endpos = flush_lsn(&primary);
    standby.wait_for_replay(endpos);

    for attrs in ["read-write", "primary"] {
        let app = format!("tsa_{}", attrs.replace('-', "_"));
        assert_ok(attrs, &probe_to(endpos, &both(attrs, &app), |_| {}));
        assert!(
            streamed_from(&primary, &app),
            "{attrs}: not from the primary"
        );
        assert!(connected_to(&standby, &app), "{attrs}: standby not tried");
        assert!(
            !streamed_from(&standby, &app),
            "{attrs}: streamed from the standby"
        );
    }
    for attrs in ["standby", "read-only", "prefer-standby", "any"] {
        let app = format!("tsa_{}", attrs.replace('-', "_"));
        assert_ok(attrs, &probe_to(endpos, &both(attrs, &app), |_| {}));
        assert!(
            streamed_from(&standby, &app),
            "{attrs}: not from the standby"
        );
        assert!(!connected_to(&primary, &app), "{attrs}: primary tried");
    }
    // PGTARGETSESSIONATTRS does the same.
    let plain = format!(
        "host={h},{h} port={},{} user={user} application_name=tsa_env",
        standby.port(),
        primary.port(),
        h = common::HOST,
    );
    assert_ok(
        "PGTARGETSESSIONATTRS",
        &probe_to(endpos, &plain, |c| {
            c.env("PGTARGETSESSIONATTRS", "read-write");
        }),
    );
    assert!(streamed_from(&primary, "tsa_env"));

    // Only the standby listed: no writable server, each host named with the reason.
    let only_standby = format!(
        "host={} port={} user={user} target_session_attrs=read-write",
        common::HOST,
        standby.port()
    );
    let out = probe_to(endpos, &only_standby, |_| {});
    assert_fails(
        "read-write, standby only",
        &out,
        "could not make a writable connection to any of the hosts (target_session_attrs=read-write)",
    );
    assert!(
        stderr_of(&out).contains(&format!("port {}: session is read-only", standby.port())),
        "{}",
        stderr_of(&out)
    );

    // Failover: the primary goes away, the standby is promoted; the same conninfo now
    // finds the new primary.
    primary.stop();
    standby.promote();
    common::wait_until("the promotion", common::TIMEOUT, || {
        !standby.is_in_recovery()
    });
    let out = probe(&standby, &both("read-write", "tsa_after"), |_| {});
    assert_ok("read-write after the promotion", &out);
    assert!(streamed_from(&standby, "tsa_after"));
}

#[test]
fn channel_binding_over_tls() {
    let pg = PgCluster::builder().ssl(true).start();
    let conn = |role: &str, extra: &str| {
        format!(
            "host={} port={} user={role} {extra}",
            common::HOST,
            pg.port()
        )
    };
    let with_password = |role: &str| {
        let pw = password(role);
        move |c: &mut Command| {
            c.env("PGPASSWORD", pw);
        }
    };
    let scram = roles::SSL_ONLY;
    // require: SCRAM-SHA-256-PLUS; the server checks the binding to its certificate, so a
    // success means the tls-server-end-point data were right.
    for mode in ["require", "prefer"] {
        assert_ok(
            mode,
            &probe(
                &pg,
                &conn(scram, &format!("sslmode=require channel_binding={mode}")),
                with_password(scram),
            ),
        );
    }
    let ca = pg.ca_cert_path().display().to_string();
    assert_ok(
        "require with verify-full",
        &probe(
            &pg,
            &conn(
                scram,
                &format!("sslmode=verify-full sslrootcert={ca} channel_binding=require"),
            ),
            with_password(scram),
        ),
    );
    assert_ok(
        "PGCHANNELBINDING=require",
        &probe(&pg, &conn(scram, "sslmode=require"), |c| {
            c.env("PGPASSWORD", password(scram))
                .env("PGCHANNELBINDING", "require");
        }),
    );
    assert_ok(
        "disable",
        &probe(
            &pg,
            &conn(scram, "sslmode=require channel_binding=disable"),
            with_password(scram),
        ),
    );

    // Without TLS it cannot work, and says so before connecting.
    let out = probe(
        &pg,
        &conn(roles::NO_SSL, "sslmode=disable channel_binding=require"),
        with_password(roles::NO_SSL),
    );
    assert_fails(
        "require, sslmode=disable",
        &out,
        "channel_binding=require needs an SSL connection",
    );
    // TLS, but md5 cannot bind.
    let out = probe(
        &pg,
        &conn(roles::MD5, "sslmode=require channel_binding=require"),
        with_password(roles::MD5),
    );
    assert_fails(
        "require, md5",
        &out,
        "channel binding required but not supported by server's authentication request",
    );
    assert!(stderr_of(&out).contains("walferry: hint: "));
    // trust cannot either.
    let out = probe(
        &pg,
        &conn(roles::TRUST, "sslmode=require channel_binding=require"),
        |_| {},
    );
    assert_fails(
        "require, trust",
        &out,
        "server authenticated client without channel binding",
    );
}

const CERT_ROLE: &str = "walferry_cert";

/// A TLS cluster where CERT_ROLE may only log in with a client certificate.
fn cert_cluster() -> PgCluster {
    let pg = PgCluster::builder()
        .ssl(true)
        .hba(format!(
            "hostssl replication {CERT_ROLE} {}/32 cert",
            common::HOST
        ))
        .hba(format!(
            "host replication {CERT_ROLE} {}/32 reject",
            common::HOST
        ))
        .start();
    pg.psql(&format!("CREATE ROLE {CERT_ROLE} LOGIN REPLICATION"));
    pg
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = common::client_command("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn client_certificate_for_cert_authentication() {
    let pg = cert_cluster();
    let (crt, key) = pg.client_cert(CERT_ROLE);
    let base = format!(
        "host={} port={} user={CERT_ROLE} sslmode=require",
        common::HOST,
        pg.port()
    );
    let with = |crt: &Path, key: &Path| {
        format!("{base} sslcert={} sslkey={}", crt.display(), key.display())
    };
    assert_ok("sslcert + sslkey", &probe(&pg, &with(&crt, &key), |_| {}));
    assert!(
        pg.server_log()
            .lines()
            .any(|l| l.contains("connection authenticated") && l.contains("method=cert")),
        "the server log shows no cert authentication"
    );
    assert_ok(
        "PGSSLCERT + PGSSLKEY",
        &probe(&pg, &base, |c| {
            c.env("PGSSLCERT", &crt).env("PGSSLKEY", &key);
        }),
    );
    // libpq's defaults: ~/.postgresql/postgresql.crt and .key.
    let home = tempdir();
    let dot = home.path().join(".postgresql");
    std::fs::create_dir(&dot).unwrap();
    std::fs::copy(&crt, dot.join("postgresql.crt")).unwrap();
    std::fs::copy(&key, dot.join("postgresql.key")).unwrap();
    std::fs::set_permissions(
        dot.join("postgresql.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    assert_ok(
        "~/.postgresql/postgresql.crt",
        &probe(&pg, &base, |c| {
            c.env("HOME", home.path());
        }),
    );

    // Without a certificate the server refuses.
    let out = probe(&pg, &base, |_| {});
    assert_fails("no certificate", &out, "certificate");
    assert!(
        stderr_of(&out).contains("connection requires a valid client certificate"),
        "{}",
        stderr_of(&out)
    );

    // A key others can read is refused before connecting, as libpq does.
    let scratch = tempdir();
    let loose = scratch.path().join("loose.key");
    std::fs::copy(&key, &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = probe(&pg, &with(&crt, &loose), |_| {});
    assert_fails("key 0644", &out, "has group or world access");
    // The key of another certificate does not fit.
    let (_, other_key) = pg.client_cert("someone_else");
    let out = probe(&pg, &with(&crt, &other_key), |_| {});
    assert_fails("mismatched key", &out, "could not use client certificate");
    // A missing key file.
    let out = probe(&pg, &with(&crt, &scratch.path().join("none.key")), |_| {});
    assert_fails(
        "no key file",
        &out,
        "certificate present, but not private key file",
    );
    // An encrypted key: refused clearly, with or without sslpassword.
    let encrypted = scratch.path().join("enc.key");
    openssl(
        scratch.path(),
        &[
            "pkey",
            "-in",
            &key.display().to_string(),
            "-aes256",
            "-passout",
            "pass:k3y-pass",
            "-out",
            "enc.key",
        ],
    );
    std::fs::set_permissions(&encrypted, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = probe(
        &pg,
        &format!("{} sslpassword=k3y-pass", with(&crt, &encrypted)),
        |_| {},
    );
    assert_fails("encrypted key", &out, "encrypted keys are not supported");
    assert!(!stderr_of(&out).contains("k3y-pass"), "{}", stderr_of(&out));
}

/// `openssl ca` state for CRLs signed by the cluster's CA, in `dir`.
struct CrlMaker {
    dir: PathBuf,
    ca_cert: String,
    ca_key: String,
}

impl CrlMaker {
    fn new(pg: &PgCluster, dir: &Path) -> CrlMaker {
        std::fs::write(
            dir.join("crl.cnf"),
            "[ca]\ndefault_ca = crlca\n[crlca]\ndatabase = index.txt\ncrlnumber = crlnumber\n\
             default_md = sha256\ndefault_crl_days = 2\ncrl_extensions = crl_ext\n\
             [crl_ext]\nauthorityKeyIdentifier = keyid:always\n",
        )
        .unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
        let files = pg.ssl_files();
        CrlMaker {
            dir: dir.to_path_buf(),
            ca_cert: files.ca_cert.display().to_string(),
            ca_key: files.ca_key.display().to_string(),
        }
    }

    fn ca_args<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "ca",
            "-config",
            "crl.cnf",
            "-keyfile",
            &self.ca_key,
            "-cert",
            &self.ca_cert,
        ];
        args.extend_from_slice(rest);
        args
    }

    /// A CRL (PEM) of everything revoked so far.
    fn crl(&self, name: &str) -> PathBuf {
        openssl(&self.dir, &self.ca_args(&["-gencrl", "-out", name]));
        self.dir.join(name)
    }

    fn revoke(&self, cert: &Path) {
        let cert = cert.display().to_string();
        openssl(&self.dir, &self.ca_args(&["-revoke", &cert]));
    }
}

#[test]
fn revoked_server_certificate_is_refused() {
    let pg = PgCluster::builder().ssl(true).start();
    let scratch = tempdir();
    let maker = CrlMaker::new(&pg, scratch.path());
    let ca = pg.ca_cert_path().display().to_string();
    let role = roles::SSL_ONLY;
    let conn = |extra: &str| {
        format!(
            "host={} port={} user={role} sslmode=verify-full sslrootcert={ca} {extra}",
            common::HOST,
            pg.port()
        )
    };
    let pw = |c: &mut Command| {
        c.env("PGPASSWORD", password(role));
    };

    // A current CRL that does not list the server's certificate.
    let clean = maker.crl("clean.crl");
    assert_ok(
        "not revoked",
        &probe(&pg, &conn(&format!("sslcrl={}", clean.display())), pw),
    );

    maker.revoke(&pg.ssl_files().server_cert);
    let revoked = maker.crl("revoked.crl");
    let out = probe(&pg, &conn(&format!("sslcrl={}", revoked.display())), pw);
    assert_fails("sslcrl", &out, "server certificate has been revoked");
    assert!(
        stderr_of(&out).contains("walferry: hint: "),
        "{}",
        stderr_of(&out)
    );
    let out = probe(&pg, &conn(""), |c| {
        c.env("PGPASSWORD", password(role))
            .env("PGSSLCRL", &revoked);
    });
    assert_fails("PGSSLCRL", &out, "server certificate has been revoked");

    // sslcrldir: every file in the directory is read.
    let crldir = scratch.path().join("crls");
    std::fs::create_dir(&crldir).unwrap();
    std::fs::copy(&revoked, crldir.join("0a1b2c3d.r0")).unwrap();
    let out = probe(&pg, &conn(&format!("sslcrldir={}", crldir.display())), pw);
    assert_fails("sslcrldir", &out, "server certificate has been revoked");

    // ~/.postgresql/root.crl is the default.
    let home = tempdir();
    let dot = home.path().join(".postgresql");
    std::fs::create_dir(&dot).unwrap();
    std::fs::copy(&revoked, dot.join("root.crl")).unwrap();
    let out = probe(&pg, &conn(""), |c| {
        c.env("PGPASSWORD", password(role)).env("HOME", home.path());
    });
    assert_fails(
        "~/.postgresql/root.crl",
        &out,
        "server certificate has been revoked",
    );

    // A CRL named but missing is an error, not silently no check.
    let out = probe(&pg, &conn("sslcrl=/nonexistent/walferry.crl"), pw);
    assert_fails(
        "missing sslcrl",
        &out,
        "could not read certificate revocation list file",
    );
}

#[test]
fn dash_w_asks_the_terminal_before_connecting_and_dash_w_never_asks() {
    let pg = PgCluster::primary();
    let role = roles::SCRAM;
    let conninfo = format!("{} application_name=prompt_probe", pg.conninfo(role));
    let dir = tempdir();
    // -W without a controlling terminal (a new session has none): it fails asking, before
    // connecting, even though PGPASSWORD holds the right password (-W replaces it, as with
    // pg_receivewal).
    let mut cmd = walferry_bare();
    cmd.arg("-D")
        .arg(dir.path())
        .args(["-d", &conninfo, "-W", "-E", "0/1000000"])
        .env("PGPASSWORD", password(role));
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let out = run_bounded(&mut cmd, RUN_TIMEOUT);
    assert_fails("-W without a terminal", &out, "could not read the password");
    assert!(stderr_of(&out).contains("/dev/tty"), "{}", stderr_of(&out));
    assert!(
        !pg.server_log().contains("application_name=prompt_probe"),
        "-W connected before asking"
    );

    // -w: never asks, and says so as libpq would ("no password supplied").
    let out = probe(&pg, &conninfo, |_| {});
    assert_fails("-w", &out, "no password was supplied");
    // -w with the password in the environment works.
    assert_ok(
        "-w with PGPASSWORD",
        &probe(&pg, &conninfo, |c| {
            c.env("PGPASSWORD", password(role));
        }),
    );
}

/// The case target_session_attrs exists for: a long-running receiver given both nodes
/// loses its primary, and after the promotion reconnects to the new one (and not to the
/// standby it skipped before), continuing on the new timeline.
#[test]
fn a_running_receiver_follows_the_failover_to_the_new_primary() {
    let mut primary = PgCluster::primary();
    let standby = PgCluster::standby_of(&primary, StandbyOptions::new());
    let conninfo = format!(
        "host={h},{h} port={},{} user={} target_session_attrs=read-write application_name=follower",
        standby.port(),
        primary.port(),
        roles::TRUST,
        h = common::HOST,
    );
    let dir = tempdir();
    let mut wf = Proc::spawn(
        walferry_bare()
            .arg("-D")
            .arg(dir.path())
            .args(["-d", &conninfo, "-w", "-s", "1", "-v"]),
    );
    let streaming_to = |pg: &PgCluster| {
        pg.replication_stats()
            .into_iter()
            .find(|s| s.application_name == "follower" && s.state == "streaming")
    };
    common::wait_until(
        "walferry to stream from the primary",
        common::TIMEOUT,
        || streaming_to(&primary).is_some(),
    );
    assert!(!streamed_from(&standby, "follower"));
    small_commit(&primary);
    standby.wait_for_replay(primary.current_wal_lsn());

    primary.stop();
    standby.promote();
    emit_wal(&standby, 2);
    small_commit(&standby);
    let target = flush_lsn(&standby);
    common::wait_until(
        "walferry to write the new primary's WAL",
        Duration::from_secs(90),
        || {
            streaming_to(&standby)
                .and_then(|s| s.write_lsn)
                .is_some_and(|l| l >= target)
        },
    );
    wf.signal(libc::SIGTERM);
    let status = wf.wait();
    assert_eq!(status.code(), Some(0), "{}", wf.stderr());
    assert!(dir.path().join("00000002.history").exists());
    assert!(
        partial_segments(dir.path())
            .iter()
            .any(|p| p.starts_with("00000002")),
        "{:?}",
        list_dir(dir.path())
    );
}
