//! Benchmark of the job runtime on Redis, run by `scripts/bench-runtime`
//! next to the same measurements for BullMQ (`scripts/bench-bullmq.mjs`).
//!
//! ```text
//! bench drain  <redis-url> <prefix> <jobs> <concurrency>
//! bench pickup <redis-url> <prefix> <rate-per-s> <seconds> <concurrency>
//! ```
//!
//! - `drain`: push `jobs` no-op jobs first, then start a runtime and time it
//!   until every job is handled and acknowledged. Prints `drain_jobs_per_s`.
//! - `pickup`: start an idle runtime, then push one job every `1/rate` s on a
//!   fixed schedule (open loop: a push does not wait for the previous one)
//!   and record, per job, the time from just before the push to the start of
//!   its handler. The producer uses its own `Queue` handle, so the worker is
//!   woken through Redis (pub/sub), as by a push from another process.
//!   Prints `pickup_p50_ms`, `pickup_p99_ms`, `pickup_max_ms`.
//!
//! Every figure is printed as `key=value` on its own line. The keys under the
//! prefix are deleted at the end.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use approvald_workers::{Job, JobError, JobInfo, PushOptions, Queue, QueueConfig, Runtime};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};

#[derive(Default)]
struct Probe {
    handled: AtomicUsize,
    target: AtomicUsize,
    all_handled: Notify,
    /// Pickup latencies in microseconds.
    latencies_us: Mutex<Vec<i64>>,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64
}

#[derive(Debug, Serialize, Deserialize)]
struct Noop {
    /// Wall clock (µs) just before the push; 0 when not measured.
    sent_us: i64,
}

impl Job for Noop {
    const NAME: &'static str = "bench";
    const MAX_ATTEMPTS: u32 = 3;
    const CONCURRENCY: usize = 50;
    type Context = Arc<Probe>;

    async fn run(self, probe: Arc<Probe>, _info: JobInfo) -> Result<(), JobError> {
        if self.sent_us > 0 {
            let latency = now_us() - self.sent_us;
            probe
                .latencies_us
                .lock()
                .expect("probe poisoned")
                .push(latency);
        }
        let n = probe.handled.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= probe.target.load(Ordering::SeqCst) {
            probe.all_handled.notify_one();
        }
        Ok(())
    }
}

/// The bench job type has a fixed concurrency (a Job constant); refuse any
/// other request instead of measuring something else.
fn check_concurrency(arg: &str) -> anyhow::Result<()> {
    let c: usize = arg.parse().context("concurrency")?;
    if c != Noop::CONCURRENCY {
        bail!(
            "this build benchmarks concurrency {} (Noop::CONCURRENCY), not {c}",
            Noop::CONCURRENCY
        );
    }
    Ok(())
}

async fn open(url: &str, prefix: &str) -> anyhow::Result<Queue> {
    let config = QueueConfig {
        prefix: prefix.to_string(),
        ..QueueConfig::default()
    };
    Queue::redis(url, config)
        .await
        .context("connecting to Redis")
}

async fn delete_prefix(url: &str, prefix: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn start_runtime(queue: &Queue, probe: Arc<Probe>) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let runtime = Runtime::new(queue.clone()).register::<Noop>(probe);
    let task = tokio::spawn(runtime.run(async move {
        let _ = stopped.await;
    }));
    Running { stop, task }
}

impl Running {
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("runtime task")?
    }
}

/// Waits until the queue holds nothing ready or running (every job acked).
async fn wait_acked(queue: &Queue, deadline: Instant) -> anyhow::Result<()> {
    loop {
        let s = queue.stats(Noop::NAME).await?;
        if s.ready + s.running + s.scheduled == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("jobs left: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn drain(url: &str, prefix: &str, jobs: usize) -> anyhow::Result<()> {
    let queue = open(url, prefix).await?;
    let payload = Noop { sent_us: 0 };
    let batch: Vec<(&Noop, PushOptions)> = (0..jobs)
        .map(|_| (&payload, PushOptions::default()))
        .collect();
    let t = Instant::now();
    queue.push_many(&batch).await?;
    println!("ours_enqueue_s={:.3}", t.elapsed().as_secs_f64());

    let probe = Arc::new(Probe::default());
    probe.target.store(jobs, Ordering::SeqCst);
    let started = Instant::now();
    let running = start_runtime(&queue, probe.clone());
    let deadline = started + Duration::from_secs(300);
    tokio::time::timeout(Duration::from_secs(300), async {
        while probe.handled.load(Ordering::SeqCst) < jobs {
            probe.all_handled.notified().await;
        }
    })
    .await
    .context("drain did not finish in 300 s")?;
    wait_acked(&queue, deadline).await?;
    let elapsed = started.elapsed();
    running.stop().await?;
    let handled = probe.handled.load(Ordering::SeqCst);
    if handled != jobs {
        bail!("handled {handled} jobs, pushed {jobs} (duplicates?)");
    }
    println!("ours_drain_s={:.3}", elapsed.as_secs_f64());
    println!(
        "ours_drain_jobs_per_s={:.0}",
        jobs as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

async fn pickup(url: &str, prefix: &str, rate: u32, seconds: u32) -> anyhow::Result<()> {
    // The producer has its own handle (own connections), so the wake-up goes
    // through Redis as it would from another process, not through the
    // in-process signal a shared `Queue` handle gives.
    let queue = open(url, prefix).await?;
    let producer = open(url, prefix).await?;
    let total = (rate * seconds) as usize;
    let probe = Arc::new(Probe::default());
    probe.target.store(total, Ordering::SeqCst);
    let running = start_runtime(&queue, probe.clone());
    // let the worker reach its idle wait
    tokio::time::sleep(Duration::from_millis(500)).await;

    let every = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = tokio::time::Instant::now();
    let mut pushes = Vec::with_capacity(total);
    for i in 0..total {
        tokio::time::sleep_until(start + every * i as u32).await;
        let q = producer.clone();
        pushes.push(tokio::spawn(async move {
            let job = Noop { sent_us: now_us() };
            q.push(&job, PushOptions::default()).await
        }));
    }
    for p in pushes {
        p.await??;
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        while probe.handled.load(Ordering::SeqCst) < total {
            probe.all_handled.notified().await;
        }
    })
    .await
    .context("not every pushed job ran within 60 s")?;
    wait_acked(&queue, Instant::now() + Duration::from_secs(60)).await?;
    running.stop().await?;

    let mut lat = probe.latencies_us.lock().expect("probe poisoned").clone();
    if lat.len() != total {
        bail!("{} latencies for {total} jobs", lat.len());
    }
    lat.sort_unstable();
    println!("ours_pickup_jobs={total}");
    println!("ours_pickup_p50_ms={:.3}", percentile(&lat, 0.50));
    println!("ours_pickup_p99_ms={:.3}", percentile(&lat, 0.99));
    println!("ours_pickup_max_ms={:.3}", percentile(&lat, 1.0));
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("BENCH_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    match argv.as_slice() {
        ["drain", url, prefix, jobs, conc] => {
            check_concurrency(conc)?;
            let r = drain(url, prefix, jobs.parse().context("jobs")?).await;
            delete_prefix(url, prefix).await?;
            r
        }
        ["pickup", url, prefix, rate, seconds, conc] => {
            check_concurrency(conc)?;
            let r = pickup(
                url,
                prefix,
                rate.parse().context("rate")?,
                seconds.parse().context("seconds")?,
            )
            .await;
            delete_prefix(url, prefix).await?;
            r
        }
        _ => bail!(
            "usage: bench drain <redis-url> <prefix> <jobs> <concurrency>\n       bench pickup <redis-url> <prefix> <rate> <seconds> <concurrency>"
        ),
    }
}
