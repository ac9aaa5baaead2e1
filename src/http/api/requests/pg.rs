//! `POST /v1/orgs/{org}/requests` on PostgreSQL (with the outbox) in two
//! round trips as a rule (issue 17): one statement reads the key, the org,
//! the stored `Idempotency-Key` answer, the requester, the webhook
//! endpoints, and the org's request counter and audit head
//! ([`flows::submit::read_pg`]); this module answers from it or checks the
//! submission, and [`flows::submit::write_pg`] writes it (one statement if
//! nothing it read has moved, else a transaction).
//!
//! Every answer is the general path's (`submit_as`), in the same order:
//! 401/403 (the key), 404 (the org boundary, the org), 400 (the
//! `Idempotency-Key` header), the stored answer or 422 (key reused), 422
//! (the fields, the requester), then 202, or the stored answer / 409 when a
//! concurrent duplicate holds the key.
use axum::{
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use sqlx::PgPool;

use super::{
    Submit, Valid, accepted, body_hash, idempotency_key, replay, replay_committed, requester_ref,
    submission, submitted_answer, validate_found, written,
};
use crate::{
    app::App,
    flows::{self, submit::Written},
    http::{
        ApiError, ApiResult,
        api::{
            auth::{AuthRejection, Caller},
            body::JsonBody,
        },
    },
    store::{keys, orgs::Org, submit_pg::Seen},
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
    let read = flows::submit::read_pg(
        app,
        pool,
        key_hash.as_deref(),
        org_id,
        idem.as_ref().ok().and_then(Option::as_deref),
        requester_ref(&body.value),
    )
    .await
    .map_err(into_response)?;
    let hash = body_hash(&body.bytes);
    let checked = check(app, &read.seen, org_id, idem, &hash, body.value);
    let Ready {
        caller,
        org,
        key,
        v,
        hooks,
    } = match checked {
        Checked::Submit(r) => *r,
        Checked::Answer(resp) => {
            read.answered(app);
            return Ok(resp);
        }
    };
    let s = submission(app, &caller, org, key.map(|k| (k, hash)), v)
        .map_err(IntoResponse::into_response)?;
    let done = flows::submit::write_pg(app, read, &s, &hooks, submitted_answer)
        .await
        .map_err(|e| written(e).into_response())?;
    match done {
        Written::Done { number, answer } => Ok(accepted(&s, &number, answer)),
        Written::KeyTaken => replay_committed(app, &s)
            .await
            .map_err(IntoResponse::into_response),
    }
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
    seen: &Seen,
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
        let org = seen_org(seen, org_id).ok_or_else(|| ApiError::not_found("org"))?;
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
