//! The web console: server-rendered administration pages, the public invitation page, the
//! `/api/v1` JSON API, `/metrics`, `/healthz` and `/readyz`, served by axum next to the
//! gateway (same process, same registry and cache).
//!
//! - [`auth`]: administrators' sessions (in the registry: a restart signs nobody out, and
//!   several gateways behind one address share them), CSRF tokens, sign-in throttling (in the
//!   registry too), and [`auth::SignedIn`], the extractor every admin form goes through.
//! - [`devices`]: devices and users; [`invite`]: invitations and enrollment tokens, the admin
//!   side (signed in); [`redeem`]: the public invitation page and its polling (not signed in);
//!   [`policy`]: rules; [`audit`]: the audit log.
//! - [`sessions`]: open tunnels and recent peer sessions.
//! - [`api`]: `/api/v1` with bearer API tokens (the [`api::ApiClient`] extractor), and the API
//!   tokens page.
//! - [`metrics`]: Prometheus metrics and health checks.
//!
//! Every response carries a strict Content-Security-Policy (scripts and styles only from
//! `/static/`), and every state-changing form a CSRF token.

pub mod api;
pub mod audit;
pub mod auth;
pub mod devices;
pub mod invite;
pub mod metrics;
pub mod policy;
pub mod redeem;
pub mod sessions;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use shimgate_host::clock;
use shimgate_registry::{Error as RegistryError, NewAudit};
use tokio_util::sync::CancellationToken;

use crate::setup::Gateway;

/// Where the console listens unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// Largest request body any console route accepts.
const MAX_BODY: usize = 64 * 1024;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// How the console is served.
#[derive(Debug, Clone)]
pub struct Options {
    pub addr: SocketAddr,
    /// The operator's certificate and key (PEM files); `None` serves plain HTTP.
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Plain HTTP on a non-loopback address, knowingly.
    pub insecure_http: bool,
    /// The URL people use to reach the console (for invitation links); default: the scheme
    /// and the address it listens on.
    pub public_url: Option<String>,
}

/// Why the console could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "the console would serve plain HTTP on {0}, which is not a loopback address: give --console-tls-cert and --console-tls-key, or --insecure-http to accept that passwords cross the network in clear"
    )]
    NeedsTls(SocketAddr),
    #[error(
        "cannot listen on {addr} for the web console ({source}): choose another address with --console ADDR, or --console off"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("console TLS: {0}")]
    Tls(String),
}

/// Everything the console's handlers share.
pub struct Console {
    pub gw: Arc<Gateway>,
    pub sessions: auth::Sessions,
    pub throttle: auth::Throttle,
    pub watches: redeem::Watches,
    /// Cookies get `Secure` when served over TLS.
    pub secure: bool,
    /// `http(s)://host:port`, for the links the console hands out.
    pub base_url: String,
}

/// The address the console runs on, once it is listening.
pub struct Running {
    pub url: String,
}

/// Binds the console and serves it until `stop` fires.
pub async fn start(
    gw: Arc<Gateway>,
    opts: &Options,
    stop: CancellationToken,
) -> Result<Running, StartError> {
    if opts.tls.is_none() && !opts.addr.ip().is_loopback() {
        if !opts.insecure_http {
            return Err(StartError::NeedsTls(opts.addr));
        }
        tracing::warn!(addr = %opts.addr, "the console serves plain HTTP on a non-loopback address (--insecure-http): passwords and session cookies cross the network unencrypted");
    }
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: opts.addr,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| StartError::Bind {
        addr: opts.addr,
        source,
    })?;
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let url = opts
        .public_url
        .as_deref()
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| format!("{scheme}://{local}"));
    self::metrics::install();
    let console = Arc::new(Console {
        sessions: auth::Sessions::new(gw.registry.clone()),
        throttle: auth::Throttle::new(gw.registry.clone()),
        gw,
        watches: redeem::Watches::default(),
        secure: opts.tls.is_some(),
        base_url: url.clone(),
    });
    let app = router(console, opts.tls.is_some()).into_make_service_with_connect_info::<Peer>();
    let quit = stop.clone();
    match &opts.tls {
        None => {
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(quit.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "the console stopped");
                }
            });
        }
        Some((cert, key)) => {
            let tls = tls::Listener::new(listener, local, cert, key, stop.clone())
                .map_err(|e| StartError::Tls(e.to_string()))?;
            tokio::spawn(async move {
                if let Err(e) = axum::serve(tls, app)
                    .with_graceful_shutdown(quit.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "the console stopped");
                }
            });
        }
    }
    tracing::info!(%url, "console listening");
    Ok(Running { url })
}

fn router(console: Arc<Console>, tls: bool) -> Router {
    Router::new()
        .route("/", get(auth::home))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route(
            "/password",
            get(auth::password_page).post(auth::change_password),
        )
        .route("/devices", get(devices::page))
        .route("/devices/state", get(devices::states))
        .route("/sessions", get(sessions::page))
        .route("/devices/{name}/revoke", post(devices::revoke_form))
        .route("/devices/{name}/enable", post(devices::enable_form))
        .route("/devices/{name}/approve", post(devices::approve_form))
        .route("/settings/approval", post(devices::approval_form))
        .route(
            "/users",
            get(devices::users_page).post(devices::add_user_form),
        )
        .route(
            "/users/remove-from-group",
            post(devices::remove_from_group_form),
        )
        .route(
            "/invitations",
            get(invite::admin_page).post(invite::create_invitation_form),
        )
        .route(
            "/invitations/{id}/cancel",
            post(invite::cancel_invitation_form),
        )
        .route("/tokens", post(invite::create_token_form))
        .route("/tokens/{id}/cancel", post(invite::cancel_token_form))
        .route("/invite/status", post(redeem::status))
        .route(
            "/invite/{id}",
            get(redeem::public_page).post(redeem::redeem),
        )
        .route("/policy", get(policy::page).post(policy::add_form))
        .route("/policy/{id}/remove", post(policy::remove_form))
        .route("/audit", get(audit::page))
        .route(
            "/api-tokens",
            get(api::tokens_page).post(api::create_token_form),
        )
        .route("/api-tokens/{id}/revoke", post(api::revoke_token_form))
        .route("/static/console.css", get(css))
        .route("/static/console.js", get(js))
        .route("/healthz", get(metrics::healthz))
        .route("/readyz", get(metrics::readyz))
        .route("/metrics", get(metrics::render))
        .nest("/api/v1", api::router())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(move |req, next| {
            security_headers(tls, req, next)
        }))
        .with_state(console)
}

async fn security_headers(tls: bool, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Invitation links carry their secret: never pass the URL on.
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    if tls {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

async fn css() -> Response {
    static_file("text/css", include_str!("../../../web/static/console.css"))
}

async fn js() -> Response {
    static_file(
        "text/javascript",
        include_str!("../../../web/static/console.js"),
    )
}

fn static_file(mime: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn not_found() -> Response {
    error_page(StatusCode::NOT_FOUND, "There is no such page.")
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
    nav: Option<auth::Nav>,
}

/// A plain page saying what went wrong, with a way back.
pub(crate) fn error_page(status: StatusCode, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    (
        status,
        render(&ErrorPage {
            title,
            message,
            nav: None,
        }),
    )
        .into_response()
}

/// Renders a template, or a bare 500 if it fails (it cannot, short of a bug).
pub(crate) fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a console page failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

pub(crate) fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// An action that could not be done: the status and a sentence for the person (or client).
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
}

impl Failure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }
}

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Failure {
        match e {
            RegistryError::Invalid { .. } => Failure::new(StatusCode::BAD_REQUEST, e.to_string()),
            RegistryError::NotFound { .. } => Failure::new(StatusCode::NOT_FOUND, e.to_string()),
            RegistryError::Conflict(_) => Failure::new(StatusCode::CONFLICT, e.to_string()),
            other => {
                tracing::error!(error = %other, "registry call from the console failed");
                Failure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the registry is unavailable; try again shortly",
                )
            }
        }
    }
}

/// The client's address, for handlers (`ConnectInfo<Peer>`), over plain TCP or TLS.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Peer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Peer {
        Peer(*s.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tls::Listener>>
    for Peer
{
    fn connect_info(s: axum::serve::IncomingStream<'_, tls::Listener>) -> Peer {
        Peer(*s.remote_addr())
    }
}

/// The client's address ([`Peer`], as the listener saw it), for extractors that name an
/// [`Actor`]; rejects as `ConnectInfo<Peer>` does.
pub(crate) async fn peer_addr(
    parts: &mut axum::http::request::Parts,
    c: &Arc<Console>,
) -> Result<SocketAddr, Response> {
    use axum::extract::{ConnectInfo, FromRequestParts};
    ConnectInfo::<Peer>::from_request_parts(parts, c)
        .await
        .map(|ConnectInfo(Peer(addr))| addr)
        .map_err(IntoResponse::into_response)
}

/// Who does an admin action, for the audit log: the signed-in admin of a form
/// ([`auth::SignedIn`]) or the API client of a call ([`api::ApiClient`]).
#[derive(Debug, Clone)]
pub struct Actor {
    /// `admin:NAME` or `api:TOKEN NAME`.
    pub name: String,
    pub addr: SocketAddr,
}

impl Actor {
    /// The admin called `name`, from `addr`.
    pub fn admin(name: &str, addr: SocketAddr) -> Actor {
        Actor {
            name: format!("admin:{name}"),
            addr,
        }
    }
}

impl Console {
    /// Reloads this gateway's cached view after a change made here, so that a revocation or
    /// a rule takes effect before the response (other gateways follow by notification).
    pub(crate) async fn refresh_cache(&self) {
        if let Err(e) = self.gw.cache.reload(&self.gw.registry).await {
            tracing::warn!(error = %e, "reloading the cache after a console change failed; the refresh task will retry");
        }
    }

    /// Appends an audit entry; a failure is logged, not fatal to the action already done.
    pub(crate) async fn audit(&self, who: &Actor, action: &str, target: &str, detail: String) {
        let entry = NewAudit {
            at: clock::now(),
            actor: who.name.clone(),
            action: action.into(),
            target: target.into(),
            source_addr: Some(who.addr.to_string()),
            detail,
            gateway: None,
        };
        self.gw.audit_now(entry).await;
    }
}

/// `2026-11-29 07:00 UTC`-style text for a unix time; `-` for none.
pub(crate) fn when(t: Option<i64>) -> String {
    t.map(clock::show).unwrap_or_else(|| "-".into())
}
