//! approvald: permission-request approval workflows for multi-account platforms.
pub mod domain;
