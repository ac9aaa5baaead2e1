//! Invariant 5: an org's key sees and changes only its own org; anything
//! else is 404, exactly as if it did not exist. Keys: 401 without a valid
//! one, 403 for platform operations with an org key.
use reqwest::Method;
use serde_json::json;

use crate::{
    api_util::{add_member, counts, submit, wait_status},
    harness::TestApp,
};

#[tokio::test]
async fn org_key_gets_404_for_another_orgs_everything() {
    let mut t = TestApp::spawn().await;
    let (a, key_a, owner_a) = t.create_org("Org A", "cn").await;
    let (b, key_b, owner_b) = t.create_org("Org B", "jp").await;
    let req_b = submit(
        &t,
        &b,
        &key_b,
        json!({"kind": "ftp_access", "remark": "B's request"}),
    )
    .await
    .expect(202)
    .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let member_b = add_member(&t, &b, &key_b, "member").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Let the review job finish first, so the counts below only see this test's calls.
    wait_status(&t, &b, &key_b, &req_b, "in_review").await;
    let before = counts(&t).await;

    let gets = [
        format!("/v1/orgs/{b}"),
        format!("/v1/orgs/{b}/requests"),
        format!("/v1/orgs/{b}/requests/{req_b}"),
        format!("/v1/orgs/{a}/requests/{req_b}"),
        format!("/v1/orgs/{b}/members"),
        format!("/v1/orgs/{b}/members/{member_b}"),
        format!("/v1/orgs/{a}/members/{member_b}"),
        format!("/v1/orgs/{a}/members/{owner_b}"),
        format!("/v1/orgs/{b}/grants"),
        format!("/v1/orgs/{b}/grants?all=true"),
        format!("/v1/orgs/{b}/audit"),
    ];
    for path in &gets {
        // Acting for A's owner: the org boundary holds for any actor.
        let r = t.get_as(path, &key_a, &owner_a).await;
        assert_eq!(r.status.as_u16(), 404, "GET {path}: {}", r.text);
        r.assert_problem();
    }
    let posts = [
        (
            Method::POST,
            format!("/v1/orgs/{b}/requests"),
            json!({"kind": "ftp_access", "remark": "sneaky"}),
        ),
        (
            Method::POST,
            format!("/v1/orgs/{b}/requests/{req_b}/cancel"),
            json!({}),
        ),
        (
            Method::POST,
            format!("/v1/orgs/{a}/requests/{req_b}/cancel"),
            json!({}),
        ),
        (
            Method::POST,
            format!("/v1/orgs/{b}/members"),
            json!({"login_id": "intruder1", "name": "I", "email": "i@example.com"}),
        ),
        (
            Method::PATCH,
            format!("/v1/orgs/{b}/members/{member_b}"),
            json!({"name": "Renamed"}),
        ),
        (
            Method::PATCH,
            format!("/v1/orgs/{a}/members/{member_b}"),
            json!({"name": "Renamed"}),
        ),
        (
            Method::POST,
            format!("/v1/orgs/{b}/members/{member_b}/disable"),
            json!({}),
        ),
        (
            Method::POST,
            format!("/v1/orgs/{a}/members/{member_b}/disable"),
            json!({}),
        ),
        (
            Method::POST,
            format!("/v1/orgs/{b}/members/{member_b}/enable"),
            json!({}),
        ),
        (
            Method::POST,
            format!("/v1/orgs/{b}/grants/ftp_access/revoke"),
            json!({}),
        ),
        (
            Method::POST,
            format!("/v1/orgs/{b}/audit/logins"),
            json!({"member": owner_b, "ip": "10.0.0.1", "method": "password", "success": true}),
        ),
        // A's own request naming B's member as requester: not a member of A.
        (
            Method::POST,
            format!("/v1/orgs/{a}/requests"),
            json!({"kind": "payment_permission", "requester": member_b, "remark": "x"}),
        ),
    ];
    for (method, path, body) in &posts {
        let r = t
            .call_as(method.clone(), path, &key_a, &owner_a, Some(body))
            .await;
        assert!(
            matches!(r.status.as_u16(), 404 | 422),
            "{method} {path}: {} {}",
            r.status,
            r.text
        );
        if !path.ends_with(&format!("{a}/requests")) {
            assert_eq!(r.status.as_u16(), 404, "{method} {path}: {}", r.text);
        }
        r.assert_problem();
    }
    assert_eq!(counts(&t).await, before, "nothing written");
    // B still sees its own things.
    t.get(&format!("/v1/orgs/{b}/requests/{req_b}"), &key_b)
        .await
        .expect(200);
    t.get_as(
        &format!("/v1/orgs/{b}/members/{member_b}"),
        &key_b,
        &owner_b,
    )
    .await
    .expect(200);
    t.stop().await;
}

#[tokio::test]
async fn keys_are_required_and_scoped() {
    let t = TestApp::spawn().await;
    let (a, key_a, _) = t.create_org("Org A", "cn").await;
    let before = counts(&t).await;

    // No key, a malformed header, an unknown key: 401 with WWW-Authenticate.
    let no_key = t
        .call(Method::GET, &format!("/v1/orgs/{a}/requests"), None, None)
        .await;
    let unknown = format!("apd_{}", "A".repeat(43));
    for (what, r) in [
        ("none", no_key),
        (
            "unknown",
            t.get(&format!("/v1/orgs/{a}/requests"), &unknown).await,
        ),
        (
            "garbage",
            t.get(&format!("/v1/orgs/{a}/requests"), "not-a-key").await,
        ),
        (
            "post",
            t.call(
                Method::POST,
                &format!("/v1/orgs/{a}/requests"),
                None,
                Some(&json!({"kind": "ftp_access", "remark": "x"})),
            )
            .await,
        ),
    ] {
        assert_eq!(r.status.as_u16(), 401, "{what}: {}", r.text);
        r.assert_problem();
        assert!(
            r.headers
                .get("www-authenticate")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("Bearer"),
            "{what}"
        );
    }
    let basic = t
        .client
        .get(format!("{}/v1/catalog", t.base))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status().as_u16(), 401);

    // Platform operations refuse an org key.
    for (path, body) in [
        (
            "/v1/orgs".to_string(),
            json!({"name": "X", "region": "cn", "locale": "en", "owner": {"login_id": "owner_x1", "name": "X", "email": "x@example.com"}}),
        ),
        (format!("/v1/orgs/{a}/keys"), json!({})),
        (
            "/v1/reviewers".to_string(),
            json!({"email": "r@example.com", "name": "R", "locale": "en", "groups": ["marketplace"]}),
        ),
    ] {
        let r = t.post(&path, &key_a, body).await;
        assert_eq!(r.status.as_u16(), 403, "{path}: {}", r.text);
        r.assert_problem();
    }
    // A platform key asking for an org that does not exist.
    let r = t
        .post("/v1/orgs/no-such-org/keys", &t.platform_key, json!({}))
        .await;
    assert_eq!(r.status.as_u16(), 404);
    r.assert_problem();
    assert_eq!(counts(&t).await, before, "nothing written");
    t.finish().await;
}
