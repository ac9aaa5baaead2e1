//! `members`: an org's accounts (the owner is the one `super_admin`).
//! Members are disabled, never deleted.
use crate::{
    db::{Db, Tx},
    on_db, on_tx,
};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Member {
    pub id: String,
    pub org_id: String,
    pub login_id: String,
    pub name: String,
    pub email: String,
    pub phone: Option<String>,
    pub kind: String,
    pub role: Option<String>,
    pub locale: String,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub disabled_at: Option<i64>,
}

pub const ACTIVE: &str = "active";
pub const DISABLED: &str = "disabled";

/// The columns of [`Member`], for `concat!` into static query text.
macro_rules! member_columns {
    () => {
        "id, org_id, login_id, name, email, phone, kind, role, locale, status, created_at, updated_at, disabled_at"
    };
}

/// Insert; a second member with the same `login_id` in the org is a unique violation.
pub async fn insert(tx: &mut Tx, m: &Member) -> Result<(), sqlx::Error> {
    on_tx!(tx, |c| {
        sqlx::query(
        "INSERT INTO members (id, org_id, login_id, name, email, phone, kind, role, locale, status, created_at, updated_at, disabled_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    )
    .bind(&m.id)
    .bind(&m.org_id)
    .bind(&m.login_id)
    .bind(&m.name)
    .bind(&m.email)
    .bind(&m.phone)
    .bind(&m.kind)
    .bind(&m.role)
    .bind(&m.locale)
    .bind(&m.status)
    .bind(m.created_at)
    .bind(m.updated_at)
    .bind(m.disabled_at)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    tx.authz_changed(&m.org_id);
    Ok(())
}

pub async fn get(db: &Db, org_id: &str, id: &str) -> Result<Option<Member>, sqlx::Error> {
    const SQL: &str = concat!(
        "SELECT ",
        member_columns!(),
        " FROM members WHERE org_id = $1 AND id = $2"
    );
    on_db!(db, |c| sqlx::query_as::<_, Member>(SQL)
        .bind(org_id)
        .bind(id)
        .fetch_optional(c)
        .await)
}

pub async fn get_tx(tx: &mut Tx, org_id: &str, id: &str) -> Result<Option<Member>, sqlx::Error> {
    const SQL: &str = concat!(
        "SELECT ",
        member_columns!(),
        " FROM members WHERE org_id = $1 AND id = $2"
    );
    on_tx!(tx, |c| sqlx::query_as::<_, Member>(SQL)
        .bind(org_id)
        .bind(id)
        .fetch_optional(c)
        .await)
}

/// The org's member whose id or login id is `reference`.
pub async fn find(db: &Db, org_id: &str, reference: &str) -> Result<Option<Member>, sqlx::Error> {
    const SQL: &str = concat!(
        "SELECT ",
        member_columns!(),
        " FROM members WHERE org_id = $1 AND (id = $2 OR login_id = $2) ORDER BY created_at LIMIT 1"
    );
    on_db!(db, |c| sqlx::query_as::<_, Member>(SQL)
        .bind(org_id)
        .bind(reference)
        .fetch_optional(c)
        .await)
}

/// How many of the org's members are active (the owner included).
pub async fn count_active(tx: &mut Tx, org_id: &str) -> Result<i64, sqlx::Error> {
    on_tx!(tx, |c| sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM members WHERE org_id = $1 AND status = 'active'"
    )
    .bind(org_id)
    .fetch_one(c)
    .await)
}

/// The org's members, oldest first, strictly after the `(created_at, id)` of `after`.
pub async fn list(
    db: &Db,
    org_id: &str,
    after: Option<(i64, &str)>,
    limit: i64,
) -> Result<Vec<Member>, sqlx::Error> {
    let (at, id) = after.map_or((None, None), |(a, i)| (Some(a), Some(i)));
    const SQL: &str = concat!(
        "SELECT ",
        member_columns!(),
        " FROM members WHERE org_id = $1 \
         AND ($2 IS NULL OR created_at > $2 OR (created_at = $2 AND id > $3)) \
         ORDER BY created_at, id LIMIT $4"
    );
    on_db!(db, |c| sqlx::query_as::<_, Member>(SQL)
        .bind(org_id)
        .bind(at)
        .bind(id)
        .bind(limit)
        .fetch_all(c)
        .await)
}

/// Write the editable fields of `m` (name, email, phone, kind, role, locale).
pub async fn update(tx: &mut Tx, m: &Member) -> Result<(), sqlx::Error> {
    on_tx!(tx, |c| {
        sqlx::query(
        "UPDATE members SET name = $1, email = $2, phone = $3, kind = $4, role = $5, locale = $6, updated_at = $7 \
         WHERE org_id = $8 AND id = $9"
    )
    .bind(&m.name)
    .bind(&m.email)
    .bind(&m.phone)
    .bind(&m.kind)
    .bind(&m.role)
    .bind(&m.locale)
    .bind(m.updated_at)
    .bind(&m.org_id)
    .bind(&m.id)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    tx.authz_changed(&m.org_id);
    Ok(())
}

/// Disable an active member that is not the super admin. Returns whether
/// this call changed it.
pub async fn disable(tx: &mut Tx, org_id: &str, id: &str, now: i64) -> Result<bool, sqlx::Error> {
    let n = on_tx!(tx, |c| sqlx::query(
        "UPDATE members SET status = 'disabled', disabled_at = $1, updated_at = $1 \
         WHERE org_id = $2 AND id = $3 AND status = 'active' AND kind <> 'super_admin'"
    )
    .bind(now)
    .bind(org_id)
    .bind(id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    if n == 1 {
        tx.authz_changed(org_id);
    }
    Ok(n == 1)
}

/// Enable a disabled member. Returns whether this call changed it.
pub async fn enable(tx: &mut Tx, org_id: &str, id: &str, now: i64) -> Result<bool, sqlx::Error> {
    let n = on_tx!(tx, |c| sqlx::query(
        "UPDATE members SET status = 'active', disabled_at = NULL, updated_at = $1 \
         WHERE org_id = $2 AND id = $3 AND status = 'disabled'"
    )
    .bind(now)
    .bind(org_id)
    .bind(id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    if n == 1 {
        tx.authz_changed(org_id);
    }
    Ok(n == 1)
}

/// Revoke every live review link this member holds (access stops at once).
/// Returns how many were revoked.
pub async fn revoke_review_tokens(
    tx: &mut Tx,
    member_id: &str,
    now: i64,
) -> Result<u64, sqlx::Error> {
    on_tx!(tx, |c| {
        sqlx::query(
        "UPDATE review_tokens SET revoked_at = $1 \
         WHERE reviewer_kind = 'member' AND reviewer_id = $2 AND revoked_at IS NULL AND used_at IS NULL"
    )
    .bind(now)
    .bind(member_id)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })
}

const FIND_STATUS: &str = "SELECT id, status FROM members WHERE org_id = $1 AND (id = $2 OR login_id = $2) \
     ORDER BY created_at LIMIT 1";

/// The id and status of the member `reference` names (as [`find`] finds
/// it), on the calling task when an inline connection is free (see
/// `db::inline`), else on the pool.
pub async fn find_status(
    db: &Db,
    inline: Option<&crate::db::inline::InlineReaders>,
    org_id: &str,
    reference: &str,
) -> Result<Option<(String, String)>, sqlx::Error> {
    let found = inline.and_then(|r| {
        r.read(|c| {
            crate::db::writer::query_opt(c, FIND_STATUS, &[&org_id, &reference], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
        })
    });
    match found {
        Some(found) => Ok(found),
        None => on_db!(db, |c| sqlx::query_as::<_, (String, String)>(FIND_STATUS)
            .bind(org_id)
            .bind(reference)
            .fetch_optional(c)
            .await),
    }
}
