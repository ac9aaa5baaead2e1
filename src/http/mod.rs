//! HTTP: `api/` for upstream apps, `review/` for reviewers' email links,
//! `ops/` for metrics, health and the operator dashboard (`ops/dash`).
use axum::{Router, http::StatusCode, response::IntoResponse};
use tower_http::limit::RequestBodyLimitLayer;

use crate::app::App;

pub mod api;
pub mod error;
pub mod extract;
pub mod ops;
pub mod request_id;
pub mod review;
pub mod serve;

pub use error::{ApiError, ApiResult};

pub fn router(app: App) -> Router {
    let limit = app.config.server.body_limit;
    Router::new()
        .merge(api::router())
        .merge(review::router())
        .merge(ops::router())
        .merge(ops::dash::router(&app))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(RequestBodyLimitLayer::new(limit))
        .layer(axum::middleware::map_response(problem_for_oversized))
        .layer(axum::middleware::from_fn(extract::reject_unstorable_uri))
        // Outermost: every response (errors too) carries the request id.
        .layer(axum::middleware::from_fn(request_id::layer))
        .with_state(app)
}

/// `RequestBodyLimitLayer` refuses a declared `Content-Length` over the limit
/// before any extractor runs, with a plain-text 413: answer problem+json
/// like every other error (invariant 8).
async fn problem_for_oversized(resp: axum::response::Response) -> axum::response::Response {
    let plain = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && plain {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Payload too large",
            "the request body is larger than server.body_limit",
        )
        .into_response();
    }
    resp
}

async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this route does not accept that method",
    )
}
