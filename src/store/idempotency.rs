//! `idempotency_keys`: the first answer to a POST carrying an
//! `Idempotency-Key`, replayed for retries of the same body.
//!
//! The row is reserved first in the request's own transaction: a concurrent
//! duplicate blocks on the primary key `(org_id, key)` (PostgreSQL) or on the
//! write lock (SQLite), then finds the committed row and replays it.
use crate::{
    db::{Db, Tx},
    on_db, on_tx,
};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Stored {
    pub body_hash: String,
    pub status: i64,
    pub response: String,
}

/// The stored answer for `(org_id, key)`, if one was committed.
pub async fn get(db: &Db, org_id: &str, key: &str) -> Result<Option<Stored>, sqlx::Error> {
    on_db!(db, |c| sqlx::query_as::<_, Stored>(
        "SELECT body_hash, status, response FROM idempotency_keys WHERE org_id = $1 AND key = $2"
    )
    .bind(org_id)
    .bind(key)
    .fetch_optional(c)
    .await)
}

/// Claim `(org_id, key)` in `tx`. False: another transaction holds it
/// already (committed); roll back and replay what [`get`] returns.
pub async fn reserve(
    tx: &mut Tx,
    org_id: &str,
    key: &str,
    body_hash: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let n = on_tx!(tx, |c| sqlx::query(
        "INSERT INTO idempotency_keys (org_id, key, body_hash, status, response, created_at) \
         VALUES ($1, $2, $3, 0, '', $4) ON CONFLICT (org_id, key) DO NOTHING"
    )
    .bind(org_id)
    .bind(key)
    .bind(body_hash)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(n == 1)
}

/// Record the answer of a reserved key, in the same transaction.
pub async fn complete(
    tx: &mut Tx,
    org_id: &str,
    key: &str,
    status: u16,
    response: &str,
) -> Result<(), sqlx::Error> {
    on_tx!(tx, |c| sqlx::query(
        "UPDATE idempotency_keys SET status = $1, response = $2 WHERE org_id = $3 AND key = $4"
    )
    .bind(i64::from(status))
    .bind(response)
    .bind(org_id)
    .bind(key)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}
