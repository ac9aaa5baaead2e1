//! The domain jobs (payload + handler), and how the app enqueues them.
//!
//! A job is always written in the same transaction as the change that needs
//! it: into the queue's own table when the queue lives in this SQLite
//! database, otherwise into the `outbox` table, from which the relay pushes it
//! to Redis at least once (see [`relay`]).
use anyhow::Context;
use approvald_workers::{Job, PushOptions};

use crate::{app::App, db::Tx};

pub mod cleanup;
pub mod decide;
pub mod limits;
pub mod notify;
pub mod relay;
pub mod review;
pub mod sla;
pub mod sweep;

use approvald_workers::Runtime;

/// Every queue the daemon uses (metrics, drain helpers, `approvald enqueue`).
pub const QUEUES: &[&str] = &[
    review::ReviewJob::NAME,
    sla::SlaJob::NAME,
    notify::NotifyJob::NAME,
    sweep::SweepJob::NAME,
    crate::webhooks::deliver::DeliverJob::NAME,
    limits::LimitsJob::NAME,
    cleanup::CleanupJob::NAME,
];

/// Register every job handler (the worker role).
pub fn register(rt: Runtime, app: &App) -> Runtime {
    fn with<J: Job<Context = App>>(rt: Runtime, app: &App) -> Runtime {
        let n = concurrency::<J>(app);
        rt.register_with::<J>(app.clone(), n)
    }
    let rt = with::<review::ReviewJob>(rt, app);
    let rt = with::<sla::SlaJob>(rt, app);
    let rt = with::<notify::NotifyJob>(rt, app);
    let rt = with::<crate::webhooks::deliver::DeliverJob>(rt, app);
    let rt = with::<cleanup::CleanupJob>(rt, app);
    // One at a time, whatever the config says (it cannot name them).
    rt.register::<sweep::SweepJob>(app.clone())
        .register::<limits::LimitsJob>(app.clone())
}

/// Review and notify jobs at once per worker process on PostgreSQL, where
/// each mostly waits on a dozen round trips: with 8 (the jobs' own default)
/// the benchmark's review backlog drained with the machine largely idle;
/// with 32 (and the indexes of migration 0016) the review mails of a
/// 10,000-request burst came 2.5 times sooner. On SQLite the jobs' writes go through the one writer thread,
/// and 32 there took a third of the submits' throughput for the same
/// burst, so SQLite keeps 8 (docs/PERFORMANCE.md, fifth pass).
pub const POSTGRES_MAIL_PATH_CONCURRENCY: usize = 32;

/// How many jobs of `J` one worker process runs at once: the operator's
/// `workers.concurrency.<queue>`, else [`POSTGRES_MAIL_PATH_CONCURRENCY`]
/// for review and notify on PostgreSQL, else the job's own default.
pub fn concurrency<J: Job>(app: &App) -> usize {
    if let Some(n) = app.config.workers.concurrency.get(J::NAME) {
        return *n;
    }
    let mail_path = [review::ReviewJob::NAME, notify::NotifyJob::NAME].contains(&J::NAME);
    if mail_path && app.db.sqlite_pool().is_none() {
        POSTGRES_MAIL_PATH_CONCURRENCY
    } else {
        J::CONCURRENCY
    }
}

/// Cron schedules (the scheduler role): each tick yields exactly one job
/// across every scheduler process; a tick missed while all were down is
/// caught up once at start.
pub fn schedule(rt: Runtime, app: &App) -> Runtime {
    use approvald_workers::cron::{CatchUp, CronSchedule};
    rt.cron::<sweep::SweepJob>(
        CronSchedule::new(
            sweep::SCHEDULE,
            app.config.sla.sweep_cron.clone(),
            chrono_tz::UTC,
        )
        .catch_up(CatchUp::Latest),
        |tick| sweep::SweepJob {
            tick_ms: tick.timestamp_millis(),
        },
    )
    // Spending periods: each run closes every period that has ended in every
    // zone in use, so one missed tick loses nothing (see `limits`).
    .cron::<limits::LimitsJob>(
        CronSchedule::new(
            limits::SCHEDULE,
            app.config.payments.limits_cron.clone(),
            chrono_tz::UTC,
        )
        .catch_up(CatchUp::Latest),
        |tick| limits::LimitsJob {
            tick_ms: tick.timestamp_millis(),
        },
    )
}

/// The SQLite queue's row for `new`, written on the writer's connection
/// (`db::writer`) in the caller's unit of work, honouring its dedupe key
/// as `push_in_tx` does (the key is claimed for `dedupe_window_ms`; a key
/// already held pushes nothing). After the commit the caller wakes the
/// queue's workers ([`approvald_workers::store::sqlite::notify_pushed`]).
pub fn push_sync(
    c: &rusqlite::Connection,
    new: &approvald_workers::store::NewJob,
    now_ms: i64,
    dedupe_window_ms: i64,
) -> rusqlite::Result<()> {
    use approvald_workers::store::sqlite::{
        attempts_bound, new_job_id,
        sql::{CLAIM_DEDUPE, INSERT_JOB},
    };
    let id = new_job_id();
    if let Some(key) = &new.dedupe_key {
        let expires = now_ms.saturating_add(dedupe_window_ms);
        let won: Option<String> = crate::db::writer::query_opt(
            c,
            CLAIM_DEDUPE,
            &[&new.queue, key, &id, &expires, &now_ms],
            |r| r.get(0),
        )?;
        if won.as_deref() != Some(id.as_str()) {
            return Ok(());
        }
    }
    crate::db::writer::execute(
        c,
        INSERT_JOB,
        &[
            &id,
            &new.queue,
            &new.payload,
            &new.run_at_ms,
            &attempts_bound(new.max_attempts),
            &now_ms,
        ],
    )?;
    Ok(())
}

/// The SQLite queue's dedupe window, in milliseconds (for [`push_sync`]).
pub fn dedupe_window_ms(app: &App) -> i64 {
    app.queue.config().dedupe_window.as_millis() as i64
}

/// Write `job` in `tx`. Once `tx` commits, the idle workers of the job's
/// queue in this process (SQLite queue) or the outbox relay (Redis queue)
/// wake at once instead of at their next poll; nothing else is woken.
pub async fn enqueue<J: Job>(
    app: &App,
    tx: &mut Tx,
    job: &J,
    opts: PushOptions,
) -> anyhow::Result<()> {
    let new = app.queue.new_job(job, &opts).context("encoding job")?;
    let now = app.now_ms();
    if app.queue_in_db {
        let Some(t) = tx.sqlite() else {
            anyhow::bail!(
                "queue.url = sqlite needs a SQLite database (config validation prevents this)"
            );
        };
        let window = dedupe_window_ms(app);
        approvald_workers::store::sqlite::push_in_tx(t, &new, now, window)
            .await
            .with_context(|| format!("enqueueing {} job", J::NAME))?;
        if let Some(pool) = app.db.sqlite_pool().cloned() {
            tx.after_commit(J::NAME, move || {
                approvald_workers::store::sqlite::notify_pushed(&pool, J::NAME)
            });
        }
    } else {
        let id = uuid::Uuid::now_v7().to_string();
        crate::store::outbox::insert(tx, &id, &new, now)
            .await
            .with_context(|| format!("writing {} job to the outbox", J::NAME))?;
        tx.after_commit("outbox", relay::nudger(app));
    }
    Ok(())
}
