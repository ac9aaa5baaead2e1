//! The storage seam: what a queue backend must do. Implemented by
//! `store::redis::RedisStore` and `store::sqlite::SqliteStore`.
//!
//! Rules every implementation keeps:
//! - every call touches a bounded number of jobs (`limit` arguments, and
//!   internal batch caps for promotion of due jobs and lease reclaim);
//! - a job is *leased* to one worker until `lease_until_ms`; an expired lease
//!   makes the job fetchable again (that is how a killed process's jobs come
//!   back), and the attempt counter is incremented on every fetch;
//! - `now_ms` always comes from the caller (the injectable clock), never from
//!   the server's own time;
//! - dedupe keys are durable for `dedupe_window_ms`, also after the job ended.
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub mod memory;
pub mod redis;
pub mod sqlite;

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("sqlite: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("{0}")]
    Other(String),
}

/// A job about to be stored.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Queue name (`Job::NAME`).
    pub queue: String,
    /// JSON payload.
    pub payload: String,
    /// Due time; `<= now` means ready at once.
    pub run_at_ms: i64,
    pub dedupe_key: Option<String>,
    pub max_attempts: u32,
}

/// Outcome of one push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pushed {
    pub id: String,
    /// True when the dedupe key was already held: no new job was created and
    /// `id` is the id of the job that holds it.
    pub deduplicated: bool,
}

/// A job leased to a worker.
#[derive(Debug, Clone)]
pub struct LeasedJob {
    pub id: String,
    pub queue: String,
    pub payload: String,
    /// 1-based attempt number of this run.
    pub attempt: u32,
    pub max_attempts: u32,
    pub enqueued_at_ms: i64,
    pub run_at_ms: i64,
    pub lease_until_ms: i64,
}

/// Job counts by state, for one queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Due now and not leased.
    pub ready: u64,
    /// Due in the future (delayed jobs and retries waiting for backoff).
    pub scheduled: u64,
    /// Leased (running or held by a dead process until its lease expires).
    pub running: u64,
    pub dead: u64,
}

/// A dead-lettered job as shown to an operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadJob {
    pub id: String,
    pub queue: String,
    pub payload: String,
    pub attempts: u32,
    pub last_error: String,
    pub died_at_ms: i64,
}

/// One runtime's latest heartbeat (see [`Store::heartbeat`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerBeat {
    pub worker_id: String,
    /// What the runtime said about itself (JSON: job types, cron schedules).
    pub info: String,
    pub seen_at_ms: i64,
}

/// Attempts that ended in one queue over a time range (see [`Store::add_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throughput {
    /// Attempts that succeeded.
    pub ok: u64,
    /// Attempts that failed (retried or dead-lettered).
    pub failed: u64,
}

/// Most paused queues [`Store::paused`] returns.
pub const MAX_PAUSED: usize = 1000;
/// Width of one throughput bucket.
pub const COUNT_BUCKET_MS: i64 = 60_000;
/// How long throughput buckets are kept.
pub const COUNT_KEEP_MS: i64 = 2 * 24 * 3600 * 1000;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Create tables / check the server. Idempotent.
    async fn setup(&self) -> StoreResult<()>;

    /// Store jobs, honouring dedupe keys. Result order matches input order.
    async fn push(
        &self,
        jobs: &[NewJob],
        now_ms: i64,
        dedupe_window_ms: i64,
    ) -> StoreResult<Vec<Pushed>>;

    /// Lease up to `limit` due jobs of `queue` to `worker_id` until
    /// `now_ms + lease_ms`. Also makes due scheduled jobs and expired leases
    /// fetchable, in bounded batches.
    async fn fetch(
        &self,
        queue: &str,
        worker_id: &str,
        limit: usize,
        now_ms: i64,
        lease_ms: i64,
    ) -> StoreResult<Vec<LeasedJob>>;

    /// Extend the leases this worker still holds. Returns the ids it no longer
    /// holds (lost to expiry), so the runtime can log them.
    async fn renew(
        &self,
        queue: &str,
        ids: &[String],
        worker_id: &str,
        until_ms: i64,
    ) -> StoreResult<Vec<String>>;

    /// The attempt succeeded. Finished jobs are kept until `purge`.
    async fn complete(
        &self,
        queue: &str,
        id: &str,
        worker_id: &str,
        now_ms: i64,
    ) -> StoreResult<()>;

    /// The attempt failed retryably: run again at `run_at_ms`.
    async fn retry(
        &self,
        queue: &str,
        id: &str,
        worker_id: &str,
        run_at_ms: i64,
        error: &str,
    ) -> StoreResult<()>;

    /// Give up: move to the dead-letter set.
    async fn kill(
        &self,
        queue: &str,
        id: &str,
        worker_id: &str,
        now_ms: i64,
        error: &str,
    ) -> StoreResult<()>;

    /// Hand leased jobs back at once (graceful shutdown), without counting the
    /// attempt as failed.
    async fn release(&self, queue: &str, ids: &[String], worker_id: &str) -> StoreResult<()>;

    /// Wait until something is pushed to `queue` (or `timeout_ms` elapses).
    /// Returns true if woken by a push.
    async fn wait_for_push(&self, queue: &str, timeout_ms: u64) -> StoreResult<bool>;

    /// Earliest `run_at_ms` of a scheduled job in `queue`, if any (so an idle
    /// worker sleeps exactly until then).
    async fn next_due_ms(&self, queue: &str) -> StoreResult<Option<i64>>;

    async fn stats(&self, queue: &str) -> StoreResult<QueueStats>;
    async fn list_dead(&self, queue: &str, limit: usize) -> StoreResult<Vec<DeadJob>>;
    /// Put a dead job back as ready with a fresh attempt budget.
    async fn redrive(&self, queue: &str, id: &str, now_ms: i64) -> StoreResult<bool>;

    /// Delete finished jobs older than `before_ms` and dead jobs older than
    /// `dead_before_ms`, at most `limit`; returns how many were deleted.
    async fn purge(
        &self,
        queue: &str,
        before_ms: i64,
        dead_before_ms: i64,
        limit: usize,
    ) -> StoreResult<u64>;

    /// Cron: claim the tick of `schedule` at `tick_ms`. Exactly one caller
    /// across all processes gets true for a given (schedule, tick).
    async fn claim_tick(&self, schedule: &str, tick_ms: i64) -> StoreResult<bool>;
    /// Cron: the latest claimed tick of `schedule`.
    async fn last_tick(&self, schedule: &str) -> StoreResult<Option<i64>>;

    /// Cheap liveness check for /readyz.
    async fn ping(&self) -> StoreResult<()>;

    /// Pause (`true`) or resume a queue: every runtime on this store stops
    /// leasing its jobs (those already leased run to the end) until resumed.
    async fn set_paused(&self, queue: &str, paused: bool) -> StoreResult<()>;
    /// The paused queues (at most [`MAX_PAUSED`]).
    async fn paused(&self) -> StoreResult<Vec<String>>;
    /// Delete one dead job for good. False when it is not (or no longer) dead.
    async fn discard_dead(&self, queue: &str, id: &str) -> StoreResult<bool>;

    /// Record that runtime `worker_id` is alive at `now_ms`, and forget
    /// runtimes last seen before `forget_before_ms`.
    async fn heartbeat(
        &self,
        worker_id: &str,
        info: &str,
        now_ms: i64,
        forget_before_ms: i64,
    ) -> StoreResult<()>;
    /// Runtimes seen at or after `since_ms`, newest first, at most `limit`.
    async fn workers(&self, since_ms: i64, limit: usize) -> StoreResult<Vec<WorkerBeat>>;

    /// Add attempt outcomes to the bucket of `queue` starting at `bucket_ms`
    /// (a multiple of [`COUNT_BUCKET_MS`]); buckets older than
    /// [`COUNT_KEEP_MS`] are dropped.
    async fn add_counts(&self, queue: &str, bucket_ms: i64, counts: Throughput) -> StoreResult<()>;
    /// Sum of the buckets of `queue` starting in `[from_ms, to_ms)` (at most
    /// 2 days of buckets are read).
    async fn counts(&self, queue: &str, from_ms: i64, to_ms: i64) -> StoreResult<Throughput>;
}
