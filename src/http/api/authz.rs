//! "May this member do this?": `POST /v1/orgs/{org}/authz/check`,
//! `authz/check-batch` (up to 100) and `GET .../members/{id}/permissions`.
//!
//! Every answer is computed from the last committed state by the pure
//! [`crate::domain::authz::decide`]. A check authenticates its key and reads
//! the org's authorization revision in one query; the member and the org's
//! grants come from [`flows::authz`], which reuses what it read at that
//! revision (every change bumps it) and reads again otherwise. The
//! permissions listing reads everything afresh.
use std::sync::Arc;

use axum::{
    Json,
    extract::{FromRequestParts, State},
    http::{HeaderMap, request::Parts},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    Caller, CallerScope,
    auth::{AuthRejection, bearer, unknown_key},
    body::JsonBody,
};
use crate::{
    app::App,
    domain::{
        authz::{self, Action, Decision},
        catalog::Catalog,
        ids::MemberKind,
    },
    flows::{
        self,
        authz::{Loaded, Member},
    },
    http::{ApiError, ApiResult, extract::ApiPath},
    store,
};

/// The org an authz check is for, with its authorization revision, as seen
/// by the one query that also authenticates the key: 401 without a live
/// key, 403 for an operator key, 404 for an org that does not exist or that
/// an org key does not own (exactly as [`Caller::org`]).
pub struct CheckOrg {
    id: String,
    revision: i64,
}

impl FromRequestParts<App> for CheckOrg {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?.to_string();
        let ApiPath(org_id) = ApiPath::<String>::from_request_parts(parts, app).await?;
        let key = store::keys::authenticate_for_org(&app.db, app.inline.as_ref(), &token, &org_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(unknown_key)?;
        let caller = Caller::from_key(key.id, &key.scope, key.org_id)?;
        if let CallerScope::Org(own) = &caller.scope
            && *own != org_id
        {
            return Err(ApiError::not_found("org").into());
        }
        if !key.org_exists {
            return Err(ApiError::not_found("org").into());
        }
        Ok(Self {
            id: org_id,
            revision: key.revision,
        })
    }
}

/// Most checks in one `check-batch`.
pub const MAX_BATCH: usize = 100;

/// May `member` take `action`?
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AuthzCheck)]
pub struct CheckIn {
    /// Member id or login id (1-64 characters).
    #[schema(min_length = 1, max_length = 64, example = "buyer_01")]
    member: String,
    /// `<module>.<function>`, `menu:<menu>`, `payment:use_balance`,
    /// `advanced:sign_in`, `data:view`, `data:edit`, `account:overview`,
    /// `account:close`, `account:switch`, `account:cancel_close`,
    /// `members:manage` or `logs:view`.
    #[schema(example = "orders.delete")]
    action: String,
    /// For `data:*`: the member (id or login id) who owns the data; absent
    /// means the checked member's own data.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    owner: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = AuthzDecision)]
pub struct CheckOut {
    allowed: bool,
    #[schema(value_type = String, pattern = "^(super_admin|admin|module_grant|function_grant|menu|no_grant|scope_own_only|member_disabled|admin_only|super_admin_only|org_not_granted|unknown_action|unknown_member)$")]
    reason: &'static str,
    /// The member's id, or the reference as given when it names nobody.
    member: String,
    action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    /// The member's kind and role, when the member exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<MemberKind>)]
    kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<String>,
}

/// A reference to a member (`member`, `owner`): 1-64 characters.
fn reference(field: &str, s: &str) -> ApiResult<String> {
    let t = s.trim();
    if t.is_empty() || t.len() > 64 || t.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field}: name a member by its id or login id (1-64 characters)"
        )));
    }
    Ok(t.to_string())
}

/// A checked request, every field valid.
struct Valid {
    member: String,
    action: String,
    owner: Option<String>,
}

fn validate(prefix: &str, c: CheckIn, catalog: &Catalog) -> ApiResult<Valid> {
    let member = reference(&format!("{prefix}member"), &c.member)?;
    Action::parse(&c.action, catalog)
        .map_err(|e| ApiError::invalid(format!("{prefix}action: {:?} {e}", c.action)))?;
    let owner = c
        .owner
        .as_deref()
        .map(|o| reference(&format!("{prefix}owner"), o))
        .transpose()?;
    Ok(Valid {
        member,
        action: c.action,
        owner,
    })
}

/// Is `action` a menu that opens only while the org holds a permission kind?
fn gated(catalog: &Catalog, action: &str) -> bool {
    action
        .strip_prefix("menu:")
        .and_then(|m| catalog.menu(m))
        .is_some_and(|m| m.requires.is_some())
}

fn count(d: Decision) {
    metrics::counter!(
        "approvald_authz_checks_total",
        "allowed" => if d.allowed { "true" } else { "false" },
        "reason" => d.reason.as_str()
    )
    .increment(1);
}

fn answer(v: Valid, who: Option<&Loaded>, d: Decision) -> CheckOut {
    CheckOut {
        allowed: d.allowed,
        reason: d.reason.as_str(),
        member: who.map_or(v.member, |l| l.facts.id.clone()),
        action: v.action,
        owner: v.owner,
        kind: who.map(|l| l.facts.kind.clone()),
        role: who.and_then(|l| l.facts.role.clone()),
    }
}

/// One authorization check, answered from what is committed now.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/authz/check",
    operation_id = "authzCheck",
    tag = "authz",
    params(("org" = String, Path, description = "The org's id")),
    request_body(content = CheckIn, example = json!({"member": "buyer_01", "action": "orders.delete"})),
    responses((status = 200, description = "The decision", body = CheckOut,
        example = json!({"allowed": true, "reason": "module_grant", "member": "0194f3b2-7c1e-7d4e-9a5b-1c2d3e4f5a6b",
            "action": "orders.delete", "kind": "member", "role": "buyer"}))),
)]
pub async fn check(
    State(app): State<App>,
    org: CheckOrg,
    body: JsonBody<CheckIn>,
) -> ApiResult<Json<CheckOut>> {
    let v = validate("", body.value, &app.catalog)?;
    let who: Member = flows::authz::member(&app, &org.id, org.revision, &v.member).await?;
    let action = Action::parse(&v.action, &app.catalog).expect("validated");
    // A gated menu asks the org's grants (for an active member); nothing
    // else does.
    let granted = match &who {
        Some(l) if l.subject().active && gated(&app.catalog, &v.action) => {
            flows::authz::granted_kinds(&app, &org.id, org.revision).await?
        }
        _ => Arc::default(),
    };
    let d = authz::decide(
        &app.catalog,
        who.as_deref().map(Loaded::subject).as_ref(),
        action,
        v.owner.as_deref(),
        |k| granted.iter().any(|g| g == k),
    );
    count(d);
    Ok(Json(answer(v, who.as_deref(), d)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AuthzBatch)]
pub struct BatchIn {
    /// 1 to 100 checks.
    #[serde(default, deserialize_with = "super::body::option_objects")]
    #[schema(value_type = Vec<CheckIn>, required = true, min_items = 1, max_items = 100)]
    checks: Option<Vec<CheckIn>>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = AuthzBatchResult)]
pub struct BatchOut {
    /// One per check, in order.
    results: Vec<CheckOut>,
}

/// Up to [`MAX_BATCH`] checks, answered in order; every check is validated
/// before any is answered (one bad check: 422 naming `checks[i].<field>`).
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/authz/check-batch",
    operation_id = "authzCheckBatch",
    tag = "authz",
    params(("org" = String, Path, description = "The org's id")),
    request_body = BatchIn,
    responses((status = 200, description = "The decisions, in order", body = BatchOut)),
)]
pub async fn check_batch(
    State(app): State<App>,
    org: CheckOrg,
    body: JsonBody<BatchIn>,
) -> ApiResult<Json<BatchOut>> {
    let checks = body.value.checks.unwrap_or_default();
    if checks.is_empty() || checks.len() > MAX_BATCH {
        return Err(ApiError::invalid(format!(
            "checks: send 1 to {MAX_BATCH} checks, got {}",
            checks.len()
        )));
    }
    let valid = checks
        .into_iter()
        .enumerate()
        .map(|(i, c)| validate(&format!("checks[{i}]."), c, &app.catalog))
        .collect::<ApiResult<Vec<_>>>()?;
    // Each distinct member once; the org's grants once, if a gated menu is asked.
    let mut members: Vec<(String, Member)> = Vec::new();
    for v in &valid {
        if !members.iter().any(|(r, _)| *r == v.member) {
            let m = flows::authz::member(&app, &org.id, org.revision, &v.member).await?;
            members.push((v.member.clone(), m));
        }
    }
    let held = if valid.iter().any(|v| gated(&app.catalog, &v.action)) {
        flows::authz::granted_kinds(&app, &org.id, org.revision).await?
    } else {
        Arc::default()
    };
    let mut results = Vec::with_capacity(valid.len());
    for v in valid {
        let who = members
            .iter()
            .find(|(r, _)| *r == v.member)
            .and_then(|(_, l)| l.as_deref());
        let action = Action::parse(&v.action, &app.catalog).expect("validated");
        let d = authz::decide(
            &app.catalog,
            who.map(Loaded::subject).as_ref(),
            action,
            v.owner.as_deref(),
            |k| held.iter().any(|h| h == k),
        );
        count(d);
        results.push(answer(v, who, d));
    }
    Ok(Json(BatchOut { results }))
}

#[derive(Serialize, ToSchema)]
pub struct Permission {
    action: String,
    #[schema(value_type = String, pattern = "^(super_admin|admin|module_grant|function_grant|menu|no_grant|scope_own_only|member_disabled|admin_only|super_admin_only|org_not_granted|unknown_action|unknown_member)$")]
    reason: &'static str,
}

#[derive(Serialize, ToSchema)]
#[schema(as = MemberPermissions)]
pub struct PermissionsOut {
    member: String,
    #[schema(value_type = MemberKind)]
    kind: String,
    #[schema(value_type = String, pattern = "^(active|disabled)$")]
    status: String,
    role: Option<String>,
    /// `data:view` / `data:edit` below are for the member's own data; with
    /// `all` they hold for anyone's in the org.
    #[schema(value_type = crate::domain::role::DataScope)]
    data_scope: &'static str,
    /// Every action the member may take now, complete (never paged).
    items: Vec<Permission>,
}

/// Every action the member may take now, each with its reason: exactly the
/// actions whose single `authz/check` (for `data:*`: on the member's own
/// data) answers allowed.
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/members/{id}/permissions",
    operation_id = "memberPermissions",
    tag = "authz",
    params(("org" = String, Path, description = "The org's id"), ("id" = String, Path, description = "The member's id"), super::openapi::ActorHeader),
    responses((status = 200, description = "The member's permissions", body = PermissionsOut)),
)]
pub async fn permissions(
    State(app): State<App>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath((org_id, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<PermissionsOut>> {
    let m = super::members::load_visible(&app, &caller, &headers, &org_id, &id).await?;
    let facts = store::roles::member_facts(&app.db, &m.org_id, &m.id)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    let who = Loaded::from_facts(facts)?;
    let held = store::roles::org_granted_kinds(&app.db, &m.org_id).await?;
    let subject = who.subject();
    let mut items = Vec::new();
    for a in authz::all_actions(&app.catalog) {
        let action = Action::parse(&a, &app.catalog).expect("catalog actions parse");
        let d = authz::decide(&app.catalog, Some(&subject), action, None, |k| {
            held.iter().any(|h| h == k)
        });
        if d.allowed {
            items.push(Permission {
                action: a,
                reason: d.reason.as_str(),
            });
        }
    }
    let data_scope = match who.kind {
        MemberKind::SuperAdmin | MemberKind::Admin => "all",
        MemberKind::Member => who.spec.as_ref().map_or("own", |s| s.data_scope.as_str()),
    };
    Ok(Json(PermissionsOut {
        member: who.facts.id.clone(),
        kind: who.facts.kind.clone(),
        status: who.facts.status.clone(),
        role: who.facts.role.clone(),
        data_scope,
        items,
    }))
}
