//! The authorization benchmark behind `scripts/bench-authz` (issue 10).
//!
//! (a) In process: the same 100,000 checks (20 members, 3 roles, 40 actions,
//!     own and all data scope) through approvald's decision function and
//!     through the `cedar-policy` crate evaluating an equivalent policy set.
//!     Every answer is compared first; then both are timed in batches and the
//!     medians compared.
//! (b) Over HTTP on loopback: a real `approvald serve` (embedded profile, in
//!     a temp folder), `POST authz/check` and `GET /healthz` at concurrency
//!     32, alternating for a few rounds; checks/s and p99 of each.
//!
//! Usage: approvald-bench-authz --server <path to the approvald binary>
use std::{
    collections::{BTreeSet, HashMap},
    process::{Child, Command, Stdio},
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use approvald::domain::{
    authz::{self, Action, Subject},
    catalog::{Catalog, SHIPPED},
    ids::MemberKind,
    role::{DataScope, RoleGrant, RoleSpec},
};
use cedar_policy::{Authorizer, Context, Decision, Entities, EntityUid, PolicySet, Request};
use serde_json::{Value, json};

const CHECKS: usize = 100_000;
const MEMBERS: usize = 20;
const BATCH: usize = 1_000;
const ROUNDS: usize = 5;
const CONCURRENCY: usize = 32;

/// The shipped catalog (31 actions) plus two modules, so the mix has 40.
fn bench_catalog_text() -> String {
    format!(
        "{SHIPPED}\n\
[[modules]]\n\
key = \"invoices\"\n\
titles = {{ en = \"Invoices\", \"zh-CN\" = \"发票\", ja = \"請求書\" }}\n\
[modules.functions]\n\
view = {{ en = \"View\", \"zh-CN\" = \"查看\", ja = \"閲覧\" }}\n\
download = {{ en = \"Download\", \"zh-CN\" = \"下载\", ja = \"ダウンロード\" }}\n\
request = {{ en = \"Request\", \"zh-CN\" = \"申请\", ja = \"申請\" }}\n\
edit = {{ en = \"Edit\", \"zh-CN\" = \"修改\", ja = \"編集\" }}\n\
\n\
[[modules]]\n\
key = \"quotes\"\n\
titles = {{ en = \"Quotes\", \"zh-CN\" = \"报价单\", ja = \"見積書\" }}\n\
[modules.functions]\n\
view = {{ en = \"View\", \"zh-CN\" = \"查看\", ja = \"閲覧\" }}\n\
create = {{ en = \"Create\", \"zh-CN\" = \"创建\", ja = \"作成\" }}\n\
delete = {{ en = \"Delete\", \"zh-CN\" = \"删除\", ja = \"削除\" }}\n\
share = {{ en = \"Share\", \"zh-CN\" = \"分享\", ja = \"共有\" }}\n\
export = {{ en = \"Export\", \"zh-CN\" = \"导出\", ja = \"エクスポート\" }}\n"
    )
}

fn grant(module: &str, function: Option<&str>) -> RoleGrant {
    RoleGrant {
        module: module.into(),
        function: function.map(str::to_string),
    }
}

/// The three roles: a module grant with payment (own data), function grants
/// with the advanced permission (all data), menus only (own data).
fn roles() -> Vec<(&'static str, RoleSpec)> {
    vec![
        (
            "buyer",
            RoleSpec {
                data_scope: DataScope::Own,
                grants: vec![grant("orders", None), grant("quotes", None)],
                menus: vec![],
                payment: approvald::domain::payment::PaymentSettings {
                    allowed: true,
                    per_tx: 100,
                    daily: 1_000,
                    monthly: 10_000,
                },
                advanced: false,
            },
        ),
        (
            "designer",
            RoleSpec {
                data_scope: DataScope::All,
                grants: vec![
                    grant("files", Some("download")),
                    grant("orders", Some("download_files")),
                    grant("invoices", Some("view")),
                ],
                menus: vec!["items".into()],
                payment: Default::default(),
                advanced: true,
            },
        ),
        (
            "operator",
            RoleSpec {
                data_scope: DataScope::Own,
                grants: vec![],
                menus: vec![
                    "basic_info".into(),
                    "items".into(),
                    "ftp".into(),
                    "alcohol".into(),
                ],
                payment: Default::default(),
                advanced: false,
            },
        ),
    ]
}

/// One member of the bench org.
#[derive(Clone)]
struct Member {
    id: String,
    login: String,
    kind: MemberKind,
    active: bool,
    role: Option<&'static str>,
}

/// m0 super admin; m1, m2 admins (m2 disabled); m3.. members with the three
/// roles in turn (m19 disabled, m18 without a role).
fn members() -> Vec<Member> {
    let names = ["buyer", "designer", "operator"];
    (0..MEMBERS)
        .map(|i| {
            let kind = match i {
                0 => MemberKind::SuperAdmin,
                1 | 2 => MemberKind::Admin,
                _ => MemberKind::Member,
            };
            let role = (kind == MemberKind::Member && i != 18).then(|| names[i % 3]);
            Member {
                id: format!("m{i:02}"),
                login: format!("bench_m{i:02}"),
                kind,
                active: i != 2 && i != 19,
                role,
            }
        })
        .collect()
}

/// The org holds `ftp_access`, not `alcohol_sales`.
const HELD: [&str; 1] = ["ftp_access"];

/// A deterministic xorshift: the same mix on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One check of the mix: member index (MEMBERS = an unknown member), action
/// index, data owner index.
#[derive(Clone, Copy)]
struct Check {
    member: usize,
    action: usize,
    owner: usize,
}

fn mix(actions: usize) -> Vec<Check> {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    (0..CHECKS)
        .map(|_| Check {
            // About 1 in 100 names nobody.
            member: if r.below(100) == 0 {
                MEMBERS
            } else {
                r.below(MEMBERS)
            },
            action: r.below(actions),
            owner: r.below(MEMBERS),
        })
        .collect()
}

fn is_data(a: &str) -> bool {
    a == "data:view" || a == "data:edit"
}

// ---------------------------------------------------------------- Cedar ---

/// The same rules as `approvald::domain::authz::decide`, as Cedar policies.
fn cedar_policies(catalog: &Catalog, roles: &[(&str, RoleSpec)]) -> String {
    let mut p = String::new();
    p.push_str(
        "// The super admin may do everything.\n\
         permit(principal, action in Action::\"all\", resource)\n\
           when { principal.active && principal.kind == \"super_admin\" };\n\
         // An admin, everything but the super admin's three account actions.\n\
         permit(principal, action in Action::\"all\", resource)\n\
           when { principal.active && principal.kind == \"admin\" }\n\
           unless { action in [Action::\"account:close\", Action::\"account:switch\", Action::\"account:cancel_close\"] };\n\
         // Every active member acts on their own data; with scope all, on anyone's.\n\
         permit(principal, action in [Action::\"data:view\", Action::\"data:edit\"], resource is Data)\n\
           when { principal.active && principal.kind == \"member\" && (principal.scope == \"all\" || resource.owner == principal) };\n",
    );
    for m in &catalog.menus {
        if let Some(kind) = &m.requires {
            p.push_str(&format!(
                "forbid(principal, action == Action::\"menu:{}\", resource)\n  unless {{ resource is Org && resource.granted.contains(\"{kind}\") }};\n",
                m.key
            ));
        }
    }
    for (name, spec) in roles {
        let mut allow = |action: String| {
            p.push_str(&format!(
                "permit(principal in Role::\"{name}\", {action}, resource)\n  when {{ principal.active && principal.kind == \"member\" }};\n"
            ));
        };
        for g in &spec.grants {
            match &g.function {
                None => allow(format!("action in Action::\"module:{}\"", g.module)),
                Some(f) => allow(format!("action == Action::\"{}.{f}\"", g.module)),
            }
        }
        for m in &spec.menus {
            allow(format!("action == Action::\"menu:{m}\""));
        }
        if spec.payment.allowed {
            allow("action == Action::\"payment:use_balance\"".into());
        }
        if spec.advanced {
            allow("action == Action::\"advanced:sign_in\"".into());
        }
    }
    p
}

fn uid(t: &str, id: &str) -> Value {
    json!({"type": t, "id": id})
}

fn cedar_entities(catalog: &Catalog, members: &[Member], roles: &[(&str, RoleSpec)]) -> Value {
    let mut v = vec![
        json!({"uid": uid("Org", "org"), "attrs": {"granted": HELD}, "parents": []}),
        json!({"uid": uid("Action", "all"), "attrs": {}, "parents": []}),
    ];
    for (name, _) in roles {
        v.push(json!({"uid": uid("Role", name), "attrs": {}, "parents": []}));
    }
    for m in members {
        let scope = m
            .role
            .and_then(|r| roles.iter().find(|(n, _)| *n == r))
            .map_or("own", |(_, s)| s.data_scope.as_str());
        let parents: Vec<Value> = m.role.iter().map(|r| uid("Role", r)).collect();
        v.push(json!({"uid": uid("Member", &m.id),
            "attrs": {"kind": m.kind.as_str(), "active": m.active, "scope": scope},
            "parents": parents}));
        v.push(json!({"uid": uid("Data", &m.id),
            "attrs": {"owner": {"__entity": uid("Member", &m.id)}}, "parents": []}));
    }
    for m in &catalog.modules {
        let group = format!("module:{}", m.key);
        v.push(
            json!({"uid": uid("Action", &group), "attrs": {}, "parents": [uid("Action", "all")]}),
        );
        for f in m.functions.keys() {
            v.push(
                json!({"uid": uid("Action", &format!("{}.{f}", m.key)), "attrs": {},
                "parents": [uid("Action", &group), uid("Action", "all")]}),
            );
        }
    }
    for a in authz::all_actions(catalog) {
        if !a.contains('.') {
            v.push(
                json!({"uid": uid("Action", &a), "attrs": {}, "parents": [uid("Action", "all")]}),
            );
        }
    }
    Value::Array(v)
}

fn euid(t: &str, id: &str) -> EntityUid {
    EntityUid::from_str(&format!("{t}::{}", Value::String(id.to_string()))).expect("entity uid")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

/// (a): returns (our median ns, Cedar's median ns) per check.
fn in_process() -> anyhow::Result<(f64, f64)> {
    let catalog = Catalog::parse(&bench_catalog_text()).map_err(anyhow::Error::msg)?;
    let roles = roles();
    let members = members();
    let actions = authz::all_actions(&catalog);
    anyhow::ensure!(
        actions.len() == 40,
        "the bench catalog has {} actions",
        actions.len()
    );
    let checks = mix(actions.len());

    // Ours: subjects as the HTTP handler builds them from the last commit.
    let specs: HashMap<&str, &RoleSpec> = roles.iter().map(|(n, s)| (*n, s)).collect();
    let subjects: Vec<Subject<'_>> = members
        .iter()
        .map(|m| Subject {
            id: &m.id,
            login_id: &m.login,
            kind: m.kind,
            active: m.active,
            role: m.role.map(|r| specs[r]),
            member_payment: None,
        })
        .collect();
    let ours = |c: &Check| -> bool {
        let action = &actions[c.action];
        let owner = is_data(action).then(|| members[c.owner].id.as_str());
        let parsed = Action::parse(action, &catalog).expect("bench actions parse");
        authz::decide(&catalog, subjects.get(c.member), parsed, owner, |k| {
            HELD.contains(&k)
        })
        .allowed
    };

    // Cedar: the policies and entities above; requests built up front.
    let policies = PolicySet::from_str(&cedar_policies(&catalog, &roles))
        .map_err(|e| anyhow::anyhow!("cedar policies: {e}"))?;
    let entities = Entities::from_json_value(cedar_entities(&catalog, &members, &roles), None)
        .map_err(|e| anyhow::anyhow!("cedar entities: {e}"))?;
    let authorizer = Authorizer::new();
    let requests: Vec<Request> = checks
        .iter()
        .map(|c| {
            let action = &actions[c.action];
            let principal = if c.member == MEMBERS {
                euid("Member", "ghost")
            } else {
                euid("Member", &members[c.member].id)
            };
            let resource = if is_data(action) {
                euid("Data", &members[c.owner].id)
            } else {
                euid("Org", "org")
            };
            Request::new(
                principal,
                euid("Action", action),
                resource,
                Context::empty(),
                None,
            )
            .expect("request")
        })
        .collect();
    let cedar = |r: &Request| -> bool {
        authorizer.is_authorized(r, &policies, &entities).decision() == Decision::Allow
    };

    // Same answer on every check, before any timing.
    let mut allowed = 0;
    for (i, (c, r)) in checks.iter().zip(&requests).enumerate() {
        let (a, b) = (ours(c), cedar(r));
        if a != b {
            let m = members.get(c.member).map_or("ghost", |m| m.id.as_str());
            bail!(
                "check {i} differs: member {m}, action {}, owner {}: approvald {a}, cedar {b}",
                actions[c.action],
                members[c.owner].id
            );
        }
        allowed += usize::from(a);
    }
    let distinct: BTreeSet<usize> = checks.iter().map(|c| c.action).collect();
    println!(
        "in-process: {CHECKS} checks ({} members + unknown, {} roles, {} actions, own and all scope): \
         both engines agree on every answer ({allowed} allowed, {} denied)",
        MEMBERS,
        roles.len(),
        distinct.len(),
        CHECKS - allowed
    );

    let mut ours_ns = Vec::new();
    let mut cedar_ns = Vec::new();
    let mut sink = 0usize;
    for round in 0..ROUNDS {
        // Alternate which engine goes first.
        for engine in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            for (cs, rs) in checks.chunks(BATCH).zip(requests.chunks(BATCH)) {
                let t = Instant::now();
                if engine == 0 {
                    for c in cs {
                        sink += usize::from(std::hint::black_box(ours(std::hint::black_box(c))));
                    }
                    ours_ns.push(t.elapsed().as_nanos() as f64 / cs.len() as f64);
                } else {
                    for r in rs {
                        sink += usize::from(std::hint::black_box(cedar(std::hint::black_box(r))));
                    }
                    cedar_ns.push(t.elapsed().as_nanos() as f64 / rs.len() as f64);
                }
            }
        }
    }
    std::hint::black_box(sink);
    let (om, cm) = (median(&mut ours_ns), median(&mut cedar_ns));
    println!(
        "in-process approvald: median {om:.0} ns/check, p99 {:.0} ns (batches of {BATCH}, {ROUNDS} rounds)",
        percentile(&mut ours_ns, 0.99)
    );
    println!(
        "in-process cedar-policy: median {cm:.0} ns/check, p99 {:.0} ns",
        percentile(&mut cedar_ns, 0.99)
    );
    Ok((om, cm))
}

// ----------------------------------------------------------------- HTTP ---

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn server_env(cmd: &mut Command, dir: &std::path::Path, port: u16, catalog: &std::path::Path) {
    cmd.env("APPROVALD_CONFIG", dir.join("bench.toml"))
        .env("APPROVALD__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "APPROVALD__SERVER__PUBLIC_URL",
            format!("http://127.0.0.1:{port}"),
        )
        .env(
            "APPROVALD__DATABASE__URL",
            format!("sqlite://{}/bench.db?mode=rwc", dir.display()),
        )
        .env("APPROVALD__MAIL__OUTBOX_DIR", dir.join("outbox"))
        .env("APPROVALD__CATALOG__PATH", catalog)
        .env("APPROVALD__LOG__FILTER", "warn")
        .env_remove("RUST_LOG");
}

/// Request/response timings of `n` concurrent clients for `secs` seconds.
async fn load(
    secs: f64,
    make: Arc<dyn Fn(u64) -> reqwest::RequestBuilder + Send + Sync>,
) -> anyhow::Result<(f64, f64)> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for w in 0..CONCURRENCY {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = w as u64 * 7919;
            while Instant::now() < deadline {
                i += 1;
                let t = Instant::now();
                let r = make(i).send().await?;
                let ok = r.status().is_success();
                let _ = r.bytes().await?;
                anyhow::ensure!(ok, "a benchmark request failed");
                lat.push(t.elapsed().as_secs_f64());
            }
            anyhow::Ok(lat)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64().max(secs);
    let rps = all.len() as f64 / elapsed;
    let p99 = percentile(&mut all, 0.99) * 1000.0;
    Ok((rps, p99))
}

async fn over_http(server_bin: &str, secs: f64) -> anyhow::Result<(f64, f64)> {
    let dir = std::env::temp_dir().join(format!("approvald-bench-authz-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = Cleanup(dir.clone());
    let catalog = dir.join("catalog.toml");
    std::fs::write(&catalog, bench_catalog_text())?;
    // Defaults and the environment only (no config/default.toml).
    std::fs::write(dir.join("bench.toml"), "")?;
    let port = free_port()?;
    let mut cmd = Command::new(server_bin);
    cmd.arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    server_env(&mut cmd, &dir, port, &catalog);
    let server = Server {
        child: cmd
            .spawn()
            .with_context(|| format!("starting {server_bin}"))?,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let ready = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{}/healthz", server.base)).send().await
            && r.status().is_success()
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < ready,
            "the server did not answer /healthz in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut keys = Command::new(server_bin);
    keys.args(["keys", "create", "--platform"])
        .stderr(Stdio::inherit());
    server_env(&mut keys, &dir, port, &catalog);
    let out = keys.output()?;
    anyhow::ensure!(out.status.success(), "keys create failed");
    let pk = String::from_utf8(out.stdout)?.trim().to_string();

    // The org: owner (super admin), members with the bench's roles.
    let post = |path: &str, key: &str, body: Value| {
        client
            .post(format!("{}{path}", server.base))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    let org: Value = post(
        "/v1/orgs",
        &pk,
        json!({"name": "Bench Co", "region": "cn", "locale": "en",
               "owner": {"login_id": "bench_m00", "name": "Owner", "email": "owner@bench.example"}}),
    )
    .await?
    .error_for_status()?
    .json()
    .await?;
    let org_id = org["id"].as_str().context("org id")?.to_string();
    let owner_id = org["owner"]["id"].as_str().context("owner id")?.to_string();
    let ok: Value = post(&format!("/v1/orgs/{org_id}/keys"), &pk, json!({}))
        .await?
        .error_for_status()?
        .json()
        .await?;
    let org_key = ok["key"].as_str().context("org key")?.to_string();
    for (name, spec) in roles() {
        client
            .put(format!("{}/v1/orgs/{org_id}/roles/{name}", server.base))
            .bearer_auth(&pk)
            .json(&spec)
            .send()
            .await?
            .error_for_status()?;
    }
    let mut ids = vec![owner_id];
    for m in members().iter().skip(1) {
        let mut body = json!({"login_id": m.login, "name": m.id, "email": format!("{}@bench.example", m.id),
                              "kind": if m.kind == MemberKind::Admin { "admin" } else { "member" }});
        if let Some(r) = m.role {
            body["role"] = json!(r);
        }
        let created: Value = post(&format!("/v1/orgs/{org_id}/members"), &pk, body)
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = created["id"].as_str().context("member id")?.to_string();
        if !m.active {
            post(
                &format!("/v1/orgs/{org_id}/members/{id}/disable"),
                &pk,
                json!({}),
            )
            .await?
            .error_for_status()?;
        }
        ids.push(id);
    }
    let catalog_parsed = Catalog::parse(&bench_catalog_text()).map_err(anyhow::Error::msg)?;
    let actions = authz::all_actions(&catalog_parsed);
    let checks = mix(actions.len());
    let bodies: Arc<Vec<Value>> = Arc::new(
        checks
            .iter()
            .take(10_000)
            .map(|c| {
                let member = ids
                    .get(c.member)
                    .cloned()
                    .unwrap_or_else(|| "ghost_member".into());
                let mut b = json!({"member": member, "action": actions[c.action]});
                if is_data(&actions[c.action]) {
                    b["owner"] = json!(ids[c.owner]);
                }
                b
            })
            .collect(),
    );

    let base = server.base.clone();
    let check_url = format!("{base}/v1/orgs/{org_id}/authz/check");
    let health_url = format!("{base}/healthz");
    let shared = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY * 2)
        .build()?;
    let (c1, k1, b1) = (shared.clone(), org_key.clone(), bodies.clone());
    let check_req: Arc<dyn Fn(u64) -> reqwest::RequestBuilder + Send + Sync> = Arc::new(move |i| {
        c1.post(&check_url)
            .bearer_auth(&k1)
            .json(&b1[(i as usize) % b1.len()])
    });
    let c2 = shared.clone();
    let health_req: Arc<dyn Fn(u64) -> reqwest::RequestBuilder + Send + Sync> =
        Arc::new(move |_| c2.get(&health_url));
    // Warm up both paths.
    load(1.0, check_req.clone()).await?;
    load(1.0, health_req.clone()).await?;
    let mut check_rps = Vec::new();
    let mut check_p99 = Vec::new();
    let mut health_rps = Vec::new();
    let mut health_p99 = Vec::new();
    for round in 0..3 {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            if which == 0 {
                let (rps, p99) = load(secs, check_req.clone()).await?;
                println!(
                    "http round {}: POST authz/check {rps:.0} req/s, p99 {p99:.2} ms",
                    round + 1
                );
                check_rps.push(rps);
                check_p99.push(p99);
            } else {
                let (rps, p99) = load(secs, health_req.clone()).await?;
                println!(
                    "http round {}: GET /healthz {rps:.0} req/s, p99 {p99:.2} ms",
                    round + 1
                );
                health_rps.push(rps);
                health_p99.push(p99);
            }
        }
    }
    let (cr, hr) = (median(&mut check_rps), median(&mut health_rps));
    println!(
        "http (concurrency {CONCURRENCY}, embedded profile): POST authz/check median {cr:.0} req/s, p99 {:.2} ms; GET /healthz median {hr:.0} req/s, p99 {:.2} ms",
        median(&mut check_p99),
        median(&mut health_p99)
    );
    drop(server);
    Ok((cr, hr))
}

struct Cleanup(std::path::PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let server = args
        .windows(2)
        .find(|w| w[0] == "--server")
        .map(|w| w[1].clone())
        .context(
            "usage: approvald-bench-authz --server <path to the approvald binary> [--secs N]",
        )?;
    let secs: f64 = args
        .windows(2)
        .find(|w| w[0] == "--secs")
        .map_or(Ok(5.0), |w| w[1].parse())?;
    let (ours, cedar) = in_process()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (check, health) = rt.block_on(over_http(&server, secs))?;
    println!("authz_ratio_vs_cedar={:.3}", ours / cedar);
    println!("authz_http_ratio_vs_healthz={:.3}", check / health);
    Ok(())
}
