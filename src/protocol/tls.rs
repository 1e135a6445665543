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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::conninfo::SslMode;

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

/// Build the TLS client configuration for `mode`. `sslrootcert` is the root certificate
/// file as conninfo resolved it (explicit `sslrootcert`/`PGSSLROOTCERT`, else the default
/// file when it exists).
pub fn setup(
    mode: SslMode,
    sslrootcert: Option<&Path>,
) -> Result<Option<TlsSetup>, TlsConfigError> {
    let root_path = sslrootcert.map(Path::to_path_buf);
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
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsConfigError {
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
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
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
