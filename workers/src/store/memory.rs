//! An in-process [`Store`] kept in a mutex: for unit tests of the runtime and
//! for examples. It keeps the same rules as the real stores (leases, attempt
//! counting on fetch, durable dedupe, bounded calls) but nothing survives the
//! process, so it is never a production backend.
use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
    time::Duration,
};

use async_trait::async_trait;
use tokio::sync::watch;

use super::{
    COUNT_KEEP_MS, DeadJob, LeasedJob, MAX_PAUSED, NewJob, Pushed, QueueStats, Store, StoreError,
    StoreResult, Throughput, WorkerBeat,
};

#[derive(Debug, Clone)]
enum State {
    Queued,
    Leased { worker: String, until_ms: i64 },
    Finished { at_ms: i64 },
    Dead { at_ms: i64 },
}

#[derive(Debug, Clone)]
struct MemJob {
    id: String,
    queue: String,
    payload: String,
    run_at_ms: i64,
    enqueued_at_ms: i64,
    attempts: u32,
    max_attempts: u32,
    state: State,
    last_error: String,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<String, MemJob>,
    /// (queue, key) -> (job id, expires_ms)
    dedupe: HashMap<(String, String), (String, i64)>,
    ticks: HashMap<String, BTreeSet<i64>>,
    paused: BTreeSet<String>,
    /// worker id -> (info, seen_ms)
    workers: HashMap<String, (String, i64)>,
    /// (queue, bucket_ms) -> counts
    counts: std::collections::BTreeMap<(String, i64), Throughput>,
    seq: u64,
    /// When set, every call fails (tests of supervision).
    down: bool,
}

/// See the module docs.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    pushed: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            pushed: Mutex::new(HashMap::new()),
        }
    }

    /// Make every call fail (true) or work again (false), to simulate an
    /// unreachable server.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn guard(&self) -> StoreResult<std::sync::MutexGuard<'_, Inner>> {
        let g = self.lock();
        if g.down {
            return Err(StoreError::Other("memory store is down".into()));
        }
        Ok(g)
    }

    fn sender(&self, queue: &str) -> watch::Sender<u64> {
        let mut map = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(queue.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    fn wall_ms() -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

fn leased(job: &mut MemJob, worker: &str, now_ms: i64, lease_ms: i64) -> LeasedJob {
    job.attempts += 1;
    let until = now_ms + lease_ms;
    job.state = State::Leased {
        worker: worker.to_string(),
        until_ms: until,
    };
    LeasedJob {
        id: job.id.clone(),
        queue: job.queue.clone(),
        payload: job.payload.clone(),
        attempt: job.attempts,
        max_attempts: job.max_attempts,
        enqueued_at_ms: job.enqueued_at_ms,
        run_at_ms: job.run_at_ms,
        lease_until_ms: until,
    }
}

fn holds(job: &MemJob, worker: &str) -> bool {
    matches!(&job.state, State::Leased { worker: w, .. } if w == worker)
}

#[async_trait]
impl Store for MemoryStore {
    async fn setup(&self) -> StoreResult<()> {
        self.guard().map(|_| ())
    }

    async fn push(
        &self,
        jobs: &[NewJob],
        now_ms: i64,
        dedupe_window_ms: i64,
    ) -> StoreResult<Vec<Pushed>> {
        let mut out = Vec::with_capacity(jobs.len());
        let mut queues = BTreeSet::new();
        {
            let mut g = self.guard()?;
            for job in jobs {
                if let Some(key) = &job.dedupe_key {
                    let k = (job.queue.clone(), key.clone());
                    if let Some((id, exp)) = g.dedupe.get(&k)
                        && *exp > now_ms
                    {
                        out.push(Pushed {
                            id: id.clone(),
                            deduplicated: true,
                        });
                        continue;
                    }
                }
                g.seq += 1;
                let id = format!("m{:012}", g.seq);
                if let Some(key) = &job.dedupe_key {
                    g.dedupe.insert(
                        (job.queue.clone(), key.clone()),
                        (id.clone(), now_ms + dedupe_window_ms),
                    );
                }
                g.jobs.insert(
                    id.clone(),
                    MemJob {
                        id: id.clone(),
                        queue: job.queue.clone(),
                        payload: job.payload.clone(),
                        run_at_ms: job.run_at_ms,
                        enqueued_at_ms: now_ms,
                        attempts: 0,
                        max_attempts: job.max_attempts,
                        state: State::Queued,
                        last_error: String::new(),
                    },
                );
                queues.insert(job.queue.clone());
                out.push(Pushed {
                    id,
                    deduplicated: false,
                });
            }
        }
        for q in queues {
            self.sender(&q).send_modify(|n| *n += 1);
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
        let mut g = self.guard()?;
        // An expired lease on the last attempt dead-letters the job, as the
        // real stores do.
        for j in g.jobs.values_mut().filter(|j| j.queue == queue) {
            if matches!(j.state, State::Leased { until_ms, .. } if until_ms <= now_ms)
                && j.attempts >= j.max_attempts
            {
                j.state = State::Dead { at_ms: now_ms };
                j.last_error = "lease expired after final attempt".into();
            }
        }
        let mut due: Vec<(i64, String)> = g
            .jobs
            .values()
            .filter(|j| j.queue == queue)
            .filter(|j| match &j.state {
                State::Queued => j.run_at_ms <= now_ms,
                State::Leased { until_ms, .. } => *until_ms <= now_ms,
                _ => false,
            })
            .map(|j| (j.run_at_ms, j.id.clone()))
            .collect();
        due.sort();
        due.truncate(limit);
        Ok(due
            .into_iter()
            .filter_map(|(_, id)| {
                g.jobs
                    .get_mut(&id)
                    .map(|j| leased(j, worker_id, now_ms, lease_ms))
            })
            .collect())
    }

    async fn renew(
        &self,
        _queue: &str,
        ids: &[String],
        worker_id: &str,
        until_ms: i64,
    ) -> StoreResult<Vec<String>> {
        let mut g = self.guard()?;
        let mut lost = Vec::new();
        for id in ids {
            match g.jobs.get_mut(id) {
                Some(j) if holds(j, worker_id) => {
                    j.state = State::Leased {
                        worker: worker_id.to_string(),
                        until_ms,
                    }
                }
                _ => lost.push(id.clone()),
            }
        }
        Ok(lost)
    }

    async fn complete(
        &self,
        _queue: &str,
        id: &str,
        worker_id: &str,
        now_ms: i64,
    ) -> StoreResult<()> {
        let mut g = self.guard()?;
        if let Some(j) = g.jobs.get_mut(id)
            && holds(j, worker_id)
        {
            j.state = State::Finished { at_ms: now_ms };
        }
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
        {
            let mut g = self.guard()?;
            if let Some(j) = g.jobs.get_mut(id)
                && holds(j, worker_id)
            {
                j.state = State::Queued;
                j.run_at_ms = run_at_ms;
                j.last_error = error.to_string();
            }
        }
        self.sender(queue).send_modify(|n| *n += 1);
        Ok(())
    }

    async fn kill(
        &self,
        _queue: &str,
        id: &str,
        worker_id: &str,
        now_ms: i64,
        error: &str,
    ) -> StoreResult<()> {
        let mut g = self.guard()?;
        if let Some(j) = g.jobs.get_mut(id)
            && holds(j, worker_id)
        {
            j.state = State::Dead { at_ms: now_ms };
            j.last_error = error.to_string();
        }
        Ok(())
    }

    async fn release(&self, queue: &str, ids: &[String], worker_id: &str) -> StoreResult<()> {
        {
            let mut g = self.guard()?;
            for id in ids {
                if let Some(j) = g.jobs.get_mut(id)
                    && holds(j, worker_id)
                {
                    j.state = State::Queued;
                    j.attempts = j.attempts.saturating_sub(1);
                }
            }
        }
        self.sender(queue).send_modify(|n| *n += 1);
        Ok(())
    }

    async fn wait_for_push(&self, queue: &str, timeout_ms: u64) -> StoreResult<bool> {
        drop(self.guard()?);
        let mut rx = self.sender(queue).subscribe();
        rx.mark_unchanged();
        Ok(matches!(
            tokio::time::timeout(Duration::from_millis(timeout_ms), rx.changed()).await,
            Ok(Ok(()))
        ))
    }

    async fn next_due_ms(&self, queue: &str) -> StoreResult<Option<i64>> {
        let g = self.guard()?;
        Ok(g.jobs
            .values()
            .filter(|j| j.queue == queue)
            .filter_map(|j| match &j.state {
                State::Queued => Some(j.run_at_ms),
                State::Leased { until_ms, .. } => Some(*until_ms),
                _ => None,
            })
            .min())
    }

    async fn stats(&self, queue: &str) -> StoreResult<QueueStats> {
        let g = self.guard()?;
        let now = Self::wall_ms();
        let mut s = QueueStats::default();
        for j in g.jobs.values().filter(|j| j.queue == queue) {
            match &j.state {
                State::Queued if j.run_at_ms <= now => s.ready += 1,
                State::Queued => s.scheduled += 1,
                State::Leased { .. } => s.running += 1,
                State::Dead { .. } => s.dead += 1,
                State::Finished { .. } => {}
            }
        }
        Ok(s)
    }

    async fn list_dead(&self, queue: &str, limit: usize) -> StoreResult<Vec<DeadJob>> {
        let g = self.guard()?;
        let mut out: Vec<DeadJob> = g
            .jobs
            .values()
            .filter(|j| j.queue == queue)
            .filter_map(|j| match j.state {
                State::Dead { at_ms } => Some(DeadJob {
                    id: j.id.clone(),
                    queue: j.queue.clone(),
                    payload: j.payload.clone(),
                    attempts: j.attempts,
                    last_error: j.last_error.clone(),
                    died_at_ms: at_ms,
                }),
                _ => None,
            })
            .collect();
        out.sort_by_key(|d| std::cmp::Reverse(d.died_at_ms));
        out.truncate(limit);
        Ok(out)
    }

    async fn redrive(&self, queue: &str, id: &str, now_ms: i64) -> StoreResult<bool> {
        let done = {
            let mut g = self.guard()?;
            match g.jobs.get_mut(id) {
                Some(j) if j.queue == queue && matches!(j.state, State::Dead { .. }) => {
                    j.state = State::Queued;
                    j.attempts = 0;
                    j.run_at_ms = now_ms;
                    true
                }
                _ => false,
            }
        };
        if done {
            self.sender(queue).send_modify(|n| *n += 1);
        }
        Ok(done)
    }

    async fn purge(
        &self,
        queue: &str,
        before_ms: i64,
        dead_before_ms: i64,
        limit: usize,
    ) -> StoreResult<u64> {
        let mut g = self.guard()?;
        let gone: Vec<String> = g
            .jobs
            .values()
            .filter(|j| j.queue == queue)
            .filter(|j| match j.state {
                State::Finished { at_ms } => at_ms < before_ms,
                State::Dead { at_ms } => at_ms < dead_before_ms,
                _ => false,
            })
            .map(|j| j.id.clone())
            .take(limit)
            .collect();
        for id in &gone {
            g.jobs.remove(id);
        }
        Ok(gone.len() as u64)
    }

    async fn claim_tick(&self, schedule: &str, tick_ms: i64) -> StoreResult<bool> {
        let mut g = self.guard()?;
        Ok(g.ticks
            .entry(schedule.to_string())
            .or_default()
            .insert(tick_ms))
    }

    async fn last_tick(&self, schedule: &str) -> StoreResult<Option<i64>> {
        let g = self.guard()?;
        Ok(g.ticks.get(schedule).and_then(|t| t.last().copied()))
    }

    async fn ping(&self) -> StoreResult<()> {
        self.guard().map(|_| ())
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> StoreResult<()> {
        let mut g = self.guard()?;
        if paused {
            g.paused.insert(queue.to_string());
        } else {
            g.paused.remove(queue);
            drop(g);
            self.sender(queue).send_modify(|n| *n += 1);
        }
        Ok(())
    }

    async fn paused(&self) -> StoreResult<Vec<String>> {
        let g = self.guard()?;
        Ok(g.paused.iter().take(MAX_PAUSED).cloned().collect())
    }

    async fn discard_dead(&self, queue: &str, id: &str) -> StoreResult<bool> {
        let mut g = self.guard()?;
        let dead = matches!(g.jobs.get(id), Some(j) if j.queue == queue && matches!(j.state, State::Dead { .. }));
        if dead {
            g.jobs.remove(id);
        }
        Ok(dead)
    }

    async fn heartbeat(
        &self,
        worker_id: &str,
        info: &str,
        now_ms: i64,
        forget_before_ms: i64,
    ) -> StoreResult<()> {
        let mut g = self.guard()?;
        g.workers
            .insert(worker_id.to_string(), (info.to_string(), now_ms));
        g.workers.retain(|_, (_, seen)| *seen >= forget_before_ms);
        Ok(())
    }

    async fn workers(&self, since_ms: i64, limit: usize) -> StoreResult<Vec<WorkerBeat>> {
        let g = self.guard()?;
        let mut out: Vec<WorkerBeat> = g
            .workers
            .iter()
            .filter(|(_, (_, seen))| *seen >= since_ms)
            .map(|(id, (info, seen))| WorkerBeat {
                worker_id: id.clone(),
                info: info.clone(),
                seen_at_ms: *seen,
            })
            .collect();
        out.sort_by_key(|w| std::cmp::Reverse(w.seen_at_ms));
        out.truncate(limit);
        Ok(out)
    }

    async fn add_counts(&self, queue: &str, bucket_ms: i64, counts: Throughput) -> StoreResult<()> {
        let mut g = self.guard()?;
        let e = g.counts.entry((queue.to_string(), bucket_ms)).or_default();
        e.ok += counts.ok;
        e.failed += counts.failed;
        g.counts
            .retain(|(q, b), _| q != queue || *b >= bucket_ms - COUNT_KEEP_MS);
        Ok(())
    }

    async fn counts(&self, queue: &str, from_ms: i64, to_ms: i64) -> StoreResult<Throughput> {
        let g = self.guard()?;
        let from_ms = from_ms.max(to_ms - COUNT_KEEP_MS);
        Ok(g.counts
            .range((queue.to_string(), from_ms)..(queue.to_string(), to_ms))
            .fold(Throughput::default(), |t, (_, c)| Throughput {
                ok: t.ok + c.ok,
                failed: t.failed + c.failed,
            }))
    }
}
