//! Webhooks (issue 14): endpoints, signed deliveries to a real receiver on
//! loopback, retries, disabling, the address check, secret rotation.
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::{
    api_util::add_member,
    harness::{Opts, TestApp},
    webhook_receiver::{Receiver, expected_signature, signed_by},
};
use approvald_workers::ManualClock;

/// Loopback receivers over plain http; a short retry schedule.
const LOOPBACK: &str = r#"
[webhooks]
allow_http = true
allow_private = true
retry_schedule_secs = [1, 1, 1]
timeout_secs = 5
"#;

async fn spawn(toml: &str) -> TestApp {
    TestApp::spawn_with(Opts {
        toml: toml.to_string(),
        ..Default::default()
    })
    .await
}

/// Create an org endpoint; returns (id, secret).
async fn endpoint(t: &TestApp, org: &str, key: &str, url: &str, events: Value) -> (String, String) {
    let r = t
        .post(
            &format!("/v1/orgs/{org}/webhooks"),
            key,
            json!({"url": url, "events": events, "description": "test receiver"}),
        )
        .await
        .expect(201)
        .json();
    let secret = r["secret"]
        .as_str()
        .expect("secret shown on create")
        .to_string();
    assert!(secret.starts_with("whsec_"), "{r}");
    (r["id"].as_str().unwrap().to_string(), secret)
}

async fn submit(t: &TestApp, org: &str, key: &str, kind: &str) -> String {
    t.post(
        &format!("/v1/orgs/{org}/requests"),
        key,
        json!({"kind": kind, "remark": "webhook test"}),
    )
    .await
    .expect(202)
    .json()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn wait_hits(
    t: &TestApp,
    rx: &Receiver,
    what: &str,
    cond: impl Fn(&[crate::webhook_receiver::Hit]) -> bool,
) {
    t.eventually(what, || async { cond(&rx.hits()) }).await;
}

async fn scalar(t: &TestApp, sql: &str, arg: &str) -> i64 {
    approvald::on_db!(&t.app.db, |p| sqlx::query_scalar::<_, i64>(
        sqlx::AssertSqlSafe(sql.to_string())
    )
    .bind(arg)
    .fetch_one(p)
    .await)
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[test]
fn the_published_standard_webhooks_vector() {
    // From the Standard Webhooks specification.
    let (secret, id, ts, body) = (
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        r#"{"test": 2432232314}"#,
    );
    let want = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert_eq!(
        expected_signature(secret, id, ts, body),
        want,
        "the test's own HMAC"
    );
    assert_eq!(
        approvald::webhooks::secret::sign(secret, id, ts, body.as_bytes()).unwrap(),
        want,
        "approvald's signer"
    );
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[tokio::test]
async fn every_lifecycle_event_is_delivered_signed() {
    let clock = ManualClock::new(utc("2026-03-02T01:00:00Z"));
    let t = TestApp::spawn_with(Opts {
        toml: LOOPBACK.to_string(),
        clock: Some(clock),
        ..Default::default()
    })
    .await;
    let rx = Receiver::start().await;
    t.create_reviewer("lead@platform.example", "marketplace", true)
        .await;
    let (org, key, owner) = t.create_org("Hooked", "cn").await;
    // Before any endpoint exists, an event is not written (nobody could
    // ever read it: events are only read through their deliveries).
    let unheard = submit(&t, &org, &key, "bulk_data_management").await;
    t.drain().await;
    t.post(
        &format!("/v1/orgs/{org}/requests/{unheard}/cancel"),
        &key,
        json!({}),
    )
    .await
    .expect(200);
    t.drain().await;
    assert_eq!(t.count("webhook_events").await, 0, "no endpoint, no event");
    assert_eq!(t.count("webhook_deliveries").await, 0);
    let (ep, secret) = endpoint(&t, &org, &key, &rx.url(), json!(["*"])).await;

    // approved by policy, rejected (licence missing), cancelled, breached.
    let approved = submit(&t, &org, &key, "postal_carrier").await;
    let rejected = submit(&t, &org, &key, "alcohol_sales").await;
    let cancelled = submit(&t, &org, &key, "ftp_access").await;
    let breached = submit(&t, &org, &key, "seller_designated_carrier").await;
    t.drain().await;
    t.post(
        &format!("/v1/orgs/{org}/requests/{cancelled}/cancel"),
        &key,
        json!({}),
    )
    .await
    .expect(200);
    // Let every delivery finish first: jumping the clock past running jobs'
    // leases would hand them to a second worker (a duplicate send).
    t.drain().await;
    t.advance(chrono::Duration::days(2));
    t.eventually("breach marked", || async {
        scalar(
            &t,
            "SELECT COUNT(*) FROM requests WHERE id = $1 AND breached_at IS NOT NULL",
            &breached,
        )
        .await
            == 1
    })
    .await;
    t.post(
        &format!("/v1/orgs/{org}/grants/postal_carrier/revoke"),
        &key,
        json!({}),
    )
    .await
    .expect(200);
    let m = add_member(&t, &org, &key, "member").await;
    let member = m["id"].as_str().unwrap();
    t.post_as(
        &format!("/v1/orgs/{org}/members/{member}/disable"),
        &key,
        &owner,
        json!({}),
    )
    .await
    .expect(202);

    let want: Vec<(&str, &str)> = vec![
        ("request.submitted", approved.as_str()),
        ("request.approved", approved.as_str()),
        ("request.submitted", rejected.as_str()),
        ("request.rejected", rejected.as_str()),
        ("request.submitted", cancelled.as_str()),
        ("request.in_review", cancelled.as_str()),
        ("request.cancelled", cancelled.as_str()),
        ("request.in_review", breached.as_str()),
        ("request.sla_breached", breached.as_str()),
        ("member.disabled", member),
    ];
    // submitted x4, approved, rejected, in_review x2, cancelled, sla_breached,
    // grant.revoked, member.disabled, and the disable's cleanup completing
    // (the member had nothing to cancel or revoke).
    let n_expected = 13;
    wait_hits(&t, &rx, "all events delivered", |h| h.len() >= n_expected).await;
    t.drain().await;
    let hits = rx.hits();
    assert_eq!(
        hits.len(),
        n_expected,
        "{:#?}",
        hits.iter()
            .map(|h| h.json()["type"].clone())
            .collect::<Vec<_>>()
    );
    for h in &hits {
        assert!(signed_by(h, &secret), "bad signature on {}", h.body);
        let b = h.json();
        assert_eq!(
            b["id"].as_str(),
            Some(h.id.as_str()),
            "webhook-id is the event id"
        );
        assert_eq!(b["org_id"].as_str(), Some(org.as_str()));
        assert!(
            b["timestamp"].as_str().is_some_and(|s| s.ends_with('Z')),
            "{b}"
        );
        assert!(
            (Utc::now().timestamp() - h.timestamp).abs() < 60,
            "webhook-timestamp is now"
        );
    }
    let mut ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), hits.len(), "one event, one id");
    let find = |ty: &str, id: &str| {
        hits.iter()
            .map(|h| h.json())
            .find(|b| b["type"] == ty && b["data"]["id"] == id)
            .unwrap_or_else(|| panic!("no {ty} for {id}"))
    };
    assert!(
        hits.iter()
            .map(|h| h.json())
            .any(|b| b["type"] == "member.cleanup_completed" && b["data"]["member_id"] == member),
        "no member.cleanup_completed for {member}"
    );
    for (ty, id) in &want {
        let b = find(ty, id);
        if let Some(status) = ty
            .strip_prefix("request.")
            .filter(|s| *s != "sla_breached" && *s != "submitted")
        {
            assert_eq!(b["data"]["status"], status, "{b}");
        }
    }
    // The payload is the resource as the API returns it.
    let api = t
        .get(&format!("/v1/orgs/{org}/requests/{approved}"), &key)
        .await
        .expect(200)
        .json();
    let b = find("request.approved", &approved);
    assert_eq!(b["data"]["number"], api["number"]);
    assert_eq!(b["data"]["decided_at"], api["decided_at"]);
    assert!(b["data"]["events"].is_array(), "{b}");
    let sub = find("request.submitted", &approved);
    assert_eq!(sub["data"]["status"], "submitted");
    let revoked = hits
        .iter()
        .map(|h| h.json())
        .find(|b| b["type"] == "grant.revoked")
        .expect("grant.revoked delivered");
    assert_eq!(revoked["data"]["kind"], "postal_carrier");
    assert_eq!(revoked["data"]["status"], "revoked");
    let dis = find("member.disabled", member);
    assert_eq!(dis["data"]["status"], "disabled");

    // The delivery log shows each one delivered at the first attempt.
    let log = t
        .get(
            &format!("/v1/orgs/{org}/webhooks/{ep}/deliveries?limit=100"),
            &key,
        )
        .await
        .expect(200)
        .json();
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.len(), n_expected, "{log}");
    assert!(
        items
            .iter()
            .all(|d| d["status"] == "delivered" && d["attempts"] == 1),
        "{log}"
    );
    let one = items[0]["id"].as_str().unwrap();
    let d = t
        .get(
            &format!("/v1/orgs/{org}/webhooks/{ep}/deliveries/{one}"),
            &key,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(d["attempt_log"][0]["outcome"], "delivered", "{d}");
    assert_eq!(d["attempt_log"][0]["response_status"], 200, "{d}");
    assert_eq!(d["event"]["id"], d["event_id"], "{d}");
    t.finish().await;
}

#[tokio::test]
async fn a_500_three_times_then_200_is_delivered_once() {
    let t = spawn(LOOPBACK).await;
    let rx = Receiver::start().await;
    rx.script(&[500, 500, 500]);
    let (org, key, _) = t.create_org("Flaky", "cn").await;
    let (ep, secret) = endpoint(&t, &org, &key, &rx.url(), json!(["request.submitted"])).await;
    let id = submit(&t, &org, &key, "ftp_access").await;
    wait_hits(&t, &rx, "four attempts", |h| h.len() >= 4).await;
    t.drain().await;
    let hits = rx.hits();
    assert_eq!(
        hits.iter().map(|h| h.status).collect::<Vec<_>>(),
        [500, 500, 500, 200]
    );
    assert!(
        hits.iter()
            .all(|h| h.id == hits[0].id && signed_by(h, &secret))
    );
    assert_eq!(hits[0].json()["data"]["id"], id.as_str());
    let log = t
        .get(&format!("/v1/orgs/{org}/webhooks/{ep}/deliveries"), &key)
        .await
        .expect(200)
        .json();
    let d = &log["items"][0];
    assert_eq!(d["status"], "delivered", "{log}");
    assert_eq!(d["attempts"], 4, "{log}");
    let did = d["id"].as_str().unwrap();
    let d = t
        .get(
            &format!("/v1/orgs/{org}/webhooks/{ep}/deliveries/{did}"),
            &key,
        )
        .await
        .expect(200)
        .json();
    let outcomes: Vec<&str> = d["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["http_error", "http_error", "http_error", "delivered"],
        "{d}"
    );

    // Redeliver: the same event again, once more, same webhook-id.
    t.post(
        &format!("/v1/orgs/{org}/webhooks/{ep}/deliveries/{did}/redeliver"),
        &key,
        json!({}),
    )
    .await
    .expect(202);
    wait_hits(&t, &rx, "redelivered", |h| h.len() >= 5).await;
    t.drain().await;
    let hits = rx.hits();
    assert_eq!(hits.len(), 5);
    assert_eq!(hits[4].id, hits[0].id);
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("approvald_webhook_deliveries_total{outcome=\"http_error\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("approvald_webhook_delivery_seconds"),
        "latency histogram"
    );
    t.finish().await;
}

#[tokio::test]
async fn receiver_down_while_100_events_happen_then_all_delivered_once() {
    let t = spawn(
        r#"
[webhooks]
allow_http = true
allow_private = true
retry_schedule_secs = [2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
timeout_secs = 5
"#,
    )
    .await;
    let mut rx = Receiver::start().await;
    let (org, key, _) = t.create_org("Outage", "cn").await;
    endpoint(&t, &org, &key, &rx.url(), json!(["request.submitted"])).await;
    rx.down();
    let mut requests = Vec::new();
    for _ in 0..100 {
        requests.push(submit(&t, &org, &key, "ftp_access").await);
    }
    t.eventually("every delivery tried while down", || async {
        scalar(
            &t,
            "SELECT COUNT(DISTINCT delivery_id) FROM webhook_attempts WHERE outcome = $1",
            "refused",
        )
        .await
            == 100
    })
    .await;
    assert!(rx.hits().is_empty());
    tokio::time::sleep(Duration::from_secs(1)).await;
    rx.up().await;
    t.eventually("100 delivered", || async {
        scalar(
            &t,
            "SELECT COUNT(*) FROM webhook_deliveries WHERE status = $1",
            "delivered",
        )
        .await
            == 100
    })
    .await;
    t.drain().await;
    let hits = rx.hits();
    let mut ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 100, "every event arrived");
    assert_eq!(hits.len(), 100, "each exactly once");
    let mut got: Vec<String> = hits
        .iter()
        .map(|h| h.json()["data"]["id"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    requests.sort();
    assert_eq!(got, requests);
    t.finish().await;
}

#[tokio::test]
async fn gone_disables_at_once_and_failing_after_the_schedule() {
    let t = spawn(
        r#"
[webhooks]
allow_http = true
allow_private = true
retry_schedule_secs = [1]
disable_after_days = 0
"#,
    )
    .await;
    let gone = Receiver::start().await;
    gone.set_default(410);
    let failing = Receiver::start().await;
    failing.set_default(503);
    let (org, key, _) = t.create_org("Gone", "cn").await;
    let (ep_gone, _) = endpoint(&t, &org, &key, &gone.url(), json!(["request.submitted"])).await;
    let (ep_fail, _) = endpoint(&t, &org, &key, &failing.url(), json!(["request.submitted"])).await;
    submit(&t, &org, &key, "ftp_access").await;
    wait_hits(&t, &failing, "two attempts", |h| h.len() >= 2).await;
    t.drain().await;
    assert_eq!(gone.hits().len(), 1, "410: no retry");
    assert_eq!(
        failing.hits().len(),
        2,
        "the schedule: first try and one retry"
    );
    for (ep, reason) in [(&ep_gone, "gone"), (&ep_fail, "failing")] {
        let e = t
            .get(&format!("/v1/orgs/{org}/webhooks/{ep}"), &key)
            .await
            .expect(200)
            .json();
        assert_eq!(e["enabled"], false, "{e}");
        assert_eq!(e["disabled_reason"], reason, "{e}");
    }
    assert_eq!(
        scalar(
            &t,
            "SELECT COUNT(*) FROM webhook_deliveries WHERE status = $1",
            "failed"
        )
        .await,
        2
    );
    assert_eq!(
        scalar(
            &t,
            "SELECT COUNT(*) FROM audit_log WHERE action = $1",
            "webhook.disable"
        )
        .await,
        2
    );
    // The owner (the org's only admin) is mailed once per disabled endpoint.
    t.eventually("mails sent", || async {
        scalar(
            &t,
            "SELECT COUNT(*) FROM emails WHERE template = $1 AND status = 'sent'",
            "webhook_disabled",
        )
        .await
            == 2
    })
    .await;
    let mails = crate::review_util::outbox(&t);
    assert!(
        mails
            .values()
            .any(|m| m.text.contains(&gone.url()) && m.text.contains("410 Gone")),
        "{mails:?}"
    );

    // Disabled endpoints get nothing more; redelivery waits for enabling.
    submit(&t, &org, &key, "ftp_access").await;
    t.drain().await;
    assert_eq!(gone.hits().len() + failing.hits().len(), 3);
    let log = t
        .get(
            &format!("/v1/orgs/{org}/webhooks/{ep_fail}/deliveries"),
            &key,
        )
        .await
        .expect(200)
        .json();
    let did = log["items"][0]["id"].as_str().unwrap().to_string();
    let r = t
        .post(
            &format!("/v1/orgs/{org}/webhooks/{ep_fail}/deliveries/{did}/redeliver"),
            &key,
            json!({}),
        )
        .await
        .expect(409);
    r.assert_problem();
    failing.set_default(200);
    t.call(
        reqwest::Method::PATCH,
        &format!("/v1/orgs/{org}/webhooks/{ep_fail}"),
        Some(&key),
        Some(&json!({"enabled": true})),
    )
    .await
    .expect(200);
    t.post(
        &format!("/v1/orgs/{org}/webhooks/{ep_fail}/deliveries/{did}/redeliver"),
        &key,
        json!({}),
    )
    .await
    .expect(202);
    wait_hits(&t, &failing, "redelivered after enabling", |h| {
        h.iter().any(|x| x.status == 200)
    })
    .await;
    t.finish().await;
}

#[tokio::test]
async fn private_targets_are_refused_without_the_flag() {
    let t = spawn("[webhooks]\nallow_http = true\nretry_schedule_secs = [1]\n").await;
    let rx = Receiver::start().await;
    let (org, key, _) = t.create_org("Private", "cn").await;
    for url in [
        rx.url(),
        format!("http://localhost:{}/hook", rx.addr.port()),
        "http://169.254.169.254/latest/meta-data".to_string(),
        "http://10.0.0.7/hook".to_string(),
        "http://[::1]/hook".to_string(),
        "ftp://example.com/hook".to_string(),
    ] {
        let r = t
            .post(
                &format!("/v1/orgs/{org}/webhooks"),
                &key,
                json!({"url": url}),
            )
            .await
            .expect(422);
        r.assert_problem();
        assert!(
            r.json()["detail"].as_str().unwrap().contains("url"),
            "{}",
            r.text
        );
    }
    assert_eq!(t.count("webhook_endpoints").await, 0, "nothing written");

    // An endpoint saved while its name resolved elsewhere, now pointing at
    // loopback (DNS rebinding): refused at delivery time, nothing sent.
    let (ep, _) = {
        let r = t
            .post(
                &format!("/v1/orgs/{org}/webhooks"),
                &key,
                json!({"url": "http://hooks.example.com/hook"}),
            )
            .await
            .expect(201)
            .json();
        (r["id"].as_str().unwrap().to_string(), ())
    };
    approvald::on_db!(&t.app.db, |p| sqlx::query(
        "UPDATE webhook_endpoints SET url = $1 WHERE id = $2"
    )
    .bind(rx.url())
    .bind(&ep)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    submit(&t, &org, &key, "ftp_access").await;
    t.drain().await;
    assert!(
        rx.hits().is_empty(),
        "nothing reached the loopback receiver"
    );
    assert!(
        scalar(
            &t,
            "SELECT COUNT(*) FROM webhook_attempts WHERE outcome = $1",
            "blocked"
        )
        .await
            >= 1
    );
    t.finish().await;
}

#[tokio::test]
async fn rotation_signs_with_both_secrets_during_the_overlap() {
    let t = spawn(&format!(
        "{LOOPBACK}secret_key = \"{}\"\n",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    ))
    .await;
    let rx = Receiver::start().await;
    let (org, key, _) = t.create_org("Rotate", "cn").await;
    let (ep, old) = endpoint(&t, &org, &key, &rx.url(), json!(["request.submitted"])).await;
    let stored: String = approvald::on_db!(&t.app.db, |p| sqlx::query_scalar(
        "SELECT secret FROM webhook_endpoints WHERE id = $1"
    )
    .bind(&ep)
    .fetch_one(p)
    .await)
    .unwrap();
    assert!(
        stored.starts_with("v1:") && !stored.contains(&old[6..]),
        "sealed at rest"
    );

    let r = t
        .post(
            &format!("/v1/orgs/{org}/webhooks/{ep}/rotate-secret"),
            &key,
            json!({}),
        )
        .await
        .expect(200)
        .json();
    let new = r["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert!(r["previous_secret_expires_at"].is_string(), "{r}");
    assert!(
        t.get(&format!("/v1/orgs/{org}/webhooks/{ep}"), &key)
            .await
            .expect(200)
            .json()
            .get("secret")
            .is_none(),
        "the secret is shown once"
    );
    submit(&t, &org, &key, "ftp_access").await;
    wait_hits(&t, &rx, "delivered", |h| !h.is_empty()).await;
    let h = rx.hits()[0].clone();
    assert_eq!(h.signature.split(' ').count(), 2, "{}", h.signature);
    assert!(signed_by(&h, &new) && signed_by(&h, &old));

    // A rotation without overlap: only the newest secret signs.
    let r = t
        .post(
            &format!("/v1/orgs/{org}/webhooks/{ep}/rotate-secret?overlap_hours=0"),
            &key,
            json!({}),
        )
        .await
        .expect(200)
        .json();
    let newest = r["secret"].as_str().unwrap().to_string();
    submit(&t, &org, &key, "ftp_access").await;
    wait_hits(&t, &rx, "delivered", |h| h.len() >= 2).await;
    let h = rx.hits()[1].clone();
    assert_eq!(h.signature.split(' ').count(), 1, "{}", h.signature);
    assert!(signed_by(&h, &newest) && !signed_by(&h, &new));
    t.finish().await;
}

#[tokio::test]
async fn platform_endpoints_get_every_org_and_org_keys_stay_in_their_org() {
    let t = spawn(LOOPBACK).await;
    let rx = Receiver::start().await;
    let (a, key_a, _) = t.create_org("A", "cn").await;
    let (b, key_b, _) = t.create_org("B", "cn").await;
    // Platform-wide: platform key only.
    t.post("/v1/webhooks", &key_a, json!({"url": rx.url()}))
        .await
        .expect(403)
        .assert_problem();
    let p = t
        .post(
            "/v1/webhooks",
            &t.platform_key,
            json!({"url": rx.url(), "events": ["request.submitted"]}),
        )
        .await
        .expect(201)
        .json();
    assert!(p["org_id"].is_null(), "{p}");
    let pid = p["id"].as_str().unwrap();
    let (ea, _) = endpoint(&t, &a, &key_a, &rx.url(), json!(["grant.revoked"])).await;
    // B's key sees nothing of A's endpoints.
    t.get(&format!("/v1/orgs/{a}/webhooks/{ea}"), &key_b)
        .await
        .expect(404);
    t.get(&format!("/v1/orgs/{b}/webhooks/{ea}"), &key_b)
        .await
        .expect(404);
    assert_eq!(
        t.get(&format!("/v1/orgs/{b}/webhooks"), &key_b)
            .await
            .expect(200)
            .json()["items"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let ra = submit(&t, &a, &key_a, "ftp_access").await;
    let rb = submit(&t, &b, &key_b, "ftp_access").await;
    wait_hits(&t, &rx, "both orgs' events", |h| h.len() >= 2).await;
    t.drain().await;
    let mut got: Vec<String> = rx
        .hits()
        .iter()
        .map(|h| h.json()["data"]["id"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut want = vec![ra, rb];
    want.sort();
    assert_eq!(got, want);

    // PATCH, bad input, DELETE; every change audited.
    let e = t
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/orgs/{a}/webhooks/{ea}"),
            Some(&key_a),
            Some(&json!({"description": "orders", "events": ["request.approved", "request.rejected"]})),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(e["events"], json!(["request.approved", "request.rejected"]));
    for bad in [
        json!({"events": []}),
        json!({"events": ["nope"]}),
        json!({"url": "ftp://example.com/x"}),
        json!({"bogus": 1}),
    ] {
        t.call(
            reqwest::Method::PATCH,
            &format!("/v1/orgs/{a}/webhooks/{ea}"),
            Some(&key_a),
            Some(&bad),
        )
        .await
        .expect(422)
        .assert_problem();
    }
    t.call(
        reqwest::Method::DELETE,
        &format!("/v1/orgs/{a}/webhooks/{ea}"),
        Some(&key_a),
        None,
    )
    .await
    .expect(204);
    t.get(&format!("/v1/orgs/{a}/webhooks/{ea}"), &key_a)
        .await
        .expect(404);
    t.call(
        reqwest::Method::DELETE,
        &format!("/v1/webhooks/{pid}"),
        Some(&t.platform_key),
        None,
    )
    .await
    .expect(204);
    let audit = scalar(
        &t,
        "SELECT COUNT(*) FROM audit_log WHERE action LIKE $1",
        "webhook.%",
    )
    .await;
    assert_eq!(audit, 5, "2 creates, 1 update, 2 deletes");
    t.finish().await;
}
