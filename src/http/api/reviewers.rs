//! Platform reviewers (platform keys only).
use std::collections::BTreeMap;

use axum::{Json, extract::State, http::StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::{Caller, body::JsonBody, new_id, time};
use crate::{
    app::App,
    db::is_unique_violation,
    domain::ids::{Email, Invalid, Locale, parse_name},
    http::{ApiError, ApiResult, extract::ApiPath},
    on_tx,
    store::{
        self, audit,
        reviewers::{Membership, Reviewer},
    },
};

pub const MAX_GROUPS: usize = 20;

/// A platform reviewer; groups name who reviews which kinds
/// (`platform:<group>` in the catalog). At most 20 distinct groups in all.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReviewer {
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// 1-100 characters (surrounding spaces trimmed), no control characters.
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// `en`, `zh-CN` or `ja` (any case).
    #[schema(pattern = "^([Ee][Nn]|[Zz][Hh]-[Cc][Nn]|[Jj][Aa])$")]
    locale: String,
    /// At least one group (here or in `lead_groups`).
    #[schema(value_type = Vec<GroupName>)]
    groups: Vec<String>,
    /// Groups in which the reviewer is a lead (escalations); each is a group too.
    #[serde(default)]
    #[schema(value_type = Vec<GroupName>)]
    lead_groups: Vec<String>,
}

/// A reviewer group: 1-64 letters, digits, `_` or `-` (surrounding spaces
/// trimmed). Described only: the handler reads plain strings.
#[derive(ToSchema)]
#[schema(pattern = "^\\s*[A-Za-z0-9_-]{1,64}\\s*$")]
#[allow(dead_code)]
struct GroupName(String);

#[derive(Serialize, ToSchema)]
#[schema(as = Reviewer)]
pub struct ReviewerOut {
    id: String,
    email: String,
    name: String,
    #[schema(value_type = Locale)]
    locale: String,
    #[schema(value_type = String, pattern = "^(active|removed)$")]
    status: String,
    groups: Vec<String>,
    lead_groups: Vec<String>,
    created_at: String,
}

impl ReviewerOut {
    fn new(r: Reviewer, groups: &[Membership]) -> Self {
        Self {
            id: r.id,
            email: r.email,
            name: r.name,
            locale: r.locale,
            status: r.status,
            groups: groups.iter().map(|g| g.grp.clone()).collect(),
            lead_groups: groups
                .iter()
                .filter(|g| g.lead)
                .map(|g| g.grp.clone())
                .collect(),
            created_at: time(r.created_at),
        }
    }
}

fn parse_group(s: &str) -> Result<String, Invalid> {
    let t = s.trim();
    if t.is_empty()
        || t.len() > 64
        || !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Invalid::new(
            "groups",
            format!("{s:?}: a group is 1-64 letters, digits, _ or -"),
        ));
    }
    Ok(t.to_string())
}

/// Groups and lead groups as membership rows: a lead group is a group too.
pub fn memberships(groups: &[String], leads: &[String]) -> Result<Vec<Membership>, Invalid> {
    let mut m: BTreeMap<String, bool> = BTreeMap::new();
    for g in groups {
        m.entry(parse_group(g)?).or_insert(false);
    }
    for g in leads {
        m.insert(parse_group(g)?, true);
    }
    if m.is_empty() {
        return Err(Invalid::new("groups", "name at least one group"));
    }
    if m.len() > MAX_GROUPS {
        return Err(Invalid::new(
            "groups",
            format!("at most {MAX_GROUPS} groups"),
        ));
    }
    Ok(m.into_iter()
        .map(|(grp, lead)| Membership { grp, lead })
        .collect())
}

#[utoipa::path(
    post,
    path = "/v1/reviewers",
    operation_id = "createReviewer",
    tag = "reviewers",
    request_body(content = CreateReviewer, example = json!({"email": "rev@platform.example", "name": "Rita", "locale": "en", "groups": ["marketplace"]})),
    responses(
        (status = 201, description = "Created", body = ReviewerOut,
            links(("GetReviewer" = (operation_id = "getReviewer", parameters(("id" = "$response.body#/id")))))),
        (status = 409, description = "A reviewer with this email exists already", body = crate::http::error::Problem, content_type = "application/problem+json"),
    ),
)]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    body: JsonBody<CreateReviewer>,
) -> ApiResult<(StatusCode, Json<ReviewerOut>)> {
    caller.require_platform()?;
    let b = body.value;
    let email = Email::parse(&b.email)?;
    let name = parse_name("name", &b.name)?;
    let locale = Locale::parse(&b.locale)?;
    let groups = memberships(&b.groups, &b.lead_groups)?;
    let now = app.now_ms();
    let r = Reviewer {
        id: new_id(),
        email: email.as_str().to_string(),
        name,
        locale: locale.as_str().to_string(),
        status: "active".into(),
        created_at: now,
    };
    let mut tx = app.db.begin().await?;
    if let Err(e) = store::reviewers::insert(&mut tx, &r, &groups).await {
        return Err(if is_unique_violation(&e) {
            ApiError::conflict("a reviewer with this email exists already")
        } else {
            e.into()
        });
    }
    let actor = caller.actor();
    audit::operation(
        &mut tx,
        audit::Operation {
            org_id: audit::PLATFORM,
            actor: &actor,
            action: "reviewer.create",
            target: Some(&r.id),
            detail: json!({ "groups": groups.iter().map(|g| &g.grp).collect::<Vec<_>>() }),
            at: now,
        },
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(ReviewerOut::new(r, &groups))))
}

#[utoipa::path(
    get,
    path = "/v1/reviewers/{id}",
    operation_id = "getReviewer",
    tag = "reviewers",
    params(("id" = String, Path, description = "The reviewer's id")),
    responses((status = 200, description = "The reviewer", body = ReviewerOut)),
)]
pub async fn get(
    State(app): State<App>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ReviewerOut>> {
    caller.require_platform()?;
    let (r, groups) = store::reviewers::get(&app.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("reviewer"))?;
    Ok(Json(ReviewerOut::new(r, &groups)))
}

/// `POST /v1/reviewers/{id}/remove` (platform): the reviewer gets no new
/// assignments and every live review link they hold stops working at once.
/// The row and their past decisions stay.
/// Take a reviewer off duty: their live review links stop working at once.
#[utoipa::path(
    post,
    path = "/v1/reviewers/{id}/remove",
    operation_id = "removeReviewer",
    tag = "reviewers",
    params(("id" = String, Path, description = "The reviewer's id")),
    responses((status = 200, description = "Removed", body = ReviewerOut)),
)]
pub async fn remove(
    State(app): State<App>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ReviewerOut>> {
    caller.require_platform()?;
    let now = app.now_ms();
    let mut tx = app.db.begin().await?;
    let changed = on_tx!(&mut tx, |c| sqlx::query(
        "UPDATE reviewers SET status = 'removed' WHERE id = $1 AND status = 'active'"
    )
    .bind(&id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    if changed == 0 {
        tx.rollback().await.ok();
        let (r, groups) = store::reviewers::get(&app.db, &id)
            .await?
            .ok_or_else(|| ApiError::not_found("reviewer"))?;
        // Removing twice is a no-op, not an error.
        return Ok(Json(ReviewerOut::new(r, &groups)));
    }
    let revoked = on_tx!(&mut tx, |c| {
        sqlx::query(
        "UPDATE review_tokens SET revoked_at = $2 \
         WHERE reviewer_kind = 'platform' AND reviewer_id = $1 AND used_at IS NULL AND revoked_at IS NULL"
    )
    .bind(&id)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected())
    })?;
    let actor = caller.actor();
    audit::operation(
        &mut tx,
        audit::Operation {
            org_id: audit::PLATFORM,
            actor: &actor,
            action: "reviewer.remove",
            target: Some(&id),
            detail: json!({ "links_revoked": revoked }),
            at: now,
        },
    )
    .await?;
    tx.commit().await?;
    let (r, groups) = store::reviewers::get(&app.db, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("reviewer"))?;
    Ok(Json(ReviewerOut::new(r, &groups)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lead_groups_are_groups_too() {
        let m = memberships(
            &["alcohol".into(), "ftp".into()],
            &["alcohol".into(), "esc".into()],
        )
        .unwrap();
        let got: Vec<(&str, bool)> = m.iter().map(|x| (x.grp.as_str(), x.lead)).collect();
        assert_eq!(got, vec![("alcohol", true), ("esc", true), ("ftp", false)]);
        assert!(memberships(&[], &[]).is_err());
        assert!(memberships(&["a b".into()], &[]).is_err());
        let many: Vec<String> = (0..=MAX_GROUPS).map(|i| format!("g{i}")).collect();
        assert!(memberships(&many, &[]).is_err());
    }
}
