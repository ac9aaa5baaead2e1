//! Members: the per-org limit (the owner counts), edits, disable (access
//! stops at once: review links revoked; nothing deleted) and enable.
use reqwest::Method;
use serde_json::json;

use crate::{
    api_util::{add_member, counts, login, scalar_i64, submit, wait_count, wait_status},
    harness::{Opts, TestApp},
};

#[tokio::test]
async fn member_limit_counts_the_owner_and_active_members() {
    let t = TestApp::spawn_with(Opts {
        toml: "[orgs]\nmax_members = 3".into(),
        ..Opts::default()
    })
    .await;
    let (org, key, owner) = t.create_org("Small Co", "cn").await;
    let admin = add_member(&t, &org, &key, "admin").await;
    assert_eq!(admin["kind"], "admin");
    assert_eq!(admin["status"], "active");
    assert_eq!(admin["locale"], "en", "defaults to the org's locale");
    let member = add_member(&t, &org, &key, "member").await;
    let mid = member["id"].as_str().unwrap();

    let before = counts(&t).await;
    let l = login("full");
    let full = t
        .post_as(
            &format!("/v1/orgs/{org}/members"),
            &key,
            &owner,
            json!({"login_id": l, "name": "One too many", "email": "x@example.com"}),
        )
        .await;
    assert_eq!(full.status.as_u16(), 409, "{}", full.text);
    full.assert_problem();
    assert!(
        full.json()["detail"]
            .as_str()
            .unwrap()
            .contains("max_members")
    );
    assert_eq!(counts(&t).await, before);

    // A disabled member frees a place; enabling it again needs one.
    t.post_as(
        &format!("/v1/orgs/{org}/members/{mid}/disable"),
        &key,
        &owner,
        json!({}),
    )
    .await
    .expect(202);
    let fourth = add_member(&t, &org, &key, "member").await;
    let r = t
        .post_as(
            &format!("/v1/orgs/{org}/members/{mid}/enable"),
            &key,
            &owner,
            json!({}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 409, "{}", r.text);
    r.assert_problem();
    let fid = fourth["id"].as_str().unwrap();
    t.post_as(
        &format!("/v1/orgs/{org}/members/{fid}/disable"),
        &key,
        &owner,
        json!({}),
    )
    .await
    .expect(202);
    let back = t
        .post_as(
            &format!("/v1/orgs/{org}/members/{mid}/enable"),
            &key,
            &owner,
            json!({}),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(back["status"], "active");
    assert!(back["disabled_at"].is_null());

    // List with a cursor: oldest first, the owner first.
    let p1 = t
        .get_as(&format!("/v1/orgs/{org}/members?limit=2"), &key, &owner)
        .await
        .expect(200)
        .json();
    assert_eq!(p1["items"][0]["id"], owner.as_str());
    assert_eq!(p1["items"][0]["kind"], "super_admin");
    let c = p1["next_cursor"].as_str().unwrap();
    let p2 = t
        .get_as(
            &format!("/v1/orgs/{org}/members?limit=2&cursor={c}"),
            &key,
            &owner,
        )
        .await
        .expect(200)
        .json();
    let ids: Vec<&str> = p1["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2["items"].as_array().unwrap())
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4);
    assert!(p2.get("next_cursor").is_none());
    t.finish().await;
}

#[tokio::test]
async fn member_edits_and_rules() {
    let t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Edit Co", "jp").await;
    let m = add_member(&t, &org, &key, "member").await;
    let mid = m["id"].as_str().unwrap();
    let path = format!("/v1/orgs/{org}/members/{mid}");
    let patch = |body: serde_json::Value| {
        let path = path.clone();
        let key = key.clone();
        let owner = owner.clone();
        let t = &t;
        async move {
            t.call_as(Method::PATCH, &path, &key, &owner, Some(&body))
                .await
        }
    };
    let e = patch(json!({"role": "purchasing", "name": "  New Name ", "kind": "admin", "phone": "+81 3-1234-5678", "locale": "ja"})).await.expect(200).json();
    assert_eq!(
        (
            e["role"].as_str(),
            e["name"].as_str(),
            e["kind"].as_str(),
            e["locale"].as_str()
        ),
        (
            Some("purchasing"),
            Some("New Name"),
            Some("admin"),
            Some("ja")
        )
    );
    let e = patch(json!({"role": null})).await.expect(200).json();
    assert!(e["role"].is_null());
    assert_eq!(e["phone"], "+81 3-1234-5678");
    let before = counts(&t).await;
    for bad in [
        json!({"kind": "super_admin"}),
        json!({"email": "nope"}),
        json!({"name": ""}),
        json!({"login_id": "changed1"}),
        json!({"role": 5}),
    ] {
        let r = patch(bad.clone()).await;
        assert_eq!(r.status.as_u16(), 422, "{bad}: {}", r.text);
        r.assert_problem();
    }
    let r = t
        .call_as(
            Method::PATCH,
            &format!("/v1/orgs/{org}/members/{owner}"),
            &key,
            &owner,
            Some(&json!({"kind": "member"})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 409);
    r.assert_problem();
    // The owner cannot be disabled; login ids are unique in an org.
    let r = t
        .post_as(
            &format!("/v1/orgs/{org}/members/{owner}/disable"),
            &key,
            &owner,
            json!({}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 409);
    r.assert_problem();
    let r = t
        .post_as(
            &format!("/v1/orgs/{org}/members"),
            &key,
            &owner,
            json!({"login_id": m["login_id"], "name": "Twin", "email": "twin@example.com"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 409);
    r.assert_problem();
    let r = t
        .post_as(&format!("/v1/orgs/{org}/members"), &key, &owner, json!({"login_id": login("x"), "name": "Boss 2", "email": "b2@example.com", "kind": "super_admin"}))
        .await;
    assert_eq!(r.status.as_u16(), 422);
    r.assert_problem();
    assert_eq!(counts(&t).await, before, "refused edits write nothing");
    let r = t
        .get_as(
            &format!("/v1/orgs/{org}/members/not-a-member"),
            &key,
            &owner,
        )
        .await;
    assert_eq!(r.status.as_u16(), 404);
    r.assert_problem();
    t.finish().await;
}

#[tokio::test]
async fn disable_stops_access_at_once_and_deletes_nothing() {
    let mut t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Leaver Co", "cn").await;
    let admin = add_member(&t, &org, &key, "admin").await;
    let aid = admin["id"].as_str().unwrap().to_string();
    let buyer = add_member(&t, &org, &key, "member").await;
    let bid = buyer["id"].as_str().unwrap().to_string();

    // The buyer asks for payment permission: the org's admins review it.
    let req = submit(&t, &org, &key, json!({"kind": "payment_permission", "requester": buyer["login_id"], "remark": "I pay suppliers"}))
        .await
        .expect(202)
        .json();
    let rid = req["id"].as_str().unwrap().to_string();
    wait_status(&t, &org, &key, &rid, "in_review").await;
    // Links are made when the review mails go out: wait for both.
    let sent = "SELECT COUNT(*) FROM emails WHERE request_id = $1 AND template = 'review_requested' AND status = 'sent'";
    wait_count(&t, sent, &rid, 2, "review mails sent").await;
    let live = "SELECT COUNT(*) FROM review_tokens WHERE reviewer_id = $1 AND revoked_at IS NULL";
    assert!(
        scalar_i64(&t, live, &aid).await >= 1,
        "the admin got a review link"
    );
    assert!(
        scalar_i64(&t, live, &owner).await >= 1,
        "the owner got a review link"
    );
    assert_eq!(
        scalar_i64(&t, live, &bid).await,
        0,
        "nobody reviews their own request"
    );

    // The org's other active admins are told, one mail each.
    let tell = "SELECT COUNT(*) FROM members WHERE org_id = (SELECT org_id FROM members WHERE id = $1) \
                AND status = 'active' AND kind IN ('super_admin', 'admin') AND id <> $1";
    let told = scalar_i64(&t, tell, &aid).await;
    assert!(told >= 1, "at least the owner is told");
    let jobs_table = if t.profile == crate::harness::Profile::Embedded {
        "wq_jobs"
    } else {
        "outbox"
    };
    let before = counts(&t).await;
    let d = t
        .post_as(
            &format!("/v1/orgs/{org}/members/{aid}/disable"),
            &key,
            &owner,
            json!({}),
        )
        .await
        .expect(202)
        .json();
    assert_eq!(d["status"], "disabled");
    assert!(d["disabled_at"].is_string());
    // Access stops at once: the admin's links are revoked in the same transaction.
    assert_eq!(scalar_i64(&t, live, &aid).await, 0);
    assert!(
        scalar_i64(&t, live, &owner).await >= 1,
        "others keep theirs"
    );
    // Nothing deleted: once the cleanup job has run, every table has as
    // many rows, plus the disable's audit row, the cleanup's (four steps and
    // its completion), the hand-over event of the buyer's request (the
    // owner, its other reviewer, already has it: no new link), and the jobs:
    // the cleanup and the notify jobs of the admins' mails.
    t.drain().await;
    let after = counts(&t).await;
    for ((table, b), (_, a)) in before.iter().zip(&after) {
        let expected = match *table {
            "audit_log" => b + 1 + 5,
            "request_events" => b + 1,
            x if x == jobs_table => b + told + 1,
            _ => *b,
        };
        assert_eq!(*a, expected, "{table}");
    }
    let mails = t.count("emails WHERE template = 'member_disabled'").await;
    assert_eq!(mails, told, "one member_disabled mail per other admin");
    let m = t
        .get_as(&format!("/v1/orgs/{org}/members/{aid}"), &key, &owner)
        .await
        .expect(200)
        .json();
    assert_eq!(m["status"], "disabled");
    // Disabling again changes nothing.
    t.post_as(
        &format!("/v1/orgs/{org}/members/{aid}/disable"),
        &key,
        &owner,
        json!({}),
    )
    .await
    .expect(202);
    assert_eq!(counts(&t).await, after);

    // A disabled member cannot ask for anything.
    t.post_as(
        &format!("/v1/orgs/{org}/members/{bid}/disable"),
        &key,
        &owner,
        json!({}),
    )
    .await
    .expect(202);
    t.drain().await;
    let before = counts(&t).await;
    let r = submit(
        &t,
        &org,
        &key,
        json!({"kind": "payment_permission", "requester": bid, "remark": "again"}),
    )
    .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.text);
    r.assert_problem();
    assert_eq!(counts(&t).await, before);
    t.stop().await;
}

#[tokio::test]
async fn concurrent_creates_never_pass_the_member_limit() {
    let t = TestApp::spawn_with(Opts {
        toml: "[orgs]\nmax_members = 4".into(),
        ..Opts::default()
    })
    .await;
    let (org, key, owner) = t.create_org("Busy Co", "cn").await;
    let t_ref = &t;
    let answers =
        futures::future::join_all((0..12).map(|i| {
            let (org, key, owner) = (org.clone(), key.clone(), owner.clone());
            async move {
                let l = login(&format!("c{i}"));
                t_ref
                .post_as(&format!("/v1/orgs/{org}/members"), &key, &owner,
                    json!({"login_id": l, "name": "Racer", "email": format!("{l}@example.com")}),
                )
                .await
            }
        }))
        .await;
    let created = answers.iter().filter(|a| a.status.as_u16() == 201).count();
    let full = answers.iter().filter(|a| a.status.as_u16() == 409).count();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
    assert_eq!((created, full), (3, 9), "{statuses:?}");
    assert_eq!(
        crate::api_util::scalar_i64(&t, "SELECT COUNT(*) FROM members WHERE org_id = $1", &org)
            .await,
        4
    );
    t.finish().await;
}
