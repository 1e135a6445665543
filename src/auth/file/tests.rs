use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::*;

// The integration tests' rule for a missing prerequisite, shared with them (the WAL
// decoder's tests include the same file).
#[allow(clippy::duplicate_mod)]
#[path = "../../../tests/common/prerequisite.rs"]
mod prerequisite;

/// Real PostgreSQL 15 verifiers (see scram_tests.rs): user `u` password `p`, and another.
const V1: &str = "SCRAM-SHA-256$4096:cutcscTshUHYsXVmFmZKWQ==$XKWXR9ZYhNyTmOovd3FbILKas4KnHXcgroqqIspxvzE=:9jBuZCm9fyZmcia63hsTqXoofjoA+jk85BT5YkIGxKY=";
const V2: &str = "SCRAM-SHA-256$4096:QTfVzzzH0mFHuH3OUt6CHw==$647kZFtNN72vX/emR1kP7NItWynow5RggaUsBAvV9xg=:gpzzp/b+ruXrHFAdjDTHo0L6jF+cPnIJXyCumpVI3Mw=";

fn parse(text: &str) -> Result<AuthFile, AuthFileError> {
    AuthFile::parse(Path::new("/etc/walferry/auth"), text.as_bytes())
}

fn line_error(text: &str) -> (usize, LineError, String) {
    match parse(text).unwrap_err() {
        e @ AuthFileError::Line { .. } => {
            let message = e.to_string();
            let AuthFileError::Line { line, error, .. } = e else {
                unreachable!()
            };
            (line, error, message)
        }
        e => panic!("not a line error: {e:?}"),
    }
}

#[test]
fn entries_comments_quotes() {
    let text = format!(
        "# walferry relay users\n\
         \n\
         replicator {V1}\n\
         \t  \"standby two\"\t{V2}   # the DR site\r\n\
         \"say \"\"hi\"\"\" {V1}\n\
         \"#hash\" {V2}#comment right after\n\
         Replicator {V2}\n\
         # \"commented out\" {V1}\n\
         \x20\x20\n"
    );
    let file = parse(&text).unwrap();
    assert_eq!(
        file.users(),
        [
            "#hash",
            "Replicator",
            "replicator",
            "say \"hi\"",
            "standby two"
        ]
    );
    let v1 = Verifier::parse(V1).unwrap();
    let v2 = Verifier::parse(V2).unwrap();
    assert_eq!(file.verifier("replicator"), Some(&v1));
    assert_eq!(file.verifier("Replicator"), Some(&v2)); // case matters
    assert_eq!(file.verifier("standby two"), Some(&v2));
    assert_eq!(file.verifier("say \"hi\""), Some(&v1));
    assert_eq!(file.verifier("#hash"), Some(&v2));
    assert_eq!(file.verifier("REPLICATOR"), None);
    assert_eq!(file.verifier("commented out"), None);
    assert_eq!(file.len(), 5);
    assert!(parse("").unwrap().is_empty());
    assert!(parse("# nothing\n\n").unwrap().is_empty());
}

#[test]
fn md5_and_plaintext_are_refused_with_the_way_out() {
    let text = format!("u {V1}\nbob md5a3556571e93b0d20722ba62be61e8c2d\n");
    let (line, error, message) = line_error(&text);
    assert_eq!(line, 2);
    assert_eq!(error, LineError::Md5 { user: "bob".into() });
    assert!(
        message.starts_with("auth file \"/etc/walferry/auth\", line 2: "),
        "{message}"
    );
    assert!(
        message.contains(
            "only SCRAM-SHA-256 verifiers are accepted; get one with \
             `walferry auth-verifier bob` or from pg_authid"
        ),
        "{message}"
    );
    assert!(!message.contains("a3556571"));

    let (line, error, message) = line_error("\n\n\"the boss\" hunter2\n");
    assert_eq!(line, 3);
    assert_eq!(
        error,
        LineError::NotScram {
            user: "the boss".into()
        }
    );
    assert!(
        message.contains("plaintext passwords are refused"),
        "{message}"
    );
    assert!(
        message.contains("`walferry auth-verifier 'the boss'`"),
        "{message}"
    );
    assert!(!message.contains("hunter2"));
}

#[test]
fn every_line_error_names_its_line_and_hides_the_secret() {
    let bad_key = V1.replace(":9jBu", ":9jB");
    let cases: Vec<(String, LineError, &str)> = vec![
        (
            format!("\"unterminated {V1}"),
            LineError::UnterminatedQuote,
            "",
        ),
        (format!("a\"b {V1}"), LineError::StrayQuote, ""),
        (format!("\"a\"b {V1}"), LineError::StrayQuote, ""),
        (format!("\"\" {V1}"), LineError::EmptyUser, ""),
        (V1.to_string(), LineError::MissingVerifier, V1),
        (
            "secretpassword # no user".into(),
            LineError::MissingVerifier,
            "secretpassword",
        ),
        ("alice".into(), LineError::MissingVerifier, ""),
        (
            format!("alice {V1} extra-secret"),
            LineError::TrailingText {
                user: "alice".into(),
            },
            "extra-secret",
        ),
        (
            "alice pass word".into(),
            LineError::TrailingText {
                user: "alice".into(),
            },
            "pass",
        ),
        (
            format!("alice {bad_key}"),
            LineError::BadVerifier {
                user: "alice".into(),
                reason: VerifierError::ServerKey,
            },
            "XKWXR9ZY",
        ),
        (
            "alice SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA".into(),
            LineError::BadVerifier {
                user: "alice".into(),
                reason: VerifierError::Iterations,
            },
            "c2FsdA",
        ),
    ];
    for (entry, want, secret) in cases {
        let text = format!("# header\nu {V2}\n{entry}\nv {V1}\n");
        let (line, error, message) = line_error(&text);
        assert_eq!((line, &error), (3, &want), "{entry}");
        assert!(message.contains("line 3: "), "{message}");
        if !secret.is_empty() {
            assert!(!message.contains(secret), "{message}");
        }
        assert!(!message.contains("9jBuZCm9"), "{message}");
    }
}

#[test]
fn duplicates_and_bad_utf8_are_errors() {
    let text = format!("a {V1}\nb {V2}\n\"a\" {V2}\n");
    let err = parse(&text).unwrap_err();
    assert!(
        matches!(&err, AuthFileError::Duplicate { user, first: 1, line: 3, .. } if user == "a"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "auth file \"/etc/walferry/auth\", line 3: user \"a\" is already listed on line 1"
    );

    let mut bytes = format!("a {V1}\n").into_bytes();
    bytes.extend_from_slice(b"b\xFF SCRAM\n");
    let err = AuthFile::parse(Path::new("f"), &bytes).unwrap_err();
    assert!(
        matches!(
            err,
            AuthFileError::Line {
                line: 2,
                error: LineError::NotUtf8,
                ..
            }
        ),
        "{err:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Loading: file checks

fn write(dir: &Path, name: &str, mode: u32, contents: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, contents).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn load_reads_a_private_file() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [0o600, 0o400] {
        let path = write(dir.path(), "auth", mode, &format!("u {V1}\n"));
        let file = AuthFile::load(&path).unwrap();
        assert_eq!(file.users(), ["u"]);
        assert_eq!(file.path(), path);
        fs::remove_file(&path).unwrap();
    }
    // A symlink to a private file is fine (the target is what is checked, as libpq does).
    let target = write(dir.path(), "target", 0o600, &format!("u {V1}\n"));
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert_eq!(AuthFile::load(&link).unwrap().len(), 1);
}

#[test]
fn load_refuses_group_or_world_access() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "auth", 0o600, &format!("u {V1}\n"));
    for mode in [0o640, 0o604, 0o601, 0o660, 0o644, 0o610, 0o602] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let err = AuthFile::load(&path).unwrap_err();
        assert!(
            matches!(err, AuthFileError::Permissions { mode: m, .. } if m == mode),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "auth file \"{}\" has group or world access (mode {mode:04o}); it holds \
                 password verifiers",
                path.display()
            )
        );
        assert_eq!(
            err.hint().unwrap(),
            format!("chmod 0600 {}", path.display())
        );
    }
}

#[test]
fn load_refuses_a_file_of_another_user() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        prerequisite::missing("root", "only root can give a file to another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "auth", 0o600, &format!("u {V1}\n"));
    std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
    let err = AuthFile::load(&path).unwrap_err();
    assert!(
        matches!(
            err,
            AuthFileError::Owner {
                owner: 65534,
                euid: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    assert!(err.hint().unwrap().contains("chmod 0600"));
}

#[test]
fn load_refuses_what_is_not_a_usable_file() {
    let dir = tempfile::tempdir().unwrap();
    // A directory, private or not.
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).unwrap();
    fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
    assert!(matches!(
        AuthFile::load(&sub),
        Err(AuthFileError::NotAFile { .. })
    ));
    // A FIFO: refused at once, not waited on.
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    assert!(matches!(
        AuthFile::load(&fifo),
        Err(AuthFileError::NotAFile { .. })
    ));
    // Missing.
    let missing = dir.path().join("missing");
    let err = AuthFile::load(&missing).unwrap_err();
    assert!(matches!(err, AuthFileError::Io { .. }), "{err:?}");
    assert!(err.to_string().starts_with(&format!(
        "could not read auth file \"{}\"",
        missing.display()
    )));
    // No entries.
    let empty = write(dir.path(), "empty", 0o600, "# no one yet\n");
    let err = AuthFile::load(&empty).unwrap_err();
    assert!(matches!(err, AuthFileError::Empty { .. }), "{err:?}");
    assert!(err.hint().unwrap().contains("walferry auth-verifier USER"));
    // A bad line: the error names the file and line.
    let bad = write(dir.path(), "bad", 0o600, &format!("u {V1}\nv plaintext\n"));
    let err = AuthFile::load(&bad).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("auth file \"{}\", line 2: ", bad.display())),
        "{err}"
    );
}

#[test]
fn shell_words_are_quoted_when_needed() {
    assert_eq!(shell_word("bob"), "bob");
    assert_eq!(shell_word("/etc/walferry/auth"), "/etc/walferry/auth");
    assert_eq!(shell_word("the boss"), "'the boss'");
    assert_eq!(shell_word("o'neil"), r"'o'\''neil'");
    assert_eq!(shell_word(""), "''");
}
