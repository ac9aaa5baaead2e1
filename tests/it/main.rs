//! approvald's integration tests: one binary, real SQLite / PostgreSQL /
//! Redis / SMTP on loopback, each test isolated (see `harness`).
mod api_hostile;
mod api_idempotency;
mod api_isolation;
mod api_lifecycle;
mod api_members;
mod api_util;
mod audit_chain;
mod authz;
mod harness;
mod http_server;
mod mail_file;
mod mail_server;
mod mail_smtp;
mod mail_snapshots;
mod mail_tls;
mod review_authority;
mod review_bad_tokens;
mod review_browser;
mod review_decide;
mod review_util;
mod sla;
mod webhook_receiver;
mod webhooks;
