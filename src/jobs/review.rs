//! The `review` job (DESIGN flow step 3): checks a submitted request, applies
//! its kind's policy, and either decides it at once or puts it in review with
//! reviewers assigned, their link mails queued and the SLA timers set.
//!
//! Idempotent: anything not `submitted` is skipped, and the move to
//! `in_review` is a conditional update, so a redelivered job changes nothing.
use anyhow::Context;
use approvald_workers::{Job, JobError, JobInfo, PushOptions};
use serde::{Deserialize, Serialize};

use crate::{
    app::App,
    db::Tx,
    domain::{
        catalog::{Policy, Reviewers, Scope},
        ids::Locale,
        request::RequestStatus,
    },
    jobs::{self, sla},
    mail::{EmailSpec, Recipient, ReviewerKind, ReviewerRef, Template},
    on_db, on_tx,
    store::reviewers::Authority,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReviewJob {
    pub request_id: String,
}

/// What the review job needs to know about a request.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RequestInfo {
    pub id: String,
    pub org_id: String,
    pub number: String,
    pub kind: String,
    pub requester_id: Option<String>,
    pub documents: String,
    pub status: String,
    pub sla_due_at: i64,
    pub created_at: i64,
    pub org_name: String,
    pub region: String,
}

pub async fn load_request(app: &App, id: &str) -> anyhow::Result<Option<RequestInfo>> {
    Ok(on_db!(&app.db, |p| {
        sqlx::query_as::<_, RequestInfo>(
        "SELECT r.id, r.org_id, r.number, r.kind, r.requester_id, r.documents, r.status, r.sla_due_at, \
                r.created_at, o.name AS org_name, o.region \
         FROM requests r JOIN orgs o ON o.id = r.org_id WHERE r.id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await
    })?)
}

/// A person asked to review.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReviewerRow {
    pub kind: String,
    pub id: String,
    pub email: String,
    pub name: String,
    pub locale: String,
}

impl ReviewerRow {
    pub fn recipient(&self) -> Recipient {
        Recipient {
            email: self.email.clone(),
            name: self.name.clone(),
            locale: Locale::or_en(&self.locale),
            reviewer: Some(ReviewerRef {
                kind: if self.kind == "member" {
                    ReviewerKind::Member
                } else {
                    ReviewerKind::Platform
                },
                id: self.id.clone(),
            }),
        }
    }
}

impl Job for ReviewJob {
    const NAME: &'static str = "review";
    const MAX_ATTEMPTS: u32 = 12;
    type Context = App;

    async fn run(self, app: App, _info: JobInfo) -> Result<(), JobError> {
        crate::audit::in_job(Self::NAME, review(&app, &self.request_id)).await
    }
}

/// Why the review job refused a request outright.
async fn auto_reject_reason(app: &App, req: &RequestInfo) -> anyhow::Result<Option<String>> {
    let Some(kind) = app.catalog.kind(&req.kind) else {
        return Ok(Some(format!(
            "permission kind {:?} is no longer offered",
            req.kind
        )));
    };
    if let Some(member) = &req.requester_id {
        let status: Option<String> = on_db!(&app.db, |p| sqlx::query_scalar(
            "SELECT status FROM members WHERE id = $1 AND org_id = $2"
        )
        .bind(member)
        .bind(&req.org_id)
        .fetch_optional(p)
        .await)?;
        if status.as_deref() != Some("active") {
            return Ok(Some(crate::jobs::decide::INACTIVE_MEMBER_REASON.into()));
        }
    } else if kind.scope == Scope::Member {
        return Ok(Some(
            "this permission is requested for a member; name the requester".into(),
        ));
    }
    let docs: Vec<serde_json::Value> = serde_json::from_str(&req.documents).unwrap_or_default();
    for needed in &kind.documents {
        let present = docs
            .iter()
            .any(|d| d.get("type").and_then(|t| t.as_str()) == Some(needed.as_str()));
        if !present {
            return Ok(Some(format!("required document missing: {needed}")));
        }
    }
    let member_key = if kind.scope == Scope::Member {
        req.requester_id.clone().unwrap_or_default()
    } else {
        String::new()
    };
    let granted: Option<String> = on_db!(&app.db, |p| {
        sqlx::query_scalar(
        "SELECT id FROM grants WHERE org_id = $1 AND kind = $2 AND member_id = $3 AND status = 'active'"
    )
    .bind(&req.org_id)
    .bind(&req.kind)
    .bind(&member_key)
    .fetch_optional(p)
    .await
    })?;
    if granted.is_some() {
        return Ok(Some("this permission is already granted".into()));
    }
    // An older open request for the same thing: this one is a duplicate.
    let dup: Option<String> = on_db!(&app.db, |p| sqlx::query_scalar(
        "SELECT number FROM requests WHERE org_id = $1 AND kind = $2 AND id <> $3 \
           AND status IN ('submitted', 'in_review') AND COALESCE(requester_id, '') = $4 \
           AND (created_at < $5 OR (created_at = $5 AND id < $3)) \
         ORDER BY created_at LIMIT 1"
    )
    .bind(&req.org_id)
    .bind(&req.kind)
    .bind(&req.id)
    .bind(req.requester_id.clone().unwrap_or_default())
    .bind(req.created_at)
    .fetch_optional(p)
    .await)?;
    if let Some(number) = dup {
        return Ok(Some(format!("duplicate of open request {number}")));
    }
    Ok(None)
}

/// What a reviewer of a `kind` request in `org_id` must be now: the rule
/// [`find_reviewers`] assigns by, re-applied whenever a review link is used
/// or mailed (the catalog may have moved the kind, the reviewer may have left
/// the group or lost the admin role since).
pub fn authority_for(app: &App, kind: &str, org_id: &str, requester_id: Option<&str>) -> Authority {
    match app.catalog.kind(kind).map(|k| &k.reviewers) {
        Some(Reviewers::Platform(group)) => Authority::PlatformGroup(group.clone()),
        Some(Reviewers::OrgAdmins) => Authority::OrgAdmin {
            org_id: org_id.to_string(),
            requester_id: requester_id.map(str::to_string),
        },
        None => Authority::Nobody,
    }
}

/// Who should review `req`. Nobody reviews their own request.
pub async fn find_reviewers(
    app: &App,
    req: &RequestInfo,
    who: &Reviewers,
) -> anyhow::Result<Vec<ReviewerRow>> {
    let rows = match who {
        Reviewers::Platform(group) => on_db!(&app.db, |p| sqlx::query_as::<_, ReviewerRow>(
            "SELECT 'platform' AS kind, r.id, r.email, r.name, r.locale FROM reviewers r \
             JOIN reviewer_groups g ON g.reviewer_id = r.id \
             WHERE g.grp = $1 AND r.status = 'active' ORDER BY r.created_at, r.id LIMIT 50"
        )
        .bind(group)
        .fetch_all(p)
        .await)?,
        Reviewers::OrgAdmins => on_db!(&app.db, |p| sqlx::query_as::<_, ReviewerRow>(
            "SELECT 'member' AS kind, id, email, name, locale FROM members \
             WHERE org_id = $1 AND status = 'active' AND kind IN ('super_admin', 'admin') \
               AND id <> $2 ORDER BY created_at, id LIMIT 50"
        )
        .bind(&req.org_id)
        .bind(req.requester_id.clone().unwrap_or_default())
        .fetch_all(p)
        .await)?,
    };
    Ok(rows)
}

pub async fn add_event(
    app: &App,
    tx: &mut Tx,
    request_id: &str,
    kind: &str,
    actor: Option<&str>,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    let id = uuid::Uuid::now_v7().to_string();
    let now = app.now_ms();
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO request_events (id, request_id, at, type, actor, detail) VALUES ($1, $2, $3, $4, $5, $6)"
    )
    .bind(&id)
    .bind(request_id)
    .bind(now)
    .bind(kind)
    .bind(actor)
    .bind(detail.to_string())
    .execute(c)
    .await
        .map(|r| r.rows_affected()))
    .context("writing request event")?;
    Ok(())
}

/// Drop member reviewers disabled since they were read, locking the others
/// (a no-op conditional update): a disable either committed first (the
/// member is not assigned) or waits for this transaction, and the cleanup
/// it queues then hands this review over.
async fn still_active(
    tx: &mut Tx,
    reviewers: Vec<ReviewerRow>,
) -> anyhow::Result<Vec<ReviewerRow>> {
    let mut out = Vec::with_capacity(reviewers.len());
    for r in reviewers {
        if r.kind == "member" {
            let live = on_tx!(tx, |c| sqlx::query(
                "UPDATE members SET updated_at = updated_at WHERE id = $1 AND status = 'active'"
            )
            .bind(&r.id)
            .execute(c)
            .await
            .map(|r| r.rows_affected()))
            .context("locking reviewer")?;
            if live == 0 {
                continue;
            }
        }
        out.push(r);
    }
    Ok(out)
}

async fn review(app: &App, request_id: &str) -> Result<(), JobError> {
    let Some(req) = load_request(app, request_id).await? else {
        return Err(JobError::permanent(anyhow::anyhow!(
            "request {request_id} does not exist"
        )));
    };
    if req.status != RequestStatus::Submitted.as_str() {
        tracing::debug!(request_id, status = %req.status, "review: not submitted, nothing to do");
        return Ok(());
    }
    if let Some(reason) = auto_reject_reason(app, &req).await? {
        crate::jobs::decide::system_decision(
            app,
            &req,
            crate::domain::request::Decision::Reject,
            &reason,
        )
        .await?;
        return Ok(());
    }
    let kind = app.catalog.kind(&req.kind).expect("checked above").clone();
    if kind.policy == Policy::AutoApprove {
        crate::jobs::decide::system_decision(
            app,
            &req,
            crate::domain::request::Decision::Approve,
            "approved automatically by policy",
        )
        .await?;
        return Ok(());
    }

    let reviewers = find_reviewers(app, &req, &kind.reviewers).await?;
    let now = app.now_ms();
    let reminder_at = sla::reminder_at(app, req.created_at.min(now), req.sla_due_at);
    let mut tx = app.db.begin().await.context("begin")?;
    let moved = on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE requests SET status = 'in_review', reminder_at = $2, updated_at = $3 \
         WHERE id = $1 AND status = 'submitted'"
    )
    .bind(&req.id)
    .bind(reminder_at)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .context("moving request to in_review")?;
    if moved == 0 {
        tx.rollback().await.ok();
        return Ok(());
    }
    let reviewers = still_active(&mut tx, reviewers).await?;
    let names: Vec<&str> = reviewers.iter().map(|r| r.name.as_str()).collect();
    crate::store::audit::operation(
        &mut tx,
        crate::store::audit::Operation {
            org_id: &req.org_id,
            actor: &crate::audit::current_actor(),
            action: "request.in_review",
            target: Some(&req.id),
            detail: serde_json::json!({
                "before": {"status": "submitted"},
                "after": {"status": "in_review", "reviewers": names},
            }),
            at: now,
        },
    )
    .await
    .context("auditing")?;
    add_event(
        app,
        &mut tx,
        &req.id,
        "in_review",
        Some("system"),
        serde_json::json!({"reviewers": names, "by": kind.reviewers.as_string()}),
    )
    .await?;
    if reviewers.is_empty() {
        tracing::warn!(request_id, reviewers = %kind.reviewers.as_string(), "no reviewer available; the SLA escalation will raise it");
        add_event(
            app,
            &mut tx,
            &req.id,
            "no_reviewers",
            Some("system"),
            serde_json::json!({"by": kind.reviewers.as_string()}),
        )
        .await?;
    }
    let title_params = |loc: Locale| serde_json::json!({"kind_title": kind.titles.get(loc)});
    for r in &reviewers {
        on_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO request_reviewers (request_id, reviewer_kind, reviewer_id, email, name, locale, assigned_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"
        )
        .bind(&req.id)
        .bind(&r.kind)
        .bind(&r.id)
        .bind(&r.email)
        .bind(&r.name)
        .bind(&r.locale)
        .bind(now)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .context("assigning reviewer")?;
        let recipient = r.recipient();
        let params = title_params(recipient.locale);
        crate::mail::queue_email(
            app,
            &mut tx,
            EmailSpec {
                template: Template::ReviewRequested,
                request_id: Some(req.id.clone()),
                to: recipient,
                params,
            },
        )
        .await?;
    }
    sla::arm_timers(app, &mut tx, &req.id, reminder_at, req.sla_due_at).await?;
    crate::webhooks::emit_request(app, &mut tx, &req.org_id, &req.id, "request.in_review", now)
        .await?;
    tx.commit().await.context("commit")?;
    tracing::info!(request_id, number = %req.number, kind = %req.kind, reviewers = reviewers.len(), "request in review");
    Ok(())
}

/// Push a review job for `request_id` again (the reconciler and `approvald
/// enqueue review` use this; the job is idempotent).
pub async fn requeue(app: &App, request_id: &str, dedupe: Option<String>) -> anyhow::Result<()> {
    let opts = PushOptions {
        dedupe_key: dedupe,
        ..PushOptions::default()
    };
    let mut tx = app.db.begin().await?;
    jobs::enqueue(
        app,
        &mut tx,
        &ReviewJob {
            request_id: request_id.to_string(),
        },
        opts,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
