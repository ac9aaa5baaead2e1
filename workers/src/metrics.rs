//! Metric names and recording, through the `metrics` facade (the
//! application installs the exporter).
//!
//! - `approvald_jobs_total{job,outcome}` counter. Every attempt counts once
//!   as `ok`, `retry` (failed, will run again) or `dead` (dead-lettered:
//!   permanent error, attempts exhausted or undecodable payload). Attempts
//!   that ended by a handler panic or by the job's timeout are also counted
//!   under `panic` / `timeout`.
//! - `approvald_job_seconds{job}` histogram: handler run time.
//! - `approvald_job_pickup_seconds{job}` histogram: from the job's `run_at`
//!   to its handler start.
//! - `approvald_queue_depth{queue,state}` gauge, `state` one of `ready`,
//!   `scheduled`, `running`, `dead`; refreshed by the runtime every
//!   `Runtime::metrics_interval`.
use std::time::Duration;

use crate::store::QueueStats;

pub const JOBS_TOTAL: &str = "approvald_jobs_total";
pub const JOB_SECONDS: &str = "approvald_job_seconds";
pub const JOB_PICKUP_SECONDS: &str = "approvald_job_pickup_seconds";
pub const QUEUE_DEPTH: &str = "approvald_queue_depth";

/// The `outcome` label of [`JOBS_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Retry,
    Dead,
    Panic,
    Timeout,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Retry => "retry",
            Outcome::Dead => "dead",
            Outcome::Panic => "panic",
            Outcome::Timeout => "timeout",
        }
    }
}

pub(crate) fn job_outcome(job: &'static str, outcome: Outcome) {
    metrics::counter!(JOBS_TOTAL, "job" => job, "outcome" => outcome.as_str()).increment(1);
}

pub(crate) fn job_duration(job: &'static str, d: Duration) {
    metrics::histogram!(JOB_SECONDS, "job" => job).record(d.as_secs_f64());
}

pub(crate) fn pickup(job: &'static str, d: Duration) {
    metrics::histogram!(JOB_PICKUP_SECONDS, "job" => job).record(d.as_secs_f64());
}

pub(crate) fn queue_depth(queue: &str, s: &QueueStats) {
    for (state, n) in [
        ("ready", s.ready),
        ("scheduled", s.scheduled),
        ("running", s.running),
        ("dead", s.dead),
    ] {
        metrics::gauge!(QUEUE_DEPTH, "queue" => queue.to_string(), "state" => state).set(n as f64);
    }
}
