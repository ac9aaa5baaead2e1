//! An operator's browser, without a browser: a cookie-keeping HTTP client
//! that signs in at `/ops/login` and posts the dashboard's forms.
#![allow(dead_code)]

use std::time::Duration;

use approvald::jobs::notify::NotifyJob;
use approvald_workers::PushOptions;
use reqwest::StatusCode;

use crate::harness::{Resp, TestApp};

pub struct Ops {
    pub http: reqwest::Client,
    pub base: String,
    pub csrf: String,
}

/// The value of the first hidden `csrf` field in a page.
pub fn csrf_of(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let i = html
        .find(marker)
        .unwrap_or_else(|| panic!("no csrf field in the page: {html}"))
        + marker.len();
    html[i..].split('"').next().unwrap().to_string()
}

pub async fn read(r: reqwest::Response) -> Resp {
    let status = r.status();
    let headers = r.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = r.text().await.unwrap_or_default();
    Resp {
        status,
        content_type,
        headers,
        text,
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub async fn operator_key(t: &TestApp, read_only: bool) -> String {
    approvald::store::keys::create_operator(&t.app.db, read_only, t.app.now_ms())
        .await
        .expect("operator key")
}

impl Ops {
    /// Sign in with `key`; panics unless the dashboard accepts it.
    pub async fn sign_in(t: &TestApp, key: &str) -> Ops {
        let (ops, resp) = Self::try_sign_in(t, key).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER, "sign-in: {}", resp.text);
        ops.expect("signed in")
    }

    /// Sign in; returns the client (None unless accepted) and the answer.
    pub async fn try_sign_in(t: &TestApp, key: &str) -> (Option<Ops>, Resp) {
        let http = client();
        let form = read(
            http.get(format!("{}/ops/login", t.base))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.text);
        let token = csrf_of(&form.text);
        let resp = read(
            http.post(format!("{}/ops/login", t.base))
                .header("origin", &t.base)
                .form(&[("key", key), ("csrf", &token)])
                .send()
                .await
                .unwrap(),
        )
        .await;
        if resp.status != StatusCode::SEE_OTHER {
            return (None, resp);
        }
        let mut ops = Ops {
            http,
            base: t.base.clone(),
            csrf: String::new(),
        };
        let now = ops.get("/ops").await;
        assert_eq!(now.status, StatusCode::OK, "{}", now.text);
        ops.csrf = csrf_of(&now.text);
        (Some(ops), resp)
    }

    pub async fn get(&self, path: &str) -> Resp {
        read(
            self.http
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// POST a form from our own origin with the session's CSRF token.
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let mut form: Vec<(&str, &str)> = vec![("csrf", &self.csrf)];
        form.extend_from_slice(fields);
        read(
            self.http
                .post(format!("{}{path}", self.base))
                .header("origin", &self.base)
                .form(&form)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// POST with full control over the headers and fields (refusal tests).
    pub async fn post_raw(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        fields: &[(&str, &str)],
    ) -> Resp {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(fields);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        read(req.send().await.unwrap()).await
    }
}

/// Push a notify job for a mail that does not exist: it dies at its first
/// attempt with the error "email ... does not exist".
pub async fn doomed_job(t: &TestApp, n: usize) {
    for i in 0..n {
        t.app
            .queue
            .push(
                &NotifyJob {
                    email_id: format!("missing-{i}-{}", uuid::Uuid::new_v4()),
                },
                PushOptions::default(),
            )
            .await
            .expect("push");
    }
}

pub async fn wait_dead(t: &TestApp, queue: &str, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = t.app.queue.stats(queue).await.unwrap();
        if s.dead == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {n} dead jobs in {queue}, have {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Discard every dead job this test made on purpose (so `finish` can check
/// that nothing else died).
pub async fn clear_dead(t: &TestApp) {
    for q in approvald::jobs::QUEUES {
        for d in t.app.queue.list_dead(q, 1000).await.unwrap() {
            t.app.queue.discard_dead(q, &d.id).await.unwrap();
        }
    }
}
