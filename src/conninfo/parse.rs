//! The `-d` value: a libpq conninfo string (`key=value ...`) or a `postgres://` URL, turned
//! into ordered keyword/value pairs, as libpq's fe-connect.c `conninfo_parse` and
//! `conninfo_uri_parse_options` do. Keywords are checked against libpq's list here; values
//! are interpreted later, in [`super::resolve_with`].
//!
//! Errors never quote text that may be a password: nothing from a URL's user-info part, no
//! URL port (a URL missing its `@` turns `user:password` into `host:port`), and no token
//! that directly follows a `password=` value (an unquoted password with a space in it).

use super::{ConnInfoError, Origin};

/// The keywords walferry acts on; [`super::resolve_with`] reads them by these names.
const USED: &[&str] = &[
    "host",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "application_name",
    "fallback_application_name",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "target_session_attrs",
    "channel_binding",
    "service",
];

/// libpq keywords that are accepted and ignored: they tune things walferry does not do, or
/// do differently, and ignoring them never connects somewhere else nor authenticates less.
/// (`replication` and `dbname`-style walsender selection are fixed by what we run.)
const IGNORED: &[&str] = &[
    "replication",
    "options",
    "client_encoding",
    "load_balance_hosts",
    "sslcertmode",
    "sslcompression",
    "sslsni",
    "sslnegotiation",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "min_protocol_version",
    "max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
];

/// libpq keywords that are refused: ignoring them would silently connect elsewhere or accept
/// weaker authentication than asked for. `gssencmode` is accepted when its value asks for
/// nothing we lack.
const REFUSED: &[(&str, &str)] = &[
    ("hostaddr", "give the address as host= instead"),
    (
        "require_auth",
        "walferry cannot restrict the authentication methods; remove it",
    ),
    (
        "requirepeer",
        "walferry cannot check the server process's user; remove it",
    ),
];

/// Keywords whose values are secrets: never shown in logs or errors.
fn is_secret(keyword: &str) -> bool {
    matches!(keyword, "password" | "sslpassword")
}

/// Whether `-d` holds a URL rather than a conninfo string (libpq `uri_prefix_length`:
/// case-sensitive prefixes).
pub(crate) fn is_url(s: &str) -> bool {
    s.starts_with("postgresql://") || s.starts_with("postgres://")
}

/// Validated pairs, in the order given, keyed by the canonical keyword.
pub(crate) type Settings = Vec<(&'static str, String)>;

/// Parse a `-d` value into validated pairs; the keyword is the canonical one from [`USED`],
/// ignored keywords are dropped. Later pairs override earlier ones when the caller collects.
pub(crate) fn parse_dbname_option(s: &str) -> Result<(Settings, Origin), ConnInfoError> {
    let (pairs, origin) = if is_url(s) {
        (parse_url(s)?, Origin::Url)
    } else {
        (parse_conninfo(s)?, Origin::ConnString)
    };
    let mut out = Vec::with_capacity(pairs.len());
    let mut previous: Option<&str> = None;
    for (keyword, value) in &pairs {
        let hide = previous.is_some_and(is_secret);
        if let Some(k) = classify(keyword, value, origin, hide)? {
            out.push((k, value.clone()));
        }
        previous = Some(keyword);
    }
    Ok((out, origin))
}

/// `Some(canonical keyword)` for a used keyword, `None` for an ignored one.
pub(crate) fn classify(
    keyword: &str,
    value: &str,
    origin: Origin,
    hide: bool,
) -> Result<Option<&'static str>, ConnInfoError> {
    if let Some(k) = USED.iter().find(|k| **k == keyword) {
        return Ok(Some(k));
    }
    if IGNORED.contains(&keyword) {
        return Ok(None);
    }
    let refuse = |keyword: &'static str, hint: &'static str| {
        Err(ConnInfoError::UnsupportedOption { keyword, hint })
    };
    match keyword {
        "gssencmode" if value != "require" => return Ok(None),
        "gssencmode" => {
            return refuse(
                "gssencmode",
                "walferry does not do GSSAPI encryption; use sslmode=require for an encrypted connection",
            )
        }
        _ => {}
    }
    if let Some((k, hint)) = REFUSED.iter().find(|(k, _)| *k == keyword) {
        return refuse(k, hint);
    }
    Err(ConnInfoError::UnknownOption {
        keyword: (!hide).then(|| keyword.to_string()),
        origin,
    })
}

/// libpq's `isspace` in the C locale.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// As fe-connect.c `conninfo_parse`: `key = value` pairs separated by whitespace; a value is
/// either unquoted (up to whitespace) or in single quotes; in both, a backslash takes the
/// next character literally. Whitespace after `=` is skipped even before an empty value,
/// as in libpq (`host= port=1` sets host to `port=1`).
pub(crate) fn parse_conninfo(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    let mut after_password = false;
    loop {
        while chars.next_if(|c| is_space(*c)).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut keyword = String::new();
        while let Some(c) = chars.next_if(|c| !is_space(*c) && *c != '=') {
            keyword.push(c);
        }
        while chars.next_if(|c| is_space(*c)).is_some() {}
        if chars.next() != Some('=') {
            return Err(ConnInfoError::MissingEquals {
                keyword: (!after_password).then_some(keyword),
            });
        }
        while chars.next_if(|c| is_space(*c)).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(ConnInfoError::UnterminatedQuote),
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(ConnInfoError::UnterminatedQuote),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !is_space(*c)) {
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        after_password = is_secret(&keyword);
        out.push((keyword, value));
    }
}

fn url_error(what: impl Into<String>) -> ConnInfoError {
    ConnInfoError::InvalidUrl(what.into())
}

/// As fe-connect.c `conninfo_uri_decode`: `%XX` escapes, `%00` forbidden, `+` kept. `part`
/// names the URL component for the error, which never quotes the text.
fn percent_decode(s: &str, part: &str) -> Result<String, ConnInfoError> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .filter(|_| bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit());
        match hex {
            None => {
                return Err(url_error(format!(
                    "invalid percent-encoding in the {part}; write % as %25 and escapes as %XX with two hex digits"
                )))
            }
            Some(0) => {
                return Err(url_error(format!(
                    "%00 is not allowed in the {part}"
                )))
            }
            Some(b) => out.push(b),
        }
        i += 3;
    }
    String::from_utf8(out).map_err(|_| {
        url_error(format!(
            "the {part} is not valid UTF-8 once percent-decoded"
        ))
    })
}

/// As fe-connect.c `conninfo_uri_parse_options`:
/// `postgres[ql]://[user[:password]@][host[:port][,host[:port]...]][/dbname][?key=value&...]`.
/// The host and port lists are kept as libpq keeps them (comma-joined strings) so that one
/// code path splits them for URLs and conninfo strings alike.
pub(crate) fn parse_url(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let rest = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
        .ok_or_else(|| url_error("it must start with postgresql:// or postgres://"))?;
    let mut out = Vec::new();

    // User info: an '@' before the first '/' (as libpq; a '?' does not end the search).
    let rest = match rest.find(['@', '/']) {
        Some(at) if rest.as_bytes()[at] == b'@' => {
            let userinfo = &rest[..at];
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.push(("user".to_string(), percent_decode(user, "user name")?));
            }
            if let Some(p) = password.filter(|p| !p.is_empty()) {
                out.push(("password".to_string(), percent_decode(p, "password")?));
            }
            &rest[at + 1..]
        }
        _ => rest,
    };

    let b = rest.as_bytes();
    let mut i = 0;
    let mut hosts = String::new();
    let mut ports = String::new();
    let mut term;
    loop {
        if b.get(i) == Some(&b'[') {
            let start = i + 1;
            let end = rest[start..]
                .find(']')
                .map(|j| start + j)
                .ok_or_else(|| url_error("an IPv6 address has no closing \"]\""))?;
            if end == start {
                return Err(url_error("an IPv6 address in [] is empty"));
            }
            hosts.push_str(&rest[start..end]);
            i = end + 1;
            if !matches!(b.get(i), None | Some(b':' | b'/' | b'?' | b',')) {
                return Err(url_error(
                    "unexpected character after an IPv6 address; expected \":\", \"/\", \"?\" or \",\" after \"]\"",
                ));
            }
        } else {
            let start = i;
            while i < b.len() && !matches!(b[i], b':' | b'/' | b'?' | b',') {
                i += 1;
            }
            hosts.push_str(&rest[start..i]);
        }
        term = b.get(i).copied();
        if term == Some(b':') {
            i += 1;
            let start = i;
            while i < b.len() && !matches!(b[i], b'/' | b'?' | b',') {
                i += 1;
            }
            ports.push_str(&rest[start..i]);
            term = b.get(i).copied();
        }
        if term != Some(b',') {
            break;
        }
        i += 1;
        hosts.push(',');
        ports.push(',');
    }
    if !hosts.is_empty() {
        out.push(("host".to_string(), percent_decode(&hosts, "host")?));
    }
    if !ports.is_empty() {
        out.push(("port".to_string(), percent_decode(&ports, "port")?));
    }

    if term == Some(b'/') {
        i += 1;
        let start = i;
        while i < b.len() && b[i] != b'?' {
            i += 1;
        }
        // An empty dbname is left unset, as libpq does.
        if i > start {
            out.push((
                "dbname".to_string(),
                percent_decode(&rest[start..i], "database name")?,
            ));
        }
        term = b.get(i).copied();
    }
    if term.is_some() {
        parse_url_query(&rest[i + 1..], &mut out)?;
    }
    Ok(out)
}

/// As fe-connect.c `conninfo_uri_parse_params`: `key=value` pairs joined by `&`, each
/// percent-decoded; `ssl=true` means `sslmode=require` (JDBC compatibility).
fn parse_url_query(query: &str, out: &mut Vec<(String, String)>) -> Result<(), ConnInfoError> {
    if query.is_empty() {
        return Ok(());
    }
    // A trailing '&' ends the list, as in libpq; an empty parameter elsewhere is an error.
    let query = query.strip_suffix('&').unwrap_or(query);
    for (n, param) in query.split('&').enumerate() {
        let n = n + 1;
        let (key, value) = param.split_once('=').ok_or_else(|| {
            url_error(format!(
                "query parameter {n} has no \"=\"; write ?key=value&key2=value2"
            ))
        })?;
        if value.contains('=') {
            return Err(url_error(format!(
                "query parameter {n} has more than one \"=\"; write = inside a value as %3D"
            )));
        }
        let key = percent_decode(key, &format!("name of query parameter {n}"))?;
        let value = percent_decode(value, &format!("value of query parameter {n}"))?;
        if key == "ssl" && value == "true" {
            out.push(("sslmode".to_string(), "require".to_string()));
        } else {
            out.push((key, value));
        }
    }
    Ok(())
}

/// Whether libpq knows the keyword (used, ignored or refused here).
fn is_known_keyword(k: &str) -> bool {
    USED.contains(&k)
        || IGNORED.contains(&k)
        || REFUSED.iter().any(|(r, _)| *r == k)
        || k == "gssencmode"
        || k == "ssl"
}

/// A copy of a `-d` value that is safe to log: the password (URL user info, `password=`
/// pairs, `?password=` parameters) replaced by `***`, and so is whatever may be a mangled
/// password: unknown keywords with their values, non-numeric URL ports. A conninfo string
/// that does not parse is hidden entirely, since where its password ends is unknown.
pub fn redact(s: &str) -> String {
    if is_url(s) {
        return redact_url(s);
    }
    match parse_conninfo(s) {
        Ok(pairs) => pairs
            .iter()
            .map(|(k, v)| {
                if !is_known_keyword(k) {
                    "***".to_string()
                } else if is_secret(k) {
                    format!("{k}=***")
                } else {
                    format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) => "(connection string hidden: it does not parse)".to_string(),
    }
}

/// `host[:port]` with a non-numeric port hidden (`[v6]:port` too).
fn redact_netloc_entry(entry: &str) -> String {
    let port_at = if entry.starts_with('[') {
        entry.find("]:").map(|i| i + 1)
    } else {
        entry.find(':')
    };
    match port_at {
        Some(i) if !entry[i + 1..].bytes().all(|b| b.is_ascii_digit()) => {
            format!("{}:***", &entry[..i])
        }
        _ => entry.to_string(),
    }
}

fn redact_url(s: &str) -> String {
    let scheme_len = if s.starts_with("postgresql://") {
        "postgresql://".len()
    } else {
        "postgres://".len()
    };
    let (scheme, rest) = s.split_at(scheme_len);
    let mut out = String::from(scheme);
    let rest = match rest.find(['@', '/']) {
        Some(at) if rest.as_bytes()[at] == b'@' => {
            match rest[..at].split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(&rest[..at]),
            }
            out.push('@');
            &rest[at + 1..]
        }
        _ => rest,
    };
    let netloc_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (netloc, rest) = rest.split_at(netloc_end);
    let netloc: Vec<String> = netloc.split(',').map(redact_netloc_entry).collect();
    out.push_str(&netloc.join(","));
    match rest.split_once('?') {
        None => out.push_str(rest),
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => match percent_decode(k, "") {
                        Ok(key) if is_secret(&key) || !is_known_keyword(&key) => {
                            format!("{k}=***")
                        }
                        Ok(_) => format!("{k}={v}"),
                        Err(_) => "***".to_string(),
                    },
                    None => "***".to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn conninfo_plain_pairs() {
        assert_eq!(
            parse_conninfo("host=db1 port=5433 user=rep").unwrap(),
            pairs(&[("host", "db1"), ("port", "5433"), ("user", "rep")])
        );
        assert_eq!(parse_conninfo("").unwrap(), pairs(&[]));
        assert_eq!(parse_conninfo(" \t\n ").unwrap(), pairs(&[]));
    }

    #[test]
    fn conninfo_whitespace_around_equals() {
        assert_eq!(
            parse_conninfo("  host = db1\tport=\t5433 \n user =rep  ").unwrap(),
            pairs(&[("host", "db1"), ("port", "5433"), ("user", "rep")])
        );
    }

    #[test]
    fn conninfo_quotes_and_escapes() {
        assert_eq!(
            parse_conninfo(r"password='a b\'c\\d' user=x").unwrap(),
            pairs(&[("password", r"a b'c\d"), ("user", "x")])
        );
        assert_eq!(
            parse_conninfo(r"password=a\ b\'c").unwrap(),
            pairs(&[("password", "a b'c")])
        );
        assert_eq!(
            parse_conninfo("host='' port=1").unwrap(),
            pairs(&[("host", ""), ("port", "1")])
        );
        // No whitespace needed after a closing quote; a quote inside a bare value is literal.
        assert_eq!(
            parse_conninfo("host='a'port=1 user=o'neil").unwrap(),
            pairs(&[("host", "a"), ("port", "1"), ("user", "o'neil")])
        );
        // A trailing backslash in a bare value is dropped, as libpq does.
        assert_eq!(parse_conninfo(r"host=a\").unwrap(), pairs(&[("host", "a")]));
        // libpq skips whitespace after '=' even when the value is then empty.
        assert_eq!(
            parse_conninfo("host= port=1").unwrap(),
            pairs(&[("host", "port=1")])
        );
        assert_eq!(parse_conninfo("host=").unwrap(), pairs(&[("host", "")]));
        assert_eq!(
            parse_conninfo("application_name='héllo wörld'").unwrap(),
            pairs(&[("application_name", "héllo wörld")])
        );
    }

    #[test]
    fn conninfo_errors() {
        assert!(matches!(
            parse_conninfo("host='db1"),
            Err(ConnInfoError::UnterminatedQuote)
        ));
        assert!(matches!(
            parse_conninfo(r"host='db1\'"),
            Err(ConnInfoError::UnterminatedQuote)
        ));
        match parse_conninfo("mydb") {
            Err(ConnInfoError::MissingEquals { keyword }) => {
                assert_eq!(keyword.as_deref(), Some("mydb"))
            }
            other => panic!("{other:?}"),
        }
        match parse_conninfo("host=a port") {
            Err(ConnInfoError::MissingEquals { keyword }) => {
                assert_eq!(keyword.as_deref(), Some("port"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn conninfo_token_after_password_is_not_quoted() {
        let err = parse_conninfo("password=abc def host=x").unwrap_err();
        assert!(matches!(
            err,
            ConnInfoError::MissingEquals { keyword: None }
        ));
        assert!(!err.to_string().contains("def"), "{err}");
        let err = parse_dbname_option("password=abc def=ghi").unwrap_err();
        assert!(!err.to_string().contains("def"), "{err}");
        assert!(!err.to_string().contains("abc"), "{err}");
    }

    #[test]
    fn keywords_used_ignored_refused_unknown() {
        let (p, origin) = parse_dbname_option(
            "replication=true options='-c x=y' keepalives=1 keepalives_idle=5 target_session_attrs=any \
             gssencmode=prefer sslcompression=0 load_balance_hosts=disable user=rep",
        )
        .unwrap();
        assert_eq!(origin, Origin::ConnString);
        assert_eq!(
            p,
            vec![
                ("keepalives", "1".to_string()),
                ("keepalives_idle", "5".to_string()),
                ("target_session_attrs", "any".to_string()),
                ("user", "rep".to_string())
            ]
        );

        let err = parse_dbname_option("hots=db1").unwrap_err();
        assert!(
            matches!(&err, ConnInfoError::UnknownOption { keyword: Some(k), .. } if k == "hots")
        );
        assert!(err.to_string().contains("\"hots\""), "{err}");

        for (s, k) in [
            ("hostaddr=10.0.0.1", "hostaddr"),
            ("require_auth=scram-sha-256", "require_auth"),
            ("requirepeer=postgres", "requirepeer"),
            ("gssencmode=require", "gssencmode"),
        ] {
            match parse_dbname_option(s) {
                Err(ConnInfoError::UnsupportedOption { keyword, .. }) => assert_eq!(keyword, k),
                other => panic!("{s}: {other:?}"),
            }
        }
    }

    #[test]
    fn url_full() {
        assert_eq!(
            parse_url("postgresql://rep:pw@db1:5433/mydb?sslmode=require&application_name=x")
                .unwrap(),
            pairs(&[
                ("user", "rep"),
                ("password", "pw"),
                ("host", "db1"),
                ("port", "5433"),
                ("dbname", "mydb"),
                ("sslmode", "require"),
                ("application_name", "x"),
            ])
        );
    }

    #[test]
    fn url_shapes() {
        assert_eq!(parse_url("postgres://").unwrap(), pairs(&[]));
        assert_eq!(parse_url("postgres:///").unwrap(), pairs(&[]));
        assert_eq!(
            parse_url("postgres://db1").unwrap(),
            pairs(&[("host", "db1")])
        );
        assert_eq!(
            parse_url("postgres://db1/").unwrap(),
            pairs(&[("host", "db1")])
        );
        assert_eq!(
            parse_url("postgres://db1?").unwrap(),
            pairs(&[("host", "db1")])
        );
        assert_eq!(
            parse_url("postgres://rep@db1").unwrap(),
            pairs(&[("user", "rep"), ("host", "db1")])
        );
        assert_eq!(
            parse_url("postgres://rep:@db1").unwrap(),
            pairs(&[("user", "rep"), ("host", "db1")])
        );
        assert_eq!(
            parse_url("postgres://:pw@db1").unwrap(),
            pairs(&[("password", "pw"), ("host", "db1")])
        );
        assert_eq!(
            parse_url("postgres://h1:5433,h2:5434/db").unwrap(),
            pairs(&[("host", "h1,h2"), ("port", "5433,5434"), ("dbname", "db")])
        );
        assert_eq!(
            parse_url("postgres://h1,h2:5434").unwrap(),
            pairs(&[("host", "h1,h2"), ("port", ",5434")])
        );
        assert_eq!(
            parse_url("postgres://[::1]:5433/db").unwrap(),
            pairs(&[("host", "::1"), ("port", "5433"), ("dbname", "db")])
        );
        assert_eq!(
            parse_url("postgres://[2001:db8::1],[::1]:6000?sslmode=disable").unwrap(),
            pairs(&[
                ("host", "2001:db8::1,::1"),
                ("port", ",6000"),
                ("sslmode", "disable")
            ])
        );
        assert_eq!(
            parse_url("postgres://%2Fvar%2Frun%2Fpostgresql/db").unwrap(),
            pairs(&[("host", "/var/run/postgresql"), ("dbname", "db")])
        );
        assert_eq!(
            parse_url("postgres:///db?host=/tmp&port=5433").unwrap(),
            pairs(&[("dbname", "db"), ("host", "/tmp"), ("port", "5433")])
        );
        assert_eq!(
            parse_url("postgres://us%40er:p%40ss%3Aw%2B+@h/d%20b").unwrap(),
            pairs(&[
                ("user", "us@er"),
                ("password", "p@ss:w++"),
                ("host", "h"),
                ("dbname", "d b")
            ])
        );
        // The password runs to the '@'; a ':' in it needs no escaping.
        assert_eq!(
            parse_url("postgres://u:a:b?c@h").unwrap(),
            pairs(&[("user", "u"), ("password", "a:b?c"), ("host", "h")])
        );
        assert_eq!(
            parse_url("postgres://h?ssl=true&").unwrap(),
            pairs(&[("host", "h"), ("sslmode", "require")])
        );
        assert_eq!(
            parse_url("postgres://h?application_name=a%26b%3Dc").unwrap(),
            pairs(&[("host", "h"), ("application_name", "a&b=c")])
        );
    }

    #[test]
    fn url_errors() {
        for s in [
            "postgres://[::1",
            "postgres://[]:5432",
            "postgres://[::1]x",
            "postgres://h/db?sslmode",
            "postgres://h/db?a=b&&c=d",
            "postgres://h/db?a=b=c",
            "postgres://h/%zz",
            "postgres://h/%4",
            "postgres://h/a%00b",
            "postgres://h/%ff",
        ] {
            assert!(
                matches!(parse_url(s), Err(ConnInfoError::InvalidUrl(_))),
                "{s}: {:?}",
                parse_url(s)
            );
        }
        let err = parse_dbname_option("postgres://h?sslmod=require").unwrap_err();
        assert!(
            matches!(&err, ConnInfoError::UnknownOption { keyword: Some(k), origin: Origin::Url } if k == "sslmod"),
            "{err:?}"
        );
    }

    #[test]
    fn url_errors_never_quote_the_password() {
        for s in [
            "postgres://alice:s3cr%zzet@h/db",
            "postgres://alice:s3cr%00et@h/db",
            "postgres://alice:s3cr%ffet@h/db",
            "postgres://alice:s3cret%@h",
        ] {
            let err = parse_dbname_option(s).unwrap_err();
            let msg = err.to_string();
            assert!(!msg.contains("s3cr"), "{msg}");
            assert!(msg.contains("password"), "{msg}");
        }
    }

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(
            redact("postgres://rep:s3cret@db1:5433/db?sslmode=require&password=s3cret2"),
            "postgres://rep:***@db1:5433/db?sslmode=require&password=***"
        );
        assert_eq!(redact("postgresql://rep@db1"), "postgresql://rep@db1");
        assert_eq!(
            redact(r"host=db1 password='s3 cret' user=o\'neil"),
            r"host='db1' password=*** user='o\'neil'"
        );
        assert_eq!(
            redact("host=db1 password='s3cret"),
            "(connection string hidden: it does not parse)"
        );
        // What may be a mangled password is hidden too.
        assert_eq!(
            redact("sslpassword=k3y sslkey=/k"),
            "sslpassword=*** sslkey='/k'"
        );
        assert_eq!(
            redact("postgres://h?sslpassword=k3y&sslcert=/c"),
            "postgres://h?sslpassword=***&sslcert=/c"
        );
        assert_eq!(
            redact("password=ab cd=ef port=1"),
            "password=*** *** port='1'"
        );
        assert_eq!(
            redact("postgres://alice:s3cret/db"),
            "postgres://alice:***/db"
        );
        assert_eq!(
            redact("postgres://h1:5432,[::1]:x,h3?pasword=s3&sslmode=require&x"),
            "postgres://h1:5432,[::1]:***,h3?pasword=***&sslmode=require&***"
        );
    }
}
