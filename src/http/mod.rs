//! HTTP: `api/` for upstream apps, `review/` for reviewers' email links,
//! `ops/` for metrics and health.
use axum::{Router, http::StatusCode, response::IntoResponse};
use tower_http::limit::RequestBodyLimitLayer;

use crate::app::App;

pub mod api;
pub mod error;
pub mod extract;
pub mod ops;
pub mod review;

pub use error::{ApiError, ApiResult};

pub fn router(app: App) -> Router {
    let limit = app.config.server.body_limit;
    Router::new()
        .merge(api::router())
        .merge(review::router())
        .merge(ops::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(RequestBodyLimitLayer::new(limit))
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed", "this route does not accept that method")
}
