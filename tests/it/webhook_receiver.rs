//! A real HTTP receiver on loopback for the webhook tests: records every
//! call (headers and body), answers from a script of statuses, and can go
//! down and come back on the same port. Signatures are checked here with an
//! HMAC-SHA256 written from RFC 2104 over `sha2`, independent of approvald's
//! own (ring) implementation.
#![allow(dead_code)]

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// One call the receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
    pub body: String,
    pub status: u16,
}

impl Hit {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("webhook body is JSON")
    }
}

#[derive(Default)]
struct St {
    hits: Vec<Hit>,
    script: VecDeque<u16>,
    default_status: u16,
    /// Hold every answer this long (the kill test).
    delay_ms: u64,
    /// Calls received whose answer is still held.
    held: usize,
}

pub struct Receiver {
    pub addr: SocketAddr,
    st: Arc<Mutex<St>>,
    stop: Option<CancellationToken>,
}

async fn handle(State(st): State<Arc<Mutex<St>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    // Recorded on arrival, as a receiver that acts on what it gets: a
    // sender that dies while the answer is held has still delivered.
    let (status, delay) = {
        let mut s = st.lock().unwrap();
        let status = s.script.pop_front().unwrap_or(s.default_status);
        s.hits.push(Hit {
            id: h("webhook-id"),
            timestamp: h("webhook-timestamp").parse().unwrap_or(0),
            signature: h("webhook-signature"),
            body: String::from_utf8_lossy(&body).into_owned(),
            status,
        });
        s.held += 1;
        (status, s.delay_ms)
    };
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    st.lock().unwrap().held -= 1;
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    pub async fn start() -> Self {
        let st = Arc::new(Mutex::new(St {
            default_status: 200,
            ..Default::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut r = Self {
            addr,
            st,
            stop: None,
        };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let stop = CancellationToken::new();
        let app = Router::new()
            .route("/hook", post(handle))
            .with_state(self.st.clone());
        let s = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await
                .ok();
        });
        self.stop = Some(stop);
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Stop listening: connections are refused until [`Receiver::up`].
    pub fn down(&mut self) {
        if let Some(s) = self.stop.take() {
            s.cancel();
        }
    }

    pub async fn up(&mut self) {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("re-bind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Answer these statuses first, then the default.
    pub fn script(&self, statuses: &[u16]) {
        self.st
            .lock()
            .unwrap()
            .script
            .extend(statuses.iter().copied());
    }

    pub fn set_default(&self, status: u16) {
        self.st.lock().unwrap().default_status = status;
    }

    pub fn set_delay_ms(&self, ms: u64) {
        self.st.lock().unwrap().delay_ms = ms;
    }

    /// Calls received and not yet answered (senders waiting).
    pub fn held(&self) -> usize {
        self.st.lock().unwrap().held
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.st.lock().unwrap().hits.clone()
    }
}

/// HMAC-SHA256 (RFC 2104), written out.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// The Standard Webhooks signature of (id, timestamp, body) with a `whsec_` secret.
pub fn expected_signature(secret: &str, id: &str, ts: i64, body: &str) -> String {
    let key = B64
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .expect("secret is base64");
    let msg = format!("{id}.{ts}.{body}");
    format!("v1,{}", B64.encode(hmac_sha256(&key, msg.as_bytes())))
}

/// Does one of the space-separated signatures of `hit` match `secret`?
pub fn signed_by(hit: &Hit, secret: &str) -> bool {
    let want = expected_signature(secret, &hit.id, hit.timestamp, &hit.body);
    hit.signature.split(' ').any(|s| s == want)
}
