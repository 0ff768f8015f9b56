//! Renewing the device certificate over mTLS before it expires.
//!
//! At two thirds of the certificate's lifetime the device makes a new key
//! pair and asks the gateway, authenticated by the current certificate, for
//! a new one. New connections use it at once; open ones keep the session
//! they have.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use rcgen::{CertificateParams, KeyPair};
use shimgate_host::clock;
use shimgate_wire::enroll::{RENEW_PATH, RenewRequest, RenewResponse};
use shimgate_wire::pki;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigDir;
use crate::pool::Pool;
use crate::tls;

const RETRY: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error(transparent)]
    Gateway(#[from] crate::client::ClientError),
    #[error("making the key pair: {0}")]
    Key(#[from] rcgen::Error),
    #[error("saving the new certificate: {0}")]
    Save(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] shimgate_wire::pki::TlsError),
}

pub async fn renew_once(dir: &ConfigDir, pool: &Pool) -> Result<i64, RenewError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr_pem = CertificateParams::default()
        .serialize_request(&key)?
        .pem()?;
    let body = serde_json::to_vec(&RenewRequest { csr_pem }).map_err(std::io::Error::other)?;
    let send = pool.any_connection().await?;
    let answer = crate::client::call(&send, Method::POST, RENEW_PATH, Some(body)).await?;
    let answer: RenewResponse = serde_json::from_slice(&answer).map_err(std::io::Error::other)?;
    dir.replace_identity(key.serialize_pem().as_bytes(), answer.cert_pem.as_bytes())?;
    pool.connector().set_tls(tls::device(dir)?);
    Ok(answer.not_after)
}

/// Renews whenever due, until `stop` fires.
pub async fn keep_renewed(dir: ConfigDir, pool: Arc<Pool>, stop: CancellationToken) {
    loop {
        let wait = match pki::validity(&dir.cert()) {
            Ok((nb, na)) => (pki::renew_at(nb, na) - clock::now()).max(0) as u64,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the device certificate");
                RETRY.as_secs()
            }
        };
        // Sleep in bounded steps so a suspended laptop re-checks on wake.
        if wait > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(wait.min(3600))) => continue,
                _ = stop.cancelled() => return,
            }
        }
        match renew_once(&dir, &pool).await {
            Ok(not_after) => {
                tracing::info!(valid_until = %clock::show(not_after), "device certificate renewed")
            }
            Err(e) => {
                tracing::warn!(error = %e, "certificate renewal failed; will retry");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}
