//! Extractors whose rejections are problem+json, never axum's plain text.
//!
//! Text PostgreSQL cannot store (NUL) is refused at the edge, before any
//! handler runs: [`reject_unstorable_uri`] for every path and query string,
//! [`super::api::body::JsonBody`] (and so [`ApiJson`]) for every JSON body.
//! Header values cannot carry NUL at all (the HTTP parser refuses them).
use axum::{
    extract::{FromRequest, FromRequestParts, Request, rejection::JsonRejection},
    http::{StatusCode, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// `Json<T>` with RFC 9457 rejections: 415 without a JSON content type, 413
/// over the body limit, 400 for malformed JSON, 422 for wrong types or
/// unknown fields (bodies are declared `deny_unknown_fields`).
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // The same checks as the API's bodies, including "a body is a JSON
        // object" (serde would take an array of a struct's fields in order).
        let body = super::api::body::JsonBody::<T>::from_request(req, state).await?;
        Ok(Self(body.value))
    }
}

pub fn json_rejection(rej: JsonRejection) -> ApiError {
    match rej {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::bad_request(format!("malformed JSON: {}", e.body_text()))
        }
        JsonRejection::JsonDataError(e) => ApiError::invalid(e.body_text()),
        JsonRejection::BytesRejection(e) => {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-large",
                    "Payload too large",
                    "the request body is larger than server.body_limit",
                )
            } else {
                ApiError::bad_request(e.body_text())
            }
        }
        other => ApiError::bad_request(other.body_text()),
    }
}

/// `Path<T>` with problem+json rejections (404: a malformed id names nothing).
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(_) => Err(ApiError::not_found("resource")),
        }
    }
}

/// `Query<T>` with problem+json rejections (400).
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::bad_request(format!(
                "query string: {}",
                e.body_text()
            ))),
        }
    }
}

/// Does a URI component decode to text with a NUL in it? The HTTP parser
/// refuses raw control bytes in the request target, so a NUL can only arrive
/// percent-encoded (`%00`); `%2500` is a literal `%00` and is fine.
pub fn uri_part_has_nul(raw: &str) -> bool {
    let b = raw.as_bytes();
    b.windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
}

/// Router-wide layer: a path or query string that decodes to NUL names
/// nothing that can exist (404) or is a bad query (400), whatever the route,
/// before any extractor or handler sees it.
pub async fn reject_unstorable_uri(req: Request, next: Next) -> Response {
    let uri = req.uri();
    if uri_part_has_nul(uri.path()) {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            "no such resource: the path contains a NUL (%00) character",
        )
        .into_response();
    }
    if uri.query().is_some_and(uri_part_has_nul) {
        return ApiError::bad_request("query string: must not contain NUL (%00) characters")
            .into_response();
    }
    next.run(req).await
}

/// Where a JSON document (already parsed once, so well-formed) holds a NUL
/// character in a string or a key: `Some(path)` such as `owner.email` or
/// `documents[0].name`, `None` when there is none.
pub fn json_nul_field(bytes: &[u8]) -> Option<String> {
    // Fast path: in valid JSON a NUL can only be written as the escape
    // `\u0000`; backslashes occur only inside strings.
    let mut i = 0;
    let mut found = false;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes.get(i + 1) == Some(&b'u') && bytes.get(i + 2..i + 6) == Some(b"0000") {
                found = true;
                break;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    if !found {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    Some(nul_path(&value, String::new()).unwrap_or_else(|| "body".into()))
}

fn nul_path(v: &serde_json::Value, at: String) -> Option<String> {
    let here = |at: &str| {
        if at.is_empty() {
            "body".to_string()
        } else {
            at.to_string()
        }
    };
    match v {
        serde_json::Value::String(s) if s.contains('\0') => Some(here(&at)),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| nul_path(x, format!("{at}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, x)| {
            let key = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            if k.contains('\0') {
                Some(here(&at))
            } else {
                nul_path(x, key)
            }
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_in_uri_parts() {
        assert!(uri_part_has_nul("/v1/orgs/%00"));
        assert!(uri_part_has_nul("member=a%00b"));
        assert!(!uri_part_has_nul("/v1/orgs/%2500"));
        assert!(!uri_part_has_nul("/v1/orgs/abc%20d"));
        assert!(!uri_part_has_nul("status=in_review&kind=ftp_access"));
    }

    #[test]
    fn nul_in_json_is_found_with_its_field() {
        let at = |s: &str| json_nul_field(s.as_bytes());
        assert_eq!(at(r#"{"remark": "a\u0000b"}"#).as_deref(), Some("remark"));
        assert_eq!(
            at(r#"{"owner": {"email": "x\u0000@e.com"}}"#).as_deref(),
            Some("owner.email")
        );
        assert_eq!(
            at(r#"{"documents": [{"name": "ok"}, {"name": "\u0000"}]}"#).as_deref(),
            Some("documents[1].name")
        );
        assert_eq!(at(r#"{"a\u0000": 1}"#).as_deref(), Some("body"));
        // An escaped backslash followed by the text u0000 is no NUL.
        assert_eq!(at(r#"{"remark": "C:\\u0000"}"#), None);
        assert_eq!(at(r#"{"remark": "\u00001"}"#).as_deref(), Some("remark"));
        assert_eq!(at(r#"{"remark": "fine \n \u0041"}"#), None);
    }
}
