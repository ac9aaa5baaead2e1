//! Invariant 4 under concurrency: for every member and period, approved
//! spend (approvals plus open holds) stays within the limit, and every
//! decline was justified at its moment (used + held + amount > limit).
//!
//! Each seed fires 1,000 authorizations at once. Seed 0 goes over HTTP; the
//! other seeds call `flows::payments::authorize`, the function the HTTP
//! handler calls (the transaction under test), so 20 seeds stay within
//! seconds. Seeds have members of their own (one member per seed, or an org
//! per seed), so [`PARALLEL`] of them run at once, each with its own 1,000
//! concurrent calls: every member still sees 1,000 racing decisions, and
//! the machine's cores are busy while one member's calls queue on its row. Every payment row stores the usage it was decided against
//! (`day_used`, `month_used`), which lets the test prove the decisions
//! form one serial order: sorted by that usage, each approval's usage is the
//! sum of the approvals before it, and every decline saw one of those sums.
use std::collections::BTreeMap;

use approvald::flows::payments::{Authorize, PayError, authorize};
use approvald_workers::ManualClock;
use futures::StreamExt;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

use crate::{
    harness::{Opts, TestApp},
    spend_util::*,
};

const CALLS: usize = 1000;
const SEEDS: u64 = 20;
/// Seeds run at once.
const PARALLEL: usize = 4;

#[derive(Debug, sqlx::FromRow)]
struct Row {
    member_id: String,
    reference: String,
    amount: i64,
    status: String,
    reason: Option<String>,
    day_used: i64,
    month_used: i64,
}

/// Run `f` again while the pool times out: other seeds' 1,000 calls may be
/// queued for every connection (their own calls retry the same way).
async fn patiently<T, F, Fut>(f: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    loop {
        match f().await {
            Err(sqlx::Error::PoolTimedOut) => continue,
            other => return other.unwrap(),
        }
    }
}

async fn rows(t: &TestApp, org: &str) -> Vec<Row> {
    patiently(|| async {
        approvald::on_db!(&t.app.db, |p| sqlx::query_as::<_, Row>(
            "SELECT member_id, reference, amount, status, reason, day_used, month_used FROM payments WHERE org_id = $1"
        )
        .bind(org)
        .fetch_all(p)
        .await)
    })
    .await
}

async fn member_rows(t: &TestApp, member: &str) -> Vec<Row> {
    patiently(|| async {
        approvald::on_db!(&t.app.db, |p| sqlx::query_as::<_, Row>(
            "SELECT member_id, reference, amount, status, reason, day_used, month_used FROM payments WHERE member_id = $1"
        )
        .bind(member)
        .fetch_all(p)
        .await)
    })
    .await
}

/// `GET .../spending`, again while the pool is busy (a 503).
async fn spending_patiently(t: &TestApp, org: &str, key: &str, member: &str) -> serde_json::Value {
    loop {
        let r = t
            .get(&format!("/v1/orgs/{org}/members/{member}/spending"), key)
            .await;
        if r.status.as_u16() != 503 {
            return r.expect(200).json();
        }
    }
}

/// Check one member's decisions against `limit` on the day (`monthly` =
/// false) or the month, given what the period had used before the test.
fn check(rows: &[&Row], limit: i64, monthly: bool, base: i64, what: &str) -> (usize, usize) {
    let used = |r: &Row| if monthly { r.month_used } else { r.day_used };
    let reason = if monthly { "monthly" } else { "daily" };
    let mut approved: Vec<&Row> = rows
        .iter()
        .copied()
        .filter(|r| r.status == "approved" || r.status == "held")
        .collect();
    approved.sort_by_key(|r| used(r));
    let mut sum = base;
    let mut states = vec![base];
    for r in &approved {
        assert_eq!(used(r), sum, "{what}: approvals are not one serial order");
        sum += r.amount;
        states.push(sum);
    }
    assert!(sum <= limit, "{what}: approved {sum} > limit {limit}");
    let declined: Vec<&Row> = rows
        .iter()
        .copied()
        .filter(|r| r.status == "declined")
        .collect();
    for d in &declined {
        assert_eq!(d.reason.as_deref(), Some(reason), "{what}: {d:?}");
        assert!(
            used(d) + d.amount > limit,
            "{what}: unjustified decline {d:?} (limit {limit})"
        );
        assert!(
            states.contains(&used(d)),
            "{what}: a decline saw usage {} that never existed",
            used(d)
        );
    }
    assert_eq!(approved.len() + declined.len(), rows.len());
    (approved.len(), declined.len())
}

async fn spawn() -> TestApp {
    TestApp::spawn_with(Opts {
        clock: Some(ManualClock::new(utc("2026-03-10T02:00:00Z"))),
        toml: "[orgs]\nmax_members = 100\n[database]\nmax_connections = 16".into(),
        ..Default::default()
    })
    .await
}

/// Fire `calls` (member, amount, capture) at once; seed 0 over HTTP.
async fn fire(t: &TestApp, org_id: &str, key: &str, seed: u64, calls: Vec<(String, i64, bool)>) {
    if seed == 0 {
        let futs = calls
            .into_iter()
            .enumerate()
            .map(|(i, (m, amount, capture))| {
                let (t, org_id, key) = (&t, org_id, key);
                async move {
                    // 1,000 calls queue for one member's row: one that waits
                    // longer than the pool's acquire timeout gets a 503 and is
                    // retried with the same reference, as a client would.
                    for _ in 0..50 {
                        let r = t
                            .post(
                                &format!("/v1/orgs/{org_id}/payments/authorize"),
                                key,
                                json!({"member": m, "amount": amount, "currency": "CNY",
                                   "reference": format!("s{seed}-{i}"), "capture": capture}),
                            )
                            .await;
                        if r.status.as_u16() != 503 {
                            return r.expect(200);
                        }
                    }
                    panic!("seed {seed}: call {i} got 503 fifty times")
                }
            });
        let n = futures::stream::iter(futs)
            .buffer_unordered(CALLS)
            .count()
            .await;
        assert_eq!(n, CALLS);
        return;
    }
    let org = patiently(|| approvald::store::orgs::get(&t.app.db, org_id))
        .await
        .unwrap();
    let mut handles = Vec::new();
    for (i, (m, amount, capture)) in calls.into_iter().enumerate() {
        let (app, org) = (t.app.clone(), org.clone());
        handles.push(tokio::spawn(async move {
            let req = Authorize {
                member: m,
                amount,
                reference: format!("s{seed}-{i}"),
                capture,
                body_hash: String::new(),
            };
            loop {
                match authorize(&app, &org, &req).await {
                    // An overload (no pooled connection in time, or
                    // SQLite's lock past its busy timeout: a 503 over
                    // HTTP, nothing written) is retried as a client would.
                    Err(PayError::Db(e)) if approvald::db::is_overloaded(&e) => continue,
                    other => return other,
                }
            }
        }));
    }
    for h in handles {
        h.await
            .unwrap()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_member_at_a_daily_limit_20_seeds() {
    let t = spawn().await;
    let (org, key, _) = org_in(&t, "Asia/Shanghai", None).await;
    const LIMIT: i64 = 50_000;
    let mut members = Vec::new();
    for _ in 0..SEEDS {
        let m = member(&t, &org, &key).await;
        set_limits(&t, &org, &m, LIMIT, LIMIT, 10 * LIMIT).await;
        members.push(m);
    }
    let one_seed = |seed: u64| {
        let (t, org, key, m) = (&t, &org, &key, members[seed as usize].clone());
        async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let calls = (0..CALLS)
                .map(|_| (m.clone(), rng.random_range(1..=250), rng.random_bool(0.7)))
                .collect();
            fire(t, org, key, seed, calls).await;
            let all = member_rows(t, &m).await;
            let mine: Vec<&Row> = all.iter().collect();
            assert_eq!(mine.len(), CALLS);
            let (a, d) = check(&mine, LIMIT, false, 0, &format!("seed {seed}"));
            assert!(
                d > 0,
                "seed {seed}: the limit was never reached, the test proves nothing"
            );
            let s = spending_patiently(t, org, key, &m).await;
            let total = s["used"]["daily"].as_i64().unwrap() + s["held"]["daily"].as_i64().unwrap();
            assert!(total <= LIMIT, "seed {seed}: counters say {total}");
            assert_eq!(
                total,
                mine.iter()
                    .filter(|r| r.status != "declined")
                    .map(|r| r.amount)
                    .sum::<i64>(),
                "seed {seed}: counters agree with the decisions"
            );
            (a, d)
        }
    };
    let results: Vec<(usize, usize)> = futures::stream::iter(0..SEEDS)
        .map(one_seed)
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    assert_eq!(results.len(), SEEDS as usize);
    let approved: usize = results.iter().map(|r| r.0).sum();
    let declined: usize = results.iter().map(|r| r.1).sum();
    eprintln!(
        "invariant 4, one member: {SEEDS} seeds x {CALLS} calls: {approved} approved, {declined} declined"
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_of_an_org_at_their_monthly_limits_20_seeds() {
    let t = spawn().await;
    const LIMIT: i64 = 10_000;
    const MEMBERS: usize = 20;
    // A fresh org per seed (its members' month starts at zero), each member
    // having spent part of the month on an earlier day (the 10th); the
    // seeds' calls then race on the 11th.
    t.set_time(utc("2026-03-10T02:00:00Z"));
    let setup = |seed: u64| {
        let t = &t;
        async move {
            let (org, key, _) = org_in(t, "Asia/Shanghai", None).await;
            let o = approvald::store::orgs::get(&t.app.db, &org)
                .await
                .unwrap()
                .unwrap();
            let mut rng = StdRng::seed_from_u64(1000 + seed);
            let mut base = BTreeMap::new();
            for i in 0..MEMBERS {
                let m = member(t, &org, &key).await;
                set_limits(t, &org, &m, LIMIT, LIMIT, LIMIT).await;
                let spent = rng.random_range(5_000..=8_000);
                let a = Authorize {
                    member: m.clone(),
                    amount: spent,
                    reference: format!("base-{i}"),
                    capture: true,
                    body_hash: String::new(),
                };
                authorize(&t.app, &o, &a).await.unwrap();
                base.insert(m, spent);
            }
            (seed, org, key, base, rng)
        }
    };
    let mut seeds: Vec<_> = futures::stream::iter(0..SEEDS)
        .map(setup)
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    seeds.sort_by_key(|s| s.0);
    t.set_time(utc("2026-03-11T02:00:00Z"));
    let one_seed =
        |(seed, org, key, base, mut rng): (u64, String, String, BTreeMap<String, i64>, StdRng)| {
            let t = &t;
            async move {
                let members: Vec<&String> = base.keys().collect();
                let calls = (0..CALLS)
                    .map(|_| {
                        let m = members[rng.random_range(0..MEMBERS)].clone();
                        (m, rng.random_range(1..=250), rng.random_bool(0.7))
                    })
                    .collect();
                fire(t, &org, &key, seed + 1, calls).await;
                let all = rows(t, &org).await;
                let (mut approved, mut declined, mut any_decline) = (0, 0, false);
                for (m, spent) in &base {
                    let mine: Vec<&Row> = all
                        .iter()
                        .filter(|r| &r.member_id == m && r.reference.starts_with('s'))
                        .collect();
                    let (a, d) = check(
                        &mine,
                        LIMIT,
                        true,
                        *spent,
                        &format!("seed {seed} member {m}"),
                    );
                    any_decline |= d > 0;
                    approved += a;
                    declined += d;
                }
                assert!(any_decline, "seed {seed}: no monthly limit was reached");
                (approved, declined)
            }
        };
    let results: Vec<(usize, usize)> = futures::stream::iter(seeds)
        .map(one_seed)
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    assert_eq!(results.len(), SEEDS as usize);
    let approved: usize = results.iter().map(|r| r.0).sum();
    let declined: usize = results.iter().map(|r| r.1).sum();
    eprintln!(
        "invariant 4, {MEMBERS} members at monthly limits: {SEEDS} seeds x {CALLS} calls: {approved} approved, {declined} declined"
    );
    t.finish().await;
}

/// The optimistic path (PostgreSQL: read without locks, one conditional
/// write) racing itself and the locking path on the same members: 3,000
/// calls at once over 50 members, each at a daily limit that about half of
/// its calls can reach. Most calls below 80 % of the limit write
/// optimistically; the first of each member (no counter yet), those that
/// lose a race, cross an alert threshold or are declined at the limit take
/// the lock; every member's decisions must still form one serial order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn optimistic_and_locking_writers_race_on_50_members() {
    let t = spawn().await;
    let (org, key, _) = org_in(&t, "Asia/Shanghai", None).await;
    const LIMIT: i64 = 4_000;
    const MEMBERS: usize = 50;
    let mut members = Vec::new();
    for _ in 0..MEMBERS {
        let m = member(&t, &org, &key).await;
        set_limits(&t, &org, &m, 250, LIMIT, 100 * LIMIT).await;
        members.push(m);
    }
    let mut rng = StdRng::seed_from_u64(77);
    let calls = (0..3 * CALLS)
        .map(|_| {
            let m = members[rng.random_range(0..MEMBERS)].clone();
            (m, rng.random_range(1..=250), rng.random_bool(0.7))
        })
        .collect();
    fire(&t, &org, &key, 1, calls).await;
    let all = rows(&t, &org).await;
    assert_eq!(all.len(), 3 * CALLS);
    let (mut approved, mut declined) = (0, 0);
    for m in &members {
        let mine: Vec<&Row> = all.iter().filter(|r| &r.member_id == m).collect();
        let (a, d) = check(&mine, LIMIT, false, 0, &format!("member {m}"));
        approved += a;
        declined += d;
        let s = spending_patiently(&t, &org, &key, m).await;
        let total = s["used"]["daily"].as_i64().unwrap() + s["held"]["daily"].as_i64().unwrap();
        assert_eq!(
            total,
            mine.iter()
                .filter(|r| r.status != "declined")
                .map(|r| r.amount)
                .sum::<i64>(),
            "member {m}: counters agree with the decisions"
        );
    }
    assert!(declined > 0, "no daily limit was reached");
    eprintln!(
        "invariant 4, {MEMBERS} members, optimistic and locking writers: {} calls: {approved} approved, {declined} declined",
        3 * CALLS
    );
    t.finish().await;
}
