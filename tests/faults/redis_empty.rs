//! Fault 3: Redis restarts empty (SHUTDOWN NOSAVE, started again) in the
//! middle of 2,000 submissions. Review jobs already pushed are gone; the
//! reconciler (the sweep, every 2 s here, `sla.reconcile_after_secs` = 3)
//! re-pushes them from the database. SLA timers lost with Redis: deadlines
//! and reminders that come due are still handled, once, by the sweep. Mail
//! is failing before the restart, so notify jobs waiting for their retry are
//! lost too; the reconciler re-pushes them and every mail goes out.
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    cluster::{Cluster, MANUAL_KINDS, serial},
    submit::{ids, submit_all, wait_count},
};

const N: usize = 2000;
/// Mails tried and waiting for their next attempt (its job is in Redis).
const RETRYING_MAILS: &str =
    "SELECT COUNT(*) FROM emails WHERE status = 'pending' AND attempts > 0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_reconciler_restores_jobs_and_timers() {
    let _serial = serial().await;
    let started = Instant::now();
    let mut c = Cluster::new(&[
        ("APPROVALD__SLA__SWEEP_CRON", "*/2 * * * * *"),
        ("APPROVALD__SLA__RECONCILE_AFTER_SECS", "3"),
        ("APPROVALD__MAIL__RETRY_BASE_MS", "1000"),
    ])
    .await;
    let api = c.spawn("api").await;
    c.spawn("worker").await;
    c.spawn("worker").await;
    c.spawn("scheduler").await;
    let base = c.procs[api].base();
    let slots = c.fixture(&base, N, MANUAL_KINDS).await;

    // Mail is down until the restart (a plain file where the outbox folder
    // should be: the file transport fails transiently), so the notify jobs
    // of the first half sit in Redis waiting for their retry, and die with
    // it: only the reconciler can send those mails.
    let held = c.dir.path().join("outbox.held");
    if c.outbox.exists() {
        std::fs::rename(&c.outbox, &held).unwrap();
    } else {
        std::fs::create_dir_all(&held).unwrap();
    }
    std::fs::write(&c.outbox, b"mail is down").unwrap();

    let done = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let submitting = tokio::spawn(submit_all(
        c.client.clone(),
        vec![base.clone()],
        slots,
        16,
        done.clone(),
    ));
    wait_count(&done, N / 2, Duration::from_secs(120)).await;
    // Restart while review jobs are waiting (the workers may keep pace with
    // the submitters for a while) and mails wait for their retry, i.e. were
    // tried once and failed (the submitters may outrun the workers, which
    // then have tried none yet; a mail not tried yet may still have its
    // first job in the outbox table, which survives): only a lost backlog
    // of both proves the reconciler. After the last submit the workers
    // still drain a backlog, so both can hold then too.
    let waiting_since = Instant::now();
    loop {
        let waiting = c
            .scalar("SELECT COUNT(*) FROM requests WHERE status = 'submitted'")
            .await;
        let mails = c.scalar(RETRYING_MAILS).await;
        if (waiting >= 20 && mails > 0) || waiting_since.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let submitted_before = done.load(Ordering::Relaxed);
    let reviewed_before = c
        .scalar("SELECT COUNT(*) FROM requests WHERE status <> 'submitted'")
        .await;
    let sent_before = c
        .scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NOT NULL")
        .await;
    let mail_pending_before = c.scalar(RETRYING_MAILS).await;
    c.redis.shutdown_nosave().await;
    c.redis.restart().await;
    let restarted = Instant::now();
    std::fs::remove_file(&c.outbox).unwrap();
    std::fs::rename(&held, &c.outbox).unwrap();
    let accepted = submitting.await.expect("submissions");
    let ids = ids(&accepted);
    assert_eq!(ids.len(), N);
    let recover = c
        .wait_status(&ids, "in_review", Duration::from_secs(120))
        .await;
    let since_restart = restarted.elapsed();
    let in_review = c.count_status(&ids, "in_review").await;
    let requeued_requests = c
        .scalar("SELECT COUNT(DISTINCT split_part(dedupe_key, ':', 2)) FROM outbox WHERE dedupe_key LIKE 'reconcile:%'")
        .await;
    let requeue_pushes = c
        .scalar("SELECT COUNT(*) FROM outbox WHERE dedupe_key LIKE 'reconcile:%'")
        .await;
    assert!(
        requeued_requests > 0,
        "the restart lost no review job, so this run proved nothing; make the backlog larger"
    );

    // Timers: the SLA jobs of every request reviewed before the restart
    // were in Redis and are gone. Bring some deadlines and reminders into
    // the past (as if they came due while the timers were lost): the sweep
    // must breach/remind each exactly once.
    let breach: Vec<String> = ids[..20].to_vec();
    let remind: Vec<String> = ids[20..40].to_vec();
    let now: i64 =
        sqlx::query_scalar("SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT")
            .fetch_one(&c.pool)
            .await
            .unwrap();
    sqlx::query("UPDATE requests SET sla_due_at = $1, reminder_at = $2 WHERE id = ANY($3)")
        .bind(now - 1_000)
        .bind(now - 5_000)
        .bind(&breach)
        .execute(&c.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE requests SET reminder_at = $1 WHERE id = ANY($2)")
        .bind(now - 1_000)
        .bind(&remind)
        .execute(&c.pool)
        .await
        .unwrap();
    let t_sla = Instant::now();
    loop {
        let b: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM requests WHERE breached_at IS NOT NULL AND id = ANY($1)",
        )
        .bind(&breach)
        .fetch_one(&c.pool)
        .await
        .unwrap();
        let r: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM requests WHERE reminded_at IS NOT NULL AND id = ANY($1)",
        )
        .bind(&remind)
        .fetch_one(&c.pool)
        .await
        .unwrap();
        if b == 20 && r == 20 {
            break;
        }
        assert!(
            t_sla.elapsed() < Duration::from_secs(30),
            "after 30 s only {b}/20 breached and {r}/20 reminded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sla_time = t_sla.elapsed();
    // Two more sweeps: nothing may happen twice.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let events = |ty: &'static str, set: Vec<String>| {
        let pool = c.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM request_events WHERE type = $1 AND request_id = ANY($2)",
            )
            .bind(ty)
            .bind(&set)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let breached_events = events("sla_breached", breach.clone()).await;
    let reminder_events = events("reminder_sent", remind.clone()).await;
    let escalations: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM emails WHERE template = 'sla_escalation' AND request_id = ANY($1)",
    )
    .bind(&breach)
    .fetch_one(&c.pool)
    .await
    .unwrap();
    let reminders: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM emails WHERE template = 'reminder' AND request_id = ANY($1)",
    )
    .bind(&remind)
    .fetch_one(&c.pool)
    .await
    .unwrap();
    let pending_mail = c
        .scalar("SELECT COUNT(*) FROM emails WHERE status = 'pending'")
        .await;
    let mail_wait = c.wait_mail_sent(Duration::from_secs(30)).await;
    // Each mail has one original notify push; more are the reconciler's.
    let mail_repushes = c
        .scalar("SELECT COUNT(*) FROM outbox WHERE queue = 'notify'")
        .await
        - c.scalar("SELECT COUNT(*) FROM emails").await;
    assert!(
        mail_pending_before > 0,
        "no mail was waiting at the restart; this run proved nothing about lost notify jobs"
    );
    assert!(mail_repushes > 0, "the reconciler re-pushed no notify job");
    let (sends, sent_mails) = c.mail_sends();
    let emails = c.scalar("SELECT COUNT(*) FROM emails").await;
    assert_eq!(sent_mails as i64, emails, "every mail sent");
    assert_eq!(sends, sent_mails, "no mail sent twice");
    let ticks_twice = c
        .scalar("SELECT COUNT(*) FROM scheduler_ticks WHERE runs > 1")
        .await;
    let dead = c.dead();
    assert!(dead.is_empty(), "a process died: {dead:?}");

    assert_eq!(in_review, N as i64, "every accepted request in review");
    assert_eq!(breached_events, 20, "each lost deadline breached once");
    assert_eq!(reminder_events, 20, "each lost reminder sent once");
    assert_eq!(
        escalations, 20,
        "one escalation mail per breach (one group lead)"
    );
    assert_eq!(
        reminders, 20,
        "one reminder mail per reminder (one reviewer)"
    );

    println!(
        "FAULT 3 (Redis SHUTDOWN NOSAVE + restart empty mid-run, {N} requests; sweep every 2 s, reconcile after 3 s):"
    );
    println!(
        "  at the restart: {submitted_before} accepted, {reviewed_before} reviewed, {sent_before} outbox rows already pushed (their jobs were in Redis)"
    );
    println!(
        "  mail down (file transport failing) until the restart: {mail_pending_before} mails tried and waiting for their retry in Redis"
    );
    println!(
        "  accepted (202): {N}; reached in_review: {in_review}; lost: {}",
        N as i64 - in_review
    );
    println!(
        "  all in review {:.1} s after the restart ({:.1} s after the last submit; {:.1} s since first submit)",
        since_restart.as_secs_f64(),
        recover.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    println!(
        "  reconciler re-pushed review jobs for {requeued_requests} requests ({requeue_pushes} pushes)"
    );
    println!(
        "  SLA after the loss: 20/20 lost deadlines breached ({breached_events} events, {escalations} escalation mails), 20/20 lost reminders sent ({reminder_events} events, {reminders} mails), within {:.1} s",
        sla_time.as_secs_f64()
    );
    println!(
        "  emails pending 5 s later: {pending_mail} (all sent {:.1} s after; notify jobs re-pushed by the reconciler: {mail_repushes}); cron ticks run more than once: {ticks_twice}",
        mail_wait.as_secs_f64()
    );
    println!(
        "  mails: {emails}, 'mail sent' log lines {sends} for {sent_mails} mails (sent twice: {})",
        sends - sent_mails
    );
    println!("  test time {:.1} s", started.elapsed().as_secs_f64());
    c.shutdown().await;
}
