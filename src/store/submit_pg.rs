//! PostgreSQL only: the statements of `POST /v1/orgs/{org}/requests` in as
//! few round trips as is correct (issue 17). A submit on the general path
//! sends about fifteen statements, one round trip each; here it is
//! [`read`] (one statement, before any write), then, as a rule, one
//! autocommit statement, [`write_if_unchanged`], which writes everything
//! if the org's request counter and audit head are still what [`read`]
//! saw. When they are not (a concurrent change of the org won), or when
//! the read could not give them, the fallback is a transaction of
//! [`reserve`] and [`write`], which take the number and the audit link
//! under their row locks. The rows written are exactly the general path's
//! either way: the same columns and values as `idempotency::{reserve,
//! complete}`, `orgs::next_request_seq`, `requests::{insert, set_params,
//! add_event}`, `audit::operation` and the outbox row of `jobs::enqueue`.
use approvald_workers::store::NewJob;
use sqlx::PgConnection;

use crate::{audit::Entry, store::idempotency::Stored};

/// What a submit reads before its transaction, in one statement on one
/// snapshot: the caller's key, the org, the stored answer for the
/// `Idempotency-Key`, the requester named in the body and the webhook
/// endpoints of the org (and the platform-wide ones), and what
/// [`write_if_unchanged`] needs to number the request and link its audit
/// entry (the org's request counter and audit head). Every column is NULL
/// when its row does not exist.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Seen {
    pub key_id: Option<String>,
    pub key_scope: Option<String>,
    pub key_org_id: Option<String>,
    pub org_name: Option<String>,
    pub org_region: Option<String>,
    pub org_locale: Option<String>,
    pub org_created_at: Option<i64>,
    pub org_currency: Option<String>,
    pub org_timezone: Option<String>,
    /// The org's `next_request_seq` (the last number taken).
    pub org_next_seq: Option<i64>,
    /// The org's audit head: its last entry's seq and hash.
    pub head_seq: Option<i64>,
    pub head_hash: Option<String>,
    pub idem_body_hash: Option<String>,
    pub idem_status: Option<i64>,
    pub idem_response: Option<String>,
    /// The org's member whose id or login id is the requester reference
    /// (the oldest, as `members::find` picks).
    pub m_id: Option<String>,
    pub m_status: Option<String>,
    /// The enabled endpoints, in creation order, and their `events` lists
    /// (JSON array text), index for index; NULL when there are none.
    pub hook_ids: Option<Vec<String>>,
    pub hook_events: Option<Vec<String>>,
}

impl Seen {
    /// The stored first answer for the key, if one was committed.
    pub fn stored(&self) -> Option<Stored> {
        Some(Stored {
            body_hash: self.idem_body_hash.clone()?,
            status: self.idem_status?,
            response: self.idem_response.clone()?,
        })
    }
}

/// [`Seen`] for a key whose hash is `key_hash` (`None`: a malformed key,
/// which matches nothing), the org `org_id`, the `Idempotency-Key` `idem`
/// and the requester reference `requester` (`None`: none to look up).
pub async fn read(
    conn: &mut PgConnection,
    key_hash: Option<&str>,
    org_id: &str,
    idem: Option<&str>,
    requester: Option<&str>,
) -> Result<Seen, sqlx::Error> {
    sqlx::query_as::<_, Seen>(
        "SELECT k.id AS key_id, k.scope AS key_scope, k.org_id AS key_org_id, \
           o.name AS org_name, o.region AS org_region, o.locale AS org_locale, \
           o.created_at AS org_created_at, o.currency AS org_currency, o.timezone AS org_timezone, \
           o.next_request_seq AS org_next_seq, h.seq AS head_seq, h.hash AS head_hash, \
           i.body_hash AS idem_body_hash, i.status AS idem_status, i.response AS idem_response, \
           m.id AS m_id, m.status AS m_status, w.hook_ids, w.hook_events \
         FROM (SELECT 1 AS one) x \
         LEFT JOIN api_keys k ON k.hash = $1 AND k.revoked_at IS NULL \
         LEFT JOIN orgs o ON o.id = $2 \
         LEFT JOIN audit_heads h ON h.org_id = $2 \
         LEFT JOIN idempotency_keys i ON i.org_id = $2 AND i.key = $3 \
         LEFT JOIN LATERAL (SELECT id, status FROM members \
                            WHERE org_id = $2 AND (id = $4 OR login_id = $4) \
                            ORDER BY created_at LIMIT 1) m ON true \
         LEFT JOIN LATERAL (SELECT array_agg(id ORDER BY created_at, id) AS hook_ids, \
                                   array_agg(events ORDER BY created_at, id) AS hook_events \
                            FROM webhook_endpoints \
                            WHERE (org_id = $2 OR org_id IS NULL) AND enabled AND deleted_at IS NULL) w ON true",
    )
    .bind(key_hash)
    .bind(org_id)
    .bind(idem)
    .bind(requester)
    .fetch_one(conn)
    .await
}

/// What [`reserve`] took.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Reserved {
    /// False: the `Idempotency-Key` is held by another transaction that
    /// committed meanwhile; nothing else was taken (roll back and replay).
    pub reserved: bool,
    /// The org's new `next_request_seq`.
    pub seq: Option<i64>,
    /// The audit chain's new head: this entry's `seq`, and the previous
    /// entry's hash (NULL on a chain whose pre-chain rows are not hashed
    /// yet). NULL both when the chain is off.
    pub audit_seq: Option<i64>,
    pub prev_hash: Option<String>,
}

/// The first statement of the transaction, in the general path's lock
/// order: reserve `(org_id, idem)` (when there is a key: a concurrent
/// duplicate blocks on it, then finds it taken), then, only if reserved,
/// take the org's next request number (its row lock) and, with `chain`,
/// the next link of the org's audit chain (its head's row lock, created on
/// the org's first entry with `genesis` as the hash).
pub async fn reserve(
    conn: &mut PgConnection,
    org_id: &str,
    idem: Option<(&str, &str)>,
    now: i64,
    chain: bool,
    genesis: &str,
) -> Result<Reserved, sqlx::Error> {
    let (key, body_hash) = idem.unzip();
    sqlx::query_as::<_, Reserved>(
        "WITH idem AS ( \
           INSERT INTO idempotency_keys (org_id, key, body_hash, status, response, created_at) \
           SELECT $1, $2, $3, 0, '', $4 WHERE $2::text IS NOT NULL \
           ON CONFLICT (org_id, key) DO NOTHING RETURNING 1 AS one), \
         ok AS (SELECT $2::text IS NULL OR EXISTS (SELECT 1 FROM idem) AS ok), \
         num AS ( \
           UPDATE orgs SET next_request_seq = next_request_seq + 1 \
           WHERE id = $1 AND (SELECT ok FROM ok) RETURNING next_request_seq), \
         head AS ( \
           INSERT INTO audit_heads (org_id, seq, hash) \
           SELECT $1, 1, $6 WHERE $5 AND EXISTS (SELECT 1 FROM num) \
           ON CONFLICT (org_id) DO UPDATE SET seq = audit_heads.seq + 1 \
           RETURNING seq, hash) \
         SELECT (SELECT ok FROM ok) AS reserved, (SELECT next_request_seq FROM num) AS seq, \
                (SELECT seq FROM head) AS audit_seq, (SELECT hash FROM head) AS prev_hash",
    )
    .bind(org_id)
    .bind(key)
    .bind(body_hash)
    .bind(now)
    .bind(chain)
    .bind(genesis)
    .fetch_one(conn)
    .await
}

/// Everything [`write`] and [`write_if_unchanged`] insert.
pub struct Submission<'a> {
    pub id: &'a str,
    pub org_id: &'a str,
    pub number: &'a str,
    pub kind: &'a str,
    pub requester_id: Option<&'a str>,
    pub remark: &'a str,
    pub documents: &'a str,
    pub params: Option<&'a str>,
    pub sla_days: i64,
    pub sla_due_at: i64,
    pub now: i64,
    /// The `submitted` event: its id, actor and detail (JSON text).
    pub event_id: &'a str,
    pub actor: &'a str,
    pub event_detail: &'a str,
    /// The audit entry, chained (or not) by the caller.
    pub audit: &'a Entry,
    /// The review job, as the outbox holds it, and the outbox row's id and
    /// `created_at`.
    pub job: &'a NewJob,
    pub outbox_id: &'a str,
    pub outbox_at: i64,
    /// The `Idempotency-Key` and the hash of the body it came with, and
    /// the answer to record for it.
    pub idem: Option<(&'a str, &'a str)>,
    pub status: i64,
    pub answer: &'a str,
}

/// The columns the submission writes, for `concat!` (queries must be
/// literals): [`write`] and [`write_if_unchanged`] bind the same values
/// to the same placeholders ([`bind_submission!`]), `$1` to `$41`.
macro_rules! request_columns {
    () => {
        "id, org_id, number, kind, requester_id, remark, documents, status, \
         sla_days, sla_due_at, created_at, updated_at, params"
    };
}
macro_rules! outbox_columns {
    () => {
        "id, queue, payload, run_at, dedupe_key, max_attempts, created_at"
    };
}

/// Bind `$1` to `$41` of [`write`] and [`write_if_unchanged`] to `q`:
/// the request ($1-$11), its event ($12-$14), the audit entry ($15-$31,
/// `detail` its canonical text), the outbox row ($32-$38) and the key's
/// answer ($39-$41).
macro_rules! bind_submission {
    ($q:expr, $s:expr, $detail:expr) => {{
        let s = $s;
        let q = $q
            .bind(s.id)
            .bind(s.org_id)
            .bind(s.number)
            .bind(s.kind)
            .bind(s.requester_id)
            .bind(s.remark)
            .bind(s.documents)
            .bind(s.sla_days)
            .bind(s.sla_due_at)
            .bind(s.now)
            .bind(s.params)
            .bind(s.event_id)
            .bind(s.actor)
            .bind(s.event_detail);
        super::audit::bind_entry!(q, s.audit, $detail)
            .bind(s.outbox_id)
            .bind(&s.job.queue)
            .bind(&s.job.payload)
            .bind(s.job.run_at_ms)
            .bind(&s.job.dedupe_key)
            .bind(i64::from(s.job.max_attempts))
            .bind(s.outbox_at)
            .bind(s.status)
            .bind(s.answer)
            .bind(s.idem.map(|(key, _)| key))
    }};
}

/// The second statement of the transaction: the request (with its
/// params), its `submitted` event, the audit entry (whose trigger moves
/// the chain's head, migration 0015), the review job's outbox row and the
/// key's answer. Foreign keys are checked at the statement's end, when the
/// request exists.
pub async fn write(conn: &mut PgConnection, s: &Submission<'_>) -> Result<(), sqlx::Error> {
    let detail = crate::audit::canonical(&s.audit.detail);
    let q = sqlx::query(concat!(
        "WITH r AS ( \
           INSERT INTO requests (",
        request_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, 'submitted', $8, $9, $10, $10, COALESCE($11, '{}'))), \
         e AS ( \
           INSERT INTO request_events (id, request_id, at, type, actor, detail) \
           VALUES ($12, $1, $10, 'submitted', $13, $14)), \
         a AS ( \
           INSERT INTO audit_log (",
        super::audit::entry_columns!(),
        ") VALUES ($15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31)), \
         o AS ( \
           INSERT INTO outbox (",
        outbox_columns!(),
        ") VALUES ($32, $33, $34, $35, $36, $37, $38)) \
         UPDATE idempotency_keys SET status = $39, response = $40 WHERE org_id = $2 AND key = $41"
    ));
    bind_submission!(q, s, &detail).execute(conn).await?;
    Ok(())
}

/// What [`read`] saw of the org that the optimistic write depends on.
#[derive(Debug, Clone, Copy)]
pub struct Basis<'a> {
    /// The org's `next_request_seq`: the submission is numbered one more.
    pub next_seq: i64,
    /// The org's audit head (seq, hash) the entry is linked after; `None`
    /// with the chain off (benchmark switch), when appends leave the head
    /// alone.
    pub head: Option<(i64, &'a str)>,
}

/// What [`write_if_unchanged`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Optimistic {
    /// Everything is written and committed.
    Written,
    /// The `Idempotency-Key` is held by a submission that committed first
    /// (one in progress was waited for); nothing written.
    KeyTaken,
    /// The org's counter or audit head moved since [`read`]; nothing
    /// written.
    Changed,
}

/// Reserve, number and write the whole submission in ONE autocommit
/// statement, numbered and linked from what [`read`] saw (`basis`): the
/// key's row (already with its answer: the general path reserves and then
/// completes it, which leaves the same row), then, in the general path's
/// lock order, the org's counter and the audit head, each moved only if it
/// is still as seen (a concurrent writer's committed change is re-checked
/// under the row lock), then the request, its event, the audit entry, the
/// outbox row. When the key is ours but a check fails, the request's
/// number is NULL: the statement fails on it (23502) and takes the key's
/// row back, so nothing is written.
pub async fn write_if_unchanged(
    conn: &mut PgConnection,
    s: &Submission<'_>,
    basis: Basis<'_>,
) -> Result<Optimistic, sqlx::Error> {
    let detail = crate::audit::canonical(&s.audit.detail);
    let q = sqlx::query(concat!(
        "WITH idem AS ( \
           INSERT INTO idempotency_keys (org_id, key, body_hash, status, response, created_at) \
           SELECT $2, $41, $42, $39, $40, $10 WHERE $41::text IS NOT NULL \
           ON CONFLICT (org_id, key) DO NOTHING RETURNING 1 AS one), \
         mine AS MATERIALIZED (SELECT $41::text IS NULL OR EXISTS (SELECT 1 FROM idem) AS mine), \
         num AS ( \
           UPDATE orgs SET next_request_seq = next_request_seq + 1 \
           WHERE id = $2 AND next_request_seq = $43 AND (SELECT mine FROM mine) RETURNING 1 AS one), \
         head AS ( \
           UPDATE audit_heads SET seq = seq + 1 \
           WHERE org_id = $2 AND seq = $44 AND hash = $45 AND EXISTS (SELECT 1 FROM num) \
           RETURNING 1 AS one), \
         won AS MATERIALIZED ( \
           SELECT EXISTS (SELECT 1 FROM num) \
                  AND ($44::bigint IS NULL OR EXISTS (SELECT 1 FROM head)) AS won), \
         e AS ( \
           INSERT INTO request_events (id, request_id, at, type, actor, detail) \
           SELECT $12, $1, $10, 'submitted', $13, $14 WHERE (SELECT won FROM won)), \
         a AS ( \
           INSERT INTO audit_log (",
        super::audit::entry_columns!(),
        ") SELECT $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31 \
           WHERE (SELECT won FROM won)), \
         o AS ( \
           INSERT INTO outbox (",
        outbox_columns!(),
        ") SELECT $32, $33, $34, $35, $36, $37, $38 WHERE (SELECT won FROM won)) \
         INSERT INTO requests (",
        request_columns!(),
        ") SELECT $1, $2, CASE WHEN (SELECT won FROM won) THEN $3 END, $4, $5, $6, $7, 'submitted', \
                  $8, $9, $10, $10, COALESCE($11, '{}') \
           WHERE (SELECT mine FROM mine)"
    ));
    let (head_seq, head_hash) = basis.head.unzip();
    let r = bind_submission!(q, s, &detail)
        .bind(s.idem.map(|(_, hash)| hash))
        .bind(basis.next_seq)
        .bind(head_seq)
        .bind(head_hash)
        .execute(conn)
        .await;
    match r {
        Ok(r) if r.rows_affected() == 1 => Ok(Optimistic::Written),
        Ok(_) => Ok(Optimistic::KeyTaken),
        Err(e) if crate::db::pg_null_in(&e, "requests", "number") => Ok(Optimistic::Changed),
        Err(e) => Err(e),
    }
}
