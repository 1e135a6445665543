//! Authentication of the clients of `walferry relay` (`--auth scram --auth-file FILE`):
//! PostgreSQL standbys, pg_receivewal and walferry itself log in to the relay exactly as to
//! a PostgreSQL server with `scram-sha-256` in pg_hba.conf. Everything here is pure and
//! free of I/O apart from [`AuthFile::load`]; the relay drives the messages.
//!
//! # The SCRAM exchange ([`ScramServer`])
//!
//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL's `auth-scram.c` runs it, and
//! SCRAM-SHA-256-PLUS with the `tls-server-end-point` channel binding (RFC 5929) so that a
//! client with `channel_binding=require` can connect over TLS. What is checked, in
//! PostgreSQL's order and with its messages and SQLSTATEs:
//!
//! - the mechanism is one that was offered ([`mechanisms`]: `-PLUS` first, and only when
//!   there is binding data, i.e. on TLS);
//! - the gs2 header: `n,,` (client without channel binding), `y,,` (client that can bind
//!   but thinks the server cannot: refused when we offered `-PLUS`, since then someone
//!   removed it from the list on the way: a downgrade attack), `p=tls-server-end-point,,`
//!   (only with `-PLUS`, which in turn requires it); no authorization identity (`a=`,
//!   0A000) and no mandatory extension (`m=`, 0A000);
//! - the client nonce is printable; optional extensions are skipped as PostgreSQL does;
//! - in client-final, `c=` is base64 of the same gs2 header plus, for `-PLUS`, the hash of
//!   our certificate (28000 when it is not: the client saw another certificate, i.e. a man
//!   in the middle); the nonce is exactly the client's part followed by ours; the proof is
//!   32 bytes of base64, last, nothing after it;
//! - the proof: `H(ClientProof XOR HMAC(StoredKey, AuthMessage)) == StoredKey`, compared in
//!   constant time. On success server-final carries `v=` (the server signature) so the
//!   client knows the server holds the verifier too.
//!
//! The SCRAM message's own user name (`n=`) is ignored, as in PostgreSQL: the user is the
//! one of the startup packet (libpq sends `n=` empty).
//!
//! A user without a verifier gets a mock exchange: a salt derived from a per-process secret
//! and the user name (stable for the name, like a real one), the default iteration count,
//! and a failure only after the proof, with the same error as a wrong password: `password
//! authentication failed for user "X"` (28P01). So the replies do not tell whether a user
//! exists. Malformed messages are 08P01 protocol violations ([`ScramError::sqlstate`]).
//! Nonces come from the operating system's CSPRNG (ring's `SystemRandom`).
//!
//! Where this differs from PostgreSQL, deliberately:
//!
//! - the proof and the channel binding data are compared in constant time (PostgreSQL uses
//!   `memcmp`/`strcmp`);
//! - the mock salts come from a secret made per process (PostgreSQL keeps one in
//!   pg_control): within one relay process a name's fake salt is stable, across a restart
//!   it changes;
//! - the relay passes the SASLInitialResponse data to [`ScramServer::client_first`]; an
//!   initial response without data (length -1), which PostgreSQL answers with an empty
//!   AuthenticationSASLContinue, is a protocol violation here unless the relay handles it
//!   (no known client sends one);
//! - a verifier's iteration count must be plain digits and its salt non-empty.
//!
//! # Verifiers and the auth file
//!
//! The relay never sees a password: the auth file ([`AuthFile`]) holds one
//! `SCRAM-SHA-256$...` verifier per user, the form of `pg_authid.rolpassword`, so a line
//! can be copied from the primary or made with [`make_verifier`] (`walferry
//! auth-verifier`). Plaintext and md5 entries are refused; so is a file that others can
//! read or that belongs to someone else.
//!
//! # Channel binding data
//!
//! [`tls_server_end_point`] hashes the relay's certificate as RFC 5929 and PostgreSQL do.

mod channel_binding;
pub mod file;
#[doc(hidden)]
pub mod fuzzing;
pub mod scram;

pub mod private;

pub use channel_binding::{tls_server_end_point, ChannelBindingError};
pub use file::{AuthFile, AuthFileError, LineError};
pub use scram::{
    make_verifier, make_verifier_random_salt, mechanisms, saslprep, FailReason, RandomError,
    ScramError, ScramServer, Verifier, VerifierError, DEFAULT_ITERATIONS, SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
};
