//! Members of an org: create (within `orgs.max_members`), list, get, edit,
//! disable (access stops at once, nothing is deleted) and enable. Org-key
//! calls name their acting member (`Approvald-Actor`) and follow the org's
//! rules (see `actor`).
use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::{
    Caller,
    actor::{self, ActingMember, may_change_kind, may_disable, require_actor, require_admin},
    body::{JsonBody, double_option},
    new_id, opt_time, page, time,
};
use crate::{
    app::App,
    db::is_unique_violation,
    domain::ids::{Email, Invalid, Locale, LoginId, MemberKind, parse_name},
    http::{
        ApiError, ApiResult,
        extract::{ApiPath, ApiQuery},
    },
    store::{self, audit, members::Member},
};

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Member)]
pub struct MemberOut {
    id: String,
    org_id: String,
    #[schema(pattern = "^[A-Za-z0-9^@_]{5,20}$")]
    login_id: String,
    name: String,
    email: String,
    phone: Option<String>,
    #[schema(value_type = MemberKind)]
    kind: String,
    /// The name of one of the org's roles.
    role: Option<String>,
    #[schema(value_type = Locale)]
    locale: String,
    #[schema(value_type = String, pattern = "^(active|disabled)$")]
    status: String,
    created_at: String,
    updated_at: String,
    disabled_at: Option<String>,
}

impl From<Member> for MemberOut {
    fn from(m: Member) -> Self {
        Self {
            id: m.id,
            org_id: m.org_id,
            login_id: m.login_id,
            name: m.name,
            email: m.email,
            phone: m.phone,
            kind: m.kind,
            role: m.role,
            locale: m.locale,
            status: m.status,
            created_at: time(m.created_at),
            updated_at: time(m.updated_at),
            disabled_at: opt_time(m.disabled_at),
        }
    }
}

/// A phone number: 3-32 characters of digits, spaces and `+ - ( ) .`, with at least 3 digits.
pub fn parse_phone(s: &str) -> Result<String, Invalid> {
    let t = s.trim();
    let n = t.chars().count();
    if !(3..=32).contains(&n)
        || !t
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '+' | '-' | '(' | ')' | '.'))
        || t.chars().filter(char::is_ascii_digit).count() < 3
    {
        return Err(Invalid::new(
            "phone",
            "must be 3-32 characters of digits, spaces and + - ( ) .",
        ));
    }
    Ok(t.to_string())
}

/// A role name: 1-64 characters, no control characters, no `/`.
pub fn parse_role(s: &str) -> Result<String, Invalid> {
    let t = s.trim();
    let n = t.chars().count();
    if n == 0 || n > 64 || t.chars().any(|c| c.is_control() || c == '/') {
        return Err(Invalid::new(
            "role",
            "must be 1-64 characters without control characters or /",
        ));
    }
    Ok(t.to_string())
}

/// `admin` or `member`: there is exactly one super admin, the org's owner.
fn parse_kind(s: &str) -> Result<MemberKind, Invalid> {
    match MemberKind::parse(s)? {
        MemberKind::SuperAdmin => Err(Invalid::new(
            "kind",
            "an org has one super_admin, its owner; use admin or member",
        )),
        k => Ok(k),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMember {
    /// 5-20 letters, digits, `^`, `@` or `_`; unique in the org.
    #[schema(pattern = "^[A-Za-z0-9^@_]{5,20}$", example = "buyer_01")]
    login_id: String,
    /// 1-100 characters (surrounding spaces trimmed), no control characters.
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// 3-32 characters of digits, spaces and `+ - ( ) .`, at least 3 digits.
    #[serde(default)]
    #[schema(pattern = "^\\s*[0-9 +().-]{3,32}\\s*$")]
    phone: Option<String>,
    /// `admin` or `member` (default); only the super admin creates admins.
    #[serde(default)]
    #[schema(pattern = "^(admin|member)$")]
    kind: Option<String>,
    /// One of the org's roles.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    role: Option<String>,
    /// `en`, `zh-CN` or `ja` (any case); default: the org's.
    #[serde(default)]
    #[schema(pattern = "^([Ee][Nn]|[Zz][Hh]-[Cc][Nn]|[Jj][Aa])$")]
    locale: Option<String>,
}

fn audit_op<'a>(
    org_id: &'a str,
    actor: &'a str,
    action: &'a str,
    target: &'a str,
    detail: serde_json::Value,
    at: i64,
) -> audit::Operation<'a> {
    audit::Operation {
        org_id,
        actor,
        action,
        target: Some(target),
        detail,
        at,
    }
}

/// Add a member (an admin, or the platform key).
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/members",
    operation_id = "createMember",
    tag = "members",
    params(("org" = String, Path, description = "The org's id"), super::openapi::ActorHeader),
    request_body(content = CreateMember, example = json!({
        "login_id": "buyer_01", "name": "Zhang San", "email": "zhang@acme.example", "role": "purchasing"
    })),
    responses(
        (status = 201, description = "Created", body = MemberOut,
            links(("GetMember" = (operation_id = "getMember", parameters(("org" = "$response.body#/org_id"), ("id" = "$response.body#/id")))))),
        (status = 409, description = "The login id is taken, or the org is at `orgs.max_members`", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(org_id): ApiPath<String>,
    body: JsonBody<CreateMember>,
) -> ApiResult<(StatusCode, Json<MemberOut>)> {
    let org = caller.org(&app, &org_id).await?;
    let acting = require_actor(&app, &caller, &org, &headers).await?;
    require_admin(&acting)?;
    let b = body.value;
    let login_id = LoginId::parse(&b.login_id)?;
    let name = parse_name("name", &b.name)?;
    let email = Email::parse(&b.email)?;
    let phone = b.phone.as_deref().map(parse_phone).transpose()?;
    let kind = b
        .kind
        .as_deref()
        .map(parse_kind)
        .transpose()?
        .unwrap_or(MemberKind::Member);
    if kind == MemberKind::Admin {
        // Making an admin is the super admin's (or the platform's) call.
        may_change_kind(&acting, MemberKind::Member)?;
    }
    let role = b.role.as_deref().map(parse_role).transpose()?;
    let locale = match b.locale.as_deref() {
        Some(l) => Locale::parse(l)?,
        None => Locale::or_en(&org.locale),
    };

    let now = app.now_ms();
    let m = Member {
        id: new_id(),
        org_id: org.id.clone(),
        login_id: login_id.as_str().to_string(),
        name,
        email: email.as_str().to_string(),
        phone,
        kind: kind.as_str().to_string(),
        role,
        locale: locale.as_str().to_string(),
        status: store::members::ACTIVE.to_string(),
        created_at: now,
        updated_at: now,
        disabled_at: None,
    };
    let mut tx = app.db.begin().await?;
    store::orgs::lock(&mut tx, &org.id).await?;
    check_room(&app, &mut tx, &org.id).await?;
    if let Some(r) = &m.role {
        check_role_exists(&mut tx, &org.id, r).await?;
    }
    if let Err(e) = store::members::insert(&mut tx, &m).await {
        return Err(if is_unique_violation(&e) {
            ApiError::conflict(format!(
                "login_id: {:?} is already taken in this org",
                m.login_id
            ))
        } else {
            e.into()
        });
    }
    let actor = actor::audit_actor(&caller, &acting);
    audit::operation(
        &mut tx,
        audit_op(
            &org.id,
            &actor,
            "member.create",
            &m.id,
            json!({ "before": null, "after": audit_view(&m) }),
            now,
        ),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(m.into())))
}

/// 422 naming `role` when the org has no role of that name.
async fn check_role_exists(tx: &mut crate::db::Tx, org_id: &str, role: &str) -> ApiResult<()> {
    if store::roles::exists(tx, org_id, role).await? {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "role: this org has no role {role:?}; create it with PUT /v1/orgs/{{org}}/roles/{{name}} or use one of GET /v1/orgs/{{org}}/roles"
        )))
    }
}

/// The fields of a member that an audit row's before/after shows.
fn audit_view(m: &Member) -> serde_json::Value {
    json!({
        "login_id": m.login_id,
        "name": m.name,
        "email": m.email,
        "phone": m.phone,
        "kind": m.kind,
        "role": m.role,
        "locale": m.locale,
        "status": m.status,
    })
}

/// 409 when the org already has `orgs.max_members` active members (the
/// owner counts). Call with the org row locked.
async fn check_room(app: &App, tx: &mut crate::db::Tx, org_id: &str) -> ApiResult<()> {
    let max = i64::from(app.config.orgs.max_members);
    let n = store::members::count_active(tx, org_id).await?;
    if n >= max {
        return Err(ApiError::conflict(format!(
            "the org has {n} active members, the most allowed (orgs.max_members = {max}); disable one first"
        )));
    }
    Ok(())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `next_cursor` of the previous page.
    #[serde(default)]
    #[param(max_length = 200)]
    cursor: Option<String>,
    /// 1-100, default 20.
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// The org's members, oldest first (admins and the platform key).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/members",
    operation_id = "listMembers",
    tag = "members",
    params(("org" = String, Path, description = "The org's id"), super::openapi::ActorHeader, ListQuery),
    responses((status = 200, description = "One page", body = page::Page<MemberOut>)),
)]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiPath(org_id): ApiPath<String>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<page::Page<MemberOut>>> {
    let org = caller.org(&app, &org_id).await?;
    require_admin(&require_actor(&app, &caller, &org, &headers).await?)?;
    let limit = page::limit(q.limit)?;
    let after = q.cursor.as_deref().map(page::decode).transpose()?;
    let rows = store::members::list(
        &app.db,
        &org.id,
        after.as_ref().map(|(a, i)| (*a, i.as_str())),
        limit + 1,
    )
    .await?;
    Ok(Json(page::paginate(
        rows,
        limit,
        |m| (m.created_at, m.id.clone()),
        MemberOut::from,
    )))
}

/// The member `id` of the org, for an actor that may see it: an admin (or
/// the platform), or the member itself.
pub async fn load_visible(
    app: &App,
    caller: &Caller,
    headers: &HeaderMap,
    org_id: &str,
    id: &str,
) -> ApiResult<Member> {
    let org = caller.org(app, org_id).await?;
    let acting = require_actor(app, caller, &org, headers).await?;
    if !matches!(&acting, Some(a) if a.id == id) {
        require_admin(&acting)?;
    }
    store::members::get(&app.db, &org.id, id)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))
}

/// A member (admins; a plain member may read its own record).
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/members/{id}",
    operation_id = "getMember",
    tag = "members",
    params(("org" = String, Path, description = "The org's id"), ("id" = String, Path, description = "The member's id"), super::openapi::ActorHeader),
    responses((status = 200, description = "The member", body = MemberOut)),
)]
pub async fn get(
    State(app): State<App>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath((org_id, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<MemberOut>> {
    Ok(Json(
        load_visible(&app, &caller, &headers, &org_id, &id)
            .await?
            .into(),
    ))
}

/// Only the fields sent change; `phone` and `role` may be `null` to clear them.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMember {
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100)]
    name: Option<String>,
    #[serde(default)]
    #[schema(format = Email, max_length = 254)]
    email: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, pattern = "^\\s*[0-9 +().-]{3,32}\\s*$")]
    phone: Option<Option<String>>,
    /// `admin` or `member`; only the super admin changes it.
    #[serde(default)]
    #[schema(pattern = "^(admin|member)$")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 64)]
    role: Option<Option<String>>,
    #[serde(default)]
    #[schema(pattern = "^([Ee][Nn]|[Zz][Hh]-[Cc][Nn]|[Jj][Aa])$")]
    locale: Option<String>,
}

/// Change a member (admins; only the super admin edits admins' kind and
/// the super admin's record).
#[utoipa::path(
    patch,
    path = "/v1/orgs/{org}/members/{id}",
    operation_id = "updateMember",
    tag = "members",
    params(("org" = String, Path, description = "The org's id"), ("id" = String, Path, description = "The member's id"), super::openapi::ActorHeader),
    request_body = UpdateMember,
    responses(
        (status = 200, description = "The member as changed", body = MemberOut),
        (status = 409, description = "The super admin's kind never changes; a disabled member gets no role", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn update(
    State(app): State<App>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath((org_id, id)): ApiPath<(String, String)>,
    body: JsonBody<UpdateMember>,
) -> ApiResult<Json<MemberOut>> {
    let org = caller.org(&app, &org_id).await?;
    let acting = require_actor(&app, &caller, &org, &headers).await?;
    require_admin(&acting)?;
    let b = body.value;
    let name = b
        .name
        .as_deref()
        .map(|s| parse_name("name", s))
        .transpose()?;
    let email = b.email.as_deref().map(Email::parse).transpose()?;
    let phone = b
        .phone
        .map(|p| p.as_deref().map(parse_phone).transpose())
        .transpose()?;
    let kind = b.kind.as_deref().map(parse_kind).transpose()?;
    let role = b
        .role
        .map(|r| r.as_deref().map(parse_role).transpose())
        .transpose()?;
    let locale = b.locale.as_deref().map(Locale::parse).transpose()?;

    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    // Serialize with role deletes (a member never ends up holding a deleted role).
    store::orgs::lock(&mut tx, &org.id).await?;
    let mut m = store::members::get_tx(&mut tx, &org.id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    let target_kind = MemberKind::parse(&m.kind).unwrap_or(MemberKind::Member);
    if let Some(k) = kind
        && k.as_str() != m.kind
    {
        may_change_kind(&acting, target_kind)?;
    }
    check_may_edit(&acting, target_kind)?;
    if let Some(Some(r)) = &role
        && m.role.as_deref() != Some(r.as_str())
    {
        check_role_exists(&mut tx, &org.id, r).await?;
        if m.status == store::members::DISABLED {
            return Err(ApiError::conflict(
                "role: the member is disabled; enable them before giving them a role",
            ));
        }
    }
    let before = audit_view(&m);
    let mut changed = Vec::new();
    if let Some(v) = name {
        m.name = v;
        changed.push("name");
    }
    if let Some(v) = email {
        m.email = v.as_str().to_string();
        changed.push("email");
    }
    if let Some(v) = phone {
        m.phone = v;
        changed.push("phone");
    }
    if let Some(k) = kind {
        m.kind = k.as_str().to_string();
        changed.push("kind");
    }
    if let Some(v) = role {
        m.role = v;
        changed.push("role");
    }
    if let Some(l) = locale {
        m.locale = l.as_str().to_string();
        changed.push("locale");
    }
    if changed.is_empty() {
        return Ok(Json(m.into()));
    }
    m.updated_at = now;
    store::members::update(&mut tx, &m).await?;
    let actor = actor::audit_actor(&caller, &acting);
    let after = audit_view(&m);
    let pick = |v: &serde_json::Value| {
        changed
            .iter()
            .map(|f| (f.to_string(), v[*f].clone()))
            .collect::<serde_json::Map<_, _>>()
    };
    audit::operation(
        &mut tx,
        audit_op(
            &org.id,
            &actor,
            "member.update",
            &m.id,
            json!({ "fields": changed, "before": pick(&before), "after": pick(&after) }),
            now,
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(m.into()))
}

/// The super admin's record is edited by the super admin (or the platform)
/// only; admins edit admins and members.
fn check_may_edit(acting: &Option<ActingMember>, target: MemberKind) -> ApiResult<()> {
    match acting {
        Some(a) if target == MemberKind::SuperAdmin && !a.is_super_admin() => {
            Err(ApiError::forbidden(format!(
                "Approvald-Actor: member {:?} is not the super admin; only the super admin edits the super admin",
                a.id
            )))
        }
        _ => Ok(()),
    }
}

/// 202: the member is disabled at once (their review links revoked, the
/// `cleanup` job queued) in one transaction; every row they own stays (see
/// [`crate::flows::members`]). Disabling a disabled member changes nothing
/// and answers the same.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/members/{id}/disable",
    operation_id = "disableMember",
    tag = "members",
    params(("org" = String, Path, description = "The org's id"), ("id" = String, Path, description = "The member's id"), super::openapi::ActorHeader),
    responses(
        (status = 202, description = "Disabled; the cleanup job is queued", body = MemberOut),
        (status = 409, description = "Nobody disables the super admin", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn disable(
    State(app): State<App>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath((org_id, id)): ApiPath<(String, String)>,
) -> ApiResult<(StatusCode, Json<MemberOut>)> {
    let org = caller.org(&app, &org_id).await?;
    let acting = require_actor(&app, &caller, &org, &headers).await?;
    require_admin(&acting)?;
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    let m = store::members::get_tx(&mut tx, &org.id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    may_disable(
        &acting,
        MemberKind::parse(&m.kind).unwrap_or(MemberKind::Member),
    )?;
    let actor = actor::audit_actor(&caller, &acting);
    let done = crate::flows::members::disable(&app, &mut tx, &m, &actor, now).await?;
    if done.cleanup_id.is_some() {
        let disabled = store::members::get_tx(&mut tx, &org.id, &id)
            .await?
            .ok_or_else(|| ApiError::not_found("member"))?;
        let payload =
            serde_json::to_value(MemberOut::from(disabled)).map_err(anyhow::Error::from)?;
        crate::webhooks::emit(&app, &mut tx, &org.id, "member.disabled", payload, now).await?;
    }
    let m = store::members::get_tx(&mut tx, &org.id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    tx.commit().await?;
    Ok((StatusCode::ACCEPTED, Json(m.into())))
}

/// Enable a disabled member again, within the member limit. Access only:
/// what the cleanup cancelled, handed over or revoked stays so.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/members/{id}/enable",
    operation_id = "enableMember",
    tag = "members",
    params(("org" = String, Path, description = "The org's id"), ("id" = String, Path, description = "The member's id"), super::openapi::ActorHeader),
    responses(
        (status = 200, description = "Enabled", body = MemberOut),
        (status = 409, description = "The org is at `orgs.max_members`", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn enable(
    State(app): State<App>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath((org_id, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<MemberOut>> {
    let org = caller.org(&app, &org_id).await?;
    let acting = require_actor(&app, &caller, &org, &headers).await?;
    require_admin(&acting)?;
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    store::orgs::lock(&mut tx, &org.id).await?;
    let m = store::members::get_tx(&mut tx, &org.id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    // Whoever may disable a member may enable it again.
    may_disable(
        &acting,
        MemberKind::parse(&m.kind).unwrap_or(MemberKind::Member),
    )?;
    if m.status == store::members::DISABLED {
        check_room(&app, &mut tx, &org.id).await?;
        let actor = actor::audit_actor(&caller, &acting);
        crate::flows::members::enable(&mut tx, &m, &actor, now).await?;
    }
    let m = store::members::get_tx(&mut tx, &org.id, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("member"))?;
    tx.commit().await?;
    Ok(Json(m.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_roles_kinds() {
        assert_eq!(
            parse_phone(" +86 (10) 1234-5678 ").unwrap(),
            "+86 (10) 1234-5678"
        );
        for bad in [
            "",
            "12",
            "call me",
            "+++",
            "1234567890123456789012345678901234",
            "12\n34",
        ] {
            assert!(parse_phone(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_role("采购").unwrap(), "采购");
        for bad in ["", "a/b", "x\u{0}", &"r".repeat(65)] {
            assert!(parse_role(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_kind("admin").unwrap(), MemberKind::Admin);
        assert!(parse_kind("super_admin").is_err());
        assert!(parse_kind("owner").is_err());
    }
}
