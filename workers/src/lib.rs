#![doc = include_str!("../README.md")]

pub mod clock;
pub mod cron;
mod health;
pub mod job;
pub mod metrics;
pub mod queue;
pub mod runtime;
pub mod store;
pub mod testing;
mod worker;

pub use clock::{Clock, ManualClock, SystemClock};
pub use cron::{CatchUp, CronSchedule};
pub use job::{Job, JobError, JobInfo};
pub use queue::{PushOptions, PushResult, Queue, QueueConfig};
pub use runtime::Runtime;
