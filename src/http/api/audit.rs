//! Login and operation logs: `POST /v1/orgs/{org}/audit/logins` records a
//! sign-in an upstream app saw; `GET /v1/orgs/{org}/audit` lists both kinds.
use std::net::IpAddr;

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Caller, body::JsonBody, json_column, page, time};
use crate::{
    app::App,
    domain::ids::{Invalid, parse_text},
    http::{
        ApiError, ApiResult,
        extract::{ApiPath, ApiQuery},
    },
    store::{self, audit::AuditRow},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginIn {
    member: String,
    ip: String,
    #[serde(default)]
    user_agent: String,
    success: bool,
}

#[derive(Serialize)]
pub struct Recorded {
    id: String,
}

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
    let user_agent = parse_text("user_agent", &b.user_agent, 512, false)?;
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
            success: b.success,
            at: app.now_ms(),
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(Recorded { id })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

#[derive(Serialize)]
pub struct AuditOut {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    at: String,
    actor: Option<String>,
    action: String,
    target: Option<String>,
    detail: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    success: Option<bool>,
}

impl From<AuditRow> for AuditOut {
    fn from(r: AuditRow) -> Self {
        Self {
            id: r.id,
            kind: r.kind,
            at: time(r.at),
            actor: r.actor,
            action: r.action,
            target: r.target,
            detail: json_column(&r.detail),
            ip: r.ip,
            user_agent: r.user_agent,
            success: r.success,
        }
    }
}

/// Newest first.
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiPath(org_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<page::Page<AuditOut>>> {
    let org = caller.org(&app, &org_id).await?;
    let kind = match q.kind.as_deref().filter(|k| !k.is_empty()) {
        None => None,
        Some(k @ ("login" | "operation")) => Some(k),
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "type: {k:?}: use login or operation"
            )));
        }
    };
    let limit = page::limit(q.limit)?;
    let before = q.cursor.as_deref().map(page::decode).transpose()?;
    let rows = store::audit::list(
        &app.db,
        &org.id,
        kind,
        before.as_ref().map(|(a, i)| (*a, i.as_str())),
        limit + 1,
    )
    .await?;
    Ok(Json(page::paginate(
        rows,
        limit,
        |r| (r.at, r.id.clone()),
        AuditOut::from,
    )))
}
