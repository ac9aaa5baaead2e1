//! `deploy/prometheus/alerts.yml` and `deploy/grafana/approvald.json`:
//! `promtool check rules` accepts the rules, and every approvald metric the
//! two files name is one the daemon exports.
use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use crate::{
    harness::TestApp,
    review_util::{reviewer, submit_ftp, wait_emails_final, wait_status},
};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `approvald_*` words in a file.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("approvald_") {
        let start = i + pos;
        let before_ok =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len()
            && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_')
        {
            end += 1;
        }
        // `approvald_*` in prose is a pattern, not a name.
        if before_ok && !text[start..end].ends_with('_') {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

#[test]
fn alert_rules_pass_promtool() {
    let rules = repo().join("deploy/prometheus/alerts.yml");
    let out = std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is required (Debian package `prometheus`; scripts/test installs it): {e}"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check rules failed:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
    let grafana: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/approvald.json")).unwrap(),
    )
    .expect("the Grafana dashboard is JSON");
    assert!(grafana["panels"].as_array().is_some_and(|p| p.len() >= 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_files_name_only_metrics_the_daemon_exports() {
    let mut named = BTreeSet::new();
    for f in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/approvald.json",
    ] {
        named.extend(metric_names(
            &std::fs::read_to_string(repo().join(f)).unwrap(),
        ));
    }
    assert!(named.len() >= 15, "{named:?}");

    // Some activity, then a scrape.
    let t = TestApp::spawn().await;
    let (org, key, _) = t.create_org("Metrics Co", "cn").await;
    reviewer(&t, "m@example.com", "en").await;
    let id = submit_ftp(&t, &org, &key, "metrics").await;
    wait_status(&t, &org, &key, &id, "in_review").await;
    wait_emails_final(&t, Duration::from_secs(30)).await;
    t.drain().await;
    let scrape = t.metrics().await;
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();

    // A counter of a rare event (a breach) shows only after one happened:
    // those must at least be recorded under that name by the code.
    let mut sources = String::new();
    for dir in ["src", "workers/src"] {
        for entry in walk(&repo().join(dir)) {
            sources.push_str(&std::fs::read_to_string(entry).unwrap_or_default());
        }
    }
    let mut by_scrape = Vec::new();
    let mut by_source = Vec::new();
    for name in &named {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        if exported.contains(name.as_str()) || exported.contains(base) {
            by_scrape.push(name.clone());
        } else if sources.contains(&format!("\"{base}\"")) {
            by_source.push(name.clone());
        } else {
            panic!(
                "deploy files name {name}, which the daemon does not export.\nscrape:\n{scrape}"
            );
        }
    }
    println!(
        "{} metric names: {} seen in a scrape, {} only recorded on rare events: {by_source:?}",
        named.len(),
        by_scrape.len(),
        by_source.len()
    );
    assert!(
        by_scrape.len() > by_source.len(),
        "most metrics must show in a scrape"
    );
    t.finish().await;
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

#[test]
fn metric_names_are_found_in_text() {
    let n = metric_names(
        "rate(approvald_jobs_total[5m]) x_approvald_no approvald_*_pending approvald_a_b_bucket{le}",
    );
    assert_eq!(
        n.into_iter().collect::<Vec<_>>(),
        vec!["approvald_a_b_bucket", "approvald_jobs_total"]
    );
}
