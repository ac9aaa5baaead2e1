//! Contract tests of the SQLite store against a real SQLite file (one temp
//! directory per test).
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::Duration,
};

use approvald_workers::store::{
    NewJob, Store,
    sqlite::{self, SqliteStore},
};
use sqlx::{Connection, SqlitePool, sqlite::SqlitePoolOptions};

const T0: i64 = 1_800_000_000_000;
const WINDOW: i64 = 24 * 3600 * 1000;

/// A temp directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("wq-sqlite-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
    fn db(&self) -> String {
        self.0.join("queue.db").display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn pool(path: &str, max: u32) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(max)
        .connect_with(sqlite::connect_options(path))
        .await
        .expect("open sqlite pool")
}

/// A fresh database file with the schema, and a store on it.
async fn fresh() -> (TempDir, SqliteStore) {
    let dir = TempDir::new();
    let store = SqliteStore::new(pool(&dir.db(), 4).await);
    store.setup().await.expect("setup");
    (dir, store)
}

fn job(queue: &str, payload: &str, run_at_ms: i64) -> NewJob {
    NewJob {
        queue: queue.into(),
        payload: payload.into(),
        run_at_ms,
        dedupe_key: None,
        max_attempts: 3,
    }
}

fn keyed(queue: &str, key: &str) -> NewJob {
    NewJob {
        dedupe_key: Some(key.into()),
        ..job(queue, "{}", T0)
    }
}

async fn push_one(store: &SqliteStore, j: NewJob, now: i64) -> String {
    store
        .push(&[j], now, WINDOW)
        .await
        .expect("push")
        .remove(0)
        .id
}

async fn state_of(store: &SqliteStore, id: &str) -> (String, i64, Option<String>) {
    sqlx::query_as("SELECT state, attempt, last_error FROM wq_jobs WHERE id = ?1")
        .bind(id)
        .fetch_one(store.pool())
        .await
        .expect("job row")
}

async fn count_jobs(store: &SqliteStore) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM wq_jobs")
        .fetch_one(store.pool())
        .await
        .expect("count")
}

#[tokio::test]
async fn pooled_connections_run_wal_with_synchronous_normal() {
    let (_dir, store) = fresh().await;
    // Hold every connection of the pool at once so each one is checked.
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(store.pool().acquire().await.expect("acquire"));
    }
    for conn in &mut conns {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 1, "synchronous must be NORMAL (1), never OFF (0)");
        assert_eq!(busy, 5000);
        assert_eq!(fk, 1);
    }
}

#[tokio::test]
async fn setup_refuses_synchronous_off() {
    let dir = TempDir::new();
    let opts = sqlite::connect_options(&dir.db()).synchronous(sqlx::sqlite::SqliteSynchronous::Off);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap();
    let err = SqliteStore::new(pool)
        .setup()
        .await
        .expect_err("synchronous=OFF must be refused");
    assert!(err.to_string().contains("synchronous=OFF"), "{err}");
}

#[tokio::test]
async fn setup_is_idempotent_and_creates_the_wq_tables() {
    let (dir, store) = fresh().await;
    store.setup().await.expect("second setup");
    let other = SqliteStore::new(pool(&dir.db(), 2).await);
    other.setup().await.expect("setup from a second pool");
    let mut tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'wq\\_%' ESCAPE '\\' ORDER BY name",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    tables.sort();
    assert_eq!(
        tables,
        [
            "wq_counts",
            "wq_cron",
            "wq_dedupe",
            "wq_jobs",
            "wq_paused",
            "wq_workers"
        ]
    );
    store.ping().await.expect("ping");
}

/// The query plan of `stmt`, one line per step.
async fn plan(pool: &SqlitePool, stmt: &str) -> Vec<String> {
    let rows: Vec<(i64, i64, i64, String)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {stmt}")))
            .fetch_all(pool)
            .await
            .unwrap_or_else(|e| panic!("explain {stmt}: {e}"));
    rows.into_iter().map(|r| r.3).collect()
}

#[tokio::test]
async fn every_statement_is_served_by_an_index() {
    use sqlite::sql::*;
    let (_dir, store) = fresh().await;
    let all = [
        ("CLAIM_DEDUPE", CLAIM_DEDUPE),
        ("DEDUPE_HOLDER", DEDUPE_HOLDER),
        ("FETCH_PRECHECK", FETCH_PRECHECK),
        ("RECLAIM", RECLAIM),
        ("LEASE", LEASE),
        ("RENEW", RENEW),
        ("COMPLETE", COMPLETE),
        ("COMPLETE_MANY", COMPLETE_MANY),
        ("RETRY", RETRY),
        ("KILL", KILL),
        ("RELEASE", RELEASE),
        ("NEXT_DUE", NEXT_DUE),
        ("STATS", STATS),
        ("LIST_DEAD", LIST_DEAD),
        ("REDRIVE", REDRIVE),
        ("PURGE_DONE", PURGE_DONE),
        ("PURGE_DEAD", PURGE_DEAD),
        ("PURGE_DEDUPE", PURGE_DEDUPE),
        ("CRON_OLDEST_KEPT", CRON_OLDEST_KEPT),
        ("PRUNE_TICKS", PRUNE_TICKS),
        ("LAST_TICK", LAST_TICK),
    ];
    let mut plans = HashMap::new();
    for (name, stmt) in all {
        let p = plan(store.pool(), stmt).await;
        for step in &p {
            // A full scan of a queue table, or a sort, would make the
            // statement cost grow with the table instead of the batch.
            assert!(!step.starts_with("SCAN wq_"), "{name} scans a table: {p:?}");
            assert!(!step.contains("TEMP B-TREE"), "{name} sorts: {p:?}");
        }
        plans.insert(name, p.join(" | "));
    }
    let uses = |name: &str, index: &str| {
        assert!(
            plans[name].contains(index),
            "{name} should use {index}: {}",
            plans[name]
        );
    };
    uses("LEASE", "wq_jobs_due");
    uses("RECLAIM", "wq_jobs_leased");
    uses("FETCH_PRECHECK", "wq_jobs_due");
    uses("FETCH_PRECHECK", "wq_jobs_leased");
    uses("NEXT_DUE", "wq_jobs_due");
    uses("LIST_DEAD", "wq_jobs_dead");
    uses("PURGE_DONE", "wq_jobs_done");
    uses("PURGE_DEAD", "wq_jobs_dead");
    uses("PURGE_DEDUPE", "wq_dedupe_expiry");
    // Acks and lease renewals find their jobs by primary key.
    for name in [
        "RENEW",
        "RELEASE",
        "COMPLETE",
        "COMPLETE_MANY",
        "RETRY",
        "KILL",
        "REDRIVE",
    ] {
        uses(name, "sqlite_autoindex_wq_jobs_1 (id=?)");
    }
}

#[tokio::test]
async fn push_then_fetch_leases_due_jobs_in_run_at_order() {
    let (_dir, store) = fresh().await;
    let late = push_one(&store, job("q", "\"late\"", T0 - 10), T0).await;
    let early = push_one(&store, job("q", "\"early\"", T0 - 20), T0).await;
    let _other = push_one(&store, job("other", "{}", T0), T0).await;
    let stats = store.stats("q").await.unwrap();
    assert_eq!(
        (stats.ready, stats.scheduled, stats.running, stats.dead),
        (2, 0, 0, 0)
    );

    let got = store.fetch("q", "w1", 10, T0, 30_000).await.unwrap();
    let ids: Vec<&str> = got.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, [early.as_str(), late.as_str()]);
    let first = &got[0];
    assert_eq!(first.queue, "q");
    assert_eq!(first.payload, "\"early\"");
    assert_eq!(first.attempt, 1);
    assert_eq!(first.max_attempts, 3);
    assert_eq!(first.enqueued_at_ms, T0);
    assert_eq!(first.run_at_ms, T0 - 20);
    assert_eq!(first.lease_until_ms, T0 + 30_000);

    let stats = store.stats("q").await.unwrap();
    assert_eq!((stats.ready, stats.running), (0, 2));
    assert!(
        store
            .fetch("q", "w2", 10, T0, 30_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .fetch("other", "w2", 10, T0, 30_000)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn fetch_honours_the_limit_and_zero() {
    let (_dir, store) = fresh().await;
    let jobs: Vec<NewJob> = (0..5).map(|i| job("q", "{}", T0 - i)).collect();
    store.push(&jobs, T0, WINDOW).await.unwrap();
    assert!(store.fetch("q", "w", 0, T0, 1000).await.unwrap().is_empty());
    assert_eq!(store.fetch("q", "w", 3, T0, 1000).await.unwrap().len(), 3);
    assert_eq!(store.fetch("q", "w", 3, T0, 1000).await.unwrap().len(), 2);
}

#[tokio::test]
async fn delayed_job_waits_for_its_run_at_with_millisecond_precision() {
    let (_dir, store) = fresh().await;
    let now = chrono::Utc::now().timestamp_millis();
    let run_at = now + 3_600_000 + 7;
    let id = push_one(&store, job("q", "{}", run_at), now).await;
    let stats = store.stats("q").await.unwrap();
    assert_eq!((stats.ready, stats.scheduled), (0, 1));
    assert_eq!(store.next_due_ms("q").await.unwrap(), Some(run_at));
    assert_eq!(store.next_due_ms("empty").await.unwrap(), None);
    assert!(
        store
            .fetch("q", "w", 10, run_at - 1, 1000)
            .await
            .unwrap()
            .is_empty()
    );
    let got = store.fetch("q", "w", 10, run_at, 1000).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, id);
}

#[tokio::test]
async fn expired_lease_is_reclaimed_with_attempt_plus_one() {
    let (_dir, store) = fresh().await;
    let id = push_one(&store, job("q", "{}", T0), T0).await;
    let a = store
        .fetch("q", "dead-process", 10, T0, 2_000)
        .await
        .unwrap();
    assert_eq!(a[0].attempt, 1);
    // Still leased before expiry.
    assert!(
        store
            .fetch("q", "w2", 10, T0 + 1_999, 2_000)
            .await
            .unwrap()
            .is_empty()
    );
    let b = store.fetch("q", "w2", 10, T0 + 2_000, 2_000).await.unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].id, id);
    assert_eq!(b[0].attempt, 2);
    assert_eq!(b[0].lease_until_ms, T0 + 4_000);
    // The old holder can no longer ack it.
    store
        .complete("q", &id, "dead-process", T0 + 2_001)
        .await
        .unwrap();
    assert_eq!(state_of(&store, &id).await.0, "leased");
    store.complete("q", &id, "w2", T0 + 2_002).await.unwrap();
    assert_eq!(state_of(&store, &id).await.0, "done");
}

#[tokio::test]
async fn expired_lease_on_the_final_attempt_dead_letters() {
    let (_dir, store) = fresh().await;
    let id = push_one(
        &store,
        NewJob {
            max_attempts: 2,
            ..job("q", "{}", T0)
        },
        T0,
    )
    .await;
    let mut now = T0;
    for attempt in 1..=2 {
        let got = store.fetch("q", "w", 1, now, 1_000).await.unwrap();
        assert_eq!(got[0].attempt, attempt);
        now += 1_000;
    }
    assert!(
        store
            .fetch("q", "w", 1, now, 1_000)
            .await
            .unwrap()
            .is_empty()
    );
    let (state, attempt, err) = state_of(&store, &id).await;
    assert_eq!((state.as_str(), attempt), ("dead", 2));
    assert_eq!(err.as_deref(), Some("lease expired after final attempt"));
    let dead = store.list_dead("q", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].died_at_ms, now);
    assert_eq!(dead[0].last_error, "lease expired after final attempt");
}

#[tokio::test]
async fn lease_reclaim_is_bounded_per_fetch() {
    let dir = TempDir::new();
    let store = SqliteStore::new(pool(&dir.db(), 2).await).with_reclaim_batch(10);
    store.setup().await.unwrap();
    let jobs: Vec<NewJob> = (0..25)
        .map(|_| NewJob {
            max_attempts: 1,
            ..job("q", "{}", T0)
        })
        .collect();
    store.push(&jobs, T0, WINDOW).await.unwrap();
    assert_eq!(
        store.fetch("q", "w", 100, T0, 1_000).await.unwrap().len(),
        25
    );
    // All 25 leases are expired and on their final attempt: each fetch moves at most 10.
    for expected_dead in [10, 20, 25] {
        assert!(
            store
                .fetch("q", "w", 100, T0 + 5_000, 1_000)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.stats("q").await.unwrap().dead, expected_dead);
    }
}

#[tokio::test]
async fn dedupe_key_holds_within_the_window_also_after_the_job_finished() {
    let (_dir, store) = fresh().await;
    // Three pushes with one key, one of them in the same batch as the first.
    let first = store
        .push(&[keyed("q", "k"), keyed("q", "k")], T0, WINDOW)
        .await
        .unwrap();
    assert!(!first[0].deduplicated);
    assert!(first[1].deduplicated);
    assert_eq!(first[1].id, first[0].id);
    let third = store
        .push(&[keyed("q", "k")], T0 + 1, WINDOW)
        .await
        .unwrap()
        .remove(0);
    assert!(third.deduplicated);
    assert_eq!(third.id, first[0].id);
    assert_eq!(count_jobs(&store).await, 1);

    // Finish the job: the key still holds.
    let got = store.fetch("q", "w", 10, T0 + 2, 1_000).await.unwrap();
    store.complete("q", &got[0].id, "w", T0 + 3).await.unwrap();
    let again = store
        .push(&[keyed("q", "k")], T0 + WINDOW - 1, WINDOW)
        .await
        .unwrap()
        .remove(0);
    assert!(again.deduplicated);
    assert_eq!(again.id, first[0].id);

    // Purging the finished job does not free the key either.
    assert_eq!(store.purge("q", T0 + 10, T0, 10).await.unwrap(), 1);
    let after_purge = store
        .push(&[keyed("q", "k")], T0 + WINDOW - 1, WINDOW)
        .await
        .unwrap()
        .remove(0);
    assert!(after_purge.deduplicated);
    assert_eq!(after_purge.id, first[0].id);

    // The same key on another queue is another job.
    let other = store
        .push(&[keyed("other", "k")], T0 + 4, WINDOW)
        .await
        .unwrap()
        .remove(0);
    assert!(!other.deduplicated);
    // The purged job is gone, only the other queue's job is stored.
    assert_eq!(count_jobs(&store).await, 1);
}

#[tokio::test]
async fn expired_dedupe_key_is_replaced_by_the_next_push() {
    let (_dir, store) = fresh().await;
    let a = store
        .push(&[keyed("q", "k")], T0, 1_000)
        .await
        .unwrap()
        .remove(0);
    let b = store
        .push(&[keyed("q", "k")], T0 + 1_000, 1_000)
        .await
        .unwrap()
        .remove(0);
    assert!(!b.deduplicated);
    assert_ne!(a.id, b.id);
    // The new job now holds the key for its own window.
    let c = store
        .push(&[keyed("q", "k")], T0 + 1_500, 1_000)
        .await
        .unwrap()
        .remove(0);
    assert!(c.deduplicated);
    assert_eq!(c.id, b.id);
    assert_eq!(count_jobs(&store).await, 2);
}

#[tokio::test]
async fn batch_push_keeps_input_order() {
    let (_dir, store) = fresh().await;
    // More than one multi-row chunk, mixed with keyed jobs.
    let mut jobs = Vec::new();
    for i in 0..1_203 {
        let mut j = job("q", &format!("{i}"), T0 + i);
        if i % 100 == 0 {
            j.dedupe_key = Some(format!("key-{}", i % 300));
        }
        jobs.push(j);
    }
    let out = store.push(&jobs, T0, WINDOW).await.unwrap();
    assert_eq!(out.len(), jobs.len());
    let deduped = out.iter().filter(|p| p.deduplicated).count();
    // Keys key-0, key-100, key-200 repeat every 300 jobs: 13 keyed jobs, 3 distinct keys.
    assert_eq!(deduped, 10);
    for (i, p) in out.iter().enumerate().filter(|(_, p)| !p.deduplicated) {
        let payload: String = sqlx::query_scalar("SELECT payload FROM wq_jobs WHERE id = ?1")
            .bind(&p.id)
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(payload, i.to_string());
    }
    assert_eq!(count_jobs(&store).await, 1_203 - 10);
}

#[tokio::test]
async fn jobs_due_at_the_same_instant_are_fetched_in_push_order() {
    let (_dir, store) = fresh().await;
    let jobs: Vec<NewJob> = (0..30)
        .map(|i| {
            let mut j = job("q", &i.to_string(), T0);
            if i % 7 == 3 {
                j.dedupe_key = Some(format!("k{i}"));
            }
            j
        })
        .collect();
    let pushed = store.push(&jobs, T0, WINDOW).await.unwrap();
    // Small batches, so the order in which the database picks rows shows.
    let mut got = Vec::new();
    for _ in 0..6 {
        got.extend(store.fetch("q", "w", 5, T0, 1_000).await.unwrap());
    }
    let payloads: Vec<String> = got.iter().map(|j| j.payload.clone()).collect();
    let want: Vec<String> = (0..30).map(|i: i32| i.to_string()).collect();
    assert_eq!(payloads, want);
    let ids: Vec<&str> = got.iter().map(|j| j.id.as_str()).collect();
    let pushed_ids: Vec<&str> = pushed.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, pushed_ids);
}

#[tokio::test]
async fn twenty_thousand_due_jobs_are_fetched_completely_in_bounded_batches() {
    let (_dir, store) = fresh().await;
    let jobs: Vec<NewJob> = (0..20_000)
        .map(|i| job("bulk", "{}", T0 - 20_000 + i))
        .collect();
    let pushed = store.push(&jobs, T0, WINDOW).await.unwrap();
    assert_eq!(pushed.len(), 20_000);
    let mut seen = HashSet::new();
    let mut batches = 0;
    loop {
        let got = store.fetch("bulk", "w", 100, T0, 60_000).await.unwrap();
        if got.is_empty() {
            break;
        }
        assert!(got.len() <= 100);
        batches += 1;
        for j in got {
            assert!(seen.insert(j.id.clone()), "job {} leased twice", j.id);
            store.complete("bulk", &j.id, "w", T0).await.unwrap();
        }
    }
    assert_eq!(seen.len(), 20_000);
    assert_eq!(batches, 200);
    let stats = store.stats("bulk").await.unwrap();
    assert_eq!(
        (stats.ready, stats.scheduled, stats.running, stats.dead),
        (0, 0, 0, 0)
    );
}

#[tokio::test]
async fn acks_from_a_worker_that_does_not_hold_the_lease_are_ignored() {
    let (_dir, store) = fresh().await;
    let id = push_one(&store, job("q", "{}", T0), T0).await;
    store.fetch("q", "owner", 1, T0, 10_000).await.unwrap();
    let ids = vec![id.clone()];

    store.complete("q", &id, "intruder", T0).await.unwrap();
    store.retry("q", &id, "intruder", T0, "nope").await.unwrap();
    store.kill("q", &id, "intruder", T0, "nope").await.unwrap();
    store.release("q", &ids, "intruder").await.unwrap();
    assert_eq!(
        store
            .renew("q", &ids, "intruder", T0 + 99_000)
            .await
            .unwrap(),
        ids
    );
    // Wrong queue name with the right worker is not the job either.
    store.complete("other", &id, "owner", T0).await.unwrap();

    let (state, attempt, err) = state_of(&store, &id).await;
    assert_eq!((state.as_str(), attempt, err), ("leased", 1, None));
    let lease: i64 = sqlx::query_scalar("SELECT lease_until_ms FROM wq_jobs WHERE id = ?1")
        .bind(&id)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(lease, T0 + 10_000);
}

#[tokio::test]
async fn acks_on_a_finished_job_are_ignored() {
    let (_dir, store) = fresh().await;
    let id = push_one(&store, job("q", "{}", T0), T0).await;
    store.fetch("q", "w", 1, T0, 10_000).await.unwrap();
    store.complete("q", &id, "w", T0 + 1).await.unwrap();
    store.kill("q", &id, "w", T0 + 2, "late").await.unwrap();
    store.retry("q", &id, "w", T0 + 3, "late").await.unwrap();
    assert_eq!(state_of(&store, &id).await.0, "done");
}

#[tokio::test]
async fn renew_extends_held_leases_and_reports_lost_ones() {
    let (_dir, store) = fresh().await;
    let a = push_one(&store, job("q", "{}", T0), T0).await;
    let b = push_one(&store, job("q", "{}", T0), T0).await;
    store.fetch("q", "w", 2, T0, 1_000).await.unwrap();
    // b's lease expires and another worker takes it.
    let lost = store
        .renew("q", std::slice::from_ref(&a), "w", T0 + 5_000)
        .await
        .unwrap();
    assert!(lost.is_empty());
    let taken = store.fetch("q", "w2", 2, T0 + 1_000, 1_000).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].id, b);
    let lost = store
        .renew("q", &[a.clone(), b.clone()], "w", T0 + 9_000)
        .await
        .unwrap();
    assert_eq!(lost, vec![b.clone()]);
    store.complete("q", &b, "w2", T0 + 1_500).await.unwrap();
    // a survived past its first expiry thanks to the renewals.
    assert!(
        store
            .fetch("q", "w3", 2, T0 + 8_999, 1_000)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(state_of(&store, &a).await.0, "leased");
}

#[tokio::test]
async fn retry_reschedules_and_the_final_retry_dead_letters() {
    let (_dir, store) = fresh().await;
    let id = push_one(&store, job("q", "{}", T0), T0).await;
    store.fetch("q", "w", 1, T0, 1_000).await.unwrap();
    store
        .retry("q", &id, "w", T0 + 500, "boom 1")
        .await
        .unwrap();
    let (state, attempt, err) = state_of(&store, &id).await;
    assert_eq!(
        (state.as_str(), attempt, err.as_deref()),
        ("ready", 1, Some("boom 1"))
    );
    assert_eq!(store.next_due_ms("q").await.unwrap(), Some(T0 + 500));
    assert!(
        store
            .fetch("q", "w", 1, T0 + 499, 1_000)
            .await
            .unwrap()
            .is_empty()
    );
    let got = store.fetch("q", "w", 1, T0 + 500, 1_000).await.unwrap();
    assert_eq!(got[0].attempt, 2);
    store
        .retry("q", &id, "w", T0 + 1_000, "boom 2")
        .await
        .unwrap();
    let got = store.fetch("q", "w", 1, T0 + 1_000, 1_000).await.unwrap();
    assert_eq!(got[0].attempt, 3);
    // max_attempts = 3: a retry of the third attempt is refused by the store.
    store
        .retry("q", &id, "w", T0 + 1_500, "boom 3")
        .await
        .unwrap();
    let (state, attempt, err) = state_of(&store, &id).await;
    assert_eq!(
        (state.as_str(), attempt, err.as_deref()),
        ("dead", 3, Some("boom 3"))
    );
    assert!(
        store
            .fetch("q", "w", 1, T0 + 10_000, 1_000)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn kill_dead_letters_and_redrive_restores_a_fresh_budget() {
    let (_dir, store) = fresh().await;
    let id = push_one(&store, job("q", "{\"n\":1}", T0), T0).await;
    store.fetch("q", "w", 1, T0, 1_000).await.unwrap();
    store
        .kill("q", &id, "w", T0 + 10, "permanent: bad input")
        .await
        .unwrap();
    let dead = store.list_dead("q", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].id.as_str(),
            dead[0].queue.as_str(),
            dead[0].payload.as_str()
        ),
        (id.as_str(), "q", "{\"n\":1}")
    );
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(dead[0].last_error, "permanent: bad input");
    assert_eq!(dead[0].died_at_ms, T0 + 10);
    assert_eq!(store.stats("q").await.unwrap().dead, 1);

    assert!(!store.redrive("q", "no-such-id", T0 + 20).await.unwrap());
    assert!(!store.redrive("other", &id, T0 + 20).await.unwrap());
    assert!(store.redrive("q", &id, T0 + 20).await.unwrap());
    assert!(
        !store.redrive("q", &id, T0 + 21).await.unwrap(),
        "only dead jobs are re-driven"
    );
    assert!(store.list_dead("q", 10).await.unwrap().is_empty());
    let got = store.fetch("q", "w", 1, T0 + 20, 1_000).await.unwrap();
    assert_eq!(got[0].id, id);
    assert_eq!(got[0].attempt, 1);
}

#[tokio::test]
async fn list_dead_is_bounded_and_newest_first() {
    let (_dir, store) = fresh().await;
    for i in 0..5 {
        let id = push_one(&store, job("q", "{}", T0), T0).await;
        store.fetch("q", "w", 1, T0, 1_000).await.unwrap();
        store.kill("q", &id, "w", T0 + i, "x").await.unwrap();
    }
    let dead = store.list_dead("q", 3).await.unwrap();
    let died: Vec<i64> = dead.iter().map(|d| d.died_at_ms).collect();
    assert_eq!(died, [T0 + 4, T0 + 3, T0 + 2]);
}

#[tokio::test]
async fn release_hands_jobs_back_without_counting_the_attempt() {
    let (_dir, store) = fresh().await;
    let id = push_one(&store, job("q", "{}", T0), T0).await;
    store.fetch("q", "w", 1, T0, 30_000).await.unwrap();
    store
        .release("q", std::slice::from_ref(&id), "w")
        .await
        .unwrap();
    let (state, attempt, _) = state_of(&store, &id).await;
    assert_eq!((state.as_str(), attempt), ("ready", 0));
    // Another worker takes it at once, long before the old lease would end.
    let got = store.fetch("q", "w2", 1, T0 + 1, 30_000).await.unwrap();
    assert_eq!(got[0].id, id);
    assert_eq!(got[0].attempt, 1);
}

#[tokio::test]
async fn purge_is_bounded_and_respects_both_cutoffs() {
    let (_dir, store) = fresh().await;
    let jobs: Vec<NewJob> = (0..10).map(|_| job("q", "{}", T0)).collect();
    store.push(&jobs, T0, WINDOW).await.unwrap();
    let got = store.fetch("q", "w", 10, T0, 60_000).await.unwrap();
    // 6 done at T0+1..6, 4 dead at T0+1..4.
    for (i, j) in got.iter().enumerate() {
        if i < 6 {
            store
                .complete("q", &j.id, "w", T0 + 1 + i as i64)
                .await
                .unwrap();
        } else {
            store
                .kill("q", &j.id, "w", T0 + 1 + (i - 6) as i64, "x")
                .await
                .unwrap();
        }
    }
    let still_ready = push_one(&store, job("q", "{}", T0), T0).await;
    // Done older than T0+4 (3 of them), dead older than T0+3 (2 of them), at most 4.
    assert_eq!(store.purge("q", T0 + 4, T0 + 3, 4).await.unwrap(), 4);
    assert_eq!(store.purge("q", T0 + 4, T0 + 3, 4).await.unwrap(), 1);
    assert_eq!(store.purge("q", T0 + 4, T0 + 3, 4).await.unwrap(), 0);
    assert_eq!(count_jobs(&store).await, 11 - 5);
    assert_eq!(state_of(&store, &still_ready).await.0, "ready");
    assert_eq!(store.stats("q").await.unwrap().dead, 2);
    // Everything finished goes once the cutoffs pass; ready jobs stay.
    assert_eq!(store.purge("q", T0 + 100, T0 + 100, 100).await.unwrap(), 5);
    assert_eq!(count_jobs(&store).await, 1);
}

#[tokio::test]
async fn purge_drops_expired_dedupe_keys_only() {
    let (_dir, store) = fresh().await;
    store.push(&[keyed("q", "old")], T0, 1_000).await.unwrap();
    store
        .push(&[keyed("q", "new")], T0, 1_000_000)
        .await
        .unwrap();
    store.purge("q", T0 + 2_000, T0, 10).await.unwrap();
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM wq_dedupe ORDER BY key")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(keys, ["new"]);
}

#[tokio::test]
async fn cron_tick_is_claimed_exactly_once_by_twenty_claimers_on_two_pools() {
    let dir = TempDir::new();
    let a = SqliteStore::new(pool(&dir.db(), 5).await);
    a.setup().await.unwrap();
    let b = SqliteStore::new(pool(&dir.db(), 5).await);
    b.setup().await.unwrap();
    assert_eq!(a.last_tick("nightly").await.unwrap(), None);
    for tick in [T0, T0 + 60_000, T0 + 120_000] {
        let mut tasks = Vec::new();
        for i in 0..20 {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(
                async move { s.claim_tick("nightly", tick).await },
            ));
        }
        let mut winners = 0;
        for t in tasks {
            if t.await
                .unwrap()
                .expect("claim_tick must not fail (SQLITE_BUSY?)")
            {
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "tick {tick}");
        assert_eq!(b.last_tick("nightly").await.unwrap(), Some(tick));
    }
    assert_eq!(a.last_tick("other").await.unwrap(), None);
}

#[tokio::test]
async fn cron_ticks_are_pruned_but_old_ticks_stay_claimed() {
    let (_dir, store) = fresh().await;
    for i in 0..150 {
        assert!(store.claim_tick("s", T0 + i).await.unwrap());
    }
    let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM wq_cron WHERE schedule = 's'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(kept, sqlite::CRON_KEEP_TICKS);
    // A pruned tick cannot be won again; neither can a kept one.
    assert!(!store.claim_tick("s", T0).await.unwrap());
    assert!(!store.claim_tick("s", T0 + 149).await.unwrap());
    assert_eq!(store.last_tick("s").await.unwrap(), Some(T0 + 149));
}

#[tokio::test]
async fn push_in_tx_commits_and_rolls_back_with_the_callers_transaction() {
    let (_dir, store) = fresh().await;
    sqlx::query("CREATE TABLE requests (id INTEGER PRIMARY KEY, note TEXT NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();

    // Rolled back: neither the request nor the job exists.
    let mut tx = store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("INSERT INTO requests (note) VALUES ('rolled back')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let lost = sqlite::push_in_tx(&mut tx, &keyed("review", "req-1"), T0, WINDOW)
        .await
        .unwrap();
    assert!(!lost.deduplicated);
    tx.rollback().await.unwrap();
    assert_eq!(count_jobs(&store).await, 0);
    let dedupe: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM wq_dedupe")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(dedupe, 0, "the dedupe key rolls back with the job");

    // Committed: both exist, and `notify_pushed` wakes a worker waiting in
    // this process (its poll interval is long, so only the wake-up answers true).
    let slow = SqliteStore::new(store.pool().clone()).with_poll_interval(Duration::from_secs(60));
    let waiter = tokio::spawn(async move { slow.wait_for_push("review", 60_000).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut tx = store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("INSERT INTO requests (note) VALUES ('kept')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let kept = sqlite::push_in_tx(&mut tx, &keyed("review", "req-1"), T0, WINDOW)
        .await
        .unwrap();
    assert!(!kept.deduplicated);
    tx.commit().await.unwrap();
    sqlite::notify_pushed(store.pool(), "review");
    let woke = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("notify_pushed must wake the waiter")
        .unwrap()
        .unwrap();
    assert!(woke);
    let got = store.fetch("review", "w", 10, T0, 1_000).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, kept.id);
    let notes: Vec<String> = sqlx::query_scalar("SELECT note FROM requests")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(notes, ["kept"]);
}

#[tokio::test]
async fn wait_for_push_is_woken_by_a_push_and_otherwise_returns_false() {
    let dir = TempDir::new();
    // A long poll interval, so a `true` can only come from the wake-up.
    let store =
        SqliteStore::new(pool(&dir.db(), 2).await).with_poll_interval(Duration::from_secs(60));
    store.setup().await.unwrap();
    // A second store on another pool of the same file shares the wake-up.
    let other = SqliteStore::new(pool(&dir.db(), 2).await);

    assert!(
        !store.wait_for_push("q", 20).await.unwrap(),
        "no push: timeout"
    );

    let waiter = {
        let s = store.clone();
        tokio::spawn(async move { s.wait_for_push("q", 30_000).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    other.push(&[job("q", "{}", T0)], T0, WINDOW).await.unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("waiter must wake long before its 30 s timeout")
        .unwrap()
        .unwrap();
    assert!(woke);

    // A push to another queue does not wake this one.
    let _ = store.wait_for_push("q", 1).await; // consume a leftover permit, if any
    let waiter = {
        let s = store.clone();
        tokio::spawn(async move { s.wait_for_push("q", 300).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    other
        .push(&[job("elsewhere", "{}", T0)], T0, WINDOW)
        .await
        .unwrap();
    assert!(!waiter.await.unwrap().unwrap());
}

#[tokio::test]
async fn wait_for_push_never_waits_longer_than_the_poll_interval() {
    let dir = TempDir::new();
    let store =
        SqliteStore::new(pool(&dir.db(), 2).await).with_poll_interval(Duration::from_millis(50));
    store.setup().await.unwrap();
    // Asked to wait an hour, it returns after a poll interval so that the
    // caller can see jobs pushed by other processes.
    let woke = tokio::time::timeout(Duration::from_secs(30), store.wait_for_push("q", 3_600_000))
        .await
        .expect("wait_for_push must return after its poll interval");
    assert!(!woke.unwrap());
}

#[tokio::test]
async fn two_pools_fetching_concurrently_never_lease_a_job_twice() {
    let dir = TempDir::new();
    let a = SqliteStore::new(pool(&dir.db(), 4).await);
    a.setup().await.unwrap();
    let b = SqliteStore::new(pool(&dir.db(), 4).await);
    b.setup().await.unwrap();
    let jobs: Vec<NewJob> = (0..5_000).map(|i| job("q", &i.to_string(), T0)).collect();
    a.push(&jobs, T0, WINDOW).await.unwrap();

    // Four fetchers per "process", each completing what it leased.
    let mut tasks = Vec::new();
    for p in 0..2 {
        for w in 0..4 {
            let s = if p == 0 { a.clone() } else { b.clone() };
            let worker = format!("p{p}-w{w}");
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = s.fetch("q", &worker, 25, T0, 600_000).await?;
                    if got.is_empty() {
                        break;
                    }
                    for j in got {
                        s.complete("q", &j.id, &worker, T0).await?;
                        mine.push(j.id);
                    }
                }
                Ok::<_, approvald_workers::store::StoreError>((worker, mine))
            }));
        }
    }
    let mut owner: HashMap<String, String> = HashMap::new();
    let mut per_worker = Vec::new();
    for t in tasks {
        let (worker, ids) = t
            .await
            .unwrap()
            .expect("no store error under concurrency (SQLITE_BUSY?)");
        per_worker.push((worker.clone(), ids.len()));
        for id in ids {
            if let Some(prev) = owner.insert(id.clone(), worker.clone()) {
                panic!("job {id} leased by {prev} and {worker}");
            }
        }
    }
    assert_eq!(owner.len(), 5_000, "per worker: {per_worker:?}");
    let done: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM wq_jobs WHERE state = 'done' AND attempt = 1")
            .fetch_one(a.pool())
            .await
            .unwrap();
    assert_eq!(done, 5_000);
    // Both "processes" got work.
    let by_a: usize = per_worker
        .iter()
        .filter(|(w, _)| w.starts_with("p0"))
        .map(|(_, n)| n)
        .sum();
    assert!(by_a > 0 && by_a < 5_000, "per worker: {per_worker:?}");
}

#[tokio::test]
async fn concurrent_writers_on_two_pools_never_see_sqlite_busy() {
    let dir = TempDir::new();
    let a = SqliteStore::new(pool(&dir.db(), 4).await);
    a.setup().await.unwrap();
    let b = SqliteStore::new(pool(&dir.db(), 4).await);
    b.setup().await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                // The application's pattern: its own row and the job in one transaction.
                let mut tx = s.pool().begin_with("BEGIN IMMEDIATE").await?;
                sqlite::push_in_tx(
                    &mut tx,
                    &keyed("q", &format!("t{t}-{}", i % 50)),
                    T0 + i,
                    WINDOW,
                )
                .await?;
                tx.commit().await?;
                s.push(&[job("q", "{}", T0)], T0 + i, WINDOW).await?;
                for j in s.fetch("q", &format!("w{t}"), 5, T0 + i, 60_000).await? {
                    s.complete("q", &j.id, &format!("w{t}"), T0 + i).await?;
                }
                s.claim_tick("every", T0 + i).await?;
            }
            Ok::<_, approvald_workers::store::StoreError>(())
        }));
    }
    for t in tasks {
        t.await
            .unwrap()
            .expect("no SQLITE_BUSY under concurrent writers");
    }
    // 8 tasks x 50 distinct keys + 8 x 100 plain jobs.
    assert_eq!(count_jobs(&a).await, 8 * 50 + 8 * 100);
}

#[tokio::test]
async fn connect_options_accepts_paths_and_urls() {
    let dir = TempDir::new();
    let url = format!("sqlite://{}", dir.db());
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(sqlite::connect_options(&url))
        .await
        .unwrap();
    let store = SqliteStore::new(pool);
    store.setup().await.unwrap();
    assert!(
        std::path::Path::new(&dir.db()).exists(),
        "created if missing"
    );
    assert!(sqlite::try_connect_options("sqlite://x.db?bogus=1").is_err());
    let mut conn = store.pool().acquire().await.unwrap();
    conn.ping().await.unwrap();
}

#[tokio::test]
async fn concurrent_acks_are_group_committed_each_with_its_own_effect() {
    let (_dir, store) = fresh().await;
    let jobs: Vec<NewJob> = (0..400).map(|_| job("q", "{}", T0)).collect();
    store.push(&jobs, T0, WINDOW).await.unwrap();
    let got = store.fetch("q", "w", 400, T0, 60_000).await.unwrap();
    assert_eq!(got.len(), 400);
    // Four kinds of ack, interleaved, all in flight at once.
    let acks = got.iter().enumerate().map(|(i, j)| {
        let s = store.clone();
        let id = j.id.clone();
        async move {
            match i % 4 {
                0 => s.complete("q", &id, "w", T0 + 1).await,
                1 => s.kill("q", &id, "w", T0 + 1, "bad").await,
                2 => s.retry("q", &id, "w", T0 + 5_000, "again").await,
                _ => s.complete("q", &id, "intruder", T0 + 1).await,
            }
        }
    });
    for r in futures::future::join_all(acks).await {
        r.expect("ack");
    }
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM wq_jobs GROUP BY state ORDER BY state")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let counts: Vec<(&str, i64)> = counts.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    assert_eq!(
        counts,
        [
            ("dead", 100),
            ("done", 100),
            ("leased", 100),
            ("ready", 100)
        ]
    );
    for (i, j) in got.iter().enumerate() {
        let want = ["done", "dead", "ready", "leased"][i % 4];
        assert_eq!(state_of(&store, &j.id).await.0, want, "job {i}");
    }
}

/// The ack writer is a task; a store that outlives the runtime that spawned
/// it (one runtime per test, a daemon restarting its runtime) keeps working.
#[test]
fn acks_keep_working_after_the_runtime_that_started_the_writer_is_gone() {
    let dir = TempDir::new();
    let rt1 = tokio::runtime::Runtime::new().unwrap();
    let (store, ids) = rt1.block_on(async {
        let store = SqliteStore::new(pool(&dir.db(), 2).await);
        store.setup().await.unwrap();
        let jobs: Vec<NewJob> = (0..3).map(|_| job("q", "{}", T0)).collect();
        store.push(&jobs, T0, WINDOW).await.unwrap();
        let ids: Vec<String> = store
            .fetch("q", "w", 3, T0, 60_000)
            .await
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        store.complete("q", &ids[0], "w", T0).await.unwrap();
        (store, ids)
    });
    drop(rt1);
    let rt2 = tokio::runtime::Runtime::new().unwrap();
    rt2.block_on(async {
        store.complete("q", &ids[1], "w", T0).await.unwrap();
        store.kill("q", &ids[2], "w", T0, "x").await.unwrap();
        assert_eq!(state_of(&store, &ids[0]).await.0, "done");
        assert_eq!(state_of(&store, &ids[1]).await.0, "done");
        assert_eq!(state_of(&store, &ids[2]).await.0, "dead");
    });
}

/// Fetch and complete `q` until it is empty; the ids this worker completed.
async fn drain_as(store: &SqliteStore, worker: &str) -> Vec<String> {
    let mut mine = Vec::new();
    loop {
        let got = store
            .fetch("q", worker, 25, T0, 600_000)
            .await
            .expect("fetch (SQLITE_BUSY?)");
        if got.is_empty() {
            return mine;
        }
        let acks = got.iter().map(|j| store.complete("q", &j.id, worker, T0));
        for r in futures::future::join_all(acks).await {
            r.expect("complete (SQLITE_BUSY?)");
        }
        mine.extend(got.into_iter().map(|j| j.id));
    }
}

/// Cron ticks claimed by the cross-process test.
const CROSS_TICKS: i64 = 200;

/// Wait until the shared start instant (ms since the epoch), so that all
/// processes of the cross-process test begin at once.
async fn wait_until(start_ms: i64) {
    let now = chrono::Utc::now().timestamp_millis();
    if start_ms > now {
        tokio::time::sleep(Duration::from_millis((start_ms - now) as u64)).await;
    }
}

/// One process's share of the cross-process test: drain `q` while claiming
/// every tick of one schedule; the job ids it completed and the ticks it won.
async fn cross_process_share(store: &SqliteStore, worker: &str) -> (Vec<String>, Vec<i64>) {
    let claims = async {
        let mut won = Vec::new();
        for i in 0..CROSS_TICKS {
            if store
                .claim_tick("shared", T0 + i)
                .await
                .expect("claim_tick (SQLITE_BUSY?)")
            {
                won.push(i);
            }
            tokio::task::yield_now().await;
        }
        won
    };
    tokio::join!(drain_as(store, worker), claims)
}

/// The child half of `two_processes_fetching_concurrently_never_lease_a_job_twice`:
/// does nothing unless started by it (with `WQ_CHILD_DB` set).
#[tokio::test]
async fn cross_process_child() {
    let (Ok(db), Ok(out), Ok(start)) = (
        std::env::var("WQ_CHILD_DB"),
        std::env::var("WQ_CHILD_OUT"),
        std::env::var("WQ_CHILD_START_MS"),
    ) else {
        return;
    };
    let store = SqliteStore::new(pool(&db, 4).await);
    store.setup().await.expect("child setup");
    wait_until(start.parse().expect("start ms")).await;
    let (ids, ticks) = cross_process_share(&store, &format!("child-{}", std::process::id())).await;
    let ticks: Vec<String> = ticks.iter().map(i64::to_string).collect();
    std::fs::write(format!("{out}.ticks"), ticks.join("\n")).expect("write child ticks");
    std::fs::write(out, ids.join("\n")).expect("write child ids");
}

/// Also: every cron tick is won by exactly one of the three processes.
#[tokio::test]
async fn two_processes_fetching_concurrently_never_lease_a_job_twice() {
    let (dir, store) = fresh().await;
    let jobs: Vec<NewJob> = (0..5_000).map(|i| job("q", &i.to_string(), T0)).collect();
    store.push(&jobs, T0, WINDOW).await.unwrap();

    // Two more processes (this test binary, running only `cross_process_child`)
    // drain the same file while this one does too, all from the same instant.
    let start_ms = chrono::Utc::now().timestamp_millis() + 1_000;
    let exe = std::env::current_exe().unwrap();
    let children: Vec<(std::process::Child, PathBuf)> = (0..2)
        .map(|n| {
            let out = dir.0.join(format!("child-{n}.ids"));
            let child = std::process::Command::new(&exe)
                .args(["--exact", "cross_process_child", "--test-threads=1"])
                .env("WQ_CHILD_DB", dir.db())
                .env("WQ_CHILD_OUT", &out)
                .env("WQ_CHILD_START_MS", start_ms.to_string())
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn child process");
            (child, out)
        })
        .collect();
    wait_until(start_ms).await;
    let (ids, ticks) = cross_process_share(&store, "parent").await;
    let mut per_worker = vec![("parent".to_string(), ids)];
    let mut tick_winner: HashMap<i64, String> =
        ticks.into_iter().map(|t| (t, "parent".into())).collect();
    for (mut child, out) in children {
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "child process failed: {status}");
        let name = out.display().to_string();
        let text = std::fs::read_to_string(format!("{name}.ticks")).expect("child ticks file");
        for t in text.lines().filter(|l| !l.is_empty()) {
            let t: i64 = t.parse().unwrap();
            if let Some(prev) = tick_winner.insert(t, name.clone()) {
                panic!("tick {t} won by {prev} and {name}");
            }
        }
        let text = std::fs::read_to_string(&out).expect("child ids file");
        let ids = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        per_worker.push((name, ids));
    }
    assert_eq!(tick_winner.len() as i64, CROSS_TICKS, "every tick won once");
    let mut tick_wins: HashMap<&str, usize> = HashMap::new();
    for w in tick_winner.values() {
        *tick_wins.entry(w.as_str()).or_default() += 1;
    }
    eprintln!("ticks won per process: {tick_wins:?}");

    let mut owner: HashMap<&str, &str> = HashMap::new();
    for (worker, ids) in &per_worker {
        for id in ids {
            if let Some(prev) = owner.insert(id, worker) {
                panic!("job {id} leased by {prev} and {worker}");
            }
        }
    }
    let sizes: Vec<usize> = per_worker.iter().map(|(_, ids)| ids.len()).collect();
    assert_eq!(owner.len(), 5_000, "per process: {sizes:?}");
    let done: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM wq_jobs WHERE state = 'done' AND attempt = 1")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(done, 5_000);
    eprintln!("jobs per process: {sizes:?}");
}

#[tokio::test]
async fn an_in_memory_database_works_for_quick_tests() {
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(sqlite::connect_options("sqlite::memory:"))
        .await
        .unwrap();
    let store = SqliteStore::new(pool);
    store
        .setup()
        .await
        .expect("setup accepts an in-memory database");
    let id = push_one(&store, job("q", "{}", T0), T0).await;
    let got = store.fetch("q", "w", 10, T0, 1_000).await.unwrap();
    assert_eq!(got[0].id, id);
    store.complete("q", &id, "w", T0).await.unwrap();
    assert_eq!(state_of(&store, &id).await.0, "done");
}

#[tokio::test]
async fn setup_switches_a_rollback_journal_file_to_wal() {
    let dir = TempDir::new();
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.db())
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Delete);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap();
    SqliteStore::new(pool.clone()).setup().await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    // WAL is stored in the file: a new pool that sets no journal mode sees it.
    let again = pool_for_check(&dir.db()).await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&again)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

async fn pool_for_check(path: &str) -> SqlitePool {
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .unwrap()
}
