//! The operator dashboard (`/ops`, issue 15): every page's status and
//! content, sign-in, CSRF and origin refusals, read-only keys, the request
//! actions, dead-job re-drive / discard with confirmation, and a pause
//! honoured by a worker in another process.
use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use reqwest::StatusCode;

use crate::{
    api_util::scalar_i64,
    harness::{Opts, Profile, TestApp},
    ops_util::{Ops, clear_dead, doomed_job, operator_key, read, wait_dead},
    review_util::{reviewer, submit_ftp, wait_emails_final, wait_status},
};

async fn audit_count(t: &TestApp, action: &str) -> i64 {
    scalar_i64(
        t,
        "SELECT COUNT(*) FROM audit_log WHERE action = $1",
        action,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_needs_sign_in_and_shows_the_state() {
    let t = TestApp::spawn().await;
    let (org, key, _) = t.create_org("Ops Co", "cn").await;
    reviewer(&t, "rev@example.com", "en").await;
    let id = submit_ftp(&t, &org, &key, "ops page remark").await;
    wait_status(&t, &org, &key, &id, "in_review").await;
    wait_emails_final(&t, Duration::from_secs(30)).await;
    doomed_job(&t, 1).await;
    wait_dead(&t, "notify", 1).await;
    let number = crate::review_util::request(&t, &org, &key, &id).await["number"]
        .as_str()
        .unwrap()
        .to_string();

    // Not signed in: pages send you to the sign-in form, changes get 401.
    let anon = crate::ops_util::client();
    for page in [
        "/ops",
        "/ops/requests",
        &format!("/ops/requests/{id}"),
        "/ops/reviewers",
        "/ops/queues",
        "/ops/charts",
    ] {
        let r = read(anon.get(format!("{}{page}", t.base)).send().await.unwrap()).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{page}");
        assert_eq!(r.headers["location"], "/ops/login", "{page}");
    }
    let r = read(
        anon.post(format!("{}/ops/queues/notify/pause", t.base))
            .header("origin", &t.base)
            .form(&[("csrf", "x")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Only operator keys sign in; operator keys do nothing on /v1.
    let (none, r) = Ops::try_sign_in(&t, &t.platform_key).await;
    assert!(none.is_none());
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text.contains("not a live operator key"), "{}", r.text);
    let op_key = operator_key(&t, false).await;
    t.get(&format!("/v1/orgs/{org}"), &op_key).await.expect(403);

    let (ops, signed) = Ops::try_sign_in(&t, &op_key).await;
    let ops = ops.expect("operator key signs in");
    let cookie = signed
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("approvald_ops="))
        .expect("session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ops"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "http public_url: no Secure flag: {cookie}"
    );
    assert_eq!(audit_count(&t, "ops.sign_in").await, 1);

    let now = ops.get("/ops").await;
    assert_eq!(now.status, StatusCode::OK);
    assert!(now.content_type.starts_with("text/html"));
    let csp = now.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    for want in [
        "<h1>Now</h1>",
        "in review",
        "SLA at risk",
        "dead jobs",
        "workers alive",
        "sla-sweep",
        "webhook deliveries waiting",
        "notify",
        "review",
        &number,
    ] {
        assert!(now.text.contains(want), "Now page lacks {want:?}");
    }

    let list = ops.get("/ops/requests").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.text.contains(&number), "{}", list.text);
    let none = ops.get("/ops/requests?status=approved").await;
    assert!(!none.text.contains(&number));
    assert!(none.text.contains("No request matches"));
    let bad = ops.get("/ops/requests?status=nonsense").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let detail = ops.get(&format!("/ops/requests/{id}")).await;
    assert_eq!(detail.status, StatusCode::OK);
    for want in [
        "Timeline",
        "in review",
        "review requested",
        "rev@example.com",
        "SLA due",
        "Resend review mail",
        "Extend SLA",
        "Cancel request",
    ] {
        assert!(detail.text.contains(want), "detail lacks {want:?}");
    }
    assert_eq!(
        ops.get("/ops/requests/no-such-id").await.status,
        StatusCode::NOT_FOUND
    );

    let reviewers = ops.get("/ops/reviewers").await;
    assert_eq!(reviewers.status, StatusCode::OK);
    assert!(reviewers.text.contains("rev@example.com"));

    let queues = ops.get("/ops/queues").await;
    assert_eq!(queues.status, StatusCode::OK);
    assert!(queues.text.contains("does not exist"), "{}", queues.text);
    assert!(queues.text.contains("Re-drive all 1"));

    for range in ["24h", "7d", "30d"] {
        let c = ops.get(&format!("/ops/charts?range={range}")).await;
        assert_eq!(c.status, StatusCode::OK);
        assert_eq!(c.text.matches("<svg").count(), 3, "{range}");
        assert!(c.text.contains("1 submitted"), "{range}: {}", c.text);
    }
    for asset in ["/ops/assets/ops.css", "/ops/assets/ops.js"] {
        assert_eq!(ops.get(asset).await.status, StatusCode::OK);
    }

    // Signing out ends the session.
    let r = ops.post("/ops/logout", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(ops.get("/ops").await.status, StatusCode::SEE_OTHER);
    clear_dead(&t).await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_csrf_same_origin_and_a_writable_key() {
    let t = TestApp::spawn().await;
    let ops = Ops::sign_in(&t, &operator_key(&t, false).await).await;
    let paused = || async { t.app.queue.paused().await.unwrap() };
    let path = "/ops/queues/notify/pause";

    // No CSRF token, a wrong one, a foreign origin, no origin at all.
    let r = ops
        .post_raw(path, &[("origin", &t.base)], &[("csrf", "")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = ops
        .post_raw(path, &[("origin", &t.base)], &[("csrf", "forged")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = ops
        .post_raw(
            path,
            &[("origin", "https://evil.example")],
            &[("csrf", &ops.csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = ops
        .post_raw(
            path,
            &[("sec-fetch-site", "cross-site")],
            &[("csrf", &ops.csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = ops.post_raw(path, &[], &[("csrf", &ops.csrf)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(paused().await.is_empty(), "a refused POST paused the queue");
    assert_eq!(audit_count(&t, "ops.queue.pause").await, 0);

    // Same origin by Sec-Fetch-Site (no Origin header) and the right token.
    let r = ops
        .post_raw(
            path,
            &[("sec-fetch-site", "same-origin")],
            &[("csrf", &ops.csrf)],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    assert_eq!(paused().await, vec!["notify".to_string()]);
    assert_eq!(audit_count(&t, "ops.queue.pause").await, 1);
    let r = ops.post("/ops/queues/nosuch/pause", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A read-only key sees everything and changes nothing.
    let ro = Ops::sign_in(&t, &operator_key(&t, true).await).await;
    let page = ro.get("/ops/queues").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.contains("read-only"));
    assert!(
        !page.text.contains("Resume notify"),
        "no buttons for read-only"
    );
    let r = ro.post("/ops/queues/notify/resume", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.text.contains("read-only"), "{}", r.text);
    assert_eq!(paused().await, vec!["notify".to_string()]);
    let (org, key, _) = t.create_org("RO Co", "jp").await;
    let id = submit_ftp(&t, &org, &key, "ro").await;
    let r = ro
        .post(&format!("/ops/requests/{id}/cancel"), &[("reason", "x")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_ne!(
        crate::review_util::request(&t, &org, &key, &id).await["status"],
        "cancelled"
    );

    let r = ops.post("/ops/queues/notify/resume", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(paused().await.is_empty());
    assert_eq!(audit_count(&t, "ops.queue.resume").await, 1);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_actions_extend_resend_and_cancel_with_audit() {
    let t = TestApp::spawn().await;
    let (org, key, _) = t.create_org("Act Co", "cn").await;
    reviewer(&t, "act@example.com", "en").await;
    let id = submit_ftp(&t, &org, &key, "actions").await;
    wait_status(&t, &org, &key, &id, "in_review").await;
    wait_emails_final(&t, Duration::from_secs(30)).await;
    let ops = Ops::sign_in(&t, &operator_key(&t, false).await).await;
    let due = |t: &TestApp| {
        let id = id.clone();
        let db = t.app.db.clone();
        async move {
            approvald::on_db!(&db, |p| sqlx::query_scalar::<_, i64>(
                "SELECT sla_due_at FROM requests WHERE id = $1"
            )
            .bind(&id)
            .fetch_one(p)
            .await)
            .unwrap()
        }
    };
    let before = due(&t).await;

    // Extend: a reason is required, days are 1..=10.
    let path = format!("/ops/requests/{id}/extend");
    let r = ops.post(&path, &[("days", "2"), ("reason", "  ")]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = ops.post(&path, &[("days", "11"), ("reason", "x")]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(due(&t).await, before);
    let r = ops
        .post(&path, &[("days", "2"), ("reason", "reviewer on leave")])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let after = due(&t).await;
    assert!(
        after >= before + 2 * 24 * 3600 * 1000,
        "due moved by two business days: {before} -> {after}"
    );
    assert_eq!(audit_count(&t, "ops.request.extend").await, 1);
    let page = ops.get(r.headers["location"].to_str().unwrap()).await;
    assert!(page.text.contains("reviewer on leave"));
    assert!(page.text.contains("The SLA was extended."));

    // Resend: the review mail goes out again, with a fresh link.
    let tokens = "SELECT COUNT(*) FROM review_tokens WHERE request_id = $1";
    let links_before = scalar_i64(&t, tokens, &id).await;
    let r = ops.post(&format!("/ops/requests/{id}/resend"), &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
    let deadline = Instant::now() + Duration::from_secs(30);
    while scalar_i64(&t, tokens, &id).await <= links_before {
        assert!(Instant::now() < deadline, "the review mail was not resent");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_emails_final(&t, Duration::from_secs(30)).await;
    assert_eq!(audit_count(&t, "ops.request.resend_review_mail").await, 1);

    // Cancel.
    let r = ops
        .post(
            &format!("/ops/requests/{id}/cancel"),
            &[("reason", "duplicate")],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    wait_status(&t, &org, &key, &id, "cancelled").await;
    assert_eq!(audit_count(&t, "ops.request.cancel").await, 1);
    let r = ops
        .post(
            &format!("/ops/requests/{id}/cancel"),
            &[("reason", "again")],
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = ops.post(&path, &[("days", "1"), ("reason", "late")]).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    t.drain().await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_jobs_are_counted_confirmed_then_redriven_or_discarded() {
    let t = TestApp::spawn().await;
    let ops = Ops::sign_in(&t, &operator_key(&t, false).await).await;
    doomed_job(&t, 3).await;
    wait_dead(&t, "notify", 3).await;
    // Keep re-driven jobs where we can see them.
    ops.post("/ops/queues/notify/pause", &[]).await;

    let page = ops.get("/ops/queues").await;
    assert!(page.text.contains("Re-drive all 3"), "{}", page.text);
    let group = page
        .text
        .split("name=\"group\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();

    // First step: the count and a confirmation, nothing changed yet.
    let confirm = ops
        .post(
            "/ops/queues/notify/dead",
            &[("action", "redrive"), ("group", &group)],
        )
        .await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(
        confirm.text.contains("Re-drive 3 dead jobs of notify?"),
        "{}",
        confirm.text
    );
    assert_eq!(t.app.queue.stats("notify").await.unwrap().dead, 3);

    // Second step: exactly the listed ids.
    let ids: Vec<String> = confirm
        .text
        .split("name=\"id\" value=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    let mut fields = vec![("action", "redrive"), ("confirm", "yes")];
    fields.extend(ids.iter().take(2).map(|i| ("id", i.as_str())));
    let r = ops.post("/ops/queues/notify/dead", &fields).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let s = t.app.queue.stats("notify").await.unwrap();
    assert_eq!((s.dead, s.ready), (1, 2), "two re-driven, one left dead");
    let done = ops.get(r.headers["location"].to_str().unwrap()).await;
    assert!(done.text.contains("Re-drove 2 of 2 dead jobs of notify."));
    assert_eq!(audit_count(&t, "ops.dead.redrive").await, 1);

    // One job by its own button: still a confirmation first.
    let confirm = ops
        .post("/ops/queues/notify/dead", &[("one", &ids[2])])
        .await;
    assert!(confirm.text.contains("Re-drive 1 dead job of notify?"));
    // Discard the last dead one instead.
    let r = ops
        .post(
            "/ops/queues/notify/dead",
            &[("action", "discard"), ("confirm", "yes"), ("id", &ids[2])],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let s = t.app.queue.stats("notify").await.unwrap();
    assert_eq!((s.dead, s.ready), (0, 2));
    assert_eq!(audit_count(&t, "ops.dead.discard").await, 1);

    // Resumed, the re-driven jobs run (and die again: their mail is missing).
    ops.post("/ops/queues/notify/resume", &[]).await;
    wait_dead(&t, "notify", 2).await;
    let r = ops
        .post(
            "/ops/queues/notify/dead",
            &[("action", "explode"), ("id", "x")],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = ops
        .post("/ops/queues/notify/dead", &[("action", "redrive")])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    clear_dead(&t).await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_answers_404_when_disabled() {
    let t = TestApp::spawn_with(Opts {
        toml: "[ops]\nenabled = false\n".into(),
        ..Opts::default()
    })
    .await;
    for p in ["/ops", "/ops/login", "/ops/queues"] {
        let r = t.client.get(format!("{}{p}", t.base)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{p}");
    }
    t.finish().await;
}

/// A pause made through the dashboard of an API process stops a worker
/// running in another OS process (`approvald serve --role worker` on the
/// same database and queue); a resume lets it run the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_is_honoured_by_a_worker_in_another_process() {
    let t = TestApp::spawn_with(Opts {
        role: Some(approvald::Role::Api),
        ..Opts::default()
    })
    .await;
    let ops = Ops::sign_in(&t, &operator_key(&t, false).await).await;
    let r = ops.post("/ops/queues/notify/pause", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);

    let cfg = &t.config;
    std::fs::write(t.dir.path().join("none.toml"), "").unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_approvald"))
        .args(["serve", "--role", "worker"])
        .env("APPROVALD_CONFIG", t.dir.path().join("none.toml"))
        .env("APPROVALD__SERVER__LISTEN", "127.0.0.1:0")
        .env("APPROVALD__DATABASE__URL", &cfg.database.url)
        .env("APPROVALD__QUEUE__URL", &cfg.queue.url)
        .env("APPROVALD__QUEUE__PREFIX", &cfg.queue.prefix)
        .env("APPROVALD__MAIL__TRANSPORT", "file")
        .env("APPROVALD__MAIL__OUTBOX_DIR", &t.outbox)
        .env("APPROVALD__SLA__SWEEP_CRON", "0 0 0 1 1 * 2099")
        .env("APPROVALD__LOG__FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the worker process");

    // The worker process is up once its heartbeat is in the store.
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.app.queue.workers_alive(10).await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the worker process never came up"
        );
        assert!(child.try_wait().unwrap().is_none(), "the worker exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    doomed_job(&t, 1).await;
    // Several of the worker's fetch rounds and pause polls (1 s) go by.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = t.app.queue.stats("notify").await.unwrap();
    assert_eq!(
        (s.ready, s.running, s.dead),
        (1, 0, 0),
        "a paused queue's job was taken by the other process"
    );
    let now = ops.get("/ops").await;
    assert!(now.text.contains("paused"));

    let r = ops.post("/ops/queues/notify/resume", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    wait_dead(&t, "notify", 1).await;
    if t.profile == Profile::Production {
        // Same Redis prefix: the API process saw the other runtime's heartbeat.
        assert!(!t.app.queue.workers_alive(10).await.unwrap().is_empty());
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    clear_dead(&t).await;
    t.finish().await;
}
