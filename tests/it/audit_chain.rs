//! The audit log's hash chain (issue 13): concurrent appends stay gap-free
//! and verify; tampering done with SQL straight on the database is reported
//! at the right seq; an export verifies with an outside (Python) verifier;
//! request ids and job actors reach the entries.
use approvald::{audit::Break, on_db, store::audit as store_audit};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    api_util::{add_member, submit},
    harness::{Resp, TestApp},
};

/// Run one statement on the test's database (the tamperer's tool).
async fn sql(t: &TestApp, q: &'static str, org: &str) -> u64 {
    on_db!(&t.app.db, |p| sqlx::query(q)
        .bind(org)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
    .unwrap_or_else(|e| panic!("{q}: {e}"))
}

async fn seqs(t: &TestApp, org: &str) -> Vec<i64> {
    on_db!(&t.app.db, |p| sqlx::query_scalar::<_, i64>(
        "SELECT seq FROM audit_log WHERE org_id = $1 AND seq IS NOT NULL ORDER BY seq"
    )
    .bind(org)
    .fetch_all(p)
    .await)
    .unwrap()
}

async fn verify(t: &TestApp, org: &str) -> approvald::audit::Report {
    store_audit::verify(&t.app.db, org).await.unwrap()
}

/// Rename a member, acting as the org's owner (the member itself when
/// `member` is the owner).
async fn rename(t: &TestApp, org: &str, key: &str, owner: &str, member: &str, name: &str) -> Resp {
    t.call_as(
        Method::PATCH,
        &format!("/v1/orgs/{org}/members/{member}"),
        key,
        owner,
        Some(&json!({"name": name})),
    )
    .await
}

async fn login(t: &TestApp, org: &str, key: &str, member: &str, ok: bool) -> Resp {
    let body = if ok {
        json!({"member": member, "ip": "203.0.113.7", "user_agent": "ua", "method": "password", "success": true})
    } else {
        json!({"member": member, "ip": "2001:db8::7", "method": "sms", "success": false, "reason": "wrong code"})
    };
    t.post(&format!("/v1/orgs/{org}/audit/logins"), key, body)
        .await
}

/// An org with `n` more entries after its first few (org, key, owner, members).
async fn org_with_entries(t: &TestApp, name: &str, n: usize) -> (String, String, String) {
    let (org, key, owner) = t.create_org(name, "cn").await;
    for i in 0..n {
        rename(t, &org, &key, &owner, &owner, &format!("Owner {i}"))
            .await
            .expect(200);
    }
    (org, key, owner)
}

#[tokio::test]
async fn concurrent_appends_across_orgs_stay_gap_free_and_verify() {
    let t = TestApp::spawn().await;
    let mut orgs = Vec::new();
    for i in 0..3 {
        let (org, key, owner) = t.create_org(&format!("Chain {i}"), "cn").await;
        let m = add_member(&t, &org, &key, "member").await;
        orgs.push((org, key, owner, m["id"].as_str().unwrap().to_string()));
    }
    let before: Vec<usize> = {
        let mut v = Vec::new();
        for (org, ..) in &orgs {
            v.push(seqs(&t, org).await.len());
        }
        v
    };
    let calls = (0..200).map(|i| {
        let (org, key, owner, member) = &orgs[i % 3];
        let t = &t;
        async move {
            let r = match i % 4 {
                0 => rename(t, org, key, owner, owner, &format!("Owner {i}")).await,
                1 => rename(t, org, key, owner, member, &format!("Member {i}")).await,
                2 => login(t, org, key, member, true).await,
                _ => login(t, org, key, owner, false).await,
            };
            assert!(r.status.is_success(), "call {i}: {} {}", r.status, r.text);
        }
    });
    futures::future::join_all(calls).await;
    for (i, (org, ..)) in orgs.iter().enumerate() {
        let s = seqs(&t, org).await;
        let per_org = (0..200).filter(|c| c % 3 == i).count();
        assert_eq!(
            s.len(),
            before[i] + per_org,
            "every call appended one entry"
        );
        assert_eq!(s, (1..=s.len() as i64).collect::<Vec<_>>(), "gap-free");
        let r = verify(&t, org).await;
        assert!(r.ok, "{}", r.summary);
        assert_eq!(r.summary, format!("{0}/{0} entries valid", s.len()));
        let (head, _) = store_audit::head(&t.app.db, org).await.unwrap().unwrap();
        assert_eq!(head, s.len() as i64);
    }
    t.finish().await;
}

/// 150 requests over three orgs, the first 50 of them sent twice at once
/// with the same `Idempotency-Key`, all 200 calls concurrent (on the
/// production profile this is the PostgreSQL submit of issue 17: the key,
/// the request number and the chain's next link taken in one statement,
/// the rest written in another): one request per key, both calls of a key
/// answered alike, numbers without gaps, one `submitted` event each, every
/// key's answer recorded, every review job run and every chain verifies.
#[tokio::test]
async fn concurrent_submits_stay_numbered_chained_and_deduplicated() {
    let t = TestApp::spawn().await;
    let mut orgs = Vec::new();
    for i in 0..3 {
        let (org, key, _) = t.create_org(&format!("Submits {i}"), "cn").await;
        let m = add_member(&t, &org, &key, "member").await;
        orgs.push((org, key, m["id"].as_str().unwrap().to_string()));
    }
    let calls = (0..200usize).map(|i| {
        let j = if i < 150 { i } else { i - 150 };
        let (org, key, member) = &orgs[j % 3];
        let t = &t;
        async move {
            let mut body = json!({"kind": "ftp_access", "remark": format!("request {j}")});
            if j % 2 == 0 {
                body["requester"] = json!(member);
            }
            let r = t
                .client
                .post(format!("{}/v1/orgs/{org}/requests", t.base))
                .bearer_auth(key)
                .header("idempotency-key", format!("submit-{j}"))
                .json(&body)
                .send()
                .await
                .expect("request");
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            assert_eq!(status, 202, "call {i}: {text}");
            (j, text)
        }
    });
    let answers = futures::future::join_all(calls).await;
    for (j, text) in &answers[150..] {
        assert_eq!(*text, answers[*j].1, "both calls of key {j} answered alike");
    }
    for (o, (org, ..)) in orgs.iter().enumerate() {
        let n = (0..150).filter(|j| j % 3 == o).count();
        let numbers: Vec<String> = on_db!(&t.app.db, |p| sqlx::query_scalar::<_, String>(
            "SELECT number FROM requests WHERE org_id = $1 ORDER BY number"
        )
        .bind(org)
        .fetch_all(p)
        .await)
        .unwrap();
        let want: Vec<String> = (1..=n).map(|s| format!("R{s:06}")).collect();
        assert_eq!(numbers, want, "one request per key, numbered without gaps");
        let submits: i64 = on_db!(&t.app.db, |p| sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_log WHERE org_id = $1 AND action = 'request.submit'"
        )
        .bind(org)
        .fetch_one(p)
        .await)
        .unwrap();
        assert_eq!(submits, n as i64, "one audit entry per request");
    }
    assert_eq!(t.count("requests").await, 150);
    assert_eq!(
        t.count("request_events WHERE type = 'submitted'").await,
        150
    );
    assert_eq!(
        t.count("idempotency_keys WHERE status = 202").await,
        150,
        "every key's answer recorded"
    );
    t.eventually("every review job ran", || async {
        t.count("requests WHERE status = 'submitted'").await == 0
    })
    .await;
    // The review jobs append entries too: verify once they are done.
    t.drain().await;
    for (org, ..) in &orgs {
        let s = seqs(&t, org).await;
        assert_eq!(s, (1..=s.len() as i64).collect::<Vec<_>>(), "gap-free");
        let r = verify(&t, org).await;
        assert!(r.ok, "{}", r.summary);
        assert_eq!(r.summary, format!("{0}/{0} entries valid", s.len()));
    }
    t.finish().await;
}

/// PostgreSQL with the outbox (the production profile): a submit writes in
/// ONE statement numbered and linked from what its read saw
/// (`store::submit_pg::write_if_unchanged`). Two submits into one org that
/// read the same counter and audit head race there: the winner writes,
/// the loser's statement writes nothing (not even its Idempotency-Key's
/// row, which it had inserted) and the transaction writes it instead. The
/// race is forced: a transaction holds the org's row until both statements
/// wait for it, so both have read before either writes. Both land, numbered
/// 1 and 2, each key with its own answer, and the chain verifies. (The
/// embedded profile writes on the SQLite writer's thread, under the lock:
/// nothing to race; `api_submit_writer` covers it.)
#[tokio::test]
async fn racing_one_statement_submits_fall_back_and_stay_chained() {
    let t = TestApp::spawn().await;
    let approvald::db::Db::Postgres(pool) = &t.app.db else {
        t.finish().await;
        return;
    };
    let (org, key, _) = t.create_org("Racing", "cn").await;
    let head_before = seqs(&t, &org).await.len() as i64;
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM orgs WHERE id = $1 FOR UPDATE")
        .bind(&org)
        .execute(&mut *holder)
        .await
        .unwrap();
    let call = |n: usize| {
        let (t, org, key) = (&t, &org, &key);
        async move {
            let r = t
                .client
                .post(format!("{}/v1/orgs/{org}/requests", t.base))
                .bearer_auth(key)
                .header("idempotency-key", format!("race-{n}"))
                .json(&json!({"kind": "ftp_access", "remark": format!("race {n}")}))
                .send()
                .await
                .expect("request");
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            assert_eq!(status, 202, "call {n}: {text}");
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    let waiting = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            if n >= 2 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the two submits never both waited for the org's row ({n} waiting)"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        holder.commit().await.unwrap();
    };
    let (a, b, ()) = tokio::join!(call(0), call(1), waiting);
    let mut numbers = vec![a["number"].clone(), b["number"].clone()];
    numbers.sort_by_key(|v| v.to_string());
    assert_eq!(numbers, vec![json!("R000001"), json!("R000002")]);
    for (n, answer) in [a, b].iter().enumerate() {
        let stored: String = on_db!(&t.app.db, |p| {
            sqlx::query_scalar(
            "SELECT response FROM idempotency_keys WHERE org_id = $1 AND key = $2 AND status = 202"
        )
        .bind(&org)
        .bind(format!("race-{n}"))
        .fetch_one(p)
        .await
        })
        .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&stored).unwrap(),
            *answer,
            "key race-{n} holds its own answer"
        );
    }
    assert_eq!(t.count("request_events WHERE type = 'submitted'").await, 2);
    let scrape = t.metrics().await;
    assert!(
        scrape.contains("approvald_submit_optimistic_total{outcome=\"lost\"}"),
        "the loser fell back: {scrape}"
    );
    // The review jobs append entries too: verify once they are done.
    t.drain().await;
    let s = seqs(&t, &org).await;
    assert_eq!(s, (1..=s.len() as i64).collect::<Vec<_>>(), "gap-free");
    let submits: i64 = on_db!(&t.app.db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_log WHERE org_id = $1 AND action = 'request.submit' AND seq > $2"
    )
    .bind(&org)
    .bind(head_before)
    .fetch_one(p)
    .await)
    .unwrap();
    assert_eq!(
        submits, 2,
        "one audit entry per request, after the head both read"
    );
    let r = verify(&t, &org).await;
    assert!(r.ok, "{}", r.summary);
    t.finish().await;
}

/// Each tampering, on an org of its own with seq 1..=8, is reported at the
/// seq it touched.
#[tokio::test]
async fn tampering_is_reported_at_the_right_seq() {
    let t = TestApp::spawn().await;
    // Seq 1 org.create, 2 key.create, 3..=8 member.update.
    let fresh = |name: &'static str| org_with_entries(&t, name, 6);

    // A changed field.
    let (org, ..) = fresh("Changed").await;
    assert_eq!(verify(&t, &org).await.summary, "8/8 entries valid");
    sql(
        &t,
        "UPDATE audit_log SET detail = '{\"fields\":[\"email\"]}' WHERE org_id = $1 AND seq = 4",
        &org,
    )
    .await;
    let r = verify(&t, &org).await;
    let p = r.problem.clone().expect("broken");
    assert_eq!((p.seq, p.kind), (Some(4), Break::Changed), "{}", r.summary);
    assert_eq!(r.valid, 3);
    assert!(
        r.summary
            .starts_with("3/8 entries valid; first break at seq 4: changed"),
        "{}",
        r.summary
    );

    // A deleted row.
    let (org, ..) = fresh("Deleted").await;
    sql(
        &t,
        "DELETE FROM audit_log WHERE org_id = $1 AND seq = 5",
        &org,
    )
    .await;
    let p = verify(&t, &org).await.problem.expect("broken");
    assert_eq!((p.seq, p.kind), (Some(5), Break::Removed), "{}", p.detail);

    // A deleted row with the later ones renumbered to close the gap.
    let (org, ..) = fresh("Renumbered").await;
    sql(
        &t,
        "DELETE FROM audit_log WHERE org_id = $1 AND seq = 5",
        &org,
    )
    .await;
    sql(
        &t,
        "UPDATE audit_log SET seq = seq - 1 WHERE org_id = $1 AND seq > 5",
        &org,
    )
    .await;
    sql(
        &t,
        "UPDATE audit_heads SET seq = seq - 1 WHERE org_id = $1",
        &org,
    )
    .await;
    let p = verify(&t, &org).await.problem.expect("broken");
    assert_eq!((p.seq, p.kind), (Some(5), Break::Removed), "{}", p.detail);

    // An inserted row: the later rows moved up one to make room, the head too.
    let (org, ..) = fresh("Inserted").await;
    sql(
        &t,
        "UPDATE audit_log SET seq = seq + 1000 WHERE org_id = $1 AND seq >= 3",
        &org,
    )
    .await;
    sql(
        &t,
        "UPDATE audit_log SET seq = seq - 999 WHERE org_id = $1 AND seq > 1000",
        &org,
    )
    .await;
    sql(
        &t,
        "INSERT INTO audit_log (id, org_id, type, actor, action, target, detail, at, seq, hash, prev_hash) \
         SELECT 'forged-1', org_id, 'operation', 'key:x', 'member.update', target, '{}', at, 3, hash, prev_hash \
         FROM audit_log WHERE org_id = $1 AND seq = 2",
        &org,
    )
    .await;
    sql(
        &t,
        "UPDATE audit_heads SET seq = seq + 1 WHERE org_id = $1",
        &org,
    )
    .await;
    let p = verify(&t, &org).await.problem.expect("broken");
    assert_eq!((p.seq, p.kind), (Some(3), Break::Inserted), "{}", p.detail);
    assert_eq!(p.entry_id.as_deref(), Some("forged-1"));

    // Two rows swapped.
    let (org, ..) = fresh("Swapped").await;
    sql(
        &t,
        "UPDATE audit_log SET seq = -6 WHERE org_id = $1 AND seq = 6",
        &org,
    )
    .await;
    sql(
        &t,
        "UPDATE audit_log SET seq = 6 WHERE org_id = $1 AND seq = 7",
        &org,
    )
    .await;
    sql(
        &t,
        "UPDATE audit_log SET seq = 7 WHERE org_id = $1 AND seq = -6",
        &org,
    )
    .await;
    let p = verify(&t, &org).await.problem.expect("broken");
    assert_eq!((p.seq, p.kind), (Some(6), Break::Reordered), "{}", p.detail);

    // The last row removed: only the org's head still knows it existed.
    let (org, ..) = fresh("Last").await;
    sql(
        &t,
        "DELETE FROM audit_log WHERE org_id = $1 AND seq = 8",
        &org,
    )
    .await;
    let r = verify(&t, &org).await;
    let p = r.problem.clone().expect("broken");
    assert_eq!((p.seq, p.kind), (Some(8), Break::Removed), "{}", p.detail);
    assert_eq!((r.valid, r.entries), (7, 8));

    // A row slipped in without any seq.
    let (org, ..) = fresh("Orphan").await;
    sql(
        &t,
        "INSERT INTO audit_log (id, org_id, type, actor, action, detail, at) \
         VALUES ('forged-2', $1, 'operation', 'key:x', 'member.update', '{}', 1)",
        &org,
    )
    .await;
    let p = verify(&t, &org).await.problem.expect("broken");
    assert_eq!((p.seq, p.kind), (None, Break::Inserted), "{}", p.detail);

    // The API reports the same, and an untouched org next to them is fine.
    let (org, ..) = fresh("Intact").await;
    let ok = t
        .get(&format!("/v1/orgs/{org}/audit/verify"), &t.platform_key)
        .await
        .expect(200)
        .json();
    assert_eq!(ok["summary"], "8/8 entries valid");
    assert_eq!(ok["ok"], true);
    // The verification was recorded (seq 9); break seq 2.
    sql(
        &t,
        "UPDATE audit_log SET actor = 'key:someone-else' WHERE org_id = $1 AND seq = 2",
        &org,
    )
    .await;
    let bad = t
        .get(&format!("/v1/orgs/{org}/audit/verify"), &t.platform_key)
        .await
        .expect(200)
        .json();
    assert_eq!(bad["ok"], false);
    assert_eq!(bad["problem"]["seq"], 2);
    assert_eq!(bad["problem"]["kind"], "changed");
    assert_eq!(bad["entries"], 9);
    t.finish().await;
}

/// `approvald audit export` output verifies with the standalone Python
/// verifier (standard library only), which also catches a changed line.
#[tokio::test]
async fn export_verifies_with_the_python_verifier() {
    let t = TestApp::spawn().await;
    let (org, key, owner) = org_with_entries(&t, "Export Co", 3).await;
    login(&t, &org, &key, &owner, true).await.expect(201);
    login(&t, &org, &key, &owner, false).await.expect(201);
    // Non-ASCII text, quotes and control characters must hash the same way.
    rename(&t, &org, &key, &owner, &owner, "张三 \"Zhang\" é")
        .await
        .expect(200);
    let mut out = Vec::new();
    let n = approvald::audit_cmd::export(&t.app.db, &org, 1, t.app.now_ms(), &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count() as u64, n);
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 1);
    assert_eq!(first["action"], "org.create");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/verify-audit-export.py"
    );
    let run = |body: &str| {
        let path = t
            .dir
            .path()
            .join(format!("export-{}.jsonl", uuid::Uuid::new_v4()));
        std::fs::write(&path, body).unwrap();
        let o = std::process::Command::new("python3")
            .arg(script)
            .arg(&path)
            .output()
            .expect("python3 is needed for this test");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )
    };
    let (ok, said) = run(&text);
    assert!(ok, "{said}");
    assert_eq!(said, format!("{n}/{n} entries valid"));

    // From a later seq: linked by the first line's prev_hash.
    let mut tail = Vec::new();
    approvald::audit_cmd::export(&t.app.db, &org, 4, t.app.now_ms(), &mut tail)
        .await
        .unwrap();
    let (ok, said) = run(&String::from_utf8(tail).unwrap());
    assert!(ok, "{said}");

    // A changed field in line 5 (seq 5).
    let lines: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 4 {
                let mut v: Value = serde_json::from_str(l).unwrap();
                v["actor"] = json!("key:forged");
                v.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    let (ok, said) = run(&lines.join("\n"));
    assert!(!ok, "{said}");
    assert!(said.contains("first break at seq 5"), "{said}");
    t.finish().await;
}

/// The HTTP request id reaches the entries a request writes (and comes back
/// as a header); changes made by jobs name the job.
#[tokio::test]
async fn entries_carry_request_ids_and_job_actors() {
    let t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Req Id Co", "cn").await;
    let r = t
        .client
        .patch(format!("{}/v1/orgs/{org}/members/{owner}", t.base))
        .bearer_auth(&key)
        .header("approvald-actor", &owner)
        .header("x-request-id", "trace-abc.123")
        .json(&json!({"name": "Renamed Owner"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-request-id"], "trace-abc.123");
    // A request id of our own when the caller sends none (or a bad one).
    let r = t
        .client
        .get(format!("{}/v1/orgs/{org}", t.base))
        .bearer_auth(&key)
        .header("x-request-id", "has spaces")
        .send()
        .await
        .unwrap();
    let own = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(own, "has spaces");
    assert_eq!(own.len(), 36, "a UUID: {own}");

    submit(&t, &org, &key, json!({"kind": "ftp_access", "remark": "r"}))
        .await
        .expect(202);
    t.drain().await;
    let rows: Vec<(String, String, Option<String>)> = on_db!(&t.app.db, |p| sqlx::query_as(
        "SELECT action, actor, request_id FROM audit_log WHERE org_id = $1 ORDER BY seq"
    )
    .bind(&org)
    .fetch_all(p)
    .await)
    .unwrap();
    let update = rows.iter().find(|r| r.0 == "member.update").unwrap();
    assert_eq!(update.2.as_deref(), Some("trace-abc.123"));
    let submitted = rows.iter().find(|r| r.0 == "request.submit").unwrap();
    assert!(submitted.2.is_some(), "API changes carry a request id");
    let moved = rows
        .iter()
        .find(|r| r.0 == "request.in_review" || r.0 == "request.approve" || r.0 == "request.reject")
        .unwrap_or_else(|| panic!("the review job's change is audited: {rows:?}"));
    assert_eq!(moved.1, "job:review");
    assert_eq!(moved.2, None, "jobs run outside any HTTP request");
    assert!(verify(&t, &org).await.ok);
    t.finish().await;
}

/// Rows from before the chain (numbered by migration 0010, unhashed) are
/// hashed once at start, so an upgraded database verifies.
#[tokio::test]
async fn pre_chain_rows_are_hashed_at_start() {
    let mut t = TestApp::spawn().await;
    let (org, key, owner) = org_with_entries(&t, "Legacy Co", 2).await;
    // What migration 0010 leaves behind: numbered rows, no hashes, a head
    // without a hash.
    sql(
        &t,
        "UPDATE audit_log SET hash = NULL, prev_hash = NULL WHERE org_id = $1",
        &org,
    )
    .await;
    sql(
        &t,
        "UPDATE audit_heads SET hash = NULL WHERE org_id = $1",
        &org,
    )
    .await;
    t.restart().await;
    let r = verify(&t, &org).await;
    assert!(r.ok, "{}", r.summary);
    assert_eq!(r.summary, "4/4 entries valid");
    // And the chain goes on from there.
    rename(&t, &org, &key, &owner, &owner, "Later")
        .await
        .expect(200);
    assert_eq!(verify(&t, &org).await.summary, "5/5 entries valid");
    t.finish().await;
}

/// Only the super admin and admins read an org's logs (and its chain
/// check); a plain member gets 403, another org's key 404. Refused reads
/// write nothing; allowed ones are recorded under the reader.
#[tokio::test]
async fn only_admins_read_the_logs() {
    let t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Readers Co", "cn").await;
    let (_, other_key, other_owner) = t.create_org("Others Co", "cn").await;
    let admin = add_member(&t, &org, &key, "admin").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let member = add_member(&t, &org, &key, "member").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for path in [
        format!("/v1/orgs/{org}/audit"),
        format!("/v1/orgs/{org}/audit/verify"),
    ] {
        for reader in [&owner, &admin] {
            let r = t.get_as(&path, &key, reader).await.expect(200).json();
            assert!(r.get("items").is_some() || r["ok"] == true, "{r}");
        }
        t.get(&path, &t.platform_key).await.expect(200);
        let before = t.count("audit_log").await;
        let r = t.get_as(&path, &key, &member).await;
        assert_eq!(r.status.as_u16(), 403, "{path}: {}", r.text);
        r.assert_problem();
        let r = t.get(&path, &key).await;
        assert_eq!(
            r.status.as_u16(),
            403,
            "{path} without an actor: {}",
            r.text
        );
        r.assert_problem();
        for r in [
            t.get_as(&path, &other_key, &other_owner).await,
            t.get(&path, &other_key).await,
        ] {
            assert_eq!(r.status.as_u16(), 404, "{path}: {}", r.text);
            r.assert_problem();
        }
        assert_eq!(
            t.count("audit_log").await,
            before,
            "refused reads write nothing"
        );
    }
    let reads: Vec<(String, String)> = on_db!(&t.app.db, |p| sqlx::query_as(
        "SELECT action, actor FROM audit_log WHERE org_id = $1 AND action LIKE 'audit.%' ORDER BY seq"
    )
    .bind(&org)
    .fetch_all(p)
    .await)
    .unwrap();
    let platform = reads[2].1.clone();
    assert!(platform.starts_with("key:"), "{platform}");
    assert_eq!(
        reads,
        vec![
            ("audit.list".into(), format!("member:{owner}")),
            ("audit.list".into(), format!("member:{admin}")),
            ("audit.list".into(), platform.clone()),
            ("audit.verify".into(), format!("member:{owner}")),
            ("audit.verify".into(), format!("member:{admin}")),
            ("audit.verify".into(), platform),
        ]
    );
    t.finish().await;
}

/// A database written before the chain (migrations up to 0009, rows in the
/// old shape) verifies after the upgrade: migration 0010 numbers the rows,
/// the first start hashes them, and the chain goes on from there.
#[tokio::test]
async fn an_upgraded_database_verifies() {
    use approvald::db::Db;
    let profile = crate::harness::Profile::from_env();
    let dir = tempfile::tempdir().unwrap();
    let engine = match profile {
        crate::harness::Profile::Embedded => "sqlite",
        crate::harness::Profile::Production => "postgres",
    };
    let all = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(engine);
    let old = dir.path().join("before-0010");
    std::fs::create_dir(&old).unwrap();
    for f in std::fs::read_dir(&all).unwrap() {
        let f = f.unwrap();
        if f.file_name().to_string_lossy().as_ref() < "0010" {
            std::fs::copy(f.path(), old.join(f.file_name())).unwrap();
        }
    }
    let db = match profile {
        crate::harness::Profile::Embedded => {
            let url = format!("sqlite://{}/upgrade.db?mode=rwc", dir.path().display());
            Db::Sqlite(
                sqlx::SqlitePool::connect_with(approvald::db::sqlite_options(&url).unwrap())
                    .await
                    .unwrap(),
            )
        }
        crate::harness::Profile::Production => Db::Postgres(
            sqlx::PgPool::connect(&crate::harness::fresh_pg_database().await)
                .await
                .unwrap(),
        ),
    };
    let before = sqlx::migrate::Migrator::new(old.as_path()).await.unwrap();
    on_db!(&db, |p| before.run(p).await).unwrap();
    // Rows as the old code wrote them (no seq, no hash), out of time order.
    for (id, org, kind, at) in [
        (
            "00000000-0000-7000-8000-000000000003",
            "o1",
            "operation",
            2000,
        ),
        ("00000000-0000-7000-8000-000000000002", "o1", "login", 1000),
        (
            "00000000-0000-7000-8000-000000000001",
            "o1",
            "operation",
            1000,
        ),
        (
            "00000000-0000-7000-8000-000000000004",
            "platform",
            "operation",
            5,
        ),
        (
            "00000000-0000-7000-8000-000000000005",
            "platform",
            "operation",
            7,
        ),
    ] {
        on_db!(&db, |p| sqlx::query(
            "INSERT INTO audit_log (id, org_id, type, actor, action, target, detail, ip, user_agent, success, at) \
             VALUES ($1, $2, $3, 'key:k', $3, 't', '{\"n\": 1}', $4, $5, $6, $7)"
        )
        .bind(id)
        .bind(org)
        .bind(kind)
        .bind((kind == "login").then_some("10.0.0.1"))
        .bind((kind == "login").then_some("ua"))
        .bind((kind == "login").then_some(true))
        .bind(at)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
    }
    db.migrate().await.unwrap();
    assert_eq!(store_audit::finish_migration(&db).await.unwrap(), 5);
    assert_eq!(store_audit::finish_migration(&db).await.unwrap(), 0, "once");
    let order: Vec<(String, i64)> = on_db!(&db, |p| sqlx::query_as(
        "SELECT id, seq FROM audit_log WHERE org_id = 'o1' ORDER BY seq"
    )
    .fetch_all(p)
    .await)
    .unwrap();
    let ids: Vec<&str> = order.iter().map(|r| &r.0[r.0.len() - 1..]).collect();
    assert_eq!(ids, ["1", "2", "3"], "time order, then id");
    for (org, n) in [("o1", 3), ("platform", 2)] {
        let r = store_audit::verify(&db, org).await.unwrap();
        assert_eq!(r.summary, format!("{n}/{n} entries valid"), "{org}");
    }
    let mut tx = db.begin().await.unwrap();
    store_audit::operation(
        &mut tx,
        store_audit::Operation {
            org_id: "o1",
            actor: "key:k",
            action: "member.update",
            target: None,
            detail: json!({"after": {"name": "x"}}),
            at: 3000,
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        store_audit::verify(&db, "o1").await.unwrap().summary,
        "4/4 entries valid"
    );
}
