//! `Idempotency-Key` on `POST /v1/orgs/{org}/requests`: the first answer is
//! replayed byte for byte; another body with the same key is refused; 20
//! concurrent duplicates make one request.
use serde_json::{Value, json};

use crate::{api_util::wait_status, harness::TestApp};

async fn post_with_key(
    t: &TestApp,
    org: &str,
    key: &str,
    idem: &str,
    body: &str,
) -> crate::harness::Resp {
    let r = t
        .client
        .post(format!("{}/v1/orgs/{org}/requests", t.base))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .header("idempotency-key", idem)
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = r.status();
    let headers = r.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let text = r.text().await.unwrap();
    crate::harness::Resp {
        status,
        content_type,
        headers,
        text,
    }
}

#[tokio::test]
async fn replay_and_different_body() {
    let mut t = TestApp::spawn().await;
    let (org, key, _) = t.create_org("Idem Co", "cn").await;
    let body = r#"{"kind": "ftp_access", "remark": "nightly uploads"}"#;
    let first = post_with_key(&t, &org, &key, "order-1", body)
        .await
        .expect(202);
    let requests = t.count("requests").await;
    assert_eq!(requests, 1);

    let second = post_with_key(&t, &org, &key, "order-1", body)
        .await
        .expect(202);
    assert_eq!(second.text, first.text, "replayed byte for byte");
    assert_eq!(second.headers.get("idempotent-replayed").unwrap(), "true");
    // The same fields in another order and spacing are the same body.
    let reordered = post_with_key(
        &t,
        &org,
        &key,
        "order-1",
        r#"{ "remark":"nightly uploads","kind":"ftp_access" }"#,
    )
    .await
    .expect(202);
    assert_eq!(reordered.text, first.text);
    assert_eq!(t.count("requests").await, 1);
    // Let the review job finish, so the counts below only see the refused call.
    let id = first.json()["id"].as_str().unwrap().to_string();
    wait_status(&t, &org, &key, &id, "in_review").await;

    let before = (
        t.count("requests").await,
        t.count("idempotency_keys").await,
        t.count("request_events").await,
    );
    let other = post_with_key(
        &t,
        &org,
        &key,
        "order-1",
        r#"{"kind": "ftp_access", "remark": "something else"}"#,
    )
    .await;
    assert_eq!(other.status.as_u16(), 422, "{}", other.text);
    other.assert_problem();
    assert!(
        other.json()["type"]
            .as_str()
            .unwrap()
            .ends_with("idempotency-key-reused")
    );
    assert_eq!(
        (
            t.count("requests").await,
            t.count("idempotency_keys").await,
            t.count("request_events").await
        ),
        before
    );

    // A retry is answered as the first time even when what it named changed
    // since: here the requester is disabled in between.
    let buyer = crate::api_util::add_member(&t, &org, &key, "member").await;
    let pay =
        json!({"kind": "payment_permission", "requester": buyer["id"], "remark": "pay suppliers"})
            .to_string();
    let first_pay = post_with_key(&t, &org, &key, "pay-1", &pay)
        .await
        .expect(202);
    let bid = buyer["id"].as_str().unwrap();
    let owner = t.owner_of(&org).await;
    t.post_as(
        &format!("/v1/orgs/{org}/members/{bid}/disable"),
        &key,
        &owner,
        json!({}),
    )
    .await
    .expect(202);
    let retry = post_with_key(&t, &org, &key, "pay-1", &pay)
        .await
        .expect(202);
    assert_eq!(retry.text, first_pay.text);
    let fresh = post_with_key(&t, &org, &key, "pay-2", &pay).await;
    assert_eq!(fresh.status.as_u16(), 422, "{}", fresh.text);

    // A new key is a new request; keys are per org.
    let new = post_with_key(
        &t,
        &org,
        &key,
        "order-2",
        r#"{"kind": "bulk_data_management", "remark": "bulk"}"#,
    )
    .await
    .expect(202);
    assert_ne!(new.json()["id"], first.json()["id"]);
    let (org_b, key_b, _) = t.create_org("Other Co", "cn").await;
    let b = post_with_key(&t, &org_b, &key_b, "order-1", body)
        .await
        .expect(202);
    assert_ne!(b.json()["id"], first.json()["id"]);
    assert_eq!(b.json()["number"], "R000001");

    // A malformed key is refused before anything is written.
    let before = t.count("requests").await;
    for bad in ["", "has space", &"k".repeat(256)] {
        let r = post_with_key(&t, &org, &key, bad, body).await;
        assert_eq!(r.status.as_u16(), 400, "{bad:?}: {}", r.text);
        r.assert_problem();
    }
    assert_eq!(t.count("requests").await, before);

    t.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_duplicates_make_one_request() {
    let mut t = TestApp::spawn().await;
    let (org, key, _) = t.create_org("Race Co", "cn").await;
    let body = r#"{"kind": "listings_over_50000", "remark": "big catalogue"}"#;
    let t_ref = &t;
    let answers = futures::future::join_all((0..20).map(|_| {
        let (org, key) = (org.clone(), key.clone());
        async move { post_with_key(t_ref, &org, &key, "race-key", body).await }
    }))
    .await;
    let mut texts = Vec::new();
    for a in answers {
        assert_eq!(a.status.as_u16(), 202, "{}", a.text);
        texts.push(a.text);
    }
    assert!(
        texts.iter().all(|x| *x == texts[0]),
        "every answer is the first one: {texts:?}"
    );
    assert_eq!(t.count("requests").await, 1);
    assert_eq!(t.count("idempotency_keys").await, 1);
    let first: Value = serde_json::from_str(&texts[0]).unwrap();
    assert_eq!(first["number"], "R000001");
    let got = wait_status(&t, &org, &key, first["id"].as_str().unwrap(), "in_review").await;
    assert_eq!(
        got["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "submitted")
            .count(),
        1
    );
    // And the next request takes the next number: no sequence was burnt visibly.
    let next = t
        .post(
            &format!("/v1/orgs/{org}/requests"),
            &key,
            json!({"kind": "ftp_access", "remark": "x"}),
        )
        .await
        .expect(202)
        .json();
    assert_eq!(next["number"], "R000002");
    t.stop().await;
}
