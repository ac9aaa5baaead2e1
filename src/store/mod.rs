//! sqlx repositories: one query set for SQLite and PostgreSQL (see `db`).
pub mod audit;
pub mod decisions;
pub mod emails;
pub mod grants;
pub mod idempotency;
pub mod keys;
pub mod mail_health;
pub mod members;
pub mod orgs;
pub mod outbox;
pub mod requests;
pub mod reviewers;
pub mod roles;
pub mod spending;
pub mod submit_pg;
pub mod tokens;
