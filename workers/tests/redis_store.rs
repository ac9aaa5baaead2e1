//! Contract tests of the Redis store against a real Redis on 127.0.0.1:6379
//! (and, for restart tests, a redis-server of our own on a spare port).
//! Each test uses a random key prefix and deletes its keys at the end, also
//! when it fails.
use std::{
    collections::HashSet,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use approvald_workers::store::{
    NewJob, Store,
    redis::{RedisStore, RedisStoreConfig},
};

const URL: &str = "redis://127.0.0.1:6379/";
const T0: i64 = 1_800_000_000_000;
const DAY: i64 = 24 * 3600 * 1000;

/// Deletes every key under the prefix when dropped.
struct Keys {
    url: String,
    prefix: String,
}

impl Drop for Keys {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
            return;
        };
        let mut cursor: u64 = 0;
        loop {
            let page: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}:*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query(&mut conn);
            let Ok((next, keys)) = page else { return };
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query(&mut conn);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

fn prefix() -> String {
    format!("test-rs-{}", uuid::Uuid::new_v4().simple())
}

async fn store_at(url: &str, prefix: &str) -> RedisStore {
    let store = RedisStore::connect(url, prefix)
        .await
        .expect("valid redis url");
    store
        .setup()
        .await
        .unwrap_or_else(|e| panic!("Redis must be running at {url}: {e}"));
    store
}

async fn fresh() -> (RedisStore, Keys) {
    let p = prefix();
    (
        store_at(URL, &p).await,
        Keys {
            url: URL.into(),
            prefix: p,
        },
    )
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

fn keyed(queue: &str, payload: &str, run_at_ms: i64, key: &str) -> NewJob {
    NewJob {
        dedupe_key: Some(key.into()),
        ..job(queue, payload, run_at_ms)
    }
}

#[tokio::test]
async fn push_then_fetch_leases_in_order_with_all_fields() {
    let (s, _k) = fresh().await;
    let pushed = s
        .push(
            &[
                job("q", "{\"n\":1}", T0),
                job("q", "{\"n\":2}", T0),
                job("q", "{\"n\":3}", T0 - 5),
            ],
            T0,
            DAY,
        )
        .await
        .unwrap();
    assert_eq!(pushed.len(), 3);
    assert!(pushed.iter().all(|p| !p.deduplicated));
    assert_eq!(
        pushed.iter().map(|p| &p.id).collect::<HashSet<_>>().len(),
        3,
        "ids are distinct"
    );
    assert_eq!(s.stats("q").await.unwrap().ready, 3);

    let got = s.fetch("q", "w1", 2, T0 + 10, 30_000).await.unwrap();
    assert_eq!(got.len(), 2, "limit is honoured");
    // due order: the job due at T0-5 first, then by push order
    assert_eq!(got[0].id, pushed[2].id);
    assert_eq!(got[1].id, pushed[0].id);
    assert_eq!(got[1].payload, "{\"n\":1}");
    assert_eq!(got[1].queue, "q");
    assert_eq!(got[1].attempt, 1);
    assert_eq!(got[1].max_attempts, 3);
    assert_eq!(got[1].enqueued_at_ms, T0);
    assert_eq!(got[1].run_at_ms, T0);
    assert_eq!(got[1].lease_until_ms, T0 + 10 + 30_000);

    let stats = s.stats("q").await.unwrap();
    assert_eq!(
        (stats.ready, stats.scheduled, stats.running, stats.dead),
        (1, 0, 2, 0)
    );
    let rest = s.fetch("q", "w2", 10, T0 + 10, 30_000).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].id, pushed[1].id);
    assert!(
        s.fetch("q", "w2", 10, T0 + 10, 30_000)
            .await
            .unwrap()
            .is_empty()
    );
    // another queue is untouched
    assert!(
        s.fetch("other", "w2", 10, T0 + 10, 30_000)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn delayed_job_becomes_due_at_its_millisecond() {
    let (s, _k) = fresh().await;
    let at = T0 + 1_234;
    let p = s.push(&[job("q", "{}", at)], T0, DAY).await.unwrap();
    let stats = s.stats("q").await.unwrap();
    assert_eq!((stats.ready, stats.scheduled), (0, 1));
    assert_eq!(s.next_due_ms("q").await.unwrap(), Some(at));
    assert_eq!(s.next_due_ms("empty").await.unwrap(), None);

    assert!(
        s.fetch("q", "w", 10, at - 1, 1_000)
            .await
            .unwrap()
            .is_empty()
    );
    let got = s.fetch("q", "w", 10, at, 1_000).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, p[0].id);
    assert_eq!(got[0].run_at_ms, at);
    assert_eq!(s.next_due_ms("q").await.unwrap(), None);
}

#[tokio::test]
async fn expired_lease_is_reclaimed_with_next_attempt_and_old_owner_is_ignored() {
    let (s, _k) = fresh().await;
    let id = s.push(&[job("q", "{}", T0)], T0, DAY).await.unwrap()[0]
        .id
        .clone();
    let first = s.fetch("q", "dead-worker", 1, T0, 1_000).await.unwrap();
    assert_eq!(first[0].attempt, 1);

    // lease held while now < lease_until
    assert!(
        s.fetch("q", "w2", 1, T0 + 999, 1_000)
            .await
            .unwrap()
            .is_empty()
    );
    let second = s.fetch("q", "w2", 1, T0 + 1_000, 1_000).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id, id);
    assert_eq!(
        second[0].attempt, 2,
        "a reclaimed job's next run counts the lost attempt"
    );

    // the process that lost the lease cannot clobber the new owner's state
    s.complete("q", &id, "dead-worker", T0 + 1_100)
        .await
        .unwrap();
    s.kill("q", &id, "dead-worker", T0 + 1_100, "late")
        .await
        .unwrap();
    s.retry("q", &id, "dead-worker", T0 + 1_100, "late")
        .await
        .unwrap();
    s.release("q", std::slice::from_ref(&id), "dead-worker")
        .await
        .unwrap();
    assert_eq!(
        s.renew("q", std::slice::from_ref(&id), "dead-worker", T0 + 9_000)
            .await
            .unwrap(),
        vec![id.clone()]
    );
    let stats = s.stats("q").await.unwrap();
    assert_eq!(
        (stats.ready, stats.scheduled, stats.running, stats.dead),
        (0, 0, 1, 0)
    );

    s.complete("q", &id, "w2", T0 + 1_200).await.unwrap();
    assert_eq!(s.stats("q").await.unwrap(), Default::default());
}

#[tokio::test]
async fn acks_from_a_worker_that_does_not_hold_the_lease_are_ignored() {
    let (s, _k) = fresh().await;
    let id = s.push(&[job("q", "{}", T0)], T0, DAY).await.unwrap()[0]
        .id
        .clone();
    s.fetch("q", "owner", 1, T0, 30_000).await.unwrap();
    let ids = std::slice::from_ref(&id);
    s.complete("q", &id, "intruder", T0 + 1).await.unwrap();
    s.retry("q", &id, "intruder", T0 + 1, "x").await.unwrap();
    s.kill("q", &id, "intruder", T0 + 1, "x").await.unwrap();
    s.release("q", ids, "intruder").await.unwrap();
    assert_eq!(
        s.renew("q", ids, "intruder", T0 + 60_000).await.unwrap(),
        ids
    );
    // wrong queue, right worker: also ignored
    s.complete("other", &id, "owner", T0 + 1).await.unwrap();
    let stats = s.stats("q").await.unwrap();
    assert_eq!(
        (stats.ready, stats.scheduled, stats.running, stats.dead),
        (0, 0, 1, 0)
    );
    // the intruder's renew did not extend the lease: it still ends at T0 + 30_000
    let back = s
        .fetch("q", "other-worker", 1, T0 + 30_000, 30_000)
        .await
        .unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].attempt, 2);
}

#[tokio::test]
async fn expired_lease_after_final_attempt_goes_dead() {
    let (s, _k) = fresh().await;
    let j = NewJob {
        max_attempts: 2,
        ..job("q", "{\"x\":1}", T0)
    };
    let id = s.push(&[j], T0, DAY).await.unwrap()[0].id.clone();
    assert_eq!(s.fetch("q", "a", 1, T0, 100).await.unwrap()[0].attempt, 1);
    assert_eq!(
        s.fetch("q", "b", 1, T0 + 100, 100).await.unwrap()[0].attempt,
        2
    );
    assert!(
        s.fetch("q", "c", 1, T0 + 200, 100)
            .await
            .unwrap()
            .is_empty()
    );

    let dead = s.list_dead("q", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].last_error, "lease expired after final attempt");
    assert_eq!(dead[0].died_at_ms, T0 + 200);
    assert_eq!(dead[0].payload, "{\"x\":1}");
    assert_eq!(s.stats("q").await.unwrap().dead, 1);
    assert_eq!(s.stats("q").await.unwrap().running, 0);
}

#[tokio::test]
async fn renew_extends_held_leases_and_reports_lost_ones() {
    let (s, _k) = fresh().await;
    let ids: Vec<String> = s
        .push(&[job("q", "1", T0), job("q", "2", T0)], T0, DAY)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    s.fetch("q", "w", 2, T0, 1_000).await.unwrap();
    assert!(
        s.renew("q", &ids[..1], "w", T0 + 5_000)
            .await
            .unwrap()
            .is_empty()
    );
    // the second lease expires and is reclaimed by another worker
    let other = s.fetch("q", "x", 10, T0 + 1_000, 1_000).await.unwrap();
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].id, ids[1]);
    let lost = s.renew("q", &ids, "w", T0 + 9_000).await.unwrap();
    assert_eq!(lost, vec![ids[1].clone()]);
    // the renewed one is still held just before 9_000 (x's own lease on the
    // other one ended at T0 + 2_000, so only that one comes back)
    let back = s.fetch("q", "y", 10, T0 + 8_999, 1_000).await.unwrap();
    assert_eq!(
        back.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        [ids[1].as_str()]
    );
    let back = s.fetch("q", "y", 10, T0 + 9_000, 1_000).await.unwrap();
    assert_eq!(
        back.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        [ids[0].as_str()]
    );
    assert!(s.renew("q", &[], "w", T0).await.unwrap().is_empty());
    assert_eq!(
        s.renew("q", &["no-such-job".to_string()], "w", T0)
            .await
            .unwrap(),
        vec!["no-such-job".to_string()]
    );
}

#[tokio::test]
async fn retry_schedules_the_next_attempt() {
    let (s, _k) = fresh().await;
    let id = s.push(&[job("q", "{}", T0)], T0, DAY).await.unwrap()[0]
        .id
        .clone();
    s.fetch("q", "w", 1, T0, 30_000).await.unwrap();
    s.retry("q", &id, "w", T0 + 2_000, "boom").await.unwrap();
    let stats = s.stats("q").await.unwrap();
    assert_eq!((stats.ready, stats.scheduled, stats.running), (0, 1, 0));
    assert_eq!(s.next_due_ms("q").await.unwrap(), Some(T0 + 2_000));
    assert!(
        s.fetch("q", "w", 1, T0 + 1_999, 30_000)
            .await
            .unwrap()
            .is_empty()
    );
    let again = s.fetch("q", "w", 1, T0 + 2_000, 30_000).await.unwrap();
    assert_eq!(again[0].id, id);
    assert_eq!(again[0].attempt, 2);
    assert_eq!(again[0].run_at_ms, T0 + 2_000);
}

#[tokio::test]
async fn kill_list_dead_and_redrive() {
    let (s, _k) = fresh().await;
    let ids: Vec<String> = s
        .push(
            &[job("q", "a", T0), job("q", "b", T0), job("q", "c", T0)],
            T0,
            DAY,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    s.fetch("q", "w", 3, T0, 30_000).await.unwrap();
    for (i, id) in ids.iter().enumerate() {
        s.kill("q", id, "w", T0 + i as i64, &format!("bad {i}"))
            .await
            .unwrap();
    }
    assert_eq!(s.stats("q").await.unwrap().dead, 3);
    let dead = s.list_dead("q", 2).await.unwrap();
    assert_eq!(dead.len(), 2, "limit is honoured");
    assert_eq!(dead[0].id, ids[2], "newest first");
    assert_eq!(dead[1].id, ids[1]);
    assert_eq!(dead[0].last_error, "bad 2");
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(dead[0].queue, "q");
    assert!(s.list_dead("q", 0).await.unwrap().is_empty());

    assert!(s.redrive("q", &ids[1], T0 + 10).await.unwrap());
    assert!(
        !s.redrive("q", &ids[1], T0 + 10).await.unwrap(),
        "not dead any more"
    );
    assert!(!s.redrive("q", "no-such-job", T0 + 10).await.unwrap());
    let stats = s.stats("q").await.unwrap();
    assert_eq!((stats.ready, stats.dead), (1, 2));
    let back = s.fetch("q", "w", 10, T0 + 10, 30_000).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].id, ids[1]);
    assert_eq!(back[0].attempt, 1, "fresh attempt budget");
    assert_eq!(back[0].payload, "b");
}

#[tokio::test]
async fn release_hands_jobs_back_without_using_the_attempt() {
    let (s, _k) = fresh().await;
    let ids: Vec<String> = s
        .push(&[job("q", "1", T0), job("q", "2", T0)], T0, DAY)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    let got = s.fetch("q", "w", 2, T0, 30_000).await.unwrap();
    assert!(got.iter().all(|j| j.attempt == 1));
    s.release("q", &ids, "w").await.unwrap();
    let stats = s.stats("q").await.unwrap();
    assert_eq!((stats.ready, stats.running), (2, 0));
    // another worker takes them at once, same attempt number
    let again = s.fetch("q", "w2", 10, T0 + 1, 30_000).await.unwrap();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|j| j.attempt == 1));
    s.release("q", &[], "w2").await.unwrap();
}

#[tokio::test]
async fn dedupe_holds_within_the_window_also_after_the_job_finished() {
    let (s, _k) = fresh().await;
    let window = 500;
    // three pushes with one key, one of them in the same batch
    let first = s
        .push(
            &[keyed("q", "1", T0, "k"), keyed("q", "2", T0, "k")],
            T0,
            window,
        )
        .await
        .unwrap();
    let third = s
        .push(&[keyed("q", "3", T0, "k")], T0 + 10, window)
        .await
        .unwrap();
    assert!(!first[0].deduplicated);
    assert!(first[1].deduplicated);
    assert!(third[0].deduplicated);
    assert_eq!(first[1].id, first[0].id);
    assert_eq!(third[0].id, first[0].id);
    assert_eq!(s.stats("q").await.unwrap().ready, 1, "one job");

    // the job finishes and is purged: the key still holds
    let got = s.fetch("q", "w", 10, T0 + 20, 30_000).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, "1");
    s.complete("q", &got[0].id, "w", T0 + 30).await.unwrap();
    assert_eq!(s.purge("q", T0 + 31, T0, 100).await.unwrap(), 1);
    let again = s
        .push(&[keyed("q", "4", T0, "k")], T0 + window - 1, window)
        .await
        .unwrap();
    assert!(again[0].deduplicated);
    assert_eq!(again[0].id, first[0].id);

    // the same key on another queue is another job
    assert!(
        !s.push(&[keyed("other", "x", T0, "k")], T0 + 40, window)
            .await
            .unwrap()[0]
            .deduplicated
    );
    // and keys are per key
    assert!(
        !s.push(&[keyed("q", "y", T0, "k2")], T0 + 40, window)
            .await
            .unwrap()[0]
            .deduplicated
    );
}

#[tokio::test]
async fn dedupe_key_expires_after_the_window() {
    let (s, _k) = fresh().await;
    let window = 300;
    let a = s
        .push(&[keyed("q", "1", T0, "k")], T0, window)
        .await
        .unwrap();
    let b = s
        .push(&[keyed("q", "2", T0, "k")], T0 + window, window)
        .await
        .unwrap();
    assert!(!b[0].deduplicated, "window over by the caller's clock");
    assert_ne!(a[0].id, b[0].id);
    // the new job holds the key for a new window
    let c = s
        .push(&[keyed("q", "3", T0, "k")], T0 + window + 1, window)
        .await
        .unwrap();
    assert!(c[0].deduplicated);
    assert_eq!(c[0].id, b[0].id);
    // real time: the key is gone from Redis once its garbage TTL (2 x window) passed
    tokio::time::sleep(Duration::from_millis(2 * window as u64 + 100)).await;
    let d = s
        .push(&[keyed("q", "4", T0, "k")], T0 + window + 2, window)
        .await
        .unwrap();
    assert!(!d[0].deduplicated);
    assert_eq!(s.stats("q").await.unwrap().ready, 3);
}

#[tokio::test]
async fn twenty_thousand_jobs_due_at_once_are_fetched_in_bounded_batches() {
    let (s, _k) = fresh().await;
    let due = T0 + 60_000;
    let jobs: Vec<NewJob> = (0..20_000)
        .map(|i| job("bulk", &format!("{{\"i\":{i}}}"), due))
        .collect();
    let pushed = s.push(&jobs, T0, DAY).await.unwrap();
    assert_eq!(pushed.len(), 20_000);
    assert_eq!(s.stats("bulk").await.unwrap().scheduled, 20_000);

    // all 20,000 become due at once
    let mut seen = HashSet::new();
    let mut calls = 0;
    loop {
        let got = s.fetch("bulk", "w", 100, due, 10_000).await.unwrap();
        calls += 1;
        assert!(got.len() <= 100);
        if calls == 1 {
            // one call promoted one bounded batch, not all 20,000
            let stats = s.stats("bulk").await.unwrap();
            assert_eq!(
                (stats.ready, stats.scheduled, stats.running),
                (0, 19_900, 100)
            );
        }
        if got.is_empty() {
            break;
        }
        for j in got {
            assert_eq!(j.attempt, 1);
            assert!(seen.insert(j.id));
        }
        assert!(calls < 1_000, "no progress");
    }
    assert_eq!(seen.len(), 20_000);
    let stats = s.stats("bulk").await.unwrap();
    assert_eq!(
        (stats.ready, stats.scheduled, stats.running),
        (0, 0, 20_000)
    );

    // and all 20,000 leases expire at once (a killed process): reclaimed in bounded batches
    let mut again = HashSet::new();
    loop {
        let got = s
            .fetch("bulk", "w2", 100, due + 10_000, 10_000)
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        for j in got {
            assert_eq!(j.attempt, 2);
            again.insert(j.id);
        }
    }
    assert_eq!(again, seen);
}

#[tokio::test]
async fn push_of_many_ready_jobs_keeps_order_of_results() {
    let (s, _k) = fresh().await;
    let mut jobs: Vec<NewJob> = (0..2_500).map(|i| job("q", &i.to_string(), T0)).collect();
    jobs[10].dedupe_key = Some("same".into());
    jobs[2_400].dedupe_key = Some("same".into()); // in a later chunk
    let pushed = s.push(&jobs, T0, DAY).await.unwrap();
    assert_eq!(pushed.len(), 2_500);
    assert!(pushed[2_400].deduplicated);
    assert_eq!(pushed[2_400].id, pushed[10].id);
    assert_eq!(pushed.iter().filter(|p| p.deduplicated).count(), 1);
    assert_eq!(s.stats("q").await.unwrap().ready, 2_499);
    let first = s.fetch("q", "w", 3, T0, 1_000).await.unwrap();
    let payloads: Vec<_> = first.iter().map(|j| j.payload.as_str()).collect();
    assert_eq!(payloads, ["0", "1", "2"]);
    assert_eq!(first[0].id, pushed[0].id);
}

#[tokio::test]
async fn purge_deletes_old_finished_and_dead_jobs_up_to_limit() {
    let (s, _k) = fresh().await;
    let ids: Vec<String> = s
        .push(
            &(0..6)
                .map(|i| job("q", &i.to_string(), T0))
                .collect::<Vec<_>>(),
            T0,
            DAY,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    s.fetch("q", "w", 6, T0, 30_000).await.unwrap();
    for (i, id) in ids[..3].iter().enumerate() {
        s.complete("q", id, "w", T0 + i as i64 * 100).await.unwrap(); // finished at T0, +100, +200
    }
    for (i, id) in ids[3..].iter().enumerate() {
        s.kill("q", id, "w", T0 + i as i64 * 100, "x")
            .await
            .unwrap(); // died at T0, +100, +200
    }
    // finished before T0+150 (two), dead before T0+50 (one), limit 2
    assert_eq!(s.purge("q", T0 + 150, T0 + 50, 2).await.unwrap(), 2);
    assert_eq!(
        s.stats("q").await.unwrap().dead,
        3,
        "limit reached on finished jobs"
    );
    assert_eq!(s.purge("q", T0 + 150, T0 + 50, 10).await.unwrap(), 1);
    assert_eq!(s.stats("q").await.unwrap().dead, 2);
    assert_eq!(s.purge("q", T0 + 150, T0 + 50, 10).await.unwrap(), 0);
    assert_eq!(s.purge("q", T0 + 1_000, T0 + 1_000, 0).await.unwrap(), 0);
    // purged job hashes are gone: a purged dead job cannot be redriven
    assert!(!s.redrive("q", &ids[3], T0).await.unwrap());
    assert!(s.redrive("q", &ids[4], T0).await.unwrap());
    assert_eq!(
        s.purge("q", T0 + 1_000, T0 + 1_000, 10).await.unwrap(),
        2,
        "one finished + one dead left"
    );

    let client = redis::Client::open(URL).unwrap();
    let mut conn = client.get_connection().unwrap();
    for id in &ids[..4] {
        let exists: bool = redis::cmd("EXISTS")
            .arg(format!("{}:job:{id}", s.prefix()))
            .query(&mut conn)
            .unwrap();
        assert!(!exists, "job hash {id} deleted");
    }
}

#[tokio::test]
async fn cron_tick_is_claimed_exactly_once_by_twenty_concurrent_claimers() {
    let p = prefix();
    let _k = Keys {
        url: URL.into(),
        prefix: p.clone(),
    };
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(store_at(URL, &p).await);
    }
    assert_eq!(stores[0].last_tick("daily").await.unwrap(), None);
    for tick in [T0, T0 + 60_000, T0 + 120_000] {
        let barrier = Arc::new(tokio::sync::Barrier::new(20));
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let s = stores[i % stores.len()].clone();
                let b = barrier.clone();
                tokio::spawn(async move {
                    b.wait().await;
                    s.claim_tick("daily", tick).await.unwrap()
                })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            wins += usize::from(t.await.unwrap());
        }
        assert_eq!(wins, 1, "tick {tick}");
        assert_eq!(stores[1].last_tick("daily").await.unwrap(), Some(tick));
    }
    // an older tick caught up late is claimable once, and does not move last_tick back
    assert!(stores[0].claim_tick("daily", T0 - 60_000).await.unwrap());
    assert!(!stores[2].claim_tick("daily", T0 - 60_000).await.unwrap());
    assert_eq!(
        stores[0].last_tick("daily").await.unwrap(),
        Some(T0 + 120_000)
    );
    // schedules are independent
    assert!(stores[0].claim_tick("hourly", T0).await.unwrap());
}

#[tokio::test]
async fn push_from_another_instance_wakes_a_waiter() {
    let p = prefix();
    let _k = Keys {
        url: URL.into(),
        prefix: p.clone(),
    };
    let waiter = store_at(URL, &p).await;
    let pusher = store_at(URL, &p).await;

    // nothing pushed: times out with false, without hanging
    let started = Instant::now();
    assert!(!waiter.wait_for_push("q", 200).await.unwrap());
    assert!(started.elapsed() >= Duration::from_millis(200));

    let mut latencies = Vec::new();
    for round in 0..20 {
        assert!(waiter.fetch("q", "w", 10, T0, 30_000).await.unwrap().len() <= 1);
        let w = waiter.clone();
        let wait = tokio::spawn(async move {
            let r = w.wait_for_push("q", 10_000).await.unwrap();
            (r, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let pushed_at = Instant::now();
        pusher
            .push(&[job("q", &round.to_string(), T0)], T0, DAY)
            .await
            .unwrap();
        let (woken, at) = wait.await.unwrap();
        assert!(
            woken,
            "round {round}: woken by the push, not by the 10 s timeout"
        );
        latencies.push(at.duration_since(pushed_at));
    }
    latencies.sort();
    eprintln!(
        "wake-up latency push->waiter (incl. push round trip): p50 {:?} max {:?}",
        latencies[10], latencies[19]
    );

    // a push between fetch and wait is not lost
    waiter.fetch("q", "w", 10, T0, 30_000).await.unwrap();
    pusher.push(&[job("q", "late", T0)], T0, DAY).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(waiter.wait_for_push("q", 5_000).await.unwrap());
    // and does not wake the next wait again
    assert!(!waiter.wait_for_push("q", 100).await.unwrap());

    // a push to another queue does not wake this one
    pusher
        .push(&[job("other", "x", T0)], T0, DAY)
        .await
        .unwrap();
    assert!(!waiter.wait_for_push("q", 200).await.unwrap());
}

#[tokio::test]
async fn retry_release_and_redrive_wake_waiters() {
    let p = prefix();
    let _k = Keys {
        url: URL.into(),
        prefix: p.clone(),
    };
    let waiter = store_at(URL, &p).await;
    let actor = store_at(URL, &p).await;
    let id = actor.push(&[job("q", "{}", T0)], T0, DAY).await.unwrap()[0]
        .id
        .clone();

    actor.fetch("q", "w", 1, T0, 30_000).await.unwrap();
    waiter.fetch("q", "idle", 1, T0, 30_000).await.unwrap();
    let w = waiter.clone();
    let wait = tokio::spawn(async move { w.wait_for_push("q", 10_000).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    actor
        .release("q", std::slice::from_ref(&id), "w")
        .await
        .unwrap();
    assert!(wait.await.unwrap(), "release wakes");

    actor.fetch("q", "w", 1, T0, 30_000).await.unwrap();
    waiter.fetch("q", "idle", 1, T0, 30_000).await.unwrap();
    let w = waiter.clone();
    let wait = tokio::spawn(async move { w.wait_for_push("q", 10_000).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    actor
        .retry("q", &id, "w", T0 + 5_000, "later")
        .await
        .unwrap();
    assert!(
        wait.await.unwrap(),
        "retry wakes (idle workers re-read next_due_ms)"
    );

    let got = actor.fetch("q", "w", 1, T0 + 5_000, 30_000).await.unwrap();
    assert_eq!(got.len(), 1);
    actor.kill("q", &id, "w", T0 + 5_000, "no").await.unwrap();
    waiter.fetch("q", "idle", 1, T0, 30_000).await.unwrap();
    let w = waiter.clone();
    let wait = tokio::spawn(async move { w.wait_for_push("q", 10_000).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(actor.redrive("q", &id, T0 + 6_000).await.unwrap());
    assert!(wait.await.unwrap(), "redrive wakes");
}

#[tokio::test]
async fn setup_is_idempotent_and_ping_works() {
    let (s, _k) = fresh().await;
    s.setup().await.unwrap();
    s.ping().await.unwrap();
    assert!(
        RedisStore::connect(URL, "").await.is_err(),
        "empty prefix refused"
    );
    assert!(RedisStore::connect("not a url", "p").await.is_err());
}

// ---------------------------------------------------------------------------
// A redis-server of our own, to stop, freeze and restart.

struct OwnRedis {
    port: u16,
    child: Option<Child>,
    dir: std::path::PathBuf,
}

impl OwnRedis {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "redis-store-test-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for _ in 0..20 {
            let port = 16_379 + rand::random_range(0..20_000u16);
            let mut me = Self {
                port,
                child: None,
                dir: dir.clone(),
            };
            if me.spawn() {
                return me;
            }
        }
        panic!("could not start redis-server on a spare port");
    }

    /// Starts redis-server on `self.port`; true once it answers PING.
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let _ = status;
                self.child = None;
                return false; // port taken
            }
            if let Ok(client) = redis::Client::open(self.url().as_str())
                && let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn pid(&self) -> String {
        self.child.as_ref().expect("running").id().to_string()
    }

    /// SHUTDOWN NOSAVE: all data is lost.
    fn shutdown(&mut self) {
        let client = redis::Client::open(self.url().as_str()).unwrap();
        let mut c = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap();
        let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").arg("NOSAVE").query(&mut c);
        let mut child = self.child.take().expect("running");
        child.wait().unwrap();
    }

    fn restart(&mut self) {
        assert!(self.spawn(), "restart redis-server on port {}", self.port);
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `f` until it succeeds (at most `within`).
async fn eventually<T, E: std::fmt::Debug, F: std::future::Future<Output = Result<T, E>>>(
    within: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("still failing after {within:?}: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn redis_restart_without_data_fails_calls_promptly_then_recovers() {
    let mut server = OwnRedis::start();
    let url = server.url();
    let p = prefix();
    let store = store_at(&url, &p).await;
    let other = store_at(&url, &p).await;
    let id = store.push(&[job("q", "{}", T0)], T0, DAY).await.unwrap()[0]
        .id
        .clone();
    let leased = store.fetch("q", "w", 1, T0, 30_000).await.unwrap();
    assert_eq!(leased.len(), 1);

    server.shutdown();

    // every call fails with Err, and does not hang
    let started = Instant::now();
    for _ in 0..3 {
        let r = tokio::time::timeout(
            Duration::from_secs(15),
            store.fetch("q", "w", 1, T0, 30_000),
        )
        .await;
        assert!(matches!(r, Ok(Err(_))), "fetch while down: {r:?}");
        let r = tokio::time::timeout(
            Duration::from_secs(15),
            store.push(&[job("q", "{}", T0)], T0, DAY),
        )
        .await;
        assert!(matches!(r, Ok(Err(_))), "push while down: {r:?}");
        let r =
            tokio::time::timeout(Duration::from_secs(15), store.complete("q", &id, "w", T0)).await;
        assert!(matches!(r, Ok(Err(_))), "complete while down: {r:?}");
        let r = tokio::time::timeout(Duration::from_secs(15), store.ping()).await;
        assert!(matches!(r, Ok(Err(_))), "ping while down: {r:?}");
    }
    eprintln!(
        "12 calls while Redis was down failed in {:?}",
        started.elapsed()
    );
    // waiting never hangs past its timeout
    let r = tokio::time::timeout(Duration::from_secs(5), store.wait_for_push("q", 300)).await;
    assert!(matches!(r, Ok(Ok(false))), "wait while down: {r:?}");

    server.restart();

    // the same store works again, without being recreated; all data was lost
    eventually(Duration::from_secs(15), || store.ping()).await;
    assert!(
        eventually(Duration::from_secs(5), || store
            .fetch("q", "w", 10, T0, 30_000))
        .await
        .is_empty()
    );
    // an ack for a job the restart lost is ignored, not an error
    store.complete("q", &id, "w", T0 + 1).await.unwrap();
    assert_eq!(store.stats("q").await.unwrap(), Default::default());
    // scripts were lost with the restart and are loaded again
    let after = [job("q", "after", T0)];
    let pushed = eventually(Duration::from_secs(5), || other.push(&after, T0, DAY)).await;
    let got = store.fetch("q", "w", 10, T0, 30_000).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, pushed[0].id);

    // wake-ups work again across instances (the subscription reconnected)
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        store.fetch("q", "w", 10, T0, 30_000).await.unwrap();
        let s = store.clone();
        let wait = tokio::spawn(async move { s.wait_for_push("q", 2_000).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        other.push(&[job("q", "wake", T0)], T0, DAY).await.unwrap();
        if wait.await.unwrap() {
            break;
        }
        assert!(Instant::now() < deadline, "no wake-up after the restart");
    }
}

#[tokio::test]
async fn frozen_redis_makes_calls_fail_within_the_deadline_then_recover() {
    let server = OwnRedis::start();
    let url = server.url();
    let config = RedisStoreConfig {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(1),
        call_timeout: Duration::from_secs(2),
    };
    let store = RedisStore::connect_with(&url, &prefix(), config)
        .await
        .unwrap();
    store.setup().await.unwrap();
    store.push(&[job("q", "{}", T0)], T0, DAY).await.unwrap();

    server.signal("-STOP");
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        store.fetch("q", "w", 1, T0, 30_000),
    )
    .await;
    let r2 = tokio::time::timeout(Duration::from_secs(10), store.stats("q")).await;
    server.signal("-CONT");
    assert!(matches!(r, Ok(Err(_))), "fetch on a frozen server: {r:?}");
    assert!(matches!(r2, Ok(Err(_))), "stats on a frozen server: {r2:?}");
    eprintln!(
        "two calls on a frozen Redis failed in {:?}",
        started.elapsed()
    );

    let stats = eventually(Duration::from_secs(10), || store.stats("q")).await;
    // the fetch may or may not have run on the server once it resumed
    assert_eq!(stats.ready + stats.running, 1);
}
