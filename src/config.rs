//! Layered configuration: embedded defaults, then the file named by
//! `APPROVALD_CONFIG` (default `config/default.toml` when present), then
//! `APPROVALD__SECTION__KEY` environment variables. Validated at start; every
//! error names the key and the fix.
use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

/// A string that never prints.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "***" })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub queue: QueueSection,
    pub mail: MailConfig,
    pub orgs: OrgsConfig,
    pub review: ReviewConfig,
    pub sla: SlaConfig,
    pub catalog: CatalogConfig,
    pub calendars: CalendarsConfig,
    pub workers: WorkersConfig,
    pub log: LogConfig,
    pub webhooks: WebhooksConfig,
    pub ops: OpsConfig,
    pub payments: PaymentsConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// When set, `GET /metrics` needs `Authorization: Bearer <this>`.
    pub metrics_token: Secret,
    /// Serve the operator dashboard `/ops` (otherwise it answers 404).
    pub enabled: bool,
    /// How long an operator's sign-in lasts, hours.
    pub session_hours: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port (the bound address is logged).
    pub listen: String,
    /// Base of every link in emails.
    pub public_url: String,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// A client must send a request's whole header within this many seconds
    /// (also how long an idle keep-alive connection stays open).
    pub header_read_timeout_secs: u64,
    /// On shutdown, requests in flight get this many seconds to finish;
    /// connections still open then are closed and the process exits.
    pub shutdown_grace_secs: u64,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://data/approvald.db?mode=rwc` or `postgres://user@host/db`.
    pub url: String,
    pub max_connections: u32,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &mask_url(&self.url))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSection {
    /// `sqlite` (the same database as `database.url`) or `redis://host:port/db`.
    pub url: String,
    /// Redis key prefix.
    pub prefix: String,
    /// Visibility timeout of a running job, seconds.
    pub lease_secs: u64,
    /// Fallback poll when no wake-up arrives, milliseconds.
    pub idle_poll_ms: u64,
    /// How long a push dedupe key holds, hours.
    pub dedupe_window_hours: u64,
    /// Finished jobs are kept this long, hours.
    pub keep_finished_hours: u64,
    /// Dead jobs are kept this long, days.
    pub keep_dead_days: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MailTransport {
    File,
    Smtp,
    /// In-process capture; unit tests only.
    Memory,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailConfig {
    pub transport: MailTransport,
    /// One `.eml` file per message (file transport).
    pub outbox_dir: PathBuf,
    pub from: String,
    pub smtp: SmtpConfig,
    /// First retry delay of a mail that failed transiently (SMTP 4xx,
    /// timeout, refused connection), milliseconds; it doubles per attempt.
    pub retry_base_ms: u64,
    /// Largest delay between two attempts of one mail, seconds.
    pub retry_cap_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: String,
    pub password: Secret,
    pub timeout_secs: u64,
    /// Largest number of pooled connections.
    pub pool_size: u32,
    /// PEM file of CA certificates to trust for the SMTP server's TLS
    /// certificate, besides the public roots (a private or internal CA).
    pub ca_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgsConfig {
    /// Most member accounts one org may have (the owner included).
    pub max_members: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewConfig {
    /// Review link lifetime, hours.
    pub token_ttl_hours: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlaConfig {
    /// Reminder at this fraction of the review window (0 < f < 1).
    pub reminder_fraction: f64,
    /// Cron expression (with seconds, UTC) of the sweep that handles overdue
    /// work whose timer was lost and re-pushes stuck review jobs.
    pub sweep_cron: String,
    /// The reconciler (run by the sweep) presumes a job lost, and pushes it
    /// again, once a request has been `submitted` (its review job) or a mail
    /// `pending` (its notify job) this long, seconds.
    pub reconcile_after_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// Permission catalog file; the shipped catalog is embedded and used when empty.
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarsConfig {
    /// Folder of `<region>.toml` calendars; overrides the embedded ones.
    pub dir: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    /// In-flight jobs get this long to finish on shutdown, seconds.
    pub shutdown_timeout_secs: u64,
    /// Jobs of one queue that one worker process runs at once, by queue
    /// name (`review`, `notify`, `sla`, `webhook`, `cleanup`); a queue not
    /// named keeps its default (review and notify 32 on PostgreSQL, 8 on
    /// SQLite; the others 8). `limits` and `sweep` always run one at a time.
    #[serde(default)]
    pub concurrency: std::collections::BTreeMap<String, usize>,
}

/// The queues whose concurrency `workers.concurrency` may set.
pub const TUNABLE_QUEUES: [&str; 5] = ["review", "notify", "sla", "webhook", "cleanup"];
/// The largest `workers.concurrency` value.
pub const MAX_CONCURRENCY: usize = 512;

/// Webhook delivery (DESIGN "Webhooks"; see `src/webhooks/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// One delivery attempt may take this long (connect, send, answer), seconds.
    pub timeout_secs: u64,
    /// Delays before the 2nd, 3rd, ... attempt of a delivery, seconds; after
    /// the last one fails the delivery is `failed`.
    pub retry_schedule_secs: Vec<u64>,
    /// An endpoint whose deliveries have only failed for this many days is
    /// disabled (checked when a delivery fails for good); 0 = at the first
    /// delivery that fails for good.
    pub disable_after_days: u64,
    /// Accept `http://` endpoint URLs (tests, closed networks); https otherwise.
    pub allow_http: bool,
    /// Accept endpoints on loopback, private, link-local and metadata
    /// addresses (tests on loopback); refused otherwise, also at delivery time.
    pub allow_private: bool,
    /// After a secret rotation the old secret keeps signing this long, hours.
    pub rotation_overlap_hours: u64,
    /// How much of a response body the delivery log keeps, bytes.
    pub response_excerpt_bytes: usize,
    /// 32 bytes, base64: seals endpoint signing secrets at rest (AES-256-GCM).
    /// Empty: secrets are stored unsealed (a warning is logged at start).
    pub secret_key: Secret,
}

/// Spending limits (DESIGN "Spending limits").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsConfig {
    /// ISO 4217 currency of orgs created without one.
    pub currency: String,
    /// An unsettled hold expires after this many hours.
    pub hold_hours: u64,
    /// Spend counters of periods older than this many months are pruned.
    pub retention_months: u32,
    /// Cron expression (with seconds, UTC) of the `limits` job, which closes
    /// every day and month that has ended in each zone in use.
    pub limits_cron: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing` filter directive, e.g. `info,approvald=debug`. `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig {
                listen: "127.0.0.1:8080".into(),
                public_url: "http://127.0.0.1:8080".into(),
                body_limit: 64 * 1024,
                header_read_timeout_secs: 30,
                shutdown_grace_secs: 10,
            },
            database: DatabaseConfig {
                url: "sqlite://data/approvald.db?mode=rwc".into(),
                max_connections: 8,
            },
            queue: QueueSection {
                url: "sqlite".into(),
                prefix: "approvald".into(),
                lease_secs: 30,
                idle_poll_ms: 2000,
                dedupe_window_hours: 24,
                keep_finished_hours: 24,
                keep_dead_days: 30,
            },
            mail: MailConfig {
                transport: MailTransport::File,
                outbox_dir: "data/outbox".into(),
                from: "approvald <noreply@approvald.invalid>".into(),
                smtp: SmtpConfig {
                    host: String::new(),
                    port: 587,
                    tls: SmtpTls::Starttls,
                    username: String::new(),
                    password: Secret::default(),
                    timeout_secs: 10,
                    pool_size: 4,
                    ca_file: String::new(),
                },
                retry_base_ms: 5_000,
                retry_cap_secs: 30 * 60,
            },
            orgs: OrgsConfig { max_members: 20 },
            review: ReviewConfig {
                token_ttl_hours: 7 * 24,
            },
            sla: SlaConfig {
                reminder_fraction: 0.5,
                sweep_cron: "0 * * * * *".into(),
                reconcile_after_secs: 120,
            },
            catalog: CatalogConfig {
                path: String::new(),
            },
            calendars: CalendarsConfig {
                dir: "config/calendars".into(),
            },
            workers: WorkersConfig {
                shutdown_timeout_secs: 20,
                concurrency: Default::default(),
            },
            log: LogConfig {
                format: LogFormat::Text,
                filter: "info".into(),
            },
            webhooks: WebhooksConfig {
                timeout_secs: 10,
                retry_schedule_secs: vec![5, 300, 1800, 7200, 18000, 36000, 36000],
                disable_after_days: 5,
                allow_http: false,
                allow_private: false,
                rotation_overlap_hours: 24,
                response_excerpt_bytes: 1024,
                secret_key: Secret::default(),
            },
            ops: OpsConfig {
                metrics_token: Secret::default(),
                enabled: true,
                session_hours: 12,
            },
            payments: PaymentsConfig {
                currency: "CNY".into(),
                hold_hours: 168,
                retention_months: 13,
                limits_cron: "30 * * * * *".into(),
            },
        }
    }
}

/// A configuration problem, naming the key and the fix.
#[derive(Debug, thiserror::Error)]
#[error("config: {0}")]
pub struct ConfigError(pub String);

/// Which database engine `database.url` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

impl Config {
    /// Load defaults, then the config file, then `APPROVALD__*` env vars, and validate.
    pub fn load() -> Result<Self, ConfigError> {
        let file = std::env::var("APPROVALD_CONFIG").ok();
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match &file {
            Some(path) => {
                if !std::path::Path::new(path).exists() {
                    return Err(ConfigError(format!(
                        "APPROVALD_CONFIG names {path:?}, which does not exist; point it at a TOML file or unset it"
                    )));
                }
                fig = fig.merge(Toml::file(path));
            }
            None => {
                if std::path::Path::new("config/default.toml").exists() {
                    fig = fig.merge(Toml::file("config/default.toml"));
                }
            }
        }
        fig = fig.merge(Env::prefixed("APPROVALD__").split("__"));
        Self::from_figment(fig)
    }

    /// Defaults plus the given TOML text (tests).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text)),
        )
    }

    fn from_figment(fig: Figment) -> Result<Self, ConfigError> {
        let cfg: Config = fig.extract().map_err(|e| {
            let mut msgs = Vec::new();
            for err in e {
                let key = err.path.join(".");
                msgs.push(if key.is_empty() {
                    format!("{err}")
                } else {
                    format!(
                        "key `{key}`: {} (fix it in the config file or in APPROVALD__{})",
                        err.kind,
                        err.path.join("__").to_uppercase()
                    )
                });
            }
            ConfigError(msgs.join("; "))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError(format!("key `{key}`: {why}")));
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return bad(
                "server.listen",
                format!(
                    "{:?} is not a socket address; use host:port such as 127.0.0.1:8080 (port 0 picks a free port)",
                    self.server.listen
                ),
            );
        }
        let pu = self.server.public_url.trim_end_matches('/');
        if !(pu.starts_with("http://") || pu.starts_with("https://")) || pu.len() < 10 {
            return bad(
                "server.public_url",
                format!(
                    "{:?} must be an absolute http(s) URL, the base of links in emails, e.g. https://approvals.example.com",
                    self.server.public_url
                ),
            );
        }
        if self.server.body_limit < 1024 {
            return bad("server.body_limit", "must be at least 1024 bytes".into());
        }
        if !(1..=600).contains(&self.server.header_read_timeout_secs) {
            return bad(
                "server.header_read_timeout_secs",
                format!(
                    "{} is out of range; use 1-600 seconds (default 30)",
                    self.server.header_read_timeout_secs
                ),
            );
        }
        if self.server.shutdown_grace_secs > 600 {
            return bad(
                "server.shutdown_grace_secs",
                format!(
                    "{} is out of range; use 0-600 seconds (default 10; 0 closes connections at once)",
                    self.server.shutdown_grace_secs
                ),
            );
        }
        self.db_kind()?;
        if self.database.max_connections == 0 {
            return bad("database.max_connections", "must be at least 1".into());
        }
        let q = self.queue.url.as_str();
        if q != "sqlite" && !q.starts_with("redis://") && !q.starts_with("rediss://") {
            return bad(
                "queue.url",
                format!("{q:?}: use `sqlite` (same database) or redis://host:port/db"),
            );
        }
        if q == "sqlite" && self.db_kind()? != DbKind::Sqlite {
            return bad(
                "queue.url",
                "`sqlite` queue needs a sqlite database.url; with PostgreSQL set queue.url = redis://...".into(),
            );
        }
        if self.queue.prefix.is_empty() || self.queue.prefix.contains(char::is_whitespace) {
            return bad(
                "queue.prefix",
                "must be a non-empty word without spaces".into(),
            );
        }
        if self.queue.lease_secs < 1 {
            return bad("queue.lease_secs", "must be at least 1 second".into());
        }
        if self.mail.transport == MailTransport::Smtp && self.mail.smtp.host.is_empty() {
            return bad(
                "mail.smtp.host",
                "is empty but mail.transport = smtp; set the SMTP host or use mail.transport = file".into(),
            );
        }
        if !self.mail.from.contains('@') {
            return bad(
                "mail.from",
                format!(
                    "{:?} is not a mail address like `approvald <noreply@example.com>`",
                    self.mail.from
                ),
            );
        }
        if self.mail.retry_base_ms == 0 || self.mail.retry_cap_secs == 0 {
            return bad(
                "mail.retry_base_ms",
                "mail.retry_base_ms and mail.retry_cap_secs must be at least 1 (defaults: 5000 ms, 1800 s)".into(),
            );
        }
        if !self.mail.smtp.ca_file.is_empty() && self.mail.smtp.tls == SmtpTls::None {
            return bad(
                "mail.smtp.ca_file",
                "is set but mail.smtp.tls = none; use starttls or tls, or leave ca_file empty"
                    .into(),
            );
        }
        if self.mail.smtp.timeout_secs == 0 {
            return bad("mail.smtp.timeout_secs", "must be at least 1".into());
        }
        if !(1..=200).contains(&self.orgs.max_members) {
            return bad("orgs.max_members", "must be between 1 and 200".into());
        }
        if self.ops.session_hours == 0 || self.ops.session_hours > 24 * 30 {
            return bad(
                "ops.session_hours",
                "must be between 1 and 720 (30 days)".into(),
            );
        }
        if self.review.token_ttl_hours == 0 {
            return bad("review.token_ttl_hours", "must be at least 1".into());
        }
        if !(self.sla.reminder_fraction > 0.0 && self.sla.reminder_fraction < 1.0) {
            return bad(
                "sla.reminder_fraction",
                "must be strictly between 0 and 1, e.g. 0.5".into(),
            );
        }
        if self.sla.reconcile_after_secs == 0 {
            return bad(
                "sla.reconcile_after_secs",
                "must be at least 1 second (default 120)".into(),
            );
        }
        let mt = self.ops.metrics_token.expose();
        if !mt.is_empty() && (mt.len() < 16 || !mt.bytes().all(|b| b.is_ascii_graphic())) {
            return bad(
                "ops.metrics_token",
                "must be at least 16 visible ASCII characters (or empty: /metrics open); e.g. the output of `openssl rand -hex 32`".into(),
            );
        }
        for (queue, n) in &self.workers.concurrency {
            let key = format!("workers.concurrency.{queue}");
            if !TUNABLE_QUEUES.contains(&queue.as_str()) {
                return bad(
                    &key,
                    format!(
                        "no such queue whose concurrency can be set; use one of {} (limits and sweep always run one at a time)",
                        TUNABLE_QUEUES.join(", ")
                    ),
                );
            }
            if !(1..=MAX_CONCURRENCY).contains(n) {
                return bad(
                    &key,
                    format!(
                        "{n} is out of range; use 1 to {MAX_CONCURRENCY} jobs at once per process"
                    ),
                );
            }
        }
        self.validate_webhooks()?;
        if let Err(e) = <cron::Schedule as std::str::FromStr>::from_str(&self.sla.sweep_cron) {
            return bad(
                "sla.sweep_cron",
                format!(
                    "{:?} is not a cron expression ({e}); use 6 fields with seconds, e.g. \"0 * * * * *\"",
                    self.sla.sweep_cron
                ),
            );
        }
        self.validate_payments()?;
        Ok(())
    }

    fn validate_payments(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: String| Err(ConfigError(format!("key `{key}`: {why}")));
        let p = &self.payments;
        if let Err(e) = crate::domain::spending::Currency::parse("payments.currency", &p.currency) {
            return bad("payments.currency", e.why);
        }
        if !(1..=24 * 366).contains(&p.hold_hours) {
            return bad(
                "payments.hold_hours",
                format!("{} must be 1..=8784 hours (default 168)", p.hold_hours),
            );
        }
        if !(2..=240).contains(&p.retention_months) {
            return bad(
                "payments.retention_months",
                format!("{} must be 2..=240 months (default 13)", p.retention_months),
            );
        }
        if let Err(e) = <cron::Schedule as std::str::FromStr>::from_str(&p.limits_cron) {
            return bad(
                "payments.limits_cron",
                format!(
                    "{:?} is not a cron expression ({e}); use 6 fields with seconds, e.g. \"30 * * * * *\"",
                    p.limits_cron
                ),
            );
        }
        Ok(())
    }

    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("key `webhooks.{key}`: {why}")));
        let w = &self.webhooks;
        if !(1..=60).contains(&w.timeout_secs) {
            return bad(
                "timeout_secs",
                "must be between 1 and 60 seconds (default 10)",
            );
        }
        if w.retry_schedule_secs.len() > 20 {
            return bad(
                "retry_schedule_secs",
                "at most 20 retries, e.g. [5, 300, 1800, 7200, 18000, 36000, 36000]",
            );
        }
        if w.retry_schedule_secs
            .iter()
            .any(|&d| d == 0 || d > 7 * 86400)
        {
            return bad(
                "retry_schedule_secs",
                "each delay must be between 1 second and 7 days",
            );
        }
        if w.disable_after_days > 365 {
            return bad("disable_after_days", "must be at most 365 (default 5)");
        }
        if w.rotation_overlap_hours > 24 * 30 {
            return bad("rotation_overlap_hours", "must be at most 720 (30 days)");
        }
        if !(64..=65536).contains(&w.response_excerpt_bytes) {
            return bad("response_excerpt_bytes", "must be between 64 and 65536");
        }
        if let Err(e) = crate::webhooks::secret::Sealer::from_config(w) {
            return bad("secret_key", &e.to_string());
        }
        Ok(())
    }

    pub fn db_kind(&self) -> Result<DbKind, ConfigError> {
        let u = self.database.url.as_str();
        if u.starts_with("sqlite:") {
            Ok(DbKind::Sqlite)
        } else if u.starts_with("postgres://") || u.starts_with("postgresql://") {
            Ok(DbKind::Postgres)
        } else {
            Err(ConfigError(format!(
                "key `database.url`: {:?} is neither sqlite:// nor postgres://; e.g. sqlite://data/approvald.db?mode=rwc",
                mask_url(u)
            )))
        }
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen.parse().expect("validated")
    }

    pub fn public_url(&self) -> &str {
        self.server.public_url.trim_end_matches('/')
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.queue.lease_secs)
    }

    /// The effective config as TOML with secrets masked (`check-config`).
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        masked.database.url = mask_url(&self.database.url);
        masked.queue.url = mask_url(&self.queue.url);
        toml::to_string_pretty(&masked).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// Hide a password in `scheme://user:pass@host/...`.
pub fn mask_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((cred, host)) = rest.split_once('@')
        && let Some((user, _)) = cred.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml("[server]\nlisten = \"nope\"").unwrap_err();
        assert!(e.0.contains("server.listen"), "{e}");
        let e = Config::from_toml("[server]\nlistn = \"x\"").unwrap_err();
        assert!(e.0.contains("listn"), "{e}");
        let e = Config::from_toml("[server]\nshutdown_grace_secs = 601").unwrap_err();
        assert!(e.0.contains("server.shutdown_grace_secs"), "{e}");
        let e = Config::from_toml("[server]\nheader_read_timeout_secs = 0").unwrap_err();
        assert!(e.0.contains("server.header_read_timeout_secs"), "{e}");
        let e = Config::from_toml("[sla]\nreconcile_after_secs = 0").unwrap_err();
        assert!(e.0.contains("sla.reconcile_after_secs"), "{e}");
        let e = Config::from_toml("[mail]\ntransport = \"smtp\"").unwrap_err();
        assert!(e.0.contains("mail.smtp.host"), "{e}");
        let e = Config::from_toml("[database]\nurl = \"postgres://a@b/c\"").unwrap_err();
        assert!(e.0.contains("queue.url"), "{e}");
        for bad in [
            "[payments]\ncurrency = \"XXX\"",
            "[payments]\nhold_hours = 0",
            "[payments]\nretention_months = 1",
            "[payments]\nlimits_cron = \"often\"",
        ] {
            let e = Config::from_toml(bad).unwrap_err();
            assert!(e.0.contains("payments."), "{bad}: {e}");
        }
    }

    #[test]
    fn worker_concurrency_names_a_queue_and_stays_in_range() {
        let c = Config::from_toml("[workers]\nconcurrency = { review = 64, webhook = 2 }").unwrap();
        assert_eq!(c.workers.concurrency.get("review"), Some(&64));
        let e = Config::from_toml("[workers.concurrency]\nlimits = 4").unwrap_err();
        assert!(e.0.contains("workers.concurrency.limits"), "{e}");
        assert!(e.0.contains("one at a time"), "{e}");
        let e = Config::from_toml("[workers.concurrency]\nreveiw = 4").unwrap_err();
        assert!(
            e.0.contains("workers.concurrency.reveiw") && e.0.contains("review, notify"),
            "{e}"
        );
        for n in [0, MAX_CONCURRENCY + 1] {
            let e = Config::from_toml(&format!("[workers.concurrency]\nnotify = {n}")).unwrap_err();
            assert!(
                e.0.contains("workers.concurrency.notify") && e.0.contains("1 to 512"),
                "{e}"
            );
        }
    }

    #[test]
    fn secrets_are_masked() {
        let c = Config::from_toml(
            "[database]\nurl = \"postgres://u:hunter2@h/db\"\n[queue]\nurl = \"redis://:pw@h:6379/0\"\n[mail.smtp]\npassword = \"hunter2\"\n[ops]\nmetrics_token = \"hunter2hunter2hunter2\"",
        )
        .unwrap();
        let out = c.to_masked_toml();
        assert!(!out.contains("hunter2"), "{out}");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
