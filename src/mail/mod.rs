//! Mail (placeholder until the mail module lands): the `Mailer` handle.
use crate::config::MailConfig;

#[derive(Debug, Clone)]
pub struct Mailer {
    pub outbox_dir: std::path::PathBuf,
}

impl Mailer {
    pub fn from_config(cfg: &MailConfig) -> anyhow::Result<Self> {
        Ok(Self { outbox_dir: cfg.outbox_dir.clone() })
    }
}
