//! The SLA timer with an injected clock (issue 6): time moves by hand, no
//! test sleeps for the deadline.
use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use crate::harness::{Opts, TestApp};
use approvald_workers::ManualClock;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Monday 2026-03-02 09:00 in Shanghai: one business day later is Tuesday 09:00.
const START: &str = "2026-03-02T01:00:00Z";
const DUE: &str = "2026-03-03T01:00:00Z";

#[derive(Debug, sqlx::FromRow)]
struct Row {
    status: String,
    sla_due_at: i64,
    reminded_at: Option<i64>,
    breached_at: Option<i64>,
}

async fn row(t: &TestApp, id: &str) -> Row {
    approvald::on_db!(&t.app.db, |p| sqlx::query_as::<_, Row>(
        "SELECT status, sla_due_at, reminded_at, breached_at FROM requests WHERE id = $1"
    )
    .bind(id)
    .fetch_one(p)
    .await)
    .unwrap()
}

async fn mails(t: &TestApp, id: &str, template: &str) -> i64 {
    approvald::on_db!(&t.app.db, |p| sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM emails WHERE request_id = $1 AND template = $2"
    )
    .bind(id)
    .bind(template)
    .fetch_one(p)
    .await)
    .unwrap()
}

async fn events(t: &TestApp, id: &str, kind: &str) -> i64 {
    approvald::on_db!(&t.app.db, |p| sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM request_events WHERE request_id = $1 AND type = $2"
    )
    .bind(id)
    .bind(kind)
    .fetch_one(p)
    .await)
    .unwrap()
}

/// A cn org, a marketplace reviewer who is also the group's lead, and one
/// submitted `ftp_access` request, moved to review.
async fn setup() -> (TestApp, String) {
    let (t, _, _, id) = setup_with(String::new()).await;
    (t, id)
}

/// [`setup`] with extra config; also returns the org id and its key.
async fn setup_with(toml: String) -> (TestApp, String, String, String) {
    let clock = ManualClock::new(utc(START));
    let t = TestApp::spawn_with(Opts {
        clock: Some(clock),
        toml,
        ..Default::default()
    })
    .await;
    t.create_reviewer("lead@platform.example", "marketplace", true)
        .await;
    let (org, key, _) = t.create_org("Acme", "cn").await;
    let r = t
        .post(
            &format!("/v1/orgs/{org}/requests"),
            &key,
            json!({"kind": "ftp_access", "remark": "nightly stock sync"}),
        )
        .await
        .expect(202)
        .json();
    let id = r["id"].as_str().unwrap().to_string();
    assert_eq!(utc(r["sla_due_at"].as_str().unwrap()), utc(DUE), "{r}");
    t.drain().await;
    let st = row(&t, &id).await;
    assert_eq!(st.status, "in_review");
    assert_eq!(st.sla_due_at, utc(DUE).timestamp_millis());
    (t, org, key, id)
}

#[tokio::test]
async fn reminder_then_escalation_once() {
    let (t, id) = setup().await;
    assert_eq!(mails(&t, &id, "review_requested").await, 1);

    // Before the halfway point: nothing.
    t.advance(Duration::hours(11));
    t.drain().await;
    assert!(row(&t, &id).await.reminded_at.is_none());

    // Halfway (21:00 Shanghai): one reminder.
    t.advance(Duration::hours(1) + Duration::seconds(1));
    t.eventually("reminder sent", || async {
        row(&t, &id).await.reminded_at.is_some()
    })
    .await;
    t.drain().await;
    assert_eq!(mails(&t, &id, "reminder").await, 1);
    assert!(row(&t, &id).await.breached_at.is_none());

    // The due instant: breached once, escalated to the group's lead.
    t.set_time(utc(DUE) + Duration::seconds(1));
    t.eventually("breach marked", || async {
        row(&t, &id).await.breached_at.is_some()
    })
    .await;
    t.drain().await;
    assert_eq!(events(&t, &id, "sla_breached").await, 1);
    assert_eq!(mails(&t, &id, "sla_escalation").await, 1);
    assert_eq!(
        row(&t, &id).await.status,
        "in_review",
        "escalate keeps the request in review"
    );

    // A sweep and more time change nothing: escalated exactly once.
    let s = approvald::jobs::sla::sweep(&t.app).await.unwrap();
    assert_eq!(s, approvald::jobs::sla::Swept::default());
    t.advance(Duration::days(2));
    t.drain().await;
    assert_eq!(events(&t, &id, "sla_breached").await, 1);
    assert_eq!(events(&t, &id, "reminder_sent").await, 1);
    assert_eq!(mails(&t, &id, "sla_escalation").await, 1);
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("approvald_sla_breaches_total{kind=\"ftp_access\"}"),
        "{metrics}"
    );
    t.finish().await;
}

#[tokio::test]
async fn decided_before_due_does_nothing() {
    let (t, id) = setup().await;
    approvald::store::decisions::decide(
        &t.app,
        &id,
        approvald::store::decisions::Decider::System,
        approvald::domain::request::Decision::Approve,
        "fine",
    )
    .await
    .expect("decide");
    t.set_time(utc(DUE) + Duration::hours(1));
    t.drain().await;
    let st = row(&t, &id).await;
    assert_eq!(st.status, "approved");
    assert!(
        st.reminded_at.is_none() && st.breached_at.is_none(),
        "{st:?}"
    );
    assert_eq!(mails(&t, &id, "reminder").await, 0);
    assert_eq!(mails(&t, &id, "sla_escalation").await, 0);
    t.finish().await;
}

use approvald::flows::requests::{ExtendError, Extended, Extension};

async fn extend(t: &TestApp, id: &str, ext: Extension) -> Result<Extended, ExtendError> {
    approvald::flows::requests::extend(
        &t.app,
        id,
        ext,
        "licence check with the regulator",
        "reviewer:r1",
        "reviewer",
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn extension_moves_both_timers() {
    let (t, id) = setup().await;
    // Extend to 3 business days: Monday 09:00 + 3 = Thursday 09:00.
    let due = extend(&t, &id, Extension::Reviewer { days: 3 })
        .await
        .unwrap()
        .due_ms;
    assert_eq!(due, utc("2026-03-05T01:00:00Z").timestamp_millis());
    assert_eq!(
        extend(&t, &id, Extension::Reviewer { days: 2 }).await,
        Err(ExtendError::AlreadyExtended)
    );
    t.drain().await;

    // The old reminder (Monday 21:00) and deadline (Tuesday 09:00) pass: nothing.
    t.set_time(utc(DUE) + Duration::hours(1));
    t.drain().await;
    let st = row(&t, &id).await;
    assert!(
        st.reminded_at.is_none() && st.breached_at.is_none(),
        "{st:?}"
    );

    // New reminder halfway through the new window (Tuesday 21:00), then the new deadline.
    t.set_time(utc("2026-03-03T13:00:01Z"));
    t.eventually("moved reminder", || async {
        row(&t, &id).await.reminded_at.is_some()
    })
    .await;
    t.set_time(utc("2026-03-05T01:00:01Z"));
    t.eventually("moved breach", || async {
        row(&t, &id).await.breached_at.is_some()
    })
    .await;
    t.drain().await;
    assert_eq!(events(&t, &id, "sla_breached").await, 1);
    assert_eq!(mails(&t, &id, "reminder").await, 1);
    t.finish().await;
}

#[tokio::test]
async fn lost_timer_is_caught_by_the_sweep() {
    let (t, id) = setup().await;
    // Lose every SLA timer (as if the queue restarted empty).
    lose_sla_timers(&t).await;
    t.set_time(utc(DUE) + Duration::minutes(5));
    t.drain().await;
    assert!(
        row(&t, &id).await.breached_at.is_none(),
        "no timer left to fire"
    );
    let s = approvald::jobs::sla::sweep(&t.app).await.unwrap();
    assert_eq!(s.breached, 1);
    assert_eq!(
        s.reminded, 0,
        "an overdue request is escalated, not reminded"
    );
    let again = approvald::jobs::sla::sweep(&t.app).await.unwrap();
    assert_eq!(again.breached, 0);
    t.drain().await;
    assert_eq!(events(&t, &id, "sla_breached").await, 1);
    assert_eq!(mails(&t, &id, "sla_escalation").await, 1);
    t.finish().await;
}

#[tokio::test]
async fn restart_in_the_middle_loses_nothing() {
    let (mut t, id) = setup().await;
    t.restart().await;
    t.set_time(utc("2026-03-02T13:00:01Z"));
    t.eventually("reminder after restart", || async {
        row(&t, &id).await.reminded_at.is_some()
    })
    .await;
    t.restart().await;
    t.set_time(utc(DUE) + Duration::seconds(1));
    t.eventually("breach after restart", || async {
        row(&t, &id).await.breached_at.is_some()
    })
    .await;
    t.drain().await;
    assert_eq!(events(&t, &id, "sla_breached").await, 1);
    assert_eq!(events(&t, &id, "reminder_sent").await, 1);
    t.finish().await;
}

#[tokio::test]
async fn auto_reject_on_breach_when_the_kind_says_so() {
    // A catalog whose ftp_access kind rejects itself when its SLA passes.
    let cat_dir = tempfile::tempdir().unwrap();
    let shipped = approvald::domain::catalog::SHIPPED;
    let patched = shipped.replacen(
        "key = \"ftp_access\"\ntitles = { en = \"FTP access\", \"zh-CN\" = \"FTP使用权限\", ja = \"FTP利用権限\" }\nreviewers = \"platform:marketplace\"\nsla_days = 1\npolicy = \"manual\"",
        "key = \"ftp_access\"\ntitles = { en = \"FTP access\", \"zh-CN\" = \"FTP使用权限\", ja = \"FTP利用権限\" }\nreviewers = \"platform:marketplace\"\nsla_days = 1\npolicy = \"manual\"\non_breach = \"auto_reject\"\nbreach_reason = \"not reviewed within one business day; please apply again\"",
        1,
    );
    assert_ne!(patched, shipped, "catalog patch must apply");
    let path = cat_dir.path().join("catalog.toml");
    std::fs::write(&path, patched).unwrap();
    let (t, org, key, id) = setup_with(format!("[catalog]\npath = \"{}\"\n", path.display())).await;
    t.set_time(utc(DUE) + Duration::seconds(1));
    t.eventually("auto-rejected", || async {
        row(&t, &id).await.status == "rejected"
    })
    .await;
    t.drain().await;
    assert_eq!(events(&t, &id, "sla_breached").await, 1);
    assert_eq!(
        mails(&t, &id, "sla_escalation").await,
        0,
        "auto_reject does not escalate"
    );
    assert_eq!(
        mails(&t, &id, "rejected").await,
        1,
        "the requester hears the outcome"
    );
    let got = t
        .get(&format!("/v1/orgs/{org}/requests/{id}"), &key)
        .await
        .expect(200)
        .json();
    assert!(
        got.to_string()
            .contains("not reviewed within one business day"),
        "{got}"
    );
    t.finish().await;
}

/// The reviewer extends from the review page (the email link), once, with a
/// reason; the link stays live and the reviewer still decides.
#[tokio::test]
async fn reviewer_extends_from_the_review_page_once() {
    use crate::review_util::{emails, open, outbox, post_form};
    let (t, id) = setup().await;
    let rows = emails(&t).await;
    let mail = rows
        .iter()
        .find(|r| r.template == "review_requested")
        .expect("review mail");
    let token = outbox(&t)[&mail.id]
        .review_token(&t.base)
        .expect("link in mail");

    let o = open(&t, &token).await;
    assert!(
        o.body.contains("name=\"extend_days\""),
        "the page offers the extension"
    );
    let csrf = o.csrf.clone().unwrap();
    let cookie = o.cookie.clone();
    let post = |fields: Vec<(&'static str, String)>| {
        let (t, token, cookie) = (&t, token.clone(), cookie.clone());
        async move {
            let f: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post_form(t, &token, &f, cookie.as_deref()).await
        }
    };
    // No reason, or a wrong number of days: refused, nothing changes.
    let r = post(vec![
        ("decision", "extend".into()),
        ("extend_days", "3".into()),
        ("comment", "".into()),
        ("csrf", csrf.clone()),
    ])
    .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.text);
    let r = post(vec![
        ("decision", "extend".into()),
        ("extend_days", "5".into()),
        ("comment", "why".into()),
        ("csrf", csrf.clone()),
    ])
    .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.text);
    assert_eq!(row_due(&t, &id).await, utc(DUE).timestamp_millis());

    let r = post(vec![
        ("decision", "extend".into()),
        ("extend_days", "3".into()),
        ("comment", "waiting for the licence registry".into()),
        ("csrf", csrf.clone()),
    ])
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    assert_eq!(
        row_due(&t, &id).await,
        utc("2026-03-05T01:00:00Z").timestamp_millis()
    );
    assert!(
        !r.text.contains("name=\"extend_days\""),
        "offered once only"
    );
    let r = post(vec![
        ("decision", "extend".into()),
        ("extend_days", "2".into()),
        ("comment", "again".into()),
        ("csrf", csrf.clone()),
    ])
    .await;
    assert_eq!(r.status.as_u16(), 409, "{}", r.text);
    assert_eq!(events(&t, &id, "extended").await, 1);

    // The link still decides.
    let r = post(vec![
        ("decision", "approve".into()),
        ("comment", "".into()),
        ("csrf", csrf),
    ])
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    assert_eq!(row(&t, &id).await.status, "approved");
    t.finish().await;
}

async fn row_due(t: &TestApp, id: &str) -> i64 {
    row(t, id).await.sla_due_at
}

/// Timers lost before they fire (the queue restarted empty) are armed again
/// by the sweep, and then fire on time by themselves.
#[tokio::test]
async fn lost_timers_are_re_created_by_the_sweep() {
    let (t, id) = setup().await;
    let sla_jobs = |t: &TestApp| {
        let q = t.app.queue.clone();
        async move {
            let s = q.stats("sla").await.unwrap();
            s.ready + s.scheduled + s.running
        }
    };
    assert_eq!(
        sla_jobs(&t).await,
        2,
        "reminder and deadline timers are queued"
    );
    lose_sla_timers(&t).await;
    assert_eq!(sla_jobs(&t).await, 0);

    let s = approvald::jobs::sla::sweep(&t.app).await.unwrap();
    assert_eq!(s.timers_rearmed, 1);
    t.drain().await;
    assert_eq!(sla_jobs(&t).await, 2, "both timers are back");
    let again = approvald::jobs::sla::sweep(&t.app).await.unwrap();
    assert_eq!(again.timers_rearmed, 0, "nothing missing, nothing re-armed");
    assert_eq!(sla_jobs(&t).await, 2);

    // The re-created timers fire on their own, without another sweep.
    t.set_time(utc("2026-03-02T13:00:01Z"));
    t.eventually("reminder from re-armed timer", || async {
        row(&t, &id).await.reminded_at.is_some()
    })
    .await;
    t.set_time(utc(DUE) + Duration::seconds(1));
    t.eventually("breach from re-armed timer", || async {
        row(&t, &id).await.breached_at.is_some()
    })
    .await;
    t.drain().await;
    assert_eq!(events(&t, &id, "sla_breached").await, 1);
    assert_eq!(events(&t, &id, "reminder_sent").await, 1);
    t.finish().await;
}

/// Delete every SLA timer from the queue, as a queue restarted empty would.
async fn lose_sla_timers(t: &TestApp) {
    match t.profile {
        crate::harness::Profile::Embedded => {
            let p = t.app.db.sqlite_pool().unwrap();
            sqlx::query("DELETE FROM wq_jobs WHERE queue = 'sla'")
                .execute(p)
                .await
                .unwrap();
            sqlx::query("DELETE FROM wq_dedupe WHERE queue = 'sla'")
                .execute(p)
                .await
                .unwrap();
        }
        crate::harness::Profile::Production => {
            let client = redis::Client::open(crate::harness::REDIS).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let pattern = format!("{}:*sla*", t.config.queue.prefix);
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut c)
                .await
                .unwrap();
            if !keys.is_empty() {
                let _: () = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
        }
    }
}

/// The operator's extension goes through the same flow: N business days
/// past the current deadline, both timers moved (the old ones do nothing),
/// `extended_at` recorded, so the reviewer's own extension is used up.
#[tokio::test]
async fn operator_extension_moves_both_timers() {
    let (t, id) = setup().await;
    // Tuesday 09:00 + 2 business days = Thursday 09:00.
    let ext = extend(&t, &id, Extension::Operator { days: 2 })
        .await
        .unwrap();
    assert_eq!(ext.before_ms, utc(DUE).timestamp_millis());
    assert_eq!(ext.due_ms, utc("2026-03-05T01:00:00Z").timestamp_millis());
    assert_eq!(ext.sla_days, 3);
    assert_eq!(
        extend(&t, &id, Extension::Reviewer { days: 3 }).await,
        Err(ExtendError::AlreadyExtended)
    );
    assert_eq!(
        extend(&t, &id, Extension::Operator { days: 11 }).await,
        Err(ExtendError::BadDays)
    );
    t.drain().await;
    t.set_time(utc(DUE) + Duration::hours(1));
    t.drain().await;
    let st = row(&t, &id).await;
    assert!(st.breached_at.is_none(), "old deadline: nothing: {st:?}");
    assert_eq!(st.sla_due_at, ext.due_ms);
    t.set_time(utc("2026-03-05T01:00:01Z"));
    t.eventually("moved breach", || async {
        row(&t, &id).await.breached_at.is_some()
    })
    .await;
    t.drain().await;
    assert_eq!(events(&t, &id, "sla_breached").await, 1);
    assert_eq!(events(&t, &id, "extended").await, 1);
    t.finish().await;
}
