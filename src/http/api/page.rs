//! Opaque cursors for paginated lists: base64url of `<millis>.<id>`, the
//! sort key of the last item returned.
use base64::Engine;
use serde::Serialize;

use crate::http::ApiError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

pub fn encode(at: i64, id: &str) -> String {
    B64.encode(format!("{at}.{id}"))
}

/// The `(millis, id)` of a cursor from [`encode`]; 400 for anything else.
pub fn decode(cursor: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::bad_request("cursor: not a cursor this API returned");
    if cursor.len() > 200 {
        return Err(bad());
    }
    let raw = B64.decode(cursor).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (at, id) = text.split_once('.').ok_or_else(bad)?;
    let at: i64 = at.parse().map_err(|_| bad())?;
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad());
    }
    Ok((at, id.to_string()))
}

/// `limit` of a list query: 1..=MAX_LIMIT, default DEFAULT_LIMIT.
pub fn limit(value: Option<i64>) -> Result<i64, ApiError> {
    match value {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit: must be 1-{MAX_LIMIT}, got {n}"
        ))),
    }
}

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Fetch `limit + 1` rows, then call this: it keeps `limit` rows and makes
/// the next cursor from the last kept row when there were more.
pub fn paginate<R, T>(
    mut rows: Vec<R>,
    limit: i64,
    key: impl Fn(&R) -> (i64, String),
    map: impl Fn(R) -> T,
) -> Page<T> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|r| {
            let (at, id) = key(r);
            encode(at, &id)
        })
    } else {
        None
    };
    Page {
        items: rows.into_iter().map(map).collect(),
        next_cursor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = encode(1_767_225_600_000, "0194f3b2-7c1e-7d4e-9a5b-1c2d3e4f5a6b");
        assert_eq!(
            decode(&c).unwrap(),
            (
                1_767_225_600_000,
                "0194f3b2-7c1e-7d4e-9a5b-1c2d3e4f5a6b".to_string()
            )
        );
        for bad in [
            "",
            "!!!",
            "bm9kb3Q",
            &B64.encode("x.abc"),
            &B64.encode("1."),
            &B64.encode("1.a'b"),
            &"A".repeat(300),
        ] {
            assert!(decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits() {
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(Some(1)).unwrap(), 1);
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(-1)).is_err());
        assert!(limit(Some(MAX_LIMIT + 1)).is_err());
    }

    #[test]
    fn paginate_keeps_limit_and_points_at_the_last_kept_row() {
        let rows: Vec<(i64, String)> = (0..3).map(|i| (i, format!("id{i}"))).collect();
        let p = paginate(rows.clone(), 2, |r| r.clone(), |r| r.1);
        assert_eq!(p.items, vec!["id0", "id1"]);
        assert_eq!(
            decode(p.next_cursor.as_deref().unwrap()).unwrap(),
            (1, "id1".into())
        );
        let p = paginate(rows, 3, |r| r.clone(), |r| r.1);
        assert!(p.next_cursor.is_none());
    }
}
