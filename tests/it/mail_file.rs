//! The embedded default: mail written as `.eml` files, one per logical mail,
//! named by the email id; a redelivered notify job sends nothing new.
use std::time::Duration;

use approvald::{
    jobs::notify::NotifyJob,
    mail::{EmailSpec, Recipient, Template},
};
use approvald_workers::PushOptions;
use serde_json::json;

use crate::{
    harness::TestApp,
    review_util::{emails, outbox, reviewer, submit_ftp, wait_emails_final, wait_status},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_transport_writes_one_eml_per_mail() {
    let t = TestApp::spawn().await;
    let (org, key, _) = t.create_org("Files Inc", "jp").await;
    reviewer(&t, "a@example.com", "ja").await;
    reviewer(&t, "b@example.com", "en").await;
    let id = submit_ftp(&t, &org, &key, "remark").await;
    wait_status(&t, &org, &key, &id, "in_review").await;
    let rows = wait_emails_final(&t, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), 2);
    let files = outbox(&t);
    assert_eq!(files.len(), 2, "one .eml per mail");
    for row in &rows {
        assert_eq!(row.status, "sent");
        let p = files
            .get(&row.id)
            .unwrap_or_else(|| panic!("{}.eml missing", row.id));
        assert_eq!(p.message_id, row.message_id);
        assert_eq!(p.content_language, row.locale);
        assert!(p.review_token(&t.base).is_some());
    }
    let names: Vec<String> = std::fs::read_dir(&t.outbox)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.ends_with(".eml") && !n.starts_with('.')),
        "no temp files left: {names:?}"
    );

    // Redeliver every notify job: nothing is sent again.
    let before: Vec<_> = rows
        .iter()
        .map(|r| {
            std::fs::metadata(t.outbox.join(format!("{}.eml", r.id)))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect();
    for r in &rows {
        t.app
            .queue
            .push(
                &NotifyJob {
                    email_id: r.id.clone(),
                },
                PushOptions::default(),
            )
            .await
            .unwrap();
    }
    t.drain().await;
    let after: Vec<_> = rows
        .iter()
        .map(|r| {
            std::fs::metadata(t.outbox.join(format!("{}.eml", r.id)))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect();
    assert_eq!(before, after, "no file rewritten");
    assert_eq!(outbox(&t).len(), 2);
    let again = emails(&t).await;
    assert_eq!(
        again.iter().map(|r| r.attempts).collect::<Vec<_>>(),
        rows.iter().map(|r| r.attempts).collect::<Vec<_>>()
    );

    // Queueing the same logical mail again writes nothing.
    let spec = EmailSpec {
        template: Template::ReviewRequested,
        request_id: Some(id.clone()),
        to: Recipient {
            email: "A@example.com".into(),
            name: "x".into(),
            locale: approvald::domain::ids::Locale::Ja,
            reviewer: None,
        },
        params: json!({}),
    };
    let mut tx = t.app.db.begin().await.unwrap();
    assert!(
        !approvald::mail::queue_email(&t.app, &mut tx, spec)
            .await
            .unwrap(),
        "same (request, recipient, template)"
    );
    tx.commit().await.unwrap();
    assert_eq!(emails(&t).await.len(), 2);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_mails_for_a_decided_request_are_skipped_not_sent() {
    use approvald::mail::{ReviewerKind, ReviewerRef};
    let t = TestApp::spawn().await;
    let (org, key, _) = t.create_org("Skip Co", "cn").await;
    let rid = reviewer(&t, "late@example.com", "en").await;
    let id = submit_ftp(&t, &org, &key, "remark").await;
    wait_status(&t, &org, &key, &id, "in_review").await;
    let rows = wait_emails_final(&t, Duration::from_secs(30)).await;
    let token = outbox(&t)[&rows[0].id].review_token(&t.base).unwrap();
    let r = crate::review_util::decide(&t, &token, "reject", "No").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text);
    t.drain().await;
    let files_before = outbox(&t).len();
    let tokens_before = t.count("review_tokens").await;
    // A reminder queued late (e.g. a timer racing the decision).
    let spec = EmailSpec {
        template: Template::Reminder,
        request_id: Some(id.clone()),
        to: Recipient {
            email: "late@example.com".into(),
            name: "Late".into(),
            locale: approvald::domain::ids::Locale::En,
            reviewer: Some(ReviewerRef {
                kind: ReviewerKind::Platform,
                id: rid,
            }),
        },
        params: json!({}),
    };
    let mut tx = t.app.db.begin().await.unwrap();
    assert!(
        approvald::mail::queue_email(&t.app, &mut tx, spec)
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    t.drain().await;
    let reminder = emails(&t)
        .await
        .into_iter()
        .find(|e| e.template == "reminder")
        .unwrap();
    assert_eq!(reminder.status, "skipped", "{reminder:#?}");
    assert_eq!(outbox(&t).len(), files_before, "nothing sent");
    assert_eq!(
        t.count("review_tokens").await,
        tokens_before,
        "no link issued for a decided request"
    );
    t.finish().await;
}
