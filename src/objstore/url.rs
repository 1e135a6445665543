//! Where a repository in S3-compatible object storage is, and how to reach it.
//!
//! A repository URL is `s3://BUCKET[/PREFIX][?KEY=VALUE&...]`. The query names what is not
//! a secret and is not in the environment or the AWS files: `endpoint` (an S3-compatible
//! server, `http://` allowed), `region`, `path_style` (`true` addresses the bucket in the
//! path, as MinIO, Garage and s3s need; the default when an endpoint is given),
//! `profile` and `credentials_file` (an AWS-format credentials file). The URL carries no
//! secret: keys come from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`) or from a credentials file, so they are never on a command line,
//! in `restore_command`, or in a log.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A repository or archive argument: a local directory or an object-store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3(S3Url),
}

impl Location {
    /// Reads a `--repo`/`-D` argument: `s3://...` is an object store, anything else a path.
    pub fn parse(text: &str) -> Result<Location, UrlError> {
        if text.starts_with("s3://") {
            return S3Url::parse(text).map(Location::S3);
        }
        if let Some((scheme, _)) = text.split_once("://") {
            if scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(UrlError(format!(
                    "unsupported repository URL scheme \"{scheme}://\" (walferry reads local \
                     directories and s3:// URLs)"
                )));
            }
        }
        Ok(Location::Local(PathBuf::from(text)))
    }

    pub fn local(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::S3(_) => None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3(u) => write!(f, "{u}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(pub String);

/// A parsed `s3://` URL; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Without leading or trailing slashes; empty for the bucket's root.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    pub profile: Option<String>,
    pub credentials_file: Option<PathBuf>,
}

const KEYS: [&str; 5] = [
    "endpoint",
    "region",
    "path_style",
    "profile",
    "credentials_file",
];

impl S3Url {
    pub fn parse(text: &str) -> Result<S3Url, UrlError> {
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| UrlError(format!("\"{text}\" is not an s3:// URL")))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if !valid_bucket(bucket) {
            return Err(UrlError(format!(
                "\"{bucket}\" in \"{text}\" is not a valid bucket name (3 to 63 characters: \
                 lower-case letters, digits, dots and hyphens)"
            )));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|part| part == "." || part == "..") || prefix.contains("//") {
            return Err(UrlError(format!(
                "the prefix \"{prefix}\" in \"{text}\" has an empty, \".\" or \"..\" part"
            )));
        }
        let mut url = S3Url {
            bucket: bucket.to_string(),
            prefix,
            endpoint: None,
            region: None,
            path_style: None,
            profile: None,
            credentials_file: None,
        };
        let mut seen = BTreeMap::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)
                .ok_or_else(|| UrlError(format!("bad %-escape in \"{pair}\" of \"{text}\"")))?;
            if seen.insert(key.to_string(), ()).is_some() {
                return Err(UrlError(format!("\"{key}\" is given twice in \"{text}\"")));
            }
            match key {
                "endpoint" => {
                    if !(value.starts_with("http://") || value.starts_with("https://")) {
                        return Err(UrlError(format!(
                            "endpoint \"{value}\" must start with http:// or https://"
                        )));
                    }
                    url.endpoint = Some(value.trim_end_matches('/').to_string());
                }
                "region" => url.region = Some(value),
                "path_style" => {
                    url.path_style = Some(match value.as_str() {
                        "true" | "1" | "yes" | "on" => true,
                        "false" | "0" | "no" | "off" => false,
                        _ => {
                            return Err(UrlError(format!(
                                "path_style must be true or false, not \"{value}\""
                            )))
                        }
                    })
                }
                "profile" => url.profile = Some(value),
                "credentials_file" => url.credentials_file = Some(PathBuf::from(value)),
                "access_key_id" | "secret_access_key" | "session_token" | "secret" | "password" => {
                    return Err(UrlError(format!(
                        "\"{key}\" does not belong in a repository URL: it would be on command \
                         lines and in restore_command; give keys in AWS_ACCESS_KEY_ID/\
                         AWS_SECRET_ACCESS_KEY or in a credentials file (credentials_file=PATH)"
                    )))
                }
                _ => {
                    return Err(UrlError(format!(
                        "unknown setting \"{key}\" in \"{text}\" (known: {})",
                        KEYS.join(", ")
                    )))
                }
            }
        }
        Ok(url)
    }

    /// The same repository with `sub` (e.g. `wal`) appended to the prefix.
    pub fn join(&self, sub: &str) -> S3Url {
        let mut url = self.clone();
        let sub = sub.trim_matches('/');
        url.prefix = match (url.prefix.is_empty(), sub.is_empty()) {
            (_, true) => url.prefix,
            (true, false) => sub.to_string(),
            (false, false) => format!("{}/{sub}", url.prefix),
        };
        url
    }

    /// The URL with its settings, as another walferry command (e.g. `restore_command`)
    /// must be given it: still no secret in it.
    pub fn full(&self) -> String {
        let mut query = Vec::new();
        if let Some(e) = &self.endpoint {
            query.push(format!("endpoint={e}"));
        }
        if let Some(r) = &self.region {
            query.push(format!("region={r}"));
        }
        if let Some(p) = self.path_style {
            query.push(format!("path_style={p}"));
        }
        if let Some(p) = &self.profile {
            query.push(format!("profile={p}"));
        }
        if let Some(c) = &self.credentials_file {
            query.push(format!("credentials_file={}", c.display()));
        }
        match query.is_empty() {
            true => self.to_string(),
            false => format!("{self}?{}", query.join("&")),
        }
    }
}

/// `s3://bucket/prefix`, without the settings (for messages).
impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix.is_empty() {
            true => write!(f, "s3://{}", self.bucket),
            false => write!(f, "s3://{}/{}", self.bucket, self.prefix),
        }
    }
}

fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_their_settings_and_print_without_them() {
        let u = S3Url::parse(
            "s3://pg-archive/clusters/main/?endpoint=http://127.0.0.1:9000/&region=eu-west-1&path_style=true&credentials_file=/etc/walferry/s3%20keys",
        )
        .unwrap();
        assert_eq!(u.bucket, "pg-archive");
        assert_eq!(u.prefix, "clusters/main");
        assert_eq!(u.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(u.region.as_deref(), Some("eu-west-1"));
        assert_eq!(u.path_style, Some(true));
        assert_eq!(
            u.credentials_file.as_deref(),
            Some(Path::new("/etc/walferry/s3 keys"))
        );
        assert_eq!(u.to_string(), "s3://pg-archive/clusters/main");
        assert_eq!(
            u.join("wal").to_string(),
            "s3://pg-archive/clusters/main/wal"
        );
        assert_eq!(S3Url::parse(&u.full()).unwrap(), u);
        let root = S3Url::parse("s3://bkt").unwrap();
        assert_eq!(root.prefix, "");
        assert_eq!(root.join("/wal/").prefix, "wal");
    }

    #[test]
    fn bad_urls_and_secrets_are_refused_with_the_reason() {
        for (text, says) in [
            ("s3://A_B/x", "not a valid bucket name"),
            ("s3://ab", "not a valid bucket name"),
            ("s3://bucket/a/../b", "\"..\""),
            (
                "s3://bucket/x?endpoint=127.0.0.1:9000",
                "must start with http",
            ),
            ("s3://bucket/x?path_style=maybe", "true or false"),
            ("s3://bucket/x?colour=blue", "unknown setting \"colour\""),
            ("s3://bucket/x?region=a&region=b", "given twice"),
            ("s3://bucket/x?secret_access_key=abc", "does not belong"),
        ] {
            let e = S3Url::parse(text).unwrap_err().0;
            assert!(e.contains(says), "{text}: {e}");
        }
        assert!(Location::parse("gs://bucket/x")
            .unwrap_err()
            .0
            .contains("unsupported repository URL scheme"));
        assert_eq!(
            Location::parse("/var/lib/walferry/repo").unwrap(),
            Location::Local(PathBuf::from("/var/lib/walferry/repo"))
        );
    }
}
