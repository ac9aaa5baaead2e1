//! approvald: permission-request approval workflows for multi-account platforms.
//!
//! [`start`] (and [`run`], which waits for it) is the one entry point: `main`
//! and every integration test call it.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use approvald_workers::{Clock, Queue, QueueConfig, Runtime, SystemClock};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

pub mod app;
pub mod audit;
pub mod audit_cmd;
pub mod config;
pub mod db;
pub mod domain;
pub mod flows;
pub mod http;
pub mod jobs;
pub mod mail;
pub mod ops;
pub mod store;
pub mod telemetry;
pub mod webhooks;

pub use app::App;
pub use config::Config;

/// Which parts of the daemon this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Role {
    /// Everything in one process (the embedded default).
    #[default]
    All,
    /// HTTP API, review pages, metrics; relays the outbox.
    Api,
    /// Runs jobs.
    Worker,
    /// Cron ticks, the SLA sweep and the reconciler.
    Scheduler,
}

impl Role {
    fn api(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }
    fn worker(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
    fn scheduler(self) -> bool {
        matches!(self, Role::All | Role::Scheduler)
    }
}

/// Open the database, run migrations, connect the queue: everything a
/// process needs before it serves or works.
pub async fn build_app(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<App> {
    // Install the recorder before anything counts, so no early sample is lost.
    telemetry::metrics_handle();
    let db = db::Db::connect(&config).await?;
    db.migrate().await.context("applying database migrations")?;
    let inline = match db.sqlite_pool() {
        Some(pool) => db::inline::InlineReaders::open(pool, db::inline::default_count()).await,
        None => None,
    };
    // Only where the queue lives in the same SQLite file: a submission's
    // review job is one of the rows its unit writes.
    let writer = match db.sqlite_pool() {
        Some(pool) if config.queue.url == "sqlite" => db::writer::Writer::open(pool).await,
        _ => None,
    };
    store::audit::chain_enabled();
    store::audit::finish_migration(&db)
        .await
        .context("hashing pre-chain audit rows into the chain")?;
    let qcfg = QueueConfig {
        prefix: config.queue.prefix.clone(),
        lease: config.lease(),
        dedupe_window: Duration::from_secs(config.queue.dedupe_window_hours * 3600),
        keep_finished: Duration::from_secs(config.queue.keep_finished_hours * 3600),
        keep_dead: Duration::from_secs(config.queue.keep_dead_days * 86400),
        idle_poll: Duration::from_millis(config.queue.idle_poll_ms),
        ..QueueConfig::default()
    };
    let queue_in_db = config.queue.url == "sqlite";
    let queue = if queue_in_db {
        let pool = db
            .sqlite_pool()
            .context("queue.url = sqlite needs a SQLite database.url")?;
        Queue::sqlite_with_clock(pool.clone(), qcfg, clock.clone()).await?
    } else {
        // Redis down at start must not stop a process: the API keeps
        // accepting requests into the outbox; workers wait and retry.
        Queue::redis_lazy_with_clock(&config.queue.url, qcfg, clock.clone())
            .await
            .with_context(|| {
                format!(
                    "connecting to the queue at {}",
                    config::mask_url(&config.queue.url)
                )
            })?
    };
    let catalog = if config.catalog.path.is_empty() {
        domain::catalog::Catalog::shipped()
    } else {
        let text = std::fs::read_to_string(&config.catalog.path)
            .with_context(|| format!("key `catalog.path`: cannot read {}", config.catalog.path))?;
        domain::catalog::Catalog::parse(&text).map_err(|e| {
            anyhow::anyhow!(
                "key `catalog.path`: {} is invalid: {e}",
                config.catalog.path
            )
        })?
    };
    let calendars = domain::calendar::Calendars::load(std::path::Path::new(&config.calendars.dir))
        .map_err(|e| anyhow::anyhow!("key `calendars.dir`: {e}"))?;
    let today = clock.now().date_naive();
    for gap in calendars.coverage_gaps(today, 60) {
        tracing::warn!(region = %gap.region, first_uncovered = %gap.first_uncovered,
            "calendar {} has no holiday data from {} on (within 60 days): only weekends count as days off there; add the official schedule to config/calendars/{}.toml",
            gap.region, gap.first_uncovered, gap.region);
    }
    let mailer = mail::Mailer::from_config(&config.mail).context("setting up mail")?;
    let warm = db::Warm::new(match db {
        db::Db::Postgres(_) => config.database.max_connections as usize / 2,
        db::Db::Sqlite(_) => 0,
    });
    Ok(App(Arc::new(app::AppInner {
        config,
        db,
        warm,
        queue,
        queue_in_db,
        mailer,
        catalog,
        calendars,
        clock,
        authz: Default::default(),
        inline,
        writer,
        spend_hints: Default::default(),
        submit_lost: Default::default(),
        outbox_written: Default::default(),
    })))
}

/// A started daemon.
pub struct Running {
    pub app: App,
    /// The bound HTTP address, when this role serves HTTP.
    pub addr: Option<SocketAddr>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Ask every part to stop gracefully.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// A handle that stops every part when cancelled.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Wait until every part has stopped; the first failure wins.
    pub async fn wait(self) -> anyhow::Result<()> {
        let mut result = Ok(());
        let stop = self.stop.clone();
        let mut tasks = self.tasks;
        while !tasks.is_empty() {
            let (res, _, rest) = futures::future::select_all(tasks).await;
            tasks = rest;
            let res = res.context("task panicked").and_then(|r| r);
            if let Err(e) = res {
                // One part failed for good: stop the others and report it.
                stop.cancel();
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }
}

/// Start the daemon's parts for `role`. `listener` is required for roles that
/// serve HTTP; tests pass one bound to port 0.
pub async fn start(
    config: Config,
    role: Role,
    listener: Option<TcpListener>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Running> {
    let app = build_app(config, clock).await?;
    let stop = CancellationToken::new();
    let mut tasks: Vec<JoinHandle<anyhow::Result<()>>> = Vec::new();
    let mut addr = None;

    if role.api() {
        let listener = listener.context("the api role needs a listener")?;
        addr = Some(listener.local_addr()?);
        let router = http::router(app.clone());
        let limits = http::serve::Limits {
            header_read_timeout: Duration::from_secs(app.config.server.header_read_timeout_secs),
            shutdown_grace: Duration::from_secs(app.config.server.shutdown_grace_secs),
        };
        let s = stop.clone();
        tasks.push(tokio::spawn(async move {
            http::serve::serve(listener, router, limits, s)
                .await
                .context("HTTP server failed")
        }));
        let (a, s) = (app.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = tick.tick() => a.warm.return_idle(),
                    _ = s.cancelled() => break,
                }
            }
            a.warm.return_all();
            Ok(())
        }));
    }

    // Every role writes outbox rows (a submit, a review job's mails and
    // timers, a cron tick's jobs), and each process's relay is woken by its
    // own commits: a relay only in the api process left a worker's rows
    // waiting for the api's next commit or its one-second poll.
    if !app.queue_in_db {
        let (a, s) = (app.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            jobs::relay::run(a, s).await;
            Ok(())
        }));
    }

    if role.worker() || role.scheduler() {
        let mut rt = Runtime::new(app.queue.clone()).shutdown_timeout(Duration::from_secs(
            app.config.workers.shutdown_timeout_secs,
        ));
        if role.worker() {
            rt = jobs::register(rt, &app);
        }
        if role.scheduler() {
            rt = jobs::schedule(rt, &app);
        }
        let s = stop.clone();
        tasks.push(tokio::spawn(async move {
            rt.run(async move { s.cancelled().await }).await
        }));
    }

    Ok(Running {
        app,
        addr,
        stop,
        tasks,
    })
}

/// Start, then run until `shutdown` resolves, then stop gracefully.
pub async fn run(
    config: Config,
    role: Role,
    listener: Option<TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let running = start(config, role, listener, Arc::new(SystemClock)).await?;
    let stop = running.stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop.cancel();
    });
    running.wait().await
}
