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
    db::{
        Tx,
        writer::{execute, query_all, query_opt},
    },
    domain::{
        catalog::{PermissionKind, Policy, Reviewers, Scope},
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

const LOAD_REQUEST: &str = "SELECT r.id, r.org_id, r.number, r.kind, r.requester_id, r.documents, r.status, r.sla_due_at, \
            r.created_at, o.name AS org_name, o.region \
     FROM requests r JOIN orgs o ON o.id = r.org_id WHERE r.id = $1";
const MEMBER_STATUS: &str = "SELECT status FROM members WHERE id = $1 AND org_id = $2";
const ACTIVE_GRANT: &str = "SELECT id FROM grants WHERE org_id = $1 AND kind = $2 AND member_id = $3 AND status = 'active'";
/// An older open request for the same thing (this one is then a duplicate).
const OLDER_OPEN: &str = "SELECT number FROM requests WHERE org_id = $1 AND kind = $2 AND id <> $3 \
       AND status IN ('submitted', 'in_review') AND COALESCE(requester_id, '') = $4 \
       AND (created_at < $5 OR (created_at = $5 AND id < $3)) \
     ORDER BY created_at LIMIT 1";
const PLATFORM_REVIEWERS: &str = "SELECT 'platform' AS kind, r.id, r.email, r.name, r.locale FROM reviewers r \
     JOIN reviewer_groups g ON g.reviewer_id = r.id \
     WHERE g.grp = $1 AND r.status = 'active' ORDER BY r.created_at, r.id LIMIT 50";
const ORG_ADMIN_REVIEWERS: &str = "SELECT 'member' AS kind, id, email, name, locale FROM members \
     WHERE org_id = $1 AND status = 'active' AND kind IN ('super_admin', 'admin') \
       AND id <> $2 ORDER BY created_at, id LIMIT 50";
const MOVE_TO_REVIEW: &str = "UPDATE requests SET status = 'in_review', reminder_at = $2, updated_at = $3 \
     WHERE id = $1 AND status = 'submitted'";
const ASSIGN_REVIEWER: &str = "INSERT INTO request_reviewers (request_id, reviewer_kind, reviewer_id, email, name, locale, assigned_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING";

pub async fn load_request(app: &App, id: &str) -> anyhow::Result<Option<RequestInfo>> {
    Ok(on_db!(&app.db, |p| {
        sqlx::query_as::<_, RequestInfo>(LOAD_REQUEST)
            .bind(id)
            .fetch_optional(p)
            .await
    })?)
}

impl RequestInfo {
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get("id")?,
            org_id: r.get("org_id")?,
            number: r.get("number")?,
            kind: r.get("kind")?,
            requester_id: r.get("requester_id")?,
            documents: r.get("documents")?,
            status: r.get("status")?,
            sla_due_at: r.get("sla_due_at")?,
            created_at: r.get("created_at")?,
            org_name: r.get("org_name")?,
            region: r.get("region")?,
        })
    }
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
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            kind: r.get("kind")?,
            id: r.get("id")?,
            email: r.get("email")?,
            name: r.get("name")?,
            locale: r.get("locale")?,
        })
    }

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
        crate::audit::in_job(Self::NAME, async {
            if let Some(w) = &app.writer
                && review_on_writer(&app, w, &self.request_id).await?
            {
                return Ok(());
            }
            review(&app, &self.request_id).await
        })
        .await
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
        let status: Option<String> = on_db!(&app.db, |p| sqlx::query_scalar(MEMBER_STATUS)
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
    if let Some(needed) = missing_document(kind, &req.documents) {
        return Ok(Some(format!("required document missing: {needed}")));
    }
    let member_key = grant_member(kind, req);
    let granted: Option<String> = on_db!(&app.db, |p| {
        sqlx::query_scalar(ACTIVE_GRANT)
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
    let dup: Option<String> = on_db!(&app.db, |p| sqlx::query_scalar(OLDER_OPEN)
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

/// The first document type `kind` needs that `documents` (the request's
/// JSON array) lacks.
fn missing_document<'k>(kind: &'k PermissionKind, documents: &str) -> Option<&'k str> {
    let docs: Vec<serde_json::Value> = serde_json::from_str(documents).unwrap_or_default();
    kind.documents.iter().map(String::as_str).find(|needed| {
        !docs
            .iter()
            .any(|d| d.get("type").and_then(|t| t.as_str()) == Some(*needed))
    })
}

/// Whose grant of `kind` would make `req` pointless (`""`: the org's).
fn grant_member(kind: &PermissionKind, req: &RequestInfo) -> String {
    if kind.scope == Scope::Member {
        req.requester_id.clone().unwrap_or_default()
    } else {
        String::new()
    }
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
            PLATFORM_REVIEWERS
        )
        .bind(group)
        .fetch_all(p)
        .await)?,
        Reviewers::OrgAdmins => on_db!(&app.db, |p| sqlx::query_as::<_, ReviewerRow>(
            ORG_ADMIN_REVIEWERS
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

/// What moving a request into review writes besides its status, the same
/// on both write paths.
struct Assignment<'a> {
    req: &'a RequestInfo,
    kind: &'a PermissionKind,
    reviewers: Vec<ReviewerRow>,
    now: i64,
}

impl Assignment<'_> {
    fn names(&self) -> Vec<&str> {
        self.reviewers.iter().map(|r| r.name.as_str()).collect()
    }

    fn audit<'s>(&'s self, actor: &'s str) -> crate::store::audit::Operation<'s> {
        crate::store::audit::Operation {
            org_id: &self.req.org_id,
            actor,
            action: "request.in_review",
            target: Some(&self.req.id),
            detail: serde_json::json!({
                "before": {"status": "submitted"},
                "after": {"status": "in_review", "reviewers": self.names()},
            }),
            at: self.now,
        }
    }

    /// The request's events: `in_review`, and `no_reviewers` when nobody
    /// could be assigned (the SLA escalation raises it).
    fn events(&self) -> Vec<(&'static str, serde_json::Value)> {
        let by = self.kind.reviewers.as_string();
        let mut out = vec![(
            "in_review",
            serde_json::json!({"reviewers": self.names(), "by": by}),
        )];
        if self.reviewers.is_empty() {
            tracing::warn!(request_id = %self.req.id, reviewers = %by, "no reviewer available; the SLA escalation will raise it");
            out.push(("no_reviewers", serde_json::json!({"by": by})));
        }
        out
    }

    /// The link mail to reviewer `r`.
    fn mail(&self, r: &ReviewerRow) -> EmailSpec {
        let to = r.recipient();
        let params = serde_json::json!({"kind_title": self.kind.titles.get(to.locale)});
        EmailSpec {
            template: Template::ReviewRequested,
            request_id: Some(self.req.id.clone()),
            to,
            params,
        }
    }

    /// What the log says once the request is in review (after the commit,
    /// on the job's task).
    fn done(&self) -> InReview {
        InReview {
            number: self.req.number.clone(),
            kind: self.req.kind.clone(),
            reviewers: self.reviewers.len(),
        }
    }
}

struct InReview {
    number: String,
    kind: String,
    reviewers: usize,
}

impl InReview {
    fn log(&self, request_id: &str) {
        tracing::info!(request_id, number = %self.number, kind = %self.kind, reviewers = self.reviewers, "request in review");
    }
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
    let moved = on_tx!(&mut tx, |c| sqlx::query(MOVE_TO_REVIEW)
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
    let a = Assignment {
        req: &req,
        kind: &kind,
        reviewers: still_active(&mut tx, reviewers).await?,
        now,
    };
    crate::store::audit::operation(&mut tx, a.audit(&crate::audit::current_actor()))
        .await
        .context("auditing")?;
    for (event, detail) in a.events() {
        add_event(app, &mut tx, &req.id, event, Some("system"), detail).await?;
    }
    for r in &a.reviewers {
        on_tx!(&mut tx, |c| sqlx::query(ASSIGN_REVIEWER)
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
        crate::mail::queue_email(app, &mut tx, a.mail(r)).await?;
    }
    sla::arm_timers(app, &mut tx, &req.id, reminder_at, req.sla_due_at).await?;
    crate::webhooks::emit_request(app, &mut tx, &req.org_id, &req.id, "request.in_review", now)
        .await?;
    tx.commit().await.context("commit")?;
    a.done().log(&req.id);
    Ok(())
}

/// The review of the embedded profile's common case, as one unit of work
/// on the SQLite writer's thread (`db::writer`, as a submission is):
/// a `submitted` request of a manual kind that nothing refuses and no
/// webhook endpoint watches goes into review with the same rows as
/// [`review`] writes, its reads and writes in one transaction instead of
/// about twenty hand-overs to the pool's connection threads. Returns false
/// when it wrote nothing and [`review`] must run (anything else: a missing
/// request, one no longer submitted, an automatic decision, a webhook).
///
/// The writer's transaction holds SQLite's write lock from its first
/// statement, so the reviewers it reads as active stay so until it
/// commits: no lock-taking no-op updates as [`still_active`] needs on
/// PostgreSQL.
async fn review_on_writer(
    app: &App,
    writer: &crate::db::writer::Writer,
    request_id: &str,
) -> anyhow::Result<bool> {
    let actor = crate::audit::current_actor();
    let now = app.now_ms();
    let (app2, id) = (app.clone(), request_id.to_string());
    let unit = move |c: &rusqlite::Connection| -> anyhow::Result<Option<InReview>> {
        let app = &app2;
        let Some(req) = query_opt(c, LOAD_REQUEST, &[&id], RequestInfo::from_sqlite)? else {
            return Ok(None);
        };
        let Some(kind) = app.catalog.kind(&req.kind) else {
            return Ok(None);
        };
        if req.status != RequestStatus::Submitted.as_str()
            || kind.policy != Policy::Manual
            || missing_document(kind, &req.documents).is_some()
        {
            return Ok(None);
        }
        match &req.requester_id {
            Some(member) => {
                let status: Option<String> =
                    query_opt(c, MEMBER_STATUS, &[member, &req.org_id], |r| r.get(0))?;
                if status.as_deref() != Some("active") {
                    return Ok(None);
                }
            }
            None if kind.scope == Scope::Member => return Ok(None),
            None => {}
        }
        let member_key = grant_member(kind, &req);
        let requester = req.requester_id.clone().unwrap_or_default();
        if query_opt(
            c,
            ACTIVE_GRANT,
            &[&req.org_id, &req.kind, &member_key],
            |_| Ok(()),
        )?
        .is_some()
            || query_opt(
                c,
                OLDER_OPEN,
                &[&req.org_id, &req.kind, &req.id, &requester, &req.created_at],
                |_| Ok(()),
            )?
            .is_some()
            || crate::webhooks::wanted_sync(c, &req.org_id, "request.in_review")?
        {
            return Ok(None);
        }
        let reviewers = match &kind.reviewers {
            Reviewers::Platform(group) => {
                query_all(c, PLATFORM_REVIEWERS, &[group], ReviewerRow::from_sqlite)?
            }
            Reviewers::OrgAdmins => query_all(
                c,
                ORG_ADMIN_REVIEWERS,
                &[&req.org_id, &requester],
                ReviewerRow::from_sqlite,
            )?,
        };
        let reminder_at = sla::reminder_at(app, req.created_at.min(now), req.sla_due_at);
        if execute(c, MOVE_TO_REVIEW, &[&req.id, &reminder_at, &now])? == 0 {
            return Ok(None);
        }
        let a = Assignment {
            req: &req,
            kind,
            reviewers,
            now,
        };
        crate::store::audit::operation_sync(c, a.audit(&actor), None)?;
        for (event, detail) in a.events() {
            crate::store::requests::add_event_sync(
                c,
                &req.id,
                event,
                Some("system"),
                &detail,
                now,
            )?;
        }
        for r in &a.reviewers {
            execute(
                c,
                ASSIGN_REVIEWER,
                &[&req.id, &r.kind, &r.id, &r.email, &r.name, &r.locale, &now],
            )?;
            crate::mail::queue_email_sync(app, c, a.mail(r), now)?;
        }
        sla::arm_timers_sync(app, c, &req.id, reminder_at, req.sla_due_at, now)?;
        Ok(Some(a.done()))
    };
    let Some(done) = writer
        .run_background(unit)
        .await
        .context("reviewing on the SQLite writer")?
    else {
        return Ok(false);
    };
    if let Some(pool) = app.db.sqlite_pool() {
        for queue in [crate::jobs::notify::NotifyJob::NAME, sla::SlaJob::NAME] {
            approvald_workers::store::sqlite::notify_pushed(pool, queue);
        }
    }
    done.log(request_id);
    Ok(true)
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
