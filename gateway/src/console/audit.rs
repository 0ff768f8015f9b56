//! The audit log page: filter by actor, action (or action prefix) and target; paginated.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use shimgate_host::clock;
use shimgate_registry::{AuditQuery, AuditRow};

use super::auth::Nav;
use super::{Console, Failure, render};

/// Entries per page.
pub const PAGE: i64 = 50;

#[derive(Debug, Default, serde::Deserialize)]
pub struct Filter {
    #[serde(default)]
    pub actor: String,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub target: String,
    /// 1-based.
    #[serde(default)]
    pub page: Option<u32>,
}

impl Console {
    /// One page of entries, and whether there is a next one.
    pub(crate) async fn audit_page(
        &self,
        f: &Filter,
        per_page: i64,
    ) -> Result<(Vec<AuditRow>, bool), Failure> {
        let page = i64::from(f.page.unwrap_or(1).max(1));
        let mut rows = self
            .gw
            .registry
            .search_audit(&AuditQuery {
                actor: f.actor.trim().to_owned(),
                action: f.action.trim().to_owned(),
                target: f.target.trim().to_owned(),
                offset: (page - 1).saturating_mul(per_page),
                // One more than shown tells whether a next page exists.
                limit: per_page + 1,
            })
            .await?;
        let more = rows.len() > usize::try_from(per_page).unwrap_or(usize::MAX);
        rows.truncate(usize::try_from(per_page).unwrap_or(0));
        Ok((rows, more))
    }
}

struct Line {
    at: String,
    row: AuditRow,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    title: &'static str,
    nav: Option<Nav>,
    lines: Vec<Line>,
    actor: String,
    action: String,
    target: String,
    page: u32,
    prev: Option<String>,
    next: Option<String>,
}

fn link(f: &Filter, page: u32) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    format!(
        "/audit?actor={}&action={}&target={}&page={page}",
        enc(f.actor.trim()),
        enc(f.action.trim()),
        enc(f.target.trim())
    )
}

pub async fn page(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(f): Query<Filter>,
) -> Response {
    let nav = match c.page_session(&headers).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let (rows, more) = match c.audit_page(&f, PAGE).await {
        Ok(r) => r,
        Err(e) => return super::error_page(e.status, &e.message),
    };
    let page = f.page.unwrap_or(1).max(1);
    render(&AuditPage {
        title: "Audit log",
        nav: Some(nav),
        lines: rows
            .into_iter()
            .map(|row| Line {
                at: clock::show(row.at),
                row,
            })
            .collect(),
        prev: (page > 1).then(|| link(&f, page - 1)),
        next: more.then(|| link(&f, page.saturating_add(1))),
        actor: f.actor,
        action: f.action,
        target: f.target,
        page,
    })
}
