//! Storing policy rules: subject as kind + name, destination and action as text.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::changes::bump;
use crate::{Action, Dest, Error, LocalUser, Ports, Program, Proto, Registry, Result, Subject};
use shimgate_host::clock;

/// A rule to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRule {
    pub subject: Subject,
    pub dest: Dest,
    pub ports: Ports,
    pub proto: Proto,
    /// Only flows from this program on the device; `None`: any.
    pub program: Option<Program>,
    /// Only flows from this local user on the device; `None`: any.
    pub local_user: Option<LocalUser>,
    pub action: Action,
    pub created_by: String,
}

/// A stored rule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rule {
    pub id: i64,
    pub subject: Subject,
    pub dest: Dest,
    pub ports: Ports,
    pub proto: Proto,
    /// Only flows from this program on the device; `None`: any.
    pub program: Option<Program>,
    /// Only flows from this local user on the device; `None`: any.
    pub local_user: Option<LocalUser>,
    pub action: Action,
    pub created_by: String,
    pub created_at: i64,
}

impl Rule {
    /// One line for logs and the audit log: `allow group:ops -> 10.0.0.0/8 ports 22 tcp`,
    /// then ` program=psql local-user=alice` when the rule is limited to them.
    pub fn summary(&self) -> String {
        format!(
            "{} {} -> {} ports {} {}{}",
            self.action,
            self.subject,
            self.dest,
            self.ports,
            self.proto,
            self.local_limits()
        )
    }

    /// ` program=P local-user=U` for what the rule is limited to on the device, or "".
    pub fn local_limits(&self) -> String {
        let mut out = String::new();
        if let Some(p) = &self.program {
            out.push_str(&format!(" program={p}"));
        }
        if let Some(u) = &self.local_user {
            out.push_str(&format!(" local-user={u}"));
        }
        out
    }
}

fn subject_columns(s: &Subject) -> (&'static str, Option<&str>) {
    match s {
        Subject::Everyone => ("everyone", None),
        Subject::User(name) => ("user", Some(name)),
        Subject::Group(name) => ("group", Some(name)),
    }
}

fn rule_from_row(row: &AnyRow) -> Result<Rule> {
    let id: i64 = row.try_get("id")?;
    let corrupt = |what: &str| Error::Corrupt(format!("policy rule {id}: bad {what}"));
    let kind: String = row.try_get("subject_kind")?;
    let name: Option<String> = row.try_get("subject_name")?;
    let subject = match (kind.as_str(), name) {
        ("everyone", _) => Subject::Everyone,
        ("user", Some(name)) => Subject::User(name),
        ("group", Some(name)) => Subject::Group(name),
        _ => return Err(corrupt("subject")),
    };
    let dest: String = row.try_get("dest")?;
    let action: String = row.try_get("action")?;
    let proto: String = row.try_get("proto")?;
    let port_lo: i64 = row.try_get("port_lo")?;
    let port_hi: i64 = row.try_get("port_hi")?;
    let listed: String = row.try_get("ports")?;
    let program: Option<String> = row.try_get("program")?;
    let local_user: Option<String> = row.try_get("local_user")?;
    let ports = if listed.is_empty() {
        let port = |p: i64| u16::try_from(p).map_err(|_| corrupt("port"));
        Ports::range(port(port_lo)?, port(port_hi)?)
    } else {
        listed.parse()
    }
    .map_err(|_| corrupt("ports"))?;
    Ok(Rule {
        id,
        subject,
        dest: dest.parse().map_err(|_| corrupt("destination"))?,
        ports,
        proto: proto.parse().map_err(|_| corrupt("protocol"))?,
        program: program
            .map(|p| p.parse())
            .transpose()
            .map_err(|_| corrupt("program"))?,
        local_user: local_user
            .map(|u| u.parse())
            .transpose()
            .map_err(|_| corrupt("local user"))?,
        action: action.parse().map_err(|_| corrupt("action"))?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Registry {
    /// Adds a rule and bumps the change sequence. Refuses subjects or destinations that would
    /// not read back (e.g. an empty user name or an invalid domain).
    pub async fn add_rule(&self, r: NewRule) -> Result<Rule> {
        // Through the text forms, so a rule built in code obeys the same rules as typed input.
        let subject: Subject = r.subject.to_string().parse()?;
        let dest: Dest = r.dest.to_string().parse()?;
        let ports: Ports = r.ports.to_string().parse()?;
        if r.proto == Proto::Icmp && !ports.covers(&Ports::all()) {
            return Err(Error::invalid(
                "rule ports",
                "a ping (ICMP) has no port: leave the ports out of an icmp rule",
            ));
        }
        let (port_lo, port_hi) = ports.bounds();
        let (kind, name) = subject_columns(&subject);
        let created_at = clock::now();
        let mut tx = self.begin_write().await?;
        bump(&mut tx).await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO policy_rules \
             (subject_kind, subject_name, dest, port_lo, port_hi, ports, proto, program, \
              local_user, action, created_by, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
        )
        .bind(kind)
        .bind(name)
        .bind(dest.to_string())
        .bind(i64::from(port_lo))
        .bind(i64::from(port_hi))
        .bind(ports.to_string())
        .bind(r.proto.to_string())
        .bind(r.program.as_ref().map(Program::to_string))
        .bind(r.local_user.as_ref().map(LocalUser::to_string))
        .bind(r.action.to_string())
        .bind(&r.created_by)
        .bind(created_at)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Rule {
            id,
            subject,
            dest,
            ports,
            proto: r.proto,
            program: r.program,
            local_user: r.local_user,
            action: r.action,
            created_by: r.created_by,
            created_at,
        })
    }

    /// Every rule, in the order added.
    pub async fn list_rules(&self) -> Result<Vec<Rule>> {
        let rows = sqlx::query(
            "SELECT id, subject_kind, subject_name, dest, port_lo, port_hi, ports, proto, \
                    program, local_user, action, created_by, created_at \
             FROM policy_rules ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rule_from_row).collect()
    }

    /// Removes a rule and bumps the change sequence. Returns false if there was no such rule.
    pub async fn remove_rule(&self, id: i64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        bump(&mut tx).await?;
        let removed = sqlx::query("DELETE FROM policy_rules WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if removed == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }
}
