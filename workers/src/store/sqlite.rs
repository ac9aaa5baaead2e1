//! SQLite store: the queue lives in tables prefixed `wq_` inside the
//! application's own SQLite file (embedded profile).
//!
//! # Durability and locking
//! - Open the pool with [`connect_options`]: WAL journal, `synchronous =
//!   NORMAL`, a 5 s busy timeout, foreign keys on. [`SqliteStore::setup`]
//!   refuses a database whose journal cannot be WAL or whose connection runs
//!   with `synchronous = OFF`.
//! - Every multi-statement write runs in a `BEGIN IMMEDIATE` transaction: the
//!   write lock is taken (waiting up to the busy timeout) before anything is
//!   read, so writers from several pools or processes queue up instead of
//!   failing with `SQLITE_BUSY` on a read-to-write lock upgrade.
//! - Within one process the store's writers first take an async write gate
//!   per database file, so they queue without SQLite's busy-handler sleeps;
//!   `complete` / `retry` / `kill` calls that arrive together are written in
//!   one transaction (group commit, see `acks`), each caller returning after
//!   that commit.
//! - Every statement is bounded: `fetch` reclaims at most
//!   [`SqliteStore::with_reclaim_batch`] expired leases and leases at most
//!   `limit` jobs, `purge` deletes at most `limit` rows, and so on. The hot
//!   queries run on partial indexes (one per job state), so a fetch costs
//!   O(batch · log n) however many jobs are queued.
//!
//! # Writing a job inside the application's transaction
//! [`push_in_tx`] inserts a job on the caller's open transaction (it never
//! issues `BEGIN`), so a request row and its job commit or roll back
//! together. Begin that transaction with `BEGIN IMMEDIATE`
//! (`pool.begin_with("BEGIN IMMEDIATE")`) so that it cannot fail with
//! `SQLITE_BUSY` when it turns from reading to writing. After the commit call
//! [`notify_pushed`] so that idle workers of this process start at once.
//!
//! # Wake-up
//! - Same process: pushes through [`SqliteStore::push`], `retry`, `release`
//!   and `redrive` wake idle workers of that queue at once through an in-process
//!   [`tokio::sync::Notify`] keyed by database file and queue (shared by all
//!   pools and stores of this process on that file). Jobs written with
//!   [`push_in_tx`] wake workers when the caller calls [`notify_pushed`].
//! - Other processes: SQLite has no notification channel, so
//!   [`Store::wait_for_push`] never waits longer than the poll interval
//!   (default [`DEFAULT_POLL_INTERVAL`], 100 ms, see
//!   [`SqliteStore::with_poll_interval`]). The caller then fetches; an idle
//!   fetch is one indexed read that takes no write lock. So a job pushed by
//!   another process starts within about one poll interval.
//!
//! # Dedupe keys
//! A key is scoped to its queue (`wq_dedupe` has the primary key `(queue,
//! key)`): the same key on two job types makes two jobs. It holds until
//! `now + dedupe_window` also after the job finished; an expired key is taken
//! over by the next push. `purge` deletes keys that expired before its
//! `before_ms`.
//!
//! # Cron ticks
//! `wq_cron` keeps the newest [`CRON_KEEP_TICKS`] claimed ticks per schedule;
//! older ones are pruned on each successful claim. A claim for a tick older
//! than everything kept answers false (such a tick was due long ago and was
//! handled or skipped then).
//!
//! # `stats` and `retry` without a `now`
//! The trait gives `stats` and `retry` no `now_ms`. The store remembers the
//! offset between the caller's clock and the system clock from the last call
//! that carried a `now_ms` (push, fetch, complete, kill, redrive) and uses
//! `system time + offset` there. With the system clock that is simply the
//! current time; with a manual clock it is the manual time as of that call.
use std::{
    collections::HashMap,
    path::Path,
    str::FromStr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicI64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use sqlx::{
    AssertSqlSafe, Connection, Row, SqliteConnection, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteRow, SqliteSynchronous},
};
use tokio::sync::Notify;

mod acks;
#[doc(hidden)]
pub mod sql;

use sql::*;

use super::{
    COUNT_KEEP_MS, DeadJob, LeasedJob, MAX_PAUSED, NewJob, Pushed, QueueStats, Store, StoreError,
    StoreResult, Throughput, WorkerBeat,
};

/// Longest wait in [`Store::wait_for_push`] before the caller polls again
/// (how fast a job pushed by another process is noticed).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Most expired leases one `fetch` reclaims.
pub const DEFAULT_RECLAIM_BATCH: usize = 500;
/// Claimed cron ticks kept per schedule.
pub const CRON_KEEP_TICKS: i64 = 100;
/// Busy timeout set by [`connect_options`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Jobs per multi-row `INSERT` in a batch push (6 parameters each).
const PUSH_CHUNK: usize = 500;
/// Error recorded on a job whose last lease expired.
pub const LEASE_EXPIRED_FINAL: &str = "lease expired after final attempt";
/// Error recorded on a job whose lease expired with attempts left.
pub const LEASE_EXPIRED: &str = "lease expired";

/// Connect options for the application's pool and the queue's: WAL,
/// `synchronous = NORMAL`, busy timeout 5 s, foreign keys on,
/// create-if-missing.
///
/// Accepts a file path (`data/approvald.db`) or a URL (`sqlite://data/approvald.db`,
/// `sqlite::memory:`).
///
/// # Panics
/// On a URL that sqlx cannot parse (an unknown query parameter, bad
/// percent-encoding). Use [`try_connect_options`] to get that as an error.
pub fn connect_options(path_or_url: &str) -> SqliteConnectOptions {
    match try_connect_options(path_or_url) {
        Ok(o) => o,
        Err(e) => panic!("{e}"),
    }
}

/// [`connect_options`] that reports a malformed URL as an error.
pub fn try_connect_options(path_or_url: &str) -> StoreResult<SqliteConnectOptions> {
    let base = if path_or_url.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(path_or_url)
            .map_err(|e| StoreError::Other(format!("sqlite url {path_or_url:?}: {e}")))?
    } else {
        SqliteConnectOptions::new().filename(path_or_url)
    };
    Ok(base
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true))
}

/// Create the `wq_` tables and indexes on `conn` (idempotent). Runs on the
/// caller's connection as is: inside the caller's transaction if one is open.
pub async fn setup_schema(conn: &mut SqliteConnection) -> StoreResult<()> {
    sqlx::raw_sql(SCHEMA).execute(&mut *conn).await?;
    Ok(())
}

/// Store one job on the caller's open connection or transaction (no nested
/// `BEGIN`), honouring its dedupe key. Call [`notify_pushed`] after the
/// commit to wake this process's idle workers at once.
pub async fn push_in_tx(
    conn: &mut SqliteConnection,
    job: &NewJob,
    now_ms: i64,
    dedupe_window_ms: i64,
) -> StoreResult<Pushed> {
    let mut out =
        push_many_in_tx(conn, std::slice::from_ref(job), now_ms, dedupe_window_ms).await?;
    Ok(out.remove(0))
}

/// [`push_in_tx`] for several jobs; result order matches input order, and
/// jobs due at the same instant are fetched in input order. Runs of jobs
/// without a dedupe key go in multi-row inserts.
pub async fn push_many_in_tx(
    conn: &mut SqliteConnection,
    jobs: &[NewJob],
    now_ms: i64,
    dedupe_window_ms: i64,
) -> StoreResult<Vec<Pushed>> {
    let mut out = Vec::with_capacity(jobs.len());
    let mut plain: Vec<(&NewJob, String)> = Vec::new();
    for job in jobs {
        let id = new_job_id();
        match &job.dedupe_key {
            None => {
                out.push(Pushed {
                    id: id.clone(),
                    deduplicated: false,
                });
                plain.push((job, id));
                if plain.len() == PUSH_CHUNK {
                    insert_plain(conn, &plain, now_ms).await?;
                    plain.clear();
                }
            }
            Some(key) => {
                // Keep insertion (and so fetch) order equal to input order.
                if !plain.is_empty() {
                    insert_plain(conn, &plain, now_ms).await?;
                    plain.clear();
                }
                let expires = now_ms.saturating_add(dedupe_window_ms);
                let won: Option<String> = sqlx::query_scalar(CLAIM_DEDUPE)
                    .bind(&job.queue)
                    .bind(key)
                    .bind(&id)
                    .bind(expires)
                    .bind(now_ms)
                    .fetch_optional(&mut *conn)
                    .await?;
                if won.as_deref() == Some(id.as_str()) {
                    insert_one(conn, job, &id, now_ms).await?;
                    out.push(Pushed {
                        id,
                        deduplicated: false,
                    });
                } else {
                    let holder: String = sqlx::query_scalar(DEDUPE_HOLDER)
                        .bind(&job.queue)
                        .bind(key)
                        .fetch_one(&mut *conn)
                        .await?;
                    out.push(Pushed {
                        id: holder,
                        deduplicated: true,
                    });
                }
            }
        }
    }
    if !plain.is_empty() {
        insert_plain(conn, &plain, now_ms).await?;
    }
    Ok(out)
}

/// Wake the idle workers of `queue` in this process that wait on the same
/// database file as `pool` (after committing a [`push_in_tx`]).
pub fn notify_pushed(pool: &SqlitePool, queue: &str) {
    wake(&db_key(pool), queue);
}

/// A new job's id (time-ordered).
pub fn new_job_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// `max_attempts` as stored (at least one attempt).
pub fn attempts_bound(max_attempts: u32) -> i64 {
    i64::from(max_attempts.max(1))
}

async fn insert_one(
    conn: &mut SqliteConnection,
    job: &NewJob,
    id: &str,
    now_ms: i64,
) -> StoreResult<()> {
    sqlx::query(INSERT_JOB)
        .bind(id)
        .bind(&job.queue)
        .bind(&job.payload)
        .bind(job.run_at_ms)
        .bind(attempts_bound(job.max_attempts))
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn insert_plain(
    conn: &mut SqliteConnection,
    jobs: &[(&NewJob, String)],
    now_ms: i64,
) -> StoreResult<()> {
    if let [(job, id)] = jobs {
        return insert_one(conn, job, id, now_ms).await;
    }
    let mut sql = String::from(
        "INSERT INTO wq_jobs (id, queue, payload, state, run_at_ms, attempt, max_attempts, enqueued_at_ms) VALUES ",
    );
    for i in 0..jobs.len() {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?, ?, ?, 'ready', ?, 0, ?, ?)");
    }
    // Only placeholders are generated; every value is bound.
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for (job, id) in jobs {
        q = q
            .bind(id.clone())
            .bind(job.queue.clone())
            .bind(job.payload.clone())
            .bind(job.run_at_ms)
            .bind(attempts_bound(job.max_attempts))
            .bind(now_ms);
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

fn clamp_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn ids_json(ids: &[String]) -> StoreResult<String> {
    serde_json::to_string(ids).map_err(|e| StoreError::Other(format!("encoding job ids: {e}")))
}

// ---- in-process wake-up ----------------------------------------------------

type Wakers = Mutex<HashMap<(String, String), Arc<Notify>>>;

fn wakers() -> &'static Wakers {
    static WAKERS: OnceLock<Wakers> = OnceLock::new();
    WAKERS.get_or_init(Default::default)
}

fn waker(db: &str, queue: &str) -> Arc<Notify> {
    let mut map = wakers().lock().unwrap_or_else(|p| p.into_inner());
    map.entry((db.to_owned(), queue.to_owned()))
        .or_default()
        .clone()
}

fn wake(db: &str, queue: &str) {
    let n = waker(db, queue);
    // Wake everyone waiting now, and leave one permit for a worker that is
    // between an empty fetch and its next wait.
    n.notify_waiters();
    n.notify_one();
}

/// One write gate per database file in this process.
///
/// SQLite admits one writer at a time, and a connection that finds the write
/// lock taken sleeps in SQLite's busy handler (1, 2, 5, 10... ms steps), which
/// wastes most of the time when several tasks of one process write at once.
/// The store's writers take this async mutex first, so within a process they
/// queue without sleeping; only writers of other processes (and the
/// application's own transactions) meet the busy handler.
fn write_gate(db: &str) -> Arc<tokio::sync::Mutex<()>> {
    type Gates = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;
    static GATES: OnceLock<Gates> = OnceLock::new();
    let mut map = GATES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry(db.to_owned()).or_default().clone()
}

/// Identity of the database file behind `pool`, shared by every pool of
/// this process on that file.
fn db_key(pool: &SqlitePool) -> String {
    let opts = pool.connect_options();
    let file: &Path = opts.get_filename();
    std::fs::canonicalize(file)
        .unwrap_or_else(|_| file.to_path_buf())
        .display()
        .to_string()
}

// ---- the store ---------------------------------------------------------------

/// The queue in SQLite tables `wq_*` of `pool`'s database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    db: Arc<str>,
    poll_interval: Duration,
    reclaim_batch: usize,
    /// Caller's clock minus the system clock, as of the last call with a `now_ms`.
    clock_offset_ms: Arc<AtomicI64>,
    /// Queue of the group-committing ack writer (see [`acks`]).
    acks: acks::AckWriter,
    /// This process's write gate for the file (see [`write_gate`]).
    gate: Arc<tokio::sync::Mutex<()>>,
}

impl SqliteStore {
    /// A store over `pool` (open it with [`connect_options`]). Call
    /// [`Store::setup`] before use.
    pub fn new(pool: SqlitePool) -> Self {
        let db: Arc<str> = db_key(&pool).into();
        let gate = write_gate(&db);
        Self {
            pool,
            db,
            poll_interval: DEFAULT_POLL_INTERVAL,
            reclaim_batch: DEFAULT_RECLAIM_BATCH,
            clock_offset_ms: Arc::new(AtomicI64::new(0)),
            acks: acks::AckWriter::new(gate.clone()),
            gate,
        }
    }

    /// Longest single wait in `wait_for_push` (cross-process pickup delay).
    pub fn with_poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every.max(Duration::from_millis(1));
        self
    }

    /// Most expired leases reclaimed per `fetch`.
    pub fn with_reclaim_batch(mut self, n: usize) -> Self {
        self.reclaim_batch = n.max(1);
        self
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Wake this process's idle workers of `queue` (after a committed
    /// [`push_in_tx`]).
    pub fn notify_pushed(&self, queue: &str) {
        wake(&self.db, queue);
    }

    fn observe(&self, now_ms: i64) {
        self.clock_offset_ms
            .store(now_ms - system_ms(), Ordering::Relaxed);
    }

    fn now_estimate(&self) -> i64 {
        system_ms() + self.clock_offset_ms.load(Ordering::Relaxed)
    }

    async fn check_pragmas(&self, conn: &mut SqliteConnection) -> StoreResult<()> {
        let mut mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await?;
        mode.make_ascii_lowercase();
        if mode == "memory" {
            // An in-memory database (tests): there is no journal to make durable.
            return Ok(());
        }
        if mode != "wal" {
            let now: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
                .fetch_one(&mut *conn)
                .await?;
            if !now.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Other(format!(
                    "sqlite journal_mode is {mode:?} and cannot be switched to WAL; open the pool with \
                     approvald_workers::store::sqlite::connect_options"
                )));
            }
        }
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await?;
        if sync == 0 {
            return Err(StoreError::Other(
                "sqlite synchronous=OFF can lose committed jobs; open the pool with \
                 approvald_workers::store::sqlite::connect_options (synchronous=NORMAL)"
                    .into(),
            ));
        }
        Ok(())
    }
}

fn leased_from_row(row: &SqliteRow) -> StoreResult<LeasedJob> {
    Ok(LeasedJob {
        id: row.try_get("id")?,
        queue: row.try_get("queue")?,
        payload: row.try_get("payload")?,
        attempt: to_u32(row.try_get("attempt")?),
        max_attempts: to_u32(row.try_get("max_attempts")?),
        enqueued_at_ms: row.try_get("enqueued_at_ms")?,
        run_at_ms: row.try_get("run_at_ms")?,
        lease_until_ms: row.try_get("lease_until_ms")?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn setup(&self) -> StoreResult<()> {
        let _gate = self.gate.lock().await;
        let mut conn = self.pool.acquire().await?;
        self.check_pragmas(&mut conn).await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        setup_schema(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn push(
        &self,
        jobs: &[NewJob],
        now_ms: i64,
        dedupe_window_ms: i64,
    ) -> StoreResult<Vec<Pushed>> {
        self.observe(now_ms);
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let _gate = self.gate.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let out = push_many_in_tx(&mut tx, jobs, now_ms, dedupe_window_ms).await?;
        tx.commit().await?;
        let mut queues: Vec<&str> = jobs.iter().map(|j| j.queue.as_str()).collect();
        queues.sort_unstable();
        queues.dedup();
        for q in queues {
            wake(&self.db, q);
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
        self.observe(now_ms);
        if limit == 0 {
            return Ok(Vec::new());
        }
        // An idle poll is one indexed read and takes no write lock; the
        // reclaim statement runs only when a lease has expired (a lease that
        // expires just after this read is reclaimed by the next fetch).
        let (due, expired): (bool, bool) = sqlx::query_as(FETCH_PRECHECK)
            .bind(queue)
            .bind(now_ms)
            .fetch_one(&self.pool)
            .await?;
        if !due && !expired {
            return Ok(Vec::new());
        }
        let _gate = self.gate.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let reclaimed = if expired {
            sqlx::query(RECLAIM)
                .bind(queue)
                .bind(now_ms)
                .bind(clamp_limit(self.reclaim_batch))
                .bind(LEASE_EXPIRED_FINAL)
                .bind(LEASE_EXPIRED)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        } else {
            0
        };
        let rows = sqlx::query(LEASE)
            .bind(worker_id)
            .bind(now_ms.saturating_add(lease_ms))
            .bind(queue)
            .bind(now_ms)
            .bind(clamp_limit(limit))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        if reclaimed > 0 {
            tracing::info!(queue, reclaimed, "reclaimed jobs whose lease expired");
        }
        let mut jobs = rows
            .iter()
            .map(leased_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        jobs.sort_by(|a, b| a.run_at_ms.cmp(&b.run_at_ms).then_with(|| a.id.cmp(&b.id)));
        Ok(jobs)
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
        let _gate = self.gate.lock().await;
        let held: Vec<String> = sqlx::query_scalar(RENEW)
            .bind(until_ms)
            .bind(queue)
            .bind(worker_id)
            .bind(ids_json(ids)?)
            .fetch_all(&self.pool)
            .await?;
        let held: std::collections::HashSet<&str> = held.iter().map(String::as_str).collect();
        Ok(ids
            .iter()
            .filter(|id| !held.contains(id.as_str()))
            .cloned()
            .collect())
    }

    async fn complete(
        &self,
        queue: &str,
        id: &str,
        worker_id: &str,
        now_ms: i64,
    ) -> StoreResult<()> {
        self.observe(now_ms);
        let ack = acks::Ack::Complete { now_ms };
        self.acks.apply(&self.pool, ack, queue, id, worker_id).await
    }

    async fn retry(
        &self,
        queue: &str,
        id: &str,
        worker_id: &str,
        run_at_ms: i64,
        error: &str,
    ) -> StoreResult<()> {
        let ack = acks::Ack::Retry {
            run_at_ms,
            now_ms: self.now_estimate(),
            error: error.to_owned(),
        };
        self.acks
            .apply(&self.pool, ack, queue, id, worker_id)
            .await?;
        // Idle workers re-read `next_due_ms`: the retry may be due soon.
        wake(&self.db, queue);
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
        self.observe(now_ms);
        let ack = acks::Ack::Kill {
            now_ms,
            error: error.to_owned(),
        };
        self.acks.apply(&self.pool, ack, queue, id, worker_id).await
    }

    async fn release(&self, queue: &str, ids: &[String], worker_id: &str) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let _gate = self.gate.lock().await;
        let n = sqlx::query(RELEASE)
            .bind(queue)
            .bind(worker_id)
            .bind(ids_json(ids)?)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n > 0 {
            wake(&self.db, queue);
        }
        Ok(())
    }

    async fn wait_for_push(&self, queue: &str, timeout_ms: u64) -> StoreResult<bool> {
        let n = waker(&self.db, queue);
        let wait = Duration::from_millis(timeout_ms).min(self.poll_interval);
        Ok(tokio::time::timeout(wait, n.notified()).await.is_ok())
    }

    async fn next_due_ms(&self, queue: &str) -> StoreResult<Option<i64>> {
        Ok(sqlx::query_scalar(NEXT_DUE)
            .bind(queue)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn stats(&self, queue: &str) -> StoreResult<QueueStats> {
        let (ready, scheduled, running, dead): (i64, i64, i64, i64) = sqlx::query_as(STATS)
            .bind(queue)
            .bind(self.now_estimate())
            .fetch_one(&self.pool)
            .await?;
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(QueueStats {
            ready: u(ready),
            scheduled: u(scheduled),
            running: u(running),
            dead: u(dead),
        })
    }

    async fn list_dead(&self, queue: &str, limit: usize) -> StoreResult<Vec<DeadJob>> {
        let rows = sqlx::query(LIST_DEAD)
            .bind(queue)
            .bind(clamp_limit(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(DeadJob {
                    id: r.try_get("id")?,
                    queue: r.try_get("queue")?,
                    payload: r.try_get("payload")?,
                    attempts: to_u32(r.try_get("attempt")?),
                    last_error: r
                        .try_get::<Option<String>, _>("last_error")?
                        .unwrap_or_default(),
                    died_at_ms: r
                        .try_get::<Option<i64>, _>("finished_at_ms")?
                        .unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn redrive(&self, queue: &str, id: &str, now_ms: i64) -> StoreResult<bool> {
        self.observe(now_ms);
        let _gate = self.gate.lock().await;
        let n = sqlx::query(REDRIVE)
            .bind(now_ms)
            .bind(id)
            .bind(queue)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n > 0 {
            wake(&self.db, queue);
        }
        Ok(n > 0)
    }

    async fn purge(
        &self,
        queue: &str,
        before_ms: i64,
        dead_before_ms: i64,
        limit: usize,
    ) -> StoreResult<u64> {
        let limit = clamp_limit(limit);
        let _gate = self.gate.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query(PURGE_DONE)
            .bind(queue)
            .bind(before_ms)
            .bind(limit)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let left = limit.saturating_sub(i64::try_from(done).unwrap_or(i64::MAX));
        let dead = if left > 0 {
            sqlx::query(PURGE_DEAD)
                .bind(queue)
                .bind(dead_before_ms)
                .bind(left)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        } else {
            0
        };
        // Keys that expired before `before_ms` (< now) are free already.
        sqlx::query(PURGE_DEDUPE)
            .bind(queue)
            .bind(before_ms)
            .bind(limit)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done + dead)
    }

    async fn claim_tick(&self, schedule: &str, tick_ms: i64) -> StoreResult<bool> {
        let _gate = self.gate.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let oldest_kept: Option<i64> = sqlx::query_scalar(CRON_OLDEST_KEPT)
            .bind(schedule)
            .bind(CRON_KEEP_TICKS - 1)
            .fetch_optional(&mut *tx)
            .await?;
        if oldest_kept.is_some_and(|oldest| tick_ms < oldest) {
            return Ok(false);
        }
        let won = sqlx::query(CLAIM_TICK)
            .bind(schedule)
            .bind(tick_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if won {
            sqlx::query(PRUNE_TICKS)
                .bind(schedule)
                .bind(CRON_KEEP_TICKS - 1)
                .bind(CRON_KEEP_TICKS)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(won)
    }

    async fn last_tick(&self, schedule: &str) -> StoreResult<Option<i64>> {
        Ok(sqlx::query_scalar(LAST_TICK)
            .bind(schedule)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> StoreResult<()> {
        let _gate = self.gate.lock().await;
        if paused {
            sqlx::query(PAUSE)
                .bind(queue)
                .bind(self.now_estimate())
                .execute(&self.pool)
                .await?;
        } else {
            sqlx::query(RESUME).bind(queue).execute(&self.pool).await?;
            wake(&self.db, queue);
        }
        Ok(())
    }

    async fn paused(&self) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(PAUSED)
            .bind(clamp_limit(MAX_PAUSED))
            .fetch_all(&self.pool)
            .await?)
    }

    async fn discard_dead(&self, queue: &str, id: &str) -> StoreResult<bool> {
        let _gate = self.gate.lock().await;
        let n = sqlx::query(DISCARD_DEAD)
            .bind(id)
            .bind(queue)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    async fn heartbeat(
        &self,
        worker_id: &str,
        info: &str,
        now_ms: i64,
        forget_before_ms: i64,
    ) -> StoreResult<()> {
        let _gate = self.gate.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(HEARTBEAT)
            .bind(worker_id)
            .bind(info)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query(FORGET_WORKERS)
            .bind(forget_before_ms)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn workers(&self, since_ms: i64, limit: usize) -> StoreResult<Vec<WorkerBeat>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(WORKERS)
            .bind(since_ms)
            .bind(clamp_limit(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(worker_id, info, seen_at_ms)| WorkerBeat {
                worker_id,
                info,
                seen_at_ms,
            })
            .collect())
    }

    async fn add_counts(&self, queue: &str, bucket_ms: i64, counts: Throughput) -> StoreResult<()> {
        let _gate = self.gate.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(ADD_COUNTS)
            .bind(queue)
            .bind(bucket_ms)
            .bind(i64::try_from(counts.ok).unwrap_or(i64::MAX))
            .bind(i64::try_from(counts.failed).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
        sqlx::query(PRUNE_COUNTS)
            .bind(queue)
            .bind(bucket_ms - COUNT_KEEP_MS)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn counts(&self, queue: &str, from_ms: i64, to_ms: i64) -> StoreResult<Throughput> {
        let from_ms = from_ms.max(to_ms - COUNT_KEEP_MS);
        let (ok, failed): (i64, i64) = sqlx::query_as(COUNTS)
            .bind(queue)
            .bind(from_ms)
            .bind(to_ms)
            .fetch_one(&self.pool)
            .await?;
        Ok(Throughput {
            ok: u64::try_from(ok).unwrap_or(0),
            failed: u64::try_from(failed).unwrap_or(0),
        })
    }
}
