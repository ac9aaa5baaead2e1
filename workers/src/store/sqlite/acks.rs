//! Group commit of job acknowledgements (`complete`, `retry`, `kill`).
//!
//! Each ack is one `UPDATE` of one row by primary key. Committed one by one,
//! every job costs a WAL commit of its own, which caps a SQLite queue at a
//! few thousand jobs per second. Here the acks that arrive while the previous
//! batch is being written are written together, at most [`ACK_BATCH`] in one
//! `BEGIN IMMEDIATE` transaction, and every caller returns only after that
//! commit: durability is unchanged, and an idle store adds no delay (the
//! first ack is written at once, alone).
//!
//! If a batch transaction fails, each of its acks is written again on its own,
//! so every caller gets its own result.
//!
//! The writer is a task spawned on first use; it ends when the last clone of
//! the store is dropped. If the runtime that spawned it has shut down (tests
//! run one runtime per test), the next ack spawns a new one.
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use sqlx::{Sqlite, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::sql::{COMPLETE, COMPLETE_MANY, KILL, RETRY};
use crate::store::{StoreError, StoreResult};

/// Most acks per transaction.
pub(crate) const ACK_BATCH: usize = 256;
/// Acks waiting for the writer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 4 * ACK_BATCH;

#[derive(Debug)]
pub(crate) enum Ack {
    Complete {
        now_ms: i64,
    },
    Retry {
        run_at_ms: i64,
        /// Used when the retry dead-letters a job on its final attempt.
        now_ms: i64,
        error: String,
    },
    Kill {
        now_ms: i64,
        error: String,
    },
}

struct Req {
    ack: Ack,
    queue: String,
    id: String,
    worker_id: String,
    done: oneshot::Sender<StoreResult<()>>,
}

impl Req {
    fn what(&self) -> &'static str {
        match self.ack {
            Ack::Complete { .. } => "complete",
            Ack::Retry { .. } => "retry",
            Ack::Kill { .. } => "kill",
        }
    }

    /// Run this ack's statement; returns how many rows it changed (0 when the
    /// job is no longer leased by this worker).
    async fn execute<'c, E>(&self, conn: E) -> Result<u64, sqlx::Error>
    where
        E: sqlx::Executor<'c, Database = Sqlite>,
    {
        let q = match &self.ack {
            Ack::Complete { now_ms } => sqlx::query(COMPLETE).bind(*now_ms),
            Ack::Retry {
                run_at_ms,
                now_ms,
                error,
            } => sqlx::query(RETRY)
                .bind(*run_at_ms)
                .bind(*now_ms)
                .bind(error.clone()),
            Ack::Kill { now_ms, error } => sqlx::query(KILL).bind(*now_ms).bind(error.clone()),
        };
        let q = q
            .bind(self.id.clone())
            .bind(self.queue.clone())
            .bind(self.worker_id.clone());
        Ok(q.execute(conn).await?.rows_affected())
    }

    fn log_if_ignored(&self, changed: u64) {
        if changed == 0 {
            tracing::debug!(
                queue = %self.queue,
                id = %self.id,
                worker_id = %self.worker_id,
                "{} ignored: job not leased by this worker",
                self.what()
            );
        }
    }

    async fn write_alone(&self, pool: &SqlitePool) -> StoreResult<()> {
        let changed = self.execute(pool).await?;
        self.log_if_ignored(changed);
        Ok(())
    }
}

/// Handle on the ack writer; shared by all clones of a store.
#[derive(Debug, Clone)]
pub(crate) struct AckWriter {
    tx: Arc<Mutex<Option<mpsc::Sender<Req>>>>,
    /// The store's in-process write gate, taken around every write.
    gate: Gate,
}

type Gate = Arc<tokio::sync::Mutex<()>>;

impl AckWriter {
    pub(crate) fn new(gate: Gate) -> Self {
        Self {
            tx: Arc::default(),
            gate,
        }
    }

    /// Write one ack (in the next group commit) and wait for its commit.
    pub(crate) async fn apply(
        &self,
        pool: &SqlitePool,
        ack: Ack,
        queue: &str,
        id: &str,
        worker_id: &str,
    ) -> StoreResult<()> {
        let (done, answer) = oneshot::channel();
        let mut req = Req {
            ack,
            queue: queue.to_owned(),
            id: id.to_owned(),
            worker_id: worker_id.to_owned(),
            done,
        };
        // A writer spawned on a runtime that has since shut down refuses the
        // send; then spawn a new one here, once.
        for _ in 0..2 {
            let sender = self.sender(pool);
            match sender.send(req).await {
                Ok(()) => {
                    return answer.await.unwrap_or_else(|_| {
                        Err(StoreError::Other(
                            "sqlite ack writer stopped before the commit".into(),
                        ))
                    });
                }
                Err(mpsc::error::SendError(back)) => {
                    req = back;
                    self.forget(&sender);
                }
            }
        }
        let _gate = self.gate.lock().await;
        req.write_alone(pool).await
    }

    fn sender(&self, pool: &SqlitePool) -> mpsc::Sender<Req> {
        let mut slot = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = slot.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run_writer(pool.clone(), self.gate.clone(), rx));
        *slot = Some(tx.clone());
        tx
    }

    fn forget(&self, dead: &mpsc::Sender<Req>) {
        let mut slot = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|tx| tx.same_channel(dead)) {
            *slot = None;
        }
    }
}

async fn run_writer(pool: SqlitePool, gate: Gate, mut rx: mpsc::Receiver<Req>) {
    let mut batch = Vec::with_capacity(ACK_BATCH);
    while rx.recv_many(&mut batch, ACK_BATCH).await > 0 {
        let _gate = gate.lock().await;
        // Take what arrived while waiting for the gate, too.
        if batch.len() < ACK_BATCH {
            while let Ok(req) = rx.try_recv() {
                batch.push(req);
                if batch.len() == ACK_BATCH {
                    break;
                }
            }
        }
        if batch.len() == 1 {
            let req = batch.remove(0);
            let r = req.write_alone(&pool).await;
            let _ = req.done.send(r);
            continue;
        }
        match write_batch(&pool, &batch).await {
            Ok(changed) => {
                for (req, n) in batch.drain(..).zip(changed) {
                    req.log_if_ignored(n);
                    let _ = req.done.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, acks = batch.len(), "sqlite ack batch failed; writing each ack alone");
                for req in batch.drain(..) {
                    let r = req.write_alone(&pool).await;
                    let _ = req.done.send(r);
                }
            }
        }
    }
}

/// Write `batch` in one transaction; how many rows each ack changed. The
/// completes (nearly all acks) go in one statement.
async fn write_batch(pool: &SqlitePool, batch: &[Req]) -> Result<Vec<u64>, sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let completes: Vec<serde_json::Value> = batch
        .iter()
        .filter_map(|r| match r.ack {
            Ack::Complete { now_ms } => Some(serde_json::json!({
                "id": r.id, "q": r.queue, "w": r.worker_id, "t": now_ms,
            })),
            _ => None,
        })
        .collect();
    let completed: HashSet<String> = if completes.is_empty() {
        HashSet::new()
    } else {
        sqlx::query_scalar(COMPLETE_MANY)
            .bind(serde_json::Value::Array(completes).to_string())
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
    };
    let mut changed = Vec::with_capacity(batch.len());
    for req in batch {
        changed.push(match req.ack {
            Ack::Complete { .. } => u64::from(completed.contains(&req.id)),
            _ => req.execute(&mut *tx).await?,
        });
    }
    tx.commit().await?;
    Ok(changed)
}
