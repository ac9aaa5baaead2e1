//! JSON bodies that keep their raw bytes (for `Idempotency-Key` body hashes),
//! with the same problem+json rejections as [`crate::http::extract::ApiJson`].
use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::{StatusCode, header},
};
use serde::{Deserialize, Deserializer, de::DeserializeOwned};

use crate::http::{ApiError, extract::json_rejection};

pub struct JsonBody<T> {
    pub value: T,
    pub bytes: Bytes,
}

/// `application/json` or `application/<anything>+json`, parameters ignored.
pub fn is_json_content_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json") && sub.len() > 5)
}

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_json_content_type(ct) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-large",
                    "Payload too large",
                    "the request body is larger than server.body_limit",
                )
            } else {
                ApiError::bad_request(format!("cannot read the body: {}", rej.body_text()))
            }
        })?;
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes).map_err(json_rejection)?;
        Ok(Self { value, bytes })
    }
}

/// For PATCH fields: absent = `None`, `null` = `Some(None)`, a value = `Some(Some(v))`.
/// Use with `#[serde(default, deserialize_with = "double_option")]`.
pub fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(is_json_content_type(ok), "{ok}");
        }
        for bad in [
            "",
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/+json",
            "text/json",
            "application/jsonx",
        ] {
            assert!(!is_json_content_type(bad), "{bad}");
        }
    }

    #[derive(Deserialize)]
    struct Patch {
        #[serde(default, deserialize_with = "double_option")]
        role: Option<Option<String>>,
    }

    #[test]
    fn double_option_tells_absent_from_null() {
        let p: Patch = serde_json::from_str("{}").unwrap();
        assert_eq!(p.role, None);
        let p: Patch = serde_json::from_str(r#"{"role": null}"#).unwrap();
        assert_eq!(p.role, Some(None));
        let p: Patch = serde_json::from_str(r#"{"role": "x"}"#).unwrap();
        assert_eq!(p.role, Some(Some("x".into())));
    }
}
