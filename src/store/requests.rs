//! `requests` and `request_events`: permission requests and their history.
use crate::{
    db::{Db, Tx, writer},
    on_db, on_tx,
};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Request {
    pub id: String,
    pub org_id: String,
    pub number: String,
    pub kind: String,
    pub requester_id: Option<String>,
    pub remark: String,
    /// JSON array of `{type, name, url}`.
    pub documents: String,
    pub status: String,
    pub decided_by: Option<String>,
    pub decided_by_id: Option<String>,
    pub decided_at: Option<i64>,
    pub decision_comment: Option<String>,
    pub sla_days: i64,
    pub sla_due_at: i64,
    pub reminder_at: Option<i64>,
    pub reminded_at: Option<i64>,
    pub breached_at: Option<i64>,
    pub extended_at: Option<i64>,
    pub extension_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

macro_rules! request_columns {
    () => {
        "id, org_id, number, kind, requester_id, remark, documents, status, decided_by, decided_by_id, decided_at, \
         decision_comment, sla_days, sla_due_at, reminder_at, reminded_at, breached_at, extended_at, extension_reason, \
         created_at, updated_at"
    };
}

/// What a new request needs; the rest starts empty.
pub struct NewRequest<'a> {
    pub id: &'a str,
    pub org_id: &'a str,
    pub number: &'a str,
    pub kind: &'a str,
    pub requester_id: Option<&'a str>,
    pub remark: &'a str,
    pub documents: &'a str,
    pub sla_days: i64,
    pub sla_due_at: i64,
    pub now: i64,
}

const INSERT: &str = "INSERT INTO requests (id, org_id, number, kind, requester_id, remark, documents, status, sla_days, sla_due_at, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, 'submitted', $8, $9, $10, $10)";
const ADD_EVENT: &str = "INSERT INTO request_events (id, request_id, at, type, actor, detail) VALUES ($1, $2, $3, $4, $5, $6)";
const SET_PARAMS: &str = "UPDATE requests SET params = $2 WHERE id = $1";

/// Insert with status `submitted`.
pub async fn insert(tx: &mut Tx, r: &NewRequest<'_>) -> Result<(), sqlx::Error> {
    on_tx!(tx, |c| {
        sqlx::query(INSERT)
            .bind(r.id)
            .bind(r.org_id)
            .bind(r.number)
            .bind(r.kind)
            .bind(r.requester_id)
            .bind(r.remark)
            .bind(r.documents)
            .bind(r.sla_days)
            .bind(r.sla_due_at)
            .bind(r.now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Event {
    pub id: String,
    pub request_id: String,
    pub at: i64,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub actor: Option<String>,
    /// JSON object.
    pub detail: String,
}

/// Append an event to a request's history.
pub async fn add_event(
    tx: &mut Tx,
    request_id: &str,
    kind: &str,
    actor: Option<&str>,
    detail: &serde_json::Value,
    at: i64,
) -> Result<(), sqlx::Error> {
    let id = uuid::Uuid::now_v7().to_string();
    let detail = detail.to_string();
    on_tx!(tx, |c| {
        sqlx::query(ADD_EVENT)
            .bind(&id)
            .bind(request_id)
            .bind(at)
            .bind(kind)
            .bind(actor)
            .bind(&detail)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
    })?;
    Ok(())
}

pub async fn get(db: &Db, org_id: &str, id: &str) -> Result<Option<Request>, sqlx::Error> {
    const SQL: &str = concat!(
        "SELECT ",
        request_columns!(),
        " FROM requests WHERE org_id = $1 AND id = $2"
    );
    on_db!(db, |c| sqlx::query_as::<_, Request>(SQL)
        .bind(org_id)
        .bind(id)
        .fetch_optional(c)
        .await)
}

pub async fn get_tx(tx: &mut Tx, org_id: &str, id: &str) -> Result<Option<Request>, sqlx::Error> {
    const SQL: &str = concat!(
        "SELECT ",
        request_columns!(),
        " FROM requests WHERE org_id = $1 AND id = $2"
    );
    on_tx!(tx, |c| sqlx::query_as::<_, Request>(SQL)
        .bind(org_id)
        .bind(id)
        .fetch_optional(c)
        .await)
}

/// A request's history, oldest first.
pub async fn events(db: &Db, request_id: &str) -> Result<Vec<Event>, sqlx::Error> {
    on_db!(db, |c| {
        sqlx::query_as::<_, Event>(
        "SELECT id, request_id, at, type, actor, detail FROM request_events WHERE request_id = $1 ORDER BY at, id"
    )
    .bind(request_id)
    .fetch_all(c)
    .await
    })
}

/// A request's history inside a transaction (sees the transaction's own
/// writes: webhook payloads are built there).
pub async fn events_tx(tx: &mut Tx, request_id: &str) -> Result<Vec<Event>, sqlx::Error> {
    on_tx!(tx, |c| {
        sqlx::query_as::<_, Event>(
        "SELECT id, request_id, at, type, actor, detail FROM request_events WHERE request_id = $1 ORDER BY at, id"
    )
    .bind(request_id)
    .fetch_all(c)
    .await
    })
}

/// Filters of the history list.
#[derive(Debug, Default)]
pub struct Filter<'a> {
    pub status: Option<&'a str>,
    pub kind: Option<&'a str>,
    /// Strictly older than this `(created_at, id)`.
    pub before: Option<(i64, &'a str)>,
}

/// An org's requests, newest first.
pub async fn list(
    db: &Db,
    org_id: &str,
    f: &Filter<'_>,
    limit: i64,
) -> Result<Vec<Request>, sqlx::Error> {
    const SQL: &str = concat!(
        "SELECT ",
        request_columns!(),
        " FROM requests WHERE org_id = $1 AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR kind = $3) \
         AND ($4 IS NULL OR created_at < $4 OR (created_at = $4 AND id < $5)) \
         ORDER BY created_at DESC, id DESC LIMIT $6"
    );
    let (at, id) = f.before.map_or((None, None), |(a, i)| (Some(a), Some(i)));
    on_db!(db, |c| sqlx::query_as::<_, Request>(SQL)
        .bind(org_id)
        .bind(f.status)
        .bind(f.kind)
        .bind(at)
        .bind(id)
        .bind(limit)
        .fetch_all(c)
        .await)
}

/// Cancel a request that is still `submitted` or `in_review` (a conditional
/// update: a decision racing with it wins or loses as a whole). Returns
/// whether this call cancelled it.
pub async fn cancel(tx: &mut Tx, org_id: &str, id: &str, now: i64) -> Result<bool, sqlx::Error> {
    let n = on_tx!(tx, |c| sqlx::query(
        "UPDATE requests SET status = 'cancelled', updated_at = $1 \
         WHERE org_id = $2 AND id = $3 AND status IN ('submitted', 'in_review')"
    )
    .bind(now)
    .bind(org_id)
    .bind(id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Revoke every live review link of a request. Returns how many.
pub async fn revoke_review_tokens(
    tx: &mut Tx,
    request_id: &str,
    now: i64,
) -> Result<u64, sqlx::Error> {
    on_tx!(tx, |c| {
        sqlx::query(
        "UPDATE review_tokens SET revoked_at = $1 WHERE request_id = $2 AND revoked_at IS NULL AND used_at IS NULL"
    )
    .bind(now)
    .bind(request_id)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })
}

/// Someone asked to review a request who can still be reached: an active
/// platform reviewer or an active member of the org.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AssignedReviewer {
    pub reviewer_kind: String,
    pub reviewer_id: String,
    pub email: String,
    pub name: String,
    pub locale: String,
}

/// The request's assigned reviewers who are still active.
pub async fn active_reviewers(
    tx: &mut Tx,
    request_id: &str,
) -> Result<Vec<AssignedReviewer>, sqlx::Error> {
    on_tx!(tx, |c| {
        sqlx::query_as::<_, AssignedReviewer>(
        "SELECT rr.reviewer_kind, rr.reviewer_id, rr.email, rr.name, rr.locale FROM request_reviewers rr \
         LEFT JOIN members m ON rr.reviewer_kind = 'member' AND m.id = rr.reviewer_id \
         LEFT JOIN reviewers r ON rr.reviewer_kind = 'platform' AND r.id = rr.reviewer_id \
         WHERE rr.request_id = $1 AND COALESCE(m.status, r.status) = 'active' \
         ORDER BY rr.assigned_at, rr.reviewer_id"
    )
    .bind(request_id)
    .fetch_all(c)
    .await
    })
}

/// Store a request's kind-specific `params` (a JSON object), in its
/// submitting transaction.
pub async fn set_params(tx: &mut Tx, id: &str, params: &str) -> Result<(), sqlx::Error> {
    on_tx!(tx, |c| sqlx::query(SET_PARAMS)
        .bind(id)
        .bind(params)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Lock the request's row (a no-op update: the row lock on PostgreSQL;
/// `BEGIN IMMEDIATE` already serializes SQLite) and read what a change
/// needs: `(org_id, number, status)`. `None`: no such request.
pub async fn lock(tx: &mut Tx, id: &str) -> Result<Option<(String, String, String)>, sqlx::Error> {
    on_tx!(tx, |c| sqlx::query_as(
        "UPDATE requests SET updated_at = updated_at WHERE id = $1 RETURNING org_id, number, status"
    )
    .bind(id)
    .fetch_optional(c)
    .await)
}

/// Mark the request's reviewer assignments closed (the request left
/// `in_review`), so the open-assignment index (`request_reviewers_open`)
/// holds only work still to do. Returns how many.
pub async fn close_assignments(
    tx: &mut Tx,
    request_id: &str,
    now: i64,
) -> Result<u64, sqlx::Error> {
    on_tx!(tx, |c| sqlx::query(
        "UPDATE request_reviewers SET closed_at = $2 WHERE request_id = $1 AND closed_at IS NULL"
    )
    .bind(request_id)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
}

/// [`insert`] on the writer's connection (`db::writer`).
pub fn insert_sync(c: &rusqlite::Connection, r: &NewRequest<'_>) -> rusqlite::Result<()> {
    writer::execute(
        c,
        INSERT,
        &[
            &r.id,
            &r.org_id,
            &r.number,
            &r.kind,
            &r.requester_id,
            &r.remark,
            &r.documents,
            &r.sla_days,
            &r.sla_due_at,
            &r.now,
        ],
    )?;
    Ok(())
}

/// [`set_params`] on the writer's connection (`db::writer`).
pub fn set_params_sync(c: &rusqlite::Connection, id: &str, params: &str) -> rusqlite::Result<()> {
    writer::execute(c, SET_PARAMS, &[&id, &params])?;
    Ok(())
}

/// [`add_event`] on the writer's connection (`db::writer`).
pub fn add_event_sync(
    c: &rusqlite::Connection,
    request_id: &str,
    kind: &str,
    actor: Option<&str>,
    detail: &serde_json::Value,
    at: i64,
) -> rusqlite::Result<()> {
    let id = uuid::Uuid::now_v7().to_string();
    let detail = detail.to_string();
    writer::execute(
        c,
        ADD_EVENT,
        &[&id, &request_id, &at, &kind, &actor, &detail],
    )?;
    Ok(())
}
