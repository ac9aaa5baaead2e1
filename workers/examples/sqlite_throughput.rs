//! Throughput of the SQLite store alone: push 20,000 jobs, then drain them
//! with concurrent fetch + complete loops, on a temp file.
//!
//! `cargo run --release -p approvald-workers --example sqlite_throughput [jobs] [fetchers] [batch]`
use std::time::Instant;

use approvald_workers::store::{
    NewJob, Store,
    sqlite::{self, SqliteStore},
};
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
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
