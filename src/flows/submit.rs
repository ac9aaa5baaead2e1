//! A submission's write (`POST /v1/orgs/{org}/requests`, after every check
//! passed): the idempotency key, the org's next number, the request and its
//! params, the `submitted` event, the `request.submit` audit row, the review
//! job, the `request.submitted` webhook event when an endpoint wants it, and
//! the stored answer, all in one transaction. The HTTP module parses and
//! checks the call, builds the [`Submission`], calls one of the writes here
//! and maps what it did to the answer. Three ways to write the same rows:
//!
//! - [`write`]: on the embedded profile (SQLite file with the queue in it),
//!   one unit of work on the SQLite writer's thread (`db::writer`), without
//!   a thread hand-over per statement and committed together with whatever
//!   other submissions are waiting ([`write_embedded`]). When an endpoint
//!   wants `request.submitted` the unit writes nothing and says so, and the
//!   pool path records the webhook event with its payload (rare; kept in
//!   one place, `webhooks::emit_request`). Everywhere else but
//!   PostgreSQL with the outbox, the pool path: a `Tx`, statement by
//!   statement.
//! - [`write_pg`], PostgreSQL with the outbox, after [`read_pg`] (one
//!   statement: the key, the org, a stored answer, the requester, the
//!   webhook endpoints, the org's request counter and audit head): as a
//!   rule ONE autocommit statement numbered and linked from what the read
//!   saw, which writes nothing if either has moved since
//!   (`store::submit_pg::write_if_unchanged`); two round trips in all. When
//!   it loses that race the transaction of `reserve` and `write` (five
//!   round trips) writes it under the row locks, as do the org's submits
//!   for [`contention::WINDOW`](super::contention::WINDOW) after it lost.
use approvald_workers::{Job, PushOptions, store::NewJob};
use rusqlite::Connection;
use serde_json::json;
use sqlx::{Connection as _, PgConnection, PgPool};

use crate::{
    app::App,
    audit::{Entry, GENESIS},
    db::{
        TxConn,
        writer::{WriteError, Writer},
    },
    domain::request::request_number,
    jobs::{self, relay, review::ReviewJob},
    store::{
        self, audit, idempotency,
        submit_pg::{self as st, Optimistic, Seen},
    },
};

/// Makes the body of the 202 from the submission and its number (stored
/// for replays with the rows).
pub type Answer = fn(&Submission, &str) -> Result<String, serde_json::Error>;

/// What a write did.
#[derive(Debug)]
pub enum Written {
    /// Committed: the request's number and the answer stored for replays.
    Done { number: String, answer: String },
    /// Another submission holds the Idempotency-Key (it committed first, or
    /// is in progress on a path that does not wait for it): nothing
    /// written; answer what it answered.
    KeyTaken,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Everything a submission writes, checked and computed before the write.
#[derive(Debug, Clone)]
pub struct Submission {
    pub org_id: String,
    /// The audit actor (`key:<id>`).
    pub actor: String,
    pub id: String,
    pub kind: String,
    pub requester_id: Option<String>,
    pub remark: String,
    /// JSON array.
    pub documents: String,
    /// JSON object, when given.
    pub params: Option<String>,
    pub sla_days: i64,
    pub sla_due_at: i64,
    pub now: i64,
    /// `(Idempotency-Key, hash of the body)`.
    pub idempotency: Option<(String, String)>,
}

impl Submission {
    /// The `submitted` event's detail.
    pub fn event_detail(&self, number: &str) -> serde_json::Value {
        json!({ "kind": self.kind, "number": number, "requester": self.requester_id })
    }

    /// The `request.submit` audit row.
    pub fn audit(&self, number: &str) -> audit::Operation<'_> {
        audit::Operation {
            org_id: &self.org_id,
            actor: &self.actor,
            action: "request.submit",
            target: Some(&self.id),
            detail: json!({ "kind": self.kind, "number": number }),
            at: self.now,
        }
    }

    pub fn new_request<'a>(&'a self, number: &'a str) -> store::requests::NewRequest<'a> {
        store::requests::NewRequest {
            id: &self.id,
            org_id: &self.org_id,
            number,
            kind: &self.kind,
            requester_id: self.requester_id.as_deref(),
            remark: &self.remark,
            documents: &self.documents,
            sla_days: self.sla_days,
            sla_due_at: self.sla_due_at,
            now: self.now,
        }
    }
}

/// What the embedded write did.
#[derive(Debug)]
pub enum Embedded {
    /// Committed: the request's number and the answer stored for replays.
    Written { number: String, answer: String },
    /// Another submission holds the Idempotency-Key (committed): replay it.
    KeyTaken,
    /// An endpoint wants `request.submitted`: nothing was written; take the
    /// pool path.
    WebhooksWanted,
}

#[derive(Debug, thiserror::Error)]
enum UnitError {
    #[error("key taken")]
    KeyTaken,
    #[error("webhooks wanted")]
    WebhooksWanted,
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("encoding the answer: {0}")]
    Answer(#[from] serde_json::Error),
}

/// Write `s` on `writer`; `answer` makes the body of the 202 from the
/// submission and its number (stored for replays in the same unit). Wakes
/// the review workers once committed.
pub async fn write_embedded(
    app: &App,
    writer: &Writer,
    s: Submission,
    answer: Answer,
) -> anyhow::Result<Embedded> {
    let job = app.queue.new_job(
        &ReviewJob {
            request_id: s.id.clone(),
        },
        &PushOptions::default(),
    )?;
    // Task-local on this task; the writer's thread has none.
    let http_request_id = crate::audit::request_id();
    let window = jobs::dedupe_window_ms(app);
    let unit = move |c: &Connection| -> Result<(String, String), UnitError> {
        if crate::webhooks::wanted_sync(c, &s.org_id, "request.submitted")? {
            return Err(UnitError::WebhooksWanted);
        }
        if let Some((key, hash)) = &s.idempotency
            && !idempotency::reserve_sync(c, &s.org_id, key, hash, s.now)?
        {
            return Err(UnitError::KeyTaken);
        }
        let number = request_number(store::orgs::next_request_seq_sync(c, &s.org_id)?);
        store::requests::insert_sync(c, &s.new_request(&number))?;
        if let Some(params) = &s.params {
            store::requests::set_params_sync(c, &s.id, params)?;
        }
        store::requests::add_event_sync(
            c,
            &s.id,
            "submitted",
            Some(&s.actor),
            &s.event_detail(&number),
            s.now,
        )?;
        audit::operation_sync(c, s.audit(&number), http_request_id)?;
        jobs::push_sync(c, &job, s.now, window)?;
        let body = answer(&s, &number)?;
        if let Some((key, _)) = &s.idempotency {
            idempotency::complete_sync(c, &s.org_id, key, 202, &body)?;
        }
        Ok((number, body))
    };
    match writer.run(unit).await {
        Ok((number, answer)) => {
            if let Some(pool) = app.db.sqlite_pool() {
                approvald_workers::store::sqlite::notify_pushed(pool, ReviewJob::NAME);
            }
            Ok(Embedded::Written { number, answer })
        }
        Err(UnitError::KeyTaken) => Ok(Embedded::KeyTaken),
        Err(UnitError::WebhooksWanted) => Ok(Embedded::WebhooksWanted),
        Err(e) => Err(anyhow::Error::from(e).context("writing the submission")),
    }
}

/// Write `s` anywhere but on PostgreSQL with the outbox (there: [`read_pg`]
/// and [`write_pg`]): on the SQLite writer's thread when there is one
/// ([`write_embedded`]), otherwise (or when an endpoint wants the event)
/// through a pooled `Tx`.
pub async fn write(app: &App, s: &Submission, answer: Answer) -> Result<Written, SubmitError> {
    if let Some(writer) = &app.writer {
        match write_embedded(app, writer, s.clone(), answer).await? {
            Embedded::Written { number, answer } => return Ok(Written::Done { number, answer }),
            Embedded::KeyTaken => return Ok(Written::KeyTaken),
            // An endpoint wants the event: the pool path below records it.
            Embedded::WebhooksWanted => {}
        }
    }
    let now = s.now;
    let mut tx = app.db.begin().await?;
    if let Some((k, hash)) = &s.idempotency
        && !idempotency::reserve(&mut tx, &s.org_id, k, hash, now).await?
    {
        // A concurrent duplicate committed first.
        tx.rollback().await?;
        return Ok(Written::KeyTaken);
    }
    let number = request_number(store::orgs::next_request_seq(&mut tx, &s.org_id).await?);
    store::requests::insert(&mut tx, &s.new_request(&number)).await?;
    if let Some(params) = &s.params {
        store::requests::set_params(&mut tx, &s.id, params).await?;
    }
    let detail = s.event_detail(&number);
    store::requests::add_event(&mut tx, &s.id, "submitted", Some(&s.actor), &detail, now).await?;
    audit::operation(&mut tx, s.audit(&number)).await?;
    jobs::enqueue(
        app,
        &mut tx,
        &ReviewJob {
            request_id: s.id.clone(),
        },
        PushOptions::default(),
    )
    .await?;
    crate::webhooks::emit_request(app, &mut tx, &s.org_id, &s.id, "request.submitted", now).await?;
    let body = answer(s, &number).map_err(anyhow::Error::from)?;
    if let Some((k, _)) = &s.idempotency {
        idempotency::complete(&mut tx, &s.org_id, k, 202, &body).await?;
    }
    tx.commit().await?;
    Ok(Written::Done {
        number,
        answer: body,
    })
}

/// The event a submission announces to the webhook endpoints that want it.
const EVENT: &str = "request.submitted";

/// The first step of a submit on PostgreSQL with the outbox: what one
/// statement read ([`st::read`]), on the connection the write runs on too
/// (kept warm between calls, [`crate::db::Warm`]: no ping as it goes back).
pub struct PgRead {
    conn: crate::db::Kept,
    pub seen: Seen,
}

/// [`PgRead`] for a key whose hash is `key_hash` (`None`: a malformed key,
/// which matches nothing), the org `org_id`, the `Idempotency-Key` `idem`
/// and the requester reference `requester`.
pub async fn read_pg(
    app: &App,
    pool: &PgPool,
    key_hash: Option<&str>,
    org_id: &str,
    idem: Option<&str>,
    requester: Option<&str>,
) -> Result<PgRead, sqlx::Error> {
    let mut conn = app.warm.take(pool).await?;
    let seen = st::read(&mut conn, key_hash, org_id, idem, requester).await?;
    Ok(PgRead { conn, seen })
}

impl PgRead {
    /// The call was answered from the read (a refusal, a replay): nothing
    /// to write; the connection stays warm.
    pub fn answered(self, app: &App) {
        app.warm.keep(self.conn);
    }
}

/// Write `s` (checked against `read.seen` by the caller) on PostgreSQL
/// with the outbox. `hooks`: the enabled endpoints that want
/// `request.submitted` (from the read); with any, the write is a pooled
/// `Tx` that records the event as `webhooks::emit_request` does. Without,
/// the optimistic statement first, then (if it lost a race, or cannot be
/// tried) the transaction. The commit nudges the relay.
pub async fn write_pg(
    app: &App,
    read: PgRead,
    s: &Submission,
    hooks: &[String],
    answer: Answer,
) -> Result<Written, SubmitError> {
    let PgRead { mut conn, seen } = read;
    if !hooks.is_empty() {
        // Back to the pool: the transaction takes its own from there.
        conn.release();
        return write_pg_announced(app, s, hooks, answer).await;
    }
    match basis(&seen) {
        Some(_) if app.submit_lost.lately(&s.org_id) => count("skipped"),
        None => count("skipped"),
        Some(basis) => {
            let number = request_number(basis.next_seq + 1);
            let link = basis
                .head
                .map(|(seq, hash)| (seq + 1, Some(hash.to_string())));
            let rows = Rows::new(app, s, number, link, answer)?;
            match st::write_if_unchanged(&mut conn, &rows.of(s), basis).await? {
                Optimistic::Written => {
                    app.warm.keep(conn);
                    relay::nudge(app);
                    count("written");
                    return Ok(rows.done());
                }
                Optimistic::KeyTaken => {
                    app.warm.keep(conn);
                    count("key_taken");
                    return Ok(Written::KeyTaken);
                }
                Optimistic::Changed => {
                    app.submit_lost.lost(&s.org_id);
                    count("lost");
                }
            }
        }
    }
    let mut t = conn.begin().await?;
    let written = steps(app, &mut t, s, answer).await?;
    match &written {
        Written::Done { .. } => t.commit().await?,
        Written::KeyTaken => t.rollback().await?,
    }
    app.warm.keep(conn);
    if matches!(written, Written::Done { .. }) {
        relay::nudge(app);
    }
    Ok(written)
}

/// How often the optimistic statement was `written`, found the key taken
/// (`key_taken`), `lost` a race (the transaction wrote it), or was
/// `skipped` (the org lost lately, or the read saw no hashed audit head).
fn count(outcome: &'static str) {
    metrics::counter!("approvald_submit_optimistic_total", "outcome" => outcome).increment(1);
}

/// What the optimistic statement checks, from what the read saw: the
/// org's request counter and, with the chain on, its hashed audit head.
/// `None`: the org has no audit head yet, or one whose pre-chain rows are
/// not hashed (the transaction creates the one and reports the other).
fn basis(seen: &Seen) -> Option<st::Basis<'_>> {
    let next_seq = seen.org_next_seq?;
    let head = if audit::chain_enabled() {
        Some((seen.head_seq?, seen.head_hash.as_deref()?))
    } else {
        None
    };
    Some(st::Basis { next_seq, head })
}

/// [`write_pg`] when endpoints want the event: a pooled `Tx` running the
/// same transaction, plus the event.
async fn write_pg_announced(
    app: &App,
    s: &Submission,
    hooks: &[String],
    answer: Answer,
) -> Result<Written, SubmitError> {
    let mut tx = app.db.begin().await?;
    let TxConn::Postgres(t) = &mut tx.conn else {
        return Err(anyhow::anyhow!("not a PostgreSQL transaction").into());
    };
    let written = steps(app, t, s, answer).await?;
    if let Written::Done { .. } = &written {
        crate::webhooks::emit_request_to(app, &mut tx, &s.org_id, &s.id, EVENT, s.now, hooks)
            .await?;
        tx.after_commit("outbox", relay::nudger(app));
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(written)
}

/// The transaction's two statements on `conn` (`BEGIN` is the caller's):
/// [`st::reserve`] (the key, the number, the audit link, under their row
/// locks) and [`st::write`]. [`Written::KeyTaken`]: a concurrent duplicate
/// committed first; nothing written.
async fn steps(
    app: &App,
    conn: &mut PgConnection,
    s: &Submission,
    answer: Answer,
) -> Result<Written, SubmitError> {
    let chain = audit::chain_enabled();
    let idem = s
        .idempotency
        .as_ref()
        .map(|(k, h)| (k.as_str(), h.as_str()));
    let r = st::reserve(conn, &s.org_id, idem, s.now, chain, GENESIS).await?;
    if !r.reserved {
        return Ok(Written::KeyTaken);
    }
    let seq = r
        .seq
        .ok_or_else(|| anyhow::anyhow!("org {} vanished while submitting", s.org_id))?;
    let link = if chain {
        let at = r
            .audit_seq
            .ok_or_else(|| anyhow::anyhow!("no audit head for org {}", s.org_id))?;
        Some((at, r.prev_hash))
    } else {
        None
    };
    let rows = Rows::new(app, s, request_number(seq), link, answer)?;
    st::write(conn, &rows.of(s)).await?;
    Ok(rows.done())
}

/// What the PostgreSQL statements write besides the [`Submission`]: its
/// number, the audit entry (linked), the review job, the event's and the
/// outbox row's ids, the answer.
struct Rows {
    number: String,
    entry: Entry,
    event_detail: String,
    event_id: String,
    job: NewJob,
    outbox_id: String,
    outbox_at: i64,
    answer: String,
}

impl Rows {
    /// `link`: the entry's seq in the org's chain and the previous entry's
    /// hash (`None` with the chain off; a `None` hash is a chain not hashed
    /// yet, an error).
    fn new(
        app: &App,
        s: &Submission,
        number: String,
        link: Option<(i64, Option<String>)>,
        answer: Answer,
    ) -> anyhow::Result<Self> {
        let mut entry = audit::operation_entry(s.audit(&number), crate::audit::request_id());
        if let Some((seq, prev)) = link {
            audit::link(&mut entry, seq, prev).map_err(|m| anyhow::anyhow!(m))?;
        }
        let job = app.queue.new_job(
            &ReviewJob {
                request_id: s.id.clone(),
            },
            &PushOptions::default(),
        )?;
        Ok(Self {
            event_detail: s.event_detail(&number).to_string(),
            answer: answer(s, &number)?,
            number,
            entry,
            event_id: new_id(),
            job,
            outbox_id: new_id(),
            outbox_at: app.now_ms(),
        })
    }

    fn of<'a>(&'a self, s: &'a Submission) -> st::Submission<'a> {
        st::Submission {
            id: &s.id,
            org_id: &s.org_id,
            number: &self.number,
            kind: &s.kind,
            requester_id: s.requester_id.as_deref(),
            remark: &s.remark,
            documents: &s.documents,
            params: s.params.as_deref(),
            sla_days: s.sla_days,
            sla_due_at: s.sla_due_at,
            now: s.now,
            event_id: &self.event_id,
            actor: &s.actor,
            event_detail: &self.event_detail,
            audit: &self.entry,
            job: &self.job,
            outbox_id: &self.outbox_id,
            outbox_at: self.outbox_at,
            idem: s
                .idempotency
                .as_ref()
                .map(|(k, h)| (k.as_str(), h.as_str())),
            status: 202,
            answer: &self.answer,
        }
    }

    fn done(self) -> Written {
        Written::Done {
            number: self.number,
            answer: self.answer,
        }
    }
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
