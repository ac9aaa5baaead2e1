//! `mail_transport_health`: what the mail transport is failing with, shared
//! by every process (a worker sees it, an api process's `/readyz` says it).
//! One row while failing, none when working.
use crate::{db::Db, on_db};

/// The one transport a process has.
const SMTP: &str = "smtp";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Failing {
    pub kind: String,
    pub detail: String,
    pub since: i64,
    pub updated_at: i64,
}

/// Publish that the transport fails with `kind` (keeps `since` while the
/// kind stays the same).
pub async fn set_failing(db: &Db, kind: &str, detail: &str, now: i64) -> Result<(), sqlx::Error> {
    on_db!(db, |p| {
        sqlx::query(
        "INSERT INTO mail_transport_health (transport, kind, detail, since, updated_at) VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (transport) DO UPDATE SET detail = excluded.detail, updated_at = excluded.updated_at, \
           since = CASE WHEN mail_transport_health.kind = excluded.kind THEN mail_transport_health.since ELSE excluded.since END, \
           kind = excluded.kind"
    )
    .bind(SMTP)
    .bind(kind)
    .bind(detail)
    .bind(now)
    .execute(p)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// The transport works: forget a published failure. Returns whether there was one.
pub async fn clear(db: &Db) -> Result<bool, sqlx::Error> {
    Ok(on_db!(db, |p| sqlx::query(
        "DELETE FROM mail_transport_health WHERE transport = $1"
    )
    .bind(SMTP)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?
        > 0)
}

pub async fn get(db: &Db) -> Result<Option<Failing>, sqlx::Error> {
    on_db!(db, |p| sqlx::query_as::<_, Failing>(
        "SELECT kind, detail, since, updated_at FROM mail_transport_health WHERE transport = $1"
    )
    .bind(SMTP)
    .fetch_optional(p)
    .await)
}
