//! Authentication and TLS of `walferry receive` against real servers: trust, password, md5
//! and scram-sha-256 with the password from PGPASSWORD, the `-d` string, PGPASSFILE and
//! ~/.pgpass (0600 only); wrong passwords fail with exit 1 and a clear message that never
//! contains the password; every sslmode against a server with a throwaway CA.
//!
//! Each successful probe streams real WAL to `--endpos`, so it proves more than a login.

mod common;
mod receive_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::{password, roles, tempdir, PgCluster};
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

/// Exit 1 with a `walferry: error:` line containing `needle`, and no secret in the output.
#[track_caller]
fn assert_fails(what: &str, out: &Output, needle: &str, secrets: &[&str]) {
    let err = stderr_of(out);
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert!(err.contains("walferry: error: "), "{what}: {err}");
    assert!(
        err.contains(needle),
        "{what}: expected {needle:?} in:\n{err}"
    );
    for s in secrets {
        assert!(!err.contains(s), "{what}: the password appears in:\n{err}");
    }
}

fn write_pgpass(dir: &Path, name: &str, line: &str, mode: u32) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{line}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn each_auth_method_with_every_password_source() {
    let pg = PgCluster::primary();
    let scratch = tempdir();
    let wrong = "Wr0ng-P4ssw0rd-xyzzy";
    for role in [roles::TRUST, roles::PASSWORD, roles::MD5, roles::SCRAM] {
        let pw = password(role);
        let conninfo = pg.conninfo(role);

        let out = probe(&pg, &conninfo, |c| {
            c.env("PGPASSWORD", &pw);
        });
        assert_ok(&format!("{role} with PGPASSWORD"), &out);

        let out = probe(&pg, &format!("{conninfo} password={pw}"), |c| {
            c.arg("-vv");
        });
        assert_ok(&format!("{role} with password= in -d"), &out);
        assert!(
            !stderr_of(&out).contains(&pw),
            "{role}: -vv output shows the password:\n{}",
            stderr_of(&out)
        );

        let passfile = write_pgpass(
            scratch.path(),
            &format!("{role}.pgpass"),
            &format!("127.0.0.1:{}:*:{role}:{pw}", pg.port()),
            0o600,
        );
        let out = probe(&pg, &conninfo, |c| {
            c.env("PGPASSFILE", &passfile);
        });
        assert_ok(&format!("{role} with PGPASSFILE"), &out);

        if role == roles::TRUST {
            // trust ignores whatever password comes along.
            let out = probe(&pg, &conninfo, |c| {
                c.env("PGPASSWORD", wrong);
            });
            assert_ok("trust with a wrong password", &out);
            continue;
        }

        let failed = format!("password authentication failed for user \"{role}\"");
        let out = probe(&pg, &conninfo, |c| {
            c.env("PGPASSWORD", wrong);
        });
        assert_fails(
            &format!("{role}, wrong PGPASSWORD"),
            &out,
            &failed,
            &[wrong],
        );
        assert!(
            stderr_of(&out).contains("walferry: hint: "),
            "{}",
            stderr_of(&out)
        );
        let out = probe(&pg, &format!("{conninfo} password={wrong}"), |_| {});
        assert_fails(
            &format!("{role}, wrong password= in -d"),
            &out,
            &failed,
            &[wrong],
        );

        let out = probe(&pg, &conninfo, |_| {});
        assert_fails(
            &format!("{role}, no password"),
            &out,
            "no password was supplied",
            &[],
        );

        // A password file readable by others is ignored (with a warning), as libpq does.
        let loose = write_pgpass(
            scratch.path(),
            &format!("{role}.loose"),
            &format!("127.0.0.1:{}:*:{role}:{pw}", pg.port()),
            0o644,
        );
        let out = probe(&pg, &conninfo, |c| {
            c.env("PGPASSFILE", &loose);
        });
        assert_fails(
            &format!("{role}, pgpass 0644"),
            &out,
            "no password was supplied",
            &[&pw],
        );
        assert!(
            stderr_of(&out).contains("has group or world access"),
            "{}",
            stderr_of(&out)
        );
    }

    // ~/.pgpass itself (no PGPASSFILE).
    let home = tempdir();
    write_pgpass(
        home.path(),
        ".pgpass",
        &format!("*:*:*:{}:{}", roles::SCRAM, password(roles::SCRAM)),
        0o600,
    );
    let out = probe(&pg, &pg.conninfo(roles::SCRAM), |c| {
        c.env_remove("PGPASSFILE").env("HOME", home.path());
    });
    assert_ok("scram with ~/.pgpass", &out);

    // The server confirms which method each role went through.
    let log = pg.server_log();
    for (role, method) in [
        (roles::PASSWORD, "password"),
        (roles::MD5, "md5"),
        (roles::SCRAM, "scram-sha-256"),
    ] {
        let line = format!("connection authenticated: identity=\"{role}\" method={method}");
        assert!(log.contains(&line), "server log lacks {line:?}");
    }
    assert!(log.contains(
        "replication connection authorized: user=walferry_md5 application_name=walferry"
    ));
}

/// Signs a server certificate for CN `cn` without subject alternative names with the
/// cluster's CA, and installs it as the server's certificate (effective after reload).
fn install_server_cert_for(pg: &PgCluster, cn: &str) {
    let files = pg.ssl_files();
    let dir = tempdir();
    let d = dir.path();
    std::fs::write(
        d.join("req.cnf"),
        format!("[req]\nprompt = no\ndistinguished_name = dn\n[dn]\nCN = {cn}\n"),
    )
    .unwrap();
    std::fs::write(
        d.join("ext.cnf"),
        "basicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "req",
            "-new",
            "-nodes",
            "-config",
            "req.cnf",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            "s.key",
            "-out",
            "s.csr",
        ],
    );
    let (ca_cert, ca_key) = (
        files.ca_cert.to_string_lossy().into_owned(),
        files.ca_key.to_string_lossy().into_owned(),
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "s.csr",
            "-CA",
            &ca_cert,
            "-CAkey",
            &ca_key,
            "-set_serial",
            "4242",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "s.crt",
        ],
    );
    std::fs::copy(d.join("s.crt"), &files.server_cert).unwrap();
    std::fs::copy(d.join("s.key"), &files.server_key).unwrap();
    std::fs::set_permissions(&files.server_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    common::chown_to_postgres(&files.server_cert);
    common::chown_to_postgres(&files.server_key);
    pg.reload();
    // The postmaster loads the certificate on reload; from then on every new connection is
    // offered it (PEM, as `openssl s_client` prints the server's certificate).
    let cert = std::fs::read_to_string(&files.server_cert).unwrap();
    common::wait_until(
        "the server to offer the new certificate",
        common::TIMEOUT,
        || offered_certificate(pg).contains(cert.trim()),
    );
}

/// What `openssl s_client` prints for a new TLS connection to `pg` (PostgreSQL's STARTTLS),
/// the server's certificate among it (without one when it could not connect).
fn offered_certificate(pg: &PgCluster) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-starttls", "postgres", "-connect"])
        .arg(format!("{}:{}", common::HOST, pg.port()))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl s_client");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
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

/// A CA that signed nothing the server has.
fn other_ca(dir: &Path) -> std::path::PathBuf {
    std::fs::write(
        dir.join("ca.cnf"),
        "[req]\nprompt = no\ndistinguished_name = dn\nx509_extensions = v3_ca\n\
         [dn]\nCN = some other CA\n\
         [v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-config",
            "ca.cnf",
            "-days",
            "2",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            "other.key",
            "-out",
            "other.crt",
        ],
    );
    dir.join("other.crt")
}

#[test]
fn every_sslmode_against_a_tls_server() {
    let pg = PgCluster::builder().ssl(true).start();
    let ca = pg.ca_cert_path().to_string_lossy().into_owned();
    let empty_home = tempdir();
    let conn = |role: &str, host: &str, extra: &str| {
        format!("host={host} port={} user={role} {extra}", pg.port())
    };
    // Each role's secret comes from PGPASSWORD; HOME holds no ~/.postgresql/root.crt.
    let run = |role: &str, host: &str, extra: &str| {
        let pw = password(role);
        let home = empty_home.path().to_path_buf();
        probe(&pg, &conn(role, host, extra), move |c| {
            c.env("PGPASSWORD", pw).env("HOME", home);
        })
    };
    let ssl_only = roles::SSL_ONLY;
    let no_ssl = roles::NO_SSL;

    // The hostssl-only role gets in exactly when TLS is used.
    for mode in ["prefer", "require"] {
        assert_ok(
            mode,
            &run(ssl_only, "127.0.0.1", &format!("sslmode={mode}")),
        );
    }
    assert_ok(
        "verify-ca",
        &run(
            ssl_only,
            "127.0.0.1",
            &format!("sslmode=verify-ca sslrootcert={ca}"),
        ),
    );
    for host in ["127.0.0.1", "localhost"] {
        assert_ok(
            &format!("verify-full {host}"),
            &run(
                ssl_only,
                host,
                &format!("sslmode=verify-full sslrootcert={ca}"),
            ),
        );
    }
    assert_fails(
        "disable, hostssl role",
        &run(ssl_only, "127.0.0.1", "sslmode=disable"),
        "pg_hba.conf rejects replication connection",
        &[&password(ssl_only)],
    );
    let log = pg.server_log();
    assert!(
        log.contains(&format!(
            "replication connection authorized: user={ssl_only} application_name=walferry SSL enabled"
        )),
        "server log shows no TLS replication connection"
    );

    // The hostnossl-only role gets in exactly without TLS; prefer falls back as libpq does.
    assert_ok("disable", &run(no_ssl, "127.0.0.1", "sslmode=disable"));
    assert_ok(
        "prefer, hostnossl role",
        &run(no_ssl, "127.0.0.1", "sslmode=prefer"),
    );
    assert_fails(
        "require, hostnossl role",
        &run(no_ssl, "127.0.0.1", "sslmode=require"),
        "pg_hba.conf rejects replication connection",
        &[&password(no_ssl)],
    );

    // Verification failures are clear and final.
    let out = run(ssl_only, "127.0.0.1", "sslmode=verify-ca");
    assert_fails(
        "verify-ca without a root certificate",
        &out,
        "root certificate",
        &[],
    );
    let other = tempdir();
    let other_ca = other_ca(other.path());
    let out = run(
        ssl_only,
        "127.0.0.1",
        &format!("sslmode=verify-ca sslrootcert={}", other_ca.display()),
    );
    assert_fails("verify-ca with another CA", &out, "certificate", &[]);
    assert!(
        stderr_of(&out).contains("walferry: hint: "),
        "{}",
        stderr_of(&out)
    );

    // A server certificate for another name: verify-ca passes, verify-full does not.
    install_server_cert_for(&pg, "db.example.org");
    assert_ok(
        "verify-ca, other name",
        &run(
            ssl_only,
            "127.0.0.1",
            &format!("sslmode=verify-ca sslrootcert={ca}"),
        ),
    );
    for host in ["127.0.0.1", "localhost"] {
        let out = run(
            ssl_only,
            host,
            &format!("sslmode=verify-full sslrootcert={ca}"),
        );
        assert_fails(
            &format!("verify-full {host}, wrong name"),
            &out,
            "certificate",
            &[],
        );
        assert!(stderr_of(&out).contains(host), "{}", stderr_of(&out));
    }
}

#[test]
fn require_against_a_server_without_tls_fails() {
    let pg = PgCluster::primary();
    let out = probe(
        &pg,
        &format!("{} sslmode=require", pg.conninfo(roles::TRUST)),
        |_| {},
    );
    assert_fails("require", &out, "does not support SSL", &[]);
    let out = probe(
        &pg,
        &format!("{} sslmode=prefer", pg.conninfo(roles::TRUST)),
        |_| {},
    );
    assert_ok("prefer", &out);
}

#[test]
fn unix_socket_and_a_role_without_replication() {
    let pg = PgCluster::primary();
    // A Unix-socket directory as host, as libpq takes it (trust for local replication).
    let socket = format!(
        "host={} port={} user=postgres",
        pg.socket_dir().display(),
        pg.port()
    );
    assert_ok("unix socket", &probe(&pg, &socket, |_| {}));
    assert!(pg
        .server_log()
        .contains("replication connection authorized: user=postgres application_name=walferry"));

    // A login role without REPLICATION cannot start a walsender: final, with a hint.
    pg.psql("CREATE ROLE plain_user LOGIN");
    let out = probe(&pg, &pg.conninfo("plain_user"), |_| {});
    assert_fails("role without REPLICATION", &out, "replication", &[]);
    assert!(
        stderr_of(&out).contains("walferry: hint: ") && stderr_of(&out).contains("REPLICATION"),
        "{}",
        stderr_of(&out)
    );
}
