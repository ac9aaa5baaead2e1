//! Business time: wall-clock time that falls on business dates of an org's
//! calendar (src/domain/calendar.rs); weekends and holidays do not count.
//! Each business date counts in full (the calendar has no working hours).
use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};

use crate::domain::calendar::Calendar;

/// Longest span walked date by date (anything longer is capped).
const MAX_DAYS: u64 = 400;

/// Start of `date` in the calendar's zone, as UTC (the earliest instant of a
/// DST fold, the instant the clocks jump in a gap).
fn day_start(cal: &Calendar, date: NaiveDate) -> DateTime<Utc> {
    let tz = cal.tz();
    let naive = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    match tz.from_local_datetime(&naive) {
        chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
        chrono::LocalResult::Ambiguous(a, _) => a.with_timezone(&Utc),
        chrono::LocalResult::None => {
            // Midnight skipped by a DST jump: the first valid instant after it.
            let mut probe = naive;
            for _ in 0..240 {
                probe += chrono::Duration::minutes(1);
                if let Some(t) = tz.from_local_datetime(&probe).earliest() {
                    return t.with_timezone(&Utc);
                }
            }
            Utc.from_utc_datetime(&naive)
        }
    }
}

/// Business milliseconds between `from` and `to` (0 when `to <= from`).
pub fn between(cal: &Calendar, from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    if to <= from {
        return 0;
    }
    let tz = cal.tz();
    let mut date = from.with_timezone(&tz).date_naive();
    let mut total = 0i64;
    for _ in 0..MAX_DAYS {
        let start = day_start(cal, date);
        let Some(next_date) = date.checked_add_days(Days::new(1)) else {
            break;
        };
        let end = day_start(cal, next_date);
        if start >= to {
            break;
        }
        if cal.is_business_day(date) {
            let a = start.max(from);
            let b = end.min(to);
            if b > a {
                total += (b - a).num_milliseconds();
            }
        }
        date = next_date;
    }
    total
}

/// The instant at which `ms` business milliseconds after `from` have passed.
pub fn add(cal: &Calendar, from: DateTime<Utc>, ms: i64) -> DateTime<Utc> {
    let tz = cal.tz();
    let mut left = ms.max(0);
    let mut date = from.with_timezone(&tz).date_naive();
    for _ in 0..MAX_DAYS {
        let start = day_start(cal, date);
        let Some(next_date) = date.checked_add_days(Days::new(1)) else {
            break;
        };
        let end = day_start(cal, next_date);
        if cal.is_business_day(date) {
            let a = start.max(from);
            if end > a {
                let span = (end - a).num_milliseconds();
                if span >= left {
                    return a + chrono::Duration::milliseconds(left);
                }
                left -= span;
            }
        }
        date = next_date;
    }
    from + chrono::Duration::days(MAX_DAYS as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::calendar::Calendars;

    fn cn() -> Calendar {
        Calendars::embedded().unwrap().lookup("cn").unwrap().clone()
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn weekends_do_not_count() {
        let cal = cn();
        // Fri 2026-03-06 12:00 +08 to Mon 2026-03-09 12:00 +08: 12 h + 12 h.
        let ms = between(
            &cal,
            t("2026-03-06T12:00:00+08:00"),
            t("2026-03-09T12:00:00+08:00"),
        );
        assert_eq!(ms, 24 * 3600 * 1000);
        assert_eq!(
            add(&cal, t("2026-03-06T12:00:00+08:00"), ms),
            t("2026-03-09T12:00:00+08:00")
        );
    }

    #[test]
    fn make_up_working_saturday_counts() {
        let cal = cn();
        // Sat 2026-02-14 is a make-up working day in the cn calendar.
        let ms = between(
            &cal,
            t("2026-02-14T00:00:00+08:00"),
            t("2026-02-15T00:00:00+08:00"),
        );
        assert_eq!(ms, 24 * 3600 * 1000);
    }

    #[test]
    fn empty_and_reversed_spans_are_zero() {
        let cal = cn();
        let a = t("2026-03-06T12:00:00+08:00");
        assert_eq!(between(&cal, a, a), 0);
        assert_eq!(between(&cal, a, a - chrono::Duration::hours(1)), 0);
        assert_eq!(add(&cal, a, 0), a);
    }
}
