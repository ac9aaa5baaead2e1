//! A submission's write on the embedded profile, as one unit of work on the
//! SQLite writer's thread (`db::writer`): the same rows, in the same
//! transaction, as the pool path of `POST /v1/orgs/{org}/requests` (the
//! idempotency key, the org's next number, the request and its params, the
//! `submitted` event, the `request.submit` audit row, the review job and
//! the stored answer), without a thread hand-over per statement, and
//! committed together with whatever other submissions are waiting.
//!
//! When an endpoint wants `request.submitted` the unit writes nothing and
//! says so: the caller then takes the pool path, which records the webhook
//! event with its payload (rare; kept in one place, `webhooks::emit_request`).
use approvald_workers::{Job, PushOptions};
use rusqlite::Connection;
use serde_json::json;

use crate::{
    app::App,
    db::writer::{WriteError, Writer},
    domain::request::request_number,
    jobs::{self, review::ReviewJob},
    store::{self, audit, idempotency},
};

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
    answer: fn(&Submission, &str) -> Result<String, serde_json::Error>,
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
