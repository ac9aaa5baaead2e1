//! Fault 1: Redis is down while 2,000 requests are submitted. The API keeps
//! answering 202 (request and outbox row are in PostgreSQL); when Redis is
//! back the outbox relay pushes every review job and each request reaches
//! `in_review`. The API and the worker are SIGKILLed and restarted during
//! the outage (they must start without Redis). No scheduler runs here, so
//! the reconciler cannot hide a relay that loses rows: recovery is the
//! outbox's alone.
use std::{
    sync::{Arc, atomic::AtomicUsize},
    time::{Duration, Instant},
};

use crate::{
    cluster::{Cluster, MANUAL_KINDS, serial},
    submit::{ids, submit_all},
};

const N: usize = 2000;

async fn readyz(c: &Cluster, base: &str) -> u16 {
    c.client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_while_submitting_then_back_loses_nothing() {
    let _serial = serial().await;
    let started = Instant::now();
    let mut c = Cluster::new(&[]).await;
    let api0 = c.spawn("api").await;
    let worker0 = c.spawn("worker").await;
    let slots = c.fixture(&c.procs[api0].base(), N, MANUAL_KINDS).await;

    c.redis.kill();
    // Processes (re)started during the outage must come up: SIGKILL both and
    // start new ones while Redis is still down.
    c.procs[api0].kill9();
    c.procs[worker0].kill9();
    let t_start = Instant::now();
    let api = c.spawn("api").await;
    c.spawn("worker").await;
    let start_during_outage = t_start.elapsed();
    let base = c.procs[api].base();
    let ready_down = readyz(&c, &base).await;
    let t0 = Instant::now();
    let accepted = submit_all(
        c.client.clone(),
        vec![base.clone()],
        slots,
        16,
        Arc::new(AtomicUsize::new(0)),
    )
    .await;
    let submit_time = t0.elapsed();
    let ids = ids(&accepted);
    assert_eq!(ids.len(), N, "every submission answered 202");
    // Redis is still down: nothing can have been pushed or reviewed.
    assert_eq!(c.count_status(&ids, "submitted").await, N as i64);
    let unsent = c
        .scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
        .await;
    assert_eq!(
        unsent, N as i64,
        "one unsent outbox row per accepted request"
    );
    // Keep Redis down a little longer than the submissions took, so the
    // relay and the workers are deep in their retry backoff.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let down_for = t0.elapsed();
    let dead = c.dead();
    assert!(
        dead.is_empty(),
        "a process died during the Redis outage: {dead:?}"
    );

    c.redis.restart().await;
    let back = Instant::now();
    loop {
        let left = c
            .scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL AND queue = 'review'")
            .await;
        if left == 0 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(120),
            "{left} review jobs still not relayed after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let relayed = back.elapsed();
    c.wait_status(&ids, "in_review", Duration::from_secs(120))
        .await;
    let recover = back.elapsed();
    let ready_up = readyz(&c, &base).await;
    assert_eq!(
        ready_down, 503,
        "/readyz tells the truth while Redis is down"
    );
    assert_eq!(ready_up, 200, "/readyz is ready again once Redis is back");
    let dead = c.dead();
    assert!(dead.is_empty(), "a process died: {dead:?}");
    let in_review = c.count_status(&ids, "in_review").await;
    let mail = c.wait_mail_sent(Duration::from_secs(60)).await;
    assert_eq!(
        c.scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")
            .await,
        0,
        "outbox fully relayed"
    );
    let emails = c.scalar("SELECT COUNT(*) FROM emails").await;

    println!("FAULT 1 (Redis down during {N} submissions):");
    println!(
        "  accepted (202): {} of {N}, in {:.1} s with Redis down ({:.0}/s)",
        ids.len(),
        submit_time.as_secs_f64(),
        N as f64 / submit_time.as_secs_f64()
    );
    println!(
        "  outbox rows unsent while down: {unsent}; Redis down for {:.1} s; /readyz down={ready_down} up={ready_up}",
        down_for.as_secs_f64()
    );
    println!(
        "  reached in_review: {in_review} of {N}; lost: {}",
        N as i64 - in_review
    );
    println!(
        "  time to recover (Redis back -> all in_review): {:.1} s (all review jobs relayed after {:.1} s); review mails sent {:.1} s later ({emails} emails)",
        recover.as_secs_f64(),
        relayed.as_secs_f64(),
        mail.as_secs_f64()
    );
    println!(
        "  api and worker SIGKILLed and restarted while Redis was down: both up in {:.1} s",
        start_during_outage.as_secs_f64()
    );
    println!(
        "  processes died: 0; test time {:.1} s",
        started.elapsed().as_secs_f64()
    );
    c.shutdown().await;
}
