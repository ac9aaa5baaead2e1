//! Invariant 8: bad input gets a 4xx with an RFC 9457 problem body, never a
//! 5xx, and writes nothing. A table of malformed and hostile bodies and
//! headers, each checked against the row counts of every table.
use serde_json::{Value, json};

use crate::{
    api_util::{add_member, counts},
    harness::TestApp,
};

struct Case {
    name: &'static str,
    path: String,
    content_type: Option<&'static str>,
    extra_headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    platform: bool,
    status: u16,
}

fn json_case(name: &'static str, path: &str, body: Value, status: u16) -> Case {
    Case {
        name,
        path: path.to_string(),
        content_type: Some("application/json"),
        extra_headers: vec![],
        body: serde_json::to_vec(&body).unwrap(),
        platform: false,
        status,
    }
}

fn raw_case(
    name: &'static str,
    path: &str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
) -> Case {
    Case {
        name,
        path: path.to_string(),
        content_type,
        extra_headers: vec![],
        body,
        platform: false,
        status,
    }
}

fn nested(depth: usize) -> Vec<u8> {
    let mut s = String::from(r#"{"kind": "ftp_access", "remark": "x", "documents": "#);
    s.push_str(&"[".repeat(depth));
    s.push_str(&"]".repeat(depth));
    s.push('}');
    s.into_bytes()
}

#[tokio::test]
async fn malformed_and_hostile_input_is_refused_and_writes_nothing() {
    let t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Hostile Co", "cn").await;
    let member = add_member(&t, &org, &key, "member").await;
    let reqs = format!("/v1/orgs/{org}/requests");
    let members = format!("/v1/orgs/{org}/members");
    let mid = member["id"].as_str().unwrap();
    let doc = |url: &str| json!({"type": "liquor_licence", "name": "licence.pdf", "url": url});
    let ok_owner = json!({"login_id": "owner_ok1", "name": "Owner", "email": "owner@example.com"});
    let limit = t.config.server.body_limit;

    let mut cases = vec![
        // Syntax: 400.
        raw_case(
            "truncated JSON",
            &reqs,
            Some("application/json"),
            br#"{"kind": "ftp_access", "remark": "#.to_vec(),
            400,
        ),
        raw_case(
            "not JSON",
            &reqs,
            Some("application/json"),
            b"hello".to_vec(),
            400,
        ),
        raw_case("empty body", &reqs, Some("application/json"), vec![], 400),
        raw_case(
            "trailing garbage",
            &reqs,
            Some("application/json"),
            br#"{"kind": "ftp_access", "remark": "x"} x"#.to_vec(),
            400,
        ),
        raw_case(
            "JSON with a comment",
            &reqs,
            Some("application/json"),
            b"{\"kind\": \"ftp_access\", // hi\n \"remark\": \"x\"}".to_vec(),
            400,
        ),
        raw_case(
            "byte order mark",
            &reqs,
            Some("application/json"),
            b"\xEF\xBB\xBF{\"kind\": \"ftp_access\", \"remark\": \"x\"}".to_vec(),
            400,
        ),
        raw_case(
            "invalid UTF-8 in a string",
            &reqs,
            Some("application/json"),
            b"{\"kind\": \"ftp_access\", \"remark\": \"\xff\xfe bad\"}".to_vec(),
            400,
        ),
        raw_case(
            "lone surrogate escape",
            &reqs,
            Some("application/json"),
            br#"{"kind": "ftp_access", "remark": "\ud800"}"#.to_vec(),
            400,
        ),
        // Typed parsing stops at the first wrong type, before any recursion limit.
        raw_case(
            "deeply nested JSON",
            &reqs,
            Some("application/json"),
            nested(5000),
            422,
        ),
        raw_case(
            "unclosed nesting 50,000 deep",
            &reqs,
            Some("application/json"),
            "[".repeat(50_000).into_bytes(),
            422,
        ),
        // Media type and size.
        raw_case(
            "text/plain",
            &reqs,
            Some("text/plain"),
            br#"{"kind": "ftp_access", "remark": "x"}"#.to_vec(),
            415,
        ),
        raw_case(
            "form encoded",
            &reqs,
            Some("application/x-www-form-urlencoded"),
            b"kind=ftp_access&remark=x".to_vec(),
            415,
        ),
        raw_case(
            "no content type",
            &reqs,
            None,
            br#"{"kind": "ftp_access", "remark": "x"}"#.to_vec(),
            415,
        ),
        raw_case(
            "body over server.body_limit",
            &reqs,
            Some("application/json"),
            serde_json::to_vec(&json!({"kind": "ftp_access", "remark": "x".repeat(limit + 10)}))
                .unwrap(),
            413,
        ),
        // Shape and types: 422.
        json_case(
            "array instead of object",
            &reqs,
            json!([{"kind": "ftp_access", "remark": "x"}]),
            422,
        ),
        json_case("string instead of object", &reqs, json!("ftp_access"), 422),
        json_case("null body", &reqs, Value::Null, 422),
        json_case(
            "kind is a number",
            &reqs,
            json!({"kind": 7, "remark": "x"}),
            422,
        ),
        json_case(
            "remark is an array",
            &reqs,
            json!({"kind": "ftp_access", "remark": ["x"]}),
            422,
        ),
        json_case(
            "documents is an object",
            &reqs,
            json!({"kind": "ftp_access", "remark": "x", "documents": {"type": "a"}}),
            422,
        ),
        json_case(
            "requester is a number",
            &reqs,
            json!({"kind": "ftp_access", "remark": "x", "requester": 5}),
            422,
        ),
        json_case("missing remark", &reqs, json!({"kind": "ftp_access"}), 422),
        json_case(
            "unknown field",
            &reqs,
            json!({"kind": "ftp_access", "remark": "x", "priority": "high"}),
            422,
        ),
        json_case(
            "unknown field in a document",
            &reqs,
            json!({"kind": "ftp_access", "remark": "x", "documents": [{"type": "a", "name": "b", "url": "https://e.com/x", "size": 1}]}),
            422,
        ),
        raw_case(
            "duplicate field",
            &reqs,
            Some("application/json"),
            br#"{"kind": "ftp_access", "kind": "alcohol_sales", "remark": "x"}"#.to_vec(),
            422,
        ),
        // Values.
        json_case(
            "unknown kind",
            &reqs,
            json!({"kind": "launch_missiles", "remark": "x"}),
            422,
        ),
        json_case(
            "blank remark",
            &reqs,
            json!({"kind": "ftp_access", "remark": "   "}),
            422,
        ),
        json_case(
            "remark over 2000 characters",
            &reqs,
            json!({"kind": "ftp_access", "remark": "x".repeat(2001)}),
            422,
        ),
        json_case(
            "remark over 2000 CJK characters",
            &reqs,
            json!({"kind": "ftp_access", "remark": "审".repeat(2001)}),
            422,
        ),
        json_case(
            "NUL byte in remark",
            &reqs,
            json!({"kind": "ftp_access", "remark": "before\u{0}after"}),
            422,
        ),
        json_case(
            "bell control character in remark",
            &reqs,
            json!({"kind": "ftp_access", "remark": "ding\u{7}"}),
            422,
        ),
        json_case(
            "11 documents",
            &reqs,
            json!({"kind": "alcohol_sales", "remark": "x", "documents": vec![doc("https://e.com/l.pdf"); 11]}),
            422,
        ),
        json_case(
            "http document url",
            &reqs,
            json!({"kind": "alcohol_sales", "remark": "x", "documents": [doc("http://e.com/l.pdf")]}),
            422,
        ),
        json_case(
            "javascript document url",
            &reqs,
            json!({"kind": "alcohol_sales", "remark": "x", "documents": [doc("javascript:alert(1)")]}),
            422,
        ),
        json_case(
            "document url with credentials",
            &reqs,
            json!({"kind": "alcohol_sales", "remark": "x", "documents": [doc("https://u:p@e.com/l.pdf")]}),
            422,
        ),
        json_case(
            "document url over 2000 characters",
            &reqs,
            json!({"kind": "alcohol_sales", "remark": "x", "documents": [doc(&format!("https://e.com/{}", "a".repeat(2000)))]}),
            422,
        ),
        json_case(
            "document without url",
            &reqs,
            json!({"kind": "alcohol_sales", "remark": "x", "documents": [{"type": "liquor_licence", "name": "l.pdf"}]}),
            422,
        ),
        json_case(
            "unknown requester",
            &reqs,
            json!({"kind": "ftp_access", "remark": "x", "requester": "ghost_user"}),
            422,
        ),
        json_case(
            "member kind without requester",
            &reqs,
            json!({"kind": "payment_permission", "remark": "x"}),
            422,
        ),
        json_case(
            "SQL in requester",
            &reqs,
            json!({"kind": "ftp_access", "remark": "x", "requester": "' OR 1=1 --"}),
            422,
        ),
        // Members.
        json_case(
            "login_id too short",
            &members,
            json!({"login_id": "abcd", "name": "A", "email": "a@example.com"}),
            422,
        ),
        json_case(
            "login_id too long",
            &members,
            json!({"login_id": "a".repeat(21), "name": "A", "email": "a@example.com"}),
            422,
        ),
        json_case(
            "login_id with a dash",
            &members,
            json!({"login_id": "abc-def", "name": "A", "email": "a@example.com"}),
            422,
        ),
        json_case(
            "login_id with full-width letters",
            &members,
            json!({"login_id": "ａｂｃｄｅ", "name": "A", "email": "a@example.com"}),
            422,
        ),
        json_case(
            "bad email",
            &members,
            json!({"login_id": "valid_id1", "name": "A", "email": "not-an-email"}),
            422,
        ),
        json_case(
            "email with a header injection",
            &members,
            json!({"login_id": "valid_id1", "name": "A", "email": "a@example.com\r\nBcc: x@evil.com"}),
            422,
        ),
        json_case(
            "a second super admin",
            &members,
            json!({"login_id": "valid_id1", "name": "A", "email": "a@example.com", "kind": "super_admin"}),
            422,
        ),
        json_case(
            "negative number as name",
            &members,
            json!({"login_id": "valid_id1", "name": -1, "email": "a@example.com"}),
            422,
        ),
        json_case(
            "float as phone",
            &members,
            json!({"login_id": "valid_id1", "name": "A", "email": "a@example.com", "phone": 1.5}),
            422,
        ),
        json_case(
            "name with a newline",
            &members,
            json!({"login_id": "valid_id1", "name": "A\nB", "email": "a@example.com"}),
            422,
        ),
        json_case(
            "PATCH body as array",
            &format!("{members}/{mid}"),
            json!(["name"]),
            422,
        ),
        // serde would read these arrays as the struct's fields in order.
        json_case(
            "member as a positional array",
            &members,
            json!(["valid_id1", "A", "a@example.com"]),
            422,
        ),
        json_case(
            "request as a positional array",
            &reqs,
            json!(["ftp_access", null, "x"]),
            422,
        ),
        json_case(
            "document as a positional array",
            &reqs,
            json!({"kind": "alcohol_sales", "remark": "x", "documents": [["liquor_licence", "l.pdf", "https://e.com/l.pdf"]]}),
            422,
        ),
    ];
    // Orgs and reviewers (platform key).
    let mut platform = vec![
        json_case(
            "org with unknown region",
            "/v1/orgs",
            json!({"name": "X", "region": "atlantis", "locale": "en", "owner": ok_owner}),
            422,
        ),
        json_case(
            "org with unknown locale",
            "/v1/orgs",
            json!({"name": "X", "region": "cn", "locale": "fr", "owner": ok_owner}),
            422,
        ),
        json_case(
            "org owner as a positional array",
            "/v1/orgs",
            json!({"name": "X", "region": "cn", "locale": "en", "owner": ["owner_ok2", "Owner", "o@example.com"]}),
            422,
        ),
        json_case(
            "org owner as an array",
            "/v1/orgs",
            json!({"name": "X", "region": "cn", "locale": "en", "owner": [ok_owner]}),
            422,
        ),
        json_case(
            "org without owner",
            "/v1/orgs",
            json!({"name": "X", "region": "cn", "locale": "en"}),
            422,
        ),
        json_case(
            "org name over 100 characters",
            "/v1/orgs",
            json!({"name": "n".repeat(101), "region": "cn", "locale": "en", "owner": ok_owner}),
            422,
        ),
        json_case(
            "reviewer groups as a string",
            "/v1/reviewers",
            json!({"email": "r@example.com", "name": "R", "locale": "en", "groups": "marketplace"}),
            422,
        ),
        json_case(
            "reviewer without groups",
            "/v1/reviewers",
            json!({"email": "r@example.com", "name": "R", "locale": "en", "groups": []}),
            422,
        ),
        json_case(
            "reviewer group with spaces",
            "/v1/reviewers",
            json!({"email": "r@example.com", "name": "R", "locale": "en", "groups": ["a b"]}),
            422,
        ),
    ];
    // Addresses the mailer (lettre) cannot send to: refused where they enter,
    // for members, org owners and reviewers alike.
    for bad in [
        "a..b@example.com",
        ".lead@example.com",
        "trail.@example.com",
        "x(y)@example.com",
        "x[y]@example.com",
        "x:y@example.com",
        "x\\y@example.com",
    ] {
        cases.push(json_case(
            "undeliverable member email",
            &members,
            json!({"login_id": "valid_id1", "name": "A", "email": bad}),
            422,
        ));
        cases.push(json_case(
            "undeliverable email in a PATCH",
            &format!("{members}/{mid}"),
            json!({"email": bad}),
            422,
        ));
        platform.push(json_case(
            "undeliverable owner email",
            "/v1/orgs",
            json!({"name": "X", "region": "cn", "locale": "en",
                   "owner": {"login_id": "owner_ok3", "name": "O", "email": bad}}),
            422,
        ));
        platform.push(json_case(
            "undeliverable reviewer email",
            "/v1/reviewers",
            json!({"email": bad, "name": "R", "locale": "en", "groups": ["marketplace"]}),
            422,
        ));
    }
    for c in &mut platform {
        c.platform = true;
    }
    cases.extend(platform);
    // Headers.
    let mut bad_idem = json_case(
        "Idempotency-Key with spaces",
        &reqs,
        json!({"kind": "ftp_access", "remark": "x"}),
        400,
    );
    bad_idem
        .extra_headers
        .push(("idempotency-key", "two words".into()));
    cases.push(bad_idem);
    let mut long_idem = json_case(
        "Idempotency-Key over 255 characters",
        &reqs,
        json!({"kind": "ftp_access", "remark": "x"}),
        400,
    );
    long_idem
        .extra_headers
        .push(("idempotency-key", "k".repeat(256)));
    cases.push(long_idem);
    let mut bad_auth = json_case("bad key before a bad body", &reqs, json!({"kind": 1}), 401);
    bad_auth
        .extra_headers
        .push(("authorization", "Bearer apd_nope".into()));
    cases.push(bad_auth);
    assert!(cases.len() >= 30);

    let before = counts(&t).await;
    for c in cases {
        let key = if c.platform {
            t.platform_key.as_str()
        } else {
            key.as_str()
        };
        let method = if c.path.ends_with(mid) {
            reqwest::Method::PATCH
        } else {
            reqwest::Method::POST
        };
        let mut req = t
            .client
            .request(method, format!("{}{}", t.base, c.path))
            .body(c.body.clone());
        if !c.extra_headers.iter().any(|(h, _)| *h == "authorization") {
            req = req.bearer_auth(key);
        }
        if !c.platform {
            // Member calls with an org key act for a member (the owner here).
            req = req.header("approvald-actor", &owner);
        }
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        for (h, v) in &c.extra_headers {
            req = req.header(*h, v);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status, c.status, "{}: {text}", c.name);
        assert_eq!(ct, "application/problem+json", "{}: {text}", c.name);
        let p: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: problem body is not JSON ({e}): {text}", c.name));
        assert_eq!(p["status"], c.status, "{}", c.name);
        assert!(
            p["type"].is_string() && p["title"].is_string() && p["detail"].is_string(),
            "{}: {text}",
            c.name
        );
        assert_eq!(counts(&t).await, before, "{} wrote something", c.name);
    }
    // Over the limit without a Content-Length (chunked): refused while reading.
    let (status, ct, text) = chunked_post(&t, &reqs, &key, limit + 100).await;
    assert_eq!(status, 413, "chunked: {text}");
    assert_eq!(ct, "application/problem+json", "chunked: {text}");
    // A header that is not text.
    let mut binary =
        format!("GET {reqs} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ").into_bytes();
    binary.extend_from_slice(b"\xff\xfe\r\nConnection: close\r\n\r\n");
    let (status, ct, text) = raw_http(&t, binary).await;
    assert_eq!(
        (status, ct.as_str()),
        (401, "application/problem+json"),
        "non-text key: {text}"
    );
    assert_eq!(
        counts(&t).await,
        before,
        "chunked or binary requests wrote something"
    );

    // Still healthy afterwards, and a good body is accepted.
    let ok = t
        .post(&reqs, &key, json!({"kind": "ftp_access", "remark": "fine"}))
        .await;
    assert_eq!(ok.status.as_u16(), 202, "{}", ok.text);
    let mut t = t;
    t.stop().await;
}

/// Send raw bytes over HTTP/1.1 and return (status, content type, body).
async fn raw_http(t: &TestApp, request: Vec<u8>) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(t.addr)
        .await
        .expect("connect");
    // The server may answer (413) and stop reading before the whole body is
    // written; the answer is what counts.
    let _ = s.write_all(&request).await;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let ct = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, ct, text)
}

/// POST `size` bytes of JSON with `Transfer-Encoding: chunked` (no length up front).
async fn chunked_post(t: &TestApp, path: &str, key: &str, size: usize) -> (u16, String, String) {
    let body = format!(
        r#"{{"kind": "ftp_access", "remark": "{}"}}"#,
        "x".repeat(size)
    );
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.as_bytes().chunks(8192) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    raw_http(t, req).await
}

/// Defect class "PostgreSQL answers 500 for a NUL byte": a NUL in any path
/// segment, query parameter or JSON string, on every route, is refused at the
/// edge with a 4xx problem body and writes nothing, on both engines.
#[tokio::test]
async fn nul_bytes_are_refused_on_every_route() {
    let t = TestApp::spawn().await;
    let (org, key, owner) = t.create_org("Nul Co", "cn").await;
    let member = add_member(&t, &org, &key, "member").await;
    let mid = member["id"].as_str().unwrap().to_string();
    let pk = t.platform_key.clone();
    let o = format!("/v1/orgs/{org}");
    let n = "a\u{0}b";
    // (method, path, JSON body, platform key?)
    let mut cases: Vec<(&str, String, Option<Value>, bool)> = vec![
        // Paths.
        ("GET", "/v1/orgs/%00".into(), None, true),
        ("GET", "/v1/orgs/x%00y".into(), None, false),
        ("POST", "/v1/orgs/%00/keys".into(), Some(json!({})), true),
        ("GET", "/v1/orgs/%00/members".into(), None, false),
        ("GET", format!("{o}/members/%00"), None, false),
        (
            "PATCH",
            format!("{o}/members/%00"),
            Some(json!({"name": "x"})),
            false,
        ),
        ("POST", format!("{o}/members/%00/disable"), None, false),
        ("POST", format!("{o}/members/%00/enable"), None, false),
        ("GET", format!("{o}/requests/%00"), None, false),
        ("POST", format!("{o}/requests/%00/cancel"), None, false),
        ("GET", "/v1/orgs/%00/grants".into(), None, false),
        ("POST", format!("{o}/grants/%00/revoke"), None, false),
        ("GET", "/v1/reviewers/%00".into(), None, true),
        ("POST", "/v1/reviewers/%00/remove".into(), None, true),
        (
            "GET",
            "/v1/calendars/%00/due?from=2026-02-13T10:00:00%2B08:00&days=1".into(),
            None,
            false,
        ),
        ("GET", "/review/%00".into(), None, false),
        ("GET", "/no/such/route/%00".into(), None, false),
        // Query strings.
        (
            "POST",
            format!("{o}/grants/payment_permission/revoke?member=%00"),
            None,
            false,
        ),
        (
            "POST",
            format!("{o}/grants/payment_permission/revoke?member={mid}%00"),
            None,
            false,
        ),
        ("GET", format!("{o}/requests?status=%00"), None, false),
        ("GET", format!("{o}/requests?kind=ftp%00"), None, false),
        ("GET", format!("{o}/requests?cursor=%00"), None, false),
        ("GET", format!("{o}/members?cursor=%00"), None, false),
        ("GET", format!("{o}/audit?type=%00"), None, false),
        ("GET", format!("{o}/grants?all=%00"), None, false),
        (
            "GET",
            "/v1/calendars/cn/due?from=%00&days=1".into(),
            None,
            false,
        ),
        // JSON strings, every field that reaches the database.
        (
            "POST",
            format!("{o}/requests"),
            Some(json!({"kind": "ftp_access", "remark": "x", "requester": n})),
            false,
        ),
        (
            "POST",
            format!("{o}/requests"),
            Some(
                json!({"kind": "payment_permission", "remark": "x", "requester": format!("{mid}\u{0}")}),
            ),
            false,
        ),
        (
            "POST",
            format!("{o}/requests"),
            Some(json!({"kind": n, "remark": "x"})),
            false,
        ),
        (
            "POST",
            format!("{o}/requests"),
            Some(json!({"kind": "alcohol_sales", "remark": "x",
                        "documents": [{"type": "liquor_licence", "name": n, "url": "https://e.com/l.pdf"}]})),
            false,
        ),
        (
            "POST",
            format!("{o}/members"),
            Some(json!({"login_id": "nul_user1", "name": n, "email": "n@example.com"})),
            false,
        ),
        (
            "POST",
            format!("{o}/members"),
            Some(
                json!({"login_id": "nul_user1", "name": "N", "email": "n@example.com", "phone": n}),
            ),
            false,
        ),
        (
            "POST",
            format!("{o}/members"),
            Some(
                json!({"login_id": "nul_user1", "name": "N", "email": "n@example.com", "role": n}),
            ),
            false,
        ),
        (
            "PATCH",
            format!("{o}/members/{mid}"),
            Some(json!({"name": n})),
            false,
        ),
        (
            "PATCH",
            format!("{o}/members/{mid}"),
            Some(json!({"role": n})),
            false,
        ),
        (
            "PATCH",
            format!("{o}/members/{mid}"),
            Some(json!({"email": "x\u{0}@example.com"})),
            false,
        ),
        (
            "POST",
            format!("{o}/audit/logins"),
            Some(json!({"member": n, "ip": "10.0.0.1", "success": true})),
            false,
        ),
        (
            "POST",
            format!("{o}/audit/logins"),
            Some(json!({"member": owner, "ip": "10.0.0.1", "user_agent": n, "success": false})),
            false,
        ),
        (
            "POST",
            "/v1/orgs".into(),
            Some(json!({"name": n, "region": "cn", "locale": "en",
                        "owner": {"login_id": "nul_owner1", "name": "O", "email": "o@example.com"}})),
            true,
        ),
        (
            "POST",
            "/v1/orgs".into(),
            Some(json!({"name": "N", "region": "cn", "locale": "en",
                        "owner": {"login_id": "nul_owner1", "name": "O", "email": "o\u{0}@example.com"}})),
            true,
        ),
        (
            "POST",
            "/v1/reviewers".into(),
            Some(json!({"email": "r@example.com", "name": "R", "locale": "en", "groups": [n]})),
            true,
        ),
        (
            "POST",
            "/v1/reviewers".into(),
            Some(
                json!({"email": "r@example.com", "name": n, "locale": "en", "groups": ["marketplace"]}),
            ),
            true,
        ),
    ];
    // The same paths with the other key too: the answer must not depend on
    // who asks first.
    let extra: Vec<_> = cases
        .iter()
        .filter(|c| c.2.is_none())
        .map(|c| (c.0, c.1.clone(), None, !c.3))
        .collect();
    cases.extend(extra);

    let before = counts(&t).await;
    for (method, path, body, platform) in &cases {
        let name = format!("{method} {path} {body:?}");
        let mut req = t
            .client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", t.base),
            )
            .bearer_auth(if *platform { &pk } else { &key });
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = resp.text().await.unwrap_or_default();
        assert!((400..500).contains(&status), "{name}: {status} {text}");
        assert_eq!(ct, "application/problem+json", "{name}: {text}");
        let p: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p["status"], status, "{name}");
        assert_eq!(counts(&t).await, before, "{name} wrote something");
    }
    // A body NUL names its field.
    let r = t
        .post(
            &format!("{o}/members"),
            &key,
            json!({"login_id": "nul_user1", "name": "N", "email": "n@example.com", "phone": n}),
        )
        .await
        .expect(422);
    assert!(
        r.json()["detail"].as_str().unwrap().contains("phone"),
        "{}",
        r.text
    );
    // Header values cannot carry a NUL at all: the HTTP parser refuses the
    // request before anything of ours runs (its 400, made problem+json).
    for header in ["Idempotency-Key", "Approvald-Actor", "Authorization"] {
        let mut raw = format!(
            "POST {o}/requests HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n{header}: a"
        )
        .into_bytes();
        raw.extend_from_slice(b"\0b\r\n\r\n{}");
        let (status, ct, text) = raw_http(&t, raw).await;
        assert_eq!(status, 400, "NUL in {header}: {text}");
        assert_eq!(ct, "application/problem+json", "NUL in {header}: {text}");
        assert_eq!(counts(&t).await, before, "NUL in {header} wrote something");
    }
    // `%2500` is a literal `%00`, not a NUL: an ordinary unknown id.
    t.get(&format!("{o}/requests/%2500"), &key)
        .await
        .expect(404);
    t.finish().await;
}
