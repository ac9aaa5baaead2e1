//! `idempotency_keys`: the first answer to a POST carrying an
//! `Idempotency-Key`, replayed for retries of the same body.
//!
//! The row is reserved first in the request's own transaction: a concurrent
//! duplicate blocks on the primary key `(org_id, key)` (PostgreSQL) or on the
//! write lock (SQLite), then finds the committed row and replays it.
use crate::{
    db::{Db, Tx, inline::InlineReaders, writer},
    on_db, on_tx,
};

const GET: &str =
    "SELECT body_hash, status, response FROM idempotency_keys WHERE org_id = $1 AND key = $2";
const RESERVE: &str = "INSERT INTO idempotency_keys (org_id, key, body_hash, status, response, created_at) \
     VALUES ($1, $2, $3, 0, '', $4) ON CONFLICT (org_id, key) DO NOTHING";
const COMPLETE: &str =
    "UPDATE idempotency_keys SET status = $1, response = $2 WHERE org_id = $3 AND key = $4";

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Stored {
    pub body_hash: String,
    pub status: i64,
    pub response: String,
}

/// The stored answer for `(org_id, key)`, if one was committed.
pub async fn get(db: &Db, org_id: &str, key: &str) -> Result<Option<Stored>, sqlx::Error> {
    on_db!(db, |c| sqlx::query_as::<_, Stored>(GET)
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
    let n = on_tx!(tx, |c| sqlx::query(RESERVE)
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
    on_tx!(tx, |c| sqlx::query(COMPLETE)
        .bind(i64::from(status))
        .bind(response)
        .bind(org_id)
        .bind(key)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(())
}

/// [`get`], on the calling task when an inline connection is free (see
/// `db::inline`), else on the pool.
pub async fn get_fast(
    db: &Db,
    inline: Option<&InlineReaders>,
    org_id: &str,
    key: &str,
) -> Result<Option<Stored>, sqlx::Error> {
    let found = inline.and_then(|r| {
        r.read(|c| {
            writer::query_opt(c, GET, &[&org_id, &key], |row| {
                Ok(Stored {
                    body_hash: row.get(0)?,
                    status: row.get(1)?,
                    response: row.get(2)?,
                })
            })
        })
    });
    match found {
        Some(found) => Ok(found),
        None => get(db, org_id, key).await,
    }
}

/// [`reserve`] on the writer's connection (`db::writer`).
pub fn reserve_sync(
    c: &rusqlite::Connection,
    org_id: &str,
    key: &str,
    body_hash: &str,
    now: i64,
) -> rusqlite::Result<bool> {
    Ok(writer::execute(c, RESERVE, &[&org_id, &key, &body_hash, &now])? == 1)
}

/// [`complete`] on the writer's connection (`db::writer`).
pub fn complete_sync(
    c: &rusqlite::Connection,
    org_id: &str,
    key: &str,
    status: u16,
    response: &str,
) -> rusqlite::Result<()> {
    writer::execute(c, COMPLETE, &[&i64::from(status), &response, &org_id, &key])?;
    Ok(())
}
