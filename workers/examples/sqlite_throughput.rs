//! Throughput of the SQLite queue on a temp file, in two parts:
//! 1. the store alone: push 20,000 jobs, then drain them with concurrent
//!    fetch + complete loops (acks of a batch in flight together, as from a
//!    worker's running handlers);
//! 2. the whole runtime: push 20,000 no-op jobs, then time a `Runtime` with
//!    concurrency 50 until the queue is empty;
//! 3. pickup latency (push to handler start) at an open-loop 200 jobs/s for
//!    5 s, pushed through the same process's `Queue` (the embedded profile).
//!
//! `cargo run --release -p approvald-workers --example sqlite_throughput [jobs] [fetchers] [batch]`
use std::time::Instant;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use approvald_workers::{
    Job, JobError, JobInfo, PushOptions, Queue, QueueConfig, Runtime,
    store::{
        NewJob, Store,
        sqlite::{self, SqliteStore},
    },
};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::SqlitePoolOptions;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let jobs = args.next().transpose()?.unwrap_or(20_000);
    let fetchers = args.next().transpose()?.unwrap_or(4);
    let batch = args.next().transpose()?.unwrap_or(100);

    let dir = std::env::temp_dir().join(format!("wq-throughput-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("queue.db").display().to_string();
    let pool = SqlitePoolOptions::new()
        .max_connections(fetchers as u32 + 1)
        .connect_with(sqlite::connect_options(&path))
        .await?;
    let store = SqliteStore::new(pool);
    store.setup().await?;
    let now = chrono::Utc::now().timestamp_millis();

    let new: Vec<NewJob> = (0..jobs)
        .map(|i| NewJob {
            queue: "bench".into(),
            payload: format!("{{\"n\":{i}}}"),
            run_at_ms: now,
            dedupe_key: None,
            max_attempts: 3,
        })
        .collect();
    let t = Instant::now();
    for chunk in new.chunks(1_000) {
        store.push(chunk, now, 86_400_000).await?;
    }
    let push_s = t.elapsed().as_secs_f64();
    println!(
        "push: {jobs} jobs in {push_s:.3}s = {:.0} jobs/s (batches of 1,000)",
        jobs as f64 / push_s
    );

    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..fetchers {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut n = 0usize;
            loop {
                let got = s.fetch("bench", &worker, batch, now, 60_000).await?;
                if got.is_empty() {
                    return Ok::<_, anyhow::Error>(n);
                }
                // Acks arrive concurrently, as from a worker's running handlers.
                let acks = got.iter().map(|j| s.complete("bench", &j.id, &worker, now));
                for r in futures::future::join_all(acks).await {
                    r?;
                    n += 1;
                }
            }
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    let drain_s = t.elapsed().as_secs_f64();
    println!(
        "fetch+complete: {done} jobs in {drain_s:.3}s = {:.0} jobs/s ({fetchers} fetchers, batch {batch})",
        done as f64 / drain_s
    );
    anyhow::ensure!(done == jobs, "drained {done} of {jobs}");
    let s = store.stats("bench").await?;
    anyhow::ensure!(
        s.ready + s.scheduled + s.running + s.dead == 0,
        "left: {s:?}"
    );
    store.pool().close().await;

    runtime_drain(&dir.join("runtime.db").display().to_string(), jobs).await?;
    pickup_latency(&dir.join("pickup.db").display().to_string()).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
struct Noop {
    n: usize,
}

impl Job for Noop {
    const NAME: &'static str = "noop";
    const CONCURRENCY: usize = 50;
    type Context = ();

    async fn run(self, _ctx: (), _info: JobInfo) -> Result<(), JobError> {
        Ok(())
    }
}

async fn runtime_drain(path: &str, jobs: usize) -> anyhow::Result<()> {
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(sqlite::connect_options(path))
        .await?;
    let queue = Queue::sqlite(pool, QueueConfig::default()).await?;
    let payloads: Vec<Noop> = (0..jobs).map(|n| Noop { n }).collect();
    for chunk in payloads.chunks(1_000) {
        let batch: Vec<(&Noop, PushOptions)> =
            chunk.iter().map(|j| (j, PushOptions::default())).collect();
        queue.push_many(&batch).await?;
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let t = Instant::now();
    let runtime = Runtime::new(queue.clone()).register::<Noop>(());
    let run = tokio::spawn(runtime.run(async move {
        let _ = stopped.await;
    }));
    approvald_workers::testing::drain(&queue, &[Noop::NAME], Duration::from_secs(600)).await?;
    let drain_s = t.elapsed().as_secs_f64();
    let _ = stop.send(());
    run.await??;
    println!(
        "runtime drain: {jobs} no-op jobs in {drain_s:.3}s = {:.0} jobs/s (concurrency 50, batch {})",
        jobs as f64 / drain_s,
        QueueConfig::default().batch
    );
    Ok(())
}

/// Carries its push instant so the handler can report the pickup latency.
#[derive(Debug, Serialize, Deserialize)]
struct Ping {
    pushed_at_us: i64,
}

type Samples = Arc<Mutex<Vec<i64>>>;

impl Job for Ping {
    const NAME: &'static str = "ping";
    const CONCURRENCY: usize = 50;
    type Context = Samples;

    async fn run(self, samples: Samples, _info: JobInfo) -> Result<(), JobError> {
        let now = chrono::Utc::now().timestamp_micros();
        samples
            .lock()
            .map_err(|_| JobError::permanent(anyhow::anyhow!("samples poisoned")))?
            .push(now - self.pushed_at_us);
        Ok(())
    }
}

async fn pickup_latency(path: &str) -> anyhow::Result<()> {
    const RATE: u64 = 200;
    const JOBS: usize = 1_000;
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(sqlite::connect_options(path))
        .await?;
    let queue = Queue::sqlite(pool, QueueConfig::default()).await?;
    let samples: Samples = Arc::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runtime = Runtime::new(queue.clone()).register::<Ping>(samples.clone());
    let run = tokio::spawn(runtime.run(async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Open loop: push on a fixed schedule, whatever the workers do.
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..JOBS {
        tick.tick().await;
        let job = Ping {
            pushed_at_us: chrono::Utc::now().timestamp_micros(),
        };
        queue.push(&job, PushOptions::default()).await?;
    }
    approvald_workers::testing::drain(&queue, &[Ping::NAME], Duration::from_secs(60)).await?;
    let _ = stop.send(());
    run.await??;
    let mut v = samples
        .lock()
        .map_err(|_| anyhow::anyhow!("samples poisoned"))?
        .clone();
    anyhow::ensure!(v.len() == JOBS, "{} of {JOBS} pings ran", v.len());
    v.sort_unstable();
    let pct = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)] as f64 / 1000.0;
    println!(
        "pickup at {RATE} jobs/s ({JOBS} jobs): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}
