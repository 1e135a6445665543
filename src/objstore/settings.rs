//! Resolving how to reach an object store the way the AWS tools do: the URL's settings
//! first, then the environment, then the shared config and credentials files.
//!
//! - keys: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`), else the
//!   profile's `aws_access_key_id`/`aws_secret_access_key` in the credentials file
//!   (`credentials_file=` in the URL, `AWS_SHARED_CREDENTIALS_FILE`, `~/.aws/credentials`);
//! - region: `region=`, `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region` in the
//!   config file (`AWS_CONFIG_FILE`, `~/.aws/config`), else `us-east-1`;
//! - endpoint: `endpoint=`, `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, the profile's
//!   `endpoint_url`; none means AWS itself;
//! - profile: `profile=`, `AWS_PROFILE`, else `default`.
//!
//! A credentials file that others than its owner may read is refused, as a `.pgpass` is
//! ignored: the keys in it would be everyone's.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::S3Url;

/// What the client is built from. `Debug` leaves the secret out.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    pub bucket: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Where the keys came from, for messages ("AWS_ACCESS_KEY_ID", a file and profile).
    pub keys_from: String,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("keys_from", &self.keys_from)
            .finish_non_exhaustive()
    }
}

/// Settings cannot be resolved; the message says what to set.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

/// The environment as the resolution sees it (a map in tests).
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for HashMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| v.to_string())
    }
}

pub fn resolve(url: &S3Url, env: &dyn Env) -> Result<Settings, SettingsError> {
    let home = env.var("HOME").map(PathBuf::from);
    let profile = url
        .profile
        .clone()
        .or_else(|| env.var("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let config_path = env
        .var("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/config")));
    // In the config file a profile other than the default is "[profile NAME]".
    let config_section = match profile.as_str() {
        "default" => "default".to_string(),
        p => format!("profile {p}"),
    };
    let config = match &config_path {
        Some(p) => read_ini_section(p, &config_section, false)?,
        None => HashMap::new(),
    };
    let region = url
        .region
        .clone()
        .or_else(|| env.var("AWS_REGION"))
        .or_else(|| env.var("AWS_DEFAULT_REGION"))
        .or_else(|| config.get("region").cloned())
        .unwrap_or_else(|| "us-east-1".into());
    let endpoint = url
        .endpoint
        .clone()
        .or_else(|| env.var("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env.var("AWS_ENDPOINT_URL"))
        .or_else(|| config.get("endpoint_url").cloned())
        .map(|e| e.trim_end_matches('/').to_string());
    let path_style = url.path_style.unwrap_or(endpoint.is_some());

    let (access_key_id, secret_access_key, session_token, keys_from) = match (
        env.var("AWS_ACCESS_KEY_ID"),
        env.var("AWS_SECRET_ACCESS_KEY"),
        &url.credentials_file,
    ) {
        // A file named in the URL wins: it is what restore_command will use too.
        (Some(id), Some(secret), None) => (
            id,
            secret,
            env.var("AWS_SESSION_TOKEN"),
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".to_string(),
        ),
        _ => {
            let path = url
                .credentials_file
                .clone()
                .or_else(|| env.var("AWS_SHARED_CREDENTIALS_FILE").map(PathBuf::from))
                .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
            let Some(path) = path else {
                return Err(no_keys(url, None, &profile));
            };
            let must_exist = url.credentials_file.is_some();
            let section = read_ini_section(&path, &profile, must_exist)?;
            match (
                section.get("aws_access_key_id"),
                section.get("aws_secret_access_key"),
            ) {
                (Some(id), Some(secret)) => (
                    id.clone(),
                    secret.clone(),
                    section.get("aws_session_token").cloned(),
                    format!("profile \"{profile}\" of \"{}\"", path.display()),
                ),
                _ => return Err(no_keys(url, Some(&path), &profile)),
            }
        }
    };
    Ok(Settings {
        bucket: url.bucket.clone(),
        region,
        endpoint,
        path_style,
        access_key_id,
        secret_access_key,
        session_token,
        keys_from,
    })
}

fn no_keys(url: &S3Url, file: Option<&Path>, profile: &str) -> SettingsError {
    let looked = match file {
        Some(f) => format!(" nor in profile \"{profile}\" of \"{}\"", f.display()),
        None => String::new(),
    };
    SettingsError(format!(
        "no access keys for {url}: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set{looked}; \
         set them, or add credentials_file=PATH to the URL (an AWS credentials file, readable \
         only by its owner)"
    ))
}

/// The `key = value` lines of `[section]` in an INI file as the AWS tools write them.
/// A missing file is an empty section unless `must_exist`.
fn read_ini_section(
    path: &Path,
    section: &str,
    must_exist: bool,
) -> Result<HashMap<String, String>, SettingsError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        // A file nobody named that is missing, or unreadable to this user (another
        // user's home, as for a service run with HOME=/root), is no file.
        Err(e)
            if !must_exist
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
        {
            return Ok(HashMap::new())
        }
        Err(e) => {
            return Err(SettingsError(format!(
                "could not read \"{}\": {e}",
                path.display()
            )))
        }
    };
    let holds_keys = text.contains("aws_secret_access_key");
    if holds_keys {
        let meta = fs::metadata(path)
            .map_err(|e| SettingsError(format!("could not stat \"{}\": {e}", path.display())))?;
        if meta.mode() & 0o077 != 0 {
            return Err(SettingsError(format!(
                "credentials file \"{}\" can be read by others than its owner (mode {:04o}); \
                 refusing to use the keys in it: chmod 600 it",
                path.display(),
                meta.mode() & 0o7777
            )));
        }
    }
    let mut current = None::<String>;
    let mut values = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim().to_string());
            continue;
        }
        if current.as_deref() != Some(section) {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            values.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn url(text: &str) -> S3Url {
        S3Url::parse(text).unwrap()
    }

    #[test]
    fn the_environment_gives_keys_region_and_endpoint() {
        let env = HashMap::from([
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "sekrit"),
            ("AWS_REGION", "eu-north-1"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000/"),
        ]);
        let s = resolve(&url("s3://bkt/p"), &env).unwrap();
        assert_eq!(s.access_key_id, "AKID");
        assert_eq!(s.secret_access_key, "sekrit");
        assert_eq!(s.region, "eu-north-1");
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(s.path_style, "a custom endpoint defaults to path-style");
        assert!(
            !format!("{s:?}").contains("sekrit"),
            "Debug shows no secret"
        );
        let s = resolve(&url("s3://bkt/p?region=us-west-2&path_style=false"), &env).unwrap();
        assert_eq!(s.region, "us-west-2");
        assert!(!s.path_style);
    }

    #[test]
    fn a_credentials_file_is_read_by_profile_and_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("creds");
        fs::write(
            &file,
            "[default]\naws_access_key_id = D\naws_secret_access_key = d\n\n[lab]\n\
             aws_access_key_id=L\naws_secret_access_key=l\naws_session_token=t\n",
        )
        .unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        let env = HashMap::from([("AWS_ACCESS_KEY_ID", "ignored"), ("HOME", "/nonexistent")]);
        let text = format!("s3://bkt?credentials_file={}", file.display());
        let s = resolve(&url(&text), &env).unwrap();
        assert_eq!(
            (s.access_key_id.as_str(), s.secret_access_key.as_str()),
            ("D", "d")
        );
        let s = resolve(&url(&format!("{text}&profile=lab")), &env).unwrap();
        assert_eq!(s.access_key_id, "L");
        assert_eq!(s.session_token.as_deref(), Some("t"));
        assert_eq!(s.region, "us-east-1");
        assert!(s.endpoint.is_none() && !s.path_style);

        let e = resolve(&url(&format!("{text}&profile=nope")), &env).unwrap_err();
        assert!(e.0.contains("profile \"nope\""), "{e}");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let e = resolve(&url(&text), &env).unwrap_err();
        assert!(e.0.contains("chmod 600"), "{e}");
        let missing = format!("s3://bkt?credentials_file={}/none", dir.path().display());
        assert!(resolve(&url(&missing), &env)
            .unwrap_err()
            .0
            .contains("could not read"));
    }

    #[test]
    fn no_keys_anywhere_says_where_to_put_them() {
        let env = HashMap::from([("HOME", "/nonexistent")]);
        let e = resolve(&url("s3://bkt"), &env).unwrap_err();
        assert!(e.0.contains("AWS_ACCESS_KEY_ID"), "{e}");
        assert!(e.0.contains("credentials_file=PATH"), "{e}");
    }
}
