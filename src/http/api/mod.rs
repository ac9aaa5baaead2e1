//! API v1 for upstream apps (owned by the API work; placeholder router).
use axum::Router;

use crate::app::App;

pub fn router() -> Router<App> {
    Router::new()
}
