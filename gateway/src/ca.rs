//! The gateway's certificate authority: creates the CA and the gateway's
//! server certificate at `init`, and signs device certificates from CSRs.
//!
//! A CSR is only a carrier for the device's public key. Everything else in a
//! device certificate (basic constraints, key usages, SANs, subject,
//! validity, serial) is set here, whatever the CSR asked for: rcgen would
//! otherwise copy `CA:true` or foreign names from the request.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use shimgate_host::files;
use shimgate_wire::pki;
use time::OffsetDateTime;

use crate::paths::DataDir;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(rcgen::Error),
    #[error("the CSR's key is not ECDSA P-256 or Ed25519; make the key with `shimgate enroll`")]
    UnsupportedKey,
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "a CA already exists in {0}; refusing to overwrite it (remove the directory to start over)"
    )]
    Exists(String),
}

/// Device certificates live this long; devices renew after two thirds.
pub const DEVICE_CERT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
/// Tolerates clocks a little behind the gateway's.
const BACKDATE: Duration = Duration::from_secs(300);

/// The CA: its certificate and the key that signs.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A parsed CSR whose signature checked out and whose key type we sign.
pub struct Csr(CertificateSigningRequestParams);

impl Csr {
    pub fn parse(pem: &str) -> Result<Csr, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(pem).map_err(CaError::BadCsr)?;
        let alg = csr.public_key.algorithm();
        if alg != &rcgen::PKCS_ECDSA_P256_SHA256 && alg != &rcgen::PKCS_ED25519 {
            return Err(CaError::UnsupportedKey);
        }
        Ok(Csr(csr))
    }
}

/// A freshly signed device certificate and what the registry records of it.
pub struct DeviceCert {
    pub pem: String,
    pub der: CertificateDer<'static>,
    pub serial_hex: String,
    pub fingerprint_hex: String,
    pub not_after: i64,
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // A positive INTEGER with no leading zero byte, as RFC 5280 wants.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    files::write_atomic(path, contents.as_bytes(), mode).map_err(|source| CaError::Write {
        path: path.display().to_string(),
        source,
    })
}

impl Ca {
    /// Makes a new CA (ECDSA P-256) for the given trust domain.
    pub fn generate(trust_domain: &str) -> Result<Ca, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!(
                "shimgate CA {trust_domain} {}",
                pki::hex(&rand::random::<[u8; 4]>())
            ),
        );
        // The random suffix keeps two gateways' CAs apart by name, so a
        // certificate from the other one fails as "unknown issuer".
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        validity(&mut params, CA_LIFETIME);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Writes `ca.crt` and `ca.key` (0600); refuses to replace an existing CA.
    pub fn save(&self, dir: &DataDir) -> Result<(), CaError> {
        if dir.ca_key().exists() {
            return Err(CaError::Exists(dir.root().display().to_string()));
        }
        write(
            &dir.ca_key(),
            &self.issuer.key().serialize_pem(),
            files::SECRET,
        )?;
        write(&dir.ca_cert(), &self.cert_pem, files::PUBLIC)
    }

    pub fn load(dir: &DataDir) -> Result<Ca, CaError> {
        let cert_pem =
            std::fs::read_to_string(dir.ca_cert()).map_err(|source| pki::PkiError::Read {
                path: dir.ca_cert().display().to_string(),
                source,
            })?;
        let key_pem =
            std::fs::read_to_string(dir.ca_key()).map_err(|source| pki::PkiError::Read {
                path: dir.ca_key().display().to_string(),
                source,
            })?;
        let key = KeyPair::from_pem(&key_pem)?;
        let cert_der = pki::load_certs(&dir.ca_cert())?
            .into_iter()
            .next()
            .ok_or_else(|| pki::PkiError::Pem {
                what: "CA certificate",
                path: dir.ca_cert().display().to_string(),
            })?;
        Ok(Ca {
            issuer: Issuer::from_ca_cert_pem(&cert_pem, key)?,
            cert_pem,
            cert_der,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate: what enrollment codes pin.
    pub fn fingerprint(&self) -> [u8; 32] {
        pki::fingerprint_bytes(&self.cert_der)
    }

    /// Issues the gateway's server certificate and writes it with its key.
    pub fn issue_server(
        &self,
        dir: &DataDir,
        names: &[String],
        ips: &[IpAddr],
    ) -> Result<(), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let cn = names
            .first()
            .cloned()
            .unwrap_or_else(|| "shimgate gateway".into());
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = names
            .iter()
            .map(|n| Ok(SanType::DnsName(n.as_str().try_into()?)))
            .chain(ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<Result<_, rcgen::Error>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        validity(&mut params, SERVER_CERT_LIFETIME);
        let cert = params.signed_by(&key, &self.issuer)?;
        write(&dir.server_key(), &key.serialize_pem(), files::SECRET)?;
        // The chain includes the CA so an enrolling device can pin it.
        write(
            &dir.server_cert(),
            &format!("{}{}", cert.pem(), self.cert_pem),
            files::PUBLIC,
        )
    }

    /// Signs a device certificate for the CSR's public key. Only the key is
    /// taken from the CSR.
    pub fn sign_device(
        &self,
        csr: &Csr,
        device_uri: &str,
        device_name: &str,
        lifetime: Duration,
    ) -> Result<DeviceCert, CaError> {
        let csr = &csr.0;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, device_name);
        params.subject_alt_names = vec![SanType::URI(device_uri.try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial());
        validity(&mut params, lifetime);
        let serial_hex = params
            .serial_number
            .as_ref()
            .map(|s| pki::hex(s.as_ref()))
            .unwrap_or_default();
        let not_after = params.not_after.unix_timestamp();
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(DeviceCert {
            fingerprint_hex: pki::fingerprint(cert.der()),
            pem: cert.pem(),
            der: cert.der().clone(),
            serial_hex,
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn hostile_csr() -> (String, KeyPair) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["gateway.example".into()]).unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.subject_alt_names.push(SanType::URI(
            "spiffe://shimgate/device/admin".try_into().unwrap(),
        ));
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        (csr, key)
    }

    #[test]
    fn csr_asking_for_ca_and_foreign_names_gets_a_plain_device_cert() {
        let ca = Ca::generate("shimgate").unwrap();
        let (csr, _key) = hostile_csr();
        let uri = "spiffe://shimgate/device/laptop";
        let issued = ca
            .sign_device(
                &Csr::parse(&csr).unwrap(),
                uri,
                "laptop",
                DEVICE_CERT_LIFETIME,
            )
            .unwrap();
        let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();

        let bc = cert.basic_constraints().unwrap().map(|b| b.value.ca);
        assert_eq!(bc, Some(false), "must not be a CA");
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| format!("{n}"))
            .collect();
        assert_eq!(sans.len(), 1, "{sans:?}");
        assert!(sans[0].contains(uri), "{sans:?}");
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!(lifetime <= (DEVICE_CERT_LIFETIME + BACKDATE).as_secs() as i64);
        assert!(
            cert.issuer()
                .to_string()
                .starts_with("CN=shimgate CA shimgate ")
        );
    }

    #[test]
    fn serials_are_random_and_distinct() {
        let ca = Ca::generate("shimgate").unwrap();
        let (csr, _) = hostile_csr();
        let csr = Csr::parse(&csr).unwrap();
        let a = ca
            .sign_device(&csr, "spiffe://s/device/a", "a", DEVICE_CERT_LIFETIME)
            .unwrap();
        let b = ca
            .sign_device(&csr, "spiffe://s/device/a", "a", DEVICE_CERT_LIFETIME)
            .unwrap();
        assert_ne!(a.serial_hex, b.serial_hex);
        assert_eq!(a.serial_hex.len(), 32);
    }

    #[test]
    fn garbage_csr_is_an_error() {
        for junk in [
            "",
            "not pem",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        ] {
            assert!(Csr::parse(junk).is_err());
        }
    }

    #[test]
    fn saved_ca_loads_and_refuses_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().to_owned());
        let ca = Ca::generate("shimgate").unwrap();
        ca.save(&dir).unwrap();
        let back = Ca::load(&dir).unwrap();
        assert_eq!(back.fingerprint(), ca.fingerprint());
        assert!(matches!(
            Ca::generate("x").unwrap().save(&dir),
            Err(CaError::Exists(_))
        ));
    }
}
