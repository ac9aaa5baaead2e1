//! Submissions written on the SQLite writer's thread (embedded profile,
//! `flows::submit` on `db::writer`), several per commit: under concurrency
//! they make exactly the rows the pool path makes (one request, numbered
//! without gaps, one `submitted` event, one chained audit row, one stored
//! answer and one review job each); a key used twice gives one request; an
//! org whose webhooks want `request.submitted` is written through the pool
//! path and gets its events. On the production profile the same checks run
//! against the pool path.
use std::collections::{BTreeSet, HashMap};

use approvald::{on_db, store::audit as store_audit};
use serde_json::{Value, json};

use crate::{
    api_util::subscribe_to_everything,
    harness::{Opts, Profile, TestApp},
};

async fn scalar(t: &TestApp, q: &'static str, org: &str) -> i64 {
    on_db!(&t.app.db, |p| sqlx::query_scalar::<_, i64>(q)
        .bind(org)
        .fetch_one(p)
        .await)
    .unwrap_or_else(|e| panic!("{q}: {e}"))
}

async fn post(t: &TestApp, org: &str, key: &str, idem: &str, body: &Value) -> (u16, Value) {
    let r = t
        .client
        .post(format!("{}/v1/orgs/{org}/requests", t.base))
        .bearer_auth(key)
        .header("idempotency-key", idem)
        .json(body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json answer"))
}

#[tokio::test]
async fn concurrent_submissions_write_every_row_once() {
    let t = TestApp::spawn_with(Opts {
        toml: crate::api_util::HOOKS_ON_LOOPBACK.to_string(),
        ..Opts::default()
    })
    .await;
    assert_eq!(
        t.app.writer.is_some(),
        t.profile == Profile::Embedded,
        "the writer runs on the embedded profile (SQLite file with the queue in it) only"
    );
    const ORGS: usize = 3;
    const PER_ORG: usize = 40;
    let mut orgs = Vec::new();
    for i in 0..ORGS {
        orgs.push(t.create_org(&format!("Writer Co {i}"), "cn").await);
    }
    let kinds = ["ftp_access", "listings_over_50000"];
    // Every submission once, and a third of them twice more (the same key
    // and body: a retry), all at once.
    let mut calls = Vec::new();
    for (o, (org, key, _)) in orgs.iter().enumerate() {
        for n in 0..PER_ORG {
            let body = json!({"kind": kinds[n % 2], "remark": format!("batch {o}/{n}")});
            let idem = format!("idem-{o}-{n}");
            let times = if n % 3 == 0 { 3 } else { 1 };
            for _ in 0..times {
                calls.push((org.clone(), key.clone(), idem.clone(), body.clone()));
            }
        }
    }
    let t_ref = &t;
    let answers =
        futures::future::join_all(calls.iter().map(|(org, key, idem, body)| async move {
            (idem.clone(), post(t_ref, org, key, idem, body).await)
        }))
        .await;
    let mut by_key: HashMap<String, Value> = HashMap::new();
    for (idem, (status, answer)) in answers {
        assert_eq!(status, 202, "{idem}: {answer}");
        if let Some(first) = by_key.get(&idem) {
            assert_eq!(
                first, &answer,
                "{idem}: a retry answers what the first answered"
            );
        } else {
            by_key.insert(idem, answer);
        }
    }
    assert_eq!(by_key.len(), ORGS * PER_ORG);
    for (o, (org, _, _)) in orgs.iter().enumerate() {
        let numbers: BTreeSet<String> = by_key
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("idem-{o}-")))
            .map(|(_, a)| a["number"].as_str().unwrap().to_string())
            .collect();
        let want: BTreeSet<String> = (1..=PER_ORG).map(|n| format!("R{n:06}")).collect();
        assert_eq!(numbers, want, "org {o}: numbered 1..{PER_ORG} without gaps");
        let per_org = PER_ORG as i64;
        assert_eq!(
            scalar(&t, "SELECT COUNT(*) FROM requests WHERE org_id = $1", org).await,
            per_org
        );
        assert_eq!(
            scalar(
                &t,
                "SELECT COUNT(*) FROM request_events e JOIN requests r ON r.id = e.request_id \
                 WHERE r.org_id = $1 AND e.type = 'submitted'",
                org
            )
            .await,
            per_org
        );
        assert_eq!(
            scalar(
                &t,
                "SELECT COUNT(*) FROM audit_log WHERE org_id = $1 AND action = 'request.submit'",
                org
            )
            .await,
            per_org
        );
        assert_eq!(
            scalar(
                &t,
                "SELECT COUNT(*) FROM idempotency_keys WHERE org_id = $1 AND status = 202",
                org
            )
            .await,
            per_org,
            "every key holds its answer"
        );
    }
    // Every request's review job was written and its workers woken: each
    // leaves `submitted`.
    t.eventually("every request reviewed", || async {
        t.count("requests WHERE status = 'submitted'").await == 0
    })
    .await;
    // The chains verify once the jobs (which append too) are done.
    t.drain().await;
    for (o, (org, _, _)) in orgs.iter().enumerate() {
        let report = store_audit::verify(&t.app.db, org).await.unwrap();
        assert!(report.ok, "org {o}: {}", report.summary);
    }
    assert_eq!(t.count("webhook_events").await, 0, "no endpoint, no event");
    if t.profile == Profile::Embedded {
        // The writer counts submissions per commit, in count buckets.
        let scrape = t.metrics().await;
        assert!(
            scrape.contains("approvald_sqlite_group_commit_units_bucket{le=\"64\"}"),
            "{scrape}"
        );
    }

    // With an endpoint that wants the event, submissions still succeed
    // (through the pool path on the embedded profile) and are announced.
    let _hook = subscribe_to_everything(&t).await;
    let (org, key, _) = &orgs[0];
    for n in 0..3 {
        let (status, answer) = post(
            &t,
            org,
            key,
            &format!("hooked-{n}"),
            &json!({"kind": "ftp_access", "remark": format!("hooked {n}")}),
        )
        .await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["number"], format!("R{:06}", PER_ORG + 1 + n));
    }
    assert_eq!(
        t.count("webhook_events WHERE type = 'request.submitted'")
            .await,
        3
    );
    t.drain().await;
    let report = store_audit::verify(&t.app.db, org).await.unwrap();
    assert!(report.ok, "{}", report.summary);
    t.finish().await;
}
