//! `/metrics`, `/healthz` (the process is alive) and `/readyz` (database and
//! queue reachable).
use std::time::Duration;

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use serde_json::json;

use crate::app::App;

pub fn router() -> Router<App> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    crate::ops::refresh_gauges(&app).await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::telemetry::metrics_handle().render(),
    )
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(app): State<App>) -> impl IntoResponse {
    let t = Duration::from_secs(2);
    let db = matches!(tokio::time::timeout(t, app.db.ping()).await, Ok(Ok(())));
    let queue = matches!(tokio::time::timeout(t, app.queue.ping()).await, Ok(Ok(())));
    let status = if db && queue {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            json!({"database": if db {"ok"} else {"down"}, "queue": if queue {"ok"} else {"down"}}),
        ),
    )
}
