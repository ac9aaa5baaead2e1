//! Webhooks (DESIGN "Webhooks"): events pushed to the upstream apps'
//! endpoints, signed the Standard Webhooks way, retried for about a day.
//!
//! - [`emit`] is called in the transaction of the change (the outbox
//!   pattern): for every enabled endpoint that wants the event (the org's
//!   own and the platform-wide ones) it writes the event (its exact body), a
//!   `webhook_deliveries` row and its first [`deliver::DeliverJob`]. If the
//!   change rolls back, no event exists; if it commits, the delivery will be
//!   attempted, whatever crashes afterwards (the sweep re-pushes a delivery
//!   whose job a queue lost). An event no endpoint wants is not written (nor
//!   is its payload read): events are only read through their deliveries.
//! - [`deliver`] makes one attempt per job and schedules the next attempt
//!   itself, as a delayed job, on `webhooks.retry_schedule_secs`.
//! - [`secret`] makes, seals and signs with the endpoint secrets; [`target`]
//!   decides where a webhook may go.
//!
//! The body of an event is `{"id", "type", "timestamp", "org_id", "data"}`,
//! `data` being the resource as the API returns it; `webhook-id` is the
//! event id (the same on every attempt and redelivery, so receivers dedupe
//! by it).
use anyhow::Context;
use serde_json::{Value, json};

use crate::{app::App, db::Tx, on_tx};

pub mod deliver;
pub mod secret;
pub mod target;

/// Every event type approvald emits.
pub const EVENT_TYPES: &[&str] = &[
    "request.submitted",
    "request.in_review",
    "request.approved",
    "request.rejected",
    "request.cancelled",
    "request.sla_breached",
    "grant.revoked",
    "member.disabled",
    "member.cleanup_completed",
    "payment.limit_reached",
];

/// A fresh event id (`webhook-id`).
pub fn new_event_id() -> String {
    format!("msg_{}", uuid::Uuid::now_v7().simple())
}

/// Does an endpoint's `events` list (JSON array text) take `event_type`?
pub fn wants(events_json: &str, event_type: &str) -> bool {
    serde_json::from_str::<Vec<String>>(events_json)
        .map(|v| v.iter().any(|e| e == "*" || e == event_type))
        .unwrap_or(false)
}

/// Record event `event_type` of org `org_id` with `payload` (the resource as
/// the API returns it) in `tx`, and queue one delivery per enabled endpoint
/// that wants it (their jobs wake the workers when `tx` commits). An event
/// no endpoint wants is not written: events are only ever read through
/// their deliveries.
pub async fn emit(
    app: &App,
    tx: &mut Tx,
    org_id: &str,
    event_type: &str,
    payload: Value,
    now_ms: i64,
) -> anyhow::Result<()> {
    let endpoints = wanting(tx, org_id, event_type).await?;
    record(app, tx, org_id, event_type, payload, now_ms, &endpoints).await
}

/// The enabled endpoints (the org's own and the platform-wide ones) that
/// take `event_type`, in creation order.
const ENDPOINTS: &str = "SELECT id, events FROM webhook_endpoints \
     WHERE (org_id = $1 OR org_id IS NULL) AND enabled AND deleted_at IS NULL ORDER BY created_at, id";

/// Does any endpoint want `event_type` events of `org_id`? (On the
/// writer's connection, `db::writer`: a caller that gets true writes
/// through the pool, where [`emit_request`] records the event.)
pub fn wanted_sync(
    c: &rusqlite::Connection,
    org_id: &str,
    event_type: &str,
) -> rusqlite::Result<bool> {
    let endpoints =
        crate::db::writer::query_all(c, ENDPOINTS, &[&org_id], |r| r.get::<_, String>(1))?;
    Ok(endpoints.iter().any(|events| wants(events, event_type)))
}

async fn wanting(tx: &mut Tx, org_id: &str, event_type: &str) -> anyhow::Result<Vec<String>> {
    if !EVENT_TYPES.contains(&event_type) {
        anyhow::bail!("unknown webhook event type {event_type:?}");
    }
    let endpoints: Vec<(String, String)> = on_tx!(tx, |c| sqlx::query_as(ENDPOINTS)
        .bind(org_id)
        .fetch_all(c)
        .await)
    .context("reading webhook endpoints")?;
    Ok(endpoints
        .into_iter()
        .filter(|(_, events)| wants(events, event_type))
        .map(|(id, _)| id)
        .collect())
}

/// Write the event and one delivery (and its first job) per endpoint.
async fn record(
    app: &App,
    tx: &mut Tx,
    org_id: &str,
    event_type: &str,
    payload: Value,
    now_ms: i64,
    endpoints: &[String],
) -> anyhow::Result<()> {
    if endpoints.is_empty() {
        return Ok(());
    }
    let id = new_event_id();
    let body = json!({
        "id": id,
        "type": event_type,
        "timestamp": crate::http::api::time(now_ms),
        "org_id": org_id,
        "data": payload,
    })
    .to_string();
    on_tx!(tx, |c| sqlx::query(
        "INSERT INTO webhook_events (id, org_id, type, body, created_at) VALUES ($1, $2, $3, $4, $5)"
    )
    .bind(&id)
    .bind(org_id)
    .bind(event_type)
    .bind(&body)
    .bind(now_ms)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))
    .context("writing webhook event")?;
    for endpoint_id in endpoints {
        let delivery_id = uuid::Uuid::now_v7().to_string();
        on_tx!(tx, |c| sqlx::query(
            "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, status, attempts, round_start, \
                 next_attempt_at, created_at, updated_at) \
             VALUES ($1, $2, $3, 'pending', 0, 0, $4, $4, $4)"
        )
        .bind(&delivery_id)
        .bind(endpoint_id)
        .bind(&id)
        .bind(now_ms)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
        .context("writing webhook delivery")?;
        deliver::push(app, tx, &delivery_id, 1, None).await?;
    }
    Ok(())
}

/// The request as the API returns it (`GET .../requests/{id}`), read in
/// `tx`, for the `request.*` events.
pub async fn request_payload(tx: &mut Tx, org_id: &str, request_id: &str) -> anyhow::Result<Value> {
    crate::http::api::requests::detail_value_tx(tx, org_id, request_id)
        .await?
        .with_context(|| format!("request {request_id} vanished while emitting its event"))
}

/// Emit `request.<status>` for `request_id` with the request as payload.
pub async fn emit_request(
    app: &App,
    tx: &mut Tx,
    org_id: &str,
    request_id: &str,
    event_type: &str,
    now_ms: i64,
) -> anyhow::Result<()> {
    // The payload (the request with its events) costs a few reads: only
    // when an endpoint wants the event.
    let endpoints = wanting(tx, org_id, event_type).await?;
    emit_request_to(app, tx, org_id, request_id, event_type, now_ms, &endpoints).await
}

/// [`emit_request`] to `endpoints`, the enabled endpoints that want
/// `event_type` as read by the caller (the PostgreSQL submit reads them
/// with everything else it reads, before its transaction); none: nothing
/// is read or written.
pub async fn emit_request_to(
    app: &App,
    tx: &mut Tx,
    org_id: &str,
    request_id: &str,
    event_type: &str,
    now_ms: i64,
    endpoints: &[String],
) -> anyhow::Result<()> {
    if endpoints.is_empty() {
        return Ok(());
    }
    let payload = request_payload(tx, org_id, request_id).await?;
    record(app, tx, org_id, event_type, payload, now_ms, endpoints).await
}
