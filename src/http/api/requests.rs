//! Permission requests: submit (one transaction with its review job,
//! `Idempotency-Key` replay), history list, one request with its events, cancel.
use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use super::{Caller, auth::Token, body::JsonBody, json_column, new_id, opt_time, page, time};
use crate::{
    app::App,
    db::Db,
    domain::{
        calendar::Region,
        catalog::{PermissionKind, Scope},
        ids::{Invalid, parse_text},
        request::RequestStatus,
    },
    flows::{
        self,
        requests::{CancelBy, CancelError},
    },
    http::{
        ApiError, ApiResult,
        extract::{ApiPath, ApiQuery},
    },
    store::{self, idempotency, orgs::Org, requests::Request},
};

mod pg;

pub const MAX_REMARK: usize = 2000;
pub const MAX_DOCUMENTS: usize = 10;
pub const MAX_URL: usize = 2000;
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SubmitRequest)]
pub struct Submit {
    /// A permission kind of the catalog (`GET /v1/catalog`).
    #[schema(example = "ftp_access")]
    kind: String,
    /// The requesting member (id or login id, an active member); required
    /// for kinds granted per member.
    #[serde(default)]
    #[schema(max_length = 64)]
    requester: Option<String>,
    /// Why: 1-2000 characters (surrounding spaces trimmed); newlines and tabs
    /// allowed, other control characters not.
    #[schema(min_length = 1, max_length = 2000)]
    remark: String,
    /// At most 10.
    #[serde(default, deserialize_with = "super::body::option_objects")]
    #[schema(max_items = 10)]
    documents: Option<Vec<Document>>,
    /// Kind-specific parameters, e.g. the limits a `payment_permission`
    /// request asks for; at most 4096 bytes of JSON.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    params: Option<serde_json::Map<String, Value>>,
}

/// An attached document: a link the reviewer opens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// 1-64 letters, digits, `_` or `-`, e.g. `liquor_licence`.
    #[serde(rename = "type")]
    #[schema(pattern = "^\\s*[A-Za-z0-9_-]{1,64}\\s*$")]
    pub kind: String,
    /// 1-200 characters on one line.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// An `https://` URL with a host, no credentials, spaces or control
    /// characters, at most 2000 characters.
    #[schema(max_length = 2000, pattern = "^\\s*[Hh][Tt][Tt][Pp][Ss]://")]
    pub url: String,
}

/// Check and tidy the documents: at most 10; `type` a word such as
/// `liquor_licence`; `name` 1-200 characters on one line; `url` an https
/// URL of at most 2000 characters with a host and no credentials, spaces or
/// control characters.
pub fn parse_documents(docs: Vec<Document>) -> Result<Vec<Document>, Invalid> {
    if docs.len() > MAX_DOCUMENTS {
        return Err(Invalid::new(
            "documents",
            format!("at most {MAX_DOCUMENTS} documents, got {}", docs.len()),
        ));
    }
    docs.into_iter()
        .map(|d| {
            let kind = d.kind.trim();
            if kind.is_empty()
                || kind.len() > 64
                || !kind
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(Invalid::new(
                    "documents[].type",
                    "must be 1-64 letters, digits, _ or -",
                ));
            }
            let name = d.name.trim();
            let n = name.chars().count();
            if n == 0 || n > 200 || name.chars().any(char::is_control) {
                return Err(Invalid::new(
                    "documents[].name",
                    "must be 1-200 characters on one line",
                ));
            }
            Ok(Document {
                kind: kind.to_string(),
                name: name.to_string(),
                url: parse_https_url(d.url.trim())?,
            })
        })
        .collect()
}

/// An absolute `https://` URL with a host; no credentials, whitespace or
/// control characters; at most [`MAX_URL`] characters.
pub fn parse_https_url(url: &str) -> Result<String, Invalid> {
    let bad = |why: &str| Err(Invalid::new("documents[].url", why.to_string()));
    if url.len() > MAX_URL {
        return bad("must be at most 2000 characters");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("must not contain spaces or control characters");
    }
    let Some(rest) = url
        .get(..8)
        .filter(|s| s.eq_ignore_ascii_case("https://"))
        .map(|_| &url[8..])
    else {
        return bad("must be an https:// URL");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return bad("must not carry credentials");
    }
    let host = authority.rsplit_once(':').map_or(authority, |(h, port)| {
        if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            authority
        }
    });
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
    {
        return bad("must name a host, as in https://files.example.com/licence.pdf");
    }
    Ok(url.to_string())
}

/// The `Idempotency-Key` header, if sent: 1-255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(format!(
            "Idempotency-Key: must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        ))
    };
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > MAX_IDEMPOTENCY_KEY || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(s.to_string()))
}

/// JSON with object keys sorted at every level: the same logical body always
/// gives the same text, whatever order the client wrote its fields in.
pub fn canonical_json(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&m[k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// SHA-256 hex of the body's canonical JSON.
pub fn body_hash(bytes: &[u8]) -> String {
    let canon = serde_json::from_slice::<Value>(bytes)
        .map(|v| canonical_json(&v))
        .unwrap_or_default();
    hex::encode(Sha256::digest(canon.as_bytes()))
}

/// The answer to a submission.
#[derive(Serialize, ToSchema)]
#[schema(as = SubmittedRequest)]
struct Submitted<'a> {
    id: &'a str,
    /// The request number the org sees, e.g. `R000001`.
    number: &'a str,
    #[schema(value_type = String, pattern = "^submitted$")]
    status: &'static str,
    kind: &'a str,
    sla_due_at: String,
    created_at: String,
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut resp = (status, Body::from(body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The stored first answer, or 422 when the key came with another body.
fn replay(stored: idempotency::Stored, hash: &str) -> ApiResult<Response> {
    if stored.body_hash != hash {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused",
            "this Idempotency-Key was already used with a different body; use a new key for a new request",
        ));
    }
    let status = u16::try_from(stored.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::ACCEPTED);
    let mut resp = json_response(status, stored.response);
    resp.headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(resp)
}

/// Everything a submission needs, checked before the transaction opens.
struct Valid<'a> {
    kind: &'a PermissionKind,
    requester_id: Option<String>,
    remark: String,
    documents: String,
    params: Option<String>,
}

/// Largest `params` object, as JSON text.
pub const MAX_PARAMS: usize = 4096;

async fn validate<'a>(app: &'a App, org: &Org, b: Submit) -> ApiResult<Valid<'a>> {
    let found = match requester_ref(&b) {
        Some(r) => store::members::find_status(&app.db, app.inline.as_ref(), &org.id, r).await?,
        None => None,
    };
    validate_found(app, b, found)
}

/// The requester reference worth looking up: the body's `requester`,
/// trimmed, if it is 1-64 bytes (anything else names no member).
fn requester_ref(b: &Submit) -> Option<&str> {
    b.requester
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty() && r.len() <= 64)
}

/// [`validate`] with the requester already looked up: `found` is the
/// `(id, status)` of the member [`requester_ref`] names, if any.
fn validate_found(app: &App, b: Submit, found: Option<(String, String)>) -> ApiResult<Valid<'_>> {
    let kind = app.catalog.kind(&b.kind).ok_or_else(|| {
        ApiError::invalid(format!(
            "kind: {:?} is not in the catalog (GET /v1/catalog lists the kinds)",
            b.kind
        ))
    })?;
    let remark = parse_text("remark", &b.remark, MAX_REMARK, true)?;
    let documents = parse_documents(b.documents.unwrap_or_default())?;
    let requester_id = match b.requester.as_deref() {
        None => None,
        Some(r) => {
            let r = r.trim();
            match found {
                Some((id, status)) if status == store::members::ACTIVE => Some(id),
                _ => {
                    return Err(ApiError::invalid(format!(
                        "requester: {r:?} is not an active member of this org"
                    )));
                }
            }
        }
    };
    if kind.scope == Scope::Member && requester_id.is_none() {
        return Err(ApiError::invalid(format!(
            "requester: {:?} is granted to a member; name the requesting member",
            kind.key
        )));
    }
    let documents = serde_json::to_string(&documents).map_err(anyhow::Error::from)?;
    let params = match b.params.filter(|p| !p.is_empty()) {
        None => None,
        Some(p) => {
            if kind.key == crate::flows::payments::PAYMENT_PERMISSION {
                crate::domain::spending::limits_from_params(&p)?;
            }
            let text = Value::Object(p).to_string();
            if text.len() > MAX_PARAMS {
                return Err(ApiError::invalid(format!(
                    "params: at most {MAX_PARAMS} bytes of JSON"
                )));
            }
            Some(text)
        }
    };
    Ok(Valid {
        kind,
        requester_id,
        remark,
        documents,
        params,
    })
}

/// Submit a permission request: `202` with its number and SLA due time; the
/// review job runs next.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/requests",
    operation_id = "submitRequest",
    tag = "requests",
    params(("org" = String, Path, description = "The org's id"), super::openapi::IdempotencyHeader),
    request_body(content = Submit, example = json!({"kind": "ftp_access", "remark": "We sync stock every night over FTP"})),
    responses(
        (status = 202, description = "Accepted (or the first answer again, replayed for the same `Idempotency-Key`)",
            body = Submitted,
            headers(("idempotent-replayed" = String, description = "`true` when this is the stored first answer")),
            links(("GetRequest" = (operation_id = "getRequest", parameters(("org" = "$request.path.org"), ("id" = "$response.body#/id")))),
                  ("CancelRequest" = (operation_id = "cancelRequest", parameters(("org" = "$request.path.org"), ("id" = "$response.body#/id"))))),
            example = json!({"id": "0194f3b2-7c1e-7d4e-9a5b-1c2d3e4f5a6b", "number": "R000001", "status": "submitted",
                "kind": "ftp_access", "sla_due_at": "2026-02-16T02:00:00.000Z", "created_at": "2026-02-13T02:00:00.000Z"})),
        (status = 409, description = "A request with this `Idempotency-Key` is in progress; retry", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn submit(
    State(app): State<App>,
    token: Token,
    path: Result<ApiPath<String>, ApiError>,
    headers: HeaderMap,
    body: Result<JsonBody<Submit>, ApiError>,
) -> Result<Response, Response> {
    // What a bad call is told, and in which order, is what the `Caller`
    // extractor made it: the key (401, 403), then the path and the body.
    let (org_id, body) = match (path, body) {
        (Ok(ApiPath(org_id)), Ok(body)) => (org_id, body),
        (Err(e), _) | (Ok(_), Err(e)) => {
            Caller::authenticate(&app, &token.0)
                .await
                .map_err(IntoResponse::into_response)?;
            return Err(e.into_response());
        }
    };
    // PostgreSQL with the outbox: the key is read with everything else the
    // submit reads, in few round trips (see `pg`).
    if let (Db::Postgres(pool), false) = (&app.db, app.queue_in_db) {
        return pg::submit(&app, pool, &token.0, &org_id, &headers, body).await;
    }
    let caller = Caller::authenticate(&app, &token.0)
        .await
        .map_err(IntoResponse::into_response)?;
    submit_as(app, caller, org_id, headers, body)
        .await
        .map_err(IntoResponse::into_response)
}

/// The SLA due time of a `kind` request of `org` submitted at `now`, in
/// the org's region's calendar.
fn due_at(app: &App, org: &Org, kind: &PermissionKind, now: DateTime<Utc>) -> ApiResult<i64> {
    let calendar = Region::parse(&org.region)
        .ok()
        .and_then(|r| app.calendars.get(&r))
        .ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!(
                "org {} has region {:?}, which has no calendar",
                org.id,
                org.region
            ))
        })?;
    Ok(calendar
        .due(now, kind.sla_days)
        .map_err(|e| {
            ApiError::internal(anyhow::anyhow!(
                "computing the SLA due time in {}: {e}",
                org.region
            ))
        })?
        .timestamp_millis())
}

/// What `caller` submits for `org`, checked (`v`), with its SLA due time
/// from now in the org's calendar: what either write path writes.
fn submission(
    app: &App,
    caller: &Caller,
    org: Org,
    idempotency: Option<(String, String)>,
    v: Valid<'_>,
) -> ApiResult<flows::submit::Submission> {
    let now_dt = app.clock.now();
    let sla_due_at = due_at(app, &org, v.kind, now_dt)?;
    Ok(flows::submit::Submission {
        org_id: org.id,
        actor: caller.actor(),
        id: new_id(),
        kind: v.kind.key.clone(),
        requester_id: v.requester_id,
        remark: v.remark,
        documents: v.documents,
        params: v.params,
        sla_days: i64::from(v.kind.sla_days),
        sla_due_at,
        now: now_dt.timestamp_millis(),
        idempotency,
    })
}

/// The submit of an authenticated `caller`, on either engine.
async fn submit_as(
    app: App,
    caller: Caller,
    org_id: String,
    headers: HeaderMap,
    body: JsonBody<Submit>,
) -> ApiResult<Response> {
    let org = caller.org(&app, &org_id).await?;
    let key = idempotency_key(&headers)?;
    let hash = body_hash(&body.bytes);
    // A retry replays the first answer even if what it named has changed
    // since (a requester disabled in between, say).
    if let Some(k) = &key
        && let Some(stored) =
            idempotency::get_fast(&app.db, app.inline.as_ref(), &org.id, k).await?
    {
        return replay(stored, &hash);
    }
    let v = validate(&app, &org, body.value).await?;

    let s = submission(&app, &caller, org, key.map(|k| (k, hash)), v)?;
    match flows::submit::write(&app, &s, submitted_answer)
        .await
        .map_err(written)?
    {
        flows::submit::Written::Done { number, answer } => Ok(accepted(&s, &number, answer)),
        // A concurrent duplicate committed first: answer what it answered.
        flows::submit::Written::KeyTaken => replay_committed(&app, &s).await,
    }
}

/// The answer to a write that failed.
fn written(e: flows::submit::SubmitError) -> ApiError {
    match e {
        flows::submit::SubmitError::Db(e) => e.into(),
        flows::submit::SubmitError::Other(e) => e.into(),
    }
}

/// The answer of the submission that holds `s`'s Idempotency-Key (it
/// committed first), or 409 while it is in progress.
async fn replay_committed(app: &App, s: &flows::submit::Submission) -> ApiResult<Response> {
    let Some((k, hash)) = &s.idempotency else {
        return Err(ApiError::internal(anyhow::anyhow!(
            "an Idempotency-Key conflict without a key"
        )));
    };
    match idempotency::get(&app.db, &s.org_id, k).await? {
        Some(stored) => replay(stored, hash),
        None => Err(ApiError::conflict(
            "a request with this Idempotency-Key is in progress; retry",
        )),
    }
}

/// The 202 of a committed submission, counted and logged.
fn accepted(s: &flows::submit::Submission, number: &str, answer: String) -> Response {
    metrics::counter!("approvald_requests_submitted_total", "kind" => s.kind.clone()).increment(1);
    tracing::info!(request_id = %s.id, number = %number, kind = %s.kind, org_id = %s.org_id, "request submitted");
    json_response(StatusCode::ACCEPTED, answer)
}

/// The body of the 202 (stored for replays) of submission `s`, numbered
/// `number`.
fn submitted_answer(
    s: &flows::submit::Submission,
    number: &str,
) -> Result<String, serde_json::Error> {
    serde_json::to_string(&Submitted {
        id: &s.id,
        number,
        status: RequestStatus::Submitted.as_str(),
        kind: &s.kind,
        sla_due_at: time(s.sla_due_at),
        created_at: time(s.now),
    })
}

#[derive(Serialize, ToSchema)]
#[schema(as = RequestSummary)]
pub struct Summary {
    id: String,
    number: String,
    kind: String,
    #[schema(value_type = RequestStatus)]
    status: String,
    requester_id: Option<String>,
    remark: String,
    sla_due_at: String,
    decided_at: Option<String>,
    created_at: String,
    updated_at: String,
}

impl From<Request> for Summary {
    fn from(r: Request) -> Self {
        Self {
            id: r.id,
            number: r.number,
            kind: r.kind,
            status: r.status,
            requester_id: r.requester_id,
            remark: r.remark,
            sla_due_at: time(r.sla_due_at),
            decided_at: opt_time(r.decided_at),
            created_at: time(r.created_at),
            updated_at: time(r.updated_at),
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only requests in this status (empty: any).
    #[serde(default)]
    #[param(pattern = "^(|submitted|in_review|approved|rejected|cancelled)$")]
    status: Option<String>,
    /// Only requests of this catalog kind (empty: any).
    #[serde(default)]
    kind: Option<String>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    #[param(max_length = 200)]
    cursor: Option<String>,
    /// 1-100, default 20.
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// The org's history, newest first.
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/requests",
    operation_id = "listRequests",
    tag = "requests",
    params(("org" = String, Path, description = "The org's id"), ListQuery),
    responses((status = 200, description = "One page", body = page::Page<Summary>)),
)]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiPath(org_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<page::Page<Summary>>> {
    let org = caller.org(&app, &org_id).await?;
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(RequestStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status: {s:?}: use submitted, in_review, approved, rejected or cancelled"
            ))
        })?),
    };
    let kind = q.kind.as_deref().filter(|s| !s.is_empty());
    if let Some(k) = kind
        && app.catalog.kind(k).is_none()
    {
        return Err(ApiError::bad_request(format!(
            "kind: {k:?} is not in the catalog"
        )));
    }
    let limit = page::limit(q.limit)?;
    let before = q.cursor.as_deref().map(page::decode).transpose()?;
    let filter = store::requests::Filter {
        status: status.map(RequestStatus::as_str),
        kind,
        before: before.as_ref().map(|(a, i)| (*a, i.as_str())),
    };
    let rows = store::requests::list(&app.db, &org.id, &filter, limit + 1).await?;
    Ok(Json(page::paginate(
        rows,
        limit,
        |r| (r.created_at, r.id.clone()),
        Summary::from,
    )))
}

/// One step of a request's history.
#[derive(Serialize, ToSchema)]
#[schema(as = RequestEvent)]
pub struct EventOut {
    /// `submitted`, `in_review`, `approved`, `cancelled`, `reminded`, ...
    #[serde(rename = "type")]
    kind: String,
    at: String,
    /// `key:<id>`, `member:<id>`, `reviewer:<id>` or `system`.
    actor: Option<String>,
    #[schema(value_type = Object)]
    detail: Value,
}

/// A request with its whole history.
#[derive(Serialize, ToSchema)]
#[schema(as = Request)]
pub struct Detail {
    id: String,
    number: String,
    kind: String,
    #[schema(value_type = RequestStatus)]
    status: String,
    requester_id: Option<String>,
    remark: String,
    #[schema(value_type = Vec<Document>)]
    documents: Value,
    sla_days: i64,
    sla_due_at: String,
    reminder_at: Option<String>,
    breached_at: Option<String>,
    extended_at: Option<String>,
    extension_reason: Option<String>,
    decided_by: Option<String>,
    decided_at: Option<String>,
    decision_comment: Option<String>,
    created_at: String,
    updated_at: String,
    events: Vec<EventOut>,
}

async fn detail(app: &App, r: Request) -> ApiResult<Detail> {
    let events = store::requests::events(&app.db, &r.id).await?;
    Ok(detail_from(r, events))
}

/// The request as `GET .../requests/{id}` returns it, read inside `tx` (the
/// payload of the `request.*` webhook events); `None` if it does not exist.
pub async fn detail_value_tx(
    tx: &mut crate::db::Tx,
    org_id: &str,
    id: &str,
) -> anyhow::Result<Option<Value>> {
    let Some(r) = store::requests::get_tx(tx, org_id, id).await? else {
        return Ok(None);
    };
    let events = store::requests::events_tx(tx, id).await?;
    Ok(Some(serde_json::to_value(detail_from(r, events))?))
}

fn detail_from(r: Request, events: Vec<store::requests::Event>) -> Detail {
    let events = events
        .into_iter()
        .map(|e| EventOut {
            kind: e.kind,
            at: time(e.at),
            actor: e.actor,
            detail: json_column(&e.detail),
        })
        .collect();
    Detail {
        id: r.id,
        number: r.number,
        kind: r.kind,
        status: r.status,
        requester_id: r.requester_id,
        remark: r.remark,
        documents: serde_json::from_str(&r.documents).unwrap_or_else(|_| json!([])),
        sla_days: r.sla_days,
        sla_due_at: time(r.sla_due_at),
        reminder_at: opt_time(r.reminder_at),
        breached_at: opt_time(r.breached_at),
        extended_at: opt_time(r.extended_at),
        extension_reason: r.extension_reason,
        decided_by: r.decided_by,
        decided_at: opt_time(r.decided_at),
        decision_comment: r.decision_comment,
        created_at: time(r.created_at),
        updated_at: time(r.updated_at),
        events,
    }
}

#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/requests/{id}",
    operation_id = "getRequest",
    tag = "requests",
    params(("org" = String, Path, description = "The org's id"), ("id" = String, Path, description = "The request's id")),
    responses((status = 200, description = "The request and its events", body = Detail)),
)]
pub async fn get(
    State(app): State<App>,
    caller: Caller,
    ApiPath((org_id, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<Detail>> {
    let org = caller.org(&app, &org_id).await?;
    let r = store::requests::get(&app.db, &org.id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("request"))?;
    Ok(Json(detail(&app, r).await?))
}

/// Cancel a request still `submitted` or `in_review`; its review links stop
/// working at once. 409 (naming the status) once it is decided or cancelled.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/requests/{id}/cancel",
    operation_id = "cancelRequest",
    tag = "requests",
    params(("org" = String, Path, description = "The org's id"), ("id" = String, Path, description = "The request's id")),
    responses(
        (status = 200, description = "Cancelled", body = Detail),
        (status = 409, description = "Already decided or cancelled", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn cancel(
    State(app): State<App>,
    caller: Caller,
    ApiPath((org_id, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<Detail>> {
    let org = caller.org(&app, &org_id).await?;
    let now = app.now_ms();
    let actor = caller.actor();
    let by = CancelBy {
        actor: &actor,
        via: "api",
        reason: "",
        cleanup_id: None,
    };
    let mut tx = app.db.begin().await?;
    match flows::requests::cancel(&app, &mut tx, Some(&org.id), &id, &by, now).await? {
        Ok(_) => {}
        Err(CancelError::NotFound) => return Err(ApiError::not_found("request")),
        Err(e @ CancelError::NotOpen { .. }) => return Err(ApiError::conflict(e.to_string())),
    }
    tx.commit().await?;
    let r = store::requests::get(&app.db, &org.id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("request"))?;
    Ok(Json(detail(&app, r).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(url: &str) -> Document {
        Document {
            kind: "liquor_licence".into(),
            name: "licence.pdf".into(),
            url: url.into(),
        }
    }

    #[test]
    fn urls() {
        for ok in [
            "https://files.example.com/a.pdf",
            "HTTPS://x.example/a?b=c#d",
            "https://example.com:8443/x",
            "https://[::1]/x",
            "https://例え.jp/x",
        ] {
            assert!(parse_https_url(ok).is_ok(), "{ok}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL));
        for bad in [
            "http://example.com/a",
            "ftp://example.com/a",
            "https://",
            "https:///path",
            "https://user:pw@example.com/",
            "https://exa mple.com/",
            "https://example.com/\u{0}",
            "javascript:alert(1)",
            "https://<script>/",
            long.as_str(),
        ] {
            assert!(parse_https_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn documents() {
        assert_eq!(
            parse_documents(vec![doc(" https://a.example/x ")]).unwrap()[0].url,
            "https://a.example/x"
        );
        assert!(parse_documents(vec![doc("https://a.example/x"); MAX_DOCUMENTS]).is_ok());
        assert!(parse_documents(vec![doc("https://a.example/x"); MAX_DOCUMENTS + 1]).is_err());
        let mut d = doc("https://a.example/x");
        d.kind = "bad type".into();
        assert!(parse_documents(vec![d]).is_err());
        let mut d = doc("https://a.example/x");
        d.name = "two\nlines".into();
        assert!(parse_documents(vec![d]).is_err());
    }

    #[test]
    fn idempotency_keys() {
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h).unwrap(), None);
        h.insert("idempotency-key", HeaderValue::from_static("order-42"));
        assert_eq!(idempotency_key(&h).unwrap().as_deref(), Some("order-42"));
        for bad in ["", "has space", &"k".repeat(MAX_IDEMPOTENCY_KEY + 1)] {
            h.insert("idempotency-key", HeaderValue::from_str(bad).unwrap());
            assert!(idempotency_key(&h).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn body_hash_ignores_key_order_and_spacing_only() {
        let a = body_hash(br#"{"kind":"ftp_access","remark":"x","documents":[{"type":"a","name":"b","url":"c"}]}"#);
        let b = body_hash(br#"{ "remark": "x", "documents": [ {"url":"c","name":"b","type":"a"} ], "kind": "ftp_access" }"#);
        let c = body_hash(br#"{"kind":"ftp_access","remark":"y"}"#);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            canonical_json(&json!({"b": [1, {"d": "\"", "c": null}], "a": true})),
            r#"{"a":true,"b":[1,{"c":null,"d":"\""}]}"#
        );
    }
}
