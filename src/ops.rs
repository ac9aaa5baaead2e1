//! Operator-facing background work: gauges for `/metrics` and the periodic
//! sweep that keeps the database the truth.
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{app::App, jobs, on_db};

/// Refresh gauges that are read from the database and the queue.
pub async fn refresh_gauges(app: &App) {
    let pending: Result<Vec<(String, i64)>, sqlx::Error> = on_db!(&app.db, |p| sqlx::query_as(
        "SELECT kind, COUNT(*) FROM requests WHERE status IN ('submitted', 'in_review') GROUP BY kind"
    )
    .fetch_all(p)
    .await);
    if let Ok(rows) = pending {
        for k in &app.catalog.kinds {
            let n = rows.iter().find(|(kind, _)| *kind == k.key).map(|(_, n)| *n).unwrap_or(0);
            metrics::gauge!("approvald_requests_pending", "kind" => k.key.clone()).set(n as f64);
        }
    }
    for q in jobs::QUEUES {
        if let Ok(s) = app.queue.stats(q).await {
            metrics::gauge!("approvald_queue_depth", "queue" => *q).set((s.ready + s.scheduled + s.running) as f64);
        }
    }
    if !app.queue_in_db {
        let n: Result<i64, sqlx::Error> =
            on_db!(&app.db, |p| sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL").fetch_one(p).await);
        if let Ok(n) = n {
            metrics::gauge!("approvald_outbox_pending").set(n as f64);
        }
    }
}

/// Run the SLA sweep and the reconciler every `sla.sweep_interval_secs`
/// until `stop`. Failures are logged and retried next round.
pub async fn sweeper(app: App, stop: CancellationToken) -> anyhow::Result<()> {
    let every = Duration::from_secs(app.config.sla.sweep_interval_secs);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
        match jobs::sla::sweep(&app).await {
            Ok(s) if s != jobs::sla::Swept::default() => {
                tracing::info!(reminded = s.reminded, breached = s.breached, requeued = s.requeued, "sweep handled overdue work")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "sweep failed; will retry"),
        }
        refresh_gauges(&app).await;
    }
}
