//! Roles and authorization checks (issue 10), through the HTTP API: the
//! rules table, the catalog's later functions, disable / grant / revoke seen
//! by the next check, the actor rules, roles' validation and audit, and the
//! permissions listing.
use std::{collections::BTreeSet, time::Duration};

use reqwest::Method;
use serde_json::{Value, json};

use approvald::store::keys::{self, KeyForOrg};

use crate::{
    api_util::{add_member, add_member_with, counts, scalar_i64},
    harness::{Opts, Profile, TestApp},
    review_util::{decide, outbox, reviewer, submit_ftp, wait_emails_final, wait_status},
};

/// Reasons that mean "allowed".
const ALLOWING: [&str; 5] = [
    "super_admin",
    "admin",
    "module_grant",
    "function_grant",
    "menu",
];

async fn put_role(
    t: &TestApp,
    org: &str,
    key: &str,
    actor: &str,
    name: &str,
    spec: Value,
) -> Value {
    t.call_as(
        Method::PUT,
        &format!("/v1/orgs/{org}/roles/{name}"),
        key,
        actor,
        Some(&spec),
    )
    .await
    .expect(201)
    .json()
}

async fn check(
    t: &TestApp,
    org: &str,
    key: &str,
    member: &str,
    action: &str,
    owner: Option<&str>,
) -> (bool, String) {
    let mut body = json!({"member": member, "action": action});
    if let Some(o) = owner {
        body["owner"] = json!(o);
    }
    let r = t
        .post(&format!("/v1/orgs/{org}/authz/check"), key, body)
        .await
        .expect(200)
        .json();
    (
        r["allowed"].as_bool().expect("allowed"),
        r["reason"].as_str().expect("reason").to_string(),
    )
}

fn id(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

/// Every action of the catalog (functions and menus) and the fixed ones.
async fn every_action(t: &TestApp) -> Vec<String> {
    let c = t
        .get("/v1/catalog", &t.platform_key)
        .await
        .expect(200)
        .json();
    let mut v = Vec::new();
    for m in c["modules"].as_array().unwrap() {
        for f in m["functions"].as_object().unwrap().keys() {
            v.push(format!("{}.{f}", m["key"].as_str().unwrap()));
        }
    }
    for m in c["menus"].as_array().unwrap() {
        v.push(format!("menu:{}", m["key"].as_str().unwrap()));
    }
    for a in [
        "payment:use_balance",
        "advanced:sign_in",
        "data:view",
        "data:edit",
        "account:overview",
        "account:close",
        "account:switch",
        "account:cancel_close",
        "members:manage",
        "logs:view",
    ] {
        v.push(a.to_string());
    }
    v
}

/// The permissions listing of `member` equals the set of actions whose
/// single check (for `data:*`, on the member's own data) is allowed, with
/// the same reasons.
async fn assert_listing_matches_checks(
    t: &TestApp,
    org: &str,
    key: &str,
    owner: &str,
    member: &str,
) {
    let listed = t
        .get_as(
            &format!("/v1/orgs/{org}/members/{member}/permissions"),
            key,
            owner,
        )
        .await
        .expect(200)
        .json();
    let listed: BTreeSet<(String, String)> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["action"].as_str().unwrap().to_string(),
                i["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut allowed = BTreeSet::new();
    for a in every_action(t).await {
        let data = a.starts_with("data:");
        let (ok, reason) = check(t, org, key, member, &a, data.then_some(member)).await;
        if ok {
            allowed.insert((a, reason));
        }
    }
    assert_eq!(listed, allowed, "permissions of {member}");
}

/// Super admin, admin and three roles (module grant, function grant, menus
/// only), each with `own` and `all` scope, over 21 actions: the expected
/// `allowed` and `reason` of every check, one by one and in a batch; and the
/// permissions listing of each equals its allowed single checks.
#[tokio::test]
async fn rules_table_for_every_kind_role_and_scope() {
    let t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Rules Co", "cn").await;
    let admin = id(&add_member(&t, &org, &key, "admin").await);
    let other = id(&add_member(&t, &org, &key, "member").await);
    let mut members = vec![owner.clone(), admin.clone()];
    for scope in ["own", "all"] {
        let roles = [
            (
                format!("module_{scope}"),
                json!({"data_scope": scope, "grants": [{"module": "orders"}],
                       "payment": {"allowed": true, "per_tx": 100, "daily": 1000, "monthly": 10000}}),
            ),
            (
                format!("function_{scope}"),
                json!({"data_scope": scope,
                       "grants": [{"module": "orders", "function": "delete"}, {"module": "files", "function": "download"}],
                       "advanced": true}),
            ),
            (
                format!("menus_{scope}"),
                json!({"data_scope": scope, "menus": ["basic_info", "ftp"]}),
            ),
        ];
        for (name, spec) in roles {
            put_role(&t, &org, &key, &owner, &name, spec).await;
        }
    }
    // Subjects in column order: S A MO MA FO FA NO NA.
    for role in [
        "module_own",
        "module_all",
        "function_own",
        "function_all",
        "menus_own",
        "menus_all",
    ] {
        members.push(id(
            &add_member_with(&t, &org, &key, json!({"role": role})).await
        ));
    }
    // (action, owner: "self" | "other" | none, expected reason per subject).
    const S: &str = "super_admin";
    const A: &str = "admin";
    const MG: &str = "module_grant";
    const FG: &str = "function_grant";
    const MN: &str = "menu";
    const NG: &str = "no_grant";
    const OWN: &str = "scope_own_only";
    const AO: &str = "admin_only";
    const SO: &str = "super_admin_only";
    const ONG: &str = "org_not_granted";
    const UA: &str = "unknown_action";
    let table: [(&str, Option<&str>, [&str; 8]); 21] = [
        ("orders.delete", None, [S, A, MG, MG, FG, FG, NG, NG]),
        (
            "orders.download_files",
            None,
            [S, A, MG, MG, NG, NG, NG, NG],
        ),
        ("prepaid.transfer_out", None, [S, A, NG, NG, NG, NG, NG, NG]),
        (
            "prepaid.set_payment_password",
            None,
            [S, A, NG, NG, NG, NG, NG, NG],
        ),
        ("files.delete", None, [S, A, NG, NG, NG, NG, NG, NG]),
        ("files.download", None, [S, A, NG, NG, FG, FG, NG, NG]),
        ("menu:basic_info", None, [S, A, NG, NG, NG, NG, MN, MN]),
        ("menu:items", None, [S, A, NG, NG, NG, NG, NG, NG]),
        // Listed by the menus roles, but the org holds no ftp_access grant.
        ("menu:ftp", None, [ONG, ONG, ONG, ONG, ONG, ONG, ONG, ONG]),
        ("payment:use_balance", None, [S, A, FG, FG, NG, NG, NG, NG]),
        ("advanced:sign_in", None, [S, A, NG, NG, FG, FG, NG, NG]),
        ("data:view", Some("self"), [S, A, FG, FG, FG, FG, FG, FG]),
        (
            "data:view",
            Some("other"),
            [S, A, OWN, FG, OWN, FG, OWN, FG],
        ),
        (
            "data:edit",
            Some("other"),
            [S, A, OWN, FG, OWN, FG, OWN, FG],
        ),
        ("account:overview", None, [S, A, AO, AO, AO, AO, AO, AO]),
        ("account:close", None, [S, SO, AO, AO, AO, AO, AO, AO]),
        ("account:switch", None, [S, SO, AO, AO, AO, AO, AO, AO]),
        (
            "account:cancel_close",
            None,
            [S, SO, AO, AO, AO, AO, AO, AO],
        ),
        ("members:manage", None, [S, A, AO, AO, AO, AO, AO, AO]),
        ("logs:view", None, [S, A, AO, AO, AO, AO, AO, AO]),
        ("orders.fly", None, [UA, UA, UA, UA, UA, UA, UA, UA]),
    ];
    let owner_of = |who: &str, o: Option<&str>| match o {
        Some("self") => Some(who.to_string()),
        Some(_) => Some(other.clone()),
        None => None,
    };
    let mut checked = 0;
    for (col, who) in members.iter().enumerate() {
        let mut batch = Vec::new();
        let mut expected = Vec::new();
        for (action, o, reasons) in &table {
            let want = reasons[col];
            let data_owner = owner_of(who, *o);
            let got = check(&t, &org, &key, who, action, data_owner.as_deref()).await;
            assert_eq!(
                got,
                (ALLOWING.contains(&want), want.to_string()),
                "subject {col} ({who}), action {action} owner {o:?}"
            );
            checked += 1;
            let mut c = json!({"member": who, "action": action});
            if let Some(o) = data_owner {
                c["owner"] = json!(o);
            }
            batch.push(c);
            expected.push(want);
        }
        let r = t
            .post(
                &format!("/v1/orgs/{org}/authz/check-batch"),
                &key,
                json!({"checks": batch}),
            )
            .await
            .expect(200)
            .json();
        let got: Vec<&str> = r["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["reason"].as_str().unwrap())
            .collect();
        assert_eq!(got, expected, "batch of subject {col}");
        assert_listing_matches_checks(&t, &org, &key, &owner, who).await;
    }
    assert_eq!(checked, 8 * 21);
    // An unknown member is denied, and so is one of another org.
    assert_eq!(
        check(&t, &org, &key, "nobody_here", "orders.delete", None).await,
        (false, "unknown_member".to_string())
    );
    let (_, _, foreign_owner) = t.create_org("Elsewhere", "jp").await;
    assert_eq!(
        check(&t, &org, &key, &foreign_owner, "orders.delete", None).await,
        (false, "unknown_member".to_string())
    );
    // Checks are counted by outcome and reason.
    let metrics = t.metrics().await;
    assert!(
        metrics
            .contains(r#"approvald_authz_checks_total{allowed="false",reason="scope_own_only"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"approvald_authz_checks_total{allowed="true",reason="module_grant"}"#)
    );
    t.finish().await;
}

/// A function added to a module in the catalog is covered, at the next
/// start, by the module's grants and by no function grant.
#[tokio::test]
async fn a_function_added_later_follows_module_grants_only() {
    let mut t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Growing Co", "cn").await;
    put_role(
        &t,
        &org,
        &key,
        &owner,
        "by_module",
        json!({"data_scope": "own", "grants": [{"module": "orders"}]}),
    )
    .await;
    put_role(
        &t,
        &org,
        &key,
        &owner,
        "by_function",
        json!({"data_scope": "own", "grants": [{"module": "orders", "function": "delete"}, {"module": "orders", "function": "download_files"}]}),
    )
    .await;
    let m = id(&add_member_with(&t, &org, &key, json!({"role": "by_module"})).await);
    let f = id(&add_member_with(&t, &org, &key, json!({"role": "by_function"})).await);
    for who in [&m, &f] {
        assert_eq!(
            check(&t, &org, &key, who, "orders.archive", None).await,
            (false, "unknown_action".to_string())
        );
    }
    // The catalog grows a function in `orders`; restart on it.
    let shipped = approvald::domain::catalog::SHIPPED;
    let anchor = "download_files = {";
    let at = shipped
        .find(anchor)
        .expect("orders.download_files in the catalog");
    let line_end = at + shipped[at..].find('\n').unwrap() + 1;
    let grown = format!(
        "{}archive = {{ en = \"Archive orders\", \"zh-CN\" = \"归档订单\", ja = \"注文のアーカイブ\" }}\n{}",
        &shipped[..line_end],
        &shipped[line_end..]
    );
    let path = t.dir.path().join("catalog-grown.toml");
    std::fs::write(&path, grown).unwrap();
    t.config.catalog.path = path.display().to_string();
    t.restart().await;
    let c = t.get("/v1/catalog", &key).await.expect(200).json();
    let orders = c["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["key"] == "orders")
        .unwrap()
        .clone();
    assert_eq!(orders["functions"]["archive"]["zh-CN"], "归档订单");
    assert_eq!(
        check(&t, &org, &key, &m, "orders.archive", None).await,
        (true, "module_grant".to_string())
    );
    assert_eq!(
        check(&t, &org, &key, &f, "orders.archive", None).await,
        (false, "no_grant".to_string())
    );
    assert_eq!(
        check(&t, &org, &key, &f, "orders.delete", None).await,
        (true, "function_grant".to_string())
    );
    // A function grant cannot name the new function before it... but can now.
    put_role(
        &t,
        &org,
        &key,
        &owner,
        "archiver",
        json!({"data_scope": "own", "grants": [{"module": "orders", "function": "archive"}]}),
    )
    .await;
    t.finish().await;
}

/// Disable, role edits and enable are seen by the very next check.
#[tokio::test]
async fn every_committed_change_is_seen_by_the_next_check() {
    let t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Now Co", "cn").await;
    let buyer = id(&add_member_with(&t, &org, &key, json!({"role": "purchasing"})).await);
    let admin = id(&add_member(&t, &org, &key, "admin").await);
    assert_eq!(
        check(&t, &org, &key, &buyer, "orders.delete", None).await,
        (true, "module_grant".into())
    );
    t.post_as(
        &format!("/v1/orgs/{org}/members/{buyer}/disable"),
        &key,
        &owner,
        json!({}),
    )
    .await
    .expect(202);
    assert_eq!(
        check(&t, &org, &key, &buyer, "orders.delete", None).await,
        (false, "member_disabled".into())
    );
    assert_eq!(
        check(&t, &org, &key, &buyer, "data:view", Some(&buyer)).await,
        (false, "member_disabled".into())
    );
    let listing = t
        .get_as(
            &format!("/v1/orgs/{org}/members/{buyer}/permissions"),
            &key,
            &owner,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(
        listing["items"],
        json!([]),
        "a disabled member may do nothing"
    );
    t.post_as(
        &format!("/v1/orgs/{org}/members/{buyer}/enable"),
        &key,
        &owner,
        json!({}),
    )
    .await
    .expect(200);
    assert_eq!(
        check(&t, &org, &key, &buyer, "orders.delete", None).await,
        (true, "module_grant".into())
    );
    // A role edit applies to the next check.
    t.call_as(
        Method::PUT,
        &format!("/v1/orgs/{org}/roles/purchasing"),
        &key,
        &admin,
        Some(&json!({"data_scope": "own", "grants": [{"module": "files"}]})),
    )
    .await
    .expect(200);
    assert_eq!(
        check(&t, &org, &key, &buyer, "orders.delete", None).await,
        (false, "no_grant".into())
    );
    assert_eq!(
        check(&t, &org, &key, &buyer, "files.delete", None).await,
        (true, "module_grant".into())
    );
    // So does a kind change.
    t.call_as(
        Method::PATCH,
        &format!("/v1/orgs/{org}/members/{buyer}"),
        &key,
        &owner,
        Some(&json!({"kind": "admin"})),
    )
    .await
    .expect(200);
    assert_eq!(
        check(&t, &org, &key, &buyer, "logs:view", None).await,
        (true, "admin".into())
    );
    t.finish().await;
}

/// A menu gated by a permission kind opens once the grant is approved
/// through the review link (for the super admin, and for a sub-ID whose role
/// lists it), and closes when the grant is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gated_menu_follows_the_grant() {
    let t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Menu Co", "jp").await;
    put_role(
        &t,
        &org,
        &key,
        &owner,
        "ftp_user",
        json!({"data_scope": "own", "menus": ["ftp", "items"]}),
    )
    .await;
    let sub = id(&add_member_with(&t, &org, &key, json!({"role": "ftp_user"})).await);
    let plain = id(&add_member_with(&t, &org, &key, json!({"role": "engineer"})).await);
    for who in [&owner, &sub, &plain] {
        assert_eq!(
            check(&t, &org, &key, who, "menu:ftp", None).await,
            (false, "org_not_granted".into())
        );
    }
    reviewer(&t, "menu-reviewer@example.com", "en").await;
    let rid = submit_ftp(&t, &org, &key, "We upload stock by FTP").await;
    wait_status(&t, &org, &key, &rid, "in_review").await;
    let rows = wait_emails_final(&t, Duration::from_secs(30)).await;
    let row = rows
        .iter()
        .find(|r| r.recipient == "menu-reviewer@example.com")
        .expect("review mail");
    let token = outbox(&t)[&row.id].review_token(&t.base).expect("link");
    let r = decide(&t, &token, "approve", "ok").await;
    assert!(r.status.is_success(), "{}", r.text);
    wait_status(&t, &org, &key, &rid, "approved").await;
    assert_eq!(
        check(&t, &org, &key, &owner, "menu:ftp", None).await,
        (true, "super_admin".into())
    );
    assert_eq!(
        check(&t, &org, &key, &sub, "menu:ftp", None).await,
        (true, "menu".into())
    );
    assert_eq!(
        check(&t, &org, &key, &plain, "menu:ftp", None).await,
        (false, "no_grant".into())
    );
    let listing = t
        .get_as(
            &format!("/v1/orgs/{org}/members/{sub}/permissions"),
            &key,
            &sub,
        )
        .await
        .expect(200)
        .json();
    assert!(
        listing["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["action"] == "menu:ftp")
    );

    t.post(
        &format!("/v1/orgs/{org}/grants/ftp_access/revoke"),
        &key,
        json!({}),
    )
    .await
    .expect(200);
    assert_eq!(
        check(&t, &org, &key, &owner, "menu:ftp", None).await,
        (false, "org_not_granted".into())
    );
    assert_eq!(
        check(&t, &org, &key, &sub, "menu:ftp", None).await,
        (false, "org_not_granted".into())
    );
    assert_eq!(
        check(&t, &org, &key, &sub, "menu:items", None).await,
        (true, "menu".into())
    );
    t.finish().await;
}

/// Who may manage whom: the header is required and checked; members manage
/// nothing; only the super admin disables or demotes an admin; nobody the
/// super admin. Every refusal writes nothing.
#[tokio::test]
async fn actor_rules() {
    let t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Actors Co", "cn").await;
    let (other_org, other_key, other_owner) = t.create_org("Other Co", "cn").await;
    let admin = id(&add_member(&t, &org, &key, "admin").await);
    let admin2 = id(&add_member(&t, &org, &key, "admin").await);
    let member = id(&add_member(&t, &org, &key, "member").await);
    let member2 = id(&add_member(&t, &org, &key, "member").await);
    let gone = id(&add_member(&t, &org, &key, "member").await);
    t.post_as(
        &format!("/v1/orgs/{org}/members/{gone}/disable"),
        &key,
        &owner,
        json!({}),
    )
    .await
    .expect(202);
    let members = format!("/v1/orgs/{org}/members");
    let new_member = || json!({"login_id": crate::api_util::login("n"), "name": "New", "email": "new@example.com"});
    // The disable's cleanup job runs first (it writes audit rows).
    t.drain().await;
    let before = counts(&t).await;

    let forbidden = |r: crate::harness::Resp, what: &str| {
        assert_eq!(r.status.as_u16(), 403, "{what}: {}", r.text);
        r.assert_problem();
        assert!(
            r.json()["detail"]
                .as_str()
                .unwrap()
                .contains("Approvald-Actor"),
            "{what}: {}",
            r.text
        );
    };
    // No header, unknown, disabled, foreign actors.
    forbidden(t.post(&members, &key, new_member()).await, "no header");
    forbidden(t.get(&members, &key).await, "no header on a list");
    forbidden(
        t.post_as(&members, &key, "nobody_here", new_member()).await,
        "unknown actor",
    );
    forbidden(
        t.post_as(&members, &key, &gone, new_member()).await,
        "disabled actor",
    );
    forbidden(
        t.post_as(&members, &key, &other_owner, new_member()).await,
        "another org's member",
    );
    // A plain member manages nothing.
    forbidden(
        t.post_as(&members, &key, &member, new_member()).await,
        "member creates a member",
    );
    forbidden(
        t.get_as(&members, &key, &member).await,
        "member lists members",
    );
    forbidden(
        t.post_as(
            &format!("{members}/{member2}/disable"),
            &key,
            &member,
            json!({}),
        )
        .await,
        "member disables a member",
    );
    forbidden(
        t.call_as(
            Method::PUT,
            &format!("/v1/orgs/{org}/roles/mine"),
            &key,
            &member,
            Some(&json!({"data_scope": "all"})),
        )
        .await,
        "member writes a role",
    );
    forbidden(
        t.get_as(&format!("/v1/orgs/{org}/roles"), &key, &member)
            .await,
        "member reads roles",
    );
    forbidden(
        t.get_as(&format!("{members}/{member2}/permissions"), &key, &member)
            .await,
        "member reads another's permissions",
    );
    // An admin does not disable, enable, demote or make admins.
    forbidden(
        t.post_as(
            &format!("{members}/{admin2}/disable"),
            &key,
            &admin,
            json!({}),
        )
        .await,
        "admin disables an admin",
    );
    forbidden(
        t.call_as(
            Method::PATCH,
            &format!("{members}/{admin2}"),
            &key,
            &admin,
            Some(&json!({"kind": "member"})),
        )
        .await,
        "admin demotes an admin",
    );
    forbidden(
        t.call_as(
            Method::PATCH,
            &format!("{members}/{member}"),
            &key,
            &admin,
            Some(&json!({"kind": "admin"})),
        )
        .await,
        "admin promotes a member",
    );
    let mut as_admin = new_member();
    as_admin["kind"] = json!("admin");
    forbidden(
        t.post_as(&members, &key, &admin, as_admin).await,
        "admin creates an admin",
    );
    forbidden(
        t.call_as(
            Method::PATCH,
            &format!("{members}/{owner}"),
            &key,
            &admin,
            Some(&json!({"email": "takeover@example.com"})),
        )
        .await,
        "admin edits the super admin",
    );
    // Nobody disables or demotes the super admin.
    for actor in [&admin, &owner] {
        let r = t
            .post_as(
                &format!("{members}/{owner}/disable"),
                &key,
                actor,
                json!({}),
            )
            .await;
        assert_eq!(r.status.as_u16(), 409, "{}", r.text);
        r.assert_problem();
        let r = t
            .call_as(
                Method::PATCH,
                &format!("{members}/{owner}"),
                &key,
                actor,
                Some(&json!({"kind": "admin"})),
            )
            .await;
        assert!(matches!(r.status.as_u16(), 403 | 409), "{}", r.text);
        r.assert_problem();
    }
    let r = t
        .post(
            &format!("{members}/{owner}/disable"),
            &t.platform_key,
            json!({}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 409, "not even the platform: {}", r.text);
    assert_eq!(counts(&t).await, before, "refusals write nothing");

    // What is allowed: the member reads itself; an admin manages members;
    // the super admin disables an admin and changes kinds.
    t.get_as(&format!("{members}/{member}"), &key, &member)
        .await
        .expect(200);
    t.get_as(&format!("{members}/{member}/permissions"), &key, &member)
        .await
        .expect(200);
    t.post_as(&members, &key, &admin, new_member())
        .await
        .expect(201);
    t.post_as(
        &format!("{members}/{member2}/disable"),
        &key,
        &admin,
        json!({}),
    )
    .await
    .expect(202);
    t.call_as(
        Method::PATCH,
        &format!("{members}/{member}"),
        &key,
        &admin,
        Some(&json!({"role": "finance"})),
    )
    .await
    .expect(200);
    t.post_as(
        &format!("{members}/{admin2}/disable"),
        &key,
        &owner,
        json!({}),
    )
    .await
    .expect(202);
    t.call_as(
        Method::PATCH,
        &format!("{members}/{admin}"),
        &key,
        &owner,
        Some(&json!({"kind": "member"})),
    )
    .await
    .expect(200);
    // The platform key needs no header; with one, it is checked too.
    t.get(&members, &t.platform_key).await.expect(200);
    forbidden(
        t.get_as(&members, &t.platform_key, "nobody_here").await,
        "platform with a bad actor",
    );
    // The acting member is the audit actor.
    let n = scalar_i64(
        &t,
        "SELECT COUNT(*) FROM audit_log WHERE action = 'member.disable' AND actor = $1",
        &format!("member:{owner}"),
    )
    .await;
    assert_eq!(n, 2, "the owner disabled two members (gone, admin2)");
    let _ = (other_org, other_key);
    t.finish().await;
}

/// Roles: the built-ins exist from the org's creation; PUT validates every
/// name and limit (422 naming the field, nothing written); DELETE is 409
/// while a member holds the role; changes are audited with before/after.
#[tokio::test]
async fn roles_api_validation_and_audit() {
    let t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Roles Co", "cn").await;
    let roles = format!("/v1/orgs/{org}/roles");
    let list = t.get_as(&roles, &key, &owner).await.expect(200).json();
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["engineer", "finance", "purchasing"]);
    assert_eq!(list["items"][1]["data_scope"], "all");
    assert_eq!(list["items"][1]["builtin"], true);

    let good = json!({"data_scope": "own", "grants": [{"module": "files", "function": "download"}],
                      "menus": ["items"], "payment": {"allowed": true, "per_tx": 100, "daily": 500, "monthly": 2000},
                      "advanced": false});
    let before = counts(&t).await;
    let put = |name: &str, body: Value| {
        let path = format!("{roles}/{name}");
        let (t, key, owner) = (&t, key.clone(), owner.clone());
        async move {
            t.call_as(Method::PUT, &path, &key, &owner, Some(&body))
                .await
        }
    };
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    let bad = [
        (
            with("grants", json!([{"module": "warehouse"}])),
            "grants[0].module",
        ),
        (
            with(
                "grants",
                json!([{"module": "files"}, {"module": "files", "function": "shred"}]),
            ),
            "grants[1].function",
        ),
        (with("menus", json!(["items", "secret_menu"])), "menus[1]"),
        (with("data_scope", json!("team")), "data_scope"),
        (
            with(
                "payment",
                json!({"allowed": true, "per_tx": -1, "daily": 5, "monthly": 10}),
            ),
            "payment.per_tx",
        ),
        (
            with(
                "payment",
                json!({"allowed": true, "per_tx": 1.5, "daily": 5, "monthly": 10}),
            ),
            "payment.per_tx",
        ),
        (
            with(
                "payment",
                json!({"allowed": true, "per_tx": "1", "daily": 5, "monthly": 10}),
            ),
            "payment.per_tx",
        ),
        (
            with(
                "payment",
                json!({"allowed": true, "per_tx": 6, "daily": 5, "monthly": 10}),
            ),
            "payment.per_tx",
        ),
        (
            with(
                "payment",
                json!({"allowed": true, "per_tx": 1, "daily": 50, "monthly": 10}),
            ),
            "payment.daily",
        ),
        (
            with(
                "payment",
                json!({"allowed": true, "per_tx": 1, "daily": 5, "monthly": -10}),
            ),
            "payment.monthly",
        ),
        (with("surprise", json!(true)), "surprise"),
    ];
    for (body, field) in bad {
        let r = put("custom", body.clone()).await;
        assert_eq!(r.status.as_u16(), 422, "{body}: {}", r.text);
        r.assert_problem();
        assert!(
            r.json()["detail"].as_str().unwrap().contains(field),
            "{field}: {}",
            r.text
        );
    }
    let r = put("a%2Fb", good.clone()).await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.text);
    assert!(r.json()["detail"].as_str().unwrap().contains("name"));
    assert_eq!(counts(&t).await, before, "refused roles write nothing");

    let created = put("custom", good.clone()).await.expect(201).json();
    assert_eq!(created["payment"]["daily"], 500);
    assert_eq!(created["builtin"], false);
    let mut changed = good.clone();
    changed["data_scope"] = json!("all");
    put("custom", changed.clone()).await.expect(200);
    let got = t
        .get_as(&format!("{roles}/custom"), &key, &owner)
        .await
        .expect(200)
        .json();
    assert_eq!(got["data_scope"], "all");
    assert_eq!(got["members"], 0);
    t.get_as(&format!("{roles}/nothing"), &key, &owner)
        .await
        .expect(404);

    // In use: 409, even when the holder is disabled; a member only holds roles that exist.
    let m = id(&add_member_with(&t, &org, &key, json!({"role": "custom"})).await);
    let r = t
        .call_as(
            Method::DELETE,
            &format!("{roles}/custom"),
            &key,
            &owner,
            None,
        )
        .await;
    assert_eq!(r.status.as_u16(), 409, "{}", r.text);
    r.assert_problem();
    t.post_as(
        &format!("/v1/orgs/{org}/members/{m}/disable"),
        &key,
        &owner,
        json!({}),
    )
    .await
    .expect(202);
    let r = t
        .call_as(
            Method::DELETE,
            &format!("{roles}/custom"),
            &key,
            &owner,
            None,
        )
        .await;
    assert_eq!(r.status.as_u16(), 409, "{}", r.text);
    // The disable's cleanup job runs first (it writes audit rows).
    t.drain().await;
    let before = counts(&t).await;
    let r = t
        .call_as(
            Method::PATCH,
            &format!("/v1/orgs/{org}/members/{m}"),
            &key,
            &owner,
            Some(&json!({"role": "ghost"})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.text);
    assert!(r.json()["detail"].as_str().unwrap().starts_with("role"));
    let r = t
        .post_as(&format!("/v1/orgs/{org}/members"), &key, &owner,
            json!({"login_id": crate::api_util::login("g"), "name": "G", "email": "g@example.com", "role": "ghost"}))
        .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.text);
    assert_eq!(counts(&t).await, before);
    // A disabled member is given no role (409), but can be relieved of one.
    t.call_as(
        Method::PATCH,
        &format!("/v1/orgs/{org}/members/{m}"),
        &key,
        &owner,
        Some(&json!({"role": "engineer"})),
    )
    .await
    .expect(409);
    t.call_as(
        Method::PATCH,
        &format!("/v1/orgs/{org}/members/{m}"),
        &key,
        &owner,
        Some(&json!({"role": null})),
    )
    .await
    .expect(200);
    t.call_as(
        Method::DELETE,
        &format!("{roles}/custom"),
        &key,
        &owner,
        None,
    )
    .await
    .expect(204);
    t.get_as(&format!("{roles}/custom"), &key, &owner)
        .await
        .expect(404);

    // Audited with before and after, the acting member as actor.
    let rows: Vec<(String, String, String)> = approvald::on_db!(&t.app.db, |p| sqlx::query_as(
        "SELECT action, actor, detail FROM audit_log WHERE org_id = $1 AND action LIKE 'role.%' ORDER BY at, id"
    )
    .bind(&org)
    .fetch_all(p)
    .await)
    .unwrap();
    let actions: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(actions, ["role.create", "role.update", "role.delete"]);
    assert!(rows.iter().all(|r| r.1 == format!("member:{owner}")));
    let details: Vec<Value> = rows
        .iter()
        .map(|r| serde_json::from_str(&r.2).unwrap())
        .collect();
    assert_eq!(details[0]["before"], json!(null));
    assert_eq!(details[0]["after"]["data_scope"], "own");
    assert_eq!(details[1]["before"]["data_scope"], "own");
    assert_eq!(details[1]["after"]["data_scope"], "all");
    assert_eq!(details[2]["before"]["data_scope"], "all");
    assert_eq!(details[2]["after"], json!(null));
    let upd: (String,) = approvald::on_db!(&t.app.db, |p| sqlx::query_as(
        "SELECT detail FROM audit_log WHERE org_id = $1 AND action = 'member.update' ORDER BY at DESC, id DESC LIMIT 1"
    )
    .bind(&org)
    .fetch_one(p)
    .await)
    .unwrap();
    let upd: Value = serde_json::from_str(&upd.0).unwrap();
    assert_eq!(upd["before"]["role"], "custom");
    assert_eq!(upd["after"]["role"], json!(null));
    t.finish().await;
}

/// Bad checks are 422 naming the field; a batch holds 1 to 100 checks.
#[tokio::test]
async fn bad_checks_are_refused() {
    let t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Strict Co", "cn").await;
    let single = format!("/v1/orgs/{org}/authz/check");
    let batch = format!("/v1/orgs/{org}/authz/check-batch");
    for (body, field) in [
        (
            json!({"member": owner, "action": "delete orders"}),
            "action",
        ),
        (json!({"member": owner, "action": ""}), "action"),
        (
            json!({"member": owner, "action": "orders.delete.now"}),
            "action",
        ),
        (json!({"member": owner, "action": "menu:"}), "action"),
        (json!({"member": "", "action": "orders.delete"}), "member"),
        (
            json!({"member": owner, "action": "data:view", "owner": ""}),
            "owner",
        ),
        (json!({"member": owner}), "action"),
    ] {
        let r = t.post(&single, &key, body.clone()).await;
        assert_eq!(r.status.as_u16(), 422, "{body}: {}", r.text);
        r.assert_problem();
        assert!(
            r.json()["detail"].as_str().unwrap().contains(field),
            "{field}: {}",
            r.text
        );
    }
    let one = json!({"member": owner, "action": "orders.delete"});
    let r = t
        .post(&batch, &key, json!({"checks": vec![one.clone(); 101]}))
        .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.text);
    assert!(r.json()["detail"].as_str().unwrap().starts_with("checks"));
    let r = t.post(&batch, &key, json!({"checks": []})).await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.text);
    let r = t
        .post(
            &batch,
            &key,
            json!({"checks": [one.clone(), {"member": owner, "action": "nope"}]}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.text);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("checks[1].action"),
        "{}",
        r.text
    );
    let full = t
        .post(&batch, &key, json!({"checks": vec![one.clone(); 100]}))
        .await
        .expect(200)
        .json();
    assert_eq!(full["results"].as_array().unwrap().len(), 100);
    assert!(
        full["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["reason"] == "super_admin")
    );
    // The key and the org, checked by the check's one query: no key or an
    // unknown one 401, an operator key 403, another org's key or an org
    // that does not exist 404; the platform key may check any org.
    let (other_org, other_key, _) = t.create_org("Other Co", "cn").await;
    let operator = approvald::store::keys::create_operator(&t.app.db, false, t.app.now_ms())
        .await
        .unwrap();
    let unknown = approvald::store::keys::generate();
    for path in [&single, &batch] {
        let body = if path == &single {
            one.clone()
        } else {
            json!({"checks": [one.clone()]})
        };
        let r = t.call(Method::POST, path, None, Some(&body)).await;
        assert_eq!(r.status.as_u16(), 401, "{}", r.text);
        r.assert_problem();
        assert!(r.headers.contains_key("www-authenticate"));
        for (k, status) in [(&unknown, 401), (&operator, 403), (&other_key, 404)] {
            let r = t.post(path, k, body.clone()).await;
            assert_eq!(r.status.as_u16(), status, "{path}: {}", r.text);
            r.assert_problem();
        }
        let r = t
            .post(
                &path.replace(&org, "no-such-org"),
                &t.platform_key,
                body.clone(),
            )
            .await;
        assert_eq!(r.status.as_u16(), 404, "{}", r.text);
        r.assert_problem();
        t.post(path, &t.platform_key, body.clone())
            .await
            .expect(200);
        t.post(&path.replace(&org, &other_org), &other_key, body.clone())
            .await
            .expect(200);
    }
    t.finish().await;
}

/// The catalog lists the company-account modules with titles in three
/// languages and the marketplace menus with the kind each requires.
#[tokio::test]
async fn catalog_lists_modules_and_menus() {
    let t = TestApp::spawn_with(Opts::default()).await;
    let c = t
        .get("/v1/catalog", &t.platform_key)
        .await
        .expect(200)
        .json();
    let prepaid = c["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == "prepaid")
        .unwrap();
    assert_eq!(prepaid["titles"]["zh-CN"], "预付款账户");
    assert_eq!(
        prepaid["functions"]["set_password_free_limit"]["zh-CN"],
        "设置免密支付额度"
    );
    assert_eq!(prepaid["functions"]["transfer_out"]["ja"], "残高の払い出し");
    let files = c["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == "files")
        .unwrap();
    assert_eq!(files["functions"]["delete"]["zh-CN"], "删除文件/模型");
    let alcohol = c["menus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == "alcohol")
        .unwrap();
    assert_eq!(alcohol["requires"], "alcohol_sales");
    t.finish().await;
}

/// A check sent to another server (`base`) of the same database.
async fn check_on(
    t: &TestApp,
    base: &str,
    org: &str,
    key: &str,
    member: &str,
    action: &str,
) -> (bool, String) {
    let r = t
        .client
        .post(format!("{base}/v1/orgs/{org}/authz/check"))
        .bearer_auth(key)
        .json(&json!({"member": member, "action": action}))
        .send()
        .await
        .expect("check");
    assert_eq!(r.status().as_u16(), 200, "check {member} {action}");
    let v: Value = r.json().await.expect("JSON");
    (
        v["allowed"].as_bool().expect("allowed"),
        v["reason"].as_str().expect("reason").to_string(),
    )
}

/// Every kind of change committed by one process is seen by the very next
/// check on another `--role api` process of the same database, which has
/// already answered (and so loaded) the member before: role edit, role
/// assignment, kind, member created (after a check for its login id said
/// `unknown_member`), disable, enable, org grant approved and revoked,
/// member-level payment permission set, key revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_from_another_process_are_seen_by_the_next_check() {
    let t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Two Co", "jp").await;
    let second = approvald::start(
        t.config.clone(),
        approvald::Role::Api,
        Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
        std::sync::Arc::new(approvald_workers::SystemClock),
    )
    .await
    .expect("a second api process");
    let b = format!("http://{}", second.addr.expect("an address"));
    let buyer = id(&add_member_with(&t, &org, &key, json!({"role": "purchasing"})).await);
    let on_b = |member: String, action: &'static str| {
        let (t, b, org, key) = (&t, &b, &org, &key);
        async move { check_on(t, b, org, key, &member, action).await }
    };
    let yes = |r: &str| (true, r.to_string());
    let no = |r: &str| (false, r.to_string());

    // Role edit.
    assert_eq!(
        on_b(buyer.clone(), "orders.delete").await,
        yes("module_grant")
    );
    t.call_as(
        Method::PUT,
        &format!("/v1/orgs/{org}/roles/purchasing"),
        &key,
        &owner,
        Some(&json!({"data_scope": "own", "grants": [{"module": "files"}]})),
    )
    .await
    .expect(200);
    assert_eq!(on_b(buyer.clone(), "orders.delete").await, no("no_grant"));
    // Role assignment.
    assert_eq!(
        on_b(buyer.clone(), "prepaid.transfer_out").await,
        no("no_grant")
    );
    t.call_as(
        Method::PATCH,
        &format!("/v1/orgs/{org}/members/{buyer}"),
        &key,
        &owner,
        Some(&json!({"role": "finance"})),
    )
    .await
    .expect(200);
    assert_eq!(
        on_b(buyer.clone(), "prepaid.transfer_out").await,
        yes("module_grant")
    );
    // Member-level payment permission (finance pays; turned off here as the
    // cleanup of a disable does, then on again as an approval does).
    assert_eq!(
        on_b(buyer.clone(), "payment:use_balance").await,
        yes("function_grant")
    );
    let mut tx = t.app.db.begin().await.unwrap();
    approvald::flows::payments::revoke_member_payment(
        &mut tx,
        &org,
        &buyer,
        "test",
        t.app.now_ms(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        on_b(buyer.clone(), "payment:use_balance").await,
        no("no_grant")
    );
    let mut tx = t.app.db.begin().await.unwrap();
    approvald::flows::payments::set_member_limits(
        &mut tx,
        &org,
        &buyer,
        "test",
        None,
        t.app.now_ms(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        on_b(buyer.clone(), "payment:use_balance").await,
        yes("function_grant")
    );
    // Kind.
    assert_eq!(on_b(buyer.clone(), "logs:view").await, no("admin_only"));
    t.call_as(
        Method::PATCH,
        &format!("/v1/orgs/{org}/members/{buyer}"),
        &key,
        &owner,
        Some(&json!({"kind": "admin"})),
    )
    .await
    .expect(200);
    assert_eq!(on_b(buyer.clone(), "logs:view").await, yes("admin"));
    // A member created after a check for its login id.
    let newbie = crate::api_util::login("late");
    assert_eq!(
        on_b(newbie.clone(), "data:view").await,
        no("unknown_member")
    );
    add_member_with(
        &t,
        &org,
        &key,
        json!({"login_id": newbie, "role": "engineer"}),
    )
    .await;
    assert_eq!(
        on_b(newbie.clone(), "files.delete").await,
        yes("module_grant")
    );
    // Disable and enable.
    t.post_as(
        &format!("/v1/orgs/{org}/members/{buyer}/disable"),
        &key,
        &owner,
        json!({}),
    )
    .await
    .expect(202);
    assert_eq!(
        on_b(buyer.clone(), "logs:view").await,
        no("member_disabled")
    );
    let batch: Value = t
        .client
        .post(format!("{b}/v1/orgs/{org}/authz/check-batch"))
        .bearer_auth(&key)
        .json(&json!({"checks": [{"member": buyer, "action": "logs:view"}, {"member": newbie, "action": "files.delete"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(batch["results"][0]["reason"], "member_disabled");
    assert_eq!(batch["results"][1]["reason"], "module_grant");
    t.drain().await;
    t.post_as(
        &format!("/v1/orgs/{org}/members/{buyer}/enable"),
        &key,
        &owner,
        json!({}),
    )
    .await
    .expect(200);
    assert_eq!(on_b(buyer.clone(), "logs:view").await, yes("admin"));
    // An org grant approved, then revoked.
    assert_eq!(on_b(owner.clone(), "menu:ftp").await, no("org_not_granted"));
    reviewer(&t, "two-reviewer@example.com", "en").await;
    let rid = submit_ftp(&t, &org, &key, "We upload stock by FTP").await;
    wait_status(&t, &org, &key, &rid, "in_review").await;
    let rows = wait_emails_final(&t, Duration::from_secs(30)).await;
    let row = rows
        .iter()
        .find(|r| r.recipient == "two-reviewer@example.com")
        .expect("review mail");
    let token = outbox(&t)[&row.id].review_token(&t.base).expect("link");
    let r = decide(&t, &token, "approve", "ok").await;
    assert!(r.status.is_success(), "{}", r.text);
    wait_status(&t, &org, &key, &rid, "approved").await;
    assert_eq!(on_b(owner.clone(), "menu:ftp").await, yes("super_admin"));
    t.post(
        &format!("/v1/orgs/{org}/grants/ftp_access/revoke"),
        &key,
        json!({}),
    )
    .await
    .expect(200);
    assert_eq!(on_b(owner.clone(), "menu:ftp").await, no("org_not_granted"));
    // The key revoked (as an operator or another tool would, in the database).
    approvald::on_db!(&t.app.db, |p| sqlx::query(
        "UPDATE api_keys SET revoked_at = $1 WHERE hash = $2"
    )
    .bind(t.app.now_ms())
    .bind(approvald::store::keys::hash(&key))
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    let r = t
        .client
        .post(format!("{b}/v1/orgs/{org}/authz/check"))
        .bearer_auth(&key)
        .json(&json!({"member": owner, "action": "logs:view"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    second.stop();
    second.wait().await.unwrap();
    t.finish().await;
}

/// The key-and-revision read of a check through both paths: inline (the
/// embedded profile's read-only connections, `db::inline`) and the pool
/// (what the inline path falls back to when no connection is free; the only
/// path on PostgreSQL). Held to the same answer.
async fn key_read(t: &TestApp, key: &str, org: &str) -> Option<KeyForOrg> {
    let db = &t.app.db;
    let pool = keys::authenticate_for_org(db, None, key, org)
        .await
        .unwrap();
    let Some(inline) = t.app.inline.as_ref() else {
        assert_eq!(t.profile, Profile::Production, "inline reads on SQLite");
        return pool;
    };
    let fast = keys::key_for_org_inline(inline, &keys::hash(key), org).expect("read inline");
    assert_eq!(fast, pool, "inline and pool answers");
    assert_eq!(
        keys::authenticate_for_org(db, Some(inline), key, org)
            .await
            .unwrap(),
        pool
    );
    let held = inline.hold_all();
    assert!(
        keys::key_for_org_inline(inline, &keys::hash(key), org).is_none(),
        "no inline connection is free"
    );
    assert_eq!(
        keys::authenticate_for_org(db, Some(inline), key, org)
            .await
            .unwrap(),
        pool,
        "the fallback answers as the pool"
    );
    drop(held);
    pool
}

/// On the embedded profile a check's key-and-revision read runs on the
/// calling task, on connections of its own: a change committed through the
/// pool (a revision bump, a member change over HTTP, a key revoked) is seen
/// by the very next read, and the pool path gives the same answer each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_key_read_sees_every_commit_and_matches_the_pool() {
    let t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Inline Co", "cn").await;
    let (other, other_key, _) = t.create_org("Other Co", "cn").await;
    assert_eq!(
        t.app.inline.is_some(),
        t.profile == Profile::Embedded,
        "inline reads on SQLite only"
    );
    let first = key_read(&t, &key, &org).await.expect("a live key");
    assert_eq!(first.scope, "org");
    assert_eq!(first.org_id.as_deref(), Some(org.as_str()));
    assert!(first.org_exists);
    // Another org's revision, and an org that does not exist.
    let theirs = key_read(&t, &key, &other).await.expect("a live key");
    assert!(theirs.org_exists);
    let none = key_read(&t, &key, "no-such-org").await.expect("a live key");
    assert!(!none.org_exists);
    assert_eq!(none.revision, 0);
    // A bump committed through the pool.
    let mut tx = t.app.db.begin().await.unwrap();
    tx.authz_changed(&org);
    tx.commit().await.unwrap();
    let bumped = key_read(&t, &key, &org).await.expect("a live key");
    assert_eq!(bumped.revision, first.revision + 1);
    // A member change over HTTP bumps it too; the check sees it.
    let m = id(&add_member(&t, &org, &key, "member").await);
    let added = key_read(&t, &key, &org).await.expect("a live key");
    assert!(added.revision > bumped.revision);
    t.call_as(
        Method::PATCH,
        &format!("/v1/orgs/{org}/members/{m}"),
        &key,
        &owner,
        Some(&json!({"kind": "admin"})),
    )
    .await
    .expect(200);
    assert!(key_read(&t, &key, &org).await.expect("a live key").revision > added.revision);
    assert_eq!(
        check(&t, &org, &key, &m, "logs:view", None).await.1,
        "admin"
    );
    // The other org's revision did not move.
    assert_eq!(
        key_read(&t, &key, &other)
            .await
            .expect("a live key")
            .revision,
        theirs.revision
    );
    // The key revoked through the pool: gone from the very next read, and
    // the next check answers 401; the other org's key still reads.
    approvald::on_db!(&t.app.db, |p| sqlx::query(
        "UPDATE api_keys SET revoked_at = $1 WHERE hash = $2"
    )
    .bind(t.app.now_ms())
    .bind(keys::hash(&key))
    .execute(p)
    .await
    .map(|r| r.rows_affected()))
    .unwrap();
    assert_eq!(key_read(&t, &key, &org).await, None);
    t.post(
        &format!("/v1/orgs/{org}/authz/check"),
        &key,
        json!({"member": m, "action": "logs:view"}),
    )
    .await
    .expect(401);
    assert!(key_read(&t, &other_key, &other).await.is_some());
    t.finish().await;
}

/// `payment:use_balance` (and the listing) follows the member-level payment
/// permission over HTTP: an approved `payment_permission` request allows a
/// member whose role does not pay, until its grant is revoked; the cleanup
/// of a disable turns it off for a member whose role pays, and it stays off
/// after the member is enabled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_permission_decides_use_balance() {
    let t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Pay Co", "cn").await;
    let admin = add_member(&t, &org, &key, "admin").await;
    let eng = id(&add_member_with(&t, &org, &key, json!({"role": "engineer"})).await);
    let buyer = id(&add_member_with(&t, &org, &key, json!({"role": "purchasing"})).await);
    let pay = |m: String| {
        let (t, org, key) = (&t, &org, &key);
        async move { check(t, org, key, &m, "payment:use_balance", None).await }
    };
    let yes = (true, "function_grant".to_string());
    let no = (false, "no_grant".to_string());
    assert_eq!(pay(eng.clone()).await, no);
    assert_eq!(pay(buyer.clone()).await, yes);

    let rid = t
        .post(
            &format!("/v1/orgs/{org}/requests"),
            &key,
            json!({"kind": "payment_permission", "requester": eng, "remark": "pay suppliers",
                   "params": {"per_tx": 200, "daily": 500, "monthly": 3000}}),
        )
        .await
        .expect(202)
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_status(&t, &org, &key, &rid, "in_review").await;
    let rows = wait_emails_final(&t, Duration::from_secs(30)).await;
    let row = rows
        .iter()
        .find(|r| r.recipient == admin["email"].as_str().unwrap())
        .expect("the admin reviews it");
    let token = outbox(&t)[&row.id].review_token(&t.base).expect("link");
    let r = decide(&t, &token, "approve", "").await;
    assert!(
        r.status.is_success() || r.status.is_redirection(),
        "{}",
        r.text
    );
    wait_status(&t, &org, &key, &rid, "approved").await;
    assert_eq!(pay(eng.clone()).await, yes);
    assert_listing_matches_checks(&t, &org, &key, &owner, &eng).await;
    // Nothing else changed for them.
    assert_eq!(
        check(&t, &org, &key, &eng, "prepaid.transfer_out", None).await,
        no
    );
    // Revoking the grant ends the member-level permission: the role decides.
    t.post(
        &format!("/v1/orgs/{org}/grants/payment_permission/revoke?member={eng}"),
        &key,
        json!({}),
    )
    .await
    .expect(200);
    assert_eq!(pay(eng.clone()).await, no);
    assert_listing_matches_checks(&t, &org, &key, &owner, &eng).await;

    // Disable, cleanup, enable: the role pays, the member does not.
    t.post_as(
        &format!("/v1/orgs/{org}/members/{buyer}/disable"),
        &key,
        &owner,
        json!({}),
    )
    .await
    .expect(202);
    t.drain().await;
    t.post_as(
        &format!("/v1/orgs/{org}/members/{buyer}/enable"),
        &key,
        &owner,
        json!({}),
    )
    .await
    .expect(200);
    assert_eq!(pay(buyer.clone()).await, no);
    assert_eq!(
        check(&t, &org, &key, &buyer, "orders.delete", None).await,
        (true, "module_grant".into())
    );
    assert_listing_matches_checks(&t, &org, &key, &owner, &buyer).await;
    let listing = t
        .get_as(
            &format!("/v1/orgs/{org}/members/{buyer}/permissions"),
            &key,
            &owner,
        )
        .await
        .expect(200)
        .json();
    assert!(
        !listing["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["action"] == "payment:use_balance"),
        "{listing}"
    );
    t.finish().await;
}
