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
use utoipa::ToSchema;

use super::{
    Caller,
    auth::{AuthRejection, Token},
    body::JsonBody,
};
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PaymentAuthorize)]
pub struct AuthorizeIn {
    /// The paying member (id or login id).
    #[schema(min_length = 1)]
    member: String,
    /// Minor units, 1 to 10^15.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    amount: i64,
    /// ISO 4217: the org's currency.
    #[schema(pattern = "^[A-Z]{3}$", example = "CNY")]
    currency: String,
    /// Your idempotency key for this payment: 1-128 visible ASCII characters.
    #[schema(pattern = "^[!-~]{1,128}$")]
    reference: String,
    /// `false`: only hold the amount (capture or void it later); default `true`.
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

/// Authorize a payment from the shared balance against the member's limits:
/// approved (or held) and counted, or declined with the reason. The same
/// `reference` with the same body replays the first answer.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/payments/authorize",
    operation_id = "authorizePayment",
    tag = "payments",
    params(("org" = String, Path, description = "The org's id")),
    request_body(content = AuthorizeIn, example = json!({"member": "buyer_01", "amount": 12800, "currency": "CNY", "reference": "order-20260213-0001"})),
    responses(
        (status = 200, description = "The decision (`approved: false` with a `reason` when declined)",
            body = crate::flows::payments::AuthorizeOut,
            headers(("idempotent-replayed" = String, description = "`true` when this is the stored first answer")),
            links(("GetPayment" = (operation_id = "getPayment", parameters(("org" = "$request.path.org"), ("id" = "$response.body#/id")))),
                  ("CapturePayment" = (operation_id = "capturePayment", parameters(("org" = "$request.path.org"), ("id" = "$response.body#/id")))),
                  ("VoidPayment" = (operation_id = "voidPayment", parameters(("org" = "$request.path.org"), ("id" = "$response.body#/id")))))),
        (status = 409, description = "The `reference` was used for another body (`reference-reused`), or the member changed under the call",
            body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn authorize(
    State(app): State<App>,
    token: Token,
    path: Result<ApiPath<String>, ApiError>,
    body: Result<JsonBody<AuthorizeIn>, ApiError>,
) -> Result<Response, Response> {
    // What a bad call is told, and in which order, is what every other
    // call's is: the key (401, 403), the path and the body's shape, the org
    // boundary (404), the fields (422). Only a good call skips the separate
    // key lookup: its key is read by the flow's first statement, with the
    // org, the member and everything deciding needs.
    let (org_id, b) = match (path, body) {
        (Ok(ApiPath(org_id)), Ok(body)) => (org_id, body.value),
        (Err(e), _) | (Ok(_), Err(e)) => {
            Caller::authenticate(&app, &token.0)
                .await
                .map_err(IntoResponse::into_response)?;
            return Err(e.into_response());
        }
    };
    let (currency, req) = match validate(b) {
        Ok(v) => v,
        Err(e) => {
            let caller = Caller::authenticate(&app, &token.0)
                .await
                .map_err(IntoResponse::into_response)?;
            caller
                .check_boundary(&org_id)
                .map_err(IntoResponse::into_response)?;
            return Err(e.into_response());
        }
    };
    let read = flow::read(&app, Some(&token.0), &org_id, &req)
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    // The org boundary as `Caller::org` draws it (an org key acts on its own
    // org only; anything else is a 404 like a missing org); whether the org
    // exists is answered by the flow.
    Caller::from_found(read.key.clone())
        .map_err(|e| AuthRejection::from(e).into_response())?
        .check_boundary(&org_id)
        .map_err(IntoResponse::into_response)?;
    let answer = flow::authorize_read(&app, read, &org_id, currency, &req)
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    Ok(json_response(StatusCode::OK, answer.body, answer.replayed))
}

/// The body's fields, each checked: 422 naming the first bad one.
fn validate(b: AuthorizeIn) -> Result<(Currency, Authorize), ApiError> {
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
    Ok((
        currency,
        Authorize {
            member: member.to_string(),
            amount,
            reference,
            capture,
            body_hash,
        },
    ))
}

/// Optional: no body captures the whole hold.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PaymentCapture)]
pub struct CaptureIn {
    /// Capture less than the hold (minor units, at most the held amount).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    amount: Option<i64>,
}

/// Optional, and empty when sent.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PaymentVoid)]
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

/// Capture a hold (all of it, or `amount` of it).
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/payments/{id}/capture",
    operation_id = "capturePayment",
    tag = "payments",
    params(("org" = String, Path, description = "The org's id"), ("id" = String, Path, description = "The payment's id")),
    request_body(content = CaptureIn, description = "Optional: no body (or an empty one) captures the whole hold"),
    responses(
        (status = 200, description = "Captured", body = crate::flows::payments::PaymentOut),
        (status = 409, description = "Not a live hold", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
)]
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

/// Void a hold: its amount no longer counts.
#[utoipa::path(
    post,
    path = "/v1/orgs/{org}/payments/{id}/void",
    operation_id = "voidPayment",
    tag = "payments",
    params(("org" = String, Path, description = "The org's id"), ("id" = String, Path, description = "The payment's id")),
    request_body(content = VoidIn, description = "Optional: no body, or `{}`"),
    responses(
        (status = 200, description = "Voided", body = crate::flows::payments::PaymentOut),
        (status = 409, description = "Not a live hold", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
)]
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

#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/payments/{id}",
    operation_id = "getPayment",
    tag = "payments",
    params(("org" = String, Path, description = "The org's id"), ("id" = String, Path, description = "The payment's id")),
    responses((status = 200, description = "The payment", body = crate::flows::payments::PaymentOut)),
)]
pub async fn get(
    State(app): State<App>,
    caller: Caller,
    ApiPath((org_id, id)): ApiPath<(String, String)>,
) -> ApiResult<Json<PaymentOut>> {
    let org = caller.org(&app, &org_id).await?;
    Ok(Json(flow::payment_view(&app, &org, &id).await?))
}

/// The member's limits and spending in the current day and month.
#[utoipa::path(
    get,
    path = "/v1/orgs/{org}/members/{id}/spending",
    operation_id = "memberSpending",
    tag = "payments",
    params(("org" = String, Path, description = "The org's id"), ("id" = String, Path, description = "The member's id")),
    responses((status = 200, description = "Limits, used, held and remaining", body = crate::flows::payments::SpendingOut)),
)]
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
