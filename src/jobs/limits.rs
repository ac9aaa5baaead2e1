//! The `limits` cron job (DESIGN "Spending limits"): closes every day and
//! month that has ended in each time zone in use, releases expired holds and
//! prunes counters past `payments.retention_months`.
//!
//! Counters are keyed by period, so nothing here gates spending: a new
//! period starts from zero by itself, whether or not its predecessor was
//! closed. The job runs on a frequent UTC cron (`payments.limits_cron`, every
//! minute by default) rather than one cron per zone: each run works out, per
//! zone in use, every period that has ended and has no `limit_closes` row
//! yet, so midnights missed while no scheduler ran are caught up each once,
//! zones added later need no new schedule, and two schedulers (or a re-run)
//! close each period once (`limit_closes` primary key, conditional finish).
//! Every statement touches at most [`BATCH`] rows; a close resumes after its
//! `cursor` if it was interrupted.
use std::collections::BTreeMap;

use anyhow::Context;
use approvald_workers::{Job, JobError, JobInfo};
use chrono::{DateTime, Days, Months, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::{
    app::App,
    domain::spending::{self, day_key, day_start, first_of_month, month_key, next_month},
    on_db, on_tx,
    store::spending::{self as st, BATCH},
};

pub const SCHEDULE: &str = "limits";

/// Most days caught up per zone in one run (older ones follow next run).
const MAX_CATCH_UP_DAYS: u64 = 400;

/// How long a worker owns a close it is working on before another may resume it.
const LEASE_MS: i64 = 5 * 60_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitsJob {
    /// The cron tick this job was made for (ms).
    pub tick_ms: i64,
}

impl Job for LimitsJob {
    const NAME: &'static str = "limits";
    const MAX_ATTEMPTS: u32 = 5;
    const CONCURRENCY: usize = 1;
    /// A close of a million members takes seconds to a minute; an
    /// interrupted one resumes after its cursor.
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);
    type Context = App;

    async fn run(self, app: App, _info: JobInfo) -> Result<(), JobError> {
        let r = run_due(&app).await?;
        if r != Ran::default() {
            tracing::info!(
                closed = r.closed,
                released = r.released,
                pruned = r.pruned,
                "limits job ran"
            );
        }
        Ok(())
    }
}

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ran {
    /// Periods closed by this run.
    pub closed: u64,
    /// Expired holds released.
    pub released: u64,
    /// Counter and alert rows pruned.
    pub pruned: u64,
}

/// Daily or monthly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Daily,
    Monthly,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Daily => "daily",
            Kind::Monthly => "monthly",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "daily" => Some(Kind::Daily),
            "monthly" => Some(Kind::Monthly),
            _ => None,
        }
    }
}

/// One period of one zone: its key and the instant it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub kind: Kind,
    pub key: String,
    pub ends_at: DateTime<Utc>,
}

impl Period {
    pub fn day(tz: Tz, d: NaiveDate) -> Self {
        Self {
            kind: Kind::Daily,
            key: day_key(d),
            ends_at: day_start(tz, d + Days::new(1)),
        }
    }
    pub fn month(tz: Tz, first: NaiveDate) -> Self {
        Self {
            kind: Kind::Monthly,
            key: month_key(first),
            ends_at: day_start(tz, next_month(first)),
        }
    }
    /// The period of `kind` that ended most recently at `at`.
    pub fn last_ended(tz: Tz, kind: Kind, at: DateTime<Utc>) -> Self {
        match kind {
            Kind::Daily => Self::day(tz, spending::last_ended_day(tz, at)),
            Kind::Monthly => Self::month(tz, spending::last_ended_month(tz, at)),
        }
    }
}

/// The outcome of [`close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// This call finished it; `members` summary rows in all.
    Now { members: i64 },
    /// It was closed before: nothing changed.
    Already,
    /// Another worker holds it right now.
    Busy,
    /// The period has not ended yet.
    NotEnded,
}

/// Zones in use: each org's own zone, or its region calendar's; with the
/// earliest org creation in each (the first day worth closing there).
pub async fn zones_in_use(app: &App) -> anyhow::Result<BTreeMap<String, (Tz, i64)>> {
    let rows: Vec<(Option<String>, String, i64)> = on_db!(&app.db, |p| sqlx::query_as(
        "SELECT timezone, region, MIN(created_at) FROM orgs GROUP BY timezone, region"
    )
    .fetch_all(p)
    .await)
    .context("listing zones in use")?;
    let mut out: BTreeMap<String, (Tz, i64)> = BTreeMap::new();
    for (zone, region, first) in rows {
        let tz = zone
            .as_deref()
            .and_then(|z| z.parse::<Tz>().ok())
            .unwrap_or_else(|| crate::jobs::notify::region_tz(app, &region));
        let e = out.entry(tz.name().to_string()).or_insert((tz, first));
        e.1 = e.1.min(first);
    }
    Ok(out)
}

/// One run: close what has ended everywhere, release expired holds, prune.
pub async fn run_due(app: &App) -> anyhow::Result<Ran> {
    let now = app.clock.now();
    let mut ran = Ran::default();
    for (name, (tz, first_ms)) in zones_in_use(app).await? {
        let first_day = Utc
            .timestamp_millis_opt(first_ms)
            .single()
            .map(|t| spending::periods(tz, t).day)
            .unwrap_or_else(|| spending::periods(tz, now).day);
        for p in due_periods(app, &name, tz, first_day, now).await? {
            if let Closed::Now { .. } = close(app, &name, &p).await? {
                ran.closed += 1;
            }
        }
        ran.pruned += prune(app, &name, tz, now).await?;
    }
    ran.released = release_expired(app).await?;
    Ok(ran)
}

/// Periods of `zone` that have ended and are not closed (or are unfinished),
/// oldest first: days, then months.
async fn due_periods(
    app: &App,
    zone: &str,
    tz: Tz,
    first_day: NaiveDate,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<Period>> {
    let mut out = Vec::new();
    let open: Vec<(String, String)> = on_db!(&app.db, |p| {
        sqlx::query_as(
        "SELECT period, kind FROM limit_closes WHERE zone = $1 AND done_at IS NULL ORDER BY period"
    )
    .bind(zone)
    .fetch_all(p)
    .await
    })?;
    for (key, kind) in open {
        match (spending::parse_period(&key), Kind::parse(&kind)) {
            (Some((d, false)), Some(Kind::Daily)) => out.push(Period::day(tz, d)),
            (Some((d, true)), Some(Kind::Monthly)) => out.push(Period::month(tz, d)),
            _ => {
                tracing::warn!(zone, period = %key, kind, "limit_closes row with a bad period; skipped")
            }
        }
    }
    for kind in [Kind::Daily, Kind::Monthly] {
        let last: Option<String> = on_db!(&app.db, |p| sqlx::query_scalar(
            "SELECT MAX(period) FROM limit_closes WHERE zone = $1 AND kind = $2"
        )
        .bind(zone)
        .bind(kind.as_str())
        .fetch_one(p)
        .await)?;
        let last_ended = Period::last_ended(tz, kind, now);
        let end = spending::parse_period(&last_ended.key).map(|(d, _)| d);
        let Some(end) = end else { continue };
        let start = match last.as_deref().and_then(spending::parse_period) {
            Some((d, _)) => match kind {
                Kind::Daily => d + Days::new(1),
                Kind::Monthly => next_month(d),
            },
            None => match kind {
                Kind::Daily => first_day,
                Kind::Monthly => first_of_month(first_day),
            },
        };
        let floor = end - Days::new(MAX_CATCH_UP_DAYS);
        let mut d = match kind {
            Kind::Daily => start.max(floor),
            Kind::Monthly => start.max(first_of_month(floor)),
        };
        while d <= end {
            let p = match kind {
                Kind::Daily => Period::day(tz, d),
                Kind::Monthly => Period::month(tz, d),
            };
            if !out.contains(&p) {
                out.push(p);
            }
            d = match kind {
                Kind::Daily => d + Days::new(1),
                Kind::Monthly => d + Months::new(1),
            };
        }
    }
    Ok(out)
}

/// Close `period` of `zone`: one summary row per member with a counter in
/// it, in batches of at most [`BATCH`]; idempotent and resumable.
pub async fn close(app: &App, zone: &str, period: &Period) -> anyhow::Result<Closed> {
    let now = app.now_ms();
    if period.ends_at.timestamp_millis() > now {
        return Ok(Closed::NotEnded);
    }
    let state: Option<(Option<i64>, i64)> = on_db!(&app.db, |p| sqlx::query_as(
        "SELECT done_at, leased_until FROM limit_closes WHERE zone = $1 AND period = $2"
    )
    .bind(zone)
    .bind(&period.key)
    .fetch_optional(p)
    .await)?;
    match state {
        Some((Some(_), _)) => return Ok(Closed::Already),
        Some((None, _)) => {
            // Resume an interrupted close, unless another worker holds it.
            let took = on_db!(&app.db, |p| sqlx::query(
                "UPDATE limit_closes SET runs = runs + 1, leased_until = $3 \
                 WHERE zone = $1 AND period = $2 AND done_at IS NULL AND leased_until < $4"
            )
            .bind(zone)
            .bind(&period.key)
            .bind(now + LEASE_MS)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
            if took == 0 {
                return Ok(Closed::Busy);
            }
        }
        None => {
            let took = on_db!(&app.db, |p| {
                sqlx::query(
                "INSERT INTO limit_closes (zone, period, kind, ends_at, cursor, members, runs, leased_until, started_at) \
                 VALUES ($1, $2, $3, $4, '', 0, 1, $5, $6) ON CONFLICT (zone, period) DO NOTHING"
            )
            .bind(zone)
            .bind(&period.key)
            .bind(period.kind.as_str())
            .bind(period.ends_at.timestamp_millis())
            .bind(now + LEASE_MS)
            .bind(now)
            .execute(p)
            .await
            .map(|r| r.rows_affected())
            })?;
            if took == 0 {
                return Ok(Closed::Busy);
            }
        }
    }
    loop {
        let cursor: String = on_db!(&app.db, |p| sqlx::query_scalar(
            "SELECT cursor FROM limit_closes WHERE zone = $1 AND period = $2"
        )
        .bind(zone)
        .bind(&period.key)
        .fetch_one(p)
        .await)?;
        let upper: Option<String> = on_db!(&app.db, |p| sqlx::query_scalar(
            "SELECT MAX(member_id) FROM (SELECT member_id FROM spend_counters \
             WHERE zone = $1 AND period = $2 AND member_id > $3 ORDER BY member_id LIMIT $4) t"
        )
        .bind(zone)
        .bind(&period.key)
        .bind(&cursor)
        .bind(BATCH)
        .fetch_one(p)
        .await)?;
        let Some(upper) = upper else { break };
        let now = app.now_ms();
        let mut tx = app.db.begin().await?;
        let n = on_tx!(&mut tx, |c| {
            sqlx::query(
            "INSERT INTO spend_summaries (member_id, period, org_id, zone, used, held, approved_count, approved_amount, \
                                          captured_count, captured_amount, voided_count, voided_amount, \
                                          declined_count, declined_amount, closed_at) \
             SELECT member_id, period, org_id, zone, used, held, approved_count, approved_amount, \
                    captured_count, captured_amount, voided_count, voided_amount, declined_count, declined_amount, $5 \
             FROM spend_counters WHERE zone = $1 AND period = $2 AND member_id > $3 AND member_id <= $4 \
             ON CONFLICT (member_id, period) DO NOTHING"
        )
        .bind(zone)
        .bind(&period.key)
        .bind(&cursor)
        .bind(&upper)
        .bind(now)
        .execute(c)
        .await
        .map(|r| r.rows_affected())
        })?;
        on_tx!(&mut tx, |c| sqlx::query(
            "UPDATE limit_closes SET cursor = $3, members = members + $4, leased_until = $5 \
             WHERE zone = $1 AND period = $2 AND cursor = $6"
        )
        .bind(zone)
        .bind(&period.key)
        .bind(&upper)
        .bind(n as i64)
        .bind(now + LEASE_MS)
        .bind(&cursor)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        tx.commit().await?;
    }
    let (done, members): (u64, i64) = {
        let now = app.now_ms();
        let done = on_db!(&app.db, |p| sqlx::query(
            "UPDATE limit_closes SET done_at = $3, leased_until = 0 \
             WHERE zone = $1 AND period = $2 AND done_at IS NULL"
        )
        .bind(zone)
        .bind(&period.key)
        .bind(now)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
        let members: i64 = on_db!(&app.db, |p| sqlx::query_scalar(
            "SELECT members FROM limit_closes WHERE zone = $1 AND period = $2"
        )
        .bind(zone)
        .bind(&period.key)
        .fetch_one(p)
        .await)?;
        (done, members)
    };
    if done == 0 {
        return Ok(Closed::Already);
    }
    metrics::counter!("approvald_limit_resets_total", "period" => period.kind.as_str())
        .increment(1);
    tracing::info!(
        zone,
        period = %period.key,
        kind = period.kind.as_str(),
        members,
        "spending period closed"
    );
    Ok(Closed::Now { members })
}

/// Release holds that have expired, in batches of at most [`BATCH`] holds;
/// each batch is one transaction that locks its members in id order.
pub async fn release_expired(app: &App) -> anyhow::Result<u64> {
    let mut total = 0;
    // Bounded per run; what is left goes next run.
    for _ in 0..100 {
        let now = app.now_ms();
        let members = st::members_with_expired_holds(&app.db, now, BATCH).await?;
        if members.is_empty() {
            break;
        }
        let mut tx = app.db.begin().await?;
        for (org_id, member_id) in &members {
            if st::lock_member(&mut tx, org_id, member_id).await?.is_none() {
                continue;
            }
            total += crate::flows::payments::expire_member_holds(&mut tx, member_id, now).await?;
        }
        tx.commit().await?;
    }
    Ok(total)
}

/// Delete counters and alert records of periods that started more than
/// `payments.retention_months` months before the current month, in batches.
async fn prune(app: &App, zone: &str, tz: Tz, now: DateTime<Utc>) -> anyhow::Result<u64> {
    let months = app.config.payments.retention_months;
    let cur = spending::periods(tz, now).month;
    let Some(cutoff) = cur.checked_sub_months(Months::new(months)) else {
        return Ok(0);
    };
    // Keys sort as text: every day key of a month sorts after its month key,
    // so `period < 'YYYY-MM'` is exactly the days and months before it.
    let cutoff = month_key(cutoff);
    let mut n = 0;
    loop {
        let d = on_db!(&app.db, |p| {
            sqlx::query(
            "DELETE FROM spend_counters WHERE (member_id, period) IN \
               (SELECT member_id, period FROM spend_counters WHERE zone = $1 AND period < $2 LIMIT 1000)"
        )
        .bind(zone)
        .bind(&cutoff)
        .execute(p)
        .await
        .map(|r| r.rows_affected())
        })?;
        n += d;
        if d < BATCH as u64 {
            break;
        }
    }
    loop {
        let d = on_db!(&app.db, |p| sqlx::query(
            "DELETE FROM spend_alerts WHERE (member_id, period, threshold) IN \
               (SELECT member_id, period, threshold FROM spend_alerts WHERE period < $1 LIMIT 1000)"
        )
        .bind(&cutoff)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))?;
        n += d;
        if d < BATCH as u64 {
            break;
        }
    }
    Ok(n)
}
