//! Webhook endpoints, their delivery log and redelivery (DESIGN "Webhooks").
//!
//! An org's endpoints live under `/v1/orgs/{org}/webhooks` (its org key, or a
//! platform key) and get that org's events; platform-wide endpoints live
//! under `/v1/webhooks` (platform key only) and get the events of every org.
//! The signing secret is answered once, on create and on rotation. Every
//! change writes an audit row with `{"before", "after"}`.
use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::{Caller, body::JsonBody, json_column, new_id, opt_time, page, time};
use crate::{
    app::App,
    db::Tx,
    domain::ids::{Invalid, parse_text},
    http::{
        ApiError, ApiResult,
        extract::{ApiPath, ApiQuery},
    },
    on_db, on_tx,
    store::audit,
    webhooks::{EVENT_TYPES, deliver, secret, target},
};

/// Most endpoints one org (or the platform) may have.
pub const MAX_ENDPOINTS: i64 = 20;
pub const MAX_DESCRIPTION: usize = 500;

/// Whose endpoints a route manages.
#[derive(Debug, Clone)]
enum Owner {
    Org(String),
    Platform,
}

impl Owner {
    /// The value compared with `COALESCE(org_id, '')`.
    fn key(&self) -> &str {
        match self {
            Owner::Org(o) => o,
            Owner::Platform => "",
        }
    }
    fn org_id(&self) -> Option<&str> {
        match self {
            Owner::Org(o) => Some(o),
            Owner::Platform => None,
        }
    }
    fn audit_org(&self) -> &str {
        self.org_id().unwrap_or(audit::PLATFORM)
    }
}

async fn org_owner(app: &App, caller: &Caller, org_id: &str) -> ApiResult<Owner> {
    Ok(Owner::Org(caller.org(app, org_id).await?.id))
}

fn platform_owner(caller: &Caller) -> ApiResult<Owner> {
    caller.require_platform()?;
    Ok(Owner::Platform)
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct EndpointRow {
    id: String,
    org_id: Option<String>,
    url: String,
    events: String,
    description: String,
    enabled: bool,
    disabled_reason: Option<String>,
    disabled_at: Option<i64>,
    previous_expires_at: Option<i64>,
    failing_since: Option<i64>,
    last_success_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

const ENDPOINT_COLUMNS: &str = "id, org_id, url, events, description, enabled, disabled_reason, disabled_at, \
     previous_expires_at, failing_since, last_success_at, created_at, updated_at";

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WebhookEndpoint)]
pub struct EndpointOut {
    id: String,
    /// Null for a platform-wide endpoint.
    org_id: Option<String>,
    url: String,
    /// Event types, or `["*"]` for all.
    #[schema(value_type = Vec<String>)]
    events: Value,
    description: String,
    enabled: bool,
    /// Why approvald disabled it (`gone`, `failing`).
    disabled_reason: Option<String>,
    disabled_at: Option<String>,
    /// Until then the secret before the last rotation signs too.
    previous_secret_expires_at: Option<String>,
    failing_since: Option<String>,
    last_success_at: Option<String>,
    created_at: String,
    updated_at: String,
    /// Only in the answer to create and rotate.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl EndpointOut {
    fn new(r: EndpointRow, now: i64) -> Self {
        Self {
            id: r.id,
            org_id: r.org_id,
            url: r.url,
            events: json_column(&r.events),
            description: r.description,
            enabled: r.enabled,
            disabled_reason: r.disabled_reason,
            disabled_at: opt_time(r.disabled_at),
            previous_secret_expires_at: opt_time(r.previous_expires_at.filter(|&t| t > now)),
            failing_since: opt_time(r.failing_since),
            last_success_at: opt_time(r.last_success_at),
            created_at: time(r.created_at),
            updated_at: time(r.updated_at),
            secret: None,
        }
    }
}

/// The audit view of an endpoint (no secret).
fn audit_view(r: &EndpointRow) -> Value {
    json!({"url": r.url, "events": json_column(&r.events), "description": r.description, "enabled": r.enabled})
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = WebhookCreate)]
pub struct Create {
    /// An `https://` URL of a public host (checked again at each delivery).
    #[schema(example = "https://shop.example.com/hooks/approvald")]
    url: String,
    /// Event types, or `["*"]` for all (the default).
    #[serde(default)]
    #[schema(value_type = Option<Vec<EventType>>, min_items = 1)]
    events: Option<Vec<String>>,
    /// At most 500 characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    description: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
}

/// An event type of [`EVENT_TYPES`], or `*` (all, and alone), surrounding
/// spaces trimmed. Described only: the handler reads plain strings. Its
/// pattern is built from [`EVENT_TYPES`], so a new event type is described
/// as soon as it exists.
pub struct EventType;

impl utoipa::PartialSchema for EventType {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let alternatives: Vec<String> = std::iter::once("\\*".to_string())
            .chain(EVENT_TYPES.iter().map(|e| e.replace('.', "\\.")))
            .collect();
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(format!("^\\s*({})\\s*$", alternatives.join("|"))))
            .description(Some(format!(
                "An event type, or `*` for all (alone): {}",
                EVENT_TYPES.join(", ")
            )))
            .into()
    }
}

impl utoipa::ToSchema for EventType {}

/// Only the fields sent change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = WebhookUpdate)]
pub struct Update {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<EventType>>, min_items = 1)]
    events: Option<Vec<String>>,
    #[serde(default)]
    #[schema(max_length = 500)]
    description: Option<String>,
    /// `true` re-enables an endpoint approvald disabled.
    #[serde(default)]
    enabled: Option<bool>,
}

/// `events`: a non-empty list of known event types, or `["*"]` for all.
fn parse_events(events: Option<Vec<String>>) -> Result<String, Invalid> {
    let list = events.unwrap_or_else(|| vec!["*".into()]);
    if list.is_empty() {
        return Err(Invalid::new(
            "events",
            "must name at least one event type, or be [\"*\"] for all",
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for e in list {
        let e = e.trim().to_string();
        if e == "*" {
            if out.iter().any(|x| x != "*") {
                return Err(Invalid::new("events", "\"*\" (all) stands alone"));
            }
        } else if !EVENT_TYPES.contains(&e.as_str()) {
            return Err(Invalid::new(
                "events",
                format!(
                    "{e:?} is not an event type; use \"*\" or some of: {}",
                    EVENT_TYPES.join(", ")
                ),
            ));
        } else if out.iter().any(|x| x == "*") {
            return Err(Invalid::new("events", "\"*\" (all) stands alone"));
        }
        if !out.contains(&e) {
            out.push(e);
        }
    }
    Ok(serde_json::to_string(&out).unwrap_or_else(|_| "[\"*\"]".into()))
}

/// How long saving an endpoint waits for its name to resolve.
const SAVE_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The URL rules of [`target::check_url`], plus the address check of the
/// name it resolves to now (a name that does not resolve yet, or not within
/// [`SAVE_LOOKUP_TIMEOUT`], is accepted; delivery checks again), so a slow
/// resolver never holds the call for its own retry timeouts.
async fn parse_url(app: &App, raw: &str) -> ApiResult<String> {
    let cfg = &app.config.webhooks;
    let url = target::check_url(raw, cfg).map_err(|b| ApiError::invalid(format!("url: {b}")))?;
    if let Some(url::Host::Domain(d)) = url.host()
        && let Ok(Err(target::ResolveError::Blocked(b))) = tokio::time::timeout(
            SAVE_LOOKUP_TIMEOUT,
            target::resolve_checked(
                d,
                url.port_or_known_default().unwrap_or(443),
                cfg.allow_private,
            ),
        )
        .await
    {
        return Err(ApiError::invalid(format!("url: {b}")));
    }
    Ok(url.to_string())
}

fn parse_description(d: Option<String>) -> Result<String, Invalid> {
    parse_text(
        "description",
        d.as_deref().unwrap_or(""),
        MAX_DESCRIPTION,
        false,
    )
}

async fn load(tx: &mut Tx, owner: &Owner, id: &str) -> ApiResult<EndpointRow> {
    let sql = format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints \
         WHERE id = $1 AND COALESCE(org_id, '') = $2 AND deleted_at IS NULL"
    );
    let row = on_tx!(tx, |c| sqlx::query_as::<_, EndpointRow>(
        sqlx::AssertSqlSafe(sql.as_str())
    )
    .bind(id)
    .bind(owner.key())
    .fetch_optional(c)
    .await)?;
    row.ok_or_else(|| ApiError::not_found("webhook endpoint"))
}

async fn create(
    app: App,
    caller: Caller,
    owner: Owner,
    b: Create,
) -> ApiResult<(StatusCode, Json<EndpointOut>)> {
    // The cheap checks first: bad input never waits for a DNS lookup.
    let events = parse_events(b.events)?;
    let description = parse_description(b.description)?;
    let url = parse_url(&app, &b.url).await?;
    let enabled = b.enabled.unwrap_or(true);
    let sealer = secret::Sealer::from_config(&app.config.webhooks).map_err(ApiError::internal)?;
    let id = new_id();
    let plain = secret::generate().map_err(ApiError::internal)?;
    let sealed = sealer.seal(&id, &plain).map_err(ApiError::internal)?;
    if !sealer.is_sealing() {
        tracing::warn!(
            endpoint_id = %id,
            "webhook secret stored unsealed: set webhooks.secret_key (base64 of 32 random bytes) to seal endpoint secrets at rest"
        );
    }
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    let count: i64 = on_tx!(&mut tx, |c| {
        sqlx::query_scalar(
        "SELECT COUNT(*) FROM webhook_endpoints WHERE COALESCE(org_id, '') = $1 AND deleted_at IS NULL"
    )
    .bind(owner.key())
    .fetch_one(c)
    .await
    })?;
    if count >= MAX_ENDPOINTS {
        return Err(ApiError::conflict(format!(
            "at most {MAX_ENDPOINTS} webhook endpoints; delete one first"
        )));
    }
    on_tx!(&mut tx, |c| {
        sqlx::query(
        "INSERT INTO webhook_endpoints (id, org_id, url, events, description, enabled, secret, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)"
    )
    .bind(&id)
    .bind(owner.org_id())
    .bind(&url)
    .bind(&events)
    .bind(&description)
    .bind(enabled)
    .bind(&sealed)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    let row = load(&mut tx, &owner, &id).await?;
    audit::operation(
        &mut tx,
        audit::Operation {
            org_id: owner.audit_org(),
            actor: &caller.actor(),
            action: "webhook.create",
            target: Some(&id),
            detail: json!({"before": null, "after": audit_view(&row)}),
            at: now,
        },
    )
    .await?;
    tx.commit().await?;
    let mut out = EndpointOut::new(row, now);
    out.secret = Some(plain);
    Ok((StatusCode::CREATED, Json(out)))
}

async fn list(app: App, owner: Owner) -> ApiResult<Json<page::Page<EndpointOut>>> {
    let sql = format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints \
         WHERE COALESCE(org_id, '') = $1 AND deleted_at IS NULL ORDER BY created_at, id"
    );
    let rows = on_db!(&app.db, |p| sqlx::query_as::<_, EndpointRow>(
        sqlx::AssertSqlSafe(sql.as_str())
    )
    .bind(owner.key())
    .fetch_all(p)
    .await)?;
    let now = app.now_ms();
    Ok(Json(page::Page {
        items: rows.into_iter().map(|r| EndpointOut::new(r, now)).collect(),
        next_cursor: None,
    }))
}

async fn get(app: App, owner: Owner, id: String) -> ApiResult<Json<EndpointOut>> {
    let mut tx = app.db.begin().await?;
    let row = load(&mut tx, &owner, &id).await?;
    tx.rollback().await?;
    Ok(Json(EndpointOut::new(row, app.now_ms())))
}

async fn update(
    app: App,
    caller: Caller,
    owner: Owner,
    id: String,
    b: Update,
) -> ApiResult<Json<EndpointOut>> {
    let events = match b.events {
        Some(e) => Some(parse_events(Some(e))?),
        None => None,
    };
    let description = match b.description {
        Some(d) => Some(parse_description(Some(d))?),
        None => None,
    };
    let url = match &b.url {
        Some(u) => Some(parse_url(&app, u).await?),
        None => None,
    };
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    let before = load(&mut tx, &owner, &id).await?;
    let enabling = b.enabled == Some(true) && !before.enabled;
    on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE webhook_endpoints SET url = COALESCE($2, url), events = COALESCE($3, events), \
             description = COALESCE($4, description), enabled = COALESCE($5, enabled), \
             disabled_reason = CASE WHEN $6 THEN NULL ELSE disabled_reason END, \
             disabled_at = CASE WHEN $6 THEN NULL ELSE disabled_at END, \
             failing_since = CASE WHEN $6 THEN NULL ELSE failing_since END, \
             updated_at = $7 \
         WHERE id = $1"
    )
    .bind(&id)
    .bind(&url)
    .bind(&events)
    .bind(&description)
    .bind(b.enabled)
    .bind(enabling)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    let after = load(&mut tx, &owner, &id).await?;
    audit::operation(
        &mut tx,
        audit::Operation {
            org_id: owner.audit_org(),
            actor: &caller.actor(),
            action: "webhook.update",
            target: Some(&id),
            detail: json!({"before": audit_view(&before), "after": audit_view(&after)}),
            at: now,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Json(EndpointOut::new(after, now)))
}

/// Remove an endpoint: it gets nothing more; its row and log stay.
async fn delete(app: App, caller: Caller, owner: Owner, id: String) -> ApiResult<StatusCode> {
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    let before = load(&mut tx, &owner, &id).await?;
    on_tx!(&mut tx, |c| {
        sqlx::query(
        "UPDATE webhook_endpoints SET deleted_at = $2, enabled = FALSE, updated_at = $2 WHERE id = $1"
    )
    .bind(&id)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    audit::operation(
        &mut tx,
        audit::Operation {
            org_id: owner.audit_org(),
            actor: &caller.actor(),
            action: "webhook.delete",
            target: Some(&id),
            detail: json!({"before": audit_view(&before), "after": null}),
            at: now,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RotateQuery {
    /// How long the old secret keeps signing (0-720); `webhooks.rotation_overlap_hours` by default.
    #[serde(default)]
    #[param(minimum = 0, maximum = 720)]
    overlap_hours: Option<u64>,
}

/// A new secret, answered once; the old one signs too for the overlap.
async fn rotate(
    app: App,
    caller: Caller,
    owner: Owner,
    id: String,
    q: RotateQuery,
) -> ApiResult<Json<EndpointOut>> {
    let hours = q
        .overlap_hours
        .unwrap_or(app.config.webhooks.rotation_overlap_hours);
    if hours > 24 * 30 {
        return Err(ApiError::bad_request("overlap_hours: must be 0-720"));
    }
    let sealer = secret::Sealer::from_config(&app.config.webhooks).map_err(ApiError::internal)?;
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    load(&mut tx, &owner, &id).await?;
    let current: String = on_tx!(&mut tx, |c| sqlx::query_scalar(
        "SELECT secret FROM webhook_endpoints WHERE id = $1"
    )
    .bind(&id)
    .fetch_one(c)
    .await)?;
    // Re-seal the old secret (it may be stored unsealed from before a key was set).
    let old = sealer
        .open(&id, &current)
        .and_then(|s| sealer.seal(&id, &s))
        .map_err(ApiError::internal)?;
    let plain = secret::generate().map_err(ApiError::internal)?;
    let sealed = sealer.seal(&id, &plain).map_err(ApiError::internal)?;
    let expires = (hours > 0).then(|| now + hours as i64 * 3_600_000);
    on_tx!(&mut tx, |c| {
        sqlx::query(
        "UPDATE webhook_endpoints SET secret = $2, previous_secret = $3, previous_expires_at = $4, updated_at = $5 \
         WHERE id = $1"
    )
    .bind(&id)
    .bind(&sealed)
    .bind(expires.map(|_| old.clone()))
    .bind(expires)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    let row = load(&mut tx, &owner, &id).await?;
    audit::operation(
        &mut tx,
        audit::Operation {
            org_id: owner.audit_org(),
            actor: &caller.actor(),
            action: "webhook.rotate_secret",
            target: Some(&id),
            detail: json!({"before": null, "after": {"previous_secret_expires_at": opt_time(expires)}}),
            at: now,
        },
    )
    .await?;
    tx.commit().await?;
    let mut out = EndpointOut::new(row, now);
    out.secret = Some(plain);
    Ok(Json(out))
}

#[derive(Debug, sqlx::FromRow)]
struct DeliveryRow {
    id: String,
    event_id: String,
    event_type: String,
    status: String,
    attempts: i64,
    next_attempt_at: Option<i64>,
    last_status: Option<i64>,
    last_error: Option<String>,
    delivered_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, ev.type AS event_type, d.status, d.attempts, d.next_attempt_at, \
     d.last_status, d.last_error, d.delivered_at, d.created_at, d.updated_at";

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WebhookDelivery)]
pub struct DeliveryOut {
    id: String,
    /// The `webhook-id` the receiver saw.
    event_id: String,
    event_type: String,
    #[schema(value_type = String, pattern = "^(pending|delivered|failed)$")]
    status: String,
    attempts: i64,
    next_attempt_at: Option<String>,
    last_response_status: Option<i64>,
    last_error: Option<String>,
    delivered_at: Option<String>,
    created_at: String,
    updated_at: String,
    /// The event as sent (one delivery only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    event: Option<Value>,
    /// Every attempt (one delivery only).
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt_log: Option<Vec<AttemptOut>>,
}

impl From<DeliveryRow> for DeliveryOut {
    fn from(d: DeliveryRow) -> Self {
        Self {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type,
            status: d.status,
            attempts: d.attempts,
            next_attempt_at: opt_time(d.next_attempt_at),
            last_response_status: d.last_status,
            last_error: d.last_error,
            delivered_at: opt_time(d.delivered_at),
            created_at: time(d.created_at),
            updated_at: time(d.updated_at),
            event: None,
            attempt_log: None,
        }
    }
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct AttemptRow {
    attempt: i64,
    started_at: i64,
    duration_ms: i64,
    response_status: Option<i64>,
    outcome: String,
    error: Option<String>,
    response_excerpt: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WebhookAttempt)]
pub struct AttemptOut {
    attempt: i64,
    started_at: String,
    duration_ms: i64,
    response_status: Option<i64>,
    /// delivered | http_error | gone | timeout | refused | blocked | error
    outcome: String,
    error: Option<String>,
    /// The first bytes of the response body.
    response_excerpt: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// Only deliveries in this status (empty: any).
    #[serde(default)]
    #[param(pattern = "^(|pending|delivered|failed)$")]
    status: Option<String>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    #[param(max_length = 200)]
    cursor: Option<String>,
    /// 1-100, default 20.
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// An endpoint's deliveries, newest first.
async fn deliveries(
    app: App,
    owner: Owner,
    id: String,
    q: DeliveriesQuery,
) -> ApiResult<Json<page::Page<DeliveryOut>>> {
    let mut tx = app.db.begin().await?;
    load(&mut tx, &owner, &id).await?;
    tx.rollback().await?;
    let status = q.status.filter(|s| !s.is_empty());
    if let Some(s) = &status
        && !["pending", "delivered", "failed"].contains(&s.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "status: {s:?}: use pending, delivered or failed"
        )));
    }
    let limit = page::limit(q.limit)?;
    let before = q.cursor.as_deref().map(page::decode).transpose()?;
    let (b_at, b_id) = before.unwrap_or((i64::MAX, String::new()));
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN webhook_events ev ON ev.id = d.event_id \
         WHERE d.endpoint_id = $1 AND ($2 = '' OR d.status = $2) \
           AND (d.created_at < $3 OR (d.created_at = $3 AND ($4 = '' OR d.id < $4))) \
         ORDER BY d.created_at DESC, d.id DESC LIMIT $5"
    );
    let rows = on_db!(&app.db, |p| sqlx::query_as::<_, DeliveryRow>(
        sqlx::AssertSqlSafe(sql.as_str())
    )
    .bind(&id)
    .bind(status.as_deref().unwrap_or(""))
    .bind(b_at)
    .bind(&b_id)
    .bind(limit + 1)
    .fetch_all(p)
    .await)?;
    Ok(Json(page::paginate(
        rows,
        limit,
        |r| (r.created_at, r.id.clone()),
        DeliveryOut::from,
    )))
}

async fn load_delivery(
    app: &App,
    endpoint_id: &str,
    delivery_id: &str,
) -> ApiResult<(DeliveryRow, String)> {
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS}, ev.body FROM webhook_deliveries d JOIN webhook_events ev ON ev.id = d.event_id \
         WHERE d.id = $1 AND d.endpoint_id = $2"
    );
    #[derive(sqlx::FromRow)]
    struct WithBody {
        #[sqlx(flatten)]
        d: DeliveryRow,
        body: String,
    }
    let row = on_db!(&app.db, |p| sqlx::query_as::<_, WithBody>(
        sqlx::AssertSqlSafe(sql.as_str())
    )
    .bind(delivery_id)
    .bind(endpoint_id)
    .fetch_optional(p)
    .await)?;
    row.map(|r| (r.d, r.body))
        .ok_or_else(|| ApiError::not_found("delivery"))
}

/// One delivery with its event and every attempt.
async fn delivery(
    app: App,
    owner: Owner,
    id: String,
    delivery_id: String,
) -> ApiResult<Json<DeliveryOut>> {
    let mut tx = app.db.begin().await?;
    load(&mut tx, &owner, &id).await?;
    tx.rollback().await?;
    let (d, body) = load_delivery(&app, &id, &delivery_id).await?;
    let attempts = on_db!(&app.db, |p| {
        sqlx::query_as::<_, AttemptRow>(
        "SELECT attempt, started_at, duration_ms, response_status, outcome, error, response_excerpt \
         FROM webhook_attempts WHERE delivery_id = $1 ORDER BY attempt"
    )
    .bind(&delivery_id)
    .fetch_all(p)
    .await
    })?;
    let mut out = DeliveryOut::from(d);
    out.event = Some(json_column(&body));
    out.attempt_log = Some(
        attempts
            .into_iter()
            .map(|a| AttemptOut {
                attempt: a.attempt,
                started_at: time(a.started_at),
                duration_ms: a.duration_ms,
                response_status: a.response_status,
                outcome: a.outcome,
                error: a.error,
                response_excerpt: a.response_excerpt,
            })
            .collect(),
    );
    Ok(Json(out))
}

/// Deliver a delivered or failed event again, with a fresh retry schedule
/// (same `webhook-id`). 409 while it is still pending or the endpoint is
/// disabled.
async fn redeliver(
    app: App,
    caller: Caller,
    owner: Owner,
    id: String,
    delivery_id: String,
) -> ApiResult<(StatusCode, Json<DeliveryOut>)> {
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    let ep = load(&mut tx, &owner, &id).await?;
    if !ep.enabled {
        return Err(ApiError::conflict(
            "the endpoint is disabled; enable it (PATCH {\"enabled\": true}) before redelivering",
        ));
    }
    let attempts: Option<(String, i64)> = on_tx!(&mut tx, |c| sqlx::query_as(
        "SELECT status, attempts FROM webhook_deliveries WHERE id = $1 AND endpoint_id = $2"
    )
    .bind(&delivery_id)
    .bind(&id)
    .fetch_optional(c)
    .await)?;
    let Some((status, attempts)) = attempts else {
        return Err(ApiError::not_found("delivery"));
    };
    let moved = on_tx!(&mut tx, |c| {
        sqlx::query(
        "UPDATE webhook_deliveries SET status = 'pending', round_start = attempts, next_attempt_at = $3, updated_at = $3 \
         WHERE id = $1 AND endpoint_id = $2 AND status <> 'pending'"
    )
    .bind(&delivery_id)
    .bind(&id)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    if moved == 0 {
        return Err(ApiError::conflict(format!(
            "the delivery is {status}; it is still being attempted"
        )));
    }
    deliver::push(&app, &mut tx, &delivery_id, attempts + 1, None).await?;
    audit::operation(
        &mut tx,
        audit::Operation {
            org_id: owner.audit_org(),
            actor: &caller.actor(),
            action: "webhook.redeliver",
            target: Some(&delivery_id),
            detail: json!({"before": {"status": status}, "after": {"status": "pending"}, "endpoint": id}),
            at: now,
        },
    )
    .await?;
    tx.commit().await?;
    let (d, _) = load_delivery(&app, &id, &delivery_id).await?;
    Ok((StatusCode::ACCEPTED, Json(DeliveryOut::from(d))))
}

// ---- org routes: /v1/orgs/{org}/webhooks ----

/// Register an endpoint; its signing secret is in this answer only. An org's endpoint.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/webhooks",
    operation_id = "orgCreateWebhook",
    tag = "webhooks",
    params(("org" = String, Path, description = "The org's id")),
    request_body(content = Create, example = json!({"url": "https://shop.example.com/hooks/approvald", "events": ["request.approved", "request.rejected"]})),
    responses(
        (status = 201, description = "Created, with its `secret` (shown once)", body = EndpointOut, links(("GetWebhook" = (operation_id = "orgGetWebhook", parameters(("org" = "$request.path.org"), ("id" = "$response.body#/id")))))),
        (status = 409, description = "The owner has the most endpoints allowed", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn org_create(
    State(app): State<App>,
    caller: Caller,
    ApiPath(org): ApiPath<String>,
    body: JsonBody<Create>,
) -> ApiResult<(StatusCode, Json<EndpointOut>)> {
    let owner = org_owner(&app, &caller, &org).await?;
    create(app, caller, owner, body.value).await
}

/// Every endpoint. An org's endpoint.
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/webhooks",
    operation_id = "orgListWebhooks",
    tag = "webhooks",
    params(("org" = String, Path, description = "The org's id")),
    responses((status = 200, description = "Every endpoint (one page)", body = page::Page<EndpointOut>)),
)]
pub async fn org_list(
    State(app): State<App>,
    caller: Caller,
    ApiPath(org): ApiPath<String>,
) -> ApiResult<Json<page::Page<EndpointOut>>> {
    let owner = org_owner(&app, &caller, &org).await?;
    list(app, owner).await
}

/// One endpoint. An org's endpoint.
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/webhooks/{id}",
    operation_id = "orgGetWebhook",
    tag = "webhooks",
    params(("org" = String, Path, description = "The org's id"), ("id" = String, Path, description = "The endpoint's id")),
    responses((status = 200, description = "The endpoint", body = EndpointOut)),
)]
pub async fn org_get(
    State(app): State<App>,
    caller: Caller,
    ApiPath((org, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<EndpointOut>> {
    let owner = org_owner(&app, &caller, &org).await?;
    get(app, owner, id).await
}

/// Change an endpoint (`{"enabled": true}` re-enables it). An org's endpoint.
#[utoipa::path(
    patch,
    path = "/v1/orgs/{org}/webhooks/{id}",
    operation_id = "orgUpdateWebhook",
    tag = "webhooks",
    params(("org" = String, Path, description = "The org's id"), ("id" = String, Path, description = "The endpoint's id")),
    request_body = Update,
    responses((status = 200, description = "The endpoint as changed", body = EndpointOut)),
)]
pub async fn org_update(
    State(app): State<App>,
    caller: Caller,
    ApiPath((org, id)): ApiPath<(String, String)>,
    body: JsonBody<Update>,
) -> ApiResult<Json<EndpointOut>> {
    let owner = org_owner(&app, &caller, &org).await?;
    update(app, caller, owner, id, body.value).await
}

/// Delete an endpoint: nothing more is delivered to it. An org's endpoint.
#[utoipa::path(
    delete,
    path = "/v1/orgs/{org}/webhooks/{id}",
    operation_id = "orgDeleteWebhook",
    tag = "webhooks",
    params(("org" = String, Path, description = "The org's id"), ("id" = String, Path, description = "The endpoint's id")),
    responses((status = 204, description = "Deleted")),
)]
pub async fn org_delete(
    State(app): State<App>,
    caller: Caller,
    ApiPath((org, id)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let owner = org_owner(&app, &caller, &org).await?;
    delete(app, caller, owner, id).await
}

/// A new signing secret, shown once; the old one keeps signing for the overlap. An org's endpoint.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/webhooks/{id}/rotate-secret",
    operation_id = "orgRotateWebhookSecret",
    tag = "webhooks",
    params(("org" = String, Path, description = "The org's id"), ("id" = String, Path, description = "The endpoint's id"), RotateQuery),
    responses((status = 200, description = "The endpoint with its new `secret`", body = EndpointOut)),
)]
pub async fn org_rotate(
    State(app): State<App>,
    caller: Caller,
    ApiPath((org, id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<RotateQuery>,
) -> ApiResult<Json<EndpointOut>> {
    let owner = org_owner(&app, &caller, &org).await?;
    rotate(app, caller, owner, id, q).await
}

/// The endpoint's deliveries, newest first. An org's endpoint.
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/webhooks/{id}/deliveries",
    operation_id = "orgListWebhookDeliveries",
    tag = "webhooks",
    params(("org" = String, Path, description = "The org's id"), ("id" = String, Path, description = "The endpoint's id"), DeliveriesQuery),
    responses((status = 200, description = "One page", body = page::Page<DeliveryOut>)),
)]
pub async fn org_deliveries(
    State(app): State<App>,
    caller: Caller,
    ApiPath((org, id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> ApiResult<Json<page::Page<DeliveryOut>>> {
    let owner = org_owner(&app, &caller, &org).await?;
    deliveries(app, owner, id, q).await
}

/// One delivery with its event and every attempt. An org's endpoint.
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/webhooks/{id}/deliveries/{delivery}",
    operation_id = "orgGetWebhookDelivery",
    tag = "webhooks",
    params(("org" = String, Path, description = "The org's id"), ("id" = String, Path, description = "The endpoint's id"), ("delivery" = String, Path, description = "The delivery's id")),
    responses((status = 200, description = "The delivery", body = DeliveryOut)),
)]
pub async fn org_delivery(
    State(app): State<App>,
    caller: Caller,
    ApiPath((org, id, delivery_id)): ApiPath<(String, String, String)>,
) -> ApiResult<Json<DeliveryOut>> {
    let owner = org_owner(&app, &caller, &org).await?;
    delivery(app, owner, id, delivery_id).await
}

/// Deliver a delivered or failed delivery again (same `webhook-id`, fresh retry schedule). An org's endpoint.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/webhooks/{id}/deliveries/{delivery}/redeliver",
    operation_id = "orgRedeliverWebhook",
    tag = "webhooks",
    params(("org" = String, Path, description = "The org's id"), ("id" = String, Path, description = "The endpoint's id"), ("delivery" = String, Path, description = "The delivery's id")),
    responses(
        (status = 202, description = "Queued again", body = DeliveryOut),
        (status = 409, description = "Still pending, or the endpoint is disabled", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn org_redeliver(
    State(app): State<App>,
    caller: Caller,
    ApiPath((org, id, delivery_id)): ApiPath<(String, String, String)>,
) -> ApiResult<(StatusCode, Json<DeliveryOut>)> {
    let owner = org_owner(&app, &caller, &org).await?;
    redeliver(app, caller, owner, id, delivery_id).await
}

// ---- platform-wide routes: /v1/webhooks (platform key) ----

/// Register an endpoint; its signing secret is in this answer only. A platform-wide endpoint (events of every org; platform key).
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    operation_id = "platformCreateWebhook",
    tag = "webhooks",
    request_body(content = Create, example = json!({"url": "https://shop.example.com/hooks/approvald", "events": ["request.approved", "request.rejected"]})),
    responses(
        (status = 201, description = "Created, with its `secret` (shown once)", body = EndpointOut, links(("GetWebhook" = (operation_id = "platformGetWebhook", parameters(("id" = "$response.body#/id")))))),
        (status = 409, description = "The owner has the most endpoints allowed", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn platform_create(
    State(app): State<App>,
    caller: Caller,
    body: JsonBody<Create>,
) -> ApiResult<(StatusCode, Json<EndpointOut>)> {
    let owner = platform_owner(&caller)?;
    create(app, caller, owner, body.value).await
}

/// Every endpoint. A platform-wide endpoint (events of every org; platform key).
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    operation_id = "platformListWebhooks",
    tag = "webhooks",
    responses((status = 200, description = "Every endpoint (one page)", body = page::Page<EndpointOut>)),
)]
pub async fn platform_list(
    State(app): State<App>,
    caller: Caller,
) -> ApiResult<Json<page::Page<EndpointOut>>> {
    let owner = platform_owner(&caller)?;
    list(app, owner).await
}

/// One endpoint. A platform-wide endpoint (events of every org; platform key).
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    operation_id = "platformGetWebhook",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id")),
    responses((status = 200, description = "The endpoint", body = EndpointOut)),
)]
pub async fn platform_get(
    State(app): State<App>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<EndpointOut>> {
    let owner = platform_owner(&caller)?;
    get(app, owner, id).await
}

/// Change an endpoint (`{"enabled": true}` re-enables it). A platform-wide endpoint (events of every org; platform key).
#[utoipa::path(
    patch,
    path = "/v1/webhooks/{id}",
    operation_id = "platformUpdateWebhook",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id")),
    request_body = Update,
    responses((status = 200, description = "The endpoint as changed", body = EndpointOut)),
)]
pub async fn platform_update(
    State(app): State<App>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    body: JsonBody<Update>,
) -> ApiResult<Json<EndpointOut>> {
    let owner = platform_owner(&caller)?;
    update(app, caller, owner, id, body.value).await
}

/// Delete an endpoint: nothing more is delivered to it. A platform-wide endpoint (events of every org; platform key).
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    operation_id = "platformDeleteWebhook",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id")),
    responses((status = 204, description = "Deleted")),
)]
pub async fn platform_delete(
    State(app): State<App>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let owner = platform_owner(&caller)?;
    delete(app, caller, owner, id).await
}

/// A new signing secret, shown once; the old one keeps signing for the overlap. A platform-wide endpoint (events of every org; platform key).
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/rotate-secret",
    operation_id = "platformRotateWebhookSecret",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id"), RotateQuery),
    responses((status = 200, description = "The endpoint with its new `secret`", body = EndpointOut)),
)]
pub async fn platform_rotate(
    State(app): State<App>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<RotateQuery>,
) -> ApiResult<Json<EndpointOut>> {
    let owner = platform_owner(&caller)?;
    rotate(app, caller, owner, id, q).await
}

/// The endpoint's deliveries, newest first. A platform-wide endpoint (events of every org; platform key).
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries",
    operation_id = "platformListWebhookDeliveries",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id"), DeliveriesQuery),
    responses((status = 200, description = "One page", body = page::Page<DeliveryOut>)),
)]
pub async fn platform_deliveries(
    State(app): State<App>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> ApiResult<Json<page::Page<DeliveryOut>>> {
    let owner = platform_owner(&caller)?;
    deliveries(app, owner, id, q).await
}

/// One delivery with its event and every attempt. A platform-wide endpoint (events of every org; platform key).
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries/{delivery}",
    operation_id = "platformGetWebhookDelivery",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id"), ("delivery" = String, Path, description = "The delivery's id")),
    responses((status = 200, description = "The delivery", body = DeliveryOut)),
)]
pub async fn platform_delivery(
    State(app): State<App>,
    caller: Caller,
    ApiPath((id, delivery_id)): ApiPath<(String, String)>,
) -> ApiResult<Json<DeliveryOut>> {
    let owner = platform_owner(&caller)?;
    delivery(app, owner, id, delivery_id).await
}

/// Deliver a delivered or failed delivery again (same `webhook-id`, fresh retry schedule). A platform-wide endpoint (events of every org; platform key).
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/deliveries/{delivery}/redeliver",
    operation_id = "platformRedeliverWebhook",
    tag = "webhooks",
    params(("id" = String, Path, description = "The endpoint's id"), ("delivery" = String, Path, description = "The delivery's id")),
    responses(
        (status = 202, description = "Queued again", body = DeliveryOut),
        (status = 409, description = "Still pending, or the endpoint is disabled", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn platform_redeliver(
    State(app): State<App>,
    caller: Caller,
    ApiPath((id, delivery_id)): ApiPath<(String, String)>,
) -> ApiResult<(StatusCode, Json<DeliveryOut>)> {
    let owner = platform_owner(&caller)?;
    redeliver(app, caller, owner, id, delivery_id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lists() {
        assert_eq!(parse_events(None).unwrap(), r#"["*"]"#);
        assert_eq!(
            parse_events(Some(vec![
                "request.approved".into(),
                "request.approved".into()
            ]))
            .unwrap(),
            r#"["request.approved"]"#
        );
        assert!(parse_events(Some(vec![])).is_err());
        assert!(parse_events(Some(vec!["request.nope".into()])).is_err());
        assert!(parse_events(Some(vec!["*".into(), "request.approved".into()])).is_err());
        assert!(crate::webhooks::wants(r#"["*"]"#, "grant.revoked"));
        assert!(!crate::webhooks::wants(
            r#"["request.approved"]"#,
            "grant.revoked"
        ));
    }
}
