//! `/api/v1`: every console action as JSON, for clients holding an API token
//! (`Authorization: Bearer sga_...`; 401 without one, with a wrong or a revoked one), the
//! OpenAPI document that describes it, and the console page where admins manage API tokens.

use std::sync::Arc;

use askama::Template;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};
use axum::{Json, Router};
use serde_json::json;
use shimgate_host::clock;
use shimgate_registry::Invitee;

use super::audit::Filter;
use super::auth::{CsrfOnly, Nav, SignedIn};
use super::policy::RuleInput;
use super::{Actor, Console, Failure, render, when};

/// Most audit entries one API call returns.
const MAX_AUDIT: i64 = 500;

/// Every path of the API with its handlers: the router is built from this
/// list, and a test holds the OpenAPI document to it.
fn routes() -> Vec<(&'static str, MethodRouter<Arc<Console>>)> {
    vec![
        ("/openapi.json", get(openapi)),
        ("/devices", get(devices)),
        ("/devices/{name}/revoke", post(revoke)),
        ("/devices/{name}/enable", post(enable)),
        ("/devices/{name}/approve", post(approve)),
        ("/settings", get(settings).put(put_settings)),
        ("/users", get(users).post(add_user)),
        ("/users/{name}/groups/{group}", delete(remove_from_group)),
        ("/invitations", get(invitations).post(create_invitation)),
        ("/invitations/{id}", delete(cancel_invitation)),
        ("/tokens", get(tokens).post(create_token)),
        ("/tokens/{id}", delete(cancel_token)),
        ("/policy", get(rules).post(add_rule)),
        ("/policy/{id}", delete(remove_rule)),
        ("/audit", get(audit)),
        ("/sessions", get(sessions)),
    ]
}

pub fn router() -> Router<Arc<Console>> {
    routes()
        .into_iter()
        .fold(Router::new(), |r, (path, handlers)| r.route(path, handlers))
        .fallback(|| async { fail(&Failure::new(StatusCode::NOT_FOUND, "no such endpoint")) })
}

fn fail(f: &Failure) -> Response {
    (f.status, Json(json!({ "error": f.message }))).into_response()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({ "error": "a valid API token is required (Authorization: Bearer sga_...)" })),
    )
        .into_response()
}

/// The extractor of every `/api/v1` endpoint but the OpenAPI document: the API client
/// behind a request, from its bearer token, as the audit log names it. A missing, unknown or
/// revoked token gets 401 with `WWW-Authenticate: Bearer`, a registry failure its JSON error.
pub struct ApiClient(pub Actor);

impl FromRequestParts<Arc<Console>> for ApiClient {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &Arc<Console>) -> Result<Self, Response> {
        let addr = super::peer_addr(parts, c).await?;
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(unauthorized)?;
        match c.gw.registry.check_api_token(bearer, clock::now()).await {
            Ok(Some(t)) => Ok(ApiClient(Actor {
                name: format!("api:{}", t.name),
                addr,
            })),
            Ok(None) => {
                tracing::info!(%addr, "API call refused: unknown or revoked token");
                Err(unauthorized())
            }
            Err(e) => Err(fail(&Failure::from(e))),
        }
    }
}

/// An endpoint's answer: its value as JSON, or its failure.
fn answer<T: serde::Serialize>(r: Result<T, Failure>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(f) => fail(&f),
    }
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Failure> {
    b.map(|Json(v)| v)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e.body_text()))
}

async fn devices(State(c): State<Arc<Console>>, _: ApiClient) -> Response {
    answer(c.devices().await)
}

async fn sessions(State(c): State<Arc<Console>>, _: ApiClient) -> Response {
    Json(c.sessions_view()).into_response()
}

async fn revoke(
    State(c): State<Arc<Console>>,
    Path(name): Path<String>,
    ApiClient(who): ApiClient,
) -> Response {
    answer(c.revoke_device(&who, &name).await)
}

async fn enable(
    State(c): State<Arc<Console>>,
    Path(name): Path<String>,
    ApiClient(who): ApiClient,
) -> Response {
    answer(c.reenable_device(&who, &name).await)
}

async fn approve(
    State(c): State<Arc<Console>>,
    Path(name): Path<String>,
    ApiClient(who): ApiClient,
) -> Response {
    answer(c.approve_device(&who, &name).await)
}

/// Gateway-wide settings.
#[derive(serde::Serialize, serde::Deserialize)]
struct Settings {
    /// New devices wait for an admin's approval before they can connect.
    require_approval: bool,
}

async fn settings(State(c): State<Arc<Console>>, _: ApiClient) -> Response {
    answer(
        c.gw.registry
            .require_approval()
            .await
            .map(|require_approval| Settings { require_approval })
            .map_err(Failure::from),
    )
}

async fn put_settings(
    State(c): State<Arc<Console>>,
    ApiClient(who): ApiClient,
    b: Result<Json<Settings>, JsonRejection>,
) -> Response {
    answer(
        async {
            let s = body(b)?;
            c.set_require_approval(&who, s.require_approval).await?;
            Ok::<_, Failure>(s)
        }
        .await,
    )
}

async fn users(State(c): State<Arc<Console>>, _: ApiClient) -> Response {
    answer(c.users().await)
}

#[derive(serde::Deserialize)]
struct NewUser {
    name: String,
    #[serde(default)]
    groups: Vec<String>,
}

async fn add_user(
    State(c): State<Arc<Console>>,
    ApiClient(who): ApiClient,
    b: Result<Json<NewUser>, JsonRejection>,
) -> Response {
    answer(
        async {
            let u = body(b)?;
            c.add_user(&who, u.name.trim(), &u.groups).await?;
            Ok::<_, Failure>(json!({ "name": u.name.trim(), "groups": u.groups }))
        }
        .await,
    )
}

async fn remove_from_group(
    State(c): State<Arc<Console>>,
    Path((name, group)): Path<(String, String)>,
    ApiClient(who): ApiClient,
) -> Response {
    answer(
        c.remove_from_group(&who, &name, &group)
            .await
            .map(|()| json!({ "user": name, "removed_from": group })),
    )
}

async fn invitations(State(c): State<Arc<Console>>, _: ApiClient) -> Response {
    answer(c.invitations().await)
}

#[derive(serde::Deserialize)]
struct NewInvitationBody {
    user: Option<String>,
    group: Option<String>,
    #[serde(default = "one")]
    uses: u32,
    /// `30m`, `24h`, `7d`.
    #[serde(default = "day")]
    expires: String,
}

fn one() -> u32 {
    1
}

fn day() -> String {
    "24h".into()
}

async fn create_invitation(
    State(c): State<Arc<Console>>,
    ApiClient(who): ApiClient,
    b: Result<Json<NewInvitationBody>, JsonRejection>,
) -> Response {
    answer(
        async {
            let n = body(b)?;
            let invitee = match (n.user, n.group) {
                (Some(u), None) => Invitee::User(u),
                (None, Some(g)) => Invitee::Group(g),
                _ => {
                    return Err(Failure::new(
                        StatusCode::BAD_REQUEST,
                        "give exactly one of \"user\" and \"group\"",
                    ));
                }
            };
            c.create_invitation(&who, invitee, n.uses, &n.expires).await
        }
        .await,
    )
}

async fn cancel_invitation(
    State(c): State<Arc<Console>>,
    Path(id): Path<String>,
    ApiClient(who): ApiClient,
) -> Response {
    answer(
        c.cancel_invitation(&who, &id)
            .await
            .map(|()| json!({ "cancelled": id })),
    )
}

async fn tokens(State(c): State<Arc<Console>>, _: ApiClient) -> Response {
    answer(c.tokens().await)
}

#[derive(serde::Deserialize)]
struct NewTokenBody {
    user: String,
    #[serde(default = "one")]
    uses: u32,
    #[serde(default = "day")]
    expires: String,
}

async fn create_token(
    State(c): State<Arc<Console>>,
    ApiClient(who): ApiClient,
    b: Result<Json<NewTokenBody>, JsonRejection>,
) -> Response {
    answer(
        async {
            let n = body(b)?;
            c.create_token(&who, n.user.trim(), n.uses, &n.expires)
                .await
        }
        .await,
    )
}

async fn cancel_token(
    State(c): State<Arc<Console>>,
    Path(id): Path<String>,
    ApiClient(who): ApiClient,
) -> Response {
    answer(
        c.cancel_token(&who, &id)
            .await
            .map(|()| json!({ "cancelled": id })),
    )
}

async fn rules(State(c): State<Arc<Console>>, _: ApiClient) -> Response {
    answer(c.rules().await)
}

async fn add_rule(
    State(c): State<Arc<Console>>,
    ApiClient(who): ApiClient,
    b: Result<Json<RuleInput>, JsonRejection>,
) -> Response {
    answer(
        async {
            let r = body(b)?;
            c.add_rule(&who, &r).await
        }
        .await,
    )
}

async fn remove_rule(
    State(c): State<Arc<Console>>,
    Path(id): Path<i64>,
    ApiClient(who): ApiClient,
) -> Response {
    answer(
        c.remove_rule(&who, id)
            .await
            .map(|()| json!({ "removed": id })),
    )
}

#[derive(serde::Deserialize)]
struct AuditParams {
    #[serde(flatten)]
    filter: Filter,
    per_page: Option<i64>,
}

async fn audit(
    State(c): State<Arc<Console>>,
    Query(q): Query<AuditParams>,
    _: ApiClient,
) -> Response {
    let per_page = q.per_page.unwrap_or(super::audit::PAGE).clamp(1, MAX_AUDIT);
    answer(
        c.audit_page(&q.filter, per_page)
            .await
            .map(|(entries, more)| json!({ "entries": entries, "more": more })),
    )
}

async fn openapi() -> Response {
    Json(openapi_document()).into_response()
}

/// The OpenAPI 3 description of `/api/v1`.
pub fn openapi_document() -> serde_json::Value {
    let error = json!({ "$ref": "#/components/responses/Error" });
    let unauthorized = json!({ "$ref": "#/components/responses/Unauthorized" });
    let ok = |what: &str| json!({ "description": what, "content": { "application/json": { "schema": { "type": "object" } } } });
    let body = |props: serde_json::Value, required: &[&str]| {
        json!({
            "required": true,
            "content": { "application/json": { "schema": { "type": "object", "properties": props, "required": required } } }
        })
    };
    let path_param = |name: &str, ty: &str| json!([{ "name": name, "in": "path", "required": true, "schema": { "type": ty } }]);
    let op = |summary: &str, extra: serde_json::Value| {
        let mut o = json!({
            "summary": summary,
            "responses": { "200": ok(summary), "400": error, "401": unauthorized, "404": error, "503": error }
        });
        if let (Some(o), Some(extra)) = (o.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                o.insert(k.clone(), v.clone());
            }
        }
        o
    };
    let expiry = json!({ "type": "string", "example": "24h", "description": "lifetime: 30m, 24h, 7d (at most 90d)" });
    json!({
        "openapi": "3.0.3",
        "info": { "title": "shimgate gateway API", "version": "1" },
        "servers": [{ "url": "/api/v1" }],
        "security": [{ "bearer": [] }],
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "description": "an API token made in the console (sga_...)" } },
            "responses": {
                "Error": { "description": "the request was refused", "content": { "application/json": { "schema": { "type": "object", "properties": { "error": { "type": "string" } } } } } },
                "Unauthorized": { "description": "no API token, or a wrong or revoked one" }
            }
        },
        "paths": {
            "/devices": { "get": op("list devices with online state, last seen, the gateway each last connected to, certificate expiry and peer path counts", json!({})) },
            "/sessions": { "get": op("tunnels open through the gateway, and recent peer sessions (path, state, bytes)", json!({})) },
            "/devices/{name}/revoke": { "post": op("revoke a device now (its connections close)", json!({ "parameters": path_param("name", "string") })) },
            "/devices/{name}/enable": { "post": op("lift a device's revocation", json!({ "parameters": path_param("name", "string") })) },
            "/devices/{name}/approve": { "post": op("let a device that awaits approval connect", json!({ "parameters": path_param("name", "string") })) },
            "/settings": {
                "get": op("gateway-wide settings", json!({})),
                "put": op("change gateway-wide settings", json!({ "requestBody": body(json!({ "require_approval": { "type": "boolean", "description": "new devices wait for an admin's approval" } }), &["require_approval"]) }))
            },
            "/users": {
                "get": op("list users and their groups", json!({})),
                "post": op("add a user (and put them in groups)", json!({ "requestBody": body(json!({ "name": { "type": "string" }, "groups": { "type": "array", "items": { "type": "string" } } }), &["name"]) }))
            },
            "/users/{name}/groups/{group}": { "delete": op("take a user out of a group", json!({ "parameters": [
                { "name": "name", "in": "path", "required": true, "schema": { "type": "string" } },
                { "name": "group", "in": "path", "required": true, "schema": { "type": "string" } }
            ] })) },
            "/invitations": {
                "get": op("list invitations", json!({})),
                "post": op("create an invitation for a user or a group; returns its link once", json!({ "requestBody": body(json!({ "user": { "type": "string" }, "group": { "type": "string" }, "uses": { "type": "integer", "minimum": 1, "maximum": 1000 }, "expires": expiry }), &[]) }))
            },
            "/invitations/{id}": { "delete": op("cancel an invitation", json!({ "parameters": path_param("id", "string") })) },
            "/tokens": {
                "get": op("list enrollment tokens", json!({})),
                "post": op("create an enrollment token; returns its code once", json!({ "requestBody": body(json!({ "user": { "type": "string" }, "uses": { "type": "integer", "minimum": 1, "maximum": 1000 }, "expires": expiry }), &["user"]) }))
            },
            "/tokens/{id}": { "delete": op("cancel an enrollment token", json!({ "parameters": path_param("id", "string") })) },
            "/policy": {
                "get": op("list policy rules", json!({})),
                "post": op("add a rule", json!({ "requestBody": body(json!({
                    "action": { "type": "string", "enum": ["allow", "deny"] },
                    "to": { "type": "string", "description": "CIDR, IP or domain suffix" },
                    "ports": { "type": "string", "example": "443, 8000-8100 or 22,53,80,8000-8100; empty: all" },
                    "proto": { "type": "string", "enum": ["tcp", "udp", "icmp", "any"], "description": "empty: tcp; icmp (ping) takes no ports" },
                    "subject": { "type": "string", "example": "*, user:NAME or group:NAME" }
                }), &["action", "to"]) }))
            },
            "/policy/{id}": { "delete": op("remove a rule", json!({ "parameters": path_param("id", "integer") })) },
            "/audit": { "get": op("a page of the audit log, newest first", json!({ "parameters": [
                { "name": "actor", "in": "query", "schema": { "type": "string" } },
                { "name": "action", "in": "query", "schema": { "type": "string" }, "description": "an action, or a prefix before a dot (device)" },
                { "name": "target", "in": "query", "schema": { "type": "string" } },
                { "name": "page", "in": "query", "schema": { "type": "integer", "minimum": 1 } },
                { "name": "per_page", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 500 } }
            ] })) }
        }
    })
}

// ----- the API tokens page -----

struct TokenLine {
    id: String,
    name: String,
    created_by: String,
    created: String,
    last_used: String,
    revoked: bool,
}

#[derive(Template)]
#[template(path = "api_tokens.html")]
struct TokensPage {
    title: &'static str,
    nav: Option<Nav>,
    tokens: Vec<TokenLine>,
    new_bearer: Option<String>,
}

async fn tokens_view(c: &Console, nav: Nav, new_bearer: Option<String>) -> Response {
    let tokens = match c.gw.registry.list_api_tokens().await {
        Ok(t) => t,
        Err(e) => {
            let f = Failure::from(e);
            return super::error_page(f.status, &f.message);
        }
    };
    render(&TokensPage {
        title: "API tokens",
        nav: Some(nav),
        tokens: tokens
            .into_iter()
            .map(|t| TokenLine {
                id: t.id_hex,
                name: t.name,
                created_by: t.created_by,
                created: clock::show(t.created_at),
                last_used: when(t.last_used),
                revoked: t.revoked,
            })
            .collect(),
        new_bearer,
    })
}

pub async fn tokens_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match c.page_session(&headers).await {
        Ok(nav) => tokens_view(&c, nav, None).await,
        Err(r) => r,
    }
}

/// The API tokens page's "new token" form (`POST /api-tokens`).
#[derive(serde::Deserialize)]
pub struct NewApiTokenForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    pub name: String,
}

pub async fn create_token_form(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    SignedIn { who, form: f, .. }: SignedIn<NewApiTokenForm>,
) -> Response {
    let name = f.name.trim();
    match c.gw.registry.create_api_token(name, &who.name).await {
        Ok(t) => {
            c.audit(&who, "api_token.create", name, format!("id={}", t.id_hex()))
                .await;
            match c.page_session(&headers).await {
                Ok(nav) => tokens_view(&c, nav, Some(t.bearer())).await,
                Err(r) => r,
            }
        }
        Err(e) => {
            c.done(&headers, "/api-tokens", Err(Failure::from(e).message))
                .await
        }
    }
}

pub async fn revoke_token_form(
    State(c): State<Arc<Console>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    SignedIn { who, .. }: SignedIn<CsrfOnly>,
) -> Response {
    let result = match c.gw.registry.revoke_api_token(&id).await {
        Ok(true) => {
            c.audit(&who, "api_token.revoke", &id, String::new()).await;
            Ok("API token revoked.".to_owned())
        }
        Ok(false) => Err(format!("no active API token {id}")),
        Err(e) => Err(Failure::from(e).message),
    };
    c.done(&headers, "/api-tokens", result).await
}

#[cfg(test)]
mod tests {
    /// The document names exactly the router's paths (the document itself
    /// aside), not a count that both could drift from together.
    #[test]
    fn openapi_names_every_path() {
        let doc = super::openapi_document();
        let mut documented: Vec<&str> = doc["paths"]
            .as_object()
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        documented.sort_unstable();
        let mut routed: Vec<&str> = super::routes()
            .into_iter()
            .map(|(path, _)| path)
            .filter(|p| *p != "/openapi.json")
            .collect();
        routed.sort_unstable();
        assert_eq!(documented, routed);
        assert_eq!(doc["openapi"], "3.0.3");
    }
}
