//! Review pages behind email links (placeholder router).
use axum::Router;

use crate::app::App;

pub fn router() -> Router<App> {
    Router::new()
}
