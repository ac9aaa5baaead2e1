//! Mail over real SMTP (a test server on loopback, see `mail_server`): the
//! whole lifecycle with every mail parsed; transient and permanent failures;
//! the server down for 30 s while 50 requests arrive.
use std::{collections::HashSet, time::Duration};

use reqwest::StatusCode;

use crate::{
    harness::{Opts, TestApp},
    mail_server::{SmtpServer, parse},
    review_util::{decide, emails, open, reviewer, submit_ftp, wait_emails_final, wait_status},
};

async fn spawn(smtp: &SmtpServer) -> TestApp {
    TestApp::spawn_with(Opts {
        toml: smtp.config_toml(),
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_over_smtp_every_mail_checked() {
    let smtp = SmtpServer::start().await;
    let t = spawn(&smtp).await;
    let (org, key, _owner) = t.create_org("Acme Trading", "cn").await;
    reviewer(&t, "ja-rev@example.com", "ja").await;
    reviewer(&t, "zh-rev@example.com", "zh-CN").await;
    let id = submit_ftp(&t, &org, &key, "Nightly uploads of 20,000 listings").await;
    wait_status(&t, &org, &key, &id, "in_review").await;

    let msgs = smtp
        .wait_until("two review mails", Duration::from_secs(30), |m| {
            m.len() >= 2
        })
        .await;
    let rows = wait_emails_final(&t, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let mut tokens = std::collections::HashMap::new();
    for m in &msgs {
        assert_eq!(m.from, "noreply@approvald.invalid");
        assert_eq!(m.rcpt.len(), 1);
        let row = rows
            .iter()
            .find(|r| r.recipient == m.rcpt[0])
            .expect("a row per mail");
        assert_eq!(row.template, "review_requested");
        assert_eq!(row.status, "sent");
        let p = parse(&m.data);
        assert_eq!(p.message_id, row.message_id);
        assert_eq!(p.message_id, format!("<{}@approvald.invalid>", row.id));
        assert_eq!(p.content_language, row.locale);
        assert!(p.to.contains(&m.rcpt[0]), "To: {}", p.to);
        match row.locale.as_str() {
            "ja" => {
                assert!(p.subject.starts_with("審査のお願い："), "{}", p.subject);
                assert!(p.text.contains("申請を開き"), "{}", p.text);
                assert!(p.html.contains("lang=\"ja\""));
            }
            "zh-CN" => {
                assert!(p.subject.starts_with("待审核："), "{}", p.subject);
                assert!(p.text.contains("批准或驳回"), "{}", p.text);
                assert!(p.html.contains("lang=\"zh-CN\""));
            }
            other => panic!("unexpected locale {other}"),
        }
        assert!(p.text.contains("FTP"), "kind title in the mail: {}", p.text);
        assert!(p.text.contains("Acme Trading"));
        let token = p.review_token(&t.base).expect("review link");
        assert_eq!(token.len(), 43, "{token}");
        tokens.insert(row.locale.clone(), token);
    }

    // The Japanese reviewer opens the page (in Japanese) and approves.
    let page = open(&t, &tokens["ja"]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("lang=\"ja\"") && page.body.contains("承認"),
        "{}",
        page.body
    );
    let r = decide(&t, &tokens["ja"], "approve", "Looks fine").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let req = wait_status(&t, &org, &key, &id, "approved").await;
    assert_eq!(req["decided_by"], "Rev ja-rev", "{req:#}");

    // The other reviewer's link now says who decided, in Chinese.
    let other = open(&t, &tokens["zh-CN"]).await;
    assert_eq!(other.status, StatusCode::CONFLICT);
    assert!(
        other.body.contains("该申请已处理") && other.body.contains("Rev ja-rev"),
        "{}",
        other.body
    );
    assert!(other.csrf.is_none(), "no form on a decided request");

    // The owner (the org itself asked) is told, in English, without a link.
    let msgs = smtp
        .wait_until("the outcome mail", Duration::from_secs(30), |m| {
            m.len() >= 3
        })
        .await;
    let rows = wait_emails_final(&t, Duration::from_secs(30)).await;
    let outcome = rows
        .iter()
        .find(|r| r.template == "approved")
        .expect("approved mail row");
    let m = msgs
        .iter()
        .find(|m| m.rcpt[0] == outcome.recipient)
        .expect("approved mail delivered");
    let p = parse(&m.data);
    assert_eq!(p.message_id, outcome.message_id);
    assert!(
        p.subject.starts_with("Approved: FTP access"),
        "{}",
        p.subject
    );
    assert!(
        p.text.contains("Looks fine"),
        "the reviewer's comment: {}",
        p.text
    );
    assert!(
        p.review_token(&t.base).is_none(),
        "outcome mails carry no review link"
    );
    let ids: HashSet<String> = msgs.iter().map(|m| parse(&m.data).message_id).collect();
    assert_eq!(
        ids.len(),
        msgs.len(),
        "Message-IDs are unique per logical mail"
    );
    assert_eq!(msgs.len(), 3, "exactly three mails");

    let metrics = t.metrics().await;
    let has = |name: &str, labels: &[&str]| {
        metrics
            .lines()
            .any(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
    };
    assert!(
        has(
            "approvald_requests_decided_total",
            &["kind=\"ftp_access\"", "decision=\"approve\""]
        ),
        "{metrics}"
    );
    assert!(has("approvald_decision_seconds_count", &[]), "{metrics}");
    assert!(
        has(
            "approvald_emails_total",
            &["template=\"approved\"", "outcome=\"sent\""]
        ),
        "{metrics}"
    );
    let grants = t
        .get(&format!("/v1/orgs/{org}/grants"), &key)
        .await
        .expect(200)
        .json();
    let text = grants.to_string();
    assert!(text.contains("ftp_access"), "grant applied: {text}");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_451_is_retried_then_delivered() {
    let smtp = SmtpServer::start().await;
    smtp.script(
        "grey@example.com",
        &[
            "451 4.7.1 greylisted",
            "451 4.7.1 greylisted",
            "451 4.7.1 greylisted",
        ],
    );
    let t = spawn(&smtp).await;
    let (org, key, _) = t.create_org("Grey Ltd", "cn").await;
    reviewer(&t, "grey@example.com", "en").await;
    let id = submit_ftp(&t, &org, &key, "please").await;
    wait_status(&t, &org, &key, &id, "in_review").await;
    let msgs = smtp
        .wait_until("the greylisted mail", Duration::from_secs(60), |m| {
            m.iter().any(|m| m.rcpt[0] == "grey@example.com")
        })
        .await;
    assert_eq!(
        smtp.rcpt_codes("grey@example.com"),
        vec![451, 451, 451, 250]
    );
    let rows = wait_emails_final(&t, Duration::from_secs(10)).await;
    let row = rows
        .iter()
        .find(|r| r.recipient == "grey@example.com")
        .unwrap();
    assert_eq!(row.status, "sent");
    assert_eq!(row.attempts, 4, "{row:#?}");
    assert_eq!(msgs.len(), 1);
    assert_eq!(parse(&msgs[0].data).message_id, row.message_id);
    // The link in the delivered mail is the only live one for that reviewer.
    let token = parse(&msgs[0].data).review_token(&t.base).unwrap();
    assert_eq!(open(&t, &token).await.status, StatusCode::OK);
    let live: i64 = approvald::on_db!(&t.app.db, |p| sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM review_tokens WHERE request_id = $1 AND used_at IS NULL AND revoked_at IS NULL"
    )
    .bind(&id)
    .fetch_one(p)
    .await)
    .unwrap();
    assert_eq!(live, 1, "earlier attempts' tokens are revoked");
    let events = t
        .get(&format!("/v1/orgs/{org}/requests/{id}"), &key)
        .await
        .expect(200)
        .text;
    assert!(!events.contains("email_failed"), "{events}");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_auth_credentials_are_sent() {
    let smtp = SmtpServer::start().await;
    let toml = smtp.config_toml().replace(
        "[mail.smtp]\n",
        "[mail.smtp]\nusername = \"mailer\"\npassword = \"s3cret pw\"\n",
    );
    let t = TestApp::spawn_with(Opts {
        toml,
        ..Default::default()
    })
    .await;
    assert!(
        !format!("{:?}", t.config).contains("s3cret"),
        "the password never prints"
    );
    let (org, key, _) = t.create_org("Auth Ltd", "cn").await;
    reviewer(&t, "auth@example.com", "en").await;
    let id = submit_ftp(&t, &org, &key, "please").await;
    wait_status(&t, &org, &key, &id, "in_review").await;
    smtp.wait_until("the mail", Duration::from_secs(30), |m| !m.is_empty())
        .await;
    assert_eq!(
        smtp.auths()[0],
        ("mailer".to_string(), "s3cret pw".to_string())
    );
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_times_out_and_is_retried() {
    let smtp = SmtpServer::start().await;
    smtp.script("slow@example.com", &["HANG"]);
    let toml = smtp
        .config_toml()
        .replace("timeout_secs = 5", "timeout_secs = 1");
    let t = TestApp::spawn_with(Opts {
        toml,
        ..Default::default()
    })
    .await;
    let (org, key, _) = t.create_org("Slow Ltd", "cn").await;
    reviewer(&t, "slow@example.com", "en").await;
    let id = submit_ftp(&t, &org, &key, "please").await;
    wait_status(&t, &org, &key, &id, "in_review").await;
    smtp.wait_until("the mail after a timeout", Duration::from_secs(60), |m| {
        !m.is_empty()
    })
    .await;
    assert_eq!(smtp.rcpt_codes("slow@example.com"), vec![0, 250]);
    let rows = wait_emails_final(&t, Duration::from_secs(10)).await;
    assert_eq!(rows[0].status, "sent");
    assert_eq!(rows[0].attempts, 2);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_550_is_tried_once_and_shown_as_failed() {
    let smtp = SmtpServer::start().await;
    smtp.script("nobody@example.com", &["550 5.1.1 no such user"; 5]);
    let t = spawn(&smtp).await;
    let (org, key, _) = t.create_org("Bounce Ltd", "cn").await;
    reviewer(&t, "nobody@example.com", "en").await;
    let id = submit_ftp(&t, &org, &key, "please").await;
    wait_status(&t, &org, &key, &id, "in_review").await;
    let rows = wait_emails_final(&t, Duration::from_secs(30)).await;
    let row = rows
        .iter()
        .find(|r| r.recipient == "nobody@example.com")
        .unwrap();
    assert_eq!(row.status, "failed", "{row:#?}");
    assert_eq!(row.attempts, 1);
    assert!(
        row.last_error.as_deref().unwrap_or("").contains("550"),
        "{row:#?}"
    );
    // Give the runtime time to (wrongly) retry; it must not.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        smtp.rcpt_codes("nobody@example.com"),
        vec![550],
        "tried exactly once"
    );
    assert!(smtp.messages().is_empty());

    let req = t
        .get(&format!("/v1/orgs/{org}/requests/{id}"), &key)
        .await
        .expect(200)
        .json();
    let events = req["events"].as_array().expect("events");
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e["type"] == "email_failed")
        .collect();
    assert_eq!(failed.len(), 1, "recorded once: {req:#}");
    let detail = failed[0].to_string();
    assert!(
        detail.contains("review_requested") && detail.contains("n***@example.com"),
        "{detail}"
    );
    assert!(
        !detail.contains("nobody@example.com"),
        "address masked: {detail}"
    );

    let metrics = t.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("approvald_emails_total")
                && l.contains("template=\"review_requested\"")
                && l.contains("outcome=\"failed\"")),
        "{metrics}"
    );
    // The job is dead-lettered (permanent), not retried: account for it.
    let dead = t
        .app
        .queue
        .list_dead("notify", 10)
        .await
        .expect("list dead");
    assert_eq!(dead.len(), 1, "{dead:?}");
    let mut t = t;
    t.drain().await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_30s_while_50_requests_arrive() {
    let smtp = SmtpServer::start().await;
    smtp.stop().await;
    let down_since = std::time::Instant::now();
    // Retries capped at 10 s: 20 attempts last about 2.5 minutes, so a slow
    // setup (50 orgs on a loaded machine took over a minute) cannot use up
    // the retry budget before the server returns; the test is about waiting,
    // not about the budget.
    let t = TestApp::spawn_with(Opts {
        toml: smtp
            .config_toml()
            .replace("retry_cap_secs = 5", "retry_cap_secs = 10"),
        ..Default::default()
    })
    .await;
    assert_eq!(
        t.config.mail.retry_cap_secs, 10,
        "the test's retry cap applies"
    );
    reviewer(&t, "busy@example.com", "en").await;
    let mut reqs = Vec::new();
    for i in 0..50 {
        let (org, key, _) = t.create_org(&format!("Shop {i}"), "cn").await;
        let id = submit_ftp(&t, &org, &key, &format!("request {i}")).await;
        reqs.push((org, key, id));
    }
    for (org, key, id) in &reqs {
        wait_status(&t, org, key, id, "in_review").await;
    }
    let elapsed = down_since.elapsed();
    if elapsed < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_secs(30) - elapsed).await;
    }
    assert!(smtp.messages().is_empty());
    let pending = emails(&t).await;
    assert_eq!(pending.len(), 50);
    assert!(
        pending
            .iter()
            .all(|r| r.status == "pending" && r.attempts >= 2),
        "retried while down: {pending:#?}"
    );

    smtp.restart().await;
    let msgs = smtp
        .wait_until(
            "50 mails after the server returned",
            Duration::from_secs(60),
            |m| m.len() >= 50,
        )
        .await;
    let rows = wait_emails_final(&t, Duration::from_secs(30)).await;
    assert!(rows.iter().all(|r| r.status == "sent"), "{rows:#?}");
    // Let any straggling duplicate arrive before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let msgs2 = smtp.messages();
    assert_eq!(msgs2.len(), 50, "no mail sent twice");
    let ids: HashSet<String> = msgs.iter().map(|m| parse(&m.data).message_id).collect();
    assert_eq!(ids.len(), 50, "no duplicate Message-IDs");
    let row_ids: HashSet<String> = rows.iter().map(|r| r.message_id.clone()).collect();
    assert_eq!(ids, row_ids);
    t.finish().await;
}
