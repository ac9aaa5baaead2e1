//! Now: what is pending and for how long (in business time), SLA at risk and
//! breached, jobs by queue and state, workers alive, backlogs, cron
//! schedules. Every number is an indexed count or a runtime gauge.
use std::{collections::BTreeMap, str::FromStr};

use axum::{extract::State, response::Response};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Session, When, business, failure, render, span, when};
use crate::{app::App, on_db};

/// "At risk": less than this much business time left.
pub const AT_RISK_MS: i64 = 2 * 3600 * 1000;
/// A cron tick this much past due without a claim counts as late.
pub const CRON_GRACE_MS: i64 = 90 * 1000;

#[derive(Serialize)]
pub(crate) struct QueueRow {
    pub name: String,
    pub ready: u64,
    pub scheduled: u64,
    pub running: u64,
    pub dead: u64,
    pub paused: bool,
}

#[derive(Serialize)]
pub(crate) struct CronRow {
    pub name: String,
    pub expr: String,
    pub tz: String,
    pub last: Option<When>,
    pub next: Option<When>,
    /// ok | late | never
    pub state: &'static str,
}

#[derive(Serialize)]
struct WorkerRow {
    id: String,
    jobs: String,
    crons: String,
    seen: When,
}

#[derive(Serialize)]
struct Oldest {
    id: String,
    number: String,
    org: String,
    business_age: String,
    wall_age: String,
    created: When,
}

#[derive(Serialize)]
struct NowData {
    submitted: i64,
    in_review: i64,
    at_risk: i64,
    breached: i64,
    oldest: Option<Oldest>,
    queues: Vec<QueueRow>,
    dead_total: u64,
    workers: Vec<WorkerRow>,
    crons: Vec<CronRow>,
    emails_pending: i64,
    emails_failed_24h: i64,
    outbox_pending: Option<i64>,
    webhooks: Option<WebhookBacklog>,
}

#[derive(Serialize, Default)]
pub(crate) struct WebhookBacklog {
    pub pending: i64,
    pub failed_24h: i64,
}

pub(crate) const OPEN: [&str; 2] = ["submitted", "in_review"];

async fn count(app: &App, sql: &'static str, binds: &[i64], s: &str) -> anyhow::Result<i64> {
    let n: i64 = on_db!(&app.db, |p| {
        let mut q = sqlx::query_scalar(sql).bind(s);
        for b in binds {
            q = q.bind(*b);
        }
        q.fetch_one(p).await
    })?;
    Ok(n)
}

/// Pending requests whose due time has passed (open and overdue).
pub(crate) async fn breached_open(app: &App, now: i64) -> anyhow::Result<i64> {
    let mut n = 0;
    for s in OPEN {
        n += count(
            app,
            "SELECT COUNT(*) FROM requests WHERE status = $1 AND sla_due_at <= $2",
            &[now],
            s,
        )
        .await?;
    }
    Ok(n)
}

/// Open requests with less than two business hours left (per region:
/// the instant two business hours from now, then an index range count).
pub(crate) async fn at_risk(app: &App, now: i64) -> anyhow::Result<i64> {
    let now_dt = DateTime::<Utc>::from_timestamp_millis(now).unwrap_or_default();
    let mut n = 0;
    for region in app.calendars.regions() {
        let Some(cal) = app.calendars.get(region) else {
            continue;
        };
        let cutoff = business::add(cal, now_dt, AT_RISK_MS).timestamp_millis();
        for s in OPEN {
            let c: i64 = on_db!(&app.db, |p| sqlx::query_scalar(
                // CROSS JOIN: SQLite walks the requests' range first, never
                // every org.
                "SELECT COUNT(*) FROM requests r CROSS JOIN orgs o \
                 WHERE o.id = r.org_id AND r.status = $1 AND r.sla_due_at > $2 \
                   AND r.sla_due_at <= $3 AND o.region = $4"
            )
            .bind(s)
            .bind(now)
            .bind(cutoff)
            .bind(region.as_str())
            .fetch_one(p)
            .await)?;
            n += c;
        }
    }
    Ok(n)
}

/// Every queue the dashboard shows: the daemon's own plus any other that a
/// live worker reports.
pub(crate) fn queue_names() -> Vec<String> {
    crate::jobs::QUEUES.iter().map(|q| q.to_string()).collect()
}

pub(crate) async fn queue_rows(app: &App) -> anyhow::Result<Vec<QueueRow>> {
    let paused = app.queue.paused().await?;
    let mut out = Vec::new();
    for q in queue_names() {
        let s = app.queue.stats(&q).await?;
        out.push(QueueRow {
            paused: paused.contains(&q),
            name: q,
            ready: s.ready,
            scheduled: s.scheduled,
            running: s.running,
            dead: s.dead,
        });
    }
    Ok(out)
}

/// Cron schedules: the daemon's own from the config (the SLA sweep and the
/// spending-limits close, so a schedule whose every scheduler died still
/// shows, late), plus any other that live schedulers report.
pub(crate) async fn cron_rows(
    app: &App,
    beats: &[approvald_workers::store::WorkerBeat],
    now: i64,
) -> anyhow::Result<Vec<CronRow>> {
    let mut specs: BTreeMap<String, (String, String)> = BTreeMap::new();
    specs.insert(
        crate::jobs::sweep::SCHEDULE.to_string(),
        (app.config.sla.sweep_cron.clone(), "UTC".to_string()),
    );
    specs.insert(
        crate::jobs::limits::SCHEDULE.to_string(),
        (app.config.payments.limits_cron.clone(), "UTC".to_string()),
    );
    for b in beats {
        let Ok(info) = serde_json::from_str::<serde_json::Value>(&b.info) else {
            continue;
        };
        for c in info["crons"].as_array().into_iter().flatten() {
            if let (Some(name), Some(expr)) = (c["name"].as_str(), c["expr"].as_str()) {
                specs.insert(
                    name.to_string(),
                    (
                        expr.to_string(),
                        c["tz"].as_str().unwrap_or("UTC").to_string(),
                    ),
                );
            }
        }
    }
    let mut out = Vec::new();
    for (name, (expr, tz_name)) in specs {
        let last = app.queue.last_tick(&name).await?;
        let tz = chrono_tz::Tz::from_str(&tz_name).unwrap_or(chrono_tz::UTC);
        let sched = cron::Schedule::from_str(&expr).ok();
        let now_dt = DateTime::<Utc>::from_timestamp_millis(now).unwrap_or_default();
        let next_after = |ms: i64| -> Option<i64> {
            let from = DateTime::<Utc>::from_timestamp_millis(ms)?.with_timezone(&tz);
            sched
                .as_ref()?
                .after(&from)
                .next()
                .map(|t| t.timestamp_millis())
        };
        let due_after_last = last.and_then(next_after);
        let next = next_after(now_dt.timestamp_millis());
        let state = match (last, due_after_last) {
            (None, _) => "never",
            (Some(_), Some(due)) if due + CRON_GRACE_MS < now => "late",
            _ => "ok",
        };
        out.push(CronRow {
            name,
            expr,
            tz: tz_name,
            last: last.map(|l| when(l, now)),
            next: next.map(|n| when(n, now)),
            state,
        });
    }
    Ok(out)
}

/// The `emails` backlog: pending, and failed in the last 24 h.
pub(crate) async fn email_backlog(app: &App, now: i64) -> anyhow::Result<(i64, i64)> {
    let pending: i64 = on_db!(&app.db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM emails WHERE status = 'pending'"
    )
    .fetch_one(p)
    .await)?;
    let failed: i64 = on_db!(&app.db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM emails WHERE status = 'failed' AND created_at >= $1"
    )
    .bind(now - 24 * 3600 * 1000)
    .fetch_one(p)
    .await)?;
    Ok((pending, failed))
}

/// Webhook deliveries waiting (indexes `webhook_deliveries_pending`) and
/// failed for good in the last 24 h (`webhook_deliveries_status`).
pub(crate) async fn webhook_backlog(app: &App, now: i64) -> anyhow::Result<WebhookBacklog> {
    let pending: i64 = on_db!(&app.db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'"
    )
    .fetch_one(p)
    .await)?;
    let failed_24h: i64 = on_db!(&app.db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'failed' AND updated_at >= $1"
    )
    .bind(now - 24 * 3600 * 1000)
    .fetch_one(p)
    .await)?;
    Ok(WebhookBacklog {
        pending,
        failed_24h,
    })
}

pub(crate) async fn outbox_pending(app: &App) -> anyhow::Result<Option<i64>> {
    if app.queue_in_db {
        return Ok(None);
    }
    Ok(Some(crate::store::outbox::count_pending(&app.db).await?))
}

/// The oldest open request by business age (the few oldest by wall time of
/// each open status, measured in their org's calendar).
async fn oldest(app: &App, now: i64) -> anyhow::Result<Option<Oldest>> {
    let mut best: Option<(i64, Oldest)> = None;
    let now_dt = DateTime::<Utc>::from_timestamp_millis(now).unwrap_or_default();
    for s in OPEN {
        let rows: Vec<(String, String, String, String, i64)> = on_db!(&app.db, |p| {
            sqlx::query_as(
                "SELECT r.id, r.number, o.name, o.region, r.created_at FROM requests r \
                 JOIN orgs o ON o.id = r.org_id WHERE r.status = $1 \
                 ORDER BY r.created_at, r.id LIMIT 5",
            )
            .bind(s)
            .fetch_all(p)
            .await
        })?;
        for (id, number, org, region, created) in rows {
            let created_dt = DateTime::<Utc>::from_timestamp_millis(created).unwrap_or_default();
            let biz = match app.calendars.lookup(&region) {
                Ok(cal) => business::between(cal, created_dt, now_dt),
                Err(_) => now - created,
            };
            if best.as_ref().is_none_or(|(b, _)| biz > *b) {
                best = Some((
                    biz,
                    Oldest {
                        id,
                        number,
                        org,
                        business_age: span(biz),
                        wall_age: span(now - created),
                        created: when(created, now),
                    },
                ));
            }
        }
    }
    Ok(best.map(|(_, o)| o))
}

pub async fn page(State(app): State<App>, session: Session) -> Response {
    match build(&app).await {
        Ok(data) => render(
            "now.html",
            Some(&session),
            "Now",
            "now",
            15,
            app.now_ms(),
            data,
        ),
        Err(e) => failure(Some(&session), format!("{e:#}")),
    }
}

async fn build(app: &App) -> anyhow::Result<NowData> {
    let now = app.now_ms();
    let submitted = count(
        app,
        "SELECT COUNT(*) FROM requests WHERE status = $1",
        &[],
        "submitted",
    )
    .await?;
    let in_review = count(
        app,
        "SELECT COUNT(*) FROM requests WHERE status = $1",
        &[],
        "in_review",
    )
    .await?;
    let queues = queue_rows(app).await?;
    let dead_total = queues.iter().map(|q| q.dead).sum();
    let beats = app.queue.workers_alive(100).await?;
    let crons = cron_rows(app, &beats, now).await?;
    let workers = beats
        .iter()
        .map(|b| {
            let info: serde_json::Value = serde_json::from_str(&b.info).unwrap_or_default();
            let list = |k: &str| {
                info[k]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().or_else(|| v["name"].as_str()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default()
            };
            WorkerRow {
                id: b.worker_id.clone(),
                jobs: list("jobs"),
                crons: list("crons"),
                seen: when(b.seen_at_ms, now),
            }
        })
        .collect();
    let (emails_pending, emails_failed_24h) = email_backlog(app, now).await?;
    Ok(NowData {
        submitted,
        in_review,
        at_risk: at_risk(app, now).await?,
        breached: breached_open(app, now).await?,
        oldest: oldest(app, now).await?,
        queues,
        dead_total,
        workers,
        crons,
        emails_pending,
        emails_failed_24h,
        outbox_pending: outbox_pending(app).await?,
        webhooks: Some(webhook_backlog(app, now).await?),
    })
}

/// Gauges for the alert rules (deploy/prometheus/alerts.yml), refreshed on
/// every `/metrics` scrape: runtimes alive, late cron schedules, paused
/// queues, open requests past their deadline, mail and webhook backlogs,
/// readiness.
pub async fn refresh_gauges(app: &App) {
    let now = app.now_ms();
    let beats = app.queue.workers_alive(1000).await;
    let ready_queue = app.queue.ping().await.is_ok();
    let ready_db = app.db.ping().await.is_ok();
    metrics::gauge!("approvald_ready").set(if ready_queue && ready_db { 1.0 } else { 0.0 });
    if let Ok(beats) = beats {
        metrics::gauge!("approvald_workers_alive").set(beats.len() as f64);
        if let Ok(crons) = cron_rows(app, &beats, now).await {
            for c in crons {
                metrics::gauge!("approvald_cron_late", "schedule" => c.name.clone())
                    .set(if c.state == "late" { 1.0 } else { 0.0 });
                if let Some(last) = app.queue.last_tick(&c.name).await.ok().flatten() {
                    metrics::gauge!("approvald_cron_last_run_timestamp_seconds", "schedule" => c.name)
                        .set(last as f64 / 1000.0);
                }
            }
        }
    }
    if let Ok(paused) = app.queue.paused().await {
        for q in queue_names() {
            metrics::gauge!("approvald_queue_paused", "queue" => q.clone())
                .set(if paused.contains(&q) { 1.0 } else { 0.0 });
        }
    }
    if let Ok(n) = breached_open(app, now).await {
        metrics::gauge!("approvald_requests_overdue").set(n as f64);
    }
    if let Ok((pending, _)) = email_backlog(app, now).await {
        metrics::gauge!("approvald_emails_pending").set(pending as f64);
    }
    if let Ok(w) = webhook_backlog(app, now).await {
        metrics::gauge!("approvald_webhook_backlog").set(w.pending as f64);
    }
}
