//! The SLA timer (DESIGN flow step 7): a reminder before the due time and a
//! breach check at it, both delayed jobs keyed by the due instant they were
//! armed for. Moving the deadline (an extension) arms new timers; the old
//! ones find a different `sla_due_at` and do nothing.
//!
//! The database is the truth: every transition is a conditional update, so a
//! timer that fires twice, a sweep racing a timer, or two schedulers at once
//! still remind once and escalate once.
use anyhow::Context as _;
use approvald_workers::{Job, JobError, JobInfo, PushOptions};
use serde::{Deserialize, Serialize};

use crate::{
    app::App,
    db::Tx,
    domain::{catalog::OnBreach, ids::Locale, request::Decision},
    jobs::{
        self,
        review::{ReviewerRow, add_event, load_request},
    },
    mail::{EmailSpec, Recipient, Template},
    on_db, on_tx,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Reminder,
    Due,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlaJob {
    pub request_id: String,
    pub stage: Stage,
    /// The `sla_due_at` this timer was armed for (ms).
    pub due_ms: i64,
}

impl Job for SlaJob {
    const NAME: &'static str = "sla";
    const MAX_ATTEMPTS: u32 = 12;
    type Context = App;

    async fn run(self, app: App, _info: JobInfo) -> Result<(), JobError> {
        let work = async {
            match self.stage {
                Stage::Reminder => remind(&app, &self.request_id, Some(self.due_ms)).await,
                Stage::Due => breach(&app, &self.request_id, Some(self.due_ms)).await,
            }
        };
        crate::audit::in_job(Self::NAME, work).await?;
        Ok(())
    }
}

/// The reminder instant: `reminder_fraction` of the way from `start` to `due`.
pub fn reminder_at(app: &App, start_ms: i64, due_ms: i64) -> i64 {
    let span = (due_ms - start_ms).max(0) as f64;
    start_ms + (span * app.config.sla.reminder_fraction) as i64
}

/// Write both timers for `due_ms` in `tx`.
pub async fn arm_timers(
    app: &App,
    tx: &mut Tx,
    request_id: &str,
    reminder_at: i64,
    due_ms: i64,
) -> anyhow::Result<()> {
    for (job, opts) in timers(request_id, reminder_at, due_ms) {
        jobs::enqueue(app, tx, &job, opts).await?;
    }
    Ok(())
}

/// [`arm_timers`] on the SQLite writer's connection (`db::writer`); the
/// caller wakes the SLA workers after the commit.
pub fn arm_timers_sync(
    app: &App,
    c: &rusqlite::Connection,
    request_id: &str,
    reminder_at: i64,
    due_ms: i64,
    now: i64,
) -> anyhow::Result<()> {
    let window = jobs::dedupe_window_ms(app);
    for (job, opts) in timers(request_id, reminder_at, due_ms) {
        let new = app.queue.new_job(&job, &opts).context("encoding SLA job")?;
        jobs::push_sync(c, &new, now, window).context("enqueueing SLA job")?;
    }
    Ok(())
}

/// The reminder and deadline jobs of a request (one dedupe key per stage
/// and deadline: arming again for the same deadline adds nothing).
fn timers(request_id: &str, reminder_at: i64, due_ms: i64) -> [(SlaJob, PushOptions); 2] {
    let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    [(Stage::Reminder, reminder_at), (Stage::Due, due_ms)].map(|(stage, when)| {
        let key = format!("sla:{request_id}:{stage:?}:{due_ms}");
        let job = SlaJob {
            request_id: request_id.to_string(),
            stage,
            due_ms,
        };
        (job, PushOptions::at(at(when)).dedupe(key))
    })
}

async fn assigned_reviewers(app: &App, request_id: &str) -> anyhow::Result<Vec<ReviewerRow>> {
    Ok(on_db!(&app.db, |p| {
        sqlx::query_as::<_, ReviewerRow>(
        "SELECT reviewer_kind AS kind, reviewer_id AS id, email, name, locale FROM request_reviewers \
         WHERE request_id = $1 ORDER BY assigned_at, reviewer_id"
    )
    .bind(request_id)
    .fetch_all(p)
    .await
    })?)
}

/// Escalation contacts: the platform group's leads, or the org's super admin
/// for org-reviewed kinds (and as a fallback when a group has no lead).
async fn escalation_contacts(
    app: &App,
    org_id: &str,
    kind: &str,
) -> anyhow::Result<Vec<Recipient>> {
    let group = app.catalog.kind(kind).and_then(|k| match &k.reviewers {
        crate::domain::catalog::Reviewers::Platform(g) => Some(g.clone()),
        crate::domain::catalog::Reviewers::OrgAdmins => None,
    });
    let mut rows: Vec<(String, String, String)> = Vec::new();
    if let Some(g) = group {
        rows = on_db!(&app.db, |p| {
            sqlx::query_as(
            "SELECT r.email, r.name, r.locale FROM reviewers r JOIN reviewer_groups g ON g.reviewer_id = r.id \
             WHERE g.grp = $1 AND g.lead = TRUE AND r.status = 'active' ORDER BY r.created_at LIMIT 20"
        )
        .bind(&g)
        .fetch_all(p)
        .await
        })?;
    }
    if rows.is_empty() {
        rows = on_db!(&app.db, |p| {
            sqlx::query_as(
            "SELECT email, name, locale FROM members WHERE org_id = $1 AND kind = 'super_admin' AND status = 'active' LIMIT 5"
        )
        .bind(org_id)
        .fetch_all(p)
        .await
        })?;
    }
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

fn kind_params(app: &App, kind: &str, number: &str, due_ms: i64, loc: Locale) -> serde_json::Value {
    let title = app
        .catalog
        .kind(kind)
        .map(|k| k.titles.get(loc).to_string())
        .unwrap_or_else(|| kind.to_string());
    serde_json::json!({"kind_title": title, "number": number, "due_at_ms": due_ms})
}

/// Send the reminder once, if the request is still in review for this deadline.
/// Returns whether this call sent it.
pub async fn remind(app: &App, request_id: &str, armed_for: Option<i64>) -> anyhow::Result<bool> {
    let Some(req) = load_request(app, request_id).await? else {
        return Ok(false);
    };
    if req.status != "in_review" || armed_for.is_some_and(|d| d != req.sla_due_at) {
        return Ok(false);
    }
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    let n = on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE requests SET reminded_at = $2, updated_at = $2 \
         WHERE id = $1 AND status = 'in_review' AND reminded_at IS NULL AND sla_due_at = $3"
    )
    .bind(request_id)
    .bind(now)
    .bind(req.sla_due_at)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    if n == 0 {
        tx.rollback().await.ok();
        return Ok(false);
    }
    crate::store::audit::operation(
        &mut tx,
        crate::store::audit::Operation {
            org_id: &req.org_id,
            actor: &crate::audit::current_actor(),
            action: "request.remind",
            target: Some(request_id),
            detail: serde_json::json!({"after": {"reminded_at": now}, "due_at_ms": req.sla_due_at}),
            at: now,
        },
    )
    .await?;
    add_event(
        app,
        &mut tx,
        request_id,
        "reminder_sent",
        Some("system"),
        serde_json::json!({"due_at_ms": req.sla_due_at}),
    )
    .await?;
    // A fresh link goes only to reviewers who may still review it now.
    let needed = crate::jobs::review::authority_for(
        app,
        &req.kind,
        &req.org_id,
        req.requester_id.as_deref(),
    );
    for r in assigned_reviewers(app, request_id).await? {
        let to = r.recipient();
        if let Some(me) = &to.reviewer
            && !crate::store::reviewers::holds(&app.db, me, &needed).await?
        {
            tracing::info!(request_id, reviewer = %me.id, "no reminder: the reviewer no longer may review this request");
            continue;
        }
        let params = kind_params(app, &req.kind, &req.number, req.sla_due_at, to.locale);
        crate::mail::queue_email(
            app,
            &mut tx,
            EmailSpec {
                template: Template::Reminder,
                request_id: Some(req.id.clone()),
                to,
                params,
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Handle a breached deadline once: mark it, count it, escalate or
/// auto-reject per the kind's `on_breach`. Returns whether this call did it.
pub async fn breach(app: &App, request_id: &str, armed_for: Option<i64>) -> anyhow::Result<bool> {
    let Some(req) = load_request(app, request_id).await? else {
        return Ok(false);
    };
    if req.status != "in_review" || armed_for.is_some_and(|d| d != req.sla_due_at) {
        return Ok(false);
    }
    let now = app.now_ms();
    if now < req.sla_due_at {
        anyhow::bail!(
            "SLA timer for {request_id} fired {} ms before its due time",
            req.sla_due_at - now
        );
    }
    let on_breach = app
        .catalog
        .kind(&req.kind)
        .map(|k| k.on_breach)
        .unwrap_or_default();
    let mut tx = app.db.begin().await?;
    let n = on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE requests SET breached_at = $2, updated_at = $2 \
         WHERE id = $1 AND status = 'in_review' AND breached_at IS NULL AND sla_due_at = $3"
    )
    .bind(request_id)
    .bind(now)
    .bind(req.sla_due_at)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    if n == 0 {
        tx.rollback().await.ok();
        return Ok(false);
    }
    let action = match on_breach {
        OnBreach::Escalate => "escalate",
        OnBreach::AutoReject => "auto_reject",
    };
    crate::store::audit::operation(
        &mut tx,
        crate::store::audit::Operation {
            org_id: &req.org_id,
            actor: &crate::audit::current_actor(),
            action: "request.sla_breach",
            target: Some(request_id),
            detail: serde_json::json!({"after": {"breached_at": now}, "due_at_ms": req.sla_due_at, "on_breach": action}),
            at: now,
        },
    )
    .await?;
    add_event(
        app,
        &mut tx,
        request_id,
        "sla_breached",
        Some("system"),
        serde_json::json!({"due_at_ms": req.sla_due_at, "action": action}),
    )
    .await?;
    if on_breach == OnBreach::Escalate {
        for to in escalation_contacts(app, &req.org_id, &req.kind).await? {
            let params = kind_params(app, &req.kind, &req.number, req.sla_due_at, to.locale);
            crate::mail::queue_email(
                app,
                &mut tx,
                EmailSpec {
                    template: Template::SlaEscalation,
                    request_id: Some(req.id.clone()),
                    to,
                    params,
                },
            )
            .await?;
        }
    }
    crate::webhooks::emit_request(
        app,
        &mut tx,
        &req.org_id,
        request_id,
        "request.sla_breached",
        now,
    )
    .await?;
    tx.commit().await?;
    metrics::counter!("approvald_sla_breaches_total", "kind" => req.kind.clone()).increment(1);
    tracing::warn!(request_id, number = %req.number, kind = %req.kind, action, "SLA breached");
    if on_breach == OnBreach::AutoReject {
        let reason = app
            .catalog
            .kind(&req.kind)
            .and_then(|k| k.breach_reason.clone())
            .unwrap_or_else(|| "not reviewed in time".into());
        crate::jobs::decide::system_decision(app, &req, Decision::Reject, &reason)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(true)
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub reminded: usize,
    pub breached: usize,
    pub requeued: usize,
    /// Notify jobs pushed again for mails still pending after
    /// `sla.reconcile_after_secs` (a no-op unless the queue lost the job).
    pub mail_repushed: usize,
    /// Requests whose SLA timers were armed again because the queue held
    /// fewer timers than the database expects (a queue that restarted empty).
    pub timers_rearmed: usize,
    /// Webhook deliveries whose next attempt is overdue by
    /// `sla.reconcile_after_secs`, pushed again (a queue that lost the job).
    pub webhooks_repushed: usize,
}

/// The database is the truth: handle overdue reminders and deadlines whose
/// timer was lost, and re-push review jobs for requests stuck in
/// `submitted` (a queue that restarted empty). Bounded per call.
pub async fn sweep(app: &App) -> anyhow::Result<Swept> {
    let now = app.now_ms();
    let mut out = Swept::default();
    let due: Vec<String> = on_db!(&app.db, |p| {
        sqlx::query_scalar(
        "SELECT id FROM requests WHERE status = 'in_review' AND breached_at IS NULL AND sla_due_at <= $1 \
         ORDER BY sla_due_at LIMIT 200"
    )
    .bind(now)
    .fetch_all(p)
    .await
    })?;
    for id in due {
        if breach(app, &id, None).await? {
            out.breached += 1;
        }
    }
    let remind_ids: Vec<String> = on_db!(&app.db, |p| {
        sqlx::query_scalar(
        "SELECT id FROM requests WHERE status = 'in_review' AND reminded_at IS NULL AND breached_at IS NULL \
           AND reminder_at IS NOT NULL AND reminder_at <= $1 ORDER BY reminder_at LIMIT 200"
    )
    .bind(now)
    .fetch_all(p)
    .await
    })?;
    for id in remind_ids {
        if remind(app, &id, None).await? {
            out.reminded += 1;
        }
    }
    // A review normally starts within milliseconds; after
    // `sla.reconcile_after_secs` (two minutes by default) the job is presumed
    // lost. The job is idempotent, so a needless push is harmless; the dedupe
    // key limits it to one per request per 10 minutes.
    let after_ms = app.config.sla.reconcile_after_secs.saturating_mul(1000) as i64;
    let stuck: Vec<String> = on_db!(&app.db, |p| {
        sqlx::query_scalar(
        "SELECT id FROM requests WHERE status = 'submitted' AND updated_at <= $1 ORDER BY created_at LIMIT 500"
    )
    .bind(now - after_ms)
    .fetch_all(p)
    .await
    })?;
    let bucket = now / 600_000;
    for id in stuck {
        crate::jobs::review::requeue(app, &id, Some(format!("reconcile:{id}:{bucket}"))).await?;
        out.requeued += 1;
    }
    // Mails whose notify job was lost (a queue that restarted empty) stay
    // `pending` for ever: reviewers would never get their link. Push them
    // again with the original dedupe key `notify:{id}`: while the queue
    // still knows the job (waiting, running or retrying; mail retries end
    // well inside the 24 h dedupe window) the push is a no-op.
    let pending: Vec<String> = on_db!(&app.db, |p| {
        sqlx::query_scalar(
            "SELECT id FROM emails WHERE status = 'pending' AND created_at <= $1 ORDER BY created_at LIMIT 500",
        )
        .bind(now - after_ms)
        .fetch_all(p)
        .await
    })?;
    if !pending.is_empty() {
        let mut tx = app.db.begin().await?;
        for id in &pending {
            let job = crate::jobs::notify::NotifyJob {
                email_id: id.clone(),
            };
            jobs::enqueue(
                app,
                &mut tx,
                &job,
                PushOptions::default().dedupe(format!("notify:{id}")),
            )
            .await?;
        }
        tx.commit().await?;
        out.mail_repushed = pending.len();
    }
    out.timers_rearmed = rearm_lost_timers(app, now).await?;
    out.webhooks_repushed = crate::webhooks::deliver::reconcile(app, now - after_ms).await?;
    Ok(out)
}

/// SLA timers lost with the queue (Redis restarted empty) are re-created:
/// when the `sla` queue holds fewer jobs than the database says should be
/// waiting, arm the future timers of open requests again, at most 500 per
/// sweep, soonest first. Each push carries the timer's original dedupe key,
/// so a timer the queue still holds is not doubled; a doubled one would be a
/// no-op anyway (every transition is a conditional update).
async fn rearm_lost_timers(app: &App, now: i64) -> anyhow::Result<usize> {
    let expected: i64 = on_db!(&app.db, |p| {
        sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM requests WHERE status = 'in_review' AND breached_at IS NULL AND sla_due_at > $1) \
                  + (SELECT COUNT(*) FROM requests WHERE status = 'in_review' AND breached_at IS NULL \
                       AND reminded_at IS NULL AND reminder_at > $1)",
        )
        .bind(now)
        .fetch_one(p)
        .await
    })?;
    let s = app.queue.stats(SlaJob::NAME).await?;
    let queued = (s.ready + s.scheduled + s.running) as i64;
    if queued >= expected {
        return Ok(0);
    }
    type Open = (String, Option<i64>, Option<i64>, i64);
    let open: Vec<Open> = on_db!(&app.db, |p| {
        sqlx::query_as(
            "SELECT id, reminder_at, reminded_at, sla_due_at FROM requests \
             WHERE status = 'in_review' AND breached_at IS NULL AND sla_due_at > $1 ORDER BY sla_due_at LIMIT 500",
        )
        .bind(now)
        .fetch_all(p)
        .await
    })?;
    tracing::warn!(
        expected,
        queued,
        rearming = open.len(),
        "SLA timers missing from the queue; arming them again"
    );
    let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    let mut tx = app.db.begin().await?;
    for (id, reminder_at, reminded_at, due) in &open {
        let mut stages = vec![(Stage::Due, *due)];
        if let (Some(r), None) = (reminder_at, reminded_at)
            && *r > now
        {
            stages.push((Stage::Reminder, *r));
        }
        for (stage, when) in stages {
            let key = format!("sla:{id}:{stage:?}:{due}");
            let job = SlaJob {
                request_id: id.clone(),
                stage,
                due_ms: *due,
            };
            jobs::enqueue(app, &mut tx, &job, PushOptions::at(at(when)).dedupe(key)).await?;
        }
    }
    tx.commit().await?;
    Ok(open.len())
}
