//! `GET /v1/catalog` and `GET /v1/calendars/{region}/due`.
use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};

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
pub async fn catalog(State(app): State<App>, _caller: Caller) -> Json<Catalog> {
    Json(app.catalog.clone())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DueQuery {
    from: String,
    days: u32,
}

#[derive(Serialize)]
pub struct Due {
    region: String,
    from: String,
    days: u32,
    due: String,
}

/// The due instant of `days` business days from `from` (RFC 3339), in the
/// region's local offset: the same answer as `approvald calendar due`.
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
