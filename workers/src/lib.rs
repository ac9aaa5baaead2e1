//! `approvald-workers`: approvald's job runtime.
//!
//! Domain-free. Jobs are serde structs implementing [`Job`] with a stable,
//! explicit [`Job::NAME`] (the queue name). They are pushed through a
//! [`Queue`] handle and run by a [`Runtime`], which builds one apalis-core
//! `Worker` per job type (WorkerBuilder, Monitor, tower layers, `Data<T>`)
//! over our own storage backends for Redis and SQLite (see `store`).
//!
//! The storage seam is the internal [`store::Store`] trait: every backend
//! operation is bounded (no unbounded Lua script or SQL statement), leases
//! are per job, and all "now" values come from the injectable [`Clock`].

pub mod clock;
pub mod job;
pub mod queue;
pub mod store;

pub use clock::{Clock, ManualClock, SystemClock};
pub use job::{Job, JobError, JobInfo};
pub use queue::{PushOptions, PushResult, Queue, QueueConfig};
