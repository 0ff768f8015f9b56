//! TLS client settings for talking to the gateway.
//!
//! - At enrollment the device has no CA yet: [`pinned`] accepts the gateway
//!   only if its chain carries a CA whose SHA-256 matches the enrollment
//!   code, and the server certificate verifies against that CA.
//! - Afterwards [`device`] trusts only the stored CA and presents the device
//!   certificate.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use shimgate_wire::pki::{self, TlsError};

use crate::config::ConfigDir;

/// The message a user sees when the pin does not match.
pub const PIN_MISMATCH: &str = "the gateway's CA does not match the fingerprint in the enrollment code (wrong gateway, or someone in the middle)";

#[derive(Debug)]
struct PinnedCa {
    fingerprint: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinnedCa {
    fn verifier_for(
        &self,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<Arc<WebPkiServerVerifier>, Error> {
        let ca = intermediates
            .iter()
            .find(|c| pki::fingerprint_bytes(c) == self.fingerprint)
            .ok_or_else(|| Error::General(PIN_MISMATCH.into()))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&self.provider))
            .build()
            .map_err(|e| Error::General(e.to_string()))
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.verifier_for(intermediates)?.verify_server_cert(
            end_entity,
            &[],
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // The gateway speaks TLS 1.3 only; this config offers nothing else.
        Err(Error::General("TLS 1.2 is not supported".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn finish(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// For enrollment: no client certificate, the CA pinned by fingerprint.
pub fn pinned(fingerprint: [u8; 32]) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = pki::provider();
    let verifier = Arc::new(PinnedCa {
        fingerprint,
        provider: Arc::clone(&provider),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(finish(config))
}

/// For everything after enrollment: the stored CA, the device certificate.
pub fn device(dir: &ConfigDir) -> Result<Arc<ClientConfig>, TlsError> {
    // a renewal a crash interrupted: finished first, so key and certificate match
    dir.finish_replacing_identity()
        .map_err(|source| pki::PkiError::Read {
            path: dir.key().display().to_string(),
            source,
        })?;
    let mut roots = RootCertStore::empty();
    for ca in pki::load_certs(&dir.ca())? {
        roots.add(ca)?;
    }
    let config = ClientConfig::builder_with_provider(pki::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(pki::load_certs(&dir.cert())?, pki::load_key(&dir.key())?)?;
    Ok(finish(config))
}

pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::BadName(host.to_owned()))
}
