//! PEM loading, certificate fingerprints and the process's crypto provider.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{what} in {path} is not valid PEM")]
    Pem { what: &'static str, path: String },
    #[error("the certificate in {path} cannot be read: {reason}")]
    Certificate { path: String, reason: String },
}

/// (not_before, not_after), unix seconds, of the first certificate in the
/// PEM file at `path` (the end-entity one of a chain).
pub fn validity(path: &Path) -> Result<(i64, i64), PkiError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let bad = |reason: String| PkiError::Certificate {
        path: path.display().to_string(),
        reason,
    };
    let certs = load_certs(path)?;
    let der = certs.first().ok_or_else(|| bad("no certificate".into()))?;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
    Ok((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

/// When a certificate valid from `not_before` to `not_after` is renewed:
/// two thirds into its lifetime (devices' and the gateway's own alike).
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    not_before + (not_after - not_before) * 2 / 3
}

/// Why a TLS configuration could not be built (either side).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{0:?} is not a valid gateway name for TLS")]
    BadName(String),
}

/// aws-lc-rs, chosen explicitly: never rely on a process-default provider
/// (two enabled providers make `builder()` panic).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// SHA-256 of a DER certificate, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

pub fn fingerprint_bytes(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lowercase or uppercase hex; `None` on odd length or bad digits.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    // from_str_radix alone would take a sign: "+f" as 0x0f, so one value
    // could be written several ways
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path).map_err(|source| PkiError::Read {
        path: path.display().to_string(),
        source,
    })
}

pub fn certs_from_pem(pem: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .ok()?;
    (!certs.is_empty()).then_some(certs)
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    certs_from_pem(&read(path)?).ok_or_else(|| PkiError::Pem {
        what: "certificate",
        path: path.display().to_string(),
    })
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|_| PkiError::Pem {
        what: "private key",
        path: path.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_two_thirds() {
        assert_eq!(renew_at(0, 30), 20);
        assert_eq!(renew_at(1000, 1000 + 30 * 86400), 1000 + 20 * 86400);
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(
            unhex(&hex(&[0, 1, 254, 255])).unwrap(),
            vec![0, 1, 254, 255]
        );
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("+f"), None, "a sign is not a hex digit");
        assert_eq!(unhex("é1"), None);
    }
}
