//! One job type's worker: an apalis-core `Backend` over our [`Store`]
//! (bounded fetches, wake-up on push, leases) and the tower layer that runs
//! each job (spawned, with timeout and panic capture), then acknowledges it
//! (complete, retry with backoff, dead-letter, or release on shutdown).
use std::{
    collections::{HashSet, VecDeque},
    marker::PhantomData,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use apalis_core::{
    backend::{Backend, BackendConfig, finalize::Ephemeral},
    error::BoxDynError,
    task::{Task, builder::TaskBuilder, data::Data, task_id::TaskId},
    worker::context::WorkerContext,
};
use futures::{FutureExt, future::BoxFuture, task::AtomicWaker};
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service, layer::util::Identity};
use tracing::Instrument;

use crate::{
    health::{Backoff, Health},
    job::{Job, JobError, JobInfo},
    metrics as m,
    queue::Queue,
    store::LeasedJob,
};

/// Longest error text stored with a job.
const MAX_ERROR_LEN: usize = 2000;
/// Largest id list sent in one `renew` or `release` call.
const ID_CHUNK: usize = 500;

/// In-process wake-up signals of one [`Queue`] handle and its clones: one per
/// queue name (bumped by pushes through the handle) and one for everything
/// (`Queue::notify_all`).
#[derive(Debug, Default)]
pub(crate) struct Wakeups {
    all: tokio::sync::watch::Sender<u64>,
    queues: Mutex<std::collections::HashMap<String, tokio::sync::watch::Sender<u64>>>,
    /// The paused queues as last read from the store (or changed through
    /// this handle); the fetch loop leases nothing from a queue in it.
    paused: tokio::sync::watch::Sender<Arc<HashSet<String>>>,
}

impl Wakeups {
    fn queues(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, tokio::sync::watch::Sender<u64>>>
    {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wake everything.
    pub(crate) fn all(&self) {
        self.all.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wake the workers of `queue`.
    pub(crate) fn queue(&self, queue: &str) {
        if let Some(tx) = self.queues().get(queue) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Replace the paused set (from the store); wakes fetch loops on a change.
    pub(crate) fn set_paused_all(&self, names: HashSet<String>) {
        self.paused.send_if_modified(|cur| {
            if **cur == names {
                false
            } else {
                *cur = Arc::new(names);
                true
            }
        });
    }

    /// Mark one queue paused or not (a change made through this handle).
    pub(crate) fn set_paused(&self, queue: &str, paused: bool) {
        self.paused.send_if_modified(|cur| {
            if cur.contains(queue) == paused {
                return false;
            }
            let mut next = (**cur).clone();
            if paused {
                next.insert(queue.to_string());
            } else {
                next.remove(queue);
            }
            *cur = Arc::new(next);
            true
        });
    }

    pub(crate) fn subscribe_paused(&self) -> tokio::sync::watch::Receiver<Arc<HashSet<String>>> {
        self.paused.subscribe()
    }

    pub(crate) fn subscribe_all(&self) -> tokio::sync::watch::Receiver<u64> {
        self.all.subscribe()
    }

    pub(crate) fn subscribe_queue(&self, queue: &str) -> tokio::sync::watch::Receiver<u64> {
        self.queues()
            .entry(queue.to_string())
            .or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe()
    }
}

/// What the whole runtime shares with each worker.
pub(crate) struct Common {
    pub(crate) queue: Queue,
    pub(crate) worker_id: Arc<str>,
    /// Stop fetching (graceful shutdown started).
    pub(crate) drain: CancellationToken,
    /// Shutdown timeout passed: abort handlers and release their jobs.
    pub(crate) hard: CancellationToken,
    pub(crate) health: Arc<Health>,
    /// Attempt outcomes per queue not yet added to the store's counts.
    pub(crate) counts: Mutex<std::collections::HashMap<&'static str, crate::store::Throughput>>,
}

impl Common {
    pub(crate) fn now_ms(&self) -> i64 {
        self.queue.clock.now().timestamp_millis()
    }

    /// Count one finished attempt of `queue` (flushed to the store by the
    /// runtime's maintenance task).
    pub(crate) fn count(&self, queue: &'static str, ok: bool) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let e = c.entry(queue).or_default();
        if ok {
            e.ok += 1;
        } else {
            e.failed += 1;
        }
    }

    /// Take the counts gathered since the last call.
    pub(crate) fn take_counts(
        &self,
    ) -> std::collections::HashMap<&'static str, crate::store::Throughput> {
        std::mem::take(&mut *self.counts.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Run a store operation until it succeeds, with backoff; gives up
    /// (returning `None`) only once the runtime gives up on the store.
    pub(crate) async fn retry_store<T, F, Fut>(&self, what: &str, mut op: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = crate::store::StoreResult<T>>,
    {
        let mut backoff = Backoff::new(Duration::from_secs(2));
        loop {
            match op().await {
                Ok(v) => {
                    self.health.ok();
                    return Some(v);
                }
                Err(e) => {
                    self.health.fail(what, &e);
                    if self.health.exceeded().is_some() {
                        return None;
                    }
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// Per job type, per worker incarnation (a restarted worker gets a fresh one,
/// so leases of jobs whose futures died with the old worker stop being
/// renewed and expire).
pub(crate) struct Shared {
    pub(crate) common: Arc<Common>,
    pub(crate) name: &'static str,
    pub(crate) concurrency: usize,
    pub(crate) timeout: Duration,
    pub(crate) backoff: fn(u32) -> Duration,
    /// Ids leased by this worker and not yet acknowledged (buffered or
    /// running): the lease renewer extends exactly these.
    pub(crate) held: Mutex<HashSet<String>>,
    /// Jobs handed to the service and not yet acknowledged.
    pub(crate) running: AtomicUsize,
    pub(crate) slot_free: AtomicWaker,
}

impl Shared {
    pub(crate) fn new<J: Job>(common: Arc<Common>, concurrency: usize) -> Self {
        Self {
            common,
            name: J::NAME,
            concurrency: concurrency.max(1),
            timeout: J::TIMEOUT,
            backoff: J::backoff,
            held: Mutex::new(HashSet::new()),
            running: AtomicUsize::new(0),
            slot_free: AtomicWaker::new(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn held_ids(&self) -> Vec<String> {
        self.held().iter().cloned().collect()
    }

    fn forget(&self, id: &str) {
        self.held().remove(id);
    }

    /// Fetch a batch, or wait for work: wake-up on push (store and
    /// in-process), a timer to the next scheduled job, `idle_poll` as the
    /// fallback. Returns an empty batch when draining.
    async fn fetch_or_wait(self: Arc<Self>) -> Result<Vec<LeasedJob>, BackendError> {
        let c = &self.common;
        let store = &c.queue.store;
        let cfg = &c.queue.config;
        let mut wake_all = c.queue.wake.subscribe_all();
        let mut wake_queue = c.queue.wake.subscribe_queue(self.name);
        let mut paused = c.queue.wake.subscribe_paused();
        let mut backoff = Backoff::new(Duration::from_secs(5));
        let lease_ms = cfg.lease.as_millis() as i64;
        loop {
            if c.drain.is_cancelled() {
                return Ok(Vec::new());
            }
            // A paused queue leases nothing until it is resumed (the set is
            // refreshed from the store by the runtime's pause watcher).
            if paused.borrow_and_update().contains(self.name) {
                tokio::select! {
                    _ = c.drain.cancelled() => return Ok(Vec::new()),
                    _ = paused.changed() => {}
                }
                continue;
            }
            wake_all.mark_unchanged();
            wake_queue.mark_unchanged();
            let free = self
                .concurrency
                .saturating_sub(self.running.load(Ordering::SeqCst))
                .max(1);
            let limit = free.min(cfg.batch.max(1));
            let failed = match store
                .fetch(self.name, &c.worker_id, limit, c.now_ms(), lease_ms)
                .await
            {
                Ok(jobs) if !jobs.is_empty() => {
                    c.health.ok();
                    self.held().extend(jobs.iter().map(|j| j.id.clone()));
                    return Ok(jobs);
                }
                Ok(_) => {
                    c.health.ok();
                    backoff.reset();
                    None
                }
                Err(e) => Some(("fetch", e)),
            };
            let wait = if failed.is_none() {
                match store.next_due_ms(self.name).await {
                    Ok(next) => Some(idle_wait(next, c.now_ms(), cfg.idle_poll)),
                    Err(e) => {
                        self.fail("next_due", e, &mut backoff).await?;
                        continue;
                    }
                }
            } else {
                None
            };
            if let Some((what, e)) = failed {
                self.fail(what, e, &mut backoff).await?;
                continue;
            }
            let wait = wait.unwrap_or(cfg.idle_poll);
            let woken = tokio::select! {
                biased;
                _ = c.drain.cancelled() => return Ok(Vec::new()),
                _ = wake_all.changed() => Ok(true),
                _ = wake_queue.changed() => Ok(true),
                r = store.wait_for_push(self.name, wait.as_millis() as u64) => r,
                // In case a store's own timeout is coarser than ours.
                _ = tokio::time::sleep(wait + Duration::from_millis(5)) => Ok(false),
            };
            if let Err(e) = woken {
                self.fail("wait_for_push", e, &mut backoff).await?;
            }
        }
    }

    async fn fail(
        &self,
        what: &str,
        e: crate::store::StoreError,
        backoff: &mut Backoff,
    ) -> Result<(), BackendError> {
        let c = &self.common;
        c.health.fail(what, &e);
        if let Some(msg) = c.health.exceeded() {
            return Err(BackendError(msg));
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = c.drain.cancelled() => {}
        }
        Ok(())
    }

    /// Hand leased jobs back (graceful shutdown), in bounded chunks.
    async fn release(&self, ids: Vec<String>) {
        let c = &self.common;
        for chunk in ids.chunks(ID_CHUNK) {
            let released = c
                .retry_store("release", || {
                    c.queue.store.release(self.name, chunk, &c.worker_id)
                })
                .await;
            if released.is_some() {
                tracing::info!(
                    job = self.name,
                    count = chunk.len(),
                    "released jobs for another worker"
                );
            }
        }
        for id in &ids {
            self.forget(id);
        }
    }

    /// Extend the leases of every held job; runs until `stop` fires.
    pub(crate) async fn renew_loop(self: Arc<Self>, stop: CancellationToken) {
        let c = &self.common;
        let lease = c.queue.config.lease;
        let every = (lease / 3).max(Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            let ids = self.held_ids();
            for chunk in ids.chunks(ID_CHUNK) {
                let until = c.now_ms() + lease.as_millis() as i64;
                match c
                    .queue
                    .store
                    .renew(self.name, chunk, &c.worker_id, until)
                    .await
                {
                    Ok(lost) => {
                        c.health.ok();
                        for id in lost {
                            if self.held().contains(&id) {
                                tracing::warn!(job = self.name, job_id = %id, "lease lost: the job may run again elsewhere");
                            }
                        }
                    }
                    Err(e) => c.health.fail("renew", &e),
                }
            }
        }
    }
}

/// How long an idle worker sleeps: until the next scheduled job (ms
/// precision) but at most `idle_poll`, and at least 2 ms so a store that
/// reports a due job it does not hand out cannot make us spin.
fn idle_wait(next_due_ms: Option<i64>, now_ms: i64, idle_poll: Duration) -> Duration {
    match next_due_ms {
        Some(t) => Duration::from_millis((t - now_ms).max(2) as u64).min(idle_poll),
        None => idle_poll,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BackendError(pub(crate) String);

/// What the runtime knows about the attempt, injected as task data.
#[derive(Debug, Clone)]
pub(crate) struct JobMeta {
    pub(crate) id: String,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) run_at_ms: i64,
}

/// apalis-core `Backend` over our `Store`, for job type `J`.
pub(crate) struct StoreBackend<J> {
    shared: Arc<Shared>,
    buffer: VecDeque<LeasedJob>,
    fetch: Option<BoxFuture<'static, Result<Vec<LeasedJob>, BackendError>>>,
    close: Option<BoxFuture<'static, ()>>,
    _job: PhantomData<fn() -> J>,
}

impl<J: Job> StoreBackend<J> {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            buffer: VecDeque::new(),
            fetch: None,
            close: None,
            _job: PhantomData,
        }
    }

    fn decode(&self, job: LeasedJob) -> Option<Task<J>> {
        match serde_json::from_str::<J>(&job.payload) {
            Ok(args) => {
                let meta = JobMeta {
                    id: job.id.clone(),
                    attempt: job.attempt.max(1),
                    max_attempts: job.max_attempts,
                    run_at_ms: job.run_at_ms,
                };
                Some(
                    TaskBuilder::new(args)
                        .task_id(TaskId::from_string(job.id))
                        // apalis-core's lifecycle adds one when the task starts.
                        .attempt(meta.attempt as usize - 1)
                        .max_attempts(job.max_attempts as usize)
                        .run_at_timestamp((job.run_at_ms.max(0) / 1000) as u64)
                        .data(meta)
                        .build(),
                )
            }
            Err(e) => {
                // A payload this build cannot read will never succeed.
                let shared = self.shared.clone();
                let error = format!("payload does not decode as {}: {e}", J::NAME);
                tokio::spawn(async move {
                    let c = &shared.common;
                    let now = c.now_ms();
                    tracing::error!(job = shared.name, job_id = %job.id, error = %error, "job dead-lettered: undecodable payload");
                    m::job_outcome(shared.name, m::Outcome::Dead);
                    c.count(shared.name, false);
                    c.retry_store("kill", || {
                        c.queue
                            .store
                            .kill(shared.name, &job.id, &c.worker_id, now, &error)
                    })
                    .await;
                    shared.forget(&job.id);
                });
                None
            }
        }
    }
}

impl<J: Job> Backend for StoreBackend<J> {
    type Task = Task<J>;
    type Error = BackendError;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        loop {
            if self.shared.common.drain.is_cancelled() && self.fetch.is_none() {
                // The worker must be in its stopped state before we end the
                // stream, or it would wait for a stop that never comes.
                let _ = worker.stop();
                return Poll::Ready(None);
            }
            if self.fetch.is_none()
                && let Some(job) = self.buffer.pop_front()
            {
                match self.decode(job) {
                    Some(task) => return Poll::Ready(Some(Ok(task))),
                    None => continue,
                }
            }
            let fut = self
                .fetch
                .get_or_insert_with(|| self.shared.clone().fetch_or_wait().boxed());
            match fut.poll_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(jobs)) => {
                    self.fetch = None;
                    self.buffer.extend(jobs);
                }
                Poll::Ready(Err(e)) => {
                    self.fetch = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        // Let an in-flight fetch finish (it returns at once when draining) so
        // nothing it leased is left behind.
        if let Some(fut) = self.fetch.as_mut() {
            match fut.poll_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(jobs)) => self.buffer.extend(jobs),
                Poll::Ready(Err(_)) => {}
            }
            self.fetch = None;
        }
        if self.close.is_none() {
            if self.buffer.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let ids: Vec<String> = self.buffer.drain(..).map(|j| j.id).collect();
            let shared = self.shared.clone();
            self.close = Some(async move { shared.release(ids).await }.boxed());
        }
        match self.close.as_mut().map(|f| f.poll_unpin(cx)) {
            Some(Poll::Pending) => Poll::Pending,
            _ => {
                self.close = None;
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<J: Job> BackendConfig for StoreBackend<J> {
    type Args = J;
    type Id = String;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        Identity::new()
    }
}

/// The handler apalis-core calls: extractors give it the job's context and
/// what we know about the attempt.
pub(crate) async fn run_job<J: Job>(
    job: J,
    ctx: Data<J::Context>,
    meta: Data<JobMeta>,
) -> Result<(), JobError> {
    let info = JobInfo {
        id: meta.id.clone(),
        queue: J::NAME,
        attempt: meta.attempt,
        max_attempts: meta.max_attempts,
    };
    job.run(ctx.0, info).await
}

/// Tower layer doing concurrency, spawn, timeout, panic capture, tracing
/// span, metrics and acknowledgement.
#[derive(Clone)]
pub(crate) struct JobLayer {
    shared: Arc<Shared>,
}

impl JobLayer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl<S> Layer<S> for JobLayer {
    type Service = JobService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        JobService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct JobService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// How an attempt ended.
#[derive(Debug)]
enum Ended {
    Ok,
    Failed {
        error: String,
        permanent: bool,
        cause: Option<m::Outcome>,
    },
    /// Shutdown timeout: handler aborted, job handed back.
    Abandoned,
}

/// Aborts a spawned task when dropped: a handler whose service future is
/// dropped (worker dropped mid-job) does not run on without its
/// acknowledgement, and the runtime's own tasks end with `Runtime::run`.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::AbortHandle);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<S, J> Service<Task<J>> for JobService<S>
where
    J: Job,
    S: Service<Task<J>>,
    S::Error: Into<BoxDynError> + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = ();
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<(), BoxDynError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.shared.slot_free.register(cx.waker());
        if self.shared.running.load(Ordering::SeqCst) >= self.shared.concurrency {
            return Poll::Pending;
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: Task<J>) -> Self::Future {
        let shared = self.shared.clone();
        let Some(meta) = task.data().get::<JobMeta>().cloned() else {
            return futures::future::ready(
                Err("task without JobMeta: not from our backend".into()),
            )
            .boxed();
        };
        shared.running.fetch_add(1, Ordering::SeqCst);
        let c = &shared.common;
        let pickup_ms = (c.now_ms() - meta.run_at_ms).max(0);
        m::pickup(shared.name, Duration::from_millis(pickup_ms as u64));
        let span = tracing::info_span!("job", job = shared.name, job_id = %meta.id, attempt = meta.attempt);
        let handle = tokio::spawn(self.inner.call(task).instrument(span.clone()));
        async move {
            let guard = AbortOnDrop(handle.abort_handle());
            tracing::debug!(pickup_ms, "job started");
            let started = Instant::now();
            let ended = shared.wait_handler(handle).await;
            let elapsed = started.elapsed();
            drop(guard);
            shared.settle(&meta, ended, elapsed).await;
            shared.running.fetch_sub(1, Ordering::SeqCst);
            shared.slot_free.wake();
            Ok(())
        }
        .instrument(span)
        .boxed()
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

impl Shared {
    async fn wait_handler<R, E: Into<BoxDynError>>(
        &self,
        mut handle: tokio::task::JoinHandle<Result<R, E>>,
    ) -> Ended {
        tokio::select! {
            joined = &mut handle => match joined {
                Ok(Ok(_)) => Ended::Ok,
                Ok(Err(e)) => {
                    let e: BoxDynError = e.into();
                    match e.downcast_ref::<JobError>() {
                        Some(JobError::Permanent(inner)) => Ended::Failed { error: format!("{inner:#}"), permanent: true, cause: None },
                        Some(JobError::Retryable(inner)) => Ended::Failed { error: format!("{inner:#}"), permanent: false, cause: None },
                        None => Ended::Failed { error: e.to_string(), permanent: false, cause: None },
                    }
                }
                Err(join) if join.is_panic() => Ended::Failed {
                    error: format!("handler panicked: {}", panic_message(join.into_panic())),
                    permanent: false,
                    cause: Some(m::Outcome::Panic),
                },
                Err(join) => Ended::Failed { error: format!("handler task ended: {join}"), permanent: false, cause: None },
            },
            _ = tokio::time::sleep(self.timeout) => {
                handle.abort();
                Ended::Failed {
                    error: format!("timed out after {:.3}s", self.timeout.as_secs_f64()),
                    permanent: false,
                    cause: Some(m::Outcome::Timeout),
                }
            }
            _ = self.common.hard.cancelled() => {
                handle.abort();
                Ended::Abandoned
            }
        }
    }

    async fn settle(&self, meta: &JobMeta, ended: Ended, elapsed: Duration) {
        let c = &self.common;
        let store = &c.queue.store;
        let wid = &*c.worker_id;
        let id = meta.id.as_str();
        if !matches!(ended, Ended::Abandoned) {
            m::job_duration(self.name, elapsed);
        }
        match ended {
            Ended::Ok => {
                m::job_outcome(self.name, m::Outcome::Ok);
                c.count(self.name, true);
                tracing::debug!(elapsed_ms = elapsed.as_millis() as u64, "job done");
                let now = c.now_ms();
                c.retry_store("complete", || store.complete(self.name, id, wid, now))
                    .await;
            }
            Ended::Abandoned => {
                tracing::warn!("shutdown timeout reached: job aborted and released");
                c.retry_store("release", || {
                    store.release(self.name, std::slice::from_ref(&meta.id), wid)
                })
                .await;
            }
            Ended::Failed {
                error,
                permanent,
                cause,
            } => {
                if let Some(cause) = cause {
                    m::job_outcome(self.name, cause);
                }
                let error = truncate(error);
                let last = meta.attempt >= meta.max_attempts;
                c.count(self.name, false);
                if permanent || last {
                    m::job_outcome(self.name, m::Outcome::Dead);
                    let why = if permanent {
                        "permanent error"
                    } else {
                        "attempts exhausted"
                    };
                    tracing::error!(error = %error, max_attempts = meta.max_attempts, "job dead-lettered ({why})");
                    let now = c.now_ms();
                    c.retry_store("kill", || store.kill(self.name, id, wid, now, &error))
                        .await;
                } else {
                    m::job_outcome(self.name, m::Outcome::Retry);
                    let delay = (self.backoff)(meta.attempt);
                    tracing::warn!(
                        error = %error,
                        max_attempts = meta.max_attempts,
                        retry_in_ms = delay.as_millis() as u64,
                        "job failed; will retry"
                    );
                    let run_at = c.now_ms() + delay.as_millis() as i64;
                    c.retry_store("retry", || store.retry(self.name, id, wid, run_at, &error))
                        .await;
                    // Our own idle fetch loop re-reads the next due time now,
                    // whatever the store's wake-up does.
                    c.queue.wake.queue(self.name);
                }
            }
        }
        self.forget(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_wait_sleeps_to_next_due_within_bounds() {
        let poll = Duration::from_secs(5);
        assert_eq!(idle_wait(None, 1000, poll), poll);
        assert_eq!(
            idle_wait(Some(1250), 1000, poll),
            Duration::from_millis(250)
        );
        assert_eq!(idle_wait(Some(900), 1000, poll), Duration::from_millis(2));
        assert_eq!(idle_wait(Some(1_000_000), 1000, poll), poll);
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let s = "é".repeat(MAX_ERROR_LEN);
        let t = truncate(s);
        assert!(t.len() <= MAX_ERROR_LEN + '…'.len_utf8());
        assert!(t.ends_with('…'));
    }
}
