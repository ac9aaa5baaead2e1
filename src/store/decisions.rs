//! Deciding a request (DESIGN flow steps 5-6, invariant 2): one transaction
//! with a conditional update, so exactly one decision wins under any
//! concurrency. Used by the review page (a reviewer's link), by the review
//! job (policy and refusals) and by the SLA job (auto-reject).
use anyhow::Context;
use serde_json::json;

use crate::{
    app::App,
    db::{Db, Tx},
    domain::{
        catalog::Scope,
        ids::{Locale, parse_text},
        request::{Decision, RequestStatus},
    },
    mail::{EmailSpec, Recipient, ReviewerKind, Template},
    on_db, on_tx,
    store::{requests::add_event, tokens},
};

/// Longest reviewer comment, in characters.
pub const MAX_COMMENT: usize = 2000;

/// Display name of system decisions.
pub const SYSTEM: &str = "system";

/// Who decides.
#[derive(Debug, Clone)]
pub enum Decider {
    /// approvald itself: policy auto-approve, the review job's refusals, SLA auto-reject.
    System,
    /// A reviewer acting through a review link.
    Reviewer(ReviewerDecider),
}

#[derive(Debug, Clone)]
pub struct ReviewerDecider {
    pub kind: ReviewerKind,
    pub id: String,
    /// Shown as "decided by".
    pub name: String,
    /// The link token's hash: it is marked used in the deciding transaction
    /// and the decision fails if it is no longer live.
    pub token_hash: Option<String>,
}

impl Decider {
    fn name(&self) -> &str {
        match self {
            Decider::System => SYSTEM,
            Decider::Reviewer(r) => &r.name,
        }
    }
    fn id(&self) -> String {
        match self {
            Decider::System => SYSTEM.to_string(),
            Decider::Reviewer(r) => format!("{}:{}", r.kind.as_str(), r.id),
        }
    }
    /// The audit actor: `reviewer:<id>` (platform reviewer), `member:<id>`,
    /// or for the system whoever runs it (`job:<name>`).
    fn audit_actor(&self) -> String {
        match self {
            Decider::System => crate::audit::current_actor(),
            Decider::Reviewer(r) => reviewer_actor(r.kind, &r.id),
        }
    }
}

/// The audit actor of a reviewer acting through a review link.
pub fn reviewer_actor(kind: ReviewerKind, id: &str) -> String {
    match kind {
        ReviewerKind::Platform => format!("reviewer:{id}"),
        ReviewerKind::Member => format!("member:{id}"),
    }
}

/// A decision that was made by this call.
#[derive(Debug, Clone)]
pub struct Decided {
    pub request_id: String,
    pub status: RequestStatus,
    pub decided_by: String,
    pub decided_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// Somebody decided (or cancelled) it first; `status` says how.
    #[error("already {} by {by} at {at}", status.as_str())]
    AlreadyDecided {
        by: String,
        at: i64,
        status: RequestStatus,
    },
    #[error("no such request")]
    NotFound,
    #[error("nobody reviews their own request")]
    SelfReview,
    /// A reviewer tried to decide a request that is not in review yet.
    #[error("the request is not in review")]
    NotInReview,
    /// The link token was used, revoked or expired meanwhile.
    #[error("the review link is no longer valid")]
    LinkInvalid,
    /// Rejections need a reason; comments have a size limit.
    #[error("{0}")]
    BadComment(String),
    /// The reviewer no longer holds the authority the link was sent for
    /// (left the reviewing group, no longer an admin, removed or disabled).
    #[error("the reviewer may no longer review this request")]
    NoAuthority,
    /// Approval would grant to a member who is not active (the requester,
    /// or the member the grant is for). Nothing changed; an
    /// `approval_refused` event records the attempt. Rejecting still works.
    #[error("member {member_id} is not active; the request cannot be approved")]
    MemberInactive { member_id: String },
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// The parts of a request deciding needs.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    id: String,
    org_id: String,
    kind: String,
    requester_id: Option<String>,
    status: String,
    decided_by: Option<String>,
    decided_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

async fn load_row(tx: &mut Tx, id: &str) -> anyhow::Result<Option<Row>> {
    on_tx!(tx, |c| sqlx::query_as::<_, Row>(
        "SELECT id, org_id, kind, requester_id, status, decided_by, decided_at, created_at, updated_at \
         FROM requests WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(c)
    .await)
    .context("loading request")
}

fn closed(row: &Row) -> Option<DecideError> {
    let status = RequestStatus::parse(&row.status)?;
    status.is_terminal().then(|| DecideError::AlreadyDecided {
        by: row.decided_by.clone().unwrap_or_else(|| SYSTEM.to_string()),
        at: row.decided_at.unwrap_or(row.updated_at),
        status,
    })
}

/// Decide `request_id`. A reviewer may decide only a request `in_review`;
/// the system also one still `submitted`. `comment` is required to reject.
pub async fn decide(
    app: &App,
    request_id: &str,
    decider: Decider,
    decision: Decision,
    comment: &str,
) -> Result<Decided, DecideError> {
    let comment = parse_text(
        "comment",
        comment,
        MAX_COMMENT,
        decision == Decision::Reject,
    )
    .map_err(|e| DecideError::BadComment(e.to_string()))?;
    let mut tx = app.db.begin().await.context("begin")?;
    let res = decide_in(app, &mut tx, request_id, &decider, decision, &comment).await;
    if let Err(DecideError::MemberInactive { member_id }) = &res {
        tx.rollback().await.ok();
        record_refused_approval(app, request_id, &decider, member_id).await?;
        tracing::warn!(request_id, member_id = %member_id, by = %decider.id(), "approval refused: the member is not active");
        return Err(DecideError::MemberInactive {
            member_id: member_id.clone(),
        });
    }
    match res {
        Ok(d) => {
            tx.commit().await.context("committing decision")?;
            let kind = d.1;
            metrics::counter!("approvald_requests_decided_total", "kind" => kind.clone(), "decision" => decision.as_str())
                .increment(1);
            metrics::histogram!("approvald_decision_seconds")
                .record(((d.0.decided_at - d.2).max(0)) as f64 / 1000.0);
            tracing::info!(request_id, decision = decision.as_str(), by = %decider.id(), kind, "request decided");
            Ok(d.0)
        }
        Err(e) => {
            tx.rollback().await.ok();
            Err(e)
        }
    }
}

async fn decide_in(
    app: &App,
    tx: &mut Tx,
    request_id: &str,
    decider: &Decider,
    decision: Decision,
    comment: &str,
) -> Result<(Decided, String, i64), DecideError> {
    let row = load_row(tx, request_id)
        .await?
        .ok_or(DecideError::NotFound)?;
    if let Decider::Reviewer(r) = decider
        && r.kind == ReviewerKind::Member
        && row.requester_id.as_deref() == Some(r.id.as_str())
    {
        return Err(DecideError::SelfReview);
    }
    if let Some(e) = closed(&row) {
        return Err(e);
    }
    let from: &[&str] = match decider {
        Decider::System => &["submitted", "in_review"],
        Decider::Reviewer(_) => &["in_review"],
    };
    if !from.contains(&row.status.as_str()) {
        return Err(DecideError::NotInReview);
    }
    let now = app.now_ms();
    let status = decision.status();
    let moved = on_tx!(tx, |c| {
        sqlx::query(
        "UPDATE requests SET status = $2, decided_by = $3, decided_by_id = $4, decided_at = $5, \
                decision_comment = $6, updated_at = $5 \
         WHERE id = $1 AND (status = 'in_review' OR (status = 'submitted' AND $7))"
    )
    .bind(request_id)
    .bind(status.as_str())
    .bind(decider.name())
    .bind(decider.id())
    .bind(now)
    .bind(comment)
    .bind(matches!(decider, Decider::System))
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })
    .context("deciding request")?;
    if moved == 0 {
        // Lost a race (PostgreSQL re-checks the WHERE after the winner commits).
        let row = load_row(tx, request_id)
            .await?
            .ok_or(DecideError::NotFound)?;
        return Err(closed(&row).unwrap_or(DecideError::NotInReview));
    }
    crate::store::requests::close_assignments(tx, request_id, now)
        .await
        .context("closing reviewer assignments")?;
    // Lock order, for every writer that touches these rows: the request
    // (the conditional update above), then member and reviewer rows, then
    // link tokens; so concurrent decisions, disables and link issues queue
    // up instead of deadlocking on PostgreSQL.
    //
    // A link's power is re-derived now, from who the reviewer is now.
    if let Decider::Reviewer(r) = decider {
        let needed = crate::jobs::review::authority_for(
            app,
            &row.kind,
            &row.org_id,
            row.requester_id.as_deref(),
        );
        let me = crate::mail::ReviewerRef {
            kind: r.kind,
            id: r.id.clone(),
        };
        if !crate::store::reviewers::lock_if_holds(tx, &me, &needed).await? {
            return Err(DecideError::NoAuthority);
        }
    }
    // Never grant to someone who has left (until the cleanup job cancels
    // their requests, they may still be open).
    if decision == Decision::Approve {
        for member_id in grant_members(app, &row) {
            if !lock_if_active(tx, &row.org_id, &member_id).await? {
                return Err(DecideError::MemberInactive { member_id });
            }
        }
    }
    if let Decider::Reviewer(ReviewerDecider {
        token_hash: Some(h),
        ..
    }) = decider
        && !tokens::consume(tx, h, now).await?
    {
        // Revoked or expired meanwhile (the caller rolls back the update).
        return Err(DecideError::LinkInvalid);
    }
    tokens::revoke_for_request(tx, request_id, now).await?;
    let detail = match decider {
        Decider::System => json!({"comment": comment}),
        Decider::Reviewer(r) => {
            json!({"comment": comment, "reviewer_kind": r.kind.as_str(), "reviewer_id": r.id})
        }
    };
    add_event(
        tx,
        request_id,
        status.as_str(),
        Some(decider.name()),
        &detail,
        now,
    )
    .await
    .context("writing decision event")?;
    let actor = decider.audit_actor();
    crate::store::audit::operation(
        tx,
        crate::store::audit::Operation {
            org_id: &row.org_id,
            actor: &actor,
            action: match decision {
                Decision::Approve => "request.approve",
                Decision::Reject => "request.reject",
            },
            target: Some(&row.id),
            detail: json!({
                "before": {"status": row.status},
                "after": {"status": status.as_str(), "decided_by": decider.name(), "comment": comment},
            }),
            at: now,
        },
    )
    .await
    .context("auditing decision")?;
    if decision == Decision::Approve {
        let (grant_id, member) = apply_grant(app, tx, &row, now).await?;
        crate::store::audit::operation(
            tx,
            crate::store::audit::Operation {
                org_id: &row.org_id,
                actor: &actor,
                action: "grant.apply",
                target: Some(&grant_id),
                detail: json!({
                    "after": {"kind": row.kind, "member_id": member, "status": "active"},
                    "request_id": row.id,
                }),
                at: now,
            },
        )
        .await
        .context("auditing grant")?;
        crate::flows::payments::on_approved(
            tx,
            &row.org_id,
            &row.kind,
            row.requester_id.as_deref(),
            &row.id,
            &actor,
            now,
        )
        .await?;
    }
    let template = match decision {
        Decision::Approve => Template::Approved,
        Decision::Reject => Template::Rejected,
    };
    crate::webhooks::emit_request(
        app,
        tx,
        &row.org_id,
        &row.id,
        match decision {
            Decision::Approve => "request.approved",
            Decision::Reject => "request.rejected",
        },
        now,
    )
    .await?;
    for to in outcome_recipients(tx, &row).await? {
        crate::mail::queue_email(
            app,
            tx,
            EmailSpec {
                template,
                request_id: Some(row.id.clone()),
                to,
                params: json!({"comment": if comment.is_empty() { None } else { Some(comment) }}),
            },
        )
        .await?;
    }
    Ok((
        Decided {
            request_id: row.id.clone(),
            status,
            decided_by: decider.name().to_string(),
            decided_at: now,
        },
        row.kind.clone(),
        row.created_at,
    ))
}

/// The members an approval of `row` acts for: the requester, and the member
/// a member-scoped grant goes to (today the same person). Each must be
/// active for the request to be approved.
fn grant_members(app: &App, row: &Row) -> Vec<String> {
    let mut v: Vec<String> = row.requester_id.iter().cloned().collect();
    let scope = app
        .catalog
        .kind(&row.kind)
        .map(|k| k.scope)
        .unwrap_or_default();
    if scope == Scope::Member
        && let Some(m) = &row.requester_id
        && !v.contains(m)
    {
        v.push(m.clone());
    }
    v
}

/// Lock member `member_id` of `org_id` if it is active (no-op conditional
/// update); false when it is disabled, gone or in another org.
async fn lock_if_active(tx: &mut Tx, org_id: &str, member_id: &str) -> anyhow::Result<bool> {
    Ok(on_tx!(tx, |c| sqlx::query(
        "UPDATE members SET updated_at = updated_at WHERE id = $1 AND org_id = $2 AND status = 'active'"
    )
    .bind(member_id)
    .bind(org_id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .context("checking the member is active")?
        > 0)
}

/// A refused approval changes nothing but leaves a trace on the request.
async fn record_refused_approval(
    app: &App,
    request_id: &str,
    decider: &Decider,
    member_id: &str,
) -> anyhow::Result<()> {
    let mut tx = app.db.begin().await.context("begin")?;
    add_event(
        &mut tx,
        request_id,
        "approval_refused",
        Some(decider.name()),
        &json!({"reason": "member_inactive", "member_id": member_id}),
        app.now_ms(),
    )
    .await
    .context("writing approval_refused event")?;
    tx.commit().await.context("commit")?;
    Ok(())
}

/// Approval grants the kind: to the whole org, or (scope `member`) to the
/// requester. A revoked grant comes back to life. Returns the grant's id and
/// member (`None`: the whole org).
async fn apply_grant(
    app: &App,
    tx: &mut Tx,
    row: &Row,
    now: i64,
) -> anyhow::Result<(String, Option<String>)> {
    let scope = app
        .catalog
        .kind(&row.kind)
        .map(|k| k.scope)
        .unwrap_or_default();
    let member = match scope {
        Scope::Org => String::new(),
        Scope::Member => row.requester_id.clone().unwrap_or_default(),
    };
    let id = uuid::Uuid::now_v7().to_string();
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO grants (id, org_id, kind, member_id, status, request_id, granted_at) \
         VALUES ($1, $2, $3, $4, 'active', $5, $6) \
         ON CONFLICT (org_id, kind, member_id) DO UPDATE \
         SET status = 'active', request_id = excluded.request_id, granted_at = excluded.granted_at, revoked_at = NULL"
    )
    .bind(&id)
    .bind(&row.org_id)
    .bind(&row.kind)
    .bind(&member)
    .bind(&row.id)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .context("applying grant")?;
    tx.authz_changed(&row.org_id);
    let grant_id: String = on_tx!(tx, |c| sqlx::query_scalar(
        "SELECT id FROM grants WHERE org_id = $1 AND kind = $2 AND member_id = $3"
    )
    .bind(&row.org_id)
    .bind(&row.kind)
    .bind(&member)
    .fetch_one(c)
    .await)
    .context("reading grant")?;
    Ok((grant_id, Some(member).filter(|m| !m.is_empty())))
}

/// Who hears the outcome: the requester, or the org's super admin when the
/// org itself (its upstream app) asked.
async fn outcome_recipients(tx: &mut Tx, row: &Row) -> anyhow::Result<Vec<Recipient>> {
    let rows: Vec<(String, String, String)> = match &row.requester_id {
        Some(m) => on_tx!(tx, |c| sqlx::query_as(
            "SELECT email, name, locale FROM members WHERE id = $1"
        )
        .bind(m)
        .fetch_all(c)
        .await)?,
        None => on_tx!(tx, |c| {
            sqlx::query_as(
            "SELECT email, name, locale FROM members \
             WHERE org_id = $1 AND kind = 'super_admin' AND status = 'active' ORDER BY created_at, id LIMIT 5"
        )
        .bind(&row.org_id)
        .fetch_all(c)
        .await
        })?,
    };
    Ok(rows
        .into_iter()
        .map(|(email, name, locale)| Recipient {
            email,
            name,
            locale: Locale::or_en(&locale),
            reviewer: None,
        })
        .collect())
}

/// Everything the review page and the mails show about a request.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RequestView {
    pub id: String,
    pub org_id: String,
    pub number: String,
    pub kind: String,
    pub requester_id: Option<String>,
    pub remark: String,
    pub documents: String,
    pub status: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    pub decision_comment: Option<String>,
    pub sla_due_at: i64,
    pub extended_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub org_name: String,
    pub region: String,
    pub requester_name: Option<String>,
    pub requester_login: Option<String>,
}

const VIEW: &str = "SELECT r.id, r.org_id, r.number, r.kind, r.requester_id, r.remark, r.documents, r.status, r.decided_by, \
            r.decided_at, r.decision_comment, r.sla_due_at, r.extended_at, r.created_at, r.updated_at, \
            o.name AS org_name, o.region, m.name AS requester_name, m.login_id AS requester_login \
     FROM requests r JOIN orgs o ON o.id = r.org_id LEFT JOIN members m ON m.id = r.requester_id \
     WHERE r.id = $1";

pub async fn view(db: &Db, request_id: &str) -> anyhow::Result<Option<RequestView>> {
    on_db!(db, |p| sqlx::query_as::<_, RequestView>(VIEW)
        .bind(request_id)
        .fetch_optional(p)
        .await)
    .context("loading request")
}

/// [`view`] on a rusqlite connection (the SQLite writer's, `db::writer`).
pub fn view_sync(
    c: &rusqlite::Connection,
    request_id: &str,
) -> rusqlite::Result<Option<RequestView>> {
    crate::db::writer::query_opt(c, VIEW, &[&request_id], |r| {
        Ok(RequestView {
            id: r.get("id")?,
            org_id: r.get("org_id")?,
            number: r.get("number")?,
            kind: r.get("kind")?,
            requester_id: r.get("requester_id")?,
            remark: r.get("remark")?,
            documents: r.get("documents")?,
            status: r.get("status")?,
            decided_by: r.get("decided_by")?,
            decided_at: r.get("decided_at")?,
            decision_comment: r.get("decision_comment")?,
            sla_due_at: r.get("sla_due_at")?,
            extended_at: r.get("extended_at")?,
            created_at: r.get("created_at")?,
            updated_at: r.get("updated_at")?,
            org_name: r.get("org_name")?,
            region: r.get("region")?,
            requester_name: r.get("requester_name")?,
            requester_login: r.get("requester_login")?,
        })
    })
}

/// The name and locale of a reviewer who is still active (`None` for a
/// removed platform reviewer or a disabled member: their links stop working
/// at once, even before the cleanup job revokes them).
pub async fn reviewer_profile(
    db: &Db,
    kind: ReviewerKind,
    id: &str,
) -> anyhow::Result<Option<(String, Locale)>> {
    let row: Option<(String, String)> = match kind {
        ReviewerKind::Platform => on_db!(db, |p| sqlx::query_as(
            "SELECT name, locale FROM reviewers WHERE id = $1 AND status = 'active'"
        )
        .bind(id)
        .fetch_optional(p)
        .await)?,
        ReviewerKind::Member => on_db!(db, |p| sqlx::query_as(
            "SELECT name, locale FROM members WHERE id = $1 AND status = 'active'"
        )
        .bind(id)
        .fetch_optional(p)
        .await)?,
    };
    Ok(row.map(|(n, l)| (n, Locale::or_en(&l))))
}
