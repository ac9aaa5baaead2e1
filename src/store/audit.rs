//! `audit_log`: an `operation` row for every change made through the API and
//! a `login` row for every sign-in an upstream app reports. Rows are only
//! ever added.
use serde_json::Value;

use crate::{
    db::{Db, Tx},
    on_db, on_tx,
};

/// `audit_log.org_id` of changes that belong to no org (reviewers, platform keys).
pub const PLATFORM: &str = "platform";

/// One change made through the API.
pub struct Operation<'a> {
    pub org_id: &'a str,
    /// Who made it, e.g. `key:<api key id>`.
    pub actor: &'a str,
    /// What was done, e.g. `member.disable`.
    pub action: &'a str,
    /// The id of what it was done to.
    pub target: Option<&'a str>,
    pub detail: Value,
    pub at: i64,
}

/// Write an `operation` row in the change's own transaction.
pub async fn operation(tx: &mut Tx, op: Operation<'_>) -> Result<(), sqlx::Error> {
    let id = uuid::Uuid::now_v7().to_string();
    let detail = op.detail.to_string();
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO audit_log (id, org_id, type, actor, action, target, detail, at) \
         VALUES ($1, $2, 'operation', $3, $4, $5, $6, $7)"
    )
    .bind(&id)
    .bind(op.org_id)
    .bind(op.actor)
    .bind(op.action)
    .bind(op.target)
    .bind(&detail)
    .bind(op.at)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// A sign-in reported by an upstream app.
pub struct Login<'a> {
    pub org_id: &'a str,
    /// Who reported it (`key:<id>`).
    pub actor: &'a str,
    pub member_id: &'a str,
    pub ip: &'a str,
    pub user_agent: &'a str,
    pub success: bool,
    pub at: i64,
}

/// Write a `login` row; returns its id.
pub async fn login(db: &Db, l: Login<'_>) -> Result<String, sqlx::Error> {
    let id = uuid::Uuid::now_v7().to_string();
    on_db!(db, |c| {
        sqlx::query(
        "INSERT INTO audit_log (id, org_id, type, actor, action, target, detail, ip, user_agent, success, at) \
         VALUES ($1, $2, 'login', $3, 'login', $4, '{}', $5, $6, $7, $8)"
    )
    .bind(&id)
    .bind(l.org_id)
    .bind(l.actor)
    .bind(l.member_id)
    .bind(l.ip)
    .bind(l.user_agent)
    .bind(l.success)
    .bind(l.at)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(id)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub id: String,
    pub org_id: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub actor: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub detail: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub success: Option<bool>,
    pub at: i64,
}

/// An org's audit rows, newest first, optionally of one type, strictly after
/// (older than) the `(at, id)` of `after`.
pub async fn list(
    db: &Db,
    org_id: &str,
    kind: Option<&str>,
    after: Option<(i64, &str)>,
    limit: i64,
) -> Result<Vec<AuditRow>, sqlx::Error> {
    let (at, id) = after.map_or((None, None), |(a, i)| (Some(a), Some(i)));
    on_db!(db, |c| sqlx::query_as::<_, AuditRow>(
        "SELECT id, org_id, type, actor, action, target, detail, ip, user_agent, success, at \
         FROM audit_log WHERE org_id = $1 AND ($2 IS NULL OR type = $2) \
         AND ($3 IS NULL OR at < $3 OR (at = $3 AND id < $4)) \
         ORDER BY at DESC, id DESC LIMIT $5"
    )
    .bind(org_id)
    .bind(kind)
    .bind(at)
    .bind(id)
    .bind(limit)
    .fetch_all(c)
    .await)
}
