//! Changes to one request that several callers make: cancel (the API, the
//! operator dashboard, the member `cleanup` job) and SLA extension (the
//! reviewer's "need more time" form, the operator dashboard). One function
//! each, so the request row, its timers, its events, mails, webhook events
//! and the audit log are the same whoever asked; callers differ only in who
//! they are (`actor`) and what they add as context (a reason, a cleanup id).
use anyhow::Context;
use serde_json::{Value, json};

use crate::{
    app::App,
    db::Tx,
    domain::ids::Locale,
    jobs,
    mail::{self, EmailSpec, Recipient, ReviewerKind, ReviewerRef, Template},
    on_tx,
    store::{self, audit},
};

/// Statuses a request can be cancelled or extended in.
pub const OPEN: [&str; 2] = ["submitted", "in_review"];

/// Who cancels, as recorded on the event and the audit row.
#[derive(Debug, Clone)]
pub struct CancelBy<'a> {
    /// The audit actor: `key:<id>`, `operator:<key id>`, `system`.
    pub actor: &'a str,
    /// `api` | `operator` | `cleanup`.
    pub via: &'static str,
    /// Why, when the caller gives a reason (empty: none).
    pub reason: &'a str,
    /// The member cleanup that cancels (the `cleanup` job).
    pub cleanup_id: Option<&'a str>,
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    pub number: String,
    /// The status it was cancelled from.
    pub from: String,
    pub review_tokens_revoked: u64,
    /// Reviewers who get the `cancelled` mail (queued now, once each).
    pub reviewers_told: u64,
}

/// Why a cancel did nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CancelError {
    /// No such request (or, with `org_id`, not that org's).
    #[error("no such request")]
    NotFound,
    /// Decided or cancelled already.
    #[error(
        "request {number} is already {status}; only submitted or in_review requests can be cancelled"
    )]
    NotOpen { number: String, status: String },
}

/// Cancel request `id` (of `org_id` when given) in `tx`, which the caller
/// commits (its jobs wake the workers then): the request becomes
/// `cancelled` (a conditional update after locking its row, so a decision
/// racing with it wins or loses as a whole), its live review links are
/// revoked, its reviewer assignments closed, a `cancelled` event written,
/// every reviewer still reachable is queued the `cancelled` mail, the
/// `request.cancelled` webhook event is emitted and a `request.cancel`
/// audit row appended.
pub async fn cancel(
    app: &App,
    tx: &mut Tx,
    org_id: Option<&str>,
    id: &str,
    by: &CancelBy<'_>,
    now: i64,
) -> anyhow::Result<Result<Cancelled, CancelError>> {
    let Some((org, number, status)) = store::requests::lock(tx, id)
        .await
        .context("locking request")?
    else {
        return Ok(Err(CancelError::NotFound));
    };
    if org_id.is_some_and(|o| o != org) {
        return Ok(Err(CancelError::NotFound));
    }
    if !OPEN.contains(&status.as_str()) || !store::requests::cancel(tx, &org, id, now).await? {
        return Ok(Err(CancelError::NotOpen { number, status }));
    }
    let revoked = store::requests::revoke_review_tokens(tx, id, now).await?;
    let mut detail = json!({ "via": by.via, "review_tokens_revoked": revoked });
    if !by.reason.is_empty() {
        detail["reason"] = json!(by.reason);
    }
    if let Some(c) = by.cleanup_id {
        detail["cleanup_id"] = json!(c);
    }
    store::requests::add_event(tx, id, "cancelled", Some(by.actor), &detail, now).await?;
    // Tell whoever was asked to review that nothing is needed any more.
    let mut told = 0u64;
    for r in store::requests::active_reviewers(tx, id).await? {
        let kind = ReviewerKind::parse(&r.reviewer_kind).unwrap_or(ReviewerKind::Platform);
        let spec = EmailSpec {
            template: Template::Cancelled,
            request_id: Some(id.to_string()),
            to: Recipient {
                email: r.email,
                name: r.name,
                locale: Locale::or_en(&r.locale),
                reviewer: Some(ReviewerRef {
                    kind,
                    id: r.reviewer_id,
                }),
            },
            params: json!({}),
        };
        if mail::queue_email(app, tx, spec).await? {
            told += 1;
        }
    }
    store::requests::close_assignments(tx, id, now).await?;
    crate::webhooks::emit_request(app, tx, &org, id, "request.cancelled", now).await?;
    let mut audit_detail = json!({
        "before": {"status": status},
        "after": {"status": "cancelled"},
        "via": by.via,
        "review_tokens_revoked": revoked,
        "reviewers_told": told,
    });
    if !by.reason.is_empty() {
        audit_detail["reason"] = json!(by.reason);
    }
    if let Some(c) = by.cleanup_id {
        audit_detail["cleanup_id"] = json!(c);
    }
    audit::operation(
        tx,
        audit::Operation {
            org_id: &org,
            actor: by.actor,
            action: "request.cancel",
            target: Some(id),
            detail: audit_detail,
            at: now,
        },
    )
    .await?;
    Ok(Ok(Cancelled {
        number,
        from: status,
        review_tokens_revoked: revoked,
        reviewers_told: told,
    }))
}

/// How far an extension moves the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// The reviewer's form: once, to 2 or 3 business days from submission,
    /// while the request is in review.
    Reviewer { days: u32 },
    /// The operator dashboard: 1 to 10 business days past the current
    /// deadline, while the request is open, as often as needed.
    Operator { days: u32 },
}

impl Extension {
    fn via(self) -> &'static str {
        match self {
            Extension::Reviewer { .. } => "reviewer",
            Extension::Operator { .. } => "operator",
        }
    }
}

/// Why an extension was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExtendError {
    #[error("the deadline can be extended to 2 or 3 business days only")]
    BadDays,
    #[error("a reason is required to extend the deadline")]
    NoReason,
    #[error("no such request")]
    NotFound,
    #[error("the request is not in review")]
    NotInReview,
    #[error("only an open (submitted or in review) request can be extended")]
    NotOpen,
    #[error("the deadline has already been extended once")]
    AlreadyExtended,
}

/// What an extension did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extended {
    pub before_ms: i64,
    pub due_ms: i64,
    pub sla_days: i64,
}

/// Move request `id`'s deadline, in one transaction: `sla_days`,
/// `sla_due_at`, `reminder_at`, `extended_at` and `extension_reason` on the
/// row (a conditional update on the deadline it was computed from), an
/// `extended` event (`event_actor` is the name shown in the history), both
/// SLA timers armed for the new deadline (the old ones find another
/// deadline and do nothing) and a `request.extend` audit row by `actor`.
pub async fn extend(
    app: &App,
    id: &str,
    ext: Extension,
    reason: &str,
    actor: &str,
    event_actor: &str,
) -> anyhow::Result<Result<Extended, ExtendError>> {
    match ext {
        Extension::Reviewer { days } if !(2..=3).contains(&days) => {
            return Ok(Err(ExtendError::BadDays));
        }
        Extension::Operator { days } if !(1..=10).contains(&days) => {
            return Ok(Err(ExtendError::BadDays));
        }
        _ => {}
    }
    let reason = reason.trim();
    if reason.is_empty() {
        return Ok(Err(ExtendError::NoReason));
    }
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    let Some((org_id, _number, status)) = store::requests::lock(&mut tx, id).await? else {
        tx.rollback().await.ok();
        return Ok(Err(ExtendError::NotFound));
    };
    let row: (String, i64, i64, i64, Option<i64>) = on_tx!(&mut tx, |c| sqlx::query_as(
        "SELECT o.region, r.created_at, r.sla_due_at, r.sla_days, r.extended_at \
         FROM requests r JOIN orgs o ON o.id = r.org_id WHERE r.id = $1"
    )
    .bind(id)
    .fetch_one(c)
    .await)?;
    let (region, created, before, sla_days, extended_at) = row;
    let (from, days, total) = match ext {
        Extension::Reviewer { days } => {
            if status != "in_review" {
                tx.rollback().await.ok();
                return Ok(Err(ExtendError::NotInReview));
            }
            if extended_at.is_some() {
                tx.rollback().await.ok();
                return Ok(Err(ExtendError::AlreadyExtended));
            }
            (created, days, days as i64)
        }
        Extension::Operator { days } => {
            if !OPEN.contains(&status.as_str()) {
                tx.rollback().await.ok();
                return Ok(Err(ExtendError::NotOpen));
            }
            (before, days, sla_days + days as i64)
        }
    };
    let start = chrono::DateTime::from_timestamp_millis(from).context("deadline start")?;
    let due = crate::domain::calendar::due_for_region(&app.calendars, &region, start, days)
        .context("computing extended deadline")?
        .timestamp_millis();
    let reminder = jobs::sla::reminder_at(app, created, due);
    let n = on_tx!(&mut tx, |c| {
        sqlx::query(
        "UPDATE requests SET sla_days = $2, sla_due_at = $3, reminder_at = $4, extended_at = $5, \
                extension_reason = $6, updated_at = $5 \
         WHERE id = $1 AND status IN ('submitted', 'in_review') AND sla_due_at = $7"
    )
    .bind(id)
    .bind(total)
    .bind(due)
    .bind(reminder)
    .bind(now)
    .bind(reason)
    .bind(before)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    if n != 1 {
        // The row is locked: nothing can have moved it since we read it.
        anyhow::bail!("request {id} changed under its lock");
    }
    let detail: Value = json!({
        "via": ext.via(),
        "days": days,
        "reason": reason,
        "due_at_ms": due,
        "before_due_at_ms": before,
    });
    store::requests::add_event(&mut tx, id, "extended", Some(event_actor), &detail, now).await?;
    jobs::sla::arm_timers(app, &mut tx, id, reminder, due).await?;
    audit::operation(
        &mut tx,
        audit::Operation {
            org_id: &org_id,
            actor,
            action: "request.extend",
            target: Some(id),
            detail: json!({
                "before": {"sla_due_at": before, "sla_days": sla_days},
                "after": {"sla_due_at": due, "sla_days": total, "extended_at": now},
                "via": ext.via(),
                "days": days,
                "reason": reason,
            }),
            at: now,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Ok(Extended {
        before_ms: before,
        due_ms: due,
        sla_days: total,
    }))
}
