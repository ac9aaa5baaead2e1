//! `POST /v1/orgs/{org}/requests` on PostgreSQL (with the outbox) in five
//! round trips (issue 17): one statement reads the key, the org, the stored
//! `Idempotency-Key` answer, the requester and the webhook endpoints
//! ([`st::read`]); then `BEGIN`, two statements, [`st::reserve`] (the key,
//! the request number, the audit chain's next link) and [`st::write`] (the
//! request, its event, the audit entry, the review job's outbox row, the
//! key's answer), and `COMMIT`. The connection is kept warm between calls
//! ([`crate::db::Warm`]: no ping as it goes back, none before it is used).
//!
//! Every answer is the general path's (`submit_as`), in the same order:
//! 401/403 (the key), 404 (the org boundary, the org), 400 (the
//! `Idempotency-Key` header), the stored answer or 422 (key reused), 422
//! (the fields, the requester), then 202, or the stored answer / 409 when a
//! concurrent duplicate holds the key. When an endpoint wants
//! `request.submitted`, the transaction is a [`crate::db::Tx`] from the
//! pool and the event is written as `webhooks::emit_request` writes it.
use anyhow::Context;
use approvald_workers::PushOptions;
use axum::{
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use sqlx::{Connection, PgConnection, PgPool};

use super::{
    Submit, Valid, accepted, body_hash, idempotency_key, replay, replay_committed, requester_ref,
    submission, submitted_answer, validate_found,
};
use crate::{
    app::App,
    audit::GENESIS,
    db::TxConn,
    domain::request::request_number,
    flows,
    http::{
        ApiError, ApiResult,
        api::{
            auth::{AuthRejection, Caller},
            body::JsonBody,
            new_id,
        },
    },
    jobs::{relay, review::ReviewJob},
    store::{
        audit, keys,
        orgs::Org,
        submit_pg::{self as st, Seen},
    },
};

const EVENT: &str = "request.submitted";

/// The submit of the bearer key `token` (not looked up yet) on `pool`.
pub(super) async fn submit(
    app: &App,
    pool: &PgPool,
    token: &str,
    org_id: &str,
    headers: &HeaderMap,
    body: JsonBody<Submit>,
) -> Result<Response, Response> {
    let idem = idempotency_key(headers);
    let key_hash = keys::well_formed(token).then(|| keys::hash(token));
    let mut conn = app.warm.take(pool).await.map_err(into_response)?;
    let seen = st::read(
        &mut conn,
        key_hash.as_deref(),
        org_id,
        idem.as_ref().ok().and_then(Option::as_deref),
        requester_ref(&body.value),
    )
    .await
    .map_err(into_response)?;
    let hash = body_hash(&body.bytes);
    let checked = check(app, seen, org_id, idem, &hash, body.value);
    let Ready {
        caller,
        org,
        key,
        v,
        hooks,
    } = match checked {
        Checked::Submit(r) => *r,
        Checked::Answer(resp) => {
            app.warm.keep(conn);
            return Ok(resp);
        }
    };
    let s = submission(app, &caller, org, key.map(|k| (k, hash)), v)
        .map_err(IntoResponse::into_response)?;
    let now = s.now;
    let done = if hooks.is_empty() {
        let mut t = conn.begin().await.map_err(into_response)?;
        match steps(app, &mut t, &s)
            .await
            .map_err(IntoResponse::into_response)?
        {
            Some(done) => {
                t.commit().await.map_err(into_response)?;
                app.warm.keep(conn);
                relay::nudge();
                done
            }
            None => {
                t.rollback().await.map_err(into_response)?;
                app.warm.keep(conn);
                return replay_committed(app, &s)
                    .await
                    .map_err(IntoResponse::into_response);
            }
        }
    } else {
        // Back to the pool: the transaction takes its own from there.
        drop(conn);
        let mut tx = app.db.begin().await.map_err(into_response)?;
        let TxConn::Postgres(t) = &mut tx.conn else {
            return Err(
                ApiError::internal(anyhow::anyhow!("not a PostgreSQL transaction")).into_response(),
            );
        };
        match steps(app, t, &s)
            .await
            .map_err(IntoResponse::into_response)?
        {
            Some(done) => {
                crate::webhooks::emit_request_to(
                    app, &mut tx, &s.org_id, &s.id, EVENT, now, &hooks,
                )
                .await
                .map_err(|e| ApiError::from(e).into_response())?;
                tx.after_commit("outbox", relay::nudge);
                tx.commit().await.map_err(into_response)?;
                done
            }
            None => {
                tx.rollback().await.map_err(into_response)?;
                return replay_committed(app, &s)
                    .await
                    .map_err(IntoResponse::into_response);
            }
        }
    };
    Ok(accepted(&s, &done.number, done.answer))
}

fn into_response(e: sqlx::Error) -> Response {
    ApiError::from(e).into_response()
}

/// What the read decided: answer at once (a replay, or a refusal), or go
/// on and submit.
enum Checked<'a> {
    Answer(Response),
    Submit(Box<Ready<'a>>),
}

/// A submission that passed every check.
struct Ready<'a> {
    caller: Caller,
    org: Org,
    /// The `Idempotency-Key`, if sent.
    key: Option<String>,
    v: Valid<'a>,
    /// The enabled endpoints that want `request.submitted`.
    hooks: Vec<String>,
}

/// The general path's checks, in its order, on what [`st::read`] saw.
fn check<'a>(
    app: &'a App,
    seen: Seen,
    org_id: &str,
    idem: ApiResult<Option<String>>,
    hash: &str,
    b: Submit,
) -> Checked<'a> {
    let key = seen.key_id.clone().map(|id| keys::ApiKey {
        id,
        scope: seen.key_scope.clone().unwrap_or_default(),
        org_id: seen.key_org_id.clone(),
    });
    let caller = match Caller::from_found(key) {
        Ok(c) => c,
        Err(e) => return Checked::Answer(AuthRejection::from(e).into_response()),
    };
    let rest = || -> ApiResult<Checked<'a>> {
        caller.check_boundary(org_id)?;
        let org = seen_org(&seen, org_id).ok_or_else(|| ApiError::not_found("org"))?;
        let key = idem?;
        // A retry replays the first answer even if what it named has
        // changed since (a requester disabled in between, say).
        if key.is_some()
            && let Some(stored) = seen.stored()
        {
            return replay(stored, hash).map(Checked::Answer);
        }
        let found = seen.m_id.clone().zip(seen.m_status.clone());
        let v = validate_found(app, b, found)?;
        let hooks = match (&seen.hook_ids, &seen.hook_events) {
            (Some(ids), Some(events)) => ids
                .iter()
                .zip(events)
                .filter(|(_, e)| crate::webhooks::wants(e, EVENT))
                .map(|(id, _)| id.clone())
                .collect(),
            _ => Vec::new(),
        };
        Ok(Checked::Submit(Box::new(Ready {
            caller: caller.clone(),
            org,
            key,
            v,
            hooks,
        })))
    };
    rest().unwrap_or_else(|e| Checked::Answer(e.into_response()))
}

fn seen_org(s: &Seen, org_id: &str) -> Option<Org> {
    Some(Org {
        id: org_id.to_string(),
        name: s.org_name.clone()?,
        region: s.org_region.clone()?,
        locale: s.org_locale.clone()?,
        created_at: s.org_created_at?,
        currency: s.org_currency.clone(),
        timezone: s.org_timezone.clone(),
    })
}

/// A written submission.
struct Done {
    number: String,
    answer: String,
}

/// The two statements of the transaction on `conn`. `None`: the key is
/// taken by a concurrent duplicate that committed first; nothing written.
async fn steps(
    app: &App,
    conn: &mut PgConnection,
    s: &flows::submit::Submission,
) -> ApiResult<Option<Done>> {
    let chain = audit::chain_enabled();
    let idem = s
        .idempotency
        .as_ref()
        .map(|(k, h)| (k.as_str(), h.as_str()));
    let r = st::reserve(conn, &s.org_id, idem, s.now, chain, GENESIS).await?;
    if !r.reserved {
        return Ok(None);
    }
    let seq = r.seq.ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!(
            "org {} vanished while submitting",
            s.org_id
        ))
    })?;
    let number = request_number(seq);
    let mut entry = audit::operation_entry(s.audit(&number), crate::audit::request_id());
    if chain {
        let at = r.audit_seq.ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!("no audit head for org {}", s.org_id))
        })?;
        audit::link(&mut entry, at, r.prev_hash)
            .map_err(|m| ApiError::internal(anyhow::anyhow!(m)))?;
    }
    let job = app
        .queue
        .new_job(
            &ReviewJob {
                request_id: s.id.clone(),
            },
            &PushOptions::default(),
        )
        .context("encoding job")?;
    let answer = submitted_answer(s, &number).map_err(anyhow::Error::from)?;
    let event_detail = s.event_detail(&number).to_string();
    st::write(
        conn,
        &st::Submission {
            id: &s.id,
            org_id: &s.org_id,
            number: &number,
            kind: &s.kind,
            requester_id: s.requester_id.as_deref(),
            remark: &s.remark,
            documents: &s.documents,
            params: s.params.as_deref(),
            sla_days: s.sla_days,
            sla_due_at: s.sla_due_at,
            now: s.now,
            event_id: &new_id(),
            actor: &s.actor,
            event_detail: &event_detail,
            audit: &entry,
            job: &job,
            outbox_id: &new_id(),
            outbox_at: app.now_ms(),
            idem: s.idempotency.as_ref().map(|(k, _)| k.as_str()),
            status: i64::from(StatusCode::ACCEPTED.as_u16()),
            answer: &answer,
        },
    )
    .await?;
    Ok(Some(Done { number, answer }))
}
