//! The OpenAPI 3.1 description of the HTTP API: served at `GET /openapi.json`,
//! printed by `approvald openapi`, committed as `docs/openapi.json`.
//!
//! It is generated from the code, never written by hand: every handler
//! carries `#[utoipa::path]` (method, path, parameters, statuses) and its
//! request and response types derive `ToSchema` with their limits. This
//! module lists the handlers and adds what every operation shares: the
//! bearer security scheme, the problem+json answers any `/v1` route can give
//! (401, 403, 404, 400 for a bad query, and 413/415/422 for a JSON body) and
//! the `x-request-id` response header. Tests keep it true: every route of
//! [`super::router`] must be described with its method, and
//! `docs/openapi.json` must equal [`json`].
use utoipa::{
    IntoParams, Modify, OpenApi,
    openapi::{
        self, Components, PathItem, RefOr, Required, ResponseBuilder,
        header::HeaderBuilder,
        path::Operation,
        schema::{ObjectBuilder, Type},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::http::error::PROBLEM_SLUGS;

/// The acting member of an org-key call (`Approvald-Actor`).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct ActorHeader {
    /// The member (id, or login id) this call acts for. Required with an org
    /// key on calls that manage members, roles and logs, and on a member's
    /// permissions; optional with a platform key (checked when sent). A
    /// missing, unknown, disabled or foreign member is a 403 naming the header.
    #[param(rename = "Approvald-Actor", min_length = 1, max_length = 64)]
    pub actor: Option<String>,
}

/// `Idempotency-Key` of a submission.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyHeader {
    /// Retrying with the same key and body replays the first answer (with
    /// `idempotent-replayed: true`); the same key with another body is a 422
    /// (`idempotency-key-reused`). 1-255 visible ASCII characters.
    #[param(rename = "Idempotency-Key", pattern = "^[!-~]{1,255}$")]
    pub key: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "approvald",
        description = "Permission-request approval workflows for multi-account platforms: \
            orgs and their members, roles and authorization checks, permission requests \
            reviewed from emailed links, grants, spending limits, audit logs and webhooks.\n\n\
            Every error is `application/problem+json` (RFC 9457) whose `type` names the problem. \
            Times are RFC 3339 UTC with milliseconds; money is integer minor units.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::catalog::catalog,
        super::catalog::due,
        super::reviewers::create,
        super::reviewers::get,
        super::reviewers::remove,
        super::orgs::create,
        super::orgs::get,
        super::orgs::create_key,
        super::members::create,
        super::members::list,
        super::members::get,
        super::members::update,
        super::members::disable,
        super::members::enable,
        super::requests::submit,
        super::requests::list,
        super::requests::get,
        super::requests::cancel,
        super::grants::list,
        super::grants::revoke,
        super::audit::list,
        super::audit::login,
        super::audit::verify,
        super::roles::list,
        super::roles::get,
        super::roles::put,
        super::roles::delete,
        super::authz::check,
        super::authz::check_batch,
        super::authz::permissions,
        super::payments::authorize,
        super::payments::get,
        super::payments::capture,
        super::payments::void,
        super::payments::spending,
        super::webhooks::org_create,
        super::webhooks::org_list,
        super::webhooks::org_get,
        super::webhooks::org_update,
        super::webhooks::org_delete,
        super::webhooks::org_rotate,
        super::webhooks::org_deliveries,
        super::webhooks::org_delivery,
        super::webhooks::org_redeliver,
        super::webhooks::platform_create,
        super::webhooks::platform_list,
        super::webhooks::platform_get,
        super::webhooks::platform_update,
        super::webhooks::platform_delete,
        super::webhooks::platform_rotate,
        super::webhooks::platform_deliveries,
        super::webhooks::platform_delivery,
        super::webhooks::platform_redeliver,
        crate::http::review::show,
        crate::http::review::submit,
        crate::http::ops::healthz,
        crate::http::ops::readyz,
        openapi_json,
    ),
    components(schemas(crate::http::error::Problem)),
    modifiers(&Shared),
    tags(
        (name = "catalog", description = "The permission catalog and business calendars"),
        (name = "orgs", description = "Orgs (seller or company accounts) and their API keys"),
        (name = "members", description = "An org's members: super admin, admins, members"),
        (name = "roles", description = "Roles: data scope, grants, menus, payment limits"),
        (name = "authz", description = "Authorization checks"),
        (name = "requests", description = "Permission requests and their history"),
        (name = "grants", description = "Permissions granted to an org or a member"),
        (name = "payments", description = "Spending limits: authorize, capture, void"),
        (name = "audit", description = "Login and operation logs, one hash chain per org"),
        (name = "webhooks", description = "Signed event deliveries to upstream apps"),
        (name = "reviewers", description = "Platform reviewers (platform key)"),
        (name = "review", description = "The review page reviewers reach from their email"),
        (name = "health", description = "Process health and this description"),
    ),
    security(("bearer" = [])),
)]
struct ApiDoc;

/// The description as a value.
pub fn spec() -> openapi::OpenApi {
    ApiDoc::openapi()
}

/// The description as pretty JSON with a final newline: what
/// `GET /openapi.json` serves and `docs/openapi.json` holds.
pub fn json() -> String {
    let mut s = spec()
        .to_pretty_json()
        .expect("the OpenAPI description serializes");
    s.push('\n');
    s
}

/// This description, as JSON.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "health",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 description of this API",
        content_type = "application/json", body = Object)),
)]
pub async fn openapi_json() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json(),
    )
}

/// Reusable responses, by name in `components.responses`.
const BAD_REQUEST: &str = "BadRequest";
const UNAUTHORIZED: &str = "Unauthorized";
const FORBIDDEN: &str = "Forbidden";
const NOT_FOUND: &str = "NotFound";
const TOO_LARGE: &str = "PayloadTooLarge";
const UNSUPPORTED: &str = "UnsupportedMediaType";
const INVALID: &str = "Invalid";
const UNAVAILABLE: &str = "Unavailable";

/// Operations whose JSON body may be left out altogether.
const OPTIONAL_BODIES: [&str; 2] = ["capturePayment", "voidPayment"];

/// What every operation shares (see the module docs).
struct Shared;

impl Modify for Shared {
    fn modify(&self, api: &mut openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Components::new);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key: `Authorization: Bearer <key>`. A platform key acts on \
                         every org; an org key only on its own (another org answers 404). \
                         Keys come from `approvald keys create` and `POST /v1/orgs/{org}/keys`.",
                    ))
                    .build(),
            ),
        );
        let problem = |desc: &str| {
            ResponseBuilder::new()
                .description(desc)
                .content(
                    "application/problem+json",
                    openapi::content::ContentBuilder::new()
                        .schema(Some(RefOr::Ref(openapi::Ref::from_schema_name("Problem"))))
                        .build(),
                )
                .header("x-request-id", request_id_header())
                .build()
        };
        let mut unauthorized =
            problem("No API key, or one that is unknown or revoked (`type` …/unauthorized)");
        unauthorized.headers.insert(
            "www-authenticate".into(),
            HeaderBuilder::new()
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .description(Some("`Bearer realm=\"approvald\"`"))
                .build()
                .into(),
        );
        components.responses.extend([
            (
                BAD_REQUEST.to_string(),
                RefOr::T(problem(
                    "Malformed JSON, a bad query parameter or header (`type` …/bad-request)",
                )),
            ),
            (UNAUTHORIZED.to_string(), RefOr::T(unauthorized)),
            (
                FORBIDDEN.to_string(),
                RefOr::T(problem(
                    "The key or the acting member may not do this (`type` …/forbidden)",
                )),
            ),
            (
                NOT_FOUND.to_string(),
                RefOr::T(problem(
                    "No such org (or not the key's own), resource or route (`type` …/not-found)",
                )),
            ),
            (
                TOO_LARGE.to_string(),
                RefOr::T(problem(
                    "The body is larger than `server.body_limit` (`type` …/too-large)",
                )),
            ),
            (
                UNSUPPORTED.to_string(),
                RefOr::T(problem(
                    "The body is not sent as JSON (`type` …/unsupported-media-type)",
                )),
            ),
            (
                INVALID.to_string(),
                RefOr::T(problem(
                    "A field is wrong; `detail` names it (`type` …/invalid)",
                )),
            ),
            (
                UNAVAILABLE.to_string(),
                RefOr::T(problem(
                    "The database or queue is unreachable; retry later (`type` …/unavailable)",
                )),
            ),
        ]);

        for (path, item) in api.paths.paths.iter_mut() {
            let v1 = path.starts_with("/v1/");
            for (method, op) in operations(item) {
                if OPTIONAL_BODIES.contains(&op.operation_id.as_deref().unwrap_or(""))
                    && let Some(RefOr::T(body)) = op.request_body.as_mut()
                {
                    body.required = Some(Required::False);
                }
                for resp in op.responses.responses.values_mut() {
                    if let RefOr::T(r) = resp {
                        r.headers
                            .entry("x-request-id".into())
                            .or_insert_with(|| request_id_header().into());
                    }
                }
                if !v1 {
                    continue;
                }
                let mut shared = vec![
                    ("400", BAD_REQUEST),
                    ("401", UNAUTHORIZED),
                    ("403", FORBIDDEN),
                    ("404", NOT_FOUND),
                    ("503", UNAVAILABLE),
                ];
                if op.request_body.is_some() {
                    shared.extend([("413", TOO_LARGE), ("415", UNSUPPORTED), ("422", INVALID)]);
                } else if matches!(method, "POST" | "PUT" | "PATCH") {
                    // A body is ignored, but one over the limit is refused first.
                    shared.push(("413", TOO_LARGE));
                }
                for (status, name) in shared {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| RefOr::Ref(openapi::Ref::from_response_name(name)));
                }
            }
        }
    }
}

fn request_id_header() -> openapi::header::Header {
    HeaderBuilder::new()
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[A-Za-z0-9._:-]{1,128}$")),
        ))
        .description(Some(
            "The caller's `x-request-id` when it sent a plain token, else a fresh one; \
             audit entries record it.",
        ))
        .build()
}

fn operations(item: &mut openapi::PathItem) -> Vec<(&'static str, &mut Operation)> {
    let mut out = Vec::new();
    let PathItem {
        get,
        put,
        post,
        delete,
        patch,
        ..
    } = item;
    for (m, op) in [
        ("GET", get),
        ("PUT", put),
        ("POST", post),
        ("DELETE", delete),
        ("PATCH", patch),
    ] {
        if let Some(op) = op.as_mut() {
            out.push((m, op));
        }
    }
    out
}

/// Every `(METHOD, path)` the description has, e.g. `("POST", "/v1/orgs")`.
pub fn described_routes() -> Vec<(String, String)> {
    let mut api = spec();
    let mut out = Vec::new();
    for (path, item) in api.paths.paths.iter_mut() {
        for (m, _) in operations(item) {
            out.push((m.to_string(), path.clone()));
        }
    }
    out.sort();
    out
}

/// The problem `type` URIs, for the problem schema's enum.
pub fn problem_types() -> Vec<String> {
    PROBLEM_SLUGS
        .iter()
        .map(|s| format!("https://approvald.dev/problems/{s}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the API router serves, plus the review page's form and
    /// the health checks (other routers), is described with its method; and
    /// nothing is described that is not served.
    #[test]
    fn every_served_route_is_described_with_its_method() {
        let mut served = super::super::served_routes();
        served.extend(
            [
                ("GET", "/review/{token}"),
                ("POST", "/review/{token}"),
                ("GET", "/healthz"),
                ("GET", "/readyz"),
            ]
            .map(|(m, p)| (m.to_string(), p.to_string())),
        );
        served.sort();
        let described = described_routes();
        let missing: Vec<_> = served.iter().filter(|r| !described.contains(r)).collect();
        let extra: Vec<_> = described.iter().filter(|r| !served.contains(r)).collect();
        assert!(
            missing.is_empty(),
            "served but not in the OpenAPI description (add #[utoipa::path] to the handler \
             and list it in http/api/openapi.rs): {missing:?}"
        );
        assert!(extra.is_empty(), "described but not served: {extra:?}");
    }

    #[test]
    fn operation_ids_are_unique_and_every_v1_call_needs_a_key() {
        let mut api = spec();
        let mut ids = Vec::new();
        for (path, item) in api.paths.paths.iter_mut() {
            for (m, op) in operations(item) {
                let id = op.operation_id.clone().unwrap_or_default();
                assert!(!id.is_empty(), "{m} {path} has no operationId");
                assert!(!ids.contains(&id), "operationId {id} twice");
                ids.push(id);
                let open = op.security.as_ref().is_some_and(|s| !s.is_empty());
                assert_eq!(
                    !open,
                    path.starts_with("/v1/"),
                    "{m} {path}: /v1 calls use the bearer key, the others none"
                );
                if path.starts_with("/v1/") {
                    for status in ["400", "401", "403", "404"] {
                        assert!(
                            op.responses.responses.contains_key(status),
                            "{m} {path} lacks {status}"
                        );
                    }
                }
            }
        }
    }

    /// `docs/openapi.json` is the generated description, byte for byte.
    #[test]
    fn committed_copy_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == json(),
            "docs/openapi.json differs from the description the code generates; \
             regenerate it with:\n\n    cargo run -q -- openapi > docs/openapi.json\n"
        );
    }

    #[test]
    fn it_is_openapi_3_1_with_the_problem_types() {
        let v: serde_json::Value = serde_json::from_str(&json()).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
        let types = &v["components"]["schemas"]["Problem"]["properties"]["type"]["enum"];
        assert!(
            types
                .as_array()
                .unwrap()
                .contains(&serde_json::json!("https://approvald.dev/problems/invalid"))
        );
        assert_eq!(
            v["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}
