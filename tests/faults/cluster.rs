//! Real processes for the fault tests: a fresh PostgreSQL database, our own
//! `redis-server` on a spare port (no persistence), and `approvald serve
//! --role ...` child processes configured through `APPROVALD__*` variables.
//!
//! Everything is killed when the [`Cluster`] is dropped, also when a test
//! fails. A missing PostgreSQL or `redis-server` fails the test loudly.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use serde_json::{Value, json};
use sqlx::{PgPool, postgres::PgPoolOptions};

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const BIN: &str = env!("CARGO_BIN_EXE_approvald");

/// The fault tests spawn many processes on a small machine: one at a time
/// (an async lock: each test has its own runtime and holds it throughout).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

fn rand_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a spare port")
        .local_addr()
        .unwrap()
        .port()
}

/// Our own `redis-server` without persistence, so a restart starts empty.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl RedisServer {
    pub async fn start(dir: &Path) -> Self {
        let mut r = RedisServer {
            port: free_port(),
            child: None,
            log: dir.join("redis.log"),
        };
        r.spawn().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("redis log file");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server is required for the fault tests (is it installed?): {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.ping().await {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "redis-server on port {} exited at start ({status}); see {}",
                    self.port,
                    self.log.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING in 10 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(Ok(mut con)) = tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
        else {
            return false;
        };
        matches!(redis::cmd("PING").query_async::<String>(&mut con).await, Ok(s) if s == "PONG")
    }

    /// `SHUTDOWN NOSAVE`: Redis stops and forgets everything.
    pub async fn shutdown_nosave(&mut self) {
        let client = redis::Client::open(self.url()).unwrap();
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis for SHUTDOWN");
        // The server closes the connection instead of answering.
        let _ = redis::cmd("SHUTDOWN")
            .arg("NOSAVE")
            .query_async::<()>(&mut con)
            .await;
        self.wait_exit();
    }

    /// SIGKILL the server (a crash).
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
        self.wait_exit();
    }

    fn wait_exit(&mut self) {
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Start again on the same port (empty: no persistence).
    pub async fn restart(&mut self) {
        self.wait_exit();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One `approvald serve --role R` process with its output captured.
pub struct Daemon {
    pub name: String,
    pub role: &'static str,
    pub addr: Option<SocketAddr>,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Stopped by the test (killed or terminated), not died.
    stopped: bool,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr.expect("an api process"))
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Lines of output containing `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    pub fn tail(&self, n: usize) -> String {
        let l = self.lines.lock().unwrap();
        l[l.len().saturating_sub(n)..].join("\n")
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        self.stopped = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, wait up to `limit` for a graceful exit (then SIGKILL).
    /// Returns whether it exited on its own with status 0.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        if !self.alive() {
            return false;
        }
        self.stopped = true;
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                self.kill9();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The shared engines of one test and the daemon processes using them.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub db_name: String,
    pub db_url: String,
    pub pool: PgPool,
    pub redis: RedisServer,
    pub prefix: String,
    pub outbox: PathBuf,
    pub env: HashMap<String, String>,
    pub procs: Vec<Daemon>,
    pub platform_key: String,
    pub client: reqwest::Client,
    seq: usize,
}

impl Cluster {
    /// A fresh database, a fresh Redis, the schema migrated and a platform
    /// key made with `approvald keys create --platform`. `extra` env vars
    /// (`APPROVALD__...`) override the defaults for every process.
    pub async fn new(extra: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db_name = format!("approvald_f_{}", rand_suffix());
        {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(PG_ADMIN)
                .await
                .unwrap_or_else(|e| {
                    panic!("PostgreSQL is required at {PG_ADMIN} for the fault tests: {e}")
                });
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
                .execute(&mut c)
                .await
                .expect("create database");
        }
        let db_url = format!("postgres://postgres@127.0.0.1:5432/{db_name}");
        let redis = RedisServer::start(dir.path()).await;
        let prefix = format!("f{}", rand_suffix());
        let outbox = dir.path().join("outbox");
        let mut env: HashMap<String, String> = [
            ("APPROVALD__DATABASE__URL", db_url.clone()),
            ("APPROVALD__DATABASE__MAX_CONNECTIONS", "8".into()),
            ("APPROVALD__QUEUE__URL", redis.url()),
            ("APPROVALD__QUEUE__PREFIX", prefix.clone()),
            ("APPROVALD__QUEUE__LEASE_SECS", "4".into()),
            ("APPROVALD__QUEUE__IDLE_POLL_MS", "500".into()),
            ("APPROVALD__SERVER__LISTEN", "127.0.0.1:0".into()),
            ("APPROVALD__SERVER__PUBLIC_URL", "http://127.0.0.1:1".into()),
            ("APPROVALD__MAIL__TRANSPORT", "file".into()),
            ("APPROVALD__MAIL__OUTBOX_DIR", outbox.display().to_string()),
            // Far away unless a test asks for the sweep.
            ("APPROVALD__SLA__SWEEP_CRON", "0 0 0 1 1 * 2099".into()),
            ("APPROVALD__WORKERS__SHUTDOWN_TIMEOUT_SECS", "5".into()),
            ("APPROVALD__LOG__FORMAT", "json".into()),
            (
                "APPROVALD__LOG__FILTER",
                "info,approvald::jobs::review=debug".into(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let mut c = Cluster {
            dir,
            db_name,
            db_url: db_url.clone(),
            pool: PgPoolOptions::new()
                .max_connections(4)
                .connect_lazy(&db_url)
                .expect("pool"),
            redis,
            prefix,
            outbox,
            env,
            procs: Vec::new(),
            platform_key: String::new(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
            seq: 0,
        };
        // Also applies the migrations.
        let out = c
            .command(&["keys", "create", "--platform"])
            .env("APPROVALD__LOG__FILTER", "error")
            .output()
            .expect("run approvald keys create");
        assert!(
            out.status.success(),
            "keys create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Logs share stdout; the key is the last line.
        let stdout = String::from_utf8(out.stdout).unwrap();
        c.platform_key = stdout
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("")
            .to_string();
        assert!(!c.platform_key.is_empty(), "keys create printed no key");
        c
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("RUST_LOG")
            .env_remove("APPROVALD_CONFIG")
            .envs(&self.env);
        cmd
    }

    /// Start `approvald serve --role role`; for `api`/`all`, wait for the
    /// "listening on http://..." line and keep the address. Returns its index.
    pub async fn spawn(&mut self, role: &'static str) -> usize {
        self.seq += 1;
        let name = format!("{role}{}", self.seq);
        let mut child = self
            .command(&["serve", "--role", role])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn approvald");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log_path = self.dir.path().join(format!("{name}.log"));
        let log = Arc::new(Mutex::new(
            std::fs::File::create(&log_path).expect("log file"),
        ));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (lines, log) = (lines.clone(), log.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(log.lock().unwrap(), "{line}");
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let mut d = Daemon {
            name,
            role,
            addr: None,
            child,
            lines,
            stopped: false,
        };
        if matches!(role, "api" | "all") {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let found = d.lines.lock().unwrap().iter().find_map(|l| parse_listen(l));
                if let Some(a) = found {
                    d.addr = Some(a);
                    break;
                }
                assert!(d.alive(), "{} exited at start:\n{}", d.name, d.tail(30));
                assert!(
                    Instant::now() < deadline,
                    "{} logged no listening address in 60 s:\n{}",
                    d.name,
                    d.tail(30)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            let deadline = Instant::now() + Duration::from_secs(60);
            while d.count_lines("job runtime starting") == 0 {
                assert!(d.alive(), "{} exited at start:\n{}", d.name, d.tail(30));
                assert!(
                    Instant::now() < deadline,
                    "{} did not start its runtime in 60 s:\n{}",
                    d.name,
                    d.tail(30)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.procs.push(d);
        self.procs.len() - 1
    }

    pub fn proc(&mut self, i: usize) -> &mut Daemon {
        &mut self.procs[i]
    }

    /// Processes that exited although the test did not stop them (the
    /// test expects none), with their last lines of output.
    pub fn dead(&mut self) -> Vec<String> {
        self.procs
            .iter_mut()
            .filter_map(|p| {
                (!p.stopped && !p.alive()).then(|| format!("{} exited:\n{}", p.name, p.tail(8)))
            })
            .collect()
    }

    /// Lines containing `needle` across every process started so far
    /// (killed ones included).
    pub fn count_lines(&self, needle: &str) -> usize {
        self.procs.iter().map(|p| p.count_lines(needle)).sum()
    }

    /// Mail deliveries seen in the logs ("mail sent" lines) and how many
    /// distinct mails they were: the difference is mails sent twice. (The
    /// `.eml` file is named after the mail, so a second send overwrites it.)
    pub fn mail_sends(&self) -> (usize, usize) {
        let mut total = 0;
        let mut ids = std::collections::HashSet::new();
        for p in &self.procs {
            for l in p
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains("\"mail sent\""))
            {
                total += 1;
                if let Some(at) = l.find("\"email_id\":\"") {
                    let rest = &l[at + 12..];
                    ids.insert(rest[..rest.find('"').unwrap_or(rest.len())].to_string());
                }
            }
        }
        (total, ids.len())
    }

    /// Lines containing every one of `all` and none of `none`, across every
    /// process started so far.
    pub fn count_lines_where(&self, all: &[&str], none: &[&str]) -> usize {
        self.procs
            .iter()
            .map(|p| {
                p.lines
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|l| {
                        all.iter().all(|n| l.contains(n)) && !none.iter().any(|n| l.contains(n))
                    })
                    .count()
            })
            .sum()
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn status_counts(&self) -> Vec<(String, i64)> {
        sqlx::query_as("SELECT status, COUNT(*) FROM requests GROUP BY status ORDER BY status")
            .fetch_all(&self.pool)
            .await
            .expect("status counts")
    }

    /// How many of `ids` have `status`.
    pub async fn count_status(&self, ids: &[String], status: &str) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM requests WHERE status = $1 AND id = ANY($2)")
            .bind(status)
            .bind(ids)
            .fetch_one(&self.pool)
            .await
            .expect("count status")
    }

    /// Poll until `ids` all have `status`; returns the time it took, or
    /// panics with the status counts after `limit`.
    pub async fn wait_status(&self, ids: &[String], status: &str, limit: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let n = self.count_status(ids, status).await;
            if n == ids.len() as i64 {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < limit,
                "after {limit:?} only {n} of {} requests are {status}; by status: {:?}; outbox unsent: {}; logs in {}",
                ids.len(),
                self.status_counts().await,
                self.scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
                    .await,
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until every queued email has been written (none pending).
    pub async fn wait_mail_sent(&self, limit: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let pending = self
                .scalar("SELECT COUNT(*) FROM emails WHERE status = 'pending'")
                .await;
            if pending == 0 {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < limit,
                "{pending} emails still pending after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `.eml` files written so far.
    pub fn eml_files(&self) -> usize {
        std::fs::read_dir(&self.outbox)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// SIGTERM every process still running, then drop the database.
    pub async fn shutdown(mut self) {
        // Close idle keep-alive connections first, so API processes are not
        // left waiting on them during their graceful shutdown.
        self.client = reqwest::Client::new();
        for p in &mut self.procs {
            let t0 = Instant::now();
            let alive = p.alive();
            let clean = p.terminate(Duration::from_secs(30));
            if alive {
                println!(
                    "  {} stopped on SIGTERM in {:.1} s (clean exit: {clean})",
                    p.name,
                    t0.elapsed().as_secs_f64()
                );
            }
        }
        // A passing test leaves nothing behind (a failing one keeps its
        // database and logs: see Drop).
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(PG_ADMIN)
            .await
            .expect("connect to drop the test database");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.db_name
        )))
        .execute(&mut admin)
        .await
        .expect("drop the test database");
    }

    pub async fn post(&self, base: &str, path: &str, key: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{base}{path}"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failed test keeps its process logs (and mail files) to read.
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "fault test failed: process logs kept in {}; database {}",
                self.dir.path().display(),
                self.db_name
            );
        }
    }
}

/// Distinct slots of one org with `rows` requesters (none, the owner, members).
fn slots_per_org(kinds: &[&str], rows: usize) -> usize {
    let auto = kinds.iter().filter(|k| **k == AUTO_KIND).count();
    auto + (kinds.len() - auto) * rows
}

fn parse_listen(line: &str) -> Option<SocketAddr> {
    let at = line.find("listening on http://")? + "listening on http://".len();
    let addr: String = line[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    addr.parse().ok()
}

/// Manual, org-scoped kinds reviewed by the `marketplace` group, with the
/// documents each one needs.
pub const MANUAL_KINDS: &[&str] = &[
    "shipping_addresses_over_4",
    "contact_lens_sales",
    "ftp_access",
    "bulk_data_management",
    "listings_over_50000",
    "alcohol_sales",
    "seller_designated_carrier",
    "preorder_shipping",
];
/// Approved by policy in the review job (a system decision).
pub const AUTO_KIND: &str = "postal_carrier";

/// One request to submit: distinct (org, kind, requester) triples, so the
/// review job's duplicate check never refuses one.
#[derive(Debug, Clone)]
pub struct Slot {
    pub org: String,
    pub key: String,
    pub kind: &'static str,
    pub requester: Option<String>,
}

impl Slot {
    pub fn path(&self) -> String {
        format!("/v1/orgs/{}/requests", self.org)
    }

    pub fn body(&self) -> Value {
        let mut b =
            json!({"kind": self.kind, "remark": format!("fault test: {} please", self.kind)});
        if let Some(r) = &self.requester {
            b["requester"] = json!(r);
        }
        let doc = match self.kind {
            "contact_lens_sales" => Some("medical_device_licence"),
            "alcohol_sales" => Some("liquor_licence"),
            _ => None,
        };
        if let Some(t) = doc {
            b["documents"] = json!([{"type": t, "name": "licence.pdf", "url": "https://files.example.com/licence.pdf"}]);
        }
        b
    }
}

impl Cluster {
    /// A platform reviewer in `marketplace` (also its lead, for escalations),
    /// then orgs with up to 19 extra members until `n` distinct request slots
    /// over `kinds` exist. Setup goes through the API at `base`.
    pub async fn fixture(&self, base: &str, n: usize, kinds: &'static [&'static str]) -> Vec<Slot> {
        let (s, _) = self
            .post(
                base,
                "/v1/reviewers",
                &self.platform_key,
                json!({"email": "rev@example.com", "name": "Reviewer One", "locale": "en",
                       "groups": ["marketplace"], "lead_groups": ["marketplace"]}),
            )
            .await;
        assert_eq!(s, 201, "create reviewer");
        let per_org = slots_per_org(kinds, 21);
        let orgs = n.div_ceil(per_org);
        let made: Vec<Vec<Slot>> = stream::iter(0..orgs)
            .map(|i| {
                let left = n - i * per_org;
                async move { self.make_org(base, i, left.min(per_org), kinds).await }
            })
            .buffer_unordered(4)
            .collect()
            .await;
        let mut slots: Vec<Slot> = Vec::with_capacity(n);
        // Interleave orgs so consecutive submissions touch different orgs.
        let longest = made.iter().map(Vec::len).max().unwrap_or(0);
        for j in 0..longest {
            for m in &made {
                if let Some(s) = m.get(j) {
                    slots.push(s.clone());
                }
            }
        }
        assert_eq!(slots.len(), n);
        slots
    }

    async fn make_org(
        &self,
        base: &str,
        i: usize,
        want: usize,
        kinds: &'static [&'static str],
    ) -> Vec<Slot> {
        let login = format!("own{i}_{}", &rand_suffix()[..6]);
        let (s, org) = self
            .post(
                base,
                "/v1/orgs",
                &self.platform_key,
                json!({"name": format!("Fault org {i}"), "region": "cn", "locale": "en",
                       "owner": {"login_id": login, "name": "Owner", "email": format!("{login}@example.com")}}),
            )
            .await;
        assert_eq!(s, 201, "create org: {org}");
        let org_id = org["id"].as_str().unwrap().to_string();
        let owner = org["owner"]["id"].as_str().unwrap().to_string();
        let (s, k) = self
            .post(
                base,
                &format!("/v1/orgs/{org_id}/keys"),
                &self.platform_key,
                json!({}),
            )
            .await;
        assert_eq!(s, 201, "create org key: {k}");
        let key = k["key"].as_str().unwrap().to_string();
        let mut requesters: Vec<Option<String>> = vec![None, Some(owner)];
        let mut rows = 1;
        while slots_per_org(kinds, rows) < want {
            rows += 1;
        }
        let needed_members = rows.saturating_sub(2);
        for m in 0..needed_members {
            let login = format!("m{m}_{}", &rand_suffix()[..8]);
            let (s, mem) = self
                .post(
                    base,
                    &format!("/v1/orgs/{org_id}/members"),
                    // The platform key needs no Approvald-Actor.
                    &self.platform_key,
                    json!({"login_id": login, "name": format!("Member {m}"), "email": format!("{login}@example.com")}),
                )
                .await;
            assert_eq!(s, 201, "create member: {mem}");
            requesters.push(Some(mem["id"].as_str().unwrap().to_string()));
        }
        let mut out = Vec::with_capacity(want);
        'all: for r in &requesters {
            for kind in kinds {
                if out.len() == want {
                    break 'all;
                }
                // An org-wide grant exists once per org: one auto-approved
                // request per org, or the next ones are "already granted".
                if *kind == AUTO_KIND && r.is_some() {
                    continue;
                }
                out.push(Slot {
                    org: org_id.clone(),
                    key: key.clone(),
                    kind,
                    requester: r.clone(),
                });
            }
        }
        assert_eq!(out.len(), want);
        out
    }
}
