//! The public queue handle: push jobs, inspect queues, re-drive dead jobs.
use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};

use crate::{
    clock::{Clock, SystemClock},
    job::Job,
    store::{DeadJob, NewJob, QueueStats, Store, StoreError, Throughput, WorkerBeat},
};

pub use crate::store::Pushed as PushResult;

/// Settings shared by the queue handle and the runtime.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Redis key prefix (ignored by SQLite, whose tables are fixed).
    pub prefix: String,
    /// Visibility timeout of a leased job; renewed at a third of it.
    pub lease: Duration,
    /// How long a dedupe key holds, also after its job finished.
    pub dedupe_window: Duration,
    /// Finished jobs are purged after this long.
    pub keep_finished: Duration,
    /// Dead jobs are purged after this long.
    pub keep_dead: Duration,
    /// Fallback poll when no wake-up arrives.
    pub idle_poll: Duration,
    /// Largest fetch batch.
    pub batch: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            prefix: "approvald".into(),
            lease: Duration::from_secs(30),
            dedupe_window: Duration::from_secs(24 * 3600),
            keep_finished: Duration::from_secs(24 * 3600),
            keep_dead: Duration::from_secs(30 * 24 * 3600),
            idle_poll: Duration::from_secs(5),
            batch: 100,
        }
    }
}

/// When and under which key to push.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Run at this instant (millisecond precision); `None` = now.
    pub run_at: Option<DateTime<Utc>>,
    /// At most one job per key within the dedupe window.
    pub dedupe_key: Option<String>,
}

impl PushOptions {
    pub fn at(run_at: DateTime<Utc>) -> Self {
        Self {
            run_at: Some(run_at),
            dedupe_key: None,
        }
    }
    pub fn dedupe(mut self, key: impl Into<String>) -> Self {
        self.dedupe_key = Some(key.into());
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("encoding job payload: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("queue url {0:?}: expected `sqlite` or `redis://...`")]
    BadUrl(String),
}

/// Cheap to clone; one per process is enough.
#[derive(Clone)]
pub struct Queue {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: QueueConfig,
    /// In-process wake-ups shared by all clones of this handle: per queue on
    /// every push through it, for all on [`Queue::notify_all`]; runtimes
    /// built from a clone re-check their queues and cron schedules.
    pub(crate) wake: Arc<crate::worker::Wakeups>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// A queue over any store (used by the constructors below and by tests).
    pub fn with_store(store: Arc<dyn Store>, config: QueueConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            config,
            wake: Arc::default(),
        }
    }

    /// Wake every runtime built from a clone of this handle: workers fetch at
    /// once and cron schedules re-read the clock. Pushes through this handle
    /// do this by themselves; tests call it after moving a
    /// [`ManualClock`](crate::ManualClock), since nothing else tells a
    /// sleeping worker that time jumped (the fallback is `idle_poll`).
    pub fn notify_all(&self) {
        self.wake.all();
    }

    /// Redis at `url` (`redis://host:port/db`). Runs `setup`.
    pub async fn redis(url: &str, config: QueueConfig) -> Result<Self, QueueError> {
        Self::redis_with_clock(url, config, Arc::new(SystemClock)).await
    }

    pub async fn redis_with_clock(
        url: &str,
        config: QueueConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, QueueError> {
        let store = crate::store::redis::RedisStore::connect(url, &config.prefix).await?;
        store.setup().await?;
        Ok(Self::with_store(Arc::new(store), config, clock))
    }

    /// Like [`Queue::redis_with_clock`], but Redis being unreachable at start
    /// is not an error: `setup` is tried once and its failure logged, and
    /// every call reconnects and retries as usual. A process started during a
    /// Redis outage (an API that only writes to the database, a worker that
    /// waits) comes up instead of exiting. A malformed URL is still an error.
    pub async fn redis_lazy_with_clock(
        url: &str,
        config: QueueConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, QueueError> {
        let store = crate::store::redis::RedisStore::connect(url, &config.prefix).await?;
        if let Err(e) = store.setup().await {
            tracing::warn!(error = %e, "queue unreachable at start; starting anyway, calls retry until it is back");
        }
        Ok(Self::with_store(Arc::new(store), config, clock))
    }

    /// SQLite tables in the pool's database (WAL, synchronous=NORMAL). Runs `setup`.
    pub async fn sqlite(pool: sqlx::SqlitePool, config: QueueConfig) -> Result<Self, QueueError> {
        Self::sqlite_with_clock(pool, config, Arc::new(SystemClock)).await
    }

    pub async fn sqlite_with_clock(
        pool: sqlx::SqlitePool,
        config: QueueConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, QueueError> {
        let store = crate::store::sqlite::SqliteStore::new(pool);
        store.setup().await?;
        Ok(Self::with_store(Arc::new(store), config, clock))
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    pub fn new_job<J: Job>(&self, job: &J, opts: &PushOptions) -> Result<NewJob, QueueError> {
        let now = self.clock.now();
        Ok(NewJob {
            queue: J::NAME.to_string(),
            payload: serde_json::to_string(job)?,
            run_at_ms: opts.run_at.unwrap_or(now).timestamp_millis(),
            dedupe_key: opts.dedupe_key.clone(),
            max_attempts: J::MAX_ATTEMPTS,
        })
    }

    pub async fn push<J: Job>(&self, job: &J, opts: PushOptions) -> Result<PushResult, QueueError> {
        let mut out = self
            .push_many::<J>(std::slice::from_ref(&(job, opts)))
            .await?;
        Ok(out.remove(0))
    }

    pub async fn push_many<J: Job>(
        &self,
        jobs: &[(&J, PushOptions)],
    ) -> Result<Vec<PushResult>, QueueError> {
        let new: Vec<NewJob> = jobs
            .iter()
            .map(|(j, o)| self.new_job(*j, o))
            .collect::<Result<_, _>>()?;
        self.push_raw(&new).await
    }

    /// Push already-encoded jobs (the outbox relay uses this).
    pub async fn push_raw(&self, jobs: &[NewJob]) -> Result<Vec<PushResult>, QueueError> {
        let now = self.clock.now().timestamp_millis();
        let window = self.config.dedupe_window.as_millis() as i64;
        let out = self.store.push(jobs, now, window).await?;
        for (job, pushed) in jobs.iter().zip(&out) {
            if !pushed.deduplicated {
                self.wake.queue(&job.queue);
            }
        }
        Ok(out)
    }

    pub async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        Ok(self.store.stats(queue).await?)
    }

    pub async fn list_dead(&self, queue: &str, limit: usize) -> Result<Vec<DeadJob>, QueueError> {
        Ok(self.store.list_dead(queue, limit).await?)
    }

    pub async fn redrive(&self, queue: &str, id: &str) -> Result<bool, QueueError> {
        let done = self
            .store
            .redrive(queue, id, self.clock.now().timestamp_millis())
            .await?;
        if done {
            self.wake.queue(queue);
        }
        Ok(done)
    }

    /// Delete a dead job for good; false when it is not dead (any more).
    pub async fn discard_dead(&self, queue: &str, id: &str) -> Result<bool, QueueError> {
        Ok(self.store.discard_dead(queue, id).await?)
    }

    /// Pause `queue` in every process on this store: runtimes stop leasing
    /// its jobs (those running finish); pushes are still accepted. Runtimes
    /// built from a clone of this handle stop at once, others within their
    /// `Runtime::pause_poll`.
    pub async fn pause(&self, queue: &str) -> Result<(), QueueError> {
        self.store.set_paused(queue, true).await?;
        self.wake.set_paused(queue, true);
        Ok(())
    }

    /// Undo [`Queue::pause`].
    pub async fn resume(&self, queue: &str) -> Result<(), QueueError> {
        self.store.set_paused(queue, false).await?;
        self.wake.set_paused(queue, false);
        self.wake.queue(queue);
        Ok(())
    }

    /// The paused queues, by name.
    pub async fn paused(&self) -> Result<Vec<String>, QueueError> {
        Ok(self.store.paused().await?)
    }

    /// Runtimes that wrote a heartbeat within three heartbeat intervals
    /// ([`crate::runtime::HEARTBEAT_INTERVAL`]), newest first, at most `limit`.
    pub async fn workers_alive(&self, limit: usize) -> Result<Vec<WorkerBeat>, QueueError> {
        let since = self.clock.now().timestamp_millis()
            - 3 * crate::runtime::HEARTBEAT_INTERVAL.as_millis() as i64;
        Ok(self.store.workers(since, limit).await?)
    }

    /// Attempts of `queue` that ended in the last `window` (minute buckets,
    /// so up to a minute more; counts reach the store every heartbeat).
    pub async fn throughput(
        &self,
        queue: &str,
        window: Duration,
    ) -> Result<Throughput, QueueError> {
        let now = self.clock.now().timestamp_millis();
        Ok(self
            .store
            .counts(queue, now - window.as_millis() as i64, now + 1)
            .await?)
    }

    /// The latest claimed tick (ms) of cron schedule `schedule`.
    pub async fn last_tick(&self, schedule: &str) -> Result<Option<i64>, QueueError> {
        Ok(self.store.last_tick(schedule).await?)
    }

    /// Earliest `run_at` (ms) among jobs of `queue` scheduled for later, if any.
    pub async fn next_due_ms(&self, queue: &str) -> Result<Option<i64>, QueueError> {
        Ok(self.store.next_due_ms(queue).await?)
    }

    pub async fn ping(&self) -> Result<(), QueueError> {
        Ok(self.store.ping().await?)
    }
}
