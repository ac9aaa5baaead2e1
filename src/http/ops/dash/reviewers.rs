//! Reviewers: open assignments, the oldest, how many are past their
//! deadline, and the median decision time over 7 and 30 days; reviewers who
//! were removed and members who were disabled but still hold assignments
//! are flagged.
use axum::{extract::State, response::Response};
use serde::Serialize;

use super::{Session, When, failure, render, span, when};
use crate::{app::App, on_db};

/// Reviewers listed (most open assignments first).
const LIMIT: i64 = 100;

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
/// since `since` (index `requests_decider`), and how many there were.
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

pub async fn page(State(app): State<App>, session: Session) -> Response {
    let now = app.now_ms();
    let build = async {
        let rows: Vec<GroupRow> = on_db!(&app.db, |p| sqlx::query_as(
            "SELECT rr.reviewer_kind, rr.reviewer_id, MAX(rr.name), MAX(rr.email), COUNT(*), \
                    MIN(r.created_at), SUM(CASE WHEN r.sla_due_at <= $2 THEN 1 ELSE 0 END), \
                    MAX(rv.status), MAX(m.status) \
             FROM requests r \
             JOIN request_reviewers rr ON rr.request_id = r.id \
             LEFT JOIN reviewers rv ON rr.reviewer_kind = 'platform' AND rv.id = rr.reviewer_id \
             LEFT JOIN members m ON rr.reviewer_kind = 'member' AND m.id = rr.reviewer_id \
             WHERE r.status = $1 \
             GROUP BY rr.reviewer_kind, rr.reviewer_id \
             ORDER BY COUNT(*) DESC, rr.reviewer_id LIMIT $3"
        )
        .bind("in_review")
        .bind(now)
        .bind(LIMIT)
        .fetch_all(p)
        .await)?;
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
        anyhow::Ok(out)
    };
    match build.await {
        Ok(rows) => {
            let flagged = rows.iter().filter(|r| !r.flag.is_empty()).count();
            render(
                "reviewers.html",
                Some(&session),
                "Reviewers",
                "reviewers",
                30,
                now,
                minijinja::context! { rows => rows, flagged => flagged, limit => LIMIT },
            )
        }
        Err(e) => failure(Some(&session), format!("{e:#}")),
    }
}
