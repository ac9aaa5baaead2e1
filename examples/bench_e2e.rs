//! The end-to-end load generator behind `scripts/bench-e2e` (issue 17).
//!
//! ```text
//! bench_e2e run --base URL --platform-key KEY --maildir DIR
//! bench_e2e smtp-sink ADDR DIR        # an SMTP server that writes each message to DIR
//! bench_e2e sqlite-raw DIR CONCURRENCY SECONDS
//! ```
//!
//! `run` talks to a running daemon over HTTP only, as an upstream app and a
//! reviewer's browser would: it creates 50 orgs with 20 members each (1,000),
//! three platform reviewers in three groups, then
//! (a) submits 10,000 requests at concurrency 32, each with an
//!     `Idempotency-Key`, and times every 202;
//! (b) reads the review mails from `DIR` (the file transport's outbox, or the
//!     SMTP sink's folder): a mail's time is its file's modification time, so
//!     "202 -> mail written" needs no polling precision;
//! (c) opens every review link (GET, as a browser would: the page's CSRF field
//!     and cookie) and POSTs `approve` at concurrency 32, then waits for every
//!     requester's "approved" mail.
//!
//! Each request is told apart in the mails by its org's name and its number.
//! The catalog the daemon runs with must hold the kinds `bench_k0..bench_k11`
//! reviewed by `platform:bench_g0..2` (the script writes it).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures::{StreamExt, stream};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};

const ORGS: usize = 50;
const MEMBERS_PER_ORG: usize = 20; // the owner included: 1,000 members
const KINDS: usize = 12;
const GROUPS: usize = 3;
/// 10,000; `BENCH_REQUESTS` makes a smaller smoke run.
fn requests() -> usize {
    std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}
const CONCURRENCY: usize = 32;
/// `BENCH_SUBMIT_RATE=<n>`: pace (a) at n submits per second (still at most
/// 32 in flight) instead of as fast as the daemon answers, to read (b) at a
/// load the pipeline can keep up with. The ratios of a paced run mean
/// nothing (its accepted/s is the pace).
fn submit_rate() -> Option<f64> {
    std::env::var("BENCH_SUBMIT_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|r: &f64| *r > 0.0)
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]).await,
        Some("smtp-sink") if args.len() == 3 => smtp_sink(&args[1], PathBuf::from(&args[2])).await,
        Some("sqlite-raw") if args.len() == 4 => {
            sqlite_raw(
                PathBuf::from(&args[1]),
                args[2].parse().expect("concurrency"),
                args[3].parse().expect("seconds"),
            )
            .await
        }
        _ => {
            eprintln!(
                "usage: bench_e2e run --base URL --platform-key KEY --maildir DIR\n       \
                 bench_e2e smtp-sink ADDR DIR\n       bench_e2e sqlite-raw DIR CONCURRENCY SECONDS"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = out {
        eprintln!("bench_e2e: {e}");
        std::process::exit(1);
    }
}

fn flag(args: &[String], name: &str) -> Res<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| format!("missing {name}").into())
}

/// Percentile of sorted milliseconds (nearest rank).
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

/// CPU time the whole machine spent busy (every process, user and system,
/// not idle or waiting for I/O) since boot, in seconds, from `/proc/stat`.
/// Steal (time the hypervisor gave to other guests while this one wanted
/// to run) is not work of ours, and guest time is already inside user
/// time: neither is counted.
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return f64::NAN;
    };
    // cpu user nice system idle iowait irq softirq steal guest guest_nice
    let f: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 5 {
        return f64::NAN;
    }
    let busy: f64 = f
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(i, 0 | 1 | 2 | 5 | 6))
        .map(|(_, v)| v)
        .sum();
    // USER_HZ is 100 on Linux.
    busy / 100.0
}

/// Machine busy-CPU readings every 100 ms until dropped, to find the CPU
/// spent up to the moment the last review mail was written.
struct CpuLog(
    Arc<std::sync::Mutex<Vec<(SystemTime, f64)>>>,
    tokio::task::JoinHandle<()>,
);

impl CpuLog {
    fn start() -> Self {
        let log = Arc::new(std::sync::Mutex::new(vec![(
            SystemTime::now(),
            machine_busy_secs(),
        )]));
        let l = log.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                l.lock()
                    .unwrap()
                    .push((SystemTime::now(), machine_busy_secs()));
            }
        });
        Self(log, task)
    }

    /// CPU seconds from the start to the first reading at or after `at`.
    fn busy_until(&self, at: SystemTime) -> f64 {
        let log = self.0.lock().unwrap();
        let first = log[0].1;
        let end = log
            .iter()
            .find(|(t, _)| *t >= at)
            .or(log.last())
            .map(|r| r.1);
        end.unwrap_or(first) - first
    }
}

impl Drop for CpuLog {
    fn drop(&mut self) {
        self.1.abort();
    }
}

fn ms_between(later: SystemTime, earlier: SystemTime) -> f64 {
    match later.duration_since(earlier) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -(e.duration().as_secs_f64() * 1000.0),
    }
}

struct Org {
    id: String,
    name: String,
    key: String,
    members: Vec<String>,
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn post(&self, path: &str, key: &str, actor: Option<&str>, body: Value) -> Res<Value> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(&body);
        if let Some(a) = actor {
            req = req.header("Approvald-Actor", a);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            return Err(format!("POST {path}: {status}: {text}").into());
        }
        Ok(serde_json::from_str(&text)?)
    }
}

async fn setup(api: &Api, pk: &str, run_id: &str) -> Res<Vec<Org>> {
    for g in 0..GROUPS {
        api.post(
            "/v1/reviewers",
            pk,
            None,
            json!({"email": format!("rev{g}.{run_id}@bench.example"), "name": format!("Reviewer {g}"),
                   "locale": "en", "groups": [format!("bench_g{g}")]}),
        )
        .await?;
    }
    let orgs = stream::iter(0..ORGS)
        .map(|o| async move {
            let name = format!("Bench {run_id} org {o:02}");
            let org = api
                .post(
                    "/v1/orgs",
                    pk,
                    None,
                    json!({"name": name, "region": "cn", "locale": "en",
                           "owner": {"login_id": format!("o{o:02}_{run_id}"), "name": format!("Owner {o}"),
                                     "email": format!("owner{o}.{run_id}@bench.example")}}),
                )
                .await?;
            let id = org["id"].as_str().ok_or("org id")?.to_string();
            let owner = org["owner"]["id"].as_str().ok_or("owner id")?.to_string();
            let key = api
                .post(&format!("/v1/orgs/{id}/keys"), pk, None, json!({}))
                .await?["key"]
                .as_str()
                .ok_or("key")?
                .to_string();
            let mut members = vec![owner.clone()];
            for m in 1..MEMBERS_PER_ORG {
                let r = api
                    .post(
                        &format!("/v1/orgs/{id}/members"),
                        &key,
                        Some(&owner),
                        json!({"login_id": format!("m{o:02}_{m:02}_{run_id}"), "name": format!("Member {o}-{m}"),
                               "email": format!("m{o}.{m}.{run_id}@bench.example")}),
                    )
                    .await?;
                members.push(r["id"].as_str().ok_or("member id")?.to_string());
            }
            Res::Ok(Org {
                id,
                name,
                key,
                members,
            })
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let mut out: Vec<Org> = orgs.into_iter().collect::<Res<_>>()?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What a mail in the folder says.
struct Mail {
    at: SystemTime,
    org: String,
    number: String,
    review: bool,
    link: Option<String>,
}

fn parse_mail(path: &Path) -> Option<Mail> {
    let at = std::fs::metadata(path).ok()?.modified().ok()?;
    let raw = std::fs::read(path).ok()?;
    let parsed = mailparse::parse_mail(&raw).ok()?;
    let text = if parsed.subparts.is_empty() {
        parsed.get_body().ok()?
    } else {
        parsed
            .subparts
            .iter()
            .flat_map(|p| std::iter::once(p).chain(p.subparts.iter()))
            .find(|p| p.ctype.mimetype == "text/plain")?
            .get_body()
            .ok()?
    };
    let line = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label).map(|v| v.trim().to_string()))
    };
    let review = text.contains("/review/");
    let link = text
        .split_whitespace()
        .find(|w| w.contains("/review/"))
        .map(str::to_string);
    Some(Mail {
        at,
        org: line("Account:")?,
        number: line("Request:")?,
        review,
        link,
    })
}

/// Read every mail file in `dir` not seen yet.
fn scan(dir: &Path, seen: &mut HashSet<PathBuf>, out: &mut Vec<Mail>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("eml") || seen.contains(&p) {
            continue;
        }
        if let Some(m) = parse_mail(&p) {
            seen.insert(p);
            out.push(m);
        }
    }
}

async fn wait_mails(
    dir: &Path,
    seen: &mut HashSet<PathBuf>,
    want: impl Fn(&[Mail]) -> bool,
    timeout: Duration,
) -> Vec<Mail> {
    let mut mails = Vec::new();
    let start = Instant::now();
    loop {
        scan(dir, seen, &mut mails);
        if want(&mails) || start.elapsed() > timeout {
            return mails;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run(args: &[String]) -> Res<()> {
    let api = Arc::new(Api {
        base: flag(args, "--base")?,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(CONCURRENCY)
            .timeout(Duration::from_secs(60))
            .build()?,
    });
    let pk = flag(args, "--platform-key")?;
    let maildir = PathBuf::from(flag(args, "--maildir")?);
    let run_id = format!("{:x}", rand::random::<u32>());

    let t = Instant::now();
    let orgs = Arc::new(setup(&api, &pk, &run_id).await?);
    let members: usize = orgs.iter().map(|o| o.members.len()).sum();
    println!(
        "setup: {} orgs, {members} members, {GROUPS} reviewers in {GROUPS} groups in {:.1} s",
        orgs.len(),
        t.elapsed().as_secs_f64()
    );
    let mut seen = HashSet::new();
    // Mails of the setup (none expected), so they are not counted below.
    let _ = wait_mails(&maildir, &mut seen, |_| true, Duration::ZERO).await;

    // (a) submit: round-robin over orgs, then members, then kinds, so every
    // (org, requester, kind) is distinct and no request is a duplicate.
    let jobs: Vec<(usize, usize, usize)> = (0..requests())
        .map(|i| {
            let o = i % ORGS;
            let rest = i / ORGS;
            (o, rest % MEMBERS_PER_ORG, (rest / MEMBERS_PER_ORG) % KINDS)
        })
        .collect();
    let cpu = CpuLog::start();
    let t = Instant::now();
    let rate = submit_rate();
    if let Some(r) = rate {
        println!("(a) paced at {r} submits/s (BENCH_SUBMIT_RATE)");
    }
    let start = tokio::time::Instant::now();
    let results: Vec<Res<(String, String, SystemTime, f64)>> =
        stream::iter(jobs.into_iter().enumerate())
            .map(|(i, (o, m, k))| {
                let api = api.clone();
                let orgs = orgs.clone();
                let run_id = run_id.clone();
                async move {
                    if let Some(r) = rate {
                        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / r))
                            .await;
                    }
                    let org = &orgs[o];
                    let org_id = &org.id;
                    let started = Instant::now();
                    let resp = api
                        .http
                        .post(format!("{}/v1/orgs/{org_id}/requests", api.base))
                        .bearer_auth(&org.key)
                        .header("Idempotency-Key", format!("bench-{run_id}-{o}-{m}-{k}"))
                        .json(
                            &json!({"kind": format!("bench_k{k}"), "requester": org.members[m],
                                  "remark": format!("bench request {o}/{m}/{k}")}),
                        )
                        .send()
                        .await?;
                    let status = resp.status();
                    let body = resp.text().await?;
                    let lat = started.elapsed().as_secs_f64() * 1000.0;
                    if status.as_u16() != 202 {
                        return Err(format!("submit: {status}: {body}").into());
                    }
                    let v: Value = serde_json::from_str(&body)?;
                    let number = v["number"].as_str().ok_or("number")?.to_string();
                    Ok((org.name.clone(), number, SystemTime::now(), lat))
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
    let submit_secs = t.elapsed().as_secs_f64();
    let mut accepted: HashMap<(String, String), SystemTime> = HashMap::new();
    let mut lat = Vec::new();
    let mut errors = 0;
    for r in results {
        match r {
            Ok((org, number, at, l)) => {
                accepted.insert((org, number), at);
                lat.push(l);
            }
            Err(e) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("  submit error: {e}");
                }
            }
        }
    }
    let lat = sorted(lat);
    println!(
        "(a) submit: {} accepted, {errors} errors in {submit_secs:.2} s",
        accepted.len()
    );
    println!(
        "submit_accepted_per_s={:.1}",
        accepted.len() as f64 / submit_secs
    );
    println!(
        "submit_p50_ms={:.2}\nsubmit_p99_ms={:.2}\nsubmit_max_ms={:.2}",
        pct(&lat, 50.0),
        pct(&lat, 99.0),
        lat.last().copied().unwrap_or(f64::NAN)
    );

    // (b) review mails.
    let want = accepted.len();
    let mails = wait_mails(
        &maildir,
        &mut seen,
        |m| m.iter().filter(|m| m.review).count() >= want,
        Duration::from_secs(600),
    )
    .await;
    let mut links: Vec<(String, String, String)> = Vec::new();
    let mut review_lat = Vec::new();
    for m in mails.iter().filter(|m| m.review) {
        if let Some(at) = accepted.get(&(m.org.clone(), m.number.clone())) {
            review_lat.push(ms_between(m.at, *at));
            if let Some(l) = &m.link {
                links.push((m.org.clone(), m.number.clone(), l.clone()));
            }
        }
    }
    let review_lat = sorted(review_lat);
    println!(
        "(b) review mails: {} of {want} (every request one reviewer)",
        review_lat.len()
    );
    println!(
        "review_mail_p50_ms={:.1}\nreview_mail_p99_ms={:.1}",
        pct(&review_lat, 50.0),
        pct(&review_lat, 99.0)
    );
    // What a request costs the machine from its submit to its review mail,
    // all processes together (daemon, database, queue, mail sink, this
    // load generator): the floor under the time a burst takes to drain.
    if let Some(last) = mails.iter().filter(|m| m.review).map(|m| m.at).max() {
        let busy = cpu.busy_until(last);
        println!(
            "pipeline_cpu_ms_per_request={:.2}",
            busy * 1000.0 / want.max(1) as f64
        );
    }
    drop(cpu);

    // (c) decide through the links, as a browser: GET the page, POST the form.
    let t = Instant::now();
    let results: Vec<Res<(String, String, SystemTime, f64)>> = stream::iter(links)
        .map(|(org, number, link)| {
            let api = api.clone();
            async move {
                let started = Instant::now();
                let page = api.http.get(&link).send().await?;
                let cookie = page
                    .headers()
                    .get_all("set-cookie")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .filter_map(|v| v.split(';').next())
                    .collect::<Vec<_>>()
                    .join("; ");
                let html = page.text().await?;
                let csrf = html
                    .split("name=\"csrf\" value=\"")
                    .nth(1)
                    .and_then(|s| s.split('"').next())
                    .ok_or("no csrf field on the review page")?
                    .to_string();
                let resp = api
                    .http
                    .post(&link)
                    .header("cookie", cookie)
                    .form(&[
                        ("csrf", csrf.as_str()),
                        ("decision", "approve"),
                        ("comment", ""),
                    ])
                    .send()
                    .await?;
                let status = resp.status();
                let _ = resp.bytes().await?;
                if !status.is_success() {
                    return Err(format!("decide: {status}").into());
                }
                Ok((
                    org,
                    number,
                    SystemTime::now(),
                    started.elapsed().as_secs_f64() * 1000.0,
                ))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let decide_secs = t.elapsed().as_secs_f64();
    let mut decided: HashMap<(String, String), SystemTime> = HashMap::new();
    let mut dlat = Vec::new();
    let mut derr = 0;
    for r in results {
        match r {
            Ok((org, number, at, l)) => {
                decided.insert((org, number), at);
                dlat.push(l);
            }
            Err(e) => {
                derr += 1;
                if derr <= 3 {
                    eprintln!("  decide error: {e}");
                }
            }
        }
    }
    let dlat = sorted(dlat);
    println!(
        "(c) decide: {} decided, {derr} errors in {decide_secs:.2} s",
        decided.len()
    );
    println!(
        "decide_per_s={:.1}\ndecide_p99_ms={:.2}",
        decided.len() as f64 / decide_secs,
        pct(&dlat, 99.0)
    );
    let want = decided.len();
    let mails = wait_mails(
        &maildir,
        &mut seen,
        |m| m.iter().filter(|m| !m.review).count() >= want,
        Duration::from_secs(600),
    )
    .await;
    let mut out_lat = Vec::new();
    for m in mails.iter().filter(|m| !m.review) {
        if let Some(at) = decided.get(&(m.org.clone(), m.number.clone())) {
            out_lat.push(ms_between(m.at, *at));
        }
    }
    let out_lat = sorted(out_lat);
    println!("requester mails: {} of {want}", out_lat.len());
    println!(
        "outcome_mail_p50_ms={:.1}\noutcome_mail_p99_ms={:.1}",
        pct(&out_lat, 50.0),
        pct(&out_lat, 99.0)
    );
    if errors > 0 || derr > 0 || review_lat.len() < accepted.len() || out_lat.len() < want {
        return Err("not every request went through (see above)".into());
    }
    Ok(())
}

/// A minimal SMTP server that accepts everything and writes each message to
/// `dir` as `<n>.eml` (written under another name first, then renamed, so a
/// reader never sees half a message). The file's mtime is the hand-over time.
async fn smtp_sink(addr: &str, dir: PathBuf) -> Res<()> {
    std::fs::create_dir_all(&dir)?;
    let listener = TcpListener::bind(addr).await?;
    println!("smtp sink on {}", listener.local_addr()?);
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    loop {
        let (sock, _) = listener.accept().await?;
        let dir = dir.clone();
        let counter = counter.clone();
        tokio::spawn(async move {
            let (r, mut w) = sock.into_split();
            let mut r = BufReader::new(r);
            if w.write_all(b"220 bench ESMTP\r\n").await.is_err() {
                return;
            }
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let cmd = line.trim_end().to_ascii_uppercase();
                let reply: &[u8] = if cmd.starts_with("EHLO") {
                    b"250-bench\r\n250 8BITMIME\r\n"
                } else if cmd.starts_with("DATA") {
                    if w.write_all(b"354 go ahead\r\n").await.is_err() {
                        return;
                    }
                    let mut msg = Vec::new();
                    loop {
                        line.clear();
                        match r.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == ".\r\n" || line == ".\n" {
                            break;
                        }
                        let l = line.strip_prefix('.').unwrap_or(&line);
                        msg.extend_from_slice(l.as_bytes());
                    }
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let tmp = dir.join(format!(".{n}.tmp"));
                    if std::fs::write(&tmp, &msg).is_ok() {
                        let _ = std::fs::rename(&tmp, dir.join(format!("{n}.eml")));
                    }
                    b"250 queued\r\n"
                } else if cmd.starts_with("QUIT") {
                    let _ = w.write_all(b"221 bye\r\n").await;
                    return;
                } else {
                    b"250 ok\r\n"
                };
                if w.write_all(reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The SQLite ceiling: one-row insert transactions in WAL with
/// `synchronous=NORMAL`, from one process at `concurrency`.
async fn sqlite_raw(dir: PathBuf, concurrency: usize, secs: u64) -> Res<()> {
    use sqlx::sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
    };
    std::fs::create_dir_all(&dir)?;
    let opts = SqliteConnectOptions::new()
        .filename(dir.join("raw.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(concurrency as u32)
        .connect_with(opts)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT NOT NULL, at BIGINT NOT NULL)")
        .execute(&pool)
        .await?;
    let stop = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < stop {
                    sqlx::query("INSERT INTO t (v, at) VALUES ($1, $2)")
                        .bind("a one-row transaction of about this size")
                        .bind(n as i64)
                        .execute(&pool)
                        .await
                        .expect("insert");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("sqlite_raw_tx_per_s={:.1}", total as f64 / secs);
    Ok(())
}
