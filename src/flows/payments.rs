//! Spending flows (DESIGN "Spending limits", invariant 4): authorize,
//! capture, void, the spending view, and what the `cleanup` job and the
//! `payment_permission` approval change. Each change is one transaction that
//! first locks the member's row (see `store::spending` for the lock order),
//! so decisions for one member are serial under any concurrency on both
//! engines, and `used + held <= limit` holds for every period. On
//! PostgreSQL an authorization first decides from an unlocked read and
//! writes with one statement that locks the member and commits only if
//! nothing it read has moved ([`authorize`]): the decision is then the same
//! as if it had been taken under the lock.
use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use serde_json::json;

use super::contention::LostLately;
use crate::{
    app::App,
    db::{Db, Tx, TxConn},
    domain::{
        ids::Locale,
        spending::{self, Currency, Decline, Limits, Periods, Remaining, Usage},
    },
    mail::{self, EmailSpec, Recipient, Template},
    on_tx,
    store::{
        keys::{self, ApiKey},
        members,
        orgs::Org,
        spending::{self as st, BATCH, Delta, LockedMember, Payment, Settled, Written},
    },
};

/// Alert thresholds, in percent of a limit.
pub const THRESHOLDS: [i64; 2] = [80, 100];

#[derive(Debug, thiserror::Error)]
pub enum PayError {
    #[error("no such {0}")]
    NotFound(&'static str),
    /// 422: the call names something impossible (capture above the hold).
    #[error("{0}")]
    Invalid(String),
    /// 409: the payment is not in a state that allows this.
    #[error("{0}")]
    Conflict(String),
    /// 409: the reference was used with another body.
    #[error("reference {0:?} was already used with a different body")]
    ReferenceReused(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The org's time zone: its own, else its region calendar's, else UTC.
pub fn org_zone(app: &App, org: &Org) -> Tz {
    org.timezone
        .as_deref()
        .and_then(|z| z.parse::<Tz>().ok())
        .unwrap_or_else(|| crate::jobs::notify::region_tz(app, &org.region))
}

/// The org's currency: its own, else `payments.currency`.
pub fn org_currency(app: &App, org: &Org) -> Currency {
    org.currency
        .as_deref()
        .and_then(|c| Currency::parse("currency", c).ok())
        .or_else(|| Currency::parse("payments.currency", &app.config.payments.currency).ok())
        .unwrap_or_else(|| Currency::parse("currency", "CNY").expect("CNY is ISO 4217"))
}

/// A validated authorization call.
#[derive(Debug, Clone)]
pub struct Authorize {
    pub member: String,
    pub amount: i64,
    pub reference: String,
    pub capture: bool,
    /// SHA-256 of the body's canonical JSON: the same reference with another
    /// body is refused.
    pub body_hash: String,
}

/// The answer to `authorize`: the stored JSON (replayed byte for byte).
#[derive(Debug, Clone)]
pub struct Answer {
    pub body: String,
    pub replayed: bool,
}

/// When the org's current day and month end (RFC 3339 UTC).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = SpendResets)]
pub struct Resets {
    pub daily: String,
    pub monthly: String,
}

/// The current day (`2026-02-13`) and month (`2026-02`) in the org's zone.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = SpendPeriods)]
pub struct PeriodKeys {
    pub daily: String,
    pub monthly: String,
}

fn resets(p: &Periods) -> Resets {
    Resets {
        daily: crate::http::api::time(p.day_ends.timestamp_millis()),
        monthly: crate::http::api::time(p.month_ends.timestamp_millis()),
    }
}

fn period_keys(p: &Periods) -> PeriodKeys {
    PeriodKeys {
        daily: p.day_key(),
        monthly: p.month_key(),
    }
}

/// The answer to `POST .../payments/authorize` (replayed byte for byte for
/// the same `reference` and body).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = PaymentAuthorization)]
pub struct AuthorizeOut<'a> {
    id: &'a str,
    approved: bool,
    /// `approved` (captured at once), `held` (`capture: false`) or `declined`.
    #[schema(value_type = String, pattern = "^(approved|held|declined)$")]
    status: &'a str,
    /// Why it was declined: `member_disabled`, `not_allowed`, `per_tx`,
    /// `daily` or `monthly`.
    #[schema(value_type = Option<String>)]
    reason: Option<&'static str>,
    member: &'a str,
    amount: i64,
    currency: &'static str,
    reference: &'a str,
    capture: bool,
    remaining: Remaining,
    resets_at: Resets,
    periods: PeriodKeys,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    created_at: String,
}

/// Release the member's holds that have expired at `now` (the member is
/// locked by the caller). Returns how many.
pub async fn expire_member_holds(
    tx: &mut Tx,
    member_id: &str,
    now: i64,
) -> Result<u64, sqlx::Error> {
    let mut n = 0;
    loop {
        let settled = st::settle_member_holds(tx, member_id, "expired", None, true, now).await?;
        n += settled.len() as u64;
        release(tx, member_id, &settled, now).await?;
        if (settled.len() as i64) < BATCH {
            return Ok(n);
        }
    }
}

/// Take released holds off their periods' `held` (counted as voided).
async fn release(
    tx: &mut Tx,
    member_id: &str,
    settled: &[Settled],
    now: i64,
) -> Result<(), sqlx::Error> {
    let mut groups: Vec<(&str, &str, i64, i64)> = Vec::new();
    for s in settled {
        match groups
            .iter_mut()
            .find(|g| g.0 == s.day.as_str() && g.1 == s.month.as_str())
        {
            Some(g) => {
                g.2 += s.amount;
                g.3 += 1;
            }
            None => groups.push((&s.day, &s.month, s.amount, 1)),
        }
    }
    for (day, month, amount, count) in groups {
        adjust(
            tx,
            member_id,
            [day, month],
            Delta {
                held: -amount,
                voided_count: count,
                voided_amount: amount,
                ..Delta::default()
            },
            now,
        )
        .await?;
    }
    Ok(())
}

/// Add `d` to existing counters (settlements: the hold made them).
async fn adjust(
    tx: &mut Tx,
    member_id: &str,
    periods: [&str; 2],
    d: Delta,
    now: i64,
) -> Result<(), sqlx::Error> {
    on_tx!(tx, |c| sqlx::query(
        "UPDATE spend_counters SET used = used + $4, held = held + $5, \
           captured_count = captured_count + $6, captured_amount = captured_amount + $7, \
           voided_count = voided_count + $8, voided_amount = voided_amount + $9, updated_at = $10 \
         WHERE member_id = $1 AND period IN ($2, $3)"
    )
    .bind(member_id)
    .bind(periods[0])
    .bind(periods[1])
    .bind(d.used)
    .bind(d.held)
    .bind(d.captured_count)
    .bind(d.captured_amount)
    .bind(d.voided_count)
    .bind(d.voided_amount)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// What deciding for the locked `member` needs, once its holds expired at
/// `now` are released. PostgreSQL does both in one statement
/// ([`st::inputs_releasing`]); SQLite (and PostgreSQL when a member has more
/// than a batch of expired holds) releases them batch by batch, then reads.
async fn decision_inputs(
    tx: &mut Tx,
    org_id: &str,
    member: &LockedMember,
    [day, month]: [&str; 2],
    now: i64,
) -> Result<st::Inputs, sqlx::Error> {
    if let TxConn::Postgres(t) = &mut tx.conn {
        let r = st::inputs_releasing(
            t,
            org_id,
            member.role.as_deref(),
            &member.id,
            [day, month],
            now,
        )
        .await?;
        if r.expired < BATCH {
            return Ok(r.inputs);
        }
    }
    expire_member_holds(tx, &member.id, now).await?;
    st::inputs(tx, org_id, member.role.as_deref(), &member.id, day, month).await
}

/// A member id the API could ever have made (anything else is a 404
/// without a query).
fn plausible_member(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64
}

/// `currency` must be the org's (422 naming `currency` otherwise).
fn check_currency(app: &App, org: &Org, currency: Currency) -> Result<(), PayError> {
    let own = org_currency(app, org);
    if currency != own {
        return Err(PayError::Invalid(format!(
            "currency: this org pays in {}, not {}",
            own.code(),
            currency.code()
        )));
    }
    Ok(())
}

/// The first step of `POST .../payments/authorize` ([`read`]): the bearer
/// key the call came with, as that step found it. The caller judges the key
/// (401, 403, the org boundary) before [`authorize_read`] goes on.
pub struct Read {
    /// The live key with the value given, if any.
    pub key: Option<ApiKey>,
    /// PostgreSQL: the connection the read ran on (the write runs on it
    /// too), what it read, when, and for which periods.
    pg: Option<PgRead>,
}

struct PgRead {
    conn: crate::db::Kept,
    snap: st::Snapshot,
    now: DateTime<Utc>,
    /// The day and month whose counters `snap` holds.
    periods: [String; 2],
}

/// The first step of `POST .../payments/authorize` for the org `org_id`.
/// PostgreSQL: one statement reads the live key with the value `key` (when
/// given), the org, the member, its limits and its usage, without locks
/// ([`st::snapshot`]). SQLite: the key only (the decision then takes the
/// statement-by-statement path).
pub async fn read(
    app: &App,
    key: Option<&str>,
    org_id: &str,
    req: &Authorize,
) -> Result<Read, PayError> {
    let Db::Postgres(pool) = &app.db else {
        let key = match key {
            Some(k) => keys::authenticate(&app.db, k).await?,
            None => None,
        };
        return Ok(Read { key, pg: None });
    };
    let now = app.clock.now();
    let hash = key.filter(|k| keys::well_formed(k)).map(keys::hash);
    // The org's zone as last seen (immutable so far; checked below anyway),
    // else UTC: a wrong guess only sends this call down the locking path.
    let p = spending::periods(app.spend_hints.zone(org_id).unwrap_or(Tz::UTC), now);
    let periods = [p.day_key(), p.month_key()];
    let mut conn = app.warm.take(pool).await?;
    let snap = st::snapshot(
        &mut conn,
        hash.as_deref(),
        org_id,
        plausible_member(&req.member).then_some(req.member.as_str()),
        [&periods[0], &periods[1]],
    )
    .await?;
    let key = snap.key_id.clone().map(|id| ApiKey {
        id,
        scope: snap.key_scope.clone().unwrap_or_default(),
        org_id: snap.key_org_id.clone(),
    });
    Ok(Read {
        key,
        pg: Some(PgRead {
            conn,
            snap,
            now,
            periods,
        }),
    })
}

/// The second step of `POST .../payments/authorize`, once the caller has
/// accepted [`Read::key`] for `org_id`: [`authorize`] for the org `org_id`
/// paying in `currency`. The org comes from the first step's statement (or,
/// on SQLite, the one that locks the member), so the call costs no
/// separate org lookup; what it answers is what checking the org first
/// would: 404 `org`, then 422 `currency`, then 404 `member`, and nothing
/// written.
pub async fn authorize_read(
    app: &App,
    read: Read,
    org_id: &str,
    currency: Currency,
    req: &Authorize,
) -> Result<Answer, PayError> {
    let Some(r) = read.pg else {
        return authorize_locking_in(app, org_id, currency, req).await;
    };
    let org = snap_org(&r.snap, org_id).ok_or(PayError::NotFound("org"))?;
    check_currency(app, &org, currency)?;
    optimistic(app, r, &org, req).await
}

fn snap_org(s: &st::Snapshot, org_id: &str) -> Option<Org> {
    Some(Org {
        id: org_id.to_string(),
        name: s.org_name.clone()?,
        region: s.org_region.clone()?,
        locale: s.org_locale.clone()?,
        created_at: s.org_created_at?,
        currency: s.org_currency.clone(),
        timezone: s.org_timezone.clone(),
    })
}

/// Decide one authorization for `req.member` of `org` (the caller may act
/// on it). A reference seen before replays its first answer; with another
/// body it is refused.
///
/// PostgreSQL tries the optimistic path first (see [`optimistic`]); every
/// other case, and SQLite, is one transaction that locks the member first
/// ([`authorize_locking`]). Both decide with [`spending::decide`] (through
/// [`plan`]) and write the same rows.
pub async fn authorize(app: &App, org: &Org, req: &Authorize) -> Result<Answer, PayError> {
    match read(app, None, &org.id, req).await?.pg {
        Some(r) => optimistic(app, r, org, req).await,
        None => authorize_locking(app, org, req).await,
    }
}

/// PostgreSQL: decide from what [`read`] saw, without having locked
/// anything, and write with one statement that commits only if nothing the
/// decision read has changed since ([`st::insert_payment_if_unchanged`]):
/// two round trips in all, on one connection kept warm between calls
/// ([`crate::db::Warm`]: no ping as it goes back). Otherwise (a counter
/// moved, the member or the org's authorization inputs changed) nothing is
/// written and the locking path decides again; a reference taken already
/// replays its first answer. The locking path also takes the cases this
/// one leaves out: the org's first call in this process (its zone is not
/// known yet), the first authorization of a period (no counter row yet), a
/// member with expired holds to release, a decision that crosses an alert
/// threshold (mail, webhook), and a member whose optimistic write lost a
/// race within [`CONTENTION_WINDOW`].
async fn optimistic(app: &App, r: PgRead, org: &Org, req: &Authorize) -> Result<Answer, PayError> {
    let PgRead {
        mut conn,
        snap,
        now,
        periods,
    } = r;
    let (Some(member_id), Some(status)) = (&snap.m_id, &snap.m_status) else {
        return Err(PayError::NotFound("member"));
    };
    let tz = org_zone(app, org);
    app.spend_hints.set_zone(&org.id, tz);
    let p = spending::periods(tz, now);
    let fresh = p.day_key() == periods[0] && p.month_key() == periods[1];
    if fresh
        && snap.inputs.day_used.is_some()
        && snap.inputs.month_used.is_some()
        && !app.spend_hints.lost_lately(member_id)
    {
        let plan = plan(app, org, member_id, status, &snap.inputs, req, now, &p)?;
        if plan.crossed.is_empty() {
            let seen = st::Seen {
                status,
                role: snap.m_role.as_deref(),
                revision: snap.revision,
            };
            match st::insert_payment_if_unchanged(&mut conn, &plan.row, seen, plan.delta).await? {
                Written::Done => {
                    app.warm.keep(conn);
                    plan.count();
                    return Ok(Answer {
                        body: plan.body,
                        replayed: false,
                    });
                }
                Written::ReferenceTaken => {
                    conn.release();
                    return replay_or_conflict(app, org, req).await;
                }
                Written::Changed => app.spend_hints.lost(member_id),
            }
        }
    }
    // Back to the pool, not kept: the locking path takes a connection from
    // the pool, and a kept one would only be missing there.
    conn.release();
    authorize_locking(app, org, req).await
}

/// After an optimistic write lost a race for a member, that member's
/// authorizations take the lock at once for this long: a member whose
/// writes queue on its row would lose again.
pub const CONTENTION_WINDOW: Duration = super::contention::WINDOW;

/// What the optimistic path has learnt in this process (in [`App`]): the
/// zone of each org it has seen (to read the right periods' counters in
/// the first statement), and the members whose optimistic write lost a
/// race lately. Hints only: the first is checked against the org row each
/// call, and either path decides correctly.
#[derive(Default)]
pub struct SpendHints {
    zones: Mutex<HashMap<String, Tz>>,
    lost: LostLately,
}

impl SpendHints {
    /// Most zones kept; past it the map starts again empty.
    const MAX: usize = 10_000;

    fn zone(&self, org_id: &str) -> Option<Tz> {
        lock(&self.zones).get(org_id).copied()
    }

    fn set_zone(&self, org_id: &str, tz: Tz) {
        let mut map = lock(&self.zones);
        if map.get(org_id) != Some(&tz) {
            if map.len() >= Self::MAX {
                map.clear();
            }
            map.insert(org_id.to_string(), tz);
        }
    }

    fn lost_lately(&self, member_id: &str) -> bool {
        self.lost.lately(member_id)
    }

    fn lost(&self, member_id: &str) {
        self.lost.lost(member_id);
    }
}

/// The map is consistent after every statement: a panic elsewhere while
/// holding the lock leaves nothing half-done.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// [`authorize_read`] on the path that locks first (SQLite): the member's
/// row is locked, then the org is read in the same transaction.
async fn authorize_locking_in(
    app: &App,
    org_id: &str,
    currency: Currency,
    req: &Authorize,
) -> Result<Answer, PayError> {
    let mut tx = app.db.begin().await?;
    let locked = if plausible_member(&req.member) {
        st::lock_member_with_org(&mut tx, org_id, &req.member).await?
    } else {
        None
    };
    let Some((member, org)) = locked else {
        tx.rollback().await?;
        let org = crate::store::orgs::get(&app.db, org_id)
            .await?
            .ok_or(PayError::NotFound("org"))?;
        check_currency(app, &org, currency)?;
        return Err(PayError::NotFound("member"));
    };
    if let Err(e) = check_currency(app, &org, currency) {
        tx.rollback().await?;
        return Err(e);
    }
    decide(app, tx, &org, member, req).await
}

/// [`authorize`] in one transaction that locks the member's row first.
async fn authorize_locking(app: &App, org: &Org, req: &Authorize) -> Result<Answer, PayError> {
    let mut tx = app.db.begin().await?;
    let Some(member) = st::lock_member(&mut tx, &org.id, &req.member).await? else {
        tx.rollback().await?;
        return Err(PayError::NotFound("member"));
    };
    decide(app, tx, org, member, req).await
}

/// One authorization decided, before anything is written: the answer, the
/// payment row, what it adds to the counters and the alert thresholds it
/// crosses.
struct Plan {
    body: String,
    row: Payment,
    delta: Delta,
    /// (period kind, period key, threshold, used after, limit)
    crossed: Vec<(&'static str, String, i64, i64, i64)>,
}

impl Plan {
    /// Count the decision in `approvald_spend_authorizations_total`.
    fn count(&self) {
        let outcome = match &self.row.reason {
            None => self.row.status.clone(),
            Some(r) => format!("declined_{r}"),
        };
        metrics::counter!("approvald_spend_authorizations_total", "outcome" => outcome)
            .increment(1);
    }
}

/// Decide `req` for `member` from `inputs` at `now_dt` (periods `p`, in
/// the org's zone), with [`spending::decide`]: the one place both paths
/// take the decision and shape what is stored and answered.
#[allow(clippy::too_many_arguments)]
fn plan(
    app: &App,
    org: &Org,
    member_id: &str,
    member_status: &str,
    inputs: &st::Inputs,
    req: &Authorize,
    now_dt: DateTime<Utc>,
    p: &Periods,
) -> Result<Plan, PayError> {
    let now = now_dt.timestamp_millis();
    let currency = org_currency(app, org);
    let (day, month) = (p.day_key(), p.month_key());
    let (limits, _) = inputs.limits();
    let used = Usage {
        day: inputs.day_used.unwrap_or(0),
        month: inputs.month_used.unwrap_or(0),
    };
    let active = member_status == members::ACTIVE;
    let decision = spending::decide(active, &limits, used, req.amount);
    let after = match decision {
        Ok(()) => Usage {
            day: used.day + req.amount,
            month: used.month + req.amount,
        },
        Err(_) => used,
    };
    let status = match (decision, req.capture) {
        (Err(_), _) => "declined",
        (Ok(()), true) => "approved",
        (Ok(()), false) => "held",
    };
    let id = crate::http::api::new_id();
    let expires_at =
        (status == "held").then(|| now + app.config.payments.hold_hours as i64 * 3_600_000);
    let reason = decision.err().map(Decline::as_str);
    let out = AuthorizeOut {
        id: &id,
        approved: decision.is_ok(),
        status,
        reason,
        member: member_id,
        amount: req.amount,
        currency: currency.code(),
        reference: &req.reference,
        capture: req.capture,
        remaining: spending::remaining(active, &limits, after),
        resets_at: resets(p),
        periods: period_keys(p),
        expires_at: expires_at.map(crate::http::api::time),
        created_at: crate::http::api::time(now),
    };
    let body = serde_json::to_string(&out).map_err(anyhow::Error::from)?;
    let delta = match status {
        "approved" => Delta {
            used: req.amount,
            approved_count: 1,
            approved_amount: req.amount,
            ..Delta::default()
        },
        "held" => Delta {
            held: req.amount,
            approved_count: 1,
            approved_amount: req.amount,
            ..Delta::default()
        },
        _ => Delta {
            declined_count: 1,
            declined_amount: req.amount,
            ..Delta::default()
        },
    };
    let mut crossed = Vec::new();
    if active && limits.allowed {
        for (kind, key, limit, before, after, hit) in [
            (
                "daily",
                &day,
                limits.daily,
                used.day,
                after.day,
                reason == Some("daily"),
            ),
            (
                "monthly",
                &month,
                limits.monthly,
                used.month,
                after.month,
                reason == Some("monthly"),
            ),
        ] {
            for t in THRESHOLDS {
                let reached = limit > 0 && after * 100 >= t * limit;
                let was = limit > 0 && before * 100 >= t * limit;
                if (reached && !was && decision.is_ok()) || (t == 100 && hit) {
                    crossed.push((kind, key.clone(), t, after, limit));
                }
            }
        }
    }
    let row = Payment {
        id,
        org_id: org.id.clone(),
        member_id: member_id.to_string(),
        reference: req.reference.clone(),
        body_hash: req.body_hash.clone(),
        amount: req.amount,
        currency: currency.code().to_string(),
        capture: req.capture,
        status: status.to_string(),
        reason: reason.map(str::to_string),
        day,
        month,
        day_used: used.day,
        month_used: used.month,
        captured_amount: None,
        expires_at,
        settled_at: None,
        response: body.clone(),
        created_at: now,
    };
    Ok(Plan {
        body,
        row,
        delta,
        crossed,
    })
}

/// The rest of [`authorize_locking`], in `tx` with `member` locked.
async fn decide(
    app: &App,
    mut tx: Tx,
    org: &Org,
    member: LockedMember,
    req: &Authorize,
) -> Result<Answer, PayError> {
    let now_dt = app.clock.now();
    let now = now_dt.timestamp_millis();
    let tz = org_zone(app, org);
    let currency = org_currency(app, org);
    let p = spending::periods(tz, now_dt);
    let (day, month) = (p.day_key(), p.month_key());
    let inputs = decision_inputs(&mut tx, &org.id, &member, [&day, &month], now).await?;
    let plan = plan(
        app,
        org,
        &member.id,
        &member.status,
        &inputs,
        req,
        now_dt,
        &p,
    )?;
    let inserted = if let TxConn::Postgres(t) = &mut tx.conn {
        st::insert_payment_bumping(t, &plan.row, tz.name(), plan.delta).await?
    } else if st::insert_payment(&mut tx, &plan.row).await? {
        st::bump(
            &mut tx,
            &member.id,
            &org.id,
            tz.name(),
            [&day, &month],
            plan.delta,
            now,
        )
        .await?;
        true
    } else {
        false
    };
    if !inserted {
        // This reference was decided already (maybe a moment ago).
        tx.rollback().await?;
        return replay_or_conflict(app, org, req).await;
    }
    for &(kind, ref key, t, used_now, limit) in &plan.crossed {
        if st::record_alert(&mut tx, &member.id, key, t, now).await? {
            alert(
                app,
                &mut tx,
                org,
                &member,
                currency,
                (kind, key, t),
                (used_now, limit),
            )
            .await?;
        }
    }
    tx.commit().await?;
    plan.count();
    Ok(Answer {
        body: plan.body,
        replayed: false,
    })
}

/// The stored first answer for a reference that was decided already (maybe
/// a moment ago), or 409.
async fn replay_or_conflict(app: &App, org: &Org, req: &Authorize) -> Result<Answer, PayError> {
    match replay(app, org, req).await? {
        Some(a) => Ok(a),
        None => Err(PayError::Conflict(
            "a payment with this reference is being decided; retry".into(),
        )),
    }
}

/// The stored answer for `req.reference`, or 409 when it came with another body.
async fn replay(app: &App, org: &Org, req: &Authorize) -> Result<Option<Answer>, PayError> {
    let Some(p) = st::payment_by_reference(&app.db, &org.id, &req.reference).await? else {
        return Ok(None);
    };
    if p.body_hash != req.body_hash {
        return Err(PayError::ReferenceReused(req.reference.clone()));
    }
    Ok(Some(Answer {
        body: p.response,
        replayed: true,
    }))
}

/// Mail the member and the org's admins that `threshold` % of a limit is
/// used (once per member, period and threshold: the caller recorded it).
#[allow(clippy::too_many_arguments)]
async fn alert(
    app: &App,
    tx: &mut Tx,
    org: &Org,
    member: &LockedMember,
    currency: Currency,
    (kind, period, threshold): (&str, &str, i64),
    (used, limit): (i64, i64),
) -> anyhow::Result<()> {
    let admins: Vec<(String, String, String)> = on_tx!(tx, |c| sqlx::query_as(
        "SELECT email, name, locale FROM members \
         WHERE org_id = $1 AND kind IN ('super_admin', 'admin') AND status = 'active' AND id <> $2 \
         ORDER BY created_at, id LIMIT 50"
    )
    .bind(&org.id)
    .bind(&member.id)
    .fetch_all(c)
    .await)?;
    let mut to = vec![(
        member.email.clone(),
        member.name.clone(),
        member.locale.clone(),
    )];
    for a in admins {
        if !to.iter().any(|t| t.0.eq_ignore_ascii_case(&a.0)) {
            to.push(a);
        }
    }
    for (email, name, locale) in to {
        mail::queue_email(
            app,
            tx,
            EmailSpec {
                template: Template::SpendThreshold,
                request_id: None,
                to: Recipient {
                    email,
                    name,
                    locale: Locale::or_en(&locale),
                    reviewer: None,
                },
                params: json!({
                    "dedupe": format!("spend:{}:{period}:{threshold}", member.id),
                    "org_id": org.id,
                    "member_name": member.name,
                    "member_login": member.login_id,
                    "period_kind": kind,
                    "period": period,
                    "threshold": threshold.to_string(),
                    "spent": currency.format(used),
                    "limit": currency.format(limit),
                }),
            },
        )
        .await?;
    }
    if threshold == 100 {
        tracing::info!(org_id = %org.id, member_id = %member.id, period, "spending limit reached");
        crate::webhooks::emit(
            app,
            tx,
            &org.id,
            "payment.limit_reached",
            json!({
                "member": member.id,
                "period_kind": kind,
                "period": period,
                "limit": limit,
                "used": used,
                "currency": currency.code(),
            }),
            app.now_ms(),
        )
        .await?;
    }
    Ok(())
}

/// A payment as capture, void and GET show it.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Payment)]
pub struct PaymentOut {
    pub id: String,
    pub member: String,
    pub status: String,
    pub reason: Option<String>,
    pub amount: i64,
    pub captured_amount: Option<i64>,
    pub currency: String,
    pub reference: String,
    pub capture: bool,
    pub periods: PeriodKeys,
    pub expires_at: Option<String>,
    pub settled_at: Option<String>,
    pub created_at: String,
    pub remaining: Remaining,
    pub resets_at: Resets,
}

/// Capture (`Some(amount)` or the whole hold) or void (`None` with
/// `void = true`) a hold, in one transaction.
pub async fn settle(
    app: &App,
    org: &Org,
    payment_id: &str,
    capture: Option<Option<i64>>,
) -> Result<PaymentOut, PayError> {
    let now_dt = app.clock.now();
    let now = now_dt.timestamp_millis();
    let mut tx = app.db.begin().await?;
    let Some(p) = st::payment_tx(&mut tx, &org.id, payment_id).await? else {
        tx.rollback().await?;
        return Err(PayError::NotFound("payment"));
    };
    let member = st::lock_member(&mut tx, &org.id, &p.member_id)
        .await?
        .ok_or(PayError::NotFound("payment"))?;
    expire_member_holds(&mut tx, &member.id, now).await?;
    let p = st::payment_tx(&mut tx, &org.id, payment_id)
        .await?
        .ok_or(PayError::NotFound("payment"))?;
    let verb = if capture.is_some() { "capture" } else { "void" };
    if p.status != "held" {
        let why = match p.status.as_str() {
            "approved" => {
                "it was approved with capture: true; there is no hold to settle".to_string()
            }
            "declined" => "it was declined; there is nothing to settle".to_string(),
            s => format!("the hold is already {s}"),
        };
        tx.rollback().await?;
        return Err(PayError::Conflict(format!(
            "cannot {verb} payment {}: {why}",
            p.id
        )));
    }
    let (status, delta, captured) = match capture {
        Some(amount) => {
            let amount = amount.unwrap_or(p.amount);
            if amount > p.amount {
                tx.rollback().await?;
                return Err(PayError::Invalid(format!(
                    "amount: {amount} is more than the {} held",
                    p.amount
                )));
            }
            (
                "captured",
                Delta {
                    used: amount,
                    held: -p.amount,
                    captured_count: 1,
                    captured_amount: amount,
                    ..Delta::default()
                },
                Some(amount),
            )
        }
        None => (
            "voided",
            Delta {
                held: -p.amount,
                voided_count: 1,
                voided_amount: p.amount,
                ..Delta::default()
            },
            None,
        ),
    };
    if !st::settle_hold(&mut tx, &p.id, status, captured, None, now).await? {
        tx.rollback().await?;
        return Err(PayError::Conflict(format!(
            "cannot {verb} payment {}: the hold is no longer open",
            p.id
        )));
    }
    adjust(&mut tx, &member.id, [&p.day, &p.month], delta, now).await?;
    let out = view_tx(app, &mut tx, org, &member, &p.id, now_dt).await?;
    tx.commit().await?;
    Ok(out)
}

async fn view_tx(
    app: &App,
    tx: &mut Tx,
    org: &Org,
    member: &LockedMember,
    payment_id: &str,
    now: DateTime<Utc>,
) -> Result<PaymentOut, PayError> {
    let p = st::payment_tx(tx, &org.id, payment_id)
        .await?
        .ok_or(PayError::NotFound("payment"))?;
    let cur = spending::periods(org_zone(app, org), now);
    let inputs = st::inputs(
        tx,
        &org.id,
        member.role.as_deref(),
        &member.id,
        &cur.day_key(),
        &cur.month_key(),
    )
    .await?;
    let (limits, _) = inputs.limits();
    let used = Usage {
        day: inputs.day_used.unwrap_or(0),
        month: inputs.month_used.unwrap_or(0),
    };
    Ok(payment_out(
        p,
        spending::remaining(member.status == members::ACTIVE, &limits, used),
        &cur,
    ))
}

fn payment_out(p: Payment, remaining: Remaining, cur: &Periods) -> PaymentOut {
    use crate::http::api::{opt_time, time};
    PaymentOut {
        periods: PeriodKeys {
            daily: p.day,
            monthly: p.month,
        },
        id: p.id,
        member: p.member_id,
        status: p.status,
        reason: p.reason,
        amount: p.amount,
        captured_amount: p.captured_amount,
        currency: p.currency,
        reference: p.reference,
        capture: p.capture,
        expires_at: opt_time(p.expires_at),
        settled_at: opt_time(p.settled_at),
        created_at: time(p.created_at),
        remaining,
        resets_at: resets(cur),
    }
}

/// `GET .../payments/{id}`: reads only.
pub async fn payment_view(app: &App, org: &Org, id: &str) -> Result<PaymentOut, PayError> {
    let p = st::payment(&app.db, &org.id, id)
        .await?
        .ok_or(PayError::NotFound("payment"))?;
    let s = spending(app, org, &p.member_id).await?;
    let cur = spending::periods(org_zone(app, org), app.clock.now());
    Ok(payment_out(p, s.remaining, &cur))
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = SpendLimits)]
pub struct LimitsOut {
    pub allowed: bool,
    pub per_tx: i64,
    pub daily: i64,
    pub monthly: i64,
    /// `role` or `member` (an approved `payment_permission` request, or
    /// cleanup turning payment off).
    #[schema(value_type = String, pattern = "^(role|member)$")]
    pub source: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = SpendPair)]
pub struct Pair {
    pub daily: i64,
    pub monthly: i64,
}

/// A member's limits, what the current day and month have used and held,
/// and what is left.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Spending)]
pub struct SpendingOut {
    pub member: String,
    pub active: bool,
    #[schema(value_type = String)]
    pub currency: &'static str,
    pub timezone: String,
    pub limits: LimitsOut,
    pub used: Pair,
    pub held: Pair,
    pub remaining: Remaining,
    pub periods: PeriodKeys,
    pub resets_at: Resets,
}

/// `GET .../members/{id}/spending`: reads only (holds expired but not yet
/// released by the `limits` job are left out of `held`).
pub async fn spending(app: &App, org: &Org, member_id: &str) -> Result<SpendingOut, PayError> {
    let m = members::get(&app.db, &org.id, member_id)
        .await?
        .ok_or(PayError::NotFound("member"))?;
    let now_dt = app.clock.now();
    let now = now_dt.timestamp_millis();
    let tz = org_zone(app, org);
    let p = spending::periods(tz, now_dt);
    let (day, month) = (p.day_key(), p.month_key());
    let inputs = st::inputs_db(&app.db, &org.id, m.role.as_deref(), &m.id, &day, &month).await?;
    let (limits, source) = inputs.limits();
    let dc = st::counter(&app.db, &m.id, &day).await?;
    let mc = st::counter(&app.db, &m.id, &month).await?;
    let (exp_d, exp_m) = st::expired_unreleased(&app.db, &m.id, &day, &month, now).await?;
    let held = Pair {
        daily: dc.held - exp_d,
        monthly: mc.held - exp_m,
    };
    let active = m.status == members::ACTIVE;
    let used = Usage {
        day: dc.used + held.daily,
        month: mc.used + held.monthly,
    };
    Ok(SpendingOut {
        member: m.id,
        active,
        currency: org_currency(app, org).code(),
        timezone: tz.name().to_string(),
        limits: LimitsOut {
            allowed: limits.allowed,
            per_tx: limits.per_tx,
            daily: limits.daily,
            monthly: limits.monthly,
            source: source.as_str(),
        },
        used: Pair {
            daily: dc.used,
            monthly: mc.used,
        },
        held,
        remaining: spending::remaining(active, &limits, used),
        periods: period_keys(&p),
        resets_at: resets(&p),
    })
}

/// Void every open hold of the member (the `cleanup` job of a disabled
/// member), in the caller's transaction; holds already past their expiry are
/// released as `expired`. Returns how many holds were voided.
pub async fn void_member_holds(
    tx: &mut Tx,
    org_id: &str,
    member_id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<u64, sqlx::Error> {
    if st::lock_member(tx, org_id, member_id).await?.is_none() {
        return Ok(0);
    }
    expire_member_holds(tx, member_id, now_ms).await?;
    let mut n = 0;
    loop {
        let settled =
            st::settle_member_holds(tx, member_id, "voided", Some(reason), false, now_ms).await?;
        n += settled.len() as u64;
        release(tx, member_id, &settled, now_ms).await?;
        if (settled.len() as i64) < BATCH {
            return Ok(n);
        }
    }
}

/// Turn the member's payment permission off, whatever their role says (the
/// `cleanup` job of a disabled member; enabling them again does not bring it
/// back), and revoke their `payment_permission` grant. In the caller's
/// transaction; true when something changed (false on a second run).
pub async fn revoke_member_payment(
    tx: &mut Tx,
    org_id: &str,
    member_id: &str,
    reason: &str,
    now_ms: i64,
) -> Result<bool, sqlx::Error> {
    if st::lock_member(tx, org_id, member_id).await?.is_none() {
        return Ok(false);
    }
    let grants = st::revoke_payment_grant(tx, org_id, member_id, now_ms).await?;
    let before = st::get_override(tx, member_id).await?;
    if before.as_ref().is_some_and(|o| o.active && !o.allowed) {
        return Ok(grants > 0);
    }
    st::put_override(
        tx,
        org_id,
        member_id,
        &st::Override {
            active: true,
            allowed: false,
            per_tx: None,
            daily: None,
            monthly: None,
            request_id: None,
            reason: Some(reason.to_string()),
        },
        now_ms,
    )
    .await?;
    Ok(true)
}

/// The member-level limits an approved `payment_permission` request sets
/// (each `None` takes the role's). Returns the override before and after,
/// for the audit row.
pub async fn set_member_limits(
    tx: &mut Tx,
    org_id: &str,
    member_id: &str,
    request_id: &str,
    limits: Option<&Limits>,
    now_ms: i64,
) -> Result<(Option<st::Override>, st::Override), sqlx::Error> {
    st::lock_member(tx, org_id, member_id).await?;
    let before = st::get_override(tx, member_id).await?;
    let after = st::Override {
        active: true,
        allowed: true,
        per_tx: limits.map(|l| l.per_tx),
        daily: limits.map(|l| l.daily),
        monthly: limits.map(|l| l.monthly),
        request_id: Some(request_id.to_string()),
        reason: None,
    };
    st::put_override(tx, org_id, member_id, &after, now_ms).await?;
    Ok((before, after))
}

/// A revoked `payment_permission` grant ends the member-level permission it
/// set: the role decides again. Returns the override before, if one was
/// active and allowing.
pub async fn end_member_permission(
    tx: &mut Tx,
    org_id: &str,
    member_id: &str,
    now_ms: i64,
) -> Result<Option<st::Override>, sqlx::Error> {
    st::lock_member(tx, org_id, member_id).await?;
    let before = st::get_override(tx, member_id).await?;
    match &before {
        Some(o) if o.active && o.allowed => {
            st::put_override(
                tx,
                org_id,
                member_id,
                &st::Override {
                    active: false,
                    ..o.clone()
                },
                now_ms,
            )
            .await?;
            Ok(before)
        }
        _ => Ok(None),
    }
}

/// The kind whose approval sets member-level payment limits.
pub const PAYMENT_PERMISSION: &str = "payment_permission";

/// After a request is approved (in the deciding transaction): a
/// `payment_permission` request sets the limits its `params` ask for on the
/// requester, overriding the role (limits it leaves out stay the role's).
/// Audited with the override before and after.
pub async fn on_approved(
    tx: &mut Tx,
    org_id: &str,
    kind: &str,
    requester_id: Option<&str>,
    request_id: &str,
    actor: &str,
    now_ms: i64,
) -> anyhow::Result<()> {
    let Some(member_id) = requester_id.filter(|_| kind == PAYMENT_PERMISSION) else {
        return Ok(());
    };
    let params: Option<String> = on_tx!(tx, |c| sqlx::query_scalar(
        "SELECT params FROM requests WHERE id = $1"
    )
    .bind(request_id)
    .fetch_optional(c)
    .await)?;
    let params: serde_json::Value = params
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_else(|| json!({}));
    let limits = params
        .as_object()
        .map(spending::limits_from_params)
        .transpose()
        .map_err(|e| anyhow::anyhow!("request {request_id} has unusable params: {e}"))?
        .flatten();
    let (before, after) =
        set_member_limits(tx, org_id, member_id, request_id, limits.as_ref(), now_ms).await?;
    crate::store::audit::operation(
        tx,
        crate::store::audit::Operation {
            org_id,
            actor,
            action: "payment.limits_set",
            target: Some(member_id),
            detail: json!({ "request_id": request_id, "before": before, "after": after }),
            at: now_ms,
        },
    )
    .await?;
    Ok(())
}
