//! The integration-test harness: each test starts its own daemon through
//! `approvald::start` (the same entry point as `main`) on port 0, isolated:
//!
//! - `embedded` profile (default): a fresh SQLite file in a temp dir, the queue
//!   in the same file, mail as `.eml` files in the temp dir;
//! - `production` profile (`APPROVALD_TEST_PROFILE=production`): a fresh
//!   PostgreSQL database per test on 127.0.0.1:5432 and a random Redis key
//!   prefix on 127.0.0.1:6379.
//!
//! A missing service fails the test loudly; nothing is skipped.
#![allow(dead_code)]

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use approvald::{App, Config, Role, Running};
use approvald_workers::{Clock, ManualClock, SystemClock};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Embedded,
    Production,
}

impl Profile {
    pub fn from_env() -> Self {
        match std::env::var("APPROVALD_TEST_PROFILE").as_deref() {
            Ok("production") => Profile::Production,
            Ok("embedded") | Err(_) => Profile::Embedded,
            Ok(other) => panic!("APPROVALD_TEST_PROFILE={other:?}: use embedded or production"),
        }
    }
}

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const REDIS: &str = "redis://127.0.0.1:6379/0";

/// Options for [`TestApp::spawn_with`].
#[derive(Default)]
pub struct Opts {
    /// Extra TOML merged over the test defaults.
    pub toml: String,
    /// Drive time by hand (the SLA tests).
    pub clock: Option<ManualClock>,
    pub role: Option<Role>,
}

pub struct TestApp {
    pub profile: Profile,
    pub addr: SocketAddr,
    pub base: String,
    pub app: App,
    pub dir: tempfile::TempDir,
    pub outbox: PathBuf,
    pub client: reqwest::Client,
    pub platform_key: String,
    pub config: Config,
    pub clock: Option<ManualClock>,
    role: Role,
    running: Option<Running>,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }
    #[track_caller]
    pub fn assert_problem(&self) {
        assert!(
            self.status.is_client_error(),
            "expected 4xx, got {}: {}",
            self.status,
            self.text
        );
        assert_eq!(
            self.content_type, "application/problem+json",
            "body: {}",
            self.text
        );
        let j = self.json();
        for f in ["type", "title", "status", "detail"] {
            assert!(j.get(f).is_some(), "problem body lacks {f}: {}", self.text);
        }
        assert_eq!(j["status"].as_u64(), Some(self.status.as_u16() as u64));
    }
}

fn rand_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// Create a fresh PostgreSQL database and return its URL.
pub async fn fresh_pg_database() -> String {
    use sqlx::Connection;
    let name = format!("approvald_t_{}", rand_suffix());
    let mut c = sqlx::PgConnection::connect(PG_ADMIN)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is required at {PG_ADMIN} for the production profile: {e}")
        });
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut c)
        .await
        .expect("create test database");
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

/// A connection to a fresh, migrated PostgreSQL database (store-level
/// tests that drive statements directly).
pub async fn fresh_pg_connection() -> sqlx::PgConnection {
    use sqlx::Connection;
    let url = fresh_pg_database().await;
    let pool = sqlx::PgPool::connect(&url).await.expect("test database");
    approvald::db::Db::Postgres(pool)
        .migrate()
        .await
        .expect("migrations");
    sqlx::PgConnection::connect(&url)
        .await
        .expect("test database")
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Opts::default()).await
    }

    pub async fn spawn_with(opts: Opts) -> Self {
        let profile = Profile::from_env();
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = dir.path().join("outbox");
        let (db_url, queue_url) = match profile {
            Profile::Embedded => (
                format!("sqlite://{}/approvald.db?mode=rwc", dir.path().display()),
                "sqlite".to_string(),
            ),
            Profile::Production => (fresh_pg_database().await, REDIS.to_string()),
        };
        let base_toml = format!(
            r#"
[server]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:1"
[database]
url = "{db_url}"
[queue]
url = "{queue_url}"
prefix = "t{prefix}"
lease_secs = 5
idle_poll_ms = 500
[mail]
transport = "file"
outbox_dir = "{outbox}"
[sla]
# Far away: tests run the sweep by hand.
sweep_cron = "0 0 0 1 1 * 2099"
[workers]
shutdown_timeout_secs = 5
[payments]
# Far away: the spending tests run the limits job by hand or set their own.
limits_cron = "0 0 0 1 1 * 2099"
[log]
filter = "warn"
"#,
            prefix = rand_suffix(),
            outbox = outbox.display(),
        );
        let mut config = Config::from_toml(&base_toml).expect("base test config");
        if !opts.toml.is_empty() {
            config = merge_toml(&base_toml, &opts.toml);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        // Links in emails must point at this test server.
        config.server.public_url = format!("http://{addr}");
        let clock: Arc<dyn Clock> = match &opts.clock {
            Some(c) => Arc::new(c.clone()),
            None => Arc::new(SystemClock),
        };
        let running = approvald::start(
            config.clone(),
            opts.role.unwrap_or(Role::All),
            Some(listener),
            clock,
        )
        .await
        .unwrap_or_else(|e| panic!("daemon failed to start ({profile:?}): {e:#}"));
        let app = running.app.clone();
        let platform_key = approvald::store::keys::create(
            &app.db,
            approvald::store::keys::KeyScope::Platform,
            None,
            app.now_ms(),
        )
        .await
        .expect("platform key");
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Self {
            profile,
            addr,
            base: format!("http://{addr}"),
            app,
            dir,
            outbox,
            client,
            platform_key,
            config,
            clock: opts.clock,
            role: opts.role.unwrap_or(Role::All),
            running: Some(running),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        read(req.send().await.expect("request")).await
    }

    /// A call acting for a member of the org (`Approvald-Actor: <actor>`),
    /// as org-key calls that manage members, roles and logs must be.
    pub async fn call_as(
        &self,
        method: Method,
        path: &str,
        key: &str,
        actor: &str,
        body: Option<&Value>,
    ) -> Resp {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key)
            .header("approvald-actor", actor);
        if let Some(b) = body {
            req = req.json(b);
        }
        read(req.send().await.expect("request")).await
    }

    pub async fn get_as(&self, path: &str, key: &str, actor: &str) -> Resp {
        self.call_as(Method::GET, path, key, actor, None).await
    }

    pub async fn post_as(&self, path: &str, key: &str, actor: &str, body: Value) -> Resp {
        self.call_as(Method::POST, path, key, actor, Some(&body))
            .await
    }

    /// The id of the org's owner (its super admin).
    pub async fn owner_of(&self, org: &str) -> String {
        approvald::on_db!(&self.app.db, |p| sqlx::query_scalar::<_, String>(
            "SELECT id FROM members WHERE org_id = $1 AND kind = 'super_admin'"
        )
        .bind(org)
        .fetch_one(p)
        .await)
        .unwrap_or_else(|e| panic!("owner of {org}: {e}"))
    }

    /// POST raw bytes with a content type (malformed-body tests).
    pub async fn post_raw(&self, path: &str, key: &str, content_type: &str, body: Vec<u8>) -> Resp {
        let req = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .header("content-type", content_type)
            .body(body);
        read(req.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str, key: &str) -> Resp {
        self.call(Method::GET, path, Some(key), None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(key), Some(&body)).await
    }

    /// A new org with its owner; returns (org id, org key, owner member id).
    pub async fn create_org(&self, name: &str, region: &str) -> (String, String, String) {
        let login = format!("own_{}", &rand_suffix()[..8]);
        let r = self
            .post(
                "/v1/orgs",
                &self.platform_key,
                json!({"name": name, "region": region, "locale": "en",
                       "owner": {"login_id": login, "name": format!("{name} owner"), "email": format!("{login}@example.com")}}),
            )
            .await
            .expect(201);
        let org = r.json();
        let org_id = org["id"].as_str().expect("org id").to_string();
        let owner_id = org["owner"]["id"].as_str().expect("owner id").to_string();
        let key = self
            .post(
                &format!("/v1/orgs/{org_id}/keys"),
                &self.platform_key,
                json!({}),
            )
            .await
            .expect(201)
            .json()["key"]
            .as_str()
            .expect("key")
            .to_string();
        (org_id, key, owner_id)
    }

    /// A platform reviewer in `group`.
    pub async fn create_reviewer(&self, email: &str, group: &str, lead: bool) -> String {
        let mut body = json!({"email": email, "name": format!("Reviewer {email}"), "locale": "en", "groups": [group]});
        if lead {
            body["lead_groups"] = json!([group]);
        }
        self.post("/v1/reviewers", &self.platform_key, body)
            .await
            .expect(201)
            .json()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Wait until no job is ready or running in any queue. Jobs scheduled in
    /// the future (SLA timers of requests in review) are allowed to stay.
    pub async fn drain(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        // Two idle readings in a row: a finishing job may push the next one.
        let mut idle = 0;
        loop {
            let mut busy = Vec::new();
            if !self.app.queue_in_db {
                let pending = self.count("outbox WHERE sent_at IS NULL").await;
                if pending > 0 {
                    busy.push(format!("outbox: {pending} not yet relayed"));
                }
            }
            for q in approvald::jobs::QUEUES {
                let s = self.app.queue.stats(q).await.expect("queue stats");
                let now = self.app.now_ms();
                let due = self
                    .app
                    .queue
                    .next_due_ms(q)
                    .await
                    .expect("next due")
                    .is_some_and(|t| t <= now);
                if s.ready + s.running > 0 || due {
                    busy.push(format!("{q}: {s:?} due={due}"));
                }
            }
            if busy.is_empty() {
                idle += 1;
                if idle >= 2 {
                    return;
                }
            } else {
                idle = 0;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "queues did not drain in 60 s: {}",
                busy.join("; ")
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Dead-lettered jobs in every queue (a test fails if any are left).
    pub async fn dead_jobs(&self) -> Vec<String> {
        let mut v = Vec::new();
        for q in approvald::jobs::QUEUES {
            for d in self.app.queue.list_dead(q, 100).await.expect("list dead") {
                v.push(format!("{q}/{}: {}", d.id, d.last_error));
            }
        }
        v
    }

    /// Every `.eml` file written so far, as text.
    pub fn outbox_messages(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.outbox) else {
            return vec![];
        };
        let mut v: Vec<(PathBuf, String)> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .map(|p| {
                let t = std::fs::read_to_string(&p).unwrap_or_default();
                (p, t)
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, t)| t).collect()
    }

    /// The `/metrics` scrape, as text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Count rows of a table (state-change checks).
    pub async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        approvald::on_db!(&self.app.db, |p| sqlx::query_scalar::<_, i64>(
            sqlx::AssertSqlSafe(sql)
        )
        .fetch_one(p)
        .await)
        .unwrap_or_else(|e| panic!("count {table}: {e}"))
    }

    /// Drain, stop gracefully, and fail if any job died: a test must account
    /// for every job it caused (future SLA timers may stay scheduled).
    pub async fn finish(mut self) {
        self.drain().await;
        let dead = self.dead_jobs().await;
        assert!(dead.is_empty(), "test left dead jobs behind: {dead:?}");
        self.stop().await;
    }

    /// Poll `cond` until it holds (at most 30 s).
    pub async fn eventually<F, Fut>(&self, what: &str, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !cond().await {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop the daemon and start it again on the same database, queue and
    /// port (a process restart).
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("re-bind the same port");
        let clock: Arc<dyn Clock> = match &self.clock {
            Some(c) => Arc::new(c.clone()),
            None => Arc::new(SystemClock),
        };
        let running = approvald::start(self.config.clone(), self.role, Some(listener), clock)
            .await
            .unwrap_or_else(|e| panic!("daemon failed to restart: {e:#}"));
        self.app = running.app.clone();
        self.running = Some(running);
    }

    /// [`restart`](Self::restart) with other parts: `Role::Api` keeps jobs
    /// waiting in the queue (no workers) until a restart with `Role::All`.
    pub async fn restart_as(&mut self, role: Role) {
        self.role = role;
        self.restart().await;
    }

    /// Move the injected clock and wake the workers so due jobs run now.
    pub fn advance(&self, by: chrono::Duration) {
        let c = self
            .clock
            .as_ref()
            .expect("advance() needs Opts { clock: Some(..) }");
        c.advance(by);
        self.app.queue.notify_all();
    }

    /// Set the injected clock and wake the workers.
    pub fn set_time(&self, to: chrono::DateTime<chrono::Utc>) {
        let c = self
            .clock
            .as_ref()
            .expect("set_time() needs Opts { clock: Some(..) }");
        c.set(to);
        self.app.queue.notify_all();
    }

    /// Stop gracefully without the leftover-jobs check.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop();
            tokio::time::timeout(Duration::from_secs(30), r.wait())
                .await
                .expect("daemon stops within 30 s")
                .expect("daemon stopped cleanly");
        }
    }
}

async fn read(resp: reqwest::Response) -> Resp {
    let status = resp.status();
    let headers = resp.headers().clone();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.unwrap_or_default();
    Resp {
        status,
        content_type,
        headers,
        text,
    }
}

fn merge_toml(base: &str, extra: &str) -> Config {
    let mut b: toml::Table = toml::from_str(base).expect("base toml");
    let e: toml::Table = toml::from_str(extra).expect("extra toml");
    for (k, v) in e {
        match (b.get_mut(&k), v) {
            (Some(toml::Value::Table(bt)), toml::Value::Table(et)) => {
                for (k2, v2) in et {
                    bt.insert(k2, v2);
                }
            }
            (_, v) => {
                b.insert(k, v);
            }
        }
    }
    Config::from_toml(&toml::to_string(&b).unwrap()).expect("merged test config")
}
