//! The `notify` job (DESIGN flow step 4): send one logical mail (a row in
//! `emails`, written by [`crate::mail::queue_email`]) once.
//!
//! Idempotent (invariant 3): a mail already `sent`, `failed` or `skipped` is
//! left alone, and every attempt of one mail carries the same Message-ID.
//! Review-link mails get their link token here, at send time, because the
//! token itself is never stored: each attempt issues a fresh token and revokes
//! the reviewer's earlier unused ones, so the delivered mail's link is the
//! only live one. Failures are classified: transient ones are retried with
//! exponential backoff for hours (`mail.retry_base_ms` doubling up to
//! `mail.retry_cap_secs`, 20 attempts); permanent ones (SMTP 5xx) are
//! recorded once, on the mail, on the request's events and in metrics.
use std::time::{Duration, SystemTime};

use anyhow::Context;
use approvald_workers::{Job, JobError, JobInfo, job::exponential_backoff};
use lettre::{
    Message,
    message::{
        Mailbox, MultiPart,
        header::{HeaderName, HeaderValue},
    },
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    app::App,
    domain::{calendar::Region, ids::Locale, ids::mask_email},
    mail::{
        Attempt, Health, MailContext, Rendered, ReviewerKind, ReviewerRef, SendError, Template,
        render, render::format_time,
    },
    on_db,
    store::{decisions, emails, emails::EmailRow, requests::add_event, tokens},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotifyJob {
    pub email_id: String,
}

impl Job for NotifyJob {
    const NAME: &'static str = "notify";
    /// With the default policy (5 s doubling, capped at 30 min) 20 attempts
    /// keep trying for about six hours.
    const MAX_ATTEMPTS: u32 = 20;
    const TIMEOUT: Duration = Duration::from_secs(120);
    type Context = App;

    fn backoff(attempt: u32) -> Duration {
        let (base, cap) = crate::mail::retry_policy();
        exponential_backoff(attempt, base, cap)
    }

    async fn run(self, app: App, info: JobInfo) -> Result<(), JobError> {
        deliver(&app, &self.email_id, info.attempt, info.max_attempts).await
    }
}

fn count(template: &str, outcome: &'static str) {
    metrics::counter!("approvald_emails_total", "template" => template.to_string(), "outcome" => outcome).increment(1);
}

/// The timezone of an org's calendar region (UTC when unknown).
pub fn region_tz(app: &App, region: &str) -> chrono_tz::Tz {
    Region::parse(region)
        .ok()
        .and_then(|r| app.calendars.get(&r).map(|c| c.tz()))
        .unwrap_or(chrono_tz::UTC)
}

/// A mail ready to render and send: its row, its template and locale, what
/// fills the template (the link included), and whether this attempt is
/// already counted.
struct Ready {
    row: EmailRow,
    template: Template,
    locale: Locale,
    ctx: MailContext,
    counted: bool,
}

/// One attempt at sending mail `email_id`.
pub async fn deliver(
    app: &App,
    email_id: &str,
    attempt: u32,
    max_attempts: u32,
) -> Result<(), JobError> {
    let on_writer = match &app.writer {
        Some(w) => prepare_on_writer(app, w, email_id).await?,
        None => None,
    };
    let ready = match on_writer {
        Some(r) => r,
        None => match prepare(app, email_id).await? {
            Some(r) => r,
            None => return Ok(()),
        },
    };
    send(app, ready, attempt, max_attempts).await
}

/// What a request's mail says about it, in `locale` (and the zone its
/// times are shown in).
fn request_context(
    app: &App,
    ctx: &mut MailContext,
    v: &decisions::RequestView,
    locale: Locale,
) -> chrono_tz::Tz {
    let tz = region_tz(app, &v.region);
    ctx.org_name = Some(v.org_name.clone());
    ctx.request_number = Some(v.number.clone());
    ctx.kind_title = Some(
        app.catalog
            .kind(&v.kind)
            .map(|k| k.titles.get(locale).to_string())
            .unwrap_or_else(|| v.kind.clone()),
    );
    ctx.requester_name = v.requester_name.clone();
    ctx.remark = Some(v.remark.clone()).filter(|r| !r.is_empty());
    ctx.due_at = Some(format_time(v.sla_due_at, tz, locale));
    ctx.decided_by = v.decided_by.clone();
    ctx.decided_at = v.decided_at.map(|t| format_time(t, tz, locale));
    ctx.comment = v.decision_comment.clone().filter(|c| !c.is_empty());
    tz
}

fn new_context(row: &EmailRow) -> (MailContext, Locale, serde_json::Value) {
    let locale = Locale::or_en(&row.locale);
    let params: serde_json::Value = serde_json::from_str(&row.params).unwrap_or_else(|_| json!({}));
    let ctx = MailContext {
        recipient_name: row.recipient_name.clone(),
        ..MailContext::default()
    };
    (ctx, locale, params)
}

fn link_ttl_ms(app: &App) -> i64 {
    (app.config.review.token_ttl_hours as i64).saturating_mul(3_600_000)
}

fn set_link(
    app: &App,
    ctx: &mut MailContext,
    issued: &tokens::Issued,
    tz: chrono_tz::Tz,
    locale: Locale,
) {
    ctx.link = Some(format!(
        "{}/review/{}",
        app.config.public_url(),
        issued.token
    ));
    ctx.link_expires_at = Some(format_time(issued.expires_at, tz, locale));
}

/// The embedded profile's common case, on the SQLite writer's thread
/// (`db::writer`) in one unit: a pending mail about a request, read with
/// its request, its link token issued (a review-link mail to a reviewer who
/// may still review an open request) and the attempt counted, instead of
/// about a dozen hand-overs to the pool's connection threads. `None` when
/// it wrote nothing and [`prepare`] must look (anything else: a finished
/// or unknown mail, one without a request, a link no longer wanted).
///
/// The attempt is counted before the mail is rendered (the pool path
/// counts it after): a mail whose template fails to render is failed for
/// good either way, with one attempt more on its row here.
async fn prepare_on_writer(
    app: &App,
    writer: &crate::db::writer::Writer,
    email_id: &str,
) -> anyhow::Result<Option<Ready>> {
    let now = app.now_ms();
    let ttl = link_ttl_ms(app);
    let (app2, id) = (app.clone(), email_id.to_string());
    let unit = move |c: &rusqlite::Connection| -> anyhow::Result<Option<_>> {
        let Some(row) = emails::get_sync(c, &id)? else {
            return Ok(None);
        };
        let (Some(template), Some(rid)) = (Template::parse(&row.template), row.request_id.clone())
        else {
            return Ok(None);
        };
        if row.is_final() {
            return Ok(None);
        }
        let Some(view) = decisions::view_sync(c, &rid)? else {
            return Ok(None);
        };
        let issued = if template.has_review_link() {
            let Some(reviewer) = reviewer_of(&row) else {
                return Ok(None);
            };
            if view.status != "in_review" {
                return Ok(None);
            }
            let needed = crate::jobs::review::authority_for(
                &app2,
                &view.kind,
                &view.org_id,
                view.requester_id.as_deref(),
            );
            match tokens::issue_sync(c, &rid, &reviewer, &needed, now, ttl)? {
                Some(issued) => Some(issued),
                None => return Ok(None),
            }
        } else {
            None
        };
        emails::count_attempt_sync(c, &id)?;
        Ok(Some((row, template, view, issued)))
    };
    let Some((row, template, view, issued)) = writer
        .run_background(unit)
        .await
        .context("preparing the mail on the SQLite writer")?
    else {
        return Ok(None);
    };
    let (mut ctx, locale, params) = new_context(&row);
    let tz = request_context(app, &mut ctx, &view, locale);
    ctx.apply_params(&params);
    if let Some(issued) = &issued {
        set_link(app, &mut ctx, issued, tz, locale);
    }
    Ok(Some(Ready {
        row,
        template,
        locale,
        ctx,
        counted: true,
    }))
}

/// Read mail `email_id` and what it needs through the pool, issuing its
/// link token when it has one. `None`: nothing to send (finished before,
/// or skipped now).
async fn prepare(app: &App, email_id: &str) -> Result<Option<Ready>, JobError> {
    let Some(row) = emails::get(&app.db, email_id).await? else {
        return Err(JobError::permanent(anyhow::anyhow!(
            "email {email_id} does not exist"
        )));
    };
    if row.is_final() {
        tracing::debug!(email_id, status = %row.status, "mail already finished; nothing to do");
        return Ok(None);
    }
    let Some(template) = Template::parse(&row.template) else {
        return fail(app, &row, &format!("unknown template {:?}", row.template))
            .await
            .map(|()| None);
    };
    let (mut ctx, locale, params) = new_context(&row);
    let mut status = None;
    let mut tz = chrono_tz::UTC;
    let mut view = None;
    if let Some(rid) = &row.request_id {
        let Some(v) = decisions::view(&app.db, rid).await? else {
            return fail(app, &row, "the request no longer exists")
                .await
                .map(|()| None);
        };
        tz = request_context(app, &mut ctx, &v, locale);
        status = Some(v.status.clone());
        view = Some(v);
    } else if let Some(org_id) = params.get("org_id").and_then(|v| v.as_str()) {
        let org: Option<(String, String)> = on_db!(&app.db, |p| sqlx::query_as(
            "SELECT name, region FROM orgs WHERE id = $1"
        )
        .bind(org_id)
        .fetch_optional(p)
        .await)
        .context("loading org")?;
        if let Some((name, region)) = org {
            ctx.org_name = Some(name);
            tz = region_tz(app, &region);
        }
    }
    ctx.apply_params(&params);

    if template.has_review_link() {
        let (Some(rid), Some(reviewer)) = (&row.request_id, reviewer_of(&row)) else {
            return fail(
                app,
                &row,
                "a review-link mail needs a request and a reviewer",
            )
            .await
            .map(|()| None);
        };
        if status.as_deref() != Some("in_review") {
            let why = format!(
                "request is {}; no review needed",
                status.as_deref().unwrap_or("gone")
            );
            let mut tx = app.db.begin().await.context("begin")?;
            emails::finish(&mut tx, &row.id, "skipped", &why).await?;
            tx.commit().await.context("commit")?;
            count(&row.template, "skipped");
            tracing::info!(email_id, template = %template, "mail skipped: {why}");
            return Ok(None);
        }
        // Only to someone who may still review it (not a demoted admin, not
        // a reviewer who left the group), re-derived now.
        let needed = match &view {
            Some(v) => crate::jobs::review::authority_for(
                app,
                &v.kind,
                &v.org_id,
                v.requester_id.as_deref(),
            ),
            None => crate::store::reviewers::Authority::Nobody,
        };
        let mut tx = app.db.begin().await.context("begin")?;
        let Some(issued) = tokens::issue(
            &mut tx,
            rid,
            &reviewer,
            &needed,
            app.now_ms(),
            link_ttl_ms(app),
        )
        .await?
        else {
            // Cancelled or decided since the check above, or the reviewer
            // was removed, disabled or lost the authority to review it.
            let why = "request left review, or the reviewer no longer may review it, before the link was issued";
            emails::finish(&mut tx, &row.id, "skipped", why).await?;
            tx.commit().await.context("commit")?;
            count(&row.template, "skipped");
            tracing::info!(email_id, template = %template, "mail skipped: {why}");
            return Ok(None);
        };
        tx.commit().await.context("committing link token")?;
        set_link(app, &mut ctx, &issued, tz, locale);
    }
    Ok(Some(Ready {
        row,
        template,
        locale,
        ctx,
        counted: false,
    }))
}

/// Render, send and record one attempt of a prepared mail.
async fn send(app: &App, ready: Ready, attempt: u32, max_attempts: u32) -> Result<(), JobError> {
    let Ready {
        row,
        template,
        locale,
        ctx,
        counted,
    } = ready;
    let email_id = row.id.as_str();
    let rendered = match render(template, locale, &ctx) {
        Ok(r) => r,
        Err(e) => return fail(app, &row, &format!("{e:#}")).await,
    };
    let msg = match build_message(app, &row, locale, rendered) {
        Ok(m) => m,
        Err(e) => return fail(app, &row, &format!("{e:#}")).await,
    };
    if !counted {
        emails::count_attempt(&app.db, &row.id).await?;
    }
    let to = mask_email(&row.recipient);
    let attempt_no = app.mailer.attempt();
    let sent = app.mailer.send(&row.id, &msg).await;
    if let Err(e) = &sent
        && let Some(kind) = e.transport_kind()
    {
        metrics::counter!("approvald_mail_transport_errors_total", "kind" => kind.as_str())
            .increment(1);
    }
    match sent {
        Ok(()) => {
            // The transport's state first: whoever sees this mail as sent
            // (or, below, sees its error) finds `/readyz` saying the same.
            transport_seen(app, attempt_no, Health::Ok).await;
            let now = app.now_ms();
            match &app.writer {
                Some(w) => {
                    let id = row.id.clone();
                    w.run_background(move |c| -> anyhow::Result<bool> {
                        Ok(emails::mark_sent_sync(c, &id, now)?)
                    })
                    .await
                    .context("marking email sent")?;
                }
                None => {
                    emails::mark_sent(&app.db, &row.id, now).await?;
                }
            }
            count(&row.template, "sent");
            tracing::info!(email_id, template = %template, to = %to, attempt, "mail sent");
            Ok(())
        }
        Err(SendError::Config { kind, error }) => {
            // The operator's configuration (credentials, TLS trust), not this
            // mail: it stays pending and is tried again with the transient
            // backoff, without ever giving up. Said once per process (not
            // once per mail and attempt): this job ends well and the next
            // attempt is a fresh job, due after the backoff.
            let msg = format!("{error:#}");
            transport_seen(app, attempt_no, Health::Failing(kind, msg.clone())).await;
            emails::note_error(&app.db, &row.id, &msg).await?;
            count(&row.template, "retry");
            tracing::debug!(email_id, template = %template, to = %to, attempt, error = %msg, "mail waits for the mail transport");
            let (base, cap) = crate::mail::retry_policy();
            let tries = u32::try_from(row.attempts + 1).unwrap_or(u32::MAX);
            resume_later(app, &row, exponential_backoff(tries, base, cap)).await?;
            Ok(())
        }
        Err(SendError::Transient(e)) if attempt < max_attempts => {
            let msg = format!("{e:#}");
            emails::note_error(&app.db, &row.id, &msg).await?;
            count(&row.template, "retry");
            tracing::warn!(email_id, template = %template, to = %to, attempt, error = %msg, "mail not sent; will retry");
            Err(JobError::Retryable(e))
        }
        Err(SendError::Transient(e)) => {
            fail(
                app,
                &row,
                &format!("gave up after {attempt} attempts: {e:#}"),
            )
            .await
        }
        Err(SendError::Permanent(e)) => fail(app, &row, &format!("{e:#}")).await,
    }
}

/// Publish what a delivery attempt saw of the transport for `/readyz` (all
/// processes share the database): a failure the operator must fix, or that
/// it works again. Logged once per change, not once per mail; a write that
/// fails is tried again by the next attempt.
async fn transport_seen(app: &App, attempt: Attempt, seen: Health) {
    let Some(p) = app.mailer.observe(attempt, seen, app.now_ms()).await else {
        return;
    };
    let written = match p.seen() {
        Health::Failing(kind, detail) => {
            if p.is_news() {
                tracing::error!(kind = kind.as_str(), transport = %app.mailer.describe(), "mail transport failing; mails stay pending and are retried: {detail}");
            }
            crate::store::mail_health::set_failing(&app.db, kind.as_str(), detail, app.now_ms())
                .await
                .map(|()| false)
        }
        Health::Ok | Health::Unknown => crate::store::mail_health::clear(&app.db).await,
    };
    match written {
        Ok(cleared) => {
            if cleared {
                tracing::info!(transport = %app.mailer.describe(), "mail transport works again");
            }
            p.done();
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot record the mail transport's state; the next attempt tries again")
        }
    }
}

/// Push the next attempt of a mail held up by the transport's configuration,
/// as a fresh notify job due after `delay` (one key per attempt).
async fn resume_later(app: &App, row: &EmailRow, delay: Duration) -> anyhow::Result<()> {
    let at = chrono::DateTime::from_timestamp_millis(app.now_ms() + delay.as_millis() as i64)
        .unwrap_or_default();
    let mut tx = app.db.begin().await.context("begin")?;
    crate::jobs::enqueue(
        app,
        &mut tx,
        &NotifyJob {
            email_id: row.id.clone(),
        },
        approvald_workers::PushOptions::at(at).dedupe(format!(
            "notify:{}:resume:{}",
            row.id,
            row.attempts + 1
        )),
    )
    .await?;
    tx.commit().await.context("commit")?;
    Ok(())
}

fn reviewer_of(row: &EmailRow) -> Option<ReviewerRef> {
    Some(ReviewerRef {
        kind: ReviewerKind::parse(row.reviewer_kind.as_deref()?)?,
        id: row.reviewer_id.clone()?,
    })
}

/// Record a permanent failure once (mail row, request event, metric) and
/// stop retrying.
async fn fail(app: &App, row: &EmailRow, error: &str) -> Result<(), JobError> {
    let now = app.now_ms();
    let mut tx = app.db.begin().await.context("begin")?;
    let moved = emails::finish(&mut tx, &row.id, "failed", error).await?;
    if moved && let Some(rid) = &row.request_id {
        add_event(
            &mut tx,
            rid,
            "email_failed",
            Some("system"),
            &json!({"template": row.template, "recipient": mask_email(&row.recipient), "error": error}),
            now,
        )
        .await
        .context("writing email_failed event")?;
    }
    tx.commit().await.context("commit")?;
    if moved {
        count(&row.template, "failed");
        tracing::error!(email_id = %row.id, template = %row.template, to = %mask_email(&row.recipient), error, "mail failed for good");
    }
    Err(JobError::Permanent(anyhow::anyhow!(
        "mail {} failed: {error}",
        row.id
    )))
}

fn build_message(
    app: &App,
    row: &EmailRow,
    locale: Locale,
    r: Rendered,
) -> anyhow::Result<Message> {
    let addr = row.recipient.parse().with_context(|| {
        format!(
            "recipient {} is not a mail address",
            mask_email(&row.recipient)
        )
    })?;
    let name = Some(row.recipient_name.clone()).filter(|n| !n.is_empty());
    let date = SystemTime::UNIX_EPOCH + Duration::from_millis(app.now_ms().max(0) as u64);
    Message::builder()
        .from(app.mailer.from_mailbox().clone())
        .to(Mailbox::new(name, addr))
        .subject(r.subject)
        .message_id(Some(row.message_id.clone()))
        .date(date)
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".into(),
        ))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Content-Language"),
            locale.as_str().into(),
        ))
        .multipart(MultiPart::alternative_plain_html(r.text, r.html))
        .context("building the message")
}
