//! Helpers for tests of code that pushes jobs: run until the queues are
//! empty, and fail when jobs are left behind.
use std::time::{Duration, Instant};

use crate::{queue::Queue, store::QueueStats};

async fn snapshot(queue: &Queue, queues: &[&str]) -> anyhow::Result<Vec<(String, QueueStats)>> {
    let mut out = Vec::with_capacity(queues.len());
    for q in queues {
        out.push((q.to_string(), queue.stats(q).await?));
    }
    Ok(out)
}

fn describe(left: &[(String, QueueStats)]) -> String {
    left.iter()
        .map(|(q, s)| {
            format!(
                "{q}: ready={} scheduled={} running={} dead={}",
                s.ready, s.scheduled, s.running, s.dead
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Wait until none of `queues` has a ready, scheduled or running job (a
/// runtime must be running elsewhere to process them). Dead jobs do not
/// count. On timeout, the error lists what is left per queue.
pub async fn drain(queue: &Queue, queues: &[&str], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let stats = snapshot(queue, queues).await?;
        let left: Vec<_> = stats
            .into_iter()
            .filter(|(_, s)| s.ready + s.scheduled + s.running > 0)
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "queues not drained after {:.1}s: {}",
                timeout.as_secs_f64(),
                describe(&left)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Panic if any of `queues` holds a ready, scheduled, running or dead job:
/// call it at the end of a test so nothing is silently left behind.
pub async fn assert_empty(queue: &Queue, queues: &[&str]) {
    let stats = snapshot(queue, queues).await.expect("reading queue stats");
    let left: Vec<_> = stats
        .into_iter()
        .filter(|(_, s)| s.ready + s.scheduled + s.running + s.dead > 0)
        .collect();
    assert!(left.is_empty(), "jobs left behind: {}", describe(&left));
}
