//! The spending benchmark's load generator (run by `scripts/bench-spend`).
//!
//!   bench_spend load <database url> <queue url> <seconds>
//!       starts approvald in-process (the same `approvald::start` as `serve`),
//!       creates 50 orgs of 20 members over HTTP, then measures payment
//!       authorizations per second over HTTP at concurrency 32: (a) all on
//!       one member, (b) spread over the 1,000 members.
//!   bench_spend million <postgres url> <queue url>
//!       with 1,000,000 members' counters of yesterday (bulk SQL), times the
//!       first authorization of today and the `limits` close of yesterday.
//!
//! Prints `key=value` lines.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use approvald::{Config, Role, domain::spending::Limits, jobs::limits};
use approvald_workers::SystemClock;
use rand::Rng;
use serde_json::{Value, json};

const CONCURRENCY: usize = 32;
const ORGS: usize = 50;
const PER_ORG: usize = 20;
const ZONE: &str = "Asia/Shanghai";

fn config(db: &str, queue: &str, dir: &std::path::Path) -> anyhow::Result<Config> {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[database]
url = "{db}"
max_connections = 40
[queue]
url = "{queue}"
prefix = "bench{rand}"
[mail]
outbox_dir = "{outbox}"
[orgs]
max_members = {PER_ORG}
[payments]
limits_cron = "0 0 0 1 1 * 2099"
[sla]
sweep_cron = "0 0 0 1 1 * 2099"
[log]
filter = "warn"
"#,
        rand = rand::rng().random_range(0..u32::MAX),
        outbox = dir.join("outbox").display()
    );
    Ok(Config::from_toml(&text)?)
}

struct Bench {
    running: approvald::Running,
    base: String,
    http: reqwest::Client,
    platform: String,
}

impl Bench {
    async fn start(db: &str, queue: &str, dir: &std::path::Path) -> anyhow::Result<Self> {
        let cfg = config(db, queue, dir)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let running =
            approvald::start(cfg, Role::All, Some(listener), Arc::new(SystemClock)).await?;
        let base = format!("http://{}", running.addr.context("no address")?);
        let platform = approvald::store::keys::create(
            &running.app.db,
            approvald::store::keys::KeyScope::Platform,
            None,
            running.app.now_ms(),
        )
        .await?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(CONCURRENCY * 2)
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            running,
            base,
            http,
            platform,
        })
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> anyhow::Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let text = r.text().await?;
        anyhow::ensure!(status.is_success(), "{path}: {status} {text}");
        Ok(serde_json::from_str(&text)?)
    }

    /// An org with `n` members (the owner included), every one allowed to
    /// spend far more than the bench does; returns (org id, key, members).
    async fn org(&self, i: usize, n: usize) -> anyhow::Result<(String, String, Vec<String>)> {
        let o = self
            .post(
                "/v1/orgs",
                &self.platform,
                json!({"name": format!("Bench {i}"), "region": "cn", "locale": "en", "timezone": ZONE,
                       "owner": {"login_id": format!("own_{i:06}"), "name": "Owner", "email": format!("own{i}@bench.example")}}),
            )
            .await?;
        let org = o["id"].as_str().context("org id")?.to_string();
        let key = self
            .post(&format!("/v1/orgs/{org}/keys"), &self.platform, json!({}))
            .await?["key"]
            .as_str()
            .context("key")?
            .to_string();
        let mut members = vec![o["owner"]["id"].as_str().context("owner")?.to_string()];
        for j in 1..n {
            let m = self
                .post(
                    &format!("/v1/orgs/{org}/members"),
                    &self.platform,
                    json!({"login_id": format!("m{i:04}_{j:04}"), "name": format!("Member {j}"),
                           "email": format!("m{i}_{j}@bench.example"), "kind": "member"}),
                )
                .await?;
            members.push(m["id"].as_str().context("member id")?.to_string());
        }
        let app = &self.running.app;
        let mut tx = app.db.begin().await?;
        for m in &members {
            approvald::flows::payments::set_member_limits(
                &mut tx,
                &org,
                m,
                "bench",
                Some(&Limits {
                    allowed: true,
                    per_tx: 1_000_000,
                    daily: 1_000_000_000_000,
                    monthly: 1_000_000_000_000,
                }),
                app.now_ms(),
            )
            .await?;
        }
        tx.commit().await?;
        Ok((org, key, members))
    }

    /// Decisions per second for `secs` at [`CONCURRENCY`], each call against
    /// the hot member (`targets[0]`) or a random one.
    ///
    /// A decision is a 200 answer, approved or declined: a decline is as
    /// much a decision as an approval (the limits are set far above what a
    /// run spends, so none is expected, and the count of each is printed).
    /// Anything else (a transport error, any non-200 status) is an error
    /// and fails the run, with the first few answers shown.
    async fn load(
        &self,
        label: &str,
        secs: u64,
        targets: Arc<Vec<(String, String, String)>>,
        hot: bool,
    ) -> anyhow::Result<Load> {
        let approved = Arc::new(AtomicU64::new(0));
        let declined = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let start = Instant::now();
        for w in 0..CONCURRENCY {
            let (approved, declined, errors, samples, stop, targets) = (
                approved.clone(),
                declined.clone(),
                errors.clone(),
                samples.clone(),
                stop.clone(),
                targets.clone(),
            );
            let (http, base) = (self.http.clone(), self.base.clone());
            let label = label.to_string();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (org, key, member) = if hot {
                        &targets[0]
                    } else {
                        &targets[rand::rng().random_range(0..targets.len())]
                    };
                    n += 1;
                    let r = http
                        .post(format!("{base}/v1/orgs/{org}/payments/authorize"))
                        .bearer_auth(key)
                        .json(&json!({"member": member, "amount": 100, "currency": "CNY",
                                      "reference": format!("{label}-{w}-{n}")}))
                        .send()
                        .await;
                    let error = match r {
                        Ok(r) => {
                            let status = r.status();
                            let body = r.text().await.unwrap_or_default();
                            if status == reqwest::StatusCode::OK
                                && body.contains("\"approved\":true")
                            {
                                approved.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            if status == reqwest::StatusCode::OK
                                && body.contains("\"approved\":false")
                            {
                                declined.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            format!("{status} {body}")
                        }
                        Err(e) => format!("transport: {e}"),
                    };
                    errors.fetch_add(1, Ordering::Relaxed);
                    let mut s = samples.lock().unwrap();
                    if s.len() < 5 {
                        s.push(error);
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await?;
        }
        let elapsed = start.elapsed().as_secs_f64();
        let l = Load {
            approved: approved.load(Ordering::Relaxed),
            declined: declined.load(Ordering::Relaxed),
            errors: errors.load(Ordering::Relaxed),
            elapsed,
        };
        eprintln!(
            "{label}: {} approved, {} declined, {} errors in {elapsed:.1} s",
            l.approved, l.declined, l.errors
        );
        let samples = samples.lock().unwrap().clone();
        anyhow::ensure!(
            l.errors == 0,
            "{label}: {} of {} calls were errors (not a decision); first ones:\n  {}",
            l.errors,
            l.approved + l.declined + l.errors,
            samples.join("\n  ")
        );
        Ok(l)
    }

    /// Sequential authorizations over HTTP on the spread members, counting
    /// the SQL statements (round trips) the server runs meanwhile.
    async fn profile(
        &self,
        label: &str,
        n: usize,
        targets: &[(String, String, String)],
    ) -> anyhow::Result<()> {
        profile::reset();
        profile::on(true);
        let t0 = Instant::now();
        for i in 0..n {
            let (org, key, member) = &targets[i * 7 % targets.len()];
            let r = self
                .post(
                    &format!("/v1/orgs/{org}/payments/authorize"),
                    key,
                    json!({"member": member, "amount": 100, "currency": "CNY",
                           "reference": format!("{label}-profile-{i}")}),
                )
                .await?;
            anyhow::ensure!(r["approved"] == true, "profile: {r}");
        }
        let secs = t0.elapsed().as_secs_f64();
        profile::on(false);
        let counts = profile::take();
        let total: u64 = counts.iter().map(|(_, c)| c.0).sum();
        let db_secs: f64 = counts.iter().map(|(_, c)| c.1).sum();
        // sqlx does not log BEGIN; it is one more round trip per transaction.
        println!(
            "{label}_statements_per_authorization={:.2}",
            total as f64 / n as f64
        );
        println!(
            "{label}_sequential_authorization_ms={:.3}",
            secs * 1000.0 / n as f64
        );
        println!(
            "{label}_sequential_sql_ms={:.3}",
            db_secs * 1000.0 / n as f64
        );
        eprintln!("  per authorization: count, ms (as sqlx times it), statement");
        for (sql, (c, t)) in counts {
            eprintln!(
                "  {:5.2} x {:7.3} ms  {sql}",
                c as f64 / n as f64,
                t * 1000.0 / n as f64
            );
        }
        Ok(())
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.running.stop();
        self.running.wait().await
    }
}

async fn load(db: &str, queue: &str, secs: u64, prefix: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let b = Bench::start(db, queue, dir.path()).await?;
    let t0 = Instant::now();
    let mut targets = Vec::new();
    for i in 0..ORGS {
        let (org, key, members) = b.org(i, PER_ORG).await?;
        for m in members {
            targets.push((org.clone(), key.clone(), m));
        }
    }
    eprintln!(
        "{prefix}: {} orgs, {} members set up in {:.1} s",
        ORGS,
        targets.len(),
        t0.elapsed().as_secs_f64()
    );
    let targets = Arc::new(targets);
    // Warm up the pools.
    b.load(&format!("{prefix}-warm"), 2, targets.clone(), false)
        .await?;
    b.profile(prefix, 500, &targets).await?;
    let hot = b
        .load(&format!("{prefix}-hot"), secs, targets.clone(), true)
        .await?;
    println!("{prefix}_hot_member_auth_per_s={:.1}", hot.per_s());
    println!("{prefix}_hot_member_declined={}", hot.declined);
    let spread = b
        .load(&format!("{prefix}-spread"), secs, targets.clone(), false)
        .await?;
    println!(
        "{prefix}_spread_1000_members_auth_per_s={:.1}",
        spread.per_s()
    );
    println!("{prefix}_spread_1000_members_declined={}", spread.declined);
    b.stop().await
}

/// What one load phase saw.
struct Load {
    approved: u64,
    declined: u64,
    errors: u64,
    elapsed: f64,
}

impl Load {
    /// Decisions (approved or declined) per second.
    fn per_s(&self) -> f64 {
        (self.approved + self.declined) as f64 / self.elapsed
    }
}

/// Counts the statements sqlx runs (its `sqlx::query` events, one per
/// statement sent, BEGIN and COMMIT included) while switched on, by
/// statement text.
mod profile {
    use std::{
        collections::BTreeMap,
        sync::{
            Mutex,
            atomic::{AtomicBool, Ordering},
        },
    };

    use tracing::{Event, Subscriber, field::Visit};
    use tracing_subscriber::{Layer, layer::Context, prelude::*};

    static ON: AtomicBool = AtomicBool::new(false);
    /// Statement text -> (count, total seconds sqlx measured for it).
    static COUNTS: Mutex<BTreeMap<String, (u64, f64)>> = Mutex::new(BTreeMap::new());

    pub fn on(on: bool) {
        ON.store(on, Ordering::SeqCst);
    }

    pub fn reset() {
        COUNTS.lock().unwrap().clear();
    }

    pub fn take() -> Vec<(String, (u64, f64))> {
        let mut v: Vec<_> = std::mem::take(&mut *COUNTS.lock().unwrap())
            .into_iter()
            .collect();
        v.sort_by_key(|b| std::cmp::Reverse(b.1.0));
        v
    }

    #[derive(Default)]
    struct Sql(String, String, f64);

    impl Visit for Sql {
        fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
            match f.name() {
                "summary" => self.0 = v.to_string(),
                "db.statement" => self.1 = v.to_string(),
                _ => {}
            }
        }
        fn record_f64(&mut self, f: &tracing::field::Field, v: f64) {
            if f.name() == "elapsed_secs" {
                self.2 = v;
            }
        }
        fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
            if f.name() == "summary" {
                self.0 = format!("{v:?}");
            }
        }
    }

    struct Count;

    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, e: &Event<'_>, _: Context<'_, S>) {
            let mut sql = Sql::default();
            e.record(&mut sql);
            let text = if sql.1.trim().is_empty() {
                sql.0
            } else {
                sql.1
            };
            let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let text: String = text.chars().take(110).collect();
            let mut counts = COUNTS.lock().unwrap();
            let e = counts.entry(text).or_default();
            e.0 += 1;
            e.1 += sql.2;
        }
    }

    /// Install the counting layer (sqlx statement events only, and only
    /// while switched on).
    pub fn install() {
        let filter = tracing_subscriber::filter::dynamic_filter_fn(|m, _| {
            m.target() == "sqlx::query" && ON.load(Ordering::Relaxed)
        });
        tracing_subscriber::registry()
            .with(Count.with_filter(filter))
            .init();
    }
}

async fn million(db: &str, queue: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let b = Bench::start(db, queue, dir.path()).await?;
    let (org, key, members) = b.org(0, 2).await?;
    let app = b.running.app.clone();
    let approvald::db::Db::Postgres(pool) = &app.db else {
        anyhow::bail!("the million-member part runs on PostgreSQL");
    };
    let tz: chrono_tz::Tz = ZONE.parse().unwrap();
    let now = app.clock.now();
    let yesterday = limits::Period::last_ended(tz, limits::Kind::Daily, now);
    let t0 = Instant::now();
    // Bulk SQL: a million members of one org with a counter each for yesterday.
    sqlx::query(
        "INSERT INTO members (id, org_id, login_id, name, email, kind, locale, status, created_at, updated_at) \
         SELECT 'bm-' || lpad(g::text, 7, '0'), $1, 'bm' || g, 'Bulk ' || g, 'bm' || g || '@bench.example', \
                'member', 'en', 'active', 0, 0 FROM generate_series(1, 1000000) g",
    )
    .bind(&org)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO spend_counters (member_id, period, org_id, zone, used, held, approved_count, approved_amount, updated_at) \
         SELECT 'bm-' || lpad(g::text, 7, '0'), $2, $1, $3, g % 5000, 0, 1 + g % 7, g % 5000, 0 \
         FROM generate_series(1, 1000000) g",
    )
    .bind(&org)
    .bind(&yesterday.key)
    .bind(ZONE)
    .execute(pool)
    .await?;
    sqlx::query("ANALYZE spend_counters").execute(pool).await?;
    sqlx::query("ANALYZE members").execute(pool).await?;
    eprintln!(
        "1,000,000 members with counters for {} inserted in {:.1} s",
        yesterday.key,
        t0.elapsed().as_secs_f64()
    );
    // The first authorization of the new day: nothing to wait for.
    let t1 = Instant::now();
    let r = b
        .post(
            &format!("/v1/orgs/{org}/payments/authorize"),
            &key,
            json!({"member": members[1], "amount": 100, "currency": "CNY", "reference": "first-after-midnight"}),
        )
        .await?;
    let first_ms = t1.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(r["approved"] == true, "first authorization: {r}");
    println!("pg_first_auth_after_midnight_with_1m_counters_ms={first_ms:.1}");
    let t2 = Instant::now();
    let closed = limits::close(&app, ZONE, &yesterday).await?;
    let close_s = t2.elapsed().as_secs_f64();
    let limits::Closed::Now { members: n } = closed else {
        anyhow::bail!("close of {}: {closed:?}", yesterday.key);
    };
    println!("pg_close_members={n}");
    println!("pg_close_1m_members_s={close_s:.1}");
    b.stop().await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    profile::install();
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("load") => {
            let secs = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(15);
            let prefix = if args[2].starts_with("postgres") {
                "pg"
            } else {
                "sqlite"
            };
            load(&args[2], &args[3], secs, prefix).await
        }
        Some("million") => million(&args[2], &args[3]).await,
        _ => anyhow::bail!(
            "usage: bench_spend load <db url> <queue url> [secs] | million <pg url> <queue url>"
        ),
    }
}
