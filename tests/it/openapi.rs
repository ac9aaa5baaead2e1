//! The OpenAPI description: served at `/openapi.json` without a key, equal
//! to the generated one, and every operation it describes is routed by the
//! running daemon (the unit tests hold it to the router's table; this holds
//! it to what the daemon actually answers, review and health routes too).
use reqwest::Method;

use crate::harness::TestApp;

#[tokio::test]
async fn openapi_json_is_served_without_a_key() {
    let t = TestApp::spawn().await;
    let r = t
        .call(Method::GET, "/openapi.json", None, None)
        .await
        .expect(200);
    assert_eq!(r.content_type, "application/json");
    assert_eq!(r.text, approvald::http::api::openapi::json());
    assert_eq!(r.json()["openapi"], "3.1.0");
    t.finish().await;
}

#[tokio::test]
async fn every_described_operation_is_routed() {
    let t = TestApp::spawn().await;
    for (method, path) in approvald::http::api::openapi::described_routes() {
        // Any value for the path parameters: the route must still match.
        let concrete: String = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let r = t.call(m, &concrete, None, None).await;
        assert_ne!(
            r.status.as_u16(),
            405,
            "{method} {path}: described, but the router refuses the method"
        );
        assert!(
            !(r.status.as_u16() == 404 && r.text.contains("no such route")),
            "{method} {path}: described, but not routed"
        );
        if path.starts_with("/v1/") {
            assert_eq!(r.status.as_u16(), 401, "{method} {path} without a key");
        }
    }
    t.finish().await;
}
