//! Business-day calendars and the SLA due-time rule.
//!
//! A [`Calendar`] is one region's time zone, weekend, holidays and make-up
//! working days (a weekend date that is a working day, as in China's adjusted
//! schedules), read from `config/calendars/<region>.toml`. [`Calendars`] holds
//! every region: the files shipped with approvald are embedded in the binary,
//! and a file of the same name in a configured directory replaces the embedded
//! one.
//!
//! # The rule (DESIGN.md, "Business-day calendar")
//!
//! An SLA of N business days from instant `s`, in the calendar's zone: if `s`
//! falls on a non-business date, move `s` to 00:00 of the next business date;
//! then `due` is the same time of day on the N-th business date after `s`'s
//! date. Example (cn, 2026): a request at Friday 2026-02-13 10:00 is due
//! Saturday 2026-02-14 10:00, because that Saturday is a make-up working day.
//! See [`Calendar::due`].
//!
//! A date is a business day unless it is a holiday, or it is a weekend day
//! that is not a make-up working day ([`Calendar::is_business_day`]).
//!
//! # Daylight saving
//!
//! The time of day is kept as wall-clock time, so a due time one business day
//! after Friday 10:00 in Berlin is Monday 10:00 even when the clocks changed
//! over the weekend (71 or 73 hours later, not 72). When that wall-clock time
//! does not exist on the due date (the spring gap, e.g. 02:30 on 2026-03-29 in
//! Europe/Berlin), the due instant is the first valid instant after it, which
//! is the moment the clocks jump (03:00 CEST). When it exists twice (the autumn
//! fold, 02:30 on 2026-10-25 in Berlin), the earlier of the two instants is
//! taken (02:30 CEST, not 02:30 CET). The same applies to the 00:00 a start on
//! a non-business date is moved to.
//!
//! # Past the covered range
//!
//! Each file states the range of dates it has data for (`covered`); holidays
//! and make-up working days only exist inside it. Beyond it nothing is known,
//! so only weekend days count as non-business days: the computation always
//! terminates and stays close to the truth, and [`Calendar::coverage_gap`]
//! lets the start-up check warn before that happens.
//!
//! Everything here is pure except [`Calendars::load`], which reads the
//! override files from a directory.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Days, MappedLocalTime, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    SecondsFormat, TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;

#[cfg(test)]
mod proptests;

/// The largest SLA, in business days, that [`Calendar::due`] accepts (about
/// forty years): anything larger is certainly a mistake, and the bound keeps
/// every computation short.
pub const MAX_BUSINESS_DAYS: u32 = 10_000;

/// The calendars shipped with approvald, embedded so that the binary works
/// from any working directory.
const EMBEDDED: &[(&str, &str)] = &[
    ("cn", include_str!("../../config/calendars/cn.toml")),
    ("jp", include_str!("../../config/calendars/jp.toml")),
];

/// The keys a calendar file may have.
const KNOWN_KEYS: &[&str] = &["timezone", "weekend", "covered", "holidays", "workdays"];

/// Everything that can go wrong reading a calendar or computing a due time.
/// Errors about a file name the file (or the embedded file) and the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CalendarError {
    #[error("invalid region {value:?}: expected 2 to 8 lowercase ASCII letters")]
    InvalidRegion { value: String },
    #[error("{origin}: not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: missing key `{key}`")]
    MissingKey { origin: String, key: String },
    #[error(
        "{origin}: unknown key `{key}` (expected timezone, weekend, covered, holidays, workdays)"
    )]
    UnknownKey { origin: String, key: String },
    #[error("{origin}: `{key}` must be {expected}")]
    WrongType {
        origin: String,
        key: String,
        expected: &'static str,
    },
    #[error("{origin}: `{key}`: {value:?} is not a valid date (expected YYYY-MM-DD)")]
    BadDate {
        origin: String,
        key: String,
        value: String,
    },
    #[error("{origin}: `{key}`: unknown weekday {value:?} (expected monday .. sunday)")]
    UnknownWeekday {
        origin: String,
        key: String,
        value: String,
    },
    #[error("{origin}: `weekend`: {problem}")]
    BadWeekend {
        origin: String,
        problem: &'static str,
    },
    #[error(
        "{origin}: `{key}`: unknown time zone {value:?} (expected an IANA name such as Asia/Tokyo)"
    )]
    UnknownTimeZone {
        origin: String,
        key: String,
        value: String,
    },
    #[error("{origin}: `covered`: first date {first} is after last date {last}")]
    BadCoverage {
        origin: String,
        first: NaiveDate,
        last: NaiveDate,
    },
    #[error("{origin}: {date} is both in [holidays] and in [workdays]")]
    HolidayAndWorkday { origin: String, date: NaiveDate },
    #[error("{origin}: `{key}`: {date} is outside the covered range {first} ..= {last}")]
    OutsideCoverage {
        origin: String,
        key: String,
        date: NaiveDate,
        first: NaiveDate,
        last: NaiveDate,
    },
    #[error(
        "{origin}: `workdays.{date}`: {date} is a {weekday}, not a weekend day, so it is a working day already"
    )]
    WorkdayNotOnWeekend {
        origin: String,
        date: NaiveDate,
        weekday: Weekday,
    },
    #[error(
        "calendar file {path}: the file name must be <region>.toml, region being 2 to 8 lowercase ASCII letters"
    )]
    BadFileName { path: PathBuf },
    #[error("calendar file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no calendar for region {region:?}")]
    UnknownRegion { region: String },
    #[error("{days} business days is more than the supported maximum of {max}")]
    TooManyDays { days: u32, max: u32 },
    #[error("the due date falls outside the supported range of dates")]
    OutOfRange,
    #[error("invalid RFC 3339 instant {input:?}: {reason}")]
    BadInstant { input: String, reason: String },
}

/// A calendar region: 2 to 8 lowercase ASCII letters (`cn`, `jp`, ...).
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Region(String);

impl Region {
    pub fn parse(value: &str) -> Result<Self, CalendarError> {
        let valid = (2..=8).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_lowercase());
        if valid {
            Ok(Region(value.to_owned()))
        } else {
            Err(CalendarError::InvalidRegion {
                value: value.to_owned(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Region {
    type Err = CalendarError;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Region::parse(value)
    }
}

impl TryFrom<String> for Region {
    type Error = CalendarError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Region::parse(&value)
    }
}

impl From<Region> for String {
    fn from(region: Region) -> String {
        region.0
    }
}

impl AsRef<str> for Region {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One region's business-day calendar. Only [`Calendar::from_toml`] builds
/// one, so every value holds the invariants the file is checked for: the zone
/// is known, the weekend leaves at least one working weekday, holidays and
/// make-up working days are disjoint, inside `covered`, and make-up working
/// days fall on weekend days.
#[derive(Clone, Debug)]
pub struct Calendar {
    region: Region,
    tz: Tz,
    weekend: Vec<Weekday>,
    holidays: BTreeMap<NaiveDate, String>,
    workdays: BTreeMap<NaiveDate, String>,
    covered: (NaiveDate, NaiveDate),
}

impl Calendar {
    /// Parses a calendar file. `origin` names the file in error messages.
    ///
    /// ```toml
    /// timezone = "Asia/Shanghai"
    /// weekend = ["saturday", "sunday"]
    /// covered = { first = 2026-01-01, last = 2026-12-31 }
    /// [holidays]
    /// 2026-02-16 = "Spring Festival"
    /// [workdays]
    /// 2026-02-14 = "make-up working day"
    /// ```
    ///
    /// Weekday names are English, full or three-letter, any case. Dates are
    /// `YYYY-MM-DD` (TOML dates or strings for `covered`). `holidays` and
    /// `workdays` may be absent or empty; any other key is an error.
    pub fn from_toml(region: Region, origin: &str, text: &str) -> Result<Self, CalendarError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| CalendarError::Syntax {
                    origin: origin.to_owned(),
                    message: e.to_string().trim_end().to_owned(),
                })?;
        let reader = Reader { origin };
        if let Some(key) = table.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
            return Err(CalendarError::UnknownKey {
                origin: origin.to_owned(),
                key: key.clone(),
            });
        }

        let tz_name = reader.required(&table, "timezone")?;
        let tz_name = tz_name
            .as_str()
            .ok_or_else(|| reader.wrong_type("timezone", "a string"))?;
        let tz: Tz = tz_name
            .parse()
            .map_err(|_| CalendarError::UnknownTimeZone {
                origin: origin.to_owned(),
                key: "timezone".to_owned(),
                value: tz_name.to_owned(),
            })?;

        let weekend = reader.weekend(reader.required(&table, "weekend")?)?;

        let covered = reader.required(&table, "covered")?;
        let covered = covered
            .as_table()
            .ok_or_else(|| reader.wrong_type("covered", "a table { first = ..., last = ... }"))?;
        if let Some(key) = covered.keys().find(|k| *k != "first" && *k != "last") {
            return Err(CalendarError::UnknownKey {
                origin: origin.to_owned(),
                key: format!("covered.{key}"),
            });
        }
        let first = reader.date_value(covered, "covered.first", "first")?;
        let last = reader.date_value(covered, "covered.last", "last")?;
        if first > last {
            return Err(CalendarError::BadCoverage {
                origin: origin.to_owned(),
                first,
                last,
            });
        }

        let holidays = reader.dated_names(&table, "holidays", (first, last))?;
        let workdays = reader.dated_names(&table, "workdays", (first, last))?;
        if let Some(date) = holidays.keys().find(|d| workdays.contains_key(d)) {
            return Err(CalendarError::HolidayAndWorkday {
                origin: origin.to_owned(),
                date: *date,
            });
        }
        if let Some(date) = workdays.keys().find(|d| !weekend.contains(&d.weekday())) {
            return Err(CalendarError::WorkdayNotOnWeekend {
                origin: origin.to_owned(),
                date: *date,
                weekday: date.weekday(),
            });
        }

        Ok(Calendar {
            region,
            tz,
            weekend,
            holidays,
            workdays,
            covered: (first, last),
        })
    }

    pub fn region(&self) -> &Region {
        &self.region
    }

    pub fn tz(&self) -> Tz {
        self.tz
    }

    pub fn weekend(&self) -> &[Weekday] {
        &self.weekend
    }

    /// Non-working dates, with their names.
    pub fn holidays(&self) -> &BTreeMap<NaiveDate, String> {
        &self.holidays
    }

    /// Make-up working days (weekend dates that are working days), with names.
    pub fn workdays(&self) -> &BTreeMap<NaiveDate, String> {
        &self.workdays
    }

    /// The first and last date the calendar has data for.
    pub fn covered(&self) -> (NaiveDate, NaiveDate) {
        self.covered
    }

    pub fn covers(&self, date: NaiveDate) -> bool {
        self.covered.0 <= date && date <= self.covered.1
    }

    /// Whether `date` is a working day: not a holiday, and either not a
    /// weekend day or a make-up working day. Outside the covered range only
    /// the weekend is known (see the module docs).
    pub fn is_business_day(&self, date: NaiveDate) -> bool {
        if self.holidays.contains_key(&date) {
            return false;
        }
        self.workdays.contains_key(&date) || !self.weekend.contains(&date.weekday())
    }

    /// The first business date strictly after `date`.
    pub fn next_business_day(&self, date: NaiveDate) -> Result<NaiveDate, CalendarError> {
        // Terminates: inside the covered range there are finitely many dates,
        // and outside it any seven consecutive dates hold a business day
        // because the weekend leaves at least one weekday free.
        let mut day = date;
        loop {
            day = day.succ_opt().ok_or(CalendarError::OutOfRange)?;
            if self.is_business_day(day) {
                return Ok(day);
            }
        }
    }

    /// The `n`-th business date after `date` (`date` itself when `n` is 0,
    /// business day or not). `n` is at most [`MAX_BUSINESS_DAYS`].
    pub fn add_business_days(&self, date: NaiveDate, n: u32) -> Result<NaiveDate, CalendarError> {
        if n > MAX_BUSINESS_DAYS {
            return Err(CalendarError::TooManyDays {
                days: n,
                max: MAX_BUSINESS_DAYS,
            });
        }
        let mut day = date;
        for _ in 0..n {
            day = self.next_business_day(day)?;
        }
        Ok(day)
    }

    /// The due instant of an SLA of `days` business days starting at `start`,
    /// by the DESIGN.md rule (see the module docs, also for daylight saving),
    /// in the calendar's zone. `days` = 0 gives the start's own wall-clock
    /// time, or 00:00 of the next business date if it is not on one.
    pub fn due_local(
        &self,
        start: DateTime<Utc>,
        days: u32,
    ) -> Result<DateTime<Tz>, CalendarError> {
        if days > MAX_BUSINESS_DAYS {
            return Err(CalendarError::TooManyDays {
                days,
                max: MAX_BUSINESS_DAYS,
            });
        }
        let local = wall_clock(self.tz, start).ok_or(CalendarError::OutOfRange)?;
        let (mut date, mut time) = (local.date(), local.time());
        if !self.is_business_day(date) {
            date = self.next_business_day(date)?;
            time = NaiveTime::MIN;
        }
        let due_date = self.add_business_days(date, days)?;
        resolve_local(self.tz, due_date.and_time(time))
    }

    /// [`Calendar::due_local`] as a UTC instant, for storage and timers.
    pub fn due(&self, start: DateTime<Utc>, days: u32) -> Result<DateTime<Utc>, CalendarError> {
        Ok(self.due_local(start, days)?.with_timezone(&Utc))
    }

    /// The first of the `horizon_days` dates starting at `today` (today
    /// included) that the calendar has no data for, if any. The start-up check
    /// calls it with 60 days and warns when it returns a date.
    pub fn coverage_gap(&self, today: NaiveDate, horizon_days: u32) -> Option<NaiveDate> {
        if horizon_days == 0 {
            return None;
        }
        if !self.covers(today) {
            return Some(today);
        }
        let window_end = today.checked_add_days(Days::new(u64::from(horizon_days) - 1))?;
        let last = self.covered.1;
        if window_end <= last {
            return None;
        }
        last.succ_opt()
    }
}

/// Helpers that read typed values out of a parsed file, naming the file and
/// key in every error.
struct Reader<'a> {
    origin: &'a str,
}

impl Reader<'_> {
    fn required<'t>(
        &self,
        table: &'t toml::Table,
        key: &str,
    ) -> Result<&'t toml::Value, CalendarError> {
        table.get(key).ok_or_else(|| CalendarError::MissingKey {
            origin: self.origin.to_owned(),
            key: key.to_owned(),
        })
    }

    fn wrong_type(&self, key: &str, expected: &'static str) -> CalendarError {
        CalendarError::WrongType {
            origin: self.origin.to_owned(),
            key: key.to_owned(),
            expected,
        }
    }

    fn bad_date(&self, key: &str, value: impl fmt::Display) -> CalendarError {
        CalendarError::BadDate {
            origin: self.origin.to_owned(),
            key: key.to_owned(),
            value: value.to_string(),
        }
    }

    fn weekend(&self, value: &toml::Value) -> Result<Vec<Weekday>, CalendarError> {
        let items = value
            .as_array()
            .ok_or_else(|| self.wrong_type("weekend", "an array of weekday names"))?;
        let mut weekend = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let key = format!("weekend[{i}]");
            let name = item
                .as_str()
                .ok_or_else(|| self.wrong_type(&key, "a weekday name"))?;
            let day: Weekday = name.parse().map_err(|_| CalendarError::UnknownWeekday {
                origin: self.origin.to_owned(),
                key: key.clone(),
                value: name.to_owned(),
            })?;
            if weekend.contains(&day) {
                return Err(CalendarError::BadWeekend {
                    origin: self.origin.to_owned(),
                    problem: "a weekday is listed twice",
                });
            }
            weekend.push(day);
        }
        if weekend.len() >= 7 {
            return Err(CalendarError::BadWeekend {
                origin: self.origin.to_owned(),
                problem: "all seven days are weekend days; at least one must be a working day",
            });
        }
        Ok(weekend)
    }

    /// A date given as a TOML local date or a `YYYY-MM-DD` string.
    fn date_value(
        &self,
        table: &toml::Table,
        key: &str,
        field: &str,
    ) -> Result<NaiveDate, CalendarError> {
        let value = table.get(field).ok_or_else(|| CalendarError::MissingKey {
            origin: self.origin.to_owned(),
            key: key.to_owned(),
        })?;
        match value {
            toml::Value::String(s) => parse_iso_date(s).ok_or_else(|| self.bad_date(key, s)),
            toml::Value::Datetime(dt) => match (dt.date, dt.time, dt.offset) {
                (Some(d), None, None) => {
                    NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
                        .ok_or_else(|| self.bad_date(key, dt))
                }
                _ => Err(self.bad_date(key, dt)),
            },
            _ => Err(self.wrong_type(key, "a date (YYYY-MM-DD)")),
        }
    }

    /// The `[holidays]` or `[workdays]` table: `YYYY-MM-DD = "name"`, every
    /// date inside `covered`.
    fn dated_names(
        &self,
        table: &toml::Table,
        key: &str,
        (first, last): (NaiveDate, NaiveDate),
    ) -> Result<BTreeMap<NaiveDate, String>, CalendarError> {
        let Some(value) = table.get(key) else {
            return Ok(BTreeMap::new());
        };
        let entries = value
            .as_table()
            .ok_or_else(|| self.wrong_type(key, "a table of YYYY-MM-DD = \"name\""))?;
        let mut out = BTreeMap::new();
        for (date_key, name) in entries {
            let full_key = format!("{key}.{date_key}");
            let date =
                parse_iso_date(date_key).ok_or_else(|| self.bad_date(&full_key, date_key))?;
            let name = name
                .as_str()
                .ok_or_else(|| self.wrong_type(&full_key, "a string (the day's name)"))?;
            if date < first || date > last {
                return Err(CalendarError::OutsideCoverage {
                    origin: self.origin.to_owned(),
                    key: full_key,
                    date,
                    first,
                    last,
                });
            }
            out.insert(date, name.to_owned());
        }
        Ok(out)
    }
}

/// Strict `YYYY-MM-DD`.
fn parse_iso_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape_ok {
        return None;
    }
    let year = s[0..4].parse().ok()?;
    let month = s[5..7].parse().ok()?;
    let day = s[8..10].parse().ok()?;
    NaiveDate::from_ymd_opt(year, month, day)
}

/// The instant a wall-clock time stands for in `tz`: the earlier one in a
/// fold, the first valid instant after it in a gap.
pub(crate) fn resolve_local(tz: Tz, wall: NaiveDateTime) -> Result<DateTime<Tz>, CalendarError> {
    match tz.from_local_datetime(&wall) {
        MappedLocalTime::Single(t) => Ok(t),
        MappedLocalTime::Ambiguous(a, b) => Ok(a.min(b)),
        MappedLocalTime::None => first_instant_not_before(tz, wall),
    }
}

/// The first instant whose wall-clock time in `tz` is at or after `wall`,
/// for a `wall` inside a gap: that is the moment the clocks jump. Zone
/// offsets are under a day, so the instant lies within a day of `wall` read
/// as UTC; wall-clock time increases with the instant there (no fold sits
/// within a day of a gap in the tz database), so a binary search over whole
/// seconds finds it (transitions happen on whole seconds).
fn first_instant_not_before(tz: Tz, wall: NaiveDateTime) -> Result<DateTime<Tz>, CalendarError> {
    const DAY: i64 = 86_400;
    let wall_at = |secs: i64| -> Result<NaiveDateTime, CalendarError> {
        DateTime::from_timestamp(secs, 0)
            .and_then(|t| wall_clock(tz, t))
            .ok_or(CalendarError::OutOfRange)
    };
    let centre = wall.and_utc().timestamp();
    let (mut lo, mut hi) = (centre - DAY, centre + DAY);
    // Invariant: wall time at `lo` is before `wall`, at `hi` not before it.
    if wall_at(lo)? >= wall || wall_at(hi)? < wall {
        return Err(CalendarError::OutOfRange);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if wall_at(mid)? >= wall {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
        .map(|t| t.with_timezone(&tz))
        .ok_or(CalendarError::OutOfRange)
}

/// The wall-clock time of `instant` in `tz`; `None` past chrono's last date
/// (where `DateTime::naive_local` would panic).
fn wall_clock(tz: Tz, instant: DateTime<Utc>) -> Option<NaiveDateTime> {
    let offset = tz.offset_from_utc_datetime(&instant.naive_utc()).fix();
    instant.naive_utc().checked_add_offset(offset)
}

/// What the CLI and the HTTP API call: the due instant of an SLA of `days`
/// business days from the RFC 3339 instant `from`, as RFC 3339 in the
/// calendar's local offset, e.g. `2026-02-14T10:00:00+08:00` (fractional
/// seconds only when the input had them).
pub fn due_rfc3339(cal: &Calendar, from: &str, days: u32) -> Result<String, CalendarError> {
    let start = DateTime::parse_from_rfc3339(from).map_err(|e| CalendarError::BadInstant {
        input: from.to_owned(),
        reason: e.to_string(),
    })?;
    let due = cal.due_local(start.with_timezone(&Utc), days)?;
    Ok(due
        .fixed_offset()
        .to_rfc3339_opts(SecondsFormat::AutoSi, false))
}

/// [`Calendar::due`] for a region named by a string (an org's region).
pub fn due_for_region(
    calendars: &Calendars,
    region: &str,
    start: DateTime<Utc>,
    days: u32,
) -> Result<DateTime<Utc>, CalendarError> {
    calendars.lookup(region)?.due(start, days)
}

/// [`due_rfc3339`] for a region named by a string: what `approvald calendar
/// due --region R --from RFC3339 --days N` prints and
/// `GET /v1/calendars/{region}/due` returns. Every error it returns comes
/// from the input (unknown region, bad instant, too many days, a date out of
/// range): a 4xx for the HTTP API.
pub fn due_rfc3339_for_region(
    calendars: &Calendars,
    region: &str,
    from: &str,
    days: u32,
) -> Result<String, CalendarError> {
    due_rfc3339(calendars.lookup(region)?, from, days)
}

/// Where a calendar in [`Calendars`] came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CalendarSource {
    /// Shipped with approvald: `config/calendars/<region>.toml` at build time.
    Embedded(Region),
    /// Read from this file at start-up.
    File(PathBuf),
}

impl fmt::Display for CalendarSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalendarSource::Embedded(region) => {
                write!(f, "config/calendars/{region}.toml (embedded)")
            }
            CalendarSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A region whose calendar runs out of data soon (see [`Calendars::coverage_gaps`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoverageGap {
    pub region: Region,
    pub first_uncovered: NaiveDate,
    pub source: CalendarSource,
}

/// Every region's calendar: the embedded ones, replaced by files on disk of
/// the same region.
#[derive(Clone, Debug)]
pub struct Calendars {
    entries: BTreeMap<Region, (Calendar, CalendarSource)>,
}

impl Calendars {
    /// The calendars shipped with approvald.
    pub fn embedded() -> Result<Self, CalendarError> {
        let mut calendars = Calendars {
            entries: BTreeMap::new(),
        };
        for (name, text) in EMBEDDED {
            let region = Region::parse(name)?;
            calendars.insert_toml(CalendarSource::Embedded(region.clone()), region, text)?;
        }
        Ok(calendars)
    }

    /// The embedded calendars, with every `<region>.toml` in `dir` replacing
    /// or adding to them. A missing `dir` means no overrides (the binary works
    /// from any folder); an unreadable or invalid file is an error naming it.
    /// Files not ending in `.toml` are ignored. This is the module's only I/O.
    pub fn load(dir: &Path) -> Result<Self, CalendarError> {
        let mut calendars = Calendars::embedded()?;
        let io_error = |source| CalendarError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let listing = match std::fs::read_dir(dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(calendars),
            Err(e) => return Err(io_error(e)),
        };
        let mut paths = Vec::new();
        for entry in listing {
            let path = entry.map_err(io_error)?.path();
            if path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        for path in paths {
            let region = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .and_then(|stem| Region::parse(stem).ok())
                .ok_or_else(|| CalendarError::BadFileName { path: path.clone() })?;
            let text = std::fs::read_to_string(&path).map_err(|source| CalendarError::Io {
                path: path.clone(),
                source,
            })?;
            calendars.insert_toml(CalendarSource::File(path), region, &text)?;
        }
        Ok(calendars)
    }

    /// Parses `text` as `region`'s calendar and puts it in, replacing any
    /// calendar of that region; returns where the replaced one came from.
    pub fn insert_toml(
        &mut self,
        source: CalendarSource,
        region: Region,
        text: &str,
    ) -> Result<Option<CalendarSource>, CalendarError> {
        let calendar = Calendar::from_toml(region.clone(), &source.to_string(), text)?;
        Ok(self
            .entries
            .insert(region, (calendar, source))
            .map(|(_, replaced)| replaced))
    }

    pub fn get(&self, region: &Region) -> Option<&Calendar> {
        self.entries.get(region).map(|(calendar, _)| calendar)
    }

    /// The calendar of a region given as a string: an error if the string
    /// is not a region or no calendar has that region.
    pub fn lookup(&self, region: &str) -> Result<&Calendar, CalendarError> {
        self.get(&Region::parse(region)?)
            .ok_or_else(|| CalendarError::UnknownRegion {
                region: region.to_owned(),
            })
    }

    pub fn source(&self, region: &Region) -> Option<&CalendarSource> {
        self.entries.get(region).map(|(_, source)| source)
    }

    pub fn regions(&self) -> impl Iterator<Item = &Region> {
        self.entries.keys()
    }

    /// For the start-up warning: every calendar with no data for some date
    /// among the `horizon_days` dates from `today` (see [`Calendar::coverage_gap`]).
    pub fn coverage_gaps(&self, today: NaiveDate, horizon_days: u32) -> Vec<CoverageGap> {
        self.entries
            .iter()
            .filter_map(|(region, (calendar, source))| {
                calendar
                    .coverage_gap(today, horizon_days)
                    .map(|first_uncovered| CoverageGap {
                        region: region.clone(),
                        first_uncovered,
                        source: source.clone(),
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A German-style test calendar in a zone with daylight saving (clocks
    /// go forward 2026-03-29 02:00 CET, back 2026-10-25 03:00 CEST).
    pub(super) const BERLIN_TOML: &str = r#"
        timezone = "Europe/Berlin"
        weekend = ["Saturday", "sun"]
        covered = { first = "2026-01-01", last = 2026-12-31 }
        [holidays]
        2026-01-01 = "Neujahr"
        2026-04-03 = "Karfreitag"
        2026-04-06 = "Ostermontag"
        2026-05-01 = "Tag der Arbeit"
        2026-10-03 = "Tag der Deutschen Einheit"
        2026-12-25 = "Weihnachten"
        2026-12-26 = "Weihnachten"
    "#;

    /// Berlin again, with the two Sundays on which the clocks change made
    /// working days, so that a due time can land in the gap or the fold.
    pub(super) const BERLIN_DST_SUNDAYS_TOML: &str = r#"
        timezone = "Europe/Berlin"
        weekend = ["saturday", "sunday"]
        covered = { first = 2026-01-01, last = 2026-12-31 }
        [workdays]
        2026-03-29 = "clocks go forward"
        2026-10-25 = "clocks go back"
    "#;

    pub(super) fn region(name: &str) -> Region {
        Region::parse(name).unwrap()
    }

    pub(super) fn shipped(name: &str) -> Calendar {
        Calendars::embedded()
            .unwrap()
            .get(&region(name))
            .unwrap()
            .clone()
    }

    pub(super) fn berlin() -> Calendar {
        Calendar::from_toml(region("de"), "test:de.toml", BERLIN_TOML).unwrap()
    }

    pub(super) fn berlin_dst_sundays() -> Calendar {
        Calendar::from_toml(region("dst"), "test:dst.toml", BERLIN_DST_SUNDAYS_TOML).unwrap()
    }

    fn date(s: &str) -> NaiveDate {
        parse_iso_date(s).unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn due(cal: &Calendar, from: &str, days: u32) -> String {
        due_rfc3339(cal, from, days).unwrap()
    }

    fn parse_err(text: &str) -> String {
        Calendar::from_toml(region("xx"), "config/calendars/xx.toml", text)
            .unwrap_err()
            .to_string()
    }

    const VALID_HEAD: &str = r#"
        timezone = "Asia/Tokyo"
        weekend = ["saturday", "sunday"]
        covered = { first = 2026-01-01, last = 2026-12-31 }
    "#;

    // ---- Region -------------------------------------------------------

    #[test]
    fn region_accepts_two_to_eight_lowercase_letters_only() {
        for ok in ["cn", "jp", "deberlin"] {
            assert_eq!(Region::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "c", "CN", "Cn", "c1", "toolongxx", "c-n", "中国", "cn "] {
            let err = Region::parse(bad).unwrap_err();
            assert!(
                matches!(err, CalendarError::InvalidRegion { ref value } if value == bad),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn region_serde_goes_through_parse() {
        let region: Region = serde_json::from_str("\"jp\"").unwrap();
        assert_eq!(region, Region::parse("jp").unwrap());
        assert_eq!(serde_json::to_string(&region).unwrap(), "\"jp\"");
        assert!(serde_json::from_str::<Region>("\"JP\"").is_err());
    }

    // ---- Parsing and its errors ---------------------------------------

    #[test]
    fn shipped_calendars_parse_with_their_zones_and_coverage() {
        let calendars = Calendars::embedded().unwrap();
        let regions: Vec<&str> = calendars.regions().map(Region::as_str).collect();
        assert_eq!(regions, ["cn", "jp"]);

        let cn = calendars.get(&region("cn")).unwrap();
        assert_eq!(cn.tz(), chrono_tz::Asia::Shanghai);
        assert_eq!(cn.weekend(), [Weekday::Sat, Weekday::Sun]);
        assert_eq!(cn.covered(), (date("2026-01-01"), date("2026-12-31")));

        let jp = calendars.get(&region("jp")).unwrap();
        assert_eq!(jp.tz(), chrono_tz::Asia::Tokyo);
        assert_eq!(jp.covered(), (date("2026-01-01"), date("2027-12-31")));
        assert!(jp.workdays().is_empty());
        assert_eq!(
            calendars.source(&region("jp")),
            Some(&CalendarSource::Embedded(region("jp")))
        );
    }

    #[test]
    fn unknown_weekday_names_the_file_and_key() {
        let err = parse_err(
            r#"timezone = "Asia/Tokyo"
            weekend = ["saturday", "sundae"]
            covered = { first = 2026-01-01, last = 2026-12-31 }"#,
        );
        assert_eq!(
            err,
            "config/calendars/xx.toml: `weekend[1]`: unknown weekday \"sundae\" (expected monday .. sunday)"
        );
    }

    #[test]
    fn bad_dates_name_the_file_and_key() {
        let err = parse_err(&format!(
            "{VALID_HEAD}\n[holidays]\n2026-02-30 = \"no such day\""
        ));
        assert_eq!(
            err,
            "config/calendars/xx.toml: `holidays.2026-02-30`: \"2026-02-30\" is not a valid date (expected YYYY-MM-DD)"
        );
        let err = parse_err(&format!(
            "{VALID_HEAD}\n[workdays]\n\"2026-1-4\" = \"short\""
        ));
        assert!(err.contains("`workdays.2026-1-4`"), "{err}");
        let err = parse_err(
            r#"timezone = "Asia/Tokyo"
            weekend = []
            covered = { first = "2026-13-01", last = 2026-12-31 }"#,
        );
        assert!(
            err.contains("`covered.first`") && err.contains("2026-13-01"),
            "{err}"
        );
        let err = parse_err(
            r#"timezone = "Asia/Tokyo"
            weekend = []
            covered = { first = 2026-01-01T00:00:00Z, last = 2026-12-31 }"#,
        );
        assert!(err.contains("`covered.first`"), "{err}");
    }

    #[test]
    fn a_date_both_holiday_and_workday_is_rejected() {
        let err = parse_err(&format!(
            "{VALID_HEAD}\n[holidays]\n2026-02-14 = \"a\"\n[workdays]\n2026-02-14 = \"b\""
        ));
        assert_eq!(
            err,
            "config/calendars/xx.toml: 2026-02-14 is both in [holidays] and in [workdays]"
        );
    }

    #[test]
    fn unknown_time_zone_names_the_file_and_key() {
        let err = parse_err(
            r#"timezone = "Asia/Peking"
            weekend = []
            covered = { first = 2026-01-01, last = 2026-12-31 }"#,
        );
        assert_eq!(
            err,
            "config/calendars/xx.toml: `timezone`: unknown time zone \"Asia/Peking\" (expected an IANA name such as Asia/Tokyo)"
        );
    }

    #[test]
    fn structural_mistakes_are_named() {
        let err = parse_err(&format!("{VALID_HEAD}\nholiday = {{}}"));
        assert!(err.contains("unknown key `holiday`"), "{err}");
        let err = parse_err(r#"weekend = [] covered = { first = 2026-01-01, last = 2026-12-31 }"#);
        assert!(err.contains("not valid TOML"), "{err}");
        let err = parse_err(
            r#"weekend = []
            covered = { first = 2026-01-01, last = 2026-12-31 }"#,
        );
        assert_eq!(err, "config/calendars/xx.toml: missing key `timezone`");
        let err = parse_err(&format!("{VALID_HEAD}\n[holidays]\n2026-05-05 = 5"));
        assert!(
            err.contains("`holidays.2026-05-05` must be a string"),
            "{err}"
        );
        let err = parse_err(
            r#"timezone = "Asia/Tokyo"
            weekend = []
            covered = { first = 2026-12-31, last = 2026-01-01 }"#,
        );
        assert!(
            err.contains("first date 2026-12-31 is after last date 2026-01-01"),
            "{err}"
        );
        let err = parse_err(&format!("{VALID_HEAD}\n[holidays]\n2027-01-01 = \"later\""));
        assert!(
            err.contains("`holidays.2027-01-01`: 2027-01-01 is outside the covered range"),
            "{err}"
        );
        let err = parse_err(&format!(
            "{VALID_HEAD}\n[workdays]\n2026-02-13 = \"a Friday\""
        ));
        assert!(
            err.contains("2026-02-13 is a Fri, not a weekend day"),
            "{err}"
        );
        let err = parse_err(
            r#"timezone = "Asia/Tokyo"
            weekend = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
            covered = { first = 2026-01-01, last = 2026-12-31 }"#,
        );
        assert!(err.contains("all seven days are weekend days"), "{err}");
        let err = parse_err(
            r#"timezone = "Asia/Tokyo"
            weekend = ["sat", "saturday"]
            covered = { first = 2026-01-01, last = 2026-12-31 }"#,
        );
        assert!(err.contains("listed twice"), "{err}");
    }

    // ---- Loading from a directory -------------------------------------

    /// A fresh, empty directory under the system temp dir.
    fn scratch_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("approvald-calendar-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_file_on_disk_overrides_the_embedded_calendar_of_its_region() {
        let dir = scratch_dir("override");
        let cn = "timezone = \"Asia/Shanghai\"\nweekend = [\"sunday\"]\n\
                  covered = { first = 2026-01-01, last = 2027-12-31 }\n";
        std::fs::write(dir.join("cn.toml"), cn).unwrap();
        std::fs::write(dir.join("de.toml"), BERLIN_TOML).unwrap();
        std::fs::write(dir.join("README.md"), "not a calendar").unwrap();
        std::fs::write(dir.join("cn.toml~"), "editor backup, ignored").unwrap();

        let calendars = Calendars::load(&dir).unwrap();
        let regions: Vec<&str> = calendars.regions().map(Region::as_str).collect();
        assert_eq!(regions, ["cn", "de", "jp"]);
        let cn = calendars.get(&region("cn")).unwrap();
        assert_eq!(cn.weekend(), [Weekday::Sun]);
        assert!(cn.holidays().is_empty());
        assert_eq!(
            calendars.source(&region("cn")),
            Some(&CalendarSource::File(dir.join("cn.toml")))
        );
        assert_eq!(
            calendars.source(&region("jp")),
            Some(&CalendarSource::Embedded(region("jp")))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_leaves_the_embedded_calendars() {
        let base = scratch_dir("missing");
        let calendars = Calendars::load(&base.join("does-not-exist")).unwrap();
        assert_eq!(calendars.regions().count(), 2);
        assert!(calendars.get(&region("cn")).is_some());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_bad_file_on_disk_is_an_error_naming_the_file() {
        let dir = scratch_dir("bad");
        std::fs::write(
            dir.join("jp.toml"),
            "timezone = \"Mars/Olympus\"\nweekend = []\n",
        )
        .unwrap();
        let err = Calendars::load(&dir).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: `timezone`", dir.join("jp.toml").display())),
            "{err}"
        );

        std::fs::remove_file(dir.join("jp.toml")).unwrap();
        std::fs::write(dir.join("Japan.toml"), VALID_HEAD).unwrap();
        let err = Calendars::load(&dir).unwrap_err();
        assert!(
            matches!(err, CalendarError::BadFileName { ref path } if path.ends_with("Japan.toml"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // ---- The DESIGN.md rule: China ------------------------------------

    #[test]
    fn design_example_cn_friday_before_make_up_saturday() {
        let cn = shipped("cn");
        assert_eq!(
            due(&cn, "2026-02-13T10:00:00+08:00", 1),
            "2026-02-14T10:00:00+08:00"
        );
        assert_eq!(
            cn.due(utc("2026-02-13T02:00:00Z"), 1).unwrap(),
            utc("2026-02-14T02:00:00Z")
        );
    }

    #[test]
    fn cn_2026_data_matches_the_state_council_notice() {
        let cn = shipped("cn");
        assert_eq!(cn.holidays().len(), 33);
        let workdays: Vec<String> = cn.workdays().keys().map(|d| d.to_string()).collect();
        assert_eq!(
            workdays,
            [
                "2026-01-04",
                "2026-02-14",
                "2026-02-28",
                "2026-05-09",
                "2026-09-20",
                "2026-10-10"
            ]
        );
        let ranges = [
            ("2026-01-01", "2026-01-03"),
            ("2026-02-15", "2026-02-23"),
            ("2026-04-04", "2026-04-06"),
            ("2026-05-01", "2026-05-05"),
            ("2026-06-19", "2026-06-21"),
            ("2026-09-25", "2026-09-27"),
            ("2026-10-01", "2026-10-07"),
        ];
        let mut expected = Vec::new();
        for (first, last) in ranges {
            let mut d = date(first);
            while d <= date(last) {
                expected.push(d);
                d = d.succ_opt().unwrap();
            }
        }
        assert_eq!(cn.holidays().keys().copied().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn cn_make_up_working_days_are_business_days() {
        let cn = shipped("cn");
        for (day, weekday) in [
            ("2026-01-04", Weekday::Sun),
            ("2026-02-14", Weekday::Sat),
            ("2026-02-28", Weekday::Sat),
            ("2026-05-09", Weekday::Sat),
            ("2026-09-20", Weekday::Sun),
            ("2026-10-10", Weekday::Sat),
        ] {
            assert_eq!(date(day).weekday(), weekday);
            assert!(cn.is_business_day(date(day)), "{day}");
        }
        // Ordinary weekends and the holiday weeks are not.
        for day in [
            "2026-02-07",
            "2026-02-08",
            "2026-02-16",
            "2026-02-23",
            "2026-10-07",
        ] {
            assert!(!cn.is_business_day(date(day)), "{day}");
        }
    }

    #[test]
    fn cn_named_cases_around_the_holiday_weeks() {
        let cn = shipped("cn");
        let cases = [
            // Spring Festival: Sat 14 Feb works, 15-23 Feb off, Sat 28 Feb works.
            ("2026-02-13T10:00:00+08:00", 2, "2026-02-24T10:00:00+08:00"),
            ("2026-02-14T09:00:00+08:00", 1, "2026-02-24T09:00:00+08:00"),
            ("2026-02-17T15:00:00+08:00", 1, "2026-02-25T00:00:00+08:00"),
            ("2026-02-27T16:30:00+08:00", 1, "2026-02-28T16:30:00+08:00"),
            ("2026-02-28T09:30:00+08:00", 1, "2026-03-02T09:30:00+08:00"),
            // New Year: 1-3 Jan off, Sun 4 Jan works (31 Dec 2025 is before
            // the covered range, where only weekends count).
            ("2025-12-31T16:00:00+08:00", 1, "2026-01-04T16:00:00+08:00"),
            ("2026-01-03T12:00:00+08:00", 0, "2026-01-04T00:00:00+08:00"),
            // Labour Day: 1-5 May off, Sat 9 May works.
            ("2026-04-30T18:00:00+08:00", 1, "2026-05-06T18:00:00+08:00"),
            ("2026-05-08T11:00:00+08:00", 1, "2026-05-09T11:00:00+08:00"),
            // Mid-Autumn 25-27 Sep, National Day 1-7 Oct, Sun 20 Sep and Sat
            // 10 Oct work.
            ("2026-09-18T10:00:00+08:00", 1, "2026-09-20T10:00:00+08:00"),
            ("2026-09-24T10:00:00+08:00", 1, "2026-09-28T10:00:00+08:00"),
            ("2026-09-30T10:00:00+08:00", 1, "2026-10-08T10:00:00+08:00"),
            ("2026-09-30T10:00:00+08:00", 3, "2026-10-10T10:00:00+08:00"),
            ("2026-10-09T10:00:00+08:00", 1, "2026-10-10T10:00:00+08:00"),
            // Inputs in other offsets are read in the calendar's zone:
            // 20:00Z on Fri 13 Feb is 04:00 on Sat 14 Feb in Shanghai.
            ("2026-02-13T20:00:00Z", 1, "2026-02-24T04:00:00+08:00"),
            ("2026-02-13T11:00:00+09:00", 1, "2026-02-14T10:00:00+08:00"),
            // Fractions of a second are kept.
            (
                "2026-02-13T10:00:00.250+08:00",
                1,
                "2026-02-14T10:00:00.250+08:00",
            ),
        ];
        for (from, days, expected) in cases {
            assert_eq!(due(&cn, from, days), expected, "{from} + {days}");
        }
    }

    // ---- Japan --------------------------------------------------------

    #[test]
    fn jp_september_2026_run_of_holidays() {
        let jp = shipped("jp");
        // Sat 19, Sun 20, Respect for the Aged Day Mon 21, citizens' holiday
        // Tue 22, Autumnal Equinox Day Wed 23.
        for day in 19..=23 {
            assert!(!jp.is_business_day(NaiveDate::from_ymd_opt(2026, 9, day).unwrap()));
        }
        assert!(jp.is_business_day(date("2026-09-18")));
        assert!(jp.is_business_day(date("2026-09-24")));
        assert_eq!(
            jp.holidays()[&date("2026-09-22")],
            "国民の休日 Citizens' holiday (between 21 and 23 Sep)"
        );
        let cases = [
            ("2026-09-18T10:00:00+09:00", 1, "2026-09-24T10:00:00+09:00"),
            ("2026-09-18T10:00:00+09:00", 2, "2026-09-25T10:00:00+09:00"),
            ("2026-09-22T14:00:00+09:00", 1, "2026-09-25T00:00:00+09:00"),
            ("2026-09-17T23:59:59+09:00", 1, "2026-09-18T23:59:59+09:00"),
            ("2026-09-17T23:59:59+09:00", 2, "2026-09-24T23:59:59+09:00"),
            // Golden Week: Fri 1 May is a working day; Sun 3 May's
            // substitute holiday is Wed 6 May.
            ("2026-04-30T10:00:00+09:00", 1, "2026-05-01T10:00:00+09:00"),
            ("2026-05-01T10:00:00+09:00", 1, "2026-05-07T10:00:00+09:00"),
            // 2027: Vernal Equinox Day Sun 21 Mar, substitute Mon 22 Mar.
            ("2027-03-19T10:00:00+09:00", 1, "2027-03-23T10:00:00+09:00"),
        ];
        for (from, days, expected) in cases {
            assert_eq!(due(&jp, from, days), expected, "{from} + {days}");
        }
    }

    /// Checks jp.toml against the Act on National Holidays: Article 2's
    /// dates for each covered year, and the substitute (Art. 3(2)) and
    /// citizens' (Art. 3(3)) holidays derived from them, both ways: every
    /// holiday the rules give is in the file and the file has no other.
    #[test]
    fn jp_file_follows_the_holiday_act() {
        let jp = shipped("jp");
        let derived_prefixes = ["振替休日", "国民の休日"];
        let national: BTreeMap<NaiveDate, &str> = jp
            .holidays()
            .iter()
            .filter(|(_, name)| !derived_prefixes.iter().any(|p| name.starts_with(p)))
            .map(|(d, name)| (*d, name.as_str()))
            .collect();

        let nth_monday = |year: i32, month: u32, n: u8| {
            NaiveDate::from_weekday_of_month_opt(year, month, Weekday::Mon, n).unwrap()
        };
        let ymd = |y: i32, m: u32, d: u32| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        // Equinox days as published in the Official Gazette the February before.
        let equinoxes = [
            (2026, ymd(2026, 3, 20), ymd(2026, 9, 23)),
            (2027, ymd(2027, 3, 21), ymd(2027, 9, 23)),
        ];
        let mut expected_national = BTreeMap::new();
        for (year, vernal, autumnal) in equinoxes {
            for (d, name) in [
                (ymd(year, 1, 1), "元日"),
                (nth_monday(year, 1, 2), "成人の日"),
                (ymd(year, 2, 11), "建国記念の日"),
                (ymd(year, 2, 23), "天皇誕生日"),
                (vernal, "春分の日"),
                (ymd(year, 4, 29), "昭和の日"),
                (ymd(year, 5, 3), "憲法記念日"),
                (ymd(year, 5, 4), "みどりの日"),
                (ymd(year, 5, 5), "こどもの日"),
                (nth_monday(year, 7, 3), "海の日"),
                (ymd(year, 8, 11), "山の日"),
                (nth_monday(year, 9, 3), "敬老の日"),
                (autumnal, "秋分の日"),
                (nth_monday(year, 10, 2), "スポーツの日"),
                (ymd(year, 11, 3), "文化の日"),
                (ymd(year, 11, 23), "勤労感謝の日"),
            ] {
                expected_national.insert(d, name);
            }
        }
        assert_eq!(
            national.keys().collect::<Vec<_>>(),
            expected_national.keys().collect::<Vec<_>>()
        );
        for (d, name) in &expected_national {
            assert!(
                national[d].starts_with(name),
                "{d}: {} is not {name}",
                national[d]
            );
        }

        let mut expected_derived = std::collections::BTreeSet::new();
        for d in national.keys() {
            // Art. 3(2): a national holiday on a Sunday makes the nearest
            // following day that is not a national holiday a holiday.
            if d.weekday() == Weekday::Sun {
                let mut s = d.succ_opt().unwrap();
                while national.contains_key(&s) {
                    s = s.succ_opt().unwrap();
                }
                expected_derived.insert(s);
            }
            // Art. 3(3): a day between two national holidays is a holiday.
            let two_later = d.checked_add_days(Days::new(2)).unwrap();
            let between = d.succ_opt().unwrap();
            if national.contains_key(&two_later) && !national.contains_key(&between) {
                expected_derived.insert(between);
            }
        }
        let derived: std::collections::BTreeSet<NaiveDate> = jp
            .holidays()
            .keys()
            .filter(|d| !national.contains_key(d))
            .copied()
            .collect();
        assert_eq!(derived, expected_derived);
        // The rules give exactly the published extra days.
        let published: Vec<String> = derived.iter().map(|d| d.to_string()).collect();
        assert_eq!(published, ["2026-05-06", "2026-09-22", "2027-03-22"]);
        // Every day sandwiched between two holidays is a holiday or weekend.
        for d in jp.holidays().keys() {
            let between = d.succ_opt().unwrap();
            let two_later = between.succ_opt().unwrap();
            if jp.holidays().contains_key(&two_later) {
                assert!(!jp.is_business_day(between), "{between}");
            }
        }
    }

    // ---- Daylight saving: Europe/Berlin -------------------------------

    #[test]
    fn berlin_keeps_wall_clock_time_across_both_changes() {
        let de = berlin();
        // Spring: Fri 27 Mar 10:00 CET -> Mon 30 Mar 10:00 CEST, 71 h later.
        let start = utc("2026-03-27T09:00:00Z");
        let end = de.due(start, 1).unwrap();
        assert_eq!(end, utc("2026-03-30T08:00:00Z"));
        assert_eq!((end - start).num_hours(), 71);
        assert_eq!(
            due(&de, "2026-03-27T10:00:00+01:00", 1),
            "2026-03-30T10:00:00+02:00"
        );
        // Autumn: Fri 23 Oct 10:00 CEST -> Mon 26 Oct 10:00 CET, 73 h later.
        let start = utc("2026-10-23T08:00:00Z");
        let end = de.due(start, 1).unwrap();
        assert_eq!(end, utc("2026-10-26T09:00:00Z"));
        assert_eq!((end - start).num_hours(), 73);
        assert_eq!(
            due(&de, "2026-10-23T10:00:00+02:00", 1),
            "2026-10-26T10:00:00+01:00"
        );
        // Starting on the weekend of the change: 00:00 of Monday, then
        // Tuesday 00:00 CEST.
        assert_eq!(
            due(&de, "2026-03-28T12:00:00+01:00", 1),
            "2026-03-31T00:00:00+02:00"
        );
        assert_eq!(
            due(&de, "2026-03-29T02:30:00+02:00", 0),
            "2026-03-30T00:00:00+02:00"
        );
        // Easter: Good Friday 3 Apr and Easter Monday 6 Apr are holidays.
        assert_eq!(
            due(&de, "2026-04-02T17:00:00+02:00", 1),
            "2026-04-07T17:00:00+02:00"
        );
    }

    #[test]
    fn berlin_spring_gap_takes_the_first_valid_instant_after() {
        let dst = berlin_dst_sundays();
        // Fri 27 Mar 02:30 CET + 1 business day = Sun 29 Mar 02:30, which
        // does not exist: the clocks jump from 02:00 CET to 03:00 CEST.
        assert_eq!(
            due(&dst, "2026-03-27T02:30:00+01:00", 1),
            "2026-03-29T03:00:00+02:00"
        );
        assert_eq!(
            dst.due(utc("2026-03-27T01:30:00Z"), 1).unwrap(),
            utc("2026-03-29T01:00:00Z")
        );
        // 02:00 sharp is inside the gap as well; 03:00 and 01:59:59 exist.
        assert_eq!(
            due(&dst, "2026-03-27T02:00:00+01:00", 1),
            "2026-03-29T03:00:00+02:00"
        );
        assert_eq!(
            due(&dst, "2026-03-27T02:59:59.5+01:00", 1),
            "2026-03-29T03:00:00+02:00"
        );
        assert_eq!(
            due(&dst, "2026-03-27T03:00:00+01:00", 1),
            "2026-03-29T03:00:00+02:00"
        );
        assert_eq!(
            due(&dst, "2026-03-27T01:59:59+01:00", 1),
            "2026-03-29T01:59:59+01:00"
        );
        // One more business day and the time exists again.
        assert_eq!(
            due(&dst, "2026-03-27T02:30:00+01:00", 2),
            "2026-03-30T02:30:00+02:00"
        );
    }

    #[test]
    fn berlin_autumn_fold_takes_the_earlier_instant() {
        let dst = berlin_dst_sundays();
        // Fri 23 Oct 02:30 CEST + 1 = Sun 25 Oct 02:30, which happens twice
        // (CEST, then CET an hour later): the earlier one.
        assert_eq!(
            due(&dst, "2026-10-23T02:30:00+02:00", 1),
            "2026-10-25T02:30:00+02:00"
        );
        assert_eq!(
            dst.due(utc("2026-10-23T00:30:00Z"), 1).unwrap(),
            utc("2026-10-25T00:30:00Z")
        );
        // Starting in the second 02:30 (CET) of Sun 25 Oct: Mon 02:30 CET.
        assert_eq!(
            due(&dst, "2026-10-25T02:30:00+01:00", 1),
            "2026-10-26T02:30:00+01:00"
        );
    }

    #[test]
    fn region_level_functions_for_the_cli_and_the_jobs() {
        let calendars = Calendars::embedded().unwrap();
        assert_eq!(
            due_rfc3339_for_region(&calendars, "cn", "2026-02-13T10:00:00+08:00", 1).unwrap(),
            "2026-02-14T10:00:00+08:00"
        );
        assert_eq!(
            due_for_region(&calendars, "jp", utc("2026-09-18T01:00:00Z"), 1).unwrap(),
            utc("2026-09-24T01:00:00Z")
        );
        let err = due_rfc3339_for_region(&calendars, "fr", "2026-02-13T10:00:00+08:00", 1);
        assert_eq!(
            err.unwrap_err().to_string(),
            "no calendar for region \"fr\""
        );
        let err = due_for_region(&calendars, "CN", utc("2026-09-18T01:00:00Z"), 1);
        assert!(matches!(err, Err(CalendarError::InvalidRegion { .. })));
    }

    // ---- Past the covered range, limits, errors ------------------------

    #[test]
    fn past_the_covered_range_only_weekends_count() {
        let cn = shipped("cn");
        // 2027 has no data yet: 1 Jan 2027 (a Friday) is a business day.
        assert!(cn.is_business_day(date("2027-01-01")));
        assert!(!cn.is_business_day(date("2027-01-02")));
        assert_eq!(
            due(&cn, "2026-12-31T10:00:00+08:00", 1),
            "2027-01-01T10:00:00+08:00"
        );
        assert_eq!(
            due(&cn, "2027-01-01T10:00:00+08:00", 1),
            "2027-01-04T10:00:00+08:00"
        );
        // Far beyond the data it still terminates: 5 business days a week,
        // so 500 business days after a Monday is the Monday 100 weeks later.
        let monday = date("2030-01-07");
        assert_eq!(
            cn.add_business_days(monday, 5 * 100).unwrap(),
            monday.checked_add_days(Days::new(7 * 100)).unwrap()
        );
    }

    #[test]
    fn limits_are_errors_not_panics() {
        let cn = shipped("cn");
        assert!(matches!(
            cn.due(utc("2026-02-13T02:00:00Z"), MAX_BUSINESS_DAYS + 1),
            Err(CalendarError::TooManyDays { days, max }) if days == MAX_BUSINESS_DAYS + 1 && max == MAX_BUSINESS_DAYS
        ));
        assert!(
            cn.due(utc("2026-02-13T02:00:00Z"), MAX_BUSINESS_DAYS)
                .is_ok()
        );
        assert!(matches!(
            cn.due(DateTime::<Utc>::MAX_UTC, 1),
            Err(CalendarError::OutOfRange)
        ));
        let err = due_rfc3339(&cn, "2026-02-13 10:00", 1).unwrap_err();
        assert!(
            matches!(err, CalendarError::BadInstant { ref input, .. } if input == "2026-02-13 10:00")
        );
        assert!(
            due_rfc3339(&cn, "2026-02-13T10:00:00", 1).is_err(),
            "an offset is required"
        );
    }

    #[test]
    fn coverage_gap_finds_the_first_date_without_data() {
        let cn = shipped("cn");
        let jp = shipped("jp");
        // The session's "today": cn runs out on 1 Jan 2027, jp does not.
        assert_eq!(
            cn.coverage_gap(date("2026-11-22"), 60),
            Some(date("2027-01-01"))
        );
        assert_eq!(jp.coverage_gap(date("2026-11-22"), 60), None);
        // The window is `today` and the 59 days after it.
        assert_eq!(cn.coverage_gap(date("2026-11-02"), 60), None);
        assert_eq!(
            cn.coverage_gap(date("2026-11-03"), 60),
            Some(date("2027-01-01"))
        );
        assert_eq!(cn.coverage_gap(date("2026-06-01"), 60), None);
        // Before or after the range, today itself is the gap.
        assert_eq!(
            cn.coverage_gap(date("2025-12-01"), 60),
            Some(date("2025-12-01"))
        );
        assert_eq!(
            jp.coverage_gap(date("2028-03-01"), 60),
            Some(date("2028-03-01"))
        );
        assert_eq!(cn.coverage_gap(date("2028-03-01"), 0), None);

        let gaps = Calendars::embedded()
            .unwrap()
            .coverage_gaps(date("2026-11-22"), 60);
        assert_eq!(
            gaps,
            [CoverageGap {
                region: region("cn"),
                first_uncovered: date("2027-01-01"),
                source: CalendarSource::Embedded(region("cn")),
            }]
        );
    }
}
