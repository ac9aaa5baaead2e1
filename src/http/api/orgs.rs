//! `POST /v1/orgs`, `GET /v1/orgs/{org}`, `POST /v1/orgs/{org}/keys`.
use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::{Caller, body::JsonBody, members::MemberOut, new_id, time};
use crate::{
    app::App,
    domain::{
        calendar::Region,
        ids::{Email, Locale, LoginId, MemberKind, parse_name},
        spending::{Currency, parse_zone},
    },
    http::{ApiError, ApiResult, extract::ApiPath},
    store::{self, audit, keys::KeyScope, members::Member, orgs::Org},
};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    /// 1-100 characters (surrounding spaces trimmed), no control characters.
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// A region with a business calendar: `cn` or `jp`.
    #[schema(example = "cn")]
    region: String,
    /// `en`, `zh-CN` or `ja` (any case).
    #[schema(pattern = "^([Ee][Nn]|[Zz][Hh]-[Cc][Nn]|[Jj][Aa])$")]
    locale: String,
    /// IANA zone of the org's spending periods; default: the region calendar's.
    #[serde(default)]
    #[schema(example = "Asia/Shanghai", max_length = 64)]
    timezone: Option<String>,
    /// ISO 4217; default: `payments.currency`.
    #[serde(default)]
    #[schema(pattern = "^[A-Z]{3}$", example = "CNY")]
    currency: Option<String>,
    #[serde(deserialize_with = "super::body::object")]
    owner: OwnerIn,
}

/// The org's owner: its super admin.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnerIn {
    #[schema(pattern = "^[A-Za-z0-9^@_]{5,20}$")]
    login_id: String,
    /// 1-100 characters (surrounding spaces trimmed), no control characters.
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// A mail address (at most 254 characters).
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// 3-32 characters of digits, spaces and `+ - ( ) .`, at least 3 digits.
    #[serde(default)]
    #[schema(pattern = "^\\s*[0-9 +().-]{3,32}\\s*$")]
    phone: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = Org)]
pub struct OrgOut {
    id: String,
    name: String,
    region: String,
    locale: String,
    timezone: String,
    currency: String,
    created_at: String,
    /// Only in the answer to create.
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<MemberOut>,
}

impl OrgOut {
    fn new(app: &App, o: Org, owner: Option<Member>) -> Self {
        Self {
            timezone: crate::flows::payments::org_zone(app, &o).name().to_string(),
            currency: crate::flows::payments::org_currency(app, &o)
                .code()
                .to_string(),
            id: o.id,
            name: o.name,
            region: o.region,
            locale: o.locale,
            created_at: time(o.created_at),
            owner: owner.map(MemberOut::from),
        }
    }
}

/// A region with a calendar, or 422 naming the known ones.
pub fn parse_region(app: &App, s: &str) -> Result<Region, ApiError> {
    let known = || {
        app.calendars
            .regions()
            .map(|r| r.as_str().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let region = Region::parse(s).map_err(|_| {
        ApiError::invalid(format!(
            "region: {s:?} is not a region; use one of {}",
            known()
        ))
    })?;
    if app.calendars.get(&region).is_none() {
        return Err(ApiError::invalid(format!(
            "region: no calendar for {s:?}; use one of {}",
            known()
        )));
    }
    Ok(region)
}

/// Create an org with its owner (the super admin) and the built-in roles
/// (platform key).
#[utoipa::path(
    post,
    path = "/v1/orgs",
    operation_id = "createOrg",
    tag = "orgs",
    request_body(content = CreateOrg, example = json!({
        "name": "Acme Trading", "region": "cn", "locale": "zh-CN",
        "owner": {"login_id": "acme_owner", "name": "Li Wei", "email": "li@acme.example"}
    })),
    responses(
        (status = 201, description = "Created, with its owner", body = OrgOut,
            links(("GetOrg" = (operation_id = "getOrg", parameters(("org" = "$response.body#/id")))),
                  ("CreateOrgKey" = (operation_id = "createOrgKey", parameters(("org" = "$response.body#/id")))))),
    ),
)]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    body: JsonBody<CreateOrg>,
) -> ApiResult<(StatusCode, Json<OrgOut>)> {
    caller.require_platform()?;
    let b = body.value;
    let name = parse_name("name", &b.name)?;
    let region = parse_region(&app, &b.region)?;
    let locale = Locale::parse(&b.locale)?;
    let timezone = match b.timezone.as_deref() {
        Some(z) => parse_zone("timezone", z)?,
        None => app
            .calendars
            .get(&region)
            .map(|c| c.tz())
            .unwrap_or(chrono_tz::UTC),
    };
    let currency = Currency::parse(
        "currency",
        b.currency
            .as_deref()
            .unwrap_or(&app.config.payments.currency),
    )?;
    let login_id = LoginId::parse(&b.owner.login_id)?;
    let owner_name = parse_name("owner.name", &b.owner.name)?;
    let email = Email::parse(&b.owner.email)?;
    let phone = b
        .owner
        .phone
        .as_deref()
        .map(super::members::parse_phone)
        .transpose()?;

    let now = app.now_ms();
    let org = Org {
        id: new_id(),
        name,
        region: region.as_str().to_string(),
        locale: locale.as_str().to_string(),
        created_at: now,
        currency: Some(currency.code().to_string()),
        timezone: Some(timezone.name().to_string()),
    };
    let owner = Member {
        id: new_id(),
        org_id: org.id.clone(),
        login_id: login_id.as_str().to_string(),
        name: owner_name,
        email: email.as_str().to_string(),
        phone,
        kind: MemberKind::SuperAdmin.as_str().to_string(),
        role: None,
        locale: org.locale.clone(),
        status: store::members::ACTIVE.to_string(),
        created_at: now,
        updated_at: now,
        disabled_at: None,
    };
    let mut tx = app.db.begin().await?;
    store::orgs::insert(&mut tx, &org).await?;
    store::members::insert(&mut tx, &owner).await?;
    store::roles::insert_builtins(&mut tx, &org.id, now).await?;
    let actor = caller.actor();
    audit::operation(
        &mut tx,
        audit::Operation {
            org_id: &org.id,
            actor: &actor,
            action: "org.create",
            target: Some(&org.id),
            detail: json!({ "name": org.name, "region": org.region, "owner": owner.id,
                            "timezone": org.timezone, "currency": org.currency }),
            at: now,
        },
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(OrgOut::new(&app, org, Some(owner))),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/orgs/{org}",
    operation_id = "getOrg",
    tag = "orgs",
    params(("org" = String, Path, description = "The org's id")),
    responses((status = 200, description = "The org", body = OrgOut)),
)]
pub async fn get(
    State(app): State<App>,
    caller: Caller,
    ApiPath(org_id): ApiPath<String>,
) -> ApiResult<Json<OrgOut>> {
    let org = caller.org(&app, &org_id).await?;
    Ok(Json(OrgOut::new(&app, org, None)))
}

#[derive(Serialize, ToSchema)]
#[schema(as = OrgKey)]
pub struct KeyOut {
    id: String,
    /// The key itself, shown this once.
    key: String,
    #[schema(value_type = String, pattern = "^org$")]
    scope: &'static str,
    org_id: String,
    created_at: String,
}

/// A new key for the org, shown once (platform keys only).
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/keys",
    operation_id = "createOrgKey",
    tag = "orgs",
    params(("org" = String, Path, description = "The org's id")),
    responses((status = 201, description = "The new key, shown once", body = KeyOut)),
)]
pub async fn create_key(
    State(app): State<App>,
    caller: Caller,
    ApiPath(org_id): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<KeyOut>)> {
    caller.require_platform()?;
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    if !store::orgs::lock(&mut tx, &org_id).await? {
        return Err(ApiError::not_found("org"));
    }
    let (id, key) = store::keys::insert(&mut tx, KeyScope::Org, Some(&org_id), now).await?;
    let actor = caller.actor();
    audit::operation(
        &mut tx,
        audit::Operation {
            org_id: &org_id,
            actor: &actor,
            action: "key.create",
            target: Some(&id),
            detail: json!({ "scope": "org" }),
            at: now,
        },
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(KeyOut {
            id,
            key,
            scope: "org",
            org_id,
            created_at: time(now),
        }),
    ))
}
