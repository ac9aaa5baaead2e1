//! Bearer-key authentication and the org boundary (invariant 5).
use axum::{
    extract::FromRequestParts,
    http::{HeaderValue, header, request::Parts},
    response::{IntoResponse, Response},
};

use crate::{
    app::App,
    http::ApiError,
    store::{self, orgs::Org},
};

/// Who is calling: the key that authenticated the request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: String,
    pub scope: CallerScope,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerScope {
    Platform,
    Org(String),
}

impl Caller {
    /// `key:<id>`: the actor recorded in audit rows and request events.
    pub fn actor(&self) -> String {
        format!("key:{}", self.key_id)
    }

    /// Platform-only operations answer 403 to an org key.
    pub fn require_platform(&self) -> Result<(), ApiError> {
        match self.scope {
            CallerScope::Platform => Ok(()),
            CallerScope::Org(_) => Err(ApiError::forbidden("this operation needs a platform key")),
        }
    }

    /// The org `org_id`, if this caller may act on it: a platform key may act
    /// on any org, an org key only on its own. Anything else is 404, exactly
    /// as if the org did not exist (an org key learns nothing of others).
    pub async fn org(&self, app: &App, org_id: &str) -> Result<Org, ApiError> {
        self.check_boundary(org_id)?;
        store::orgs::get_fast(&app.db, app.inline.as_ref(), org_id)
            .await?
            .ok_or_else(|| ApiError::not_found("org"))
    }
}

/// A 401 carries `WWW-Authenticate: Bearer` (RFC 6750).
pub struct AuthRejection(ApiError);

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        let unauthorized = self.0.status == axum::http::StatusCode::UNAUTHORIZED;
        let mut resp = self.0.into_response();
        if unauthorized {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"approvald\""),
            );
        }
        resp
    }
}

impl From<ApiError> for AuthRejection {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

/// The bearer token of an `Authorization` header, if it has that shape.
pub(super) fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized("send an API key as `Authorization: Bearer <key>`")
    })?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not valid text"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("use `Authorization: Bearer <key>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized("use `Authorization: Bearer <key>`"));
    }
    Ok(token.trim())
}

impl FromRequestParts<App> for Caller {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        Caller::authenticate(app, token).await
    }
}

impl Caller {
    /// The caller the live key `token` makes: 401 when there is none, 403
    /// for an operator key.
    pub(super) async fn authenticate(app: &App, token: &str) -> Result<Self, AuthRejection> {
        let key = store::keys::authenticate_fast(&app.db, app.inline.as_ref(), token)
            .await
            .map_err(ApiError::from)?;
        Ok(Caller::from_found(key)?)
    }

    /// The caller a key lookup's answer makes: 401 for no live key, 403 for
    /// an operator key.
    pub(super) fn from_found(key: Option<store::keys::ApiKey>) -> Result<Self, ApiError> {
        let key = key.ok_or_else(unknown_key)?;
        Caller::from_key(key.id, &key.scope, key.org_id)
    }

    /// 404 `org` when this caller may not act on `org_id` (see [`Caller::org`]).
    pub(super) fn check_boundary(&self, org_id: &str) -> Result<(), ApiError> {
        match &self.scope {
            CallerScope::Org(own) if own != org_id => Err(ApiError::not_found("org")),
            _ => Ok(()),
        }
    }
}

/// A bearer key of the right shape, not looked up yet: for a call whose own
/// first statement looks it up with the rest (`payments/authorize`). 401
/// without one, as [`Caller`] answers.
pub struct Token(pub String);

impl FromRequestParts<App> for Token {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _: &App) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        if !store::keys::well_formed(token) {
            return Err(unknown_key().into());
        }
        Ok(Token(token.to_string()))
    }
}

/// 401: no live key has this value.
pub(super) fn unknown_key() -> ApiError {
    ApiError::unauthorized("the API key is unknown or revoked")
}

impl Caller {
    /// The caller a live key makes: 403 for an operator key (dashboard only).
    pub(super) fn from_key(
        key_id: String,
        scope: &str,
        org_id: Option<String>,
    ) -> Result<Self, ApiError> {
        let scope = match (scope, org_id) {
            ("platform", _) => CallerScope::Platform,
            ("org", Some(org)) => CallerScope::Org(org),
            ("operator", _) => {
                return Err(ApiError::forbidden(
                    "an operator key only signs in to the dashboard at /ops/login",
                ));
            }
            (other, _) => {
                return Err(ApiError::internal(anyhow::anyhow!(
                    "api key {key_id} has an unusable scope {other:?}"
                )));
            }
        };
        Ok(Caller { key_id, scope })
    }
}
