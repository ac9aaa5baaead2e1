//! Spending limits over HTTP (issue 11): authorize, hold, capture, void,
//! the spending view, replays, declines with their reasons, bad input,
//! threshold alerts, and limits from an approved `payment_permission`.
use std::time::Duration;

use approvald_workers::ManualClock;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Opts, TestApp},
    review_util::{decide, outbox, wait_emails_final, wait_status},
    spend_util::*,
};

/// Wednesday 2026-03-18 10:00 in Shanghai.
const NOW: &str = "2026-03-18T02:00:00Z";

async fn clocked() -> TestApp {
    TestApp::spawn_with(Opts {
        clock: Some(ManualClock::new(utc(NOW))),
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn authorize_hold_capture_void_and_the_spending_view() {
    let t = clocked().await;
    let (org, key, _) = org_in(&t, "Asia/Shanghai", None).await;
    let o = t
        .get(&format!("/v1/orgs/{org}"), &key)
        .await
        .expect(200)
        .json();
    assert_eq!(o["timezone"], "Asia/Shanghai");
    assert_eq!(o["currency"], "CNY");
    let m = member(&t, &org, &key).await;

    // No permission yet: declined, recorded, nothing counted as spent.
    let r = authorize(&t, &org, &key, &m, 100, "p-0", true)
        .await
        .expect(200)
        .json();
    assert_eq!(r["approved"], false);
    assert_eq!(r["reason"], "not_allowed");
    assert_eq!(
        r["remaining"],
        json!({"per_tx": 0, "daily": 0, "monthly": 0})
    );

    set_limits(&t, &org, &m, 500, 1000, 3000).await;
    let r = authorize(&t, &org, &key, &m, 300, "p-1", true)
        .await
        .expect(200)
        .json();
    assert_eq!(r["approved"], true, "{r}");
    assert_eq!(r["status"], "approved");
    assert_eq!(
        r["remaining"],
        json!({"per_tx": 500, "daily": 700, "monthly": 2700})
    );
    assert_eq!(r["resets_at"]["daily"], "2026-03-18T16:00:00.000Z");
    assert_eq!(r["resets_at"]["monthly"], "2026-03-31T16:00:00.000Z");
    assert_eq!(
        r["periods"],
        json!({"daily": "2026-03-18", "monthly": "2026-03"})
    );

    // Declines carry their reason and change no counter's used amount.
    let r = authorize(&t, &org, &key, &m, 501, "p-2", true)
        .await
        .expect(200)
        .json();
    assert_eq!(
        (r["approved"].clone(), r["reason"].clone()),
        (json!(false), json!("per_tx"))
    );

    // A hold counts at once...
    let hold = authorize(&t, &org, &key, &m, 400, "p-3", false)
        .await
        .expect(200)
        .json();
    assert_eq!(hold["status"], "held");
    assert_eq!(hold["remaining"]["daily"], 300);
    assert!(hold["expires_at"].is_string());
    let r = authorize(&t, &org, &key, &m, 301, "p-4", true)
        .await
        .expect(200)
        .json();
    assert_eq!(r["reason"], "daily");
    let s = spending(&t, &org, &key, &m).await;
    assert_eq!(s["used"], json!({"daily": 300, "monthly": 300}));
    assert_eq!(s["held"], json!({"daily": 400, "monthly": 400}));
    assert_eq!(s["remaining"]["daily"], 300);
    assert_eq!(s["limits"]["source"], "member");

    // ... a capture counts at most what was held, the rest is released.
    let id = hold["id"].as_str().unwrap();
    let c = t
        .post(
            &format!("/v1/orgs/{org}/payments/{id}/capture"),
            &key,
            json!({"amount": 250}),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(c["status"], "captured");
    assert_eq!(c["captured_amount"], 250);
    assert_eq!(c["remaining"]["daily"], 450);
    assert!(c["resets_at"]["daily"].is_string());
    let s = spending(&t, &org, &key, &m).await;
    assert_eq!(s["used"]["daily"], 550);
    assert_eq!(s["held"]["daily"], 0);

    // A voided hold frees its amount; voiding twice is a conflict.
    let h2 = authorize(&t, &org, &key, &m, 450, "p-5", false)
        .await
        .expect(200)
        .json();
    assert_eq!(h2["remaining"]["daily"], 0);
    let id2 = h2["id"].as_str().unwrap();
    let v = t
        .post(
            &format!("/v1/orgs/{org}/payments/{id2}/void"),
            &key,
            json!({}),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(v["status"], "voided");
    assert_eq!(v["remaining"]["daily"], 450);
    let again = t
        .post(
            &format!("/v1/orgs/{org}/payments/{id2}/void"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    again.assert_problem();

    // A hold expires after payments.hold_hours (168): it stops counting at
    // once, and the limits job releases it.
    let h3 = authorize(&t, &org, &key, &m, 100, "p-6", false)
        .await
        .expect(200)
        .json();
    let s = spending(&t, &org, &key, &m).await;
    assert_eq!(s["held"]["monthly"], 100);
    t.advance(chrono::Duration::hours(168));
    let s = spending(&t, &org, &key, &m).await;
    assert_eq!(
        s["held"]["monthly"], 0,
        "an expired hold no longer counts: {s}"
    );
    let released = approvald::jobs::limits::release_expired(&t.app)
        .await
        .unwrap();
    assert_eq!(released, 1);
    let id3 = h3["id"].as_str().unwrap();
    let p = t
        .get(&format!("/v1/orgs/{org}/payments/{id3}"), &key)
        .await
        .expect(200)
        .json();
    assert_eq!(p["status"], "expired");
    let late = t
        .post(
            &format!("/v1/orgs/{org}/payments/{id3}/capture"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(late.status, StatusCode::CONFLICT, "{}", late.text);

    // Declines are recorded with their reason.
    assert_eq!(
        scalar(
            &t,
            "SELECT COUNT(*) FROM payments WHERE status = 'declined' AND org_id = $1",
            &[&org]
        )
        .await,
        3
    );
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("approvald_spend_authorizations_total{outcome=\"declined_daily\"}"),
        "metrics lack the authorization counter"
    );
    t.finish().await;
}

#[tokio::test]
async fn a_disabled_member_is_declined_member_disabled() {
    let t = clocked().await;
    let (org, key, _) = org_in(&t, "Asia/Shanghai", None).await;
    let m = member(&t, &org, &key).await;
    set_limits(&t, &org, &m, 500, 1000, 3000).await;
    authorize(&t, &org, &key, &m, 100, "d-1", true)
        .await
        .expect(200);
    let r = t
        .post(
            &format!("/v1/orgs/{org}/members/{m}/disable"),
            &t.platform_key,
            json!({}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let r = authorize(&t, &org, &key, &m, 100, "d-2", true)
        .await
        .expect(200)
        .json();
    assert_eq!(r["reason"], "member_disabled");
    assert_eq!(
        r["remaining"],
        json!({"per_tx": 0, "daily": 0, "monthly": 0})
    );
    t.finish().await;
}

/// The same reference replays the first answer byte for byte, however many
/// arrive at once; another body with it is a 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_calls_with_one_reference_make_one_decision() {
    let t = clocked().await;
    let (org, key, _) = org_in(&t, "Asia/Shanghai", None).await;
    let m = member(&t, &org, &key).await;
    set_limits(&t, &org, &m, 500, 1000, 3000).await;
    let mut calls = Vec::new();
    for _ in 0..20 {
        calls.push(authorize(&t, &org, &key, &m, 120, "same-ref", false));
    }
    let answers = futures::future::join_all(calls).await;
    let first = &answers[0].text;
    for a in &answers {
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(&a.text, first, "every answer is the first, byte for byte");
    }
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.headers.get("idempotent-replayed").is_none())
            .count(),
        1,
        "exactly one call decided"
    );
    assert_eq!(
        scalar(
            &t,
            "SELECT COUNT(*) FROM payments WHERE org_id = $1",
            &[&org]
        )
        .await,
        1
    );
    let s = spending(&t, &org, &key, &m).await;
    assert_eq!(s["held"]["daily"], 120, "counted once");
    let other = authorize(&t, &org, &key, &m, 121, "same-ref", false).await;
    assert_eq!(other.status, StatusCode::CONFLICT);
    other.assert_problem();
    assert!(other.text.contains("reference"), "{}", other.text);
    // Field order and an explicit default do not make another body.
    let r = t
        .post(
            &format!("/v1/orgs/{org}/payments/authorize"),
            &key,
            json!({"capture": false, "reference": "same-ref", "currency": "CNY", "amount": 120, "member": m}),
        )
        .await
        .expect(200);
    assert_eq!(&r.text, first);
    t.finish().await;
}

/// At least 25 kinds of bad input: each a 4xx problem naming the field,
/// nothing written.
#[tokio::test]
async fn bad_input_is_a_problem_and_writes_nothing() {
    let t = clocked().await;
    let (org, key, _) = org_in(&t, "Asia/Shanghai", None).await;
    let (org2, key2, _) = org_in(&t, "Asia/Shanghai", Some("JPY")).await;
    let m = member(&t, &org, &key).await;
    let foreign = member(&t, &org2, &key2).await;
    set_limits(&t, &org, &m, 500, 1000, 3000).await;
    let hold = authorize(&t, &org, &key, &m, 100, "h-1", false)
        .await
        .expect(200)
        .json();
    let hold_id = hold["id"].as_str().unwrap().to_string();
    let voided = authorize(&t, &org, &key, &m, 50, "h-2", false)
        .await
        .expect(200)
        .json();
    let voided_id = voided["id"].as_str().unwrap().to_string();
    t.post(
        &format!("/v1/orgs/{org}/payments/{voided_id}/void"),
        &key,
        json!({}),
    )
    .await
    .expect(200);
    let approved = authorize(&t, &org, &key, &m, 10, "h-3", true)
        .await
        .expect(200)
        .json();
    let approved_id = approved["id"].as_str().unwrap().to_string();
    t.drain().await;

    let auth = format!("/v1/orgs/{org}/payments/authorize");
    let ok = json!({"member": m, "amount": 10, "currency": "CNY", "reference": "fresh-1"});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let without = |k: &str| {
        let mut b = ok.clone();
        b.as_object_mut().unwrap().remove(k);
        b
    };
    let cases: Vec<(&str, String, Value, u16, &str)> = vec![
        (
            "negative amount",
            auth.clone(),
            with("amount", json!(-5)),
            422,
            "amount",
        ),
        (
            "zero amount",
            auth.clone(),
            with("amount", json!(0)),
            422,
            "amount",
        ),
        (
            "fractional amount",
            auth.clone(),
            with("amount", json!(10.5)),
            422,
            "amount",
        ),
        (
            "huge amount",
            auth.clone(),
            with("amount", json!(1e20)),
            422,
            "amount",
        ),
        (
            "amount above the cap",
            auth.clone(),
            with("amount", json!(2_000_000_000_000_000i64)),
            422,
            "amount",
        ),
        (
            "amount as text",
            auth.clone(),
            with("amount", json!("10")),
            422,
            "amount",
        ),
        (
            "missing amount",
            auth.clone(),
            without("amount"),
            422,
            "amount",
        ),
        (
            "wrong currency",
            auth.clone(),
            with("currency", json!("USD")),
            422,
            "currency",
        ),
        (
            "not a currency",
            auth.clone(),
            with("currency", json!("XYZ")),
            422,
            "currency",
        ),
        (
            "lower-case currency",
            auth.clone(),
            with("currency", json!("cny")),
            422,
            "currency",
        ),
        (
            "missing currency",
            auth.clone(),
            without("currency"),
            422,
            "currency",
        ),
        (
            "unknown member",
            auth.clone(),
            with("member", json!("no-such-member")),
            404,
            "member",
        ),
        (
            "member of another org",
            auth.clone(),
            with("member", json!(foreign)),
            404,
            "member",
        ),
        (
            "empty member",
            auth.clone(),
            with("member", json!("")),
            404,
            "member",
        ),
        (
            "empty reference",
            auth.clone(),
            with("reference", json!("")),
            422,
            "reference",
        ),
        (
            "reference with a space",
            auth.clone(),
            with("reference", json!("a b")),
            422,
            "reference",
        ),
        (
            "reference too long",
            auth.clone(),
            with("reference", json!("r".repeat(129))),
            422,
            "reference",
        ),
        (
            "non-ASCII reference",
            auth.clone(),
            with("reference", json!("支付-1")),
            422,
            "reference",
        ),
        (
            "reference not a string",
            auth.clone(),
            with("reference", json!(7)),
            422,
            "reference",
        ),
        (
            "capture not a bool",
            auth.clone(),
            with("capture", json!("yes")),
            422,
            "capture",
        ),
        (
            "unknown field",
            auth.clone(),
            with("tip", json!(1)),
            422,
            "tip",
        ),
        (
            "body is an array",
            auth.clone(),
            json!([m, 10, "CNY", "x"]),
            422,
            "object",
        ),
        (
            "capture above the hold",
            format!("/v1/orgs/{org}/payments/{hold_id}/capture"),
            json!({"amount": 101}),
            422,
            "amount",
        ),
        (
            "capture of zero",
            format!("/v1/orgs/{org}/payments/{hold_id}/capture"),
            json!({"amount": 0}),
            422,
            "amount",
        ),
        (
            "capture after void",
            format!("/v1/orgs/{org}/payments/{voided_id}/capture"),
            json!({}),
            409,
            "voided",
        ),
        (
            "void twice",
            format!("/v1/orgs/{org}/payments/{voided_id}/void"),
            json!({}),
            409,
            "voided",
        ),
        (
            "capture of an approved payment",
            format!("/v1/orgs/{org}/payments/{approved_id}/capture"),
            json!({}),
            409,
            "capture",
        ),
        (
            "void with a body field",
            format!("/v1/orgs/{org}/payments/{hold_id}/void"),
            json!({"why": "x"}),
            422,
            "why",
        ),
        (
            "capture of an unknown payment",
            format!("/v1/orgs/{org}/payments/nope/capture"),
            json!({}),
            404,
            "payment",
        ),
        (
            "capture through another org",
            format!("/v1/orgs/{org2}/payments/{hold_id}/capture"),
            json!({}),
            404,
            "payment",
        ),
    ];
    assert!(cases.len() >= 25);
    let before = spend_counts(&t).await;
    for (what, path, body, status, names) in &cases {
        let k = if path.contains(&org2) { &key2 } else { &key };
        let r = t.post(path, k, body.clone()).await;
        assert_eq!(r.status.as_u16(), *status, "{what}: {}", r.text);
        r.assert_problem();
        assert!(
            r.text.contains(names),
            "{what}: the problem should name {names:?}: {}",
            r.text
        );
        assert_eq!(spend_counts(&t).await, before, "{what} wrote something");
    }
    // Another org's key sees nothing of this org.
    let r = t
        .get(&format!("/v1/orgs/{org}/members/{m}/spending"), &key2)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = t
        .get(&format!("/v1/orgs/{org2}/members/{m}/spending"), &key2)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Not JSON at all.
    let r = t
        .post_raw(&auth, &key, "application/json", b"{\"amount\": 1,".to_vec())
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    r.assert_problem();
    // Orgs refuse a bad zone or currency.
    for (field, v) in [("timezone", "Mars/Olympus"), ("currency", "ABC")] {
        let login = crate::api_util::login("own");
        let mut body = json!({"name": "X", "region": "cn", "locale": "en",
                              "owner": {"login_id": login, "name": "O", "email": format!("{login}@example.com")}});
        body[field] = json!(v);
        let r = t.post("/v1/orgs", &t.platform_key, body).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{field}");
        assert!(r.text.contains(field), "{}", r.text);
    }
    assert_eq!(spend_counts(&t).await, before);
    t.finish().await;
}

/// `payments/authorize` reads its key in the statement that reads the org
/// and the member: it still answers a bad key, another org's key and a bad
/// body as every other call does, in the same order (the key: 401, 403;
/// the body's shape; the org boundary: 404; the fields: 422), writing
/// nothing; a revoked key fails the very next call.
#[tokio::test]
async fn authorize_checks_the_key_and_the_org_boundary_first() {
    let t = clocked().await;
    let (org, key, _) = org_in(&t, "Asia/Shanghai", None).await;
    let (_, key2, _) = org_in(&t, "Asia/Shanghai", None).await;
    let m = member(&t, &org, &key).await;
    set_limits(&t, &org, &m, 500, 1000, 3000).await;
    authorize(&t, &org, &key, &m, 10, "k-0", true)
        .await
        .expect(200);
    let operator = approvald::store::keys::create_operator(&t.app.db, false, t.app.now_ms())
        .await
        .unwrap();
    let unknown = format!("apd_{}", "A".repeat(43));
    let path = format!("/v1/orgs/{org}/payments/authorize");
    let good = json!({"member": m, "amount": 10, "currency": "CNY", "reference": "k-1"});
    let bad_field = json!({"member": m, "amount": 0, "currency": "CNY", "reference": "k-1"});
    let bad_shape = json!({"member": m, "amount": "10", "currency": "CNY", "reference": "k-1"});
    let before = spend_counts(&t).await;
    let cases: Vec<(&str, &str, &str, Value, u16, &str)> = vec![
        (
            "an unknown key",
            &path,
            &unknown,
            good.clone(),
            401,
            "unknown or revoked",
        ),
        (
            "a malformed key",
            &path,
            "not-a-key",
            good.clone(),
            401,
            "unknown or revoked",
        ),
        (
            "an unknown key, a bad field",
            &path,
            &unknown,
            bad_field.clone(),
            401,
            "unknown or revoked",
        ),
        (
            "an unknown key, a bad body",
            &path,
            &unknown,
            bad_shape.clone(),
            401,
            "unknown or revoked",
        ),
        (
            "an operator key",
            &path,
            &operator,
            good.clone(),
            403,
            "operator",
        ),
        (
            "an operator key, a bad field",
            &path,
            &operator,
            bad_field.clone(),
            403,
            "operator",
        ),
        ("another org's key", &path, &key2, good.clone(), 404, "org"),
        (
            "another org's key, a bad field",
            &path,
            &key2,
            bad_field.clone(),
            404,
            "org",
        ),
        (
            "another org's key, a bad body",
            &path,
            &key2,
            bad_shape.clone(),
            422,
            "amount",
        ),
        (
            "the platform key, no such org",
            "/v1/orgs/nope/payments/authorize",
            &t.platform_key,
            good.clone(),
            404,
            "org",
        ),
        (
            "the platform key, no such org, a bad field",
            "/v1/orgs/nope/payments/authorize",
            &t.platform_key,
            bad_field.clone(),
            422,
            "amount",
        ),
    ];
    for (what, path, k, body, status, names) in cases {
        let r = t.post(path, k, body).await;
        assert_eq!(r.status.as_u16(), status, "{what}: {}", r.text);
        r.assert_problem();
        assert!(r.text.contains(names), "{what}: {}", r.text);
        if status == 401 {
            assert!(
                r.headers
                    .get("www-authenticate")
                    .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")),
                "{what}: no WWW-Authenticate"
            );
        }
        assert_eq!(spend_counts(&t).await, before, "{what} wrote something");
    }
    let r = t
        .post_raw(
            &path,
            &unknown,
            "application/json",
            b"{\"amount\": 1,".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    // The platform key may act on the org; a revoked org key may not.
    authorize(&t, &org, &t.platform_key, &m, 10, "k-2", true)
        .await
        .expect(200);
    approvald::on_db!(&t.app.db, |p| sqlx::query(
        "UPDATE api_keys SET revoked_at = 1 WHERE org_id = $1"
    )
    .bind(&org)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    let r = authorize(&t, &org, &key, &m, 10, "k-3", true).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    t.finish().await;
}

/// 80 % and 100 % of a limit: one mail per member, period and threshold,
/// to the member and the org's admins.
#[tokio::test]
async fn threshold_alerts_once_per_member_period_and_threshold() {
    let t = TestApp::spawn_with(Opts {
        clock: Some(ManualClock::new(utc(NOW))),
        toml: crate::api_util::HOOKS_ON_LOOPBACK.to_string(),
        ..Default::default()
    })
    .await;
    let _hooks = crate::api_util::subscribe_to_everything(&t).await;
    let (org, key, _) = org_in(&t, "Asia/Shanghai", None).await;
    let admin = crate::api_util::add_member(&t, &org, &key, "admin").await;
    let m = member(&t, &org, &key).await;
    set_limits(&t, &org, &m, 1000, 1000, 10_000).await;
    let count = |threshold: &'static str| {
        let t = &t;
        async move {
            scalar(
                t,
                "SELECT COUNT(*) FROM emails WHERE template = 'spend_threshold' AND params LIKE $1",
                &[&format!("%\"threshold\":\"{threshold}\"%")],
            )
            .await
        }
    };
    authorize(&t, &org, &key, &m, 700, "a-1", true)
        .await
        .expect(200);
    assert_eq!(count("80").await, 0);
    authorize(&t, &org, &key, &m, 100, "a-2", true)
        .await
        .expect(200);
    assert_eq!(count("80").await, 3, "member, owner and admin hear of 80 %");
    authorize(&t, &org, &key, &m, 50, "a-3", true)
        .await
        .expect(200);
    assert_eq!(count("80").await, 3, "once per period");
    authorize(&t, &org, &key, &m, 150, "a-4", true)
        .await
        .expect(200);
    assert_eq!(count("100").await, 3);
    let r = authorize(&t, &org, &key, &m, 1, "a-5", true)
        .await
        .expect(200)
        .json();
    assert_eq!(r["reason"], "daily");
    assert_eq!(
        count("100").await,
        3,
        "a decline at the limit sends nothing again"
    );
    assert_eq!(
        scalar(
            &t,
            "SELECT COUNT(*) FROM webhook_events WHERE org_id = $1 AND type = 'payment.limit_reached'",
            &[&org]
        )
        .await,
        1,
        "one payment.limit_reached event per member, period and limit"
    );
    // The next day re-arms them.
    t.advance(chrono::Duration::days(1));
    authorize(&t, &org, &key, &m, 800, "a-6", true)
        .await
        .expect(200);
    assert_eq!(count("80").await, 6);
    let rows = wait_emails_final(&t, Duration::from_secs(30)).await;
    let to_admin: Vec<_> = rows
        .iter()
        .filter(|r| {
            r.template == "spend_threshold" && r.recipient == admin["email"].as_str().unwrap()
        })
        .collect();
    assert_eq!(to_admin.len(), 3);
    assert!(to_admin.iter().all(|r| r.status == "sent"), "{to_admin:?}");
    let mails = outbox(&t);
    let sent = mails.get(&to_admin[0].id).expect("the mail was written");
    assert!(sent.text.contains("Limit: 10.00 CNY"), "{}", sent.text);
    t.finish().await;
}

/// A `payment_permission` request carrying limits (checked at submit),
/// approved by an admin through the review link, sets them on the member
/// over the role's; the change is audited with before and after; revoking
/// the grant ends them.
#[tokio::test]
async fn an_approved_payment_permission_sets_member_limits() {
    let t = clocked().await;
    let (org, key, _) = org_in(&t, "Asia/Shanghai", None).await;
    let admin = crate::api_util::add_member(&t, &org, &key, "admin").await;
    let m = member(&t, &org, &key).await;
    let submit = |params: Value| {
        let (t, org, key, m) = (&t, &org, &key, &m);
        async move {
            t.post(
                &format!("/v1/orgs/{org}/requests"),
                key,
                json!({"kind": "payment_permission", "requester": m, "remark": "pay suppliers", "params": params}),
            )
            .await
        }
    };
    for bad in [
        json!({"per_tx": 600, "daily": 500, "monthly": 3000}),
        json!({"per_tx": -1, "daily": 500, "monthly": 3000}),
        json!({"per_tx": 100}),
        json!({"per_tx": 1.5, "daily": 500, "monthly": 3000}),
        json!({"weekly": 1}),
        json!("limits"),
    ] {
        let r = submit(bad.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            r.text
        );
        assert!(r.text.contains("params"), "{}", r.text);
    }
    let id = submit(json!({"per_tx": 200, "daily": 500, "monthly": 3000}))
        .await
        .expect(202)
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_status(&t, &org, &key, &id, "in_review").await;
    let rows = wait_emails_final(&t, Duration::from_secs(30)).await;
    let row = rows
        .iter()
        .find(|r| r.recipient == admin["email"].as_str().unwrap())
        .expect("the admin reviews it");
    let token = outbox(&t)[&row.id].review_token(&t.base).unwrap();
    let r = decide(&t, &token, "approve", "").await;
    assert!(
        r.status.is_success() || r.status.is_redirection(),
        "{}",
        r.text
    );
    wait_status(&t, &org, &key, &id, "approved").await;
    let s = spending(&t, &org, &key, &m).await;
    assert_eq!(
        s["limits"],
        json!({"allowed": true, "per_tx": 200, "daily": 500, "monthly": 3000, "source": "member"})
    );
    let r = authorize(&t, &org, &key, &m, 201, "pp-1", true)
        .await
        .expect(200)
        .json();
    assert_eq!(r["reason"], "per_tx");
    let r = authorize(&t, &org, &key, &m, 200, "pp-2", true)
        .await
        .expect(200)
        .json();
    assert_eq!(r["approved"], true);
    assert_eq!(
        scalar(&t, "SELECT COUNT(*) FROM audit_log WHERE action = 'payment.limits_set' AND target = $1 AND detail LIKE '%\"before\"%' AND detail LIKE '%\"after\"%'", &[&m]).await,
        1
    );
    t.post(
        &format!("/v1/orgs/{org}/grants/payment_permission/revoke?member={m}"),
        &key,
        json!({}),
    )
    .await
    .expect(200);
    let s = spending(&t, &org, &key, &m).await;
    assert_eq!(s["limits"]["source"], "role");
    let r = authorize(&t, &org, &key, &m, 10, "pp-3", true)
        .await
        .expect(200)
        .json();
    assert_eq!(r["reason"], "not_allowed");
    t.finish().await;
}
