//! Mail: one [`Mailer`] over three transports (SMTP, `.eml` files, memory),
//! templates per email and locale embedded in the binary, and
//! [`queue_email`], the only way the rest of the daemon sends mail.
//!
//! A mail is a row in `emails` first: one logical mail per (request,
//! recipient, template), held by `emails.dedupe_key`, written in the caller's
//! transaction together with its `notify` job. The job renders and sends it
//! (see [`crate::jobs::notify`]), so a redelivered job sends nothing new and
//! every copy of a mail carries the same Message-ID.
use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use approvald_workers::PushOptions;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::Mailbox,
    transport::smtp::{
        PoolConfig,
        authentication::Credentials,
        client::{Tls, TlsParameters},
    },
};
use serde::{Deserialize, Serialize};

use crate::{
    app::App,
    config::{MailConfig, MailTransport, SmtpConfig, SmtpTls},
    db::Tx,
    domain::ids::{Locale, mask_email},
    jobs::notify::NotifyJob,
    on_tx,
};

pub mod render;

pub use render::{MailContext, Rendered, render};

/// Every email approvald sends. The name is stored in `emails.template`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    /// To a reviewer: a request waits for you (with the review link).
    ReviewRequested,
    /// To a reviewer: the deadline is near (with a fresh review link).
    Reminder,
    /// To escalation contacts: the deadline has passed.
    SlaEscalation,
    /// To the requester: approved.
    Approved,
    /// To the requester: rejected, with the reviewer's reason.
    Rejected,
    /// To a reviewer: the request was withdrawn, nothing to do.
    Cancelled,
    /// To an org's admins: a member was disabled.
    MemberDisabled,
    /// To an org's admins: approvald disabled one of its webhook endpoints.
    WebhookDisabled,
    /// To a member and the org's admins: 80 % or 100 % of a spending limit used.
    SpendThreshold,
}

impl Template {
    pub const ALL: [Template; 9] = [
        Self::ReviewRequested,
        Self::Reminder,
        Self::SlaEscalation,
        Self::Approved,
        Self::Rejected,
        Self::Cancelled,
        Self::MemberDisabled,
        Self::WebhookDisabled,
        Self::SpendThreshold,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReviewRequested => "review_requested",
            Self::Reminder => "reminder",
            Self::SlaEscalation => "sla_escalation",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
            Self::MemberDisabled => "member_disabled",
            Self::WebhookDisabled => "webhook_disabled",
            Self::SpendThreshold => "spend_threshold",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Mails that carry a review link (a fresh token is made at send time).
    pub fn has_review_link(self) -> bool {
        matches!(self, Self::ReviewRequested | Self::Reminder)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which table a reviewer lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewerKind {
    /// A platform reviewer (`reviewers`).
    Platform,
    /// An org admin reviewing an org-internal request (`members`).
    Member,
}

impl ReviewerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Platform => "platform",
            Self::Member => "member",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "platform" => Some(Self::Platform),
            "member" => Some(Self::Member),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewerRef {
    pub kind: ReviewerKind,
    pub id: String,
}

#[derive(Debug, Clone)]
pub struct Recipient {
    pub email: String,
    pub name: String,
    pub locale: Locale,
    /// Set when the recipient reviews the request: review-link mails need it.
    pub reviewer: Option<ReviewerRef>,
}

/// One logical mail. `params` is a JSON object whose string fields fill or
/// override the template variables (see [`MailContext`]); mails without a
/// request must name what they are about in `params.dedupe` (or
/// `params.member_id`), which scopes their dedupe key.
#[derive(Debug, Clone)]
pub struct EmailSpec {
    pub template: Template,
    pub request_id: Option<String>,
    pub to: Recipient,
    pub params: serde_json::Value,
}

impl EmailSpec {
    /// One logical mail per (request or subject, recipient, template).
    pub fn dedupe_key(&self) -> anyhow::Result<String> {
        let subject = match &self.request_id {
            Some(r) => format!("request:{r}"),
            None => {
                let p = |k: &str| {
                    self.params
                        .get(k)
                        .and_then(|v| v.as_str())
                        .map(str::to_string)
                };
                match (p("dedupe"), p("member_id")) {
                    (Some(d), _) => format!("key:{d}"),
                    (None, Some(m)) => format!("member:{m}"),
                    (None, None) => anyhow::bail!(
                        "a {} mail without a request needs params.dedupe or params.member_id",
                        self.template
                    ),
                }
            }
        };
        Ok(format!(
            "{}|{}|{subject}",
            self.template,
            self.to.email.to_lowercase()
        ))
    }
}

/// The `emails` row of a new logical mail (both write paths bind it).
const INSERT_EMAIL: &str = "INSERT INTO emails (id, dedupe_key, message_id, request_id, template, recipient, recipient_name, locale, \
                         reviewer_kind, reviewer_id, params, status, attempts, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending', 0, $12) \
     ON CONFLICT (dedupe_key) DO NOTHING";

/// An `emails` row about to be written: its id, dedupe key and Message-ID
/// fixed, its params encoded.
struct NewEmail {
    id: String,
    dedupe: String,
    message_id: String,
    params: String,
    spec: EmailSpec,
}

impl NewEmail {
    fn new(app: &App, spec: EmailSpec) -> anyhow::Result<Self> {
        let dedupe = spec.dedupe_key()?;
        if !spec.params.is_object() && !spec.params.is_null() {
            anyhow::bail!("mail params must be a JSON object, got {}", spec.params);
        }
        let id = uuid::Uuid::now_v7().to_string();
        let message_id = app.mailer.message_id(&id);
        let params = if spec.params.is_null() {
            "{}".to_string()
        } else {
            spec.params.to_string()
        };
        Ok(Self {
            id,
            dedupe,
            message_id,
            params,
            spec,
        })
    }

    fn reviewer(&self) -> (Option<&str>, Option<&str>) {
        match &self.spec.to.reviewer {
            Some(r) => (Some(r.kind.as_str()), Some(r.id.as_str())),
            None => (None, None),
        }
    }

    fn job(&self) -> (NotifyJob, PushOptions) {
        (
            NotifyJob {
                email_id: self.id.clone(),
            },
            PushOptions::default().dedupe(format!("notify:{}", self.id)),
        )
    }

    fn log(&self, inserted: bool) {
        let to = mask_email(&self.spec.to.email);
        if inserted {
            tracing::debug!(email_id = %self.id, template = %self.spec.template, to = %to, "mail queued");
        } else {
            tracing::debug!(template = %self.spec.template, to = %to, "mail already queued; not queued again");
        }
    }
}

/// Write one logical mail and its `notify` job in `tx`. Returns whether it
/// is new (false: this mail was already queued, nothing was written). Its
/// notify job wakes the workers when `tx` commits.
pub async fn queue_email(app: &App, tx: &mut Tx, spec: EmailSpec) -> anyhow::Result<bool> {
    let e = NewEmail::new(app, spec)?;
    let now = app.now_ms();
    let (rk, rid) = e.reviewer();
    let inserted = on_tx!(tx, |c| sqlx::query(INSERT_EMAIL)
        .bind(&e.id)
        .bind(&e.dedupe)
        .bind(&e.message_id)
        .bind(&e.spec.request_id)
        .bind(e.spec.template.as_str())
        .bind(&e.spec.to.email)
        .bind(&e.spec.to.name)
        .bind(e.spec.to.locale.as_str())
        .bind(rk)
        .bind(rid)
        .bind(&e.params)
        .bind(now)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))
    .context("writing email row")?
        == 1;
    e.log(inserted);
    if inserted {
        let (job, opts) = e.job();
        crate::jobs::enqueue(app, tx, &job, opts).await?;
    }
    Ok(inserted)
}

/// [`queue_email`] on the SQLite writer's connection (`db::writer`), at
/// `now`. The caller wakes the notify workers after the commit.
pub fn queue_email_sync(
    app: &App,
    c: &rusqlite::Connection,
    spec: EmailSpec,
    now: i64,
) -> anyhow::Result<bool> {
    let e = NewEmail::new(app, spec)?;
    let (rk, rid) = e.reviewer();
    let inserted = crate::db::writer::execute(
        c,
        INSERT_EMAIL,
        &[
            &e.id,
            &e.dedupe,
            &e.message_id,
            &e.spec.request_id,
            &e.spec.template.as_str(),
            &e.spec.to.email,
            &e.spec.to.name,
            &e.spec.to.locale.as_str(),
            &rk,
            &rid,
            &e.params,
            &now,
        ],
    )
    .context("writing email row")?
        == 1;
    e.log(inserted);
    if inserted {
        let (job, opts) = e.job();
        let new = app
            .queue
            .new_job(&job, &opts)
            .context("encoding notify job")?;
        crate::jobs::push_sync(c, &new, now, crate::jobs::dedupe_window_ms(app))
            .context("enqueueing notify job")?;
    }
    Ok(inserted)
}

/// A message captured by the memory transport.
#[derive(Debug, Clone)]
pub struct SentMail {
    pub email_id: String,
    pub to: Vec<String>,
    pub raw: Vec<u8>,
}

/// Why a send failed, classified.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth retrying: SMTP 4xx, timeouts, refused or dropped connections,
    /// a full disk.
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// Never worth retrying: SMTP 5xx (unknown mailbox, refused sender...).
    #[error("permanent: {0:#}")]
    Permanent(anyhow::Error),
    /// The operator's configuration, not the mail: the server refused our
    /// credentials (SMTP 530/534/535) or its TLS certificate is not trusted
    /// (unknown CA, wrong host name). Every mail waits for the fix; none
    /// fails for good because of it.
    #[error("{kind}: {error:#}")]
    Config {
        kind: TransportErrorKind,
        error: anyhow::Error,
    },
}

/// What went wrong with the mail transport itself, for
/// `approvald_mail_transport_errors_total{kind}` and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportErrorKind {
    /// The server refused our credentials.
    Auth,
    /// TLS failed: certificate not trusted, wrong name, handshake refused.
    Tls,
    /// The server could not be reached or dropped the connection.
    Connection,
    /// The server did not answer in time.
    Timeout,
}

impl TransportErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Tls => "tls",
            Self::Connection => "connection",
            Self::Timeout => "timeout",
        }
    }
}

impl fmt::Display for TransportErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SendError {
    /// The transport-level trouble behind this error, if any (a 4xx or 5xx
    /// about one mail is not).
    pub fn transport_kind(&self) -> Option<TransportErrorKind> {
        match self {
            SendError::Config { kind, .. } => Some(*kind),
            SendError::Transient(e) => {
                e.downcast_ref::<TransportTrouble>()
                    .map(|t| t.0)
                    .or_else(|| {
                        e.chain()
                            .find_map(|c| c.downcast_ref::<TransportTrouble>().map(|t| t.0))
                    })
            }
            SendError::Permanent(_) => None,
        }
    }
}

/// Marks a transient error as the transport's (connection, timeout).
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.as_str())]
struct TransportTrouble(TransportErrorKind);

enum Transport {
    File(PathBuf),
    Smtp {
        /// Replaced by a fresh pool after an abandoned (timed-out) exchange.
        smtp: RwLock<AsyncSmtpTransport<Tokio1Executor>>,
        cfg: SmtpConfig,
        /// `mail.smtp.ca_file`, read and checked once at start.
        ca_pem: Option<Vec<u8>>,
        timeout: Duration,
        endpoint: String,
    },
    Memory(Mutex<Vec<SentMail>>),
}

struct Inner {
    from: Mailbox,
    domain: String,
    transport: Transport,
    /// What this process last published about its transport, so a failing
    /// server is logged and written once, not once per mail. An async lock:
    /// it is held while the publication is written, so two attempts cannot
    /// write their news in the opposite order to the one they took it in.
    health: tokio::sync::Mutex<HealthState>,
    /// Hands out [`Attempt`]s, in the order attempts start.
    attempts: AtomicU64,
}

/// What a delivery attempt found out about the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Nothing published yet by this process.
    Unknown,
    Ok,
    Failing(TransportErrorKind, String),
}

impl Health {
    /// The same state: for a failure, the same kind. Its detail may differ
    /// from one attempt to the next (some servers put a session id in their
    /// 535 answer), so it alone is no news: it is written with the next
    /// refresh ([`HEALTH_REFRESH_MS`]).
    fn same_state(&self, other: &Health) -> bool {
        match (self, other) {
            (Health::Failing(a, _), Health::Failing(b, _)) => a == b,
            _ => self == other,
        }
    }
}

/// Taken when a delivery attempt starts: of two attempts that report, the
/// one that started later decides the published state (a slow attempt that
/// began before the server was fixed must not undo what a later one saw).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attempt(u64);

/// How long a published failure may go without its `last_seen` being
/// written again while attempts keep failing the same way.
const HEALTH_REFRESH_MS: i64 = 60_000;

#[derive(Debug)]
struct HealthState {
    /// What was last written successfully.
    published: Health,
    /// When (ms) it was written.
    written_at: i64,
    /// The latest attempt that reported.
    latest: Option<Attempt>,
}

/// A change to publish, found by [`Mailer::observe`]. It holds the health
/// lock until dropped; it counts as published only once [`done`] is called
/// after the write succeeded, so a failed write is tried again by the next
/// attempt that reports.
///
/// [`done`]: Publication::done
#[derive(Debug)]
pub struct Publication<'a> {
    state: tokio::sync::MutexGuard<'a, HealthState>,
    seen: Health,
    now_ms: i64,
}

impl Publication<'_> {
    /// The state to write.
    pub fn seen(&self) -> &Health {
        &self.seen
    }

    /// Whether the state differs from what was published (worth a log
    /// line); false for a refresh of the same kind of failure (its
    /// `last_seen`, and its latest detail).
    pub fn is_news(&self) -> bool {
        !self.state.published.same_state(&self.seen)
    }

    /// The write succeeded.
    pub fn done(mut self) {
        self.state.published = std::mem::replace(&mut self.seen, Health::Unknown);
        self.state.written_at = self.now_ms;
    }
}

/// Sends rendered messages. Cheap to clone (the SMTP pool is shared).
#[derive(Clone)]
pub struct Mailer(Arc<Inner>);

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.0.from.to_string())
            .field("transport", &self.describe())
            .finish()
    }
}

impl Mailer {
    pub fn from_config(cfg: &MailConfig) -> anyhow::Result<Mailer> {
        let from: Mailbox = cfg.from.parse().with_context(|| {
            format!(
                "key `mail.from`: {:?} is not a mailbox like `approvald <noreply@example.com>`",
                cfg.from
            )
        })?;
        let domain = from.email.domain().to_string();
        set_retry_policy(
            Duration::from_millis(cfg.retry_base_ms.max(1)),
            Duration::from_secs(cfg.retry_cap_secs.max(1)),
        );
        let transport = match cfg.transport {
            MailTransport::File => Transport::File(cfg.outbox_dir.clone()),
            MailTransport::Memory => Transport::Memory(Mutex::new(Vec::new())),
            MailTransport::Smtp => {
                let s = &cfg.smtp;
                let ca_pem = read_ca_file(&s.ca_file)?;
                Transport::Smtp {
                    smtp: RwLock::new(build_smtp(s, ca_pem.as_deref())?),
                    cfg: s.clone(),
                    ca_pem,
                    timeout: Duration::from_secs(s.timeout_secs.max(1)),
                    endpoint: format!("{}:{} ({:?})", s.host, s.port, s.tls),
                }
            }
        };
        Ok(Mailer(Arc::new(Inner {
            from,
            domain,
            transport,
            health: tokio::sync::Mutex::new(HealthState {
                published: Health::Unknown,
                written_at: 0,
                latest: None,
            }),
            attempts: AtomicU64::new(0),
        })))
    }

    /// Call when a delivery attempt starts; pass it to [`Mailer::observe`].
    pub fn attempt(&self) -> Attempt {
        Attempt(self.0.attempts.fetch_add(1, Ordering::Relaxed))
    }

    /// What `attempt` saw of the transport (`Ok` or `Failing`). `Some` when
    /// that should be written where every process sees it: the state (for a
    /// failure, its kind) differs from what was written last (or that write
    /// failed), or the same kind of failure was last written over a minute
    /// ago. `None` also when a later attempt has already reported. Waits
    /// while another publication is being written.
    pub async fn observe(
        &self,
        attempt: Attempt,
        seen: Health,
        now_ms: i64,
    ) -> Option<Publication<'_>> {
        let mut state = self.0.health.lock().await;
        if state.latest.is_some_and(|l| attempt < l) {
            return None;
        }
        state.latest = Some(attempt);
        let stale = matches!(seen, Health::Failing(..))
            && now_ms.saturating_sub(state.written_at) >= HEALTH_REFRESH_MS;
        (!state.published.same_state(&seen) || stale).then_some(Publication {
            state,
            seen,
            now_ms,
        })
    }

    /// `smtp host:port`, `file <dir>` or `memory`, for logs.
    pub fn describe(&self) -> String {
        match &self.0.transport {
            Transport::File(d) => format!("file {}", d.display()),
            Transport::Smtp { endpoint, .. } => format!("smtp {endpoint}"),
            Transport::Memory(_) => "memory".into(),
        }
    }

    /// The folder `.eml` files go to, with the file transport.
    pub fn outbox_dir(&self) -> Option<&Path> {
        match &self.0.transport {
            Transport::File(d) => Some(d),
            _ => None,
        }
    }

    pub fn from_mailbox(&self) -> &Mailbox {
        &self.0.from
    }

    /// The Message-ID of logical mail `email_id`: `<{email_id}@{domain of mail.from}>`.
    pub fn message_id(&self, email_id: &str) -> String {
        format!("<{email_id}@{}>", self.0.domain)
    }

    /// Messages captured by the memory transport (empty for the others).
    pub fn captured(&self) -> Vec<SentMail> {
        match &self.0.transport {
            Transport::Memory(m) => m.lock().expect("mail capture lock").clone(),
            _ => Vec::new(),
        }
    }

    /// Deliver one message of logical mail `email_id`.
    pub async fn send(&self, email_id: &str, msg: &Message) -> Result<(), SendError> {
        match &self.0.transport {
            Transport::File(dir) => write_eml(dir, email_id, &msg.formatted())
                .await
                .map_err(|e| {
                    SendError::Transient(e.context(format!("writing .eml to {}", dir.display())))
                }),
            Transport::Memory(m) => {
                let to = msg.envelope().to().iter().map(|a| a.to_string()).collect();
                m.lock().expect("mail capture lock").push(SentMail {
                    email_id: email_id.to_string(),
                    to,
                    raw: msg.formatted(),
                });
                Ok(())
            }
            Transport::Smtp {
                smtp,
                cfg,
                ca_pem,
                timeout,
                ..
            } => {
                let client = smtp.read().expect("smtp lock").clone();
                // lettre bounds connecting by `timeout` but not a reply on an
                // open connection, so bound the whole exchange here, below the
                // job's own time limit.
                let whole = (*timeout * 4).min(Duration::from_secs(90));
                match tokio::time::timeout(whole, client.send(msg.clone())).await {
                    Err(_) => {
                        // The abandoned send hands its connection back to the
                        // pool mid-command; no later mail may talk over it.
                        match build_smtp(cfg, ca_pem.as_deref()) {
                            Ok(fresh) => *smtp.write().expect("smtp lock") = fresh,
                            Err(e) => tracing::error!(error = %e, "cannot rebuild the SMTP pool"),
                        }
                        Err(SendError::Transient(
                            anyhow::Error::new(TransportTrouble(TransportErrorKind::Timeout))
                                .context(format!("SMTP exchange timed out after {whole:?}")),
                        ))
                    }
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(classify_smtp(e, cfg)),
                }
            }
        }
    }
}

/// `mail.smtp.ca_file` read and checked: PEM with at least one certificate.
fn read_ca_file(path: &str) -> anyhow::Result<Option<Vec<u8>>> {
    if path.is_empty() {
        return Ok(None);
    }
    let pem = std::fs::read(path)
        .with_context(|| format!("key `mail.smtp.ca_file`: cannot read {path}"))?;
    let text = String::from_utf8_lossy(&pem);
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        anyhow::bail!(
            "key `mail.smtp.ca_file`: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        );
    }
    lettre::transport::smtp::client::Certificate::from_pem(&pem).map_err(|e| {
        anyhow::anyhow!("key `mail.smtp.ca_file`: {path} is not a valid PEM certificate file: {e}")
    })?;
    Ok(Some(pem))
}

/// A pooled SMTP client for `s` (TLS none / STARTTLS required / implicit
/// TLS, optional auth, connect timeout). `ca_pem` adds trusted CAs.
fn build_smtp(
    s: &SmtpConfig,
    ca_pem: Option<&[u8]>,
) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let params = || -> anyhow::Result<TlsParameters> {
        let mut b = TlsParameters::builder(s.host.clone());
        if let Some(pem) = ca_pem {
            let cert = lettre::transport::smtp::client::Certificate::from_pem(pem)
                .context("key `mail.smtp.ca_file`: not a PEM certificate")?;
            b = b.add_root_certificate(cert);
        }
        b.build().context("key `mail.smtp.tls`: TLS setup")
    };
    let tls = match s.tls {
        SmtpTls::None => Tls::None,
        SmtpTls::Starttls => Tls::Required(params()?),
        SmtpTls::Tls => Tls::Wrapper(params()?),
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.clone())
        .port(s.port)
        .tls(tls)
        .timeout(Some(Duration::from_secs(s.timeout_secs.max(1))))
        .pool_config(
            PoolConfig::new()
                .max_size(s.pool_size.max(1))
                .idle_timeout(Duration::from_secs(60)),
        );
    if !s.username.is_empty() {
        b = b.credentials(Credentials::new(
            s.username.clone(),
            s.password.expose().to_string(),
        ));
    }
    Ok(b.build())
}

/// Classify a failed send:
/// - the server refused our credentials (530, 534, 535, or 454 during AUTH)
///   or TLS failed (untrusted certificate, wrong name, refused handshake):
///   [`SendError::Config`], the operator's to fix, and no mail's fault;
/// - any other 5xx: permanent for this mail;
/// - everything else (4xx, timeouts, refused or dropped connections,
///   garbled replies): worth another try.
fn classify_smtp(e: lettre::transport::smtp::Error, cfg: &SmtpConfig) -> SendError {
    let code = e.status().map(|c| c.to_string());
    if let Some(c) = code.as_deref()
        && matches!(c, "530" | "534" | "535")
    {
        let err = anyhow::Error::new(e).context(format!(
            "the SMTP server refused the credentials of mail.smtp.username {:?} ({c}): fix mail.smtp.username / mail.smtp.password and restart",
            cfg.username
        ));
        return SendError::Config {
            kind: TransportErrorKind::Auth,
            error: err,
        };
    }
    if let Some(why) = tls_trouble(&e, cfg) {
        let err = anyhow::Error::new(e).context(why);
        return SendError::Config {
            kind: TransportErrorKind::Tls,
            error: err,
        };
    }
    let permanent = e.is_permanent();
    let err = match code {
        Some(code) => anyhow::Error::new(e).context(format!("SMTP server answered {code}")),
        None if e.is_timeout() => anyhow::Error::new(e)
            .context(TransportTrouble(TransportErrorKind::Timeout))
            .context("SMTP timeout"),
        None => anyhow::Error::new(e)
            .context(TransportTrouble(TransportErrorKind::Connection))
            .context("SMTP connection failed"),
    };
    if permanent {
        SendError::Permanent(err)
    } else {
        SendError::Transient(err)
    }
}

/// A TLS failure in `e`'s causes, explained with the key that fixes it.
fn tls_trouble(e: &lettre::transport::smtp::Error, cfg: &SmtpConfig) -> Option<String> {
    use rustls::{CertificateError, Error as TlsError};
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut tls = None;
    while let Some(c) = cause {
        if let Some(t) = c.downcast_ref::<TlsError>() {
            tls = Some(t);
            break;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && let Some(t) = io.get_ref().and_then(|i| i.downcast_ref::<TlsError>())
        {
            tls = Some(t);
            break;
        }
        cause = c.source();
    }
    if tls.is_none() && !e.is_tls() {
        return None;
    }
    let at = format!("{}:{}", cfg.host, cfg.port);
    Some(match tls {
        Some(TlsError::InvalidCertificate(CertificateError::UnknownIssuer)) => format!(
            "TLS with the SMTP server {at} failed: its certificate is signed by a CA this process does not trust; put that CA's PEM file in mail.smtp.ca_file (or fix the server's certificate chain)"
        ),
        Some(TlsError::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => format!(
            "TLS with the SMTP server {at} failed: its certificate is not valid for the name {:?}; set mail.smtp.host to a name the certificate holds",
            cfg.host
        ),
        Some(TlsError::InvalidCertificate(other)) => format!(
            "TLS with the SMTP server {at} failed: its certificate is not acceptable ({other:?})"
        ),
        Some(other) => format!("TLS with the SMTP server {at} failed: {other}"),
        None => format!("TLS with the SMTP server {at} failed"),
    })
}

/// Write `<dir>/<email_id>.eml` atomically: a temp file in the same folder,
/// flushed, then renamed over the final name. Readers never see half a file;
/// writing the same mail twice leaves one file.
async fn write_eml(dir: &Path, email_id: &str, bytes: &[u8]) -> anyhow::Result<()> {
    if email_id.is_empty()
        || !email_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        anyhow::bail!("refusing to name a file after email id {email_id:?}");
    }
    let dir = dir.to_path_buf();
    let name = email_id.to_string();
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
        let fin = dir.join(format!("{name}.eml"));
        let res = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &fin)
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res.with_context(|| format!("writing {}", fin.display()))
    })
    .await
    .context("file writer task failed")?
}

// The job runtime's backoff hook is a plain `fn(attempt)` with no access to
// the app, so the notify retry policy (`mail.retry_base_ms`,
// `mail.retry_cap_secs`) is process-wide. A daemon builds one Mailer; a test
// binary that builds several keeps the shortest policy any of them asked for,
// so a test that shortens retries is never slowed down by a concurrent one
// that did not.
static RETRY_BASE_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(5_000);
static RETRY_CAP_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(30 * 60_000);
static RETRY_SET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn set_retry_policy(base: Duration, cap: Duration) {
    use std::sync::atomic::Ordering::SeqCst;
    let (b, c) = (
        base.as_millis() as u64,
        cap.as_millis().max(base.as_millis()) as u64,
    );
    if RETRY_SET.swap(true, SeqCst) {
        RETRY_BASE_MS.fetch_min(b, SeqCst);
        RETRY_CAP_MS.fetch_min(c, SeqCst);
    } else {
        RETRY_BASE_MS.store(b, SeqCst);
        RETRY_CAP_MS.store(c, SeqCst);
    }
}

/// (first retry delay, largest delay) of the notify job.
pub fn retry_policy() -> (Duration, Duration) {
    use std::sync::atomic::Ordering::SeqCst;
    (
        Duration::from_millis(RETRY_BASE_MS.load(SeqCst)),
        Duration::from_millis(RETRY_CAP_MS.load(SeqCst)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(template: Template, request: Option<&str>, params: serde_json::Value) -> EmailSpec {
        EmailSpec {
            template,
            request_id: request.map(str::to_string),
            to: Recipient {
                email: "Alice@Example.com".into(),
                name: "Alice".into(),
                locale: Locale::En,
                reviewer: None,
            },
            params,
        }
    }

    #[test]
    fn dedupe_keys() {
        let a = spec(Template::Approved, Some("r1"), serde_json::json!({}));
        assert_eq!(
            a.dedupe_key().unwrap(),
            "approved|alice@example.com|request:r1"
        );
        let b = spec(Template::Rejected, Some("r1"), serde_json::json!({}));
        assert_ne!(a.dedupe_key().unwrap(), b.dedupe_key().unwrap());
        let m = spec(
            Template::MemberDisabled,
            None,
            serde_json::json!({"member_id": "m1"}),
        );
        assert_eq!(
            m.dedupe_key().unwrap(),
            "member_disabled|alice@example.com|member:m1"
        );
        assert!(
            spec(Template::MemberDisabled, None, serde_json::json!({}))
                .dedupe_key()
                .is_err()
        );
    }

    #[test]
    fn template_names_round_trip() {
        for t in Template::ALL {
            assert_eq!(Template::parse(t.as_str()), Some(t));
        }
    }

    #[tokio::test]
    async fn file_transport_writes_one_eml_atomically() {
        let dir = tempfile::tempdir().unwrap();
        write_eml(dir.path(), "0190-abc", b"one").await.unwrap();
        write_eml(dir.path(), "0190-abc", b"two").await.unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("0190-abc.eml")]);
        assert_eq!(
            std::fs::read(dir.path().join("0190-abc.eml")).unwrap(),
            b"two"
        );
        assert!(write_eml(dir.path(), "../etc/passwd", b"x").await.is_err());
    }

    fn failing(kind: TransportErrorKind, detail: &str) -> Health {
        Health::Failing(kind, detail.into())
    }

    /// Publish what `observe` asks for; `written` says whether the write
    /// worked. Returns whether there was something to publish.
    async fn report(m: &Mailer, a: Attempt, seen: Health, now: i64, written: bool) -> bool {
        match m.observe(a, seen, now).await {
            Some(p) => {
                if written {
                    p.done();
                }
                true
            }
            None => false,
        }
    }

    #[tokio::test]
    async fn transport_health_is_published_on_change_in_attempt_order() {
        let m = Mailer::from_config(&crate::config::Config::default().mail).unwrap();
        let auth = || failing(TransportErrorKind::Auth, "535");
        let a = m.attempt();
        assert!(
            report(&m, a, Health::Ok, 0, true).await,
            "the first delivery clears"
        );
        assert!(!report(&m, m.attempt(), Health::Ok, 1, true).await);
        assert!(report(&m, m.attempt(), auth(), 2, true).await);
        assert!(!report(&m, m.attempt(), auth(), 3, true).await);
        // Another detail of the same kind waits for the refresh (a server
        // may put a session id in every 535).
        let saw = async |kind, detail: &str, now| {
            report(&m, m.attempt(), failing(kind, detail), now, true).await
        };
        assert!(!saw(TransportErrorKind::Auth, "530", 4).await);
        assert!(saw(TransportErrorKind::Tls, "x", 5).await);
        assert!(saw(TransportErrorKind::Auth, "535", 6).await);
        // The same kind a minute on: written again, with its latest detail,
        // for `last_seen`.
        let p = m
            .observe(
                m.attempt(),
                failing(TransportErrorKind::Auth, "530"),
                6 + 60_000,
            )
            .await
            .expect("refresh");
        assert!(!p.is_news());
        p.done();

        // An attempt that started before one that already reported is
        // ignored, whatever it saw.
        let early = m.attempt();
        let late = m.attempt();
        assert!(report(&m, late, Health::Ok, 70_000, true).await);
        assert!(!report(&m, early, auth(), 70_001, true).await);
        assert!(!report(&m, m.attempt(), Health::Ok, 70_002, true).await);
    }

    #[tokio::test]
    async fn a_failed_publication_is_tried_again_by_the_next_attempt() {
        let m = Mailer::from_config(&crate::config::Config::default().mail).unwrap();
        let tls = || failing(TransportErrorKind::Tls, "unknown CA");
        assert!(report(&m, m.attempt(), tls(), 0, true).await);
        // The server is fixed, but clearing the published failure fails
        // (the database was busy): the next delivery clears it.
        assert!(report(&m, m.attempt(), Health::Ok, 1, false).await);
        assert!(report(&m, m.attempt(), Health::Ok, 2, true).await);
        assert!(!report(&m, m.attempt(), Health::Ok, 3, true).await);
    }

    #[tokio::test]
    async fn publications_are_written_one_at_a_time() {
        let m = Mailer::from_config(&crate::config::Config::default().mail).unwrap();
        let first = m
            .observe(m.attempt(), failing(TransportErrorKind::Tls, "x"), 0)
            .await
            .expect("news");
        let second = m.attempt();
        let waiting =
            tokio::time::timeout(Duration::from_millis(100), m.observe(second, Health::Ok, 1))
                .await;
        assert!(waiting.is_err(), "waits while the first is being written");
        first.done();
        assert!(m.observe(second, Health::Ok, 1).await.is_some());
    }

    #[tokio::test]
    async fn smtp_transport_builds_for_every_tls_mode() {
        for tls in [SmtpTls::None, SmtpTls::Starttls, SmtpTls::Tls] {
            let mut mail = crate::config::Config::default().mail;
            mail.transport = MailTransport::Smtp;
            mail.smtp.host = "smtp.example.com".into();
            mail.smtp.tls = tls;
            mail.smtp.username = "u".into();
            mail.smtp.password = crate::config::Secret::new("hunter2");
            let m = Mailer::from_config(&mail).unwrap();
            assert!(
                m.describe().starts_with("smtp smtp.example.com:587"),
                "{}",
                m.describe()
            );
            assert!(!format!("{m:?}").contains("hunter2"));
        }
    }

    #[test]
    fn ca_file_is_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut mail = crate::config::Config::default().mail;
        mail.transport = MailTransport::Smtp;
        mail.smtp.host = "smtp.example.com".into();
        mail.smtp.ca_file = dir.path().join("missing.pem").display().to_string();
        let e = Mailer::from_config(&mail).unwrap_err();
        assert!(format!("{e:#}").contains("mail.smtp.ca_file"), "{e:#}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        mail.smtp.ca_file = junk.display().to_string();
        let e = Mailer::from_config(&mail).unwrap_err();
        assert!(format!("{e:#}").contains("no PEM certificate"), "{e:#}");
    }

    #[test]
    fn message_ids_use_the_from_domain() {
        let cfg = crate::config::Config::default();
        let mut mail = cfg.mail.clone();
        mail.transport = MailTransport::Memory;
        let m = Mailer::from_config(&mail).unwrap();
        assert_eq!(m.message_id("abc"), "<abc@approvald.invalid>");
    }
}
