//! The `emails` table: one row per logical mail (see [`crate::mail`]).
//! Status: `pending` until sent; then `sent`, `failed` (permanent failure or
//! out of attempts) or `skipped` (a review-link mail whose request no longer
//! needs a decision). A row in a final state is never sent again.
use anyhow::Context;

use crate::{
    db::{Db, Tx},
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

pub async fn get(db: &Db, id: &str) -> anyhow::Result<Option<EmailRow>> {
    on_db!(db, |p| sqlx::query_as::<_, EmailRow>(
        "SELECT id, dedupe_key, message_id, request_id, template, recipient, recipient_name, locale, reviewer_kind, \
                reviewer_id, params, status, attempts, last_error, created_at, sent_at \
         FROM emails WHERE id = $1"
    )
    .bind(id)
    .fetch_optional(p)
    .await)
    .context("loading email")
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
    on_db!(db, |p| sqlx::query(
        "UPDATE emails SET attempts = attempts + 1 WHERE id = $1 AND status = 'pending'"
    )
    .bind(id)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .context("counting email attempt")?;
    Ok(())
}

/// pending -> sent. Returns whether this call moved it.
pub async fn mark_sent(db: &Db, id: &str, now: i64) -> anyhow::Result<bool> {
    Ok(on_db!(db, |p| sqlx::query(
        "UPDATE emails SET status = 'sent', sent_at = $2, last_error = NULL WHERE id = $1 AND status = 'pending'"
    )
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
