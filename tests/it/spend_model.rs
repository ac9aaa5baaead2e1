//! The daemon against a small sequential reference model: random sequences
//! of authorize / capture / void / hold expiry / limit change / clock
//! advance across midnights, month ends (31st, February) and DST changes in
//! America/New_York. The model and the daemon must agree on every decision,
//! every remaining amount and every reset instant.
use std::collections::HashMap;

use approvald_workers::ManualClock;
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::America::New_York as NY;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

use crate::{
    harness::{Opts, TestApp},
    spend_util::*,
};

const HOLD_HOURS: i64 = 5;
const SEEDS: u64 = 8;
const OPS: usize = 60;

/// Local midnight of `d` in New York (every NY midnight exists once).
fn midnight(d: NaiveDate) -> DateTime<Utc> {
    NY.from_local_datetime(&d.and_hms_opt(0, 0, 0).unwrap())
        .single()
        .unwrap()
        .with_timezone(&Utc)
}

fn keys(now: DateTime<Utc>) -> (String, String, DateTime<Utc>, DateTime<Utc>) {
    let d = now.with_timezone(&NY).date_naive();
    let first = d.with_day(1).unwrap();
    let next_month = if first.month() == 12 {
        NaiveDate::from_ymd_opt(first.year() + 1, 1, 1).unwrap()
    } else {
        NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1).unwrap()
    };
    (
        d.format("%Y-%m-%d").to_string(),
        d.format("%Y-%m").to_string(),
        midnight(d.succ_opt().unwrap()),
        midnight(next_month),
    )
}

#[derive(Debug, Clone)]
struct Pay {
    id: String,
    amount: i64,
    day: String,
    month: String,
    expires: DateTime<Utc>,
    status: &'static str,
}

#[derive(Debug, Default)]
struct Model {
    limits: (i64, i64, i64),
    used: HashMap<String, i64>,
    held: HashMap<String, i64>,
    pays: Vec<Pay>,
}

impl Model {
    fn expire(&mut self, now: DateTime<Utc>) {
        for p in &mut self.pays {
            if p.status == "held" && p.expires <= now {
                p.status = "expired";
                *self.held.get_mut(&p.day).unwrap() -= p.amount;
                *self.held.get_mut(&p.month).unwrap() -= p.amount;
            }
        }
    }
    fn total(&self, k: &str) -> i64 {
        self.used.get(k).copied().unwrap_or(0) + self.held.get(k).copied().unwrap_or(0)
    }
    fn remaining(&self, now: DateTime<Utc>) -> Value {
        let (d, m, _, _) = keys(now);
        let (per_tx, daily, monthly) = self.limits;
        let rd = (daily - self.total(&d)).max(0);
        let rm = (monthly - self.total(&m)).max(0);
        json!({"per_tx": per_tx.min(rd).min(rm), "daily": rd, "monthly": rm})
    }
    /// (approved, reason)
    fn authorize(
        &mut self,
        amount: i64,
        capture: bool,
        now: DateTime<Utc>,
    ) -> (bool, Option<&'static str>) {
        self.expire(now);
        let (d, m, _, _) = keys(now);
        let (per_tx, daily, monthly) = self.limits;
        let reason = if amount > per_tx {
            Some("per_tx")
        } else if self.total(&d) + amount > daily {
            Some("daily")
        } else if self.total(&m) + amount > monthly {
            Some("monthly")
        } else {
            None
        };
        if reason.is_none() {
            let bucket = if capture {
                &mut self.used
            } else {
                &mut self.held
            };
            *bucket.entry(d.clone()).or_default() += amount;
            *bucket.entry(m.clone()).or_default() += amount;
        }
        (reason.is_none(), reason)
    }
    /// HTTP status of a capture (`Some(amount)` or all) or a void (`None`).
    fn settle(&mut self, idx: usize, capture: Option<Option<i64>>, now: DateTime<Utc>) -> u16 {
        self.expire(now);
        let p = self.pays[idx].clone();
        if p.status != "held" {
            return 409;
        }
        match capture {
            Some(a) => {
                let a = a.unwrap_or(p.amount);
                if a > p.amount {
                    return 422;
                }
                for k in [&p.day, &p.month] {
                    *self.held.get_mut(k).unwrap() -= p.amount;
                    *self.used.entry(k.clone()).or_default() += a;
                }
                self.pays[idx].status = "captured";
            }
            None => {
                for k in [&p.day, &p.month] {
                    *self.held.get_mut(k).unwrap() -= p.amount;
                }
                self.pays[idx].status = "voided";
            }
        }
        200
    }
}

fn random_limits(rng: &mut StdRng) -> (i64, i64, i64) {
    let per_tx = rng.random_range(50..=400);
    let daily = per_tx + rng.random_range(0..=800);
    let monthly = daily + rng.random_range(0..=3000);
    (per_tx, daily, monthly)
}

#[tokio::test]
async fn daemon_agrees_with_the_reference_model() {
    let starts = [
        "2026-01-30T22:00:00Z", // Jan 30, 17:00 NY: the 31st, then February
        "2026-02-26T12:00:00Z", // end of February
        "2026-03-07T12:00:00Z", // the spring-forward day (Mar 8)
        "2026-10-31T12:00:00Z", // Oct 31 and the fall-back day (Nov 1)
    ];
    let t = TestApp::spawn_with(Opts {
        clock: Some(ManualClock::new(utc(starts[0]))),
        toml: format!("[payments]\nhold_hours = {HOLD_HOURS}\n[orgs]\nmax_members = 50"),
        ..Default::default()
    })
    .await;
    let (org, key, _) = org_in(&t, "America/New_York", None).await;
    let mut decisions = 0;
    for seed in 0..SEEDS {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut now = utc(starts[seed as usize % starts.len()]);
        t.set_time(now);
        let m = member(&t, &org, &key).await;
        let mut model = Model {
            limits: random_limits(&mut rng),
            ..Model::default()
        };
        set_limits(&t, &org, &m, model.limits.0, model.limits.1, model.limits.2).await;
        for step in 0..OPS {
            let ctx = format!("seed {seed} step {step} at {now}");
            let roll = rng.random_range(0..100);
            if roll < 45 {
                let amount = rng.random_range(1..=model.limits.0 + model.limits.0 / 3 + 1);
                let capture = rng.random_bool(0.6);
                let (ok, reason) = model.authorize(amount, capture, now);
                let r = authorize(
                    &t,
                    &org,
                    &key,
                    &m,
                    amount,
                    &format!("m{seed}-{step}"),
                    capture,
                )
                .await
                .expect(200)
                .json();
                assert_eq!(r["approved"], ok, "{ctx}: {r}");
                assert_eq!(r["reason"], json!(reason), "{ctx}: {r}");
                assert_eq!(r["remaining"], model.remaining(now), "{ctx}: {r}");
                let (d, mo, day_end, month_end) = keys(now);
                assert_eq!(r["periods"], json!({"daily": d, "monthly": mo}), "{ctx}");
                assert_eq!(
                    utc(r["resets_at"]["daily"].as_str().unwrap()),
                    day_end,
                    "{ctx}"
                );
                assert_eq!(
                    utc(r["resets_at"]["monthly"].as_str().unwrap()),
                    month_end,
                    "{ctx}"
                );
                decisions += 1;
                if ok {
                    model.pays.push(Pay {
                        id: r["id"].as_str().unwrap().to_string(),
                        amount,
                        day: d,
                        month: mo,
                        expires: now + Duration::hours(HOLD_HOURS),
                        status: if capture { "approved" } else { "held" },
                    });
                }
            } else if roll < 65 && !model.pays.is_empty() {
                let idx = rng.random_range(0..model.pays.len());
                let id = model.pays[idx].id.clone();
                let (path, body, what) = if rng.random_bool(0.6) {
                    let amount = rng
                        .random_bool(0.5)
                        .then(|| rng.random_range(1..=model.pays[idx].amount + 20));
                    let body = amount.map_or(json!({}), |a| json!({"amount": a}));
                    (
                        format!("/v1/orgs/{org}/payments/{id}/capture"),
                        body,
                        Some(amount),
                    )
                } else {
                    (
                        format!("/v1/orgs/{org}/payments/{id}/void"),
                        json!({}),
                        None,
                    )
                };
                let want = model.settle(idx, what, now);
                let r = t.post(&path, &key, body).await;
                assert_eq!(r.status.as_u16(), want, "{ctx}: {path}: {}", r.text);
                if want == 200 {
                    assert_eq!(r.json()["remaining"], model.remaining(now), "{ctx}");
                }
                decisions += 1;
            } else if roll < 72 {
                model.limits = random_limits(&mut rng);
                set_limits(&t, &org, &m, model.limits.0, model.limits.1, model.limits.2).await;
            } else if roll < 77 {
                now += Duration::hours(HOLD_HOURS) + Duration::minutes(1);
            } else {
                let (_, _, day_end, _) = keys(now);
                now = match rng.random_range(0..4) {
                    0 => now + Duration::minutes(rng.random_range(1..=90)),
                    1 => now + Duration::hours(rng.random_range(1..=14)),
                    // Just before, at, or just after the next local midnight.
                    2 => day_end - Duration::seconds(1),
                    _ => day_end + Duration::seconds(rng.random_range(0..=2)),
                };
            }
            t.set_time(now);
        }
        model.expire(now);
        let s = spending(&t, &org, &key, &m).await;
        let (d, mo, _, _) = keys(now);
        let g = |map: &HashMap<String, i64>, k: &str| map.get(k).copied().unwrap_or(0);
        assert_eq!(
            s["used"],
            json!({"daily": g(&model.used, &d), "monthly": g(&model.used, &mo)}),
            "seed {seed}"
        );
        assert_eq!(
            s["held"],
            json!({"daily": g(&model.held, &d), "monthly": g(&model.held, &mo)}),
            "seed {seed}"
        );
        assert_eq!(s["remaining"], model.remaining(now), "seed {seed}");
    }
    eprintln!("reference model: {SEEDS} seeds x {OPS} steps, {decisions} decisions compared");
    t.finish().await;
}
