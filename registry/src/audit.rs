//! The audit log: who did what to what, from where.

use sqlx::Row;

use crate::{Registry, Result};

/// An audit entry to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudit {
    /// Unix seconds.
    pub at: i64,
    /// Who acted (a user, `cli`, `gateway`, ...).
    pub actor: String,
    /// What they did (`device.revoke`, `token.create`, ...).
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// The client address, when there is one.
    pub source_addr: Option<String>,
    /// Free text. Never put secrets here.
    pub detail: String,
    /// The gateway that wrote it (its name in `gateway list`); `None` for an
    /// admin command run against the registry directly.
    pub gateway: Option<String>,
}

/// A stored audit entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub source_addr: Option<String>,
    pub detail: String,
    pub gateway: Option<String>,
}

/// Rows in one `INSERT` at most: 7 parameters each stays far below SQLite's
/// (32,766) and Postgres's (65,535) limits on parameters per statement.
const AUDIT_ROWS_PER_INSERT: usize = 256;

/// `INSERT … VALUES ($1, …, $7), ($8, …)` for `rows` entries. Only
/// placeholders vary: no entry's text is ever part of the SQL.
fn insert_sql(rows: usize) -> String {
    const COLUMNS: usize = 7;
    let mut sql = String::from(
        "INSERT INTO audit_log (at, actor, action, target, source_addr, detail, gateway) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for col in 0..COLUMNS {
            if col > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", row * COLUMNS + col + 1));
        }
        sql.push(')');
    }
    sql
}

impl Registry {
    /// Appends several audit entries in one transaction, in order (all or none).
    ///
    /// One multi-row `INSERT` per [`AUDIT_ROWS_PER_INSERT`] entries: a busy
    /// gateway writes hundreds of entries a second, and a statement per row
    /// was a visible share of its CPU per tunnel.
    pub async fn audit_batch(&self, entries: &[NewAudit]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for chunk in entries.chunks(AUDIT_ROWS_PER_INSERT) {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(insert_sql(chunk.len())));
            for e in chunk {
                q = q
                    .bind(e.at)
                    .bind(e.actor.as_str())
                    .bind(e.action.as_str())
                    .bind(e.target.as_str())
                    .bind(e.source_addr.as_deref())
                    .bind(e.detail.as_str())
                    .bind(e.gateway.as_deref());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Appends an audit entry.
    pub async fn audit(&self, e: NewAudit) -> Result<()> {
        self.audit_batch(std::slice::from_ref(&e)).await
    }

    /// The newest `limit` entries (by time, then insertion order), newest first.
    pub async fn list_audit(&self, limit: i64) -> Result<Vec<AuditRow>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, source_addr, detail, gateway FROM audit_log \
             ORDER BY at DESC, id DESC LIMIT $1",
        )
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_audit).collect()
    }

    /// Entries matching `q`, newest first, one page of them.
    pub async fn search_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRow>> {
        // Fixed SQL: an empty filter matches everything.
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, source_addr, detail, gateway FROM audit_log \
             WHERE ($1 = '' OR actor = $1) \
               AND ($2 = '' OR action = $2 OR action LIKE $3 ESCAPE '\\') \
               AND ($4 = '' OR target = $4) \
             ORDER BY at DESC, id DESC LIMIT $5 OFFSET $6",
        )
        .bind(&q.actor)
        .bind(&q.action)
        .bind(format!("{}.%", crate::devices::like_escape(&q.action)))
        .bind(&q.target)
        .bind(q.limit.clamp(0, MAX_PAGE))
        .bind(q.offset.max(0))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_to_audit).collect()
    }
}

/// The most entries one [`Registry::search_audit`] call returns.
pub const MAX_PAGE: i64 = 500;

/// A filtered page of the audit log. Empty strings match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Exactly this actor.
    pub actor: String,
    /// This action, or every action under it (`device` matches `device.revoke`).
    pub action: String,
    /// Exactly this target.
    pub target: String,
    /// Entries to skip (newest first).
    pub offset: i64,
    /// Entries to return, at most [`MAX_PAGE`].
    pub limit: i64,
}

fn row_to_audit(row: &sqlx::any::AnyRow) -> Result<AuditRow> {
    Ok(AuditRow {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        source_addr: row.try_get("source_addr")?,
        detail: row.try_get("detail")?,
        gateway: row.try_get("gateway")?,
    })
}
