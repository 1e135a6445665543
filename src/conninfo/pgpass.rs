//! The password file (`~/.pgpass`, `PGPASSFILE`, `passfile=`), read as libpq's fe-connect.c
//! `passwordFromFile` reads it: lines `hostname:port:database:username:password`, `*`
//! matching anything in the first four fields, `\:` and `\\` escapes, `#` comment lines, the
//! first matching line wins. A file that is not a plain file or that the group or others may
//! access is ignored with a warning, as libpq ignores it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::Host;

/// The database name libpq matches for a physical replication connection.
pub(crate) const REPLICATION_DATABASE: &str = "replication";

/// What [`check`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FileState {
    Missing,
    Usable,
    /// Present but ignored; a warning has been logged.
    Ignored,
}

/// Whether the password file may be read, as libpq decides (`stat`, so a symlink to a
/// 0600 file is fine).
pub(crate) fn check(path: &Path) -> FileState {
    let Ok(meta) = fs::metadata(path) else {
        return FileState::Missing;
    };
    if !meta.is_file() {
        tracing::warn!(
            "password file \"{}\" is not a plain file; ignoring it. HINT: point PGPASSFILE at a regular file",
            path.display()
        );
        return FileState::Ignored;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file \"{}\" has group or world access; ignoring it. HINT: chmod 0600 {}",
            path.display(),
            path.display()
        );
        return FileState::Ignored;
    }
    FileState::Usable
}

/// The password for `host`/`port`/`user` from the file at `path`, if it is usable and a
/// line matches (database matched against `replication`).
pub(crate) fn read_password(path: &Path, host: &Host, port: u16, user: &str) -> Option<String> {
    if check(path) != FileState::Usable {
        return None;
    }
    let contents = match fs::read(path) {
        Ok(c) => c,
        Err(e) => {
            // libpq silently skips a file it cannot open; say why at debug level.
            tracing::debug!("cannot read password file \"{}\": {e}", path.display());
            return None;
        }
    };
    lookup(
        &String::from_utf8_lossy(&contents),
        host,
        port,
        REPLICATION_DATABASE,
        user,
    )
}

/// The host names a line's host field may match. A Unix socket matches `localhost`, as
/// libpq matches the default socket directory (we do it for any socket directory: the
/// "default" one differs between builds, e.g. Debian's `/var/run/postgresql` vs `/tmp`),
/// and also its literal path, as libpq matches other socket directories.
fn host_names(host: &Host) -> Vec<String> {
    match host {
        Host::Tcp(h) => vec![h.clone()],
        Host::Unix(p) => vec!["localhost".to_string(), p.display().to_string()],
    }
}

/// One field as written: `*` alone is a wildcard; `\*` is a literal star.
struct Field {
    text: String,
    wildcard: bool,
}

impl Field {
    fn matches(&self, value: &str) -> bool {
        self.wildcard || self.text == value
    }
}

/// Split a line on unescaped `:`, undoing `\x` escapes. A trailing lone backslash is kept.
fn split_fields(line: &str) -> Vec<Field> {
    let mut fields = Vec::new();
    let mut text = String::new();
    let mut raw_star = true; // the raw field so far is exactly "*"
    let mut raw_len = 0;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => {
                fields.push(Field {
                    wildcard: raw_star && raw_len == 1,
                    text: std::mem::take(&mut text),
                });
                raw_star = true;
                raw_len = 0;
                continue;
            }
            '\\' => {
                raw_star = false;
                raw_len += 1;
                text.push(chars.next().unwrap_or('\\'));
            }
            c => {
                raw_star &= c == '*';
                text.push(c);
            }
        }
        raw_len += 1;
    }
    fields.push(Field {
        wildcard: raw_star && raw_len == 1,
        text,
    });
    fields
}

/// The password of the first line of `contents` matching the connection. A line needs its
/// fifth field (it may be empty, then the result is `None`); anything after a fifth
/// unescaped `:` is ignored, as libpq does.
pub(crate) fn lookup(
    contents: &str,
    host: &Host,
    port: u16,
    database: &str,
    user: &str,
) -> Option<String> {
    let names = host_names(host);
    let port = port.to_string();
    for line in contents.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = split_fields(line);
        if fields.len() < 5 {
            continue;
        }
        if names.iter().any(|n| fields[0].matches(n))
            && fields[1].matches(&port)
            && fields[2].matches(database)
            && fields[3].matches(user)
        {
            let password = &fields[4].text;
            return (!password.is_empty()).then(|| password.clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::PathBuf;

    fn tcp(h: &str) -> Host {
        Host::Tcp(h.to_string())
    }

    fn find(contents: &str, host: &Host, port: u16, user: &str) -> Option<String> {
        lookup(contents, host, port, REPLICATION_DATABASE, user)
    }

    #[test]
    fn exact_line() {
        let f = "db1:5432:replication:rep:pw1\n";
        assert_eq!(find(f, &tcp("db1"), 5432, "rep").as_deref(), Some("pw1"));
        assert_eq!(find(f, &tcp("db2"), 5432, "rep"), None);
        assert_eq!(find(f, &tcp("db1"), 5433, "rep"), None);
        assert_eq!(find(f, &tcp("db1"), 5432, "other"), None);
    }

    #[test]
    fn database_must_be_replication() {
        let f = "db1:5432:postgres:rep:wrong\ndb1:5432:replication:rep:right\n";
        assert_eq!(find(f, &tcp("db1"), 5432, "rep").as_deref(), Some("right"));
        assert_eq!(
            lookup(f, &tcp("db1"), 5432, "postgres", "rep").as_deref(),
            Some("wrong")
        );
    }

    #[test]
    fn wildcards_and_first_match_wins() {
        let f = "\
# comment line: db1:5432:*:rep:commented
db1:5432:*:rep:first
*:*:*:rep:second
*:*:*:*:any
";
        assert_eq!(find(f, &tcp("db1"), 5432, "rep").as_deref(), Some("first"));
        assert_eq!(find(f, &tcp("db2"), 6000, "rep").as_deref(), Some("second"));
        assert_eq!(find(f, &tcp("db2"), 6000, "x").as_deref(), Some("any"));
        // Only a field that is exactly "*" is a wildcard.
        let f = "db*:5432:*:rep:a\n\\*:5432:*:rep:b\n";
        assert_eq!(find(f, &tcp("db1"), 5432, "rep"), None);
        assert_eq!(find(f, &tcp("*"), 5432, "rep").as_deref(), Some("b"));
    }

    #[test]
    fn escapes() {
        let f = r"fe80\:\:1:5432:*:rep:pa\:ss\\word\:x
";
        assert_eq!(
            find(f, &tcp("fe80::1"), 5432, "rep").as_deref(),
            Some(r"pa:ss\word:x")
        );
        // A sixth field is ignored; an escaped colon does not end the password.
        let f = "h:1:*:u:pw:extra\n";
        assert_eq!(find(f, &tcp("h"), 1, "u").as_deref(), Some("pw"));
        let f = r"h:1:*:u\\:pw";
        assert_eq!(find(f, &tcp("h"), 1, "u\\").as_deref(), Some("pw"));
    }

    #[test]
    fn short_empty_and_crlf_lines() {
        let f = "h:1:*:u\n\nh:1:*:u:\r\nh:1:*:u:late\r\n";
        // The 4-field line is skipped; the first full match has an empty password.
        assert_eq!(find(f, &tcp("h"), 1, "u"), None);
        let f = "h:1:*:u:crlf\r\n";
        assert_eq!(find(f, &tcp("h"), 1, "u").as_deref(), Some("crlf"));
        assert_eq!(find("", &tcp("h"), 1, "u"), None);
    }

    #[test]
    fn unix_socket_matches_localhost_and_its_path() {
        let sock = Host::Unix(PathBuf::from("/var/run/postgresql"));
        let f = "localhost:5432:*:rep:local\n";
        assert_eq!(find(f, &sock, 5432, "rep").as_deref(), Some("local"));
        let f = "/tmp:5432:*:rep:tmp\n";
        assert_eq!(
            find(f, &Host::Unix(PathBuf::from("/tmp")), 5432, "rep").as_deref(),
            Some("tmp")
        );
        assert_eq!(find(f, &sock, 5432, "rep"), None);
        // A TCP connection to localhost matches too, but not one to 127.0.0.1.
        let f = "localhost:5432:*:rep:local\n";
        assert_eq!(
            find(f, &tcp("localhost"), 5432, "rep").as_deref(),
            Some("local")
        );
        assert_eq!(find(f, &tcp("127.0.0.1"), 5432, "rep"), None);
    }

    fn write_file(dir: &Path, mode: u32, contents: &str) -> PathBuf {
        let path = dir.join("pgpass");
        let mut f = fs::File::create(&path).unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn permission_rule() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), 0o600, "*:*:*:*:secret\n");
        assert_eq!(check(&path), FileState::Usable);
        assert_eq!(
            read_password(&path, &tcp("h"), 5432, "u").as_deref(),
            Some("secret")
        );
        for mode in [0o640, 0o604, 0o601, 0o660, 0o644] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(check(&path), FileState::Ignored, "{mode:o}");
            assert_eq!(read_password(&path, &tcp("h"), 5432, "u"), None, "{mode:o}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(check(&path), FileState::Usable);

        assert_eq!(check(&dir.path().join("missing")), FileState::Missing);
        assert_eq!(
            read_password(&dir.path().join("missing"), &tcp("h"), 1, "u"),
            None
        );

        // A directory is not a plain file, whatever its mode.
        let sub = dir.path().join("sub");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(check(&sub), FileState::Ignored);

        // A symlink to a 0600 file is followed, as stat() does.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert_eq!(check(&link), FileState::Usable);
    }
}
