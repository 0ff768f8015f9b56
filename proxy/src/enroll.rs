//! `shimgate enroll CODE`: online registration from the device's side.
//!
//! The key pair is made here and never leaves the device; the gateway sees
//! only a CSR. The TLS connection pins the CA fingerprint carried in the
//! code, so enrollment cannot be intercepted even though the device has no
//! CA yet.

use std::net::SocketAddr;

use http::Method;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use shimgate_host::{clock, files};
use shimgate_wire::code::EnrollmentCode;
use shimgate_wire::enroll::{ENROLL_PATH, EnrollRequest, EnrollResponse};
use shimgate_wire::identity::{check_device_name, device_name_from_hostname};
use shimgate_wire::pki;

use crate::client::{self, ClientError};
use crate::config::{ConfigDir, DEFAULT_POOL, DeviceConfig};
use crate::tls;

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "this device is already enrolled as {device} (in {dir}); pass --force to replace it, or use another --config-dir"
    )]
    AlreadyEnrolled { device: String, dir: String },
    #[error("this enrollment code expired at {0}: ask your admin for a new one")]
    Expired(String),
    #[error(transparent)]
    BadName(#[from] shimgate_wire::identity::BadDeviceName),
    #[error(transparent)]
    Gateway(#[from] ClientError),
    #[error("the gateway sent a CA that does not match the enrollment code")]
    CaMismatch,
    #[error("the gateway's answer is malformed: {0}")]
    BadAnswer(String),
    #[error("making the key pair: {0}")]
    Key(#[from] rcgen::Error),
    #[error(transparent)]
    Tls(#[from] shimgate_wire::pki::TlsError),
    #[error("saving to {path}: {source}")]
    Save {
        path: String,
        source: std::io::Error,
    },
}

/// The machine's host name, as a default device name.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // or truncates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if rc == 0 {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    }
}

pub struct EnrollOptions {
    pub name: Option<String>,
    pub listen: Option<SocketAddr>,
    pub force: bool,
}

pub async fn enroll(
    dir: &ConfigDir,
    code: &EnrollmentCode,
    opts: &EnrollOptions,
) -> Result<EnrollResponse, EnrollError> {
    if !opts.force
        && let Ok(existing) = DeviceConfig::load(dir)
    {
        return Err(EnrollError::AlreadyEnrolled {
            device: existing.device,
            dir: dir.root().display().to_string(),
        });
    }
    if code.expires_at <= clock::now() {
        return Err(EnrollError::Expired(clock::show(code.expires_at)));
    }
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| device_name_from_hostname(&hostname()));
    check_device_name(&name)?;

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, name.as_str());
    let csr_pem = params.serialize_request(&key)?.pem()?;

    let server_name = tls::server_name(code.gateway_host())?;
    let conn = client::connect(
        &code.gateway,
        server_name,
        tls::pinned(code.ca_fingerprint)?,
    )
    .await?;
    let request = EnrollRequest {
        token_id: code.token_id_hex(),
        secret: pki::hex(&code.secret),
        device_name: name,
        csr_pem,
    };
    let body = serde_json::to_vec(&request).map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
    let answer = client::call(&conn.send, Method::POST, ENROLL_PATH, Some(body)).await?;
    conn.closed.cancel();
    let answer: EnrollResponse =
        serde_json::from_slice(&answer).map_err(|e| EnrollError::BadAnswer(e.to_string()))?;
    let ca = pki::certs_from_pem(answer.ca_pem.as_bytes())
        .ok_or_else(|| EnrollError::BadAnswer("CA is not PEM".into()))?;
    // Exactly the pinned CA, nothing else, becomes this device's trust root.
    if ca.len() != 1
        || ca
            .iter()
            .any(|c| pki::fingerprint_bytes(c) != code.ca_fingerprint)
    {
        return Err(EnrollError::CaMismatch);
    }
    let vpn_domain = match &answer.vpn_domain {
        None => crate::config::default_vpn_domain(),
        Some(d) => crate::pac::dns_name(d)
            .ok_or_else(|| EnrollError::BadAnswer(format!("VPN domain {d:?} is not a DNS name")))?,
    };

    let save = |path: std::path::PathBuf, data: &[u8], mode| {
        files::write_atomic(&path, data, mode).map_err(|source| EnrollError::Save {
            path: path.display().to_string(),
            source,
        })
    };
    files::create_private_dir(dir.root()).map_err(|source| EnrollError::Save {
        path: dir.root().display().to_string(),
        source,
    })?;
    save(dir.key(), key.serialize_pem().as_bytes(), files::SECRET)?;
    save(dir.cert(), answer.cert_pem.as_bytes(), files::PUBLIC)?;
    save(dir.ca(), answer.ca_pem.as_bytes(), files::PUBLIC)?;
    let config = DeviceConfig {
        gateway: code.gateway.clone(),
        server_name: code.gateway_host().to_owned(),
        device: answer.device_name.clone(),
        user: answer.user.clone(),
        vpn_ip: answer.vpn_ip.clone(),
        listen: opts.listen.unwrap_or_else(crate::config::default_listen),
        pool: DEFAULT_POOL,
        socks_user: None,
        socks_password: None,
        peer_listen: crate::config::default_peer_listen(),
        peer_advertise: Vec::new(),
        vpn_domain,
        vpn_range: answer.vpn_range.unwrap_or_default(),
        exports: Vec::new(),
        tun: false,
        tun_name: crate::config::default_tun_name(),
        tun_allow_overlap: false,
        tun_dns: Default::default(),
    };
    config.save(dir).map_err(|source| EnrollError::Save {
        path: dir.config().display().to_string(),
        source,
    })?;
    Ok(answer)
}
