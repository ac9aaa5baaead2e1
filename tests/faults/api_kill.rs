//! Fault 5: an API process is SIGKILLed while clients submit with an
//! `Idempotency-Key`; each client retries the same key (alternating between
//! the two APIs; each is killed once and restarted on a new port) until it
//! gets 202. No request may exist twice: requests == distinct keys.
use std::{
    collections::HashSet,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};

use crate::{
    cluster::{Cluster, MANUAL_KINDS, serial},
    submit::wait_count,
};

const N: usize = 1000;

#[derive(Default)]
struct Tally {
    attempts: AtomicUsize,
    conn_errors: AtomicUsize,
    timeouts: AtomicUsize,
    server_errors: AtomicUsize,
    conflicts: AtomicUsize,
    replayed: AtomicUsize,
    done: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_sigkill_with_idempotent_retries_makes_no_duplicates() {
    let _serial = serial().await;
    let started = Instant::now();
    let mut c = Cluster::new(&[]).await;
    let a = c.spawn("api").await;
    let b = c.spawn("api").await;
    c.spawn("worker").await;
    let slots = c.fixture(&c.procs[a].base(), N, MANUAL_KINDS).await;
    let bases = Arc::new(RwLock::new(vec![c.procs[a].base(), c.procs[b].base()]));
    let tally = Arc::new(Tally::default());
    let run_id = uuid::Uuid::new_v4().simple().to_string();

    let clients = {
        let (client, bases, tally) = (c.client.clone(), bases.clone(), tally.clone());
        tokio::spawn(async move {
            stream::iter(slots.into_iter().enumerate())
                .map(|(i, slot)| {
                    let (client, bases, tally) = (client.clone(), bases.clone(), tally.clone());
                    let key = format!("f5-{run_id}-{i}");
                    async move {
                        let t0 = Instant::now();
                        for attempt in 0usize.. {
                            assert!(
                                t0.elapsed() < Duration::from_secs(90),
                                "client {i} got no 202 in 90 s"
                            );
                            let base = {
                                let b = bases.read().unwrap();
                                b[(i + attempt) % b.len()].clone()
                            };
                            tally.attempts.fetch_add(1, Ordering::Relaxed);
                            let sent = client
                                .post(format!("{base}{}", slot.path()))
                                .bearer_auth(&slot.key)
                                .header("Idempotency-Key", &key)
                                // Half the clients give up on their first try
                                // almost at once (the server may still commit),
                                // so retries of committed keys are common, not
                                // only those the kills cause.
                                .timeout(if attempt == 0 && i % 2 == 0 {
                                    Duration::from_millis(15)
                                } else {
                                    Duration::from_secs(10)
                                })
                                .json(&slot.body())
                                .send()
                                .await;
                            let r = match sent {
                                Ok(r) => r,
                                Err(e) => {
                                    if e.is_timeout() {
                                        tally.timeouts.fetch_add(1, Ordering::Relaxed);
                                    } else {
                                        tally.conn_errors.fetch_add(1, Ordering::Relaxed);
                                    }
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                    continue;
                                }
                            };
                            let status = r.status().as_u16();
                            let replayed = r.headers().contains_key("idempotent-replayed");
                            let Ok(text) = r.text().await else {
                                tally.conn_errors.fetch_add(1, Ordering::Relaxed);
                                continue;
                            };
                            match status {
                                202 => {
                                    if replayed {
                                        tally.replayed.fetch_add(1, Ordering::Relaxed);
                                    }
                                    tally.done.fetch_add(1, Ordering::Relaxed);
                                    let v: serde_json::Value =
                                        serde_json::from_str(&text).expect("JSON");
                                    return (key, v["id"].as_str().expect("id").to_string());
                                }
                                409 => {
                                    tally.conflicts.fetch_add(1, Ordering::Relaxed);
                                }
                                s if s >= 500 => {
                                    tally.server_errors.fetch_add(1, Ordering::Relaxed);
                                }
                                s => panic!("client {i}: unexpected {s}: {text}"),
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        unreachable!()
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<(String, String)>>()
                .await
        })
    };

    // SIGKILL API A at a third, then API B at two thirds; each is restarted
    // (on a new port) a second later and the clients told its address.
    let mut done_at_kill = Vec::new();
    for (slot, victim, at) in [(0, a, N / 3), (1, b, 2 * N / 3)] {
        wait_count(&tally.done, at, Duration::from_secs(120)).await;
        done_at_kill.push(tally.done.load(Ordering::Relaxed));
        c.procs[victim].kill9();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let new = c.spawn("api").await;
        bases.write().unwrap()[slot] = c.procs[new].base();
    }
    let answers = clients.await.expect("clients");

    let keys: HashSet<&String> = answers.iter().map(|(k, _)| k).collect();
    let ids: HashSet<&String> = answers.iter().map(|(_, id)| id).collect();
    let requests = c.scalar("SELECT COUNT(*) FROM requests").await;
    let distinct_ids = ids.len();
    let idem_rows = c.scalar("SELECT COUNT(*) FROM idempotency_keys").await;
    let id_list: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    c.wait_status(&id_list, "in_review", Duration::from_secs(120))
        .await;
    let dead = c.dead();
    assert!(dead.is_empty(), "a process died: {dead:?}");

    assert_eq!(keys.len(), N, "every client got a 202");
    assert_eq!(distinct_ids, N, "one request id per key");
    assert_eq!(
        requests, N as i64,
        "requests == distinct keys: no duplicates"
    );
    assert_eq!(idem_rows, N as i64);

    let t = &tally;
    println!(
        "FAULT 5 (APIs SIGKILLed under {N} clients retrying with Idempotency-Key; 2 APIs, each killed once and restarted):"
    );
    println!(
        "  API A SIGKILLed after {} clients had their 202, API B after {}",
        done_at_kill[0], done_at_kill[1]
    );
    println!(
        "  attempts {}, connection errors {}, client timeouts (15 ms first tries) {}, 5xx {}, 409 in-progress {}, replayed 202s {}",
        t.attempts.load(Ordering::Relaxed),
        t.conn_errors.load(Ordering::Relaxed),
        t.timeouts.load(Ordering::Relaxed),
        t.server_errors.load(Ordering::Relaxed),
        t.conflicts.load(Ordering::Relaxed),
        t.replayed.load(Ordering::Relaxed)
    );
    println!(
        "  distinct keys {}, distinct ids {distinct_ids}, requests in DB {requests}: duplicates {}",
        keys.len(),
        requests - keys.len() as i64
    );
    println!("  test time {:.1} s", started.elapsed().as_secs_f64());
    c.shutdown().await;
}
