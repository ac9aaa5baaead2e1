//! Login and operation logs: `POST /v1/orgs/{org}/audit/logins` records a
//! sign-in an upstream app saw; `GET /v1/orgs/{org}/audit` lists both kinds
//! with their place in the org's hash chain; `GET .../audit/verify` checks
//! the chain. Reading either is itself an audited operation.
use std::net::IpAddr;

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::{Caller, body::JsonBody, json_column, page, time};
use crate::{
    app::App,
    audit::Report,
    domain::ids::{Invalid, parse_text},
    http::{
        ApiError, ApiResult,
        extract::{ApiPath, ApiQuery},
    },
    store::{self, audit::AuditRow, orgs::Org},
};

/// Longest `user_agent`, `reason`, `actor` and `action`, in characters.
const MAX_USER_AGENT: usize = 512;
const MAX_REASON: usize = 256;
const MAX_METHOD: usize = 32;

/// A sign-in an upstream app saw.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = LoginRecord)]
pub struct LoginIn {
    /// The member (id or login id).
    #[schema(min_length = 1)]
    member: String,
    /// An IPv4 or IPv6 address.
    #[schema(min_length = 2, max_length = 64)]
    ip: String,
    /// At most 512 characters.
    #[serde(default)]
    #[schema(max_length = 512)]
    user_agent: String,
    /// A lowercase word of at most 32 characters: `password`, `sms`, `wechat`, `sso`, ...
    #[schema(pattern = "^\\s*[a-z][a-z0-9_-]{0,31}\\s*$")]
    method: String,
    success: bool,
    /// Why it failed (failed sign-ins only), at most 256 characters.
    #[serde(default)]
    #[schema(max_length = 256)]
    reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = Recorded)]
pub struct Recorded {
    id: String,
}

/// `method`: a lowercase token such as `password`, `sms`, `wechat`, `sso`
/// (1-32 of `a-z 0-9 _ -`, starting with a letter).
fn parse_method(s: &str) -> Result<String, Invalid> {
    let t = s.trim();
    let ok = (1..=MAX_METHOD).contains(&t.len())
        && t.starts_with(|c: char| c.is_ascii_lowercase())
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(t.to_string())
    } else {
        Err(Invalid::new(
            "method",
            format!(
                "must be a lowercase word of at most {MAX_METHOD} characters such as password, sms, wechat or sso"
            ),
        ))
    }
}

/// Record a sign-in (success or failure) in the org's audit log.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/audit/logins",
    operation_id = "recordLogin",
    tag = "audit",
    params(("org" = String, Path, description = "The org's id")),
    request_body(content = LoginIn, example = json!({"member": "buyer_01", "ip": "203.0.113.7",
        "user_agent": "Mozilla/5.0", "method": "password", "success": false, "reason": "wrong password"})),
    responses((status = 201, description = "Recorded", body = Recorded)),
)]
pub async fn login(
    State(app): State<App>,
    caller: Caller,
    ApiPath(org_id): ApiPath<String>,
    body: JsonBody<LoginIn>,
) -> ApiResult<(StatusCode, Json<Recorded>)> {
    let org = caller.org(&app, &org_id).await?;
    let b = body.value;
    let ip: IpAddr =
        b.ip.trim()
            .parse()
            .map_err(|_| Invalid::new("ip", "must be an IPv4 or IPv6 address"))?;
    let user_agent = parse_text("user_agent", &b.user_agent, MAX_USER_AGENT, false)?;
    let method = parse_method(&b.method)?;
    let reason = b
        .reason
        .as_deref()
        .map(|r| parse_text("reason", r, MAX_REASON, false))
        .transpose()?
        .filter(|r| !r.is_empty());
    if b.success && reason.is_some() {
        return Err(Invalid::new("reason", "is only for failed sign-ins (success: false)").into());
    }
    let m = b.member.trim();
    let member = if m.is_empty() || m.len() > 64 {
        None
    } else {
        store::members::find(&app.db, &org.id, m).await?
    };
    let member = member
        .ok_or_else(|| ApiError::invalid(format!("member: {m:?} is not a member of this org")))?;
    let actor = caller.actor();
    let id = store::audit::login(
        &app.db,
        store::audit::Login {
            org_id: &org.id,
            actor: &actor,
            member_id: &member.id,
            ip: &ip.to_string(),
            user_agent: &user_agent,
            method: &method,
            success: b.success,
            reason: reason.as_deref(),
            at: app.now_ms(),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(Recorded { id })))
}

/// Who may read an org's logs: a platform key, or an org key acting for the
/// org's super admin or an admin (`Approvald-Actor`); a plain member is
/// refused with 403. Returns the actor to record the read under.
async fn reader(app: &App, caller: &Caller, org: &Org, headers: &HeaderMap) -> ApiResult<String> {
    let acting = super::actor::require_actor(app, caller, org, headers).await?;
    super::actor::require_admin(&acting)?;
    Ok(super::actor::audit_actor(caller, &acting))
}

/// Record a read of the logs (in a transaction of its own, before the read:
/// a read that cannot be recorded does not happen).
async fn record_read(
    app: &App,
    org_id: &str,
    actor: &str,
    action: &str,
    detail: Value,
) -> ApiResult<()> {
    let mut tx = app.db.begin().await?;
    store::audit::operation(
        &mut tx,
        store::audit::Operation {
            org_id,
            actor,
            action,
            target: Some(org_id),
            detail,
            at: app.now_ms(),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `login` or `operation` (empty: both).
    #[serde(default, rename = "type")]
    #[param(pattern = "^(|login|operation)$")]
    kind: Option<String>,
    /// Entries by this actor (`key:<id>`, `member:<id>`), at most 128 characters.
    #[serde(default)]
    #[param(max_length = 128)]
    actor: Option<String>,
    /// Entries of this action (`member.create`, ...), at most 64 characters.
    #[serde(default)]
    #[param(max_length = 64)]
    action: Option<String>,
    /// RFC 3339, inclusive.
    #[serde(default)]
    from: Option<String>,
    /// RFC 3339, exclusive.
    #[serde(default)]
    to: Option<String>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    #[param(max_length = 200)]
    cursor: Option<String>,
    /// 1-100, default 20.
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// A login or operation entry of an org's hash chain.
#[derive(Serialize, ToSchema)]
#[schema(as = AuditEntry)]
pub struct AuditOut {
    seq: Option<i64>,
    hash: Option<String>,
    prev_hash: Option<String>,
    id: String,
    #[serde(rename = "type")]
    #[schema(value_type = String, pattern = "^(login|operation)$")]
    kind: String,
    at: String,
    actor: Option<String>,
    action: String,
    target: Option<String>,
    #[schema(value_type = Object)]
    detail: Value,
    request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    success: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl From<AuditRow> for AuditOut {
    fn from(r: AuditRow) -> Self {
        Self {
            seq: r.seq,
            hash: r.hash,
            prev_hash: r.prev_hash,
            id: r.id,
            kind: r.kind,
            at: time(r.at),
            actor: r.actor,
            action: r.action,
            target: r.target,
            detail: json_column(&r.detail),
            request_id: r.request_id,
            ip: r.ip,
            user_agent: r.user_agent,
            method: r.method,
            success: r.success,
            reason: r.reason,
        }
    }
}

/// A filter value: trimmed, non-empty, at most `max` characters, no control
/// characters; 400 naming the parameter otherwise.
fn filter_text(name: &'static str, v: Option<&str>, max: usize) -> ApiResult<Option<String>> {
    let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{name}: must be at most {max} characters without control characters"
        )));
    }
    Ok(Some(v.to_string()))
}

/// An RFC 3339 instant as milliseconds; 400 naming the parameter otherwise.
fn filter_time(name: &'static str, v: Option<&str>) -> ApiResult<Option<i64>> {
    let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| {
            ApiError::bad_request(format!(
                "{name}: {v:?} is not an RFC 3339 time such as 2026-03-01T00:00:00Z"
            ))
        })
}

/// Newest (highest `seq`) first. `from` is inclusive, `to` exclusive.
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/audit",
    operation_id = "listAudit",
    tag = "audit",
    params(("org" = String, Path, description = "The org's id"), super::openapi::ActorHeader, ListQuery),
    responses((status = 200, description = "One page, newest first (the read is itself audited)", body = page::Page<AuditOut>)),
)]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(org_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<page::Page<AuditOut>>> {
    let org = caller.org(&app, &org_id).await?;
    let actor = reader(&app, &caller, &org, &headers).await?;
    let kind = match q.kind.as_deref().filter(|k| !k.is_empty()) {
        None => None,
        Some(k @ ("login" | "operation")) => Some(k),
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "type: {k:?}: use login or operation"
            )));
        }
    };
    let by = filter_text("actor", q.actor.as_deref(), 128)?;
    let action = filter_text("action", q.action.as_deref(), 64)?;
    let from = filter_time("from", q.from.as_deref())?;
    let to = filter_time("to", q.to.as_deref())?;
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(ApiError::bad_request("from: must not be later than to"));
    }
    let limit = page::limit(q.limit)?;
    let before = q.cursor.as_deref().map(page::decode).transpose()?;
    record_read(
        &app,
        &org.id,
        &actor,
        "audit.list",
        json!({"type": kind, "actor": by, "action": action, "from": q.from, "to": q.to,
               "cursor": before.as_ref().map(|b| b.0)}),
    )
    .await?;
    let filter = store::audit::Filter {
        kind,
        actor: by.as_deref(),
        action: action.as_deref(),
        from,
        to,
        before_seq: before.as_ref().map(|b| b.0),
    };
    let rows = store::audit::list(&app.db, &org.id, &filter, limit + 1).await?;
    Ok(Json(page::paginate(
        rows,
        limit,
        |r| (r.seq.unwrap_or_default(), r.id.clone()),
        AuditOut::from,
    )))
}

/// `N/N entries valid`, or the first `seq` that was changed, removed,
/// inserted or reordered.
/// Verify the org's hash chain.
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/audit/verify",
    operation_id = "verifyAudit",
    tag = "audit",
    params(("org" = String, Path, description = "The org's id"), super::openapi::ActorHeader),
    responses((status = 200, description = "The chain's report (the read is itself audited)", body = Report,
        example = json!({"org_id": "0194f3b2-7c1e-7d4e-9a5b-1c2d3e4f5a6b", "entries": 12, "valid": 12, "ok": true, "summary": "12/12 entries valid"}))),
)]
pub async fn verify(
    State(app): State<App>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(org_id): ApiPath<String>,
) -> ApiResult<Json<Report>> {
    let org = caller.org(&app, &org_id).await?;
    let actor = reader(&app, &caller, &org, &headers).await?;
    let report = store::audit::verify(&app.db, &org.id).await?;
    // Recorded after the check: a chain tampered with so badly that nothing
    // can be appended (say, rows renumbered over the head) must still be
    // reported; that failure is logged instead.
    let detail = json!({"ok": report.ok, "summary": report.summary});
    if let Err(e) = record_read(&app, &org.id, &actor, "audit.verify", detail).await {
        tracing::error!(org_id = %org.id, error = ?e.source, detail = %e.detail, "could not record an audit verification");
    }
    Ok(Json(report))
}
