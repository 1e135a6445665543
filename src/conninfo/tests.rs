//! Resolution tests: `-d` strings and URLs, flags, environment, defaults, password files,
//! and that no password leaks into `Debug` or error messages.

use super::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;

const SOCK: &str = "/var/run/postgresql";

/// A test environment: the given variables, no home, OS user `osuser`, the socket dir present.
struct TestEnv {
    vars: Vec<(String, String)>,
    home: Option<PathBuf>,
    os_user: Option<String>,
    socket_dir: Option<PathBuf>,
}

impl TestEnv {
    fn new(vars: &[(&str, &str)]) -> TestEnv {
        TestEnv {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            home: None,
            os_user: Some("osuser".to_string()),
            socket_dir: Some(PathBuf::from(SOCK)),
        }
    }

    fn resolve(&self, opts: &ConnOptions) -> Result<ConnParams, ConnInfoError> {
        let var = |name: &str| {
            self.vars
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        resolve_with(
            opts,
            &Environment {
                var: &var,
                home: self.home.as_deref(),
                os_user: self.os_user.as_deref(),
                default_socket_dir: self.socket_dir.as_deref(),
                default_sysconfdir: Path::new("/nonexistent/sysconfdir"),
            },
        )
    }
}

fn d(s: &str) -> ConnOptions {
    ConnOptions {
        dbname: Some(s.to_string()),
        ..Default::default()
    }
}

fn ok(opts: &ConnOptions) -> ConnParams {
    TestEnv::new(&[]).resolve(opts).unwrap()
}

fn err(opts: &ConnOptions) -> ConnInfoError {
    TestEnv::new(&[]).resolve(opts).unwrap_err()
}

fn tcp(h: &str) -> Host {
    Host::Tcp(h.to_string())
}

fn unix(p: &str) -> Host {
    Host::Unix(PathBuf::from(p))
}

fn pw(p: &ConnParams) -> Option<&str> {
    p.password.as_ref().map(|p| p.0.as_str())
}

#[test]
fn defaults() {
    let p = ok(&ConnOptions::default());
    assert_eq!(p.hosts, vec![unix(SOCK)]);
    assert_eq!(p.ports, vec![5432]);
    assert_eq!(p.user, "osuser");
    assert_eq!(pw(&p), None);
    assert_eq!(p.passfile, None);
    assert_eq!(p.dbname, None);
    assert_eq!(p.application_name, "walferry");
    assert_eq!(p.sslmode, SslMode::Prefer);
    assert_eq!(p.sslrootcert, None);
    assert_eq!(p.connect_timeout, None);
    assert_eq!(p.prompt, PasswordPrompt::IfNeeded);
}

#[test]
fn default_host_is_localhost_without_socket_dir() {
    let mut env = TestEnv::new(&[]);
    env.socket_dir = None;
    let p = env.resolve(&ConnOptions::default()).unwrap();
    assert_eq!(p.hosts, vec![tcp("localhost")]);
    // An empty entry of a host list takes the default as well.
    let p = env.resolve(&d("host=db1,")).unwrap();
    assert_eq!(p.hosts, vec![tcp("db1"), tcp("localhost")]);
    assert_eq!(p.ports, vec![5432, 5432]);
}

#[test]
fn user_falls_back_to_user_variable_then_errors() {
    let mut env = TestEnv::new(&[("USER", "envuser")]);
    env.os_user = None;
    assert_eq!(
        env.resolve(&ConnOptions::default()).unwrap().user,
        "envuser"
    );
    let mut env = TestEnv::new(&[]);
    env.os_user = None;
    assert!(matches!(
        env.resolve(&ConnOptions::default()),
        Err(ConnInfoError::NoUser)
    ));
    // A given user needs neither.
    assert_eq!(env.resolve(&d("user=rep")).unwrap().user, "rep");
}

#[test]
fn conninfo_values() {
    let p = ok(&d(
        "host=db1 port=5433 user=rep password=pw dbname=postgres sslmode=require \
         application_name=app connect_timeout=10",
    ));
    assert_eq!(p.hosts, vec![tcp("db1")]);
    assert_eq!(p.ports, vec![5433]);
    assert_eq!(p.user, "rep");
    assert_eq!(pw(&p), Some("pw"));
    assert_eq!(p.dbname.as_deref(), Some("postgres"));
    assert_eq!(p.sslmode, SslMode::Require);
    assert_eq!(p.application_name, "app");
    assert_eq!(p.connect_timeout, Some(Duration::from_secs(10)));
}

#[test]
fn conninfo_quoting() {
    let p = ok(&d(r"user = 'o\'neil' password='a b\\c' host = db1"));
    assert_eq!(p.user, "o'neil");
    assert_eq!(pw(&p), Some(r"a b\c"));
    assert_eq!(p.hosts, vec![tcp("db1")]);
    // Later pairs override earlier ones.
    assert_eq!(ok(&d("host=a host=b")).hosts, vec![tcp("b")]);
}

#[test]
fn empty_values_count_as_unset() {
    let env = TestEnv::new(&[("PGHOST", "envhost"), ("PGUSER", "")]);
    let p = env.resolve(&d("host='' user=''")).unwrap();
    assert_eq!(p.hosts, vec![tcp("envhost")]);
    assert_eq!(p.user, "osuser");
    let p = env
        .resolve(&ConnOptions {
            dbname: Some(String::new()),
            host: Some(String::new()),
            port: Some(String::new()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(p.hosts, vec![tcp("envhost")]);
    assert_eq!(p.ports, vec![5432]);
}

#[test]
fn conninfo_errors() {
    assert!(matches!(
        err(&d("host='db1")),
        ConnInfoError::UnterminatedQuote
    ));
    let e = err(&d("mydb"));
    assert_eq!(
        e.to_string(),
        "missing \"=\" after \"mydb\" in the connection string; write key=value pairs such as \
         \"host=db1 port=5432\" (quote values with spaces: password='a b') or a postgres:// URL"
    );
    let e = err(&d("host=db1 prot=5432"));
    assert_eq!(
        e.to_string(),
        "unknown connection option \"prot\" in the connection string; use libpq option names \
         (host, port, user, password, sslmode, ...) and quote values with spaces"
    );
    let e = err(&d("hostaddr=10.0.0.1"));
    assert_eq!(
        e.to_string(),
        "connection option \"hostaddr\" is not supported; give the address as host= instead"
    );
    // Ignored libpq keywords are accepted (keepalives are used, see keepalive_settings).
    let p = ok(&d(
        "replication=true options='-c wal_sender_timeout=0' keepalives=1 keepalives_idle=30 \
         keepalives_interval=5 keepalives_count=3 target_session_attrs=read-write gssencmode=disable \
         sslcert=/c sslkey=/k sslcrl=/r sslcompression=0 channel_binding=prefer host=db1",
    ));
    assert_eq!(p.hosts, vec![tcp("db1")]);
}

#[test]
fn keepalive_settings() {
    let p = ok(&d("host=db1"));
    assert_eq!(p.keepalives, Keepalives::default());
    assert!(p.keepalives.enabled, "libpq turns keepalives on by default");
    let p = ok(&d(
        "host=db1 keepalives_idle=30 keepalives_interval=5 keepalives_count=3 tcp_user_timeout=9500",
    ));
    assert_eq!(
        p.keepalives,
        Keepalives {
            enabled: true,
            idle: Some(Duration::from_secs(30)),
            interval: Some(Duration::from_secs(5)),
            count: Some(3),
            user_timeout: Some(Duration::from_millis(9500)),
        }
    );
    // 0 leaves the system default; keepalives=0 turns probes off.
    let p = ok(&d("host=db1 keepalives=0 keepalives_idle=0"));
    assert!(!p.keepalives.enabled);
    assert_eq!(p.keepalives.idle, None);
    let p = ok(&d("postgres://db1/?keepalives_idle=7"));
    assert_eq!(p.keepalives.idle, Some(Duration::from_secs(7)));
    let e = err(&d("host=db1 keepalives_idle=ten"));
    assert_eq!(
        e.to_string(),
        "invalid keepalives_idle \"ten\" in the connection string; give a whole number (0 = the system default)"
    );
    assert!(matches!(
        err(&d("host=db1 keepalives=yes")),
        ConnInfoError::InvalidNumber {
            key: "keepalives",
            ..
        }
    ));
}

#[test]
fn multi_host_lists() {
    let p = ok(&d("host=a,b,/tmp port=1,2,3"));
    assert_eq!(p.hosts, vec![tcp("a"), tcp("b"), unix("/tmp")]);
    assert_eq!(p.ports, vec![1, 2, 3]);
    assert_eq!(
        p.targets().collect::<Vec<_>>(),
        vec![(&tcp("a"), 1), (&tcp("b"), 2), (&unix("/tmp"), 3)]
    );
    let p = ok(&d("host=a,b port=6000"));
    assert_eq!(p.ports, vec![6000, 6000]);
    let p = ok(&d("host=a,b port=,6000"));
    assert_eq!(p.ports, vec![5432, 6000]);
    let p = ok(&d("host=a,b"));
    assert_eq!(p.ports, vec![5432, 5432]);
    let e = err(&d("host=a,b,c port=1,2"));
    assert!(matches!(
        e,
        ConnInfoError::PortCountMismatch { hosts: 3, ports: 2 }
    ));
    assert_eq!(
        e.to_string(),
        "2 ports given for 3 hosts; give one port for all hosts or one per host (host=a,b port=5432,5433)"
    );
    // A single host with a port list is a mismatch too.
    assert!(matches!(
        err(&d("host=a port=1,2")),
        ConnInfoError::PortCountMismatch { hosts: 1, ports: 2 }
    ));
}

#[test]
fn port_errors() {
    let e = err(&ConnOptions {
        port: Some("abc".to_string()),
        ..Default::default()
    });
    assert_eq!(
        e.to_string(),
        "invalid port \"abc\" given with -p/--port; give a number from 1 to 65535"
    );
    for bad in ["0", "65536", "-1", "54 32", "0x10", "+5432", "5432abc"] {
        let e = err(&ConnOptions {
            port: Some(bad.to_string()),
            ..Default::default()
        });
        assert!(
            matches!(&e, ConnInfoError::InvalidPort { value: Some(v), origin: Origin::Flag("-p/--port") } if v == bad),
            "{bad}: {e:?}"
        );
    }
    let e = TestEnv::new(&[("PGPORT", "x")])
        .resolve(&ConnOptions::default())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid port \"x\" from PGPORT; give a number from 1 to 65535"
    );
    assert!(matches!(
        err(&d("port=99999")),
        ConnInfoError::InvalidPort {
            origin: Origin::ConnString,
            ..
        }
    ));
    assert_eq!(ok(&d("port=65535")).ports, vec![65535]);
    assert_eq!(ok(&d("port=' 6000 '")).ports, vec![6000]);
}

#[test]
fn flags_override_conninfo() {
    let opts = ConnOptions {
        dbname: Some("host=a port=1 user=u password=p".to_string()),
        host: Some("b".to_string()),
        port: Some("2".to_string()),
        user: Some("v".to_string()),
        prompt: PasswordPrompt::Always,
    };
    let p = ok(&opts);
    assert_eq!(p.hosts, vec![tcp("b")]);
    assert_eq!(p.ports, vec![2]);
    assert_eq!(p.user, "v");
    assert_eq!(pw(&p), Some("p"));
    assert_eq!(p.prompt, PasswordPrompt::Always);
    // -h with a list, -p single: the port applies to every host.
    let p = ok(&ConnOptions {
        host: Some("x,/sock".to_string()),
        port: Some("7".to_string()),
        ..Default::default()
    });
    assert_eq!(p.hosts, vec![tcp("x"), unix("/sock")]);
    assert_eq!(p.ports, vec![7, 7]);
}

#[test]
fn environment_fills_what_is_unset() {
    let env = TestEnv::new(&[
        ("PGHOST", "envhost"),
        ("PGPORT", "6543"),
        ("PGUSER", "envuser"),
        ("PGPASSWORD", "envpw"),
        ("PGAPPNAME", "envapp"),
        ("PGSSLMODE", "disable"),
        ("PGSSLROOTCERT", "/etc/ca.crt"),
        ("PGCONNECT_TIMEOUT", "7"),
    ]);
    let p = env.resolve(&ConnOptions::default()).unwrap();
    assert_eq!(p.hosts, vec![tcp("envhost")]);
    assert_eq!(p.ports, vec![6543]);
    assert_eq!(p.user, "envuser");
    assert_eq!(pw(&p), Some("envpw"));
    assert_eq!(p.application_name, "envapp");
    assert_eq!(p.sslmode, SslMode::Disable);
    assert_eq!(p.sslrootcert, Some(PathBuf::from("/etc/ca.crt")));
    assert_eq!(p.connect_timeout, Some(Duration::from_secs(7)));

    // Anything given in -d or flags beats the environment.
    let p = env
        .resolve(&ConnOptions {
            dbname: Some(
                "user=cu password=cpw application_name=capp sslmode=require connect_timeout=3 \
                 sslrootcert=/c.crt"
                    .to_string(),
            ),
            host: Some("flaghost".to_string()),
            port: Some("1111".to_string()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(p.hosts, vec![tcp("flaghost")]);
    assert_eq!(p.ports, vec![1111]);
    assert_eq!(p.user, "cu");
    assert_eq!(pw(&p), Some("cpw"));
    assert_eq!(p.application_name, "capp");
    assert_eq!(p.sslmode, SslMode::Require);
    assert_eq!(p.sslrootcert, Some(PathBuf::from("/c.crt")));
    assert_eq!(p.connect_timeout, Some(Duration::from_secs(3)));

    // A host list from PGHOST with a single PGPORT.
    let env = TestEnv::new(&[("PGHOST", "/s1,h2"), ("PGPORT", "5")]);
    let p = env.resolve(&ConnOptions::default()).unwrap();
    assert_eq!(p.hosts, vec![unix("/s1"), tcp("h2")]);
    assert_eq!(p.ports, vec![5, 5]);
}

#[test]
fn application_name() {
    assert_eq!(
        ok(&d("fallback_application_name=fb")).application_name,
        "fb"
    );
    assert_eq!(
        ok(&d("fallback_application_name=fb application_name=an")).application_name,
        "an"
    );
    let env = TestEnv::new(&[("PGAPPNAME", "envapp")]);
    assert_eq!(
        env.resolve(&d("fallback_application_name=fb"))
            .unwrap()
            .application_name,
        "envapp"
    );
}

#[test]
fn sslmodes() {
    for (s, m) in [
        ("disable", SslMode::Disable),
        ("allow", SslMode::Allow),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ] {
        let p = ok(&d(&format!("sslmode={s} sslrootcert=/ca.crt")));
        assert_eq!(p.sslmode, m);
        assert_eq!(m.to_string(), s);
    }
    let e = err(&d("sslmode=verify_full"));
    assert_eq!(
        e.to_string(),
        "invalid sslmode \"verify_full\" in the connection string; use disable, allow, prefer, \
         require, verify-ca or verify-full"
    );
    let e = TestEnv::new(&[("PGSSLMODE", "on")])
        .resolve(&ConnOptions::default())
        .unwrap_err();
    assert!(matches!(
        e,
        ConnInfoError::InvalidSslMode {
            origin: Origin::Env("PGSSLMODE"),
            ..
        }
    ));
    assert!(matches!(
        err(&d("sslmode=verify-full")),
        ConnInfoError::MissingRootCert {
            mode: SslMode::VerifyFull
        }
    ));
}

#[test]
fn connect_timeouts() {
    for (s, want) in [
        ("0", None),
        ("-5", None),
        ("1", Some(2)),
        ("2", Some(2)),
        ("30", Some(30)),
        ("' 12 '", Some(12)),
    ] {
        let p = ok(&d(&format!("connect_timeout={s}")));
        assert_eq!(p.connect_timeout, want.map(Duration::from_secs), "{s}");
    }
    let e = TestEnv::new(&[("PGCONNECT_TIMEOUT", "10s")])
        .resolve(&ConnOptions::default())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid connect_timeout \"10s\" from PGCONNECT_TIMEOUT; give whole seconds (0 waits forever)"
    );
}

#[test]
fn urls() {
    let p = ok(&d(
        "postgresql://rep:pw@db1:5433/mydb?sslmode=require&application_name=x&connect_timeout=4",
    ));
    assert_eq!(p.hosts, vec![tcp("db1")]);
    assert_eq!(p.ports, vec![5433]);
    assert_eq!(p.user, "rep");
    assert_eq!(pw(&p), Some("pw"));
    assert_eq!(p.dbname.as_deref(), Some("mydb"));
    assert_eq!(p.sslmode, SslMode::Require);
    assert_eq!(p.application_name, "x");
    assert_eq!(p.connect_timeout, Some(Duration::from_secs(4)));

    let p = ok(&d("postgres://"));
    assert_eq!(p.hosts, vec![unix(SOCK)]);
    assert_eq!(p.ports, vec![5432]);
    assert_eq!(p.user, "osuser");

    let p = ok(&d("postgres://h1:5433,h2,[::1]:5435/db"));
    assert_eq!(p.hosts, vec![tcp("h1"), tcp("h2"), tcp("::1")]);
    assert_eq!(p.ports, vec![5433, 5432, 5435]);

    let p = ok(&d("postgres://[2001:db8::1]"));
    assert_eq!(p.hosts, vec![tcp("2001:db8::1")]);
    assert_eq!(p.ports, vec![5432]);

    let p = ok(&d("postgres://%2Fvar%2Frun%2Fpostgresql:5433/db"));
    assert_eq!(p.hosts, vec![unix("/var/run/postgresql")]);
    assert_eq!(p.ports, vec![5433]);

    let p = ok(&d("postgres:///db?host=/tmp&port=6000&user=u%20x"));
    assert_eq!(p.hosts, vec![unix("/tmp")]);
    assert_eq!(p.ports, vec![6000]);
    assert_eq!(p.user, "u x");

    let p = ok(&d("postgres://us%40er:p%40ss@h?ssl=true"));
    assert_eq!(p.user, "us@er");
    assert_eq!(pw(&p), Some("p@ss"));
    assert_eq!(p.sslmode, SslMode::Require);

    let p = ok(&d("postgres://rep:@h"));
    assert_eq!(p.user, "rep");
    assert_eq!(pw(&p), None);

    // Flags still override what the URL says.
    let p = ok(&ConnOptions {
        dbname: Some("postgres://a:1".to_string()),
        port: Some("2".to_string()),
        ..Default::default()
    });
    assert_eq!(p.hosts, vec![tcp("a")]);
    assert_eq!(p.ports, vec![2]);

    // Uppercase schemes are not URLs to libpq either.
    assert!(matches!(
        err(&d("POSTGRES://h")),
        ConnInfoError::MissingEquals { .. }
    ));
}

#[test]
fn url_errors() {
    assert!(matches!(
        err(&d("postgres://[::1")),
        ConnInfoError::InvalidUrl(_)
    ));
    assert!(matches!(
        err(&d("postgres://h?nope=1")),
        ConnInfoError::UnknownOption {
            origin: Origin::Url,
            ..
        }
    ));
    assert!(matches!(
        err(&d("postgres://h:1,i:2,j/?port=1,2")),
        ConnInfoError::PortCountMismatch { hosts: 3, ports: 2 }
    ));
    let e = err(&d("postgres://h:port/db"));
    assert_eq!(
        e.to_string(),
        "invalid port in the connection URL; give a number from 1 to 65535 \
         (a password in a URL goes in user:password@host)"
    );
}

/// Everything that may hold a password, run through errors and Debug.
#[test]
fn passwords_never_leak() {
    const SECRET: &str = "Sup3rS3cret";
    let leaky_inputs = [
        // URL without '@': user:password reads as host:port.
        format!("postgres://alice:{SECRET}"),
        format!("postgres://alice:{SECRET}/db"),
        // Bad escapes in the password.
        format!("postgres://alice:{SECRET}%zz@h"),
        format!("postgres://alice:{SECRET}%00@h"),
        format!("postgres://alice:{SECRET}%@h"),
        // Unquoted password with a space: the second half is not quoted back.
        format!("password=abc {SECRET}"),
        format!("password=abc {SECRET}=x"),
        format!("password=abc {SECRET} host=h"),
        // Good password, other errors.
        format!("password={SECRET} port=x"),
        format!("postgres://alice:{SECRET}@h:bad/db"),
        format!("postgres://alice:{SECRET}@[::1"),
        format!("postgres://alice:{SECRET}@h?sslmode=bogus"),
        format!("password='{SECRET}"),
    ];
    for input in &leaky_inputs {
        let e = err(&d(input));
        assert!(!e.to_string().contains(SECRET), "{input}: {e}");
        assert!(!format!("{e:?}").contains(SECRET), "{input}: {e:?}");
        let opts = d(input);
        assert!(!format!("{opts:?}").contains(SECRET), "{opts:?}");
    }

    for input in [
        format!("host=h password={SECRET}"),
        format!("postgres://alice:{SECRET}@h/db"),
        format!("postgres://alice@h/db?password={SECRET}"),
    ] {
        let opts = d(&input);
        let p = ok(&opts);
        assert_eq!(pw(&p), Some(SECRET));
        let debug = format!("{p:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains("Password(***)"), "{debug}");
        let debug = format!("{opts:?}");
        assert!(!debug.contains(SECRET), "{debug}");
    }
    let p = TestEnv::new(&[("PGPASSWORD", SECRET)])
        .resolve(&ConnOptions::default())
        .unwrap();
    assert!(!format!("{p:?}").contains(SECRET));
}

#[test]
fn conn_options_debug_shows_redacted_dbname() {
    let opts = d("host=db1 password=hunter2");
    assert_eq!(
        format!("{opts:?}"),
        "ConnOptions { dbname: Some(\"host='db1' password=***\"), host: None, port: None, \
         user: None, prompt: IfNeeded }"
    );
}

fn write_mode(path: &Path, contents: &str, mode: u32) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn passfile_location_and_permissions() {
    let home = tempfile::tempdir().unwrap();
    let mut env = TestEnv::new(&[]);
    env.home = Some(home.path().to_path_buf());

    // Missing ~/.pgpass: none.
    assert_eq!(env.resolve(&ConnOptions::default()).unwrap().passfile, None);

    let pgpass = home.path().join(".pgpass");
    write_mode(&pgpass, "*:*:*:*:x\n", 0o600);
    assert_eq!(
        env.resolve(&ConnOptions::default()).unwrap().passfile,
        Some(pgpass.clone())
    );
    // Group-readable: ignored.
    fs::set_permissions(&pgpass, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(env.resolve(&ConnOptions::default()).unwrap().passfile, None);

    // PGPASSFILE and passfile= point elsewhere; passfile= wins.
    let other = home.path().join("other");
    write_mode(&other, "", 0o600);
    let third = home.path().join("third");
    write_mode(&third, "", 0o600);
    env.vars
        .push(("PGPASSFILE".to_string(), other.display().to_string()));
    assert_eq!(
        env.resolve(&ConnOptions::default()).unwrap().passfile,
        Some(other.clone())
    );
    assert_eq!(
        env.resolve(&d(&format!("passfile={}", third.display())))
            .unwrap()
            .passfile,
        Some(third)
    );
    // An explicit password means the file is not consulted.
    assert_eq!(env.resolve(&d("password=p")).unwrap().passfile, None);
}

#[test]
fn root_cert_default() {
    let home = tempfile::tempdir().unwrap();
    let mut env = TestEnv::new(&[]);
    env.home = Some(home.path().to_path_buf());
    assert_eq!(
        env.resolve(&ConnOptions::default()).unwrap().sslrootcert,
        None
    );
    assert!(matches!(
        env.resolve(&d("sslmode=verify-ca")),
        Err(ConnInfoError::MissingRootCert {
            mode: SslMode::VerifyCa
        })
    ));
    let dir = home.path().join(".postgresql");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("root.crt"), "pem").unwrap();
    let p = env.resolve(&d("sslmode=verify-ca")).unwrap();
    assert_eq!(p.sslrootcert, Some(dir.join("root.crt")));
    assert_eq!(p.sslmode, SslMode::VerifyCa);
}

#[test]
fn password_for_uses_explicit_then_file() {
    let home = tempfile::tempdir().unwrap();
    let mut env = TestEnv::new(&[]);
    env.home = Some(home.path().to_path_buf());
    write_mode(
        &home.path().join(".pgpass"),
        "# walferry\n\
         db1:5432:postgres:rep:not-for-replication\n\
         db1:5432:replication:rep:from-file\n\
         localhost:5433:*:rep:socket\n\
         *:*:*:other:other-user\n",
        0o600,
    );
    let p = env
        .resolve(&d("host=db1,/var/run/postgresql port=5432,5433 user=rep"))
        .unwrap();
    assert_eq!(
        password_for(&p, &p.hosts[0], p.ports[0])
            .map(|p| p.0)
            .as_deref(),
        Some("from-file")
    );
    assert_eq!(
        password_for(&p, &p.hosts[1], p.ports[1])
            .map(|p| p.0)
            .as_deref(),
        Some("socket")
    );
    assert_eq!(password_for(&p, &tcp("db2"), 5432), None);

    let p = env.resolve(&d("user=other")).unwrap();
    assert_eq!(
        password_for(&p, &tcp("anywhere"), 1)
            .map(|p| p.0)
            .as_deref(),
        Some("other-user")
    );

    // The explicit password wins, whatever the file says.
    let p = env.resolve(&d("host=db1 user=rep password=given")).unwrap();
    assert_eq!(
        password_for(&p, &p.hosts[0], p.ports[0])
            .map(|p| p.0)
            .as_deref(),
        Some("given")
    );

    // A file made group-readable after resolving is not read either.
    let p = env.resolve(&d("host=db1 user=rep")).unwrap();
    fs::set_permissions(
        home.path().join(".pgpass"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    assert_eq!(password_for(&p, &p.hosts[0], p.ports[0]), None);
}

/// `resolve` on the real process environment (read, never changed): what -d and the flags
/// give is not overridden by whatever PG* variables the test runner has.
#[test]
fn resolve_reads_the_process_environment() {
    let p = resolve(&ConnOptions {
        dbname: Some("host=db9 port=6001 password=x sslmode=disable connect_timeout=0".into()),
        user: Some("flaguser".into()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(p.hosts, vec![tcp("db9")]);
    assert_eq!(p.ports, vec![6001]);
    assert_eq!(p.user, "flaguser");
    assert_eq!(p.sslmode, SslMode::Disable);
    assert_eq!(p.connect_timeout, None);
    assert_eq!(p.passfile, None);
}

#[test]
fn passwd_entry_of_the_effective_user() {
    // Containers may run under a uid without a passwd entry; then there is nothing to check.
    if let Some(entry) = sys::passwd_entry() {
        assert!(!entry.name.is_empty());
        assert!(entry.home.is_absolute(), "{}", entry.home.display());
    }
}

#[test]
fn target_session_attrs_and_channel_binding() {
    let p = ok(&ConnOptions::default());
    assert_eq!(p.target_session_attrs, TargetSessionAttrs::Any);
    assert_eq!(p.channel_binding, ChannelBindingMode::Prefer);
    for (s, want) in [
        ("any", TargetSessionAttrs::Any),
        ("read-write", TargetSessionAttrs::ReadWrite),
        ("read-only", TargetSessionAttrs::ReadOnly),
        ("primary", TargetSessionAttrs::Primary),
        ("standby", TargetSessionAttrs::Standby),
        ("prefer-standby", TargetSessionAttrs::PreferStandby),
    ] {
        let p = ok(&d(&format!("host=a,b target_session_attrs={s}")));
        assert_eq!(p.target_session_attrs, want);
        assert_eq!(want.as_str(), s);
    }
    // The environment fills it; the -d string wins over it.
    let env = TestEnv::new(&[
        ("PGTARGETSESSIONATTRS", "standby"),
        ("PGCHANNELBINDING", "require"),
        ("PGSSLMODE", "require"),
    ]);
    let p = env.resolve(&ConnOptions::default()).unwrap();
    assert_eq!(p.target_session_attrs, TargetSessionAttrs::Standby);
    assert_eq!(p.channel_binding, ChannelBindingMode::Require);
    let p = env
        .resolve(&d("target_session_attrs=primary channel_binding=disable"))
        .unwrap();
    assert_eq!(p.target_session_attrs, TargetSessionAttrs::Primary);
    assert_eq!(p.channel_binding, ChannelBindingMode::Disable);

    let e = err(&d("target_session_attrs=master"));
    assert!(
        matches!(&e, ConnInfoError::InvalidTargetSessionAttrs { value, .. } if value == "master")
    );
    assert!(e.to_string().contains("read-write"), "{e}");
    let e = TestEnv::new(&[("PGCHANNELBINDING", "yes")])
        .resolve(&ConnOptions::default())
        .unwrap_err();
    assert!(e.to_string().contains("from PGCHANNELBINDING"), "{e}");
    // require can never succeed without TLS: said before connecting.
    let e = err(&d("channel_binding=require sslmode=disable"));
    assert!(
        matches!(e, ConnInfoError::ChannelBindingWithoutSsl),
        "{e:?}"
    );
    assert!(e.to_string().contains("sslmode=require"), "{e}");
}

#[test]
fn client_certificate_and_crl_files() {
    let home = tempfile::tempdir().unwrap();
    let mut env = TestEnv::new(&[]);
    env.home = Some(home.path().to_path_buf());
    let dot = home.path().join(".postgresql");
    // Nothing in ~/.postgresql: no certificate, no CRL; the key path is the default.
    let p = env.resolve(&ConnOptions::default()).unwrap();
    assert_eq!(p.sslcert, None);
    assert_eq!(p.sslkey, Some(dot.join("postgresql.key")));
    assert_eq!(p.sslcrl, None);
    assert_eq!(p.sslcrldir, None);
    fs::create_dir(&dot).unwrap();
    fs::write(dot.join("postgresql.crt"), "pem").unwrap();
    fs::write(dot.join("root.crl"), "pem").unwrap();
    let p = env.resolve(&ConnOptions::default()).unwrap();
    assert_eq!(p.sslcert, Some(dot.join("postgresql.crt")));
    assert_eq!(p.sslcrl, Some(dot.join("root.crl")));
    // Explicit values (conninfo over environment) replace the defaults.
    env.vars.push(("PGSSLCERT".into(), "/env.crt".into()));
    env.vars.push(("PGSSLKEY".into(), "/env.key".into()));
    env.vars.push(("PGSSLCRL".into(), "/env.crl".into()));
    env.vars.push(("PGSSLCRLDIR".into(), "/crls".into()));
    let p = env
        .resolve(&d("sslcert=/c.crt sslpassword=s3cret"))
        .unwrap();
    assert_eq!(p.sslcert, Some(PathBuf::from("/c.crt")));
    assert_eq!(p.sslkey, Some(PathBuf::from("/env.key")));
    assert_eq!(p.sslcrl, Some(PathBuf::from("/env.crl")));
    assert_eq!(p.sslcrldir, Some(PathBuf::from("/crls")));
    assert_eq!(p.sslpassword, Some(Password("s3cret".into())));
    assert!(!format!("{p:?}").contains("s3cret"));
}

/// A home directory with `~/.pg_service.conf` and a system directory with
/// `pg_service.conf`, for the service tests.
struct ServiceDirs {
    home: tempfile::TempDir,
    sys: tempfile::TempDir,
}

impl ServiceDirs {
    fn new(user: &str, system: &str) -> ServiceDirs {
        let dirs = ServiceDirs {
            home: tempfile::tempdir().unwrap(),
            sys: tempfile::tempdir().unwrap(),
        };
        fs::write(dirs.home.path().join(".pg_service.conf"), user).unwrap();
        fs::write(dirs.sys.path().join("pg_service.conf"), system).unwrap();
        dirs
    }

    fn env(&self, vars: &[(&str, &str)]) -> TestEnv {
        let mut env = TestEnv::new(vars);
        env.home = Some(self.home.path().to_path_buf());
        env.vars
            .push(("PGSYSCONFDIR".into(), self.sys.path().display().to_string()));
        env
    }
}

#[test]
fn service_values_are_defaults_under_conninfo_and_flags_over_environment() {
    let dirs = ServiceDirs::new(
        "[main]\nhost=svc-host\nport=6000\nuser=svc-user\nsslmode=require\n\
         target_session_attrs=read-write\napplication_name=svc-app\n",
        "[main]\nhost=sys-host\n[sysonly]\nhost=sys-only\nport=6001\n",
    );
    let env = dirs.env(&[("PGHOST", "env-host"), ("PGAPPNAME", "env-app")]);
    let p = env.resolve(&d("service=main port=7000")).unwrap();
    assert_eq!(p.hosts, vec![tcp("svc-host")], "service beats PGHOST");
    assert_eq!(p.ports, vec![7000], "the -d string beats the service");
    assert_eq!(p.user, "svc-user");
    assert_eq!(p.sslmode, SslMode::Require);
    assert_eq!(p.target_session_attrs, TargetSessionAttrs::ReadWrite);
    assert_eq!(p.application_name, "svc-app");

    // Flags beat the service too.
    let p = env
        .resolve(&ConnOptions {
            dbname: Some("service=main".into()),
            host: Some("flag-host".into()),
            user: Some("flag-user".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(p.hosts, vec![tcp("flag-host")]);
    assert_eq!(p.user, "flag-user");

    // PGSERVICE names it when -d does not; the user's file shadows the system file's
    // section of the same name, and a section only the system file has is found there.
    let p = dirs
        .env(&[("PGSERVICE", "main")])
        .resolve(&ConnOptions::default())
        .unwrap();
    assert_eq!(p.hosts, vec![tcp("svc-host")]);
    let p = env.resolve(&d("service=sysonly")).unwrap();
    assert_eq!(p.hosts, vec![tcp("sys-only")]);
    assert_eq!(p.ports, vec![6001]);
    // A service in a URL query.
    let p = env.resolve(&d("postgres:///?service=sysonly")).unwrap();
    assert_eq!(p.hosts, vec![tcp("sys-only")]);

    // PGSERVICEFILE replaces ~/.pg_service.conf.
    let other = dirs.home.path().join("other.conf");
    fs::write(&other, "[main]\nhost=other-host\n").unwrap();
    let p = dirs
        .env(&[("PGSERVICEFILE", &other.display().to_string())])
        .resolve(&d("service=main"))
        .unwrap();
    assert_eq!(p.hosts, vec![tcp("other-host")]);
}

#[test]
fn unknown_service_and_bad_service_files() {
    let dirs = ServiceDirs::new("[main]\nhost=a\n", "[main]\nhost=b\n");
    let e = dirs.env(&[]).resolve(&d("service=nope")).unwrap_err();
    assert!(
        matches!(&e, ConnInfoError::ServiceNotFound { name, .. } if name == "nope"),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with("definition of service \"nope\" not found"),
        "{msg}"
    );
    assert!(msg.contains(".pg_service.conf"), "{msg}");
    assert!(msg.contains("pg_service.conf"), "{msg}");
    let e = dirs
        .env(&[("PGSERVICE", "nope")])
        .resolve(&ConnOptions::default())
        .unwrap_err();
    assert!(matches!(e, ConnInfoError::ServiceNotFound { .. }), "{e:?}");

    // A typo in the service file is reported with its line, not skipped.
    let dirs = ServiceDirs::new("[main]\nhots=a\n", "");
    let e = dirs.env(&[]).resolve(&d("service=main")).unwrap_err();
    assert!(
        matches!(&e, ConnInfoError::ServiceFileSyntax { line: 2, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("\"hots\""), "{e}");
    // A bad value from the service file says where it came from.
    let dirs = ServiceDirs::new("[main]\nport=x\n", "");
    let e = dirs.env(&[]).resolve(&d("service=main")).unwrap_err();
    assert!(e.to_string().contains("in the service file"), "{e}");
}
