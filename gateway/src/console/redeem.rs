//! The public invitation page. **Reachable without signing in:** anyone holding a link (or
//! guessing at one) gets here, with no account and no session. The holder of a link names a
//! device, gets the enrollment code (text, QR code, command) and sees the device appear once it
//! has enrolled; it only ever redeems the one invitation whose secret the request carries.
//!
//! What it checks, and nothing else stands in front of it:
//! - `GET /invite/{id}?s=SECRET`: the link's id and secret (strict hex, [`parse_link`]), then
//!   the registry's check of that secret (unknown, expired, used up, cancelled are refused).
//! - `POST /invite/{id}`: the per-address enrollment rate limit (`enroll_limit`, 429), the same
//!   link check, the double-submit form token (`sg_form` cookie, 403), the device name; the
//!   redemption is audited as `invitee:USER`.
//! - `POST /invite/status`: a poll key [`Watches::add`] handed out (random, kept in memory as
//!   its SHA-256, 2 hours); it maps only to the token's public id and answers only whether a
//!   device enrolled with it.
//!
//! The link carries the invitation's secret once (`/invite/ID?s=SECRET`); the page posts it
//! back in the form body, and the page that shows the code polls with a separate random key
//! that only maps (in memory) to the token's public id.
//!
//! Also here, because this page shows them too: the enrollment code's text and QR code
//! ([`CodeView`], [`qr_svg`], `Console::code_for`), which the admin side ([`super::invite`])
//! uses when an admin creates an enrollment code.
use std::sync::Arc;
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use shimgate_host::clock;
use shimgate_registry::{Invitee, IssuedToken, RedeemError, Redemption};
use shimgate_wire::code::EnrollmentCode;
use shimgate_wire::identity::check_device_name;

use super::Peer;
use super::auth::Nav;
use super::{Actor, Console, error_page, render, when};

/// How long an enrollment code made from an invitation stays valid.
pub(super) const CODE_LIFETIME: i64 = 3600;
/// How long an invitation page may poll for its device.
const WATCH_LIFETIME: Duration = Duration::from_secs(2 * 3600);
/// Watches held at once.
const MAX_WATCHES: usize = 10_000;

/// Poll keys of invitation pages → the public id of the token they wait on.
#[derive(Default)]
pub struct Watches {
    by_hash: DashMap<[u8; 32], (String, Instant)>,
}

impl Watches {
    /// Starts watching a token (its public id); returns the poll key to give the page.
    pub fn add(&self, token_id_hex: String) -> String {
        let now = Instant::now();
        if self.by_hash.len() >= MAX_WATCHES {
            self.by_hash
                .retain(|_, (_, at)| now.duration_since(*at) < WATCH_LIFETIME);
        }
        let key = hex::encode(rand::random::<[u8; 32]>());
        self.by_hash
            .insert(Sha256::digest(key.as_bytes()).into(), (token_id_hex, now));
        key
    }

    /// The token a poll key watches, if the key was handed out and has not expired.
    pub fn get(&self, key: &str) -> Option<String> {
        let h: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let found = self.by_hash.get(&h).map(|e| e.value().clone());
        match found {
            Some((token, at)) if at.elapsed() < WATCH_LIFETIME => Some(token),
            Some(_) => {
                self.by_hash.remove(&h);
                None
            }
            None => None,
        }
    }
}

/// An enrollment code and how to show it.
pub(crate) struct CodeView {
    pub code: String,
    pub qr_svg: String,
    pub user: String,
    pub expires: String,
}

/// The QR code of `text` as an inline `<svg>` element; empty if it cannot be made.
pub(super) fn qr_svg(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(q) => {
            let svg = q
                .render::<qrcode::render::svg::Color>()
                .min_dimensions(240, 240)
                .build();
            // Drop the XML declaration: the element goes inside an HTML page.
            svg.find("<svg")
                .and_then(|i| svg.get(i..))
                .unwrap_or_default()
                .to_owned()
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot make a QR code");
            String::new()
        }
    }
}

impl Console {
    pub(super) fn code_for(&self, t: &IssuedToken) -> String {
        EnrollmentCode {
            gateway: self.gw.config.public_addr.clone(),
            ca_fingerprint: self.gw.ca.fingerprint(),
            token_id: t.id,
            secret: t.secret,
            expires_at: t.expires_at,
        }
        .to_string()
    }
}

#[derive(Template)]
#[template(path = "invite.html")]
struct InvitePage {
    title: &'static str,
    nav: Option<Nav>,
    id: String,
    secret: String,
    form: String,
    for_group: bool,
    invitee: String,
    device: String,
    user: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "invite_code.html")]
struct InviteCodePage {
    title: &'static str,
    nav: Option<Nav>,
    code: CodeView,
    watch: String,
    device: String,
}

#[derive(serde::Deserialize)]
pub struct LinkQuery {
    #[serde(default)]
    s: String,
}

/// An invitation link's id (the path) and secret (`s`), as bytes: exactly 32 and 64 hex
/// digits; anything else is no invitation.
pub fn parse_link(id: &str, secret: &str) -> Option<([u8; 16], [u8; 32])> {
    // Not `pki::unhex`: it takes `+f` for `0f` (`u8::from_str_radix` allows a sign), so
    // one link would have many spellings.
    let mut id_bytes = [0u8; 16];
    let mut secret_bytes = [0u8; 32];
    hex::decode_to_slice(id, &mut id_bytes).ok()?;
    hex::decode_to_slice(secret, &mut secret_bytes).ok()?;
    Some((id_bytes, secret_bytes))
}

fn refused(e: &RedeemError) -> Response {
    match e {
        RedeemError::Unknown => error_page(
            StatusCode::NOT_FOUND,
            "This invitation link is not valid. Check that you copied all of it.",
        ),
        RedeemError::Expired => error_page(
            StatusCode::GONE,
            "This invitation has expired: ask your administrator for a new one.",
        ),
        RedeemError::UsedUp => error_page(
            StatusCode::GONE,
            "This invitation has been used up: ask your administrator for a new one.",
        ),
        RedeemError::Cancelled => error_page(
            StatusCode::GONE,
            "This invitation was cancelled by an administrator.",
        ),
        RedeemError::Db(e) => {
            tracing::error!(error = %e, "checking an invitation failed");
            error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The gateway's registry is unavailable; try again shortly.",
            )
        }
    }
}

fn invitee_text(i: &Invitee) -> (bool, String) {
    match i {
        Invitee::User(u) => (false, format!("user {u}")),
        Invitee::Group(g) => (true, format!("group {g}")),
    }
}

pub async fn public_page(
    State(c): State<Arc<Console>>,
    Path(id): Path<String>,
    Query(q): Query<LinkQuery>,
    headers: HeaderMap,
) -> Response {
    let Some((id_bytes, secret)) = parse_link(&id, &q.s) else {
        return refused(&RedeemError::Unknown);
    };
    let inv = match c
        .gw
        .registry
        .check_invitation(&id_bytes, &secret, clock::now())
        .await
    {
        Ok(i) => i,
        Err(e) => return refused(&e),
    };
    let (form, set) = c.form_token(&headers);
    let (for_group, invitee) = invitee_text(&inv.invitee);
    let mut resp = render(&InvitePage {
        title: "Add a device",
        nav: None,
        id,
        secret: q.s,
        form,
        for_group,
        invitee,
        device: String::new(),
        user: String::new(),
        error: None,
    });
    if let Some(v) = set {
        resp.headers_mut().append(axum::http::header::SET_COOKIE, v);
    }
    resp
}

/// The public invitation page's form (`POST /invite/{id}`), sent by someone not signed in.
#[derive(serde::Deserialize)]
pub struct RedeemForm {
    /// The invitation's secret, from the link.
    #[serde(default)]
    pub s: String,
    /// The double-submit token, compared with the `sg_form` cookie.
    #[serde(default)]
    pub form: String,
    #[serde(default)]
    pub device: String,
    /// The user the device is for (group invitations only).
    #[serde(default)]
    pub user: String,
}

impl RedeemForm {
    /// The device name as typed, trimmed and lowercased; still to be checked with
    /// [`check_device_name`].
    pub fn device_name(&self) -> String {
        self.device.trim().to_ascii_lowercase()
    }
}

pub async fn redeem(
    State(c): State<Arc<Console>>,
    ConnectInfo(Peer(addr)): ConnectInfo<Peer>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<RedeemForm>,
) -> Response {
    if !c.gw.enroll_limit.allow(addr.ip()) {
        return error_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts from this address: wait a minute and try again.",
        );
    }
    let Some((id_bytes, secret)) = parse_link(&id, &f.s) else {
        return refused(&RedeemError::Unknown);
    };
    let now = clock::now();
    let inv = match c
        .gw
        .registry
        .check_invitation(&id_bytes, &secret, now)
        .await
    {
        Ok(i) => i,
        Err(e) => return refused(&e),
    };
    let (for_group, invitee) = invitee_text(&inv.invitee);
    let device = f.device_name();
    let user = f.user.trim().to_owned();
    // A refused form is shown again with the browser's current token (or a new one).
    let (form, set_cookie) = c.form_token(&headers);
    let again = |status: StatusCode, error: String| {
        let page = InvitePage {
            title: "Add a device",
            nav: None,
            id: id.clone(),
            secret: f.s.clone(),
            form: form.clone(),
            for_group,
            invitee: invitee.clone(),
            device: device.clone(),
            user: user.clone(),
            error: Some(error),
        };
        let mut resp = (status, render(&page)).into_response();
        if let Some(v) = set_cookie.clone() {
            resp.headers_mut().append(axum::http::header::SET_COOKIE, v);
        }
        resp
    };
    if !c.form_token_ok(&headers, &f.form) {
        return again(
            StatusCode::FORBIDDEN,
            "This form had expired (CSRF check failed): reload the page and try again.".into(),
        );
    }
    if let Err(e) = check_device_name(&device) {
        return again(StatusCode::BAD_REQUEST, e.to_string());
    }
    let redemption = Redemption {
        device_name: device.clone(),
        user_name: for_group.then(|| user.clone()),
        token_expires_at: now + CODE_LIFETIME,
    };
    let token = match c
        .gw
        .registry
        .redeem_invitation(&id_bytes, &secret, redemption, now)
        .await
    {
        Ok(t) => t,
        Err(RedeemError::Db(
            e @ (shimgate_registry::Error::Invalid { .. } | shimgate_registry::Error::Conflict(_)),
        )) => {
            return again(StatusCode::BAD_REQUEST, e.to_string());
        }
        Err(e) => return refused(&e),
    };
    let actor = Actor {
        name: format!("invitee:{}", token.user),
        addr,
    };
    c.audit(
        &actor,
        "invitation.redeem",
        &id,
        format!("device={device} token={}", token.id_hex()),
    )
    .await;
    let code = c.code_for(&token);
    let watch = c.watches.add(token.id_hex());
    render(&InviteCodePage {
        title: "Your enrollment code",
        nav: None,
        code: CodeView {
            qr_svg: qr_svg(&code),
            code,
            user: token.user,
            expires: when(Some(token.expires_at)),
        },
        watch,
        device,
    })
}

/// What the invitation page polls with (`POST /invite/status`), not signed in.
#[derive(serde::Deserialize)]
pub struct StatusForm {
    /// The poll key [`Watches::add`] handed out.
    #[serde(default)]
    pub key: String,
}

/// What the invitation page polls for.
#[derive(serde::Serialize)]
pub struct EnrollStatus {
    enrolled: bool,
    /// Enrolled, but an admin must approve the device before it can connect.
    awaiting_approval: bool,
    device_name: Option<String>,
    vpn_name: Option<String>,
    vpn_ip: Option<String>,
}

pub async fn status(State(c): State<Arc<Console>>, Form(f): Form<StatusForm>) -> Response {
    let Some(token) = c.watches.get(&f.key) else {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "unknown or expired key"})),
        )
            .into_response();
    };
    match c.gw.registry.token_device(&token).await {
        Ok(Some(d)) => Json(EnrollStatus {
            enrolled: true,
            awaiting_approval: d.status == shimgate_registry::DeviceStatus::Pending,
            vpn_name: Some(format!("{}.{}", d.name, c.gw.config.vpn_domain)),
            vpn_ip: Some(d.vpn_ip.to_string()),
            device_name: Some(d.name),
        })
        .into_response(),
        Ok(None) => Json(EnrollStatus {
            enrolled: false,
            awaiting_approval: false,
            device_name: None,
            vpn_name: None,
            vpn_ip: None,
        })
        .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "polling an enrollment failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"error": "registry unavailable"})),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_is_an_svg_element() {
        let svg = qr_svg("sg1-AAAA");
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(!svg.contains("<?xml"));
    }

    #[test]
    fn watches_map_keys_to_tokens() {
        let w = Watches::default();
        let key = w.add("abc".into());
        assert_eq!(w.get(&key).as_deref(), Some("abc"));
        assert_eq!(w.get("other"), None);
    }

    #[test]
    fn links_parse_strictly() {
        let (id, s) = ("00".repeat(16), "11".repeat(32));
        assert!(parse_link(&id, &s).is_some());
        assert!(parse_link(&id, "").is_none());
        assert!(parse_link("zz", &s).is_none());
        assert!(parse_link(&id, &"1".repeat(63)).is_none());
        assert!(parse_link(&"00".repeat(17), &s).is_none());
        assert!(parse_link(&"AB".repeat(16), &"CD".repeat(32)).is_some());
    }

    /// Found with the `console_form` fuzz target (input: tests/fuzz/corpus/console_form/
    /// regression_plus_sign_secret): `+f` in a link was read as `0f`, so one invitation link
    /// had many spellings. No bypass: the bytes still had to be the secret's.
    #[test]
    fn links_are_hex_digits_only() {
        let (id, s) = ("00".repeat(16), "0f".repeat(32));
        assert!(parse_link(&id, &s).is_some());
        assert!(parse_link(&id, &"+f".repeat(32)).is_none());
        assert!(parse_link(&"+0".repeat(16), &s).is_none());
        assert!(parse_link(&id, &format!("{}+f", "0f".repeat(31))).is_none());
    }
}
