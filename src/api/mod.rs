//! The typed client of the control API, used by the CLI, the roles and the tests:
//! `client.rs` the transport and errors, `resources.rs` the resource API, users and
//! the audit trail (types from `crate::model`).

mod client;
mod resources;

pub use client::{api_error, Client, ClientError};
pub use resources::{ApplyOutcome, ApplyResult, AuditPage, List, NewToken};
