//! Devices (online state, last seen, certificate expiry, revoke and re-enable) and users.

use std::sync::Arc;

use askama::Template;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use shimgate_host::clock;
use shimgate_registry::{Device, DeviceStatus, UserRow};

use super::auth::{CsrfOnly, Nav, SignedIn};
use super::{Actor, Console, Failure, render, when};

/// A device as the console and the API show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceView {
    pub name: String,
    pub user: String,
    pub vpn_ip: String,
    pub status: DeviceStatus,
    pub online: bool,
    pub created_at: i64,
    pub last_seen: Option<i64>,
    /// The gateway it last connected to (several may share the registry).
    pub gateway: Option<String>,
    pub cert_not_after: Option<i64>,
    /// Ended peer sessions this device took part in, by path.
    pub peer_paths: crate::activity::PathCounts,
}

impl Console {
    pub(crate) async fn devices(&self) -> Result<Vec<DeviceView>, Failure> {
        let online = self.gw.cache.online_devices();
        Ok(self
            .gw
            .registry
            .list_devices()
            .await?
            .into_iter()
            .map(|d| DeviceView {
                online: online.contains(&d.device.id),
                peer_paths: self.gw.broker.log.counts(&d.device.name),
                name: d.device.name,
                user: d.device.user_name,
                vpn_ip: d.device.vpn_ip.to_string(),
                status: d.device.status,
                created_at: d.device.created_at,
                last_seen: d.device.last_seen,
                gateway: d.device.last_gateway,
                cert_not_after: d.cert_not_after,
            })
            .collect())
    }

    pub(crate) async fn revoke_device(&self, who: &Actor, name: &str) -> Result<Device, Failure> {
        let device = self.gw.registry.revoke_device(name, clock::now()).await?;
        self.refresh_cache().await;
        self.audit(who, "device.revoke", &device.name, String::new())
            .await;
        Ok(device)
    }

    pub(crate) async fn reenable_device(&self, who: &Actor, name: &str) -> Result<Device, Failure> {
        let device = self.gw.registry.reenable_device(name, clock::now()).await?;
        self.refresh_cache().await;
        self.audit(who, "device.reenable", &device.name, String::new())
            .await;
        Ok(device)
    }

    pub(crate) async fn approve_device(&self, who: &Actor, name: &str) -> Result<Device, Failure> {
        let device = self.gw.registry.approve_device(name).await?;
        self.refresh_cache().await;
        self.audit(who, "device.approve", &device.name, String::new())
            .await;
        Ok(device)
    }

    pub(crate) async fn set_require_approval(&self, who: &Actor, on: bool) -> Result<(), Failure> {
        self.gw.registry.set_require_approval(on).await?;
        self.audit(
            who,
            "settings.require_approval",
            if on { "on" } else { "off" },
            String::new(),
        )
        .await;
        Ok(())
    }

    pub(crate) async fn users(&self) -> Result<Vec<UserRow>, Failure> {
        Ok(self.gw.registry.list_users().await?)
    }

    /// Creates the user if missing and puts them in `groups`.
    pub(crate) async fn add_user(
        &self,
        who: &Actor,
        name: &str,
        groups: &[String],
    ) -> Result<(), Failure> {
        self.gw.registry.ensure_user(name).await?;
        for g in groups {
            self.gw.registry.add_to_group(name, g).await?;
        }
        self.refresh_cache().await;
        self.audit(
            who,
            "user.add",
            name,
            format!("groups={}", groups.join(",")),
        )
        .await;
        Ok(())
    }
}

struct DeviceLine {
    d: DeviceView,
    last_seen: String,
    gateway: String,
    cert_expires: String,
    revoked: bool,
    pending: bool,
}

#[derive(Template)]
#[template(path = "devices.html")]
struct DevicesPage {
    title: &'static str,
    nav: Option<Nav>,
    devices: Vec<DeviceLine>,
    require_approval: bool,
}

pub async fn page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let nav = match c.page_session(&headers).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let (devices, require_approval) =
        match (c.devices().await, c.gw.registry.require_approval().await) {
            (Ok(d), Ok(a)) => (d, a),
            (Err(f), _) => return super::error_page(f.status, &f.message),
            (_, Err(e)) => {
                let f = Failure::from(e);
                return super::error_page(f.status, &f.message);
            }
        };
    render(&DevicesPage {
        title: "Devices",
        nav: Some(nav),
        devices: devices
            .into_iter()
            .map(|d| DeviceLine {
                last_seen: when(d.last_seen),
                gateway: gateway_of(&d),
                cert_expires: when(d.cert_not_after),
                revoked: d.status == DeviceStatus::Revoked,
                pending: d.status == DeviceStatus::Pending,
                d,
            })
            .collect(),
        require_approval,
    })
}

/// A device's state as the devices page shows it, for its live refresh.
#[derive(serde::Serialize)]
pub struct DeviceState {
    name: String,
    state: &'static str,
    last_seen: String,
    gateway: String,
}

/// The gateway a device last connected to, as the page shows it.
fn gateway_of(d: &DeviceView) -> String {
    d.gateway.clone().unwrap_or_else(|| "-".into())
}

/// `GET /devices/state`: every device's state, for the signed-in devices page to poll.
pub async fn states(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if c.page_session(&headers).await.is_err() {
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({ "error": "not signed in" })),
        )
            .into_response();
    }
    match c.devices().await {
        Ok(devices) => Json(
            devices
                .into_iter()
                .map(|d| DeviceState {
                    state: match (d.status, d.online) {
                        (DeviceStatus::Revoked, _) => "revoked",
                        (DeviceStatus::Pending, _) => "awaiting approval",
                        (DeviceStatus::Active, true) => "online",
                        (DeviceStatus::Active, false) => "offline",
                    },
                    last_seen: when(d.last_seen),
                    gateway: gateway_of(&d),
                    name: d.name,
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(f) => (f.status, Json(serde_json::json!({ "error": f.message }))).into_response(),
    }
}

pub async fn revoke_form(
    State(c): State<Arc<Console>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    SignedIn { who, .. }: SignedIn<CsrfOnly>,
) -> Response {
    let result = c
        .revoke_device(&who, &name)
        .await
        .map(|d| {
            format!(
                "Device {} revoked: its connections are being closed.",
                d.name
            )
        })
        .map_err(|f| f.message);
    c.done(&headers, "/devices", result).await
}

pub async fn enable_form(
    State(c): State<Arc<Console>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    SignedIn { who, .. }: SignedIn<CsrfOnly>,
) -> Response {
    let result = c
        .reenable_device(&who, &name)
        .await
        .map(|d| format!("Device {} may connect again.", d.name))
        .map_err(|f| f.message);
    c.done(&headers, "/devices", result).await
}

pub async fn approve_form(
    State(c): State<Arc<Console>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    SignedIn { who, .. }: SignedIn<CsrfOnly>,
) -> Response {
    let result = c
        .approve_device(&who, &name)
        .await
        .map(|d| format!("Device {} approved: it may connect.", d.name))
        .map_err(|f| f.message);
    c.done(&headers, "/devices", result).await
}

/// The devices page's approval switch (`POST /settings/approval`).
#[derive(serde::Deserialize)]
pub struct ApprovalForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// `on` or `off`.
    #[serde(default)]
    pub require: String,
}

impl ApprovalForm {
    /// Whether new devices are to wait for approval: exactly `on`; anything else is off.
    pub fn on(&self) -> bool {
        self.require == "on"
    }
}

pub async fn approval_form(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    SignedIn { who, form: f, .. }: SignedIn<ApprovalForm>,
) -> Response {
    let on = f.on();
    let result = c
        .set_require_approval(&who, on)
        .await
        .map(|()| {
            if on {
                "New devices now wait for an admin's approval.".to_owned()
            } else {
                "New devices may connect as soon as they enroll.".to_owned()
            }
        })
        .map_err(|f| f.message);
    c.done(&headers, "/devices", result).await
}

impl Console {
    /// Takes `user` out of `group`.
    pub(crate) async fn remove_from_group(
        &self,
        who: &Actor,
        user: &str,
        group: &str,
    ) -> Result<(), Failure> {
        if !self.gw.registry.remove_from_group(user, group).await? {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                format!("{user} is not in group {group}"),
            ));
        }
        self.refresh_cache().await;
        self.audit(who, "user.group_remove", user, format!("group={group}"))
            .await;
        Ok(())
    }
}

/// The users page's "remove from group" form (`POST /users/remove-from-group`).
#[derive(serde::Deserialize)]
pub struct MembershipForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub group: String,
}

pub async fn remove_from_group_form(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    SignedIn { who, form: f, .. }: SignedIn<MembershipForm>,
) -> Response {
    let (user, group) = (f.user.trim(), f.group.trim());
    let result = c
        .remove_from_group(&who, user, group)
        .await
        .map(|()| format!("{user} removed from {group}."))
        .map_err(|f| f.message);
    c.done(&headers, "/users", result).await
}

struct UserLine {
    name: String,
    groups: String,
    created: String,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    title: &'static str,
    nav: Option<Nav>,
    users: Vec<UserLine>,
}

pub async fn users_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let nav = match c.page_session(&headers).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let users = match c.users().await {
        Ok(u) => u,
        Err(f) => return super::error_page(f.status, &f.message),
    };
    render(&UsersPage {
        title: "Users and groups",
        nav: Some(nav),
        users: users
            .into_iter()
            .map(|u| UserLine {
                name: u.user.name,
                groups: u.groups.join(", "),
                created: clock::show(u.user.created_at),
            })
            .collect(),
    })
}

/// The users page's "add a user" form (`POST /users`).
#[derive(serde::Deserialize)]
pub struct UserForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub name: String,
    /// Comma-separated.
    #[serde(default)]
    pub groups: String,
}

/// The group names of the "add a user" form's comma-separated list, trimmed, empty ones
/// dropped: `"a, b,,c"` → `["a", "b", "c"]`.
pub fn split_groups(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect()
}

pub async fn add_user_form(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    SignedIn { who, form: f, .. }: SignedIn<UserForm>,
) -> Response {
    let name = f.name.trim();
    let groups = split_groups(&f.groups);
    let result = c
        .add_user(&who, name, &groups)
        .await
        .map(|()| format!("User {name} saved."))
        .map_err(|f| f.message);
    c.done(&headers, "/users", result).await
}
