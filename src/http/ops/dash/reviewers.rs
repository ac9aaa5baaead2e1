//! Reviewers: open assignments, the oldest, how many are past their
//! deadline, and the median decision time over 7 and 30 days; reviewers who
//! were removed and members who were disabled but still hold assignments
//! are flagged.
//!
//! Every read is bounded: reviewers with open assignments come in keyset
//! pages of [`PAGE`] in `(kind, id)` order from the partial index
//! `request_reviewers_open` (assignments whose request is still in review),
//! each page's counts are that index's rows for those reviewers only; the
//! medians read one reviewer's decisions of the window from the covering
//! index `requests_decider`; the flagged list probes removed reviewers and
//! disabled members (partial indexes) for an open assignment, at most
//! [`FLAGGED`] of each.
use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use serde::{Deserialize, Serialize};

use super::{Session, When, failure, message, qs, render, span, when};
use crate::{app::App, on_db};

/// Reviewers per page.
pub const PAGE: i64 = 50;
/// Flagged reviewers (of each kind) listed above the table.
const FLAGGED: i64 = 20;

#[derive(Deserialize, Default)]
pub struct PageQuery {
    /// Keyset: the last row of the previous page, `kind:id`.
    #[serde(default)]
    after: String,
}

#[derive(Serialize)]
struct Row {
    kind: String,
    id: String,
    name: String,
    email: String,
    open: i64,
    oldest: When,
    overdue: i64,
    median_7d: String,
    median_30d: String,
    decided_7d: i64,
    decided_30d: i64,
    /// removed | disabled | ""
    flag: String,
}

#[derive(Serialize)]
struct Flagged {
    kind: String,
    id: String,
    name: String,
    email: String,
    /// removed | disabled
    flag: &'static str,
}

type GroupRow = (
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    Option<String>,
    Option<String>,
);

/// The lower median of `decided_at - created_at` of `reviewer`'s decisions
/// since `since` (covering index `requests_decider`), and how many there were.
async fn median(app: &App, reviewer: &str, since: i64) -> anyhow::Result<(Option<i64>, i64)> {
    let n: i64 = on_db!(&app.db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM requests WHERE decided_by_id = $1 AND decided_at >= $2"
    )
    .bind(reviewer)
    .bind(since)
    .fetch_one(p)
    .await)?;
    if n == 0 {
        return Ok((None, 0));
    }
    let m: Option<i64> = on_db!(&app.db, |p| {
        sqlx::query_scalar(
        "SELECT decided_at - created_at FROM requests WHERE decided_by_id = $1 AND decided_at >= $2 \
         ORDER BY decided_at - created_at LIMIT 1 OFFSET $3"
    )
    .bind(reviewer)
    .bind(since)
    .bind((n - 1) / 2)
    .fetch_optional(p)
    .await
    })?;
    Ok((m, n))
}

/// One keyset page of reviewers with open assignments, after `(kind, id)`,
/// with their counts (at most `limit` rows).
async fn page_rows(
    app: &App,
    after: (&str, &str),
    now: i64,
    limit: i64,
) -> Result<Vec<GroupRow>, sqlx::Error> {
    on_db!(&app.db, |p| {
        sqlx::query_as(
        "SELECT g.reviewer_kind, g.reviewer_id, g.name, g.email, g.open, g.oldest, g.overdue, \
                rv.status, m.status \
         FROM (SELECT rr.reviewer_kind, rr.reviewer_id, MAX(rr.name) AS name, MAX(rr.email) AS email, \
                      COUNT(*) AS open, MIN(r.created_at) AS oldest, \
                      SUM(CASE WHEN r.sla_due_at <= $1 THEN 1 ELSE 0 END) AS overdue \
               FROM request_reviewers rr JOIN requests r ON r.id = rr.request_id \
               WHERE rr.closed_at IS NULL AND (rr.reviewer_kind, rr.reviewer_id) > ($2, $3) \
               GROUP BY rr.reviewer_kind, rr.reviewer_id \
               ORDER BY rr.reviewer_kind, rr.reviewer_id LIMIT $4) g \
         LEFT JOIN reviewers rv ON g.reviewer_kind = 'platform' AND rv.id = g.reviewer_id \
         LEFT JOIN members m ON g.reviewer_kind = 'member' AND m.id = g.reviewer_id \
         ORDER BY g.reviewer_kind, g.reviewer_id"
    )
    .bind(now)
    .bind(after.0)
    .bind(after.1)
    .bind(limit)
    .fetch_all(p)
    .await
    })
}

/// Removed reviewers and disabled members who still hold an open
/// assignment (at most [`FLAGGED`] + 1 of each, to tell "more").
async fn flagged(app: &App) -> Result<Vec<Flagged>, sqlx::Error> {
    let removed: Vec<(String, String, String)> = on_db!(&app.db, |p| sqlx::query_as(
        "SELECT rv.id, rv.name, rv.email FROM reviewers rv WHERE rv.status = 'removed' \
           AND EXISTS (SELECT 1 FROM request_reviewers rr WHERE rr.reviewer_kind = 'platform' \
                       AND rr.reviewer_id = rv.id AND rr.closed_at IS NULL) \
         ORDER BY rv.id LIMIT $1"
    )
    .bind(FLAGGED + 1)
    .fetch_all(p)
    .await)?;
    let disabled: Vec<(String, String, String)> = on_db!(&app.db, |p| sqlx::query_as(
        "SELECT m.id, m.name, m.email FROM members m WHERE m.status = 'disabled' \
           AND EXISTS (SELECT 1 FROM request_reviewers rr WHERE rr.reviewer_kind = 'member' \
                       AND rr.reviewer_id = m.id AND rr.closed_at IS NULL) \
         ORDER BY m.id LIMIT $1"
    )
    .bind(FLAGGED + 1)
    .fetch_all(p)
    .await)?;
    let mk = |kind: &str, flag: &'static str| {
        let kind = kind.to_string();
        move |(id, name, email): (String, String, String)| Flagged {
            kind: kind.clone(),
            id,
            name,
            email,
            flag,
        }
    };
    Ok(removed
        .into_iter()
        .map(mk("platform", "removed"))
        .chain(disabled.into_iter().map(mk("member", "disabled")))
        .collect())
}

pub async fn page(
    State(app): State<App>,
    session: Session,
    Query(q): Query<PageQuery>,
) -> Response {
    let now = app.now_ms();
    let after = if q.after.is_empty() {
        (String::new(), String::new())
    } else {
        match q.after.split_once(':') {
            Some((k, id)) if (k == "platform" || k == "member") && !id.is_empty() => {
                (k.to_string(), id.to_string())
            }
            _ => {
                return message(
                    StatusCode::BAD_REQUEST,
                    Some(&session),
                    "Bad page",
                    "after must be kind:id (platform:… or member:…), as the next-page link gives.",
                );
            }
        }
    };
    let build = async {
        let mut rows = page_rows(&app, (&after.0, &after.1), now, PAGE + 1).await?;
        let more = rows.len() as i64 > PAGE;
        rows.truncate(PAGE as usize);
        let next = if more {
            rows.last()
                .map(|r| format!("{}:{}", r.0, r.1))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let day = 24 * 3600 * 1000;
        let mut out = Vec::new();
        for (kind, id, name, email, open, oldest, overdue, rv_status, m_status) in rows {
            let (m7, n7) = median(&app, &id, now - 7 * day).await?;
            let (m30, n30) = median(&app, &id, now - 30 * day).await?;
            let flag = if rv_status.as_deref() == Some("removed") {
                "removed"
            } else if m_status.as_deref() == Some("disabled") {
                "disabled"
            } else {
                ""
            };
            out.push(Row {
                kind,
                id,
                name,
                email,
                open,
                oldest: when(oldest, now),
                overdue,
                median_7d: m7.map(span).unwrap_or_else(|| "–".into()),
                median_30d: m30.map(span).unwrap_or_else(|| "–".into()),
                decided_7d: n7,
                decided_30d: n30,
                flag: flag.into(),
            });
        }
        let flagged = flagged(&app).await?;
        anyhow::Ok((out, next, flagged))
    };
    match build.await {
        Ok((rows, next, mut flagged)) => {
            let more_flagged = flagged.iter().filter(|f| f.flag == "removed").count() as i64
                > FLAGGED
                || flagged.iter().filter(|f| f.flag == "disabled").count() as i64 > FLAGGED;
            let mut seen = (0, 0);
            flagged.retain(|f| {
                let n = if f.flag == "removed" {
                    &mut seen.0
                } else {
                    &mut seen.1
                };
                *n += 1;
                *n <= FLAGGED
            });
            let next_link = if next.is_empty() {
                String::new()
            } else {
                format!("/ops/reviewers?{}", qs(&[("after", &next)]))
            };
            render(
                "reviewers.html",
                Some(&session),
                "Reviewers",
                "reviewers",
                30,
                now,
                minijinja::context! {
                    rows => rows,
                    flagged => flagged,
                    more_flagged => more_flagged,
                    page => PAGE,
                    next_link => next_link,
                    paged => !q.after.is_empty(),
                },
            )
        }
        Err(e) => failure(Some(&session), format!("{e:#}")),
    }
}
