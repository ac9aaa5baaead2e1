//! One run of `scripts/bench-audit`: starts approvald in-process (embedded
//! SQLite in a temp dir, or the PostgreSQL database at `BENCH_PG_URL` with
//! the SQLite queue off), then times a representative API change, renaming
//! members (`PATCH /v1/orgs/{org}/members/{id}`, one audit entry each), over
//! `BENCH_ORGS` orgs at `BENCH_CONCURRENCY` in flight until `BENCH_OPS` are
//! done. Prints `ops_per_sec=<n>` and whether the chain was on. Whether it
//! is on is decided by `APPROVALD_BENCH_AUDIT_CHAIN` (off = unchained), which
//! the script sets per run.
use std::{sync::Arc, time::Instant};

use approvald::{Config, Role};
use approvald_workers::SystemClock;
use futures::StreamExt;
use serde_json::{Value, json};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ops = env_num("BENCH_OPS", 3000);
    let concurrency = env_num("BENCH_CONCURRENCY", 16);
    let n_orgs = env_num("BENCH_ORGS", 4);
    let dir = tempfile::tempdir()?;
    let (db_url, queue_url) = match std::env::var("BENCH_PG_URL") {
        Ok(url) => (
            url,
            std::env::var("BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into()),
        ),
        Err(_) => (
            format!("sqlite://{}/bench.db?mode=rwc", dir.path().display()),
            "sqlite".to_string(),
        ),
    };
    let config = Config::from_toml(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[database]
url = "{db_url}"
[queue]
url = "{queue_url}"
prefix = "bench{pid}"
[mail]
transport = "file"
outbox_dir = "{outbox}"
[log]
filter = "error"
"#,
        pid = std::process::id(),
        outbox = dir.path().join("outbox").display(),
    ))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let running =
        approvald::start(config, Role::Api, Some(listener), Arc::new(SystemClock)).await?;
    let app = running.app.clone();
    let key = approvald::store::keys::create(
        &app.db,
        approvald::store::keys::KeyScope::Platform,
        None,
        app.now_ms(),
    )
    .await?;
    let client = reqwest::Client::new();
    let mut targets = Vec::new();
    for i in 0..n_orgs {
        let login = format!("own{i}x{}", std::process::id());
        let org: Value = client
            .post(format!("{base}/v1/orgs"))
            .bearer_auth(&key)
            .json(&json!({"name": format!("Bench {i}"), "region": "cn", "locale": "en",
                          "owner": {"login_id": login, "name": "Owner", "email": format!("{login}@example.com")}}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        targets.push((
            org["id"].as_str().unwrap_or_default().to_string(),
            org["owner"]["id"].as_str().unwrap_or_default().to_string(),
        ));
    }
    let chain = approvald::store::audit::chain_enabled();
    let started = Instant::now();
    let failures = futures::stream::iter(0..ops)
        .map(|i| {
            let (org, owner) = &targets[i % targets.len()];
            let req = client
                .patch(format!("{base}/v1/orgs/{org}/members/{owner}"))
                .bearer_auth(&key)
                .json(&json!({"name": format!("Owner {i}")}));
            async move {
                req.send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        })
        .buffer_unordered(concurrency)
        .filter(|ok| std::future::ready(!ok))
        .count()
        .await;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(failures == 0, "{failures} of {ops} calls failed");
    println!(
        "chain={} ops={ops} seconds={secs:.3} ops_per_sec={:.1}",
        if chain { "on" } else { "off" },
        ops as f64 / secs
    );
    running.stop();
    running.wait().await?;
    Ok(())
}
