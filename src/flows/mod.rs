//! Flows: changes that touch several things at once, each one transaction,
//! called by the API, the review page and the jobs alike (STYLE 6). The SQL
//! they run lives in `store/`.
pub mod authz;
pub mod contention;
pub mod members;
pub mod payments;
pub mod requests;
pub mod submit;
