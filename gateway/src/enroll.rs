//! Online registration and certificate renewal, as the gateway serves them.
//!
//! Enrollment: the device sends the token id and secret from its enrollment
//! code with a CSR. The gateway checks the CSR first (so a bad one does not
//! burn the token), redeems the token (one use, expiry, constant-time hash
//! comparison: in the registry), creates the device with a VPN IP, signs a
//! short-lived certificate naming it, records it, and audits it all.
//! Renewal: a device with a valid certificate gets a fresh one for itself.

use std::net::SocketAddr;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Request, StatusCode};
use shimgate_host::clock;
use shimgate_registry::{NewAudit, NewCertificate, RedeemError};
use shimgate_wire::enroll::{EnrollRequest, EnrollResponse, MAX_BODY, RenewRequest, RenewResponse};
use shimgate_wire::identity::{check_device_name, device_uri};
use shimgate_wire::pki;

use crate::ca::{Csr, DEVICE_CERT_LIFETIME, DeviceCert};
use crate::cache::Identity;
use crate::respond::{read_body, send_error, send_json};
use crate::setup::Gateway;

async fn parse<T: serde::de::DeserializeOwned>(
    req: Request<RecvStream>,
    respond: &mut SendResponse<Bytes>,
) -> Option<T> {
    let mut body = req.into_body();
    let bytes = match read_body(&mut body, MAX_BODY).await {
        Ok(b) => b,
        Err(msg) => {
            send_error(respond, StatusCode::BAD_REQUEST, msg);
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            send_error(
                respond,
                StatusCode::BAD_REQUEST,
                &format!("malformed request: {e}"),
            );
            None
        }
    }
}

fn fixed<const N: usize>(hex: &str) -> Option<[u8; N]> {
    pki::unhex(hex)?.try_into().ok()
}

fn redeem_message(e: &RedeemError) -> (StatusCode, &'static str) {
    match e {
        RedeemError::Unknown => (
            StatusCode::FORBIDDEN,
            "this enrollment code is not valid (unknown token or wrong secret)",
        ),
        RedeemError::Expired => (
            StatusCode::FORBIDDEN,
            "this enrollment code has expired: ask your admin for a new one",
        ),
        RedeemError::UsedUp => (
            StatusCode::FORBIDDEN,
            "this enrollment code was already used: ask your admin for a new one",
        ),
        RedeemError::Cancelled => (
            StatusCode::FORBIDDEN,
            "this enrollment code was cancelled by an admin",
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway's registry is unavailable; try again shortly",
        ),
    }
}

pub async fn enroll(
    gw: &Gateway,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
) {
    let Some(ask) = parse::<EnrollRequest>(req, &mut respond).await else {
        return;
    };
    let (Some(token_id), Some(secret)) = (fixed::<16>(&ask.token_id), fixed::<32>(&ask.secret))
    else {
        return send_error(
            &mut respond,
            StatusCode::BAD_REQUEST,
            "malformed token id or secret",
        );
    };
    // 256 random bits are not guessed, but each attempt costs a registry
    // query and an audit row: a code tried from many addresses is slowed too.
    if !gw.token_attempts.allow(token_id) {
        tracing::info!(%peer, token = %pki::hex(&token_id), "enrollment attempts with this code are rate limited");
        return send_error(
            &mut respond,
            StatusCode::TOO_MANY_REQUESTS,
            "too many enrollment attempts with this code: wait a minute and try again",
        );
    }
    if let Err(e) = check_device_name(&ask.device_name) {
        return send_error(&mut respond, StatusCode::BAD_REQUEST, &e.to_string());
    }
    let csr = match Csr::parse(&ask.csr_pem) {
        Ok(c) => c,
        Err(e) => return send_error(&mut respond, StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let now = clock::now();
    let grant = match gw.registry.redeem_token(&token_id, &secret, now).await {
        Ok(g) => g,
        Err(e) => {
            let (status, msg) = redeem_message(&e);
            tracing::info!(%peer, reason = %e, "enrollment refused");
            metrics::counter!("shimgate_enrollments_total", "result" => "refused").increment(1);
            // Answer first: with the registry down, the audit write waits
            // out its timeout too.
            send_error(&mut respond, status, msg);
            audit(
                gw,
                "anonymous",
                "enroll.refused",
                &pki::hex(&token_id),
                peer,
                &e.to_string(),
            )
            .await;
            return;
        }
    };
    let device = match gw
        .registry
        .create_device(
            grant.user_id,
            grant.device_name.as_deref().unwrap_or(&ask.device_name),
            now,
        )
        .await
    {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "creating the device failed");
            return send_error(
                &mut respond,
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway could not record the device; try again",
            );
        }
    };
    let groups = gw
        .registry
        .groups_of(grant.user_id)
        .await
        .unwrap_or_default();
    let holder = Identity {
        fingerprint: String::new(),
        device_id: device.id,
        device_name: device.name.clone(),
        user_name: grant.user_name.clone(),
        groups,
        vpn_ip: device.vpn_ip,
        not_after: 0,
        // A device awaiting approval is refused until approved, from its first handshake.
        revoked: device.status != shimgate_registry::DeviceStatus::Active,
        superseded: false,
    };
    let cert = match issue(gw, &csr, holder).await {
        Ok(c) => c,
        Err((status, msg)) => return send_error(&mut respond, status, &msg),
    };
    tracing::info!(%peer, device = %device.name, user = %grant.user_name, vpn_ip = %device.vpn_ip, "device enrolled");
    metrics::counter!("shimgate_enrollments_total", "result" => "ok").increment(1);
    // So the console's invitation page can show the result.
    if let Err(e) = gw
        .registry
        .link_token_device(&grant.token_id_hex, device.id)
        .await
    {
        tracing::warn!(error = %e, "could not link the token to its device");
    }
    audit(
        gw,
        &grant.user_name,
        "device.enroll",
        &device.name,
        peer,
        &format!("vpn_ip={} serial={}", device.vpn_ip, cert.serial_hex),
    )
    .await;
    let answer = EnrollResponse {
        awaiting_approval: device.status == shimgate_registry::DeviceStatus::Pending,
        vpn_name: format!("{}.{}", device.name, gw.config.vpn_domain),
        device_name: device.name,
        user: grant.user_name,
        vpn_ip: device.vpn_ip.to_string(),
        cert_pem: cert.pem,
        ca_pem: gw.ca.cert_pem().to_owned(),
        not_after: cert.not_after,
        vpn_domain: Some(gw.config.vpn_domain.clone()),
        vpn_range: Some(gw.config.vpn_range),
    };
    send_json(&mut respond, StatusCode::OK, &answer);
}

pub async fn renew(
    gw: &Gateway,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    who: &Identity,
    peer: SocketAddr,
) {
    let Some(ask) = parse::<RenewRequest>(req, &mut respond).await else {
        return;
    };
    let csr = match Csr::parse(&ask.csr_pem) {
        Ok(c) => c,
        Err(e) => return send_error(&mut respond, StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let cert = match issue(gw, &csr, who.clone()).await {
        Ok(c) => c,
        Err((status, msg)) => return send_error(&mut respond, status, &msg),
    };
    tracing::info!(%peer, device = %who.device_name, "certificate renewed");
    audit(
        gw,
        &who.user_name,
        "device.renew",
        &who.device_name,
        peer,
        &format!("serial={}", cert.serial_hex),
    )
    .await;
    send_json(
        &mut respond,
        StatusCode::OK,
        &RenewResponse {
            cert_pem: cert.pem,
            not_after: cert.not_after,
        },
    );
}

/// Signs a certificate for `holder`'s device, records it in the registry
/// and the cache. On failure, the status and sentence for the device.
async fn issue(
    gw: &Gateway,
    csr: &Csr,
    holder: Identity,
) -> Result<DeviceCert, (StatusCode, String)> {
    let uri = device_uri(&gw.config.trust_domain, &holder.device_name);
    let cert = gw
        .ca
        .sign_device(csr, &uri, &holder.device_name, DEVICE_CERT_LIFETIME)
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let record = NewCertificate {
        device_id: holder.device_id,
        serial_hex: cert.serial_hex.clone(),
        fingerprint_hex: cert.fingerprint_hex.clone(),
        not_after: cert.not_after,
        now: clock::now(),
    };
    if let Err(e) = gw.registry.record_certificate(record).await {
        tracing::error!(error = %e, device = %holder.device_name, "recording the certificate failed");
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway could not record the certificate; try again".into(),
        ));
    }
    gw.cache.insert(Identity {
        fingerprint: cert.fingerprint_hex.clone(),
        not_after: cert.not_after,
        superseded: false,
        ..holder
    });
    Ok(cert)
}

async fn audit(
    gw: &Gateway,
    actor: &str,
    action: &str,
    target: &str,
    peer: SocketAddr,
    detail: &str,
) {
    let entry = NewAudit {
        at: clock::now(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        source_addr: Some(peer.to_string()),
        detail: detail.to_owned(),
        gateway: None,
    };
    gw.audit_now(entry).await;
}
