//! The review and notify jobs on the SQLite writer's thread (embedded
//! profile: `jobs::review` and `jobs::notify` run their common case as one
//! unit of work each on `db::writer`, several per commit). Under
//! concurrency they write exactly what the pool path writes: each manual
//! request in review once, its reviewers assigned, one chained audit row
//! and one `in_review` event, its two SLA timers, one review mail per
//! reviewer sent once with one live link that works; the cases the unit
//! leaves to the pool path (a duplicate, a missing document, an automatic
//! approval) are still decided. On the production profile the same checks
//! run against the pool path.
use approvald::store::audit as store_audit;
use serde_json::json;

use crate::{
    harness::{Profile, TestApp},
    review_util::{decide, open, reviewer, wait_emails_final},
};

/// Manual kinds reviewed by platform group `marketplace`, no documents.
const MANUAL: [&str; 6] = [
    "shipping_addresses_over_4",
    "ftp_access",
    "bulk_data_management",
    "listings_over_50000",
    "seller_designated_carrier",
    "preorder_shipping",
];
const ORGS: usize = 3;
const REVIEWERS: usize = 2;

/// The units this app's SQLite writer has run so far (0 without one).
fn writer_units(t: &TestApp) -> u64 {
    t.app.writer.as_ref().map_or(0, |w| w.units())
}

#[tokio::test]
async fn concurrent_reviews_and_mails_write_every_row_once() {
    let t = TestApp::spawn().await;
    for i in 0..REVIEWERS {
        reviewer(&t, &format!("rw{i}@example.com"), "en").await;
    }
    let mut orgs = Vec::new();
    for i in 0..ORGS {
        orgs.push(t.create_org(&format!("Review Writer Co {i}"), "cn").await);
    }
    let units_before = writer_units(&t);

    // Per org: the six manual kinds, a second `ftp_access` (a duplicate),
    // `postal_carrier` (approved by policy) and `contact_lens_sales`
    // without its licence; all at once.
    let mut calls: Vec<(String, String, &str)> = Vec::new();
    for (org, key, _) in &orgs {
        for kind in MANUAL
            .iter()
            .chain(&["ftp_access", "postal_carrier", "contact_lens_sales"])
        {
            calls.push((org.clone(), key.clone(), kind));
        }
    }
    let t_ref = &t;
    let answers = futures::future::join_all(calls.iter().enumerate().map(
        |(n, (org, key, kind))| async move {
            t_ref
                .post(
                    &format!("/v1/orgs/{org}/requests"),
                    key,
                    json!({"kind": kind, "remark": format!("writer review {n}")}),
                )
                .await
                .expect(202)
                .json()
        },
    ))
    .await;
    assert_eq!(answers.len(), ORGS * 9);

    t.eventually("every request reviewed", || async {
        t.count("requests WHERE status = 'submitted'").await == 0
    })
    .await;
    let mails = wait_emails_final(&t, std::time::Duration::from_secs(60)).await;
    t.drain().await;

    let in_review = (ORGS * MANUAL.len()) as i64;
    assert_eq!(
        t.count("requests WHERE status = 'in_review'").await,
        in_review
    );
    assert_eq!(
        t.count(
            "requests WHERE status = 'rejected' AND decision_comment LIKE 'duplicate of open request %'"
        )
        .await,
        ORGS as i64,
        "the second ftp_access of each org is a duplicate"
    );
    assert_eq!(
        t.count(
            "requests WHERE status = 'rejected' AND decision_comment = 'required document missing: medical_device_licence'"
        )
        .await,
        ORGS as i64
    );
    assert_eq!(
        t.count("requests WHERE kind = 'postal_carrier' AND status = 'approved'")
            .await,
        ORGS as i64
    );
    assert_eq!(
        t.count("requests WHERE status = 'in_review' AND reminder_at IS NULL")
            .await,
        0,
        "the reminder time is set"
    );
    assert_eq!(
        t.count("request_reviewers").await,
        in_review * REVIEWERS as i64,
        "every reviewer assigned once"
    );
    assert_eq!(
        t.count("request_events WHERE type = 'in_review'").await,
        in_review
    );
    assert_eq!(
        t.count("request_events WHERE type = 'no_reviewers'").await,
        0
    );
    assert_eq!(
        t.count("audit_log WHERE action = 'request.in_review' AND actor = 'job:review'")
            .await,
        in_review
    );
    for (o, (org, _, _)) in orgs.iter().enumerate() {
        let report = store_audit::verify(&t.app.db, org).await.unwrap();
        assert!(report.ok, "org {o}: {}", report.summary);
    }
    // Two SLA timers (reminder, deadline) per request in review; on the
    // production profile they wait in Redis, not in a table.
    if t.profile == Profile::Embedded {
        assert_eq!(
            t.count("wq_jobs WHERE queue = 'sla' AND state = 'ready'")
                .await,
            in_review * 2
        );
    }

    // One review mail per reviewer and request, sent once, each with the
    // only live link of its reviewer on its request.
    let review_mails: Vec<_> = mails
        .iter()
        .filter(|m| m.template == "review_requested")
        .collect();
    assert_eq!(review_mails.len() as i64, in_review * REVIEWERS as i64);
    for m in &review_mails {
        assert_eq!((m.status.as_str(), m.attempts), ("sent", 1), "{m:?}");
    }
    assert_eq!(
        t.count("review_tokens WHERE used_at IS NULL AND revoked_at IS NULL")
            .await,
        in_review * REVIEWERS as i64
    );
    let outbox = t.outbox_messages();
    let links: Vec<String> = outbox
        .iter()
        .filter_map(|m| {
            let at = m.find("/review/")?;
            Some(m[at + "/review/".len()..][..approvald::store::tokens::TOKEN_LEN].to_string())
        })
        .collect();
    assert_eq!(
        links.len() as i64,
        in_review * REVIEWERS as i64,
        "one link per mail"
    );

    if t.profile == Profile::Embedded {
        // Every submission and every review job took a unit on the writer
        // (a review the pool path must do takes one that writes nothing),
        // and every mail two: prepared, then marked sent.
        let units = writer_units(&t) - units_before;
        let at_least = (2 * calls.len() + 2 * mails.len()) as u64;
        assert!(
            units >= at_least,
            "{units} units on the writer, expected at least {at_least}"
        );
    }

    // A link issued on the writer opens its page and decides.
    let page = open(&t, &links[0]).await;
    assert_eq!(page.status, reqwest::StatusCode::OK, "{}", page.body);
    decide(&t, &links[0], "approve", "").await.expect(200);
    assert_eq!(
        t.count("requests WHERE status = 'approved'").await,
        ORGS as i64 + 1
    );

    t.finish().await;
}
