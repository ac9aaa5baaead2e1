//! What the operator dashboard needs from the runtime, on both real stores
//! (SQLite file, Redis on 127.0.0.1:6379): a pause made through one queue
//! handle stops a runtime built on another (as another process would be),
//! a resume lets it run; dead jobs can be discarded; runtimes leave
//! heartbeats; attempt outcomes are counted per minute in the store.
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use approvald_workers::{
    Job, JobError, JobInfo, PushOptions, Queue, QueueConfig, Runtime, SystemClock,
    store::{Store, Throughput, redis::RedisStore, sqlite::SqliteStore},
};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Count {
    fail: bool,
}

impl Job for Count {
    const NAME: &'static str = "count";
    const MAX_ATTEMPTS: u32 = 1;
    type Context = Arc<AtomicUsize>;
    async fn run(self, ran: Arc<AtomicUsize>, _: JobInfo) -> Result<(), JobError> {
        ran.fetch_add(1, Ordering::SeqCst);
        if self.fail {
            return Err(JobError::permanent(anyhow::anyhow!("job 12345678 failed")));
        }
        Ok(())
    }
}

fn config() -> QueueConfig {
    QueueConfig {
        prefix: format!("wqop{}", &uuid::Uuid::new_v4().simple().to_string()[..10]),
        idle_poll: Duration::from_millis(100),
        ..QueueConfig::default()
    }
}

/// Two handles on one store backend, as two processes would have.
async fn two_handles(kind: &str, dir: &tempfile::TempDir) -> (Queue, Queue) {
    let cfg = config();
    let mk = |s: Arc<dyn Store>| Queue::with_store(s, cfg.clone(), Arc::new(SystemClock));
    match kind {
        "sqlite" => {
            let path = dir.path().join("q.db").display().to_string();
            let open = || async {
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(approvald_workers::store::sqlite::connect_options(&path))
                    .await
                    .unwrap();
                let s = SqliteStore::new(pool);
                s.setup().await.unwrap();
                Arc::new(s) as Arc<dyn Store>
            };
            (mk(open().await), mk(open().await))
        }
        _ => {
            let open = || async {
                let s = RedisStore::connect("redis://127.0.0.1:6379/0", &cfg.prefix)
                    .await
                    .expect("Redis on 127.0.0.1:6379");
                s.setup().await.unwrap();
                Arc::new(s) as Arc<dyn Store>
            };
            (mk(open().await), mk(open().await))
        }
    }
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn pause_resume_discard_beats_and_counts(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (worker_side, operator) = two_handles(kind, &dir).await;
    let ran = Arc::new(AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let rt = Runtime::new(worker_side.clone())
        .register::<Count>(ran.clone())
        .pause_poll(Duration::from_millis(200))
        .heartbeat_interval(Duration::from_millis(200));
    let worker_id = rt.worker_id().to_string();
    let handle = tokio::spawn(rt.run({
        let s = stop.clone();
        async move { s.cancelled().await }
    }));

    // Alive: a heartbeat naming the job types.
    wait_until("heartbeat", async || {
        operator
            .workers_alive(10)
            .await
            .unwrap()
            .iter()
            .any(|w| w.worker_id == worker_id && w.info.contains("\"count\""))
    })
    .await;

    // Paused through the other handle: nothing runs.
    operator.pause("count").await.unwrap();
    assert_eq!(operator.paused().await.unwrap(), vec!["count".to_string()]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    operator
        .push(&Count { fail: false }, PushOptions::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ran.load(Ordering::SeqCst), 0, "a paused queue ran a job");
    assert_eq!(operator.stats("count").await.unwrap().ready, 1);

    // Resumed: it runs.
    operator.resume("count").await.unwrap();
    wait_until("job ran after resume", async || {
        ran.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(operator.paused().await.unwrap().is_empty());

    // A dead job can be discarded for good.
    operator
        .push(&Count { fail: true }, PushOptions::default())
        .await
        .unwrap();
    wait_until("job died", async || {
        operator.stats("count").await.unwrap().dead == 1
    })
    .await;
    let dead = operator.list_dead("count", 10).await.unwrap();
    assert!(operator.discard_dead("count", &dead[0].id).await.unwrap());
    assert!(!operator.discard_dead("count", &dead[0].id).await.unwrap());
    assert_eq!(operator.stats("count").await.unwrap().dead, 0);

    // Outcomes reach the store's per-minute counts (flushed every heartbeat).
    wait_until("counts flushed", async || {
        operator
            .throughput("count", Duration::from_secs(3600))
            .await
            .unwrap()
            == Throughput { ok: 1, failed: 1 }
    })
    .await;

    stop.cancel();
    handle.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pause_resume_discard_beats_and_counts() {
    pause_resume_discard_beats_and_counts("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pause_resume_discard_beats_and_counts() {
    pause_resume_discard_beats_and_counts("redis").await;
}
