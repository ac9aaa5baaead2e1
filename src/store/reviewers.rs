//! `reviewers` and `reviewer_groups`: platform reviewers, in groups that
//! catalog kinds name (`platform:<group>`); a `lead` of a group is one of its
//! escalation contacts.
use crate::{
    db::{Db, Tx},
    on_db, on_tx,
};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Reviewer {
    pub id: String,
    pub email: String,
    pub name: String,
    pub locale: String,
    pub status: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Membership {
    pub grp: String,
    pub lead: bool,
}

/// Insert the reviewer and its group rows. A second reviewer with the same
/// email is a unique violation.
pub async fn insert(tx: &mut Tx, r: &Reviewer, groups: &[Membership]) -> Result<(), sqlx::Error> {
    on_tx!(tx, |c| {
        sqlx::query(
        "INSERT INTO reviewers (id, email, name, locale, status, created_at) VALUES ($1, $2, $3, $4, $5, $6)"
    )
    .bind(&r.id)
    .bind(&r.email)
    .bind(&r.name)
    .bind(&r.locale)
    .bind(&r.status)
    .bind(r.created_at)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    for g in groups {
        on_tx!(tx, |c| sqlx::query(
            "INSERT INTO reviewer_groups (reviewer_id, grp, lead) VALUES ($1, $2, $3)"
        )
        .bind(&r.id)
        .bind(&g.grp)
        .bind(g.lead)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
    }
    Ok(())
}

pub async fn get(db: &Db, id: &str) -> Result<Option<(Reviewer, Vec<Membership>)>, sqlx::Error> {
    let r = on_db!(db, |c| sqlx::query_as::<_, Reviewer>(
        "SELECT id, email, name, locale, status, created_at FROM reviewers WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(c)
    .await)?;
    let Some(r) = r else { return Ok(None) };
    let groups = on_db!(db, |c| sqlx::query_as::<_, Membership>(
        "SELECT grp, lead FROM reviewer_groups WHERE reviewer_id = $1 ORDER BY grp"
    )
    .bind(id)
    .fetch_all(c)
    .await)?;
    Ok(Some((r, groups)))
}
