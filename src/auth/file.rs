//! The relay's auth file (`--auth-file FILE`): who may connect, with which verifier.
//!
//! ```text
//! # user            verifier (pg_authid.rolpassword, or `walferry auth-verifier USER`)
//! replicator        SCRAM-SHA-256$4096:cutcscTshUHYsXVmFmZKWQ==$XKWX...vzE=:9jBu...xKY=
//! "standby two"     SCRAM-SHA-256$4096:...
//! ```
//!
//! - One entry a line: a user name and a verifier, separated by spaces or tabs.
//! - A user name may be double-quoted to hold spaces or `#`; `""` inside the quotes is a
//!   quote. Names are compared exactly (case matters, as for PostgreSQL roles).
//! - `#` outside quotes starts a comment to the end of the line; blank lines are ignored;
//!   CRLF line ends are fine.
//! - Only SCRAM-SHA-256 verifiers: a plaintext password or an md5 hash is an error naming
//!   the line, as is a malformed verifier, a line with one or three fields, a user listed
//!   twice, or a file without entries.
//! - The file must be a regular file owned by the user running the relay and not
//!   accessible to group or others (mode 0600 or 0400): libpq's rule for `.pgpass`, but
//!   an error here, since a verifier allows an offline password guessing attack.
//!
//! No error message contains a verifier or anything else from a line's second field.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::private::Refusal;
use super::scram::{Verifier, VerifierError};

/// The parsed auth file: user name -> verifier.
#[derive(Debug, Clone)]
pub struct AuthFile {
    path: PathBuf,
    entries: HashMap<String, Verifier>,
}

/// Why the auth file cannot be used. Every message names the file (and the line); see
/// [`AuthFileError::hint`] for what to do.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("could not read auth file \"{}\": {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("auth file \"{}\" is not a regular file", .path.display())]
    NotAFile { path: PathBuf },
    #[error(
        "auth file \"{}\" has group or world access (mode {:04o}); it holds password verifiers",
        .path.display(), .mode
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "auth file \"{}\" is owned by uid {owner}, not by the user running walferry (uid {euid})",
        .path.display()
    )]
    Owner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("auth file \"{}\", line {line}: {error}", .path.display())]
    Line {
        path: PathBuf,
        line: usize,
        error: LineError,
    },
    #[error(
        "auth file \"{}\", line {line}: user \"{user}\" is already listed on line {first}",
        .path.display()
    )]
    Duplicate {
        path: PathBuf,
        user: String,
        first: usize,
        line: usize,
    },
    #[error("auth file \"{}\" has no entries: no one could log in", .path.display())]
    Empty { path: PathBuf },
}

/// What is wrong with one line. Never contains the line's secret field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("the quoted user name has no closing quote")]
    UnterminatedQuote,
    #[error("a double quote inside a user name; quote the whole name (\"a\"\"b\" for a\"b)")]
    StrayQuote,
    #[error("the user name is empty")]
    EmptyUser,
    #[error("expected USER SCRAM-SHA-256$..., found a single field")]
    MissingVerifier,
    #[error("unexpected text after the verifier of user \"{user}\"")]
    TrailingText { user: String },
    #[error(
        "the entry of user \"{user}\" is an md5 password hash: only SCRAM-SHA-256 verifiers \
         are accepted; get one with `walferry auth-verifier {}` or from pg_authid",
        shell_word(.user)
    )]
    Md5 { user: String },
    #[error(
        "the entry of user \"{user}\" is not a SCRAM-SHA-256 verifier (plaintext passwords \
         are refused): only SCRAM-SHA-256 verifiers are accepted; get one with \
         `walferry auth-verifier {}` or from pg_authid",
        shell_word(.user)
    )]
    NotScram { user: String },
    #[error("the SCRAM-SHA-256 verifier of user \"{user}\" is malformed: {reason}")]
    BadVerifier { user: String, reason: VerifierError },
}

impl AuthFileError {
    /// What to do about it, for a `hint:` line.
    pub fn hint(&self) -> Option<String> {
        match self {
            AuthFileError::Permissions { path, .. } => {
                Some(format!("chmod 0600 {}", shell_word(&path.to_string_lossy())))
            }
            AuthFileError::Owner { path, euid, .. } => Some(format!(
                "make uid {euid} its owner (chown), or run walferry as its owner; then chmod 0600 {}",
                shell_word(&path.to_string_lossy())
            )),
            AuthFileError::Empty { .. } => Some(
                "add a line `USER SCRAM-SHA-256$...` per user; get a verifier with \
                 `walferry auth-verifier USER` or from pg_authid"
                    .to_string(),
            ),
            AuthFileError::Line {
                error: LineError::MissingVerifier | LineError::TrailingText { .. },
                ..
            } => Some("each line is `USER VERIFIER`; quote a user name that has spaces".to_string()),
            _ => None,
        }
    }
}

/// `s` as one word for a POSIX shell, quoted only when needed.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.,/:@+=%".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

impl AuthFile {
    /// Reads and checks the file: a regular file, owned by the effective uid, no group or
    /// world access, every line valid, at least one entry.
    pub fn load(path: impl AsRef<Path>) -> Result<AuthFile, AuthFileError> {
        let path = path.as_ref();
        let io = |source| AuthFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = match super::private::open_private(path).map_err(io)? {
            Ok(file) => file,
            Err(refusal) => {
                let path = path.to_path_buf();
                return Err(match refusal {
                    Refusal::NotAFile => AuthFileError::NotAFile { path },
                    Refusal::Permissions(mode) => AuthFileError::Permissions { path, mode },
                    Refusal::Owner { owner, euid } => AuthFileError::Owner { path, owner, euid },
                });
            }
        };
        let mut contents = Vec::new();
        file.read_to_end(&mut contents).map_err(io)?;
        let parsed = AuthFile::parse(path, &contents)?;
        if parsed.entries.is_empty() {
            return Err(AuthFileError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(parsed)
    }

    /// Parses file contents (no I/O, no permission checks; `path` only names the file in
    /// errors). An empty result is not an error here.
    pub fn parse(path: &Path, contents: &[u8]) -> Result<AuthFile, AuthFileError> {
        let mut entries = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for (i, raw) in contents.split(|&b| b == b'\n').enumerate() {
            let line = i + 1;
            let at = |error| AuthFileError::Line {
                path: path.to_path_buf(),
                line,
                error,
            };
            let text = std::str::from_utf8(raw).map_err(|_| at(LineError::NotUtf8))?;
            let Some((user, verifier)) = parse_line(text).map_err(at)? else {
                continue;
            };
            if let Some(&first) = first_line.get(&user) {
                return Err(AuthFileError::Duplicate {
                    path: path.to_path_buf(),
                    user,
                    first,
                    line,
                });
            }
            first_line.insert(user.clone(), line);
            entries.insert(user, verifier);
        }
        Ok(AuthFile {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The verifier of `user` (the startup packet's user name), if listed.
    pub fn verifier(&self, user: &str) -> Option<&Verifier> {
        self.entries.get(user)
    }

    /// The user names, sorted.
    pub fn users(&self) -> Vec<&str> {
        let mut users: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        users.sort_unstable();
        users
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\x0b' | '\x0c')
}

/// Where a bare word ends: at a space or a comment.
fn word_end(s: &str) -> usize {
    s.find(|c| is_space(c) || c == '#').unwrap_or(s.len())
}

/// Nothing but spaces and perhaps a comment.
fn is_blank(s: &str) -> bool {
    let s = s.trim_start_matches(is_space);
    s.is_empty() || s.starts_with('#')
}

/// One line: `None` for a blank or comment line, else the user and its verifier.
fn parse_line(line: &str) -> Result<Option<(String, Verifier)>, LineError> {
    if is_blank(line) {
        return Ok(None);
    }
    let rest = line.trim_start_matches(is_space);
    let (user, rest) = match rest.strip_prefix('"') {
        Some(quoted) => {
            let (user, after) = read_quoted(quoted)?;
            if !(after.is_empty() || after.starts_with(|c| is_space(c) || c == '#')) {
                return Err(LineError::StrayQuote);
            }
            (user, after)
        }
        None => {
            let end = word_end(rest);
            let word = &rest[..end];
            if word.contains('"') {
                return Err(LineError::StrayQuote);
            }
            (word.to_string(), &rest[end..])
        }
    };
    if user.is_empty() {
        return Err(LineError::EmptyUser);
    }
    if is_blank(rest) {
        return Err(LineError::MissingVerifier);
    }
    let rest = rest.trim_start_matches(is_space);
    let end = word_end(rest);
    let (secret, after) = rest.split_at(end);
    if !is_blank(after) {
        return Err(LineError::TrailingText { user });
    }
    match Verifier::parse(secret) {
        Ok(v) => Ok(Some((user, v))),
        Err(VerifierError::NotScram) if is_md5(secret) => Err(LineError::Md5 { user }),
        Err(VerifierError::NotScram) => Err(LineError::NotScram { user }),
        Err(reason) => Err(LineError::BadVerifier { user, reason }),
    }
}

/// After an opening quote: the name up to the closing quote (`""` is a quote) and the rest.
fn read_quoted(s: &str) -> Result<(String, &str), LineError> {
    let mut name = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '"' {
            name.push(c);
            continue;
        }
        if s[i + 1..].starts_with('"') {
            name.push('"');
            chars.next();
            continue;
        }
        return Ok((name, &s[i + 1..]));
    }
    Err(LineError::UnterminatedQuote)
}

/// PostgreSQL's test for an md5 hash: "md5" and 32 hex digits.
fn is_md5(s: &str) -> bool {
    s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests;
