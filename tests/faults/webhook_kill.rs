//! Fault 6: webhook deliveries in flight when a worker is SIGKILLed. The
//! receiver (in this test process, on loopback) records each call on
//! arrival and holds its answer 1 s, so with more calls held than one
//! worker runs at once (16) the killed worker dies holding deliveries it has
//! sent but not yet recorded; they come back after the lease (4 s) and are sent again.
//! Every event must arrive at least once; duplicates (same `webhook-id`)
//! are counted and printed, as a receiver that dedupes by `webhook-id` sees
//! them.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use serde_json::json;

use crate::{
    cluster::{Cluster, serial},
    webhook_receiver::{Receiver, signed_by},
};

const N: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sigkill_mid_delivery_delivers_every_event_at_least_once() {
    let _serial = serial().await;
    let started = Instant::now();
    let mut c = Cluster::new(&[
        ("APPROVALD__WEBHOOKS__ALLOW_HTTP", "true"),
        ("APPROVALD__WEBHOOKS__ALLOW_PRIVATE", "true"),
        (
            "APPROVALD__WEBHOOKS__RETRY_SCHEDULE_SECS",
            "[1, 1, 1, 1, 1]",
        ),
    ])
    .await;
    let api = c.spawn("api").await;
    let w1 = c.spawn("worker").await;
    c.spawn("worker").await;
    let base = c.procs[api].base();
    let rx = Receiver::start().await;
    rx.set_delay_ms(1000);

    let (s, org) = c
        .post(
            &base,
            "/v1/orgs",
            &c.platform_key,
            json!({"name": "Hooked", "region": "cn", "locale": "en",
                   "owner": {"login_id": "hook_owner", "name": "Owner", "email": "owner@example.com"}}),
        )
        .await;
    assert_eq!(s, 201, "{org}");
    let org = org["id"].as_str().unwrap().to_string();
    let (s, k) = c
        .post(
            &base,
            &format!("/v1/orgs/{org}/keys"),
            &c.platform_key,
            json!({}),
        )
        .await;
    assert_eq!(s, 201, "{k}");
    let key = k["key"].as_str().unwrap().to_string();
    let (s, ep) = c
        .post(
            &base,
            &format!("/v1/orgs/{org}/webhooks"),
            &key,
            json!({"url": rx.url(), "events": ["request.submitted"]}),
        )
        .await;
    assert_eq!(s, 201, "{ep}");
    let secret = ep["secret"].as_str().unwrap().to_string();

    let t0 = Instant::now();
    let submitting = {
        let (client, base, key, org) = (c.client.clone(), base.clone(), key.clone(), org.clone());
        tokio::spawn(async move {
            stream::iter(0..N)
                .map(|i| {
                    let (client, base, key, org) =
                        (client.clone(), base.clone(), key.clone(), org.clone());
                    async move {
                        let r = client
                            .post(format!("{base}/v1/orgs/{org}/requests"))
                            .bearer_auth(&key)
                            .json(&json!({"kind": "ftp_access", "remark": format!("webhook fault {i}")}))
                            .send()
                            .await
                            .expect("submit");
                        assert_eq!(r.status().as_u16(), 202);
                    }
                })
                .buffer_unordered(8)
                .collect::<Vec<()>>()
                .await
        })
    };
    // Kill one worker once a quarter of the events have arrived.
    while rx.hits().len() < N / 4 {
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "only {} webhooks after 180 s",
            rx.hits().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both workers busy: more calls held than one worker runs at once.
    while rx.held() <= 16 {
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "never more than 16 calls in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let held_at_kill = rx.held();
    let arrived_at_kill = rx.hits().len();
    let in_flight = c
        .scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'")
        .await;
    c.procs[w1].kill9();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.spawn("worker").await;
    submitting.await.expect("submissions");

    loop {
        let delivered = c
            .scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'delivered'")
            .await;
        if delivered == N as i64 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(180),
            "{delivered}/{N} delivered 180 s after the kill"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_done = t0.elapsed();
    let dead = c.dead();
    assert!(dead.is_empty(), "a process died: {dead:?}");

    let hits = rx.hits();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for h in &hits {
        assert!(signed_by(h, &secret), "bad signature on {}", h.body);
        *per_id.entry(h.id.as_str()).or_default() += 1;
    }
    let events = c
        .scalar("SELECT COUNT(*) FROM webhook_events WHERE type = 'request.submitted'")
        .await;
    let failed = c
        .scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE status <> 'delivered'")
        .await;
    let duplicates = hits.len() - per_id.len();
    let ids_twice = per_id.values().filter(|&&n| n > 1).count();
    assert_eq!(events, N as i64, "one event per request");
    assert_eq!(per_id.len(), N, "every event arrived at least once");
    assert_eq!(failed, 0);

    println!(
        "FAULT 6 ({N} webhook events, 2 workers, one SIGKILLed mid-delivery and restarted; receiver answers after 1 s; lease 4 s):"
    );
    println!(
        "  killed after {arrived_at_kill} arrivals, {held_at_kill} calls in flight ({in_flight} deliveries pending); all {N} delivered {:.1} s after the first submit ({:.1} s after the kill)",
        all_done.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    println!(
        "  received {} calls for {} events: lost 0, duplicates {duplicates} ({ids_twice} ids more than once; receivers dedupe by webhook-id)",
        hits.len(),
        per_id.len()
    );
    println!("  test time {:.1} s", started.elapsed().as_secs_f64());
    c.shutdown().await;
}
