//! Roles of an org: `GET /v1/orgs/{org}/roles[/{name}]`, `PUT` (create or
//! replace) and `DELETE` (409 while a member holds it). Managing roles needs
//! an admin actor (`Approvald-Actor`) on org-key calls.
use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::{
    Caller,
    actor::{self, require_actor, require_admin},
    body::JsonBody,
    members::parse_role,
    time,
};
use crate::{
    app::App,
    domain::{
        payment::PaymentSettings,
        role::{BUILTIN, DataScope, RoleGrant, RoleSpec},
    },
    http::{ApiError, ApiResult, extract::ApiPath},
    store::{self, audit, roles::Role},
};

/// A role: its name, its [`RoleSpec`] fields, and how it is used.
#[derive(Serialize, ToSchema)]
#[schema(as = Role)]
pub struct RoleOut {
    name: String,
    data_scope: DataScope,
    grants: Vec<RoleGrant>,
    menus: Vec<String>,
    payment: PaymentSettings,
    advanced: bool,
    /// One of the roles every org starts with.
    builtin: bool,
    /// How many members (active or disabled) hold it.
    members: i64,
    updated_at: String,
}

impl From<Role> for RoleOut {
    fn from(r: Role) -> Self {
        Self {
            builtin: BUILTIN.contains(&r.name.as_str()),
            name: r.name,
            data_scope: r.spec.data_scope,
            grants: r.spec.grants,
            menus: r.spec.menus,
            payment: r.spec.payment,
            advanced: r.spec.advanced,
            members: r.members,
            updated_at: time(r.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct RoleList {
    items: Vec<RoleOut>,
}

async fn org_for_admin(
    app: &App,
    caller: &Caller,
    headers: &HeaderMap,
    org_id: &str,
) -> ApiResult<(store::orgs::Org, Option<actor::ActingMember>)> {
    let org = caller.org(app, org_id).await?;
    let acting = require_actor(app, caller, &org, headers).await?;
    require_admin(&acting)?;
    Ok((org, acting))
}

/// The org's roles (admins and the platform key).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/roles",
    operation_id = "listRoles",
    tag = "roles",
    params(("org" = String, Path, description = "The org's id"), super::openapi::ActorHeader),
    responses((status = 200, description = "Every role of the org", body = RoleList)),
)]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(org_id): ApiPath<String>,
) -> ApiResult<Json<RoleList>> {
    let (org, _) = org_for_admin(&app, &caller, &headers, &org_id).await?;
    let rows = store::roles::list(&app.db, &org.id).await?;
    Ok(Json(RoleList {
        items: rows.into_iter().map(RoleOut::from).collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/roles/{name}",
    operation_id = "getRole",
    tag = "roles",
    params(("org" = String, Path, description = "The org's id"), ("name" = String, Path, description = "The role's name"), super::openapi::ActorHeader),
    responses((status = 200, description = "The role", body = RoleOut)),
)]
pub async fn get(
    State(app): State<App>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath((org_id, name)): ApiPath<(String, String)>,
) -> ApiResult<Json<RoleOut>> {
    let (org, _) = org_for_admin(&app, &caller, &headers, &org_id).await?;
    let r = store::roles::get(&app.db, &org.id, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("role"))?;
    Ok(Json(r.into()))
}

/// A role name from the path: 422 naming `name` when it is not one.
fn role_name(s: &str) -> ApiResult<String> {
    parse_role(s).map_err(|e| ApiError::invalid(format!("name: {}", e.why)))
}

/// Create (201) or replace (200) the role: data scope, grants, menus,
/// payment and advanced, every name checked against the catalog.
#[utoipa::path(
    put,
    path = "/v1/orgs/{org}/roles/{name}",
    operation_id = "putRole",
    tag = "roles",
    params(("org" = String, Path, description = "The org's id"),
        ("name" = String, Path, description = "1-64 characters, no control characters or `/`", min_length = 1, max_length = 64),
        super::openapi::ActorHeader),
    request_body(content = RoleSpec, example = json!({
        "data_scope": "own", "grants": [{"module": "orders"}, {"module": "files", "function": "download"}],
        "menus": ["items", "ftp"], "payment": {"allowed": true, "per_tx": 50000, "daily": 200000, "monthly": 1000000},
        "advanced": false
    })),
    responses(
        (status = 200, description = "Replaced (or unchanged)", body = RoleOut),
        (status = 201, description = "Created", body = RoleOut,
            links(("GetRole" = (operation_id = "getRole", parameters(("org" = "$request.path.org"), ("name" = "$response.body#/name")))))),
    ),
)]
pub async fn put(
    State(app): State<App>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath((org_id, name)): ApiPath<(String, String)>,
    body: JsonBody<RoleSpec>,
) -> ApiResult<(StatusCode, Json<RoleOut>)> {
    let (org, acting) = org_for_admin(&app, &caller, &headers, &org_id).await?;
    let name = role_name(&name)?;
    let spec = body
        .value
        .validate(&app.catalog)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    store::orgs::lock(&mut tx, &org.id).await?;
    let before = store::roles::get_tx(&mut tx, &org.id, &name).await?;
    if before.as_ref().is_some_and(|b| b.spec == spec) {
        // Nothing changes: nothing is written, not even an audit row.
        return Ok((StatusCode::OK, Json(before.expect("checked").into())));
    }
    store::roles::put(&mut tx, &org.id, &name, &spec, now).await?;
    let actor = actor::audit_actor(&caller, &acting);
    audit::operation(
        &mut tx,
        audit::Operation {
            org_id: &org.id,
            actor: &actor,
            action: if before.is_some() {
                "role.update"
            } else {
                "role.create"
            },
            target: Some(&name),
            detail: json!({ "before": before.as_ref().map(|b| &b.spec), "after": spec }),
            at: now,
        },
    )
    .await?;
    let r = store::roles::get_tx(&mut tx, &org.id, &name)
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("role {name:?} vanished")))?;
    tx.commit().await?;
    let status = if before.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(r.into())))
}

/// 204; 409 while any member (active or disabled) holds the role.
#[utoipa::path(
    delete,
    path = "/v1/orgs/{org}/roles/{name}",
    operation_id = "deleteRole",
    tag = "roles",
    params(("org" = String, Path, description = "The org's id"), ("name" = String, Path, description = "The role's name"), super::openapi::ActorHeader),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "A member holds the role", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath((org_id, name)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let (org, acting) = org_for_admin(&app, &caller, &headers, &org_id).await?;
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    store::orgs::lock(&mut tx, &org.id).await?;
    let before = store::roles::get_tx(&mut tx, &org.id, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("role"))?;
    if before.members > 0 || !store::roles::delete_unused(&mut tx, &org.id, &name).await? {
        return Err(ApiError::conflict(format!(
            "role {name:?} is held by {} member(s); give them another role first",
            before.members.max(1)
        )));
    }
    let actor = actor::audit_actor(&caller, &acting);
    audit::operation(
        &mut tx,
        audit::Operation {
            org_id: &org.id,
            actor: &actor,
            action: "role.delete",
            target: Some(&name),
            detail: json!({ "before": before.spec, "after": null }),
            at: now,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
