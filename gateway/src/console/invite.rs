//! Invitations and enrollment tokens, the admin side. **Reachable only signed in:** every
//! handler here needs an admin session. The page (`GET /invitations`) goes through
//! `page_session` (session cookie, else a redirect to sign in); each form (`POST /invitations`,
//! `/tokens`, `/invitations/{id}/cancel`, `/tokens/{id}/cancel`) goes through
//! [`SignedIn`] (session cookie and the session's CSRF token). The `Console` methods here
//! (create, cancel, list) are also called by `/api/v1` ([`super::api`]), behind an API token.
//!
//! The public side, where the holder of a link redeems it without an account, is
//! [`super::redeem`], with what both sides show (the enrollment code, its QR code): the two
//! files are split along that security line.
use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use shimgate_host::clock;
use shimgate_registry::{InvitationRow, Invitee, NewInvitation, NewToken, TokenRow};

use super::auth::{CsrfOnly, Nav, SignedIn};
use super::redeem::{CodeView, qr_svg};
use super::{Actor, Console, Failure, error_page, render};

/// Longest lifetime of an invitation or enrollment token, in seconds (90 days).
pub const MAX_LIFETIME: i64 = 90 * 86400;
/// Most uses of an invitation or enrollment token.
pub const MAX_USES: u32 = 1000;

/// A form's `1h`/`7d`-style duration, within reason.
fn lifetime(s: &str) -> Result<i64, Failure> {
    let secs = clock::parse_duration(s).map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e))?;
    if secs > MAX_LIFETIME {
        return Err(Failure::new(StatusCode::BAD_REQUEST, "at most 90 days"));
    }
    Ok(secs)
}

fn uses(n: u32) -> Result<u32, Failure> {
    if !(1..=MAX_USES).contains(&n) {
        return Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "uses must be between 1 and 1000",
        ));
    }
    Ok(n)
}

/// The uses and the lifetime (`30m`, `24h`, `7d`) asked for an invitation or an enrollment
/// token, checked (no database involved): uses 1 to [`MAX_USES`], lifetime 1 s to
/// [`MAX_LIFETIME`]. Returns the uses and the lifetime in seconds.
pub fn limits(n: u32, valid_for: &str) -> Result<(u32, i64), Failure> {
    Ok((uses(n)?, lifetime(valid_for)?))
}

/// What creating an invitation hands back, once.
#[derive(Debug, serde::Serialize)]
pub struct CreatedInvitation {
    pub id: String,
    pub link: String,
    pub expires_at: i64,
}

/// What creating an enrollment token hands back, once.
#[derive(Debug, serde::Serialize)]
pub struct CreatedToken {
    pub id: String,
    pub user: String,
    pub code: String,
    pub command: String,
    pub expires_at: i64,
}

impl Console {
    pub(crate) async fn create_invitation(
        &self,
        who: &Actor,
        invitee: Invitee,
        n: u32,
        valid_for: &str,
    ) -> Result<CreatedInvitation, Failure> {
        let (n, secs) = limits(n, valid_for)?;
        let expires_at = clock::now() + secs;
        let target = match &invitee {
            Invitee::User(u) => format!("user:{u}"),
            Invitee::Group(g) => format!("group:{g}"),
        };
        let inv = self
            .gw
            .registry
            .create_invitation(NewInvitation {
                invitee,
                created_by: who.name.clone(),
                expires_at,
                uses: n,
            })
            .await?;
        self.audit(
            who,
            "invitation.create",
            &target,
            format!("id={} uses={n}", inv.id_hex()),
        )
        .await;
        Ok(CreatedInvitation {
            link: format!(
                "{}/invite/{}?s={}",
                self.base_url,
                inv.id_hex(),
                inv.secret_hex()
            ),
            id: inv.id_hex(),
            expires_at,
        })
    }

    pub(crate) async fn cancel_invitation(&self, who: &Actor, id: &str) -> Result<(), Failure> {
        if !self.gw.registry.cancel_invitation(id).await? {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                format!("no open invitation {id}"),
            ));
        }
        self.audit(who, "invitation.cancel", id, String::new())
            .await;
        Ok(())
    }

    pub(crate) async fn invitations(&self) -> Result<Vec<InvitationRow>, Failure> {
        Ok(self.gw.registry.list_invitations(clock::now()).await?)
    }

    pub(crate) async fn create_token(
        &self,
        who: &Actor,
        user: &str,
        n: u32,
        valid_for: &str,
    ) -> Result<CreatedToken, Failure> {
        let (n, secs) = limits(n, valid_for)?;
        let expires_at = clock::now() + secs;
        if self.gw.registry.user_by_name(user).await?.is_none() {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                format!("no user {user}: add the user first"),
            ));
        }
        let t = self
            .gw
            .registry
            .create_token(NewToken {
                user: user.to_owned(),
                created_by: who.name.clone(),
                expires_at,
                uses: n,
            })
            .await?;
        self.audit(
            who,
            "token.create",
            user,
            format!("id={} uses={n}", t.id_hex()),
        )
        .await;
        let code = self.code_for(&t);
        Ok(CreatedToken {
            id: t.id_hex(),
            user: t.user.clone(),
            command: format!("shimgate enroll {code}"),
            code,
            expires_at,
        })
    }

    pub(crate) async fn cancel_token(&self, who: &Actor, id: &str) -> Result<(), Failure> {
        if !self.gw.registry.cancel_token(id).await? {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                format!("no open token {id}"),
            ));
        }
        self.audit(who, "token.cancel", id, String::new()).await;
        Ok(())
    }

    pub(crate) async fn tokens(&self) -> Result<Vec<TokenRow>, Failure> {
        Ok(self.gw.registry.list_tokens(clock::now()).await?)
    }
}

fn state(cancelled: bool, expired: bool, left: u32) -> &'static str {
    if cancelled {
        "cancelled"
    } else if expired {
        "expired"
    } else if left == 0 {
        "used"
    } else {
        "open"
    }
}

struct InvitationLine {
    id: String,
    invitee: String,
    uses: String,
    expires: String,
    state: &'static str,
}

struct TokenLine {
    id: String,
    user: String,
    uses_left: u32,
    expires: String,
    state: &'static str,
}

#[derive(Template)]
#[template(path = "invitations.html")]
struct AdminPage {
    title: &'static str,
    nav: Option<Nav>,
    invitations: Vec<InvitationLine>,
    tokens: Vec<TokenLine>,
    new_link: Option<String>,
    new_code: Option<CodeView>,
}

async fn admin_view(
    c: &Console,
    nav: Nav,
    new_link: Option<String>,
    new_code: Option<CodeView>,
) -> Response {
    let (invs, toks) = match (c.invitations().await, c.tokens().await) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(f), _) | (_, Err(f)) => return error_page(f.status, &f.message),
    };
    render(&AdminPage {
        title: "Invitations and enrollment codes",
        nav: Some(nav),
        invitations: invs
            .into_iter()
            .map(|i| InvitationLine {
                state: state(i.cancelled, i.expired, i.uses_left),
                invitee: match i.invitee {
                    Invitee::User(u) => format!("user {u}"),
                    Invitee::Group(g) => format!("group {g}"),
                },
                uses: format!("{} of {} left", i.uses_left, i.max_uses),
                expires: clock::show(i.expires_at),
                id: i.id_hex,
            })
            .collect(),
        tokens: toks
            .into_iter()
            .map(|t| TokenLine {
                state: state(t.cancelled, t.expired, t.uses_left),
                user: t.user,
                uses_left: t.uses_left,
                expires: clock::show(t.expires_at),
                id: t.id_hex,
            })
            .collect(),
        new_link,
        new_code,
    })
}

pub async fn admin_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match c.page_session(&headers).await {
        Ok(nav) => admin_view(&c, nav, None, None).await,
        Err(r) => r,
    }
}

/// The "invite" form of the invitations page (`POST /invitations`).
#[derive(serde::Deserialize)]
pub struct InvitationForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// `user` or `group`.
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default = "one")]
    pub uses: u32,
    #[serde(default = "day")]
    pub expires: String,
}

impl InvitationForm {
    /// Who the invitation is for: the group named if `kind` is `group`, else the user.
    pub fn invitee(&self) -> Invitee {
        let name = self.name.trim().to_owned();
        if self.kind == "group" {
            Invitee::Group(name)
        } else {
            Invitee::User(name)
        }
    }
}

fn one() -> u32 {
    1
}

fn day() -> String {
    "24h".into()
}

pub async fn create_invitation_form(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    SignedIn { who, form: f, .. }: SignedIn<InvitationForm>,
) -> Response {
    match c
        .create_invitation(&who, f.invitee(), f.uses, &f.expires)
        .await
    {
        Ok(inv) => match c.page_session(&headers).await {
            Ok(nav) => admin_view(&c, nav, Some(inv.link), None).await,
            Err(r) => r,
        },
        Err(e) => c.done(&headers, "/invitations", Err(e.message)).await,
    }
}

/// The "enrollment code" form of the invitations page (`POST /tokens`).
#[derive(serde::Deserialize)]
pub struct TokenForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub user: String,
    #[serde(default = "one")]
    pub uses: u32,
    #[serde(default = "day")]
    pub expires: String,
}

pub async fn create_token_form(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    SignedIn { who, form: f, .. }: SignedIn<TokenForm>,
) -> Response {
    match c
        .create_token(&who, f.user.trim(), f.uses, &f.expires)
        .await
    {
        Ok(t) => match c.page_session(&headers).await {
            Ok(nav) => {
                let view = CodeView {
                    qr_svg: qr_svg(&t.code),
                    code: t.code,
                    user: t.user,
                    expires: clock::show(t.expires_at),
                };
                admin_view(&c, nav, None, Some(view)).await
            }
            Err(r) => r,
        },
        Err(e) => c.done(&headers, "/invitations", Err(e.message)).await,
    }
}

pub async fn cancel_invitation_form(
    State(c): State<Arc<Console>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    SignedIn { who, .. }: SignedIn<CsrfOnly>,
) -> Response {
    let result = c
        .cancel_invitation(&who, &id)
        .await
        .map(|()| "Invitation cancelled.".to_owned())
        .map_err(|f| f.message);
    c.done(&headers, "/invitations", result).await
}

pub async fn cancel_token_form(
    State(c): State<Arc<Console>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    SignedIn { who, .. }: SignedIn<CsrfOnly>,
) -> Response {
    let result = c
        .cancel_token(&who, &id)
        .await
        .map(|()| "Enrollment code cancelled.".to_owned())
        .map_err(|f| f.message);
    c.done(&headers, "/invitations", result).await
}
