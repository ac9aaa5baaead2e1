//! API v1 for upstream apps (DESIGN "HTTP API v1"): JSON in and out,
//! `application/problem+json` errors, RFC 3339 times, bearer keys.
//!
//! Every change made here writes an `operation` row to `audit_log` in its own
//! transaction, with the calling key as the actor; every body is validated in
//! full before a transaction opens, so bad input writes nothing.
use axum::{Router, handler::Handler, routing};
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
pub mod openapi;
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
    routes().router
}

/// Every `(METHOD, path)` the API router serves, e.g. `("POST", "/v1/orgs")`:
/// a test holds the OpenAPI description to this list.
pub fn served_routes() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = routes()
        .served
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    out.sort();
    out
}

/// The API router, built through [`Routes`] so that each route it serves is
/// also listed (axum's router cannot be asked).
fn routes() -> Routes {
    use webhooks as w;
    Routes::default()
        .get("/openapi.json", openapi::openapi_json)
        .get("/v1/catalog", catalog::catalog)
        .get("/v1/calendars/{region}/due", catalog::due)
        .post("/v1/reviewers", reviewers::create)
        .get("/v1/reviewers/{id}", reviewers::get)
        .post("/v1/reviewers/{id}/remove", reviewers::remove)
        .post("/v1/orgs", orgs::create)
        .get("/v1/orgs/{org}", orgs::get)
        .post("/v1/orgs/{org}/keys", orgs::create_key)
        .post("/v1/orgs/{org}/members", members::create)
        .get("/v1/orgs/{org}/members", members::list)
        .get("/v1/orgs/{org}/members/{id}", members::get)
        .patch("/v1/orgs/{org}/members/{id}", members::update)
        .post("/v1/orgs/{org}/members/{id}/disable", members::disable)
        .post("/v1/orgs/{org}/members/{id}/enable", members::enable)
        .post("/v1/orgs/{org}/requests", requests::submit)
        .get("/v1/orgs/{org}/requests", requests::list)
        .get("/v1/orgs/{org}/requests/{id}", requests::get)
        .post("/v1/orgs/{org}/requests/{id}/cancel", requests::cancel)
        .get("/v1/orgs/{org}/grants", grants::list)
        .post("/v1/orgs/{org}/grants/{kind}/revoke", grants::revoke)
        .get("/v1/orgs/{org}/audit", audit::list)
        .post("/v1/orgs/{org}/audit/logins", audit::login)
        .get("/v1/orgs/{org}/audit/verify", audit::verify)
        // Roles and authorization checks (issue 10).
        .get("/v1/orgs/{org}/roles", roles::list)
        .get("/v1/orgs/{org}/roles/{name}", roles::get)
        .put("/v1/orgs/{org}/roles/{name}", roles::put)
        .delete("/v1/orgs/{org}/roles/{name}", roles::delete)
        .post("/v1/orgs/{org}/authz/check", authz::check)
        .post("/v1/orgs/{org}/authz/check-batch", authz::check_batch)
        .get(
            "/v1/orgs/{org}/members/{id}/permissions",
            authz::permissions,
        )
        // Webhook endpoints of an org, and platform-wide ones (`/v1/webhooks`).
        .post("/v1/orgs/{org}/webhooks", w::org_create)
        .get("/v1/orgs/{org}/webhooks", w::org_list)
        .get("/v1/orgs/{org}/webhooks/{id}", w::org_get)
        .patch("/v1/orgs/{org}/webhooks/{id}", w::org_update)
        .delete("/v1/orgs/{org}/webhooks/{id}", w::org_delete)
        .post("/v1/orgs/{org}/webhooks/{id}/rotate-secret", w::org_rotate)
        .get("/v1/orgs/{org}/webhooks/{id}/deliveries", w::org_deliveries)
        .get(
            "/v1/orgs/{org}/webhooks/{id}/deliveries/{delivery}",
            w::org_delivery,
        )
        .post(
            "/v1/orgs/{org}/webhooks/{id}/deliveries/{delivery}/redeliver",
            w::org_redeliver,
        )
        .post("/v1/webhooks", w::platform_create)
        .get("/v1/webhooks", w::platform_list)
        .get("/v1/webhooks/{id}", w::platform_get)
        .patch("/v1/webhooks/{id}", w::platform_update)
        .delete("/v1/webhooks/{id}", w::platform_delete)
        .post("/v1/webhooks/{id}/rotate-secret", w::platform_rotate)
        .get("/v1/webhooks/{id}/deliveries", w::platform_deliveries)
        .get(
            "/v1/webhooks/{id}/deliveries/{delivery}",
            w::platform_delivery,
        )
        .post(
            "/v1/webhooks/{id}/deliveries/{delivery}/redeliver",
            w::platform_redeliver,
        )
        // Spending limits (issue 11).
        .post("/v1/orgs/{org}/payments/authorize", payments::authorize)
        .get("/v1/orgs/{org}/payments/{id}", payments::get)
        .post("/v1/orgs/{org}/payments/{id}/capture", payments::capture)
        .post("/v1/orgs/{org}/payments/{id}/void", payments::void)
        .get("/v1/orgs/{org}/members/{id}/spending", payments::spending)
}

/// A router under construction and the `(METHOD, path)` of each route
/// added to it. Routes on the same path merge (axum joins their methods).
#[derive(Default)]
struct Routes {
    router: Router<App>,
    served: Vec<(&'static str, &'static str)>,
}

macro_rules! method {
    ($name:ident, $method:literal) => {
        fn $name<H, T>(mut self, path: &'static str, handler: H) -> Self
        where
            H: Handler<T, App>,
            T: 'static,
        {
            self.router = self.router.route(path, routing::$name(handler));
            self.served.push(($method, path));
            self
        }
    };
}

impl Routes {
    method!(get, "GET");
    method!(post, "POST");
    method!(put, "PUT");
    method!(patch, "PATCH");
    method!(delete, "DELETE");
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
