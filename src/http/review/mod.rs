//! The review page behind email links (DESIGN flow step 5, invariants 2, 6, 9).
//!
//! `GET /review/{token}` (and HEAD) shows the request and a form; it changes
//! nothing, because mail scanners fetch every link. `POST /review/{token}`
//! decides, once, through [`crate::store::decisions::decide`]. The form carries
//! the token's CSRF secret in a hidden field and the GET sets it in a
//! `SameSite=Strict` cookie scoped to the link's path; the POST must echo both.
//!
//! Unknown, malformed, expired, superseded and revoked links all get the same
//! 404 page. A link that was live when its request was decided (or withdrawn)
//! gets a 409 page naming who decided and when.
use std::sync::OnceLock;

use axum::{
    Router,
    extract::{Form, Path, State, rejection::FormRejection, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use base64::Engine;
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::{
    app::App,
    domain::{ids::Locale, request::Decision, request::RequestStatus},
    jobs::notify::region_tz,
    mail::{ReviewerKind, render::format_time},
    store::{
        decisions::{self, DecideError, Decider, RequestView, ReviewerDecider},
        requests,
        tokens::{self, TokenRow},
    },
};

mod i18n;

use i18n::{Texts, event_word, status_word, texts};

const CSS: &str = include_str!("page.css");
const PAGE: &str = include_str!("page.html");
const COOKIE: &str = "approvald_csrf";

pub fn router() -> Router<App> {
    let hv = HeaderValue::from_static;
    Router::new()
        .route("/review/{token}", get(show).post(submit))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            hv("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
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
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_str(csp()).expect("CSP is ASCII"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::HeaderName::from_static("x-robots-tag"),
            hv("noindex, nofollow"),
        ))
}

/// No script, no images, no frames, no external anything: only the page's
/// own stylesheet (by hash) and forms posting back to this origin.
pub fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(CSS.as_bytes()));
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
        )
    })
}

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        env.set_formatter(crate::mail::render::formatter);
        env.add_template("page.html", PAGE)
            .expect("review page template parses");
        env
    })
}

#[derive(Serialize, Default)]
struct PageData {
    lang: &'static str,
    page_title: String,
    notice: Option<Notice>,
    req: Option<ReqData>,
    events: Vec<EventData>,
    form: Option<FormData>,
}

#[derive(Serialize)]
struct Notice {
    kind: &'static str,
    text: String,
}

#[derive(Serialize)]
struct ReqData {
    number: String,
    kind_title: String,
    org_name: String,
    requester: String,
    submitted_at: String,
    due_at: String,
    status: String,
    remark: String,
    documents: Vec<DocData>,
}

#[derive(Serialize)]
struct DocData {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    url: String,
}

#[derive(Serialize)]
struct EventData {
    at: String,
    label: String,
    actor: Option<String>,
    note: Option<String>,
}

#[derive(Serialize)]
struct FormData {
    action: String,
    csrf: String,
    reviewer_name: String,
    comment: String,
    /// The deadline may still be extended (once).
    can_extend: bool,
}

fn html(status: StatusCode, data: &PageData, t: &Texts) -> Response {
    let body = env()
        .get_template("page.html")
        .and_then(|tpl| {
            tpl.render(minijinja::context! {
                css => Value::from_safe_string(CSS.to_string()),
                t => Value::from_serialize(t),
                ..Value::from_serialize(data)
            })
        })
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "review page failed to render");
            "<!DOCTYPE html><title>Error</title><p>The page could not be shown.</p>".to_string()
        });
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The one page for every link that does not work: unknown, malformed,
/// expired, superseded, revoked. Three languages, since nobody is known.
fn invalid() -> Response {
    let data = PageData {
        lang: "en",
        page_title: "This link is not valid · 此链接无效 · このリンクは無効です".into(),
        notice: Some(Notice {
            kind: "error",
            text: "This review link is not valid: it may be mistyped, expired, or replaced by a newer mail. \
                   Use the link in the most recent mail, or ask the sender for a new one. \
                   · 此审核链接无效：可能输入有误、已过期，或已被新邮件中的链接取代。请使用最新邮件中的链接。 \
                   · この審査リンクは無効です。入力の誤り、期限切れ、または新しいメールで置き換えられた可能性があります。最新のメールのリンクをご利用ください。"
                .into(),
        }),
        ..PageData::default()
    };
    html(StatusCode::NOT_FOUND, &data, texts(Locale::En))
}

fn server_error(e: anyhow::Error) -> Response {
    tracing::error!(error = ?e, "review page failed");
    let data = PageData {
        lang: "en",
        page_title: "Temporary problem · 暂时无法处理 · 一時的な問題".into(),
        notice: Some(Notice {
            kind: "error",
            text: "The page could not be loaded. Nothing was changed; please try again in a moment. \
                   · 页面暂时无法加载，未做任何更改，请稍后重试。 · ページを読み込めませんでした。変更は行われていません。しばらくしてから再度お試しください。"
                .into(),
        }),
        ..PageData::default()
    };
    html(StatusCode::SERVICE_UNAVAILABLE, &data, texts(Locale::En))
}

/// What a link leads to.
enum Resolved {
    /// Not a working link (same page for every reason).
    Invalid,
    /// The request was decided or withdrawn while this link was live.
    Closed(Box<Ctx>),
    /// A live link on an open request.
    Live(Box<Ctx>),
    /// A working link whose reviewer no longer may review the request.
    NoAuthority(Locale),
}

#[derive(Clone)]
struct Ctx {
    row: TokenRow,
    view: RequestView,
    reviewer_kind: ReviewerKind,
    reviewer_name: String,
    locale: Locale,
}

async fn resolve(app: &App, token: &str) -> anyhow::Result<Resolved> {
    let Some(row) = tokens::find(&app.db, token).await? else {
        return Ok(Resolved::Invalid);
    };
    let now = app.now_ms();
    if now >= row.expires_at {
        return Ok(Resolved::Invalid);
    }
    let Some(reviewer) = row.reviewer() else {
        return Ok(Resolved::Invalid);
    };
    let Some(view) = decisions::view(&app.db, &row.request_id).await? else {
        return Ok(Resolved::Invalid);
    };
    let Some((reviewer_name, locale)) =
        decisions::reviewer_profile(&app.db, reviewer.kind, &reviewer.id).await?
    else {
        return Ok(Resolved::Invalid);
    };
    let status = RequestStatus::parse(&view.status);
    let ctx = |row| {
        Box::new(Ctx {
            row,
            view: view.clone(),
            reviewer_kind: reviewer.kind,
            reviewer_name,
            locale,
        })
    };
    let terminal = status.is_some_and(|s| s.is_terminal());
    if terminal {
        let closed_at = view.decided_at.unwrap_or(view.updated_at);
        let live_at_close = row.used_at.is_some() || row.revoked_at.is_none_or(|r| r >= closed_at);
        if !live_at_close {
            return Ok(Resolved::Invalid);
        }
    } else if row.used_at.is_some() || row.revoked_at.is_some() {
        return Ok(Resolved::Invalid);
    }
    // The link's power is re-derived at every use from who the reviewer is
    // now, not from who they were when it was mailed.
    let needed = crate::jobs::review::authority_for(
        app,
        &view.kind,
        &view.org_id,
        view.requester_id.as_deref(),
    );
    if !crate::store::reviewers::holds(&app.db, &reviewer, &needed).await? {
        return Ok(Resolved::NoAuthority(locale));
    }
    Ok(if terminal {
        Resolved::Closed(ctx(row))
    } else {
        Resolved::Live(ctx(row))
    })
}

/// The page for a reviewer who no longer may review the request: says so
/// and shows nothing of it.
fn no_authority(locale: Locale) -> Response {
    let t = texts(locale);
    let data = PageData {
        lang: locale.as_str(),
        page_title: t.no_authority_title.to_string(),
        notice: Some(Notice {
            kind: "error",
            text: format!("{} — {}", t.no_authority_title, t.no_authority),
        }),
        ..PageData::default()
    };
    html(StatusCode::FORBIDDEN, &data, t)
}

async fn page_data(app: &App, ctx: &Ctx) -> anyhow::Result<PageData> {
    let l = ctx.locale;
    let t = texts(l);
    let v = &ctx.view;
    let tz = region_tz(app, &v.region);
    let kind_title = app
        .catalog
        .kind(&v.kind)
        .map(|k| k.titles.get(l).to_string())
        .unwrap_or_else(|| v.kind.clone());
    let requester = match (&v.requester_name, &v.requester_login) {
        (Some(n), Some(login)) => format!("{n} ({login})"),
        (Some(n), None) => n.clone(),
        _ => format!("{} ({})", v.org_name, t.the_account_itself),
    };
    let documents = serde_json::from_str::<Vec<serde_json::Value>>(&v.documents)
        .unwrap_or_default()
        .into_iter()
        .map(|d| {
            let s = |k: &str| d.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            match d {
                serde_json::Value::String(name) => DocData {
                    name,
                    kind: String::new(),
                    url: String::new(),
                },
                _ => DocData {
                    name: s("name"),
                    kind: s("type"),
                    url: s("url"),
                },
            }
        })
        .collect();
    let events = requests::events(&app.db, &v.id)
        .await?
        .into_iter()
        .map(|e| {
            let detail: serde_json::Value = serde_json::from_str(&e.detail).unwrap_or_default();
            let note = ["comment", "reason"].iter().find_map(|k| {
                detail
                    .get(*k)
                    .and_then(|x| x.as_str())
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            });
            EventData {
                at: format_time(e.at, tz, l),
                label: event_word(l, &e.kind),
                actor: e.actor,
                note,
            }
        })
        .collect();
    Ok(PageData {
        lang: l.as_str(),
        page_title: format!("{} {}", t.title, v.number),
        req: Some(ReqData {
            number: v.number.clone(),
            kind_title,
            org_name: v.org_name.clone(),
            requester,
            submitted_at: format_time(v.created_at, tz, l),
            due_at: format_time(v.sla_due_at, tz, l),
            status: status_word(l, &v.status),
            remark: v.remark.clone(),
            documents,
        }),
        events,
        ..PageData::default()
    })
}

fn closed_notice(app: &App, ctx: &Ctx) -> Notice {
    let t = texts(ctx.locale);
    let v = &ctx.view;
    let tz = region_tz(app, &v.region);
    let at = format_time(v.decided_at.unwrap_or(v.updated_at), tz, ctx.locale);
    let text = if v.status == "cancelled" {
        t.cancelled_at.replace("{at}", &at)
    } else {
        t.decided_by_at
            .replace("{status}", &status_word(ctx.locale, &v.status))
            .replace("{by}", v.decided_by.as_deref().unwrap_or("system"))
            .replace("{at}", &at)
    };
    Notice {
        kind: "info",
        text: format!("{} — {text}", t.decided_title),
    }
}

async fn closed_page(app: &App, ctx: &Ctx) -> Response {
    match page_data(app, ctx).await {
        Ok(mut data) => {
            data.notice = Some(closed_notice(app, ctx));
            html(StatusCode::CONFLICT, &data, texts(ctx.locale))
        }
        Err(e) => server_error(e),
    }
}

fn review_path(token: &str) -> String {
    format!("/review/{token}")
}

fn csrf_cookie(app: &App, token: &str, csrf: &str, max_age_secs: i64) -> HeaderValue {
    let secure = if app.config.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}={csrf}; Path={}; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{secure}",
        review_path(token)
    ))
    .expect("cookie is ASCII")
}

/// The form page for a live link, with `notice` and the comment typed so far.
async fn form_page(
    app: &App,
    token: &str,
    ctx: &Ctx,
    status: StatusCode,
    notice: Option<Notice>,
    comment: &str,
) -> Response {
    let mut data = match page_data(app, ctx).await {
        Ok(d) => d,
        Err(e) => return server_error(e),
    };
    data.notice = notice;
    data.form = Some(FormData {
        action: review_path(token),
        csrf: ctx.row.csrf.clone(),
        reviewer_name: ctx.reviewer_name.clone(),
        comment: comment.to_string(),
        can_extend: ctx.view.extended_at.is_none() && ctx.view.status == "in_review",
    });
    let mut resp = html(status, &data, texts(ctx.locale));
    let max_age = ((ctx.row.expires_at - app.now_ms()) / 1000).max(1);
    resp.headers_mut().insert(
        header::SET_COOKIE,
        csrf_cookie(app, token, &ctx.row.csrf, max_age),
    );
    resp
}

/// GET (and HEAD): read-only.
#[utoipa::path(
    get,
    path = "/review/{token}",
    operation_id = "reviewPage",
    tag = "review",
    security(()),
    params(("token" = String, Path, description = "The single-use token of the link in the reviewer's email")),
    responses(
        (status = 200, description = "The request and the Approve / Reject form (sets the `approvald_csrf` cookie); nothing changes on GET", content_type = "text/html", body = String),
        (status = 403, description = "The reviewer may no longer decide", content_type = "text/html", body = String),
        (status = 404, description = "The link is not valid (mistyped, expired, replaced)", content_type = "text/html", body = String),
        (status = 409, description = "Already decided: by whom and when", content_type = "text/html", body = String),
        (status = 503, description = "A temporary problem", content_type = "text/html", body = String),
    ),
)]
async fn show(State(app): State<App>, token: Result<Path<String>, PathRejection>) -> Response {
    let Ok(Path(token)) = token else {
        return invalid();
    };
    match resolve(&app, &token).await {
        Err(e) => server_error(e),
        Ok(Resolved::Invalid) => invalid(),
        Ok(Resolved::NoAuthority(l)) => no_authority(l),
        Ok(Resolved::Closed(ctx)) => closed_page(&app, &ctx).await,
        Ok(Resolved::Live(ctx)) => form_page(&app, &token, &ctx, StatusCode::OK, None, "").await,
    }
}

/// The review page's form (`application/x-www-form-urlencoded`), posted
/// with the page's CSRF value in `csrf` and in the `approvald_csrf` cookie.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = ReviewDecision)]
pub struct DecisionForm {
    /// `approve`, `reject` (a `comment` is then required) or `extend`.
    decision: Option<String>,
    /// The reviewer's comment; with `extend`, the reason.
    comment: Option<String>,
    /// The page's CSRF value (also sent as the `approvald_csrf` cookie).
    csrf: Option<String>,
    /// With `decision=extend`: 2 or 3 business days.
    extend_days: Option<String>,
}

/// POST with `decision=extend`: move the deadline once (issue 6). The link
/// stays live: the reviewer still has to decide.
async fn extend(app: &App, token: &str, ctx: &Ctx, days: Option<&str>, reason: &str) -> Response {
    use crate::flows::requests::{ExtendError, Extension};
    let t = texts(ctx.locale);
    let notice = |kind: &'static str, text: String| Some(Notice { kind, text });
    let days = match days.and_then(|d| d.parse::<u32>().ok()) {
        Some(d @ 2..=3) => d,
        _ => {
            let n = notice("error", t.err_extend_days.to_string());
            return form_page(app, token, ctx, StatusCode::UNPROCESSABLE_ENTITY, n, "").await;
        }
    };
    let reason = match crate::domain::ids::parse_text("reason", reason, 2000, true) {
        Ok(r) => r,
        Err(_) => {
            let n = notice("error", t.err_extend_reason.to_string());
            return form_page(app, token, ctx, StatusCode::UNPROCESSABLE_ENTITY, n, "").await;
        }
    };
    let by = ctx.reviewer_name.clone();
    let actor = decisions::reviewer_actor(ctx.reviewer_kind, &ctx.row.reviewer_id);
    let extended = crate::flows::requests::extend(
        app,
        &ctx.view.id,
        Extension::Reviewer { days },
        &reason,
        &actor,
        &by,
    );
    match crate::audit::acting(actor.clone(), extended).await {
        Err(e) => server_error(e),
        Ok(Ok(ext)) => {
            let due = ext.due_ms;
            let view = match decisions::view(&app.db, &ctx.view.id).await {
                Ok(Some(v)) => v,
                Ok(None) => return invalid(),
                Err(e) => return server_error(e),
            };
            let tz = region_tz(app, &view.region);
            let text = format!("{} {}.", t.extended_ok, format_time(due, tz, ctx.locale));
            let now = Ctx {
                view,
                ..ctx.clone()
            };
            form_page(app, token, &now, StatusCode::OK, notice("ok", text), "").await
        }
        Ok(Err(ExtendError::AlreadyExtended)) => {
            let n = notice("error", t.err_extend_once.to_string());
            form_page(app, token, ctx, StatusCode::CONFLICT, n, "").await
        }
        Ok(Err(ExtendError::NotInReview | ExtendError::NotOpen | ExtendError::NotFound)) => {
            let n = notice("error", t.err_not_in_review.to_string());
            form_page(app, token, ctx, StatusCode::CONFLICT, n, "").await
        }
        Ok(Err(ExtendError::BadDays)) => {
            let n = notice("error", t.err_extend_days.to_string());
            form_page(app, token, ctx, StatusCode::UNPROCESSABLE_ENTITY, n, "").await
        }
        Ok(Err(ExtendError::NoReason)) => {
            let n = notice("error", t.err_extend_reason.to_string());
            form_page(app, token, ctx, StatusCode::UNPROCESSABLE_ENTITY, n, "").await
        }
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn same(a: &str, b: &str) -> bool {
    // Compare digests so the time taken says nothing about the secret.
    Sha256::digest(a.as_bytes()) == Sha256::digest(b.as_bytes())
}

/// POST: decide.
#[utoipa::path(
    post,
    path = "/review/{token}",
    operation_id = "reviewDecide",
    tag = "review",
    security(()),
    params(("token" = String, Path, description = "The single-use token of the link in the reviewer's email")),
    request_body(content = DecisionForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Decided (or the deadline extended): the page again, with the outcome", content_type = "text/html", body = String),
        (status = 400, description = "The form could not be read: the page again, with the error", content_type = "text/html", body = String),
        (status = 403, description = "The CSRF value is missing or wrong, or the reviewer may no longer decide", content_type = "text/html", body = String),
        (status = 404, description = "The link is not valid (mistyped, expired, replaced)", content_type = "text/html", body = String),
        (status = 409, description = "Already decided (by whom, when) or already extended", content_type = "text/html", body = String),
        (status = 413, description = "The body is larger than `server.body_limit`", content_type = "application/problem+json", body = crate::http::error::Problem),
        (status = 422, description = "No decision chosen, a rejection without a reason, or a bad extension", content_type = "text/html", body = String),
        (status = 503, description = "A temporary problem; nothing was changed", content_type = "text/html", body = String),
    ),
)]
async fn submit(
    State(app): State<App>,
    token: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    form: Result<Form<DecisionForm>, FormRejection>,
) -> Response {
    let Ok(Path(token)) = token else {
        return invalid();
    };
    let ctx = match resolve(&app, &token).await {
        Err(e) => return server_error(e),
        Ok(Resolved::Invalid) => return invalid(),
        Ok(Resolved::NoAuthority(l)) => return no_authority(l),
        Ok(Resolved::Closed(ctx)) => return closed_page(&app, &ctx).await,
        Ok(Resolved::Live(ctx)) => ctx,
    };
    let t = texts(ctx.locale);
    let err = |text: &str| {
        Some(Notice {
            kind: "error",
            text: text.to_string(),
        })
    };
    let Ok(Form(form)) = form else {
        return form_page(
            &app,
            &token,
            &ctx,
            StatusCode::BAD_REQUEST,
            err(t.err_form),
            "",
        )
        .await;
    };
    let comment = form.comment.unwrap_or_default();
    let csrf_ok = form.csrf.as_deref().is_some_and(|c| same(c, &ctx.row.csrf))
        && cookie_value(&headers, COOKIE).is_some_and(|c| same(c, &ctx.row.csrf));
    if !csrf_ok {
        return form_page(
            &app,
            &token,
            &ctx,
            StatusCode::FORBIDDEN,
            err(t.err_form),
            &comment,
        )
        .await;
    }
    if form.decision.as_deref() == Some("extend") {
        return extend(&app, &token, &ctx, form.extend_days.as_deref(), &comment).await;
    }
    let Some(decision) = form.decision.as_deref().and_then(Decision::parse) else {
        return form_page(
            &app,
            &token,
            &ctx,
            StatusCode::UNPROCESSABLE_ENTITY,
            err(t.err_choose),
            &comment,
        )
        .await;
    };
    if decision == Decision::Reject && comment.trim().is_empty() {
        return form_page(
            &app,
            &token,
            &ctx,
            StatusCode::UNPROCESSABLE_ENTITY,
            err(t.err_reason),
            &comment,
        )
        .await;
    }
    let decider = Decider::Reviewer(ReviewerDecider {
        kind: ctx.reviewer_kind,
        id: ctx.row.reviewer_id.clone(),
        name: ctx.reviewer_name.clone(),
        token_hash: Some(ctx.row.token_hash.clone()),
    });
    match decisions::decide(&app, &ctx.view.id, decider, decision, &comment).await {
        Ok(_) => {
            // Show the request as it is now, with the outcome on top.
            let view = match decisions::view(&app.db, &ctx.view.id).await {
                Ok(Some(v)) => v,
                Ok(None) => return invalid(),
                Err(e) => return server_error(e),
            };
            let done = Ctx { view, ..*ctx };
            let mut data = match page_data(&app, &done).await {
                Ok(d) => d,
                Err(e) => return server_error(e),
            };
            let text = match decision {
                Decision::Approve => t.thanks_approved,
                Decision::Reject => t.thanks_rejected,
            };
            data.notice = Some(Notice {
                kind: "ok",
                text: text.to_string(),
            });
            let mut resp = html(StatusCode::OK, &data, t);
            resp.headers_mut()
                .insert(header::SET_COOKIE, csrf_cookie(&app, &token, "", 0));
            resp
        }
        Err(DecideError::AlreadyDecided { .. }) => match resolve(&app, &token).await {
            Ok(Resolved::Closed(c)) => closed_page(&app, &c).await,
            Ok(_) => invalid(),
            Err(e) => server_error(e),
        },
        Err(DecideError::SelfReview) => {
            form_page(
                &app,
                &token,
                &ctx,
                StatusCode::FORBIDDEN,
                err(t.err_self),
                &comment,
            )
            .await
        }
        Err(DecideError::NotInReview) => {
            form_page(
                &app,
                &token,
                &ctx,
                StatusCode::CONFLICT,
                err(t.err_not_in_review),
                &comment,
            )
            .await
        }
        Err(DecideError::BadComment(msg)) => {
            let text = if decision == Decision::Reject && comment.trim().is_empty() {
                t.err_reason.to_string()
            } else {
                msg
            };
            form_page(
                &app,
                &token,
                &ctx,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(Notice {
                    kind: "error",
                    text,
                }),
                &comment,
            )
            .await
        }
        Err(DecideError::NoAuthority) => no_authority(ctx.locale),
        Err(DecideError::MemberInactive { .. }) => {
            form_page(
                &app,
                &token,
                &ctx,
                StatusCode::CONFLICT,
                err(t.err_member_inactive),
                &comment,
            )
            .await
        }
        Err(DecideError::LinkInvalid | DecideError::NotFound) => invalid(),
        Err(DecideError::Store(e)) => server_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csp_pins_the_stylesheet() {
        let c = csp();
        assert!(
            c.starts_with("default-src 'none'; style-src 'sha256-"),
            "{c}"
        );
        assert!(!c.contains("unsafe"), "{c}");
        assert!(!c.contains("script-src"), "no script is ever allowed: {c}");
    }

    #[test]
    fn invalid_page_renders() {
        let r = invalid();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn cookies_are_parsed() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; approvald_csrf=xyz; b=2"),
        );
        assert_eq!(cookie_value(&h, COOKIE), Some("xyz"));
        assert_eq!(cookie_value(&h, "c"), None);
    }
}
