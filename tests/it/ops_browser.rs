//! The dashboard in headless Chromium (Debian `chromium` + `chromium-driver`,
//! driven through chromedriver's WebDriver HTTP API) at 390 px and 1280 px:
//! sign in, read the Now page, re-drive a dead job by clicking, and run
//! axe-core on every page (no serious or critical violation). Screenshots go
//! to `tests/artifacts/ops-*.png` (docs/OPS.md shows copies).
//!
//! axe-core comes from npm: `scripts/test` installs it into `.test-tools/`
//! (or point `AXE_CORE_JS` at an `axe.min.js`).
use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use base64::Engine;
use serde_json::{Value, json};

use crate::{
    harness::TestApp,
    ops_util::{clear_dead, doomed_job, operator_key, wait_dead},
    review_util::{reviewer, submit_ftp, wait_emails_final, wait_status},
};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn axe_source() -> String {
    let path = std::env::var("AXE_CORE_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(".test-tools/node_modules/axe-core/axe.min.js")
        });
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "axe-core is required for the accessibility check ({}: {e}); run scripts/test, or \
             npm install --prefix .test-tools axe-core@4",
            path.display()
        )
    })
}

struct Driver {
    child: tokio::process::Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Driver {
    async fn start(width: u32) -> Driver {
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
            .timeout(Duration::from_secs(90))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "timeouts": {"script": 60000},
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-dev-shm-usage", format!("--window-size={width},1000"),
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

    async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
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

    async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let src = self.source().await;
            if src.contains(needle) {
                return src;
            }
            assert!(
                Instant::now() < deadline,
                "page never showed {needle:?}: {src}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

    /// axe-core's serious and critical violations on the current page.
    async fn axe(&self, axe_js: &str) -> Vec<Value> {
        let script = format!(
            "{axe_js}\n;if (typeof axe !== 'undefined') {{ window.axe = axe; }} return typeof window.axe;"
        );
        let kind = self
            .call(
                reqwest::Method::POST,
                "/execute/sync",
                Some(json!({"script": script, "args": []})),
            )
            .await;
        assert_eq!(kind, "object", "axe-core did not load");
        let run = "const done = arguments[arguments.length - 1];\
            window.axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}})\
              .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,\
                 nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))))\
              .catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e)}]));";
        let v = self
            .call(
                reqwest::Method::POST,
                "/execute/async",
                Some(json!({"script": run, "args": []})),
            )
            .await;
        v.as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
            .collect()
    }

    async fn quit(mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.http.delete(url).send().await;
        let _ = self.child.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_reads_now_and_redrives_a_dead_job_by_clicking() {
    let axe_js = axe_source();
    let t = TestApp::spawn().await;
    let (org, key, _) = t.create_org("Browser Ops Co", "cn").await;
    reviewer(&t, "ops-browser@example.com", "en").await;
    let id = submit_ftp(&t, &org, &key, "shown on the dashboard").await;
    wait_status(&t, &org, &key, &id, "in_review").await;
    wait_emails_final(&t, Duration::from_secs(30)).await;
    doomed_job(&t, 1).await;
    wait_dead(&t, "notify", 1).await;
    let op_key = operator_key(&t, false).await;

    let mut report = Vec::new();
    for width in [390u32, 1280] {
        let d = Driver::start(width).await;
        d.goto(&format!("{}/ops", t.base)).await;
        assert!(d.url().await.ends_with("/ops/login"), "sent to sign in");
        let login = d.axe(&axe_js).await;
        assert!(login.is_empty(), "{width} px /ops/login: {login:#?}");
        d.type_into("#key", &op_key).await;
        d.click("form.stack button[type=submit]").await;
        let now = d.wait_for("<h1>Now</h1>").await;
        assert!(now.contains("SLA at risk"));
        assert!(now.contains("dead jobs"));
        d.screenshot(&format!("ops-now-{width}.png")).await;

        // axe-core on every page.
        for page in [
            "/ops".to_string(),
            "/ops/requests".to_string(),
            format!("/ops/requests/{id}"),
            "/ops/reviewers".to_string(),
            "/ops/queues".to_string(),
            "/ops/charts?range=7d".to_string(),
        ] {
            d.goto(&format!("{}{page}", t.base)).await;
            d.wait_for("</main>").await;
            let bad = d.axe(&axe_js).await;
            assert!(bad.is_empty(), "{width} px {page}: {bad:#?}");
            report.push(format!("{width}px {page}: 0 serious/critical"));
        }
        d.goto(&format!("{}/ops/requests/{id}", t.base)).await;
        d.screenshot(&format!("ops-request-{width}.png")).await;
        d.goto(&format!("{}/ops/charts?range=24h", t.base)).await;
        d.screenshot(&format!("ops-charts-{width}.png")).await;

        // Re-drive the dead job: its row's button, then the confirmation.
        d.goto(&format!("{}/ops/queues", t.base)).await;
        d.wait_for("Re-drive all 1").await;
        d.screenshot(&format!("ops-queues-{width}.png")).await;
        d.click("button[name=one]").await;
        let confirm = d.wait_for("Re-drive 1 dead job of notify?").await;
        assert!(confirm.contains("id=\"confirm\""));
        let bad = d.axe(&axe_js).await;
        assert!(bad.is_empty(), "{width} px confirm: {bad:#?}");
        d.screenshot(&format!("ops-confirm-{width}.png")).await;
        d.click("#confirm").await;
        d.wait_for("Re-drove 1 of 1 dead jobs of notify.").await;
        // The re-driven job ran again (and died again: its mail is missing).
        wait_dead(&t, "notify", 1).await;
        d.quit().await;
    }
    println!("{}", report.join("\n"));
    clear_dead(&t).await;
    t.finish().await;
}
