//! TLS for client connections with libpq's `sslmode` semantics, on rustls with the `ring`
//! provider (configured explicitly, never through a process-wide default provider).
//!
//! | sslmode            | TLS               | certificate check                           |
//! |--------------------|-------------------|---------------------------------------------|
//! | disable            | never             | -                                           |
//! | allow, prefer      | if offered        | none                                        |
//! | require            | must              | none, or chain if a root cert file exists   |
//! | verify-ca          | must              | chain against sslrootcert                   |
//! | verify-full        | must              | chain + host name (IP SAN for an address)   |
//!
//! "require upgrades to verify-ca when a root certificate file exists" is libpq's rule
//! (fe-secure-openssl.c `initialize_SSL`), and so is the default file,
//! `~/.postgresql/root.crt`. Even with no certificate check, the handshake signatures are
//! still verified, so the peer does hold the key of the certificate it shows.
//!
//! Whenever the chain is checked, the certificate revocation lists of `sslcrl` and
//! `sslcrldir` are checked too, for every certificate of the chain, as libpq asks OpenSSL
//! to (`X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL`): a certificate whose issuer
//! has no list there fails, and so does an expired list. Unlike libpq, a CRL file or
//! directory that was named but does not exist is an error rather than silently no check.
//!
//! A client certificate (`sslcert`, default `~/.postgresql/postgresql.crt` when present) is
//! sent with its key (`sslkey`); the key file must not be readable by others, as libpq
//! demands. Encrypted keys (`sslpassword`) are refused with a clear error: decrypting them
//! would need a PKCS#8/PBES2 stack that walferry does not carry.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::conninfo::{ConnParams, SslMode};

/// Why TLS could not be set up before any connection was tried: a configuration problem,
/// not something a retry fixes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TlsConfigError {
    pub message: String,
    pub hint: Option<String>,
}

/// How a TLS connection checks the server certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    Nothing,
    /// Chain to a trusted root, any host name (verify-ca).
    Chain,
    /// Chain and host name (verify-full).
    Full,
}

/// The TLS side of a resolved sslmode: `None` when TLS is never used.
#[derive(Clone)]
pub struct TlsSetup {
    pub config: Arc<ClientConfig>,
    pub verify: Verify,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// libpq's default root certificate file, `~/.postgresql/root.crt`.
pub fn default_root_cert() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".postgresql").join("root.crt"))
}

fn config_error(message: String, hint: Option<&str>) -> TlsConfigError {
    TlsConfigError {
        message,
        hint: hint.map(str::to_string),
    }
}

/// Build the TLS client configuration from the resolved sslmode and TLS files.
/// `sslrootcert` is the root certificate file as conninfo resolved it (explicit
/// `sslrootcert`/`PGSSLROOTCERT`, else the default file when it exists).
pub fn setup(params: &ConnParams) -> Result<Option<TlsSetup>, TlsConfigError> {
    let mode = params.sslmode;
    let root_path = params.sslrootcert.clone();
    let verify = match mode {
        SslMode::Disable => return Ok(None),
        SslMode::Allow | SslMode::Prefer => Verify::Nothing,
        SslMode::Require => match &root_path {
            Some(p) if p.exists() => Verify::Chain,
            _ => Verify::Nothing,
        },
        SslMode::VerifyCa => Verify::Chain,
        SslMode::VerifyFull => Verify::Full,
    };
    let provider = provider();
    let algs = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(NoCertificateCheck { algs }),
        Verify::Chain | Verify::Full => {
            let path = match root_path {
                Some(p) if p.exists() => p,
                other => {
                    let shown = other
                        .or_else(default_root_cert)
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "~/.postgresql/root.crt".into());
                    return Err(TlsConfigError {
                        message: format!("root certificate file \"{shown}\" does not exist"),
                        hint: Some(
                            "either provide the file (sslrootcert) or change sslmode to disable server certificate verification"
                                .into(),
                        ),
                    });
                }
            };
            let roots = load_roots(&path)?;
            let crls = load_crls(params.sslcrl.as_deref(), params.sslcrldir.as_deref())?;
            let mut builder =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if !crls.is_empty() {
                builder = builder.with_crls(crls).enforce_revocation_expiration();
            }
            let webpki = builder.build().map_err(|e| TlsConfigError {
                message: format!(
                    "could not use root certificate file \"{}\": {e}",
                    path.display()
                ),
                hint: None,
            })?;
            if verify == Verify::Full {
                webpki
            } else {
                Arc::new(ChainOnly { inner: webpki })
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError {
            message: format!("could not set up TLS: {e}"),
            hint: None,
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match client_identity(params)? {
        None => config.with_no_client_auth(),
        Some(id) => {
            let (cert, key) = (id.cert_path.display(), id.key_path.display());
            config
                .with_client_auth_cert(id.chain, id.key)
                .map_err(|e| {
                    config_error(
                        format!("could not use client certificate \"{cert}\" with private key \"{key}\": {e}"),
                        Some("sslcert and sslkey must be a certificate and the key it was issued for"),
                    )
                })?
        }
    };
    Ok(Some(TlsSetup {
        config: Arc::new(config),
        verify,
    }))
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let err = |what: String| TlsConfigError {
        message: format!(
            "could not read root certificate file \"{}\": {what}",
            path.display()
        ),
        hint: None,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
        let cert = cert.map_err(|e| err(e.to_string()))?;
        roots.add(cert).map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no certificates found".into()));
    }
    Ok(roots)
}

/// The CRLs of `sslcrl` (a PEM file of one or more lists) and of every file in
/// `sslcrldir` (as `openssl rehash` fills it: `<hash>.r0`, ...; files that hold no CRL are
/// skipped).
fn load_crls(
    file: Option<&Path>,
    dir: Option<&Path>,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsConfigError> {
    let hint = Some("give a PEM file of certificate revocation lists (openssl ca -gencrl writes one), or leave sslcrl/sslcrldir unset");
    let mut crls = Vec::new();
    if let Some(path) = file {
        let found = read_crl_file(path).map_err(|what| {
            config_error(
                format!(
                    "could not read certificate revocation list file \"{}\": {what}",
                    path.display()
                ),
                hint,
            )
        })?;
        if found.is_empty() {
            return Err(config_error(
                format!(
                    "certificate revocation list file \"{}\" holds no CRL",
                    path.display()
                ),
                hint,
            ));
        }
        crls.extend(found);
    }
    if let Some(dir) = dir {
        let err = |what: String| {
            config_error(
                format!(
                    "could not read certificate revocation list directory \"{}\": {what}",
                    dir.display()
                ),
                hint,
            )
        };
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| err(e.to_string()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        let before = crls.len();
        for path in entries {
            // Other files (a README, a CA certificate) may live there too.
            crls.extend(read_crl_file(&path).unwrap_or_default());
        }
        if crls.len() == before {
            return Err(err("no file in it holds a CRL".into()));
        }
    }
    Ok(crls)
}

fn read_crl_file(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

/// What the client authenticates with: its certificate chain and key, read from the files
/// named (kept for messages).
struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

/// The client certificate to send, if any: `None` without a certificate file (then the
/// server gets no certificate, as with libpq).
fn client_identity(params: &ConnParams) -> Result<Option<ClientIdentity>, TlsConfigError> {
    let Some(cert_path) = params.sslcert.as_deref() else {
        return Ok(None);
    };
    if !cert_path.exists() {
        // libpq goes on without a certificate; say so, since the name was given.
        tracing::warn!(
            "client certificate file \"{}\" does not exist; connecting without a client certificate",
            cert_path.display()
        );
        return Ok(None);
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            config_error(
                format!(
                    "could not read certificate file \"{}\": {e}",
                    cert_path.display()
                ),
                None,
            )
        })?;
    if chain.is_empty() {
        return Err(config_error(
            format!(
                "certificate file \"{}\" holds no PEM certificate",
                cert_path.display()
            ),
            None,
        ));
    }
    let Some(key_path) = params.sslkey.as_deref() else {
        return Err(config_error(
            format!(
                "certificate present, but no private key file for \"{}\"",
                cert_path.display()
            ),
            Some("give the key file with sslkey (PGSSLKEY)"),
        ));
    };
    let key = load_private_key(key_path, params.sslpassword.is_some())?;
    Ok(Some(ClientIdentity {
        chain,
        key,
        cert_path: cert_path.to_path_buf(),
        key_path: key_path.to_path_buf(),
    }))
}

/// The private key file, after libpq's checks: it exists, is a regular file and is
/// readable by nobody else.
fn load_private_key(
    path: &Path,
    password_given: bool,
) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| {
        let message = if e.kind() == std::io::ErrorKind::NotFound {
            format!("certificate present, but not private key file \"{shown}\"")
        } else {
            format!("could not access private key file \"{shown}\": {e}")
        };
        config_error(
            message,
            Some("give the key of the client certificate with sslkey (PGSSLKEY)"),
        )
    })?;
    if !meta.is_file() {
        return Err(config_error(
            format!("private key file \"{shown}\" is not a regular file"),
            None,
        ));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if let Some(problem) = key_file_access_problem(meta.mode(), meta.uid(), euid) {
        return Err(config_error(
            format!("private key file \"{shown}\" {problem}"),
            Some("chmod 0600 the key file and own it (or chown it to root with mode 0640 at most)"),
        ));
    }
    let text = std::fs::read(path).map_err(|e| {
        config_error(
            format!("could not read private key file \"{shown}\": {e}"),
            None,
        )
    })?;
    if is_encrypted_pem_key(&text) {
        let given = if password_given {
            " (sslpassword was given, but walferry cannot decrypt keys)"
        } else {
            ""
        };
        return Err(config_error(
            format!("private key file \"{shown}\" is encrypted; encrypted keys are not supported{given}"),
            Some("decrypt a copy for walferry: openssl pkey -in KEY -out KEY.plain, then chmod 0600 KEY.plain and give it as sslkey"),
        ));
    }
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| {
        config_error(
            format!("could not load private key file \"{shown}\": {e}"),
            Some("give a PEM key (PKCS#8, PKCS#1 RSA or SEC1 EC)"),
        )
    })
}

/// libpq's rule for the key file: owned by the current user with no group or other
/// access, or owned by root with at most group read (0640), so that a system-managed key
/// can be shared with a group.
fn key_file_access_problem(mode: u32, owner: u32, euid: u32) -> Option<&'static str> {
    const GROUP_OTHER: u32 = 0o077;
    const GROUP_WX_OTHER: u32 = 0o037;
    if owner != euid && owner != 0 {
        Some("must be owned by the current user or root")
    } else if owner == euid && mode & GROUP_OTHER != 0 {
        Some("has group or world access; permissions should be u=rw (0600) or less")
    } else if owner == 0 && owner != euid && mode & GROUP_WX_OTHER != 0 {
        Some("has group or world access; a key owned by root may have at most u=rw,g=r (0640)")
    } else {
        None
    }
}

/// PKCS#8 `ENCRYPTED PRIVATE KEY` blocks and OpenSSL's traditional encrypted PEM
/// (`Proc-Type: 4,ENCRYPTED`).
fn is_encrypted_pem_key(text: &[u8]) -> bool {
    let contains = |needle: &[u8]| text.windows(needle.len()).any(|w| w == needle);
    contains(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || contains(b"Proc-Type: 4,ENCRYPTED")
}

/// The name the handshake presents and, for verify-full, checks. A host that is neither an
/// IP address nor a valid DNS name can still be used without name verification: fall back
/// to the peer address (rustls sends no SNI for addresses).
pub fn server_name(
    host: &str,
    peer: std::net::IpAddr,
    verify: Verify,
) -> Result<ServerName<'static>, TlsConfigError> {
    match ServerName::try_from(host.to_string()) {
        Ok(name) => Ok(name),
        Err(_) if verify != Verify::Full => Ok(ServerName::IpAddress(peer.into())),
        Err(e) => Err(TlsConfigError {
            message: format!("host name \"{host}\" cannot be verified: {e}"),
            hint: Some("use sslmode=verify-ca, or connect by a DNS name or an IP address".into()),
        }),
    }
}

/// sslmode prefer / require without a root certificate: accept any certificate, but still
/// check the handshake signature against it.
#[derive(Debug)]
struct NoCertificateCheck {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// verify-ca: the full WebPKI check, except that a host-name mismatch is accepted.
/// rustls checks the name last, after the chain, so a name error means the chain is good.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_permissions_as_libpq() {
        let me = 1000;
        assert_eq!(key_file_access_problem(0o100600, me, me), None);
        assert_eq!(key_file_access_problem(0o100400, me, me), None);
        assert!(key_file_access_problem(0o100640, me, me)
            .unwrap()
            .contains("group or world access"));
        assert!(key_file_access_problem(0o100604, me, me).is_some());
        // Root-owned: group read is allowed, nothing more.
        assert_eq!(key_file_access_problem(0o100640, 0, me), None);
        assert!(key_file_access_problem(0o100660, 0, me).is_some());
        assert!(key_file_access_problem(0o100644, 0, me).is_some());
        // Someone else's key.
        assert!(key_file_access_problem(0o100600, 1234, me)
            .unwrap()
            .contains("owned by the current user or root"));
        // Root itself gets the owner's rule.
        assert!(key_file_access_problem(0o100640, 0, 0).is_some());
    }

    #[test]
    fn encrypted_keys_are_recognised() {
        assert!(is_encrypted_pem_key(
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"
        ));
        assert!(is_encrypted_pem_key(
            b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n"
        ));
        assert!(!is_encrypted_pem_key(
            b"-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n"
        ));
    }
}
