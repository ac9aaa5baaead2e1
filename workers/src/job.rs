//! The job contract shared with the application.
use std::{future::Future, time::Duration};

use serde::{Serialize, de::DeserializeOwned};

/// A unit of background work: a serde payload with a stable queue name.
///
/// `NAME` is stored with every queued job; never derive it from a Rust type
/// path, and never rename it once jobs may be queued under it.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Stable queue name, e.g. `"review"`.
    const NAME: &'static str;
    /// Total attempts, including the first. After the last failed attempt the
    /// job is dead-lettered.
    const MAX_ATTEMPTS: u32 = 10;
    /// How long one attempt may run before it counts as a retryable failure.
    const TIMEOUT: Duration = Duration::from_secs(60);
    /// How many of this job may run at once in one process.
    const CONCURRENCY: usize = 8;

    /// Shared state the handler needs (pool, mailer, config...).
    type Context: Clone + Send + Sync + 'static;

    /// Delay before attempt `attempt + 1`, given that attempt `attempt`
    /// (1-based) just failed. Default: exponential from 1 s, capped at 1 h,
    /// with +-25 % jitter.
    fn backoff(attempt: u32) -> Duration {
        crate::job::exponential_backoff(attempt, Duration::from_secs(1), Duration::from_secs(3600))
    }

    fn run(
        self,
        ctx: Self::Context,
        info: JobInfo,
    ) -> impl Future<Output = Result<(), JobError>> + Send;
}

/// What a handler knows about the attempt it runs.
#[derive(Debug, Clone)]
pub struct JobInfo {
    pub id: String,
    pub queue: &'static str,
    /// 1-based attempt number.
    pub attempt: u32,
    pub max_attempts: u32,
}

/// Handler failure, classified.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Try again after the job's backoff, until `MAX_ATTEMPTS`.
    #[error("retryable: {0:#}")]
    Retryable(anyhow::Error),
    /// Never retry: the job goes straight to the dead-letter set.
    #[error("permanent: {0:#}")]
    Permanent(anyhow::Error),
}

impl JobError {
    pub fn permanent(e: impl Into<anyhow::Error>) -> Self {
        Self::Permanent(e.into())
    }
    pub fn retryable(e: impl Into<anyhow::Error>) -> Self {
        Self::Retryable(e.into())
    }
}

impl From<anyhow::Error> for JobError {
    fn from(e: anyhow::Error) -> Self {
        Self::Retryable(e)
    }
}

/// `base * 2^(attempt-1)`, capped, with +-25 % jitter.
pub fn exponential_backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let d = exp.min(cap);
    let jitter: f64 = rand::random_range(0.75..1.25);
    d.mul_f64(jitter)
}
