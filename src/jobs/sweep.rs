//! The `sweep` cron job: every tick of `sla.sweep_cron` (deduplicated across
//! scheduler processes by the runtime) runs the SLA sweep and the reconciler
//! (review jobs, mails, SLA timers and member cleanups lost with the queue)
//! once, and records the tick in `scheduler_ticks`.
use approvald_workers::{Job, JobError, JobInfo};
use serde::{Deserialize, Serialize};

use crate::{app::App, on_db};

pub const SCHEDULE: &str = "sla-sweep";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepJob {
    /// The cron tick this job was made for (ms).
    pub tick_ms: i64,
}

impl Job for SweepJob {
    const NAME: &'static str = "sweep";
    const MAX_ATTEMPTS: u32 = 3;
    const CONCURRENCY: usize = 1;
    type Context = App;

    async fn run(self, app: App, _info: JobInfo) -> Result<(), JobError> {
        let s = crate::audit::in_job(Self::NAME, super::sla::sweep(&app)).await?;
        if s != super::sla::Swept::default() {
            tracing::info!(
                reminded = s.reminded,
                breached = s.breached,
                requeued = s.requeued,
                mail_repushed = s.mail_repushed,
                timers_rearmed = s.timers_rearmed,
                "sweep handled overdue work"
            );
        }
        // Member cleanups lost with the queue (Redis restarted empty).
        let cleanups = super::cleanup::requeue_lost(&app).await?;
        if cleanups > 0 {
            tracing::info!(cleanups, "sweep pushed unfinished member cleanups again");
        }
        let now = app.now_ms();
        let runs: i64 = on_db!(&app.db, |p| sqlx::query_scalar(
            "INSERT INTO scheduler_ticks (schedule, tick_ms, runs, first_at, last_at) VALUES ($1, $2, 1, $3, $3) \
             ON CONFLICT (schedule, tick_ms) DO UPDATE SET runs = scheduler_ticks.runs + 1, last_at = excluded.last_at \
             RETURNING runs"
        )
        .bind(SCHEDULE)
        .bind(self.tick_ms)
        .bind(now)
        .fetch_one(p)
        .await)
        .map_err(anyhow::Error::from)?;
        if runs > 1 {
            tracing::warn!(
                tick_ms = self.tick_ms,
                runs,
                "cron tick handled more than once"
            );
        }
        crate::ops::refresh_gauges(&app).await;
        Ok(())
    }
}
