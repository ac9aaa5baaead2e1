//! The `webhook` job: one delivery attempt of one event to one endpoint.
//!
//! Each job carries the attempt number it makes. It does nothing unless the
//! delivery is still `pending` with exactly the attempts before it recorded,
//! so a redelivered job whose attempt was recorded changes nothing. A job
//! whose process died after sending but before recording sends again: the
//! receiver sees the same `webhook-id` twice (at least once, by design).
//!
//! The outcome is recorded in one transaction: the attempt row, the
//! delivery's state, the endpoint's failure run and, after a failure, the
//! next attempt as a delayed job on `webhooks.retry_schedule_secs` (the
//! runtime's own retries and dead letters are kept for failures of approvald
//! itself, such as the database being unreachable). 2xx is delivered; 410
//! Gone disables the endpoint at once; a target refused by the address
//! check fails the delivery at once; anything else (another status, a
//! timeout, a refused connection) is retried until the schedule is used up.
//! An endpoint whose deliveries have only failed for
//! `webhooks.disable_after_days` is disabled when a delivery fails for good,
//! and the org's admins are mailed.
use std::time::{Duration, Instant};

use anyhow::Context;
use approvald_workers::{Job, JobError, JobInfo, PushOptions};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{secret, target};
use crate::{app::App, db::Tx, jobs, on_db, on_tx, store::audit};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliverJob {
    pub delivery_id: String,
    /// The attempt this job makes, 1-based over the delivery's whole life.
    pub attempt: i64,
}

impl Job for DeliverJob {
    const NAME: &'static str = "webhook";
    const TIMEOUT: Duration = Duration::from_secs(120);
    const CONCURRENCY: usize = 16;
    type Context = App;

    async fn run(self, app: App, _info: JobInfo) -> Result<(), JobError> {
        attempt(&app, &self.delivery_id, self.attempt).await
    }
}

/// Queue attempt `attempt` of `delivery_id` in `tx`, at `at_ms` (now if None).
pub async fn push(
    app: &App,
    tx: &mut Tx,
    delivery_id: &str,
    attempt: i64,
    at_ms: Option<i64>,
) -> anyhow::Result<()> {
    let opts = PushOptions {
        run_at: at_ms.and_then(chrono::DateTime::from_timestamp_millis),
        dedupe_key: Some(format!("webhook:{delivery_id}:{attempt}")),
    };
    jobs::enqueue(
        app,
        tx,
        &DeliverJob {
            delivery_id: delivery_id.to_string(),
            attempt,
        },
        opts,
    )
    .await
}

/// Deliveries still `pending` whose next attempt was due before `overdue_at`
/// (the sweep's reconciler: a queue that restarted empty lost their job).
/// Pushed again with the original dedupe key, so a job the queue still holds
/// is not doubled; a doubled one would record nothing twice (the attempt
/// check). At most 500 per call, oldest first.
pub async fn reconcile(app: &App, overdue_at: i64) -> anyhow::Result<usize> {
    let stuck: Vec<(String, i64)> = on_db!(&app.db, |p| sqlx::query_as(
        "SELECT id, attempts FROM webhook_deliveries \
         WHERE status = 'pending' AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT 500"
    )
    .bind(overdue_at)
    .fetch_all(p)
    .await)?;
    if stuck.is_empty() {
        return Ok(0);
    }
    let mut tx = app.db.begin().await?;
    for (id, attempts) in &stuck {
        push(app, &mut tx, id, attempts + 1, None).await?;
    }
    tx.commit().await?;
    tracing::warn!(
        count = stuck.len(),
        "webhook deliveries overdue; pushed their jobs again"
    );
    Ok(stuck.len())
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    status: String,
    attempts: i64,
    round_start: i64,
    endpoint_id: String,
    org_id: Option<String>,
    url: String,
    enabled: bool,
    deleted_at: Option<i64>,
    secret: String,
    previous_secret: Option<String>,
    previous_expires_at: Option<i64>,
    event_id: String,
    body: String,
}

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// A non-2xx answer other than 410.
    HttpError,
    /// 410 Gone: the receiver asks never to be called again.
    Gone,
    Timeout,
    /// The connection was refused or broke.
    Refused,
    /// The target failed the address check (at delivery time).
    Blocked,
    /// Anything else (DNS failure, TLS error...).
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::HttpError => "http_error",
            Self::Gone => "gone",
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Blocked => "blocked",
            Self::Error => "error",
        }
    }
    /// Worth another attempt later?
    fn retryable(self) -> bool {
        matches!(
            self,
            Self::HttpError | Self::Timeout | Self::Refused | Self::Error
        )
    }
}

struct Attempted {
    outcome: Outcome,
    status: Option<u16>,
    error: Option<String>,
    excerpt: Option<String>,
    started_at: i64,
    duration_ms: i64,
}

async fn attempt(app: &App, delivery_id: &str, attempt: i64) -> Result<(), JobError> {
    let row: Option<Row> = on_db!(&app.db, |p| {
        sqlx::query_as::<_, Row>(
        "SELECT d.status, d.attempts, d.round_start, d.endpoint_id, e.org_id, e.url, e.enabled, \
                e.deleted_at, e.secret, e.previous_secret, e.previous_expires_at, \
                ev.id AS event_id, ev.body \
         FROM webhook_deliveries d \
         JOIN webhook_endpoints e ON e.id = d.endpoint_id \
         JOIN webhook_events ev ON ev.id = d.event_id \
         WHERE d.id = $1"
    )
    .bind(delivery_id)
    .fetch_optional(p)
    .await
    })
    .context("loading webhook delivery")?;
    let Some(row) = row else {
        return Err(JobError::permanent(anyhow::anyhow!(
            "webhook delivery {delivery_id} does not exist"
        )));
    };
    if row.status != "pending" || row.attempts != attempt - 1 {
        tracing::debug!(
            delivery_id,
            attempt,
            status = %row.status,
            "webhook: attempt already made, nothing to do"
        );
        return Ok(());
    }
    if !row.enabled || row.deleted_at.is_some() {
        let now = app.now_ms();
        let mut tx = app.db.begin().await.context("begin")?;
        on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL, \
                 last_error = 'endpoint disabled', updated_at = $2 \
             WHERE id = $1 AND status = 'pending' AND attempts = $3"
        )
        .bind(delivery_id)
        .bind(now)
        .bind(attempt - 1)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .context("failing webhook delivery")?;
        tx.commit().await.context("commit")?;
        return Ok(());
    }

    let sealer = secret::Sealer::from_config(&app.config.webhooks)?;
    let now = app.now_ms();
    let mut secrets = vec![sealer.open(&row.endpoint_id, &row.secret)?];
    if let (Some(prev), Some(until)) = (&row.previous_secret, row.previous_expires_at)
        && until > now
    {
        secrets.push(sealer.open(&row.endpoint_id, prev)?);
    }
    let done = send(app, &row, &secrets).await;
    record(app, delivery_id, attempt, &row, done).await
}

/// Make the HTTP request and classify what happened.
async fn send(app: &App, row: &Row, secrets: &[String]) -> Attempted {
    let cfg = &app.config.webhooks;
    let started_at = app.now_ms();
    let clock = Instant::now();
    let done = |outcome, status, error: Option<String>, excerpt| Attempted {
        outcome,
        status,
        error,
        excerpt,
        started_at,
        duration_ms: clock.elapsed().as_millis() as i64,
    };
    let url = match target::check_url(&row.url, cfg) {
        Ok(u) => u,
        Err(b) => return done(Outcome::Blocked, None, Some(b.0), None),
    };
    if let Err(e) = target::check_at_delivery(&url, cfg).await {
        let outcome = match e {
            target::ResolveError::Blocked(_) => Outcome::Blocked,
            target::ResolveError::Dns(_) => Outcome::Error,
        };
        return done(outcome, None, Some(e.to_string()), None);
    }
    let client = match target::client(cfg) {
        Ok(c) => c,
        Err(e) => return done(Outcome::Error, None, Some(format!("{e:#}")), None),
    };
    let ts = chrono::Utc::now().timestamp();
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let signature = match secret::signature_header(&refs, &row.event_id, ts, row.body.as_bytes()) {
        Ok(s) => s,
        Err(e) => return done(Outcome::Error, None, Some(format!("{e:#}")), None),
    };
    let res = client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &row.event_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(row.body.clone())
        .send()
        .await;
    match res {
        Ok(mut resp) => {
            let status = resp.status();
            let excerpt = read_excerpt(&mut resp, cfg.response_excerpt_bytes).await;
            let outcome = if status.is_success() {
                Outcome::Delivered
            } else if status == reqwest::StatusCode::GONE {
                Outcome::Gone
            } else {
                Outcome::HttpError
            };
            let error = (!status.is_success()).then(|| format!("HTTP {status}"));
            done(outcome, Some(status.as_u16()), error, Some(excerpt))
        }
        Err(e) => {
            let outcome = if let Some(b) = target::blocked_in(&e) {
                return done(Outcome::Blocked, None, Some(b), None);
            } else if e.is_timeout() {
                Outcome::Timeout
            } else if e.is_connect() {
                Outcome::Refused
            } else {
                Outcome::Error
            };
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            done(outcome, None, Some(truncate(&msg, 500)), None)
        }
    }
}

/// The first `limit` bytes of the body; the rest is never read.
async fn read_excerpt(resp: &mut reqwest::Response, limit: usize) -> String {
    let mut buf: Vec<u8> = Vec::new();
    while buf.len() < limit {
        match resp.chunk().await {
            Ok(Some(c)) => buf.extend_from_slice(&c),
            _ => break,
        }
    }
    buf.truncate(limit);
    String::from_utf8_lossy(&buf).into_owned()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Record the attempt and what follows from it, in one transaction.
async fn record(
    app: &App,
    delivery_id: &str,
    attempt: i64,
    row: &Row,
    a: Attempted,
) -> Result<(), JobError> {
    let cfg = &app.config.webhooks;
    let now = app.now_ms();
    let in_round = (attempt - row.round_start).max(1) as usize;
    let next_at = (a.outcome.retryable() && in_round <= cfg.retry_schedule_secs.len())
        .then(|| now + (cfg.retry_schedule_secs[in_round - 1] as i64) * 1000);
    let status = match (a.outcome, next_at) {
        (Outcome::Delivered, _) => "delivered",
        (_, Some(_)) => "pending",
        (_, None) => "failed",
    };
    let mut tx = app.db.begin().await.context("begin")?;
    let moved = on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE webhook_deliveries SET attempts = $2, status = $3, next_attempt_at = $4, \
             last_status = $5, last_error = $6, delivered_at = $7, updated_at = $8 \
         WHERE id = $1 AND status = 'pending' AND attempts = $9"
    )
    .bind(delivery_id)
    .bind(attempt)
    .bind(status)
    .bind(next_at)
    .bind(a.status.map(i64::from))
    .bind(&a.error)
    .bind((a.outcome == Outcome::Delivered).then_some(now))
    .bind(now)
    .bind(attempt - 1)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .context("recording webhook attempt")?;
    if moved == 0 {
        // A duplicate of this job recorded the attempt first.
        tx.rollback().await.ok();
        return Ok(());
    }
    let attempt_id = uuid::Uuid::now_v7().to_string();
    on_tx!(&mut tx, |c| sqlx::query(
        "INSERT INTO webhook_attempts (id, delivery_id, attempt, started_at, duration_ms, \
             response_status, outcome, error, response_excerpt) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    )
    .bind(&attempt_id)
    .bind(delivery_id)
    .bind(attempt)
    .bind(a.started_at)
    .bind(a.duration_ms)
    .bind(a.status.map(i64::from))
    .bind(a.outcome.as_str())
    .bind(&a.error)
    .bind(&a.excerpt)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .context("writing webhook attempt")?;

    let mut disable: Option<&'static str> = None;
    if a.outcome == Outcome::Delivered {
        on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE webhook_endpoints SET failing_since = NULL, last_success_at = $2 WHERE id = $1"
        )
        .bind(&row.endpoint_id)
        .bind(now)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .context("updating webhook endpoint")?;
    } else {
        let since: Option<i64> = on_tx!(&mut tx, |c| sqlx::query_scalar(
            "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $2) \
             WHERE id = $1 RETURNING failing_since"
        )
        .bind(&row.endpoint_id)
        .bind(a.started_at)
        .fetch_one(c)
        .await)
        .context("updating webhook endpoint")?;
        if a.outcome == Outcome::Gone {
            disable = Some("gone");
        } else if status == "failed"
            && since.is_some_and(|s| now - s >= cfg.disable_after_days as i64 * 86_400_000)
        {
            disable = Some("failing");
        }
    }
    if let Some(next) = next_at {
        push(app, &mut tx, delivery_id, attempt + 1, Some(next)).await?;
    }
    if let Some(reason) = disable {
        disable_endpoint(
            app,
            &mut tx,
            &row.endpoint_id,
            row.org_id.as_deref(),
            reason,
            now,
        )
        .await?;
    }
    tx.commit().await.context("commit")?;
    metrics::counter!("approvald_webhook_deliveries_total", "outcome" => a.outcome.as_str())
        .increment(1);
    metrics::histogram!("approvald_webhook_delivery_seconds").record(a.duration_ms as f64 / 1000.0);
    if a.outcome != Outcome::Delivered {
        tracing::info!(
            delivery_id,
            attempt,
            outcome = a.outcome.as_str(),
            status = a.status,
            error = a.error.as_deref().unwrap_or(""),
            next_attempt_at = next_at,
            "webhook attempt failed"
        );
    }
    Ok(())
}

/// Disable an endpoint approvald gave up on (`gone`: it answered 410;
/// `failing`: only failures for `webhooks.disable_after_days`), audit it and
/// mail the org's admins, once.
pub async fn disable_endpoint(
    app: &App,
    tx: &mut Tx,
    endpoint_id: &str,
    org_id: Option<&str>,
    reason: &str,
    now: i64,
) -> anyhow::Result<()> {
    let n = on_tx!(tx, |c| sqlx::query(
        "UPDATE webhook_endpoints SET enabled = FALSE, disabled_reason = $2, disabled_at = $3, updated_at = $3 \
         WHERE id = $1 AND enabled"
    )
    .bind(endpoint_id)
    .bind(reason)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .context("disabling webhook endpoint")?;
    if n == 0 {
        return Ok(());
    }
    let url: String = on_tx!(tx, |c| sqlx::query_scalar(
        "SELECT url FROM webhook_endpoints WHERE id = $1"
    )
    .bind(endpoint_id)
    .fetch_one(c)
    .await)?;
    audit::operation(
        tx,
        audit::Operation {
            org_id: org_id.unwrap_or(audit::PLATFORM),
            actor: "job:webhook",
            action: "webhook.disable",
            target: Some(endpoint_id),
            detail: json!({"before": {"enabled": true}, "after": {"enabled": false}, "reason": reason}),
            at: now,
        },
    )
    .await?;
    tracing::warn!(endpoint_id, url, reason, "webhook endpoint disabled");
    let Some(org_id) = org_id else {
        // A platform-wide endpoint has no org admins to tell; the log line
        // and the audit row above are the notice.
        return Ok(());
    };
    let admins: Vec<(String, String, String)> = on_tx!(tx, |c| sqlx::query_as(
        "SELECT email, name, locale FROM members \
         WHERE org_id = $1 AND status = 'active' AND kind IN ('super_admin', 'admin') \
         ORDER BY created_at, id LIMIT 50"
    )
    .bind(org_id)
    .fetch_all(c)
    .await)?;
    for (email, name, locale) in admins {
        crate::mail::queue_email(
            app,
            tx,
            crate::mail::EmailSpec {
                template: crate::mail::Template::WebhookDisabled,
                request_id: None,
                to: crate::mail::Recipient {
                    email,
                    name,
                    locale: crate::domain::ids::Locale::or_en(&locale),
                    reviewer: None,
                },
                params: json!({
                    "dedupe": format!("webhook-disabled:{endpoint_id}:{now}"),
                    "org_id": org_id,
                    "webhook_url": url,
                    "webhook_reason": reason,
                }),
            },
        )
        .await?;
    }
    Ok(())
}
