//! approvald's integration tests: one binary, real SQLite / PostgreSQL /
//! Redis / SMTP on loopback, each test isolated (see `harness`).
mod harness;
mod sla;
