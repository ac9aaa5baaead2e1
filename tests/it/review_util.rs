//! Helpers shared by the `review_*` and `mail_*` tests.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Resp, TestApp},
    mail_server::{Parsed, parse},
};

/// A platform reviewer in group `marketplace` with `locale`.
pub async fn reviewer(t: &TestApp, email: &str, locale: &str) -> String {
    t.post(
        "/v1/reviewers",
        &t.platform_key,
        json!({"email": email, "name": format!("Rev {}", email.split('@').next().unwrap()), "locale": locale, "groups": ["marketplace"]}),
    )
    .await
    .expect(201)
    .json()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Submit an `ftp_access` request (reviewed by platform group `marketplace`)
/// and return its id.
pub async fn submit_ftp(t: &TestApp, org: &str, key: &str, remark: &str) -> String {
    let body = json!({
        "kind": "ftp_access",
        "remark": remark,
        "documents": [{"type": "business_plan", "name": "Plan <2026>.pdf", "url": "https://files.example.com/plan.pdf?x=1&y=2"}]
    });
    let r = t
        .post(&format!("/v1/orgs/{org}/requests"), key, body)
        .await
        .expect(202)
        .json();
    r["id"].as_str().expect("request id").to_string()
}

pub async fn request(t: &TestApp, org: &str, key: &str, id: &str) -> Value {
    t.get(&format!("/v1/orgs/{org}/requests/{id}"), key)
        .await
        .expect(200)
        .json()
}

/// Poll until the request has `status`.
pub async fn wait_status(t: &TestApp, org: &str, key: &str, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = request(t, org, key, id).await;
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

/// Every `.eml` in the outbox, parsed, by file stem (= email id).
pub fn outbox(t: &TestApp) -> BTreeMap<String, Parsed> {
    let Ok(rd) = std::fs::read_dir(&t.outbox) else {
        return BTreeMap::new();
    };
    rd.filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .map(|p| {
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            (stem, parse(&std::fs::read(&p).unwrap()))
        })
        .collect()
}

/// One `emails` row, as the tests see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EmailRow {
    pub id: String,
    pub message_id: String,
    pub request_id: Option<String>,
    pub template: String,
    pub recipient: String,
    pub locale: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
}

pub async fn emails(t: &TestApp) -> Vec<EmailRow> {
    approvald::on_db!(&t.app.db, |p| sqlx::query_as::<_, EmailRow>(
        "SELECT id, message_id, request_id, template, recipient, locale, status, attempts, last_error FROM emails ORDER BY created_at, id"
    )
    .fetch_all(p)
    .await)
    .expect("emails")
}

/// Wait until every email row is out of `pending`.
pub async fn wait_emails_final(t: &TestApp, timeout: Duration) -> Vec<EmailRow> {
    let deadline = Instant::now() + timeout;
    loop {
        let e = emails(t).await;
        if !e.is_empty() && e.iter().all(|r| r.status != "pending") {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "emails still pending after {timeout:?}: {e:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything a review link could change, as one string: the rows of every
/// table a decision touches, plus the job count. Equal digests = no change.
pub async fn state_digest(t: &TestApp) -> String {
    let mut out = String::new();
    let queries: &[&str] = &[
        "SELECT id || '|' || status || '|' || COALESCE(decided_by, '') || '|' || COALESCE(CAST(decided_at AS TEXT), '') || '|' || \
         COALESCE(decision_comment, '') || '|' || CAST(updated_at AS TEXT) FROM requests ORDER BY id",
        "SELECT id || '|' || type || '|' || detail FROM request_events ORDER BY id",
        "SELECT token_hash || '|' || COALESCE(CAST(used_at AS TEXT), '') || '|' || COALESCE(CAST(revoked_at AS TEXT), '') || '|' || \
         CAST(expires_at AS TEXT) FROM review_tokens ORDER BY token_hash",
        "SELECT id || '|' || status || '|' || kind || '|' || member_id FROM grants ORDER BY id",
        "SELECT id || '|' || status || '|' || template FROM emails ORDER BY id",
        "SELECT id FROM outbox ORDER BY id",
    ];
    for q in queries {
        let rows: Vec<String> =
            approvald::on_db!(&t.app.db, |p| sqlx::query_scalar::<_, String>(*q)
                .fetch_all(p)
                .await)
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        out.push_str(&rows.join("\n"));
        out.push_str("\n--\n");
    }
    if t.app.queue_in_db {
        out.push_str(&format!("jobs={}", t.count("wq_jobs").await));
    }
    out
}

/// A review page, opened.
#[derive(Debug, Clone)]
pub struct Opened {
    pub status: StatusCode,
    pub body: String,
    pub csrf: Option<String>,
    /// `name=value` of the CSRF cookie the page set.
    pub cookie: Option<String>,
    pub headers: reqwest::header::HeaderMap,
}

pub async fn open(t: &TestApp, token: &str) -> Opened {
    let r = t
        .client
        .get(format!("{}/review/{token}", t.base))
        .send()
        .await
        .expect("GET review page");
    let status = r.status();
    let headers = r.headers().clone();
    let cookie = headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("approvald_csrf="))
        .map(|v| v.split(';').next().unwrap().to_string());
    let body = r.text().await.unwrap();
    let csrf = body.find("name=\"csrf\" value=\"").map(|i| {
        let rest = &body[i + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_string()
    });
    Opened {
        status,
        body,
        csrf,
        cookie,
        headers,
    }
}

/// POST a decision form to `/review/{token}`.
pub async fn post_form(
    t: &TestApp,
    token: &str,
    fields: &[(&str, &str)],
    cookie: Option<&str>,
) -> Resp {
    let body = serde_urlencoded_pairs(fields);
    let mut req = t
        .client
        .post(format!("{}/review/{token}", t.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let resp = req.send().await.expect("POST review form");
    let status = resp.status();
    let headers = resp.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Resp {
        status,
        content_type,
        headers,
        text: resp.text().await.unwrap_or_default(),
    }
}

fn serde_urlencoded_pairs(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Open the link and POST `decision` with the page's CSRF value and cookie.
pub async fn decide(t: &TestApp, token: &str, decision: &str, comment: &str) -> Resp {
    let o = open(t, token).await;
    assert_eq!(o.status, StatusCode::OK, "review page: {}", o.body);
    let csrf = o.csrf.expect("page has a CSRF field");
    post_form(
        t,
        token,
        &[
            ("decision", decision),
            ("comment", comment),
            ("csrf", &csrf),
        ],
        o.cookie.as_deref(),
    )
    .await
}
