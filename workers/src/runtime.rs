//! The runtime: one supervised apalis-core worker per job type, cron
//! schedules, retention and queue-depth metrics, graceful shutdown.
use std::{
    collections::HashSet,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use apalis_core::worker::{builder::WorkerBuilder, context::WorkerContext};
use chrono::{DateTime, Utc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    cron::{CronSchedule, CronTask},
    health::Health,
    job::Job,
    metrics as m,
    queue::Queue,
    worker::{AbortOnDrop, Common, JobLayer, Shared, StoreBackend, run_job},
};

/// Largest number of jobs one `purge` call deletes.
const PURGE_BATCH: usize = 1000;
/// Default time between two heartbeats of a runtime; a runtime not seen for
/// three of them counts as gone ([`crate::Queue::workers_alive`]).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// Grace after the shutdown timeout for aborted jobs to be released.
const RELEASE_GRACE: Duration = Duration::from_secs(10);

type StartFn =
    Box<dyn FnOnce(Arc<Common>) -> futures::future::BoxFuture<'static, anyhow::Result<()>> + Send>;

struct Registered {
    name: &'static str,
    start: StartFn,
}

/// Runs jobs of the registered types and the cron schedules, until the
/// shutdown future resolves. See the crate docs for the guarantees.
pub struct Runtime {
    queue: Queue,
    worker_id: String,
    workers: Vec<Registered>,
    crons: Vec<CronTask>,
    shutdown_timeout: Duration,
    store_outage_limit: Duration,
    retention_interval: Duration,
    metrics_interval: Duration,
    pause_poll: Duration,
    heartbeat_interval: Duration,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("worker_id", &self.worker_id)
            .field(
                "jobs",
                &self.workers.iter().map(|w| w.name).collect::<Vec<_>>(),
            )
            .field(
                "crons",
                &self
                    .crons
                    .iter()
                    .map(|c| &c.schedule.name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Runtime {
    pub fn new(queue: Queue) -> Self {
        Self {
            queue,
            worker_id: new_worker_id(),
            workers: Vec::new(),
            crons: Vec::new(),
            shutdown_timeout: Duration::from_secs(30),
            store_outage_limit: Duration::from_secs(300),
            retention_interval: Duration::from_secs(60),
            metrics_interval: Duration::from_secs(10),
            pause_poll: Duration::from_secs(1),
            heartbeat_interval: HEARTBEAT_INTERVAL,
        }
    }

    /// Run jobs of type `J` here (at most `J::CONCURRENCY` at once), with
    /// `ctx` handed to every run.
    pub fn register<J: Job>(self, ctx: J::Context) -> Self {
        self.register_with::<J>(ctx, J::CONCURRENCY)
    }

    /// [`Runtime::register`] with another limit of jobs of `J` run at once
    /// in this process (an operator's setting; at least 1).
    pub fn register_with<J: Job>(mut self, ctx: J::Context, concurrency: usize) -> Self {
        let concurrency = concurrency.max(1);
        let start: StartFn =
            Box::new(move |common| Box::pin(supervise::<J>(common, ctx, concurrency)));
        self.workers.push(Registered {
            name: J::NAME,
            start,
        });
        self
    }

    /// Push one `J` (made by `make` from the tick instant) per tick of
    /// `schedule`, across all processes running the same schedule. The job
    /// runs wherever `J` is registered.
    pub fn cron<J: Job>(
        mut self,
        schedule: CronSchedule,
        make: impl Fn(DateTime<Utc>) -> J + Send + Sync + 'static,
    ) -> Self {
        self.crons.push(CronTask::new::<J>(schedule, make));
        self
    }

    /// How long shutdown waits for in-flight jobs before aborting and
    /// releasing them (default 30 s).
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// How long the store may stay unreachable (no successful call at all)
    /// before `run` gives up with an error (default 5 min).
    pub fn store_outage_limit(mut self, d: Duration) -> Self {
        self.store_outage_limit = d;
        self
    }

    /// How often finished and dead jobs past their retention are purged
    /// (default 60 s).
    pub fn retention_interval(mut self, d: Duration) -> Self {
        self.retention_interval = d;
        self
    }

    /// How often the queue-depth gauges are refreshed (default 10 s).
    pub fn metrics_interval(mut self, d: Duration) -> Self {
        self.metrics_interval = d;
        self
    }

    /// How often the paused queues are re-read from the store, i.e. how soon
    /// a pause or resume made by another process is honoured (default 1 s;
    /// one made through a clone of this runtime's queue handle is at once).
    pub fn pause_poll(mut self, d: Duration) -> Self {
        self.pause_poll = d;
        self
    }

    /// How often this runtime writes its heartbeat and flushes its attempt
    /// counts to the store (default [`HEARTBEAT_INTERVAL`]).
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat_interval = d;
        self
    }

    /// This process's identity in leases: `host-pid-random`, unique per
    /// runtime, so a restarted process never collides with its predecessor.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    fn validate(&self) -> anyhow::Result<()> {
        let mut seen = HashSet::new();
        for w in &self.workers {
            anyhow::ensure!(seen.insert(w.name), "job {:?} registered twice", w.name);
        }
        let mut names = HashSet::new();
        for c in &self.crons {
            c.validate().map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                names.insert(c.schedule.name.clone()),
                "cron schedule {:?} added twice",
                c.schedule.name
            );
        }
        Ok(())
    }

    /// Run until `shutdown` resolves, then stop fetching, wait up to the
    /// shutdown timeout for in-flight jobs, release the rest and return
    /// `Ok`. Returns `Err` (after stopping everything) when the store stays
    /// unreachable past the outage limit, or when a runtime task fails for
    /// good; the error message is the one line to log before exiting.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.validate()?;
        let common = Arc::new(Common {
            queue: self.queue.clone(),
            worker_id: self.worker_id.clone().into(),
            drain: CancellationToken::new(),
            hard: CancellationToken::new(),
            health: Arc::new(Health::new(self.store_outage_limit)),
            counts: Default::default(),
        });
        let info = serde_json::json!({
            "jobs": self.workers.iter().map(|w| w.name).collect::<Vec<_>>(),
            "crons": self.crons.iter().map(|c| serde_json::json!({
                "name": c.schedule.name,
                "expr": c.schedule.expr,
                "tz": c.schedule.tz.name(),
            })).collect::<Vec<_>>(),
            "started_at_ms": common.now_ms(),
        })
        .to_string();
        let mut queues: Vec<&'static str> = self.workers.iter().map(|w| w.name).collect();
        queues.extend(self.crons.iter().map(|c| c.queue_name));
        queues.sort_unstable();
        queues.dedup();
        tracing::info!(
            worker_id = %self.worker_id,
            jobs = ?self.workers.iter().map(|w| w.name).collect::<Vec<_>>(),
            crons = ?self.crons.iter().map(|c| c.schedule.name.as_str()).collect::<Vec<_>>(),
            "job runtime starting"
        );

        // Honour pauses from the first fetch on.
        match common.queue.store.paused().await {
            Ok(names) => common
                .queue
                .wake
                .set_paused_all(names.into_iter().collect()),
            Err(e) => tracing::warn!(error = %e, "could not read the paused queues at start"),
        }
        let mut tasks: JoinSet<(String, anyhow::Result<()>)> = JoinSet::new();
        for w in self.workers {
            let fut = (w.start)(common.clone());
            tasks.spawn(async move { (format!("worker {}", w.name), fut.await) });
        }
        for c in self.crons {
            let label = format!("cron {}", c.schedule.name);
            let common = common.clone();
            tasks.spawn(async move { (label, c.run(common).await) });
        }
        let maintenance = tokio::spawn(maintain(
            common.clone(),
            queues,
            self.retention_interval,
            self.metrics_interval,
        ));
        let lifesigns = tokio::spawn(lifesigns(
            common.clone(),
            info,
            self.pause_poll,
            self.heartbeat_interval,
        ));
        let _lifesigns_guard = AbortOnDrop(lifesigns.abort_handle());
        // Ends with this future, also when the caller drops it.
        let _maintenance_guard = AbortOnDrop(maintenance.abort_handle());

        let mut shutdown = std::pin::pin!(shutdown);
        let fatal: Option<anyhow::Error> = loop {
            tokio::select! {
                _ = &mut shutdown => break None,
                Some(joined) = tasks.join_next() => match joined {
                    Ok((_, Ok(()))) => continue,
                    Ok((label, Err(e))) => break Some(e.context(label)),
                    Err(e) => break Some(anyhow::anyhow!("runtime task panicked: {e}")),
                },
            }
        };

        common.drain.cancel();
        maintenance.abort();
        lifesigns.abort();
        if let Some(e) = fatal {
            // The caller logs the returned error (one line); here only the detail.
            tracing::debug!(error = %format!("{e:#}"), "job runtime stopping after a fatal error");
            common.hard.cancel();
            finish(&mut tasks, RELEASE_GRACE).await;
            return Err(e);
        }
        tracing::info!(
            timeout_s = self.shutdown_timeout.as_secs_f64(),
            "shutdown requested: no new jobs; waiting for in-flight jobs"
        );
        if !finish(&mut tasks, self.shutdown_timeout).await {
            tracing::warn!("shutdown timeout reached: aborting in-flight jobs and releasing them");
            common.hard.cancel();
            if !finish(&mut tasks, RELEASE_GRACE).await {
                tracing::error!(
                    "runtime tasks still busy after the release grace; abandoning them (their leases expire)"
                );
                tasks.abort_all();
            }
        }
        flush_counts(&common).await;
        tracing::info!("job runtime stopped");
        Ok(())
    }
}

/// Wait for all tasks (logging failures) up to `limit`; true if all ended.
async fn finish(tasks: &mut JoinSet<(String, anyhow::Result<()>)>, limit: Duration) -> bool {
    let all = async {
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((label, Err(e))) => {
                    tracing::warn!(task = %label, error = %format!("{e:#}"), "runtime task ended with an error during shutdown")
                }
                Err(e) if e.is_panic() => {
                    tracing::error!(error = %e, "runtime task panicked during shutdown")
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(limit, all).await.is_ok()
}

/// Supervise the worker for `J`: build it with apalis-core's WorkerBuilder,
/// run it, restart it with backoff if it fails; `Err` only when the store has
/// been unreachable past the limit.
async fn supervise<J: Job>(
    common: Arc<Common>,
    ctx: J::Context,
    concurrency: usize,
) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(200);
    for incarnation in 0u64.. {
        let shared = Arc::new(Shared::new::<J>(common.clone(), concurrency));
        let wctx = WorkerContext::new(&format!("{}@{}#{incarnation}", J::NAME, common.worker_id));
        let worker = WorkerBuilder::new(&wctx)
            .backend(StoreBackend::<J>::new(shared.clone()))
            .data(ctx.clone())
            .layer(JobLayer::new(shared.clone()))
            .build(run_job::<J>);

        let stop_renew = CancellationToken::new();
        let renewer = tokio::spawn(shared.clone().renew_loop(stop_renew.clone()));
        // If the supervisor itself is dropped (the caller dropped `run`), the
        // worker and its helpers go with it.
        let _renewer_guard = AbortOnDrop(renewer.abort_handle());
        let stopper = {
            let (wctx, drain) = (wctx.clone(), common.drain.clone());
            tokio::spawn(async move {
                drain.cancelled().await;
                // Fails only if the worker has not started yet; its backend
                // then ends the stream itself on seeing the drain.
                let _ = wctx.stop();
            })
        };
        tracing::debug!(job = J::NAME, incarnation, "worker starting");
        let started = Instant::now();
        let worker_task = tokio::spawn(worker.run());
        let _worker_guard = AbortOnDrop(worker_task.abort_handle());
        let _stopper_guard = AbortOnDrop(stopper.abort_handle());
        let ended = worker_task.await;
        stopper.abort();
        stop_renew.cancel();
        let _ = renewer.await;

        let why = match ended {
            Ok(Ok(())) if common.drain.is_cancelled() => return Ok(()),
            Ok(Ok(())) => "worker stopped on its own".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("worker task panicked: {e}"),
        };
        if let Some(msg) = common.health.exceeded() {
            return Err(anyhow::anyhow!(msg));
        }
        if common.drain.is_cancelled() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            delay = Duration::from_millis(200);
        }
        tracing::error!(job = J::NAME, error = %why, restart_in_ms = delay.as_millis() as u64, "worker failed; restarting it");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = common.drain.cancelled() => return Ok(()),
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
    Ok(())
}

/// Retention (purge finished/dead jobs past their keep times) and the
/// queue-depth gauges.
async fn maintain(
    common: Arc<Common>,
    queues: Vec<&'static str>,
    retention: Duration,
    depth: Duration,
) {
    let mut purge_tick = tokio::time::interval(retention.max(Duration::from_millis(10)));
    let mut depth_tick = tokio::time::interval(depth.max(Duration::from_millis(10)));
    purge_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    depth_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let store = &common.queue.store;
    let cfg = &common.queue.config;
    loop {
        tokio::select! {
            _ = purge_tick.tick() => {
                for q in &queues {
                    let now = common.now_ms();
                    let before = now - cfg.keep_finished.as_millis() as i64;
                    let dead_before = now - cfg.keep_dead.as_millis() as i64;
                    // Bounded per round: at most 10 batches per queue.
                    for _ in 0..10 {
                        match store.purge(q, before, dead_before, PURGE_BATCH).await {
                            Ok(n) => {
                                common.health.ok();
                                if n > 0 {
                                    tracing::debug!(queue = q, purged = n, "purged old jobs");
                                }
                                if (n as usize) < PURGE_BATCH {
                                    break;
                                }
                            }
                            Err(e) => {
                                common.health.fail("purge", &e);
                                break;
                            }
                        }
                    }
                }
            }
            _ = depth_tick.tick() => {
                for q in &queues {
                    match store.stats(q).await {
                        Ok(s) => m::queue_depth(q, &s),
                        Err(e) => common.health.fail("stats", &e),
                    }
                }
            }
        }
    }
}

/// Add the attempt outcomes gathered since the last flush to the store's
/// per-minute counts (one call per queue that had any).
async fn flush_counts(common: &Common) {
    let bucket =
        common.now_ms().div_euclid(crate::store::COUNT_BUCKET_MS) * crate::store::COUNT_BUCKET_MS;
    for (q, n) in common.take_counts() {
        if let Err(e) = common.queue.store.add_counts(q, bucket, n).await {
            tracing::debug!(queue = q, error = %e, "could not record job counts");
        }
    }
}

/// The pause watcher (re-reads the paused queues every `pause_poll`), the
/// heartbeat and the count flush (every `heartbeat`).
async fn lifesigns(common: Arc<Common>, info: String, pause_poll: Duration, heartbeat: Duration) {
    let mut pause_tick = tokio::time::interval(pause_poll.max(Duration::from_millis(10)));
    let mut beat_tick = tokio::time::interval(heartbeat.max(Duration::from_millis(10)));
    pause_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let store = &common.queue.store;
    let forget = heartbeat.as_millis() as i64 * 360;
    loop {
        tokio::select! {
            _ = pause_tick.tick() => match store.paused().await {
                Ok(names) => common.queue.wake.set_paused_all(names.into_iter().collect()),
                Err(e) => common.health.fail("paused", &e),
            },
            _ = beat_tick.tick() => {
                let now = common.now_ms();
                if let Err(e) = store.heartbeat(&common.worker_id, &info, now, now - forget).await {
                    common.health.fail("heartbeat", &e);
                }
                flush_counts(&common).await;
            }
        }
    }
}

fn new_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_string());
    let random: u32 = rand::random();
    format!("{host}-{}-{random:08x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_are_unique_and_name_the_process() {
        let a = new_worker_id();
        let b = new_worker_id();
        assert_ne!(a, b);
        assert!(a.contains(&format!("-{}-", std::process::id())), "{a}");
    }
}
