//! `walferry receive`'s command line judged against the real pg_receivewal 15, case by case:
//! each row runs both programs with the same arguments and checks that both accept the
//! line (they get as far as connecting, to a port nobody listens on) or both refuse it, and
//! that walferry's message holds pg_receivewal's (the text after "pg_receivewal: error: ")
//! with exit status 2. Where walferry differs on purpose the row says how and why.
//!
//! Run with `--no-capture` to see every row's outcome side by side.

mod common;

use std::fmt;
use std::path::Path;
use std::process::Output;

use common::{client_command, pg_bin, tempdir, walferry_bin};

/// Nothing listens on port 1 of the loopback, so a line that passes every check fails at
/// once when it connects. Row arguments come after these, so a row's own -p wins.
const BASE_ARGS: [&str; 5] = ["-h", "127.0.0.1", "-p", "1", "-w"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Got past the command line: failed to connect.
    Accepted,
    /// Refused before connecting: exit status and the error message.
    Refused(i32, String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Accepted => f.write_str("accepted"),
            Outcome::Refused(code, message) => write!(f, "refused ({code}): {message}"),
        }
    }
}

/// What a row expects.
enum Want {
    /// Both accept, or both refuse and walferry (exit 2) says what pg_receivewal says.
    Same,
    /// Both refuse, each in its own words: getopt's and clap's parsers, or a check made
    /// after the command line (exit 1 in both).
    BothRefuse { walferry_exit: i32 },
    /// A deliberate difference.
    Differs {
        pg: Expect,
        walferry: Expect,
        why: &'static str,
    },
}

enum Expect {
    Accept,
    /// Refused with a message containing this text.
    Refuse(&'static str),
}

impl Expect {
    fn matches(&self, outcome: &Outcome) -> bool {
        match (self, outcome) {
            (Expect::Accept, Outcome::Accepted) => true,
            (Expect::Refuse(text), Outcome::Refused(_, message)) => message.contains(text),
            _ => false,
        }
    }
}

fn run(program: &Path, prefix: &[&str], args: &[String]) -> Output {
    client_command(program)
        .args(prefix)
        .args(BASE_ARGS)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

/// The outcome from a run's exit status and stderr: `connect_failure` marks a line that was
/// accepted; otherwise the message is the first line, less `error_prefix`.
fn outcome(out: &Output, connect_failure: &str, error_prefix: &str) -> Outcome {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().unwrap_or(-1);
    if code == 1 && stderr.contains(connect_failure) {
        return Outcome::Accepted;
    }
    let line = stderr
        .lines()
        .find(|l| l.starts_with(error_prefix))
        .or_else(|| stderr.lines().next())
        .unwrap_or("");
    Outcome::Refused(code, line.trim_start_matches(error_prefix).to_string())
}

fn pg_receivewal(args: &[String]) -> Outcome {
    let out = run(&pg_bin("pg_receivewal"), &[], args);
    outcome(
        &out,
        "connection to server at \"127.0.0.1\", port 1 failed",
        "pg_receivewal: error: ",
    )
}

fn walferry(args: &[String]) -> Outcome {
    let out = run(&walferry_bin(), &["receive"], args);
    let found = outcome(
        &out,
        "could not connect to server at \"127.0.0.1\"",
        "walferry: error: ",
    );
    match found {
        // clap's own errors have no "walferry: " prefix.
        Outcome::Refused(code, m) => Outcome::Refused(code, m.trim_start_matches("error: ").into()),
        accepted => accepted,
    }
}

/// Runs every row, prints the table, and fails listing every row that did not hold.
fn compare(rows: &[(Vec<&str>, Want)]) {
    let dir = tempdir();
    let dir = dir.path().to_str().expect("temp dir path is UTF-8");
    let mut failures = Vec::new();
    for (row, want) in rows {
        let args: Vec<String> = row.iter().map(|a| a.replace("{dir}", dir)).collect();
        let shown = row
            .iter()
            .map(|a| match a.is_empty() || a.contains(' ') {
                true => format!("'{a}'"),
                false => a.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ");
        let pg = pg_receivewal(&args);
        let wf = walferry(&args);
        let verdict = match want {
            Want::Same => match (&pg, &wf) {
                (Outcome::Accepted, Outcome::Accepted) => Ok("same"),
                (Outcome::Refused(_, p), Outcome::Refused(2, w)) if w.contains(p.as_str()) => {
                    Ok("same")
                }
                _ => Err("expected the same outcome and message (walferry exit 2)".to_string()),
            },
            Want::BothRefuse { walferry_exit } => match (&pg, &wf) {
                (Outcome::Refused(..), Outcome::Refused(code, _)) if code == walferry_exit => {
                    Ok("both refuse, own words")
                }
                _ => Err(format!(
                    "expected both to refuse (walferry exit {walferry_exit})"
                )),
            },
            Want::Differs {
                pg: want_pg,
                walferry: want_wf,
                why,
            } => {
                if want_pg.matches(&pg) && want_wf.matches(&wf) {
                    Ok(*why)
                } else {
                    Err(format!("expected the deliberate difference: {why}"))
                }
            }
        };
        println!(
            "{shown:<40} | pg_receivewal {pg} | walferry {wf} | {}",
            verdict.as_ref().map_or("MISMATCH", |v| v)
        );
        if let Err(e) = verdict {
            failures.push(format!(
                "{shown:?}: {e}\n  pg_receivewal: {pg}\n  walferry:      {wf}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows differ:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// A row's arguments for one -Z value.
fn z(spec: &str) -> Vec<&str> {
    vec!["-D", "{dir}", "-Z", spec]
}

const ZSTD_UNSUPPORTED: &str = "compression with ZSTD is not yet supported";
const ZSTD_IS_WALFERRYS: &str = "zstd is walferry's own (pg_receivewal 15 refuses it)";

#[test]
fn compress_specifications_are_read_as_pg_receivewal_reads_them() {
    use Want::*;
    let zstd_ok = || Differs {
        pg: Expect::Refuse(ZSTD_UNSUPPORTED),
        walferry: Expect::Accept,
        why: ZSTD_IS_WALFERRYS,
    };
    let rows: Vec<(Vec<&str>, Want)> = vec![
        // Bare integers: gzip levels, 0 meaning none; C strtol and int rules.
        (z(""), Same),
        (z("0"), Same),
        (z("00"), Same),
        (z("-0"), Same),
        (z("1"), Same),
        (z("9"), Same),
        (z("10"), Same),
        (z("-1"), Same),
        (z("-2"), Same),
        (z(" 5"), Same),
        (z("5 "), Same),
        (z("+5"), Same),
        (z("99999999999"), Same),
        (z("4294967301"), Same),
        // none
        (z("none"), Same),
        (z("none:0"), Same),
        (z("none:1"), Same),
        (z("none:"), Same),
        (z("none:level=0"), Same),
        (z("none:level=1"), Same),
        (z("none:workers=1"), Same),
        // gzip
        (z("gzip"), Same),
        (z("gzip:"), Same),
        (z("gzip:0"), Same),
        (z("gzip:1"), Same),
        (z("gzip:9"), Same),
        (z("gzip:10"), Same),
        (z("gzip:-1"), Same),
        (z("gzip:-2"), Same),
        (z("gzip: 5"), Same),
        (z("gzip:level=5"), Same),
        (z("gzip:level= 5"), Same),
        (z("gzip:level="), Same),
        (z("gzip:level"), Same),
        (z("gzip:level=5x"), Same),
        (z("gzip:level=5=6"), Same),
        (z("gzip:level=5,"), Same),
        (z("gzip:,level=5"), Same),
        (z("gzip:level=5,level=6"), Same),
        (z("gzip:workers=2"), Same),
        (z("gzip:workers=x"), Same),
        (z("gzip:long"), Same),
        (z("gzip:foo"), Same),
        (z("gzip:foo=1"), Same),
        (z("gzip:5x"), Same),
        (z("gzip:5:6"), Same),
        // lz4 (walferry writes the fast mode whatever the level; see --help)
        (z("lz4"), Same),
        (z("lz4:"), Same),
        (z("lz4:0"), Same),
        (z("lz4:1"), Same),
        (z("lz4:12"), Same),
        (z("lz4:13"), Same),
        (z("lz4:-1"), Same),
        (z("lz4:level=3"), Same),
        (z("lz4:workers=1"), Same),
        (z("lz4::"), Same),
        // zstd: the specification is checked by PostgreSQL's rules in both; what passes,
        // pg_receivewal 15 then refuses and walferry writes.
        (z("zstd"), zstd_ok()),
        (z("zstd:0"), zstd_ok()),
        (z("zstd:1"), zstd_ok()),
        (z("zstd:22"), zstd_ok()),
        (z("zstd:-1"), zstd_ok()),
        (z("zstd:-131072"), zstd_ok()),
        (z("zstd:level=19"), zstd_ok()),
        (z("zstd:workers=0"), zstd_ok()),
        (z("zstd:23"), Same),
        (z("zstd:-131073"), Same),
        (z("zstd:level="), Same),
        (z("zstd:long"), Same),
        (z("zstd:"), Same),
        (
            z("zstd:workers=2"),
            Differs {
                pg: Expect::Refuse(ZSTD_UNSUPPORTED),
                walferry: Expect::Refuse("\"workers\" must be 0"),
                why: "walferry's zstd writer is single-threaded",
            },
        ),
        // Names are exact.
        (z("GZIP"), Same),
        (z("Gzip"), Same),
        (z("gzip "), Same),
        (z(" gzip"), Same),
        (z("bzip2"), Same),
        (z(":"), Same),
        (z(":5"), Same),
        // The long spelling, and a repeated -Z: the last one counts.
        (vec!["-D", "{dir}", "--compress=none:1"], Same),
        (vec!["-D", "{dir}", "-Z", "bad", "-Z", "lz4"], Same),
        (vec!["-D", "{dir}", "-Z", "lz4", "-Z", "bad"], Same),
        // The specification is checked after the directory, and also for slot actions.
        (vec!["-Z", "bad"], Same),
        (vec!["--drop-slot", "-S", "s", "-Z", "bad"], Same),
    ];
    compare(&rows);
}

#[test]
fn other_flags_are_checked_as_pg_receivewal_checks_them() {
    use Want::*;
    let lenient_endpos = || Differs {
        pg: Expect::Accept,
        walferry: Expect::Refuse("could not parse end position"),
        why: "walferry's -E takes X/X only, not all that sscanf(\"%X/%X\") lets through",
    };
    let rows: Vec<(Vec<&str>, Want)> = vec![
        (vec![], Same),
        (vec!["-D", "{dir}"], Same),
        // Operands.
        (vec!["-D", "{dir}", "extra"], Same),
        (vec!["-D", "{dir}", "extra", "more"], Same),
        (vec!["extra", "-D", "{dir}"], Same),
        // Slot actions.
        (vec!["--create-slot", "--drop-slot"], Same),
        (vec!["--create-slot", "--drop-slot", "-S", "s"], Same),
        (vec!["--create-slot"], Same),
        (vec!["--drop-slot"], Same),
        (vec!["-D", "{dir}", "--create-slot"], Same),
        (vec!["--create-slot", "-S", "s"], Same),
        (vec!["--drop-slot", "-S", "s"], Same),
        (vec!["--create-slot", "-S", "s", "--if-not-exists"], Same),
        (vec!["-D", "{dir}", "--if-not-exists"], Same),
        (vec!["-D", "{dir}", "-S", ""], Same),
        (vec!["--create-slot", "--synchronous", "--no-sync"], Same),
        // Sync flags.
        (vec!["--synchronous", "--no-sync"], Same),
        (vec!["-D", "{dir}", "--synchronous", "--no-sync"], Same),
        (vec!["-D", "{dir}", "--synchronous"], Same),
        (vec!["-D", "{dir}", "--no-sync"], Same),
        // -s/--status-interval: fe_utils option_parse_int, 0..INT_MAX/1000.
        (vec!["-D", "{dir}", "-s", "0"], Same),
        (vec!["-D", "{dir}", "-s", "-0"], Same),
        (vec!["-D", "{dir}", "-s", ""], Same),
        (vec!["-D", "{dir}", "-s", " 5 "], Same),
        (vec!["-D", "{dir}", "-s", "+5"], Same),
        (vec!["-D", "{dir}", "-s", "2147483"], Same),
        (vec!["-D", "{dir}", "-s", "2147484"], Same),
        (vec!["-D", "{dir}", "-s", "-1"], Same),
        (vec!["-D", "{dir}", "-s", "99999999999"], Same),
        (vec!["-D", "{dir}", "-s", "abc"], Same),
        (vec!["-D", "{dir}", "-s", "5x"], Same),
        (vec!["-D", "{dir}", "-s", "- 5"], Same),
        (vec!["-D", "{dir}", "--status-interval=7"], Same),
        (
            vec!["-D", "{dir}", "-s", "x", "-s", "5"],
            Differs {
                pg: Expect::Refuse("invalid value \"x\" for option -s/--status-interval"),
                walferry: Expect::Accept,
                why: "pg_receivewal checks each -s as it parses it; walferry only the last",
            },
        ),
        // -E/--endpos.
        (vec!["-D", "{dir}", "-E", "0/0"], Same),
        (vec!["-D", "{dir}", "-E", "16/B374D848"], Same),
        (vec!["-D", "{dir}", "-E", "FFFFFFFF/FFFFFFFF"], Same),
        (vec!["-D", "{dir}", "-E", " 1/2"], Same),
        (vec!["-D", "{dir}", "-E", "+1/2"], Same),
        (vec!["-D", "{dir}", "-E", "abc"], Same),
        (vec!["-D", "{dir}", "-E", ""], Same),
        (vec!["-D", "{dir}", "-E", "1/"], Same),
        (vec!["-D", "{dir}", "-E", "/1"], Same),
        (vec!["-D", "{dir}", "-E", "1-2"], Same),
        (vec!["-D", "{dir}", "-E", "g/1"], Same),
        (vec!["-D", "{dir}", "--endpos=0/1"], Same),
        (vec!["-D", "{dir}", "-E", "1/2xyz"], lenient_endpos()),
        (vec!["-D", "{dir}", "-E", "0x1/0x2"], lenient_endpos()),
        (vec!["-D", "{dir}", "-E", "1/-1"], lenient_endpos()),
        (vec!["-D", "{dir}", "-E", "123456789/0"], lenient_endpos()),
        // getopt_long: repeated flags, abbreviations, values starting with '-'.
        (vec!["-D", "{dir}", "-n", "-n"], Same),
        (vec!["-D", "{dir}", "-W", "-w"], Same),
        (vec!["-D", "{dir}", "-v", "-v"], Same),
        (vec!["-D", "/nonexistent", "-D", "{dir}"], Same),
        (vec!["-D", "{dir}", "--comp=gzip"], Same),
        (vec!["-D", "{dir}", "--sync"], Same),
        (vec!["-D", "{dir}", "--status=5"], Same),
        (vec!["--direct={dir}"], Same),
        (vec!["-D", "{dir}", "-Z", "-1"], Same),
        (vec!["-D", "{dir}", "-S", "-n"], Same),
        // The parsers' own complaints, in their own words.
        (
            vec!["-D", "{dir}", "--s=5"],
            BothRefuse { walferry_exit: 2 },
        ),
        (
            vec!["-D", "{dir}", "--bogus"],
            BothRefuse { walferry_exit: 2 },
        ),
        (vec!["-D", "{dir}", "-x"], BothRefuse { walferry_exit: 2 }),
        (vec!["-D"], BothRefuse { walferry_exit: 2 }),
        // Checked after the command line, before connecting, in each one's words.
        (vec!["-D", "/nonexistent"], BothRefuse { walferry_exit: 1 }),
        (vec!["-D", ""], BothRefuse { walferry_exit: 1 }),
        (
            vec!["-D", "{dir}", "-p", "abc"],
            BothRefuse { walferry_exit: 1 },
        ),
    ];
    compare(&rows);
}
