//! The gateway's TLS configuration: TLS 1.3 only, a client certificate
//! optional at the handshake (a device without one may only enroll), and a
//! verifier that accepts a certificate only if the CA signed it *and* the
//! registry's cached view says it is current and not revoked.
//!
//! Session resumption is off: a resumed session skips the client
//! certificate verifier, which would let a revoked device back in.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore, ServerConfig,
    SignatureScheme,
};
use shimgate_wire::pki;

use crate::cache::{Cache, CertStatus};
use crate::paths::DataDir;

struct DeviceVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    cache: Arc<Cache>,
}

impl std::fmt::Debug for DeviceVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for DeviceVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match self.cache.handshake_status(&pki::fingerprint(end_entity)) {
            CertStatus::Active(_) => Ok(ClientCertVerified::assertion()),
            CertStatus::Revoked | CertStatus::Superseded => {
                Err(Error::InvalidCertificate(CertificateError::Revoked))
            }
            CertStatus::Unknown => Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

pub fn server_config(
    dir: &DataDir,
    cache: Arc<Cache>,
    cert: Arc<crate::servercert::ServerCert>,
) -> Result<Arc<ServerConfig>, pki::TlsError> {
    let provider = pki::provider();
    let mut roots = RootCertStore::empty();
    for ca in pki::load_certs(&dir.ca_cert())? {
        roots.add(ca)?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .allow_unauthenticated()
        .build()?;
    let verifier = Arc::new(DeviceVerifier { inner, cache });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
