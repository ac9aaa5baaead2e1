//! Submitting many requests concurrently, as an upstream app would.
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, stream};

use crate::cluster::Slot;

/// An accepted request: its kind and id.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub kind: &'static str,
    pub id: String,
}

/// POST every slot (`concurrency` at a time, round robin over `bases`);
/// every answer must be 202. `done` counts answers as they come.
pub async fn submit_all(
    client: reqwest::Client,
    bases: Vec<String>,
    slots: Vec<Slot>,
    concurrency: usize,
    done: Arc<AtomicUsize>,
) -> Vec<Accepted> {
    let bases = Arc::new(bases);
    stream::iter(slots.into_iter().enumerate())
        .map(|(i, slot)| {
            let (client, bases, done) = (client.clone(), bases.clone(), done.clone());
            async move {
                let base = &bases[i % bases.len()];
                let r = client
                    .post(format!("{base}{}", slot.path()))
                    .bearer_auth(&slot.key)
                    .json(&slot.body())
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("submit #{i}: {e}"));
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                assert_eq!(
                    status, 202,
                    "submit #{i} ({}) answered {status}: {text}",
                    slot.kind
                );
                let v: serde_json::Value = serde_json::from_str(&text).expect("JSON answer");
                done.fetch_add(1, Ordering::Relaxed);
                Accepted {
                    kind: slot.kind,
                    id: v["id"].as_str().expect("id").to_string(),
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Wait until `counter` reaches `n` (at most `limit`).
pub async fn wait_count(counter: &AtomicUsize, n: usize, limit: Duration) {
    let t0 = std::time::Instant::now();
    while counter.load(Ordering::Relaxed) < n {
        assert!(
            t0.elapsed() < limit,
            "only {} of {n} after {limit:?}",
            counter.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn ids(a: &[Accepted]) -> Vec<String> {
    a.iter().map(|a| a.id.clone()).collect()
}
