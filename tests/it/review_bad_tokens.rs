//! 2,000 bad review links (random, bit-flipped, truncated, extended,
//! expired by 1 s, revoked, used, paired with another reviewer's CSRF
//! secret for another request): all refused, with 0 state changes. Wrong,
//! expired and revoked links all get the very same 404 page.
use std::time::Duration;

use approvald::{
    mail::{ReviewerKind, ReviewerRef},
    store::tokens,
};
use reqwest::{Method, StatusCode};

use crate::{
    harness::TestApp,
    review_util::{
        Opened, decide, open, outbox, reviewer, state_digest, submit_ftp, wait_emails_final,
        wait_status,
    },
};

/// An org with a request in review by reviewers A and B: (request id,
/// A's token, B's token).
async fn request_with_links(t: &TestApp, org_name: &str) -> (String, String, String) {
    let (org, key, _) = t.create_org(org_name, "cn").await;
    let id = submit_ftp(t, &org, &key, "bad tokens").await;
    wait_status(t, &org, &key, &id, "in_review").await;
    let files = outbox(t);
    let rows = wait_emails_final(t, Duration::from_secs(30)).await;
    let link = |who: &str| {
        let row = rows
            .iter()
            .find(|r| r.recipient == who && r.request_id.as_deref() == Some(id.as_str()))
            .expect("review mail");
        outbox(t)
            .get(&row.id)
            .or_else(|| files.get(&row.id))
            .unwrap()
            .review_token(&t.base)
            .unwrap()
    };
    (id.clone(), link("a@example.com"), link("b@example.com"))
}

async fn issue(t: &TestApp, request: &str, reviewer_id: &str) -> String {
    let mut tx = t.app.db.begin().await.unwrap();
    let i = tokens::issue(
        &mut tx,
        request,
        &ReviewerRef {
            kind: ReviewerKind::Platform,
            id: reviewer_id.to_string(),
        },
        &approvald::store::reviewers::Authority::PlatformGroup("marketplace".into()),
        t.app.now_ms(),
        3_600_000,
    )
    .await
    .unwrap()
    .expect("request in review and reviewer active: a token is issued");
    tx.commit().await.unwrap();
    i.token
}

#[derive(Clone)]
struct Attempt {
    class: &'static str,
    token: String,
    method: Method,
    /// (csrf field, cookie) sent with a POST.
    form: Option<(String, String)>,
    want: StatusCode,
}

/// Deterministic pseudo-random numbers (xorshift), so a failure replays.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_bad_tokens_all_refused_without_a_trace() {
    let t = TestApp::spawn().await;
    let a_id = reviewer(&t, "a@example.com", "en").await;
    let b_id = reviewer(&t, "b@example.com", "en").await;
    let (r1, a1, b1) = request_with_links(&t, "One").await;
    let (_r2, a2, b2) = request_with_links(&t, "Two").await;
    let (_r3, a3, b3) = request_with_links(&t, "Three").await;

    // Used: A decides request 2 (B's link on it is revoked by the decision).
    let r = decide(&t, &a2, "approve", "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    t.drain().await;
    // Revoked: newer links for A and B on request 1 supersede a1 and b1.
    let a1_new = issue(&t, &r1, &a_id).await;
    let b1_new = issue(&t, &r1, &b_id).await;
    // Expired by 1 s.
    approvald::on_db!(&t.app.db, |p| sqlx::query(
        "UPDATE review_tokens SET expires_at = $1 WHERE token_hash = $2"
    )
    .bind(t.app.now_ms() - 1000)
    .bind(tokens::hash_token(&b1_new))
    .execute(p)
    .await
    .map(|_| ()))
    .unwrap();

    let live_a1: Opened = open(&t, &a1_new).await;
    let live_a3 = open(&t, &a3).await;
    let live_b3 = open(&t, &b3).await;
    for o in [&live_a1, &live_a3, &live_b3] {
        assert_eq!(o.status, StatusCode::OK);
    }
    let form_of = |o: &Opened| (o.csrf.clone().unwrap(), o.cookie.clone().unwrap());
    let invalid_body = t
        .client
        .get(format!("{}/review/{}", t.base, "x".repeat(43)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        invalid_body.contains("This link is not valid"),
        "{invalid_body}"
    );

    let live = [a1_new.clone(), a3.clone(), b3.clone()];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let methods = [Method::GET, Method::HEAD, Method::POST];
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut push = |class: &'static str,
                    token: String,
                    want: StatusCode,
                    i: usize,
                    form: Option<(String, String)>| {
        let method = methods[i % 3].clone();
        let form = if method == Method::POST {
            Some(form.unwrap_or_else(|| form_of(&live_a1)))
        } else {
            None
        };
        attempts.push(Attempt {
            class,
            token,
            method,
            form,
            want,
        });
    };
    for i in 0..500 {
        let tok: String = (0..43).map(|_| ALPHABET[rng.below(64)] as char).collect();
        push("random", tok, StatusCode::NOT_FOUND, i, None);
    }
    for i in 0..450 {
        let mut tok = live[i % 3].clone().into_bytes();
        let pos = rng.below(43);
        let mut c = ALPHABET[rng.below(64)];
        if c == tok[pos] {
            c = if c == b'A' { b'B' } else { b'A' };
        }
        tok[pos] = c;
        push(
            "bit-flipped",
            String::from_utf8(tok).unwrap(),
            StatusCode::NOT_FOUND,
            i,
            None,
        );
    }
    for i in 0..300 {
        let tok = &live[i % 3];
        let n = 1 + rng.below(42);
        push(
            "truncated",
            tok[..n].to_string(),
            StatusCode::NOT_FOUND,
            i,
            None,
        );
    }
    for i in 0..100 {
        let tok = format!("{}{}", live[i % 3], ALPHABET[rng.below(64)] as char);
        push("extended", tok, StatusCode::NOT_FOUND, i, None);
    }
    for i in 0..150 {
        push(
            "expired by 1 s",
            b1_new.clone(),
            StatusCode::NOT_FOUND,
            i,
            None,
        );
    }
    for i in 0..150 {
        let tok = if i % 2 == 0 { a1.clone() } else { b1.clone() };
        push("revoked", tok, StatusCode::NOT_FOUND, i, None);
    }
    for i in 0..150 {
        // The link that decided request 2, and the other link on it: they
        // say who decided (409) and change nothing.
        let tok = if i % 2 == 0 { a2.clone() } else { b2.clone() };
        push("used", tok, StatusCode::CONFLICT, i, None);
    }
    for i in 0..200 {
        // A live link posted with another reviewer's secrets for another request.
        let (tok, other) = if i % 2 == 0 {
            (a1_new.clone(), &live_b3)
        } else {
            (b3.clone(), &live_a1)
        };
        attempts.push(Attempt {
            class: "foreign",
            token: tok,
            method: Method::POST,
            form: Some(form_of(other)),
            want: StatusCode::FORBIDDEN,
        });
    }
    assert_eq!(attempts.len(), 2000);

    let before = state_digest(&t).await;
    let mut refused = 0;
    for chunk in attempts.chunks(40) {
        let mut set = tokio::task::JoinSet::new();
        for a in chunk.iter().cloned() {
            let (client, base) = (t.client.clone(), t.base.clone());
            set.spawn(async move {
                let url = format!("{base}/review/{}", a.token);
                let mut req = client.request(a.method.clone(), url);
                if let Some((csrf, cookie)) = &a.form {
                    req = req
                        .header("content-type", "application/x-www-form-urlencoded")
                        .header("cookie", cookie)
                        .body(format!("decision=approve&comment=&csrf={csrf}"));
                }
                let r = req.send().await.unwrap();
                let status = r.status();
                (a, status, r.text().await.unwrap())
            });
        }
        while let Some(res) = set.join_next().await {
            let (a, status, body) = res.unwrap();
            assert_eq!(
                status, a.want,
                "{} {} ({}): {body}",
                a.method, a.token, a.class
            );
            assert!(status.is_client_error());
            if a.want == StatusCode::NOT_FOUND && a.method != Method::HEAD {
                assert_eq!(body, invalid_body, "{} link: not the same page", a.class);
            }
            refused += 1;
        }
    }
    assert_eq!(refused, 2000);
    assert_eq!(state_digest(&t).await, before, "a bad link changed state");
    // The live links still work.
    assert_eq!(open(&t, &a1_new).await.status, StatusCode::OK);
    assert_eq!(open(&t, &b3).await.status, StatusCode::OK);
    t.finish().await;
}
