//! `GET /v1/catalog` and `GET /v1/calendars/{region}/due`.
use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Caller;
use crate::{
    app::App,
    domain::{
        calendar::{CalendarError, Region, due_rfc3339},
        catalog::Catalog,
    },
    http::{
        ApiError, ApiResult,
        extract::{ApiPath, ApiQuery},
    },
};

/// The permission catalog: kinds, modules, menus (any key).
#[utoipa::path(
    get,
    path = "/v1/catalog",
    operation_id = "getCatalog",
    tag = "catalog",
    responses((status = 200, description = "The permission kinds that can be requested, the modules and functions roles grant, the menus", body = Catalog)),
)]
pub async fn catalog(State(app): State<App>, _caller: Caller) -> Json<Catalog> {
    Json(app.catalog.clone())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DueQuery {
    /// The start, RFC 3339 with an offset.
    #[param(example = "2026-02-13T10:00:00+08:00")]
    from: String,
    /// Business days to add.
    #[param(minimum = 0, maximum = 10_000)]
    days: u32,
}

#[derive(Serialize, ToSchema)]
pub struct Due {
    region: String,
    from: String,
    days: u32,
    /// RFC 3339 in the region's local offset.
    due: String,
}

/// The due instant of `days` business days from `from` (RFC 3339), in the
/// region's local offset: the same answer as `approvald calendar due`.
#[utoipa::path(
    get,
    path = "/v1/calendars/{region}/due",
    operation_id = "calendarDue",
    tag = "catalog",
    params(("region" = String, Path, description = "A region with a business calendar (`cn`, `jp`)"), DueQuery),
    responses((status = 200, description = "The due instant", body = Due,
        example = json!({"region": "cn", "from": "2026-02-13T10:00:00+08:00", "days": 1, "due": "2026-02-24T10:00:00+08:00"}))),
)]
pub async fn due(
    State(app): State<App>,
    _caller: Caller,
    ApiPath(region): ApiPath<String>,
    ApiQuery(q): ApiQuery<DueQuery>,
) -> ApiResult<Json<Due>> {
    let cal = Region::parse(&region)
        .ok()
        .and_then(|r| app.calendars.get(&r))
        .ok_or_else(|| ApiError::not_found("calendar region"))?;
    // The calendars were checked at start-up, so any failure here comes
    // from the query (an unparsable or out-of-range instant, too many days).
    let due = due_rfc3339(cal, &q.from, q.days).map_err(|e| match e {
        CalendarError::BadInstant { .. } => ApiError::bad_request(format!("from: {e}")),
        CalendarError::TooManyDays { .. } => ApiError::bad_request(format!("days: {e}")),
        other => ApiError::bad_request(other.to_string()),
    })?;
    Ok(Json(Due {
        region,
        from: q.from,
        days: q.days,
        due,
    }))
}
