//! `/metrics` (behind `ops.metrics_token` when set), `/healthz` (the process
//! is alive) and `/readyz` (database and queue reachable; the body also says
//! whether the mail transport is failing, and why).
use std::time::Duration;

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;

use crate::{app::App, http::ApiError};

/// The body of `/readyz` (description only: the handler builds it as JSON).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Readiness {
    #[schema(pattern = "^(ok|down)$")]
    database: String,
    #[schema(pattern = "^(ok|down)$")]
    queue: String,
    /// `"ok"`, `"unknown"` (the database is down), or
    /// `{"status": "failing", "kind": "auth"|"tls"|..., "detail", "since", "last_seen"}`.
    #[schema(value_type = Value)]
    mail: serde_json::Value,
}

pub mod dash;

pub fn router() -> Router<App> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn metrics(State(app): State<App>, headers: HeaderMap) -> Response {
    let token = app.config.ops.metrics_token.expose();
    if !token.is_empty() && !bearer_matches(&headers, token) {
        let mut resp = ApiError::unauthorized(
            "send `Authorization: Bearer <ops.metrics_token>` to read the metrics",
        )
        .into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"approvald-metrics\""),
        );
        return resp;
    }
    crate::ops::refresh_gauges(&app).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::metrics_handle().render(),
    )
        .into_response()
}

/// `Authorization: Bearer <token>`, compared by digest so the time taken
/// says nothing about the token.
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    use sha2::{Digest, Sha256};
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| {
            Sha256::digest(given.trim().as_bytes()) == Sha256::digest(token.as_bytes())
        })
}

/// The process is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    security(()),
    responses((status = 200, description = "Alive", body = Object, example = json!({"status": "ok"}))),
)]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// The database and the queue are reachable (503 otherwise); the body also
/// says whether mail is failing, and why.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "Ready", body = Readiness,
            example = json!({"database": "ok", "queue": "ok", "mail": "ok"})),
        (status = 503, description = "The database or the queue is unreachable", body = Readiness),
    ),
)]
pub async fn readyz(State(app): State<App>) -> impl IntoResponse {
    let t = Duration::from_secs(2);
    let db = matches!(tokio::time::timeout(t, app.db.ping()).await, Ok(Ok(())));
    let queue = matches!(tokio::time::timeout(t, app.queue.ping()).await, Ok(Ok(())));
    let status = if db && queue {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Mail trouble (refused credentials, untrusted TLS) is the operator's to
    // fix but does not make this process unready: requests are still taken
    // and mails wait. The body says why.
    let mail = if db {
        match tokio::time::timeout(t, crate::store::mail_health::get(&app.db)).await {
            Ok(Ok(None)) => json!("ok"),
            Ok(Ok(Some(f))) => json!({
                "status": "failing",
                "kind": f.kind,
                "detail": f.detail,
                "since": crate::http::api::time(f.since),
                "last_seen": crate::http::api::time(f.updated_at),
            }),
            _ => json!("unknown"),
        }
    } else {
        json!("unknown")
    };
    (
        status,
        Json(json!({
            "database": if db {"ok"} else {"down"},
            "queue": if queue {"ok"} else {"down"},
            "mail": mail,
        })),
    )
}
