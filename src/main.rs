//! The `approvald` command line.
use std::{process::ExitCode, sync::Arc};

use anyhow::Context;
use approvald::{Config, Role, config::MailTransport};
use approvald_workers::SystemClock;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "approvald",
    version,
    about = "Permission-request approval workflows for multi-account platforms"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon until SIGTERM or Ctrl-C, then stop gracefully.
    Serve {
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// API keys.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Business calendars.
    Calendar {
        #[command(subcommand)]
        cmd: CalendarCmd,
    },
    /// Push a job by hand (operators): `approvald enqueue review --request ID`,
    /// or run the SLA sweep and reconciler once: `approvald enqueue sweep`.
    Enqueue {
        #[arg(value_parser = ["review", "sweep"])]
        job: String,
        #[arg(long)]
        request: Option<String>,
    },
    /// Dead-lettered jobs: list them, or re-drive one.
    Dead {
        /// Queue name (review, notify, sla).
        queue: String,
        /// Re-drive this job id instead of listing.
        #[arg(long)]
        redrive: Option<String>,
    },
    /// Print the effective configuration with secrets masked.
    CheckConfig,
    /// The audit logs' hash chains.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Spending limits.
    Limits {
        #[command(subcommand)]
        cmd: LimitsCmd,
    },
    /// Print the OpenAPI 3.1 description of the HTTP API (JSON) to stdout:
    /// the same document as `GET /openapi.json` and `docs/openapi.json`.
    Openapi,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check every chain (or one org's): prints `N/N entries valid` per org,
    /// or the first seq changed, removed, inserted or reordered; exits 1 if
    /// any chain is broken.
    Verify {
        /// Only this org (its id, or `platform`).
        #[arg(long)]
        org: Option<String>,
    },
    /// Write an org's chain as JSON Lines on stdout, for outside verifiers
    /// (scripts/verify-audit-export.py is one).
    Export {
        /// The org's id (or `platform`).
        #[arg(long)]
        org: String,
        /// Start at this seq (its `prev_hash` links it to the entry before).
        #[arg(long, default_value_t = 1)]
        from: i64,
    },
}

#[derive(Subcommand)]
enum LimitsCmd {
    /// Close by hand the daily or monthly period that had most recently
    /// ended at `--at` (default: now) in a zone: one summary row per member.
    /// Idempotent: a closed period is left as it is.
    Close {
        #[arg(long, value_parser = ["daily", "monthly"])]
        period: String,
        /// IANA zone, e.g. Asia/Shanghai.
        #[arg(long)]
        zone: String,
        /// RFC 3339 instant, e.g. 2026-04-01T00:10:00+08:00.
        #[arg(long)]
        at: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a key and print it alone on stdout (it is shown once).
    Create {
        #[arg(long, conflicts_with_all = ["org", "operator"], required_unless_present_any = ["org", "operator"])]
        platform: bool,
        #[arg(long, conflicts_with = "operator")]
        org: Option<String>,
        /// An operator key: signs in to the dashboard at /ops/login.
        #[arg(long)]
        operator: bool,
        /// With --operator: the key sees everything and changes nothing.
        #[arg(long, requires = "operator")]
        read_only: bool,
    },
}

#[derive(Subcommand)]
enum CalendarCmd {
    /// Print the due instant (RFC 3339) of N business days from an instant.
    Due {
        #[arg(long)]
        region: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        days: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Openapi) {
        // Needs no configuration: the description is compiled in.
        print!("{}", approvald::http::api::openapi::json());
        return ExitCode::SUCCESS;
    }
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("approvald: {e}");
            return ExitCode::from(2);
        }
    };
    approvald::telemetry::init_logging(&config.log);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("approvald: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let serving = matches!(cli.cmd, Cmd::Serve { .. });
    match rt.block_on(dispatch(cli.cmd, config)) {
        Ok(()) => ExitCode::SUCCESS,
        // Said once: in the log stream for the daemon, on stderr for a command.
        Err(e) if serving => {
            tracing::error!(error = %format!("{e:#}"), "approvald stopped: {e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("approvald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Cmd, config: Config) -> anyhow::Result<()> {
    match cmd {
        Cmd::Serve { role } => serve(config, role).await,
        Cmd::Migrate => {
            let db = approvald::db::Db::connect(&config).await?;
            db.migrate().await.context("applying migrations")?;
            eprintln!("migrations applied");
            Ok(())
        }
        Cmd::Keys {
            cmd:
                KeysCmd::Create {
                    platform,
                    org,
                    operator,
                    read_only,
                },
        } => {
            let app = approvald::build_app(config, Arc::new(SystemClock)).await?;
            let key = if operator {
                approvald::store::keys::create_operator(&app.db, read_only, app.now_ms()).await?
            } else if platform {
                approvald::store::keys::create(
                    &app.db,
                    approvald::store::keys::KeyScope::Platform,
                    None,
                    app.now_ms(),
                )
                .await?
            } else {
                let org = org.expect("clap requires --org without --platform");
                approvald::store::keys::create(
                    &app.db,
                    approvald::store::keys::KeyScope::Org,
                    Some(&org),
                    app.now_ms(),
                )
                .await?
            };
            println!("{key}");
            Ok(())
        }
        Cmd::Calendar {
            cmd: CalendarCmd::Due { region, from, days },
        } => {
            let cals = approvald::domain::calendar::Calendars::load(std::path::Path::new(
                &config.calendars.dir,
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let due =
                approvald::domain::calendar::due_rfc3339_for_region(&cals, &region, &from, days)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{due}");
            Ok(())
        }
        Cmd::Enqueue { job, request } => {
            let app = approvald::build_app(config, Arc::new(SystemClock)).await?;
            match job.as_str() {
                "review" => {
                    let id = request.context("--request ID is required for `enqueue review`")?;
                    approvald::jobs::review::requeue(&app, &id, None).await?;
                    eprintln!("review job pushed for {id}");
                }
                _ => {
                    let s = approvald::jobs::sla::sweep(&app).await?;
                    let cleanups = approvald::jobs::cleanup::requeue_lost(&app).await?;
                    eprintln!(
                        "sweep: {} reminded, {} breached, {} review jobs re-pushed, {cleanups} member cleanups re-pushed",
                        s.reminded, s.breached, s.requeued
                    );
                }
            }
            Ok(())
        }
        Cmd::Dead { queue, redrive } => {
            let app = approvald::build_app(config, Arc::new(SystemClock)).await?;
            match redrive {
                Some(id) => {
                    let ok = app.queue.redrive(&queue, &id).await?;
                    anyhow::ensure!(ok, "no dead job {id} in queue {queue}");
                    eprintln!("re-driven {id}");
                }
                None => {
                    for d in app.queue.list_dead(&queue, 100).await? {
                        println!(
                            "{}\t{}\tattempts={}\t{}",
                            d.id, d.died_at_ms, d.attempts, d.last_error
                        );
                    }
                }
            }
            Ok(())
        }
        Cmd::Audit { cmd } => {
            let db = approvald::audit_cmd::open(&config).await?;
            let now = chrono::Utc::now().timestamp_millis();
            match cmd {
                AuditCmd::Verify { org } => {
                    let reports = approvald::audit_cmd::verify(&db, org.as_deref(), now).await?;
                    for r in &reports {
                        println!("{}: {}", r.org_id, r.summary);
                    }
                    let broken = reports.iter().filter(|r| !r.ok).count();
                    anyhow::ensure!(broken == 0, "{broken} audit chain(s) broken");
                }
                AuditCmd::Export { org, from } => {
                    let mut out = std::io::BufWriter::new(std::io::stdout());
                    let n = approvald::audit_cmd::export(&db, &org, from, now, &mut out).await?;
                    eprintln!("exported {n} entries");
                }
            }
            Ok(())
        }
        Cmd::CheckConfig => {
            print!("{}", config.to_masked_toml());
            Ok(())
        }
        Cmd::Limits {
            cmd: LimitsCmd::Close { period, zone, at },
        } => limits_close(config, &period, &zone, at.as_deref()).await,
        Cmd::Openapi => {
            print!("{}", approvald::http::api::openapi::json());
            Ok(())
        }
    }
}

async fn limits_close(
    config: Config,
    period: &str,
    zone: &str,
    at: Option<&str>,
) -> anyhow::Result<()> {
    use approvald::jobs::limits::{Closed, Kind, Period, close};
    let tz = approvald::domain::spending::parse_zone("--zone", zone)?;
    let kind = Kind::parse(period).context("--period must be daily or monthly")?;
    let app = approvald::build_app(config, Arc::new(SystemClock)).await?;
    let at = match at {
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .with_context(|| {
                format!("--at {s:?} is not an RFC 3339 instant such as 2026-04-01T00:10:00+08:00")
            })?
            .with_timezone(&chrono::Utc),
        None => app.clock.now(),
    };
    let p = Period::last_ended(tz, kind, at);
    match close(&app, tz.name(), &p).await? {
        Closed::Now { members } => println!(
            "closed {} {} in {}: {members} member summaries",
            kind.as_str(),
            p.key,
            tz.name()
        ),
        Closed::Already => println!(
            "{} {} in {} was already closed; nothing changed",
            kind.as_str(),
            p.key,
            tz.name()
        ),
        Closed::Busy => anyhow::bail!(
            "{} {} in {} is being closed by a running worker; try again in a few minutes",
            kind.as_str(),
            p.key,
            tz.name()
        ),
        Closed::NotEnded => anyhow::bail!(
            "{} {} in {} has not ended yet",
            kind.as_str(),
            p.key,
            tz.name()
        ),
    }
    Ok(())
}

async fn serve(config: Config, role: Role) -> anyhow::Result<()> {
    let listener = if matches!(role, Role::All | Role::Api) {
        let addr = config.listen_addr();
        Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("key `server.listen`: cannot bind {addr}; is another process using it?")
        })?)
    } else {
        None
    };
    let outbox =
        (config.mail.transport == MailTransport::File).then(|| config.mail.outbox_dir.clone());
    let running = approvald::start(config, role, listener, Arc::new(SystemClock)).await?;
    if let Some(addr) = running.addr {
        tracing::info!(%addr, role = ?role, "approvald listening on http://{addr}");
    } else {
        tracing::info!(role = ?role, "approvald started");
    }
    if let Some(dir) = outbox {
        tracing::info!(outbox = %dir.display(), "mail is written as .eml files to {}", dir.display());
    }
    tracing::info!(
        "create the first API key with: approvald keys create --platform   (cargo run --release -- keys create --platform)"
    );
    let stop = running_stop(&running);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down gracefully");
        stop();
    });
    running.wait().await
}

fn running_stop(running: &approvald::Running) -> impl FnOnce() + Send + 'static {
    let token = running.stop_token();
    move || token.cancel()
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
