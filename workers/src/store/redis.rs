//! Redis store.
//!
//! Layout, all under `{prefix}:` (`{p}`), per queue `q`:
//! - `{p}:q:{q}:ready`     zset, score = run_at_ms (due order; ties by id, and
//!   ids are UUID v7, so by creation order)
//! - `{p}:q:{q}:scheduled` zset, score = run_at_ms (not yet due)
//! - `{p}:q:{q}:leased`    zset, score = lease_until_ms (the lease is held
//!   while `now < lease_until`); the owner is the job hash's `worker` field
//! - `{p}:q:{q}:dead`      zset, score = died_at_ms
//! - `{p}:q:{q}:done`      zset, score = finished_at_ms (for retention)
//! - `{p}:job:{id}`        hash: q, payload, attempt, max, enq, run_at, dk,
//!   state, worker, err, died, fin
//! - `{p}:dedupe:{q}:{key}` string `{until_ms}:{holder id}`: the key holds
//!   while the caller's `now_ms < until_ms`, also after the job finished or
//!   was purged (the Redis TTL, twice the window, only collects garbage)
//! - `{p}:cron:{schedule}` latest claimed tick; `{p}:tick:{schedule}:{ms}`
//!   one claim per tick (`SET NX PX`, kept [`TICK_CLAIM_TTL_MS`])
//! - channel `{p}:wake:{q}`: published on push, retry, release, redrive and resume.
//! - `{p}:paused` set of paused queue names
//! - `{p}:workers` zset of runtime ids, score = last heartbeat (ms);
//!   `{p}:worker:{id}` string, the runtime's self-description
//! - `{p}:counts:{q}:{bucket_ms}` hash `ok`, `failed`: attempt outcomes per
//!   minute, expiring after two days
//!
//! Every state change is one Lua script (in `redis/*.lua`) that touches a
//! bounded number of jobs: push works in chunks of at most [`PUSH_CHUNK`]
//! jobs, and `fetch` promotes due jobs and reclaims expired leases at most
//! `clamp(limit, 100, 1000)` at a time. Scripts compute job keys from the
//! prefix, so this store targets a single Redis server (not Cluster).
//!
//! Connections: one auto-reconnecting multiplexed connection for commands
//! (connect timeout 2 s, response timeout 5 s, every call additionally capped
//! by a hard deadline), and one pub/sub connection owned by a background task
//! that reconnects with backoff and feeds a per-queue counter that
//! `wait_for_push` waits on. After a reconnect of the pub/sub connection all
//! waiters are woken, since pushes may have been missed meanwhile.
use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use futures::StreamExt;
use redis::{
    Client, FromRedisValue, RedisResult, Script, ScriptInvocation,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use tokio::{sync::watch, task::JoinHandle};

use super::{
    COUNT_BUCKET_MS, COUNT_KEEP_MS, DeadJob, LeasedJob, MAX_PAUSED, NewJob, Pushed, QueueStats,
    Store, StoreError, StoreResult, Throughput, WorkerBeat,
};

/// Most jobs stored by one push script call.
pub const PUSH_CHUNK: usize = 1000;
/// Most payload bytes stored by one push script call (a single larger job
/// still goes in its own call).
pub const PUSH_CHUNK_BYTES: usize = 1 << 20;
/// Fewest due jobs promoted / expired leases reclaimed per fetch.
pub const MIN_SWEEP: usize = 100;
/// Most due jobs promoted, expired leases reclaimed, or jobs leased per fetch.
pub const MAX_SWEEP: usize = 1000;
/// Most jobs one `purge` deletes or one `list_dead` returns.
pub const MAX_LISTED: usize = 10_000;
/// How long a cron tick claim is remembered.
pub const TICK_CLAIM_TTL_MS: i64 = 7 * 24 * 3600 * 1000;
/// How often an idle pub/sub connection is checked with PING.
const PUBSUB_PING_EVERY: Duration = Duration::from_secs(5);

struct Scripts {
    push: Script,
    fetch: Script,
    renew: Script,
    complete: Script,
    retry: Script,
    kill: Script,
    release: Script,
    list_dead: Script,
    redrive: Script,
    purge: Script,
    claim_tick: Script,
}

impl Scripts {
    fn all(&self) -> [&Script; 11] {
        [
            &self.push,
            &self.fetch,
            &self.renew,
            &self.complete,
            &self.retry,
            &self.kill,
            &self.release,
            &self.list_dead,
            &self.redrive,
            &self.purge,
            &self.claim_tick,
        ]
    }
}

/// Remove one dead job and its hash. KEYS: dead; ARGV: prefix, id.
static DISCARD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('ZREM', KEYS[1], ARGV[2]) == 1 then \
           redis.call('DEL', ARGV[1] .. ':job:' .. ARGV[2]) return 1 end return 0",
    )
});

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    push: Script::new(include_str!("redis/push.lua")),
    fetch: Script::new(include_str!("redis/fetch.lua")),
    renew: Script::new(include_str!("redis/renew.lua")),
    complete: Script::new(include_str!("redis/complete.lua")),
    retry: Script::new(include_str!("redis/retry.lua")),
    kill: Script::new(include_str!("redis/kill.lua")),
    release: Script::new(include_str!("redis/release.lua")),
    list_dead: Script::new(include_str!("redis/list_dead.lua")),
    redrive: Script::new(include_str!("redis/redrive.lua")),
    purge: Script::new(include_str!("redis/purge.lua")),
    claim_tick: Script::new(include_str!("redis/claim_tick.lua")),
});

/// Timeouts of a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisStoreConfig {
    /// One TCP connect attempt.
    pub connect_timeout: Duration,
    /// One command's reply.
    pub response_timeout: Duration,
    /// Hard deadline of one store call, whatever happens inside (reconnect
    /// attempts included).
    pub call_timeout: Duration,
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(8),
        }
    }
}

/// Queue storage on one Redis server. Cheap to clone; clones share the
/// connections.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    prefix: String,
    config: RedisStoreConfig,
    wake: Arc<WakeHub>,
    listener: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Per-queue push counters fed by the pub/sub listener.
#[derive(Default)]
struct WakeHub {
    queues: Mutex<HashMap<String, Arc<QueueWake>>>,
    subscribed: watch::Sender<bool>,
}

struct QueueWake {
    /// Number of wake-ups seen for this queue.
    pushes: watch::Sender<u64>,
    /// Value of `pushes` when this queue was last fetched or waited on.
    seen: AtomicU64,
}

impl WakeHub {
    fn queue(&self, name: &str) -> Arc<QueueWake> {
        let mut map = self
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(w) = map.get(name) {
            return w.clone();
        }
        let w = Arc::new(QueueWake {
            pushes: watch::Sender::new(0),
            seen: AtomicU64::new(0),
        });
        map.insert(name.to_string(), w.clone());
        w
    }

    fn bump(&self, name: &str) {
        let w = self
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned();
        if let Some(w) = w {
            w.pushes.send_modify(|n| *n += 1);
        }
    }

    fn bump_all(&self) {
        let all: Vec<_> = self
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for w in all {
            w.pushes.send_modify(|n| *n += 1);
        }
    }
}

impl RedisStore {
    /// A store on `url` (`redis://host:port/db`) with keys under `prefix:`.
    /// Connects lazily: this fails only on a malformed URL; `setup` checks the
    /// server.
    pub async fn connect(url: &str, prefix: &str) -> StoreResult<Self> {
        Self::connect_with(url, prefix, RedisStoreConfig::default()).await
    }

    pub async fn connect_with(
        url: &str,
        prefix: &str,
        config: RedisStoreConfig,
    ) -> StoreResult<Self> {
        if prefix.is_empty() {
            return Err(StoreError::Other(
                "redis key prefix must not be empty".into(),
            ));
        }
        let client = Client::open(url)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)?;
        let wake = Arc::new(WakeHub::default());
        let listener = tokio::spawn(listen(
            client,
            prefix.to_string(),
            config.clone(),
            wake.clone(),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                conn,
                prefix: prefix.to_string(),
                config,
                wake,
                listener,
            }),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    fn qkey(&self, queue: &str, part: &str) -> String {
        format!("{}:q:{}:{}", self.inner.prefix, queue, part)
    }

    /// Runs one Redis round trip under the hard call deadline.
    async fn bounded<T>(&self, fut: impl Future<Output = RedisResult<T>>) -> StoreResult<T> {
        match tokio::time::timeout(self.inner.config.call_timeout, fut).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Other(format!(
                "redis: no reply within {:?}",
                self.inner.config.call_timeout
            ))),
        }
    }

    async fn invoke<T: FromRedisValue>(&self, inv: ScriptInvocation<'_>) -> StoreResult<T> {
        let mut conn = self.inner.conn.clone();
        self.bounded(async move { inv.invoke_async(&mut conn).await })
            .await
    }

    async fn command<T: FromRedisValue>(&self, cmd: redis::Cmd) -> StoreResult<T> {
        let mut conn = self.inner.conn.clone();
        self.bounded(async move { cmd.query_async(&mut conn).await })
            .await
    }

    async fn push_chunk(
        &self,
        chunk: &[NewJob],
        now_ms: i64,
        dedupe_window_ms: i64,
    ) -> StoreResult<Vec<Pushed>> {
        let window = dedupe_window_ms.max(0);
        // The key's TTL only collects garbage: the window itself is checked
        // against the caller's clock, with room for clock skew.
        let ttl = window.saturating_mul(2);
        let mut inv = SCRIPTS.push.prepare_invoke();
        inv.arg(&self.inner.prefix)
            .arg(now_ms)
            .arg(now_ms.saturating_add(window))
            .arg(ttl)
            .arg(chunk.len());
        for job in chunk {
            inv.arg(uuid::Uuid::now_v7().to_string())
                .arg(&job.queue)
                .arg(&job.payload)
                .arg(job.run_at_ms)
                .arg(job.dedupe_key.as_deref().unwrap_or(""))
                .arg(job.max_attempts);
        }
        let rows: Vec<(String, i64)> = self.invoke(inv).await?;
        if rows.len() != chunk.len() {
            return Err(StoreError::Other(format!(
                "redis push: {} results for {} jobs",
                rows.len(),
                chunk.len()
            )));
        }
        Ok(rows
            .into_iter()
            .map(|(id, dedup)| Pushed {
                id,
                deduplicated: dedup == 1,
            })
            .collect())
    }

    /// Ack scripts answer 1 when applied, 0 when the worker no longer holds
    /// the lease (the new owner's state is left alone).
    fn note_ack(op: &str, queue: &str, id: &str, worker_id: &str, applied: i64) {
        if applied == 0 {
            tracing::debug!(
                op,
                queue,
                job_id = id,
                worker_id,
                "ignored: the worker no longer holds this job's lease"
            );
        }
    }
}

/// Splits jobs into push chunks bounded in count and payload bytes.
fn push_chunks(jobs: &[NewJob]) -> impl Iterator<Item = &[NewJob]> {
    let mut rest = jobs;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len() && n < PUSH_CHUNK {
            let size = rest[n].payload.len() + rest[n].dedupe_key.as_ref().map_or(0, String::len);
            if n > 0 && bytes + size > PUSH_CHUNK_BYTES {
                break;
            }
            bytes += size;
            n += 1;
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    })
}

/// Escapes glob characters of a PSUBSCRIBE pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The pub/sub task: keeps one subscription to `{prefix}:wake:*` alive and
/// turns messages into per-queue wake-ups. Runs until the store is dropped.
async fn listen(client: Client, prefix: String, config: RedisStoreConfig, hub: Arc<WakeHub>) {
    let channel_prefix = format!("{prefix}:wake:");
    let pattern = format!("{}*", glob_escape(&channel_prefix));
    let mut backoff = Duration::from_millis(50);
    let mut failures = 0u32;
    loop {
        let subscribed =
            tokio::time::timeout(config.connect_timeout + config.response_timeout, async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.psubscribe(&pattern).await?;
                RedisResult::Ok(pubsub)
            })
            .await;
        match subscribed {
            Ok(Ok(pubsub)) => {
                if failures > 0 {
                    tracing::info!(prefix = %prefix, "redis wake-up subscription restored");
                }
                failures = 0;
                backoff = Duration::from_millis(50);
                hub.subscribed.send_replace(true);
                // Pushes made while we were not subscribed were missed.
                hub.bump_all();
                let (mut sink, mut stream) = pubsub.split();
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => {
                                if let Some(queue) = msg.get_channel_name().strip_prefix(&channel_prefix) {
                                    hub.bump(queue);
                                }
                            }
                            None => break,
                        },
                        () = tokio::time::sleep(PUBSUB_PING_EVERY) => {
                            let pong = tokio::time::timeout(config.response_timeout, sink.ping::<redis::Value>()).await;
                            if !matches!(pong, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                hub.subscribed.send_replace(false);
                tracing::warn!(prefix = %prefix, "redis wake-up subscription lost; reconnecting");
            }
            Ok(Err(e)) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(prefix = %prefix, error = %e, "redis wake-up subscription failed; retrying");
                }
            }
            Err(_) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(prefix = %prefix, "redis wake-up subscription timed out; retrying");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

type FetchRow = (String, String, u32, u32, i64, i64);
type DeadRow = (String, String, u32, String, i64);

#[async_trait]
impl Store for RedisStore {
    async fn setup(&self) -> StoreResult<()> {
        self.ping().await?;
        for script in SCRIPTS.all() {
            let mut conn = self.inner.conn.clone();
            self.bounded(async move { script.load_async(&mut conn).await })
                .await?;
        }
        // Jobs must never be evicted; warn when the server may do so.
        let policy: StoreResult<Vec<String>> = self
            .command(
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .clone(),
            )
            .await;
        if let Ok(policy) = policy
            && let Some(value) = policy.get(1)
            && value != "noeviction"
        {
            tracing::warn!(maxmemory_policy = %value, "redis may evict queued jobs; set maxmemory-policy noeviction");
        }
        let mut subscribed = self.inner.wake.subscribed.subscribe();
        let wait = self.inner.config.connect_timeout + self.inner.config.response_timeout;
        match tokio::time::timeout(wait, subscribed.wait_for(|s| *s)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StoreError::Other(format!(
                "redis: wake-up subscription not ready within {wait:?}"
            ))),
        }
    }

    async fn push(
        &self,
        jobs: &[NewJob],
        now_ms: i64,
        dedupe_window_ms: i64,
    ) -> StoreResult<Vec<Pushed>> {
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in push_chunks(jobs) {
            out.extend(self.push_chunk(chunk, now_ms, dedupe_window_ms).await?);
        }
        Ok(out)
    }

    async fn fetch(
        &self,
        queue: &str,
        worker_id: &str,
        limit: usize,
        now_ms: i64,
        lease_ms: i64,
    ) -> StoreResult<Vec<LeasedJob>> {
        // A push seen after this point wakes the next wait_for_push at once.
        let wake = self.inner.wake.queue(queue);
        wake.seen.store(*wake.pushes.borrow(), Ordering::SeqCst);

        let limit = limit.min(MAX_SWEEP);
        let sweep = limit.clamp(MIN_SWEEP, MAX_SWEEP);
        let lease_until = now_ms + lease_ms;
        let mut inv = SCRIPTS.fetch.prepare_invoke();
        inv.key(self.qkey(queue, "ready"))
            .key(self.qkey(queue, "scheduled"))
            .key(self.qkey(queue, "leased"))
            .key(self.qkey(queue, "dead"))
            .arg(&self.inner.prefix)
            .arg(worker_id)
            .arg(limit)
            .arg(now_ms)
            .arg(lease_until)
            .arg(sweep);
        let rows: Vec<FetchRow> = self.invoke(inv).await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, payload, attempt, max_attempts, enqueued_at_ms, run_at_ms)| LeasedJob {
                    id,
                    queue: queue.to_string(),
                    payload,
                    attempt,
                    max_attempts,
                    enqueued_at_ms,
                    run_at_ms,
                    lease_until_ms: lease_until,
                },
            )
            .collect())
    }

    async fn renew(
        &self,
        queue: &str,
        ids: &[String],
        worker_id: &str,
        until_ms: i64,
    ) -> StoreResult<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = SCRIPTS.renew.prepare_invoke();
        inv.key(self.qkey(queue, "leased"))
            .arg(&self.inner.prefix)
            .arg(worker_id)
            .arg(until_ms)
            .arg(ids);
        self.invoke(inv).await
    }

    async fn complete(
        &self,
        queue: &str,
        id: &str,
        worker_id: &str,
        now_ms: i64,
    ) -> StoreResult<()> {
        let mut inv = SCRIPTS.complete.prepare_invoke();
        inv.key(self.qkey(queue, "leased"))
            .key(self.qkey(queue, "done"))
            .arg(&self.inner.prefix)
            .arg(id)
            .arg(worker_id)
            .arg(now_ms);
        let applied: i64 = self.invoke(inv).await?;
        Self::note_ack("complete", queue, id, worker_id, applied);
        Ok(())
    }

    async fn retry(
        &self,
        queue: &str,
        id: &str,
        worker_id: &str,
        run_at_ms: i64,
        error: &str,
    ) -> StoreResult<()> {
        let mut inv = SCRIPTS.retry.prepare_invoke();
        inv.key(self.qkey(queue, "leased"))
            .key(self.qkey(queue, "scheduled"))
            .arg(&self.inner.prefix)
            .arg(id)
            .arg(worker_id)
            .arg(run_at_ms)
            .arg(error)
            .arg(queue);
        let applied: i64 = self.invoke(inv).await?;
        Self::note_ack("retry", queue, id, worker_id, applied);
        Ok(())
    }

    async fn kill(
        &self,
        queue: &str,
        id: &str,
        worker_id: &str,
        now_ms: i64,
        error: &str,
    ) -> StoreResult<()> {
        let mut inv = SCRIPTS.kill.prepare_invoke();
        inv.key(self.qkey(queue, "leased"))
            .key(self.qkey(queue, "dead"))
            .arg(&self.inner.prefix)
            .arg(id)
            .arg(worker_id)
            .arg(now_ms)
            .arg(error);
        let applied: i64 = self.invoke(inv).await?;
        Self::note_ack("kill", queue, id, worker_id, applied);
        Ok(())
    }

    async fn release(&self, queue: &str, ids: &[String], worker_id: &str) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut inv = SCRIPTS.release.prepare_invoke();
        inv.key(self.qkey(queue, "leased"))
            .key(self.qkey(queue, "ready"))
            .arg(&self.inner.prefix)
            .arg(worker_id)
            .arg(queue)
            .arg(ids);
        let released: usize = self.invoke(inv).await?;
        if released < ids.len() {
            tracing::debug!(
                queue,
                worker_id,
                asked = ids.len(),
                released,
                "release: some leases were no longer held"
            );
        }
        Ok(())
    }

    async fn wait_for_push(&self, queue: &str, timeout_ms: u64) -> StoreResult<bool> {
        let wake = self.inner.wake.queue(queue);
        let mut rx = wake.pushes.subscribe();
        let seen = wake.seen.load(Ordering::SeqCst);
        let current = *rx.borrow_and_update();
        if current > seen {
            wake.seen.store(current, Ordering::SeqCst);
            return Ok(true);
        }
        match tokio::time::timeout(Duration::from_millis(timeout_ms), rx.changed()).await {
            Ok(Ok(())) => {
                wake.seen.store(*rx.borrow_and_update(), Ordering::SeqCst);
                Ok(true)
            }
            // The sender lives in the hub as long as this store: cannot close.
            Ok(Err(_)) | Err(_) => Ok(false),
        }
    }

    async fn next_due_ms(&self, queue: &str) -> StoreResult<Option<i64>> {
        let first: Vec<String> = self
            .command(
                redis::cmd("ZRANGE")
                    .arg(self.qkey(queue, "scheduled"))
                    .arg(0)
                    .arg(0)
                    .arg("WITHSCORES")
                    .clone(),
            )
            .await?;
        match first.get(1) {
            None => Ok(None),
            Some(score) => score
                .parse::<f64>()
                .map(|s| Some(s as i64))
                .map_err(|_| StoreError::Other(format!("redis: bad schedule score {score:?}"))),
        }
    }

    async fn stats(&self, queue: &str) -> StoreResult<QueueStats> {
        let mut pipe = redis::pipe();
        for part in ["ready", "scheduled", "leased", "dead"] {
            pipe.cmd("ZCARD").arg(self.qkey(queue, part));
        }
        let mut conn = self.inner.conn.clone();
        let (ready, scheduled, running, dead): (u64, u64, u64, u64) = self
            .bounded(async move { pipe.query_async(&mut conn).await })
            .await?;
        Ok(QueueStats {
            ready,
            scheduled,
            running,
            dead,
        })
    }

    async fn list_dead(&self, queue: &str, limit: usize) -> StoreResult<Vec<DeadJob>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut inv = SCRIPTS.list_dead.prepare_invoke();
        inv.key(self.qkey(queue, "dead"))
            .arg(&self.inner.prefix)
            .arg(limit.min(MAX_LISTED));
        let rows: Vec<DeadRow> = self.invoke(inv).await?;
        Ok(rows
            .into_iter()
            .map(|(id, payload, attempts, last_error, died_at_ms)| DeadJob {
                id,
                queue: queue.to_string(),
                payload,
                attempts,
                last_error,
                died_at_ms,
            })
            .collect())
    }

    async fn redrive(&self, queue: &str, id: &str, now_ms: i64) -> StoreResult<bool> {
        let mut inv = SCRIPTS.redrive.prepare_invoke();
        inv.key(self.qkey(queue, "dead"))
            .key(self.qkey(queue, "ready"))
            .arg(&self.inner.prefix)
            .arg(id)
            .arg(now_ms)
            .arg(queue);
        let moved: i64 = self.invoke(inv).await?;
        Ok(moved == 1)
    }

    async fn purge(
        &self,
        queue: &str,
        before_ms: i64,
        dead_before_ms: i64,
        limit: usize,
    ) -> StoreResult<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let mut inv = SCRIPTS.purge.prepare_invoke();
        inv.key(self.qkey(queue, "done"))
            .key(self.qkey(queue, "dead"))
            .arg(&self.inner.prefix)
            .arg(before_ms)
            .arg(dead_before_ms)
            .arg(limit.min(MAX_LISTED));
        self.invoke(inv).await
    }

    async fn claim_tick(&self, schedule: &str, tick_ms: i64) -> StoreResult<bool> {
        let p = &self.inner.prefix;
        let mut inv = SCRIPTS.claim_tick.prepare_invoke();
        inv.key(format!("{p}:tick:{schedule}:{tick_ms}"))
            .key(format!("{p}:cron:{schedule}"))
            .arg(tick_ms)
            .arg(TICK_CLAIM_TTL_MS);
        let won: i64 = self.invoke(inv).await?;
        Ok(won == 1)
    }

    async fn last_tick(&self, schedule: &str) -> StoreResult<Option<i64>> {
        self.command(
            redis::cmd("GET")
                .arg(format!("{}:cron:{schedule}", self.inner.prefix))
                .clone(),
        )
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        let _: String = self.command(redis::cmd("PING")).await?;
        Ok(())
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> StoreResult<()> {
        let p = &self.inner.prefix;
        let mut pipe = redis::pipe();
        if paused {
            pipe.cmd("SADD")
                .arg(format!("{p}:paused"))
                .arg(queue)
                .ignore();
        } else {
            pipe.cmd("SREM")
                .arg(format!("{p}:paused"))
                .arg(queue)
                .ignore();
            pipe.cmd("PUBLISH")
                .arg(format!("{p}:wake:{queue}"))
                .arg("resume")
                .ignore();
        }
        let mut conn = self.inner.conn.clone();
        self.bounded(async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    async fn paused(&self) -> StoreResult<Vec<String>> {
        let mut names: Vec<String> = self
            .command(
                redis::cmd("SMEMBERS")
                    .arg(format!("{}:paused", self.inner.prefix))
                    .clone(),
            )
            .await?;
        names.sort();
        names.truncate(MAX_PAUSED);
        Ok(names)
    }

    async fn discard_dead(&self, queue: &str, id: &str) -> StoreResult<bool> {
        let mut inv = DISCARD.prepare_invoke();
        inv.key(self.qkey(queue, "dead"))
            .arg(&self.inner.prefix)
            .arg(id);
        let n: i64 = self.invoke(inv).await?;
        Ok(n == 1)
    }

    async fn heartbeat(
        &self,
        worker_id: &str,
        info: &str,
        now_ms: i64,
        forget_before_ms: i64,
    ) -> StoreResult<()> {
        let p = &self.inner.prefix;
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(format!("{p}:workers"))
            .arg(now_ms)
            .arg(worker_id)
            .ignore();
        pipe.cmd("SET")
            .arg(format!("{p}:worker:{worker_id}"))
            .arg(info)
            .arg("PX")
            .arg((now_ms - forget_before_ms).max(1000))
            .ignore();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(format!("{p}:workers"))
            .arg("-inf")
            .arg(format!("({forget_before_ms}"))
            .ignore();
        let mut conn = self.inner.conn.clone();
        self.bounded(async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    async fn workers(&self, since_ms: i64, limit: usize) -> StoreResult<Vec<WorkerBeat>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let p = &self.inner.prefix;
        let rows: Vec<(String, f64)> = self
            .command(
                redis::cmd("ZREVRANGEBYSCORE")
                    .arg(format!("{p}:workers"))
                    .arg("+inf")
                    .arg(since_ms)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit.min(MAX_LISTED))
                    .clone(),
            )
            .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut mget = redis::cmd("MGET");
        for (id, _) in &rows {
            mget.arg(format!("{p}:worker:{id}"));
        }
        let infos: Vec<Option<String>> = self.command(mget).await?;
        Ok(rows
            .into_iter()
            .zip(infos)
            .map(|((worker_id, seen), info)| WorkerBeat {
                worker_id,
                info: info.unwrap_or_default(),
                seen_at_ms: seen as i64,
            })
            .collect())
    }

    async fn add_counts(&self, queue: &str, bucket_ms: i64, counts: Throughput) -> StoreResult<()> {
        let key = format!("{}:counts:{queue}:{bucket_ms}", self.inner.prefix);
        let mut pipe = redis::pipe();
        pipe.cmd("HINCRBY")
            .arg(&key)
            .arg("ok")
            .arg(counts.ok)
            .ignore();
        pipe.cmd("HINCRBY")
            .arg(&key)
            .arg("failed")
            .arg(counts.failed)
            .ignore();
        pipe.cmd("PEXPIRE").arg(&key).arg(COUNT_KEEP_MS).ignore();
        let mut conn = self.inner.conn.clone();
        self.bounded(async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    async fn counts(&self, queue: &str, from_ms: i64, to_ms: i64) -> StoreResult<Throughput> {
        let from_ms = from_ms.max(to_ms - COUNT_KEEP_MS);
        let first = from_ms.div_euclid(COUNT_BUCKET_MS) * COUNT_BUCKET_MS;
        let first = if first < from_ms {
            first + COUNT_BUCKET_MS
        } else {
            first
        };
        if first >= to_ms {
            return Ok(Throughput::default());
        }
        let mut pipe = redis::pipe();
        let mut b = first;
        while b < to_ms {
            pipe.cmd("HMGET")
                .arg(format!("{}:counts:{queue}:{b}", self.inner.prefix))
                .arg("ok")
                .arg("failed");
            b += COUNT_BUCKET_MS;
        }
        let mut conn = self.inner.conn.clone();
        let rows: Vec<(Option<u64>, Option<u64>)> = self
            .bounded(async move { pipe.query_async(&mut conn).await })
            .await?;
        Ok(rows
            .into_iter()
            .fold(Throughput::default(), |t, (ok, f)| Throughput {
                ok: t.ok + ok.unwrap_or(0),
                failed: t.failed + f.unwrap_or(0),
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(payload_len: usize) -> NewJob {
        NewJob {
            queue: "q".into(),
            payload: "x".repeat(payload_len),
            run_at_ms: 0,
            dedupe_key: None,
            max_attempts: 1,
        }
    }

    #[test]
    fn push_chunks_cap_count_and_bytes() {
        let jobs: Vec<_> = (0..2500).map(|_| job(10)).collect();
        let sizes: Vec<_> = push_chunks(&jobs).map(<[NewJob]>::len).collect();
        assert_eq!(sizes, vec![1000, 1000, 500]);

        let big: Vec<_> = (0..5).map(|_| job(PUSH_CHUNK_BYTES / 2)).collect();
        let sizes: Vec<_> = push_chunks(&big).map(<[NewJob]>::len).collect();
        assert_eq!(sizes, vec![2, 2, 1]);

        let huge = vec![job(PUSH_CHUNK_BYTES * 3)];
        assert_eq!(push_chunks(&huge).count(), 1);
        assert_eq!(push_chunks(&[]).count(), 0);
    }

    #[test]
    fn glob_escape_escapes_pattern_characters() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("plain:prefix"), "plain:prefix");
    }
}
