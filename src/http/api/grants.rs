//! Grants: what the org holds; revoke = "close a permission no longer needed".
use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::{Caller, opt_time, time};
use crate::{
    app::App,
    domain::catalog::Scope,
    http::{
        ApiError, ApiResult,
        extract::{ApiPath, ApiQuery},
    },
    store::{self, audit, grants::Grant},
};

#[derive(Serialize, ToSchema)]
#[schema(as = Grant)]
pub struct GrantOut {
    id: String,
    kind: String,
    /// The member it is for; null for the whole org.
    member_id: Option<String>,
    #[schema(value_type = String, pattern = "^(active|revoked)$")]
    status: String,
    request_id: Option<String>,
    granted_at: String,
    revoked_at: Option<String>,
}

impl From<Grant> for GrantOut {
    fn from(g: Grant) -> Self {
        Self {
            id: g.id,
            kind: g.kind,
            member_id: Some(g.member_id).filter(|m| !m.is_empty()),
            status: g.status,
            request_id: g.request_id,
            granted_at: time(g.granted_at),
            revoked_at: opt_time(g.revoked_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct GrantList {
    items: Vec<GrantOut>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `true` includes revoked grants.
    #[serde(default)]
    all: Option<bool>,
}

/// Active grants; `?all=true` includes revoked ones.
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/grants",
    operation_id = "listGrants",
    tag = "grants",
    params(("org" = String, Path, description = "The org's id"), ListQuery),
    responses((status = 200, description = "The org's grants", body = GrantList)),
)]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiPath(org_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<GrantList>> {
    let org = caller.org(&app, &org_id).await?;
    let rows = store::grants::list(&app.db, &org.id, q.all.unwrap_or(false)).await?;
    Ok(Json(GrantList {
        items: rows.into_iter().map(GrantOut::from).collect(),
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RevokeQuery {
    /// For a member-scoped kind: the member (id or login id).
    #[serde(default)]
    member: Option<String>,
}

/// Revoke a grant (a kind the org, or with `?member=` a member, holds).
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/grants/{kind}/revoke",
    operation_id = "revokeGrant",
    tag = "grants",
    params(("org" = String, Path, description = "The org's id"), ("kind" = String, Path, description = "A permission kind"), RevokeQuery),
    responses(
        (status = 200, description = "Revoked", body = GrantOut),
        (status = 409, description = "Already revoked", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn revoke(
    State(app): State<App>,
    caller: Caller,
    ApiPath((org_id, kind)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<RevokeQuery>,
) -> ApiResult<Json<GrantOut>> {
    let org = caller.org(&app, &org_id).await?;
    let member_scoped = app
        .catalog
        .kind(&kind)
        .is_some_and(|k| k.scope == Scope::Member);
    let member_id = match q.member.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
        Some(m) => {
            let found = if m.len() > 64 {
                None
            } else {
                store::members::find(&app.db, &org.id, m).await?
            };
            found.ok_or_else(|| ApiError::not_found("member"))?.id
        }
        None if member_scoped => {
            return Err(ApiError::bad_request(format!(
                "{kind:?} is granted per member; name one with ?member="
            )));
        }
        None => String::new(),
    };
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    let g = store::grants::get_tx(&mut tx, &org.id, &kind, &member_id)
        .await?
        .ok_or_else(|| ApiError::not_found("grant"))?;
    if !store::grants::revoke(&mut tx, &g.id, now).await? {
        return Err(ApiError::conflict(format!(
            "the {kind:?} grant is already revoked"
        )));
    }
    let actor = caller.actor();
    if kind == crate::flows::payments::PAYMENT_PERMISSION && !member_id.is_empty() {
        // The member-level limits the grant brought end with it.
        if let Some(before) =
            crate::flows::payments::end_member_permission(&mut tx, &org.id, &member_id, now).await?
        {
            audit::operation(
                &mut tx,
                audit::Operation {
                    org_id: &org.id,
                    actor: &actor,
                    action: "payment.limits_ended",
                    target: Some(&member_id),
                    detail: json!({ "before": before, "after": null }),
                    at: now,
                },
            )
            .await?;
        }
    }
    if let Some(request_id) = &g.request_id {
        store::requests::add_event(
            &mut tx,
            request_id,
            "grant_revoked",
            Some(&actor),
            &json!({ "grant": g.id }),
            now,
        )
        .await?;
    }
    audit::operation(
        &mut tx,
        audit::Operation {
            org_id: &org.id,
            actor: &actor,
            action: "grant.revoke",
            target: Some(&g.id),
            detail: json!({ "kind": kind, "member_id": Some(&member_id).filter(|m| !m.is_empty()) }),
            at: now,
        },
    )
    .await?;
    let g = store::grants::get_tx(&mut tx, &org.id, &kind, &member_id)
        .await?
        .ok_or_else(|| ApiError::not_found("grant"))?;
    let out = GrantOut::from(g);
    let payload = serde_json::to_value(&out).map_err(anyhow::Error::from)?;
    crate::webhooks::emit(&app, &mut tx, &org.id, "grant.revoked", payload, now).await?;
    tx.commit().await?;
    Ok(Json(out))
}
