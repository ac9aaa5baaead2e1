//! `roles`: an org's roles, each a [`RoleSpec`] stored as JSON.
use crate::{
    db::{Db, Tx},
    domain::role::{BUILTIN, RoleSpec},
    on_db, on_tx,
};

#[derive(Debug, Clone)]
pub struct Role {
    pub org_id: String,
    pub name: String,
    pub spec: RoleSpec,
    pub updated_at: i64,
    /// How many members (active or disabled) hold it.
    pub members: i64,
}

type Row = (String, String, String, i64, i64);

fn decode(spec: &str) -> Result<RoleSpec, sqlx::Error> {
    serde_json::from_str(spec).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn role((org_id, name, spec, updated_at, members): Row) -> Result<Role, sqlx::Error> {
    Ok(Role {
        org_id,
        name,
        spec: decode(&spec)?,
        updated_at,
        members,
    })
}

/// The columns of a [`Row`], for `concat!` into static query text.
macro_rules! role_select {
    () => {
        "SELECT r.org_id, r.name, r.spec, r.updated_at, \
         (SELECT COUNT(*) FROM members m WHERE m.org_id = r.org_id AND m.role = r.name) \
         FROM roles r"
    };
}

/// The role spec of a member's role, read in the caller's transaction: `None`
/// when the member does not exist, holds no role, or holds a name with no role.
pub async fn spec_for_member(
    tx: &mut Tx,
    org_id: &str,
    member_id: &str,
) -> Result<Option<RoleSpec>, sqlx::Error> {
    let spec: Option<String> = on_tx!(tx, |c| sqlx::query_scalar::<_, String>(
        "SELECT r.spec FROM members m JOIN roles r ON r.org_id = m.org_id AND r.name = m.role \
         WHERE m.org_id = $1 AND m.id = $2"
    )
    .bind(org_id)
    .bind(member_id)
    .fetch_optional(c)
    .await)?;
    spec.as_deref().map(decode).transpose()
}

/// Create the built-in roles of a new org (in its creating transaction).
pub async fn insert_builtins(tx: &mut Tx, org_id: &str, now: i64) -> Result<(), sqlx::Error> {
    for name in BUILTIN {
        let spec = RoleSpec::builtin(name).expect("built-in role");
        put(tx, org_id, name, &spec, now).await?;
    }
    Ok(())
}

/// Create or replace a role.
pub async fn put(
    tx: &mut Tx,
    org_id: &str,
    name: &str,
    spec: &RoleSpec,
    now: i64,
) -> Result<(), sqlx::Error> {
    let json = spec.to_json();
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO roles (org_id, name, spec, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (org_id, name) DO UPDATE SET spec = $3, updated_at = $4"
    )
    .bind(org_id)
    .bind(name)
    .bind(&json)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    tx.authz_changed(org_id);
    Ok(())
}

pub async fn get_tx(tx: &mut Tx, org_id: &str, name: &str) -> Result<Option<Role>, sqlx::Error> {
    const SQL: &str = concat!(role_select!(), " WHERE r.org_id = $1 AND r.name = $2");
    let row: Option<Row> = on_tx!(tx, |c| sqlx::query_as::<_, Row>(SQL)
        .bind(org_id)
        .bind(name)
        .fetch_optional(c)
        .await)?;
    row.map(role).transpose()
}

pub async fn get(db: &Db, org_id: &str, name: &str) -> Result<Option<Role>, sqlx::Error> {
    const SQL: &str = concat!(role_select!(), " WHERE r.org_id = $1 AND r.name = $2");
    let row: Option<Row> = on_db!(db, |c| sqlx::query_as::<_, Row>(SQL)
        .bind(org_id)
        .bind(name)
        .fetch_optional(c)
        .await)?;
    row.map(role).transpose()
}

/// Every role of the org, by name.
pub async fn list(db: &Db, org_id: &str) -> Result<Vec<Role>, sqlx::Error> {
    const SQL: &str = concat!(role_select!(), " WHERE r.org_id = $1 ORDER BY r.name");
    let rows: Vec<Row> = on_db!(db, |c| sqlx::query_as::<_, Row>(SQL)
        .bind(org_id)
        .fetch_all(c)
        .await)?;
    rows.into_iter().map(role).collect()
}

/// Does the org have a role of this name?
pub async fn exists(tx: &mut Tx, org_id: &str, name: &str) -> Result<bool, sqlx::Error> {
    let n = on_tx!(tx, |c| sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM roles WHERE org_id = $1 AND name = $2"
    )
    .bind(org_id)
    .bind(name)
    .fetch_one(c)
    .await)?;
    Ok(n > 0)
}

/// Delete a role no member holds. Returns whether it was deleted.
pub async fn delete_unused(tx: &mut Tx, org_id: &str, name: &str) -> Result<bool, sqlx::Error> {
    let n = on_tx!(tx, |c| sqlx::query(
        "DELETE FROM roles WHERE org_id = $1 AND name = $2 \
         AND NOT EXISTS (SELECT 1 FROM members m WHERE m.org_id = $1 AND m.role = $2)"
    )
    .bind(org_id)
    .bind(name)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    if n == 1 {
        tx.authz_changed(org_id);
    }
    Ok(n == 1)
}

/// What an authorization check needs to know about a member, as last committed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MemberFacts {
    pub id: String,
    pub login_id: String,
    pub kind: String,
    pub status: String,
    pub role: Option<String>,
    /// The role's spec (JSON); `None` without a role.
    pub spec: Option<String>,
    /// The member-level payment override (`member_payment`), if any.
    pub mp_active: Option<bool>,
    pub mp_allowed: Option<bool>,
}

impl MemberFacts {
    pub fn role_spec(&self) -> Result<Option<RoleSpec>, sqlx::Error> {
        self.spec.as_deref().map(decode).transpose()
    }

    /// The member-level payment permission in force, if any: allowed by an
    /// approved `payment_permission` request, or turned off by the cleanup
    /// of a disable. `None`: the role decides (no row, or an ended one).
    pub fn member_payment(&self) -> Option<bool> {
        match self.mp_active {
            Some(true) => Some(self.mp_allowed.unwrap_or(false)),
            _ => None,
        }
    }
}

/// The org's member whose id or login id is `reference`, with its role's
/// spec and its member-level payment override, in one query.
pub async fn member_facts(
    db: &Db,
    org_id: &str,
    reference: &str,
) -> Result<Option<MemberFacts>, sqlx::Error> {
    on_db!(db, |c| sqlx::query_as::<_, MemberFacts>(
        "SELECT m.id, m.login_id, m.kind, m.status, m.role, r.spec, \
         mp.active AS mp_active, mp.allowed AS mp_allowed FROM members m \
         LEFT JOIN roles r ON r.org_id = m.org_id AND r.name = m.role \
         LEFT JOIN member_payment mp ON mp.member_id = m.id \
         WHERE m.org_id = $1 AND (m.id = $2 OR m.login_id = $2) \
         ORDER BY m.created_at LIMIT 1"
    )
    .bind(org_id)
    .bind(reference)
    .fetch_optional(c)
    .await)
}

/// The permission kinds the whole org holds an active grant of.
pub async fn org_granted_kinds(db: &Db, org_id: &str) -> Result<Vec<String>, sqlx::Error> {
    on_db!(db, |c| sqlx::query_scalar::<_, String>(
        "SELECT kind FROM grants WHERE org_id = $1 AND member_id = '' AND status = 'active'"
    )
    .bind(org_id)
    .fetch_all(c)
    .await)
}
