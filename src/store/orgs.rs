//! `orgs`: an upstream app's customer account (a seller, a company).
use crate::{
    db::{Db, Tx, inline::InlineReaders, writer},
    on_db, on_tx,
};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Org {
    pub id: String,
    pub name: String,
    pub region: String,
    pub locale: String,
    pub created_at: i64,
    /// ISO 4217; `None` on orgs made before spending limits (the config's
    /// `payments.currency` applies, see `App::org_currency`).
    pub currency: Option<String>,
    /// IANA zone; `None`: the region calendar's (see `App::org_zone`).
    pub timezone: Option<String>,
}

pub async fn insert(tx: &mut Tx, org: &Org) -> Result<(), sqlx::Error> {
    on_tx!(tx, |c| {
        sqlx::query(
        "INSERT INTO orgs (id, name, region, locale, next_request_seq, created_at, currency, timezone) \
         VALUES ($1, $2, $3, $4, 0, $5, $6, $7)"
    )
    .bind(&org.id)
    .bind(&org.name)
    .bind(&org.region)
    .bind(&org.locale)
    .bind(org.created_at)
    .bind(&org.currency)
    .bind(&org.timezone)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(())
}

const GET: &str =
    "SELECT id, name, region, locale, created_at, currency, timezone FROM orgs WHERE id = $1";
const NEXT_REQUEST_SEQ: &str = "UPDATE orgs SET next_request_seq = next_request_seq + 1 WHERE id = $1 RETURNING next_request_seq";

pub async fn get(db: &Db, id: &str) -> Result<Option<Org>, sqlx::Error> {
    on_db!(db, |c| sqlx::query_as::<_, Org>(GET)
        .bind(id)
        .fetch_optional(c)
        .await)
}

/// Serialize changes to one org's members (the member limit) across
/// concurrent transactions: a no-op update takes the org row's write lock on
/// PostgreSQL (SQLite's `BEGIN IMMEDIATE` already serializes writers).
/// Returns false when the org does not exist.
pub async fn lock(tx: &mut Tx, id: &str) -> Result<bool, sqlx::Error> {
    let done = on_tx!(tx, |c| sqlx::query(
        "UPDATE orgs SET next_request_seq = next_request_seq WHERE id = $1"
    )
    .bind(id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(done == 1)
}

/// Take the org's next request sequence number (1, 2, ...), atomically.
pub async fn next_request_seq(tx: &mut Tx, id: &str) -> Result<i64, sqlx::Error> {
    on_tx!(tx, |c| {
        sqlx::query_scalar::<_, i64>(NEXT_REQUEST_SEQ)
            .bind(id)
            .fetch_one(c)
            .await
    })
}

/// [`get`], on the calling task when an inline connection is free (see
/// `db::inline`), else on the pool.
pub async fn get_fast(
    db: &Db,
    inline: Option<&InlineReaders>,
    id: &str,
) -> Result<Option<Org>, sqlx::Error> {
    let found = inline.and_then(|r| {
        r.read(|c| {
            writer::query_opt(c, GET, &[&id], |row| {
                Ok(Org {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    region: row.get(2)?,
                    locale: row.get(3)?,
                    created_at: row.get(4)?,
                    currency: row.get(5)?,
                    timezone: row.get(6)?,
                })
            })
        })
    });
    match found {
        Some(found) => Ok(found),
        None => get(db, id).await,
    }
}

/// [`next_request_seq`] on the writer's connection (`db::writer`).
pub fn next_request_seq_sync(c: &rusqlite::Connection, id: &str) -> rusqlite::Result<i64> {
    writer::query_opt(c, NEXT_REQUEST_SEQ, &[&id], |r| r.get(0))?
        .ok_or(rusqlite::Error::QueryReturnedNoRows)
}
