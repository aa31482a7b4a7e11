//! Everything PostgreSQL-specific: the embedded server, template databases
//! and pools. Other backends follow with the same shape.

pub(crate) mod embedded;
pub(crate) mod engine;
mod naming;
mod recycle;
pub(crate) mod signal;
mod sweep;
pub(crate) mod template;
mod working;
