//! Fault tests of the production profile with real processes (issue 4):
//! `approvald serve --role api|worker|scheduler` children on a fresh
//! PostgreSQL database and this test's own `redis-server` (no persistence),
//! whatever `APPROVALD_TEST_PROFILE` says. The tests run one at a time (they
//! spawn many processes) and print their figures; run with `--nocapture` to
//! see them:
//!
//! `cargo test --test faults -- --nocapture --test-threads 1`
mod api_kill;
mod cluster;
mod many_processes;
mod member_cleanup;
mod redis_down;
mod redis_empty;
mod submit;
mod webhook_kill;
#[path = "../it/webhook_receiver.rs"]
mod webhook_receiver;
mod worker_kill;
