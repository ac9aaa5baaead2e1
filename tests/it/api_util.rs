//! Helpers shared by the `api_*` tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{
    harness::{Profile, Resp, TestApp},
    webhook_receiver::Receiver,
};

/// Every table a rejected API call must leave alone.
pub fn guarded_tables(t: &TestApp) -> Vec<&'static str> {
    let mut v = vec![
        "orgs",
        "members",
        "requests",
        "request_events",
        "idempotency_keys",
        "outbox",
        "audit_log",
        "audit_heads",
        "api_keys",
        "reviewers",
        "reviewer_groups",
        "grants",
        "review_tokens",
        "roles",
    ];
    if t.profile == Profile::Embedded {
        v.push("wq_jobs");
    }
    v
}

/// Row counts of [`guarded_tables`].
pub async fn counts(t: &TestApp) -> Vec<(&'static str, i64)> {
    let mut out = Vec::new();
    for table in guarded_tables(t) {
        out.push((table, t.count(table).await));
    }
    out
}

/// A unique, valid login id.
pub fn login(prefix: &str) -> String {
    let s = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &s[..10])
}

/// A new member of `kind`, created by the org's owner (`Approvald-Actor`).
pub async fn add_member(t: &TestApp, org: &str, key: &str, kind: &str) -> Value {
    add_member_with(t, org, key, json!({"kind": kind})).await
}

/// A new member with the fields of `extra` (e.g. `{"role": "finance"}`),
/// created by the org's owner.
pub async fn add_member_with(t: &TestApp, org: &str, key: &str, extra: Value) -> Value {
    let l = login("m");
    let mut body =
        json!({"login_id": l, "name": format!("Member {l}"), "email": format!("{l}@example.com")});
    for (k, v) in extra.as_object().expect("an object") {
        body[k] = v.clone();
    }
    let owner = t.owner_of(org).await;
    t.post_as(&format!("/v1/orgs/{org}/members"), key, &owner, body)
        .await
        .expect(201)
        .json()
}

pub async fn submit(t: &TestApp, org: &str, key: &str, body: Value) -> Resp {
    t.post(&format!("/v1/orgs/{org}/requests"), key, body).await
}

/// Poll the request until it has `status` (the review job runs in the
/// daemon's own workers); panics after 30 s with the last state seen.
pub async fn wait_status(t: &TestApp, org: &str, key: &str, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = t
            .get(&format!("/v1/orgs/{org}/requests/{id}"), key)
            .await
            .expect(200)
            .json();
        if r["status"] == status {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "request {id} never reached {status}: {r:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Run one SQL scalar query (test checks).
pub async fn scalar_i64(t: &TestApp, sql: &str, arg: &str) -> i64 {
    let sql = sql.to_string();
    approvald::on_db!(&t.app.db, |p| sqlx::query_scalar::<_, i64>(
        sqlx::AssertSqlSafe(sql.clone())
    )
    .bind(arg)
    .fetch_one(p)
    .await)
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Poll `sql` (one `$1` argument, a count) until it is at least `n`;
/// panics after 30 s naming `what`.
pub async fn wait_count(t: &TestApp, sql: &str, arg: &str, n: i64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = scalar_i64(t, sql, arg).await;
        if got >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {got} after 30 s, wanted {n}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Config that lets webhooks reach a [`Receiver`] on loopback over http.
pub const HOOKS_ON_LOOPBACK: &str = "[webhooks]\nallow_http = true\nallow_private = true\n";

/// A receiver and a platform-wide webhook endpoint on it that takes every
/// event, so that events are written: an event no endpoint wants is not (it
/// would never be read). The app must run with [`HOOKS_ON_LOOPBACK`]. Keep
/// the receiver alive for the test: it answers 200, so every delivery
/// succeeds at its first attempt and leaves no retry job behind.
pub async fn subscribe_to_everything(t: &TestApp) -> Subscription {
    let receiver = Receiver::start().await;
    let id = t
        .post(
            "/v1/webhooks",
            &t.platform_key,
            json!({"url": receiver.url(), "events": ["*"]}),
        )
        .await
        .expect(201)
        .json()["id"]
        .as_str()
        .expect("endpoint id")
        .to_string();
    Subscription { receiver, id }
}

/// What [`subscribe_to_everything`] made.
pub struct Subscription {
    pub receiver: Receiver,
    /// The endpoint's id (`DELETE /v1/webhooks/{id}` ends it).
    pub id: String,
}
