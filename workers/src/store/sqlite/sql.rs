//! The SQL of the SQLite store, public only so that tests can check the
//! query plans of the real statements (`EXPLAIN QUERY PLAN`).
//!
//! Every statement is bounded: by a primary key, a `LIMIT`, or the length of
//! a bound id list. Batch statements pick rows by `rowid` in a sub-select, so
//! the sub-select reads only its (covering) partial index and the update
//! goes straight to the table row; a rowid is only used within the statement
//! that read it.

/// The queue tables. Idempotent; the application's migrations do not own
/// these tables.
///
/// Indexes are partial, one per state, so each job sits in exactly one of
/// them and a state change moves one index entry:
/// - `wq_jobs_due (queue, run_at_ms) WHERE state = 'ready'`: fetch, `next_due_ms`,
///   ready / scheduled counts;
/// - `wq_jobs_leased (queue, lease_until_ms) WHERE state = 'leased'`: lease reclaim,
///   running count;
/// - `wq_jobs_done` / `wq_jobs_dead (queue, finished_at_ms)`: purge, `list_dead`,
///   dead count.
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS wq_jobs (
    id             TEXT PRIMARY KEY NOT NULL,
    queue          TEXT NOT NULL,
    payload        TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('ready', 'leased', 'done', 'dead')),
    run_at_ms      INTEGER NOT NULL,
    attempt        INTEGER NOT NULL DEFAULT 0,
    max_attempts   INTEGER NOT NULL,
    lease_until_ms INTEGER,
    worker_id      TEXT,
    enqueued_at_ms INTEGER NOT NULL,
    finished_at_ms INTEGER,
    last_error     TEXT
);
CREATE INDEX IF NOT EXISTS wq_jobs_due    ON wq_jobs (queue, run_at_ms)      WHERE state = 'ready';
CREATE INDEX IF NOT EXISTS wq_jobs_leased ON wq_jobs (queue, lease_until_ms) WHERE state = 'leased';
CREATE INDEX IF NOT EXISTS wq_jobs_done   ON wq_jobs (queue, finished_at_ms) WHERE state = 'done';
CREATE INDEX IF NOT EXISTS wq_jobs_dead   ON wq_jobs (queue, finished_at_ms) WHERE state = 'dead';
CREATE TABLE IF NOT EXISTS wq_dedupe (
    queue         TEXT NOT NULL,
    key           TEXT NOT NULL,
    job_id        TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (queue, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS wq_dedupe_expiry ON wq_dedupe (queue, expires_at_ms);
CREATE TABLE IF NOT EXISTS wq_cron (
    schedule TEXT NOT NULL,
    tick_ms  INTEGER NOT NULL,
    PRIMARY KEY (schedule, tick_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wq_paused (
    queue    TEXT PRIMARY KEY NOT NULL,
    since_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wq_workers (
    worker_id  TEXT PRIMARY KEY NOT NULL,
    info       TEXT NOT NULL,
    seen_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS wq_workers_seen ON wq_workers (seen_at_ms);
CREATE TABLE IF NOT EXISTS wq_counts (
    queue     TEXT NOT NULL,
    bucket_ms INTEGER NOT NULL,
    ok        INTEGER NOT NULL,
    failed    INTEGER NOT NULL,
    PRIMARY KEY (queue, bucket_ms)
) WITHOUT ROWID;
"#;

pub const INSERT_JOB: &str = "INSERT INTO wq_jobs \
     (id, queue, payload, state, run_at_ms, attempt, max_attempts, enqueued_at_ms) \
     VALUES (?1, ?2, ?3, 'ready', ?4, 0, ?5, ?6)";

/// Takes the key if it is free or expired; returns the new holder only then.
pub const CLAIM_DEDUPE: &str = "INSERT INTO wq_dedupe (queue, key, job_id, expires_at_ms) \
     VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (queue, key) DO UPDATE \
       SET job_id = excluded.job_id, expires_at_ms = excluded.expires_at_ms \
       WHERE wq_dedupe.expires_at_ms <= ?5 \
     RETURNING job_id";

pub const DEDUPE_HOLDER: &str = "SELECT job_id FROM wq_dedupe WHERE queue = ?1 AND key = ?2";

/// Read-only: is anything due, and has any lease expired (only then does
/// `fetch` run [`RECLAIM`])?
pub const FETCH_PRECHECK: &str = "SELECT \
     EXISTS (SELECT 1 FROM wq_jobs WHERE queue = ?1 AND state = 'ready' AND run_at_ms <= ?2), \
     EXISTS (SELECT 1 FROM wq_jobs WHERE queue = ?1 AND state = 'leased' AND lease_until_ms <= ?2)";

pub const RECLAIM: &str = "UPDATE wq_jobs SET \
       state          = CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'ready' END, \
       finished_at_ms = CASE WHEN attempt >= max_attempts THEN ?2 ELSE NULL END, \
       last_error     = CASE WHEN attempt >= max_attempts THEN ?4 ELSE ?5 END, \
       worker_id      = NULL, \
       lease_until_ms = NULL \
     WHERE rowid IN ( \
       SELECT rowid FROM wq_jobs \
       WHERE queue = ?1 AND state = 'leased' AND lease_until_ms <= ?2 \
       ORDER BY lease_until_ms LIMIT ?3)";

pub const LEASE: &str = "UPDATE wq_jobs SET \
       state = 'leased', worker_id = ?1, lease_until_ms = ?2, attempt = attempt + 1 \
     WHERE rowid IN ( \
       SELECT rowid FROM wq_jobs \
       WHERE queue = ?3 AND state = 'ready' AND run_at_ms <= ?4 \
       ORDER BY run_at_ms LIMIT ?5) \
     RETURNING id, queue, payload, attempt, max_attempts, enqueued_at_ms, run_at_ms, lease_until_ms";

/// `+queue`, `+state`: look the ids up by primary key, never scan the
/// queue's leased jobs.
pub const RENEW: &str = "UPDATE wq_jobs SET lease_until_ms = ?1 \
     WHERE id IN (SELECT value FROM json_each(?4)) \
       AND +queue = ?2 AND +state = 'leased' AND worker_id = ?3 \
     RETURNING id";

pub const COMPLETE: &str = "UPDATE wq_jobs SET \
       state = 'done', finished_at_ms = ?1, lease_until_ms = NULL, last_error = NULL \
     WHERE id = ?2 AND queue = ?3 AND state = 'leased' AND worker_id = ?4";

/// Many `COMPLETE`s in one statement (group commit). `?1` is a JSON array of
/// `{"id", "q" (queue), "w" (worker id), "t" (now_ms)}`; returns the ids that
/// were still leased by their worker. `+` keeps the lookup on the primary key.
pub const COMPLETE_MANY: &str = "UPDATE wq_jobs SET \
       state = 'done', finished_at_ms = a.t, lease_until_ms = NULL, last_error = NULL \
     FROM (SELECT value ->> '$.id' AS id, value ->> '$.q' AS q, \
                  value ->> '$.w' AS w, value ->> '$.t' AS t \
           FROM json_each(?1)) AS a \
     WHERE wq_jobs.id = a.id AND +wq_jobs.queue = a.q AND +wq_jobs.state = 'leased' \
       AND wq_jobs.worker_id = a.w \
     RETURNING wq_jobs.id";

/// Also enforces the attempt limit: a retry of the final attempt dead-letters.
pub const RETRY: &str = "UPDATE wq_jobs SET \
       state          = CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'ready' END, \
       run_at_ms      = CASE WHEN attempt >= max_attempts THEN run_at_ms ELSE ?1 END, \
       finished_at_ms = CASE WHEN attempt >= max_attempts THEN ?2 ELSE NULL END, \
       last_error = ?3, worker_id = NULL, lease_until_ms = NULL \
     WHERE id = ?4 AND queue = ?5 AND state = 'leased' AND worker_id = ?6";

pub const KILL: &str = "UPDATE wq_jobs SET \
       state = 'dead', finished_at_ms = ?1, last_error = ?2, lease_until_ms = NULL \
     WHERE id = ?3 AND queue = ?4 AND state = 'leased' AND worker_id = ?5";

/// The released attempt does not count: the next fetch runs it with the
/// same attempt number.
pub const RELEASE: &str = "UPDATE wq_jobs SET \
       state = 'ready', attempt = MAX(attempt - 1, 0), worker_id = NULL, lease_until_ms = NULL \
     WHERE id IN (SELECT value FROM json_each(?3)) \
       AND +queue = ?1 AND +state = 'leased' AND worker_id = ?2";

pub const NEXT_DUE: &str =
    "SELECT MIN(run_at_ms) FROM wq_jobs WHERE queue = ?1 AND state = 'ready'";

pub const STATS: &str = "SELECT \
     (SELECT COUNT(*) FROM wq_jobs WHERE queue = ?1 AND state = 'ready' AND run_at_ms <= ?2), \
     (SELECT COUNT(*) FROM wq_jobs WHERE queue = ?1 AND state = 'ready' AND run_at_ms > ?2), \
     (SELECT COUNT(*) FROM wq_jobs WHERE queue = ?1 AND state = 'leased'), \
     (SELECT COUNT(*) FROM wq_jobs WHERE queue = ?1 AND state = 'dead')";

pub const LIST_DEAD: &str = "SELECT id, queue, payload, attempt, last_error, finished_at_ms \
     FROM wq_jobs WHERE queue = ?1 AND state = 'dead' \
     ORDER BY finished_at_ms DESC LIMIT ?2";

pub const REDRIVE: &str = "UPDATE wq_jobs SET \
       state = 'ready', attempt = 0, run_at_ms = ?1, finished_at_ms = NULL, \
       worker_id = NULL, lease_until_ms = NULL \
     WHERE id = ?2 AND queue = ?3 AND state = 'dead'";

pub const PURGE_DONE: &str = "DELETE FROM wq_jobs WHERE rowid IN ( \
       SELECT rowid FROM wq_jobs WHERE queue = ?1 AND state = 'done' AND finished_at_ms < ?2 \
       ORDER BY finished_at_ms LIMIT ?3)";

pub const PURGE_DEAD: &str = "DELETE FROM wq_jobs WHERE rowid IN ( \
       SELECT rowid FROM wq_jobs WHERE queue = ?1 AND state = 'dead' AND finished_at_ms < ?2 \
       ORDER BY finished_at_ms LIMIT ?3)";

pub const PURGE_DEDUPE: &str = "DELETE FROM wq_dedupe WHERE queue = ?1 AND key IN ( \
       SELECT key FROM wq_dedupe WHERE queue = ?1 AND expires_at_ms < ?2 \
       ORDER BY expires_at_ms LIMIT ?3)";

/// The oldest tick still kept when the schedule has `CRON_KEEP_TICKS` of them.
pub const CRON_OLDEST_KEPT: &str = "SELECT tick_ms FROM wq_cron WHERE schedule = ?1 \
     ORDER BY tick_ms DESC LIMIT 1 OFFSET ?2";

pub const CLAIM_TICK: &str = "INSERT OR IGNORE INTO wq_cron (schedule, tick_ms) VALUES (?1, ?2)";

pub const PRUNE_TICKS: &str = "DELETE FROM wq_cron WHERE schedule = ?1 AND tick_ms IN ( \
       SELECT tick_ms FROM wq_cron WHERE schedule = ?1 AND tick_ms < ( \
         SELECT tick_ms FROM wq_cron WHERE schedule = ?1 \
         ORDER BY tick_ms DESC LIMIT 1 OFFSET ?2) \
       ORDER BY tick_ms LIMIT ?3)";

pub const LAST_TICK: &str = "SELECT MAX(tick_ms) FROM wq_cron WHERE schedule = ?1";

pub const PAUSE: &str = "INSERT INTO wq_paused (queue, since_ms) VALUES (?1, ?2) \
     ON CONFLICT (queue) DO NOTHING";

pub const RESUME: &str = "DELETE FROM wq_paused WHERE queue = ?1";

pub const PAUSED: &str = "SELECT queue FROM wq_paused ORDER BY queue LIMIT ?1";

pub const DISCARD_DEAD: &str =
    "DELETE FROM wq_jobs WHERE id = ?1 AND queue = ?2 AND state = 'dead'";

pub const HEARTBEAT: &str = "INSERT INTO wq_workers (worker_id, info, seen_at_ms) VALUES (?1, ?2, ?3) \
     ON CONFLICT (worker_id) DO UPDATE SET info = excluded.info, seen_at_ms = excluded.seen_at_ms";

pub const FORGET_WORKERS: &str = "DELETE FROM wq_workers WHERE worker_id IN ( \
       SELECT worker_id FROM wq_workers WHERE seen_at_ms < ?1 ORDER BY seen_at_ms LIMIT 100)";

pub const WORKERS: &str = "SELECT worker_id, info, seen_at_ms FROM wq_workers \
     WHERE seen_at_ms >= ?1 ORDER BY seen_at_ms DESC LIMIT ?2";

pub const ADD_COUNTS: &str = "INSERT INTO wq_counts (queue, bucket_ms, ok, failed) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (queue, bucket_ms) DO UPDATE SET ok = ok + excluded.ok, failed = failed + excluded.failed";

pub const PRUNE_COUNTS: &str = "DELETE FROM wq_counts WHERE queue = ?1 AND bucket_ms IN ( \
       SELECT bucket_ms FROM wq_counts WHERE queue = ?1 AND bucket_ms < ?2 ORDER BY bucket_ms LIMIT 1000)";

pub const COUNTS: &str = "SELECT COALESCE(SUM(ok), 0), COALESCE(SUM(failed), 0) FROM wq_counts \
     WHERE queue = ?1 AND bucket_ms >= ?2 AND bucket_ms < ?3";
