//! Disabling and enabling a member (DESIGN "Disabling a member").
//!
//! `disable` is one transaction: the member's status, their review links,
//! the mail to the org's other admins, an audit row, and the
//! [`member_cleanups`](crate::jobs::cleanup) row with its `cleanup` job. From
//! its commit every authz check, payment and review-link use of theirs is
//! denied; the job finishes the rest.
//!
//! `enable` gives access back and nothing else: what a cleanup cancelled,
//! handed over or revoked stays so. A cleanup still running when the member
//! is enabled carries on to the end, acting only on what existed before the
//! enable (requests submitted, reviews assigned, grants given and links
//! issued): for those the outcome is the same whichever of the two finishes
//! first, and what the member does after the enable is left alone.
use anyhow::Context;
use approvald_workers::PushOptions;
use serde_json::json;

use crate::{
    app::App,
    db::Tx,
    jobs::{self, cleanup::CleanupJob},
    mail::{self, EmailSpec, Recipient, Template},
    on_tx,
    store::{self, audit, members::Member},
};

/// What a disable did.
#[derive(Debug, Clone)]
pub struct Disabled {
    /// The cleanup queued by this call (`None`: the member was already
    /// disabled and nothing changed).
    pub cleanup_id: Option<String>,
    pub review_links_revoked: u64,
}

/// The dedupe key of the cleanup job of one disable: one job per member and
/// disable, also when the sweep pushes it again.
pub fn cleanup_dedupe_key(member_id: &str, disabled_at: i64) -> String {
    format!("cleanup:{member_id}:{disabled_at}")
}

/// Disable `m` in `tx` (the caller has applied the actor rules and commits).
/// Disabling a disabled member changes nothing.
pub async fn disable(
    app: &App,
    tx: &mut Tx,
    m: &Member,
    actor: &str,
    now: i64,
) -> anyhow::Result<Disabled> {
    if !store::members::disable(tx, &m.org_id, &m.id, now)
        .await
        .context("disabling member")?
    {
        return Ok(Disabled {
            cleanup_id: None,
            review_links_revoked: 0,
        });
    }
    let revoked = store::members::revoke_review_tokens(tx, &m.id, now)
        .await
        .context("revoking review links")?;
    let cleanup_id = uuid::Uuid::now_v7().to_string();
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO member_cleanups (id, org_id, member_id, disabled_at, actor, created_at) \
         VALUES ($1, $2, $3, $4, $5, $4)"
    )
    .bind(&cleanup_id)
    .bind(&m.org_id)
    .bind(&m.id)
    .bind(now)
    .bind(actor)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .context("recording the cleanup")?;
    jobs::enqueue(
        app,
        tx,
        &CleanupJob {
            cleanup_id: cleanup_id.clone(),
        },
        PushOptions::default().dedupe(cleanup_dedupe_key(&m.id, now)),
    )
    .await?;
    audit::operation(
        tx,
        audit::Operation {
            org_id: &m.org_id,
            actor,
            action: "member.disable",
            target: Some(&m.id),
            detail: json!({
                "login_id": m.login_id,
                "review_tokens_revoked": revoked,
                "cleanup_id": cleanup_id,
                "before": {"status": m.status},
                "after": {"status": store::members::DISABLED},
            }),
            at: now,
        },
    )
    .await
    .context("auditing the disable")?;
    notify_admins(app, tx, m, now).await?;
    Ok(Disabled {
        cleanup_id: Some(cleanup_id),
        review_links_revoked: revoked,
    })
}

/// Tell the org's other active admins that `m` was disabled (one mail per
/// admin per disable).
async fn notify_admins(app: &App, tx: &mut Tx, m: &Member, now: i64) -> anyhow::Result<()> {
    let admins: Vec<(String, String, String)> = on_tx!(tx, |c| sqlx::query_as(
        "SELECT email, name, locale FROM members \
         WHERE org_id = $1 AND status = 'active' AND kind IN ('super_admin', 'admin') AND id <> $2 \
         ORDER BY created_at LIMIT 50"
    )
    .bind(&m.org_id)
    .bind(&m.id)
    .fetch_all(c)
    .await)?;
    for (email, name, locale) in admins {
        mail::queue_email(
            app,
            tx,
            EmailSpec {
                template: Template::MemberDisabled,
                request_id: None,
                to: Recipient {
                    email,
                    name,
                    locale: crate::domain::ids::Locale::or_en(&locale),
                    reviewer: None,
                },
                params: json!({
                    "dedupe": format!("member-disabled:{}:{now}", m.id),
                    "org_id": m.org_id,
                    "member_name": m.name,
                    "member_login": m.login_id,
                }),
            },
        )
        .await?;
    }
    Ok(())
}

/// Enable a disabled member (the caller checked the member limit and
/// commits). Returns whether this call changed it. Access only: nothing the
/// cleanup cancelled, handed over or revoked comes back.
pub async fn enable(tx: &mut Tx, m: &Member, actor: &str, now: i64) -> anyhow::Result<bool> {
    // A cleanup of the last disable may still be running: it carries on,
    // bounded by this instant (see the module docs). Its row is locked
    // before the member's, the order the cleanup's steps take too.
    let open = on_tx!(tx, |c| sqlx::query(
        "UPDATE member_cleanups SET enabled_at = $2 \
         WHERE member_id = $1 AND completed_at IS NULL AND enabled_at IS NULL"
    )
    .bind(&m.id)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .context("bounding the running cleanup")?;
    if !store::members::enable(tx, &m.org_id, &m.id, now)
        .await
        .context("enabling member")?
    {
        // Enabled meanwhile by a concurrent call, which bounded the
        // cleanup first (this update then matched nothing).
        return Ok(false);
    }
    audit::operation(
        tx,
        audit::Operation {
            org_id: &m.org_id,
            actor,
            action: "member.enable",
            target: Some(&m.id),
            detail: json!({
                "login_id": m.login_id,
                "cleanups_running": open,
                "before": {"status": m.status},
                "after": {"status": store::members::ACTIVE},
            }),
            at: now,
        },
    )
    .await
    .context("auditing the enable")?;
    Ok(true)
}
