//! The one HTTP error type: every failure answers `application/problem+json`
//! (RFC 9457). A 5xx body says nothing internal; the cause is logged once, here.
use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::domain::ids::Invalid;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Short slug: the problem `type` is `https://approvald.dev/problems/{slug}`.
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// For 5xx: the cause, logged and never shown.
    pub source: Option<anyhow::Error>,
}

/// Every `slug` an [`ApiError`] (or the connection layer, `http::serve`)
/// answers with: the problem `type` is `https://approvald.dev/problems/{slug}`.
/// The OpenAPI description lists these as the `type` values.
pub const PROBLEM_SLUGS: &[&str] = &[
    "bad-request",
    "invalid",
    "not-found",
    "conflict",
    "unauthorized",
    "forbidden",
    "internal",
    "unavailable",
    "too-large",
    "unsupported-media-type",
    "method-not-allowed",
    "idempotency-key-reused",
    "reference-reused",
    "uri-too-long",
    "header-too-large",
];

/// An RFC 9457 problem: the body of every error answer
/// (`application/problem+json`).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "type": "https://approvald.dev/problems/invalid",
    "title": "Invalid field",
    "status": 422,
    "detail": "login_id: must be 5-20 characters, got 3"
}))]
pub struct Problem<'a> {
    /// What kind of problem: `https://approvald.dev/problems/{slug}`.
    #[serde(rename = "type")]
    #[schema(schema_with = problem_type)]
    kind: String,
    /// A short, fixed summary of the kind.
    title: &'a str,
    /// The HTTP status, repeated.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    /// What exactly is wrong, naming the field or header.
    detail: &'a str,
}

fn problem_type() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(crate::http::api::openapi::problem_types()))
        .build()
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            source: None,
        }
    }
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "Invalid field",
            detail,
        )
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("no such {what}"),
        )
    }
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            slug: "internal",
            title: "Internal error",
            detail: "the server could not complete the request; it has been logged".into(),
            source: Some(e.into()),
        }
    }
    pub fn unavailable(e: impl Into<anyhow::Error>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            slug: "unavailable",
            title: "Service unavailable",
            detail: "a backing service is unavailable; retry later".into(),
            source: Some(e.into()),
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        Self::invalid(e.to_string())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Io(_) | sqlx::Error::PoolClosed => Self::unavailable(e),
            // No pooled connection in time, or SQLite's write lock held
            // past `busy_timeout`: an overload, nothing written; retry.
            _ if crate::db::is_overloaded(&e) => Self::unavailable(e),
            // 22021: a character PostgreSQL cannot store (NUL). The edge
            // refuses these (`http::extract`); should one slip through
            // anyway, it is still the client's bad input, not a 500.
            sqlx::Error::Database(d) if d.code().as_deref() == Some("22021") => {
                tracing::warn!(error = %d, "a value the database cannot store got past the HTTP edge");
                Self::bad_request("a value contains a character that cannot be stored (NUL)")
            }
            _ => Self::internal(e),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        Self::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(src) = &self.source {
            tracing::error!(status = self.status.as_u16(), error = ?src, "request failed");
        }
        let body = Problem {
            kind: format!("https://approvald.dev/problems/{}", self.slug),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
        };
        let mut resp = (self.status, Json(body)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{Connection, sqlite::SqliteConnectOptions};

    /// SQLite's write lock still taken when `busy_timeout` runs out is an
    /// overload (503, retry later), not a server fault; a constraint
    /// failure is not an overload.
    #[tokio::test]
    async fn a_database_busy_past_its_timeout_is_a_503() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteConnectOptions::new()
            .filename(dir.path().join("busy.db"))
            .create_if_missing(true)
            .busy_timeout(std::time::Duration::from_millis(50));
        let mut holder = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        let mut other = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .execute(&mut holder)
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut holder)
            .await
            .unwrap();
        let busy = sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap_err();
        assert!(crate::db::is_overloaded(&busy), "{busy}");
        let resp = ApiError::from(busy).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);

        sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut holder)
            .await
            .unwrap();
        let dup = sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut holder)
            .await
            .unwrap_err();
        assert!(!crate::db::is_overloaded(&dup), "{dup}");
        assert_eq!(
            ApiError::from(dup).into_response().status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
