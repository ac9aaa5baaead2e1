//! Requests: filtered by org, kind, status, reviewer and breached, sorted by
//! SLA time left (keyset pages of 50 over the `(status, sla_due_at)` index,
//! one query per status, merged); a detail page with the whole timeline and
//! the operator's actions: resend the review mail, extend the SLA (with a
//! reason), cancel.
use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    Session, When, business, failure, field, form_pairs, local_time, message, now, qs,
    refuse_change, render, span, when,
};
use crate::{
    app::App,
    flows::{
        self,
        requests::{CancelBy, CancelError, ExtendError, Extension},
    },
    jobs::{self, notify::NotifyJob},
    mail::Template,
    on_db, on_tx,
    store::{self, audit},
};

const PAGE: i64 = 50;
const STATUSES: [&str; 5] = [
    "submitted",
    "in_review",
    "approved",
    "rejected",
    "cancelled",
];

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    org: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    reviewer: String,
    #[serde(default)]
    breached: String,
    #[serde(default)]
    after: String,
}

type ListRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<i64>,
);

#[derive(Serialize)]
struct Row {
    id: String,
    number: String,
    org: String,
    kind: String,
    status: String,
    due: When,
    due_local: String,
    left: String,
    /// breached | at_risk | ok | closed
    flag: &'static str,
}

/// Business time left until `due` in the org's calendar (negative: overdue).
fn left_ms(app: &App, region: &str, now: i64, due: i64) -> i64 {
    let (a, b) = (
        DateTime::<Utc>::from_timestamp_millis(now.min(due)).unwrap_or_default(),
        DateTime::<Utc>::from_timestamp_millis(now.max(due)).unwrap_or_default(),
    );
    let ms = match app.calendars.lookup(region) {
        Ok(cal) => business::between(cal, a, b),
        Err(_) => (due - now).abs(),
    };
    if due >= now { ms } else { -ms }
}

pub(crate) fn tz_of(app: &App, region: &str) -> chrono_tz::Tz {
    crate::jobs::notify::region_tz(app, region)
}

enum Bind {
    Text(String),
    Int(i64),
}

struct Filters<'a> {
    org: Option<&'a str>,
    kind: Option<&'a str>,
    reviewer: Option<&'a str>,
    breached: bool,
    now: i64,
    /// Keyset: strictly after this `(sla_due_at, id)`.
    after: Option<(i64, &'a str)>,
}

/// The list query for one status, with only the filters given, so each is
/// an index range read in SLA order: `requests_org_status_due` (org),
/// `requests_kind_status_due` (kind), the reviewer's assignments
/// (`request_reviewers_by_id`, then the rows by primary key and a sort of
/// that reviewer's requests only), `requests_breached_due` (breached, closed
/// statuses), else `requests_status_due_id`; "breached" on an open status
/// is "past its due time", the head of that range.
fn list_sql(status: &str, f: &Filters<'_>, limit: i64) -> (String, Vec<Bind>) {
    let mut binds = vec![Bind::Text(status.to_string())];
    // The reviewer's assignments first (a materialized CTE: planners must
    // not trade it for a walk of the whole status range hoping to meet 51).
    let mut sql = match f.reviewer {
        Some(rv) => {
            binds.push(Bind::Text(rv.to_string()));
            String::from(
                "WITH mine AS MATERIALIZED (SELECT rr.request_id FROM request_reviewers rr \
                 WHERE rr.reviewer_id = $2) \
                 SELECT r.id, r.number, r.org_id, o.name, o.region, r.kind, r.status, r.sla_due_at, \
                        r.created_at, r.breached_at \
                 FROM mine JOIN requests r ON r.id = mine.request_id JOIN orgs o ON o.id = r.org_id \
                 WHERE r.status = $1",
            )
        }
        None => String::from(
            "SELECT r.id, r.number, r.org_id, o.name, o.region, r.kind, r.status, r.sla_due_at, \
                    r.created_at, r.breached_at FROM requests r JOIN orgs o ON o.id = r.org_id \
             WHERE r.status = $1",
        ),
    };
    let mut push = |sql: &mut String, cond: &str, b: Bind| {
        binds.push(b);
        sql.push_str(&cond.replace('?', &format!("${}", binds.len())));
    };
    if let Some(o) = f.org {
        push(&mut sql, " AND r.org_id = ?", Bind::Text(o.to_string()));
    }
    if let Some(k) = f.kind {
        push(&mut sql, " AND r.kind = ?", Bind::Text(k.to_string()));
    }
    if f.breached {
        if now::OPEN.contains(&status) {
            push(&mut sql, " AND r.sla_due_at <= ?", Bind::Int(f.now));
        } else {
            sql.push_str(" AND r.breached_at IS NOT NULL");
        }
    }
    if let Some((due, id)) = f.after {
        push(&mut sql, " AND (r.sla_due_at, r.id) > (?", Bind::Int(due));
        push(&mut sql, ", ?)", Bind::Text(id.to_string()));
    }
    push(
        &mut sql,
        " ORDER BY r.sla_due_at, r.id LIMIT ?",
        Bind::Int(limit),
    );
    (sql, binds)
}

pub async fn list(
    State(app): State<App>,
    session: Session,
    Query(q): Query<ListQuery>,
) -> Response {
    let now = app.now_ms();
    let statuses: Vec<&str> = match q.status.as_str() {
        "" | "open" => now::OPEN.to_vec(),
        "all" => STATUSES.to_vec(),
        s if STATUSES.contains(&s) => vec![s],
        _ => {
            return message(
                StatusCode::BAD_REQUEST,
                Some(&session),
                "Unknown status",
                "status must be open, all, submitted, in_review, approved, rejected or cancelled.",
            );
        }
    };
    let (after_due, after_id) = match q.after.split_once('_') {
        Some((d, id)) => match d.parse::<i64>() {
            Ok(d) => (d, id.to_string()),
            Err(_) => (i64::MIN, String::new()),
        },
        None => (i64::MIN, String::new()),
    };
    let opt = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
    let (org, kind, reviewer) = (opt(&q.org), opt(&q.kind), opt(&q.reviewer));
    let breached = q.breached == "1";
    let mut rows: Vec<ListRow> = Vec::new();
    for s in &statuses {
        let (sql, binds) = list_sql(
            s,
            &Filters {
                org: org.as_deref(),
                kind: kind.as_deref(),
                reviewer: reviewer.as_deref(),
                breached,
                now,
                after: (!after_id.is_empty()).then_some((after_due, after_id.as_str())),
            },
            PAGE + 1,
        );
        let r: Result<Vec<ListRow>, sqlx::Error> = on_db!(&app.db, |p| {
            // Built from fixed fragments only; every value is a bind.
            let mut q = sqlx::query_as::<_, ListRow>(sqlx::AssertSqlSafe(sql.as_str()));
            for b in &binds {
                q = match b {
                    Bind::Text(t) => q.bind(t.clone()),
                    Bind::Int(i) => q.bind(*i),
                };
            }
            q.fetch_all(p).await
        });
        match r {
            Ok(mut v) => rows.append(&mut v),
            Err(e) => return failure(Some(&session), e),
        }
    }
    rows.sort_by(|a, b| (a.7, &a.0).cmp(&(b.7, &b.0)));
    let more = rows.len() as i64 > PAGE;
    rows.truncate(PAGE as usize);
    let next = if more {
        rows.last()
            .map(|r| format!("{}_{}", r.7, r.0))
            .unwrap_or_default()
    } else {
        String::new()
    };
    let out: Vec<Row> = rows
        .into_iter()
        .map(
            |(id, number, _org_id, org_name, region, kind, status, due, _created, breached_at)| {
                let open = now::OPEN.contains(&status.as_str());
                let left = left_ms(&app, &region, now, due);
                let flag = if !open {
                    if breached_at.is_some() {
                        "breached"
                    } else {
                        "closed"
                    }
                } else if due <= now {
                    "breached"
                } else if left < now::AT_RISK_MS {
                    "at_risk"
                } else {
                    "ok"
                };
                Row {
                    id,
                    number,
                    org: org_name,
                    kind,
                    status,
                    due: when(due, now),
                    due_local: local_time(due, tz_of(&app, &region)),
                    left: if open {
                        if left >= 0 {
                            span(left)
                        } else {
                            format!("overdue by {}", span(-left))
                        }
                    } else {
                        String::new()
                    },
                    flag,
                }
            },
        )
        .collect();
    let orgs: Vec<(String, String)> = match on_db!(&app.db, |p| sqlx::query_as(
        "SELECT id, name FROM orgs ORDER BY name, id LIMIT 200"
    )
    .fetch_all(p)
    .await)
    {
        Ok(v) => v,
        Err(e) => return failure(Some(&session), e),
    };
    let kinds: Vec<String> = app.catalog.kinds.iter().map(|k| k.key.clone()).collect();
    let next_link = if next.is_empty() {
        String::new()
    } else {
        format!(
            "/ops/requests?{}",
            qs(&[
                ("org", &q.org),
                ("kind", &q.kind),
                ("status", &q.status),
                ("reviewer", &q.reviewer),
                ("breached", &q.breached),
                ("after", &next),
            ])
        )
    };
    render(
        "requests.html",
        Some(&session),
        "Requests",
        "requests",
        30,
        now,
        minijinja::context! {
            rows => out,
            orgs => orgs,
            kinds => kinds,
            f_org => q.org,
            f_kind => q.kind,
            f_status => if q.status.is_empty() { "open".to_string() } else { q.status.clone() },
            f_reviewer => q.reviewer,
            f_breached => q.breached == "1",
            next_link => next_link,
            paged => !q.after.is_empty(),
        },
    )
}

#[derive(Serialize)]
struct TimelineItem {
    at: When,
    what: String,
    actor: String,
    detail: String,
}

#[derive(Serialize)]
struct MailRow {
    template: String,
    recipient: String,
    status: String,
    attempts: i64,
    last_error: String,
    created: When,
    sent: Option<When>,
}

#[derive(Serialize)]
struct ReviewerRow {
    kind: String,
    id: String,
    name: String,
    email: String,
    assigned: When,
}

type DetailRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

async fn load(app: &App, id: &str) -> Result<Option<DetailRow>, sqlx::Error> {
    on_db!(&app.db, |p| {
        sqlx::query_as(
        "SELECT r.id, r.number, r.org_id, o.name, o.region, r.kind, r.status, r.created_at, r.sla_due_at, \
                r.reminder_at, r.reminded_at, r.breached_at, r.extended_at, r.extension_reason, r.decided_by, \
                r.decided_at FROM requests r JOIN orgs o ON o.id = r.org_id WHERE r.id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await
    })
}

#[derive(Deserialize, Default)]
pub struct DetailQuery {
    #[serde(default)]
    done: String,
}

pub async fn detail(
    State(app): State<App>,
    session: Session,
    Path(id): Path<String>,
    Query(dq): Query<DetailQuery>,
) -> Response {
    let now = app.now_ms();
    let row = match load(&app, &id).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return message(
                StatusCode::NOT_FOUND,
                Some(&session),
                "No such request",
                "There is no request with that id.",
            );
        }
        Err(e) => return failure(Some(&session), e),
    };
    let (
        id,
        number,
        org_id,
        org_name,
        region,
        kind,
        status,
        created,
        due,
        reminder_at,
        reminded_at,
        breached_at,
        extended_at,
        extension_reason,
        decided_by,
        decided_at,
    ) = row;
    let events = match store::requests::events(&app.db, &id).await {
        Ok(e) => e,
        Err(e) => return failure(Some(&session), e),
    };
    let mails = match store::emails::for_request(&app.db, &id).await {
        Ok(m) => m,
        Err(e) => return failure(Some(&session), format!("{e:#}")),
    };
    let reviewers: Vec<(String, String, String, String, i64)> = match on_db!(&app.db, |p| {
        sqlx::query_as(
            "SELECT reviewer_kind, reviewer_id, name, email, assigned_at FROM request_reviewers \
             WHERE request_id = $1 ORDER BY assigned_at, reviewer_id LIMIT 200",
        )
        .bind(&id)
        .fetch_all(p)
        .await
    }) {
        Ok(r) => r,
        Err(e) => return failure(Some(&session), e),
    };
    let tz = tz_of(&app, &region);
    let open = now::OPEN.contains(&status.as_str());
    let left = left_ms(&app, &region, now, due);
    let mut timeline: Vec<(i64, TimelineItem)> = events
        .into_iter()
        .map(|e| {
            (
                e.at,
                TimelineItem {
                    at: when(e.at, now),
                    what: e.kind.replace('_', " "),
                    actor: e.actor.unwrap_or_default(),
                    detail: if e.detail == "{}" {
                        String::new()
                    } else {
                        e.detail
                    },
                },
            )
        })
        .collect();
    for m in &mails {
        if let Some(t) = m.sent_at {
            timeline.push((
                t,
                TimelineItem {
                    at: when(t, now),
                    what: format!("mail sent: {}", m.template.replace('_', " ")),
                    actor: "mailer".into(),
                    detail: m.recipient.clone(),
                },
            ));
        }
    }
    timeline.sort_by_key(|(t, _)| *t);
    let timers = [
        ("Submitted", Some(created)),
        ("Reminder due", reminder_at),
        ("Reminder sent", reminded_at),
        ("SLA due", Some(due)),
        ("Breached", breached_at),
        ("Extended", extended_at),
        ("Decided", decided_at),
    ]
    .into_iter()
    .filter_map(|(label, t)| {
        t.map(|t| {
            minijinja::context! { label => label, at => when(t, now), local => local_time(t, tz) }
        })
    })
    .collect::<Vec<_>>();
    let flash = match dq.done.as_str() {
        "resend" => Some("The review mail is queued again for every reviewer.".to_string()),
        "extend" => Some("The SLA was extended.".to_string()),
        "cancel" => Some("The request was cancelled.".to_string()),
        _ => None,
    };
    render(
        "request.html",
        Some(&session),
        &format!("Request {number}"),
        "requests",
        0,
        now,
        minijinja::context! {
            flash => flash,
            r => minijinja::context! {
                id => id, number => number, org_id => org_id, org => org_name, region => region,
                kind => kind, status => status, open => open,
                due => when(due, now), due_local => local_time(due, tz),
                left => if left >= 0 { span(left) } else { format!("overdue by {}", span(-left)) },
                breached => breached_at.is_some() || (open && due <= now),
                extension_reason => extension_reason, decided_by => decided_by,
            },
            timers => timers,
            timeline => timeline.into_iter().map(|(_, t)| t).collect::<Vec<_>>(),
            mails => mails.into_iter().map(|m| MailRow {
                template: m.template.replace('_', " "),
                recipient: m.recipient,
                status: m.status,
                attempts: m.attempts,
                last_error: m.last_error.unwrap_or_default(),
                created: when(m.created_at, now),
                sent: m.sent_at.map(|t| when(t, now)),
            }).collect::<Vec<_>>(),
            reviewers => reviewers.into_iter().map(|(kind, id, name, email, at)| ReviewerRow {
                kind, id, name, email, assigned: when(at, now),
            }).collect::<Vec<_>>(),
        },
    )
}

fn back(id: &str, done: &str) -> Response {
    Redirect::to(&format!("/ops/requests/{id}?done={done}")).into_response()
}

fn refused(session: &Session, status: StatusCode, title: &str, text: &str) -> Response {
    message(status, Some(session), title, text)
}

/// Queue the request's review-link mails again (each reviewer gets a fresh
/// link; the old one is superseded when the new mail is sent).
pub async fn resend(
    State(app): State<App>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let pairs = form_pairs(&body);
    if let Some(r) = refuse_change(&app, &session, &headers, field(&pairs, "csrf")) {
        return r;
    }
    let now = app.now_ms();
    let actor = session.actor();
    let result: anyhow::Result<Result<(String, u64), &'static str>> = async {
        let mut tx = app.db.begin().await?;
        let row: Option<(String, String)> = on_tx!(&mut tx, |c| sqlx::query_as(
            "SELECT org_id, status FROM requests WHERE id = $1"
        )
        .bind(&id)
        .fetch_optional(c)
        .await)?;
        let Some((org_id, status)) = row else {
            return Ok(Err("no such request"));
        };
        if status != "in_review" {
            return Ok(Err("only a request in review has review mails to resend"));
        }
        let ids: Vec<String> = on_tx!(&mut tx, |c| sqlx::query_scalar(
            "SELECT id FROM emails WHERE request_id = $1 AND template = $2 ORDER BY created_at LIMIT 100"
        )
        .bind(&id)
        .bind(Template::ReviewRequested.as_str())
        .fetch_all(c)
        .await)?;
        let mut n = 0u64;
        for eid in &ids {
            let moved = on_tx!(&mut tx, |c| sqlx::query(
                "UPDATE emails SET status = 'pending', last_error = NULL \
                 WHERE id = $1 AND status IN ('sent', 'failed', 'skipped')"
            )
            .bind(eid)
            .execute(c)
            .await
            .map(|r| r.rows_affected()))?;
            if moved == 1 {
                jobs::enqueue(
                    &app,
                    &mut tx,
                    &NotifyJob {
                        email_id: eid.clone(),
                    },
                    approvald_workers::PushOptions::default()
                        .dedupe(format!("notify:{eid}:resend:{now}")),
                )
                .await?;
                n += 1;
            }
        }
        if n == 0 {
            return Ok(Err(
                "no review mail can be sent again (none was sent yet, or all are still on their way)",
            ));
        }
        store::requests::add_event(
            &mut tx,
            &id,
            "review_mail_resent",
            Some(&actor),
            &serde_json::json!({ "mails": n }),
            now,
        )
        .await?;
        audit::operation(
            &mut tx,
            audit::Operation {
                org_id: &org_id,
                actor: &actor,
                action: "ops.request.resend_review_mail",
                target: Some(&id),
                detail: serde_json::json!({ "mails": n }),
                at: now,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Ok((org_id, n)))
    }
    .await;
    match result {
        Ok(Ok(_)) => back(&id, "resend"),
        Ok(Err(why)) => refused(&session, StatusCode::CONFLICT, "Nothing resent", why),
        Err(e) => failure(Some(&session), format!("{e:#}")),
    }
}

/// Move the deadline of an open request by N business days (1 to 10) from
/// its current due time, with a reason; both SLA timers move with it.
pub async fn extend(
    State(app): State<App>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let pairs = form_pairs(&body);
    if let Some(r) = refuse_change(&app, &session, &headers, field(&pairs, "csrf")) {
        return r;
    }
    let reason = field(&pairs, "reason").trim().to_string();
    if reason.is_empty() || reason.chars().count() > 500 {
        return refused(
            &session,
            StatusCode::BAD_REQUEST,
            "A reason is required",
            "Give a reason (field `reason`, 1 to 500 characters) for extending the SLA.",
        );
    }
    let days: u32 = match field(&pairs, "days").parse() {
        Ok(d) if (1..=10).contains(&d) => d,
        _ => {
            return refused(
                &session,
                StatusCode::BAD_REQUEST,
                "Bad number of days",
                "The field `days` must be a whole number of business days from 1 to 10.",
            );
        }
    };
    let actor = session.actor();
    let ext = Extension::Operator { days };
    match flows::requests::extend(&app, &id, ext, &reason, &actor, &actor).await {
        Ok(Ok(_)) => back(&id, "extend"),
        Ok(Err(ExtendError::NotFound)) => refused(
            &session,
            StatusCode::NOT_FOUND,
            "Not extended",
            "There is no request with that id.",
        ),
        Ok(Err(e)) => refused(
            &session,
            StatusCode::CONFLICT,
            "Not extended",
            &e.to_string(),
        ),
        Err(e) => failure(Some(&session), format!("{e:#}")),
    }
}

/// Cancel an open request, as the API's cancel does: review links stop at
/// once and whoever was asked to review is told.
pub async fn cancel(
    State(app): State<App>,
    session: Session,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let pairs = form_pairs(&body);
    if let Some(r) = refuse_change(&app, &session, &headers, field(&pairs, "csrf")) {
        return r;
    }
    let reason = field(&pairs, "reason").trim().to_string();
    if reason.chars().count() > 500 {
        return refused(
            &session,
            StatusCode::BAD_REQUEST,
            "Reason too long",
            "The field `reason` takes at most 500 characters.",
        );
    }
    let now = app.now_ms();
    let actor = session.actor();
    let by = CancelBy {
        actor: &actor,
        via: "operator",
        reason: &reason,
        cleanup_id: None,
    };
    let result: anyhow::Result<Result<(), CancelError>> = async {
        let mut tx = app.db.begin().await?;
        let done = flows::requests::cancel(&app, &mut tx, None, &id, &by, now).await?;
        if done.is_ok() {
            tx.commit().await?;
        } else {
            tx.rollback().await.ok();
        }
        Ok(done.map(|_| ()))
    }
    .await;
    match result {
        Ok(Ok(())) => back(&id, "cancel"),
        Ok(Err(CancelError::NotFound)) => refused(
            &session,
            StatusCode::NOT_FOUND,
            "Not cancelled",
            "There is no request with that id.",
        ),
        Ok(Err(e)) => refused(
            &session,
            StatusCode::CONFLICT,
            "Not cancelled",
            &e.to_string(),
        ),
        Err(e) => failure(Some(&session), format!("{e:#}")),
    }
}
