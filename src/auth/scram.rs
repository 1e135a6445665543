//! The server side of SCRAM-SHA-256 and SCRAM-SHA-256-PLUS as PostgreSQL speaks it
//! (`src/backend/libpq/auth-scram.c`), message by message: see the module documentation of
//! [`crate::auth`] for what is checked and why.
//!
//! ```text
//! relay                                         client
//!   AuthenticationSASL(mechanisms(tls_binding))  ->
//!                                               <-  SASLInitialResponse(mechanism, client-first)
//!   ScramServer::new(user, verifier, mechanism, binding)
//!   AuthenticationSASLContinue(client_first(..)) ->
//!                                               <-  SASLResponse(client-final)
//!   AuthenticationSASLFinal(client_final(..))    ->   (Err: ErrorResponse with err.sqlstate())
//!   AuthenticationOk                             ->
//! ```

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};
use subtle::ConstantTimeEq;

/// The mechanism name without channel binding.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// The mechanism name with `tls-server-end-point` channel binding.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// PostgreSQL's default `scram_iterations`; also the iteration count of the mock exchange.
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// PostgreSQL's salt length (`SCRAM_DEFAULT_SALT_LEN`).
pub const DEFAULT_SALT_LEN: usize = 16;

const KEY_LEN: usize = 32;
/// Random bytes in the server's part of the nonce (`SCRAM_RAW_NONCE_LEN`), base64 on the wire.
const RAW_NONCE_LEN: usize = 18;
/// The only gs2 header a SCRAM-SHA-256-PLUS client may send (an authzid is refused).
const CBIND_HEADER: &[u8] = b"p=tls-server-end-point,,";
const VERIFIER_PREFIX: &str = "SCRAM-SHA-256$";

pub const SQLSTATE_PROTOCOL_VIOLATION: &str = "08P01";
pub const SQLSTATE_FEATURE_NOT_SUPPORTED: &str = "0A000";
pub const SQLSTATE_INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
pub const SQLSTATE_INVALID_PASSWORD: &str = "28P01";
pub const SQLSTATE_INTERNAL_ERROR: &str = "XX000";

/// The mechanisms to list in AuthenticationSASL, in PostgreSQL's order: SCRAM-SHA-256-PLUS
/// first, and only when the connection is TLS and the server certificate has a
/// `tls-server-end-point` binding (`channel_binding`: [`super::tls_server_end_point`]
/// succeeded). Pass the binding data to [`ScramServer::new`] exactly when this was `true`.
pub fn mechanisms(channel_binding: bool) -> &'static [&'static str] {
    if channel_binding {
        &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
    } else {
        &[SCRAM_SHA_256]
    }
}

// ---------------------------------------------------------------------------------------
// Verifiers

/// A SCRAM-SHA-256 verifier as PostgreSQL stores it in `pg_authid.rolpassword`:
/// `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`.
///
/// It lets the server check a client's proof but not log in as the user; it still allows an
/// offline guessing attack on the password, so treat it as a secret: its `Debug` shows only
/// the iteration count and salt length, and no error message of this module contains it.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
}

/// What is wrong with a verifier's text. Never contains the text itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifierError {
    #[error("it does not start with \"SCRAM-SHA-256$\"")]
    NotScram,
    #[error("expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")]
    Shape,
    #[error("the iteration count is not a number from 1 to 2147483647")]
    Iterations,
    #[error("the salt is not non-empty base64")]
    Salt,
    #[error("the StoredKey is not 32 bytes in base64")]
    StoredKey,
    #[error("the ServerKey is not 32 bytes in base64")]
    ServerKey,
}

impl Verifier {
    /// Parses the pg_authid form. Stricter than PostgreSQL's `parse_scram_secret` in two
    /// ways that no verifier PostgreSQL writes runs into: the iteration count must be plain
    /// decimal digits, and the salt must not be empty.
    pub fn parse(text: &str) -> Result<Verifier, VerifierError> {
        let rest = text
            .strip_prefix(VERIFIER_PREFIX)
            .ok_or(VerifierError::NotScram)?;
        let (params, keys) = rest.split_once('$').ok_or(VerifierError::Shape)?;
        let (iterations, salt) = params.split_once(':').ok_or(VerifierError::Shape)?;
        let (stored, server) = keys.split_once(':').ok_or(VerifierError::Shape)?;
        if server.contains(['$', ':']) {
            return Err(VerifierError::Shape);
        }
        if iterations.is_empty() || !iterations.bytes().all(|b| b.is_ascii_digit()) {
            return Err(VerifierError::Iterations);
        }
        let iterations = match iterations.parse::<u32>() {
            Ok(n) if (1..=i32::MAX as u32).contains(&n) => n,
            _ => return Err(VerifierError::Iterations),
        };
        let salt = match STANDARD.decode(salt) {
            Ok(s) if !s.is_empty() => s,
            _ => return Err(VerifierError::Salt),
        };
        let key = |b64: &str, err| -> Result<[u8; KEY_LEN], VerifierError> {
            STANDARD
                .decode(b64)
                .ok()
                .and_then(|v| <[u8; KEY_LEN]>::try_from(v).ok())
                .ok_or(err)
        };
        Ok(Verifier {
            iterations,
            salt,
            stored_key: key(stored, VerifierError::StoredKey)?,
            server_key: key(server, VerifierError::ServerKey)?,
        })
    }

    /// The verifier of `password` with this salt and iteration count, as PostgreSQL's
    /// `scram_build_secret` makes it (after [`saslprep`]).
    ///
    /// # Panics
    /// If `iterations` is 0 or `salt` is empty (no valid verifier has either).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> Verifier {
        assert!(!salt.is_empty(), "a SCRAM salt must not be empty");
        assert!(
            (1..=i32::MAX as u32).contains(&iterations),
            "SCRAM iterations must be 1..=2147483647"
        );
        let salted = salted_password(&saslprep(password), salt, iterations);
        let client_key = hmac_sha256(&salted, b"Client Key");
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// The pg_authid text form (what [`Verifier::parse`] reads).
    pub fn encode(&self) -> String {
        format!(
            "{VERIFIER_PREFIX}{}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }

    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// Whether `password` is the one this verifier was made from (runs the full key
    /// derivation: `iterations` HMACs). Comparison in constant time.
    pub fn verify_password(&self, password: &str) -> bool {
        let salted = salted_password(&saslprep(password), &self.salt, self.iterations);
        let stored = sha256(&hmac_sha256(&salted, b"Client Key"));
        bool::from(stored.ct_eq(&self.stored_key))
    }
}

impl FromStr for Verifier {
    type Err = VerifierError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Verifier::parse(s)
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .finish_non_exhaustive()
    }
}

/// A verifier line for the auth file's second field: `SCRAM-SHA-256$...` of `password`
/// with this salt and iteration count. See [`Verifier::from_password`] for the panics.
pub fn make_verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    Verifier::from_password(password, salt, iterations).encode()
}

/// The operating system's random number generator failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not generate random bytes: the operating system's random number generator failed")]
pub struct RandomError;

/// [`make_verifier`] with a fresh random 16-byte salt and 4096 iterations, PostgreSQL's
/// defaults (what `CREATE ROLE ... PASSWORD` stores).
pub fn make_verifier_random_salt(password: &str) -> Result<String, RandomError> {
    let salt: [u8; DEFAULT_SALT_LEN] = random_bytes()?;
    Ok(make_verifier(password, &salt, DEFAULT_ITERATIONS))
}

/// The password bytes that go into the key derivation, as PostgreSQL and libpq prepare
/// them: SASLprep (RFC 4013: non-ASCII spaces to space, "commonly mapped to nothing"
/// characters removed, NFKC, prohibited and unassigned code points and bidi rules checked)
/// when the password passes it, else the raw bytes unchanged (PostgreSQL does not require
/// passwords to be valid SASLprep strings). Pure ASCII passes unchanged either way, control
/// characters included. This is the `stringprep` crate's `saslprep`, the one
/// `postgres-protocol`'s client uses.
pub fn saslprep(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(prepared) => prepared.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    let iterations = NonZeroU32::new(iterations).expect("iterations checked to be nonzero");
    // Hi() of RFC 5802 is PBKDF2 with HMAC-SHA-256 and one output block.
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password,
        &mut out,
    );
    out
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; KEY_LEN] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    tag.as_ref().try_into().expect("HMAC-SHA-256 is 32 bytes")
}

fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    digest::digest(&digest::SHA256, data)
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| RandomError)?;
    Ok(out)
}

/// The per-process secret behind the mock salts. PostgreSQL keeps its equivalent
/// (`mock_authentication_nonce`) in pg_control, so its fake salts survive restarts; ours
/// change when the relay restarts, which tells someone who watches the same unknown name
/// across a restart that it is unknown. Within one process they are stable.
fn mock_secret() -> Result<&'static [u8; 32], RandomError> {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    if let Some(secret) = SECRET.get() {
        return Ok(secret);
    }
    let fresh = random_bytes()?;
    Ok(SECRET.get_or_init(|| fresh))
}

/// A salt for a user without a verifier that looks like a real one, and is the same every
/// time for the same name (PostgreSQL's `scram_mock_salt`, with HMAC instead of a plain
/// hash of name and secret).
fn mock_salt(user: &str) -> Result<Vec<u8>, RandomError> {
    let tag = hmac_sha256(mock_secret()?, user.as_bytes());
    Ok(tag[..DEFAULT_SALT_LEN].to_vec())
}

// ---------------------------------------------------------------------------------------
// Errors

/// Why an exchange failed. [`ScramError::sqlstate`], `to_string()` and
/// [`ScramError::detail`] are the ErrorResponse's C, M and D fields, PostgreSQL's own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message that breaks the SCRAM grammar or PostgreSQL's rules for it, a mechanism
    /// that was not offered, a channel binding downgrade, a wrong nonce: SQLSTATE 08P01.
    #[error("{message}")]
    Protocol {
        message: String,
        detail: Option<String>,
    },
    /// An authorization identity or a mandatory extension (`m=`): SQLSTATE 0A000.
    #[error("{message}")]
    Unsupported { message: &'static str },
    /// The client's channel binding data (`c=`) is not this server's certificate hash: a
    /// TLS man in the middle, or a client hashing another certificate. SQLSTATE 28000.
    #[error("SCRAM channel binding check failed")]
    ChannelBindingMismatch,
    /// Wrong password, or a user without a verifier (the client cannot tell which; the
    /// reason is for the server log only, see [`ScramError::log_detail`]). SQLSTATE 28P01.
    #[error("password authentication failed for user \"{user}\"")]
    AuthFailed { user: String, reason: FailReason },
    /// The random number generator failed, or a message came out of order (a bug in the
    /// caller). SQLSTATE XX000.
    #[error("{0}")]
    Internal(&'static str),
}

/// Why a password authentication failed: for the server log, never for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The user has no verifier (not in the auth file): the mock exchange ran.
    NoVerifier,
    /// The client's proof does not match the verifier.
    WrongProof,
}

impl ScramError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ScramError::Protocol { .. } => SQLSTATE_PROTOCOL_VIOLATION,
            ScramError::Unsupported { .. } => SQLSTATE_FEATURE_NOT_SUPPORTED,
            ScramError::ChannelBindingMismatch => SQLSTATE_INVALID_AUTHORIZATION_SPECIFICATION,
            ScramError::AuthFailed { .. } => SQLSTATE_INVALID_PASSWORD,
            ScramError::Internal(_) => SQLSTATE_INTERNAL_ERROR,
        }
    }

    /// The DETAIL to send with the message, if any (never for an authentication failure).
    pub fn detail(&self) -> Option<&str> {
        match self {
            ScramError::Protocol { detail, .. } => detail.as_deref(),
            _ => None,
        }
    }

    /// A line for the server's log only: it says whether the user exists.
    pub fn log_detail(&self) -> Option<String> {
        match self {
            ScramError::AuthFailed {
                user,
                reason: FailReason::NoVerifier,
            } => Some(format!(
                "User \"{user}\" has no SCRAM-SHA-256 verifier in the auth file."
            )),
            ScramError::AuthFailed {
                user,
                reason: FailReason::WrongProof,
            } => Some(format!("Password does not match for user \"{user}\".")),
            _ => None,
        }
    }

    /// A failed password check, not a malformed exchange.
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, ScramError::AuthFailed { .. })
    }
}

impl From<RandomError> for ScramError {
    fn from(_: RandomError) -> Self {
        ScramError::Internal("could not generate random nonce")
    }
}

fn malformed(detail: String) -> ScramError {
    protocol("malformed SCRAM message", Some(detail))
}

fn protocol(message: impl Into<String>, detail: Option<String>) -> ScramError {
    ScramError::Protocol {
        message: message.into(),
        detail,
    }
}

/// A byte of client input for a message: itself when printable, else its code
/// (PostgreSQL's `sanitize_char`).
fn sanitize_char(c: u8) -> String {
    if (0x21..=0x7E).contains(&c) {
        char::from(c).to_string()
    } else {
        format!("0x{c:02x}")
    }
}

/// At most 30 bytes of client input, non-printable ones as `?` (`sanitize_str`).
fn sanitize_str(s: &[u8]) -> String {
    s.iter()
        .take(30)
        .map(|&c| {
            if (0x21..=0x7E).contains(&c) {
                char::from(c)
            } else {
                '?'
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Message reading, as auth-scram.c's read_attr_value / read_any_attr

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// The next byte, 0 at the end (messages with NUL bytes are refused before reading).
    fn peek(&self) -> u8 {
        self.data.get(self.pos).copied().unwrap_or(0)
    }

    fn rest(&self) -> &'a [u8] {
        &self.data[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// The value up to the next comma (consumed) or the end.
    fn value(&mut self) -> &'a [u8] {
        let rest = self.rest();
        let len = rest.iter().position(|&b| b == b',').unwrap_or(rest.len());
        self.pos += len;
        if !self.at_end() {
            self.pos += 1;
        }
        &rest[..len]
    }

    fn expect_equals(&mut self, attr: u8) -> Result<(), ScramError> {
        if self.peek() != b'=' {
            return Err(malformed(format!(
                "Expected character \"=\" for attribute \"{}\".",
                char::from(attr)
            )));
        }
        self.pos += 1;
        Ok(())
    }

    /// `attr=value`, for the attribute that must come next.
    fn attr_value(&mut self, attr: u8) -> Result<&'a [u8], ScramError> {
        if self.peek() != attr {
            return Err(malformed(format!(
                "Expected attribute \"{}\" but found \"{}\".",
                char::from(attr),
                sanitize_str(self.rest())
            )));
        }
        self.pos += 1;
        self.expect_equals(attr)?;
        Ok(self.value())
    }

    /// Any `attr=value` (an extension the server ignores, or the proof).
    fn any_attr(&mut self) -> Result<(u8, &'a [u8]), ScramError> {
        let attr = self.peek();
        if attr == 0 {
            return Err(malformed(
                "Attribute expected, but found end of string.".into(),
            ));
        }
        if !attr.is_ascii_alphabetic() {
            return Err(malformed(format!(
                "Attribute expected, but found invalid character \"{}\".",
                sanitize_char(attr)
            )));
        }
        self.pos += 1;
        self.expect_equals(attr)?;
        Ok((attr, self.value()))
    }
}

/// `printable = %x21-2B / %x2D-7E` (RFC 5802): what a nonce is made of.
fn is_printable(s: &[u8]) -> bool {
    s.iter().all(|&c| (0x21..=0x7E).contains(&c) && c != b',')
}

/// PostgreSQL receives the message as a C string: it must not be empty nor hold a NUL.
fn check_message(data: &[u8]) -> Result<(), ScramError> {
    if data.is_empty() {
        return Err(malformed("The message is empty.".into()));
    }
    if data.contains(&0) {
        return Err(malformed(
            "Message length does not match input length.".into(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The exchange

/// One SCRAM-SHA-256(-PLUS) exchange, server side. Build it when the
/// SASLInitialResponse arrives, feed it that message's data ([`ScramServer::client_first`])
/// and then the SASLResponse's ([`ScramServer::client_final`]). Any error ends the
/// exchange: the caller sends it as an ErrorResponse and closes the connection.
pub struct ScramServer {
    user: String,
    verifier: Option<Verifier>,
    /// The `tls-server-end-point` data; `Some` exactly when SCRAM-SHA-256-PLUS was offered.
    channel_binding: Option<Vec<u8>>,
    /// The client picked SCRAM-SHA-256-PLUS.
    binding_in_use: bool,
    state: State,
}

enum State {
    Initial,
    SaltSent(Box<SaltSent>),
    Done,
}

struct SaltSent {
    /// The gs2 channel-binding flag of client-first: `n`, `y` or `p`.
    cbind_flag: u8,
    client_nonce: Vec<u8>,
    server_nonce: Vec<u8>,
    client_first_bare: Vec<u8>,
    server_first: Vec<u8>,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Initial => "initial",
            State::SaltSent(_) => "salt sent",
            State::Done => "done",
        };
        f.debug_struct("ScramServer")
            .field("user", &self.user)
            .field("has_verifier", &self.verifier.is_some())
            .field("binding_offered", &self.channel_binding.is_some())
            .field("binding_in_use", &self.binding_in_use)
            .field("state", &state)
            .finish()
    }
}

impl ScramServer {
    /// Starts an exchange for `user`, the user name of the startup packet (SCRAM's own
    /// `n=` user name is ignored, as PostgreSQL does: libpq sends it empty).
    ///
    /// - `verifier`: the user's verifier, or `None` for a user that is not in the auth
    ///   file: the exchange then runs to the end with a mock salt and fails there with the
    ///   same [`ScramError::AuthFailed`] as a wrong password, so a client cannot tell.
    /// - `mechanism`: the name the client chose in SASLInitialResponse.
    /// - `channel_binding`: [`super::tls_server_end_point`] of the server certificate when
    ///   SCRAM-SHA-256-PLUS was offered ([`mechanisms`]`(true)`), else `None`.
    ///
    /// Fails (08P01) for a mechanism that was not offered.
    pub fn new(
        user: &str,
        verifier: Option<&Verifier>,
        mechanism: &str,
        channel_binding: Option<Vec<u8>>,
    ) -> Result<ScramServer, ScramError> {
        let binding_in_use = match mechanism {
            SCRAM_SHA_256_PLUS if channel_binding.is_some() => true,
            SCRAM_SHA_256 => false,
            _ => {
                return Err(protocol(
                    "client selected an invalid SASL authentication mechanism",
                    None,
                ))
            }
        };
        Ok(ScramServer {
            user: user.to_string(),
            verifier: verifier.cloned(),
            channel_binding,
            binding_in_use,
            state: State::Initial,
        })
    }

    /// Reads client-first-message (the SASLInitialResponse data) and returns
    /// server-first-message, for AuthenticationSASLContinue.
    pub fn client_first(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::Initial) {
            self.state = State::Done;
            return Err(ScramError::Internal(
                "SCRAM client-first-message out of order",
            ));
        }
        self.state = State::Done;
        let sent = self.read_client_first(data)?;
        let server_first = sent.server_first.clone();
        self.state = State::SaltSent(Box::new(sent));
        Ok(server_first)
    }

    fn read_client_first(&self, data: &[u8]) -> Result<SaltSent, ScramError> {
        check_message(data)?;
        let mut r = Reader { data, pos: 0 };

        // gs2-header: channel-binding flag, then authzid.
        let cbind_flag = r.peek();
        match cbind_flag {
            b'n' | b'y' => {
                if cbind_flag == b'y' && self.channel_binding.is_some() {
                    // We offered SCRAM-SHA-256-PLUS, the client says we did not: someone
                    // between us removed it from the list (a downgrade).
                    return Err(protocol(
                        "SCRAM channel binding negotiation error",
                        Some(
                            "The client supports SCRAM channel binding but thinks the server \
                             does not.  However, this server does support channel binding."
                                .into(),
                        ),
                    ));
                }
                r.pos += 1;
                if r.peek() != b',' {
                    return Err(malformed(format!(
                        "Comma expected, but found character \"{}\".",
                        sanitize_char(r.peek())
                    )));
                }
                r.pos += 1;
            }
            b'p' => {
                if !self.binding_in_use {
                    return Err(malformed(
                        "The client selected SCRAM-SHA-256 without channel binding, but the \
                         SCRAM message includes channel binding data."
                            .into(),
                    ));
                }
                let kind = r.attr_value(b'p')?;
                if kind != b"tls-server-end-point" {
                    return Err(protocol(
                        format!(
                            "unsupported SCRAM channel-binding type \"{}\"",
                            sanitize_str(kind)
                        ),
                        None,
                    ));
                }
            }
            other => {
                return Err(malformed(format!(
                    "Unexpected channel-binding flag \"{}\".",
                    sanitize_char(other)
                )))
            }
        }
        if self.binding_in_use && cbind_flag != b'p' {
            return Err(malformed(
                "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not \
                 include channel binding data."
                    .into(),
            ));
        }
        match r.peek() {
            b'a' => {
                return Err(ScramError::Unsupported {
                    message: "client uses authorization identity, but it is not supported",
                })
            }
            b',' => r.pos += 1,
            other => {
                return Err(malformed(format!(
                    "Unexpected attribute \"{}\" in client-first-message.",
                    sanitize_char(other)
                )))
            }
        }

        // client-first-message-bare: [reserved-mext ","] username "," nonce ["," extensions]
        let client_first_bare = r.rest().to_vec();
        if r.peek() == b'm' {
            return Err(ScramError::Unsupported {
                message: "client requires an unsupported SCRAM extension",
            });
        }
        // The SCRAM user name is ignored: the startup packet's is the one that counts.
        let _scram_user = r.attr_value(b'n')?;
        let client_nonce = r.attr_value(b'r')?;
        if !is_printable(client_nonce) {
            return Err(protocol("non-printable characters in SCRAM nonce", None));
        }
        while !r.at_end() {
            r.any_attr()?; // optional extensions: none supported, all ignored
        }

        let (iterations, salt) = match &self.verifier {
            Some(v) => (v.iterations, v.salt.clone()),
            None => (DEFAULT_ITERATIONS, mock_salt(&self.user)?),
        };
        let raw: [u8; RAW_NONCE_LEN] = random_bytes()?;
        let server_nonce = STANDARD.encode(raw).into_bytes();
        let mut server_first = b"r=".to_vec();
        server_first.extend_from_slice(client_nonce);
        server_first.extend_from_slice(&server_nonce);
        server_first
            .extend_from_slice(format!(",s={},i={iterations}", STANDARD.encode(&salt)).as_bytes());

        Ok(SaltSent {
            cbind_flag,
            client_nonce: client_nonce.to_vec(),
            server_nonce,
            client_first_bare,
            server_first,
        })
    }

    /// Reads client-final-message (the SASLResponse data) and, when the proof is right,
    /// returns server-final-message for AuthenticationSASLFinal (then AuthenticationOk).
    pub fn client_final(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let sent = match std::mem::replace(&mut self.state, State::Done) {
            State::SaltSent(sent) => sent,
            _ => {
                return Err(ScramError::Internal(
                    "SCRAM client-final-message out of order",
                ))
            }
        };
        check_message(data)?;
        let mut r = Reader { data, pos: 0 };

        // channel-binding: base64 of the gs2 header plus, for -PLUS, the binding data.
        let cbind = r.attr_value(b'c')?;
        if self.binding_in_use {
            let binding = self.channel_binding.as_deref().unwrap_or_default();
            let expected = STANDARD.encode([CBIND_HEADER, binding].concat());
            if !bool::from(cbind.ct_eq(expected.as_bytes())) {
                return Err(ScramError::ChannelBindingMismatch);
            }
        } else if !((cbind == b"biws" && sent.cbind_flag == b'n')
            || (cbind == b"eSws" && sent.cbind_flag == b'y'))
        {
            // "n,," or "y,," in base64, and the same flag as in client-first.
            return Err(protocol(
                "unexpected SCRAM channel-binding attribute in client-final-message",
                None,
            ));
        }
        let final_nonce = r.attr_value(b'r')?;

        // Extensions (ignored) up to the proof, which must be last.
        let (proof_b64, without_proof_end) = loop {
            let start = r.pos;
            let (attr, value) = r.any_attr()?;
            if attr == b'p' {
                // `start` follows the comma that ended the previous attribute.
                break (value, start - 1);
            }
        };
        let proof: [u8; KEY_LEN] = STANDARD
            .decode(proof_b64)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| malformed("Malformed proof in client-final-message.".into()))?;
        if !r.at_end() {
            return Err(malformed(
                "Garbage found at the end of client-final-message.".into(),
            ));
        }

        if final_nonce != [sent.client_nonce.as_slice(), &sent.server_nonce].concat() {
            return Err(protocol(
                "invalid SCRAM response",
                Some("Nonce does not match.".into()),
            ));
        }

        let mut auth_message = sent.client_first_bare;
        auth_message.push(b',');
        auth_message.extend_from_slice(&sent.server_first);
        auth_message.push(b',');
        auth_message.extend_from_slice(&data[..without_proof_end]);

        // The proof is checked in the mock exchange too (against zero keys), so both paths
        // take the same time; only then does a missing verifier fail it.
        let (stored_key, server_key) = match &self.verifier {
            Some(v) => (v.stored_key, v.server_key),
            None => ([0u8; KEY_LEN], [0u8; KEY_LEN]),
        };
        let client_signature = hmac_sha256(&stored_key, &auth_message);
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        let proof_ok = bool::from(sha256(&client_key).ct_eq(&stored_key));
        if self.verifier.is_none() || !proof_ok {
            return Err(ScramError::AuthFailed {
                user: self.user.clone(),
                reason: if self.verifier.is_none() {
                    FailReason::NoVerifier
                } else {
                    FailReason::WrongProof
                },
            });
        }

        let server_signature = hmac_sha256(&server_key, &auth_message);
        Ok(format!("v={}", STANDARD.encode(server_signature)).into_bytes())
    }
}

impl ScramServer {
    /// The combined nonce of server-first, for tests and the fuzz harness that forge
    /// client-final messages.
    pub(crate) fn nonce_for_tests(&self) -> Option<Vec<u8>> {
        match &self.state {
            State::SaltSent(s) => Some([s.client_nonce.as_slice(), &s.server_nonce].concat()),
            _ => None,
        }
    }
}

#[cfg(test)]
#[path = "scram_tests.rs"]
mod tests;
