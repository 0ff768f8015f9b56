//! Signing in: argon2 passwords (checked by the registry), sessions, CSRF
//! tokens, and sign-in throttling per address and per name. Sessions and
//! throttles live in the registry, so every gateway on it sees the same
//! ones: an admin behind a load balancer stays signed in wherever a request
//! lands, and a guesser gets no more attempts from spreading them.
//!
//! A session is a random 256-bit cookie value; the registry keys it by its
//! SHA-256, so the cookie itself is never stored. Each session has its own
//! CSRF token that every form carries. Pages for people who are not signed
//! in (sign-in, invitation) use a double-submit token instead: a random
//! cookie whose value the form repeats. Both are compared in constant time.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::Form;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use shimgate_host::clock;
use shimgate_registry::{Bucket, ConsoleSession, Registry, SessionLimits};
use subtle::ConstantTimeEq;

use super::Peer;
use super::{Actor, Console, render, see_other};

pub const SESSION_COOKIE: &str = "sg_session";
pub const FORM_COOKIE: &str = "sg_form";
/// A session ends after this long without a request...
const IDLE: Duration = Duration::from_secs(30 * 60);
/// ... and after this long in any case.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
const LIMITS: SessionLimits = SessionLimits {
    idle: IDLE.as_secs() as i64,
    lifetime: LIFETIME.as_secs() as i64,
};

/// A signed-in administrator, as the registry keeps them (`must_change`: signed in with a
/// one-time password, so every page leads to the password form until they choose one). Its
/// `flash` is taken out by [`Sessions::get`].
pub type Session = ConsoleSession;

/// The outcome of an action, shown once on the next page.
#[derive(Clone, Debug)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

/// The sessions, in the registry.
pub struct Sessions {
    registry: Registry,
}

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// What the registry keys a session by: the SHA-256 of its cookie, in hex.
fn key(cookie: &str) -> String {
    hex::encode(Sha256::digest(cookie.as_bytes()))
}

/// The value of cookie `name` in the request, if any.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// True if the token a form or cookie carries (`a`) is the expected one (`b`), compared in
/// constant time; an empty token never matches.
pub fn same(a: &str, b: &str) -> bool {
    !a.is_empty() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Why a session could not be looked at: the registry did not answer.
#[derive(Debug, thiserror::Error)]
#[error("console sessions are in the registry, which did not answer: {0}")]
pub struct SessionsUnavailable(#[from] shimgate_registry::Error);

impl Sessions {
    pub fn new(registry: Registry) -> Sessions {
        Sessions { registry }
    }

    /// Starts a session; returns the cookie value.
    async fn create(&self, admin: &str, must_change: bool) -> Result<String, SessionsUnavailable> {
        let value = random_hex();
        let session = ConsoleSession {
            admin: admin.to_owned(),
            csrf: random_hex(),
            must_change,
            flash: None,
        };
        self.registry
            .create_console_session(&key(&value), &session, clock::now(), LIMITS)
            .await?;
        Ok(value)
    }

    /// The live session the request's cookie names, refreshed; takes its flash message.
    async fn get(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<(Session, Option<Flash>)>, SessionsUnavailable> {
        let Some(cookie) = cookie(headers, SESSION_COOKIE) else {
            return Ok(None);
        };
        let stored = self
            .registry
            .console_session(&key(cookie), clock::now(), LIMITS)
            .await?;
        Ok(stored.map(|mut s| {
            let flash = s.flash.take().map(|(ok, text)| Flash { ok, text });
            (s, flash)
        }))
    }

    async fn set_flash(&self, headers: &HeaderMap, flash: &Flash) {
        if let Some(c) = cookie(headers, SESSION_COOKIE)
            && let Err(e) = self
                .registry
                .set_console_flash(&key(c), flash.ok, &flash.text)
                .await
        {
            tracing::warn!(error = %e, "could not keep the outcome for the next console page");
        }
    }

    /// Ends the browser's session, if any, and starts one for `admin` (a fresh id at every
    /// sign-in: no fixation); returns the cookie value.
    async fn restart(
        &self,
        headers: &HeaderMap,
        admin: &str,
        must_change: bool,
    ) -> Result<String, SessionsUnavailable> {
        self.end(headers).await?;
        self.create(admin, must_change).await
    }

    async fn password_changed(&self, headers: &HeaderMap) -> Result<(), SessionsUnavailable> {
        if let Some(c) = cookie(headers, SESSION_COOKIE) {
            self.registry.console_password_changed(&key(c)).await?;
        }
        Ok(())
    }

    async fn end(&self, headers: &HeaderMap) -> Result<(), SessionsUnavailable> {
        if let Some(c) = cookie(headers, SESSION_COOKIE) {
            self.registry.end_console_session(&key(c)).await?;
        }
        Ok(())
    }
}

/// Sign-in attempts (and current-password checks): per source address and per admin name,
/// counted in the registry.
pub struct Throttle {
    registry: Registry,
}

/// An office behind one address signs in now and then; a guesser wants thousands.
const BY_ADDR: Bucket = Bucket {
    burst: 20.0,
    every_ms: 3_000,
};
const BY_NAME: Bucket = Bucket {
    burst: 5.0,
    every_ms: 30_000,
};

impl Throttle {
    pub fn new(registry: Registry) -> Throttle {
        Throttle { registry }
    }

    /// Whether one more attempt from `addr` for admin `name` may go ahead; both buckets pay.
    /// Refused when the registry does not answer (no attempt goes uncounted).
    async fn allow(&self, addr: IpAddr, name: &str) -> bool {
        let now = clock::now_ms();
        let by_addr = self
            .registry
            .take_attempt(&format!("addr:{addr}"), BY_ADDR, now)
            .await;
        let by_name = self
            .registry
            .take_attempt(&format!("name:{}", echoed_name(name)), BY_NAME, now)
            .await;
        match (by_addr, by_name) {
            (Ok(a), Ok(n)) => a && n,
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "sign-in throttle unavailable: refusing the attempt");
                false
            }
        }
    }
}

/// The page for when the registry holding sessions does not answer.
fn unavailable(e: &SessionsUnavailable) -> Response {
    tracing::error!(error = %e, "console session lookup failed");
    super::error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "The registry is unavailable, so sessions cannot be checked; try again shortly.",
    )
}

/// What every signed-in page shows in its header.
pub struct Nav {
    pub admin: String,
    pub csrf: String,
    pub flash: Option<Flash>,
}

impl Console {
    /// The signed-in admin of a page request, or where to send the browser instead.
    #[allow(clippy::result_large_err)] // the error is the response to send, on a cold path
    pub(crate) async fn page_session(&self, headers: &HeaderMap) -> Result<Nav, Response> {
        match self.sessions.get(headers).await {
            Ok(Some((s, _))) if s.must_change => Err(see_other("/password")),
            Ok(Some((s, flash))) => Ok(Nav {
                admin: s.admin,
                csrf: s.csrf,
                flash,
            }),
            Ok(None) => Err(see_other("/login")),
            Err(e) => Err(unavailable(&e)),
        }
    }

    /// Shows `text` on the next page and sends the browser to `to`.
    pub(crate) async fn done(
        &self,
        headers: &HeaderMap,
        to: &str,
        result: Result<String, String>,
    ) -> Response {
        let flash = match result {
            Ok(text) => Flash { ok: true, text },
            Err(text) => Flash { ok: false, text },
        };
        self.sessions.set_flash(headers, &flash).await;
        see_other(to)
    }

    fn cookie_attrs(&self) -> &'static str {
        if self.secure {
            "; Path=/; HttpOnly; SameSite=Strict; Secure"
        } else {
            "; Path=/; HttpOnly; SameSite=Strict"
        }
    }

    /// The double-submit token of a page for people not signed in: the one the browser
    /// already has, or a new one (returned with the cookie to set).
    pub(crate) fn form_token(&self, headers: &HeaderMap) -> (String, Option<HeaderValue>) {
        if let Some(t) = cookie(headers, FORM_COOKIE)
            .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return (t.to_owned(), None);
        }
        let t = random_hex();
        let set = HeaderValue::from_str(&format!("{FORM_COOKIE}={t}{}", self.cookie_attrs())).ok();
        (t, set)
    }

    /// True if the posted double-submit token matches the browser's cookie.
    pub(crate) fn form_token_ok(&self, headers: &HeaderMap, posted: &str) -> bool {
        cookie(headers, FORM_COOKIE).is_some_and(|c| same(posted, c))
    }
}

/// A form that carries its session's CSRF token, for [`SignedIn`].
pub trait CsrfForm {
    /// The token the form posted.
    fn csrf(&self) -> &str;
    /// Whether a session signed in with a one-time password may send it (only the password
    /// form: every other one leads to `/password` until then).
    const BEFORE_PASSWORD_CHANGE: bool = false;
}

/// The extractor of every form a signed-in admin posts: the form `F` (decoded as axum's
/// `Form` does, rejected as it rejects), the session the cookie names and the admin as the
/// audit log names them. A browser that is not signed in is sent to `/login`, one whose
/// one-time password is still to be changed to `/password` (unless `F` is the password
/// form), and a form whose CSRF token is not the session's gets the 403 page.
pub struct SignedIn<F> {
    pub who: Actor,
    pub session: Session,
    pub form: F,
}

impl<F> FromRequest<Arc<Console>> for SignedIn<F>
where
    F: CsrfForm + DeserializeOwned + Send,
{
    type Rejection = Response;

    async fn from_request(req: Request, c: &Arc<Console>) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let addr = super::peer_addr(&mut parts, c).await?;
        let headers = parts.headers.clone();
        let Form(form) = Form::<F>::from_request(Request::from_parts(parts, body), c)
            .await
            .map_err(IntoResponse::into_response)?;
        let session = match c.sessions.get(&headers).await {
            Ok(Some((session, _))) => session,
            Ok(None) => return Err(see_other("/login")),
            Err(e) => return Err(unavailable(&e)),
        };
        if session.must_change && !F::BEFORE_PASSWORD_CHANGE {
            return Err(see_other("/password"));
        }
        if !same(form.csrf(), &session.csrf) {
            tracing::info!(%addr, admin = %session.admin, "form refused: CSRF token missing or wrong");
            return Err(super::error_page(
                StatusCode::FORBIDDEN,
                "This form was not sent from a current console page (CSRF check failed). Go back, reload the page and try again.",
            ));
        }
        Ok(SignedIn {
            who: Actor::admin(&session.admin, addr),
            session,
            form,
        })
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    title: &'static str,
    nav: Option<Nav>,
    form: String,
    name: String,
    error: Option<String>,
}

fn with_cookie(mut resp: Response, set: Option<HeaderValue>) -> Response {
    if let Some(v) = set {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

pub async fn home(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match c.sessions.get(&headers).await {
        Ok(Some(_)) => see_other("/devices"),
        Ok(None) => see_other("/login"),
        Err(e) => unavailable(&e),
    }
}

pub async fn login_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let (form, set) = c.form_token(&headers);
    let page = LoginPage {
        title: "Sign in",
        nav: None,
        form,
        name: String::new(),
        error: None,
    };
    with_cookie(render(&page), set)
}

/// The sign-in form (`POST /login`).
#[derive(serde::Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub password: String,
    /// The double-submit token, compared with the `sg_form` cookie.
    #[serde(default)]
    pub form: String,
}

/// Longest part of a typed admin name that sign-in keeps (shown back, throttle key, audit).
pub const MAX_ECHOED_NAME: usize = 64;

/// The first [`MAX_ECHOED_NAME`] characters of a name typed into the sign-in form: what the
/// page shows back, what the per-name throttle is keyed on and what the audit log names, so
/// that a huge name never becomes a huge page, map entry or log line.
pub fn echoed_name(name: &str) -> String {
    name.chars().take(MAX_ECHOED_NAME).collect()
}

pub async fn login(
    State(c): State<Arc<Console>>,
    ConnectInfo(Peer(addr)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let (form, set) = c.form_token(&headers);
    let again = |status: StatusCode, error: &str| {
        let page = LoginPage {
            title: "Sign in",
            nav: None,
            form: form.clone(),
            name: echoed_name(&f.name),
            error: Some(error.to_owned()),
        };
        with_cookie((status, render(&page)).into_response(), set.clone())
    };
    if !c.form_token_ok(&headers, &f.form) {
        return again(
            StatusCode::FORBIDDEN,
            "The sign-in form had expired (CSRF check failed): please try again.",
        );
    }
    let name = f.name.trim();
    if !c.throttle.allow(addr.ip(), name).await {
        tracing::warn!(%addr, "sign-in attempts throttled");
        metrics::counter!("shimgate_console_logins_total", "result" => "throttled").increment(1);
        return again(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-in attempts: wait a minute and try again.",
        );
    }
    let admin = match c.gw.registry.check_admin_password(name, &f.password).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "checking a console password failed");
            return again(
                StatusCode::SERVICE_UNAVAILABLE,
                "The registry is unavailable; try again shortly.",
            );
        }
    };
    let actor = Actor::admin(&echoed_name(name), addr);
    let Some(admin) = admin else {
        metrics::counter!("shimgate_console_logins_total", "result" => "refused").increment(1);
        c.audit(&actor, "console.login_failed", "", String::new())
            .await;
        return again(StatusCode::UNAUTHORIZED, "Wrong name or password.");
    };
    metrics::counter!("shimgate_console_logins_total", "result" => "ok").increment(1);
    c.audit(&actor, "console.login", &admin.name, String::new())
        .await;
    let value = match c
        .sessions
        .restart(&headers, &admin.name, admin.one_time)
        .await
    {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "starting a console session failed");
            return again(
                StatusCode::SERVICE_UNAVAILABLE,
                "The registry is unavailable; try again shortly.",
            );
        }
    };
    let mut resp = see_other(if admin.one_time {
        "/password"
    } else {
        "/devices"
    });
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}{}; Max-Age={}",
        c.cookie_attrs(),
        LIFETIME.as_secs()
    )) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Template)]
#[template(path = "password.html")]
struct PasswordPage {
    title: &'static str,
    nav: Option<Nav>,
    forced: bool,
    error: Option<String>,
}

fn password_view(
    s: Session,
    flash: Option<Flash>,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let page = PasswordPage {
        title: "Change your password",
        forced: s.must_change,
        nav: Some(Nav {
            admin: s.admin,
            csrf: s.csrf,
            flash,
        }),
        error,
    };
    (status, render(&page)).into_response()
}

pub async fn password_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match c.sessions.get(&headers).await {
        Ok(Some((s, flash))) => password_view(s, flash, StatusCode::OK, None),
        Ok(None) => see_other("/login"),
        Err(e) => unavailable(&e),
    }
}

/// The change-password form (`POST /password`).
#[derive(serde::Deserialize)]
pub struct PasswordForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub current: String,
    #[serde(default)]
    pub new: String,
    #[serde(default)]
    pub repeat: String,
}

impl CsrfForm for PasswordForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
    const BEFORE_PASSWORD_CHANGE: bool = true;
}

impl PasswordForm {
    /// The checks on the new password made before the current one is checked (no database):
    /// typed twice the same, at least [`shimgate_registry::MIN_PASSWORD_CHARS`] characters,
    /// not the current one. The error is the sentence to show.
    pub fn check_new(&self) -> Result<(), String> {
        if self.new != self.repeat {
            return Err("The new password and its repetition differ.".into());
        }
        if self.new.chars().count() < shimgate_registry::MIN_PASSWORD_CHARS {
            return Err(format!(
                "The new password must be at least {} characters.",
                shimgate_registry::MIN_PASSWORD_CHARS
            ));
        }
        if self.new == self.current {
            return Err("Choose a password other than the current one.".into());
        }
        Ok(())
    }
}

pub async fn change_password(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    SignedIn {
        who,
        session: s,
        form: f,
    }: SignedIn<PasswordForm>,
) -> Response {
    let again = |s: Session, status: StatusCode, error: &str| {
        password_view(s, None, status, Some(error.to_owned()))
    };
    if let Err(msg) = f.check_new() {
        return again(s, StatusCode::BAD_REQUEST, &msg);
    }
    // The current password is checked next: throttled like a sign-in.
    if !c.throttle.allow(who.addr.ip(), &s.admin).await {
        return again(
            s,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts: wait a minute and try again.",
        );
    }
    match c
        .gw
        .registry
        .check_admin_password(&s.admin, &f.current)
        .await
    {
        Ok(Some(_)) => {}
        Ok(None) => {
            return again(
                s,
                StatusCode::UNAUTHORIZED,
                "The current password is wrong.",
            );
        }
        Err(e) => {
            let fail = super::Failure::from(e);
            return again(s, fail.status, &fail.message);
        }
    }
    if let Err(e) =
        c.gw.registry
            .set_admin_password(&s.admin, &f.new, false)
            .await
    {
        let fail = super::Failure::from(e);
        return again(s, fail.status, &fail.message);
    }
    c.audit(&who, "admin.password", &s.admin, String::new())
        .await;
    if let Err(e) = c.sessions.password_changed(&headers).await {
        return unavailable(&e);
    }
    c.done(&headers, "/devices", Ok("Password changed.".to_owned()))
        .await
}

/// The form of a button that only acts (sign out, revoke, cancel, remove): its CSRF token.
#[derive(serde::Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    pub csrf: String,
}

/// The forms an admin may send only once they have chosen a password (all but the password
/// form), each with its token in `csrf`.
macro_rules! csrf_forms {
    ($($form:ty),* $(,)?) => {$(
        impl CsrfForm for $form {
            fn csrf(&self) -> &str {
                &self.csrf
            }
        }
    )*};
}

csrf_forms!(
    CsrfOnly,
    super::devices::ApprovalForm,
    super::devices::MembershipForm,
    super::devices::UserForm,
    super::invite::InvitationForm,
    super::invite::TokenForm,
    super::policy::RuleForm,
    super::api::NewApiTokenForm,
);

pub async fn logout(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    SignedIn { who, .. }: SignedIn<CsrfOnly>,
) -> Response {
    c.audit(&who, "console.logout", "", String::new()).await;
    if let Err(e) = c.sessions.end(&headers).await {
        return unavailable(&e);
    }
    let mut resp = see_other("/login");
    if let Ok(v) =
        HeaderValue::from_str(&format!("{SESSION_COOKIE}=; Max-Age=0{}", c.cookie_attrs()))
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// A password nobody has to type twice: 20 characters from a 57-letter alphabet without
/// look-alikes (about 116 bits).
pub fn one_time_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    use rand::Rng;
    let mut rng = rand::rng();
    (0..20)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; sg_session=abc; b=2"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("sg_form=def"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, FORM_COOKIE), Some("def"));
        assert_eq!(cookie(&h, "missing"), None);
        assert!(same("abc", "abc"));
        assert!(!same("", ""), "an empty token never matches");
        assert!(!same("abc", "abd"));
    }
}
