//! The operator dashboard, `/ops` (DESIGN "Operator dashboard", issue 15).
//!
//! Server-rendered HTML from minijinja templates embedded in the binary; a
//! stylesheet and a few lines of script (live refresh of read-only pages,
//! paused while the tab is hidden) served from `/ops/assets/`. Nothing is
//! loaded from anywhere else (the CSP says so).
//!
//! Sign-in: `/ops/login` takes an operator key (`approvald keys create
//! --operator [--read-only]`) in the form field `key` and sets the session
//! cookie `approvald_ops` (`HttpOnly; SameSite=Strict; Path=/ops`, `Secure`
//! when `server.public_url` is https). Only the SHA-256 of the cookie value
//! is stored (`ops_sessions`), with a per-session CSRF secret.
//!
//! Every change is a POST that must carry the session's CSRF secret in the
//! field `csrf` and come from this origin (`Origin` equal to
//! `server.public_url`'s origin or to the request's own host, or, without
//! `Origin`, `Sec-Fetch-Site: same-origin`). A read-only key gets 403 for
//! every change. Every change writes an `audit_log` operation row with the
//! actor `operator:<key id>`.
//!
//! `/ops` answers 404 unless `ops.enabled`.
use std::sync::OnceLock;

use axum::{
    Router,
    extract::{FromRequestParts, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use base64::Engine;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::{app::App, on_db, on_tx, store::audit};

pub mod business;
mod charts;
pub mod now;
mod queues;
mod requests;
mod reviewers;

const SESSION_COOKIE: &str = "approvald_ops";
const LOGIN_COOKIE: &str = "approvald_ops_login";
const CSS: &str = include_str!("templates/ops.css");
const JS: &str = include_str!("templates/ops.js");

/// The `/ops` routes (none when `ops.enabled` is false).
pub fn router(app: &App) -> Router<App> {
    if !app.config.ops.enabled {
        return Router::new();
    }
    let hv = HeaderValue::from_static;
    Router::new()
        .route("/ops", get(now::page))
        .route("/ops/login", get(login_form).post(login))
        .route("/ops/logout", post(logout))
        .route("/ops/requests", get(requests::list))
        .route("/ops/requests/{id}", get(requests::detail))
        .route("/ops/requests/{id}/resend", post(requests::resend))
        .route("/ops/requests/{id}/extend", post(requests::extend))
        .route("/ops/requests/{id}/cancel", post(requests::cancel))
        .route("/ops/reviewers", get(reviewers::page))
        .route("/ops/queues", get(queues::page))
        .route("/ops/queues/{queue}/pause", post(queues::pause))
        .route("/ops/queues/{queue}/resume", post(queues::resume))
        .route("/ops/queues/{queue}/dead", post(queues::dead))
        .route("/ops/charts", get(charts::page))
        .route("/ops/assets/ops.css", get(css))
        .route("/ops/assets/ops.js", get(js))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            hv(
                "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
                connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
            ),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            hv("no-store"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            hv("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            hv("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            hv("same-origin"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::HeaderName::from_static("x-robots-tag"),
            hv("noindex, nofollow"),
        ))
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        JS,
    )
        .into_response()
}

// ---- templates ---------------------------------------------------------

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        for (name, text) in [
            ("layout.html", include_str!("templates/layout.html")),
            ("login.html", include_str!("templates/login.html")),
            ("message.html", include_str!("templates/message.html")),
            ("now.html", include_str!("templates/now.html")),
            ("requests.html", include_str!("templates/requests.html")),
            ("request.html", include_str!("templates/request.html")),
            ("reviewers.html", include_str!("templates/reviewers.html")),
            ("queues.html", include_str!("templates/queues.html")),
            ("confirm.html", include_str!("templates/confirm.html")),
            ("charts.html", include_str!("templates/charts.html")),
        ] {
            env.add_template(name, text)
                .unwrap_or_else(|e| panic!("ops template {name} parses: {e}"));
        }
        env
    })
}

/// What every page gets besides its own data.
#[derive(Serialize)]
struct Chrome<'a> {
    title: &'a str,
    nav: &'a str,
    csrf: &'a str,
    read_only: bool,
    /// Re-fetch the page every N seconds while visible (0: never).
    refresh: u32,
    generated_at: String,
    flash: Option<String>,
}

/// Render `template` with `data` plus the page chrome.
fn render(
    template: &str,
    session: Option<&Session>,
    title: &str,
    nav: &str,
    refresh: u32,
    now_ms: i64,
    data: impl Serialize,
) -> Response {
    render_status(
        StatusCode::OK,
        template,
        session,
        title,
        nav,
        refresh,
        now_ms,
        data,
    )
}

#[allow(clippy::too_many_arguments)]
fn render_status(
    status: StatusCode,
    template: &str,
    session: Option<&Session>,
    title: &str,
    nav: &str,
    refresh: u32,
    now_ms: i64,
    data: impl Serialize,
) -> Response {
    let chrome = Chrome {
        title,
        nav,
        csrf: session.map(|s| s.csrf.as_str()).unwrap_or(""),
        read_only: session.is_some_and(|s| s.read_only),
        refresh,
        generated_at: abs_time(now_ms),
        flash: None,
    };
    let ctx = minijinja::context! { chrome => chrome, signed_in => session.is_some(), ..minijinja::Value::from_serialize(&data) };
    match env().get_template(template).and_then(|t| t.render(ctx)) {
        Ok(html) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(template, error = %format!("{e:#}"), "ops page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "the page could not be rendered; it has been logged",
            )
                .into_response()
        }
    }
}

/// A small page that says one thing (errors, refusals).
fn message(status: StatusCode, session: Option<&Session>, title: &str, text: &str) -> Response {
    render_status(
        status,
        "message.html",
        session,
        title,
        "",
        0,
        chrono::Utc::now().timestamp_millis(),
        minijinja::context! { heading => title, text => text },
    )
}

/// An internal failure, logged, as a page.
pub(crate) fn failure(session: Option<&Session>, e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "ops page failed");
    message(
        StatusCode::INTERNAL_SERVER_ERROR,
        session,
        "Something went wrong",
        "The page could not be built; the error has been logged.",
    )
}

// ---- times -------------------------------------------------------------

/// `2026-11-29 03:10:05 UTC`.
pub(crate) fn abs_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// `2026-11-29 11:10 CST` in `tz`.
pub(crate) fn local_time(ms: i64, tz: chrono_tz::Tz) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string())
        .unwrap_or_default()
}

/// `3 h 20 min`, `2 d 4 h`, `45 s`.
pub(crate) fn span(ms: i64) -> String {
    let s = ms.unsigned_abs() / 1000;
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min")
    } else {
        format!("{s} s")
    }
}

/// `in 3 h 20 min` / `12 min ago`.
pub(crate) fn rel_time(ms: i64, now_ms: i64) -> String {
    if ms >= now_ms {
        format!("in {}", span(ms - now_ms))
    } else {
        format!("{} ago", span(now_ms - ms))
    }
}

/// A time shown both ways.
#[derive(Serialize, Clone)]
pub(crate) struct When {
    pub abs: String,
    pub rel: String,
    pub iso: String,
}

pub(crate) fn when(ms: i64, now_ms: i64) -> When {
    When {
        abs: abs_time(ms),
        rel: rel_time(ms, now_ms),
        iso: chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default(),
    }
}

// ---- sessions ----------------------------------------------------------

/// A signed-in operator.
#[derive(Debug, Clone)]
pub struct Session {
    pub key_id: String,
    pub read_only: bool,
    pub csrf: String,
    id_hash: String,
}

impl Session {
    /// The actor recorded in audit rows and request events.
    pub fn actor(&self) -> String {
        format!("operator:{}", self.key_id)
    }
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn secure(app: &App) -> &'static str {
    if app.config.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

/// Equal in constant time (for secrets).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Not signed in: pages redirect to the sign-in form, changes get 401.
pub struct NotSignedIn(bool);

impl IntoResponse for NotSignedIn {
    fn into_response(self) -> Response {
        if self.0 {
            Redirect::to("/ops/login").into_response()
        } else {
            message(
                StatusCode::UNAUTHORIZED,
                None,
                "Sign in first",
                "Your session has ended or you have not signed in. Sign in at /ops/login.",
            )
        }
    }
}

impl FromRequestParts<App> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Response> {
        let page = parts.method == Method::GET || parts.method == Method::HEAD;
        let Some(raw) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(NotSignedIn(page).into_response());
        };
        let id_hash = sha256_hex(raw);
        let now = app.now_ms();
        let row: Result<Option<(String, bool, String)>, sqlx::Error> = on_db!(&app.db, |p| {
            sqlx::query_as(
                "SELECT s.key_id, s.read_only, s.csrf FROM ops_sessions s \
                 JOIN api_keys k ON k.id = s.key_id \
                 WHERE s.id_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 \
                   AND k.revoked_at IS NULL AND k.scope = 'operator'",
            )
            .bind(&id_hash)
            .bind(now)
            .fetch_optional(p)
            .await
        });
        match row {
            Ok(Some((key_id, read_only, csrf))) => Ok(Session {
                key_id,
                read_only,
                csrf,
                id_hash,
            }),
            Ok(None) => Err(NotSignedIn(page).into_response()),
            Err(e) => Err(failure(None, e)),
        }
    }
}

/// Is this POST from our own pages? `Origin` must be ours; without it,
/// `Sec-Fetch-Site` must say same-origin. Neither: refused.
fn same_origin(app: &App, headers: &HeaderMap) -> bool {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.trim_end_matches('/');
        let public = public_origin(app.config.public_url());
        if origin == public {
            return true;
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        return !host.is_empty()
            && (origin == format!("http://{host}") || origin == format!("https://{host}"));
    }
    headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "same-origin")
}

/// `scheme://host[:port]` of a URL.
fn public_origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let host = rest.split('/').next().unwrap_or("");
    format!("{scheme}://{host}")
}

/// The checks every change passes, in order: same origin, CSRF secret,
/// not read-only. Returns the refusal page when one fails.
pub(crate) fn refuse_change(
    app: &App,
    session: &Session,
    headers: &HeaderMap,
    csrf: &str,
) -> Option<Response> {
    if !same_origin(app, headers) {
        return Some(message(
            StatusCode::FORBIDDEN,
            Some(session),
            "Refused: not from this site",
            "Changes must come from the dashboard's own pages (Origin or Sec-Fetch-Site did not match).",
        ));
    }
    if !same(csrf, &session.csrf) {
        return Some(message(
            StatusCode::FORBIDDEN,
            Some(session),
            "Refused: the form has expired",
            "The form's CSRF token did not match your session. Reload the page and try again.",
        ));
    }
    if session.read_only {
        return Some(message(
            StatusCode::FORBIDDEN,
            Some(session),
            "Read-only key",
            "You signed in with a read-only operator key: you can see everything and change nothing.",
        ));
    }
    None
}

/// Write the audit row of an operator change that has no transaction of its
/// own (queue actions), in one transaction.
pub(crate) async fn audit_alone(
    app: &App,
    session: &Session,
    action: &str,
    target: Option<&str>,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    let mut tx = app.db.begin().await?;
    let actor = session.actor();
    audit::operation(
        &mut tx,
        audit::Operation {
            org_id: audit::PLATFORM,
            actor: &actor,
            action,
            target,
            detail,
            at: app.now_ms(),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Parse an `application/x-www-form-urlencoded` body into pairs (repeated
/// keys kept, e.g. the ids of a selection).
pub(crate) fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub(crate) fn field<'a>(pairs: &'a [(String, String)], name: &str) -> &'a str {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

// ---- sign-in -----------------------------------------------------------

async fn login_form(State(app): State<App>) -> Response {
    let token = random_token();
    let mut resp = render(
        "login.html",
        None,
        "Sign in",
        "",
        0,
        app.now_ms(),
        minijinja::context! { login_csrf => token, error => "" },
    );
    set_cookie(
        &mut resp,
        &format!(
            "{LOGIN_COOKIE}={token}; Path=/ops/login; HttpOnly; SameSite=Strict; Max-Age=3600{}",
            secure(&app)
        ),
    );
    resp
}

fn set_cookie(resp: &mut Response, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

async fn login(State(app): State<App>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let pairs = form_pairs(&body);
    let form_token = field(&pairs, "csrf");
    let cookie_token = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if !same_origin(&app, &headers) || cookie_token.is_empty() || !same(form_token, cookie_token) {
        return message(
            StatusCode::FORBIDDEN,
            None,
            "Refused: not from this site",
            "Sign in from the dashboard's own sign-in page (reload it and try again).",
        );
    }
    let key = field(&pairs, "key").trim();
    let found = match crate::store::keys::authenticate_operator(&app.db, key).await {
        Ok(f) => f,
        Err(e) => return failure(None, e),
    };
    let now = app.now_ms();
    let Some((key_id, read_only)) = found else {
        tracing::warn!("ops sign-in refused: unknown, revoked or non-operator key");
        let mut resp = render_status(
            StatusCode::UNAUTHORIZED,
            "login.html",
            None,
            "Sign in",
            "",
            0,
            now,
            minijinja::context! {
                login_csrf => cookie_token,
                error => "That is not a live operator key.",
            },
        );
        set_cookie(
            &mut resp,
            &format!(
                "{LOGIN_COOKIE}={cookie_token}; Path=/ops/login; HttpOnly; SameSite=Strict; Max-Age=3600{}",
                secure(&app)
            ),
        );
        return resp;
    };
    let raw = random_token();
    let csrf = random_token();
    let hours = app.config.ops.session_hours as i64;
    let expires = now + hours * 3600 * 1000;
    let result: anyhow::Result<()> = async {
        let mut tx = app.db.begin().await?;
        on_tx!(&mut tx, |c| sqlx::query(
            "INSERT INTO ops_sessions (id_hash, key_id, read_only, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)"
        )
        .bind(sha256_hex(&raw))
        .bind(&key_id)
        .bind(read_only)
        .bind(&csrf)
        .bind(now)
        .bind(expires)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        let actor = format!("operator:{key_id}");
        audit::operation(
            &mut tx,
            audit::Operation {
                org_id: audit::PLATFORM,
                actor: &actor,
                action: "ops.sign_in",
                target: Some(&key_id),
                detail: serde_json::json!({ "read_only": read_only }),
                at: now,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        return failure(None, format!("{e:#}"));
    }
    let mut resp = Redirect::to("/ops").into_response();
    set_cookie(
        &mut resp,
        &format!(
            "{SESSION_COOKIE}={raw}; Path=/ops; HttpOnly; SameSite=Strict; Max-Age={}{}",
            hours * 3600,
            secure(&app)
        ),
    );
    set_cookie(
        &mut resp,
        &format!("{LOGIN_COOKIE}=; Path=/ops/login; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    resp
}

async fn logout(
    State(app): State<App>,
    session: Session,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let pairs = form_pairs(&body);
    // Signing out is allowed to read-only keys: check origin and CSRF only.
    if !same_origin(&app, &headers) || !same(field(&pairs, "csrf"), &session.csrf) {
        return message(
            StatusCode::FORBIDDEN,
            Some(&session),
            "Refused: not from this site",
            "Sign out from the dashboard's own pages.",
        );
    }
    let now = app.now_ms();
    let r: Result<u64, sqlx::Error> = on_db!(&app.db, |p| sqlx::query(
        "UPDATE ops_sessions SET revoked_at = $1 WHERE id_hash = $2 AND revoked_at IS NULL"
    )
    .bind(now)
    .bind(&session.id_hash)
    .execute(p)
    .await
    .map(|r| r.rows_affected()));
    if let Err(e) = r {
        return failure(Some(&session), e);
    }
    let mut resp = Redirect::to("/ops/login").into_response();
    set_cookie(
        &mut resp,
        &format!("{SESSION_COOKIE}=; Path=/ops; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    resp
}

/// Pagination and filters travel in query strings; this keeps only the
/// characters a link needs escaped.
pub(crate) fn qs(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !v.is_empty() {
            s.append_pair(k, v);
        }
    }
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_and_times_read_well() {
        let env = env();
        for t in ["layout.html", "now.html", "queues.html", "charts.html"] {
            assert!(env.get_template(t).is_ok(), "{t}");
        }
        assert_eq!(abs_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(rel_time(0, 90_000), "1 min ago");
        assert_eq!(rel_time(2 * 3600 * 1000 + 60_000, 0), "in 2 h 1 min");
        assert_eq!(span(3 * 86_400_000 + 3_600_000), "3 d 1 h");
        assert_eq!(
            public_origin("https://a.example:8443/x/y"),
            "https://a.example:8443"
        );
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; approvald_ops=xyz; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "nope"), None);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
