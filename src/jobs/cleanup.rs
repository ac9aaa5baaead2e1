//! The `cleanup` job (DESIGN "Disabling a member"): after a member is
//! disabled, finish what the disabling transaction left to do.
//!
//! Each step is one transaction that first claims its row in
//! `member_cleanup_steps` (`INSERT ... ON CONFLICT DO NOTHING`), then does
//! its work and writes its audit row. A step already claimed is skipped, so
//! a job killed mid-way and delivered again, or two deliveries at once, do
//! each step once; every mail is also keyed per (request, recipient,
//! template), so none goes out twice.
//!
//! If the member is enabled again before the job ends, the enable records
//! `enabled_at` on the cleanup, and every later step acts only on what
//! existed before it (each step locks the cleanup's row first, so an
//! enable either committed before the step read `enabled_at` or waits for
//! the step): the cleanup still finishes, the outcome for everything from before
//! the enable is the same as if the enable came after the cleanup, and what
//! the member does after the enable is left alone.
//!
//! 1. `cancel_requests`: their open requests are cancelled (reason
//!    `member_disabled`), the reviewers told with the `cancelled` mail.
//! 2. `hand_over_reviews`: requests in review that were assigned to them go
//!    to the org's other active admins (or the super admin when there is
//!    none): new assignments, new link mails, the SLA due time unchanged, a
//!    `handed_over` event.
//! 3. `payment`: their `payment_permission` grants are revoked (reason
//!    `member_disabled`, a `grant_revoked` event on the granting request),
//!    their open holds voided and their member-level payment permission
//!    turned off (`flows::payments`), unless they were enabled again first.
//! 4. `credentials`: any review link still live for them is revoked.
//!
//! Cancels and revokes emit `request.cancelled` and `grant.revoked` like
//! their API counterparts. Then the cleanup is marked completed (once), with
//! an audit row, the `member.cleanup_completed` webhook event, and the
//! `approvald_member_cleanups_total{outcome}` counter and
//! `approvald_member_cleanup_seconds` histogram (disable to completion).
use std::fmt;

use anyhow::Context;
use approvald_workers::{Job, JobError, JobInfo, PushOptions};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    app::App,
    db::Tx,
    domain::ids::Locale,
    flows, jobs,
    mail::{self, EmailSpec, Recipient, ReviewerKind, ReviewerRef, Template},
    on_db, on_tx,
    store::{self, audit},
};

/// The reason recorded on everything a cleanup cancels or revokes.
pub const REASON: &str = "member_disabled";
/// The actor of a cleanup's events and audit rows.
pub const ACTOR: &str = "system";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CleanupJob {
    pub cleanup_id: String,
}

impl Job for CleanupJob {
    const NAME: &'static str = "cleanup";
    const MAX_ATTEMPTS: u32 = 12;
    type Context = App;

    async fn run(self, app: App, info: JobInfo) -> Result<(), JobError> {
        let res = run(&app, &self.cleanup_id).await;
        if let Err(e) = &res {
            let last = matches!(e, JobError::Permanent(_)) || info.attempt >= info.max_attempts;
            if last {
                metrics::counter!("approvald_member_cleanups_total", "outcome" => "failed")
                    .increment(1);
            }
        }
        res.map(|_| ())
    }
}

/// The steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    CancelRequests,
    HandOverReviews,
    Payment,
    Credentials,
}

impl Step {
    pub const ALL: [Step; 4] = [
        Step::CancelRequests,
        Step::HandOverReviews,
        Step::Payment,
        Step::Credentials,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::CancelRequests => "cancel_requests",
            Step::HandOverReviews => "hand_over_reviews",
            Step::Payment => "payment",
            Step::Credentials => "credentials",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `member_cleanups` row, with the member's name for events.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Cleanup {
    pub id: String,
    pub org_id: String,
    pub member_id: String,
    pub disabled_at: i64,
    pub actor: String,
    pub created_at: i64,
    pub completed_at: Option<i64>,
    pub member_name: String,
    pub member_login: String,
}

pub async fn load(app: &App, id: &str) -> anyhow::Result<Option<Cleanup>> {
    on_db!(&app.db, |p| sqlx::query_as::<_, Cleanup>(
        "SELECT c.id, c.org_id, c.member_id, c.disabled_at, c.actor, c.created_at, c.completed_at, \
                m.name AS member_name, m.login_id AS member_login \
         FROM member_cleanups c JOIN members m ON m.id = c.member_id WHERE c.id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await)
    .context("loading cleanup")
}

/// What a run did: whether this run completed the cleanup, and the steps
/// it did (steps already done before are not listed).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Ran {
    pub steps: Vec<(&'static str, Value)>,
    pub completed_now: bool,
}

/// Run every step not yet done, then mark the cleanup completed. Safe to
/// call any number of times, also concurrently.
pub async fn run(app: &App, cleanup_id: &str) -> Result<Ran, JobError> {
    let Some(c) = load(app, cleanup_id).await? else {
        return Err(JobError::permanent(anyhow::anyhow!(
            "cleanup {cleanup_id} does not exist"
        )));
    };
    let mut ran = Ran::default();
    if c.completed_at.is_some() {
        tracing::debug!(cleanup_id, "cleanup already completed; nothing to do");
        return Ok(ran);
    }
    for step in Step::ALL {
        if let Some(counts) = run_step(app, &c, step).await? {
            ran.steps.push((step.as_str(), counts));
        }
    }
    ran.completed_now = complete(app, &c).await?;
    Ok(ran)
}

/// Do `step` once: `None` when it was already done.
pub async fn run_step(app: &App, c: &Cleanup, step: Step) -> anyhow::Result<Option<Value>> {
    let now = app.now_ms();
    let mut tx = app.db.begin().await.context("begin")?;
    let before = cutoff(&mut tx, c).await?;
    let claimed = on_tx!(&mut tx, |x| sqlx::query(
        "INSERT INTO member_cleanup_steps (cleanup_id, step, done_at, counts) VALUES ($1, $2, $3, '{}') \
         ON CONFLICT (cleanup_id, step) DO NOTHING"
    )
    .bind(&c.id)
    .bind(step.as_str())
    .bind(now)
    .execute(x)
    .await
    .map(|r| r.rows_affected()))
    .context("claiming cleanup step")?;
    if claimed == 0 {
        tx.rollback().await.ok();
        tracing::debug!(cleanup_id = %c.id, %step, "cleanup step already done");
        return Ok(None);
    }
    let counts = match step {
        Step::CancelRequests => cancel_requests(app, &mut tx, c, before, now).await?,
        Step::HandOverReviews => hand_over_reviews(app, &mut tx, c, before, now).await?,
        Step::Payment => payment(app, &mut tx, c, before, now).await?,
        Step::Credentials => credentials(&mut tx, c, before, now).await?,
    };
    on_tx!(&mut tx, |x| sqlx::query(
        "UPDATE member_cleanup_steps SET counts = $3 WHERE cleanup_id = $1 AND step = $2"
    )
    .bind(&c.id)
    .bind(step.as_str())
    .bind(counts.to_string())
    .execute(x)
    .await
    .map(|r| r.rows_affected()))
    .context("recording cleanup step")?;
    audit::operation(
        &mut tx,
        audit::Operation {
            org_id: &c.org_id,
            actor: ACTOR,
            action: "member.cleanup.step",
            target: Some(&c.member_id),
            detail: json!({"cleanup_id": c.id, "step": step.as_str(), "counts": counts}),
            at: now,
        },
    )
    .await
    .context("auditing cleanup step")?;
    tx.commit().await.context("committing cleanup step")?;
    tracing::info!(cleanup_id = %c.id, member_id = %c.member_id, %step, counts = %counts, "cleanup step done");
    Ok(Some(counts))
}

/// Lock the cleanup's row (a no-op update; the enable flow locks it before
/// the member's row, so an enable either committed before this step or
/// waits for it) and read what the step may act on: everything made before
/// the member was enabled again, or everything while they are still
/// disabled (`i64::MAX`). Locking the cleanup row rather than the member's
/// keeps the writers' order (request, then member rows) intact.
async fn cutoff(tx: &mut Tx, c: &Cleanup) -> anyhow::Result<i64> {
    let enabled_at: Option<i64> = on_tx!(tx, |x| sqlx::query_scalar(
        "UPDATE member_cleanups SET enabled_at = enabled_at WHERE id = $1 RETURNING enabled_at"
    )
    .bind(&c.id)
    .fetch_one(x)
    .await)
    .context("locking cleanup")?;
    Ok(enabled_at.unwrap_or(i64::MAX))
}

/// Mark the cleanup completed; returns whether this call did.
async fn complete(app: &App, c: &Cleanup) -> anyhow::Result<bool> {
    let now = app.now_ms();
    let mut tx = app.db.begin().await.context("begin")?;
    let done = on_tx!(&mut tx, |x| sqlx::query(
        "UPDATE member_cleanups SET completed_at = $2 WHERE id = $1 AND completed_at IS NULL"
    )
    .bind(&c.id)
    .bind(now)
    .execute(x)
    .await
    .map(|r| r.rows_affected()))
    .context("completing cleanup")?;
    if done == 0 {
        tx.rollback().await.ok();
        return Ok(false);
    }
    let steps: Vec<(String, String)> = on_tx!(&mut tx, |x| {
        sqlx::query_as(
        "SELECT step, counts FROM member_cleanup_steps WHERE cleanup_id = $1 ORDER BY done_at, step"
    )
    .bind(&c.id)
    .fetch_all(x)
    .await
    })?;
    let steps: serde_json::Map<String, Value> = steps
        .into_iter()
        .map(|(s, counts)| (s, serde_json::from_str(&counts).unwrap_or(Value::Null)))
        .collect();
    let seconds = (now - c.disabled_at).max(0) as f64 / 1000.0;
    let steps = Value::Object(steps);
    audit::operation(
        &mut tx,
        audit::Operation {
            org_id: &c.org_id,
            actor: ACTOR,
            action: "member.cleanup_completed",
            target: Some(&c.member_id),
            detail: json!({"cleanup_id": c.id, "steps": steps, "seconds": seconds}),
            at: now,
        },
    )
    .await
    .context("auditing cleanup completion")?;
    let time = crate::http::api::time;
    let payload = json!({
        "id": c.id,
        "member_id": c.member_id,
        "login_id": c.member_login,
        "disabled_at": time(c.disabled_at),
        "completed_at": time(now),
        "steps": steps,
    });
    crate::webhooks::emit(
        app,
        &mut tx,
        &c.org_id,
        "member.cleanup_completed",
        payload,
        now,
    )
    .await?;
    tx.commit().await.context("committing cleanup completion")?;
    metrics::counter!("approvald_member_cleanups_total", "outcome" => "completed").increment(1);
    metrics::histogram!("approvald_member_cleanup_seconds").record(seconds);
    tracing::info!(cleanup_id = %c.id, member_id = %c.member_id, seconds, "member cleanup completed");
    Ok(true)
}

/// Step 1: cancel their requests still `submitted` or `in_review` (made
/// before `before`); tell the reviewers.
async fn cancel_requests(
    app: &App,
    tx: &mut Tx,
    c: &Cleanup,
    before: i64,
    now: i64,
) -> anyhow::Result<Value> {
    let open: Vec<String> = on_tx!(tx, |x| sqlx::query_scalar(
        "SELECT id FROM requests WHERE org_id = $1 AND requester_id = $2 \
           AND status IN ('submitted', 'in_review') AND created_at < $3 ORDER BY created_at, id"
    )
    .bind(&c.org_id)
    .bind(&c.member_id)
    .bind(before)
    .fetch_all(x)
    .await)
    .context("finding open requests")?;
    let (mut cancelled, mut told) = (0u64, 0u64);
    let by = flows::requests::CancelBy {
        actor: ACTOR,
        via: "cleanup",
        reason: REASON,
        cleanup_id: Some(&c.id),
    };
    for id in &open {
        // Decided meanwhile: nothing to cancel.
        if let Ok(done) = flows::requests::cancel(app, tx, Some(&c.org_id), id, &by, now).await? {
            cancelled += 1;
            told += done.reviewers_told;
        }
    }
    Ok(json!({"open": open.len(), "cancelled": cancelled, "reviewers_told": told}))
}

/// Someone who can take over a review.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Admin {
    id: String,
    email: String,
    name: String,
    locale: String,
}

/// Step 2: hand the reviews assigned to them (requests still in review) to
/// the org's other active admins, or its super admin when there is none.
async fn hand_over_reviews(
    app: &App,
    tx: &mut Tx,
    c: &Cleanup,
    before: i64,
    now: i64,
) -> anyhow::Result<Value> {
    let reviews: Vec<(String, Option<String>)> = on_tx!(tx, |x| sqlx::query_as(
        "SELECT r.id, r.requester_id FROM requests r \
         JOIN request_reviewers rr ON rr.request_id = r.id \
         WHERE rr.reviewer_kind = 'member' AND rr.reviewer_id = $1 AND rr.assigned_at < $2 \
           AND r.org_id = $3 AND r.status = 'in_review' ORDER BY r.created_at, r.id"
    )
    .bind(&c.member_id)
    .bind(before)
    .bind(&c.org_id)
    .fetch_all(x)
    .await)
    .context("finding reviews to hand over")?;
    let (mut handed, mut new_links) = (0u64, 0u64);
    for (request_id, requester) in &reviews {
        let requester = requester.clone().unwrap_or_default();
        let mut to = candidates(tx, c, &requester, "admin").await?;
        if to.is_empty() {
            to = candidates(tx, c, &requester, "super_admin").await?;
        }
        let (mut added, mut already) = (Vec::new(), Vec::new());
        for a in to {
            let inserted = on_tx!(tx, |x| sqlx::query(
                "INSERT INTO request_reviewers (request_id, reviewer_kind, reviewer_id, email, name, locale, assigned_at) \
                 VALUES ($1, 'member', $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
            )
            .bind(request_id)
            .bind(&a.id)
            .bind(&a.email)
            .bind(&a.name)
            .bind(&a.locale)
            .bind(now)
            .execute(x)
            .await
            .map(|r| r.rows_affected()))
            .context("assigning reviewer")?;
            if inserted == 0 {
                already.push(a.name);
                continue;
            }
            let spec = EmailSpec {
                template: Template::ReviewRequested,
                request_id: Some(request_id.clone()),
                to: Recipient {
                    email: a.email,
                    name: a.name.clone(),
                    locale: Locale::or_en(&a.locale),
                    reviewer: Some(ReviewerRef {
                        kind: ReviewerKind::Member,
                        id: a.id,
                    }),
                },
                params: json!({}),
            };
            if mail::queue_email(app, tx, spec).await? {
                new_links += 1;
            }
            added.push(a.name);
        }
        store::requests::add_event(
            tx,
            request_id,
            "handed_over",
            Some(ACTOR),
            &json!({
                "reason": REASON,
                "cleanup_id": c.id,
                "from": {"id": c.member_id, "name": c.member_name},
                "to": added,
                "already_reviewing": already,
            }),
            now,
        )
        .await?;
        handed += 1;
    }
    Ok(json!({"reviews": reviews.len(), "handed_over": handed, "new_links": new_links}))
}

/// The org's active members of `kind`, other than the leaver and the
/// requester, each locked (a no-op conditional update) so a disable of one
/// of them either committed before (skipped here) or waits for this step
/// (and its own cleanup then hands this review on).
async fn candidates(
    tx: &mut Tx,
    c: &Cleanup,
    requester: &str,
    kind: &str,
) -> anyhow::Result<Vec<Admin>> {
    let found: Vec<Admin> = on_tx!(tx, |x| sqlx::query_as::<_, Admin>(
        "SELECT id, email, name, locale FROM members \
         WHERE org_id = $1 AND status = 'active' AND kind = $2 AND id <> $3 AND id <> $4 \
         ORDER BY created_at, id LIMIT 50"
    )
    .bind(&c.org_id)
    .bind(kind)
    .bind(&c.member_id)
    .bind(requester)
    .fetch_all(x)
    .await)
    .context("finding admins")?;
    let mut out = Vec::with_capacity(found.len());
    for a in found {
        let live = on_tx!(tx, |x| sqlx::query(
            "UPDATE members SET updated_at = updated_at WHERE id = $1 AND status = 'active'"
        )
        .bind(&a.id)
        .execute(x)
        .await
        .map(|r| r.rows_affected()))
        .context("locking admin")?;
        if live == 1 {
            out.push(a);
        }
    }
    Ok(out)
}

/// Step 3: their payment permission off: their `payment_permission` grants
/// are revoked, with the reason on the granting request. (A grant given
/// while they were disabled, by an approval racing the disable, is revoked
/// too: only an enable ends what the cleanup may touch.)
async fn payment(
    app: &App,
    tx: &mut Tx,
    c: &Cleanup,
    before: i64,
    now: i64,
) -> anyhow::Result<Value> {
    let grants: Vec<(String, Option<String>)> = on_tx!(tx, |x| sqlx::query_as(
        "SELECT id, request_id FROM grants WHERE org_id = $1 AND member_id = $2 \
           AND kind = 'payment_permission' AND status = 'active' AND granted_at < $3 ORDER BY granted_at, id"
    )
    .bind(&c.org_id)
    .bind(&c.member_id)
    .bind(before)
    .fetch_all(x)
    .await)
    .context("finding payment grants")?;
    let mut revoked = 0u64;
    for (id, request_id) in &grants {
        if !store::grants::revoke(tx, id, now).await? {
            continue;
        }
        revoked += 1;
        let g = store::grants::get_tx(tx, &c.org_id, "payment_permission", &c.member_id)
            .await?
            .context("revoked grant vanished")?;
        let payload = serde_json::to_value(crate::http::api::GrantOut::from(g))?;
        crate::webhooks::emit(app, tx, &c.org_id, "grant.revoked", payload, now).await?;
        if let Some(r) = request_id {
            store::requests::add_event(
                tx,
                r,
                "grant_revoked",
                Some(ACTOR),
                &json!({"grant": id, "reason": REASON, "cleanup_id": c.id}),
                now,
            )
            .await?;
        }
    }
    // Their open holds and their member-level payment permission. A member
    // enabled again before this step keeps both: what they hold now is theirs
    // as an active member (the enable rule of this module).
    if before != i64::MAX {
        return Ok(json!({"payment_grants_revoked": revoked, "holds_voided": 0,
                         "payment_permission_off": false, "skipped": "member enabled again"}));
    }
    let holds = crate::flows::payments::void_member_holds(tx, &c.org_id, &c.member_id, REASON, now)
        .await
        .context("voiding holds")?;
    let off =
        crate::flows::payments::revoke_member_payment(tx, &c.org_id, &c.member_id, REASON, now)
            .await
            .context("turning payment permission off")?;
    Ok(
        json!({"payment_grants_revoked": revoked, "holds_voided": holds, "payment_permission_off": off}),
    )
}

/// Step 4: anything that still acts for them. Review links are revoked by
/// the disable itself, and no new one is issued to an inactive member, so
/// this normally finds none; it closes any left by a concurrent writer.
async fn credentials(tx: &mut Tx, c: &Cleanup, before: i64, now: i64) -> anyhow::Result<Value> {
    // After an enable, new links of theirs are theirs to keep.
    let revoked = on_tx!(tx, |x| sqlx::query(
        "UPDATE review_tokens SET revoked_at = $1 \
         WHERE reviewer_kind = 'member' AND reviewer_id = $2 AND revoked_at IS NULL AND used_at IS NULL \
           AND created_at < $3"
    )
    .bind(now)
    .bind(&c.member_id)
    .bind(before)
    .execute(x)
    .await
    .map(|r| r.rows_affected()))
    .context("revoking review links")?;
    Ok(json!({"review_links_revoked": revoked}))
}

/// Cleanups not completed `sla.reconcile_after_secs` after their disable
/// whose job the queue may have lost (Redis restarted empty): push them
/// again with their original dedupe key, a no-op while the queue still
/// holds the job. Returns how many were pushed.
pub async fn requeue_lost(app: &App) -> anyhow::Result<usize> {
    let now = app.now_ms();
    let after_ms = app.config.sla.reconcile_after_secs.saturating_mul(1000) as i64;
    let open: Vec<(String, String, i64)> = on_db!(&app.db, |p| sqlx::query_as(
        "SELECT id, member_id, disabled_at FROM member_cleanups \
         WHERE completed_at IS NULL AND created_at <= $1 ORDER BY created_at LIMIT 500"
    )
    .bind(now - after_ms)
    .fetch_all(p)
    .await)
    .context("finding unfinished cleanups")?;
    if open.is_empty() {
        return Ok(0);
    }
    let mut tx = app.db.begin().await.context("begin")?;
    for (id, member, at) in &open {
        jobs::enqueue(
            app,
            &mut tx,
            &CleanupJob {
                cleanup_id: id.clone(),
            },
            PushOptions::default().dedupe(crate::flows::members::cleanup_dedupe_key(member, *at)),
        )
        .await?;
    }
    tx.commit().await.context("commit")?;
    Ok(open.len())
}
