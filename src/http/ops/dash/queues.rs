//! Queues: depth by state, throughput and failures over the last hour,
//! pause / resume (honoured by every runtime on the store, see
//! `approvald_workers::Queue::pause`), dead jobs grouped by error with
//! re-drive or discard of one, a selection or a group: the first POST shows
//! the count and asks to confirm, the second (with `confirm=yes`) acts on
//! exactly the ids the confirmation page listed.
use std::{collections::BTreeMap, time::Duration};

use axum::{
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    Session, When, audit_alone, failure, field, form_pairs, message, now, qs, refuse_change,
    render, when,
};
use crate::app::App;

/// Dead jobs read per queue for grouping (newest first).
pub const DEAD_SCAN: usize = 500;
/// Jobs listed per group on the page.
const PER_GROUP: usize = 20;

#[derive(Serialize)]
struct DeadJobRow {
    id: String,
    attempts: u32,
    died: When,
    payload: String,
}

#[derive(Serialize)]
struct Group {
    key: String,
    error: String,
    count: usize,
    newest: When,
    jobs: Vec<DeadJobRow>,
    more: usize,
}

#[derive(Serialize)]
struct QueueView {
    name: String,
    ready: u64,
    scheduled: u64,
    running: u64,
    dead: u64,
    paused: bool,
    ok_1h: u64,
    failed_1h: u64,
    groups: Vec<Group>,
    scanned: usize,
}

#[derive(Deserialize, Default)]
pub struct Flash {
    #[serde(default)]
    done: String,
    #[serde(default)]
    n: u64,
    #[serde(default)]
    of: u64,
    #[serde(default)]
    q: String,
}

/// The grouping key of an error: its first line with id-like words (8 or
/// more characters with a digit: ids, UUIDs, timestamps) replaced by `<id>`,
/// cut at 160 characters.
fn error_key(e: &str) -> String {
    let line = e.lines().next().unwrap_or("").trim();
    let line = line
        .split(' ')
        .map(|w| {
            let core = w.trim_matches(|c: char| !c.is_alphanumeric());
            if core.chars().count() >= 8 && core.chars().any(|c| c.is_ascii_digit()) {
                w.replace(core, "<id>")
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let mut s: String = line.chars().take(160).collect();
    if s.is_empty() {
        s = "(no error text)".into();
    }
    s
}

fn group_id(key: &str) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

fn known_queue(q: &str) -> bool {
    now::queue_names().iter().any(|n| n == q)
}

pub async fn page(State(app): State<App>, session: Session, Query(f): Query<Flash>) -> Response {
    let nowms = app.now_ms();
    let build = async {
        let rows = now::queue_rows(&app).await?;
        let mut out = Vec::new();
        for r in rows {
            let tp = app
                .queue
                .throughput(&r.name, Duration::from_secs(3600))
                .await?;
            let dead = if r.dead > 0 {
                app.queue.list_dead(&r.name, DEAD_SCAN).await?
            } else {
                Vec::new()
            };
            let scanned = dead.len();
            let mut groups: BTreeMap<String, Vec<approvald_workers::store::DeadJob>> =
                BTreeMap::new();
            for d in dead {
                groups.entry(error_key(&d.last_error)).or_default().push(d);
            }
            let mut groups: Vec<Group> = groups
                .into_iter()
                .map(|(error, jobs)| {
                    let count = jobs.len();
                    let newest = jobs.iter().map(|j| j.died_at_ms).max().unwrap_or(0);
                    Group {
                        key: group_id(&error),
                        error,
                        count,
                        newest: when(newest, nowms),
                        more: count.saturating_sub(PER_GROUP),
                        jobs: jobs
                            .into_iter()
                            .take(PER_GROUP)
                            .map(|j| DeadJobRow {
                                id: j.id,
                                attempts: j.attempts,
                                died: when(j.died_at_ms, nowms),
                                payload: j.payload.chars().take(200).collect(),
                            })
                            .collect(),
                    }
                })
                .collect();
            groups.sort_by_key(|g| std::cmp::Reverse(g.count));
            out.push(QueueView {
                name: r.name,
                ready: r.ready,
                scheduled: r.scheduled,
                running: r.running,
                dead: r.dead,
                paused: r.paused,
                ok_1h: tp.ok,
                failed_1h: tp.failed,
                groups,
                scanned,
            });
        }
        anyhow::Ok(out)
    };
    let queues = match build.await {
        Ok(q) => q,
        Err(e) => return failure(Some(&session), format!("{e:#}")),
    };
    let flash = match f.done.as_str() {
        "pause" => Some(format!("Queue {} paused.", f.q)),
        "resume" => Some(format!("Queue {} resumed.", f.q)),
        "redrive" => Some(format!(
            "Re-drove {} of {} dead jobs of {}.",
            f.n, f.of, f.q
        )),
        "discard" => Some(format!(
            "Discarded {} of {} dead jobs of {}.",
            f.n, f.of, f.q
        )),
        _ => None,
    };
    render(
        "queues.html",
        Some(&session),
        "Queues",
        "queues",
        0,
        nowms,
        minijinja::context! { queues => queues, flash => flash, dead_scan => DEAD_SCAN },
    )
}

async fn set_paused(
    app: App,
    session: Session,
    headers: HeaderMap,
    queue: String,
    body: axum::body::Bytes,
    paused: bool,
) -> Response {
    let pairs = form_pairs(&body);
    if let Some(r) = refuse_change(&app, &session, &headers, field(&pairs, "csrf")) {
        return r;
    }
    if !known_queue(&queue) {
        return message(
            StatusCode::NOT_FOUND,
            Some(&session),
            "No such queue",
            "That queue does not exist.",
        );
    }
    let r = if paused {
        app.queue.pause(&queue).await
    } else {
        app.queue.resume(&queue).await
    };
    if let Err(e) = r {
        return failure(Some(&session), e);
    }
    let action = if paused {
        "ops.queue.pause"
    } else {
        "ops.queue.resume"
    };
    if let Err(e) = audit_alone(
        &app,
        &session,
        action,
        Some(&queue),
        serde_json::json!({"before": {"paused": !paused}, "after": {"paused": paused}}),
    )
    .await
    {
        return failure(Some(&session), format!("{e:#}"));
    }
    tracing::info!(queue, paused, actor = %session.actor(), "queue pause changed from the dashboard");
    let done = if paused { "pause" } else { "resume" };
    Redirect::to(&format!(
        "/ops/queues?{}",
        qs(&[("done", done), ("q", &queue)])
    ))
    .into_response()
}

pub async fn pause(
    State(app): State<App>,
    session: Session,
    headers: HeaderMap,
    Path(queue): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    set_paused(app, session, headers, queue, body, true).await
}

pub async fn resume(
    State(app): State<App>,
    session: Session,
    headers: HeaderMap,
    Path(queue): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    set_paused(app, session, headers, queue, body, false).await
}

/// Re-drive or discard dead jobs: one (`id`), a selection (several `id`) or
/// a group (`group`). Without `confirm=yes` this only shows what would be
/// done and asks to confirm.
pub async fn dead(
    State(app): State<App>,
    session: Session,
    headers: HeaderMap,
    Path(queue): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let pairs = form_pairs(&body);
    if let Some(r) = refuse_change(&app, &session, &headers, field(&pairs, "csrf")) {
        return r;
    }
    if !known_queue(&queue) {
        return message(
            StatusCode::NOT_FOUND,
            Some(&session),
            "No such queue",
            "That queue does not exist.",
        );
    }
    // A row's own button: that one job, re-driven.
    let one = field(&pairs, "one");
    let action = if one.is_empty() {
        field(&pairs, "action")
    } else {
        "redrive"
    };
    if action != "redrive" && action != "discard" {
        return message(
            StatusCode::BAD_REQUEST,
            Some(&session),
            "Unknown action",
            "The field `action` must be `redrive` or `discard`.",
        );
    }
    let mut ids: Vec<String> = if one.is_empty() {
        pairs
            .iter()
            .filter(|(k, v)| k == "id" && !v.is_empty())
            .map(|(_, v)| v.clone())
            .collect()
    } else {
        vec![one.to_string()]
    };
    let group = if one.is_empty() {
        field(&pairs, "group")
    } else {
        ""
    };
    let mut group_error = String::new();
    if !group.is_empty() {
        let dead = match app.queue.list_dead(&queue, DEAD_SCAN).await {
            Ok(d) => d,
            Err(e) => return failure(Some(&session), e),
        };
        for d in dead {
            let key = error_key(&d.last_error);
            if group_id(&key) == group {
                group_error = key;
                ids.push(d.id);
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids.truncate(DEAD_SCAN);
    if ids.is_empty() {
        return message(
            StatusCode::BAD_REQUEST,
            Some(&session),
            "Nothing selected",
            "Select at least one dead job (field `id`) or a group (field `group`).",
        );
    }
    if field(&pairs, "confirm") != "yes" {
        return render(
            "confirm.html",
            Some(&session),
            "Confirm",
            "queues",
            0,
            app.now_ms(),
            minijinja::context! {
                queue => queue,
                action => action,
                verb => if action == "redrive" { "Re-drive" } else { "Discard" },
                ids => ids,
                count => ids.len(),
                group_error => group_error,
            },
        );
    }
    let mut done = 0u64;
    for id in &ids {
        let r = if action == "redrive" {
            app.queue.redrive(&queue, id).await
        } else {
            app.queue.discard_dead(&queue, id).await
        };
        match r {
            Ok(true) => done += 1,
            Ok(false) => {}
            Err(e) => return failure(Some(&session), e),
        }
    }
    if let Err(e) = audit_alone(
        &app,
        &session,
        if action == "redrive" {
            "ops.dead.redrive"
        } else {
            "ops.dead.discard"
        },
        Some(&queue),
        serde_json::json!({"ids": ids, "asked": ids.len(), "done": done}),
    )
    .await
    {
        return failure(Some(&session), format!("{e:#}"));
    }
    tracing::info!(queue, action, asked = ids.len(), done, actor = %session.actor(), "dead jobs handled from the dashboard");
    Redirect::to(&format!(
        "/ops/queues?{}",
        qs(&[
            ("done", action),
            ("n", &done.to_string()),
            ("of", &ids.len().to_string()),
            ("q", &queue)
        ])
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_group_by_first_line() {
        assert_eq!(error_key("smtp 451\nmore"), "smtp 451");
        assert_eq!(
            error_key("email missing-0-d88e5179-db9b does not exist"),
            "email <id> does not exist"
        );
        assert_eq!(
            error_key("request \"0190a1b2c3\" gone"),
            "request \"<id>\" gone"
        );
        assert_eq!(error_key(""), "(no error text)");
        assert_eq!(error_key(&"x".repeat(500)).len(), 160);
        assert_eq!(group_id("a"), group_id("a"));
        assert_ne!(group_id("a"), group_id("b"));
    }
}
