//! Pure domain types and rules: no I/O. Values that reach this module from
//! outside are parsed into types that can only hold valid values.
pub mod authz;
pub mod calendar;
pub mod catalog;
pub mod ids;
pub mod payment;
pub mod request;
pub mod role;
pub mod spending;
