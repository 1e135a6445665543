//! Who may talk to the witness: whoever holds the shared secret (HMAC-SHA256 over every
//! message, see [`super::wire`]), once per message (a timestamp and a nonce, so a captured
//! message cannot be sent again).
//!
//! The secret file is checked as PostgreSQL checks a key file: a regular file of the
//! effective user with no group or world access (mode 0600 or 0400), else refused. Its
//! contents (surrounding whitespace trimmed) are the key; at least 16 bytes.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::UnixMillis;
use crate::auth::private::Refusal;

/// The shortest secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// How far a request's timestamp may be from the witness's clock, either way. Within it the
/// witness remembers every nonce; beyond it a request is refused as stale.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(30);

/// The shared key. Debug output never shows it.
#[derive(Clone)]
pub struct Secret(hmac::Key);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("could not read the secret file \"{}\": {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("the secret file \"{}\" is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("the secret file \"{}\" has group or world access (mode {mode:04o})", path.display())]
    Permissions { path: PathBuf, mode: u32 },
    #[error("the secret file \"{}\" is owned by uid {owner}, not by this user (uid {euid})", path.display())]
    Owner {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    #[error("the secret in \"{}\" is {len} bytes; at least {MIN_SECRET_LEN} are needed", path.display())]
    TooShort { path: PathBuf, len: usize },
}

impl SecretError {
    pub fn hint(&self) -> &'static str {
        match self {
            SecretError::Permissions { .. } => "chmod 600 the file",
            SecretError::Owner { .. } => "the file must belong to the user walferry runs as",
            _ => "make one with: head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE (the same file on the witness and every node)",
        }
    }
}

impl Secret {
    pub fn load(path: &Path) -> Result<Secret, SecretError> {
        let io = |source| SecretError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = match crate::auth::private::open_private(path).map_err(io)? {
            Ok(file) => file,
            Err(refusal) => {
                let path = path.to_path_buf();
                return Err(match refusal {
                    Refusal::NotAFile => SecretError::NotAFile { path },
                    Refusal::Permissions(mode) => SecretError::Permissions { path, mode },
                    Refusal::Owner { owner, euid } => SecretError::Owner { path, owner, euid },
                });
            }
        };
        let mut bytes = Vec::new();
        file.take(64 * 1024).read_to_end(&mut bytes).map_err(io)?;
        let key = bytes.trim_ascii();
        if key.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort {
                path: path.to_path_buf(),
                len: key.len(),
            });
        }
        Ok(Secret::from_bytes(key))
    }

    pub fn from_bytes(key: &[u8]) -> Secret {
        Secret(hmac::Key::new(hmac::HMAC_SHA256, key))
    }

    pub fn key(&self) -> &hmac::Key {
        &self.0
    }
}

/// A fresh random nonce: 16 bytes, hex.
pub fn new_nonce() -> String {
    let mut bytes = [0u8; 16];
    // SystemRandom reads the kernel's getrandom; it fails only where no such source exists,
    // and then a time-based nonce is still unique per process and message.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = t.to_le_bytes();
    }
    super::wire::hex(&bytes)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("stale request: sent {skew_ms} ms away from the witness's clock (at most {} ms)", REPLAY_WINDOW.as_millis())]
    OutsideWindow { skew_ms: u64 },
    #[error("request sent before this witness started: refused, as it may be a replay")]
    BeforeStart,
    #[error("replayed request: this nonce was already used")]
    Replayed,
    #[error("malformed nonce: expected 16 to 64 characters")]
    BadNonce,
}

impl ReplayError {
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ReplayError::OutsideWindow { .. } | ReplayError::BeforeStart => {
                Some("keep the clocks of the witness and the nodes in sync (NTP)")
            }
            _ => None,
        }
    }
}

/// The nonces seen within the window. A restart empties it; requests sent before the start
/// are refused, so a message captured before a restart cannot be replayed after it.
#[derive(Debug)]
pub struct ReplayGuard {
    not_before: UnixMillis,
    seen: HashMap<String, UnixMillis>,
}

impl ReplayGuard {
    pub fn new(started: UnixMillis) -> Self {
        ReplayGuard {
            not_before: started,
            seen: HashMap::new(),
        }
    }

    /// Accept (and remember) a request sent at `sent_at` with `nonce`, or say why not.
    pub fn check(
        &mut self,
        now: UnixMillis,
        sent_at: UnixMillis,
        nonce: &str,
    ) -> Result<(), ReplayError> {
        if !(16..=64).contains(&nonce.len()) {
            return Err(ReplayError::BadNonce);
        }
        let skew = now.since(sent_at).max(sent_at.since(now));
        if skew > REPLAY_WINDOW {
            return Err(ReplayError::OutsideWindow {
                skew_ms: super::rules::millis(skew),
            });
        }
        if sent_at < self.not_before {
            return Err(ReplayError::BeforeStart);
        }
        // A nonce can only come back within the window (later, its timestamp is refused),
        // so older ones are forgotten. Timestamps up to a window ahead are kept twice as long.
        let horizon = UnixMillis(
            now.0
                .saturating_sub(2 * super::rules::millis(REPLAY_WINDOW)),
        );
        self.seen.retain(|_, at| *at >= horizon);
        if self.seen.contains_key(nonce) {
            return Err(ReplayError::Replayed);
        }
        self.seen.insert(nonce.to_string(), sent_at.max(now));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const N1: &str = "00112233445566778899aabbccddeeff";
    const N2: &str = "ffeeddccbbaa99887766554433221100";

    #[test]
    fn a_nonce_is_accepted_once_and_stale_or_early_requests_never() {
        let start = UnixMillis(1_000_000);
        let mut g = ReplayGuard::new(start);
        let now = UnixMillis(1_005_000);
        g.check(now, now, N1).unwrap();
        assert_eq!(g.check(now, now, N1), Err(ReplayError::Replayed));
        // Still refused later in the window, with any timestamp in it.
        assert_eq!(
            g.check(now.plus(Duration::from_secs(20)), now, N1),
            Err(ReplayError::Replayed)
        );
        g.check(now, now, N2).unwrap();
        let late = now.plus(REPLAY_WINDOW + Duration::from_millis(1));
        assert!(matches!(
            g.check(late, now, "a-fresh-nonce-0001"),
            Err(ReplayError::OutsideWindow { skew_ms: 30_001 })
        ));
        assert!(matches!(
            g.check(now, late, "a-fresh-nonce-0002"),
            Err(ReplayError::OutsideWindow { .. })
        ));
        assert_eq!(
            g.check(now, UnixMillis(999_999), "a-fresh-nonce-0003"),
            Err(ReplayError::BeforeStart)
        );
        assert_eq!(g.check(now, now, "short"), Err(ReplayError::BadNonce));
    }

    #[test]
    fn old_nonces_are_forgotten_once_they_cannot_come_back() {
        let mut g = ReplayGuard::new(UnixMillis(0));
        let t0 = UnixMillis(100_000);
        g.check(t0, t0, N1).unwrap();
        let later = t0.plus(Duration::from_secs(61));
        g.check(later, later, N2).unwrap();
        assert_eq!(g.seen.len(), 1);
        // N1 sent again with its old timestamp: stale, not a new request.
        assert!(matches!(
            g.check(later, t0, N1),
            Err(ReplayError::OutsideWindow { .. })
        ));
    }

    fn write(dir: &Path, mode: u32, contents: &str) -> PathBuf {
        let path = dir.join(format!("secret-{mode:o}"));
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn the_secret_file_must_be_private_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(dir.path(), 0o600, "  0123456789abcdef-the-secret\n");
        let a = Secret::load(&good).unwrap();
        let b = Secret::from_bytes(b"0123456789abcdef-the-secret");
        let sign = |s: &Secret| hmac::sign(s.key(), b"x").as_ref().to_vec();
        assert_eq!(sign(&a), sign(&b));
        assert_eq!(format!("{a:?}"), "Secret(..)");
        Secret::load(&write(dir.path(), 0o400, "0123456789abcdef")).unwrap();
        for mode in [0o640, 0o604, 0o660] {
            let err = Secret::load(&write(dir.path(), mode, "0123456789abcdef")).unwrap_err();
            assert!(matches!(err, SecretError::Permissions { .. }), "{err}");
            assert_eq!(err.hint(), "chmod 600 the file");
        }
        let short = write(dir.path(), 0o600, "tooshort\n");
        assert!(matches!(
            Secret::load(&short),
            Err(SecretError::TooShort { len: 8, .. })
        ));
        assert!(matches!(
            Secret::load(dir.path()),
            Err(SecretError::NotAFile { .. })
        ));
        assert!(matches!(
            Secret::load(&dir.path().join("missing")),
            Err(SecretError::Io { .. })
        ));
    }

    #[test]
    fn nonces_differ() {
        let a = new_nonce();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_nonce());
    }
}
