//! The outbox relay: jobs written to the `outbox` table in a request's
//! transaction are pushed to the queue (Redis) at least once. The dedupe key
//! of each push is the row's own key or `outbox:{id}`, so a row pushed twice
//! (a crash between push and mark, two relays racing) still makes one job.
//!
//! Every process runs one (`lib::start`), woken by its own commits: the api
//! relays what requests wrote, a worker what its jobs wrote (a review's
//! mails and timers). On PostgreSQL a relay claims its rows with `FOR
//! UPDATE SKIP LOCKED`, so the relays of several processes push disjoint
//! rows instead of the same ones twice.
use std::time::Duration;

use anyhow::Context;
use approvald_workers::store::NewJob;
use tokio_util::sync::CancellationToken;

use crate::{app::App, db::Db, store::outbox};

/// Wake this process's relay (after a commit that wrote outbox rows).
pub fn nudge(app: &App) {
    app.outbox_written.notify_one();
}

/// [`nudge`] as work for [`crate::db::Tx::after_commit`].
pub fn nudger(app: &App) -> impl FnOnce() + Send + 'static {
    let n = app.outbox_written.clone();
    move || n.notify_one()
}

const BATCH: i64 = 500;

/// Relay until `stop`; Redis being down only delays, never loses: rows stay
/// in the database until a push succeeds.
pub async fn run(app: App, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    let mut last_purge = std::time::Instant::now();
    loop {
        if stop.is_cancelled() {
            return;
        }
        match relay_once(&app, BATCH).await {
            Ok(n) => {
                backoff = Duration::from_millis(100);
                if n as i64 == BATCH {
                    continue;
                }
                if last_purge.elapsed() > Duration::from_secs(600) {
                    last_purge = std::time::Instant::now();
                    let before = app.now_ms() - 24 * 3600 * 1000;
                    if let Err(e) = outbox::purge_sent(&app.db, before).await {
                        tracing::warn!(error = %format!("{e:#}"), "outbox purge failed");
                    }
                }
                tokio::select! {
                    _ = app.outbox_written.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64,
                    "outbox relay cannot push; requests are safe in the database and will be pushed when the queue is back");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Push one batch; returns how many rows were relayed.
pub async fn relay_once(app: &App, limit: i64) -> anyhow::Result<usize> {
    // PostgreSQL: claim the rows for as long as the push takes (another
    // process's relay skips them) and mark them in the same transaction.
    // SQLite (a Redis queue beside an embedded database: one process):
    // read, push, then mark, without holding the write lock across the push.
    let (claim, rows) = match &app.db {
        Db::Postgres(_) => {
            let mut tx = app.db.begin().await?;
            let rows = outbox::claim_pending(&mut tx, limit).await;
            (Some(tx), rows)
        }
        Db::Sqlite(_) => (None, outbox::pending(&app.db, limit).await),
    };
    let rows = rows.context("reading outbox")?;
    metrics::gauge!("approvald_outbox_pending").set(rows.len() as f64);
    if rows.is_empty() {
        return Ok(0);
    }
    let jobs: Vec<NewJob> = rows
        .iter()
        .map(|(id, queue, payload, run_at, key, max)| NewJob {
            queue: queue.clone(),
            payload: payload.clone(),
            run_at_ms: *run_at,
            dedupe_key: Some(key.clone().unwrap_or_else(|| format!("outbox:{id}"))),
            max_attempts: *max as u32,
        })
        .collect();
    app.queue
        .push_raw(&jobs)
        .await
        .context("pushing outbox rows to the queue")?;
    let mut tx = match claim {
        Some(tx) => tx,
        None => app.db.begin().await?,
    };
    outbox::mark_sent(&mut tx, &rows, app.now_ms()).await?;
    tx.commit().await?;
    Ok(rows.len())
}
