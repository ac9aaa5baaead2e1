//! `grants`: permissions an org (or one of its members) holds. A grant is
//! revoked ("closed"), never deleted.
use crate::{
    db::{Db, Tx},
    on_db, on_tx,
};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Grant {
    pub id: String,
    pub org_id: String,
    pub kind: String,
    /// `''` = the whole org.
    pub member_id: String,
    pub status: String,
    pub request_id: Option<String>,
    pub granted_at: i64,
    pub revoked_at: Option<i64>,
}

/// An org's grants, oldest first; only active ones unless `all`.
pub async fn list(db: &Db, org_id: &str, all: bool) -> Result<Vec<Grant>, sqlx::Error> {
    on_db!(db, |c| {
        sqlx::query_as::<_, Grant>(
        "SELECT id, org_id, kind, member_id, status, request_id, granted_at, revoked_at FROM grants \
         WHERE org_id = $1 AND ($2 OR status = 'active') ORDER BY granted_at, id"
    )
    .bind(org_id)
    .bind(all)
    .fetch_all(c)
    .await
    })
}

pub async fn get_tx(
    tx: &mut Tx,
    org_id: &str,
    kind: &str,
    member_id: &str,
) -> Result<Option<Grant>, sqlx::Error> {
    on_tx!(tx, |c| {
        sqlx::query_as::<_, Grant>(
        "SELECT id, org_id, kind, member_id, status, request_id, granted_at, revoked_at FROM grants \
         WHERE org_id = $1 AND kind = $2 AND member_id = $3"
    )
    .bind(org_id)
    .bind(kind)
    .bind(member_id)
    .fetch_optional(c)
    .await
    })
}

/// Revoke an active grant. Returns whether this call revoked it.
pub async fn revoke(tx: &mut Tx, id: &str, now: i64) -> Result<bool, sqlx::Error> {
    let org: Option<String> = on_tx!(tx, |c| {
        sqlx::query_scalar::<_, String>(
        "UPDATE grants SET status = 'revoked', revoked_at = $1 WHERE id = $2 AND status = 'active' \
         RETURNING org_id"
    )
    .bind(now)
    .bind(id)
    .fetch_optional(c)
    .await
    })?;
    if let Some(org) = &org {
        tx.authz_changed(org);
    }
    Ok(org.is_some())
}
