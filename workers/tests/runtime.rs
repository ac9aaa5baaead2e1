//! Runtime regression tests, each run against real Redis (127.0.0.1:6379,
//! a random key prefix per test) and a real SQLite file (a temp dir per
//! test). They cover the defects of the stock apalis storages listed in
//! DESIGN.md, "The job runtime, and why it has its own backends".
//!
//! Set `WT_TRACE=1` to see the runtime's logs.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use approvald_workers::{
    CatchUp, Clock, CronSchedule, Job, JobError, JobInfo, ManualClock, PushOptions, Queue,
    QueueConfig, Runtime, SystemClock, testing,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

const REDIS_URL: &str = "redis://127.0.0.1:6379";

// ---- harness -----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Redis,
    Sqlite,
}

/// One isolated queue: a Redis prefix or a SQLite file.
struct Env {
    kind: Kind,
    prefix: String,
    dir: tempfile::TempDir,
}

impl Env {
    fn new(kind: Kind) -> Self {
        init_tracing();
        let prefix = format!("wt-{}", uuid::Uuid::new_v4().simple());
        Self {
            kind,
            prefix,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn db_path(&self) -> String {
        self.dir
            .path()
            .join("queue.db")
            .to_string_lossy()
            .into_owned()
    }

    fn config(&self) -> QueueConfig {
        QueueConfig {
            prefix: self.prefix.clone(),
            lease: Duration::from_secs(5),
            idle_poll: Duration::from_millis(500),
            ..QueueConfig::default()
        }
    }

    /// A new handle (own connections) on this env's queue.
    async fn queue_with(&self, config: QueueConfig, clock: Arc<dyn Clock>) -> Queue {
        match self.kind {
            Kind::Redis => Queue::redis_with_clock(REDIS_URL, config, clock)
                .await
                .expect("Redis on 127.0.0.1:6379 is required for these tests"),
            Kind::Sqlite => {
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(approvald_workers::store::sqlite::connect_options(
                        &self.db_path(),
                    ))
                    .await
                    .expect("open SQLite file");
                Queue::sqlite_with_clock(pool, config, clock)
                    .await
                    .expect("SQLite queue setup")
            }
        }
    }

    async fn queue(&self) -> Queue {
        self.queue_with(self.config(), Arc::new(SystemClock)).await
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if self.kind == Kind::Redis {
            // Best effort: remove this test's keys from the shared server.
            if let Ok(client) = redis::Client::open(REDIS_URL)
                && let Ok(mut conn) = client.get_connection()
            {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}:*", self.prefix))
                    .query(&mut conn)
                    .unwrap_or_default();
                for chunk in keys.chunks(1000) {
                    let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
                }
            }
        }
    }
}

fn init_tracing() {
    if std::env::var_os("WT_TRACE").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_max_level(tracing::Level::DEBUG)
            .try_init();
    }
}

/// Runs the same scenario against both stores, as two tests.
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn redis() {
                super::$name(super::Kind::Redis).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name(super::Kind::Sqlite).await
            }
        }
    )*};
}

both_stores!(
    twenty_thousand_due_at_once,
    sigkill_mid_job_then_immediate_restart,
    attempt_limit_and_growing_backoff,
    panic_and_timeout_are_retried,
    permanent_error_dead_letters_at_once_and_redrive_works,
    dedupe_key_makes_one_job_within_window,
    two_runtimes_fire_each_cron_tick_once,
    missed_cron_ticks_are_caught_up,
    idle_worker_is_woken_by_push,
    graceful_shutdown_releases_unfinished_jobs,
    graceful_shutdown_lets_short_jobs_finish,
    register_with_sets_how_many_run_at_once,
    finished_and_dead_jobs_are_purged,
    leases_are_renewed_while_a_long_job_runs,
    undecodable_payload_is_dead_lettered_at_once,
);

/// A running runtime and the handle to stop it.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn start(runtime: Runtime) -> Self {
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(runtime.run(async move {
            let _ = rx.await;
        }));
        Self {
            stop: Some(tx),
            done,
        }
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), self.done)
            .await
            .expect("runtime stops within 60 s")
            .expect("runtime task")
    }
}

async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---- 20,000 jobs due at once ------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct Bulk {
    n: u32,
}

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<HashMap<u32, u32>>>);

impl Seen {
    fn record(&self, n: u32) {
        *self.0.lock().unwrap().entry(n).or_default() += 1;
    }
    fn distinct(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn duplicates(&self) -> usize {
        self.0.lock().unwrap().values().filter(|c| **c > 1).count()
    }
}

impl Job for Bulk {
    const NAME: &'static str = "bulk";
    const CONCURRENCY: usize = 50;
    type Context = Seen;
    async fn run(self, ctx: Seen, _info: JobInfo) -> Result<(), JobError> {
        ctx.record(self.n);
        Ok(())
    }
}

/// apalis-redis died for good with ~8,000 jobs due at once (one unbounded Lua
/// call). Here 20,000 due jobs are all processed.
async fn twenty_thousand_due_at_once(kind: Kind) {
    const N: u32 = 20_000;
    let env = Env::new(kind);
    let queue = env.queue().await;
    let t0 = Instant::now();
    let jobs: Vec<Bulk> = (0..N).map(|n| Bulk { n }).collect();
    for chunk in jobs.chunks(2000) {
        let batch: Vec<(&Bulk, PushOptions)> =
            chunk.iter().map(|j| (j, PushOptions::default())).collect();
        queue.push_many(&batch).await.expect("push");
    }
    let pushed = t0.elapsed();
    assert_eq!(
        queue.stats("bulk").await.unwrap().ready + queue.stats("bulk").await.unwrap().scheduled,
        N as u64
    );

    let seen = Seen::default();
    let t1 = Instant::now();
    let rt = Running::start(Runtime::new(queue.clone()).register::<Bulk>(seen.clone()));
    testing::drain(&queue, &["bulk"], Duration::from_secs(150))
        .await
        .expect("all 20,000 jobs processed");
    let took = t1.elapsed();
    rt.stop().await.expect("clean stop");
    assert_eq!(seen.distinct(), N as usize, "every job ran");
    println!(
        "{kind:?}: pushed {N} in {:.2}s, processed in {:.2}s ({:.0} jobs/s), duplicates {}",
        pushed.as_secs_f64(),
        took.as_secs_f64(),
        N as f64 / took.as_secs_f64(),
        seen.duplicates()
    );
    assert_eq!(seen.duplicates(), 0, "no job ran twice without a crash");
    testing::assert_empty(&queue, &["bulk"]).await;
}

// ---- SIGKILL of a worker process ---------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct KillTest {
    n: u64,
}

/// Pushed by the test; run by the `testworker` binary (same NAME/payload).
impl Job for KillTest {
    const NAME: &'static str = "killtest";
    type Context = ();
    async fn run(self, _ctx: (), _info: JobInfo) -> Result<(), JobError> {
        Err(JobError::permanent(anyhow::anyhow!(
            "KillTest runs in the testworker process"
        )))
    }
}

struct Child {
    proc: std::process::Child,
}

impl Child {
    fn spawn(env: &Env, lease_ms: u64, log: &std::path::Path) -> Self {
        let url = match env.kind {
            Kind::Redis => REDIS_URL.to_string(),
            Kind::Sqlite => env.db_path(),
        };
        let proc = std::process::Command::new(env!("CARGO_BIN_EXE_testworker"))
            .env(
                "WT_STORE",
                if env.kind == Kind::Redis {
                    "redis"
                } else {
                    "sqlite"
                },
            )
            .env("WT_URL", url)
            .env("WT_PREFIX", &env.prefix)
            .env("WT_LEASE_MS", lease_ms.to_string())
            .env("WT_JOB_MS", "100")
            .env("WT_LOG", log)
            .spawn()
            .expect("spawn testworker");
        Self { proc }
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.proc.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig}");
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.proc.kill();
        let _ = self.proc.wait();
    }
}

/// (id, attempt, pid) per finished run in the log.
fn read_runs(log: &std::path::Path) -> Vec<(String, u32, u32)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((
                it.next()?.to_string(),
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// A worker process killed with SIGKILL while jobs run: its leases expire
/// and every job completes (apalis needed ~300 s and kept attempt 1). The
/// replacement is started at once with the same config (apalis refused the
/// same worker name for ~30 s).
async fn sigkill_mid_job_then_immediate_restart(kind: Kind) {
    const N: u64 = 150;
    const LEASE_MS: u64 = 2000;
    let env = Env::new(kind);
    let queue = env.queue().await;
    let log = env.dir.path().join("runs.log");
    let jobs: Vec<KillTest> = (0..N).map(|n| KillTest { n }).collect();
    let batch: Vec<(&KillTest, PushOptions)> =
        jobs.iter().map(|j| (j, PushOptions::default())).collect();
    let ids: HashSet<String> = queue
        .push_many(&batch)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();

    let first = Child::spawn(&env, LEASE_MS, &log);
    eventually(
        "first worker finished 30 jobs",
        Duration::from_secs(60),
        || {
            let n = read_runs(&log).len();
            async move { n >= 30 }
        },
    )
    .await;
    // Kill while jobs are leased (a worker between two batches holds none):
    // wait until the store shows some in flight, then kill at once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let running_at_kill = loop {
        let running = queue.stats("killtest").await.unwrap().running;
        if running > 0 {
            break running;
        }
        assert!(
            Instant::now() < deadline,
            "no job ever in flight in the first worker"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    first.signal("KILL");
    let first_pid = first.proc.id();
    drop(first);
    let killed_at = Instant::now();

    // Same configuration, started at once.
    let second = Child::spawn(&env, LEASE_MS, &log);
    testing::drain(&queue, &["killtest"], Duration::from_secs(90))
        .await
        .expect("every job completed after the kill");
    let drained_after = killed_at.elapsed();

    let runs = read_runs(&log);
    let mut per_id: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (id, attempt, _) in &runs {
        per_id.entry(id.as_str()).or_default().push(*attempt);
    }
    let done: HashSet<String> = per_id.keys().map(|s| s.to_string()).collect();
    assert_eq!(done, ids, "every pushed job completed");
    let duplicates: Vec<_> = per_id.iter().filter(|(_, a)| a.len() > 1).collect();
    let second_pid = second.proc.id();
    let by_second = runs.iter().filter(|r| r.2 == second_pid).count();
    let retried = runs
        .iter()
        .filter(|r| r.2 == second_pid && r.1 >= 2)
        .count();
    println!(
        "{kind:?}: {N} jobs, {running_at_kill} leased at SIGKILL of pid {first_pid}; replacement ran {by_second}, \
         {retried} of them as attempt >= 2; all done {:.1}s after the kill; duplicates: {} {:?}",
        drained_after.as_secs_f64(),
        duplicates.len(),
        duplicates
    );
    assert!(
        running_at_kill > 0,
        "jobs were in flight when the worker was killed"
    );
    assert!(
        by_second > 0,
        "the immediately restarted worker processed jobs"
    );
    assert!(
        retried > 0,
        "jobs orphaned by the kill ran again with their attempt counted"
    );

    // The replacement stops gracefully on SIGTERM and exits 0.
    second.signal("TERM");
    let mut second = second;
    let status = tokio::task::spawn_blocking(move || {
        let s = second.proc.wait();
        (s, second)
    })
    .await
    .unwrap()
    .0
    .unwrap();
    assert!(
        status.success(),
        "testworker exits 0 after SIGTERM: {status}"
    );
    testing::assert_empty(&queue, &["killtest"]).await;
}

// ---- attempts and backoff -----------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct AlwaysFails;

#[derive(Clone, Default)]
struct Attempts(Arc<Mutex<Vec<(u32, Instant)>>>);

impl Job for AlwaysFails {
    const NAME: &'static str = "always_fails";
    const MAX_ATTEMPTS: u32 = 4;
    type Context = Attempts;
    fn backoff(attempt: u32) -> Duration {
        // No jitter, so the test can check the growth: 200, 400, 800 ms.
        Duration::from_millis(200 << (attempt - 1))
    }
    async fn run(self, ctx: Attempts, info: JobInfo) -> Result<(), JobError> {
        ctx.0.lock().unwrap().push((info.attempt, Instant::now()));
        Err(JobError::retryable(anyhow::anyhow!(
            "upstream unavailable (attempt {})",
            info.attempt
        )))
    }
}

/// apalis-redis ignored max_attempts (25, linear); apalis-sqlite retried with
/// no backoff. Here: exactly MAX_ATTEMPTS runs, gaps of at least the backoff,
/// growing, then the dead-letter set.
async fn attempt_limit_and_growing_backoff(kind: Kind) {
    let env = Env::new(kind);
    let queue = env.queue().await;
    let seen = Attempts::default();
    let rt = Running::start(Runtime::new(queue.clone()).register::<AlwaysFails>(seen.clone()));
    queue
        .push(&AlwaysFails, PushOptions::default())
        .await
        .unwrap();
    eventually("job dead-lettered", Duration::from_secs(30), || {
        let q = queue.clone();
        async move { q.stats("always_fails").await.unwrap().dead == 1 }
    })
    .await;
    rt.stop().await.unwrap();

    let runs = seen.0.lock().unwrap().clone();
    let attempts: Vec<u32> = runs.iter().map(|r| r.0).collect();
    assert_eq!(
        attempts,
        vec![1, 2, 3, 4],
        "exactly MAX_ATTEMPTS runs, numbered"
    );
    let gaps: Vec<Duration> = runs.windows(2).map(|w| w[1].1 - w[0].1).collect();
    println!("{kind:?}: gaps between attempts {gaps:?}");
    for (i, gap) in gaps.iter().enumerate() {
        let backoff = AlwaysFails::backoff(i as u32 + 1);
        assert!(
            *gap + Duration::from_millis(5) >= backoff,
            "gap {i} {gap:?} shorter than backoff {backoff:?}"
        );
    }
    // Each gap is at least its own backoff (200, 400, 800 ms), so the delay
    // grows; comparing gaps with each other would be a timing assertion (a
    // stall on a busy machine can stretch any one of them).
    assert!(
        gaps[2] >= Duration::from_millis(800),
        "third gap follows the doubled backoff: {gaps:?}"
    );
    let dead = queue.list_dead("always_fails", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 4);
    assert!(
        dead[0].last_error.contains("attempt 4"),
        "last error kept: {}",
        dead[0].last_error
    );
}

// ---- panic and timeout ----------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct Flaky;

impl Job for Flaky {
    const NAME: &'static str = "flaky";
    const MAX_ATTEMPTS: u32 = 5;
    const TIMEOUT: Duration = Duration::from_millis(300);
    type Context = Attempts;
    fn backoff(_attempt: u32) -> Duration {
        Duration::from_millis(50)
    }
    async fn run(self, ctx: Attempts, info: JobInfo) -> Result<(), JobError> {
        ctx.0.lock().unwrap().push((info.attempt, Instant::now()));
        match info.attempt {
            1 => panic!("handler bug on attempt 1"),
            2 => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// A panicking handler does not kill the worker and counts as a retryable
/// failure; so does a run past the job's TIMEOUT.
async fn panic_and_timeout_are_retried(kind: Kind) {
    let env = Env::new(kind);
    let queue = env.queue().await;
    let seen = Attempts::default();
    let rt = Running::start(Runtime::new(queue.clone()).register::<Flaky>(seen.clone()));
    queue.push(&Flaky, PushOptions::default()).await.unwrap();
    testing::drain(&queue, &["flaky"], Duration::from_secs(20))
        .await
        .unwrap();
    let attempts: Vec<u32> = seen.0.lock().unwrap().iter().map(|r| r.0).collect();
    assert_eq!(attempts, vec![1, 2, 3], "panic, then timeout, then success");
    // The worker survived the panic and still takes jobs.
    queue.push(&Flaky, PushOptions::default()).await.unwrap();
    testing::drain(&queue, &["flaky"], Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(seen.0.lock().unwrap().len(), 6);
    rt.stop().await.unwrap();
    testing::assert_empty(&queue, &["flaky"]).await;
}

// ---- permanent error, dead letter, redrive -----------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct Picky {
    ok_after_redrive: bool,
}

#[derive(Clone, Default)]
struct PickyCtx {
    runs: Arc<Mutex<Vec<u32>>>,
    fixed: Arc<std::sync::atomic::AtomicBool>,
}

impl Job for Picky {
    const NAME: &'static str = "picky";
    const MAX_ATTEMPTS: u32 = 5;
    type Context = PickyCtx;
    async fn run(self, ctx: PickyCtx, info: JobInfo) -> Result<(), JobError> {
        ctx.runs.lock().unwrap().push(info.attempt);
        if ctx.fixed.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err(JobError::permanent(anyhow::anyhow!(
                "request 42 has no such kind"
            )))
        }
    }
}

/// A permanent error goes to the dead-letter set at once (no retries); an
/// operator sees it in `list_dead` and re-drives it.
async fn permanent_error_dead_letters_at_once_and_redrive_works(kind: Kind) {
    let env = Env::new(kind);
    let queue = env.queue().await;
    let ctx = PickyCtx::default();
    let rt = Running::start(Runtime::new(queue.clone()).register::<Picky>(ctx.clone()));
    let id = queue
        .push(
            &Picky {
                ok_after_redrive: true,
            },
            PushOptions::default(),
        )
        .await
        .unwrap()
        .id;
    eventually("dead-lettered", Duration::from_secs(10), || {
        let q = queue.clone();
        async move { q.stats("picky").await.unwrap().dead == 1 }
    })
    .await;
    // Give a (wrong) retry time to happen: it must not.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        *ctx.runs.lock().unwrap(),
        vec![1],
        "no retry after a permanent error"
    );
    let dead = queue.list_dead("picky", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].attempts, 1);
    assert!(
        dead[0].last_error.contains("no such kind"),
        "{}",
        dead[0].last_error
    );

    ctx.fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        queue.redrive("picky", &id).await.unwrap(),
        "redrive finds the dead job"
    );
    testing::drain(&queue, &["picky"], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        *ctx.runs.lock().unwrap(),
        vec![1, 1],
        "re-driven with a fresh attempt budget"
    );
    assert!(queue.list_dead("picky", 10).await.unwrap().is_empty());
    rt.stop().await.unwrap();
    testing::assert_empty(&queue, &["picky"]).await;
}

// ---- dedupe ----------------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct Mail {
    to: String,
}

#[derive(Clone, Default)]
struct Count(Arc<std::sync::atomic::AtomicUsize>);

impl Count {
    fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Job for Mail {
    const NAME: &'static str = "mail";
    type Context = Count;
    async fn run(self, ctx: Count, _info: JobInfo) -> Result<(), JobError> {
        ctx.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// Three pushes with one dedupe key make one job; the key still holds after
/// the job finished (apalis-redis deleted it at once), and lapses after the
/// window.
async fn dedupe_key_makes_one_job_within_window(kind: Kind) {
    let env = Env::new(kind);
    let config = QueueConfig {
        dedupe_window: Duration::from_secs(3),
        ..env.config()
    };
    let queue = env.queue_with(config, Arc::new(SystemClock)).await;
    let count = Count::default();
    let rt = Running::start(Runtime::new(queue.clone()).register::<Mail>(count.clone()));
    let mail = Mail {
        to: "a@example.com".into(),
    };
    let key = || PushOptions::default().dedupe("request-7:approved");
    let pushed_at = Instant::now();
    let a = queue.push(&mail, key()).await.unwrap();
    let b = queue.push(&mail, key()).await.unwrap();
    let c = queue.push(&mail, key()).await.unwrap();
    assert!(!a.deduplicated && b.deduplicated && c.deduplicated);
    assert_eq!(
        (a.id.as_str(), a.id.as_str()),
        (b.id.as_str(), c.id.as_str()),
        "dedupe answers the holder's id"
    );
    testing::drain(&queue, &["mail"], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(count.get(), 1);

    // Finished, still within the window: still one.
    let d = queue.push(&mail, key()).await.unwrap();
    assert!(d.deduplicated, "key holds after the job finished");
    assert_eq!(d.id, a.id);
    testing::drain(&queue, &["mail"], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(count.get(), 1);

    // After the window a new job is made.
    tokio::time::sleep(
        (pushed_at + Duration::from_millis(3200)).saturating_duration_since(Instant::now()),
    )
    .await;
    let e = queue.push(&mail, key()).await.unwrap();
    assert!(!e.deduplicated, "window lapsed");
    testing::drain(&queue, &["mail"], Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(count.get(), 2);
    rt.stop().await.unwrap();
}

// ---- cron ---------------------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct Tick {
    schedule: String,
    at_ms: i64,
}

#[derive(Clone, Default)]
struct Ticks(Arc<Mutex<Vec<(String, i64)>>>);

impl Job for Tick {
    const NAME: &'static str = "tick";
    type Context = Ticks;
    async fn run(self, ctx: Ticks, _info: JobInfo) -> Result<(), JobError> {
        ctx.0.lock().unwrap().push((self.schedule, self.at_ms));
        Ok(())
    }
}

fn tick_maker(schedule: &'static str) -> impl Fn(DateTime<Utc>) -> Tick + Send + Sync + 'static {
    move |t| Tick {
        schedule: schedule.to_string(),
        at_ms: t.timestamp_millis(),
    }
}

/// apalis-cron fired each tick once per process. Two runtimes (own store
/// connections, own worker ids) on one every-second schedule: each tick runs
/// exactly once.
async fn two_runtimes_fire_each_cron_tick_once(kind: Kind) {
    let env = Env::new(kind);
    let ticks = Ticks::default();
    let sched = CronSchedule::new("every-second", "* * * * * *", chrono_tz::Europe::Paris);
    let mut runtimes = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let queue = env.queue().await;
        let rt = Runtime::new(queue)
            .register::<Tick>(ticks.clone())
            .cron::<Tick>(sched.clone(), tick_maker("every-second"));
        ids.push(rt.worker_id().to_string());
        runtimes.push(Running::start(rt));
    }
    assert_ne!(ids[0], ids[1], "unique worker ids");
    tokio::time::sleep(Duration::from_millis(4500)).await;
    for rt in runtimes {
        rt.stop().await.unwrap();
    }
    let queue = env.queue().await;
    testing::drain(&queue, &["tick"], Duration::from_secs(5))
        .await
        .ok();
    let got = ticks.0.lock().unwrap().clone();
    let mut per_tick: BTreeMap<i64, usize> = BTreeMap::new();
    for (_, at) in &got {
        *per_tick.entry(*at).or_default() += 1;
    }
    println!("{kind:?}: ticks {per_tick:?}");
    assert!(
        per_tick.len() >= 3,
        "a tick every second for 4.5 s: {per_tick:?}"
    );
    assert!(
        per_tick.values().all(|n| *n == 1),
        "each tick ran once: {per_tick:?}"
    );
    assert!(
        per_tick.keys().all(|ms| ms % 1000 == 0),
        "ticks on whole seconds"
    );
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// apalis-cron skipped ticks missed while down. With a manual clock: a
/// runtime fires 00:01, stops; time moves past 00:02, 00:03, 00:04; a new
/// runtime fires 00:04 only (Latest) or 00:02, 00:03, 00:04 (All).
async fn missed_cron_ticks_are_caught_up(kind: Kind) {
    let env = Env::new(kind);
    let clock = ManualClock::new(at("2026-01-01T00:00:30Z"));
    let config = QueueConfig {
        idle_poll: Duration::from_millis(100),
        ..env.config()
    };
    let queue = env.queue_with(config, Arc::new(clock.clone())).await;
    let ticks = Ticks::default();
    let build = |queue: Queue| {
        Runtime::new(queue)
            .register::<Tick>(ticks.clone())
            .cron::<Tick>(
                CronSchedule::new("latest", "0 * * * * *", chrono_tz::UTC),
                tick_maker("latest"),
            )
            .cron::<Tick>(
                CronSchedule::new("all", "0 * * * * *", chrono_tz::UTC).catch_up(CatchUp::All),
                tick_maker("all"),
            )
    };
    let expect = |want: &[(&str, &str)]| {
        let mut want: Vec<(String, i64)> = want
            .iter()
            .map(|(s, t)| (s.to_string(), at(t).timestamp_millis()))
            .collect();
        want.sort();
        want
    };
    let got = || {
        let mut g = ticks.0.lock().unwrap().clone();
        g.sort();
        g
    };

    let first = Running::start(build(queue.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        got().is_empty(),
        "no catch-up on a schedule's very first start"
    );
    clock.set(at("2026-01-01T00:01:00.200Z"));
    queue.notify_all();
    let want1 = expect(&[
        ("all", "2026-01-01T00:01:00Z"),
        ("latest", "2026-01-01T00:01:00Z"),
    ]);
    eventually("00:01 fired", Duration::from_secs(10), || {
        let ok = got() == want1;
        async move { ok }
    })
    .await;
    first.stop().await.unwrap();

    // Down over three ticks.
    clock.set(at("2026-01-01T00:04:30Z"));
    let second = Running::start(build(queue.clone()));
    let want2 = expect(&[
        ("all", "2026-01-01T00:01:00Z"),
        ("all", "2026-01-01T00:02:00Z"),
        ("all", "2026-01-01T00:03:00Z"),
        ("all", "2026-01-01T00:04:00Z"),
        ("latest", "2026-01-01T00:01:00Z"),
        ("latest", "2026-01-01T00:04:00Z"),
    ]);
    eventually("missed ticks caught up", Duration::from_secs(10), || {
        let ok = got() == want2;
        async move { ok }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(got(), want2, "nothing more fired");
    second.stop().await.unwrap();
    testing::assert_empty(&queue, &["tick"]).await;
}

// ---- wake-up on push ---------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct Ping {
    sent_ms: i64,
}

#[derive(Clone, Default)]
struct Started(Arc<Mutex<Vec<(i64, Instant)>>>);

impl Job for Ping {
    const NAME: &'static str = "ping";
    type Context = Started;
    async fn run(self, ctx: Started, _info: JobInfo) -> Result<(), JobError> {
        ctx.0
            .lock()
            .unwrap()
            .push((Utc::now().timestamp_millis(), Instant::now()));
        Ok(())
    }
}

/// An idle worker with a 30 s fallback poll picks up a job pushed from
/// another queue handle (other connections) at once: the store's wake-up
/// (pub/sub, or SQLite's notify) works. apalis: 26 s at p50. A delayed job
/// starts at its `run_at`, not at the next poll.
async fn idle_worker_is_woken_by_push(kind: Kind) {
    let env = Env::new(kind);
    let config = QueueConfig {
        idle_poll: Duration::from_secs(30),
        ..env.config()
    };
    let worker_queue = env.queue_with(config.clone(), Arc::new(SystemClock)).await;
    let started = Started::default();
    let rt = Running::start(Runtime::new(worker_queue).register::<Ping>(started.clone()));
    // Let the worker go idle (first fetch found nothing).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let pusher = env.queue_with(config, Arc::new(SystemClock)).await;
    let t0 = Instant::now();
    pusher
        .push(
            &Ping {
                sent_ms: Utc::now().timestamp_millis(),
            },
            PushOptions::default(),
        )
        .await
        .unwrap();
    eventually("job started", Duration::from_secs(10), || {
        let n = started.0.lock().unwrap().len();
        async move { n == 1 }
    })
    .await;
    let pickup = started.0.lock().unwrap()[0].1 - t0;
    println!(
        "{kind:?}: idle pickup after push {:.1} ms",
        pickup.as_secs_f64() * 1000.0
    );
    assert!(
        pickup < Duration::from_secs(10),
        "woken by the push, not the 30 s poll"
    );

    // Delayed by 400 ms: starts at run_at (ms precision), long before the poll.
    let run_at = Utc::now() + chrono::Duration::milliseconds(400);
    let t1 = Instant::now();
    pusher
        .push(&Ping { sent_ms: 0 }, PushOptions::at(run_at))
        .await
        .unwrap();
    eventually("delayed job started", Duration::from_secs(10), || {
        let n = started.0.lock().unwrap().len();
        async move { n == 2 }
    })
    .await;
    let (start_ms, start_at) = started.0.lock().unwrap()[1];
    println!(
        "{kind:?}: delayed job started {} ms after run_at ({:.0} ms after push)",
        start_ms - run_at.timestamp_millis(),
        (start_at - t1).as_secs_f64() * 1000.0
    );
    assert!(start_ms >= run_at.timestamp_millis(), "not before run_at");
    assert!(
        start_at - t1 < Duration::from_secs(10),
        "at run_at, not at the 30 s poll"
    );
    rt.stop().await.unwrap();
    testing::assert_empty(&pusher, &["ping"]).await;
}

// ---- graceful shutdown ----------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct Slow {
    ms: u64,
}

#[derive(Clone, Default)]
struct SlowCtx {
    started: Arc<Mutex<Vec<(String, u32)>>>,
    finished: Arc<Mutex<Vec<String>>>,
}

impl Job for Slow {
    const NAME: &'static str = "slow";
    const CONCURRENCY: usize = 2;
    type Context = SlowCtx;
    async fn run(self, ctx: SlowCtx, info: JobInfo) -> Result<(), JobError> {
        ctx.started
            .lock()
            .unwrap()
            .push((info.id.clone(), info.attempt));
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        ctx.finished.lock().unwrap().push(info.id);
        Ok(())
    }
}

/// On shutdown: stop fetching; in-flight jobs that outlive the shutdown
/// timeout are aborted and released, so another runtime takes them at once
/// (not after the 30 s lease) with their attempt not used up.
async fn graceful_shutdown_releases_unfinished_jobs(kind: Kind) {
    let env = Env::new(kind);
    let config = QueueConfig {
        lease: Duration::from_secs(30),
        ..env.config()
    };
    let queue = env.queue_with(config, Arc::new(SystemClock)).await;
    let ctx = SlowCtx::default();
    let jobs: Vec<Slow> = (0..5).map(|_| Slow { ms: 20_000 }).collect();
    let batch: Vec<(&Slow, PushOptions)> =
        jobs.iter().map(|j| (j, PushOptions::default())).collect();
    queue.push_many(&batch).await.unwrap();
    let rt = Running::start(
        Runtime::new(queue.clone())
            .register::<Slow>(ctx.clone())
            .shutdown_timeout(Duration::from_millis(800)),
    );
    eventually("two jobs running", Duration::from_secs(10), || {
        let n = ctx.started.lock().unwrap().len();
        async move { n == 2 }
    })
    .await;
    let stats = queue.stats("slow").await.unwrap();
    assert_eq!(
        (stats.running, stats.ready + stats.scheduled),
        (2, 3),
        "fetch bounded by free slots: {stats:?}"
    );
    let t0 = Instant::now();
    rt.stop().await.unwrap();
    let stop_took = t0.elapsed();
    let stats = queue.stats("slow").await.unwrap();
    println!(
        "{kind:?}: stop took {:.2}s; after stop {stats:?}",
        stop_took.as_secs_f64()
    );
    assert_eq!(stats.running, 0, "nothing left leased");
    assert_eq!(
        stats.ready + stats.scheduled,
        5,
        "all five back in the queue"
    );
    assert!(ctx.finished.lock().unwrap().is_empty());

    // Another runtime takes them at once, as attempt 1.
    let ctx2 = SlowCtx::default();
    let rt2 = Running::start(
        Runtime::new(queue.clone())
            .register::<Slow>(ctx2.clone())
            .shutdown_timeout(Duration::from_millis(300)),
    );
    eventually(
        "released jobs start again well before the 30 s lease",
        Duration::from_secs(10),
        || {
            let n = ctx2.started.lock().unwrap().len();
            async move { n >= 2 }
        },
    )
    .await;
    let restarted = ctx2.started.lock().unwrap().clone();
    assert!(
        restarted.iter().all(|(_, a)| *a == 1),
        "release did not use up an attempt: {restarted:?}"
    );
    let released_ids: HashSet<String> = ctx
        .started
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.0.clone())
        .collect();
    assert!(
        restarted.iter().any(|(id, _)| released_ids.contains(id)) || restarted.len() == 2,
        "{restarted:?}"
    );
    // Stop again (the jobs sleep 20 s): released once more.
    rt2.stop().await.unwrap();
    assert_eq!(queue.stats("slow").await.unwrap().running, 0);
}

/// `register_with` overrides the job's own `CONCURRENCY` (2 for `Slow`):
/// exactly that many run at once, and the rest stay in the queue unleased.
async fn register_with_sets_how_many_run_at_once(kind: Kind) {
    let env = Env::new(kind);
    let queue = env.queue().await;
    let ctx = SlowCtx::default();
    let jobs: Vec<Slow> = (0..7).map(|_| Slow { ms: 20_000 }).collect();
    let batch: Vec<(&Slow, PushOptions)> =
        jobs.iter().map(|j| (j, PushOptions::default())).collect();
    queue.push_many(&batch).await.unwrap();
    let rt = Running::start(
        Runtime::new(queue.clone())
            .register_with::<Slow>(ctx.clone(), 5)
            .shutdown_timeout(Duration::from_millis(300)),
    );
    eventually("five jobs running", Duration::from_secs(10), || {
        let n = ctx.started.lock().unwrap().len();
        async move { n == 5 }
    })
    .await;
    // Give a sixth the chance to start, were the limit not applied.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ctx.started.lock().unwrap().len(), 5, "no sixth started");
    let stats = queue.stats("slow").await.unwrap();
    assert_eq!(
        (stats.running, stats.ready + stats.scheduled),
        (5, 2),
        "fetch bounded by the configured slots: {stats:?}"
    );
    rt.stop().await.unwrap();
}

/// Jobs that finish within the shutdown timeout are completed, not released.
async fn graceful_shutdown_lets_short_jobs_finish(kind: Kind) {
    let env = Env::new(kind);
    let queue = env.queue().await;
    let ctx = SlowCtx::default();
    let jobs: Vec<Slow> = (0..4).map(|_| Slow { ms: 700 }).collect();
    let batch: Vec<(&Slow, PushOptions)> =
        jobs.iter().map(|j| (j, PushOptions::default())).collect();
    queue.push_many(&batch).await.unwrap();
    let rt = Running::start(
        Runtime::new(queue.clone())
            .register::<Slow>(ctx.clone())
            .shutdown_timeout(Duration::from_secs(10)),
    );
    eventually("two jobs running", Duration::from_secs(10), || {
        let n = ctx.started.lock().unwrap().len();
        async move { n == 2 }
    })
    .await;
    rt.stop().await.unwrap();
    let started = ctx.started.lock().unwrap().clone();
    let finished = ctx.finished.lock().unwrap().clone();
    assert_eq!(started.len(), 2, "no new job started after shutdown began");
    assert_eq!(finished.len(), 2, "in-flight jobs finished");
    let stats = queue.stats("slow").await.unwrap();
    assert_eq!(
        (stats.running, stats.ready + stats.scheduled, stats.dead),
        (0, 2, 0),
        "{stats:?}"
    );
}

// ---- store outages ---------------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct Work {
    n: u64,
}

#[derive(Clone, Default)]
struct Ran(Arc<Mutex<HashSet<String>>>);

impl Job for Work {
    const NAME: &'static str = "work";
    const CONCURRENCY: usize = 8;
    type Context = Ran;
    async fn run(self, ctx: Ran, info: JobInfo) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        ctx.0.lock().unwrap().insert(info.id);
        Ok(())
    }
}

/// A private redis-server on a spare port, which the test may stop.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    proc: Option<std::process::Child>,
}

impl OwnRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut me = Self {
            port,
            dir: tempfile::tempdir().unwrap(),
            proc: None,
        };
        me.spawn();
        me
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// No RDB snapshots; the append-only file (fsync on every write) keeps
    /// the data across a restart, so "no pushed job lost" is meaningful.
    fn spawn(&mut self) {
        let proc = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the outage test");
        self.proc = Some(proc);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "own redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.proc.as_ref().expect("running").id();
        assert!(
            std::process::Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status()
                .unwrap()
                .success()
        );
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if self.proc.is_some() {
            self.signal("CONT");
        }
        self.kill();
    }
}

/// Redis frozen (SIGSTOP: replies stop, as with a hung server) and then
/// killed and restarted 10 s later, all under load: the workers recover by
/// themselves and every job whose push succeeded runs (apalis: one 500 ms
/// timeout killed the worker pool). Then Redis goes away for good: `run`
/// returns an error instead of idling forever (apalis' Monitor returned Ok
/// with every worker dead).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_under_load_recovers_then_gives_up_past_limit() {
    init_tracing();
    let mut redis = OwnRedis::start();
    let config = QueueConfig {
        prefix: "outage".into(),
        lease: Duration::from_secs(5),
        idle_poll: Duration::from_millis(500),
        ..QueueConfig::default()
    };
    let queue = Queue::redis(&redis.url(), config).await.expect("own redis");
    let ran = Ran::default();
    let runtime = Runtime::new(queue.clone())
        .register::<Work>(ran.clone())
        .store_outage_limit(Duration::from_secs(20));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let mut done = tokio::spawn(runtime.run(async move {
        let _ = stop_rx.await;
    }));

    // Steady load: a push every 5 ms; a failed push is retried, and only
    // pushes that returned Ok count as accepted.
    let accepted = Arc::new(Mutex::new(HashSet::<String>::new()));
    let failed_pushes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pushing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let pusher = {
        let (queue, accepted, failed, pushing) = (
            queue.clone(),
            accepted.clone(),
            failed_pushes.clone(),
            pushing.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0u64;
            while pushing.load(std::sync::atomic::Ordering::SeqCst) {
                match queue.push(&Work { n }, PushOptions::default()).await {
                    Ok(p) => {
                        accepted.lock().unwrap().insert(p.id);
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(_) => {
                        failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = ran.0.lock().unwrap().len();
    assert!(before > 0, "jobs run before the outage");

    // 1. Frozen for 6 s.
    redis.signal("STOP");
    tokio::time::sleep(Duration::from_secs(6)).await;
    redis.signal("CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!done.is_finished(), "runtime survives a hung Redis");

    // 2. Stopped for 10 s, then restarted (same port, data from the AOF).
    redis.kill();
    tokio::time::sleep(Duration::from_secs(10)).await;
    redis.spawn();
    let after_restart = ran.0.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!done.is_finished(), "runtime survives Redis down for 10 s");
    pushing.store(false, std::sync::atomic::Ordering::SeqCst);
    pusher.await.unwrap();
    testing::drain(&queue, &["work"], Duration::from_secs(30))
        .await
        .expect("backlog drained after the outage");
    let accepted = accepted.lock().unwrap().clone();
    let ran_ids = ran.0.lock().unwrap().clone();
    let lost: Vec<_> = accepted.difference(&ran_ids).collect();
    println!(
        "outage: {} pushes accepted, {} failed during the outages, {} jobs ran ({} before the outages, {} when Redis \
         came back); lost: {}",
        accepted.len(),
        failed_pushes.load(std::sync::atomic::Ordering::SeqCst),
        ran_ids.len(),
        before,
        after_restart,
        lost.len()
    );
    assert!(lost.is_empty(), "accepted jobs never ran: {lost:?}");
    assert!(
        ran_ids.len() > after_restart,
        "jobs ran after Redis came back"
    );

    // 3. Gone for good: run gives up after the 20 s limit with one clear error.
    redis.kill();
    let gone_at = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(60), &mut done)
        .await
        .expect("run returns after the limit")
        .unwrap();
    let err = result.expect_err("run must fail when the store stays unreachable");
    let msg = format!("{err:#}");
    println!(
        "gave up after {:.1}s: {msg}",
        gone_at.elapsed().as_secs_f64()
    );
    assert!(msg.contains("unreachable"), "{msg}");
    assert!(
        gone_at.elapsed() >= Duration::from_secs(20),
        "not before the limit"
    );
    drop(stop_tx);
}

/// The same supervision on the in-memory store, quickly: a short outage is
/// ridden out; one past the limit ends `run` with an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_short_is_ridden_out_long_fails_run() {
    use approvald_workers::store::memory::MemoryStore;
    init_tracing();
    let store = Arc::new(MemoryStore::new());
    let config = QueueConfig {
        idle_poll: Duration::from_millis(100),
        ..QueueConfig::default()
    };
    let queue = Queue::with_store(store.clone(), config, Arc::new(SystemClock));
    let ran = Ran::default();
    let runtime = Runtime::new(queue.clone())
        .register::<Work>(ran.clone())
        .store_outage_limit(Duration::from_secs(3));
    let (_stop_tx, stop_rx) = oneshot::channel::<()>();
    let mut done = tokio::spawn(runtime.run(async move {
        let _ = stop_rx.await;
    }));
    queue
        .push(&Work { n: 1 }, PushOptions::default())
        .await
        .unwrap();
    testing::drain(&queue, &["work"], Duration::from_secs(5))
        .await
        .unwrap();

    store.set_down(true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    store.set_down(false);
    queue
        .push(&Work { n: 2 }, PushOptions::default())
        .await
        .unwrap();
    testing::drain(&queue, &["work"], Duration::from_secs(10))
        .await
        .expect("worker recovered");
    assert_eq!(ran.0.lock().unwrap().len(), 2);
    assert!(!done.is_finished());

    store.set_down(true);
    let t0 = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(20), &mut done)
        .await
        .expect("run gives up")
        .unwrap();
    let msg = format!("{:#}", result.expect_err("past the limit"));
    assert!(
        msg.contains("unreachable") && msg.contains("memory store is down"),
        "{msg}"
    );
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "not before the limit"
    );
}

// ---- metrics ------------------------------------------------------------------------------------------

mod recorder {
    //! A minimal `metrics` recorder that keeps counters and histogram counts.
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex, OnceLock},
    };

    use metrics::{
        Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata,
        Recorder, SharedString, Unit,
    };

    #[derive(Default)]
    pub struct Store {
        pub counters: Mutex<HashMap<String, u64>>,
        pub histograms: Mutex<HashMap<String, usize>>,
        pub gauges: Mutex<HashMap<String, f64>>,
    }

    fn name(key: &Key) -> String {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    struct Handle(Arc<Store>, String);
    impl CounterFn for Handle {
        fn increment(&self, v: u64) {
            *self
                .0
                .counters
                .lock()
                .unwrap()
                .entry(self.1.clone())
                .or_default() += v;
        }
        fn absolute(&self, v: u64) {
            self.0.counters.lock().unwrap().insert(self.1.clone(), v);
        }
    }
    impl HistogramFn for Handle {
        fn record(&self, _v: f64) {
            *self
                .0
                .histograms
                .lock()
                .unwrap()
                .entry(self.1.clone())
                .or_default() += 1;
        }
    }
    impl GaugeFn for Handle {
        fn increment(&self, v: f64) {
            *self
                .0
                .gauges
                .lock()
                .unwrap()
                .entry(self.1.clone())
                .or_default() += v;
        }
        fn decrement(&self, v: f64) {
            *self
                .0
                .gauges
                .lock()
                .unwrap()
                .entry(self.1.clone())
                .or_default() -= v;
        }
        fn set(&self, v: f64) {
            self.0.gauges.lock().unwrap().insert(self.1.clone(), v);
        }
    }

    struct Rec(Arc<Store>);
    impl Recorder for Rec {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(Arc::new(Handle(self.0.clone(), name(key))))
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(Arc::new(Handle(self.0.clone(), name(key))))
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(Arc::new(Handle(self.0.clone(), name(key))))
        }
    }

    /// The process-wide recorder (installed once per test binary).
    pub fn global() -> Arc<Store> {
        static STORE: OnceLock<Arc<Store>> = OnceLock::new();
        STORE
            .get_or_init(|| {
                let store = Arc::new(Store::default());
                metrics::set_global_recorder(Rec(store.clone()))
                    .expect("only this test installs a recorder");
                store
            })
            .clone()
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Metered {
    Ok,
    FailOnce,
    Permanent,
    Panic,
    Slow,
}

impl Job for Metered {
    const NAME: &'static str = "metered";
    const MAX_ATTEMPTS: u32 = 2;
    // Well above the time a panic takes to print its backtrace on a busy
    // machine, so a panic is never mistaken for a timeout.
    const TIMEOUT: Duration = Duration::from_secs(2);
    type Context = ();
    fn backoff(_attempt: u32) -> Duration {
        Duration::from_millis(20)
    }
    async fn run(self, _ctx: (), info: JobInfo) -> Result<(), JobError> {
        match (self, info.attempt) {
            (Metered::FailOnce, 1) => Err(JobError::retryable(anyhow::anyhow!("once"))),
            (Metered::Permanent, _) => Err(JobError::permanent(anyhow::anyhow!("never"))),
            (Metered::Panic, _) => panic!("metered panic"),
            (Metered::Slow, _) => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Outcomes, durations, pickup latency and queue depth reach the `metrics`
/// facade under the documented names and labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_recorded() {
    use approvald_workers::store::memory::MemoryStore;
    init_tracing();
    let rec = recorder::global();
    let queue = Queue::with_store(
        Arc::new(MemoryStore::new()),
        QueueConfig::default(),
        Arc::new(SystemClock),
    );
    for job in [
        Metered::Ok,
        Metered::FailOnce,
        Metered::Permanent,
        Metered::Panic,
        Metered::Slow,
    ] {
        queue.push(&job, PushOptions::default()).await.unwrap();
    }
    let rt = Running::start(
        Runtime::new(queue.clone())
            .register::<Metered>(())
            .metrics_interval(Duration::from_millis(50)),
    );
    testing::drain(&queue, &["metered"], Duration::from_secs(10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    rt.stop().await.unwrap();

    let counters = rec.counters.lock().unwrap().clone();
    let c = |outcome: &str| {
        counters
            .get(&format!(
                "approvald_jobs_total{{job=metered,outcome={outcome}}}"
            ))
            .copied()
            .unwrap_or(0)
    };
    println!("{counters:?}");
    // Ok: 1 + FailOnce's 2nd attempt. Retry: FailOnce 1st, Panic 1st, Slow 1st.
    // Dead: Permanent, Panic 2nd, Slow 2nd. Panic: 2. Timeout: 2.
    assert_eq!(
        (c("ok"), c("retry"), c("dead"), c("panic"), c("timeout")),
        (2, 3, 3, 2, 2)
    );
    let hist = rec.histograms.lock().unwrap().clone();
    assert_eq!(
        hist.get("approvald_job_seconds{job=metered}").copied(),
        Some(8),
        "one per attempt: {hist:?}"
    );
    assert_eq!(
        hist.get("approvald_job_pickup_seconds{job=metered}")
            .copied(),
        Some(8),
        "{hist:?}"
    );
    let gauges = rec.gauges.lock().unwrap().clone();
    assert_eq!(
        gauges
            .get("approvald_queue_depth{queue=metered,state=dead}")
            .copied(),
        Some(3.0),
        "{gauges:?}"
    );
    assert_eq!(
        gauges
            .get("approvald_queue_depth{queue=metered,state=ready}")
            .copied(),
        Some(0.0),
        "{gauges:?}"
    );
}

// ---- retention -------------------------------------------------------------------------------------------

impl Env {
    /// Whether the job's record still exists in the store (any state).
    async fn job_exists(&self, queue: &Queue, id: &str) -> bool {
        let _ = queue;
        match self.kind {
            Kind::Redis => {
                let client = redis::Client::open(REDIS_URL).unwrap();
                let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                redis::cmd("EXISTS")
                    .arg(format!("{}:job:{id}", self.prefix))
                    .query_async::<i64>(&mut conn)
                    .await
                    .unwrap()
                    == 1
            }
            Kind::Sqlite => {
                let pool = sqlx::SqlitePool::connect_with(
                    approvald_workers::store::sqlite::connect_options(&self.db_path()),
                )
                .await
                .unwrap();
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM wq_jobs WHERE id = ?1")
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                n == 1
            }
        }
    }
}

/// Finished and dead jobs are purged once past `keep_finished` / `keep_dead`
/// (they do not pile up forever).
async fn finished_and_dead_jobs_are_purged(kind: Kind) {
    let env = Env::new(kind);
    let config = QueueConfig {
        keep_finished: Duration::from_millis(300),
        keep_dead: Duration::from_millis(300),
        ..env.config()
    };
    let queue = env.queue_with(config, Arc::new(SystemClock)).await;
    let ctx = PickyCtx::default();
    let rt = Running::start(
        Runtime::new(queue.clone())
            .register::<Picky>(ctx.clone())
            .retention_interval(Duration::from_millis(100)),
    );
    let dead_id = queue
        .push(
            &Picky {
                ok_after_redrive: false,
            },
            PushOptions::default(),
        )
        .await
        .unwrap()
        .id;
    eventually("dead-lettered", Duration::from_secs(10), || {
        let q = queue.clone();
        async move { q.stats("picky").await.unwrap().dead == 1 }
    })
    .await;
    ctx.fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    let done_id = queue
        .push(
            &Picky {
                ok_after_redrive: false,
            },
            PushOptions::default(),
        )
        .await
        .unwrap()
        .id;
    testing::drain(&queue, &["picky"], Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        env.job_exists(&queue, &done_id).await,
        "finished job kept for keep_finished"
    );
    eventually(
        "dead and finished jobs purged",
        Duration::from_secs(10),
        || {
            let (q, env, done_id, dead_id) =
                (queue.clone(), &env, done_id.clone(), dead_id.clone());
            async move {
                q.stats("picky").await.unwrap().dead == 0
                    && !env.job_exists(&q, &done_id).await
                    && !env.job_exists(&q, &dead_id).await
            }
        },
    )
    .await;
    rt.stop().await.unwrap();
    testing::assert_empty(&queue, &["picky"]).await;
}

// ---- leases ----------------------------------------------------------------------------------------------

#[derive(Debug, Serialize, Deserialize)]
struct Long;

impl Job for Long {
    const NAME: &'static str = "long";
    type Context = SlowCtx;
    async fn run(self, ctx: SlowCtx, info: JobInfo) -> Result<(), JobError> {
        ctx.started
            .lock()
            .unwrap()
            .push((info.id.clone(), info.attempt));
        tokio::time::sleep(Duration::from_millis(5000)).await;
        ctx.finished.lock().unwrap().push(info.id);
        Ok(())
    }
}

/// A job running for 2.5 leases keeps its lease (renewed every lease/3): a
/// second runtime polling the same queue never gets it.
async fn leases_are_renewed_while_a_long_job_runs(kind: Kind) {
    let env = Env::new(kind);
    let config = QueueConfig {
        lease: Duration::from_secs(2),
        idle_poll: Duration::from_millis(100),
        ..env.config()
    };
    let ctx = SlowCtx::default();
    let a = env.queue_with(config.clone(), Arc::new(SystemClock)).await;
    let b = env.queue_with(config, Arc::new(SystemClock)).await;
    let rt_a = Running::start(Runtime::new(a.clone()).register::<Long>(ctx.clone()));
    a.push(&Long, PushOptions::default()).await.unwrap();
    eventually("job started", Duration::from_secs(5), || {
        let n = ctx.started.lock().unwrap().len();
        async move { n == 1 }
    })
    .await;
    let rt_b = Running::start(Runtime::new(b).register::<Long>(ctx.clone()));
    testing::drain(&a, &["long"], Duration::from_secs(20))
        .await
        .unwrap();
    rt_a.stop().await.unwrap();
    rt_b.stop().await.unwrap();
    let started = ctx.started.lock().unwrap().clone();
    assert_eq!(started.len(), 1, "ran once, lease kept: {started:?}");
    assert_eq!(ctx.finished.lock().unwrap().len(), 1);
    testing::assert_empty(&a, &["long"]).await;
}

// ---- supervision -----------------------------------------------------------------------------------------

mod faulty {
    //! A store that panics inside the first `fetch` (a bug in a backend), to
    //! show the supervisor rebuilds the worker.
    use std::sync::atomic::{AtomicUsize, Ordering};

    use approvald_workers::store::{
        DeadJob, LeasedJob, NewJob, Pushed, QueueStats, Store, StoreResult, Throughput, WorkerBeat,
        memory::MemoryStore,
    };
    use async_trait::async_trait;

    #[derive(Default)]
    pub struct PanicsOnce {
        pub inner: MemoryStore,
        pub fetches: AtomicUsize,
    }

    #[async_trait]
    impl Store for PanicsOnce {
        async fn setup(&self) -> StoreResult<()> {
            self.inner.setup().await
        }
        async fn push(&self, jobs: &[NewJob], now_ms: i64, w: i64) -> StoreResult<Vec<Pushed>> {
            self.inner.push(jobs, now_ms, w).await
        }
        async fn fetch(
            &self,
            q: &str,
            wid: &str,
            limit: usize,
            now_ms: i64,
            lease_ms: i64,
        ) -> StoreResult<Vec<LeasedJob>> {
            if self.fetches.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("bug in the store's fetch");
            }
            self.inner.fetch(q, wid, limit, now_ms, lease_ms).await
        }
        async fn renew(
            &self,
            q: &str,
            ids: &[String],
            wid: &str,
            until: i64,
        ) -> StoreResult<Vec<String>> {
            self.inner.renew(q, ids, wid, until).await
        }
        async fn complete(&self, q: &str, id: &str, wid: &str, now_ms: i64) -> StoreResult<()> {
            self.inner.complete(q, id, wid, now_ms).await
        }
        async fn retry(
            &self,
            q: &str,
            id: &str,
            wid: &str,
            run_at_ms: i64,
            e: &str,
        ) -> StoreResult<()> {
            self.inner.retry(q, id, wid, run_at_ms, e).await
        }
        async fn kill(
            &self,
            q: &str,
            id: &str,
            wid: &str,
            now_ms: i64,
            e: &str,
        ) -> StoreResult<()> {
            self.inner.kill(q, id, wid, now_ms, e).await
        }
        async fn release(&self, q: &str, ids: &[String], wid: &str) -> StoreResult<()> {
            self.inner.release(q, ids, wid).await
        }
        async fn wait_for_push(&self, q: &str, timeout_ms: u64) -> StoreResult<bool> {
            self.inner.wait_for_push(q, timeout_ms).await
        }
        async fn next_due_ms(&self, q: &str) -> StoreResult<Option<i64>> {
            self.inner.next_due_ms(q).await
        }
        async fn stats(&self, q: &str) -> StoreResult<QueueStats> {
            self.inner.stats(q).await
        }
        async fn list_dead(&self, q: &str, limit: usize) -> StoreResult<Vec<DeadJob>> {
            self.inner.list_dead(q, limit).await
        }
        async fn redrive(&self, q: &str, id: &str, now_ms: i64) -> StoreResult<bool> {
            self.inner.redrive(q, id, now_ms).await
        }
        async fn purge(
            &self,
            q: &str,
            before: i64,
            dead_before: i64,
            limit: usize,
        ) -> StoreResult<u64> {
            self.inner.purge(q, before, dead_before, limit).await
        }
        async fn claim_tick(&self, s: &str, tick_ms: i64) -> StoreResult<bool> {
            self.inner.claim_tick(s, tick_ms).await
        }
        async fn last_tick(&self, s: &str) -> StoreResult<Option<i64>> {
            self.inner.last_tick(s).await
        }
        async fn ping(&self) -> StoreResult<()> {
            self.inner.ping().await
        }
        async fn set_paused(&self, q: &str, paused: bool) -> StoreResult<()> {
            self.inner.set_paused(q, paused).await
        }
        async fn paused(&self) -> StoreResult<Vec<String>> {
            self.inner.paused().await
        }
        async fn discard_dead(&self, q: &str, id: &str) -> StoreResult<bool> {
            self.inner.discard_dead(q, id).await
        }
        async fn heartbeat(
            &self,
            w: &str,
            info: &str,
            now_ms: i64,
            before: i64,
        ) -> StoreResult<()> {
            self.inner.heartbeat(w, info, now_ms, before).await
        }
        async fn workers(&self, since_ms: i64, limit: usize) -> StoreResult<Vec<WorkerBeat>> {
            self.inner.workers(since_ms, limit).await
        }
        async fn add_counts(&self, q: &str, bucket_ms: i64, c: Throughput) -> StoreResult<()> {
            self.inner.add_counts(q, bucket_ms, c).await
        }
        async fn counts(&self, q: &str, from_ms: i64, to_ms: i64) -> StoreResult<Throughput> {
            self.inner.counts(q, from_ms, to_ms).await
        }
    }
}

/// A worker that dies (here: a panic inside the backend) is rebuilt with
/// backoff instead of staying dead while `run` looks healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_is_restarted() {
    init_tracing();
    let store = Arc::new(faulty::PanicsOnce::default());
    let queue = Queue::with_store(store.clone(), QueueConfig::default(), Arc::new(SystemClock));
    queue
        .push(&Work { n: 1 }, PushOptions::default())
        .await
        .unwrap();
    let ran = Ran::default();
    let rt = Running::start(Runtime::new(queue.clone()).register::<Work>(ran.clone()));
    testing::drain(&queue, &["work"], Duration::from_secs(10))
        .await
        .expect("the rebuilt worker ran the job");
    assert!(
        store.fetches.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "fetched again after the panic"
    );
    assert_eq!(ran.0.lock().unwrap().len(), 1);
    rt.stop().await.expect("run still healthy");
}

/// Dropping the `run` future (no graceful shutdown) stops its workers too:
/// nothing keeps running detached in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_run_stops_its_workers() {
    use approvald_workers::store::memory::MemoryStore;
    init_tracing();
    let config = QueueConfig {
        idle_poll: Duration::from_millis(50),
        ..QueueConfig::default()
    };
    let queue = Queue::with_store(Arc::new(MemoryStore::new()), config, Arc::new(SystemClock));
    let ran = Ran::default();
    let task = tokio::spawn(
        Runtime::new(queue.clone())
            .register::<Work>(ran.clone())
            .run(std::future::pending()),
    );
    queue
        .push(&Work { n: 1 }, PushOptions::default())
        .await
        .unwrap();
    testing::drain(&queue, &["work"], Duration::from_secs(5))
        .await
        .unwrap();
    task.abort();
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    queue
        .push(&Work { n: 2 }, PushOptions::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ran.0.lock().unwrap().len(), 1, "no worker left behind");
    assert_eq!(queue.stats("work").await.unwrap().ready, 1);
}

/// Configuration mistakes stop `run` at once with a message naming them.
#[tokio::test]
async fn bad_configuration_fails_run_at_start() {
    use approvald_workers::store::memory::MemoryStore;
    let queue = Queue::with_store(
        Arc::new(MemoryStore::new()),
        QueueConfig::default(),
        Arc::new(SystemClock),
    );
    let bad_cron = Runtime::new(queue.clone()).cron::<Tick>(
        CronSchedule::new("nightly", "every night please", chrono_tz::UTC),
        tick_maker("nightly"),
    );
    let err = bad_cron
        .run(std::future::pending())
        .await
        .expect_err("bad expression");
    assert!(
        format!("{err:#}").contains("nightly") && format!("{err:#}").contains("every night please"),
        "{err:#}"
    );

    let twice = Runtime::new(queue)
        .register::<Work>(Ran::default())
        .register::<Work>(Ran::default());
    let err = twice
        .run(std::future::pending())
        .await
        .expect_err("registered twice");
    assert!(
        format!("{err:#}").contains("\"work\" registered twice"),
        "{err:#}"
    );
}

/// A payload this build cannot decode (a job changed incompatibly) can never
/// succeed: it is dead-lettered at once, with the reason, and the worker goes
/// on with the next job.
async fn undecodable_payload_is_dead_lettered_at_once(kind: Kind) {
    let env = Env::new(kind);
    let queue = env.queue().await;
    let bad = approvald_workers::store::NewJob {
        queue: "mail".into(),
        payload: r#"{"recipient": 42}"#.into(),
        run_at_ms: Utc::now().timestamp_millis(),
        dedupe_key: None,
        max_attempts: 10,
    };
    let bad_id = queue.push_raw(&[bad]).await.unwrap().remove(0).id;
    queue
        .push(
            &Mail {
                to: "b@example.com".into(),
            },
            PushOptions::default(),
        )
        .await
        .unwrap();
    let count = Count::default();
    let rt = Running::start(Runtime::new(queue.clone()).register::<Mail>(count.clone()));
    testing::drain(&queue, &["mail"], Duration::from_secs(10))
        .await
        .unwrap();
    eventually("dead-lettered", Duration::from_secs(10), || {
        let q = queue.clone();
        async move { q.stats("mail").await.unwrap().dead == 1 }
    })
    .await;
    rt.stop().await.unwrap();
    assert_eq!(count.get(), 1, "the good job ran");
    let dead = queue.list_dead("mail", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, bad_id);
    assert_eq!(dead[0].attempts, 1);
    assert!(
        dead[0].last_error.contains("does not decode"),
        "{}",
        dead[0].last_error
    );
}
