//! Spending limits (DESIGN "Spending limits"): the org's currency, calendar
//! periods in the org's zone, and the authorization rule. No I/O.
//!
//! A **day** is the span from one local midnight to the next in the org's
//! zone; a **month** from the first local midnight of its 1st to that of the
//! next month's 1st. A local midnight that does not exist (a DST gap) or
//! happens twice (a fold) is resolved to its first valid instant, so every
//! instant belongs to exactly one day, and periods tile time without gaps.
//! Counters are keyed by period (`2026-03-31`, `2026-03`), so a new period
//! starts from zero by itself: nothing is ever reset in place.
use chrono::{DateTime, Datelike, Days, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::ids::Invalid;

/// Largest amount accepted in one call, in minor units (10^15: far above any
/// real payment, far below where sums of many could overflow an `i64`).
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;

/// Longest payment `reference` (the caller's idempotency key).
pub const MAX_REFERENCE: usize = 128;

/// An ISO 4217 currency that has minor units (not gold, SDRs or "no currency").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    pub fn parse(field: &'static str, s: &str) -> Result<Self, Invalid> {
        let c = iso_currency::Currency::from_code(s)
            .filter(|c| c.exponent().is_some())
            .ok_or_else(|| {
                Invalid::new(
                    field,
                    format!("{s:?} is not an ISO 4217 currency code such as CNY, JPY or USD"),
                )
            })?;
        Ok(Self(c))
    }
    pub fn code(self) -> &'static str {
        self.0.code()
    }
    /// Digits after the decimal point of one minor unit (CNY 2, JPY 0).
    pub fn exponent(self) -> u32 {
        u32::from(self.0.exponent().unwrap_or(0))
    }
    /// `amount` minor units written as a decimal with the code: `123.45 CNY`.
    pub fn format(self, amount: i64) -> String {
        let e = self.exponent();
        if e == 0 {
            return format!("{amount} {}", self.code());
        }
        let scale = 10i64.pow(e);
        let sign = if amount < 0 { "-" } else { "" };
        let a = amount.unsigned_abs();
        let s = scale as u64;
        format!(
            "{sign}{}.{:0width$} {}",
            a / s,
            a % s,
            self.code(),
            width = e as usize
        )
    }
}

/// An IANA time zone name, e.g. `Asia/Shanghai`.
pub fn parse_zone(field: &'static str, s: &str) -> Result<Tz, Invalid> {
    s.parse::<Tz>().map_err(|_| {
        Invalid::new(
            field,
            format!("{s:?} is not an IANA time zone such as Asia/Shanghai or America/New_York"),
        )
    })
}

/// A payment permission: may the member pay from the shared balance, and
/// the per-transaction, daily and monthly limits in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub allowed: bool,
    pub per_tx: i64,
    pub daily: i64,
    pub monthly: i64,
}

impl Limits {
    /// Each limit is 0..=[`MAX_AMOUNT`] and `per_tx <= daily <= monthly`.
    pub fn validate(&self, field: &'static str) -> Result<(), Invalid> {
        for (name, v) in [
            ("per_tx", self.per_tx),
            ("daily", self.daily),
            ("monthly", self.monthly),
        ] {
            if !(0..=MAX_AMOUNT).contains(&v) {
                return Err(Invalid::new(
                    field,
                    format!("{name} must be 0..={MAX_AMOUNT} minor units, got {v}"),
                ));
            }
        }
        if self.per_tx > self.daily || self.daily > self.monthly {
            return Err(Invalid::new(
                field,
                format!(
                    "limits must satisfy per_tx <= daily <= monthly, got {} / {} / {}",
                    self.per_tx, self.daily, self.monthly
                ),
            ));
        }
        Ok(())
    }
}

/// The limits a `payment_permission` request's `params` ask for:
/// `{"per_tx": n, "daily": n, "monthly": n}` (minor units), or `{}` for
/// the role's limits. Other keys are refused.
pub fn limits_from_params(
    params: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<Limits>, Invalid> {
    if params.is_empty() {
        return Ok(None);
    }
    if let Some(k) = params
        .keys()
        .find(|k| !matches!(k.as_str(), "per_tx" | "daily" | "monthly"))
    {
        return Err(Invalid::new(
            "params",
            format!("{k:?} is not a payment_permission parameter; use per_tx, daily and monthly"),
        ));
    }
    let get = |k: &str| -> Result<i64, Invalid> {
        params.get(k).and_then(|v| v.as_i64()).ok_or_else(|| {
            Invalid::new(
                "params",
                format!("{k} must be a whole number of minor units (give per_tx, daily and monthly together)"),
            )
        })
    };
    let l = Limits {
        allowed: true,
        per_tx: get("per_tx")?,
        daily: get("daily")?,
        monthly: get("monthly")?,
    };
    l.validate("params")?;
    Ok(Some(l))
}

/// Why an authorization was declined (stable codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decline {
    MemberDisabled,
    NotAllowed,
    PerTx,
    Daily,
    Monthly,
}

impl Decline {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MemberDisabled => "member_disabled",
            Self::NotAllowed => "not_allowed",
            Self::PerTx => "per_tx",
            Self::Daily => "daily",
            Self::Monthly => "monthly",
        }
    }
}

/// What the day and the month have used so far (approved and captured
/// amounts plus open holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub day: i64,
    pub month: i64,
}

/// The rule, in DESIGN's order: the member is active, allowed, the amount is
/// within `per_tx`, and the day's and month's usage plus the amount stay
/// within their limits.
pub fn decide(active: bool, limits: &Limits, used: Usage, amount: i64) -> Result<(), Decline> {
    if !active {
        return Err(Decline::MemberDisabled);
    }
    if !limits.allowed {
        return Err(Decline::NotAllowed);
    }
    if amount > limits.per_tx {
        return Err(Decline::PerTx);
    }
    if used.day.saturating_add(amount) > limits.daily {
        return Err(Decline::Daily);
    }
    if used.month.saturating_add(amount) > limits.monthly {
        return Err(Decline::Monthly);
    }
    Ok(())
}

/// What may still be spent: `per_tx` is the largest amount the next
/// authorization may have (the per-transaction limit, capped by what the
/// day and the month have left); all zero when payment is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
#[schema(as = SpendRemaining)]
pub struct Remaining {
    pub per_tx: i64,
    pub daily: i64,
    pub monthly: i64,
}

pub fn remaining(active: bool, limits: &Limits, used: Usage) -> Remaining {
    if !active || !limits.allowed {
        return Remaining::default();
    }
    let daily = (limits.daily - used.day).max(0);
    let monthly = (limits.monthly - used.month).max(0);
    Remaining {
        per_tx: limits.per_tx.min(daily).min(monthly),
        daily,
        monthly,
    }
}

/// The day and month an instant belongs to in a zone, and when each ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    pub day: NaiveDate,
    /// The first day of the month.
    pub month: NaiveDate,
    pub day_ends: DateTime<Utc>,
    pub month_ends: DateTime<Utc>,
}

impl Periods {
    pub fn day_key(&self) -> String {
        day_key(self.day)
    }
    pub fn month_key(&self) -> String {
        month_key(self.month)
    }
}

pub fn day_key(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

pub fn month_key(d: NaiveDate) -> String {
    d.format("%Y-%m").to_string()
}

/// The first day of `d`'s month.
pub fn first_of_month(d: NaiveDate) -> NaiveDate {
    d.with_day(1).expect("every month has a 1st")
}

/// The first day of the month after `d`'s.
pub fn next_month(d: NaiveDate) -> NaiveDate {
    first_of_month(d)
        .checked_add_months(chrono::Months::new(1))
        .expect("date in range")
}

/// The instant day `d` starts in `tz`: its local midnight, or the first valid
/// instant after it when the clocks skip midnight, or the earlier one when
/// midnight happens twice.
pub fn day_start(tz: Tz, d: NaiveDate) -> DateTime<Utc> {
    super::calendar::resolve_local(tz, d.and_time(chrono::NaiveTime::MIN))
        .map(|t| t.with_timezone(&Utc))
        // Only dates near the ends of chrono's range fail; they never reach here.
        .unwrap_or_else(|_| d.and_time(chrono::NaiveTime::MIN).and_utc())
}

/// The periods `at` belongs to in `tz`.
pub fn periods(tz: Tz, at: DateTime<Utc>) -> Periods {
    let mut day = at.with_timezone(&tz).date_naive();
    // Where midnight happens twice and the clocks go back across it, the
    // wall clock shows the previous date for a while after the day began.
    let mut next = day_start(tz, day + Days::new(1));
    if at >= next {
        day = day + Days::new(1);
        next = day_start(tz, day + Days::new(1));
    }
    let month = first_of_month(day);
    Periods {
        day,
        month,
        day_ends: next,
        month_ends: day_start(tz, next_month(day)),
    }
}

/// The day before the one `at` falls in: the most recent day that has ended.
pub fn last_ended_day(tz: Tz, at: DateTime<Utc>) -> NaiveDate {
    periods(tz, at).day - Days::new(1)
}

/// The first day of the month before the one `at` falls in.
pub fn last_ended_month(tz: Tz, at: DateTime<Utc>) -> NaiveDate {
    let m = periods(tz, at).month;
    m.checked_sub_months(chrono::Months::new(1))
        .expect("date in range")
}

/// Parse `YYYY-MM-DD` (a day key) or `YYYY-MM` (a month key): the day, or
/// the first of the month, and whether it is a month.
pub fn parse_period(key: &str) -> Option<(NaiveDate, bool)> {
    if key.len() == 7 {
        NaiveDate::parse_from_str(&format!("{key}-01"), "%Y-%m-%d")
            .ok()
            .map(|d| (d, true))
    } else if key.len() == 10 {
        NaiveDate::parse_from_str(key, "%Y-%m-%d")
            .ok()
            .map(|d| (d, false))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn date(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn shanghai_days_and_months() {
        let tz = chrono_tz::Asia::Shanghai;
        let p = periods(tz, utc("2026-03-31T15:59:59Z"));
        assert_eq!(p.day_key(), "2026-03-31");
        assert_eq!(p.month_key(), "2026-03");
        assert_eq!(p.day_ends, utc("2026-03-31T16:00:00Z"));
        assert_eq!(p.month_ends, utc("2026-03-31T16:00:00Z"));
        let p = periods(tz, utc("2026-03-31T16:00:00Z"));
        assert_eq!(p.day_key(), "2026-04-01");
        assert_eq!(p.month_key(), "2026-04");
        // February of a common year.
        let p = periods(tz, utc("2026-02-28T12:00:00Z"));
        assert_eq!(p.day_key(), "2026-02-28");
        assert_eq!(p.day_ends, utc("2026-02-28T16:00:00Z"));
        assert_eq!(p.month_ends, utc("2026-02-28T16:00:00Z"));
        // ... and of a leap year.
        let p = periods(tz, utc("2028-02-28T16:00:00Z"));
        assert_eq!(p.day_key(), "2028-02-29");
        assert_eq!(p.month_ends, utc("2028-02-29T16:00:00Z"));
    }

    #[test]
    fn new_york_dst_days_are_23_and_25_hours() {
        let tz = chrono_tz::America::New_York;
        // 2026-03-08: clocks jump 02:00 -> 03:00 (EST -> EDT).
        let p = periods(tz, utc("2026-03-08T12:00:00Z"));
        assert_eq!(day_start(tz, p.day), utc("2026-03-08T05:00:00Z"));
        assert_eq!(p.day_ends, utc("2026-03-09T04:00:00Z"));
        // 2026-11-01: clocks go back 02:00 -> 01:00.
        let p = periods(tz, utc("2026-11-01T12:00:00Z"));
        assert_eq!(day_start(tz, p.day), utc("2026-11-01T04:00:00Z"));
        assert_eq!(p.day_ends, utc("2026-11-02T05:00:00Z"));
    }

    #[test]
    fn skipped_midnight_starts_the_day_at_the_first_valid_instant() {
        // America/Santiago, 2026-09-06: 24:00 becomes 01:00 (no local midnight).
        let tz = chrono_tz::America::Santiago;
        let start = day_start(tz, date("2026-09-06"));
        assert_eq!(start, utc("2026-09-06T04:00:00Z"));
        assert_eq!(
            start.with_timezone(&tz).format("%H:%M").to_string(),
            "01:00"
        );
        assert_eq!(
            periods(tz, start - chrono::Duration::seconds(1)).day_key(),
            "2026-09-05"
        );
        assert_eq!(periods(tz, start).day_key(), "2026-09-06");
    }

    #[test]
    fn doubled_midnight_resolves_to_the_first() {
        // America/Havana, 2026-11-01: 01:00 goes back to 00:00, so local
        // midnight of November 1st happens twice; the day starts at the first.
        let tz = chrono_tz::America::Havana;
        let start = day_start(tz, date("2026-11-01"));
        assert_eq!(start, utc("2026-11-01T04:00:00Z"));
        assert_eq!(
            periods(tz, start - chrono::Duration::seconds(1)).day_key(),
            "2026-10-31"
        );
        assert_eq!(periods(tz, start).day_key(), "2026-11-01");
        // The second midnight (an hour later) is inside the day, not a new one.
        let second = utc("2026-11-01T05:00:00Z");
        assert_eq!(periods(tz, second).day_key(), "2026-11-01");
        assert_eq!(periods(tz, second).day_ends, utc("2026-11-02T05:00:00Z"));
        // The month of October ends at the first midnight too.
        assert_eq!(
            periods(tz, utc("2026-10-20T12:00:00Z")).month_ends,
            utc("2026-11-01T04:00:00Z")
        );
    }

    #[test]
    fn rule_order_and_remaining() {
        let l = Limits {
            allowed: true,
            per_tx: 100,
            daily: 300,
            monthly: 1000,
        };
        let u = |day, month| Usage { day, month };
        assert_eq!(decide(false, &l, u(0, 0), 1), Err(Decline::MemberDisabled));
        let off = Limits {
            allowed: false,
            ..l
        };
        assert_eq!(decide(true, &off, u(0, 0), 1), Err(Decline::NotAllowed));
        assert_eq!(decide(true, &l, u(0, 0), 101), Err(Decline::PerTx));
        assert_eq!(decide(true, &l, u(250, 250), 51), Err(Decline::Daily));
        assert_eq!(decide(true, &l, u(250, 250), 50), Ok(()));
        assert_eq!(decide(true, &l, u(0, 950), 51), Err(Decline::Monthly));
        assert_eq!(
            remaining(true, &l, u(250, 950)),
            Remaining {
                per_tx: 50,
                daily: 50,
                monthly: 50
            }
        );
        // A lowered limit below what was used leaves nothing, never a negative.
        assert_eq!(remaining(true, &l, u(400, 400)).daily, 0);
        assert_eq!(remaining(true, &off, u(0, 0)), Remaining::default());
    }

    #[test]
    fn limits_validation() {
        let ok = Limits {
            allowed: true,
            per_tx: 1,
            daily: 1,
            monthly: 1,
        };
        ok.validate("payment").unwrap();
        for bad in [
            Limits { per_tx: -1, ..ok },
            Limits { per_tx: 2, ..ok },
            Limits {
                daily: 5,
                monthly: 4,
                ..ok
            },
            Limits {
                monthly: MAX_AMOUNT + 1,
                ..ok
            },
        ] {
            assert!(bad.validate("payment").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn currencies() {
        let cny = Currency::parse("currency", "CNY").unwrap();
        assert_eq!(cny.format(12345), "123.45 CNY");
        assert_eq!(cny.format(5), "0.05 CNY");
        assert_eq!(
            Currency::parse("currency", "JPY").unwrap().format(500),
            "500 JPY"
        );
        for bad in ["cny", "XAU", "XXX", "ABC", "", "CNYY"] {
            assert!(Currency::parse("currency", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn period_keys_parse() {
        assert_eq!(parse_period("2026-03"), Some((date("2026-03-01"), true)));
        assert_eq!(
            parse_period("2026-03-31"),
            Some((date("2026-03-31"), false))
        );
        assert_eq!(parse_period("2026-02-30"), None);
        assert_eq!(parse_period("2026"), None);
    }

    proptest! {
        /// Every instant lies in exactly one day and one month, whose start
        /// is at or before it and whose end is after it; days tile time.
        #[test]
        fn periods_tile_time(secs in 1_600_000_000i64..2_000_000_000i64, z in 0usize..6) {
            let zones = [
                chrono_tz::Asia::Shanghai,
                chrono_tz::America::New_York,
                chrono_tz::America::Santiago,
                chrono_tz::Europe::Berlin,
                chrono_tz::Australia::Lord_Howe,
                chrono_tz::Pacific::Chatham,
            ];
            let tz = zones[z];
            let at = Utc.timestamp_opt(secs, 0).unwrap();
            let p = periods(tz, at);
            let start = day_start(tz, p.day);
            prop_assert!(start <= at && at < p.day_ends, "{at} not in {} [{start}, {})", p.day, p.day_ends);
            prop_assert_eq!(p.day_ends, day_start(tz, p.day + Days::new(1)));
            prop_assert_eq!(periods(tz, p.day_ends).day, p.day + Days::new(1));
            prop_assert!(day_start(tz, p.month) <= at && at < p.month_ends);
            prop_assert_eq!(p.month, first_of_month(p.day));
            let hours = (p.day_ends - start).num_minutes();
            prop_assert!((22 * 60..=26 * 60).contains(&hours), "day of {hours} minutes");
        }
    }
}
