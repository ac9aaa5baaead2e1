//! `reviewers` and `reviewer_groups`: platform reviewers, in groups that
//! catalog kinds name (`platform:<group>`); a `lead` of a group is one of its
//! escalation contacts.
use anyhow::Context;

use crate::{
    db::{Db, Tx, TxConn},
    mail::{ReviewerKind, ReviewerRef},
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

/// What a reviewer must be *now* to act on a request (a review link's power
/// is re-derived from this at every use, and before a link is mailed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authority {
    /// An active platform reviewer still in this group.
    PlatformGroup(String),
    /// An active super admin or admin of this org who is not the requester.
    OrgAdmin {
        org_id: String,
        requester_id: Option<String>,
    },
    /// Nobody (the kind left the catalog, or names the other kind of reviewer).
    Nobody,
}

/// Does `reviewer` hold `needed` now? A read: for pages that change nothing.
pub async fn holds(db: &Db, reviewer: &ReviewerRef, needed: &Authority) -> anyhow::Result<bool> {
    let n: i64 = match (reviewer.kind, needed) {
        (ReviewerKind::Platform, Authority::PlatformGroup(group)) => on_db!(db, |c| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM reviewers r JOIN reviewer_groups g ON g.reviewer_id = r.id \
                 WHERE r.id = $1 AND r.status = 'active' AND g.grp = $2",
            )
            .bind(&reviewer.id)
            .bind(group)
            .fetch_one(c)
            .await
        }),
        (
            ReviewerKind::Member,
            Authority::OrgAdmin {
                org_id,
                requester_id,
            },
        ) => on_db!(db, |c| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM members WHERE id = $1 AND org_id = $2 AND status = 'active' \
                   AND kind IN ('super_admin', 'admin') AND id <> $3",
            )
            .bind(&reviewer.id)
            .bind(org_id)
            .bind(requester_id.as_deref().unwrap_or(""))
            .fetch_one(c)
            .await
        }),
        _ => Ok(0),
    }
    .context("checking the reviewer's authority")?;
    Ok(n > 0)
}

const LOCK_GROUP_REVIEWER: &str = "UPDATE reviewers SET status = status WHERE id = $1 AND status = 'active' \
       AND EXISTS (SELECT 1 FROM reviewer_groups g WHERE g.reviewer_id = $1 AND g.grp = $2)";
const LOCK_ORG_ADMIN: &str = "UPDATE members SET updated_at = updated_at WHERE id = $1 AND org_id = $2 \
       AND status = 'active' AND kind IN ('super_admin', 'admin') AND id <> $3";

/// [`lock_if_holds`] on the SQLite writer's connection (`db::writer`),
/// whose transaction already holds the database's write lock.
pub fn holds_sync(
    c: &rusqlite::Connection,
    reviewer: &ReviewerRef,
    needed: &Authority,
) -> rusqlite::Result<bool> {
    let n = match (reviewer.kind, needed) {
        (ReviewerKind::Platform, Authority::PlatformGroup(group)) => {
            crate::db::writer::execute(c, LOCK_GROUP_REVIEWER, &[&reviewer.id, group])?
        }
        (
            ReviewerKind::Member,
            Authority::OrgAdmin {
                org_id,
                requester_id,
            },
        ) => crate::db::writer::execute(
            c,
            LOCK_ORG_ADMIN,
            &[&reviewer.id, org_id, &requester_id.as_deref().unwrap_or("")],
        )?,
        _ => 0,
    };
    Ok(n > 0)
}

/// The same checks on PostgreSQL, as a shared row lock: `FOR SHARE`
/// conflicts with every `UPDATE` of the row (a removal, a disable, a change
/// of kind) but not with another `FOR SHARE`, so the review jobs and
/// decisions of one reviewer no longer wait for each other; under READ
/// COMMITTED a row changed by a transaction that committed meanwhile is
/// checked again in its latest version. (A platform has a handful of
/// reviewers for thousands of requests: the no-op `UPDATE` took an
/// exclusive lock and wrote a row version per job, so every review job and
/// decision of a reviewer ran one after the other; the end-to-end benchmark
/// showed them queued on `Lock:transactionid` for its three reviewers.)
const SHARE_GROUP_REVIEWER: &str = "SELECT 1 FROM reviewers WHERE id = $1 AND status = 'active' \
       AND EXISTS (SELECT 1 FROM reviewer_groups g WHERE g.reviewer_id = $1 AND g.grp = $2) \
       FOR SHARE OF reviewers";
const SHARE_ORG_ADMIN: &str = "SELECT 1 FROM members WHERE id = $1 AND org_id = $2 \
       AND status = 'active' AND kind IN ('super_admin', 'admin') AND id <> $3 FOR SHARE";

/// [`holds`] inside a transaction that acts on it (a decision, a link being
/// issued): the reviewer's row is locked, so a demotion, disable or removal
/// committing meanwhile either happened before (no authority) or waits for
/// this transaction. PostgreSQL takes a shared lock (above); SQLite, whose
/// `BEGIN IMMEDIATE` already keeps every other writer out, a no-op
/// conditional update.
pub async fn lock_if_holds(
    tx: &mut Tx,
    reviewer: &ReviewerRef,
    needed: &Authority,
) -> anyhow::Result<bool> {
    let (share, update, args): (&str, &str, Vec<&str>) = match (reviewer.kind, needed) {
        (ReviewerKind::Platform, Authority::PlatformGroup(group)) => (
            SHARE_GROUP_REVIEWER,
            LOCK_GROUP_REVIEWER,
            vec![&reviewer.id, group],
        ),
        (
            ReviewerKind::Member,
            Authority::OrgAdmin {
                org_id,
                requester_id,
            },
        ) => (
            SHARE_ORG_ADMIN,
            LOCK_ORG_ADMIN,
            vec![&reviewer.id, org_id, requester_id.as_deref().unwrap_or("")],
        ),
        _ => return Ok(false),
    };
    let held = match &mut tx.conn {
        TxConn::Postgres(t) => {
            let mut q = sqlx::query_scalar::<_, i32>(share);
            for a in &args {
                q = q.bind(*a);
            }
            q.fetch_optional(&mut **t).await.map(|r| r.is_some())
        }
        TxConn::Sqlite(t) => {
            let mut q = sqlx::query(update);
            for a in &args {
                q = q.bind(*a);
            }
            q.execute(&mut **t).await.map(|r| r.rows_affected() > 0)
        }
    };
    held.context("locking the reviewer")
}
