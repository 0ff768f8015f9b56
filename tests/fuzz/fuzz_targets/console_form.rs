//! The web console's POST form bodies (application/x-www-form-urlencoded).
//! The first byte picks the form, the rest is the body: decoded with
//! `serde_urlencoded::from_bytes` into the console's form struct, checked
//! to decode exactly as axum's `Form` extractor decodes it for the handler,
//! then run through the same checks and conversions the handler makes
//! before it touches the database (`gateway/src/console/`). No input may
//! panic; what the checks accept is within their limits and reads back the
//! same when the console shows it again.
#![no_main]

use std::fmt::Debug;

use axum::extract::FromRequest;
use axum::http::{Request, header};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use shimgate_fuzz::runtime;
use shimgate_gateway::console::{api, auth, devices, invite, policy, redeem};
use shimgate_registry::{Invitee, MIN_PASSWORD_CHARS};
use shimgate_wire::identity::check_device_name;

/// The session's CSRF token (the double-submit cookie, for forms sent by
/// people not signed in) that the forms are checked against. Some seeds
/// carry it.
const TOKEN: &str = "5e551011c5af0e5e551011c5af0e5e551011c5af0e5e551011c5af0e5e551011";
/// An invitation link's id, as its path gives it.
const LINK_ID: &str = "0123456789abcdef0123456789abcdef";
const VPN_DOMAIN: &str = shimgate_wire::control::DEFAULT_VPN_DOMAIN;

/// The body as `T`: `serde_urlencoded::from_bytes`, and the same body sent
/// to axum's `Form<T>` extractor (what the handler gets), which must agree.
fn decode<T, V>(body: &[u8], view: impl Fn(&T) -> V) -> Option<T>
where
    T: DeserializeOwned,
    V: PartialEq + Debug,
{
    let ours = serde_urlencoded::from_bytes::<T>(body).ok();
    let req = Request::post("/")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body.to_vec()))
        .expect("request");
    let axum = runtime()
        .block_on(axum::Form::<T>::from_request(req, &()))
        .ok()
        .map(|axum::Form(f)| f);
    assert_eq!(
        ours.as_ref().map(&view),
        axum.as_ref().map(&view),
        "serde_urlencoded and axum's Form decode {:?} differently",
        String::from_utf8_lossy(body)
    );
    ours
}

/// A form's CSRF (or double-submit) token passes only if it is the one.
fn check_token(posted: &str) {
    assert_eq!(auth::same(posted, TOKEN), posted == TOKEN, "{posted:?}");
    assert_eq!(auth::same(posted, posted), !posted.is_empty(), "{posted:?}");
}

/// What `limits` accepts is within bounds and reads back the same.
fn check_limits(uses: u32, expires: &str) {
    match invite::limits(uses, expires) {
        Ok((n, secs)) => {
            assert_eq!(n, uses);
            assert!((1..=invite::MAX_USES).contains(&n), "{n}");
            assert!((1..=invite::MAX_LIFETIME).contains(&secs), "{expires:?}");
            // The expiry is `now + secs`: no overflow for any clock.
            assert!(shimgate_host::clock::now().checked_add(secs).is_some());
            let again = invite::limits(n, &format!("{secs}s"))
                .map_err(|f| f.message)
                .expect("seconds read back");
            assert_eq!(again, (n, secs), "{expires:?}");
        }
        Err(f) => {
            assert_eq!(f.status, axum::http::StatusCode::BAD_REQUEST);
            assert!(!f.message.is_empty());
        }
    }
}

fn trimmed(s: &str) -> bool {
    s.trim() == s
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 12 {
        // POST /login
        0 => {
            let Some(f) = decode(body, |f: &auth::LoginForm| {
                (f.name.clone(), f.password.clone(), f.form.clone())
            }) else {
                return;
            };
            check_token(&f.form);
            for name in [f.name.as_str(), f.name.trim()] {
                let shown = auth::echoed_name(name);
                assert!(shown.chars().count() <= auth::MAX_ECHOED_NAME);
                assert!(name.starts_with(&shown), "{name:?}");
                if name.chars().count() <= auth::MAX_ECHOED_NAME {
                    assert_eq!(shown, name);
                }
            }
        }
        // POST /password
        1 => {
            let Some(f) = decode(body, |f: &auth::PasswordForm| {
                (
                    f.csrf.clone(),
                    f.current.clone(),
                    f.new.clone(),
                    f.repeat.clone(),
                )
            }) else {
                return;
            };
            check_token(&f.csrf);
            let good = f.new == f.repeat
                && f.new.chars().count() >= MIN_PASSWORD_CHARS
                && f.new != f.current;
            assert_eq!(f.check_new().is_ok(), good);
        }
        // POST /logout, /devices/{name}/revoke|enable|approve,
        // /invitations/{id}/cancel, /tokens/{id}/cancel,
        // /policy/{id}/remove, /api-tokens/{id}/revoke
        2 => {
            let Some(f) = decode(body, |f: &auth::CsrfOnly| f.csrf.clone()) else {
                return;
            };
            check_token(&f.csrf);
        }
        // POST /policy
        3 => {
            let Some(f) = decode(body, |f: &policy::RuleForm| {
                (
                    f.csrf.clone(),
                    f.rule.action.clone(),
                    f.rule.to.clone(),
                    f.rule.ports.clone(),
                    f.rule.subject.clone(),
                    f.rule.proto.clone(),
                    f.rule.program.clone(),
                    f.rule.local_user.clone(),
                )
            }) else {
                return;
            };
            check_token(&f.csrf);
            let Ok(rule) = f.rule.to_rule("admin:fuzz") else {
                return;
            };
            let (lo, hi) = rule.ports.bounds();
            assert!(lo >= 1 && lo <= hi, "{rule:?}");
            assert_eq!(rule.created_by, "admin:fuzz");
            // The rule as the policy page shows it, typed in again.
            let shown = policy::RuleInput {
                action: rule.action.to_string(),
                to: rule.dest.to_string(),
                ports: rule.ports.to_string(),
                subject: rule.subject.to_string(),
                proto: rule.proto.to_string(),
                program: rule
                    .program
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                local_user: rule
                    .local_user
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            };
            match shown.to_rule("admin:fuzz") {
                Ok(again) => assert_eq!(again, rule, "shown as {shown:?}"),
                Err(e) => panic!("{rule:?} shown as {shown:?} is refused: {}", e.message),
            }
        }
        // POST /invitations
        4 => {
            let Some(f) = decode(body, |f: &invite::InvitationForm| {
                (
                    f.csrf.clone(),
                    f.kind.clone(),
                    f.name.clone(),
                    f.uses,
                    f.expires.clone(),
                )
            }) else {
                return;
            };
            check_token(&f.csrf);
            match f.invitee() {
                Invitee::Group(g) => {
                    assert_eq!(f.kind, "group");
                    assert_eq!(g, f.name.trim());
                }
                Invitee::User(u) => {
                    assert_ne!(f.kind, "group");
                    assert_eq!(u, f.name.trim());
                }
            }
            check_limits(f.uses, &f.expires);
        }
        // POST /tokens
        5 => {
            let Some(f) = decode(body, |f: &invite::TokenForm| {
                (f.csrf.clone(), f.user.clone(), f.uses, f.expires.clone())
            }) else {
                return;
            };
            check_token(&f.csrf);
            check_limits(f.uses, &f.expires);
        }
        // POST /users
        6 => {
            let Some(f) = decode(body, |f: &devices::UserForm| {
                (f.csrf.clone(), f.name.clone(), f.groups.clone())
            }) else {
                return;
            };
            check_token(&f.csrf);
            let groups = devices::split_groups(&f.groups);
            for g in &groups {
                assert!(!g.is_empty() && trimmed(g) && !g.contains(','), "{g:?}");
            }
            // The audit log records them joined by commas: that reads back.
            assert_eq!(devices::split_groups(&groups.join(",")), groups);
        }
        // POST /users/remove-from-group
        7 => {
            let Some(f) = decode(body, |f: &devices::MembershipForm| {
                (f.csrf.clone(), f.user.clone(), f.group.clone())
            }) else {
                return;
            };
            check_token(&f.csrf);
        }
        // POST /settings/approval
        8 => {
            let Some(f) = decode(body, |f: &devices::ApprovalForm| {
                (f.csrf.clone(), f.require.clone())
            }) else {
                return;
            };
            check_token(&f.csrf);
            assert_eq!(f.on(), f.require == "on");
        }
        // POST /api-tokens
        9 => {
            let Some(f) = decode(body, |f: &api::NewApiTokenForm| {
                (f.csrf.clone(), f.name.clone())
            }) else {
                return;
            };
            check_token(&f.csrf);
        }
        // POST /invite/{id}: the public page, nobody signed in
        10 => {
            let Some(f) = decode(body, |f: &redeem::RedeemForm| {
                (
                    f.s.clone(),
                    f.form.clone(),
                    f.device.clone(),
                    f.user.clone(),
                )
            }) else {
                return;
            };
            check_token(&f.form);
            if let Some((id, secret)) = redeem::parse_link(LINK_ID, &f.s) {
                assert_eq!(hex::encode(id), LINK_ID);
                // Only the one spelling of the secret opens the invitation.
                assert_eq!(hex::encode(secret), f.s.to_ascii_lowercase(), "{:?}", f.s);
            }
            let device = f.device_name();
            if check_device_name(&device).is_ok() {
                assert!(trimmed(&device) && device == device.to_ascii_lowercase());
                assert_eq!(
                    redeem::RedeemForm {
                        s: String::new(),
                        form: String::new(),
                        device: device.clone(),
                        user: String::new(),
                    }
                    .device_name(),
                    device
                );
                // Its VPN name leads back to it.
                let vpn_name = format!("{device}.{VPN_DOMAIN}");
                assert_eq!(
                    shimgate_wire::control::device_in_domain(&vpn_name, VPN_DOMAIN).as_deref(),
                    Some(device.as_str())
                );
            }
        }
        // POST /invite/status: the invitation page polling, nobody signed in
        _ => {
            let Some(f) = decode(body, |f: &redeem::StatusForm| f.key.clone()) else {
                return;
            };
            let watches = redeem::Watches::default();
            let key = watches.add("7e57".into());
            assert_eq!(watches.get(&key).as_deref(), Some("7e57"));
            let found = watches.get(&f.key);
            assert_eq!(found.is_some(), f.key == key, "{:?}", f.key);
        }
    }
});
