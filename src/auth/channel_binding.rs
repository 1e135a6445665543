//! The `tls-server-end-point` channel binding data (RFC 5929 section 4.1): a hash of the
//! server's own certificate, DER-encoded, as it was sent in the TLS handshake.
//!
//! The hash function is the one of the certificate's signature algorithm, except that MD5
//! and SHA-1 are replaced by SHA-256. PostgreSQL computes the same in
//! `be_tls_get_certificate_hash` (server) and `pgtls_get_peer_certificate_hash` (libpq);
//! both sides must agree byte for byte or the SCRAM-SHA-256-PLUS exchange fails.
//!
//! Algorithms without a separate hash (Ed25519, Ed448) have no `tls-server-end-point`
//! binding: PostgreSQL fails the exchange for them, and a server with such a certificate
//! should not offer SCRAM-SHA-256-PLUS at all ([`tls_server_end_point`] says so with an
//! error). RSASSA-PSS takes the hash from the algorithm's parameters (SHA-1, hence SHA-256,
//! when absent), as OpenSSL's `X509_get_signature_info` does; PostgreSQL releases that
//! still use `X509_get_signature_nid` cannot bind to a PSS certificate at all, whatever the
//! server does.
//!
//! Only the few DER elements needed are read (certificate SEQUENCE, tbsCertificate,
//! signatureAlgorithm); the certificate is not otherwise checked (it is the relay's own).

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// Why there is no `tls-server-end-point` binding for a certificate. The message names the
/// reason, never the certificate's contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelBindingError {
    #[error("the server certificate is not valid DER: {0}")]
    BadDer(&'static str),
    #[error(
        "the server certificate's signature algorithm ({0}) has no hash function for the \
         tls-server-end-point channel binding; SCRAM-SHA-256-PLUS cannot be offered"
    )]
    NoHash(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha224 => Sha224::digest(data).to_vec(),
            Hash::Sha256 => Sha256::digest(data).to_vec(),
            Hash::Sha384 => Sha384::digest(data).to_vec(),
            Hash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// The channel binding data for `tls-server-end-point` of a certificate in DER form (the
/// end-entity certificate the server presents): what [`super::ScramServer::new`] takes as
/// `channel_binding`, and what a client passes to
/// `postgres_protocol::authentication::sasl::ChannelBinding::tls_server_end_point`.
pub fn tls_server_end_point(cert_der: &[u8]) -> Result<Vec<u8>, ChannelBindingError> {
    let hash = signature_hash(cert_der)?;
    Ok(hash.digest(cert_der))
}

// OID contents (DER, without tag and length).
const RSA_PREFIX: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01]; // 1.2.840.113549.1.1
const ECDSA_SHA1: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x01]; // 1.2.840.10045.4.1
const ECDSA_SHA2_PREFIX: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03]; // 1.2.840.10045.4.3
const DSA_SHA1: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x38, 0x04, 0x03]; // 1.2.840.10040.4.3
const NIST_SIG_PREFIX: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03]; // 2.16.840.1.101.3.4.3
const NIST_HASH_PREFIX: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02]; // 2.16.840.1.101.3.4.2
const OIW_SHA1_RSA: &[u8] = &[0x2B, 0x0E, 0x03, 0x02, 0x1D]; // 1.3.14.3.2.29
const OIW_SHA1: &[u8] = &[0x2B, 0x0E, 0x03, 0x02, 0x1A]; // 1.3.14.3.2.26
const MD5: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x02, 0x05]; // 1.2.840.113549.2.5

const TAG_SEQUENCE: u8 = 0x30;
const TAG_OID: u8 = 0x06;
const TAG_CONTEXT_0: u8 = 0xA0;

/// The hash to use for the certificate's signature algorithm, per RFC 5929 4.1.
fn signature_hash(cert_der: &[u8]) -> Result<Hash, ChannelBindingError> {
    let (cert, rest) = expect(cert_der, TAG_SEQUENCE, "certificate")?;
    if !rest.is_empty() {
        return Err(ChannelBindingError::BadDer("data after the certificate"));
    }
    let (_tbs, cert) = expect(cert, TAG_SEQUENCE, "tbsCertificate")?;
    let (alg, _) = expect(cert, TAG_SEQUENCE, "signatureAlgorithm")?;
    let (oid, params) = expect(alg, TAG_OID, "signature algorithm OID")?;

    if let Some(&last) = oid.strip_prefix(RSA_PREFIX).and_then(one) {
        return match last {
            4 | 5 | 11 => Ok(Hash::Sha256), // md5, sha1, sha256 WithRSAEncryption
            12 => Ok(Hash::Sha384),
            13 => Ok(Hash::Sha512),
            14 => Ok(Hash::Sha224),
            10 => pss_hash(params),
            _ => Err(no_hash(oid)),
        };
    }
    if oid == ECDSA_SHA1 || oid == DSA_SHA1 || oid == OIW_SHA1_RSA {
        return Ok(Hash::Sha256);
    }
    if let Some(&last) = oid.strip_prefix(ECDSA_SHA2_PREFIX).and_then(one) {
        return match last {
            1 => Ok(Hash::Sha224),
            2 => Ok(Hash::Sha256),
            3 => Ok(Hash::Sha384),
            4 => Ok(Hash::Sha512),
            _ => Err(no_hash(oid)),
        };
    }
    if let Some(&last) = oid.strip_prefix(NIST_SIG_PREFIX).and_then(one) {
        return match last {
            1 => Ok(Hash::Sha224), // dsa-with-sha224
            2 => Ok(Hash::Sha256), // dsa-with-sha256
            // SHA-3 based signatures: no SHA-3 here (nor in PostgreSQL builds of old OpenSSL).
            _ => Err(no_hash(oid)),
        };
    }
    // Ed25519, Ed448 and anything unknown.
    Err(no_hash(oid))
}

/// RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] HashAlgorithm DEFAULT sha1, ... }
fn pss_hash(params: &[u8]) -> Result<Hash, ChannelBindingError> {
    let (seq, _) = expect(params, TAG_SEQUENCE, "RSASSA-PSS parameters")?;
    if seq.first() != Some(&TAG_CONTEXT_0) {
        return Ok(Hash::Sha256); // default SHA-1, replaced by SHA-256
    }
    let (explicit, _) = expect(seq, TAG_CONTEXT_0, "RSASSA-PSS hash algorithm")?;
    let (alg, _) = expect(explicit, TAG_SEQUENCE, "RSASSA-PSS hash algorithm")?;
    let (oid, _) = expect(alg, TAG_OID, "RSASSA-PSS hash algorithm OID")?;
    if oid == OIW_SHA1 || oid == MD5 {
        return Ok(Hash::Sha256);
    }
    match oid.strip_prefix(NIST_HASH_PREFIX).and_then(one) {
        Some(1) => Ok(Hash::Sha256),
        Some(2) => Ok(Hash::Sha384),
        Some(3) => Ok(Hash::Sha512),
        Some(4) => Ok(Hash::Sha224),
        _ => Err(no_hash(oid)),
    }
}

/// The single byte left after an OID prefix.
fn one(rest: &[u8]) -> Option<&u8> {
    match rest {
        [b] => Some(b),
        _ => None,
    }
}

fn no_hash(oid: &[u8]) -> ChannelBindingError {
    ChannelBindingError::NoHash(oid_text(oid))
}

/// Dotted text of an OID's DER contents ("1.3.101.112" for Ed25519).
fn oid_text(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for &b in oid {
        acc = (acc << 7) | u64::from(b & 0x7F);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        }
        if acc > u64::MAX >> 8 {
            return "an unreadable OID".to_string();
        }
    }
    let text: Vec<String> = arcs.iter().map(u64::to_string).collect();
    format!("OID {}", text.join("."))
}

/// One DER element of the given tag at the start of `input`: its contents and what follows.
fn expect<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), ChannelBindingError> {
    let bad = || ChannelBindingError::BadDer(what);
    let (&t, rest) = input.split_first().ok_or_else(bad)?;
    if t != tag {
        return Err(bad());
    }
    let (&first, mut rest) = rest.split_first().ok_or_else(bad)?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(bad());
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    if rest.len() < len {
        return Err(bad());
    }
    Ok(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    // Self-signed certificates made once with OpenSSL 3.0 (`openssl req -x509 -new -key K
    // -sha384 [-sigopt rsa_padding_mode:pss] -outform DER`); the expected values are
    // `openssl dgst -sha256|-sha224|-sha384|-sha512 -r FILE.der` with the hash RFC 5929 picks.
    const CASES: &[(&str, &[u8], &str)] = &[
        (
            "ecdsa-with-SHA1 -> SHA-256",
            include_bytes!("testdata/ec-sha1.der"),
            "c9526d1b5dd2cee6b1369bc076fd5351428f8ce2aa849702613f2841fd6abbb3",
        ),
        (
            "ecdsa-with-SHA224",
            include_bytes!("testdata/ec-sha224.der"),
            "68dd31ff929de36264ce1508b2b1bc9eefea07e47d4c21d2f13b7779",
        ),
        (
            "ecdsa-with-SHA256",
            include_bytes!("testdata/ec-sha256.der"),
            "1022fb0106344011fb1d6aa47f0fd7754e3802fde4d338a620db216ee5c8f13f",
        ),
        (
            "ecdsa-with-SHA384",
            include_bytes!("testdata/ec-sha384.der"),
            "23f9e1fae84284c9f3ac1f43236e239c2c864f0e682e77787e62aa41236d2d2461ab5b75a22734219eada979e1fc0c9a",
        ),
        (
            "ecdsa-with-SHA512",
            include_bytes!("testdata/ec-sha512.der"),
            "5db8bbe3eae702440169e73f300d214d0c1dc240b79b1fa3703cfb87af50799527adc8fd1ee8954774745d40b836d9ff67a7424dfafd9e4b3c2d21d94c6fa8ab",
        ),
        (
            "sha1WithRSAEncryption -> SHA-256",
            include_bytes!("testdata/rsa-sha1.der"),
            "e41b9ecc662dcdba4d5677c40d0a7d099c7dd3228182bbd24dcb395ef300e236",
        ),
        (
            "sha256WithRSAEncryption",
            include_bytes!("testdata/rsa-sha256.der"),
            "342cf33ac689bcb8436a6cbe7af18e8fec3966bd76ee4e416df934785e934213",
        ),
        (
            "RSASSA-PSS with SHA-384",
            include_bytes!("testdata/rsa-pss-sha384.der"),
            "6eedbbc6e5a696b9d3a815222c836336a2378257ec9a6e5c9892c524788b00d3152a29ecdbf2cb75607ed508abfe4003",
        ),
        (
            "RSASSA-PSS with default SHA-1 -> SHA-256",
            include_bytes!("testdata/rsa-pss-sha1.der"),
            "cbea62644de8ba7a203b149f49dc8dfae08c0c10bc13a2a9b9dcac496230358e",
        ),
    ];

    #[test]
    fn hash_follows_the_signature_algorithm() {
        for (name, der, want) in CASES {
            let got = tls_server_end_point(der).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(hex(&got), *want, "{name}");
        }
    }

    #[test]
    fn the_project_test_certificate_binds() {
        // The PEM test certificate the TLS client tests use: sha256WithRSAEncryption.
        let pem = include_str!("../protocol/testdata/server.crt");
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(tls_server_end_point(&der).unwrap().len(), 32);
    }

    #[test]
    fn ed25519_has_no_binding() {
        let err = tls_server_end_point(include_bytes!("testdata/ed25519.der")).unwrap_err();
        assert_eq!(err, ChannelBindingError::NoHash("OID 1.3.101.112".into()));
        assert!(err
            .to_string()
            .contains("SCRAM-SHA-256-PLUS cannot be offered"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let der = include_bytes!("testdata/ec-sha256.der");
        for cut in 0..der.len() {
            assert!(tls_server_end_point(&der[..cut]).is_err(), "cut at {cut}");
        }
        assert!(tls_server_end_point(&[]).is_err());
        assert!(tls_server_end_point(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
        assert!(tls_server_end_point(&[0x30, 0x80]).is_err());
        let mut extra = der.to_vec();
        extra.push(0);
        assert!(tls_server_end_point(&extra).is_err());
    }

    #[test]
    fn oid_text_is_dotted() {
        assert_eq!(oid_text(&[0x2B, 0x65, 0x70]), "OID 1.3.101.112");
        assert_eq!(oid_text(RSA_PREFIX), "OID 1.2.840.113549.1.1");
        assert_eq!(oid_text(&[0xFF; 20]), "an unreadable OID");
    }
}
