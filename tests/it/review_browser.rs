//! Scanner safety and a real click, in headless Chromium driven through
//! chromedriver's WebDriver HTTP API (Debian `chromium` + `chromium-driver`).
//!
//! Each review link is fetched with HEAD, GET, GET following redirects and a
//! Chromium visit with JavaScript on for 5 s: nothing changes. Then a click on
//! Approve in Chromium decides the request. Screenshots are kept under
//! `tests/artifacts/` (gitignored).
use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::TestApp,
    review_util::{
        open, outbox, reviewer, state_digest, submit_ftp, wait_emails_final, wait_status,
    },
};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

struct Driver {
    child: tokio::process::Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Driver {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is required for the browser test: apt-get install -y chromium chromium-driver"
            );
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not come up on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-dev-shm-usage", "--window-size=390,900",
                    format!("--user-data-dir={}", profile.path().display())
                ]
            }
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver refused the session: {r}"))
            .to_string();
        Driver {
            child,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("webdriver call");
        let status = r.status();
        let v: Value = r.json().await.expect("webdriver JSON");
        assert!(status.is_success(), "webdriver {path}: {status} {v}");
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|x| x.as_str())
            .expect("element id")
            .to_string()
    }

    async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }

    async fn quit(mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.http.delete(url).send().await;
        let _ = self.child.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanners_change_nothing_and_a_real_click_approves() {
    let t = TestApp::spawn().await;
    let (org, key, _) = t.create_org("Browser Co", "jp").await;
    reviewer(&t, "ja@example.com", "ja").await;
    reviewer(&t, "en@example.com", "en").await;
    let id = submit_ftp(&t, &org, &key, "Browser test remark").await;
    wait_status(&t, &org, &key, &id, "in_review").await;
    let rows = wait_emails_final(&t, Duration::from_secs(30)).await;
    let files = outbox(&t);
    let link = |who: &str| {
        let row = rows.iter().find(|r| r.recipient == who).unwrap();
        files[&row.id].review_token(&t.base).unwrap()
    };
    let tokens = [link("ja@example.com"), link("en@example.com")];

    let driver = Driver::start().await;
    let before = state_digest(&t).await;
    let follow = reqwest::Client::new();
    for tok in &tokens {
        let url = format!("{}/review/{tok}", t.base);
        assert_eq!(
            t.client.head(&url).send().await.unwrap().status(),
            StatusCode::OK
        );
        assert_eq!(open(&t, tok).await.status, StatusCode::OK);
        assert_eq!(
            follow.get(&url).send().await.unwrap().status(),
            StatusCode::OK
        );
        driver.goto(&url).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let src = driver.source().await;
        assert!(
            src.contains("id=\"approve\""),
            "the page loaded in Chromium: {src}"
        );
    }
    assert_eq!(
        state_digest(&t).await,
        before,
        "a scanner's visit changed state"
    );

    // Now a reviewer really clicks Approve, in Japanese.
    let url = format!("{}/review/{}", t.base, tokens[0]);
    driver.goto(&url).await;
    let button = driver.find("#approve").await;
    let bg = driver
        .call(
            reqwest::Method::GET,
            &format!("/element/{button}/css/background-color"),
            None,
        )
        .await;
    let bg = bg.as_str().unwrap_or_default().replace(' ', "");
    assert!(
        bg == "rgb(31,136,61)" || bg == "rgba(31,136,61,1)",
        "the page's stylesheet applies under its CSP: {bg}"
    );
    let shot = driver.screenshot("review_page_ja.png").await;
    driver
        .call(
            reqwest::Method::POST,
            &format!("/element/{button}/click"),
            Some(json!({})),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let src = driver.source().await;
        if src.contains("申請を承認し") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no confirmation after the click: {src}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = driver.screenshot("review_approved_ja.png").await;
    let req = wait_status(&t, &org, &key, &id, "approved").await;
    assert_eq!(req["decided_by"], "Rev ja");
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 1000
            && std::fs::metadata(&done).unwrap().len() > 1000
    );

    // The other reviewer's visit now shows who decided.
    driver
        .goto(&format!("{}/review/{}", t.base, tokens[1]))
        .await;
    let src = driver.source().await;
    assert!(
        src.contains("already been decided") && src.contains("Rev ja"),
        "{src}"
    );
    driver.quit().await;
    t.finish().await;
}
