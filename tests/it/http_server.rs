//! The HTTP server's own limits (issue 9, defect 5): a client that sends
//! half a request's header and waits can neither hold its connection for
//! ever nor keep the daemon from stopping.
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Opts, TestApp};

/// Half a request: the request line and one header, never the blank line.
async fn stall(t: &TestApp) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(t.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("send half a header");
    s
}

/// Read until the server closes the socket; how long that took.
async fn closed_within(mut s: tokio::net::TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = Vec::new();
    let res = tokio::time::timeout(limit, s.read_to_end(&mut buf)).await;
    assert!(
        res.is_ok(),
        "the server kept a stalled connection open for {limit:?}"
    );
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_header_is_cut_off_by_the_header_read_timeout() {
    let t = TestApp::spawn_with(Opts {
        toml: "[server]\nheader_read_timeout_secs = 1\nshutdown_grace_secs = 30\n".into(),
        ..Default::default()
    })
    .await;
    let s = stall(&t).await;
    closed_within(s, Duration::from_secs(20)).await;
    // Others are still served meanwhile and afterwards.
    let ok = t.client.get(format!("{}/healthz", t.base)).send().await;
    assert_eq!(ok.expect("healthz").status().as_u16(), 200);
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_by_the_grace_even_with_a_stalled_client() {
    // The header timeout is far away: only the grace can end the wait.
    let mut t = TestApp::spawn_with(Opts {
        toml: "[server]\nheader_read_timeout_secs = 600\nshutdown_grace_secs = 1\n".into(),
        ..Default::default()
    })
    .await;
    let s1 = stall(&t).await;
    let s2 = stall(&t).await;
    // An idle keep-alive connection, too: it closes at once on shutdown.
    let ok = t.client.get(format!("{}/healthz", t.base)).send().await;
    assert_eq!(ok.expect("healthz").status().as_u16(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), t.stop())
        .await
        .expect("the daemon stopped although clients were stalled");
    let took = start.elapsed();
    // Stopping waited for the grace (1 s), not for the 600 s header timeout.
    assert!(took < Duration::from_secs(20), "stop took {took:?}");
    closed_within(s1, Duration::from_secs(5)).await;
    closed_within(s2, Duration::from_secs(5)).await;
    // Nothing listens any more.
    assert!(
        tokio::net::TcpStream::connect(t.addr).await.is_err(),
        "the listener is closed after stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_finishes_within_the_grace() {
    let mut t = TestApp::spawn_with(Opts {
        toml: "[server]\nshutdown_grace_secs = 10\n".into(),
        ..Default::default()
    })
    .await;
    let (org, key, _) = t.create_org("Grace Co", "cn").await;
    // A whole request whose body arrives only after stop was asked: the
    // server lets it finish (graceful), then closes.
    let body = r#"{"kind": "ftp_access", "remark": "late body"}"#;
    let mut s = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    let head = format!(
        "POST /v1/orgs/{org}/requests HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(async move {
        t.stop().await;
        t
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(body.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
        .await
        .expect("answered and closed")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    // Answered, then closed (read_to_end returned): no keep-alive after stop.
    assert!(text.starts_with("HTTP/1.1 202"), "{text}");
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("stopped")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_token_when_one_is_set() {
    let t = TestApp::spawn_with(Opts {
        toml: "[ops]\nmetrics_token = \"scrape-me-0123456789\"\n".into(),
        ..Default::default()
    })
    .await;
    let url = format!("{}/metrics", t.base);
    let none = t.client.get(&url).send().await.unwrap();
    assert_eq!(none.status().as_u16(), 401);
    assert!(none.headers().contains_key("www-authenticate"));
    assert_eq!(
        none.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let wrong = t
        .client
        .get(&url)
        .bearer_auth("scrape-me-0123456788")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let right = t
        .client
        .get(&url)
        .bearer_auth("scrape-me-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status().as_u16(), 200);
    assert!(right.text().await.unwrap().contains("approvald_"));
    // Health and readiness stay open to load balancers.
    let ready = t
        .client
        .get(format!("{}/readyz", t.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    t.finish().await;
}

/// The same through the real binary and a real SIGTERM: the process exits
/// (status 0) within the grace although a client stalls mid-header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_exits_on_sigterm_despite_a_stalled_client() {
    use std::{
        io::{BufRead, BufReader},
        process::{Command, Stdio},
        sync::{Arc, Mutex},
    };
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_approvald"))
        .args(["serve"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("APPROVALD_CONFIG")
        .env_remove("RUST_LOG")
        .env("APPROVALD__SERVER__LISTEN", "127.0.0.1:0")
        .env("APPROVALD__SERVER__SHUTDOWN_GRACE_SECS", "1")
        .env("APPROVALD__SERVER__HEADER_READ_TIMEOUT_SECS", "600")
        .env(
            "APPROVALD__DATABASE__URL",
            format!("sqlite://{}/a.db?mode=rwc", dir.path().display()),
        )
        .env(
            "APPROVALD__MAIL__OUTBOX_DIR",
            dir.path().join("outbox").display().to_string(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn approvald");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let err = child.stderr.take().unwrap();
    let l2 = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            l2.lock().unwrap().push(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr: std::net::SocketAddr = loop {
        let found = lines.lock().unwrap().iter().find_map(|l| {
            let at = l.find("listening on http://")? + "listening on http://".len();
            let a: String = l[at..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            a.parse().ok()
        });
        if let Some(a) = found {
            break a;
        }
        assert!(
            child.try_wait().unwrap().is_none() && Instant::now() < deadline,
            "approvald did not start: {:?}",
            lines.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(killed.success());
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!(
                "approvald still running 30 s after SIGTERM: {:?}",
                lines.lock().unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        status.success(),
        "exit status {status}: {:?}",
        lines.lock().unwrap()
    );
    let logs = lines.lock().unwrap().join("\n");
    assert!(
        logs.contains("HTTP connections still open after server.shutdown_grace_secs"),
        "the forced close is logged: {logs}"
    );
    drop(s);
}

/// Requests the HTTP parser itself refuses get problem+json too, not an
/// empty body; and the connection is closed, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_parsers_own_refusals_are_problem_json() {
    let t = TestApp::spawn().await;
    let (org, key, _) = t.create_org("Parser Co", "cn").await;
    let before = t.count("requests").await;
    let body = r#"{"kind": "ftp_access", "remark": "x"}"#;
    let head = format!(
        "POST /v1/orgs/{org}/requests HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\n"
    );
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "two Content-Length headers",
            format!(
                "{head}Content-Length: {}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len(),
                body.len() + 1
            ),
            400,
        ),
        (
            "a folded header",
            format!(
                "{head}X-Folded: a\r\n b\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            400,
        ),
        (
            "a malformed request line",
            "GET /healthz HTTP/9\r\nHost: x\r\n\r\n".to_string(),
            400,
        ),
        (
            "a header far too large",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(1 << 20)
            ),
            431,
        ),
    ];
    for (name, raw, want) in cases {
        let mut s = tokio::net::TcpStream::connect(t.addr).await.unwrap();
        let _ = s.write_all(raw.as_bytes()).await;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{name}: no answer"))
            .ok();
        let text = String::from_utf8_lossy(&buf).to_string();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        assert!(
            head.starts_with(&format!("HTTP/1.1 {want} ")),
            "{name}: {text}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{name}: {text}"
        );
        let p: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{name}: {e}: {text}"));
        assert_eq!(p["status"], want, "{name}");
    }
    assert_eq!(t.count("requests").await, before);
    t.finish().await;
}
