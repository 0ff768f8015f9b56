//! Policy rules: list, add (with the registry's validation messages), remove.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use shimgate_registry::{Action, Dest, NewRule, Ports, Proto, Rule, Subject};
use std::str::FromStr;

use super::auth::{CsrfOnly, Nav, SignedIn};
use super::{Actor, Console, Failure, render};

/// A rule as typed into the form or sent to the API.
#[derive(Debug, Default, serde::Deserialize)]
pub struct RuleInput {
    /// `allow` or `deny`.
    #[serde(default)]
    pub action: String,
    /// A CIDR, an IP or a domain suffix.
    #[serde(default)]
    pub to: String,
    /// `80`, `8000-8100`, `22,53,8000-8100`; empty means all.
    #[serde(default)]
    pub ports: String,
    /// `*`, `user:NAME` or `group:NAME`; empty means everyone.
    #[serde(default)]
    pub subject: String,
    /// `tcp`, `udp` or `any`; empty means `tcp`.
    #[serde(default)]
    pub proto: String,
    /// Only flows from this program on the device (`psql`, `/usr/bin/psql`); empty means any.
    #[serde(default)]
    pub program: String,
    /// Only flows from this local user on the device (a name or uid); empty means any.
    #[serde(default)]
    pub local_user: String,
}

/// An optional field: empty means `None`.
fn optional<T: FromStr>(text: &str) -> Result<Option<T>, Failure>
where
    T::Err: std::fmt::Display,
{
    match text.trim() {
        "" => Ok(None),
        t => t.parse().map(Some).map_err(bad),
    }
}

fn bad(e: impl std::fmt::Display) -> Failure {
    Failure::new(StatusCode::BAD_REQUEST, e.to_string())
}

impl RuleInput {
    /// The rule to store, with its fields parsed and checked (no database involved): what the
    /// policy form and `POST /api/v1/policy` add. Empty `subject` means everyone, empty
    /// `ports` all ports, empty `proto` TCP.
    pub fn to_rule(&self, created_by: &str) -> Result<NewRule, Failure> {
        let action: Action = self.action.trim().parse().map_err(bad)?;
        let dest: Dest = self.to.trim().parse().map_err(bad)?;
        let subject: Subject = match self.subject.trim() {
            "" => Subject::Everyone,
            s => s.parse().map_err(bad)?,
        };
        let ports = match self.ports.trim() {
            "" => "1-65535",
            p => p,
        };
        let ports: Ports = ports.parse().map_err(bad)?;
        let proto: Proto = match self.proto.trim() {
            "" => Proto::Tcp,
            p => p.parse().map_err(bad)?,
        };
        Ok(NewRule {
            subject,
            dest,
            ports,
            proto,
            program: optional(&self.program)?,
            local_user: optional(&self.local_user)?,
            action,
            created_by: created_by.to_owned(),
        })
    }
}

impl Console {
    pub(crate) async fn rules(&self) -> Result<Vec<Rule>, Failure> {
        Ok(self.gw.registry.list_rules().await?)
    }

    pub(crate) async fn add_rule(&self, who: &Actor, r: &RuleInput) -> Result<Rule, Failure> {
        let rule = self.gw.registry.add_rule(r.to_rule(&who.name)?).await?;
        self.refresh_cache().await;
        self.audit(who, "policy.add", &rule.id.to_string(), rule.summary())
            .await;
        Ok(rule)
    }

    pub(crate) async fn remove_rule(&self, who: &Actor, id: i64) -> Result<(), Failure> {
        if !self.gw.registry.remove_rule(id).await? {
            return Err(Failure::new(StatusCode::NOT_FOUND, format!("no rule {id}")));
        }
        self.refresh_cache().await;
        self.audit(who, "policy.remove", &id.to_string(), String::new())
            .await;
        Ok(())
    }
}

struct RuleLine {
    id: i64,
    action: String,
    subject: String,
    dest: String,
    ports: String,
    proto: String,
    /// The rule's limits on the device, or "any".
    local: String,
    created_by: String,
}

#[derive(Template)]
#[template(path = "policy.html")]
struct PolicyPage {
    title: &'static str,
    nav: Option<Nav>,
    rules: Vec<RuleLine>,
}

pub async fn page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let nav = match c.page_session(&headers).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let rules = match c.rules().await {
        Ok(r) => r,
        Err(f) => return super::error_page(f.status, &f.message),
    };
    render(&PolicyPage {
        title: "Policy",
        nav: Some(nav),
        rules: rules
            .into_iter()
            .map(|r| RuleLine {
                id: r.id,
                action: r.action.to_string(),
                subject: r.subject.to_string(),
                dest: r.dest.to_string(),
                ports: r.ports.to_string(),
                proto: r.proto.to_string(),
                local: match r.local_limits().trim() {
                    "" => "any".to_owned(),
                    limits => limits.to_owned(),
                },
                created_by: r.created_by,
            })
            .collect(),
    })
}

/// The policy page's "add a rule" form (`POST /policy`).
#[derive(serde::Deserialize)]
pub struct RuleForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    #[serde(flatten)]
    pub rule: RuleInput,
}

pub async fn add_form(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    SignedIn { who, form: f, .. }: SignedIn<RuleForm>,
) -> Response {
    let result = c
        .add_rule(&who, &f.rule)
        .await
        .map(|r| format!("Rule {} added.", r.id))
        .map_err(|f| f.message);
    c.done(&headers, "/policy", result).await
}

pub async fn remove_form(
    State(c): State<Arc<Console>>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    SignedIn { who, .. }: SignedIn<CsrfOnly>,
) -> Response {
    let result = c
        .remove_rule(&who, id)
        .await
        .map(|()| format!("Rule {id} removed."))
        .map_err(|f| f.message);
    c.done(&headers, "/policy", result).await
}
