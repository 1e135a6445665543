//! `--config FILE`: a command's flags read from a TOML file, for running walferry as a
//! service (one file per instance under /etc/walferry, nothing long in the unit file).
//!
//! The file is turned into command-line arguments rather than into a second set of
//! options: each key is a long flag name (`slot = "walferry"` is `--slot=walferry`), so a
//! flag is declared, documented and validated once, by clap, whichever way it is given.
//! `true` stands for a flag without value (`false` for its absence), a list for a flag
//! given several times, an integer for `verbose` for that many `-v`. A flag given on the
//! command line wins: the file's value for it is dropped, not merely overridden, so that
//! repeated flags (`--listen`) are replaced rather than added to. Keys that are not long
//! flags of the command are refused, never ignored: a misspelt `synchronus = true` must
//! not run a service that acknowledges asynchronously.
//!
//! A command opts in by flattening [`super::service::ServiceArgs`] (`--config`, `--metrics`)
//! into its arguments.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// A config file that cannot be used; the command line is then invalid (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read config file \"{}\": {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file \"{}\": {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("unknown key \"{key}\" in config file \"{}\"", path.display())]
    UnknownKey {
        path: PathBuf,
        key: String,
        command: String,
    },
    #[error("key \"{key}\" in config file \"{}\" must be {expected}", path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
    },
    /// clap refused a value from the file (its message names the flag).
    #[error("{message} in config file \"{}\"", path.display())]
    Invalid {
        path: PathBuf,
        message: String,
        command: String,
    },
}

impl ConfigError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ConfigError::UnknownKey { key, command, .. } if key == "config" => Some(format!(
                "a config file cannot name another one; give --config on the \"walferry {command}\" command line"
            )),
            ConfigError::UnknownKey { command, .. } => Some(format!(
                "keys are the long flag names that \"walferry {command} --help\" lists, without the dashes"
            )),
            ConfigError::Invalid { command, .. } => Some(format!(
                "try \"walferry {command} --help\" for more information"
            )),
            ConfigError::Syntax { .. } => {
                Some("the file is TOML: key = \"text\", key = 10, key = true, key = [\"a\", \"b\"]".into())
            }
            ConfigError::Read { .. } | ConfigError::WrongType { .. } => None,
        }
    }
}

/// `argv` with the flags of the config file named by the subcommand's `--config` inserted
/// right after the subcommand (so that of two flags overriding each other, such as -w and
/// -W, the command line's comes last and wins). Returned unchanged when no config file is
/// named, or when the command line alone does not parse: clap then reports it as usual.
pub fn expand_args(mut cli: Command, argv: Vec<OsString>) -> Result<Vec<OsString>, ConfigError> {
    let Ok(matches) = cli.clone().try_get_matches_from(&argv) else {
        return Ok(argv);
    };
    let Some((name, given)) = matches.subcommand() else {
        return Ok(argv);
    };
    let Ok(Some(path)) = given.try_get_one::<PathBuf>("config") else {
        return Ok(argv);
    };
    // Built, the subcommand also lists the global flags (-v) it inherits.
    cli.build();
    let Some(command) = cli.find_subcommand(name) else {
        return Ok(argv);
    };
    let table = read_table(path)?;
    let from_file = file_args(command, given, &table, path)?;
    let Some(at) = subcommand_index(&argv) else {
        return Ok(argv);
    };

    // Parsed alone first, so that clap's complaint about a value can name the file.
    let alone = argv[..=at].iter().cloned().chain(from_file.iter().cloned());
    if let Err(e) = cli.clone().try_get_matches_from(alone) {
        return Err(ConfigError::Invalid {
            path: path.clone(),
            message: clap_message(&e),
            command: name.to_string(),
        });
    }
    let mut expanded = argv;
    expanded.splice(at + 1..at + 1, from_file);
    Ok(expanded)
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
}

/// The table as `--key=value` arguments for `command`, leaving out the flags that `given`
/// (the command line) already has.
fn file_args(
    command: &Command,
    given: &ArgMatches,
    table: &toml::Table,
    path: &Path,
) -> Result<Vec<OsString>, ConfigError> {
    let mut args = Vec::new();
    for (key, value) in table {
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .filter(|a| {
                !matches!(
                    a.get_action(),
                    ArgAction::Help
                        | ArgAction::Version
                        | ArgAction::HelpShort
                        | ArgAction::HelpLong
                )
            })
            .ok_or_else(|| ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key: key.clone(),
                command: command.get_name().to_string(),
            })?;
        if given.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine) {
            continue;
        }
        let wrong = |expected| ConfigError::WrongType {
            path: path.to_path_buf(),
            key: key.clone(),
            expected,
        };
        let flag = format!("--{key}");
        match arg.get_action() {
            ArgAction::SetTrue => match value {
                toml::Value::Boolean(true) => args.push(flag.into()),
                toml::Value::Boolean(false) => {}
                _ => return Err(wrong("true or false")),
            },
            ArgAction::Count => match value {
                toml::Value::Integer(n @ 0..=16) => {
                    args.extend((0..*n).map(|_| OsString::from(&flag)));
                }
                _ => return Err(wrong("a count from 0 to 16")),
            },
            ArgAction::Append => {
                let values = match value {
                    toml::Value::Array(items) => items.iter().collect(),
                    single => vec![single],
                };
                for v in values {
                    let v =
                        scalar(v).ok_or_else(|| wrong("a text or number, or a list of them"))?;
                    args.push(format!("{flag}={v}").into());
                }
            }
            _ => {
                let v = scalar(value).ok_or_else(|| wrong("a single text or number"))?;
                args.push(format!("{flag}={v}").into());
            }
        }
    }
    Ok(args)
}

/// A value as it would be typed on the command line.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// Where the subcommand is in `argv`: the first operand, as the top-level flags (-v, -?,
/// --version) take no values.
fn subcommand_index(argv: &[OsString]) -> Option<usize> {
    argv.iter()
        .enumerate()
        .skip(1)
        .find(|(_, a)| !a.to_string_lossy().starts_with('-'))
        .map(|(i, _)| i)
}

/// clap's one-line complaint, without its "error: " prefix and usage lines.
fn clap_message(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use clap::{CommandFactory, Parser};

    use super::*;

    fn config_file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn expand(line: &[&str]) -> Result<Vec<String>, ConfigError> {
        let argv = line.iter().map(OsString::from).collect();
        let out = expand_args(crate::Cli::command(), argv)?;
        Ok(out.into_iter().map(|a| a.into_string().unwrap()).collect())
    }

    fn path_of(f: &tempfile::NamedTempFile) -> &str {
        f.path().to_str().unwrap()
    }

    #[test]
    fn keys_become_flags_after_the_subcommand() {
        let f = config_file(
            r#"
            dbname = "host=db1 user=replicator"
            slot = "walferry"
            synchronous = true
            no-loop = false
            status-interval = 5
            compress = "zstd:3"
            verbose = 2
            "#,
        );
        let got = expand(&[
            "walferry",
            "-v",
            "receive",
            "--config",
            path_of(&f),
            "-D",
            "/a",
        ])
        .unwrap();
        // Keys in table order (sorted); -v on the command line drops the file's verbose.
        assert_eq!(
            got,
            [
                "walferry",
                "-v",
                "receive",
                "--compress=zstd:3",
                "--dbname=host=db1 user=replicator",
                "--slot=walferry",
                "--status-interval=5",
                "--synchronous",
                "--config",
                path_of(&f),
                "-D",
                "/a",
            ]
        );
    }

    #[test]
    fn command_line_flags_drop_the_files_value() {
        let f = config_file("slot = \"fromfile\"\ndirectory = \"/file\"\nverbose = 1\n");
        let got = expand(&[
            "walferry",
            "receive",
            "-S",
            "cli",
            &format!("--config={}", path_of(&f)),
        ])
        .unwrap();
        assert_eq!(
            got,
            [
                "walferry",
                "receive",
                "--directory=/file",
                "--verbose",
                "-S",
                "cli",
                &format!("--config={}", path_of(&f)),
            ]
        );
        // And the file's verbose is parsed.
        let cli = crate::Cli::try_parse_from(&got).unwrap();
        assert_eq!(cli.verbose, 1);
    }

    #[test]
    fn the_example_config_file_is_a_valid_receive_command_line() {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/walferry-receive.toml.example"
        );
        let got = expand(&["walferry", "receive", "--config", example]).unwrap();
        assert!(got.contains(&"--slot=walferry".to_string()), "{got:?}");
        assert!(
            got.contains(&"--metrics=127.0.0.1:9187".to_string()),
            "{got:?}"
        );
        let cli = crate::Cli::try_parse_from(&got).unwrap();
        let crate::Command::Receive(args) = cli.command else {
            panic!("not receive: {got:?}");
        };
        assert!(args.check_ok(), "{got:?}");
    }

    #[test]
    fn the_example_relay_config_file_is_a_valid_relay_command_line() {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/walferry-relay.toml.example"
        );
        let got = expand(&["walferry", "relay", "--config", example]).unwrap();
        assert!(
            got.contains(&"--listen=0.0.0.0:5433".to_string()),
            "{got:?}"
        );
        assert!(got.contains(&"--auth=scram".to_string()), "{got:?}");
        let cli = crate::Cli::try_parse_from(&got).unwrap();
        assert!(matches!(cli.command, crate::Command::Relay(_)), "{got:?}");
    }

    #[test]
    fn the_example_agent_config_file_is_a_valid_agent_command_line() {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/walferry-agent.toml.example"
        );
        let got = expand(&["walferry", "agent", "--config", example]).unwrap();
        assert!(got.contains(&"--node=db1".to_string()), "{got:?}");
        assert!(got.contains(&"--fence-timeout=3".to_string()), "{got:?}");
        let cli = crate::Cli::try_parse_from(&got).unwrap();
        match cli.command {
            crate::Command::Agent(args) => {
                assert_eq!(args.report_interval, 0.5);
                assert_eq!(args.priority, 100);
                assert!(args.repo.is_some() && args.upstream.is_none());
            }
            _ => panic!("{got:?}"),
        }
    }

    #[test]
    fn without_config_or_with_a_bad_command_line_argv_is_unchanged() {
        let line = ["walferry", "receive", "-D", "/a"];
        assert_eq!(expand(&line).unwrap(), line);
        let line = ["walferry", "receive", "--bogus", "--config", "/nonexistent"];
        assert_eq!(expand(&line).unwrap(), line);
        let line = ["walferry", "verify", "/a"];
        assert_eq!(expand(&line).unwrap(), line);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        for key in ["synchronus", "dbn", "help", "config", "operands"] {
            let f = config_file(&format!("{key} = \"x\"\n"));
            let e = expand(&["walferry", "receive", "--config", path_of(&f)]).unwrap_err();
            assert!(
                matches!(&e, ConfigError::UnknownKey { key: k, .. } if k == key),
                "{key}: {e:?}"
            );
            assert_eq!(
                e.to_string(),
                format!("unknown key \"{key}\" in config file \"{}\"", path_of(&f))
            );
        }
    }

    #[test]
    fn values_of_the_wrong_type_are_refused() {
        let cases = [
            ("synchronous = \"yes\"", "true or false"),
            ("slot = true", "a single text or number"),
            ("slot = [\"a\", \"b\"]", "a single text or number"),
            ("verbose = -1", "a count from 0 to 16"),
            ("dbname = { host = \"x\" }", "a single text or number"),
        ];
        for (line, expected) in cases {
            let f = config_file(line);
            let e = expand(&["walferry", "receive", "--config", path_of(&f)]).unwrap_err();
            assert!(
                matches!(&e, ConfigError::WrongType { expected: x, .. } if *x == expected),
                "{line}: {e:?}"
            );
        }
    }

    #[test]
    fn toml_syntax_and_missing_files_are_errors() {
        let f = config_file("slot = walferry\n");
        let e = expand(&["walferry", "receive", "--config", path_of(&f)]).unwrap_err();
        assert!(matches!(&e, ConfigError::Syntax { .. }), "{e:?}");
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = expand(&[
            "walferry",
            "receive",
            "--config",
            "/nonexistent/walferry.toml",
        ])
        .unwrap_err();
        assert!(matches!(&e, ConfigError::Read { .. }), "{e:?}");
    }

    #[test]
    fn lists_repeat_a_flag_that_may_be_repeated() {
        // No receive flag repeats yet (the relay's --listen will): exercise one.
        #[derive(clap::Parser)]
        struct Top {
            #[command(subcommand)]
            cmd: Sub,
        }
        #[derive(clap::Subcommand)]
        enum Sub {
            Relay {
                #[arg(long)]
                listen: Vec<String>,
                #[arg(long)]
                port: Option<u16>,
                #[command(flatten)]
                service: crate::commands::service::ServiceArgs,
            },
        }
        let f = config_file("listen = [\"127.0.0.1:5433\", \"[::1]:5433\"]\n");
        let argv = |extra: &[&str]| -> Vec<OsString> {
            ["t", "relay", "--config", path_of(&f)]
                .iter()
                .chain(extra)
                .map(OsString::from)
                .collect()
        };
        let listen = |argv: Vec<OsString>| {
            let top = Top::parse_from(expand_args(Top::command(), argv).unwrap());
            let Sub::Relay { listen, .. } = top.cmd;
            listen
        };
        assert_eq!(listen(argv(&[])), ["127.0.0.1:5433", "[::1]:5433"]);
        // The command line's list replaces the file's.
        assert_eq!(
            listen(argv(&["--listen", "0.0.0.0:6000"])),
            ["0.0.0.0:6000"]
        );

        // A value clap refuses is reported with clap's words and the file's name.
        let bad = config_file("port = \"none\"\n");
        let argv = ["t", "relay", "--config", path_of(&bad)]
            .map(OsString::from)
            .to_vec();
        let e = expand_args(Top::command(), argv).unwrap_err();
        assert!(matches!(e, ConfigError::Invalid { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "invalid value 'none' for '--port <PORT>': invalid digit found in string in config file \"{}\"",
                path_of(&bad)
            )
        );
    }
}
