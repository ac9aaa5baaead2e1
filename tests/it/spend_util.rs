//! Helpers shared by the `spend_*` tests.
#![allow(dead_code)]

use approvald::domain::spending::Limits;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::harness::{Resp, TestApp};

pub fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A new org in `zone` (and currency, if given); returns (org id, org key, owner id).
pub async fn org_in(t: &TestApp, zone: &str, currency: Option<&str>) -> (String, String, String) {
    let login = crate::api_util::login("own");
    let mut body = json!({"name": format!("Org {login}"), "region": "cn", "locale": "en", "timezone": zone,
                          "owner": {"login_id": login, "name": format!("Owner {login}"), "email": format!("{login}@example.com")}});
    if let Some(c) = currency {
        body["currency"] = json!(c);
    }
    let org = t
        .post("/v1/orgs", &t.platform_key, body)
        .await
        .expect(201)
        .json();
    let org_id = org["id"].as_str().unwrap().to_string();
    let owner = org["owner"]["id"].as_str().unwrap().to_string();
    let key = t
        .post(
            &format!("/v1/orgs/{org_id}/keys"),
            &t.platform_key,
            json!({}),
        )
        .await
        .expect(201)
        .json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    (org_id, key, owner)
}

/// A plain member of the org; returns its id.
pub async fn member(t: &TestApp, org: &str, key: &str) -> String {
    crate::api_util::add_member(t, org, key, "member").await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Set member-level limits through the same flow an approved
/// `payment_permission` request uses.
pub async fn set_limits(
    t: &TestApp,
    org: &str,
    member: &str,
    per_tx: i64,
    daily: i64,
    monthly: i64,
) {
    let mut tx = t.app.db.begin().await.unwrap();
    approvald::flows::payments::set_member_limits(
        &mut tx,
        org,
        member,
        "test",
        Some(&Limits {
            allowed: true,
            per_tx,
            daily,
            monthly,
        }),
        t.app.now_ms(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

pub async fn authorize(
    t: &TestApp,
    org: &str,
    key: &str,
    member: &str,
    amount: i64,
    reference: &str,
    capture: bool,
) -> Resp {
    t.post(
        &format!("/v1/orgs/{org}/payments/authorize"),
        key,
        json!({"member": member, "amount": amount, "currency": "CNY", "reference": reference, "capture": capture}),
    )
    .await
}

pub async fn spending(t: &TestApp, org: &str, key: &str, member: &str) -> Value {
    t.get(&format!("/v1/orgs/{org}/members/{member}/spending"), key)
        .await
        .expect(200)
        .json()
}

/// Tables a rejected spending call must leave alone.
pub const SPEND_TABLES: &[&str] = &[
    "payments",
    "spend_counters",
    "spend_alerts",
    "emails",
    "audit_log",
    "member_payment",
];

pub async fn spend_counts(t: &TestApp) -> Vec<(&'static str, i64)> {
    let mut v = Vec::new();
    for table in SPEND_TABLES {
        v.push((*table, t.count(table).await));
    }
    v
}

/// One scalar (i64) query with string arguments.
pub async fn scalar(t: &TestApp, sql: &str, args: &[&str]) -> i64 {
    let sql = sql.to_string();
    approvald::on_db!(&t.app.db, |p| {
        let mut q = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.clone()));
        for a in args {
            q = q.bind(*a);
        }
        q.fetch_one(p).await
    })
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}
