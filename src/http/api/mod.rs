//! API v1 for upstream apps (DESIGN "HTTP API v1"): JSON in and out,
//! `application/problem+json` errors, RFC 3339 times, bearer keys.
//!
//! Every change made here writes an `operation` row to `audit_log` in its own
//! transaction, with the calling key as the actor; every body is validated in
//! full before a transaction opens, so bad input writes nothing.
use axum::{
    Router,
    routing::{get, post},
};
use chrono::{DateTime, SecondsFormat};

use crate::app::App;

pub mod actor;
pub mod auth;
pub mod body;
pub mod page;

mod audit;
mod authz;
mod catalog;
mod grants;
mod members;
mod orgs;
mod payments;
pub mod requests;
mod reviewers;
mod roles;
mod webhooks;

pub use auth::{Caller, CallerScope};
/// A grant as the API (and the `grant.revoked` webhook) shows it.
pub use grants::GrantOut;

pub fn router() -> Router<App> {
    Router::new()
        .route("/v1/catalog", get(catalog::catalog))
        .route("/v1/calendars/{region}/due", get(catalog::due))
        .route("/v1/reviewers", post(reviewers::create))
        .route("/v1/reviewers/{id}", get(reviewers::get))
        .route("/v1/reviewers/{id}/remove", post(reviewers::remove))
        .route("/v1/orgs", post(orgs::create))
        .route("/v1/orgs/{org}", get(orgs::get))
        .route("/v1/orgs/{org}/keys", post(orgs::create_key))
        .route(
            "/v1/orgs/{org}/members",
            post(members::create).get(members::list),
        )
        .route(
            "/v1/orgs/{org}/members/{id}",
            get(members::get).patch(members::update),
        )
        .route(
            "/v1/orgs/{org}/members/{id}/disable",
            post(members::disable),
        )
        .route("/v1/orgs/{org}/members/{id}/enable", post(members::enable))
        .route(
            "/v1/orgs/{org}/requests",
            post(requests::submit).get(requests::list),
        )
        .route("/v1/orgs/{org}/requests/{id}", get(requests::get))
        .route(
            "/v1/orgs/{org}/requests/{id}/cancel",
            post(requests::cancel),
        )
        .route("/v1/orgs/{org}/grants", get(grants::list))
        .route("/v1/orgs/{org}/grants/{kind}/revoke", post(grants::revoke))
        .route("/v1/orgs/{org}/audit", get(audit::list))
        .route("/v1/orgs/{org}/audit/logins", post(audit::login))
        // Roles and authorization checks (issue 10).
        .route("/v1/orgs/{org}/roles", get(roles::list))
        .route(
            "/v1/orgs/{org}/roles/{name}",
            get(roles::get).put(roles::put).delete(roles::delete),
        )
        .route("/v1/orgs/{org}/authz/check", post(authz::check))
        .route("/v1/orgs/{org}/authz/check-batch", post(authz::check_batch))
        .route(
            "/v1/orgs/{org}/members/{id}/permissions",
            get(authz::permissions),
        )
        .route("/v1/orgs/{org}/audit/verify", get(audit::verify))
        .merge(webhook_routes())
        // Spending limits (issue 11).
        .route(
            "/v1/orgs/{org}/payments/authorize",
            post(payments::authorize),
        )
        .route("/v1/orgs/{org}/payments/{id}", get(payments::get))
        .route(
            "/v1/orgs/{org}/payments/{id}/capture",
            post(payments::capture),
        )
        .route("/v1/orgs/{org}/payments/{id}/void", post(payments::void))
        .route(
            "/v1/orgs/{org}/members/{id}/spending",
            get(payments::spending),
        )
}

/// Webhook endpoints of an org, and platform-wide ones (`/v1/webhooks`).
fn webhook_routes() -> Router<App> {
    use webhooks as w;
    Router::new()
        .route(
            "/v1/orgs/{org}/webhooks",
            post(w::org_create).get(w::org_list),
        )
        .route(
            "/v1/orgs/{org}/webhooks/{id}",
            get(w::org_get).patch(w::org_update).delete(w::org_delete),
        )
        .route(
            "/v1/orgs/{org}/webhooks/{id}/rotate-secret",
            post(w::org_rotate),
        )
        .route(
            "/v1/orgs/{org}/webhooks/{id}/deliveries",
            get(w::org_deliveries),
        )
        .route(
            "/v1/orgs/{org}/webhooks/{id}/deliveries/{delivery}",
            get(w::org_delivery),
        )
        .route(
            "/v1/orgs/{org}/webhooks/{id}/deliveries/{delivery}/redeliver",
            post(w::org_redeliver),
        )
        .route(
            "/v1/webhooks",
            post(w::platform_create).get(w::platform_list),
        )
        .route(
            "/v1/webhooks/{id}",
            get(w::platform_get)
                .patch(w::platform_update)
                .delete(w::platform_delete),
        )
        .route("/v1/webhooks/{id}/rotate-secret", post(w::platform_rotate))
        .route("/v1/webhooks/{id}/deliveries", get(w::platform_deliveries))
        .route(
            "/v1/webhooks/{id}/deliveries/{delivery}",
            get(w::platform_delivery),
        )
        .route(
            "/v1/webhooks/{id}/deliveries/{delivery}/redeliver",
            post(w::platform_redeliver),
        )
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
pub fn time(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

pub fn opt_time(ms: Option<i64>) -> Option<String> {
    ms.map(time)
}

/// A stored JSON text column as a value (`{}` if it is somehow not JSON).
pub fn json_column(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::json!({}))
}

/// A fresh time-ordered id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(1_771_034_400_123), "2026-02-14T02:00:00.123Z");
        assert_eq!(opt_time(None), None);
    }
}
