//! Test support, not a product binary: a worker *process* for
//! `tests/runtime.rs` (which starts it through `CARGO_BIN_EXE_testworker`
//! and kills it with SIGKILL or stops it with SIGTERM).
//!
//! Configured by environment: `WT_STORE` (`redis` or `sqlite`), `WT_URL`
//! (Redis URL or SQLite file), `WT_PREFIX` (Redis key prefix), `WT_LEASE_MS`,
//! `WT_JOB_MS` (how long each job sleeps), `WT_LOG` (file that gets one line
//! `id attempt pid` per finished job run). Runs jobs of the queue `killtest`
//! until SIGTERM, then shuts down gracefully and exits 0.
use std::{io::Write, sync::Arc, time::Duration};

use anyhow::Context as _;
use approvald_workers::{Job, JobError, JobInfo, Queue, QueueConfig, Runtime};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct KillTest {
    n: u64,
}

#[derive(Clone)]
struct Ctx {
    job_ms: u64,
    log: Arc<std::sync::Mutex<std::fs::File>>,
}

impl Job for KillTest {
    const NAME: &'static str = "killtest";
    const CONCURRENCY: usize = 8;
    type Context = Ctx;

    fn backoff(_attempt: u32) -> Duration {
        Duration::from_millis(100)
    }

    async fn run(self, ctx: Ctx, info: JobInfo) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(ctx.job_ms)).await;
        let line = format!("{} {} {}\n", info.id, info.attempt, std::process::id());
        let mut f = ctx
            .log
            .lock()
            .map_err(|_| JobError::retryable(anyhow::anyhow!("log poisoned")))?;
        f.write_all(line.as_bytes()).map_err(JobError::retryable)?;
        Ok(())
    }
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("testworker: {name} not set"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let lease_ms: u64 = env("WT_LEASE_MS")?.parse()?;
    let config = QueueConfig {
        prefix: std::env::var("WT_PREFIX").unwrap_or_else(|_| "testworker".into()),
        lease: Duration::from_millis(lease_ms),
        idle_poll: Duration::from_millis(200),
        ..QueueConfig::default()
    };
    let url = env("WT_URL")?;
    let queue = match env("WT_STORE")?.as_str() {
        "redis" => Queue::redis(&url, config).await?,
        "sqlite" => {
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(approvald_workers::store::sqlite::connect_options(&url))
                .await?;
            Queue::sqlite(pool, config).await?
        }
        other => anyhow::bail!("testworker: unknown WT_STORE {other:?}"),
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env("WT_LOG")?)?;
    let ctx = Ctx {
        job_ms: env("WT_JOB_MS")?.parse()?,
        log: Arc::new(std::sync::Mutex::new(log)),
    };
    let runtime = Runtime::new(queue)
        .register::<KillTest>(ctx)
        .shutdown_timeout(Duration::from_secs(5));
    eprintln!("testworker {} ready", runtime.worker_id());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    runtime
        .run(async move {
            term.recv().await;
        })
        .await
}
