//! API v1: a request from submit to `in_review`, the history list with its
//! cursor, one request with its events, cancel; grants; audit; catalog;
//! calendars.
use std::collections::HashSet;

use serde_json::{Value, json};

use crate::{
    api_util::{add_member, scalar_i64, submit, wait_count, wait_status},
    harness::TestApp,
};

#[tokio::test]
async fn request_lifecycle_to_in_review_then_cancel() {
    let mut t = TestApp::spawn().await;
    t.create_reviewer("rev1@example.com", "marketplace", true)
        .await;
    let (org, key, _owner) = t.create_org("Acme Shop", "cn").await;

    let before = t.app.now_ms();
    let r = submit(&t, &org, &key, json!({"kind": "ftp_access", "remark": "We upload our catalogue nightly.\nPlease enable FTP."}))
        .await
        .expect(202);
    assert_eq!(r.content_type, "application/json");
    let sub = r.json();
    let id = sub["id"].as_str().unwrap().to_string();
    assert_eq!(sub["number"], "R000001");
    assert_eq!(sub["status"], "submitted");
    assert_eq!(sub["kind"], "ftp_access");
    let created =
        chrono::DateTime::parse_from_rfc3339(sub["created_at"].as_str().unwrap()).unwrap();
    let due = chrono::DateTime::parse_from_rfc3339(sub["sla_due_at"].as_str().unwrap()).unwrap();
    assert!(created.timestamp_millis() >= before);
    // One business day: at least a day later, at most a long holiday later.
    let hours = (due - created).num_hours();
    assert!(
        (24..=24 * 12).contains(&hours),
        "due {due} for created {created}"
    );
    // The same answer the calendar gives for the org's region.
    let cal = t.app.calendars.get(&"cn".parse().unwrap()).unwrap();
    assert_eq!(cal.due(created.to_utc(), 1).unwrap(), due.to_utc());

    // The request row and its review job were written together; the job moves it.
    let got = wait_status(&t, &org, &key, &id, "in_review").await;
    assert_eq!(got["number"], "R000001");
    assert_eq!(
        got["remark"],
        "We upload our catalogue nightly.\nPlease enable FTP."
    );
    assert_eq!(got["documents"], json!([]));
    let types: Vec<&str> = got["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(&types[..2], ["submitted", "in_review"], "{got:#}");
    let first = &got["events"][0];
    assert!(first["actor"].as_str().unwrap().starts_with("key:"));
    assert!(chrono::DateTime::parse_from_rfc3339(first["at"].as_str().unwrap()).is_ok());
    assert!(got["decided_at"].is_null());

    // Counted per kind (the recorder is per process, so only presence is checked).
    let m = t.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("approvald_requests_submitted_total{")
                && l.contains("kind=\"ftp_access\"")),
        "{m}"
    );

    // Numbers follow the org's own sequence.
    let second = submit(
        &t,
        &org,
        &key,
        json!({"kind": "bulk_data_management", "remark": "Bulk edits"}),
    )
    .await
    .expect(202)
    .json();
    assert_eq!(second["number"], "R000002");

    // Cancel: only while open; review links die with it. (The link is made
    // when the review mail goes out: wait for it, so there is one to revoke.)
    let link = "SELECT COUNT(*) FROM review_tokens WHERE request_id = $1 AND revoked_at IS NULL AND used_at IS NULL";
    wait_count(&t, link, &id, 1, "live review links before cancel").await;
    let c = t
        .post(
            &format!("/v1/orgs/{org}/requests/{id}/cancel"),
            &key,
            json!({}),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(c["status"], "cancelled");
    assert_eq!(
        c["events"].as_array().unwrap().last().unwrap()["type"],
        "cancelled"
    );
    let live = scalar_i64(&t, "SELECT COUNT(*) FROM review_tokens WHERE request_id = $1 AND revoked_at IS NULL AND used_at IS NULL", &id).await;
    assert_eq!(live, 0);
    // The assigned reviewer is told, once.
    let sent = "SELECT COUNT(*) FROM emails WHERE request_id = $1 AND template = 'cancelled' AND status = 'sent'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while scalar_i64(&t, sent, &id).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the cancelled mail was never sent"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let all = "SELECT COUNT(*) FROM emails WHERE request_id = $1 AND template = 'cancelled'";
    assert_eq!(scalar_i64(&t, all, &id).await, 1);
    assert!(
        t.outbox_messages()
            .iter()
            .any(|m| m.contains("rev1@example.com") && m.contains("Withdrawn")),
        "no cancelled mail in the outbox"
    );
    let again = t
        .post(
            &format!("/v1/orgs/{org}/requests/{id}/cancel"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(again.status.as_u16(), 409);
    again.assert_problem();
    assert!(
        again.json()["detail"]
            .as_str()
            .unwrap()
            .contains("cancelled"),
        "{}",
        again.text
    );
    let missing = t
        .post(
            &format!("/v1/orgs/{org}/requests/nope/cancel"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(missing.status.as_u16(), 404);
    missing.assert_problem();

    wait_status(&t, &org, &key, second["id"].as_str().unwrap(), "in_review").await;
    // SLA timers of the request still in review stay scheduled: stop without the leftover check.
    t.stop().await;
}

#[tokio::test]
async fn history_is_newest_first_with_filters_and_an_opaque_cursor() {
    let mut t = TestApp::spawn().await;
    let (org, key, _) = t.create_org("History Co", "jp").await;
    let kinds = [
        "shipping_addresses_over_4",
        "ftp_access",
        "bulk_data_management",
        "listings_over_50000",
        "seller_designated_carrier",
        "preorder_shipping",
        "shipping_addresses_over_4",
    ];
    let mut ids = Vec::new();
    for k in kinds {
        ids.push(
            submit(
                &t,
                &org,
                &key,
                json!({"kind": k, "remark": format!("need {k}")}),
            )
            .await
            .expect(202)
            .json()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Walk the pages of 3.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/orgs/{org}/requests?limit=3&cursor={c}"),
            None => format!("/v1/orgs/{org}/requests?limit=3"),
        };
        let page = t.get(&path, &key).await.expect(200).json();
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_string());
            for f in [
                "number",
                "kind",
                "status",
                "remark",
                "created_at",
                "sla_due_at",
            ] {
                assert!(item.get(f).is_some(), "{f} missing: {item}");
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    let by_kind = t
        .get(
            &format!("/v1/orgs/{org}/requests?kind=shipping_addresses_over_4"),
            &key,
        )
        .await
        .expect(200)
        .json();
    let got: Vec<&str> = by_kind["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[6].as_str(), ids[0].as_str()]);

    // Let the review jobs run (the duplicate is refused by the job), then filter by status.
    wait_status(&t, &org, &key, &ids[5], "in_review").await;
    let rejected_dup = wait_status(&t, &org, &key, &ids[6], "rejected").await;
    assert!(
        rejected_dup["decision_comment"]
            .as_str()
            .unwrap_or("")
            .contains("R000001"),
        "{rejected_dup:#}"
    );
    let rejected = t
        .get(&format!("/v1/orgs/{org}/requests?status=rejected"), &key)
        .await
        .expect(200)
        .json();
    let got: HashSet<&str> = rejected["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, HashSet::from([ids[6].as_str()]));

    for bad in [
        "status=approvedish",
        "kind=nope",
        "limit=0",
        "limit=101",
        "limit=-1",
        "limit=1.5",
        "cursor=%21%21",
        "color=red",
    ] {
        let r = t.get(&format!("/v1/orgs/{org}/requests?{bad}"), &key).await;
        assert_eq!(r.status.as_u16(), 400, "{bad}: {}", r.text);
        r.assert_problem();
    }
    t.stop().await;
}

#[tokio::test]
async fn grants_list_and_revoke() {
    let t = TestApp::spawn().await;
    let (org, key, _) = t.create_org("Grant Co", "cn").await;
    assert_eq!(
        t.get(&format!("/v1/orgs/{org}/grants"), &key)
            .await
            .expect(200)
            .json()["items"],
        json!([])
    );
    // A grant as an approval leaves it (the decision path is tested elsewhere).
    let gid = uuid::Uuid::now_v7().to_string();
    let now = t.app.now_ms();
    approvald::on_db!(&t.app.db, |p| sqlx::query(
        "INSERT INTO grants (id, org_id, kind, member_id, status, request_id, granted_at) VALUES ($1, $2, 'ftp_access', '', 'active', NULL, $3)"
    )
    .bind(&gid)
    .bind(&org)
    .bind(now)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    let list = t
        .get(&format!("/v1/orgs/{org}/grants"), &key)
        .await
        .expect(200)
        .json();
    assert_eq!(list["items"][0]["id"], gid.as_str());
    assert_eq!(list["items"][0]["status"], "active");
    assert!(list["items"][0]["member_id"].is_null());

    let audit_before = t.count("audit_log").await;
    let g = t
        .post(
            &format!("/v1/orgs/{org}/grants/ftp_access/revoke"),
            &key,
            json!({}),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(g["status"], "revoked");
    assert!(g["revoked_at"].is_string());
    assert_eq!(t.count("audit_log").await, audit_before + 1);
    assert_eq!(
        t.get(&format!("/v1/orgs/{org}/grants"), &key)
            .await
            .expect(200)
            .json()["items"],
        json!([])
    );
    let all = t
        .get(&format!("/v1/orgs/{org}/grants?all=true"), &key)
        .await
        .expect(200)
        .json();
    assert_eq!(all["items"].as_array().unwrap().len(), 1);
    assert_eq!(t.count("grants").await, 1, "revoking deletes nothing");

    let again = t
        .post(
            &format!("/v1/orgs/{org}/grants/ftp_access/revoke"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(again.status.as_u16(), 409);
    again.assert_problem();
    let none = t
        .post(
            &format!("/v1/orgs/{org}/grants/alcohol_sales/revoke"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(none.status.as_u16(), 404);
    none.assert_problem();
    // Member-scoped kinds name the member.
    let r = t
        .post(
            &format!("/v1/orgs/{org}/grants/payment_permission/revoke"),
            &key,
            json!({}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 400);
    r.assert_problem();
    t.finish().await;
}

#[tokio::test]
async fn audit_log_records_operations_and_logins() {
    let t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Audit Co", "cn").await;
    let m = add_member(&t, &org, &key, "member").await;
    let mid = m["id"].as_str().unwrap();
    t.call_as(
        reqwest::Method::PATCH,
        &format!("/v1/orgs/{org}/members/{mid}"),
        &key,
        &owner,
        Some(&json!({"role": "finance"})),
    )
    .await
    .expect(200);
    t.post(
        &format!("/v1/orgs/{org}/audit/logins"),
        &key,
        json!({"member": owner, "ip": "203.0.113.9", "user_agent": "Mozilla/5.0", "method": "password", "success": true}),
    )
    .await
    .expect(201);
    t.post(
        &format!("/v1/orgs/{org}/audit/logins"),
        &key,
        json!({"member": m["login_id"], "ip": "2001:db8::1", "method": "wechat", "success": false, "reason": "QR code expired"}),
    )
    .await
    .expect(201);
    for bad in [
        json!({"member": owner, "ip": "999.1.1.1", "method": "password", "success": true}),
        json!({"member": owner, "ip": "10.0.0.1.", "method": "password", "success": true}),
        json!({"member": owner, "ip": "fe80::1::2", "method": "password", "success": true}),
        json!({"member": "nobody_here", "ip": "10.0.0.1", "method": "password", "success": true}),
        json!({"member": owner, "ip": "10.0.0.1", "method": "password", "success": "yes"}),
        json!({"member": owner, "ip": "10.0.0.1", "method": "password", "success": true, "user_agent": "a\u{0}b"}),
        json!({"member": owner, "ip": "10.0.0.1", "method": "password", "success": true, "user_agent": "a".repeat(513)}),
        json!({"member": owner, "ip": "10.0.0.1", "success": true}),
        json!({"member": owner, "ip": "10.0.0.1", "method": "Pass Word", "success": true}),
        json!({"member": owner, "ip": "10.0.0.1", "method": "x".repeat(33), "success": true}),
        json!({"member": owner, "ip": "10.0.0.1", "method": "sms", "success": false, "reason": "r".repeat(257)}),
        json!({"member": owner, "ip": "10.0.0.1", "method": "sms", "success": true, "reason": "why"}),
    ] {
        let r = t
            .post(&format!("/v1/orgs/{org}/audit/logins"), &key, bad.clone())
            .await;
        assert_eq!(r.status.as_u16(), 422, "{bad}: {}", r.text);
        r.assert_problem();
    }

    let ops = t
        .get_as(
            &format!("/v1/orgs/{org}/audit?type=operation"),
            &key,
            &owner,
        )
        .await
        .expect(200)
        .json();
    let actions: Vec<&str> = ops["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["action"].as_str().unwrap())
        .collect();
    // Newest first; reading the log is itself logged, before the read.
    assert_eq!(
        actions,
        vec![
            "audit.list",
            "member.update",
            "member.create",
            "key.create",
            "org.create"
        ]
    );
    assert_eq!(ops["items"][0]["actor"], format!("member:{owner}"));
    // Member changes record the acting member (Approvald-Actor), with
    // before and after.
    assert_eq!(ops["items"][1]["actor"], format!("member:{owner}"));
    assert_eq!(ops["items"][1]["target"], mid);
    assert_eq!(ops["items"][1]["detail"]["before"]["role"], json!(null));
    assert_eq!(ops["items"][1]["detail"]["after"]["role"], "finance");
    assert!(
        ops["items"][3]["actor"]
            .as_str()
            .unwrap()
            .starts_with("key:")
    );
    let seqs: Vec<i64> = ops["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![7, 4, 3, 2, 1], "logins took seq 5 and 6");
    assert_eq!(ops["items"][0]["hash"].as_str().unwrap().len(), 64);
    assert_eq!(ops["items"][1]["prev_hash"], ops["items"][2]["hash"]);
    // Filters: actor, action, time window.
    let actor = ops["items"][1]["actor"].as_str().unwrap();
    let by_action = t
        .get_as(
            &format!("/v1/orgs/{org}/audit?action=member.create&actor={actor}"),
            &key,
            &owner,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(by_action["items"].as_array().unwrap().len(), 1);
    assert_eq!(by_action["items"][0]["action"], "member.create");
    let future = t
        .get_as(
            &format!("/v1/orgs/{org}/audit?from=2999-01-01T00:00:00Z"),
            &key,
            &owner,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(future["items"], json!([]));
    for bad in [
        "from=yesterday",
        "to=2026-13-01T00:00:00Z",
        "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        "cursor=nope",
    ] {
        let r = t
            .get_as(&format!("/v1/orgs/{org}/audit?{bad}"), &key, &owner)
            .await;
        assert_eq!(r.status.as_u16(), 400, "{bad}: {}", r.text);
        r.assert_problem();
    }
    let logins = t
        .get_as(
            &format!("/v1/orgs/{org}/audit?type=login&limit=1"),
            &key,
            &owner,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(logins["items"][0]["ip"], "2001:db8::1");
    assert_eq!(logins["items"][0]["success"], false);
    assert_eq!(logins["items"][0]["method"], "wechat");
    assert_eq!(logins["items"][0]["reason"], "QR code expired");
    let next = logins["next_cursor"].as_str().expect("a second page");
    let page2 = t
        .get_as(
            &format!("/v1/orgs/{org}/audit?type=login&limit=1&cursor={next}"),
            &key,
            &owner,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(page2["items"][0]["ip"], "203.0.113.9");
    assert!(page2.get("next_cursor").is_none());
    let r = t
        .get_as(
            &format!("/v1/orgs/{org}/audit?type=everything"),
            &key,
            &owner,
        )
        .await;
    assert_eq!(r.status.as_u16(), 400);
    r.assert_problem();
    t.finish().await;
}

#[tokio::test]
async fn catalog_calendars_and_platform_objects() {
    let t = TestApp::spawn().await;
    let (org, key, _) = t.create_org("Cal Co", "cn").await;
    for k in [&t.platform_key, &key] {
        let c = t.get("/v1/catalog", k).await.expect(200).json();
        let kinds: Vec<&str> = c["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["key"].as_str().unwrap())
            .collect();
        assert!(
            kinds.contains(&"alcohol_sales") && kinds.contains(&"payment_permission"),
            "{kinds:?}"
        );
        assert!(c["menus"].is_array() && c["modules"].is_array());
    }
    // DESIGN's example: Friday 2026-02-13 10:00 in cn is due on the make-up working Saturday.
    let d = t
        .get(
            "/v1/calendars/cn/due?from=2026-02-13T10:00:00%2B08:00&days=1",
            &key,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(d["due"], "2026-02-14T10:00:00+08:00");
    let r = t
        .get(
            "/v1/calendars/mars/due?from=2026-02-13T10:00:00Z&days=1",
            &key,
        )
        .await;
    assert_eq!(r.status.as_u16(), 404);
    r.assert_problem();
    for bad in [
        "from=yesterday&days=1",
        "from=2026-02-13T10:00:00Z&days=-1",
        "from=2026-02-13T10:00:00Z&days=1.5",
        "from=2026-02-13T10:00:00Z",
    ] {
        let r = t.get(&format!("/v1/calendars/cn/due?{bad}"), &key).await;
        assert_eq!(r.status.as_u16(), 400, "{bad}: {}", r.text);
        r.assert_problem();
    }

    let o = t
        .get(&format!("/v1/orgs/{org}"), &key)
        .await
        .expect(200)
        .json();
    assert_eq!(o["region"], "cn");
    // Region must have a calendar; duplicate reviewer email is a conflict.
    let r = t
        .post("/v1/orgs", &t.platform_key, json!({"name": "X", "region": "zz", "locale": "en", "owner": {"login_id": "owner_x1", "name": "X", "email": "x@example.com"}}))
        .await;
    assert_eq!(r.status.as_u16(), 422);
    r.assert_problem();
    let rid = t
        .create_reviewer("lead@example.com", "marketplace", true)
        .await;
    let rv = t
        .get(&format!("/v1/reviewers/{rid}"), &t.platform_key)
        .await
        .expect(200)
        .json();
    assert_eq!(rv["groups"], json!(["marketplace"]));
    assert_eq!(rv["lead_groups"], json!(["marketplace"]));
    let dup = t
        .post(
            "/v1/reviewers",
            &t.platform_key,
            json!({"email": "lead@example.com", "name": "Dup", "locale": "ja", "groups": ["x"]}),
        )
        .await;
    assert_eq!(dup.status.as_u16(), 409);
    dup.assert_problem();

    // The key is shown once and stored only as its hash.
    let k = t
        .post(&format!("/v1/orgs/{org}/keys"), &t.platform_key, json!({}))
        .await
        .expect(201)
        .json();
    let secret = k["key"].as_str().unwrap();
    assert!(secret.starts_with("apd_") && secret.len() == 47, "{secret}");
    let stored: Vec<(String,)> = approvald::on_db!(&t.app.db, |p| sqlx::query_as::<_, (String,)>(
        "SELECT hash FROM api_keys"
    )
    .fetch_all(p)
    .await)
    .unwrap();
    assert!(
        stored
            .iter()
            .all(|(h,)| h.len() == 64 && !h.contains(&secret[4..]))
    );
    assert!(
        stored
            .iter()
            .any(|(h,)| *h == approvald::store::keys::hash(secret))
    );
    t.get("/v1/catalog", secret).await.expect(200);
    let _: Value = t
        .get(&format!("/v1/orgs/{org}/requests"), secret)
        .await
        .expect(200)
        .json();
    t.finish().await;
}
