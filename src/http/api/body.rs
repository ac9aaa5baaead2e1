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
        // serde lets a struct be written as an array of its fields in order;
        // a body is an object, nothing else.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::invalid("the body must be a JSON object"));
        }
        // PostgreSQL TEXT cannot hold NUL: refuse it here, for every body.
        if let Some(field) = crate::http::extract::json_nul_field(&bytes) {
            return Err(ApiError::invalid(format!(
                "{field}: must not contain NUL (\\u0000) characters"
            )));
        }
        Ok(Self { value, bytes })
    }
}

/// For a field holding a struct: refuse anything but a JSON object (serde
/// would also take an array of the struct's fields in order). Use with
/// `#[serde(deserialize_with = "object")]`.
pub fn object<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
    T::deserialize(serde_json::Value::Object(map)).map_err(serde::de::Error::custom)
}

/// [`object`] for an optional list of structs: `null`/absent, or an array of objects.
/// Use with `#[serde(default, deserialize_with = "option_objects")]`.
pub fn option_objects<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    let Some(items) = Option::<Vec<serde_json::Map<String, serde_json::Value>>>::deserialize(d)?
    else {
        return Ok(None);
    };
    items
        .into_iter()
        .map(|m| T::deserialize(serde_json::Value::Object(m)).map_err(serde::de::Error::custom))
        .collect::<Result<Vec<T>, _>>()
        .map(Some)
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

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: String,
    }

    #[derive(Debug, Deserialize)]
    struct Outer {
        #[serde(deserialize_with = "object")]
        one: Inner,
        #[serde(default, deserialize_with = "option_objects")]
        many: Option<Vec<Inner>>,
    }

    #[test]
    fn structs_only_from_objects() {
        let o: Outer =
            serde_json::from_str(r#"{"one": {"a": "x"}, "many": [{"a": "y"}]}"#).unwrap();
        assert_eq!(o.one, Inner { a: "x".into() });
        assert_eq!(o.many.unwrap(), vec![Inner { a: "y".into() }]);
        let o: Outer = serde_json::from_str(r#"{"one": {"a": "x"}}"#).unwrap();
        assert!(o.many.is_none());
        // Plain serde would take these arrays as positional structs.
        assert!(serde_json::from_str::<Inner>(r#"["x"]"#).is_ok());
        assert!(serde_json::from_str::<Outer>(r#"{"one": ["x"]}"#).is_err());
        assert!(serde_json::from_str::<Outer>(r#"{"one": {"a": "x"}, "many": [["y"]]}"#).is_err());
        assert!(serde_json::from_str::<Outer>(r#"{"one": {"a": "x", "b": 1}}"#).is_err());
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
