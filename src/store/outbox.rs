//! `outbox`: jobs written in the caller's transaction when the queue is
//! Redis, until the relay (`jobs::relay`) has pushed them.
use approvald_workers::store::NewJob;

use crate::{
    db::{Db, Tx, TxConn},
    on_db, on_tx,
};

/// An unsent row: (id, queue, payload, run_at, dedupe_key, max_attempts).
pub type Row = (String, String, String, i64, Option<String>, i64);

const PENDING: &str = "SELECT id, queue, payload, run_at, dedupe_key, max_attempts FROM outbox \
     WHERE sent_at IS NULL ORDER BY created_at, id LIMIT $1";
const CLAIM: &str = "SELECT id, queue, payload, run_at, dedupe_key, max_attempts FROM outbox \
     WHERE sent_at IS NULL ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED";

/// Write `job` (already encoded) as row `id`.
pub async fn insert(tx: &mut Tx, id: &str, job: &NewJob, now: i64) -> Result<(), sqlx::Error> {
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO outbox (id, queue, payload, run_at, dedupe_key, max_attempts, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)"
    )
    .bind(id)
    .bind(&job.queue)
    .bind(&job.payload)
    .bind(job.run_at_ms)
    .bind(&job.dedupe_key)
    .bind(job.max_attempts as i64)
    .bind(now)
    .execute(c)
    .await
    .map(|_| ()))
}

/// The oldest `limit` unsent rows.
pub async fn pending(db: &Db, limit: i64) -> Result<Vec<Row>, sqlx::Error> {
    on_db!(db, |p| sqlx::query_as(PENDING)
        .bind(limit)
        .fetch_all(p)
        .await)
}

/// [`pending`], locked for the rest of `tx`, skipping rows another
/// transaction has locked (another process's relay pushing them). On SQLite
/// `BEGIN IMMEDIATE` already holds every other writer off: a plain read.
pub async fn claim_pending(tx: &mut Tx, limit: i64) -> Result<Vec<Row>, sqlx::Error> {
    match &mut tx.conn {
        TxConn::Postgres(t) => sqlx::query_as(CLAIM).bind(limit).fetch_all(&mut **t).await,
        TxConn::Sqlite(t) => {
            sqlx::query_as(PENDING)
                .bind(limit)
                .fetch_all(&mut **t)
                .await
        }
    }
}

/// Mark the rows pushed.
pub async fn mark_sent(tx: &mut Tx, rows: &[Row], now: i64) -> Result<(), sqlx::Error> {
    for (id, ..) in rows {
        on_tx!(tx, |c| sqlx::query(
            "UPDATE outbox SET sent_at = $1 WHERE id = $2"
        )
        .bind(now)
        .bind(id)
        .execute(c)
        .await
        .map(|_| ()))?;
    }
    Ok(())
}

/// How many rows wait to be pushed.
pub async fn count_pending(db: &Db) -> Result<i64, sqlx::Error> {
    on_db!(db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL"
    )
    .fetch_one(p)
    .await)
}

/// Delete up to 1,000 rows pushed before `before`.
pub async fn purge_sent(db: &Db, before: i64) -> Result<u64, sqlx::Error> {
    on_db!(db, |p| {
        sqlx::query(
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1 LIMIT 1000)"
    )
    .bind(before)
    .execute(p)
    .await
    .map(|r| r.rows_affected())
    })
}
