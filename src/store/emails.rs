//! The `emails` table: one row per logical mail (see [`crate::mail`]).
//! Status: `pending` until sent; then `sent`, `failed` (permanent failure or
//! out of attempts) or `skipped` (a review-link mail whose request no longer
//! needs a decision). A row in a final state is never sent again.
use anyhow::Context;

use crate::{
    db::{Db, Tx, writer},
    on_db, on_tx,
};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EmailRow {
    pub id: String,
    pub dedupe_key: String,
    pub message_id: String,
    pub request_id: Option<String>,
    pub template: String,
    pub recipient: String,
    pub recipient_name: String,
    pub locale: String,
    pub reviewer_kind: Option<String>,
    pub reviewer_id: Option<String>,
    pub params: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub sent_at: Option<i64>,
}

impl EmailRow {
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "sent" | "failed" | "skipped")
    }
}

const GET: &str = "SELECT id, dedupe_key, message_id, request_id, template, recipient, recipient_name, locale, reviewer_kind, \
            reviewer_id, params, status, attempts, last_error, created_at, sent_at \
     FROM emails WHERE id = $1";
const COUNT_ATTEMPT: &str =
    "UPDATE emails SET attempts = attempts + 1 WHERE id = $1 AND status = 'pending'";
const MARK_SENT: &str = "UPDATE emails SET status = 'sent', sent_at = $2, last_error = NULL WHERE id = $1 AND status = 'pending'";

pub async fn get(db: &Db, id: &str) -> anyhow::Result<Option<EmailRow>> {
    on_db!(db, |p| sqlx::query_as::<_, EmailRow>(GET)
        .bind(id)
        .fetch_optional(p)
        .await)
    .context("loading email")
}

/// [`get`] on a rusqlite connection (the SQLite writer's, `db::writer`).
pub fn get_sync(c: &rusqlite::Connection, id: &str) -> rusqlite::Result<Option<EmailRow>> {
    writer::query_opt(c, GET, &[&id], |r| {
        Ok(EmailRow {
            id: r.get("id")?,
            dedupe_key: r.get("dedupe_key")?,
            message_id: r.get("message_id")?,
            request_id: r.get("request_id")?,
            template: r.get("template")?,
            recipient: r.get("recipient")?,
            recipient_name: r.get("recipient_name")?,
            locale: r.get("locale")?,
            reviewer_kind: r.get("reviewer_kind")?,
            reviewer_id: r.get("reviewer_id")?,
            params: r.get("params")?,
            status: r.get("status")?,
            attempts: r.get("attempts")?,
            last_error: r.get("last_error")?,
            created_at: r.get("created_at")?,
            sent_at: r.get("sent_at")?,
        })
    })
}

/// [`count_attempt`] on the SQLite writer's connection.
pub fn count_attempt_sync(c: &rusqlite::Connection, id: &str) -> rusqlite::Result<()> {
    writer::execute(c, COUNT_ATTEMPT, &[&id]).map(drop)
}

/// [`mark_sent`] on the SQLite writer's connection.
pub fn mark_sent_sync(c: &rusqlite::Connection, id: &str, now: i64) -> rusqlite::Result<bool> {
    Ok(writer::execute(c, MARK_SENT, &[&id, &now])? == 1)
}

/// Every mail of a request, oldest first (tests, support).
pub async fn for_request(db: &Db, request_id: &str) -> anyhow::Result<Vec<EmailRow>> {
    on_db!(db, |p| sqlx::query_as::<_, EmailRow>(
        "SELECT id, dedupe_key, message_id, request_id, template, recipient, recipient_name, locale, reviewer_kind, \
                reviewer_id, params, status, attempts, last_error, created_at, sent_at \
         FROM emails WHERE request_id = $1 ORDER BY created_at, id"
    )
    .bind(request_id)
    .fetch_all(p)
    .await)
    .context("loading the request's emails")
}

/// Count one more delivery attempt.
pub async fn count_attempt(db: &Db, id: &str) -> anyhow::Result<()> {
    on_db!(db, |p| sqlx::query(COUNT_ATTEMPT)
        .bind(id)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
    .context("counting email attempt")?;
    Ok(())
}

/// pending -> sent. Returns whether this call moved it.
pub async fn mark_sent(db: &Db, id: &str, now: i64) -> anyhow::Result<bool> {
    Ok(on_db!(db, |p| sqlx::query(MARK_SENT)
        .bind(id)
        .bind(now)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
    .context("marking email sent")?
        == 1)
}

/// Remember why the last attempt failed (the mail stays pending).
pub async fn note_error(db: &Db, id: &str, error: &str) -> anyhow::Result<()> {
    on_db!(db, |p| sqlx::query(
        "UPDATE emails SET last_error = $2 WHERE id = $1 AND status = 'pending'"
    )
    .bind(id)
    .bind(error)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .context("noting email error")?;
    Ok(())
}

/// pending -> `status` (`failed` or `skipped`) in `tx`. Returns whether this
/// call moved it (false: another attempt already finished it).
pub async fn finish(tx: &mut Tx, id: &str, status: &str, error: &str) -> anyhow::Result<bool> {
    Ok(on_tx!(tx, |c| sqlx::query(
        "UPDATE emails SET status = $2, last_error = $3 WHERE id = $1 AND status = 'pending'"
    )
    .bind(id)
    .bind(status)
    .bind(error)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .context("finishing email")?
        == 1)
}
