//! One place that sets up logging and the metrics recorder.
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogConfig, LogFormat};

/// Install the tracing subscriber (once per process; later calls are no-ops).
pub fn init_logging(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    // Logs go to stderr: stdout carries command output alone (keys, due times).
    let _ = match cfg.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_target(false).with_writer(std::io::stderr))
            .try_init(),
    };
}

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> &'static PrometheusHandle {
    METRICS.get_or_init(|| {
        let secs = [
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let decision = [
            60.0,
            600.0,
            3600.0,
            4.0 * 3600.0,
            8.0 * 3600.0,
            86400.0,
            2.0 * 86400.0,
            3.0 * 86400.0,
            7.0 * 86400.0,
        ];
        PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("approvald_decision_seconds".into()),
                &decision,
            )
            .and_then(|b| {
                // A count of submissions per commit, not seconds.
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        "approvald_sqlite_group_commit_units".into(),
                    ),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
                )
            })
            .and_then(|b| b.set_buckets(&secs))
            .expect("valid buckets")
            .install_recorder()
            .expect("metrics recorder installs once")
    })
}
