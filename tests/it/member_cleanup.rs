//! Disabling a member (issue 12): access stops at the disable's commit, the
//! `cleanup` job finishes the rest (their requests cancelled, their reviews
//! handed over, their payment permission off, anything acting for them
//! revoked), nothing is deleted, a second run changes nothing; enabling
//! while the cleanup runs leaves the defined state.
use approvald::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    api_util::{add_member, scalar_i64, submit, wait_count, wait_status},
    harness::{Opts, TestApp},
    review_util::{decide, open, outbox, state_digest},
};

/// The review link mailed to `email` for `request_id` (waits for the mail).
async fn link_for(t: &TestApp, request_id: &str, email: &str) -> String {
    let sql = "SELECT COUNT(*) FROM emails WHERE request_id = $1 AND template = 'review_requested' \
               AND status = 'sent' AND recipient = '";
    wait_count(
        t,
        &format!("{sql}{email}'"),
        request_id,
        1,
        &format!("review mail to {email}"),
    )
    .await;
    let id: String = approvald::on_db!(&t.app.db, |p| sqlx::query_scalar(
        "SELECT id FROM emails WHERE request_id = $1 AND template = 'review_requested' AND recipient = $2"
    )
    .bind(request_id)
    .bind(email)
    .fetch_one(p)
    .await)
    .unwrap();
    outbox(t)[&id]
        .review_token(&t.base)
        .expect("review mail has a link")
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} in {v}"))
        .to_string()
}

/// Rows of a table that belong to one org or member (the "nothing deleted" check).
async fn rows(t: &TestApp, sql: &str, arg: &str) -> i64 {
    scalar_i64(t, sql, arg).await
}

/// Row counts that must never go down: the org's requests, their events,
/// the leaver's grants, the org's members, the leaver's link rows, the org's
/// audit rows.
async fn kept(t: &TestApp, org: &str, lid: &str) -> [i64; 6] {
    [
        rows(t, "SELECT COUNT(*) FROM requests WHERE org_id = $1", org).await,
        rows(
            t,
            "SELECT COUNT(*) FROM request_events WHERE request_id IN (SELECT id FROM requests WHERE org_id = $1)",
            org,
        )
        .await,
        rows(t, "SELECT COUNT(*) FROM grants WHERE member_id = $1", lid).await,
        rows(t, "SELECT COUNT(*) FROM members WHERE org_id = $1", org).await,
        rows(t, "SELECT COUNT(*) FROM review_tokens WHERE reviewer_id = $1", lid).await,
        rows(t, "SELECT COUNT(*) FROM audit_log WHERE org_id = $1", org).await,
    ]
}

/// The org of the story: owner (super admin), admin A1, the leaver L (an
/// admin too, so reviews are assigned to them), and a platform reviewer.
struct Story {
    org: String,
    key: String,
    /// The super admin: the actor of disables and enables.
    owner: String,
    a1: Value,
    leaver: Value,
    /// L's two open requests (platform-reviewed).
    open: Vec<String>,
    /// A1's payment-permission request, reviewed by the owner and L.
    reviewed: String,
    /// L's approved payment-permission request (the grant).
    paid: String,
}

async fn story(t: &TestApp) -> Story {
    t.create_reviewer("plat@example.com", "marketplace", false)
        .await;
    let (org, key, owner) = t.create_org("Leaver Co", "cn").await;
    let a1 = add_member(t, &org, &key, "admin").await;
    let leaver = add_member(t, &org, &key, "admin").await;
    let lid = s(&leaver, "id");

    // L's payment permission: asked for, approved by A1 through the link.
    let paid = s(
        &submit(
            t,
            &org,
            &key,
            json!({"kind": "payment_permission", "requester": lid, "remark": "I pay suppliers"}),
        )
        .await
        .expect(202)
        .json(),
        "id",
    );
    wait_status(t, &org, &key, &paid, "in_review").await;
    let a1_link = link_for(t, &paid, a1["email"].as_str().unwrap()).await;
    decide(t, &a1_link, "approve", "").await;
    wait_status(t, &org, &key, &paid, "approved").await;

    // Two open requests of L's, in review by the platform.
    let mut open_ids = Vec::new();
    for kind in ["ftp_access", "bulk_data_management"] {
        let id = s(
            &submit(
                t,
                &org,
                &key,
                json!({"kind": kind, "requester": lid, "remark": "for the team"}),
            )
            .await
            .expect(202)
            .json(),
            "id",
        );
        wait_status(t, &org, &key, &id, "in_review").await;
        open_ids.push(id);
    }
    // A review assigned to L: A1 asks for payment permission; the owner
    // and L review it.
    let reviewed = s(
        &submit(
            t,
            &org,
            &key,
            json!({"kind": "payment_permission", "requester": s(&a1, "id"), "remark": "me too"}),
        )
        .await
        .expect(202)
        .json(),
        "id",
    );
    wait_status(t, &org, &key, &reviewed, "in_review").await;
    Story {
        org,
        key,
        owner,
        a1,
        leaver,
        open: open_ids,
        reviewed,
        paid,
    }
}

/// `authz/check` of an action every active admin may take.
async fn authz(t: &TestApp, org: &str, key: &str, member: &str) -> Value {
    t.post(
        &format!("/v1/orgs/{org}/authz/check"),
        key,
        json!({"member": member, "action": "members:manage"}),
    )
    .await
    .expect(200)
    .json()
}

async fn cleanup_id(t: &TestApp, member: &str) -> String {
    approvald::on_db!(&t.app.db, |p| sqlx::query_scalar(
        "SELECT id FROM member_cleanups WHERE member_id = $1 ORDER BY created_at DESC LIMIT 1"
    )
    .bind(member)
    .fetch_one(p)
    .await)
    .expect("a cleanup row")
}

async fn events(t: &TestApp, org: &str, key: &str, id: &str) -> Vec<Value> {
    t.get(&format!("/v1/orgs/{org}/requests/{id}"), key)
        .await
        .expect(200)
        .json()["events"]
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_member_cleans_up_after_them_and_deletes_nothing() {
    let t = TestApp::spawn_with(Opts {
        toml: crate::api_util::HOOKS_ON_LOOPBACK.to_string(),
        ..Default::default()
    })
    .await;
    let hooks = crate::api_util::subscribe_to_everything(&t).await;
    let st = story(&t).await;
    let (org, key) = (&st.org, &st.key);
    let lid = s(&st.leaver, "id");
    let leaver_link = link_for(&t, &st.reviewed, st.leaver["email"].as_str().unwrap()).await;
    assert_eq!(open(&t, &leaver_link).await.status, StatusCode::OK);

    // A second admin joins after the review was assigned: the hand-over
    // goes to them (the owner already reviews it).
    let a2 = add_member(&t, org, key, "admin").await;
    let a2_email = s(&a2, "email");

    // L may pay from the shared balance and has a hold open.
    crate::spend_util::set_limits(&t, org, &lid, 10_000, 50_000, 100_000).await;
    let hold = crate::spend_util::authorize(&t, org, key, &lid, 700, "cleanup-hold-1", false)
        .await
        .expect(200)
        .json();
    assert_eq!(hold["approved"], true, "{hold}");
    let hold_id = hold["id"].as_str().expect("payment id").to_string();

    let before = kept(&t, org, &lid).await;

    assert_eq!(authz(&t, org, key, &lid).await["allowed"], true);
    // Only the super admin disables an admin: A1 may not.
    let r = t
        .post_as(
            &format!("/v1/orgs/{org}/members/{lid}/disable"),
            key,
            &s(&st.a1, "id"),
            json!({}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 403, "{}", r.text);
    assert_eq!(
        kept(&t, org, &lid).await,
        before,
        "a refused disable writes nothing"
    );
    let d = t
        .post_as(
            &format!("/v1/orgs/{org}/members/{lid}/disable"),
            key,
            &st.owner,
            json!({}),
        )
        .await
        .expect(202)
        .json();
    assert_eq!(d["status"], "disabled");
    // Access stops with the disable's commit: the next authz check is
    // denied and the review link is refused.
    let check = authz(&t, org, key, &lid).await;
    assert_eq!(check["allowed"], false, "{check}");
    assert_eq!(check["reason"], "member_disabled", "{check}");
    let gone = open(&t, &leaver_link).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.body);

    // The cleanup job runs in the daemon's workers.
    let cid = cleanup_id(&t, &lid).await;
    wait_count(
        &t,
        "SELECT COUNT(*) FROM member_cleanups WHERE id = $1 AND completed_at IS NOT NULL",
        &cid,
        1,
        "cleanup completed",
    )
    .await;
    t.drain().await;

    // 1. Their open requests are cancelled, reason member_disabled, and the
    //    platform reviewer is told (the `cancelled` mail) once per request.
    for id in &st.open {
        let r = wait_status(&t, org, key, id, "cancelled").await;
        let ev = r["events"].as_array().unwrap();
        let c = ev
            .iter()
            .find(|e| e["type"] == "cancelled")
            .expect("cancelled event");
        assert_eq!(c["detail"]["reason"], "member_disabled", "{c}");
        // The API's cancel flow: one request.cancel audit row by the system,
        // from the cleanup, and the request.cancelled webhook event.
        assert_eq!(c["detail"]["via"], "cleanup", "{c}");
        assert_eq!(
            scalar_i64(
                &t,
                "SELECT COUNT(*) FROM audit_log WHERE action = 'request.cancel' AND actor = 'system' AND target = $1",
                id
            )
            .await,
            1
        );
        assert_eq!(
            scalar_i64(
                &t,
                "SELECT COUNT(*) FROM webhook_events WHERE type = 'request.cancelled' AND body LIKE '%' || $1 || '%'",
                id
            )
            .await,
            1
        );
        assert_eq!(
            scalar_i64(
                &t,
                "SELECT COUNT(*) FROM emails WHERE request_id = $1 AND template = 'cancelled' AND recipient = 'plat@example.com'",
                id
            )
            .await,
            1
        );
    }
    // 2. The review assigned to them is handed over: A2 gets a new link,
    //    the SLA due time is unchanged, the event names both.
    let due_before = scalar_i64(
        &t,
        "SELECT sla_due_at FROM requests WHERE id = $1",
        &st.reviewed,
    )
    .await;
    let ev = events(&t, org, key, &st.reviewed).await;
    let h = ev
        .iter()
        .find(|e| e["type"] == "handed_over")
        .expect("handed_over event");
    assert_eq!(h["detail"]["from"]["id"], lid.as_str(), "{h}");
    assert_eq!(h["detail"]["to"], json!([a2["name"]]), "{h}");
    let a2_link = link_for(&t, &st.reviewed, &a2_email).await;
    assert_eq!(
        open(&t, &leaver_link).await.status,
        StatusCode::NOT_FOUND,
        "the old link stays refused"
    );
    let r = decide(&t, &a2_link, "approve", "").await;
    assert!(r.status.is_success(), "{}: {}", r.status, r.text);
    let decided = wait_status(&t, org, key, &st.reviewed, "approved").await;
    assert_eq!(decided["decided_by"], a2["name"]);
    assert_eq!(
        scalar_i64(
            &t,
            "SELECT sla_due_at FROM requests WHERE id = $1",
            &st.reviewed
        )
        .await,
        due_before
    );
    // 3. Their payment permission is off: the grant revoked, with reason.
    let g = t
        .get(&format!("/v1/orgs/{org}/grants?all=true"), key)
        .await
        .expect(200)
        .json();
    let grant = g["items"]
        .as_array()
        .or(g.as_array())
        .unwrap()
        .iter()
        .find(|g| g["member_id"] == lid.as_str())
        .cloned()
        .expect("L's grant is still listed");
    assert_eq!(grant["status"], "revoked", "{grant}");
    let ev = events(&t, org, key, &st.paid).await;
    let gr = ev
        .iter()
        .find(|e| e["type"] == "grant_revoked")
        .expect("grant_revoked event");
    assert_eq!(gr["detail"]["reason"], "member_disabled");
    //    Their open hold is voided (kept, with the reason) and their
    //    member-level payment permission is turned off.
    assert_eq!(
        scalar_i64(
            &t,
            "SELECT COUNT(*) FROM payments WHERE id = $1 AND status = 'voided' AND reason = 'member_disabled'",
            &hold_id
        )
        .await,
        1,
        "the hold is voided, not deleted"
    );
    assert_eq!(
        scalar_i64(
            &t,
            "SELECT COUNT(*) FROM member_payment WHERE member_id = $1 AND active AND NOT allowed",
            &lid
        )
        .await,
        1,
        "their member-level payment permission is off"
    );
    // 5. One audit row per step with its counts, and one for the end.
    let steps: Vec<(String, String)> = approvald::on_db!(&t.app.db, |p| sqlx::query_as(
        "SELECT action, detail FROM audit_log WHERE target = $1 AND action LIKE 'member.cleanup%' ORDER BY at, id"
    )
    .bind(&lid)
    .fetch_all(p)
    .await)
    .unwrap();
    let names: Vec<String> = steps
        .iter()
        .map(|(a, d)| {
            let d: Value = serde_json::from_str(d).unwrap();
            match d["step"].as_str() {
                Some(s) => format!("{a}:{s}"),
                None => a.clone(),
            }
        })
        .collect();
    assert_eq!(
        names,
        [
            "member.cleanup.step:cancel_requests",
            "member.cleanup.step:hand_over_reviews",
            "member.cleanup.step:payment",
            "member.cleanup.step:credentials",
            "member.cleanup_completed"
        ]
    );
    // Webhook events, written with each change: the disable, both cancels,
    // the revoke, and the completion once.
    let events_of = |ty: &'static str| {
        let org = org.clone();
        let t = &t;
        async move {
            scalar_i64(
                t,
                &format!("SELECT COUNT(*) FROM webhook_events WHERE org_id = $1 AND type = '{ty}'"),
                &org,
            )
            .await
        }
    };
    assert_eq!(events_of("member.disabled").await, 1);
    assert_eq!(events_of("request.cancelled").await, 2);
    assert_eq!(events_of("grant.revoked").await, 1);
    assert_eq!(events_of("member.cleanup_completed").await, 1);
    let body: String = approvald::on_db!(&t.app.db, |p| {
        sqlx::query_scalar(
        "SELECT body FROM webhook_events WHERE type = 'member.cleanup_completed' AND org_id = $1"
    )
    .bind(org)
    .fetch_one(p)
    .await
    })
    .unwrap();
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["data"]["member_id"], lid.as_str(), "{body}");
    assert_eq!(
        body["data"]["steps"]["cancel_requests"]["cancelled"], 2,
        "{body}"
    );
    // Counted (the recorder is per process, so only presence is checked).
    let metrics = t.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("approvald_member_cleanups_total{outcome=\"completed\"}")),
        "{metrics}"
    );
    assert!(
        metrics.contains("approvald_member_cleanup_seconds_bucket"),
        "{metrics}"
    );
    let first: Value = serde_json::from_str(&steps[0].1).unwrap();
    assert_eq!(first["counts"]["cancelled"], 2, "{first}");
    assert_eq!(first["counts"]["reviewers_told"], 2, "{first}");
    let second: Value = serde_json::from_str(&steps[1].1).unwrap();
    assert_eq!(second["counts"]["handed_over"], 1, "{second}");
    assert_eq!(second["counts"]["new_links"], 1, "{second}");
    let third: Value = serde_json::from_str(&steps[2].1).unwrap();
    assert_eq!(third["counts"]["payment_grants_revoked"], 1, "{third}");

    // Nothing deleted: the leaver's rows are all still there (more events,
    // audit rows and a second link for A2's hand-over; none fewer).
    let after = kept(&t, org, &lid).await;
    assert_eq!(after[0], before[0], "requests");
    assert!(after[1] > before[1], "events only added");
    assert_eq!(after[2], before[2], "grants");
    assert_eq!(after[3], before[3], "members");
    assert_eq!(after[4], before[4], "the leaver's link rows");
    assert!(after[5] > before[5], "audit rows only added");
    let m = t
        .get_as(&format!("/v1/orgs/{org}/members/{lid}"), key, &st.owner)
        .await
        .expect(200)
        .json();
    assert_eq!(m["status"], "disabled");

    // A second run of the job changes nothing and sends nothing.
    t.drain().await;
    let digest = state_digest(&t).await;
    let audit = t.count("audit_log").await;
    let ran = approvald::jobs::cleanup::run(&t.app, &cid).await.unwrap();
    assert_eq!(ran, approvald::jobs::cleanup::Ran::default());
    t.drain().await;
    assert_eq!(state_digest(&t).await, digest);
    assert_eq!(t.count("audit_log").await, audit);
    // Even with the completion mark gone (a kill between the last step and
    // the mark), no step runs twice. (The mark and the completion event are
    // one transaction, so such a kill leaves no event either; this
    // simulation keeps the first event, so the endpoint goes first, or the
    // second completion's event would add a delivery job to the digest.)
    t.call(
        reqwest::Method::DELETE,
        &format!("/v1/webhooks/{}", hooks.id),
        Some(&t.platform_key),
        None,
    )
    .await
    .expect(204);
    t.drain().await;
    let digest = state_digest(&t).await;
    approvald::on_db!(&t.app.db, |p| sqlx::query(
        "UPDATE member_cleanups SET completed_at = NULL WHERE id = $1"
    )
    .bind(&cid)
    .execute(p)
    .await
    .map(|_| ()))
    .unwrap();
    let ran = approvald::jobs::cleanup::run(&t.app, &cid).await.unwrap();
    assert!(ran.steps.is_empty(), "{ran:?}");
    assert!(ran.completed_now);
    t.drain().await;
    assert_eq!(state_digest(&t).await, digest);

    t.finish().await;
}

/// Enabling while the cleanup has not finished: access comes back at once,
/// and the cleanup still does every step for what existed at the disable
/// (the same outcome as enabling after it); what the member does after the
/// enable is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_while_the_cleanup_runs_leaves_the_defined_state() {
    let mut t = TestApp::spawn().await;
    let st = story(&t).await;
    let (org, key) = (st.org.clone(), st.key.clone());
    let lid = s(&st.leaver, "id");
    // No workers from here: the cleanup waits in the queue and runs by hand.
    t.restart_as(Role::Api).await;
    t.post_as(
        &format!("/v1/orgs/{org}/members/{lid}/disable"),
        &key,
        &st.owner,
        json!({}),
    )
    .await
    .expect(202);
    let cid = cleanup_id(&t, &lid).await;
    let c = approvald::jobs::cleanup::load(&t.app, &cid)
        .await
        .unwrap()
        .unwrap();
    let first = approvald::jobs::cleanup::run_step(
        &t.app,
        &c,
        approvald::jobs::cleanup::Step::CancelRequests,
    )
    .await
    .unwrap();
    assert!(first.is_some());

    // Enabled in the middle of the cleanup: access is back at once.
    let m = t
        .post_as(
            &format!("/v1/orgs/{org}/members/{lid}/enable"),
            &key,
            &st.owner,
            json!({}),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(m["status"], "active");
    assert_eq!(authz(&t, &org, &key, &lid).await["allowed"], true);
    // A request made after the enable is theirs to keep.
    let fresh = s(
        &submit(
            &t,
            &org,
            &key,
            json!({"kind": "preorder_shipping", "requester": lid, "remark": "back again"}),
        )
        .await
        .expect(202)
        .json(),
        "id",
    );

    // The rest of the cleanup runs to the end.
    let ran = approvald::jobs::cleanup::run(&t.app, &cid).await.unwrap();
    let done: Vec<&str> = ran.steps.iter().map(|(s, _)| *s).collect();
    assert_eq!(done, ["hand_over_reviews", "payment", "credentials"]);
    assert!(ran.completed_now);

    // The defined state: the member active; what existed at the disable
    // cleaned up exactly as without the enable; the new request untouched.
    t.restart_as(Role::All).await;
    for id in &st.open {
        wait_status(&t, &org, &key, id, "cancelled").await;
    }
    assert_eq!(
        scalar_i64(
            &t,
            "SELECT COUNT(*) FROM request_events WHERE request_id = $1 AND type = 'handed_over'",
            &st.reviewed
        )
        .await,
        1
    );
    assert_eq!(
        scalar_i64(
            &t,
            "SELECT COUNT(*) FROM grants WHERE member_id = $1 AND status = 'active'",
            &lid
        )
        .await,
        0,
        "the payment grant given before the disable is not restored"
    );
    wait_status(&t, &org, &key, &fresh, "in_review").await;
    let m = t
        .get_as(&format!("/v1/orgs/{org}/members/{lid}"), &key, &st.owner)
        .await
        .expect(200)
        .json();
    assert_eq!(m["status"], "active");
    // The queued job finds the cleanup done and does nothing.
    t.drain().await;
    assert_eq!(
        scalar_i64(&t, "SELECT COUNT(*) FROM audit_log WHERE target = $1 AND action = 'member.cleanup_completed'", &lid).await,
        1
    );
    let enabled: String = approvald::on_db!(&t.app.db, |p| sqlx::query_scalar(
        "SELECT detail FROM audit_log WHERE target = $1 AND action = 'member.enable'"
    )
    .bind(&lid)
    .fetch_one(p)
    .await)
    .unwrap();
    assert!(enabled.contains("\"cleanups_running\":1"), "{enabled}");
    t.finish().await;
}

/// A disabled member is given no role and no review; the review job never
/// picks them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_member_gets_no_role_and_no_review() {
    let t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Quiet Co", "cn").await;
    let admin = add_member(&t, &org, &key, "admin").await;
    let member = add_member(&t, &org, &key, "member").await;
    let aid = s(&admin, "id");
    t.post_as(
        &format!("/v1/orgs/{org}/members/{aid}/disable"),
        &key,
        &owner,
        json!({}),
    )
    .await
    .expect(202);
    let r = t
        .call_as(
            reqwest::Method::PATCH,
            &format!("/v1/orgs/{org}/members/{aid}"),
            &key,
            &owner,
            Some(&json!({"role": "purchasing"})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 409, "{}", r.text);
    r.assert_problem();
    assert!(r.text.contains("role"), "{}", r.text);
    // A payment-permission request of another member: the disabled admin
    // is not among its reviewers.
    let id = s(
        &submit(
            &t,
            &org,
            &key,
            json!({"kind": "payment_permission", "requester": s(&member, "id"), "remark": "pay"}),
        )
        .await
        .expect(202)
        .json(),
        "id",
    );
    wait_status(&t, &org, &key, &id, "in_review").await;
    assert_eq!(
        scalar_i64(
            &t,
            "SELECT COUNT(*) FROM request_reviewers WHERE reviewer_id = $1",
            &aid
        )
        .await,
        0
    );
    assert_eq!(
        scalar_i64(
            &t,
            "SELECT COUNT(*) FROM request_reviewers WHERE request_id = $1",
            &id
        )
        .await,
        1,
        "the owner alone reviews it"
    );
    t.finish().await;
}
