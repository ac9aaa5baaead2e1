//! Gauges read from the database and the queue (refreshed on every
//! `/metrics` scrape and every sweep tick).
use crate::{app::App, on_db};

/// Refresh gauges that are read from the database and the queue.
pub async fn refresh_gauges(app: &App) {
    let pending: Result<Vec<(String, i64)>, sqlx::Error> = on_db!(&app.db, |p| {
        sqlx::query_as(
        "SELECT kind, COUNT(*) FROM requests WHERE status IN ('submitted', 'in_review') GROUP BY kind"
    )
    .fetch_all(p)
    .await
    });
    if let Ok(rows) = pending {
        for k in &app.catalog.kinds {
            let n = rows
                .iter()
                .find(|(kind, _)| *kind == k.key)
                .map(|(_, n)| *n)
                .unwrap_or(0);
            metrics::gauge!("approvald_requests_pending", "kind" => k.key.clone()).set(n as f64);
        }
    }
    if !app.queue_in_db
        && let Ok(n) = crate::store::outbox::count_pending(&app.db).await
    {
        metrics::gauge!("approvald_outbox_pending").set(n as f64);
    }
    crate::http::ops::dash::now::refresh_gauges(app).await;
}
