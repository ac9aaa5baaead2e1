//! The review page: GET and HEAD change nothing (mail scanners), 50
//! concurrent decisions produce exactly one, CSRF and explicit decisions are
//! required, headers are strict, self-review is refused.
use std::time::Duration;

use reqwest::StatusCode;

use crate::{
    harness::TestApp,
    review_util::{
        decide, emails, open, outbox, post_form, reviewer, state_digest, submit_ftp,
        wait_emails_final, wait_status,
    },
};

/// An org with a request in review by two platform reviewers; returns
/// (org, key, request id, [token of reviewer 1, token of reviewer 2]).
async fn in_review(t: &TestApp) -> (String, String, String, Vec<String>) {
    let (org, key, _) = t.create_org("Review Co", "cn").await;
    reviewer(t, "r1@example.com", "en").await;
    reviewer(t, "r2@example.com", "en").await;
    let id = submit_ftp(t, &org, &key, "Line one\n<b>not bold</b> & more").await;
    wait_status(t, &org, &key, &id, "in_review").await;
    let rows = wait_emails_final(t, Duration::from_secs(30)).await;
    let files = outbox(t);
    let mut tokens = Vec::new();
    for who in ["r1@example.com", "r2@example.com"] {
        let row = rows.iter().find(|r| r.recipient == who).unwrap();
        tokens.push(files[&row.id].review_token(&t.base).unwrap());
    }
    (org, key, id, tokens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_head_change_nothing() {
    let t = TestApp::spawn().await;
    let (_org, _key, _id, tokens) = in_review(&t).await;
    let before = state_digest(&t).await;
    let follow = reqwest::Client::builder().build().unwrap();
    for tok in &tokens {
        let url = format!("{}/review/{tok}", t.base);
        for _ in 0..3 {
            let g = open(&t, tok).await;
            assert_eq!(g.status, StatusCode::OK);
            let h = t.client.head(&url).send().await.unwrap();
            assert_eq!(h.status(), StatusCode::OK);
            let f = follow.get(&url).send().await.unwrap();
            assert_eq!(f.status(), StatusCode::OK);
            let q = follow
                .get(format!("{url}?decision=approve&csrf=x"))
                .send()
                .await
                .unwrap();
            assert_eq!(
                q.status(),
                StatusCode::OK,
                "query strings are ignored by GET"
            );
        }
    }
    assert_eq!(state_digest(&t).await, before, "GET/HEAD changed state");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_shows_the_request_safely_with_strict_headers() {
    let t = TestApp::spawn().await;
    let (_org, _key, _id, tokens) = in_review(&t).await;
    let o = open(&t, &tokens[0]).await;
    assert_eq!(o.status, StatusCode::OK);
    let h = |n: &str| {
        o.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(h("referrer-policy"), "no-referrer");
    assert_eq!(h("cache-control"), "no-store");
    assert_eq!(h("x-frame-options"), "DENY");
    let csp = h("content-security-policy");
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script") && !csp.contains("unsafe"),
        "{csp}"
    );
    let cookie = o
        .headers
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("SameSite=Strict") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    assert!(
        cookie.contains(&format!("Path=/review/{}", tokens[0])),
        "{cookie}"
    );
    let b = &o.body;
    assert!(
        b.contains("FTP access") && b.contains("Review Co") && b.contains("R0000"),
        "{b}"
    );
    assert!(
        b.contains("&lt;b&gt;not bold&lt;&#x2f;b&gt;") || b.contains("&lt;b&gt;not bold&lt;/b&gt;"),
        "remark escaped: {b}"
    );
    assert!(!b.contains("<b>not bold"), "remark escaped");
    assert!(
        b.contains("https://files.example.com/plan.pdf?x=1&amp;y=2"),
        "document URL shown as text: {b}"
    );
    assert!(
        !b.contains("href=\"https://files"),
        "document links are inert"
    );
    assert!(
        !b.contains("<script") && !b.contains("src="),
        "no script, no external assets"
    );
    assert!(!b.contains(" checked"), "no default decision");
    assert!(b.contains("(UTC+08:00)"), "due time in the org's zone: {b}");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_decisions_exactly_one_wins() {
    let t = TestApp::spawn().await;
    let (org, key, id, tokens) = in_review(&t).await;
    let a = open(&t, &tokens[0]).await;
    let b = open(&t, &tokens[1]).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (tok, page, decision) = if i % 2 == 0 {
            (&tokens[0], &a, "approve")
        } else {
            (&tokens[1], &b, "reject")
        };
        let (client, base) = (t.client.clone(), t.base.clone());
        let (tok, csrf, cookie) = (
            tok.clone(),
            page.csrf.clone().unwrap(),
            page.cookie.clone().unwrap(),
        );
        tasks.push(tokio::spawn(async move {
            let body = format!("decision={decision}&comment=reason+{i}&csrf={csrf}");
            let r = client
                .post(format!("{base}/review/{tok}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("cookie", cookie)
                .body(body)
                .send()
                .await
                .unwrap();
            r.status()
        }));
    }
    let mut ok = 0;
    let mut conflict = 0;
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => conflict += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, conflict), (1, 49));
    let req = crate::review_util::request(&t, &org, &key, &id).await;
    let status = req["status"].as_str().unwrap().to_string();
    assert!(status == "approved" || status == "rejected", "{req:#}");
    let decisions = req["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "approved" || e["type"] == "rejected")
        .count();
    assert_eq!(decisions, 1, "{req:#}");
    let grants = t.count("grants").await;
    assert_eq!(grants, if status == "approved" { 1 } else { 0 });
    t.drain().await;
    let outcome = emails(&t)
        .await
        .into_iter()
        .filter(|e| e.template == "approved" || e.template == "rejected")
        .count();
    assert_eq!(outcome, 1, "one outcome mail");
    // Every later attempt, with either link, sees who decided.
    for tok in &tokens {
        let again = open(&t, tok).await;
        assert_eq!(again.status, StatusCode::CONFLICT);
        assert!(
            again.body.contains("already been decided") && again.body.contains("Rev r"),
            "{}",
            again.body
        );
        let r = decide_closed(
            &t,
            tok,
            a.csrf.as_deref().unwrap(),
            a.cookie.as_deref().unwrap(),
        )
        .await;
        assert_eq!(r, StatusCode::CONFLICT);
    }
    t.finish().await;
}

async fn decide_closed(t: &TestApp, tok: &str, csrf: &str, cookie: &str) -> StatusCode {
    post_form(
        t,
        tok,
        &[("decision", "approve"), ("csrf", csrf)],
        Some(cookie),
    )
    .await
    .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_and_an_explicit_decision_are_required() {
    let t = TestApp::spawn().await;
    let (org, key, id, tokens) = in_review(&t).await;
    let tok = &tokens[0];
    let o = open(&t, tok).await;
    let (csrf, cookie) = (o.csrf.clone().unwrap(), o.cookie.clone().unwrap());
    let before = state_digest(&t).await;
    type Case<'a> = (Vec<(&'a str, &'a str)>, Option<&'a str>, u16);
    let cases: Vec<Case> = vec![
        (vec![("decision", "approve")], Some(&cookie), 403), // no CSRF field
        (vec![("decision", "approve"), ("csrf", &csrf)], None, 403), // no cookie
        (
            vec![("decision", "approve"), ("csrf", "x")],
            Some(&cookie),
            403,
        ), // wrong field
        (
            vec![("decision", "approve"), ("csrf", &csrf)],
            Some("approvald_csrf=x"),
            403,
        ), // wrong cookie
        (vec![("csrf", &csrf)], Some(&cookie), 422),         // no decision
        (
            vec![("decision", "maybe"), ("csrf", &csrf)],
            Some(&cookie),
            422,
        ), // bad decision
        (
            vec![("decision", "reject"), ("csrf", &csrf)],
            Some(&cookie),
            422,
        ), // reject without a reason
        (
            vec![("decision", "reject"), ("comment", "   "), ("csrf", &csrf)],
            Some(&cookie),
            422,
        ),
    ];
    for (fields, cookie, want) in cases {
        let r = post_form(&t, tok, &fields, cookie).await;
        assert_eq!(r.status.as_u16(), want, "{fields:?}: {}", r.text);
        assert!(r.content_type.starts_with("text/html"));
    }
    let nul = format!("decision=reject&comment=a%00b&csrf={csrf}");
    let r = t
        .client
        .post(format!("{}/review/{tok}", t.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", &cookie)
        .body(nul)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        state_digest(&t).await,
        before,
        "refused posts changed state"
    );
    // The form still works, and a rejection reaches the requester with its reason.
    let r = decide(&t, tok, "reject", "Licence missing").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let req = wait_status(&t, &org, &key, &id, "rejected").await;
    assert_eq!(req["decided_by"], "Rev r1");
    t.drain().await;
    let rows = wait_emails_final(&t, Duration::from_secs(30)).await;
    let rejected = rows
        .iter()
        .find(|r| r.template == "rejected")
        .expect("rejection mail");
    let mail = &outbox(&t)[&rejected.id];
    assert!(mail.text.contains("Licence missing"), "{}", mail.text);
    assert_eq!(t.count("grants").await, 0);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_reviews_their_own_request() {
    use approvald::{
        mail::{ReviewerKind, ReviewerRef},
        store::tokens,
    };
    let t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Self Co", "cn").await;
    // The owner (an admin) asks for payment permission for themself.
    let r = t
        .post(
            &format!("/v1/orgs/{org}/requests"),
            &key,
            serde_json::json!({"kind": "payment_permission", "requester": owner, "remark": "me"}),
        )
        .await
        .expect(202)
        .json();
    let id = r["id"].as_str().unwrap().to_string();
    t.drain().await;
    // The review job never asks the requester; forge a link for them anyway
    // to prove decide() refuses it.
    let status = crate::review_util::request(&t, &org, &key, &id).await["status"]
        .as_str()
        .unwrap()
        .to_string();
    if status != "in_review" {
        approvald::on_db!(&t.app.db, |p| sqlx::query(
            "UPDATE requests SET status = 'in_review' WHERE id = $1"
        )
        .bind(&id)
        .execute(p)
        .await
        .map(|_| ()))
        .unwrap();
    }
    let links: i64 = approvald::on_db!(&t.app.db, |p| sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM review_tokens WHERE request_id = $1 AND reviewer_id = $2"
    )
    .bind(&id)
    .bind(&owner)
    .fetch_one(p)
    .await)
    .unwrap();
    assert_eq!(links, 0, "the requester got no link");
    let me = ReviewerRef {
        kind: ReviewerKind::Member,
        id: owner.clone(),
    };
    let mut tx = t.app.db.begin().await.unwrap();
    let refused = tokens::issue(
        &mut tx,
        &id,
        &me,
        &approvald::jobs::review::authority_for(&t.app, "payment_permission", &org, Some(&owner)),
        t.app.now_ms(),
        3_600_000,
    )
    .await
    .unwrap();
    assert!(refused.is_none(), "no link is issued to the requester");
    // Forge one anyway, as if the requester were any admin.
    let anyone = approvald::store::reviewers::Authority::OrgAdmin {
        org_id: org.clone(),
        requester_id: None,
    };
    let issued = tokens::issue(&mut tx, &id, &me, &anyone, t.app.now_ms(), 3_600_000)
        .await
        .unwrap()
        .expect("request in review and owner active: a token is issued");
    tx.commit().await.unwrap();
    let before = state_digest(&t).await;
    let o = open(&t, &issued.token).await;
    assert_eq!(o.status, StatusCode::FORBIDDEN, "{}", o.body);
    let r = crate::review_util::post_form(
        &t,
        &issued.token,
        &[("decision", "approve"), ("comment", ""), ("csrf", "x")],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    // decide() itself refuses it too, whatever the page does.
    use approvald::store::decisions::{DecideError, Decider, ReviewerDecider};
    let d = approvald::store::decisions::decide(
        &t.app,
        &id,
        Decider::Reviewer(ReviewerDecider {
            kind: ReviewerKind::Member,
            id: owner.clone(),
            name: "Owner".into(),
            token_hash: Some(issued.hash.clone()),
        }),
        approvald::domain::request::Decision::Approve,
        "",
    )
    .await;
    assert!(matches!(d, Err(DecideError::SelfReview)), "{d:?}");
    assert_eq!(state_digest(&t).await, before);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_stop_when_the_reviewer_is_removed_or_disabled() {
    let t = TestApp::spawn().await;
    // A platform reviewer removed: their link stops at once.
    let (_org, _key, _id, tokens) = in_review(&t).await;
    assert_eq!(open(&t, &tokens[0]).await.status, StatusCode::OK);
    approvald::on_db!(&t.app.db, |p| sqlx::query(
        "UPDATE reviewers SET status = 'removed' WHERE email = 'r1@example.com'"
    )
    .execute(p)
    .await
    .map(|_| ()))
    .unwrap();
    let gone = open(&t, &tokens[0]).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert!(gone.body.contains("This link is not valid"));
    assert_eq!(
        open(&t, &tokens[1]).await.status,
        StatusCode::OK,
        "the other reviewer is unaffected"
    );

    // An org admin reviewing a member's payment request, then disabled.
    let (org, key, owner) = t.create_org("Members Co", "cn").await;
    let admin = crate::api_util::add_member(&t, &org, &key, "admin").await;
    let member = crate::api_util::add_member(&t, &org, &key, "member").await;
    let id = t
        .post(
            &format!("/v1/orgs/{org}/requests"),
            &key,
            serde_json::json!({"kind": "payment_permission", "requester": member["id"], "remark": "pay"}),
        )
        .await
        .expect(202)
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_status(&t, &org, &key, &id, "in_review").await;
    let rows = wait_emails_final(&t, Duration::from_secs(30)).await;
    let admin_email = admin["email"].as_str().unwrap();
    let row = rows
        .iter()
        .find(|r| r.recipient == admin_email)
        .expect("the admin is asked");
    let token = outbox(&t)[&row.id].review_token(&t.base).unwrap();
    assert_eq!(open(&t, &token).await.status, StatusCode::OK);
    let admin_id = admin["id"].as_str().unwrap();
    let r = t
        .post_as(
            &format!("/v1/orgs/{org}/members/{admin_id}/disable"),
            &key,
            &owner,
            serde_json::json!({}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let gone = open(&t, &token).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.body);
    t.finish().await;
}

/// A link is issued only while the request is in review and the reviewer
/// active (the notify job's token transaction locks both rows), so a cancel
/// racing a link mail can never leave a live link behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_link_is_issued_for_a_cancelled_request_or_a_removed_reviewer() {
    use approvald::{
        mail::{ReviewerKind, ReviewerRef},
        store::tokens,
    };
    let t = TestApp::spawn().await;
    let (org, key, id, _) = in_review(&t).await;
    let r1: String = approvald::on_db!(&t.app.db, |p| sqlx::query_scalar(
        "SELECT id FROM reviewers WHERE email = $1"
    )
    .bind("r1@example.com")
    .fetch_one(p)
    .await)
    .unwrap();
    let who = ReviewerRef {
        kind: ReviewerKind::Platform,
        id: r1.clone(),
    };
    let try_issue = || async {
        let mut tx = t.app.db.begin().await.unwrap();
        let needed = approvald::store::reviewers::Authority::PlatformGroup("marketplace".into());
        let i = tokens::issue(&mut tx, &id, &who, &needed, t.app.now_ms(), 3_600_000)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        i
    };
    assert!(
        try_issue().await.is_some(),
        "live request, live reviewer: issued"
    );
    t.post(
        &format!("/v1/orgs/{org}/requests/{id}/cancel"),
        &key,
        serde_json::json!({}),
    )
    .await
    .expect(200);
    let live_before: i64 = approvald::on_db!(&t.app.db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM review_tokens WHERE request_id = $1 AND used_at IS NULL AND revoked_at IS NULL"
    )
    .bind(&id)
    .fetch_one(p)
    .await)
    .unwrap();
    assert_eq!(live_before, 0, "cancel revoked every link");
    assert!(
        try_issue().await.is_none(),
        "no link for a cancelled request"
    );
    let live_after: i64 = approvald::on_db!(&t.app.db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM review_tokens WHERE request_id = $1 AND used_at IS NULL AND revoked_at IS NULL"
    )
    .bind(&id)
    .fetch_one(p)
    .await)
    .unwrap();
    assert_eq!(live_after, 0);

    // A second request in review; removing reviewer 1 revokes their link now
    // and no new one can be issued to them.
    let id2 = submit_ftp(&t, &org, &key, "second").await;
    wait_status(&t, &org, &key, &id2, "in_review").await;
    wait_emails_final(&t, Duration::from_secs(30)).await;
    let live_for = |rid: String| {
        let t = &t;
        async move {
            approvald::on_db!(&t.app.db, |p| sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM review_tokens WHERE reviewer_id = $1 AND used_at IS NULL AND revoked_at IS NULL"
            )
            .bind(&rid)
            .fetch_one(p)
            .await)
            .unwrap()
        }
    };
    assert_eq!(
        live_for(r1.clone()).await,
        1,
        "reviewer 1 holds the second request's link"
    );
    let out = t
        .post(
            &format!("/v1/reviewers/{r1}/remove"),
            &t.platform_key,
            serde_json::json!({}),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(out["status"], "removed");
    assert_eq!(
        live_for(r1.clone()).await,
        0,
        "removal revoked the link at once"
    );
    let mut tx = t.app.db.begin().await.unwrap();
    let needed = approvald::store::reviewers::Authority::PlatformGroup("marketplace".into());
    let again = tokens::issue(&mut tx, &id2, &who, &needed, t.app.now_ms(), 3_600_000)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(again.is_none(), "no link for a removed reviewer");
    // Org keys cannot remove platform reviewers.
    t.post(
        &format!("/v1/reviewers/{r1}/remove"),
        &key,
        serde_json::json!({}),
    )
    .await
    .assert_problem();
    let mut t = t;
    t.stop().await;
}
