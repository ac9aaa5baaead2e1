//! The operator dashboard (`/ops`, issue 15): every page's status and
//! content, sign-in, CSRF and origin refusals, read-only keys, the request
//! actions, dead-job re-drive / discard with confirmation, and a pause
//! honoured by a worker in another process.
use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{Value, json};

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

/// `(actor, detail)` of the audit rows with `action` on `target`, oldest first.
async fn audit_details(t: &TestApp, action: &str, target: &str) -> Vec<(String, Value)> {
    let rows: Vec<(String, String)> = approvald::on_db!(&t.app.db, |p| sqlx::query_as(
        "SELECT actor, detail FROM audit_log WHERE action = $1 AND target = $2 ORDER BY at, id"
    )
    .bind(action)
    .bind(target)
    .fetch_all(p)
    .await)
    .unwrap();
    rows.into_iter()
        .map(|(a, d)| (a, serde_json::from_str(&d).unwrap()))
        .collect()
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
    let sla_scheduled = t.app.queue.stats("sla").await.unwrap().scheduled;

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
    let page = ops.get(r.headers["location"].to_str().unwrap()).await;
    assert!(page.text.contains("reviewer on leave"));
    assert!(page.text.contains("The SLA was extended."));
    // The same path as the reviewer's extension: the request records it
    // (extended_at, reason), the event and the audit row name the new
    // deadline, both SLA timers are armed for it...
    let req = crate::review_util::request(&t, &org, &key, &id).await;
    assert!(req["extended_at"].is_string(), "{req}");
    assert_eq!(req["extension_reason"], "reviewer on leave");
    let ev = req["events"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|e| e["type"] == "extended")
        .expect("extended event")
        .clone();
    assert!(
        ev["actor"].as_str().unwrap().starts_with("operator:"),
        "{ev}"
    );
    assert_eq!(ev["detail"]["via"], "operator", "{ev}");
    assert_eq!(ev["detail"]["due_at_ms"], after, "{ev}");
    assert_eq!(ev["detail"]["before_due_at_ms"], before, "{ev}");
    let audit = audit_details(&t, "request.extend", &id).await;
    assert_eq!(audit.len(), 1, "{audit:?}");
    let (actor, detail) = &audit[0];
    assert_eq!(actor, ev["actor"].as_str().unwrap());
    assert_eq!(detail["before"]["sla_due_at"], before, "{detail}");
    assert_eq!(detail["after"]["sla_due_at"], after, "{detail}");
    assert_eq!(detail["reason"], "reviewer on leave");
    t.eventually("two SLA timers armed for the new deadline", || async {
        t.app.queue.stats("sla").await.unwrap().scheduled >= sla_scheduled + 2
    })
    .await;
    // ... and the reviewer's one extension is used up.
    let again = approvald::flows::requests::extend(
        &t.app,
        &id,
        approvald::flows::requests::Extension::Reviewer { days: 3 },
        "more time",
        "reviewer:x",
        "x",
    )
    .await
    .unwrap();
    assert_eq!(
        again,
        Err(approvald::flows::requests::ExtendError::AlreadyExtended)
    );
    assert_eq!(due(&t).await, after);

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
    assert_eq!(audit_details(&t, "request.cancel", &id).await.len(), 1);
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

/// The reviewer rows of a reviewers page (its table only: the flagged list
/// above it names reviewers too), as `pNN@example.com` addresses.
fn table_reviewers(html: &str) -> Vec<String> {
    let table = html.split("<table").nth(1).expect("a table");
    table
        .split("<th scope=\"row\">")
        .skip(1)
        .filter_map(|row| {
            let at = row.find("@example.com")?;
            let start = row[..at].rfind(|c: char| c == '>' || c.is_whitespace())? + 1;
            Some(row[start..at + "@example.com".len()].to_string())
        })
        .collect()
}

/// The href of a page's "Next page" link, HTML entities decoded.
fn next_link(html: &str) -> Option<String> {
    let end = html.find("\">Next page</a>")?;
    let start = html[..end].rfind("href=\"")? + "href=\"".len();
    Some(
        html[start..end]
            .replace("&#x2f;", "/")
            .replace("&#x3d;", "=")
            .replace("&amp;", "&"),
    )
}

/// Reviewers come in keyset pages of 50 from the open-assignment index:
/// with 51 reviewers holding open work there is a page 2; a removed
/// reviewer who still holds an assignment is flagged; a cancel closes the
/// request's assignments, so the page counts only work still to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviewers_page_is_paginated_and_counts_only_open_work() {
    let t = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(reviewer(&t, &format!("p{i:02}@example.com"), "en").await);
    }
    let (org1, key1, _) = t.create_org("Page One", "cn").await;
    let first = submit_ftp(&t, &org1, &key1, "first").await;
    wait_status(&t, &org1, &key1, &first, "in_review").await;
    // p00 leaves, still holding `first`; p50 joins; the next request goes
    // to the group's first 50 active reviewers: p01..p50.
    t.post(
        &format!("/v1/reviewers/{}/remove", ids[0]),
        &t.platform_key,
        json!({}),
    )
    .await
    .expect(200);
    reviewer(&t, "p50@example.com", "en").await;
    let (org2, key2, _) = t.create_org("Page Two", "jp").await;
    let second = submit_ftp(&t, &org2, &key2, "second").await;
    wait_status(&t, &org2, &key2, &second, "in_review").await;
    wait_emails_final(&t, Duration::from_secs(60)).await;

    let ops = Ops::sign_in(&t, &operator_key(&t, true).await).await;
    let p1 = ops.get("/ops/reviewers").await;
    assert_eq!(p1.status, StatusCode::OK);
    let mut seen = table_reviewers(&p1.text);
    assert_eq!(seen.len(), 50, "a full first page: {seen:?}");
    assert!(!p1.text.contains("First page"));
    let flagged = p1.text.split("<table").next().unwrap();
    assert!(
        flagged.contains("p00@example.com") && flagged.contains("removed"),
        "the removed reviewer holding `first` is flagged: {flagged}"
    );
    let next = next_link(&p1.text).expect("a next-page link");
    assert!(next.starts_with("/ops/reviewers?after="), "{next}");
    let p2 = ops.get(&next).await;
    assert_eq!(p2.status, StatusCode::OK);
    let rest = table_reviewers(&p2.text);
    assert_eq!(rest.len(), 1, "page 2 holds the 51st reviewer: {rest:?}");
    assert!(p2.text.contains("First page"));
    assert_eq!(next_link(&p2.text), None, "no page 3");
    seen.extend(rest);
    seen.sort();
    let want: Vec<String> = (0..=50).map(|i| format!("p{i:02}@example.com")).collect();
    assert_eq!(seen, want, "every reviewer with open work, once");

    // Cancelled: `first`'s assignments close; p00 holds nothing any more.
    t.post(
        &format!("/v1/orgs/{org1}/requests/{first}/cancel"),
        &key1,
        json!({}),
    )
    .await
    .expect(200);
    let open = "SELECT COUNT(*) FROM request_reviewers WHERE request_id = $1 AND closed_at IS NULL";
    assert_eq!(scalar_i64(&t, open, &first).await, 0);
    assert_eq!(scalar_i64(&t, open, &second).await, 50);
    let p1 = ops.get("/ops/reviewers").await;
    let now_listed = table_reviewers(&p1.text);
    assert_eq!(now_listed.len(), 50, "{now_listed:?}");
    assert!(!now_listed.contains(&"p00@example.com".to_string()));
    assert_eq!(next_link(&p1.text), None, "one page now");
    assert!(!p1.text.contains("id=\"h-flagged\""), "nobody flagged now");

    let bad = ops.get("/ops/reviewers?after=nonsense").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    wait_emails_final(&t, Duration::from_secs(60)).await;
    t.drain().await;
    t.finish().await;
}

/// The `<tr>` of cron schedule `name` on the Now page.
fn cron_row<'a>(html: &'a str, name: &str) -> &'a str {
    let start = html
        .find(&format!("<th scope=\"row\">{name} "))
        .unwrap_or_else(|| panic!("no cron row {name}: {html}"));
    let end = html[start..].find("</tr>").unwrap() + start;
    &html[start..end]
}

/// The Now page lists the spending-limits schedule with its last and next
/// run, on time while a scheduler claims its ticks, and late (the warning)
/// once nobody has claimed a due tick for longer than the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn now_page_shows_the_limits_schedule_and_warns_when_late() {
    use approvald_workers::{Clock, ManualClock};
    let start = chrono::DateTime::parse_from_rfc3339("2026-03-02T10:00:30Z")
        .unwrap()
        .to_utc();
    let clock = ManualClock::new(start);
    let mut t = TestApp::spawn_with(Opts {
        toml: "[payments]\nlimits_cron = \"0 * * * * *\"\n".into(),
        clock: Some(clock.clone()),
        ..Opts::default()
    })
    .await;
    // A minute at a time until the scheduler (which starts counting from
    // the clock it first reads, whenever its task gets to run) claims a tick.
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    let tick = loop {
        t.advance(chrono::Duration::seconds(60));
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut claimed = None;
        while claimed.is_none() && Instant::now() < deadline {
            claimed = t.app.queue.last_tick("limits").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(ms) = claimed {
            break chrono::DateTime::from_timestamp_millis(ms).unwrap();
        }
        assert!(
            clock.now() < start + chrono::Duration::minutes(10),
            "the limits schedule never fired"
        );
    };
    t.drain().await;

    let ops = Ops::sign_in(&t, &operator_key(&t, true).await).await;
    let page = ops.get("/ops").await;
    assert_eq!(page.status, StatusCode::OK);
    let row = cron_row(&page.text, "limits");
    assert!(row.contains("0 * * * * *"), "{row}");
    assert!(row.contains(&fmt(tick)), "last run {tick}: {row}");
    let next = tick + chrono::Duration::minutes(1);
    assert!(row.contains(&fmt(next)), "next run {next}: {row}");
    assert!(row.contains("on time") && !row.contains("late"), "{row}");

    // No scheduler any more: later ticks go unclaimed.
    t.restart_as(approvald::Role::Api).await;
    t.advance(chrono::Duration::minutes(5));
    let now = clock.now();
    let next = now - chrono::Duration::seconds(now.timestamp() % 60) + chrono::Duration::minutes(1);
    let page = ops.get("/ops").await;
    let row = cron_row(&page.text, "limits");
    assert!(row.contains(&fmt(tick)), "last run {tick}: {row}");
    assert!(row.contains(&fmt(next)), "next run {next}: {row}");
    assert!(row.contains("pill bad\">late"), "the late warning: {row}");
    // The alert rule's gauge agrees.
    let metrics = t.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("approvald_cron_late{schedule=\"limits\"} 1")),
        "{metrics}"
    );
    t.finish().await;
}

/// Cancelled through the API or the dashboard: the same flow, so the same
/// event, audit row, `request.cancelled` webhook event, `cancelled` mail and
/// closed assignments; only the actor (and `via`) differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_ops_cancel_have_the_same_effects() {
    let t = TestApp::spawn_with(Opts {
        toml: crate::api_util::HOOKS_ON_LOOPBACK.to_string(),
        ..Default::default()
    })
    .await;
    let _hooks = crate::api_util::subscribe_to_everything(&t).await;
    reviewer(&t, "told@example.com", "en").await;
    let ops = Ops::sign_in(&t, &operator_key(&t, false).await).await;
    let mut effects = Vec::new();
    for via in ["api", "operator"] {
        let (org, key, _) = t.create_org(&format!("Cancel {via}"), "cn").await;
        let id = submit_ftp(&t, &org, &key, via).await;
        wait_status(&t, &org, &key, &id, "in_review").await;
        wait_emails_final(&t, Duration::from_secs(30)).await;
        if via == "api" {
            t.post(
                &format!("/v1/orgs/{org}/requests/{id}/cancel"),
                &key,
                json!({}),
            )
            .await
            .expect(200);
        } else {
            let r = ops
                .post(&format!("/ops/requests/{id}/cancel"), &[("reason", "")])
                .await;
            assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text);
        }
        let req = wait_status(&t, &org, &key, &id, "cancelled").await;
        let ev = req["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "cancelled")
            .expect("cancelled event")
            .clone();
        let audit = audit_details(&t, "request.cancel", &id).await;
        assert_eq!(audit.len(), 1, "{via}: {audit:?}");
        let (actor, detail) = audit[0].clone();
        assert_eq!(ev["actor"], actor.as_str(), "{via}");
        assert!(
            actor.starts_with(if via == "api" { "key:" } else { "operator:" }),
            "{actor}"
        );
        assert_eq!(ev["detail"]["via"], via);
        assert_eq!(detail["via"], via);
        assert_eq!(detail["before"]["status"], "in_review", "{detail}");
        assert_eq!(detail["after"]["status"], "cancelled", "{detail}");
        assert_eq!(detail["reviewers_told"], 1, "{detail}");
        let hooks = scalar_i64(
            &t,
            "SELECT COUNT(*) FROM webhook_events WHERE type = 'request.cancelled' AND org_id = $1",
            &org,
        )
        .await;
        let mails = scalar_i64(
            &t,
            "SELECT COUNT(*) FROM emails WHERE request_id = $1 AND template = 'cancelled' AND recipient = 'told@example.com'",
            &id,
        )
        .await;
        let open = scalar_i64(
            &t,
            "SELECT COUNT(*) FROM request_reviewers WHERE request_id = $1 AND closed_at IS NULL",
            &id,
        )
        .await;
        let live_links = scalar_i64(
            &t,
            "SELECT COUNT(*) FROM review_tokens WHERE request_id = $1 AND revoked_at IS NULL AND used_at IS NULL",
            &id,
        )
        .await;
        assert_eq!((hooks, mails, open, live_links), (1, 1, 0, 0), "{via}");
        let keys = |v: &Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        effects.push((keys(&ev["detail"]), keys(&detail)));
    }
    assert_eq!(effects[0], effects[1], "the same event and audit shape");
    wait_emails_final(&t, Duration::from_secs(30)).await;
    t.drain().await;
    t.finish().await;
}
