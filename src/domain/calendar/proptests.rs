//! Property test: [`Calendar::due`] against a small day-by-day reference
//! model, for random (region, instant in 2026, 1-5 business days).
//!
//! Regions: the shipped `cn` and `jp`, and two Europe/Berlin test calendars
//! (one with the Sundays of the clock changes made working days, so that due
//! times land in the spring gap and the autumn fold). Half of the instants are
//! drawn from the weeks around the 2026 clock changes.

use std::sync::OnceLock;

use chrono::{
    DateTime, Datelike, Days, MappedLocalTime, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc,
};
use proptest::prelude::*;

use super::Calendar;
use super::tests::{berlin, berlin_dst_sundays, shipped};

fn calendars() -> &'static [Calendar] {
    static CALENDARS: OnceLock<Vec<Calendar>> = OnceLock::new();
    CALENDARS.get_or_init(|| vec![shipped("cn"), shipped("jp"), berlin(), berlin_dst_sundays()])
}

/// The reference model: walks the calendar one date at a time, straight from
/// the file's data and the words of the rule.
fn reference_due(cal: &Calendar, start: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    // A date is off if it is a holiday, or a weekend day that is not a
    // make-up working day.
    let off = |d: NaiveDate| {
        cal.holidays().contains_key(&d)
            || (cal.weekend().contains(&d.weekday()) && !cal.workdays().contains_key(&d))
    };
    let tz = cal.tz();
    let local = start.with_timezone(&tz).naive_local();
    let mut date = local.date();
    let mut time = local.time();
    // "if s falls on a non-business date, move s to 00:00 of the next
    // business date"
    if off(date) {
        time = NaiveTime::MIN;
        while off(date) {
            date = date + Days::new(1);
        }
    }
    // "the N-th business date after s's date"
    let mut left = days;
    while left > 0 {
        date = date + Days::new(1);
        if !off(date) {
            left -= 1;
        }
    }
    // "the same time of day": the earlier instant in a fold; in a gap, the
    // first second at or after it that exists.
    let mut wall = date.and_time(time);
    loop {
        match tz.from_local_datetime(&wall) {
            MappedLocalTime::Single(t) => return t.with_timezone(&Utc),
            MappedLocalTime::Ambiguous(a, b) => return a.min(b).with_timezone(&Utc),
            MappedLocalTime::None => wall += TimeDelta::seconds(1),
        }
    }
}

fn timestamp(rfc3339: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp()
}

/// Whole-second instants: anywhere in 2026 (UTC), or within four days of
/// either 2026 clock change in Berlin.
fn instant_2026() -> impl Strategy<Value = DateTime<Utc>> {
    let year = timestamp("2026-01-01T00:00:00Z")..timestamp("2027-01-01T00:00:00Z");
    let spring = timestamp("2026-03-25T00:00:00Z")..timestamp("2026-04-02T00:00:00Z");
    let autumn = timestamp("2026-10-21T00:00:00Z")..timestamp("2026-10-29T00:00:00Z");
    prop_oneof![2 => year, 1 => spring, 1 => autumn]
        .prop_map(|secs| DateTime::from_timestamp(secs, 0).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 100_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn due_matches_the_day_by_day_reference_model(
        which in 0..4usize,
        start in instant_2026(),
        days in 1..=5u32,
    ) {
        let cal = &calendars()[which];
        let due = cal.due(start, days).unwrap();
        prop_assert_eq!(due, reference_due(cal, start, days), "region {}", cal.region());
        // And what any due time must be: later than the start, on a
        // business date of the calendar.
        prop_assert!(due > start);
        let due_local = due.with_timezone(&cal.tz());
        prop_assert!(cal.is_business_day(due_local.date_naive()));
    }
}
