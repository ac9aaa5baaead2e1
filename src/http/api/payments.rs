//! Spending: `POST .../payments/authorize`, `.../payments/{id}/capture`,
//! `.../payments/{id}/void`, `GET .../payments/{id}` and
//! `GET .../members/{id}/spending`. Every body is checked in full before the
//! flow's transaction opens (bad input writes nothing); the decisions
//! themselves live in [`crate::flows::payments`].
use axum::{
    Json,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use super::{Caller, CallerScope, body::JsonBody};
use crate::{
    app::App,
    domain::spending::{Currency, MAX_AMOUNT, MAX_REFERENCE},
    flows::payments::{self as flow, Authorize, PayError, PaymentOut, SpendingOut},
    http::{ApiError, ApiResult, extract::ApiPath},
};

impl From<PayError> for ApiError {
    fn from(e: PayError) -> Self {
        match e {
            PayError::NotFound(what) => ApiError::not_found(what),
            PayError::Invalid(d) => ApiError::invalid(d),
            PayError::Conflict(d) => ApiError::conflict(d),
            PayError::ReferenceReused(r) => ApiError::new(
                StatusCode::CONFLICT,
                "reference-reused",
                "Reference reused",
                format!(
                    "reference: {r:?} was already used for a payment with a different body; use a new reference for a new payment"
                ),
            ),
            PayError::Db(e) => ApiError::from(e),
            PayError::Other(e) => ApiError::internal(e),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeIn {
    member: String,
    amount: i64,
    currency: String,
    reference: String,
    #[serde(default)]
    capture: Option<bool>,
}

/// A positive amount of minor units, at most [`MAX_AMOUNT`].
pub fn parse_amount(field: &'static str, amount: i64) -> Result<i64, ApiError> {
    if amount <= 0 {
        return Err(ApiError::invalid(format!(
            "{field}: must be a positive whole number of minor units, got {amount}"
        )));
    }
    if amount > MAX_AMOUNT {
        return Err(ApiError::invalid(format!(
            "{field}: must be at most {MAX_AMOUNT} minor units, got {amount}"
        )));
    }
    Ok(amount)
}

/// 1-128 visible ASCII characters (no spaces).
pub fn parse_reference(s: &str) -> Result<String, ApiError> {
    if s.is_empty() || s.len() > MAX_REFERENCE || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(format!(
            "reference: must be 1-{MAX_REFERENCE} visible ASCII characters without spaces (your idempotency key for this payment)"
        )));
    }
    Ok(s.to_string())
}

fn json_response(status: StatusCode, body: String, replayed: bool) -> Response {
    let mut resp = (status, Body::from(body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

pub async fn authorize(
    State(app): State<App>,
    caller: Caller,
    ApiPath(org_id): ApiPath<String>,
    body: JsonBody<AuthorizeIn>,
) -> ApiResult<Response> {
    // The org boundary as `Caller::org` draws it (an org key acts on its own
    // org only; anything else is a 404 like a missing org); whether the org
    // exists is answered by the flow, which reads it with the member.
    if let CallerScope::Org(own) = &caller.scope
        && own != &org_id
    {
        return Err(ApiError::not_found("org"));
    }
    let b = body.value;
    let reference = parse_reference(&b.reference)?;
    let amount = parse_amount("amount", b.amount)?;
    let currency = Currency::parse("currency", &b.currency)?;
    let member = b.member.trim();
    let capture = b.capture.unwrap_or(true);
    // The same payment written another way (field order, an explicit
    // `capture: true`) is the same body.
    let body_hash = hex::encode(Sha256::digest(
        format!("{member}\n{amount}\n{}\n{capture}", currency.code()).as_bytes(),
    ));
    let answer = flow::authorize_in(
        &app,
        &org_id,
        currency,
        &Authorize {
            member: member.to_string(),
            amount,
            reference,
            capture,
            body_hash,
        },
    )
    .await?;
    Ok(json_response(StatusCode::OK, answer.body, answer.replayed))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CaptureIn {
    #[serde(default)]
    amount: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VoidIn {}

/// An optional JSON body: none at all, or a JSON object (checked as
/// [`JsonBody`] checks it).
async fn optional_body<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    bytes: Bytes,
) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let req = axum::http::Request::builder()
        .header(
            header::CONTENT_TYPE,
            headers
                .get(header::CONTENT_TYPE)
                .cloned()
                .unwrap_or(HeaderValue::from_static("")),
        )
        .body(axum::body::Body::from(bytes))
        .map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
    let b = <JsonBody<T> as axum::extract::FromRequest<()>>::from_request(req, &()).await?;
    Ok(b.value)
}

pub async fn capture(
    State(app): State<App>,
    caller: Caller,
    ApiPath((org_id, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult<Json<PaymentOut>> {
    let org = caller.org(&app, &org_id).await?;
    let b: CaptureIn = optional_body(&headers, bytes).await?;
    let amount = b.amount.map(|a| parse_amount("amount", a)).transpose()?;
    Ok(Json(flow::settle(&app, &org, &id, Some(amount)).await?))
}

pub async fn void(
    State(app): State<App>,
    caller: Caller,
    ApiPath((org_id, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult<Json<PaymentOut>> {
    let org = caller.org(&app, &org_id).await?;
    let _: VoidIn = optional_body(&headers, bytes).await?;
    Ok(Json(flow::settle(&app, &org, &id, None).await?))
}

pub async fn get(
    State(app): State<App>,
    caller: Caller,
    ApiPath((org_id, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<PaymentOut>> {
    let org = caller.org(&app, &org_id).await?;
    Ok(Json(flow::payment_view(&app, &org, &id).await?))
}

pub async fn spending(
    State(app): State<App>,
    caller: Caller,
    ApiPath((org_id, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<SpendingOut>> {
    let org = caller.org(&app, &org_id).await?;
    if id.len() > 64 {
        return Err(ApiError::not_found("member"));
    }
    Ok(Json(flow::spending(&app, &org, &id).await?))
}
