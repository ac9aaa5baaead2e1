//! The `limits` cron job with an injected clock: periods close at each
//! local midnight of each zone in use, missed midnights are caught up each
//! once, two schedulers close each period once, and nothing waits for a
//! close (counters are keyed by period).
use std::time::Duration;

use approvald::jobs::limits::{Closed, Kind, Period, close, run_due};
use approvald_workers::ManualClock;
use serde_json::json;

use crate::{
    harness::{Opts, TestApp},
    spend_util::*,
};

/// Every second, so a clock jump fires a tick at once.
const EVERY_SECOND: &str = "[payments]\nlimits_cron = \"* * * * * *\"";

async fn spawn(at: &str, cron: bool) -> TestApp {
    TestApp::spawn_with(Opts {
        clock: Some(ManualClock::new(utc(at))),
        toml: if cron {
            EVERY_SECOND.into()
        } else {
            String::new()
        },
        ..Default::default()
    })
    .await
}

/// `(period, kind, runs)` of every finished close of `zone`, oldest first.
async fn closes(t: &TestApp, zone: &str) -> Vec<(String, String, i64)> {
    approvald::on_db!(&t.app.db, |p| sqlx::query_as::<_, (String, String, i64)>(
        "SELECT period, kind, runs FROM limit_closes WHERE zone = $1 AND done_at IS NOT NULL ORDER BY kind, period"
    )
    .bind(zone)
    .fetch_all(p)
    .await)
    .unwrap()
}

async fn wait_closes(t: &TestApp, zone: &str, n: usize) -> Vec<(String, String, i64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = closes(t, zone).await;
        if c.len() >= n {
            return c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{zone}: {c:?} after 30 s, wanted {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn s(v: &[(&str, &str, i64)]) -> Vec<(String, String, i64)> {
    v.iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
        .collect()
}

/// Shanghai, across the midnight that ends both a day and a month.
#[tokio::test]
async fn shanghai_midnight_closes_the_day_and_the_month() {
    // 2026-03-31 23:58 in Shanghai.
    let t = spawn("2026-03-31T15:58:00Z", true).await;
    let (org, key, _) = org_in(&t, "Asia/Shanghai", None).await;
    let m = member(&t, &org, &key).await;
    set_limits(&t, &org, &m, 500, 1000, 3000).await;
    authorize(&t, &org, &key, &m, 400, "c-1", true)
        .await
        .expect(200);
    assert_eq!(
        run_due(&t.app).await.unwrap().closed,
        0,
        "nothing has ended yet"
    );
    t.set_time(utc("2026-03-31T15:59:59Z"));
    assert_eq!(run_due(&t.app).await.unwrap().closed, 0);
    // The first authorization of the new day never waits for a close.
    t.set_time(utc("2026-03-31T16:00:00Z"));
    let r = authorize(&t, &org, &key, &m, 1000, "c-2", true).await;
    let r = r.expect(200).json();
    assert_eq!(r["reason"], "per_tx");
    let r = authorize(&t, &org, &key, &m, 500, "c-3", true)
        .await
        .expect(200)
        .json();
    assert_eq!(r["approved"], true);
    assert_eq!(
        r["remaining"],
        json!({"per_tx": 500, "daily": 500, "monthly": 2500})
    );
    // The cron (every second on the injected clock) closes exactly these.
    let c = wait_closes(&t, "Asia/Shanghai", 2).await;
    assert_eq!(
        c,
        s(&[("2026-03-31", "daily", 1), ("2026-03", "monthly", 1)])
    );
    assert_eq!(
        scalar(
            &t,
            "SELECT used FROM spend_summaries WHERE member_id = $1 AND period = '2026-03-31'",
            &[&m]
        )
        .await,
        400
    );
    assert_eq!(
        scalar(&t, "SELECT approved_count FROM spend_summaries WHERE member_id = $1 AND period = '2026-03'", &[&m]).await,
        1
    );
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("approvald_limit_resets_total{period=\"monthly\"}"),
        "metric missing"
    );
    t.finish().await;
}

/// New York on the day clocks spring forward (23 hours long): the day ends
/// at 04:00 UTC (midnight EDT), not 05:00.
#[tokio::test]
async fn new_york_dst_day_ends_at_its_own_midnight() {
    // 2026-03-08 01:00 EST, an hour before the clocks jump.
    let t = spawn("2026-03-08T06:00:00Z", false).await;
    let (org, key, _) = org_in(&t, "America/New_York", None).await;
    let m = member(&t, &org, &key).await;
    set_limits(&t, &org, &m, 500, 1000, 3000).await;
    let r = authorize(&t, &org, &key, &m, 100, "ny-1", true)
        .await
        .expect(200)
        .json();
    assert_eq!(r["periods"]["daily"], "2026-03-08");
    assert_eq!(r["resets_at"]["daily"], "2026-03-09T04:00:00.000Z");
    t.set_time(utc("2026-03-09T03:59:59Z"));
    assert_eq!(
        run_due(&t.app).await.unwrap().closed,
        0,
        "23:59:59 EDT: the day is not over"
    );
    t.set_time(utc("2026-03-09T04:00:00Z"));
    assert_eq!(run_due(&t.app).await.unwrap().closed, 1);
    assert_eq!(
        closes(&t, "America/New_York").await,
        s(&[("2026-03-08", "daily", 1)])
    );
    let r = authorize(&t, &org, &key, &m, 100, "ny-2", true)
        .await
        .expect(200)
        .json();
    assert_eq!(r["periods"]["daily"], "2026-03-09");
    assert_eq!(r["remaining"]["daily"], 900);
    assert_eq!(r["remaining"]["monthly"], 2800);
    // The Shanghai org's zone is unaffected: its own first day has not ended.
    assert_eq!(run_due(&t.app).await.unwrap().closed, 0);
    t.finish().await;
}

/// The scheduler is down over two midnights: at start each missed day is
/// closed once, in order; a second run changes nothing.
#[tokio::test]
async fn missed_midnights_are_closed_once_each_at_start() {
    let mut t = spawn("2026-03-10T02:00:00Z", true).await;
    let (org, key, _) = org_in(&t, "Asia/Shanghai", None).await;
    let m = member(&t, &org, &key).await;
    set_limits(&t, &org, &m, 500, 1000, 3000).await;
    authorize(&t, &org, &key, &m, 300, "m-1", true)
        .await
        .expect(200);
    t.stop().await;
    // Down from Tuesday 10:00 to Thursday 10:00 (Shanghai).
    t.set_time(utc("2026-03-12T02:00:00Z"));
    t.restart().await;
    // The injected clock stands still: move it a second at a time until the
    // restarted scheduler's first tick comes.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while closes(&t, "Asia/Shanghai").await.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no close after the restart"
        );
        t.advance(chrono::Duration::seconds(1));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = closes(&t, "Asia/Shanghai").await;
    assert_eq!(
        c,
        s(&[("2026-03-10", "daily", 1), ("2026-03-11", "daily", 1)])
    );
    assert_eq!(
        scalar(
            &t,
            "SELECT COUNT(*) FROM spend_summaries WHERE period = '2026-03-10'",
            &[]
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            &t,
            "SELECT COUNT(*) FROM spend_summaries WHERE period = '2026-03-11'",
            &[]
        )
        .await,
        0
    );
    assert_eq!(
        run_due(&t.app).await.unwrap().closed,
        0,
        "a second run changes nothing"
    );
    assert_eq!(closes(&t, "Asia/Shanghai").await, c);
    // By hand (what `approvald limits close` runs): idempotent too.
    let p = Period::last_ended(
        chrono_tz::Asia::Shanghai,
        Kind::Daily,
        utc("2026-03-12T02:00:00Z"),
    );
    assert_eq!(p.key, "2026-03-11");
    assert_eq!(
        close(&t.app, "Asia/Shanghai", &p).await.unwrap(),
        Closed::Already
    );
    t.finish().await;
}

/// Two schedulers (two daemons on one database and queue) and concurrent
/// runs: each period is closed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_schedulers_close_each_period_once() {
    let t = spawn("2026-03-30T02:00:00Z", true).await;
    let (org, key, _) = org_in(&t, "Asia/Shanghai", None).await;
    let mut members = Vec::new();
    for _ in 0..5 {
        let m = member(&t, &org, &key).await;
        set_limits(&t, &org, &m, 500, 1000, 3000).await;
        authorize(&t, &org, &key, &m, 100, &format!("two-{m}"), true)
            .await
            .expect(200);
        members.push(m);
    }
    let second = approvald::start(
        t.config.clone(),
        approvald::Role::All,
        Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
        std::sync::Arc::new(t.clock.clone().unwrap()),
    )
    .await
    .unwrap();
    // 2026-04-02 10:00 Shanghai: days 03-30, 03-31, 04-01 and month 03 ended.
    t.set_time(utc("2026-04-02T02:00:00Z"));
    second.app.queue.notify_all();
    let (a, b) = tokio::join!(run_due(&t.app), run_due(&second.app));
    let c = wait_closes(&t, "Asia/Shanghai", 4).await;
    assert_eq!(
        c,
        s(&[
            ("2026-03-30", "daily", 1),
            ("2026-03-31", "daily", 1),
            ("2026-04-01", "daily", 1),
            ("2026-03", "monthly", 1),
        ])
    );
    assert!(a.unwrap().closed + b.unwrap().closed <= 4);
    assert_eq!(
        scalar(
            &t,
            "SELECT COUNT(*) FROM spend_summaries WHERE period IN ('2026-03-30', '2026-03')",
            &[]
        )
        .await,
        10
    );
    second.stop();
    second.wait().await.unwrap();
    t.finish().await;
}

/// `approvald limits close` by hand: closes once, then reports nothing to do.
#[tokio::test]
async fn the_cli_closes_by_hand_idempotently() {
    let t = spawn("2026-03-10T02:00:00Z", false).await;
    let (org, key, _) = org_in(&t, "Asia/Shanghai", None).await;
    let m = member(&t, &org, &key).await;
    set_limits(&t, &org, &m, 500, 1000, 3000).await;
    authorize(&t, &org, &key, &m, 300, "cli-1", true)
        .await
        .expect(200);
    // APPROVALD_CONFIG must name a file: use an empty one.
    let cfg = t.dir.path().join("empty.toml");
    std::fs::write(&cfg, "").unwrap();
    // tokio's Command, not std's: the daemon under test runs on this test's
    // runtime, and a blocking wait here would freeze it, possibly inside a
    // write transaction that the CLI then waits for until its busy timeout.
    let run = || async {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_approvald"))
            .args([
                "limits",
                "close",
                "--period",
                "daily",
                "--zone",
                "Asia/Shanghai",
                "--at",
                "2026-03-11T00:10:00+08:00",
            ])
            .env("APPROVALD_CONFIG", &cfg)
            .env("APPROVALD__DATABASE__URL", &t.config.database.url)
            .env("APPROVALD__QUEUE__URL", &t.config.queue.url)
            .env("APPROVALD__QUEUE__PREFIX", &t.config.queue.prefix)
            .env("APPROVALD__LOG__FILTER", "warn")
            .output()
            .await
            .unwrap()
    };
    let out = run().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("closed daily 2026-03-10 in Asia/Shanghai: 1 member"),
        "{stdout}"
    );
    let out = run().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("already closed; nothing changed"),
        "{stdout}"
    );
    assert_eq!(
        closes(&t, "Asia/Shanghai").await,
        s(&[("2026-03-10", "daily", 1)])
    );
    t.finish().await;
}
