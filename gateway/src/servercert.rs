//! The gateway's own server certificate, renewed before it expires.
//!
//! `init` issues a two-year certificate; a gateway that serves for longer
//! must not stop being reachable the day it lapses. Like devices (which
//! renew theirs over mTLS), the gateway renews at two thirds of the
//! lifetime: at start and then twice a day it asks its CA for a new one
//! (same names and addresses, fresh key) and swaps it into the TLS
//! configuration without a restart. Open connections keep the one they
//! were made with; devices pin the CA, not the certificate.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use shimgate_host::clock;
use shimgate_wire::pki::{self, TlsError};
use tokio_util::sync::CancellationToken;

use crate::ca::{Ca, CaError};
use crate::paths::{DataDir, GatewayConfig};
use crate::setup::Gateway;

/// How often a running gateway looks at its certificate's age.
const CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);

/// The certificate and key the TLS handshakes present, swappable.
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    /// The certificate and key in `dir`.
    pub fn load(dir: &DataDir) -> Result<Arc<ServerCert>, TlsError> {
        Ok(Arc::new(ServerCert {
            current: RwLock::new(certified(dir)?),
        }))
    }

    /// Presents the certificate and key now in `dir` to new handshakes.
    fn reload(&self, dir: &DataDir) -> Result<(), TlsError> {
        let fresh = certified(dir)?;
        match self.current.write() {
            Ok(mut c) => *c = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.current.read() {
            Ok(c) => Some(Arc::clone(&c)),
            Err(poisoned) => Some(Arc::clone(&poisoned.into_inner())),
        }
    }
}

fn certified(dir: &DataDir) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = CertifiedKey::from_der(
        pki::load_certs(&dir.server_cert())?,
        pki::load_key(&dir.server_key())?,
        &pki::provider(),
    )?;
    Ok(Arc::new(key))
}

/// Why the server certificate could not be renewed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error(transparent)]
    Read(#[from] pki::PkiError),
    #[error("issuing a new server certificate: {0}")]
    Issue(#[from] CaError),
    #[error("loading the new server certificate: {0}")]
    Load(#[from] TlsError),
}

/// Issues a new server certificate into `dir` when the one there is two
/// thirds through its lifetime (or unreadable as a certificate); returns the
/// new one's expiry, or `None` when none was due.
pub fn renew_if_due(
    dir: &DataDir,
    ca: &Ca,
    config: &GatewayConfig,
    now: i64,
) -> Result<Option<i64>, RenewError> {
    let (not_before, not_after) = pki::validity(&dir.server_cert())?;
    if now < pki::renew_at(not_before, not_after) {
        return Ok(None);
    }
    ca.issue_server(dir, &config.names, &config.ips)?;
    let (_, renewed_until) = pki::validity(&dir.server_cert())?;
    tracing::info!(
        was_valid_until = %clock::show(not_after),
        valid_until = %clock::show(renewed_until),
        "server certificate renewed"
    );
    Ok(Some(renewed_until))
}

/// Renews the running gateway's certificate whenever due, until `stop`.
pub async fn keep_renewed(gw: Arc<Gateway>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let renewed = match renew_if_due(&gw.dir, &gw.ca, &gw.config, clock::now()) {
            Ok(None) => Ok(()),
            Ok(Some(_)) => gw.server_cert.reload(&gw.dir).map_err(RenewError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = renewed {
            tracing::error!(error = %e, "could not renew the server certificate; trying again in 12 hours");
        }
    }
}
