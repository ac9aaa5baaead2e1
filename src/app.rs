//! The application state shared by HTTP handlers and jobs.
use std::{ops::Deref, sync::Arc};

use approvald_workers::{Clock, Queue};

use crate::{config::Config, db::Db, domain::catalog::Catalog, mail::Mailer};

pub struct AppInner {
    pub config: Config,
    pub db: Db,
    /// PostgreSQL connections the payment authorization keeps between calls
    /// (see [`crate::db::Warm`]).
    pub warm: crate::db::Warm,
    pub queue: Queue,
    /// True when the queue lives in the same SQLite database as the state, so
    /// a job is written in the caller's transaction; otherwise jobs go through
    /// the outbox table and the relay.
    pub queue_in_db: bool,
    pub mailer: Mailer,
    pub catalog: Catalog,
    pub calendars: crate::domain::calendar::Calendars,
    pub clock: Arc<dyn Clock>,
    /// What authz checks loaded, by org and authorization revision
    /// (`flows::authz`).
    pub authz: crate::flows::authz::AuthzCache,
    /// Read-only connections for the authz check's key-and-revision read
    /// on the calling task (SQLite on disk only; `db::inline`).
    pub inline: Option<crate::db::inline::InlineReaders>,
    /// The thread that runs a submission's whole write, several per commit
    /// (SQLite on disk with the queue in it only; `db::writer`).
    pub writer: Option<crate::db::writer::Writer>,
    /// What the optimistic payment authorization path has learnt
    /// (`flows::payments`).
    pub spend_hints: crate::flows::payments::SpendHints,
    /// The orgs whose optimistic submit (PostgreSQL) lost a race lately
    /// (`flows::submit`).
    pub submit_lost: crate::flows::contention::LostLately,
    /// Wakes this process's outbox relay after a commit that wrote outbox
    /// rows (`jobs::relay`).
    pub outbox_written: Arc<tokio::sync::Notify>,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct App(pub Arc<AppInner>);

impl Deref for App {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl App {
    /// Milliseconds since the epoch, from the injectable clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }
}
