//! The outbox relay (production profile: jobs written in a transaction go
//! to the `outbox` table, and a relay pushes them to Redis): every process
//! relays what its own commits wrote, and relays of several processes push
//! disjoint rows.
use std::time::Duration;

use crate::{
    harness::{Opts, TestApp},
    review_util::{outbox, reviewer, submit_ftp, wait_emails_final},
};

/// Workers write jobs too (a review's mails and its SLA timers). With the
/// api stopped and only a worker running, the worker relays what its own
/// jobs wrote to the outbox (production profile; on the embedded profile
/// the jobs are written straight into the queue), so the mail goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_alone_sends_the_mails_its_jobs_write() {
    let mut t = TestApp::spawn_with(Opts {
        role: Some(approvald::Role::Api),
        ..Default::default()
    })
    .await;
    let (org, key, _) = t.create_org("Worker Only", "cn").await;
    reviewer(&t, "alone@example.com", "en").await;
    submit_ftp(&t, &org, &key, "remark").await;
    if !t.app.queue_in_db {
        t.eventually("the api relays the review job", || async {
            t.count("outbox WHERE sent_at IS NULL").await == 0
        })
        .await;
    }

    // From here on only a worker runs: nothing else relays the outbox.
    t.restart_as(approvald::Role::Worker).await;
    let rows = wait_emails_final(&t, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0].status, "sent", "{rows:#?}");
    assert_eq!(outbox(&t).len(), 1);
    assert_eq!(t.count("requests WHERE status = 'in_review'").await, 1);
    t.finish().await;
}

/// Two processes' relays: rows another relay has claimed are skipped, not
/// waited for and not pushed a second time; once it lets go, they are
/// relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_skips_the_rows_another_relay_holds() {
    let mut t = TestApp::spawn().await;
    let approvald::db::Db::Postgres(pool) = &t.app.db else {
        assert!(t.app.queue_in_db, "an embedded database with a Redis queue");
        // Embedded: jobs go straight into the queue in the database; no
        // outbox, no relay.
        return;
    };
    let pool = pool.clone();
    // This process's own relay stops with it; the test relays by hand.
    t.stop().await;
    for i in 0..10_i64 {
        sqlx::query(
            "INSERT INTO outbox (id, queue, payload, run_at, dedupe_key, max_attempts, created_at) \
             VALUES ($1, 'relay_test', '{}', 0, NULL, 3, $2)",
        )
        .bind(format!("row{i:02}"))
        .bind(i)
        .execute(&pool)
        .await
        .unwrap();
    }
    let unsent = || async {
        sqlx::query_scalar::<_, String>("SELECT id FROM outbox WHERE sent_at IS NULL ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap()
    };

    // Another process's relay is pushing the first five.
    let mut other = pool.begin().await.unwrap();
    let held: Vec<String> =
        sqlx::query_scalar("SELECT id FROM outbox WHERE id < 'row05' ORDER BY id FOR UPDATE")
            .fetch_all(&mut *other)
            .await
            .unwrap();
    assert_eq!(held.len(), 5);
    let relayed = tokio::time::timeout(
        Duration::from_secs(10),
        approvald::jobs::relay::relay_once(&t.app, 100),
    )
    .await
    .expect("the relay does not wait for rows another relay holds")
    .unwrap();
    assert_eq!(relayed, 5, "only the rows nobody holds");
    assert_eq!(unsent().await, held);

    // It lets go (its push failed): this relay takes them.
    other.rollback().await.unwrap();
    let relayed = approvald::jobs::relay::relay_once(&t.app, 100)
        .await
        .unwrap();
    assert_eq!(relayed, 5);
    assert!(unsent().await.is_empty());
    let stats = t.app.queue.stats("relay_test").await.unwrap();
    assert_eq!(stats.ready, 10, "each row pushed once: {stats:?}");
}
