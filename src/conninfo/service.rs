//! Connection service files (`pg_service.conf`): `service=name` (or PGSERVICE) names a
//! `[name]` section of `key=value` lines whose values fill whatever the connection string
//! and the flags left unset, before the environment does, as libpq's fe-connect.c
//! `parseServiceInfo`. The user's file (PGSERVICEFILE, else `~/.pg_service.conf`) is read
//! first; the system-wide `PGSYSCONFDIR/pg_service.conf` only when the user's file has no
//! such section. A default file that does not exist is skipped, a PGSERVICEFILE that does
//! not exist is an error (as in libpq), and so is a service found nowhere.

use std::path::PathBuf;

use super::parse::classify;
use super::{ConnInfoError, Environment, Origin};

/// A file to search, and whether it must exist (PGSERVICEFILE must).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ServiceFile {
    pub path: PathBuf,
    pub required: bool,
}

/// The files to search, in order.
pub(super) fn files(env: &Environment<'_>) -> Vec<ServiceFile> {
    let var = |name: &str| (env.var)(name).filter(|v| !v.is_empty());
    let mut files = Vec::with_capacity(2);
    match var("PGSERVICEFILE") {
        Some(f) => files.push(ServiceFile {
            path: PathBuf::from(f),
            required: true,
        }),
        None => files.extend(env.home.map(|h| ServiceFile {
            path: h.join(".pg_service.conf"),
            required: false,
        })),
    }
    let sysconfdir = var("PGSYSCONFDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env.default_sysconfdir.to_path_buf());
    files.push(ServiceFile {
        path: sysconfdir.join("pg_service.conf"),
        required: false,
    });
    files
}

/// The settings of service `name` from the first of `files` that has its section, in file
/// order (a caller that keeps the first value of each keyword gets libpq's "first wins").
pub(super) fn lookup(
    name: &str,
    files: &[ServiceFile],
) -> Result<Vec<(&'static str, String)>, ConnInfoError> {
    for ServiceFile { path, required } in files {
        if !path.exists() && !required {
            continue;
        }
        let text = std::fs::read(path).map_err(|source| ConnInfoError::ServiceFileRead {
            path: path.clone(),
            source,
        })?;
        let text = String::from_utf8_lossy(&text);
        let syntax = |line: usize, problem: String| ConnInfoError::ServiceFileSyntax {
            path: path.clone(),
            line,
            problem,
        };
        let Some(lines) = section(&text, name) else {
            continue;
        };
        let mut out = Vec::new();
        for (line, key, value) in lines {
            if key.is_empty() {
                return Err(syntax(line, "syntax error: expected key=value".into()));
            }
            if key == "service" {
                return Err(syntax(
                    line,
                    "nested service specifications are not supported".into(),
                ));
            }
            match classify(key, value, Origin::Service, false) {
                Ok(Some(keyword)) => out.push((keyword, value.to_string())),
                Ok(None) => {}
                Err(ConnInfoError::UnknownOption { .. }) => {
                    return Err(syntax(
                        line,
                        format!("syntax error: unknown keyword \"{key}\""),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
        return Ok(out);
    }
    Err(ConnInfoError::ServiceNotFound {
        name: name.to_string(),
        searched: files.iter().map(|f| f.path.clone()).collect(),
    })
}

/// One `key=value` line of a section: (line number, key, value).
type Entry<'a> = (usize, &'a str, &'a str);

/// The lines of section `[name]`, or `None` when the file has no such section. As libpq:
/// leading and trailing whitespace is dropped, blank lines and `#` comments are skipped,
/// the section ends at the next `[`, and a line is split at its first `=` with no trimming
/// around it (`host = a` is the keyword `host `, which is unknown). A line without `=`
/// becomes an entry with an empty key, reported as a syntax error by the caller.
fn section<'a>(text: &'a str, name: &str) -> Option<Vec<Entry<'a>>> {
    let mut found: Option<Vec<Entry<'a>>> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            if found.is_some() {
                break;
            }
            if header
                .strip_prefix(name)
                .is_some_and(|r| r.starts_with(']'))
            {
                found = Some(Vec::new());
            }
            continue;
        }
        if let Some(entries) = found.as_mut() {
            let (key, value) = line.split_once('=').unwrap_or(("", line));
            entries.push((n + 1, key, value));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const FILE: &str = "\
# a comment
[other]
host=elsewhere

  [main]   
host=db1,db2
  port=5433  
# inside
user=rep
application_name=a=b
sslmode=require
[after]
host=never
";

    #[test]
    fn section_lines_as_libpq_reads_them() {
        let entries = section(FILE, "main").unwrap();
        assert_eq!(
            entries,
            vec![
                (6, "host", "db1,db2"),
                (7, "port", "5433"),
                (9, "user", "rep"),
                (10, "application_name", "a=b"),
                (11, "sslmode", "require"),
            ]
        );
        assert_eq!(
            section(FILE, "other").unwrap(),
            vec![(3, "host", "elsewhere")]
        );
        assert!(section(FILE, "mai").is_none());
        assert!(section(FILE, "main]").is_none());
        assert!(section(FILE, "missing").is_none());
        assert!(section("", "main").is_none());
        assert_eq!(
            section("[empty]\n[next]\nhost=x\n", "empty").unwrap(),
            vec![]
        );
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn optional(path: &Path) -> ServiceFile {
        ServiceFile {
            path: path.to_path_buf(),
            required: false,
        }
    }

    #[test]
    fn first_file_with_the_section_wins() {
        let dir = tempfile::tempdir().unwrap();
        let user = write(dir.path(), "user.conf", "[a]\nhost=user-a\n");
        let system = write(dir.path(), "sys.conf", "[a]\nhost=sys-a\n[b]\nport=7\n");
        let missing = dir.path().join("missing.conf");
        let files = [optional(&missing), optional(&user), optional(&system)];
        assert_eq!(
            lookup("a", &files).unwrap(),
            vec![("host", "user-a".into())]
        );
        // Not in the user's file: the system file is searched.
        assert_eq!(lookup("b", &files).unwrap(), vec![("port", "7".into())]);
        let err = lookup("c", &files).unwrap_err();
        assert!(
            matches!(&err, ConnInfoError::ServiceNotFound { name, searched } if name == "c" && searched.len() == 3),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("definition of service \"c\" not found; looked in"),
            "{msg}"
        );
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
        // A PGSERVICEFILE that does not exist is an error, not skipped.
        let required = ServiceFile {
            path: missing.clone(),
            required: true,
        };
        let err = lookup("a", &[required, optional(&system)]).unwrap_err();
        assert!(
            matches!(&err, ConnInfoError::ServiceFileRead { path, .. } if *path == missing),
            "{err:?}"
        );
    }

    #[test]
    fn syntax_errors_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        for (text, line, needle) in [
            ("[s]\nhost=a\nport 5432\n", 3, "expected key=value"),
            ("[s]\nhost = a\n", 2, "unknown keyword \"host \""),
            ("[s]\nservice=t\n", 2, "nested service"),
        ] {
            let f = write(dir.path(), "bad.conf", text);
            let err = lookup("s", &[optional(&f)]).unwrap_err();
            match &err {
                ConnInfoError::ServiceFileSyntax { path, line: l, .. } => {
                    assert_eq!((path, *l), (&f, line), "{text:?}")
                }
                other => panic!("{text:?}: {other:?}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(needle), "{msg}");
            assert!(msg.contains(&format!("line {line}")), "{msg}");
        }
        // A refused keyword is refused here too; an ignored one is dropped.
        let f = write(dir.path(), "r.conf", "[s]\nhostaddr=1.2.3.4\n");
        assert!(matches!(
            lookup("s", &[optional(&f)]),
            Err(ConnInfoError::UnsupportedOption {
                keyword: "hostaddr",
                ..
            })
        ));
        let f = write(dir.path(), "i.conf", "[s]\noptions=-c x=y\nport=1\n");
        assert_eq!(
            lookup("s", &[optional(&f)]).unwrap(),
            vec![("port", "1".into())]
        );
    }
}
