//! Cron schedules: ticks from a `cron` expression in a named time zone, each
//! tick turned into exactly one job across all processes.
//!
//! Every runtime that registers a schedule computes the same ticks. For each
//! due tick it calls `Store::claim_tick`; only the one process that wins the
//! claim pushes the job, with the dedupe key `cron:{name}:{tick_ms}` as a
//! second guard. At start, ticks missed since the schedule's last claimed tick
//! are caught up according to [`CatchUp`].
use std::{collections::VecDeque, str::FromStr, sync::Arc, time::Duration};

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

use crate::{
    queue::{PushOptions, Queue},
    store::NewJob,
    worker::Common,
};

/// Most missed ticks fired at start under [`CatchUp::All`]; older ones are
/// skipped (and logged).
pub const MAX_CATCH_UP: usize = 1000;

/// What to do with ticks missed while no process ran the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// Fire only the newest missed tick (a roll-over that must happen once).
    #[default]
    Latest,
    /// Fire every missed tick, oldest first, at most [`MAX_CATCH_UP`].
    All,
}

/// A named schedule. `expr` uses the `cron` crate's syntax with seconds:
/// `sec min hour day-of-month month day-of-week [year]`, e.g.
/// `"0 0 0 * * *"` for midnight, evaluated in `tz`.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    /// Stable name: ticks are claimed under it (never rename a live one).
    pub name: String,
    pub expr: String,
    pub tz: Tz,
    pub catch_up: CatchUp,
}

impl CronSchedule {
    pub fn new(name: impl Into<String>, expr: impl Into<String>, tz: Tz) -> Self {
        Self {
            name: name.into(),
            expr: expr.into(),
            tz,
            catch_up: CatchUp::Latest,
        }
    }
    pub fn catch_up(mut self, policy: CatchUp) -> Self {
        self.catch_up = policy;
        self
    }
}

type MakeJob =
    Arc<dyn Fn(&Queue, DateTime<Utc>) -> Result<NewJob, crate::queue::QueueError> + Send + Sync>;

/// A schedule bound to the job type it makes.
pub(crate) struct CronTask {
    pub(crate) schedule: CronSchedule,
    parsed: Result<cron::Schedule, String>,
    pub(crate) queue_name: &'static str,
    make: MakeJob,
}

impl CronTask {
    pub(crate) fn new<J: crate::Job>(
        schedule: CronSchedule,
        make: impl Fn(DateTime<Utc>) -> J + Send + Sync + 'static,
    ) -> Self {
        let parsed = cron::Schedule::from_str(&schedule.expr).map_err(|e| {
            format!(
                "cron schedule {:?}: bad expression {:?}: {e}",
                schedule.name, schedule.expr
            )
        });
        let name = schedule.name.clone();
        let make: MakeJob = Arc::new(move |queue: &Queue, tick: DateTime<Utc>| {
            let opts = PushOptions::default().dedupe(dedupe_key(&name, tick.timestamp_millis()));
            queue.new_job(&make(tick), &opts)
        });
        Self {
            schedule,
            parsed,
            queue_name: J::NAME,
            make,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        self.parsed.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// Runs until draining; `Err` only when the store stays unreachable past
    /// the runtime's limit.
    pub(crate) async fn run(self, common: Arc<Common>) -> anyhow::Result<()> {
        let parsed = self.parsed.clone().map_err(anyhow::Error::msg)?;
        let name = self.schedule.name.as_str();
        let tz = self.schedule.tz;
        let queue = &common.queue;
        let mut wake = queue.wake.subscribe_all();

        let Some(last) = common
            .retry_store("last_tick", || queue.store.last_tick(name))
            .await
        else {
            return Err(gave_up(&common));
        };
        let now = queue.clock.now();
        // Never ran anywhere: start from now, there is nothing to catch up.
        let mut cursor = last
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .unwrap_or(now);
        tracing::info!(
            schedule = name,
            expr = %self.schedule.expr,
            tz = %tz,
            last_tick = ?last.and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
            "cron schedule started"
        );
        loop {
            if common.drain.is_cancelled() {
                return Ok(());
            }
            let now = queue.clock.now();
            let (due, skipped) = due_ticks(&parsed, tz, cursor, now, self.schedule.catch_up);
            if skipped > 0 {
                tracing::warn!(
                    schedule = name,
                    skipped,
                    "more missed ticks than the catch-up bound; oldest skipped"
                );
            }
            if let Some(newest) = due.last() {
                cursor = *newest;
            }
            for tick in due {
                if !self.fire(&common, tick).await {
                    return Err(gave_up(&common));
                }
            }
            let from = cursor.max(now).with_timezone(&tz);
            let Some(next) = parsed.after(&from).next() else {
                tracing::info!(schedule = name, "cron schedule has no further ticks");
                return Ok(());
            };
            let wait = (next.with_timezone(&Utc) - queue.clock.now())
                .to_std()
                .unwrap_or_default();
            // Re-read the clock at least every second (a ManualClock may jump)
            // and on `Queue::notify_all`.
            wake.mark_unchanged();
            tokio::select! {
                _ = tokio::time::sleep(wait.min(Duration::from_secs(1))) => {}
                _ = wake.changed() => {}
                _ = common.drain.cancelled() => return Ok(()),
            }
        }
    }

    /// Claim the tick, and push its job if we won. False when the store
    /// stayed unreachable past the limit.
    async fn fire(&self, common: &Common, tick: DateTime<Utc>) -> bool {
        let name = self.schedule.name.as_str();
        let queue = &common.queue;
        let tick_ms = tick.timestamp_millis();
        let Some(won) = common
            .retry_store("claim_tick", || queue.store.claim_tick(name, tick_ms))
            .await
        else {
            return false;
        };
        if !won {
            tracing::debug!(schedule = name, tick = %tick, "cron tick claimed by another process");
            return true;
        }
        let job = match (self.make)(queue, tick) {
            Ok(job) => job,
            Err(e) => {
                tracing::error!(schedule = name, tick = %tick, error = %e, "cron job could not be built; tick skipped");
                return true;
            }
        };
        let window = queue.config.dedupe_window.as_millis() as i64;
        let jobs = std::slice::from_ref(&job);
        let push = || {
            queue
                .store
                .push(jobs, queue.clock.now().timestamp_millis(), window)
        };
        let Some(pushed) = common.retry_store("push", push).await else {
            return false;
        };
        queue.wake.queue(self.queue_name);
        let id = pushed.first().map(|p| p.id.clone()).unwrap_or_default();
        tracing::info!(schedule = name, tick = %tick, job = self.queue_name, job_id = %id, "cron tick fired");
        true
    }
}

fn gave_up(common: &Common) -> anyhow::Error {
    anyhow::anyhow!(
        common
            .health
            .exceeded()
            .unwrap_or_else(|| "job store unreachable".to_string())
    )
}

pub(crate) fn dedupe_key(schedule: &str, tick_ms: i64) -> String {
    format!("cron:{schedule}:{tick_ms}")
}

/// Ticks in `(after, upto]`, oldest first, per the catch-up policy; also how
/// many older ticks were skipped because of the bound (at least; counting
/// stops at the bound).
pub(crate) fn due_ticks(
    schedule: &cron::Schedule,
    tz: Tz,
    after: DateTime<Utc>,
    upto: DateTime<Utc>,
    policy: CatchUp,
) -> (Vec<DateTime<Utc>>, usize) {
    if upto <= after {
        return (Vec::new(), 0);
    }
    let want = match policy {
        CatchUp::Latest => 1,
        CatchUp::All => MAX_CATCH_UP,
    };
    // Walk backwards from `upto` so the work is bounded by `want`, however
    // long the process was down.
    let start = upto + chrono::Duration::milliseconds(1);
    let mut newest_first: VecDeque<DateTime<Utc>> = VecDeque::new();
    let mut skipped = 0;
    for t in schedule.after(&start.with_timezone(&tz)).rev() {
        let t = t.with_timezone(&Utc);
        if t > upto {
            continue;
        }
        if t <= after {
            break;
        }
        if newest_first.len() < want {
            newest_first.push_back(t);
        } else {
            if policy == CatchUp::All {
                skipped += 1;
            }
            break;
        }
    }
    let mut out: Vec<_> = newest_first.into_iter().collect();
    out.reverse();
    (out, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn due_ticks_latest_and_all() {
        let s = cron::Schedule::from_str("0 * * * * *").unwrap();
        let tz = chrono_tz::UTC;
        let after = at("2026-01-01T00:00:00Z");
        let upto = at("2026-01-01T00:03:00Z");
        let (all, skipped) = due_ticks(&s, tz, after, upto, CatchUp::All);
        assert_eq!(
            all,
            vec![
                at("2026-01-01T00:01:00Z"),
                at("2026-01-01T00:02:00Z"),
                at("2026-01-01T00:03:00Z")
            ]
        );
        assert_eq!(skipped, 0);
        let (latest, _) = due_ticks(&s, tz, after, upto, CatchUp::Latest);
        assert_eq!(latest, vec![at("2026-01-01T00:03:00Z")]);
        // `upto` just before a tick excludes it; `after` is exclusive.
        let (none, _) = due_ticks(&s, tz, upto, at("2026-01-01T00:03:59.999Z"), CatchUp::All);
        assert!(none.is_empty());
    }

    #[test]
    fn due_ticks_is_bounded() {
        let s = cron::Schedule::from_str("* * * * * *").unwrap();
        let after = at("2026-01-01T00:00:00Z");
        let upto = at("2026-01-02T00:00:00Z");
        let (all, skipped) = due_ticks(&s, chrono_tz::UTC, after, upto, CatchUp::All);
        assert_eq!(all.len(), MAX_CATCH_UP);
        assert_eq!(*all.last().unwrap(), upto);
        assert!(skipped > 0);
    }

    #[test]
    fn due_ticks_follow_the_time_zone() {
        // Midnight in Shanghai is 16:00 UTC the day before.
        let s = cron::Schedule::from_str("0 0 0 * * *").unwrap();
        let (t, _) = due_ticks(
            &s,
            chrono_tz::Asia::Shanghai,
            at("2026-03-01T00:00:00Z"),
            at("2026-03-02T00:00:00Z"),
            CatchUp::All,
        );
        assert_eq!(t, vec![at("2026-03-01T16:00:00Z")]);
    }
}
